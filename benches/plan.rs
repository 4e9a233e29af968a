//! Plan at scale: parse a bare-metal spec of N hosts and plan `up` for fresh hosts (facts as a
//! recording executor would return them), timing the parse and the plan and reading the
//! process's peak memory. Each size runs in a process of its own, so the peak is its own.
//! Goal: under 100 ms and 50 MB at 1 000 hosts.
//!
//!     cargo bench --profile dev --bench plan          # sizes 1000, 10000 (CLOUDFLOW_BENCH_SIZES)

#[path = "common/report.rs"]
mod report;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use cloudflow::plan::{Inputs, compute};
use cloudflow::render::Renderer;
use cloudflow::state::ClusterState;
use cloudflow_provider_api::{Machine, Role, SshEndpoint};

fn child(n: usize) {
    let base_mb = report::peak_mb();
    let mut spec = String::from(
        "name: fleet\nprovider:\n  bare_metal:\n    ssh_key: /nonexistent/key\n    hosts:\n",
    );
    for i in 0..n {
        let role = if i < 3 { ", role: manager" } else { "" };
        spec.push_str(&format!(
            "      - {{ address: 10.{}.{}.{}{role} }}\n",
            i / 65536,
            (i / 256) % 256,
            i % 256
        ));
    }
    spec.push_str("registry:\n  insecure: [\"reg:5000\"]\n  mirrors: [\"http://reg:5000\"]\n");
    let t = Instant::now();
    let parsed = cloudflow::spec::parse(Path::new("fleet.yaml"), &spec).expect("spec");
    let parse_ms = t.elapsed().as_secs_f64() * 1000.0;
    let machines: Vec<Machine> = (0..n)
        .map(|i| {
            let address = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
            Machine {
                name: address.clone(),
                id: address.clone(),
                role: if i < 3 { Role::Manager } else { Role::Worker },
                ssh: SshEndpoint {
                    address,
                    port: 22,
                    user: "root".into(),
                },
                running: true,
                private_address: None,
            }
        })
        .collect();
    let facts: BTreeMap<_, _> = machines
        .iter()
        .map(|m| {
            let f = cloudflow::facts::parse(&format!(
                "os_id=debian\nos_version=12\nhostname={}\ninit=systemd\nend=ok\n",
                m.name
            ))
            .unwrap();
            (m.name.clone(), f)
        })
        .collect();
    let renderer = Renderer::new(None).unwrap();
    let state = ClusterState::new("fleet", "bare-metal");
    let t = Instant::now();
    let plan = compute(&Inputs {
        spec: &parsed,
        state: &state,
        machines: &machines,
        provider_actions: &[],
        facts: &facts,
        renderer: &renderer,
        cluster_view: None,
        k3s: None,
    })
    .expect("plan");
    let plan_ms = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{n} {parse_ms:.1} {plan_ms:.1} {} {:.1} {:.1}",
        plan.actions.len(),
        report::peak_mb(),
        base_mb
    );
}

fn main() {
    if let Ok(n) = std::env::var("CLOUDFLOW_BENCH_PLAN_CHILD") {
        child(n.parse().unwrap());
        return;
    }
    let sizes = report::sizes("1000,10000");
    println!(
        "{:>7}  {:>10}  {:>9}  {:>8}  {:>13}",
        "hosts", "parse (ms)", "plan (ms)", "actions", "peak MB (Δ)"
    );
    let mut rows = Vec::new();
    for n in sizes {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("CLOUDFLOW_BENCH_PLAN_CHILD", n.to_string())
            .output()
            .expect("bench child");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            f.len(),
            6,
            "child: {line} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let peak: f64 = f[4].parse().unwrap();
        let base: f64 = f[5].parse().unwrap();
        println!(
            "{:>7}  {:>10}  {:>9}  {:>8}  {:>7.1} ({:+.1})",
            f[0],
            f[1],
            f[2],
            f[3],
            peak,
            peak - base
        );
        rows.push(
            serde_json::json!({"hosts": n, "parse_ms": f[1].parse::<f64>().unwrap(),
            "plan_ms": f[2].parse::<f64>().unwrap(), "actions": f[3].parse::<u64>().unwrap(),
            "peak_mb": peak}),
        );
    }
    report::write("plan", &serde_json::Value::Array(rows));
}
