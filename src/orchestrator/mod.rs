//! The orchestrator seam: what `deploy/` needs from Swarm (and, later, Kubernetes).
//! Implementations turn these calls into command builders run by the one executor.

mod swarm;

use std::collections::BTreeMap;

use crate::commands::swarm::{LiveService, ServiceRun};
use crate::deploy::Task;
use crate::error::Result;

pub use swarm::Swarm;

#[async_trait::async_trait]
pub trait Orchestrator: Send + Sync {
    /// Create a network for an environment (or the edge) unless it exists.
    async fn ensure_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()>;
    /// Remove networks carrying all of `labels`; retried while tasks still hold them.
    async fn remove_networks(&self, labels: &[(&str, &str)]) -> Result<()>;
    /// Names of services carrying all of `labels`.
    async fn services(&self, labels: &[(&str, &str)]) -> Result<Vec<String>>;
    async fn create_service(&self, run: &ServiceRun) -> Result<()>;
    /// Change image, replicas, environment and secrets of a running service in place (what
    /// `live` has and `run` does not goes).
    async fn update_service(&self, run: &ServiceRun, live: &LiveService) -> Result<()>;
    async fn scale_service(&self, name: &str, replicas: u32) -> Result<()>;
    /// What a service has now (environment, secrets); `None` when it does not exist.
    async fn inspect_service(&self, name: &str) -> Result<Option<LiveService>>;
    /// Create a secret unless it exists; the value never leaves the command's stdin.
    async fn ensure_secret(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        value: secrecy::SecretString,
    ) -> Result<()>;
    /// Remove secrets carrying all of `labels` (with `unused_only`, those no service mounts).
    async fn remove_secrets(&self, labels: &[(&str, &str)], unused_only: bool) -> Result<()>;
    /// Remove services; names that do not exist are fine.
    async fn remove_services(&self, names: &[String]) -> Result<()>;
    /// Every task of a service (running, starting, stopping, failed); empty when it does not exist.
    async fn tasks(&self, service: &str) -> Result<Vec<Task>>;
    /// Start the reverse proxy unless it runs; `config` is in place before it starts.
    async fn ensure_proxy(&self, image: &str, port: u16, config: &str) -> Result<bool>;
    /// Put a new proxy configuration in place everywhere the proxy runs and reload it gracefully.
    /// `image` is the proxy's (to test a configuration where no proxy task runs right now).
    async fn apply_proxy_config(&self, config: &str, image: &str) -> Result<()>;
    /// Remove the proxy and its configuration files.
    async fn remove_proxy(&self) -> Result<()>;
    /// `(name, address)` of every place the proxy listens (probes and reload checks go there).
    fn proxy_endpoints(&self) -> Vec<(String, String)>;
}
