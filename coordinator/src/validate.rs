//! `validate`: what would stop a deploy, found before one starts. It reads the project
//! (`deploy-targets.yaml`) and, per target, the compose file resolved with that target's
//! variables, and reports findings that name the file, the target, the service and the key:
//! host ports published twice (within an app, and by two apps on one agent), variables that
//! are not set, volumes, networks, configs and secrets referenced but not defined, secret files
//! and env files that are missing, secrets written as plain environment values, images without
//! a tag or digest, and compose keys the target's platform ignores or cannot honour.
//!
//! Errors are what a deploy would refuse or what `docker compose` would refuse; warnings are
//! what deploys but is probably not what was meant. It never dials anything and never writes.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};

use dockfra_common::compose;
use dockfra_common::config::{self, Platform, PlatformConfig, Project, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One thing `validate` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Finding {
    pub severity: Severity,
    /// The file it is about.
    #[schema(value_type = String)]
    pub file: PathBuf,
    /// The targets it applies to (empty: the file alone, no target).
    pub targets: Vec<String>,
    pub service: Option<String>,
    /// The YAML key path, e.g. `services.web.ports[0]`.
    pub key: Option<String>,
    pub message: String,
    /// What to do about it.
    pub fix: Option<String>,
}

/// Everything found, errors first.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct Report {
    pub errors: usize,
    pub warnings: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    fn from(mut findings: Vec<Finding>) -> Report {
        // One finding per defect: the same one found for several targets names them all.
        let mut merged: Vec<Finding> = Vec::new();
        for f in findings.drain(..) {
            match merged.iter_mut().find(|m| {
                m.severity == f.severity
                    && m.file == f.file
                    && m.service == f.service
                    && m.key == f.key
                    && m.message == f.message
            }) {
                Some(m) => {
                    for t in f.targets {
                        if !m.targets.contains(&t) {
                            m.targets.push(t);
                        }
                    }
                }
                None => merged.push(f),
            }
        }
        merged.sort_by_key(|f| f.severity);
        let errors = merged.iter().filter(|f| f.severity == Severity::Error).count();
        Report { errors, warnings: merged.len() - errors, findings: merged }
    }
}

struct Found<'a> {
    file: &'a Path,
    target: Option<&'a str>,
    out: Vec<Finding>,
}

impl Found<'_> {
    fn push(
        &mut self,
        severity: Severity,
        service: Option<&str>,
        key: Option<String>,
        message: String,
        fix: Option<&str>,
    ) {
        self.out.push(Finding {
            severity,
            file: self.file.to_path_buf(),
            targets: self.target.map(|t| vec![t.to_string()]).unwrap_or_default(),
            service: service.map(str::to_string),
            key,
            message,
            fix: fix.map(str::to_string),
        });
    }
    fn error(&mut self, service: Option<&str>, key: String, message: String, fix: Option<&str>) {
        self.push(Severity::Error, service, Some(key), message, fix);
    }
    fn warn(&mut self, service: Option<&str>, key: String, message: String, fix: Option<&str>) {
        self.push(Severity::Warning, service, Some(key), message, fix);
    }
}

/// Validate the projects in `roots` (each holding `deploy-targets.yaml`), as `serve --root …`
/// would serve them together.
pub fn projects(files: &[PathBuf]) -> Report {
    let mut out = Vec::new();
    let list = match config::Projects::load(files) {
        Ok(p) => p,
        Err(e) => return Report::from(vec![config_finding(&e)]),
    };
    let mut published: Vec<(String, String, Vec<Published>)> = Vec::new();
    for (project, target) in list.targets() {
        let (findings, ports) = target_findings(project, target);
        out.extend(findings);
        published.push((target.agent_name().to_string(), target.id.clone(), ports));
    }
    // Two apps on one agent: one host port each.
    for (i, (agent, id, ports)) in published.iter().enumerate() {
        for (other_agent, other_id, other_ports) in &published[..i] {
            if agent != other_agent {
                continue;
            }
            for p in ports {
                if let Some(q) = other_ports.iter().find(|q| p.clashes(q)) {
                    out.push(Finding {
                        severity: Severity::Error,
                        file: p.file.clone(),
                        targets: vec![id.clone()],
                        service: Some(p.service.clone()),
                        key: Some(p.key.clone()),
                        message: format!(
                            "host port {} on agent {agent:?} is also published by target {other_id:?} (service {:?}, {} in {})",
                            p.shown(),
                            q.service,
                            q.key,
                            q.file.display()
                        ),
                        fix: Some("publish one of them on another host port".into()),
                    });
                }
            }
        }
    }
    Report::from(out)
}

/// Validate one compose file alone (no project): `validate -f FILE`, or a directory without
/// `deploy-targets.yaml`.
pub fn compose_file(file: &Path) -> Report {
    let mut found = Found { file, target: None, out: Vec::new() };
    let env = BTreeMap::new();
    compose_checks(&mut found, file, None, &env, None, None);
    Report::from(found.out)
}

fn config_finding(e: &config::ConfigError) -> Finding {
    let message = match e {
        config::ConfigError::Invalid { message, .. } => message.clone(),
        other => bare(&other.to_string(), other.file(), None),
    };
    let key = match (e.target(), e.key()) {
        (Some(t), Some(k)) if !k.is_empty() => Some(format!("targets.{t}.{k}")),
        (Some(t), _) => Some(format!("targets.{t}")),
        (None, Some(k)) if !k.is_empty() => Some(k.to_string()),
        _ => None,
    };
    Finding {
        severity: Severity::Error,
        file: e.file().to_path_buf(),
        targets: e.target().map(|t| vec![t.to_string()]).unwrap_or_default(),
        service: None,
        key,
        message,
        fix: Some("see docs/CONFIGURATION.md for the key".into()),
    }
}

/// An error's text without the file and key it starts with (a finding shows them itself).
fn bare(text: &str, file: &Path, key: Option<&str>) -> String {
    let mut t = text.strip_prefix(&format!("{}: ", file.display())).unwrap_or(text);
    if let Some(k) = key {
        t = t.strip_prefix(&format!("key {k:?}: ")).unwrap_or(t);
    }
    t.to_string()
}

fn target_findings(project: &Project, target: &Target) -> (Vec<Finding>, Vec<Published>) {
    let mut found = Found { file: &project.file, target: Some(&target.id), out: Vec::new() };
    let app_dir = &project.app.path;
    if !app_dir.is_dir() {
        found.error(
            None,
            "app.path".into(),
            format!("the app dir {} is not a directory", app_dir.display()),
            Some("set app.path to the directory holding the app (default: the directory of deploy-targets.yaml)"),
        );
        return (found.out, Vec::new());
    }
    let (ships, registry) = match &target.config {
        PlatformConfig::DockerCompose { ship_images, registry, .. } => (*ship_images, registry.is_some()),
        PlatformConfig::Swarm { ship_images, registry, .. } => (*ship_images, registry.is_some()),
        PlatformConfig::Podman { ship_images, registry, .. } => (*ship_images, registry.is_some()),
        _ => (false, false),
    };
    if target.platform == Platform::SshRaw {
        return (found.out, Vec::new());
    }
    // Every other platform is rendered from the compose file.
    let Some(file) = compose::find_compose_file(app_dir) else {
        found.error(
            None,
            format!("targets.{}.platform", target.id),
            format!("platform {} needs a compose.yaml or docker-compose.yml in {}", target.platform, app_dir.display()),
            Some("add the compose file, or choose platform: ssh_raw for plain files"),
        );
        return (found.out, Vec::new());
    };
    let ports = match target.platform {
        Platform::Kubernetes | Platform::Nomad => {
            conversion_findings(&mut found, project, target, &file);
            return (found.out, Vec::new());
        }
        _ => {
            // Named as the builder names it.
            let named = match &target.config {
                PlatformConfig::DockerCompose { compose_project: Some(p), .. }
                | PlatformConfig::Podman { compose_project: Some(p), .. }
                | PlatformConfig::Swarm { stack_name: Some(p), .. } => Some(p.clone()),
                _ if has_name(&file) => None,
                _ => Some(compose::normalize_project_name(&project.app.name)),
            };
            let env = match crate::envs::overrides(project, target) {
                Ok(e) => e,
                Err(e) => {
                    let file = crate::envs::env_dir(project)
                        .join(format!(".env.{}", crate::envs::environment(target).unwrap_or("")));
                    found.out.push(Finding {
                        severity: Severity::Error,
                        file,
                        targets: vec![target.id.clone()],
                        service: None,
                        key: None,
                        message: format!("{e:#}"),
                        fix: Some("KEY=VALUE lines, `#` comments (the .env syntax of Compose)".into()),
                    });
                    return (found.out, Vec::new());
                }
            };
            let mut inner = Found { file: &file, target: Some(&target.id), out: Vec::new() };
            let ports =
                compose_checks(&mut inner, &file, named.as_deref(), &env, Some(target), Some(ships || registry));
            found.out.extend(inner.out);
            slot_findings(&mut found, project, target, &file, &env);
            ports
        }
    };
    (found.out, ports)
}

/// `strategy: blue-green | canary` on a compose target: what the builder would refuse when it
/// doubles the fronted services (a `container_name`, a UDP port, nothing published, …).
fn slot_findings(
    found: &mut Found,
    project: &Project,
    target: &Target,
    file: &Path,
    env: &std::collections::BTreeMap<String, String>,
) {
    let (slots, aliases) = match &target.config {
        PlatformConfig::DockerCompose { slots: Some(s), .. } => (s, true),
        PlatformConfig::Podman { slots: Some(s), .. } => (s, false),
        _ => return,
    };
    // A file that does not load is reported by the compose checks above.
    let Ok((mut cp, _)) = crate::envs::load_as_app(file, Some(&project.app.name), env) else { return };
    if let Err(e) = crate::builder::for_slots(&mut cp.model, slots, &target.id, aliases) {
        found.error(
            None,
            format!("targets.{}.config.strategy", target.id),
            format!("{e:#}"),
            Some("front only services that can run twice side by side (config.proxy.services), or use strategy: recreate"),
        );
    }
}

/// What `convert` would lose for a kubernetes or nomad target: its errors and warnings as
/// findings on the compose file, with the service and key they name.
fn conversion_findings(found: &mut Found, project: &Project, target: &Target, file: &Path) {
    let env = crate::envs::overrides(project, target).unwrap_or_default();
    // A file that does not load is reported by the compose checks of other platforms; here
    // there is nothing to convert.
    let Ok((cp, _)) = crate::envs::load_as_app(file, Some(&project.app.name), &env) else { return };
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let files = |p: &str| std::fs::read(dir.join(p)).ok();
    let r = match &target.config {
        PlatformConfig::Kubernetes(c) => {
            let o = crate::convert::k8s::Options {
                app: project.app.name.clone(),
                release: None,
                config: c,
                slot: None,
                track: None,
            };
            crate::convert::k8s::convert(&cp.model, &o, &files)
        }
        PlatformConfig::Nomad(c) => {
            let o = crate::convert::nomad::Options { app: project.app.name.clone(), release: None, config: c };
            crate::convert::nomad::convert(&cp.model, &o, &files)
        }
        _ => return,
    };
    let mut inner = Found { file, target: Some(&target.id), out: Vec::new() };
    let split = |m: &str| -> (Option<String>, Option<String>, String) {
        // `service S: key K: why`
        if let Some(rest) = m.strip_prefix("service ") {
            if let Some((svc, rest)) = rest.split_once(": key ") {
                if let Some((key, why)) = rest.split_once(": ") {
                    return (Some(svc.to_string()), Some(format!("services.{svc}.{key}")), why.to_string());
                }
            }
        }
        (None, None, m.to_string())
    };
    for (sev, list) in [(Severity::Error, &r.errors), (Severity::Warning, &r.warnings)] {
        for m in list {
            let (svc, key, why) = split(m);
            let fix = (sev == Severity::Error)
                .then_some("change the service, or accept the loss with the target's config.allow");
            inner.push(sev, svc.as_deref(), key, format!("{} conversion: {why}", target.platform), fix);
        }
    }
    found.out.extend(inner.out);
}

/// A host port a service publishes.
#[derive(Debug, Clone)]
pub(crate) struct Published {
    pub file: PathBuf,
    pub service: String,
    pub key: String,
    pub ip: String,
    pub first: u16,
    pub last: u16,
    pub protocol: String,
    pub profiles: Vec<String>,
}

/// The host ports a resolved compose model publishes (entries that do not parse are left
/// out: `validate` reports them).
pub(crate) fn published_ports(model: &Value) -> Vec<Published> {
    let mut out = Vec::new();
    let Some(Value::Mapping(services)) = model.get("services") else { return out };
    for (name, svc) in services {
        let Some(name) = name.as_str() else { continue };
        let Some(Value::Sequence(ports)) = svc.get("ports") else { continue };
        for (i, p) in ports.iter().enumerate() {
            if let Ok(Some((ip, first, last, protocol))) = parse_port(p) {
                out.push(Published {
                    file: PathBuf::new(),
                    service: name.to_string(),
                    key: format!("services.{name}.ports[{i}]"),
                    ip,
                    first,
                    last,
                    protocol,
                    profiles: Vec::new(),
                });
            }
        }
    }
    out
}

impl Published {
    fn clashes(&self, o: &Published) -> bool {
        let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        let together = self.profiles.is_empty() && o.profiles.is_empty()
            || self.profiles.iter().any(|p| o.profiles.contains(p))
            || self.profiles.is_empty() != o.profiles.is_empty();
        self.protocol == o.protocol
            && self.first <= o.last
            && o.first <= self.last
            && (self.ip == o.ip || any(&self.ip) || any(&o.ip))
            && together
    }
    pub(crate) fn shown(&self) -> String {
        let ports =
            if self.first == self.last { self.first.to_string() } else { format!("{}-{}", self.first, self.last) };
        let ip = if self.ip.is_empty() { String::new() } else { format!("{}:", self.ip) };
        format!("{ip}{ports}/{}", self.protocol)
    }
}

/// The checks on one compose file, with `env` as the target's variables. `can_carry`: whether
/// the target carries built images (None: no target, `build:` is fine).
fn compose_checks(
    found: &mut Found,
    file: &Path,
    project_name: Option<&str>,
    env: &BTreeMap<String, String>,
    target: Option<&Target>,
    can_carry: Option<bool>,
) -> Vec<Published> {
    let opts = compose::LoadOptions { project_name, overrides: env, use_process_env: false };
    let project = match compose::load(file, &opts) {
        Ok(p) => p,
        Err(e) => {
            let service = e.key().and_then(service_of);
            found.out.push(Finding {
                severity: Severity::Error,
                file: e.file().to_path_buf(),
                targets: found.target.map(|t| vec![t.to_string()]).unwrap_or_default(),
                service,
                key: e.key().map(str::to_string),
                message: bare(&e.to_string(), e.file(), e.key()),
                fix: None,
            });
            return Vec::new();
        }
    };
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    unset_variables(found, file, &dir, env);
    let model = &project.model;
    let section = |name: &str| -> BTreeSet<String> {
        match model.get(name) {
            Some(Value::Mapping(m)) => m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect(),
            _ => BTreeSet::new(),
        }
    };
    let (volumes, networks, secrets, configs) =
        (section("volumes"), section("networks"), section("secrets"), section("configs"));
    for (kind, names) in [("secrets", &secrets), ("configs", &configs)] {
        for name in names {
            let Some(def) = model.get(kind).and_then(|s| s.get(name.as_str())) else { continue };
            if let Some(f) = def.get("file").and_then(Value::as_str) {
                let p = dir.join(f);
                if !p.exists() {
                    found.error(
                        None,
                        format!("{kind}.{name}.file"),
                        format!("{} file {f:?} does not exist (looked for {})", &kind[..kind.len() - 1], p.display()),
                        Some("create the file, or point `file:` at it (relative paths start at the compose file's directory)"),
                    );
                }
            }
        }
    }
    let raw = raw_services(file);
    let mut published: Vec<Published> = Vec::new();
    let Some(Value::Mapping(services)) = model.get("services") else { return published };
    for (name, svc) in services {
        let (Some(name), Value::Mapping(svc)) = (name.as_str(), svc) else { continue };
        let base = format!("services.{name}");
        let profiles: Vec<String> = svc
            .get("profiles")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        // Ports.
        if let Some(Value::Sequence(ports)) = svc.get("ports") {
            for (i, p) in ports.iter().enumerate() {
                let key = format!("{base}.ports[{i}]");
                match parse_port(p) {
                    Ok(Some((ip, first, last, protocol))) => {
                        let me = Published {
                            file: file.to_path_buf(),
                            service: name.to_string(),
                            key: key.clone(),
                            ip,
                            first,
                            last,
                            protocol,
                            profiles: profiles.clone(),
                        };
                        if let Some(q) = published.iter().find(|q| q.clashes(&me)) {
                            let same = q.service == me.service;
                            found.error(
                                Some(name),
                                key,
                                format!(
                                    "host port {} is also published by {} ({})",
                                    me.shown(),
                                    if same { "this service".to_string() } else { format!("service {:?}", q.service) },
                                    q.key
                                ),
                                Some("publish one of them on another host port"),
                            );
                        }
                        published.push(me);
                    }
                    Ok(None) => {}
                    Err(why) => found.error(
                        Some(name),
                        key,
                        why,
                        Some("write it as [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]"),
                    ),
                }
            }
        }
        // Named volumes, bind mounts.
        if let Some(Value::Sequence(vols)) = svc.get("volumes") {
            for (i, v) in vols.iter().enumerate() {
                let key = format!("{base}.volumes[{i}]");
                match mount_source(v) {
                    Mount::Volume(n) if !volumes.contains(&n) => found.error(
                        Some(name),
                        key,
                        format!("service {name:?} refers to undefined volume {n:?}"),
                        Some("define it under the top-level `volumes:`, or write a path (./dir) for a bind mount"),
                    ),
                    Mount::Bind(src) if target.is_some() => bind_checks(found, name, key, &dir, &src),
                    _ => {}
                }
            }
        }
        // Networks.
        let nets: Vec<String> = match svc.get("networks") {
            Some(Value::Sequence(s)) => s.iter().filter_map(|n| n.as_str().map(str::to_string)).collect(),
            Some(Value::Mapping(m)) => m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        for n in nets {
            if n != "default" && !networks.contains(&n) {
                found.error(
                    Some(name),
                    format!("{base}.networks.{n}"),
                    format!("service {name:?} refers to undefined network {n:?}"),
                    Some("define it under the top-level `networks:`"),
                );
            }
        }
        // Configs and secrets.
        for (kind, defined) in [("secrets", &secrets), ("configs", &configs)] {
            let Some(Value::Sequence(refs)) = svc.get(kind) else { continue };
            for (i, r) in refs.iter().enumerate() {
                let source = match r {
                    Value::String(s) => Some(s.clone()),
                    Value::Mapping(m) => m.get("source").and_then(Value::as_str).map(str::to_string),
                    _ => None,
                };
                match source {
                    Some(s) if !defined.contains(&s) => found.error(
                        Some(name),
                        format!("{base}.{kind}[{i}]"),
                        format!("service {name:?} refers to undefined {} {s:?}", &kind[..kind.len() - 1]),
                        Some(&format!("define it under the top-level `{kind}:`")),
                    ),
                    None => found.error(
                        Some(name),
                        format!("{base}.{kind}[{i}]"),
                        "expected a name, or a mapping with `source:`".into(),
                        None,
                    ),
                    _ => {}
                }
            }
        }
        // env_file.
        env_file_checks(found, name, &base, &dir, svc.get("env_file"));
        // Secrets written into the file.
        if let Some(Value::Mapping(raw_env)) = raw.get(name).and_then(|s| s.get("environment")).map(env_mapping) {
            for (k, v) in &raw_env {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else { continue };
                if looks_secret(k) && !v.is_empty() && !v.contains('$') {
                    found.warn(
                        Some(name),
                        format!("{base}.environment.{k}"),
                        format!("{k} looks like a secret and is written in the file as a plain value"),
                        Some(
                            "move it to a `secrets:` entry, or to a variable (${VAR}) set in .env or the target's env:",
                        ),
                    );
                }
            }
        }
        // Images.
        let has_build = svc.contains_key("build");
        match (svc.get("image").and_then(Value::as_str), has_build) {
            (None, false) => found.error(
                Some(name),
                base.clone(),
                format!("service {name:?} has no `image:` and no `build:`"),
                Some("name the image to run, or how to build it"),
            ),
            (Some(img), false) => {
                if let Some(why) = untagged(img) {
                    found.warn(
                        Some(name),
                        format!("{base}.image"),
                        format!("image {img:?} {why}: each deploy may run a different image"),
                        Some("pin a version tag or a digest (image@sha256:…)"),
                    );
                }
            }
            _ => {}
        }
        if has_build && can_carry == Some(false) {
            found.error(
                Some(name),
                format!("{base}.build"),
                format!("service {name:?} is built from source, but nothing would carry the image to the target"),
                Some("set `images: bundle` in the target's config (or `registry: HOST[:PORT]` on docker_compose and swarm)"),
            );
        }
        if let Some(t) = target {
            platform_keys(found, t, name, &base, svc);
        }
    }
    if let Some(PlatformConfig::Podman { use_quadlet: true, pod_name, .. }) = target.map(|t| &t.config) {
        let opts = crate::convert::quadlet::Options { project: project.name.clone(), pod: pod_name.clone() };
        for w in crate::convert::quadlet::convert(model, &opts).warnings {
            // "service NAME: key KEY: why"
            let (service, key, why) = match w.strip_prefix("service ").and_then(|r| r.split_once(": key ")) {
                Some((s, rest)) => match rest.split_once(": ") {
                    Some((k, why)) => (Some(s.to_string()), Some(format!("services.{s}.{k}")), why.to_string()),
                    None => (Some(s.to_string()), None, rest.to_string()),
                },
                None => (None, None, w.clone()),
            };
            found.push(Severity::Warning, service.as_deref(), key, format!("Quadlet (use_quadlet: true): {why}"), None);
        }
    }
    published
}

/// Whether the compose file names its project (`name:`).
pub(crate) fn has_name(file: &Path) -> bool {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    serde_yaml_ng::from_str::<Value>(&text).map(|v| v.get("name").is_some()).unwrap_or(false)
}

/// The YAML key path's service: `services.web.ports[0]` → `web`.
fn service_of(key: &str) -> Option<String> {
    let rest = key.strip_prefix("services.")?;
    let end = rest.find(['.', '[']).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// The main file's services as written (before interpolation), to tell a value written in the
/// file from one that comes from a variable.
fn raw_services(file: &Path) -> Mapping {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let v: Value = serde_yaml_ng::from_str(&text).unwrap_or(Value::Null);
    match v.get("services") {
        Some(Value::Mapping(m)) => m.clone(),
        _ => Mapping::new(),
    }
}

/// `environment:` as a mapping, from either of its forms.
fn env_mapping(v: &Value) -> Value {
    match v {
        Value::Sequence(items) => {
            let mut m = Mapping::new();
            for i in items {
                if let Some(s) = i.as_str() {
                    let (k, v) = s.split_once('=').unwrap_or((s, ""));
                    m.insert(k.into(), v.into());
                }
            }
            Value::Mapping(m)
        }
        Value::Mapping(m) => Value::Mapping(
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Number(n) => Value::String(n.to_string()),
                        Value::Bool(b) => Value::String(b.to_string()),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Names that hold secrets by convention; `*_FILE` names a file (Docker's secrets idiom).
pub(crate) fn looks_secret(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    if k.ends_with("_FILE") || k.ends_with("_PATH") || k.ends_with("_USER") || k.ends_with("_USERNAME") {
        return false;
    }
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "API_KEY", "APIKEY", "PRIVATE_KEY", "ACCESS_KEY"]
        .iter()
        .any(|w| k.contains(w))
}

/// Why an image reference is not pinned, if it is not.
fn untagged(image: &str) -> Option<&'static str> {
    if image.contains('@') {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Some("has no tag (Docker takes :latest)"),
        Some((_, "latest")) => Some("is tagged :latest"),
        Some(_) => None,
    }
}

/// A short or long `ports:` entry: `None` when no host port is published, else (host IP,
/// first and last host port, protocol).
fn parse_port(v: &Value) -> Result<Option<(String, u16, u16, String)>, String> {
    let range = |s: &str| -> Result<(u16, u16), String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let p = |x: &str| x.trim().parse::<u16>().map_err(|_| format!("{s:?} is not a port or a port range"));
        let (a, b) = (p(a)?, p(b)?);
        if a > b || a == 0 {
            return Err(format!("{s:?} is not a port range"));
        }
        Ok((a, b))
    };
    match v {
        Value::Number(_) => Ok(None),
        Value::String(s) => {
            let (spec, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
            let Some((host, container)) = spec.rsplit_once(':') else {
                range(spec)?;
                return Ok(None);
            };
            range(container)?;
            let (ip, port) = match host.rsplit_once(':') {
                Some((ip, port)) => (ip.trim_start_matches('[').trim_end_matches(']').to_string(), port),
                None => (String::new(), host),
            };
            if port.is_empty() {
                return Ok(None);
            }
            let (a, b) = range(port)?;
            Ok(Some((ip, a, b, protocol.to_string())))
        }
        Value::Mapping(m) => {
            let published = match m.get("published") {
                None | Some(Value::Null) => return Ok(None),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(_) => return Err("`published:` must be a port or a port range".into()),
            };
            if published.is_empty() {
                return Ok(None);
            }
            let (a, b) = range(&published)?;
            let ip = m.get("host_ip").and_then(Value::as_str).unwrap_or("").to_string();
            let protocol = m.get("protocol").and_then(Value::as_str).unwrap_or("tcp").to_string();
            Ok(Some((ip, a, b, protocol)))
        }
        _ => Err("expected a string or a mapping".into()),
    }
}

enum Mount {
    Volume(String),
    Bind(String),
    Other,
}

/// What a `volumes:` entry of a service mounts.
fn mount_source(v: &Value) -> Mount {
    let is_path = |s: &str| s.starts_with('.') || s.starts_with('/') || s.starts_with('~') || s.starts_with('$');
    match v {
        Value::String(s) => match s.split_once(':') {
            Some((src, _)) if is_path(src) => Mount::Bind(src.to_string()),
            Some((src, _)) if !src.is_empty() => Mount::Volume(src.to_string()),
            _ => Mount::Other,
        },
        Value::Mapping(m) => {
            let src = m.get("source").and_then(Value::as_str).map(str::to_string);
            match (m.get("type").and_then(Value::as_str), src) {
                (Some("volume"), Some(s)) if !s.is_empty() => Mount::Volume(s),
                (Some("bind"), Some(s)) => Mount::Bind(s),
                _ => Mount::Other,
            }
        }
        _ => Mount::Other,
    }
}

/// A relative bind mount deploys from the release dir: it must stay inside the app.
fn bind_checks(found: &mut Found, service: &str, key: String, dir: &Path, src: &str) {
    if src.starts_with('/') || src.starts_with('~') || src.starts_with('$') {
        return;
    }
    let rel = Path::new(src);
    let mut depth: i32 = 0;
    for c in rel.components() {
        match c {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            found.error(
                Some(service),
                key,
                format!("bind mount {src:?} reaches outside the app dir, which is all a bundle carries"),
                Some("move what it mounts into the app dir, or mount an absolute path that exists on the target"),
            );
            return;
        }
    }
    if !dir.join(rel).exists() {
        found.warn(
            Some(service),
            key,
            format!("bind mount source {src:?} is not in the app dir; the engine will mount an empty directory"),
            Some("add it to the app, or mount an absolute path that exists on the target"),
        );
    }
}

fn env_file_checks(found: &mut Found, service: &str, base: &str, dir: &Path, v: Option<&Value>) {
    let entries: Vec<(String, bool)> = match v {
        Some(Value::String(s)) => vec![(s.clone(), true)],
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some((s.clone(), true)),
                Value::Mapping(m) => m
                    .get("path")
                    .and_then(Value::as_str)
                    .map(|p| (p.to_string(), m.get("required").and_then(Value::as_bool).unwrap_or(true))),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for (i, (path, required)) in entries.into_iter().enumerate() {
        if required && !dir.join(&path).is_file() {
            let key = if matches!(v, Some(Value::String(_))) {
                format!("{base}.env_file")
            } else {
                format!("{base}.env_file[{i}]")
            };
            found.error(
                Some(service),
                key,
                format!("env file {path:?} does not exist (looked in {})", dir.display()),
                Some("create it, or mark it optional (`- path: FILE` with `required: false`)"),
            );
        }
    }
}

/// Variables the file uses that nothing sets: each with the key that uses it.
fn unset_variables(found: &mut Found, file: &Path, dir: &Path, env: &BTreeMap<String, String>) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let Ok(raw) = serde_yaml_ng::from_str::<Value>(&text) else { return };
    let dotenv = std::fs::read_to_string(dir.join(".env"))
        .ok()
        .and_then(|t| compose::parse_env_file_with(&t, &|k| env.get(k).cloned()).ok())
        .unwrap_or_default();
    let lookup = |k: &str| {
        if k == "COMPOSE_PROJECT_NAME" {
            return Some(String::new());
        }
        env.get(k).or_else(|| dotenv.get(k)).cloned()
    };
    let mut seen = BTreeSet::new();
    let mut path = Vec::new();
    walk_strings(&raw, &mut path, &mut |key, s| {
        if !s.contains('$') {
            return;
        }
        let mut unset = BTreeSet::new();
        let _ = compose::interpolate_collect(s, &lookup, &mut unset);
        for v in unset {
            if seen.insert(v.clone()) {
                let service = service_of(key);
                found.warn(
                    service.as_deref(),
                    key.to_string(),
                    format!("variable {v:?} is not set; it becomes an empty string"),
                    Some("set it in the app's .env or the target's env:, or give a default (${VAR:-default})"),
                );
            }
        }
    });
}

fn walk_strings(v: &Value, path: &mut Vec<String>, f: &mut dyn FnMut(&str, &str)) {
    match v {
        Value::String(s) => f(&compose::join_path(path), s),
        Value::Sequence(items) => {
            for (i, x) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                walk_strings(x, path, f);
                path.pop();
            }
        }
        Value::Mapping(m) => {
            for (k, x) in m {
                path.push(k.as_str().map(str::to_string).unwrap_or_else(|| format!("{k:?}")));
                walk_strings(x, path, f);
                path.pop();
            }
        }
        Value::Tagged(t) => walk_strings(&t.value, path, f),
        _ => {}
    }
}

/// Keys each platform ignores or refuses, with what happens.
fn platform_keys(found: &mut Found, target: &Target, service: &str, base: &str, svc: &Mapping) {
    let ignored: &[(&str, &str)] = match target.platform {
        Platform::Swarm => &[
            ("container_name", "swarm names tasks itself"),
            ("restart", "swarm uses deploy.restart_policy"),
            ("links", "use networks instead"),
            ("external_links", "use networks instead"),
            ("network_mode", "services on a swarm join overlay networks"),
            ("devices", "not supported by docker stack deploy"),
            ("cgroup_parent", "not supported by docker stack deploy"),
            ("userns_mode", "not supported by docker stack deploy"),
            ("security_opt", "not supported by docker stack deploy"),
        ],
        _ => &[],
    };
    for (key, why) in ignored {
        if svc.contains_key(*key) {
            found.warn(
                Some(service),
                format!("{base}.{key}"),
                format!("platform {} ignores `{key}`: {why}", target.platform),
                None,
            );
        }
    }
    if target.platform == Platform::DockerCompose {
        if let Some(Value::Mapping(deploy)) = svc.get("deploy") {
            for key in ["placement", "update_config", "rollback_config", "endpoint_mode"] {
                if deploy.contains_key(key) {
                    found.warn(
                        Some(service),
                        format!("{base}.deploy.{key}"),
                        format!("platform docker_compose ignores `deploy.{key}` (a swarm setting)"),
                        Some("deploy this app to a swarm target, or drop the key"),
                    );
                }
            }
        }
    }
    // `platform: os/arch` against the target's declared os.
    if let (Some(p), Some(os)) = (svc.get("platform").and_then(Value::as_str), target.os.as_deref()) {
        let want = p.split('/').next().unwrap_or("");
        let host_os = if os == "wsl" { "linux" } else { os };
        let runs = want == host_os || (want == "linux" && host_os == "macos");
        if !runs {
            found.error(
                Some(service),
                format!("{base}.platform"),
                format!("service {service:?} asks for platform {p:?}, which a target with os: {os} cannot run"),
                Some("choose the image for the target's OS, or deploy it to a target that runs it"),
            );
        }
        if let (Some(arch), Some(label)) = (p.split('/').nth(1), target.labels.get("arch")) {
            let norm = |a: &str| match a {
                "x86_64" => "amd64".to_string(),
                "aarch64" => "arm64".to_string(),
                "armv7" | "armhf" | "armv7l" => "arm".to_string(),
                a => a.to_string(),
            };
            if norm(arch) != norm(label) {
                found.warn(
                    Some(service),
                    format!("{base}.platform"),
                    format!("service {service:?} asks for {p:?}, but the target is labelled arch={label}; it runs under emulation, if at all"),
                    Some("use a multi-arch image and drop `platform:`"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A project in a fresh temp dir: (relative path, content) pairs.
    fn project(files: &[(&str, &str)]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dockfra-validate-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (rel, text) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    const TARGETS: &str = "targets:\n  vps:\n    host: 127.0.0.1\n    platform: docker_compose\n    os: linux\n";

    fn run(compose: &str, extra: &[(&str, &str)]) -> Report {
        let mut files = vec![("deploy-targets.yaml", TARGETS), ("compose.yaml", compose)];
        files.extend_from_slice(extra);
        let dir = project(&files);
        let r = projects(&[dir.join("deploy-targets.yaml")]);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn kubernetes_and_nomad_targets_get_the_conversions_losses() {
        let compose =
            "services:\n  probe:\n    image: example/probe:1\n    network_mode: host\n    logging: {driver: syslog}\n";
        let targets = "targets:\n  k:\n    platform: kubernetes\n  n:\n    platform: nomad\n  k2:\n    platform: kubernetes\n    config: {allow: [network_mode]}\n";
        let dir = project(&[("deploy-targets.yaml", targets), ("compose.yaml", compose)]);
        let r = projects(&[dir.join("deploy-targets.yaml")]);
        let _ = std::fs::remove_dir_all(&dir);
        let find = |target: &str, sev: Severity, key: &str| {
            r.findings.iter().any(|f| {
                f.severity == sev
                    && f.targets.iter().any(|t| t == target)
                    && f.key.as_deref() == Some(key)
                    && f.service.as_deref() == Some("probe")
                    && f.file.ends_with("compose.yaml")
            })
        };
        assert!(find("k", Severity::Error, "services.probe.network_mode"), "{:#?}", r.findings);
        assert!(find("k2", Severity::Warning, "services.probe.network_mode"), "allowed: a warning only");
        assert!(find("k", Severity::Warning, "services.probe.logging"), "{:#?}", r.findings);
        assert!(find("n", Severity::Warning, "services.probe.logging"), "{:#?}", r.findings);
        // Both deploy: no finding on the platform itself.
        assert!(
            !r.findings.iter().any(|f| f.key.as_deref().is_some_and(|k| k.ends_with(".platform"))),
            "{:#?}",
            r.findings
        );
    }

    /// The one error of a project with one defect, as (file name, service, key, message).
    fn one_error(r: &Report) -> (String, Option<String>, Option<String>, String) {
        let errors: Vec<&Finding> = r.findings.iter().filter(|f| f.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "one error expected: {:#?}", r.findings);
        let e = errors[0];
        let name = e.file.file_name().unwrap().to_string_lossy().to_string();
        (name, e.service.clone(), e.key.clone(), e.message.clone())
    }

    #[test]
    fn each_defect_gets_its_error_naming_file_service_and_key() {
        // (what, compose.yaml, file, service, key, what the message says)
        type Case<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, &'a str, &'a str);
        let cases: &[Case] = &[
            (
                "port published twice",
                "services:\n  a:\n    image: nginx:1.25\n    ports: [\"8080:80\"]\n  b:\n    image: nginx:1.25\n    ports: [\"8080:81\"]\n",
                "compose.yaml",
                Some("b"),
                "services.b.ports[0]",
                "also published by service \"a\"",
            ),
            (
                "undefined volume",
                "services:\n  db:\n    image: postgres:16\n    volumes: [\"data:/var/lib/postgresql/data\"]\n",
                "compose.yaml",
                Some("db"),
                "services.db.volumes[0]",
                "undefined volume \"data\"",
            ),
            (
                "undefined network",
                "services:\n  web:\n    image: nginx:1.25\n    networks: [front]\n",
                "compose.yaml",
                Some("web"),
                "services.web.networks.front",
                "undefined network \"front\"",
            ),
            (
                "undefined secret",
                "services:\n  web:\n    image: nginx:1.25\n    secrets: [db_password]\n",
                "compose.yaml",
                Some("web"),
                "services.web.secrets[0]",
                "undefined secret \"db_password\"",
            ),
            (
                "undefined config",
                "services:\n  web:\n    image: nginx:1.25\n    configs:\n      - source: site\n        target: /etc/site\n",
                "compose.yaml",
                Some("web"),
                "services.web.configs[0]",
                "undefined config \"site\"",
            ),
            (
                "secret file missing",
                "services:\n  web:\n    image: nginx:1.25\n    secrets: [pw]\nsecrets:\n  pw:\n    file: db/password.txt\n",
                "compose.yaml",
                None,
                "secrets.pw.file",
                "does not exist",
            ),
            (
                "env file missing",
                "services:\n  web:\n    image: nginx:1.25\n    env_file: web.env\n",
                "compose.yaml",
                Some("web"),
                "services.web.env_file",
                "env file \"web.env\" does not exist",
            ),
            (
                "required variable unset",
                "services:\n  web:\n    image: \"nginx:${TAG:?set TAG}\"\n",
                "compose.yaml",
                Some("web"),
                "services.web.image",
                "set TAG",
            ),
            (
                "bad port",
                "services:\n  web:\n    image: nginx:1.25\n    ports: [\"80:http\"]\n",
                "compose.yaml",
                Some("web"),
                "services.web.ports[0]",
                "is not a port",
            ),
            (
                "no image, no build",
                "services:\n  web:\n    command: [sleep, \"1\"]\n",
                "compose.yaml",
                Some("web"),
                "services.web",
                "no `image:` and no `build:`",
            ),
            (
                "built but not carried",
                "services:\n  web:\n    build: .\n",
                "compose.yaml",
                Some("web"),
                "services.web.build",
                "nothing would carry the image",
            ),
            (
                "platform the target cannot run",
                "services:\n  web:\n    image: mcr.microsoft.com/windows/nanoserver:ltsc2022\n    platform: windows/amd64\n",
                "compose.yaml",
                Some("web"),
                "services.web.platform",
                "cannot run",
            ),
            (
                "bind mount outside the app",
                "services:\n  web:\n    image: nginx:1.25\n    volumes: [\"../secrets:/s\"]\n",
                "compose.yaml",
                Some("web"),
                "services.web.volumes[0]",
                "outside the app dir",
            ),
            (
                "undefined dependency",
                "services:\n  web:\n    image: nginx:1.25\n    depends_on: [db]\n",
                "compose.yaml",
                Some("web"),
                "services.web.depends_on[0]",
                "undefined service \"db\"",
            ),
        ];
        for (what, compose, file, service, key, says) in cases {
            let r = run(compose, &[]);
            let (f, s, k, m) = one_error(&r);
            assert_eq!(&f, file, "{what}: file");
            assert_eq!(s.as_deref(), *service, "{what}: service ({m})");
            assert_eq!(k.as_deref(), Some(*key), "{what}: key ({m})");
            assert!(m.contains(says), "{what}: {m:?} should say {says:?}");
            assert_eq!(r.findings.iter().find(|f| f.severity == Severity::Error).unwrap().targets, ["vps"], "{what}");
        }
    }

    #[test]
    fn a_bad_deploy_targets_file_names_target_and_key() {
        let dir = project(&[
            (
                "deploy-targets.yaml",
                "targets:\n  vps:\n    platform: docker_compose\n    config:\n      images: tarball\n",
            ),
            ("compose.yaml", "services:\n  web:\n    image: nginx:1.25\n"),
        ]);
        let r = projects(&[dir.join("deploy-targets.yaml")]);
        let (f, _, k, m) = one_error(&r);
        assert_eq!(f, "deploy-targets.yaml");
        assert_eq!(k.as_deref(), Some("targets.vps.config.images"));
        assert!(m.contains("tarball"), "{m}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn warnings_name_what_deploys_but_was_not_meant() {
        let r = run(
            "services:\n  web:\n    image: nginx\n    environment:\n      DB_PASSWORD: hunter2\n      API_TOKEN: ${TOKEN}\n      DB_PASSWORD_FILE: /run/secrets/pw\n    labels: [\"v=${UNSET_VAR}\"]\n",
            &[],
        );
        assert_eq!(r.errors, 0, "{:#?}", r.findings);
        let has = |key: &str, says: &str| {
            r.findings.iter().any(|f| {
                f.key.as_deref() == Some(key) && f.message.contains(says) && f.service.as_deref() == Some("web")
            })
        };
        assert!(has("services.web.image", "has no tag"), "{:#?}", r.findings);
        assert!(has("services.web.environment.DB_PASSWORD", "plain value"), "{:#?}", r.findings);
        assert!(!has("services.web.environment.API_TOKEN", "plain value"), "from a variable: {:#?}", r.findings);
        assert!(has("services.web.environment.API_TOKEN", "\"TOKEN\" is not set"), "{:#?}", r.findings);
        assert!(!has("services.web.environment.DB_PASSWORD_FILE", "plain value"), "a path: {:#?}", r.findings);
        assert!(has("services.web.labels[0]", "\"UNSET_VAR\" is not set"), "{:#?}", r.findings);
    }

    #[test]
    fn two_apps_on_one_agent_cannot_publish_one_port() {
        let a = project(&[
            (
                "deploy-targets.yaml",
                "app: {name: shop}\ntargets:\n  shop-pi:\n    platform: docker_compose\n    agent: {name: pi}\n",
            ),
            ("compose.yaml", "services:\n  web:\n    image: nginx:1.25\n    ports: [\"80:80\"]\n"),
        ]);
        let b = project(&[
            (
                "deploy-targets.yaml",
                "app: {name: blog}\ntargets:\n  blog-pi:\n    platform: docker_compose\n    agent: {name: pi}\n",
            ),
            ("compose.yaml", "services:\n  site:\n    image: nginx:1.25\n    ports: [\"0.0.0.0:80:8080\"]\n"),
        ]);
        let r = projects(&[a.join("deploy-targets.yaml"), b.join("deploy-targets.yaml")]);
        let (_, s, k, m) = one_error(&r);
        assert_eq!((s.as_deref(), k.as_deref()), (Some("site"), Some("services.site.ports[0]")));
        assert!(m.contains("agent \"pi\"") && m.contains("shop-pi"), "{m}");
        let _ = (std::fs::remove_dir_all(&a), std::fs::remove_dir_all(&b));
    }

    #[test]
    fn every_corpus_file_validates_without_an_error() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = dockfra_common::shared_dir(&ws).join("corpus/awesome-compose");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let Some(file) = compose::find_compose_file(&entry.path()) else { continue };
            let r = compose_file(&file);
            let errors: Vec<_> = r.findings.iter().filter(|f| f.severity == Severity::Error).collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
            n += 1;
        }
        assert!(n >= 30, "the corpus has its files ({n})");
    }

    fn port(s: &str) -> Result<Option<(String, u16, u16, String)>, String> {
        parse_port(&Value::String(s.into()))
    }

    #[test]
    fn port_syntaxes() {
        assert_eq!(port("3000").unwrap(), None);
        assert_eq!(port("3000-3005").unwrap(), None);
        assert_eq!(port("8000:8000").unwrap(), Some((String::new(), 8000, 8000, "tcp".into())));
        assert_eq!(port("9090-9091:8080-8081").unwrap(), Some((String::new(), 9090, 9091, "tcp".into())));
        assert_eq!(port("127.0.0.1:8001:8001").unwrap(), Some(("127.0.0.1".into(), 8001, 8001, "tcp".into())));
        assert_eq!(port("127.0.0.1::5000").unwrap(), None);
        assert_eq!(port("[::1]:6001:6001").unwrap(), Some(("::1".into(), 6001, 6001, "tcp".into())));
        assert_eq!(port("6060:6060/udp").unwrap(), Some((String::new(), 6060, 6060, "udp".into())));
        assert!(port("eighty:80").is_err());
        assert!(port("80:http").is_err());
    }

    #[test]
    fn clashes_need_same_protocol_and_overlap() {
        let p = |ip: &str, a: u16, b: u16, proto: &str| Published {
            file: PathBuf::new(),
            service: "s".into(),
            key: "k".into(),
            ip: ip.into(),
            first: a,
            last: b,
            protocol: proto.into(),
            profiles: Vec::new(),
        };
        assert!(p("", 80, 80, "tcp").clashes(&p("127.0.0.1", 80, 80, "tcp")));
        assert!(!p("", 80, 80, "tcp").clashes(&p("", 80, 80, "udp")));
        assert!(!p("127.0.0.1", 80, 80, "tcp").clashes(&p("127.0.0.2", 80, 80, "tcp")));
        assert!(p("", 8000, 8010, "tcp").clashes(&p("", 8010, 8020, "tcp")));
        assert!(!p("", 8000, 8009, "tcp").clashes(&p("", 8010, 8020, "tcp")));
    }

    #[test]
    fn images_and_secret_names() {
        assert!(untagged("nginx").is_some());
        assert!(untagged("nginx:latest").is_some());
        assert!(untagged("localhost:5000/nginx").is_some());
        assert!(untagged("localhost:5000/nginx:1.25").is_none());
        assert!(untagged("nginx@sha256:abc").is_none());
        assert!(looks_secret("MYSQL_ROOT_PASSWORD"));
        assert!(looks_secret("github_token"));
        assert!(!looks_secret("POSTGRES_PASSWORD_FILE"));
        assert!(!looks_secret("POSTGRES_USER"));
    }
}
