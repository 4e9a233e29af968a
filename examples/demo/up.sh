#!/usr/bin/env bash
# cloudflow's whole job in one command: a 3-host lab swarm on this machine's Docker engine, a
# registry that both the lab hosts and this machine reach, the reverse proxy, and a web service
# deployed blue-green behind it. Nothing comes from a public hub: the web app is a static C
# program, the proxy is nginx from Debian packages on the lab host image.
#
#   bash examples/demo/up.sh      # writes demo.yaml and demo.env here; prints a curl line
#
# Needs what `bash .ci/setup` installs (dockerd, debootstrap, docker-registry, gcc, curl) and
# `cloudflow` on PATH (or CLOUDFLOW=/path/to/cloudflow). Images and the registry's data are kept
# in ${XDG_CACHE_HOME:-~/.cache}/cloudflow-demo; a second run reuses them. The registry keeps
# running afterwards (it is this machine's, not the lab's): `bash examples/demo/stop-registry.sh`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cf="${CLOUDFLOW:-cloudflow}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/cloudflow-demo"
port="${DEMO_REGISTRY_PORT:-5000}"
mkdir -p "$cache"
say() { echo "demo: $*" >&2; }

# This machine's address as the lab hosts reach it (not a Docker bridge address: lab hosts run
# their own dockerd, whose bridges take those ranges inside them).
addr="$( (ip -4 route get 1.1.1.1 2>/dev/null || true) | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i+1); exit}}')"
[ -n "$addr" ] || addr="$(hostname -I | tr ' ' '\n' | grep -E '^[0-9.]+$' | grep -v '^172\.17\.' | head -n1 || true)"
[ -n "$addr" ] || { say "cannot tell this machine's address (ip route / hostname -I)"; exit 1; }
reg="$addr:$port"

# 1. A registry: Debian's docker-registry (the distribution registry), on this machine.
if ! curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1; then
  say "starting a registry on $reg (data in $cache/registry)"
  cat > "$cache/registry.yml" <<YAML
version: 0.1
storage:
  filesystem: { rootdirectory: $cache/registry }
http:
  addr: 0.0.0.0:$port
YAML
  nohup /usr/bin/docker-registry serve "$cache/registry.yml" > "$cache/registry.log" 2>&1 &
  echo $! > "$cache/registry.pid"
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "http://127.0.0.1:$port/v2/" >/dev/null || { say "the registry did not start: $(tail -n 5 "$cache/registry.log")"; exit 1; }
fi

# 2. The spec: the lab, the registry as an insecure one (plain HTTP on the local network).
cat > demo.yaml <<YAML
# Written by examples/demo/up.sh: the demo's lab swarm, proxy and web service.
name: demo
provider:
  lab: { hosts: 3 }
registry:
  insecure: ["$reg"]
proxy:
  domain: demo.test
  image: "$reg/cloudflow-demo/proxy:1"
  port: 80
services:
  web:
    image: "$reg/cloudflow-demo/web:1"
    port: 8080
    replicas: 2
    max_replicas: 6
    health: { path: /healthz, timeout: 30s }
YAML

# 3. The lab: hosts, Docker and the swarm (this also builds the lab host image, once).
"$cf" -f demo.yaml up --yes --until cluster >&2

# 4. Images, built once and pushed (a push of layers the registry has is instant).
lab_image="cloudflow-lab-host:v1"
build() { # tag, dockerfile text, context dir
  if ! docker image inspect "cloudflow-demo/$1" >/dev/null 2>&1; then
    say "building cloudflow-demo/$1"
    printf '%s\n' "$2" > "$3/Dockerfile"
    docker build -q -t "cloudflow-demo/$1" "$3" >/dev/null
  fi
  docker tag "cloudflow-demo/$1" "127.0.0.1:$port/cloudflow-demo/$1"
  docker push -q "127.0.0.1:$port/cloudflow-demo/$1" >/dev/null
}
ctx="$(mktemp -d)"; trap 'rm -rf "$ctx"' EXIT
gcc -static -O2 -o "$ctx/webapp" "$here/webapp.c"
for v in 1 2; do
  build "web:$v" "FROM scratch
COPY webapp /webapp
ENV VERSION=$v
EXPOSE 8080
ENTRYPOINT [\"/webapp\"]" "$ctx"
done
build "proxy:1" "FROM $lab_image
RUN set -e; apt-get update -q; export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q --no-install-recommends nginx-light || apt-get install -y -q --no-install-recommends nginx; command -v nginx; rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* /etc/nginx/conf.d/*; ln -sf /dev/stderr /var/log/nginx/error.log; ln -sf /dev/null /var/log/nginx/access.log
STOPSIGNAL SIGQUIT
ENTRYPOINT []
CMD [\"nginx\", \"-g\", \"daemon off;\"]" "$ctx"

# 5. The proxy and the service.
"$cf" -f demo.yaml up --yes >&2

manager="$("$cf" -f demo.yaml status -o json | python3 -c 'import json,sys; print(next(n["address"] for n in json.load(sys.stdin)["nodes"] if n["role"] == "manager"))')"
printf 'DEMO_REGISTRY=%s\nDEMO_PROXY=%s\n' "$reg" "$manager" > demo.env
echo "web answers at web-default.demo.test through the proxy on $manager:"
echo "curl -s -H 'Host: web-default.demo.test' http://$manager/"
