//! Three Debian hosts that cloudflow did not create: `up` forms a swarm with registry settings
//! and login, a second `up` changes nothing, `down` gives the hosts back as they were.

use serde_json::Value;

use crate::support::*;

const PASSWORD: &str = "cfit-s3cret-Pw";

fn daemon_json(hosts: &Hosts, i: usize) -> Option<Value> {
    let text = hosts.exec(i, "cat /etc/docker/daemon.json 2>/dev/null || true");
    (!text.is_empty()).then(|| serde_json::from_str(&text).expect("daemon.json is JSON"))
}

#[test]
fn bare_metal_swarm_with_registry_up_is_idempotent_and_down_restores_the_hosts() {
    let dir = workdir();
    let (key, public) = keypair(dir.path(), "id_ed25519");
    let mut hosts = Hosts::start("cfit-bm", 3, &public);
    let registry = start_registry(&mut hosts, "ci", PASSWORD, &public);
    // A setting the owner made before cloudflow came: it must survive `up` and `down`.
    hosts.exec(
        1,
        r#"mkdir -p /etc/docker && echo '{"log-level": "warn"}' > /etc/docker/daemon.json"#,
    );

    let spec = format!(
        "name: cfit-bm\nprovider:\n  bare_metal:\n    user: root\n    ssh_key: {key}\n    hosts:\n\
         \x20     - {{ address: {a0}, role: manager }}\n      - {{ address: {a1} }}\n      - {{ address: {a2} }}\n\
         registry:\n  insecure: [\"{registry}\"]\n  mirrors: [\"http://{registry}\"]\n\
         \x20 auth: {{ server: \"{registry}\", username: ci, password_env: CFIT_REGISTRY_PASSWORD }}\n",
        key = key.display(),
        a0 = hosts.addresses[0],
        a1 = hosts.addresses[1],
        a2 = hosts.addresses[2],
    );
    std::fs::write(dir.path().join("cluster.yaml"), spec).unwrap();
    let env = [("CFIT_REGISTRY_PASSWORD", PASSWORD)];
    let d = dir.path();

    let started = std::time::Instant::now();
    let up = cloudflow_env(d, &["-f", "cluster.yaml", "up", "--yes"], &env).ok();
    eprintln!(
        "figure: first up, 3 bare-metal hosts: {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(up.stdout.contains("change(s) applied"), "{}", up.stdout);

    // All three Ready, with name, address, role and status.
    let status = cloudflow(d, &["-f", "cluster.yaml", "status", "-o", "json"])
        .ok()
        .json();
    assert_eq!(status["cluster"], "cfit-bm");
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["address"], hosts.addresses[i].as_str());
        assert_eq!(n["name"], hosts.addresses[i].as_str());
        assert_eq!(n["status"], "ready", "{n}");
        assert_eq!(n["role"], if i == 0 { "manager" } else { "worker" });
    }
    assert_eq!(hosts.exec(0, "docker node ls -q | wc -l"), "3");

    // Registry settings merged on every host; the owner's key kept.
    for i in 0..3 {
        let dj = daemon_json(&hosts, i).expect("daemon.json written");
        assert_eq!(
            dj["insecure-registries"],
            serde_json::json!([registry]),
            "host {i}: {dj}"
        );
        assert_eq!(
            dj["registry-mirrors"],
            serde_json::json!([format!("http://{registry}")])
        );
        assert!(
            hosts
                .exec(i, "docker info")
                .contains(&format!("http://{registry}/")),
            "dockerd runs with the mirror"
        );
    }
    assert_eq!(daemon_json(&hosts, 1).unwrap()["log-level"], "warn");

    // The login is real: push from the manager, pull on a worker, both through auth.
    let image = format!("{registry}/cfit/tiny:1");
    hosts.exec(0, &format!("tar -C /etc -cf - hostname | docker import - {image} >/dev/null && docker push {image} >/dev/null"));
    hosts.exec(2, &format!("docker pull {image} >/dev/null"));
    assert!(
        hosts
            .exec(
                2,
                &format!("docker image inspect {image} >/dev/null && echo present")
            )
            .contains("present")
    );

    // A second `up` changes nothing and says so, in about one round trip per host.
    let started = std::time::Instant::now();
    let again = cloudflow_env(d, &["-f", "cluster.yaml", "up", "--yes"], &env).ok();
    eprintln!(
        "figure: no-op up, 3 bare-metal hosts: {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);
    let json = cloudflow_env(
        d,
        &["-f", "cluster.yaml", "up", "--yes", "-o", "json"],
        &env,
    )
    .ok()
    .json();
    assert_eq!(json["changed"], false);

    // A changed host key is refused with both fingerprints, and nothing runs on that host.
    hosts.exec(2, "mkdir -p /root/keys && cp -a /etc/ssh/ssh_host_* /root/keys/ && rm /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && kill -HUP 1");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let refused = cloudflow_env(d, &["-f", "cluster.yaml", "up", "--yes"], &env);
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("HOST KEY CHANGED"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        refused.stderr.matches("SHA256:").count(),
        2,
        "both fingerprints: {}",
        refused.stderr
    );
    assert!(refused.stderr.contains(&hosts.addresses[2]));
    hosts.exec(2, "cp -a /root/keys/* /etc/ssh/ && kill -HUP 1");
    std::thread::sleep(std::time::Duration::from_millis(500));

    // Secrets never appear in output or state.
    let state = std::fs::read(d.join(".cloudflow/state.redb")).unwrap();
    assert!(
        !state
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes()),
        "password in the state"
    );
    for text in [
        &up.stdout,
        &up.stderr,
        &again.stdout,
        &again.stderr,
        &refused.stderr,
    ] {
        assert!(!text.contains(PASSWORD));
    }

    // Down: nodes leave, cloudflow's settings come out, Docker stays.
    let down = cloudflow(d, &["-f", "cluster.yaml", "down", "--yes"]).ok();
    assert!(down.stdout.contains("nothing left"), "{}", down.stdout);
    for i in 0..3 {
        assert_eq!(
            hosts.exec(i, "docker info --format '{{.Swarm.LocalNodeState}}'"),
            "inactive",
            "host {i}"
        );
        assert!(
            !hosts
                .exec(i, "cat /root/.docker/config.json 2>/dev/null || true")
                .contains(&registry)
        );
        assert!(
            !hosts.exec(i, "command -v docker").is_empty(),
            "docker stays installed"
        );
    }
    assert_eq!(
        daemon_json(&hosts, 0),
        None,
        "cloudflow created it, cloudflow removed it"
    );
    assert_eq!(
        daemon_json(&hosts, 1),
        Some(serde_json::json!({"log-level": "warn"}))
    );
    // Nothing left to do.
    assert!(
        cloudflow(d, &["-f", "cluster.yaml", "down", "--yes"])
            .ok()
            .stdout
            .contains("no changes")
    );
}
