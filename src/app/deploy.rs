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

/// An open cluster for reading only: no lock, nothing written.
async fn read_site(cli: &Cli, ui: Arc<Ui>) -> Result<DeploySite> {
    let session = open(cli, ui, false, false).await?;
    let machines = session.ctx.provider.list().await?;
    *session.ctx.machines.lock().unwrap() = machines.clone();
    let orch = crate::phase::deploy::orchestrator(&session.ctx).await?;
    Ok(DeploySite { session, orch })
}

/// The recorded service of `env`, or a usage error naming what exists.
fn service_record(
    site: &DeploySite,
    env: &str,
    service: &str,
) -> Result<crate::state::ServiceRecord> {
    let state = site.session.ctx.state.snapshot();
    let Some(e) = state.environments.get(env) else {
        return Err(crate::error::Error::Usage(format!(
            "no environment {env:?} in cluster {} (`cloudflow env list` shows them)",
            state.cluster
        )));
    };
    e.services.get(service).cloned().ok_or_else(|| {
        crate::error::Error::Usage(format!(
            "no service {service:?} deployed in {env} (deployed: {})",
            if e.services.is_empty() {
                "none".to_string()
            } else {
                e.services.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        ))
    })
}

/// `certs` (list) and `certs renew`.
pub async fn certs(cli: &Cli, renew: bool, ui: Arc<Ui>) -> Result<Report> {
    let site = if renew {
        site(cli, ui).await?
    } else {
        read_site(cli, ui).await?
    };
    let renewed = if renew {
        site.deployer(Duration::from_secs(300))
            .renew_certs()
            .await?
    } else {
        Vec::new()
    };
    let certs = site.session.ctx.state.snapshot().certs;
    let rows = deploy::tls::cert_rows(&certs);
    let mut text = String::new();
    if renew {
        text.push_str(&format!(
            "renewed: {}\n",
            if renewed.is_empty() {
                "-".to_string()
            } else {
                renewed.join(", ")
            }
        ));
    }
    text.push_str(&format!(
        "{:<14} {:<26} {:>9}  {:<6} HOSTS\n",
        "CERTIFICATE", "EXPIRES", "DAYS LEFT", "SOURCE"
    ));
    for r in &rows {
        text.push_str(&format!(
            "{:<14} {:<26} {:>9}  {:<6} {}\n",
            r["name"].as_str().unwrap_or(""),
            r["not_after"].as_str().unwrap_or(""),
            r["days_left"],
            r["source"].as_str().unwrap_or(""),
            r["hosts"]
                .as_array()
                .map(|h| h
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ));
    }
    // Orders that failed and wait before the next attempt.
    let failures: Vec<serde_json::Value> = site
        .session
        .ctx
        .state
        .snapshot()
        .cert_failures
        .iter()
        .map(|(name, f)| {
            let retry = f
                .retry_at()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            text.push_str(&format!(
                "order of {name} failed {} time(s), the last at {}; next order after {retry}: {}\n",
                f.attempts, f.at, f.error
            ));
            json!({"name": name, "attempts": f.attempts, "last_failure": f.at, "retry_after": retry, "error": f.error})
        })
        .collect();
    Ok(Report {
        json: json!({"certificates": rows, "renewed": renewed, "failed_orders": failures}),
        text,
    })
}

/// `logs SERVICE`: the replicas' lines go straight to stdout as they arrive.
pub async fn logs(cli: &Cli, a: &crate::cli::LogsArgs, ui: Arc<Ui>) -> Result<Report> {
    use std::io::Write;
    let site = read_site(cli, ui).await?;
    let r = service_record(&site, &a.env, &a.service)?;
    let color = match a.color.as_deref() {
        Some("green") => crate::state::Color::Green,
        Some(_) => crate::state::Color::Blue,
        None => r.live,
    };
    let name = site.orch.workload(&a.env, &a.service, r.strategy, color);
    let json_out = cli.output == crate::cli::OutputFormat::Json;
    if json_out && a.follow {
        return Err(crate::error::Error::Usage(
            "logs --follow streams text; with -o json, leave --follow out (the lines come as one document)".into(),
        ));
    }
    // Text: straight to stdout as it arrives. JSON: collected into the one document.
    let collected = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink: crate::exec::Sink = if json_out {
        let c = collected.clone();
        Arc::new(move |b: &[u8]| c.lock().unwrap().extend_from_slice(b))
    } else {
        Arc::new(|b: &[u8]| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(b);
            let _ = out.flush();
        })
    };
    site.orch
        .logs(&name, a.follow, a.since.as_deref(), sink)
        .await?;
    let text = String::from_utf8_lossy(&collected.lock().unwrap()).to_string();
    Ok(Report {
        json: json!({"service": a.service, "env": a.env, "workload": name, "lines": text.lines().collect::<Vec<_>>()}),
        text: String::new(),
    })
}

/// `ps SERVICE`: every replica of each colour that has one.
pub async fn ps(cli: &Cli, a: &crate::cli::PsArgs, ui: Arc<Ui>) -> Result<Report> {
    let site = read_site(cli, ui).await?;
    let r = service_record(&site, &a.env, &a.service)?;
    let colors: Vec<crate::state::Color> = match r.strategy {
        crate::spec::Strategy::InPlace => vec![crate::state::Color::Blue],
        crate::spec::Strategy::BlueGreen => {
            vec![r.live, r.live.other()]
        }
    };
    let edge = site.orch.edge_space();
    let mut rows = Vec::new();
    for c in colors {
        let name = site.orch.workload(&a.env, &a.service, r.strategy, c);
        for t in site.orch.tasks(&name).await? {
            if t.desired != "running" && t.state != "running" && t.error.is_empty() {
                continue; // long gone, nothing to tell
            }
            rows.push(json!({
                "replica": t.name,
                "color": if r.strategy == crate::spec::Strategy::InPlace { serde_json::Value::Null } else { json!(c) },
                "live": c == r.live,
                "node": t.node,
                "state": t.state,
                "desired": t.desired,
                "address": t.addresses.get(&edge).or_else(|| t.addresses.values().next()),
                "image": t.image,
                "error": if t.error.is_empty() { serde_json::Value::Null } else { json!(t.error) },
            }));
        }
    }
    let mut text = format!(
        "{:<28} {:<6} {:<16} {:<10} {:<16} ERROR\n",
        "REPLICA", "COLOR", "NODE", "STATE", "ADDRESS"
    );
    for row in &rows {
        let color = match (row["color"].as_str(), row["live"].as_bool()) {
            (Some(c), Some(true)) => format!("{c}*"),
            (Some(c), _) => c.to_string(),
            (None, _) => "-".into(),
        };
        text.push_str(&format!(
            "{:<28} {:<6} {:<16} {:<10} {:<16} {}\n",
            row["replica"].as_str().unwrap_or(""),
            color,
            row["node"].as_str().unwrap_or(""),
            row["state"].as_str().unwrap_or(""),
            row["address"].as_str().unwrap_or("-"),
            row["error"].as_str().unwrap_or("")
        ));
    }
    Ok(Report {
        json: json!({"service": a.service, "env": a.env, "replicas": rows}),
        text,
    })
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
    // Every host now routed has its certificate (proxy.https): ordered or installed when
    // missing or expiring, then put live with the routes.
    site.deployer(Duration::from_secs(300))
        .ensure_certs(false)
        .await?;
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

/// `env gc` (and certificate renewal) for the hook's timer.
pub async fn env_gc(cli: &Cli, ui: Arc<Ui>) -> Result<Report> {
    let site = site(cli, ui).await?;
    let outcome = site.deployer(HOOK_TIMEOUT).env_gc().await?;
    // The timer also renews certificates that come within 30 days of expiry.
    let renewed = site.deployer(HOOK_TIMEOUT).ensure_certs_quietly().await?;
    let mut r = report(outcome);
    if !renewed.is_empty() {
        r.json["changed"] = json!(true);
        r.json["certificates"] = json!(renewed);
        r.text
            .push_str(&format!("certificates installed: {}\n", renewed.join(", ")));
    }
    Ok(r)
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
