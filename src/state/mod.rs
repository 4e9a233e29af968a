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
use flat::{meta_holds_machines, meta_json};
pub use lock::{Holder, LockInfo, StateLock};
pub use record::{
    CertFailure, CertRecord, ClusterState, Color, ColorRecord, DaemonJsonRecord, EnvRecord,
    HookRecord, HostRecord, KnownKey, PoolSize, ProxyRecord, ResourceRecord, ResourceStatus,
    ServiceRecord,
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
    /// The stored `meta` still holds the machine list (an older record): the next save
    /// writes every machine key.
    machines_in_meta: bool,
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
                machines_in_meta: meta_holds_machines(&stored.flat),
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
            diff_states(&live.state, &mut next, live.machines_in_meta)
        };
        let rev = self
            .store
            .commit(&next.cluster, live.rev, &puts, &deletes)?;
        *live = Live {
            state: next,
            rev,
            machines_in_meta: false,
        };
        Ok(out)
    }

    /// Change one host's record. Unlike [`update`](Self::update) nothing else of the record is
    /// copied or compared: the write is that host's key and `meta`, whatever the fleet's size
    /// (a bootstrap of N hosts costs O(N) in all, not O(N²)). Nothing is written when `f`
    /// changes nothing.
    pub fn update_host<R>(
        &self,
        host: &str,
        f: impl FnOnce(&mut HostRecord) -> R,
    ) -> Result<R, StateError> {
        let key = format!("hosts/{host}");
        self.update_entry(
            key,
            |s| s.hosts.get(host).cloned(),
            f,
            |s, v| {
                s.hosts.insert(host.to_string(), v);
            },
        )
    }

    /// Record a host key accepted under `accept-new` (its own key and `meta`, like
    /// [`update_host`](Self::update_host)).
    pub fn put_known_host(&self, id: &str, key: KnownKey) -> Result<(), StateError> {
        self.update_entry(
            format!("known_hosts/{id}"),
            |s| s.known_hosts.get(id).cloned(),
            |k| *k = key,
            |s, v| {
                s.known_hosts.insert(id.to_string(), v);
            },
        )
    }

    fn update_entry<V: Clone + Default + PartialEq + serde::Serialize, R>(
        &self,
        key: String,
        get: impl Fn(&ClusterState) -> Option<V>,
        f: impl FnOnce(&mut V) -> R,
        put: impl FnOnce(&mut ClusterState, V),
    ) -> Result<R, StateError> {
        let mut live = self.live.lock().expect("state mutex");
        if live.rev == 0 || live.machines_in_meta {
            // A record not stored yet, or stored the old way: the general path writes it all.
            drop(live);
            let mut f = Some(f);
            let mut put = Some(put);
            return self.update(|s| {
                let mut v = get(s).unwrap_or_default();
                let out = (f.take().expect("once"))(&mut v);
                (put.take().expect("once"))(s, v);
                out
            });
        }
        let old = get(&live.state);
        let mut v = old.clone().unwrap_or_default();
        let out = f(&mut v);
        if old.as_ref() == Some(&v) {
            return Ok(out);
        }
        let entry = serde_json::to_string(&v).expect("an entry serialises");
        // `meta` of the record as it will be: the split maps and machines moved out for a
        // moment (not copied), the new `updated` in.
        let state = &mut live.state;
        let previous = std::mem::replace(&mut state.updated, record::now());
        let maps = (
            std::mem::take(&mut state.hosts),
            std::mem::take(&mut state.resources),
            std::mem::take(&mut state.known_hosts),
            std::mem::take(&mut state.environments),
            std::mem::take(&mut state.pools),
            std::mem::take(&mut state.machines),
        );
        let meta = meta_json(state);
        (
            state.hosts,
            state.resources,
            state.known_hosts,
            state.environments,
            state.pools,
            state.machines,
        ) = maps;
        let puts = [(key, entry), (flat::META.to_string(), meta)];
        let rev = live.rev;
        match self.store.commit(&live.state.cluster, rev, &puts, &[]) {
            Ok(rev) => {
                live.rev = rev;
                put(&mut live.state, v);
                Ok(out)
            }
            Err(e) => {
                live.state.updated = previous;
                Err(e)
            }
        }
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

    fn machine(name: &str) -> cloudflow_provider_api::Machine {
        use cloudflow_provider_api::{Machine, Role, SshEndpoint};
        Machine {
            name: name.into(),
            id: name.into(),
            role: Role::Worker,
            ssh: SshEndpoint {
                address: format!("10.0.0.{}", name.len()),
                port: 22,
                user: "root".into(),
            },
            running: true,
            private_address: None,
        }
    }

    #[test]
    fn a_host_write_stores_that_host_and_a_meta_that_does_not_grow_with_the_fleet() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(None, dir.path()).unwrap();
        let handle = StateHandle::new(store.clone(), ClusterState::new("f", "lab"));
        let meta_len = |store: &Arc<dyn StateStore>| {
            store.load_flat("f").unwrap().unwrap().flat[flat::META].len()
        };
        handle.update(|s| s.machines = vec![machine("m1")]).unwrap();
        let small = meta_len(&store);
        let names: Vec<String> = (0..300).map(|i| format!("host-{i}")).collect();
        handle
            .update(|s| s.machines = names.iter().map(|n| machine(n)).collect())
            .unwrap();
        for n in &names {
            handle
                .update_host(n, |h| h.installed_docker = true)
                .unwrap();
        }
        assert_eq!(meta_len(&store), small, "meta holds nothing per host");
        let stored = store.load_flat("f").unwrap().unwrap();
        assert_eq!(
            stored
                .flat
                .keys()
                .filter(|k| k.starts_with("machines/"))
                .count(),
            300
        );
        let (loaded, _) = load(store.as_ref(), "f").unwrap().unwrap();
        assert_eq!(loaded, handle.snapshot());
        assert_eq!(loaded.machines[299].name, "host-299", "machine order kept");
        assert!(loaded.hosts.values().all(|h| h.installed_docker));
        // A change that changes nothing writes nothing.
        let rev = stored.rev;
        handle
            .update_host("host-7", |h| h.installed_docker = true)
            .unwrap();
        assert_eq!(store.load_flat("f").unwrap().unwrap().rev, rev);
        // Fewer machines: the keys past the end go.
        handle.update(|s| s.machines.truncate(2)).unwrap();
        let (loaded, stored) = load(store.as_ref(), "f").unwrap().unwrap();
        assert_eq!(loaded.machines.len(), 2);
        assert_eq!(
            stored
                .flat
                .keys()
                .filter(|k| k.starts_with("machines/"))
                .count(),
            2
        );
        // A stale handle's host write is refused and leaves its memory as it was.
        let stale = StateHandle::at(
            store.clone(),
            loaded.clone(),
            Stored {
                flat: stored.flat,
                rev: stored.rev - 1,
            },
        );
        assert!(matches!(
            stale.update_host("host-1", |h| h.installed_docker = false),
            Err(StateError::Conflict { .. })
        ));
        assert!(stale.snapshot().hosts["host-1"].installed_docker);
    }

    #[test]
    fn a_record_whose_meta_holds_the_machines_gets_machine_keys_on_its_next_host_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(None, dir.path()).unwrap();
        let mut old = ClusterState::new("m", "lab");
        old.machines = vec![machine("a"), machine("b")];
        old.host("a");
        // As an older cloudflow stored it: the machine list inside `meta`.
        let mut flat = flatten(&old);
        flat.retain(|k, _| !k.starts_with("machines/"));
        let mut meta: serde_json::Value = serde_json::from_str(&flat[flat::META]).unwrap();
        meta["machines"] = serde_json::to_value(&old.machines).unwrap();
        flat.insert(flat::META.into(), meta.to_string());
        let puts: Vec<(String, String)> = flat.into_iter().collect();
        store.commit("m", 0, &puts, &[]).unwrap();
        let (state, stored) = load(store.as_ref(), "m").unwrap().unwrap();
        assert_eq!(state.machines, old.machines);
        let handle = StateHandle::at(store.clone(), state, stored);
        handle
            .update_host("a", |h| h.installed_docker = true)
            .unwrap();
        let stored = store.load_flat("m").unwrap().unwrap();
        assert!(!flat::meta_holds_machines(&stored.flat));
        let (now, _) = load(store.as_ref(), "m").unwrap().unwrap();
        assert_eq!(now.machines, old.machines);
        assert!(now.hosts["a"].installed_docker);
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
