//! The cost of shared state: a no-op `up` of a 3-host lab with the embedded store and with a
//! real etcd (Debian's etcd-server, started here on loopback), and the parts of it — taking
//! and releasing the cluster's lock, one state write (a host record), loading the record.
//!
//!     cargo bench --profile dev --bench state     # needs dockerd, debootstrap, etcd

#[path = "common/report.rs"]
mod report;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloudflow::state::{self, ClusterState, Holder, StateHandle};

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lock + unlock, one host-record write, one load: medians in milliseconds over `n` rounds.
fn parts(url: Option<&str>, dir: &Path, n: usize) -> (f64, f64, f64) {
    let store = state::open(url, dir).unwrap();
    let holder = Holder::current("bench");
    let mut lock = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        drop(store.lock("benchparts", &holder, None, &|_| {}).unwrap());
        lock.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _held = store.lock("benchparts", &holder, None, &|_| {}).unwrap();
    let mut record = ClusterState::new("benchparts", "lab");
    for i in 0..20 {
        record.host(&format!("h{i}")).installed_docker = true;
    }
    let handle = StateHandle::new(store.clone(), record);
    handle.update(|_| ()).unwrap();
    let mut write = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        handle
            .update(|s| s.host(&format!("h{}", i % 20)).installed_docker = i % 2 == 0)
            .unwrap();
        write.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut load = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        state::load(store.as_ref(), "benchparts").unwrap().unwrap();
        load.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    handle.delete().unwrap();
    (median(lock), median(write), median(load))
}

fn main() {
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(cloudflow_provider_lab::ensure_host_image(
            cloudflow_provider_lab::DEFAULT_IMAGE,
            &Quiet,
        ))
        .expect("lab host image");
    let etcd_dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let mut etcd = Command::new("etcd")
        .args([
            "--data-dir",
            etcd_dir.path().join("data").to_str().unwrap(),
            "--listen-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{client}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("default=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt-get install etcd-server)");
    let url = format!("etcd://127.0.0.1:{client}/bench");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("cloudflow.yaml"),
        "name: benchstate\nprovider:\n  lab: { hosts: 3 }\n",
    )
    .unwrap();
    // Each store has its own record of the same cluster: made once with the embedded one,
    // carried to etcd with export | import.
    run(d, &["up", "--yes"]);
    let export = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(["state", "export"])
        .output()
        .unwrap();
    let mut import = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(["--state", &url, "state", "import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    import
        .stdin
        .take()
        .unwrap()
        .write_all(&export.stdout)
        .unwrap();
    assert!(import.wait().unwrap().success());

    let rounds = 9;
    let embedded: Vec<f64> = (0..rounds).map(|_| run(d, &["up", "--yes"])).collect();
    let shared: Vec<f64> = (0..rounds)
        .map(|_| run(d, &["--state", &url, "up", "--yes"]))
        .collect();
    let status_embedded: Vec<f64> = (0..rounds).map(|_| run(d, &["lock", "status"])).collect();
    let status_etcd: Vec<f64> = (0..rounds)
        .map(|_| run(d, &["--state", &url, "lock", "status"]))
        .collect();
    let parts_dir = tempfile::tempdir().unwrap();
    let (el, ew, eload) = parts(None, parts_dir.path(), 50);
    let (xl, xw, xload) = parts(Some(&url), parts_dir.path(), 50);

    let (emb_med, etcd_med) = (median(embedded.clone()), median(shared.clone()));
    println!("no-op `up` of a 3-host lab, median of {rounds} (s); the parts, median of 50 (ms)");
    println!(
        "{:<10} {:>12} {:>18} {:>16} {:>16} {:>14}",
        "store", "no-op up", "process + open", "lock+unlock", "host write", "load (20 h)"
    );
    println!(
        "{:<10} {:>12.3} {:>18.3} {:>16.2} {:>16.2} {:>14.2}",
        "embedded",
        median(embedded.clone()),
        median(status_embedded),
        el,
        ew,
        eload
    );
    println!(
        "{:<10} {:>12.3} {:>18.3} {:>16.2} {:>16.2} {:>14.2}",
        "etcd",
        median(shared.clone()),
        median(status_etcd),
        xl,
        xw,
        xload
    );
    println!(
        "etcd adds {:.0} ms to a no-op up ({:+.0}%)",
        (median(shared.clone()) - median(embedded.clone())) * 1000.0,
        (median(shared) / median(embedded) - 1.0) * 100.0
    );
    report::write(
        "state",
        &serde_json::json!({
            "hosts": 3,
            "embedded": {"noop_up_seconds": emb_med, "lock_unlock_ms": el,
                "host_write_ms": ew, "load_20_hosts_ms": eload},
            "etcd": {"noop_up_seconds": etcd_med, "lock_unlock_ms": xl,
                "host_write_ms": xw, "load_20_hosts_ms": xload},
        }),
    );
    run(d, &["down", "--yes"]);
    let _ = etcd.kill();
    let _ = etcd.wait();
}
