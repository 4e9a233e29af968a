//! `provider.gke`: a managed GKE cluster and its node pools.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::{Location, SpecError, valid_name};

#[derive(Debug, Clone, PartialEq)]
pub struct GkeSpec {
    pub project: String,
    /// A zone (`europe-west1-b`) or a region (`europe-west1`).
    pub location: String,
    /// `rapid`, `regular`, `stable`, `extended`; `None` for no channel.
    pub release_channel: Option<String>,
    pub node_pools: Vec<NodePoolSpec>,
    /// cloudflow's own guard: `down` refuses while it is on.
    pub deletion_protection: bool,
    /// Where the spec sets it (for `down`'s refusal), when it does.
    pub deletion_protection_at: Option<Location>,
    /// Where each field the API may refuse is written, by its path
    /// (`provider.gke.node_pools[1].machine_type`): API errors point at the line.
    pub at: std::collections::BTreeMap<String, Location>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodePoolSpec {
    pub name: String,
    pub machine_type: String,
    pub nodes: u32,
    pub autoscaling: Option<(u32, u32)>,
    pub spot: bool,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGke {
    #[schemars(with = "String")]
    project: Spanned<String>,
    #[schemars(with = "String")]
    location: Spanned<String>,
    #[schemars(with = "Option<String>")]
    release_channel: Option<Spanned<String>>,
    #[schemars(with = "Vec<RawPool>")]
    node_pools: Spanned<Vec<RawPool>>,
    #[schemars(with = "Option<bool>")]
    deletion_protection: Option<Spanned<bool>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[schemars(with = "String")]
    name: Spanned<String>,
    #[schemars(with = "String")]
    machine_type: Spanned<String>,
    #[schemars(with = "u32")]
    nodes: Spanned<u32>,
    #[schemars(with = "Option<RawAutoscaling>")]
    autoscaling: Option<Spanned<RawAutoscaling>>,
    #[serde(default)]
    spot: bool,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAutoscaling {
    min: u32,
    max: u32,
}

/// GCP project ids: 6-30 lowercase letters, digits and hyphens, starting with a letter
/// (older projects may carry a `domain:` prefix).
fn valid_project(p: &str) -> bool {
    let id = p.rsplit(':').next().unwrap_or(p);
    let b = id.as_bytes();
    (6..=30).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && !id.ends_with('-')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `europe-west1` or `europe-west1-b`.
fn valid_location(l: &str) -> bool {
    let parts: Vec<&str> = l.split('-').collect();
    (parts.len() == 2 || parts.len() == 3)
        && parts[0].chars().all(|c| c.is_ascii_lowercase())
        && parts[1]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
        && parts[1].ends_with(|c: char| c.is_ascii_digit())
        && parts[1]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && parts
            .get(2)
            .is_none_or(|z| z.len() == 1 && z.chars().all(|c| c.is_ascii_lowercase()))
}

fn valid_machine_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

pub(super) fn parse(
    raw: RawGke,
    at: &dyn Fn(Location, String) -> SpecError,
) -> Result<GkeSpec, SpecError> {
    if !valid_project(&raw.project.value) {
        return Err(at(
            Location::of(&raw.project),
            format!(
                "gke project {:?}: a project id is 6-30 lowercase letters, digits and '-', starting with a letter",
                raw.project.value
            ),
        ));
    }
    if !valid_location(&raw.location.value) {
        return Err(at(
            Location::of(&raw.location),
            format!(
                "gke location {:?}: expected a zone (europe-west1-b) or a region (europe-west1)",
                raw.location.value
            ),
        ));
    }
    let release_channel = match raw.release_channel {
        None => None,
        Some(c) if c.value == "none" => None,
        Some(c) if ["rapid", "regular", "stable", "extended"].contains(&c.value.as_str()) => {
            Some(c.value)
        }
        Some(c) => {
            return Err(at(
                Location::of(&c),
                format!(
                    "release_channel {:?}: expected rapid, regular, stable, extended or none",
                    c.value
                ),
            ));
        }
    };
    if raw.node_pools.value.is_empty() {
        return Err(at(
            Location::of(&raw.node_pools),
            "gke needs at least one node pool".into(),
        ));
    }
    let mut at_field = std::collections::BTreeMap::new();
    at_field.insert(
        "provider.gke.project".to_string(),
        Location::of(&raw.project),
    );
    at_field.insert(
        "provider.gke.location".to_string(),
        Location::of(&raw.location),
    );
    at_field.insert(
        "provider.gke.node_pools".to_string(),
        Location::of(&raw.node_pools),
    );
    let mut pools: Vec<NodePoolSpec> = Vec::new();
    for (i, p) in raw.node_pools.value.into_iter().enumerate() {
        at_field.insert(
            format!("provider.gke.node_pools[{i}].machine_type"),
            Location::of(&p.machine_type),
        );
        at_field.insert(
            format!("provider.gke.node_pools[{i}].name"),
            Location::of(&p.name),
        );
        if !valid_name(&p.name.value) {
            return Err(at(
                Location::of(&p.name),
                format!(
                    "node pool name {:?}: use 1-40 lowercase letters, digits and '-', starting with a letter",
                    p.name.value
                ),
            ));
        }
        if pools.iter().any(|o| o.name == p.name.value) {
            return Err(at(
                Location::of(&p.name),
                format!("node pool {:?} is listed twice", p.name.value),
            ));
        }
        if !valid_machine_type(&p.machine_type.value) {
            return Err(at(
                Location::of(&p.machine_type),
                format!(
                    "machine_type {:?}: expected a GCE machine type like e2-standard-4",
                    p.machine_type.value
                ),
            ));
        }
        let autoscaling = match p.autoscaling {
            None => None,
            Some(a) if a.value.min > a.value.max => {
                return Err(at(
                    Location::of(&a),
                    format!(
                        "autoscaling min {} is above max {}",
                        a.value.min, a.value.max
                    ),
                ));
            }
            Some(a) if !(a.value.min..=a.value.max).contains(&p.nodes.value) => {
                return Err(at(
                    Location::of(&p.nodes),
                    format!(
                        "nodes {} is outside autoscaling {}..{}",
                        p.nodes.value, a.value.min, a.value.max
                    ),
                ));
            }
            Some(a) => Some((a.value.min, a.value.max)),
        };
        pools.push(NodePoolSpec {
            name: p.name.value,
            machine_type: p.machine_type.value,
            nodes: p.nodes.value,
            autoscaling,
            spot: p.spot,
        });
    }
    Ok(GkeSpec {
        project: raw.project.value,
        location: raw.location.value,
        release_channel,
        node_pools: pools,
        deletion_protection: raw.deletion_protection.as_ref().is_some_and(|d| d.value),
        deletion_protection_at: raw.deletion_protection.as_ref().map(Location::of),
        at: at_field,
    })
}
