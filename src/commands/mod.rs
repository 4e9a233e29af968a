//! Command builders: each returns data (argv or script text) — never runs anything. One
//! executor runs them, so dry runs, recording and redaction live in one place.

use std::fmt;

use base64::Engine;
use secrecy::SecretString;
use tera::Context;

use crate::facts::Init;
use crate::render::{RenderError, Renderer};
use crate::spec::ProxySpec;

/// Whether a command only reads, or changes the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Read,
    Mutate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Argv(Vec<String>),
    Script(String),
}

/// One remote command. Its `Debug` is redacted like its `Display`: tokens never leak
/// through a `{:?}` in a log line or an error.
#[derive(Clone)]
pub struct Cmd {
    /// Short step name for progress and errors ("install-docker").
    pub step: String,
    pub body: Body,
    /// Fed to the command's stdin (passwords: never in argv).
    pub stdin: Option<SecretString>,
    /// Values that must never be shown (tokens that have to go in argv).
    pub redact: Vec<String>,
    pub effect: Effect,
}

impl Cmd {
    pub fn argv(step: &str, effect: Effect, argv: &[&str]) -> Self {
        Cmd {
            step: step.into(),
            body: Body::Argv(argv.iter().map(|s| s.to_string()).collect()),
            stdin: None,
            redact: Vec::new(),
            effect,
        }
    }

    pub fn script(step: &str, effect: Effect, text: impl Into<String>) -> Self {
        Cmd {
            step: step.into(),
            body: Body::Script(text.into()),
            stdin: None,
            redact: Vec::new(),
            effect,
        }
    }

    /// The exact command line the executor sends to the host.
    pub fn command_line(&self) -> String {
        match &self.body {
            Body::Argv(argv) => join(argv),
            Body::Script(s) => join(&["sh".to_string(), "-c".to_string(), s.clone()]),
        }
    }

    /// Replace every redacted value in `text` by `***`.
    pub fn redact_text(&self, text: &str) -> String {
        self.redact
            .iter()
            .filter(|r| !r.is_empty())
            .fold(text.to_string(), |t, r| t.replace(r.as_str(), "***"))
    }

    /// A short, redacted rendering for messages: argv in full, a script by its first line.
    pub fn display(&self) -> String {
        let text = match &self.body {
            Body::Argv(argv) => join(argv),
            Body::Script(s) => {
                let first = s
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim_start_matches("# ");
                format!("sh -c <script: {first}>")
            }
        };
        self.redact_text(&text)
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cmd")
            .field("step", &self.step)
            .field("command", &self.redact_text(&self.command_line()))
            .field("stdin", &self.stdin.as_ref().map(|_| "***"))
            .field("effect", &self.effect)
            .finish()
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

fn join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            shlex::try_quote(a)
                .map(|c| c.into_owned())
                .unwrap_or_else(|_| a.replace('\0', ""))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn quote(s: &str) -> String {
    shlex::try_quote(s)
        .map(|c| c.into_owned())
        .unwrap_or_default()
}

pub mod k3s;
pub mod swarm;

// ---- host files ------------------------------------------------------------------------------

pub const DAEMON_JSON: &str = "/etc/docker/daemon.json";
pub const DOCKER_PROXY_SYSTEMD: &str = "/etc/systemd/system/docker.service.d/http-proxy.conf";
pub const DOCKER_PROXY_ENV: &str = "/etc/cloudflow/docker.env";
pub const APT_PROXY: &str = "/etc/apt/apt.conf.d/95cloudflow-proxy";

/// Files cloudflow may write on a host, in facts order.
pub const MANAGED_FILES: &[&str] = &[DOCKER_PROXY_SYSTEMD, DOCKER_PROXY_ENV, APT_PROXY];

/// A file cloudflow puts on a host: path, content and permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFile {
    pub path: String,
    pub content: String,
    pub mode: u32,
}

/// Files that may hold credentials (proxy URLs with a user and password) are 0600.
pub const PRIVATE: u32 = 0o600;
pub const PUBLIC: u32 = 0o644;

/// Write `content` to `path` atomically (temp file + rename), creating the directory.
/// The content travels on stdin: no quoting of it can go wrong, and nothing of it shows in
/// the remote process list (`/proc/*/cmdline`) or in a message.
pub fn write_file(step: &str, path: &str, content: &str) -> Cmd {
    write_file_mode(step, path, content, PUBLIC)
}

/// As [`write_file`], with the file's mode set before it takes the final name (a private
/// file is never readable by others, not even for a moment).
pub fn write_file_mode(step: &str, path: &str, content: &str, mode: u32) -> Cmd {
    let dir = path
        .rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
        .unwrap_or("/");
    let p = quote(path);
    let mut c = Cmd::script(
        step,
        Effect::Mutate,
        format!(
            "# write {path}\nset -e\nmkdir -p {d}\n{umask}cat > {p}.cloudflow-tmp\nchmod {mode:o} {p}.cloudflow-tmp\nmv {p}.cloudflow-tmp {p}\n",
            umask = if mode & 0o077 == 0 { "umask 077\n" } else { "" },
            d = quote(dir),
        ),
    );
    c.stdin = Some(SecretString::from(content.to_string()));
    c
}

pub fn remove_files(step: &str, paths: &[String]) -> Cmd {
    let mut argv = vec!["rm".to_string(), "-f".to_string()];
    argv.extend(paths.iter().cloned());
    Cmd {
        step: step.into(),
        body: Body::Argv(argv),
        stdin: None,
        redact: vec![],
        effect: Effect::Mutate,
    }
}

// ---- scripts from templates ------------------------------------------------------------------

pub fn facts(r: &Renderer, registries: &[String]) -> Result<Cmd, RenderError> {
    let mut ctx = Context::new();
    let files: Vec<&str> = MANAGED_FILES
        .iter()
        .chain(k3s::MANAGED_FILES)
        .copied()
        .collect();
    ctx.insert("files", &files);
    // Registry names are matched literally in the facts script; keep them shell-safe.
    let safe: Vec<&String> = registries
        .iter()
        .filter(|r| {
            r.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:_/".contains(c))
        })
        .collect();
    ctx.insert("registries", &safe);
    Ok(Cmd::script(
        "facts",
        Effect::Read,
        r.render("facts.sh", &ctx)?,
    ))
}

/// Wait (at most `secs`) for cloud-init to finish the machine's first boot, then print its
/// status (`status: done`, `status: error` with details). Machines without cloud-init are done.
pub fn cloud_init_wait(secs: u64) -> Cmd {
    Cmd::script(
        "cloud-init-wait",
        Effect::Read,
        format!(
            "# wait for cloud-init to finish the first boot\n\
             if ! command -v cloud-init >/dev/null 2>&1; then echo 'status: done'; exit 0; fi\n\
             timeout {secs} cloud-init status --wait >/dev/null 2>&1\n\
             if [ $? -eq 124 ]; then echo 'status: running'; exit 0; fi\n\
             cloud-init status --long 2>&1 || true\n"
        ),
    )
}

pub fn install_docker(r: &Renderer) -> Result<Cmd, RenderError> {
    Ok(Cmd::script(
        "install-docker",
        Effect::Mutate,
        r.render("install-docker.sh", &Context::new())?,
    ))
}

pub fn start_docker(r: &Renderer, init: Init, restart: bool) -> Result<Cmd, RenderError> {
    let mut ctx = Context::new();
    ctx.insert("init", init.as_str());
    ctx.insert("restart", &restart);
    let step = if restart {
        "restart-docker"
    } else {
        "start-docker"
    };
    Ok(Cmd::script(
        step,
        Effect::Mutate,
        r.render("start-docker.sh", &ctx)?,
    ))
}

/// The proxy files a host should have, `(path, content)`, for its init system.
/// Files holding a proxy URL with credentials are [`PRIVATE`].
pub fn proxy_files(
    r: &Renderer,
    proxy: &ProxySpec,
    init: Init,
) -> Result<Vec<HostFile>, RenderError> {
    let Some(http) = &proxy.http_proxy else {
        return Ok(Vec::new());
    };
    let credentials = [Some(http), proxy.https_proxy.as_ref()]
        .into_iter()
        .flatten()
        .any(|u| {
            url::Url::parse(u).is_ok_and(|u| !u.username().is_empty() || u.password().is_some())
        });
    let mode = if credentials { PRIVATE } else { PUBLIC };
    let mut ctx = Context::new();
    ctx.insert("http_proxy", http);
    ctx.insert("https_proxy", proxy.https_proxy.as_ref().unwrap_or(http));
    ctx.insert("no_proxy", &proxy.no_proxy.join(","));
    // apt takes per-host exceptions by exact host name: names and IPv4 addresses only.
    let hosts: Vec<&String> = proxy
        .no_proxy
        .iter()
        .filter(|h| {
            !h.starts_with('.')
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        })
        .collect();
    ctx.insert("no_proxy_hosts", &hosts);
    let docker = match init {
        Init::Systemd => (DOCKER_PROXY_SYSTEMD, r.render("docker-proxy.conf", &ctx)?),
        Init::None => (DOCKER_PROXY_ENV, r.render("docker-proxy.env", &ctx)?),
    };
    Ok(vec![
        HostFile {
            path: docker.0.to_string(),
            content: docker.1,
            mode,
        },
        HostFile {
            path: APT_PROXY.to_string(),
            content: r.render("apt-proxy.conf", &ctx)?,
            mode,
        },
    ])
}

/// Cloud-init user-data for cloud machines: the same Docker install script as over SSH, plus
/// daemon.json and proxy files, written at first boot.
pub fn cloud_init(r: &Renderer, cluster: &str, files: &[HostFile]) -> Result<String, RenderError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let install = r.render("install-docker.sh", &Context::new())?;
    let files: Vec<serde_json::Value> = files
        .iter()
        .map(|f| serde_json::json!({"path": f.path, "b64": b64(&f.content), "mode": format!("{:04o}", f.mode)}))
        .collect();
    let mut ctx = Context::new();
    ctx.insert("cluster", cluster);
    ctx.insert("install_docker_b64", &b64(&install));
    // Images without systemd (containers, minimal images) get dockerd started directly.
    let mut start = Context::new();
    start.insert("init", Init::None.as_str());
    start.insert("restart", &false);
    ctx.insert(
        "start_docker_b64",
        &b64(&r.render("start-docker.sh", &start)?),
    );
    ctx.insert("files", &files);
    r.render("cloud-init.yaml", &ctx)
}

// ---- docker and swarm ------------------------------------------------------------------------

/// `docker login` with the password on stdin, never in argv.
pub fn registry_login(server: &str, username: &str, password: SecretString) -> Cmd {
    let mut c = Cmd::argv(
        "registry-login",
        Effect::Mutate,
        &[
            "docker",
            "login",
            "--username",
            username,
            "--password-stdin",
            server,
        ],
    );
    c.stdin = Some(password);
    c
}

pub fn registry_logout(server: &str) -> Cmd {
    Cmd::argv(
        "registry-logout",
        Effect::Mutate,
        &["docker", "logout", server],
    )
}

pub fn swarm_init(advertise: &str) -> Cmd {
    Cmd::argv(
        "swarm-init",
        Effect::Mutate,
        &["docker", "swarm", "init", "--advertise-addr", advertise],
    )
}

pub fn swarm_join_token(role: cloudflow_provider_api::Role) -> Cmd {
    Cmd::argv(
        "swarm-join-token",
        Effect::Read,
        &["docker", "swarm", "join-token", "-q", &role.to_string()],
    )
}

/// Join a swarm. The token is a secret that must go in argv: it is marked for redaction.
pub fn swarm_join(token: &str, advertise: &str, manager: &str) -> Cmd {
    let remote = format!("{manager}:2377");
    let mut c = Cmd::argv(
        "swarm-join",
        Effect::Mutate,
        &[
            "docker",
            "swarm",
            "join",
            "--token",
            token,
            "--advertise-addr",
            advertise,
            &remote,
        ],
    );
    c.redact.push(token.to_string());
    c
}

/// Move a node's tasks elsewhere before it goes away.
pub fn node_drain(node: &str) -> Cmd {
    Cmd::argv(
        "node-drain",
        Effect::Mutate,
        &["docker", "node", "update", "--availability", "drain", node],
    )
}

/// Tasks still meant to run on a node (empty once drained).
pub fn node_tasks(node: &str) -> Cmd {
    Cmd::argv(
        "node-tasks",
        Effect::Read,
        &[
            "docker",
            "node",
            "ps",
            node,
            "--filter",
            "desired-state=running",
            "-q",
        ],
    )
}

pub fn swarm_leave() -> Cmd {
    Cmd::argv(
        "swarm-leave",
        Effect::Mutate,
        &["docker", "swarm", "leave", "--force"],
    )
}

/// After leaving: remove the containers of this cluster's swarm tasks that the agent had not
/// reaped yet (exited replicas keep their container until then). Only task containers
/// (`com.docker.swarm.task.id`) of `cluster`: nothing else on the host is touched.
pub fn remove_task_containers(cluster: &str) -> Cmd {
    Cmd::script(
        "remove-task-containers",
        Effect::Mutate,
        format!(
            "# remove leftover task containers of cloudflow services\n\
             ids=$(docker ps -aq --filter label=com.docker.swarm.task.id --filter {})\n\
             [ -z \"$ids\" ] || docker rm -f $ids >/dev/null\n",
            quote(&format!("label=cloudflow.cluster={cluster}"))
        ),
    )
}

pub fn node_ls() -> Cmd {
    Cmd::argv(
        "node-ls",
        Effect::Read,
        &["docker", "node", "ls", "--format", "{{json .}}"],
    )
}

/// Remove a node that left from the managers' list (by node id).
pub fn node_rm(id: &str) -> Cmd {
    Cmd::argv(
        "node-rm",
        Effect::Mutate,
        &["docker", "node", "rm", "--force", id],
    )
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod destinations;
