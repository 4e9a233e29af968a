#!/bin/sh
# A stand-in for the k3s binary, for cloudflow's tests: no k3s binary can be had here.
# It does what cloudflow relies on k3s to do on a host, with only the API server faked:
#   k3s server   (first server) starts the fake Kubernetes API (kube_fake.py, appended to this
#                file after the #__KUBE_FAKE__ line) on :6443 over TLS, writes the kubeconfig
#                to /etc/rancher/k3s/k3s.yaml (server https://127.0.0.1:6443, as k3s does) and the
#                join token to /var/lib/rancher/k3s/server/node-token, and registers its node;
#   k3s server   with `server:` in /etc/rancher/k3s/config.yaml joins: registers its node as a
#                control-plane node with the first server;
#   k3s agent    registers its node (a worker) with the server named in the config;
#   k3s --version / check-config.
# Settings come from /etc/rancher/k3s/config.yaml (server, token-file, node-ip, tls-san), as
# with k3s. Processes stay in the foreground like k3s does (cloudflow runs them as a service or
# detached). The environment (HTTP_PROXY, ...) is recorded in /var/lib/rancher/k3s/env so a test
# can see what the service got.
set -eu
CONFIG=/etc/rancher/k3s/config.yaml
DATA=/var/lib/rancher/k3s
conf() { [ -f "$CONFIG" ] && sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" "$CONFIG" | head -n1 || true; }
conf_list() { [ -f "$CONFIG" ] && sed -n "/^$1:/,/^[^ -]/s/^ *- *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" "$CONFIG" || true; }

register() { # server-url token role
  python3 - "$1" "$2" "$3" "$(hostname)" "$(conf node-ip)" <<'PY'
import json, ssl, sys, time, urllib.request
server, token, role, name, ip = sys.argv[1:6]
labels = {"kubernetes.io/hostname": name, "node.kubernetes.io/instance-type": "k3s"}
if role == "server":
    labels["node-role.kubernetes.io/control-plane"] = "true"
node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": ip or "127.0.0.1"},
                                 {"type": "Hostname", "address": name}],
                   "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "message": "kubelet is posting ready status"}]}}
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # an agent trusts the server by the token's CA hash in k3s
for attempt in range(120):
    try:
        req = urllib.request.Request(server + "/api/v1/nodes", data=json.dumps(node).encode(),
                                     headers={"Authorization": "Bearer " + token,
                                              "Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, context=ctx, timeout=5)
        break
    except urllib.error.HTTPError as e:
        if e.code == 409:
            break
        time.sleep(0.5)
    except Exception:
        time.sleep(0.5)
else:
    sys.exit("k3s stand-in: could not register node %s with %s" % (name, server))
PY
}

case "${1:-}" in
  --version|-v)
    echo "k3s version v1.33.5+k3s1 (cloudflow test stand-in)"
    ;;
  server)
    mkdir -p "$DATA/server" /etc/rancher/k3s
    env | grep -iE '^(https?_proxy|no_proxy)=' > "$DATA/env" || true
    join=$(conf server)
    if [ -n "$join" ]; then
      token=$(cat "$(conf token-file)")
      register "$join" "${token##*:}" server
      exec sleep infinity
    fi
    [ -f "$DATA/server/token" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$DATA/server/token"
    token=$(cat "$DATA/server/token")
    echo "K10fake::server:$token" > "$DATA/server/node-token"
    chmod 600 "$DATA/server/node-token" "$DATA/server/token"
    sed -n '/^#__KUBE_FAKE__$/,$p' "$0" | tail -n +2 > "$DATA/server/kube_fake.py"
    sans=""
    for s in $(conf node-ip) $(conf_list tls-san); do sans="$sans --tls-san $s"; done
    (
      # The node registers itself once the API answers.
      sleep 1
      register https://127.0.0.1:6443 "$token" server
    ) &
    # shellcheck disable=SC2086
    exec python3 "$DATA/server/kube_fake.py" --host 0.0.0.0 --port 6443 \
      --tls-auto "$DATA/server/tls" $sans --token "$token" \
      --kubeconfig-out /etc/rancher/k3s/k3s.yaml --state-file "$DATA/server/state.json" \
      --log "$DATA/server/api.log" --ready-seconds 0.3 --terminate-seconds 0.3
    ;;
  agent)
    mkdir -p "$DATA/agent"
    env | grep -iE '^(https?_proxy|no_proxy)=' > "$DATA/env" || true
    token=$(cat "$(conf token-file)")
    register "$(conf server)" "${token##*:}" agent
    exec sleep infinity
    ;;
  *)
    echo "k3s stand-in: unknown command ${1:-}" >&2
    exit 1
    ;;
esac
exit 0
#__KUBE_FAKE__
