//! The SSH executor against a real sshd: a session that dies is reconnected.

use std::sync::Arc;
use std::time::Duration;

use cloudflow::commands::{Cmd, Effect};
use cloudflow::exec::{Executor, HostKeyCheck, SshConfig, SshExecutor, Target};
use cloudflow::spec::HostKeyPolicy;
use cloudflow::state::{self, ClusterState, StateHandle};

use crate::support::*;

#[test]
fn a_dead_session_is_reconnected_and_the_command_runs() {
    let dir = workdir();
    let (key, public) = keypair(dir.path(), "id_ed25519");
    let hosts = Hosts::start("cfit-ssh", 1, &public);
    let store = state::open(None, &dir.path().join("state")).unwrap();
    let exec = SshExecutor::new(SshConfig {
        key,
        hostkeys: HostKeyCheck {
            policy: HostKeyPolicy::AcceptNew,
            state: StateHandle::new(store, ClusterState::new("cfit-ssh", "bare-metal")),
            user_known_hosts: None,
            record_new: false,
        },
        connect_timeout: Duration::from_secs(10),
        command_timeout: Duration::from_secs(60),
    });
    let exec: Arc<dyn Executor> = Arc::new(exec);
    let target = Target {
        name: "h1".into(),
        address: hosts.addresses[0].clone(),
        port: 22,
        user: "root".into(),
        private_address: None,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let read = Cmd::argv("read", Effect::Read, &["hostname"]);
    let first = rt.block_on(exec.run(&target, "test", &read)).unwrap();
    // Kill the connection's server side (the per-connection sshd), not the listener: the
    // executor's cached session is now dead.
    let killed = |h: &Hosts| {
        h.exec(
            0,
            "for p in $(pgrep -f 'sshd: [r]oot'); do kill -9 $p; done; sleep 0.3; pgrep -f 'sshd: [r]oot' | wc -l",
        )
    };
    assert_eq!(killed(&hosts), "0");
    let again = rt.block_on(exec.run(&target, "test", &read)).unwrap();
    assert_eq!(again.stdout, first.stdout);
    // A mutating command is sent again only when it never started: here the channel cannot
    // even open on the dead session, so it runs once, on the new session.
    assert_eq!(killed(&hosts), "0");
    let write = Cmd::script(
        "write",
        Effect::Mutate,
        "echo x >> /tmp/cf-writes; wc -l < /tmp/cf-writes",
    );
    let out = rt.block_on(exec.run(&target, "test", &write)).unwrap();
    assert_eq!(out.stdout.trim(), "1");
}
