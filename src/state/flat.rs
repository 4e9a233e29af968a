//! The record as the stores keep it: one key per host, resource, environment, pool and known
//! host key, plus `meta` for the rest. A save writes only the keys that changed (a host's
//! bootstrap step rewrites that host's key, not the whole fleet's record).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::ClusterState;

/// Sub-key (`meta`, `hosts/<name>`, …) → JSON text.
pub type Flat = BTreeMap<String, String>;

/// Maps whose entries are stored under their own keys.
const SPLIT: &[&str] = &["hosts", "resources", "known_hosts", "environments", "pools"];

pub const META: &str = "meta";

pub fn flatten(state: &ClusterState) -> Flat {
    let Value::Object(mut obj) = serde_json::to_value(state).expect("the record serialises") else {
        unreachable!("a record is an object")
    };
    let mut flat = Flat::new();
    for field in SPLIT {
        if let Some(Value::Object(entries)) = obj.remove(*field) {
            for (k, v) in entries {
                flat.insert(format!("{field}/{k}"), v.to_string());
            }
        }
    }
    flat.insert(META.into(), Value::Object(obj).to_string());
    flat
}

pub fn unflatten(flat: &Flat) -> Result<ClusterState, String> {
    let meta = flat.get(META).ok_or("the record has no meta key")?;
    let Value::Object(mut obj) =
        serde_json::from_str::<Value>(meta).map_err(|e| format!("meta: {e}"))?
    else {
        return Err("meta is not an object".into());
    };
    for field in SPLIT {
        obj.insert((*field).into(), Value::Object(Map::new()));
    }
    for (key, text) in flat {
        let Some((field, entry)) = key.split_once('/') else {
            continue;
        };
        let Some(Value::Object(map)) = obj.get_mut(field) else {
            return Err(format!("unexpected key {key}"));
        };
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{key}: {e}"))?;
        map.insert(entry.to_string(), v);
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| e.to_string())
}

/// What turns `old` into `new`: keys to write (always `meta`, which carries the revision) and
/// keys to delete.
pub fn diff(old: &Flat, new: &Flat) -> (Vec<(String, String)>, Vec<String>) {
    let puts = new
        .iter()
        .filter(|(k, v)| k.as_str() == META || old.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let deletes = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (puts, deletes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_a_host_change_writes_one_key() {
        let mut s = ClusterState::new("c", "lab");
        s.host("h1").installed_docker = true;
        s.host("h2");
        s.set_resource(
            &cloudflow_provider_api::Resource::new("container", "h/1"),
            super::super::ResourceStatus::Created,
        );
        let flat = flatten(&s);
        assert_eq!(unflatten(&flat).unwrap(), s);
        let mut t = s.clone();
        t.host("h2").installed_docker = true;
        t.hosts.remove("h1");
        let (puts, deletes) = diff(&flat, &flatten(&t));
        let keys: Vec<_> = puts.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["hosts/h2", "meta"]);
        assert_eq!(deletes, ["hosts/h1"]);
    }
}
