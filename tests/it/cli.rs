//! The command-line contract: help, exit codes, JSON on stdout, environment variables.

use crate::support::*;

#[test]
fn every_subcommand_has_help_with_an_example() {
    let dir = workdir();
    for sub in [
        "validate",
        "plan",
        "up",
        "status",
        "down",
        "init",
        "schema",
        "completions",
        "man",
        "lock",
        "state",
        "certs",
        "logs",
        "ps",
    ] {
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

/// CONTRACT: boolean variables take 1/0, true/false, yes/no; subcommand flags have variables too.
#[test]
fn boolean_and_subcommand_flags_from_the_environment() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("cloudflow.yaml"),
        "name: cfit-envbool\nprovider:\n  lab: { hosts: 1 }\n",
    )
    .unwrap();
    // Every spelling of yes is a yes (before, clap refused `1` and `yes` with exit 2): `up
    // --until provision` makes the lab host, `down` removes it again.
    host_image();
    let hosts = || {
        docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            "label=cloudflow.cluster=cfit-envbool",
        ])
        .lines()
        .count()
    };
    for (yes, no) in [("1", "0"), ("yes", "no"), ("true", "false"), ("on", "off")] {
        let run = cloudflow_env(
            dir.path(),
            &["up", "--until", "provision"],
            &[("CLOUDFLOW_YES", yes)],
        );
        assert_eq!(run.code, 0, "CLOUDFLOW_YES={yes}: {}", run.stderr);
        assert_eq!(hosts(), 1, "CLOUDFLOW_YES={yes} made the host");
        // ... and a no is a no: `down` shows its plan, then refuses without a terminal.
        let run = cloudflow_env(dir.path(), &["down"], &[("CLOUDFLOW_YES", no)]);
        assert_eq!(run.code, 2, "CLOUDFLOW_YES={no}: {}", run.stderr);
        assert!(
            run.stderr.contains("without --yes"),
            "CLOUDFLOW_YES={no}: {}",
            run.stderr
        );
        assert_eq!(hosts(), 1, "CLOUDFLOW_YES={no} removed nothing");
        let run = cloudflow_env(dir.path(), &["down"], &[("CLOUDFLOW_YES", yes)]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(hosts(), 0, "CLOUDFLOW_YES={yes} removed the host");
    }
    // `env list` accepts --yes harmlessly; `nodes scale` takes --until.
    let run = cloudflow(dir.path(), &["env", "list", "--yes", "-o", "json"]).ok();
    assert!(run.json()["environments"].is_array());
    let help = cloudflow(dir.path(), &["nodes", "scale", "--help"]).ok();
    assert!(help.stdout.contains("--until"), "{}", help.stdout);
}

/// CONTRACT: with -o json, stdout is one JSON document, usage errors included.
#[test]
fn usage_errors_are_json_under_output_json() {
    let dir = workdir();
    for args in [
        &["-o", "json", "frobnicate"][..],
        &["up", "--until", "never", "-o", "json"],
        &["--output=json", "scale"],
    ] {
        let run = cloudflow(dir.path(), args);
        assert_eq!(run.code, 2, "{args:?}");
        let doc = run.json();
        assert_eq!(doc["error"]["kind"], "usage", "{args:?}: {doc}");
        assert!(!doc["error"]["message"].as_str().unwrap().is_empty());
    }
    let run = cloudflow_env(dir.path(), &["frobnicate"], &[("CLOUDFLOW_OUTPUT", "json")]);
    assert_eq!(run.json()["error"]["exit_code"], 2);
    // Text mode keeps clap's own message on stderr and nothing on stdout.
    let run = cloudflow(dir.path(), &["frobnicate"]);
    assert!(run.stdout.is_empty() && run.stderr.contains("frobnicate"));
}

#[test]
fn init_writes_a_spec_validate_accepts_for_every_provider_and_never_overwrites() {
    let dir = workdir();
    let d = dir.path();
    for provider in ["lab", "bare-metal", "aws", "gke"] {
        let file = format!("{provider}.yaml");
        let run = cloudflow(
            d,
            &[
                "-f",
                &file,
                "init",
                "--provider",
                provider,
                "--name",
                "starter",
            ],
        )
        .ok();
        assert!(
            run.stdout.contains(&format!("provider {provider}")),
            "{}",
            run.stdout
        );
        let text = std::fs::read_to_string(d.join(&file)).unwrap();
        assert!(
            text.lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
                > 5,
            "commented: {text}"
        );
        let v = cloudflow(d, &["-f", &file, "-o", "json", "validate"])
            .ok()
            .json();
        assert_eq!(
            (v["valid"].as_bool(), v["provider"].as_str()),
            (Some(true), Some(provider)),
            "{v}"
        );
        // A second init refuses, exit 2, and leaves the file alone.
        std::fs::write(d.join(&file), "name: mine\n").unwrap();
        let again = cloudflow(d, &["-f", &file, "init", "--provider", provider]);
        assert_eq!(again.code, 2, "{}", again.stderr);
        assert!(
            again.stderr.contains("never overwrites"),
            "{}",
            again.stderr
        );
        assert_eq!(
            std::fs::read_to_string(d.join(&file)).unwrap(),
            "name: mine\n"
        );
    }
    assert_eq!(cloudflow(d, &["init", "--name", "Bad_Name"]).code, 2);
}

#[test]
fn schema_accepts_every_example_and_refuses_a_typo_like_validate() {
    let dir = workdir();
    let d = dir.path();
    let schema = cloudflow(d, &["schema"]).ok();
    std::fs::write(d.join("schema.json"), &schema.stdout).unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::fs::write(
        d.join("typo.yaml"),
        "name: typo\nprovider:\n  lab: { hosts: 2, hostz: 3 }\n",
    )
    .unwrap();
    // An independent validator: Python's jsonschema, on the YAML as PyYAML reads it.
    let script = r#"
import glob, json, sys, yaml, jsonschema
schema = json.load(open("schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
files = sorted(glob.glob(sys.argv[1] + "/*.yaml"))
assert len(files) >= 5, files
for f in files:
    jsonschema.validate(yaml.safe_load(open(f)), schema)
    print("valid", f)
try:
    jsonschema.validate(yaml.safe_load(open("typo.yaml")), schema)
    print("typo accepted")
except jsonschema.ValidationError as e:
    print("typo refused:", e.message)
"#;
    let out = std::process::Command::new("python3")
        .current_dir(d)
        .args(["-c", script, examples.to_str().unwrap()])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("valid") && stdout.contains("lab.yaml"),
        "{stdout}"
    );
    assert!(
        stdout.contains("typo refused: Additional properties are not allowed ('hostz'"),
        "{stdout}"
    );
    // `validate` refuses the same typo, pointing at it.
    let v = cloudflow(d, &["-f", "typo.yaml", "validate"]);
    assert_eq!(v.code, 2);
    assert!(
        v.stderr.contains("hostz") && v.stderr.contains("typo.yaml:3"),
        "{}",
        v.stderr
    );
}

#[test]
fn completions_man_page_and_version_are_generated() {
    let dir = workdir();
    let d = dir.path();
    let bash = cloudflow(d, &["completions", "bash"]).ok();
    assert!(
        bash.stdout.contains("_cloudflow()") && bash.stdout.contains("stop-old"),
        "{}",
        bash.stdout
    );
    // bash itself accepts the script and registers the completion.
    std::fs::write(d.join("c.bash"), &bash.stdout).unwrap();
    let out = std::process::Command::new("bash")
        .current_dir(d)
        .args(["-c", "source ./c.bash && complete -p cloudflow"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("_cloudflow"),
        "{out:?}"
    );
    for shell in ["zsh", "fish"] {
        let run = cloudflow(d, &["completions", shell]).ok();
        assert!(run.stdout.contains("deploy"), "{shell}: {}", run.stdout);
    }
    let man = cloudflow(d, &["man"]).ok();
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH cloudflow"),
        "{}",
        man.stdout
    );
    assert!(
        man.stdout.contains("lock\\-timeout") || man.stdout.contains("lock-timeout"),
        "{}",
        man.stdout
    );
    let v = cloudflow(d, &["--version"]).ok();
    assert!(
        v.stdout.starts_with("cloudflow 0.1.0 (commit "),
        "{}",
        v.stdout
    );
}
