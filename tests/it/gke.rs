//! The GKE provider against a fake GKE API (tests/it/peers/gke_fake.py) on loopback. No real
//! GKE is reachable here; the fake checks every request against the API's own discovery
//! document (`container.v1.json` from google-api-python-client): method paths, verbs, query
//! parameters and request bodies (unknown fields refused). API calls are counted at the fake.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const TOKEN: &str = "ya29.test-token-7f3a9c";
const PROJECT: &str = "my-project";
const LOCATION: &str = "europe-west1-b";

struct GkeFake {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GkeFake {
    fn start(op_seconds: f64, create_seconds: f64) -> GkeFake {
        Self::start_with(op_seconds, create_seconds, &[])
    }

    fn start_with(op_seconds: f64, create_seconds: f64, extra: &[&str]) -> GkeFake {
        let dir = workdir();
        let log = dir.path().join("calls.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/gke_fake.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--log", log.to_str().unwrap(), "--token", TOKEN])
            .args(["--project", PROJECT, "--location", LOCATION])
            .args([
                "--machine-type",
                "e2-standard-4",
                "--machine-type",
                "e2-highmem-8",
            ])
            .args(["--op-seconds", &op_seconds.to_string()])
            .args(["--create-seconds", &create_seconds.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("fake.err")).unwrap())
            .spawn()
            .expect("python3 with google-api-python-client (bash .ci/setup installs it)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("fake GKE did not start: {line:?}"))
            .parse()
            .unwrap();
        GkeFake {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "CLOUDFLOW_GKE_ENDPOINT",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("CLOUDFLOW_GKE_TOKEN", TOKEN.into()),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent".into()),
        ]
    }

    /// Every call the fake answered, in order.
    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Run cloudflow against the fake; returns the run and the calls it made.
    fn cloudflow(&self, dir: &Path, args: &[&str], extra: &[(&str, &str)]) -> (Run, Vec<Value>) {
        let before = self.calls().len();
        let base = self.env();
        let env: Vec<(&str, &str)> = base
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .chain(extra.iter().copied())
            .collect();
        let run = cloudflow_env(dir, args, &env);
        let calls = self.calls()[before..].to_vec();
        (run, calls)
    }

    /// One raw HTTP call to the fake, as another client would make it; (status, body).
    fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out[9..12].parse().unwrap();
        let json = out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("null");
        (code, serde_json::from_str(json).unwrap_or(Value::Null))
    }

    fn clusters(&self) -> Vec<Value> {
        let (code, doc) = self.http(
            "GET",
            &format!("/v1/projects/{PROJECT}/locations/{LOCATION}/clusters"),
            None,
        );
        assert_eq!(code, 200, "{doc}");
        doc["clusters"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for GkeFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls that change something (everything but GET).
fn mutating(calls: &[Value]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| c["method"] != "GET")
        .map(|c| {
            format!(
                "{} {}",
                c["method"].as_str().unwrap(),
                c["path"].as_str().unwrap()
            )
        })
        .collect()
}

fn spec(dir: &Path, name: &str, batch_nodes: u32, protection: bool, batch_type: &str) {
    std::fs::write(
        dir.join("cloudflow.yaml"),
        format!(
            "name: {name}
provider:
  gke:
    project: {PROJECT}
    location: {LOCATION}
    release_channel: regular
    node_pools:
      - {{ name: default, machine_type: e2-standard-4, nodes: 3, autoscaling: {{ min: 1, max: 10 }} }}
      - {{ name: batch, machine_type: {batch_type}, nodes: {batch_nodes}, spot: true }}
    deletion_protection: {protection}
orchestrator: kubernetes
registry: {{ mirrors: [\"https://mirror.example:5000\"], insecure: [\"reg.internal:5000\"] }}
"
        ),
    )
    .unwrap();
}

/// Every byte under `dir` (the state store included).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn gke_up_reconciles_pools_keeps_scaled_sizes_and_down_respects_protection() {
    // The cluster's endpoint: a closed port on loopback (nothing here may reach an address a
    // fake invents); `status` says it could not ask the Kubernetes API.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fake = GkeFake::start_with(0.4, 1.0, &["--endpoint", &format!("127.0.0.1:{closed}")]);
    let dir = workdir();
    let d = dir.path();
    spec(d, "prod", 0, false, "e2-highmem-8");
    let mut outputs = String::new();
    let mut keep = |r: &Run| outputs.push_str(&format!("{}{}", r.stdout, r.stderr));

    // up: one create with both pools and the registry settings; waits for DONE.
    let t = Instant::now();
    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[]);
    let create_secs = t.elapsed().as_secs_f64();
    keep(&run);
    run.ok();
    assert_eq!(
        mutating(&calls),
        vec![format!(
            "POST /v1/projects/{PROJECT}/locations/{LOCATION}/clusters"
        )]
    );
    let body = &calls.iter().find(|c| c["method"] == "POST").unwrap()["body"]["cluster"];
    assert_eq!(body["nodePools"].as_array().unwrap().len(), 2, "{body}");
    assert_eq!(body["nodePools"][1]["config"]["spot"], true);
    let hosts = &body["nodePools"][0]["config"]["containerdConfig"]["registryHosts"];
    assert_eq!(hosts[0]["server"], "docker.io", "{hosts}");
    assert_eq!(hosts[0]["hosts"][0]["host"], "https://mirror.example:5000");
    assert_eq!(hosts[1]["hosts"][0]["host"], "http://reg.internal:5000");
    let clusters = fake.clusters();
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0]["status"], "RUNNING", "up returned before DONE");
    let create_calls = calls.len();

    // A second up sends nothing that changes anything.
    let t = Instant::now();
    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[]);
    let noop_secs = t.elapsed().as_secs_f64();
    keep(&run);
    let run = run.ok();
    assert!(run.stdout.contains("no changes"), "{}", run.stdout);
    assert_eq!(mutating(&calls), Vec::<String>::new());
    let noop_calls = calls.len();

    // Changing one pool's size in the spec: exactly one setSize.
    spec(d, "prod", 1, false, "e2-highmem-8");
    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[]);
    keep(&run);
    run.ok();
    let set_size = format!(
        "POST /v1/projects/{PROJECT}/locations/{LOCATION}/clusters/prod/nodePools/batch:setSize"
    );
    assert_eq!(mutating(&calls), vec![set_size.clone()]);

    // nodes scale +2: one setSize to 3; the next up keeps it, and plan says why.
    let (run, calls) = fake.cloudflow(d, &["nodes", "scale", "+2", "--pool", "batch"], &[]);
    keep(&run);
    run.ok();
    assert_eq!(mutating(&calls), vec![set_size.clone()]);
    let sent = calls.iter().find(|c| c["method"] == "POST").unwrap();
    assert_eq!(sent["body"]["nodeCount"], 3, "{sent}");
    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[]);
    keep(&run);
    assert!(run.ok().stdout.contains("no changes"));
    assert_eq!(mutating(&calls), Vec::<String>::new());
    let (run, _) = fake.cloudflow(d, &["plan"], &[]);
    keep(&run);
    assert!(
        run.ok().stdout.contains("pool batch: live 3, spec 1"),
        "plan does not show the kept size"
    );

    // status -o json: the cluster and its pools.
    let (run, _) = fake.cloudflow(d, &["-o", "json", "status"], &[]);
    keep(&run);
    let status = run.ok().json();
    let pools = status["managed"]["pools"].as_array().unwrap();
    assert_eq!(pools.len(), 2, "{status}");
    let batch = pools.iter().find(|p| p["name"] == "batch").unwrap();
    assert_eq!(batch["size"], 3);
    assert_eq!(pools[0]["autoscaling"], serde_json::json!([1, 10]));
    assert_eq!(status["managed"]["status"], "RUNNING");

    // kubeconfig: the endpoint and CA; the token only when asked for.
    let (run, _) = fake.cloudflow(d, &["kubeconfig"], &[]);
    keep(&run);
    let kc = run.ok().stdout;
    assert!(
        kc.contains(&format!("server: https://127.0.0.1:{closed}")),
        "{kc}"
    );
    assert!(kc.contains("certificate-authority-data"), "{kc}");
    assert!(kc.contains("gke-gcloud-auth-plugin"), "{kc}");
    let (shown, _) = fake.cloudflow(d, &["kubeconfig", "--show-token"], &[]);
    assert!(shown.ok().stdout.contains(TOKEN));

    // Protection on: refused, exit 2, the spec line named, no DELETE sent.
    spec(d, "prod", 1, true, "e2-highmem-8");
    let (run, calls) = fake.cloudflow(d, &["down", "--yes"], &[]);
    keep(&run);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("cloudflow.yaml:10:26")
            && run.stderr.contains("deletion_protection: false"),
        "{}",
        run.stderr
    );
    assert_eq!(mutating(&calls), Vec::<String>::new());
    assert_eq!(fake.clusters().len(), 1);

    // Protection off: deleted, waited for, nothing left in the fake.
    spec(d, "prod", 1, false, "e2-highmem-8");
    let t = Instant::now();
    let (run, calls) = fake.cloudflow(d, &["down", "--yes"], &[]);
    let down_secs = t.elapsed().as_secs_f64();
    keep(&run);
    run.ok();
    assert_eq!(
        mutating(&calls),
        vec![format!(
            "DELETE /v1/projects/{PROJECT}/locations/{LOCATION}/clusters/prod"
        )]
    );
    assert!(fake.clusters().is_empty());

    // The token reached no output and no state byte.
    assert!(!outputs.contains(TOKEN), "the token was printed");
    assert!(!contains(&all_bytes(d), TOKEN), "the token is in the state");
    eprintln!(
        "figures: up (create) {} calls {create_secs:.2}s (operation 1.0s); no-op up {noop_calls} calls {noop_secs:.2}s; down {} calls {down_secs:.2}s (operation 0.4s)",
        create_calls,
        calls.len()
    );
}

#[test]
fn gke_changes_wait_for_running_operations_and_a_killed_up_is_finished() {
    // The create operation outlasts a loaded machine's kill and restart (2 cores, tests in parallel).
    let fake = GkeFake::start(1.0, 8.0);
    let dir = workdir();
    let d = dir.path();
    spec(d, "ops", 0, false, "e2-highmem-8");

    // Killed while the create operation runs: the next up waits for it and finishes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(["up", "--yes"])
        .envs(fake.env())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mutating(&fake.calls())
        .iter()
        .any(|c| c.ends_with("/clusters"))
    {
        assert!(Instant::now() < deadline, "up never sent its create");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(fake.clusters()[0]["status"], "PROVISIONING");
    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[]);
    run.ok();
    assert_eq!(mutating(&calls), Vec::<String>::new(), "created twice");
    assert!(
        calls.iter().any(|c| c["path"]
            .as_str()
            .unwrap()
            .contains("/operations/operation-")),
        "did not wait for the running operation"
    );
    assert_eq!(fake.clusters()[0]["status"], "RUNNING");

    // Someone else's operation is running, and two changes are planned: both are applied,
    // one after the other, and no FAILED_PRECONDITION reaches the user.
    let (code, op) = fake.http(
        "POST",
        &format!("/v1/projects/{PROJECT}/locations/{LOCATION}/clusters/ops/nodePools/default:setAutoscaling"),
        Some(r#"{"autoscaling": {"enabled": true, "minNodeCount": 1, "maxNodeCount": 10}}"#),
    );
    assert_eq!(code, 200, "{op}");
    spec(d, "ops", 2, false, "e2-highmem-8");
    std::fs::write(
        d.join("cloudflow.yaml"),
        std::fs::read_to_string(d.join("cloudflow.yaml"))
            .unwrap()
            .replace("{ min: 1, max: 10 }", "{ min: 2, max: 8 }"),
    )
    .unwrap();
    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[]);
    let run = run.ok();
    assert!(
        !run.stderr.contains("FAILED_PRECONDITION"),
        "{}",
        run.stderr
    );
    let changes = mutating(&calls);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(
        changes[0].ends_with("/nodePools/default:setAutoscaling"),
        "{changes:?}"
    );
    assert!(
        changes[1].ends_with("/nodePools/batch:setSize"),
        "{changes:?}"
    );
    let refused: Vec<&Value> = calls.iter().filter(|c| c["status"] != 200).collect();
    assert!(refused.is_empty(), "calls the API refused: {refused:?}");
    let pool = |name: &str| {
        fake.clusters()[0]["nodePools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(pool("default")["autoscaling"]["minNodeCount"], 2);
    assert_eq!(pool("default")["autoscaling"]["maxNodeCount"], 8);
    fake.cloudflow(d, &["down", "--yes"], &[]).0.ok();
}

#[test]
fn gke_bad_credentials_project_and_machine_type_are_clear_and_create_nothing() {
    let fake = GkeFake::start(0.2, 0.2);
    let dir = workdir();
    let d = dir.path();

    // The fake is strict where the real front end is: an unknown field is refused.
    let (code, doc) = fake.http(
        "POST",
        &format!("/v1/projects/{PROJECT}/locations/{LOCATION}/clusters"),
        Some(r#"{"cluster": {"name": "x", "nodeCount": 3}}"#),
    );
    assert_eq!(code, 400, "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Unknown name \"nodeCount\"")
    );

    // Refused credentials: one clear error, exit 1, the wrong token not echoed.
    spec(d, "bad", 0, false, "e2-highmem-8");
    let wrong = "ya29.wrong-token-0000";
    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[("CLOUDFLOW_GKE_TOKEN", wrong)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("refused the credentials"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains(wrong) && !run.stdout.contains(wrong));
    assert_eq!(mutating(&calls), Vec::<String>::new());

    // A project these credentials cannot see: the spec field and line, exit 2.
    std::fs::write(
        d.join("cloudflow.yaml"),
        std::fs::read_to_string(d.join("cloudflow.yaml"))
            .unwrap()
            .replace(PROJECT, "other-project"),
    )
    .unwrap();
    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("cloudflow.yaml:4:14") && run.stderr.contains("provider.gke.project"),
        "{}",
        run.stderr
    );
    assert_eq!(mutating(&calls), Vec::<String>::new());

    // An unknown machine type: the pool's field and line, exit 2, nothing created.
    spec(d, "bad", 0, false, "e2-bogus-8");
    let (run, _) = fake.cloudflow(d, &["up", "--yes"], &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("node_pools[1].machine_type") && run.stderr.contains("e2-bogus-8"),
        "{}",
        run.stderr
    );
    assert!(fake.clusters().is_empty(), "something was created");
}

#[test]
fn gke_up_creates_the_cluster_and_deploys_into_it() {
    // The cluster's API is the fake Kubernetes API over TLS, signed by the CA the fake GKE
    // reports as masterAuth.clusterCaCertificate; the GKE token is its bearer token.
    let tls = workdir();
    let k = crate::kubernetes::KubeFake::start(&[
        "--tls-auto",
        tls.path().to_str().unwrap(),
        "--token",
        TOKEN,
    ]);
    let ca = tls.path().join("ca.crt");
    let fake = GkeFake::start_with(
        0.3,
        0.6,
        &[
            "--endpoint",
            &format!("127.0.0.1:{}", k.port),
            "--ca-file",
            ca.to_str().unwrap(),
        ],
    );
    let dir = workdir();
    let d = dir.path();
    spec(d, "shop", 0, false, "e2-highmem-8");
    let mut text = std::fs::read_to_string(d.join("cloudflow.yaml")).unwrap();
    text.push_str(
        "proxy: { domain: shop.test, image: reg:5000/nginx:stable, port: 80 }
services:
  web: { image: reg:5000/web:1, port: 8080, replicas: 2, health: { path: /healthz } }
",
    );
    std::fs::write(d.join("cloudflow.yaml"), text).unwrap();

    let (run, _) = fake.cloudflow(d, &["up", "--yes"], &[]);
    let run = run.ok();
    assert!(
        run.stderr.contains("is live (blue, 2 replica(s))"),
        "{}",
        run.stderr
    );
    let svc = k.json(&["get", "service", "web", "-n", "default"]);
    assert_eq!(svc["spec"]["selector"]["cloudflow.color"], "blue");
    let proxy = k.json(&[
        "get",
        "service",
        "cloudflow-proxy",
        "-n",
        "cloudflow-system",
    ]);
    assert_eq!(proxy["spec"]["type"], "LoadBalancer");
    // Every call to the cluster's API carried the token, over TLS checked against the CA.
    assert!(k.calls().iter().all(|c| c["status"] != 401));

    let (run, calls) = fake.cloudflow(d, &["up", "--yes"], &[]);
    assert!(run.ok().stdout.contains("no changes"));
    assert_eq!(mutating(&calls), Vec::<String>::new());

    let (run, _) = fake.cloudflow(d, &["deploy", "web", "--image", "reg:5000/web:2"], &[]);
    run.ok();
    let svc = k.json(&["get", "service", "web", "-n", "default"]);
    assert_eq!(svc["spec"]["selector"]["cloudflow.color"], "green");

    let (run, calls) = fake.cloudflow(d, &["down", "--yes"], &[]);
    run.ok();
    assert_eq!(mutating(&calls).len(), 1, "{:?}", mutating(&calls));
    assert!(fake.clusters().is_empty());
    // The proxy's LoadBalancer Service went before the cluster (its cloud load balancer
    // would otherwise outlive it).
    let lbs = k.json(&["get", "services", "-n", "cloudflow-system"]);
    assert_eq!(lbs["items"].as_array().unwrap().len(), 0, "{lbs}");
}
