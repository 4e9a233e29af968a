//! `down`: undo everything cloudflow did, in reverse phase order, then forget the cluster.

use std::sync::Arc;

use cloudflow_provider_api::{ProviderAction, Resource};
use serde_json::json;

use super::{Report, confirm, gather_facts, open};
use crate::cli::{Cli, OutputFormat};
use crate::error::{Error, Result};
use crate::phase::PHASES;
use crate::plan;
use crate::spec::{ProviderSpec, Spec};
use crate::state::ResourceStatus;
use crate::ui::Ui;

/// `deletion_protection` is cloudflow's own guard (the GKE v1 API has none): refuse before any
/// DELETE is sent, naming the spec line that lifts it.
fn refuse_if_protected(spec: &Spec, cluster: &str) -> Result<()> {
    let ProviderSpec::Gke(g) = &spec.provider else {
        return Ok(());
    };
    if !g.deletion_protection {
        return Ok(());
    }
    let at = g
        .deletion_protection_at
        .map(|l| format!("{}:{}:{}", spec.path.display(), l.line, l.column))
        .unwrap_or_else(|| spec.path.display().to_string());
    Err(Error::Usage(format!(
        "cluster {cluster} has deletion protection on ({at}: deletion_protection: true); nothing was deleted.\n  \
         To delete it, set `deletion_protection: false` there and run `down` again."
    )))
}

pub async fn down(cli: &Cli, yes: bool, ui: Arc<Ui>) -> Result<Report> {
    let s = open(cli, ui.clone(), true, true).await?;
    let ctx = &s.ctx;
    let machines = ctx.provider.list().await?;
    *ctx.machines.lock().unwrap() = machines.clone();
    super::adopt_renamed_hosts(ctx, &machines)?;
    let state = ctx.state.snapshot();
    let owns = ctx.provider.owns_machines();
    // A managed cluster is found through the API, whoever made it.
    let managed = ctx.provider.managed_cluster().await?;
    if let Some(mc) = &managed {
        refuse_if_protected(&ctx.spec, &mc.name)?;
    }
    let lb_first = managed.as_ref().is_some_and(|m| m.status == "RUNNING")
        && state.proxy.is_some()
        && ctx.spec.orchestrator == crate::spec::Orchestrator::Kubernetes;

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
        if let Some(mc) = &managed {
            destroy.push(ProviderAction::Destroy {
                resource: Resource::new("cluster", &mc.name),
            });
        }
        // Machines are listed above; batch records ("instances") are not resources of their own;
        // node pools go with their cluster.
        let machine_kinds = ["container", "instance", "instances", "node-pool"];
        for r in state
            .resources
            .values()
            .filter(|r| !machine_kinds.contains(&r.kind.as_str()))
            .filter(|r| !(managed.is_some() && r.kind == "cluster"))
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
    let mut plan = plan::compute_down(&state, &machines, owns, &destroy, &facts)?;
    let k3s = ctx.spec.kubernetes.k3s_artifacts.is_some();
    if !owns && k3s {
        // k3s on hosts cloudflow did not make: stop it and take it away.
        for m in &machines {
            if facts.get(&m.name).is_some_and(|f| f.k3s_bin.is_some()) {
                plan.actions.push(plan::Action {
                    phase: plan::PhaseName::Cluster,
                    host: Some(m.name.clone()),
                    step: plan::Step::K3sUninstall,
                });
            }
        }
    }
    if !owns
        && ctx.spec.orchestrator == crate::spec::Orchestrator::Kubernetes
        && (!k3s || ctx.k3s_kubeconfig.exists())
    {
        // An existing cluster stays; what cloudflow deployed on it goes.
        let k = crate::phase::deploy::kubernetes(ctx).await?;
        let workloads = k.workloads().await?;
        if !workloads.is_empty() || !state.environments.is_empty() {
            plan.actions.insert(
                0,
                plan::Action {
                    phase: plan::PhaseName::Deploy,
                    host: None,
                    step: plan::Step::RemoveDeployments {
                        services: workloads.keys().cloned().collect(),
                    },
                },
            );
        }
    }
    if plan.is_empty() {
        if s.known {
            ctx.state.delete()?;
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
    if lb_first {
        // The proxy's LoadBalancer Service goes before the cluster: GKE can leave the
        // cloud load balancer behind when the cluster is deleted with it.
        ui.info("removing the proxy's load balancer before the cluster");
        let k = crate::phase::deploy::kubernetes(ctx).await?;
        crate::orchestrator::Orchestrator::remove_proxy(&k).await?;
    }
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
        ctx.state.delete()?;
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
