//! Shared state on a real etcd (issue 14): the record under its prefix, a lock that names its
//! holder and can be waited for, a store that goes away mid-command, and `state export |
//! state import` between backends.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::etcd_fixture::EtcdServer;
use crate::support::*;

fn lab_spec(dir: &std::path::Path, cluster: &str) {
    std::fs::write(
        dir.join("cluster.yaml"),
        format!("name: {cluster}\nprovider:\n  lab: {{ hosts: 2 }}\norchestrator: swarm\n"),
    )
    .unwrap();
}

#[test]
fn etcd_holds_the_record_and_a_lock_that_names_its_holder_and_moves_to_the_embedded_store() {
    host_image();
    let etcd = EtcdServer::start();
    let state = etcd.url("team/prod");
    let dir = workdir();
    let d = dir.path();
    lab_spec(d, "cfetcd");
    let _guard = LabGuard("cfetcd".into());
    let cf = |args: &[&str]| {
        let mut all = vec!["-f", "cluster.yaml", "--state", state.as_str()];
        all.extend_from_slice(args);
        cloudflow(d, &all)
    };

    // A first `up` runs in the background; while it holds the lock, a second is refused at
    // once with the holder named, and a third waits for it and then runs.
    let first = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(["-f", "cluster.yaml", "--state", &state, "up", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id();
    let mut status = serde_json::Value::Null;
    for _ in 0..100 {
        status = cf(&["lock", "status", "-o", "json"]).ok().json();
        if status["locked"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status["lock"]["holder"]["pid"], pid, "{status}");
    assert_eq!(status["lock"]["holder"]["command"], "up", "{status}");
    let left = status["lock"]["lease_left_secs"].as_i64().unwrap();
    assert!((1..=10).contains(&left), "{status}");
    let refused = cf(&["up", "--yes"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!("pid {pid}, `up`")) && refused.stderr.contains('@'),
        "the holder is named: {}",
        refused.stderr
    );
    let t = Instant::now();
    let waited = cf(&["up", "--yes", "--lock-timeout", "5m"]).ok();
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        waited.stderr.contains("waiting up to 5m") && waited.stderr.contains(&format!("pid {pid}")),
        "{}",
        waited.stderr
    );
    assert!(waited.stdout.contains("no changes"), "{}", waited.stdout);
    eprintln!(
        "etcd: the waiting `up` ran {:.1}s after it started",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        cf(&["lock", "status", "-o", "json"]).ok().json()["locked"],
        false
    );

    // The record lives under the prefix, one key per host (etcd's own client reads it).
    let keys = etcd.get_prefix("/team/prod/").unwrap();
    for k in [
        "/team/prod/cfetcd/state/meta",
        "/team/prod/cfetcd/state/hosts/cf-cfetcd-1",
        "/team/prod/cfetcd/state/hosts/cf-cfetcd-2",
        "/team/prod/cfetcd/state/resources/network/cloudflow-cfetcd",
    ] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
    }
    let meta: serde_json::Value =
        serde_json::from_str(&etcd.value("/team/prod/cfetcd/state/meta").unwrap()).unwrap();
    assert_eq!(meta["cluster"], "cfetcd");

    // A forced release of a live holder's lock: the holder's next write fails, nothing of it
    // is stored, and it says why.
    let hold = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args([
            "-f",
            "cluster.yaml",
            "--state",
            &state,
            "nodes",
            "scale",
            "+1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut released = false;
    for _ in 0..200 {
        let r = cf(&["lock", "release", "--force", "-o", "json"])
            .ok()
            .json();
        if r["released"] == true {
            released = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(released);
    let hold = hold.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&hold.stderr);
    assert_eq!(hold.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lock was lost"), "{stderr}");
    // The next run finishes what the cut-off one started (two workers, so three nodes).
    cf(&["nodes", "scale", "2"]).ok();
    assert_eq!(
        cf(&["status", "-o", "json"]).ok().json()["nodes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // export | import moves the cluster to the embedded store beside the spec; `up` there
    // changes nothing.
    let export = cf(&["state", "export"]).ok();
    let doc: serde_json::Value = serde_json::from_str(&export.stdout).unwrap();
    assert_eq!(doc["record"]["cluster"], "cfetcd");
    let mut import = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(["-f", "cluster.yaml", "state", "import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    import
        .stdin
        .take()
        .unwrap()
        .write_all(export.stdout.as_bytes())
        .unwrap();
    let import = import.wait_with_output().unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    let embedded = cloudflow(d, &["-f", "cluster.yaml", "up", "--yes"]).ok();
    assert!(
        embedded.stdout.contains("no changes"),
        "{}",
        embedded.stdout
    );
    // A second import of a different record does not replace it without --force.
    let changed = export.stdout.replace("\"cf-cfetcd-2\"", "\"cf-cfetcd-9\"");
    let mut again = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(["-f", "cluster.yaml", "state", "import"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    again
        .stdin
        .take()
        .unwrap()
        .write_all(changed.as_bytes())
        .unwrap();
    let again = again.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already has a record") && stderr.contains("--force"),
        "{stderr}"
    );

    cloudflow(d, &["-f", "cluster.yaml", "down", "--yes"]).ok();
    assert!(docker_ok(&["ps", "-aq", "--filter", "label=cloudflow.cluster=cfetcd"]).is_empty());
}

#[test]
fn etcd_lost_mid_command_fails_clearly_and_the_next_run_completes() {
    host_image();
    // Unreachable from the start: one error naming the endpoints, exit 1, nothing made.
    let dir = workdir();
    let d = dir.path();
    lab_spec(d, "cfetcdgone");
    let _guard = LabGuard("cfetcdgone".into());
    let gone = cloudflow(
        d,
        &[
            "-f",
            "cluster.yaml",
            "--state",
            "etcd://127.0.0.1:9,127.0.0.1:10/x",
            "up",
            "--yes",
        ],
    );
    assert_eq!(gone.code, 1, "{}", gone.stderr);
    assert!(
        gone.stderr
            .contains("cannot reach etcd at 127.0.0.1:9,127.0.0.1:10"),
        "{}",
        gone.stderr
    );
    assert!(
        docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            "label=cloudflow.cluster=cfetcdgone"
        ])
        .is_empty()
    );

    // Stopped mid-command (during the package install), started again.
    let mut etcd = EtcdServer::start();
    let state = etcd.url("outage");
    let up = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(["-f", "cluster.yaml", "--state", &state, "up", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stopped = false;
    for _ in 0..600 {
        if etcd
            .get_prefix("/outage/cfetcdgone/state/resources/container/")
            .is_some_and(|k| k.len() == 2)
        {
            etcd.stop();
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(stopped, "the lab hosts were recorded");
    let t = Instant::now();
    let out = std::thread::spawn(move || {
        let o = up.wait_with_output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    });
    let (code, stderr) = out.join().unwrap();
    eprintln!(
        "etcd outage: the command stopped {:.1}s after etcd went",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach etcd at 127.0.0.1:{}",
            etcd.client_port
        )),
        "{stderr}"
    );
    etcd.restart();
    let rerun = cloudflow(
        d,
        &[
            "-f",
            "cluster.yaml",
            "--state",
            &state,
            "up",
            "--yes",
            "--lock-timeout",
            "60s",
        ],
    )
    .ok();
    assert!(
        rerun.stdout.contains("change(s) applied"),
        "{}",
        rerun.stdout
    );
    let status = cloudflow(
        d,
        &[
            "-f",
            "cluster.yaml",
            "--state",
            &state,
            "status",
            "-o",
            "json",
        ],
    )
    .ok()
    .json();
    assert!(
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["status"] == "ready"),
        "{status}"
    );
    cloudflow(
        d,
        &["-f", "cluster.yaml", "--state", &state, "down", "--yes"],
    )
    .ok();
    assert!(
        docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            "label=cloudflow.cluster=cfetcdgone"
        ])
        .is_empty()
    );
    assert_eq!(etcd.get_prefix("/outage/"), Some(vec![]));
}
