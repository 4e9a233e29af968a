//! Host facts: the output of one facts script per host, parsed without I/O.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    Systemd,
    None,
}

impl Init {
    pub fn as_str(&self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::None => "none",
        }
    }
}

/// The host's swarm membership, from `docker info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SwarmFacts {
    /// `inactive`, `pending`, `active`, `error`, `locked`.
    pub state: String,
    pub node_id: String,
    pub manager: bool,
}

impl SwarmFacts {
    pub fn active(&self) -> bool {
        self.state == "active"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub os_id: String,
    pub os_like: String,
    pub os_version: String,
    pub os_name: String,
    pub hostname: String,
    pub init: Init,
    pub dockerd: bool,
    pub docker_cli: bool,
    /// The Docker packages' install was cut short (unpacked, not configured).
    pub docker_pkg_incomplete: bool,
    pub docker_running: bool,
    pub swarm: SwarmFacts,
    /// Current /etc/docker/daemon.json, when the file exists.
    pub daemon_json: Option<String>,
    /// `<sha256>:<mode>` (octal) of each managed file that exists: a file with the right
    /// content but the wrong permissions (0644 holding a proxy password) is written again.
    pub files: BTreeMap<String, String>,
    /// Registries with credentials in the docker client config.
    pub logins: BTreeSet<String>,
    /// Swarm services labelled `cloudflow.cluster` (managers only): (running, desired) tasks.
    pub swarm_services: BTreeMap<String, (u32, u32)>,
    /// SHA-256 of /usr/local/bin/k3s, when it is there.
    pub k3s_bin: Option<String>,
    /// Whether k3s runs (a service, or the process cloudflow started).
    pub k3s_running: bool,
}

impl HostFacts {
    pub fn docker_installed(&self) -> bool {
        self.dockerd && self.docker_cli && !self.docker_pkg_incomplete
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unreadable facts: {0}")]
pub struct FactsError(pub String);

/// Parse the facts script's `key=value` lines.
pub fn parse(text: &str) -> Result<HostFacts, FactsError> {
    let mut kv: BTreeMap<&str, &str> = BTreeMap::new();
    let mut files = BTreeMap::new();
    let mut logins = BTreeSet::new();
    let mut swarm_services = BTreeMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if let Some(path) = k.strip_prefix("file:") {
            files.insert(path.to_string(), v.to_string());
        } else if let Some(server) = k.strip_prefix("login:") {
            logins.insert(server.to_string());
        } else if let Some(name) = k.strip_prefix("swarm_service:") {
            // `1/1`, or `0/1 (max 1 per node)` on newer engines.
            let counts = v.split_whitespace().next().unwrap_or("").split_once('/');
            let n = |x: &str| x.parse::<u32>().unwrap_or(0);
            let (running, desired) = counts.map(|(r, d)| (n(r), n(d))).unwrap_or((0, 0));
            swarm_services.insert(name.to_string(), (running, desired));
        } else {
            kv.insert(k, v);
        }
    }
    if kv.get("end") != Some(&"ok") {
        return Err(FactsError(
            "the facts script did not finish (no end=ok line)".into(),
        ));
    }
    let get = |k: &str| kv.get(k).copied().unwrap_or("").to_string();
    let swarm = {
        let raw = get("swarm");
        let mut parts = raw.split_whitespace();
        SwarmFacts {
            state: parts.next().unwrap_or("inactive").to_string(),
            node_id: parts.next().unwrap_or("").to_string(),
            manager: parts.next() == Some("true"),
        }
    };
    let daemon_json = match kv.get("daemon_json") {
        None => None,
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| FactsError(format!("daemon.json: {e}")))?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    Ok(HostFacts {
        os_id: get("os_id"),
        os_like: get("os_like"),
        os_version: get("os_version"),
        os_name: get("os_name"),
        hostname: get("hostname"),
        init: if get("init") == "systemd" {
            Init::Systemd
        } else {
            Init::None
        },
        dockerd: get("dockerd") == "yes",
        docker_cli: get("docker_cli") == "yes",
        docker_pkg_incomplete: get("docker_pkg_incomplete") == "yes",
        docker_running: get("docker_running") == "yes",
        swarm,
        daemon_json,
        k3s_bin: kv.get("k3s_bin").map(|s| s.to_string()),
        k3s_running: get("k3s_running") == "yes",
        files,
        logins,
        swarm_services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_debian_host() {
        let f = parse("os_id=debian\nos_like=\nos_version=12\nos_name=Debian GNU/Linux 12 (bookworm)\nhostname=h1\ninit=none\nend=ok\n").unwrap();
        assert_eq!(f.os_id, "debian");
        assert_eq!(f.os_name, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(f.init, Init::None);
        assert!(!f.docker_installed());
        assert!(!f.docker_running);
        assert_eq!(f.swarm.state, "inactive");
        assert_eq!(f.daemon_json, None);
    }

    #[test]
    fn swarm_manager_with_daemon_json_files_and_login() {
        let text = "os_id=ubuntu\nhostname=m\ninit=systemd\ndockerd=yes\ndocker_cli=yes\ndocker_running=yes\n\
                    swarm=active abc123 true\ndaemon_json=eyJhIjoxfQ==\nfile:/etc/cloudflow/docker.env=ff00\n\
                    login:10.0.0.2:5000=yes\nend=ok\n";
        let f = parse(text).unwrap();
        assert!(f.docker_installed() && f.docker_running);
        assert_eq!(
            f.swarm,
            SwarmFacts {
                state: "active".into(),
                node_id: "abc123".into(),
                manager: true
            }
        );
        assert_eq!(f.daemon_json.as_deref(), Some("{\"a\":1}"));
        assert_eq!(f.files["/etc/cloudflow/docker.env"], "ff00");
        assert!(f.logins.contains("10.0.0.2:5000"));
        assert_eq!(f.init, Init::Systemd);
    }

    #[test]
    fn a_cut_off_facts_run_is_an_error() {
        assert!(parse("os_id=debian\n").is_err());
    }
}
