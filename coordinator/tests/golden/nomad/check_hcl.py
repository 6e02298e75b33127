#!/usr/bin/env python3
"""Check the Nomad golden files with a real HCL2 parser and a strict model of Nomad's job API.

For every case directory (one holding `compose.yaml` and `expected.hcl`) beside this script,
or under the directories given as arguments:

1. `expected.hcl` is parsed with python-hcl2 (`pip install python-hcl2`) and converted to the
   API's JSON form the way Nomad's HCL parser (jobspec2) does for the subset dockfra emits —
   labels to names, durations to nanoseconds, `port` blocks with `static` to ReservedPorts,
   blocks inside a driver `config` to lists of objects. The result must equal
   `expected.json`: the two renderings cannot disagree. Any HCL attribute or block outside
   that subset is an error, so a typo cannot slip through as "ignored".
2. `expected.json` is decoded into dataclasses that mirror the structs of Nomad's `api`
   package (api/jobs.go, api/tasks.go, api/services.go, api/resources.go) and the task
   config specs of the docker and podman drivers (drivers/docker/config.go,
   nomad-driver-podman config.go). Unknown fields and wrong types are rejected — Nomad's
   own JSON decoding would silently ignore a misspelt field.
3. A few of Nomad's validation rules are checked on the decoded job: port labels that
   services and tasks name exist, volume mounts name a group volume, checks have the
   fields their type needs, service names are RFC 1123 labels, template destinations stay
   in the task directory.

Usage: python3 check_hcl.py [CASE_DIR_OR_ROOT ...]     (exit status 1 on any failure)
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

try:
    import hcl2
    from hcl2.utils import SerializationOptions
except ImportError:  # pragma: no cover - the message is the point
    sys.exit("check_hcl.py needs python-hcl2: pip install python-hcl2")


class Failure(Exception):
    """A case that does not hold; the message names the file and the path in it."""


# ───────────────────────── Nomad's job API (the subset dockfra emits) ─────────────────────────
# Field names and types as in github.com/hashicorp/nomad/api. time.Duration is an int64 of
# nanoseconds in JSON; *T fields are Optional.

Duration = int


@dataclass
class Port:  # api/resources.go
    Label: str
    Value: Optional[int] = None
    To: Optional[int] = None


@dataclass
class DNSConfig:  # api/resources.go
    Servers: Optional[list[str]] = None
    Searches: Optional[list[str]] = None
    Options: Optional[list[str]] = None


@dataclass
class NetworkResource:  # api/resources.go
    Mode: str
    Hostname: Optional[str] = None
    DNS: Optional[DNSConfig] = None
    ReservedPorts: Optional[list[Port]] = None
    DynamicPorts: Optional[list[Port]] = None


@dataclass
class ServiceCheck:  # api/services.go
    Name: str
    Type: str
    Interval: Duration
    Timeout: Duration
    Command: Optional[str] = None
    Args: Optional[list[str]] = None
    Path: Optional[str] = None
    PortLabel: Optional[str] = None
    TaskName: Optional[str] = None
    FailuresBeforeCritical: Optional[int] = None


@dataclass
class Service:  # api/services.go
    Name: str
    PortLabel: str
    Provider: str
    TaskName: Optional[str] = None
    Tags: Optional[list[str]] = None
    Checks: Optional[list[ServiceCheck]] = None


@dataclass
class RestartPolicy:  # api/tasks.go
    Attempts: Optional[int] = None
    Interval: Optional[Duration] = None
    Delay: Optional[Duration] = None
    Mode: Optional[str] = None


@dataclass
class ReschedulePolicy:  # api/tasks.go
    Attempts: Optional[int] = None
    Unlimited: Optional[bool] = None


@dataclass
class VolumeRequest:  # api/tasks.go
    Name: str
    Type: str
    Source: str
    ReadOnly: Optional[bool] = None


@dataclass
class VolumeMount:  # api/tasks.go
    Volume: str
    Destination: str
    ReadOnly: Optional[bool] = None


@dataclass
class TaskLifecycle:  # api/tasks.go
    Hook: str
    Sidecar: Optional[bool] = None


@dataclass
class Resources:  # api/resources.go
    CPU: Optional[int] = None
    MemoryMB: Optional[int] = None
    MemoryMaxMB: Optional[int] = None


@dataclass
class Template:  # api/tasks.go
    EmbeddedTmpl: str
    DestPath: str
    ChangeMode: Optional[str] = None
    Envvars: Optional[bool] = None
    Perms: Optional[str] = None
    Uid: Optional[int] = None
    Gid: Optional[int] = None


# The docker driver's task config (drivers/docker/config.go, taskConfigSpec).
@dataclass
class DockerTmpfsOptions:
    size: Optional[int] = None
    mode: Optional[int] = None


@dataclass
class DockerMount:
    type: str
    target: str
    source: Optional[str] = None
    readonly: Optional[bool] = None
    tmpfs_options: Optional[list[DockerTmpfsOptions]] = None


@dataclass
class DockerDevice:
    host_path: str
    container_path: Optional[str] = None
    cgroup_permissions: Optional[str] = None


@dataclass
class DockerConfig:
    image: str
    args: Optional[list[str]] = None
    cap_add: Optional[list[str]] = None
    cap_drop: Optional[list[str]] = None
    command: Optional[str] = None
    devices: Optional[list[DockerDevice]] = None
    entrypoint: Optional[list[str]] = None
    extra_hosts: Optional[list[str]] = None
    force_pull: Optional[bool] = None
    group_add: Optional[list[str]] = None
    init: Optional[bool] = None
    interactive: Optional[bool] = None
    ipc_mode: Optional[str] = None
    labels: Optional[dict[str, str]] = None
    mount: Optional[list[DockerMount]] = None
    network_mode: Optional[str] = None
    oom_score_adj: Optional[int] = None
    pid_mode: Optional[str] = None
    pids_limit: Optional[int] = None
    ports: Optional[list[str]] = None
    privileged: Optional[bool] = None
    readonly_rootfs: Optional[bool] = None
    runtime: Optional[str] = None
    security_opt: Optional[list[str]] = None
    shm_size: Optional[int] = None
    sysctl: Optional[dict[str, str]] = None
    tty: Optional[bool] = None
    ulimit: Optional[dict[str, str]] = None
    userns_mode: Optional[str] = None
    volumes: Optional[list[str]] = None
    work_dir: Optional[str] = None


# The podman driver's task config (hashicorp/nomad-driver-podman config.go, taskConfigSpec).
@dataclass
class PodmanConfig:
    image: str
    args: Optional[list[str]] = None
    cap_add: Optional[list[str]] = None
    cap_drop: Optional[list[str]] = None
    command: Optional[str] = None
    devices: Optional[list[str]] = None
    entrypoint: Optional[list[str]] = None
    extra_hosts: Optional[list[str]] = None
    force_pull: Optional[bool] = None
    init: Optional[bool] = None
    ipc_mode: Optional[str] = None
    labels: Optional[dict[str, str]] = None
    network_mode: Optional[str] = None
    oom_score_adj: Optional[int] = None
    pids_limit: Optional[int] = None
    ports: Optional[list[str]] = None
    privileged: Optional[bool] = None
    readonly_rootfs: Optional[bool] = None
    security_opt: Optional[list[str]] = None
    shm_size: Optional[str] = None
    sysctl: Optional[dict[str, str]] = None
    tmpfs: Optional[list[str]] = None
    tty: Optional[bool] = None
    ulimit: Optional[dict[str, str]] = None
    userns: Optional[str] = None
    volumes: Optional[list[str]] = None
    working_dir: Optional[str] = None


DRIVER_CONFIGS = {"docker": DockerConfig, "podman": PodmanConfig}


@dataclass
class Task:  # api/tasks.go
    Name: str
    Driver: str
    Config: dict[str, Any]  # decoded by driver below
    User: Optional[str] = None
    Lifecycle: Optional[TaskLifecycle] = None
    Env: Optional[dict[str, str]] = None
    Resources: Optional[Resources] = None
    RestartPolicy: Optional[RestartPolicy] = None
    Templates: Optional[list[Template]] = None
    VolumeMounts: Optional[list[VolumeMount]] = None
    KillTimeout: Optional[Duration] = None
    KillSignal: Optional[str] = None
    driver_config: Any = field(default=None, metadata={"internal": True})


@dataclass
class TaskGroup:  # api/tasks.go
    Name: str
    Count: int
    Tasks: list[Task]
    Networks: Optional[list[NetworkResource]] = None
    Services: Optional[list[Service]] = None
    Volumes: Optional[dict[str, VolumeRequest]] = None
    RestartPolicy: Optional[RestartPolicy] = None
    ReschedulePolicy: Optional[ReschedulePolicy] = None


@dataclass
class UpdateStrategy:  # api/jobs.go
    MaxParallel: int
    Canary: int
    AutoRevert: bool
    AutoPromote: bool
    MinHealthyTime: Duration
    HealthyDeadline: Duration
    ProgressDeadline: Duration


@dataclass
class Job:  # api/jobs.go
    ID: str
    Name: str
    Type: str
    Datacenters: list[str]
    TaskGroups: list[TaskGroup]
    Region: Optional[str] = None
    Namespace: Optional[str] = None
    Meta: Optional[dict[str, str]] = None
    Update: Optional[UpdateStrategy] = None


@dataclass
class JobRegisterRequest:  # the body of POST /v1/jobs (api/jobs.go, JobRegisterRequest)
    Job: Job


def decode(tp: Any, value: Any, path: str) -> Any:
    """Decode `value` as `tp`, strictly: exact types, no unknown or missing fields."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            raise Failure(f"{path}: null where {args[0]} is expected (omit the field instead)")
        return decode(args[0], value, path)
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise Failure(f"{path}: expected a list, found {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [decode(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise Failure(f"{path}: expected an object, found {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {k: decode(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise Failure(f"{path}: expected a {tp.__name__} object, found {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if not f.metadata.get("internal")}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise Failure(f"{path}: {tp.__name__} has no field {', '.join(unknown)}")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = decode(hints[name], value[name], f"{path}.{name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise Failure(f"{path}: {tp.__name__}.{name} is missing")
        return tp(**kwargs)
    if tp is bool:
        if not isinstance(value, bool):
            raise Failure(f"{path}: expected a boolean, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Failure(f"{path}: expected an integer, found {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise Failure(f"{path}: expected a string, found {value!r}")
        return value
    raise Failure(f"{path}: no decoder for {tp}")


RFC1123 = re.compile(r"^(?i:[a-z0-9]|[a-z0-9][a-z0-9\-]{0,61}[a-z0-9])$")
SECOND = 1_000_000_000


def validate(job: Job, where: str) -> None:
    """Some of Nomad's own validation rules (nomad/structs), on the decoded job."""
    if job.Type != "service":
        raise Failure(f"{where}: Type {job.Type!r}")
    for g in job.TaskGroups:
        gp = f"{where}: group {g.Name}"
        labels = [p.Label for n in g.Networks or [] for p in (n.ReservedPorts or []) + (n.DynamicPorts or [])]
        if len(labels) != len(set(labels)):
            raise Failure(f"{gp}: duplicate port labels {labels}")
        names = [t.Name for t in g.Tasks]
        if len(names) != len(set(names)):
            raise Failure(f"{gp}: duplicate task names {names}")
        for n in g.Networks or []:
            if n.Mode not in ("bridge", "host"):
                raise Failure(f"{gp}: network mode {n.Mode!r}")
        for s in g.Services or []:
            if not RFC1123.match(s.Name):
                raise Failure(f"{gp}: service name {s.Name!r} is not an RFC 1123 label")
            if s.PortLabel not in labels:
                raise Failure(f"{gp}: service {s.Name} port {s.PortLabel!r} is not a group port")
            if s.Provider not in ("nomad", "consul"):
                raise Failure(f"{gp}: service {s.Name} provider {s.Provider!r}")
            if s.TaskName is not None and s.TaskName not in names:
                raise Failure(f"{gp}: service {s.Name} task {s.TaskName!r} is not a task of the group")
            for c in s.Checks or []:
                allowed = ("http", "tcp") if s.Provider == "nomad" else ("http", "tcp", "script", "grpc")
                if c.Type not in allowed:
                    raise Failure(f"{gp}: service {s.Name}: check type {c.Type!r} with provider {s.Provider}")
                if c.Interval < SECOND or c.Timeout < SECOND:
                    raise Failure(f"{gp}: service {s.Name}: check interval and timeout must be at least 1s")
                if c.Type == "script" and (not c.Command or c.TaskName not in names):
                    raise Failure(f"{gp}: service {s.Name}: a script check needs a command and a task of the group")
                if c.Type == "http" and (not c.Path or "://" in c.Path):
                    raise Failure(f"{gp}: service {s.Name}: an http check needs a relative path")
                if c.PortLabel is not None and c.PortLabel not in labels:
                    raise Failure(f"{gp}: service {s.Name}: check port {c.PortLabel!r} is not a group port")
                if s.Provider == "nomad" and c.FailuresBeforeCritical is not None:
                    raise Failure(f"{gp}: service {s.Name}: failures_before_critical is Consul's only")
        for t in g.Tasks:
            tp = f"{gp}: task {t.Name}"
            if t.Driver not in DRIVER_CONFIGS:
                raise Failure(f"{tp}: driver {t.Driver!r}")
            t.driver_config = decode(DRIVER_CONFIGS[t.Driver], t.Config, f"{tp}.Config")
            for p in t.driver_config.ports or []:
                if p not in labels:
                    raise Failure(f"{tp}: config port {p!r} is not a group port")
            for m in t.VolumeMounts or []:
                if m.Volume not in (g.Volumes or {}):
                    raise Failure(f"{tp}: volume_mount of {m.Volume!r}, not a group volume")
            for tm in t.Templates or []:
                parts = tm.DestPath.split("/")
                if tm.DestPath.startswith("/") or ".." in parts or parts[0] not in ("local", "secrets", "alloc"):
                    raise Failure(f"{tp}: template destination {tm.DestPath!r} leaves the task directory")
            if t.Lifecycle is not None and t.Lifecycle.Hook not in ("prestart", "poststart", "poststop"):
                raise Failure(f"{tp}: lifecycle hook {t.Lifecycle.Hook!r}")
        for k, v in (g.Volumes or {}).items():
            if v.Name != k or v.Type != "host":
                raise Failure(f"{gp}: volume {k}: Name {v.Name!r}, Type {v.Type!r}")
        if not any(t.Lifecycle is None or t.Lifecycle.Sidecar for t in g.Tasks):
            raise Failure(f"{gp}: no main task")


# ───────────────────────── HCL → the API form (jobspec2's mapping, for this subset) ─────────────────────────

DURATION_UNITS = {"h": 3600 * SECOND, "m": 60 * SECOND, "s": SECOND, "ms": 1_000_000, "us": 1_000, "ns": 1}


def duration(v: Any, path: str) -> int:
    """A Go duration string (`1h30m`, `90s`, `500ms`) in nanoseconds."""
    if not isinstance(v, str) or not re.fullmatch(r"(\d+(h|ms|us|ns|m|s))+", v):
        raise Failure(f"{path}: {v!r} is not a Go duration")
    return sum(int(n) * DURATION_UNITS[u] for n, u in re.findall(r"(\d+)(h|ms|us|ns|m|s)", v))


def value(v: Any, path: str) -> Any:
    """A parsed HCL value with its template escapes resolved (`$${` is a literal `${`)."""
    if isinstance(v, str):
        if "${" in v.replace("$${", "") or "%{" in v.replace("%%{", ""):
            raise Failure(f"{path}: an unescaped template sequence in {v!r}")
        return v.replace("$${", "${").replace("%%{", "%{")
    if isinstance(v, list):
        return [value(x, f"{path}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        return {unquote(k): value(x, f"{path}.{unquote(k)}") for k, x in v.items() if k != "__is_block__"}
    return v


def unquote(label: str) -> str:
    return label[1:-1] if len(label) >= 2 and label[0] == '"' == label[-1] else label


class Body:
    """One HCL block body: attributes and nested blocks, each taken at most once by name."""

    def __init__(self, raw: dict, path: str):
        self.path = path
        self.raw = {k: v for k, v in raw.items() if k != "__is_block__"}
        self.taken: set[str] = set()

    def attr(self, name: str, default: Any = None) -> Any:
        self.taken.add(name)
        v = self.raw.get(name, default)
        return default if v is default else value(v, f"{self.path}.{name}")

    def blocks(self, name: str) -> list["Body"]:
        self.taken.add(name)
        out = []
        for i, b in enumerate(self.raw.get(name, [])):
            if not isinstance(b, dict) or b.get("__is_block__") is not True:
                raise Failure(f"{self.path}.{name}[{i}]: expected a block")
            out.append(Body(b, f"{self.path}.{name}[{i}]"))
        return out

    def labelled(self, name: str) -> list[tuple[str, "Body"]]:
        self.taken.add(name)
        out = []
        for i, b in enumerate(self.raw.get(name, [])):
            if not isinstance(b, dict) or len(b) != 1:
                raise Failure(f"{self.path}.{name}[{i}]: expected one labelled block")
            ((label, inner),) = b.items()
            out.append((unquote(label), Body(inner, f"{self.path}.{name}.{unquote(label)}")))
        return out

    def block(self, name: str) -> Optional["Body"]:
        bs = self.blocks(name)
        if len(bs) > 1:
            raise Failure(f"{self.path}: more than one {name} block")
        return bs[0] if bs else None

    def done(self) -> None:
        extra = sorted(set(self.raw) - self.taken)
        if extra:
            raise Failure(f"{self.path}: not in the subset dockfra emits: {', '.join(extra)}")


def put(out: dict, key: str, v: Any) -> None:
    if v is not None:
        out[key] = v


def fields(b: Body, names: dict[str, str], durations: tuple[str, ...] = ()) -> dict:
    """Attributes `hcl_name → ApiName`, durations converted."""
    out: dict = {}
    for hcl_name, api in names.items():
        v = b.attr(hcl_name)
        if v is not None and hcl_name in durations:
            v = duration(v, f"{b.path}.{hcl_name}")
        put(out, api, v)
    return out


def string_map(b: Body, name: str) -> Optional[dict]:
    """`env`/`meta`: block syntax or the map-attribute form (`env = { "a.b" = "c" }`)."""
    raw = b.raw.get(name)
    if isinstance(raw, dict):
        b.taken.add(name)
        return value(raw, f"{b.path}.{name}")
    blk = b.block(name)
    if blk is None:
        return None
    m = {k: value(v, f"{blk.path}.{k}") for k, v in blk.raw.items()}
    blk.taken.update(blk.raw)
    return m


def config(b: Body) -> dict:
    """A driver `config` body: attributes as they are, nested blocks as lists of objects."""
    out = {}
    for k, v in b.raw.items():
        if isinstance(v, list) and v and all(isinstance(x, dict) and x.get("__is_block__") for x in v):
            out[k] = [config(Body(x, f"{b.path}.{k}")) for x in v]
        else:
            out[k] = value(v, f"{b.path}.{k}")
    b.taken.update(b.raw)
    return out


RESTART = {"attempts": "Attempts", "interval": "Interval", "delay": "Delay", "mode": "Mode"}


def restart(b: Optional[Body]) -> Optional[dict]:
    if b is None:
        return None
    r = fields(b, RESTART, ("interval", "delay"))
    b.done()
    return r


def check(b: Body) -> dict:
    c = fields(
        b,
        {
            "name": "Name",
            "type": "Type",
            "task": "TaskName",
            "command": "Command",
            "args": "Args",
            "path": "Path",
            "port": "PortLabel",
            "interval": "Interval",
            "timeout": "Timeout",
            "failures_before_critical": "FailuresBeforeCritical",
        },
        ("interval", "timeout"),
    )
    b.done()
    return c


def service(b: Body) -> dict:
    s = fields(b, {"name": "Name", "port": "PortLabel", "provider": "Provider", "task": "TaskName", "tags": "Tags"})
    checks = [check(c) for c in b.blocks("check")]
    if checks:
        s["Checks"] = checks
    b.done()
    return s


def task(name: str, b: Body) -> dict:
    t = {"Name": name}
    t.update(fields(b, {"driver": "Driver", "user": "User", "kill_signal": "KillSignal"}))
    put(t, "KillTimeout", fields(b, {"kill_timeout": "K"}, ("kill_timeout",)).get("K"))
    lc = b.block("lifecycle")
    if lc is not None:
        t["Lifecycle"] = fields(lc, {"hook": "Hook", "sidecar": "Sidecar"})
        lc.done()
    cfg = b.block("config")
    if cfg is None:
        raise Failure(f"{b.path}: no config block")
    t["Config"] = config(cfg)
    put(t, "Env", string_map(b, "env"))
    templates = []
    for tb in b.blocks("template"):
        templates.append(
            fields(
                tb,
                {
                    "data": "EmbeddedTmpl",
                    "destination": "DestPath",
                    "env": "Envvars",
                    "change_mode": "ChangeMode",
                    "perms": "Perms",
                    "uid": "Uid",
                    "gid": "Gid",
                },
            )
        )
        tb.done()
    if templates:
        t["Templates"] = templates
    mounts = []
    for mb in b.blocks("volume_mount"):
        mounts.append(fields(mb, {"volume": "Volume", "destination": "Destination", "read_only": "ReadOnly"}))
        mb.done()
    if mounts:
        t["VolumeMounts"] = mounts
    rb = b.block("resources")
    if rb is not None:
        t["Resources"] = fields(rb, {"cpu": "CPU", "memory": "MemoryMB", "memory_max": "MemoryMaxMB"})
        rb.done()
    put(t, "RestartPolicy", restart(b.block("restart")))
    b.done()
    return t


def network(b: Body) -> dict:
    n = fields(b, {"mode": "Mode", "hostname": "Hostname"})
    dns = b.block("dns")
    if dns is not None:
        n["DNS"] = fields(dns, {"servers": "Servers", "searches": "Searches", "options": "Options"})
        dns.done()
    reserved, dynamic = [], []
    for label, pb in b.labelled("port"):
        p = {"Label": label}
        put(p, "Value", pb.attr("static"))
        put(p, "To", pb.attr("to"))
        pb.done()
        (reserved if "Value" in p else dynamic).append(p)
    if reserved:
        n["ReservedPorts"] = reserved
    if dynamic:
        n["DynamicPorts"] = dynamic
    b.done()
    return n


def group(name: str, b: Body) -> dict:
    g: dict = {"Name": name, "Count": b.attr("count")}
    nets = [network(n) for n in b.blocks("network")]
    if nets:
        g["Networks"] = nets
    vols = {}
    for label, vb in b.labelled("volume"):
        vols[label] = {"Name": label, **fields(vb, {"type": "Type", "source": "Source", "read_only": "ReadOnly"})}
        vb.done()
    if vols:
        g["Volumes"] = vols
    put(g, "RestartPolicy", restart(b.block("restart")))
    rs = b.block("reschedule")
    if rs is not None:
        g["ReschedulePolicy"] = fields(rs, {"attempts": "Attempts", "unlimited": "Unlimited"})
        rs.done()
    services = [service(s) for s in b.blocks("service")]
    if services:
        g["Services"] = services
    g["Tasks"] = [task(n, t) for n, t in b.labelled("task")]
    b.done()
    return g


def hcl_to_api(doc: dict, where: str) -> dict:
    top = Body(doc, where)
    jobs = top.labelled("job")
    top.done()
    if len(jobs) != 1:
        raise Failure(f"{where}: {len(jobs)} job blocks")
    ((job_id, b),) = jobs
    j: dict = {"ID": job_id, "Name": job_id}
    j.update(fields(b, {"region": "Region", "namespace": "Namespace", "datacenters": "Datacenters", "type": "Type"}))
    put(j, "Meta", string_map(b, "meta"))
    u = b.block("update")
    if u is not None:
        j["Update"] = fields(
            u,
            {
                "max_parallel": "MaxParallel",
                "canary": "Canary",
                "auto_revert": "AutoRevert",
                "auto_promote": "AutoPromote",
                "min_healthy_time": "MinHealthyTime",
                "healthy_deadline": "HealthyDeadline",
                "progress_deadline": "ProgressDeadline",
            },
            ("min_healthy_time", "healthy_deadline", "progress_deadline"),
        )
        u.done()
    j["TaskGroups"] = [group(n, g) for n, g in b.labelled("group")]
    b.done()
    return {"Job": j}


def first_difference(a: Any, b: Any, path: str = "") -> str:
    if type(a) is not type(b):
        return f"{path or '.'}: {a!r} (HCL) vs {b!r} (JSON)"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in the {'HCL' if k in a else 'JSON'}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return ""
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items (HCL) vs {len(b)} (JSON)"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return ""
    return "" if a == b else f"{path}: {a!r} (HCL) vs {b!r} (JSON)"


# ───────────────────────── driving ─────────────────────────


def check_case(case: Path) -> str:
    hcl_file, json_file = case / "expected.hcl", case / "expected.json"
    opts = SerializationOptions(strip_string_quotes=True, with_comments=False)
    try:
        doc = hcl2.loads(hcl_file.read_text(), serialization_options=opts)
    except Exception as e:  # the parser's own exceptions vary by version
        raise Failure(f"{hcl_file}: does not parse as HCL2: {e}") from e
    from_hcl = hcl_to_api(doc, str(hcl_file))
    from_json = json.loads(json_file.read_text())
    diff = first_difference(from_hcl, from_json)
    if diff:
        raise Failure(f"{case}: expected.hcl and expected.json disagree at {diff}")
    req = decode(JobRegisterRequest, from_json, f"{json_file}: ")
    validate(req.Job, str(json_file))
    groups = ", ".join(f"{g.Name}×{g.Count} [{' '.join(t.Name for t in g.Tasks)}]" for g in req.Job.TaskGroups)
    return f"job {req.Job.ID}: {groups}"


def cases(args: list[str]) -> list[Path]:
    roots = [Path(a) for a in args] or [Path(__file__).resolve().parent]
    found = []
    for r in roots:
        if (r / "expected.hcl").is_file():
            found.append(r)
        else:
            found.extend(sorted(p.parent for p in r.glob("*/expected.hcl")))
    return found


def main(argv: list[str]) -> int:
    found = cases(argv)
    if not found:
        print("check_hcl.py: no case directories with expected.hcl found", file=sys.stderr)
        return 1
    failed = 0
    for case in found:
        try:
            print(f"ok   {case.name}: {check_case(case)}")
        except Failure as e:
            failed += 1
            print(f"FAIL {case.name}: {e}")
    print(f"{len(found) - failed} of {len(found)} cases hold")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
