use std::path::Path;

use super::*;

fn parse_str(text: &str) -> Result<Spec, SpecError> {
    parse(Path::new("cluster.yaml"), text)
}

fn err(text: &str) -> String {
    parse_str(text)
        .expect_err("spec should be rejected")
        .to_string()
}

const BARE: &str = "name: demo
provider:
  bare_metal:
    ssh_key: /keys/id
    hosts:
      - { address: 10.0.0.5, role: manager }
      - { address: 10.0.0.6 }
registry:
  insecure: [\"10.0.0.2:5000\"]
  mirrors: [\"http://10.0.0.2:5000\"]
  auth: { server: registry.example.com, username: ci, password_env: REGISTRY_PASSWORD }
proxy:
  http_proxy: http://proxy.corp:3128
  no_proxy: [localhost, 10.0.0.0/8]
  domain: demo.test
";

#[test]
fn full_bare_metal_spec_parses_with_defaults() {
    let spec = parse_str(BARE).unwrap();
    assert_eq!(spec.name, "demo");
    assert_eq!(spec.orchestrator, Orchestrator::Swarm);
    let ProviderSpec::BareMetal(bm) = &spec.provider else {
        panic!("bare metal expected")
    };
    assert_eq!(bm.user, "root");
    assert_eq!(bm.port, 22);
    assert_eq!(bm.host_key_policy, HostKeyPolicy::AcceptNew);
    assert_eq!(
        bm.hosts[0],
        HostSpec {
            address: "10.0.0.5".into(),
            port: 22,
            role: Role::Manager
        }
    );
    assert_eq!(bm.hosts[1].role, Role::Worker);
    assert_eq!(spec.registry.mirrors, ["http://10.0.0.2:5000"]);
    let auth = spec.registry.auth.as_ref().unwrap();
    assert_eq!(auth.password_env, "REGISTRY_PASSWORD");
    assert_eq!(
        auth.password_env_at,
        Location {
            line: 11,
            column: 69
        }
    );
    assert_eq!(spec.proxy.no_proxy, ["localhost", "10.0.0.0/8"]);
}

#[test]
fn lab_spec_defaults_to_one_manager() {
    let spec = parse_str("name: lab1\nprovider:\n  lab: { hosts: 3 }\n").unwrap();
    assert_eq!(
        spec.provider,
        ProviderSpec::Lab(LabSpec {
            hosts: 3,
            managers: 1,
            image: None
        })
    );
}

#[test]
fn unknown_key_names_the_key_with_line_and_column() {
    let e = err("name: demo\nprovider:\n  lab: { hosts: 3 }\nregistri: {}\n");
    assert!(e.starts_with("cluster.yaml:4:1: "), "{e}");
    assert!(e.contains("registri"), "{e}");
}

#[test]
fn unknown_nested_key_points_inside_the_provider() {
    let e = err("name: demo\nprovider:\n  lab: { hosts: 3, cpus: 2 }\n");
    assert!(e.starts_with("cluster.yaml:3:20: "), "{e}");
    assert!(e.contains("cpus"), "{e}");
}

#[test]
fn wrong_type_names_the_expected_type() {
    let e = err("name: demo\nprovider:\n  lab: { hosts: three }\n");
    assert!(e.starts_with("cluster.yaml:3:17: "), "{e}");
    assert!(e.contains("wrong type: expected a whole number"), "{e}");
}

#[test]
fn missing_manager_points_at_hosts() {
    let text = "name: demo\nprovider:\n  bare_metal:\n    ssh_key: k\n    hosts:\n      - { address: 10.0.0.6 }\n";
    let e = err(text);
    assert!(e.starts_with("cluster.yaml:6:7: no manager"), "{e}");
}

#[test]
fn duplicate_host_and_bad_name_and_kubernetes_are_rejected() {
    let dup = "name: demo\nprovider:\n  bare_metal:\n    ssh_key: k\n    hosts:\n      - { address: a, role: manager }\n      - { address: a }\n";
    assert!(
        err(dup).starts_with("cluster.yaml:7:20: host a:22 is listed twice"),
        "{}",
        err(dup)
    );
    assert!(
        err("name: Demo_1\nprovider:\n  lab: { hosts: 1 }\n")
            .starts_with("cluster.yaml:1:7: invalid cluster name")
    );
    let k8s = err("name: d\nprovider:\n  lab: { hosts: 1 }\norchestrator: kubernetes\n");
    assert!(
        k8s.starts_with("cluster.yaml:4:15: orchestrator `kubernetes` on lab, bare-metal and aws machines installs k3s"),
        "{k8s}"
    );
}

const GKE: &str = "name: prod\nprovider:\n  gke:\n    project: my-project\n    location: europe-west1-b\n    node_pools:\n      - { name: default, machine_type: e2-standard-4, nodes: 3, autoscaling: { min: 1, max: 10 } }\n";

#[test]
fn gke_spec_is_kubernetes_and_knows_where_each_field_is() {
    let spec = crate::spec::parse(std::path::Path::new("cluster.yaml"), GKE).unwrap();
    assert_eq!(spec.orchestrator, crate::spec::Orchestrator::Kubernetes);
    let crate::spec::ProviderSpec::Gke(g) = &spec.provider else {
        panic!("not gke")
    };
    assert_eq!(g.node_pools[0].autoscaling, Some((1, 10)));
    assert!(!g.deletion_protection);
    let at = g.at["provider.gke.node_pools[0].machine_type"];
    assert_eq!((at.line, at.column), (7, 40));
}

#[test]
fn gke_spec_errors_point_at_the_field() {
    let cases = [
        (
            GKE.replace("my-project", "My_Project"),
            "cluster.yaml:4:14: gke project",
        ),
        (
            GKE.replace("europe-west1-b", "mars"),
            "cluster.yaml:5:15: gke location",
        ),
        (
            GKE.replace("name: default", "name: Default"),
            "cluster.yaml:7:17: node pool name",
        ),
        (
            GKE.replace("min: 1, max: 10", "min: 5, max: 10"),
            "cluster.yaml:7:62: nodes 3 is outside autoscaling 5..10",
        ),
        (
            GKE.replace("e2-standard-4", "E2 big"),
            "cluster.yaml:7:40: machine_type",
        ),
        (
            format!("{GKE}orchestrator: swarm\n"),
            "cluster.yaml:8:15: a GKE cluster runs Kubernetes",
        ),
        (
            format!("{GKE}kubernetes: {{ kubeconfig: ./k }}\n"),
            "cluster.yaml:8:13: kubernetes.kubeconfig names an existing cluster",
        ),
        ("name: x\n".to_string(), "cluster.yaml:1:1: no provider"),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.starts_with(want), "{want}\n got: {e}");
    }
}

#[test]
fn lab_bounds_and_mirror_urls_are_checked() {
    assert!(err("name: d\nprovider:\n  lab: { hosts: 0 }\n").contains("lab hosts must be 1 to 50"));
    assert!(
        err("name: d\nprovider:\n  lab: { hosts: 2, managers: 3 }\n")
            .contains("lab managers must be between 1 and hosts")
    );
    let m =
        err("name: d\nprovider:\n  lab: { hosts: 1 }\nregistry:\n  mirrors: [\"10.0.0.2:5000\"]\n");
    assert!(m.starts_with("cluster.yaml:5:13: registry mirror"), "{m}");
}

#[test]
fn missing_password_env_is_an_error_naming_the_variable_not_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let text = BARE.replace("REGISTRY_PASSWORD", "CLOUDFLOW_TEST_UNSET_PASSWORD");
    std::fs::write(&path, &text).unwrap();
    let spec = load(&path).unwrap();
    let e = spec.registry_password().unwrap_err().to_string();
    assert!(e.contains("CLOUDFLOW_TEST_UNSET_PASSWORD"), "{e}");
    assert!(e.contains(":11:69: "), "{e}");
}

#[test]
fn state_dir_is_beside_the_spec() {
    let spec = parse_str("name: d\nprovider:\n  lab: { hosts: 1 }\n").unwrap();
    assert_eq!(spec.default_state_dir(), Path::new("./.cloudflow"));
    let spec = parse(
        Path::new("/x/y/c.yaml"),
        "name: d\nprovider:\n  lab: { hosts: 1 }\n",
    )
    .unwrap();
    assert_eq!(spec.default_state_dir(), Path::new("/x/y/.cloudflow"));
}

#[test]
fn unknown_provider_lists_the_known_ones() {
    let e = err("name: demo\nprovider:\n  lib: {}\n");
    assert_eq!(
        e,
        "cluster.yaml:3:3: unknown variant `lib`, expected one of lab, bare_metal, aws, gke"
    );
}

#[test]
fn aws_spec_with_defaults_and_checked_vpc() {
    let text = "name: stg\nprovider:\n  aws:\n    region: eu-west-1\n    instance_type: t3.medium\n    image: ami-1\n    workers: 3\n    ssh_key: /k\n    allowed_cidrs: [203.0.113.0/24]\n";
    let spec = parse_str(text).unwrap();
    let ProviderSpec::Aws(a) = &spec.provider else {
        panic!("aws expected")
    };
    assert_eq!(
        (a.managers, a.workers, a.vpc.as_str(), a.user.as_str()),
        (1, 3, "auto", "admin")
    );
    let bad = err(&text.replace("    workers: 3\n", "    workers: 3\n    vpc: default\n"));
    assert!(
        bad.starts_with("cluster.yaml:8:10: vpc must be `auto`"),
        "{bad}"
    );
}

const SERVICES: &str = "name: demo\nprovider:\n  lab: { hosts: 3 }\nproxy: { domain: demo.test, image: reg:5000/nginx:1, port: 80 }\nservices:\n  web:\n    image: reg:5000/web:1\n    port: 8080\n    replicas: 2\n    min_replicas: 1\n    max_replicas: 10\n    health: { path: /healthz, timeout: 30s }\n    env: { LOG_LEVEL: info }\n  db:\n    image: reg:5000/db:1\n    strategy: in-place\n";

#[test]
fn services_parse_with_defaults() {
    let spec = parse_str(SERVICES).unwrap();
    let web = &spec.services["web"];
    assert_eq!(
        (web.port, web.replicas, web.min_replicas, web.max_replicas),
        (Some(8080), 2, 1, 10)
    );
    assert_eq!(web.health.path, "/healthz");
    assert_eq!(web.health.timeout, std::time::Duration::from_secs(30));
    assert_eq!(web.env["LOG_LEVEL"], "info");
    assert_eq!(web.strategy, Strategy::BlueGreen);
    let db = &spec.services["db"];
    assert_eq!(
        (db.strategy, db.port, db.replicas),
        (Strategy::InPlace, None, 1)
    );
    assert_eq!(db.health.path, "/");
}

#[test]
fn service_errors_point_at_the_spec() {
    let e = err(&SERVICES.replace("    port: 8080\n", ""));
    assert!(
        e.starts_with("cluster.yaml:6:3: service web: `port`"),
        "{e}"
    );
    let e = err(&SERVICES.replace("replicas: 2", "replicas: 20"));
    assert!(
        e.starts_with("cluster.yaml:9:15: service web: replicas 20 is outside"),
        "{e}"
    );
    let e = err(&SERVICES.replace("timeout: 30s", "timeout: soon"));
    assert!(
        e.starts_with("cluster.yaml:12:40: service web: health timeout \"soon\" is not a duration"),
        "{e}"
    );
    let e = err(&SERVICES.replace("  web:\n", "  Web_1:\n"));
    assert!(
        e.starts_with("cluster.yaml:6:3: invalid service name \"Web_1\""),
        "{e}"
    );
    let e = err(&SERVICES.replace("    strategy: in-place\n", "    strategy: canary\n"));
    assert!(
        e.contains("cluster.yaml:16:15: unknown variant `canary`"),
        "{e}"
    );
    let e = err(&SERVICES.replace("image: reg:5000/nginx:1, ", ""));
    assert!(
        e.starts_with("cluster.yaml:6:3: services need a reverse proxy: set proxy.image"),
        "{e}"
    );
    let e = err(&SERVICES.replace("    port: 8080\n", "    port: 8080\n    replica: 3\n"));
    assert!(e.contains("unknown field `replica`"), "{e}");
}

#[test]
fn services_from_a_compose_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        "services:\n  api:\n    image: reg:5000/api:3\n    ports: [\"80:8081\"]\n    environment:\n      - MODE=prod\n    deploy: { replicas: 3 }\n    healthcheck: { test: [\"CMD\", \"true\"] }\n  cache:\n    image: reg:5000/cache:1\n    environment: { SIZE: 64 }\n",
    )
    .unwrap();
    let text = "name: demo\nprovider:\n  lab: { hosts: 1 }\nproxy: { domain: d.test, image: p:1 }\nservices_from: docker-compose.yml\nservices:\n  cache:\n    image: reg:5000/cache:2\n    strategy: in-place\n";
    let spec = parse(&dir.path().join("cluster.yaml"), text).unwrap();
    let api = &spec.services["api"];
    assert_eq!(
        (api.port, api.replicas, api.strategy),
        (Some(8081), 3, Strategy::BlueGreen)
    );
    assert_eq!(api.env["MODE"], "prod");
    assert_eq!(
        spec.services["cache"].image, "reg:5000/cache:2",
        "the spec wins over compose"
    );

    std::fs::write(
        dir.path().join("docker-compose.yml"),
        "services:\n  api:\n    ports: [8080]\n",
    )
    .unwrap();
    let e = parse(&dir.path().join("cluster.yaml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("docker-compose.yml:2:3: service api: no `image`"),
        "{e}"
    );
}

#[test]
fn service_secrets_name_a_variable_or_a_file_never_a_value() {
    let base = "name: s\nprovider:\n  lab: { hosts: 1 }\nproxy: { domain: d.test, image: \"r/nginx:1\" }\nservices:\n  web:\n    image: r/web:1\n    port: 80\n";
    let spec = parse(
        Path::new("s.yaml"),
        &format!("{base}    secrets:\n      api_token: {{ env: CF_UNIT_TOKEN_UNSET }}\n      tls.key: {{ file: ./key.pem }}\n"),
    )
    .unwrap();
    let web = &spec.services["web"];
    assert!(
        matches!(&web.secrets["api_token"], SecretSource::Env { var, .. } if var == "CF_UNIT_TOKEN_UNSET")
    );
    assert!(
        matches!(&web.secrets["tls.key"], SecretSource::File { path, .. } if path == "./key.pem")
    );
    for (bad, want) in [
        ("      x: { env: A, file: b }\n", "exactly one"),
        ("      x: {}\n", "exactly one"),
        ("      x: { value: s3cret }\n", "unknown field"),
        ("      \"../x\": { env: A }\n", "secret name"),
        ("      x: { env: \"A-$B\" }\n", "environment variable name"),
    ] {
        let e = parse(Path::new("s.yaml"), &format!("{base}    secrets:\n{bad}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.yaml:") && e.contains(want), "{bad}: {e}");
    }
    // Values are read at deploy time; a missing variable names itself and its spec line.
    let e = spec.secret_values(web).unwrap_err().to_string();
    assert!(
        e.contains("CF_UNIT_TOKEN_UNSET") && e.contains("is not set"),
        "{e}"
    );
}

#[test]
fn a_bad_proxy_url_error_never_shows_its_password() {
    let text = "name: s\nprovider:\n  lab: { hosts: 1 }\nproxy:\n  http_proxy: \"http://ci:s3cr et#x@proxy.corp:3128\"\n";
    let e = parse(Path::new("s.yaml"), text).unwrap_err();
    let plain = format!("{e} {e:?}");
    let shown = format!("{plain} {:?}", miette::Report::new(e));
    assert!(shown.contains("s.yaml:5:15"), "{shown}");
    assert!(shown.contains("***@proxy.corp:3128"), "{shown}");
    assert!(!shown.contains("s3cr"), "{shown}");
}

#[test]
fn an_error_next_to_a_proxy_url_never_shows_its_password() {
    let text = "name: s\nprovider:\n  lab: { hosts: 1 }\nproxy:\n  http_proxy: \"http://ci:s3cretpw@proxy.corp:3128\"\n  no_proxy: [\"a,b\"]\n";
    let e = parse(Path::new("s.yaml"), text).unwrap_err();
    let plain = format!("{e}");
    let shown = format!("{plain} {:?}", miette::Report::new(e));
    assert!(
        shown.contains("s.yaml:6:14") && shown.contains("no_proxy"),
        "{shown}"
    );
    assert!(
        shown.contains("http://") && !shown.contains("s3cretpw"),
        "{shown}"
    );
}

#[test]
fn https_on_kubernetes_is_accepted_and_the_acme_timeout_is_a_duration() {
    let base = "name: k\nkubernetes: { kubeconfig: ./kc }\nproxy:\n  domain: example.com\n  image: nginx\n  https:\n    acme:\n      directory: https://ca.example/dir\n";
    let spec = parse_str(base).unwrap();
    let https = spec.proxy.https.expect("https");
    assert_eq!(https.port, 443);
    let crate::spec::CertSource::Acme(acme) = https.source else {
        panic!("not acme")
    };
    assert_eq!(acme.timeout, std::time::Duration::from_secs(60));
    let spec = parse_str(&format!("{base}      timeout: 5s\n")).unwrap();
    let Some(crate::spec::HttpsSpec {
        source: crate::spec::CertSource::Acme(acme),
        ..
    }) = spec.proxy.https
    else {
        panic!("not acme")
    };
    assert_eq!(acme.timeout, std::time::Duration::from_secs(5));
    let bad = err(&format!("{base}      timeout: soon\n"));
    assert!(
        bad.starts_with("cluster.yaml:9:16: proxy.https.acme.timeout: expected a duration"),
        "{bad}"
    );
}
