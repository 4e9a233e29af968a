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
    /// Docker secrets to mount under `/run/secrets/`.
    pub secrets: Vec<SecretRef>,
    /// The port the service listens on and its health path (Kubernetes' readiness probe;
    /// Swarm gates through the proxy instead).
    pub port: Option<u16>,
    pub health_path: String,
}

/// A Docker secret mounted into a service: `/run/secrets/<target>` holds secret `name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretRef {
    pub name: String,
    pub target: String,
}

impl SecretRef {
    fn arg(&self) -> String {
        format!("source={},target={}", self.name, self.target)
    }
}

/// What a running service has, as far as an in-place update needs to know.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveService {
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<SecretRef>,
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
    for s in &run.secrets {
        argv.push("--secret".into());
        argv.push(s.arg());
    }
    argv.push(run.image.clone());
    owned("service-create", Effect::Mutate, argv)
}

/// Update an in-place service's image, replicas, environment and secrets to `run`; what the
/// live service has and `run` does not is removed.
pub fn service_update(run: &ServiceRun, live: &LiveService) -> Cmd {
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
    for k in live.env.keys().filter(|k| !run.env.contains_key(*k)) {
        argv.push("--env-rm".into());
        argv.push(k.clone());
    }
    for (k, v) in &run.env {
        argv.push("--env-add".into());
        argv.push(format!("{k}={v}"));
    }
    for s in live.secrets.iter().filter(|s| !run.secrets.contains(s)) {
        argv.push("--secret-rm".into());
        argv.push(s.name.clone());
    }
    for s in run.secrets.iter().filter(|s| !live.secrets.contains(s)) {
        argv.push("--secret-add".into());
        argv.push(s.arg());
    }
    argv.push(run.name.clone());
    owned("service-update", Effect::Mutate, argv)
}

/// A service's container spec as JSON (environment, secrets); fails with "no such service"
/// when the service does not exist.
pub fn service_inspect(name: &str) -> Cmd {
    Cmd::argv(
        "service-inspect",
        Effect::Read,
        &[
            "docker",
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec}}",
            name,
        ],
    )
}

/// Create a Docker secret unless it exists. The value goes on stdin: never in argv, never in
/// a message. Secrets are immutable, so a changed value is a new secret (its name carries a
/// fingerprint of the value).
pub fn secret_create(
    name: &str,
    labels: &BTreeMap<String, String>,
    value: secrecy::SecretString,
) -> Cmd {
    let mut create = vec!["docker".to_string(), "secret".into(), "create".into()];
    create.extend(label_args("--label", labels));
    create.push(name.to_string());
    create.push("-".into());
    let create: Vec<String> = create.iter().map(|a| quote(a)).collect();
    let mut c = Cmd::script(
        "secret-create",
        Effect::Mutate,
        format!(
            "# create secret {name}\nif docker secret inspect {n} >/dev/null 2>&1; then cat >/dev/null; exit 0; fi\n{} >/dev/null\n",
            create.join(" "),
            n = quote(name)
        ),
    );
    c.stdin = Some(value);
    c
}

/// Remove the secrets carrying all of `labels`. With `unused_only`, the ones a service still
/// mounts stay (Docker refuses to remove them): what a rotation left behind goes, the secret
/// of a colour kept for `rollback` stays.
pub fn secrets_rm(labels: &[(&str, &str)], unused_only: bool) -> Cmd {
    let rm = if unused_only {
        "docker secret rm \"$s\" >/dev/null 2>&1 || true"
    } else {
        "docker secret rm \"$s\" >/dev/null || rc=1"
    };
    Cmd::script(
        "secret-rm",
        Effect::Mutate,
        format!(
            "# remove labelled secrets\nrc=0\nfor s in $(docker secret ls -q {f}); do\n  {rm}\ndone\nexit $rc\n",
            f = filters(labels)
        ),
    )
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

/// `docker service logs` of one service: every replica's lines, prefixed with the replica
/// and its node; `follow` streams until interrupted.
pub fn service_logs(name: &str, follow: bool, since: Option<&str>) -> Cmd {
    let mut argv = vec!["docker", "service", "logs", "--timestamps"];
    if follow {
        argv.push("--follow");
    }
    if let Some(s) = since {
        argv.extend(["--since", s]);
    }
    argv.push(name);
    Cmd::argv("service-logs", Effect::Read, &argv)
}

/// The reverse proxy: one task per manager, published in host mode, on the shared edge
/// network, its conf.d bind-mounted from the host (written from outside, then reloaded).
pub fn proxy_create(
    image: &str,
    port: u16,
    https_port: Option<u16>,
    edge: &str,
    cluster: &str,
) -> Cmd {
    let label = format!("cloudflow.cluster={cluster}");
    let mut c = owned(
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
    );
    if let (Some(p), Body::Argv(argv)) = (https_port, &mut c.body) {
        let at = argv.len() - 1;
        argv.splice(
            at..at,
            [
                "--publish".to_string(),
                format!("mode=host,target=443,published={p},protocol=tcp"),
            ],
        );
    }
    c
}

/// An existing proxy also listens for HTTPS on `port` (nothing when it already does).
pub fn proxy_publish_https(port: u16) -> Cmd {
    Cmd::script(
        "proxy-publish-https",
        Effect::Mutate,
        format!(
            "# the proxy listens for HTTPS on {port}
             if ! docker service inspect --format '{{{{range .Endpoint.Spec.Ports}}}}{{{{.TargetPort}}}}/{{{{.PublishedPort}}}} {{{{end}}}}' {PROXY_SERVICE} | grep -qw '443/{port}'; then
               docker service update --detach=false --quiet --publish-add mode=host,target=443,published={port},protocol=tcp {PROXY_SERVICE}
             fi
"
        ),
    )
}

/// Put a new proxy configuration live on this host, in one round trip (the switch's critical
/// path): the configuration arrives on stdin (no argv limit however many routes there are),
/// is written beside the live file, tested by the proxy's own `nginx -t` in a test harness
/// that includes only it, and replaces the live file only when nginx accepts it; then a
/// graceful `nginx -s reload`. A refused configuration is removed and the live one stays, so a
/// proxy restart never meets a file nginx has not accepted; the error carries nginx's message.
/// Where no proxy task runs at the moment (it is restarting), the candidate is tested in a
/// throwaway container of the proxy's `image` and installed without a reload: the task that
/// starts next loads it.
pub fn proxy_apply(config: &str, image: &str) -> Cmd {
    let mut c = Cmd::script(
        "proxy-apply",
        Effect::Mutate,
        format!(
            "# apply a tested cloudflow proxy configuration on this host\n\
             set -e\n\
             mkdir -p {PROXY_CONF_DIR}\n\
             cat > {NEXT}\n\
             printf 'events {{}}\\nhttp {{\\n    include /etc/nginx/mime.types;\\n    include /etc/nginx/conf.d/{NEXT_NAME};\\n}}\\n' > {HARNESS}\n\
             c=$(docker ps -q --filter label=com.docker.swarm.service.name={PROXY_SERVICE} | head -n1)\n\
             bad=0\n\
             if [ -n \"$c\" ]; then\n\
             \x20 out=$(docker exec \"$c\" nginx -t -q -c /etc/nginx/conf.d/{HARNESS_NAME} 2>&1) || bad=1\n\
             else\n\
             \x20 out=$(docker run --rm -v {PROXY_CONF_DIR}:/etc/nginx/conf.d:ro --entrypoint nginx {img} -t -q -c /etc/nginx/conf.d/{HARNESS_NAME} 2>&1) || bad=1\n\
             fi\n\
             if [ $bad -ne 0 ]; then\n\
             \x20 rm -f {NEXT} {HARNESS}\n\
             \x20 echo \"nginx refused the new proxy configuration (the live one stays): $out\" >&2\n\
             \x20 exit 4\n\
             fi\n\
             rm -f {HARNESS}\n\
             mv {NEXT} {PROXY_CONF}\n\
             if [ -n \"$c\" ]; then docker exec \"$c\" nginx -s reload; fi\n",
            img = super::quote(image),
        ),
    );
    c.stdin = Some(secrecy::SecretString::from(config.to_string()));
    c
}

/// The candidate configuration and the test harness that includes it; neither matches the
/// `*.conf` that the proxy's own nginx.conf includes.
const NEXT_NAME: &str = "cloudflow.conf.next";
const NEXT: &str = "/etc/cloudflow/proxy/cloudflow.conf.next";
const HARNESS_NAME: &str = "cloudflow.test-harness";
const HARNESS: &str = "/etc/cloudflow/proxy/cloudflow.test-harness";
