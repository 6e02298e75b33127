#!/usr/bin/env python3
"""A scripted Nomad HTTP API for the nomad driver's tests (no Nomad binary can be had here).

Every answer is built from a response recorded from Nomad's own documentation
(tests/nomadapi/recorded/, see its README): the fields and their values are the recorded ones,
with only the ids, versions, statuses and counts of this run filled in (statuses and
descriptions are Nomad's own constants). A job's deployment follows the images its tasks run:

  image containing `broken`  -> the deployment fails: "Failed due to unhealthy allocations"
  image containing `slow`    -> the deployment stays running
  update.canary > 0, no auto_promote -> running with healthy canaries until promoted
  anything else              -> successful

Options: --token T (requests without `X-Nomad-Token: T` get 403 "Permission denied"),
--namespace NS (namespaces that exist; default: default), --log FILE (one JSON line per request).
GET /_state returns the jobs (not Nomad's API: what the test reads back), as does the file
--state-file names (rewritten after every request; for a server behind TLS).
--tls-cert/--tls-key serve HTTPS, --client-ca also requires a client certificate.
Usage: nomad_api.py --port-file F [--token T] [--namespace NS]… [--log L] [--tls-cert C --tls-key K [--client-ca CA]]
"""
import argparse, copy, json, os, threading, time, urllib.parse, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
lock = threading.Lock()
jobs = {}  # id -> {"versions": [job], "deployments": [d], "stopped": bool}
index = [100]
args = None


def recorded(name):
    with open(os.path.join(HERE, "recorded", name)) as f:
        return json.load(f)


def next_index():
    index[0] += 1
    return index[0]


def images(job):
    return [t.get("Config", {}).get("image", "") for g in job.get("TaskGroups") or [] for t in g.get("Tasks") or []]


def spec_of(job):
    """What decides whether a register makes a new version: the job without server fields."""
    j = copy.deepcopy(job)
    for k in ("Version", "ModifyIndex", "JobModifyIndex", "CreateIndex", "SubmitTime", "Status", "Stable"):
        j.pop(k, None)
    return json.dumps(j, sort_keys=True)


def update_of(job, group):
    return group.get("Update") or job.get("Update") or {}


def new_deployment(job, version):
    """The recorded deployment, for this job's version, its groups and its fate."""
    d = recorded("deployment-running-canary.json")
    template = next(iter(d["TaskGroups"].values()))
    d.update(ID=str(uuid.uuid4()), JobID=job["ID"], JobVersion=version, JobModifyIndex=next_index(),
             CreateIndex=index[0], ModifyIndex=index[0])
    groups = {}
    for g in job.get("TaskGroups") or []:
        u = update_of(job, g)
        tg = dict(template)
        canaries = int(u.get("Canary") or 0)
        tg.update(AutoRevert=bool(u.get("AutoRevert")), AutoPromote=bool(u.get("AutoPromote")), Promoted=False,
                  DesiredCanaries=canaries, DesiredTotal=int(g.get("Count") or 1),
                  PlacedCanaries=[str(uuid.uuid4()) for _ in range(canaries)], PlacedAllocs=0, HealthyAllocs=0,
                  UnhealthyAllocs=0)
        groups[g["Name"]] = tg
    d["TaskGroups"] = groups
    d["_created"] = time.time()
    return d


def advance(rec, d):
    """Where the deployment is by now (after a second, each fate shows). A failed deployment
    with auto_revert goes back to the version before, as Nomad's deployment watcher does: a
    new job version equal to it, with its own deployment."""
    job = rec["versions"][d["JobVersion"]]
    if d["Status"] != "running" or time.time() - d["_created"] < 1.0:
        return
    imgs = images(job)
    if any("broken" in i for i in imgs):
        f = recorded("deployment-failed.json")
        d["Status"], d["StatusDescription"] = f["Status"], f["StatusDescription"]
        for g in d["TaskGroups"].values():
            g["PlacedAllocs"], g["UnhealthyAllocs"] = g["DesiredCanaries"] or g["DesiredTotal"], g["DesiredCanaries"] or g["DesiredTotal"]
        revert = any(g["AutoRevert"] for g in d["TaskGroups"].values())
        prior = d["JobVersion"] - 1
        if revert and prior >= 0 and d["JobVersion"] == len(rec["versions"]) - 1:
            # structs.DeploymentStatusDescriptionRollback
            d["StatusDescription"] += f" - rolling back to job version {prior}"
            rec["versions"].append(copy.deepcopy(rec["versions"][prior]))
            rec["deployments"].append(new_deployment(rec["versions"][-1], len(rec["versions"]) - 1))
        return
    if any("slow" in i for i in imgs):
        return
    waiting = [g for g in d["TaskGroups"].values() if g["DesiredCanaries"] > 0 and not g["AutoPromote"] and not g["Promoted"]]
    if waiting:
        p = recorded("deployment-needs-promotion.json")
        d["StatusDescription"] = p["StatusDescription"]
        for g in waiting:
            g["PlacedAllocs"] = g["HealthyAllocs"] = g["DesiredCanaries"]
        return
    s = recorded("deployment-successful.json")
    d["Status"], d["StatusDescription"] = s["Status"], s["StatusDescription"]
    for g in d["TaskGroups"].values():
        g["PlacedAllocs"] = g["HealthyAllocs"] = g["DesiredTotal"]


def allocations(job_id):
    """The recorded allocation stub, one per placed allocation of the latest version."""
    rec = jobs[job_id]
    if rec["stopped"]:
        return []
    job = rec["versions"][-1]
    version = len(rec["versions"]) - 1
    d = next((d for d in rec["deployments"] if d["JobVersion"] == version), None)
    if d is not None:
        advance(rec, d)
        job = rec["versions"][-1]
        version = len(rec["versions"]) - 1
        d = next((d for d in rec["deployments"] if d["JobVersion"] == version), None)
    failed = d is not None and d["Status"] == "failed"
    healthy = d is None or d["Status"] == "successful" or not failed and d["Status"] == "running" and not any("slow" in i for i in images(job))
    template = recorded("allocations.json")[0]
    out = []
    for g in job.get("TaskGroups") or []:
        for i in range(int(g.get("Count") or 1)):
            a = copy.deepcopy(template)
            a.update(ID=str(uuid.uuid4()), JobID=job_id, TaskGroup=g["Name"], Name=f'{job_id}.{g["Name"]}[{i}]',
                     JobVersion=version, DesiredStatus="run",
                     ClientStatus="failed" if failed else ("running" if healthy else "pending"),
                     DeploymentStatus={"Healthy": (not failed) if healthy or failed else None, "Canary": False})
            out.append(a)
    return out


def state():
    """What the test reads back (not Nomad's API): per job, its versions, images, deployments."""
    return {k: {"versions": len(v["versions"]), "stopped": v["stopped"], "images": images(v["versions"][-1]),
                "deployments": [{kk: vv for kk, vv in d.items() if not kk.startswith("_")} for d in v["deployments"]]}
            for k, v in jobs.items()}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, code, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if args.log:
            with lock, open(args.log, "a") as f:
                f.write(json.dumps({"method": self.command, "path": u.path, "query": q,
                                    "token": self.headers.get("X-Nomad-Token"), "body": body.decode(errors="replace")}) + "\n")
        if u.path == "/_state":
            with lock:
                return self.reply(200, state())
        given = self.headers.get("X-Nomad-Token")
        if args.token and given != args.token:
            # As Nomad's ACL layer answers: the anonymous policy allows nothing
            # (structs.ErrPermissionDenied); an unknown secret is not found.
            return self.reply(403, "ACL token not found" if given else "Permission denied")
        parts = [p for p in u.path.split("/") if p]
        ns = q.get("namespace", "default")
        if parts == ["v1", "jobs"] and ns not in (args.namespace or ["default"]):
            # nomad/job_endpoint_validators.go, wrapped by go-multierror; a 500 from the RPC.
            try:
                job_id = json.loads(body)["Job"]["ID"]
            except (ValueError, KeyError):
                job_id = "?"
            return self.reply(500, f'1 error occurred:\n\t* job "{job_id}" is in nonexistent namespace "{ns}"\n\n')
        with lock:
            try:
                return self.route(parts, body)
            finally:
                if args.state_file:
                    with open(args.state_file + ".tmp", "w") as f:
                        json.dump(state(), f)
                    os.replace(args.state_file + ".tmp", args.state_file)

    def route(self, parts, body):
        m = self.command
        if parts == ["v1", "agent", "self"] and m == "GET":
            return self.reply(200, recorded("agent-self.json"))
        if parts == ["v1", "jobs"] and m in ("POST", "PUT"):
            try:
                job = json.loads(body)["Job"]
            except (ValueError, KeyError) as e:
                return self.reply(400, f"failed to decode request: {e}")
            rec = jobs.setdefault(job["ID"], {"versions": [], "deployments": [], "stopped": False})
            changed = not rec["versions"] or spec_of(rec["versions"][-1]) != spec_of(job) or rec["stopped"]
            if changed:
                rec["versions"].append(job)
                rec["stopped"] = False
                if any(update_of(job, g) for g in job.get("TaskGroups") or []):
                    rec["deployments"].append(new_deployment(job, len(rec["versions"]) - 1))
            r = recorded("register.json")
            r.update(EvalID=str(uuid.uuid4()), EvalCreateIndex=next_index(), JobModifyIndex=index[0], Index=index[0])
            return self.reply(200, r)
        if len(parts) >= 3 and parts[:2] == ["v1", "job"]:
            rec = jobs.get(parts[2])
            rest = parts[3:]
            if rec is None and rest == ["deployment"]:
                return self.reply(200, None)
            if rec is None and rest in (["allocations"], ["deployments"]):
                return self.reply(200, [])
            if rec is None:
                return self.reply(404, "job not found")
            if not rest and m == "GET":
                j = copy.deepcopy(rec["versions"][-1])
                j.update(Version=len(rec["versions"]) - 1, Status="dead" if rec["stopped"] else "running")
                return self.reply(200, j)
            if not rest and m == "DELETE":
                rec["stopped"] = True
                return self.reply(200, {"EvalID": str(uuid.uuid4()), "EvalCreateIndex": next_index(),
                                        "JobModifyIndex": index[0]})
            if rest == ["deployment"] and m == "GET":
                if not rec["deployments"]:
                    return self.reply(200, None)
                d = rec["deployments"][-1]
                advance(rec, d)
                d = rec["deployments"][-1]
                return self.reply(200, {k: v for k, v in d.items() if not k.startswith("_")})
            if rest == ["allocations"] and m == "GET":
                return self.reply(200, allocations(parts[2]))
            if rest == ["deployments"] and m == "GET":
                # Newest first, as Nomad lists them.
                if rec["deployments"]:
                    advance(rec, rec["deployments"][-1])
                return self.reply(200, [{k: v for k, v in d.items() if not k.startswith("_")} for d in reversed(rec["deployments"])])
        if len(parts) == 4 and parts[:3] == ["v1", "deployment", "promote"] and m in ("POST", "PUT"):
            for rec in jobs.values():
                for d in rec["deployments"]:
                    if d["ID"] == parts[3]:
                        if d["Status"] != "running":
                            return self.reply(500, f"can't promote terminal deployment")
                        for g in d["TaskGroups"].values():
                            g["Promoted"] = True
                        d["ModifyIndex"] = next_index()
                        r = recorded("promote.json")
                        r.update(EvalID=str(uuid.uuid4()), EvalCreateIndex=index[0], DeploymentModifyIndex=index[0], Index=index[0])
                        return self.reply(200, r)
            return self.reply(404, "deployment not found")
        return self.reply(404, "Invalid URL")

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--token")
    p.add_argument("--namespace", action="append", default=[])
    p.add_argument("--log")
    p.add_argument("--state-file", help="write the jobs' state here after every request")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM) …")
    p.add_argument("--tls-key", help="… and this key")
    p.add_argument("--client-ca", help="with --tls-cert: require client certificates this CA signed (verify_https_client)")
    args = p.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.replace(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
