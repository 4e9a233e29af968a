//! HTTPS on the proxy against a real ACME CA: Debian's `pebble` (Let's Encrypt's test CA) with
//! `pebble-challtestsrv` as its DNS, pointing every route name at the lab manager. cloudflow
//! obtains certificates over the real protocol (HTTP-01, answered by the proxy); an independent
//! client (`curl --cacert <pebble's root>`) checks what is served.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::deploy_fixture::*;
use crate::support::*;

const CLUSTER: &str = "cfhttps";
const DOMAIN: &str = "tls.test";

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

struct Pebble {
    children: Vec<Child>,
    dir: tempfile::TempDir,
    acme_port: u16,
    mgmt_port: u16,
    dns_mgmt: u16,
}

impl Pebble {
    /// pebble and its DNS, which answers every name with `address` (the lab manager).
    fn start(address: &str) -> Pebble {
        let dir = workdir();
        let d = dir.path();
        // pebble's own HTTPS listener: a throwaway CA and a localhost certificate.
        sh(
            d,
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=cftest-ca 2>/dev/null && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost 2>/dev/null && \
             printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext && \
             openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile san.ext 2>/dev/null",
        );
        let (acme_port, mgmt_port, dns_port, dns_mgmt) =
            (free_port(), free_port(), free_port(), free_port());
        std::fs::write(
            d.join("pebble.json"),
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{acme_port}", "managementListenAddress": "127.0.0.1:{mgmt_port}",
                  "certificate": "srv.pem", "privateKey": "srv.key", "httpPort": 80, "tlsPort": 443,
                  "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#
            ),
        )
        .unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                address,
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        let pebble = Command::new("pebble")
            .args([
                "-config",
                "pebble.json",
                "-dnsserver",
                &format!("127.0.0.1:{dns_port}"),
            ])
            .current_dir(d)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::fs::File::create(d.join("pebble.log")).unwrap())
            .stderr(std::fs::File::create(d.join("pebble.err")).unwrap())
            .spawn()
            .expect("pebble (apt-get install pebble)");
        let p = Pebble {
            children: vec![dns, pebble],
            dir,
            acme_port,
            mgmt_port,
            dns_mgmt,
        };
        eventually("pebble answers", Duration::from_secs(20), || {
            Command::new("curl")
                .args(["-sf", "--cacert", "ca.pem", &p.directory()])
                .current_dir(p.dir.path())
                .output()
                .is_ok_and(|o| o.status.success())
        });
        p
    }

    /// Point `host` at `address` in pebble's DNS (instead of the lab manager).
    fn point(&self, host: &str, address: &str) {
        sh(
            self.dir.path(),
            &format!(
                "curl -sf -d '{{\"host\":\"{host}\",\"addresses\":[\"{address}\"]}}' http://127.0.0.1:{}/add-a",
                self.dns_mgmt
            ),
        );
    }

    fn directory(&self) -> String {
        format!("https://localhost:{}/dir", self.acme_port)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root pebble issues under (it changes with every start).
    fn issuing_root(&self) -> PathBuf {
        let root = self.dir.path().join("root.pem");
        sh(
            self.dir.path(),
            &format!(
                "curl -sf --cacert ca.pem https://localhost:{}/roots/0 > root.pem",
                self.mgmt_port
            ),
        );
        root
    }

    /// Certificates pebble issued so far.
    fn issued(&self) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("pebble.err")).unwrap_or_default();
        log.matches("Issued certificate serial").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One HTTPS request with curl, trusting only `root`: (status, body, serial of the served
/// certificate).
fn https_get(root: &Path, manager: &str, host: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "--cacert",
            root.to_str().unwrap(),
            "--resolve",
            &format!("{host}:443:{manager}"),
            "-w",
            "\n%{http_code}",
            &format!("https://{host}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn served_serial(manager: &str, host: &str) -> String {
    let out = Command::new("bash")
        .args([
            "-c",
            &format!(
                "openssl s_client -connect {manager}:443 -servername {host} </dev/null 2>/dev/null | openssl x509 -noout -serial"
            ),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("serial=")
        .to_lowercase()
}

/// What the HTTPS loop reports: sent, failed, the first failures.
type LoadResult = (u64, u64, Vec<String>);

/// curl looping HTTPS requests until stopped.
fn https_load(
    root: PathBuf,
    manager: String,
    host: String,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<LoadResult>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        let (sent, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut failures = Vec::new();
        while !s.load(Ordering::Relaxed) {
            sent.fetch_add(1, Ordering::Relaxed);
            let (code, body) = https_get(&root, &manager, &host);
            if code != 200 || !body.starts_with("version=") {
                failed.fetch_add(1, Ordering::Relaxed);
                if failures.len() < 10 {
                    failures.push(format!("{code} {body}"));
                }
            }
        }
        (sent.into_inner(), failed.into_inner(), failures)
    });
    (stop, handle)
}

#[test]
fn https_certificates_from_pebble_served_renewed_and_zero_dropped() {
    host_image();
    let reg = Registry::start();
    let img = build_images(&reg, IMAGE);
    let dir = workdir();
    let d = dir.path();
    let _guard = LabGuard(CLUSTER.into());
    let outputs = std::cell::RefCell::new(String::new());
    let cf = |args: &[&str]| {
        let run = cloudflow(d, args);
        outputs
            .borrow_mut()
            .push_str(&format!("{}\n{}\n", run.stdout, run.stderr));
        run
    };
    let spec = |acme: &str| {
        format!(
            "name: {CLUSTER}\nprovider:\n  lab: {{ hosts: 1 }}\nregistry:\n  insecure: [\"{pull}\"]\n\
             proxy:\n  domain: {DOMAIN}\n  image: \"{proxy}\"\n  port: 80\n{acme}\
             services:\n  web: {{ image: \"{v1}\", port: 8080, replicas: 2, health: {{ path: /healthz, timeout: 15s }} }}\n",
            pull = reg.pull,
            proxy = img.proxy,
            v1 = img.web_v1,
        )
    };
    // The cluster first, serving plain HTTP (pebble's DNS needs the manager's address); then
    // `proxy.https` is added to the running proxy.
    std::fs::write(d.join("cloudflow.yaml"), spec("")).unwrap();
    cf(&["up", "--yes"]).ok();
    let manager = docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"cloudflow-{CLUSTER}\").IPAddress}}}}"),
        &format!("cf-{CLUSTER}-1"),
    ]);
    let pebble = Pebble::start(&manager);
    std::fs::write(
        d.join("cloudflow.yaml"),
        spec(&format!(
            "  https:\n    port: 443\n    acme:\n      directory: {}\n      email: ops@{DOMAIN}\n      ca_file: {}\n",
            pebble.directory(),
            pebble.ca_file().display()
        )),
    )
    .unwrap();
    // Without --yes and without a terminal, `up` refuses rather than order unasked.
    assert_eq!(cf(&["up"]).code, 2);
    assert_eq!(pebble.issued(), 0);
    let t = Instant::now();
    let up = cf(&["up", "--yes"]).ok();
    eprintln!(
        "https: up with a certificate from pebble in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        up.stderr
            .contains("https: certificate env-default installed"),
        "{}",
        up.stderr
    );
    assert!(
        up.stdout.contains("certificate(s) installed: env-default"),
        "{}",
        up.stdout
    );
    assert_eq!(pebble.issued(), 1);
    let root = pebble.issuing_root();
    let live = format!("web-default.{DOMAIN}");
    let (code, body) = https_get(&root, &manager, &live);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("version=1"), "{body}");
    // Plain HTTP answers 301 to HTTPS; the ACME path stays on HTTP.
    let (code, _) = get(&format!("{manager}:80"), &live, "/").unwrap();
    assert_eq!(code, 301);

    // A second `up` orders nothing.
    assert!(cf(&["up", "--yes"]).ok().stdout.contains("no changes"));
    assert_eq!(pebble.issued(), 1);
    let certs = cf(&["certs", "-o", "json"]).ok().json();
    let c = &certs["certificates"][0];
    assert_eq!(c["name"], "env-default", "{certs}");
    assert!(c["days_left"].as_i64().unwrap() > 30, "{certs}");

    // An environment created later gets its own certificate when something is routed there.
    cf(&["env", "create", "pr-7", "--ttl", "1h"]).ok();
    cf(&["deploy", "web", "--env", "pr-7", "--image", &img.web_v2]).ok();
    assert_eq!(pebble.issued(), 2);
    let (code, body) = https_get(&root, &manager, &format!("web-pr-7.{DOMAIN}"));
    assert_eq!((code, body.starts_with("version=2")), (200, true), "{body}");

    // Blue-green and a forced renewal under an HTTPS loop: nothing dropped, new serial.
    let before = served_serial(&manager, &live);
    let (stop, load) = https_load(root.clone(), manager.clone(), live.clone());
    std::thread::sleep(Duration::from_secs(1));
    cf(&["deploy", "web", "--image", &img.web_v2]).ok();
    let renew = cf(&["certs", "renew"]).ok();
    assert!(
        renew.stdout.contains("renewed: env-default"),
        "{}",
        renew.stdout
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, failures) = load.join().unwrap();
    eprintln!("https: {sent} requests across a deploy and a renewal, {failed} failed");
    assert!(sent > 20, "the client ran");
    assert_eq!(failed, 0, "{failures:?}");
    let after = served_serial(&manager, &live);
    assert!(
        !before.is_empty() && before != after,
        "serial {before} → {after}"
    );

    // An environment whose names do not lead to the proxy (pebble's DNS sends them to a
    // loopback address nothing listens on): its order fails with the CA's problem, clearly,
    // and does not stop the other environments' renewals; traffic is served as before.
    for h in ["web-pr-8", "web-pr-8-preview"] {
        pebble.point(&format!("{h}.{DOMAIN}"), "127.0.0.2");
    }
    cf(&["env", "create", "pr-8"]).ok();
    let failed = cf(&["deploy", "web", "--env", "pr-8", "--image", &img.web_v2]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("ACME") && failed.stderr.contains(&format!("web-pr-8.{DOMAIN}")),
        "{}",
        failed.stderr
    );
    let issued = pebble.issued();
    let partial = cf(&["certs", "renew"]);
    assert_eq!(partial.code, 1, "{}", partial.stderr);
    assert!(
        partial.stderr.contains("certificate env-default installed")
            && partial.stderr.contains("certificate env-pr-7 installed")
            && partial.stderr.contains("web-pr-8"),
        "{}",
        partial.stderr
    );
    assert_eq!(pebble.issued(), issued + 2);
    let (code, _) = https_get(&root, &manager, &live);
    assert_eq!(code, 200);
    // The failed orders are recorded: the next one waits (a CA limits failed validations per
    // name), `plan` and `certs` say until when, and a deploy there does not order again.
    let plan = cf(&["plan"]).ok();
    let shown = plan.stdout + &plan.stderr;
    assert!(
        shown.contains("certificate env-pr-8: 2 failed order(s)")
            && shown.contains("the next order waits until"),
        "{shown}"
    );
    let again = cf(&["deploy", "web", "--env", "pr-8", "--image", &img.web_v1]).ok();
    assert!(
        again.stderr.contains("the next order waits until")
            && !again.stderr.contains("ordering a certificate"),
        "{}",
        again.stderr
    );
    let listed = cf(&["certs", "-o", "json"]).ok().json();
    assert_eq!(listed["failed_orders"][0]["name"], "env-pr-8", "{listed}");
    assert_eq!(listed["failed_orders"][0]["attempts"], 2, "{listed}");
    cf(&["env", "destroy", "pr-8"]).ok();

    // The private keys appear in no output and no state file.
    // One key of env-default on the manager: the renewed one (the old files went).
    let keys = docker_ok(&[
        "exec",
        &format!("cf-{CLUSTER}-1"),
        "sh",
        "-c",
        "ls /etc/cloudflow/proxy/tls/env-default-*.key",
    ]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    let key = docker_ok(&["exec", &format!("cf-{CLUSTER}-1"), "cat", keys.trim()]);
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(body.len() > 40);
    assert!(!outputs.borrow().contains(&body[..40]));
    for entry in std::fs::read_dir(d.join(".cloudflow")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&body[..40]));
    }
    // Certificates from files instead (a wildcard): installed, and the ACME ones go.
    sh(
        d,
        &format!(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout wild.key -out wild.pem -days 90 \
             -subj /CN=wild -addext 'subjectAltName=DNS:*.{DOMAIN}' 2>/dev/null"
        ),
    );
    std::fs::write(
        d.join("cloudflow.yaml"),
        spec("  https:\n    certificates: [{ hosts: [\"*.tls.test\"], cert_file: ./wild.pem, key_file: ./wild.key }]\n"),
    )
    .unwrap();
    let files = cf(&["up", "--yes"]).ok();
    assert!(
        files.stdout.contains("installed: file-1"),
        "{}",
        files.stdout
    );
    let (code, body) = https_get(&d.join("wild.pem"), &manager, &live);
    assert_eq!((code, body.starts_with("version=2")), (200, true), "{body}");
    let certs = cf(&["certs", "-o", "json"]).ok().json();
    assert_eq!(
        certs["certificates"].as_array().unwrap().len(),
        1,
        "{certs}"
    );
    assert_eq!(certs["certificates"][0]["source"], "file", "{certs}");
    assert_eq!(certs["failed_orders"], serde_json::json!([]), "{certs}");
    let wild_key: String = std::fs::read_to_string(d.join("wild.key"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!outputs.borrow().contains(&wild_key[..40]));

    let mode = docker_ok(&[
        "exec",
        &format!("cf-{CLUSTER}-1"),
        "sh",
        "-c",
        "stat -c %a /etc/cloudflow/proxy/tls/file-1-*.key",
    ]);
    assert_eq!(mode, "600");

    // A second manager joins: it gets the live routes and the certificate from the first
    // (the key 0600, never through output), and its proxy serves HTTPS too.
    let files_spec = spec("  https:\n    certificates: [{ hosts: [\"*.tls.test\"], cert_file: ./wild.pem, key_file: ./wild.key }]\n")
        .replace("lab: { hosts: 1 }", "lab: { hosts: 2, managers: 2 }");
    std::fs::write(d.join("cloudflow.yaml"), files_spec).unwrap();
    let grown = cf(&["up", "--yes"]).ok();
    assert!(
        grown.stderr.contains("copied to") && grown.stderr.contains("cloudflow.conf"),
        "{}",
        grown.stderr
    );
    let second = docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"cloudflow-{CLUSTER}\").IPAddress}}}}"),
        &format!("cf-{CLUSTER}-2"),
    ]);
    let (code, body) = https_get(&d.join("wild.pem"), &second, &live);
    assert_eq!((code, body.starts_with("version=2")), (200, true), "{body}");
    let mode = docker_ok(&[
        "exec",
        &format!("cf-{CLUSTER}-2"),
        "sh",
        "-c",
        "stat -c %a /etc/cloudflow/proxy/tls/file-1-*.key",
    ]);
    assert_eq!(mode, "600");
    assert!(!outputs.borrow().contains(&wild_key[..40]));
    assert!(cf(&["up", "--yes"]).ok().stdout.contains("no changes"));

    // `proxy.https` removed: `plan` says so, `up` removes the certificates (records, routes,
    // files) and plain HTTP answers again.
    std::fs::write(
        d.join("cloudflow.yaml"),
        spec("").replace("lab: { hosts: 1 }", "lab: { hosts: 2, managers: 2 }"),
    )
    .unwrap();
    let plan = cf(&["plan"]).ok();
    let shown = plan.stdout + &plan.stderr;
    assert!(
        shown.contains("https: remove certificate file-1"),
        "{shown}"
    );
    let removed = cf(&["up", "--yes"]).ok();
    assert!(removed.stderr.contains("removed"), "{}", removed.stderr);
    assert!(
        cf(&["certs", "-o", "json"]).ok().json()["certificates"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let (code, body) = get(&format!("{second}:80"), &live, "/").unwrap();
    assert_eq!((code, body.starts_with("version=2")), (200, true), "{body}");
    for host in 1..=2 {
        let left = docker_ok(&[
            "exec",
            &format!("cf-{CLUSTER}-{host}"),
            "sh",
            "-c",
            "ls /etc/cloudflow/proxy/tls/ | wc -l",
        ]);
        assert_eq!(left, "0", "cf-{CLUSTER}-{host}");
    }
    assert!(cf(&["up", "--yes"]).ok().stdout.contains("no changes"));
    cf(&["down", "--yes"]).ok();
}
