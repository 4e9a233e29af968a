//! Deploy and scale, orchestrator-neutral: names, routes, replica arithmetic and task
//! convergence are plain functions here; [`flow`] runs blue-green, stop-old, rollback, scale
//! and environments through an [`crate::orchestrator::Orchestrator`].

mod bluegreen;
mod environments;
pub mod flow;
pub mod probe;
pub mod tls;

use std::collections::BTreeMap;

use serde::Serialize;
use tera::Context;

use crate::commands::swarm::{LiveService, SecretRef};
use crate::render::{RenderError, Renderer};
use crate::spec::Strategy;
use crate::state::{ClusterState, Color, EnvRecord};

pub use flow::Deployer;

/// The environment every cluster has.
pub const DEFAULT_ENV: &str = "default";
/// The one overlay network the proxy and every routed service join.
pub const EDGE_NETWORK: &str = "cloudflow-edge";
/// Longest environment name (keeps `<env>-<service>-<colour>` a DNS label).
pub const MAX_ENV_NAME: usize = 24;

/// Swarm service name of one colour of a routed service.
pub fn color_service(env: &str, service: &str, color: Color) -> String {
    format!("{env}-{service}-{color}")
}

/// Swarm service name of an in-place (side) service.
pub fn inplace_service(env: &str, service: &str) -> String {
    format!("{env}-{service}")
}

/// The Swarm service that runs `color` of `service` (in-place services have one).
pub fn service_name(env: &str, service: &str, strategy: Strategy, color: Color) -> String {
    match strategy {
        Strategy::BlueGreen => color_service(env, service, color),
        Strategy::InPlace => inplace_service(env, service),
    }
}

/// An environment's own network (service-to-service traffic).
pub fn env_network(env: &str) -> String {
    format!("cf-env-{env}")
}

pub fn valid_env_name(name: &str) -> bool {
    crate::spec::valid_service_name(name) && name.len() <= MAX_ENV_NAME
}

pub fn labels(
    cluster: &str,
    env: &str,
    service: Option<&str>,
    color: Option<Color>,
) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    l.insert("cloudflow.cluster".to_string(), cluster.to_string());
    l.insert("cloudflow.env".to_string(), env.to_string());
    if let Some(s) = service {
        l.insert("cloudflow.service".to_string(), s.to_string());
    }
    if let Some(c) = color {
        l.insert("cloudflow.color".to_string(), c.to_string());
    }
    l
}

/// `+2`, `-1` relative to `current`; `5` absolute; then clamped to `min..=max` with a message.
pub fn resolve_replicas(
    size: &str,
    current: u32,
    min: u32,
    max: u32,
) -> Result<(u32, Option<String>), String> {
    let wanted = crate::size::resolve(size, current).ok_or_else(|| {
        format!("size {size:?}: expected a replica count (5) or a change (+2, -1)")
    })?;
    let clamped = wanted.clamp(min as i64, max as i64) as u32;
    let note = (clamped as i64 != wanted).then(|| {
        format!(
            "{size} from {current} gives {wanted}, outside min_replicas..max_replicas ({min}..{}): clamped to {clamped}",
            if max == u32::MAX { "∞".to_string() } else { max.to_string() }
        )
    });
    Ok((clamped, note))
}

/// One `server` of the proxy configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub host: String,
    /// The certificate (by name, under the proxy's `tls/`) that serves this host over HTTPS.
    pub cert: Option<String>,
    /// The Swarm service (dnsrr name) to send traffic to; `None` answers 503 with `message`.
    pub upstream: Option<String>,
    pub port: u16,
    pub message: String,
    pub comment: String,
}

/// A per-task route for the health gate: only these addresses are reachable through it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Probe {
    /// URL-safe id (the task id).
    pub id: String,
    pub address: String,
    pub port: u16,
    pub path: String,
    /// `<service>.<slot>` and the node, for messages.
    pub replica: String,
    pub node: String,
}

/// A routed service as the orchestrator routes it: which colour is live, which waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRoute {
    pub env: String,
    pub service: String,
    pub port: u16,
    pub live: Color,
    /// The other colour, when it has ever been deployed (0 replicas after stop-old).
    pub preview: Option<Color>,
}

/// Every routed (blue-green) service the state records, with its live colour.
pub fn service_routes(state: &ClusterState) -> Vec<ServiceRoute> {
    let mut out = Vec::new();
    for (env, e) in &state.environments {
        for (svc, r) in &e.services {
            let (Strategy::BlueGreen, Some(port), Some(_)) = (r.strategy, r.port, r.live()) else {
                continue;
            };
            out.push(ServiceRoute {
                env: env.clone(),
                service: svc.clone(),
                port,
                live: r.live,
                preview: r.color(r.live.other()).map(|_| r.live.other()),
            });
        }
    }
    out
}

/// The routes the state implies: live colour at `<svc>-<env>.<domain>`, the other colour at
/// `<svc>-<env>-preview.<domain>` (503 with a reason when it does not run). `upstream` names
/// where the orchestrator serves a colour (env, service, colour, preview?).
pub fn routes(
    state: &ClusterState,
    domain: &str,
    upstream: &dyn Fn(&str, &str, Color, bool) -> String,
) -> Vec<Route> {
    let mut out = Vec::new();
    for (env, e) in &state.environments {
        for (svc, r) in &e.services {
            let (Strategy::BlueGreen, Some(port)) = (r.strategy, r.port) else {
                continue;
            };
            let live = r.live();
            let cert = |host: &str| cert_for(state, host);
            let host = format!("{svc}-{env}.{domain}");
            out.push(Route {
                cert: cert(&host),
                host,
                upstream: live.map(|_| upstream(env, svc, r.live, false)),
                port,
                message: format!("{svc} in {env} has no live colour yet"),
                comment: format!(
                    "{svc} in {env}: live colour {} ({})",
                    r.live,
                    live.map(|c| c.image.as_str()).unwrap_or("-")
                ),
            });
            let other = r.live.other();
            let (upstream, message) = match r.color(other) {
                Some(c) if c.replicas > 0 => (Some(upstream(env, svc, other, true)), String::new()),
                Some(_) => (
                    None,
                    format!(
                        "no preview for {svc} in {env}: the {other} colour was stopped (stop-old); `cloudflow rollback {svc}` brings it back"
                    ),
                ),
                None => (
                    None,
                    format!(
                        "no preview for {svc} in {env}: only the {} colour was ever deployed",
                        r.live
                    ),
                ),
            };
            let host = format!("{svc}-{env}-preview.{domain}");
            out.push(Route {
                cert: cert(&host),
                host,
                upstream,
                port,
                message,
                comment: format!("{svc} in {env}: preview ({other})"),
            });
        }
    }
    out
}

/// The installed certificate (its files' base name) that serves `host`, if any.
fn cert_for(state: &ClusterState, host: &str) -> Option<String> {
    state
        .certs
        .iter()
        .find(|(_, c)| c.covers(host))
        .map(|(n, c)| c.file_base(n))
}

/// A routed host as an orchestrator that routes to the live colour by itself (Kubernetes:
/// Services) names it. Nothing in it depends on which colour is live, so a switch changes no
/// proxy configuration; a certificate does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceHost {
    pub host: String,
    pub service: String,
    pub env: String,
    pub upstream: String,
    pub port: u16,
    /// The certificate (by file name base) that serves this host over HTTPS.
    pub cert: Option<String>,
    /// The `-preview` host (the colour that is not live).
    pub preview: bool,
}

/// The live and preview hosts of every routed service with a live colour.
pub fn service_hosts(
    state: &ClusterState,
    domain: &str,
    upstream: &dyn Fn(&str, &str, Color, bool) -> String,
) -> Vec<ServiceHost> {
    let cert = |host: &str| cert_for(state, host);
    service_routes(state)
        .into_iter()
        .flat_map(|r| {
            [false, true].map(|preview| {
                let host = if preview {
                    format!("{}-{}-preview.{domain}", r.service, r.env)
                } else {
                    format!("{}-{}.{domain}", r.service, r.env)
                };
                ServiceHost {
                    cert: cert(&host),
                    upstream: upstream(&r.env, &r.service, r.live, preview),
                    host,
                    service: r.service.clone(),
                    env: r.env.clone(),
                    port: r.port,
                    preview,
                }
            })
        })
        .collect()
}

/// Render the proxy's conf.d file.
/// Where Swarm serves a colour: its dnsrr service.
pub fn swarm_upstream(env: &str, service: &str, color: Color, _preview: bool) -> String {
    color_service(env, service, color)
}

/// Render the proxy's routes with `template`; `upstream` names where a colour is served;
/// `https_port` adds HTTPS for hosts with a certificate.
#[allow(clippy::too_many_arguments)]
pub fn proxy_config(
    renderer: &Renderer,
    template: &str,
    upstream: &dyn Fn(&str, &str, Color, bool) -> String,
    state: &ClusterState,
    domain: &str,
    generation: u64,
    probes: &[Probe],
    https_port: Option<u16>,
) -> Result<String, RenderError> {
    let mut ctx = Context::new();
    ctx.insert("cluster", &state.cluster);
    ctx.insert("domain", domain);
    ctx.insert("generation", &generation);
    ctx.insert("routes", &routes(state, domain, upstream));
    // `services` stays for templates a spec overrides (`templates:`) that still use it.
    ctx.insert("services", &service_routes(state));
    ctx.insert("hosts", &service_hosts(state, domain, upstream));
    ctx.insert("probes", probes);
    ctx.insert("https_port", &https_port);
    renderer.render(template, &ctx)
}

/// A task as the orchestrator reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    /// `<service>.<slot>`.
    pub name: String,
    pub node: String,
    pub desired: String,
    pub state: String,
    pub error: String,
    pub image: String,
    /// Address on each network, by network name.
    pub addresses: BTreeMap<String, String>,
}

/// How far a service is from `replicas` running tasks (and none still stopping).
#[derive(Debug, Clone, PartialEq)]
pub struct Convergence {
    pub running: u32,
    pub stopping: u32,
    pub done: bool,
    /// The most recent task error, if any, for "what it was waiting for".
    pub last_error: Option<String>,
}

/// Whether a task's image (as Swarm reports it: usually pinned, `name:tag@sha256:…`) is the
/// image that was asked for: by digest when the request names one, else by name and tag (no
/// tag is `latest`); `docker.io/` and `library/` are the same as nothing.
pub fn image_matches(task_image: &str, wanted: &str) -> bool {
    fn split(i: &str) -> (String, Option<&str>, Option<&str>) {
        let (rest, digest) = match i.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (i, None),
        };
        let slash = rest.rfind('/').map(|p| p + 1).unwrap_or(0);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(p) => (&rest[..slash + p], Some(&rest[slash + p + 1..])),
            None => (rest, None),
        };
        let name = name.strip_prefix("docker.io/").unwrap_or(name);
        let name = name.strip_prefix("library/").unwrap_or(name);
        (name.to_string(), tag, digest)
    }
    let (tn, tt, td) = split(task_image);
    let (wn, wt, wd) = split(wanted);
    if tn != wn {
        return false;
    }
    match wd {
        Some(d) => td == Some(d) && (wt.is_none() || tt == wt),
        None => tt.unwrap_or("latest") == wt.unwrap_or("latest"),
    }
}

/// `docker service inspect`'s container spec: its environment (`["K=V", ...]` or absent)
/// and the secrets it mounts.
pub fn parse_container_spec(json: &str) -> Result<LiveService, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .map_err(|e| format!("cannot read a service's container spec ({e})"))?;
    let env = v["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| kv.as_str())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    let mut secrets: Vec<SecretRef> = v["Secrets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| SecretRef {
            name: s["SecretName"].as_str().unwrap_or_default().to_string(),
            target: s["File"]["Name"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    secrets.sort();
    Ok(LiveService { env, secrets })
}

/// The Docker secret that holds `value` for secret `secret` of `service` in `env`: its name
/// carries a fingerprint of the value (secrets are immutable; a new value is a new secret),
/// so a changed value is noticed without reading any secret back. The fingerprint is
/// PBKDF2-HMAC-SHA256 (200 000 rounds) salted with the cluster's own random salt and the
/// secret's place: a name says nothing about the value, and guessing a weak value from it
/// costs 200 000 HMACs a try even to someone who also holds the state.
pub fn secret_name(salt: &str, env: &str, service: &str, secret: &str, value: &str) -> String {
    use sha2::Sha256;
    let mut place = Vec::new();
    for part in [salt, env, service, secret] {
        place.extend((part.len() as u64).to_le_bytes());
        place.extend(part.as_bytes());
    }
    let mut out = [0u8; 10];
    pbkdf2::pbkdf2_hmac::<Sha256>(value.as_bytes(), &place, SECRET_ROUNDS, &mut out);
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    format!("cf-{hex}")
}

const SECRET_ROUNDS: u32 = 200_000;

pub fn convergence(tasks: &[Task], replicas: u32, image: Option<&str>) -> Convergence {
    let wanted: Vec<&Task> = tasks.iter().filter(|t| t.desired == "running").collect();
    let running = wanted
        .iter()
        .filter(|t| t.state == "running" && image.is_none_or(|i| image_matches(&t.image, i)))
        .count() as u32;
    let stopping = tasks
        .iter()
        .filter(|t| t.desired != "running" && ["running", "starting"].contains(&t.state.as_str()))
        .count() as u32;
    let last_error = tasks
        .iter()
        .find(|t| !t.error.is_empty())
        .map(|t| format!("task {} on {}: {} ({})", t.name, t.node, t.error, t.state));
    Convergence {
        running,
        stopping,
        done: running == replicas && wanted.len() as u32 == replicas && stopping == 0,
        last_error,
    }
}

/// Parse [`crate::commands::swarm::service_tasks`] output.
pub fn parse_tasks(service: &str, out: &str) -> Result<Vec<Task>, String> {
    let (json, nodes) = out.split_once("\n---\n").unwrap_or((out, ""));
    let nodes: BTreeMap<&str, &str> = nodes.lines().filter_map(|l| l.split_once(' ')).collect();
    let raw: Vec<serde_json::Value> =
        serde_json::from_str(json.trim()).map_err(|e| format!("tasks of {service}: {e}"))?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    Ok(raw
        .iter()
        .map(|t| {
            let node_id = s(&t["NodeID"]);
            let slot = t["Slot"].as_u64().unwrap_or(0);
            let mut addresses = BTreeMap::new();
            for a in t["NetworksAttachments"].as_array().into_iter().flatten() {
                let net = s(&a["Network"]["Spec"]["Name"]);
                if let Some(addr) = a["Addresses"].get(0).and_then(|v| v.as_str()) {
                    addresses.insert(net, addr.split('/').next().unwrap_or(addr).to_string());
                }
            }
            let image = s(&t["Spec"]["ContainerSpec"]["Image"]);
            Task {
                id: s(&t["ID"]),
                name: format!("{service}.{slot}"),
                node: nodes
                    .get(node_id.as_str())
                    .map(|n| n.to_string())
                    .unwrap_or(node_id),
                desired: s(&t["DesiredState"]),
                state: s(&t["Status"]["State"]),
                error: s(&t["Status"]["Err"]),
                // As Swarm has it (pinned by digest): see `image_matches`.
                image,
                addresses,
            }
        })
        .collect())
}

/// `env list`: one entry per environment (default first), services with their live colour.
pub fn env_list(state: &ClusterState) -> Vec<serde_json::Value> {
    let default = EnvRecord {
        created: state.created.clone(),
        expires: None,
        services: BTreeMap::new(),
    };
    let mut envs: Vec<(&str, &EnvRecord)> = vec![(
        DEFAULT_ENV,
        state.environments.get(DEFAULT_ENV).unwrap_or(&default),
    )];
    envs.extend(
        state
            .environments
            .iter()
            .filter(|(n, _)| n.as_str() != DEFAULT_ENV)
            .map(|(n, e)| (n.as_str(), e)),
    );
    envs.into_iter()
        .map(|(name, e)| {
            let services: Vec<_> = e
                .services
                .iter()
                .map(|(svc, r)| {
                    let live = r.live();
                    serde_json::json!({
                        "name": svc,
                        "color": r.live,
                        "image": live.map(|c| c.image.clone()),
                        "replicas": live.map(|c| c.replicas).unwrap_or(0),
                        "preview": r.preview().map(|c| serde_json::json!({"color": r.live.other(), "image": c.image, "replicas": c.replicas})),
                        "strategy": r.strategy,
                        // A command was stopped while switching from this colour to `color`:
                        // the next deploy-family command finishes or undoes it.
                        "switching_from": r.switch_from,
                    })
                })
                .collect();
            serde_json::json!({"name": name, "created": e.created, "expires": e.expires, "services": services})
        })
        .collect()
}

/// One [`env_list`] entry's services in a line: `web (green img:2 ×3), db (…)`, or `-`.
pub fn services_line(env: &serde_json::Value) -> String {
    let services: Vec<String> = env["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let color = if s["strategy"] == "in-place" {
                "in-place"
            } else {
                s["color"].as_str().unwrap_or("")
            };
            let switching = s["switching_from"]
                .as_str()
                .map(|f| format!(", switch from {f} interrupted"))
                .unwrap_or_default();
            format!(
                "{} ({color} {} ×{}{switching})",
                s["name"].as_str().unwrap_or(""),
                s["image"].as_str().unwrap_or("-"),
                s["replicas"]
            )
        })
        .collect();
    if services.is_empty() {
        "-".to_string()
    } else {
        services.join(", ")
    }
}

#[cfg(test)]
mod tests;
