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

/// A piece of a PEM key's base64 body that is this key's own: past the PKCS#8 header that
/// every key of its kind shares (for a P-256 key the first 48 characters are the same).
fn own_part(body: &str) -> &str {
    let body = body.trim();
    assert!(body.len() > 96, "a key body of {} characters", body.len());
    &body[56..96]
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
    let acme = format!(
        "  https:\n    port: 443\n    acme:\n      directory: {}\n      email: ops@{DOMAIN}\n      ca_file: {}\n",
        pebble.directory(),
        pebble.ca_file().display()
    );
    std::fs::write(d.join("cloudflow.yaml"), spec(&acme)).unwrap();
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
    assert!(!outputs.borrow().contains(own_part(&body)));
    for entry in std::fs::read_dir(d.join(".cloudflow")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(own_part(&body)));
    }
    // A second manager joins: before its proxy task starts it gets the live routes, the
    // certificates and the ACME account from the first (keys and account 0600, never through
    // output), and it serves HTTPS too.
    let grow = |text: String| text.replace("lab: { hosts: 1 }", "lab: { hosts: 2, managers: 2 }");
    std::fs::write(d.join("cloudflow.yaml"), grow(spec(&acme))).unwrap();
    let grown = cf(&["up", "--yes"]).ok();
    for copied in ["cloudflow.conf", "tls/env-default-", "acme-account-"] {
        assert!(
            grown.stderr.contains(&format!("proxy: {copied}"))
                && grown.stderr.contains("copied to"),
            "{copied}: {}",
            grown.stderr
        );
    }
    let second = docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"cloudflow-{CLUSTER}\").IPAddress}}}}"),
        &format!("cf-{CLUSTER}-2"),
    ]);
    let (code, body) = https_get(&root, &second, &live);
    assert_eq!((code, body.starts_with("version=2")), (200, true), "{body}");
    let modes = docker_ok(&[
        "exec",
        &format!("cf-{CLUSTER}-2"),
        "sh",
        "-c",
        "stat -c %a /etc/cloudflow/proxy/tls/env-default-*.key /etc/cloudflow/proxy/acme-account-*.json",
    ]);
    assert_eq!(modes.lines().collect::<Vec<_>>(), ["600", "600"], "{modes}");
    let account = docker_ok(&[
        "exec",
        &format!("cf-{CLUSTER}-2"),
        "sh",
        "-c",
        "cat /etc/cloudflow/proxy/acme-account-*.json",
    ]);
    let account_key = serde_json::from_str::<serde_json::Value>(&account).unwrap()["key_pkcs8"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(account_key.len() > 40);
    assert!(!outputs.borrow().contains(own_part(&account_key)));
    assert!(cf(&["up", "--yes"]).ok().stdout.contains("no changes"));

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
        grow(spec("  https:\n    certificates: [{ hosts: [\"*.tls.test\"], cert_file: ./wild.pem, key_file: ./wild.key }]\n")),
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
    assert!(!outputs.borrow().contains(own_part(&wild_key)));

    let mode = docker_ok(&[
        "exec",
        &format!("cf-{CLUSTER}-1"),
        "sh",
        "-c",
        "stat -c %a /etc/cloudflow/proxy/tls/file-1-*.key",
    ]);
    assert_eq!(mode, "600");

    // The second manager serves the wildcard too, its key 0600.
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
    assert!(!outputs.borrow().contains(own_part(&wild_key)));
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

/// A node for the fake Kubernetes API (which runs no pods): the proxy image's real nginx in a
/// container on a network of this test's own, run by `kube_node.py` as a kubelet would run the
/// proxy's pods (their ConfigMap and Secret volumes written into its bind mounts, `nginx -t`,
/// reload; a pod is Ready only once that nginx serves its configuration). The cluster's DNS,
/// which the routes resolve Services through, is `pebble-challtestsrv` inside the node,
/// answering every name with the address of one real web container (`version=1`).
struct KubeNode {
    net: String,
    container: String,
    web: String,
    agent: Child,
    address: String,
    log: PathBuf,
}

impl KubeNode {
    fn start(
        dir: &Path,
        image: &str,
        web_image: &str,
        kubeconfig: &Path,
        ready: &Path,
    ) -> KubeNode {
        let net = format!("cfk8stls-{}", std::process::id());
        let container = format!("{net}-node");
        let web = format!("{net}-web");
        let _ = docker(&["rm", "-f", &container, &web]);
        let _ = docker(&["network", "rm", &net]);
        docker_ok(&["network", "create", &net]);
        docker_ok(&["run", "-d", "--name", &web, "--network", &net, web_image]);
        let web_address = docker_ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            &web,
        ]);
        let (conf, tls) = (dir.join("node/conf.d"), dir.join("node/tls"));
        std::fs::create_dir_all(&conf).unwrap();
        std::fs::create_dir_all(&tls).unwrap();
        // Until the first pod: a server that answers nothing routed.
        std::fs::write(
            conf.join("placeholder.conf"),
            "server { listen 80 default_server; return 503; }\n",
        )
        .unwrap();
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            &net,
            // The routes' resolver is the cluster's DNS: a name nginx can resolve at load.
            "--add-host",
            "kube-dns.kube-system.svc.cluster.local:127.0.0.1",
            "-v",
            &format!("{}:/etc/nginx/conf.d:ro", conf.display()),
            "-v",
            &format!("{}:/etc/nginx/tls:ro", tls.display()),
            "-v",
            "/usr/bin/pebble-challtestsrv:/usr/local/bin/cluster-dns:ro",
            image,
        ]);
        docker_ok(&[
            "exec",
            "-d",
            &container,
            "cluster-dns",
            "-defaultIPv4",
            &web_address,
            "-defaultIPv6",
            "",
            "-dns01",
            "127.0.0.1:53",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            "127.0.0.1:8055",
        ]);
        let address = docker_ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            &container,
        ]);
        let log = dir.join("node.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/kube_node.py");
        let agent = Command::new("python3")
            .arg(script)
            .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
            .args(["--namespace", "cloudflow-system"])
            .args(["--selector", "cloudflow.proxy=nginx"])
            .args(["--container", &container])
            .args(["--mount", &format!("/etc/nginx/conf.d={}", conf.display())])
            .args(["--mount", &format!("/etc/nginx/tls={}", tls.display())])
            .args(["--readiness-dir", ready.to_str().unwrap()])
            .args(["--log", log.to_str().unwrap()])
            .spawn()
            .expect("python3 (kube_node.py)");
        KubeNode {
            net,
            container,
            web,
            agent,
            address,
            log,
        }
    }
}

impl Drop for KubeNode {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        let _ = docker(&["rm", "-f", &self.container, &self.web]);
        let _ = docker(&["network", "rm", &self.net]);
    }
}

#[test]
fn kubernetes_proxy_gets_certificates_from_pebble_through_a_secret_and_serves_them() {
    use crate::kubernetes::{KubeFake, refused};
    host_image();
    let reg = Registry::start();
    let img = build_images(&reg, IMAGE);
    let dir = workdir();
    let d = dir.path();
    let ready = d.join("ready");
    std::fs::create_dir_all(&ready).unwrap();
    let k = KubeFake::start(&[
        "--external-readiness",
        "cloudflow.proxy=nginx",
        "--readiness-dir",
        ready.to_str().unwrap(),
    ]);
    std::fs::copy(&k.kubeconfig, d.join("kubeconfig")).unwrap();
    let local_proxy = format!("{}/cf-test-proxy:1", reg.push);
    let local_web = format!("{}/cf-test-web:1", reg.push);
    let node = KubeNode::start(d, &local_proxy, &local_web, &k.kubeconfig, &ready);
    let pebble = Pebble::start(&node.address);
    let outputs = std::cell::RefCell::new(String::new());
    let cf = |args: &[&str]| {
        let run = cloudflow(d, args);
        outputs
            .borrow_mut()
            .push_str(&format!("{}\n{}\n", run.stdout, run.stderr));
        run
    };
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "name: k8stls\nkubernetes: {{ kubeconfig: ./kubeconfig }}\n\
             proxy:\n  domain: {DOMAIN}\n  image: \"{proxy}\"\n  port: 80\n  https:\n    port: 443\n    acme:\n      directory: {dir}\n      email: ops@{DOMAIN}\n      ca_file: {ca}\n\
             services:\n  web: {{ image: \"{v1}\", port: 8080, replicas: 2, health: {{ path: /healthz }} }}\n",
            proxy = img.proxy,
            v1 = img.web_v1,
            dir = pebble.directory(),
            ca = pebble.ca_file().display(),
        ),
    )
    .unwrap();
    let t = Instant::now();
    let up = cf(&["up", "--yes"]);
    let node_log = || std::fs::read_to_string(&node.log).unwrap_or_default();
    assert_eq!(
        up.code,
        0,
        "{}\n{}\nnode:\n{}",
        up.stdout,
        up.stderr,
        node_log()
    );
    eprintln!(
        "https on kubernetes: up with a certificate from pebble in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        up.stderr
            .contains("https: certificate env-default installed"),
        "{}",
        up.stderr
    );
    assert_eq!(pebble.issued(), 1);

    // What the API holds, read with kubectl: the key pair in the Secret the proxy mounts 0600
    // (optional: the proxy started before it existed), port 443 on the pods and the load
    // balancer, no challenge left in the ConfigMap.
    let secret = k.json(&[
        "get",
        "secret",
        "cloudflow-proxy-tls",
        "-n",
        "cloudflow-system",
    ]);
    let keys: Vec<String> = secret["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("env-default-")),
        "{keys:?}"
    );
    let proxy = k.json(&[
        "get",
        "deployment",
        "cloudflow-proxy",
        "-n",
        "cloudflow-system",
    ]);
    let pod = &proxy["spec"]["template"]["spec"];
    let tls_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tls")
        .unwrap_or_else(|| panic!("{pod}"));
    assert_eq!(tls_volume["secret"]["secretName"], "cloudflow-proxy-tls");
    assert_eq!(tls_volume["secret"]["defaultMode"], 0o600);
    assert_eq!(tls_volume["secret"]["optional"], true);
    let ports = pod["containers"][0]["ports"].to_string();
    assert!(ports.contains("443"), "{ports}");
    let lb = k.json(&[
        "get",
        "service",
        "cloudflow-proxy",
        "-n",
        "cloudflow-system",
    ]);
    let https_port = lb["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "https")
        .unwrap_or_else(|| panic!("{lb}"))
        .clone();
    assert_eq!(
        (
            https_port["port"].as_i64(),
            https_port["targetPort"].as_i64()
        ),
        (Some(443), Some(443))
    );
    let cm = k.json(&[
        "get",
        "configmap",
        "cloudflow-proxy",
        "-n",
        "cloudflow-system",
    ]);
    let challenges = cm["data"]["acme-challenges.inc"].as_str().unwrap();
    assert!(!challenges.contains("location"), "{challenges}");
    assert!(refused(&k.calls()).is_empty(), "{:?}", refused(&k.calls()));

    // The node's nginx, started from those objects, serves the certificate pebble issued for
    // both names (curl trusts only pebble's root), through to the web app the Service names
    // resolve to; plain HTTP answers 301.
    let root = pebble.issuing_root();
    let live = format!("web-default.{DOMAIN}");
    for host in [live.clone(), format!("web-default-preview.{DOMAIN}")] {
        let (code, body) = https_get(&root, &node.address, &host);
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.starts_with("version=1"), "{host}: {body}");
    }
    let (code, _) = get(&format!("{}:80", node.address), &live, "/").unwrap();
    assert_eq!(code, 301);
    // A name without a certificate is refused in the handshake.
    let (code, _) = https_get(&root, &node.address, &format!("other.{DOMAIN}"));
    assert_eq!(code, 0);

    // A second `up` orders nothing.
    let again = cf(&["up", "--yes"]).ok();
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);
    assert_eq!(pebble.issued(), 1);

    // An environment created later gets its own certificate (its own key pair in the
    // Secret); destroying it takes them out again.
    cf(&["env", "create", "pr-7", "--ttl", "1h"]).ok();
    cf(&["deploy", "web", "--env", "pr-7", "--image", &img.web_v2]).ok();
    assert_eq!(pebble.issued(), 2);
    let (code, body) = https_get(&root, &node.address, &format!("web-pr-7.{DOMAIN}"));
    assert_eq!(code, 200, "{body}");
    let secret_keys = |k: &KubeFake| -> Vec<String> {
        k.json(&[
            "get",
            "secret",
            "cloudflow-proxy-tls",
            "-n",
            "cloudflow-system",
        ])["data"]
            .as_object()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        secret_keys(&k)
            .iter()
            .filter(|k| k.starts_with("env-pr-7-"))
            .count(),
        2
    );
    // Two environments renewed together: both orders' challenge answers go out in one
    // rollout of the proxy, both certificates in another (not two per environment).
    let proxy_patches = |k: &KubeFake| {
        k.calls()
            .iter()
            .filter(|c| {
                c["method"] == "PATCH"
                    && c["path"]
                        == "/apis/apps/v1/namespaces/cloudflow-system/deployments/cloudflow-proxy"
            })
            .count()
    };
    let patches = proxy_patches(&k);
    let renew_both = cf(&["certs", "renew"]).ok();
    assert_eq!(pebble.issued(), 4);
    assert_eq!(proxy_patches(&k) - patches, 2, "{}", renew_both.stderr);
    for env in ["default", "pr-7"] {
        let (code, body) = https_get(&root, &node.address, &format!("web-{env}.{DOMAIN}"));
        assert_eq!(code, 200, "{env}: {body}");
    }
    cf(&["env", "destroy", "pr-7"]).ok();
    let keys = secret_keys(&k);
    assert!(
        keys.iter().all(|k| k.starts_with("env-default-")),
        "{keys:?}"
    );

    // Under an HTTPS loop: a blue-green deploy (the switch flips the Service's selector and
    // leaves the proxy's pods alone: same ConfigMap, same pod template), then a forced
    // renewal (a new serial served, the old key pair gone from the Secret).
    let template = |k: &KubeFake| {
        k.json(&[
            "get",
            "deployment",
            "cloudflow-proxy",
            "-n",
            "cloudflow-system",
        ])["spec"]["template"]
            .to_string()
    };
    let before_deploy = template(&k);
    let before = served_serial(&node.address, &live);
    let (stop, load) = https_load(root.clone(), node.address.clone(), live.clone());
    std::thread::sleep(Duration::from_secs(1));
    cf(&["deploy", "web", "--image", &img.web_v2]).ok();
    assert_eq!(template(&k), before_deploy, "a switch rolled the proxy");
    let renew = cf(&["certs", "renew"]);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (sent, failed, failures) = load.join().unwrap();
    eprintln!(
        "https on kubernetes: {sent} HTTPS requests across deploy and renewal, {failed} failed"
    );
    assert_eq!(
        renew.code,
        0,
        "{}\n{}\nnode:\n{}",
        renew.stdout,
        renew.stderr,
        node_log()
    );
    assert_eq!(failed, 0, "{failures:?}");
    assert!(sent > 10, "{sent}");
    assert_eq!(pebble.issued(), 5);
    let after = served_serial(&node.address, &live);
    assert!(!before.is_empty() && before != after, "{before} -> {after}");
    let secret = k.json(&[
        "get",
        "secret",
        "cloudflow-proxy-tls",
        "-n",
        "cloudflow-system",
    ]);
    let data = secret["data"].as_object().unwrap();
    assert_eq!(data.len(), 2, "{secret}");

    // The private key (from the Secret) appears in no output and no state file.
    let (_, key_b64) = data.iter().find(|(k, _)| k.ends_with(".key")).unwrap();
    let key = String::from_utf8(
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            key_b64.as_str().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    // The Secret's own encoding of it (what a leaked API body would show) too.
    let encoded = key_b64.as_str().unwrap().to_string();
    for part in [own_part(&body), own_part(&encoded)] {
        assert!(!outputs.borrow().contains(part));
        for entry in std::fs::read_dir(d.join(".cloudflow")).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(part));
        }
    }

    // `down` leaves neither the certificates nor the ACME account behind.
    cf(&["down", "--yes"]).ok();
    let left = k.kubectl(&["get", "secrets", "-A", "-o", "name"]);
    assert!(!left.contains("cloudflow-"), "{left}");
    assert!(refused(&k.calls()).is_empty(), "{:?}", refused(&k.calls()));
}

/// A CA that takes the connection and never answers (a listener nobody reads): the order fails
/// within `acme.timeout` with one clear error, the deploy itself stands, the failure is
/// recorded, and the next `up` waits instead of ordering again. On the fake Kubernetes API:
/// nothing here needs a proxy that really serves.
#[test]
fn a_ca_that_never_answers_fails_within_the_timeout_and_the_next_order_waits() {
    use crate::kubernetes::KubeFake;
    let k = KubeFake::start(&[]);
    let dir = workdir();
    let d = dir.path();
    std::fs::copy(&k.kubeconfig, d.join("kubeconfig")).unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "name: k8sstall\nkubernetes: {{ kubeconfig: ./kubeconfig }}\n\
             proxy:\n  domain: {DOMAIN}\n  image: reg:5000/nginx:stable\n  port: 80\n  https:\n    acme:\n      directory: https://127.0.0.1:{port}/dir\n      timeout: 2s\n\
             services:\n  web: {{ image: reg:5000/web:1, port: 8080, replicas: 1 }}\n"
        ),
    )
    .unwrap();
    let t = Instant::now();
    let up = cloudflow(d, &["up", "--yes"]);
    let took = t.elapsed();
    assert_eq!(up.code, 1, "{}\n{}", up.stdout, up.stderr);
    assert!(
        up.stderr.contains(&format!(
            "ACME: registering an account at https://127.0.0.1:{port}/dir failed: the CA did not answer within 2s (proxy.https.acme.timeout)"
        )),
        "{}",
        up.stderr
    );
    assert!(
        up.stderr.contains(&format!(
            "no certificate for web-default.{DOMAIN}, web-default-preview.{DOMAIN}; traffic is served as before"
        )),
        "{}",
        up.stderr
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    // The deploy stands: web is live behind the proxy.
    assert_eq!(
        k.json(&["get", "service", "web", "-n", "default"])["spec"]["selector"]["cloudflow.color"],
        "blue"
    );
    let certs = cloudflow(d, &["certs", "-o", "json"]).ok().json();
    assert_eq!(certs["failed_orders"][0]["name"], "env-default", "{certs}");
    assert_eq!(certs["failed_orders"][0]["attempts"], 1, "{certs}");
    // The next `up` waits (and says until when) instead of asking the CA again.
    let t = Instant::now();
    let again = cloudflow(d, &["up", "--yes"]).ok();
    assert!(
        again.stderr.contains("the next order waits until")
            || again.stdout.contains("the next order waits until"),
        "{}\n{}",
        again.stdout,
        again.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(2 * 60));
    let certs = cloudflow(d, &["certs", "-o", "json"]).ok().json();
    assert_eq!(certs["failed_orders"][0]["attempts"], 1, "{certs}");

    // Certificates from files whose key is another certificate's: refused before anything
    // goes live (on Kubernetes the proxy's new pods would never become Ready), the key not
    // quoted.
    sh(
        d,
        "for n in a b; do openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.pem -days 2 -subj /CN=$n 2>/dev/null; done",
    );
    let spec = std::fs::read_to_string(d.join("cloudflow.yaml")).unwrap();
    let acme_start = spec.find("    acme:").unwrap();
    let acme_end = spec.find("services:").unwrap();
    std::fs::write(
        d.join("cloudflow.yaml"),
        format!(
            "{}    certificates: [{{ hosts: [\"*.{DOMAIN}\"], cert_file: ./a.pem, key_file: ./b.key }}]\n{}",
            &spec[..acme_start],
            &spec[acme_end..]
        ),
    )
    .unwrap();
    let mismatched = cloudflow(d, &["up", "--yes"]);
    assert_eq!(
        mismatched.code, 2,
        "{}\n{}",
        mismatched.stdout, mismatched.stderr
    );
    assert!(
        mismatched
            .stderr
            .contains("b.key: the key file's key does not belong to this certificate"),
        "{}",
        mismatched.stderr
    );
    let b_key = std::fs::read_to_string(d.join("b.key")).unwrap();
    let b_body: String = b_key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!mismatched.stderr.contains(own_part(&b_body)));
    assert!(!mismatched.stdout.contains(own_part(&b_body)));
    let certs = cloudflow(d, &["certs", "-o", "json"]).ok().json();
    assert_eq!(certs["certificates"], serde_json::json!([]), "{certs}");
    cloudflow(d, &["down", "--yes"]).ok();
    drop(silent);
}
