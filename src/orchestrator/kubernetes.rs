//! Kubernetes through `kube` with typed `k8s-openapi` objects: an environment is a namespace,
//! a colour is a Deployment `<svc>-<colour>`, the Service `<svc>` selects the live colour and
//! `<svc>-preview` the other, and the health gate is every replica passing its readiness probe
//! (the Deployment Available, observed generation current). Every write is a server-side apply
//! with field manager `cloudflow`; waiting is a watch, not a polling loop; scaling goes through
//! the scale subresource.
//!
//! Workload names handed to `deploy/` are `<namespace>/<name>`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use cloudflow_provider_api::{KubeAuth, KubeEndpoint};
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, Namespace, Pod, PodSpec, PodTemplateSpec, Probe, Secret,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use sha2::Digest;

use super::{Gate, Orchestrator, ProxyFile};
use crate::commands::swarm::{LiveService, SecretRef, ServiceRun};
use crate::deploy::{self, ServiceRoute, Task};
use crate::error::{Error, Result};
use crate::spec::Strategy;
use crate::state::Color;

const MANAGER: &str = "cloudflow";
/// Where the reverse proxy lives.
pub const SYSTEM_NAMESPACE: &str = "cloudflow-system";
const PROXY: &str = "cloudflow-proxy";
/// The proxy ConfigMap's routes.
const ROUTES_KEY: &str = "routes.conf";
/// With `proxy.https`, the ACME HTTP-01 challenges being validated: one exact `location` per
/// token, included in every port-80 server of the routes (not a `.conf`, which nginx would
/// load at the http level). They live in the ConfigMap, not in a volume of their own: a pod
/// sees a changed ConfigMap only after the kubelet's next sync (up to a minute or more), a
/// rollout starts pods that have it.
const CHALLENGES_KEY: &str = "acme-challenges.inc";
/// The installed certificates and keys (`<name>-<fingerprint>.crt|key`), mounted 0600 at
/// [`TLS_DIR`] in the proxy's pods.
const PROXY_TLS: &str = "cloudflow-proxy-tls";
const TLS_DIR: &str = "/etc/nginx/tls";
/// The ACME account's credentials (`acme-account-<directory>.json`): mounted nowhere.
const ACME_ACCOUNT: &str = "cloudflow-acme-account";
/// Where a service's secrets are mounted, as with Docker secrets.
const SECRETS_DIR: &str = "/run/secrets";

/// How the proxy is reached from outside the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expose {
    /// A `LoadBalancer` Service (GKE, any cloud cluster).
    LoadBalancer,
    /// A host port on every node that runs the proxy (k3s on our machines).
    HostPort,
}

pub struct Kubernetes {
    pub client: Client,
    pub cluster: String,
    pub expose: Expose,
    pub proxy_replicas: u32,
    /// `proxy.https.port`: the proxy also listens on 443 (published on this port) and mounts
    /// the certificates' Secret.
    pub https_port: Option<u16>,
}

/// Where a file of the proxy's directory (see [`Orchestrator::write_proxy_files`]) lives on
/// Kubernetes.
#[derive(Debug, PartialEq)]
enum ProxyPlace {
    /// A key of the Secret [`PROXY_TLS`].
    Tls(String),
    /// A challenge token in the ConfigMap's [`CHALLENGES_KEY`].
    Challenge(String),
    /// A key of the Secret [`ACME_ACCOUNT`].
    Account(String),
}

fn proxy_place(path: &str) -> Result<ProxyPlace> {
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let place = if let Some(f) = path.strip_prefix("tls/") {
        ProxyPlace::Tls(f.to_string())
    } else if let Some(t) = path.strip_prefix("acme/") {
        ProxyPlace::Challenge(t.to_string())
    } else if path.starts_with("acme-account-") {
        ProxyPlace::Account(path.to_string())
    } else {
        return Err(Error::Other(format!(
            "the Kubernetes proxy keeps no file {path:?}"
        )));
    };
    let (ProxyPlace::Tls(k) | ProxyPlace::Challenge(k) | ProxyPlace::Account(k)) = &place;
    if !key_ok(k) {
        return Err(Error::Other(format!(
            "proxy file {path:?}: only letters, digits, '-', '_' and '.' can name it"
        )));
    }
    Ok(place)
}

/// Proxy files by where they live: keys of the two Secrets (a value, or `None` to remove
/// it), and challenge tokens.
#[derive(Default)]
struct Placed {
    tls: BTreeMap<String, Option<Vec<u8>>>,
    account: BTreeMap<String, Option<Vec<u8>>>,
    challenges: BTreeMap<String, Option<Vec<u8>>>,
}

fn place_all(files: impl IntoIterator<Item = (String, Option<Vec<u8>>)>) -> Result<Placed> {
    let mut out = Placed::default();
    for (path, value) in files {
        let (map, key) = match proxy_place(&path)? {
            ProxyPlace::Tls(k) => (&mut out.tls, k),
            ProxyPlace::Account(k) => (&mut out.account, k),
            ProxyPlace::Challenge(t) => (&mut out.challenges, t),
        };
        map.insert(key, value);
    }
    Ok(out)
}

/// The challenges file: one exact location per token answering its key authorization. Both
/// are base64url (RFC 8555), checked by [`proxy_place`] and here, so nothing else reaches
/// nginx's configuration.
fn render_challenges(challenges: &BTreeMap<String, String>) -> String {
    let mut out = String::from(
        "# ACME HTTP-01 challenges being validated; generated by cloudflow, do not edit.\n",
    );
    for (token, answer) in challenges {
        out.push_str(&format!(
            "location = /.well-known/acme-challenge/{token} {{\n    default_type text/plain;\n    return 200 \"{answer}\";\n}}\n"
        ));
    }
    out
}

fn parse_challenges(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut token: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if let Some(t) = line
            .strip_prefix("location = /.well-known/acme-challenge/")
            .and_then(|r| r.strip_suffix(" {"))
        {
            token = Some(t.to_string());
        } else if let Some(answer) = line
            .strip_prefix("return 200 \"")
            .and_then(|r| r.strip_suffix("\";"))
            && let Some(t) = token.take()
        {
            out.insert(t, answer.to_string());
        }
    }
    out
}

fn kerr(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(s) => Error::Other(format!(
            "Kubernetes API: {what}: {} ({} {})",
            s.message, s.code, s.reason
        )),
        other => Error::Other(format!("Kubernetes API: {what}: {other}")),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// `<env>/<svc>-<colour>` (a Deployment in the environment's namespace); in-place: `<env>/<svc>`.
pub fn workload_name(env: &str, service: &str, strategy: Strategy, color: Color) -> String {
    match strategy {
        Strategy::BlueGreen => format!("{env}/{service}-{color}"),
        Strategy::InPlace => format!("{env}/{service}"),
    }
}

/// The proxy's workload name.
pub fn proxy_workload() -> String {
    format!("{SYSTEM_NAMESPACE}/{PROXY}")
}

/// A volume name (a DNS label) for a secret's target file name, which may hold capitals,
/// dots and underscores: a short hash keeps `a.b` and `a_b` apart.
fn secret_volume(target: &str) -> String {
    let h: String = sha2::Sha256::digest(target.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("secret-{h}")
}

/// One proxy pod per node.
fn proxy_anti_affinity() -> k8s_openapi::api::core::v1::Affinity {
    use k8s_openapi::api::core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity};
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "cloudflow.proxy".to_string(),
                        "nginx".to_string(),
                    )])),
                    ..Default::default()
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Watch `name` until the object with `uid` is gone (at most 300 s); `what` names it in errors.
async fn wait_gone<K>(api: Api<K>, name: &str, uid: &str, what: &str) -> Result<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(
        Duration::from_secs(300),
        kube::runtime::wait::await_condition(
            api,
            name,
            kube::runtime::wait::conditions::is_deleted(uid),
        ),
    )
    .await
    .map_err(|_| Error::Other(format!("{what} was still being deleted after 300s")))?
    .map_err(|e| Error::Other(format!("Kubernetes API: watching {what}: {e}")))?;
    Ok(())
}

/// `ns/name` → (ns, name).
fn split(workload: &str) -> (&str, &str) {
    workload.split_once('/').unwrap_or(("default", workload))
}

/// A label selector string from `(key, value)` pairs.
fn selector(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn apply() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// What a pod is, in the deploy core's words: running (Ready), starting, rejected (an image
/// that cannot be pulled, a crash loop), failed; stopping when it is being deleted.
fn task_of(pod: &Pod) -> Task {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let cs = status.container_statuses.iter().flatten().next();
    let waiting = cs
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.waiting.clone());
    let running = cs
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    let (state, error) = if let Some(w) = waiting {
        let reason = w.reason.unwrap_or_default();
        let message = w.message.unwrap_or_default();
        let bad = [
            "ImagePullBackOff",
            "ErrImagePull",
            "InvalidImageName",
            "CrashLoopBackOff",
            "CreateContainerConfigError",
        ];
        let text = if message.is_empty() {
            reason.clone()
        } else {
            format!("{reason}: {message}")
        };
        if bad.contains(&reason.as_str()) {
            ("rejected", text)
        } else {
            ("starting", text)
        }
    } else if running && ready {
        ("running", String::new())
    } else if running {
        (
            "starting",
            "running but not Ready (its readiness probe fails)".to_string(),
        )
    } else if status.phase.as_deref() == Some("Failed") {
        ("failed", status.reason.unwrap_or_else(|| "Failed".into()))
    } else {
        ("starting", status.phase.unwrap_or_else(|| "Pending".into()))
    };
    let mut addresses = BTreeMap::new();
    if let Some(ip) = &status.pod_ip {
        addresses.insert("pod".to_string(), ip.clone());
    }
    Task {
        id: pod.metadata.uid.clone().unwrap_or_default(),
        name: pod.name_any(),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| "-".into()),
        desired: if pod.metadata.deletion_timestamp.is_some() {
            "shutdown".into()
        } else {
            "running".into()
        },
        state: state.into(),
        error,
        image: pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default(),
        addresses,
    }
}

/// Every replica Ready and Available as the Deployment controller reports it.
fn deployment_done(d: &Deployment, replicas: u32) -> bool {
    let Some(s) = &d.status else {
        return replicas == 0;
    };
    let want = replicas as i32;
    let current = s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let spec_ok = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) == want;
    current
        && spec_ok
        && s.replicas.unwrap_or(0) == want
        && s.updated_replicas.unwrap_or(0) == want
        && s.ready_replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
}

fn meta(name: &str, ns: Option<&str>, labels: &BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        labels: Some(labels.clone()),
        ..Default::default()
    }
}

/// The cluster as its API reports it, for `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KubeStatus {
    /// name, address, role (manager = control plane), status (ready / not-ready).
    pub nodes: Vec<serde_json::Value>,
    /// Namespaces this cluster's environments live in.
    pub namespaces: Vec<String>,
    /// Every Deployment cloudflow made: env, service, colour, image, ready/wanted replicas.
    pub workloads: Vec<serde_json::Value>,
}

/// The proxy container's preStop hook (within the default 30 s grace period).
const PROXY_PRE_STOP: &str = "sleep 3; nginx -s quit; sleep 25";

/// What the proxy's objects depend on besides their content.
#[derive(Debug, Clone, Copy)]
struct ProxyShape {
    expose: Expose,
    replicas: u32,
    https_port: Option<u16>,
}

/// The proxy's Deployment: nginx with the routes' ConfigMap (and, with HTTPS, the
/// certificates' Secret) mounted; `checksum` (of the ConfigMap) on the pod template rolls it
/// when they change.
fn proxy_deployment(
    shape: ProxyShape,
    labels: &BTreeMap<String, String>,
    image: &str,
    port: u16,
    checksum: String,
) -> Deployment {
    let select = BTreeMap::from([("cloudflow.proxy".to_string(), "nginx".to_string())]);
    Deployment {
        metadata: meta(PROXY, Some(SYSTEM_NAMESPACE), labels),
        spec: Some(DeploymentSpec {
            replicas: Some(shape.replicas as i32),
            selector: LabelSelector {
                match_labels: Some(select),
                ..Default::default()
            },
            // On a host port, a surge pod could not bind: replace one pod at a time.
            strategy: (shape.expose == Expose::HostPort).then(|| DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    annotations: Some(BTreeMap::from([(
                        "cloudflow.config-checksum".to_string(),
                        checksum,
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    // On our machines the proxy runs where Swarm's did: on managers
                    // (control-plane nodes), never two on one node (the host port).
                    node_selector: (shape.expose == Expose::HostPort).then(|| {
                        BTreeMap::from([(
                            "node-role.kubernetes.io/control-plane".to_string(),
                            "true".to_string(),
                        )])
                    }),
                    affinity: (shape.expose == Expose::HostPort).then(proxy_anti_affinity),
                    containers: vec![Container {
                        name: "nginx".into(),
                        image: Some(image.to_string()),
                        ports: Some(
                            std::iter::once(ContainerPort {
                                container_port: 80,
                                host_port: (shape.expose == Expose::HostPort)
                                    .then_some(port as i32),
                                name: Some("http".into()),
                                ..Default::default()
                            })
                            .chain(shape.https_port.map(|p| ContainerPort {
                                container_port: 443,
                                host_port: (shape.expose == Expose::HostPort).then_some(p as i32),
                                name: Some("https".into()),
                                ..Default::default()
                            }))
                            .collect(),
                        ),
                        readiness_probe: Some(Probe {
                            tcp_socket: Some(k8s_openapi::api::core::v1::TCPSocketAction {
                                port: IntOrString::Int(80),
                                ..Default::default()
                            }),
                            period_seconds: Some(2),
                            ..Default::default()
                        }),
                        // Kubernetes stops a container with SIGTERM, a fast shutdown for
                        // nginx: a replaced pod first leaves the endpoints (3 s), then quits
                        // gracefully, so requests in flight finish (as `nginx -s reload` lets
                        // them on Swarm). The container ends when nginx has drained.
                        lifecycle: Some(Lifecycle {
                            pre_stop: Some(LifecycleHandler {
                                exec: Some(ExecAction {
                                    command: Some(
                                        ["/bin/sh", "-c", PROXY_PRE_STOP]
                                            .map(String::from)
                                            .to_vec(),
                                    ),
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        volume_mounts: Some(
                            std::iter::once(VolumeMount {
                                name: "routes".into(),
                                mount_path: "/etc/nginx/conf.d".into(),
                                read_only: Some(true),
                                ..Default::default()
                            })
                            .chain(shape.https_port.map(|_| VolumeMount {
                                name: "tls".into(),
                                mount_path: TLS_DIR.into(),
                                read_only: Some(true),
                                ..Default::default()
                            }))
                            .collect(),
                        ),
                        ..Default::default()
                    }],
                    volumes: Some(
                        std::iter::once(Volume {
                            name: "routes".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: PROXY.into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        // Optional: the proxy starts before any certificate exists.
                        .chain(shape.https_port.map(|_| Volume {
                            name: "tls".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(PROXY_TLS.into()),
                                default_mode: Some(0o600),
                                optional: Some(true),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }))
                        .collect(),
                    ),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Behind a load balancer: the Service that publishes the proxy (`http`, and `https`).
fn proxy_service(shape: ProxyShape, labels: &BTreeMap<String, String>, port: u16) -> Service {
    Service {
        metadata: meta(PROXY, Some(SYSTEM_NAMESPACE), labels),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            selector: Some(BTreeMap::from([(
                "cloudflow.proxy".to_string(),
                "nginx".to_string(),
            )])),
            ports: Some(
                std::iter::once(ServicePort {
                    name: Some("http".into()),
                    port: port as i32,
                    target_port: Some(IntOrString::Int(80)),
                    ..Default::default()
                })
                .chain(shape.https_port.map(|p| ServicePort {
                    name: Some("https".into()),
                    port: p as i32,
                    target_port: Some(IntOrString::Int(443)),
                    ..Default::default()
                }))
                .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Kubernetes {
    pub async fn status(&self) -> Result<KubeStatus> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let nodes = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| kerr("list nodes", e))?
            .items
            .iter()
            .map(|n| {
                let status = n.status.clone().unwrap_or_default();
                let address = status
                    .addresses
                    .iter()
                    .flatten()
                    .find(|a| a.type_ == "InternalIP")
                    .map(|a| a.address.clone())
                    .unwrap_or_default();
                let ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let manager = n
                    .labels()
                    .contains_key("node-role.kubernetes.io/control-plane")
                    || n.labels().contains_key("node-role.kubernetes.io/master");
                json!({"name": n.name_any(), "address": address,
                       "role": if manager { "manager" } else { "worker" },
                       "status": if ready { "ready" } else { "not-ready" }})
            })
            .collect();
        let ns_api: Api<Namespace> = Api::all(self.client.clone());
        let namespaces = ns_api
            .list(&ListParams::default().labels(&format!("cloudflow.cluster={}", self.cluster)))
            .await
            .map_err(|e| kerr("list namespaces", e))?
            .items
            .iter()
            .map(|n| n.name_any())
            .collect();
        let api: Api<Deployment> = Api::all(self.client.clone());
        let workloads = api
            .list(&ListParams::default().labels(&format!("cloudflow.cluster={}", self.cluster)))
            .await
            .map_err(|e| kerr("list Deployments", e))?
            .items
            .iter()
            .map(|d| {
                let l = d.labels();
                json!({
                    "namespace": d.namespace(),
                    "name": d.name_any(),
                    "env": l.get("cloudflow.env"),
                    "service": l.get("cloudflow.service"),
                    "color": l.get("cloudflow.color"),
                    "image": d.spec.as_ref().and_then(|s| s.template.spec.as_ref())
                        .and_then(|p| p.containers.first()).and_then(|c| c.image.clone()),
                    "ready": d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
                    "replicas": d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                })
            })
            .collect();
        Ok(KubeStatus {
            nodes,
            namespaces,
            workloads,
        })
    }

    /// Wait (a watch on nodes) until every node in `names` is registered and Ready.
    pub async fn wait_nodes(&self, names: &[String], timeout: Duration) -> Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let api: Api<Node> = Api::all(self.client.clone());
        let (reader, writer) = reflector::store::<Node>();
        let stream = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let ready = |n: &Node| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        };
        let missing = || -> Vec<String> {
            let nodes = reader.state();
            names
                .iter()
                .filter(|name| !nodes.iter().any(|n| &n.name_any() == *name && ready(n)))
                .cloned()
                .collect()
        };
        let watch = async {
            let mut listed = false;
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::debug!("watching nodes: {e}");
                        continue;
                    }
                };
                listed |= matches!(ev, watcher::Event::InitDone);
                if listed && missing().is_empty() {
                    return Ok(());
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, watch).await.map_err(|_| {
            Error::Other(format!(
                "gave up after {}s waiting for node(s) to be Ready: {}",
                timeout.as_secs(),
                missing().join(", ")
            ))
        })?
    }

    /// Cordon `node` and move its pods away (their controllers start them elsewhere), then
    /// wait until none is left on it. The node itself goes with its machine (`delete_node`).
    pub async fn drain_node(&self, node: &str, timeout: Duration) -> Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await
            .map_err(|e| kerr(&format!("cordon node {node}"), e))?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
        for p in pods
            .list(&on_node)
            .await
            .map_err(|e| kerr("list pods", e))?
            .items
        {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            match api.delete(&p.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(kerr(&format!("evict pod {} from {node}", p.name_any()), e)),
            }
        }
        // Watch the node's pods until none is left.
        let (reader, writer) = reflector::store::<Pod>();
        let stream = reflector(
            writer,
            watcher(
                pods,
                watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            ),
        )
        .default_backoff();
        let mut stream = std::pin::pin!(stream);
        let watch = async {
            let mut listed = false;
            while let Some(ev) = stream.next().await {
                let Ok(ev) = ev else { continue };
                listed |= matches!(ev, watcher::Event::InitDone);
                if listed && reader.state().is_empty() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, watch).await.map_err(|_| {
            Error::Other(format!(
                "node {node}: pods were still on it after {}s",
                timeout.as_secs()
            ))
        })
    }

    pub async fn delete_node(&self, node: &str) -> Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: Api<Node> = Api::all(self.client.clone());
        match nodes.delete(node, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kerr(&format!("delete node {node}"), e)),
        }
    }

    /// Every Deployment of this cluster: workload → (ready, desired), as the API reports it.
    pub async fn workloads(&self) -> Result<BTreeMap<String, (u32, u32)>> {
        let api: Api<Deployment> = Api::all(self.client.clone());
        let found = api
            .list(&ListParams::default().labels(&format!("cloudflow.cluster={}", self.cluster)))
            .await
            .map_err(|e| kerr("list Deployments", e))?;
        Ok(found
            .items
            .iter()
            .map(|d| {
                let ready = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0)
                    .max(0) as u32;
                let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
                (
                    format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()),
                    (ready, desired),
                )
            })
            .collect())
    }

    fn deployments(&self, ns: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn pods(&self, ns: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn cluster_labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("cloudflow.cluster".to_string(), self.cluster.clone());
        l
    }

    /// The Deployment for a service run: one container, the service's port with a readiness
    /// probe on its health path, secrets as files under /run/secrets.
    fn deployment(&self, run: &ServiceRun) -> Deployment {
        let (ns, name) = split(&run.name);
        // Pods are selected by every cloudflow label but the cluster's.
        let select: BTreeMap<String, String> = run
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "cloudflow.cluster")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let container_name = run
            .labels
            .get("cloudflow.service")
            .cloned()
            .unwrap_or_else(|| name.to_string());
        // A declared health path must answer 2xx/3xx (an HTTP probe); without one, the port
        // answering is enough (Swarm's gate accepts any answer below 500 on `/`).
        let probe = run.port.map(|port| Probe {
            http_get: (run.health_path != "/").then(|| HTTPGetAction {
                path: Some(run.health_path.clone()),
                port: IntOrString::Int(port as i32),
                ..Default::default()
            }),
            tcp_socket: (run.health_path == "/").then(|| {
                k8s_openapi::api::core::v1::TCPSocketAction {
                    port: IntOrString::Int(port as i32),
                    ..Default::default()
                }
            }),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        });
        let volumes: Vec<Volume> = run
            .secrets
            .iter()
            .map(|s| Volume {
                name: secret_volume(&s.target),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(s.name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let mounts: Vec<VolumeMount> = run
            .secrets
            .iter()
            .map(|s| VolumeMount {
                name: secret_volume(&s.target),
                mount_path: format!("{SECRETS_DIR}/{}", s.target),
                sub_path: Some("value".into()),
                read_only: Some(true),
                ..Default::default()
            })
            .collect();
        Deployment {
            metadata: meta(name, Some(ns), &run.labels),
            spec: Some(DeploymentSpec {
                replicas: Some(run.replicas as i32),
                selector: LabelSelector {
                    match_labels: Some(select),
                    ..Default::default()
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    ..Default::default()
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(run.labels.clone()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: container_name,
                            image: Some(run.image.clone()),
                            env: (!run.env.is_empty()).then(|| {
                                run.env
                                    .iter()
                                    .map(|(k, v)| EnvVar {
                                        name: k.clone(),
                                        value: Some(v.clone()),
                                        ..Default::default()
                                    })
                                    .collect()
                            }),
                            ports: run.port.map(|p| {
                                vec![ContainerPort {
                                    container_port: p as i32,
                                    name: Some("http".into()),
                                    ..Default::default()
                                }]
                            }),
                            readiness_probe: probe,
                            volume_mounts: (!mounts.is_empty()).then_some(mounts),
                            ..Default::default()
                        }],
                        volumes: (!volumes.is_empty()).then_some(volumes),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn apply_deployment(&self, run: &ServiceRun) -> Result<()> {
        let (ns, name) = split(&run.name);
        // A Deployment a killed run left being deleted would take the new one with it.
        if let Some(d) = self
            .deployments(ns)
            .get_opt(name)
            .await
            .map_err(|e| kerr("get Deployment", e))?
            .filter(|d| d.metadata.deletion_timestamp.is_some())
        {
            let uid = d.metadata.uid.unwrap_or_default();
            wait_gone(
                self.deployments(ns),
                name,
                &uid,
                &format!("Deployment {ns}/{name}"),
            )
            .await?;
        }
        self.deployments(ns)
            .patch(name, &apply(), &Patch::Apply(&self.deployment(run)))
            .await
            .map_err(|e| kerr(&format!("apply Deployment {ns}/{name}"), e))?;
        Ok(())
    }

    /// Watch the pods of `workload` until `done` holds for them (and the Deployment), a pod
    /// is rejected (fails at once, naming it), or `timeout` passes (the error names every
    /// replica that is not Ready and why).
    async fn watch_until(
        &self,
        workload: &str,
        replicas: u32,
        image: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<Task>> {
        let (ns, name) = split(workload);
        let deployments = self.deployments(ns);
        let sel = match deployments
            .get_opt(name)
            .await
            .map_err(|e| kerr("get Deployment", e))?
        {
            Some(d) => d
                .spec
                .and_then(|s| s.selector.match_labels)
                .unwrap_or_default()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            None if replicas == 0 => {
                // Removed: wait for its pods to go (they carry the workload's labels).
                match name.rsplit_once('-') {
                    Some((svc, c)) if c == "blue" || c == "green" => {
                        format!("cloudflow.env={ns},cloudflow.service={svc},cloudflow.color={c}")
                    }
                    _ => format!("cloudflow.env={ns},cloudflow.service={name}"),
                }
            }
            None => {
                return Err(Error::Other(format!(
                    "{workload}: the Deployment does not exist"
                )));
            }
        };
        let (reader, writer) = reflector::store::<Pod>();
        let stream = reflector(
            writer,
            watcher(self.pods(ns), watcher::Config::default().labels(&sel)),
        )
        .default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut listed = false;
        let mut last = deploy::Convergence {
            running: 0,
            stopping: 0,
            done: false,
            last_error: None,
        };
        let mut tasks: Vec<Task> = Vec::new();
        let watch = async {
            while let Some(ev) = stream.next().await {
                // The watcher relists after an expired resourceVersion or a dropped watch
                // (with backoff); only the deadline ends the wait.
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::debug!("watching pods of {workload}: {e}");
                        continue;
                    }
                };
                if matches!(ev, watcher::Event::InitDone) {
                    listed = true;
                }
                if !listed || matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_)) {
                    continue;
                }
                tasks = reader.state().iter().map(|p| task_of(p)).collect();
                last = deploy::convergence(&tasks, replicas, image);
                let rejected: Vec<&Task> = tasks
                    .iter()
                    .filter(|t| t.desired == "running" && t.state == "rejected")
                    .filter(|t| image.is_none_or(|i| deploy::image_matches(&t.image, i)))
                    .collect();
                if !rejected.is_empty() {
                    return Err(Error::Other(format!(
                        "{workload}: {} replica(s) cannot start:\n{}",
                        rejected.len(),
                        rejected
                            .iter()
                            .map(|t| format!("  - pod {} on {}: {}", t.name, t.node, t.error))
                            .collect::<Vec<_>>()
                            .join("\n")
                    )));
                }
                if last.done {
                    return Ok(());
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(timeout, watch).await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                let not_ready: Vec<String> = tasks
                    .iter()
                    .filter(|t| t.state != "running" || t.desired != "running")
                    .map(|t| {
                        format!(
                            "  - pod {} on {}: {}",
                            t.name,
                            t.node,
                            if t.error.is_empty() {
                                t.state.as_str()
                            } else {
                                t.error.as_str()
                            }
                        )
                    })
                    .collect();
                return Err(Error::Other(format!(
                    "{workload}: gave up after {}s waiting for {replicas} Ready replica(s){}: {} Ready, {} still stopping{}",
                    timeout.as_secs(),
                    image.map(|i| format!(" of {i}")).unwrap_or_default(),
                    last.running,
                    last.stopping,
                    if not_ready.is_empty() {
                        String::new()
                    } else {
                        format!("\n{}", not_ready.join("\n"))
                    }
                )));
            }
        }
        if replicas > 0 {
            // The controller's own verdict: Available, every replica updated and Ready.
            let cond =
                move |d: Option<&Deployment>| d.is_some_and(|d| deployment_done(d, replicas));
            tokio::time::timeout(
                timeout,
                kube::runtime::wait::await_condition(deployments, name, cond),
            )
            .await
            .map_err(|_| {
                Error::Other(format!(
                    "{workload}: its pods are Ready but the Deployment did not report {replicas} available replica(s) within {}s",
                    timeout.as_secs()
                ))
            })?
            .map_err(|e| Error::Other(format!("Kubernetes API: watching {workload}: {e}")))?;
        }
        Ok(tasks
            .into_iter()
            .filter(|t| t.desired == "running" && t.state == "running")
            .collect())
    }

    fn proxy_labels(&self) -> BTreeMap<String, String> {
        let mut l = self.cluster_labels();
        l.insert("cloudflow.proxy".into(), "nginx".into());
        l
    }

    /// The proxy's ConfigMap: the routes and, with HTTPS, the challenges being validated.
    fn proxy_config_map(&self, routes: &str, challenges: &str) -> ConfigMap {
        let mut data = BTreeMap::from([(ROUTES_KEY.to_string(), routes.to_string())]);
        if self.https_port.is_some() {
            data.insert(CHALLENGES_KEY.to_string(), challenges.to_string());
        }
        ConfigMap {
            metadata: meta(PROXY, Some(SYSTEM_NAMESPACE), &self.proxy_labels()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// The proxy ConfigMap's routes and challenges now (empty when there is none).
    async fn proxy_data(&self) -> Result<(Option<String>, String)> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let data = cms
            .get_opt(PROXY)
            .await
            .map_err(|e| kerr("get the proxy ConfigMap", e))?
            .and_then(|c| c.data)
            .unwrap_or_default();
        Ok((
            data.get(ROUTES_KEY).cloned(),
            data.get(CHALLENGES_KEY)
                .cloned()
                .unwrap_or_else(|| render_challenges(&BTreeMap::new())),
        ))
    }

    /// The proxy's image and published port now, from its Deployment (and, behind a load
    /// balancer, its Service): a running proxy keeps its port.
    async fn proxy_now(&self) -> Result<Option<(String, u16)>> {
        let Some(d) = self
            .deployments(SYSTEM_NAMESPACE)
            .get_opt(PROXY)
            .await
            .map_err(|e| kerr("get the proxy Deployment", e))?
        else {
            return Ok(None);
        };
        let container = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.into_iter().next());
        let image = container
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or_default();
        let port = match self.expose {
            Expose::HostPort => container
                .and_then(|c| c.ports)
                .and_then(|p| p.first().and_then(|p| p.host_port)),
            Expose::LoadBalancer => {
                let services: Api<Service> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
                services
                    .get_opt(PROXY)
                    .await
                    .map_err(|e| kerr("get the proxy Service", e))?
                    .and_then(|s| s.spec)
                    .and_then(|s| s.ports)
                    .and_then(|p| p.first().map(|p| p.port))
            }
        }
        .map(|p| p as u16)
        .unwrap_or(80);
        Ok(Some((image, port)))
    }

    /// Add (`Some`) or remove (`None`) keys of a Secret in the proxy's namespace (a JSON merge
    /// patch, so other keys stay); created when missing. Values never reach an error.
    async fn patch_secret_keys(
        &self,
        name: &str,
        entries: &BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let data: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| {
                let v = v.as_ref().map_or(serde_json::Value::Null, |b| {
                    base64::engine::general_purpose::STANDARD.encode(b).into()
                });
                (k.clone(), v)
            })
            .collect();
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let patch = || async {
            api.patch(name, &params, &Patch::Merge(json!({ "data": data })))
                .await
                .map(|_| ())
                .map_err(|e| kerr(&format!("patch Secret {SYSTEM_NAMESPACE}/{name}"), e))
        };
        if api
            .get_metadata_opt(name)
            .await
            .map_err(|e| kerr(&format!("get Secret {SYSTEM_NAMESPACE}/{name}"), e))?
            .is_some()
        {
            return patch().await;
        }
        let values: BTreeMap<String, ByteString> = entries
            .iter()
            .filter_map(|(k, v)| v.clone().map(|b| (k.clone(), ByteString(b))))
            .collect();
        if values.is_empty() {
            return Ok(()); // nothing to remove from a Secret that is not there
        }
        let secret = Secret {
            metadata: meta(name, Some(SYSTEM_NAMESPACE), &self.proxy_labels()),
            data: Some(values),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        let post = kube::api::PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match api.create(&post, &secret).await {
            Ok(_) => Ok(()),
            // Made meanwhile (by another command): patch it.
            Err(kube::Error::Api(r)) if r.code == 409 => patch().await,
            Err(e) => Err(kerr(&format!("create Secret {SYSTEM_NAMESPACE}/{name}"), e)),
        }
    }

    /// The proxy's objects: its configuration, the Deployment (a checksum of the
    /// configuration on its pod template rolls it when routes or challenges change), and how
    /// it is exposed.
    async fn apply_proxy(
        &self,
        image: &str,
        port: u16,
        routes: &str,
        challenges: &str,
    ) -> Result<()> {
        let ns = SYSTEM_NAMESPACE;
        let labels = self.proxy_labels();
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        cms.patch(
            PROXY,
            &apply(),
            &Patch::Apply(&self.proxy_config_map(routes, challenges)),
        )
        .await
        .map_err(|e| kerr("apply the proxy ConfigMap", e))?;
        let mut hasher = sha2::Sha256::new();
        hasher.update(routes.as_bytes());
        if self.https_port.is_some() {
            hasher.update(challenges.as_bytes());
        }
        let checksum: String = hasher
            .finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let shape = ProxyShape {
            expose: self.expose,
            replicas: self.proxy_replicas,
            https_port: self.https_port,
        };
        let deployment = proxy_deployment(shape, &labels, image, port, checksum);
        self.deployments(ns)
            .patch(PROXY, &apply(), &Patch::Apply(&deployment))
            .await
            .map_err(|e| kerr("apply the proxy Deployment", e))?;
        if self.expose == Expose::LoadBalancer {
            let svc = proxy_service(shape, &labels, port);
            let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
            services
                .patch(PROXY, &apply(), &Patch::Apply(&svc))
                .await
                .map_err(|e| kerr("apply the proxy Service", e))?;
        }
        Ok(())
    }

    /// [`Self::apply_proxy`], then wait for the rollout: every proxy replica serves the new
    /// configuration (readiness-gated: Kubernetes' graceful reload).
    async fn roll_proxy(
        &self,
        image: &str,
        port: u16,
        routes: &str,
        challenges: &str,
    ) -> Result<()> {
        self.apply_proxy(image, port, routes, challenges).await?;
        self.watch_until(
            &proxy_workload(),
            self.proxy_replicas,
            Some(image),
            Duration::from_secs(300),
        )
        .await?;
        Ok(())
    }

    /// A Service `name` in `ns` selecting `color` of `service`.
    async fn apply_service(
        &self,
        ns: &str,
        name: &str,
        route: &ServiceRoute,
        color: Color,
    ) -> Result<()> {
        let mut labels = self.cluster_labels();
        labels.insert("cloudflow.env".into(), route.env.clone());
        labels.insert("cloudflow.service".into(), route.service.clone());
        let svc = Service {
            metadata: meta(name, Some(ns), &labels),
            spec: Some(ServiceSpec {
                selector: Some(BTreeMap::from([
                    ("cloudflow.env".to_string(), route.env.clone()),
                    ("cloudflow.service".to_string(), route.service.clone()),
                    ("cloudflow.color".to_string(), color.to_string()),
                ])),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: route.port as i32,
                    target_port: Some(IntOrString::Int(route.port as i32)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        api.patch(name, &apply(), &Patch::Apply(&svc))
            .await
            .map_err(|e| kerr(&format!("apply Service {ns}/{name}"), e))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Orchestrator for Kubernetes {
    fn workload(&self, env: &str, service: &str, strategy: Strategy, color: Color) -> String {
        workload_name(env, service, strategy, color)
    }

    /// The Services, not a colour: a switch flips the Service's selector, and the proxy's
    /// configuration changes only when routes come or go.
    fn upstream(&self, env: &str, service: &str, _color: Color, preview: bool) -> String {
        if preview {
            format!("{service}-preview.{env}.svc.cluster.local")
        } else {
            format!("{service}.{env}.svc.cluster.local")
        }
    }

    fn env_space(&self, env: &str) -> String {
        env.to_string()
    }

    fn edge_space(&self) -> String {
        SYSTEM_NAMESPACE.to_string()
    }

    fn proxy_workload(&self) -> String {
        proxy_workload()
    }

    fn proxy_replicas(&self) -> u32 {
        self.proxy_replicas
    }

    fn proxy_template(&self) -> &'static str {
        "nginx-routes-kubernetes.conf"
    }

    fn gate(&self) -> Gate {
        Gate::Readiness
    }

    async fn ensure_space(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        // Never take over a namespace someone else made: it would go with `env destroy`.
        if name.starts_with("kube-") {
            return Err(Error::Usage(format!(
                "namespace {name} is Kubernetes' own: choose another environment name"
            )));
        }
        if let Some(existing) = api
            .get_opt(name)
            .await
            .map_err(|e| kerr(&format!("get Namespace {name}"), e))?
        {
            let owner = existing.labels().get("cloudflow.cluster").cloned();
            if name != "default" && owner.as_deref() != Some(self.cluster.as_str()) {
                return Err(Error::Usage(format!(
                    "namespace {name} already exists and {}: cloudflow does not take it over (it would delete it with the environment); choose another name",
                    match owner {
                        Some(o) => format!("belongs to cloudflow cluster {o}"),
                        None => "was not made by cloudflow".to_string(),
                    }
                )));
            }
        }
        let mut m = meta(name, None, labels);
        if !annotations.is_empty() {
            m.annotations = Some(annotations.clone());
        }
        let ns = Namespace {
            metadata: m,
            ..Default::default()
        };
        api.patch(name, &apply(), &Patch::Apply(&ns))
            .await
            .map_err(|e| kerr(&format!("apply Namespace {name}"), e))?;
        Ok(())
    }

    /// Delete the namespaces and return when the API no longer lists them (they pass
    /// through Terminating while what is in them goes).
    async fn remove_spaces(&self, labels: &[(&str, &str)]) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let found = api
            .list(&ListParams::default().labels(&selector(labels)))
            .await
            .map_err(|e| kerr("list namespaces", e))?;
        for ns in found.items {
            let name = ns.name_any();
            if name == "default" {
                continue; // the default environment's namespace is Kubernetes' own
            }
            let uid = ns.metadata.uid.clone().unwrap_or_default();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(kerr(&format!("delete Namespace {name}"), e)),
            }
            wait_gone(api.clone(), &name, &uid, &format!("namespace {name}")).await?;
        }
        Ok(())
    }

    /// The Services `<svc>` (live colour) and `<svc>-preview` (the other).
    async fn apply_routes(&self, routes: &[ServiceRoute]) -> Result<()> {
        for r in routes {
            self.apply_service(&r.env, &r.service, r, r.live).await?;
            self.apply_service(&r.env, &format!("{}-preview", r.service), r, r.live.other())
                .await?;
        }
        Ok(())
    }

    async fn converge(
        &self,
        service: &str,
        replicas: u32,
        image: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<Task>> {
        self.watch_until(service, replicas, image, timeout).await
    }

    async fn services(&self, labels: &[(&str, &str)]) -> Result<Vec<String>> {
        let api: Api<Deployment> = Api::all(self.client.clone());
        let found = api
            .list(&ListParams::default().labels(&selector(labels)))
            .await
            .map_err(|e| kerr("list Deployments", e))?;
        Ok(found
            .items
            .iter()
            .filter(|d| d.labels().get("cloudflow.proxy").is_none())
            .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
            .collect())
    }

    async fn create_service(&self, run: &ServiceRun) -> Result<()> {
        self.apply_deployment(run).await
    }

    /// In-place: the same apply; the Deployment rolls its pods.
    async fn update_service(&self, run: &ServiceRun, _live: &LiveService) -> Result<()> {
        self.apply_deployment(run).await
    }

    async fn scale_service(&self, name: &str, replicas: u32) -> Result<()> {
        let (ns, name) = split(name);
        self.deployments(ns)
            .patch_scale(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
            )
            .await
            .map_err(|e| kerr(&format!("scale Deployment {ns}/{name}"), e))?;
        Ok(())
    }

    async fn inspect_service(&self, name: &str) -> Result<Option<LiveService>> {
        let (ns, name) = split(name);
        let Some(d) = self
            .deployments(ns)
            .get_opt(name)
            .await
            .map_err(|e| kerr("get Deployment", e))?
        else {
            return Ok(None);
        };
        let pod = d.spec.and_then(|s| s.template.spec).unwrap_or_default();
        let c = pod.containers.first().cloned().unwrap_or_default();
        let env = c
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        let mut secrets: Vec<SecretRef> = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                let secret = v.secret?.secret_name?;
                let target = c
                    .volume_mounts
                    .iter()
                    .flatten()
                    .find(|m| m.name == v.name)?
                    .mount_path
                    .strip_prefix(&format!("{SECRETS_DIR}/"))?
                    .to_string();
                Some(SecretRef {
                    name: secret,
                    target,
                })
            })
            .collect();
        secrets.sort();
        Ok(Some(LiveService { env, secrets }))
    }

    async fn ensure_secret(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        value: secrecy::SecretString,
    ) -> Result<()> {
        use secrecy::ExposeSecret;
        let ns = labels
            .get("cloudflow.env")
            .cloned()
            .unwrap_or_else(|| "default".into());
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
        if api
            .get_opt(name)
            .await
            .map_err(|e| kerr("get Secret", e))?
            .is_some()
        {
            return Ok(());
        }
        let secret = Secret {
            metadata: meta(name, Some(&ns), labels),
            data: Some(BTreeMap::from([(
                "value".to_string(),
                ByteString(value.expose_secret().as_bytes().to_vec()),
            )])),
            type_: Some("Opaque".into()),
            immutable: Some(true),
            ..Default::default()
        };
        api.patch(name, &apply(), &Patch::Apply(&secret))
            .await
            .map_err(|e| kerr(&format!("apply Secret {ns}/{name}"), e))?;
        Ok(())
    }

    async fn remove_secrets(&self, labels: &[(&str, &str)], unused_only: bool) -> Result<()> {
        let api: Api<Secret> = Api::all(self.client.clone());
        let found = api
            .list(&ListParams::default().labels(&selector(labels)))
            .await
            .map_err(|e| kerr("list Secrets", e))?;
        let mut used = std::collections::BTreeSet::new();
        if unused_only {
            let deployments: Api<Deployment> = Api::all(self.client.clone());
            for d in deployments
                .list(&ListParams::default().labels(&selector(labels)))
                .await
                .map_err(|e| kerr("list Deployments", e))?
                .items
            {
                let ns = d.namespace().unwrap_or_default();
                for v in d
                    .spec
                    .and_then(|s| s.template.spec)
                    .and_then(|p| p.volumes)
                    .unwrap_or_default()
                {
                    if let Some(s) = v.secret.and_then(|s| s.secret_name) {
                        used.insert((ns.clone(), s));
                    }
                }
            }
        }
        for s in found.items {
            let ns = s.namespace().unwrap_or_default();
            let name = s.name_any();
            if used.contains(&(ns.clone(), name.clone())) {
                continue;
            }
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(kerr(&format!("delete Secret {ns}/{name}"), e)),
            }
        }
        Ok(())
    }

    /// Delete the Deployments (foreground: their pods first) and return once the API no
    /// longer lists them, so a Deployment applied under the same name next is a new one and
    /// not the old one on its way out.
    async fn remove_services(&self, names: &[String]) -> Result<()> {
        for workload in names {
            let (ns, name) = split(workload);
            let api = self.deployments(ns);
            let uid = match api
                .get_opt(name)
                .await
                .map_err(|e| kerr("get Deployment", e))?
            {
                Some(d) => d.metadata.uid.unwrap_or_default(),
                None => continue,
            };
            match api.delete(name, &DeleteParams::foreground()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(kerr(&format!("delete Deployment {ns}/{name}"), e)),
            }
            wait_gone(api.clone(), name, &uid, &format!("Deployment {workload}")).await?;
        }
        Ok(())
    }

    /// Every pod of the Deployment, merged line by line (`[pod] line`); `since` as a duration.
    async fn logs(
        &self,
        service: &str,
        follow: bool,
        since: Option<&str>,
        sink: crate::exec::Sink,
    ) -> Result<()> {
        use futures::AsyncBufReadExt;
        let (ns, _) = split(service);
        let since_seconds = match since {
            Some(s) => Some(
                humantime::parse_duration(s)
                    .map_err(|e| {
                        Error::Usage(format!(
                            "--since {s:?}: {e} (on Kubernetes: a duration, e.g. 10m)"
                        ))
                    })?
                    .as_secs() as i64,
            ),
            None => None,
        };
        let pods = self.pods(ns);
        let mut streams = Vec::new();
        for t in self.tasks(service).await? {
            let params = kube::api::LogParams {
                follow,
                since_seconds,
                timestamps: true,
                ..Default::default()
            };
            let reader = pods
                .log_stream(&t.name, &params)
                .await
                .map_err(|e| kerr("read pod logs", e))?;
            let name = t.name.clone();
            streams.push(reader.lines().map(move |l| (name.clone(), l)).boxed());
        }
        let mut all = futures::stream::select_all(streams);
        while let Some((pod, line)) = all.next().await {
            let line = line.map_err(|e| Error::Other(format!("pod {pod}: reading logs: {e}")))?;
            sink(format!("[{pod}] {line}\n").as_bytes());
        }
        Ok(())
    }

    async fn tasks(&self, service: &str) -> Result<Vec<Task>> {
        let (ns, name) = split(service);
        let Some(d) = self
            .deployments(ns)
            .get_opt(name)
            .await
            .map_err(|e| kerr("get Deployment", e))?
        else {
            return Ok(Vec::new());
        };
        let sel = d
            .spec
            .and_then(|s| s.selector.match_labels)
            .unwrap_or_default();
        let sel: Vec<(&str, &str)> = sel.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let pods = self
            .pods(ns)
            .list(&ListParams::default().labels(&selector(&sel)))
            .await
            .map_err(|e| kerr("list pods", e))?;
        Ok(pods.items.iter().map(task_of).collect())
    }

    async fn ensure_proxy(&self, image: &str, port: u16, config: &str) -> Result<bool> {
        let existed = self
            .deployments(SYSTEM_NAMESPACE)
            .get_opt(PROXY)
            .await
            .map_err(|e| kerr("get the proxy Deployment", e))?
            .is_some();
        let (_, challenges) = self.proxy_data().await?;
        self.apply_proxy(image, port, config, &challenges).await?;
        Ok(!existed)
    }

    /// A changed configuration rolls the proxy's pods (readiness-gated, one at a time), so
    /// requests in flight finish; an unchanged one changes nothing.
    async fn apply_proxy_config(&self, config: &str, image: &str) -> Result<()> {
        let (current, challenges) = self.proxy_data().await?;
        if current.as_deref() == Some(config) {
            return Ok(());
        }
        let port = self.proxy_now().await?.map_or(80, |(_, p)| p);
        self.roll_proxy(image, port, config, &challenges).await
    }

    /// Certificates and keys into the Secret the proxy's pods mount (the routes that name
    /// them roll the pods); the ACME account into a Secret of its own; challenge answers into
    /// the ConfigMap, rolled out before this returns, so the CA's request finds them on every
    /// proxy replica.
    async fn write_proxy_files(&self, files: &[ProxyFile]) -> Result<()> {
        use secrecy::ExposeSecret;
        let placed = place_all(files.iter().map(|f| {
            (
                f.path.clone(),
                Some(f.content.expose_secret().as_bytes().to_vec()),
            )
        }))?;
        let mut challenges = BTreeMap::new();
        for (token, answer) in placed.challenges {
            let answer = String::from_utf8(answer.unwrap_or_default()).unwrap_or_default();
            if proxy_place(&format!("acme/{answer}")).is_err() {
                return Err(Error::Other(format!(
                    "ACME challenge {token}: the key authorization is not base64url"
                )));
            }
            challenges.insert(token, answer);
        }
        self.patch_secret_keys(PROXY_TLS, &placed.tls).await?;
        self.patch_secret_keys(ACME_ACCOUNT, &placed.account)
            .await?;
        if challenges.is_empty() {
            return Ok(());
        }
        let (routes, current) = self.proxy_data().await?;
        let mut all = parse_challenges(&current);
        all.extend(challenges);
        let (Some(routes), Some((image, port))) = (routes, self.proxy_now().await?) else {
            return Err(Error::Other(
                "ACME: the proxy is not running, nothing can answer the CA's challenge".into(),
            ));
        };
        self.roll_proxy(&image, port, &routes, &render_challenges(&all))
            .await
    }

    /// A proxy made before `proxy.https` was set gets port 443 and the certificates' Secret
    /// (one rollout).
    async fn ensure_https_port(&self) -> Result<()> {
        if self.https_port.is_none() {
            return Ok(());
        }
        let has_https = self
            .deployments(SYSTEM_NAMESPACE)
            .get_opt(PROXY)
            .await
            .map_err(|e| kerr("get the proxy Deployment", e))?
            .and_then(|d| d.spec)
            .and_then(|s| s.template.spec)
            .and_then(|p| p.containers.into_iter().next())
            .and_then(|c| c.ports)
            .is_some_and(|ports| ports.iter().any(|p| p.container_port == 443));
        let (Some(routes), challenges) = self.proxy_data().await? else {
            return Ok(()); // no proxy yet: it is made with them
        };
        let Some((image, port)) = self.proxy_now().await?.filter(|_| !has_https) else {
            return Ok(());
        };
        self.roll_proxy(&image, port, &routes, &challenges).await
    }

    /// Keys leave their Secrets; answered challenges leave the ConfigMap without a rollout
    /// (the pods keep answering them until the next one, which is harmless: they are public).
    async fn remove_proxy_files(&self, paths: &[String]) -> Result<()> {
        let placed = place_all(paths.iter().map(|p| (p.clone(), None)))?;
        self.patch_secret_keys(PROXY_TLS, &placed.tls).await?;
        self.patch_secret_keys(ACME_ACCOUNT, &placed.account)
            .await?;
        if placed.challenges.is_empty() {
            return Ok(());
        }
        let (Some(routes), current) = self.proxy_data().await? else {
            return Ok(());
        };
        let mut all = parse_challenges(&current);
        all.retain(|t, _| !placed.challenges.contains_key(t));
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        cms.patch(
            PROXY,
            &apply(),
            &Patch::Apply(&self.proxy_config_map(&routes, &render_challenges(&all))),
        )
        .await
        .map_err(|e| kerr("apply the proxy ConfigMap", e))?;
        Ok(())
    }

    async fn read_proxy_file(&self, path: &str) -> Result<Option<String>> {
        let (secret, key) = match proxy_place(path)? {
            ProxyPlace::Tls(k) => (PROXY_TLS, k),
            ProxyPlace::Account(k) => (ACME_ACCOUNT, k),
            ProxyPlace::Challenge(t) => {
                let (_, current) = self.proxy_data().await?;
                return Ok(parse_challenges(&current).remove(&t));
            }
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let value = api
            .get_opt(secret)
            .await
            .map_err(|e| kerr(&format!("get Secret {SYSTEM_NAMESPACE}/{secret}"), e))?
            .and_then(|s| s.data)
            .and_then(|mut d| d.remove(&key));
        value
            .map(|b| {
                String::from_utf8(b.0).map_err(|_| {
                    Error::Other(format!(
                        "Secret {SYSTEM_NAMESPACE}/{secret}: {key} is not text"
                    ))
                })
            })
            .transpose()
    }

    /// The proxy, and the Services that route to the colours (they go with the routes).
    async fn remove_proxy(&self) -> Result<()> {
        let routed: Api<Service> = Api::all(self.client.clone());
        for svc in routed
            .list(&ListParams::default().labels(&format!("cloudflow.cluster={}", self.cluster)))
            .await
            .map_err(|e| kerr("list Services", e))?
            .items
        {
            let api: Api<Service> =
                Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
            match api.delete(&svc.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(kerr("delete Service", e)),
            }
        }
        let ns = SYSTEM_NAMESPACE;
        let services: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        for r in [
            secrets
                .delete(PROXY_TLS, &DeleteParams::default())
                .await
                .map(|_| ()),
            secrets
                .delete(ACME_ACCOUNT, &DeleteParams::default())
                .await
                .map(|_| ()),
            self.deployments(ns)
                .delete(PROXY, &DeleteParams::default())
                .await
                .map(|_| ()),
            services
                .delete(PROXY, &DeleteParams::default())
                .await
                .map(|_| ()),
            cms.delete(PROXY, &DeleteParams::default())
                .await
                .map(|_| ()),
        ] {
            match r {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(kerr("remove the proxy", e)),
            }
        }
        Ok(())
    }

    /// Nothing to probe directly: the gate is readiness, reloads are rollouts.
    fn proxy_endpoints(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The kubeconfig document. The token is written only when `show_token` asks for it; otherwise
/// kubectl gets its tokens from the exec plugin.
pub fn kubeconfig_document(
    cluster: &str,
    ep: &KubeEndpoint,
    show_token: bool,
) -> Result<serde_json::Value> {
    let user = match (&ep.auth, show_token) {
        (KubeAuth::Token(t), true) => json!({"token": t.expose()}),
        (KubeAuth::Exec { .. }, true) => {
            return Err(Error::Usage(
                "--show-token: CLOUDFLOW_GKE_TOKEN is not set, so there is no token to show; \
                 without --show-token, kubectl gets tokens from gke-gcloud-auth-plugin"
                    .into(),
            ));
        }
        (
            KubeAuth::Exec {
                command,
                args,
                install_hint,
            },
            false,
        ) => json!({"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": command, "args": args, "installHint": install_hint,
            "provideClusterInfo": true, "interactiveMode": "IfAvailable"}}),
        (KubeAuth::Token(_), false) => json!({"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "gke-gcloud-auth-plugin", "args": [],
            "installHint": "Install gke-gcloud-auth-plugin: `gcloud components install gke-gcloud-auth-plugin` (or pass --show-token to write CLOUDFLOW_GKE_TOKEN instead)",
            "provideClusterInfo": true, "interactiveMode": "IfAvailable"}}),
    };
    let name = format!("cloudflow-{cluster}");
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": ep.server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(&ep.ca_pem)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }))
}

/// Where the Kubernetes API is: a kubeconfig the user has, or a provider's hand-off.
pub enum KubeSource<'a> {
    Kubeconfig {
        path: &'a std::path::Path,
        context: Option<&'a str>,
    },
    Endpoint(&'a KubeEndpoint),
}

impl Kubernetes {
    pub async fn connect(
        cluster: &str,
        source: KubeSource<'_>,
        expose: Expose,
        proxy_replicas: u32,
    ) -> Result<Kubernetes> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let (kc, context) = match source {
            KubeSource::Kubeconfig { path, context } => (
                Kubeconfig::read_from(path).map_err(|e| {
                    Error::Usage(format!("kubernetes.kubeconfig {}: {e}", path.display()))
                })?,
                context.map(str::to_string),
            ),
            KubeSource::Endpoint(ep) => {
                let doc = kubeconfig_document(cluster, ep, matches!(ep.auth, KubeAuth::Token(_)))?;
                (
                    serde_json::from_value::<Kubeconfig>(doc)
                        .map_err(|e| Error::Other(format!("kubeconfig for {cluster}: {e}")))?,
                    None,
                )
            }
        };
        let options = KubeConfigOptions {
            context,
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| Error::Usage(format!("kubeconfig: {e}")))?;
        let client = Client::try_from(config)
            .map_err(|e| Error::Other(format!("Kubernetes API client: {e}")))?;
        Ok(Kubernetes {
            client,
            cluster: cluster.to_string(),
            expose,
            proxy_replicas,
            https_port: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_files_have_their_places_and_nothing_else_reaches_the_configuration() {
        assert_eq!(
            proxy_place("tls/env-default-0123abcd.key").unwrap(),
            ProxyPlace::Tls("env-default-0123abcd.key".into())
        );
        assert_eq!(
            proxy_place("acme/Tok_en-1").unwrap(),
            ProxyPlace::Challenge("Tok_en-1".into())
        );
        assert_eq!(
            proxy_place("acme-account-0123.json").unwrap(),
            ProxyPlace::Account("acme-account-0123.json".into())
        );
        for bad in ["routes.conf", "acme/a b", "acme/x\";", "tls/../x", "tls/"] {
            assert!(proxy_place(bad).is_err(), "{bad}");
        }
        let mut ch = BTreeMap::new();
        ch.insert("tok-1".to_string(), "tok-1.thumb_print".to_string());
        ch.insert("tok2".to_string(), "tok2.other".to_string());
        let text = render_challenges(&ch);
        assert!(text.contains("location = /.well-known/acme-challenge/tok-1 {"));
        assert!(text.contains("return 200 \"tok-1.thumb_print\";"));
        assert_eq!(parse_challenges(&text), ch);
        assert!(parse_challenges(&render_challenges(&BTreeMap::new())).is_empty());
    }

    #[test]
    fn the_proxy_listens_on_443_and_mounts_the_certificates_only_with_https() {
        let labels = BTreeMap::new();
        let pod = |shape: ProxyShape| {
            proxy_deployment(shape, &labels, "nginx", 8080, "c".into())
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
        };
        // k3s on our machines: host ports, 80 on `port`, 443 on `https.port`.
        let k3s = pod(ProxyShape {
            expose: Expose::HostPort,
            replicas: 1,
            https_port: Some(8443),
        });
        let ports: Vec<(i32, Option<i32>)> = k3s.containers[0]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.container_port, p.host_port))
            .collect();
        assert_eq!(ports, [(80, Some(8080)), (443, Some(8443))]);
        let tls = k3s
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "tls")
            .and_then(|v| v.secret.clone())
            .expect("the certificates' Secret");
        assert_eq!(tls.secret_name.as_deref(), Some(PROXY_TLS));
        assert_eq!((tls.default_mode, tls.optional), (Some(0o600), Some(true)));
        // Replaced pods drain: leave the endpoints, then a graceful quit.
        let pre_stop = k3s.containers[0]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|p| p.exec.as_ref())
            .and_then(|e| e.command.clone())
            .unwrap();
        assert!(pre_stop.join(" ").contains("nginx -s quit"), "{pre_stop:?}");
        let mounts = k3s.containers[0].volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.name == "tls" && m.mount_path == TLS_DIR)
        );
        // Without HTTPS: one port, no Secret; behind a load balancer: no host port, the
        // Service carries both.
        let plain = pod(ProxyShape {
            expose: Expose::LoadBalancer,
            replicas: 2,
            https_port: None,
        });
        assert_eq!(plain.containers[0].ports.as_ref().unwrap().len(), 1);
        assert_eq!(plain.volumes.as_ref().unwrap().len(), 1);
        let lb = ProxyShape {
            expose: Expose::LoadBalancer,
            replicas: 2,
            https_port: Some(443),
        };
        assert!(
            pod(lb).containers[0]
                .ports
                .as_ref()
                .unwrap()
                .iter()
                .all(|p| p.host_port.is_none())
        );
        let svc: Vec<(i32, Option<IntOrString>)> = proxy_service(lb, &labels, 80)
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.port, p.target_port))
            .collect();
        assert_eq!(
            svc,
            [
                (80, Some(IntOrString::Int(80))),
                (443, Some(IntOrString::Int(443)))
            ]
        );
    }

    #[test]
    fn names_are_namespace_slash_deployment() {
        assert_eq!(split("pr-7/web-blue"), ("pr-7", "web-blue"));
        assert_eq!(selector(&[("a", "b"), ("c", "d")]), "a=b,c=d");
    }
}
