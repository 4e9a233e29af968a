//! A simulated fleet: an executor that answers like a fresh Debian host after realistic
//! delays (an SSH handshake on a host's first command, a per-command round trip, a package
//! install), keeping each host's state (Docker installed and running, swarm role) so that a
//! second `up` sees what the first one did. For the fleet benchmark and its scaled-down test:
//! the real facts parser, planner, phases, state and concurrency limit run on top of it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{ExecError, Executor, Output, Target};
use crate::commands::Cmd;

#[derive(Debug, Clone, Copy)]
pub struct SimDelays {
    pub handshake: Duration,
    pub command: Duration,
    pub install: Duration,
    /// ± this fraction of each delay, spread evenly over hosts.
    pub jitter: f64,
}

impl SimDelays {
    /// The figures: SSH handshake 150 ms, each command 20 ms, package install 30 s.
    pub fn realistic() -> Self {
        SimDelays {
            handshake: Duration::from_millis(150),
            command: Duration::from_millis(20),
            install: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

#[derive(Default, Clone)]
struct Host {
    connected: bool,
    installed: bool,
    running: bool,
    /// `Some(true)` manager, `Some(false)` worker.
    swarm: Option<bool>,
}

pub struct Simulated {
    pub delays: SimDelays,
    hosts: Mutex<HashMap<String, Host>>,
    pub commands: AtomicU64,
}

impl Simulated {
    pub fn new(delays: SimDelays) -> Self {
        Simulated {
            delays,
            hosts: Mutex::new(HashMap::new()),
            commands: AtomicU64::new(0),
        }
    }

    /// A delay with this host's jitter (deterministic: the same host, the same spread).
    fn jittered(&self, d: Duration, host: &str, salt: u64) -> Duration {
        let h = host.bytes().fold(salt.wrapping_mul(0x9e37_79b9), |a, b| {
            a.wrapping_mul(31).wrapping_add(b as u64)
        });
        let unit = (h % 1000) as f64 / 999.0 * 2.0 - 1.0; // -1 ..= 1
        d.mul_f64((1.0 + unit * self.delays.jitter).max(0.0))
    }

    fn facts(name: &str, h: &Host) -> String {
        let yes = |b: bool| if b { "yes" } else { "no" };
        let swarm = match h.swarm {
            Some(manager) => format!("active node-{name} {manager}"),
            None => "inactive".into(),
        };
        format!(
            "os_id=debian\nos_version=12\nos_name=Debian GNU/Linux 12 (bookworm)\nhostname={name}\ninit=none\n\
             dockerd={d}\ndocker_cli={d}\ndocker_running={r}\nswarm={swarm}\nend=ok\n",
            d = yes(h.installed),
            r = yes(h.running),
        )
    }

    async fn answer(&self, target: &Target, cmd: &Cmd) -> Output {
        self.commands.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut hosts = self.hosts.lock().unwrap();
            let h = hosts.entry(target.name.clone()).or_default();
            !std::mem::replace(&mut h.connected, true)
        };
        let mut delay = self.jittered(self.delays.command, &target.name, 1);
        if first {
            delay += self.jittered(self.delays.handshake, &target.name, 2);
        }
        if cmd.step == "install-docker" {
            delay += self.jittered(self.delays.install, &target.name, 3);
        }
        tokio::time::sleep(delay).await;
        let mut hosts = self.hosts.lock().unwrap();
        let h = hosts.entry(target.name.clone()).or_default();
        let stdout = match cmd.step.as_str() {
            "facts" => Self::facts(&target.name, h),
            "install-docker" => {
                h.installed = true;
                String::new()
            }
            "start-docker" => {
                h.running = true;
                String::new()
            }
            "swarm-init" => {
                h.swarm = Some(true);
                String::new()
            }
            "swarm-join-token" => {
                let role = if cmd.command_line().contains("manager") {
                    "manager"
                } else {
                    "worker"
                };
                format!("SWMTKN-1-sim-{role}\n")
            }
            "swarm-join" => {
                h.swarm = Some(cmd.command_line().contains("SWMTKN-1-sim-manager"));
                String::new()
            }
            _ => String::new(),
        };
        Output {
            stdout,
            stderr: String::new(),
            code: 0,
        }
    }
}

#[async_trait::async_trait]
impl Executor for Simulated {
    async fn run(&self, target: &Target, _phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        Ok(self.answer(target, cmd).await)
    }

    async fn probe(&self, target: &Target, _phase: &str, cmd: &Cmd) -> Result<Output, ExecError> {
        Ok(self.answer(target, cmd).await)
    }
}
