//! A real etcd (Debian's `etcd-server`) on loopback ports of its own, with a data directory
//! that survives a stop, so a test can take it away mid-command and bring it back.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::free_port;

pub struct EtcdServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
}

impl EtcdServer {
    pub fn start() -> EtcdServer {
        let mut s = EtcdServer {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
        };
        s.restart();
        s
    }

    /// Start it (again), on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new("etcd")
            .args([
                "--name",
                "cftest",
                "--data-dir",
                self.dir.path().join("data").to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("cftest={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        self.child = Some(child);
        for _ in 0..100 {
            if self.get_prefix("/").is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd did not start: {}",
            std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
        );
    }

    /// Stop it hard (SIGKILL): clients see it vanish.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://127.0.0.1:{}/{prefix}", self.client_port)
    }

    /// Keys under `prefix`, read with etcd's own client; `None` when etcd does not answer.
    pub fn get_prefix(&self, prefix: &str) -> Option<Vec<String>> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &format!("127.0.0.1:{}", self.client_port),
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "2s",
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ])
            .output()
            .expect("etcdctl (apt-get install etcd-client)");
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        })
    }

    /// One key's value.
    pub fn value(&self, key: &str) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &format!("127.0.0.1:{}", self.client_port),
                "get",
                "--print-value-only",
                key,
            ])
            .output()
            .ok()?;
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !v.is_empty()).then_some(v)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
