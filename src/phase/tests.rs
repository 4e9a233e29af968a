//! Phases against the recording executor: which commands run where, in which order, and what
//! the state says afterwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cloudflow_provider_api::{Machine, Role, SshEndpoint};
use cloudflow_provider_baremetal::{BareMetal, Host};

use super::*;
use crate::exec::{Output, Recording};
use crate::facts;
use crate::plan::{self, Inputs};
use crate::state::{self, ClusterState, StateHandle};

const SPEC: &str = "name: rec\nprovider:\n  bare_metal:\n    ssh_key: /k\n    hosts:\n      - { address: m1, role: manager }\n      - { address: w1 }\nregistry:\n  insecure: [\"reg:5000\"]\n  auth: { server: \"reg:5000\", username: ci, password_env: PW }\n";

fn machine(name: &str, role: Role) -> Machine {
    Machine {
        name: name.into(),
        id: name.into(),
        role,
        ssh: SshEndpoint {
            address: format!("{name}.invalid"),
            port: 22,
            user: "root".into(),
        },
        running: true,
    }
}

#[tokio::test]
async fn fresh_hosts_bootstrap_in_order_and_join_with_the_leaders_token() {
    let dir = tempfile::tempdir().unwrap();
    let spec = crate::spec::parse(Path::new("c.yaml"), SPEC).unwrap();
    let store = state::open(None, dir.path()).unwrap();
    let handle = StateHandle::new(store.clone(), ClusterState::new("rec", "bare-metal"));
    let rec = Arc::new(Recording::default());
    rec.answer(
        "m1",
        "swarm-join-token",
        Output {
            stdout: "SWMTKN-1-abc\n".into(),
            ..Default::default()
        },
    );
    let machines = vec![machine("m1", Role::Manager), machine("w1", Role::Worker)];
    let fresh = facts::parse("os_id=debian\nhostname=h\ninit=none\nend=ok\n").unwrap();
    let facts: BTreeMap<_, _> = machines
        .iter()
        .map(|m| (m.name.clone(), fresh.clone()))
        .collect();
    let renderer = crate::render::Renderer::new(None).unwrap();
    let plan = plan::compute(&Inputs {
        spec: &spec,
        state: &handle.snapshot(),
        machines: &machines,
        provider_actions: &[],
        facts: &facts,
        renderer: &renderer,
    })
    .unwrap();
    let ctx = Ctx {
        spec,
        state: handle,
        provider: Arc::new(BareMetal {
            user: "root".into(),
            hosts: vec![
                Host {
                    address: "m1".into(),
                    port: 22,
                    role: Role::Manager,
                },
                Host {
                    address: "w1".into(),
                    port: 22,
                    role: Role::Worker,
                },
            ],
        }),
        exec: rec.clone(),
        ui: Arc::new(crate::ui::Ui::new(true)),
        renderer,
        password: Some(secrecy::SecretString::from("pw")),
        concurrency: 4,
        machines: Mutex::new(machines),
        facts: Mutex::new(facts),
    };
    for phase in PHASES {
        if phase.should_run(&plan) {
            phase.run(&ctx, &plan).await.unwrap();
        }
    }
    assert_eq!(
        rec.steps("m1"),
        [
            "install-docker",
            "daemon-json",
            "start-docker",
            "registry-login",
            "swarm-init",
            "swarm-join-token"
        ]
    );
    assert_eq!(
        rec.steps("w1"),
        [
            "install-docker",
            "daemon-json",
            "start-docker",
            "registry-login",
            "swarm-join"
        ]
    );
    let log = rec.log.lock().unwrap().clone();
    let join = log.iter().find(|l| l.1 == "swarm-join").unwrap();
    assert_eq!(
        join.2,
        "docker swarm join --token SWMTKN-1-abc --advertise-addr w1.invalid m1.invalid:2377"
    );
    let login = log
        .iter()
        .find(|l| l.0 == "w1" && l.1 == "registry-login")
        .unwrap();
    assert!(login.3, "the password goes on stdin");
    assert!(!login.2.contains("pw "), "and never in argv");

    // What down needs to know was recorded (and saved) by the phases themselves.
    let saved = store.load("rec").unwrap().unwrap();
    let m1 = &saved.hosts["m1"];
    assert!(m1.installed_docker);
    assert_eq!(m1.swarm, Some(Role::Manager));
    assert_eq!(m1.logged_in, ["reg:5000"]);
    assert_eq!(
        m1.daemon_json.as_ref().unwrap().added_insecure,
        ["reg:5000"]
    );
    assert_eq!(saved.hosts["w1"].swarm, Some(Role::Worker));
}

#[tokio::test]
async fn a_failing_host_is_named_with_step_and_output_and_the_other_host_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = crate::spec::parse(
        Path::new("c.yaml"),
        SPEC.replace(
            "  auth: { server: \"reg:5000\", username: ci, password_env: PW }\n",
            "",
        )
        .as_str(),
    )
    .unwrap();
    let handle = StateHandle::new(
        state::open(None, dir.path()).unwrap(),
        ClusterState::new("rec", "bare-metal"),
    );
    let rec = Arc::new(Recording::default());
    rec.answer(
        "w1",
        "install-docker",
        Output {
            code: 100,
            stderr: "E: Unable to locate package docker.io\n".into(),
            ..Default::default()
        },
    );
    let machines = vec![machine("m1", Role::Manager), machine("w1", Role::Worker)];
    let fresh = facts::parse("os_id=debian\nhostname=h\ninit=none\nend=ok\n").unwrap();
    let facts: BTreeMap<_, _> = machines
        .iter()
        .map(|m| (m.name.clone(), fresh.clone()))
        .collect();
    let renderer = crate::render::Renderer::new(None).unwrap();
    let plan = plan::compute(&Inputs {
        spec: &spec,
        state: &handle.snapshot(),
        machines: &machines,
        provider_actions: &[],
        facts: &facts,
        renderer: &renderer,
    })
    .unwrap();
    let ctx = Ctx {
        spec,
        state: handle,
        provider: Arc::new(BareMetal {
            user: "root".into(),
            hosts: vec![],
        }),
        exec: rec.clone(),
        ui: Arc::new(crate::ui::Ui::new(true)),
        renderer,
        password: None,
        concurrency: 4,
        machines: Mutex::new(machines),
        facts: Mutex::new(facts),
    };
    let err = Bootstrap.run(&ctx, &plan).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "host w1: phase bootstrap, step install-docker: `sh -c <script: cloudflow: install Docker from the distribution's own packages.>` exited 100\n  | E: Unable to locate package docker.io"
    );
    assert_eq!(
        rec.steps("m1"),
        ["install-docker", "daemon-json", "start-docker"],
        "m1 finished its own work"
    );
    assert_eq!(
        rec.steps("w1"),
        ["install-docker"],
        "w1 stopped at the failure"
    );
}
