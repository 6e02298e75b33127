//! A service's task driver options, resources, replicas and restart policy.
use std::collections::BTreeMap;
use std::time::Duration;

use serde_yaml_ng::{Mapping, Value};

use super::model::{Cfg, Resources, Restart, Task};
use super::{truthy, warn, Cx, Driver};
use crate::convert::{bytes, duration_ms, list, pairs, scalar, Rendered};

/// Capabilities the docker plugin allows by default (`allow_caps`); others need the client's
/// plugin config to list them.
const DOCKER_DEFAULT_CAPS: &[&str] = &[
    "audit_write",
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "mknod",
    "net_bind_service",
    "setfcap",
    "setgid",
    "setpcap",
    "setuid",
    "sys_chroot",
];

/// The driver options compose has a key for.
pub(super) fn driver_options(cx: &Cx, name: &str, svc: &Mapping, task: &mut Task, out: &mut Rendered) {
    let docker = cx.driver == Driver::Docker;
    let cfg = &mut task.config;
    if let Some(w) = svc.get("working_dir").and_then(scalar) {
        cfg.push((if docker { "work_dir" } else { "working_dir" }.into(), Cfg::Str(w)));
    }
    for (key, to) in [("init", "init"), ("read_only", "readonly_rootfs"), ("tty", "tty")] {
        if truthy(svc, key) {
            cfg.push((to.into(), Cfg::Bool(true)));
        }
    }
    if truthy(svc, "privileged") {
        cfg.push(("privileged".into(), Cfg::Bool(true)));
        warn(
            out,
            name,
            "privileged",
            &format!(
                "the clients' {} plugin must allow privileged containers (allow_privileged = true)",
                cx.driver.name()
            ),
        );
    }
    if truthy(svc, "stdin_open") {
        if docker {
            cfg.push(("interactive".into(), Cfg::Bool(true)));
        } else {
            warn(out, name, "stdin_open", "the podman driver has no interactive option; ignored");
        }
    }
    for key in ["cap_add", "cap_drop", "security_opt"] {
        let v = svc.get(key).map(list).unwrap_or_default();
        if !v.is_empty() {
            cfg.push((key.into(), Cfg::List(v)));
        }
    }
    if docker {
        let extra: Vec<String> = svc
            .get("cap_add")
            .map(list)
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                let c = c.to_ascii_lowercase();
                !DOCKER_DEFAULT_CAPS.contains(&c.strip_prefix("cap_").unwrap_or(&c))
            })
            .collect();
        if !extra.is_empty() {
            warn(
                out,
                name,
                "cap_add",
                &format!("the clients' docker plugin must list {} in allow_caps", extra.join(", ")),
            );
        }
    }
    if let Some(g) = svc.get("group_add") {
        if docker {
            cfg.push(("group_add".into(), Cfg::List(list(g))));
        } else {
            warn(out, name, "group_add", "the podman driver has no group_add; ignored");
        }
    }
    if let Some(l) = svc.get("labels") {
        let labels: BTreeMap<String, String> = pairs(l).into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
        if !labels.is_empty() {
            cfg.push(("labels".into(), Cfg::Map(labels)));
        }
    }
    if let Some(s) = svc.get("sysctls") {
        let m: BTreeMap<String, String> = pairs(s).into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect();
        if !m.is_empty() {
            cfg.push(("sysctl".into(), Cfg::Map(m)));
        }
    }
    if let Some(u) = svc.get("ulimits").and_then(Value::as_mapping) {
        let mut m = BTreeMap::new();
        for (k, v) in u {
            let Some(k) = scalar(k) else { continue };
            let limit = match v {
                Value::Mapping(sh) => match (sh.get("soft").and_then(scalar), sh.get("hard").and_then(scalar)) {
                    (Some(s), Some(h)) => Some(format!("{s}:{h}")),
                    (Some(x), None) | (None, Some(x)) => Some(x),
                    _ => None,
                },
                other => scalar(other),
            };
            match limit {
                Some(l) => {
                    m.insert(k, l);
                }
                None => warn(out, name, &format!("ulimits.{k}"), "cannot be read; ignored"),
            }
        }
        if !m.is_empty() {
            cfg.push(("ulimit".into(), Cfg::Map(m)));
        }
    }
    if let Some(s) = svc.get("shm_size").and_then(scalar) {
        match (docker, bytes(&s)) {
            (true, Some(b)) => cfg.push(("shm_size".into(), Cfg::Int(b as i64))),
            (false, Some(_)) => cfg.push(("shm_size".into(), Cfg::Str(s))),
            (_, None) => warn(out, name, "shm_size", &format!("{s:?} is not a size; ignored")),
        }
    }
    if let Some(d) = svc.get("devices").and_then(Value::as_sequence) {
        let mut devs = Vec::new();
        for e in d {
            let (host, container, perms) = match e {
                Value::Mapping(m) => (
                    m.get("source").and_then(scalar),
                    m.get("target").and_then(scalar),
                    m.get("permissions").and_then(scalar),
                ),
                other => {
                    let s = scalar(other).unwrap_or_default();
                    let mut it = s.splitn(3, ':').map(str::to_string);
                    (it.next().filter(|h| !h.is_empty()), it.next(), it.next())
                }
            };
            let Some(host) = host else {
                warn(out, name, "devices", "an entry without a host path; ignored");
                continue;
            };
            devs.push((host, container, perms));
        }
        if !devs.is_empty() {
            if docker {
                let objs = devs
                    .into_iter()
                    .map(|(h, c, p)| {
                        let mut o = vec![("host_path".to_string(), Cfg::Str(h))];
                        if let Some(c) = c {
                            o.push(("container_path".into(), Cfg::Str(c)));
                        }
                        if let Some(p) = p {
                            o.push(("cgroup_permissions".into(), Cfg::Str(p)));
                        }
                        o
                    })
                    .collect();
                cfg.push(("devices".into(), Cfg::Objects(objs)));
            } else {
                let l = devs
                    .into_iter()
                    .map(|(h, c, p)| [Some(h), c, p].into_iter().flatten().collect::<Vec<_>>().join(":"))
                    .collect();
                cfg.push(("devices".into(), Cfg::List(l)));
            }
        }
    }
    for key in ["pids_limit", "oom_score_adj"] {
        if let Some(v) = svc.get(key) {
            match v.as_i64() {
                Some(n) => cfg.push((key.into(), Cfg::Int(n))),
                None => warn(out, name, key, "not a number; ignored"),
            }
        }
    }
    if let Some(r) = svc.get("runtime").and_then(scalar) {
        if docker {
            cfg.push(("runtime".into(), Cfg::Str(r)));
        } else {
            warn(out, name, "runtime", "the podman driver has no runtime option; ignored");
        }
    }
    if let Some(u) = svc.get("userns_mode").and_then(scalar) {
        cfg.push((if docker { "userns_mode" } else { "userns" }.into(), Cfg::Str(u)));
    }
    for (key, to) in [("pid", "pid_mode"), ("ipc", "ipc_mode")] {
        let Some(v) = svc.get(key).and_then(scalar) else { continue };
        match v.as_str() {
            "host" if docker || key == "ipc" => cfg.push((to.into(), Cfg::Str(v))),
            "private" | "shareable" if key == "ipc" => {}
            _ => out.lose(
                name,
                key,
                &format!(
                    "{v}: a shared {key} namespace has no {} driver form; the task gets its own",
                    cx.driver.name()
                ),
                true,
                cx.allow,
            ),
        }
    }
    if let Some(p) = svc.get("pull_policy").and_then(scalar) {
        match p.as_str() {
            "always" => cfg.push(("force_pull".into(), Cfg::Bool(true))),
            "missing" | "if_not_present" => {}
            _ => warn(
                out,
                name,
                "pull_policy",
                &format!("{p:?} has no Nomad form (clients pull missing images); ignored"),
            ),
        }
    }
}

/// `deploy:` → (resources, replicas, restart policy); the compose v2 `cpus`, `mem_limit`,
/// `mem_reservation` and `scale` keys too.
pub(super) fn deploy(
    name: &str,
    svc: &Mapping,
    out: &mut Rendered,
) -> (Option<Resources>, Option<u32>, Option<Restart>) {
    let empty = Mapping::new();
    let d = svc.get("deploy").and_then(Value::as_mapping).unwrap_or(&empty);
    for k in d.keys().filter_map(scalar) {
        let why = match k.as_str() {
            "replicas" | "resources" | "restart_policy" => continue,
            "mode" if d.get("mode").and_then(scalar).as_deref() == Some("replicated") => continue,
            "mode" => "global has no per-group form (a system job would run every group on every client); ignored",
            "update_config" | "rollback_config" => "the target's config.update sets the job's update block; ignored",
            "placement" => "no Nomad form here (constraints); ignored",
            "labels" => "service labels of swarm; ignored",
            _ => "not supported by the nomad converter; ignored",
        };
        warn(out, name, &format!("deploy.{k}"), why);
    }
    let replicas = d
        .get("replicas")
        .or_else(|| svc.get("scale"))
        .map(|r| r.as_u64().and_then(|n| u32::try_from(n).ok()))
        .and_then(|r| {
            if r.is_none() {
                warn(out, name, "deploy.replicas", "not a count; ignored");
            }
            r
        });
    let res = d.get("resources").and_then(Value::as_mapping);
    let get = |part: &str, key: &str| res.and_then(|r| r.get(part)).and_then(|p| p.get(key)).and_then(scalar);
    let cpus =
        get("limits", "cpus").or_else(|| get("reservations", "cpus")).or_else(|| svc.get("cpus").and_then(scalar));
    let limit = get("limits", "memory").or_else(|| svc.get("mem_limit").and_then(scalar));
    let reservation = get("reservations", "memory").or_else(|| svc.get("mem_reservation").and_then(scalar));
    if res.and_then(|r| r.get("reservations")).and_then(|r| r.get("devices")).is_some() {
        warn(out, name, "deploy.resources.reservations.devices", "device requests (GPUs) are not converted; ignored");
    }
    let mut mib = |key: &str, v: Option<String>| -> Option<u32> {
        let v = v?;
        match bytes(&v) {
            Some(b) => {
                let m = b.div_ceil(1 << 20);
                if m < 10 {
                    warn(out, name, key, &format!("{v}: Nomad's minimum is 10 MB; 10 used"));
                }
                Some(u32::try_from(m.max(10)).unwrap_or(u32::MAX))
            }
            None => {
                warn(out, name, key, &format!("{v:?} is not a size; ignored"));
                None
            }
        }
    };
    let limit = mib("deploy.resources.limits.memory", limit);
    let reservation = mib("deploy.resources.reservations.memory", reservation);
    let cpu = match cpus.map(|c| (c.trim().parse::<f64>(), c)) {
        Some((Ok(c), _)) if c > 0.0 && c.is_finite() => Some(((c * 1000.0).round() as u32).max(1)),
        Some((_, c)) => {
            warn(out, name, "deploy.resources.limits.cpus", &format!("{c:?} is not a number of CPUs; ignored"));
            None
        }
        None => None,
    };
    let (memory, memory_max) = match (reservation, limit) {
        (Some(r), Some(l)) if l > r => (Some(r), Some(l)),
        (Some(r), _) => (Some(r), None),
        (None, l) => (l, None),
    };
    if memory_max.is_some() {
        warn(
            out,
            name,
            "deploy.resources.limits.memory",
            "memory_max takes effect only when the cluster's scheduler allows memory oversubscription",
        );
    }
    let resources = (cpu.is_some() || memory.is_some()).then_some(Resources { cpu, memory, memory_max });
    let restart = d.get("restart_policy").and_then(Value::as_mapping).map(|p| {
        let mut r = Restart::default();
        let attempts = p.get("max_attempts").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
        match p.get("condition").and_then(scalar).as_deref().unwrap_or("any") {
            "none" => {
                r.attempts = Some(0);
                r.mode = Some("fail");
            }
            c => {
                if c == "on-failure" {
                    warn(
                        out,
                        name,
                        "deploy.restart_policy.condition",
                        "Nomad restarts a service task whatever its exit status",
                    );
                }
                r.attempts = attempts;
                r.mode = Some(if attempts.is_some() { "fail" } else { "delay" });
            }
        }
        r.delay = p.get("delay").and_then(duration_ms).map(Duration::from_millis);
        r.interval = p.get("window").and_then(duration_ms).map(Duration::from_millis).filter(|d| !d.is_zero());
        r
    });
    (resources, replicas, restart)
}

/// `restart:` → a restart policy (no: fail at once; always: restart forever, paced; on-failure:N:
/// N attempts, then fail).
pub(super) fn restart_policy(name: &str, svc: &Mapping, out: &mut Rendered) -> Option<Restart> {
    let r = svc.get("restart").and_then(scalar)?;
    match r.as_str() {
        "no" => Some(Restart { attempts: Some(0), mode: Some("fail"), ..Default::default() }),
        "always" | "unless-stopped" => Some(Restart { mode: Some("delay"), ..Default::default() }),
        r if r == "on-failure" || r.starts_with("on-failure:") => {
            warn(out, name, "restart", "Nomad restarts a service task whatever its exit status");
            match r.strip_prefix("on-failure:").map(|n| n.trim().parse::<u32>()) {
                None => Some(Restart { mode: Some("delay"), ..Default::default() }),
                Some(Ok(n)) => Some(Restart { attempts: Some(n), mode: Some("fail"), ..Default::default() }),
                Some(Err(_)) => {
                    warn(out, name, "restart", &format!("{r:?}: the count cannot be read; ignored"));
                    None
                }
            }
        }
        r => {
            warn(out, name, "restart", &format!("unknown policy {r:?}; ignored"));
            None
        }
    }
}
