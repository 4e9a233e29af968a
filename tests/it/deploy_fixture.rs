//! Fixtures for the deploy tests and the deploy benchmark (included by both): a real
//! distribution registry on this machine that lab hosts reach through the Docker bridge,
//! locally built images pushed to it (a static test web app and an nginx proxy), plain
//! HTTP through the proxy, and a client that loops requests while deployments happen.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The real `docker-registry` (Debian's distribution registry), serving on every address of
/// this machine; lab hosts pull through the Docker bridge's gateway.
pub struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    /// What this machine pushes to (loopback: insecure by default).
    pub push: String,
    /// What lab hosts pull from (listed as an insecure registry in the spec).
    pub pull: String,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 0.0.0.0:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .args(["serve", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        // Not a Docker bridge address: lab hosts run their own dockerd, whose docker0 and
        // docker_gwbridge take those ranges inside them. This machine's primary address works.
        let gateway = sh("hostname -I")
            .split_whitespace()
            .next()
            .expect("an address of this machine")
            .to_string();
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry {
            child,
            _dir: dir,
            push: format!("127.0.0.1:{port}"),
            pull: format!("{gateway}:{port}"),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Image references as lab hosts pull them.
pub struct Images {
    pub web_v1: String,
    pub web_v2: String,
    /// Answers /healthz with 500.
    pub web_bad: String,
    /// Answers everything 503 for its first 8 seconds (a slow start), no HEALTHCHECK.
    pub web_slow: String,
    /// The same slow start (6 s), with an image HEALTHCHECK (`webapp probe`, exec form).
    pub web_slow_hc: String,
    pub proxy: String,
}

/// Build the test images locally and push them to `reg`. The web app is a static binary in
/// a FROM-scratch image; the proxy is nginx from Debian packages on the lab host image
/// (no image can be pulled from a hub here).
pub fn build_images(reg: &Registry, lab_image: &str) -> Images {
    let ctx = tempfile::tempdir().unwrap();
    let d = ctx.path();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/webapp.c");
    sh(&format!(
        "gcc -static -O2 -o {}/webapp {}",
        d.display(),
        src.display()
    ));
    let build = |tag: &str, dockerfile: &str| {
        std::fs::write(d.join("Dockerfile"), dockerfile).unwrap();
        let local = format!("{}/{tag}", reg.push);
        sh(&format!("docker build -q -t {local} {}", d.display()));
        sh(&format!("docker push -q {local}"));
        format!("{}/{tag}", reg.pull)
    };
    let web = |version: &str, healthy: &str| {
        format!(
            "FROM scratch\nCOPY webapp /webapp\nENV VERSION={version} HEALTHY={healthy}\nEXPOSE 8080\nENTRYPOINT [\"/webapp\"]\n"
        )
    };
    let web_v1 = build("cf-test-web:1", &web("1", "1"));
    let web_v2 = build("cf-test-web:2", &web("2", "1"));
    let web_bad = build("cf-test-web:bad", &web("bad", "0"));
    let web_slow = build(
        "cf-test-web:slow",
        &format!("{}ENV STARTUP_SECONDS=8\n", web("slow", "1")),
    );
    let web_slow_hc = build(
        "cf-test-web:slow-hc",
        &format!(
            "{}ENV STARTUP_SECONDS=6\nHEALTHCHECK --interval=1s --timeout=2s --retries=60 CMD [\"/webapp\", \"probe\"]\n",
            web("slowhc", "1")
        ),
    );
    let proxy = build(
        "cf-test-proxy:1",
        &format!(
            "FROM {lab_image}\n\
             RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx-light \
                 || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx; \
                 rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* /etc/nginx/conf.d/*; \
                 ln -sf /dev/stderr /var/log/nginx/error.log; ln -sf /dev/null /var/log/nginx/access.log\n\
             STOPSIGNAL SIGQUIT\n\
             ENTRYPOINT []\n\
             CMD [\"nginx\", \"-g\", \"daemon off;\"]\n"
        ),
    );
    Images {
        web_v1,
        web_v2,
        web_bad,
        web_slow,
        web_slow_hc,
        proxy,
    }
}

/// One HTTP/1.0 GET with a `Host` header: status and body.
pub fn get(addr: &str, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: cloudflow-test\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// Requests looping through the proxy while something happens.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    handle: Option<JoinHandle<(Vec<String>, Vec<f64>)>>,
}

pub struct LoadReport {
    pub sent: u64,
    pub failed: u64,
    /// Each distinct response body, in the order first seen (e.g. version=1, version=2).
    pub versions: Vec<String>,
    /// The first few failures, for the assertion message.
    pub failures: Vec<String>,
    /// Every request's latency in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
}

impl LoadReport {
    /// The `p`-th percentile latency (0..=100) in milliseconds.
    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return 0.0;
        }
        let i = ((p / 100.0) * (self.latencies_ms.len() - 1) as f64).round() as usize;
        self.latencies_ms[i]
    }
}

impl Load {
    pub fn start(addr: &str, host: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (a, h, st, se, fa) = (
            addr.to_string(),
            host.to_string(),
            stop.clone(),
            sent.clone(),
            failed.clone(),
        );
        let handle = std::thread::spawn(move || {
            let mut seen: Vec<String> = Vec::new();
            let mut failures = Vec::new();
            let mut latencies = Vec::new();
            while !st.load(Ordering::Relaxed) {
                se.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                let r = get(&a, &h, "/");
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                match r {
                    Ok((200, body)) => {
                        let v = body.split_whitespace().next().unwrap_or("").to_string();
                        if !seen.contains(&v) {
                            seen.push(v);
                        }
                    }
                    other => {
                        fa.fetch_add(1, Ordering::Relaxed);
                        if failures.len() < 10 {
                            failures.push(format!("{other:?}"));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            seen.push(String::new());
            seen.extend(failures);
            latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (seen, latencies)
        });
        Load {
            stop,
            sent,
            failed,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let (mut all, latencies_ms) = self.handle.take().unwrap().join().unwrap();
        let split = all.iter().position(String::is_empty).unwrap();
        let failures = all.split_off(split + 1);
        all.pop();
        LoadReport {
            sent: self.sent.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            versions: all,
            failures,
            latencies_ms,
        }
    }
}

/// Wait until `f` holds (polling), or panic with `what`.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out after {timeout:?}: {what}");
}
