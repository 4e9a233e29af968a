//! The Kubernetes orchestrator against a fake API server (tests/it/peers/kube_fake.py): no
//! Kubernetes API server or k3s binary can be had here. The fake is faithful where cloudflow
//! depends on it (typed objects with the real field names, unknown fields and invalid names
//! refused, server-side apply, the scale subresource, watches with resourceVersion, a
//! Deployment → ReplicaSet → Pod controller whose pods become Ready after a delay — never for an
//! image marked broken —, namespaces that pass through Terminating), and it is checked with
//! a real, independent client: kubectl. What exists is read back with kubectl too.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::support::*;

pub(crate) struct KubeFake {
    child: Child,
    pub(crate) port: u16,
    log: PathBuf,
    pub(crate) kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl KubeFake {
    pub(crate) fn start(extra: &[&str]) -> KubeFake {
        let dir = workdir();
        let log = dir.path().join("calls.jsonl");
        let kubeconfig = dir.path().join("kubeconfig");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/kube_fake.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--log", log.to_str().unwrap()])
            .args(["--kubeconfig-out", kubeconfig.to_str().unwrap()])
            .args(["--node", "node-1", "--node", "node-2"])
            .args(["--ready-seconds", "0.3", "--terminate-seconds", "0.5"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("fake.err")).unwrap())
            .spawn()
            .expect("python3 (the fake Kubernetes API)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("fake Kubernetes API did not start: {line:?}"))
            .parse()
            .unwrap();
        KubeFake {
            child,
            port,
            log,
            kubeconfig,
            _dir: dir,
        }
    }

    /// Every call the fake answered.
    pub(crate) fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// kubectl (a client independent of cloudflow's) against the fake; stdout.
    pub(crate) fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl (bash .ci/setup installs kubernetes-client)");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).unwrap()
    }

    /// The colour the Service `svc` in `ns` selects.
    fn selects(&self, ns: &str, svc: &str) -> String {
        self.json(&["get", "service", svc, "-n", ns])["spec"]["selector"]["cloudflow.color"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// (desired, ready) replicas of a Deployment.
    fn replicas(&self, ns: &str, name: &str) -> (i64, i64) {
        let d = self.json(&["get", "deployment", name, "-n", ns]);
        (
            d["spec"]["replicas"].as_i64().unwrap_or(0),
            d["status"]["readyReplicas"].as_i64().unwrap_or(0),
        )
    }

    fn namespaces(&self) -> Vec<String> {
        self.json(&["get", "namespaces"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for KubeFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Mutating calls the fake refused (4xx/5xx): the real API would have refused them too.
pub(crate) fn refused(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| !["GET"].contains(&c["method"].as_str().unwrap()))
        .filter(|c| c["method"] != "DELETE" || c["status"] != 404)
        .filter(|c| c["status"].as_u64().unwrap() >= 400)
        .map(|c| c.to_string())
        .collect()
}

const SPEC: &str = "name: demo
kubernetes: { kubeconfig: ./kubeconfig }
proxy: { domain: demo.test, image: reg:5000/nginx:stable, port: 80 }
services:
  web: { image: reg:5000/web:1, port: 8080, replicas: 2, health: { path: /healthz } }
  db: { image: reg:5000/db:1, strategy: in-place }
";

#[test]
fn kubectl_agrees_with_the_fake_api() {
    // The fake's own check with the real client: apply, rollout status, scale, endpoints,
    // namespace deletion through Terminating, a broken image, an unknown field refused.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/kube_fake_check.sh");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "kube_fake_check.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kubernetes_blue_green_scale_rollback_and_environments_against_the_fake_api() {
    let k = KubeFake::start(&[]);
    let dir = workdir();
    let d = dir.path();
    std::fs::copy(&k.kubeconfig, d.join("kubeconfig")).unwrap();
    std::fs::write(d.join("cloudflow.yaml"), SPEC).unwrap();

    // up: the proxy in cloudflow-system, web blue (gated on readiness), db in place.
    cloudflow(d, &["up", "--yes"]).ok();
    assert_eq!(k.selects("default", "web"), "blue");
    assert_eq!(k.replicas("default", "web-blue"), (2, 2));
    assert_eq!(k.replicas("default", "db"), (1, 1));
    assert_eq!(k.replicas("cloudflow-system", "cloudflow-proxy").1, 2);
    let conf = k.json(&[
        "get",
        "configmap",
        "cloudflow-proxy",
        "-n",
        "cloudflow-system",
    ]);
    let routes = conf["data"]["routes.conf"].as_str().unwrap();
    assert!(
        routes.contains("server_name web-default.demo.test"),
        "{routes}"
    );
    assert!(routes.contains("web.default.svc.cluster.local"), "{routes}");
    let deploy = k.json(&["get", "deployment", "web-blue"]);
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/healthz"
    );
    assert_eq!(deploy["metadata"]["labels"]["cloudflow.cluster"], "demo");
    let run = cloudflow(d, &["up", "--yes"]).ok();
    assert!(run.stdout.contains("no changes"), "{}", run.stdout);
    // status, from the API: nodes, and per workload its colour, image and readiness.
    let status = cloudflow(d, &["-o", "json", "status"]).ok().json();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{status}");
    assert!(
        nodes
            .iter()
            .all(|n| n["status"] == "ready" && n["name"].is_string() && n["role"].is_string())
    );
    let web = status["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "web-blue")
        .cloned()
        .unwrap();
    assert_eq!(
        (web["ready"].as_i64(), web["image"].as_str()),
        (Some(2), Some("reg:5000/web:1"))
    );
    assert_eq!(
        status["environments"][0]["services"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // v2: gated, then the selector flips; the preview Service selects the old colour.
    cloudflow(d, &["deploy", "web", "--image", "reg:5000/web:2"]).ok();
    assert_eq!(k.selects("default", "web"), "green");
    assert_eq!(k.selects("default", "web-preview"), "blue");
    assert_eq!(k.replicas("default", "web-green"), (2, 2));
    let routes_after = k.json(&[
        "get",
        "configmap",
        "cloudflow-proxy",
        "-n",
        "cloudflow-system",
    ])["data"]["routes.conf"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        routes_after, routes,
        "a switch changed the proxy's configuration"
    );

    // stop-old: the old colour at 0, kept; traffic stays.
    cloudflow(d, &["stop-old", "web"]).ok();
    assert_eq!(k.replicas("default", "web-blue"), (0, 0));
    assert_eq!(k.selects("default", "web"), "green");

    // scale +2, -1: the live colour, through the scale subresource.
    cloudflow(d, &["scale", "web", "+2"]).ok();
    assert_eq!(k.replicas("default", "web-green"), (4, 4));
    cloudflow(d, &["scale", "web", "-1"]).ok();
    assert_eq!(k.replicas("default", "web-green"), (3, 3));
    assert!(
        k.calls().iter().any(|c| c["method"] == "PATCH"
            && c["path"]
                .as_str()
                .unwrap()
                .ends_with("/deployments/web-green/scale")),
        "scaling did not use the scale subresource"
    );

    // rollback: blue back at the live count, gated, selected.
    cloudflow(d, &["rollback", "web"]).ok();
    assert_eq!(k.selects("default", "web"), "blue");
    assert_eq!(k.replicas("default", "web-blue"), (3, 3));
    assert_eq!(k.selects("default", "web-preview"), "green");

    // A broken image never gets the selector; the error names the pod and the reason.
    let run = cloudflow(d, &["deploy", "web", "--image", "reg:5000/web:broken"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("pod web-green-")
            && (run.stderr.contains("ImagePullBackOff") || run.stderr.contains("ErrImagePull")),
        "{}",
        run.stderr
    );
    assert_eq!(k.selects("default", "web"), "blue");
    assert_eq!(k.replicas("default", "web-blue"), (3, 3));

    // A namespace cloudflow did not make is never taken over (env destroy would delete it).
    k.kubectl(&["create", "namespace", "team-x"]);
    let run = cloudflow(d, &["env", "create", "team-x"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("was not made by cloudflow"),
        "{}",
        run.stderr
    );
    assert!(k.namespaces().contains(&"team-x".to_string()));
    let list = cloudflow(d, &["-o", "json", "env", "list"]).ok().json();
    assert!(
        !list.to_string().contains("team-x"),
        "a refused environment was recorded: {list}"
    );
    assert_eq!(cloudflow(d, &["env", "create", "kube-system"]).code, 2);

    // Environments are namespaces, labelled, the TTL an annotation.
    cloudflow(d, &["env", "create", "pr-7", "--ttl", "1h"]).ok();
    let ns = k.json(&["get", "namespace", "pr-7"]);
    assert_eq!(ns["metadata"]["labels"]["cloudflow.env"], "pr-7");
    assert_eq!(ns["metadata"]["labels"]["cloudflow.cluster"], "demo");
    assert!(
        ns["metadata"]["annotations"]["cloudflow.expires"].is_string(),
        "{ns}"
    );
    cloudflow(d, &["deploy", "web", "--env", "pr-7"]).ok();
    assert_eq!(k.selects("pr-7", "web"), "blue");
    let list = cloudflow(d, &["-o", "json", "env", "list"]).ok().json();
    let pr7 = list["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "pr-7")
        .cloned()
        .unwrap();
    assert_eq!(pr7["services"][0]["name"], "web", "{list}");
    cloudflow(d, &["env", "destroy", "pr-7"]).ok();
    assert!(
        !k.namespaces().contains(&"pr-7".to_string()),
        "pr-7 still listed"
    );

    // gc removes only the expired.
    cloudflow(d, &["env", "create", "short", "--ttl", "1s"]).ok();
    cloudflow(d, &["env", "create", "long", "--ttl", "1h"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    cloudflow(d, &["env", "gc"]).ok();
    let names = k.namespaces();
    assert!(!names.contains(&"short".to_string()), "{names:?}");
    assert!(names.contains(&"long".to_string()), "{names:?}");

    // Every mutating request was one the API accepts.
    let bad = refused(&k.calls());
    assert!(
        bad.is_empty(),
        "requests the API refused:\n{}",
        bad.join("\n")
    );

    // down: what cloudflow deployed goes; the cluster stays.
    cloudflow(d, &["down", "--yes"]).ok();
    let left = k.json(&[
        "get",
        "deployments",
        "--all-namespaces",
        "-l",
        "cloudflow.cluster=demo",
    ]);
    assert_eq!(left["items"].as_array().unwrap().len(), 0, "{left}");
    let names = k.namespaces();
    assert!(
        !names.contains(&"long".to_string()) && !names.contains(&"cloudflow-system".to_string()),
        "{names:?}"
    );
    let services = k.json(&[
        "get",
        "services",
        "--all-namespaces",
        "-l",
        "cloudflow.cluster=demo",
    ]);
    assert_eq!(services["items"].as_array().unwrap().len(), 0, "{services}");
}
