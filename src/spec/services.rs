//! `services:` and `services_from:` — what the deploy subsystem runs. Both are validated up
//! front; errors point at the spec file (or the compose file) with line and column.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::{Location, SpecError};

/// How a new image replaces the old one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Start the other colour, gate on health, switch the proxy, keep the old colour.
    #[default]
    BlueGreen,
    /// A side service: updated in place, never doubled, not routed by the proxy.
    InPlace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    pub path: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    /// Container port the proxy routes to (blue-green services).
    pub port: Option<u16>,
    pub replicas: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub health: HealthSpec,
    pub env: BTreeMap<String, String>,
    /// Secrets by the file name they get under `/run/secrets/`; values are read on the
    /// operator's machine at deploy time and never stored.
    pub secrets: BTreeMap<String, SecretSource>,
    pub strategy: Strategy,
}

/// Where a secret's value comes from, on the machine that runs cloudflow.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    /// An environment variable (the spec names it; the value is never in the spec).
    Env { var: String, at: Location },
    /// A file, relative to the spec's directory.
    File { path: String, at: Location },
}

/// Longest service name: `<env>-<service>-<colour>` must stay a DNS label (63).
pub const MAX_SERVICE_NAME: usize = 24;

/// Health gate defaults when the spec says nothing: `/` must answer below 500 within 60s.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    #[schemars(with = "String")]
    image: Spanned<String>,
    port: Option<u16>,
    #[schemars(with = "Option<u32>")]
    replicas: Option<Spanned<u32>>,
    min_replicas: Option<u32>,
    max_replicas: Option<u32>,
    health: Option<RawHealth>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    #[schemars(with = "HashMap<String, RawSecret>")]
    secrets: HashMap<Spanned<String>, RawSecret>,
    #[serde(default)]
    strategy: Strategy,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    #[schemars(with = "Option<String>")]
    env: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    file: Option<Spanned<String>>,
}

/// A secret's name: the file it becomes under `/run/secrets/`.
pub fn valid_secret_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[schemars(with = "String")]
    path: Spanned<String>,
    #[schemars(with = "Option<String>")]
    timeout: Option<Spanned<String>>,
}

/// `name`: lowercase letters, digits and '-' (it becomes part of Swarm service and DNS names).
pub fn valid_service_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_SERVICE_NAME
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// Parse a duration like `30s`, `2m`, `1h`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s, 5m or 1h ({e})"))
}

type At<'a> = &'a dyn Fn(Location, String) -> SpecError;

pub(super) fn from_spec(
    raw: HashMap<Spanned<String>, RawService>,
    at: At,
) -> Result<BTreeMap<String, ServiceSpec>, SpecError> {
    let mut out = BTreeMap::new();
    for (name, s) in sorted(raw) {
        let loc = Location::of(&name);
        let svc = validate(&name.value, s, loc, at)?;
        out.insert(name.value, svc);
    }
    Ok(out)
}

fn validate(name: &str, s: RawService, loc: Location, at: At) -> Result<ServiceSpec, SpecError> {
    if !valid_service_name(name) {
        return Err(at(
            loc,
            format!(
                "invalid service name {name:?}: use 1-{MAX_SERVICE_NAME} lowercase letters, digits and '-', starting with a letter \
                 (it becomes part of Swarm service names and of the host name <service>-<env>.<domain>)"
            ),
        ));
    }
    if let Err(e) = super::grammar::image(&s.image.value) {
        return Err(at(
            Location::of(&s.image),
            format!("service {name}: image {:?}: {e}", s.image.value),
        ));
    }
    if s.strategy == Strategy::BlueGreen && s.port.is_none() {
        return Err(at(
            loc,
            format!(
                "service {name}: `port` (the container port the proxy routes to) is required; \
                 a service that is not routed takes `strategy: in-place`"
            ),
        ));
    }
    let replicas = s.replicas.as_ref().map(|r| r.value).unwrap_or(1);
    let min = s.min_replicas.unwrap_or(0);
    let max = s.max_replicas.unwrap_or(u32::MAX);
    if min > max {
        return Err(at(
            loc,
            format!("service {name}: min_replicas ({min}) is above max_replicas ({max})"),
        ));
    }
    if !(min..=max).contains(&replicas) {
        let rloc = s.replicas.as_ref().map(Location::of).unwrap_or(loc);
        return Err(at(
            rloc,
            format!(
                "service {name}: replicas {replicas} is outside min_replicas..max_replicas ({min}..{max})"
            ),
        ));
    }
    let health = match s.health {
        None => HealthSpec {
            path: "/".into(),
            timeout: DEFAULT_HEALTH_TIMEOUT,
        },
        Some(h) => {
            if let Err(e) = super::grammar::url_path(&h.path.value) {
                return Err(at(
                    Location::of(&h.path),
                    format!("service {name}: health path {:?}: {e}", h.path.value),
                ));
            }
            let timeout = match &h.timeout {
                None => DEFAULT_HEALTH_TIMEOUT,
                Some(t) => parse_duration(&t.value).map_err(|m| {
                    at(
                        Location::of(t),
                        format!("service {name}: health timeout {m}"),
                    )
                })?,
            };
            HealthSpec {
                path: h.path.value,
                timeout,
            }
        }
    };
    for k in s.env.keys() {
        if let Err(e) = super::grammar::env_name(k) {
            return Err(at(loc, format!("service {name}: env name {k:?}: {e}")));
        }
    }
    let mut secrets = BTreeMap::new();
    for (key, raw) in sorted(s.secrets) {
        let sloc = Location::of(&key);
        if !valid_secret_name(&key.value) {
            return Err(at(
                sloc,
                format!(
                    "service {name}: secret name {:?}: 1-64 letters, digits, '_', '.' and '-', starting with a letter or digit \
                     (it becomes the file /run/secrets/<name>)",
                    key.value
                ),
            ));
        }
        let source = match (raw.env, raw.file) {
            (Some(e), None) => {
                if let Err(m) = super::grammar::env_name(&e.value) {
                    return Err(at(
                        Location::of(&e),
                        format!(
                            "service {name}: secret {}: env {:?}: {m}",
                            key.value, e.value
                        ),
                    ));
                }
                SecretSource::Env {
                    var: e.value.clone(),
                    at: Location::of(&e),
                }
            }
            (None, Some(f)) if !f.value.trim().is_empty() => SecretSource::File {
                path: f.value.clone(),
                at: Location::of(&f),
            },
            _ => {
                return Err(at(
                    sloc,
                    format!(
                        "service {name}: secret {} needs exactly one of `env: VARIABLE` or `file: PATH` \
                         (values never go in the spec)",
                        key.value
                    ),
                ));
            }
        };
        secrets.insert(key.value, source);
    }
    Ok(ServiceSpec {
        name: name.to_string(),
        image: s.image.value,
        secrets,
        port: s.port,
        replicas,
        min_replicas: min,
        max_replicas: max,
        health,
        env: s.env,
        strategy: s.strategy,
    })
}

// ---- compose input ---------------------------------------------------------------------------

#[derive(Deserialize)]
struct Compose {
    #[serde(default)]
    services: HashMap<Spanned<String>, ComposeService>,
}

#[derive(Deserialize)]
struct ComposeService {
    image: Option<String>,
    #[serde(default)]
    ports: Vec<Spanned<ComposePort>>,
    #[serde(default)]
    environment: Option<ComposeEnv>,
    deploy: Option<ComposeDeploy>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ComposePort {
    Number(u32),
    Short(String),
    Long { target: u32 },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ComposeEnv {
    Map(BTreeMap<String, Option<serde_json::Value>>),
    List(Vec<String>),
}

#[derive(Deserialize)]
struct ComposeDeploy {
    replicas: Option<u32>,
}

/// Read services from a compose file. A service with `ports` becomes a routed blue-green
/// service on the first port's container side; one without is an in-place side service.
pub(super) fn from_compose(path: &Path) -> Result<BTreeMap<String, ServiceSpec>, SpecError> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
        path: file.clone(),
        message: format!("{e} (named by services_from)"),
    })?;
    let options = serde_saphyr::options! { with_snippet: false };
    let compose: Compose = serde_saphyr::from_str_with_options(&source, options)
        .map_err(|e| SpecError::from_yaml(&file, &source, &e))?;
    let at = |loc: Location, msg: String| SpecError::at(&file, &source, loc, msg);
    let mut out = BTreeMap::new();
    for (name, c) in sorted(compose.services) {
        let loc = Location::of(&name);
        let Some(image) = c.image else {
            return Err(at(
                loc,
                format!(
                    "service {}: no `image` (cloudflow deploys images; it does not build)",
                    name.value
                ),
            ));
        };
        let port = match c.ports.first() {
            None => None,
            Some(p) => Some(compose_port(&p.value).ok_or_else(|| {
                at(
                    Location::of(p),
                    format!(
                        "service {}: cannot read this port (use 8080, \"80:8080\" or target: 8080)",
                        name.value
                    ),
                )
            })?),
        };
        let env = match c.environment {
            None => BTreeMap::new(),
            Some(ComposeEnv::Map(m)) => m
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        None => String::new(),
                        Some(serde_json::Value::String(s)) => s,
                        Some(other) => other.to_string(),
                    };
                    (k, v)
                })
                .collect(),
            Some(ComposeEnv::List(l)) => l
                .into_iter()
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (kv, String::new()),
                })
                .collect(),
        };
        let raw = RawService {
            image: Spanned {
                value: image,
                referenced: name.referenced,
                defined: name.defined,
            },
            port,
            replicas: c.deploy.and_then(|d| d.replicas).map(|r| Spanned {
                value: r,
                referenced: name.referenced,
                defined: name.defined,
            }),
            min_replicas: None,
            max_replicas: None,
            health: None,
            env,
            secrets: HashMap::new(),
            strategy: if port.is_some() {
                Strategy::BlueGreen
            } else {
                Strategy::InPlace
            },
        };
        let svc = validate(&name.value, raw, loc, &at)?;
        out.insert(name.value, svc);
    }
    Ok(out)
}

/// Map entries in name order, so the first error reported is stable.
fn sorted<T>(m: HashMap<Spanned<String>, T>) -> Vec<(Spanned<String>, T)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| a.0.value.cmp(&b.0.value));
    v
}

fn compose_port(p: &ComposePort) -> Option<u16> {
    let n = match p {
        ComposePort::Number(n) => *n,
        ComposePort::Long { target } => *target,
        ComposePort::Short(s) => {
            // "8080", "80:8080", "127.0.0.1:80:8080", "8080/tcp"
            let s = s.split('/').next()?;
            s.rsplit(':').next()?.parse().ok()?
        }
    };
    u16::try_from(n).ok().filter(|n| *n > 0)
}
