//! The command-line contract: help, exit codes, JSON on stdout, environment variables.

use crate::support::*;

#[test]
fn every_subcommand_has_help_with_an_example() {
    let dir = workdir();
    for sub in ["validate", "plan", "up", "status", "down"] {
        let run = cloudflow(dir.path(), &[sub, "--help"]).ok();
        assert!(
            run.stdout.contains("Example"),
            "{sub} --help: {}",
            run.stdout
        );
    }
    assert!(
        cloudflow(dir.path(), &["--help"])
            .ok()
            .stdout
            .contains("Exit codes")
    );
}

#[test]
fn bad_usage_exits_2() {
    let dir = workdir();
    assert_eq!(cloudflow(dir.path(), &["frobnicate"]).code, 2);
    assert_eq!(cloudflow(dir.path(), &["up", "--until", "never"]).code, 2);
    assert_eq!(cloudflow(dir.path(), &["-o", "yaml", "status"]).code, 2);
}

#[test]
fn validate_json_and_global_flags_from_the_environment() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("lab.yaml"),
        "name: cfit-cli\nprovider:\n  lab: { hosts: 2 }\n",
    )
    .unwrap();
    let run = cloudflow_env(
        dir.path(),
        &["validate"],
        &[("CLOUDFLOW_FILE", "lab.yaml"), ("CLOUDFLOW_OUTPUT", "json")],
    );
    let doc = run.ok().json();
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["hosts"], 2);
    // -o after the subcommand; the JSON error document on failure.
    let bad = cloudflow(
        dir.path(),
        &["validate", "-o", "json", "-f", "missing.yaml"],
    );
    assert_eq!(bad.code, 2);
    assert_eq!(bad.json()["error"]["kind"], "spec");
}

#[test]
fn up_without_yes_and_without_a_terminal_refuses_and_until_provision_plans_no_ssh() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("cloudflow.yaml"),
        "name: cfit-noyes\nprovider:\n  lab: { hosts: 2 }\n",
    )
    .unwrap();
    let run = cloudflow(dir.path(), &["up"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("without --yes"));
    assert!(
        docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            "label=cloudflow.cluster=cfit-noyes"
        ])
        .is_empty()
    );

    let plan = cloudflow(dir.path(), &["plan", "--until", "provision", "-o", "json"])
        .ok()
        .json();
    let actions = plan["plan"]["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 3, "network and two hosts: {plan}");
    assert!(actions.iter().all(|a| a["phase"] == "provision"));
}

/// Every file in examples/ parses and validates (the lab one also runs, in `lab`).
#[test]
fn every_example_validates() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let run = cloudflow(
            root,
            &["validate", "-f", path.to_str().unwrap(), "-o", "json"],
        )
        .ok();
        assert_eq!(run.json()["valid"], true, "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 2);
}
