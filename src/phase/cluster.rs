//! Cluster: init the swarm on the leading manager, then join everyone else with tokens read
//! from it (in parallel). Hosts already in the swarm were left out by the planner.
//! Undo: nodes cloudflow joined leave, workers first, the leader last.

use cloudflow_provider_api::Role;

use super::bootstrap::advertise_ip;
use super::{Ctx, Phase};
use crate::commands;
use crate::error::{Result, collect_hosts};
use crate::exec::{ExecError, for_each_host};
use crate::plan::{PhaseName, Plan, Step};

pub struct Cluster;

fn record(ctx: &Ctx, host: &str, role: Option<Role>) -> Result<(), ExecError> {
    ctx.state
        .update_host(host, |h| h.swarm = role)
        .map_err(|e| ExecError::Local(format!("host {host}: cannot record in the state: {e}")))
}

#[async_trait::async_trait]
impl Phase for Cluster {
    fn name(&self) -> PhaseName {
        PhaseName::Cluster
    }

    async fn run(&self, ctx: &Ctx, plan: &Plan) -> Result<()> {
        if ctx.spec.orchestrator == crate::spec::Orchestrator::Kubernetes {
            return super::k3s::run(ctx, plan).await;
        }
        let phase = "cluster";
        let actions: Vec<_> = plan.for_phase(PhaseName::Cluster).collect();
        let missing = |h: &str| ExecError::Local(format!("host {h} is not a known machine"));
        if let Some(init) = actions.iter().find(|a| a.step == Step::SwarmInit) {
            let host = init.host.as_deref().unwrap_or_default();
            let t = ctx.target(host).ok_or_else(|| missing(host))?;
            ctx.ui.host(host, "swarm init");
            record(ctx, host, Some(Role::Manager))?;
            ctx.exec
                .run(&t, phase, &commands::swarm_init(&advertise_ip(&t)))
                .await?;
            ctx.ui.host_done(host, "swarm initialised (leader)");
        }
        let joins: Vec<(String, Role, String)> = actions
            .iter()
            .filter_map(|a| match &a.step {
                Step::SwarmJoin { role, via } => Some((a.host.clone()?, *role, via.clone())),
                _ => None,
            })
            .collect();
        let Some((_, _, via)) = joins.first() else {
            return Ok(());
        };
        let leader = ctx.target(via).ok_or_else(|| missing(via))?;
        let mut tokens = Vec::new();
        for role in [Role::Worker, Role::Manager] {
            if joins.iter().any(|j| j.1 == role) {
                let out = ctx
                    .exec
                    .run(&leader, phase, &commands::swarm_join_token(role))
                    .await?;
                tokens.push((role, out.stdout.trim().to_string()));
            }
        }
        let leader_ip = advertise_ip(&leader);
        let results = for_each_host(&joins, ctx.concurrency, |(host, role, _)| {
            let token = tokens
                .iter()
                .find(|t| t.0 == *role)
                .map(|t| t.1.clone())
                .unwrap_or_default();
            let leader_ip = leader_ip.clone();
            async move {
                let t = ctx.target(host).ok_or_else(|| missing(host))?;
                ctx.ui.host(host, &format!("joining the swarm as {role}"));
                record(ctx, host, Some(*role))?;
                ctx.exec
                    .run(
                        &t,
                        phase,
                        &commands::swarm_join(&token, &advertise_ip(&t), &leader_ip),
                    )
                    .await?;
                ctx.ui.host_done(host, &format!("joined as {role}"));
                Ok(())
            }
        })
        .await;
        collect_hosts(results).map(|_| ())
    }

    async fn undo(&self, ctx: &Ctx, plan: &Plan) -> Result<()> {
        super::k3s::undo(ctx, plan).await?;
        // In plan order (workers first): a manager leaving first could break quorum for the rest.
        for a in plan.for_phase(PhaseName::Cluster) {
            let (Some(host), Step::SwarmLeave) = (a.host.as_deref(), &a.step) else {
                continue;
            };
            let t = ctx
                .target(host)
                .ok_or_else(|| ExecError::Local(format!("host {host} is not a known machine")))?;
            ctx.ui.host(host, "leaving the swarm");
            ctx.exec
                .run(&t, "cluster", &commands::swarm_leave())
                .await?;
            ctx.exec
                .run(
                    &t,
                    "cluster",
                    &commands::remove_task_containers(&ctx.spec.name),
                )
                .await?;
            record(ctx, host, None)?;
            ctx.ui.host_done(host, "left the swarm");
        }
        Ok(())
    }
}
