//! Compose → Podman Quadlet units (`.container`, `.network`, `.volume`, and a `.pod` when
//! the target names one). Keys Quadlet can express are translated; everything else becomes a
//! warning that names the service and the key — never silently dropped, never a panic.
use std::fmt::Write as _;

use serde_yaml_ng::{Mapping, Value};

use super::{list, pairs, scalar};

/// One unit file: its name (e.g. `web.container`) and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub text: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Converted {
    pub units: Vec<Unit>,
    pub warnings: Vec<String>,
}

/// Options from the target's `podman` config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Prefix for unit and resource names (the compose project).
    pub project: String,
    /// `pod_name`: put every container in this pod.
    pub pod: Option<String>,
}

/// Keys of a service this converter translates (anything else is warned about).
const HANDLED: &[&str] = &[
    "image",
    "container_name",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "volumes",
    "networks",
    "labels",
    "healthcheck",
    "restart",
    "user",
    "working_dir",
    "depends_on",
    "init",
    "read_only",
    "hostname",
    "stop_grace_period",
    "pull_policy",
    "cap_add",
    "cap_drop",
    "devices",
    "dns",
    "tmpfs",
    "expose",
];

/// Quote one argument for a Quadlet `Exec=` line (systemd's rules: double quotes, `\\` escapes).
fn quote(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c)) {
        arg.to_string()
    } else {
        format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "$$").replace('%', "%%"))
    }
}

/// `command:` / `entrypoint:` as a string (shell form) or a list (exec form).
fn argv(v: &Value) -> Option<String> {
    match v {
        Value::Sequence(items) => {
            Some(items.iter().filter_map(scalar).map(|a| quote(&a)).collect::<Vec<_>>().join(" "))
        }
        other => scalar(other).map(|s| format!("/bin/sh -c {}", quote(&s))),
    }
}

fn duration(v: &Value) -> Option<String> {
    scalar(v).map(|s| s.replace(' ', ""))
}

/// Convert a resolved compose model (as `compose::load` gives it).
pub fn convert(model: &Value, opts: &Options) -> Converted {
    let mut out = Converted::default();
    let empty = Mapping::new();
    let services = model.get("services").and_then(Value::as_mapping).unwrap_or(&empty);
    let prefix = if opts.project.is_empty() { String::new() } else { format!("{}-", opts.project) };

    // Top-level networks and volumes become their own units.
    let mut networks = Vec::new();
    if let Some(nets) = model.get("networks").and_then(Value::as_mapping) {
        for (name, def) in nets {
            let Some(name) = scalar(name) else { continue };
            let mut t = format!("[Network]\nNetworkName={prefix}{name}\n");
            if let Some(d) = def.get("driver").and_then(scalar) {
                if d != "bridge" {
                    out.warnings.push(format!("network {name}: driver {d:?} is not supported; using the default"));
                }
            }
            if def.get("external").and_then(Value::as_bool) == Some(true) {
                out.warnings.push(format!("network {name}: external networks are expected to exist; no unit made"));
                continue;
            }
            let internal = def.get("internal").and_then(Value::as_bool) == Some(true);
            if internal {
                t.push_str("Internal=true\n");
            }
            t.push_str(&create_first("network", &format!("{prefix}{name}"), if internal { "--internal " } else { "" }));
            networks.push(name.clone());
            out.units.push(Unit { name: format!("{prefix}{name}.network"), text: t });
        }
    }
    let default_needed = services.values().filter_map(Value::as_mapping).any(|svc| joins_default(svc, opts));
    if default_needed && !networks.iter().any(|n| n == "default") {
        networks.push("default".into());
        let name = format!("{prefix}default");
        out.units.push(Unit {
            name: format!("{name}.network"),
            text: format!("[Network]\nNetworkName={name}\n{}", create_first("network", &name, "")),
        });
    }
    let mut volumes = Vec::new();
    if let Some(vols) = model.get("volumes").and_then(Value::as_mapping) {
        for (name, def) in vols {
            let Some(name) = scalar(name) else { continue };
            if def.get("external").and_then(Value::as_bool) == Some(true) {
                out.warnings.push(format!("volume {name}: external volumes are expected to exist; no unit made"));
                continue;
            }
            if def.get("driver").is_some() || def.get("driver_opts").is_some() {
                out.warnings.push(format!("volume {name}: driver and driver_opts are not supported; ignored"));
            }
            volumes.push(name.clone());
            out.units.push(Unit {
                name: format!("{prefix}{name}.volume"),
                text: format!(
                    "[Volume]\nVolumeName={prefix}{name}\n{}",
                    create_first("volume", &format!("{prefix}{name}"), "")
                ),
            });
        }
    }
    // In a pod the containers share its network namespace: Podman refuses ports and networks
    // on them ("must be defined when the pod is created"), so the pod takes them all.
    let pod_at = out.units.len();
    let (mut pod_ports, mut pod_networks): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());

    for (svc_name, svc) in services {
        let Some(svc_name) = scalar(svc_name) else { continue };
        let Some(svc) = svc.as_mapping() else {
            out.warnings.push(format!("service {svc_name}: not a mapping; skipped"));
            continue;
        };
        let warn = |out: &mut Converted, key: &str, why: &str| {
            out.warnings.push(format!("service {svc_name}: key {key}: {why}"))
        };
        let mut unit = String::new();
        let mut container = String::new();
        let mut service = String::new();
        let _ = writeln!(unit, "[Unit]\nDescription={svc_name} (compose service of {})", opts.project);

        match svc.get("image").and_then(scalar) {
            Some(img) => {
                let _ = writeln!(container, "Image={img}");
            }
            None => {
                warn(&mut out, "build", "no image: Quadlet runs images; build it and set image:");
                continue;
            }
        }
        if svc.contains_key("build") {
            warn(&mut out, "build", "ignored: the image is used as it is");
        }
        let _ = writeln!(
            container,
            "ContainerName={}",
            svc.get("container_name").and_then(scalar).unwrap_or_else(|| format!("{prefix}{svc_name}"))
        );
        if let Some(e) = svc.get("entrypoint").and_then(argv) {
            let _ = writeln!(container, "Entrypoint={e}");
        }
        if let Some(c) = svc.get("command").and_then(argv) {
            let _ = writeln!(container, "Exec={c}");
        }
        if let Some(env) = svc.get("environment") {
            for (k, v) in pairs(env) {
                match v {
                    Some(v) => {
                        let _ = writeln!(container, "Environment={}", quote(&format!("{k}={v}")));
                    }
                    None => warn(
                        &mut out,
                        &format!("environment.{k}"),
                        "no value (taken from the host in compose); not set",
                    ),
                }
            }
        }
        if let Some(files) = svc.get("env_file") {
            for f in list(files) {
                let _ = writeln!(container, "EnvironmentFile={f}");
            }
        }
        for p in svc.get("ports").map(list_ports).unwrap_or_default() {
            if opts.pod.is_some() {
                if !pod_ports.contains(&p) {
                    pod_ports.push(p);
                }
            } else {
                let _ = writeln!(container, "PublishPort={p}");
            }
        }
        if let Some(vs) = svc.get("volumes").and_then(Value::as_sequence) {
            for v in vs {
                match volume(v, &volumes, &prefix) {
                    Ok(line) => {
                        let _ = writeln!(container, "Volume={line}");
                    }
                    Err(why) => warn(&mut out, "volumes", &why),
                }
            }
        }
        // As in compose, a service without `networks:` joins the project's `default` network,
        // and on each of its networks it answers to its service name.
        let svc_nets: Vec<String> = match svc.get("networks") {
            Some(Value::Mapping(m)) => m.keys().filter_map(scalar).collect(),
            Some(other) => list(other),
            None if joins_default(svc, opts) => vec!["default".into()],
            None => vec![],
        };
        let mut joined = false;
        for n in svc_nets {
            if networks.contains(&n) {
                let line = format!("Network={prefix}{n}.network");
                if opts.pod.is_some() {
                    if !pod_networks.contains(&line) {
                        pod_networks.push(line);
                    }
                } else {
                    let _ = writeln!(container, "{line}");
                    joined = true;
                }
            } else {
                warn(&mut out, "networks", &format!("network {n} is not defined at the top level; ignored"));
            }
        }
        if joined {
            let _ = writeln!(container, "NetworkAlias={svc_name}");
        }
        // The labels compose sets, so one filter finds a project's containers in either mode.
        let _ = writeln!(container, "Label=com.docker.compose.project={}", quote(&opts.project));
        let _ = writeln!(container, "Label=com.docker.compose.service={}", quote(&svc_name));
        if let Some(labels) = svc.get("labels") {
            for (k, v) in pairs(labels) {
                let _ = writeln!(container, "Label={}", quote(&format!("{k}={}", v.unwrap_or_default())));
            }
        }
        if let Some(h) = svc.get("healthcheck").and_then(Value::as_mapping) {
            if h.get("disable").and_then(Value::as_bool) == Some(true) {
                let _ = writeln!(container, "HealthCmd=none");
            } else if let Some(test) = h.get("test") {
                let cmd = match test {
                    Value::Sequence(items) => {
                        let items: Vec<String> = items.iter().filter_map(scalar).collect();
                        match items.first().map(String::as_str) {
                            Some("CMD") => Some(items[1..].iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")),
                            Some("CMD-SHELL") => items.get(1).map(|s| format!("/bin/sh -c {}", quote(s))),
                            Some("NONE") => Some("none".into()),
                            _ => None,
                        }
                    }
                    other => scalar(other).map(|s| format!("/bin/sh -c {}", quote(&s))),
                };
                match cmd {
                    Some(c) => {
                        let _ = writeln!(container, "HealthCmd={c}");
                    }
                    None => warn(&mut out, "healthcheck.test", "unrecognised form; ignored"),
                }
            }
            for (key, q) in
                [("interval", "HealthInterval"), ("timeout", "HealthTimeout"), ("start_period", "HealthStartPeriod")]
            {
                if let Some(d) = h.get(key).and_then(duration) {
                    let _ = writeln!(container, "{q}={d}");
                }
            }
            if let Some(r) = h.get("retries").and_then(scalar) {
                let _ = writeln!(container, "HealthRetries={r}");
            }
        }
        if let Some(u) = svc.get("user").and_then(scalar) {
            let _ = writeln!(container, "User={u}");
        }
        if let Some(w) = svc.get("working_dir").and_then(scalar) {
            let _ = writeln!(container, "WorkingDir={w}");
        }
        if let Some(h) = svc.get("hostname").and_then(scalar) {
            let _ = writeln!(container, "HostName={h}");
        }
        if svc.get("read_only").and_then(Value::as_bool) == Some(true) {
            let _ = writeln!(container, "ReadOnly=true");
        }
        for (key, q) in [
            ("cap_add", "AddCapability"),
            ("cap_drop", "DropCapability"),
            ("devices", "AddDevice"),
            ("dns", "DNS"),
            ("tmpfs", "Tmpfs"),
        ] {
            for v in svc.get(key).map(list).unwrap_or_default() {
                let _ = writeln!(container, "{q}={v}");
            }
        }
        if svc.get("init").and_then(Value::as_bool) == Some(true) {
            let _ = writeln!(container, "PodmanArgs=--init");
        }
        if let Some(p) = svc.get("pull_policy").and_then(scalar) {
            let _ = writeln!(container, "Pull={}", if p == "if_not_present" { "missing".to_string() } else { p });
        }
        if let Some(pod) = &opts.pod {
            let _ = writeln!(container, "Pod={pod}.pod");
        }
        if let Some(deps) = svc.get("depends_on") {
            let names: Vec<String> = match deps {
                Value::Mapping(m) => m.keys().filter_map(scalar).collect(),
                other => list(other),
            };
            for d in names {
                let _ = writeln!(unit, "Requires={prefix}{d}.service\nAfter={prefix}{d}.service");
            }
        }
        match svc.get("restart").and_then(scalar).as_deref() {
            None => {}
            Some("no") => {
                let _ = writeln!(service, "Restart=no");
            }
            Some("always") | Some("unless-stopped") => {
                let _ = writeln!(service, "Restart=always");
            }
            Some(r) if r.starts_with("on-failure") => {
                let _ = writeln!(service, "Restart=on-failure");
            }
            Some(r) => warn(&mut out, "restart", &format!("unknown policy {r:?}; ignored")),
        }
        if let Some(g) = svc.get("stop_grace_period").and_then(duration) {
            let _ = writeln!(service, "TimeoutStopSec={g}");
        }
        if svc.contains_key("expose") {
            warn(&mut out, "expose", "ports between containers need no declaration in Podman; ignored");
        }
        let mut unhandled: Vec<&str> =
            svc.keys().filter_map(Value::as_str).filter(|k| !HANDLED.contains(k) && *k != "build").collect();
        unhandled.sort_unstable();
        for k in unhandled {
            warn(&mut out, k, "not supported by the Quadlet conversion; ignored");
        }
        // Podman 4.x leaves the cid file behind on stop, and the next start refuses to run.
        let _ = writeln!(service, "ExecStopPost=-/bin/rm -f %t/%N.cid");
        // A container stopped by SIGTERM is a clean stop, not a failed unit.
        let _ = writeln!(service, "SuccessExitStatus=143");
        let mut text = unit;
        let _ = write!(text, "\n[Container]\n{container}");
        let _ = write!(text, "\n[Service]\n{service}");
        text.push_str("\n[Install]\nWantedBy=default.target\n");
        out.units.push(Unit { name: format!("{prefix}{svc_name}.container"), text });
    }
    if let Some(pod) = &opts.pod {
        let mut text = format!("[Pod]\nPodName={pod}\n");
        for l in pod_networks {
            let _ = writeln!(text, "{l}");
        }
        for p in pod_ports {
            let _ = writeln!(text, "PublishPort={p}");
        }
        // The pod outlives its containers' restarts (Quadlet's default, `--exit-policy=stop`,
        // stops it when the last one exits, and a restart of them all then fails on the
        // stopping pod); the later flag wins.
        text.push_str("PodmanArgs=--exit-policy=continue\n");
        // Podman 4.x leaves the pod-id file behind, and the next `pod create --replace`
        // refuses to run: remove it before the create (removing it on stop would make
        // Quadlet's own `pod rm --pod-id-file` fail).
        text.push_str("\n[Service]\nExecStartPre=-/bin/rm -f %t/%N.pod-id\n");
        out.units.insert(pod_at, Unit { name: format!("{pod}.pod"), text });
    }
    out
}

/// `[Service]` lines that make a `.network`/`.volume` unit work with Podman before 4.4 too:
/// Quadlet always runs `podman network|volume create --ignore NAME`, and Podman 4.3 knows no
/// `--ignore` (exit 125). The resource is created first, idempotently, and that exit accepted.
fn create_first(kind: &str, name: &str, flags: &str) -> String {
    format!(
        "\n[Service]\nExecStartPre=/bin/sh -c 'podman {kind} exists {name} || exec podman {kind} create {flags}{name}'\nSuccessExitStatus=125\n"
    )
}

/// Does this service join the project's `default` network (no `networks:`, no
/// `network_mode:`, not in a pod)?
fn joins_default(svc: &Mapping, opts: &Options) -> bool {
    opts.pod.is_none() && !svc.contains_key("networks") && !svc.contains_key("network_mode")
}

/// Ports in short (`"8080:80"`, `"127.0.0.1:8080:80/udp"`) or long form, as `PublishPort=` values.
fn list_ports(v: &Value) -> Vec<String> {
    let Some(items) = v.as_sequence() else { return vec![] };
    items
        .iter()
        .filter_map(|p| match p {
            Value::Mapping(m) => {
                let target = m.get("target").and_then(scalar)?;
                let published = m.get("published").and_then(scalar);
                let ip = m.get("host_ip").and_then(scalar);
                let proto = m.get("protocol").and_then(scalar).filter(|p| p != "tcp");
                let mut s = String::new();
                if let Some(ip) = ip {
                    s.push_str(&ip);
                    s.push(':');
                }
                if let Some(p) = published {
                    s.push_str(&p);
                    s.push(':');
                }
                s.push_str(&target);
                if let Some(p) = proto {
                    s.push('/');
                    s.push_str(&p);
                }
                Some(s)
            }
            other => scalar(other),
        })
        .collect()
}

/// One `volumes:` entry as a `Volume=` value: named volumes become `<prefix><name>.volume`.
fn volume(v: &Value, named: &[String], prefix: &str) -> Result<String, String> {
    let (source, target, mode) = match v {
        Value::Mapping(m) => {
            let t = m.get("type").and_then(scalar).unwrap_or_else(|| "volume".into());
            if t != "volume" && t != "bind" {
                return Err(format!("volume type {t:?} is not supported; ignored"));
            }
            let target = m.get("target").and_then(scalar).ok_or("a volume without target; ignored")?;
            let ro = m.get("read_only").and_then(Value::as_bool) == Some(true);
            (m.get("source").and_then(scalar), target, if ro { Some("ro".to_string()) } else { None })
        }
        other => {
            let s = scalar(other).ok_or("not a string or mapping; ignored")?;
            let parts: Vec<&str> = s.splitn(3, ':').collect();
            match parts.as_slice() {
                [t] => (None, t.to_string(), None),
                [s, t] => (Some(s.to_string()), t.to_string(), None),
                [s, t, m] => (Some(s.to_string()), t.to_string(), Some(m.to_string())),
                _ => return Err("empty volume; ignored".into()),
            }
        }
    };
    let mut line = match source {
        None => target.clone(),
        Some(s) if named.contains(&s) => format!("{prefix}{s}.volume:{target}"),
        Some(s) if s.starts_with('/') => format!("{s}:{target}"),
        Some(s) if s.starts_with('.') || s.starts_with('~') => {
            return Err(format!("relative bind mount {s:?} (Quadlet resolves it against the unit dir); ignored"));
        }
        Some(s) => format!("{s}:{target}"),
    };
    if let Some(m) = mode {
        line.push(':');
        line.push_str(&m);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn golden_two_services() {
        let m = resolved(
            r#"
services:
  web:
    image: docker.io/library/busybox:1.36
    command: ["httpd", "-f", "-p", "8080"]
    ports: ["127.0.0.1:8080:8080"]
    environment: { GREETING: "hello world" }
    volumes: ["data:/www", "/etc/hosts:/etc/hosts:ro"]
    networks: [front]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080/"]
      interval: 5s
      retries: 3
    restart: unless-stopped
    deploy: { replicas: 2 }
  worker:
    image: busybox
    command: sleep 3600
    depends_on: { web: { condition: service_healthy } }
networks: { front: {} }
volumes: { data: {} }
"#,
        );
        let c = convert(&m, &Options { project: "shop".into(), pod: None });
        let names: Vec<&str> = c.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "shop-front.network",
                "shop-default.network",
                "shop-data.volume",
                "shop-web.container",
                "shop-worker.container"
            ]
        );
        let web = &c.units[3].text;
        assert_eq!(
            web,
            "[Unit]\nDescription=web (compose service of shop)\n\n[Container]\nImage=docker.io/library/busybox:1.36\n\
ContainerName=shop-web\nExec=httpd -f -p 8080\nEnvironment=\"GREETING=hello world\"\nPublishPort=127.0.0.1:8080:8080\n\
Volume=shop-data.volume:/www\nVolume=/etc/hosts:/etc/hosts:ro\nNetwork=shop-front.network\nNetworkAlias=web\n\
Label=com.docker.compose.project=shop\nLabel=com.docker.compose.service=web\n\
HealthCmd=wget -q -O- http://127.0.0.1:8080/\nHealthInterval=5s\nHealthRetries=3\n\n[Service]\nRestart=always\n\
ExecStopPost=-/bin/rm -f %t/%N.cid\nSuccessExitStatus=143\n\n[Install]\nWantedBy=default.target\n"
        );
        let worker = &c.units[4].text;
        assert!(worker.contains("Exec=/bin/sh -c \"sleep 3600\""), "{worker}");
        // No `networks:`: the project's default network, reachable by service name.
        assert!(worker.contains("Network=shop-default.network\nNetworkAlias=worker\n"), "{worker}");
        assert!(worker.contains("Requires=shop-web.service\nAfter=shop-web.service"), "{worker}");
        assert_eq!(c.warnings, ["service web: key deploy: not supported by the Quadlet conversion; ignored"]);
    }

    #[test]
    fn in_a_pod_the_pod_publishes_the_ports_and_joins_the_networks() {
        let m: Value = serde_yaml_ng::from_str(
            "services:\n  web:\n    image: a:1\n    ports: ['8080:80']\n    networks: [front]\n  api:\n    image: b:1\n    ports: ['9000:9000', '8080:80']\nnetworks:\n  front: {}\n",
        )
        .unwrap();
        let c = convert(&m, &Options { project: "shop".into(), pod: Some("shop-pod".into()) });
        let pod = c.units.iter().find(|u| u.name == "shop-pod.pod").unwrap();
        assert_eq!(
            pod.text,
            "[Pod]\nPodName=shop-pod\nNetwork=shop-front.network\nPublishPort=8080:80\nPublishPort=9000:9000\nPodmanArgs=--exit-policy=continue\n\n[Service]\nExecStartPre=-/bin/rm -f %t/%N.pod-id\n"
        );
        for u in c.units.iter().filter(|u| u.name.ends_with(".container")) {
            assert!(u.text.contains("Pod=shop-pod.pod"), "{}", u.text);
            assert!(!u.text.contains("PublishPort=") && !u.text.contains("Network"), "{}", u.text);
        }
    }

    #[test]
    fn every_corpus_file_converts_and_warnings_name_service_and_key() {
        let ws = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = dockfra_common::shared_dir(&ws).join("corpus/awesome-compose");
        let mut files = 0;
        let mut warned = 0;
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let Some(file) = dockfra_common::compose::find_compose_file(&entry.path()) else { continue };
            let opts = dockfra_common::compose::LoadOptions {
                project_name: None,
                overrides: &Default::default(),
                use_process_env: false,
            };
            let project =
                dockfra_common::compose::load(&file, &opts).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let c = convert(&project.model, &Options { project: project.name.clone(), pod: Some("p".into()) });
            files += 1;
            let services = project.services();
            // Every service yields a unit, or a warning that names it.
            for s in &services {
                let has_unit = c.units.iter().any(|u| u.name == format!("{}-{s}.container", project.name));
                let named = c.warnings.iter().any(|w| w.starts_with(&format!("service {s}: key ")));
                assert!(has_unit || named, "{}: service {s} vanished", file.display());
            }
            for w in &c.warnings {
                warned += 1;
                assert!(w.starts_with("service ") || w.starts_with("network ") || w.starts_with("volume "), "{w}");
                if w.starts_with("service ") {
                    assert!(w.contains(": key "), "a service warning names the key: {w}");
                }
            }
            for u in &c.units {
                assert!(u.text.is_ascii() || !u.text.contains('\0'));
                assert!(u.text.contains('[') && u.text.ends_with('\n'), "{}", u.name);
            }
        }
        assert!(files >= 30, "only {files} corpus files");
        assert!(warned > 0, "the corpus uses keys Quadlet cannot express (build:, deploy:, …)");
    }
}
