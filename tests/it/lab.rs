//! The README demo: `examples/lab.yaml` on a machine with only Docker.

use crate::support::*;

fn labelled(kind: &str) -> Vec<String> {
    let filter = "label=cloudflow.cluster=lab";
    let out = match kind {
        "container" => docker_ok(&[
            "ps",
            "-a",
            "--filter",
            filter,
            "--format",
            "{{.Names}} {{.Labels}}",
        ]),
        _ => docker_ok(&[
            "network",
            "ls",
            "--filter",
            filter,
            "--format",
            "{{.Name}} {{.Labels}}",
        ]),
    };
    out.lines().map(str::to_string).collect()
}

#[test]
fn lab_example_forms_a_labelled_swarm_and_down_leaves_nothing() {
    host_image();
    let dir = workdir();
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab.yaml");
    let spec = spec.to_str().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let d = dir.path();

    let up = cloudflow(
        d,
        &["-f", spec, "--state", state, "up", "--yes", "--timings"],
    )
    .ok();
    assert!(up.stdout.contains("change(s) applied"));
    // Where the time went: each phase, each host, the slowest steps (the package install).
    for want in [
        "phase provision",
        "phase bootstrap",
        "phase cluster",
        "host cf-lab-1",
        "slowest steps:",
    ] {
        assert!(up.stdout.contains(want), "{want}: {}", up.stdout);
    }
    assert!(
        up.stdout.contains("bootstrap  install-docker"),
        "{}",
        up.stdout
    );
    let noop = cloudflow(
        d,
        &[
            "-f",
            spec,
            "--state",
            state,
            "-o",
            "json",
            "up",
            "--yes",
            "--timings",
        ],
    )
    .ok()
    .json();
    let steps = noop["timings"]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "one facts read per host: {noop}");
    assert!(
        steps
            .iter()
            .all(|s| s["step"] == "facts" && s["seconds"].as_f64().unwrap() > 0.0)
    );
    let plain = cloudflow(
        d,
        &["-f", spec, "--state", state, "-o", "json", "up", "--yes"],
    )
    .ok()
    .json();
    assert!(plain.get("timings").is_none(), "{plain}");
    let status = cloudflow(d, &["status", "-f", spec, "--state", state, "-o", "json"])
        .ok()
        .json();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["status"] == "ready"), "{status}");
    assert_eq!(nodes.iter().filter(|n| n["role"] == "manager").count(), 1);

    let containers = labelled("container");
    assert_eq!(containers.len(), 3, "{containers:?}");
    assert_eq!(
        containers
            .iter()
            .filter(|c| c.contains("cloudflow.role=manager"))
            .count(),
        1
    );
    assert_eq!(
        containers
            .iter()
            .filter(|c| c.contains("cloudflow.role=worker"))
            .count(),
        2
    );
    assert_eq!(labelled("network").len(), 1);

    assert!(
        cloudflow(d, &["-f", spec, "--state", state, "up", "--yes"])
            .ok()
            .stdout
            .contains("no changes")
    );

    cloudflow(d, &["-f", spec, "--state", state, "down", "--yes"]).ok();
    assert!(labelled("container").is_empty());
    assert!(labelled("network").is_empty());
}
