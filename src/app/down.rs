//! `down`: undo everything cloudflow did, in reverse phase order, then forget the cluster.

use std::sync::Arc;

use cloudflow_provider_api::{ProviderAction, Resource};
use serde_json::json;

use super::{Report, confirm, gather_facts, open};
use crate::cli::{Cli, OutputFormat};
use crate::error::Result;
use crate::phase::PHASES;
use crate::plan;
use crate::state::ResourceStatus;
use crate::ui::Ui;

pub async fn down(cli: &Cli, yes: bool, ui: Arc<Ui>) -> Result<Report> {
    let s = open(cli, ui.clone(), true, true).await?;
    let ctx = &s.ctx;
    let machines = ctx.provider.list().await?;
    *ctx.machines.lock().unwrap() = machines.clone();
    super::adopt_renamed_hosts(ctx, &machines)?;
    let state = ctx.state.snapshot();
    let owns = ctx.provider.owns_machines();

    let mut destroy: Vec<ProviderAction> = Vec::new();
    let facts = if owns {
        let kind = if ctx.provider.kind() == "lab" {
            "container"
        } else {
            "instance"
        };
        destroy.extend(machines.iter().map(|m| ProviderAction::Destroy {
            resource: Resource::new(kind, &m.name),
        }));
        // Machines are listed above; batch records ("instances") are not resources of their own.
        let machine_kinds = ["container", "instance", "instances"];
        for r in state
            .resources
            .values()
            .filter(|r| !machine_kinds.contains(&r.kind.as_str()))
        {
            destroy.push(ProviderAction::Destroy {
                resource: Resource::new(&r.kind, &r.name),
            });
        }
        Default::default()
    } else {
        // Only hosts cloudflow changed need a visit.
        let touched: Vec<_> = machines
            .iter()
            .filter(|m| state.hosts.contains_key(&m.name))
            .cloned()
            .collect();
        gather_facts(ctx, &touched).await?
    };
    let plan = plan::compute_down(&state, &machines, owns, &destroy, &facts)?;
    if plan.is_empty() {
        if s.known {
            ctx.state.store().delete(&ctx.spec.name)?;
        }
        return Ok(Report {
            json: json!({"cluster": plan.cluster, "changed": false, "changes": 0, "message": "no changes: nothing to take down"}),
            text: format!(
                "down: cluster {}: no changes (nothing to take down)\n",
                plan.cluster
            ),
        });
    }
    if cli.output == OutputFormat::Text || !yes {
        eprint!("{plan}");
    }
    confirm(
        yes,
        &format!(
            "Take down cluster {} ({} change(s))?",
            plan.cluster,
            plan.actions.len()
        ),
    )?;
    for phase in PHASES.iter().rev() {
        phase.undo(ctx, &plan).await?;
    }
    // Anything still only "intended" was never made; everything made is gone: forget the cluster.
    let leftover: Vec<_> = ctx
        .state
        .snapshot()
        .resources
        .into_values()
        .filter(|r| r.status == ResourceStatus::Created)
        .collect();
    if leftover.is_empty() {
        ctx.state.store().delete(&ctx.spec.name)?;
    }
    let secs = ui.elapsed().as_secs_f64();
    Ok(Report {
        json: json!({"cluster": plan.cluster, "changed": true, "changes": plan.actions.len(), "elapsed_seconds": secs, "plan": plan}),
        text: format!(
            "down: cluster {}: {} change(s) applied in {secs:.1}s; nothing left\n",
            plan.cluster,
            plan.actions.len()
        ),
    })
}
