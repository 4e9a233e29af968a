//! `autoscaling:` — how `cloudflow serve` turns alerts into scaling: the webhook's bearer
//! token (by environment variable name, never the value), the per-target cooldown, and the
//! bounds for node scaling (service bounds are the services' min/max_replicas).

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Location, SpecError, parse_duration, valid_env_name};

#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalingSpec {
    /// The environment variable holding the bearer token callers must send.
    pub token_env: String,
    pub token_env_at: Location,
    /// No second change to one target inside it.
    pub cooldown: Duration,
    /// Bounds for node scaling.
    pub nodes_min: u32,
    pub nodes_max: u32,
    /// How often `serve` destroys environments past their TTL.
    pub gc_every: Duration,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAutoscaling {
    webhook: RawWebhook,
    #[schemars(with = "Option<String>")]
    cooldown: Option<Spanned<String>>,
    #[schemars(with = "Option<RawBounds>")]
    nodes: Option<Spanned<RawBounds>>,
    #[schemars(with = "Option<String>")]
    gc_every: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    #[schemars(with = "String")]
    token_env: Spanned<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawBounds {
    min: u32,
    max: u32,
}

fn duration(
    v: &Option<Spanned<String>>,
    default: Duration,
    what: &str,
    at: &dyn Fn(Location, String) -> SpecError,
) -> Result<Duration, SpecError> {
    match v {
        None => Ok(default),
        Some(s) => {
            parse_duration(&s.value).map_err(|e| at(Location::of(s), format!("{what}: {e}")))
        }
    }
}

pub(super) fn parse(
    raw: RawAutoscaling,
    at: &dyn Fn(Location, String) -> SpecError,
) -> Result<AutoscalingSpec, SpecError> {
    let t = &raw.webhook.token_env;
    if !valid_env_name(&t.value) {
        return Err(at(
            Location::of(t),
            format!(
                "token_env must name an environment variable (like CLOUDFLOW_HOOK_TOKEN), not {:?}",
                t.value
            ),
        ));
    }
    let (nodes_min, nodes_max) = match &raw.nodes {
        None => (0, u32::MAX),
        Some(b) if b.value.min > b.value.max => {
            return Err(at(
                Location::of(b),
                format!(
                    "autoscaling.nodes: min {} is above max {}",
                    b.value.min, b.value.max
                ),
            ));
        }
        Some(b) => (b.value.min, b.value.max),
    };
    Ok(AutoscalingSpec {
        token_env: t.value.clone(),
        token_env_at: Location::of(t),
        cooldown: duration(
            &raw.cooldown,
            Duration::from_secs(120),
            "autoscaling.cooldown",
            at,
        )?,
        nodes_min,
        nodes_max,
        gc_every: duration(
            &raw.gc_every,
            Duration::from_secs(60),
            "autoscaling.gc_every",
            at,
        )?,
    })
}
