//! SSH executor on `ssh2`: one session per host, reused across steps; blocking libssh2 calls
//! run inside `spawn_blocking`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::hostkey::HostKeyCheck;
use super::{ExecError, Executor, Output, Target};
use crate::commands::Cmd;

pub struct SshConfig {
    pub key: PathBuf,
    pub hostkeys: HostKeyCheck,
    pub connect_timeout: Duration,
    /// Longest a single remote command may run (package installs included).
    pub command_timeout: Duration,
}

pub struct SshExecutor {
    cfg: Arc<SshConfig>,
    sessions: Mutex<HashMap<String, Arc<Mutex<ssh2::Session>>>>,
}

impl SshExecutor {
    pub fn new(cfg: SshConfig) -> Self {
        SshExecutor {
            cfg: Arc::new(cfg),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Drop a host's session (e.g. after the host was replaced).
    pub fn forget(&self, host: &str) {
        self.sessions.lock().unwrap().remove(host);
    }

    async fn session(&self, target: &Target) -> Result<Arc<Mutex<ssh2::Session>>, ExecError> {
        if let Some(s) = self.sessions.lock().unwrap().get(&target.name) {
            return Ok(s.clone());
        }
        let cfg = self.cfg.clone();
        let t = target.clone();
        let sess = tokio::task::spawn_blocking(move || connect(&cfg, &t))
            .await
            .map_err(|e| ExecError::Local(format!("SSH connect task failed: {e}")))??;
        let sess = Arc::new(Mutex::new(sess));
        self.sessions
            .lock()
            .unwrap()
            .insert(target.name.clone(), sess.clone());
        Ok(sess)
    }

    /// Run `cmd`, reconnecting when the host's session has died (a dropped link, a restarted
    /// sshd, an idle NAT timeout): a command that never started is sent again on a fresh
    /// session, and so is a read-only one that broke off mid-way. A mutating command that broke
    /// off mid-way is not repeated blindly: its error says the link dropped.
    async fn exec(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        use backon::{ConstantBuilder, Retryable};
        (|| self.exec_once(target, phase, cmd))
            .retry(
                ConstantBuilder::default()
                    .with_delay(Duration::from_millis(500))
                    .with_max_times(2),
            )
            .when(|e| match e {
                Attempt::NotStarted(_) => true,
                Attempt::BrokeOff(_) => cmd.effect == crate::commands::Effect::Read,
                Attempt::Final(_) => false,
            })
            .notify(|e, _| {
                tracing::debug!(host = %target.name, step = %cmd.step, error = %e.error(), "SSH session lost; reconnecting");
                self.forget(&target.name);
            })
            .await
            .map_err(Attempt::into_error)
    }

    async fn exec_once(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, Attempt> {
        let sess = self.session(target).await.map_err(Attempt::Final)?;
        let line = wrap_for_user(&target.user, &cmd.command_line());
        let stdin = cmd.stdin.as_ref().map(|s| s.expose_secret().to_string());
        let timeout = self.cfg.command_timeout;
        tracing::debug!(host = %target.name, phase, step = %cmd.step, command = %cmd.display(), "run");
        let (t, p, c) = (target.clone(), phase.to_string(), cmd.clone());
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || {
            let sess = sess.lock().unwrap();
            run_channel(&sess, &line, stdin.as_deref(), timeout).map_err(|e| match e {
                ChannelError::TimedOut => Attempt::Final(ExecError::TimedOut {
                    host: t.name.clone(),
                    phase: p.clone(),
                    step: c.step.clone(),
                    command: c.display(),
                    secs: timeout.as_secs(),
                }),
                ChannelError::Open(m) => Attempt::NotStarted(ExecError::Session {
                    host: t.name.clone(),
                    what: format!("starting {}", c.step),
                    message: m,
                }),
                ChannelError::Ssh(m) => Attempt::BrokeOff(ExecError::Session {
                    host: t.name.clone(),
                    what: format!("running {} (the connection dropped while it ran)", c.step),
                    message: m,
                }),
            })
        })
        .await
        .map_err(|e| Attempt::Final(ExecError::Local(format!("SSH task failed: {e}"))))??;
        tracing::debug!(host = %target.name, step = %cmd.step, code = out.code, ms = started.elapsed().as_millis() as u64, "done");
        Ok(out)
    }
}

/// Non-root users run everything through `sudo -n` (no password prompt can be answered).
fn wrap_for_user(user: &str, line: &str) -> String {
    if user == "root" {
        line.to_string()
    } else {
        format!(
            "sudo -n -H sh -c {}",
            shlex::try_quote(line)
                .map(|c| c.into_owned())
                .unwrap_or_default()
        )
    }
}

fn connect(cfg: &SshConfig, t: &Target) -> Result<ssh2::Session, ExecError> {
    let unreachable = |m: String| ExecError::Unreachable {
        host: t.name.clone(),
        address: format!("{}:{}", t.address, t.port),
        message: m,
    };
    let addr = (t.address.as_str(), t.port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| unreachable("no address".into()))?;
    let tcp = TcpStream::connect_timeout(&addr, cfg.connect_timeout).map_err(|e| {
        unreachable(format!(
            "{e} (after up to {}s)",
            cfg.connect_timeout.as_secs()
        ))
    })?;
    let session_err = |what: &str, e: ssh2::Error| ExecError::Session {
        host: t.name.clone(),
        what: what.to_string(),
        message: e.message().to_string(),
    };
    let mut sess = ssh2::Session::new().map_err(|e| session_err("init", e))?;
    sess.set_tcp_stream(tcp);
    sess.set_timeout(cfg.connect_timeout.as_millis() as u32);
    sess.handshake()
        .map_err(|e| unreachable(format!("SSH handshake failed: {}", e.message())))?;

    let (key, kind) = sess
        .host_key()
        .ok_or_else(|| unreachable("the host offered no host key".into()))?;
    let key_type = match kind {
        ssh2::HostKeyType::Rsa => "ssh-rsa",
        ssh2::HostKeyType::Dss => "ssh-dss",
        ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
        ssh2::HostKeyType::Unknown => "unknown",
    };
    let key = key.to_vec();
    cfg.hostkeys
        .check(&sess, &t.name, &t.address, t.port, &key, key_type)?;

    if !cfg.key.is_file() {
        return Err(ExecError::Local(format!(
            "SSH key {} does not exist (ssh_key in the spec)",
            cfg.key.display()
        )));
    }
    if sess
        .userauth_pubkey_file(&t.user, None, &cfg.key, None)
        .is_err()
        || !sess.authenticated()
    {
        return Err(ExecError::Auth {
            host: t.name.clone(),
            user: t.user.clone(),
            key: cfg.key.display().to_string(),
        });
    }
    sess.set_keepalive(true, 30);
    sess.set_timeout(60_000);
    Ok(sess)
}

enum ChannelError {
    TimedOut,
    /// The channel could not be opened or the command not sent: nothing ran.
    Open(String),
    /// The link failed while the command ran.
    Ssh(String),
}

/// How one attempt ended, for the reconnect policy in `exec`.
#[derive(Debug)]
enum Attempt {
    NotStarted(ExecError),
    BrokeOff(ExecError),
    Final(ExecError),
}

impl Attempt {
    fn error(&self) -> &ExecError {
        match self {
            Attempt::NotStarted(e) | Attempt::BrokeOff(e) | Attempt::Final(e) => e,
        }
    }
    fn into_error(self) -> ExecError {
        match self {
            Attempt::NotStarted(e) | Attempt::BrokeOff(e) | Attempt::Final(e) => e,
        }
    }
}

impl From<ssh2::Error> for ChannelError {
    fn from(e: ssh2::Error) -> Self {
        ChannelError::Ssh(e.message().to_string())
    }
}

impl From<std::io::Error> for ChannelError {
    fn from(e: std::io::Error) -> Self {
        ChannelError::Ssh(e.to_string())
    }
}

/// Run one command on a fresh channel. Both output streams are drained together
/// (non-blocking), so a chatty stderr can never stall the remote side.
fn run_channel(
    sess: &ssh2::Session,
    line: &str,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output, ChannelError> {
    run_channel_to(sess, line, stdin, timeout, None)
}

/// `run_channel`, or with `sink`: output goes to it as it arrives instead of into `Output`.
fn run_channel_to(
    sess: &ssh2::Session,
    line: &str,
    stdin: Option<&str>,
    timeout: Duration,
    sink: Option<&super::Sink>,
) -> Result<Output, ChannelError> {
    sess.set_blocking(true);
    let open = |e: ssh2::Error| ChannelError::Open(e.message().to_string());
    let mut ch = sess.channel_session().map_err(open)?;
    ch.exec(line).map_err(open)?;
    if let Some(input) = stdin {
        ch.write_all(input.as_bytes())?;
    }
    ch.send_eof()?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 32 * 1024];
    let started = Instant::now();
    sess.set_blocking(false);
    let result = (|| {
        loop {
            let mut progressed = false;
            for stream_id in [0, 1] {
                let mut stream = ch.stream(stream_id);
                match stream.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        progressed = true;
                        if let Some(sink) = sink {
                            sink(&buf[..n]);
                        } else if stream_id == 0 {
                            out.extend_from_slice(&buf[..n])
                        } else {
                            err.extend_from_slice(&buf[..n])
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(ChannelError::from(e)),
                }
            }
            if !progressed {
                if ch.eof() {
                    return Ok(());
                }
                if started.elapsed() > timeout {
                    return Err(ChannelError::TimedOut);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    })();
    sess.set_blocking(true);
    result?;
    ch.wait_close()?;
    Ok(Output {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        code: ch.exit_status()?,
    })
}

#[async_trait::async_trait]
impl Executor for SshExecutor {
    async fn run(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        let out = self.exec(target, phase, cmd).await?;
        if out.code != 0 {
            return Err(ExecError::failed(target, phase, cmd, &out));
        }
        Ok(out)
    }

    async fn probe(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        self.exec(target, phase, cmd).await
    }

    async fn stream(
        &self,
        target: &Target,
        phase: &str,
        cmd: &Cmd,
        sink: super::Sink,
    ) -> Result<i32, ExecError> {
        let sess = self.session(target).await?;
        let line = wrap_for_user(&target.user, &cmd.command_line());
        tracing::debug!(host = %target.name, phase, step = %cmd.step, command = %cmd.display(), "stream");
        let (t, c) = (target.clone(), cmd.clone());
        tokio::task::spawn_blocking(move || {
            let sess = sess.lock().unwrap();
            run_channel_to(&sess, &line, None, Duration::MAX, Some(&sink))
                .map(|o| o.code)
                .map_err(|e| ExecError::Session {
                    host: t.name.clone(),
                    what: format!("running {}", c.step),
                    message: match e {
                        ChannelError::TimedOut => "timed out".into(),
                        ChannelError::Open(m) | ChannelError::Ssh(m) => m,
                    },
                })
        })
        .await
        .map_err(|e| ExecError::Local(format!("SSH task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_root_users_go_through_sudo_without_a_prompt() {
        assert_eq!(wrap_for_user("root", "docker info"), "docker info");
        assert_eq!(
            wrap_for_user("deploy", "docker info"),
            "sudo -n -H sh -c 'docker info'"
        );
    }
}
