//! The embedded store: one redb file in `.cloudflow/` beside the spec, one key per cluster.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{ClusterState, StateError, StateLock, StateStore};

const CLUSTERS: TableDefinition<&str, &str> = TableDefinition::new("clusters");

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
                    .with_delay(std::time::Duration::from_millis(50))
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
}

impl StateStore for Embedded {
    fn location(&self) -> String {
        self.dir.join("state.redb").display().to_string()
    }

    fn load(&self, cluster: &str) -> Result<Option<ClusterState>, StateError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| self.err(e))?;
        let table = match txn.open_table(CLUSTERS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(value) = table.get(cluster).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        serde_json::from_str(value.value())
            .map(Some)
            .map_err(|e| self.err(format!("record for cluster {cluster} is unreadable: {e}")))
    }

    fn save(&self, state: &ClusterState) -> Result<(), StateError> {
        let json = serde_json::to_string(state).map_err(|e| self.err(e))?;
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(CLUSTERS).map_err(|e| self.err(e))?;
            table
                .insert(state.cluster.as_str(), json.as_str())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn delete(&self, cluster: &str) -> Result<(), StateError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(CLUSTERS).map_err(|e| self.err(e))?;
            table.remove(cluster).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn lock(&self, cluster: &str) -> Result<StateLock, StateError> {
        let path = self.dir.join(format!("{cluster}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.err(format!("cannot open lock {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked {
                cluster: cluster.to_string(),
                location: path.display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(self.err(format!("cannot lock {}: {e}", path.display())))
            }
        }
    }
}
