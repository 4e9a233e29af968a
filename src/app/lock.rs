//! `lock status|release` and `state export|import`: the lock and the record, without a
//! provider (nothing here touches machines).

use std::io::Read;
use std::sync::Arc;

use serde_json::json;

use super::{Report, open_store, take_lock};
use crate::cli::{Cli, LockCommand, StateCommand};
use crate::error::{Error, Result};
use crate::spec;
use crate::state::{self, ClusterState, StateHandle};
use crate::ui::Ui;

/// The export's envelope: a version, so a later format can still read this one.
const FORMAT: &str = "cloudflow-state/1";

pub async fn lock(cli: &Cli, cmd: &LockCommand, _ui: Arc<Ui>) -> Result<Report> {
    let spec = spec::load(&cli.file)?;
    let store = open_store(cli, &spec)?;
    let location = store.location();
    match cmd {
        LockCommand::Status => {
            let info = store.lock_info(&spec.name)?;
            let text = match &info {
                Some(i) => format!("cluster {} is locked by {i} ({location})\n", spec.name),
                None => format!("cluster {}: not locked ({location})\n", spec.name),
            };
            Ok(Report {
                json: json!({"cluster": spec.name, "locked": info.is_some(), "lock": info, "store": location}),
                text,
            })
        }
        LockCommand::Release(a) => {
            if !a.force {
                return Err(Error::Usage(
                    "lock release takes the lock away from its holder: pass --force once you know the holder is gone (`lock status` names it)".into(),
                ));
            }
            let released = store.force_release(&spec.name)?;
            let text = match &released {
                Some(i) => {
                    eprintln!(
                        "warning: released the lock of {i}; if that process still runs, its next state write fails and it stops"
                    );
                    format!("cluster {}: lock released ({location})\n", spec.name)
                }
                None => format!("cluster {}: not locked; nothing to release\n", spec.name),
            };
            Ok(Report {
                json: json!({"cluster": spec.name, "released": released.is_some(), "lock": released}),
                text,
            })
        }
    }
}

pub async fn state(cli: &Cli, cmd: &StateCommand, ui: Arc<Ui>) -> Result<Report> {
    let spec = spec::load(&cli.file)?;
    let store = open_store(cli, &spec)?;
    match cmd {
        StateCommand::Export => {
            let Some(record) = store.load(&spec.name)? else {
                return Err(Error::Other(format!(
                    "no record of cluster {} in {}",
                    spec.name,
                    store.location()
                )));
            };
            let doc = json!({"format": FORMAT, "record": record});
            let text = serde_json::to_string_pretty(&doc).expect("json") + "\n";
            Ok(Report { json: doc, text })
        }
        StateCommand::Import(a) => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .map_err(|e| Error::Usage(format!("cannot read the record from stdin: {e}")))?;
            let doc: serde_json::Value = serde_json::from_str(&input).map_err(|e| {
                Error::Usage(format!("stdin is not a `state export` document: {e}"))
            })?;
            if doc.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
                return Err(Error::Usage(format!(
                    "stdin is not a `state export` document (expected \"format\": \"{FORMAT}\")"
                )));
            }
            let record: ClusterState = serde_json::from_value(doc["record"].clone())
                .map_err(|e| Error::Usage(format!("the exported record is unreadable: {e}")))?;
            if record.cluster != spec.name {
                return Err(Error::Usage(format!(
                    "the record is of cluster {}, the spec names {}: import it with that cluster's spec",
                    record.cluster, spec.name
                )));
            }
            let _lock = take_lock(cli, &store, &spec.name, &ui).await?;
            let (handle, replaced) = match state::load(store.as_ref(), &spec.name)? {
                Some((current, stored)) => {
                    if !a.force && current != record {
                        return Err(Error::Usage(format!(
                            "{} already has a record of cluster {}: pass --force to replace it",
                            store.location(),
                            spec.name
                        )));
                    }
                    (StateHandle::at(store.clone(), current, stored), true)
                }
                None => (
                    StateHandle::new(
                        store.clone(),
                        ClusterState::new(&spec.name, &record.provider),
                    ),
                    false,
                ),
            };
            let n = record.hosts.len();
            handle.update(|s| *s = record)?;
            Ok(Report {
                json: json!({"cluster": spec.name, "imported": true, "replaced": replaced, "hosts": n, "store": store.location()}),
                text: format!(
                    "cluster {}: record imported into {} ({n} host(s))\n",
                    spec.name,
                    store.location()
                ),
            })
        }
    }
}
