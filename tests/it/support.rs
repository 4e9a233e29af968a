//! Shared fixtures: the cloudflow binary, "bare-metal" hosts (Debian containers with sshd that
//! cloudflow did not create), and a real distribution registry with htpasswd auth.
//!
//! Everything a fixture makes carries the label `cloudflow-test=<prefix>` and is removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use cloudflow_provider_api::Progress;

pub const IMAGE: &str = cloudflow_provider_lab::DEFAULT_IMAGE;

/// Flags that make Docker-in-container work on this kernel (`--privileged` does not).
const HOST_FLAGS: &[&str] = &[
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/var/lib/docker:exec",
];

struct Stderr;
impl Progress for Stderr {
    fn step(&self, what: &str) {
        eprintln!("fixture: {what}");
    }
}

/// The lab host image, built once per run (the product's own debootstrap build).
pub fn host_image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(cloudflow_provider_lab::ensure_host_image(IMAGE, &Stderr))
            .expect("lab host image");
    });
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run the cloudflow binary in `dir` with `args`.
pub fn cloudflow(dir: &Path, args: &[&str]) -> Run {
    cloudflow_env(dir, args, &[])
}

pub fn cloudflow_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
        .current_dir(dir)
        .args(args)
        .env_remove("CLOUDFLOW_FILE")
        .env_remove("CLOUDFLOW_YES")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cloudflow");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "$ cloudflow {} -> {}\n{}",
        args.join(" "),
        run.code,
        run.stderr
    );
    run
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "cloudflow failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }
}

/// An SSH key pair in `dir`; returns (private key path, public key line).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    use ssh_key::{Algorithm, LineEnding, PrivateKey, rand_core::OsRng};
    let path = dir.join(name);
    let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).unwrap();
    key.write_openssh_file(&path, LineEnding::LF).unwrap();
    (path, key.public_key().to_openssh().unwrap())
}

/// A set of Debian hosts with sshd, on their own network, that cloudflow did not create.
pub struct Hosts {
    pub prefix: String,
    pub names: Vec<String>,
    pub addresses: Vec<String>,
    pub network: String,
    /// The image every host of the set runs (the lab host image unless told).
    pub image: String,
}

const ENTRY: &str = r#"mkdir -p /run/sshd /root/.ssh && printf '%s\n' "$AUTHORIZED_KEY" > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys && rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -e"#;

impl Hosts {
    pub fn start(prefix: &str, count: usize, public_key: &str) -> Hosts {
        host_image();
        Hosts::start_on(prefix, count, public_key, IMAGE)
    }

    /// [`start`](Self::start) with hosts from `image` (an image with sshd, made from the lab's).
    pub fn start_on(prefix: &str, count: usize, public_key: &str, image: &str) -> Hosts {
        let network = format!("{prefix}-net");
        Hosts::cleanup(prefix);
        docker_ok(&[
            "network",
            "create",
            "--label",
            &format!("cloudflow-test={prefix}"),
            &network,
        ]);
        let mut hosts = Hosts {
            prefix: prefix.into(),
            names: vec![],
            addresses: vec![],
            network,
            image: image.to_string(),
        };
        for i in 1..=count {
            let name = format!("{prefix}-{i}");
            hosts.add(&name, public_key);
        }
        hosts
    }

    /// Start one more host on the set's network.
    pub fn add(&mut self, name: &str, public_key: &str) -> String {
        let label = format!("cloudflow-test={}", self.prefix);
        let key_env = format!("AUTHORIZED_KEY={public_key}");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            name,
            "--label",
            &label,
            "--network",
            &self.network,
            "-e",
            &key_env,
        ];
        args.extend_from_slice(HOST_FLAGS);
        args.extend_from_slice(&[&self.image, "/bin/sh", "-c", ENTRY]);
        docker_ok(&args);
        let ip = docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ]);
        wait_for_port(&ip, 22);
        self.names.push(name.to_string());
        self.addresses.push(ip.clone());
        ip
    }

    pub fn exec(&self, index: usize, script: &str) -> String {
        docker_ok(&["exec", &self.names[index], "sh", "-c", script])
    }

    fn cleanup(prefix: &str) {
        let label = format!("label=cloudflow-test={prefix}");
        let ids = docker_ok(&["ps", "-aq", "--filter", &label]);
        for id in ids.split_whitespace() {
            docker(&["rm", "-f", "-v", id]);
        }
        let nets = docker_ok(&["network", "ls", "-q", "--filter", &label]);
        for id in nets.split_whitespace() {
            docker(&["network", "rm", id]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        Hosts::cleanup(&self.prefix);
    }
}

pub fn wait_for_port(ip: &str, port: u16) {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();
    for _ in 0..150 {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
            .is_ok()
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{addr} never accepted connections");
}

/// A real distribution registry (Debian's docker-registry) with htpasswd auth, running in a
/// host of `hosts`. Returns "ip:5000".
pub fn start_registry(hosts: &mut Hosts, user: &str, password: &str, public_key: &str) -> String {
    let name = format!("{}-registry", hosts.prefix);
    let ip = hosts.add(&name, public_key);
    let hash = bcrypt::hash(password, 5).unwrap();
    let config = "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\nhttp:\n  addr: :5000\n\
                  auth:\n  htpasswd:\n    realm: cloudflow-test\n    path: /etc/registry/htpasswd\n";
    docker_ok(&[
        "cp",
        "/usr/bin/docker-registry",
        &format!("{name}:/usr/local/bin/docker-registry"),
    ]);
    let setup = format!(
        "mkdir -p /etc/registry /var/lib/registry && printf '%s\\n' '{user}:{hash}' > /etc/registry/htpasswd && \
         printf '%s' '{config}' > /etc/registry/config.yml && \
         (setsid docker-registry serve /etc/registry/config.yml > /var/log/registry.log 2>&1 < /dev/null &)"
    );
    docker_ok(&["exec", &name, "sh", "-c", &setup]);
    wait_for_port(&ip, 5000);
    format!("{ip}:5000")
}

/// A temporary directory for a spec and its state.
pub fn workdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A free TCP port on loopback (bound, then released for the peer to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes a lab cluster's containers and network if a test stops half-way.
pub struct LabGuard(pub String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        let filter = format!("label=cloudflow.cluster={}", self.0);
        for id in docker_ok(&["ps", "-aq", "--filter", &filter]).lines() {
            docker(&["rm", "-f", id]);
        }
        docker(&["network", "rm", &format!("cloudflow-{}", self.0)]);
    }
}
