//! `plan` and `up`.

use std::sync::Arc;
use std::time::Duration;

use cloudflow_provider_api::{Machine, ProviderAction};
use serde_json::json;

use super::{Report, Session, confirm, gather_facts, open};
use crate::cli::{Cli, OutputFormat};
use crate::error::Result;
use crate::phase::PHASES;
use crate::plan::{self, Inputs, PhaseName, Plan};
use crate::ui::Ui;

/// Running machines the provider keeps: those that facts can be read from now.
fn reachable(machines: &[Machine], actions: &[ProviderAction]) -> Vec<Machine> {
    machines
        .iter()
        .filter(|m| m.running)
        .filter(|m| {
            !actions.iter().any(
                |a| matches!(a, ProviderAction::Destroy { resource } if resource.name == m.name),
            )
        })
        .cloned()
        .collect()
}

/// List machines, read facts (unless `until` is provision), and plan. Cloud machines that
/// have not finished their first boot are waited for (at most `timeout`) before their facts
/// are read; what the provider would repair in existing resources is part of the plan.
async fn compute(
    s: &Session,
    until: Option<PhaseName>,
    timeout: Duration,
) -> Result<(Plan, Vec<ProviderAction>)> {
    // Only a command holding the lock records what it saw boot.
    let record = s.holds_lock();
    let ctx = &s.ctx;
    let machines = ctx.provider.list().await?;
    *ctx.machines.lock().unwrap() = machines.clone();
    if record {
        super::adopt_renamed_hosts(ctx, &machines)?;
    }
    let mut actions = ctx.provider.plan(&machines);
    // Also before any machine exists: a crash while the network was made leaves it half made.
    actions.extend(ctx.provider.drift().await?);
    let facts = if until == Some(PhaseName::Provision) {
        Default::default()
    } else {
        let hosts = reachable(&machines, &actions);
        super::ready::wait_booted(ctx, &hosts, timeout, record).await?;
        gather_facts(ctx, &hosts).await?
    };
    // The cluster's API is asked only when there is something to deploy to it.
    let view = if until == Some(PhaseName::Provision)
        || ctx.spec.orchestrator != crate::spec::Orchestrator::Kubernetes
        || ctx.spec.services.is_empty()
    {
        None
    } else {
        Some(cluster_view(ctx, !actions.is_empty()).await?)
    };
    let k3s = match &ctx.spec.kubernetes.k3s_artifacts {
        Some(dir) => Some(k3s_inputs(ctx, dir, &machines)?),
        None => None,
    };
    let state = ctx.state.snapshot();
    let mut plan = plan::compute(&Inputs {
        spec: &ctx.spec,
        state: &state,
        machines: &machines,
        provider_actions: &actions,
        facts: &facts,
        renderer: &ctx.renderer,
        cluster_view: view.as_ref(),
        k3s: k3s.as_ref(),
    })?;
    plan.notes.extend(ctx.provider.plan_notes().await?);
    // Certificate work is done after the deploy phase (or alone by a no-op `up`): shown here.
    if until.is_none_or(|u| u >= PhaseName::Deploy) {
        plan.notes.extend(
            crate::deploy::tls::cert_work(&ctx.spec, &state)
                .into_iter()
                .map(|w| w.line),
        );
    }
    let plan = plan.until(until);
    Ok((plan, actions))
}

/// The k3s artifacts on this machine and each host's node address, for the planner.
pub(super) fn k3s_inputs(
    ctx: &crate::phase::Ctx,
    dir: &std::path::Path,
    machines: &[Machine],
) -> Result<plan::K3sInputs> {
    let a = crate::phase::k3s_artifacts(dir)?;
    let node_ips = machines
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                crate::phase::node_ip(&crate::exec::Target::from(m)),
            )
        })
        .collect();
    Ok(plan::K3sInputs {
        binary_sha: a.binary_sha,
        marker: a.marker,
        node_ips,
        kubeconfig_present: ctx.k3s_kubeconfig.exists(),
        password: ctx.password.clone(),
        sans: crate::phase::k3s_sans(machines),
    })
}

/// What runs on a Kubernetes cluster, from its API. A cluster the provider is still making
/// runs nothing yet.
async fn cluster_view(ctx: &crate::phase::Ctx, provider_busy: bool) -> Result<plan::ClusterView> {
    let empty = || plan::ClusterView {
        workloads: Default::default(),
        proxy: crate::orchestrator::proxy_workload(),
        naming: crate::orchestrator::workload_name,
    };
    if ctx.spec.kubernetes.k3s_artifacts.is_some() && !ctx.k3s_kubeconfig.exists() {
        return Ok(empty()); // k3s is not installed yet
    }
    if ctx.spec.kubernetes.kubeconfig.is_none() && ctx.spec.kubernetes.k3s_artifacts.is_none() {
        match ctx.provider.kubernetes().await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(empty()),
            Err(_) if provider_busy => return Ok(empty()),
            Err(e) => return Err(e.into()),
        }
    }
    let k = crate::phase::deploy::kubernetes(ctx).await?;
    Ok(plan::ClusterView {
        workloads: k.workloads().await?,
        ..empty()
    })
}

pub async fn plan(
    cli: &Cli,
    until: Option<PhaseName>,
    timeout: Duration,
    ui: Arc<Ui>,
) -> Result<Report> {
    let mut s = open(cli, ui, false, false).await?;
    // k3s's registries.yaml holds the login: compare with it when it is at hand.
    s.ctx.password = s.ctx.spec.registry_password().ok().flatten();
    let (plan, _) = compute(&s, until, timeout).await?;
    Ok(Report {
        json: json!({"cluster": plan.cluster, "changes": plan.actions.len(), "plan": plan}),
        text: plan.to_string(),
    })
}

pub async fn up(
    cli: &Cli,
    yes: bool,
    until: Option<PhaseName>,
    timeout: Duration,
    ui: Arc<Ui>,
) -> Result<Report> {
    let mut s = open(cli, ui.clone(), true, true).await?;
    if until != Some(PhaseName::Provision) {
        s.ctx.password = s.ctx.spec.registry_password()?;
    }
    let (mut plan, _) = compute(&s, until, timeout).await?;
    let ctx = &s.ctx;
    let checked = ctx.machines().len();
    if plan.is_empty()
        && until.is_none_or(|u| u >= crate::plan::PhaseName::Deploy)
        && crate::deploy::tls::needs_certs(&ctx.spec, &ctx.state.snapshot())
    {
        // Nothing else to do, but certificates to order, renew, install or remove: shown, and
        // asked like any change.
        for w in crate::deploy::tls::cert_work(&ctx.spec, &ctx.state.snapshot()) {
            ui.info(&w.line);
        }
        confirm(
            yes,
            &format!(
                "Change the proxy's certificates for cluster {}?",
                plan.cluster
            ),
        )?;
        let orch = crate::phase::deploy::orchestrator(ctx).await?;
        let installed = crate::phase::deploy::deployer(ctx, orch.as_ref(), timeout)
            .ensure_certs(false)
            .await?;
        let text = format!(
            "up: cluster {}: certificate(s) {} in {:.1}s\n",
            plan.cluster,
            if installed.is_empty() {
                "checked".to_string()
            } else {
                format!("installed: {}", installed.join(", "))
            },
            ui.elapsed().as_secs_f64()
        );
        return Ok(Report {
            json: json!({"cluster": plan.cluster, "changed": !installed.is_empty(), "certificates": installed, "elapsed_seconds": ui.elapsed().as_secs_f64()}),
            text,
        });
    }
    if plan.is_empty() {
        // An order that waits after a failed one: said, not done.
        for w in crate::deploy::tls::cert_work(&ctx.spec, &ctx.state.snapshot()) {
            ui.info(&w.line);
        }
        let what = if checked == 0 && ctx.provider.kind() == "gke" {
            "the cluster and its node pools checked".to_string()
        } else {
            format!("{checked} host(s) checked")
        };
        let text = format!(
            "up: cluster {}: no changes ({what} in {:.1}s)\n",
            plan.cluster,
            ui.elapsed().as_secs_f64()
        );
        return Ok(Report {
            json: json!({"cluster": plan.cluster, "changed": false, "changes": 0, "message": "no changes", "elapsed_seconds": ui.elapsed().as_secs_f64(),
                         "timings": {"phases": [], "steps": ctx.timings.steps()}}),
            text,
        });
    }
    // The plan goes to stderr: stdout stays one document with -o json.
    if cli.output == OutputFormat::Text || !yes {
        eprint!("{plan}");
    }
    confirm(
        yes,
        &format!(
            "Apply {} change(s) to cluster {}?",
            plan.actions.len(),
            plan.cluster
        ),
    )?;

    let mut applied = 0;
    let mut phase_times = Vec::new();
    for phase in PHASES {
        if until.is_some_and(|u| phase.name() > u) {
            break;
        }
        if phase.name() == PhaseName::Bootstrap && !plan.forecast_hosts.is_empty() {
            // Hosts made just now: read their facts and plan the rest for real.
            let (fresh, _) = compute(&s, until, timeout).await?;
            plan = fresh;
        }
        if phase.should_run(&plan) {
            ui.info(&format!(
                "phase {}: {} step(s)",
                phase.name(),
                plan.for_phase(phase.name()).count()
            ));
            let began = ctx.timings.now();
            phase.run(ctx, &plan).await?;
            phase_times.push(json!({"phase": phase.name(), "start": began.as_secs_f64(),
                                    "seconds": (ctx.timings.now() - began).as_secs_f64()}));
            applied += plan.for_phase(phase.name()).count();
        }
    }
    record_hosts(&s)?;
    let secs = ui.elapsed().as_secs_f64();
    let text = format!(
        "up: cluster {}: {applied} change(s) applied in {secs:.1}s\n",
        plan.cluster
    );
    Ok(Report {
        json: json!({"cluster": plan.cluster, "changed": true, "changes": applied, "elapsed_seconds": secs, "plan": plan,
                     "timings": {"phases": phase_times, "steps": ctx.timings.steps()}}),
        text,
    })
}

/// `--timings`: the phases, each host's busy time and the slowest steps in the text; every
/// step stays in the JSON (without the flag, the JSON carries no timings).
pub fn add_timings(r: &mut Report) {
    let t = r.json["timings"].take();
    let phases = t["phases"].as_array().cloned().unwrap_or_default();
    let mut steps = t["steps"].as_array().cloned().unwrap_or_default();
    let mut text = String::from("timings:\n");
    for p in &phases {
        text.push_str(&format!(
            "  phase {:<10} {:>7.2}s\n",
            p["phase"].as_str().unwrap_or(""),
            p["seconds"].as_f64().unwrap_or(0.0)
        ));
    }
    let mut per_host: std::collections::BTreeMap<String, (f64, usize)> = Default::default();
    for s in &steps {
        let e = per_host
            .entry(s["host"].as_str().unwrap_or("").to_string())
            .or_default();
        e.0 += s["seconds"].as_f64().unwrap_or(0.0);
        e.1 += 1;
    }
    for (host, (secs, n)) in &per_host {
        text.push_str(&format!(
            "  host {host:<24} {secs:>7.2}s in {n} command(s)\n"
        ));
    }
    steps.sort_by(|a, b| {
        b["seconds"]
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&a["seconds"].as_f64().unwrap_or(0.0))
    });
    text.push_str("  slowest steps:\n");
    for s in steps.iter().take(10) {
        text.push_str(&format!(
            "    {:>7.2}s  {:<24} {:<10} {}{}\n",
            s["seconds"].as_f64().unwrap_or(0.0),
            s["host"].as_str().unwrap_or(""),
            s["phase"].as_str().unwrap_or(""),
            s["step"].as_str().unwrap_or(""),
            if s["ok"] == false { " (failed)" } else { "" }
        ));
    }
    r.text.push_str(&text);
    r.json["timings"] = t;
}

/// Keep the machines and their hostnames (= swarm node names) in the state for `status`/`down`.
fn record_hosts(s: &Session) -> Result<()> {
    let ctx = &s.ctx;
    let machines = ctx.machines();
    let facts = ctx.facts.lock().unwrap().clone();
    ctx.state.update(|st| {
        st.machines = machines;
        for (name, f) in &facts {
            st.host(name).hostname = Some(f.hostname.clone());
        }
    })?;
    Ok(())
}
