use std::collections::BTreeMap;
use std::path::Path;

use cloudflow_provider_api::{Machine, ProviderAction, Resource, Role, SshEndpoint};

use super::*;
use crate::facts::{self, HostFacts};
use crate::render::Renderer;
use crate::spec;
use crate::state::{ClusterState, DaemonJsonRecord, HostRecord};

const SPEC: &str = "name: demo
provider:
  bare_metal:
    ssh_key: /k
    hosts:
      - { address: m1, role: manager }
      - { address: w1 }
      - { address: w2 }
registry:
  insecure: [\"reg:5000\"]
  mirrors: [\"http://reg:5000\"]
  auth: { server: \"reg:5000\", username: ci, password_env: PW }
";

fn spec() -> Spec {
    spec::parse(Path::new("c.yaml"), SPEC).unwrap()
}

fn machine(name: &str, role: Role) -> Machine {
    Machine {
        name: name.into(),
        id: name.into(),
        role,
        ssh: SshEndpoint {
            address: name.into(),
            port: 22,
            user: "root".into(),
        },
        running: true,
        private_address: None,
    }
}

fn machines() -> Vec<Machine> {
    vec![
        machine("m1", Role::Manager),
        machine("w1", Role::Worker),
        machine("w2", Role::Worker),
    ]
}

fn fresh() -> HostFacts {
    facts::parse("os_id=debian\nos_name=Debian 12\nhostname=h\ninit=none\nend=ok\n").unwrap()
}

/// A host after a full `up`: docker running, settings merged, logged in, in the swarm.
fn done(manager: bool) -> HostFacts {
    let merged = daemon_json::merge(None, &["reg:5000".into()], &["http://reg:5000".into()])
        .unwrap()
        .unwrap();
    let mut f = fresh();
    f.dockerd = true;
    f.docker_cli = true;
    f.docker_running = true;
    f.daemon_json = Some(merged.content);
    f.logins.insert("reg:5000".into());
    f.swarm = facts::SwarmFacts {
        state: "active".into(),
        node_id: "x".into(),
        manager,
    };
    f
}

fn plan_with(facts: &BTreeMap<String, HostFacts>) -> Plan {
    let spec = spec();
    let state = ClusterState::new("demo", "bare-metal");
    let r = Renderer::new(None).unwrap();
    let m = machines();
    compute(&Inputs {
        spec: &spec,
        state: &state,
        machines: &m,
        provider_actions: &[],
        facts,
        renderer: &r,
        cluster_view: None,
        k3s: None,
    })
    .unwrap()
}

fn lines(plan: &Plan) -> Vec<String> {
    plan.actions
        .iter()
        .map(|a| {
            format!(
                "{} {}: {}",
                a.phase,
                a.host.as_deref().unwrap_or("-"),
                a.step
            )
        })
        .collect()
}

#[test]
fn fresh_hosts_get_the_whole_bootstrap_then_init_and_joins() {
    let facts: BTreeMap<_, _> = ["m1", "w1", "w2"]
        .iter()
        .map(|h| (h.to_string(), fresh()))
        .collect();
    let plan = plan_with(&facts);
    let l = lines(&plan);
    assert_eq!(
        &l[..4],
        [
            "bootstrap m1: install docker (distribution packages)",
            "bootstrap m1: create /etc/docker/daemon.json (insecure-registries += reg:5000; registry-mirrors += http://reg:5000)",
            "bootstrap m1: start dockerd",
            "bootstrap m1: docker login reg:5000 as ci",
        ]
    );
    assert_eq!(
        &l[12..],
        [
            "cluster m1: swarm init (first manager)",
            "cluster w1: join the swarm as worker via m1",
            "cluster w2: join the swarm as worker via m1",
        ]
    );
    assert!(plan.forecast_hosts.is_empty());
}

#[test]
fn a_converged_cluster_plans_nothing() {
    let facts: BTreeMap<_, _> = [("m1", done(true)), ("w1", done(false)), ("w2", done(false))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let plan = plan_with(&facts);
    assert!(plan.is_empty(), "{plan}");
    assert!(plan.to_string().contains("no changes"));
}

#[test]
fn changed_registry_settings_on_a_running_host_restart_dockerd() {
    let mut f = done(false);
    f.daemon_json = Some("{\"log-driver\": \"local\"}".into());
    let facts: BTreeMap<_, _> = [("m1", done(true)), ("w1", f), ("w2", done(false))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(
        lines(&plan_with(&facts)),
        [
            "bootstrap w1: merge into /etc/docker/daemon.json (insecure-registries += reg:5000; registry-mirrors += http://reg:5000)",
            "bootstrap w1: restart dockerd (its settings changed)",
        ]
    );
}

#[test]
fn a_host_that_left_the_swarm_rejoins_via_the_active_leader() {
    let mut w1 = done(false);
    w1.swarm = Default::default();
    let facts: BTreeMap<_, _> = [("m1", done(true)), ("w1", w1), ("w2", done(false))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(
        lines(&plan_with(&facts)),
        ["cluster w1: join the swarm as worker via m1"]
    );
}

#[test]
fn unknown_hosts_are_a_forecast_and_non_debian_without_docker_is_an_error() {
    let plan = plan_with(&BTreeMap::new());
    assert_eq!(plan.forecast_hosts, ["m1", "w1", "w2"]);
    assert!(
        plan.to_string()
            .contains("(forecast: host not reachable yet)")
    );

    let mut fedora = fresh();
    fedora.os_id = "fedora".into();
    fedora.os_name = "Fedora Linux 40".into();
    let facts = BTreeMap::from([("w1".to_string(), fedora)]);
    let spec = spec();
    let state = ClusterState::new("demo", "bare-metal");
    let r = Renderer::new(None).unwrap();
    let m = machines();
    let e = compute(&Inputs {
        spec: &spec,
        state: &state,
        machines: &m,
        provider_actions: &[],
        facts: &facts,
        renderer: &r,
        cluster_view: None,
        k3s: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("host w1: Docker is not installed and this host runs Fedora Linux 40"),
        "{e}"
    );
}

#[test]
fn provider_creations_become_planned_hosts_and_until_cuts_phases() {
    let actions = vec![
        ProviderAction::Create {
            resource: Resource::new("network", "n"),
            role: None,
        },
        ProviderAction::Create {
            resource: Resource::new("container", "cf-a-1"),
            role: Some(Role::Manager),
        },
        ProviderAction::Create {
            resource: Resource::new("container", "cf-a-2"),
            role: Some(Role::Worker),
        },
    ];
    let hosts = planned_hosts(&[], &actions);
    assert_eq!(
        hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        ["cf-a-1", "cf-a-2"]
    );
    let spec = spec::parse(
        Path::new("c.yaml"),
        "name: a\nprovider:\n  lab: { hosts: 2 }\n",
    )
    .unwrap();
    let state = ClusterState::new("a", "lab");
    let r = Renderer::new(None).unwrap();
    let facts = BTreeMap::new();
    let plan = compute(&Inputs {
        spec: &spec,
        state: &state,
        machines: &[],
        provider_actions: &actions,
        facts: &facts,
        renderer: &r,
        cluster_view: None,
        k3s: None,
    })
    .unwrap()
    .until(Some(PhaseName::Provision));
    assert_eq!(plan.actions.len(), 3);
    assert!(plan.actions.iter().all(|a| a.phase == PhaseName::Provision));
}

#[test]
fn down_on_bare_metal_undoes_only_what_cloudflow_did_workers_leave_first() {
    let mut state = ClusterState::new("demo", "bare-metal");
    for (h, role) in [("m1", Role::Manager), ("w1", Role::Worker)] {
        state.hosts.insert(
            h.into(),
            HostRecord {
                daemon_json: Some(DaemonJsonRecord {
                    created_file: true,
                    added_insecure: vec!["reg:5000".into()],
                    added_mirrors: vec!["http://reg:5000".into()],
                }),
                logged_in: vec!["reg:5000".into()],
                swarm: Some(role),
                ..Default::default()
            },
        );
    }
    // w2 was already in a swarm that cloudflow did not make: no record, left alone.
    let facts: BTreeMap<_, _> = [("m1", done(true)), ("w1", done(false)), ("w2", done(false))]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let plan = compute_down(&state, &machines(), false, &[], &facts).unwrap();
    assert_eq!(
        lines(&plan),
        [
            "cluster w1: leave the swarm",
            "cluster m1: leave the swarm",
            "bootstrap m1: docker logout reg:5000",
            "bootstrap m1: remove /etc/docker/daemon.json (cloudflow created it)",
            "bootstrap m1: restart dockerd (its settings changed)",
            "bootstrap w1: docker logout reg:5000",
            "bootstrap w1: remove /etc/docker/daemon.json (cloudflow created it)",
            "bootstrap w1: restart dockerd (its settings changed)",
        ]
    );
}

#[test]
fn down_of_a_lab_is_only_the_provider_destroy() {
    let state = ClusterState::new("demo", "lab");
    let destroy = vec![ProviderAction::Destroy {
        resource: Resource::new("container", "cf-demo-1"),
    }];
    let plan = compute_down(&state, &machines(), true, &destroy, &BTreeMap::new()).unwrap();
    assert_eq!(lines(&plan), ["provision -: destroy container cf-demo-1"]);
}

#[test]
fn plan_json_has_phase_host_and_step_but_no_file_contents() {
    let facts: BTreeMap<_, _> = ["m1", "w1", "w2"]
        .iter()
        .map(|h| (h.to_string(), fresh()))
        .collect();
    let json = serde_json::to_value(plan_with(&facts)).unwrap();
    let first = &json["actions"][1];
    assert_eq!(first["phase"], "bootstrap");
    assert_eq!(first["host"], "m1");
    assert_eq!(first["step"], "write-daemon-json");
    assert!(first.get("content").is_none());
}

fn all_done() -> BTreeMap<String, HostFacts> {
    let mut facts = BTreeMap::new();
    facts.insert("m1".to_string(), done(true));
    facts.insert("w1".to_string(), done(false));
    facts.insert("w2".to_string(), done(false));
    facts
}

fn services_spec() -> Spec {
    let text = format!(
        "{SPEC}proxy: {{ domain: d.test, image: \"reg:5000/nginx:1\", port: 8080 }}\nservices:\n  web: {{ image: \"reg:5000/web:1\", port: 80, replicas: 2 }}\n"
    );
    spec::parse(Path::new("c.yaml"), &text).unwrap()
}

fn plan_services(state: &ClusterState, facts: &BTreeMap<String, HostFacts>) -> Plan {
    let spec = services_spec();
    let r = Renderer::new(None).unwrap();
    compute(&Inputs {
        spec: &spec,
        state,
        machines: &machines(),
        provider_actions: &[],
        facts,
        renderer: &r,
        cluster_view: None,
        k3s: None,
    })
    .unwrap()
}

#[test]
fn services_plan_the_proxy_then_a_first_deploy_on_the_leader() {
    let state = ClusterState::new("demo", "bare-metal");
    let plan = plan_services(&state, &all_done());
    let steps: Vec<(PhaseName, Option<&str>, &Step)> = plan
        .actions
        .iter()
        .map(|a| (a.phase, a.host.as_deref(), &a.step))
        .collect();
    assert_eq!(
        steps,
        vec![
            (
                PhaseName::Proxy,
                Some("m1"),
                &Step::StartProxy {
                    image: "reg:5000/nginx:1".into(),
                    port: 8080
                }
            ),
            (
                PhaseName::Deploy,
                Some("m1"),
                &Step::DeployService {
                    service: "web".into(),
                    image: "reg:5000/web:1".into(),
                    replace: false
                }
            ),
        ]
    );
}

#[test]
fn deployed_services_keep_live_values_and_plan_notes_the_difference() {
    use crate::state::{Color, ColorRecord, EnvRecord, ServiceRecord};
    let mut state = ClusterState::new("demo", "bare-metal");
    let mut env = EnvRecord {
        created: "t".into(),
        expires: None,
        services: Default::default(),
    };
    env.services.insert(
        "web".into(),
        ServiceRecord {
            strategy: spec::Strategy::BlueGreen,
            port: Some(80),
            health_path: "/".into(),
            live: Color::Green,
            blue: None,
            green: Some(ColorRecord {
                image: "reg:5000/web:2".into(),
                replicas: 4,
            }),
            switch_from: None,
        },
    );
    state.environments.insert("default".into(), env);
    let mut facts = all_done();
    let m1 = facts.get_mut("m1").unwrap();
    m1.swarm_services.insert("cloudflow-proxy".into(), (1, 1));
    m1.swarm_services.insert("default-web-green".into(), (4, 4));
    let plan = plan_services(&state, &facts);
    assert!(plan.is_empty(), "{:?}", plan.actions);
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("web: live image reg:5000/web:2, spec reg:5000/web:1")),
        "{:?}",
        plan.notes
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("live replicas 4, spec 2")),
        "{:?}",
        plan.notes
    );

    // A new proxy image in the spec: the proxy is updated.
    let mut moved = state.clone();
    moved.proxy = Some(crate::state::ProxyRecord {
        image: "reg:5000/nginx:0".into(),
        port: 8080,
        generation: 3,
    });
    let plan = plan_services(&moved, &facts);
    assert!(
        matches!(&plan.actions[0].step, Step::StartProxy { image, .. } if image == "reg:5000/nginx:1")
    );

    // The live service removed behind cloudflow's back: deploy it again; a proxy with no
    // running task is started again.
    let m1 = facts.get_mut("m1").unwrap();
    m1.swarm_services.remove("default-web-green");
    m1.swarm_services.insert("cloudflow-proxy".into(), (0, 1));
    let plan = plan_services(&state, &facts);
    assert!(matches!(plan.actions[0].step, Step::StartProxy { .. }));
    assert_eq!(
        plan.actions[1].step,
        Step::DeployService {
            service: "web".into(),
            image: "reg:5000/web:2".into(),
            replace: true
        }
    );
}

#[test]
fn bare_metal_down_removes_deployments_before_the_swarm_goes() {
    let mut state = ClusterState::new("demo", "bare-metal");
    for (h, role) in [
        ("m1", Role::Manager),
        ("w1", Role::Worker),
        ("w2", Role::Worker),
    ] {
        state.hosts.insert(
            h.into(),
            HostRecord {
                swarm: Some(role),
                ..Default::default()
            },
        );
    }
    let mut facts = all_done();
    facts
        .get_mut("m1")
        .unwrap()
        .swarm_services
        .insert("default-web-blue".into(), (2, 2));
    let plan = compute_down(&state, &machines(), false, &[], &facts).unwrap();
    assert_eq!(plan.actions[0].phase, PhaseName::Deploy);
    assert_eq!(
        plan.actions[0].step,
        Step::RemoveDeployments {
            services: vec!["default-web-blue".into()]
        }
    );
    assert!(
        plan.actions[1..]
            .iter()
            .all(|a| a.phase < PhaseName::Deploy)
    );
}

#[test]
fn a_live_worker_count_that_differs_from_the_spec_is_noted() {
    let spec = spec::parse(
        Path::new("c.yaml"),
        "name: demo\nprovider:\n  aws: { region: r, instance_type: t, image: ami-1, workers: 2, ssh_key: /k }\n",
    )
    .unwrap();
    let r = Renderer::new(None).unwrap();
    let mut state = ClusterState::new("demo", "aws");
    let plan_for = |state: &ClusterState| {
        compute(&Inputs {
            spec: &spec,
            state,
            machines: &machines(),
            provider_actions: &[],
            facts: &all_done(),
            renderer: &r,
            cluster_view: None,
            k3s: None,
        })
        .unwrap()
    };
    assert!(
        plan_for(&state)
            .notes
            .iter()
            .all(|n| !n.contains("workers"))
    );
    state.workers = Some(2);
    assert!(
        plan_for(&state)
            .notes
            .iter()
            .all(|n| !n.contains("workers"))
    );
    state.workers = Some(5);
    let notes = plan_for(&state).notes;
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("workers: live 5, spec 2") && n.contains("nodes scale 2")),
        "{notes:?}"
    );
}

#[test]
fn a_proxy_file_with_the_right_content_but_open_permissions_is_written_again() {
    let text = format!("{SPEC}proxy:\n  http_proxy: \"http://ci:pw@proxy.corp:3128\"\n");
    let spec = spec::parse(Path::new("c.yaml"), &text).unwrap();
    let r = Renderer::new(None).unwrap();
    let files = crate::commands::proxy_files(&r, &spec.proxy, facts::Init::None).unwrap();
    let plan_with_mode = |mode: &str| {
        let mut all = BTreeMap::new();
        for (name, manager) in [("m1", true), ("w1", false), ("w2", false)] {
            let mut f = done(manager);
            for file in &files {
                f.files.insert(
                    file.path.clone(),
                    format!("{}:{mode}", sha256_hex(&file.content)),
                );
            }
            all.insert(name.to_string(), f);
        }
        let state = ClusterState::new("demo", "bare-metal");
        compute(&Inputs {
            spec: &spec,
            state: &state,
            machines: &machines(),
            provider_actions: &[],
            facts: &all,
            renderer: &r,
            cluster_view: None,
            k3s: None,
        })
        .unwrap()
    };
    // Written 0644 by an earlier version: same content, written again (0600).
    let open = plan_with_mode("644");
    assert!(
        open.actions
            .iter()
            .any(|a| matches!(&a.step, Step::WriteFile { mode, .. } if *mode == 0o600)),
        "{}",
        lines(&open).join("\n")
    );
    let closed = plan_with_mode("600");
    assert!(
        !closed
            .actions
            .iter()
            .any(|a| matches!(a.step, Step::WriteFile { .. })),
        "{}",
        lines(&closed).join("\n")
    );
}

#[test]
fn a_manager_joining_a_cluster_with_a_proxy_plans_the_proxy_for_its_routes() {
    let mut state = ClusterState::new("demo", "bare-metal");
    state.proxy = Some(crate::state::ProxyRecord {
        image: "reg:5000/nginx:1".into(),
        port: 8080,
        generation: 3,
    });
    let mut facts = all_done();
    facts
        .get_mut("m1")
        .unwrap()
        .swarm_services
        .insert("cloudflow-proxy".into(), (1, 1));
    let plan_for = |facts: &BTreeMap<String, HostFacts>, machines: &[Machine]| {
        let spec = services_spec();
        let r = Renderer::new(None).unwrap();
        compute(&Inputs {
            spec: &spec,
            state: &state,
            machines,
            provider_actions: &[],
            facts,
            renderer: &r,
            cluster_view: None,
            k3s: None,
        })
        .unwrap()
    };
    let proxy_planned = |p: &Plan| {
        p.actions
            .iter()
            .any(|a| matches!(a.step, Step::StartProxy { .. }))
    };
    // The proxy serves on every manager: nothing to do.
    assert!(!proxy_planned(&plan_for(&facts, &machines())));
    // A second manager joins: its proxy task needs the routes the first one has.
    let mut grown = machines();
    grown.push(machine("m2", Role::Manager));
    facts.insert("m2".to_string(), fresh());
    let plan = plan_for(&facts, &grown);
    assert!(plan.actions.iter().any(|a| matches!(
        a.step,
        Step::SwarmJoin {
            role: Role::Manager,
            ..
        }
    )));
    assert!(proxy_planned(&plan), "{:?}", lines(&plan));
    // A worker joining runs no proxy: nothing planned for it.
    let mut more = machines();
    more.push(machine("w3", Role::Worker));
    facts.remove("m2");
    facts.insert("w3".to_string(), fresh());
    assert!(!proxy_planned(&plan_for(&facts, &more)));
}

#[test]
fn a_docker_install_cut_short_is_installed_again() {
    let mut facts = all_done();
    let w1 = facts.get_mut("w1").unwrap();
    // docker.io unpacked (its binaries there) but not configured: dpkg --audit names it.
    w1.docker_pkg_incomplete = true;
    w1.docker_running = false;
    let plan = plan_with(&facts);
    assert!(
        plan.actions
            .iter()
            .any(|a| a.host.as_deref() == Some("w1") && a.step == Step::InstallDocker),
        "{:?}",
        lines(&plan)
    );
    assert!(
        !plan
            .actions
            .iter()
            .any(|a| a.host.as_deref() != Some("w1") && a.step == Step::InstallDocker)
    );
}
