//! cloudflow against an Ansible playbook doing the same job, side by side on the same machine:
//! N fresh hosts (Debian containers with sshd, made from the lab host image plus python3,
//! which Ansible needs on its targets), the job being Docker from the distribution's packages,
//! daemon.json with the registry's settings, dockerd started, a swarm formed. Each tool gets its
//! own set of fresh, identical hosts (made just before its run, removed after); then a no-op
//! re-run on the hosts it bootstrapped, once they have settled (20 s; median of 5). Both run over SSH with one connection
//! per host at once (Ansible: `forks` = N, pipelining on, ControlPersist as by default).
//!
//!     bash benches/run versus      # installs ansible-core in a venv first
//!     CLOUDFLOW_BENCH_SIZES=3 ANSIBLE_PLAYBOOK=/path/to/ansible-playbook cargo bench --profile dev --bench versus
//!
//! Prints a table and writes target/bench-versus.json. The playbook is benches/ansible/swarm.yml.

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

#[path = "common/report.rs"]
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use support::{Hosts, docker, docker_ok, host_image, keypair};

/// The lab host image plus python3 and python3-apt: Ansible's modules run in Python on the
/// target, and its `apt` module would otherwise install python3-apt inside the timed run.
/// The package lists stay (as on a cloud image): the playbook's `cache_valid_time` then
/// decides when Ansible refreshes them; cloudflow always does before installing. Both tools
/// get hosts from this image.
const IMAGE: &str = "cloudflow-bench-host:v3";
/// A registry address written into daemon.json by both tools (never contacted: nothing is
/// pulled).
const REGISTRY: &str = "192.0.2.10:5000";
const NOOP_RUNS: usize = 5;
/// After a bootstrap the hosts' fresh dockerds are busy for a while (swarm, networks); both
/// tools' no-op runs start after this pause, on settled hosts.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(20);

fn bench_image() {
    host_image();
    if docker(&["image", "inspect", IMAGE]).status.success() {
        return;
    }
    eprintln!("bench: building {IMAGE} (the lab host image plus python3, once)");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {}\nRUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-apt\n",
            support::IMAGE
        ),
    )
    .unwrap();
    docker_ok(&[
        "build",
        "-q",
        "-t",
        IMAGE,
        &dir.path().display().to_string(),
    ]);
}

fn playbook_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ANSIBLE_PLAYBOOK") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = Path::new(&home).join(".cache/cloudflow-bench/ansible/bin/ansible-playbook");
    assert!(
        p.exists(),
        "ansible-playbook not found at {}: run `bash benches/run versus` (it installs ansible-core into that venv) or set ANSIBLE_PLAYBOOK",
        p.display()
    );
    p
}

fn timed(mut cmd: Command, what: &str) -> (f64, String) {
    let started = Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let secs = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, stdout)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The swarm on `hosts` has every host as a node, all ready.
fn check_swarm(hosts: &Hosts) {
    let nodes = hosts.exec(0, "docker node ls --format '{{.Status}}'");
    let ready = nodes.lines().filter(|l| l.trim() == "Ready").count();
    assert_eq!(ready, hosts.names.len(), "swarm nodes: {nodes}");
    let daemon = hosts.exec(hosts.names.len() - 1, "cat /etc/docker/daemon.json");
    assert!(daemon.contains(REGISTRY), "daemon.json: {daemon}");
}

struct Run {
    bootstrap: f64,
    noop: f64,
}

fn cloudflow_run(n: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keypair(d, "id");
    let hosts = Hosts::start_on(&format!("cfvs-cloudflow-{n}"), n, &public, IMAGE);
    let list: Vec<String> = hosts
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 {
                format!("      - {{ address: {a}, role: manager }}\n")
            } else {
                format!("      - {{ address: {a} }}\n")
            }
        })
        .collect();
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "name: vs{n}\nprovider:\n  bare_metal:\n    user: root\n    ssh_key: {}\n    host_key_policy: accept-new\n    hosts:\n{}\
             orchestrator: swarm\nregistry:\n  insecure: [\"{REGISTRY}\"]\n  mirrors: [\"http://{REGISTRY}\"]\n",
            key.display(),
            list.concat()
        ),
    )
    .unwrap();
    let up = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cloudflow"));
        c.current_dir(d).args(["up", "--yes"]);
        c
    };
    let (bootstrap, _) = timed(up(), "cloudflow up");
    check_swarm(&hosts);
    std::thread::sleep(SETTLE);
    let noop = median(
        (0..NOOP_RUNS)
            .map(|_| {
                let (t, out) = timed(up(), "cloudflow up (no-op)");
                assert!(
                    out.contains("no changes"),
                    "a no-op up changed something: {out}"
                );
                t
            })
            .collect(),
    );
    Run { bootstrap, noop }
}

fn ansible_run(n: usize, playbook: &Path) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keypair(d, "id");
    let hosts = Hosts::start_on(&format!("cfvs-ansible-{n}"), n, &public, IMAGE);
    let mut inv = String::from("[managers]\n");
    for (i, a) in hosts.addresses.iter().enumerate() {
        if i == 1 {
            inv.push_str("[workers]\n");
        }
        inv.push_str(&format!("h{i} ansible_host={a}\n"));
    }
    inv.push_str(&format!(
        "[all:vars]\nansible_user=root\nansible_ssh_private_key_file={}\nregistry={REGISTRY}\n",
        key.display()
    ));
    std::fs::write(d.join("inventory.ini"), inv).unwrap();
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ansible");
    let run = || {
        let mut c = Command::new(playbook);
        c.current_dir(d)
            .env("ANSIBLE_CONFIG", here.join("ansible.cfg"))
            .env("ANSIBLE_NOCOLOR", "1")
            .args(["-i", "inventory.ini", "-f", &n.to_string()])
            .arg(here.join("swarm.yml"));
        c
    };
    let (bootstrap, _) = timed(run(), "ansible-playbook");
    check_swarm(&hosts);
    std::thread::sleep(SETTLE);
    let noop = median(
        (0..NOOP_RUNS)
            .map(|_| {
                let (t, out) = timed(run(), "ansible-playbook (no-op)");
                let recap: Vec<&str> = out
                    .lines()
                    .skip_while(|l| !l.starts_with("PLAY RECAP"))
                    .skip(1)
                    .filter(|l| l.contains("changed="))
                    .collect();
                assert!(
                    recap.len() == n && recap.iter().all(|l| l.contains("changed=0")),
                    "the playbook's second run changed something:\n{out}"
                );
                t
            })
            .collect(),
    );
    Run { bootstrap, noop }
}

fn main() {
    let sizes = report::sizes("3,10");
    let playbook = playbook_bin();
    let version = Command::new(&playbook)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    bench_image();
    let mut rows = Vec::new();
    println!("cloudflow vs {version}: fresh hosts per tool, no-op = median of {NOOP_RUNS}");
    println!(
        "{:>5}  {:>16}  {:>14}  {:>7}  {:>15}  {:>13}  {:>7}",
        "hosts",
        "cloudflow up (s)",
        "ansible (s)",
        "ratio",
        "cf no-op (s)",
        "ans. no-op (s)",
        "ratio"
    );
    for n in sizes {
        let cf = cloudflow_run(n);
        let an = ansible_run(n, &playbook);
        println!(
            "{n:>5}  {:>16.1}  {:>14.1}  {:>6.1}x  {:>15.2}  {:>13.2}  {:>6.1}x",
            cf.bootstrap,
            an.bootstrap,
            an.bootstrap / cf.bootstrap,
            cf.noop,
            an.noop,
            an.noop / cf.noop
        );
        rows.push(serde_json::json!({
            "hosts": n,
            "cloudflow": {"bootstrap_seconds": cf.bootstrap, "noop_seconds": cf.noop},
            "ansible": {"bootstrap_seconds": an.bootstrap, "noop_seconds": an.noop},
            "bootstrap_ratio": an.bootstrap / cf.bootstrap,
            "noop_ratio": an.noop / cf.noop,
        }));
    }
    report::write(
        "versus",
        &serde_json::json!({"ansible": version, "rows": rows}),
    );
}
