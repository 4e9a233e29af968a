//! The AWS provider against a real EC2 API server (moto, from PyPI) on loopback. Only
//! `--until provision` and `down`: nothing ever connects to the addresses moto invents.
//! What exists is checked with boto3, a client independent of ours; API calls are counted at
//! the server (tests/it/peers/moto_server.py).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::support::*;

pub(crate) struct Moto {
    child: Child,
    pub(crate) url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub(crate) fn start(env: &[(&str, &str)]) -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = workdir();
        let log = dir.path().join("actions.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/peers/moto_server.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(&log)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("moto.err")).unwrap())
            .spawn()
            .expect("python3 with moto[server] (bash .ci/setup installs it)");
        wait_for_port("127.0.0.1", port);
        Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/nonexistent".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".into()),
        ]
    }

    pub(crate) fn actions(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Run cloudflow against this server; returns the run and the API actions it made.
    pub(crate) fn cloudflow(
        &self,
        dir: &Path,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> (Run, Vec<String>) {
        let before = self.actions().len();
        let base = self.env();
        let env: Vec<(&str, &str)> = base
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(extra.iter().copied())
            .collect();
        let run = cloudflow_env(dir, args, &env);
        let actions = self.actions()[before..].to_vec();
        (run, actions)
    }

    /// Run a Python snippet with `ec2`, a boto3 client of this server, in scope; its stdout.
    pub(crate) fn boto3(&self, body: &str) -> String {
        let script = format!(
            "import base64, boto3, json\nec2 = boto3.client(\"ec2\", endpoint_url=\"{}\", region_name=\"eu-west-1\", \
             aws_access_key_id=\"testing\", aws_secret_access_key=\"testing\")\n{body}",
            self.url
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What exists for `cluster`, seen through boto3.
    pub(crate) fn inventory(&self, cluster: &str) -> Value {
        let out = self.boto3(&format!(
            r#"
f = [{{"Name": "tag:cloudflow:cluster", "Values": ["{cluster}"]}}]
live = [{{"Name": "instance-state-name", "Values": ["pending", "running"]}}]
inst = [i for r in ec2.describe_instances(Filters=f + live)["Reservations"] for i in r["Instances"]]
role = lambda i: [t["Value"] for t in i.get("Tags", []) if t["Key"] == "cloudflow:role"]
ud = ""
if inst:
    attr = ec2.describe_instance_attribute(InstanceId=inst[0]["InstanceId"], Attribute="userData")
    ud = base64.b64decode(attr.get("UserData", {{}}).get("Value", "")).decode()
print(json.dumps({{
    "instances": len(inst),
    "managers": sum(1 for i in inst if role(i) == ["manager"]),
    "workers": sum(1 for i in inst if role(i) == ["worker"]),
    "security_groups": len(ec2.describe_security_groups(Filters=f)["SecurityGroups"]),
    "key_pairs": len(ec2.describe_key_pairs(Filters=f)["KeyPairs"]),
    "vpcs": len(ec2.describe_vpcs(Filters=f)["Vpcs"]),
    "subnets": len(ec2.describe_subnets(Filters=f)["Subnets"]),
    "internet_gateways": len(ec2.describe_internet_gateways(Filters=f)["InternetGateways"]),
    "route_tables": len(ec2.describe_route_tables(Filters=f)["RouteTables"]),
    "user_data": ud,
}}))
"#
        ));
        serde_json::from_str(&out).unwrap()
    }

    fn terminate_a_worker(&self, cluster: &str) {
        self.boto3(&format!(
            r#"
f = [{{"Name": "tag:cloudflow:role", "Values": ["worker"]}}, {{"Name": "tag:cloudflow:cluster", "Values": ["{cluster}"]}}, {{"Name": "instance-state-name", "Values": ["running"]}}]
ids = [i["InstanceId"] for r in ec2.describe_instances(Filters=f)["Reservations"] for i in r["Instances"]]
ec2.terminate_instances(InstanceIds=ids[:1])
"#
        ));
    }

    /// Run cloudflow with `args` until it pauses right after its first RunInstances (the
    /// fault hook), then SIGKILL it there: between RunInstances and its record.
    pub(crate) fn kill_after_run_instances(&self, dir: &Path, args: &[&str]) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cloudflow"))
            .current_dir(dir)
            .args(args)
            .envs(self.env())
            .env("CLOUDFLOW_FAULT_PAUSE", "after-run-instances")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            let paused = line.contains("fault: paused");
            seen.push(line);
            if paused {
                break;
            }
        }
        assert!(
            seen.last().is_some_and(|l| l.contains("fault: paused")),
            "never reached the pause point:\n{}",
            seen.join("\n")
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// After `down`: no instance, security group, key pair, VPC or subnet tagged `cluster`.
    pub(crate) fn assert_nothing_tagged(&self, cluster: &str) {
        let inv = self.inventory(cluster);
        for k in [
            "instances",
            "security_groups",
            "key_pairs",
            "vpcs",
            "subnets",
            "internet_gateways",
            "route_tables",
        ] {
            assert_eq!(inv[k], 0, "{k} left after down: {inv}");
        }
    }

    pub(crate) fn ami(&self) -> String {
        self.boto3(r#"print(ec2.describe_images()["Images"][0]["ImageId"])"#)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(dir: &Path, cluster: &str, ami: &str, workers: u32) {
    let (key, _) = keypair(dir, "id_ed25519");
    std::fs::write(
        dir.join("cloudflow.yaml"),
        format!(
            "name: {cluster}\nprovider:\n  aws:\n    region: eu-west-1\n    instance_type: t3.medium\n    image: {ami}\n\
             \x20   managers: 1\n    workers: {workers}\n    ssh_key: {}\n    vpc: auto\n    allowed_cidrs: [203.0.113.0/24]\n\
             registry:\n  insecure: [\"10.0.0.2:5000\"]\norchestrator: swarm\n",
            key.display()
        ),
    )
    .unwrap();
}

fn count(actions: &[String], name: &str) -> usize {
    actions.iter().filter(|a| *a == name).count()
}

fn position(actions: &[String], name: &str) -> usize {
    actions
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("{name} not called: {actions:?}"))
}

#[test]
fn aws_provision_reconcile_scale_and_down_leave_nothing() {
    let moto = Moto::start(&[]);
    let ami = moto.ami();
    let dir = workdir();
    let d = dir.path();
    spec(d, "cfit-aws", &ami, 2);

    let started = std::time::Instant::now();
    let (run, calls) = moto.cloudflow(d, &["up", "--yes", "--until", "provision"], &[]);
    run.ok();
    eprintln!(
        "figure: up --until provision, 3 instances: {:.2}s, {} API calls",
        started.elapsed().as_secs_f64(),
        calls.len()
    );
    assert_eq!(
        count(&calls, "RunInstances"),
        2,
        "one batched RunInstances per role: {calls:?}"
    );
    let inv = moto.inventory("cfit-aws");
    assert_eq!(
        (
            inv["instances"].as_u64(),
            inv["managers"].as_u64(),
            inv["workers"].as_u64()
        ),
        (Some(3), Some(1), Some(2))
    );
    assert_eq!(
        (
            inv["vpcs"].as_u64(),
            inv["security_groups"].as_u64(),
            inv["key_pairs"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
    let user_data = inv["user_data"].as_str().unwrap();
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(user_data.contains("/usr/local/sbin/cloudflow-install-docker && if [ -d /run/systemd/system ]; then systemctl daemon-reload && systemctl enable --now docker; else /usr/local/sbin/cloudflow-start-docker; fi"));
    assert!(
        user_data.contains("  - path: /etc/docker/daemon.json"),
        "registry settings ride along: {user_data}"
    );

    // A second run finds its instances by tag and makes none.
    let (run, calls) = moto.cloudflow(d, &["up", "--yes", "--until", "provision"], &[]);
    assert!(run.ok().stdout.contains("no changes"));
    assert_eq!(count(&calls, "RunInstances"), 0);

    // Relative scaling: +2 then -1.
    moto.cloudflow(d, &["nodes", "scale", "+2"], &[]).0.ok();
    assert_eq!(moto.inventory("cfit-aws")["instances"], 5);
    moto.cloudflow(d, &["nodes", "scale", "-1"], &[]).0.ok();
    assert_eq!(moto.inventory("cfit-aws")["workers"], 3);
    // The live size is kept by the next `up` (the spec still says 2 workers).
    let (run, _) = moto.cloudflow(d, &["up", "--yes", "--until", "provision"], &[]);
    assert!(run.ok().stdout.contains("no changes"));

    // An instance terminated behind cloudflow's back is replaced, and only that one.
    moto.terminate_a_worker("cfit-aws");
    assert_eq!(moto.inventory("cfit-aws")["instances"], 3);
    let (run, calls) = moto.cloudflow(d, &["up", "--yes", "--until", "provision"], &[]);
    run.ok();
    assert_eq!(count(&calls, "RunInstances"), 1);
    assert_eq!(moto.inventory("cfit-aws")["instances"], 4);

    let started = std::time::Instant::now();
    let (run, calls) = moto.cloudflow(d, &["down", "--yes"], &[]);
    run.ok();
    eprintln!(
        "figure: down, 4 instances: {:.2}s, {} API calls",
        started.elapsed().as_secs_f64(),
        calls.len()
    );
    // Reverse dependency order, each step finished before the next.
    assert!(position(&calls, "TerminateInstances") < position(&calls, "DeleteSecurityGroup"));
    assert!(position(&calls, "DeleteSecurityGroup") < position(&calls, "DeleteVpc"));
    assert!(position(&calls, "DetachInternetGateway") < position(&calls, "DeleteVpc"));
    assert!(position(&calls, "DeleteSubnet") < position(&calls, "DeleteVpc"));
    moto.assert_nothing_tagged("cfit-aws");
    assert!(
        moto.cloudflow(d, &["down", "--yes"], &[])
            .0
            .ok()
            .stdout
            .contains("no changes")
    );
}

#[test]
fn aws_killed_after_run_instances_recovers_without_orphans() {
    let moto = Moto::start(&[]);
    let ami = moto.ami();
    let dir = workdir();
    let d = dir.path();
    spec(d, "cfit-kill", &ami, 2);

    moto.kill_after_run_instances(d, &["up", "--yes", "--until", "provision"]);
    assert_eq!(
        moto.inventory("cfit-kill")["instances"],
        1,
        "the manager batch was launched before the kill"
    );

    moto.cloudflow(d, &["up", "--yes", "--until", "provision"], &[])
        .0
        .ok();
    let inv = moto.inventory("cfit-kill");
    assert_eq!(
        (inv["instances"].as_u64(), inv["managers"].as_u64()),
        (Some(3), Some(1)),
        "{inv}"
    );
    assert_eq!(
        (inv["vpcs"].as_u64(), inv["security_groups"].as_u64()),
        (Some(1), Some(1))
    );

    moto.cloudflow(d, &["down", "--yes"], &[]).0.ok();
    moto.assert_nothing_tagged("cfit-kill");
}

#[test]
fn aws_bad_region_type_and_image_name_the_field_and_bad_credentials_say_so() {
    let moto = Moto::start(&[]);
    let ami = moto.ami();
    for (from, to, field) in [
        (
            "region: eu-west-1",
            "region: xx-nowhere-1",
            "provider.aws.region",
        ),
        (
            "instance_type: t3.medium",
            "instance_type: t3.bogus",
            "provider.aws.instance_type",
        ),
        (ami.as_str(), "ami-0000000000deadbee", "provider.aws.image"),
    ] {
        let dir = workdir();
        spec(dir.path(), "cfit-bad", &ami, 1);
        let path = dir.path().join("cloudflow.yaml");
        std::fs::write(
            &path,
            std::fs::read_to_string(&path)
                .unwrap()
                .replace(&format!("{from}\n"), &format!("{to}\n")),
        )
        .unwrap();
        let (run, calls) =
            moto.cloudflow(dir.path(), &["up", "--yes", "--until", "provision"], &[]);
        assert_eq!(run.code, 2, "{field}: {}", run.stderr);
        assert!(
            run.stderr.contains(field),
            "{field} not named: {}",
            run.stderr
        );
        assert_eq!(
            count(&calls, "RunInstances")
                + count(&calls, "CreateVpc")
                + count(&calls, "ImportKeyPair"),
            0,
            "nothing created"
        );
    }

    // A server that checks credentials: the test's keys are unknown to it.
    let strict = Moto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let dir = workdir();
    spec(dir.path(), "cfit-creds", &ami, 1);
    let (run, _) = strict.cloudflow(dir.path(), &["up", "--yes", "--until", "provision"], &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("AWS refused the credentials"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.matches("error:").count(), 1);
}

#[test]
fn aws_api_calls_do_not_grow_per_instance() {
    let moto = Moto::start(&[]);
    let ami = moto.ami();
    let mut figures = Vec::new();
    for (cluster, workers) in [("cfit-n3", 2), ("cfit-n30", 29)] {
        let dir = workdir();
        spec(dir.path(), cluster, &ami, workers);
        let started = std::time::Instant::now();
        let (run, calls) =
            moto.cloudflow(dir.path(), &["up", "--yes", "--until", "provision"], &[]);
        run.ok();
        let up_secs = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let (run, down_calls) = moto.cloudflow(dir.path(), &["down", "--yes"], &[]);
        run.ok();
        let down_secs = started.elapsed().as_secs_f64();
        eprintln!(
            "figure: {} instances: up --until provision {} API calls in {up_secs:.2}s; down {} API calls in {down_secs:.2}s",
            workers + 1,
            calls.len(),
            down_calls.len()
        );
        figures.push((calls.len(), down_calls.len()));
    }
    assert!(
        figures[1].0 <= figures[0].0 + 2,
        "up calls grew with instances: {figures:?}"
    );
    assert!(
        figures[1].1 <= figures[0].1 + 2,
        "down calls grew with instances: {figures:?}"
    );
}

/// A crash can leave the network half made (a route table without its route or association,
/// a subnet without public IPs on launch, a gateway detached): `plan` shows what the next
/// `up` finishes, and `up` finishes it (checked with boto3).
#[test]
fn aws_half_made_network_is_finished_by_the_next_up() {
    let moto = Moto::start(&[]);
    let ami = moto.ami();
    let dir = workdir();
    let d = dir.path();
    spec(d, "cfit-aws-net", &ami, 0);
    moto.cloudflow(d, &["up", "--yes", "--until", "provision"], &[])
        .0
        .ok();
    let network = r#"
f = [{"Name": "tag:cloudflow:cluster", "Values": ["cfit-aws-net"]}]
rt = ec2.describe_route_tables(Filters=f)["RouteTables"][0]
sn = ec2.describe_subnets(Filters=f)["Subnets"][0]
gw = ec2.describe_internet_gateways(Filters=f)["InternetGateways"][0]
state = {
    "default_route": any(r.get("DestinationCidrBlock") == "0.0.0.0/0" and r.get("GatewayId") == gw["InternetGatewayId"] for r in rt["Routes"]),
    "associated": any(a.get("SubnetId") == sn["SubnetId"] for a in rt["Associations"]),
    "public_ip": sn["MapPublicIpOnLaunch"],
    "attached": len(gw.get("Attachments", [])) > 0,
}
"#;
    let healthy = moto.boto3(&format!(
        "{network}print(json.dumps(state, sort_keys=True))"
    ));
    assert_eq!(
        healthy,
        r#"{"associated": true, "attached": true, "default_route": true, "public_ip": true}"#
    );
    moto.boto3(&format!(
        "{network}\
         ec2.delete_route(RouteTableId=rt[\"RouteTableId\"], DestinationCidrBlock=\"0.0.0.0/0\")\n\
         for a in rt[\"Associations\"]:\n    ec2.disassociate_route_table(AssociationId=a[\"RouteTableAssociationId\"])\n\
         ec2.modify_subnet_attribute(SubnetId=sn[\"SubnetId\"], MapPublicIpOnLaunch={{\"Value\": False}})\n"
    ));
    let (plan, _) = moto.cloudflow(d, &["plan", "--until", "provision"], &[]);
    let plan = plan.ok().stdout;
    for want in [
        "update subnet cloudflow-cfit-aws-net: give instances a public address on launch",
        "update route-table cloudflow-cfit-aws-net: add the default route through the gateway",
        "update route-table cloudflow-cfit-aws-net: associate it with the subnet",
    ] {
        assert!(plan.contains(want), "{want} missing:\n{plan}");
    }
    let (run, calls) = moto.cloudflow(d, &["up", "--yes", "--until", "provision"], &[]);
    run.ok();
    for call in [
        "ModifySubnetAttribute",
        "CreateRoute",
        "AssociateRouteTable",
    ] {
        assert_eq!(count(&calls, call), 1, "{call}: {calls:?}");
    }
    assert_eq!(count(&calls, "RunInstances"), 0);
    assert_eq!(
        moto.boto3(&format!(
            "{network}print(json.dumps(state, sort_keys=True))"
        )),
        healthy
    );
    let (again, _) = moto.cloudflow(d, &["up", "--yes", "--until", "provision"], &[]);
    assert!(again.ok().stdout.contains("no changes"));
    moto.cloudflow(d, &["down", "--yes"], &[]).0.ok();
}
