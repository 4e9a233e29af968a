use std::collections::BTreeMap;
use std::time::Duration;

use crate::plan::{Change, LiveCluster, LivePool, RecordedSize, changes, notes};
use crate::{Credentials, GkeConfig, PoolSpec};

fn pool(name: &str, nodes: u32, auto: Option<(u32, u32)>) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        machine_type: "e2-standard-4".into(),
        nodes,
        autoscaling: auto,
        spot: false,
    }
}

fn cfg(pools: Vec<PoolSpec>) -> GkeConfig {
    GkeConfig {
        cluster: "prod".into(),
        project: "p".into(),
        location: "europe-west1-b".into(),
        release_channel: None,
        pools,
        mirrors: vec![],
        insecure: vec![],
        recorded: BTreeMap::new(),
        endpoint: None,
        credentials: Credentials::Anonymous,
        operation_timeout: Duration::from_secs(60),
    }
}

/// (name, size, autoscaling bounds)
type Pool<'a> = (&'a str, u32, Option<(u32, u32)>);

fn live(pools: &[Pool]) -> LiveCluster {
    LiveCluster {
        status: "RUNNING".into(),
        version: "1.33".into(),
        nodes: pools.iter().map(|p| p.1).sum(),
        endpoint: "192.0.2.1".into(),
        ca_base64: String::new(),
        pools: pools
            .iter()
            .map(|(n, size, auto)| LivePool {
                name: n.to_string(),
                machine_type: "e2-standard-4".into(),
                initial_nodes: *size,
                autoscaling: *auto,
                spot: false,
                version: "1.33".into(),
                status: "RUNNING".into(),
            })
            .collect(),
    }
}

#[test]
fn a_missing_cluster_is_created_with_every_pool_in_one_change() {
    let c = cfg(vec![pool("default", 3, None), pool("batch", 0, None)]);
    assert_eq!(
        changes(&c, None, &BTreeMap::new()),
        vec![Change::CreateCluster]
    );
}

#[test]
fn a_cluster_as_the_spec_says_needs_nothing() {
    let c = cfg(vec![
        pool("default", 3, Some((1, 10))),
        pool("batch", 0, None),
    ]);
    let l = live(&[("default", 3, Some((1, 10))), ("batch", 0, None)]);
    assert_eq!(changes(&c, Some(&l), &BTreeMap::new()), vec![]);
    assert!(notes(&c, Some(&l), &BTreeMap::new()).is_empty());
}

#[test]
fn pools_are_added_resized_rebounded_and_removed() {
    let c = cfg(vec![
        pool("default", 4, None),
        pool("web", 2, Some((2, 6))),
        pool("new", 1, None),
    ]);
    let l = live(&[
        ("default", 3, None),
        ("web", 2, Some((1, 5))),
        ("old", 1, None),
    ]);
    assert_eq!(
        changes(&c, Some(&l), &BTreeMap::new()),
        vec![
            Change::SetSize {
                pool: "default".into(),
                from: 3,
                to: 4
            },
            Change::SetAutoscaling {
                pool: "web".into(),
                to: Some((2, 6))
            },
            Change::CreatePool("new".into()),
            Change::DeletePool("old".into()),
        ]
    );
}

#[test]
fn a_size_set_by_nodes_scale_is_kept_until_the_spec_changes() {
    let l = live(&[("default", 3, None)]);
    let mut rec = BTreeMap::new();
    rec.insert(
        "default".to_string(),
        RecordedSize {
            declared: 3,
            live: 5,
        },
    );
    let same = cfg(vec![pool("default", 3, None)]);
    assert_eq!(changes(&same, Some(&l), &rec), vec![]);
    assert_eq!(
        notes(&same, Some(&l), &rec),
        vec!["pool default: live 5, spec 3 — `up` keeps the live size (set by `nodes scale`); edit `nodes` in the spec to change it".to_string()]
    );
    let edited = cfg(vec![pool("default", 2, None)]);
    assert_eq!(
        changes(&edited, Some(&l), &rec),
        vec![Change::SetSize {
            pool: "default".into(),
            from: 5,
            to: 2
        }]
    );
}

#[test]
fn registry_hosts_carry_mirrors_for_docker_hub_and_insecure_registries_over_http() {
    let hosts = crate::registry_hosts(
        &["https://mirror.example:5000/".into()],
        &["reg:5000".into()],
    );
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].server, "docker.io");
    assert_eq!(hosts[0].hosts[0].host, "https://mirror.example:5000");
    assert_eq!(hosts[1].server, "reg:5000");
    assert_eq!(hosts[1].hosts[0].host, "http://reg:5000");
}
