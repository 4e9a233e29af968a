//! The `Provider` trait and the types every cloudflow provider speaks.
//!
//! A provider makes machines exist (or, for bare metal, describes machines that already do),
//! lists what exists now (by label or tag, never from memory alone), and destroys what it made.
//! Everything after provisioning — SSH, Docker, Swarm — is the core's business, identical for
//! every provider.
//!
//! Providers record every resource in the [`Journal`] *before* the call that creates it, so a
//! crash between the call and the record can never leak it: the next `up` or `down` finds it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A machine's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// How the core reaches a machine over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    pub address: String,
    pub port: u16,
    pub user: String,
}

/// One machine as the rest of cloudflow sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// Stable name (lab: the container name; bare metal: the inventory address).
    pub name: String,
    /// The provider's own id (container id, instance id, or the address for bare metal).
    pub id: String,
    pub role: Role,
    pub ssh: SshEndpoint,
    /// Whether the machine is up as far as the provider can tell.
    pub running: bool,
    /// The address the cluster's members use to reach this machine (Swarm advertises and
    /// joins on it), when it differs from the SSH address: a cloud instance's private address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_address: Option<String>,
}

/// A resource a provider creates: recorded in the journal before it exists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resource {
    /// e.g. "network", "container", "instance", "security-group".
    pub kind: String,
    /// The name (or client token) the provider will create it under.
    pub name: String,
}

impl Resource {
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Resource {
            kind: kind.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// A change a provider would make, computed without I/O from what exists now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum ProviderAction {
    Create {
        resource: Resource,
        role: Option<Role>,
    },
    Start {
        resource: Resource,
    },
    Destroy {
        resource: Resource,
    },
    /// Bring an existing resource back to what the spec wants (a rule removed behind
    /// cloudflow's back, a half-made network left by a crash).
    Update {
        resource: Resource,
        change: String,
    },
}

impl fmt::Display for ProviderAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderAction::Create {
                resource,
                role: Some(role),
            } => {
                write!(f, "create {resource} ({role})")
            }
            ProviderAction::Create {
                resource,
                role: None,
            } => write!(f, "create {resource}"),
            ProviderAction::Start { resource } => write!(f, "start {resource}"),
            ProviderAction::Destroy { resource } => write!(f, "destroy {resource}"),
            ProviderAction::Update { resource, change } => {
                write!(f, "update {resource}: {change}")
            }
        }
    }
}

/// Where providers write down what they are about to create and what they removed.
/// The core backs it with the state store; each call is one durable write.
pub trait Journal: Send + Sync {
    /// Called *before* the API call that creates `resource`.
    fn intend(&self, resource: &Resource) -> Result<(), ProviderError>;
    /// Called once `resource` exists.
    fn created(&self, resource: &Resource) -> Result<(), ProviderError>;
    /// Called once `resource` is gone.
    fn removed(&self, resource: &Resource) -> Result<(), ProviderError>;
    /// Called once a node pool's size was changed: `declared` is the spec's size at the time,
    /// `live` the size the pool now has. The next `up` keeps `live` while the spec still says
    /// `declared` (CONTRACT: declared vs live).
    fn pool_size(&self, _pool: &str, _declared: u32, _live: u32) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// A node pool of a managed cluster, as the provider's API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub name: String,
    pub machine_type: String,
    /// The size cloudflow knows the pool to have (the API reports only the initial size).
    pub size: u32,
    /// `(min, max)` when the provider scales the pool by itself.
    pub autoscaling: Option<(u32, u32)>,
    pub spot: bool,
    pub version: String,
    pub status: String,
}

/// A managed Kubernetes cluster (GKE), as the provider's API reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedCluster {
    pub name: String,
    pub location: String,
    pub status: String,
    pub version: String,
    /// Total nodes, as the API counts them.
    pub nodes: u32,
    pub pools: Vec<PoolView>,
}

/// A credential that must never be printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn new(token: impl Into<String>) -> Self {
        SecretToken(token.into())
    }
    /// The token itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How a client authenticates to a managed cluster's Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeAuth {
    /// A bearer token cloudflow already holds (e.g. `CLOUDFLOW_GKE_TOKEN`).
    Token(SecretToken),
    /// A kubectl exec credential plugin that mints tokens itself (`gke-gcloud-auth-plugin`).
    Exec {
        command: String,
        args: Vec<String>,
        install_hint: String,
    },
}

/// The hand-off from a managed-cluster provider to the Kubernetes orchestrator: where the API
/// server is, the CA that signs its certificate, and how to authenticate. A value, not a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeEndpoint {
    /// `https://<address>`.
    pub server: String,
    /// PEM of the cluster's CA.
    pub ca_pem: Vec<u8>,
    pub auth: KubeAuth,
}

/// Progress lines from a provider's long work (image builds, waits).
pub trait Progress: Send + Sync {
    fn step(&self, what: &str);
}

/// What `destroy` did and what it could not do.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DestroyReport {
    pub removed: Vec<Resource>,
    /// Resources still present after destroy, each with why.
    pub left: Vec<(Resource, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider's backend (Docker engine, cloud API) refused or failed a call.
    #[error("{provider}: {action} failed: {message}")]
    Api {
        provider: &'static str,
        action: String,
        message: String,
    },
    /// Something the machine running cloudflow lacks (a tool, a daemon).
    #[error("{provider}: {message}\n  hint: {hint}")]
    Missing {
        provider: &'static str,
        message: String,
        hint: String,
    },
    /// The journal (state store) could not record a resource; nothing was created.
    #[error("could not record {resource} in the state before creating it: {message}")]
    Journal { resource: String, message: String },
    /// A value of the spec the provider's backend does not accept (region, image, type).
    #[error("{field}: {message}")]
    Spec { field: String, message: String },
    /// The provider cannot do this (e.g. bare metal cannot add machines).
    #[error("{provider} provider cannot {what}")]
    Unsupported {
        provider: &'static str,
        what: String,
    },
}

/// The interface every provider implements.
///
/// Providers of machines (lab, bare metal, AWS) return SSH machines from `list`. A managed-cluster
/// provider (GKE) returns none: it plans everything in `drift` (read from its API), reports its
/// cluster through `managed_cluster`, and hands the orchestrator a [`KubeEndpoint`].
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Short name used in messages and state: "lab", "bare-metal", "aws".
    fn kind(&self) -> &'static str;

    /// Whether `down` removes the machines themselves (lab, cloud). When false (bare metal),
    /// the core must undo its bootstrap on each host over SSH instead.
    fn owns_machines(&self) -> bool;

    /// The machines that exist now, found by label or tag (or the inventory, for bare metal).
    async fn list(&self) -> Result<Vec<Machine>, ProviderError>;

    /// What `create` would do, given what `list` returned. Pure: no I/O.
    fn plan(&self, existing: &[Machine]) -> Vec<ProviderAction>;

    /// What `create` would repair in resources that exist (read from the backend, not from
    /// memory): edited firewall rules, half-made networks. Nothing by default.
    async fn drift(&self) -> Result<Vec<ProviderAction>, ProviderError> {
        Ok(Vec::new())
    }

    /// Differences `create` leaves alone, for `plan` to show (a size kept from `nodes scale`,
    /// a setting the backend cannot change in place). Read after `drift`.
    async fn plan_notes(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }

    /// Whether new machines finish their first boot with cloud-init, so the core waits for
    /// `cloud-init status --wait` before it bootstraps them.
    fn boots_with_cloud_init(&self) -> bool {
        false
    }

    /// Make the wanted machines exist; idempotent. Returns every wanted machine.
    async fn create(
        &self,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError>;

    /// Remove everything this provider created for the cluster, then check that nothing is left.
    async fn destroy(
        &self,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<DestroyReport, ProviderError>;

    /// Add or remove workers (`nodes scale`). Providers that cannot make machines say so.
    async fn scale_workers(
        &self,
        _count: u32,
        _journal: &dyn Journal,
        _progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        Err(ProviderError::Unsupported {
            provider: self.kind(),
            what: "scale workers".into(),
        })
    }

    /// The managed cluster and its node pools (GKE); `None` for providers of machines, or
    /// when the cluster does not exist.
    async fn managed_cluster(&self) -> Result<Option<ManagedCluster>, ProviderError> {
        Ok(None)
    }

    /// Resize one node pool of a managed cluster (`nodes scale --pool`), returning when the
    /// provider's operation is done.
    async fn scale_pool(
        &self,
        _pool: &str,
        _count: u32,
        _journal: &dyn Journal,
        _progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported {
            provider: self.kind(),
            what: "scale node pools".into(),
        })
    }

    /// Where the managed cluster's Kubernetes API is, once it runs. `None` for providers of
    /// machines (the orchestrator installs Kubernetes on them itself).
    async fn kubernetes(&self) -> Result<Option<KubeEndpoint>, ProviderError> {
        Ok(None)
    }
}
