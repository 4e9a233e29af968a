//! k3s on our machines: the files cloudflow writes (config, registries, service environment)
//! as text, and the commands that install, start, join and remove it. Data only; the cluster
//! phase runs them over SSH. Binaries and images travel on stdin (base64), like every file.

use std::collections::BTreeMap;

use base64::Engine;
use secrecy::SecretString;

use super::{Cmd, Effect};
use crate::facts::Init;
use crate::render::sh_quote as sh;
use crate::spec::{ProxySpec, RegistrySpec};

pub const BIN: &str = "/usr/local/bin/k3s";
pub const DIR: &str = "/etc/rancher/k3s";
pub const CONFIG: &str = "/etc/rancher/k3s/config.yaml";
pub const REGISTRIES: &str = "/etc/rancher/k3s/registries.yaml";
/// The service's environment (HTTP proxy settings): may hold a proxy password, 0600.
pub const ENV: &str = "/etc/rancher/k3s/k3s.env";
/// The join token on servers that join and on agents, 0600 (`token-file:` in the config).
pub const TOKEN_FILE: &str = "/etc/rancher/k3s/cluster-token";
pub const IMAGES_DIR: &str = "/var/lib/rancher/k3s/agent/images";
/// Where the first server writes what others need.
pub const NODE_TOKEN: &str = "/var/lib/rancher/k3s/server/node-token";
pub const KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
const PID: &str = "/run/cloudflow-k3s.pid";
const LOG: &str = "/var/log/cloudflow-k3s.log";
pub const API_PORT: u16 = 6443;

/// Names the binary and images that were copied (their SHA-256s), 0644.
pub const IMAGES_MARKER: &str = "/var/lib/rancher/k3s/agent/images/cloudflow.sha";

/// Files whose content and mode the facts script reports.
pub const MANAGED_FILES: &[&str] = &[CONFIG, REGISTRIES, ENV, TOKEN_FILE, IMAGES_MARKER];

/// What k3s runs as on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum K3sRole {
    /// The first server: starts the cluster.
    ServerInit,
    /// Another server: joins the first.
    ServerJoin,
    /// A worker.
    Agent,
}

impl K3sRole {
    pub fn command(self) -> &'static str {
        match self {
            K3sRole::ServerInit | K3sRole::ServerJoin => "server",
            K3sRole::Agent => "agent",
        }
    }
    fn service(self) -> &'static str {
        match self {
            K3sRole::Agent => "k3s-agent",
            _ => "k3s",
        }
    }
}

impl std::fmt::Display for K3sRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            K3sRole::ServerInit => "server (first)",
            K3sRole::ServerJoin => "server (joins)",
            K3sRole::Agent => "agent",
        })
    }
}

fn yaml(v: &serde_json::Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_default()
}

/// `/etc/rancher/k3s/config.yaml`: the node's address, the first server (for joiners), the
/// token file, and the server's certificate names.
pub fn config_yaml(role: K3sRole, node_ip: &str, first_server: &str, sans: &[String]) -> String {
    let mut m = serde_json::Map::new();
    m.insert("node-ip".into(), node_ip.into());
    if role != K3sRole::ServerInit {
        m.insert(
            "server".into(),
            format!("https://{first_server}:{API_PORT}").into(),
        );
        m.insert("token-file".into(), TOKEN_FILE.into());
    }
    if role == K3sRole::ServerInit {
        // Embedded etcd, so that more servers can join (SQLite allows one).
        m.insert("cluster-init".into(), true.into());
    }
    if role != K3sRole::Agent {
        m.insert("tls-san".into(), serde_json::json!(sans));
        m.insert("write-kubeconfig-mode".into(), "0600".into());
        // k3s deploys Traefik behind its ServiceLB by default: host ports 80 and 443 on every
        // node, the ones cloudflow's proxy publishes on (its pods would stay Pending).
        m.insert("disable".into(), serde_json::json!(["traefik"]));
    }
    format!(
        "# written by cloudflow; do not edit\n{}",
        yaml(&serde_json::Value::Object(m))
    )
}

/// `/etc/rancher/k3s/registries.yaml`: mirrors for Docker Hub, insecure registries over
/// plain HTTP, and the registry login (containerd reads it; no `docker login` on k3s).
pub fn registries_yaml(registry: &RegistrySpec, password: Option<&str>) -> String {
    let mut mirrors = serde_json::Map::new();
    if !registry.mirrors.is_empty() {
        mirrors.insert(
            "docker.io".into(),
            serde_json::json!({"endpoint": registry.mirrors}),
        );
    }
    for r in &registry.insecure {
        mirrors.insert(
            r.clone(),
            serde_json::json!({"endpoint": [format!("http://{r}")]}),
        );
    }
    let mut configs = serde_json::Map::new();
    for r in &registry.insecure {
        configs.insert(
            r.clone(),
            serde_json::json!({"tls": {"insecure_skip_verify": true}}),
        );
    }
    if let (Some(a), Some(p)) = (&registry.auth, password) {
        let server = a
            .server
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let entry = configs
            .entry(server.to_string())
            .or_insert_with(|| serde_json::json!({}));
        entry["auth"] = serde_json::json!({"username": a.username, "password": p});
    }
    let doc = serde_json::json!({"mirrors": mirrors, "configs": configs});
    format!("# written by cloudflow; do not edit\n{}", yaml(&doc))
}

/// The service environment: the nodes' HTTP proxy, with the cluster's own networks exempt.
pub fn env_file(proxy: &ProxySpec) -> String {
    let mut out = String::from("# written by cloudflow; do not edit\n");
    let mut add = |k: &str, v: &str| {
        out.push_str(&format!("{k}={}\n", sh(v)));
    };
    if let Some(p) = &proxy.http_proxy {
        add("HTTP_PROXY", p);
    }
    if let Some(p) = &proxy.https_proxy {
        add("HTTPS_PROXY", p);
    }
    if proxy.http_proxy.is_some() || proxy.https_proxy.is_some() {
        let mut no: Vec<String> = proxy.no_proxy.clone();
        for n in [
            "127.0.0.1",
            "localhost",
            "10.42.0.0/16",
            "10.43.0.0/16",
            ".svc",
            ".cluster.local",
        ] {
            if !no.iter().any(|x| x == n) {
                no.push(n.to_string());
            }
        }
        add("NO_PROXY", &no.join(","));
    }
    out
}

/// Put a file in place from stdin (base64: binaries too), atomically, with `mode`.
pub fn upload(step: &str, path: &str, bytes: &[u8], mode: &str) -> Cmd {
    let dir = path.rsplit_once('/').map(|p| p.0).unwrap_or("/");
    let mut c = Cmd::script(
        step,
        Effect::Mutate,
        format!(
            "set -e\nmkdir -p {d}\numask 077\nbase64 -d > {p}.cloudflow-new\nchmod {mode} {p}.cloudflow-new\nmv -f {p}.cloudflow-new {p}\n",
            d = sh(dir),
            p = sh(path)
        ),
    );
    c.stdin = Some(SecretString::from(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ));
    c
}

/// Start (or restart, to pick up new settings) k3s as `role`: a systemd unit where systemd
/// runs, else a detached process with a pid file. Returns at once; `wait_server` waits.
pub fn start(role: K3sRole, init: Init) -> Cmd {
    let cmd = role.command();
    let script = match init {
        Init::Systemd => {
            let service = role.service();
            format!(
                "set -e\ncat > /etc/systemd/system/{service}.service <<'UNIT'\n\
                 [Unit]\nDescription=k3s ({cmd}), installed by cloudflow\nWants=network-online.target\nAfter=network-online.target\n\n\
                 [Service]\nType=simple\nEnvironmentFile=-{ENV}\nExecStart={BIN} {cmd}\nKillMode=process\nDelegate=yes\n\
                 LimitNOFILE=1048576\nRestart=always\nRestartSec=5s\n\n[Install]\nWantedBy=multi-user.target\nUNIT\n\
                 systemctl daemon-reload\nsystemctl enable {service}\nsystemctl restart {service}\n"
            )
        }
        Init::None => format!(
            "set -e\nif [ -f {PID} ] && kill -0 \"$(cat {PID})\" 2>/dev/null; then kill \"$(cat {PID})\"; \
             for i in $(seq 1 50); do kill -0 \"$(cat {PID})\" 2>/dev/null || break; sleep 0.1; done; fi\n\
             setsid sh -c 'set -a; [ -f {ENV} ] && . {ENV}; set +a; exec {BIN} {cmd}' > {LOG} 2>&1 < /dev/null &\n\
             echo $! > {PID}\n"
        ),
    };
    Cmd::script(&format!("k3s-start-{cmd}"), Effect::Mutate, script)
}

/// Wait (at most `secs`) for the first server to write its join token and kubeconfig; on
/// timeout, show the end of its log.
pub fn wait_server(secs: u64) -> Cmd {
    Cmd::script(
        "k3s-wait-server",
        Effect::Read,
        format!(
            "for i in $(seq 1 {n}); do [ -s {NODE_TOKEN} ] && [ -s {KUBECONFIG} ] && exit 0; sleep 0.2; done\n\
             echo 'k3s server did not write its token and kubeconfig within {secs}s' >&2\n\
             tail -n 20 {LOG} >&2 2>/dev/null || journalctl -u k3s -n 20 --no-pager >&2 2>/dev/null\nexit 1\n",
            n = secs * 5
        ),
    )
}

/// The join token (a secret: the executor keeps stdout to itself).
pub fn read_token() -> Cmd {
    Cmd::argv("k3s-read-token", Effect::Read, &["cat", NODE_TOKEN])
}

pub fn read_kubeconfig() -> Cmd {
    Cmd::argv("k3s-read-kubeconfig", Effect::Read, &["cat", KUBECONFIG])
}

/// Stop k3s and remove everything cloudflow put there.
/// What k3s-killall.sh and k3s-uninstall.sh do: stop the service, the containers' shims, the
/// mounts and network devices pods used, the rules kube-proxy and flannel wrote; then remove
/// the files.
pub fn uninstall() -> Cmd {
    Cmd::script(
        "k3s-uninstall",
        Effect::Mutate,
        format!(
            "if [ -d /run/systemd/system ]; then for s in k3s k3s-agent; do systemctl disable --now $s 2>/dev/null || true; \
             rm -f /etc/systemd/system/$s.service; done; systemctl daemon-reload 2>/dev/null || true; fi\n\
             if [ -f {PID} ]; then kill \"$(cat {PID})\" 2>/dev/null || true; rm -f {PID}; fi\n\
             for d in /proc/[0-9]*; do exe=$(readlink \"$d/exe\" 2>/dev/null) || continue; \
             case \"$exe\" in /var/lib/rancher/k3s/data/*) kill -9 \"${{d#/proc/}}\" 2>/dev/null || true;; esac; done\n\
             for m in $(awk '$2 ~ \"^(/run/k3s|/var/lib/kubelet|/var/lib/rancher/k3s|/run/netns/cni-)\" {{print $2}}' /proc/self/mounts | sort -r); do \
             umount \"$m\" 2>/dev/null || umount -l \"$m\" 2>/dev/null || true; done\n\
             for i in cni0 flannel.1 flannel-v6.1 kube-ipvs0; do ip link delete \"$i\" 2>/dev/null || true; done\n\
             if command -v iptables-save >/dev/null 2>&1; then \
             iptables-save | grep -v -E 'KUBE-|CNI-|flannel' | iptables-restore 2>/dev/null || true; fi\n\
             rm -rf {DIR} /var/lib/rancher/k3s /run/k3s /var/lib/kubelet /var/lib/cni /run/flannel {BIN} {LOG}\n"
        ),
    )
}

/// The kubeconfig k3s wrote, pointed at `address` (k3s writes 127.0.0.1).
pub fn rewrite_kubeconfig(text: &str, address: &str) -> String {
    text.replace(
        &format!("https://127.0.0.1:{API_PORT}"),
        &format!("https://{address}:{API_PORT}"),
    )
    .replace(
        &format!("https://localhost:{API_PORT}"),
        &format!("https://{address}:{API_PORT}"),
    )
}

/// Every managed file's wanted content for a host, by path.
pub fn files(
    role: K3sRole,
    node_ip: &str,
    first_server: &str,
    sans: &[String],
    registry: &RegistrySpec,
    password: Option<&str>,
    proxy: &ProxySpec,
) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (CONFIG, config_yaml(role, node_ip, first_server, sans)),
        (REGISTRIES, registries_yaml(registry, password)),
        (ENV, env_file(proxy)),
    ])
}
