//! The record as the stores keep it: one key per host, resource, environment, pool, known host
//! key and machine, plus `meta` for the rest. A save writes only the keys that changed (a
//! host's bootstrap step rewrites that host's key and `meta`, not the whole fleet's record), so
//! `meta` holds nothing that grows with the fleet.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::ClusterState;

/// Sub-key (`meta`, `hosts/<name>`, …) → JSON text.
pub type Flat = BTreeMap<String, String>;

/// Maps whose entries are stored under their own keys.
const SPLIT: &[&str] = &["hosts", "resources", "known_hosts", "environments", "pools"];

pub const META: &str = "meta";

/// `machines` is a list (its order is the provider's): entry `i` is stored at `machines/<i>`,
/// zero-padded so that the keys sort in the list's order.
const MACHINES: &str = "machines";

pub fn machine_key(i: usize) -> String {
    format!("{MACHINES}/{i:06}")
}

/// Whether a stored `meta` still carries the machine list (written before machines had keys
/// of their own): the next save must then write every machine key.
pub fn meta_holds_machines(flat: &Flat) -> bool {
    flat.get(META).is_some_and(|m| {
        serde_json::from_str::<Value>(m)
            .ok()
            .and_then(|v| {
                v.get(MACHINES)
                    .and_then(|a| a.as_array())
                    .map(|a| !a.is_empty())
            })
            .unwrap_or(false)
    })
}

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
    if let Some(Value::Array(machines)) = obj.remove(MACHINES) {
        for (i, m) in machines.into_iter().enumerate() {
            flat.insert(machine_key(i), m.to_string());
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
    let mut machines = Vec::new();
    for (key, text) in flat {
        let Some((field, entry)) = key.split_once('/') else {
            continue;
        };
        if field == MACHINES {
            // The keys sort in the list's order.
            machines.push(serde_json::from_str::<Value>(text).map_err(|e| format!("{key}: {e}"))?);
            continue;
        }
        let Some(Value::Object(map)) = obj.get_mut(field) else {
            return Err(format!("unexpected key {key}"));
        };
        let v: Value = serde_json::from_str(text).map_err(|e| format!("{key}: {e}"))?;
        map.insert(entry.to_string(), v);
    }
    // A `meta` that still holds the list (an older record, or one whose first write with
    // machine keys did not finish) is the whole truth: keys beside it may be partial.
    let meta_has_list = obj
        .get(MACHINES)
        .and_then(|m| m.as_array())
        .is_some_and(|a| !a.is_empty());
    if !machines.is_empty() && !meta_has_list {
        obj.insert(MACHINES.into(), Value::Array(machines));
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

/// [`diff`] of the two records' flattenings, without serialising entries that did not change
/// (each is compared as a value first). `all_machines`: write every machine key (the stored
/// `meta` still holds the list, see [`meta_holds_machines`]).
pub fn diff_states(
    old: &ClusterState,
    new: &mut ClusterState,
    all_machines: bool,
) -> (Vec<(String, String)>, Vec<String>) {
    fn entries<V: PartialEq + serde::Serialize>(
        field: &str,
        old: &std::collections::BTreeMap<String, V>,
        new: &std::collections::BTreeMap<String, V>,
        puts: &mut Vec<(String, String)>,
        deletes: &mut Vec<String>,
    ) {
        for (k, v) in new {
            if old.get(k) != Some(v) {
                puts.push((
                    format!("{field}/{k}"),
                    serde_json::to_string(v).expect("an entry serialises"),
                ));
            }
        }
        for k in old.keys() {
            if !new.contains_key(k) {
                deletes.push(format!("{field}/{k}"));
            }
        }
    }
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    entries("hosts", &old.hosts, &new.hosts, &mut puts, &mut deletes);
    entries(
        "resources",
        &old.resources,
        &new.resources,
        &mut puts,
        &mut deletes,
    );
    entries(
        "known_hosts",
        &old.known_hosts,
        &new.known_hosts,
        &mut puts,
        &mut deletes,
    );
    entries(
        "environments",
        &old.environments,
        &new.environments,
        &mut puts,
        &mut deletes,
    );
    entries("pools", &old.pools, &new.pools, &mut puts, &mut deletes);
    for (i, m) in new.machines.iter().enumerate() {
        if all_machines || old.machines.get(i) != Some(m) {
            puts.push((
                machine_key(i),
                serde_json::to_string(m).expect("a machine serialises"),
            ));
        }
    }
    for i in new.machines.len()..old.machines.len() {
        deletes.push(machine_key(i));
    }
    // `meta`: the record without its split maps (moved out for a moment, not copied).
    let hosts = std::mem::take(&mut new.hosts);
    let resources = std::mem::take(&mut new.resources);
    let known_hosts = std::mem::take(&mut new.known_hosts);
    let environments = std::mem::take(&mut new.environments);
    let pools = std::mem::take(&mut new.pools);
    let machines = std::mem::take(&mut new.machines);
    let meta = meta_json(new);
    new.machines = machines;
    new.hosts = hosts;
    new.resources = resources;
    new.known_hosts = known_hosts;
    new.environments = environments;
    new.pools = pools;
    puts.push((META.to_string(), meta));
    puts.sort();
    deletes.sort();
    (puts, deletes)
}

/// `meta` of a record whose split maps and machine list are empty (moved out by the caller):
/// small, whatever the fleet's size.
pub fn meta_json(state: &ClusterState) -> String {
    debug_assert!(state.hosts.is_empty() && state.machines.is_empty());
    flatten(state).remove(META).expect("meta")
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
        // The value-compared diff is the same, key for key and byte for byte.
        let mut t2 = t.clone();
        let (p2, d2) = diff_states(&s, &mut t2, false);
        assert_eq!(t2, t);
        let (mut p1, d1) = diff(&flat, &flatten(&t));
        p1.sort();
        let values = |p: Vec<(String, String)>| -> Vec<(String, serde_json::Value)> {
            p.into_iter()
                .map(|(k, v)| (k, serde_json::from_str(&v).unwrap()))
                .collect()
        };
        assert_eq!((values(p2), d2), (values(p1), d1));
    }
}

#[cfg(test)]
mod machine_tests {
    use super::*;

    fn m(name: &str) -> cloudflow_provider_api::Machine {
        cloudflow_provider_api::Machine {
            name: name.into(),
            id: name.into(),
            role: cloudflow_provider_api::Role::Worker,
            ssh: cloudflow_provider_api::SshEndpoint {
                address: "10.0.0.9".into(),
                port: 22,
                user: "root".into(),
            },
            running: true,
            private_address: None,
        }
    }

    #[test]
    fn machines_have_keys_in_list_order_and_diffs_agree_with_the_flat_diff() {
        let mut s = ClusterState::new("c", "lab");
        s.machines = (0..12).map(|i| m(&format!("h{i}"))).collect();
        let flat = flatten(&s);
        assert!(!flat[META].contains("machines"), "{}", flat[META]);
        assert_eq!(unflatten(&flat).unwrap(), s, "h10 stays after h9");
        let mut t = s.clone();
        t.machines[3].running = false;
        t.machines.truncate(10);
        let mut t2 = t.clone();
        let (p2, d2) = diff_states(&s, &mut t2, false);
        let (mut p1, d1) = diff(&flat, &flatten(&t));
        p1.sort();
        let keys = |p: &[(String, String)]| p.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&p2), keys(&p1));
        assert_eq!(keys(&p2), ["machines/000003", "meta"]);
        assert_eq!(d2, d1);
        assert_eq!(d2, ["machines/000010", "machines/000011"]);
        // A meta that still holds the list wins over keys beside it (an unfinished first
        // write with keys).
        let mut partial = flatten(&s);
        partial.retain(|k, _| !k.starts_with("machines/") || k == "machines/000000");
        let mut meta: Value = serde_json::from_str(&partial[META]).unwrap();
        meta["machines"] = serde_json::to_value(&s.machines).unwrap();
        partial.insert(META.into(), meta.to_string());
        assert_eq!(unflatten(&partial).unwrap().machines.len(), 12);
        assert!(meta_holds_machines(&partial));
    }
}
