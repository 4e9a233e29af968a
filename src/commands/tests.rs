use secrecy::{ExposeSecret, SecretString};

use super::*;
use crate::spec::ProxySpec;
use cloudflow_provider_api::Role;

fn renderer() -> Renderer {
    Renderer::new(None).unwrap()
}

#[test]
fn registry_login_puts_the_password_on_stdin_only() {
    let c = registry_login("reg:5000", "ci", SecretString::from("s3cret"));
    assert_eq!(
        c.command_line(),
        "docker login --username ci --password-stdin reg:5000"
    );
    assert_eq!(c.stdin.as_ref().unwrap().expose_secret(), "s3cret");
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug must not show the password"
    );
    assert_eq!(c.effect, Effect::Mutate);
}

#[test]
fn swarm_commands_exact_argv() {
    assert_eq!(
        swarm_init("10.0.0.5").command_line(),
        "docker swarm init --advertise-addr 10.0.0.5"
    );
    assert_eq!(
        swarm_join_token(Role::Worker).command_line(),
        "docker swarm join-token -q worker"
    );
    assert_eq!(
        swarm_join_token(Role::Manager).command_line(),
        "docker swarm join-token -q manager"
    );
    assert_eq!(swarm_leave().command_line(), "docker swarm leave --force");
    assert_eq!(
        node_ls().command_line(),
        "docker node ls --format '{{json .}}'"
    );
    assert_eq!(node_rm("abc").command_line(), "docker node rm --force abc");
}

#[test]
fn swarm_join_redacts_the_token_in_display() {
    let c = swarm_join("SWMTKN-1-secret", "10.0.0.6", "10.0.0.5");
    assert_eq!(
        c.command_line(),
        "docker swarm join --token SWMTKN-1-secret --advertise-addr 10.0.0.6 10.0.0.5:2377"
    );
    assert_eq!(
        c.display(),
        "docker swarm join --token *** --advertise-addr 10.0.0.6 10.0.0.5:2377"
    );
    assert_eq!(
        c.redact_text("error: SWMTKN-1-secret is invalid"),
        "error: *** is invalid"
    );
    let debug = format!("{c:?} {c:#?}");
    assert!(
        !debug.contains("SWMTKN-1-secret") && debug.contains("***"),
        "{debug}"
    );
}

#[test]
fn write_file_is_atomic_and_quotes_nothing_from_the_content() {
    let c = write_file(
        "daemon-json",
        "/etc/docker/daemon.json",
        "{\"a\": \"it's\"}\n",
    );
    let Body::Script(s) = &c.body else {
        panic!("script expected")
    };
    assert_eq!(
        s,
        "# write /etc/docker/daemon.json\nset -e\nmkdir -p /etc/docker\n\
         cat > /etc/docker/daemon.json.cloudflow-tmp\n\
         chmod 644 /etc/docker/daemon.json.cloudflow-tmp\n\
         mv /etc/docker/daemon.json.cloudflow-tmp /etc/docker/daemon.json\n"
    );
    assert_eq!(
        c.stdin.as_ref().unwrap().expose_secret(),
        "{\"a\": \"it's\"}\n"
    );
    let Body::Script(private) = write_file_mode("p", "/etc/x", "secret", PRIVATE).body else {
        panic!("script expected")
    };
    assert!(
        private.contains("umask 077\ncat >")
            && private.contains("chmod 600 /etc/x.cloudflow-tmp\nmv"),
        "{private}"
    );
    assert_eq!(c.display(), "sh -c <script: write /etc/docker/daemon.json>");
    assert_eq!(
        shlex::split(&c.command_line()).unwrap(),
        ["sh".to_string(), "-c".to_string(), s.clone()]
    );
}

#[test]
fn remove_files_argv() {
    let c = remove_files("proxy", &["/etc/a".into(), "/etc/b c".into()]);
    assert_eq!(c.command_line(), "rm -f /etc/a '/etc/b c'");
}

#[test]
fn start_docker_without_systemd_starts_dockerd_detached_with_a_pid_file() {
    let c = start_docker(&renderer(), Init::None, false).unwrap();
    let Body::Script(s) = &c.body else { panic!() };
    assert!(
        s.contains("setsid nohup dockerd > /var/log/dockerd.log 2>&1 < /dev/null &"),
        "{s}"
    );
    assert!(s.contains("echo $! > \"$pidfile\""));
    assert!(s.contains(". /etc/cloudflow/docker.env"));
    assert!(!s.contains("systemctl"));
    assert!(
        !s.contains("kill $pid"),
        "a plain start must not kill anything"
    );
    assert_eq!(c.step, "start-docker");
    let r = start_docker(&renderer(), Init::None, true).unwrap();
    let Body::Script(s) = &r.body else { panic!() };
    assert!(s.contains("kill $pid"));
    assert_eq!(r.step, "restart-docker");
}

#[test]
fn start_docker_with_systemd_uses_systemctl() {
    let Body::Script(s) = start_docker(&renderer(), Init::Systemd, true).unwrap().body else {
        panic!()
    };
    assert!(
        s.contains("systemctl daemon-reload\nsystemctl restart docker\n"),
        "{s}"
    );
    assert!(!s.contains("nohup"));
    assert!(s.contains("journalctl -u docker"));
}

#[test]
fn install_docker_asks_for_docker_cli_where_the_distribution_has_it() {
    let Body::Script(s) = install_docker(&renderer()).unwrap().body else {
        panic!()
    };
    assert!(s.contains(
        "if apt-cache show docker-cli > /dev/null 2>&1; then pkgs=\"$pkgs docker-cli\"; fi"
    ));
    assert!(s.contains("exit 101"), "the package must not start dockerd");
    assert!(s.contains("this host runs ${PRETTY_NAME:-$ID}"));
}

#[test]
fn facts_script_keeps_docker_go_templates_and_lists_managed_files_and_registries() {
    let c = facts(&renderer(), &["reg:5000".into(), "bad'name".into()]).unwrap();
    let Body::Script(s) = &c.body else { panic!() };
    assert!(s.contains(
        "--format '{{.Swarm.LocalNodeState}} {{.Swarm.NodeID}} {{.Swarm.ControlAvailable}}'"
    ));
    assert!(
        s.contains("[ -f /etc/cloudflow/docker.env ] && echo \"file:/etc/cloudflow/docker.env=")
    );
    assert!(s.contains(
        "grep -qsF '\"reg:5000\"' \"$HOME/.docker/config.json\" && echo \"login:reg:5000=yes\""
    ));
    assert!(!s.contains("bad'name"));
    assert!(s.trim_end().ends_with("echo \"end=ok\""));
    assert_eq!(c.effect, Effect::Read);
}

#[test]
fn proxy_files_per_init_system() {
    let proxy = ProxySpec {
        http_proxy: Some("http://proxy.corp:3128".into()),
        no_proxy: vec!["localhost".into(), "10.0.0.0/8".into()],
        ..Default::default()
    };
    let sd = proxy_files(&renderer(), &proxy, Init::Systemd).unwrap();
    assert_eq!(sd[0].path, DOCKER_PROXY_SYSTEMD);
    assert_eq!((sd[0].mode, sd[1].mode), (PUBLIC, PUBLIC));
    assert_eq!(
        sd[0].content,
        "# Written by cloudflow: dockerd's HTTP proxy (systemd drop-in).\n[Service]\n\
         Environment=\"HTTP_PROXY=http://proxy.corp:3128\"\nEnvironment=\"HTTPS_PROXY=http://proxy.corp:3128\"\n\
         Environment=\"NO_PROXY=localhost,10.0.0.0/8\"\n"
    );
    assert_eq!(sd[1].path, APT_PROXY);
    assert_eq!(
        sd[1].content,
        "// Written by cloudflow: the package manager's HTTP proxy.\nAcquire::http::Proxy \"http://proxy.corp:3128\";\n\
         Acquire::https::Proxy \"http://proxy.corp:3128\";\nAcquire::http::Proxy::localhost \"DIRECT\";\n\
         Acquire::https::Proxy::localhost \"DIRECT\";\n"
    );
    let plain = proxy_files(&renderer(), &proxy, Init::None).unwrap();
    assert_eq!(plain[0].path, DOCKER_PROXY_ENV);
    assert!(
        plain[0]
            .content
            .contains("\nNO_PROXY='localhost,10.0.0.0/8'\n")
    );
    let with_password = ProxySpec {
        http_proxy: Some("http://ci:s3cret@proxy.corp:3128".into()),
        ..Default::default()
    };
    let private = proxy_files(&renderer(), &with_password, Init::None).unwrap();
    assert!(private.iter().all(|f| f.mode == PRIVATE), "{private:?}");
    assert!(
        proxy_files(&renderer(), &ProxySpec::default(), Init::None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn cloud_init_carries_the_install_script_and_files_base64_encoded() {
    let files = vec![HostFile {
        path: "/etc/docker/daemon.json".to_string(),
        content: "{}\n".to_string(),
        mode: PUBLIC,
    }];
    let text = cloud_init(&renderer(), "stg", &files).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    assert!(text.contains("  - path: /etc/docker/daemon.json\n    permissions: \"0644\"\n    encoding: b64\n    content: e30K\n"), "{text}");
    assert!(text.contains("systemctl enable --now docker"));
    let b64 = text
        .lines()
        .skip_while(|l| !l.contains("cloudflow-install-docker"))
        .nth(3)
        .unwrap()
        .trim()
        .trim_start_matches("content: ");
    let script = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap();
    assert!(
        script.contains("apt_wait install -y -q --no-install-recommends $pkgs"),
        "{script}"
    );
    assert_eq!(
        node_drain("n1").command_line(),
        "docker node update --availability drain n1"
    );
    assert_eq!(
        node_tasks("n1").command_line(),
        "docker node ps n1 --filter 'desired-state=running' -q"
    );
}

#[test]
fn swarm_service_builders_are_exact() {
    use super::swarm::*;
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("cloudflow.cluster".to_string(), "demo".to_string());
    labels.insert("cloudflow.color".to_string(), "green".to_string());
    let mut env = std::collections::BTreeMap::new();
    env.insert("LOG_LEVEL".to_string(), "info".to_string());
    let run = ServiceRun {
        name: "default-web-green".into(),
        image: "reg:5000/web:2".into(),
        replicas: 3,
        labels,
        env,
        networks: vec![
            ("cloudflow-edge".into(), None),
            ("cf-env-default".into(), Some("web".into())),
        ],
        secrets: vec![SecretRef {
            name: "cf-new".into(),
            target: "api_token".into(),
        }],
        port: Some(8080),
        health_path: "/healthz".into(),
    };
    assert_eq!(
        service_create(&run).command_line(),
        "docker service create --detach --name default-web-green --replicas 3 --endpoint-mode dnsrr \
         --with-registry-auth --stop-grace-period 10s --label 'cloudflow.cluster=demo' --label 'cloudflow.color=green' \
         --container-label 'cloudflow.cluster=demo' --container-label 'cloudflow.color=green' --network cloudflow-edge \
         --network 'name=cf-env-default,alias=web' --env 'LOG_LEVEL=info' \
         --secret 'source=cf-new,target=api_token' reg:5000/web:2"
    );
    assert_eq!(
        service_scale("default-web-blue", 0).command_line(),
        "docker service scale --detach 'default-web-blue=0'"
    );
    assert_eq!(
        proxy_create("reg:5000/proxy:1", 8080, None, "cloudflow-edge", "demo").command_line(),
        "docker service create --detach --name cloudflow-proxy --mode global --constraint 'node.role==manager' \
         --publish 'mode=host,target=80,published=8080,protocol=tcp' --network cloudflow-edge \
         --mount 'type=bind,source=/etc/cloudflow/proxy,target=/etc/nginx/conf.d,readonly' \
         --label 'cloudflow.cluster=demo' --container-label 'cloudflow.cluster=demo' --with-registry-auth reg:5000/proxy:1"
    );
    let rm = networks_rm(&[("cloudflow.cluster", "demo"), ("cloudflow.env", "pr-7")]);
    let Body::Script(text) = &rm.body else {
        panic!()
    };
    assert!(text.contains(
        "docker network ls -q --filter 'label=cloudflow.cluster=demo' --filter 'label=cloudflow.env=pr-7'"
    ), "{text}");
    // The configuration travels on stdin; it is tested before it replaces the live file,
    // and the reload comes last.
    let config = "server { listen 80; }\n".repeat(10_000);
    let apply = proxy_apply(&config, "reg:5000/nginx:1");
    let Body::Script(text) = &apply.body else {
        panic!()
    };
    assert!(text.len() < 2_000 && !text.contains("listen 80"), "{text}");
    let syntax = std::process::Command::new("sh")
        .args(["-n", "-c", text])
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(text.contains("docker run --rm -v /etc/cloudflow/proxy:/etc/nginx/conf.d:ro --entrypoint nginx reg:5000/nginx:1 -t -q"), "{text}");
    assert_eq!(
        apply.stdin.as_ref().map(|s| s.expose_secret().len()),
        Some(config.len())
    );
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing in {text}"))
    };
    assert!(
        at("cat > /etc/cloudflow/proxy/cloudflow.conf.next")
            < at("nginx -t -q -c /etc/nginx/conf.d/cloudflow.test-harness")
    );
    assert!(
        at("nginx -t -q")
            < at("mv /etc/cloudflow/proxy/cloudflow.conf.next /etc/cloudflow/proxy/cloudflow.conf")
    );
    assert!(at("mv /etc/cloudflow/proxy/cloudflow.conf.next") < at("nginx -s reload"));
    assert!(text.contains("rm -f /etc/cloudflow/proxy/cloudflow.conf.next /etc/cloudflow/proxy/cloudflow.test-harness\n"));
    // What runs and the spec no longer has goes: variables and secrets.
    let live = LiveService {
        env: [
            ("OLD".to_string(), "1".to_string()),
            ("LOG_LEVEL".to_string(), "debug".to_string()),
        ]
        .into(),
        secrets: vec![SecretRef {
            name: "cf-old".into(),
            target: "api_token".into(),
        }],
    };
    assert_eq!(
        service_update(&run, &live).command_line(),
        "docker service update --detach --with-registry-auth --image reg:5000/web:2 --replicas 3 \
         --env-rm OLD --env-add 'LOG_LEVEL=info' --secret-rm cf-old --secret-add 'source=cf-new,target=api_token' \
         default-web-green"
    );
    // A secret is created from stdin: its value is in no argv, message or debug output.
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("cloudflow.secret".to_string(), "api_token".to_string());
    let c = secret_create("cf-new", &labels, SecretString::from("v4lue-only-on-stdin"));
    assert_eq!(
        c.stdin.as_ref().unwrap().expose_secret(),
        "v4lue-only-on-stdin"
    );
    for shown in [c.command_line(), c.display(), format!("{c:?}")] {
        assert!(!shown.contains("v4lue"), "{shown}");
    }
    assert!(
        c.command_line()
            .contains("docker secret create --label 'cloudflow.secret=api_token' cf-new -")
    );
    let Body::Script(rm) = secrets_rm(&[("cloudflow.cluster", "demo")], true).body else {
        panic!()
    };
    assert!(
        rm.contains("docker secret ls -q --filter 'label=cloudflow.cluster=demo'")
            && rm.contains("|| true"),
        "{rm}"
    );
}

#[test]
fn leftover_task_containers_are_only_this_clusters_tasks() {
    let Body::Script(text) = remove_task_containers("demo").body else {
        panic!()
    };
    assert!(text.contains(
        "docker ps -aq --filter label=com.docker.swarm.task.id --filter 'label=cloudflow.cluster=demo'"
    ), "{text}");
}
