//! `cloudflow serve`: Alertmanager (and any caller) posts, cloudflow scales a service or the
//! cluster's nodes by a relative amount, within bounds, once.
//!
//! - `POST /hooks/alertmanager` (webhook payload version 4) and `POST /hooks/scale`; bearer
//!   token compared in constant time (401 otherwise), bodies over the limit 413, malformed
//!   JSON or labels 400 with the reason. Only `firing` alerts act; `resolved` ones are recorded.
//! - The same alert delivered again (fingerprint + startsAt) acts once; a second change to a
//!   target inside the cooldown is refused; sizes are clamped to the bounds and the response
//!   says so. Actions run one at a time, through the same code, lock and state as the CLI.
//! - `GET /healthz`, `GET /metrics` (Prometheus text), `GET /` (a status page for people).
//! - Environments past their TTL are destroyed on a timer. SIGTERM: in-flight actions finish,
//!   then it exits 0.

pub mod payload;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::app::Report;
use crate::cli::Cli;
use crate::error::{Error, Result};
use crate::spec::{AutoscalingSpec, Spec};
use crate::ui::Ui;
use payload::{Intent, Target};

/// Bodies larger than this are refused with 413 (Alertmanager groups are small).
pub const BODY_LIMIT: usize = 256 * 1024;
/// How many alert deliveries are remembered for deduplication.
const SEEN: usize = 10_000;
/// How many recent actions and refusals the status page shows.
const RECENT: usize = 50;

/// One thing the hook did or refused, for the response, the log and the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Record {
    pub at: String,
    pub target: String,
    pub size: String,
    /// `acted`, `clamped`, `unchanged`, `refused`, `duplicate`, `resolved`, `failed`.
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub message: String,
}

#[derive(Default)]
struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    actions: Mutex<BTreeMap<String, u64>>,
    refusals: Mutex<BTreeMap<String, u64>>,
    action_micros: AtomicU64,
    action_count: AtomicU64,
    /// From a request's arrival to its scale command being issued (after auth, decoding,
    /// deduplication, cooldown and waiting for the action before it).
    issue_micros: AtomicU64,
    issue_count: AtomicU64,
}

impl Metrics {
    fn request(&self, path: &str, code: StatusCode) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((path.to_string(), code.as_u16()))
            .or_default() += 1;
    }
    fn refused(&self, reason: &str) {
        *self
            .refusals
            .lock()
            .unwrap()
            .entry(reason.to_string())
            .or_default() += 1;
    }
    fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP cloudflow_hook_requests_total Requests to cloudflow serve, by path and status code.\n");
        out.push_str("# TYPE cloudflow_hook_requests_total counter\n");
        for ((path, code), n) in self.requests.lock().unwrap().iter() {
            out.push_str(&format!(
                "cloudflow_hook_requests_total{{path=\"{path}\",code=\"{code}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP cloudflow_hook_actions_total Scaling actions taken, by kind.\n");
        out.push_str("# TYPE cloudflow_hook_actions_total counter\n");
        for (kind, n) in self.actions.lock().unwrap().iter() {
            out.push_str(&format!(
                "cloudflow_hook_actions_total{{kind=\"{kind}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP cloudflow_hook_refusals_total Requests refused, by reason.\n");
        out.push_str("# TYPE cloudflow_hook_refusals_total counter\n");
        for (reason, n) in self.refusals.lock().unwrap().iter() {
            out.push_str(&format!(
                "cloudflow_hook_refusals_total{{reason=\"{reason}\"}} {n}\n"
            ));
        }
        let count = self.action_count.load(Ordering::Relaxed);
        let secs = self.action_micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str(
            "# HELP cloudflow_hook_action_duration_seconds Time to carry out a scaling action.\n",
        );
        out.push_str("# TYPE cloudflow_hook_action_duration_seconds summary\n");
        out.push_str(&format!(
            "cloudflow_hook_action_duration_seconds_sum {secs}\n"
        ));
        out.push_str(&format!(
            "cloudflow_hook_action_duration_seconds_count {count}\n"
        ));
        let issued = self.issue_count.load(Ordering::Relaxed);
        let issue_secs = self.issue_micros.load(Ordering::Relaxed) as f64 / 1e6;
        out.push_str("# HELP cloudflow_hook_issue_latency_seconds From a request's arrival to its scale command being issued.\n");
        out.push_str("# TYPE cloudflow_hook_issue_latency_seconds summary\n");
        out.push_str(&format!(
            "cloudflow_hook_issue_latency_seconds_sum {issue_secs}\n"
        ));
        out.push_str(&format!(
            "cloudflow_hook_issue_latency_seconds_count {issued}\n"
        ));
        out
    }
}

struct Hook {
    cli: Cli,
    spec: Spec,
    auto: AutoscalingSpec,
    token: SecretString,
    ui: Arc<Ui>,
    /// One action at a time from this process (the state lock guards against others).
    acting: tokio::sync::Mutex<()>,
    seen: Mutex<VecDeque<String>>,
    last: Mutex<HashMap<String, Instant>>,
    recent: Mutex<VecDeque<Record>>,
    metrics: Metrics,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Hook {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let want = self.token.expose_secret().as_bytes();
        // Constant time over the token's bytes (a length mismatch is refused too).
        given.len() == want.len() && bool::from(given.as_bytes().ct_eq(want))
    }

    fn remember(&self, r: Record) -> Record {
        let level_refused = r.result == "refused" || r.result == "failed";
        let line = format!(
            "serve: {} {}: {}{}",
            r.target,
            r.size,
            r.result,
            r.reason
                .as_ref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default()
        );
        if level_refused {
            tracing::warn!("{line}: {}", r.message);
        } else {
            tracing::info!("{line}: {}", r.message);
        }
        self.ui.info(&format!("{line}: {}", r.message));
        let mut recent = self.recent.lock().unwrap();
        recent.push_front(r.clone());
        recent.truncate(RECENT);
        r
    }

    fn refuse(&self, intent: &Intent, reason: &str, message: String) -> Record {
        self.metrics.refused(reason);
        self.remember(Record {
            at: now(),
            target: intent.target.key(),
            size: intent.size.clone(),
            result: "refused".into(),
            reason: Some(reason.into()),
            message,
        })
    }

    /// Whether `key` (an alert delivery) already acted.
    fn duplicate(&self, key: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|k| k == key)
    }

    /// Remember a delivery that acted: a redelivery of it is a duplicate. One that was
    /// refused or failed may act when Alertmanager sends it again.
    fn acted(&self, key: &str) {
        let mut seen = self.seen.lock().unwrap();
        seen.push_back(key.to_string());
        while seen.len() > SEEN {
            seen.pop_front();
        }
    }

    /// Carry out one intent: cooldown, then the action through the CLI's own code.
    async fn act(&self, intent: Intent, delivery: Option<String>, received: Instant) -> Record {
        let _one = self.acting.lock().await;
        let key = intent.target.key();
        if let Some(t) = self.last.lock().unwrap().get(&key)
            && t.elapsed() < self.auto.cooldown
        {
            let left = self.auto.cooldown - t.elapsed();
            return self.refuse(
                &intent,
                "cooldown",
                format!(
                    "{key} changed {}s ago; cooldown {}s ({}s left)",
                    t.elapsed().as_secs(),
                    self.auto.cooldown.as_secs(),
                    left.as_secs()
                ),
            );
        }
        let started = Instant::now();
        self.metrics
            .issue_micros
            .fetch_add(received.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.metrics.issue_count.fetch_add(1, Ordering::Relaxed);
        // Checked and recorded again under the cluster's lock, in the state: another `serve`
        // on the same state may have acted on this alert or this target.
        let guard = crate::app::HookGuard {
            delivery,
            target: key.clone(),
            cooldown: self.auto.cooldown,
        };
        let outcome = match &intent.target {
            Target::Service { env, service } => crate::app::scale_service(
                &self.cli,
                env,
                service,
                &intent.size,
                Some(&guard),
                self.ui.clone(),
            )
            .await
            .map(|r| r.json),
            Target::Nodes { pool } => crate::app::scale_nodes_within(
                &self.cli,
                pool.as_deref(),
                &intent.size,
                (self.auto.nodes_min, self.auto.nodes_max),
                Some(&guard),
                self.ui.clone(),
            )
            .await
            .map(|r| r.json),
        };
        if let Ok(json) = &outcome
            && let Some(reason) = json["refused"].as_str()
        {
            self.metrics.refused(reason);
            return self.remember(Record {
                at: now(),
                target: key,
                size: intent.size.clone(),
                result: if reason == "duplicate" {
                    "duplicate"
                } else {
                    "refused"
                }
                .into(),
                reason: Some(reason.into()),
                message: json["message"].as_str().unwrap_or_default().to_string(),
            });
        }
        let kind = match intent.target {
            Target::Service { .. } => "service",
            Target::Nodes { .. } => "nodes",
        };
        match outcome {
            Ok(json) => {
                let changed = json["changed"].as_bool().unwrap_or(false);
                let note = json["note"].as_str().map(str::to_string);
                // The contract's `clamped` whenever the bounds cut the size (even to no change).
                let result = match (changed, &note) {
                    (_, Some(_)) => "clamped",
                    (false, None) => "unchanged",
                    (true, None) => "acted",
                };
                if changed {
                    self.last
                        .lock()
                        .unwrap()
                        .insert(key.clone(), Instant::now());
                    *self
                        .metrics
                        .actions
                        .lock()
                        .unwrap()
                        .entry(kind.into())
                        .or_default() += 1;
                    self.metrics.action_count.fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .action_micros
                        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
                self.remember(Record {
                    at: now(),
                    target: key,
                    size: intent.size.clone(),
                    result: result.into(),
                    reason: note,
                    message: json["message"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| json.to_string()),
                })
            }
            Err(e) => {
                let reason = if matches!(e, Error::State(crate::state::StateError::Locked { .. })) {
                    "locked"
                } else {
                    "failed"
                };
                self.metrics.refused(reason);
                self.remember(Record {
                    at: now(),
                    target: key,
                    size: intent.size.clone(),
                    result: if reason == "locked" {
                        "refused"
                    } else {
                        "failed"
                    }
                    .into(),
                    reason: Some(reason.into()),
                    message: e.to_string(),
                })
            }
        }
    }
}

/// Run an action in its own task and wait for it: when the caller hangs up (a webhook
/// timeout), the action still finishes instead of being dropped half-way.
async fn spawn_act(
    h: &Arc<Hook>,
    intent: Intent,
    delivery: Option<String>,
    received: Instant,
) -> Record {
    let h2 = h.clone();
    let target = intent.target.key();
    let size = intent.size.clone();
    match tokio::spawn(async move { h2.act(intent, delivery, received).await }).await {
        Ok(r) => r,
        Err(e) => h.remember(Record {
            at: now(),
            target,
            size,
            result: "failed".into(),
            reason: Some("failed".into()),
            message: format!("the action stopped: {e}"),
        }),
    }
}

fn reply(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

/// 401 without the token, 413 over the limit: refused before anything is read.
fn gate(h: &Hook, path: &str, headers: &HeaderMap, body: &Bytes) -> Option<Response> {
    if !h.authorized(headers) {
        h.metrics.refused("unauthorized");
        h.metrics.request(path, StatusCode::UNAUTHORIZED);
        return Some(reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "a bearer token is required (Authorization: Bearer …)"}),
        ));
    }
    if body.len() > BODY_LIMIT {
        h.metrics.refused("too_large");
        h.metrics.request(path, StatusCode::PAYLOAD_TOO_LARGE);
        return Some(reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("body of {} bytes; the limit is {BODY_LIMIT}", body.len())}),
        ));
    }
    None
}

async fn alertmanager(State(h): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> Response {
    let received = Instant::now();
    let path = "/hooks/alertmanager";
    if let Some(r) = gate(&h, path, &headers, &body) {
        return r;
    }
    let w = match payload::webhook(&body) {
        Ok(w) => w,
        Err(e) => {
            h.metrics.refused("malformed");
            h.metrics.request(path, StatusCode::BAD_REQUEST);
            return reply(StatusCode::BAD_REQUEST, json!({"error": e}));
        }
    };
    // Every alert's labels are checked before anything acts: a bad one is a 400 for all.
    let mut intents = Vec::new();
    for a in &w.alerts {
        match payload::alert_intent(&a.labels) {
            Ok(i) => intents.push(i),
            Err(e) => {
                h.metrics.refused("malformed");
                h.metrics.request(path, StatusCode::BAD_REQUEST);
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("alert {}: {e}", a.labels.get("alertname").cloned().unwrap_or_else(|| a.fingerprint.clone()))}),
                );
            }
        }
    }
    let mut results = Vec::new();
    for (a, intent) in w.alerts.iter().zip(intents) {
        let r = if a.status != "firing" {
            h.remember(Record {
                at: now(),
                target: intent.target.key(),
                size: intent.size.clone(),
                result: "resolved".into(),
                reason: None,
                message: "resolved alerts are recorded, not acted on".into(),
            })
        } else if h.duplicate(&a.key()) {
            h.metrics.refused("duplicate");
            h.remember(Record {
                at: now(),
                target: intent.target.key(),
                size: intent.size.clone(),
                result: "duplicate".into(),
                reason: Some("duplicate".into()),
                message: format!("alert {} was handled already", a.key()),
            })
        } else {
            let r = spawn_act(&h, intent, Some(a.key()), received).await;
            if r.result == "acted" || r.result == "clamped" {
                h.acted(&a.key());
            }
            r
        };
        results.push(json!({"fingerprint": a.fingerprint, "record": r}));
    }
    h.metrics.request(path, StatusCode::OK);
    reply(StatusCode::OK, json!({"results": results}))
}

async fn scale(State(h): State<Arc<Hook>>, headers: HeaderMap, body: Bytes) -> Response {
    let received = Instant::now();
    let path = "/hooks/scale";
    if let Some(r) = gate(&h, path, &headers, &body) {
        return r;
    }
    let intent = serde_json::from_slice::<payload::ScaleBody>(&body)
        .map_err(|e| format!("body: {e}"))
        .and_then(|b| payload::scale_intent(&b));
    let intent = match intent {
        Ok(i) => i,
        Err(e) => {
            h.metrics.refused("malformed");
            h.metrics.request(path, StatusCode::BAD_REQUEST);
            return reply(StatusCode::BAD_REQUEST, json!({"error": e}));
        }
    };
    let r = spawn_act(&h, intent, None, received).await;
    h.metrics.request(path, StatusCode::OK);
    reply(StatusCode::OK, json!({"results": [{"record": r}]}))
}

async fn metrics(State(h): State<Arc<Hook>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.metrics.render(),
    )
        .into_response()
}

async fn status_page(State(h): State<Arc<Hook>>) -> Response {
    let state = crate::state::open(h.cli.state.as_deref(), &h.spec.default_state_dir())
        .and_then(|s| s.load(&h.spec.name))
        .ok()
        .flatten();
    let mut ctx = tera::Context::new();
    ctx.insert("cluster", &h.spec.name);
    ctx.insert("provider", h.spec.provider.kind());
    let nodes: Vec<Value> = state
        .as_ref()
        .map(|s| {
            s.machines
                .iter()
                .map(|m| json!({"name": m.name, "role": m.role, "running": m.running}))
                .collect()
        })
        .unwrap_or_default();
    ctx.insert("nodes", &nodes);
    let now = chrono::Utc::now();
    let envs: Vec<Value> = state
        .as_ref()
        .map(crate::deploy::env_list)
        .unwrap_or_default()
        .into_iter()
        .map(|mut e| {
            let left = e["expires"]
                .as_str()
                .and_then(|x| chrono::DateTime::parse_from_rfc3339(x).ok())
                .map(|t| {
                    let secs = (t.with_timezone(&chrono::Utc) - now).num_seconds();
                    if secs <= 0 {
                        "expired".to_string()
                    } else {
                        humantime::format_duration(Duration::from_secs(secs as u64)).to_string()
                    }
                })
                .unwrap_or_else(|| "no TTL".into());
            e["left"] = json!(left);
            e
        })
        .collect();
    ctx.insert("environments", &envs);
    let recent: Vec<Record> = h.recent.lock().unwrap().iter().cloned().collect();
    ctx.insert("recent", &recent);
    ctx.insert("cooldown", &h.auto.cooldown.as_secs());
    match crate::render::Renderer::new(h.spec.templates.as_deref())
        .and_then(|r| r.render("status-page.html", &ctx))
    {
        Ok(html) => Html(html).into_response(),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": e.to_string()}),
        ),
    }
}

/// Destroy environments past their TTL, now and then (skipped while someone holds the lock).
async fn gc_loop(h: Arc<Hook>) {
    let mut every = tokio::time::interval(h.auto.gc_every);
    every.tick().await;
    loop {
        every.tick().await;
        let _one = h.acting.lock().await;
        // Skipped while someone else holds the cluster's lock (the next tick tries again):
        // no waiting here, which would hold back the hook's own actions.
        let mut cli = h.cli.clone();
        cli.lock_timeout = None;
        match crate::app::env_gc(&cli, h.ui.clone()).await {
            Ok(r) if r.json["changed"].as_bool() == Some(true) => {
                h.ui.info(&format!("serve: env gc: {}", r.text.trim()));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("serve: env gc: {e}"),
        }
    }
}

async fn shutdown() {
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

fn router(h: Arc<Hook>) -> Router {
    Router::new()
        .route("/hooks/alertmanager", post(alertmanager))
        .route("/hooks/scale", post(scale))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        // The handlers refuse (and count) bodies over BODY_LIMIT; this is the hard cap.
        .layer(DefaultBodyLimit::max(BODY_LIMIT * 4))
        .with_state(h)
}

pub async fn serve(cli: &Cli, listen: &str, ui: Arc<Ui>) -> Result<Report> {
    let spec = crate::spec::load(&cli.file)?;
    let auto = spec.autoscaling.clone().ok_or_else(|| {
        Error::Usage(format!(
            "{}: serve needs an `autoscaling:` section (webhook.token_env, cooldown, nodes bounds)",
            cli.file.display()
        ))
    })?;
    let token = match std::env::var(&auto.token_env) {
        Ok(t) if !t.is_empty() => SecretString::from(t),
        _ => {
            return Err(Error::Usage(format!(
                "{} (autoscaling.webhook.token_env, {}:{}:{}) is not set: callers must send it as a bearer token",
                auto.token_env,
                cli.file.display(),
                auto.token_env_at.line,
                auto.token_env_at.column
            )));
        }
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Usage(format!("--listen {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Other(format!("--listen {listen}: {e}")))?;
    // Another cloudflow (a second `serve` on a shared state, an operator) may hold the
    // cluster's lock: actions wait for it rather than fail at once.
    let mut cli = cli.clone();
    cli.lock_timeout.get_or_insert(Duration::from_secs(120));
    let hook = Arc::new(Hook {
        cli,
        spec,
        auto,
        token,
        ui: ui.clone(),
        acting: tokio::sync::Mutex::new(()),
        seen: Mutex::new(VecDeque::new()),
        last: Mutex::new(HashMap::new()),
        recent: Mutex::new(VecDeque::new()),
        metrics: Metrics::default(),
    });
    ui.info(&format!(
        "serve: listening on http://{addr} — POST /hooks/alertmanager, POST /hooks/scale; GET /, /metrics, /healthz"
    ));
    let gc = tokio::spawn(gc_loop(hook.clone()));
    axum::serve(listener, router(hook.clone()))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|e| Error::Other(format!("serve: {e}")))?;
    {
        // Not in the middle of an env gc or an action: they finish first.
        let _idle = hook.acting.lock().await;
        gc.abort();
    }
    // In-flight actions finish before the process ends.
    let _ = hook.acting.lock().await;
    let actions: u64 = hook.metrics.actions.lock().unwrap().values().sum();
    Ok(Report {
        json: json!({"cluster": hook.spec.name, "listened": addr.to_string(), "actions": actions}),
        text: format!("serve: stopped after {actions} action(s)\n"),
    })
}
