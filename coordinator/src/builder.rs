//! Builds a release manifest for one target from the project's app directory, storing every
//! file's content in the content-addressed blob store. Pure with respect to the network: it
//! reads the app dir and writes blobs, nothing else (the coordinator's engine builds, saves
//! and pushes images through the one runner, each with a timeout). Signing and sequencing
//! happen in the server, which owns the store. Synchronous: the server runs it on a blocking
//! thread.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use dockfra_common::bundle::{
    DockerComposeSpec, EntryKind, FileEntry, ImageRef, KubeObject, KubeSet, KubernetesSpec, Manifest, NomadSpec,
    PlatformSpec, PodmanSpec, SshRawSpec, FORMAT, KUBE_DIR, NOMAD_DIR, QUADLET_DIR, RENDERED_DIR,
};
use dockfra_common::runner::{run_blocking, CommandSpec};

/// How long one `docker build`, `docker save` or `docker push` may take.
const DOCKER_LONG: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// How long `docker tag` or `docker image inspect` may take.
const DOCKER_SHORT: std::time::Duration = std::time::Duration::from_secs(60);

/// Run `docker ARGS…` on the coordinator's engine; `why` says what it is for when docker is
/// missing. Returns stdout, or an error with the tail of stderr.
fn docker(args: &[&str], timeout: std::time::Duration, env: &[(&str, &str)], why: &str) -> Result<String> {
    let mut spec = CommandSpec::new("docker", args).timeout(timeout);
    for (k, v) in env {
        spec = spec.var(k, v);
    }
    let o = run_blocking(&spec).with_context(|| format!("cannot run docker ({why})"))?;
    if !o.success() {
        let err = o.stderr.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        bail!("`{}` failed:\n{}", spec.display(), err.trim());
    }
    Ok(o.stdout)
}
use dockfra_common::config::{Platform, PlatformConfig, Project, Target};
use dockfra_common::paths::{Digest, SafeRelPath};

/// `.dockfraignore` patterns: one per line, `#` comments, `*`/`?` globs, a trailing `/`
/// matches directories only, a leading `/` anchors at the app root, `!` re-includes.
pub struct Ignore {
    rules: Vec<(bool, bool, bool, String)>, // (negated, dir_only, anchored, pattern)
}

impl Ignore {
    pub fn parse(text: &str) -> Self {
        let mut rules = Vec::new();
        for line in text.lines() {
            let mut l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let neg = l.starts_with('!');
            if neg {
                l = &l[1..];
            }
            let dir_only = l.ends_with('/');
            let l = l.trim_end_matches('/');
            let anchored = l.starts_with('/') || l.contains('/');
            rules.push((neg, dir_only, anchored, l.trim_start_matches('/').to_string()));
        }
        Self { rules }
    }

    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        let mut ignored = false;
        for (neg, dir_only, anchored, pat) in &self.rules {
            if *dir_only && !is_dir {
                continue;
            }
            let hit = if *anchored { glob(pat, rel) } else { glob(pat, name) };
            if hit {
                ignored = !neg;
            }
        }
        ignored
    }
}

/// Glob match: `*` any run of non-`/` characters (`**` any run), `?` one character.
fn glob(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => (0..=s.len()).any(|i| go(&p[2..], &s[i..])),
            Some(b'*') => (0..=s.len()).take_while(|&i| i == 0 || s[i - 1] != b'/').any(|i| go(&p[1..], &s[i..])),
            Some(b'?') => !s.is_empty() && s[0] != b'/' && go(&p[1..], &s[1..]),
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    go(pat.as_bytes(), s.as_bytes())
}

/// Files of the app dir, sorted, as (relative path, absolute path).
fn walk(app_dir: &Path, project_file: &Path) -> Result<Vec<(String, PathBuf)>> {
    let ignore = match std::fs::read_to_string(app_dir.join(".dockfraignore")) {
        Ok(t) => Ignore::parse(&t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ignore::parse(""),
        Err(e) => return Err(e).context(format!("cannot read {}", app_dir.join(".dockfraignore").display())),
    };
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), app_dir.to_path_buf())];
    while let Some((rel_dir, dir)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).with_context(|| format!("cannot read app directory {}", dir.display()))?;
        for entry in rd {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
            let path = entry.path();
            let ft = entry.file_type()?;
            if rel_dir.is_empty() && (name == ".git" || name == ".dockfraignore") {
                continue;
            }
            if path == project_file {
                continue; // the fleet's config is not part of any app
            }
            if ignore.is_ignored(&rel, ft.is_dir()) {
                continue;
            }
            if ft.is_dir() {
                stack.push((rel, path));
            } else {
                out.push((rel, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copy a file into the blob store under its sha256; returns (digest, size), once the blob is
/// durable. A file whose blob is already there is only read (a redeploy rewrites none of its
/// unchanged files); a new one is copied, and the copy is hashed, not the source, so a file
/// that changes while we read it can never leave a blob whose content does not match its name.
pub fn store_blob(blobs: &Path, src: &Path) -> Result<(String, u64)> {
    let mut behind = dockfra_common::SyncBehind::new();
    let stored = store_blob_behind(blobs, src, &mut behind)?;
    behind.finish().with_context(|| format!("cannot store blob for {}", src.display()))?;
    Ok(stored)
}

/// [`store_blob`], the copy fsynced and renamed in by `behind` while the caller copies the
/// next file: the blob is in the store once `behind` finished.
fn store_blob_behind(blobs: &Path, src: &Path, behind: &mut dockfra_common::SyncBehind) -> Result<(String, u64)> {
    use sha2::Digest as _;
    use std::io::Write;
    static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let (digest, size) = hashes::digest(src).with_context(|| format!("cannot read {}", src.display()))?;
    if std::fs::metadata(blobs.join(&digest)).is_ok_and(|m| m.len() == size) {
        return Ok((digest, size));
    }
    let mut f = std::fs::File::open(src).with_context(|| format!("cannot read {}", src.display()))?;
    // Unique per copy: several may wait for their fsync at once.
    let n = COPIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = blobs.join(format!(".incoming-{}-{n}", std::process::id()));
    let mut out = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    let copied = (|| -> std::io::Result<()> {
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            size += n as u64;
            h.update(&buf[..n]);
            out.write_all(&buf[..n])?;
        }
    })();
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot store blob for {}", src.display()));
    }
    let digest = hex::encode(h.finalize());
    behind.put(out, tmp, blobs.join(&digest));
    Ok((digest, size))
}

/// Store bytes made here (a rendered file) in the blob store.
fn store_bytes(blobs: &Path, bytes: &[u8]) -> Result<(String, u64)> {
    let digest = dockfra_common::sha256_hex(bytes);
    let dest = blobs.join(&digest);
    if !dest.exists() {
        dockfra_common::write_atomic(&dest, bytes, 0o644)
            .with_context(|| format!("cannot write {}", dest.display()))?;
    }
    Ok((digest, bytes.len() as u64))
}

/// Escape `$` in every string so the agent's `docker compose` does not interpolate a value
/// the coordinator already resolved (or one the user escaped with `$$`).
fn escape_dollars(v: &mut serde_yaml_ng::Value) {
    use serde_yaml_ng::Value;
    match v {
        Value::String(s) if s.contains('$') => *s = s.replace('$', "$$"),
        Value::Sequence(seq) => seq.iter_mut().for_each(escape_dollars),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| escape_dollars(v)),
        Value::Tagged(t) => escape_dollars(&mut t.value),
        _ => {}
    }
}

/// The resolved compose model as the file the agent runs: JSON, which every YAML parser reads
/// the same way. Plain YAML output leaves strings such as `no`, `on` or `yes` unquoted, and
/// YAML 1.1 readers (podman-compose's PyYAML, the yaml.v2 behind `docker stack deploy`) take
/// them for booleans: `restart: "no"` became `False`.
fn render_json(model: &serde_yaml_ng::Value) -> Vec<u8> {
    use serde_json::Value as J;
    use serde_yaml_ng::Value as Y;
    fn conv(v: &Y) -> J {
        match v {
            Y::Null => J::Null,
            Y::Bool(b) => J::Bool(*b),
            Y::Number(n) => {
                if let Some(i) = n.as_i64() {
                    J::from(i)
                } else if let Some(u) = n.as_u64() {
                    J::from(u)
                } else {
                    n.as_f64().and_then(serde_json::Number::from_f64).map(J::Number).unwrap_or(J::Null)
                }
            }
            Y::String(s) => J::String(s.clone()),
            Y::Sequence(seq) => J::Array(seq.iter().map(conv).collect()),
            Y::Mapping(m) => J::Object(
                m.iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Y::String(s) => s.clone(),
                            other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_string(),
                        };
                        (key, conv(v))
                    })
                    .collect(),
            ),
            Y::Tagged(t) => conv(&t.value),
        }
    }
    let mut out = serde_json::to_vec_pretty(&conv(model)).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Resolve the app's compose file for a `docker_compose` target: interpolated with the app
/// dir's `.env`, `.env.<environment>` and the target's `env:` (`envs`; never the coordinator's own environment, so a bundle
/// does not depend on who built it), the target's `restart_policy`/`pull_policy` applied to
/// services that set none, the project named by `compose_project`, the file's `name:`, or
/// the app.
fn render_compose(
    project: &Project,
    target: &Target,
    compose_project: &Option<String>,
    pull_policy: &Option<String>,
    restart_policy: &Option<String>,
    can_ship: bool,
) -> Result<(DockerComposeSpec, serde_yaml_ng::Value, Vec<String>)> {
    use dockfra_common::compose;
    use serde_yaml_ng::Value;
    let app_dir = &project.app.path;
    let file = compose::find_compose_file(app_dir).with_context(|| {
        format!(
            "target {:?}: platform {} needs a compose.yaml or docker-compose.yml in {}",
            target.id,
            target.platform.as_str(),
            app_dir.display()
        )
    })?;
    let raw: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&file)?).unwrap_or(Value::Null);
    let name = match compose_project {
        Some(p) => Some(p.clone()),
        None if raw.get("name").is_some() => None,
        None => Some(compose::normalize_project_name(&project.app.name)),
    };
    let over = crate::envs::overrides(project, target).with_context(|| format!("target {:?}", target.id))?;
    let opts = compose::LoadOptions { project_name: name.as_deref(), overrides: &over, use_process_env: false };
    let (cp, warnings) = compose::load_with_warnings(&file, &opts)
        .with_context(|| format!("target {:?}: cannot resolve {}", target.id, file.display()))?;
    for w in warnings {
        tracing::warn!(target = %target.id, "{w}");
    }
    let mut model = cp.model.clone();
    let mut images: Vec<String> = Vec::new();
    let compose_dir = file.parent().unwrap_or(app_dir).to_path_buf();
    if let Some(Value::Mapping(services)) = model.get_mut("services") {
        for (name, svc) in services.iter_mut() {
            let Value::Mapping(svc) = svc else { continue };
            let name = name.as_str().unwrap_or("?");
            if let Some(build) = svc.remove("build") {
                if !can_ship {
                    bail!(
                        "target {:?}: service {name:?} in {} is built from source (`build:`), but nothing would carry the image to the target: set `images: bundle` or `registry: HOST[:PORT]`",
                        target.id,
                        file.display(),
                    );
                }
                let repo = svc.get("image").and_then(Value::as_str).map(String::from);
                let built = build_image(&compose_dir, &cp.name, name, repo.as_deref(), &build)
                    .with_context(|| format!("target {:?}: service {name:?} in {}", target.id, file.display()))?;
                svc.insert("image".into(), Value::String(built));
            }
            match svc.get("image").and_then(Value::as_str) {
                Some(img) if !images.iter().any(|i| i == img) => images.push(img.to_string()),
                Some(_) => {}
                None => bail!(
                    "target {:?}: service {name:?} in {} has no `image:` and no `build:`",
                    target.id,
                    file.display()
                ),
            }
            if let Some(r) = restart_policy {
                if !svc.contains_key("restart") {
                    svc.insert("restart".into(), Value::String(r.clone()));
                }
            }
            if let Some(p) = pull_policy {
                if !svc.contains_key("pull_policy") {
                    svc.insert("pull_policy".into(), Value::String(p.clone()));
                }
            }
        }
    }
    let spec = DockerComposeSpec {
        project: cp.name.clone(),
        file: format!("{RENDERED_DIR}/compose.yaml"),
        wait_timeout_secs: 120,
        images: Vec::new(),
        slots: None,
    };
    Ok((spec, model, images))
}

/// Make a resolved compose model fit `strategy: blue-green | canary` on one host: each fronted
/// service (`proxy.services`, else each that publishes a TCP port) becomes `S-blue` and
/// `S-green`, identical, without published ports (the agent publishes each slot on a loopback
/// port of its own and its HAProxy listens where the service did) and with the network alias
/// `S` (with `aliases`), so the other services still reach it by name. A dependency on a
/// fronted service is dropped (the slots start on their own); the other services are shared
/// and updated in place. podman-compose 1.0 has no network aliases (it refuses the mapping
/// form of a service's `networks:`): on Podman the slots are reached as `S-blue`/`S-green`.
pub(crate) fn for_slots(
    model: &mut serde_yaml_ng::Value,
    cfg: &dockfra_common::config::SlotConfig,
    target: &str,
    aliases: bool,
) -> Result<dockfra_common::bundle::SlotSpec> {
    use dockfra_common::bundle::{Route, SlotSpec, SLOTS};
    use dockfra_common::config::Strategy;
    use serde_yaml_ng::{Mapping, Value};
    let Some(Value::Mapping(services)) = model.get_mut("services") else {
        bail!("target {target:?}: strategy {} needs services to front", cfg.strategy);
    };
    let names: Vec<String> = services.keys().filter_map(|k| k.as_str().map(String::from)).collect();
    for s in &cfg.services {
        if !names.contains(s) {
            bail!("target {target:?}: config.proxy.services names {s:?}, which the compose file does not define");
        }
    }
    let publishes = |svc: &Mapping| crate::convert::ports(svc).0.iter().any(|p| p.published.is_some());
    let fronted: Vec<String> = if cfg.services.is_empty() {
        names
            .iter()
            .filter(|n| services.get(n.as_str()).and_then(Value::as_mapping).is_some_and(publishes))
            .cloned()
            .collect()
    } else {
        cfg.services.clone()
    };
    if fronted.is_empty() {
        bail!(
            "target {target:?}: strategy {} needs a service that publishes a port for the proxy to front (or config.proxy.services)",
            cfg.strategy
        );
    }
    let mut routes = Vec::new();
    for name in &fronted {
        let at = format!("target {target:?}: service {name:?}");
        let Some(Value::Mapping(mut svc)) = services.remove(name.as_str()) else {
            bail!("{at} is not a mapping");
        };
        for key in ["container_name", "network_mode"] {
            if svc.contains_key(key) {
                bail!("{at}: `{key}` cannot run twice side by side (strategy {}); remove it", cfg.strategy);
            }
        }
        let (ports, unread) = crate::convert::ports(&svc);
        if let Some(u) = unread.first() {
            bail!("{at}: cannot read port {u:?}");
        }
        for p in ports.iter().filter(|p| p.published.is_some()) {
            if p.protocol != "tcp" {
                bail!(
                    "{at}: the proxy fronts TCP (HTTP) ports; {}/{} is {}",
                    p.published.unwrap_or(0),
                    p.target,
                    p.protocol
                );
            }
            let ip = p.host_ip.as_deref().unwrap_or("0.0.0.0");
            let listen = if ip.contains(':') {
                format!("[{ip}]:{}", p.published.unwrap_or(0))
            } else {
                format!("{ip}:{}", p.published.unwrap_or(0))
            };
            if routes.iter().any(|r: &Route| r.listen == listen) {
                bail!("{at}: {listen} is published twice");
            }
            routes.push(Route { service: name.clone(), listen, port: p.target });
        }
        if !routes.iter().any(|r| &r.service == name) {
            bail!("{at} publishes no port for the proxy to listen on");
        }
        svc.remove("ports");
        // Reachable by its own name from the other services, whichever slot runs.
        let alias = Value::Sequence(vec![Value::String(name.clone())]);
        match svc.get_mut("networks") {
            _ if !aliases => {}
            Some(Value::Sequence(list)) => {
                let mut m = Mapping::new();
                for n in list.iter() {
                    let mut a = Mapping::new();
                    a.insert("aliases".into(), alias.clone());
                    m.insert(n.clone(), Value::Mapping(a));
                }
                svc.insert("networks".into(), Value::Mapping(m));
            }
            Some(Value::Mapping(m)) => {
                for (_, v) in m.iter_mut() {
                    if !v.is_mapping() {
                        *v = Value::Mapping(Mapping::new());
                    }
                    let a = v.as_mapping_mut().expect("made a mapping above");
                    match a.get_mut("aliases") {
                        Some(Value::Sequence(l)) => l.push(Value::String(name.clone())),
                        _ => {
                            a.insert("aliases".into(), alias.clone());
                        }
                    }
                }
            }
            _ => {
                let mut a = Mapping::new();
                a.insert("aliases".into(), alias.clone());
                let mut m = Mapping::new();
                m.insert("default".into(), Value::Mapping(a));
                svc.insert("networks".into(), Value::Mapping(m));
            }
        }
        for slot in SLOTS {
            let slot_name = format!("{name}-{slot}");
            if names.contains(&slot_name) {
                bail!("{at}: the compose file already has a service {slot_name:?}, the name of one of its slots");
            }
            services.insert(slot_name.into(), Value::Mapping(svc.clone()));
        }
    }
    let shared: Vec<String> = names.iter().filter(|n| !fronted.contains(n)).cloned().collect();
    for n in &shared {
        let Some(Value::Mapping(svc)) = services.get_mut(n.as_str()) else { continue };
        let drop_dep = |d: &mut Value| match d {
            Value::Sequence(l) => l.retain(|x| !x.as_str().is_some_and(|x| fronted.iter().any(|f| f == x))),
            Value::Mapping(m) => m.retain(|k, _| !k.as_str().is_some_and(|x| fronted.iter().any(|f| f == x))),
            _ => {}
        };
        if let Some(d) = svc.get_mut("depends_on") {
            drop_dep(d);
            if d.as_sequence().is_some_and(Vec::is_empty) || d.as_mapping().is_some_and(Mapping::is_empty) {
                svc.remove("depends_on");
            }
        }
    }
    Ok(SlotSpec {
        canary_steps: if cfg.strategy == Strategy::Canary { cfg.canary.steps.clone() } else { Vec::new() },
        canary_pause_secs: if cfg.strategy == Strategy::Canary { cfg.canary.pause.as_secs().max(1) } else { 0 },
        drain_secs: cfg.drain.as_secs(),
        health_path: cfg.health_path.clone(),
        routes,
        shared,
    })
}

/// Make a resolved compose model fit `docker stack deploy`: `depends_on` in its list form
/// (a stack ignores start order; the long form is refused), the seed's `replicas`,
/// `update_parallelism` and `update_delay` on every service's `deploy:` that sets none, and
/// `update_config.order: start-first` (a new task is up before the old one stops) unless the
/// service sets an order or publishes a port in host mode.
pub(crate) fn for_swarm(
    model: &mut serde_yaml_ng::Value,
    replicas: Option<u32>,
    parallelism: Option<u32>,
    delay: Option<std::time::Duration>,
) {
    use serde_yaml_ng::{Mapping, Value};
    // The stack is named on the command line; `stack deploy`'s schema refuses a `name:`.
    if let Value::Mapping(top) = model {
        top.remove("name");
    }
    let Some(Value::Mapping(services)) = model.get_mut("services") else { return };
    for (_, svc) in services.iter_mut() {
        let Value::Mapping(svc) = svc else { continue };
        if let Some(Value::Mapping(deps)) = svc.get("depends_on") {
            let list: Vec<Value> = deps.keys().cloned().collect();
            svc.insert("depends_on".into(), Value::Sequence(list));
        }
        // Interpolation yields strings; `stack deploy` wants numbers in long-form ports.
        if let Some(Value::Sequence(ports)) = svc.get_mut("ports") {
            for port in ports.iter_mut() {
                let Value::Mapping(p) = port else { continue };
                for key in ["published", "target"] {
                    if let Some(Value::String(s)) = p.get(key) {
                        if let Ok(n) = s.parse::<u16>() {
                            p.insert(key.into(), Value::Number(n.into()));
                        }
                    }
                }
            }
        }
        let deploy = svc.entry("deploy".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
        let Value::Mapping(deploy) = deploy else { continue };
        let global = deploy.get("mode").and_then(Value::as_str) == Some("global");
        if let (Some(n), false) = (replicas, global) {
            deploy.entry("replicas".into()).or_insert(Value::Number(n.into()));
        }
        // New tasks start before old ones stop (no gap in service), unless a port is
        // published in host mode: a second task could not bind it on the same node.
        let host_ports = svc
            .get("ports")
            .and_then(Value::as_sequence)
            .is_some_and(|ps| ps.iter().any(|p| p.get("mode").and_then(Value::as_str) == Some("host")));
        let deploy = match svc.get_mut("deploy") {
            Some(Value::Mapping(d)) => d,
            _ => continue,
        };
        {
            let uc = deploy.entry("update_config".into()).or_insert_with(|| Value::Mapping(Mapping::new()));
            if let Value::Mapping(uc) = uc {
                if !host_ports {
                    uc.entry("order".into()).or_insert(Value::String("start-first".into()));
                }
                if let Some(p) = parallelism {
                    uc.entry("parallelism".into()).or_insert(Value::Number(p.into()));
                }
                if let Some(d) = delay {
                    uc.entry("delay".into()).or_insert(Value::String(dockfra_common::config::format_duration(d)));
                }
            }
        }
    }
}

/// Build one `build:` service with the coordinator's engine (`docker build`, classic builder:
/// nothing is pulled when the base image is local). The image is tagged
/// `<image: repo, else PROJECT-SERVICE>:b-<12 hex of its id>`, so a rebuild with different
/// content gets a new tag and an older release keeps naming its own image.
fn build_image(
    compose_dir: &Path,
    project: &str,
    service: &str,
    repo: Option<&str>,
    build: &serde_yaml_ng::Value,
) -> Result<String> {
    use serde_yaml_ng::Value;
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let (context, dockerfile, target, args): (String, Option<String>, Option<String>, Vec<String>) = match build {
        Value::String(c) => (c.clone(), None, None, vec![]),
        Value::Mapping(m) => {
            for k in m.keys().filter_map(Value::as_str) {
                if !["context", "dockerfile", "args", "target"].contains(&k) {
                    bail!("build.{k} is not supported (supported: context, dockerfile, args, target)");
                }
            }
            let args = match m.get("args") {
                Some(Value::Mapping(a)) => a
                    .iter()
                    .filter_map(|(k, v)| Some(format!("{}={}", scalar(k)?, scalar(v).unwrap_or_default())))
                    .collect(),
                Some(Value::Sequence(a)) => a.iter().filter_map(scalar).collect(),
                _ => vec![],
            };
            (
                m.get("context").and_then(scalar).unwrap_or_else(|| ".".into()),
                m.get("dockerfile").and_then(scalar),
                m.get("target").and_then(scalar),
                args,
            )
        }
        _ => bail!("build: must be a path or a mapping"),
    };
    if context.contains("://") || context.starts_with("git@") {
        bail!("build.context {context:?}: only a local directory can be built here");
    }
    let dir = compose_dir.join(&context);
    if !dir.is_dir() {
        bail!("build.context {} is not a directory", dir.display());
    }
    let mut argv: Vec<String> = vec!["build".into(), "-q".into()];
    if let Some(f) = &dockerfile {
        argv.extend(["-f".into(), dir.join(f).display().to_string()]);
    }
    if let Some(t) = &target {
        argv.extend(["--target".into(), t.clone()]);
    }
    for a in &args {
        argv.extend(["--build-arg".into(), a.clone()]);
    }
    argv.push(dir.display().to_string());
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = docker(
        &refs,
        DOCKER_LONG,
        &[("DOCKER_BUILDKIT", "0")],
        "build: services are built with the coordinator's engine",
    )?;
    let id = out.trim().to_string();
    let hex = id.trim_start_matches("sha256:");
    if hex.len() < 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("docker build printed no image id (got {id:?})");
    }
    let repo = match repo {
        // The repository part of `image:` (a tag or digest given there is replaced).
        Some(r) => {
            let r = r.split('@').next().unwrap_or(r);
            match r.rsplit_once(':') {
                Some((head, tag)) if !tag.contains('/') => head.to_string(),
                _ => r.to_string(),
            }
        }
        None => format!("{project}-{}", service.to_ascii_lowercase()),
    };
    let name = format!("{repo}:b-{}", &hex[..12]);
    docker(&["tag", &id, &name], DOCKER_SHORT, &[], "tagging a built image")?;
    tracing::info!(service, image = %name, "built");
    Ok(name)
}

/// `registry: R`: tag each image as `R/<name without its registry>` and push it; returns
/// (old reference, new reference) pairs.
fn push_images(registry: &str, images: &[String], target: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for name in images {
        let mut parts = name.splitn(2, '/');
        let first = parts.next().unwrap_or_default();
        let rest = parts.next();
        let bare = match rest {
            Some(r) if first.contains('.') || first.contains(':') || first == "localhost" => r,
            _ => name.as_str(),
        };
        let dest = format!("{}/{bare}", registry.trim_end_matches('/'));
        let why = "registry: pushes images from the coordinator's engine";
        docker(&["tag", name, &dest], DOCKER_SHORT, &[], why).with_context(|| format!("target {target:?}"))?;
        docker(&["push", &dest], DOCKER_LONG, &[], why).with_context(|| format!("target {target:?}"))?;
        out.push((name.clone(), dest));
    }
    Ok(out)
}

/// Point every service's `image:` at its pushed reference.
fn rename_images(model: &mut serde_yaml_ng::Value, moved: &[(String, String)]) {
    use serde_yaml_ng::Value;
    let Some(Value::Mapping(services)) = model.get_mut("services") else { return };
    for (_, svc) in services.iter_mut() {
        if let Some(Value::String(img)) = svc.get_mut("image") {
            if let Some((_, to)) = moved.iter().find(|(from, _)| from == img) {
                *img = to.clone();
            }
        }
    }
}

/// `images: bundle`: save each image from the coordinator's engine into the blob store.
/// `docker save` of an unchanged image is byte-for-byte the same, so it travels once.
fn save_images(blobs: &Path, images: &[String], target: &str) -> Result<Vec<ImageRef>> {
    let mut out = Vec::new();
    for (i, name) in images.iter().enumerate() {
        let why = "images: bundle saves images from the coordinator's engine";
        let id = match docker(&["image", "inspect", "--format", "{{.Id}}", name], DOCKER_SHORT, &[], why) {
            Ok(out) => out.trim().to_string(),
            Err(e) if e.to_string().contains("cannot run docker") => return Err(e),
            Err(_) => bail!(
                "target {target:?}: image {name} is not in the coordinator's Docker engine (images: bundle ships it from there: build or pull it first)"
            ),
        };
        let tmp = blobs.join(format!(".save-{}-{i}.tar", std::process::id()));
        let tmp_s = tmp.display().to_string();
        if let Err(e) = docker(&["save", "-o", &tmp_s, name], DOCKER_LONG, &[], why) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.context(format!("target {target:?}: docker save {name}")));
        }
        let stored = store_blob(blobs, &tmp);
        let _ = std::fs::remove_file(&tmp);
        let (sha256, size) = stored?;
        out.push(ImageRef { name: name.clone(), id, sha256, size });
    }
    Ok(out)
}

/// What one build produced.
pub struct Built {
    pub manifest: Manifest,
    /// The files dockfra rendered into the release (path, content), e.g. the resolved compose file.
    pub rendered: Vec<(String, Vec<u8>)>,
}

/// The app's compose file resolved for a target of a converted platform (kubernetes, nomad):
/// named as its bundles name it, with the target's env, and a reader of its project files.
fn resolve_for_conversion(project: &Project, target: &Target) -> Result<(PathBuf, serde_yaml_ng::Value)> {
    let app_dir = &project.app.path;
    let file = dockfra_common::compose::find_compose_file(app_dir).with_context(|| {
        format!(
            "target {:?}: platform {} needs a compose.yaml or docker-compose.yml in {}",
            target.id,
            target.platform,
            app_dir.display()
        )
    })?;
    let over = crate::envs::overrides(project, target).with_context(|| format!("target {:?}", target.id))?;
    let (cp, warnings) = crate::envs::load_as_app(&file, Some(&project.app.name), &over)
        .with_context(|| format!("target {:?}: cannot resolve {}", target.id, file.display()))?;
    for w in warnings {
        tracing::warn!(target = %target.id, "{w}");
    }
    Ok((file, cp.model))
}

/// A converter's errors fail the build, naming the target; its warnings go to the log.
fn converted(target: &Target, file: &Path, what: &str, r: &crate::convert::Rendered, warn: bool) -> Result<()> {
    if !r.errors.is_empty() {
        bail!(
            "target {:?}: {} cannot be rendered for {what}: {} (`config.allow` accepts a named loss)",
            target.id,
            file.display(),
            r.errors.join("; ")
        );
    }
    if warn {
        for w in &r.warnings {
            tracing::warn!(target = %target.id, "{what}: {w}");
        }
    }
    Ok(())
}

/// Render a `podman` target with `kube_play: true`: the compose app through the Kubernetes
/// converter, shaped for `podman kube play` (Podman 4.3), all objects in one YAML stream:
/// - workloads and claims are named `PROJECT-NAME` (pods and volumes are host-wide names);
/// - a published port becomes the container port's `hostPort` (and `hostIP`). Podman would
///   publish every other container port on all addresses, so the others are dropped;
/// - Podman ignores Services, Ingresses and readiness probes: the Services and Ingresses
///   go, and the readiness probe is also the liveness probe, which Podman runs as the
///   container's healthcheck;
/// - `depends_on` init containers go too: they wait for a Service's name, which nothing
///   resolves under Podman, so pods start in the file's order.
///
/// Every pod and container carries `app.kubernetes.io/part-of: PROJECT`.
fn render_kube_play(
    project: &Project,
    target: &Target,
    model: &serde_yaml_ng::Value,
    name: &str,
    release: &str,
) -> Result<Vec<u8>> {
    use crate::convert::{dns_label, k8s};
    use serde_yaml_ng::Value;
    let app_dir = &project.app.path;
    let file = dockfra_common::compose::find_compose_file(app_dir).unwrap_or_else(|| app_dir.join("compose.yaml"));
    let dir = file.parent().map(Path::to_path_buf).unwrap_or_else(|| app_dir.clone());
    let read = |p: &str| std::fs::read(dir.join(p)).ok();
    let cfg = dockfra_common::config::KubernetesConfig::default();
    let opts = k8s::Options {
        app: name.to_string(),
        release: Some(release.to_string()),
        config: &cfg,
        slot: None,
        track: None,
    };
    let r = k8s::convert(model, &opts, &read);
    converted(target, &file, "podman kube play", &r, true)?;
    // Published ports by the workload (the converter names it after the service).
    let mut published: std::collections::BTreeMap<String, Vec<crate::convert::Port>> = Default::default();
    if let Some(Value::Mapping(services)) = model.get("services") {
        for (svc, m) in services {
            let (Some(svc), Some(m)) = (svc.as_str(), m.as_mapping()) else { continue };
            let ports = crate::convert::ports(m).0.into_iter().filter(|p| p.published.is_some()).collect();
            published.insert(dns_label(svc), ports);
        }
    }
    let prefixed = |n: &str| Value::String(format!("{name}-{n}"));
    let mut docs = Vec::new();
    for (_, text) in r.files {
        let mut v: Value = serde_yaml_ng::from_str(&text)?;
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if matches!(kind.as_str(), "Service" | "Ingress") {
            continue;
        }
        let obj = v.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default().to_string();
        if matches!(kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet" | "PersistentVolumeClaim") {
            v["metadata"]["name"] = prefixed(&obj);
        }
        if let Some(pod) = v.get_mut("spec").and_then(|s| s.get_mut("template")).and_then(|t| t.get_mut("spec")) {
            let Some(pod) = pod.as_mapping_mut() else { continue };
            if pod.remove("initContainers").is_some() {
                tracing::warn!(target = %target.id, "podman kube play: service {obj}: depends_on is not waited for (Podman resolves no Service names); pods start in order");
            }
            for c in pod.get_mut("containers").and_then(Value::as_sequence_mut).into_iter().flatten() {
                let Some(c) = c.as_mapping_mut() else { continue };
                if let Some(probe) = c.get("readinessProbe").cloned() {
                    c.insert("livenessProbe".into(), probe);
                }
                let ours = published.get(&obj).cloned().unwrap_or_default();
                let mut keep = Vec::new();
                for p in c.get("ports").and_then(Value::as_sequence).cloned().unwrap_or_default() {
                    let target_port = p.get("containerPort").and_then(Value::as_u64).unwrap_or(0);
                    for pp in ours.iter().filter(|pp| u64::from(pp.target) == target_port) {
                        let mut q = p.as_mapping().cloned().unwrap_or_default();
                        q.insert("hostPort".into(), Value::from(pp.published.unwrap_or(0)));
                        if let Some(ip) = &pp.host_ip {
                            q.insert("hostIP".into(), Value::String(ip.clone()));
                        }
                        keep.push(Value::Mapping(q));
                    }
                }
                if keep.is_empty() {
                    c.remove("ports");
                } else {
                    c.insert("ports".into(), Value::Sequence(keep));
                }
            }
            for vol in pod.get_mut("volumes").and_then(Value::as_sequence_mut).into_iter().flatten() {
                if let Some(pvc) = vol.get_mut("persistentVolumeClaim").and_then(Value::as_mapping_mut) {
                    let claim = pvc.get("claimName").and_then(Value::as_str).unwrap_or_default().to_string();
                    pvc.insert("claimName".into(), prefixed(&claim));
                }
            }
        }
        docs.push(serde_yaml_ng::to_string(&v)?);
    }
    // Claims and config first, then the workloads, as kubectl would order them.
    let rank = |d: &String| {
        if d.contains("\nkind: Deployment") || d.contains("\nkind: StatefulSet") || d.contains("\nkind: DaemonSet") {
            1
        } else {
            0
        }
    };
    docs.sort_by_key(rank);
    Ok(docs.join("---\n").into_bytes())
}

/// Render a `nomad` target: the job as HCL (for the operator to read) and as the JSON the
/// HTTP API takes, both under [`NOMAD_DIR`]; the agent registers the JSON.
fn render_nomad(
    project: &Project,
    target: &Target,
    cfg: &dockfra_common::config::NomadConfig,
    release: &str,
    rendered: &mut Vec<(String, Vec<u8>)>,
) -> Result<NomadSpec> {
    use crate::convert::nomad;
    let (file, model) = resolve_for_conversion(project, target)?;
    let dir = file.parent().unwrap_or(&project.app.path).to_path_buf();
    let read = |p: &str| std::fs::read(dir.join(p)).ok();
    let opts = nomad::Options { app: project.app.name.clone(), release: Some(release.to_string()), config: cfg };
    let r = nomad::convert(&model, &opts, &read);
    converted(target, &file, "Nomad", &r, true)?;
    let mut job_file = None;
    let mut job_id = String::new();
    for (name, text) in r.files {
        let path = format!("{NOMAD_DIR}/{name}");
        if name.ends_with(".json") && !name.ends_with(".nomad.json") {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            job_id = v["Job"]["ID"].as_str().unwrap_or_default().to_string();
            job_file = Some(path.clone());
        }
        rendered.push((path, text.into_bytes()));
    }
    let u = &cfg.update;
    Ok(NomadSpec {
        address: cfg.address.clone().unwrap_or_else(|| "http://127.0.0.1:4646".into()),
        token_file: cfg.token_file.clone(),
        ca_cert: cfg.ca_cert.clone(),
        client_cert: cfg.client_cert.clone(),
        client_key: cfg.client_key.clone(),
        tls_server_name: cfg.tls_server_name.clone(),
        region: cfg.region.clone(),
        namespace: cfg.namespace.clone(),
        job_id,
        file: job_file.context("the Nomad converter made no JSON job")?,
        promote: u.canary > 0 && !u.auto_promote,
        // The deployment's own deadline, and a minute for the scheduler and the last checks.
        deploy_timeout_secs: u.progress_deadline.as_secs() + 60,
    })
}

/// Render a `kubernetes` target: the app's compose file (resolved as for the compose
/// platforms) through the converter once per object set — `stable`, or the two blue-green
/// slots, or `stable` and `canary` — each object a file under [`KUBE_DIR`]`/<set>/`. A
/// dangerous loss is an error naming the target (as `convert` refuses it); other losses are
/// warnings in the coordinator's log. Images are the cluster's to pull: nothing is carried.
fn render_kubernetes(
    project: &Project,
    target: &Target,
    cfg: &dockfra_common::config::KubernetesConfig,
    release: &str,
    rendered: &mut Vec<(String, Vec<u8>)>,
) -> Result<KubernetesSpec> {
    use crate::convert::k8s;
    use dockfra_common::config::Strategy;
    let (file, model) = resolve_for_conversion(project, target)?;
    let dir = file.parent().unwrap_or(&project.app.path).to_path_buf();
    let read = |p: &str| std::fs::read(dir.join(p)).ok();
    let sets: &[(&str, Option<&str>, Option<&str>)] = match cfg.strategy {
        Strategy::Rolling | Strategy::Recreate => &[("stable", None, None)],
        Strategy::BlueGreen => &[("blue", Some("blue"), None), ("green", Some("green"), None)],
        Strategy::Canary => &[("stable", None, Some("stable")), ("canary", None, Some("canary"))],
    };
    let mut out = Vec::new();
    let mut canary_ingress = None;
    for (set, slot, track) in sets {
        let opts = k8s::Options {
            app: project.app.name.clone(),
            release: Some(release.to_string()),
            config: cfg,
            slot: slot.map(String::from),
            track: track.map(String::from),
        };
        let r = k8s::convert(&model, &opts, &read);
        converted(target, &file, "Kubernetes", &r, *set != "canary")?;
        let mut objects = Vec::new();
        for (name, text) in r.files {
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
            let s = |k: &str| v.get(k).and_then(serde_yaml_ng::Value::as_str).unwrap_or_default().to_string();
            let kind = s("kind");
            let obj_name = v.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).unwrap_or_default();
            let replicas = v.get("spec").and_then(|s| s.get("replicas")).and_then(|r| r.as_u64()).map(|r| r as u32);
            if *set == "canary" && kind == "Ingress" {
                canary_ingress = Some(obj_name.to_string());
            }
            let path = format!("{KUBE_DIR}/{set}/{name}");
            objects.push(KubeObject { file: path.clone(), kind, name: obj_name.to_string(), replicas });
            rendered.push((path, text.into_bytes()));
        }
        let rank = |o: &KubeObject| match o.kind.as_str() {
            "ConfigMap" | "Secret" | "PersistentVolumeClaim" => 0,
            "Deployment" | "StatefulSet" | "DaemonSet" => 1,
            _ => 2,
        };
        objects.sort_by_key(|o| (rank(o), o.file.clone()));
        out.push(KubeSet { name: set.to_string(), objects });
    }
    Ok(KubernetesSpec {
        namespace: cfg.namespace.clone().unwrap_or_else(|| "default".into()),
        kubeconfig: cfg.kubeconfig.clone(),
        context: cfg.context.clone(),
        strategy: cfg.strategy,
        app: crate::convert::dns_label(&project.app.name),
        release: crate::convert::dns_label(release),
        rollout_timeout_secs: cfg.rollout_timeout.map(|d| d.as_secs().max(1)).unwrap_or(300),
        sets: out,
        canary_steps: if cfg.strategy == Strategy::Canary { cfg.canary.steps.clone() } else { Vec::new() },
        canary_pause_secs: cfg.canary.pause.as_secs(),
        canary_ingress,
    })
}

/// Store blobs (a real build), or only hash (a plan: nothing is written, no image is saved or
/// pushed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Store,
    DryRun,
}

/// Hash a file without storing it (a plan).
fn hash_file(src: &Path) -> Result<(String, u64)> {
    hashes::digest(src).with_context(|| format!("cannot read {}", src.display()))
}

/// The digests of app files hashed before, by path, kept while the file's identity and
/// stat say it is the same file unchanged (device, inode, size, mtime and ctime to the
/// nanosecond: ctime no tool can set back): a redeploy of a large site, or one build per target
/// of a fleet deploy, reads only the files that changed. A file modified within two seconds
/// of being hashed is not remembered (a later write in the same clock tick would leave its
/// stat as it was: git's "racily clean" entries), and a digest from here only lets the
/// builder skip a blob its store already holds: a new blob is always hashed from its copy.
mod hashes {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    #[derive(Clone, Copy, PartialEq, Eq)]
    struct Stamp {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    }

    impl Stamp {
        fn of(m: &std::fs::Metadata) -> Self {
            Self {
                dev: m.dev(),
                ino: m.ino(),
                size: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            }
        }

        /// Changed within the last two seconds (or in the future): not to be trusted yet.
        fn fresh(&self) -> bool {
            let now = dockfra_common::now_unix() as i64;
            self.mtime.0.max(self.ctime.0) >= now - 2
        }
    }

    /// At most this many files are remembered (then it starts again empty).
    const MAX: usize = 200_000;
    static SEEN: Mutex<Option<HashMap<PathBuf, (Stamp, String)>>> = Mutex::new(None);

    /// The digest remembered for `path` if it is still the same file, unchanged.
    pub fn cached(path: &Path, meta: &std::fs::Metadata) -> Option<String> {
        let seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
        let (stamp, digest) = seen.as_ref()?.get(path)?;
        (*stamp == Stamp::of(meta)).then(|| digest.clone())
    }

    /// Hash `path` (sha256, size), remembering the digest when the file was the same before
    /// and after the read and has not changed lately.
    pub fn digest(path: &Path) -> std::io::Result<(String, u64)> {
        let before = std::fs::metadata(path)?;
        if let Some(d) = cached(path, &before) {
            return Ok((d, before.len()));
        }
        let (digest, size) = dockfra_common::sha256_file(path)?;
        let stamp = Stamp::of(&before);
        if std::fs::metadata(path).is_ok_and(|after| Stamp::of(&after) == stamp) && !stamp.fresh() && stamp.size == size
        {
            let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
            let map = seen.get_or_insert_with(HashMap::new);
            if map.len() >= MAX {
                map.clear();
            }
            map.insert(path.to_path_buf(), (stamp, digest.clone()));
        }
        Ok((digest, size))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_file_is_hashed_again_when_it_changed_or_changed_lately() {
            let dir = std::env::temp_dir().join(format!("dkf-hashes-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let f = dir.join("a");
            std::fs::write(&f, "one").unwrap();
            // Just written: hashed, not remembered.
            assert_eq!(digest(&f).unwrap().0, dockfra_common::sha256_hex(b"one"));
            assert_eq!(cached(&f, &std::fs::metadata(&f).unwrap()), None);
            // Old enough: remembered while unchanged.
            let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            std::fs::File::options().write(true).open(&f).unwrap().set_modified(old).unwrap();
            // (ctime moved with set_modified: it is recent, so still not remembered.)
            digest(&f).unwrap();
            assert_eq!(cached(&f, &std::fs::metadata(&f).unwrap()), None);
            std::fs::remove_dir_all(&dir).unwrap();
            // A file nobody touched lately (the system's os-release) is remembered.
            let sys = Path::new("/usr/lib/os-release");
            if std::fs::metadata(sys).is_ok_and(|m| !Stamp::of(&m).fresh()) {
                let (d, _) = digest(sys).unwrap();
                assert_eq!(cached(sys, &std::fs::metadata(sys).unwrap()), Some(d));
            }
        }

        #[test]
        fn a_remembered_digest_stands_only_for_the_same_stat() {
            let meta = std::fs::metadata("/").unwrap();
            let path = PathBuf::from("/dkf-test-not-a-file");
            SEEN.lock().unwrap().get_or_insert_with(HashMap::new).insert(path.clone(), (Stamp::of(&meta), "d".into()));
            assert_eq!(cached(&path, &meta).as_deref(), Some("d"));
            let other = std::fs::metadata("/proc").unwrap();
            assert_eq!(cached(&path, &other), None);
        }
    }
}

/// Build the manifest for `target` (sequence and version filled by the caller's arguments).
pub fn build(
    project: &Project,
    target: &Target,
    blobs: &Path,
    sequence: u64,
    version: Option<&str>,
    mode: Mode,
) -> Result<Built> {
    let dry = mode == Mode::DryRun;
    let app_dir = &project.app.path;
    if !app_dir.is_dir() {
        bail!("{}: app.path {} is not a directory", project.file.display(), app_dir.display());
    }
    let mut rendered: Vec<(String, Vec<u8>)> = Vec::new();
    // One renderer per platform: each arm makes the manifest's platform section and the files
    // it renders into the release.
    let platform = match (&target.platform, &target.config) {
        (
            Platform::SshRaw,
            PlatformConfig::SshRaw { deploy_path, service_manager, service_name, pre_script, post_script },
        ) => PlatformSpec::SshRaw(SshRawSpec {
            deploy_path: deploy_path.as_ref().map(|p| p.display().to_string()),
            service_manager: *service_manager,
            service_name: service_name.clone(),
            pre_script: pre_script.clone(),
            post_script: post_script.clone(),
        }),
        (
            Platform::DockerCompose,
            PlatformConfig::DockerCompose { compose_project, pull_policy, restart_policy, ship_images, registry, slots },
        ) => {
            let (mut spec, mut model, images) =
                render_compose(project, target, compose_project, pull_policy, restart_policy, *ship_images || registry.is_some())?;
            if let Some(sl) = slots {
                spec.slots = Some(for_slots(&mut model, sl, &target.id, true)?);
            }
            if *ship_images && !dry {
                std::fs::create_dir_all(blobs)?;
                spec.images = save_images(blobs, &images, &target.id)?;
            }
            if let Some(r) = registry.as_ref().filter(|_| !dry) {
                let moved = push_images(r, &images, &target.id)?;
                rename_images(&mut model, &moved);
            }
            escape_dollars(&mut model);
            rendered.push((spec.file.clone(), render_json(&model)));
            PlatformSpec::DockerCompose(spec)
        }
        (
            Platform::Swarm,
            PlatformConfig::Swarm { stack_name, replicas, update_parallelism, update_delay, ship_images, registry },
        ) => {
            let (mut spec, mut model, images) =
                render_compose(project, target, stack_name, &None, &None, *ship_images || registry.is_some())?;
            if *ship_images && !dry {
                std::fs::create_dir_all(blobs)?;
                spec.images = save_images(blobs, &images, &target.id)?;
            }
            if let Some(r) = registry.as_ref().filter(|_| !dry) {
                let moved = push_images(r, &images, &target.id)?;
                rename_images(&mut model, &moved);
            }
            for_swarm(&mut model, *replicas, *update_parallelism, *update_delay);
            escape_dollars(&mut model);
            rendered.push((spec.file.clone(), render_json(&model)));
            PlatformSpec::Swarm(spec)
        }
        (
            Platform::Podman,
            PlatformConfig::Podman {
                use_quadlet,
                rootless,
                pod_name,
                compose_project,
                ship_images,
                registry,
                start_machine,
                slots,
                kube_play,
            },
        ) => {
            let (mut compose, mut model, images) =
                render_compose(project, target, compose_project, &None, &None, *ship_images || registry.is_some())?;
            if let Some(sl) = slots {
                compose.slots = Some(for_slots(&mut model, sl, &target.id, false)?);
            }
            if *ship_images && !dry {
                std::fs::create_dir_all(blobs)?;
                compose.images = save_images(blobs, &images, &target.id)?;
            }
            // Before the Quadlet conversion: the units name the registry's reference too.
            if let Some(r) = registry.as_ref().filter(|_| !dry) {
                let moved = push_images(r, &images, &target.id)?;
                rename_images(&mut model, &moved);
            }
            let mut kube_file = None;
            if *kube_play {
                if !dockfra_common::bundle::is_kube_name(&compose.project) {
                    bail!(
                        "target {:?}: kube_play names pods after the project, and {:?} is not a DNS label (set compose_project)",
                        target.id,
                        compose.project
                    );
                }
                let release = version.map(String::from).unwrap_or_else(|| sequence.to_string());
                let text = render_kube_play(project, target, &model, &compose.project, &release)?;
                rendered.push((dockfra_common::bundle::KUBE_PLAY_FILE.to_string(), text));
                kube_file = Some(dockfra_common::bundle::KUBE_PLAY_FILE.to_string());
            }
            let mut quadlet_units = Vec::new();
            if *use_quadlet {
                use crate::convert::quadlet;
                let opts = quadlet::Options { project: compose.project.clone(), pod: pod_name.clone() };
                let converted = quadlet::convert(&model, &opts);
                for w in &converted.warnings {
                    tracing::warn!(target = %target.id, "quadlet: {w}");
                }
                for u in converted.units {
                    rendered.push((format!("{QUADLET_DIR}/{}", u.name), u.text.into_bytes()));
                    quadlet_units.push(u.name);
                }
            }
            escape_dollars(&mut model);
            rendered.push((compose.file.clone(), render_json(&model)));
            let mut services: Vec<String> = match model.get("services") {
                Some(serde_yaml_ng::Value::Mapping(m)) => m.keys().filter_map(|k| k.as_str().map(String::from)).collect(),
                _ => Vec::new(),
            };
            if kube_file.is_some() {
                // Under kube play a container is labelled with the service's DNS label.
                services = services.iter().map(|s| crate::convert::dns_label(s)).collect();
            }
            PlatformSpec::Podman(PodmanSpec {
                compose,
                quadlet_units,
                services,
                use_quadlet: *use_quadlet,
                rootless: *rootless,
                start_machine: *start_machine,
                kube_file,
            })
        }
        (Platform::Kubernetes, PlatformConfig::Kubernetes(cfg)) => {
            let release = version.map(String::from).unwrap_or_else(|| sequence.to_string());
            PlatformSpec::Kubernetes(Box::new(render_kubernetes(project, target, cfg, &release, &mut rendered)?))
        }
        (Platform::Nomad, PlatformConfig::Nomad(cfg)) => {
            let release = version.map(String::from).unwrap_or_else(|| sequence.to_string());
            PlatformSpec::Nomad(Box::new(render_nomad(project, target, cfg, &release, &mut rendered)?))
        }
        (p, _) => bail!(
            "target {:?}: platform {} is not supported by this build yet (supported: ssh_raw, docker_compose, swarm, podman, kubernetes, nomad)",
            target.id,
            p.as_str()
        ),
    };
    if !dry {
        std::fs::create_dir_all(blobs)?;
    }
    let mut files = Vec::new();
    // Another environment's `.env.<environment>` stays off this target (its secrets are not
    // this target's).
    let env_rel = crate::envs::env_dir(project)
        .strip_prefix(app_dir)
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_default();
    let own = crate::envs::environment(target);
    let others: Vec<String> = project
        .targets
        .iter()
        .filter_map(crate::envs::environment)
        .filter(|e| Some(*e) != own)
        .map(|e| if env_rel.is_empty() { format!(".env.{e}") } else { format!("{env_rel}/.env.{e}") })
        .collect();
    let mut behind = dockfra_common::SyncBehind::new();
    for (rel, abs) in walk(app_dir, &project.file)? {
        if others.contains(&rel) {
            continue;
        }
        SafeRelPath::new(&rel).with_context(|| format!("app file {}", abs.display()))?;
        if rel == RENDERED_DIR || rel.starts_with(&format!("{RENDERED_DIR}/")) {
            bail!("app file {}: {RENDERED_DIR}/ is reserved for what dockfra renders", abs.display());
        }
        let meta = std::fs::symlink_metadata(&abs)?;
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let to = std::fs::read_link(&abs)?.to_string_lossy().to_string();
            files.push(FileEntry {
                path: rel,
                kind: EntryKind::Symlink,
                mode: 0o777,
                size: 0,
                sha256: String::new(),
                link: Some(to),
            });
        } else if meta.file_type().is_file() {
            let (digest, size) = if dry { hash_file(&abs)? } else { store_blob_behind(blobs, &abs, &mut behind)? };
            files.push(FileEntry { path: rel, kind: EntryKind::File, mode, size, sha256: digest, link: None });
        } else {
            bail!("app file {} is not a regular file, directory or symlink", abs.display());
        }
    }
    for (path, bytes) in &rendered {
        let (digest, size) =
            if dry { (dockfra_common::sha256_hex(bytes), bytes.len() as u64) } else { store_bytes(blobs, bytes)? };
        files.push(FileEntry {
            path: path.clone(),
            kind: EntryKind::File,
            mode: 0o644,
            size,
            sha256: digest,
            link: None,
        });
    }
    // Every blob durable in the store before anything names it.
    behind.finish().context("cannot store the app's files in the blob store")?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let content: BTreeMap<&str, &str> = files.iter().map(|f| (f.path.as_str(), f.sha256.as_str())).collect();
    let content_id = dockfra_common::sha256_hex(serde_json::to_string(&content)?.as_bytes());
    let manifest = Manifest {
        format: FORMAT,
        requires: Vec::new(),
        // The agent it is for: the name it is enrolled under checks it.
        target: target.agent_name().to_string(),
        app: project.app.name.clone(),
        version: version.map(String::from).unwrap_or_else(|| content_id[..12].to_string()),
        sequence,
        created_unix: dockfra_common::now_unix(),
        platform,
        files,
        health: target.health.clone(),
        keep_releases: target.keep_releases,
        os: target.os.clone(),
    };
    manifest.validate().with_context(|| format!("the app in {} cannot be bundled", app_dir.display()))?;
    Ok(Built { manifest, rendered })
}

/// Open a stored blob (digest already validated).
pub fn open_blob(blobs: &Path, digest: &str) -> std::io::Result<(u64, std::fs::File)> {
    let d = Digest::new(digest).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let f = std::fs::File::open(blobs.join(d.as_str()))?;
    Ok((f.metadata()?.len(), f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_compose_keeps_yaml_1_1_words_strings() {
        let m: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("services:\n  web:\n    restart: \"no\"\n    environment: { DEBUG: \"on\", N: 3 }\n    ports: [\"80:80\"]\n")
                .unwrap();
        let text = String::from_utf8(render_json(&m)).unwrap();
        assert!(text.contains(r#""restart": "no""#) && text.contains(r#""DEBUG": "on""#), "{text}");
        assert!(text.contains(r#""N": 3"#) && text.contains(r#""80:80""#), "{text}");
        // Still YAML: read back, it is the same model.
        assert_eq!(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text).unwrap(), m);
    }

    #[test]
    fn swarm_rendering_maps_the_seed_keys() {
        let mut m: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "name: x\nservices:\n  agentd:\n    image: c\n    deploy: { mode: global }\n  web:\n    image: a\n    ports: [{ target: 80, published: '8080', mode: host }]\n  worker:\n    image: b\n    depends_on:\n      web: { condition: service_healthy }\n    deploy: { replicas: 5 }\n",
        )
        .unwrap();
        for_swarm(&mut m, Some(2), Some(1), Some(std::time::Duration::from_secs(10)));
        let y = serde_yaml_ng::to_string(&m).unwrap();
        let back: serde_yaml_ng::Value = serde_yaml_ng::from_str(&y).unwrap();
        assert_eq!(
            back["services"]["worker"]["depends_on"],
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[web]").unwrap()
        );
        assert_eq!(back["services"]["web"]["deploy"]["replicas"], 2);
        assert_eq!(back["services"]["worker"]["deploy"]["replicas"], 5, "an explicit value wins");
        assert_eq!(back["services"]["web"]["deploy"]["update_config"]["parallelism"], 1);
        assert_eq!(back["services"]["web"]["deploy"]["update_config"]["delay"], "10s");
        assert_eq!(back["services"]["web"]["ports"][0]["published"], 8080);
        assert!(
            back["services"]["web"]["deploy"]["update_config"].get("order").is_none(),
            "host-mode port: stop-first"
        );
        assert_eq!(back["services"]["worker"]["deploy"]["update_config"]["order"], "start-first");
        assert!(back.get("name").is_none());
        assert!(back["services"]["agentd"]["deploy"].get("replicas").is_none(), "global services take no replicas");
    }

    #[test]
    fn slots_double_the_fronted_services_and_keep_the_rest() {
        use dockfra_common::config::{Canary, SlotConfig, Strategy};
        let doc = "services:\n  web:\n    image: a\n    ports: ['127.0.0.1:8080:80', '8443:443']\n    depends_on: [db]\n  db:\n    image: p\n    volumes: [data:/var/lib/db]\n  worker:\n    image: b\n    depends_on: { web: { condition: service_healthy }, db: { condition: service_started } }\n";
        let mut m: serde_yaml_ng::Value = serde_yaml_ng::from_str(doc).unwrap();
        let cfg = SlotConfig {
            strategy: Strategy::Canary,
            canary: Canary { steps: vec![25, 100], pause: std::time::Duration::from_secs(3) },
            services: vec![],
            drain: std::time::Duration::from_secs(4),
            health_path: Some("/up".into()),
        };
        let mut plain = m.clone();
        for_slots(&mut plain, &cfg, "t", false).unwrap();
        assert!(plain["services"]["web-blue"].get("networks").is_none(), "no aliases for podman-compose");
        let sl = for_slots(&mut m, &cfg, "t", true).unwrap();
        let listen: Vec<(&str, &str, u16)> =
            sl.routes.iter().map(|r| (r.service.as_str(), r.listen.as_str(), r.port)).collect();
        assert_eq!(listen, [("web", "127.0.0.1:8080", 80), ("web", "0.0.0.0:8443", 443)]);
        assert_eq!((sl.canary_steps.as_slice(), sl.canary_pause_secs, sl.drain_secs), (&[25u8, 100][..], 3, 4));
        assert_eq!(sl.shared, ["db", "worker"]);
        let svcs = m["services"].as_mapping().unwrap();
        assert!(svcs.get("web").is_none());
        for slot in ["web-blue", "web-green"] {
            assert!(m["services"][slot].get("ports").is_none(), "{slot} publishes nothing itself");
            assert_eq!(m["services"][slot]["networks"]["default"]["aliases"][0], "web");
            assert_eq!(m["services"][slot]["depends_on"][0], "db");
        }
        assert!(m["services"]["worker"]["depends_on"].get("web").is_none(), "no dependency on a slot");
        assert!(m["services"]["worker"]["depends_on"].get("db").is_some());

        let refuse = |doc: &str, services: &[&str]| {
            let mut m: serde_yaml_ng::Value = serde_yaml_ng::from_str(doc).unwrap();
            let cfg = SlotConfig { services: services.iter().map(|s| s.to_string()).collect(), ..cfg.clone() };
            for_slots(&mut m, &cfg, "t", true).unwrap_err().to_string()
        };
        assert!(refuse("services:\n  db: { image: p }\n", &[]).contains("publishes a port"));
        assert!(refuse("services:\n  web: { image: a, ports: ['80:80'], container_name: w }\n", &[])
            .contains("container_name"));
        assert!(refuse("services:\n  web: { image: a, ports: ['53:53/udp'] }\n", &[]).contains("udp"));
        assert!(refuse("services:\n  web: { image: a, ports: ['80:80'] }\n", &["api"]).contains("\"api\""));
        assert!(refuse("services:\n  web: { image: a }\n", &["web"]).contains("publishes no port"));
        assert!(refuse("services:\n  web: { image: a, ports: ['80:80'] }\n  web-blue: { image: a }\n", &[])
            .contains("web-blue"));
    }

    #[test]
    fn ignore_rules() {
        let ig = Ignore::parse("# c\n*.log\n/build/\nnode_modules/\n!keep.log\ndocs/**/*.tmp\n");
        assert!(ig.is_ignored("a.log", false));
        assert!(ig.is_ignored("x/y/a.log", false));
        assert!(!ig.is_ignored("keep.log", false));
        assert!(ig.is_ignored("build", true));
        assert!(!ig.is_ignored("build", false));
        assert!(!ig.is_ignored("src/build", true));
        assert!(ig.is_ignored("src/node_modules", true));
        assert!(ig.is_ignored("docs/a/b/c.tmp", false));
        assert!(!ig.is_ignored("main.rs", false));
    }
}
