//! `orchestrator: kubernetes` on lab hosts: cloudflow installs k3s over SSH — the real install
//! path, with only the API server faked. No k3s binary can be had here, so the artifacts'
//! `k3s` is a stand-in (tests/it/peers/k3s-standin.sh with the fake API server appended): as
//! `k3s server` it starts the fake Kubernetes API on the host (TLS on :6443) and writes the
//! kubeconfig and node token where k3s does; as `k3s agent` it registers its node. Then the
//! real deploy path runs against it. What exists is checked over `docker exec` and with kubectl.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use crate::support::*;

/// The lab host image plus python3 (the stand-in runs the fake API server with it).
fn k3s_host_image() -> &'static str {
    const IMAGE: &str = "cloudflow-lab-host-k3s:v1";
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        host_image();
        if docker(&["image", "inspect", IMAGE]).status.success() {
            return;
        }
        let dir = workdir();
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM {}\nRUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                 python3 python3-cryptography python3-yaml && rm -rf /var/lib/apt/lists/*\n",
                cloudflow_provider_lab::DEFAULT_IMAGE
            ),
        )
        .unwrap();
        docker_ok(&["build", "-q", "-t", IMAGE, dir.path().to_str().unwrap()]);
    });
    IMAGE
}

/// `airgap/k3s` (the stand-in with the fake appended) and an images tarball.
fn artifacts(dir: &Path) {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers");
    let airgap = dir.join("airgap");
    std::fs::create_dir_all(&airgap).unwrap();
    let mut k3s = std::fs::read(peers.join("k3s-standin.sh")).unwrap();
    k3s.extend(std::fs::read(peers.join("kube_fake.py")).unwrap());
    std::fs::write(airgap.join("k3s"), k3s).unwrap();
    let status = Command::new("tar")
        .args(["cf", "k3s-airgap-images-amd64.tar", "k3s"])
        .current_dir(&airgap)
        .status()
        .unwrap();
    assert!(status.success());
}

fn exec(container: &str, script: &str) -> String {
    docker_ok(&["exec", container, "sh", "-c", script])
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new("kubectl")
        .args(args)
        .args(["-o", "json"])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn k3s_on_lab_hosts_installs_in_order_deploys_and_goes_away() {
    let image = k3s_host_image();
    let dir = workdir();
    let d = dir.path();
    artifacts(d);
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "name: kube
provider:
  lab: {{ hosts: 3, managers: 2, image: {image} }}
orchestrator: kubernetes
kubernetes: {{ k3s: {{ artifacts: ./airgap }} }}
registry: {{ mirrors: [\"https://mirror.example:5000\"], insecure: [\"reg.internal:5000\"] }}
proxy:
  http_proxy: http://proxy.internal:3128
  no_proxy: [reg.internal]
  domain: kube.test
  image: reg:5000/nginx:stable
  port: 8080
services:
  web: {{ image: reg:5000/web:1, port: 8080, replicas: 2, health: {{ path: /healthz }} }}
"
        ),
    )
    .unwrap();

    let plan = cloudflow(d, &["plan", "--until", "provision"]).ok();
    assert!(plan.stdout.contains("create container"), "{}", plan.stdout);

    let up = cloudflow(d, &["up", "--yes"]).ok();
    assert!(up.stdout.contains("change(s) applied"), "{}", up.stdout);
    // Installed in order on the right hosts: the first manager runs the server (the API) with
    // embedded etcd, the second manager joined it as a server and the worker as an agent,
    // both with its token.
    let hosts = ["cf-kube-1", "cf-kube-2", "cf-kube-3"];
    let containers = docker_ok(&[
        "ps",
        "--filter",
        "label=cloudflow.cluster=kube",
        "--format",
        "{{.Names}}",
    ]);
    for h in hosts {
        assert!(containers.contains(h), "no {h} in {containers}");
    }
    let ip1 = docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        hosts[0],
    ]);
    let token = exec(hosts[0], "cat /var/lib/rancher/k3s/server/node-token");
    assert!(token.starts_with("K10"));
    let config = exec(hosts[0], "cat /etc/rancher/k3s/config.yaml");
    assert!(config.contains("cluster-init: true"), "{config}");
    // Traefik would take host ports 80 and 443 from the proxy.
    assert!(
        config.contains("disable:\n- traefik") || config.contains("disable:\n  - traefik"),
        "{config}"
    );
    for w in &hosts[1..] {
        assert_eq!(exec(w, "cat /etc/rancher/k3s/cluster-token"), token);
        let config = exec(w, "cat /etc/rancher/k3s/config.yaml");
        assert!(
            config.contains(&format!("server: https://{ip1}:6443")),
            "{config}"
        );
        assert_eq!(exec(w, "stat -c %a /etc/rancher/k3s/cluster-token"), "600");
        assert!(
            exec(w, "ls /var/lib/rancher/k3s/agent/images").contains("k3s-airgap-images-amd64.tar")
        );
    }
    // Registry and proxy settings in place: registries.yaml and the service's environment.
    let registries = exec(hosts[1], "cat /etc/rancher/k3s/registries.yaml");
    assert!(
        registries.contains("https://mirror.example:5000"),
        "{registries}"
    );
    assert!(
        registries.contains("http://reg.internal:5000"),
        "{registries}"
    );
    let env = exec(hosts[0], "cat /var/lib/rancher/k3s/env");
    assert!(
        env.contains("HTTP_PROXY=http://proxy.internal:3128"),
        "{env}"
    );
    assert!(
        env.contains("reg.internal") && env.contains("10.43.0.0/16"),
        "{env}"
    );

    // The kubeconfig cloudflow fetched (0600, pointed at the first server) reaches a cluster
    // of three Ready nodes, one control plane, with the services deployed.
    let kubeconfig = d.join(".cloudflow/kube.k3s.kubeconfig");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let nodes = kubectl(&kubeconfig, &["get", "nodes"]);
    let nodes = nodes["items"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == "true")
            .count(),
        2
    );
    let web = kubectl(&kubeconfig, &["get", "deployment", "web-blue"]);
    assert_eq!(web["status"]["readyReplicas"], 2);
    let svc = kubectl(&kubeconfig, &["get", "service", "web"]);
    assert_eq!(svc["spec"]["selector"]["cloudflow.color"], "blue");
    let proxy = kubectl(
        &kubeconfig,
        &[
            "get",
            "deployment",
            "cloudflow-proxy",
            "-n",
            "cloudflow-system",
        ],
    );
    assert_eq!(
        proxy["spec"]["template"]["spec"]["containers"][0]["ports"][0]["hostPort"],
        8080
    );
    // One proxy per manager, on the managers (control-plane nodes), like Swarm's.
    assert_eq!(proxy["status"]["readyReplicas"], 2);
    let pods = kubectl(&kubeconfig, &["get", "pods", "-n", "cloudflow-system"]);
    let on: Vec<&str> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or(""))
        .collect();
    assert!(
        on.iter().all(|n| *n == "cf-kube-1" || *n == "cf-kube-2"),
        "{on:?}"
    );
    let status = cloudflow(d, &["-o", "json", "status"]).ok().json();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3, "{status}");

    // A second up changes nothing.
    let again = cloudflow(d, &["up", "--yes"]).ok();
    assert!(
        again.stdout.contains("no changes"),
        "{}\n{}",
        again.stdout,
        again.stderr
    );

    // down: the hosts go, and with them the kubeconfig.
    cloudflow(d, &["down", "--yes"]).ok();
    let left = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        "label=cloudflow.cluster=kube",
        "--format",
        "{{.Names}}",
    ]);
    assert!(left.is_empty(), "{left}");
    assert!(!kubeconfig.exists());
}
