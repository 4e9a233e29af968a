//! Phases, in apply order, as one literal list. Each knows whether it must run (the plan has
//! actions for it), runs idempotently, and can be undone. State is recorded before every
//! change, so `down` — or a re-run after a crash — knows what to take back.

mod bootstrap;
mod cluster;
pub mod deploy;
mod k3s;
mod provision;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cloudflow_provider_api::{Machine, Provider};
use secrecy::SecretString;

use crate::error::Result;
use crate::exec::{Executor, Target};
use crate::facts::HostFacts;
use crate::plan::{PhaseName, Plan};
use crate::render::Renderer;
use crate::spec::Spec;
use crate::state::StateHandle;
use crate::ui::Ui;

pub use bootstrap::Bootstrap;
pub use cluster::Cluster;
pub use deploy::{Deploy, Proxy};
pub use k3s::{K3sArtifacts, k3s_artifacts, k3s_sans, node_ip};
pub use provision::Provision;

/// Everything a phase may use. No globals.
pub struct Ctx {
    pub spec: Spec,
    pub state: StateHandle,
    pub provider: Arc<dyn Provider>,
    pub exec: Arc<dyn Executor>,
    pub ui: Arc<Ui>,
    pub renderer: Renderer,
    pub password: Option<SecretString>,
    pub concurrency: usize,
    pub machines: Mutex<Vec<Machine>>,
    pub facts: Mutex<BTreeMap<String, HostFacts>>,
    /// Where the kubeconfig of a k3s cluster cloudflow installed is kept (0600, beside the
    /// state, like the lab's SSH key).
    pub k3s_kubeconfig: std::path::PathBuf,
    /// Every command `exec` ran, timed (`up --timings`).
    pub timings: crate::exec::Timings,
}

impl Ctx {
    pub fn machines(&self) -> Vec<Machine> {
        self.machines.lock().unwrap().clone()
    }

    pub fn machine(&self, name: &str) -> Option<Machine> {
        self.machines
            .lock()
            .unwrap()
            .iter()
            .find(|m| m.name == name)
            .cloned()
    }

    pub fn target(&self, name: &str) -> Option<Target> {
        self.machine(name).map(|m| Target::from(&m))
    }

    pub fn facts_of(&self, name: &str) -> Option<HostFacts> {
        self.facts.lock().unwrap().get(name).cloned()
    }
}

#[async_trait::async_trait]
pub trait Phase: Sync {
    fn name(&self) -> PhaseName;

    fn should_run(&self, plan: &Plan) -> bool {
        plan.for_phase(self.name()).next().is_some()
    }

    /// Apply this phase's actions from `plan`.
    async fn run(&self, ctx: &Ctx, plan: &Plan) -> Result<()>;

    /// Apply this phase's undo actions from a `down` plan.
    async fn undo(&self, ctx: &Ctx, plan: &Plan) -> Result<()>;
}

/// Apply order. `down` walks it backwards.
pub const PHASES: &[&dyn Phase] = &[&Provision, &Bootstrap, &Cluster, &Proxy, &Deploy];

#[cfg(test)]
mod tests;
