//! Bootstrap: proxy settings, Docker installed and started, registry settings and login — on
//! every host in parallel. Undo: take back exactly what the state says cloudflow changed.

use std::net::ToSocketAddrs;

use super::{Ctx, Phase};
use crate::commands::{self, Cmd};
use crate::error::{Result, collect_hosts};
use crate::exec::{ExecError, Target, for_each_host};
use crate::facts::Init;
use crate::plan::{PhaseName, Plan, Step};
use crate::state::DaemonJsonRecord;

pub struct Bootstrap;

#[async_trait::async_trait]
impl Phase for Bootstrap {
    fn name(&self) -> PhaseName {
        PhaseName::Bootstrap
    }

    async fn run(&self, ctx: &Ctx, plan: &Plan) -> Result<()> {
        run_hosts(ctx, plan, PhaseName::Bootstrap).await
    }

    async fn undo(&self, ctx: &Ctx, plan: &Plan) -> Result<()> {
        run_hosts(ctx, plan, PhaseName::Bootstrap).await
    }
}

/// Run each host's steps of `phase` in order; hosts in parallel. Every host finishes its own
/// work even when another fails; the error lists all failed hosts.
pub(super) async fn run_hosts(ctx: &Ctx, plan: &Plan, phase: PhaseName) -> Result<()> {
    let mut hosts: Vec<String> = plan
        .for_phase(phase)
        .filter_map(|a| a.host.clone())
        .collect();
    hosts.dedup();
    let results = for_each_host(&hosts, ctx.concurrency, |host| async move {
        let steps = plan.host_steps(phase, host);
        let target = ctx
            .target(host)
            .ok_or_else(|| ExecError::Local(format!("host {host} is not a known machine")))?;
        for step in &steps {
            ctx.ui.host(host, &step.to_string());
            apply(ctx, &target, phase, step)
                .await
                .inspect_err(|_| ctx.ui.host_done(host, "failed"))?;
        }
        ctx.ui
            .host_done(host, &format!("{phase}: {} step(s) done", steps.len()));
        Ok(())
    })
    .await;
    collect_hosts(results).map(|_| ())
}

fn record(
    ctx: &Ctx,
    host: &str,
    f: impl FnOnce(&mut crate::state::HostRecord),
) -> Result<(), ExecError> {
    ctx.state
        .update_host(host, f)
        .map_err(|e| ExecError::Local(format!("host {host}: cannot record in the state: {e}")))
}

fn render(r: std::result::Result<Cmd, crate::render::RenderError>) -> Result<Cmd, ExecError> {
    r.map_err(|e| ExecError::Local(e.to_string()))
}

/// The address Swarm advertises and joins on: the private one where the provider knows it
/// (members talk inside the network, whatever address cloudflow uses for SSH), else the SSH
/// address resolved to an IP (inventory hostnames).
pub(super) fn advertise_ip(t: &Target) -> String {
    if let Some(p) = &t.private_address {
        return p.clone();
    }
    (t.address.as_str(), t.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| t.address.clone())
}

/// One step on one host: record first, then act.
pub(super) async fn apply(
    ctx: &Ctx,
    t: &Target,
    phase: PhaseName,
    step: &Step,
) -> Result<(), ExecError> {
    let host = t.name.as_str();
    let p = phase.to_string();
    let init = ctx.facts_of(host).map(|f| f.init).unwrap_or(Init::None);
    match step {
        Step::Provider(_) => {}
        Step::WriteFile {
            path,
            content,
            mode,
        } => {
            record(ctx, host, |h| {
                if !h.files.contains(path) {
                    h.files.push(path.clone());
                }
            })?;
            ctx.exec
                .run(
                    t,
                    &p,
                    &commands::write_file_mode("write-file", path, content, *mode),
                )
                .await?;
        }
        Step::InstallDocker => {
            record(ctx, host, |h| h.installed_docker = true)?;
            ctx.exec
                .run(t, &p, &render(commands::install_docker(&ctx.renderer))?)
                .await?;
        }
        Step::WriteDaemonJson {
            content,
            added_insecure,
            added_mirrors,
            created_file,
        } => {
            record(ctx, host, |h| {
                let rec = h.daemon_json.get_or_insert_with(|| DaemonJsonRecord {
                    created_file: *created_file,
                    ..Default::default()
                });
                for a in added_insecure {
                    if !rec.added_insecure.contains(a) {
                        rec.added_insecure.push(a.clone());
                    }
                }
                for a in added_mirrors {
                    if !rec.added_mirrors.contains(a) {
                        rec.added_mirrors.push(a.clone());
                    }
                }
            })?;
            ctx.exec
                .run(
                    t,
                    &p,
                    &commands::write_file("daemon-json", commands::DAEMON_JSON, content),
                )
                .await?;
        }
        Step::StartDocker => {
            ctx.exec
                .run(
                    t,
                    &p,
                    &render(commands::start_docker(&ctx.renderer, init, false))?,
                )
                .await?;
        }
        Step::RestartDocker => {
            ctx.exec
                .run(
                    t,
                    &p,
                    &render(commands::start_docker(&ctx.renderer, init, true))?,
                )
                .await?;
        }
        Step::RegistryLogin { server, username } => {
            let password = ctx.password.clone().ok_or_else(|| {
                ExecError::Local("registry password missing (registry.auth.password_env)".into())
            })?;
            record(ctx, host, |h| {
                if !h.logged_in.contains(server) {
                    h.logged_in.push(server.clone());
                }
            })?;
            ctx.exec
                .run(t, &p, &commands::registry_login(server, username, password))
                .await?;
        }
        Step::RegistryLogout { server } => {
            ctx.exec
                .run(t, &p, &commands::registry_logout(server))
                .await?;
            record(ctx, host, |h| h.logged_in.retain(|s| s != server))?;
        }
        Step::RestoreDaemonJson { content } => {
            let cmd = match content {
                Some(c) => commands::write_file("daemon-json", commands::DAEMON_JSON, c),
                None => commands::remove_files("daemon-json", &[commands::DAEMON_JSON.to_string()]),
            };
            ctx.exec.run(t, &p, &cmd).await?;
            record(ctx, host, |h| h.daemon_json = None)?;
        }
        Step::RemoveFiles { paths } => {
            ctx.exec
                .run(t, &p, &commands::remove_files("remove-files", paths))
                .await?;
            record(ctx, host, |h| h.files.retain(|f| !paths.contains(f)))?;
        }
        Step::SwarmInit
        | Step::SwarmJoin { .. }
        | Step::SwarmLeave
        | Step::StartProxy { .. }
        | Step::DeployService { .. }
        | Step::K3sInstall { .. }
        | Step::K3sKubeconfig
        | Step::K3sUninstall
        | Step::RemoveDeployments { .. } => {
            return Err(ExecError::Local(format!(
                "{step} belongs to the cluster phase"
            )));
        }
    }
    Ok(())
}
