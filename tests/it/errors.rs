//! Bad input gives one clear error each; nothing half-written in the state.

use crate::support::*;

fn write(dir: &std::path::Path, text: &str) {
    std::fs::write(dir.join("cluster.yaml"), text).unwrap();
}

#[test]
fn spec_errors_exit_2_with_file_line_column_and_touch_nothing() {
    let cases = [
        (
            "name: x\nprovider:\n  lab: { hosts: three }\n",
            "cluster.yaml:3:17: wrong type: expected a whole number",
        ),
        (
            "name: x\nprovider:\n  lab: { hosts: 3 }\nregistri: {}\n",
            "cluster.yaml:4:1: unknown field `registri`",
        ),
        (
            "name: x\nprovider:\n  bare_metal:\n    ssh_key: k\n    hosts:\n      - { address: 10.0.0.6 }\n",
            "cluster.yaml:6:7: no manager",
        ),
    ];
    for (text, expected) in cases {
        for cmd in [&["validate"][..], &["up", "--yes"][..], &["plan"][..]] {
            let dir = workdir();
            write(dir.path(), text);
            let mut args = vec!["-f", "cluster.yaml"];
            args.extend_from_slice(cmd);
            let run = cloudflow(dir.path(), &args);
            assert_eq!(run.code, 2, "{cmd:?}: {}", run.stderr);
            assert!(
                run.stderr.contains(expected),
                "{cmd:?} expected {expected:?} in:\n{}",
                run.stderr
            );
            assert!(
                !dir.path().join(".cloudflow").exists(),
                "a spec error must not create state"
            );
        }
    }
}

#[test]
fn missing_spec_file_is_a_usage_error() {
    let dir = workdir();
    let run = cloudflow(dir.path(), &["validate"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("cannot read spec cloudflow.yaml"),
        "{}",
        run.stderr
    );
}

#[test]
fn unreachable_host_fails_clearly_and_records_nothing() {
    let dir = workdir();
    let (key, _) = keypair(dir.path(), "id");
    // Loopback, a port nothing listens on.
    write(
        dir.path(),
        &format!(
            "name: cfit-unreach\nprovider:\n  bare_metal:\n    ssh_key: {}\n    port: 1\n    hosts:\n      - {{ address: 127.0.0.1, role: manager }}\n",
            key.display()
        ),
    );
    let run = cloudflow(dir.path(), &["-f", "cluster.yaml", "up", "--yes"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("host 127.0.0.1 (127.0.0.1:1) is unreachable"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("error:").count(),
        1,
        "one error: {}",
        run.stderr
    );
    let down = cloudflow(dir.path(), &["-f", "cluster.yaml", "down", "--yes"]).ok();
    assert!(
        down.stdout.contains("no changes"),
        "nothing was recorded: {}",
        down.stdout
    );
}

#[test]
fn wrong_ssh_key_and_strict_unknown_host_are_refused() {
    let dir = workdir();
    let (_, good_public) = keypair(dir.path(), "good");
    let (wrong, _) = keypair(dir.path(), "wrong");
    let (good, _) = (dir.path().join("good"), ());
    let hosts = Hosts::start("cfit-keys", 1, &good_public);
    let spec = |key: &std::path::Path, policy: &str| {
        format!(
            "name: cfit-keys\nprovider:\n  bare_metal:\n    ssh_key: {}\n    host_key_policy: {policy}\n    hosts:\n      - {{ address: {}, role: manager }}\n",
            key.display(),
            hosts.addresses[0]
        )
    };

    write(dir.path(), &spec(&wrong, "accept-new"));
    let run = cloudflow(dir.path(), &["-f", "cluster.yaml", "plan"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!(
            "SSH key {} was refused for user root",
            wrong.display()
        )),
        "{}",
        run.stderr
    );

    // strict: the host is in no known_hosts (HOME points at an empty directory).
    write(dir.path(), &spec(&good, "strict"));
    let home = dir.path().to_str().unwrap();
    let run = cloudflow_env(
        dir.path(),
        &["-f", "cluster.yaml", "plan"],
        &[("HOME", home)],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("is not in known_hosts and host_key_policy is strict"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("SHA256:"));

    // With the right key and accept-new, the same host plans fine (and plan records nothing).
    write(dir.path(), &spec(&good, "accept-new"));
    let plan = cloudflow(dir.path(), &["-f", "cluster.yaml", "plan", "-o", "json"])
        .ok()
        .json();
    let steps: Vec<&str> = plan["plan"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["install-docker", "start-docker", "swarm-init"]);
}
