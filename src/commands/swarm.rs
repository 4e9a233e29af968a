//! Swarm command builders for the deploy subsystem: networks, services, tasks, the proxy.
//! Data only; the executor runs them on a manager.

use std::collections::BTreeMap;

use super::{Body, Cmd, Effect, quote};

/// The proxy's conf.d on each manager, bind-mounted read-only into the proxy container.
pub const PROXY_CONF_DIR: &str = "/etc/cloudflow/proxy";
pub const PROXY_CONF: &str = "/etc/cloudflow/proxy/cloudflow.conf";
pub const PROXY_SERVICE: &str = "cloudflow-proxy";

/// A service as the orchestrator should run it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRun {
    pub name: String,
    pub image: String,
    pub replicas: u32,
    /// `cloudflow.*` labels, set on the service and its containers.
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    /// Networks to join, each with an optional DNS alias.
    pub networks: Vec<(String, Option<String>)>,
}

fn label_args(flag: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    labels
        .iter()
        .flat_map(|(k, v)| [flag.to_string(), format!("{k}={v}")])
        .collect()
}

fn owned(step: &str, effect: Effect, argv: Vec<String>) -> Cmd {
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    Cmd::argv(step, effect, &refs)
}

/// Create an overlay network unless it exists.
pub fn network_create(name: &str, labels: &BTreeMap<String, String>) -> Cmd {
    let mut create = vec![
        "docker".to_string(),
        "network".into(),
        "create".into(),
        "--driver".into(),
        "overlay".into(),
        "--attachable".into(),
    ];
    create.extend(label_args("--label", labels));
    create.push(name.to_string());
    let create: Vec<String> = create.iter().map(|a| quote(a)).collect();
    Cmd::script(
        "network-create",
        Effect::Mutate,
        format!(
            "# create network {name}\ndocker network inspect {n} >/dev/null 2>&1 || {}\n",
            create.join(" "),
            n = quote(name)
        ),
    )
}

fn filters(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("--filter {}", quote(&format!("label={k}={v}"))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Remove every network carrying all of `labels`.
pub fn networks_rm(labels: &[(&str, &str)]) -> Cmd {
    Cmd::script(
        "network-rm",
        Effect::Mutate,
        format!(
            "# remove labelled networks\nids=$(docker network ls -q {f})\n[ -z \"$ids\" ] && exit 0\ndocker network rm $ids\n\
             # removal is asynchronous in a swarm: succeed only once none is listed any more\n\
             sleep 0.5\nleft=$(docker network ls -q {f})\n[ -z \"$left\" ] || {{ echo \"networks still there: $left\" >&2; exit 1; }}\n",
            f = filters(labels)
        ),
    )
}

/// Names of services carrying all of `labels`.
pub fn services_ls(labels: &[(&str, &str)]) -> Cmd {
    Cmd::script(
        "service-ls",
        Effect::Read,
        format!(
            "# list labelled services\ndocker service ls {f} --format '{{{{.Name}}}}'\n",
            f = filters(labels)
        ),
    )
}

/// `docker service create` for a deployed service: dnsrr (no VIP), registry auth forwarded.
pub fn service_create(run: &ServiceRun) -> Cmd {
    let mut argv: Vec<String> = [
        "docker",
        "service",
        "create",
        "--detach",
        "--name",
        &run.name,
        "--replicas",
        &run.replicas.to_string(),
        "--endpoint-mode",
        "dnsrr",
        "--with-registry-auth",
        "--stop-grace-period",
        "10s",
    ]
    .map(String::from)
    .into();
    argv.extend(label_args("--label", &run.labels));
    argv.extend(label_args("--container-label", &run.labels));
    for (net, alias) in &run.networks {
        argv.push("--network".into());
        argv.push(match alias {
            Some(a) => format!("name={net},alias={a}"),
            None => net.clone(),
        });
    }
    for (k, v) in &run.env {
        argv.push("--env".into());
        argv.push(format!("{k}={v}"));
    }
    argv.push(run.image.clone());
    owned("service-create", Effect::Mutate, argv)
}

/// Update an in-place service's image, replicas and environment.
pub fn service_update(run: &ServiceRun, old_env: &[String]) -> Cmd {
    let mut argv: Vec<String> = [
        "docker",
        "service",
        "update",
        "--detach",
        "--with-registry-auth",
        "--image",
        &run.image,
        "--replicas",
        &run.replicas.to_string(),
    ]
    .map(String::from)
    .into();
    for k in old_env.iter().filter(|k| !run.env.contains_key(*k)) {
        argv.push("--env-rm".into());
        argv.push(k.clone());
    }
    for (k, v) in &run.env {
        argv.push("--env-add".into());
        argv.push(format!("{k}={v}"));
    }
    argv.push(run.name.clone());
    owned("service-update", Effect::Mutate, argv)
}

/// Point an existing service at `image` (a no-op when it already runs it).
pub fn service_set_image(name: &str, image: &str) -> Cmd {
    Cmd::argv(
        "service-set-image",
        Effect::Mutate,
        &[
            "docker",
            "service",
            "update",
            "--detach",
            "--with-registry-auth",
            "--image",
            image,
            name,
        ],
    )
}

pub fn service_scale(name: &str, replicas: u32) -> Cmd {
    owned(
        "service-scale",
        Effect::Mutate,
        vec![
            "docker".into(),
            "service".into(),
            "scale".into(),
            "--detach".into(),
            format!("{name}={replicas}"),
        ],
    )
}

/// Remove services that exist (names that do not are skipped, so it is idempotent).
pub fn services_rm(names: &[String]) -> Cmd {
    let list: Vec<String> = names.iter().map(|n| quote(n)).collect();
    Cmd::script(
        "service-rm",
        Effect::Mutate,
        format!(
            "# remove services\nfor s in {}; do\n  if docker service inspect \"$s\" >/dev/null 2>&1; then docker service rm \"$s\" >/dev/null; fi\ndone\n",
            list.join(" ")
        ),
    )
}

/// The service's tasks as `docker inspect` JSON, then `---`, then `node-id hostname` lines.
pub fn service_tasks(name: &str) -> Cmd {
    Cmd::script(
        "service-tasks",
        Effect::Read,
        format!(
            "# tasks of {name}\nids=$(docker service ps -q --no-trunc {n})\nif [ -n \"$ids\" ]; then docker inspect $ids; else echo '[]'; fi\n\
             echo ---\ndocker node ls --format '{{{{.ID}}}} {{{{.Hostname}}}}'\n",
            n = quote(name)
        ),
    )
}

/// The reverse proxy: one task per manager, published in host mode, on the shared edge
/// network, its conf.d bind-mounted from the host (written from outside, then reloaded).
pub fn proxy_create(image: &str, port: u16, edge: &str, cluster: &str) -> Cmd {
    let label = format!("cloudflow.cluster={cluster}");
    owned(
        "proxy-create",
        Effect::Mutate,
        [
            "docker",
            "service",
            "create",
            "--detach",
            "--name",
            PROXY_SERVICE,
            "--mode",
            "global",
            "--constraint",
            "node.role==manager",
            "--publish",
            &format!("mode=host,target=80,published={port},protocol=tcp"),
            "--network",
            edge,
            "--mount",
            &format!("type=bind,source={PROXY_CONF_DIR},target=/etc/nginx/conf.d,readonly"),
            "--label",
            &label,
            "--container-label",
            &label,
            "--with-registry-auth",
            image,
        ]
        .map(String::from)
        .into(),
    )
}

/// Write a new proxy configuration and reload, in one round trip (the switch's critical path).
pub fn proxy_apply(config: &str) -> Cmd {
    let (Body::Script(write), Body::Script(reload)) = (
        super::write_file("proxy-apply", PROXY_CONF, config).body,
        proxy_reload().body,
    ) else {
        unreachable!("both are scripts")
    };
    Cmd::script("proxy-apply", Effect::Mutate, format!("{write}{reload}"))
}

/// Check and gracefully reload the proxy's nginx on this host (`nginx -s reload`: old
/// workers finish their requests).
pub fn proxy_reload() -> Cmd {
    Cmd::script(
        "proxy-reload",
        Effect::Mutate,
        format!(
            "# reload the cloudflow proxy on this host\n\
             c=$(docker ps -q --filter label=com.docker.swarm.service.name={PROXY_SERVICE} | head -n1)\n\
             if [ -z \"$c\" ]; then echo 'no {PROXY_SERVICE} container runs on this host' >&2; exit 3; fi\n\
             docker exec \"$c\" nginx -t -q && docker exec \"$c\" nginx -s reload\n"
        ),
    )
}
