//! The fleet simulation behind `cargo bench --bench fleet` and its scaled-down test: `up` of a
//! bare-metal fleet on [`Simulated`] hosts, through the real facts parser, planner, phases
//! (bootstrap, cluster), state store and concurrency limit — everything but SSH.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudflow_provider_api::{Machine, Role, SshEndpoint};
use cloudflow_provider_baremetal::BareMetal;

use crate::error::Result;
use crate::exec::{SimDelays, Simulated};
use crate::phase::{Bootstrap, Cluster, Ctx, Phase};
use crate::plan::{self, Inputs};
use crate::state::{self, ClusterState, LockInfo, StateHandle, StateLock, StateStore, Stored};

/// Counts what reaches the store: transactions, keys and bytes written.
struct Counting {
    inner: Arc<dyn StateStore>,
    commits: AtomicU64,
    keys: AtomicU64,
    bytes: AtomicU64,
}

impl StateStore for Counting {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn load_flat(&self, cluster: &str) -> std::result::Result<Option<Stored>, state::StateError> {
        self.inner.load_flat(cluster)
    }
    fn commit(
        &self,
        cluster: &str,
        rev: i64,
        puts: &[(String, String)],
        deletes: &[String],
    ) -> std::result::Result<i64, state::StateError> {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.keys
            .fetch_add((puts.len() + deletes.len()) as u64, Ordering::Relaxed);
        let bytes: usize = puts.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.inner.commit(cluster, rev, puts, deletes)
    }
    fn delete(&self, cluster: &str, rev: i64) -> std::result::Result<(), state::StateError> {
        self.inner.delete(cluster, rev)
    }
    fn lock(
        &self,
        cluster: &str,
        holder: &state::Holder,
        wait: Option<Duration>,
        waiting: &dyn Fn(&LockInfo),
    ) -> std::result::Result<StateLock, state::StateError> {
        self.inner.lock(cluster, holder, wait, waiting)
    }
    fn lock_info(&self, cluster: &str) -> std::result::Result<Option<LockInfo>, state::StateError> {
        self.inner.lock_info(cluster)
    }
    fn force_release(
        &self,
        cluster: &str,
    ) -> std::result::Result<Option<LockInfo>, state::StateError> {
        self.inner.force_release(cluster)
    }
}

/// One simulated `up`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimRun {
    pub hosts: usize,
    pub concurrency: usize,
    /// Simulated (or real, when the clock runs) seconds from facts to the last join.
    pub wall_seconds: f64,
    /// hosts / concurrency × one host's own time, for this run's commands.
    pub ideal_seconds: f64,
    /// Seconds of this machine's time (the planner, the state, the phases' own work).
    pub real_seconds: f64,
    pub commands: u64,
    pub actions: usize,
    pub state_commits: u64,
    pub state_keys_written: u64,
    pub state_bytes_written: u64,
    /// Size of the record as stored, in bytes.
    pub state_size: u64,
}

/// A bare-metal fleet of `n` hosts (three managers) for the simulation.
pub fn fleet_spec(n: usize) -> String {
    let mut spec = String::from(
        "name: fleet\nprovider:\n  bare_metal:\n    ssh_key: /nonexistent/key\n    hosts:\n",
    );
    for i in 0..n {
        let role = if i < 3 { ", role: manager" } else { "" };
        spec.push_str(&format!("      - {{ address: {}{role} }}\n", address(i)));
    }
    spec
}

fn address(i: usize) -> String {
    format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)
}

/// A simulated fleet that persists across runs (a second `up` sees the first one's work).
pub struct Fleet {
    pub exec: Arc<Simulated>,
    store: Arc<Counting>,
    spec: crate::spec::Spec,
    machines: Vec<Machine>,
    concurrency: usize,
}

impl Fleet {
    pub fn new(n: usize, concurrency: usize, delays: SimDelays, dir: &Path) -> Result<Fleet> {
        let spec = crate::spec::parse(Path::new("fleet.yaml"), &fleet_spec(n))?;
        let inner = state::open(None, dir)?;
        let machines = (0..n)
            .map(|i| Machine {
                name: address(i),
                id: address(i),
                role: if i < 3 { Role::Manager } else { Role::Worker },
                ssh: SshEndpoint {
                    address: address(i),
                    port: 22,
                    user: "root".into(),
                },
                running: true,
                private_address: None,
            })
            .collect();
        Ok(Fleet {
            exec: Arc::new(Simulated::new(delays)),
            store: Arc::new(Counting {
                inner,
                commits: AtomicU64::new(0),
                keys: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            }),
            spec,
            machines,
            concurrency,
        })
    }

    /// `up`: facts, plan, bootstrap, cluster, the hosts recorded — as `cloudflow up` runs them.
    pub async fn up(&self) -> Result<SimRun> {
        let store: Arc<dyn StateStore> = self.store.clone();
        let (record, stored) = state::load(store.as_ref(), "fleet")?.unwrap_or_else(|| {
            (
                ClusterState::new("fleet", "bare-metal"),
                Stored {
                    flat: Default::default(),
                    rev: 0,
                },
            )
        });
        let before = (
            self.store.commits.load(Ordering::Relaxed),
            self.store.keys.load(Ordering::Relaxed),
            self.store.bytes.load(Ordering::Relaxed),
            self.exec.commands.load(Ordering::Relaxed),
        );
        let ctx = Ctx {
            spec: self.spec.clone(),
            state: StateHandle::at(store.clone(), record, stored),
            provider: Arc::new(BareMetal {
                user: "root".into(),
                hosts: vec![],
            }),
            exec: self.exec.clone(),
            ui: Arc::new(crate::ui::Ui::new(true)),
            renderer: crate::render::Renderer::new(None)?,
            password: None,
            concurrency: self.concurrency,
            machines: Mutex::new(self.machines.clone()),
            facts: Mutex::new(BTreeMap::new()),
            k3s_kubeconfig: std::path::PathBuf::from("/nonexistent"),
            timings: Default::default(),
        };
        let real = Instant::now();
        let start = tokio::time::Instant::now();
        let facts = super::gather_facts(&ctx, &self.machines).await?;
        let plan = plan::compute(&Inputs {
            spec: &ctx.spec,
            state: &ctx.state.snapshot(),
            machines: &self.machines,
            provider_actions: &[],
            facts: &facts,
            renderer: &ctx.renderer,
            cluster_view: None,
            k3s: None,
        })?;
        for phase in [&Bootstrap as &dyn Phase, &Cluster] {
            if phase.should_run(&plan) {
                phase.run(&ctx, &plan).await?;
            }
        }
        ctx.state.update(|st| {
            st.machines = self.machines.clone();
            for (name, f) in &facts {
                st.host(name).hostname = Some(f.hostname.clone());
            }
        })?;
        let wall = start.elapsed().as_secs_f64();
        let commands = self.exec.commands.load(Ordering::Relaxed) - before.3;
        let d = self.exec.delays;
        let n = self.machines.len() as f64;
        // One host's own time in this run: a handshake once, a round trip per command, the
        // package install where it ran.
        let per_host_commands = commands as f64 / n;
        let installs = plan
            .actions
            .iter()
            .filter(|a| a.step == plan::Step::InstallDocker)
            .count() as f64;
        let per_host = d.handshake.as_secs_f64()
            + per_host_commands * d.command.as_secs_f64()
            + installs / n * d.install.as_secs_f64();
        let rounds = (n / self.concurrency as f64).ceil();
        let state_size = state::load(store.as_ref(), "fleet")?
            .map(|(_, s)| s.flat.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum())
            .unwrap_or(0);
        Ok(SimRun {
            hosts: self.machines.len(),
            concurrency: self.concurrency,
            wall_seconds: wall,
            ideal_seconds: rounds * per_host,
            real_seconds: real.elapsed().as_secs_f64(),
            commands,
            actions: plan.actions.len(),
            state_commits: self.store.commits.load(Ordering::Relaxed) - before.0,
            state_keys_written: self.store.keys.load(Ordering::Relaxed) - before.1,
            state_bytes_written: self.store.bytes.load(Ordering::Relaxed) - before.2,
            state_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 200 hosts with the delays scaled down 100× (the clock is simulated, so this is about
    /// scheduling, not this machine's speed): within 1.5× the ideal, a second `up` changes
    /// nothing, and what one host's record costs to write does not grow with the fleet.
    #[tokio::test(start_paused = true)]
    async fn a_simulated_fleet_of_200_is_near_the_ideal_and_state_writes_stay_per_host() {
        let delays = SimDelays {
            handshake: Duration::from_millis(150),
            command: Duration::from_millis(20),
            install: Duration::from_secs(30),
            jitter: 0.2,
        };
        let mut per_host_bytes = Vec::new();
        for n in [50, 200] {
            let dir = tempfile::tempdir().unwrap();
            let fleet = Fleet::new(n, 16, delays, dir.path()).unwrap();
            let full = fleet.up().await.unwrap();
            assert!(
                full.wall_seconds <= 1.5 * full.ideal_seconds,
                "{n} hosts: {:.1}s against an ideal of {:.1}s",
                full.wall_seconds,
                full.ideal_seconds
            );
            let again = fleet.up().await.unwrap();
            assert_eq!(again.actions, 0, "a second up changes nothing: {again:?}");
            per_host_bytes.push(full.state_bytes_written as f64 / full.state_commits as f64);
            eprintln!("{n} hosts: {full:?}");
        }
        // Bytes per write: the same order at 200 hosts as at 50 (a rewrite of the whole record
        // per write would be 4× larger).
        assert!(
            per_host_bytes[1] < 2.0 * per_host_bytes[0],
            "bytes per state write grew with the fleet: {per_host_bytes:?}"
        );
    }
}
