#!/usr/bin/env bash
# Checks kube_fake.py against a real, independent client: kubectl.
#
# Runs the same scenario twice: over plain HTTP, then over TLS (a self-signed certificate made
# here with openssl) with a bearer token. kubectl runs with its default client-side validation
# on (the fake serves /openapi/v2); only the unknown-field step passes --validate=false so that
# the server is the one refusing.
#
# kubectl: $KUBECTL if set; else Debian's kubernetes-client (kubectl 1.20), unpacked from the
# package into a cache directory (apt-get download, no install: it would clash with other
# kubectl packages); else the kubectl on PATH.
#
# Exits non-zero on the first failing step; prints a short summary either way. KEEP=1 keeps the
# work directory (request logs, kubeconfigs) for a look afterwards.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FAKE="$HERE/kube_fake.py"
WORK="$(mktemp -d /tmp/kube_fake_check.XXXXXX)"
FAKE_PID=""
PASSED=0
STEPS=()

cleanup() {
    if [ -n "$FAKE_PID" ]; then kill "$FAKE_PID" 2>/dev/null; wait "$FAKE_PID" 2>/dev/null; fi
    [ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

find_kubectl() {
    if [ -n "${KUBECTL:-}" ]; then echo "$KUBECTL"; return; fi
    local cache="${KUBE_FAKE_CACHE:-/tmp/kube_fake_kubectl}"
    local deb_bin="$cache/root/usr/bin/kubectl"
    if [ ! -x "$deb_bin" ]; then
        mkdir -p "$cache"
        (cd "$cache" && { apt-get download kubernetes-client >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null 2>&1 && apt-get download kubernetes-client >/dev/null 2>&1; }; } &&
            dpkg -x kubernetes-client_*.deb root) || true
    fi
    if [ -x "$deb_bin" ]; then echo "$deb_bin"; return; fi
    command -v kubectl || { echo "no kubectl found" >&2; exit 2; }
}

KBIN="$(find_kubectl)"
KVER="$("$KBIN" version --client --short 2>/dev/null || "$KBIN" version --client 2>/dev/null | head -1)"

fail() {
    echo "FAIL [$MODE] $*" >&2
    echo "--- last requests:" >&2
    tail -5 "$LOG" >&2 2>/dev/null
    echo "--- fake stderr:" >&2
    tail -20 "$WORK/fake.err" >&2 2>/dev/null
    summary
    exit 1
}

ok() {
    PASSED=$((PASSED + 1))
    STEPS+=("ok   [$MODE] $*")
    echo "ok   [$MODE] $*"
}

summary() {
    echo
    echo "== kube_fake check: $PASSED steps passed (kubectl: $KVER)"
    for s in "${STEPS[@]}"; do echo "   $s"; done
}

start_fake() {  # start_fake EXTRA-ARGS...
    if [ -n "$FAKE_PID" ]; then kill "$FAKE_PID" 2>/dev/null; wait "$FAKE_PID" 2>/dev/null; FAKE_PID=""; fi
    LOG="$WORK/$MODE.log.jsonl"
    KCFG="$WORK/$MODE.kubeconfig"
    : > "$WORK/fake.out"
    python3 "$FAKE" --log "$LOG" --kubeconfig-out "$KCFG" --node node-1 --node node-2 \
        --ready-seconds 1 --terminate-seconds 1 "$@" >"$WORK/fake.out" 2>"$WORK/fake.err" &
    FAKE_PID=$!
    for _ in $(seq 100); do grep -q '^listening ' "$WORK/fake.out" && break; sleep 0.1; done
    PORT="$(awk '/^listening/ {print $2}' "$WORK/fake.out")"
    [ -n "$PORT" ] || fail "the fake did not start: $(cat "$WORK/fake.err")"
    K=(timeout 60 "$KBIN" --kubeconfig "$KCFG" --cache-dir "$WORK/$MODE.cache" --request-timeout 20s)
    ok "fake listening on $PORT"
}

write_manifests() {
    cat >"$WORK/web.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: reg:5000/web:v1
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /healthz, port: http}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {app: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
EOF
    sed -e 's/name: web$/name: broken/' -e 's/{app: web}/{app: broken}/' \
        -e 's#reg:5000/web:v1#x/web:broken#' "$WORK/web.yaml" | awk '/^---/ {exit} {print}' >"$WORK/broken.yaml"
    sed -e 's/image: reg:5000\/web:v1/imagee: reg:5000\/web:v1/' "$WORK/web.yaml" \
        | awk '/^---/ {exit} {print}' >"$WORK/unknown.yaml"
    cat >"$WORK/ssa.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  labels: {app: api}
spec:
  replicas: 1
  selector:
    matchLabels: {app: api}
  template:
    metadata:
      labels: {app: api}
    spec:
      containers:
      - name: api
        image: reg:5000/api:v1
EOF
}

scenario() {
    local out rv addrs

    out="$("${K[@]}" apply -f "$WORK/web.yaml" 2>&1)" || fail "kubectl apply: $out"
    echo "$out" | grep -q 'deployment.apps/web created' || fail "apply output: $out"
    ok "kubectl apply -f web.yaml (Deployment 2 replicas + readinessProbe, Service)"

    out="$("${K[@]}" rollout status deployment/web --timeout=30s 2>&1)" || fail "rollout status: $out"
    echo "$out" | grep -q 'successfully rolled out' || fail "rollout status output: $out"
    ok "kubectl rollout status deployment/web"

    out="$("${K[@]}" get pods -o wide 2>&1)" || fail "get pods: $out"
    echo "$out"
    [ "$(echo "$out" | grep -c ' Running ')" = 2 ] || fail "expected 2 Running pods: $out"
    echo "$out" | grep -q 'node-' || fail "pods not on nodes: $out"
    ok "kubectl get pods -o wide: 2 Running, on nodes"

    addrs="$("${K[@]}" get endpoints web -o 'jsonpath={.subsets[*].addresses[*].ip}' 2>&1)" || fail "endpoints: $addrs"
    [ "$(echo "$addrs" | wc -w)" = 2 ] || fail "expected 2 endpoint addresses, got: $addrs"
    "${K[@]}" get endpoints web
    ok "kubectl get endpoints web: 2 addresses ($addrs)"

    out="$("${K[@]}" scale deployment/web --replicas=3 2>&1)" || fail "scale: $out"
    out="$("${K[@]}" rollout status deployment/web --timeout=30s 2>&1)" || fail "rollout status after scale: $out"
    addrs="$("${K[@]}" get endpoints web -o 'jsonpath={.subsets[*].addresses[*].ip}')"
    [ "$(echo "$addrs" | wc -w)" = 3 ] || fail "expected 3 endpoint addresses after scale, got: $addrs"
    ok "kubectl scale --replicas=3 + rollout status (3 endpoints)"

    "${K[@]}" create namespace pr-7 >/dev/null 2>&1 || fail "create namespace"
    out="$("${K[@]}" delete namespace pr-7 --wait --timeout=30s 2>&1)" || fail "delete namespace: $out"
    out="$("${K[@]}" get namespace pr-7 2>&1)" && fail "namespace still there: $out"
    echo "$out" | grep -q 'NotFound' || fail "expected NotFound: $out"
    ok "kubectl create/delete namespace pr-7 --wait (gone afterwards)"

    "${K[@]}" apply -f "$WORK/broken.yaml" >/dev/null 2>&1 || fail "apply broken"
    out="$("${K[@]}" rollout status deployment/broken --timeout=5s 2>&1)" && fail "broken rollout succeeded: $out"
    out=""
    for _ in $(seq 20); do
        out="$("${K[@]}" get pods -l app=broken 2>&1)"
        echo "$out" | grep -q ImagePullBackOff && break
        sleep 0.5
    done
    echo "$out"
    echo "$out" | grep -q ImagePullBackOff || fail "no ImagePullBackOff: $out"
    ok "image x/web:broken: rollout status --timeout=5s fails, pod shows ImagePullBackOff"

    out="$("${K[@]}" apply --validate=false -f "$WORK/unknown.yaml" 2>&1)" && fail "unknown field accepted: $out"
    echo "$out"
    if tail -1 "$LOG" | grep -q '"fieldValidation":\["Ignore"\]'; then
        # kubectl >= 1.25 sends fieldValidation=Ignore with --validate=false: the server drops the
        # field (the image is then missing); --validate=strict makes the server refuse it instead
        echo "$out" | grep -q 'image: Required value' || fail "unknown field ignored, expected a missing image: $out"
        out="$("${K[@]}" apply --validate=strict -f "$WORK/unknown.yaml" 2>&1)" && fail "strict: accepted: $out"
        echo "$out"
        echo "$out" | grep -q 'unknown field "spec.template.spec.containers\[0\].imagee"' \
            || fail "strict: unknown field not named: $out"
        ok "unknown field imagee: dropped with fieldValidation=Ignore, refused with Strict (400)"
    else
        echo "$out" | grep -q 'is invalid' || fail "unknown field: not an Invalid error: $out"
        echo "$out" | grep -q 'imagee' || fail "unknown field not named: $out"
        ok "unknown field imagee refused by the server (422 Invalid)"
    fi

    out="$("${K[@]}" apply --server-side --field-manager cloudflow -f "$WORK/ssa.yaml" 2>&1)" || fail "server-side apply: $out"
    echo "$out" | grep -q 'serverside-applied' || fail "server-side apply output: $out"
    out="$("${K[@]}" get deployment api -o 'jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation} {end}')"
    echo "$out" | grep -q 'cloudflow/Apply' || fail "no cloudflow Apply entry in managedFields: $out"
    out="$("${K[@]}" rollout status deployment/api --timeout=30s 2>&1)" || fail "api rollout: $out"
    "${K[@]}" scale deployment/api --replicas=2 >/dev/null || fail "scale api"
    sed 's/replicas: 1/replicas: 3/' "$WORK/ssa.yaml" >"$WORK/ssa3.yaml"
    out="$("${K[@]}" apply --server-side --field-manager cloudflow -f "$WORK/ssa3.yaml" 2>&1)" && fail "no conflict: $out"
    echo "$out" | grep -q 'conflict with "kubectl' || fail "expected a conflict with kubectl's scale: $out"
    out="$("${K[@]}" apply --server-side --field-manager cloudflow --force-conflicts -f "$WORK/ssa3.yaml" 2>&1)" \
        || fail "forced apply: $out"
    [ "$("${K[@]}" get deployment api -o 'jsonpath={.spec.replicas}')" = 3 ] || fail "forced apply did not set replicas"
    ok "kubectl apply --server-side --field-manager cloudflow (create, conflict, --force-conflicts)"

    # a watch from the list's resourceVersion streams the change made afterwards
    local curl=(curl -sS --max-time 10)
    [ "$MODE" = tls ] && curl+=(--cacert "$WORK/tls/cert.pem" -H "Authorization: Bearer $TOKEN")
    rv="$("${curl[@]}" "$SCHEME://127.0.0.1:$PORT/apis/apps/v1/namespaces/default/deployments" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')" || fail "list for watch"
    "${curl[@]}" -N --max-time 8 \
        "$SCHEME://127.0.0.1:$PORT/apis/apps/v1/namespaces/default/deployments?watch=1&resourceVersion=$rv&timeoutSeconds=3" \
        >"$WORK/watch.txt" 2>&1 &
    local wpid=$!
    sleep 0.5
    "${K[@]}" patch deployment web --type=merge -p '{"metadata":{"labels":{"watched":"yes"}}}' >/dev/null || fail "patch"
    wait "$wpid"
    grep -q '"type":"MODIFIED".*"watched":"yes"' "$WORK/watch.txt" || fail "watch did not stream the change: $(head -c 300 "$WORK/watch.txt")"
    ok "curl watch?resourceVersion=$rv streams MODIFIED after a patch"

    grep -q '"status":500' "$LOG" && fail "the fake answered 500 (see $LOG)"
    ok "request log: $(wc -l <"$LOG") requests, none with status 500"
}

write_manifests

MODE=http
SCHEME=http
start_fake
scenario

MODE=tls
SCHEME=https
TOKEN="t0k-$RANDOM$RANDOM"
mkdir -p "$WORK/tls"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kube-fake" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" >/dev/null 2>&1 || { MODE=tls; fail "openssl"; }
start_fake --tls-cert "$WORK/tls/cert.pem" --tls-key "$WORK/tls/key.pem" --token "$TOKEN"
code="$(curl -s -o /dev/null -w '%{http_code}' --cacert "$WORK/tls/cert.pem" "https://127.0.0.1:$PORT/api/v1/namespaces")"
[ "$code" = 401 ] || fail "no token: expected 401, got $code"
ok "TLS: a request without the token gets 401"
grep -q certificate-authority-data "$KCFG" && grep -q "$TOKEN" "$KCFG" || fail "kubeconfig lacks CA data or token"
scenario

summary
