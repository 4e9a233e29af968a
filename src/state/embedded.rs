//! The embedded store: one redb file in `.cloudflow/` beside the spec. Keys are
//! `<cluster>/<sub-key>` (see [`super::flat`]); a `revs` table counts each cluster's writes so
//! a write is conditional on the revision it read, as with etcd. The lock is an OS file lock on
//! `<cluster>.lock` (released by the kernel when its holder exits, however it exits), whose
//! content names the holder.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Flat, Holder, LockInfo, StateError, StateLock, StateStore, Stored, flatten};

const KEYS: TableDefinition<&str, &str> = TableDefinition::new("keys");
const REVS: TableDefinition<&str, i64> = TableDefinition::new("revs");
/// Before records were split into keys: one JSON document per cluster. Read, and removed at
/// the first write.
const LEGACY: TableDefinition<&str, &str> = TableDefinition::new("clusters");

/// The database is opened per transaction (redb holds an exclusive file lock while open), so
/// several clusters' cloudflow processes can share one directory; the per-cluster lock file is
/// what serialises work on one cluster.
pub struct Embedded {
    dir: PathBuf,
}

impl Embedded {
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let err = |m: String| StateError::Store {
            location: dir.display().to_string(),
            message: m,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create directory: {e}")))?;
        let store = Embedded {
            dir: dir.to_path_buf(),
        };
        store.db()?;
        Ok(store)
    }

    fn db(&self) -> Result<Database, StateError> {
        use backon::{BlockingRetryable, ConstantBuilder};
        let path = self.dir.join("state.redb");
        (|| Database::create(&path))
            .retry(
                ConstantBuilder::default()
                    .with_delay(Duration::from_millis(50))
                    .with_max_times(200),
            )
            .when(|e| matches!(e, redb::DatabaseError::DatabaseAlreadyOpen))
            .call()
            .map_err(|e| self.err(e))
    }

    fn err(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Store {
            location: self.location(),
            message: e.to_string(),
        }
    }

    fn lock_path(&self, cluster: &str) -> PathBuf {
        self.dir.join(format!("{cluster}.lock"))
    }

    fn read_holder(&self, file: &mut std::fs::File) -> Option<LockInfo> {
        let mut text = String::new();
        file.rewind().ok()?;
        file.read_to_string(&mut text).ok()?;
        let holder: Holder = serde_json::from_str(&text).ok()?;
        Some(LockInfo {
            holder,
            lease_left_secs: None,
        })
    }

    fn open_lock_file(&self, cluster: &str) -> Result<std::fs::File, StateError> {
        let path = self.lock_path(cluster);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| self.err(format!("cannot open lock {}: {e}", path.display())))
    }

    fn unknown_holder(&self, cluster: &str) -> LockInfo {
        LockInfo {
            holder: Holder {
                user: "?".into(),
                host: "this machine".into(),
                pid: 0,
                command: format!("(unrecorded; see {})", self.lock_path(cluster).display()),
                since: "?".into(),
            },
            lease_left_secs: None,
        }
    }
}

fn prefix(cluster: &str) -> String {
    format!("{cluster}/")
}

impl StateStore for Embedded {
    fn location(&self) -> String {
        self.dir.join("state.redb").display().to_string()
    }

    fn load_flat(&self, cluster: &str) -> Result<Option<Stored>, StateError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| self.err(e))?;
        let mut flat = Flat::new();
        let mut rev = 0;
        match txn.open_table(KEYS) {
            Ok(t) => {
                let p = prefix(cluster);
                for row in t.range(p.as_str()..).map_err(|e| self.err(e))? {
                    let (k, v) = row.map_err(|e| self.err(e))?;
                    let Some(sub) = k.value().strip_prefix(&p) else {
                        break;
                    };
                    flat.insert(sub.to_string(), v.value().to_string());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err(e)),
        }
        if !flat.is_empty() {
            if let Ok(t) = txn.open_table(REVS)
                && let Some(r) = t.get(cluster).map_err(|e| self.err(e))?
            {
                rev = r.value();
            }
            return Ok(Some(Stored { flat, rev }));
        }
        // A record written before keys were split: moved to keys, whole, in one transaction.
        let legacy = match txn.open_table(LEGACY) {
            Ok(t) => match t.get(cluster).map_err(|e| self.err(e))? {
                Some(v) => v.value().to_string(),
                None => return Ok(None),
            },
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        drop(txn);
        drop(db);
        let state = serde_json::from_str(&legacy)
            .map_err(|e| self.err(format!("record for cluster {cluster} is unreadable: {e}")))?;
        let flat = flatten(&state);
        let puts: Vec<(String, String)> =
            flat.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let rev = self.commit(cluster, 0, &puts, &[])?;
        Ok(Some(Stored { flat, rev }))
    }

    fn commit(
        &self,
        cluster: &str,
        rev: i64,
        puts: &[(String, String)],
        deletes: &[String],
    ) -> Result<i64, StateError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.err(e))?;
        let next;
        {
            let mut revs = txn.open_table(REVS).map_err(|e| self.err(e))?;
            let current = revs
                .get(cluster)
                .map_err(|e| self.err(e))?
                .map(|r| r.value())
                .unwrap_or(0);
            if current != rev {
                return Err(StateError::Conflict {
                    cluster: cluster.to_string(),
                    location: self.location(),
                    why: format!("read at revision {rev}, the store is at {current}"),
                });
            }
            next = current + 1;
            revs.insert(cluster, next).map_err(|e| self.err(e))?;
            let mut keys = txn.open_table(KEYS).map_err(|e| self.err(e))?;
            let p = prefix(cluster);
            for k in deletes {
                keys.remove(format!("{p}{k}").as_str())
                    .map_err(|e| self.err(e))?;
            }
            for (k, v) in puts {
                keys.insert(format!("{p}{k}").as_str(), v.as_str())
                    .map_err(|e| self.err(e))?;
            }
            let mut legacy = txn.open_table(LEGACY).map_err(|e| self.err(e))?;
            legacy.remove(cluster).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))?;
        Ok(next)
    }

    fn delete(&self, cluster: &str, rev: i64) -> Result<(), StateError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut revs = txn.open_table(REVS).map_err(|e| self.err(e))?;
            let current = revs
                .get(cluster)
                .map_err(|e| self.err(e))?
                .map(|r| r.value())
                .unwrap_or(0);
            if current != rev {
                return Err(StateError::Conflict {
                    cluster: cluster.to_string(),
                    location: self.location(),
                    why: format!("read at revision {rev}, the store is at {current}"),
                });
            }
            revs.remove(cluster).map_err(|e| self.err(e))?;
            let mut keys = txn.open_table(KEYS).map_err(|e| self.err(e))?;
            let p = prefix(cluster);
            let doomed: Vec<String> = keys
                .range(p.as_str()..)
                .map_err(|e| self.err(e))?
                .map_while(|row| {
                    let (k, _) = row.ok()?;
                    let k = k.value().to_string();
                    k.starts_with(&p).then_some(k)
                })
                .collect();
            for k in doomed {
                keys.remove(k.as_str()).map_err(|e| self.err(e))?;
            }
            let mut legacy = txn.open_table(LEGACY).map_err(|e| self.err(e))?;
            legacy.remove(cluster).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn lock(
        &self,
        cluster: &str,
        holder: &Holder,
        wait: Option<Duration>,
        waiting: &dyn Fn(&LockInfo),
    ) -> Result<StateLock, StateError> {
        let path = self.lock_path(cluster);
        let mut file = self.open_lock_file(cluster)?;
        let start = Instant::now();
        let mut told: Option<LockInfo> = None;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let info = self
                        .read_holder(&mut file)
                        .unwrap_or_else(|| self.unknown_holder(cluster));
                    match wait {
                        Some(w) if start.elapsed() < w => {
                            if told.as_ref() != Some(&info) {
                                waiting(&info);
                                told = Some(info);
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        _ => {
                            return Err(StateError::Locked {
                                cluster: cluster.to_string(),
                                location: path.display().to_string(),
                                holder: Box::new(info),
                                waited: waited(wait, start),
                            });
                        }
                    }
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(self.err(format!("cannot lock {}: {e}", path.display())));
                }
            }
        }
        let text = serde_json::to_string(holder).map_err(|e| self.err(e))?;
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(text.as_bytes()))
            .and_then(|_| file.flush())
            .map_err(|e| self.err(format!("cannot write {}: {e}", path.display())))?;
        Ok(StateLock::new(file))
    }

    fn lock_info(&self, cluster: &str) -> Result<Option<LockInfo>, StateError> {
        if !self.lock_path(cluster).exists() {
            return Ok(None);
        }
        let mut file = self.open_lock_file(cluster)?;
        match file.try_lock() {
            Ok(()) => Ok(None),
            Err(std::fs::TryLockError::WouldBlock) => Ok(Some(
                self.read_holder(&mut file)
                    .unwrap_or_else(|| self.unknown_holder(cluster)),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(self.err(e)),
        }
    }

    fn force_release(&self, cluster: &str) -> Result<Option<LockInfo>, StateError> {
        // The kernel releases the lock of a process that died; a held one has a live holder.
        match self.lock_info(cluster)? {
            None => Ok(None),
            Some(info) => Err(StateError::Store {
                location: self.lock_path(cluster).display().to_string(),
                message: format!(
                    "the lock is held by a running process, {info}: the embedded lock is released by the operating system when its holder exits, so there is nothing to force — stop that process (kill {}) if it is stuck",
                    info.holder.pid
                ),
            }),
        }
    }
}

/// ", after waiting 5s" when the command waited.
pub(super) fn waited(wait: Option<Duration>, start: Instant) -> String {
    match wait {
        Some(_) => format!(
            ", still after waiting {}",
            humantime::format_duration(Duration::from_secs(start.elapsed().as_secs()))
        ),
        None => String::new(),
    }
}
