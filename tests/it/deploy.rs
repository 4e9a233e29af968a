//! Deploy and scale on a real swarm of lab hosts: locally built images in a real registry,
//! the nginx proxy in host mode, blue-green with a client looping requests the whole time.

use std::time::Duration;

use crate::deploy_fixture::*;
use crate::support::*;

const CLUSTER: &str = "cfdeploy";
const DOMAIN: &str = "demo.test";

/// Removes the lab cluster's containers and network if the test stops half-way.
struct LabGuard;
impl Drop for LabGuard {
    fn drop(&mut self) {
        let filter = format!("label=cloudflow.cluster={CLUSTER}");
        let ids = docker_ok(&["ps", "-aq", "--filter", &filter]);
        for id in ids.lines() {
            docker(&["rm", "-f", id]);
        }
        docker(&["network", "rm", &format!("cloudflow-{CLUSTER}")]);
    }
}

fn manager() -> String {
    format!("cf-{CLUSTER}-1")
}

/// Run a docker command on the lab manager (our own test host).
fn on_manager(script: &str) -> String {
    docker_ok(&["exec", &manager(), "sh", "-c", script])
}

fn running(service: &str) -> usize {
    on_manager(&format!(
        "docker service ps -q --filter desired-state=running {service} 2>/dev/null | wc -l"
    ))
    .parse()
    .unwrap()
}

fn spec(reg: &Registry, img: &Images) -> String {
    format!(
        "name: {CLUSTER}\n\
         provider:\n  lab: {{ hosts: 3 }}\n\
         registry:\n  insecure: [\"{pull}\"]\n\
         proxy: {{ domain: {DOMAIN}, image: \"{proxy}\", port: 80 }}\n\
         services:\n\
         \x20 web:\n\
         \x20   image: \"{v1}\"\n\
         \x20   port: 8080\n\
         \x20   replicas: 2\n\
         \x20   min_replicas: 1\n\
         \x20   max_replicas: 5\n\
         \x20   health: {{ path: /healthz, timeout: 15s }}\n\
         \x20   env: {{ LOG_LEVEL: info }}\n\
         \x20   secrets: {{ api_token: {{ env: CF_TEST_API_TOKEN }} }}\n\
         \x20 db:\n\
         \x20   image: \"{v1}\"\n\
         \x20   env: {{ DB_MODE: primary, KEEP: \"1\" }}\n\
         \x20   secrets: {{ db_password: {{ file: ./db_password }} }}\n\
         \x20   strategy: in-place\n",
        pull = reg.pull,
        proxy = img.proxy,
        v1 = img.web_v1,
    )
}

#[test]
fn blue_green_scale_rollback_and_environments_on_a_lab_swarm() {
    host_image();
    let reg = Registry::start();
    let img = build_images(&reg, IMAGE);
    let dir = workdir();
    let d = dir.path();
    let spec_path = d.join("cluster.yaml");
    std::fs::write(&spec_path, spec(&reg, &img)).unwrap();
    let _guard = LabGuard;
    let f = spec_path.to_str().unwrap();
    // Service secrets come from this machine: a variable for web, a file for db. Every
    // output of every command is kept, to check at the end that no value ever shows.
    let token = std::cell::RefCell::new("tok-4f1c9e-first".to_string());
    std::fs::write(d.join("db_password"), "pw-8d2a71-first").unwrap();
    let outputs = std::cell::RefCell::new(Vec::<String>::new());
    let cf = |args: &[&str]| {
        let mut all = vec!["-f", f];
        all.extend_from_slice(args);
        let run = cloudflow_env(d, &all, &[("CF_TEST_API_TOKEN", token.borrow().as_str())]);
        outputs
            .borrow_mut()
            .push(format!("{}\n{}", run.stdout, run.stderr));
        run
    };
    // The default environment's web entry in `status -o json`.
    let web_status = || {
        let status = cf(&["status", "-o", "json"]).ok().json();
        status["environments"][0]["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "web")
            .cloned()
            .unwrap()
    };

    // `up` forms the swarm, starts the proxy and deploys the spec's services.
    let up = cf(&["up", "--yes"]).ok();
    assert!(up.stderr.contains("phase proxy") && up.stderr.contains("phase deploy"));
    let ip = docker_ok(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"cloudflow-{CLUSTER}\").IPAddress}}}}"),
        &manager(),
    ]);
    let addr = format!("{ip}:80");
    let live = format!("web-default.{DOMAIN}");
    let preview = format!("web-default-preview.{DOMAIN}");
    let (status, body) = get(&addr, &live, "/").unwrap();
    assert_eq!(
        (status, body.starts_with("version=1")),
        (200, true),
        "{body}"
    );
    let (status, body) = get(&addr, &format!("nothing-here.{DOMAIN}"), "/").unwrap();
    assert_eq!(status, 404);
    assert!(
        body.contains("no service is routed at nothing-here"),
        "{body}"
    );
    assert_eq!(get(&addr, &preview, "/").unwrap().0, 503);
    // The secret arrived as a file in every replica (Docker secret, created from stdin).
    for _ in 0..4 {
        assert_eq!(
            get(&addr, &live, "/secret/api_token").unwrap(),
            (200, "tok-4f1c9e-first".to_string())
        );
    }
    assert_eq!(running("default-web-blue"), 2);
    assert_eq!(running("default-db"), 1);
    let status = cf(&["status", "-o", "json"]).ok().json();
    assert_eq!(status["proxy"]["port"], 80, "{status}");
    assert_eq!(
        status["environments"][0]["services"][1]["name"], "web",
        "{status}"
    );
    let labels =
        on_manager("docker service inspect default-web-blue --format '{{json .Spec.Labels}}'");
    for l in [
        "\"cloudflow.cluster\":\"cfdeploy\"",
        "\"cloudflow.env\":\"default\"",
        "\"cloudflow.service\":\"web\"",
        "\"cloudflow.color\":\"blue\"",
    ] {
        assert!(labels.contains(l), "{labels}");
    }
    assert!(
        on_manager("docker service inspect cloudflow-proxy --format '{{json .Endpoint.Ports}}'")
            .contains("\"PublishMode\":\"host\"")
    );

    // From here on a client loops requests through the proxy: none may fail.
    let load = Load::start(&addr, &live);

    // A new value is a new secret: the new colour mounts it, the old one keeps its own.
    *token.borrow_mut() = "tok-77b0d2-second".to_string();
    let deployed = cf(&["deploy", "web", "--image", &img.web_v2, "-o", "json", "-v"]).ok();
    let j = deployed.json();
    assert_eq!(
        (j["color"].as_str(), j["switched"].as_bool()),
        (Some("green"), Some(true)),
        "{j}"
    );
    assert!(get(&addr, &live, "/").unwrap().1.starts_with("version=2"));
    assert!(
        get(&addr, &preview, "/")
            .unwrap()
            .1
            .starts_with("version=1")
    );
    assert_eq!(
        get(&addr, &live, "/secret/api_token").unwrap().1,
        "tok-77b0d2-second"
    );
    assert_eq!(
        get(&addr, &preview, "/secret/api_token").unwrap().1,
        "tok-4f1c9e-first"
    );

    let again = cf(&["deploy", "web", "--image", &img.web_v2]).ok();
    assert!(again.stdout.contains("already live"), "{}", again.stdout);

    cf(&["stop-old", "web"]).ok();
    assert_eq!(
        (running("default-web-blue"), running("default-web-green")),
        (0, 2)
    );
    let (status, body) = get(&addr, &preview, "/").unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("stop-old"), "{body}");

    cf(&["scale", "web", "+2"]).ok();
    assert_eq!(running("default-web-green"), 4);
    cf(&["scale", "web", "-1"]).ok();
    assert_eq!(running("default-web-green"), 3);
    let clamped = cf(&["scale", "web", "+9", "-o", "json"]).ok();
    assert_eq!(clamped.json()["replicas"], 5);
    assert!(
        clamped.stderr.contains("clamped to 5"),
        "{}",
        clamped.stderr
    );
    assert_eq!(running("default-web-green"), 5);
    cf(&["scale", "web", "3"]).ok();

    cf(&["rollback", "web"]).ok();
    assert!(get(&addr, &live, "/").unwrap().1.starts_with("version=1"));
    assert_eq!(running("default-web-blue"), 3);

    // A new image that fails its health gate never receives traffic.
    let bad = cf(&["deploy", "web", "--image", &img.web_bad]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("replica default-web-green."),
        "{}",
        bad.stderr
    );
    assert!(bad.stderr.contains("answered 500"), "{}", bad.stderr);
    assert!(
        bad.stderr.contains("traffic stays on blue"),
        "{}",
        bad.stderr
    );
    assert!(get(&addr, &live, "/").unwrap().1.starts_with("version=1"));
    assert!(
        get(&addr, &preview, "/")
            .unwrap()
            .1
            .starts_with("version=2")
    );

    // A proxy configuration nginx refuses never goes live: a template override renders an
    // unknown directive only in the switch's configuration (the health gate's, which lists
    // probes, is fine), so the gate passes and the switch fails with nginx's own message.
    // The live file stays (no candidate left behind), traffic stays where it was, and the
    // state goes back to naming the colour actually served.
    std::fs::create_dir_all(d.join("tpl")).unwrap();
    std::fs::write(
        d.join("tpl/nginx-routes.conf.tera"),
        format!(
            "{}\n{{% if probes | length == 0 %}}cloudflow_not_a_directive on;{{% endif %}}\n",
            include_str!("../../templates/nginx-routes.conf.tera")
        ),
    )
    .unwrap();
    let with_templates = format!("{}templates: ./tpl\n", spec(&reg, &img));
    std::fs::write(&spec_path, &with_templates).unwrap();
    let refused = cf(&["switch", "web"]);
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("nginx refused the new proxy configuration")
            && refused.stderr.contains("cloudflow_not_a_directive"),
        "{}",
        refused.stderr
    );
    let live_conf = on_manager("cat /etc/cloudflow/proxy/cloudflow.conf");
    assert!(!live_conf.contains("cloudflow_not_a_directive"));
    let live_route = live_conf
        .split("server_name web-default.demo.test;")
        .nth(1)
        .and_then(|rest| rest.split("server {").next())
        .unwrap_or_default();
    assert!(
        live_route.contains("set $cf_upstream default-web-blue;"),
        "{live_conf}"
    );
    assert_eq!(on_manager("ls /etc/cloudflow/proxy/"), "cloudflow.conf");
    on_manager(
        "docker exec $(docker ps -q --filter label=com.docker.swarm.service.name=cloudflow-proxy) nginx -t -q",
    );
    assert!(get(&addr, &live, "/").unwrap().1.starts_with("version=1"));
    let web = web_status();
    assert_eq!(
        web["color"], "blue",
        "the state still names the colour served: {web}"
    );
    std::fs::write(&spec_path, spec(&reg, &img)).unwrap();

    // An in-place side service is updated in place: one service, new image.
    cf(&["deploy", "db", "--image", &img.web_v2]).ok();
    let db = on_manager(
        "docker service inspect default-db --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}'",
    );
    assert!(db.starts_with(&img.web_v2), "{db}");
    assert_eq!(running("default-db"), 1);
    assert_eq!(
        on_manager("docker service ls -q --filter label=cloudflow.service=db | wc -l"),
        "1"
    );
    // A variable removed from the spec goes from the running service (same image: before,
    // this said "no changes" and kept DB_MODE); a changed secret file is rotated in place
    // and the old secret removed.
    std::fs::write(
        &spec_path,
        spec(&reg, &img).replace("DB_MODE: primary, ", ""),
    )
    .unwrap();
    let db_secrets =
        || on_manager("docker secret ls -q --filter label=cloudflow.service=db | wc -l");
    let db_mounts = || {
        on_manager(
            "docker service inspect default-db --format '{{json .Spec.TaskTemplate.ContainerSpec.Secrets}}'",
        )
    };
    assert_eq!(db_secrets(), "1");
    let before = db_mounts();
    std::fs::write(d.join("db_password"), "pw-3c5e90-second").unwrap();
    cf(&["deploy", "db", "--image", &img.web_v2]).ok();
    let after = db_mounts();
    assert!(
        before.contains("\"Name\":\"db_password\"") && after.contains("\"Name\":\"db_password\""),
        "{after}"
    );
    assert_ne!(before, after, "the rotated secret is mounted");
    assert_eq!(db_secrets(), "1", "the old secret was removed");
    let db_env = on_manager(
        "docker service inspect default-db --format '{{json .Spec.TaskTemplate.ContainerSpec.Env}}'",
    );
    assert!(
        !db_env.contains("DB_MODE") && db_env.contains("KEEP=1"),
        "{db_env}"
    );
    std::fs::write(&spec_path, spec(&reg, &img)).unwrap();

    // --no-switch: the new colour waits at the preview host until `switch`.
    let waiting = cf(&["deploy", "web", "--image", &img.web_v2, "--no-switch"]).ok();
    assert!(
        waiting.stdout.contains("cloudflow switch web"),
        "{}",
        waiting.stdout
    );
    assert!(get(&addr, &live, "/").unwrap().1.starts_with("version=1"));
    assert!(
        get(&addr, &preview, "/")
            .unwrap()
            .1
            .starts_with("version=2")
    );
    cf(&["switch", "web"]).ok();
    assert!(get(&addr, &live, "/").unwrap().1.starts_with("version=2"));
    assert_eq!(running("default-web-green"), 3);

    let report = load.finish();
    eprintln!(
        "load through the proxy: {} requests, {} failed, versions seen {:?}",
        report.sent, report.failed, report.versions
    );
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.sent > 100);
    assert_eq!(
        report.versions,
        ["version=1", "version=2"],
        "versions in the order first served"
    );
    assert!(
        !report.versions.iter().any(|v| v == "version=bad"),
        "{:?}",
        report.versions
    );
    assert!(report.versions.contains(&"version=2".to_string()));

    // New replicas take traffic only once healthy: with an image HEALTHCHECK (the slow
    // starter answers 503 for 6 s), Swarm keeps a starting task out of DNS, and cloudflow
    // waits for it; a client looping through `scale +2` sees no failure.
    cf(&["deploy", "web", "--image", &img.web_slow_hc]).ok();
    let load = Load::start(&addr, &live);
    cf(&["scale", "web", "+2"]).ok();
    let report = load.finish();
    eprintln!(
        "load during scale +2 of a slow starter with a HEALTHCHECK: {} requests, {} failed",
        report.sent, report.failed
    );
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    // A new replica that fails its gate is removed again: the count stays where it was.
    cf(&["deploy", "web", "--image", &img.web_slow, "--scale", "3"]).ok();
    std::fs::write(
        &spec_path,
        spec(&reg, &img).replace("timeout: 15s", "timeout: 2s"),
    )
    .unwrap();
    let failed = cf(&["scale", "web", "+1"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("3 replica(s) kept") && failed.stderr.contains("answered 503"),
        "{}",
        failed.stderr
    );
    eventually(
        "the live colour back at 3 replicas",
        Duration::from_secs(30),
        || running("default-web-green") == 3,
    );
    let web = web_status();
    assert_eq!(
        (web["color"].as_str(), web["replicas"].as_u64()),
        (Some("green"), Some(3)),
        "{web}"
    );
    // A rollback whose colour fails its gate puts that colour back as it was. Blue (the
    // HEALTHCHECK image) goes live, green (the slow starter without one) is stopped; a
    // rollback to green with a 2 s gate fails, and green is stopped again.
    std::fs::write(&spec_path, spec(&reg, &img)).unwrap();
    cf(&["switch", "web"]).ok();
    cf(&["stop-old", "web"]).ok();
    assert_eq!(running("default-web-green"), 0);
    std::fs::write(
        &spec_path,
        spec(&reg, &img).replace("timeout: 15s", "timeout: 2s"),
    )
    .unwrap();
    let back = cf(&["rollback", "web"]);
    assert_eq!(back.code, 1, "{}", back.stderr);
    assert!(
        back.stderr.contains("default-web-green.") && back.stderr.contains("answered 503"),
        "{}",
        back.stderr
    );
    eventually("green stopped again", Duration::from_secs(30), || {
        running("default-web-green") == 0
    });
    let (status, body) = get(&addr, &preview, "/").unwrap();
    assert_eq!(
        status, 503,
        "the preview still says green was stopped: {body}"
    );
    assert!(
        get(&addr, &live, "/")
            .unwrap()
            .1
            .starts_with("version=slowhc")
    );
    std::fs::write(&spec_path, spec(&reg, &img)).unwrap();
    cf(&["scale", "web", "3"]).ok();

    // Environments.
    cf(&["env", "create", "pr-7", "--ttl", "1h"]).ok();
    cf(&["deploy", "web", "--image", &img.web_v2, "--env", "pr-7"]).ok();
    let (status, body) = get(&addr, &format!("web-pr-7.{DOMAIN}"), "/").unwrap();
    assert_eq!(
        (status, body.starts_with("version=2")),
        (200, true),
        "{body}"
    );
    let list = cf(&["env", "list", "-o", "json"]).ok().json();
    let envs = list["environments"].as_array().unwrap();
    let names: Vec<&str> = envs.iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "pr-7"]);
    let pr7 = &envs[1];
    assert!(
        pr7["created"].is_string() && pr7["expires"].is_string(),
        "{pr7}"
    );
    let svc = &pr7["services"][0];
    assert_eq!(
        (
            svc["name"].as_str(),
            svc["color"].as_str(),
            svc["image"].as_str(),
            svc["replicas"].as_u64()
        ),
        (
            Some("web"),
            Some("blue"),
            Some(img.web_v2.as_str()),
            Some(2)
        ),
        "{svc}"
    );
    assert_ne!(
        on_manager("docker secret ls -q --filter label=cloudflow.env=pr-7"),
        ""
    );
    cf(&["env", "destroy", "pr-7"]).ok();
    let left = on_manager(
        "docker service ls -q --filter label=cloudflow.env=pr-7; docker network ls -q --filter label=cloudflow.env=pr-7; \
         docker secret ls -q --filter label=cloudflow.env=pr-7",
    );
    assert_eq!(left, "", "left behind with cloudflow.env=pr-7");
    assert_eq!(
        get(&addr, &format!("web-pr-7.{DOMAIN}"), "/").unwrap().0,
        404
    );
    assert_eq!(cf(&["env", "destroy", "default"]).code, 2);

    cf(&["env", "create", "pr-8", "--ttl", "1s"]).ok();
    std::thread::sleep(Duration::from_secs(2));
    let late = cf(&["deploy", "web", "--env", "pr-8"]).ok();
    assert!(
        late.stderr.contains("environment pr-8 expired"),
        "{}",
        late.stderr
    );
    let gc = cf(&["env", "gc"]).ok();
    assert!(gc.stdout.contains("destroyed pr-8"), "{}", gc.stdout);
    assert_eq!(
        on_manager(
            "docker service ls -q --filter label=cloudflow.env=pr-8; docker network ls -q --filter label=cloudflow.env=pr-8"
        ),
        ""
    );

    // Declared vs live: `up` keeps the live colour, image and replicas.
    let again = cf(&["up", "--yes"]).ok();
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);
    let plan = cf(&["plan"]).ok();
    assert!(
        plan.stdout.contains("web: live replicas 3, spec 2"),
        "{}",
        plan.stdout
    );

    // No secret value in any output (plain, JSON, verbose, errors) or in the state's bytes.
    let mut state_bytes = Vec::new();
    let mut stack = vec![d.join(".cloudflow")];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap().path();
            if e.is_dir() {
                stack.push(e);
            } else {
                state_bytes.extend(std::fs::read(&e).unwrap());
            }
        }
    }
    assert!(!state_bytes.is_empty());
    let state_text = String::from_utf8_lossy(&state_bytes);
    for value in [
        "tok-4f1c9e-first",
        "tok-77b0d2-second",
        "pw-8d2a71-first",
        "pw-3c5e90-second",
    ] {
        assert!(!state_text.contains(value), "{value} is in the state");
        for out in outputs.borrow().iter() {
            assert!(!out.contains(value), "{value} was shown:\n{out}");
        }
    }

    cf(&["down", "--yes"]).ok();
    assert_eq!(
        docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=cloudflow.cluster={CLUSTER}")
        ]),
        ""
    );
}

/// Bare metal keeps its machines: `down` must remove what was deployed (services, networks,
/// the proxy and its configuration) before the host leaves the swarm.
#[test]
fn bare_metal_down_removes_services_networks_and_the_proxy() {
    let dir = workdir();
    let d = dir.path();
    let (key, public) = keypair(d, "id_ed25519");
    let hosts = Hosts::start("cfit-bmd", 1, &public);
    let reg = Registry::start();
    let img = build_images(&reg, IMAGE);
    let spec = format!(
        "name: cfit-bmd\nprovider:\n  bare_metal:\n    ssh_key: {key}\n    hosts:\n      - {{ address: {a}, role: manager }}\n\
         registry:\n  insecure: [\"{pull}\"]\n\
         proxy: {{ domain: bm.test, image: \"{proxy}\", port: 8088 }}\n\
         services:\n  web: {{ image: \"{v1}\", port: 8080, health: {{ path: /healthz }} }}\n",
        key = key.display(),
        a = hosts.addresses[0],
        pull = reg.pull,
        proxy = img.proxy,
        v1 = img.web_v1,
    );
    std::fs::write(d.join("cluster.yaml"), spec).unwrap();
    // The swarm only; then `deploy` on its own starts the proxy it needs.
    let up = cloudflow(
        d,
        &["-f", "cluster.yaml", "up", "--yes", "--until", "cluster"],
    )
    .ok();
    assert!(!up.stderr.contains("phase proxy"), "{}", up.stderr);
    cloudflow(d, &["-f", "cluster.yaml", "deploy", "web"]).ok();
    let again = cloudflow(d, &["-f", "cluster.yaml", "up", "--yes"]).ok();
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);
    let addr = format!("{}:8088", hosts.addresses[0]);
    let (status, body) = get(&addr, "web-default.bm.test", "/").unwrap();
    assert_eq!(
        (status, body.starts_with("version=1")),
        (200, true),
        "{body}"
    );
    cloudflow(d, &["-f", "cluster.yaml", "env", "create", "qa"]).ok();

    let plan = cloudflow(d, &["-f", "cluster.yaml", "down", "--yes"]).ok();
    assert!(
        plan.stdout.contains("remove deployed services")
            || plan.stderr.contains("remove deployed services"),
        "{}\n{}",
        plan.stdout,
        plan.stderr
    );
    assert_eq!(
        hosts.exec(0, "docker info --format '{{.Swarm.LocalNodeState}}'"),
        "inactive"
    );
    assert_eq!(
        hosts.exec(0, "docker ps -a --format '{{.Names}} {{.Status}}'"),
        "",
        "no task container left"
    );
    assert_eq!(
        hosts.exec(0, "ls /etc/cloudflow/proxy/ 2>/dev/null | wc -l"),
        "0",
        "proxy configuration removed"
    );
    assert!(
        get(&addr, "web-default.bm.test", "/").is_err(),
        "nothing listens on the proxy port"
    );
}
