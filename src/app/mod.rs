//! One small handler per command. Each opens a [`Session`] (spec → state → lock → provider →
//! executor), computes a plan with the pure planner, and runs phases.

mod deploy;
mod down;
mod facts;
mod kubeconfig;
mod lock;
mod nodes;
mod ready;
pub mod sim;
mod status;
mod up;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudflow_provider_api::Provider;
use cloudflow_provider_api::{ProviderError, SecretToken};
use cloudflow_provider_aws::{Aws, AwsConfig, NetworkChoice};
use cloudflow_provider_baremetal::{BareMetal, Host};
use cloudflow_provider_gke::plan::RecordedSize;
use cloudflow_provider_gke::{Credentials as GkeCredentials, Gke, GkeConfig, PoolSpec};
use cloudflow_provider_lab::{DEFAULT_IMAGE, Lab, LabConfig};
use serde_json::json;

use crate::cli::{Cli, Command, OutputFormat};
use crate::commands;
use crate::error::{Error, Result};
use crate::exec::{HostKeyCheck, SshConfig, SshExecutor};
use crate::facts::Init;
use crate::phase::Ctx;
use crate::plan::daemon_json;
use crate::render::Renderer;
use crate::spec::{self, HostKeyPolicy, ProviderSpec, Spec};
use crate::state::{self, ClusterState, StateHandle, StateLock};
use crate::ui::Ui;

pub use deploy::{env_gc, scale_service};
pub use facts::gather_facts;
pub use nodes::scale_nodes_within;

/// What the autoscaling hook asks of an action, checked and recorded under the cluster's lock:
/// several `serve` processes on one state act once per alert and share the cooldown.
#[derive(Debug, Clone)]
pub struct HookGuard {
    /// The alert delivery (fingerprint@startsAt); `None` for `/hooks/scale`.
    pub delivery: Option<String>,
    pub target: String,
    pub cooldown: Duration,
}

impl HookGuard {
    /// A report saying why the action must not run, read from the locked record.
    pub fn refusal(&self, s: &ClusterState) -> Option<Report> {
        if let Some(d) = &self.delivery
            && s.hook.deliveries.iter().any(|x| x == d)
        {
            let message = format!("alert {d} was handled already (the state records it acted)");
            return Some(Report {
                json: json!({"refused": "duplicate", "changed": false, "message": message}),
                text: message + "\n",
            });
        }
        let last = s
            .hook
            .changed
            .get(&self.target)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
        let ago = (chrono::Utc::now() - last.with_timezone(&chrono::Utc))
            .to_std()
            .unwrap_or_default();
        (ago < self.cooldown).then(|| {
            let message = format!(
                "{} changed {}s ago (recorded in the state); cooldown {}s ({}s left)",
                self.target,
                ago.as_secs(),
                self.cooldown.as_secs(),
                (self.cooldown - ago).as_secs()
            );
            Report {
                json: json!({"refused": "cooldown", "changed": false, "message": message}),
                text: message + "\n",
            }
        })
    }

    /// Record that the action ran (`changed`: it changed something).
    pub fn record(&self, state: &StateHandle, changed: bool) -> Result<()> {
        state.update(|s| {
            if let Some(d) = &self.delivery {
                s.hook.deliveries.push(d.clone());
                let over = s
                    .hook
                    .deliveries
                    .len()
                    .saturating_sub(state::HookRecord::DELIVERIES);
                s.hook.deliveries.drain(..over);
            }
            if changed {
                s.hook.changed.insert(
                    self.target.clone(),
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
            }
        })?;
        Ok(())
    }
}

/// What a command hands back: a JSON document and its text rendering.
pub struct Report {
    pub json: serde_json::Value,
    pub text: String,
}

pub async fn run(cli: Cli) -> Result<Report> {
    run_command(&cli).await.map_err(|e| at_spec_line(&cli, e))
}

/// A provider's refusal of a spec value (an unknown project, machine type) points at the
/// line that wrote it, like any other spec error.
fn at_spec_line(cli: &Cli, e: Error) -> Error {
    use cloudflow_provider_api::ProviderError;
    let Error::Provider(ProviderError::Spec { field, message }) = &e else {
        return e;
    };
    let Ok(spec) = spec::load(&cli.file) else {
        return e;
    };
    let ProviderSpec::Gke(g) = &spec.provider else {
        return e;
    };
    let Some(loc) = g.at.get(field) else {
        return e;
    };
    let source = std::fs::read_to_string(&cli.file).unwrap_or_default();
    Error::Spec(Box::new(spec::SpecError::at(
        &cli.file.display().to_string(),
        &source,
        *loc,
        format!("{field}: {message}"),
    )))
}

async fn run_command(cli: &Cli) -> Result<Report> {
    let ui = Arc::new(Ui::new(false));
    match &cli.command {
        Command::Init(a) => init(cli, a),
        Command::Completions(a) => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(a.shell, &mut Cli::command(), "cloudflow", &mut out);
            let text = String::from_utf8_lossy(&out).to_string();
            Ok(Report {
                json: json!({"shell": a.shell.to_string(), "script": text}),
                text,
            })
        }
        Command::Schema => {
            let schema = spec::json_schema();
            Ok(Report {
                text: serde_json::to_string_pretty(&schema).expect("json") + "\n",
                json: schema,
            })
        }
        Command::Man => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|e| Error::Other(format!("cannot render the man page: {e}")))?;
            let text = String::from_utf8_lossy(&out).to_string();
            Ok(Report {
                json: json!({"man": text}),
                text,
            })
        }
        Command::Validate => validate(cli),
        Command::Plan(a) => up::plan(cli, a.until, a.timeout, ui).await,
        Command::Up(a) => {
            let mut r = up::up(cli, a.yes, a.until, a.timeout, ui).await?;
            if a.timings {
                up::add_timings(&mut r);
            } else if let Some(o) = r.json.as_object_mut() {
                o.remove("timings");
            }
            Ok(r)
        }
        Command::Status => status::status(cli, ui).await,
        Command::Down(a) => down::down(cli, a.yes, ui).await,
        Command::Nodes(crate::cli::NodesCommand::Scale(a)) => nodes::scale(cli, a, ui).await,
        Command::Kubeconfig(a) => kubeconfig::kubeconfig(cli, a.show_token, ui).await,
        Command::Serve(a) => crate::serve::serve(cli, &a.listen, ui).await,
        Command::Lock(c) => lock::lock(cli, c, ui).await,
        Command::Logs(a) => deploy::logs(cli, a, ui).await,
        Command::Ps(a) => deploy::ps(cli, a, ui).await,
        Command::Certs(a) => deploy::certs(cli, a.action.is_some(), ui).await,
        Command::State(c) => lock::state(cli, c, ui).await,
        Command::Deploy(_)
        | Command::Switch(_)
        | Command::StopOld(_)
        | Command::Rollback(_)
        | Command::Scale(_)
        | Command::Env(_) => deploy::run(cli, ui).await,
    }
}

/// `init`: a commented starter spec, written only where no file is.
fn init(cli: &Cli, a: &crate::cli::InitArgs) -> Result<Report> {
    use crate::cli::ProviderKind;
    if !spec::valid_name(&a.name) {
        return Err(Error::Usage(format!(
            "--name {:?}: use 1-40 lowercase letters, digits and '-', starting and ending with a letter or digit",
            a.name
        )));
    }
    let (kind, template) = match a.provider {
        ProviderKind::Lab => ("lab", include_str!("../../templates/init/lab.yaml")),
        ProviderKind::BareMetal => (
            "bare-metal",
            include_str!("../../templates/init/bare-metal.yaml"),
        ),
        ProviderKind::Aws => ("aws", include_str!("../../templates/init/aws.yaml")),
        ProviderKind::Gke => ("gke", include_str!("../../templates/init/gke.yaml")),
    };
    let text = template.replace("{{ name }}", &a.name);
    let path = &cli.file;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Usage(format!(
                "{} exists; init never overwrites a spec (remove it, or pass -f NEW.yaml)",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Error::Other(format!(
                "cannot create {}: {e}",
                path.display()
            )));
        }
    };
    use std::io::Write;
    file.write_all(text.as_bytes())
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", path.display())))?;
    Ok(Report {
        json: json!({"file": path.display().to_string(), "provider": kind, "cluster": a.name}),
        text: format!(
            "wrote {} (provider {kind}, cluster {}): edit it, then `cloudflow -f {} validate` and `plan`\n",
            path.display(),
            a.name,
            path.display()
        ),
    })
}

fn validate(cli: &Cli) -> Result<Report> {
    let spec = spec::load(&cli.file)?;
    let hosts = match &spec.provider {
        ProviderSpec::Lab(l) => l.hosts as usize,
        ProviderSpec::BareMetal(b) => b.hosts.len(),
        ProviderSpec::Aws(a) => (a.managers + a.workers) as usize,
        ProviderSpec::Gke(g) => g.node_pools.iter().map(|p| p.nodes as usize).sum(),
        ProviderSpec::Existing => 0,
    };
    let mut warnings = Vec::new();
    if let Some(auth) = &spec.registry.auth
        && std::env::var(&auth.password_env)
            .map(|v| v.is_empty())
            .unwrap_or(true)
    {
        warnings.push(format!(
            "{} (registry.auth.password_env) is not set here; `up` will need it",
            auth.password_env
        ));
    }
    Renderer::new(spec.templates.as_deref())?;
    let mut text = format!(
        "{}: ok — cluster {}, provider {}, {hosts} {}, orchestrator {}, {} service(s)\n",
        cli.file.display(),
        spec.name,
        spec.provider.kind(),
        if matches!(spec.provider, ProviderSpec::Gke(_)) {
            "node(s)"
        } else {
            "host(s)"
        },
        match spec.orchestrator {
            spec::Orchestrator::Swarm => "swarm",
            spec::Orchestrator::Kubernetes => "kubernetes",
        },
        spec.services.len()
    );
    for w in &warnings {
        text.push_str(&format!("warning: {w}\n"));
    }
    Ok(Report {
        json: json!({"valid": true, "cluster": spec.name, "provider": spec.provider.kind(), "hosts": hosts,
               "services": spec.services.keys().collect::<Vec<_>>(), "warnings": warnings}),
        text,
    })
}

/// No provider: an existing Kubernetes cluster (`kubernetes.kubeconfig`). Nothing to make,
/// nothing to destroy; the orchestrator reaches the cluster through the kubeconfig.
struct ExistingCluster;

#[async_trait::async_trait]
impl Provider for ExistingCluster {
    fn kind(&self) -> &'static str {
        "existing"
    }
    fn owns_machines(&self) -> bool {
        false
    }
    async fn list(
        &self,
    ) -> std::result::Result<Vec<cloudflow_provider_api::Machine>, ProviderError> {
        Ok(Vec::new())
    }
    fn plan(
        &self,
        _: &[cloudflow_provider_api::Machine],
    ) -> Vec<cloudflow_provider_api::ProviderAction> {
        Vec::new()
    }
    async fn create(
        &self,
        _: &dyn cloudflow_provider_api::Journal,
        _: &dyn cloudflow_provider_api::Progress,
    ) -> std::result::Result<Vec<cloudflow_provider_api::Machine>, ProviderError> {
        Ok(Vec::new())
    }
    async fn destroy(
        &self,
        _: &dyn cloudflow_provider_api::Journal,
        _: &dyn cloudflow_provider_api::Progress,
    ) -> std::result::Result<cloudflow_provider_api::DestroyReport, ProviderError> {
        Ok(Default::default())
    }
}

/// An open cluster: spec, state (locked), provider and executor.
pub struct Session {
    pub ctx: Ctx,
    /// Whether the store already had a record for this cluster.
    pub known: bool,
    _lock: Option<StateLock>,
}

impl Session {
    /// Whether this command holds the cluster's lock (and so may write the state).
    pub fn holds_lock(&self) -> bool {
        self._lock.is_some()
    }
}

/// Move host records to their machines' current names (a write only when one moved).
fn adopt_renamed_hosts(ctx: &Ctx, machines: &[cloudflow_provider_api::Machine]) -> Result<()> {
    if ctx.state.snapshot().adopt_renamed_hosts(machines) {
        ctx.state.update(|s| {
            s.adopt_renamed_hosts(machines);
        })?;
    }
    Ok(())
}

/// Where the embedded state (and the lab's SSH key) lives.
fn state_dir(cli: &Cli, spec: &Spec) -> PathBuf {
    match cli.state.as_deref() {
        Some(u) if !u.contains("://") || u.starts_with("file://") => {
            PathBuf::from(u.trim_start_matches("file://"))
        }
        _ => spec.default_state_dir(),
    }
}

/// The store `--state` names (the embedded one beside the spec by default).
pub fn open_store(cli: &Cli, spec: &Spec) -> Result<Arc<dyn state::StateStore>> {
    Ok(state::open(
        cli.state.as_deref(),
        &spec.default_state_dir(),
    )?)
}

/// Take the cluster's lock as this command, waiting up to `--lock-timeout` (and saying for
/// whom) when another holds it.
pub async fn take_lock(
    cli: &Cli,
    store: &Arc<dyn state::StateStore>,
    cluster: &str,
    ui: &Arc<Ui>,
) -> Result<StateLock> {
    let holder = state::Holder::current(cli.command.name());
    let (store, cluster, ui, wait) = (
        store.clone(),
        cluster.to_string(),
        ui.clone(),
        cli.lock_timeout,
    );
    tokio::task::spawn_blocking(move || {
        store.lock(&cluster, &holder, wait, &|info| {
            ui.info(&format!(
                "cluster {cluster} is locked by {info}; waiting up to {} for it",
                humantime::format_duration(wait.unwrap_or_default())
            ))
        })
    })
    .await
    .map_err(|e| Error::Other(format!("the lock task failed: {e}")))?
    .map_err(Error::from)
}

/// `lock`: take the cluster's lock (everything that may change something).
/// `record_host_keys`: accept-new records first-seen keys (not for `plan`/`status`).
pub async fn open(cli: &Cli, ui: Arc<Ui>, lock: bool, record_host_keys: bool) -> Result<Session> {
    let spec = spec::load(&cli.file)?;
    let renderer = Renderer::new(spec.templates.as_deref())?;
    let store = open_store(cli, &spec)?;
    let lock = if lock {
        Some(take_lock(cli, &store, &spec.name, &ui).await?)
    } else {
        None
    };
    let existing = state::load(store.as_ref(), &spec.name)?;
    let known = existing.is_some();
    let (record, stored) = existing.unwrap_or_else(|| {
        (
            ClusterState::new(&spec.name, spec.provider.kind()),
            state::Stored {
                flat: Default::default(),
                rev: 0,
            },
        )
    });
    if record.provider != spec.provider.kind() {
        return Err(Error::Usage(format!(
            "cluster {} was made with the {} provider and the spec now says {}: run `down` with the old spec first",
            spec.name,
            record.provider,
            spec.provider.kind()
        )));
    }
    let live_workers = record.workers;
    let live_pools = record.pools.clone();
    let state = StateHandle::at(store, record, stored);
    let dir = state_dir(cli, &spec);

    let (provider, key, policy, user_known_hosts): (
        Arc<dyn Provider>,
        PathBuf,
        HostKeyPolicy,
        Option<PathBuf>,
    ) = match &spec.provider {
        ProviderSpec::Lab(l) => {
            let key = dir.join(format!("{}.lab-key", spec.name));
            let public = lab_key(&key)?;
            let cfg = LabConfig {
                cluster: spec.name.clone(),
                // A worker count `nodes scale` set is kept, as on AWS.
                hosts: live_workers.map(|w| l.managers + w).unwrap_or(l.hosts),
                managers: l.managers,
                image: l.image.clone().unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
                authorized_key: public,
            };
            (
                Arc::new(Lab::connect(cfg).await?),
                key,
                HostKeyPolicy::AcceptNew,
                None,
            )
        }
        ProviderSpec::Aws(a) => {
            let cfg = aws_config(&spec, a, &renderer, live_workers)?;
            (
                Arc::new(Aws::connect(cfg).await?),
                a.ssh_key.clone(),
                HostKeyPolicy::AcceptNew,
                None,
            )
        }
        ProviderSpec::Existing => (
            Arc::new(ExistingCluster),
            PathBuf::new(),
            HostKeyPolicy::Strict,
            None,
        ),
        ProviderSpec::Gke(g) => {
            let cfg = gke_config(&spec, g, live_pools)?;
            // No SSH machines: the executor is never used, and needs no key.
            (
                Arc::new(Gke::connect(cfg).await?),
                PathBuf::new(),
                HostKeyPolicy::Strict,
                None,
            )
        }
        ProviderSpec::BareMetal(b) => {
            let hosts = b
                .hosts
                .iter()
                .map(|h| Host {
                    address: h.address.clone(),
                    port: h.port,
                    role: h.role,
                })
                .collect();
            let home = std::env::var_os("HOME").map(PathBuf::from);
            (
                Arc::new(BareMetal {
                    user: b.user.clone(),
                    hosts,
                }),
                b.ssh_key.clone(),
                b.host_key_policy,
                home.map(|h| h.join(".ssh/known_hosts")),
            )
        }
    };
    let exec = SshExecutor::new(SshConfig {
        key,
        hostkeys: HostKeyCheck {
            policy,
            state: state.clone(),
            user_known_hosts,
            record_new: record_host_keys,
        },
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(20 * 60),
    });
    let spec_name = spec.name.clone();
    let timings = crate::exec::Timings::default();
    let ctx = Ctx {
        spec,
        state,
        provider,
        exec: Arc::new(crate::exec::Timed {
            inner: Arc::new(exec),
            timings: timings.clone(),
        }),
        timings,
        ui,
        renderer,
        password: None,
        concurrency: 16,
        machines: Mutex::new(Vec::new()),
        facts: Mutex::new(BTreeMap::new()),
        k3s_kubeconfig: dir.join(format!("{}.k3s.kubeconfig", spec_name)),
    };
    Ok(Session {
        ctx,
        known,
        _lock: lock,
    })
}

/// The GKE provider's view of the spec, the state's pool sizes and the environment:
/// `CLOUDFLOW_GKE_ENDPOINT` replaces the API's base URL; `CLOUDFLOW_GKE_TOKEN` is a bearer
/// token; otherwise application default credentials — anonymous only against an overridden
/// endpoint when no credentials are configured at all.
fn gke_config(
    spec: &Spec,
    g: &spec::GkeSpec,
    live_pools: BTreeMap<String, state::PoolSize>,
) -> Result<GkeConfig> {
    let endpoint = std::env::var("CLOUDFLOW_GKE_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    if let Some(e) = &endpoint
        && url::Url::parse(e).is_err()
    {
        return Err(Error::Usage(format!(
            "CLOUDFLOW_GKE_ENDPOINT {e:?} is not a URL (expected e.g. http://127.0.0.1:8080)"
        )));
    }
    let token = std::env::var("CLOUDFLOW_GKE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let adc_configured = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some()
        || std::env::var_os("HOME").is_some_and(|h| {
            Path::new(&h)
                .join(".config/gcloud/application_default_credentials.json")
                .exists()
        });
    let credentials = match (token, &endpoint) {
        (Some(t), _) => GkeCredentials::Token(SecretToken::new(t)),
        (None, Some(_)) if !adc_configured => GkeCredentials::Anonymous,
        (None, _) => GkeCredentials::ApplicationDefault,
    };
    Ok(GkeConfig {
        cluster: spec.name.clone(),
        project: g.project.clone(),
        location: g.location.clone(),
        release_channel: g.release_channel.clone(),
        pools: g
            .node_pools
            .iter()
            .map(|p| PoolSpec {
                name: p.name.clone(),
                machine_type: p.machine_type.clone(),
                nodes: p.nodes,
                autoscaling: p.autoscaling,
                spot: p.spot,
            })
            .collect(),
        mirrors: spec.registry.mirrors.clone(),
        insecure: spec.registry.insecure.clone(),
        recorded: live_pools
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    RecordedSize {
                        declared: v.declared,
                        live: v.live,
                    },
                )
            })
            .collect(),
        endpoint,
        credentials,
        operation_timeout: Duration::from_secs(45 * 60),
    })
}

/// The AWS provider's view of the spec: user-data rendered here (templates are the core's).
fn aws_config(
    spec: &Spec,
    a: &spec::AwsSpec,
    renderer: &Renderer,
    live_workers: Option<u32>,
) -> Result<AwsConfig> {
    let mut files = commands::proxy_files(renderer, &spec.proxy, Init::Systemd)?;
    let merged = daemon_json::merge(None, &spec.registry.insecure, &spec.registry.mirrors)
        .map_err(|e| Error::Other(format!("registry settings: {e}")))?;
    if let Some(m) = merged {
        files.push(commands::HostFile {
            path: commands::DAEMON_JSON.to_string(),
            content: m.content,
            mode: commands::PUBLIC,
        });
    }
    let network = match a.vpc.as_str() {
        "auto" => NetworkChoice::Auto,
        v if v.starts_with("vpc-") => NetworkChoice::Vpc(v.to_string()),
        v => NetworkChoice::Subnet(v.to_string()),
    };
    Ok(AwsConfig {
        cluster: spec.name.clone(),
        region: a.region.clone(),
        instance_type: a.instance_type.clone(),
        image: a.image.clone(),
        managers: a.managers,
        workers: live_workers.unwrap_or(a.workers),
        // Only creating the key pair needs it: `down`, `status` and `plan` work without the
        // key file (the error waits for the one call that needs the key).
        public_key: public_key_of(&a.ssh_key).map_err(|e| e.to_string()),
        network,
        allowed_cidrs: a.allowed_cidrs.clone(),
        proxy_port: spec.proxy.port.unwrap_or(80),
        user_data: commands::cloud_init(renderer, &spec.name, &files)?,
        ssh_user: a.user.clone(),
        ssh_private: a.address == spec::AddressChoice::Private,
        wait: Duration::from_secs(600),
    })
}

/// The public half of an SSH key: `KEY.pub` when present, else derived from the private key.
fn public_key_of(key: &Path) -> Result<String> {
    let pubfile = PathBuf::from(format!("{}.pub", key.display()));
    if let Ok(text) = std::fs::read_to_string(&pubfile) {
        return Ok(text.trim().to_string());
    }
    let private = ssh_key::PrivateKey::read_openssh_file(key).map_err(|e| {
        Error::Other(format!(
            "ssh_key {}: {e} (the provider imports its public half)",
            key.display()
        ))
    })?;
    private
        .public_key()
        .to_openssh()
        .map_err(|e| Error::Other(format!("ssh_key {}: {e}", key.display())))
}

/// The lab's SSH key pair: made once per cluster, kept beside the state (mode 0600).
fn lab_key(path: &Path) -> Result<String> {
    use ssh_key::{Algorithm, LineEnding, PrivateKey, rand_core::OsRng};
    let err = |m: String| Error::Other(format!("lab SSH key {}: {m}", path.display()));
    if path.is_file() {
        let key = PrivateKey::read_openssh_file(path).map_err(|e| err(e.to_string()))?;
        return key
            .public_key()
            .to_openssh()
            .map_err(|e| err(e.to_string()));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(|e| err(e.to_string()))?;
    key.write_openssh_file(path, LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    key.public_key()
        .to_openssh()
        .map_err(|e| err(e.to_string()))
}

/// Ask before acting; refuse (exit 2) when there is no terminal to ask on.
pub fn confirm(yes: bool, question: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(
            "refusing to change anything without --yes: there is no terminal to ask on (pass --yes or set CLOUDFLOW_YES=true)".into(),
        ));
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Error::Other(e.to_string()))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::Other("aborted: nothing was changed".into()))
    }
}

/// Print a report the way `-o` asks.
pub fn print(format: OutputFormat, report: &Report) {
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report.json).expect("JSON value")
        ),
        OutputFormat::Text => print!("{}", report.text),
    }
}
