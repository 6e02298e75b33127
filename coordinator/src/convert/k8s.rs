//! Compose → Kubernetes objects: a Deployment (or StatefulSet / DaemonSet) and a Service per
//! compose service, ConfigMaps for env files, configs and bind-mounted files, Secrets for
//! secrets, PersistentVolumeClaims for named volumes, readiness probes from healthchecks,
//! resources from `deploy.resources`, and init containers that wait for `depends_on`.
//!
//! Labels: every object carries `app.kubernetes.io/part-of: <app>`, `…/name: <service>`,
//! `…/managed-by: dockfra` and `dockfra.dev/release`; pods carry `dockfra.dev/slot` under
//! blue-green (the Service selects the live slot) and a checksum of the ConfigMaps and
//! Secrets they use, so a changed config rolls the pods.
use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use dockfra_common::compose::parse_env_file;
use dockfra_common::config::{KubernetesConfig, Strategy, Workload};
use serde_json::{json, Map, Value as Json};
use serde_yaml_ng::{Mapping, Value};

use super::{
    argv, bytes, depends_on, dns_label, duration_ms, health_argv, list, mounts, pairs, ports, scalar, seconds, section,
    services, Files, Port, Rendered,
};

/// The slot a blue-green target renders when none is given.
pub const FIRST_SLOT: &str = "blue";

/// Options from the target and the app.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    /// The app's name (`app.kubernetes.io/part-of`).
    pub app: String,
    /// The release being rendered (`dockfra.dev/release`), if any.
    pub release: Option<String>,
    pub config: &'a KubernetesConfig,
    /// Under blue-green: the slot these objects are for (default [`FIRST_SLOT`]).
    pub slot: Option<String>,
    /// Under canary: `stable` (the workloads the Service always routes to) or `canary` (the
    /// canary's own workloads `S-canary`, its ConfigMaps and Secrets, and with an Ingress its
    /// Service and canary Ingress). Workloads carry `dockfra.dev/track` in their selector, the
    /// Service does not: it routes to both tracks.
    pub track: Option<String>,
}

/// Keys of a service this converter carries over (anything else is warned about).
const HANDLED: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "healthcheck",
    "deploy",
    "restart",
    "user",
    "working_dir",
    "depends_on",
    "read_only",
    "hostname",
    "stop_grace_period",
    "pull_policy",
    "cap_add",
    "cap_drop",
    "privileged",
    "dns",
    "dns_search",
    "extra_hosts",
    "tmpfs",
    "labels",
    "configs",
    "secrets",
    "stdin_open",
    "tty",
    "sysctls",
    "networks",
    "network_mode",
    "container_name",
    "build",
    "shm_size",
];

/// Keys whose loss changes what the app does or may do: refused unless `allow:` names them.
const DANGEROUS: &[(&str, &str)] = &[
    ("pid", "pods cannot share a PID namespace with the node or another container this way"),
    ("ipc", "pods cannot share IPC with the node or another container this way"),
    ("volumes_from", "Kubernetes has no volumes_from; the mounts would be missing"),
    ("devices", "host devices need a device plugin on Kubernetes; the container would lack them"),
    ("userns_mode", "user namespaces are set per pod by the cluster"),
    ("cgroup_parent", "the kubelet places pods in cgroups"),
];

fn meta(name: &str, ns: Option<&str>, labels: &Map<String, Json>) -> Json {
    let mut m = json!({ "name": name, "labels": labels });
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// A ConfigMap/Secret key: `[-._a-zA-Z0-9]+`.
fn data_key(s: &str) -> String {
    let k: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '_' }).collect();
    if k.is_empty() || k == "." || k == ".." {
        "file".into()
    } else {
        k
    }
}

fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

/// CPUs as compose writes them (`0.5`, `"1.5"`) in millicores.
fn cpu(v: &Value) -> Option<String> {
    let n: f64 = scalar(v)?.trim().parse().ok()?;
    (n > 0.0).then(|| format!("{}m", (n * 1000.0).round() as u64))
}

fn memory(v: &Value) -> Option<String> {
    let b = bytes(&scalar(v)?)?;
    Some(if b % (1 << 20) == 0 { format!("{}Mi", b >> 20) } else { b.to_string() })
}

/// `deploy.resources` (limits, reservations) as container `resources`; the target's
/// `resource_limits` stand in for missing limits.
fn resources(svc: &Mapping, cfg: &KubernetesConfig) -> Json {
    let res = svc.get("deploy").and_then(|d| d.get("resources"));
    let part = |which: &str| {
        let mut m = Map::new();
        if let Some(r) = res.and_then(|r| r.get(which)) {
            if let Some(c) = r.get("cpus").and_then(cpu) {
                m.insert("cpu".into(), json!(c));
            }
            if let Some(mem) = r.get("memory").and_then(memory) {
                m.insert("memory".into(), json!(mem));
            }
        }
        m
    };
    let mut limits = part("limits");
    for (k, v) in &cfg.resource_limits {
        limits.entry(k.clone()).or_insert_with(|| json!(v));
    }
    let requests = part("reservations");
    let mut out = Map::new();
    if !limits.is_empty() {
        out.insert("limits".into(), Json::Object(limits));
    }
    if !requests.is_empty() {
        out.insert("requests".into(), Json::Object(requests));
    }
    Json::Object(out)
}

fn port_name(p: &Port) -> String {
    format!("{}-{}", p.protocol, p.target)
}

/// What converting every service shares: the target, the app, the objects made so far.
struct Cx<'a> {
    model: &'a Value,
    opts: &'a Options<'a>,
    cfg: &'a KubernetesConfig,
    ns: Option<&'a str>,
    app: String,
    /// Under blue-green, the slot rendered.
    slot: Option<String>,
    /// Under canary, the track rendered.
    track: Option<String>,
    files: Files<'a>,
    out: Rendered,
    /// (file stem, object), in the order made.
    objects: Vec<(String, Json)>,
    /// Top-level configs by name: their text.
    config_data: BTreeMap<String, String>,
    /// Top-level secrets by name: a digest of their content (never the content).
    secret_data: BTreeMap<String, String>,
    /// `configs.NAME` / `secrets.NAME` that are `external: true`.
    external: BTreeSet<String>,
    /// Top-level named volumes.
    named: BTreeSet<String>,
    /// Claims made already (a volume shared by services gets one).
    claims: BTreeSet<String>,
    port_of: BTreeMap<String, Vec<Port>>,
}

/// One compose service on its way to a workload.
struct Svc<'a> {
    /// The compose name, and the DNS label objects take.
    name: &'a str,
    label: String,
    m: &'a Mapping,
    workload: Workload,
    container: Map<String, Json>,
    pod: Map<String, Json>,
    volumes: Vec<Json>,
    mounts: Vec<Json>,
    claim_templates: Vec<Json>,
    /// What the pod's config checksum covers.
    checksum: Vec<String>,
    ports: Vec<Port>,
}

/// Convert a resolved compose model (as `compose::load` gives it).
pub fn convert(model: &Value, opts: &Options, files: Files) -> Rendered {
    let cfg = opts.config;
    let all = services(model);
    let mut cx = Cx {
        model,
        opts,
        cfg,
        ns: cfg.namespace.as_deref(),
        app: dns_label(&opts.app),
        slot: match cfg.strategy {
            Strategy::BlueGreen => Some(opts.slot.clone().unwrap_or_else(|| FIRST_SLOT.into())),
            _ => None,
        },
        track: match cfg.strategy {
            Strategy::Canary => Some(opts.track.clone().unwrap_or_else(|| "stable".into())),
            _ => None,
        },
        files,
        out: Rendered::default(),
        objects: Vec::new(),
        config_data: BTreeMap::new(),
        secret_data: BTreeMap::new(),
        external: BTreeSet::new(),
        named: section(model, "volumes").into_iter().map(|(n, _)| n).collect(),
        claims: BTreeSet::new(),
        port_of: all.iter().map(|(n, s)| (n.clone(), ports(s).0)).collect(),
    };
    cx.top_level();
    cx.configs();
    cx.secrets();
    for (svc_name, svc) in &all {
        cx.service(svc_name, svc);
    }
    cx.ingress();
    let mut out = cx.out;
    out.files = cx
        .objects
        .into_iter()
        .map(|(n, o)| (format!("{n}.yaml"), serde_yaml_ng::to_string(&o).unwrap_or_default()))
        .collect();
    out
}

impl<'a> Cx<'a> {
    /// The labels every object carries (`svc`: those of one service).
    fn labels(&self, svc: Option<&str>) -> Map<String, Json> {
        let mut l = Map::new();
        l.insert("app.kubernetes.io/part-of".into(), json!(self.app));
        l.insert("app.kubernetes.io/managed-by".into(), json!("dockfra"));
        if let Some(s) = svc {
            l.insert("app.kubernetes.io/name".into(), json!(s));
        }
        if let Some(r) = &self.opts.release {
            l.insert("dockfra.dev/release".into(), json!(dns_label(r)));
        }
        l
    }

    /// Rendering the canary's own objects?
    fn canary(&self) -> bool {
        self.track.as_deref() == Some("canary")
    }

    /// The name of a ConfigMap or Secret this release owns: per slot under blue-green, the
    /// canary's own under canary, so the other slot's (or the stable) pods keep theirs.
    fn owned(&self, base: String) -> String {
        match (&self.slot, self.canary()) {
            (Some(s), _) => format!("{base}-{s}"),
            (None, true) => format!("{base}-canary"),
            _ => base,
        }
    }

    fn push(&mut self, kind: &str, name: &str, obj: Json) {
        // A canary shares the stable release's claims (and, without an Ingress, its Service).
        if self.canary() && kind == "PersistentVolumeClaim" {
            return;
        }
        // A slot's own ConfigMaps and Secrets say so: a prune keeps the other slot's.
        let mut obj = obj;
        if let (Some(slot), "ConfigMap" | "Secret") = (&self.slot, kind) {
            obj["metadata"]["labels"]["dockfra.dev/slot"] = json!(slot);
        }
        self.objects.push((format!("{}-{name}", kind.to_ascii_lowercase()), obj));
    }

    /// One compose service: its workload, Service and the ConfigMaps/claims it needs.
    fn service(&mut self, svc_name: &'a str, svc: &'a Mapping) {
        let workload = match self.cfg.workloads.get(svc_name) {
            Some(w) => *w,
            None if svc.get("deploy").and_then(|d| d.get("mode")).and_then(scalar).as_deref() == Some("global") => {
                Workload::DaemonSet
            }
            None => Workload::Deployment,
        };
        let mut s = Svc {
            name: svc_name,
            label: dns_label(svc_name),
            m: svc,
            workload,
            container: Map::new(),
            pod: Map::new(),
            volumes: Vec::new(),
            mounts: Vec::new(),
            claim_templates: Vec::new(),
            checksum: Vec::new(),
            ports: Vec::new(),
        };
        self.basics(&mut s);
        self.environment(&mut s);
        self.ports(&mut s);
        self.probe_and_resources(&mut s);
        self.security(&mut s);
        self.volumes(&mut s);
        self.file_refs(&mut s);
        self.pod_settings(&mut s);
        self.waits(&mut s);
        self.objects(s);
    }

    /// Top-level keys and networks the cluster cannot express.
    fn top_level(&mut self) {
        let model = self.model;

        for (key, _) in model.as_mapping().into_iter().flatten() {
            let k = scalar(key).unwrap_or_default();
            if !["name", "services", "networks", "volumes", "configs", "secrets"].contains(&k.as_str())
                && !k.starts_with("x-")
            {
                self.out
                    .warnings
                    .push(format!("top-level key {k}: not supported by the kubernetes converter; ignored"));
            }
        }
        for (name, def) in section(model, "networks") {
            if def.get("internal").and_then(Value::as_bool) == Some(true) {
                self.out.warnings.push(format!(
                    "network {name}: internal: pods share the cluster network; isolate them with a NetworkPolicy"
                ));
            }
        }
    }

    /// Top-level configs: a ConfigMap each.
    fn configs(&mut self) {
        let (model, ns, files) = (self.model, self.ns, self.files);
        // Top-level configs and secrets: one ConfigMap / Secret each.
        for (name, def) in section(model, "configs") {
            let data = if let Some(c) = def.get("content").and_then(scalar) {
                Some(c.into_bytes())
            } else if let Some(f) = def.get("file").and_then(scalar) {
                match files(&f) {
                    Some(d) => Some(d),
                    None => {
                        self.out.errors.push(format!("config {name}: file {f}: cannot be read"));
                        None
                    }
                }
            } else if def.get("external").and_then(Value::as_bool) == Some(true) {
                self.out.warnings.push(format!(
                    "config {name}: external: a ConfigMap named {} with the key {} must exist",
                    dns_label(&name),
                    data_key(&name)
                ));
                self.external.insert(format!("configs.{name}"));
                self.config_data.insert(name.clone(), String::new());
                None
            } else {
                self.out.warnings.push(format!("config {name}: neither file nor content; no ConfigMap made"));
                None
            };
            if let Some(d) = data {
                let text = String::from_utf8_lossy(&d).to_string();
                let cm_name = self.owned(format!("{}-config", dns_label(&name)));
                self.config_data.insert(name.clone(), text.clone());
                self.push(
                    "ConfigMap",
                    &cm_name,
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&cm_name, ns, &self.labels(None)),
                       "data": { data_key(&name): text }}),
                );
            }
        }
    }

    /// Top-level secrets: a Secret each.
    fn secrets(&mut self) {
        let (model, ns, files) = (self.model, self.ns, self.files);
        for (name, def) in section(model, "secrets") {
            let data = if let Some(f) = def.get("file").and_then(scalar) {
                match files(&f) {
                    Some(d) => Some(d),
                    None => {
                        self.out.errors.push(format!("secret {name}: file {f}: cannot be read"));
                        None
                    }
                }
            } else if def.get("external").and_then(Value::as_bool) == Some(true) {
                self.out.warnings.push(format!(
                    "secret {name}: external: a Secret named {} with the key {} must exist",
                    dns_label(&name),
                    data_key(&name)
                ));
                self.external.insert(format!("secrets.{name}"));
                self.secret_data.insert(name.clone(), String::new());
                None
            } else {
                // `environment:` secrets take the coordinator's variable; it is not read here.
                self.out.warnings.push(format!("secret {name}: only file: secrets are converted; no Secret made"));
                None
            };
            if let Some(d) = data {
                let s_name = self.owned(format!("{}-secret", dns_label(&name)));
                let encoded = b64(&d);
                self.secret_data.insert(name.clone(), dockfra_common::sha256_hex(&d));
                self.push(
                    "Secret",
                    &s_name,
                    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                       "metadata": meta(&s_name, ns, &self.labels(None)), "data": { data_key(&name): encoded }}),
                );
            }
        }
    }

    /// Unknown and dangerous keys, the image, the process.
    fn basics(&mut self, s: &mut Svc) {
        let (svc_name, svc, name) = (s.name, s.m, s.label.clone());
        let cfg = self.cfg;
        for (k, _) in svc.iter() {
            let k = scalar(k).unwrap_or_default();
            if HANDLED.contains(&k.as_str()) || k.starts_with("x-") {
                continue;
            }
            match DANGEROUS.iter().find(|(d, _)| *d == k) {
                Some((_, why)) => self.out.lose(svc_name, &k, why, true, &cfg.allow),
                None => {
                    self.out.lose(svc_name, &k, "not supported by the kubernetes converter; ignored", false, &cfg.allow)
                }
            }
        }
        let image = match svc.get("image").and_then(scalar) {
            Some(image) => {
                if svc.contains_key("build") {
                    self.out
                        .warnings
                        .push(format!("service {svc_name}: key build: ignored; the image {image} is used as it is"));
                }
                image
            }
            None => {
                // Compose names a built image `<project>-<service>`; the cluster must pull it.
                let project = self.model.get("name").and_then(scalar).unwrap_or_else(|| self.opts.app.clone());
                let image = format!("{project}-{svc_name}");
                self.out.warnings.push(format!(
                "service {svc_name}: key build: Kubernetes does not build images; push {image} (compose's name for it) where the cluster pulls from, or set image:"
            ));
                image
            }
        };
        if svc.contains_key("container_name") {
            self.out
                .warnings
                .push(format!("service {svc_name}: key container_name: ignored; pods are named by Kubernetes"));
        }
        s.container.insert("name".into(), json!(name));
        s.container.insert("image".into(), json!(image));
        if let Some(p) = svc.get("pull_policy").and_then(scalar) {
            let policy = match p.as_str() {
                "always" => Some("Always"),
                "never" => Some("Never"),
                "missing" | "if_not_present" => Some("IfNotPresent"),
                _ => None,
            };
            match policy {
                Some(p) => {
                    s.container.insert("imagePullPolicy".into(), json!(p));
                }
                None => {
                    self.out.warnings.push(format!("service {svc_name}: key pull_policy: {p:?} has no Kubernetes form"))
                }
            }
        }
        if let Some(e) = svc.get("entrypoint").and_then(argv) {
            s.container.insert("command".into(), json!(e));
        }
        if let Some(a) = svc.get("command").and_then(argv) {
            s.container.insert("args".into(), json!(a));
        }
        if let Some(w) = svc.get("working_dir").and_then(scalar) {
            s.container.insert("workingDir".into(), json!(w));
        }
        for (k, field) in [("stdin_open", "stdin"), ("tty", "tty")] {
            if svc.get(k).and_then(Value::as_bool) == Some(true) {
                s.container.insert(field.into(), json!(true));
            }
        }
    }

    /// Environment: the service's own, then env files as a ConfigMap.
    fn environment(&mut self, s: &mut Svc) {
        let (svc_name, svc, name) = (s.name, s.m, s.label.clone());
        let (ns, files) = (self.ns, self.files);
        // Environment: the service's own, then env files as a ConfigMap.
        let mut env = Vec::new();
        for (k, v) in svc.get("environment").map(pairs).unwrap_or_default() {
            match v {
                Some(v) => env.push(json!({"name": k, "value": v})),
                None => self.out.warnings.push(format!(
                    "service {svc_name}: key environment.{k}: no value (compose takes it from the host); not set"
                )),
            }
        }
        if !env.is_empty() {
            s.container.insert("env".into(), json!(env));
        }
        let env_files: Vec<String> = match svc.get("env_file") {
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(|i| if let Value::Mapping(m) = i { m.get("path").and_then(scalar) } else { scalar(i) })
                .collect(),
            Some(other) => list(other),
            None => vec![],
        };
        if !env_files.is_empty() {
            let mut data = BTreeMap::new();
            for f in &env_files {
                match files(f).map(|d| parse_env_file(&String::from_utf8_lossy(&d))) {
                    Some(Ok(vars)) => data.extend(vars),
                    Some(Err(e)) => self.out.errors.push(format!("service {svc_name}: env_file {f}: {e}")),
                    None => self.out.errors.push(format!("service {svc_name}: env_file {f}: cannot be read")),
                }
            }
            let cm = self.owned(format!("{name}-env"));
            s.checksum.push(format!("{data:?}"));
            self.push(
                "ConfigMap",
                &cm,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&cm, ns, &self.labels(Some(&name))),
                   "data": data}),
            );
            s.container.insert("envFrom".into(), json!([{"configMapRef": {"name": cm}}]));
        }
    }

    /// Container ports (the Service takes them too).
    fn ports(&mut self, s: &mut Svc) {
        let (svc_name, svc) = (s.name, s.m);
        // Ports.
        let (svc_ports, bad) = ports(svc);
        for b in bad {
            self.out.warnings.push(format!("service {svc_name}: key ports: {b:?} cannot be read; ignored"));
        }
        let mut seen = BTreeSet::new();
        let container_ports: Vec<Json> = svc_ports
        .iter()
        .filter(|p| seen.insert((p.target, p.protocol.clone())))
        .map(|p| json!({"containerPort": p.target, "protocol": p.protocol.to_ascii_uppercase(), "name": port_name(p)}))
        .collect();
        if !container_ports.is_empty() {
            s.container.insert("ports".into(), json!(container_ports));
        }
        if svc_ports.iter().any(|p| p.host_ip.is_some()) {
            self.out.warnings.push(format!(
                "service {svc_name}: key ports: a host address binding has no Kubernetes form; the Service decides"
            ));
        }
        s.ports = svc_ports;
    }

    /// The readiness probe from the healthcheck, and resources.
    fn probe_and_resources(&mut self, s: &mut Svc) {
        let (svc_name, svc) = (s.name, s.m);
        let cfg = self.cfg;
        // Probes.
        if let Some(h) = svc.get("healthcheck").and_then(Value::as_mapping) {
            match health_argv(h) {
                Ok(Some(cmd)) => {
                    let mut probe = Map::new();
                    probe.insert("exec".into(), json!({"command": cmd}));
                    probe.insert(
                        "periodSeconds".into(),
                        json!(h.get("interval").and_then(|v| seconds(v, 1)).unwrap_or(30)),
                    );
                    probe.insert(
                        "timeoutSeconds".into(),
                        json!(h.get("timeout").and_then(|v| seconds(v, 1)).unwrap_or(30)),
                    );
                    probe.insert(
                        "failureThreshold".into(),
                        json!(h.get("retries").and_then(Value::as_u64).filter(|r| *r > 0).unwrap_or(3)),
                    );
                    if let Some(s) = h.get("start_period").and_then(|v| seconds(v, 0)).filter(|s| *s > 0) {
                        probe.insert("initialDelaySeconds".into(), json!(s));
                    }
                    s.container.insert("readinessProbe".into(), Json::Object(probe));
                }
                Ok(None) => {}
                Err(e) => self.out.warnings.push(format!("service {svc_name}: key healthcheck.test: {e}; no probe")),
            }
        }
        let res = resources(svc, cfg);
        if res.as_object().is_some_and(|m| !m.is_empty()) {
            s.container.insert("resources".into(), res);
        }
    }

    /// The container's security context, and the pod's sysctls.
    fn security(&mut self, s: &mut Svc) {
        let (svc_name, svc) = (s.name, s.m);
        // Security context.
        let mut sc = Map::new();
        if let Some(u) = svc.get("user").and_then(scalar) {
            let (uid, gid) =
                u.split_once(':').map(|(a, b)| (a.to_string(), Some(b.to_string()))).unwrap_or((u.clone(), None));
            match uid.parse::<u64>() {
                Ok(n) => {
                    sc.insert("runAsUser".into(), json!(n));
                }
                Err(_) => self.out.warnings.push(format!(
                    "service {svc_name}: key user: {u:?} is a name; Kubernetes needs a numeric uid; not set"
                )),
            }
            if let Some(g) = gid.and_then(|g| g.parse::<u64>().ok()) {
                sc.insert("runAsGroup".into(), json!(g));
            }
        }
        if svc.get("read_only").and_then(Value::as_bool) == Some(true) {
            sc.insert("readOnlyRootFilesystem".into(), json!(true));
        }
        if svc.get("privileged").and_then(Value::as_bool) == Some(true) {
            sc.insert("privileged".into(), json!(true));
        }
        let caps = |k: &str| -> Vec<String> {
            svc.get(k)
                .map(list)
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.trim_start_matches("CAP_").to_string())
                .collect()
        };
        let (add, drop) = (caps("cap_add"), caps("cap_drop"));
        if !add.is_empty() || !drop.is_empty() {
            let mut m = Map::new();
            if !add.is_empty() {
                m.insert("add".into(), json!(add));
            }
            if !drop.is_empty() {
                m.insert("drop".into(), json!(drop));
            }
            sc.insert("capabilities".into(), Json::Object(m));
        }
        if !sc.is_empty() {
            s.container.insert("securityContext".into(), Json::Object(sc));
        }
        if let Some(v) = svc.get("sysctls") {
            let sysctls: Vec<Json> =
                pairs(v).into_iter().map(|(k, v)| json!({"name": k, "value": v.unwrap_or_default()})).collect();
            s.pod.insert("securityContext".into(), json!({ "sysctls": sysctls }));
        }
    }

    /// Volumes and their mounts.
    fn volumes(&mut self, s: &mut Svc) {
        let (svc_name, svc, name) = (s.name, s.m, s.label.clone());
        let (cfg, ns, files) = (self.cfg, self.ns, self.files);
        // Volumes and mounts.
        let mut file_data: BTreeMap<String, String> = BTreeMap::new();
        let (ms, bad) = mounts(svc);
        for b in bad {
            self.out.warnings.push(format!("service {svc_name}: key volumes: {b:?} cannot be read; ignored"));
        }
        for (i, m) in ms.iter().enumerate() {
            let vname = format!("v{i}");
            let ro = m.read_only;
            match (m.kind.as_str(), &m.source) {
            ("volume", Some(src)) if self.named.contains(src) => {
                let claim = dns_label(src);
                let size = cfg.volume_size.get(src).unwrap_or("1Gi").to_string();
                let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}});
                if let Some(sc) = &cfg.storage_class {
                    spec["storageClassName"] = json!(sc);
                }
                if s.workload == Workload::StatefulSet {
                    s.claim_templates.push(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim}, "spec": spec}));
                    s.mounts.push(json!({"name": claim, "mountPath": m.target, "readOnly": ro}));
                } else {
                    if self.claims.insert(claim.clone()) {
                        self.push(
                            "PersistentVolumeClaim",
                            &claim,
                            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                   "metadata": meta(&claim, ns, &self.labels(None)), "spec": spec}),
                        );
                    }
                    s.volumes.push(json!({"name": vname, "persistentVolumeClaim": {"claimName": claim}}));
                    s.mounts.push(json!({"name": vname, "mountPath": m.target, "readOnly": ro}));
                }
            }
            ("volume", Some(src)) => {
                self.out.warnings.push(format!(
                    "service {svc_name}: key volumes: volume {src} is not defined at the top level; an emptyDir stands in"
                ));
                s.volumes.push(json!({"name": vname, "emptyDir": {}}));
                s.mounts.push(json!({"name": vname, "mountPath": m.target, "readOnly": ro}));
            }
            ("volume", None) => {
                s.volumes.push(json!({"name": vname, "emptyDir": {}}));
                s.mounts.push(json!({"name": vname, "mountPath": m.target}));
            }
            ("tmpfs", _) => {
                s.volumes.push(json!({"name": vname, "emptyDir": {"medium": "Memory"}}));
                s.mounts.push(json!({"name": vname, "mountPath": m.target}));
            }
            ("bind", Some(src)) if src.starts_with('/') => {
                self.out.warnings.push(format!(
                    "service {svc_name}: key volumes: {src} becomes a hostPath: the node must have it"
                ));
                s.volumes.push(json!({"name": vname, "hostPath": {"path": src}}));
                s.mounts.push(json!({"name": vname, "mountPath": m.target, "readOnly": ro}));
            }
            ("bind", Some(src)) => match files(src) {
                // A project file: carried in a ConfigMap, mounted read-only at its path.
                Some(d) => {
                    let key = data_key(&format!("{i}-{}", base_name(src)));
                    let text = String::from_utf8_lossy(&d).to_string();
                    if !ro {
                        self.out.warnings.push(format!(
                            "service {svc_name}: key volumes: {src} is carried in a ConfigMap: read-only in the pod"
                        ));
                    }
                    file_data.insert(key.clone(), text);
                    s.volumes.push(json!({"name": vname, "configMap": {"name": self.owned(format!("{name}-files")), "items": [{"key": key, "path": key}]}}));
                    s.mounts.push(json!({"name": vname, "mountPath": m.target, "subPath": key, "readOnly": true}));
                }
                None => self.out.warnings.push(format!(
                    "service {svc_name}: key volumes: {src} is a directory or missing; not mounted (the image's own files stay)"
                )),
            },
            (k, _) => self.out.warnings.push(format!("service {svc_name}: key volumes: type {k} is not supported; ignored")),
        }
        }
        for t in svc.get("tmpfs").map(list).unwrap_or_default() {
            let vname = format!("tmp{}", s.volumes.len());
            let path = t.split(':').next().unwrap_or(&t).to_string();
            s.volumes.push(json!({"name": vname, "emptyDir": {"medium": "Memory"}}));
            s.mounts.push(json!({"name": vname, "mountPath": path}));
        }
        if let Some(shm) = svc.get("shm_size").and_then(memory) {
            s.volumes.push(json!({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}));
            s.mounts.push(json!({"name": "dshm", "mountPath": "/dev/shm"}));
        }
        if !file_data.is_empty() {
            let cm = self.owned(format!("{name}-files"));
            s.checksum.push(format!("{file_data:?}"));
            self.push(
                "ConfigMap",
                &cm,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(&cm, ns, &self.labels(Some(&name))),
                   "data": file_data}),
            );
        }
    }

    /// Service-level configs and secrets, short (`- name`) or long form.
    fn file_refs(&mut self, s: &mut Svc) {
        let (svc_name, svc) = (s.name, s.m);
        // Service-level configs and secrets, short (`- name`) or long form.
        for (key, default_dir) in [("configs", "/"), ("secrets", "/run/secrets/")] {
            for (i, entry) in svc.get(key).and_then(Value::as_sequence).into_iter().flatten().enumerate() {
                let (source, target) = match entry {
                    Value::Mapping(m) => (m.get("source").and_then(scalar), m.get("target").and_then(scalar)),
                    other => (scalar(other), None),
                };
                let Some(source) = source else { continue };
                let known = if key == "configs" {
                    self.config_data.contains_key(&source)
                } else {
                    self.secret_data.contains_key(&source)
                };
                if !known {
                    self.out
                        .warnings
                        .push(format!("service {svc_name}: key {key}.{source}: not converted; not mounted"));
                    continue;
                }
                let target = match target {
                    Some(t) if t.starts_with('/') => t,
                    Some(t) => format!("{default_dir}{t}"),
                    None => format!("{default_dir}{source}"),
                };
                let vname = format!("{}{i}", &key[..1]);
                let dk = data_key(&source);
                // An external one is the cluster's own object, under the compose name.
                let external = self.external.contains(&format!("{key}.{source}"));
                let obj = dns_label(&source);
                let obj = |suffix: &str| if external { obj.clone() } else { self.owned(format!("{obj}-{suffix}")) };
                if key == "configs" {
                    s.checksum.push(self.config_data[&source].clone());
                    s.volumes.push(json!({"name": vname, "configMap": {"name": obj("config")}}));
                } else {
                    s.checksum.push(self.secret_data[&source].clone());
                    s.volumes.push(json!({"name": vname, "secret": {"secretName": obj("secret")}}));
                }
                s.mounts.push(json!({"name": vname, "mountPath": target, "subPath": dk, "readOnly": true}));
            }
        }
        if !s.mounts.is_empty() {
            s.container.insert("volumeMounts".into(), json!(s.mounts));
        }
    }

    /// Pod-level settings.
    fn pod_settings(&mut self, s: &mut Svc) {
        let (svc_name, svc) = (s.name, s.m);
        let cfg = self.cfg;
        // Pod-level settings.
        if let Some(h) = svc.get("hostname").and_then(scalar) {
            s.pod.insert("hostname".into(), json!(dns_label(&h)));
        }
        if let Some(g) = svc.get("stop_grace_period").and_then(duration_ms) {
            s.pod.insert("terminationGracePeriodSeconds".into(), json!(g.div_ceil(1000)));
        }
        let hosts: Vec<Json> = svc
            .get("extra_hosts")
            .map(|v| match v {
                Value::Mapping(_) => {
                    pairs(v).into_iter().map(|(h, ip)| (h, ip.unwrap_or_default())).collect::<Vec<_>>()
                }
                other => list(other)
                    .into_iter()
                    .filter_map(|e| e.split_once(['=', ':']).map(|(h, ip)| (h.to_string(), ip.to_string())))
                    .collect(),
            })
            .unwrap_or_default()
            .into_iter()
            .map(|(h, ip)| json!({"ip": ip.trim_matches(['[', ']']), "hostnames": [h]}))
            .collect();
        if !hosts.is_empty() {
            s.pod.insert("hostAliases".into(), json!(hosts));
        }
        let dns = svc.get("dns").map(list).unwrap_or_default();
        let search = svc.get("dns_search").map(list).unwrap_or_default();
        if !dns.is_empty() || !search.is_empty() {
            let mut d = Map::new();
            if !dns.is_empty() {
                d.insert("nameservers".into(), json!(dns));
            }
            if !search.is_empty() {
                d.insert("searches".into(), json!(search));
            }
            s.pod.insert("dnsConfig".into(), Json::Object(d));
        }
        match svc.get("network_mode").and_then(scalar).as_deref() {
            None | Some("bridge") | Some("default") => {}
            Some("host") => {
                let allowed = cfg.allow.iter().any(|a| a == "network_mode" || a == &format!("{svc_name}.network_mode"));
                self.out.lose(
                    svc_name,
                    "network_mode",
                    "host networking: on Kubernetes the pod would share the node's network (hostNetwork)",
                    true,
                    &cfg.allow,
                );
                if allowed {
                    s.pod.insert("hostNetwork".into(), json!(true));
                }
            }
            Some(other) => self.out.lose(
                svc_name,
                "network_mode",
                &format!("{other}: pods cannot join another container's network namespace"),
                true,
                &cfg.allow,
            ),
        }
        if let Some(r) = svc.get("restart").and_then(scalar) {
            if !matches!(r.as_str(), "always" | "unless-stopped") {
                self.out.warnings.push(format!(
                    "service {svc_name}: key restart: {r:?}: a {} restarts its pods always",
                    s.workload.kind()
                ));
            }
        }
        if let Some(nets) = svc.get("networks") {
            let n: Vec<String> = match nets {
                Value::Mapping(m) => m.keys().filter_map(scalar).collect(),
                other => list(other),
            };
            if n.iter().any(|n| n != "default") {
                self.out.warnings.push(format!(
                    "service {svc_name}: key networks: pods share one cluster network; {} not isolated",
                    n.join(", ")
                ));
            }
        }
    }

    /// depends_on: an init container per dependency that waits until it answers.
    fn waits(&mut self, s: &mut Svc) {
        let (svc_name, svc) = (s.name, s.m);
        let cfg = self.cfg;
        // depends_on: an init container per dependency that waits until it answers.
        let wait_image = cfg.wait_image.clone().unwrap_or_else(|| "busybox:1.36".into());
        let mut inits = Vec::new();
        for (dep, condition) in depends_on(svc) {
            if condition == "service_completed_successfully" {
                self.out.warnings.push(format!(
                "service {svc_name}: key depends_on.{dep}: service_completed_successfully has no Kubernetes form (use a Job); not waited for"
            ));
                continue;
            }
            let d = dns_label(&dep);
            let script = match self.port_of.get(&dep).and_then(|p| p.iter().find(|p| p.protocol == "tcp")) {
                Some(p) => format!(
                    "until {}; do echo waiting for {d}; sleep 2; done",
                    super::tcp_probe(&format!("{d} {}", p.target))
                ),
                None => format!("until nslookup {d}; do echo waiting for {d}; sleep 2; done"),
            };
            inits.push(json!({"name": format!("wait-for-{d}"), "image": wait_image, "command": ["sh", "-c", script]}));
        }
        if !inits.is_empty() {
            s.pod.insert("initContainers".into(), json!(inits));
        }
        s.pod.insert("containers".into(), json!([Json::Object(std::mem::take(&mut s.container))]));
        if !s.volumes.is_empty() {
            s.pod.insert("volumes".into(), json!(s.volumes));
        }
    }

    /// The workload and its Service.
    fn objects(&mut self, s: Svc) {
        let (svc_name, svc, name) = (s.name, s.m, s.label.clone());
        let (cfg, ns) = (self.cfg, self.ns);
        let (slot, app) = (self.slot.clone(), self.app.clone());
        // The s.workload and its Service.
        let mut selector = Map::new();
        selector.insert("app.kubernetes.io/part-of".into(), json!(app));
        selector.insert("app.kubernetes.io/name".into(), json!(name));
        if let Some(s) = &slot {
            selector.insert("dockfra.dev/slot".into(), json!(s));
        }
        // The Service routes to every track; a workload selects its own.
        let service_selector = selector.clone();
        if let Some(t) = &self.track {
            selector.insert("dockfra.dev/track".into(), json!(t));
        }
        let mut pod_labels = selector.clone();
        pod_labels.insert("app.kubernetes.io/managed-by".into(), json!("dockfra"));
        let mut annotations = Map::new();
        for (k, v) in svc.get("labels").map(pairs).unwrap_or_default() {
            annotations.insert(k, json!(v.unwrap_or_default()));
        }
        if !s.checksum.is_empty() {
            annotations.insert(
                "dockfra.dev/config-checksum".into(),
                json!(dockfra_common::sha256_hex(s.checksum.join("\n").as_bytes())),
            );
        }
        let mut template_meta = json!({ "labels": pod_labels });
        if !annotations.is_empty() {
            template_meta["annotations"] = Json::Object(annotations);
        }
        let replicas = svc
            .get("deploy")
            .and_then(|d| d.get("replicas"))
            .and_then(Value::as_u64)
            .or(cfg.replicas.map(u64::from))
            .unwrap_or(1);
        let wl_name = match &slot {
            Some(s) => format!("{name}-{s}"),
            None if self.canary() => format!("{name}-canary"),
            None => name.clone(),
        };
        let mut labels = self.labels(Some(&name));
        if let Some(s) = &slot {
            labels.insert("dockfra.dev/slot".into(), json!(s));
        }
        if let Some(t) = &self.track {
            labels.insert("dockfra.dev/track".into(), json!(t));
        }
        let mut spec = json!({
            "selector": {"matchLabels": selector},
            "template": {"metadata": template_meta, "spec": s.pod},
        });
        match s.workload {
            Workload::Deployment => {
                spec["replicas"] = json!(replicas);
                spec["strategy"] = match cfg.strategy {
                    Strategy::Recreate => json!({"type": "Recreate"}),
                    // New pods come up before old ones go: no drop in capacity.
                    _ => json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}),
                };
            }
            Workload::StatefulSet => {
                spec["replicas"] = json!(replicas);
                spec["serviceName"] = json!(name);
                if !s.claim_templates.is_empty() {
                    spec["volumeClaimTemplates"] = json!(s.claim_templates);
                }
            }
            Workload::DaemonSet => {
                spec["updateStrategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}});
            }
        }
        if s.workload != Workload::Deployment && cfg.strategy != Strategy::Rolling {
            self.out.warnings.push(format!(
                "service {svc_name}: strategy {} applies to Deployments; this {} rolls its pods in place",
                cfg.strategy,
                s.workload.kind()
            ));
        }
        self.push(
        s.workload.kind(),
        &wl_name,
        json!({"apiVersion": "apps/v1", "kind": s.workload.kind(), "metadata": meta(&wl_name, ns, &labels), "spec": spec}),
    );

        // The canary's own Service exists only for its Ingress to route to.
        let ingress_to = self.cfg.ingress.as_ref().map(|i| i.service.clone());
        let routed = match ingress_to {
            Some(Some(to)) => to == svc_name,
            Some(None) => self.port_of[svc_name].iter().any(|p| p.published.is_some()),
            None => false,
        };
        if self.canary() && !routed {
            return;
        }
        let (service_name, service_selector) =
            if self.canary() { (format!("{name}-canary"), selector.clone()) } else { (name.clone(), service_selector) };
        let mut service_spec = json!({"selector": service_selector});
        let mut seen = BTreeSet::new();
        let svc_ports = s.ports.clone();
        let sports: Vec<&Port> = svc_ports.iter().filter(|p| seen.insert((p.target, p.protocol.clone()))).collect();
        if sports.is_empty() {
            service_spec["clusterIP"] = json!("None");
        } else {
            let stype = cfg.service_type.get(svc_name).unwrap_or("ClusterIP");
            if stype != "ClusterIP" {
                service_spec["type"] = json!(stype);
            }
            let list: Vec<Json> = sports
            .iter()
            .map(|p| {
                let mut e = json!({"name": port_name(p), "port": p.target, "targetPort": p.target,
                                   "protocol": p.protocol.to_ascii_uppercase()});
                match (stype, p.published) {
                    ("NodePort", Some(n)) if (30000..=32767).contains(&n) => e["nodePort"] = json!(n),
                    ("NodePort", Some(n)) => self.out.warnings.push(format!(
                        "service {svc_name}: key ports: host port {n} is outside the NodePort range 30000-32767; the cluster picks one"
                    )),
                    ("LoadBalancer", Some(n)) => e["port"] = json!(n),
                    _ => {}
                }
                e
            })
            .collect();
            service_spec["ports"] = json!(list);
        }
        if s.workload == Workload::StatefulSet && sports.is_empty() {
            service_spec["publishNotReadyAddresses"] = json!(false);
        }
        self.push(
        "Service",
        &service_name,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta(&service_name, ns, &self.labels(Some(&name))), "spec": service_spec}),
    );
    }

    /// `config.ingress`: an Ingress to one service.
    fn ingress(&mut self) {
        let (model, cfg, ns) = (self.model, self.cfg, self.ns);
        let all = services(model);
        if let Some(ing) = &cfg.ingress {
            let chosen = match &ing.service {
                Some(s) => all.iter().find(|(n, _)| n == s).map(|(n, _)| n.clone()),
                None => all
                    .iter()
                    .find(|(n, _)| self.port_of[n].iter().any(|p| p.published.is_some()))
                    .map(|(n, _)| n.clone()),
            };
            match chosen {
                None => self.out.errors.push(match &ing.service {
                    Some(s) => format!("config.ingress.service: no compose service {s}"),
                    None => "config.ingress: no service publishes a port; name one with config.ingress.service".into(),
                }),
                Some(svc_name) => {
                    let port = ing
                        .port
                        .or_else(|| self.port_of[&svc_name].iter().find(|p| p.protocol == "tcp").map(|p| p.target));
                    match port {
                        None => self.out.errors.push(format!("config.ingress: service {svc_name} has no TCP port")),
                        Some(port) => {
                            let label = dns_label(&svc_name);
                            // The canary's Ingress routes the weight the driver sets to the
                            // canary's Service (ingress-nginx canary annotations).
                            let name = if self.canary() { format!("{label}-canary") } else { label.clone() };
                            let mut spec = json!({"rules": [{"host": ing.host, "http": {"paths": [{
                            "path": ing.path, "pathType": "Prefix",
                            "backend": {"service": {"name": name, "port": {"number": port}}}}]}}]});
                            if let Some(cls) = &ing.class {
                                spec["ingressClassName"] = json!(cls);
                            }
                            if let Some(t) = &ing.tls_secret {
                                spec["tls"] = json!([{"hosts": [ing.host], "secretName": t}]);
                            }
                            let mut metadata = meta(&name, ns, &self.labels(Some(&label)));
                            if self.canary() {
                                metadata["annotations"] = json!({"nginx.ingress.kubernetes.io/canary": "true",
                                    "nginx.ingress.kubernetes.io/canary-weight": "0"});
                            }
                            self.push(
                                "Ingress",
                                &name,
                                json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                                   "metadata": metadata, "spec": spec}),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Every object as one multi-document YAML stream (`kubectl apply -f -` takes it).
pub fn stream(r: &Rendered) -> String {
    r.files.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every awesome-compose project converts without a panic, and every error it reports is
    /// a true one: a service Kubernetes cannot run as written (no image, host networking,
    /// host devices).
    #[test]
    fn awesome_compose_converts_without_false_errors() {
        let root = dockfra_common::shared_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .join("corpus/awesome-compose");
        let Ok(dirs) = std::fs::read_dir(&root) else {
            panic!("corpus missing at {}", root.display());
        };
        let env = BTreeMap::new();
        let opts = dockfra_common::compose::LoadOptions { project_name: None, overrides: &env, use_process_env: false };
        let cfg = KubernetesConfig::default();
        let (mut converted, mut errors) = (0, Vec::new());
        for d in dirs.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            let Some(file) = dockfra_common::compose::find_compose_file(&d) else { continue };
            let Ok(project) = dockfra_common::compose::load(&file, &opts) else { continue };
            let dir = file.parent().unwrap().to_path_buf();
            let files = |p: &str| std::fs::read(dir.join(p)).ok();
            let o = Options { app: project.name.clone(), release: None, config: &cfg, slot: None, track: None };
            let r = convert(&project.model, &o, &files);
            assert!(!r.files.is_empty() || !r.errors.is_empty(), "{}: nothing rendered", d.display());
            for f in &r.files {
                let _: serde_yaml_ng::Value = serde_yaml_ng::from_str(&f.1).unwrap();
            }
            errors.extend(r.errors.iter().map(|e| format!("{}: {e}", d.display())));
            converted += 1;
        }
        assert!(converted >= 30, "only {converted} corpus projects loaded");
        let true_errors = ["key network_mode: host networking"];
        for e in &errors {
            assert!(true_errors.iter().any(|t| e.contains(t)), "false error: {e}");
        }
    }
}
