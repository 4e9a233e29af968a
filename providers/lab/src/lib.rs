//! Lab provider: "machines" are containers on the local Docker engine.
//!
//! Each host is a Debian container running sshd, on its own Docker network, labelled
//! `cloudflow.cluster=<name>` and `cloudflow.role=manager|worker`. The rest of cloudflow reaches
//! them over SSH exactly like bare metal. The host image is built locally once (`debootstrap` +
//! `docker import`), because no image can be pulled here.

mod image;

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    ListNetworksOptionsBuilder, RemoveContainerOptionsBuilder,
};
use cloudflow_provider_api::{
    DestroyReport, Journal, Machine, Progress, Provider, ProviderAction, ProviderError, Resource,
    Role, SshEndpoint,
};

pub use image::{DEFAULT_IMAGE, apt_mirror_from_sources, host_suite};

pub const LABEL_CLUSTER: &str = "cloudflow.cluster";
pub const LABEL_ROLE: &str = "cloudflow.role";

/// What the spec asks of the lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub cluster: String,
    pub hosts: u32,
    pub managers: u32,
    /// Image for the hosts; built locally when missing and equal to [`DEFAULT_IMAGE`].
    pub image: String,
    /// Public key (OpenSSH format) put in root's authorized_keys on every host.
    pub authorized_key: String,
}

impl LabConfig {
    pub fn network_name(&self) -> String {
        format!("cloudflow-{}", self.cluster)
    }

    pub fn host_name(&self, index: u32) -> String {
        format!("cf-{}-{}", self.cluster, index)
    }

    /// The wanted hosts, in order: managers first.
    pub fn wanted(&self) -> Vec<(String, Role)> {
        (1..=self.hosts)
            .map(|i| {
                let role = if i <= self.managers {
                    Role::Manager
                } else {
                    Role::Worker
                };
                (self.host_name(i), role)
            })
            .collect()
    }
}

pub struct Lab {
    cfg: LabConfig,
    docker: Docker,
}

fn api(action: impl Into<String>, e: impl std::fmt::Display) -> ProviderError {
    ProviderError::Api {
        provider: "lab",
        action: action.into(),
        message: e.to_string(),
    }
}

fn journal_err(r: &Resource, e: ProviderError) -> ProviderError {
    match e {
        ProviderError::Journal { .. } => e,
        other => ProviderError::Journal {
            resource: r.to_string(),
            message: other.to_string(),
        },
    }
}

/// Run flags that make Docker-in-container work on this kernel (`--privileged` does not).
fn host_config(network: &str) -> HostConfig {
    HostConfig {
        cap_add: Some(vec!["ALL".into()]),
        cap_drop: Some(vec!["SYS_RESOURCE".into()]),
        security_opt: Some(vec![
            "seccomp=unconfined".into(),
            "apparmor=unconfined".into(),
        ]),
        // `--security-opt systempaths=unconfined` is a CLI spelling of these two:
        masked_paths: Some(vec![]),
        readonly_paths: Some(vec![]),
        binds: Some(vec!["/sys/fs/cgroup:/sys/fs/cgroup:rw".into()]),
        tmpfs: Some(HashMap::from([(
            "/var/lib/docker".to_string(),
            "exec".to_string(),
        )])),
        network_mode: Some(network.to_string()),
        ..Default::default()
    }
}

/// The host's entry point: authorize the key, make host keys unique to this container (once),
/// and run sshd in the foreground.
const ENTRYPOINT: &str = r#"set -e
mkdir -p /run/sshd /root/.ssh
printf '%s\n' "$CLOUDFLOW_AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 700 /root/.ssh && chmod 600 /root/.ssh/authorized_keys
if [ ! -f /etc/ssh/.cloudflow-hostkeys ]; then
  rm -f /etc/ssh/ssh_host_*; ssh-keygen -A >/dev/null; touch /etc/ssh/.cloudflow-hostkeys
fi
exec /usr/sbin/sshd -D -e"#;

/// Connect to the local engine and negotiate the API version (engine 20.10 speaks 1.41).
async fn connect_docker() -> Result<Docker, ProviderError> {
    let docker = Docker::connect_with_local_defaults().map_err(|e| ProviderError::Missing {
        provider: "lab",
        message: format!("cannot reach the local Docker engine: {e}"),
        hint: "install docker.io and start dockerd (the README's setup command does both)".into(),
    })?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| ProviderError::Missing {
            provider: "lab",
            message: format!("the local Docker engine does not answer: {e}"),
            hint: "start dockerd (e.g. `dockerd >/var/log/dockerd.log 2>&1 &`)".into(),
        })?;
    Ok(docker)
}

/// Find, or build once, the lab host image. Tests that make their own "bare-metal" hosts use it.
pub async fn ensure_host_image(image: &str, progress: &dyn Progress) -> Result<(), ProviderError> {
    image::ensure(&connect_docker().await?, image, progress).await
}

impl Lab {
    pub async fn connect(cfg: LabConfig) -> Result<Self, ProviderError> {
        Ok(Lab {
            cfg,
            docker: connect_docker().await?,
        })
    }

    pub fn config(&self) -> &LabConfig {
        &self.cfg
    }

    fn label_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_CLUSTER}={}", self.cfg.cluster)],
        )])
    }

    async fn networks(&self) -> Result<Vec<String>, ProviderError> {
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&self.label_filter())
            .build();
        let nets = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(|e| api("list networks", e))?;
        Ok(nets.into_iter().filter_map(|n| n.name).collect())
    }

    async fn containers(&self) -> Result<Vec<bollard::models::ContainerSummary>, ProviderError> {
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&self.label_filter())
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| api("list containers", e))
    }

    async fn ensure_network(&self, journal: &dyn Journal) -> Result<(), ProviderError> {
        let name = self.cfg.network_name();
        if self.networks().await?.contains(&name) {
            return Ok(());
        }
        let res = Resource::new("network", &name);
        journal.intend(&res).map_err(|e| journal_err(&res, e))?;
        let req = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                LABEL_CLUSTER.to_string(),
                self.cfg.cluster.clone(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(req)
            .await
            .map_err(|e| api(format!("create network {name}"), e))?;
        journal.created(&res)
    }

    async fn create_host(
        &self,
        name: &str,
        role: Role,
        journal: &dyn Journal,
    ) -> Result<(), ProviderError> {
        let res = Resource::new("container", name);
        journal.intend(&res).map_err(|e| journal_err(&res, e))?;
        let network = self.cfg.network_name();
        let body = ContainerCreateBody {
            image: Some(self.cfg.image.clone()),
            hostname: Some(name.to_string()),
            cmd: Some(vec!["/bin/sh".into(), "-c".into(), ENTRYPOINT.into()]),
            env: Some(vec![format!(
                "CLOUDFLOW_AUTHORIZED_KEY={}",
                self.cfg.authorized_key
            )]),
            labels: Some(HashMap::from([
                (LABEL_CLUSTER.to_string(), self.cfg.cluster.clone()),
                (LABEL_ROLE.to_string(), role.to_string()),
            ])),
            host_config: Some(host_config(&network)),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.clone(),
                    EndpointSettings::default(),
                )])),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        self.docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| api(format!("create container {name}"), e))?;
        journal.created(&res)?;
        self.docker
            .start_container(name, None)
            .await
            .map_err(|e| api(format!("start container {name}"), e))
    }

    async fn machine(&self, name: &str, role: Role) -> Result<Machine, ProviderError> {
        let info = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(|e| api(format!("inspect container {name}"), e))?;
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        let address = info
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| n.get(&self.cfg.network_name()))
            .and_then(|e| e.ip_address.clone())
            .unwrap_or_default();
        Ok(Machine {
            name: name.to_string(),
            id: info.id.unwrap_or_default(),
            role,
            ssh: SshEndpoint {
                address,
                port: 22,
                user: "root".into(),
            },
            running,
            private_address: None,
        })
    }

    /// Wait until sshd accepts connections: a lab host is "provisioned" when it can be reached.
    async fn wait_ssh(&self, m: &Machine) -> Result<(), ProviderError> {
        use backon::{ConstantBuilder, Retryable};
        let addr = format!("{}:{}", m.ssh.address, m.ssh.port);
        let attempt = || async { tokio::net::TcpStream::connect(&addr).await.map(|_| ()) };
        attempt
            .retry(
                ConstantBuilder::default()
                    .with_delay(Duration::from_millis(200))
                    .with_max_times(150),
            )
            .await
            .map_err(|e| api(format!("wait for sshd on {} ({addr})", m.name), e))
    }
}

#[async_trait::async_trait]
impl Provider for Lab {
    fn kind(&self) -> &'static str {
        "lab"
    }

    fn owns_machines(&self) -> bool {
        true
    }

    async fn list(&self) -> Result<Vec<Machine>, ProviderError> {
        let mut out = Vec::new();
        for c in self.containers().await? {
            let name = c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string());
            let role = match c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ROLE))
                .map(String::as_str)
            {
                Some("manager") => Role::Manager,
                _ => Role::Worker,
            };
            if let Some(name) = name {
                out.push(self.machine(&name, role).await?);
            }
        }
        // Hosts in their wanted order (cf-x-2 before cf-x-10), strays after.
        let order: Vec<String> = self.cfg.wanted().into_iter().map(|(n, _)| n).collect();
        out.sort_by_key(|m| {
            (
                order
                    .iter()
                    .position(|n| *n == m.name)
                    .unwrap_or(usize::MAX),
                m.name.clone(),
            )
        });
        Ok(out)
    }

    fn plan(&self, existing: &[Machine]) -> Vec<ProviderAction> {
        plan_hosts(&self.cfg, existing)
    }

    async fn create(
        &self,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        image::ensure(&self.docker, &self.cfg.image, progress).await?;
        self.ensure_network(journal).await?;
        let existing = self.list().await?;
        for action in plan_hosts(&self.cfg, &existing) {
            match action {
                // The network was ensured above; only hosts are left here.
                ProviderAction::Create { resource, .. } if resource.kind != "container" => {}
                ProviderAction::Create { resource, role } => {
                    progress.step(&format!(
                        "creating lab host {} ({})",
                        resource.name,
                        role.unwrap_or(Role::Worker)
                    ));
                    self.create_host(&resource.name, role.unwrap_or(Role::Worker), journal)
                        .await?;
                }
                ProviderAction::Start { resource } => {
                    progress.step(&format!("starting lab host {}", resource.name));
                    self.docker
                        .start_container(&resource.name, None)
                        .await
                        .map_err(|e| api(format!("start container {}", resource.name), e))?;
                }
                ProviderAction::Destroy { resource } => {
                    progress.step(&format!(
                        "removing lab host {} (beyond hosts: {})",
                        resource.name, self.cfg.hosts
                    ));
                    let opts = RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build();
                    self.docker
                        .remove_container(&resource.name, Some(opts))
                        .await
                        .map_err(|e| api(format!("remove container {}", resource.name), e))?;
                    journal.removed(&resource)?;
                }
                // The lab plans no updates: containers are made whole or not at all.
                ProviderAction::Update { .. } => {}
            }
        }
        let mut machines = Vec::new();
        for (name, role) in self.cfg.wanted() {
            let m = self.machine(&name, role).await?;
            self.wait_ssh(&m).await?;
            machines.push(m);
        }
        Ok(machines)
    }

    /// `nodes scale`: as many workers as `count` (new host containers, like `up` makes them;
    /// removed ones are the newest). The core drains leaving workers first and bootstraps and
    /// joins new ones.
    async fn scale_workers(
        &self,
        count: u32,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        let scaled = Lab {
            cfg: LabConfig {
                hosts: self.cfg.managers + count,
                ..self.cfg.clone()
            },
            docker: self.docker.clone(),
        };
        scaled.create(journal, progress).await
    }

    async fn destroy(
        &self,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<DestroyReport, ProviderError> {
        let mut report = DestroyReport::default();
        for c in self.containers().await? {
            let Some(id) = c.id else { continue };
            let name = c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_else(|| id.clone());
            progress.step(&format!("removing lab host {name}"));
            let opts = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let res = Resource::new("container", &name);
            match self.docker.remove_container(&id, Some(opts)).await {
                Ok(()) => {
                    journal.removed(&res)?;
                    report.removed.push(res);
                }
                Err(e) => report.left.push((res, e.to_string())),
            }
        }
        for net in self.networks().await? {
            progress.step(&format!("removing network {net}"));
            let res = Resource::new("network", &net);
            match self.docker.remove_network(&net).await {
                Ok(()) => {
                    journal.removed(&res)?;
                    report.removed.push(res);
                }
                Err(e) => report.left.push((res, e.to_string())),
            }
        }
        // Verify by label: whatever is still there is reported, not forgotten.
        for c in self.containers().await? {
            let name = c.names.unwrap_or_default().join(",");
            if !report.left.iter().any(|(r, _)| r.name == name) {
                report.left.push((
                    Resource::new("container", name),
                    "still present after removal".into(),
                ));
            }
        }
        for net in self.networks().await? {
            if !report.left.iter().any(|(r, _)| r.name == net) {
                report.left.push((
                    Resource::new("network", net),
                    "still present after removal".into(),
                ));
            }
        }
        Ok(report)
    }
}

/// Pure: which hosts must be created or started, and which are beyond the wanted count.
pub fn plan_hosts(cfg: &LabConfig, existing: &[Machine]) -> Vec<ProviderAction> {
    let mut actions = Vec::new();
    if existing.is_empty() {
        actions.push(ProviderAction::Create {
            resource: Resource::new("network", cfg.network_name()),
            role: None,
        });
    }
    let wanted = cfg.wanted();
    for (name, role) in &wanted {
        match existing.iter().find(|m| &m.name == name) {
            None => actions.push(ProviderAction::Create {
                resource: Resource::new("container", name),
                role: Some(*role),
            }),
            Some(m) if !m.running => actions.push(ProviderAction::Start {
                resource: Resource::new("container", name),
            }),
            Some(_) => {}
        }
    }
    for m in existing {
        if !wanted.iter().any(|(n, _)| *n == m.name) {
            actions.push(ProviderAction::Destroy {
                resource: Resource::new("container", &m.name),
            });
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(hosts: u32) -> LabConfig {
        LabConfig {
            cluster: "demo".into(),
            hosts,
            managers: 1,
            image: DEFAULT_IMAGE.into(),
            authorized_key: "ssh-ed25519 AAAA test".into(),
        }
    }

    fn machine(name: &str, running: bool) -> Machine {
        Machine {
            name: name.into(),
            id: name.into(),
            role: Role::Worker,
            ssh: SshEndpoint {
                address: "1.2.3.4".into(),
                port: 22,
                user: "root".into(),
            },
            running,
            private_address: None,
        }
    }

    #[test]
    fn fresh_lab_creates_network_then_hosts_managers_first() {
        let actions = plan_hosts(&cfg(3), &[]);
        let text: Vec<String> = actions.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            text,
            [
                "create network cloudflow-demo",
                "create container cf-demo-1 (manager)",
                "create container cf-demo-2 (worker)",
                "create container cf-demo-3 (worker)",
            ]
        );
    }

    #[test]
    fn existing_running_hosts_plan_nothing_and_stopped_ones_start() {
        let all = [machine("cf-demo-1", true), machine("cf-demo-2", true)];
        assert!(plan_hosts(&cfg(2), &all).is_empty());
        let one_stopped = [machine("cf-demo-1", true), machine("cf-demo-2", false)];
        assert_eq!(
            plan_hosts(&cfg(2), &one_stopped)[0].to_string(),
            "start container cf-demo-2"
        );
    }

    #[test]
    fn hosts_beyond_the_count_are_planned_for_removal() {
        let all = [machine("cf-demo-1", true), machine("cf-demo-2", true)];
        let text: Vec<String> = plan_hosts(&cfg(1), &all)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(text, ["destroy container cf-demo-2"]);
    }
}
