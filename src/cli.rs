//! Command-line definitions (clap). No business logic here: see `app`.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plan::PhaseName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "cloudflow",
    version = env!("CLOUDFLOW_VERSION"),
    about = "Stand up a Docker Swarm on machines from a provider (lab containers or bare metal), from one spec file",
    long_about = "cloudflow reads one spec file, plans what would change (per phase and host), applies it \
                  idempotently over SSH, records what it did, and takes it all back with `down`.\n\n\
                  Phases, in order: provision (machines exist), bootstrap (Docker, registry, proxy settings), \
                  cluster (the swarm), proxy (the reverse proxy), deploy (the spec's services).\n\n\
                  Then `deploy`, `switch`, `stop-old`, `rollback` and `scale` run blue-green deployments behind the proxy, \
                  and `env` makes ephemeral environments.",
    after_help = "Examples:\n  \
                  cloudflow -f examples/lab.yaml up --yes       # a 3-host lab swarm on the local Docker engine\n  \
                  cloudflow -f cluster.yaml plan                # what would change; touches nothing\n  \
                  cloudflow -f cluster.yaml status -o json      # nodes as JSON\n  \
                  cloudflow -f cluster.yaml deploy web --image reg:5000/web:2   # blue-green behind the proxy\n  \
                  cloudflow -f cluster.yaml scale web +2        # relative scaling\n  \
                  cloudflow -f cluster.yaml down --yes          # undo everything cloudflow did\n\n\
                  Every flag can also come from the environment: CLOUDFLOW_FILE, CLOUDFLOW_STATE, CLOUDFLOW_OUTPUT, \
                  CLOUDFLOW_VERBOSE, CLOUDFLOW_YES, CLOUDFLOW_UNTIL, CLOUDFLOW_IMAGE, CLOUDFLOW_TTL, ... (each command's --help \
                  names its variables); booleans take 1/0, true/false, yes/no.\n\
                  Exit codes: 0 done (also when there was nothing to do), 1 runtime failure, 2 bad usage or bad spec."
)]
pub struct Cli {
    /// The spec file.
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        env = "CLOUDFLOW_FILE",
        default_value = "cloudflow.yaml"
    )]
    pub file: PathBuf,

    /// Where state lives: a directory, file://DIR (default: .cloudflow/ beside the spec), or
    /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX shared by every machine that runs cloudflow
    /// (TLS and credentials: ?ca=FILE&cert=FILE&key=FILE&user=NAME, or CLOUDFLOW_ETCD_CA,
    /// CLOUDFLOW_ETCD_CERT, CLOUDFLOW_ETCD_KEY, CLOUDFLOW_ETCD_USER, CLOUDFLOW_ETCD_PASSWORD).
    #[arg(
        long = "state",
        global = true,
        env = "CLOUDFLOW_STATE",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub state: Option<String>,

    /// When another cloudflow holds the cluster's lock, wait up to this long for it (e.g. 5m)
    /// instead of failing at once.
    #[arg(
        long = "lock-timeout",
        global = true,
        env = "CLOUDFLOW_LOCK_TIMEOUT",
        value_name = "DURATION",
        value_parser = humantime::parse_duration
    )]
    pub lock_timeout: Option<std::time::Duration>,

    /// Output format. With json, stdout holds exactly one JSON document; progress goes to stderr.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        env = "CLOUDFLOW_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: OutputFormat,

    /// Show every remote command (redacted) as it runs.
    #[arg(
        short = 'v',
        long = "verbose",
        global = true,
        env = "CLOUDFLOW_VERBOSE",
        value_parser = BoolishValueParser::new()
    )]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Write a commented starter spec for a provider to -f (default cloudflow.yaml); `validate` accepts it as is. Never overwrites.
    #[command(
        after_help = "Examples:\n  cloudflow init                         # lab: containers on this machine's Docker engine\n  \
                      cloudflow init --provider bare-metal --name prod -f prod.yaml\n  \
                      cloudflow init --provider gke && $EDITOR cloudflow.yaml && cloudflow validate"
    )]
    Init(InitArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  cloudflow completions bash > /etc/bash_completion.d/cloudflow\n  \
                      cloudflow completions zsh > \"${fpath[1]}/_cloudflow\"\n  \
                      cloudflow completions fish > ~/.config/fish/completions/cloudflow.fish"
    )]
    Completions(CompletionsArgs),

    /// Print the JSON Schema of the spec file (derived from the parser's own types): editors complete and check cloudflow.yaml with it.
    #[command(
        after_help = "Examples:\n  cloudflow schema > cloudflow.schema.json\n  \
                      # then, first line of cloudflow.yaml (yaml-language-server, e.g. VS Code's YAML extension):\n  \
                      # yaml-language-server: $schema=./cloudflow.schema.json"
    )]
    Schema,

    /// Print the man page (roff), generated from these definitions.
    #[command(
        after_help = "Example:\n  cloudflow man > /usr/local/share/man/man1/cloudflow.1 && man cloudflow"
    )]
    Man,

    /// Check the spec: YAML, types, unknown keys, required values. Touches nothing.
    #[command(
        after_help = "Example:\n  cloudflow -f cluster.yaml validate\n  cloudflow -f cluster.yaml validate -o json"
    )]
    Validate,

    /// Show what `up` would change, per phase and host. Reads the hosts' facts over SSH; changes nothing.
    #[command(
        after_help = "Examples:\n  cloudflow -f cluster.yaml plan\n  cloudflow -f cluster.yaml plan --until provision -o json"
    )]
    Plan(PlanArgs),

    /// Provision machines, install and configure Docker, form the swarm. Idempotent: a second run changes nothing.
    #[command(
        after_help = "Examples:\n  cloudflow -f examples/lab.yaml up --yes\n  \
                            cloudflow -f cluster.yaml up --yes --until provision   # machines only, no SSH\n  \
                            CLOUDFLOW_YES=true cloudflow -f cluster.yaml up -o json"
    )]
    Up(UpArgs),

    /// The cluster's nodes: name, address, role, status.
    #[command(
        after_help = "Examples:\n  cloudflow -f cluster.yaml status\n  cloudflow -f cluster.yaml status -o json | jq '.nodes[] | select(.status != \"ready\")'"
    )]
    Status,

    /// A kubeconfig for kubectl to reach the cluster's Kubernetes API. GKE: tokens come from gke-gcloud-auth-plugin (--show-token writes the token cloudflow uses instead). k3s: where the fetched kubeconfig is (--show-token prints it).
    #[command(
        after_help = "Examples:\n  cloudflow -f prod.yaml kubeconfig > prod.kubeconfig && KUBECONFIG=prod.kubeconfig kubectl get nodes\n  \
                            CLOUDFLOW_GKE_TOKEN=$(gcloud auth print-access-token) cloudflow -f prod.yaml kubeconfig --show-token > ci.kubeconfig\n  \
                            cloudflow -f prod.yaml kubeconfig -o json"
    )]
    Kubeconfig(KubeconfigArgs),

    /// Serve the autoscaling hooks: Alertmanager alerts (and POST /hooks/scale) scale services and nodes, within bounds, once per alert, outside the cooldown; plus /metrics, /healthz and a status page at /.
    #[command(after_help = "Examples:\n  \
                      CLOUDFLOW_HOOK_TOKEN=s3cret cloudflow -f prod.yaml serve --listen 0.0.0.0:9099\n  \
                      curl -H 'Authorization: Bearer s3cret' -d '{\"service\":\"web\",\"scale\":\"+1\"}' http://127.0.0.1:9099/hooks/scale\n\n\
                      Alert labels: cloudflow_service + cloudflow_env (default `default`) + cloudflow_scale (+1, -2, 5), or \
                      cloudflow_nodes (+1/-1/N) with cloudflow_pool on GKE. The spec's `autoscaling:` names the token's \
                      environment variable, the cooldown and the node bounds. SIGTERM lets in-flight actions finish.")]
    Serve(ServeArgs),

    /// Machines of the cluster.
    #[command(
        subcommand,
        after_help = "Examples:\n  cloudflow -f cluster.yaml nodes scale +2\n  cloudflow -f prod.yaml nodes scale +2 --pool default   # GKE"
    )]
    Nodes(NodesCommand),

    /// Blue-green deploy of a service from the spec: start the other colour, gate on health (every replica), switch the proxy, keep the old colour.
    #[command(after_help = "Examples:\n  \
                      cloudflow deploy web --image reg:5000/web:2              # gate, switch, keep the old colour\n  \
                      cloudflow deploy web --image reg:5000/web:3 --no-switch  # only at the preview host\n  \
                      cloudflow deploy web --image reg:5000/web:3 --scale +2\n  \
                      cloudflow deploy web --image reg:5000/web:3 --env pr-7   # web-pr-7.<domain>\n\n\
                      The image that is already live changes nothing (--force redeploys). A failed health gate \
                      leaves traffic where it was and names the replica that failed.")]
    Deploy(DeployArgs),

    /// Send traffic to the colour waiting at the preview host (its replicas are health-gated again first).
    #[command(
        after_help = "Example:\n  cloudflow -f cluster.yaml deploy web --image reg:5000/web:3 --no-switch\n  cloudflow -f cluster.yaml switch web"
    )]
    Switch(ServiceArgs),

    /// Scale the old colour to 0 replicas; it is kept, so `rollback` can bring it back. The preview host then answers 503.
    #[command(
        name = "stop-old",
        after_help = "Example:\n  cloudflow -f cluster.yaml stop-old web\n  cloudflow -f cluster.yaml stop-old web --env pr-7"
    )]
    StopOld(ServiceArgs),

    /// Bring the previous colour back (at the live replica count), gate it on health, and switch traffic to it. Works after stop-old too.
    #[command(after_help = "Example:\n  cloudflow -f cluster.yaml rollback web")]
    Rollback(ServiceArgs),

    /// Scale a service's live colour: absolute (5) or relative to the replicas it runs now (+2, -1), within min/max_replicas.
    #[command(
        after_help = "Examples:\n  cloudflow -f cluster.yaml scale web +2\n  cloudflow -f cluster.yaml scale web -1\n  cloudflow -f cluster.yaml scale web 5 --env pr-7"
    )]
    Scale(ServiceScaleArgs),

    /// Ephemeral environments: an overlay network plus its services, served at <service>-<env>.<domain>.
    #[command(
        subcommand,
        after_help = "Examples:\n  cloudflow -f cluster.yaml env create pr-7 --ttl 1h\n  cloudflow -f cluster.yaml deploy web --image reg:5000/web:pr-7 --env pr-7\n  \
                      cloudflow -f cluster.yaml env list -o json\n  cloudflow -f cluster.yaml env destroy pr-7\n  cloudflow -f cluster.yaml env gc"
    )]
    Env(EnvCommand),

    /// The cluster's lock: who holds it, and taking it back from a holder that died.
    #[command(
        subcommand,
        after_help = "Examples:\n  cloudflow --state etcd://etcd-1:2379/cloudflow -f prod.yaml lock status\n  \
                      cloudflow --state etcd://etcd-1:2379/cloudflow -f prod.yaml lock release --force"
    )]
    Lock(LockCommand),

    /// The cluster's recorded state as one JSON document: move it between backends.
    #[command(
        subcommand,
        after_help = "Examples:\n  cloudflow --state etcd://etcd-1:2379/cloudflow -f prod.yaml state export > prod.json\n  \
                      cloudflow -f prod.yaml state import < prod.json        # into the embedded store beside the spec"
    )]
    State(StateCommand),

    /// A service's logs from every replica (each line names its replica and node); --follow streams until Ctrl-C.
    #[command(
        after_help = "Examples:\n  cloudflow logs web\n  cloudflow logs web --follow --since 10m\n  \
                      cloudflow logs web --env pr-7 --color green   # the colour at the preview host"
    )]
    Logs(LogsArgs),

    /// The proxy's TLS certificates (proxy.https): hosts, expiry, days left; `certs renew` orders (or installs) every one again.
    #[command(
        after_help = "Examples:\n  cloudflow certs\n  cloudflow certs -o json | jq '.certificates[] | select(.days_left < 30)'\n  cloudflow certs renew"
    )]
    Certs(CertsArgs),

    /// A service's replicas: colour, node, state, address and last error.
    #[command(after_help = "Examples:\n  cloudflow ps web\n  cloudflow ps web --env pr-7 -o json")]
    Ps(PsArgs),

    /// Undo everything cloudflow did: lab and cloud machines are destroyed; bare-metal hosts leave the swarm and get their settings back (Docker stays installed).
    #[command(
        after_help = "Examples:\n  cloudflow -f cluster.yaml down          # shows the plan and asks\n  cloudflow -f cluster.yaml down --yes"
    )]
    Down(DownArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    Lab,
    BareMetal,
    Aws,
    Gke,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// The service (as named in the spec).
    pub service: String,
    /// The environment.
    #[arg(long, env = "CLOUDFLOW_ENV", default_value = "default")]
    pub env: String,
    /// Keep streaming new lines until interrupted.
    #[arg(long, env = "CLOUDFLOW_FOLLOW", value_parser = BoolishValueParser::new())]
    pub follow: bool,
    /// Only lines newer than this: a duration (10m, 1h) or, on Swarm, a timestamp.
    #[arg(long, env = "CLOUDFLOW_SINCE")]
    pub since: Option<String>,
    /// Which colour's replicas (default: the live one).
    #[arg(long, env = "CLOUDFLOW_COLOR", value_parser = ["blue", "green"])]
    pub color: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub action: Option<CertsAction>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CertsAction {
    /// Order (ACME) or install (files) every certificate again now, whatever its expiry; each goes live with a graceful reload.
    #[command(after_help = "Example:\n  cloudflow certs renew")]
    Renew,
}

#[derive(Debug, Clone, Args)]
pub struct PsArgs {
    /// The service (as named in the spec).
    pub service: String,
    /// The environment.
    #[arg(long, env = "CLOUDFLOW_ENV", default_value = "default")]
    pub env: String,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Which provider the starter spec is for.
    #[arg(long, env = "CLOUDFLOW_PROVIDER", value_enum, default_value = "lab")]
    pub provider: ProviderKind,
    /// The cluster's name (letters, digits, dashes).
    #[arg(long, env = "CLOUDFLOW_NAME", default_value = "demo")]
    pub name: String,
}

impl Command {
    /// The command as the lock names it (no arguments: they could carry secrets).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Init(_) => "init",
            Command::Completions(_) => "completions",
            Command::Man => "man",
            Command::Schema => "schema",
            Command::Validate => "validate",
            Command::Plan(_) => "plan",
            Command::Up(_) => "up",
            Command::Status => "status",
            Command::Kubeconfig(_) => "kubeconfig",
            Command::Serve(_) => "serve",
            Command::Nodes(_) => "nodes scale",
            Command::Deploy(_) => "deploy",
            Command::Switch(_) => "switch",
            Command::StopOld(_) => "stop-old",
            Command::Rollback(_) => "rollback",
            Command::Scale(_) => "scale",
            Command::Env(EnvCommand::Create(_)) => "env create",
            Command::Env(EnvCommand::List(_)) => "env list",
            Command::Env(EnvCommand::Destroy(_)) => "env destroy",
            Command::Env(EnvCommand::Gc(_)) => "env gc",
            Command::Lock(_) => "lock",
            Command::State(StateCommand::Export) => "state export",
            Command::State(StateCommand::Import(_)) => "state import",
            Command::Logs(_) => "logs",
            Command::Ps(_) => "ps",
            Command::Certs(CertsArgs {
                action: Some(CertsAction::Renew),
            }) => "certs renew",
            Command::Certs(_) => "certs",
            Command::Down(_) => "down",
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodesCommand {
    /// Add or remove workers through the provider. Removed workers are drained and leave the swarm first; added ones are bootstrapped and joined. On GKE, resize a node pool.
    #[command(
        after_help = "Examples:\n  cloudflow -f staging.yaml nodes scale +2     # two more workers\n  \
                            cloudflow -f staging.yaml nodes scale -1     # drain, leave, terminate the newest worker\n  \
                            cloudflow -f staging.yaml nodes scale 4      # exactly four workers\n  \
                            cloudflow -f prod.yaml nodes scale +2 --pool default   # GKE: resize one node pool\n\n\
                            The new size is kept by the next `up` until the spec's own size is edited."
    )]
    Scale(ScaleArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum LockCommand {
    /// Who holds the lock: user@host, pid, command, since, and (etcd) how long its lease lasts unless renewed.
    #[command(
        after_help = "Examples:\n  cloudflow -f prod.yaml lock status\n  cloudflow -f prod.yaml lock status -o json"
    )]
    Status,
    /// Remove the lock of a holder that died without waiting for its lease to expire. The holder, if it still runs, can no longer write the state.
    #[command(
        after_help = "Example:\n  cloudflow --state etcd://etcd-1:2379/cloudflow -f prod.yaml lock release --force"
    )]
    Release(LockReleaseArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LockReleaseArgs {
    /// Required: releasing another process's lock is a deliberate act.
    #[arg(long, env = "CLOUDFLOW_FORCE", value_parser = BoolishValueParser::new())]
    pub force: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum StateCommand {
    /// Print the cluster's record as JSON (no secrets are in it).
    #[command(
        after_help = "Example:\n  cloudflow --state etcd://etcd-1:2379/cloudflow -f prod.yaml state export > prod.json"
    )]
    Export,
    /// Store a record read from stdin (from `state export`) under the spec's cluster, holding the lock. Refuses to replace an existing record without --force.
    #[command(
        after_help = "Example:\n  cloudflow --state etcd://etcd-1:2379/cloudflow -f prod.yaml state import < prod.json"
    )]
    Import(StateImportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StateImportArgs {
    /// Replace the record the store already has for this cluster.
    #[arg(long, env = "CLOUDFLOW_FORCE", value_parser = BoolishValueParser::new())]
    pub force: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum EnvCommand {
    /// Create an environment (its network and a record with its TTL).
    #[command(
        after_help = "Examples:\n  cloudflow -f cluster.yaml env create pr-7 --ttl 1h\n  cloudflow -f cluster.yaml deploy web --image reg:5000/web:pr-7 --env pr-7"
    )]
    Create(EnvCreateArgs),
    /// Environments with age, expiry and services (colour, image, replicas).
    #[command(
        after_help = "Examples:\n  cloudflow -f cluster.yaml env list\n  cloudflow -f cluster.yaml env list -o json | jq '.environments[].name'"
    )]
    List(YesArgs),
    /// Remove an environment: its routes, services and network. `default` cannot be destroyed.
    #[command(after_help = "Example:\n  cloudflow -f cluster.yaml env destroy pr-7")]
    Destroy(EnvNameArgs),
    /// Destroy every environment past its TTL (run it from cron or CI).
    #[command(after_help = "Example:\n  cloudflow -f cluster.yaml env gc")]
    Gc(YesArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EnvCreateArgs {
    /// Environment name: lowercase letters, digits and '-'.
    pub name: String,
    /// How long it lives before `env gc` removes it (30m, 1h, 2d). Without it, it lives until destroyed.
    #[arg(long, env = "CLOUDFLOW_TTL", value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    #[command(flatten)]
    pub common: YesArgs,
}

#[derive(Debug, Clone, Args)]
pub struct EnvNameArgs {
    pub name: String,
    #[command(flatten)]
    pub common: YesArgs,
}

#[derive(Debug, Clone, Args)]
pub struct YesArgs {
    /// Accepted for symmetry with up/down; this command acts at once.
    #[arg(short = 'y', long, env = "CLOUDFLOW_YES", value_parser = BoolishValueParser::new())]
    pub yes: bool,
    /// Give up waiting for tasks to converge after this long (30s, 5m).
    #[arg(long, env = "CLOUDFLOW_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5m")]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// A service from the spec's `services`.
    pub service: String,
    /// The environment (default: `default`).
    #[arg(long, env = "CLOUDFLOW_ENV", default_value = "default")]
    pub env: String,
    #[command(flatten)]
    pub common: YesArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub target: ServiceArgs,
    /// The image to deploy (default: the spec's image for the service).
    #[arg(long, env = "CLOUDFLOW_IMAGE")]
    pub image: Option<String>,
    /// Start and gate the new colour but leave traffic where it is (see it at the preview host; `switch` later).
    #[arg(long, env = "CLOUDFLOW_NO_SWITCH", value_parser = BoolishValueParser::new())]
    pub no_switch: bool,
    /// Replicas for the new colour: absolute (5) or relative to the live colour (+2, -1).
    #[arg(
        long,
        env = "CLOUDFLOW_SCALE",
        allow_hyphen_values = true,
        value_name = "SIZE"
    )]
    pub scale: Option<String>,
    /// Deploy even when the image is already live.
    #[arg(long, env = "CLOUDFLOW_FORCE", value_parser = BoolishValueParser::new())]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServiceScaleArgs {
    /// A service from the spec's `services`.
    pub service: String,
    /// Replicas wanted: absolute (5) or relative to the live colour's replicas (+2, -1).
    #[arg(allow_hyphen_values = true, value_name = "SIZE")]
    pub size: String,
    /// The environment (default: `default`).
    #[arg(long, env = "CLOUDFLOW_ENV", default_value = "default")]
    pub env: String,
    #[command(flatten)]
    pub common: YesArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Workers wanted: absolute (4) or relative to the live count (+2, -1).
    #[arg(allow_hyphen_values = true, value_name = "SIZE")]
    pub size: String,

    /// Accepted for symmetry with up/down; nodes scale acts at once.
    #[arg(short = 'y', long, env = "CLOUDFLOW_YES", value_parser = BoolishValueParser::new())]
    pub yes: bool,

    /// New workers go through the phases up to this one (`provision`: machines only, no SSH, no drain).
    #[arg(long, env = "CLOUDFLOW_UNTIL", value_enum)]
    pub until: Option<PhaseName>,

    /// How long new workers may take to boot (SSH answering, cloud-init done).
    #[arg(long, env = "CLOUDFLOW_TIMEOUT", value_parser = humantime::parse_duration, default_value = "15m")]
    pub timeout: std::time::Duration,

    /// The node pool to resize (GKE; needed when the spec has more than one).
    #[arg(long, env = "CLOUDFLOW_POOL", value_name = "NAME")]
    pub pool: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "CLOUDFLOW_LISTEN",
        default_value = "127.0.0.1:9099",
        value_name = "ADDR"
    )]
    pub listen: String,
}

#[derive(Debug, Clone, Args)]
pub struct KubeconfigArgs {
    /// Write the credentials into the output (GKE: the bearer token instead of the exec plugin; k3s: the whole kubeconfig). The output then holds a secret.
    #[arg(long, env = "CLOUDFLOW_SHOW_TOKEN", value_parser = BoolishValueParser::new())]
    pub show_token: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Plan only up to and including this phase.
    #[arg(long, env = "CLOUDFLOW_UNTIL", value_enum)]
    pub until: Option<PhaseName>,
    /// How long to wait for new cloud machines to finish booting before reading their facts.
    #[arg(long, env = "CLOUDFLOW_TIMEOUT", value_parser = humantime::parse_duration, default_value = "15m")]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Do not ask before changing anything (required without a terminal).
    #[arg(short = 'y', long, env = "CLOUDFLOW_YES", value_parser = BoolishValueParser::new())]
    pub yes: bool,

    /// Stop after this phase (`provision` connects to no machine).
    #[arg(long, env = "CLOUDFLOW_UNTIL", value_enum)]
    pub until: Option<PhaseName>,

    /// How long new cloud machines may take to boot (SSH answering, cloud-init done).
    #[arg(long, env = "CLOUDFLOW_TIMEOUT", value_parser = humantime::parse_duration, default_value = "15m")]
    pub timeout: std::time::Duration,

    /// Report where the time went: each phase, each host's total, the slowest steps (with -o
    /// json: every command with its host, phase, step, start and duration).
    #[arg(long, env = "CLOUDFLOW_TIMINGS", value_parser = BoolishValueParser::new())]
    pub timings: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DownArgs {
    /// Do not ask before changing anything (required without a terminal).
    #[arg(short = 'y', long, env = "CLOUDFLOW_YES", value_parser = BoolishValueParser::new())]
    pub yes: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn service_sizes_and_deploy_scale_take_relative_values() {
        for size in ["-1", "+2", "5"] {
            let cli =
                Cli::try_parse_from(["cloudflow", "scale", "web", size, "--env", "pr-7"]).unwrap();
            let Command::Scale(a) = cli.command else {
                panic!()
            };
            assert_eq!(
                (a.service.as_str(), a.size.as_str(), a.env.as_str()),
                ("web", size, "pr-7")
            );
        }
        let cli = Cli::try_parse_from([
            "cloudflow",
            "deploy",
            "web",
            "--image",
            "r/w:2",
            "--scale",
            "-1",
        ])
        .unwrap();
        let Command::Deploy(a) = cli.command else {
            panic!()
        };
        assert_eq!(
            (a.scale.as_deref(), a.target.env.as_str()),
            (Some("-1"), "default")
        );
        let cli =
            Cli::try_parse_from(["cloudflow", "env", "create", "pr-7", "--ttl", "90m"]).unwrap();
        let Command::Env(EnvCommand::Create(a)) = cli.command else {
            panic!()
        };
        assert_eq!(a.ttl, Some(std::time::Duration::from_secs(5400)));
    }

    #[test]
    fn relative_sizes_are_arguments() {
        for size in ["-1", "+2", "5"] {
            let cli = Cli::try_parse_from(["cloudflow", "nodes", "scale", size]).unwrap();
            let Command::Nodes(NodesCommand::Scale(a)) = cli.command else {
                panic!()
            };
            assert_eq!(a.size, size);
        }
    }

    #[test]
    fn global_flags_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "cloudflow",
            "up",
            "-f",
            "x.yaml",
            "-o",
            "json",
            "--yes",
            "--until",
            "provision",
        ])
        .unwrap();
        assert_eq!(cli.file, PathBuf::from("x.yaml"));
        assert_eq!(cli.output, OutputFormat::Json);
        let Command::Up(up) = cli.command else {
            panic!("up expected")
        };
        assert!(up.yes);
        assert_eq!(up.until, Some(PhaseName::Provision));
    }

    /// CONTRACT: every flag can also be set as a `CLOUDFLOW_*` variable, subcommand flags too.
    #[test]
    fn every_flag_has_an_environment_variable() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                match arg.get_env().and_then(|e| e.to_str()) {
                    Some(v) if v.starts_with("CLOUDFLOW_") => {}
                    _ => missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id))),
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "cloudflow", &mut missing);
        assert!(
            missing.is_empty(),
            "flags without a CLOUDFLOW_* variable: {missing:?}"
        );
        let deploy = Cli::command();
        let deploy = deploy.find_subcommand("deploy").unwrap();
        for (flag, var) in [
            ("image", "CLOUDFLOW_IMAGE"),
            ("no_switch", "CLOUDFLOW_NO_SWITCH"),
            ("scale", "CLOUDFLOW_SCALE"),
            ("force", "CLOUDFLOW_FORCE"),
        ] {
            let arg = deploy.get_arguments().find(|a| a.get_id() == flag).unwrap();
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(var));
        }
    }

    #[test]
    fn every_subcommand_has_an_example_in_its_help() {
        for sub in Cli::command()
            .get_subcommands()
            .flat_map(|s| std::iter::once(s).chain(s.get_subcommands()))
        {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("cloudflow "),
                "{} --help has no example",
                sub.get_name()
            );
        }
    }
}
