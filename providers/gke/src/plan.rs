//! What `up` changes on a GKE cluster, computed without I/O from what the API reports and
//! what the state recorded about sizes.

use std::collections::BTreeMap;

use cloudflow_provider_api::{ProviderAction, Resource};

use crate::{GkeConfig, PoolSpec};

/// A node pool as the API reports it (the part cloudflow reconciles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePool {
    pub name: String,
    pub machine_type: String,
    pub initial_nodes: u32,
    pub autoscaling: Option<(u32, u32)>,
    pub spot: bool,
    pub version: String,
    pub status: String,
}

/// The cluster as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCluster {
    pub status: String,
    pub version: String,
    pub nodes: u32,
    pub endpoint: String,
    pub ca_base64: String,
    pub pools: Vec<LivePool>,
}

/// A pool size cloudflow changed after creation: the spec's size then, and the size set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedSize {
    pub declared: u32,
    pub live: u32,
}

/// One change to the cluster, in the order `up` applies them (GKE runs one at a time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    CreateCluster,
    /// The cluster exists but is not RUNNING (an operation a killed run left behind): wait.
    AwaitCluster(String),
    CreatePool(String),
    SetAutoscaling {
        pool: String,
        to: Option<(u32, u32)>,
    },
    SetSize {
        pool: String,
        from: u32,
        to: u32,
    },
    DeletePool(String),
}

impl Change {
    pub fn action(&self, cfg: &GkeConfig) -> ProviderAction {
        let pool = |p: &str| Resource::new("node-pool", p);
        match self {
            Change::CreateCluster => ProviderAction::Create {
                resource: Resource::new("cluster", &cfg.cluster),
                role: None,
            },
            Change::AwaitCluster(status) => ProviderAction::Update {
                resource: Resource::new("cluster", &cfg.cluster),
                change: format!("wait until it runs (now {status})"),
            },
            Change::CreatePool(p) => ProviderAction::Create {
                resource: pool(p),
                role: None,
            },
            Change::SetAutoscaling { pool: p, to } => ProviderAction::Update {
                resource: pool(p),
                change: match to {
                    Some((min, max)) => format!("autoscaling {min}..{max}"),
                    None => "autoscaling off".into(),
                },
            },
            Change::SetSize { pool: p, from, to } => ProviderAction::Update {
                resource: pool(p),
                change: format!("size {from} → {to}"),
            },
            Change::DeletePool(p) => ProviderAction::Destroy { resource: pool(p) },
        }
    }
}

/// The size a pool has now: what cloudflow last set, else what it was created with (the v1
/// API reports no current size per pool — only the instance groups behind it do).
pub fn current_size(pool: &LivePool, recorded: Option<&RecordedSize>) -> u32 {
    recorded.map(|r| r.live).unwrap_or(pool.initial_nodes)
}

/// The size `up` wants: the live size while the spec still says what it said when the pool
/// was last resized; the spec's size once someone edits it.
pub fn wanted_size(spec: &PoolSpec, recorded: Option<&RecordedSize>) -> u32 {
    match recorded {
        Some(r) if r.declared == spec.nodes => r.live,
        _ => spec.nodes,
    }
}

/// Changes that bring `live` to `cfg`, or create everything when the cluster does not exist.
pub fn changes(
    cfg: &GkeConfig,
    live: Option<&LiveCluster>,
    recorded: &BTreeMap<String, RecordedSize>,
) -> Vec<Change> {
    let Some(live) = live else {
        return vec![Change::CreateCluster];
    };
    let mut out = Vec::new();
    if live.status != "RUNNING" {
        out.push(Change::AwaitCluster(live.status.clone()));
    }
    for spec in &cfg.pools {
        let Some(pool) = live.pools.iter().find(|p| p.name == spec.name) else {
            out.push(Change::CreatePool(spec.name.clone()));
            continue;
        };
        if pool.autoscaling != spec.autoscaling {
            out.push(Change::SetAutoscaling {
                pool: spec.name.clone(),
                to: spec.autoscaling,
            });
        }
        // With autoscaling on, GKE owns the size within the bounds.
        if spec.autoscaling.is_none() {
            let rec = recorded.get(&spec.name);
            let (from, to) = (current_size(pool, rec), wanted_size(spec, rec));
            if from != to {
                out.push(Change::SetSize {
                    pool: spec.name.clone(),
                    from,
                    to,
                });
            }
        }
    }
    for pool in &live.pools {
        if !cfg.pools.iter().any(|s| s.name == pool.name) {
            out.push(Change::DeletePool(pool.name.clone()));
        }
    }
    out
}

/// Differences `up` does not change, for `plan` to show: a size kept from `nodes scale`, a
/// machine type or spot setting the API cannot change in place.
pub fn notes(
    cfg: &GkeConfig,
    live: Option<&LiveCluster>,
    recorded: &BTreeMap<String, RecordedSize>,
) -> Vec<String> {
    let Some(live) = live else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for spec in &cfg.pools {
        let Some(pool) = live.pools.iter().find(|p| p.name == spec.name) else {
            continue;
        };
        let rec = recorded.get(&spec.name);
        let now = current_size(pool, rec);
        if spec.autoscaling.is_none() && now != spec.nodes && wanted_size(spec, rec) == now {
            out.push(format!(
                "pool {}: live {now}, spec {} — `up` keeps the live size (set by `nodes scale`); edit `nodes` in the spec to change it",
                spec.name, spec.nodes
            ));
        }
        if pool.machine_type != spec.machine_type {
            out.push(format!(
                "pool {}: live machine type {}, spec {} — GKE cannot change it in place: add a pool under a new name and remove this one",
                spec.name, pool.machine_type, spec.machine_type
            ));
        }
        if pool.spot != spec.spot {
            out.push(format!(
                "pool {}: live spot {}, spec {} — GKE cannot change it in place: add a pool under a new name and remove this one",
                spec.name, pool.spot, spec.spot
            ));
        }
    }
    out
}
