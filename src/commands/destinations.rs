//! Property test: a spec string that reaches a shell, a configuration file or a template is
//! either refused by the spec's grammar, or arrives byte for byte in every destination, read
//! back by that destination's own parser where this machine has it:
//! - docker.env: sourced by a real `sh` exactly as `start-docker.sh` does (`set -a; . file`);
//! - apt configuration: read back by the real `apt-config`;
//! - daemon.json: a JSON parser; cloud-init user-data: a YAML parser, then base64;
//! - systemd drop-in: no systemd runs here, so by systemd's documented rules for
//!   `Environment=` (specifiers first, then one double-quoted word with C escapes);
//! - nginx configuration: by nginx's tokenizer rules (`ngx_conf_read_token`: whitespace,
//!   `;`, `{`, `}`, quotes, `#`, `\`), and no `$` (a variable) in what came from the spec.
//!
//! Each accepted value must come back equal; nothing in it may run (a value that ran a
//! command in `sh` would not come back equal, and a canary file checks it too).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;

use super::*;
use crate::deploy::{self, Probe};
use crate::facts::Init;
use crate::render::Renderer;
use crate::spec::{self, Spec, Strategy as Routing};
use crate::state::{ClusterState, Color, ColorRecord, EnvRecord, ServiceRecord};

/// The fields under test, and where a value goes in the spec.
#[derive(Debug, Clone, Copy)]
enum Field {
    HttpProxy,
    HttpsProxy,
    NoProxy,
    Domain,
    HealthPath,
    Image,
    Mirror,
    Insecure,
}

const FIELDS: [Field; 8] = [
    Field::HttpProxy,
    Field::HttpsProxy,
    Field::NoProxy,
    Field::Domain,
    Field::HealthPath,
    Field::Image,
    Field::Mirror,
    Field::Insecure,
];

fn spec_text(field: Field, value: &str) -> String {
    let v = serde_json::to_string(value).unwrap();
    let pick = |f: Field, default: &str| {
        if std::mem::discriminant(&f) == std::mem::discriminant(&field) {
            v.clone()
        } else {
            default.to_string()
        }
    };
    format!(
        "name: prop\nprovider:\n  lab: {{ hosts: 1 }}\nregistry:\n  mirrors: [{mirror}]\n  insecure: [{insecure}]\n\
         proxy:\n  http_proxy: {http}\n  https_proxy: {https}\n  no_proxy: [{no}, \"localhost\"]\n  domain: {domain}\n  image: \"reg:5000/nginx:1\"\n\
         services:\n  web: {{ image: {image}, port: 8080, health: {{ path: {path} }} }}\n",
        mirror = pick(Field::Mirror, "\"http://mirror:5000\""),
        insecure = pick(Field::Insecure, "\"reg:5000\""),
        http = pick(Field::HttpProxy, "\"http://proxy:3128\""),
        https = pick(Field::HttpsProxy, "\"http://proxy:3129\""),
        no = pick(Field::NoProxy, "\"10.0.0.0/8\""),
        domain = pick(Field::Domain, "\"demo.test\""),
        image = pick(Field::Image, "\"reg:5000/web:1\""),
        path = pick(Field::HealthPath, "\"/healthz\""),
    )
}

/// Characters that mean something to one destination or another, plus URL-ish ones.
const NASTY: &[&str] = &[
    "$(touch /tmp/cloudflow-canary)",
    "`id`",
    "$HOME",
    "${X}",
    "'",
    "\"",
    "\\",
    ";",
    "{",
    "}",
    "#",
    "\n",
    "\r",
    " ",
    "\t",
    "%",
    "%%",
    "%n",
    "%40",
    "@",
    ":",
    "/",
    "?",
    "&",
    "!",
    "*",
    "(",
    ")",
    "=",
    ",",
    "[",
    "]",
    "\0",
    "é",
    "\u{85}",
    "//",
    "/*",
    "-",
    ".",
    "_",
    "~",
    "+",
];

fn nasty() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(NASTY).prop_map(String::from),
            "[a-z0-9]{1,6}",
        ],
        0..6,
    )
    .prop_map(|parts| parts.concat())
}

/// Pieces a grammar may still allow somewhere (URL sub-delimiters, percent-encodings) — the
/// ones each destination has to escape.
const LEGALISH: &[&str] = &[
    "$", "'", ";", "(", ")", "&", "!", "*", "+", ",", "=", "%41", "%2e", "%25", "-", ".", "_", "~",
    ":", "@", "/", "?",
];

fn legalish() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(LEGALISH).prop_map(String::from),
            "[a-z0-9]{1,6}",
        ],
        1..6,
    )
    .prop_map(|parts| parts.concat())
}

/// Userinfo pieces: sub-delimiters and percent-encodings a password may hold.
fn userinfo() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(&LEGALISH[..18]).prop_map(String::from),
            "[A-Za-z0-9]{1,6}",
        ],
        1..6,
    )
    .prop_map(|parts| parts.concat())
}

/// A value for `field`: mostly shaped like the field (so a fair share passes its grammar and
/// must then arrive intact), sometimes arbitrary or nasty (and must then be refused or arrive
/// intact all the same).
fn value_for(field: Field) -> BoxedStrategy<String> {
    let shaped: BoxedStrategy<String> = match field {
        Field::HttpProxy | Field::HttpsProxy => prop_oneof![
            (userinfo(), userinfo()).prop_map(|(u, p)| format!("http://{u}:{p}@proxy.corp:3128")),
            userinfo().prop_map(|p| format!("https://ci:{p}@10.0.0.1:8080/")),
            (nasty(), nasty()).prop_map(|(u, p)| format!("http://{u}:{p}@proxy.corp:3128")),
        ]
        .boxed(),
        Field::NoProxy => prop_oneof![
            "[a-z0-9-]{1,8}(\\.[a-z0-9-]{1,8}){0,2}".prop_map(|h| format!(".{h}")),
            "[0-9]{1,3}\\.[0-9]{1,3}\\.0\\.0/[0-9]{1,2}",
            legalish(),
        ]
        .boxed(),
        Field::Domain => prop_oneof![
            "[a-z0-9-]{1,10}(\\.[a-z0-9-]{1,10}){0,3}",
            nasty().prop_map(|d| format!("demo{d}.test")),
        ]
        .boxed(),
        Field::HealthPath => prop_oneof![
            legalish().prop_map(|p| format!("/{p}")),
            nasty().prop_map(|p| format!("/healthz{p}")),
        ]
        .boxed(),
        Field::Image => prop_oneof![
            "[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}(:[A-Za-z0-9_][A-Za-z0-9._-]{0,8})?"
                .prop_map(|i| format!("reg:5000/{i}")),
            legalish().prop_map(|t| format!("reg:5000/web:{t}")),
            nasty().prop_map(|n| format!("reg:5000/{n}")),
        ]
        .boxed(),
        Field::Mirror => prop_oneof![
            legalish().prop_map(|m| format!("http://mirror.corp:5000/{m}")),
            nasty().prop_map(|m| format!("https://{m}")),
        ]
        .boxed(),
        Field::Insecure => prop_oneof![
            "[a-z0-9-]{1,8}(\\.[a-z0-9-]{1,8}){0,2}(:[0-9]{1,5})?",
            legalish(),
        ]
        .boxed(),
    };
    prop_oneof![4 => shaped, 1 => any::<String>(), 1 => nasty()].boxed()
}

// ---- readers: each destination's own parser --------------------------------------------------

/// `sh` sources the env file as start-docker.sh does and prints the three variables.
fn read_env_file(content: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker.env");
    std::fs::write(&file, content).unwrap();
    let out = Command::new("sh")
        .current_dir(dir.path())
        .args([
            "-c",
            "set -a; . \"$1\"; set +a; printf '%s\\0%s\\0%s' \"$HTTP_PROXY\" \"$HTTPS_PROXY\" \"$NO_PROXY\"",
            "sh",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "sh could not source:\n{content}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .map(String::from)
        .collect()
}

/// `apt-config` reads the file and dumps the keys it holds.
fn read_apt(content: &str) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.conf");
    std::fs::write(&file, content).unwrap();
    let mut keys = BTreeMap::new();
    for tree in ["Acquire::http::Proxy", "Acquire::https::Proxy"] {
        let out = Command::new("apt-config")
            .arg("-c")
            .arg(&file)
            .args(["dump", "--format", "%f\u{1f}%v\u{1e}", tree])
            .output()
            .expect("apt-config (Debian's apt) reads the rendered apt configuration");
        assert!(
            out.status.success(),
            "apt-config refused:\n{content}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        keys.extend(
            String::from_utf8(out.stdout)
                .unwrap()
                .split('\u{1e}')
                .filter_map(|kv| kv.split_once('\u{1f}'))
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
    }
    keys
}

/// systemd's `Environment="K=V"`: specifier expansion (`%%` → `%`; any other `%x` would be
/// a specifier, which cloudflow must never produce), then one double-quoted word with C
/// escapes. Returns `(K, V)` per line.
fn read_systemd(content: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in content.lines() {
        let Some(raw) = line.strip_prefix("Environment=") else {
            continue;
        };
        let mut expanded = String::new();
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                assert_eq!(
                    chars.next(),
                    Some('%'),
                    "a specifier reached systemd: {line}"
                );
            }
            expanded.push(c);
        }
        let inner = expanded
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or_else(|| panic!("not one quoted word: {line}"));
        let mut word = String::new();
        let mut it = inner.chars();
        while let Some(c) = it.next() {
            match c {
                '\\' => match it.next() {
                    Some('\\') => word.push('\\'),
                    Some('"') => word.push('"'),
                    other => panic!("unexpected escape {other:?} in {line}"),
                },
                '"' => panic!("the quoted word ends early: {line}"),
                c => word.push(c),
            }
        }
        let (k, v) = word.split_once('=').expect("K=V");
        out.push((k.to_string(), v.to_string()));
    }
    out
}

/// nginx's tokenizer, enough of it to find a directive's arguments: whitespace separates;
/// `;` ends a directive, `{`/`}` open/close blocks; `#` at a token start is a comment;
/// quotes at a token start quote; `\` escapes. Returns every simple directive's words.
fn nginx_directives(conf: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = conf.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            _ if !in_token && c == '#' => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            _ if !in_token && (c == '"' || c == '\'') => {
                let mut s = String::new();
                while let Some(n) = chars.next() {
                    if n == '\\' {
                        if let Some(e) = chars.next() {
                            s.push(e);
                        }
                    } else if n == c {
                        break;
                    } else {
                        s.push(n);
                    }
                }
                words.push(s);
            }
            ' ' | '\t' | '\n' | '\r' => {
                if in_token {
                    words.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            ';' | '{' | '}' => {
                if in_token {
                    words.push(std::mem::take(&mut cur));
                    in_token = false;
                }
                if c == ';' {
                    out.push(std::mem::take(&mut words));
                } else {
                    words.clear();
                }
            }
            '\\' => {
                in_token = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            c => {
                in_token = true;
                cur.push(c);
            }
        }
    }
    out
}

fn nginx_conf(spec: &Spec) -> String {
    let svc = &spec.services["web"];
    let mut state = ClusterState::new("prop", "lab");
    let mut env = EnvRecord {
        created: "2026-11-30T00:00:00Z".into(),
        expires: None,
        services: Default::default(),
    };
    env.services.insert(
        "web".into(),
        ServiceRecord {
            strategy: Routing::BlueGreen,
            port: svc.port,
            health_path: svc.health.path.clone(),
            live: Color::Blue,
            blue: Some(ColorRecord {
                image: svc.image.clone(),
                replicas: 1,
            }),
            green: None,
            switch_from: None,
        },
    );
    state.environments.insert("default".into(), env);
    let probes = vec![Probe {
        id: "t1".into(),
        address: "10.0.1.7".into(),
        port: 8080,
        path: svc.health.path.clone(),
        replica: "default-web-blue.1".into(),
        node: "h1".into(),
    }];
    let domain = spec.proxy.domain.as_deref().unwrap();
    deploy::proxy_config(
        &Renderer::new(None).unwrap(),
        "nginx-routes.conf",
        &deploy::swarm_upstream,
        &state,
        domain,
        1,
        &probes,
        None,
    )
    .unwrap()
}

/// Every destination reads back the spec's values exactly.
fn check_destinations(spec: &Spec) {
    let r = Renderer::new(None).unwrap();
    let proxy = &spec.proxy;
    let http = proxy.http_proxy.clone().unwrap();
    let https = proxy.https_proxy.clone().unwrap();
    let no = proxy.no_proxy.join(",");

    let env = proxy_files(&r, proxy, Init::None).unwrap();
    assert_eq!(
        read_env_file(&env[0].content),
        vec![http.clone(), https.clone(), no.clone()]
    );
    assert!(
        !Path::new("/tmp/cloudflow-canary").exists(),
        "a spec value ran a command"
    );

    let sd = proxy_files(&r, proxy, Init::Systemd).unwrap();
    assert_eq!(
        read_systemd(&sd[0].content),
        vec![
            ("HTTP_PROXY".to_string(), http.clone()),
            ("HTTPS_PROXY".to_string(), https.clone()),
            ("NO_PROXY".to_string(), no.clone()),
        ]
    );

    let apt = read_apt(&sd[1].content);
    assert_eq!(apt.get("Acquire::http::Proxy"), Some(&http), "{apt:?}");
    assert_eq!(apt.get("Acquire::https::Proxy"), Some(&https), "{apt:?}");
    for (k, v) in &apt {
        assert!(
            k == "Acquire::http::Proxy" || k == "Acquire::https::Proxy" || v == "DIRECT",
            "{k}={v}"
        );
    }

    let daemon =
        crate::plan::daemon_json::merge(None, &spec.registry.insecure, &spec.registry.mirrors)
            .unwrap()
            .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&daemon.content).unwrap();
    assert_eq!(
        doc["registry-mirrors"],
        serde_json::json!(spec.registry.mirrors)
    );
    assert_eq!(
        doc["insecure-registries"],
        serde_json::json!(spec.registry.insecure)
    );

    let mut files = sd.clone();
    files.push(HostFile {
        path: DAEMON_JSON.into(),
        content: daemon.content.clone(),
        mode: PUBLIC,
    });
    let user_data = cloud_init(&r, &spec.name, &files).unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&user_data).expect("cloud-init YAML");
    let written = doc["write_files"].as_array().unwrap();
    for f in &files {
        let entry = written
            .iter()
            .find(|w| w["path"] == f.path.as_str())
            .unwrap_or_else(|| panic!("{} not in user-data", f.path));
        let b64 = entry["content"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(String::from_utf8(bytes).unwrap(), f.content);
        assert_eq!(entry["permissions"], format!("{:04o}", f.mode));
    }

    let conf = nginx_conf(spec);
    let directives = nginx_directives(&conf);
    let domain = spec.proxy.domain.as_deref().unwrap();
    let host = format!("web-default.{domain}");
    assert!(
        directives
            .iter()
            .any(|d| d == &["server_name".to_string(), host.clone()]),
        "server_name {host} not read back from:\n{conf}"
    );
    let target = format!("http://10.0.1.7:8080{}", spec.services["web"].health.path);
    assert!(
        directives
            .iter()
            .any(|d| d == &["proxy_pass".to_string(), target.clone()]),
        "proxy_pass {target} not read back from:\n{conf}"
    );
    assert!(
        !target.contains('$') && !domain.contains('$'),
        "an nginx variable came from the spec"
    );
}

/// 600 generated cases (a bounded time: a few seconds); the run must both accept and refuse
/// a fair share, so it cannot quietly turn into "everything refused".
#[test]
fn spec_strings_are_refused_or_arrive_byte_for_byte() {
    use proptest::test_runner::{Config, TestRunner};
    let accepted = std::cell::Cell::new(0u32);
    let refused = std::cell::Cell::new(0u32);
    let mut runner = TestRunner::new(Config {
        cases: 600,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &proptest::sample::select(&FIELDS[..]).prop_flat_map(|f| (Just(f), value_for(f))),
            |(field, v)| {
                let text = spec_text(field, &v);
                match spec::parse(Path::new("prop.yaml"), &text) {
                    Ok(spec) => {
                        accepted.set(accepted.get() + 1);
                        check_destinations(&spec);
                    }
                    Err(_) => refused.set(refused.get() + 1),
                }
                Ok(())
            },
        )
        .unwrap();
    let (a, r) = (accepted.get(), refused.get());
    eprintln!("property test: {a} accepted and read back, {r} refused");
    assert!(a >= 100 && r >= 100, "{a} accepted, {r} refused");
}

#[test]
fn nasty_but_valid_proxy_credentials_arrive_unchanged() {
    // A password with every URL sub-delimiter a shell, systemd or apt could trip on.
    let text = spec_text(
        Field::HttpProxy,
        "http://ci:p$(touch%20x)'!*;&=+,%25@proxy.corp:3128",
    );
    let spec = spec::parse(Path::new("p.yaml"), &text).unwrap();
    check_destinations(&spec);
    for (field, v) in [
        (Field::HttpProxy, "http://p:1\"; rm -rf /"),
        (
            Field::HttpsProxy,
            "http://p:1\n[Service]\nExecStartPre=/bin/sh",
        ),
        (Field::Domain, "demo.test; } server { listen 81"),
        (Field::HealthPath, "/healthz; return 200"),
        (Field::Image, "reg:5000/web:1\n}"),
        (Field::NoProxy, "a\"b"),
    ] {
        let e = spec::parse(Path::new("p.yaml"), &spec_text(field, v)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("p.yaml:"), "{field:?}: {msg}");
    }
}
