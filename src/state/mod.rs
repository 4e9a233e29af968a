//! State: what cloudflow created and changed, per cluster, so `down` (and a re-run after a
//! crash) can undo it. Reality (labels, tags, facts) stays the truth; state names ownership.
//!
//! Behind [`StateStore`] so a shared backend (etcd) can follow the embedded one. Every write is
//! one transaction holding the whole cluster record: never half-written. No secrets go in.

mod embedded;
mod record;

use std::path::Path;
use std::sync::{Arc, Mutex};

pub use embedded::Embedded;
pub use record::{
    ClusterState, Color, ColorRecord, DaemonJsonRecord, EnvRecord, HostRecord, KnownKey, PoolSize,
    ProxyRecord, ResourceRecord, ResourceStatus, ServiceRecord,
};

use cloudflow_provider_api::{Journal, ProviderError, Resource};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state store could not be opened, read or written.
    #[error("state store {location}: {message}")]
    Store { location: String, message: String },
    /// Another cloudflow holds the cluster's lock.
    #[error(
        "cluster {cluster} is locked by another cloudflow process ({location}); wait for it to finish"
    )]
    Locked { cluster: String, location: String },
    /// A `--state` URL names a backend that is not available.
    #[error("unsupported --state {url:?}: {why}")]
    Url { url: String, why: String },
}

/// Held for the duration of a command; dropping it releases the cluster.
pub struct StateLock {
    _file: std::fs::File,
}

pub trait StateStore: Send + Sync {
    /// Human-readable location, for messages.
    fn location(&self) -> String;
    fn load(&self, cluster: &str) -> Result<Option<ClusterState>, StateError>;
    fn save(&self, state: &ClusterState) -> Result<(), StateError>;
    fn delete(&self, cluster: &str) -> Result<(), StateError>;
    /// Take the cluster's exclusive lock, failing at once if another process holds it.
    fn lock(&self, cluster: &str) -> Result<StateLock, StateError>;
}

/// Open the store a `--state` URL names, or the embedded one in `default_dir`.
/// Accepted: a directory path, `file://DIR`. `etcd://` is reserved for the shared backend.
pub fn open(url: Option<&str>, default_dir: &Path) -> Result<Arc<dyn StateStore>, StateError> {
    match url {
        None | Some("") => Ok(Arc::new(Embedded::open(default_dir)?)),
        Some(u) if u.starts_with("etcd://") || u.starts_with("etcd+") => Err(StateError::Url {
            url: u.to_string(),
            why:
                "the etcd backend is not available in this build yet; use a directory or file://DIR"
                    .into(),
        }),
        Some(u) => {
            let dir = u.strip_prefix("file://").unwrap_or(u);
            if dir.contains("://") {
                return Err(StateError::Url {
                    url: u.to_string(),
                    why: "expected a directory or file://DIR".into(),
                });
            }
            Ok(Arc::new(Embedded::open(Path::new(dir))?))
        }
    }
}

/// The live cluster record plus its store: every mutation is saved at once.
#[derive(Clone)]
pub struct StateHandle {
    store: Arc<dyn StateStore>,
    state: Arc<Mutex<ClusterState>>,
}

impl StateHandle {
    pub fn new(store: Arc<dyn StateStore>, state: ClusterState) -> Self {
        StateHandle {
            store,
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn snapshot(&self) -> ClusterState {
        self.state.lock().expect("state mutex").clone()
    }

    /// Apply `f` and save the result in one transaction; on a failed save, memory is rolled back.
    pub fn update<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> Result<R, StateError> {
        let mut guard = self.state.lock().expect("state mutex");
        let before = guard.clone();
        let out = f(&mut guard);
        guard.touch();
        if let Err(e) = self.store.save(&guard) {
            *guard = before;
            return Err(e);
        }
        Ok(out)
    }

    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }
}

fn journal_error(resource: &Resource, e: StateError) -> ProviderError {
    ProviderError::Journal {
        resource: resource.to_string(),
        message: e.to_string(),
    }
}

impl Journal for StateHandle {
    fn intend(&self, resource: &Resource) -> Result<(), ProviderError> {
        self.update(|s| s.set_resource(resource, ResourceStatus::Intended))
            .map_err(|e| journal_error(resource, e))
    }

    fn created(&self, resource: &Resource) -> Result<(), ProviderError> {
        self.update(|s| s.set_resource(resource, ResourceStatus::Created))
            .map_err(|e| journal_error(resource, e))
    }

    fn removed(&self, resource: &Resource) -> Result<(), ProviderError> {
        self.update(|s| {
            s.remove_resource(resource);
            if resource.kind == "node-pool" {
                s.pools.remove(&resource.name);
            }
        })
        .map_err(|e| journal_error(resource, e))
    }

    fn pool_size(&self, pool: &str, declared: u32, live: u32) -> Result<(), ProviderError> {
        self.update(|s| {
            s.pools
                .insert(pool.to_string(), record::PoolSize { declared, live });
        })
        .map_err(|e| journal_error(&Resource::new("node-pool", pool), e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_records_follow_a_bare_metal_host_when_its_name_changes() {
        use cloudflow_provider_api::{Machine, Role, SshEndpoint};
        let m = |name: &str, port: u16| Machine {
            name: name.into(),
            id: name.into(),
            role: Role::Worker,
            ssh: SshEndpoint {
                address: "10.0.0.5".into(),
                port,
                user: "root".into(),
            },
            running: true,
            private_address: None,
        };
        let mut s = super::ClusterState::new("c", "bare-metal");
        s.host("10.0.0.5").installed_docker = true;
        // A second host joins the inventory at the same address: names gain their port.
        assert!(s.adopt_renamed_hosts(&[m("10.0.0.5:22", 22), m("10.0.0.5:2222", 2222)]));
        assert!(s.hosts["10.0.0.5:22"].installed_docker);
        assert!(!s.hosts.contains_key("10.0.0.5") && !s.hosts.contains_key("10.0.0.5:2222"));
        // It leaves again: the name loses its port, the record follows.
        assert!(s.adopt_renamed_hosts(&[m("10.0.0.5", 22)]));
        assert!(s.hosts["10.0.0.5"].installed_docker);
        assert!(!s.adopt_renamed_hosts(&[m("10.0.0.5", 22)]));
    }

    use super::*;

    #[test]
    fn embedded_store_round_trips_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(None, dir.path()).unwrap();
        assert!(store.load("demo").unwrap().is_none());
        let handle = StateHandle::new(store.clone(), ClusterState::new("demo", "lab"));
        let net = Resource::new("network", "cloudflow-demo");
        handle.intend(&net).unwrap();
        let loaded = store.load("demo").unwrap().unwrap();
        assert_eq!(
            loaded.resources["network/cloudflow-demo"].status,
            ResourceStatus::Intended
        );
        handle.created(&net).unwrap();
        assert_eq!(
            store.load("demo").unwrap().unwrap().resources["network/cloudflow-demo"].status,
            ResourceStatus::Created
        );
        handle.removed(&net).unwrap();
        assert!(store.load("demo").unwrap().unwrap().resources.is_empty());
        store.delete("demo").unwrap();
        assert!(store.load("demo").unwrap().is_none());
    }

    #[test]
    fn a_second_lock_on_the_same_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(
            Some(&format!("file://{}", dir.path().display())),
            Path::new("/nonexistent"),
        )
        .unwrap();
        let _held = store.lock("demo").unwrap();
        let second = open(None, dir.path()).unwrap();
        assert!(matches!(
            second.lock("demo"),
            Err(StateError::Locked { .. })
        ));
        assert!(second.lock("other").is_ok());
    }

    #[test]
    fn etcd_urls_are_refused_clearly() {
        let e = open(Some("etcd://127.0.0.1:2379"), Path::new("."))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("etcd backend is not available"),
            "{e}"
        );
    }
}
