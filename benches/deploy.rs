//! Blue-green deploys under load: a client loops requests through the proxy (with the Host
//! header) while cloudflow deploys new images back and forth on a 3-host lab swarm, with
//! locally built images in a real registry. Prints requests sent and failed, latency, and
//! per deploy: wall time, time until every replica passed its health gate, and the switch
//! time (health ok → every proxy serving the new configuration).
//!
//!     cargo bench --bench deploy             # needs dockerd, debootstrap, docker-registry, gcc
//!     CLOUDFLOW_BENCH_ROUNDS=5 CLOUDFLOW_BENCH_REPLICAS=4 cargo bench --bench deploy

#[path = "../tests/it/deploy_fixture.rs"]
mod fixture;

#[path = "common/report.rs"]
mod report;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use fixture::*;

struct Quiet;
impl cloudflow_provider_api::Progress for Quiet {
    fn step(&self, what: &str) {
        eprintln!("bench: {what}");
    }
}

fn cloudflow(dir: &Path, args: &[&str]) -> (f64, serde_json::Value) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("cloudflow");
    let secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "cloudflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (secs, json)
}

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fresh `bash examples/demo/up.sh` (the README's first command: lab swarm, registry, images,
/// proxy, web) until the first request through the proxy is answered. Its own registry port
/// and cache, so nothing of an earlier demo is reused but the lab host image and the demo's
/// local images (whether they were already built is reported).
fn demo_first_request() -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let cached = Command::new("docker")
        .args([
            "image",
            "inspect",
            "cloudflow-demo/web:1",
            "cloudflow-demo/proxy:1",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    let bin = Path::new(env!("CARGO_BIN_EXE_cloudflow"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/up.sh");
    let envs = [
        ("CLOUDFLOW", bin.as_os_str().to_owned()),
        ("XDG_CACHE_HOME", d.join("cache").into_os_string()),
        ("DEMO_REGISTRY_PORT", port.clone().into()),
    ];
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(d)
        .envs(envs.iter().cloned())
        .output()
        .expect("bash examples/demo/up.sh");
    let up_secs = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "demo up.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = std::fs::read_to_string(d.join("demo.env")).unwrap();
    let proxy = env
        .lines()
        .find_map(|l| l.strip_prefix("DEMO_PROXY="))
        .expect("DEMO_PROXY in demo.env")
        .to_string();
    let answered = loop {
        let ok = Command::new("curl")
            .args([
                "-fs",
                "-o",
                "/dev/null",
                "-H",
                "Host: web-default.demo.test",
            ])
            .arg(format!("http://{proxy}/"))
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break started.elapsed().as_secs_f64();
        }
        assert!(started.elapsed().as_secs() < 600, "the demo never answered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let down = Command::new(bin)
        .current_dir(d)
        .args(["-f", "demo.yaml", "down", "--yes"])
        .output()
        .expect("down");
    assert!(down.status.success(), "demo down failed");
    let _ = Command::new("bash")
        .arg(script.with_file_name("stop-registry.sh"))
        .envs(envs.iter().cloned())
        .output();
    println!(
        "fresh demo (examples/demo/up.sh, 3 lab hosts, images {}): up.sh {up_secs:.1}s, first request answered at {answered:.1}s",
        if cached {
            "already built"
        } else {
            "built in the run"
        }
    );
    serde_json::json!({"up_sh_seconds": up_secs, "first_request_seconds": answered,
        "images_cached": cached})
}

fn main() {
    let rounds = env_num("CLOUDFLOW_BENCH_ROUNDS", 4);
    let replicas = env_num("CLOUDFLOW_BENCH_REPLICAS", 2);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(cloudflow_provider_lab::ensure_host_image(
            cloudflow_provider_lab::DEFAULT_IMAGE,
            &Quiet,
        ))
        .expect("lab host image");
    let demo = if std::env::var("CLOUDFLOW_BENCH_DEMO").as_deref() == Ok("0") {
        serde_json::Value::Null
    } else {
        demo_first_request()
    };
    let reg = Registry::start();
    let img = build_images(&reg, cloudflow_provider_lab::DEFAULT_IMAGE);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "name: benchdeploy\nprovider:\n  lab: {{ hosts: 3 }}\nregistry:\n  insecure: [\"{}\"]\n\
             proxy: {{ domain: bench.test, image: \"{}\", port: 80 }}\n\
             services:\n  web:\n    image: \"{}\"\n    port: 8080\n    replicas: {replicas}\n    health: {{ path: /healthz, timeout: 30s }}\n",
            reg.pull, img.proxy, img.web_v1
        ),
    )
    .unwrap();
    let (up, _) = cloudflow(d, &["up", "--yes"]);
    let ip = String::from_utf8(
        Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{(index .NetworkSettings.Networks \"cloudflow-benchdeploy\").IPAddress}}",
                "cf-benchdeploy-1",
            ])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let load = Load::start(&format!("{ip}:80"), "web-default.bench.test");
    println!(
        "3 lab hosts, web with {replicas} replica(s); first up (swarm + proxy + web) {up:.1}s"
    );
    println!(
        "{:>5}  {:<28}  {:>10}  {:>13}  {:>12}",
        "round", "image", "deploy (s)", "healthy (s)", "switch (ms)"
    );
    let mut switches = Vec::new();
    let mut deploys = Vec::new();
    for round in 1..=rounds {
        let image = if round % 2 == 1 {
            &img.web_v2
        } else {
            &img.web_v1
        };
        let (wall, j) = cloudflow(d, &["deploy", "web", "--image", image, "-o", "json"]);
        let switch_ms = j["switch_seconds"].as_f64().unwrap_or(f64::NAN) * 1000.0;
        switches.push(switch_ms);
        deploys.push(serde_json::json!({"image": image, "seconds": wall,
            "healthy_seconds": j["healthy_seconds"], "switch_ms": switch_ms}));
        println!(
            "{round:>5}  {:<28}  {wall:>10.2}  {:>13.2}  {switch_ms:>12.0}",
            image.rsplit('/').next().unwrap_or(image),
            j["healthy_seconds"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let (stop_old, _) = cloudflow(d, &["stop-old", "web"]);
    let (scale_up, _) = cloudflow(d, &["scale", "web", "+2"]);
    let (scale_down, _) = cloudflow(d, &["scale", "web", "-2"]);
    let (rollback, _) = cloudflow(d, &["rollback", "web"]);
    let r = load.finish();
    println!(
        "stop-old {stop_old:.2}s, scale +2 {scale_up:.2}s, scale -2 {scale_down:.2}s, rollback (after stop-old) {rollback:.2}s"
    );
    switches.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "requests through the proxy: {} sent, {} failed; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; switch median {:.0} ms",
        r.sent,
        r.failed,
        r.percentile(50.0),
        r.percentile(99.0),
        r.percentile(100.0),
        switches[switches.len() / 2]
    );
    if r.failed > 0 {
        println!("failures: {:?}", r.failures);
    }
    report::write(
        "deploy",
        &serde_json::json!({
            "hosts": 3, "replicas": replicas, "first_up_seconds": up,
            "requests": r.sent, "failed": r.failed,
            "p50_ms": r.percentile(50.0), "p99_ms": r.percentile(99.0),
            "switch_median_ms": switches[switches.len() / 2],
            "deploys": deploys,
            "stop_old_seconds": stop_old, "scale_up_seconds": scale_up,
            "scale_down_seconds": scale_down, "rollback_seconds": rollback,
            "demo": demo,
        }),
    );
    cloudflow(d, &["down", "--yes"]);
}
