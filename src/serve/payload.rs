//! What a hook caller sends, decoded without I/O: Alertmanager's webhook payload (version 4)
//! and the small `/hooks/scale` body, each turned into what to scale by how much.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Alertmanager's webhook body (version 4). Fields cloudflow does not use are ignored.
#[derive(Debug, Deserialize)]
pub struct Webhook {
    pub version: String,
    pub status: String,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize)]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(rename = "startsAt", default)]
    pub starts_at: String,
}

impl Alert {
    /// One delivery of one alert: Alertmanager resends the same alert on every group
    /// interval; it must act once.
    pub fn key(&self) -> String {
        format!("{}@{}", self.fingerprint, self.starts_at)
    }
}

/// `/hooks/scale`: `{"service": "web", "env": "default", "scale": "+1"}` or
/// `{"nodes": "+1", "pool": "default"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleBody {
    pub service: Option<String>,
    pub env: Option<String>,
    pub scale: Option<String>,
    pub nodes: Option<String>,
    pub pool: Option<String>,
}

/// What to scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Service { env: String, service: String },
    Nodes { pool: Option<String> },
}

impl Target {
    /// The cooldown key.
    pub fn key(&self) -> String {
        match self {
            Target::Service { env, service } => format!("service {service} in {env}"),
            Target::Nodes { pool: Some(p) } => format!("nodes of pool {p}"),
            Target::Nodes { pool: None } => "nodes".into(),
        }
    }
}

/// What to scale, and by how much (`+1`, `-2`, `5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub target: Target,
    pub size: String,
}

fn size_ok(size: &str, what: &str) -> Result<(), String> {
    crate::size::resolve(size, 0)
        .map(|_| ())
        .ok_or_else(|| format!("{what} {size:?}: expected +N, -N or N"))
}

fn intent(
    service: Option<&str>,
    env: Option<&str>,
    scale: Option<&str>,
    nodes: Option<&str>,
    pool: Option<&str>,
    names: [&str; 5],
) -> Result<Intent, String> {
    let [svc_l, env_l, scale_l, nodes_l, pool_l] = names;
    match (service, nodes) {
        (Some(_), Some(_)) => Err(format!(
            "{svc_l} and {nodes_l} together: scale one thing per request"
        )),
        (Some(service), None) => {
            if !crate::spec::valid_service_name(service) {
                return Err(format!("{svc_l} {service:?} is not a service name"));
            }
            let size = scale.ok_or_else(|| format!("{svc_l} without {scale_l}"))?;
            size_ok(size, scale_l)?;
            let env = env.unwrap_or(crate::deploy::DEFAULT_ENV);
            if !crate::deploy::valid_env_name(env) {
                return Err(format!("{env_l} {env:?} is not an environment name"));
            }
            Ok(Intent {
                target: Target::Service {
                    env: env.to_string(),
                    service: service.to_string(),
                },
                size: size.to_string(),
            })
        }
        (None, Some(size)) => {
            size_ok(size, nodes_l)?;
            Ok(Intent {
                target: Target::Nodes {
                    pool: pool.map(str::to_string),
                },
                size: size.to_string(),
            })
        }
        (None, None) => {
            let _ = pool_l;
            Err(format!("no {svc_l} or {nodes_l}: nothing to scale"))
        }
    }
}

/// What an alert's labels ask for.
pub fn alert_intent(labels: &BTreeMap<String, String>) -> Result<Intent, String> {
    let l = |k: &str| labels.get(k).map(String::as_str);
    intent(
        l("cloudflow_service"),
        l("cloudflow_env"),
        l("cloudflow_scale"),
        l("cloudflow_nodes"),
        l("cloudflow_pool"),
        [
            "label cloudflow_service",
            "label cloudflow_env",
            "label cloudflow_scale",
            "label cloudflow_nodes",
            "label cloudflow_pool",
        ],
    )
}

pub fn scale_intent(b: &ScaleBody) -> Result<Intent, String> {
    intent(
        b.service.as_deref(),
        b.env.as_deref(),
        b.scale.as_deref(),
        b.nodes.as_deref(),
        b.pool.as_deref(),
        ["service", "env", "scale", "nodes", "pool"],
    )
}

/// Decode an Alertmanager body; the error says what is wrong.
pub fn webhook(body: &[u8]) -> Result<Webhook, String> {
    let w: Webhook = serde_json::from_slice(body)
        .map_err(|e| format!("not an Alertmanager webhook body: {e}"))?;
    if let Some(a) = w
        .alerts
        .iter()
        .find(|a| a.fingerprint.is_empty() || a.starts_at.is_empty())
    {
        return Err(format!(
            "alert {}: fingerprint and startsAt are required (they make a delivery act once)",
            a.labels
                .get("alertname")
                .map(String::as_str)
                .unwrap_or("(no alertname)")
        ));
    }
    if w.version != "4" {
        return Err(format!(
            "webhook payload version {:?}: cloudflow reads version 4",
            w.version
        ));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn alert_labels_say_what_to_scale() {
        let i = alert_intent(&labels(&[
            ("cloudflow_service", "web"),
            ("cloudflow_scale", "+1"),
        ]))
        .unwrap();
        assert_eq!(
            i,
            Intent {
                target: Target::Service {
                    env: "default".into(),
                    service: "web".into()
                },
                size: "+1".into()
            }
        );
        let n = alert_intent(&labels(&[
            ("cloudflow_nodes", "-1"),
            ("cloudflow_pool", "batch"),
        ]))
        .unwrap();
        assert_eq!(
            n.target,
            Target::Nodes {
                pool: Some("batch".into())
            }
        );
        for (bad, why) in [
            (
                labels(&[("cloudflow_service", "web")]),
                "without label cloudflow_scale",
            ),
            (
                labels(&[("cloudflow_service", "web"), ("cloudflow_scale", "lots")]),
                "expected +N",
            ),
            (labels(&[("alertname", "X")]), "nothing to scale"),
            (
                labels(&[("cloudflow_service", "Web!"), ("cloudflow_scale", "1")]),
                "not a service name",
            ),
        ] {
            let e = alert_intent(&bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn webhook_version_and_shape_are_checked() {
        assert!(
            webhook(b"{}")
                .unwrap_err()
                .contains("not an Alertmanager webhook body")
        );
        assert!(
            webhook(br#"{"version":"3","status":"firing","alerts":[]}"#)
                .unwrap_err()
                .contains("version")
        );
        let w = webhook(br#"{"version":"4","status":"firing","receiver":"x","alerts":[{"status":"firing","labels":{"a":"b"},"fingerprint":"f1","startsAt":"2026-11-30T00:00:00Z"}]}"#).unwrap();
        assert_eq!(w.alerts[0].key(), "f1@2026-11-30T00:00:00Z");
    }
}
