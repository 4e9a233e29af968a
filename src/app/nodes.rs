//! `nodes scale`: add or remove workers through the provider. Workers that leave are drained
//! and leave the swarm first; workers that arrive are bootstrapped and joined like in `up`.

use std::sync::Arc;
use std::time::Duration;

use cloudflow_provider_api::{Machine, Role};
use serde_json::json;

use super::{Report, gather_facts, open};
use crate::cli::{Cli, ScaleArgs};
use crate::commands;
use crate::error::{Error, Result};
use crate::exec::Target;
use crate::phase::{Bootstrap, Cluster, Phase};
use crate::plan::{self, Inputs, PhaseName};
use crate::spec::ProviderSpec;
use crate::ui::Ui;
use crate::wait::{Stop, until};

/// `+2`, `-1` relative to `live`; `5` absolute. Below zero is an error, not a silent clamp.
pub fn resolve_size(size: &str, live: u32) -> Result<u32> {
    let wanted = crate::size::resolve(size, live).ok_or_else(|| {
        Error::Usage(format!(
            "size {size:?}: expected a number of workers (4) or a change (+2, -1)"
        ))
    })?;
    u32::try_from(wanted).map_err(|_| {
        Error::Usage(format!(
            "cannot remove {} worker(s): only {live} run",
            i64::from(live) - wanted
        ))
    })
}

/// `until` bounds what happens to the machines: `provision` connects to none (no drain before
/// removal, no bootstrap after creation); `bootstrap` installs new workers without joining them.
pub async fn scale(cli: &Cli, args: &ScaleArgs, ui: Arc<Ui>) -> Result<Report> {
    let s = open(cli, ui.clone(), true, true).await?;
    if let ProviderSpec::Gke(g) = &s.ctx.spec.provider {
        return scale_pool(&s, g, &args.size, args.pool.as_deref()).await;
    }
    if args.pool.is_some() {
        return Err(Error::Usage(format!(
            "--pool applies to node pools (provider gke); the {} provider scales workers",
            s.ctx.provider.kind()
        )));
    }
    let mut s = s;
    scale_workers(&mut s, &args.size, args.until, args.timeout, ui).await
}

/// `nodes scale` for the autoscaling hook: `size` relative to the live count, clamped to
/// `bounds` (the spec's `autoscaling.nodes`), then the same command as the CLI (its lock,
/// drain and bootstrap). The JSON says when it was clamped (`note`).
pub async fn scale_nodes_within(
    cli: &Cli,
    pool: Option<&str>,
    size: &str,
    bounds: (u32, u32),
    guard: Option<&super::HookGuard>,
    ui: Arc<Ui>,
) -> Result<Report> {
    // One locked session for the whole action: the live count it starts from cannot change
    // under it, and the guard is checked and recorded under the same lock.
    let mut s = open(cli, ui.clone(), true, true).await?;
    let state = s.ctx.state.clone();
    if let Some(refused) = guard.and_then(|g| g.refusal(&state.snapshot())) {
        return Ok(refused);
    }
    let gke = match &s.ctx.spec.provider {
        ProviderSpec::Gke(g) => Some(g.clone()),
        _ => None,
    };
    let live = {
        let ctx = &s.ctx;
        if let Some(g) = &gke {
            let name = pool
                .map(str::to_string)
                .or_else(|| g.node_pools.first().map(|p| p.name.clone()))
                .unwrap_or_default();
            ctx.provider
                .managed_cluster()
                .await?
                .and_then(|m| m.pools.into_iter().find(|p| p.name == name))
                .map(|p| p.size)
                .ok_or_else(|| Error::Other(format!("no node pool {name:?} in the cluster")))?
        } else {
            if pool.is_some() {
                return Err(Error::Usage(format!(
                    "cloudflow_pool applies to GKE node pools; the {} provider scales workers",
                    ctx.provider.kind()
                )));
            }
            ctx.provider
                .list()
                .await?
                .iter()
                .filter(|m| m.role == Role::Worker)
                .count() as u32
        }
    };
    let wanted = resolve_size(size, live)?;
    let target = wanted.clamp(bounds.0, bounds.1);
    let note = (target != wanted).then(|| {
        format!(
            "{size} from {live} gives {wanted}, outside autoscaling.nodes ({}..{}): clamped to {target}",
            bounds.0, bounds.1
        )
    });
    let mut r = match &gke {
        Some(g) => scale_pool(&s, g, &target.to_string(), pool).await?,
        None => {
            scale_workers(
                &mut s,
                &target.to_string(),
                None,
                Duration::from_secs(15 * 60),
                ui,
            )
            .await?
        }
    };
    r.json["note"] = json!(note);
    if r.json.get("message").is_none() {
        r.json["message"] = json!(r.text.trim());
    }
    if let Some(g) = guard {
        g.record(&state, r.json["changed"].as_bool().unwrap_or(false))?;
    }
    Ok(r)
}

/// GKE: resize one node pool through the API, returning when the operation is done. GKE
/// drains the nodes it removes.
async fn scale_pool(
    s: &super::Session,
    g: &crate::spec::GkeSpec,
    size: &str,
    pool: Option<&str>,
) -> Result<Report> {
    let ctx = &s.ctx;
    let names: Vec<&str> = g.node_pools.iter().map(|p| p.name.as_str()).collect();
    let pool = match pool {
        Some(p) => p.to_string(),
        None if names.len() == 1 => names[0].to_string(),
        None => {
            return Err(Error::Usage(format!(
                "the cluster has {} node pools: name one with --pool ({})",
                names.len(),
                names.join(", ")
            )));
        }
    };
    let mc = ctx.provider.managed_cluster().await?.ok_or_else(|| {
        Error::Other(format!(
            "cluster {} does not exist; run `up` first",
            ctx.spec.name
        ))
    })?;
    let Some(live) = mc.pools.iter().find(|p| p.name == pool) else {
        return Err(Error::Usage(format!(
            "cluster {} has no node pool {pool:?} (it has: {})",
            ctx.spec.name,
            mc.pools
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let target = resolve_size(size, live.size)?;
    let cluster = &ctx.spec.name;
    if target == live.size {
        return Ok(Report {
            json: json!({"cluster": cluster, "pool": pool, "changed": false, "nodes": live.size, "message": "no changes"}),
            text: format!(
                "nodes scale: cluster {cluster}, pool {pool}: no changes ({} node(s))\n",
                live.size
            ),
        });
    }
    ctx.provider
        .scale_pool(&pool, target, &ctx.state, ctx.ui.as_ref())
        .await?;
    let mut text = format!(
        "nodes scale: cluster {cluster}, pool {pool}: {} → {target} node(s) in {:.1}s\n",
        live.size,
        ctx.ui.elapsed().as_secs_f64()
    );
    if let Some((min, max)) = live.autoscaling {
        text.push_str(&format!(
            "note: the pool autoscales within {min}..{max}; GKE may move it again\n"
        ));
    }
    Ok(Report {
        json: json!({"cluster": cluster, "pool": pool, "changed": true, "from": live.size, "nodes": target}),
        text,
    })
}

/// Borrows the session: the caller keeps the lock until it has recorded what happened.
async fn scale_workers(
    s: &mut super::Session,
    size: &str,
    until: Option<PhaseName>,
    timeout: Duration,
    ui: Arc<Ui>,
) -> Result<Report> {
    let reach = |p: PhaseName| until.is_none_or(|u| u >= p);
    if reach(PhaseName::Bootstrap) {
        // New hosts get the registry login (docker login, or k3s's registries.yaml).
        s.ctx.password = s.ctx.spec.registry_password()?;
    }
    let ctx = &s.ctx;
    let machines = ctx.provider.list().await?;
    *ctx.machines.lock().unwrap() = machines.clone();
    let workers: Vec<&Machine> = machines.iter().filter(|m| m.role == Role::Worker).collect();
    let live = workers.len() as u32;
    let target = resolve_size(size, live)?;
    let state = ctx.state.snapshot();
    let swarm_formed = state.hosts.values().any(|h| h.swarm.is_some());
    // Workers an earlier, interrupted `nodes scale` made but did not join: this run finishes them.
    let unjoined = swarm_formed
        && reach(PhaseName::Cluster)
        && workers
            .iter()
            .any(|m| state.hosts.get(&m.name).is_none_or(|h| h.swarm.is_none()));
    if target == live && !unjoined {
        return Ok(Report {
            json: json!({"cluster": ctx.spec.name, "changed": false, "workers": live, "message": "no changes"}),
            text: format!(
                "nodes scale: cluster {}: no changes ({live} worker(s))\n",
                ctx.spec.name
            ),
        });
    }
    if target < live && swarm_formed && reach(PhaseName::Bootstrap) {
        // The provider removes the newest workers; drain exactly those first.
        let leader = machines
            .iter()
            .find(|m| {
                state
                    .hosts
                    .get(&m.name)
                    .is_some_and(|h| h.swarm == Some(Role::Manager))
            })
            .ok_or_else(|| {
                Error::Other("no manager that cloudflow put in the swarm is running".into())
            })?;
        let leader = Target::from(leader);
        for victim in workers.iter().rev().take((live - target) as usize) {
            let Some(node) = state
                .hosts
                .get(&victim.name)
                .filter(|h| h.swarm.is_some())
                .and_then(|h| h.hostname.clone())
            else {
                continue;
            };
            ui.host(&victim.name, "draining");
            ctx.exec
                .run(&leader, "cluster", &commands::node_drain(&node))
                .await?;
            wait_drained(ctx, &leader, &node).await?;
            ui.host(&victim.name, "leaving the swarm");
            ctx.exec
                .run(&Target::from(*victim), "cluster", &commands::swarm_leave())
                .await?;
            ctx.exec
                .run(&leader, "cluster", &commands::node_rm(&node))
                .await?;
            ui.host_done(&victim.name, "drained and left the swarm");
        }
    }

    let k3s_drain = target < live
        && ctx.spec.kubernetes.k3s_artifacts.is_some()
        && ctx.k3s_kubeconfig.exists()
        && reach(PhaseName::Bootstrap);
    let mut drained = Vec::new();
    if k3s_drain {
        // Kubernetes cordons and evicts: the newest workers' nodes first, as on Swarm.
        let k = crate::phase::deploy::kubernetes(ctx).await?;
        for victim in workers.iter().rev().take((live - target) as usize) {
            let node = state
                .hosts
                .get(&victim.name)
                .and_then(|h| h.hostname.clone())
                .unwrap_or_else(|| victim.name.clone());
            ui.host(&victim.name, "cordon and drain");
            k.drain_node(&node, timeout).await?;
            ui.host_done(&victim.name, "drained");
            drained.push(node);
        }
    }

    ui.info(&format!("nodes scale: workers {live} → {target}"));
    // The new count is recorded before any machine is made or removed: killed half-way, the
    // next `up` or `nodes scale` works towards it (and `down` knows the machines are ours).
    ctx.state.update(|st| st.workers = Some(target))?;
    let machines = ctx
        .provider
        .scale_workers(target, &ctx.state, ui.as_ref())
        .await?;
    if !drained.is_empty() {
        let k = crate::phase::deploy::kubernetes(ctx).await?;
        for node in &drained {
            k.delete_node(node).await?;
        }
    }
    let before = ctx.machines();
    ctx.state.update(|st| {
        st.workers = Some(target);
        st.hosts
            .retain(|name, _| machines.iter().any(|m| &m.name == name));
        // A machine that went, or one made just now, leaves no host key behind: its address
        // may come back with a new machine (a new key).
        for m in before
            .iter()
            .filter(|b| !machines.iter().any(|m| m.name == b.name))
            .chain(
                machines
                    .iter()
                    .filter(|m| !before.iter().any(|b| b.name == m.name)),
            )
        {
            st.known_hosts
                .remove(&format!("{}:{}", m.ssh.address, m.ssh.port));
        }
        st.machines = machines.clone();
    })?;
    *ctx.machines.lock().unwrap() = machines.clone();

    let k3s = match &ctx.spec.kubernetes.k3s_artifacts {
        Some(dir) if reach(PhaseName::Bootstrap) => {
            Some(super::up::k3s_inputs(ctx, dir, &machines)?)
        }
        _ => None,
    };
    if (target > live || unjoined) && (swarm_formed || k3s.is_some()) && reach(PhaseName::Bootstrap)
    {
        // New workers: wait for their first boot, then bootstrap and join them as `up` would.
        super::ready::wait_booted(ctx, &machines, timeout, true).await?;
        let facts = gather_facts(ctx, &machines).await?;
        let snapshot = ctx.state.snapshot();
        let plan = plan::compute(&Inputs {
            spec: &ctx.spec,
            state: &snapshot,
            machines: &machines,
            provider_actions: &[],
            facts: &facts,
            renderer: &ctx.renderer,
            cluster_view: None,
            k3s: k3s.as_ref(),
        })?;
        for phase in [&Bootstrap as &dyn Phase, &Cluster] {
            if reach(phase.name()) && phase.should_run(&plan) {
                phase.run(ctx, &plan).await?;
            }
        }
        ctx.state.update(|st| {
            for (name, f) in &facts {
                st.host(name).hostname = Some(f.hostname.clone());
            }
        })?;
    }
    let secs = ui.elapsed().as_secs_f64();
    Ok(Report {
        json: json!({"cluster": ctx.spec.name, "changed": true, "workers": {"before": live, "after": target},
                     "machines": machines.len(), "elapsed_seconds": secs}),
        text: format!(
            "nodes scale: cluster {}: workers {live} → {target} in {secs:.1}s\n",
            ctx.spec.name
        ),
    })
}

/// Wait until no task is meant to run on `node` any more (at most two minutes).
async fn wait_drained(ctx: &crate::phase::Ctx, leader: &Target, node: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    until(Duration::from_secs(1), deadline, || async {
        let out = ctx
            .exec
            .run(leader, "cluster", &commands::node_tasks(node))
            .await
            .map_err(|e| Stop::Failed(Error::from(e)))?;
        if out.stdout.trim().is_empty() {
            Ok(())
        } else {
            Err(Stop::NotYet(format!(
                "{} task(s)",
                out.stdout.lines().count()
            )))
        }
    })
    .await
    .map_err(|e| match e {
        Stop::Failed(e) => e,
        Stop::NotYet(left) => Error::Other(format!(
            "node {node}: {left} still running two minutes after drain; gave up waiting"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_resolve_against_the_live_count() {
        assert_eq!(resolve_size("+2", 3).unwrap(), 5);
        assert_eq!(resolve_size("-1", 5).unwrap(), 4);
        assert_eq!(resolve_size("7", 5).unwrap(), 7);
        assert_eq!(resolve_size("0", 5).unwrap(), 0);
        assert!(
            resolve_size("-4", 3)
                .unwrap_err()
                .to_string()
                .contains("only 3 run")
        );
        assert!(resolve_size("many", 3).is_err());
        assert!(resolve_size("+", 3).is_err());
    }
}
