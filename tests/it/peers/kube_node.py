#!/usr/bin/env python3
"""A node for kube_fake.py that really runs the pods a label selector names, the way a
kubelet would, in one Docker container the test started (its image, its network):

* each new pod's volumes are read from the API (ConfigMap data; Secret data, base64, with the
  volume's defaultMode; an optional Secret that does not exist is an empty directory) and
  written into the host directories bind-mounted at the pod's mount paths (--mount);
* the container's nginx checks the result (`nginx -t`) and reloads (`nginx -s reload`); only
  then is the pod Ready: the file <namespace>_<pod> in --readiness-dir, which kube_fake.py
  (--external-readiness) waits for. A configuration nginx refuses leaves the pod unready, as a
  crashing container would.

The fake's own kubelet still does the rest (scheduling, status); this only decides readiness
and serves, so a test can send real traffic (an ACME CA's validation, curl) to what the API
objects say.

Usage:
  kube_node.py --kubeconfig FILE --namespace NS --selector SEL --container NAME
               --mount PATH=HOSTDIR [--mount ...] --readiness-dir DIR [--log FILE]
"""

import argparse
import base64
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request


def api(cfg, path):
    server = cfg["clusters"][0]["cluster"]["server"]
    token = cfg["users"][0]["user"].get("token")
    req = urllib.request.Request(server + path)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    ctx = None
    if server.startswith("https"):
        ctx = ssl.create_default_context()
        ca = cfg["clusters"][0]["cluster"].get("certificate-authority-data")
        if ca:
            ctx.load_verify_locations(cadata=base64.b64decode(ca).decode())
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def log(args, msg):
    line = "%s %s\n" % (time.strftime("%H:%M:%S"), msg)
    if args.log:
        with open(args.log, "a") as f:
            f.write(line)
    else:
        sys.stderr.write(line)


def volume_files(cfg, ns, vol):
    """{file name: (bytes, mode)} of a volume, or None when it cannot be mounted yet."""
    if "configMap" in vol:
        src = vol["configMap"]
        obj = api(cfg, "/api/v1/namespaces/%s/configmaps/%s" % (ns, src["name"]))
        mode = src.get("defaultMode", 0o644)
        if obj is None:
            return {} if src.get("optional") else None
        return {k: (v.encode(), mode) for k, v in (obj.get("data") or {}).items()}
    if "secret" in vol:
        src = vol["secret"]
        obj = api(cfg, "/api/v1/namespaces/%s/secrets/%s" % (ns, src["secretName"]))
        mode = src.get("defaultMode", 0o644)
        if obj is None:
            return {} if src.get("optional") else None
        return {k: (base64.b64decode(v), mode) for k, v in (obj.get("data") or {}).items()}
    return None


def sync_dir(host_dir, files):
    os.makedirs(host_dir, exist_ok=True)
    for name in os.listdir(host_dir):
        if name not in files:
            os.remove(os.path.join(host_dir, name))
    for name, (data, mode) in files.items():
        tmp = os.path.join(host_dir, "." + name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, os.path.join(host_dir, name))


def workers(container):
    """The nginx master's (PID 1's) children now, or None when that cannot be read."""
    r = subprocess.run(["docker", "exec", container, "cat", "/proc/1/task/1/children"],
                       capture_output=True, text=True)
    return set(r.stdout.split()) if r.returncode == 0 else None


def start_pod(args, cfg, mounts, pod):
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    spec = pod["spec"]
    vols = {v["name"]: v for v in spec.get("volumes") or []}
    for c in spec.get("containers") or []:
        for vm in c.get("volumeMounts") or []:
            host_dir = mounts.get(vm["mountPath"])
            if host_dir is None:
                log(args, "%s: no host directory for mount %s" % (name, vm["mountPath"]))
                return False
            files = volume_files(cfg, ns, vols.get(vm["name"], {}))
            if files is None:
                log(args, "%s: volume %s cannot be mounted yet" % (name, vm["name"]))
                return False
            sync_dir(host_dir, files)
    check = subprocess.run(["docker", "exec", args.container, "nginx", "-t"], capture_output=True, text=True)
    if check.returncode != 0:
        log(args, "%s: nginx refuses the configuration: %s" % (name, check.stderr.strip()[-400:]))
        return False
    before = workers(args.container)
    subprocess.run(["docker", "exec", args.container, "nginx", "-s", "reload"], check=True, capture_output=True)
    # Serving once the master has started workers with the new configuration.
    deadline = time.time() + 10
    while time.time() < deadline:
        now = workers(args.container)
        if before is None or now is None:
            time.sleep(0.5)
            break
        if now - before:
            break
        time.sleep(0.05)
    log(args, "%s: serving" % name)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--selector", required=True)
    ap.add_argument("--container", required=True)
    ap.add_argument("--mount", action="append", default=[], help="PATH=HOSTDIR")
    ap.add_argument("--readiness-dir", required=True)
    ap.add_argument("--log")
    args = ap.parse_args()
    mounts = dict(m.split("=", 1) for m in args.mount)
    with open(args.kubeconfig) as f:
        cfg = json.load(f)
    served = set()
    retry_at = {}  # a pod that could not start is tried again a second later, not at once
    while True:
        try:
            pods = api(cfg, "/api/v1/namespaces/%s/pods?labelSelector=%s"
                       % (args.namespace, urllib.parse.quote(args.selector))) or {"items": []}
            for pod in pods["items"]:
                m = pod["metadata"]
                if m.get("deletionTimestamp") or m["uid"] in served:
                    continue
                if time.time() < retry_at.get(m["uid"], 0):
                    continue
                retry_at[m["uid"]] = time.time() + 1.0
                if start_pod(args, cfg, mounts, pod):
                    served.add(m["uid"])
                    with open(os.path.join(args.readiness_dir, "%s_%s" % (m["namespace"], m["name"])), "w"):
                        pass
        except Exception as e:  # the API restarting, a container not up yet: try again
            log(args, "error: %r" % (e,))
        time.sleep(0.1)


if __name__ == "__main__":
    main()
