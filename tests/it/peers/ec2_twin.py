"""The EC2 twin: for every instance moto reports running, a lab host container at exactly the
instance's private address that boots with the real cloud-init (NoCloud seed: the instance's
user-data, and meta-data with its id and the key pair's public key, as EC2's metadata service
would give them). Terminated instances lose their container.

    python3 ec2_twin.py ENDPOINT CLUSTER NETWORK IMAGE PUBLIC_KEY_FILE LOG LABEL

Runs until killed; every change is a line in LOG ("boot i-… 10.77.1.4", "gone i-…").
"""
import base64
import io
import subprocess
import sys
import tarfile
import time

import boto3

endpoint, cluster, network, image, key_file, log_path, label = sys.argv[1:8]
public_key = open(key_file).read().strip()
ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name="eu-west-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
FLAGS = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
         "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
         "--security-opt", "systempaths=unconfined",
         "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/var/lib/docker:exec"]


def log(line):
    with open(log_path, "a") as f:
        f.write(line + "\n")


def docker(*args, stdin=None):
    return subprocess.run(["docker", *args], input=stdin, capture_output=True)


def seed(instance):
    iid = instance["InstanceId"]
    attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
    user_data = base64.b64decode(attr.get("UserData", {}).get("Value", ""))
    hostname = "ip-" + instance["PrivateIpAddress"].replace(".", "-")
    meta = f"instance-id: {iid}\nlocal-hostname: {hostname}\npublic-keys:\n  - {public_key}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("user-data", user_data), ("meta-data", meta)):
            info = tarfile.TarInfo("var/lib/cloud/seed/nocloud/" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hostname, buf.getvalue()


def boot(instance):
    iid, ip = instance["InstanceId"], instance["PrivateIpAddress"]
    key = instance.get("KeyName")
    if key != f"cloudflow-{cluster}":
        log(f"refuse {iid}: key pair {key}")
        return
    hostname, tar = seed(instance)
    name = f"cf-twin-{iid}"
    r = docker("create", "--name", name, "--hostname", hostname, "--network", network, "--ip", ip,
               "--label", label, "--label", f"ec2-instance={iid}", *FLAGS, image)
    if r.returncode != 0:
        log(f"error {iid}: {r.stderr.decode().strip()}")
        return
    docker("cp", "-", f"{name}:/", stdin=tar)
    docker("start", name)
    log(f"boot {iid} {ip}")


def containers():
    out = docker("ps", "-a", "--filter", f"label={label}", "--format", '{{.Label "ec2-instance"}}').stdout
    return set(out.decode().split())


while True:
    try:
        f = [{"Name": "tag:cloudflow:cluster", "Values": [cluster]}]
        live = {}
        for r in ec2.describe_instances(Filters=f)["Reservations"]:
            for i in r["Instances"]:
                if i["State"]["Name"] in ("pending", "running"):
                    live[i["InstanceId"]] = i
        have = containers()
        for iid, inst in live.items():
            if iid not in have and inst["State"]["Name"] == "running":
                boot(inst)
        for iid in have - set(live):
            docker("rm", "-f", "-v", f"cf-twin-{iid}")
            log(f"gone {iid}")
    except Exception as e:  # the API server going away ends the test, not this loop's job
        log(f"error: {e}")
    time.sleep(0.3)
