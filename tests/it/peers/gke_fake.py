#!/usr/bin/env python3
"""A fake GKE API (container.googleapis.com v1) for cloudflow's tests.

It follows the API's own discovery document, `container.v1.json` from the
google-api-python-client package, rather than a hand-written list:

* every request must match one of the document's methods (path template and HTTP verb);
  query parameters must be the method's own or the API's standard ones;
* a request body is checked against the method's request schema: unknown fields are refused
  with INVALID_ARGUMENT, as the real front end does ("Unknown name ... Cannot find field."),
  and so are wrong JSON types and enum values;
* responses use the schemas' field names; with `$alt=json;enum-encoding=int` (what the Rust
  client asks for) enums are written as numbers, otherwise as names.

Behaviour modelled on the real service: operations go PENDING/RUNNING -> DONE over
`--op-seconds`; a cluster runs one operation at a time and a second mutation gets
400 FAILED_PRECONDITION "Cluster is running incompatible operation ..."; an unknown machine
type is refused with INVALID_ARGUMENT and nothing is created; unknown projects get 403
PERMISSION_DENIED; a bad bearer token gets 401 UNAUTHENTICATED; node pools keep
`initialNodeCount` while `setSize` changes the pool's real size (visible only in the
cluster's `currentNodeCount`, as on GKE).

Every request is appended to `--log` as one JSON line (method, path, query, body, status):
tests count calls at the server. Prints `listening PORT` once ready.
"""

import argparse
import base64
import datetime
import glob
import json
import os
import random
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def discovery_path():
    import googleapiclient

    base = os.path.dirname(googleapiclient.__file__)
    found = glob.glob(os.path.join(base, "discovery_cache", "documents", "container.v1.json"))
    if not found:
        sys.exit("container.v1.json not found in google-api-python-client")
    return found[0]


DOC = json.load(open(discovery_path()))
SCHEMAS = DOC["schemas"]
STANDARD_PARAMS = set(DOC["parameters"]) | {"$alt", "$.xgafv"}


def methods():
    out = []

    def walk(resources):
        for res in resources.values():
            for m in res.get("methods", {}).values():
                path = m.get("flatPath") or m["path"]
                rx = re.escape(path)
                rx = re.sub(r"\\\{[A-Za-z]+\\\}", r"([^/:]+)", rx)
                names = re.findall(r"\{([A-Za-z]+)\}", path)
                out.append((m["httpMethod"], re.compile("^/" + rx + "$"), names, m))
            walk(res.get("resources", {}))

    walk(DOC["resources"])
    return out


METHODS = methods()


class ApiError(Exception):
    def __init__(self, http, status, message):
        super().__init__(message)
        self.http, self.status, self.message = http, status, message


def check(value, schema, where):
    """Validate `value` against a discovery schema (as the real front end decodes JSON)."""
    if "$ref" in schema:
        schema = SCHEMAS[schema["$ref"]]
    t = schema.get("type")
    if t == "object" or "properties" in schema:
        if not isinstance(value, dict):
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. Invalid value at '{where}': expected an object.")
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if props is not None and k in props:
                check(v, props[k], f"{where}.{k}" if where else k)
            elif extra is not None:
                check(v, extra, f"{where}[{k}]")
            else:
                raise ApiError(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. Unknown name \"{k}\" at '{where}': Cannot find field.")
    elif t == "array":
        if not isinstance(value, list):
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. Invalid value at '{where}': expected a list.")
        for i, v in enumerate(value):
            check(v, schema.get("items", {}), f"{where}[{i}]")
    elif t == "string":
        enum = schema.get("enum")
        fmt = schema.get("format")
        if enum and isinstance(value, int) and 0 <= value < len(enum):
            return
        if not isinstance(value, str):
            if fmt in ("int64", "uint64") and isinstance(value, int):
                return
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid value at '{where}' ({fmt or 'TYPE_STRING'}), {json.dumps(value)}")
        if enum and value not in enum:
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid value at '{where}', \"{value}\"")
    elif t == "integer":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d+", value))):
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid value at '{where}' (TYPE_INT32), {json.dumps(value)}")
    elif t == "boolean":
        if not isinstance(value, bool):
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid value at '{where}' (TYPE_BOOL), {json.dumps(value)}")


def encode(value, schema, ints):
    """Write a stored (name-encoded) value for the response: enums as numbers when asked."""
    if "$ref" in schema:
        schema = SCHEMAS[schema["$ref"]]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        # Output must only hold fields the schema has: a fake that invents fields would
        # hide a client that depends on them.
        for k in value:
            assert k in props or "additionalProperties" in schema, f"fake bug: {k} not in schema"
        return {k: encode(v, props.get(k, schema.get("additionalProperties", {})), ints) for k, v in value.items()}
    if isinstance(value, list):
        return [encode(v, schema.get("items", {}), ints) for v in value]
    enum = schema.get("enum")
    if ints and enum and isinstance(value, str):
        return enum.index(value)
    return value


def enum_name(value, schema_name, field):
    enum = SCHEMAS[schema_name]["properties"][field].get("enum")
    if isinstance(value, int) and enum:
        return enum[value]
    return value


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_ca():
    """A real self-signed CA certificate (PEM), as masterAuth.clusterCaCertificate carries."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-gke-cluster-ca")])
        t = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(t)
            .not_valid_after(t + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)
    except ImportError:
        return b"-----BEGIN CERTIFICATE-----\nZmFrZQ==\n-----END CERTIFICATE-----\n"


class World:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.clusters = {}  # (project, location, name) -> cluster dict
        self.sizes = {}  # (project, location, cluster, pool) -> real size
        self.ops = {}  # (project, location, opname) -> [op, due, effect]
        self.busy = {}  # (project, location, cluster) -> opname
        self.projects = set(args.project)
        self.locations = set(args.location)
        self.machine_types = set(args.machine_type)

    # -- operations ------------------------------------------------------------------------
    def tick(self):
        t = time.time()
        for key, entry in list(self.ops.items()):
            op, due, effect = entry
            if op["status"] != "DONE" and t >= due:
                op["status"] = "DONE"
                op["endTime"] = now_rfc3339()
                op["progress"] = {"status": "DONE"}
                if effect:
                    effect()
                ck = (key[0], key[1], op["_cluster"])
                if self.busy.get(ck) == op["name"]:
                    del self.busy[ck]
            elif op["status"] == "PENDING":
                op["status"] = "RUNNING"

    def start_op(self, p, l, cluster, op_type, target, effect, seconds=None):
        name = f"operation-{int(time.time() * 1000)}-{random.randrange(16**8):08x}"
        base = f"https://container.googleapis.com/v1/projects/{p}/locations/{l}"
        op = {
            "name": name,
            "zone": l,
            "location": l,
            "operationType": op_type,
            "status": "RUNNING",
            "selfLink": f"{base}/operations/{name}",
            "targetLink": f"{base}/clusters/{target}",
            "startTime": now_rfc3339(),
            "_cluster": cluster,
        }
        secs = self.args.op_seconds if seconds is None else seconds
        self.ops[(p, l, name)] = [op, time.time() + secs, effect]
        self.busy[(p, l, cluster)] = name
        return self.public_op(op)

    def public_op(self, op):
        return {k: v for k, v in op.items() if not k.startswith("_")}

    def ensure_idle(self, p, l, cluster):
        name = self.busy.get((p, l, cluster))
        if name:
            raise ApiError(400, "FAILED_PRECONDITION",
                           f"Cluster is running incompatible operation {name}. Please wait and try again.")

    # -- checks ----------------------------------------------------------------------------
    def where(self, p, l):
        if p not in self.projects:
            raise ApiError(403, "PERMISSION_DENIED",
                           f"Permission denied on resource project {p} (or it may not exist).")
        if l not in self.locations:
            raise ApiError(400, "INVALID_ARGUMENT", f"Location \"{l}\" does not exist.")

    def cluster(self, p, l, c):
        self.where(p, l)
        found = self.clusters.get((p, l, c))
        if not found:
            raise ApiError(404, "NOT_FOUND", f"Not found: projects/{p}/locations/{l}/clusters/{c}.")
        return found

    def check_pool(self, l, pool):
        mt = ((pool.get("config") or {}).get("machineType")) or "e2-medium"
        if mt not in self.machine_types:
            raise ApiError(400, "INVALID_ARGUMENT",
                           f"Machine type \"{mt}\" does not exist in zone \"{l}\".")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", pool.get("name", "")):
            raise ApiError(400, "INVALID_ARGUMENT", f"Invalid node pool name \"{pool.get('name')}\".")

    def new_pool(self, p, l, c, pool):
        pool = json.loads(json.dumps(pool))
        # proto3 JSON: a field left out is its zero value.
        pool.setdefault("initialNodeCount", 0)
        pool["status"] = "PROVISIONING"
        pool["version"] = self.args.version
        pool["selfLink"] = f"https://container.googleapis.com/v1/projects/{p}/locations/{l}/clusters/{c}/nodePools/{pool['name']}"
        if "autoscaling" in pool and isinstance(pool["autoscaling"].get("locationPolicy"), int):
            pool["autoscaling"]["locationPolicy"] = enum_name(pool["autoscaling"]["locationPolicy"], "NodePoolAutoscaling", "locationPolicy")
        self.sizes[(p, l, c, pool["name"])] = int(pool["initialNodeCount"])
        return pool

    def refresh_count(self, p, l, c):
        cl = self.clusters.get((p, l, c))
        if cl:
            cl["currentNodeCount"] = sum(v for k, v in self.sizes.items() if k[:3] == (p, l, c))

    # -- methods ---------------------------------------------------------------------------
    def handle(self, verb, method_id, params, query, body):
        p = params.get("projectsId")
        l = params.get("locationsId")
        c = params.get("clustersId")
        np_ = params.get("nodePoolsId")
        short = method_id.split("container.projects.locations.", 1)[-1]
        if short == "getServerConfig":
            self.where(p, l)
            return {"defaultClusterVersion": self.args.version, "validMasterVersions": [self.args.version],
                    "validNodeVersions": [self.args.version],
                    "channels": [{"channel": ch, "defaultVersion": self.args.version, "validVersions": [self.args.version]}
                                 for ch in ("RAPID", "REGULAR", "STABLE")]}
        if short == "clusters.list":
            self.where(p, l)
            return {"clusters": [v for k, v in sorted(self.clusters.items()) if k[:2] == (p, l)]}
        if short == "clusters.get":
            return self.cluster(p, l, c)
        if short == "clusters.create":
            self.where(p, l)
            cl = json.loads(json.dumps(body.get("cluster") or {}))
            name = cl.get("name", "")
            if not re.fullmatch(r"[a-z]([-a-z0-9]{0,38}[a-z0-9])?", name):
                raise ApiError(400, "INVALID_ARGUMENT", f"Invalid cluster name \"{name}\".")
            if (p, l, name) in self.clusters:
                raise ApiError(409, "ALREADY_EXISTS", f"Already exists: projects/{p}/locations/{l}/clusters/{name}.")
            pools = cl.get("nodePools") or [{"name": "default-pool", "initialNodeCount": cl.get("initialNodeCount", 3)}]
            for pool in pools:
                self.check_pool(l, pool)
            cl["nodePools"] = [self.new_pool(p, l, name, pool) for pool in pools]
            if isinstance((cl.get("releaseChannel") or {}).get("channel"), int):
                cl["releaseChannel"]["channel"] = enum_name(cl["releaseChannel"]["channel"], "ReleaseChannel", "channel")
            cl.update({"status": "PROVISIONING", "location": l, "zone": l, "createTime": now_rfc3339(),
                       "currentMasterVersion": self.args.version, "currentNodeVersion": self.args.version,
                       "selfLink": f"https://container.googleapis.com/v1/projects/{p}/locations/{l}/clusters/{name}"})
            self.clusters[(p, l, name)] = cl
            self.refresh_count(p, l, name)

            def done():
                cl["status"] = "RUNNING"
                cl["endpoint"] = self.args.endpoint
                cl["masterAuth"] = {"clusterCaCertificate": base64.b64encode(self.args.ca).decode()}
                for pool in cl["nodePools"]:
                    pool["status"] = "RUNNING"

            return self.start_op(p, l, name, "CREATE_CLUSTER", name, done, self.args.create_seconds)
        if short == "clusters.delete":
            cl = self.cluster(p, l, c)
            self.ensure_idle(p, l, c)
            cl["status"] = "STOPPING"

            def gone():
                self.clusters.pop((p, l, c), None)
                for k in [k for k in self.sizes if k[:3] == (p, l, c)]:
                    del self.sizes[k]

            return self.start_op(p, l, c, "DELETE_CLUSTER", c, gone)
        if short == "clusters.nodePools.list":
            return {"nodePools": self.cluster(p, l, c)["nodePools"]}
        if short == "clusters.nodePools.get":
            for pool in self.cluster(p, l, c)["nodePools"]:
                if pool["name"] == np_:
                    return pool
            raise ApiError(404, "NOT_FOUND", f"Not found: projects/{p}/locations/{l}/clusters/{c}/nodePools/{np_}.")
        if short.startswith("clusters.nodePools."):
            cl = self.cluster(p, l, c)
            self.ensure_idle(p, l, c)
            if short == "clusters.nodePools.create":
                pool = body.get("nodePool") or {}
                self.check_pool(l, pool)
                if any(x["name"] == pool.get("name") for x in cl["nodePools"]):
                    raise ApiError(409, "ALREADY_EXISTS", f"Already exists: node pool {pool.get('name')}.")
                new = self.new_pool(p, l, c, pool)
                cl["nodePools"].append(new)
                self.refresh_count(p, l, c)

                def up():
                    new["status"] = "RUNNING"

                return self.start_op(p, l, c, "CREATE_NODE_POOL", f"{c}/nodePools/{new['name']}", up)
            pool = next((x for x in cl["nodePools"] if x["name"] == np_), None)
            if pool is None:
                raise ApiError(404, "NOT_FOUND", f"Not found: projects/{p}/locations/{l}/clusters/{c}/nodePools/{np_}.")
            target = f"{c}/nodePools/{np_}"
            if short == "clusters.nodePools.delete":
                pool["status"] = "STOPPING"

                def gone():
                    cl["nodePools"] = [x for x in cl["nodePools"] if x["name"] != np_]
                    self.sizes.pop((p, l, c, np_), None)
                    self.refresh_count(p, l, c)

                return self.start_op(p, l, c, "DELETE_NODE_POOL", target, gone)
            if short == "clusters.nodePools.setSize":
                count = int(body.get("nodeCount", 0))  # proto3: absent is 0

                def sized():
                    self.sizes[(p, l, c, np_)] = count
                    self.refresh_count(p, l, c)

                return self.start_op(p, l, c, "SET_NODE_POOL_SIZE", target, sized)
            if short == "clusters.nodePools.setAutoscaling":
                auto = json.loads(json.dumps(body.get("autoscaling") or {}))
                if isinstance(auto.get("locationPolicy"), int):
                    auto["locationPolicy"] = enum_name(auto["locationPolicy"], "NodePoolAutoscaling", "locationPolicy")

                def scaled():
                    pool["autoscaling"] = auto

                return self.start_op(p, l, c, "UPDATE_CLUSTER", target, scaled)
        if short == "operations.list":
            self.where(p, l)
            return {"operations": [self.public_op(e[0]) for k, e in self.ops.items() if k[:2] == (p, l)]}
        if short == "operations.get":
            self.where(p, l)
            entry = self.ops.get((p, l, params.get("operationsId")))
            if not entry:
                raise ApiError(404, "NOT_FOUND", f"Not found: operation {params.get('operationsId')}.")
            return self.public_op(entry[0])
        raise ApiError(501, "UNIMPLEMENTED", f"the fake does not implement {method_id}")


def response_schema(m):
    ref = (m.get("response") or {}).get("$ref")
    return {"$ref": ref} if ref else {}


def make_handler(world, args, log):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, code, doc):
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def serve(self, verb):
            url = urlsplit(self.path)
            query = parse_qs(url.query, keep_blank_values=True)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            entry = {"method": verb, "path": url.path, "query": {k: v for k, v in query.items()}, "body": None}
            code, doc = 200, None
            try:
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    raise ApiError(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
                entry["body"] = body
                auth = self.headers.get("Authorization")
                if args.token:
                    if auth != f"Bearer {args.token}":
                        raise ApiError(401, "UNAUTHENTICATED",
                                       "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.")
                elif auth:
                    raise ApiError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
                match = None
                for mverb, rx, names, m in METHODS:
                    found = rx.match(url.path)
                    if found and mverb == verb:
                        match = (dict(zip(names, found.groups())), m)
                        break
                    if found:
                        match = match or "verb"
                if match is None:
                    raise ApiError(404, "NOT_FOUND", f"The requested URL {url.path} was not found on this server.")
                if match == "verb":
                    raise ApiError(405, "INVALID_ARGUMENT", f"Method {verb} not allowed on {url.path}.")
                params, m = match
                allowed = set(m.get("parameters", {})) | STANDARD_PARAMS
                for k in query:
                    if k not in allowed:
                        raise ApiError(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. Unknown name \"{k}\": Cannot bind query parameter.")
                if "request" in m:
                    check(body, m["request"], "")
                elif raw:
                    raise ApiError(400, "INVALID_ARGUMENT", f"{m['id']} takes no request body.")
                ints = "enum-encoding=int" in ";".join(query.get("$alt", []))
                with world.lock:
                    world.tick()
                    doc = world.handle(verb, m["id"], params, query, body)
                    doc = encode(json.loads(json.dumps(doc)), response_schema(m), ints)
                entry["method_id"] = m["id"]
            except ApiError as e:
                code = e.http
                doc = {"error": {"code": e.http, "message": e.message, "status": e.status}}
                entry["error"] = e.status
            except Exception as e:  # a bug in the fake: say so loudly, never hang the client
                import traceback

                traceback.print_exc()
                code = 500
                doc = {"error": {"code": 500, "message": f"fake GKE bug: {e!r}", "status": "INTERNAL"}}
                entry["error"] = "INTERNAL"
            entry["status"] = code
            with world.lock:
                log.write(json.dumps(entry) + "\n")
                log.flush()
            self.reply(code, doc)

        def do_GET(self):
            self.serve("GET")

        def do_POST(self):
            self.serve("POST")

        def do_PUT(self):
            self.serve("PUT")

        def do_DELETE(self):
            self.serve("DELETE")

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--token", default="", help="bearer token required (empty: only anonymous calls)")
    ap.add_argument("--project", action="append", default=[])
    ap.add_argument("--location", action="append", default=[])
    ap.add_argument("--machine-type", action="append", default=[])
    ap.add_argument("--op-seconds", type=float, default=1.0)
    ap.add_argument("--create-seconds", type=float, default=None)
    ap.add_argument("--version", default="1.33.5-gke.1000000")
    ap.add_argument("--endpoint", default="127.0.0.1:1",
                    help="the control plane address clusters report (default: a closed port on loopback, never an invented address)")
    ap.add_argument("--ca-file", default=None, help="PEM the clusters report as their CA (default: a fresh one)")
    args = ap.parse_args()
    args.ca = open(args.ca_file, "rb").read() if args.ca_file else make_ca()
    log = open(args.log, "a")
    world = World(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(world, args, log))
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
