//! Facts from every host: one facts script per host, all hosts in parallel.

use std::collections::BTreeMap;

use cloudflow_provider_api::Machine;

use crate::commands;
use crate::error::{Result, collect_hosts};
use crate::exec::{ExecError, Target, for_each_host};
use crate::facts::{self, HostFacts};
use crate::phase::Ctx;

/// Gather facts from `machines` (one round trip each) and keep them in `ctx`. Writes nothing.
pub async fn gather_facts(ctx: &Ctx, machines: &[Machine]) -> Result<BTreeMap<String, HostFacts>> {
    let registries: Vec<String> = ctx
        .spec
        .registry
        .auth
        .iter()
        .map(|a| a.server.clone())
        .collect();
    let cmd = commands::facts(&ctx.renderer, &registries)?;
    let results = for_each_host(machines, ctx.concurrency, |m| {
        let cmd = cmd.clone();
        async move {
            let t = Target::from(m);
            ctx.ui.host(&m.name, "gathering facts");
            let out = ctx.exec.run(&t, "facts", &cmd).await?;
            let f = facts::parse(&out.stdout)
                .map_err(|e| ExecError::Local(format!("host {}: {e}", m.name)))?;
            ctx.ui.host_done(
                &m.name,
                &format!(
                    "{} · docker {} · swarm {}",
                    f.os_name,
                    if f.docker_running {
                        "running"
                    } else if f.docker_installed() {
                        "stopped"
                    } else {
                        "missing"
                    },
                    f.swarm.state
                ),
            );
            Ok((m.name.clone(), f))
        }
    })
    .await;
    let map: BTreeMap<String, HostFacts> = collect_hosts(results)?.into_iter().collect();
    ctx.facts.lock().unwrap().extend(map.clone());
    Ok(map)
}
