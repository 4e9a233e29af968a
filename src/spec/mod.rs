//! The spec: one YAML file, parsed and validated up front into typed structs.
//!
//! Parse errors (unknown keys, wrong types) and validation errors (no manager, duplicate
//! addresses) both point at `file:line:column` and render with the source snippet (miette).

mod autoscaling;
mod error;
mod gke;
pub mod grammar;
mod https;
mod services;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use autoscaling::AutoscalingSpec;
pub use error::SpecError;
pub use gke::{GkeSpec, NodePoolSpec};
pub use https::{AcmeSpec, CertFiles, CertSource, HttpsSpec, covers as cert_covers};
pub use services::{
    HealthSpec, SecretSource, ServiceSpec, Strategy, parse_duration, valid_secret_name,
    valid_service_name,
};

/// A validated spec.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Where the spec was read from (the state lives beside it by default).
    pub path: PathBuf,
    pub name: String,
    pub provider: ProviderSpec,
    pub orchestrator: Orchestrator,
    /// `kubernetes:` — how to reach an existing cluster.
    pub kubernetes: KubernetesSpec,
    pub registry: RegistrySpec,
    pub proxy: ProxySpec,
    /// Directory whose `*.tera` files override the embedded templates.
    pub templates: Option<PathBuf>,
    /// What the deploy phase runs, by name: `services:` merged over `services_from:`.
    pub services: std::collections::BTreeMap<String, ServiceSpec>,
    /// `autoscaling:` — what `cloudflow serve` acts on.
    pub autoscaling: Option<AutoscalingSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProviderSpec {
    Lab(LabSpec),
    BareMetal(BareMetalSpec),
    Aws(AwsSpec),
    Gke(GkeSpec),
    /// No provider: an existing Kubernetes cluster reached through `kubernetes.kubeconfig`.
    Existing,
}

impl ProviderSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderSpec::Lab(_) => "lab",
            ProviderSpec::BareMetal(_) => "bare-metal",
            ProviderSpec::Aws(_) => "aws",
            ProviderSpec::Gke(_) => "gke",
            ProviderSpec::Existing => "existing",
        }
    }
}

/// `kubernetes.kubeconfig` (+ `context`): an existing cluster, no provider needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubernetesSpec {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// `kubernetes.k3s.artifacts`: a directory with the `k3s` binary and its airgap images
    /// (`k3s-airgap-images-*.tar*`), copied to lab, bare-metal and AWS machines over SSH.
    pub k3s_artifacts: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabSpec {
    pub hosts: u32,
    pub managers: u32,
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BareMetalSpec {
    pub user: String,
    pub ssh_key: PathBuf,
    pub port: u16,
    pub host_key_policy: HostKeyPolicy,
    pub hosts: Vec<HostSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AwsSpec {
    pub region: String,
    pub instance_type: String,
    /// An AMI id or a name filter (newest match).
    pub image: String,
    pub managers: u32,
    pub workers: u32,
    pub ssh_key: PathBuf,
    /// The image's SSH user (Debian AMIs: admin).
    pub user: String,
    /// `auto`, a `vpc-…` id or a `subnet-…` id.
    pub vpc: String,
    pub allowed_cidrs: Vec<String>,
    /// Which address cloudflow uses to reach instances over SSH.
    pub address: AddressChoice,
}

/// `provider.aws.address`: how cloudflow reaches instances. The swarm always advertises and
/// joins on private addresses, whichever this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AddressChoice {
    /// The public address (cloudflow runs outside the VPC).
    #[default]
    Public,
    /// The private address (cloudflow runs inside the VPC: a CI runner, a bastion).
    Private,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    pub address: String,
    pub port: u16,
    pub role: Role,
}

pub use cloudflow_provider_api::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Record unknown keys in the state's known_hosts; refuse changed keys.
    AcceptNew,
    /// Refuse hosts whose key is not already known (state or ~/.ssh/known_hosts).
    Strict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Orchestrator {
    Swarm,
    Kubernetes,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrySpec {
    pub insecure: Vec<String>,
    pub mirrors: Vec<String>,
    pub auth: Option<RegistryAuth>,
}

/// Registry credentials. The password itself is never in the spec: only the name of the
/// environment variable that holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password_env: String,
    /// Where `password_env` was written, for errors when the variable is unset.
    pub password_env_at: Location,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxySpec {
    pub http_proxy: Option<String>,
    pub https_proxy: Option<String>,
    pub no_proxy: Vec<String>,
    pub domain: Option<String>,
    pub image: Option<String>,
    pub port: Option<u16>,
    /// `proxy.https`: HTTPS on the proxy, with certificates from ACME or files.
    pub https: Option<HttpsSpec>,
}

/// A line and column in the spec file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    pub line: u64,
    pub column: u64,
}

impl Location {
    fn of<T>(s: &Spanned<T>) -> Self {
        Location {
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }
}

// ---- raw, as written -------------------------------------------------------------------------

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[schemars(with = "String")]
    name: Spanned<String>,
    #[schemars(with = "Option<RawProvider>")]
    provider: Option<Spanned<RawProvider>>,
    #[schemars(with = "Option<Orchestrator>")]
    orchestrator: Option<Spanned<Orchestrator>>,
    #[schemars(with = "Option<RawKubernetes>")]
    kubernetes: Option<Spanned<RawKubernetes>>,
    #[serde(default)]
    registry: RawRegistry,
    #[serde(default)]
    proxy: RawProxy,
    templates: Option<String>,
    #[serde(default)]
    #[schemars(with = "std::collections::HashMap<String, services::RawService>")]
    services: std::collections::HashMap<Spanned<String>, services::RawService>,
    #[schemars(with = "Option<String>")]
    services_from: Option<Spanned<String>>,
    autoscaling: Option<autoscaling::RawAutoscaling>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    #[schemars(with = "Option<String>")]
    kubeconfig: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    context: Option<Spanned<String>>,
    #[schemars(with = "Option<RawK3s>")]
    k3s: Option<Spanned<RawK3s>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawK3s {
    #[schemars(with = "String")]
    artifacts: Spanned<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum RawProvider {
    Lab(RawLab),
    BareMetal(RawBareMetal),
    Aws(RawAws),
    Gke(gke::RawGke),
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: String,
    instance_type: String,
    image: String,
    #[schemars(with = "Option<u32>")]
    managers: Option<Spanned<u32>>,
    #[serde(default)]
    workers: u32,
    ssh_key: String,
    #[serde(default = "default_aws_user")]
    user: String,
    #[schemars(with = "Option<String>")]
    vpc: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    allowed_cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    address: AddressChoice,
}

fn default_aws_user() -> String {
    "admin".into()
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawLab {
    #[schemars(with = "u32")]
    hosts: Spanned<u32>,
    #[schemars(with = "Option<u32>")]
    managers: Option<Spanned<u32>>,
    #[schemars(with = "Option<String>")]
    image: Option<Spanned<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawBareMetal {
    #[serde(default = "default_user")]
    user: String,
    #[schemars(with = "String")]
    ssh_key: Spanned<String>,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_policy")]
    host_key_policy: HostKeyPolicy,
    #[schemars(with = "Vec<RawHost>")]
    hosts: Spanned<Vec<RawHost>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawHost {
    #[schemars(with = "String")]
    address: Spanned<String>,
    port: Option<u16>,
    #[serde(default = "default_role")]
    #[schemars(with = "RoleName")]
    role: Role,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    insecure: Vec<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    mirrors: Vec<Spanned<String>>,
    auth: Option<RawAuth>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[schemars(with = "String")]
    server: Spanned<String>,
    #[schemars(with = "String")]
    username: Spanned<String>,
    #[schemars(with = "String")]
    password_env: Spanned<String>,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    #[schemars(with = "Option<String>")]
    http_proxy: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    https_proxy: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Vec<String>")]
    no_proxy: Vec<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    domain: Option<Spanned<String>>,
    #[schemars(with = "Option<String>")]
    image: Option<Spanned<String>>,
    port: Option<u16>,
    #[schemars(with = "Option<https::RawHttps>")]
    https: Option<Spanned<https::RawHttps>>,
}

/// A host's role, as the schema shows it (the type itself lives in the provider API).
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum RoleName {
    Manager,
    Worker,
}

/// The JSON Schema of the spec file, derived from the types the parser reads it into (for
/// editors: yaml-language-server, and `cloudflow schema`).
pub fn json_schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(RawSpec)).expect("schema");
    schema["title"] = "cloudflow spec".into();
    schema
}

fn default_user() -> String {
    "root".into()
}
fn default_port() -> u16 {
    22
}
fn default_policy() -> HostKeyPolicy {
    HostKeyPolicy::AcceptNew
}
fn default_role() -> Role {
    Role::Worker
}

// ---- loading ---------------------------------------------------------------------------------

/// Read, parse and validate the spec at `path`.
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    let source = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse(path, &source)
}

/// Parse and validate spec text; `path` names the file in errors and anchors relative paths.
pub fn parse(path: &Path, source: &str) -> Result<Spec, SpecError> {
    let file = path.display().to_string();
    let options = serde_saphyr::options! { with_snippet: false };
    let mut raw: RawSpec = serde_saphyr::from_str_with_options(source, options)
        .map_err(|e| SpecError::from_yaml(&file, source, &e))?;
    let at = |loc: Location, msg: String| SpecError::at(&file, source, loc, msg);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();

    let name = raw.name.value.clone();
    if !valid_name(&name) {
        return Err(at(
            Location::of(&raw.name),
            format!(
                "invalid cluster name {name:?}: use 1-40 lowercase letters, digits and '-', \
                 starting and ending with a letter or digit (it becomes part of container names and labels)"
            ),
        ));
    }

    let kubernetes = KubernetesSpec {
        kubeconfig: raw
            .kubernetes
            .as_ref()
            .and_then(|k| k.value.kubeconfig.as_ref())
            .map(|k| expand_path(&k.value, &base)),
        context: raw
            .kubernetes
            .as_ref()
            .and_then(|k| k.value.context.as_ref())
            .map(|c| c.value.clone()),
        k3s_artifacts: raw
            .kubernetes
            .as_ref()
            .and_then(|k| k.value.k3s.as_ref())
            .map(|k| expand_path(&k.value.artifacts.value, &base)),
    };
    let Some(raw_provider) = raw.provider.take() else {
        if kubernetes.kubeconfig.is_none() {
            return Err(at(
                Location { line: 1, column: 1 },
                "no provider: add `provider:` (lab, bare_metal, aws, gke), or `kubernetes: { kubeconfig: … }` for an existing cluster".into(),
            ));
        }
        return finish(
            raw,
            path,
            &file,
            source,
            &base,
            name,
            ProviderSpec::Existing,
            Orchestrator::Kubernetes,
            kubernetes,
        );
    };
    if let Some(k) = &raw.kubernetes
        && k.value.kubeconfig.is_some()
    {
        return Err(at(
            Location::of(k),
            "kubernetes.kubeconfig names an existing cluster: leave out `provider:` (cloudflow makes no machines for it)".into(),
        ));
    }
    let is_gke = matches!(raw_provider.value, RawProvider::Gke(_));
    let orchestrator = match raw.orchestrator.take() {
        // A GKE cluster is Kubernetes.
        None if is_gke => Orchestrator::Kubernetes,
        None => Orchestrator::Swarm,
        Some(o) if is_gke && o.value == Orchestrator::Swarm => {
            return Err(at(
                Location::of(&o),
                "a GKE cluster runs Kubernetes: set `orchestrator: kubernetes`".into(),
            ));
        }
        Some(o)
            if o.value == Orchestrator::Kubernetes
                && !is_gke
                && kubernetes.k3s_artifacts.is_none() =>
        {
            return Err(at(
                Location::of(&o),
                "orchestrator `kubernetes` on lab, bare-metal and aws machines installs k3s, and the hosts may have no internet: \
                 set `kubernetes: { k3s: { artifacts: ./airgap/ } }`, a directory with the k3s binary and its airgap images".into(),
            ));
        }
        Some(o) => o.value,
    };

    let provider = match raw_provider.value {
        RawProvider::Lab(lab) => {
            let hosts = lab.hosts.value;
            if !(1..=50).contains(&hosts) {
                return Err(at(
                    Location::of(&lab.hosts),
                    format!("lab hosts must be 1 to 50, not {hosts}"),
                ));
            }
            let managers = match &lab.managers {
                None => 1,
                Some(m) if m.value == 0 || m.value > hosts => {
                    return Err(at(
                        Location::of(m),
                        format!(
                            "lab managers must be between 1 and hosts ({hosts}), not {}",
                            m.value
                        ),
                    ));
                }
                Some(m) => m.value,
            };
            if let Some(i) = &lab.image {
                check(&at, i, "lab image", grammar::image)?;
            }
            ProviderSpec::Lab(LabSpec {
                hosts,
                managers,
                image: lab.image.map(|i| i.value),
            })
        }
        RawProvider::Aws(a) => {
            let managers = match &a.managers {
                None => 1,
                Some(m) if m.value == 0 => {
                    return Err(at(
                        Location::of(m),
                        "aws managers must be at least 1".into(),
                    ));
                }
                Some(m) => m.value,
            };
            let vpc = match a.vpc {
                None => "auto".to_string(),
                Some(v)
                    if v.value == "auto"
                        || v.value.starts_with("vpc-")
                        || v.value.starts_with("subnet-") =>
                {
                    v.value
                }
                Some(v) => {
                    return Err(at(
                        Location::of(&v),
                        format!(
                            "vpc must be `auto`, a vpc- id or a subnet- id, not {:?}",
                            v.value
                        ),
                    ));
                }
            };
            for c in &a.allowed_cidrs {
                if !c.value.contains('/') {
                    return Err(at(
                        Location::of(c),
                        format!(
                            "allowed_cidrs entry {:?} must be a CIDR like 203.0.113.0/24",
                            c.value
                        ),
                    ));
                }
            }
            ProviderSpec::Aws(AwsSpec {
                region: a.region,
                instance_type: a.instance_type,
                image: a.image,
                managers,
                workers: a.workers,
                ssh_key: expand_path(&a.ssh_key, &base),
                user: a.user,
                vpc,
                allowed_cidrs: a.allowed_cidrs.into_iter().map(|c| c.value).collect(),
                address: a.address,
            })
        }
        RawProvider::Gke(g) => ProviderSpec::Gke(gke::parse(g, &at)?),
        RawProvider::BareMetal(bm) => {
            if bm.hosts.value.is_empty() {
                return Err(at(
                    Location::of(&bm.hosts),
                    "bare_metal needs at least one host".into(),
                ));
            }
            if !bm.hosts.value.iter().any(|h| h.role == Role::Manager) {
                return Err(at(
                    Location::of(&bm.hosts),
                    "no manager: at least one host needs `role: manager` (hosts default to worker)"
                        .into(),
                ));
            }
            let mut hosts: Vec<HostSpec> = Vec::new();
            // Seen (address, port): a fleet of thousands is checked in linear time.
            let mut seen = std::collections::HashSet::new();
            for h in &bm.hosts.value {
                let address = h.address.value.trim().to_string();
                let port = h.port.unwrap_or(bm.port);
                if address.is_empty() {
                    return Err(at(Location::of(&h.address), "empty host address".into()));
                }
                if let Err(e) = grammar::host(&address) {
                    return Err(at(
                        Location::of(&h.address),
                        format!("host address {address:?}: {e}"),
                    ));
                }
                if !seen.insert((address.clone(), port)) {
                    return Err(at(
                        Location::of(&h.address),
                        format!("host {address}:{port} is listed twice"),
                    ));
                }
                hosts.push(HostSpec {
                    address,
                    port,
                    role: h.role,
                });
            }
            let ssh_key = expand_path(&bm.ssh_key.value, &base);
            ProviderSpec::BareMetal(BareMetalSpec {
                user: bm.user,
                ssh_key,
                port: bm.port,
                host_key_policy: bm.host_key_policy,
                hosts,
            })
        }
    };

    finish(
        raw,
        path,
        &file,
        source,
        &base,
        name,
        provider,
        orchestrator,
        kubernetes,
    )
}

/// Everything after the provider: registry, proxy, services; then the `Spec`.
#[allow(clippy::too_many_arguments)]
fn finish(
    mut raw: RawSpec,
    path: &Path,
    file: &str,
    source: &str,
    base: &Path,
    name: String,
    provider: ProviderSpec,
    orchestrator: Orchestrator,
    kubernetes: KubernetesSpec,
) -> Result<Spec, SpecError> {
    let at = |loc: Location, msg: String| SpecError::at(file, source, loc, msg);
    for m in &raw.registry.mirrors {
        check(&at, m, "registry mirror", grammar::mirror_url)?;
    }
    for i in &raw.registry.insecure {
        check(&at, i, "insecure registry", grammar::registry_host)?;
    }
    if let Some(a) = &raw.registry.auth {
        let server = a
            .server
            .value
            .strip_prefix("https://")
            .or_else(|| a.server.value.strip_prefix("http://"))
            .unwrap_or(&a.server.value);
        let server = server.strip_suffix('/').unwrap_or(server);
        if let Err(e) = grammar::registry_host(server) {
            return Err(at(
                Location::of(&a.server),
                format!("registry.auth.server {:?}: {e}", a.server.value),
            ));
        }
        check(&at, &a.username, "registry.auth.username", grammar::token)?;
    }
    let auth = raw.registry.auth.map(|a| RegistryAuth {
        server: a.server.value,
        username: a.username.value,
        password_env: a.password_env.value.clone(),
        password_env_at: Location::of(&a.password_env),
    });
    if let Some(a) = &auth
        && !valid_env_name(&a.password_env)
    {
        return Err(at(
            a.password_env_at,
            format!(
                "password_env must name an environment variable (like REGISTRY_PASSWORD), not {:?}",
                a.password_env
            ),
        ));
    }
    for p in [&raw.proxy.http_proxy, &raw.proxy.https_proxy]
        .into_iter()
        .flatten()
    {
        // A proxy URL may carry a password: the error masks it and shows no snippet.
        if let Err(e) = grammar::proxy_url(&p.value) {
            return Err(SpecError::at(
                file,
                "",
                Location::of(p),
                format!("proxy {:?}: {e}", grammar::mask_userinfo(&p.value)),
            ));
        }
    }
    for n in &raw.proxy.no_proxy {
        check(&at, n, "no_proxy entry", grammar::no_proxy_entry)?;
    }
    if let Some(d) = &raw.proxy.domain {
        check(&at, d, "proxy.domain", grammar::dns_name)?;
    }
    if let Some(i) = &raw.proxy.image {
        check(&at, i, "proxy.image", grammar::image)?;
    }

    let mut all_services = match &raw.services_from {
        None => Default::default(),
        Some(f) => services::from_compose(&expand_path(&f.value, base))?,
    };
    let services_at = raw
        .services
        .keys()
        .map(Location::of)
        .min_by_key(|l| (l.line, l.column));
    all_services.extend(services::from_spec(raw.services, &at)?);
    if !all_services.is_empty() {
        let loc = services_at
            .or(raw.services_from.as_ref().map(Location::of))
            .unwrap_or_default();
        if raw.proxy.image.is_none() {
            return Err(at(
                loc,
                "services need a reverse proxy: set proxy.image (an nginx image your hosts can pull; \
                 cloudflow never falls back to a public image)"
                    .into(),
            ));
        }
        if raw.proxy.domain.is_none()
            && all_services
                .values()
                .any(|s| s.strategy == Strategy::BlueGreen)
        {
            return Err(at(
                loc,
                "routed services need proxy.domain: they are served at <service>-<env>.<domain>"
                    .into(),
            ));
        }
    }

    let autoscaling = match raw.autoscaling {
        Some(a) => Some(autoscaling::parse(a, &at)?),
        None => None,
    };
    let https = match raw.proxy.https.take() {
        Some(h) => {
            let loc = Location::of(&h);
            Some(https::parse(h.value, loc, base, &at)?)
        }
        None => None,
    };
    Ok(Spec {
        path: path.to_path_buf(),
        name,
        provider,
        orchestrator,
        kubernetes,
        registry: RegistrySpec {
            insecure: raw.registry.insecure.into_iter().map(|i| i.value).collect(),
            mirrors: raw.registry.mirrors.into_iter().map(|m| m.value).collect(),
            auth,
        },
        proxy: ProxySpec {
            http_proxy: raw.proxy.http_proxy.map(|p| p.value),
            https_proxy: raw.proxy.https_proxy.map(|p| p.value),
            no_proxy: raw.proxy.no_proxy.into_iter().map(|n| n.value).collect(),
            domain: raw.proxy.domain.map(|d| d.value),
            image: raw.proxy.image.map(|i| i.value),
            port: raw.proxy.port,
            https,
        },
        templates: raw.templates.map(|t| expand_path(&t, base)),
        services: all_services,
        autoscaling,
    })
}

impl Spec {
    /// Read the registry password from the environment variable the spec names.
    /// The error names the variable and where the spec names it, never a value.
    pub fn registry_password(&self) -> Result<Option<secrecy::SecretString>, SpecError> {
        let Some(auth) = &self.registry.auth else {
            return Ok(None);
        };
        match std::env::var(&auth.password_env) {
            Ok(v) if !v.is_empty() => Ok(Some(secrecy::SecretString::from(v))),
            _ => {
                let source = std::fs::read_to_string(&self.path).unwrap_or_default();
                Err(SpecError::at(
                    &self.path.display().to_string(),
                    &source,
                    auth.password_env_at,
                    format!(
                        "environment variable {} (registry.auth.password_env) is not set; export it before running cloudflow",
                        auth.password_env
                    ),
                ))
            }
        }
    }

    /// Read a service's secret values on this machine (environment variables or files beside
    /// the spec), by secret name. Errors name the variable or file and where the spec names
    /// it, never a value.
    pub fn secret_values(
        &self,
        svc: &ServiceSpec,
    ) -> Result<Vec<(String, secrecy::SecretString)>, SpecError> {
        let source_text = || std::fs::read_to_string(&self.path).unwrap_or_default();
        let file = self.path.display().to_string();
        let base = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut out = Vec::new();
        for (name, src) in &svc.secrets {
            let value = match src {
                SecretSource::Env { var, at } => match std::env::var(var) {
                    Ok(v) if !v.is_empty() => v,
                    _ => {
                        return Err(SpecError::at(
                            &file,
                            &source_text(),
                            *at,
                            format!(
                                "environment variable {var} (secret {name} of service {}) is not set; export it before running cloudflow",
                                svc.name
                            ),
                        ));
                    }
                },
                SecretSource::File { path, at } => {
                    let p = expand_path(path, &base);
                    std::fs::read_to_string(&p).map_err(|e| {
                        SpecError::at(
                            &file,
                            &source_text(),
                            *at,
                            format!(
                                "cannot read {} (secret {name} of service {}): {e}",
                                p.display(),
                                svc.name
                            ),
                        )
                    })?
                }
            };
            out.push((name.clone(), secrecy::SecretString::from(value)));
        }
        Ok(out)
    }

    /// The directory the embedded state store lives in by default: `.cloudflow/` beside the spec.
    pub fn default_state_dir(&self) -> PathBuf {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        dir.join(".cloudflow")
    }
}

/// Check a spanned string against its grammar; the error points at it.
fn check(
    at: &dyn Fn(Location, String) -> SpecError,
    v: &Spanned<String>,
    what: &str,
    grammar: fn(&str) -> Result<(), String>,
) -> Result<(), SpecError> {
    grammar(&v.value).map_err(|e| at(Location::of(v), format!("{what} {:?}: {e}", v.value)))
}

pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn expand_path(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        return home.join(rest);
    }
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

#[cfg(test)]
mod tests;
