//! State: what cloudflow created and changed, per cluster, so `down` (and a re-run after a
//! crash) can undo it. Reality (labels, tags, facts) stays the truth; state names ownership.
//!
//! Behind [`StateStore`]: the embedded store (redb beside the spec) or etcd, shared by every
//! operator machine. A record is a set of keys under the cluster's prefix ([`flat`]); every
//! write is one transaction of the keys that changed, conditional on the revision this command
//! read and on its lock: never half-written, never silently overwriting another writer.
//! Every mutating command holds the cluster's lock ([`lock`]), which names its holder.
//! No secrets go in.

mod embedded;
mod etcd;
mod flat;
mod lock;
mod record;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use embedded::Embedded;
pub use etcd::Etcd;
pub use flat::{Flat, diff, diff_states, flatten, unflatten};
pub use lock::{Holder, LockInfo, StateLock};
pub use record::{
    CertRecord, ClusterState, Color, ColorRecord, DaemonJsonRecord, EnvRecord, HookRecord,
    HostRecord, KnownKey, PoolSize, ProxyRecord, ResourceRecord, ResourceStatus, ServiceRecord,
};

use cloudflow_provider_api::{Journal, ProviderError, Resource};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state store could not be opened, read or written.
    #[error("state store {location}: {message}")]
    Store { location: String, message: String },
    /// Another cloudflow holds the cluster's lock.
    #[error(
        "cluster {cluster} is locked by {holder} ({location}){waited}; wait for it to finish, or pass --lock-timeout 5m to wait for it (`cloudflow lock status` shows the holder)"
    )]
    Locked {
        cluster: String,
        location: String,
        holder: Box<LockInfo>,
        /// Empty when refused at once; otherwise how long this command waited.
        waited: String,
    },
    /// The record changed since this command read it: another writer (after a forced lock
    /// release, or a lost lease) got there first. Nothing of this write was stored.
    #[error(
        "the state of cluster {cluster} changed under this command ({location}): {why}; nothing of this write was stored — run the command again"
    )]
    Conflict {
        cluster: String,
        location: String,
        why: String,
    },
    /// A `--state` URL names a backend that is not available.
    #[error("unsupported --state {url:?}: {why}")]
    Url { url: String, why: String },
}

/// A record as stored, with the revision a conditional write compares against.
pub struct Stored {
    pub flat: Flat,
    /// 0: no record.
    pub rev: i64,
}

pub trait StateStore: Send + Sync {
    /// Human-readable location, for messages (never with credentials).
    fn location(&self) -> String;
    /// The cluster's keys and their revision; `None` when there is no record.
    fn load_flat(&self, cluster: &str) -> Result<Option<Stored>, StateError>;
    /// Write `puts` and delete `deletes` in one transaction, only if the record is still at
    /// `rev` (0: there is none yet) and, where this process holds the cluster's lock, only
    /// while it still does. Returns the new revision.
    fn commit(
        &self,
        cluster: &str,
        rev: i64,
        puts: &[(String, String)],
        deletes: &[String],
    ) -> Result<i64, StateError>;
    /// Remove the cluster's record (its lock stays with its holder).
    fn delete(&self, cluster: &str, rev: i64) -> Result<(), StateError>;
    /// Take the cluster's exclusive lock. Refused at once when another holds it, or after
    /// waiting up to `wait`; `waiting` is told who holds it while this waits.
    fn lock(
        &self,
        cluster: &str,
        holder: &Holder,
        wait: Option<Duration>,
        waiting: &dyn Fn(&LockInfo),
    ) -> Result<StateLock, StateError>;
    /// Who holds the cluster's lock, if anyone.
    fn lock_info(&self, cluster: &str) -> Result<Option<LockInfo>, StateError>;
    /// Take the lock from a holder that died. Returns the holder it removed.
    fn force_release(&self, cluster: &str) -> Result<Option<LockInfo>, StateError>;

    fn load(&self, cluster: &str) -> Result<Option<ClusterState>, StateError> {
        Ok(load(self, cluster)?.map(|(s, _)| s))
    }
}

/// The cluster's record and its revision.
pub fn load<S: StateStore + ?Sized>(
    store: &S,
    cluster: &str,
) -> Result<Option<(ClusterState, Stored)>, StateError> {
    let Some(stored) = store.load_flat(cluster)? else {
        return Ok(None);
    };
    let state = unflatten(&stored.flat).map_err(|m| StateError::Store {
        location: store.location(),
        message: format!("record for cluster {cluster} is unreadable: {m}"),
    })?;
    Ok(Some((state, stored)))
}

/// Open the store a `--state` URL names, or the embedded one in `default_dir`.
/// Accepted: a directory path, `file://DIR`, `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
pub fn open(url: Option<&str>, default_dir: &Path) -> Result<Arc<dyn StateStore>, StateError> {
    match url {
        None | Some("") => Ok(Arc::new(Embedded::open(default_dir)?)),
        Some(u) if u.starts_with("etcd://") || u.starts_with("etcds://") => {
            Ok(Arc::new(Etcd::open(u)?))
        }
        Some(u) => {
            let dir = u.strip_prefix("file://").unwrap_or(u);
            if dir.contains("://") {
                return Err(StateError::Url {
                    url: redact_url(u),
                    why:
                        "expected a directory, file://DIR or etcd://HOST:PORT[,HOST:PORT...]/PREFIX"
                            .into(),
                });
            }
            Ok(Arc::new(Embedded::open(Path::new(dir))?))
        }
    }
}

/// A `--state` URL as messages may show it: no query (credentials, file paths), no userinfo.
pub fn redact_url(url: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let Some((scheme, rest)) = base.split_once("://") else {
        return base.to_string();
    };
    let (hosts, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let hosts = hosts.rsplit_once('@').map_or(hosts, |(_, h)| h);
    if path.is_empty() {
        format!("{scheme}://{hosts}")
    } else {
        format!("{scheme}://{hosts}/{path}")
    }
}

struct Live {
    state: ClusterState,
    rev: i64,
}

/// The live cluster record plus its store: every mutation is saved at once, as one
/// conditional transaction of the keys it changed.
#[derive(Clone)]
pub struct StateHandle {
    store: Arc<dyn StateStore>,
    live: Arc<Mutex<Live>>,
}

impl StateHandle {
    /// A record the store does not have yet.
    pub fn new(store: Arc<dyn StateStore>, state: ClusterState) -> Self {
        Self::at(
            store,
            state,
            Stored {
                flat: Flat::new(),
                rev: 0,
            },
        )
    }

    /// A record as loaded (see [`load`]).
    pub fn at(store: Arc<dyn StateStore>, state: ClusterState, stored: Stored) -> Self {
        StateHandle {
            store,
            live: Arc::new(Mutex::new(Live {
                state,
                rev: stored.rev,
            })),
        }
    }

    pub fn snapshot(&self) -> ClusterState {
        self.live.lock().expect("state mutex").state.clone()
    }

    /// Apply `f` and save the keys it changed in one transaction; on a failed save, memory
    /// keeps the record as it was.
    pub fn update<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> Result<R, StateError> {
        let mut live = self.live.lock().expect("state mutex");
        let mut next = live.state.clone();
        let out = f(&mut next);
        next.touch();
        let (puts, deletes) = if live.rev == 0 {
            // A new record: all of it (and nothing to compare against).
            (flatten(&next).into_iter().collect(), Vec::new())
        } else {
            diff_states(&live.state, &mut next)
        };
        let rev = self
            .store
            .commit(&next.cluster, live.rev, &puts, &deletes)?;
        *live = Live { state: next, rev };
        Ok(out)
    }

    /// Remove the record from the store (conditional on it being the one this command read).
    pub fn delete(&self) -> Result<(), StateError> {
        let mut live = self.live.lock().expect("state mutex");
        if live.rev != 0 {
            self.store.delete(&live.state.cluster, live.rev)?;
        }
        live.rev = 0;
        Ok(())
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
        handle.delete().unwrap();
        assert!(store.load("demo").unwrap().is_none());
    }

    #[test]
    fn urls_in_messages_carry_no_credentials() {
        assert_eq!(
            redact_url("etcdd://ops:hunter2@e1:2379/p?password=x"),
            "etcdd://e1:2379/p"
        );
        let e = open(
            Some("etcdd://ops:hunter2@e1:2379/p?password=x"),
            Path::new("."),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(!e.contains("hunter2") && !e.contains("password"), "{e}");
    }

    #[test]
    fn a_record_from_before_keys_were_split_is_migrated_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut old = ClusterState::new("old", "lab");
        old.host("h1").installed_docker = true;
        old.host("h2");
        {
            let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn
                    .open_table(redb::TableDefinition::<&str, &str>::new("clusters"))
                    .unwrap();
                t.insert("old", serde_json::to_string(&old).unwrap().as_str())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let store = open(None, dir.path()).unwrap();
        let (state, stored) = load(store.as_ref(), "old").unwrap().unwrap();
        assert_eq!(state, old);
        let handle = StateHandle::at(store.clone(), state, stored);
        handle
            .update(|s| s.host("h2").installed_docker = true)
            .unwrap();
        let now = store.load("old").unwrap().unwrap();
        assert!(now.hosts["h1"].installed_docker && now.hosts["h2"].installed_docker);
    }

    #[test]
    fn a_second_lock_on_the_same_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(
            Some(&format!("file://{}", dir.path().display())),
            Path::new("/nonexistent"),
        )
        .unwrap();
        let me = Holder::current("up");
        let _held = store.lock("demo", &me, None, &|_| {}).unwrap();
        let second = open(None, dir.path()).unwrap();
        match second.lock("demo", &me, None, &|_| {}) {
            Err(StateError::Locked { holder, .. }) => {
                assert_eq!(holder.holder.pid, std::process::id());
                assert_eq!(holder.holder.command, "up");
            }
            other => panic!("expected Locked, got {:?}", other.err()),
        }
        assert_eq!(
            second.lock_info("demo").unwrap().unwrap().holder.command,
            "up"
        );
        assert!(second.lock("other", &me, None, &|_| {}).is_ok());
    }
}
