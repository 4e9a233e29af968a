//! GKE provider: one managed Kubernetes cluster and its node pools, through the official
//! `google-cloud-container-v1` client (REST transport).
//!
//! Reconciled from what the API lists under the project and location, never from memory:
//! a missing cluster is created with every pool in one request; on an existing one, pools are
//! created, deleted, resized (`setSize`) or given new autoscaling bounds (`setAutoscaling`).
//! GKE runs one operation per cluster at a time, so every mutation first waits for any
//! operation still running on the cluster (one a killed run left behind included), and a
//! `FAILED_PRECONDITION` "running incompatible operation" is waited out, not reported.
//!
//! There are no SSH machines: `list` returns none, and the orchestrator gets the cluster's
//! endpoint, CA and token source as a [`KubeEndpoint`].

pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use cloudflow_provider_api::{
    DestroyReport, Journal, KubeAuth, KubeEndpoint, Machine, ManagedCluster, PoolView, Progress,
    Provider, ProviderAction, ProviderError, Resource, SecretToken,
};
use google_cloud_container_v1::client::ClusterManager;
use google_cloud_container_v1::model;
use google_cloud_gax::error::rpc::Code;

use plan::{Change, LiveCluster, LivePool, RecordedSize};

const PROVIDER: &str = "gke";

/// One node pool as the spec declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub machine_type: String,
    pub nodes: u32,
    pub autoscaling: Option<(u32, u32)>,
    pub spot: bool,
}

/// Where to send API calls and with which credentials.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `CLOUDFLOW_GKE_TOKEN`: a bearer token minted elsewhere (a CI job's).
    Token(SecretToken),
    /// Application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's, metadata).
    ApplicationDefault,
    /// No credentials: only against an overridden endpoint (a local fake).
    Anonymous,
}

/// Everything the provider needs, resolved by the core from the spec, the state and the
/// environment.
#[derive(Debug, Clone)]
pub struct GkeConfig {
    pub cluster: String,
    pub project: String,
    pub location: String,
    /// `rapid`, `regular`, `stable`, or none (no channel).
    pub release_channel: Option<String>,
    pub pools: Vec<PoolSpec>,
    /// Registry mirrors for Docker Hub (containerd `registryHosts`).
    pub mirrors: Vec<String>,
    /// Registries reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Sizes cloudflow set after creation, by pool.
    pub recorded: BTreeMap<String, RecordedSize>,
    /// Base URL replacing `https://container.googleapis.com`.
    pub endpoint: Option<String>,
    pub credentials: Credentials,
    /// How long one operation may run before cloudflow stops waiting.
    pub operation_timeout: Duration,
}

impl GkeConfig {
    fn parent(&self) -> String {
        format!("projects/{}/locations/{}", self.project, self.location)
    }
    fn cluster_name(&self) -> String {
        format!("{}/clusters/{}", self.parent(), self.cluster)
    }
    fn pool_name(&self, pool: &str) -> String {
        format!("{}/nodePools/{pool}", self.cluster_name())
    }
    fn pool(&self, name: &str) -> Option<&PoolSpec> {
        self.pools.iter().find(|p| p.name == name)
    }
    /// The spec field a pool's settings come from, for errors.
    fn pool_field(&self, name: &str, field: &str) -> String {
        match self.pools.iter().position(|p| p.name == name) {
            Some(i) => format!("provider.gke.node_pools[{i}].{field}"),
            None => "provider.gke.node_pools".into(),
        }
    }
}

/// A static bearer token as google-cloud-auth credentials. The header is marked sensitive.
#[derive(Debug)]
struct BearerToken(SecretToken);

impl google_cloud_auth::credentials::CredentialsProvider for BearerToken {
    async fn headers(
        &self,
        _extensions: http::Extensions,
    ) -> Result<
        google_cloud_auth::credentials::CacheableResource<http::HeaderMap>,
        google_cloud_auth::errors::CredentialsError,
    > {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", self.0.expose()))
            .map_err(|_| {
                google_cloud_auth::errors::CredentialsError::from_msg(
                    false,
                    "CLOUDFLOW_GKE_TOKEN holds characters a header cannot carry",
                )
            })?;
        value.set_sensitive(true);
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        Ok(google_cloud_auth::credentials::CacheableResource::New {
            entity_tag: google_cloud_auth::credentials::EntityTag::new(),
            data: headers,
        })
    }

    async fn universe_domain(&self) -> Option<String> {
        None
    }
}

pub struct Gke {
    cfg: GkeConfig,
    client: ClusterManager,
    /// One mutation at a time from this process (GKE allows one operation per cluster).
    serial: tokio::sync::Mutex<()>,
    /// Application default credentials: the same token source for the Kubernetes API.
    adc: Option<google_cloud_auth::credentials::Credentials>,
    /// What `drift` read, for `plan_notes` (one read per plan).
    seen: std::sync::Mutex<Option<LiveCluster>>,
}

/// Why an API call failed, in words a user can act on. Never includes credentials: the
/// client's errors carry the service's status, not the request's headers.
fn api_error(action: &str, e: &google_cloud_gax::error::Error) -> ProviderError {
    if let Some(status) = e.status() {
        if status.code == Code::Unauthenticated {
            return ProviderError::Api {
                provider: PROVIDER,
                action: action.into(),
                message: format!(
                    "the GKE API refused the credentials ({}); check CLOUDFLOW_GKE_TOKEN or `gcloud auth application-default login`",
                    status.message
                ),
            };
        }
        return ProviderError::Api {
            provider: PROVIDER,
            action: action.into(),
            message: format!("{:?}: {}", status.code, status.message),
        };
    }
    if e.is_authentication() {
        return ProviderError::Api {
            provider: PROVIDER,
            action: action.into(),
            message: format!(
                "no usable credentials ({e}); set CLOUDFLOW_GKE_TOKEN or run `gcloud auth application-default login`"
            ),
        };
    }
    ProviderError::Api {
        provider: PROVIDER,
        action: action.into(),
        message: e.to_string(),
    }
}

fn is_busy(e: &google_cloud_gax::error::Error) -> bool {
    e.status().is_some_and(|s| {
        s.code == Code::FailedPrecondition && s.message.contains("incompatible operation")
    })
}

/// A refusal about the project itself (missing, or not open to these credentials) rather than
/// about a resource in it.
fn about_project(e: &google_cloud_gax::error::Error) -> bool {
    e.status().is_some_and(|s| {
        s.code == Code::PermissionDenied
            || (s.code == Code::NotFound && s.message.to_lowercase().contains("project "))
    })
}

fn is_not_found(e: &google_cloud_gax::error::Error) -> bool {
    e.status().is_some_and(|s| s.code == Code::NotFound)
}

/// `CreateCluster` → `CREATE_CLUSTER`: the API's own spelling of an enum value.
fn enum_name(v: &impl std::fmt::Debug) -> String {
    let s = format!("{v:?}");
    let s = s.split(['(', ' ']).next().unwrap_or(&s);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn live_pool(p: &model::NodePool) -> LivePool {
    let cfg = p.config.clone().unwrap_or_default();
    LivePool {
        name: p.name.clone(),
        machine_type: cfg.machine_type,
        initial_nodes: p.initial_node_count.max(0) as u32,
        autoscaling: p.autoscaling.as_ref().filter(|a| a.enabled).map(|a| {
            (
                a.min_node_count.max(0) as u32,
                a.max_node_count.max(0) as u32,
            )
        }),
        spot: cfg.spot,
        version: p.version.clone(),
        status: enum_name(&p.status),
    }
}

// `currentNodeCount` is deprecated in v1 but is the only total the API reports.
#[allow(deprecated)]
fn live_cluster(c: &model::Cluster) -> LiveCluster {
    LiveCluster {
        status: enum_name(&c.status),
        version: c.current_master_version.clone(),
        nodes: c.current_node_count.max(0) as u32,
        endpoint: c.endpoint.clone(),
        ca_base64: c
            .master_auth
            .as_ref()
            .map(|a| a.cluster_ca_certificate.clone())
            .unwrap_or_default(),
        pools: c.node_pools.iter().map(live_pool).collect(),
    }
}

fn autoscaling(bounds: Option<(u32, u32)>) -> model::NodePoolAutoscaling {
    match bounds {
        Some((min, max)) => model::NodePoolAutoscaling::new()
            .set_enabled(true)
            .set_min_node_count(min as i32)
            .set_max_node_count(max as i32),
        None => model::NodePoolAutoscaling::new().set_enabled(false),
    }
}

/// containerd registry hosts: every mirror serves Docker Hub; an insecure registry is
/// reached over `http://`.
fn registry_hosts(
    mirrors: &[String],
    insecure: &[String],
) -> Vec<model::containerd_config::RegistryHostConfig> {
    use model::containerd_config::RegistryHostConfig;
    use model::containerd_config::registry_host_config::{HostCapability, HostConfig};
    let host = |url: String| {
        HostConfig::new()
            .set_host(url)
            .set_capabilities([HostCapability::Pull, HostCapability::Resolve])
    };
    let mut out = Vec::new();
    if !mirrors.is_empty() {
        out.push(
            RegistryHostConfig::new().set_server("docker.io").set_hosts(
                mirrors
                    .iter()
                    .map(|m| host(m.trim_end_matches('/').to_string())),
            ),
        );
    }
    for reg in insecure {
        out.push(
            RegistryHostConfig::new()
                .set_server(reg.clone())
                .set_hosts([host(format!("http://{reg}"))]),
        );
    }
    out
}

impl Gke {
    pub async fn connect(cfg: GkeConfig) -> Result<Self, ProviderError> {
        let mut builder = ClusterManager::builder();
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.with_endpoint(endpoint.trim_end_matches('/'));
        }
        let adc = match &cfg.credentials {
            Credentials::ApplicationDefault => Some(
                google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| ProviderError::Api {
                        provider: PROVIDER,
                        action: "connect".into(),
                        message: format!(
                            "no application default credentials ({e}); set CLOUDFLOW_GKE_TOKEN or run `gcloud auth application-default login`"
                        ),
                    })?,
            ),
            _ => None,
        };
        builder = match &cfg.credentials {
            Credentials::Token(t) => builder.with_credentials(
                google_cloud_auth::credentials::Credentials::from(BearerToken(t.clone())),
            ),
            Credentials::Anonymous => builder.with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            ),
            Credentials::ApplicationDefault => {
                builder.with_credentials(adc.clone().expect("built above"))
            }
        };
        let client = builder.build().await.map_err(|e| ProviderError::Api {
            provider: PROVIDER,
            action: "connect".into(),
            message: format!(
                "{e}; set CLOUDFLOW_GKE_TOKEN or run `gcloud auth application-default login`"
            ),
        })?;
        Ok(Gke {
            cfg,
            client,
            adc,
            serial: tokio::sync::Mutex::new(()),
            seen: std::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &GkeConfig {
        &self.cfg
    }

    /// The cluster as the API reports it now; `None` when it does not exist.
    pub async fn inspect(&self) -> Result<Option<LiveCluster>, ProviderError> {
        match self
            .client
            .get_cluster()
            .set_name(self.cfg.cluster_name())
            .send()
            .await
        {
            Ok(c) => Ok(Some(live_cluster(&c))),
            Err(e) if is_not_found(&e) && !about_project(&e) => Ok(None),
            Err(e) => Err(self.spec_error("get cluster", &e)),
        }
    }

    /// Preflight before any mutation: the project and location exist (the server config of the
    /// location answers) and the credentials are accepted.
    pub async fn preflight(&self) -> Result<(), ProviderError> {
        match self
            .client
            .get_server_config()
            .set_name(self.cfg.parent())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.spec_error("read the server config", &e)),
        }
    }

    /// An API error that a spec value caused names the spec field; others stay API errors.
    fn spec_error(&self, action: &str, e: &google_cloud_gax::error::Error) -> ProviderError {
        let Some(status) = e.status() else {
            return api_error(action, e);
        };
        let msg = &status.message;
        match status.code {
            _ if about_project(e) => ProviderError::Spec {
                field: "provider.gke.project".into(),
                message: format!(
                    "project {:?}: {msg} (check the project id and that these credentials may use it)",
                    self.cfg.project
                ),
            },
            Code::InvalidArgument if msg.to_lowercase().contains("location") => {
                ProviderError::Spec {
                    field: "provider.gke.location".into(),
                    message: format!("location {:?}: {msg}", self.cfg.location),
                }
            }
            Code::InvalidArgument if msg.to_lowercase().contains("machine type") => {
                let pool = self
                    .cfg
                    .pools
                    .iter()
                    .find(|p| msg.contains(&format!("\"{}\"", p.machine_type)))
                    .map(|p| p.name.clone())
                    .unwrap_or_default();
                ProviderError::Spec {
                    field: self.cfg.pool_field(&pool, "machine_type"),
                    message: format!(
                        "{msg} (list them with `gcloud compute machine-types list --zones {}`)",
                        self.cfg.location
                    ),
                }
            }
            _ => api_error(action, e),
        }
    }

    /// Operations on this cluster that have not finished, oldest first.
    async fn running_operations(&self) -> Result<Vec<model::Operation>, ProviderError> {
        let ops = self
            .client
            .list_operations()
            .set_parent(self.cfg.parent())
            .send()
            .await
            .map_err(|e| api_error("list operations", &e))?;
        let target = format!("/clusters/{}", self.cfg.cluster);
        Ok(ops
            .operations
            .into_iter()
            .filter(|o| o.status != model::operation::Status::Done)
            .filter(|o| {
                o.target_link.ends_with(&target) || o.target_link.contains(&format!("{target}/"))
            })
            .collect())
    }

    /// Poll one operation until it is DONE (with backoff), showing each new status; an
    /// operation that ends in error returns its message.
    // `statusMessage` is deprecated in favour of `error`, but GKE still fills it in.
    #[allow(deprecated)]
    async fn wait_operation(
        &self,
        op: model::Operation,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        use backon::{ExponentialBuilder, Retryable};
        let name = format!("{}/operations/{}", self.cfg.parent(), op.name);
        let what = format!(
            "{} {}",
            enum_name(&op.operation_type)
                .to_lowercase()
                .replace('_', " "),
            op.target_link
                .rsplit("/clusters/")
                .next()
                .unwrap_or_default()
        );
        progress.step(&format!("gke: {what}: waiting for operation {}", op.name));
        let deadline = tokio::time::Instant::now() + self.cfg.operation_timeout;
        let last = std::sync::Mutex::new(String::new());
        #[derive(Debug)]
        enum Poll {
            NotYet,
            Failed(ProviderError),
        }
        let poll = || async {
            let op = self
                .client
                .get_operation()
                .set_name(name.clone())
                .send()
                .await
                .map_err(|e| Poll::Failed(api_error("get operation", &e)))?;
            let status = enum_name(&op.status);
            {
                let mut last = last.lock().unwrap();
                if *last != status {
                    tracing::info!("gke: {what}: {status}");
                    *last = status;
                }
            }
            if op.status != model::operation::Status::Done {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Poll::Failed(ProviderError::Api {
                        provider: PROVIDER,
                        action: what.clone(),
                        message: format!(
                            "operation {} still {:?} after {}s; it goes on in GKE — run `up` again to wait for it",
                            op.name,
                            op.status,
                            self.cfg.operation_timeout.as_secs()
                        ),
                    }));
                }
                return Err(Poll::NotYet);
            }
            let failed = op.error.as_ref().filter(|e| e.code != 0);
            if failed.is_some() || !op.status_message.is_empty() {
                let message = failed
                    .map(|e| e.message.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| op.status_message.clone());
                return Err(Poll::Failed(ProviderError::Api {
                    provider: PROVIDER,
                    action: what.clone(),
                    message: format!("operation {} failed: {message}", op.name),
                }));
            }
            Ok(())
        };
        poll.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_factor(1.5)
                .without_max_times(),
        )
        .when(|e| matches!(e, Poll::NotYet))
        .await
        .map_err(|e| match e {
            Poll::Failed(e) => e,
            Poll::NotYet => unreachable!("retried until done"),
        })?;
        progress.step(&format!("gke: {what}: done"));
        Ok(())
    }

    /// Wait for every operation still running on the cluster (e.g. one a killed run started).
    async fn wait_idle(&self, progress: &dyn Progress) -> Result<(), ProviderError> {
        for op in self.running_operations().await? {
            self.wait_operation(op, progress).await?;
        }
        Ok(())
    }

    /// Run one mutation: wait until the cluster is idle, send it, wait for its operation. A
    /// "running incompatible operation" refusal (someone else's change) is waited out.
    async fn mutate<F, Fut>(
        &self,
        action: &str,
        progress: &dyn Progress,
        call: F,
    ) -> Result<(), ProviderError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = google_cloud_container_v1::Result<model::Operation>>,
    {
        let _one = self.serial.lock().await;
        for _ in 0..20 {
            self.wait_idle(progress).await?;
            match call().await {
                Ok(op) => return self.wait_operation(op, progress).await,
                Err(e) if is_busy(&e) => {
                    progress.step(&format!(
                        "gke: {action}: another operation runs on the cluster; waiting for it"
                    ));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(self.spec_error(action, &e)),
            }
        }
        Err(ProviderError::Api {
            provider: PROVIDER,
            action: action.into(),
            message: "the cluster stayed busy with other operations; run `up` again".into(),
        })
    }

    fn node_pool(&self, spec: &PoolSpec) -> model::NodePool {
        let mut config = model::NodeConfig::new()
            .set_machine_type(spec.machine_type.clone())
            .set_spot(spec.spot)
            .set_labels([("cloudflow-cluster".to_string(), self.cfg.cluster.clone())]);
        let hosts = registry_hosts(&self.cfg.mirrors, &self.cfg.insecure);
        if !hosts.is_empty() {
            config = config
                .set_containerd_config(model::ContainerdConfig::new().set_registry_hosts(hosts));
        }
        let mut pool = model::NodePool::new()
            .set_name(spec.name.clone())
            .set_initial_node_count(spec.nodes as i32)
            .set_config(config);
        if spec.autoscaling.is_some() {
            pool = pool.set_autoscaling(autoscaling(spec.autoscaling));
        }
        pool
    }

    fn cluster_request(&self) -> model::Cluster {
        let mut cluster = model::Cluster::new()
            .set_name(self.cfg.cluster.clone())
            .set_description("made by cloudflow")
            .set_resource_labels([("cloudflow-cluster".to_string(), self.cfg.cluster.clone())])
            .set_node_pools(self.cfg.pools.iter().map(|p| self.node_pool(p)));
        if let Some(ch) = &self.cfg.release_channel {
            use model::release_channel::Channel;
            let channel = match ch.as_str() {
                "rapid" => Channel::Rapid,
                "stable" => Channel::Stable,
                "extended" => Channel::Extended,
                _ => Channel::Regular,
            };
            cluster =
                cluster.set_release_channel(model::ReleaseChannel::new().set_channel(channel));
        }
        cluster
    }

    async fn apply(
        &self,
        change: &Change,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let c = &self.client;
        match change {
            Change::AwaitCluster(_) => {
                self.wait_idle(progress).await?;
                let now = self.inspect().await?.map(|l| l.status).unwrap_or_default();
                if now != "RUNNING" {
                    return Err(ProviderError::Api {
                        provider: PROVIDER,
                        action: "wait for the cluster".into(),
                        message: format!(
                            "cluster {} is {now} with no operation running; see `gcloud container clusters describe {} --location {}`",
                            self.cfg.cluster, self.cfg.cluster, self.cfg.location
                        ),
                    });
                }
            }
            Change::CreateCluster => {
                let resource = Resource::new("cluster", &self.cfg.cluster);
                journal.intend(&resource)?;
                progress.step(&format!(
                    "gke: creating cluster {} in {} with {} pool(s)",
                    self.cfg.cluster,
                    self.cfg.location,
                    self.cfg.pools.len()
                ));
                self.mutate("create cluster", progress, || {
                    c.create_cluster()
                        .set_parent(self.cfg.parent())
                        .set_cluster(self.cluster_request())
                        .send()
                })
                .await?;
                journal.created(&resource)?;
            }
            Change::CreatePool(name) => {
                let spec = self.cfg.pool(name).expect("planned from the spec");
                let resource = Resource::new("node-pool", name);
                journal.intend(&resource)?;
                self.mutate(&format!("create node pool {name}"), progress, || {
                    c.create_node_pool()
                        .set_parent(self.cfg.cluster_name())
                        .set_node_pool(self.node_pool(spec))
                        .send()
                })
                .await?;
                journal.created(&resource)?;
            }
            Change::SetAutoscaling { pool, to } => {
                self.mutate(&format!("set autoscaling of {pool}"), progress, || {
                    c.set_node_pool_autoscaling()
                        .set_name(self.cfg.pool_name(pool))
                        .set_autoscaling(autoscaling(*to))
                        .send()
                })
                .await?;
            }
            Change::SetSize { pool, to, .. } => {
                self.set_size(pool, *to, progress).await?;
                let declared = self.cfg.pool(pool).map(|p| p.nodes).unwrap_or(*to);
                journal.pool_size(pool, declared, *to)?;
            }
            Change::DeletePool(name) => {
                self.mutate(&format!("delete node pool {name}"), progress, || {
                    c.delete_node_pool()
                        .set_name(self.cfg.pool_name(name))
                        .send()
                })
                .await?;
                journal.removed(&Resource::new("node-pool", name))?;
            }
        }
        Ok(())
    }

    async fn set_size(
        &self,
        pool: &str,
        to: u32,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        self.mutate(&format!("resize node pool {pool}"), progress, || {
            self.client
                .set_node_pool_size()
                .set_name(self.cfg.pool_name(pool))
                .set_node_count(to as i32)
                .send()
        })
        .await
    }

    /// The kubeconfig-free hand-off to the Kubernetes orchestrator, from a RUNNING cluster.
    /// A bearer token from the application default credentials (the GKE API accepts the
    /// same token as the cluster's Kubernetes API).
    async fn adc_token(&self) -> Option<SecretToken> {
        let creds = self.adc.as_ref()?;
        match creds.headers(http::Extensions::new()).await {
            Ok(google_cloud_auth::credentials::CacheableResource::New { data, .. }) => data
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(SecretToken::new),
            _ => None,
        }
    }

    async fn endpoint_of(&self, live: &LiveCluster) -> Result<KubeEndpoint, ProviderError> {
        use base64::Engine;
        if live.status != "RUNNING" || live.endpoint.is_empty() {
            return Err(ProviderError::Api {
                provider: PROVIDER,
                action: "read the cluster endpoint".into(),
                message: format!(
                    "cluster {} is {}, not RUNNING",
                    self.cfg.cluster, live.status
                ),
            });
        }
        let ca_pem = base64::engine::general_purpose::STANDARD
            .decode(live.ca_base64.trim())
            .map_err(|e| ProviderError::Api {
                provider: PROVIDER,
                action: "read the cluster CA".into(),
                message: format!("masterAuth.clusterCaCertificate is not base64: {e}"),
            })?;
        let adc = self.adc_token().await;
        let auth = match (&self.cfg.credentials, adc) {
            (Credentials::Token(t), _) => KubeAuth::Token(t.clone()),
            (_, Some(t)) => KubeAuth::Token(t),
            _ => KubeAuth::Exec {
                command: "gke-gcloud-auth-plugin".into(),
                args: Vec::new(),
                install_hint: "Install gke-gcloud-auth-plugin: `gcloud components install gke-gcloud-auth-plugin`".into(),
            },
        };
        Ok(KubeEndpoint {
            server: format!("https://{}", live.endpoint),
            ca_pem,
            auth,
        })
    }
}

#[async_trait::async_trait]
impl Provider for Gke {
    fn kind(&self) -> &'static str {
        PROVIDER
    }

    fn owns_machines(&self) -> bool {
        true
    }

    /// GKE's nodes are not SSH machines: nothing for the core to bootstrap.
    async fn list(&self) -> Result<Vec<Machine>, ProviderError> {
        Ok(Vec::new())
    }

    fn plan(&self, _existing: &[Machine]) -> Vec<ProviderAction> {
        Vec::new()
    }

    /// Everything `create` would change, read from the API.
    async fn drift(&self) -> Result<Vec<ProviderAction>, ProviderError> {
        let live = self.inspect().await?;
        self.seen.lock().unwrap().clone_from(&live);
        if live.is_none() {
            // Preflight before a plan that creates: a bad project or location fails here,
            // with its spec field, before anything is sent.
            self.preflight().await?;
        }
        Ok(plan::changes(&self.cfg, live.as_ref(), &self.cfg.recorded)
            .iter()
            .map(|c| c.action(&self.cfg))
            .collect())
    }

    async fn plan_notes(&self) -> Result<Vec<String>, ProviderError> {
        let seen = self.seen.lock().unwrap().clone();
        Ok(plan::notes(&self.cfg, seen.as_ref(), &self.cfg.recorded))
    }

    async fn create(
        &self,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<Vec<Machine>, ProviderError> {
        self.preflight().await?;
        // A run killed mid-operation left it running: wait for it, then plan from what it made.
        self.wait_idle(progress).await?;
        let live = self.inspect().await?;
        for change in plan::changes(&self.cfg, live.as_ref(), &self.cfg.recorded) {
            self.apply(&change, journal, progress).await?;
        }
        let live = self.inspect().await?.ok_or_else(|| ProviderError::Api {
            provider: PROVIDER,
            action: "create cluster".into(),
            message: "the cluster is not listed after its operation finished".into(),
        })?;
        // It exists, whichever run made it (one killed before recording it included).
        journal.created(&Resource::new("cluster", &self.cfg.cluster))?;
        self.endpoint_of(&live).await?;
        Ok(Vec::new())
    }

    async fn destroy(
        &self,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<DestroyReport, ProviderError> {
        let mut report = DestroyReport::default();
        let resource = Resource::new("cluster", &self.cfg.cluster);
        self.wait_idle(progress).await?;
        if self.inspect().await?.is_some() {
            progress.step(&format!("gke: deleting cluster {}", self.cfg.cluster));
            let _one = self.serial.lock().await;
            let mut busy = 0;
            let op = loop {
                match self
                    .client
                    .delete_cluster()
                    .set_name(self.cfg.cluster_name())
                    .send()
                    .await
                {
                    Ok(op) => break Some(op),
                    Err(e) if is_not_found(&e) => break None,
                    Err(e) if is_busy(&e) && busy < 20 => {
                        busy += 1;
                        self.wait_idle(progress).await?;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => return Err(api_error("delete cluster", &e)),
                }
            };
            if let Some(op) = op {
                self.wait_operation(op, progress).await?;
            }
        }
        // Verified from the API, not assumed.
        if self.inspect().await?.is_some() {
            report
                .left
                .push((resource, "still listed by the GKE API".into()));
        } else {
            journal.removed(&resource)?;
            report.removed.push(resource);
        }
        Ok(report)
    }

    async fn managed_cluster(&self) -> Result<Option<ManagedCluster>, ProviderError> {
        let Some(live) = self.inspect().await? else {
            return Ok(None);
        };
        Ok(Some(ManagedCluster {
            name: self.cfg.cluster.clone(),
            location: self.cfg.location.clone(),
            status: live.status.clone(),
            version: live.version.clone(),
            nodes: live.nodes,
            pools: live
                .pools
                .iter()
                .map(|p| PoolView {
                    name: p.name.clone(),
                    machine_type: p.machine_type.clone(),
                    size: plan::current_size(p, self.cfg.recorded.get(&p.name)),
                    autoscaling: p.autoscaling,
                    spot: p.spot,
                    version: p.version.clone(),
                    status: p.status.clone(),
                })
                .collect(),
        }))
    }

    async fn scale_pool(
        &self,
        pool: &str,
        count: u32,
        journal: &dyn Journal,
        progress: &dyn Progress,
    ) -> Result<(), ProviderError> {
        let live = self.inspect().await?.ok_or_else(|| ProviderError::Api {
            provider: PROVIDER,
            action: format!("resize node pool {pool}"),
            message: format!(
                "cluster {} does not exist; run `up` first",
                self.cfg.cluster
            ),
        })?;
        if !live.pools.iter().any(|p| p.name == pool) {
            return Err(ProviderError::Spec {
                field: "--pool".into(),
                message: format!(
                    "cluster {} has no node pool {pool:?} (it has: {})",
                    self.cfg.cluster,
                    live.pools
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        self.set_size(pool, count, progress).await?;
        let declared = self.cfg.pool(pool).map(|p| p.nodes).unwrap_or(count);
        journal.pool_size(pool, declared, count)
    }

    async fn kubernetes(&self) -> Result<Option<KubeEndpoint>, ProviderError> {
        match self.inspect().await? {
            Some(live) => self.endpoint_of(&live).await.map(Some),
            None => Ok(None),
        }
    }
}
