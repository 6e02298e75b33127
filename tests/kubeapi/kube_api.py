#!/usr/bin/env python3
"""A scripted Kubernetes API server for the kubernetes driver's tests, driven by the real kubectl.

No API server can be had on our machines (../shared/RUNTIMES.md), so this serves the parts of
the API kubectl uses for `apply --server-side`, `get`, `rollout status` and `version`, with the
shapes of the real apiserver's answers (discovery lists, OpenAPI v3 index, objects, watch
events, `Status` failures). Objects are kept in memory; a workload's status follows its pod
template's images, so a test scripts the cluster's behaviour through what it deploys:

  image containing `broken`  -> the rollout fails: Progressing=False, ProgressDeadlineExceeded
  image containing `slow`    -> the rollout never finishes (updatedReplicas stays 0)
  anything else              -> ready at once (observedGeneration, updated/ready/available)

and through options: `--forbid NS` answers 403 Forbidden for namespace NS (as RBAC does),
`--log FILE` records each request as one JSON line (method, path, query, content type,
field manager, body) for the test to read. Usage: kube_api.py --port-file F [--log L] [--forbid NS]…
"""
import argparse, json, sys, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESOURCES = {
    ("", "v1"): [
        ("namespaces", "Namespace", False), ("configmaps", "ConfigMap", True), ("secrets", "Secret", True),
        ("services", "Service", True), ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
    ],
    ("apps", "v1"): [
        ("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True),
        ("daemonsets", "DaemonSet", True), ("replicasets", "ReplicaSet", True),
    ],
    ("networking.k8s.io", "v1"): [("ingresses", "Ingress", True)],
}
WORKLOADS = {"deployments", "statefulsets", "daemonsets"}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

lock = threading.Lock()
store = {}  # (group, resource, namespace, name) -> object
rv = [1000]
args = None


def next_rv():
    rv[0] += 1
    return str(rv[0])


def status(code, reason, message, details=None):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "details": details or {}, "code": code}


def images(obj):
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return [c.get("image", "") for c in spec.get("containers", []) + spec.get("initContainers", [])]


def with_status(resource, obj):
    """The object as the controllers would have it by now."""
    if resource not in WORKLOADS:
        return obj
    o = json.loads(json.dumps(obj))
    gen = o["metadata"].get("generation", 1)
    want = o.get("spec", {}).get("replicas", 1) if resource != "daemonsets" else 1
    imgs = images(o)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if any("broken" in i for i in imgs):
        st = {"observedGeneration": gen, "replicas": want, "updatedReplicas": want, "readyReplicas": 0,
              "availableReplicas": 0, "unavailableReplicas": want,
              "conditions": [
                  {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                   "message": "Deployment does not have minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now},
                  {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                   "message": f'ReplicaSet "{o["metadata"]["name"]}-7d4b9c8f6" has timed out progressing.',
                   "lastUpdateTime": now, "lastTransitionTime": now}]}
    elif any("slow" in i for i in imgs):
        st = {"observedGeneration": gen, "replicas": want, "updatedReplicas": 0, "readyReplicas": 0,
              "availableReplicas": 0, "unavailableReplicas": want,
              "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                              "message": "ReplicaSet is progressing.", "lastUpdateTime": now, "lastTransitionTime": now}]}
    else:
        st = {"observedGeneration": gen, "replicas": want, "updatedReplicas": want, "readyReplicas": want,
              "availableReplicas": want,
              "conditions": [
                  {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                   "message": "Deployment has minimum availability.", "lastUpdateTime": now, "lastTransitionTime": now},
                  {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                   "message": f'ReplicaSet "{o["metadata"]["name"]}-5f8d7c9b4" has successfully progressed.',
                   "lastUpdateTime": now, "lastTransitionTime": now}]}
    if resource == "statefulsets":
        st = {"observedGeneration": gen, "replicas": want, "readyReplicas": st["readyReplicas"],
              "currentReplicas": st["updatedReplicas"], "updatedReplicas": st["updatedReplicas"],
              "availableReplicas": st["availableReplicas"], "currentRevision": "r1", "updateRevision": "r1"}
    if resource == "daemonsets":
        ok = st["readyReplicas"]
        st = {"observedGeneration": gen, "desiredNumberScheduled": 1, "currentNumberScheduled": 1,
              "updatedNumberScheduled": st["updatedReplicas"], "numberReady": ok, "numberAvailable": ok}
    o["status"] = st
    return o


def merge(old, new):
    """Server-side apply, simplified: the applied fields replace, the rest stays."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = dict(old)
        for k, v in new.items():
            out[k] = merge(old.get(k), v) if k in old and isinstance(v, dict) else v
        return out
    return new


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body, ctype="application/json"):
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def record(self, body):
        if not args.log:
            return
        u = urllib.parse.urlsplit(self.path)
        line = {"method": self.command, "path": u.path, "query": dict(urllib.parse.parse_qsl(u.query)),
                "content_type": self.headers.get("Content-Type"), "body": body.decode(errors="replace")}
        with lock, open(args.log, "a") as f:
            f.write(json.dumps(line) + "\n")

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.record(body)
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        parts = [p for p in u.path.split("/") if p]
        if u.path == "/_state":
            # Not the API: what the test reads back (every object, with its status).
            with lock:
                objs = [dict(with_status(r, o), _resource=r) for (g, r, n, nm), o in store.items()]
            return self.reply(200, objs)
        if u.path == "/version":
            return self.reply(200, {"major": "1", "minor": "37", "gitVersion": "v1.37.0", "platform": "linux/amd64"})
        if u.path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
        if u.path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                       "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for (g, v) in RESOURCES if g]
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if parts[:1] == ["openapi"]:
            return self.openapi(parts)
        gv, rest = self.group_version(parts)
        if gv is None:
            return self.reply(404, status(404, "NotFound", "the server could not find the requested resource"))
        if not rest:
            res = [{"name": r, "singularName": k.lower(), "namespaced": nsd, "kind": k, "verbs": VERBS}
                   for (r, k, nsd) in RESOURCES[gv]]
            res += [{"name": f"{r}/scale", "singularName": "", "namespaced": True, "group": "autoscaling",
                     "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}
                    for (r, _k, _n) in RESOURCES[gv] if r in ("deployments", "statefulsets", "replicasets")]
            return self.reply(200, {"kind": "APIResourceList", "apiVersion": "v1",
                                    "groupVersion": "/".join(x for x in gv if x), "resources": res})
        ns = None
        if rest[0] == "namespaces" and len(rest) == 2 and rest[1] in args.forbid:
            msg = (f'namespaces "{rest[1]}" is forbidden: User "system:serviceaccount:dockfra:deployer" cannot get '
                   f'resource "namespaces" in API group "" in the namespace "{rest[1]}"')
            return self.reply(403, status(403, "Forbidden", msg, {"name": rest[1], "kind": "namespaces"}))
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
        sub = rest[2] if len(rest) > 2 else None
        kinds = {r: k for (r, k, _) in RESOURCES[gv]}
        if resource not in kinds:
            return self.reply(404, status(404, "NotFound", "the server could not find the requested resource"))
        group = gv[0]
        if ns and ns in args.forbid:
            verb = {"GET": "list" if not name else "get", "PATCH": "patch", "DELETE": "delete"}.get(self.command, "create")
            if q.get("watch") in ("true", "1"):
                verb = "watch"
            what = f"{resource}.{group}" if group else resource
            named = f' "{name}"' if name else ""
            msg = (f'{what}{named} is forbidden: User "system:serviceaccount:dockfra:deployer" cannot {verb} '
                   f'resource "{resource}" in API group "{group}" in the namespace "{ns}"')
            return self.reply(403, status(403, "Forbidden", msg, {"name": name or "", "group": group, "kind": resource}))
        key = (group, resource, ns, name)
        if sub == "scale":
            return self.scale(key, body)
        if self.command == "PATCH" and name and self.headers.get("Content-Type") != "application/apply-patch+yaml":
            return self.merge_patch(key, body)
        if self.command == "PATCH" and name:
            return self.apply(key, gv, kinds[resource], body, q)
        if self.command == "DELETE" and name:
            with lock:
                obj = store.pop(key, None)
            if obj is None:
                return self.not_found(group, resource, name)
            return self.reply(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                    "details": {"name": name, "group": group, "kind": resource, "uid": obj["metadata"]["uid"]}})
        if self.command == "GET" and name:
            with lock:
                obj = store.get(key)
            if obj is None:
                return self.not_found(group, resource, name)
            return self.reply(200, with_status(resource, obj))
        if self.command == "GET":
            return self.list(group, gv, kinds[resource], resource, ns, q)
        return self.reply(405, status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource"))

    def scale(self, key, body):
        group, resource, ns, name = key
        with lock:
            obj = store.get(key)
            if obj is None:
                return self.not_found(group, resource, name)
            if self.command in ("PATCH", "PUT"):
                want = json.loads(body or b"{}").get("spec", {}).get("replicas")
                if want is not None:
                    obj.setdefault("spec", {})["replicas"] = int(want)
                    obj["metadata"]["resourceVersion"] = next_rv()
            n = obj.get("spec", {}).get("replicas", 1)
            md = {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")}
        return self.reply(200, {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": md,
                                "spec": {"replicas": n}, "status": {"replicas": n, "selector": ""}})

    def merge_patch(self, key, body):
        """A JSON merge patch (kubectl annotate, label): null removes a key."""
        group, resource, ns, name = key

        def apply(o, p):
            if not isinstance(p, dict):
                return p
            o = dict(o) if isinstance(o, dict) else {}
            for k, v in p.items():
                if v is None:
                    o.pop(k, None)
                else:
                    o[k] = apply(o.get(k), v)
            return o
        with lock:
            obj = store.get(key)
            if obj is None:
                return self.not_found(group, resource, name)
            obj = apply(obj, json.loads(body or b"{}"))
            obj["metadata"]["resourceVersion"] = next_rv()
            store[key] = obj
        return self.reply(200, with_status(resource, obj))

    def not_found(self, group, resource, name):
        what = f"{resource}.{group}" if group else resource
        return self.reply(404, status(404, "NotFound", f'{what} "{name}" not found',
                                      {"name": name, "group": group, "kind": resource}))

    def group_version(self, parts):
        if parts[:2] == ["api", "v1"]:
            return ("", "v1"), parts[2:]
        if len(parts) >= 3 and parts[0] == "apis" and (parts[1], parts[2]) in RESOURCES:
            return (parts[1], parts[2]), parts[3:]
        return None, None

    def openapi(self, parts):
        # The index of per-group documents, and for each a document whose PATCH operations take
        # `fieldValidation`: kubectl then validates on the server (as against a real 1.27+ server).
        if len(parts) == 2 and parts[1] == "v3":
            paths = {}
            for (g, v) in RESOURCES:
                p = f"api/{v}" if not g else f"apis/{g}/{v}"
                paths[p] = {"serverRelativeURL": f"/openapi/v3/{p}?hash=0123456789ABCDEF"}
            return self.reply(200, {"paths": paths})
        if len(parts) >= 3 and parts[1] == "v3":
            fv = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            paths = {}
            gvp = "/" + "/".join(parts[2:])
            gv = tuple(parts[3:5]) if parts[2] == "apis" else ("", parts[3])
            for (r, k, nsd) in RESOURCES.get(gv, []):
                base = f"{gvp}/namespaces/{{namespace}}/{r}/{{name}}" if nsd else f"{gvp}/{r}/{{name}}"
                gvk = {"group": gv[0], "version": gv[1], "kind": k}
                op = {"parameters": [fv], "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk}
                paths[base] = {"patch": op, "put": dict(op, **{"x-kubernetes-action": "put"})}
            return self.reply(200, {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.37.0"},
                                    "paths": paths, "components": {"schemas": {}}})
        return self.reply(404, status(404, "NotFound", "the server could not find the requested resource"))

    def apply(self, key, gv, kind, body, q):
        if self.headers.get("Content-Type") != "application/apply-patch+yaml":
            return self.reply(415, status(415, "UnsupportedMediaType", "only server-side apply is scripted here"))
        try:
            new = json.loads(body)
        except ValueError as e:
            return self.reply(400, status(400, "BadRequest", f"error decoding patch: {e}"))
        if not q.get("fieldManager"):
            return self.reply(422, status(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"))
        group, resource, ns, name = key
        with lock:
            old = store.get(key)
            md = new.setdefault("metadata", {})
            md["name"], md["namespace"] = name, ns
            if old is None:
                md.update(uid=f"uid-{resource}-{name}", generation=1, creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                obj = new
            else:
                obj = merge(old, new)
                spec_changed = old.get("spec") != obj.get("spec")
                obj["metadata"]["uid"] = old["metadata"]["uid"]
                obj["metadata"]["generation"] = old["metadata"]["generation"] + (1 if spec_changed else 0)
            obj["metadata"]["resourceVersion"] = next_rv()
            obj["metadata"]["managedFields"] = [{"manager": q["fieldManager"], "operation": "Apply",
                                                 "apiVersion": new.get("apiVersion"), "fieldsType": "FieldsV1"}]
            store[key] = obj
        return self.reply(200 if old else 201, with_status(resource, obj))

    def list(self, group, gv, kind, resource, ns, q):
        sel = q.get("fieldSelector", "")
        want = sel.split("=", 1)[1] if sel.startswith("metadata.name=") else None
        terms = [t for t in q.get("labelSelector", "").split(",") if t]

        def matches(labels):
            for t in terms:
                if "!=" in t:
                    k, v = t.split("!=", 1)
                    if labels.get(k) == v:
                        return False
                elif "=" in t:
                    k, v = t.split("=", 1)
                    if labels.get(k) != v.lstrip("="):
                        return False
                elif t.startswith("!"):
                    if t[1:] in labels:
                        return False
                elif t not in labels:
                    return False
            return True
        with lock:
            items = [with_status(resource, o) for (g, r, n, nm), o in store.items()
                     if g == group and r == resource and (ns is None or n == ns) and (want is None or nm == want)
                     and matches(o["metadata"].get("labels", {}))]
        api_version = "/".join(x for x in gv if x)
        if q.get("watch") in ("true", "1"):
            # One ADDED event per object, then the stream stays open until the client's timeout.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for o in items:
                    o.setdefault("apiVersion", api_version)
                    o.setdefault("kind", kind)
                    self.chunk(json.dumps({"type": "ADDED", "object": o}).encode() + b"\n")
                if q.get("sendInitialEvents") == "true":
                    # The streaming list's end (KEP-3157), as the apiserver sends it.
                    mark = {"kind": kind, "apiVersion": api_version, "metadata": {
                        "resourceVersion": str(rv[0]), "annotations": {"k8s.io/initial-events-end": "true"}}}
                    self.chunk(json.dumps({"type": "BOOKMARK", "object": mark}).encode() + b"\n")
                deadline = time.time() + min(float(q.get("timeoutSeconds", 30)), 60)
                while time.time() < deadline:
                    time.sleep(0.2)
                self.chunk(b"")
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        for o in items:
            o.setdefault("apiVersion", api_version)
            o.setdefault("kind", kind)
        return self.reply(200, {"kind": kind + "List", "apiVersion": api_version,
                                "metadata": {"resourceVersion": str(rv[0])}, "items": items})

    def chunk(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = handle_any


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--log")
    p.add_argument("--forbid", action="append", default=[])
    p.add_argument("--namespace", action="append", default=[], help="a namespace that exists (default: default)")
    args = p.parse_args()
    for ns in args.namespace or ["default"]:
        store[("", "namespaces", None, ns)] = {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": ns, "uid": f"uid-ns-{ns}", "resourceVersion": next_rv()},
                                               "status": {"phase": "Active"}}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.replace(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
