//! A fleet at scale, simulated: `up` (full, then no-op) of 1 000 and 10 000 bare-metal hosts
//! whose executor answers like a real host after realistic delays (SSH handshake 150 ms, each
//! command 20 ms, the package install 30 s, ±20 % jitter), through the real facts parser,
//! planner, phases, state store and concurrency limit (16). The clock is simulated (tokio's
//! paused time), so the wall time is what the schedule costs; the real time is what this
//! machine spent computing. Prints wall against the ideal (hosts / concurrency × one host's
//! time), real time, peak memory and state size; writes target/bench-fleet.json.
//!
//!     cargo bench --profile dev --bench fleet          # CLOUDFLOW_BENCH_SIZES=1000,10000

#[path = "common/report.rs"]
mod report;

use std::process::Command;

use cloudflow::app::sim::Fleet;
use cloudflow::exec::SimDelays;

fn child(n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let fleet = Fleet::new(n, 16, SimDelays::realistic(), dir.path()).unwrap();
        let full = fleet.up().await.unwrap();
        let noop = fleet.up().await.unwrap();
        println!(
            "{}",
            serde_json::json!({"full": full, "noop": noop, "peak_mb": report::peak_mb()})
        );
    });
}

fn main() {
    if let Ok(n) = std::env::var("CLOUDFLOW_BENCH_FLEET_CHILD") {
        child(n.parse().unwrap());
        return;
    }
    let sizes = report::sizes("1000,10000");
    println!(
        "{:>6} {:>6}  {:>12} {:>12} {:>6}  {:>9}  {:>8}  {:>9} {:>12}",
        "hosts",
        "run",
        "wall (sim s)",
        "ideal (s)",
        "ratio",
        "real (s)",
        "peak MB",
        "state KB",
        "B per write"
    );
    let mut all = Vec::new();
    for n in sizes {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("CLOUDFLOW_BENCH_FLEET_CHILD", n.to_string())
            .output()
            .expect("bench child");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("child: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        for run in ["full", "noop"] {
            let r = &v[run];
            let wall = r["wall_seconds"].as_f64().unwrap();
            let ideal = r["ideal_seconds"].as_f64().unwrap();
            let per_write = r["state_bytes_written"].as_f64().unwrap()
                / r["state_commits"].as_f64().unwrap().max(1.0);
            println!(
                "{:>6} {:>6}  {:>12.1} {:>12.1} {:>6.2}  {:>9.2}  {:>8.0}  {:>9.0} {:>12.0}",
                n,
                run,
                wall,
                ideal,
                wall / ideal,
                r["real_seconds"].as_f64().unwrap(),
                v["peak_mb"].as_f64().unwrap(),
                r["state_size"].as_f64().unwrap() / 1024.0,
                per_write
            );
        }
        all.push(v);
    }
    report::write("fleet", &serde_json::Value::Array(all));
}
