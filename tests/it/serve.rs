//! `cloudflow serve`: the hooks over real HTTP, and a real Alertmanager (Debian's
//! prometheus-alertmanager) whose webhook receiver scales a service on a lab swarm.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::deploy_fixture::*;
use crate::support::*;

const TOKEN: &str = "hook-token-5d2c";

/// One HTTP request on loopback; (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_string();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(dir: &Path) -> Serve {
        Serve::start_on(dir, None)
    }

    /// With `--state STATE` (several serves may share one).
    fn start_on(dir: &Path, state: Option<&str>) -> Serve {
        let port = free_port();
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        if let Some(s) = state {
            args.extend(["--state".into(), s.to_string()]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
            .current_dir(dir)
            .args(&args)
            .env("CLOUDFLOW_HOOK_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join(format!("serve-{port}.err"))).unwrap())
            .spawn()
            .unwrap();
        wait_for_port("127.0.0.1", port);
        Serve { child, port }
    }

    /// SIGTERM; the exit status.
    fn stop(mut self) -> i32 {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        status.code().unwrap_or(-1)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn metric(port: u16, line: &str) -> u64 {
    let (_, m) = http(port, "GET", "/metrics", None, b"");
    m.lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn serve_refuses_without_token_oversized_and_malformed_and_stops_on_sigterm() {
    let dir = workdir();
    let d = dir.path();
    std::fs::write(
        d.join("cloudflow.yaml"),
        "name: hooks\nprovider:\n  lab: { hosts: 1 }\nautoscaling:\n  webhook: { token_env: CLOUDFLOW_HOOK_TOKEN }\n  cooldown: 2m\n",
    )
    .unwrap();
    // Without the token in the environment, serve refuses to start (exit 2, names it).
    let run = cloudflow(d, &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("CLOUDFLOW_HOOK_TOKEN"),
        "{}",
        run.stderr
    );

    let s = Serve::start(d);
    let alert = |status: &str, labels: &str| {
        format!(
            r#"{{"version":"4","status":"{status}","receiver":"cloudflow","alerts":[{{"status":"{status}","labels":{labels},"annotations":{{}},"fingerprint":"f1","startsAt":"2026-11-30T00:00:00Z"}}]}}"#
        )
    };
    let good = alert(
        "firing",
        r#"{"cloudflow_service":"web","cloudflow_scale":"+1"}"#,
    );
    assert_eq!(
        http(s.port, "POST", "/hooks/alertmanager", None, good.as_bytes()).0,
        401
    );
    assert_eq!(
        http(
            s.port,
            "POST",
            "/hooks/alertmanager",
            Some("wrong-token-xxxx"),
            good.as_bytes()
        )
        .0,
        401
    );
    assert_eq!(
        http(
            s.port,
            "POST",
            "/hooks/scale",
            None,
            br#"{"service":"web","scale":"+1"}"#
        )
        .0,
        401
    );
    let big = vec![b'a'; 300 * 1024];
    assert_eq!(
        http(s.port, "POST", "/hooks/alertmanager", Some(TOKEN), &big).0,
        413
    );
    let (code, body) = http(
        s.port,
        "POST",
        "/hooks/alertmanager",
        Some(TOKEN),
        b"{not json",
    );
    assert_eq!(code, 400);
    assert!(body.contains("not an Alertmanager webhook body"), "{body}");
    let (code, body) = http(
        s.port,
        "POST",
        "/hooks/alertmanager",
        Some(TOKEN),
        alert("firing", r#"{"cloudflow_service":"web"}"#).as_bytes(),
    );
    assert_eq!(code, 400);
    assert!(body.contains("without label cloudflow_scale"), "{body}");
    let (code, body) = http(
        s.port,
        "POST",
        "/hooks/scale",
        Some(TOKEN),
        br#"{"service":"web","scale":"+1","extra":1}"#,
    );
    assert_eq!(code, 400);
    assert!(body.contains("unknown field"), "{body}");
    // Resolved alerts are recorded, not acted on.
    let (code, body) = http(
        s.port,
        "POST",
        "/hooks/alertmanager",
        Some(TOKEN),
        alert(
            "resolved",
            r#"{"cloudflow_service":"web","cloudflow_scale":"+1"}"#,
        )
        .as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""result":"resolved""#), "{body}");
    assert_eq!(
        metric(
            s.port,
            "cloudflow_hook_refusals_total{reason=\"unauthorized\"}"
        ),
        3
    );
    assert_eq!(
        metric(
            s.port,
            "cloudflow_hook_refusals_total{reason=\"too_large\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            s.port,
            "cloudflow_hook_refusals_total{reason=\"malformed\"}"
        ),
        3
    );
    assert_eq!(http(s.port, "GET", "/healthz", None, b"").0, 200);
    // Nothing was acted on, and the state was never touched.
    assert!(
        !d.join(".cloudflow").exists()
            || !std::fs::read_dir(d.join(".cloudflow")).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("lock"))
    );
    assert_eq!(s.stop(), 0, "serve did not exit 0 on SIGTERM");
}

/// A real Alertmanager with the receiver from the README, on loopback.
struct Alertmanager {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Delivering every alert to each of `hook_ports` (an HA pair of hooks).
    fn start(hook_ports: &[u16]) -> Alertmanager {
        let dir = workdir();
        let port = free_port();
        let hooks: String = hook_ports
            .iter()
            .map(|p| {
                format!(
                    "      - url: http://127.0.0.1:{p}/hooks/alertmanager\n        \
                     send_resolved: false\n        http_config: {{ authorization: {{ credentials: {TOKEN} }} }}\n"
                )
            })
            .collect();
        std::fs::write(
            dir.path().join("alertmanager.yml"),
            format!(
                "route:\n  receiver: cloudflow\n  group_by: [alertname]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: cloudflow\n    webhook_configs:\n{hooks}"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}/alertmanager.yml",
                dir.path().display()
            ))
            .arg(format!("--storage.path={}/data", dir.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("am.err")).unwrap())
            .spawn()
            .expect("prometheus-alertmanager (bash .ci/setup installs it)");
        wait_for_port("127.0.0.1", port);
        Alertmanager {
            child,
            port,
            _dir: dir,
        }
    }

    fn fire(&self, alertname: &str, labels: &str) {
        let body = format!(
            r#"[{{"labels":{{"alertname":"{alertname}",{labels}}},"startsAt":"{}"}}]"#,
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, out) = http(self.port, "POST", "/api/v2/alerts", None, body.as_bytes());
            if code == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager refused the alert: {code} {out}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CLUSTER: &str = "cfhook";

struct LabGuard;
impl Drop for LabGuard {
    fn drop(&mut self) {
        let filter = format!("label=cloudflow.cluster={CLUSTER}");
        for id in docker_ok(&["ps", "-aq", "--filter", &filter]).lines() {
            docker(&["rm", "-f", id]);
        }
        docker(&["network", "rm", &format!("cloudflow-{CLUSTER}")]);
    }
}

fn running(service: &str) -> usize {
    docker_ok(&[
        "exec",
        &format!("cf-{CLUSTER}-1"),
        "sh",
        "-c",
        &format!(
            "docker service ps -q --filter desired-state=running {service} 2>/dev/null | wc -l"
        ),
    ])
    .parse()
    .unwrap()
}

#[test]
fn alertmanager_alert_scales_a_service_once_and_the_cooldown_refuses_the_next() {
    host_image();
    let reg = Registry::start();
    let img = build_images(&reg, IMAGE);
    let dir = workdir();
    let d = dir.path();
    let _guard = LabGuard;
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "name: {CLUSTER}\nprovider:\n  lab: {{ hosts: 1 }}\nregistry:\n  insecure: [\"{pull}\"]\n\
             proxy: {{ domain: hook.test, image: \"{proxy}\", port: 80 }}\n\
             services:\n  web: {{ image: \"{v1}\", port: 8080, replicas: 2, max_replicas: 5, health: {{ path: /healthz, timeout: 15s }} }}\n\
             autoscaling:\n  webhook: {{ token_env: CLOUDFLOW_HOOK_TOKEN }}\n  cooldown: 2m\n  nodes: {{ min: 0, max: 0 }}\n",
            pull = reg.pull,
            proxy = img.proxy,
            v1 = img.web_v1,
        ),
    )
    .unwrap();
    // The state is shared on a real etcd, and two hooks serve it (as an HA pair would): each
    // alert reaches both, one acts.
    let etcd = crate::etcd_fixture::EtcdServer::start();
    let state = etcd.url("hooks");
    let cf = |args: &[&str]| {
        let mut all = vec!["--state", state.as_str()];
        all.extend_from_slice(args);
        cloudflow(d, &all)
    };
    cf(&["up", "--yes"]).ok();
    assert_eq!(running("default-web-blue"), 2);

    let s = Serve::start_on(d, Some(&state));
    let s2 = Serve::start_on(d, Some(&state));
    let both = |line: &str| metric(s.port, line) + metric(s2.port, line);
    let am = Alertmanager::start(&[s.port, s2.port]);
    let fired = Instant::now();
    am.fire(
        "WebBusy",
        r#""cloudflow_service":"web","cloudflow_env":"default","cloudflow_scale":"+1""#,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while both("cloudflow_hook_actions_total{kind=\"service\"}") < 1
        || both("cloudflow_hook_refusals_total{reason=\"duplicate\"}") < 1
    {
        assert!(
            Instant::now() < deadline,
            "the alert did not reach both hooks: acted {}, duplicate {}",
            both("cloudflow_hook_actions_total{kind=\"service\"}"),
            both("cloudflow_hook_refusals_total{reason=\"duplicate\"}")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "figures: alert posted to Alertmanager → web scaled and converged (one of two hooks acting): {:.1}s",
        fired.elapsed().as_secs_f64()
    );
    // Scaled once, not twice; the hook that did not act says the alert was handled.
    assert_eq!(running("default-web-blue"), 3);
    assert_eq!(both("cloudflow_hook_actions_total{kind=\"service\"}"), 1);
    // The hook that acted is the one whose page shows it; make `s` that one.
    let (s, s2) = if metric(s.port, "cloudflow_hook_actions_total{kind=\"service\"}") == 1 {
        (s, s2)
    } else {
        (s2, s)
    };
    // The other one is the hook that answered `duplicate` (it did not act).
    assert_eq!(
        metric(
            s2.port,
            "cloudflow_hook_refusals_total{reason=\"duplicate\"}"
        ),
        1
    );

    // Another alert for the same service inside the cooldown: refused, no change.
    am.fire(
        "WebStillBusy",
        r#""cloudflow_service":"web","cloudflow_env":"default","cloudflow_scale":"+1""#,
    );
    // Both refuse it: the one that acted from its own memory, the other from the cooldown
    // the state records.
    while metric(s.port, "cloudflow_hook_refusals_total{reason=\"cooldown\"}") < 1
        || metric(
            s2.port,
            "cloudflow_hook_refusals_total{reason=\"cooldown\"}",
        ) < 1
    {
        assert!(
            Instant::now() < deadline,
            "the second alert was not refused"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(running("default-web-blue"), 3);
    assert_eq!(
        metric(s.port, "cloudflow_hook_actions_total{kind=\"service\"}"),
        1
    );

    // A node change outside the bounds (min 0, max 0) is clamped to the live count: nothing to do.
    let (code, body) = http(
        s.port,
        "POST",
        "/hooks/scale",
        Some(TOKEN),
        br#"{"nodes":"+1"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""result":"clamped""#), "{body}");

    // The status page shows the service and the last action.
    let (code, page) = http(s.port, "GET", "/", None, b"");
    assert_eq!(code, 200);
    assert!(
        page.contains(">web<") && page.contains("service web in default"),
        "{page}"
    );
    assert!(
        page.contains("acted") && page.contains("cooldown"),
        "{page}"
    );
    // … and in a real browser (headless Chromium): the rendered DOM has the services table
    // with web and the records of the last action and refusal.
    let url = format!("http://127.0.0.1:{}/", s.port);
    let shot = dir.path().join("status-page.png");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1200,800",
            &format!("--screenshot={}", shot.display()),
            &url,
        ])
        .output()
        .expect("chromium (bash .ci/setup installs it)");
    assert!(
        out.status.success() && shot.exists(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--dump-dom",
            &url,
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(dom.contains(r#"<table id="services">"#), "{dom}");
    assert!(
        dom.contains("<td>web</td>") && dom.contains("<td>3</td>"),
        "{dom}"
    );
    assert!(dom.contains(r#"<td class="acted">acted</td>"#), "{dom}");
    assert!(dom.contains("refused (cooldown)"), "{dom}");
    if let Ok(keep) = std::env::var("CLOUDFLOW_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&shot, keep);
    }
    assert_eq!(s.stop(), 0);
    assert_eq!(s2.stop(), 0);
    // The state agrees with the swarm: the CLI sees 3 live replicas.
    let list = cf(&["-o", "json", "env", "list"]).ok().json();
    assert_eq!(
        list["environments"][0]["services"][0]["replicas"], 3,
        "{list}"
    );
    cf(&["down", "--yes"]).ok();
}

const NODES: &str = "cfnodes";

struct NodesGuard;
impl Drop for NodesGuard {
    fn drop(&mut self) {
        let filter = format!("label=cloudflow.cluster={NODES}");
        for id in docker_ok(&["ps", "-aq", "--filter", &filter]).lines() {
            docker(&["rm", "-f", id]);
        }
        docker(&["network", "rm", &format!("cloudflow-{NODES}")]);
    }
}

fn swarm_nodes() -> Vec<String> {
    docker_ok(&[
        "exec",
        &format!("cf-{NODES}-1"),
        "docker",
        "node",
        "ls",
        "--format",
        "{{.Hostname}} {{.Status}}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
fn lab_nodes_scale_from_the_cli_and_from_a_node_alert_within_bounds() {
    host_image();
    let dir = workdir();
    let d = dir.path();
    let _guard = NodesGuard;
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "name: {NODES}\nprovider:\n  lab: {{ hosts: 2 }}\n\
             autoscaling:\n  webhook: {{ token_env: CLOUDFLOW_HOOK_TOKEN }}\n  cooldown: 1s\n  nodes: {{ min: 1, max: 2 }}\n"
        ),
    )
    .unwrap();
    cloudflow(d, &["up", "--yes"]).ok();
    assert_eq!(swarm_nodes().len(), 2);

    // The CLI: a new host container is bootstrapped and joins; -1 drains it and removes it.
    cloudflow(d, &["nodes", "scale", "+1"]).ok();
    let nodes = swarm_nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.ends_with("Ready")), "{nodes:?}");
    let again = cloudflow(d, &["up", "--yes"]).ok();
    assert!(
        again.stdout.contains("no changes"),
        "up undid the scaled count: {}",
        again.stderr
    );
    cloudflow(d, &["nodes", "scale", "-1"]).ok();
    assert_eq!(swarm_nodes().len(), 2);
    assert!(docker(&["inspect", &format!("cf-{NODES}-3")]).status.code() != Some(0));

    // The hook: +1 within the bounds (max 2 workers) adds a host; +5 is clamped to 2.
    let s = Serve::start(d);
    let alert = |n: &str, fp: &str| {
        format!(
            r#"{{"version":"4","status":"firing","alerts":[{{"status":"firing","labels":{{"alertname":"NodesBusy","cloudflow_nodes":"{n}"}},"fingerprint":"{fp}","startsAt":"2026-11-30T00:00:00Z"}}]}}"#
        )
    };
    let (code, body) = http(
        s.port,
        "POST",
        "/hooks/alertmanager",
        Some(TOKEN),
        alert("+1", "n1").as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""result":"acted""#), "{body}");
    assert_eq!(swarm_nodes().len(), 3);
    std::thread::sleep(Duration::from_millis(1100)); // the cooldown
    let (code, body) = http(
        s.port,
        "POST",
        "/hooks/alertmanager",
        Some(TOKEN),
        alert("+5", "n2").as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""result":"clamped""#), "{body}");
    assert_eq!(swarm_nodes().len(), 3, "the bounds did not hold");
    // The same alert delivered again acts once.
    let (_, body) = http(
        s.port,
        "POST",
        "/hooks/alertmanager",
        Some(TOKEN),
        alert("+1", "n1").as_bytes(),
    );
    assert!(body.contains(r#""result":"duplicate""#), "{body}");
    // -1 from an alert drains the newest worker and removes its host (after the cooldown).
    std::thread::sleep(Duration::from_millis(1100));
    let (code, body) = http(
        s.port,
        "POST",
        "/hooks/alertmanager",
        Some(TOKEN),
        alert("-1", "n3").as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""result":"acted""#), "{body}");
    assert_eq!(swarm_nodes().len(), 2);
    assert_eq!(s.stop(), 0);
    cloudflow(d, &["down", "--yes"]).ok();
}
