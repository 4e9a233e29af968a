//! `deploy`, `switch`, `stop-old`, `rollback`, `scale` and `env …`: open the cluster, find the
//! swarm's managers, and hand over to [`crate::deploy::Deployer`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Report, Session, open};
use crate::cli::{Cli, Command, EnvCommand};
use crate::deploy::flow::{DeployOpts, Outcome};
use crate::deploy::{self, Deployer};
use crate::error::Result;
use crate::orchestrator::Orchestrator;
use crate::ui::Ui;

/// An open cluster with its orchestrator: what a deployer borrows.
pub struct DeploySite {
    pub session: Session,
    pub orch: Box<dyn Orchestrator>,
}

impl DeploySite {
    pub fn deployer(&self, timeout: Duration) -> Deployer<'_> {
        crate::phase::deploy::deployer(&self.session.ctx, self.orch.as_ref(), timeout)
    }
}

async fn site(cli: &Cli, ui: Arc<Ui>) -> Result<DeploySite> {
    let session = open(cli, ui, true, true).await?;
    let machines = session.ctx.provider.list().await?;
    *session.ctx.machines.lock().unwrap() = machines.clone();
    let orch = crate::phase::deploy::orchestrator(&session.ctx).await?;
    let site = DeploySite { session, orch };
    // A switch a killed command left half-way is finished (or undone) before anything else.
    site.deployer(Duration::from_secs(300))
        .finish_interrupted()
        .await?;
    Ok(site)
}

fn report(o: Outcome) -> Report {
    Report {
        text: format!("{}\n", o.message),
        json: o.json,
    }
}

pub async fn run(cli: &Cli, ui: Arc<Ui>) -> Result<Report> {
    if let Command::Env(EnvCommand::List(_)) = &cli.command {
        return env_list(cli, ui).await;
    }
    let site = site(cli, ui).await?;
    let outcome = match &cli.command {
        Command::Deploy(a) => {
            if let Some(i) = &a.image
                && let Err(e) = crate::spec::grammar::image(i)
            {
                return Err(crate::error::Error::Usage(format!("--image {i:?}: {e}")));
            }
            let d = site.deployer(a.target.common.timeout);
            let opts = DeployOpts {
                image: a.image.clone(),
                no_switch: a.no_switch,
                scale: a.scale.clone(),
                force: a.force,
            };
            d.deploy(&a.target.env, &a.target.service, &opts).await?
        }
        Command::Switch(a) => {
            site.deployer(a.common.timeout)
                .switch(&a.env, &a.service)
                .await?
        }
        Command::StopOld(a) => {
            site.deployer(a.common.timeout)
                .stop_old(&a.env, &a.service)
                .await?
        }
        Command::Rollback(a) => {
            site.deployer(a.common.timeout)
                .rollback(&a.env, &a.service)
                .await?
        }
        Command::Scale(a) => {
            site.deployer(a.common.timeout)
                .scale(&a.env, &a.service, &a.size)
                .await?
        }
        Command::Env(EnvCommand::Create(a)) => {
            site.deployer(a.common.timeout)
                .env_create(&a.name, a.ttl)
                .await?
        }
        Command::Env(EnvCommand::Destroy(a)) => {
            site.deployer(a.common.timeout).env_destroy(&a.name).await?
        }
        Command::Env(EnvCommand::Gc(a)) => site.deployer(a.timeout).env_gc().await?,
        _ => unreachable!("not a deploy command"),
    };
    Ok(report(outcome))
}

/// How long an action of the hook may wait for tasks to converge.
const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// `scale SERVICE SIZE` for the autoscaling hook: the same lock, state and code as the CLI.
pub async fn scale_service(
    cli: &Cli,
    env: &str,
    service: &str,
    size: &str,
    guard: Option<&super::HookGuard>,
    ui: Arc<Ui>,
) -> Result<Report> {
    let site = site(cli, ui).await?;
    let state = site.session.ctx.state.clone();
    if let Some(refused) = guard.and_then(|g| g.refusal(&state.snapshot())) {
        return Ok(refused);
    }
    let outcome = site
        .deployer(HOOK_TIMEOUT)
        .scale(env, service, size)
        .await?;
    let mut r = report(outcome);
    r.json["message"] = serde_json::json!(r.text.trim());
    if let Some(g) = guard {
        g.record(&state, r.json["changed"].as_bool().unwrap_or(false))?;
    }
    Ok(r)
}

/// `env gc` for the hook's timer.
pub async fn env_gc(cli: &Cli, ui: Arc<Ui>) -> Result<Report> {
    let site = site(cli, ui).await?;
    let outcome = site.deployer(HOOK_TIMEOUT).env_gc().await?;
    Ok(report(outcome))
}

/// `env list` reads the state only: no lock, no SSH.
async fn env_list(cli: &Cli, ui: Arc<Ui>) -> Result<Report> {
    let s = open(cli, ui, false, false).await?;
    let state = s.ctx.state.snapshot();
    let envs = deploy::env_list(&state);
    let now = chrono::Utc::now();
    let mut text = format!(
        "{:<16} {:<10} {:<22} SERVICES\n",
        "ENVIRONMENT", "AGE", "EXPIRES"
    );
    for e in &envs {
        let age = e["created"]
            .as_str()
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|c| {
                let secs = (now - c.with_timezone(&chrono::Utc)).num_seconds().max(0) as u64;
                humantime::format_duration(Duration::from_secs(secs)).to_string()
            })
            .unwrap_or_default();
        let age: String = age.split(' ').take(2).collect::<Vec<_>>().join(" ");
        let expires = match e["expires"].as_str() {
            None => "never".to_string(),
            Some(x) => {
                let past = chrono::DateTime::parse_from_rfc3339(x).is_ok_and(|t| t < now);
                format!("{x}{}", if past { " (expired)" } else { "" })
            }
        };
        text.push_str(&format!(
            "{:<16} {:<10} {:<22} {}\n",
            e["name"].as_str().unwrap_or(""),
            age,
            expires,
            deploy::services_line(e)
        ));
    }
    Ok(Report {
        json: json!({"cluster": state.cluster, "environments": envs}),
        text,
    })
}
