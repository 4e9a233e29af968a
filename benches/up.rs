//! Wall time of `up` (first and no-op) and `down` for lab clusters of 3 and 5 hosts.
//! Lab hosts are bootstrapped over SSH exactly like bare metal (Docker installed from the
//! distribution's packages, swarm formed), so the figures stand for both.
//!
//!     cargo bench --bench up            # prints a table; needs dockerd and debootstrap
//!     CLOUDFLOW_BENCH_SIZES=3 cargo bench --bench up
//!
//! Writes target/bench-up.json.

#[path = "common/report.rs"]
mod report;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

struct Quiet;
impl cloudflow_provider_api::Progress for Quiet {
    fn step(&self, what: &str) {
        eprintln!("bench: {what}");
    }
}

fn run(dir: &Path, args: &[&str]) -> f64 {
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
    secs
}

fn main() {
    let sizes = report::sizes("3,5");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(cloudflow_provider_lab::ensure_host_image(
            cloudflow_provider_lab::DEFAULT_IMAGE,
            &Quiet,
        ))
        .expect("lab host image");
    println!(
        "{:>5}  {:>12}  {:>16}  {:>8}",
        "hosts", "first up (s)", "no-op up (s, med)", "down (s)"
    );
    let mut rows = Vec::new();
    for n in sizes {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("cloudflow.yaml"),
            format!("name: bench{n}\nprovider:\n  lab: {{ hosts: {n} }}\n"),
        )
        .unwrap();
        let first = run(d, &["up", "--yes"]);
        let mut noop: Vec<f64> = (0..5).map(|_| run(d, &["up", "--yes"])).collect();
        noop.sort_by(f64::total_cmp);
        let down = run(d, &["down", "--yes"]);
        println!("{n:>5}  {first:>12.1}  {:>16.2}  {down:>8.1}", noop[2]);
        rows.push(serde_json::json!({"hosts": n, "first_up_seconds": first,
            "noop_up_seconds": noop[2], "down_seconds": down}));
    }
    report::write("up", &serde_json::Value::Array(rows));
}
