use super::*;
use crate::render::Renderer;
use crate::state::{ColorRecord, ServiceRecord};

#[test]
fn relative_and_absolute_sizes_resolve_and_clamp() {
    assert_eq!(resolve_replicas("+2", 3, 1, 10).unwrap(), (5, None));
    assert_eq!(resolve_replicas("-1", 3, 1, 10).unwrap(), (2, None));
    assert_eq!(resolve_replicas("7", 3, 1, 10).unwrap(), (7, None));
    let (n, note) = resolve_replicas("+9", 3, 1, 5).unwrap();
    assert_eq!(n, 5);
    assert!(note.unwrap().contains("clamped to 5"));
    let (n, note) = resolve_replicas("-5", 3, 1, 5).unwrap();
    assert_eq!(n, 1);
    assert!(note.unwrap().contains("gives -2"));
    assert_eq!(resolve_replicas("0", 3, 0, u32::MAX).unwrap(), (0, None));
    assert!(resolve_replicas("lots", 3, 0, 5).is_err());
    assert!(resolve_replicas("+", 3, 0, 5).is_err());
}

fn state_with_web(
    live: Color,
    blue: Option<(&str, u32)>,
    green: Option<(&str, u32)>,
) -> ClusterState {
    let mut s = ClusterState::new("demo", "lab");
    let rec = |c: Option<(&str, u32)>| {
        c.map(|(image, replicas)| ColorRecord {
            image: image.into(),
            replicas,
        })
    };
    let mut env = EnvRecord {
        created: "2026-11-23T00:00:00Z".into(),
        expires: None,
        services: Default::default(),
    };
    env.services.insert(
        "web".into(),
        ServiceRecord {
            strategy: Strategy::BlueGreen,
            port: Some(8080),
            health_path: "/healthz".into(),
            live,
            blue: rec(blue),
            green: rec(green),
            switch_from: None,
        },
    );
    env.services.insert(
        "db".into(),
        ServiceRecord {
            strategy: Strategy::InPlace,
            port: None,
            health_path: "/".into(),
            live: Color::Blue,
            blue: rec(Some(("db:1", 1))),
            green: None,
            switch_from: None,
        },
    );
    s.environments.insert("default".into(), env);
    s
}

#[test]
fn routes_send_the_live_host_to_the_live_colour_and_preview_to_the_other() {
    let s = state_with_web(Color::Green, Some(("web:1", 2)), Some(("web:2", 2)));
    let r = routes(&s, "demo.test", &super::swarm_upstream);
    assert_eq!(r.len(), 2, "in-place services are not routed: {r:?}");
    assert_eq!(r[0].host, "web-default.demo.test");
    assert_eq!(r[0].upstream.as_deref(), Some("default-web-green"));
    assert_eq!(r[0].port, 8080);
    assert_eq!(r[1].host, "web-default-preview.demo.test");
    assert_eq!(r[1].upstream.as_deref(), Some("default-web-blue"));
}

#[test]
fn after_stop_old_the_preview_answers_503_with_a_reason() {
    let s = state_with_web(Color::Green, Some(("web:1", 0)), Some(("web:2", 2)));
    let r = routes(&s, "demo.test", &super::swarm_upstream);
    assert_eq!(r[1].upstream, None);
    assert!(r[1].message.contains("stop-old"), "{}", r[1].message);
    let first = state_with_web(Color::Blue, Some(("web:1", 2)), None);
    assert!(
        routes(&first, "d", &super::swarm_upstream)
            .iter()
            .any(|r| r.message.contains("only the blue colour"))
    );
}

#[test]
fn proxy_config_has_routes_probes_the_404_and_the_generation() {
    let s = state_with_web(Color::Blue, Some(("web:1", 2)), Some(("web:2", 0)));
    let probes = vec![Probe {
        id: "abc123".into(),
        address: "10.0.1.7".into(),
        port: 8080,
        path: "/healthz".into(),
        replica: "default-web-blue.1".into(),
        node: "h2".into(),
    }];
    let conf = proxy_config(
        &Renderer::new(None).unwrap(),
        "nginx-routes.conf",
        &super::swarm_upstream,
        &s,
        "demo.test",
        42,
        &probes,
        None,
    )
    .unwrap();
    for want in [
        "resolver 127.0.0.11 valid=1s ipv6=off;",
        "listen 80 default_server;",
        "return 404 \"cloudflow: no service is routed at $host",
        "server_name web-default.demo.test;",
        "set $cf_upstream default-web-blue;",
        "proxy_pass http://$cf_upstream:8080;",
        "server_name web-default-preview.demo.test;",
        "return 503 \"cloudflow: no preview for web in default: the green colour was stopped",
        "server_name cloudflow-probe;",
        "return 200 \"42\\n\";",
        "location = /_cloudflow/probe/abc123 {",
        "proxy_pass http://10.0.1.7:8080/healthz;",
    ] {
        assert!(conf.contains(want), "missing {want:?} in:\n{conf}");
    }
}

#[test]
fn with_https_a_host_with_a_certificate_redirects_and_serves_tls_others_stay_plain() {
    let mut s = state_with_web(Color::Blue, Some(("web:1", 2)), Some(("web:2", 1)));
    s.certs.insert(
        "env-default".into(),
        crate::state::CertRecord {
            hosts: vec!["web-default.demo.test".into()],
            not_after: "2031-01-01T00:00:00Z".into(),
            serial: "01".into(),
            source: "acme".into(),
            fingerprint: "x".into(),
        },
    );
    let conf = proxy_config(
        &Renderer::new(None).unwrap(),
        "nginx-routes.conf",
        &super::swarm_upstream,
        &s,
        "demo.test",
        7,
        &[],
        Some(8443),
    )
    .unwrap();
    for want in [
        "ssl_reject_handshake on;",
        "alias /etc/nginx/conf.d/acme/;",
        "return 301 https://$host:8443$request_uri;",
        "listen 443 ssl;",
        "ssl_certificate /etc/nginx/conf.d/tls/env-default-x.crt;",
        "ssl_certificate_key /etc/nginx/conf.d/tls/env-default-x.key;",
    ] {
        assert!(conf.contains(want), "missing {want:?} in:\n{conf}");
    }
    // The preview host has no certificate yet: still plain HTTP to its colour.
    let preview = conf
        .split("server_name web-default-preview.demo.test;")
        .nth(1)
        .unwrap();
    let preview = &preview[..preview.find("\n}").unwrap()];
    assert!(
        preview.contains("proxy_pass") && !preview.contains("301"),
        "{preview}"
    );
    // Without proxy.https nothing of it appears.
    let plain = proxy_config(
        &Renderer::new(None).unwrap(),
        "nginx-routes.conf",
        &super::swarm_upstream,
        &s,
        "demo.test",
        7,
        &[],
        None,
    )
    .unwrap();
    assert!(!plain.contains("443") && !plain.contains("acme"), "{plain}");
}

#[test]
fn kubernetes_routes_serve_tls_from_the_mounted_secret_and_a_switch_changes_nothing() {
    let kube_upstream = |env: &str, svc: &str, _c: Color, preview: bool| {
        if preview {
            format!("{svc}-preview.{env}.svc.cluster.local")
        } else {
            format!("{svc}.{env}.svc.cluster.local")
        }
    };
    let render = |s: &ClusterState, https: Option<u16>| {
        proxy_config(
            &Renderer::new(None).unwrap(),
            "nginx-routes-kubernetes.conf",
            &kube_upstream,
            s,
            "demo.test",
            7,
            &[],
            https,
        )
        .unwrap()
    };
    let mut s = state_with_web(Color::Blue, Some(("web:1", 2)), Some(("web:2", 1)));
    s.certs.insert(
        "env-default".into(),
        crate::state::CertRecord {
            hosts: vec![
                "web-default.demo.test".into(),
                "web-default-preview.demo.test".into(),
            ],
            not_after: "2031-01-01T00:00:00Z".into(),
            serial: "01".into(),
            source: "acme".into(),
            fingerprint: "x".into(),
        },
    );
    let conf = render(&s, Some(443));
    for want in [
        "ssl_reject_handshake on;",
        "include /etc/nginx/conf.d/acme-challenges.inc;",
        "return 301 https://$host$request_uri;",
        "ssl_certificate /etc/nginx/tls/env-default-x.crt;",
        "ssl_certificate_key /etc/nginx/tls/env-default-x.key;",
        "set $cf_upstream web.default.svc.cluster.local;",
        "set $cf_upstream web-preview.default.svc.cluster.local;",
    ] {
        assert!(conf.contains(want), "missing {want:?} in:\n{conf}");
    }
    assert_eq!(conf.matches("listen 443 ssl;").count(), 2, "{conf}");
    // The Service flips on a switch; the proxy's configuration does not (no rollout).
    let switched = state_with_web(Color::Green, Some(("web:1", 2)), Some(("web:2", 1)));
    let mut switched_with_cert = switched.clone();
    switched_with_cert.certs = s.certs.clone();
    assert_eq!(render(&switched_with_cert, Some(443)), conf);
    // Without proxy.https: no challenge include (the ConfigMap has no such key), no 443.
    let plain = render(&s, None);
    assert!(!plain.contains("443") && !plain.contains("acme"), "{plain}");
}

#[test]
fn names_and_labels() {
    assert_eq!(color_service("pr-7", "web", Color::Green), "pr-7-web-green");
    assert_eq!(inplace_service("default", "db"), "default-db");
    assert_eq!(env_network("pr-7"), "cf-env-pr-7");
    assert!(valid_env_name("pr-7"));
    assert!(!valid_env_name("PR_7"));
    assert!(!valid_env_name("7pr"));
    let l = labels("demo", "pr-7", Some("web"), Some(Color::Blue));
    assert_eq!(l["cloudflow.cluster"], "demo");
    assert_eq!(l["cloudflow.env"], "pr-7");
    assert_eq!(l["cloudflow.service"], "web");
    assert_eq!(l["cloudflow.color"], "blue");
}

const TASKS: &str = r#"[
 {"ID":"t1","Slot":1,"NodeID":"n1","DesiredState":"running","Status":{"State":"running","Err":""},
  "Spec":{"ContainerSpec":{"Image":"reg:5000/web:2@sha256:abc"}},
  "NetworksAttachments":[{"Network":{"Spec":{"Name":"cloudflow-edge"}},"Addresses":["10.0.1.7/24"]},
                         {"Network":{"Spec":{"Name":"cf-env-default"}},"Addresses":["10.0.2.3/24"]}]},
 {"ID":"t2","Slot":2,"NodeID":"n2","DesiredState":"running","Status":{"State":"preparing","Err":""},
  "Spec":{"ContainerSpec":{"Image":"reg:5000/web:2"}}},
 {"ID":"t0","Slot":2,"NodeID":"n2","DesiredState":"shutdown","Status":{"State":"rejected","Err":"No such image: reg:5000/web:2"},
  "Spec":{"ContainerSpec":{"Image":"reg:5000/web:2"}}}
]
---
n1 host-1
n2 host-2
"#;

#[test]
fn tasks_parse_with_node_names_addresses_and_errors() {
    let t = parse_tasks("default-web-green", TASKS).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0].name, "default-web-green.1");
    assert_eq!(t[0].node, "host-1");
    assert!(
        image_matches(&t[0].image, "reg:5000/web:2"),
        "{}",
        t[0].image
    );
    assert_eq!(t[0].addresses["cloudflow-edge"], "10.0.1.7");
    assert_eq!(t[2].error, "No such image: reg:5000/web:2");
    assert!(parse_tasks("x", "[]\n---\n").unwrap().is_empty());
}

#[test]
fn convergence_needs_every_replica_running_and_nothing_stopping() {
    let mut t = parse_tasks("s", TASKS).unwrap();
    let c = convergence(&t, 2, Some("reg:5000/web:2"));
    assert_eq!((c.running, c.done), (1, false));
    assert!(c.last_error.unwrap().contains("No such image"));
    t[1].state = "running".into();
    assert!(convergence(&t, 2, Some("reg:5000/web:2")).done);
    assert!(
        !convergence(&t, 2, Some("reg:5000/web:1")).done,
        "wrong image"
    );
    // Scaling down: a task told to shut down but still running is not converged.
    t[1].desired = "shutdown".into();
    let c = convergence(&t, 1, None);
    assert_eq!((c.stopping, c.done), (1, false));
    t[1].state = "shutdown".into();
    assert!(convergence(&t, 1, None).done);
}

#[test]
fn env_list_always_has_default_and_the_contract_shape() {
    let mut s = state_with_web(Color::Green, Some(("web:1", 0)), Some(("web:2", 3)));
    s.environments.insert(
        "pr-7".into(),
        EnvRecord {
            created: "2026-11-23T10:00:00Z".into(),
            expires: Some("2026-11-23T11:00:00Z".into()),
            services: Default::default(),
        },
    );
    let l = env_list(&s);
    assert_eq!(l[0]["name"], "default");
    assert_eq!(l[1]["name"], "pr-7");
    assert_eq!(l[1]["expires"], "2026-11-23T11:00:00Z");
    let web = l[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap();
    assert_eq!(web["color"], "green");
    assert_eq!(web["image"], "web:2");
    assert_eq!(web["replicas"], 3);
    assert!(web["preview"].is_null(), "stopped colour is no preview");
    assert_eq!(
        env_list(&ClusterState::new("x", "lab"))[0]["name"],
        "default"
    );
}

#[test]
fn services_line_names_colour_image_and_replicas() {
    let s = state_with_web(Color::Green, Some(("web:1", 0)), Some(("web:2", 3)));
    let l = env_list(&s);
    assert_eq!(
        services_line(&l[0]),
        "db (in-place db:1 ×1), web (green web:2 ×3)"
    );
    assert_eq!(
        services_line(&env_list(&ClusterState::new("x", "lab"))[0]),
        "-"
    );
}

#[test]
fn task_images_match_by_digest_or_by_name_and_tag() {
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pinned = format!("reg:5000/web:1@{d}");
    assert!(image_matches(&pinned, "reg:5000/web:1"));
    assert!(image_matches(&pinned, &format!("reg:5000/web@{d}")));
    assert!(image_matches(&pinned, &format!("reg:5000/web:1@{d}")));
    assert!(!image_matches(&pinned, "reg:5000/web:2"));
    assert!(!image_matches(&pinned, "reg:5000/web"));
    assert!(!image_matches(
        &pinned,
        &format!("reg:5000/web@{}", d.replace('0', "f"))
    ));
    // No tag is latest; Docker Hub's implicit prefixes are the same as none.
    assert!(image_matches(
        &format!("reg:5000/web:latest@{d}"),
        "reg:5000/web"
    ));
    assert!(image_matches(
        &format!("docker.io/library/nginx:latest@{d}"),
        "nginx"
    ));
    assert!(image_matches(
        &format!("reg:5000/web@{d}"),
        &format!("reg:5000/web@{d}")
    ));
    assert!(!image_matches(
        &format!("reg:5000/api:1@{d}"),
        "reg:5000/web:1"
    ));
    // Before: a digest-pinned request never matched what Swarm reports.
    let t = Task {
        id: "t".into(),
        name: "web.1".into(),
        node: "n".into(),
        desired: "running".into(),
        state: "running".into(),
        error: String::new(),
        image: pinned.clone(),
        addresses: Default::default(),
    };
    assert!(convergence(&[t], 1, Some(&format!("reg:5000/web@{d}"))).done);
}

#[test]
fn a_services_environment_and_secrets_read_from_its_container_spec() {
    let live = parse_container_spec(
        r#"{"Image":"r/w:1","Env":["A=1","B=x=y","EMPTY"],"Secrets":[{"File":{"Name":"token","UID":"0","GID":"0","Mode":292},"SecretID":"abc","SecretName":"cf-00"}]}"#,
    )
    .unwrap();
    assert_eq!(live.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(live.env.get("B").map(String::as_str), Some("x=y"));
    assert_eq!(live.env.get("EMPTY").map(String::as_str), Some(""));
    assert_eq!(
        live.secrets,
        [crate::commands::swarm::SecretRef {
            name: "cf-00".into(),
            target: "token".into()
        }]
    );
    let bare = parse_container_spec("{\"Image\":\"r/w:1\"}\n").unwrap();
    assert!(bare.env.is_empty() && bare.secrets.is_empty());
    assert!(parse_container_spec("<no value>").is_err());
}

#[test]
fn secret_names_change_with_the_value_and_say_nothing_about_it() {
    let a = secret_name("salt", "default", "web", "token", "s3cret");
    assert!(a.starts_with("cf-") && a.len() == 23, "{a}");
    assert_eq!(a, secret_name("salt", "default", "web", "token", "s3cret"));
    assert_ne!(a, secret_name("salt", "default", "web", "token", "s3cret2"));
    assert_ne!(a, secret_name("salt", "pr-7", "web", "token", "s3cret"));
    assert_ne!(a, secret_name("other", "default", "web", "token", "s3cret"));
    assert!(!a.contains("s3cret"));
}

#[test]
fn kubernetes_routes_without_https_are_what_they_were_before_https() {
    // Every change to this file rolls the proxy's pods (on k3s with one manager: a restart),
    // so a cluster without proxy.https must get the very bytes it had before HTTPS came.
    let kube_upstream = |env: &str, svc: &str, _c: Color, preview: bool| {
        if preview {
            format!("{svc}-preview.{env}.svc.cluster.local")
        } else {
            format!("{svc}.{env}.svc.cluster.local")
        }
    };
    let s = state_with_web(Color::Blue, Some(("web:1", 2)), Some(("web:2", 1)));
    let conf = proxy_config(
        &Renderer::new(None).unwrap(),
        "nginx-routes-kubernetes.conf",
        &kube_upstream,
        &s,
        "demo.test",
        7,
        &[],
        None,
    )
    .unwrap();
    assert_eq!(
        conf,
        include_str!("golden/nginx-routes-kubernetes-plain.conf")
    );
}
