//! The nodes' HTTP proxy, end to end through a real proxy: Debian's `tinyproxy` on this
//! machine, with basic auth. A bare-metal host's apt (installing Docker) and its dockerd
//! (pulling from a registry) go through it, as tinyproxy's own log shows.

use std::process::{Child, Command, Stdio};

use crate::deploy_fixture::Registry;
use crate::support::*;

struct TinyProxy {
    child: Child,
    _dir: tempfile::TempDir,
    log: std::path::PathBuf,
    port: u16,
}

impl TinyProxy {
    /// Basic auth `user` / `password` (tinyproxy takes letters, digits, `.`, `-`, `_`).
    fn start(user: &str, password: &str) -> TinyProxy {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 0.0.0.0\nTimeout 120\nMaxClients 100\nLogFile \"{}\"\nLogLevel Connect\n\
                 BasicAuth {user} {password}\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (apt-get install tinyproxy)");
        wait_for_port("127.0.0.1", port);
        TinyProxy {
            child,
            _dir: dir,
            log,
            port,
        }
    }

    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Request (file descriptor"))
            .map(String::from)
            .collect()
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn apt_and_dockerd_on_the_nodes_go_through_the_spec_proxy() {
    let dir = workdir();
    let d = dir.path();
    let (key, public) = keypair(d, "id_ed25519");
    let hosts = Hosts::start("cfit-hproxy", 1, &public);
    let proxy = TinyProxy::start("ci", "s3cret.pw");
    let reg = Registry::start();
    // A tiny image to pull through the proxy.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello"), "hello\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello /hello\nCMD [\"/hello\"]\n",
    )
    .unwrap();
    let local = format!("{}/cf-proxy-hello:1", reg.push);
    assert!(
        Command::new("docker")
            .args(["build", "-q", "-t", &local])
            .arg(ctx.path())
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("docker")
            .args(["push", "-q", &local])
            .status()
            .unwrap()
            .success()
    );
    let gateway = reg.pull.split(':').next().unwrap().to_string();

    // The password's `.` is percent-encoded in the URL (`%2E`): the `%` must reach dockerd's
    // environment and apt's configuration as written, and both decode it.
    let url = format!("http://ci:s3cret%2Epw@{gateway}:{}", proxy.port);
    std::fs::write(
        d.join("cluster.yaml"),
        format!(
            "name: cfit-hproxy\nprovider:\n  bare_metal:\n    ssh_key: {key}\n    hosts:\n      - {{ address: {a}, role: manager }}\n\
             registry:\n  insecure: [\"{pull}\"]\n\
             proxy:\n  http_proxy: \"{url}\"\n  no_proxy: [localhost, 127.0.0.1]\n",
            key = key.display(),
            a = hosts.addresses[0],
            pull = reg.pull,
        ),
    )
    .unwrap();
    let up = cloudflow(
        d,
        &["-f", "cluster.yaml", "up", "--yes", "--until", "bootstrap"],
    )
    .ok();
    assert!(
        !up.stdout.contains("s3cret") && !up.stderr.contains("s3cret"),
        "the proxy password was shown:\n{}\n{}",
        up.stdout,
        up.stderr
    );

    // apt went through the proxy to install Docker.
    let apt: Vec<String> = proxy
        .requests()
        .into_iter()
        .filter(|l| l.contains("/dists/") || l.contains(".deb "))
        .collect();
    assert!(
        !apt.is_empty(),
        "no apt request in tinyproxy's log: {:?}",
        proxy.requests()
    );
    assert!(
        proxy.requests().iter().any(|l| l.contains("docker.io")),
        "the docker.io package was not fetched through the proxy"
    );

    // dockerd pulls through it too (the registry is not in no_proxy).
    let pull = hosts.exec(
        0,
        &format!(
            "docker pull -q {}/cf-proxy-hello:1 && echo pulled",
            reg.pull
        ),
    );
    assert!(pull.ends_with("pulled"), "{pull}");
    let v2 = format!("GET http://{}/v2/", reg.pull);
    assert!(
        proxy.requests().iter().any(|l| l.contains(&v2)),
        "dockerd did not go through the proxy: {:?}",
        proxy.requests()
    );

    // The files holding the credentials are root's alone.
    assert_eq!(
        hosts.exec(
            0,
            "stat -c %a /etc/cloudflow/docker.env /etc/apt/apt.conf.d/95cloudflow-proxy"
        ),
        "600\n600"
    );
    let again = cloudflow(
        d,
        &["-f", "cluster.yaml", "up", "--yes", "--until", "bootstrap"],
    )
    .ok();
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);

    cloudflow(d, &["-f", "cluster.yaml", "down", "--yes"]).ok();
    assert_eq!(
        hosts.exec(
            0,
            "ls /etc/cloudflow/docker.env /etc/apt/apt.conf.d/95cloudflow-proxy 2>/dev/null | wc -l"
        ),
        "0"
    );
}
