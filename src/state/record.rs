//! The per-cluster record. Plain data, serialised as JSON inside the store.

use std::collections::BTreeMap;

use cloudflow_provider_api::{Machine, Resource, Role};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterState {
    pub cluster: String,
    pub provider: String,
    pub created: String,
    pub updated: String,
    /// Provider resources, keyed `kind/name`, recorded before they are created.
    #[serde(default)]
    pub resources: BTreeMap<String, ResourceRecord>,
    /// The machines as last provisioned.
    #[serde(default)]
    pub machines: Vec<Machine>,
    /// What cloudflow changed on each host (keyed by machine name), so `down` can undo it.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostRecord>,
    /// The live worker count once `nodes scale` changed it; the next `up` keeps it.
    #[serde(default)]
    pub workers: Option<u32>,
    /// Host keys accepted under `accept-new`, keyed `address:port`.
    #[serde(default)]
    pub known_hosts: BTreeMap<String, KnownKey>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ResourceStatus {
    Intended,
    Created,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceRecord {
    pub kind: String,
    pub name: String,
    pub status: ResourceStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostRecord {
    /// The host's own hostname (= its Swarm node name).
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub installed_docker: bool,
    /// What cloudflow merged into /etc/docker/daemon.json.
    #[serde(default)]
    pub daemon_json: Option<DaemonJsonRecord>,
    /// Files cloudflow wrote (proxy settings); removed on `down`.
    #[serde(default)]
    pub files: Vec<String>,
    /// Registries cloudflow logged in to (server names only; never credentials).
    #[serde(default)]
    pub logged_in: Vec<String>,
    /// Set when cloudflow made this host join (or init) the swarm.
    #[serde(default)]
    pub swarm: Option<Role>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DaemonJsonRecord {
    /// The file did not exist before cloudflow wrote it.
    pub created_file: bool,
    pub added_insecure: Vec<String>,
    pub added_mirrors: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KnownKey {
    pub key_type: String,
    /// The key in base64, as in known_hosts.
    pub key: String,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl ClusterState {
    pub fn new(cluster: &str, provider: &str) -> Self {
        let t = now();
        ClusterState {
            cluster: cluster.to_string(),
            provider: provider.to_string(),
            created: t.clone(),
            updated: t,
            resources: BTreeMap::new(),
            machines: Vec::new(),
            hosts: BTreeMap::new(),
            workers: None,
            known_hosts: BTreeMap::new(),
        }
    }

    pub fn touch(&mut self) {
        self.updated = now();
    }

    pub fn set_resource(&mut self, r: &Resource, status: ResourceStatus) {
        self.resources.insert(
            format!("{}/{}", r.kind, r.name),
            ResourceRecord {
                kind: r.kind.clone(),
                name: r.name.clone(),
                status,
            },
        );
    }

    pub fn remove_resource(&mut self, r: &Resource) {
        self.resources.remove(&format!("{}/{}", r.kind, r.name));
    }

    pub fn host(&mut self, machine: &str) -> &mut HostRecord {
        self.hosts.entry(machine.to_string()).or_default()
    }
}
