//! The planner: a pure function of (spec, recorded state, machines, facts) → ordered actions.
//! No I/O. `plan` prints the result; `up` prints it and the phases apply it.

pub mod daemon_json;
mod display;

use std::collections::BTreeMap;
use std::fmt;

use cloudflow_provider_api::{Machine, ProviderAction, Role};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::commands;
use crate::deploy;
use crate::facts::{HostFacts, Init};
use crate::render::{RenderError, Renderer};
use crate::spec::Spec;
use crate::state::ClusterState;

/// Phases in apply order. Later issues add `proxy` and `deploy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PhaseName {
    /// Machines exist (no SSH yet).
    Provision,
    /// Docker installed and configured on every host (proxy, registry).
    Bootstrap,
    /// The swarm is formed.
    Cluster,
    /// The reverse proxy runs on every manager (only when the spec lists services).
    Proxy,
    /// The spec's services run in the `default` environment.
    Deploy,
}

impl fmt::Display for PhaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PhaseName::Provision => "provision",
            PhaseName::Bootstrap => "bootstrap",
            PhaseName::Cluster => "cluster",
            PhaseName::Proxy => "proxy",
            PhaseName::Deploy => "deploy",
        })
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    Provider(ProviderAction),
    WriteFile {
        path: String,
        #[serde(skip)]
        content: String,
        /// Permission bits (0600 for files that may hold credentials).
        #[serde(skip)]
        mode: u32,
    },
    InstallDocker,
    WriteDaemonJson {
        #[serde(skip)]
        content: String,
        added_insecure: Vec<String>,
        added_mirrors: Vec<String>,
        created_file: bool,
    },
    StartDocker,
    RestartDocker,
    RegistryLogin {
        server: String,
        username: String,
    },
    SwarmInit,
    SwarmJoin {
        role: Role,
        via: String,
    },
    /// Install or update k3s on a host and (re)start it: binary, airgap images, config,
    /// registries, service environment; joiners get the join token.
    K3sInstall {
        role: commands::k3s::K3sRole,
        changes: Vec<String>,
    },
    /// Fetch the first server's kubeconfig (pointed at its address) into the state directory.
    K3sKubeconfig,
    StartProxy {
        image: String,
        port: u16,
    },
    DeployService {
        service: String,
        image: String,
        /// The state says it runs, the swarm does not have it: deploy it again.
        replace: bool,
    },
    // ---- undo (down) ----
    /// Remove every service, network and proxy file cloudflow deployed.
    RemoveDeployments {
        services: Vec<String>,
    },
    SwarmLeave,
    /// Stop k3s and remove what cloudflow installed for it.
    K3sUninstall,
    RegistryLogout {
        server: String,
    },
    RestoreDaemonJson {
        #[serde(skip)]
        content: Option<String>,
    },
    RemoveFiles {
        paths: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    pub phase: PhaseName,
    /// The machine the step runs on; `None` for provider-level steps.
    pub host: Option<String>,
    #[serde(flatten)]
    pub step: Step,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub cluster: String,
    pub actions: Vec<Action>,
    /// Hosts whose bootstrap steps are a forecast (not reachable yet: facts unknown).
    pub forecast_hosts: Vec<String>,
    /// Things worth knowing that change nothing.
    pub notes: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn for_phase(&self, phase: PhaseName) -> impl Iterator<Item = &Action> {
        self.actions.iter().filter(move |a| a.phase == phase)
    }

    /// Steps for one host in one phase, in order.
    pub fn host_steps(&self, phase: PhaseName, host: &str) -> Vec<&Step> {
        self.for_phase(phase)
            .filter(|a| a.host.as_deref() == Some(host))
            .map(|a| &a.step)
            .collect()
    }

    pub fn until(mut self, last: Option<PhaseName>) -> Self {
        if let Some(last) = last {
            self.actions.retain(|a| a.phase <= last);
        }
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A host cannot be brought to the wanted state by cloudflow.
    #[error("host {host}: {message}")]
    Host { host: String, message: String },
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// A host as the planner sees it: a machine that exists, or one the provider will create.
#[derive(Debug, Clone)]
pub struct PlannedHost {
    pub name: String,
    pub role: Role,
}

/// Everything the planner looks at. All plain data.
pub struct Inputs<'a> {
    pub spec: &'a Spec,
    pub state: &'a ClusterState,
    /// Machines that exist now.
    pub machines: &'a [Machine],
    /// What the provider would do (from `Provider::plan`).
    pub provider_actions: &'a [ProviderAction],
    /// Facts by machine name, for hosts reachable now.
    pub facts: &'a BTreeMap<String, HostFacts>,
    pub renderer: &'a Renderer,
    /// On Kubernetes, the workloads as the API reports them (Swarm's come from the leader's
    /// facts).
    pub cluster_view: Option<&'a ClusterView>,
    /// k3s on our machines (`orchestrator: kubernetes` with lab, bare metal or AWS).
    pub k3s: Option<&'a K3sInputs>,
}

/// What the planner compares k3s hosts with: read on this machine before planning.
#[derive(Debug, Clone)]
pub struct K3sInputs {
    /// SHA-256 of the artifacts' k3s binary.
    pub binary_sha: String,
    /// What `/var/lib/rancher/k3s/agent/images/cloudflow.sha` says when the images are in place.
    pub marker: String,
    /// Each host's node address (private where the provider has one).
    pub node_ips: BTreeMap<String, String>,
    /// Whether the kubeconfig cloudflow fetched is in the state directory.
    pub kubeconfig_present: bool,
    /// The registry password (registries.yaml holds it), when the spec has a login.
    pub password: Option<secrecy::SecretString>,
    /// Names and addresses the servers' certificate is valid for.
    pub sans: Vec<String>,
}

/// What runs on a cluster whose API cloudflow asks directly (Kubernetes), named as the
/// orchestrator names workloads.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// Workload → (ready, desired).
    pub workloads: BTreeMap<String, (u32, u32)>,
    pub proxy: String,
    pub naming: fn(&str, &str, crate::spec::Strategy, crate::state::Color) -> String,
}

/// The hosts there will be once provisioning is done: existing ones (not being destroyed)
/// plus those the provider creates, managers first as the provider ordered them.
pub fn planned_hosts(
    machines: &[Machine],
    provider_actions: &[ProviderAction],
) -> Vec<PlannedHost> {
    let destroyed = |name: &str| {
        provider_actions
            .iter()
            .any(|a| matches!(a, ProviderAction::Destroy { resource } if resource.name == name))
    };
    let mut hosts: Vec<PlannedHost> = machines
        .iter()
        .filter(|m| !destroyed(&m.name))
        .map(|m| PlannedHost {
            name: m.name.clone(),
            role: m.role,
        })
        .collect();
    for a in provider_actions {
        if let ProviderAction::Create {
            resource,
            role: Some(role),
        } = a
        {
            hosts.push(PlannedHost {
                name: resource.name.clone(),
                role: *role,
            });
        }
    }
    hosts
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The plan for `up`.
pub fn compute(i: &Inputs) -> Result<Plan, PlanError> {
    let mut plan = Plan {
        cluster: i.spec.name.clone(),
        ..Default::default()
    };
    for a in i.provider_actions {
        plan.actions.push(Action {
            phase: PhaseName::Provision,
            host: None,
            step: Step::Provider(a.clone()),
        });
    }
    let hosts = planned_hosts(i.machines, i.provider_actions);
    let kubernetes = i.spec.orchestrator == crate::spec::Orchestrator::Kubernetes;
    for h in &hosts {
        let facts = i.facts.get(&h.name);
        if facts.is_none() {
            plan.forecast_hosts.push(h.name.clone());
        }
        if kubernetes {
            continue; // k3s brings its own container runtime: no Docker to bootstrap
        }
        for step in bootstrap_steps(i, &h.name, facts)? {
            plan.actions.push(Action {
                phase: PhaseName::Bootstrap,
                host: Some(h.name.clone()),
                step,
            });
        }
    }
    if kubernetes {
        k3s_steps(i, &hosts, &mut plan);
    } else {
        cluster_steps(&hosts, i.facts, &mut plan);
    }
    deploy_steps(i, &hosts, &mut plan);
    live_size_notes(i, &mut plan);
    Ok(plan)
}

/// Declared vs live: a worker count changed by `nodes scale` (or a hook) is kept by `up`;
/// `plan` says so where it differs from the spec.
fn live_size_notes(i: &Inputs, plan: &mut Plan) {
    if let crate::spec::ProviderSpec::Gke(_) = &i.spec.provider {
        if i.spec.proxy.http_proxy.is_some() || i.spec.proxy.https_proxy.is_some() {
            plan.notes.push(
                "proxy.http_proxy does not apply on GKE: the nodes are Google's and reach the internet through the VPC (Cloud NAT)".into(),
            );
        }
        if i.spec.registry.auth.is_some() {
            plan.notes.push(
                "registry.auth does not apply on GKE: grant the node pools' service account read access to the registry (or use imagePullSecrets)".into(),
            );
        }
    }
    if let crate::spec::ProviderSpec::Aws(a) = &i.spec.provider
        && let Some(live) = i.state.workers
        && live != a.workers
    {
        plan.notes.push(format!(
            "workers: live {live}, spec {} — `up` keeps the live count; `cloudflow nodes scale {}` changes it",
            a.workers, a.workers
        ));
    }
}

/// Proxy and deploy: from the leader's view of the swarm (reality) and the state (which
/// colour is live). Services already deployed keep their live image and replicas; `plan`
/// notes where the spec says otherwise.
fn deploy_steps(i: &Inputs, hosts: &[PlannedHost], plan: &mut Plan) {
    if i.spec.services.is_empty() {
        return;
    }
    let (running, host, proxy_name, naming) = match i.cluster_view {
        Some(v) => (Some(&v.workloads), None, v.proxy.as_str(), v.naming),
        None => {
            let Some(lead) = leader(hosts, i.facts) else {
                return;
            };
            (
                i.facts.get(&lead.name).map(|f| &f.swarm_services),
                Some(lead.name.clone()),
                commands::swarm::PROXY_SERVICE,
                deploy::service_name
                    as fn(&str, &str, crate::spec::Strategy, crate::state::Color) -> String,
            )
        }
    };
    let runs = |name: &str| running.is_some_and(|s| s.contains_key(name));
    let proxy_ready = running
        .and_then(|s| s.get(proxy_name))
        .is_some_and(|(r, d)| *d > 0 && r == d);
    let wanted_image = i.spec.proxy.image.clone().unwrap_or_default();
    let image_changed = i
        .state
        .proxy
        .as_ref()
        .is_some_and(|p| p.image != wanted_image);
    if let Some(p) = &i.state.proxy
        && p.port != i.spec.proxy.port.unwrap_or(80)
    {
        plan.notes.push(format!(
            "the proxy is published on port {}, the spec says {}: cloudflow does not move a running proxy (`down` and `up` do)",
            p.port,
            i.spec.proxy.port.unwrap_or(80)
        ));
    }
    // A manager joining now will run a proxy task too: it needs the routes (and the
    // certificates they name) that the running ones have.
    let manager_joins = plan.actions.iter().any(|a| {
        matches!(
            a.step,
            Step::SwarmJoin {
                role: Role::Manager,
                ..
            }
        )
    });
    if !proxy_ready || image_changed || (manager_joins && i.state.proxy.is_some()) {
        plan.actions.push(Action {
            phase: PhaseName::Proxy,
            host: host.clone(),
            step: Step::StartProxy {
                image: i.spec.proxy.image.clone().unwrap_or_default(),
                port: i.spec.proxy.port.unwrap_or(80),
            },
        });
    }
    let env = i.state.environments.get(deploy::DEFAULT_ENV);
    for name in env.iter().flat_map(|e| e.services.keys()) {
        if !i.spec.services.contains_key(name) {
            plan.notes.push(format!(
                "{name} runs in the default environment but is no longer in the spec: cloudflow leaves it running (`down` removes it)"
            ));
        }
    }
    for (name, svc) in &i.spec.services {
        let rec = env
            .and_then(|e| e.services.get(name))
            .filter(|r| r.live().is_some());
        match rec {
            None => plan.actions.push(Action {
                phase: PhaseName::Deploy,
                host: host.clone(),
                step: Step::DeployService {
                    service: name.clone(),
                    image: svc.image.clone(),
                    replace: false,
                },
            }),
            Some(r) => {
                let live = r.live().expect("filtered");
                if !runs(&naming(deploy::DEFAULT_ENV, name, r.strategy, r.live)) {
                    plan.actions.push(Action {
                        phase: PhaseName::Deploy,
                        host: host.clone(),
                        step: Step::DeployService {
                            service: name.clone(),
                            image: live.image.clone(),
                            replace: true,
                        },
                    });
                }
                if live.image != svc.image {
                    plan.notes.push(format!(
                        "{name}: live image {}, spec {} — `cloudflow deploy {name}` changes it",
                        live.image, svc.image
                    ));
                }
                if live.replicas != svc.replicas {
                    plan.notes.push(format!(
                        "{name}: live replicas {}, spec {} — `up` keeps the live count; `cloudflow scale {name} {}` changes it",
                        live.replicas, svc.replicas, svc.replicas
                    ));
                }
            }
        }
    }
}

fn bootstrap_steps(
    i: &Inputs,
    host: &str,
    facts: Option<&HostFacts>,
) -> Result<Vec<Step>, PlanError> {
    let host_err = |message: String| PlanError::Host {
        host: host.to_string(),
        message,
    };
    let mut steps = Vec::new();
    let init = facts.map(|f| f.init).unwrap_or(Init::None);

    let mut docker_env_changed = false;
    for f in commands::proxy_files(i.renderer, &i.spec.proxy, init)? {
        let current = facts.and_then(|h| h.files.get(&f.path));
        if current != Some(&format!("{}:{:o}", sha256_hex(&f.content), f.mode)) {
            docker_env_changed |= f.path != commands::APT_PROXY;
            steps.push(Step::WriteFile {
                path: f.path,
                content: f.content,
                mode: f.mode,
            });
        }
    }

    let installed = facts.is_some_and(HostFacts::docker_installed);
    if !installed {
        if let Some(f) = facts {
            let debian_like = ["debian", "ubuntu"].contains(&f.os_id.as_str())
                || f.os_like
                    .split_whitespace()
                    .any(|l| l == "debian" || l == "ubuntu");
            if !debian_like {
                return Err(host_err(format!(
                    "Docker is not installed and this host runs {}; cloudflow installs Docker only from Debian/Ubuntu \
                     packages: install Docker there yourself, then run cloudflow again",
                    f.os_name
                )));
            }
        }
        steps.push(Step::InstallDocker);
    }

    let current = facts.and_then(|f| f.daemon_json.as_deref());
    let merged = daemon_json::merge(current, &i.spec.registry.insecure, &i.spec.registry.mirrors)
        .map_err(|e| {
        host_err(format!(
            "{} {e}; fix it by hand, cloudflow will not overwrite it",
            commands::DAEMON_JSON
        ))
    })?;
    let daemon_changed = merged.is_some();
    if let Some(m) = merged {
        steps.push(Step::WriteDaemonJson {
            content: m.content,
            added_insecure: m.added_insecure,
            added_mirrors: m.added_mirrors,
            created_file: m.created_file,
        });
    }

    let running = facts.is_some_and(|f| f.docker_running);
    if !running {
        steps.push(Step::StartDocker);
    } else if daemon_changed || docker_env_changed {
        steps.push(Step::RestartDocker);
    }

    if let Some(auth) = &i.spec.registry.auth
        && !facts.is_some_and(|f| f.logins.contains(&auth.server))
    {
        steps.push(Step::RegistryLogin {
            server: auth.server.clone(),
            username: auth.username.clone(),
        });
    }
    let _ = i.state; // recorded state does not change what must be done: facts are the truth.
    Ok(steps)
}

/// The manager that leads: the first manager already active in a swarm, else the first manager.
pub fn leader<'a>(
    hosts: &'a [PlannedHost],
    facts: &BTreeMap<String, HostFacts>,
) -> Option<&'a PlannedHost> {
    let managers = || hosts.iter().filter(|h| h.role == Role::Manager);
    managers()
        .find(|h| {
            facts
                .get(&h.name)
                .is_some_and(|f| f.swarm.active() && f.swarm.manager)
        })
        .or_else(|| managers().next())
}

fn cluster_steps(hosts: &[PlannedHost], facts: &BTreeMap<String, HostFacts>, plan: &mut Plan) {
    let Some(lead) = leader(hosts, facts) else {
        return;
    };
    let active = |name: &str| facts.get(name).is_some_and(|f| f.swarm.active());
    if !active(&lead.name) {
        plan.actions.push(Action {
            phase: PhaseName::Cluster,
            host: Some(lead.name.clone()),
            step: Step::SwarmInit,
        });
    }
    for h in hosts.iter().filter(|h| h.name != lead.name) {
        match facts.get(&h.name) {
            Some(f) if f.swarm.active() => {
                if (h.role == Role::Manager) != f.swarm.manager {
                    plan.notes.push(format!(
                        "{} is in the swarm as a {}, the spec says {}: cloudflow does not promote or demote nodes",
                        h.name,
                        if f.swarm.manager { "manager" } else { "worker" },
                        h.role
                    ));
                }
            }
            _ => plan.actions.push(Action {
                phase: PhaseName::Cluster,
                host: Some(h.name.clone()),
                step: Step::SwarmJoin {
                    role: h.role,
                    via: lead.name.clone(),
                },
            }),
        }
    }
}

/// k3s on every host: the first manager starts the cluster, other managers join it as
/// servers, workers as agents. A host whose binary, images, files or process differ from
/// what the spec wants gets one step naming what changes.
fn k3s_steps(i: &Inputs, hosts: &[PlannedHost], plan: &mut Plan) {
    use commands::k3s::{self, K3sRole};
    let Some(k) = i.k3s else {
        return;
    };
    let Some(first) = hosts.iter().find(|h| h.role == Role::Manager) else {
        return;
    };
    let ip = |h: &str| k.node_ips.get(h).cloned().unwrap_or_default();
    let first_ip = ip(&first.name);
    let sans = &k.sans;
    let password = {
        use secrecy::ExposeSecret;
        k.password.as_ref().map(|p| p.expose_secret().to_string())
    };
    let mut first_changes = false;
    for h in hosts {
        let role = if h.name == first.name {
            K3sRole::ServerInit
        } else if h.role == Role::Manager {
            K3sRole::ServerJoin
        } else {
            K3sRole::Agent
        };
        let f = i.facts.get(&h.name);
        let file = |p: &str| f.and_then(|f| f.files.get(p));
        let mut changes = Vec::new();
        if f.and_then(|f| f.k3s_bin.as_deref()) != Some(k.binary_sha.as_str()) {
            changes.push(format!(
                "install the k3s binary ({})",
                &k.binary_sha[..12.min(k.binary_sha.len())]
            ));
        }
        if file(k3s::IMAGES_MARKER) != Some(&format!("{}:644", sha256_hex(&k.marker))) {
            changes.push("copy the airgap images".into());
        }
        let wanted = k3s::files(
            role,
            &ip(&h.name),
            &first_ip,
            sans,
            &i.spec.registry,
            password.as_deref(),
            &i.spec.proxy,
        );
        for (path, content) in &wanted {
            if file(path) != Some(&format!("{}:600", sha256_hex(content))) {
                changes.push(format!("write {path}"));
            }
        }
        if role != K3sRole::ServerInit && file(k3s::TOKEN_FILE).is_none() {
            changes.push("the join token".into());
        }
        if !f.is_some_and(|f| f.k3s_running) || !changes.is_empty() {
            changes.push(format!("start k3s {}", role.command()));
        }
        if changes.is_empty() {
            continue;
        }
        first_changes |= role == K3sRole::ServerInit;
        plan.actions.push(Action {
            phase: PhaseName::Cluster,
            host: Some(h.name.clone()),
            step: Step::K3sInstall { role, changes },
        });
    }
    if first_changes || !k.kubeconfig_present {
        plan.actions.push(Action {
            phase: PhaseName::Cluster,
            host: Some(first.name.clone()),
            step: Step::K3sKubeconfig,
        });
    }
}

/// The plan for `down`. Cloud and lab providers destroy their machines (no SSH); on hosts
/// cloudflow did not create, it undoes what the state says it did, in reverse phase order.
pub fn compute_down(
    state: &ClusterState,
    machines: &[Machine],
    owns_machines: bool,
    destroy: &[ProviderAction],
    facts: &BTreeMap<String, HostFacts>,
) -> Result<Plan, PlanError> {
    let mut plan = Plan {
        cluster: state.cluster.clone(),
        ..Default::default()
    };
    if !owns_machines {
        // Deployments go before the swarm does.
        if let Some((lead, f)) = machines
            .iter()
            .filter(|m| m.role == Role::Manager)
            .find_map(|m| {
                facts
                    .get(&m.name)
                    .filter(|f| f.swarm.manager)
                    .map(|f| (m, f))
            })
            && !f.swarm_services.is_empty()
        {
            plan.actions.push(Action {
                phase: PhaseName::Deploy,
                host: Some(lead.name.clone()),
                step: Step::RemoveDeployments {
                    services: f.swarm_services.keys().cloned().collect(),
                },
            });
        }
        // Cluster: workers leave first, the leader last.
        let mut leaving: Vec<&Machine> = machines
            .iter()
            .filter(|m| state.hosts.get(&m.name).is_some_and(|h| h.swarm.is_some()))
            .filter(|m| facts.get(&m.name).is_some_and(|f| f.swarm.active()))
            .collect();
        leaving.sort_by_key(|m| {
            (
                m.role == Role::Manager,
                facts.get(&m.name).is_some_and(|f| f.swarm.manager),
            )
        });
        for m in leaving {
            plan.actions.push(Action {
                phase: PhaseName::Cluster,
                host: Some(m.name.clone()),
                step: Step::SwarmLeave,
            });
        }
        for m in machines {
            let (Some(rec), Some(f)) = (state.hosts.get(&m.name), facts.get(&m.name)) else {
                continue;
            };
            let mut steps = Vec::new();
            for server in &rec.logged_in {
                if f.logins.contains(server) {
                    steps.push(Step::RegistryLogout {
                        server: server.clone(),
                    });
                }
            }
            let mut restart = false;
            if let Some(d) = &rec.daemon_json {
                let restored = daemon_json::unmerge(
                    f.daemon_json.as_deref(),
                    &d.added_insecure,
                    &d.added_mirrors,
                    d.created_file,
                )
                .map_err(|e| PlanError::Host {
                    host: m.name.clone(),
                    message: format!("{} {e}", commands::DAEMON_JSON),
                })?;
                if let Some(content) = restored {
                    steps.push(Step::RestoreDaemonJson { content });
                    restart = true;
                }
            }
            let present: Vec<String> = rec
                .files
                .iter()
                .filter(|p| f.files.contains_key(*p))
                .cloned()
                .collect();
            if !present.is_empty() {
                restart |= present.iter().any(|p| p != commands::APT_PROXY);
                steps.push(Step::RemoveFiles { paths: present });
            }
            if restart && f.docker_running {
                steps.push(Step::RestartDocker);
            }
            for step in steps {
                plan.actions.push(Action {
                    phase: PhaseName::Bootstrap,
                    host: Some(m.name.clone()),
                    step,
                });
            }
        }
    }
    for a in destroy {
        plan.actions.push(Action {
            phase: PhaseName::Provision,
            host: None,
            step: Step::Provider(a.clone()),
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
