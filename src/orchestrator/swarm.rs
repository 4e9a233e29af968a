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

const PHASE: &str = "deploy";

pub struct Swarm {
    pub exec: Arc<dyn Executor>,
    /// The manager that runs `docker service …`.
    pub leader: Target,
    /// Every manager (where the proxy runs).
    pub managers: Vec<Target>,
    pub cluster: String,
}

#[async_trait::async_trait]
impl Orchestrator for Swarm {
    async fn ensure_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        self.exec
            .run(&self.leader, PHASE, &cmd::network_create(name, labels))
            .await?;
        Ok(())
    }

    async fn remove_networks(&self, labels: &[(&str, &str)]) -> Result<()> {
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
                &cmd::proxy_create(image, port, deploy::EDGE_NETWORK, &self.cluster),
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
