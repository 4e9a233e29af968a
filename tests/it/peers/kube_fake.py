#!/usr/bin/env python3
"""A fake Kubernetes API server for cloudflow's tests (core/v1 and apps/v1 subset).

It speaks the real wire protocol closely enough for kube-rs and a real kubectl:

* discovery (/version, /api, /apis, /api/v1, /apis/apps/v1) shaped like the real server's,
  a (definition-less) /openapi/v2 in protobuf or JSON so kubectl's client-side validation runs;
* get / list (label and field selectors, limit/continue) / watch (chunked JSON lines,
  resourceVersion, bookmarks, 410 Expired past the kept history, sendInitialEvents) /
  create / replace / patch (merge, strategic merge, JSON patch, server-side apply with
  managedFields and conflicts) / delete (graceful pods, finalizers, propagation policies);
* server-side Table printing (what kubectl get asks for) and PartialObjectMetadata;
* Status objects for every refusal, with the real reasons, codes and message shapes;
  bodies are checked against a schema of the real field names (unknown fields refused),
  names, labels and the main semantic rules are validated, defaults are filled in;
* controllers (every ~100 ms, under the request lock): Deployment -> ReplicaSet -> Pod,
  a simulated kubelet (images containing "broken" never pull, "unready" never pass
  readiness), Endpoints, Service IPs / node ports / load balancer status, garbage
  collection through ownerReferences, namespace termination.

Usage:
  kube_fake.py --log FILE [--port 0] [--host 127.0.0.1] [--token TOKEN]
               [--tls-cert PEM --tls-key PEM [--ca-file PEM] | --tls-auto DIR]
               [--ready-seconds 1.0] [--terminate-seconds 1.0] [--node NAME ...]
               [--kubeconfig-out PATH] [--state-file PATH]
               [--history 5000] [--bookmark-seconds 1.0] [--tick 0.1]
               [--external-readiness SELECTOR --readiness-dir DIR]

Prints `listening PORT` once ready. Every request is appended to --log as one JSON line
{"method","path","query","content_type","body","status"}. --tls-auto writes ca.crt, tls.crt and
tls.key (a CA and a server certificate for 127.0.0.1/localhost) into DIR and serves TLS with
them; the kubeconfig then carries ca.crt. --history is how many watch events are kept: a watch
from an older resourceVersion gets a 410 Expired ERROR event. --state-file keeps every object
across restarts (written after each change).

Main simplifications: readiness probes are not run (readiness comes from --ready-seconds and
the image name, or, for pods matching --external-readiness, from kube_node.py really running
them) and pods never restart; rolling updates surge the new ReplicaSet to full size
at once and scale old ones down as new pods become available; an unknown field with no
fieldValidation parameter is refused (422 Invalid) where a 1.30 server would drop it with a
warning (fieldValidation=Strict/Warn/Ignore behave as on the real server); server-side apply
keys associative lists by their main key only (name, containerPort, port, mountPath, ...).
"""

import argparse
import base64
import copy
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import random
import re
import select
import socket
import ssl
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

try:
    import yaml  # PyYAML, optional: apply bodies may be YAML
except Exception:  # pragma: no cover
    yaml = None

SERVER_VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0",
                  "gitCommit": "7c48c2bd72b9bf5c44d21d7338cc7bea77d0ad2a", "gitTreeState": "clean",
                  "buildDate": "2024-04-17T17:27:03Z", "goVersion": "go1.22.2", "compiler": "gc",
                  "platform": "linux/amd64"}

ARGS = None
LOCK = threading.RLock()
COND = threading.Condition(LOCK)
LOG_LOCK = threading.Lock()
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# ---------------------------------------------------------------------------------------------
# small helpers

def now():
    return time.time()


def ts(t=None):
    t = now() if t is None else t
    return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(s):
    if not s:
        return None
    try:
        return datetime.datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except Exception:
        return None


def rand_suffix(n=5):
    return "".join(random.choice(NAME_ALPHABET) for _ in range(n))


def dget(obj, *path, default=None):
    cur = obj
    for p in path:
        if isinstance(cur, dict) and p in cur and cur[p] is not None:
            cur = cur[p]
        else:
            return default
    return cur


def gorepr(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict) and all(isinstance(x, str) for x in v.values()):
        return "map[string]string{" + ", ".join("%s:%s" % (json.dumps(k), json.dumps(x))
                                                for k, x in sorted(v.items())) + "}"
    return json.dumps(v, separators=(",", ":"), sort_keys=True)


def human_duration(sec):
    sec = max(0, int(sec))
    if sec < 120:
        return "%ds" % sec
    m = sec // 60
    if m < 10:
        return "%dm%ds" % (m, sec % 60) if sec % 60 else "%dm" % m
    if m < 180:
        return "%dm" % m
    h = m // 60
    if h < 8:
        return "%dh%dm" % (h, m % 60) if m % 60 else "%dh" % h
    if h < 48:
        return "%dh" % h
    d = h // 24
    if d < 8:
        return "%dd%dh" % (d, h % 24) if h % 24 else "%dd" % d
    if d < 365 * 2:
        return "%dd" % d
    return "%dy" % (d // 365)


def age(obj):
    t = parse_ts(dget(obj, "metadata", "creationTimestamp"))
    return human_duration(now() - t) if t else "<unknown>"


# ---------------------------------------------------------------------------------------------
# errors and Status objects

class ApiError(Exception):
    def __init__(self, code, reason, message, details=None, headers=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details
        self.headers = headers or []

    def status(self):
        return status_obj(self.code, self.reason, self.message, self.details)


def status_obj(code, reason, message, details=None):
    st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
          "message": message, "reason": reason}
    if details is not None:
        st["details"] = details
    st["code"] = code
    return st


def success_status(res, obj):
    d = {"name": obj["metadata"]["name"]}
    if res.group:
        d["group"] = res.group
    d["kind"] = res.plural
    d["uid"] = obj["metadata"].get("uid", "")
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}


def not_found(res, name):
    d = {"name": name}
    if res.group:
        d["group"] = res.group
    d["kind"] = res.plural
    return ApiError(404, "NotFound", '%s "%s" not found' % (res.qualified, name), d)


def ns_not_found(name):
    return ApiError(404, "NotFound", 'namespaces "%s" not found' % name, {"name": name, "kind": "namespaces"})


def already_exists(res, name):
    d = {"name": name}
    if res.group:
        d["group"] = res.group
    d["kind"] = res.plural
    return ApiError(409, "AlreadyExists", '%s "%s" already exists' % (res.qualified, name), d)


def conflict(res, name, msg=None):
    d = {"name": name}
    if res.group:
        d["group"] = res.group
    d["kind"] = res.plural
    msg = msg or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": %s' % (res.qualified, name, msg), d)


def bad_request(msg):
    return ApiError(400, "BadRequest", msg)


def method_not_allowed():
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})


def path_not_found():
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


class FieldErr:
    REASONS = {"Invalid": "FieldValueInvalid", "Required": "FieldValueRequired",
               "Duplicate": "FieldValueDuplicate", "NotSupported": "FieldValueNotSupported",
               "Forbidden": "FieldValueForbidden", "NotFound": "FieldValueNotFound",
               "TooLong": "FieldValueTooLong", "Unknown": "FieldValueInvalid"}

    def __init__(self, typ, field, value=None, detail="", supported=None):
        self.typ, self.field, self.value, self.detail, self.supported = typ, field, value, detail, supported

    def body(self):
        t = self.typ
        if t == "Invalid":
            return "Invalid value: %s: %s" % (gorepr(self.value), self.detail)
        if t == "Required":
            return "Required value" + (": " + self.detail if self.detail else "")
        if t == "Duplicate":
            return "Duplicate value: %s" % gorepr(self.value)
        if t == "NotSupported":
            return "Unsupported value: %s: supported values: %s" % (
                gorepr(self.value), ", ".join(json.dumps(s) for s in self.supported))
        if t == "Forbidden":
            return "Forbidden: " + self.detail
        if t == "NotFound":
            return "Not found: %s" % gorepr(self.value)
        if t == "TooLong":
            return "Too long: " + self.detail
        if t == "Unknown":
            return "field not declared in schema"
        return self.detail

    def __str__(self):
        if self.typ == "Unknown":
            return ".%s: field not declared in schema" % self.field
        return "%s: %s" % (self.field, self.body())


def invalid(res, name, errs):
    causes = [{"reason": FieldErr.REASONS[e.typ], "message": e.body(), "field": e.field} for e in errs]
    text = str(errs[0]) if len(errs) == 1 else "[" + ", ".join(str(e) for e in errs) + "]"
    d = {"name": name}
    if res.group:
        d["group"] = res.group
    d["kind"] = res.kind
    d["causes"] = causes
    return ApiError(422, "Invalid", '%s "%s" is invalid: %s' % (res.qualified_kind, name, text), d)


# ---------------------------------------------------------------------------------------------
# schema of the real field names (k8s.io/api), deep where clients write

S, I, B, N, ANY, OBJ, IOS, Q = "string", "integer", "boolean", "number", "any", "object", "int-or-string", "quantity"
MAP = ("map", S)
QMAP = ("map", Q)

OWNER_REF = {"apiVersion": S, "kind": S, "name": S, "uid": S, "controller": B, "blockOwnerDeletion": B}
MANAGED = {"manager": S, "operation": S, "apiVersion": S, "time": S, "fieldsType": S, "fieldsV1": OBJ,
           "subresource": S}
META = {"name": S, "generateName": S, "namespace": S, "labels": MAP, "annotations": MAP, "uid": S,
        "resourceVersion": S, "generation": I, "creationTimestamp": S, "deletionTimestamp": S,
        "deletionGracePeriodSeconds": I, "ownerReferences": [OWNER_REF], "finalizers": [S],
        "managedFields": [MANAGED], "selfLink": S}
LABEL_SELECTOR = {"matchLabels": MAP, "matchExpressions": [{"key": S, "operator": S, "values": [S]}]}
KEY_REF = {"name": S, "key": S, "optional": B}
ENV_VAR = {"name": S, "value": S, "valueFrom": {
    "secretKeyRef": KEY_REF, "configMapKeyRef": KEY_REF, "fieldRef": {"fieldPath": S, "apiVersion": S},
    "resourceFieldRef": {"containerName": S, "resource": S, "divisor": Q}}}
ENV_FROM = {"prefix": S, "configMapRef": {"name": S, "optional": B}, "secretRef": {"name": S, "optional": B}}
HTTP_GET = {"path": S, "port": IOS, "host": S, "scheme": S, "httpHeaders": [{"name": S, "value": S}]}
PROBE = {"httpGet": HTTP_GET, "tcpSocket": {"port": IOS, "host": S}, "exec": {"command": [S]},
         "grpc": {"port": I, "service": S}, "initialDelaySeconds": I, "periodSeconds": I, "timeoutSeconds": I,
         "successThreshold": I, "failureThreshold": I, "terminationGracePeriodSeconds": I}
CONTAINER = {
    "name": S, "image": S, "imagePullPolicy": S, "command": [S], "args": [S], "workingDir": S,
    "ports": [{"name": S, "containerPort": I, "protocol": S, "hostPort": I, "hostIP": S}],
    "env": [ENV_VAR], "envFrom": [ENV_FROM],
    "resources": {"limits": QMAP, "requests": QMAP, "claims": [{"name": S, "request": S}]},
    "readinessProbe": PROBE, "livenessProbe": PROBE, "startupProbe": PROBE,
    "volumeMounts": [{"name": S, "mountPath": S, "readOnly": B, "subPath": S, "subPathExpr": S,
                      "mountPropagation": S, "recursiveReadOnly": S}],
    "volumeDevices": [{"name": S, "devicePath": S}],
    "securityContext": OBJ, "lifecycle": OBJ, "terminationMessagePath": S, "terminationMessagePolicy": S,
    "stdin": B, "stdinOnce": B, "tty": B, "resizePolicy": [{"resourceName": S, "restartPolicy": S}],
    "restartPolicy": S}
KEY_TO_PATH = [{"key": S, "path": S, "mode": I}]
VOLUME = {"name": S,
          "configMap": {"name": S, "items": KEY_TO_PATH, "defaultMode": I, "optional": B},
          "secret": {"secretName": S, "items": KEY_TO_PATH, "defaultMode": I, "optional": B},
          "emptyDir": {"medium": S, "sizeLimit": Q}, "hostPath": {"path": S, "type": S},
          "persistentVolumeClaim": {"claimName": S, "readOnly": B}, "projected": OBJ, "downwardAPI": OBJ,
          "nfs": OBJ, "csi": OBJ, "ephemeral": OBJ, "image": OBJ}
POD_SPEC = {
    "containers": [CONTAINER], "initContainers": [CONTAINER], "ephemeralContainers": [OBJ],
    "volumes": [VOLUME], "nodeSelector": MAP,
    "tolerations": [{"key": S, "operator": S, "value": S, "effect": S, "tolerationSeconds": I}],
    "affinity": OBJ, "serviceAccountName": S, "serviceAccount": S, "automountServiceAccountToken": B,
    "terminationGracePeriodSeconds": I, "activeDeadlineSeconds": I, "hostNetwork": B, "hostPID": B,
    "hostIPC": B, "shareProcessNamespace": B, "dnsPolicy": S, "dnsConfig": OBJ, "restartPolicy": S,
    "imagePullSecrets": [{"name": S}], "priorityClassName": S, "priority": I, "preemptionPolicy": S,
    "nodeName": S, "hostname": S, "subdomain": S, "schedulerName": S, "securityContext": OBJ,
    "hostAliases": [{"ip": S, "hostnames": [S]}], "readinessGates": [{"conditionType": S}],
    "runtimeClassName": S, "enableServiceLinks": B, "overhead": QMAP, "topologySpreadConstraints": [OBJ],
    "setHostnameAsFQDN": B, "os": {"name": S}, "hostUsers": B, "schedulingGates": [{"name": S}],
    "resourceClaims": [OBJ]}
TEMPLATE = {"metadata": META, "spec": POD_SPEC}
CONDITION = {"type": S, "status": S, "lastUpdateTime": S, "lastTransitionTime": S, "lastProbeTime": S,
             "lastHeartbeatTime": S, "reason": S, "message": S, "observedGeneration": I}
DEPLOY_STATUS = {"observedGeneration": I, "replicas": I, "updatedReplicas": I, "readyReplicas": I,
                 "availableReplicas": I, "unavailableReplicas": I, "terminatingReplicas": I,
                 "conditions": [CONDITION], "collisionCount": I}
RS_STATUS = {"replicas": I, "fullyLabeledReplicas": I, "readyReplicas": I, "availableReplicas": I,
             "terminatingReplicas": I, "observedGeneration": I, "conditions": [CONDITION]}
OBJ_REF = {"kind": S, "namespace": S, "name": S, "uid": S, "apiVersion": S, "resourceVersion": S,
           "fieldPath": S}
EP_ADDR = {"ip": S, "hostname": S, "nodeName": S, "targetRef": OBJ_REF}


def top(spec=None, status=None, **extra):
    d = {"apiVersion": S, "kind": S, "metadata": META}
    if spec is not None:
        d["spec"] = spec
    if status is not None:
        d["status"] = status
    d.update(extra)
    return d


SCHEMAS = {
    "deployments": top({"replicas": I, "selector": LABEL_SELECTOR, "template": TEMPLATE,
                        "strategy": {"type": S, "rollingUpdate": {"maxSurge": IOS, "maxUnavailable": IOS}},
                        "minReadySeconds": I, "revisionHistoryLimit": I, "progressDeadlineSeconds": I,
                        "paused": B}, DEPLOY_STATUS),
    "replicasets": top({"replicas": I, "minReadySeconds": I, "selector": LABEL_SELECTOR,
                        "template": TEMPLATE}, RS_STATUS),
    "pods": top(POD_SPEC, OBJ),
    "services": top({"type": S, "selector": MAP,
                     "ports": [{"name": S, "port": I, "targetPort": IOS, "protocol": S, "nodePort": I,
                                "appProtocol": S}],
                     "clusterIP": S, "clusterIPs": [S], "externalTrafficPolicy": S, "internalTrafficPolicy": S,
                     "sessionAffinity": S, "sessionAffinityConfig": OBJ, "loadBalancerIP": S,
                     "loadBalancerSourceRanges": [S], "loadBalancerClass": S, "externalIPs": [S],
                     "externalName": S, "ipFamilies": [S], "ipFamilyPolicy": S, "healthCheckNodePort": I,
                     "publishNotReadyAddresses": B, "allocateLoadBalancerNodePorts": B,
                     "trafficDistribution": S},
                    {"loadBalancer": {"ingress": [{"ip": S, "hostname": S, "ipMode": S, "ports": [OBJ]}]},
                     "conditions": [OBJ]}),
    "endpoints": top(subsets=[{"addresses": [EP_ADDR], "notReadyAddresses": [EP_ADDR],
                               "ports": [{"name": S, "port": I, "protocol": S, "appProtocol": S}]}]),
    "configmaps": top(data=MAP, binaryData=MAP, immutable=B),
    "secrets": top(data=MAP, stringData=MAP, type=S, immutable=B),
    "namespaces": top({"finalizers": [S]}, {"phase": S, "conditions": [OBJ]}),
    "nodes": top({"podCIDR": S, "podCIDRs": [S], "taints": [{"key": S, "value": S, "effect": S, "timeAdded": S}],
                  "unschedulable": B, "providerID": S, "configSource": OBJ, "externalID": S},
                 {"addresses": [{"type": S, "address": S}], "conditions": [CONDITION], "nodeInfo": ("map", ANY),
                  "capacity": QMAP, "allocatable": QMAP, "daemonEndpoints": OBJ, "images": [OBJ],
                  "volumesInUse": [S], "volumesAttached": [OBJ], "config": OBJ, "phase": S,
                  "runtimeHandlers": [OBJ], "features": OBJ}),
    "events": top(involvedObject=OBJ_REF, reason=S, message=S, source={"component": S, "host": S},
                  firstTimestamp=S, lastTimestamp=S, count=I, type=S, eventTime=S, series=OBJ, action=S,
                  related=OBJ_REF, reportingComponent=S, reportingInstance=S),
    "scale": top({"replicas": I}, {"replicas": I, "selector": S}),
}

GO_TYPES = {S: "string", I: "int32", B: "bool", N: "float64", IOS: "intstr.IntOrString", Q: "resource.Quantity"}


def json_type(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def check_schema(value, schema, path, unknown, typeerrs, drop):
    """Walks value along schema. Unknown fields go to `unknown` (and are removed when drop),
    wrong JSON types to `typeerrs`."""
    if value is None or schema == ANY:
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            typeerrs.append((path, value, "struct"))
            return
        for k in list(value.keys()):
            sub = schema.get(k)
            p = "%s.%s" % (path, k) if path else k
            if sub is None:
                unknown.append(p)
                if drop:
                    del value[k]
                continue
            check_schema(value[k], sub, p, unknown, typeerrs, drop)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            typeerrs.append((path, value, "[]"))
            return
        for i, item in enumerate(value):
            check_schema(item, schema[0], "%s[%d]" % (path, i), unknown, typeerrs, drop)
    elif isinstance(schema, tuple):  # map
        if not isinstance(value, dict):
            typeerrs.append((path, value, "map[string]" + GO_TYPES.get(schema[1], "string")))
            return
        for k, v in value.items():
            check_schema(v, schema[1], "%s[%s]" % (path, k), unknown, typeerrs, drop)
    elif schema == OBJ:
        if not isinstance(value, dict):
            typeerrs.append((path, value, "struct"))
    elif schema == S:
        if not isinstance(value, str):
            typeerrs.append((path, value, "string"))
    elif schema == I:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            typeerrs.append((path, value, "int32"))
    elif schema == N:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            typeerrs.append((path, value, "float64"))
    elif schema == B:
        if not isinstance(value, bool):
            typeerrs.append((path, value, "bool"))
    elif schema == IOS:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            typeerrs.append((path, value, "intstr.IntOrString"))
    elif schema == Q:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            typeerrs.append((path, value, "resource.Quantity"))


# ---------------------------------------------------------------------------------------------
# resources

STD_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


class Res:
    def __init__(self, group, plural, kind, namespaced, short=(), verbs=STD_VERBS, subs=(), categories=(),
                 name_rule="subdomain", status_sub=False):
        self.group, self.plural, self.kind, self.namespaced = group, plural, kind, namespaced
        self.short, self.verbs, self.subs, self.categories = list(short), verbs, subs, list(categories)
        self.name_rule, self.status_sub = name_rule, status_sub
        self.api_version = "%s/v1" % group if group else "v1"
        self.qualified = "%s.%s" % (plural, group) if group else plural
        self.qualified_kind = "%s.%s" % (kind, group) if group else kind
        self.singular = kind.lower()
        self.key = (group, plural)


RESOURCES = {}
for _r in [
    Res("", "configmaps", "ConfigMap", True, ["cm"]),
    Res("", "endpoints", "Endpoints", True, ["ep"]),
    Res("", "events", "Event", True, ["ev"]),
    Res("", "namespaces", "Namespace", False, ["ns"], ["create", "delete", "get", "list", "patch", "update", "watch"],
        subs=["finalize", "status"], name_rule="label", status_sub=True),
    Res("", "nodes", "Node", False, ["no"], subs=["status"], status_sub=True),
    Res("", "pods", "Pod", True, ["po"], subs=["log", "status"], categories=["all"], status_sub=True),
    Res("", "secrets", "Secret", True),
    Res("", "services", "Service", True, ["svc"], ["create", "delete", "deletecollection", "get", "list", "patch",
                                                   "update", "watch"],
        subs=["status"], categories=["all"], name_rule="dns1035", status_sub=True),
    Res("apps", "deployments", "Deployment", True, ["deploy"], subs=["scale", "status"], categories=["all"],
        status_sub=True),
    Res("apps", "replicasets", "ReplicaSet", True, ["rs"], subs=["scale", "status"], categories=["all"],
        status_sub=True),
]:
    RESOURCES[_r.key] = _r
BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES.values()}


def R(plural):
    return RESOURCES[("apps" if plural in ("deployments", "replicasets") else "", plural)]


def api_resource_list(group):
    out = []
    for r in sorted((r for r in RESOURCES.values() if r.group == group), key=lambda r: r.plural):
        e = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced, "kind": r.kind,
             "verbs": r.verbs}
        if r.short:
            e["shortNames"] = r.short
        if r.categories:
            e["categories"] = r.categories
        e["storageVersionHash"] = base64.b64encode(hashlib.sha256(r.qualified.encode()).digest()[:8]).decode()
        out.append(e)
        for sub in r.subs:
            s = {"name": "%s/%s" % (r.plural, sub), "singularName": "", "namespaced": r.namespaced,
                 "kind": r.kind, "verbs": ["get", "patch", "update"]}
            if sub == "scale":
                s.update(group="autoscaling", version="v1", kind="Scale")
            elif sub == "log":
                s.update(verbs=["get"])
            elif sub == "finalize":
                s.update(verbs=["update"])
            out.append(s)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "%s/v1" % group if group else "v1",
            "resources": out}


# ---------------------------------------------------------------------------------------------
# label and field selectors

def split_selector(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(s):
    reqs = []
    if not s:
        return reqs
    for part in split_selector(s):
        m = re.match(r"^(\S+)\s+(in|notin)\s*\((.*)\)$", part)
        if m:
            vals = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), vals))
            continue
        m = re.match(r"^([^=!<>\s]+)\s*(==|=|!=|<|>)\s*(.*)$", part)
        if m:
            reqs.append((m.group(1), {"==": "=", "=": "="}.get(m.group(2), m.group(2)), m.group(3).strip()))
            continue
        if part.startswith("!") and re.match(r"^![^\s=!(),]+$", part):
            reqs.append((part[1:].strip(), "!exists", None))
            continue
        if re.match(r"^[^\s=!(),]+$", part):
            reqs.append((part, "exists", None))
            continue
        raise bad_request("unable to parse requirement: found '%s', expected: identifier" % part)
    return reqs


def selector_from_label_selector(ls):
    reqs = []
    for k, v in sorted((ls.get("matchLabels") or {}).items()):
        reqs.append((k, "=", v))
    for e in ls.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}.get(e.get("operator"))
        reqs.append((e.get("key"), op, set(e.get("values") or [])))
    return reqs


def labels_match(labels, reqs):
    labels = labels or {}
    for key, op, val in reqs:
        have = key in labels
        v = labels.get(key)
        if op == "=" and v != val:
            return False
        if op == "!=" and v == val:
            return False
        if op == "in" and (not have or v not in val):
            return False
        if op == "notin" and have and v in val:
            return False
        if op == "exists" and not have:
            return False
        if op == "!exists" and have:
            return False
        if op in ("<", ">"):
            try:
                a, b = int(v), int(val)
            except (TypeError, ValueError):
                return False
            if (op == "<" and not a < b) or (op == ">" and not a > b):
                return False
    return True


def selector_string(ls):
    parts = ["%s=%s" % (k, v) for k, v in sorted((ls.get("matchLabels") or {}).items())]
    for e in ls.get("matchExpressions") or []:
        op = e.get("operator")
        if op in ("In", "NotIn"):
            parts.append("%s %s (%s)" % (e["key"], op.lower(), ",".join(sorted(e.get("values") or []))))
        elif op == "Exists":
            parts.append(e["key"])
        else:
            parts.append("!" + e["key"])
    return ",".join(parts)


def parse_field_selector(s):
    reqs = []
    for part in split_selector(s or ""):
        m = re.match(r"^([^=!\s]+)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise bad_request('invalid selector: \'%s\'; can\'t understand \'%s\'' % (s, part))
        reqs.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
    return reqs


def fields_match(obj, reqs):
    for path, op, val in reqs:
        cur = obj
        for p in path.split("."):
            cur = cur.get(p) if isinstance(cur, dict) else None
        cur = "" if cur is None else (("true" if cur else "false") if isinstance(cur, bool) else str(cur))
        if (op == "=") != (cur == val):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# the store: objects, one global resourceVersion, watch history

class State:
    def __init__(self):
        self.objs = {k: {} for k in RESOURCES}
        self.rv = 0
        self.history = []          # (rv, reskey, type, obj, old)
        self.compacted = 0         # watches from an RV below this are Expired (410)
        self.dirty = False
        self.times = {}            # pod uid -> {"created": float, ...} (simulated kubelet clock)
        self.emitted = set()       # events already emitted
        self.lb_seen = {}          # service uid -> first seen
        self.rr = 0                # scheduler round robin
        self.pod_ip = 1
        self.started = now()


ST = State()


def okey(obj):
    m = obj["metadata"]
    return (m.get("namespace") or "", m["name"])


def get_obj(res, ns, name):
    return ST.objs[res.key].get((ns or "", name))


def list_objs(res, ns=None):
    d = ST.objs[res.key]
    keys = sorted(k for k in d if ns is None or k[0] == ns)
    return [d[k] for k in keys]


def _record(rtype, res, obj, old):
    ST.history.append((ST.rv, res.key, rtype, obj, old))
    limit = ARGS.history if ARGS else 5000
    if len(ST.history) > limit:
        drop = len(ST.history) - limit
        ST.compacted = ST.history[drop - 1][0]
        del ST.history[:drop]
    ST.dirty = True
    COND.notify_all()


def strip_volatile(obj):
    o = dict(obj)
    m = dict(o.get("metadata") or {})
    m.pop("resourceVersion", None)
    m.pop("managedFields", None)
    o["metadata"] = m
    return o


def commit_create(res, obj):
    ST.rv += 1
    obj["metadata"]["resourceVersion"] = str(ST.rv)
    obj["metadata"] = {k: obj["metadata"][k] for k in sorted(obj["metadata"], key=meta_pos)}
    ST.objs[res.key][okey(obj)] = obj
    _record("ADDED", res, obj, None)
    return obj


def commit_update(res, old, new):
    if strip_volatile(old) == strip_volatile(new) and \
            (old["metadata"].get("managedFields") or []) == (new["metadata"].get("managedFields") or []):
        return old
    ST.rv += 1
    new["metadata"]["resourceVersion"] = str(ST.rv)
    new["metadata"] = {k: new["metadata"][k] for k in sorted(new["metadata"], key=meta_pos)}
    ST.objs[res.key][okey(new)] = new
    _record("MODIFIED", res, new, old)
    return new


def commit_delete(res, obj):
    if ST.objs[res.key].pop(okey(obj), None) is None:
        return obj
    ST.rv += 1
    gone = copy.deepcopy(obj)
    gone["metadata"]["resourceVersion"] = str(ST.rv)
    _record("DELETED", res, gone, obj)
    ST.times.pop(obj["metadata"].get("uid"), None)
    return gone


def controller_update(res, new):
    """A controller write: commit when something changed (no RV churn otherwise)."""
    old = get_obj(res, new["metadata"].get("namespace"), new["metadata"]["name"])
    if old is None:
        return None
    if strip_volatile(old) == strip_volatile(new):
        return old
    return commit_update(res, old, new)


def save_state():
    if not ARGS or not ARGS.state_file or not ST.dirty:
        return
    data = {"rv": ST.rv, "pod_ip": ST.pod_ip,
            "objects": {"%s/%s" % k: list(v.values()) for k, v in ST.objs.items()}}
    tmp = ARGS.state_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, ARGS.state_file)
    ST.dirty = False


def load_state(path):
    if not path or not os.path.exists(path):
        return False
    with open(path) as f:
        data = json.load(f)
    ST.rv = int(data.get("rv", 0))
    ST.pod_ip = int(data.get("pod_ip", 1))
    for k, items in data.get("objects", {}).items():
        g, p = k.split("/", 1)
        if (g, p) in ST.objs:
            for o in items:
                ST.objs[(g, p)][okey(o)] = o
    ST.compacted = ST.rv
    return True


# ---------------------------------------------------------------------------------------------
# patches: JSON merge patch (RFC 7386), strategic merge patch, JSON patch (RFC 6902)

MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "mountPath", "imagePullSecrets": "name", "conditions": "type",
              "ownerReferences": "uid", "hostAliases": "ip", "topologySpreadConstraints": "topologyKey",
              "readinessGates": "conditionType", "addresses": "ip", "notReadyAddresses": "ip",
              "volumeDevices": "devicePath", "resizePolicy": "resourceName", "schedulingGates": "name",
              "taints": "key"}
PRIMITIVE_MERGE = {"finalizers"}


def merge_key(field, items, cur=None):
    if field == "ports":
        for lst in (items, cur or []):
            for it in lst:
                if isinstance(it, dict):
                    if "containerPort" in it:
                        return "containerPort"
                    if "port" in it:
                        return "port"
        return None
    return MERGE_KEYS.get(field)


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def strip_directives(v):
    if isinstance(v, dict):
        return {k: strip_directives(x) for k, x in v.items() if not k.startswith("$")}
    if isinstance(v, list):
        return [strip_directives(x) for x in v if not (isinstance(x, dict) and x.get("$patch") == "delete")]
    return v


def smp(orig, patch):
    """Strategic merge patch of `patch` into `orig`. Returns None when the map itself is deleted."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(orig, dict):
        orig = {}
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    result = dict(orig)
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys") or k.startswith("$setElementOrder/"):
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            f = k.split("/", 1)[1]
            if isinstance(result.get(f), list):
                result[f] = [x for x in result[f] if x not in (v or [])]
            continue
        if v is None:
            result.pop(k, None)
            continue
        cur = result.get(k)
        if isinstance(v, dict):
            r = smp(cur, v)
            if r is None:
                result.pop(k, None)
            else:
                result[k] = r
        elif isinstance(v, list):
            key = merge_key(k, v, cur if isinstance(cur, list) else None)
            if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in v):
                result[k] = strip_directives([x for x in v if not (isinstance(x, dict) and "$patch" in x)])
            elif key and isinstance(cur, list):
                result[k] = merge_list(cur, v, key)
            elif k in PRIMITIVE_MERGE and isinstance(cur, list):
                result[k] = cur + [x for x in v if x not in cur]
            else:
                result[k] = strip_directives(v)
        else:
            result[k] = v
    for k, order in patch.items():
        if k.startswith("$setElementOrder/") and isinstance(order, list):
            f = k.split("/", 1)[1]
            lst = result.get(f)
            if isinstance(lst, list):
                def pos(item):
                    for i, o in enumerate(order):
                        if isinstance(o, dict) and isinstance(item, dict):
                            if all(item.get(a) == b for a, b in o.items()):
                                return i
                        elif o == item:
                            return i
                    return len(order)
                result[f] = sorted(lst, key=pos)
    if "$retainKeys" in patch and isinstance(patch["$retainKeys"], list):
        keep = set(patch["$retainKeys"])
        result = {k: v for k, v in result.items() if k in keep}
    return result


def merge_list(cur, items, key):
    out = copy.deepcopy(cur)
    for item in items:
        if not isinstance(item, dict) or key not in item:
            continue
        idx = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(strip_directives(item))
        else:
            out[idx] = smp(out[idx], item)
    return out


def json_pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", "JSON pointer must start with '/': %s" % path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)

    def walk(parts):
        cur = doc
        for p in parts[:-1]:
            if isinstance(cur, list):
                cur = cur[int(p)]
            else:
                cur = cur[p]
        return cur, parts[-1]

    def get(path):
        cur = doc
        for p in json_pointer(path):
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def add(path, value):
        nonlocal doc
        parts = json_pointer(path)
        if not parts:
            doc = value
            return
        parent, last = walk(parts)
        if isinstance(parent, list):
            if last == "-":
                parent.append(value)
            else:
                i = int(last)
                if i > len(parent):
                    raise IndexError(last)
                parent.insert(i, value)
        else:
            parent[last] = value

    def remove(path):
        parent, last = walk(json_pointer(path))
        if isinstance(parent, list):
            return parent.pop(int(last))
        return parent.pop(last)

    for op in ops:
        try:
            kind, path = op.get("op"), op.get("path")
            if kind == "add":
                add(path, copy.deepcopy(op.get("value")))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op.get("value")))
            elif kind == "move":
                v = remove(op["from"])
                add(path, v)
            elif kind == "copy":
                add(path, copy.deepcopy(get(op["from"])))
            elif kind == "test":
                if get(path) != op.get("value"):
                    raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request",
                                   {"causes": [{"message": "testing value %s failed: test failed" % path}]})
            else:
                raise bad_request("Unexpected kind: %s" % kind)
        except ApiError:
            raise
        except (KeyError, IndexError, ValueError, TypeError, AttributeError):
            raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: "
                           "doc is missing path: \"%s\": missing value" % op.get("path"))
    return doc


# ---------------------------------------------------------------------------------------------
# server-side apply: field sets in the FieldsV1 shape, ownership per manager

SKIP_META = {"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
             "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"}


def item_key(field, item, items):
    key = merge_key(field, items)
    if key and isinstance(item, dict) and key in item:
        return "k:" + json.dumps({key: item[key]}, separators=(",", ":"))
    return None


# maps and structs the real schema marks atomic (+mapType=atomic / +structType=atomic): owned and
# replaced as a whole by server-side apply
ATOMIC = {("spec", "selector"), ("spec", "nodeSelector"), ("spec", "template", "spec", "nodeSelector"),
          ("spec", "template", "spec", "affinity", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution")}


def fieldset(obj, status=False):
    out = set()

    def walk(v, prefix, names):
        for k, x in v.items():
            if not prefix:
                if k in ("apiVersion", "kind") or (k == "status") != status:
                    continue
            if prefix == ("f:metadata",) and k in SKIP_META:
                continue
            if x is None:
                continue
            p = prefix + ("f:" + k,)
            n = names + (k,)
            if n in ATOMIC:
                out.add(p)
            elif isinstance(x, dict) and x:
                walk(x, p, n)
            elif isinstance(x, list) and x and all(item_key(k, it, x) for it in x):
                for it in x:
                    ip = p + (item_key(k, it, x),)
                    out.add(ip + (".",))
                    walk(it, ip, n)
            else:
                out.add(p)
    walk(obj, (), ())
    return out


def to_fieldsv1(paths):
    root = {}
    for p in sorted(paths):
        cur = root
        for seg in p:
            cur = cur.setdefault(seg, {})
    return root


def from_fieldsv1(d, prefix=()):
    out = set()
    for k, sub in (d or {}).items():
        if k == ".":
            out.add(prefix + (".",))
        elif not sub:
            out.add(prefix + (k,))
        else:
            out |= from_fieldsv1(sub, prefix + (k,))
    return out


def path_text(p):
    s = ""
    for seg in p:
        if seg.startswith("f:"):
            s += "." + seg[2:]
        elif seg.startswith("k:"):
            kv = json.loads(seg[2:])
            s += "[" + ",".join("%s=%s" % (a, json.dumps(b)) for a, b in kv.items()) + "]"
    return s


def locate(obj, path):
    """Returns (found, value) for a field path."""
    cur = obj
    for seg in path:
        if seg == ".":
            return True, cur
        if seg.startswith("f:"):
            if not isinstance(cur, dict) or seg[2:] not in cur:
                return False, None
            cur = cur[seg[2:]]
        elif seg.startswith("k:"):
            kv = json.loads(seg[2:])
            if not isinstance(cur, list):
                return False, None
            cur = next((x for x in cur if isinstance(x, dict) and all(x.get(a) == b for a, b in kv.items())), None)
            if cur is None:
                return False, None
    return True, cur


def remove_path(obj, path):
    if path[-1] == ".":
        found, lst = locate(obj, path[:-2])
        if found and isinstance(lst, list):
            kv = json.loads(path[-2][2:])
            lst[:] = [x for x in lst if not (isinstance(x, dict) and all(x.get(a) == b for a, b in kv.items()))]
        return
    found, parent = locate(obj, path[:-1])
    if found and isinstance(parent, dict):
        parent.pop(path[-1][2:], None)


def ssa_merge(live, applied, names=()):
    if not isinstance(applied, dict) or not isinstance(live, dict) or names in ATOMIC:
        return copy.deepcopy(applied)
    out = dict(live)
    for k, v in applied.items():
        n = names + (k,)
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            out[k] = ssa_merge(out.get(k), v, n)
        elif isinstance(v, list) and v and isinstance(out.get(k), list) and all(item_key(k, it, v) for it in v):
            key = merge_key(k, v)
            merged = copy.deepcopy(out[k])
            for it in v:
                idx = next((i for i, x in enumerate(merged) if isinstance(x, dict) and x.get(key) == it[key]), None)
                if idx is None:
                    merged.append(copy.deepcopy(it))
                else:
                    merged[idx] = ssa_merge(merged[idx], it, n)
            out[k] = merged
        else:
            out[k] = copy.deepcopy(v)
    return out


def owners_of(obj):
    res = []
    for e in dget(obj, "metadata", "managedFields", default=[]) or []:
        res.append({"manager": e.get("manager", ""), "operation": e.get("operation", "Update"),
                    "apiVersion": e.get("apiVersion", ""), "subresource": e.get("subresource", ""),
                    "time": e.get("time"), "paths": from_fieldsv1(e.get("fieldsV1"))})
    return res


def owners_to_managed(owners):
    out = []
    for o in owners:
        if not o["paths"]:
            continue
        e = {"manager": o["manager"], "operation": o["operation"], "apiVersion": o["apiVersion"],
             "time": o["time"] or ts(), "fieldsType": "FieldsV1", "fieldsV1": to_fieldsv1(o["paths"])}
        if o["subresource"]:
            e["subresource"] = o["subresource"]
        out.append(e)
    return out


def track_update(res, old, new, manager, subresource=""):
    """Ownership after a non-apply write: the writer takes the fields it changed."""
    status = subresource == "status"
    owners = owners_of(old) if old else []
    oldset = fieldset(old, status) if old else set()
    newset = fieldset(new, status)
    changed = set()
    for p in newset:
        if p not in oldset or locate(old, p) != locate(new, p):
            changed.add(p)
    gone = oldset - newset
    for o in owners:
        if (o["subresource"] == "status") == status:
            o["paths"] -= changed | gone
    if changed:
        me = next((o for o in owners if o["manager"] == manager and o["operation"] == "Update"
                   and o["subresource"] == subresource), None)
        if me is None:
            me = {"manager": manager, "operation": "Update", "apiVersion": res.api_version,
                  "subresource": subresource, "time": None, "paths": set()}
            owners.append(me)
        me["paths"] |= changed
        me["time"] = ts()
    new["metadata"]["managedFields"] = owners_to_managed(owners)
    if not new["metadata"]["managedFields"]:
        new["metadata"].pop("managedFields")


def apply_config(res, old, applied, manager, force):
    """Server-side apply of `applied` onto `old` (None: create). Returns the merged object with
    metadata.managedFields set, or raises a 409 Conflict naming the contested fields."""
    owners = owners_of(old) if old else []
    mine = next((o for o in owners if o["manager"] == manager and o["operation"] == "Apply"), None)
    new_owned = fieldset(applied)
    if old is None:
        merged = copy.deepcopy(applied)
    else:
        conflicts = []
        for p in sorted(new_owned):
            if p[-1] == ".":
                continue
            for o in owners:
                if o is mine or o["subresource"] == "status" or p not in o["paths"]:
                    continue
                if locate(old, p) != locate(applied, p):
                    conflicts.append((o, p))
        if conflicts and not force:
            by = {}
            for o, p in conflicts:
                by.setdefault((o["manager"], o["apiVersion"]), []).append(path_text(p))
            n = len(conflicts)
            if n == 1:
                (m, v), ps = next(iter(by.items()))
                text = 'Apply failed with 1 conflict: conflict with "%s" using %s: %s' % (m, v, ps[0])
            else:
                chunks = []
                for (m, v), ps in by.items():
                    chunks.append('conflicts with "%s" using %s:\n%s' % (m, v, "\n".join("- " + p for p in ps)))
                text = "Apply failed with %d conflicts: %s" % (n, "\n".join(chunks))
            causes = [{"reason": "FieldManagerConflict", "message": 'conflict with "%s" using %s' %
                       (o["manager"], o["apiVersion"]), "field": path_text(p)} for o, p in conflicts]
            raise ApiError(409, "Conflict", text, {"causes": causes})
        for o, p in conflicts:
            o["paths"].discard(p)
        others = set()
        for o in owners:
            if o is not mine and o["subresource"] != "status":
                others |= o["paths"]
        base = copy.deepcopy(old)
        removed = (mine["paths"] if mine else set()) - new_owned
        for p in sorted(removed, key=len, reverse=True):
            if p in others:
                continue
            if p[-1] == "." and any(q[:len(p) - 1] == p[:-1] for q in others):
                continue
            remove_path(base, p)
        merged = ssa_merge(base, applied)
    if mine is None:
        mine = {"manager": manager, "operation": "Apply", "apiVersion": res.api_version, "subresource": "",
                "time": None, "paths": set()}
        owners.append(mine)
    mine["paths"] = new_owned
    mine["time"] = ts()
    mine["apiVersion"] = res.api_version
    merged.setdefault("metadata", {})["managedFields"] = owners_to_managed(owners)
    return merged


# ---------------------------------------------------------------------------------------------
# validation (the real apiserver's rules and messages, for the fields clients write)

LABEL_RX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile("^" + LABEL_RX + "$")
DNS1123_SUB = re.compile("^" + LABEL_RX + r"(\." + LABEL_RX + ")*$")
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QNAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
CM_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

MSG_SUB = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
           "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
           "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
MSG_LABEL = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
             "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
             "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
MSG_1035 = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
            "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', "
            "regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')")
MSG_QNAME = ("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
             "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
             "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
MSG_LVALUE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
              "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
              "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")


def check_name(value, field, rule, errs):
    if rule == "label":
        if len(value) > 63:
            errs.append(FieldErr("Invalid", field, value, "must be no more than 63 characters"))
        if not DNS1123_LABEL.match(value):
            errs.append(FieldErr("Invalid", field, value, MSG_LABEL))
    elif rule == "dns1035":
        if len(value) > 63:
            errs.append(FieldErr("Invalid", field, value, "must be no more than 63 characters"))
        if not DNS1035.match(value):
            errs.append(FieldErr("Invalid", field, value, MSG_1035))
    else:
        if len(value) > 253:
            errs.append(FieldErr("Invalid", field, value, "must be no more than 253 characters"))
        if not DNS1123_SUB.match(value):
            errs.append(FieldErr("Invalid", field, value, MSG_SUB))


def check_qualified_name(key, field, errs):
    name = key
    if "/" in key:
        prefix, name = key.split("/", 1)
        if not prefix or len(prefix) > 253 or not DNS1123_SUB.match(prefix):
            errs.append(FieldErr("Invalid", field, key, "prefix part " + MSG_SUB))
    if not name:
        errs.append(FieldErr("Invalid", field, key, "name part must be non-empty"))
    elif len(name) > 63:
        errs.append(FieldErr("Invalid", field, key, "name part must be no more than 63 characters"))
    elif not QNAME.match(name):
        errs.append(FieldErr("Invalid", field, key, MSG_QNAME))


def check_labels(labels, field, errs):
    for k, v in sorted((labels or {}).items()):
        check_qualified_name(k, field, errs)
        if not isinstance(v, str):
            continue
        if len(v) > 63:
            errs.append(FieldErr("Invalid", field, v, "must be no more than 63 characters"))
        elif not LABEL_VALUE.match(v):
            errs.append(FieldErr("Invalid", field, v, MSG_LVALUE))


def check_meta(meta, field, errs):
    check_labels(meta.get("labels"), field + ".labels", errs)
    for k in sorted((meta.get("annotations") or {})):
        check_qualified_name(k, field + ".annotations", errs)
    total = sum(len(k) + len(v or "") for k, v in (meta.get("annotations") or {}).items())
    if total > 256 * 1024:
        errs.append(FieldErr("TooLong", field + ".annotations", None, "must have at most 262144 bytes"))


def check_port_num(v, field, errs):
    if isinstance(v, int) and not 1 <= v <= 65535:
        errs.append(FieldErr("Invalid", field, v, "must be between 1 and 65535, inclusive"))


def check_probe(p, field, errs):
    if not p:
        return
    handlers = [h for h in ("httpGet", "tcpSocket", "exec", "grpc") if p.get(h) is not None]
    if not handlers:
        errs.append(FieldErr("Required", field, None, "must specify a handler type"))
    elif len(handlers) > 1:
        errs.append(FieldErr("Forbidden", field + "." + handlers[1], None, "may not specify more than 1 handler type"))
    for h in ("httpGet", "tcpSocket"):
        port = dget(p, h, "port")
        if h in handlers and port is None:
            errs.append(FieldErr("Required", "%s.%s.port" % (field, h)))
        elif isinstance(port, int):
            check_port_num(port, "%s.%s.port" % (field, h), errs)
        elif isinstance(port, str) and not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", port or "-"):
            errs.append(FieldErr("Invalid", "%s.%s.port" % (field, h), port, "must contain only alpha-numeric "
                                 "characters (a-z, 0-9), and hyphens (-)"))
    for k in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "successThreshold", "failureThreshold"):
        v = p.get(k)
        if isinstance(v, int) and v < 0:
            errs.append(FieldErr("Invalid", "%s.%s" % (field, k), v, "must be greater than or equal to 0"))


def check_pod_spec(spec, field, errs, deployment=False):
    spec = spec or {}
    vols = set()
    for i, v in enumerate(spec.get("volumes") or []):
        f = "%s.volumes[%d]" % (field, i)
        n = v.get("name")
        if not n:
            errs.append(FieldErr("Required", f + ".name"))
        else:
            check_name(n, f + ".name", "label", errs)
            if n in vols:
                errs.append(FieldErr("Duplicate", f + ".name", n))
            vols.add(n)
        kinds = [k for k in v if k != "name" and v[k] is not None]
        if not kinds:
            errs.append(FieldErr("Required", f, None, "must specify a volume type"))
        elif len(kinds) > 1:
            errs.append(FieldErr("Forbidden", "%s.%s" % (f, kinds[1]), None, "may not specify more than 1 volume type"))
    containers = spec.get("containers")
    if not containers:
        errs.append(FieldErr("Required", field + ".containers"))
    names = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            f = "%s.%s[%d]" % (field, group, i)
            n = c.get("name")
            if not n:
                errs.append(FieldErr("Required", f + ".name"))
            else:
                check_name(n, f + ".name", "label", errs)
                if n in names:
                    errs.append(FieldErr("Duplicate", f + ".name", n))
                names.add(n)
            if not (c.get("image") or "").strip():
                errs.append(FieldErr("Required", f + ".image"))
            pnames = set()
            for j, p in enumerate(c.get("ports") or []):
                pf = "%s.ports[%d]" % (f, j)
                if p.get("containerPort") is None:
                    errs.append(FieldErr("Required", pf + ".containerPort"))
                else:
                    check_port_num(p.get("containerPort"), pf + ".containerPort", errs)
                if p.get("name"):
                    if len(p["name"]) > 15 or not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", p["name"]) \
                            or not re.search("[a-z]", p["name"]):
                        errs.append(FieldErr("Invalid", pf + ".name", p["name"],
                                             "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
                                             if len(p["name"]) <= 15 else "must be no more than 15 characters"))
                    elif p["name"] in pnames:
                        errs.append(FieldErr("Duplicate", pf + ".name", p["name"]))
                    pnames.add(p["name"])
                if p.get("protocol") not in (None, "TCP", "UDP", "SCTP"):
                    errs.append(FieldErr("NotSupported", pf + ".protocol", p["protocol"],
                                         supported=["SCTP", "TCP", "UDP"]))
            for j, e in enumerate(c.get("env") or []):
                ef = "%s.env[%d].name" % (f, j)
                if not e.get("name"):
                    errs.append(FieldErr("Required", ef))
                elif not ENV_NAME.match(e["name"]):
                    errs.append(FieldErr("Invalid", ef, e["name"], "a valid environment variable name must consist "
                                         "of alphabetic characters, digits, '_', '-', or '.', and must not start "
                                         "with a digit (e.g. 'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1', "
                                         "regex used for validation is '[-._a-zA-Z][-._a-zA-Z0-9]*')"))
                if e.get("value") is not None and e.get("valueFrom") is not None:
                    errs.append(FieldErr("Invalid", "%s.env[%d].valueFrom" % (f, j), "", "may not be specified when "
                                         "`value` is not empty"))
            for j, m in enumerate(c.get("volumeMounts") or []):
                mf = "%s.volumeMounts[%d]" % (f, j)
                if not m.get("name"):
                    errs.append(FieldErr("Required", mf + ".name"))
                elif m["name"] not in vols:
                    errs.append(FieldErr("NotFound", mf + ".name", m["name"]))
                if not m.get("mountPath"):
                    errs.append(FieldErr("Required", mf + ".mountPath"))
            if c.get("imagePullPolicy") not in (None, "Always", "IfNotPresent", "Never"):
                errs.append(FieldErr("NotSupported", f + ".imagePullPolicy", c["imagePullPolicy"],
                                     supported=["Always", "IfNotPresent", "Never"]))
            for pk in ("readinessProbe", "livenessProbe", "startupProbe"):
                check_probe(c.get(pk), "%s.%s" % (f, pk), errs)
    rp = spec.get("restartPolicy")
    if deployment and rp not in (None, "Always"):
        errs.append(FieldErr("NotSupported", field + ".restartPolicy", rp, supported=["Always"]))
    elif rp not in (None, "Always", "OnFailure", "Never"):
        errs.append(FieldErr("NotSupported", field + ".restartPolicy", rp, supported=["Always", "OnFailure", "Never"]))
    if spec.get("dnsPolicy") not in (None, "ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"):
        errs.append(FieldErr("NotSupported", field + ".dnsPolicy", spec["dnsPolicy"],
                             supported=["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"]))
    check_labels(spec.get("nodeSelector"), field + ".nodeSelector", errs)


def int_or_percent(v, total, round_up):
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.endswith("%"):
        try:
            p = int(v[:-1])
        except ValueError:
            return 0
        x = total * p / 100.0
        return int(-(-x // 1)) if round_up else int(x // 1)
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def check_workload(res, obj, old, errs):
    spec = obj.get("spec") or {}
    sel = spec.get("selector")
    if not sel:
        errs.append(FieldErr("Required", "spec.selector"))
    elif not (sel.get("matchLabels") or sel.get("matchExpressions")):
        errs.append(FieldErr("Invalid", "spec.selector", sel, "empty selector is invalid for deployment"))
    else:
        check_labels(sel.get("matchLabels"), "spec.selector.matchLabels", errs)
        for i, e in enumerate(sel.get("matchExpressions") or []):
            if e.get("operator") not in ("In", "NotIn", "Exists", "DoesNotExist"):
                errs.append(FieldErr("Invalid", "spec.selector.matchExpressions[%d].operator" % i, e.get("operator"),
                                     "not a valid selector operator"))
    tmpl = spec.get("template") or {}
    tlabels = dget(tmpl, "metadata", "labels", default={})
    check_meta(tmpl.get("metadata") or {}, "spec.template.metadata", errs)
    if sel and (sel.get("matchLabels") or sel.get("matchExpressions")):
        if not labels_match(tlabels, selector_from_label_selector(sel)):
            errs.append(FieldErr("Invalid", "spec.template.metadata.labels", tlabels,
                                 "`selector` does not match template `labels`"))
    if not tmpl:
        errs.append(FieldErr("Required", "spec.template"))
    check_pod_spec(tmpl.get("spec"), "spec.template.spec", errs, deployment=True)
    for k in ("replicas", "minReadySeconds", "revisionHistoryLimit"):
        v = spec.get(k)
        if isinstance(v, int) and v < 0:
            errs.append(FieldErr("Invalid", "spec." + k, v, "must be greater than or equal to 0"))
    if res.plural == "deployments":
        st = spec.get("strategy") or {}
        typ = st.get("type")
        if typ not in (None, "RollingUpdate", "Recreate"):
            errs.append(FieldErr("NotSupported", "spec.strategy.type", typ, supported=["Recreate", "RollingUpdate"]))
        if typ == "Recreate" and st.get("rollingUpdate") is not None:
            errs.append(FieldErr("Forbidden", "spec.strategy.rollingUpdate", None,
                                 "may not be specified when strategy `type` is 'Recreate'"))
        ru = st.get("rollingUpdate") or {}
        if typ != "Recreate" and ru:
            ms = int_or_percent(ru.get("maxSurge", "25%"), 100, True)
            mu = int_or_percent(ru.get("maxUnavailable", "25%"), 100, False)
            if ms == 0 and mu == 0:
                errs.append(FieldErr("Invalid", "spec.strategy.rollingUpdate.maxUnavailable", ru.get("maxUnavailable"),
                                     "may not be 0 when `maxSurge` is 0"))
        pds = spec.get("progressDeadlineSeconds")
        if isinstance(pds, int) and pds <= (spec.get("minReadySeconds") or 0):
            errs.append(FieldErr("Invalid", "spec.progressDeadlineSeconds", pds,
                                 "must be greater than minReadySeconds"))
    if old is not None:
        osel = dget(old, "spec", "selector")
        if osel != sel:
            errs.append(FieldErr("Invalid", "spec.selector", sel, "field is immutable"))


def check_service(obj, old, errs):
    spec = obj.get("spec") or {}
    typ = spec.get("type", "ClusterIP")
    if typ not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errs.append(FieldErr("NotSupported", "spec.type", typ,
                             supported=["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]))
    ports = spec.get("ports") or []
    if typ != "ExternalName" and not ports and spec.get("clusterIP") != "None":
        errs.append(FieldErr("Required", "spec.ports"))
    if typ == "ExternalName" and not spec.get("externalName"):
        errs.append(FieldErr("Required", "spec.externalName"))
    names = set()
    for i, p in enumerate(ports):
        f = "spec.ports[%d]" % i
        if len(ports) > 1 and not p.get("name"):
            errs.append(FieldErr("Required", f + ".name"))
        if p.get("name"):
            check_name(p["name"], f + ".name", "label", errs)
            if p["name"] in names:
                errs.append(FieldErr("Duplicate", f + ".name", p["name"]))
            names.add(p["name"])
        if p.get("port") is None:
            errs.append(FieldErr("Required", f + ".port"))
        else:
            check_port_num(p["port"], f + ".port", errs)
        if p.get("protocol") not in (None, "TCP", "UDP", "SCTP"):
            errs.append(FieldErr("NotSupported", f + ".protocol", p["protocol"], supported=["SCTP", "TCP", "UDP"]))
        tp = p.get("targetPort")
        if isinstance(tp, int):
            check_port_num(tp, f + ".targetPort", errs)
        np_ = p.get("nodePort")
        if np_ is not None and np_ != 0:
            if typ not in ("NodePort", "LoadBalancer"):
                errs.append(FieldErr("Forbidden", f + ".nodePort", None, "may not be used when `type` is '%s'" % typ))
            elif not 30000 <= np_ <= 32767:
                errs.append(FieldErr("Invalid", f + ".nodePort", np_, "provided port is not in the valid range. "
                                     "The range of valid ports is 30000-32767"))
    check_labels(spec.get("selector"), "spec.selector", errs)
    if spec.get("sessionAffinity") not in (None, "None", "ClientIP"):
        errs.append(FieldErr("NotSupported", "spec.sessionAffinity", spec["sessionAffinity"],
                             supported=["ClientIP", "None"]))
    etp = spec.get("externalTrafficPolicy")
    if etp is not None and typ not in ("NodePort", "LoadBalancer"):
        errs.append(FieldErr("Invalid", "spec.externalTrafficPolicy", etp,
                             "may only be set when `type` is 'NodePort' or 'LoadBalancer'"))
    elif etp not in (None, "Cluster", "Local"):
        errs.append(FieldErr("NotSupported", "spec.externalTrafficPolicy", etp, supported=["Cluster", "Local"]))
    if old is not None:
        ocip = dget(old, "spec", "clusterIP")
        if ocip and spec.get("clusterIP") != ocip and typ != "ExternalName" and \
                dget(old, "spec", "type") != "ExternalName":
            errs.append(FieldErr("Invalid", "spec.clusterIPs[0]", spec.get("clusterIP"),
                                 "may not change once set"))


def check_secret_data(res, obj):
    if res.plural != "secrets":
        return
    for k, v in (obj.get("data") or {}).items():
        if not isinstance(v, str):
            continue
        bad = next((i for i, ch in enumerate(v) if not (ch.isalnum() or ch in "+/=")), None)
        if bad is None:
            try:
                base64.b64decode(v, validate=True)
            except (ValueError, base64.binascii.Error):
                bad = len(v) - len(v) % 4 if len(v) % 4 else len(v) - 1
        if bad is not None:
            raise bad_request('Secret in version "v1" cannot be handled as a Secret: illegal base64 data at '
                              'input byte %d' % bad)


def validate(res, obj, old, errs):
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        errs.append(FieldErr("Required", "metadata.name", None, "name or generateName is required"))
    else:
        check_name(name, "metadata.name", res.name_rule, errs)
    check_meta(meta, "metadata", errs)
    p = res.plural
    if p in ("deployments", "replicasets"):
        check_workload(res, obj, old, errs)
    elif p == "pods":
        check_pod_spec(obj.get("spec"), "spec", errs)
        if old is not None:
            a, b = copy.deepcopy(old.get("spec") or {}), copy.deepcopy(obj.get("spec") or {})
            for s in (a, b):
                for c in (s.get("containers") or []) + (s.get("initContainers") or []):
                    c.pop("image", None)
                for k in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "nodeName"):
                    s.pop(k, None)
            if a != b:
                errs.append(FieldErr("Forbidden", "spec", None,
                                     "pod updates may not change fields other than `spec.containers[*].image`,"
                                     "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                                     "`spec.tolerations` (only additions to existing tolerations),"
                                     "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                                     "previously negative)"))
    elif p == "services":
        check_service(obj, old, errs)
    elif p in ("configmaps", "secrets"):
        seen = set()
        for fld in ("data", "binaryData"):
            for k in sorted(obj.get(fld) or {}):
                if len(k) > 253 or not CM_KEY.match(k):
                    errs.append(FieldErr("Invalid", "%s[%s]" % (fld, k), k, "a valid config key must consist of "
                                         "alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  "
                                         "or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"))
                if k in seen:
                    errs.append(FieldErr("Invalid", "data", k, "duplicate of key present in binaryData"))
                seen.add(k)
        if old is not None and old.get("immutable"):
            if old.get("data") != obj.get("data") or old.get("binaryData") != obj.get("binaryData"):
                errs.append(FieldErr("Forbidden", "data", None, "field is immutable when `immutable` is set"))
            if not obj.get("immutable"):
                errs.append(FieldErr("Forbidden", "immutable", None, "field is immutable when `immutable` is set"))
        if p == "secrets" and old is not None and old.get("type") != obj.get("type"):
            errs.append(FieldErr("Invalid", "type", obj.get("type"), "field is immutable"))
    elif p == "nodes":
        for i, t in enumerate(dget(obj, "spec", "taints", default=[])):
            if t.get("effect") not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                errs.append(FieldErr("NotSupported", "spec.taints[%d].effect" % i, t.get("effect"),
                                     supported=["NoExecute", "NoSchedule", "PreferNoSchedule"]))
    if res.namespaced and old is None and meta.get("namespace"):
        check_name(meta["namespace"], "metadata.namespace", "label", errs)


# ---------------------------------------------------------------------------------------------
# defaults (what the real server fills in) and IP / port allocation

def setdef(d, k, v):
    """Go's defaulting: an empty string is unset too."""
    if d.get(k) in (None, ""):
        d[k] = v
    return d[k]


def default_probe(p):
    if not p:
        return
    p.setdefault("timeoutSeconds", 1)
    p.setdefault("periodSeconds", 10)
    p.setdefault("successThreshold", 1)
    p.setdefault("failureThreshold", 3)
    if isinstance(p.get("httpGet"), dict):
        p["httpGet"].setdefault("path", "/")
        p["httpGet"].setdefault("scheme", "HTTP")


def default_pod_spec(spec):
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            img = c.get("image") or ""
            tag = img.rsplit("/", 1)[-1]
            if not c.get("imagePullPolicy"):
                c["imagePullPolicy"] = "Always" if ("@" not in tag and (":" not in tag or tag.endswith(":latest"))) \
                    else "IfNotPresent"
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})
            for p in c.get("ports") or []:
                setdef(p, "protocol", "TCP")
            for pk in ("readinessProbe", "livenessProbe", "startupProbe"):
                default_probe(c.get(pk))
    setdef(spec, "restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    setdef(spec, "dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    setdef(spec, "schedulerName", "default-scheduler")
    if spec.get("serviceAccountName") and "serviceAccount" not in spec:
        spec["serviceAccount"] = spec["serviceAccountName"]
    for v in spec.get("volumes") or []:
        for k in ("configMap", "secret"):
            if isinstance(v.get(k), dict):
                v[k].setdefault("defaultMode", 420)
        if isinstance(v.get("hostPath"), dict):
            v["hostPath"].setdefault("type", "")


def used_cluster_ips():
    return {dget(s, "spec", "clusterIP") for s in ST.objs[R("services").key].values()}


def alloc_cluster_ip():
    used = used_cluster_ips()
    net = ipaddress.ip_network("10.43.0.0/16")
    for i in range(10, net.num_addresses - 1):
        ip = str(net.network_address + i)
        if ip not in used:
            return ip
    raise ApiError(500, "InternalError", "range is full")


def used_node_ports(exclude_uid=None):
    out = set()
    for s in ST.objs[R("services").key].values():
        if s["metadata"].get("uid") == exclude_uid:
            continue
        for p in dget(s, "spec", "ports", default=[]):
            if p.get("nodePort"):
                out.add(p["nodePort"])
    return out


def default_service(res, obj, old, errs):
    spec = obj.setdefault("spec", {})
    typ = setdef(spec, "type", "ClusterIP")
    if typ == "ExternalName":
        spec.pop("clusterIP", None)
        return
    setdef(spec, "sessionAffinity", "None")
    for p in spec.get("ports") or []:
        setdef(p, "protocol", "TCP")
        if p.get("targetPort") is None and p.get("port") is not None:
            p["targetPort"] = p["port"]
    if old is not None:
        for k in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
            if k not in spec and dget(old, "spec", k) is not None:
                spec[k] = copy.deepcopy(old["spec"][k])
        oldports = {(p.get("port"), p.get("protocol")): p.get("nodePort") for p in dget(old, "spec", "ports", default=[])}
        if typ in ("NodePort", "LoadBalancer"):
            for p in spec.get("ports") or []:
                if not p.get("nodePort") and oldports.get((p.get("port"), p.get("protocol"))):
                    p["nodePort"] = oldports[(p.get("port"), p.get("protocol"))]
    cip = spec.get("clusterIP")
    if cip in (None, ""):
        spec["clusterIP"] = alloc_cluster_ip()
    elif cip != "None" and old is None:
        try:
            ok = ipaddress.ip_address(cip) in ipaddress.ip_network("10.43.0.0/16")
        except ValueError:
            ok = False
        if not ok:
            errs.append(FieldErr("Invalid", "spec.clusterIPs", [cip], "failed to allocate IP %s: provided IP is not "
                                 "in the valid range. The range of valid IPs is 10.43.0.0/16" % cip))
        elif cip in used_cluster_ips():
            errs.append(FieldErr("Invalid", "spec.clusterIPs", [cip],
                                 "failed to allocate IP %s: provided IP is already allocated" % cip))
    spec["clusterIPs"] = [spec["clusterIP"]]
    if spec["clusterIP"] != "None" or "ipFamilies" not in spec:
        spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    if typ in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
        if typ == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        used = used_node_ports(exclude_uid=obj["metadata"].get("uid"))
        for i, p in enumerate(spec.get("ports") or []):
            np_ = p.get("nodePort")
            if np_:
                if np_ in used:
                    errs.append(FieldErr("Invalid", "spec.ports[%d].nodePort" % i, np_,
                                         "provided port is already allocated"))
                used.add(np_)
            elif typ == "NodePort" or spec.get("allocateLoadBalancerNodePorts", True):
                free = [x for x in range(30000, 32768) if x not in used]
                p["nodePort"] = random.choice(free)
                used.add(p["nodePort"])
    else:
        for p in spec.get("ports") or []:
            p.pop("nodePort", None)
        spec.pop("externalTrafficPolicy", None)


def apply_defaults(res, obj, old, errs):
    p = res.plural
    spec = obj.get("spec")
    if p == "deployments":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        st = spec.setdefault("strategy", {})
        setdef(st, "type", "RollingUpdate")
        if st["type"] == "RollingUpdate":
            ru = st.setdefault("rollingUpdate", {})
            ru.setdefault("maxUnavailable", "25%")
            ru.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        default_pod_spec(dget(spec, "template", "spec", default={}) or spec.setdefault("template", {}).setdefault("spec", {}))
    elif p == "replicasets":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        default_pod_spec(dget(spec, "template", "spec", default={}) or spec.setdefault("template", {}).setdefault("spec", {}))
    elif p == "pods":
        default_pod_spec(obj.setdefault("spec", {}))
        if spec and spec.get("nodeName") and old is None:
            pass
    elif p == "services":
        default_service(res, obj, old, errs)
    elif p == "secrets":
        setdef(obj, "type", "Opaque")
        sd = obj.pop("stringData", None)
        if sd:
            data = obj.setdefault("data", {}) or {}
            for k, v in sd.items():
                data[k] = base64.b64encode((v or "").encode()).decode()
            obj["data"] = data
    elif p == "namespaces":
        if old is None:
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif p == "nodes":
        default_node(obj)


def default_node(obj, index=None):
    st = obj.setdefault("status", {})
    name = obj["metadata"]["name"]
    labels = obj["metadata"].setdefault("labels", {})
    labels.setdefault("kubernetes.io/hostname", name)
    labels.setdefault("kubernetes.io/os", "linux")
    labels.setdefault("kubernetes.io/arch", "amd64")
    labels.setdefault("beta.kubernetes.io/os", "linux")
    labels.setdefault("beta.kubernetes.io/arch", "amd64")
    if index is None:
        index = len(ST.objs[R("nodes").key])
    if not st.get("addresses"):
        st["addresses"] = [{"type": "InternalIP", "address": "10.0.0.%d" % (10 + index % 240)},
                           {"type": "Hostname", "address": name}]
    if not st.get("conditions"):
        t = ts()
        st["conditions"] = [{"type": "Ready", "status": "True", "lastHeartbeatTime": t, "lastTransitionTime": t,
                             "reason": "KubeletReady", "message": "kubelet is posting ready status"}]
    st.setdefault("capacity", {"cpu": "4", "memory": "8137668Ki", "pods": "110", "ephemeral-storage": "61202244Ki"})
    st.setdefault("allocatable", dict(st["capacity"]))
    st.setdefault("nodeInfo", {"machineID": hashlib.md5(name.encode()).hexdigest(),
                               "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
                               "bootID": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                               "kernelVersion": "6.1.0-18-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                               "containerRuntimeVersion": "containerd://1.7.15", "kubeletVersion": "v1.30.0",
                               "kubeProxyVersion": "v1.30.0", "operatingSystem": "linux", "architecture": "amd64"})
    st.setdefault("daemonEndpoints", {"kubeletEndpoint": {"Port": 10250}})
    spec = obj.setdefault("spec", {})
    if "podCIDR" not in spec:
        spec["podCIDR"] = "10.42.%d.0/24" % (index % 250)
        spec["podCIDRs"] = [spec["podCIDR"]]


# ---------------------------------------------------------------------------------------------
# verbs

def q1(query, k, default=None):
    v = query.get(k)
    return v[0] if v else default


def qbool(query, k):
    return (q1(query, k) or "").lower() in ("true", "1")


def manager_name(query, ua):
    fm = q1(query, "fieldManager")
    if fm:
        return fm
    return ((ua or "").split("/")[0] or "unknown")[:128]


def expected_type(res, sub):
    if sub == "scale":
        return "autoscaling/v1", "Scale"
    return res.api_version, res.kind


def check_kind(res, body, sub=None, require=False):
    if not isinstance(body, dict):
        raise bad_request("the body of the request must be a JSON object")
    av, kind = expected_type(res, sub)
    got_av, got_kind = body.get("apiVersion"), body.get("kind")
    if require and not got_kind:
        raise bad_request("Object 'Kind' is missing in '%s'" % json.dumps(body, separators=(",", ":"))[:200])
    if require and not got_av:
        raise bad_request("Object 'apiVersion' is missing in '%s'" % json.dumps(body, separators=(",", ":"))[:200])
    if got_av and got_av != av:
        raise bad_request("the API version in the data (%s) does not match the expected API version (%s)" % (got_av, av))
    if got_kind and got_kind != kind:
        raise bad_request("the kind in the data (%s) does not match the expected kind (%s)" % (got_kind, kind))


def schema_check(res, body, query, name, apply=False, sub=None):
    schema = SCHEMAS["scale" if sub == "scale" else res.plural]
    mode = q1(query, "fieldValidation", "") or ""
    unknown, typeerrs = [], []
    check_schema(body, schema, "", unknown, typeerrs, drop=(mode in ("Ignore", "Warn") and not apply))
    kind = "Scale" if sub == "scale" else res.kind
    if typeerrs:
        p, v, t = typeerrs[0]
        raise bad_request('%s in version "v1" cannot be handled as a %s: json: cannot unmarshal %s into Go struct '
                          'field %s.%s of type %s' % (kind, kind, json_type(v), kind, p, t))
    if not unknown:
        return []
    if apply or mode not in ("Strict", "Ignore", "Warn"):
        raise invalid(res, name or "", [FieldErr("Unknown", u) for u in unknown])
    if mode == "Strict":
        raise bad_request('%s in version "v1" cannot be handled as a %s: strict decoding error: %s' % (
            kind, kind, ", ".join('unknown field "%s"' % u for u in unknown)))
    if mode == "Warn":
        return ['unknown field "%s"' % u for u in unknown]
    return []


def check_namespace(res, ns, name):
    if not res.namespaced:
        return
    nsobj = get_obj(R("namespaces"), "", ns)
    if nsobj is None:
        raise ns_not_found(ns)
    if dget(nsobj, "metadata", "deletionTimestamp") or dget(nsobj, "status", "phase") == "Terminating":
        d = {"name": name}
        if res.group:
            d["group"] = res.group
        d["kind"] = res.plural
        d["causes"] = [{"reason": "NamespaceTerminating", "message": "namespace %s is being terminated" % ns,
                        "field": "metadata.namespace"}]
        raise ApiError(403, "Forbidden", '%s "%s" is forbidden: unable to create new content in namespace %s '
                       'because it is being terminated' % (res.qualified, name, ns), d)


def qos_class(spec):
    cs = spec.get("containers") or []
    if not any(c.get("resources", {}).get("limits") or c.get("resources", {}).get("requests") for c in cs):
        return "BestEffort"
    if all(c.get("resources", {}).get("limits") and
           (c["resources"].get("requests") in (None, c["resources"]["limits"])) for c in cs):
        return "Guaranteed"
    return "Burstable"


def strip_nulls(v):
    """JSON null is "unset" for the Go types behind the API: the server never stores it."""
    if isinstance(v, dict):
        return {k: strip_nulls(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [strip_nulls(x) for x in v if x is not None]
    return v


def do_create(res, ns, body, query, ua, apply_managed=None, internal=False):
    check_kind(res, body)
    obj = strip_nulls(body)
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = obj["metadata"] = {}
    name = meta.get("name") or ""
    warnings = [] if internal or apply_managed is not None else schema_check(res, obj, query, name)
    obj["apiVersion"], obj["kind"] = res.api_version, res.kind
    obj = {"apiVersion": obj.pop("apiVersion"), "kind": obj.pop("kind"), **obj}
    meta = obj["metadata"]
    if res.namespaced:
        if meta.get("namespace") and meta["namespace"] != ns:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        meta["namespace"] = ns
    else:
        meta.pop("namespace", None)
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = meta["generateName"] + rand_suffix()
    name = meta.get("name") or ""
    for k in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
              "deletionGracePeriodSeconds", "selfLink", "managedFields"):
        meta.pop(k, None)
    if res.plural in ("deployments", "replicasets", "services", "pods"):
        obj.pop("status", None)
    check_secret_data(res, obj)
    check_namespace(res, ns, name)
    errs = []
    apply_defaults(res, obj, None, errs)
    validate(res, obj, None, errs)
    if errs:
        raise invalid(res, name, errs)
    if get_obj(res, ns, name) is not None:
        raise already_exists(res, name)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = ts()
    if res.plural in ("deployments", "replicasets"):
        meta["generation"] = 1
    if res.plural == "pods":
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj["spec"])}
    if res.plural == "services":
        obj["status"] = {"loadBalancer": {}}
    if apply_managed is not None:
        meta["managedFields"] = apply_managed
    else:
        track_update(res, None, obj, manager_name(query, ua))
    meta = {k: meta[k] for k in sorted(meta, key=meta_pos)}
    obj["metadata"] = meta
    if q1(query, "dryRun") == "All":
        return obj, warnings
    if res.plural == "pods":
        ST.times[meta["uid"]] = {"created": now()}
    commit_create(res, obj)
    return obj, warnings


META_ORDER = ["name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
              "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
              "ownerReferences", "finalizers", "managedFields"]


def do_update(res, ns, name, body, query, ua, sub=None, apply_managed=None):
    old = get_obj(res, ns, name)
    if old is None:
        raise not_found(res, name)
    check_kind(res, body)
    obj = strip_nulls(body)
    warnings = [] if apply_managed is not None else schema_check(res, obj, query, name)
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = obj["metadata"] = {}
    if meta.get("name") and meta["name"] != name:
        raise bad_request("the name of the object (%s) does not match the name on the URL (%s)" % (meta["name"], name))
    if res.namespaced and meta.get("namespace") and meta["namespace"] != ns:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
    rv = meta.get("resourceVersion")
    if rv and rv != old["metadata"]["resourceVersion"]:
        raise conflict(res, name)
    if sub == "status":
        new = copy.deepcopy(old)
        if "status" in obj:
            new["status"] = obj["status"]
        else:
            new.pop("status", None)
    else:
        new = obj
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        nm = new["metadata"]
        nm["name"] = name
        if res.namespaced:
            nm["namespace"] = ns
        for k in ("uid", "creationTimestamp", "generation", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if k in old["metadata"]:
                nm[k] = old["metadata"][k]
            else:
                nm.pop(k, None)
        if res.status_sub:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        if res.plural == "namespaces":
            new.setdefault("spec", {})["finalizers"] = dget(old, "spec", "finalizers", default=[])
        if dget(old, "metadata", "deletionTimestamp"):
            added = set(nm.get("finalizers") or []) - set(dget(old, "metadata", "finalizers", default=[]))
            if added:
                raise ApiError(422, "Invalid", '%s "%s" is invalid: metadata.finalizers: Forbidden: no new finalizers '
                               'can be added if the object is being deleted, found new finalizers %s' %
                               (res.qualified_kind, name, json.dumps(sorted(added))))
    check_secret_data(res, new)
    errs = []
    apply_defaults(res, new, old, errs)
    validate(res, new, old, errs)
    if errs:
        raise invalid(res, name, errs)
    if res.plural in ("deployments", "replicasets") and new.get("spec") != old.get("spec"):
        new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
    if strip_volatile(new) == strip_volatile(old):
        untimed = [dict(e, time=None) for e in old["metadata"].get("managedFields") or []]
        if apply_managed is None or [dict(e, time=None) for e in apply_managed] == untimed:
            return old, warnings
    if apply_managed is not None:
        new["metadata"]["managedFields"] = apply_managed
    else:
        new["metadata"]["managedFields"] = copy.deepcopy(old["metadata"].get("managedFields") or [])
        track_update(res, old, new, manager_name(query, ua), sub or "")
    new["metadata"] = {k: new["metadata"][k] for k in sorted(new["metadata"], key=meta_pos)}
    if q1(query, "dryRun") == "All":
        return new, warnings
    result = commit_update(res, old, new)
    if dget(result, "metadata", "deletionTimestamp") and not dget(result, "metadata", "finalizers") \
            and res.plural != "pods" and res.plural != "namespaces":
        result = commit_delete(res, result)
    return result, warnings


def meta_pos(k):
    return META_ORDER.index(k) if k in META_ORDER else len(META_ORDER)


PATCH_TYPES = {"application/merge-patch+json", "application/strategic-merge-patch+json",
               "application/json-patch+json", "application/apply-patch+yaml"}


def do_patch(res, ns, name, body, ctype, query, ua, sub=None):
    ct = (ctype or "").split(";")[0].strip().lower()
    if ct not in PATCH_TYPES:
        raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - accepted media "
                       "types include: application/json-patch+json, application/merge-patch+json, "
                       "application/apply-patch+yaml, application/strategic-merge-patch+json")
    if ct == "application/apply-patch+yaml":
        return do_apply(res, ns, name, body, query, ua, sub)
    if q1(query, "force"):
        raise ApiError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: may not be '
                       'specified for non-apply patch')
    old = get_obj(res, ns, name)
    if old is None:
        raise not_found(res, name)
    base = scale_of(res, old) if sub == "scale" else copy.deepcopy(old)
    if ct == "application/json-patch+json":
        patched = json_patch(base, body)
    else:
        if not isinstance(body, dict):
            raise bad_request("json: cannot unmarshal %s into Go value of type map[string]interface {}" % json_type(body))
        patched = merge_patch(base, body) if ct == "application/merge-patch+json" else smp(base, body)
    if not isinstance(patched, dict):
        raise bad_request("the patch did not produce an object")
    if sub == "scale":
        return update_scale(res, old, patched, query, ua), 200, []
    obj, warnings = do_update(res, ns, name, patched, query, ua, sub)
    return obj, 200, warnings


def do_apply(res, ns, name, body, query, ua, sub=None):
    manager = q1(query, "fieldManager")
    if not manager:
        raise ApiError(422, "Invalid", 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is '
                       'required for apply patch', {"group": "meta.k8s.io", "kind": "PatchOptions", "causes": [
                           {"reason": "FieldValueRequired", "message": "Required value: is required for apply patch",
                            "field": "fieldManager"}]})
    force = qbool(query, "force")
    if sub == "scale":
        old = get_obj(res, ns, name)
        if old is None:
            raise not_found(res, name)
        return update_scale(res, old, merge_patch(scale_of(res, old), body or {}), query, ua), 200, []
    check_kind(res, body, require=True)
    schema_check(res, body, query, name, apply=True)
    meta = body.get("metadata") or {}
    if meta.get("name") and meta["name"] != name:
        raise bad_request("the name of the object (%s) does not match the name on the URL (%s)" % (meta["name"], name))
    if res.namespaced and meta.get("namespace") and meta["namespace"] != ns:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
    applied = copy.deepcopy(body)
    applied.setdefault("metadata", {})["name"] = name
    if res.namespaced:
        applied["metadata"]["namespace"] = ns
    applied["metadata"].pop("managedFields", None)
    old = get_obj(res, ns, name)
    if sub == "status":
        if old is None:
            raise not_found(res, name)
        st_applied = {"status": applied.get("status") or {}}
        new = copy.deepcopy(old)
        new["status"] = ssa_merge(old.get("status") or {}, st_applied["status"])
        obj, warnings = do_update(res, ns, name, new, query, ua, sub="status")
        return obj, 200, warnings
    merged = apply_config(res, old, applied, manager, force)
    managed = merged["metadata"].pop("managedFields")
    if old is None:
        obj, warnings = do_create(res, ns, merged, query, ua, apply_managed=managed)
        return obj, 201, warnings
    obj, warnings = do_update(res, ns, name, merged, query, ua, apply_managed=managed)
    return obj, 200, warnings


def scale_of(res, obj):
    m = obj["metadata"]
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": m["name"], "namespace": m.get("namespace"), "uid": m.get("uid"),
                         "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp")},
            "spec": {"replicas": dget(obj, "spec", "replicas", default=0)},
            "status": {"replicas": dget(obj, "status", "replicas", default=0),
                       "selector": selector_string(dget(obj, "spec", "selector", default={}))}}


def update_scale(res, old, body, query, ua):
    check_kind(res, body, sub="scale")
    name = old["metadata"]["name"]
    schema_check(res, body, query, name, sub="scale")
    rv = dget(body, "metadata", "resourceVersion")
    if rv and rv != old["metadata"]["resourceVersion"]:
        raise conflict(res, name)
    replicas = dget(body, "spec", "replicas", default=0)
    if not isinstance(replicas, int) or replicas < 0:
        raise ApiError(422, "Invalid", 'Scale.autoscaling "%s" is invalid: spec.replicas: Invalid value: %s: must be '
                       'greater than or equal to 0' % (name, gorepr(replicas)),
                       {"name": name, "group": "autoscaling", "kind": "Scale", "causes": [
                           {"reason": "FieldValueInvalid", "message": "Invalid value: %s: must be greater than or "
                            "equal to 0" % gorepr(replicas), "field": "spec.replicas"}]})
    new = copy.deepcopy(old)
    new["spec"]["replicas"] = replicas
    if new["spec"] != old["spec"]:
        new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        track_update(res, old, new, manager_name(query, ua), "scale")
        if q1(query, "dryRun") != "All":
            new = commit_update(res, old, new)
    return scale_of(res, new)


def do_delete(res, ns, name, query, body):
    old = get_obj(res, ns, name)
    if old is None:
        raise not_found(res, name)
    opts = body if isinstance(body, dict) else {}
    policy = opts.get("propagationPolicy") or q1(query, "propagationPolicy")
    if opts.get("orphanDependents") is True or qbool(query, "orphanDependents"):
        policy = "Orphan"
    if policy not in (None, "Orphan", "Background", "Foreground"):
        raise ApiError(422, "Invalid", 'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported '
                       'value: "%s": supported values: "Foreground", "Background", "Orphan", "nil"' % policy)
    grace = opts.get("gracePeriodSeconds")
    if grace is None and q1(query, "gracePeriodSeconds") is not None:
        try:
            grace = int(q1(query, "gracePeriodSeconds"))
        except ValueError:
            raise bad_request("invalid gracePeriodSeconds")
    pre = opts.get("preconditions") or {}
    m = old["metadata"]
    if pre.get("uid") and pre["uid"] != m.get("uid"):
        raise conflict(res, name, "Precondition failed: UID in precondition: %s, UID in object meta: %s" %
                       (pre["uid"], m.get("uid")))
    if pre.get("resourceVersion") and pre["resourceVersion"] != m.get("resourceVersion"):
        raise conflict(res, name, "Precondition failed: ResourceVersion in precondition: %s, ResourceVersion in "
                       "object meta: %s" % (pre["resourceVersion"], m.get("resourceVersion")))
    dry = (q1(query, "dryRun") == "All") or ("All" in (opts.get("dryRun") or []))
    if res.plural == "namespaces":
        if m.get("deletionTimestamp"):
            raise conflict(res, name, "The system is ensuring all content is removed from this namespace.  Upon "
                           "completion, this namespace will automatically be purged by the system.")
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = ts()
        new["status"] = {"phase": "Terminating"}
        if dry:
            return new
        return commit_update(res, old, new)
    if dry:
        return success_status(res, old)
    if m.get("deletionTimestamp"):
        if res.plural == "pods" and grace == 0:
            return commit_delete(res, old)
        return old
    if policy == "Orphan":
        orphan_dependents(m.get("uid"))
    if policy == "Foreground" and res.plural in ("deployments", "replicasets"):
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = ts()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        new["metadata"]["finalizers"] = (m.get("finalizers") or []) + ["foregroundDeletion"]
        return commit_update(res, old, new)
    if m.get("finalizers"):
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = ts()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        return commit_update(res, old, new)
    if res.plural == "pods":
        if grace is None:
            grace = dget(old, "spec", "terminationGracePeriodSeconds", default=30)
        if grace > 0 and (dget(old, "spec", "nodeName") or dget(old, "status", "phase") == "Running"):
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = ts(now() + grace)
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            ST.times.setdefault(m["uid"], {"created": now()})["deleting"] = now()
            ST.times[m["uid"]]["grace"] = grace
            return commit_update(res, old, new)
        return commit_delete(res, old)
    gone = commit_delete(res, old)
    if res.plural == "services":
        ep = get_obj(R("endpoints"), ns, name)
        if ep is not None:
            commit_delete(R("endpoints"), ep)
    return success_status(res, gone)


def orphan_dependents(uid):
    for rk in ST.objs:
        for o in list(ST.objs[rk].values()):
            refs = dget(o, "metadata", "ownerReferences", default=[])
            if any(r.get("uid") == uid for r in refs):
                new = copy.deepcopy(o)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                if not new["metadata"]["ownerReferences"]:
                    del new["metadata"]["ownerReferences"]
                commit_update(RESOURCES[rk], o, new)


def do_finalize(res, name, body, query):
    old = get_obj(res, "", name)
    if old is None:
        raise not_found(res, name)
    if not isinstance(body, dict):
        raise bad_request("the body of the request must be a JSON object")
    new = copy.deepcopy(old)
    new.setdefault("spec", {})["finalizers"] = dget(body, "spec", "finalizers", default=[])
    return commit_update(res, old, new)


# ---------------------------------------------------------------------------------------------
# reading: list items, Tables (kubectl get), PartialObjectMetadata

def list_item(obj):
    o = dict(obj)
    o.pop("apiVersion", None)
    o.pop("kind", None)
    return o


def partial_meta(obj):
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def col(name, typ="string", desc="", priority=0, fmt=""):
    return {"name": name, "type": typ, "format": fmt, "description": desc, "priority": priority}


def pod_cells(p):
    st = p.get("status") or {}
    cstats = st.get("containerStatuses") or []
    total = len(dget(p, "spec", "containers", default=[]))
    ready = sum(1 for c in cstats if c.get("ready"))
    restarts = sum(c.get("restartCount", 0) for c in cstats)
    reason = st.get("reason") or st.get("phase") or "Unknown"
    initializing = False
    for i, c in enumerate(st.get("initContainerStatuses") or []):
        w = dget(c, "state", "waiting", "reason")
        t = dget(c, "state", "terminated")
        if t and t.get("exitCode") == 0:
            continue
        initializing = True
        reason = "Init:" + (w or (t or {}).get("reason") or "%d/%d" % (i, len(st.get("initContainerStatuses"))))
        break
    if not initializing:
        has_running = False
        for c in reversed(cstats):
            w = dget(c, "state", "waiting", "reason")
            t = dget(c, "state", "terminated")
            if w:
                reason = w
            elif t:
                reason = t.get("reason") or ("Signal:%s" % t.get("signal") if t.get("signal") else
                                             "ExitCode:%s" % t.get("exitCode"))
            elif c.get("ready") and dget(c, "state", "running"):
                has_running = True
        if reason == "Completed" and has_running:
            reason = "Running"
    if dget(p, "metadata", "deletionTimestamp"):
        reason = "Terminating"
    gates = dget(p, "spec", "readinessGates", default=[])
    return [p["metadata"]["name"], "%d/%d" % (ready, total), reason, restarts, age(p),
            st.get("podIP") or "<none>", dget(p, "spec", "nodeName") or "<none>", "<none>",
            "%d/%d" % (0, len(gates)) if gates else "<none>"]


def containers_images(tmpl_spec):
    cs = (tmpl_spec or {}).get("containers") or []
    return ",".join(c.get("name", "") for c in cs), ",".join(c.get("image", "") for c in cs)


def service_ports(s):
    out = []
    for p in dget(s, "spec", "ports", default=[]):
        if p.get("nodePort"):
            out.append("%s:%s/%s" % (p.get("port"), p["nodePort"], p.get("protocol", "TCP")))
        else:
            out.append("%s/%s" % (p.get("port"), p.get("protocol", "TCP")))
    return ",".join(out) or "<none>"


def service_external(s):
    typ = dget(s, "spec", "type", default="ClusterIP")
    ext = list(dget(s, "spec", "externalIPs", default=[]))
    if typ == "ExternalName":
        return dget(s, "spec", "externalName", default="<none>")
    if typ == "LoadBalancer":
        ips = [i.get("ip") or i.get("hostname") for i in dget(s, "status", "loadBalancer", "ingress", default=[])]
        ext = ips + ext
        return ",".join(ext) if ext else "<pending>"
    return ",".join(ext) if ext else "<none>"


def endpoints_text(e):
    out = []
    for ss in e.get("subsets") or []:
        for a in ss.get("addresses") or []:
            for p in ss.get("ports") or [{}]:
                out.append("%s:%s" % (a["ip"], p["port"]) if p.get("port") else a["ip"])
    if not out:
        return "<none>"
    if len(out) > 3:
        return ",".join(out[:3]) + " + %d more..." % (len(out) - 3)
    return ",".join(out)


def node_cells(n):
    conds = {c.get("type"): c.get("status") for c in dget(n, "status", "conditions", default=[])}
    status = "Ready" if conds.get("Ready") == "True" else "NotReady" if "Ready" in conds else "Unknown"
    if dget(n, "spec", "unschedulable"):
        status += ",SchedulingDisabled"
    roles = sorted(k.split("/", 1)[1] for k in (n["metadata"].get("labels") or {})
                   if k.startswith("node-role.kubernetes.io/"))
    addrs = dget(n, "status", "addresses", default=[])
    iip = next((a["address"] for a in addrs if a.get("type") == "InternalIP"), "<none>")
    eip = next((a["address"] for a in addrs if a.get("type") == "ExternalIP"), "<none>")
    info = dget(n, "status", "nodeInfo", default={})
    return [n["metadata"]["name"], status, ",".join(roles) or "<none>", age(n), info.get("kubeletVersion", ""),
            iip, eip, info.get("osImage", "<unknown>"), info.get("kernelVersion", "<unknown>"),
            info.get("containerRuntimeVersion", "<unknown>")]


NAME_COL = col("Name", fmt="name", desc="Name must be unique within a namespace.")
AGE_COL = col("Age", desc="CreationTimestamp is a timestamp representing the server time when this object was created.")


def table_columns(res):
    p = res.plural
    if p == "pods":
        return [NAME_COL, col("Ready", desc="The aggregate readiness state of this pod for accepting traffic."),
                col("Status", desc="The aggregate status of the containers in this pod."),
                col("Restarts", "string", "The number of times the containers in this pod have been restarted."),
                AGE_COL, col("IP", desc="IP address allocated to the pod.", priority=1),
                col("Node", desc="Name of the node this pod is running on.", priority=1),
                col("Nominated Node", desc="Nominated node name.", priority=1),
                col("Readiness Gates", desc="Pod readiness gates.", priority=1)]
    if p == "deployments":
        return [NAME_COL, col("Ready", desc="Number of the pod with ready state"),
                col("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that "
                    "have the desired template spec."),
                col("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) "
                    "targeted by this deployment."), AGE_COL,
                col("Containers", desc="Names of each container in the template.", priority=1),
                col("Images", desc="Images referenced by each container in the template.", priority=1),
                col("Selector", desc="Label selector for pods.", priority=1)]
    if p == "replicasets":
        return [NAME_COL, col("Desired", "integer", "Replicas is the number of desired replicas."),
                col("Current", "integer", "Replicas is the most recently observed number of replicas."),
                col("Ready", "integer", "The number of ready replicas for this replica set."), AGE_COL,
                col("Containers", desc="Names of each container in the template.", priority=1),
                col("Images", desc="Images referenced by each container in the template.", priority=1),
                col("Selector", desc="Selector is a label query over pods that should match the replica count.",
                    priority=1)]
    if p == "services":
        return [NAME_COL, col("Type", desc="type determines how the Service is exposed."),
                col("Cluster-IP", desc="clusterIP is the IP address of the service."),
                col("External-IP", desc="List of IP addresses for which nodes in the cluster will also accept "
                    "traffic for this service."),
                col("Port(s)", desc="The list of ports that are exposed by this service."), AGE_COL,
                col("Selector", desc="Route service traffic to pods with label keys and values matching this "
                    "selector.", priority=1)]
    if p == "endpoints":
        return [NAME_COL, col("Endpoints", desc="Endpoints of the service"), AGE_COL]
    if p == "namespaces":
        return [NAME_COL, col("Status", desc="The status of the namespace"), AGE_COL]
    if p == "nodes":
        return [NAME_COL, col("Status", desc="The status of the node"), col("Roles", desc="The roles of the node"),
                AGE_COL, col("Version", desc="Kubelet Version reported by the node."),
                col("Internal-IP", desc="List of addresses reachable to the node.", priority=1),
                col("External-IP", desc="List of addresses reachable to the node.", priority=1),
                col("OS-Image", desc="OS Image reported by the node from /etc/os-release.", priority=1),
                col("Kernel-Version", desc="Kernel Version reported by the node.", priority=1),
                col("Container-Runtime", desc="Container Runtime Version reported by the node.", priority=1)]
    if p == "configmaps":
        return [NAME_COL, col("Data", "string", "Data contains the configuration data."), AGE_COL]
    if p == "secrets":
        return [NAME_COL, col("Type", desc="Used to facilitate programmatic handling of secret data."),
                col("Data", "string", "Data contains the secret data."), AGE_COL]
    if p == "events":
        return [col("Last Seen"), col("Type"), col("Reason"), col("Object"), col("Message")]
    return [NAME_COL, AGE_COL]


def table_cells(res, o):
    p, name = res.plural, o["metadata"]["name"]
    spec, st = o.get("spec") or {}, o.get("status") or {}
    if p == "pods":
        return pod_cells(o)
    if p == "deployments":
        c, i = containers_images(dget(spec, "template", "spec"))
        return [name, "%d/%d" % (st.get("readyReplicas", 0), spec.get("replicas", 0)), st.get("updatedReplicas", 0),
                st.get("availableReplicas", 0), age(o), c, i, selector_string(spec.get("selector") or {})]
    if p == "replicasets":
        c, i = containers_images(dget(spec, "template", "spec"))
        return [name, spec.get("replicas", 0), st.get("replicas", 0), st.get("readyReplicas", 0), age(o), c, i,
                selector_string(spec.get("selector") or {})]
    if p == "services":
        sel = ",".join("%s=%s" % kv for kv in sorted((spec.get("selector") or {}).items()))
        return [name, spec.get("type", "ClusterIP"), spec.get("clusterIP") or "<none>", service_external(o),
                service_ports(o), age(o), sel or "<none>"]
    if p == "endpoints":
        return [name, endpoints_text(o), age(o)]
    if p == "namespaces":
        return [name, st.get("phase", "Active"), age(o)]
    if p == "nodes":
        return node_cells(o)
    if p == "configmaps":
        return [name, len(o.get("data") or {}) + len(o.get("binaryData") or {}), age(o)]
    if p == "secrets":
        return [name, o.get("type", "Opaque"), len(o.get("data") or {}), age(o)]
    if p == "events":
        io = o.get("involvedObject") or {}
        last = parse_ts(o.get("lastTimestamp")) or parse_ts(dget(o, "metadata", "creationTimestamp")) or now()
        return [human_duration(now() - last), o.get("type", ""), o.get("reason", ""),
                "%s/%s" % ((io.get("kind") or "").lower(), io.get("name", "")), o.get("message", "")]
    return [name, age(o)]


def table(res, objs, query, list_meta=None, columns=True):
    include = q1(query, "includeObject", "Metadata")
    rows = []
    for o in objs:
        row = {"cells": table_cells(res, o)}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = partial_meta(o)
        rows.append(row)
    t = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta or {"resourceVersion": str(ST.rv)}}
    if columns and not qbool(query, "noHeaders"):
        t["columnDefinitions"] = table_columns(res)
    t["rows"] = rows
    return t


def render_mode(accept):
    a = accept or ""
    if "as=Table" in a:
        return "table"
    if "as=PartialObjectMetadataList" in a or "as=PartialObjectMetadata" in a:
        return "meta"
    return "json"


def do_list(res, ns, query, accept):
    ls = parse_label_selector(q1(query, "labelSelector"))
    fs = parse_field_selector(q1(query, "fieldSelector"))
    items = [o for o in list_objs(res, ns) if labels_match(dget(o, "metadata", "labels"), ls) and fields_match(o, fs)]
    list_rv = str(ST.rv)
    cont = q1(query, "continue")
    if cont:
        try:
            tok = json.loads(base64.urlsafe_b64decode(cont.encode() + b"==").decode())
            start = tuple(tok["start"])
            list_rv = str(tok["rv"])
        except Exception:
            raise bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
        items = [o for o in items if okey(o) > start]
    meta = {"resourceVersion": list_rv}
    try:
        limit = int(q1(query, "limit") or 0)
    except ValueError:
        limit = 0
    if limit > 0 and len(items) > limit:
        rest = len(items) - limit
        items = items[:limit]
        tok = {"v": "meta.k8s.io/v1", "rv": int(list_rv), "start": list(okey(items[-1]))}
        meta["continue"] = base64.urlsafe_b64encode(json.dumps(tok).encode()).decode().rstrip("=")
        meta["remainingItemCount"] = rest
    mode = render_mode(accept)
    if mode == "table":
        return table(res, items, query, meta)
    if mode == "meta":
        return {"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
                "items": [partial_meta(o) for o in items]}
    return {"kind": res.kind + "List", "apiVersion": res.api_version, "metadata": meta,
            "items": [list_item(o) for o in items]}


def render_one(res, obj, query, accept):
    mode = render_mode(accept)
    if mode == "table" and obj.get("kind") == res.kind:
        return table(res, [obj], query)
    if mode == "meta" and obj.get("kind") == res.kind:
        return partial_meta(obj)
    return obj


# ---------------------------------------------------------------------------------------------
# controllers (run every --tick seconds under LOCK)

REV = "deployment.kubernetes.io/revision"


def internal_create(res, body):
    try:
        obj, _ = do_create(res, body["metadata"].get("namespace") or "", body, {}, "kube-controller-manager",
                           internal=True)
        return obj
    except ApiError:
        return None


def emit_event(obj, etype, reason, message, component, host="", field_path=None):
    m = obj["metadata"]
    key = (m.get("uid"), reason, message)
    if key in ST.emitted:
        return
    ST.emitted.add(key)
    ns = m.get("namespace") or "default"
    t = ts()
    io = {"kind": obj.get("kind"), "namespace": ns, "name": m["name"], "uid": m.get("uid"),
          "apiVersion": obj.get("apiVersion"), "resourceVersion": m.get("resourceVersion")}
    if field_path:
        io["fieldPath"] = field_path
    src = {"component": component}
    if host:
        src["host"] = host
    ev = {"apiVersion": "v1", "kind": "Event",
          "metadata": {"name": "%s.%016x" % (m["name"], random.getrandbits(64)), "namespace": ns},
          "involvedObject": io, "reason": reason, "message": message, "source": src, "firstTimestamp": t,
          "lastTimestamp": t, "count": 1, "type": etype, "eventTime": None, "reportingComponent": component,
          "reportingInstance": host}
    internal_create(R("events"), ev)


def template_hash(tmpl):
    h = hashlib.sha256(json.dumps(tmpl, sort_keys=True, separators=(",", ":")).encode()).digest()
    n = int.from_bytes(h[:8], "big")
    out = ""
    for _ in range(10):
        out += NAME_ALPHABET[n % len(NAME_ALPHABET)]
        n //= len(NAME_ALPHABET)
    return out


def controlled_by(o, uid):
    return any(r.get("uid") == uid and r.get("controller") for r in dget(o, "metadata", "ownerReferences", default=[]))


def rev_of(rs):
    try:
        return int(dget(rs, "metadata", "annotations", REV, default="0"))
    except ValueError:
        return 0


def set_condition(conds, t, ctype, status, reason, message, bump=False, deployment=True):
    prev = next((c for c in conds if c.get("type") == ctype), None)
    c = {"type": ctype, "status": status}
    if deployment:
        same = prev is not None and prev.get("status") == status and prev.get("reason") == reason \
            and prev.get("message") == message and not bump
        c["lastUpdateTime"] = prev.get("lastUpdateTime") if same else ts(t)
    c["lastTransitionTime"] = prev.get("lastTransitionTime") if prev and prev.get("status") == status else ts(t)
    c["reason"] = reason
    c["message"] = message
    if prev is None:
        conds.append(c)
    else:
        conds[conds.index(prev)] = c


def deployment_controller(t):
    D, RS, P = R("deployments"), R("replicasets"), R("pods")
    for d in list_objs(D):
        m = d["metadata"]
        if m.get("deletionTimestamp"):
            continue
        ns, name, uid = m["namespace"], m["name"], m["uid"]
        spec = d.get("spec") or {}
        replicas = spec.get("replicas", 1)
        tmpl = spec.get("template") or {}
        h = template_hash(tmpl)
        rses = [rs for rs in list_objs(RS, ns) if controlled_by(rs, uid)]
        new_rs = next((rs for rs in rses if dget(rs, "metadata", "labels", "pod-template-hash") == h), None)
        max_rev = max([rev_of(rs) for rs in rses] or [0])
        created = False
        paused = bool(spec.get("paused"))
        strategy = dget(spec, "strategy", "type", default="RollingUpdate")
        surge = 0 if strategy == "Recreate" else int_or_percent(
            dget(spec, "strategy", "rollingUpdate", "maxSurge", default="25%"), replicas, True)
        if new_rs is None and not paused:
            labels = dict(dget(tmpl, "metadata", "labels", default={}))
            labels["pod-template-hash"] = h
            rs_tmpl = copy.deepcopy(tmpl)
            rs_tmpl.setdefault("metadata", {})["labels"] = labels
            sel = copy.deepcopy(spec.get("selector") or {})
            sel.setdefault("matchLabels", {})["pod-template-hash"] = h
            body = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": "%s-%s" % (name, h), "namespace": ns, "labels": labels,
                                 "annotations": {"deployment.kubernetes.io/desired-replicas": str(replicas),
                                                 "deployment.kubernetes.io/max-replicas": str(replicas + surge),
                                                 REV: str(max_rev + 1)},
                                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                      "uid": uid, "controller": True, "blockOwnerDeletion": True}]},
                    "spec": {"replicas": 0, "minReadySeconds": spec.get("minReadySeconds", 0), "selector": sel,
                             "template": rs_tmpl}}
            new_rs = internal_create(RS, body)
            if new_rs is None:
                continue
            created = True
            rses.append(new_rs)
        elif new_rs is not None and rev_of(new_rs) < max_rev:
            upd = copy.deepcopy(new_rs)
            upd["metadata"]["annotations"][REV] = str(max_rev + 1)
            new_rs = controller_update(RS, upd)
        new_uid = new_rs["metadata"]["uid"] if new_rs else None
        olds = [rs for rs in rses if rs["metadata"]["uid"] != new_uid]
        targets = {}
        if new_rs is not None:
            if strategy == "Recreate":
                old_pods = any(controlled_by(p, rs["metadata"]["uid"]) for rs in olds for p in list_objs(P, ns))
                targets[new_uid] = 0 if (old_pods or any(dget(rs, "spec", "replicas", default=0) for rs in olds)) \
                    else replicas
                for rs in olds:
                    targets[rs["metadata"]["uid"]] = 0
            else:
                targets[new_uid] = replicas
                allowed = max(0, replicas - dget(new_rs, "status", "availableReplicas", default=0))
                for rs in sorted(olds, key=rev_of, reverse=True):
                    n = min(dget(rs, "spec", "replicas", default=0), allowed)
                    targets[rs["metadata"]["uid"]] = n
                    allowed -= n
        for rs in rses:
            ru = rs["metadata"]["uid"]
            cur = dget(rs, "spec", "replicas", default=0)
            want = targets.get(ru)
            if want is None:
                continue
            ann = dget(rs, "metadata", "annotations", default={})
            if want != cur or (ru == new_uid and ann.get("deployment.kubernetes.io/desired-replicas") != str(replicas)):
                upd = copy.deepcopy(rs)
                upd["spec"]["replicas"] = want
                if want != cur:
                    upd["metadata"]["generation"] = rs["metadata"].get("generation", 1) + 1
                upd["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/desired-replicas"] = str(replicas)
                upd["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] = str(replicas + surge)
                controller_update(RS, upd)
                if want != cur:
                    msg = ("Scaled up replica set %s to %d from %d" % (rs["metadata"]["name"], want, cur) if cur
                           else "Scaled up replica set %s to %d" % (rs["metadata"]["name"], want)) if want > cur \
                        else "Scaled down replica set %s to %d from %d" % (rs["metadata"]["name"], want, cur)
                    emit_event(d, "Normal", "ScalingReplicaSet", msg, "deployment-controller")
        # old ReplicaSets beyond revisionHistoryLimit
        limit = spec.get("revisionHistoryLimit", 10)
        dead = sorted([rs for rs in list_objs(RS, ns) if controlled_by(rs, uid) and rs["metadata"]["uid"] != new_uid
                       and not dget(rs, "spec", "replicas", default=0) and not dget(rs, "status", "replicas")],
                      key=rev_of)
        for rs in dead[:max(0, len(dead) - limit)]:
            commit_delete(RS, rs)
        # status
        rses = [rs for rs in list_objs(RS, ns) if controlled_by(rs, uid)]
        new_rs = next((rs for rs in rses if rs["metadata"]["uid"] == new_uid), None)
        total = sum(dget(rs, "status", "replicas", default=0) for rs in rses)
        updated = dget(new_rs, "status", "replicas", default=0) if new_rs else 0
        ready = sum(dget(rs, "status", "readyReplicas", default=0) for rs in rses)
        avail = sum(dget(rs, "status", "availableReplicas", default=0) for rs in rses)
        old_st = d.get("status") or {}
        st = {"observedGeneration": m.get("generation", 1)}
        for k, v in (("replicas", total), ("updatedReplicas", updated), ("readyReplicas", ready),
                     ("availableReplicas", avail), ("unavailableReplicas", max(0, replicas - avail))):
            if v:
                st[k] = v
        conds = copy.deepcopy(old_st.get("conditions") or [])
        max_unavail = 0 if strategy == "Recreate" else min(replicas, int_or_percent(
            dget(spec, "strategy", "rollingUpdate", "maxUnavailable", default="25%"), replicas, False))
        if avail >= replicas - max_unavail:
            set_condition(conds, t, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        else:
            set_condition(conds, t, "Available", "False", "MinimumReplicasUnavailable",
                          "Deployment does not have minimum availability.")
        rs_name = new_rs["metadata"]["name"] if new_rs else ""
        prev = next((c for c in conds if c.get("type") == "Progressing"), None)
        complete = new_rs is not None and updated == replicas and total == replicas and avail == replicas
        progressed = (updated > old_st.get("updatedReplicas", 0) or ready > old_st.get("readyReplicas", 0)
                      or avail > old_st.get("availableReplicas", 0)
                      or (total - updated) < (old_st.get("replicas", 0) - old_st.get("updatedReplicas", 0)))
        deadline = spec.get("progressDeadlineSeconds")
        if paused:
            set_condition(conds, t, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused")
        elif complete:
            set_condition(conds, t, "Progressing", "True", "NewReplicaSetAvailable",
                          'ReplicaSet "%s" has successfully progressed.' % rs_name)
        elif created:
            set_condition(conds, t, "Progressing", "True", "NewReplicaSetCreated",
                          'Created new replica set "%s"' % rs_name, bump=True)
        elif prev is None or prev.get("reason") in ("DeploymentPaused", "NewReplicaSetAvailable") or progressed:
            set_condition(conds, t, "Progressing", "True", "ReplicaSetUpdated",
                          'ReplicaSet "%s" is progressing.' % rs_name, bump=True)
        elif deadline is not None and prev.get("status") != "False" and \
                t - (parse_ts(prev.get("lastUpdateTime")) or t) > deadline:
            set_condition(conds, t, "Progressing", "False", "ProgressDeadlineExceeded",
                          'ReplicaSet "%s" has timed out progressing.' % rs_name)
            emit_event(d, "Warning", "ProgressDeadlineExceeded",
                       'Deployment "%s" has timed out progressing.' % name, "deployment-controller")
        order = {"Available": 0, "Progressing": 1}
        conds.sort(key=lambda c: order.get(c.get("type"), 2))
        st["conditions"] = conds
        new_d = copy.deepcopy(d)
        new_d["status"] = st
        if new_rs is not None and dget(d, "metadata", "annotations", REV) != str(rev_of(new_rs)):
            new_d["metadata"].setdefault("annotations", {})[REV] = str(rev_of(new_rs))
        controller_update(D, new_d)


def pod_ready(p):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in dget(p, "status", "conditions", default=[]))


def ready_since(p):
    tm = ST.times.get(p["metadata"].get("uid"), {})
    if "ready_at" in tm:
        return tm["ready_at"]
    c = next((c for c in dget(p, "status", "conditions", default=[]) if c.get("type") == "Ready"), {})
    return parse_ts(c.get("lastTransitionTime")) or 0


def delete_rank(p):
    phase = {"Pending": 0, "Unknown": 1, "Running": 2}.get(dget(p, "status", "phase"), 0)
    return (1 if dget(p, "spec", "nodeName") else 0, phase, 1 if pod_ready(p) else 0,
            -(ST.times.get(p["metadata"]["uid"], {}).get("created") or 0))


def replicaset_controller(t):
    RS, P = R("replicasets"), R("pods")
    for rs in list_objs(RS):
        m = rs["metadata"]
        if m.get("deletionTimestamp"):
            continue
        ns, uid = m["namespace"], m["uid"]
        spec = rs.get("spec") or {}
        want = spec.get("replicas", 1)
        active = [p for p in list_objs(P, ns) if controlled_by(p, uid) and not dget(p, "metadata", "deletionTimestamp")]
        if len(active) < want:
            tmpl = spec.get("template") or {}
            for _ in range(want - len(active)):
                pm = {"name": "%s-%s" % (m["name"], rand_suffix()), "generateName": m["name"] + "-", "namespace": ns,
                      "labels": copy.deepcopy(dget(tmpl, "metadata", "labels", default={})),
                      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": m["name"],
                                           "uid": uid, "controller": True, "blockOwnerDeletion": True}]}
                if dget(tmpl, "metadata", "annotations"):
                    pm["annotations"] = copy.deepcopy(tmpl["metadata"]["annotations"])
                pod = internal_create(P, {"apiVersion": "v1", "kind": "Pod", "metadata": pm,
                                          "spec": copy.deepcopy(tmpl.get("spec") or {})})
                if pod is not None:
                    emit_event(rs, "Normal", "SuccessfulCreate", "Created pod: %s" % pm["name"],
                               "replicaset-controller")
        elif len(active) > want:
            for p in sorted(active, key=delete_rank)[:len(active) - want]:
                do_delete(P, ns, p["metadata"]["name"], {}, None)
                emit_event(rs, "Normal", "SuccessfulDelete", "Deleted pod: %s" % p["metadata"]["name"],
                           "replicaset-controller")
        active = [p for p in list_objs(P, ns) if controlled_by(p, uid) and not dget(p, "metadata", "deletionTimestamp")]
        tl = selector_from_label_selector({"matchLabels": dget(spec, "template", "metadata", "labels", default={})})
        ready = [p for p in active if pod_ready(p)]
        avail = [p for p in ready if ready_since(p) + spec.get("minReadySeconds", 0) <= t]
        st = {"replicas": len(active)}
        for k, v in (("fullyLabeledReplicas", sum(1 for p in active if labels_match(p["metadata"].get("labels"), tl))),
                     ("readyReplicas", len(ready)), ("availableReplicas", len(avail))):
            if v:
                st[k] = v
        st["observedGeneration"] = m.get("generation", 1)
        new = copy.deepcopy(rs)
        new["status"] = st
        controller_update(RS, new)


def node_ready(n):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in dget(n, "status", "conditions", default=[]))


def node_ip(n):
    return next((a["address"] for a in dget(n, "status", "addresses", default=[]) if a.get("type") == "InternalIP"),
                "127.0.0.1")


def pod_condition(conds, t, ctype, status, reason=None, message=None):
    prev = next((c for c in conds if c.get("type") == ctype), None)
    c = {"type": ctype, "status": status, "lastProbeTime": None,
         "lastTransitionTime": prev.get("lastTransitionTime") if prev and prev.get("status") == status else ts(t)}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def kubelet(t):
    P = R("pods")
    nodes = list_objs(R("nodes"))
    for p in list_objs(P):
        m = p["metadata"]
        uid = m["uid"]
        tm = ST.times.setdefault(uid, {"created": parse_ts(m.get("creationTimestamp")) or t})
        host = dget(p, "spec", "nodeName", default="")
        if m.get("deletionTimestamp"):
            start = tm.setdefault("deleting", t)
            grace = min(tm.get("grace", m.get("deletionGracePeriodSeconds", 30)), ARGS.terminate_seconds)
            if t - start >= grace:
                if not m.get("finalizers"):
                    commit_delete(P, p)
                continue
            new = copy.deepcopy(p)
            for c in dget(new, "status", "conditions", default=[]):
                if c.get("type") in ("Ready", "ContainersReady") and c.get("status") == "True":
                    c["status"], c["lastTransitionTime"] = "False", ts(t)
            for cs in dget(new, "status", "containerStatuses", default=[]):
                cs["ready"] = False
            if new != p:
                emit_event(p, "Normal", "Killing", "Stopping container %s" % ",".join(
                    c["name"] for c in dget(p, "spec", "containers", default=[])), "kubelet", host)
                controller_update(P, new)
            continue
        if dget(p, "status", "phase") in ("Succeeded", "Failed"):
            continue
        new = copy.deepcopy(p)
        spec = new["spec"]
        st = new.setdefault("status", {})
        conds = st.get("conditions") or []
        node = None
        if not spec.get("nodeName") and nodes:
            sel = selector_from_label_selector({"matchLabels": spec.get("nodeSelector") or {}})
            cands = [n for n in nodes if node_ready(n) and not dget(n, "spec", "unschedulable")
                     and not dget(n, "metadata", "deletionTimestamp") and labels_match(n["metadata"].get("labels"), sel)]
            if not cands:
                msg = "0/%d nodes are available: %d node(s) didn't match Pod's node affinity/selector, or were " \
                      "not ready or unschedulable." % (len(nodes), len(nodes))
                st["phase"] = "Pending"
                st["conditions"] = [pod_condition(conds, t, "PodScheduled", "False", "Unschedulable", msg)]
                controller_update(P, new)
                emit_event(p, "Warning", "FailedScheduling", msg, "default-scheduler")
                continue
            node = cands[ST.rr % len(cands)]
            ST.rr += 1
            spec["nodeName"] = node["metadata"]["name"]
            emit_event(p, "Normal", "Scheduled", "Successfully assigned %s/%s to %s" %
                       (m["namespace"], m["name"], spec["nodeName"]), "default-scheduler")
        elif spec.get("nodeName"):
            node = next((n for n in nodes if n["metadata"]["name"] == spec["nodeName"]), None)
            if node is None or not node_ready(node):
                continue
        host = spec.get("nodeName", "")
        host_ip = node_ip(node) if node else "127.0.0.1"
        tm.setdefault("scheduled", t)
        elapsed = t - tm["created"]
        if not st.get("podIP"):
            if spec.get("hostNetwork"):
                st["podIP"] = host_ip
            else:
                ST.pod_ip += 1
                st["podIP"] = str(ipaddress.IPv4Address("10.42.0.0") + (ST.pod_ip % 65000) + 1)
        st["hostIP"] = host_ip
        st["hostIPs"] = [{"ip": host_ip}]
        st["podIP"] = st["podIP"]
        st["podIPs"] = [{"ip": st["podIP"]}]
        st.setdefault("startTime", ts(tm["created"]))
        inits = []
        for c in spec.get("initContainers") or []:
            inits.append({"name": c["name"], "image": c["image"], "imageID": "", "ready": True, "started": False,
                          "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                                       "startedAt": ts(tm["created"]),
                                                                       "finishedAt": ts(tm["created"])}}})
        statuses, waiting, unready = [], [], []
        for c in spec.get("containers") or []:
            img = c.get("image", "")
            fp = "spec.containers{%s}" % c["name"]
            emit_event(p, "Normal", "Pulling", 'Pulling image "%s"' % img, "kubelet", host, fp)
            if "broken" in img:
                cycle = int(elapsed / 2.0) % 2
                if cycle == 0:
                    w = {"reason": "ErrImagePull", "message": 'failed to pull and unpack image "%s": failed to resolve '
                         'reference "%s": %s: not found' % (img, img, img)}
                    emit_event(p, "Warning", "Failed", 'Failed to pull image "%s": %s' % (img, w["message"]),
                               "kubelet", host, fp)
                    emit_event(p, "Warning", "Failed", "Error: ErrImagePull", "kubelet", host, fp)
                else:
                    w = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "%s"' % img}
                    emit_event(p, "Normal", "BackOff", 'Back-off pulling image "%s"' % img, "kubelet", host, fp)
                    emit_event(p, "Warning", "Failed", "Error: ImagePullBackOff", "kubelet", host, fp)
                statuses.append({"name": c["name"], "image": img, "imageID": "", "ready": False, "started": False,
                                 "restartCount": 0, "state": {"waiting": w}, "lastState": {}})
                waiting.append(c["name"])
                continue
            digest = hashlib.sha256(img.encode()).hexdigest()
            emit_event(p, "Normal", "Pulled", 'Successfully pulled image "%s" in 512ms (512ms including waiting)' % img,
                       "kubelet", host, fp)
            emit_event(p, "Normal", "Created", "Created container %s" % c["name"], "kubelet", host, fp)
            emit_event(p, "Normal", "Started", "Started container %s" % c["name"], "kubelet", host, fp)
            ok = elapsed >= ARGS.ready_seconds and "unready" not in img
            if ok and ARGS.external_readiness and labels_match(m.get("labels"), ARGS.external_readiness):
                # Run by something real (kube_node.py): Ready once it says its container serves.
                ok = os.path.exists(os.path.join(ARGS.readiness_dir, "%s_%s" % (m["namespace"], m["name"])))
            if "unready" in img and elapsed >= ARGS.ready_seconds:
                emit_event(p, "Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 500",
                           "kubelet", host, fp)
            if not ok:
                unready.append(c["name"])
            statuses.append({"name": c["name"], "image": img, "imageID": "%s@sha256:%s" % (img.split(":")[0], digest),
                             "containerID": "containerd://" + hashlib.sha256((uid + c["name"]).encode()).hexdigest(),
                             "ready": ok, "started": True, "restartCount": 0,
                             "state": {"running": {"startedAt": ts(tm["scheduled"])}}, "lastState": {}})
        st["phase"] = "Pending" if waiting else "Running"
        not_ready = waiting + unready
        new_conds = [pod_condition(conds, t, "PodReadyToStartContainers", "True"),
                     pod_condition(conds, t, "Initialized", "True")]
        if not_ready:
            msg = "containers with unready status: [%s]" % " ".join(not_ready)
            new_conds.append(pod_condition(conds, t, "Ready", "False", "ContainersNotReady", msg))
            new_conds.append(pod_condition(conds, t, "ContainersReady", "False", "ContainersNotReady", msg))
        else:
            new_conds.append(pod_condition(conds, t, "Ready", "True"))
            new_conds.append(pod_condition(conds, t, "ContainersReady", "True"))
            tm.setdefault("ready_at", t)
        new_conds.append(pod_condition(conds, t, "PodScheduled", "True"))
        if not_ready:
            tm.pop("ready_at", None)
        st["conditions"] = new_conds
        if inits:
            st["initContainerStatuses"] = inits
        st["containerStatuses"] = statuses
        st.setdefault("qosClass", qos_class(spec))
        controller_update(P, new)


def service_controller(t):
    S_ = R("services")
    for s in list_objs(S_):
        uid = s["metadata"]["uid"]
        typ = dget(s, "spec", "type", default="ClusterIP")
        ingress = dget(s, "status", "loadBalancer", "ingress")
        if typ == "LoadBalancer" and not ingress:
            first = ST.lb_seen.setdefault(uid, t)
            if t - first >= 0.5:
                new = copy.deepcopy(s)
                new["status"] = {"loadBalancer": {"ingress": [{"ip": "127.0.0.1", "ipMode": "VIP"}]}}
                controller_update(S_, new)
                emit_event(s, "Normal", "EnsuredLoadBalancer", "Ensured load balancer", "service-controller")
        elif typ != "LoadBalancer" and ingress:
            new = copy.deepcopy(s)
            new["status"] = {"loadBalancer": {}}
            controller_update(S_, new)
            ST.lb_seen.pop(uid, None)


def resolve_target_port(port, pod):
    tp = port.get("targetPort", port.get("port"))
    if isinstance(tp, int):
        return tp
    if isinstance(tp, str) and tp.isdigit():
        return int(tp)
    for c in dget(pod, "spec", "containers", default=[]):
        for cp in c.get("ports") or []:
            if cp.get("name") == tp and cp.get("protocol", "TCP") == port.get("protocol", "TCP"):
                return cp.get("containerPort")
    return None


def endpoints_controller(t):
    S_, P, EP = R("services"), R("pods"), R("endpoints")
    for s in list_objs(S_):
        sel = dget(s, "spec", "selector")
        if not sel or dget(s, "spec", "type") == "ExternalName":
            continue
        m = s["metadata"]
        ns = m["namespace"]
        publish = bool(dget(s, "spec", "publishNotReadyAddresses"))
        reqs = selector_from_label_selector({"matchLabels": sel})
        groups = {}
        for p in list_objs(P, ns):
            if not labels_match(p["metadata"].get("labels"), reqs) or not dget(p, "status", "podIP"):
                continue
            if dget(p, "status", "phase") in ("Succeeded", "Failed"):
                continue
            if dget(p, "metadata", "deletionTimestamp") and not publish:
                continue
            ports = []
            for sp in dget(s, "spec", "ports", default=[]):
                num = resolve_target_port(sp, p)
                if num is None:
                    continue
                ep = {"port": num, "protocol": sp.get("protocol", "TCP")}
                if sp.get("name"):
                    ep = {"name": sp["name"], **ep}
                if sp.get("appProtocol"):
                    ep["appProtocol"] = sp["appProtocol"]
                ports.append(ep)
            addr = {"ip": p["status"]["podIP"]}
            if dget(p, "spec", "nodeName"):
                addr["nodeName"] = p["spec"]["nodeName"]
            addr["targetRef"] = {"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"],
                                 "uid": p["metadata"]["uid"]}
            key = json.dumps(ports, sort_keys=True)
            g = groups.setdefault(key, {"ports": ports, "ready": [], "notready": []})
            (g["ready"] if publish or pod_ready(p) else g["notready"]).append(addr)
        subsets = []
        for key in sorted(groups):
            g = groups[key]
            ss = {}
            if g["ready"]:
                ss["addresses"] = sorted(g["ready"], key=lambda a: ipaddress.ip_address(a["ip"]))
            if g["notready"]:
                ss["notReadyAddresses"] = sorted(g["notready"], key=lambda a: ipaddress.ip_address(a["ip"]))
            if g["ports"]:
                ss["ports"] = g["ports"]
            subsets.append(ss)
        existing = get_obj(EP, ns, m["name"])
        if existing is None:
            body = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": m["name"], "namespace": ns}}
            if m.get("labels"):
                body["metadata"]["labels"] = copy.deepcopy(m["labels"])
            if subsets:
                body["subsets"] = subsets
            internal_create(EP, body)
        else:
            new = copy.deepcopy(existing)
            if subsets:
                new["subsets"] = subsets
            else:
                new.pop("subsets", None)
            if m.get("labels"):
                new["metadata"]["labels"] = copy.deepcopy(m["labels"])
            controller_update(EP, new)


def gc_controller(t):
    uids = set()
    for objs in ST.objs.values():
        for o in objs.values():
            uids.add(o["metadata"].get("uid"))
    for rk, objs in ST.objs.items():
        res = RESOURCES[rk]
        for o in list(objs.values()):
            m = o["metadata"]
            refs = m.get("ownerReferences") or []
            if refs and not m.get("deletionTimestamp") and all(r.get("uid") not in uids for r in refs):
                try:
                    do_delete(res, m.get("namespace") or "", m["name"], {}, None)
                except ApiError:
                    pass
                continue
            if m.get("deletionTimestamp") and "foregroundDeletion" in (m.get("finalizers") or []):
                deps = [(rk2, d) for rk2, objs2 in ST.objs.items() for d in objs2.values()
                        if any(r.get("uid") == m["uid"] for r in dget(d, "metadata", "ownerReferences", default=[]))]
                if deps:
                    for rk2, d in deps:
                        if not dget(d, "metadata", "deletionTimestamp"):
                            try:
                                do_delete(RESOURCES[rk2], d["metadata"].get("namespace") or "", d["metadata"]["name"],
                                          {"propagationPolicy": ["Foreground"]}, None)
                            except ApiError:
                                pass
                else:
                    new = copy.deepcopy(o)
                    new["metadata"]["finalizers"] = [f for f in m["finalizers"] if f != "foregroundDeletion"]
                    if not new["metadata"]["finalizers"]:
                        del new["metadata"]["finalizers"]
                        commit_delete(res, o)
                    else:
                        commit_update(res, o, new)
            elif m.get("deletionTimestamp") and not m.get("finalizers") and rk not in (R("pods").key,
                                                                                      R("namespaces").key):
                commit_delete(res, o)


def namespace_controller(t):
    NS = R("namespaces")
    for n in list_objs(NS):
        m = n["metadata"]
        if not m.get("deletionTimestamp"):
            continue
        name = m["name"]
        tm = ST.times.setdefault(m["uid"], {"created": t})
        start = tm.setdefault("deleting", t)
        left = 0
        for res in RESOURCES.values():
            if not res.namespaced:
                continue
            for o in list_objs(res, name):
                if o["metadata"].get("finalizers"):
                    left += 1
                    if not o["metadata"].get("deletionTimestamp"):
                        new = copy.deepcopy(o)
                        new["metadata"]["deletionTimestamp"] = ts(t)
                        commit_update(res, o, new)
                    continue
                commit_delete(res, o)
        if left or t - start < ARGS.terminate_seconds:
            continue
        fins = [f for f in dget(n, "spec", "finalizers", default=[]) if f != "kubernetes"]
        if fins != dget(n, "spec", "finalizers", default=[]):
            new = copy.deepcopy(n)
            new["spec"]["finalizers"] = fins
            n = commit_update(NS, n, new)
        if not fins and not m.get("finalizers"):
            commit_delete(NS, n)


def tick():
    t = now()
    namespace_controller(t)
    deployment_controller(t)
    replicaset_controller(t)
    kubelet(t)
    service_controller(t)
    endpoints_controller(t)
    gc_controller(t)
    save_state()


def controller_loop():
    while True:
        time.sleep(ARGS.tick)
        with LOCK:
            try:
                tick()
            except Exception:
                traceback.print_exc()


# ---------------------------------------------------------------------------------------------
# watch

class Watch:
    def __init__(self, res, ns, query, accept):
        self.res, self.ns, self.query = res, ns, query
        self.ls = parse_label_selector(q1(query, "labelSelector"))
        self.fs = parse_field_selector(q1(query, "fieldSelector"))
        self.mode = render_mode(accept)
        self.bookmarks = qbool(query, "allowWatchBookmarks")
        self.initial_events = qbool(query, "sendInitialEvents")
        try:
            self.timeout = float(q1(query, "timeoutSeconds") or 1800)
        except ValueError:
            raise bad_request("invalid timeoutSeconds")
        rv = q1(query, "resourceVersion") or ""
        self.expired = None
        if self.initial_events or rv in ("", "0"):
            self.initial = [o for o in list_objs(res, ns) if self.match(o)]
            self.start = ST.rv
        else:
            try:
                r = int(rv)
            except ValueError:
                raise bad_request('invalid resource version "%s"' % rv)
            self.initial = []
            if r < ST.compacted:
                self.expired = r
            self.start = r

    def match(self, o):
        if self.ns is not None and (o["metadata"].get("namespace") or "") != self.ns:
            return False
        return labels_match(dget(o, "metadata", "labels"), self.ls) and fields_match(o, self.fs)

    def render(self, typ, obj):
        if self.mode == "table":
            obj = table(self.res, [obj], self.query)
        elif self.mode == "meta":
            obj = partial_meta(obj)
        return json.dumps({"type": typ, "object": obj}, separators=(",", ":")) + "\n"

    def bookmark(self, rv, initial_end=False):
        meta = {"resourceVersion": str(rv), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return json.dumps({"type": "BOOKMARK", "object": {"kind": self.res.kind, "apiVersion": self.res.api_version,
                                                          "metadata": meta}}, separators=(",", ":")) + "\n"

    def convert(self, ev):
        rv, rk, typ, obj, old = ev
        if rk != self.res.key:
            return None
        if typ == "ADDED":
            return self.render("ADDED", obj) if self.match(obj) else None
        if typ == "DELETED":
            return self.render("DELETED", obj) if self.match(obj) else None
        now_m, was_m = self.match(obj), old is not None and self.match(old)
        if now_m and was_m:
            return self.render("MODIFIED", obj)
        if now_m:
            return self.render("ADDED", obj)
        if was_m:
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
            return self.render("DELETED", gone)
        return None


def events_after(rv):
    import bisect
    i = bisect.bisect_right(ST.history, rv, key=lambda e: e[0])
    return ST.history[i:]


def expired_event(rv):
    return json.dumps({"type": "ERROR", "object": status_obj(
        410, "Expired", "too old resource version: %d (%d)" % (rv, ST.compacted + 1))}, separators=(",", ":")) + "\n"


# ---------------------------------------------------------------------------------------------
# HTTP

def openapi_v2(accept):
    if "protobuf" in (accept or ""):
        def field(num, data):
            b = data.encode() if isinstance(data, str) else data
            out, n = bytes([num << 3 | 2]), len(b)
            while n >= 0x80:
                out += bytes([n & 0x7F | 0x80])
                n >>= 7
            return out + bytes([n]) + b
        doc = field(1, "2.0") + field(2, field(1, "Kubernetes") + field(2, SERVER_VERSION["gitVersion"]))
        return Resp(200, raw=doc, ctype="application/octet-stream")
    return Resp(200, {"swagger": "2.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
                      "paths": {}, "definitions": {}})


class Resp:
    def __init__(self, code, obj=None, raw=None, ctype="application/json", headers=None, watch=None):
        self.code, self.obj, self.raw, self.ctype = code, obj, raw, ctype
        self.headers, self.watch = headers or [], watch


def warning_headers(warnings):
    return [("Warning", '299 - "%s"' % w.replace('"', '\\"')) for w in warnings]


def route(method, path, query, body, headers):
    accept = headers.get("Accept", "") or ""
    ua = headers.get("User-Agent", "") or ""
    bare = path.rstrip("/") or "/"
    if bare in ("/healthz", "/readyz", "/livez") or bare.startswith(("/healthz/", "/readyz/", "/livez/")):
        if method not in ("GET", "HEAD"):
            raise method_not_allowed()
        return Resp(200, raw=b"ok", ctype="text/plain; charset=utf-8")
    if bare == "/version":
        return Resp(200, SERVER_VERSION)
    if bare == "/api":
        return Resp(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "%s:%d" % (ARGS.host, ARGS.actual_port)}]})
    group_entry = {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
                   "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}
    if bare == "/apis":
        return Resp(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_entry]})
    if bare == "/apis/apps":
        return Resp(200, {"kind": "APIGroup", "apiVersion": "v1", **group_entry})
    if bare == "/openapi/v2":
        return openapi_v2(accept)
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:3] == ["apis", "apps", "v1"]:
        group, rest = "apps", parts[3:]
    else:
        raise path_not_found()
    if not rest:
        if method != "GET":
            raise method_not_allowed()
        return Resp(200, api_resource_list(group))
    watch = False
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
        if not rest:
            raise path_not_found()
    ns = None
    if rest[0] == "namespaces" and len(rest) >= 3 and (group, rest[2]) in RESOURCES \
            and RESOURCES[(group, rest[2])].namespaced:
        ns, rest = rest[1], rest[2:]
    res = RESOURCES.get((group, rest[0]))
    if res is None or len(rest) > 3:
        raise path_not_found()
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in res.subs:
        raise path_not_found()
    if res.namespaced and ns is None and (name is not None or method != "GET"):
        raise path_not_found()
    watch = watch or qbool(query, "watch")
    if watch and (method != "GET" or sub is not None):
        raise method_not_allowed()
    nsv = ns or ""
    with LOCK:
        if name is None:
            if method == "GET":
                if watch:
                    return Resp(200, watch=Watch(res, ns, query, accept))
                return Resp(200, do_list(res, ns, query, accept))
            if method == "POST":
                if body is None:
                    raise bad_request("the body of the request was empty")
                obj, warnings = do_create(res, nsv, body, query, ua)
                return Resp(201, render_one(res, obj, query, accept), headers=warning_headers(warnings))
            if method == "DELETE" and "deletecollection" in res.verbs:
                ls = parse_label_selector(q1(query, "labelSelector"))
                fs = parse_field_selector(q1(query, "fieldSelector"))
                gone = []
                for o in list_objs(res, ns):
                    if labels_match(dget(o, "metadata", "labels"), ls) and fields_match(o, fs):
                        r = do_delete(res, nsv, o["metadata"]["name"], query, body)
                        gone.append(list_item(o if r.get("kind") == "Status" else r))
                return Resp(200, {"kind": res.kind + "List", "apiVersion": res.api_version,
                                  "metadata": {"resourceVersion": str(ST.rv)}, "items": gone})
            raise method_not_allowed()
        if sub is None:
            if method == "GET":
                if watch:
                    q = dict(query)
                    q["fieldSelector"] = [",".join(x for x in [q1(query, "fieldSelector"), "metadata.name=" + name] if x)]
                    return Resp(200, watch=Watch(res, ns, q, accept))
                obj = get_obj(res, nsv, name)
                if obj is None:
                    raise not_found(res, name)
                return Resp(200, render_one(res, obj, query, accept))
            if method == "PUT":
                if body is None:
                    raise bad_request("the body of the request was empty")
                obj, warnings = do_update(res, nsv, name, body, query, ua)
                return Resp(200, render_one(res, obj, query, accept), headers=warning_headers(warnings))
            if method == "PATCH":
                if body is None:
                    raise bad_request("the body of the request was empty")
                obj, code, warnings = do_patch(res, nsv, name, body, headers.get("Content-Type"), query, ua)
                return Resp(code, render_one(res, obj, query, accept), headers=warning_headers(warnings))
            if method == "DELETE":
                return Resp(200, do_delete(res, nsv, name, query, body))
            raise method_not_allowed()
        if sub == "status":
            if method == "GET":
                obj = get_obj(res, nsv, name)
                if obj is None:
                    raise not_found(res, name)
                return Resp(200, obj)
            if method == "PUT":
                obj, warnings = do_update(res, nsv, name, body, query, ua, sub="status")
                return Resp(200, obj, headers=warning_headers(warnings))
            if method == "PATCH":
                obj, code, warnings = do_patch(res, nsv, name, body, headers.get("Content-Type"), query, ua, "status")
                return Resp(code, obj, headers=warning_headers(warnings))
            raise method_not_allowed()
        if sub == "scale":
            obj = get_obj(res, nsv, name)
            if obj is None:
                raise not_found(res, name)
            if method == "GET":
                return Resp(200, scale_of(res, obj))
            if method == "PUT":
                return Resp(200, update_scale(res, obj, body, query, ua))
            if method == "PATCH":
                sc, code, _ = do_patch(res, nsv, name, body, headers.get("Content-Type"), query, ua, "scale")
                return Resp(code, sc)
            raise method_not_allowed()
        if sub == "log":
            if method != "GET":
                raise method_not_allowed()
            obj = get_obj(res, nsv, name)
            if obj is None:
                raise not_found(res, name)
            for cs in dget(obj, "status", "containerStatuses", default=[]):
                w = dget(cs, "state", "waiting")
                if w:
                    raise bad_request('container "%s" in pod "%s" is waiting to start: %s' % (
                        cs["name"], name, "trying and failing to pull image" if "Pull" in w.get("reason", "")
                        else w.get("reason", "")))
            return Resp(200, raw=b"", ctype="text/plain")
        if sub == "finalize":
            if method != "PUT":
                raise method_not_allowed()
            return Resp(200, do_finalize(res, name, body, query))
    raise path_not_found()


def pb_decode(buf):
    """Protocol buffer wire format -> [(field number, wire type, value)]."""
    out, i = [], 0

    def varint(i):
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, i
            shift += 7
    while i < len(buf):
        key, i = varint(i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(i)
        elif wt == 2:
            n, i = varint(i)
            v = buf[i:i + n]
            i += n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        out.append((num, wt, v))
    return out


def pb_map(entries, as_bytes=False):
    out = {}
    for e in entries:
        kv = {n: v for n, _, v in pb_decode(e)}
        val = kv.get(2, b"")
        out[kv.get(1, b"").decode()] = base64.b64encode(val).decode() if as_bytes else val.decode()
    return out


def pb_object_meta(buf):
    f = pb_decode(buf)
    m, labels, annotations, owners, fins = {}, [], [], [], []
    for num, _, v in f:
        if num in (1, 2, 3) and v:
            m[{1: "name", 2: "generateName", 3: "namespace"}[num]] = v.decode()
        elif num == 11:
            labels.append(v)
        elif num == 12:
            annotations.append(v)
        elif num == 13:
            r = {}
            for n2, _, v2 in pb_decode(v):
                if n2 in (1, 3, 4, 5):
                    r[{1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}[n2]] = v2.decode()
                elif n2 in (6, 7):
                    r[{6: "controller", 7: "blockOwnerDeletion"}[n2]] = bool(v2)
            owners.append(r)
        elif num == 14:
            fins.append(v.decode())
    if labels:
        m["labels"] = pb_map(labels)
    if annotations:
        m["annotations"] = pb_map(annotations)
    if owners:
        m["ownerReferences"] = owners
    if fins:
        m["finalizers"] = fins
    return m


def decode_protobuf(raw):
    """The application/vnd.kubernetes.protobuf envelope, for the kinds newer kubectl versions send
    that way (create namespace / configmap / secret). Other kinds: 415."""
    unsupported = ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                           "accepted media types include: application/json, application/yaml")
    if not raw.startswith(b"k8s\x00"):
        raise unsupported
    try:
        env = {n: v for n, _, v in pb_decode(raw[4:])}
        tm = {n: v.decode() for n, _, v in pb_decode(env.get(1, b""))}
        api_version, kind = tm.get(1, ""), tm.get(2, "")
        fields = pb_decode(env.get(2, b""))
    except (ValueError, IndexError, UnicodeDecodeError):
        raise bad_request("unable to decode the protobuf body")
    obj = {"apiVersion": api_version, "kind": kind}
    by = {}
    for n, _, v in fields:
        by.setdefault(n, []).append(v)
    if 1 in by:
        obj["metadata"] = pb_object_meta(by[1][0])
    if (api_version, kind) == ("v1", "Namespace"):
        if 2 in by:
            obj["spec"] = {"finalizers": [v.decode() for n, _, v in pb_decode(by[2][0]) if n == 1]}
    elif (api_version, kind) == ("v1", "ConfigMap"):
        if 2 in by:
            obj["data"] = pb_map(by[2])
        if 3 in by:
            obj["binaryData"] = pb_map(by[3], as_bytes=True)
        if 4 in by:
            obj["immutable"] = bool(by[4][0])
    elif (api_version, kind) == ("v1", "Secret"):
        if 2 in by:
            obj["data"] = pb_map(by[2], as_bytes=True)
        if 3 in by:
            obj["type"] = by[3][0].decode()
        if 4 in by:
            obj["stringData"] = pb_map(by[4])
        if 5 in by:
            obj["immutable"] = bool(by[5][0])
    else:
        raise unsupported
    return obj


def parse_body(raw, ctype):
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError as e:
        if "yaml" in (ctype or "").lower() and yaml is not None:
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as ye:
                raise bad_request("error decoding YAML: %s" % str(ye).replace("\n", " "))
        raise bad_request("couldn't get version/kind; json parse error: %s" % e)


def log_request(method, path, query, ctype, body, status):
    if not ARGS.log:
        return
    line = json.dumps({"method": method, "path": path, "query": query, "content_type": ctype, "body": body,
                       "status": status}, separators=(",", ":"))
    with LOG_LOCK:
        with open(ARGS.log, "a") as f:
            f.write(line + "\n")
            f.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-fake"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_OPTIONS(self):
        self.dispatch("OPTIONS")

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                line = self.rfile.readline().strip()
                n = int(line.split(b";")[0] or b"0", 16)
                if n == 0:
                    while self.rfile.readline().strip():
                        pass
                    return data
                data += self.rfile.read(n)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def dispatch(self, method):
        u = urlsplit(self.path)
        path, query = u.path, parse_qs(u.query, keep_blank_values=True)
        ctype = self.headers.get("Content-Type")
        logged = None
        try:
            raw = self.read_body()
        except Exception:
            self.close_connection = True
            return
        try:
            if ARGS.token:
                auth = self.headers.get("Authorization") or ""
                if not hmac.compare_digest(auth.encode(), ("Bearer " + ARGS.token).encode()):
                    raise ApiError(401, "Unauthorized", "Unauthorized")
            body = None
            base = (ctype or "application/json").split(";")[0].strip().lower()
            if raw.strip() and base == "application/vnd.kubernetes.protobuf":
                body = logged = decode_protobuf(raw)
            elif raw.strip() and method in ("POST", "PUT", "DELETE") and base not in (
                    "application/json", "application/yaml", "application/x-yaml", "text/yaml", "*/*", ""):
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                               "accepted media types include: application/json, application/yaml")
            elif raw.strip():
                body = parse_body(raw, ctype)
                logged = body
            resp = route(method, path, query, body, self.headers)
            if method not in ("GET", "HEAD") and ARGS.state_file:
                with LOCK:
                    save_state()
        except ApiError as e:
            resp = Resp(e.code, e.status(), headers=e.headers)
        except Exception as e:  # a bug in the fake: say so like the real server would
            traceback.print_exc()
            resp = Resp(500, status_obj(500, "InternalError", "Internal error occurred: %s" % e,
                                        {"causes": [{"message": str(e)}]}))
        log_request(method, path, query, ctype, logged, resp.code)
        if resp.watch is not None:
            self.stream_watch(resp.watch)
        else:
            self.send(resp, head=(method == "HEAD"))

    def send(self, resp, head=False):
        data = resp.raw if resp.raw is not None else json.dumps(resp.obj, separators=(",", ":")).encode()
        self.send_response(resp.code)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", resp.ctype)
        for k, v in resp.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
        self.wfile.flush()

    def chunk(self, text):
        b = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
        self.wfile.flush()

    def client_gone(self):
        conn = self.connection
        try:
            r, _, _ = select.select([conn], [], [], 0)
            if not r:
                return False
            if isinstance(conn, ssl.SSLSocket):
                if conn.pending():
                    return False
                conn.setblocking(False)
                try:
                    data = conn.recv(1)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    return False
                except (ssl.SSLError, OSError):
                    return True
                finally:
                    conn.setblocking(True)
                return data == b""
            return conn.recv(1, socket.MSG_PEEK) == b""
        except Exception:
            return True

    def stream_watch(self, w):
        self.send_response(200)
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if w.expired is not None:
                with LOCK:
                    self.chunk(expired_event(w.expired))
            else:
                lines = [w.render("ADDED", o) for o in w.initial]
                if w.initial_events and w.bookmarks:
                    lines.append(w.bookmark(w.start, initial_end=True))
                if lines:
                    self.chunk("".join(lines))
                last, deadline, last_sent = w.start, now() + w.timeout, now()
                while True:
                    expired = None
                    with COND:
                        evs = events_after(last)
                        if not evs and last >= ST.compacted:
                            remaining = deadline - now()
                            if remaining > 0:
                                COND.wait(min(remaining, 0.5))
                            evs = events_after(last)
                        if last < ST.compacted and (not evs or evs[0][0] > last + 1):
                            expired = expired_event(last)
                        cur = max(ST.rv, last)
                        lines = [x for x in (w.convert(e) for e in evs) if x]
                    if expired:
                        self.chunk(expired)
                        break
                    last = cur
                    if lines:
                        self.chunk("".join(lines))
                        last_sent = now()
                    elif w.bookmarks and now() - last_sent >= ARGS.bookmark_seconds:
                        self.chunk(w.bookmark(last))
                        last_sent = now()
                    if now() >= deadline:
                        if w.bookmarks:
                            self.chunk(w.bookmark(last))
                        break
                    if self.client_gone():
                        self.close_connection = True
                        return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    ssl_ctx = None

    def finish_request(self, request, client_address):
        if self.ssl_ctx is not None:
            try:
                request = self.ssl_ctx.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        self.RequestHandlerClass(request, client_address, self)


# ---------------------------------------------------------------------------------------------
# start-up: TLS material, kubeconfig, bootstrap objects

def generate_tls(dirname, host):
    existing = {k: os.path.join(dirname, k) for k in ("ca.crt", "tls.crt", "tls.key")}
    if all(os.path.exists(p) for p in existing.values()):
        return existing  # a restarted server keeps its CA, as k3s does
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    os.makedirs(dirname, exist_ok=True)
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    end = start + datetime.timedelta(days=3650)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-fake-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]
    for name in [host] + list(ARGS.tls_san or []):
        try:
            ip = ipaddress.ip_address(name)
            if str(ip) not in ("127.0.0.1", "::1", "0.0.0.0"):
                sans.append(x509.IPAddress(ip))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {k: os.path.join(dirname, k) for k in ("ca.crt", "tls.crt", "tls.key")}
    with open(paths["ca.crt"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["tls.crt"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["tls.key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


def write_kubeconfig(path, port, tls):
    host = ARGS.host if ARGS.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = "[%s]" % host
    cluster = {"server": "%s://%s:%d" % ("https" if tls else "http", host, port)}
    if tls:
        with open(ARGS.ca_file or ARGS.tls_cert, "rb") as f:
            cluster["certificate-authority-data"] = base64.b64encode(f.read()).decode()
    user = {"token": ARGS.token} if ARGS.token else {}
    cfg = {"apiVersion": "v1", "kind": "Config", "preferences": {},
           "clusters": [{"name": "kube-fake", "cluster": cluster}],
           "users": [{"name": "kube-fake", "user": user}],
           "contexts": [{"name": "kube-fake", "context": {"cluster": "kube-fake", "user": "kube-fake",
                                                          "namespace": "default"}}],
           "current-context": "kube-fake"}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def bootstrap(port):
    NS = R("namespaces")
    for n in ("default", "kube-system", "kube-public", "kube-node-lease"):
        if get_obj(NS, "", n) is None:
            internal_create(NS, {"metadata": {"name": n}})
    if get_obj(R("services"), "default", "kubernetes") is None:
        internal_create(R("services"), {"metadata": {"name": "kubernetes", "namespace": "default",
                                                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
                                        "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.1", "ports": [
                                            {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}})
    ep = get_obj(R("endpoints"), "default", "kubernetes")
    body = {"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}],
                         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}
    if ep is None:
        internal_create(R("endpoints"), body)
    else:
        new = copy.deepcopy(ep)
        new["subsets"] = body["subsets"]
        controller_update(R("endpoints"), new)
    for i, n in enumerate(ARGS.node or []):
        if get_obj(R("nodes"), "", n) is None:
            obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "labels": {}}}
            if i == 0:
                obj["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = "true"
            default_node(obj, i)
            internal_create(R("nodes"), obj)


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", required=True, help="append one JSON line per request here")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--token", help="require Authorization: Bearer TOKEN on every request")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--ca-file", help="CA certificate for the kubeconfig (default: the server certificate)")
    ap.add_argument("--tls-auto", metavar="DIR", help="generate a CA and a server certificate into DIR and serve TLS")
    ap.add_argument("--tls-san", action="append", default=[], help="another name or address for the server certificate")
    ap.add_argument("--ready-seconds", type=float, default=1.0)
    ap.add_argument("--terminate-seconds", type=float, default=1.0)
    ap.add_argument("--node", action="append", default=[])
    ap.add_argument("--kubeconfig-out")
    ap.add_argument("--state-file")
    ap.add_argument("--history", type=int, default=5000, help="watch events kept (older resourceVersions get 410)")
    ap.add_argument("--bookmark-seconds", type=float, default=1.0)
    ap.add_argument("--tick", type=float, default=0.1)
    ap.add_argument("--external-readiness", metavar="SELECTOR",
                    help="pods matching this label selector are Ready only once a file <namespace>_<pod> exists "
                         "in --readiness-dir (written by what really runs them: kube_node.py)")
    ap.add_argument("--readiness-dir")
    ARGS = ap.parse_args()
    if ARGS.external_readiness:
        if not ARGS.readiness_dir:
            sys.exit("--external-readiness needs --readiness-dir")
        ARGS.external_readiness = parse_label_selector(ARGS.external_readiness)
    if ARGS.tls_auto:
        paths = generate_tls(ARGS.tls_auto, ARGS.host)
        ARGS.tls_cert, ARGS.tls_key = paths["tls.crt"], paths["tls.key"]
        ARGS.ca_file = ARGS.ca_file or paths["ca.crt"]
    if bool(ARGS.tls_cert) != bool(ARGS.tls_key):
        sys.exit("--tls-cert and --tls-key go together")
    if ":" in ARGS.host:
        Server.address_family = socket.AF_INET6
    server = Server((ARGS.host, ARGS.port), Handler)
    tls = bool(ARGS.tls_cert)
    if tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        ctx.set_alpn_protocols(["http/1.1"])
        server.ssl_ctx = ctx
    ARGS.actual_port = server.server_address[1]
    with LOCK:
        load_state(ARGS.state_file)
        bootstrap(ARGS.actual_port)
        ST.dirty = True
        save_state()
    if ARGS.kubeconfig_out:
        write_kubeconfig(ARGS.kubeconfig_out, ARGS.actual_port, tls)
    threading.Thread(target=controller_loop, daemon=True).start()
    print("listening %d" % ARGS.actual_port, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
