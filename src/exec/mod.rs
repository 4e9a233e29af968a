//! The one executor: runs [`Cmd`]s on hosts. SSH for real work, recording for tests and dry
//! runs. All hosts run in parallel under a concurrency limit ([`for_each_host`]).

mod hostkey;
mod recording;
mod sim;
mod ssh;
mod timed;

use std::future::Future;

pub use hostkey::{HostKeyCheck, fingerprint};
pub use recording::Recording;
pub use sim::{SimDelays, Simulated};
pub use ssh::{SshConfig, SshExecutor};
pub use timed::{StepTiming, Timed, Timings};

use crate::commands::Cmd;

/// Where a command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Machine name, as in messages and state.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Where the cluster's members reach this host, when not at `address` (a cloud
    /// instance's private address): Swarm advertises and joins on it.
    pub private_address: Option<String>,
}

impl From<&cloudflow_provider_api::Machine> for Target {
    fn from(m: &cloudflow_provider_api::Machine) -> Self {
        Target {
            name: m.name.clone(),
            address: m.ssh.address.clone(),
            port: m.ssh.port,
            user: m.ssh.user.clone(),
            private_address: m.private_address.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The host could not be reached at all.
    #[error("host {host} ({address}) is unreachable: {message}")]
    Unreachable {
        host: String,
        address: String,
        message: String,
    },
    /// The SSH key was refused.
    #[error(
        "host {host}: SSH key {key} was refused for user {user}; check ssh_key and that its public half is in ~{user}/.ssh/authorized_keys"
    )]
    Auth {
        host: String,
        user: String,
        key: String,
    },
    /// The host offered a different key than the one recorded.
    #[error(
        "host {host} ({address}): HOST KEY CHANGED — refusing to connect.\n  recorded: {known}\n  offered:  {offered}\n  \
         If the host was really reinstalled, remove its entry (cloudflow down, or delete the state) and run again."
    )]
    HostKeyChanged {
        host: String,
        address: String,
        known: String,
        offered: String,
    },
    /// `host_key_policy: strict` and the host is not in any known_hosts.
    #[error(
        "host {host} ({address}) is not in known_hosts and host_key_policy is strict; offered key {offered}.\n  \
         Add it to ~/.ssh/known_hosts (ssh-keyscan -p PORT ADDRESS) after checking the fingerprint, or use accept-new."
    )]
    HostKeyUnknown {
        host: String,
        address: String,
        offered: String,
    },
    /// A new machine did not finish booting in time, or its first boot failed.
    #[error("host {host} ({address}): {what}")]
    NotReady {
        host: String,
        address: String,
        what: String,
    },
    /// The SSH session failed (handshake, channel).
    #[error("host {host}: SSH {what}: {message}")]
    Session {
        host: String,
        what: String,
        message: String,
    },
    /// A remote command exited non-zero.
    #[error("host {host}: phase {phase}, step {step}: `{command}` exited {code}\n{tail}")]
    Failed {
        host: String,
        phase: String,
        step: String,
        command: String,
        code: i32,
        tail: String,
    },
    /// A remote command ran past its time limit.
    #[error(
        "host {host}: phase {phase}, step {step}: `{command}` still running after {secs}s; gave up waiting for it"
    )]
    TimedOut {
        host: String,
        phase: String,
        step: String,
        command: String,
        secs: u64,
    },
    /// Local trouble (a thread pool task died, a key file missing).
    #[error("{0}")]
    Local(String),
}

impl ExecError {
    pub fn failed(target: &Target, phase: &str, cmd: &Cmd, out: &Output) -> Self {
        let text = if out.stderr.trim().is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(8)..]
            .iter()
            .map(|l| format!("  | {l}"))
            .collect::<Vec<_>>();
        let tail = if tail.is_empty() {
            "  (no output)".to_string()
        } else {
            tail.join("\n")
        };
        ExecError::Failed {
            host: target.name.clone(),
            phase: phase.to_string(),
            step: cmd.step.clone(),
            command: cmd.display(),
            code: out.code,
            tail: cmd.redact_text(&tail),
        }
    }
}

#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Run `cmd` on `target`; a non-zero exit is [`ExecError::Failed`] naming host, phase,
    /// step, command and the tail of its output.
    async fn run(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, ExecError>;

    /// Like `run`, but a non-zero exit is returned as output rather than an error.
    async fn probe(&self, target: &Target, phase: &str, cmd: &Cmd) -> Result<Output, ExecError>;

    /// Run `cmd` without a time limit, handing its output (both streams) to `sink` as it
    /// arrives (`logs --follow`). Returns the exit code. By default: all at the end.
    async fn stream(
        &self,
        target: &Target,
        phase: &str,
        cmd: &Cmd,
        sink: Sink,
    ) -> Result<i32, ExecError> {
        let out = self.probe(target, phase, cmd).await?;
        sink(out.stdout.as_bytes());
        sink(out.stderr.as_bytes());
        Ok(out.code)
    }
}

/// Where streamed output goes.
pub type Sink = std::sync::Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Run `f` for every item with at most `limit` at once; results in input order.
pub async fn for_each_host<'a, T, R, F, Fut>(items: &'a [T], limit: usize, f: F) -> Vec<R>
where
    T: Sync + 'a,
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = R> + Send + 'a,
{
    use futures::StreamExt;
    // Boxed up front: a closure inside the stream's type trips the Send check of callers'
    // futures ("FnOnce is not general enough").
    let futures: Vec<std::pin::Pin<Box<dyn Future<Output = R> + Send + 'a>>> =
        items.iter().map(|i| Box::pin(f(i)) as _).collect();
    futures::stream::iter(futures)
        .buffered(limit.max(1))
        .collect()
        .await
}
