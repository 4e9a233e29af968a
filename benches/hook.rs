//! The autoscaling hook: how fast an alert becomes a scale command, and how many requests per
//! second `cloudflow serve` answers while it refuses them (a target in its cooldown). A real
//! lab swarm with `web` (locally built image in a real registry), `serve` on loopback.
//!
//!     cargo bench --bench hook                 # needs dockerd, debootstrap, docker-registry, gcc
//!     CLOUDFLOW_BENCH_REQUESTS=5000 CLOUDFLOW_BENCH_CLIENTS=8 cargo bench --bench hook
//!
//! Prints a table and writes `target/bench-hook.json`.

#[path = "../tests/it/deploy_fixture.rs"]
mod fixture;

#[path = "common/report.rs"]
mod report;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fixture::*;

const TOKEN: &str = "bench-hook-token";
const CLUSTER: &str = "cfbenchhook";

struct Quiet;
impl cloudflow_provider_api::Progress for Quiet {
    fn step(&self, what: &str) {
        eprintln!("bench: {what}");
    }
}

fn env_usize(k: &str, default: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn post(port: u16, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /hooks/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

fn metrics(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn alert(fingerprint: &str) -> String {
    format!(
        r#"{{"version":"4","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"WebBusy","cloudflow_service":"web","cloudflow_scale":"+1"}},"fingerprint":"{fingerprint}","startsAt":"2026-11-30T00:00:00Z"}}]}}"#
    )
}

fn cloudflow(dir: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("cloudflow");
    assert!(
        out.status.success(),
        "cloudflow {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let requests = env_usize("CLOUDFLOW_BENCH_REQUESTS", 2000);
    let clients = env_usize("CLOUDFLOW_BENCH_CLIENTS", 4);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(cloudflow_provider_lab::ensure_host_image(
        cloudflow_provider_lab::DEFAULT_IMAGE,
        &Quiet,
    ))
    .expect("lab host image");
    let reg = Registry::start();
    let img = build_images(&reg, cloudflow_provider_lab::DEFAULT_IMAGE);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "name: {CLUSTER}\nprovider:\n  lab: {{ hosts: 1 }}\nregistry:\n  insecure: [\"{pull}\"]\n\
             proxy: {{ domain: bench.test, image: \"{proxy}\", port: 80 }}\n\
             services:\n  web: {{ image: \"{v1}\", port: 8080, replicas: 2, max_replicas: 10, health: {{ path: /healthz, timeout: 15s }} }}\n\
             autoscaling:\n  webhook: {{ token_env: CLOUDFLOW_HOOK_TOKEN }}\n  cooldown: 1h\n",
            pull = reg.pull,
            proxy = img.proxy,
            v1 = img.web_v1,
        ),
    )
    .unwrap();
    cloudflow(d, &["up", "--yes"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("CLOUDFLOW_HOOK_TOKEN", TOKEN)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 1. One alert that acts: arrival → scale command issued (server side), and the whole
    //    action until the new replica runs and passed its health probe (client side).
    let t = Instant::now();
    let (code, out) = post(port, &alert("first"));
    let acted_secs = t.elapsed().as_secs_f64();
    assert_eq!(code, 200, "{out}");
    assert!(out.contains(r#""result":"acted""#), "{out}");
    let m = metrics(port);
    let issue = metric(&m, "cloudflow_hook_issue_latency_seconds_sum")
        / metric(&m, "cloudflow_hook_issue_latency_seconds_count").max(1.0);

    // 2. The target is now in its cooldown: every further alert (a new fingerprint each) is
    //    refused. Requests per second with `clients` concurrent callers.
    let t = Instant::now();
    let per = requests / clients;
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per);
                for i in 0..per {
                    let s = Instant::now();
                    let (code, out) = post(port, &alert(&format!("c{c}-{i}")));
                    assert_eq!(code, 200);
                    assert!(out.contains("cooldown"), "{out}");
                    lat.push(s.elapsed().as_secs_f64());
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let secs = t.elapsed().as_secs_f64();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize] * 1000.0;
    let rps = lat.len() as f64 / secs;
    let refused = metric(
        &metrics(port),
        "cloudflow_hook_refusals_total{reason=\"cooldown\"}",
    );

    let _ = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status();
    let _ = serve.wait();
    cloudflow(d, &["down", "--yes"]);

    println!("\nautoscaling hook (cloudflow serve) on a 1-host lab swarm, this machine");
    println!("{:<58} {:>12}", "measure", "value");
    println!(
        "{:<58} {:>9.2} ms",
        "alert arrival → scale command issued (server side)",
        issue * 1000.0
    );
    println!(
        "{:<58} {:>10.2} s",
        "alert POST → response (web 2 → 3, converged and probed)", acted_secs
    );
    println!(
        "{:<58} {:>12.0}",
        format!("refused (cooldown) requests/s, {clients} clients"),
        rps
    );
    println!(
        "{:<58} {:>9.2} ms",
        "  latency p50 while refusing",
        pct(0.5)
    );
    println!(
        "{:<58} {:>9.2} ms",
        "  latency p99 while refusing",
        pct(0.99)
    );
    println!("{:<58} {:>12.0}", "  refusals counted by /metrics", refused);
    let json = serde_json::json!({
        "issue_latency_ms": issue * 1000.0,
        "acted_seconds": acted_secs,
        "refused_rps": rps,
        "refused_p50_ms": pct(0.5),
        "refused_p99_ms": pct(0.99),
        "clients": clients,
        "requests": lat.len(),
    });
    report::write("hook", &json);
}
