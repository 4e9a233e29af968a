//! AWS end to end on one machine: the EC2 API is moto, and every instance it reports running
//! is a lab host container at exactly its private address (on a Docker network this test
//! creates with the subnet's CIDR) that boots with the real cloud-init from the instance's
//! user-data (tests/it/peers/ec2_twin.py). cloudflow reaches the instances at their private
//! addresses (`address: private`) — its own test hosts — never at moto's invented public ones.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::aws::Moto;
use crate::deploy_fixture::*;
use crate::support::*;

const CLUSTER: &str = "cfit-twin";
const LABEL: &str = "cloudflow-test=cfit-twin";
const NETWORK: &str = "cfit-twin-net";
/// The subnet cloudflow makes for `vpc: auto` (providers/aws/src/network.rs).
const SUBNET: &str = "10.77.1.0/24";
const TWIN_IMAGE: &str = "cloudflow-ec2-twin:v1";

/// The lab host image plus cloud-init, configured like a Debian AMI (default user `admin`
/// with passwordless sudo, created by cloud-init with the key pair's key). Its boot runs
/// cloud-init's stages in the order systemd would, sshd once the host keys exist.
fn twin_image() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        host_image();
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(
            ctx.path().join("boot"),
            "#!/bin/sh\n# The twin's first boot, in systemd's order: cloud-init local + network stages\n\
             # (users, keys, host keys), then sshd, then the config and final stages (runcmd).\n\
             cloud-init init --local > /var/log/twin-boot.log 2>&1\n\
             cloud-init init >> /var/log/twin-boot.log 2>&1\n\
             mkdir -p /run/sshd && /usr/sbin/sshd -E /var/log/sshd.log\n\
             cloud-init modules --mode config >> /var/log/twin-boot.log 2>&1\n\
             cloud-init modules --mode final >> /var/log/twin-boot.log 2>&1\n\
             exec sleep infinity\n",
        )
        .unwrap();
        std::fs::write(
            ctx.path().join("Dockerfile"),
            format!(
                "FROM {IMAGE}\n\
                 RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
                     cloud-init sudo locales && rm -rf /var/lib/apt/lists/* \
                     && sed -i 's/^# *en_US.UTF-8/en_US.UTF-8/' /etc/locale.gen && locale-gen >/dev/null\n\
                 RUN printf 'system_info:\\n  default_user:\\n    name: admin\\n' > /etc/cloud/cloud.cfg.d/01_debian_cloud.cfg\n\
                 COPY boot /usr/local/sbin/twin-boot\n\
                 RUN chmod 755 /usr/local/sbin/twin-boot\n\
                 CMD [\"/usr/local/sbin/twin-boot\"]\n"
            ),
        )
        .unwrap();
        let out = Command::new("docker")
            .args(["build", "-q", "-t", TWIN_IMAGE])
            .arg(ctx.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "twin image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// The watcher that turns moto's instances into booted containers, and the network they
/// live on. Dropping it removes both.
struct Twin {
    child: Child,
    log: std::path::PathBuf,
}

impl Twin {
    fn start(moto: &Moto, public_key: &Path, dir: &Path) -> Twin {
        twin_image();
        Twin::cleanup();
        docker_ok(&[
            "network", "create", "--subnet", SUBNET, "--label", LABEL, NETWORK,
        ]);
        let log = dir.join("twin.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/ec2_twin.py");
        let child = Command::new("python3")
            .arg(script)
            .args([&moto.url, CLUSTER, NETWORK, TWIN_IMAGE])
            .arg(public_key)
            .arg(&log)
            .arg(LABEL)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 with boto3");
        Twin { child, log }
    }

    fn events(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn containers() -> Vec<String> {
        docker_ok(&["ps", "-aq", "--filter", &format!("label={LABEL}")])
            .lines()
            .map(String::from)
            .collect()
    }

    fn cleanup() {
        for id in Twin::containers() {
            docker(&["rm", "-f", "-v", &id]);
        }
        docker(&["network", "rm", NETWORK]);
    }
}

impl Drop for Twin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Twin::cleanup();
    }
}

/// Docker on an instance (the twin container for `ip`).
fn on_instance(ip: &str, script: &str) -> String {
    let id = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label={LABEL}"),
        "--filter",
        &format!("network={NETWORK}"),
    ]);
    let name = id
        .lines()
        .find(|c| {
            docker_ok(&[
                "inspect",
                "-f",
                &format!("{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}"),
                c,
            ]) == ip
        })
        .unwrap_or_else(|| panic!("no twin at {ip}"))
        .to_string();
    docker_ok(&["exec", &name, "sh", "-c", script])
}

/// Cloudflow's timestamped progress lines about phases and waits (where the time went).
fn phase_times(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| l.contains("phase ") || l.contains("waiting for") || l.contains("aws: "))
        .map(|l| l.chars().take(110).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn aws_up_on_the_twin_forms_a_swarm_that_serves_scales_and_goes_away() {
    let dir = workdir();
    let d = dir.path();
    let (key, public) = keypair(d, "id_ed25519");
    let pubfile = d.join("id_ed25519.pub");
    std::fs::write(&pubfile, format!("{public}\n")).unwrap();
    let moto = Moto::start(&[]);
    let twin = Twin::start(&moto, &pubfile, d);
    let reg = Registry::start();
    let img = build_images(&reg, IMAGE);
    let ami = moto.ami();
    let spec = |cidr: &str| {
        format!(
            "name: {CLUSTER}\nprovider:\n  aws:\n    region: eu-west-1\n    instance_type: t3.medium\n    image: {ami}\n\
             \x20   workers: 2\n    ssh_key: {key}\n    user: admin\n    address: private\n    allowed_cidrs: [\"{cidr}\"]\n\
             registry:\n  insecure: [\"{pull}\"]\n\
             proxy: {{ domain: twin.test, image: \"{proxy}\", port: 80 }}\n\
             services:\n  web: {{ image: \"{v1}\", port: 8080, replicas: 2, health: {{ path: /healthz }} }}\n",
            key = key.display(),
            pull = reg.pull,
            proxy = img.proxy,
            v1 = img.web_v1,
        )
    };
    std::fs::write(d.join("cloudflow.yaml"), spec("10.77.0.0/16")).unwrap();
    let cf = |args: &[&str], extra: &[(&str, &str)]| moto.cloudflow(d, args, extra).0;

    // 3. Killed between RunInstances and the swarm join: the manager's RunInstances ran, the
    //    process dies; the next `up` finishes with the same instance and no second one.
    moto.kill_after_run_instances(d, &["up", "--yes"]);
    let first = moto.inventory(CLUSTER);
    assert_eq!(first["instances"], 1, "{first}");

    // 1. `up`: three instances boot through cloud-init, cloudflow forms the swarm on their
    //    private addresses, deploys web behind the proxy; a request through the proxy on the
    //    manager's address is answered by the service.
    let started = Instant::now();
    let up = cf(&["up", "--yes"], &[]).ok();
    let up_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "twin: up (3 instances) {up_secs:.1}s\n{}",
        phase_times(&up.stderr)
    );
    let inv = moto.inventory(CLUSTER);
    assert_eq!(
        (inv["instances"].as_u64(), inv["managers"].as_u64()),
        (Some(3), Some(1)),
        "{inv}"
    );
    let addresses = moto.boto3(&format!(
        r#"
f = [{{"Name": "tag:cloudflow:cluster", "Values": ["{CLUSTER}"]}}, {{"Name": "instance-state-name", "Values": ["running"]}}]
inst = [i for r in ec2.describe_instances(Filters=f)["Reservations"] for i in r["Instances"]]
role = lambda i: [t["Value"] for t in i["Tags"] if t["Key"] == "cloudflow:role"][0]
print(json.dumps({{i["InstanceId"]: [role(i), i["PrivateIpAddress"]] for i in inst}}))
"#
    ));
    let addresses: serde_json::Value = serde_json::from_str(&addresses).unwrap();
    let manager_ip = addresses
        .as_object()
        .unwrap()
        .values()
        .find(|v| v[0] == "manager")
        .map(|v| v[1].as_str().unwrap().to_string())
        .unwrap();
    let nodes = on_instance(
        &manager_ip,
        "docker node ls --format '{{.Status}} {{.ManagerStatus}}'",
    );
    assert_eq!(
        nodes.lines().filter(|l| l.starts_with("Ready")).count(),
        3,
        "{nodes}"
    );
    let advertised = on_instance(&manager_ip, "docker info --format '{{.Swarm.NodeAddr}}'");
    assert_eq!(
        advertised, manager_ip,
        "the swarm advertises the private address"
    );
    assert!(
        on_instance(&manager_ip, "cloud-init status").contains("done"),
        "cloud-init finished on the manager"
    );
    let addr = format!("{manager_ip}:80");
    let (status, body) = get(&addr, "web-default.twin.test", "/").unwrap();
    assert_eq!(
        (status, body.starts_with("version=1")),
        (200, true),
        "{body}"
    );
    let again = cf(&["up", "--yes"], &[]).ok();
    assert!(again.stdout.contains("no changes"), "{}", again.stdout);

    // 2. `nodes scale +1`: a fourth instance boots, joins and takes tasks; `-1` drains it
    //    first (the service keeps its replicas) and terminates it.
    let started = Instant::now();
    cf(&["nodes", "scale", "+1"], &[]).ok();
    eprintln!(
        "twin: nodes scale +1 {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let nodes = on_instance(&manager_ip, "docker node ls --format '{{.Status}}'");
    assert_eq!(
        nodes.lines().filter(|l| *l == "Ready").count(),
        4,
        "{nodes}"
    );
    cf(&["scale", "web", "8"], &[]).ok();
    let spread = on_instance(
        &manager_ip,
        "docker service ps default-web-blue --filter desired-state=running --format '{{.Node}}' | sort -u | wc -l",
    );
    assert_eq!(spread, "4", "the new node takes tasks");
    cf(&["nodes", "scale", "-1"], &[]).ok();
    // The drained node's tasks were started elsewhere before it left: all 8 keep running.
    eventually(
        "8 web replicas running after the drain",
        Duration::from_secs(60),
        || {
            on_instance(
                &manager_ip,
                "docker service ps default-web-blue --filter desired-state=running --format '{{.CurrentState}}' | grep -c Running || true",
            ) == "8"
        },
    );
    assert_eq!(moto.inventory(CLUSTER)["instances"], 3);
    let nodes = on_instance(&manager_ip, "docker node ls --format '{{.Status}}'");
    assert_eq!(nodes.lines().count(), 3, "{nodes}");

    // 4. A rule removed behind cloudflow's back: `plan` shows it, `up` puts it back; a changed
    //    allowed_cidrs is applied (the old rule revoked).
    moto.boto3(&format!(
        r#"
g = ec2.describe_security_groups(Filters=[{{"Name": "tag:cloudflow:cluster", "Values": ["{CLUSTER}"]}}])["SecurityGroups"][0]
ec2.revoke_security_group_ingress(GroupId=g["GroupId"], IpPermissions=[{{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{{"CidrIp": "10.77.0.0/16"}}]}}])
"#
    ));
    let plan = cf(&["plan"], &[]).ok();
    assert!(
        plan.stdout
            .contains("update security-group cloudflow-cfit-twin: allow tcp 22 from 10.77.0.0/16"),
        "{}",
        plan.stdout
    );
    cf(&["up", "--yes"], &[]).ok();
    assert!(cf(&["up", "--yes"], &[]).ok().stdout.contains("no changes"));
    std::fs::write(d.join("cloudflow.yaml"), spec("10.77.1.0/24")).unwrap();
    let plan = cf(&["plan"], &[]).ok().stdout;
    for want in [
        "allow tcp 22 from 10.77.1.0/24",
        "allow tcp 80 from 10.77.1.0/24",
        "revoke tcp 22 from 10.77.0.0/16",
        "revoke tcp 80 from 10.77.0.0/16",
    ] {
        assert!(plan.contains(want), "{want} missing:\n{plan}");
    }
    cf(&["up", "--yes"], &[]).ok();
    let rules = moto.boto3(&format!(
        r#"
g = ec2.describe_security_groups(Filters=[{{"Name": "tag:cloudflow:cluster", "Values": ["{CLUSTER}"]}}])["SecurityGroups"][0]
print(sorted(r["CidrIp"] for p in g["IpPermissions"] for r in p.get("IpRanges", [])))
"#
    ));
    assert_eq!(rules, "['10.77.1.0/24', '10.77.1.0/24']");

    // `down` without the key file: nothing tagged in the API, no twin container left.
    std::fs::remove_file(&key).unwrap();
    std::fs::remove_file(&pubfile).unwrap();
    let started = Instant::now();
    cf(&["down", "--yes"], &[]).ok();
    eprintln!("twin: down {:.1}s", started.elapsed().as_secs_f64());
    moto.assert_nothing_tagged(CLUSTER);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Twin::containers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        Twin::containers().is_empty(),
        "twin containers left: {:?}",
        twin.events()
    );
    assert!(
        twin.events()
            .iter()
            .filter(|e| e.starts_with("boot "))
            .count()
            >= 4
    );
}
