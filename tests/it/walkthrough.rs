//! The README's walkthrough, run exactly as written: every `$ ` line of the console block after
//! `<!-- walkthrough -->` runs in one bash session (from a directory holding `examples/`), and
//! its stdout must match the lines under it. In expected lines `[..]` matches any text; a line
//! `...` matches any number of lines. `CLOUDFLOW_WALKTHROUGH_PRINT=1` prints what ran.

use std::path::Path;
use std::process::Command;

use crate::support::*;

struct Step {
    command: String,
    expected: Vec<String>,
}

fn steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("<!-- walkthrough -->")
        .expect("README has a <!-- walkthrough --> block");
    let rest = &readme[start..];
    let open = rest.find("```console\n").expect("a console block") + "```console\n".len();
    let body = &rest[open..];
    let body = &body[..body.find("\n```").expect("the block ends")];
    let mut out: Vec<Step> = Vec::new();
    for line in body.lines() {
        if let Some(c) = line.strip_prefix("$ ") {
            out.push(Step {
                command: c.to_string(),
                expected: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.expected.push(line.to_string());
        }
    }
    out
}

fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[..]").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let mut rest = line;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else {
                return false;
            };
            rest = &rest[at + p.len()..];
        }
    }
    true
}

fn lines_match(expected: &[String], actual: &[&str]) -> bool {
    match expected.first() {
        None => actual.is_empty(),
        Some(e) if e == "..." => {
            (0..=actual.len()).any(|skip| lines_match(&expected[1..], &actual[skip..]))
        }
        Some(e) => {
            !actual.is_empty()
                && line_matches(e, actual[0])
                && lines_match(&expected[1..], &actual[1..])
        }
    }
}

struct DemoGuard(std::path::PathBuf);
impl Drop for DemoGuard {
    fn drop(&mut self) {
        for id in docker_ok(&["ps", "-aq", "--filter", "label=cloudflow.cluster=demo"]).lines() {
            docker(&["rm", "-f", id]);
        }
        docker(&["network", "rm", "cloudflow-demo"]);
        let _ = Command::new("bash")
            .arg("examples/demo/stop-registry.sh")
            .current_dir(&self.0)
            .env("XDG_CACHE_HOME", self.0.join("cache"))
            .status();
    }
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    host_image();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let steps = steps(&readme);
    assert!(steps.len() >= 10, "the walkthrough has its steps");
    let dir = workdir();
    let d = dir.path();
    std::os::unix::fs::symlink(root.join("examples"), d.join("examples")).unwrap();
    let _guard = DemoGuard(d.to_path_buf());
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut script = String::new();
    for (i, s) in steps.iter().enumerate() {
        script.push_str(&format!(
            "echo '@@@ {i}'\n{}\necho \"@@@ rc $?\"\n",
            s.command
        ));
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_cloudflow")).parent().unwrap();
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(d)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("XDG_CACHE_HOME", d.join("cache"))
        .env("DEMO_REGISTRY_PORT", port.to_string())
        .env_remove("CLOUDFLOW_FILE")
        .env_remove("CLOUDFLOW_STATE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if std::env::var_os("CLOUDFLOW_WALKTHROUGH_PRINT").is_some() {
        eprintln!("{stdout}");
    }
    let chunks: Vec<&str> = stdout.split("@@@ ").skip(1).collect();
    for (i, s) in steps.iter().enumerate() {
        let chunk = chunks
            .iter()
            .find(|c| c.starts_with(&format!("{i}\n")))
            .unwrap_or_else(|| panic!("step {i} `{}` did not run:\n{stdout}\n{stderr}", s.command));
        let body = &chunk[chunk.find('\n').unwrap() + 1..];
        let rc = chunks
            .iter()
            .skip_while(|c| !c.starts_with(&format!("{i}\n")))
            .nth(1)
            .and_then(|c| c.strip_prefix("rc "))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        assert_eq!(
            rc, "0",
            "step {i} `{}` failed:\n{body}\nstderr:\n{stderr}",
            s.command
        );
        let actual: Vec<&str> = body.lines().collect();
        assert!(
            lines_match(&s.expected, &actual),
            "step {i} `{}`: the README says\n{}\nbut it printed\n{}",
            s.command,
            s.expected.join("\n"),
            body
        );
    }
}

#[test]
fn walkthrough_patterns_match_as_documented() {
    assert!(line_matches(
        "up: cluster demo: [..] applied in [..]s",
        "up: cluster demo: 9 change(s) applied in 41.2s"
    ));
    assert!(!line_matches("version=2 [..]", "version=1 host=a"));
    let exp = vec!["a".to_string(), "...".to_string(), "z [..]".to_string()];
    assert!(lines_match(&exp, &["a", "b", "c", "z 1"]));
    assert!(lines_match(&exp, &["a", "z 1"]));
    assert!(!lines_match(&exp, &["a", "b"]));
}
