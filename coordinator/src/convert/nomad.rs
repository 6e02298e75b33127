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
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dockfra_common::compose::parse_env_file;
use dockfra_common::config::{NomadConfig, NomadGrouping};
use serde_json::{json, Map, Value as Json};
use serde_yaml_ng::{Mapping, Value};

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

/// The shell loop of a wait task runs in a small container.
const WAIT_RESOURCES: Resources = Resources { cpu: Some(50), memory: Some(32), memory_max: None };
/// Compose's healthcheck interval and timeout when none is given.
const HEALTH_DEFAULT: Duration = Duration::from_secs(30);

// ───────────────────────────── the job model ─────────────────────────────

/// The job, holding only what dockfra emits; field names follow Nomad's `api` package
/// (`api/jobs.go`, `api/tasks.go`, `api/services.go`, `api/resources.go`).
#[derive(Debug, Clone, PartialEq)]
struct Job {
    id: String,
    region: Option<String>,
    namespace: Option<String>,
    datacenters: Vec<String>,
    meta: BTreeMap<String, String>,
    update: Update,
    groups: Vec<Group>,
}

#[derive(Debug, Clone, PartialEq)]
struct Update {
    max_parallel: u32,
    canary: u32,
    auto_revert: bool,
    auto_promote: bool,
    min_healthy_time: Duration,
    healthy_deadline: Duration,
    progress_deadline: Duration,
}

#[derive(Debug, Clone, PartialEq)]
struct Group {
    name: String,
    count: u32,
    network: Option<Network>,
    volumes: BTreeMap<String, HostVolume>,
    restart: Option<Restart>,
    /// Compose stops for good after `restart: no` or `on-failure:N`: no new allocation either.
    never_reschedule: bool,
    services: Vec<Service>,
    tasks: Vec<Task>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetMode {
    Bridge,
    Host,
    /// No network at all (`network_mode: none`): no group network, the driver's `none`.
    None,
}

impl NetMode {
    fn as_str(self) -> &'static str {
        match self {
            NetMode::Bridge => "bridge",
            NetMode::Host => "host",
            NetMode::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Network {
    mode: NetMode,
    hostname: Option<String>,
    dns: Option<Dns>,
    ports: Vec<NetPort>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Dns {
    servers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }
}

/// A group port: `static` is the host port (`ReservedPorts` in JSON), else it is dynamic.
#[derive(Debug, Clone, PartialEq)]
struct NetPort {
    label: String,
    static_port: Option<u16>,
    /// The container port (bridge mode).
    to: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
struct HostVolume {
    source: String,
}

/// A group restart policy; unset fields keep Nomad's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
struct Restart {
    attempts: Option<u32>,
    interval: Option<Duration>,
    delay: Option<Duration>,
    mode: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
struct Service {
    name: String,
    port: String,
    provider: String,
    task: String,
    tags: Vec<String>,
    checks: Vec<Check>,
}

#[derive(Debug, Clone, PartialEq)]
struct Check {
    kind: CheckKind,
    /// The port label when it differs from the service's.
    port: Option<String>,
    interval: Duration,
    timeout: Duration,
    /// Consul only: compose's `retries`.
    failures_before_critical: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
enum CheckKind {
    Script { task: String, command: String, args: Vec<String> },
    Http { path: String },
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
struct Task {
    name: String,
    driver: String,
    user: Option<String>,
    lifecycle: Option<Lifecycle>,
    config: Vec<(String, Cfg)>,
    env: BTreeMap<String, String>,
    templates: Vec<Template>,
    volume_mounts: Vec<VolumeMount>,
    resources: Option<Resources>,
    restart: Option<Restart>,
    kill_timeout: Option<Duration>,
    kill_signal: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Lifecycle {
    hook: &'static str,
    sidecar: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Resources {
    cpu: Option<u32>,
    memory: Option<u32>,
    memory_max: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
struct Template {
    data: String,
    destination: String,
    env: bool,
    change_mode: &'static str,
    perms: Option<String>,
    uid: Option<i64>,
    gid: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
struct VolumeMount {
    volume: String,
    destination: String,
    read_only: bool,
}

/// A value of a task driver's `config` block.
#[derive(Debug, Clone, PartialEq)]
enum Cfg {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
    /// An attribute holding a map (`labels = { … }`).
    Map(BTreeMap<String, String>),
    /// An attribute holding a list of objects (`devices = [{ … }]`).
    Objects(Vec<Vec<(String, Cfg)>>),
    /// Repeated blocks (`mount { … }`); JSON has them as a list of objects.
    Blocks(Vec<Vec<(String, Cfg)>>),
}

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

/// `env_file:` entries: (path, required).
fn env_file_paths(v: &Value) -> Vec<(String, bool)> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| match i {
                Value::Mapping(m) => {
                    Some((m.get("path").and_then(scalar)?, m.get("required").and_then(Value::as_bool).unwrap_or(true)))
                }
                other => scalar(other).map(|p| (p, true)),
            })
            .collect(),
        other => scalar(other).map(|p| (p, true)).into_iter().collect(),
    }
}

/// `env_file:` as one `env = true` template: the files parsed as compose reads them, later
/// files winning, keys of `environment` left out (compose's precedence; a template's
/// variables would win over `env` in Nomad), each value a JSON string (go-envparse's form).
fn env_files(cx: &Cx, name: &str, svc: &Mapping, env_keys: &BTreeSet<String>, out: &mut Rendered) -> Option<Template> {
    let paths = env_file_paths(svc.get("env_file")?);
    let mut vars = BTreeMap::new();
    for (p, required) in paths {
        match (cx.files)(&p) {
            Some(data) => match parse_env_file(&String::from_utf8_lossy(&data)) {
                Ok(m) => vars.extend(m),
                Err(e) => out.errors.push(format!("service {name}: env_file {p}: {e}")),
            },
            None if required => out.errors.push(format!("service {name}: env_file {p}: cannot be read")),
            None => warn(out, name, "env_file", &format!("{p} cannot be read (required: false); skipped")),
        }
    }
    let mut text = String::new();
    for (k, v) in vars {
        if env_keys.contains(&k) {
            continue;
        }
        let ident = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            warn(
                out,
                name,
                "env_file",
                &format!("variable {k:?}: Nomad's env templates take [A-Za-z_][A-Za-z0-9_]* names; not set"),
            );
            continue;
        }
        runtime_interpolation(out, name, &format!("env_file.{k}"), &[&v]);
        text.push_str(&format!("{k}={}\n", Json::String(v)));
    }
    (!text.is_empty()).then(|| Template {
        data: template_escape(&text),
        destination: "secrets/env_file.env".into(),
        env: true,
        change_mode: "restart",
        perms: None,
        uid: None,
        gid: None,
    })
}

/// A project file as text (templates carry text only).
fn project_file(cx: &Cx, path: &str) -> Option<String> {
    (cx.files)(path).and_then(|d| String::from_utf8(d).ok())
}

/// A relative path as a path under a task directory: no `.`, `..` or empty segments.
fn safe_path(p: &str) -> String {
    let segs: Vec<String> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .map(|s| if s == ".." { "__".to_string() } else { s.to_string() })
        .collect();
    if segs.is_empty() {
        "file".into()
    } else {
        segs.join("/")
    }
}

/// Text inside a Nomad template is a Go template: a literal `{{` must be written as an
/// action printing it.
fn template_escape(s: &str) -> String {
    s.replace("{{", "{{\"{{\"}}")
}

/// A file mode as compose writes it (`0440` as a string, `0o440` as a number) in octal.
fn file_mode(v: &Value) -> Option<String> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        other => {
            let s = scalar(other)?;
            let s = s.trim();
            u64::from_str_radix(s.strip_prefix("0o").unwrap_or(s), 8).ok()?
        }
    };
    (n <= 0o7777).then(|| format!("{n:04o}"))
}

/// A service's `configs:` or `secrets:` as templates (and the container path of each).
fn file_refs(cx: &Cx, name: &str, svc: &Mapping, kind: &str, out: &mut Rendered) -> Vec<(Template, String)> {
    let Some(items) = svc.get(kind).and_then(Value::as_sequence) else { return vec![] };
    let one = if kind == "configs" { "config" } else { "secret" };
    let defined = section(cx.model, kind);
    let mut res = Vec::new();
    for item in items {
        let (source, target, m) = match item {
            Value::Mapping(m) => (m.get("source").and_then(scalar), m.get("target").and_then(scalar), Some(m)),
            other => (scalar(other), None, None),
        };
        let Some(source) = source else {
            warn(out, name, kind, "an entry without source; ignored");
            continue;
        };
        let Some(def) = defined.iter().find(|(n, _)| *n == source).map(|(_, d)| *d) else {
            warn(out, name, kind, &format!("{one} {source} is not defined at the top level; not mounted"));
            continue;
        };
        let text = if let Some(f) = def.get("file").and_then(scalar) {
            match (cx.files)(&f).map(String::from_utf8) {
                Some(Ok(t)) => t,
                Some(Err(_)) => {
                    warn(
                        out,
                        name,
                        kind,
                        &format!("{one} {source}: file {f} is not text (templates carry text); not mounted"),
                    );
                    continue;
                }
                None => {
                    out.errors.push(format!("service {name}: {one} {source}: file {f}: cannot be read"));
                    continue;
                }
            }
        } else if let Some(c) = def.get("content").and_then(scalar).filter(|_| kind == "configs") {
            c
        } else if def.get("external").and_then(Value::as_bool) == Some(true) {
            warn(out, name, kind, &format!("{one} {source} is external: Nomad cannot fetch it; not mounted (a template reading a Nomad Variable can)"));
            continue;
        } else if def.get("environment").is_some() {
            warn(
                out,
                name,
                kind,
                &format!("{one} {source} comes from the host's environment at deploy time; not carried"),
            );
            continue;
        } else {
            warn(out, name, kind, &format!("{one} {source} has no file or content; not mounted"));
            continue;
        };
        let target = match (kind, target) {
            ("configs", Some(t)) => t,
            ("configs", None) => format!("/{source}"),
            (_, Some(t)) if t.starts_with('/') => t,
            (_, Some(t)) => format!("/run/secrets/{t}"),
            (_, None) => format!("/run/secrets/{source}"),
        };
        let dest = match kind {
            "configs" => format!("local/configs/{}", label_safe(&source)),
            _ => format!("secrets/{}", label_safe(&source)),
        };
        let int = |k: &str| m.and_then(|m| m.get(k)).and_then(scalar).and_then(|s| s.parse::<i64>().ok());
        res.push((
            Template {
                data: template_escape(&text),
                destination: dest,
                env: false,
                change_mode: "restart",
                perms: m.and_then(|m| m.get("mode")).and_then(file_mode),
                uid: int("uid"),
                gid: int("gid"),
            },
            target,
        ));
    }
    res
}

/// Sizes of long-syntax tmpfs mounts (`{type: tmpfs, target, tmpfs: {size}}`), by target.
fn long_tmpfs_sizes(svc: &Mapping) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for v in svc.get("volumes").and_then(Value::as_sequence).into_iter().flatten() {
        let Value::Mapping(m) = v else { continue };
        let target = m.get("target").and_then(scalar);
        let size = m.get("tmpfs").and_then(|t| t.get("size")).and_then(|s| match s {
            Value::Number(n) => n.as_u64(),
            other => scalar(other).and_then(|s| bytes(&s)),
        });
        if let (Some(t), Some(s)) = (target, size) {
            sizes.insert(t, s);
        }
    }
    sizes
}

/// The driver options compose has a key for.
fn driver_options(cx: &Cx, name: &str, svc: &Mapping, task: &mut Task, out: &mut Rendered) {
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
fn deploy(name: &str, svc: &Mapping, out: &mut Rendered) -> (Option<Resources>, Option<u32>, Option<Restart>) {
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
fn restart_policy(name: &str, svc: &Mapping, out: &mut Rendered) -> Option<Restart> {
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

/// A task that waits for something before the group's main tasks start.
/// What running a group more than once means for its static ports and host volumes.
/// `who` names the service (`service web`) or the one group (`group app`).
fn count_notes(out: &mut Rendered, who: &str, count: u32, ports: &[NetPort], volumes: &BTreeMap<String, HostVolume>) {
    if count < 2 {
        return;
    }
    if let Some(p) = ports.iter().find_map(|p| p.static_port) {
        out.warnings.push(format!(
            "{who}: key ports: {count} allocations with static port {p}: each needs a client of its own"
        ));
    }
    for v in volumes.keys() {
        out.warnings.push(format!(
            "{who}: key volumes: {count} allocations mount host volume {v}: those on one client share its directory"
        ));
    }
}

fn wait_task(cx: &Cx, name: String, image: &str, script: String, template: Option<Template>) -> Task {
    Task {
        name,
        driver: cx.driver.name().into(),
        user: None,
        lifecycle: Some(Lifecycle { hook: "prestart", sidecar: false }),
        config: vec![
            ("image".into(), Cfg::Str(image.into())),
            ("command".into(), Cfg::Str("/bin/sh".into())),
            ("args".into(), Cfg::List(vec!["-c".into(), script])),
        ],
        env: BTreeMap::new(),
        templates: template.into_iter().collect(),
        volume_mounts: vec![],
        resources: Some(WAIT_RESOURCES),
        restart: None,
        kill_timeout: None,
        kill_signal: None,
    }
}

fn group_count(u: &Unit, count: Option<u32>) -> u32 {
    u.replicas.or(count).unwrap_or(1)
}

fn network(mode: NetMode, hostname: Option<String>, dns: Dns, ports: Vec<NetPort>) -> Option<Network> {
    (mode != NetMode::None).then(|| Network { mode, hostname, dns: (!dns.is_empty()).then_some(dns), ports })
}

/// One group per service; dependencies are waited for by prestart tasks that poll the
/// dependency's registered service.
fn per_service(cx: &Cx, count: Option<u32>, units: Vec<Unit>, out: &mut Rendered) -> Vec<Group> {
    let image = cx.wait_image;
    let with_ports: BTreeMap<String, bool> = units.iter().map(|u| (u.name.clone(), u.service.is_some())).collect();
    let mut users: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for u in &units {
        for v in u.volumes.keys() {
            users.entry(v).or_default().push(&u.name);
        }
    }
    for (v, us) in users.into_iter().filter(|(_, us)| us.len() > 1) {
        out.warnings.push(format!(
            "job: volume {v} is mounted by the groups {}: each allocation gets the host volume of its own client, shared only on the same client",
            us.join(", ")
        ));
    }
    if units.len() > 1 && units.iter().any(|u| u.service.is_some()) {
        out.warnings.push("job: each service is a group of its own: they reach each other through the registered services (nomadService or Consul service templates, Consul DNS), not by compose service name".into());
    }
    let mut groups = Vec::new();
    for u in units {
        let mut tasks = Vec::new();
        for (dep, cond) in &u.deps {
            let key = format!("depends_on.{dep}");
            if cond == "service_completed_successfully" {
                warn(out, &u.name, &key, "service_completed_successfully: a group cannot wait for another group to finish; started without waiting");
                continue;
            }
            match with_ports.get(dep) {
                None => {
                    warn(out, &u.name, &key, "the dependency is not part of the job; started without waiting");
                    continue;
                }
                Some(false) => {
                    warn(out, &u.name, &key, "the dependency has no port to wait for; started without waiting");
                    continue;
                }
                Some(true) => {}
            }
            if cond == "service_healthy" && cx.provider != "consul" {
                warn(out, &u.name, &key, "service_healthy: waits until the dependency answers on its port (Nomad's service list does not filter on health; Consul's does)");
            }
            let svc_name = dns_label(dep);
            let lookup = if cx.provider == "consul" { "service" } else { "nomadService" };
            let file = format!("local/{svc_name}.addr");
            let template = Template {
                data: format!(
                    "{{{{ range {lookup} \"{svc_name}\" }}}}{{{{ .Address }}}} {{{{ .Port }}}}\n{{{{ end }}}}"
                ),
                destination: file.clone(),
                env: false,
                change_mode: "noop",
                perms: None,
                uid: None,
                gid: None,
            };
            let script = format!("until [ -s /{file} ] && nc -z -w 2 $(head -n 1 /{file}); do sleep 2; done");
            let mut tname = format!("wait-for-{svc_name}");
            if tname == u.name {
                tname.push_str("-dep");
            }
            tasks.push(wait_task(cx, tname, image, script, Some(template)));
        }
        let count = group_count(&u, count);
        tasks.push(u.task);
        count_notes(out, &format!("service {}", u.name), count, &u.ports, &u.volumes);
        groups.push(Group {
            name: u.name,
            count,
            network: network(u.mode, u.hostname, u.dns, u.ports),
            volumes: u.volumes,
            never_reschedule: u.restart.as_ref().is_some_and(|r| r.mode == Some("fail")),
            restart: u.restart,
            services: u.service.into_iter().collect(),
            tasks,
        });
    }
    groups
}

/// Every service a task of one group. The tasks share one network namespace: dependencies
/// start first as prestart tasks, and waits poll their port on localhost.
fn single_group(cx: &Cx, id: &str, count: Option<u32>, units: Vec<Unit>, out: &mut Rendered) -> Vec<Group> {
    let image = cx.wait_image;
    let names: BTreeSet<String> = units.iter().map(|u| u.name.clone()).collect();
    let first_port: BTreeMap<String, Option<u16>> =
        units.iter().map(|u| (u.name.clone(), u.targets.first().copied())).collect();
    // How each dependency must start: true = run to completion.
    let mut prestart: BTreeMap<String, bool> = BTreeMap::new();
    for u in &units {
        for (dep, cond) in &u.deps {
            if names.contains(dep) {
                let done = cond == "service_completed_successfully";
                *prestart.entry(dep.clone()).or_insert(done) &= done;
            }
        }
    }
    let group_count = count.unwrap_or(1);
    let mode = units.iter().map(|u| u.mode).find(|m| *m != NetMode::Bridge).unwrap_or(NetMode::Bridge);
    let (mut ports, mut dns, mut hostname) = (Vec::new(), Dns::default(), None::<String>);
    let mut volumes = BTreeMap::new();
    let mut services = Vec::new();
    let mut waits: Vec<Task> = Vec::new();
    let mut tasks = Vec::new();
    let mut listening: BTreeMap<(u16, bool), String> = BTreeMap::new();
    for mut u in units {
        if u.mode != mode {
            out.lose(
                &u.name,
                "network_mode",
                &format!("one group has one network mode: {} is used, not {}", mode.as_str(), u.mode.as_str()),
                true,
                cx.allow,
            );
        }
        if let Some(r) = u.replicas.filter(|r| *r != group_count) {
            warn(out, &u.name, "deploy.replicas", &format!("{r}: one group runs every service {group_count} time(s)"));
        }
        for (p, t) in u.ports.iter().zip(&u.targets) {
            // Container ports share the namespace; static ports the host.
            for key in [(*t, false), (p.static_port.unwrap_or(0), true)] {
                if key.0 == 0 {
                    continue;
                }
                if let Some(other) = listening.get(&key) {
                    let what = if key.1 { "host port" } else { "port" };
                    out.lose(
                        &u.name,
                        "ports",
                        &format!("{what} {} is also {other}'s: one group shares one network namespace", key.0),
                        true,
                        cx.allow,
                    );
                } else {
                    listening.insert(key, u.name.clone());
                }
            }
        }
        ports.append(&mut u.ports);
        if let Some(h) = u.hostname.take() {
            match &hostname {
                Some(o) if *o != h => {
                    warn(out, &u.name, "hostname", &format!("one group has one hostname: {o} is used"))
                }
                _ => hostname = Some(h),
            }
        }
        for (list, mine) in
            [(&mut dns.servers, u.dns.servers), (&mut dns.searches, u.dns.searches), (&mut dns.options, u.dns.options)]
        {
            for v in mine {
                if !list.contains(&v) {
                    list.push(v);
                }
            }
        }
        volumes.append(&mut u.volumes);
        if let Some(mut s) = u.service.take() {
            s.task = u.name.clone();
            services.push(s);
        }
        let mut task = u.task;
        task.restart = u.restart;
        if let Some(done) = prestart.get(&u.name) {
            task.lifecycle = Some(Lifecycle { hook: "prestart", sidecar: !done });
            if u.deps.iter().any(|(d, _)| names.contains(d)) {
                warn(out, &u.name, "depends_on", "a dependency that has dependencies: in one group they all start as prestart tasks, in no order among themselves");
            }
        }
        for (dep, cond) in &u.deps {
            let key = format!("depends_on.{dep}");
            if !names.contains(dep) {
                warn(out, &u.name, &key, "the dependency is not part of the job; started without waiting");
                continue;
            }
            if prestart.get(dep) == Some(&true) {
                continue;
            }
            let Some(Some(port)) = first_port.get(dep) else {
                if cond == "service_healthy" {
                    warn(
                        out,
                        &u.name,
                        &key,
                        "service_healthy: the dependency has no port to wait for; it is only started first",
                    );
                }
                continue;
            };
            if cond == "service_healthy" {
                warn(out, &u.name, &key, "service_healthy: waits until the dependency answers on its port");
            }
            let tname = format!("wait-for-{}", dns_label(dep));
            if !waits.iter().any(|w| w.name == tname) && !names.contains(&tname) {
                let script = format!("until nc -z -w 2 127.0.0.1 {port}; do sleep 2; done");
                waits.push(wait_task(cx, tname, image, script, None));
            }
        }
        tasks.push(task);
    }
    if tasks.len() > 1 && mode == NetMode::Bridge {
        match cx.driver {
            // Compose's service names, as docker's /etc/hosts in the shared namespace.
            Driver::Docker => {
                for t in &mut tasks {
                    let mut hosts: Vec<String> =
                        names.iter().filter(|n| **n != t.name).map(|n| format!("{n}:127.0.0.1")).collect();
                    match t.config.iter_mut().find(|(k, _)| k == "extra_hosts") {
                        Some((_, Cfg::List(l))) => l.append(&mut hosts),
                        _ => t.config.push(("extra_hosts".into(), Cfg::List(hosts))),
                    }
                }
            }
            Driver::Podman => out.warnings.push("job: the services share one network namespace: they reach each other on localhost, not by compose service name".into()),
        }
    }
    waits.append(&mut tasks);
    count_notes(out, &format!("group {id}"), group_count, &ports, &volumes);
    vec![Group {
        name: id.to_string(),
        count: group_count,
        network: network(mode, hostname, dns, ports),
        volumes,
        restart: None,
        never_reschedule: false,
        services,
        tasks: waits,
    }]
}

// ───────────────────────────── durations ─────────────────────────────

/// A duration as Nomad's HCL takes it (Go's `time.ParseDuration`): the largest whole unit.
fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    for (unit, size) in
        [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)]
    {
        if ns >= size && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
}

/// A duration as Nomad's JSON API takes it: nanoseconds.
fn nanos(d: Duration) -> Json {
    json!(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// ───────────────────────────── HCL ─────────────────────────────

/// An HCL2 expression, as much of the syntax as a jobspec needs.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Expr>),
    Object(Vec<(String, Expr)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Attr(String, Expr),
    Block(String, Vec<String>, Vec<Item>),
}

fn attr(name: &str, e: Expr) -> Item {
    Item::Attr(name.into(), e)
}

fn block(name: &str, labels: &[&str], body: Vec<Item>) -> Item {
    Item::Block(name.into(), labels.iter().map(|l| l.to_string()).collect(), body)
}

fn s(v: &str) -> Expr {
    Expr::Str(v.into())
}

fn strs(v: &[String]) -> Expr {
    Expr::List(v.iter().map(|x| s(x)).collect())
}

fn dur(d: Duration) -> Expr {
    Expr::Str(go_duration(d))
}

/// An HCL2 quoted string: `\` `"` and control characters escaped, and the template
/// sequences `${` and `%{` doubled so they stay literal.
fn quote(v: &str) -> String {
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => q.push_str("\\\\"),
            '"' => q.push_str("\\\""),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                q.push(c);
                q.push(c);
            }
            c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn is_ident(k: &str) -> bool {
    k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn key(k: &str) -> String {
    if is_ident(k) {
        k.to_string()
    } else {
        quote(k)
    }
}

/// Render an expression at `indent` (the column of the line it starts on).
fn expr(e: &Expr, indent: usize) -> String {
    let pad = "  ".repeat(indent + 1);
    let end = "  ".repeat(indent);
    match e {
        Expr::Str(v) => quote(v),
        Expr::Int(n) => n.to_string(),
        Expr::Bool(b) => b.to_string(),
        Expr::List(items) if items.is_empty() => "[]".into(),
        Expr::List(items) => {
            let flat = items.iter().all(|i| matches!(i, Expr::Str(_) | Expr::Int(_) | Expr::Bool(_)));
            let one = format!("[{}]", items.iter().map(|i| expr(i, indent)).collect::<Vec<_>>().join(", "));
            if flat && one.len() <= 80 {
                one
            } else {
                let body: String = items.iter().map(|i| format!("{pad}{},\n", expr(i, indent + 1))).collect();
                format!("[\n{body}{end}]")
            }
        }
        Expr::Object(fields) if fields.is_empty() => "{}".into(),
        Expr::Object(fields) => {
            let width = fields.iter().map(|(k, _)| key(k).len()).max().unwrap_or(0);
            let body: String =
                fields.iter().map(|(k, v)| format!("{pad}{:width$} = {}\n", key(k), expr(v, indent + 1))).collect();
            format!("{{\n{body}{end}}}")
        }
    }
}

/// Render a body: attributes in runs with their `=` aligned (as `nomad fmt` does), blocks
/// set apart by blank lines.
fn body(items: &[Item], indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    let mut i = 0;
    let mut first = true;
    while i < items.len() {
        match &items[i] {
            Item::Attr(..) => {
                let mut run = Vec::new();
                while let Some(Item::Attr(k, e)) = items.get(i) {
                    run.push((key(k), expr(e, indent)));
                    i += 1;
                }
                // A multi-line value ends a run of aligned lines.
                for chunk in run.split_inclusive(|(_, v)| v.contains('\n')) {
                    let width =
                        chunk.iter().filter(|(_, v)| !v.contains('\n')).map(|(k, _)| k.len()).max().unwrap_or(0);
                    for (k, v) in chunk {
                        if v.contains('\n') {
                            out.push_str(&format!("{pad}{k} = {v}\n"));
                        } else {
                            out.push_str(&format!("{pad}{k:width$} = {v}\n"));
                        }
                    }
                }
            }
            Item::Block(name, labels, inner) => {
                if !first {
                    out.push('\n');
                }
                let labels: String = labels.iter().map(|l| format!(" {}", quote(l))).collect();
                out.push_str(&format!("{pad}{name}{labels} {{\n"));
                body(inner, indent + 1, out);
                out.push_str(&format!("{pad}}}\n"));
                i += 1;
                if let Some(Item::Attr(..)) = items.get(i) {
                    out.push('\n');
                }
            }
        }
        first = false;
    }
}

fn cfg_expr(v: &Cfg) -> Expr {
    let obj = |o: &Vec<(String, Cfg)>| Expr::Object(o.iter().map(|(k, v)| (k.clone(), cfg_expr(v))).collect());
    match v {
        Cfg::Str(x) => s(x),
        Cfg::Int(n) => Expr::Int(*n),
        Cfg::Bool(b) => Expr::Bool(*b),
        Cfg::List(l) => strs(l),
        Cfg::Map(m) => Expr::Object(m.iter().map(|(k, v)| (k.clone(), s(v))).collect()),
        Cfg::Objects(os) | Cfg::Blocks(os) => Expr::List(os.iter().map(obj).collect()),
    }
}

fn cfg_items(cfg: &[(String, Cfg)]) -> Vec<Item> {
    let mut items = Vec::new();
    for (k, v) in cfg {
        match v {
            Cfg::Blocks(bs) => items.extend(bs.iter().map(|b| block(k, &[], cfg_items(b)))),
            other => items.push(attr(k, cfg_expr(other))),
        }
    }
    // Attributes first, then blocks, as `nomad fmt` leaves a hand-written jobspec.
    items.sort_by_key(|i| matches!(i, Item::Block(..)));
    items
}

fn restart_hcl(r: &Restart) -> Item {
    let mut b = Vec::new();
    if let Some(a) = r.attempts {
        b.push(attr("attempts", Expr::Int(a.into())));
    }
    if let Some(i) = r.interval {
        b.push(attr("interval", dur(i)));
    }
    if let Some(d) = r.delay {
        b.push(attr("delay", dur(d)));
    }
    if let Some(m) = r.mode {
        b.push(attr("mode", s(m)));
    }
    block("restart", &[], b)
}

/// `env` / `meta`: block syntax when every key is an identifier, else the map-attribute form
/// Nomad also reads (HCL2 blocks take no dotted keys).
fn map_hcl(name: &str, m: &BTreeMap<String, String>) -> Item {
    if m.keys().all(|k| is_ident(k)) {
        block(name, &[], m.iter().map(|(k, v)| attr(k, s(v))).collect())
    } else {
        attr(name, Expr::Object(m.iter().map(|(k, v)| (k.clone(), s(v))).collect()))
    }
}

fn service_hcl(sv: &Service) -> Item {
    let mut b = vec![
        attr("name", s(&sv.name)),
        attr("port", s(&sv.port)),
        attr("provider", s(&sv.provider)),
        attr("task", s(&sv.task)),
    ];
    if !sv.tags.is_empty() {
        b.push(attr("tags", strs(&sv.tags)));
    }
    for c in &sv.checks {
        let mut cb = vec![attr("name", s("healthcheck"))];
        match &c.kind {
            CheckKind::Script { task, command, args } => {
                cb.push(attr("type", s("script")));
                cb.push(attr("task", s(task)));
                cb.push(attr("command", s(command)));
                if !args.is_empty() {
                    cb.push(attr("args", strs(args)));
                }
            }
            CheckKind::Http { path } => {
                cb.push(attr("type", s("http")));
                cb.push(attr("path", s(path)));
            }
            CheckKind::Tcp => cb.push(attr("type", s("tcp"))),
        }
        if let Some(p) = &c.port {
            cb.push(attr("port", s(p)));
        }
        cb.push(attr("interval", dur(c.interval)));
        cb.push(attr("timeout", dur(c.timeout)));
        if let Some(f) = c.failures_before_critical {
            cb.push(attr("failures_before_critical", Expr::Int(f.into())));
        }
        b.push(block("check", &[], cb));
    }
    block("service", &[], b)
}

fn task_hcl(t: &Task) -> Item {
    let mut b = vec![attr("driver", s(&t.driver))];
    if let Some(u) = &t.user {
        b.push(attr("user", s(u)));
    }
    if let Some(k) = t.kill_timeout {
        b.push(attr("kill_timeout", dur(k)));
    }
    if let Some(k) = &t.kill_signal {
        b.push(attr("kill_signal", s(k)));
    }
    if let Some(l) = &t.lifecycle {
        b.push(block("lifecycle", &[], vec![attr("hook", s(l.hook)), attr("sidecar", Expr::Bool(l.sidecar))]));
    }
    b.push(block("config", &[], cfg_items(&t.config)));
    if !t.env.is_empty() {
        b.push(map_hcl("env", &t.env));
    }
    for tp in &t.templates {
        let mut tb = vec![attr("data", s(&tp.data)), attr("destination", s(&tp.destination))];
        if tp.env {
            tb.push(attr("env", Expr::Bool(true)));
        }
        tb.push(attr("change_mode", s(tp.change_mode)));
        if let Some(p) = &tp.perms {
            tb.push(attr("perms", s(p)));
        }
        if let Some(u) = tp.uid {
            tb.push(attr("uid", Expr::Int(u)));
        }
        if let Some(g) = tp.gid {
            tb.push(attr("gid", Expr::Int(g)));
        }
        b.push(block("template", &[], tb));
    }
    for m in &t.volume_mounts {
        b.push(block(
            "volume_mount",
            &[],
            vec![
                attr("volume", s(&m.volume)),
                attr("destination", s(&m.destination)),
                attr("read_only", Expr::Bool(m.read_only)),
            ],
        ));
    }
    if let Some(r) = &t.resources {
        let mut rb = Vec::new();
        if let Some(c) = r.cpu {
            rb.push(attr("cpu", Expr::Int(c.into())));
        }
        if let Some(m) = r.memory {
            rb.push(attr("memory", Expr::Int(m.into())));
        }
        if let Some(m) = r.memory_max {
            rb.push(attr("memory_max", Expr::Int(m.into())));
        }
        b.push(block("resources", &[], rb));
    }
    if let Some(r) = &t.restart {
        b.push(restart_hcl(r));
    }
    block("task", &[&t.name], b)
}

fn group_hcl(g: &Group) -> Item {
    let mut b = vec![attr("count", Expr::Int(g.count.into()))];
    if let Some(n) = &g.network {
        let mut nb = vec![attr("mode", s(n.mode.as_str()))];
        if let Some(h) = &n.hostname {
            nb.push(attr("hostname", s(h)));
        }
        if let Some(d) = &n.dns {
            let mut db = Vec::new();
            for (k, v) in [("servers", &d.servers), ("searches", &d.searches), ("options", &d.options)] {
                if !v.is_empty() {
                    db.push(attr(k, strs(v)));
                }
            }
            nb.push(block("dns", &[], db));
        }
        for p in &n.ports {
            let mut pb = Vec::new();
            if let Some(st) = p.static_port {
                pb.push(attr("static", Expr::Int(st.into())));
            }
            if let Some(to) = p.to {
                pb.push(attr("to", Expr::Int(to.into())));
            }
            nb.push(block("port", &[&p.label], pb));
        }
        b.push(block("network", &[], nb));
    }
    for (name, v) in &g.volumes {
        b.push(block("volume", &[name], vec![attr("type", s("host")), attr("source", s(&v.source))]));
    }
    if let Some(r) = &g.restart {
        b.push(restart_hcl(r));
    }
    if g.never_reschedule {
        b.push(block("reschedule", &[], vec![attr("attempts", Expr::Int(0)), attr("unlimited", Expr::Bool(false))]));
    }
    b.extend(g.services.iter().map(service_hcl));
    b.extend(g.tasks.iter().map(task_hcl));
    block("group", &[&g.name], b)
}

/// The jobspec in HCL2.
fn hcl_job(job: &Job) -> String {
    let mut b = Vec::new();
    if let Some(r) = &job.region {
        b.push(attr("region", s(r)));
    }
    if let Some(n) = &job.namespace {
        b.push(attr("namespace", s(n)));
    }
    b.push(attr("datacenters", strs(&job.datacenters)));
    b.push(attr("type", s("service")));
    b.push(map_hcl("meta", &job.meta));
    let u = &job.update;
    b.push(block(
        "update",
        &[],
        vec![
            attr("max_parallel", Expr::Int(u.max_parallel.into())),
            attr("canary", Expr::Int(u.canary.into())),
            attr("auto_revert", Expr::Bool(u.auto_revert)),
            attr("auto_promote", Expr::Bool(u.auto_promote)),
            attr("min_healthy_time", dur(u.min_healthy_time)),
            attr("healthy_deadline", dur(u.healthy_deadline)),
            attr("progress_deadline", dur(u.progress_deadline)),
        ],
    ));
    b.extend(job.groups.iter().map(group_hcl));
    let mut text = String::from("# Rendered by dockfra from the compose file: change that, not this.\n");
    body(&[block("job", &[&job.id], b)], 0, &mut text);
    text
}

// ───────────────────────────── JSON ─────────────────────────────

fn cfg_json(v: &Cfg) -> Json {
    let obj = |o: &Vec<(String, Cfg)>| Json::Object(o.iter().map(|(k, v)| (k.clone(), cfg_json(v))).collect());
    match v {
        Cfg::Str(x) => json!(x),
        Cfg::Int(n) => json!(n),
        Cfg::Bool(b) => json!(b),
        Cfg::List(l) => json!(l),
        Cfg::Map(m) => json!(m),
        Cfg::Objects(os) | Cfg::Blocks(os) => Json::Array(os.iter().map(obj).collect()),
    }
}

fn restart_json(r: &Restart) -> Json {
    let mut m = Map::new();
    if let Some(a) = r.attempts {
        m.insert("Attempts".into(), json!(a));
    }
    if let Some(i) = r.interval {
        m.insert("Interval".into(), nanos(i));
    }
    if let Some(d) = r.delay {
        m.insert("Delay".into(), nanos(d));
    }
    if let Some(mode) = r.mode {
        m.insert("Mode".into(), json!(mode));
    }
    Json::Object(m)
}

fn service_json(sv: &Service) -> Json {
    let checks: Vec<Json> = sv
        .checks
        .iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("Name".into(), json!("healthcheck"));
            match &c.kind {
                CheckKind::Script { task, command, args } => {
                    m.insert("Type".into(), json!("script"));
                    m.insert("TaskName".into(), json!(task));
                    m.insert("Command".into(), json!(command));
                    if !args.is_empty() {
                        m.insert("Args".into(), json!(args));
                    }
                }
                CheckKind::Http { path } => {
                    m.insert("Type".into(), json!("http"));
                    m.insert("Path".into(), json!(path));
                }
                CheckKind::Tcp => {
                    m.insert("Type".into(), json!("tcp"));
                }
            }
            if let Some(p) = &c.port {
                m.insert("PortLabel".into(), json!(p));
            }
            m.insert("Interval".into(), nanos(c.interval));
            m.insert("Timeout".into(), nanos(c.timeout));
            if let Some(f) = c.failures_before_critical {
                m.insert("FailuresBeforeCritical".into(), json!(f));
            }
            Json::Object(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert("Name".into(), json!(sv.name));
    m.insert("PortLabel".into(), json!(sv.port));
    m.insert("Provider".into(), json!(sv.provider));
    m.insert("TaskName".into(), json!(sv.task));
    if !sv.tags.is_empty() {
        m.insert("Tags".into(), json!(sv.tags));
    }
    if !checks.is_empty() {
        m.insert("Checks".into(), Json::Array(checks));
    }
    Json::Object(m)
}

fn task_json(t: &Task) -> Json {
    let mut m = Map::new();
    m.insert("Name".into(), json!(t.name));
    m.insert("Driver".into(), json!(t.driver));
    if let Some(u) = &t.user {
        m.insert("User".into(), json!(u));
    }
    if let Some(k) = t.kill_timeout {
        m.insert("KillTimeout".into(), nanos(k));
    }
    if let Some(k) = &t.kill_signal {
        m.insert("KillSignal".into(), json!(k));
    }
    if let Some(l) = &t.lifecycle {
        m.insert("Lifecycle".into(), json!({"Hook": l.hook, "Sidecar": l.sidecar}));
    }
    m.insert("Config".into(), Json::Object(t.config.iter().map(|(k, v)| (k.clone(), cfg_json(v))).collect()));
    if !t.env.is_empty() {
        m.insert("Env".into(), json!(t.env));
    }
    if !t.templates.is_empty() {
        let ts = t
            .templates
            .iter()
            .map(|tp| {
                let mut o = Map::new();
                o.insert("EmbeddedTmpl".into(), json!(tp.data));
                o.insert("DestPath".into(), json!(tp.destination));
                if tp.env {
                    o.insert("Envvars".into(), json!(true));
                }
                o.insert("ChangeMode".into(), json!(tp.change_mode));
                if let Some(p) = &tp.perms {
                    o.insert("Perms".into(), json!(p));
                }
                if let Some(u) = tp.uid {
                    o.insert("Uid".into(), json!(u));
                }
                if let Some(g) = tp.gid {
                    o.insert("Gid".into(), json!(g));
                }
                Json::Object(o)
            })
            .collect();
        m.insert("Templates".into(), Json::Array(ts));
    }
    if !t.volume_mounts.is_empty() {
        let vs = t
            .volume_mounts
            .iter()
            .map(|v| json!({"Volume": v.volume, "Destination": v.destination, "ReadOnly": v.read_only}))
            .collect();
        m.insert("VolumeMounts".into(), Json::Array(vs));
    }
    if let Some(r) = &t.resources {
        let mut o = Map::new();
        if let Some(c) = r.cpu {
            o.insert("CPU".into(), json!(c));
        }
        if let Some(x) = r.memory {
            o.insert("MemoryMB".into(), json!(x));
        }
        if let Some(x) = r.memory_max {
            o.insert("MemoryMaxMB".into(), json!(x));
        }
        m.insert("Resources".into(), Json::Object(o));
    }
    if let Some(r) = &t.restart {
        m.insert("RestartPolicy".into(), restart_json(r));
    }
    Json::Object(m)
}

fn group_json(g: &Group) -> Json {
    let mut m = Map::new();
    m.insert("Name".into(), json!(g.name));
    m.insert("Count".into(), json!(g.count));
    if let Some(n) = &g.network {
        let mut o = Map::new();
        o.insert("Mode".into(), json!(n.mode.as_str()));
        if let Some(h) = &n.hostname {
            o.insert("Hostname".into(), json!(h));
        }
        if let Some(d) = &n.dns {
            let mut dm = Map::new();
            for (k, v) in [("Servers", &d.servers), ("Searches", &d.searches), ("Options", &d.options)] {
                if !v.is_empty() {
                    dm.insert(k.into(), json!(v));
                }
            }
            o.insert("DNS".into(), Json::Object(dm));
        }
        let port = |p: &NetPort| {
            let mut pm = Map::new();
            pm.insert("Label".into(), json!(p.label));
            if let Some(v) = p.static_port {
                pm.insert("Value".into(), json!(v));
            }
            if let Some(to) = p.to {
                pm.insert("To".into(), json!(to));
            }
            Json::Object(pm)
        };
        // As Nomad's HCL parser files them: a port with a static value is reserved.
        let (reserved, dynamic): (Vec<&NetPort>, Vec<&NetPort>) = n.ports.iter().partition(|p| p.static_port.is_some());
        if !reserved.is_empty() {
            o.insert("ReservedPorts".into(), Json::Array(reserved.into_iter().map(port).collect()));
        }
        if !dynamic.is_empty() {
            o.insert("DynamicPorts".into(), Json::Array(dynamic.into_iter().map(port).collect()));
        }
        m.insert("Networks".into(), json!([Json::Object(o)]));
    }
    if !g.volumes.is_empty() {
        let vs: Map<String, Json> = g
            .volumes
            .iter()
            .map(|(k, v)| (k.clone(), json!({"Name": k, "Type": "host", "Source": v.source})))
            .collect();
        m.insert("Volumes".into(), Json::Object(vs));
    }
    if let Some(r) = &g.restart {
        m.insert("RestartPolicy".into(), restart_json(r));
    }
    if g.never_reschedule {
        m.insert("ReschedulePolicy".into(), json!({"Attempts": 0, "Unlimited": false}));
    }
    if !g.services.is_empty() {
        m.insert("Services".into(), Json::Array(g.services.iter().map(service_json).collect()));
    }
    m.insert("Tasks".into(), Json::Array(g.tasks.iter().map(task_json).collect()));
    Json::Object(m)
}

/// The job as `POST /v1/jobs` takes it, pretty-printed (keys sorted).
fn json_job(job: &Job) -> String {
    let u = &job.update;
    let mut m = Map::new();
    m.insert("ID".into(), json!(job.id));
    m.insert("Name".into(), json!(job.id));
    m.insert("Type".into(), json!("service"));
    if let Some(r) = &job.region {
        m.insert("Region".into(), json!(r));
    }
    if let Some(n) = &job.namespace {
        m.insert("Namespace".into(), json!(n));
    }
    m.insert("Datacenters".into(), json!(job.datacenters));
    m.insert("Meta".into(), json!(job.meta));
    m.insert(
        "Update".into(),
        json!({
            "MaxParallel": u.max_parallel,
            "Canary": u.canary,
            "AutoRevert": u.auto_revert,
            "AutoPromote": u.auto_promote,
            "MinHealthyTime": nanos(u.min_healthy_time),
            "HealthyDeadline": nanos(u.healthy_deadline),
            "ProgressDeadline": nanos(u.progress_deadline),
        }),
    );
    m.insert("TaskGroups".into(), Json::Array(job.groups.iter().map(group_json).collect()));
    let mut text = serde_json::to_string_pretty(&json!({ "Job": Json::Object(m) })).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use dockfra_common::compose::{self, LoadOptions};

    use super::*;

    fn yaml(s: &str) -> Value {
        serde_yaml_ng::from_str(s).unwrap()
    }

    fn render(model: &str, cfg: &NomadConfig) -> Rendered {
        let opts = Options { app: "t".into(), release: None, config: cfg };
        convert(&yaml(model), &opts, &|_: &str| None)
    }

    fn hcl_of(r: &Rendered) -> &str {
        &r.files.iter().find(|(n, _)| n.ends_with(".hcl")).unwrap().1
    }

    #[test]
    fn hcl_strings_escape_quotes_backslashes_controls_and_template_sequences() {
        assert_eq!(quote(r#"say "hi" \o/"#), r#""say \"hi\" \\o/""#);
        assert_eq!(quote("a\nb\tc\rd\u{1}"), r#""a\nb\tc\rd\u0001""#);
        // `${` and `%{` start interpolations and directives; doubled they are literal.
        assert_eq!(quote("${HOME} %{if} $${x}"), r#""$${HOME} %%{if} $$${x}""#);
        // A `$` or `%` not followed by `{` is literal as it is.
        assert_eq!(quote("$HOME 100% $$ %"), r#""$HOME 100% $$ %""#);
        assert_eq!(quote("ünïcødé ✓"), "\"ünïcødé ✓\"");
        assert_eq!(key("plain_key-1"), "plain_key-1");
        assert_eq!(key("com.example.label"), "\"com.example.label\"");
        assert_eq!(key("1abc"), "\"1abc\"");
    }

    #[test]
    fn hcl_bodies_align_runs_and_break_them_at_multi_line_values() {
        let mut out = String::new();
        let items = vec![
            attr("a", s("1")),
            attr("long_name", Expr::Int(2)),
            attr("m", Expr::Object(vec![("k".into(), s("v"))])),
            attr("after", Expr::Bool(true)),
            block("blk", &["x y"], vec![attr("z", strs(&["q".to_string()]))]),
        ];
        body(&items, 0, &mut out);
        assert_eq!(
            out,
            "a         = \"1\"\nlong_name = 2\nm = {\n  k = \"v\"\n}\nafter = true\n\nblk \"x y\" {\n  z = [\"q\"]\n}\n"
        );
    }

    #[test]
    fn durations_in_go_form_and_nanoseconds() {
        let d = |ms| go_duration(Duration::from_millis(ms));
        assert_eq!(
            [d(10_000), d(300_000), d(3_600_000), d(90_000), d(1_500), d(0), d(5_400_000)],
            ["10s", "5m", "1h", "90s", "1500ms", "0s", "90m"]
        );
        assert_eq!(go_duration(Duration::from_nanos(1_500)), "1500ns");
        assert_eq!(nanos(Duration::from_secs(10)), json!(10_000_000_000u64));
    }

    #[test]
    fn restart_policies() {
        let r = |policy: &str| {
            let mut out = Rendered::default();
            let svc = yaml(&format!("restart: {policy:?}"));
            (restart_policy("s", svc.as_mapping().unwrap(), &mut out), out.warnings.len())
        };
        let fail = |n| Some(Restart { attempts: Some(n), mode: Some("fail"), ..Default::default() });
        let delay = Some(Restart { mode: Some("delay"), ..Default::default() });
        assert_eq!(r("no"), (fail(0), 0));
        assert_eq!(r("always"), (delay.clone(), 0));
        assert_eq!(r("unless-stopped"), (delay.clone(), 0));
        // Nomad cannot tell a failure from a clean exit: a warning says so.
        assert_eq!(r("on-failure"), (delay, 1));
        assert_eq!(r("on-failure:3"), (fail(3), 1));
        assert_eq!(r("on-failure:x"), (None, 2));
        assert_eq!(r("sometimes"), (None, 1));
    }

    #[test]
    fn a_fail_mode_restart_also_stops_rescheduling() {
        let r =
            render("services: {a: {image: x, restart: 'no'}, b: {image: y, restart: always}}", &NomadConfig::default());
        let h = hcl_of(&r);
        assert_eq!(h.matches("reschedule {").count(), 1, "{h}");
        assert!(h.contains("group \"a\" {\n    count = 1\n\n    network {\n      mode = \"bridge\"\n    }\n\n    restart {\n      attempts = 0\n      mode     = \"fail\"\n    }\n\n    reschedule {\n      attempts  = 0\n      unlimited = false\n    }"), "{h}");
    }

    #[test]
    fn http_probes_of_localhost_become_http_checks() {
        let p = |v: &[&str]| http_probe(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(&["curl", "-f", "http://localhost:8080/health"]), Some((8080, "/health".into())));
        assert_eq!(p(&["/bin/sh", "-c", "wget -qO- http://127.0.0.1/ || exit 1"]), Some((80, "/".into())));
        assert_eq!(p(&["/bin/sh", "-c", "curl -f http://localhost:3000"]), Some((3000, "/".into())));
        assert_eq!(p(&["curl", "http://example.com/"]), None);
        assert_eq!(p(&["pg_isready"]), None);
        assert_eq!(p(&["/bin/sh", "-c", "true || curl http://localhost/"]), None);
        assert_eq!(p(&[]), None);
    }

    #[test]
    fn template_text_and_file_modes() {
        assert_eq!(template_escape("a {{ b }} {{{"), "a {{\"{{\"}} b }} {{\"{{\"}}{");
        assert_eq!(file_mode(&yaml("'0440'")), Some("0440".into()));
        assert_eq!(file_mode(&yaml("0o440")), Some("0440".into()));
        assert_eq!(file_mode(&yaml("288")), Some("0440".into()));
        assert_eq!(file_mode(&yaml("'rw'")), None);
        assert_eq!(safe_path("./a/../b//c"), "a/__/b/c");
        assert_eq!(safe_path("./"), "file");
    }

    #[test]
    fn port_labels_are_unique_per_group_and_udp_shares_the_tcp_label() {
        let r = render(
            "services: {dns: {image: x, ports: ['53:53/udp', '53:53/tcp', '8053:53', {target: 80, name: web-ui}]}}",
            &NomadConfig::default(),
        );
        let h = hcl_of(&r);
        assert!(h.contains("ports = [\"p53\", \"p53_2\", \"web_ui\"]"), "{h}");
        assert!(r.errors.is_empty() && r.warnings.is_empty(), "{r:?}");
    }

    #[test]
    fn single_group_ports_that_collide_are_refused() {
        let cfg = NomadConfig { group: NomadGrouping::Single, ..Default::default() };
        let r = render("services: {a: {image: x, expose: ['80']}, b: {image: y, expose: ['80']}}", &cfg);
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].starts_with("service b: key ports: port 80 is also a's"), "{r:?}");
        let allowed = NomadConfig { allow: vec!["b.ports".into()], ..cfg };
        assert!(render("services: {a: {image: x, expose: ['80']}, b: {image: y, expose: ['80']}}", &allowed)
            .errors
            .is_empty());
    }

    #[test]
    fn both_files_are_rendered_and_name_the_job() {
        let cfg = NomadConfig { job_name: Some("shop".into()), ..Default::default() };
        let r = render("services: {web: {image: nginx}}", &cfg);
        let names: Vec<&str> = r.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["shop.nomad.hcl", "shop.json"]);
        let j: Json = serde_json::from_str(&r.files[1].1).unwrap();
        assert_eq!(j["Job"]["ID"], "shop");
        assert_eq!(j["Job"]["Meta"], json!({"dockfra_app": "t"}));
    }

    #[test]
    fn secret_contents_stay_out_of_warnings_and_errors() {
        let model = yaml(
            "services: {app: {image: x, secrets: [pw], environment: {TOKEN: 'hunter2-${x}'}, env_file: [e.env]}}\nsecrets: {pw: {file: pw.txt}}",
        );
        let files = |p: &str| match p {
            "pw.txt" => Some(b"hunter2-secret".to_vec()),
            "e.env" => Some(b"KEY=hunter2-env\nbad-key=hunter2-bad\n".to_vec()),
            _ => None,
        };
        let cfg = NomadConfig::default();
        let r = convert(&model, &Options { app: "t".into(), release: None, config: &cfg }, &files);
        let notes = format!("{:?}{:?}", r.warnings, r.errors);
        assert!(!notes.contains("hunter2"), "{notes}");
        assert!(hcl_of(&r).contains("hunter2-secret") && hcl_of(&r).contains("KEY=\\\"hunter2-env\\\""));
    }

    /// Every key the converter reads, given every shape of value: warnings, never a panic.
    #[test]
    fn malformed_values_never_panic() {
        let shapes = [
            "null",
            "true",
            "-1",
            "3.5",
            "''",
            "'::'",
            "'a:b:c:d'",
            "'on-failure:'",
            "'service:'",
            "[]",
            "[null, 1, [2], {a: 3}]",
            "['x=y', 'z']",
            "{}",
            "{a: null, b: [1], c: {d: e}}",
            "{source: 1, target: [], soft: x}",
        ];
        let keys: Vec<&str> = HANDLED.iter().copied().chain(DROPPED.iter().map(|(k, _, _)| *k)).collect();
        for single in [false, true] {
            for provider in ["nomad", "consul"] {
                for driver in ["docker", "podman"] {
                    let cfg = NomadConfig {
                        group: if single { NomadGrouping::Single } else { NomadGrouping::PerService },
                        service_provider: Some(provider.into()),
                        driver: Some(driver.into()),
                        ..Default::default()
                    };
                    for key in &keys {
                        for shape in shapes {
                            let image = if *key == "image" { shape } else { "x" };
                            let model = format!(
                                "services:\n  s:\n    image: {image}\n    {key}: {shape}\n    ports: ['80']\n  t:\n    image: y\n    depends_on: [s]\nvolumes: {shape}\nconfigs: {shape}\nsecrets: {shape}"
                            );
                            let Ok(model) = serde_yaml_ng::from_str::<Value>(&model) else { continue };
                            let opts = Options { app: "t".into(), release: None, config: &cfg };
                            let r = convert(&model, &opts, &|_: &str| Some(b"\xff\xfe{{".to_vec()));
                            assert_eq!(r.files.len(), 2, "{key}: {shape}");
                        }
                    }
                }
            }
        }
        // Not even a mapping.
        for top in ["null", "[1, 2]", "services: [1]", "services: {a: 1, b: null}"] {
            let r = render(top, &NomadConfig::default());
            assert_eq!(r.files.len(), 2, "{top}");
        }
    }

    /// What the corpus may refuse: the conversion's true errors, each a documented kind.
    const CORPUS_ERRORS: &[&str] = &[
        // Nomad runs images: a service compose would build has none.
        "key build: no image: build it and set image:",
        // Shared namespaces of another service or container.
        "key network_mode: service:",
        "key network_mode: container:",
        "key pid: ",
        "key ipc: ",
        "key volumes_from: ",
        // A port compose binds to loopback only would be open to the network.
        ": the port would be reachable from the network",
        // A project file the job must carry, missing.
        ": cannot be read",
    ];

    /// The awesome-compose samples convert without a panic, and every error they get is one
    /// of [`CORPUS_ERRORS`], in both groupings and with both providers.
    #[test]
    fn awesome_compose_corpus_converts() {
        let root = dockfra_common::shared_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .join("corpus/awesome-compose");
        let Ok(entries) = std::fs::read_dir(&root) else {
            panic!("corpus not found at {}", root.display());
        };
        let mut dirs: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        dirs.sort();
        let env = BTreeMap::new();
        let (mut loaded, mut failed, mut refused) = (0, Vec::new(), 0);
        for dir in &dirs {
            let Some(file) = compose::find_compose_file(dir) else { continue };
            let opts = LoadOptions { project_name: None, overrides: &env, use_process_env: false };
            let project = match compose::load(&file, &opts) {
                Ok(p) => p,
                Err(e) => {
                    failed.push(format!("{e}"));
                    continue;
                }
            };
            loaded += 1;
            let files = |p: &str| std::fs::read(dir.join(p)).ok();
            for (group, provider) in [(NomadGrouping::PerService, "nomad"), (NomadGrouping::Single, "consul")] {
                let cfg = NomadConfig { group, service_provider: Some(provider.into()), ..Default::default() };
                let opts = Options { app: "corpus".into(), release: Some("1".into()), config: &cfg };
                let r = convert(&project.model, &opts, &files);
                assert_eq!(r.files.len(), 2);
                let json: Json = serde_json::from_str(&r.files[1].1).unwrap();
                assert!(json["Job"]["TaskGroups"].is_array(), "{}", file.display());
                for e in &r.errors {
                    assert!(
                        CORPUS_ERRORS.iter().any(|k| e.contains(k)),
                        "{}: an error of no documented kind: {e}",
                        file.display()
                    );
                }
                refused += usize::from(!r.errors.is_empty());
            }
        }
        assert!(loaded >= 30 && failed.len() * 10 <= loaded, "{loaded} loaded; failed: {failed:#?}");
        // Most samples build their own images: they are refused, but not all.
        assert!(refused < loaded * 2, "every sample was refused");
    }
}
