//! Phases against the recording executor: which commands run where, in which order, and what
//! the state says afterwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cloudflow_provider_api::{Machine, Role, SshEndpoint};
use cloudflow_provider_baremetal::BareMetal;

use super::*;
use crate::exec::{Output, Recording};
use crate::facts;
use crate::plan::{self, Inputs};
use crate::state::{self, ClusterState, StateHandle, StateStore};

const SPEC: &str = "name: rec\nprovider:\n  bare_metal:\n    ssh_key: /k\n    hosts:\n      - { address: m1, role: manager }\n      - { address: w1 }\nregistry:\n  insecure: [\"reg:5000\"]\n";
const AUTH: &str = "  auth: { server: \"reg:5000\", username: ci, password_env: PW }\n";

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<dyn StateStore>,
    rec: Arc<Recording>,
    ctx: Ctx,
    plan: Plan,
}

/// Two fresh Debian hosts (m1 manager, w1 worker) planned from `spec_text`, run by `rec`.
fn fixture(spec_text: &str, rec: Recording, password: Option<&str>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let spec = crate::spec::parse(Path::new("c.yaml"), spec_text).unwrap();
    let store = state::open(None, dir.path()).unwrap();
    let handle = StateHandle::new(store.clone(), ClusterState::new("rec", "bare-metal"));
    let machine = |name: &str, role| Machine {
        name: name.into(),
        id: name.into(),
        role,
        ssh: SshEndpoint {
            address: format!("{name}.invalid"),
            port: 22,
            user: "root".into(),
        },
        running: true,
        private_address: None,
    };
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
        cluster_view: None,
        k3s: None,
    })
    .unwrap();
    let rec = Arc::new(rec);
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
        password: password.map(secrecy::SecretString::from),
        concurrency: 4,
        machines: Mutex::new(machines),
        facts: Mutex::new(facts),
        k3s_kubeconfig: std::path::PathBuf::from("/nonexistent/k3s.kubeconfig"),
        timings: Default::default(),
    };
    Fixture {
        _dir: dir,
        store,
        rec,
        ctx,
        plan,
    }
}

#[tokio::test]
async fn fresh_hosts_bootstrap_in_order_and_join_with_the_leaders_token() {
    let rec = Recording::default();
    rec.answer(
        "m1",
        "swarm-join-token",
        Output {
            stdout: "SWMTKN-1-abc\n".into(),
            ..Default::default()
        },
    );
    let f = fixture(&format!("{SPEC}{AUTH}"), rec, Some("pw"));
    for phase in PHASES {
        if phase.should_run(&f.plan) {
            phase.run(&f.ctx, &f.plan).await.unwrap();
        }
    }
    assert_eq!(
        f.rec.steps("m1"),
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
        f.rec.steps("w1"),
        [
            "install-docker",
            "daemon-json",
            "start-docker",
            "registry-login",
            "swarm-join"
        ]
    );
    let log = f.rec.log.lock().unwrap().clone();
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
    let saved = f.store.load("rec").unwrap().unwrap();
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
    let rec = Recording::default();
    let failure = Output {
        code: 100,
        stderr: "E: Unable to locate package docker.io\n".into(),
        ..Default::default()
    };
    rec.answer("w1", "install-docker", failure);
    let f = fixture(SPEC, rec, None);
    let err = Bootstrap
        .run(&f.ctx, &f.plan)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "host w1: phase bootstrap, step install-docker: `sh -c <script: cloudflow: install Docker from the \
         distribution's own packages.>` exited 100\n  | E: Unable to locate package docker.io"
    );
    assert_eq!(
        f.rec.steps("m1"),
        ["install-docker", "daemon-json", "start-docker"],
        "m1 finished its own work"
    );
    assert_eq!(
        f.rec.steps("w1"),
        ["install-docker"],
        "w1 stopped at the failure"
    );
}
