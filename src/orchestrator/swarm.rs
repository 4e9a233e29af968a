//! Swarm: every call is a command builder from `commands::swarm` run on a manager over SSH.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ConstantBuilder, Retryable};

use super::Orchestrator;
use crate::commands::{
    self, swarm as cmd,
    swarm::{LiveService, ServiceRun},
};
use crate::deploy::{self, Task};
use crate::error::{Error, Result, collect_hosts};
use crate::exec::{Executor, Target, for_each_host};
use crate::spec::Strategy;
use crate::state::Color;
use crate::wait::{Stop, until};

const PHASE: &str = "deploy";

pub struct Swarm {
    pub exec: Arc<dyn Executor>,
    /// The manager that runs `docker service …`.
    pub leader: Target,
    /// Every manager (where the proxy runs).
    pub managers: Vec<Target>,
    pub cluster: String,
    /// `proxy.https.port`: the proxy also listens for HTTPS there.
    pub https_port: Option<u16>,
}

#[async_trait::async_trait]
impl Orchestrator for Swarm {
    fn workload(&self, env: &str, service: &str, strategy: Strategy, color: Color) -> String {
        deploy::service_name(env, service, strategy, color)
    }

    /// dnsrr service names, resolved per request through Swarm's DNS.
    fn upstream(&self, env: &str, service: &str, color: Color, preview: bool) -> String {
        deploy::swarm_upstream(env, service, color, preview)
    }

    fn env_space(&self, env: &str) -> String {
        deploy::env_network(env)
    }

    fn edge_space(&self) -> String {
        deploy::EDGE_NETWORK.to_string()
    }

    fn proxy_workload(&self) -> String {
        cmd::PROXY_SERVICE.to_string()
    }

    /// One proxy task per manager.
    fn proxy_replicas(&self) -> u32 {
        self.managers.len() as u32
    }

    async fn ensure_space(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        _annotations: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.exec
            .run(&self.leader, PHASE, &cmd::network_create(name, labels))
            .await?;
        Ok(())
    }

    /// Polls `docker service ps` (Swarm has no watch for tasks).
    async fn converge(
        &self,
        service: &str,
        replicas: u32,
        image: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<Task>> {
        let deadline = std::time::Instant::now() + timeout;
        let waited = until(Duration::from_millis(500), deadline, || async {
            let tasks = self.tasks(service).await.map_err(Stop::Failed)?;
            let c = deploy::convergence(&tasks, replicas, image);
            if c.done {
                return Ok(tasks
                    .into_iter()
                    .filter(|t| t.desired == "running" && t.state == "running")
                    .collect());
            }
            let failed = tasks
                .iter()
                .filter(|t| ["failed", "rejected"].contains(&t.state.as_str()))
                .filter(|t| image.is_none_or(|i| deploy::image_matches(&t.image, i)))
                .count() as u32;
            let seen = format!(
                "{} running, {} still stopping{}",
                c.running,
                c.stopping,
                c.last_error
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            );
            // A task that keeps being rejected (an image that cannot be pulled) fails early.
            if c.running == 0 && failed >= replicas + 3 {
                return Err(Stop::Failed(Error::Other(format!(
                    "{service}: gave up after {failed} failed task(s) waiting for {replicas} replica(s) running{}: {seen}",
                    image.map(|i| format!(" {i}")).unwrap_or_default(),
                ))));
            }
            Err(Stop::NotYet(seen))
        })
        .await;
        waited.map_err(|e| match e {
            Stop::Failed(e) => e,
            Stop::NotYet(seen) => Error::Other(format!(
                "{service}: gave up after {}s waiting for {replicas} replica(s) running{}: {seen}",
                timeout.as_secs(),
                image.map(|i| format!(" {i}")).unwrap_or_default(),
            )),
        })
    }

    async fn remove_spaces(&self, labels: &[(&str, &str)]) -> Result<()> {
        // A network can only go once the tasks of removed services have let go of it.
        let c = cmd::networks_rm(labels);
        (|| async { self.exec.run(&self.leader, PHASE, &c).await })
            .retry(
                ConstantBuilder::default()
                    .with_delay(Duration::from_secs(1))
                    .with_max_times(90),
            )
            .await?;
        Ok(())
    }

    async fn services(&self, labels: &[(&str, &str)]) -> Result<Vec<String>> {
        let out = self
            .exec
            .run(&self.leader, PHASE, &cmd::services_ls(labels))
            .await?;
        Ok(out
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    async fn create_service(&self, run: &ServiceRun) -> Result<()> {
        self.exec
            .run(&self.leader, PHASE, &cmd::service_create(run))
            .await?;
        Ok(())
    }

    async fn update_service(&self, run: &ServiceRun, live: &LiveService) -> Result<()> {
        self.exec
            .run(&self.leader, PHASE, &cmd::service_update(run, live))
            .await?;
        Ok(())
    }

    async fn scale_service(&self, name: &str, replicas: u32) -> Result<()> {
        self.exec
            .run(&self.leader, PHASE, &cmd::service_scale(name, replicas))
            .await?;
        Ok(())
    }

    async fn inspect_service(&self, name: &str) -> Result<Option<LiveService>> {
        let out = self
            .exec
            .probe(&self.leader, PHASE, &cmd::service_inspect(name))
            .await?;
        if out.code != 0 {
            if out.stderr.to_lowercase().contains("no such service") {
                return Ok(None);
            }
            return Err(Error::Other(format!(
                "host {}: inspecting service {name} failed: {}",
                self.leader.name,
                out.stderr.trim()
            )));
        }
        Ok(Some(
            deploy::parse_container_spec(&out.stdout).map_err(Error::Other)?,
        ))
    }

    async fn ensure_secret(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        value: secrecy::SecretString,
    ) -> Result<()> {
        self.exec
            .run(
                &self.leader,
                PHASE,
                &cmd::secret_create(name, labels, value),
            )
            .await?;
        Ok(())
    }

    async fn remove_secrets(&self, labels: &[(&str, &str)], unused_only: bool) -> Result<()> {
        self.exec
            .run(&self.leader, PHASE, &cmd::secrets_rm(labels, unused_only))
            .await?;
        Ok(())
    }

    async fn remove_services(&self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            return Ok(());
        }
        self.exec
            .run(&self.leader, PHASE, &cmd::services_rm(names))
            .await?;
        Ok(())
    }

    async fn write_proxy_files(&self, files: &[super::ProxyFile]) -> Result<()> {
        use secrecy::ExposeSecret;
        for f in files {
            let path = format!("{}/{}", cmd::PROXY_CONF_DIR, f.path);
            let c = commands::write_file_mode(
                "proxy-file",
                &path,
                f.content.expose_secret(),
                if f.private { 0o600 } else { 0o644 },
            );
            self.on_managers(&c).await?;
        }
        Ok(())
    }

    async fn ensure_https_port(&self) -> Result<()> {
        if let Some(p) = self.https_port {
            self.exec
                .run(&self.leader, "proxy", &cmd::proxy_publish_https(p))
                .await?;
        }
        Ok(())
    }

    async fn remove_proxy_files(&self, paths: &[String]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let full: Vec<String> = paths
            .iter()
            .map(|p| format!("{}/{p}", cmd::PROXY_CONF_DIR))
            .collect();
        self.on_managers(&commands::remove_files("proxy-files-rm", &full))
            .await
    }

    async fn sync_proxy_files(&self, paths: &[String]) -> Result<Vec<(String, String)>> {
        use crate::commands::{Cmd, Effect, quote};
        if self.managers.len() < 2 {
            return Ok(Vec::new());
        }
        // The routes last: the files they name are in place before a task could read them.
        let routes = cmd::PROXY_CONF
            .strip_prefix(&format!("{}/", cmd::PROXY_CONF_DIR))
            .expect("the routes live in the proxy's directory");
        let paths: Vec<String> = paths.iter().cloned().chain([routes.to_string()]).collect();
        let paths = &paths;
        let full = |p: &str| format!("{}/{p}", cmd::PROXY_CONF_DIR);
        let list: Vec<String> = paths.iter().map(|p| quote(&full(p))).collect();
        let check = Cmd::script(
            "proxy-files-check",
            Effect::Read,
            format!(
                "for f in {}; do [ -f \"$f\" ] || echo \"$f\"; done",
                list.join(" ")
            ),
        );
        // What each manager lacks (one round trip each).
        let results = for_each_host(&self.managers, 16, |t| {
            let check = &check;
            async move {
                let out = self.exec.probe(t, PHASE, check).await?;
                if out.code != 0 {
                    return Err(crate::exec::ExecError::Local(format!(
                        "host {}: checking the proxy's files failed: {}",
                        t.name,
                        out.stderr.trim()
                    )));
                }
                Ok::<_, crate::exec::ExecError>(
                    out.stdout
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect::<std::collections::BTreeSet<String>>(),
                )
            }
        })
        .await;
        let missing: Vec<(&Target, std::collections::BTreeSet<String>)> =
            self.managers.iter().zip(collect_hosts(results)?).collect();
        let mut copied = Vec::new();
        for p in paths {
            let path = full(p);
            let lacking: Vec<&Target> = missing
                .iter()
                .filter(|(_, m)| m.contains(&path))
                .map(|(t, _)| *t)
                .collect();
            if lacking.is_empty() {
                continue;
            }
            let Some((source, _)) = missing.iter().find(|(_, m)| !m.contains(&path)) else {
                // No manager has it: the next order or install writes it everywhere.
                continue;
            };
            let read = Cmd::argv("proxy-file-read", Effect::Read, &["cat", &path]);
            let out = self.exec.probe(source, PHASE, &read).await?;
            if out.code != 0 {
                return Err(Error::Other(format!(
                    "host {}: reading {path} to copy it to {} failed: {}",
                    source.name,
                    lacking
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    out.stderr.trim()
                )));
            }
            let content = secrecy::SecretString::from(out.stdout);
            let private = p.ends_with(".key") || p.starts_with("acme-account-");
            for t in lacking {
                use secrecy::ExposeSecret;
                let w = commands::write_file_mode(
                    "proxy-file-copy",
                    &path,
                    content.expose_secret(),
                    if private { 0o600 } else { 0o644 },
                );
                self.exec.run(t, "proxy", &w).await?;
                copied.push((t.name.clone(), p.clone()));
            }
        }
        Ok(copied)
    }

    async fn read_proxy_file(&self, path: &str) -> Result<Option<String>> {
        let full = format!("{}/{path}", cmd::PROXY_CONF_DIR);
        let c = crate::commands::Cmd::argv(
            "proxy-file-read",
            crate::commands::Effect::Read,
            &["cat", &full],
        );
        let out = self.exec.probe(&self.leader, PHASE, &c).await?;
        Ok((out.code == 0 && !out.stdout.is_empty()).then_some(out.stdout))
    }

    async fn logs(
        &self,
        service: &str,
        follow: bool,
        since: Option<&str>,
        sink: crate::exec::Sink,
    ) -> Result<()> {
        let code = self
            .exec
            .stream(
                &self.leader,
                PHASE,
                &cmd::service_logs(service, follow, since),
                sink,
            )
            .await?;
        if code != 0 {
            return Err(Error::Other(format!(
                "host {}: docker service logs {service} exited {code}",
                self.leader.name
            )));
        }
        Ok(())
    }

    async fn tasks(&self, service: &str) -> Result<Vec<Task>> {
        let out = self
            .exec
            .probe(&self.leader, PHASE, &cmd::service_tasks(service))
            .await?;
        if out.code != 0 {
            // `docker service ps` of a service that does not exist (any more).
            if out.stderr.contains("no such service") || out.stderr.contains("not found") {
                return Ok(Vec::new());
            }
            return Err(Error::Other(format!(
                "host {}: listing the tasks of {service} failed: {}",
                self.leader.name,
                out.stderr.trim()
            )));
        }
        deploy::parse_tasks(service, &out.stdout).map_err(Error::Other)
    }

    async fn ensure_proxy(&self, image: &str, port: u16, config: &str) -> Result<bool> {
        let exists = self
            .services(&[("cloudflow.cluster", &self.cluster)])
            .await?
            .iter()
            .any(|s| s == cmd::PROXY_SERVICE);
        if exists {
            self.exec
                .run(
                    &self.leader,
                    "proxy",
                    &cmd::service_set_image(cmd::PROXY_SERVICE, image),
                )
                .await?;
            if let Some(p) = self.https_port {
                // A proxy made before `proxy.https` was set: it starts listening on the HTTPS
                // port (a host-mode port change restarts its tasks, once).
                self.exec
                    .run(&self.leader, "proxy", &cmd::proxy_publish_https(p))
                    .await?;
            }
            return Ok(false);
        }
        // The bind-mounted configuration must be in place before the first task starts.
        // (Over stdin like every file cloudflow writes.)
        self.on_managers(&commands::write_file(
            "proxy-config",
            cmd::PROXY_CONF,
            config,
        ))
        .await?;
        self.exec
            .run(
                &self.leader,
                "proxy",
                &cmd::proxy_create(
                    image,
                    port,
                    self.https_port,
                    deploy::EDGE_NETWORK,
                    &self.cluster,
                ),
            )
            .await?;
        Ok(true)
    }

    async fn apply_proxy_config(&self, config: &str, image: &str) -> Result<()> {
        self.on_managers(&cmd::proxy_apply(config, image)).await
    }

    async fn remove_proxy(&self) -> Result<()> {
        self.remove_services(&[cmd::PROXY_SERVICE.to_string()])
            .await?;
        self.on_managers(&commands::remove_files(
            "proxy-config-rm",
            &[cmd::PROXY_CONF.to_string()],
        ))
        .await
    }

    fn proxy_endpoints(&self) -> Vec<(String, String)> {
        self.managers
            .iter()
            .map(|t| (t.name.clone(), t.address.clone()))
            .collect()
    }
}

impl Swarm {
    /// Run `c` on every manager (where the proxy runs), in parallel; every failure is named.
    async fn on_managers(&self, c: &crate::commands::Cmd) -> Result<()> {
        let results = for_each_host(&self.managers, 16, |t| async move {
            self.exec.run(t, "proxy", c).await
        })
        .await;
        collect_hosts(results)?;
        Ok(())
    }
}
