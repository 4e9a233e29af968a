//! The orchestrator seam: what `deploy/` needs from Swarm or Kubernetes. `deploy/` speaks of
//! environments, workloads (one per colour), routes and a health gate; each implementation
//! says what those are on its orchestrator (Swarm: overlay networks, dnsrr services, nginx
//! routes to them, a probe of every replica through the proxy; Kubernetes: namespaces,
//! Deployments, a Service whose selector names the live colour, readiness probes).

mod kubernetes;
mod swarm;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::commands::swarm::{LiveService, ServiceRun};
use crate::deploy::{ServiceRoute, Task};
use crate::error::Result;
use crate::spec::Strategy;
use crate::state::Color;

pub use kubernetes::{
    Expose, KubeSource, KubeStatus, Kubernetes, kubeconfig_document, proxy_workload, workload_name,
};
pub use swarm::Swarm;

/// How a new colour proves it is healthy before traffic moves to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// cloudflow probes every replica itself, through a per-replica route in the proxy.
    ProbeEachReplica,
    /// The orchestrator's readiness probes: converged means every replica is Ready.
    Readiness,
}

/// A file for [`Orchestrator::write_proxy_files`].
pub struct ProxyFile {
    /// Relative to the proxy's directory (`tls/env-default.key`).
    pub path: String,
    pub content: secrecy::SecretString,
    pub private: bool,
}

#[async_trait::async_trait]
pub trait Orchestrator: Send + Sync {
    // ---- names -------------------------------------------------------------------------------

    /// The workload that runs `color` of `service` in `env` (in-place services have one).
    fn workload(&self, env: &str, service: &str, strategy: Strategy, color: Color) -> String;
    /// Where the proxy sends the live (or, with `preview`, the other) colour of `service`.
    fn upstream(&self, env: &str, service: &str, color: Color, preview: bool) -> String;
    /// The space an environment's workloads live in (Swarm: its network; Kubernetes: its
    /// namespace).
    fn env_space(&self, env: &str) -> String;
    /// The space the proxy lives in.
    fn edge_space(&self) -> String;
    /// The proxy's workload, and how many replicas of it run when it serves.
    fn proxy_workload(&self) -> String;
    fn proxy_replicas(&self) -> u32;
    /// The template the proxy's routes are rendered with.
    fn proxy_template(&self) -> &'static str {
        "nginx-routes.conf"
    }
    fn gate(&self) -> Gate {
        Gate::ProbeEachReplica
    }

    // ---- spaces, workloads, secrets, routes ---------------------------------------------------

    /// Create an environment's space (or the edge's) unless it exists. `annotations` carry
    /// what is not a label (an environment's expiry).
    async fn ensure_space(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<()>;
    /// Remove spaces carrying all of `labels`, returning once they are gone.
    async fn remove_spaces(&self, labels: &[(&str, &str)]) -> Result<()>;
    /// Point every routed service's traffic at its live colour where the orchestrator routes
    /// by itself (Kubernetes Service selectors). Swarm routes in the proxy only.
    async fn apply_routes(&self, _routes: &[ServiceRoute]) -> Result<()> {
        Ok(())
    }
    /// Wait until `service` runs exactly `replicas` replicas (of `image`, when given), each
    /// Ready where the orchestrator has readiness, and none of the removed ones still
    /// stopping. Returns the running replicas.
    async fn converge(
        &self,
        service: &str,
        replicas: u32,
        image: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<Task>>;
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
    /// Write files where the proxy reads them (`tls/NAME.crt|key`, `acme/TOKEN`, relative to
    /// the proxy's directory) on every place it runs; `private` ones are 0600. Contents go over
    /// stdin, never argv. Kubernetes keeps them in a Secret (certificates, the account) and
    /// the proxy's ConfigMap (challenges, rolled out before this returns).
    async fn write_proxy_files(&self, files: &[ProxyFile]) -> Result<()>;
    /// The proxy listens on the HTTPS port (`proxy.https`); a proxy made before it was set
    /// starts to.
    async fn ensure_https_port(&self) -> Result<()> {
        Ok(())
    }
    /// Remove files written by [`Self::write_proxy_files`] (missing ones are fine).
    async fn remove_proxy_files(&self, _paths: &[String]) -> Result<()> {
        Ok(())
    }
    /// Copy `paths` (relative to the proxy's directory), and the live routes, to every place
    /// the proxy runs that lacks them, from one that has them (a manager added after they
    /// were written). Contents pass through this process only (never argv, output or logs);
    /// keys and account files stay 0600. Returns `(place, path)` of every copy made.
    async fn sync_proxy_files(&self, _paths: &[String]) -> Result<Vec<(String, String)>> {
        Ok(Vec::new())
    }
    /// A file cloudflow keeps with the cluster (relative to the proxy's directory), read from
    /// the first place the proxy runs; `None` when it is not there.
    async fn read_proxy_file(&self, _path: &str) -> Result<Option<String>> {
        Ok(None)
    }
    /// The logs of every replica of `service`, line by line (each naming its replica) to
    /// `sink`; with `follow`, until the command is interrupted. `since`: `10m`, a timestamp.
    async fn logs(
        &self,
        service: &str,
        follow: bool,
        since: Option<&str>,
        sink: crate::exec::Sink,
    ) -> Result<()>;
}
