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
    /// Node pool sizes cloudflow set after creation (GKE), by pool: the spec's size then and
    /// the size set. The next `up` keeps the live size while the spec still says `declared`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, PoolSize>,
    /// Host keys accepted under `accept-new`, keyed `address:port`.
    #[serde(default)]
    pub known_hosts: BTreeMap<String, KnownKey>,
    /// Deploy environments by name (`default` once anything is deployed).
    #[serde(default)]
    pub environments: BTreeMap<String, EnvRecord>,
    /// Set when cloudflow started the reverse proxy.
    #[serde(default)]
    pub proxy: Option<ProxyRecord>,
    /// Random, per cluster: salts the fingerprints in service secrets' names. Not a secret
    /// value itself; no secret value is ever stored.
    #[serde(default)]
    pub secret_salt: Option<String>,
    /// What the autoscaling hooks did, shared by every `serve` on this state: deliveries
    /// that acted and when each target last changed (the cooldown across processes).
    #[serde(default, skip_serializing_if = "HookRecord::is_empty")]
    pub hook: HookRecord,
    /// TLS certificates the proxy serves, by name (`env-<env>` from ACME, `file-<n>` from the
    /// spec's files). Public facts only: the private keys live on the managers, never here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub certs: BTreeMap<String, CertRecord>,
    /// ACME orders that failed, by certificate name: the next order waits (a CA limits failed
    /// validations per name), longer after every failure. Gone once an order succeeds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cert_failures: BTreeMap<String, CertFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertFailure {
    /// RFC 3339: the last failed order.
    pub at: String,
    /// Failed orders in a row.
    pub attempts: u32,
    /// The CA's problem, shortened (no secret is in it: names, the CA, the problem document).
    pub error: String,
}

impl CertFailure {
    /// When the next order may go: 15 minutes after the first failure, doubling, at most a day.
    pub fn retry_at(&self) -> chrono::DateTime<chrono::Utc> {
        let at = chrono::DateTime::parse_from_rfc3339(&self.at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_default();
        let minutes = (15u64 << self.attempts.saturating_sub(1).min(7)).min(24 * 60);
        at + chrono::Duration::minutes(minutes as i64)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertRecord {
    /// Host names it serves (`*.example.com` covers one label).
    pub hosts: Vec<String>,
    /// RFC 3339.
    pub not_after: String,
    /// Hex, as the CA wrote it.
    pub serial: String,
    /// `acme` or `file`.
    pub source: String,
    /// SHA-256 of the certificate chain as installed (a file that changed is installed again).
    pub fingerprint: String,
}

impl CertRecord {
    /// The files' name under the proxy's `tls/` (`NAME-<fingerprint prefix>.crt|key`): a new
    /// certificate gets new files, so the live configuration never points at files nginx has
    /// not accepted yet.
    pub fn file_base(&self, name: &str) -> String {
        format!(
            "{name}-{}",
            &self.fingerprint[..self.fingerprint.len().min(12)]
        )
    }
}

impl CertRecord {
    pub fn covers(&self, host: &str) -> bool {
        crate::spec::cert_covers(&self.hosts, host)
    }

    /// Days until it expires (negative once it has).
    pub fn days_left(&self) -> i64 {
        chrono::DateTime::parse_from_rfc3339(&self.not_after)
            .map(|t| (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_days())
            .unwrap_or(-1)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HookRecord {
    /// Alert deliveries that acted (fingerprint@startsAt), newest last, bounded.
    #[serde(default)]
    pub deliveries: Vec<String>,
    /// Target (`service web in default`, `nodes`) → RFC 3339 of its last change by a hook.
    #[serde(default)]
    pub changed: BTreeMap<String, String>,
}

impl HookRecord {
    pub const DELIVERIES: usize = 512;

    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty() && self.changed.is_empty()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolSize {
    pub declared: u32,
    pub live: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProxyRecord {
    pub image: String,
    pub port: u16,
    /// Bumped on every configuration change; the proxy serves it back, so cloudflow knows
    /// when a reload is live.
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EnvRecord {
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; `None` lives until destroyed.
    pub expires: Option<String>,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceRecord>,
}

/// One deployed service of an environment: which colour is live and what each colour runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub strategy: crate::spec::Strategy,
    /// Container port the proxy routes to.
    pub port: Option<u16>,
    pub health_path: String,
    pub live: Color,
    #[serde(default)]
    pub blue: Option<ColorRecord>,
    #[serde(default)]
    pub green: Option<ColorRecord>,
    /// Set while a switch from this colour to `live` is being published: a command killed
    /// in between leaves it, and the next deploy-family command finishes or undoes the switch
    /// (the proxies may serve either colour until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_from: Option<Color>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColorRecord {
    pub image: String,
    /// Desired replicas (0 after `stop-old`).
    pub replicas: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }
}

impl std::fmt::Display for Color {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ServiceRecord {
    pub fn color(&self, c: Color) -> Option<&ColorRecord> {
        match c {
            Color::Blue => self.blue.as_ref(),
            Color::Green => self.green.as_ref(),
        }
    }
    pub fn color_mut(&mut self, c: Color) -> &mut Option<ColorRecord> {
        match c {
            Color::Blue => &mut self.blue,
            Color::Green => &mut self.green,
        }
    }
    /// The live colour's record (always there once deployed).
    pub fn live(&self) -> Option<&ColorRecord> {
        self.color(self.live)
    }
    /// The other colour, when it runs replicas (what the preview host serves).
    pub fn preview(&self) -> Option<&ColorRecord> {
        self.color(self.live.other()).filter(|c| c.replicas > 0)
    }
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
    /// The machine finished its first boot (SSH answered, cloud-init done): not waited for again.
    #[serde(default)]
    pub booted: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DaemonJsonRecord {
    /// The file did not exist before cloudflow wrote it.
    pub created_file: bool,
    pub added_insecure: Vec<String>,
    pub added_mirrors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KnownKey {
    pub key_type: String,
    /// The key in base64, as in known_hosts.
    pub key: String,
}

pub(super) fn now() -> String {
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
            pools: BTreeMap::new(),
            known_hosts: BTreeMap::new(),
            environments: BTreeMap::new(),
            proxy: None,
            secret_salt: None,
            hook: HookRecord::default(),
            certs: BTreeMap::new(),
            cert_failures: BTreeMap::new(),
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

    /// Bare-metal machines are named by their address, or `address:port` while another
    /// host shares the address. When the inventory changes that naming, the record follows
    /// the host (same address and port) instead of being orphaned under the old name. Returns
    /// whether anything moved.
    pub fn adopt_renamed_hosts(&mut self, machines: &[Machine]) -> bool {
        let named = |n: &str| machines.iter().any(|m| m.name == n);
        let mut moved = false;
        for m in machines {
            if self.hosts.contains_key(&m.name) {
                continue;
            }
            let with_port = format!("{}:{}", m.ssh.address, m.ssh.port);
            let old = [m.ssh.address.clone(), with_port]
                .into_iter()
                .find(|o| *o != m.name && self.hosts.contains_key(o) && !named(o));
            if let Some(old) = old
                && let Some(rec) = self.hosts.remove(&old)
            {
                self.hosts.insert(m.name.clone(), rec);
                moved = true;
            }
        }
        moved
    }
}
