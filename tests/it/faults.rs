//! Crash safety (issue 14): `up` killed with SIGKILL at five points of a lab bootstrap and
//! `deploy` at two; every re-run finishes the job, the services answer through the proxy, and
//! `down` leaves nothing labelled — with the embedded store and with a real etcd. A client
//! loops requests through the proxy across the killed deploys and their re-runs: 0 failed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::deploy_fixture::*;
use crate::etcd_fixture::EtcdServer;
use crate::support::*;

const DOMAIN: &str = "crash.test";

fn labelled(cluster: &str) -> Vec<String> {
    let filter = format!("label=cloudflow.cluster={cluster}");
    let mut all: Vec<String> =
        docker_ok(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"])
            .lines()
            .map(str::to_string)
            .collect();
    all.extend(
        docker_ok(&[
            "network",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Name}}",
        ])
        .lines()
        .map(str::to_string),
    );
    all
}

/// Where a command is killed: when a stderr line contains `line`, after `delay`, once
/// `ready` (polled) holds.
struct Point {
    name: &'static str,
    line: &'static str,
    delay: Duration,
    ready: Option<Box<dyn Fn() -> bool>>,
}

fn point(name: &'static str, line: &'static str, delay_ms: u64) -> Point {
    Point {
        name,
        line,
        delay: Duration::from_millis(delay_ms),
        ready: None,
    }
}

/// Run cloudflow and SIGKILL it at `p`; returns its stderr up to the kill. Panics when the
/// command ends before reaching the point (the test would prove nothing).
fn run_killed(dir: &Path, args: &[&str], p: &Point) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(dir)
        .args(args)
        .env_remove("CLOUDFLOW_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(p.line) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                assert!(
                    Instant::now() < deadline,
                    "{}: point not reached:\n{seen}",
                    p.name
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                panic!(
                    "{}: the command ended ({status}) before the kill point:\n{seen}",
                    p.name
                );
            }
        }
    }
    std::thread::sleep(p.delay);
    if let Some(ready) = &p.ready {
        eventually(
            &format!("{}: ready to kill", p.name),
            Duration::from_secs(120),
            ready,
        );
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "{}: the command ended before it was killed:\n{seen}",
        p.name
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    eprintln!("faults: killed at {}", p.name);
    seen
}

fn spec(cluster: &str, reg: &Registry, img: &Images) -> String {
    format!(
        "name: {cluster}\n\
         provider:\n  lab: {{ hosts: 2 }}\n\
         registry:\n  insecure: [\"{pull}\"]\n\
         proxy: {{ domain: {DOMAIN}, image: \"{proxy}\", port: 80 }}\n\
         services:\n\
         \x20 web:\n\
         \x20   image: \"{v1}\"\n\
         \x20   port: 8080\n\
         \x20   replicas: 2\n\
         \x20   health: {{ path: /healthz, timeout: 15s }}\n",
        pull = reg.pull,
        proxy = img.proxy,
        v1 = img.web_v1,
    )
}

fn manager_address(cluster: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"cloudflow-{cluster}\").IPAddress}}}}"),
        &format!("cf-{cluster}-1"),
    ])
}

fn crash_and_recover(cluster: &str, state: Option<String>) {
    host_image();
    let reg = Registry::start();
    let img = build_images(&reg, IMAGE);
    let dir = workdir();
    let d = dir.path();
    std::fs::write(d.join("cluster.yaml"), spec(cluster, &reg, &img)).unwrap();
    let _guard = LabGuard(cluster.to_string());
    let mut base: Vec<String> = vec!["-f".into(), "cluster.yaml".into()];
    if let Some(s) = &state {
        base.extend(["--state".into(), s.clone()]);
    }
    // A killed holder's etcd lease lasts up to 10 s: re-runs wait for the lock.
    let with = |args: &[&str]| -> Vec<String> {
        let mut all = base.clone();
        all.extend(args.iter().map(|a| a.to_string()));
        all
    };
    let cf = |args: &[&str]| {
        let all = with(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        cloudflow(d, &refs)
    };
    let killed = |args: &[&str], p: &Point| {
        let all = with(args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        run_killed(d, &refs, p)
    };
    let live = format!("web-default.{DOMAIN}");
    let answers = |version: &str| {
        let addr = format!("{}:80", manager_address(cluster));
        let (code, body) = get(&addr, &live, "/").unwrap_or((0, String::new()));
        code == 200 && body.starts_with(version)
    };
    let wanted = |what: &str| {
        let status = cf(&["status", "-o", "json"]).ok().json();
        let nodes = status["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2, "{what}: {status}");
        assert!(
            nodes.iter().all(|n| n["status"] == "ready"),
            "{what}: {status}"
        );
        eventually(
            &format!("{what}: web answers"),
            Duration::from_secs(30),
            || answers("version=1"),
        );
    };

    let up_points = [
        point("up: after provisioning", "phase bootstrap", 0),
        point(
            "up: mid package install",
            "install docker (distribution packages)",
            2500,
        ),
        point("up: after swarm init", "swarm initialised", 0),
        point("up: mid join", "joining the swarm as", 0),
        point("up: mid proxy start", "proxy: ", 0),
    ];
    let last = up_points.len() - 1;
    for (i, p) in up_points.iter().enumerate() {
        let t = Instant::now();
        killed(&["up", "--yes"], p);
        let rerun = cf(&["up", "--yes", "--lock-timeout", "60s"]).ok();
        eprintln!(
            "faults: {}: re-run finished in {:.1}s",
            p.name,
            t.elapsed().as_secs_f64()
        );
        assert!(
            !rerun.stdout.contains("no changes"),
            "{}: {}",
            p.name,
            rerun.stdout
        );
        wanted(p.name);
        assert!(
            cf(&["up", "--yes"]).ok().stdout.contains("no changes"),
            "{}: a second re-run changes nothing",
            p.name
        );
        if i < last {
            cf(&["down", "--yes"]).ok();
            assert_eq!(
                labelled(cluster),
                Vec::<String>::new(),
                "{}: down left these",
                p.name
            );
        }
    }

    // Deploys killed with a client looping requests through the proxy the whole time.
    let addr = format!("{}:80", manager_address(cluster));
    let load = Load::start(&addr, &live);
    let green_runs = {
        let cluster = cluster.to_string();
        move || {
            let out = docker(&[
                "exec",
                &format!("cf-{cluster}-1"),
                "sh",
                "-c",
                "docker service ps -q --filter desired-state=running default-web-green 2>/dev/null | wc -l",
            ]);
            String::from_utf8_lossy(&out.stdout).trim() == "2"
        }
    };
    let after_start = Point {
        name: "deploy: after the new colour starts",
        line: "starting green",
        delay: Duration::ZERO,
        ready: Some(Box::new(green_runs)),
    };
    killed(&["deploy", "web", "--image", &img.web_v2], &after_start);
    // The record knows what is live and what the other colour holds.
    let status = cf(&["status", "-o", "json"]).ok().json();
    let web = &status["environments"][0]["services"][0];
    assert_eq!(
        (web["color"].as_str(), web["image"].as_str()),
        (Some("blue"), Some(img.web_v1.as_str())),
        "{status}"
    );
    assert_eq!(
        web["preview"]["image"].as_str(),
        Some(img.web_v2.as_str()),
        "{status}"
    );
    assert!(answers("version=1"), "traffic stays on blue after the kill");
    cf(&[
        "deploy",
        "web",
        "--image",
        &img.web_v2,
        "--lock-timeout",
        "60s",
    ])
    .ok();
    assert!(answers("version=2"));

    let before_switch = point("deploy: just before the switch", "switching traffic", 0);
    killed(&["deploy", "web", "--image", &img.web_v1], &before_switch);
    let status = cf(&["status", "-o", "json"]).ok().json();
    let web = &status["environments"][0]["services"][0];
    // Killed at the switch: either still green, or the switch to blue is marked unfinished.
    assert!(
        web["color"] == "green" || web["switching_from"] == "green",
        "{status}"
    );
    let rerun = cf(&[
        "deploy",
        "web",
        "--image",
        &img.web_v1,
        "--lock-timeout",
        "60s",
    ])
    .ok();
    assert!(answers("version=1"), "{}", rerun.stderr);
    let status = cf(&["status", "-o", "json"]).ok().json();
    let web = &status["environments"][0]["services"][0];
    assert_eq!(web["color"], "blue", "{status}");
    assert!(web["switching_from"].is_null(), "{status}");
    // Killed between recording a switch and the proxies taking it: the record says green is
    // live with a switch from blue unfinished, the proxies still serve blue (v1). The record is
    // put in that state through export | import; the next deploy-family command finishes it.
    let export = cf(&["state", "export"]).ok();
    let mut doc: serde_json::Value = serde_json::from_str(&export.stdout).unwrap();
    let web_rec = &mut doc["record"]["environments"]["default"]["services"]["web"];
    web_rec["live"] = "green".into();
    web_rec["switch_from"] = "blue".into();
    let mut import = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(d)
        .args(with(&["state", "import", "--force"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    import
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    assert!(import.wait_with_output().unwrap().status.success());
    let status = cf(&["status", "-o", "json"]).ok().json();
    assert_eq!(
        status["environments"][0]["services"][0]["switching_from"], "blue",
        "{status}"
    );
    assert!(answers("version=1"), "the proxies still serve blue");
    let finished = cf(&["scale", "web", "2"]).ok();
    assert!(
        finished.stderr.contains("finishing the switch"),
        "{}",
        finished.stderr
    );
    assert!(answers("version=2"), "the switch to green was finished");
    let status = cf(&["status", "-o", "json"]).ok().json();
    let web = &status["environments"][0]["services"][0];
    assert_eq!(web["color"], "green", "{status}");
    assert!(web["switching_from"].is_null(), "{status}");

    let report = load.finish();
    eprintln!(
        "faults: {} requests through the proxy across the killed deploys and their re-runs, {} failed",
        report.sent, report.failed
    );
    assert!(report.sent > 50, "the client ran");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);

    cf(&["down", "--yes"]).ok();
    assert_eq!(labelled(cluster), Vec::<String>::new(), "down left these");

    // `down` straight after a killed `up` removes what that `up` was making.
    killed(
        &["up", "--yes"],
        &point(
            "up: mid package install, then down",
            "install docker (distribution packages)",
            1000,
        ),
    );
    cf(&["down", "--yes", "--lock-timeout", "60s"]).ok();
    assert_eq!(
        labelled(cluster),
        Vec::<String>::new(),
        "down after a kill left these"
    );
}

#[test]
fn killed_up_and_deploy_are_finished_by_the_next_run_embedded_store() {
    crash_and_recover("cfcrash", None);
}

#[test]
fn killed_up_and_deploy_are_finished_by_the_next_run_etcd_store() {
    let etcd = EtcdServer::start();
    crash_and_recover("cfcrashe", Some(etcd.url("faults")));
    // Everything under the cluster's prefix went with `down` (the lock too).
    assert_eq!(etcd.get_prefix("/faults/"), Some(vec![]));
}
