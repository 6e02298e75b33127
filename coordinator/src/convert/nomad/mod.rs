//! Compose → one Nomad job: the HCL2 jobspec (`<job>.nomad.hcl`) and the JSON form that
//! `POST /v1/jobs` takes (`<job>.json`). Both are rendered from one model of the job ([`Job`],
//! shaped after Nomad's `api` package), so they cannot disagree. What Nomad cannot express
//! becomes a warning naming the service and the key; a dangerous loss is an error unless the
//! target's `allow:` names the key. Pure: project files are read only through [`Files`], secret
//! contents appear nowhere but in the rendered template data, and no input makes it panic.
//!
//! The choices, each shown by a golden case under `tests/golden/nomad/`:
//! - A group per service (`group: per-service`, the default) or one group holding every service
//!   as a task (`group: single`: one network namespace, so the services reach each other on
//!   localhost; with docker they also answer to their compose names through `/etc/hosts`).
//! - Ports: the group network (`bridge`, or `host` for `network_mode: host`) gets a port label
//!   per container port, `static` when compose publishes it, dynamic otherwise.
//! - Named volumes: host volumes (which the clients must provide). Absolute bind mounts: the
//!   driver's `volumes` (the path must exist on the client). Relative bind mounts of project
//!   files, `configs` and `secrets`: templates embedded in the job, bind-mounted from the task
//!   directory where compose puts them. Project directories cannot travel in a job: dropped,
//!   with a warning.
//! - `env_file`: parsed as compose reads it, keys that `environment` sets left out (compose's
//!   precedence; a Nomad template's variables would win over `env`), one `env = true` template.
//! - `depends_on`: per-service groups get a prestart task per dependency that waits until the
//!   dependency's registered service answers on its port; in one group, dependencies become
//!   prestart tasks themselves (sidecars, or run to completion for
//!   `service_completed_successfully`) and waits poll localhost.
//! - `healthcheck`: a script check with `service_provider: consul`; Nomad's own provider has
//!   only http and tcp checks, so a `curl`/`wget` of localhost becomes an http check, any other
//!   test a tcp check of the port (with a warning).

mod driver;
mod files;
mod groups;
mod model;
mod render;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dockfra_common::config::{NomadConfig, NomadGrouping};
use serde_yaml_ng::{Mapping, Value};

use self::driver::{deploy, driver_options, restart_policy};
use self::files::{env_files, file_refs, long_tmpfs_sizes, project_file, safe_path, template_escape};
use self::groups::{per_service, single_group};
use self::model::{
    Cfg, Check, CheckKind, Dns, HostVolume, Job, NetMode, NetPort, Restart, Service, Task, Template, Update,
    VolumeMount,
};
use self::render::{hcl_job, json_job};
use super::{
    argv, bytes, depends_on, dns_label, duration_ms, health_argv, list, mounts, pairs, ports, scalar, section,
    services, shell_words, Files, Rendered,
};

/// Options from the target and the app.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// The app's name: the job id unless `job_name` is set.
    pub app: String,
    /// The release being rendered (a job meta field), if any.
    pub release: Option<String>,
    pub config: &'a NomadConfig,
}

/// Keys of a service this converter carries over or reports on by name; any other key gets
/// "not supported by the nomad converter; ignored".
const HANDLED: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "tmpfs",
    "configs",
    "secrets",
    "healthcheck",
    "deploy",
    "scale",
    "restart",
    "user",
    "working_dir",
    "depends_on",
    "init",
    "read_only",
    "hostname",
    "privileged",
    "cap_add",
    "cap_drop",
    "labels",
    "dns",
    "dns_search",
    "dns_opt",
    "extra_hosts",
    "shm_size",
    "sysctls",
    "ulimits",
    "devices",
    "security_opt",
    "group_add",
    "tty",
    "stdin_open",
    "pids_limit",
    "oom_score_adj",
    "runtime",
    "userns_mode",
    "network_mode",
    "networks",
    "pid",
    "ipc",
    "stop_signal",
    "stop_grace_period",
    "pull_policy",
    "cpus",
    "mem_limit",
    "mem_reservation",
];

/// Keys dropped with a fixed reason: (key, why, dangerous).
const DROPPED: &[(&str, &str, bool)] = &[
    ("container_name", "ignored; Nomad names the containers", false),
    ("links", "ignored; tasks reach other groups through the registered services", false),
    ("profiles", "ignored; the service is part of the job whatever the active profiles", false),
    ("logging", "ignored; Nomad keeps the task's stdout and stderr (nomad alloc logs)", false),
    ("platform", "ignored; each client pulls the image for its own platform", false),
    ("domainname", "not supported by the Nomad task drivers; ignored", false),
    ("mac_address", "ignored; the group network assigns the addresses", false),
    ("volumes_from", "not expressible: a Nomad task cannot mount another task's volumes", true),
];

/// Compose's healthcheck interval and timeout when none is given.
const HEALTH_DEFAULT: Duration = Duration::from_secs(30);

// ───────────────────────────── conversion ─────────────────────────────

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    Docker,
    Podman,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Docker => "docker",
            Driver::Podman => "podman",
        }
    }
}

/// What the conversion of every service shares.
struct Cx<'a> {
    model: &'a Value,
    allow: &'a [String],
    files: Files<'a>,
    driver: Driver,
    /// `nomad` or `consul`.
    provider: &'a str,
    single: bool,
    /// The image of the prestart tasks that wait for a dependency.
    wait_image: &'a str,
}

/// One compose service on its way into a group: its task and what its group needs.
struct Unit {
    name: String,
    task: Task,
    /// `deploy.replicas` / `scale`, if given.
    replicas: Option<u32>,
    mode: NetMode,
    ports: Vec<NetPort>,
    /// The container port of each label, for the waits of a single group.
    targets: Vec<u16>,
    hostname: Option<String>,
    dns: Dns,
    volumes: BTreeMap<String, HostVolume>,
    service: Option<Service>,
    restart: Option<Restart>,
    deps: Vec<(String, String)>,
}

/// Job-wide facts worth one warning each.
#[derive(Default)]
struct Notes {
    host_volumes: bool,
    host_paths: bool,
    secrets: bool,
}

/// Convert a resolved compose model (as `compose::load` gives it) into a Nomad job.
pub fn convert(model: &Value, opts: &Options, files: Files) -> Rendered {
    let cfg = opts.config;
    let mut out = Rendered::default();
    let cx = Cx {
        model,
        allow: &cfg.allow,
        files,
        driver: if cfg.driver.as_deref() == Some("podman") { Driver::Podman } else { Driver::Docker },
        provider: cfg.service_provider.as_deref().unwrap_or("nomad"),
        single: cfg.group == NomadGrouping::Single,
        wait_image: cfg.wait_image.as_deref().unwrap_or("busybox:1.36"),
    };
    if let Some(top) = model.as_mapping() {
        for k in top.keys().filter_map(scalar) {
            let known = ["name", "services", "networks", "volumes", "configs", "secrets"].contains(&k.as_str());
            if !known && !k.starts_with("x-") {
                out.warnings.push(format!("top-level key {k}: not supported by the nomad converter; ignored"));
            }
        }
    }
    let mut notes = Notes::default();
    let mut units = Vec::new();
    for (name, svc) in services(model) {
        if let Some(u) = unit(&cx, &name, svc, &mut notes, &mut out) {
            units.push(u);
        }
    }
    let id = cfg.job_name.clone().unwrap_or_else(|| opts.app.clone());
    let groups = if cx.single {
        single_group(&cx, &id, cfg.count, units, &mut out)
    } else {
        per_service(&cx, cfg.count, units, &mut out)
    };
    if notes.host_volumes {
        out.warnings.push(
            "job: named volumes are Nomad host volumes: each client must provide them (client host_volume blocks, or `nomad volume create` dynamic host volumes)".into(),
        );
    }
    if notes.host_paths {
        out.warnings.push(format!(
            "job: bind mounts of host paths need the path on every client that may run the task, and the {} plugin must allow them (volumes {{ enabled = true }})",
            cx.driver.name()
        ));
    }
    if notes.secrets {
        out.warnings.push(
            "job: secrets are embedded in the job as templates: anyone who can read the job can read them (Nomad Variables or Vault keep them out of the job)".into(),
        );
    }
    let mut meta = BTreeMap::from([("dockfra_app".to_string(), opts.app.clone())]);
    if let Some(r) = &opts.release {
        meta.insert("dockfra_release".into(), r.clone());
    }
    let u = &cfg.update;
    let job = Job {
        id: id.clone(),
        region: cfg.region.clone(),
        namespace: cfg.namespace.clone(),
        datacenters: if cfg.datacenters.is_empty() { vec!["dc1".into()] } else { cfg.datacenters.clone() },
        meta,
        update: Update {
            max_parallel: u.max_parallel,
            canary: u.canary,
            auto_revert: u.auto_revert,
            auto_promote: u.auto_promote,
            min_healthy_time: u.min_healthy_time,
            healthy_deadline: u.healthy_deadline,
            progress_deadline: u.progress_deadline,
        },
        groups,
    };
    out.files.push((format!("{id}.nomad.hcl"), hcl_job(&job)));
    out.files.push((format!("{id}.json"), json_job(&job)));
    out
}

fn warn(out: &mut Rendered, svc: &str, key: &str, why: &str) {
    out.warnings.push(format!("service {svc}: key {key}: {why}"));
}

/// Nomad interpolates `${…}` in a task's strings when it starts it; compose had already
/// interpolated, so a `${` left is meant literally (it came from `$${`).
fn runtime_interpolation(out: &mut Rendered, svc: &str, key: &str, values: &[&str]) {
    if values.iter().any(|v| v.contains("${")) {
        warn(
            out,
            svc,
            key,
            "contains ${…}, which Nomad interpolates with the task's variables when it starts the task",
        );
    }
}

fn truthy(svc: &Mapping, key: &str) -> bool {
    svc.get(key).and_then(Value::as_bool) == Some(true)
}

/// Build the task and the group parts of one service; `None` when it cannot run at all.
fn unit(cx: &Cx, name: &str, svc: &Mapping, notes: &mut Notes, out: &mut Rendered) -> Option<Unit> {
    let image = svc.get("image").and_then(scalar);
    let Some(image) = image else {
        let (key, why) = if svc.contains_key("build") {
            ("build", "no image: build it and set image:")
        } else {
            ("image", "no image; the service is left out")
        };
        out.lose(name, key, why, true, cx.allow);
        return None;
    };
    let mut unhandled: Vec<String> =
        svc.keys().filter_map(scalar).filter(|k| !HANDLED.contains(&k.as_str()) && !k.starts_with("x-")).collect();
    unhandled.sort();
    for k in unhandled {
        match DROPPED.iter().find(|(d, _, _)| *d == k) {
            Some((_, why, dangerous)) => out.lose(name, &k, why, *dangerous, cx.allow),
            None => out.lose(name, &k, "not supported by the nomad converter; ignored", false, cx.allow),
        }
    }
    if svc.contains_key("build") {
        warn(out, name, "build", &format!("ignored; the image {image} is used as it is"));
    }
    let driver = cx.driver;
    let mut task = Task {
        name: name.to_string(),
        driver: driver.name().into(),
        user: svc.get("user").and_then(scalar),
        lifecycle: None,
        config: vec![("image".into(), Cfg::Str(image))],
        env: BTreeMap::new(),
        templates: vec![],
        volume_mounts: vec![],
        resources: None,
        restart: None,
        kill_timeout: svc.get("stop_grace_period").and_then(duration_ms).map(Duration::from_millis),
        kill_signal: svc.get("stop_signal").and_then(scalar),
    };
    let mut binds: Vec<String> = Vec::new();

    // The process.
    if let Some(e) = svc.get("entrypoint").and_then(argv) {
        runtime_interpolation(out, name, "entrypoint", &e.iter().map(String::as_str).collect::<Vec<_>>());
        task.config.push(("entrypoint".into(), Cfg::List(e)));
    }
    if let Some(c) = svc.get("command").and_then(argv).filter(|c| !c.is_empty()) {
        runtime_interpolation(out, name, "command", &c.iter().map(String::as_str).collect::<Vec<_>>());
        // `command` must be a bare word; anything else goes whole into `args` (the same Cmd).
        if !c[0].is_empty() && c[0].trim() == c[0] {
            task.config.push(("command".into(), Cfg::Str(c[0].clone())));
            if c.len() > 1 {
                task.config.push(("args".into(), Cfg::List(c[1..].to_vec())));
            }
        } else {
            task.config.push(("args".into(), Cfg::List(c)));
        }
    }

    // The network.
    let mode = network_mode(cx, name, svc, out);
    let (ports, targets) = port_labels(cx, name, svc, mode, out);
    if !ports.is_empty() {
        task.config.push(("ports".into(), Cfg::List(ports.iter().map(|p| p.label.clone()).collect())));
    }
    match mode {
        NetMode::Host => task.config.push(("network_mode".into(), Cfg::Str("host".into()))),
        NetMode::None => task.config.push(("network_mode".into(), Cfg::Str("none".into()))),
        NetMode::Bridge => {}
    }
    let mut hostname = svc.get("hostname").and_then(scalar);
    if hostname.is_some() && mode != NetMode::Bridge {
        warn(out, name, "hostname", &format!("ignored with network mode {}", mode.as_str()));
        hostname = None;
    }
    let mut dns = Dns {
        servers: svc.get("dns").map(list).unwrap_or_default(),
        searches: svc.get("dns_search").map(list).unwrap_or_default(),
        options: svc.get("dns_opt").map(list).unwrap_or_default(),
    };
    if !dns.is_empty() && mode != NetMode::Bridge {
        warn(out, name, "dns", &format!("ignored with network mode {}", mode.as_str()));
        dns = Dns::default();
    }
    if let Some(nets) = svc.get("networks") {
        let named: Vec<String> = match nets {
            Value::Mapping(m) => m.keys().filter_map(scalar).collect(),
            other => list(other),
        };
        let others: Vec<&String> = named.iter().filter(|n| *n != "default").collect();
        if !others.is_empty() {
            let names = others.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            warn(
                out,
                name,
                "networks",
                &format!("Nomad has no compose networks ({names}): the tasks of a group share one network namespace and groups reach each other through their published ports"),
            );
        }
    }
    if let Some(h) = svc.get("extra_hosts") {
        let hosts = extra_hosts(name, h, out);
        if !hosts.is_empty() {
            task.config.push(("extra_hosts".into(), Cfg::List(hosts)));
        }
    }

    // The environment.
    let mut env_keys = BTreeSet::new();
    if let Some(env) = svc.get("environment") {
        for (k, v) in pairs(env) {
            env_keys.insert(k.clone());
            match v {
                Some(v) => {
                    runtime_interpolation(out, name, &format!("environment.{k}"), &[&v]);
                    task.env.insert(k, v);
                }
                None => {
                    warn(out, name, &format!("environment.{k}"), "no value (compose takes it from the host); not set")
                }
            }
        }
    }
    if let Some(t) = env_files(cx, name, svc, &env_keys, out) {
        task.templates.push(t);
    }

    // Files: configs, secrets, volumes, tmpfs.
    for kind in ["configs", "secrets"] {
        for (t, target) in file_refs(cx, name, svc, kind, out) {
            if kind == "secrets" {
                notes.secrets = true;
            }
            binds.push(format!("{}:{target}:ro", t.destination));
            task.templates.push(t);
        }
    }
    let mut volumes = BTreeMap::new();
    let mut tmpfs: Vec<(String, Option<u64>)> = Vec::new();
    let (ms, bad) = mounts(svc);
    for b in bad {
        warn(out, name, "volumes", &format!("{b:?} cannot be read; ignored"));
    }
    let tmpfs_sizes = long_tmpfs_sizes(svc);
    let defined = section(cx.model, "volumes");
    for m in ms {
        let ro = if m.read_only { ":ro" } else { "" };
        match (m.kind.as_str(), m.source) {
            ("volume", Some(v)) => {
                let def = defined.iter().find(|(n, _)| *n == v).map(|(_, d)| *d);
                if def.is_none() {
                    warn(out, name, "volumes", &format!("volume {v} is not defined at the top level; used as a host volume"));
                }
                let source = def.and_then(|d| d.get("name")).and_then(scalar).unwrap_or_else(|| v.clone());
                if def.is_some_and(|d| d.get("driver").is_some() || d.get("driver_opts").is_some()) {
                    warn(out, name, "volumes", &format!("volume {v}: driver and driver_opts are ignored; a host volume {source} is used"));
                }
                notes.host_volumes = true;
                volumes.insert(v.clone(), HostVolume { source });
                task.volume_mounts.push(VolumeMount { volume: v, destination: m.target, read_only: m.read_only });
            }
            ("volume", None) => warn(
                out,
                name,
                "volumes",
                &format!("anonymous volume {}: Nomad has none; the data stays in the container (lost when the task is replaced)", m.target),
            ),
            ("bind", Some(src)) if src.starts_with('/') => {
                notes.host_paths = true;
                binds.push(format!("{src}:{}{ro}", m.target));
            }
            ("bind", Some(src)) if src.starts_with('.') => match project_file(cx, &src) {
                Some(text) => {
                    let dest = format!("local/files/{}", safe_path(&src));
                    if !m.read_only {
                        warn(out, name, "volumes", &format!("{src} is copied into the job: the container's changes stay in the allocation"));
                    }
                    binds.push(format!("{dest}:{}{ro}", m.target));
                    task.templates.push(Template {
                        data: template_escape(&text),
                        destination: dest,
                        env: false,
                        change_mode: "restart",
                        perms: None,
                        uid: None,
                        gid: None,
                    });
                }
                None => warn(
                    out,
                    name,
                    "volumes",
                    &format!("{src} cannot be read as a text file of the project (missing, binary, or a directory, which cannot travel in a Nomad job); not mounted: bake it into the image or use a host volume"),
                ),
            },
            ("bind", src) => warn(
                out,
                name,
                "volumes",
                &format!("bind source {}: only absolute paths and project files have a Nomad form (whose home is ~ on a client?); not mounted", src.unwrap_or_default()),
            ),
            ("tmpfs", _) => tmpfs.push((m.target.clone(), tmpfs_sizes.get(&m.target).copied())),
            (k, _) => warn(out, name, "volumes", &format!("type {k} is not supported; {} not mounted", m.target)),
        }
    }
    for t in svc.get("tmpfs").map(list).unwrap_or_default() {
        let (path, opts) = t.split_once(':').unwrap_or((&t, ""));
        let size = opts.split(',').find_map(|o| o.strip_prefix("size=")).and_then(bytes);
        let others: Vec<&str> = opts.split(',').filter(|o| !o.is_empty() && !o.starts_with("size=")).collect();
        if !others.is_empty() {
            warn(out, name, "tmpfs", &format!("{path}: options {} are not converted (size is)", others.join(",")));
        }
        tmpfs.push((path.to_string(), size));
    }
    if !binds.is_empty() {
        task.config.push(("volumes".into(), Cfg::List(binds)));
    }
    if !tmpfs.is_empty() {
        match driver {
            Driver::Docker => {
                let blocks = tmpfs
                    .into_iter()
                    .map(|(target, size)| {
                        let mut b = vec![
                            ("type".to_string(), Cfg::Str("tmpfs".into())),
                            ("target".to_string(), Cfg::Str(target)),
                            ("readonly".to_string(), Cfg::Bool(false)),
                        ];
                        if let Some(s) = size {
                            b.push((
                                "tmpfs_options".into(),
                                Cfg::Blocks(vec![vec![("size".into(), Cfg::Int(s as i64))]]),
                            ));
                        }
                        b
                    })
                    .collect();
                task.config.push(("mount".into(), Cfg::Blocks(blocks)));
            }
            Driver::Podman => {
                if tmpfs.iter().any(|(_, s)| s.is_some()) {
                    warn(out, name, "tmpfs", "the podman driver takes tmpfs paths only; the sizes are dropped");
                }
                task.config.push(("tmpfs".into(), Cfg::List(tmpfs.into_iter().map(|(p, _)| p).collect())));
            }
        }
    }

    driver_options(cx, name, svc, &mut task, out);
    let (resources, replicas, restart) = deploy(name, svc, out);
    task.resources = resources;
    let restart = restart_policy(name, svc, out).or(restart);
    let service = service(cx, name, svc, &ports, &targets, out);
    Some(Unit {
        name: name.to_string(),
        task,
        replicas,
        mode,
        ports,
        targets,
        hostname,
        dns,
        volumes,
        service,
        restart,
        deps: depends_on(svc),
    })
}

/// `network_mode:`; a shared namespace of another service is expressible only in one group.
fn network_mode(cx: &Cx, name: &str, svc: &Mapping, out: &mut Rendered) -> NetMode {
    let Some(m) = svc.get("network_mode").and_then(scalar) else { return NetMode::Bridge };
    match m.as_str() {
        "host" => NetMode::Host,
        "none" => NetMode::None,
        "bridge" | "default" => NetMode::Bridge,
        // One group is one network namespace already.
        m if m.starts_with("service:") && cx.single => NetMode::Bridge,
        m if m.starts_with("service:") || m.starts_with("container:") => {
            out.lose(
                name,
                "network_mode",
                &format!("{m}: a shared network namespace exists only within one group (group: single); the task gets its own"),
                true,
                cx.allow,
            );
            NetMode::Bridge
        }
        m => {
            warn(out, name, "network_mode", &format!("network {m} has no Nomad form; the group network is used"));
            NetMode::Bridge
        }
    }
}

/// Port labels of a service: the long syntax's `name`, else `p<target>` (prefixed by the
/// service in one group, where all ports share one namespace). Returns the ports and the
/// container port of each.
fn port_labels(cx: &Cx, name: &str, svc: &Mapping, mode: NetMode, out: &mut Rendered) -> (Vec<NetPort>, Vec<u16>) {
    let (ps, bad) = ports(svc);
    for b in bad {
        warn(out, name, "ports", &format!("{b:?} cannot be read; ignored"));
    }
    if mode == NetMode::None {
        if !ps.is_empty() {
            warn(out, name, "ports", "ignored with network_mode: none");
        }
        return (vec![], vec![]);
    }
    // Names of the long syntax, by (target, published).
    let mut names: BTreeMap<(u16, Option<u16>), String> = BTreeMap::new();
    for p in svc.get("ports").and_then(Value::as_sequence).into_iter().flatten() {
        let Value::Mapping(m) = p else { continue };
        let target = m.get("target").and_then(scalar).and_then(|t| t.parse().ok());
        let published = m.get("published").and_then(scalar).and_then(|t| t.parse().ok());
        if let (Some(t), Some(n)) = (target, m.get("name").and_then(scalar)) {
            names.insert((t, published), n);
        }
    }
    let prefix = if cx.single { format!("{}_", label_safe(name)) } else { String::new() };
    let mut seen: BTreeSet<(u16, Option<u16>)> = BTreeSet::new();
    let (mut out_ports, mut targets) = (Vec::new(), Vec::new());
    for p in ps {
        if let Some(ip) = &p.host_ip {
            let why = format!(
                "host_ip {ip} of port {}: Nomad binds ports on the client's network (host_network is set per client)",
                p.target
            );
            if ip.starts_with("127.") || ip == "::1" || ip == "localhost" {
                // A port meant for the host alone would be open to the network.
                out.lose(
                    name,
                    "ports",
                    &format!("{why}: the port would be reachable from the network"),
                    true,
                    cx.allow,
                );
            } else {
                warn(out, name, "ports", &format!("{why}; ignored"));
            }
        }
        // The drivers map a label for both TCP and UDP: one label per (target, published).
        if !seen.insert((p.target, p.published)) {
            continue;
        }
        let base = match names.get(&(p.target, p.published)) {
            Some(n) => format!("{prefix}{}", label_safe(n)),
            None => format!("{prefix}p{}", p.target),
        };
        let mut label = base.clone();
        let mut i = 2;
        while out_ports.iter().any(|q: &NetPort| q.label == label) {
            label = format!("{base}_{i}");
            i += 1;
        }
        let port = match mode {
            // On the host's network the container listens on the host: its port is static.
            NetMode::Host => NetPort { label, static_port: Some(p.target), to: None },
            _ => NetPort { label, static_port: p.published, to: Some(p.target) },
        };
        out_ports.push(port);
        targets.push(p.target);
    }
    (out_ports, targets)
}

fn label_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// `extra_hosts:` (list `host:ip` / `host=ip`, or mapping) as the drivers take them: `host:ip`.
fn extra_hosts(name: &str, v: &Value, out: &mut Rendered) -> Vec<String> {
    let entries: Vec<(String, String)> = match v {
        Value::Mapping(m) => m
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, v)))
            .flat_map(|(k, v)| list(v).into_iter().map(move |ip| (k.clone(), ip)))
            .collect(),
        other => list(other)
            .into_iter()
            .filter_map(|e| {
                let (h, ip) = e.split_once('=').or_else(|| e.split_once(':'))?;
                Some((h.to_string(), ip.to_string()))
            })
            .collect(),
    };
    let mut hosts = Vec::new();
    for (h, ip) in entries {
        if ip == "host-gateway" {
            warn(
                out,
                name,
                "extra_hosts",
                &format!("{h}: host-gateway has no Nomad form (Nomad writes /etc/hosts itself); ignored"),
            );
        } else {
            hosts.push(format!("{h}:{ip}"));
        }
    }
    hosts
}

/// The service registration of a service with ports, with its healthcheck as a check.
fn service(
    cx: &Cx,
    name: &str,
    svc: &Mapping,
    ports: &[NetPort],
    targets: &[u16],
    out: &mut Rendered,
) -> Option<Service> {
    let hc = svc.get("healthcheck").and_then(Value::as_mapping);
    let Some(first) = ports.first() else {
        if hc.and_then(|h| health_argv(h).ok().flatten()).is_some() {
            warn(out, name, "healthcheck", "the service has no port, so no Nomad service to check; ignored");
        }
        return None;
    };
    let mut checks = Vec::new();
    if let Some(h) = hc {
        match health_argv(h) {
            Err(e) => warn(out, name, "healthcheck.test", &format!("{e}; no check")),
            Ok(None) => {}
            Ok(Some(cmd)) if cmd.is_empty() => warn(out, name, "healthcheck.test", "empty; no check"),
            Ok(Some(cmd)) => {
                runtime_interpolation(
                    out,
                    name,
                    "healthcheck.test",
                    &cmd.iter().map(String::as_str).collect::<Vec<_>>(),
                );
                let at_least_1s = |k: &str| {
                    h.get(k).and_then(duration_ms).map(|ms| Duration::from_millis(ms).max(Duration::from_secs(1)))
                };
                let interval = at_least_1s("interval").unwrap_or(HEALTH_DEFAULT);
                let timeout = at_least_1s("timeout").unwrap_or(HEALTH_DEFAULT);
                if h.get("start_period").is_some() || h.get("start_interval").is_some() {
                    warn(
                        out,
                        name,
                        "healthcheck.start_period",
                        "no Nomad form; the update block's healthy_deadline bounds the start",
                    );
                }
                let retries = h.get("retries").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
                let check = if cx.provider == "consul" {
                    Check {
                        kind: CheckKind::Script {
                            task: name.to_string(),
                            command: cmd[0].clone(),
                            args: cmd[1..].to_vec(),
                        },
                        port: None,
                        interval,
                        timeout,
                        failures_before_critical: retries,
                    }
                } else {
                    let kind_port = http_probe(&cmd).and_then(|(port, path)| {
                        let i = targets.iter().position(|t| *t == port)?;
                        Some((CheckKind::Http { path }, ports[i].label.clone()))
                    });
                    let (kind, port) = kind_port.unwrap_or_else(|| {
                        warn(
                            out,
                            name,
                            "healthcheck",
                            &format!("Nomad's own service checks are http or tcp: checks that port {} accepts connections instead of running the test (service_provider: consul runs it)", targets[0]),
                        );
                        (CheckKind::Tcp, first.label.clone())
                    });
                    if retries.is_some() {
                        warn(out, name, "healthcheck.retries", "Nomad's own checks have no failure threshold; ignored");
                    }
                    Check {
                        kind,
                        port: (port != first.label).then_some(port),
                        interval,
                        timeout,
                        failures_before_critical: None,
                    }
                };
                checks.push(check);
            }
        }
    }
    // Traefik's Nomad and Consul providers read their rules from service tags.
    let tags = svc
        .get("labels")
        .map(pairs)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.starts_with("traefik."))
        .map(|(k, v)| format!("{k}={}", v.unwrap_or_default()))
        .collect();
    Some(Service {
        name: dns_label(name),
        port: first.label.clone(),
        provider: cx.provider.to_string(),
        task: name.to_string(),
        tags,
        checks,
    })
}

/// A healthcheck that fetches `http://localhost:PORT/PATH` with curl or wget: (PORT, PATH).
fn http_probe(cmd: &[String]) -> Option<(u16, String)> {
    let words: Vec<String> = match cmd {
        [sh, c, script] if sh.ends_with("sh") && c == "-c" => shell_words(script),
        _ => cmd.to_vec(),
    };
    let prog = words.first()?.rsplit('/').next()?.to_string();
    if prog != "curl" && prog != "wget" {
        return None;
    }
    // Anything after the first command (`|| exit 1`) is the shell's, not the probe's.
    let end = words.iter().position(|w| ["||", "&&", "|", ";"].contains(&w.as_str())).unwrap_or(words.len());
    let url = words[..end].iter().find_map(|w| w.strip_prefix("http://"))?;
    let (hostport, path) = match url.find('/') {
        Some(i) => (&url[..i], url[i..].to_string()),
        None => (url, "/".to_string()),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, 80),
    };
    ["localhost", "127.0.0.1", "0.0.0.0", "[::1]"].contains(&host).then_some((port, path))
}
