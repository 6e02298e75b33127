//! `generate`: files an operator would otherwise write by hand, from the project and its
//! targets: Caddyfile entries (a reverse proxy per published service), systemd units for
//! `ssh_raw` apps, and a minimal compose file. Pure functions of the project; the CLI prints
//! or writes what they return.
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

use dockfra_common::compose;
use dockfra_common::config::{Platform, PlatformConfig, Project, ServiceManager, Target};

/// The resolved compose model of a target (variables as its bundle resolves them).
fn model(project: &Project, target: &Target) -> Result<Option<serde_yaml_ng::Value>> {
    let Some(file) = compose::find_compose_file(&project.app.path) else { return Ok(None) };
    let over = crate::envs::overrides(project, target)?;
    let (cp, _) = crate::envs::load_as_app(&file, Some(&project.app.name), &over)
        .with_context(|| format!("target {:?}: {}", target.id, file.display()))?;
    Ok(Some(cp.model))
}

fn is_compose(p: Platform) -> bool {
    matches!(p, Platform::DockerCompose | Platform::Podman | Platform::Swarm)
}

/// A DNS label from a compose service or target name.
fn label(s: &str) -> String {
    let l: String = s.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    l.trim_matches('-').to_string()
}

/// Caddyfile site blocks: one per service that publishes a TCP host port, on each compose
/// target. Sites are `SERVICE.DOMAIN` (with several targets, `SERVICE.TARGET.DOMAIN`); a
/// service's further ports get `SERVICE-PORT.…`. The upstream is `upstream` (default: the
/// port's host IP when it names one, else 127.0.0.1: Caddy beside the app).
pub fn caddy(project: &Project, targets: &[&Target], domain: &str, upstream: Option<&str>) -> Result<String> {
    let targets: Vec<&&Target> = targets.iter().filter(|t| is_compose(t.platform)).collect();
    if targets.is_empty() {
        bail!("no docker_compose, podman or swarm target: nothing publishes a port to proxy");
    }
    let mut out = format!(
        "# Caddyfile entries for app {} (written by `dockfra-coord generate caddy`).\n# Each site proxies to a service's published host port; Caddy gets certificates for real\n# domains by itself. Check with `caddy validate --config Caddyfile --adapter caddyfile`.\n",
        project.app.name
    );
    let mut sites = 0;
    for t in &targets {
        let Some(model) = model(project, t)? else { continue };
        let mut seen: Vec<String> = Vec::new();
        for p in crate::validate::published_ports(&model).into_iter().filter(|p| p.protocol == "tcp") {
            let svc = label(&p.service);
            let host = if targets.len() > 1 { format!("{svc}.{}", label(&t.id)) } else { svc.clone() };
            let site = if seen.contains(&p.service) {
                format!("{svc}-{}{}", p.first, host.strip_prefix(svc.as_str()).unwrap_or(""))
            } else {
                host
            };
            seen.push(p.service.clone());
            let to_host = match upstream {
                Some(u) => u.to_string(),
                None if !p.ip.is_empty() && p.ip != "0.0.0.0" && p.ip != "::" => p.ip.clone(),
                None => "127.0.0.1".into(),
            };
            let to_host = if to_host.contains(':') { format!("[{to_host}]") } else { to_host };
            let _ = write!(
                out,
                "\n# target {}, service {}: host port {} ({})\n{site}.{domain} {{\n\treverse_proxy {to_host}:{}\n}}\n",
                t.id, p.service, p.first, p.key, p.first
            );
            sites += 1;
        }
    }
    if sites == 0 {
        bail!("no service publishes a TCP host port (`ports:`): nothing to proxy");
    }
    Ok(out)
}

/// systemd units for the `ssh_raw` targets: the app's release (`DEPLOY_PATH/APP/current`)
/// run as a service that each deploy restarts. (unit file name, text) per target.
pub fn systemd(project: &Project, targets: &[&Target]) -> Result<Vec<(String, String)>> {
    let mut units = Vec::new();
    for t in targets {
        let PlatformConfig::SshRaw { deploy_path, service_manager, service_name, .. } = &t.config else { continue };
        let Some(base) = deploy_path else {
            bail!("target {:?}: set config.deploy_path, so the unit knows where the release lives", t.id);
        };
        let name = service_name.clone().unwrap_or_else(|| project.app.name.clone());
        let name = name.trim_end_matches(".service").to_string();
        let current = base.join(&project.app.name).join("current");
        let start = ["start", "start.sh", "run", "bin/start"].iter().find(|f| is_executable(&project.app.path.join(f)));
        let (exec, note) = match start {
            Some(f) => (current.join(f).display().to_string(), format!("# ExecStart runs the app's own {f}.")),
            None => (
                current.join("start").display().to_string(),
                "# The app has no start script (start, start.sh, run, bin/start): add one, or edit ExecStart.".into(),
            ),
        };
        let mut u = String::new();
        let _ = writeln!(
            u,
            "# {name}.service for target {} (app {}), written by `dockfra-coord generate systemd`.",
            t.id, project.app.name
        );
        let _ = writeln!(u, "# Install it as /etc/systemd/system/{name}.service, then: systemctl daemon-reload && systemctl enable --now {name}");
        let _ = writeln!(u, "{note}");
        if *service_manager != ServiceManager::Systemd || service_name.is_none() {
            let _ = writeln!(
                u,
                "# To restart it after each deploy, set in deploy-targets.yaml: service_manager: systemd, service_name: {name}"
            );
        }
        let _ = writeln!(u, "[Unit]\nDescription={} (deployed by dockfra to {})", project.app.name, t.id);
        let _ = writeln!(u, "After=network-online.target\nWants=network-online.target\n");
        let _ = writeln!(u, "[Service]\nType=simple");
        if let Some(user) = &t.user {
            let _ = writeln!(u, "User={user}");
        }
        let _ = writeln!(u, "WorkingDirectory={}", current.display());
        let _ = writeln!(u, "ExecStart={exec}");
        let _ = writeln!(u, "Restart=on-failure\nRestartSec=2");
        let _ = writeln!(u, "NoNewPrivileges=yes\nPrivateTmp=yes\nProtectSystem=full\n");
        let _ = writeln!(u, "[Install]\nWantedBy=multi-user.target");
        units.push((format!("{name}.service"), u));
    }
    if units.is_empty() {
        bail!("no ssh_raw target: systemd units are for apps deployed as plain files");
    }
    Ok(units)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// A minimal compose file: the target's resolved services with only what runs them (image
/// or build, ports, volumes, environment, depends_on, restart, healthcheck), or, for an app
/// without one, a starter from what the app holds (a Dockerfile, a static site).
pub fn compose_file(project: &Project, target: Option<&Target>) -> Result<String> {
    const KEEP: &[&str] = &[
        "image",
        "build",
        "command",
        "ports",
        "volumes",
        "environment",
        "env_file",
        "depends_on",
        "restart",
        "healthcheck",
    ];
    let head = format!("# compose.yaml for app {} (written by `dockfra-coord generate compose`).\n", project.app.name);
    if compose::find_compose_file(&project.app.path).is_some() {
        let t = target.or(project.targets.first()).context("no target")?;
        let model = model(project, t)?.context("no compose file")?;
        let mut services = serde_yaml_ng::Mapping::new();
        if let Some(serde_yaml_ng::Value::Mapping(m)) = model.get("services") {
            for (name, svc) in m {
                let Some(svc) = svc.as_mapping() else { continue };
                let kept: serde_yaml_ng::Mapping = svc
                    .iter()
                    .filter(|(k, _)| k.as_str().is_some_and(|k| KEEP.contains(&k)))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                services.insert(name.clone(), serde_yaml_ng::Value::Mapping(kept));
            }
        }
        let mut top = serde_yaml_ng::Mapping::new();
        top.insert("services".into(), serde_yaml_ng::Value::Mapping(services));
        for section in ["volumes", "networks", "secrets", "configs"] {
            if let Some(v) = model.get(section) {
                top.insert(section.into(), v.clone());
            }
        }
        let body = serde_yaml_ng::to_string(&serde_yaml_ng::Value::Mapping(top))?;
        return Ok(format!("{head}# Resolved for target {} (its variables applied).\n{body}", t.id));
    }
    let app = &project.app.path;
    let name = label(&project.app.name);
    let name = if name.is_empty() { "app".to_string() } else { name };
    if app.join("Dockerfile").is_file() {
        Ok(format!(
            "{head}# Built from the app's Dockerfile; set images: bundle (or a registry) on the targets.\nservices:\n  {name}:\n    build: .\n    image: {name}:latest\n    restart: unless-stopped\n    ports:\n      - \"8080:8080\"   # HOST:CONTAINER: the port the app listens on\n"
        ))
    } else if app.join("index.html").is_file() {
        Ok(format!(
            "{head}# A static site, served by nginx from the release's files.\nservices:\n  {name}:\n    image: nginx:1.27-alpine\n    restart: unless-stopped\n    ports:\n      - \"8080:80\"\n    volumes:\n      - ./:/usr/share/nginx/html:ro\n    healthcheck:\n      test: [\"CMD\", \"wget\", \"-q\", \"--spider\", \"http://127.0.0.1/\"]\n      interval: 10s\n      retries: 3\n"
        ))
    } else {
        bail!(
            "{} has no compose file, no Dockerfile and no index.html: write the compose file by hand (or add a Dockerfile)",
            app.display()
        )
    }
}
