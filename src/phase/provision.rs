//! Provision: make the machines exist through the provider (no SSH). Undo: destroy them,
//! when the provider owns them.

use cloudflow_provider_api::ProviderAction;

use super::{Ctx, Phase};
use crate::error::{Error, Result};
use crate::plan::{PhaseName, Plan, Step};

pub struct Provision;

#[async_trait::async_trait]
impl Phase for Provision {
    fn name(&self) -> PhaseName {
        PhaseName::Provision
    }

    async fn run(&self, ctx: &Ctx, plan: &Plan) -> Result<()> {
        let created: Vec<String> = plan
            .for_phase(PhaseName::Provision)
            .filter_map(|a| match &a.step {
                Step::Provider(ProviderAction::Create {
                    resource,
                    role: Some(_),
                }) => Some(resource.name.clone()),
                _ => None,
            })
            .collect();
        let machines = ctx.provider.create(&ctx.state, ctx.ui.as_ref()).await?;
        ctx.state.update(|s| {
            // A machine made just now is a new host: forget any key an earlier one had at its address.
            for m in machines.iter().filter(|m| created.contains(&m.name)) {
                s.known_hosts
                    .remove(&format!("{}:{}", m.ssh.address, m.ssh.port));
            }
            s.machines = machines.clone();
        })?;
        *ctx.machines.lock().unwrap() = machines;
        Ok(())
    }

    async fn undo(&self, ctx: &Ctx, plan: &Plan) -> Result<()> {
        if !ctx.provider.owns_machines() || !self.should_run(plan) {
            return Ok(());
        }
        let report = ctx.provider.destroy(&ctx.state, ctx.ui.as_ref()).await?;
        ctx.state.update(|s| {
            s.machines.clear();
            s.known_hosts.clear();
            if report.left.is_empty() {
                // Verified gone by label/tag: nothing in the journal is owned any more.
                s.resources.clear();
                s.workers = None;
                s.pools.clear();
            }
        })?;
        if report.left.is_empty() {
            return Ok(());
        }
        let left: Vec<String> = report
            .left
            .iter()
            .map(|(r, why)| format!("  - {r}: {why}"))
            .collect();
        Err(Error::Other(format!(
            "{} provider could not remove everything; still present:\n{}",
            ctx.provider.kind(),
            left.join("\n")
        )))
    }
}
