//! `setup`: write a first `deploy-targets.yaml` for an app directory. It detects how the app
//! deploys (a compose file; a compose file with Podman Quadlet units beside it; plain files
//! with a systemd unit; plain files), takes the targets from flags or, on a terminal, asks for
//! them, and writes a commented file that `validate` accepts. It never overwrites a file
//! without `--force`, and writes nothing when the targets it was given are not valid.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use dockfra_common::compose;
use dockfra_common::config::{self, Mode, Platform};

/// How the app in a directory deploys, as far as its files tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub platform: Platform,
    /// The compose file, when there is one.
    pub compose: Option<PathBuf>,
    /// Services built from source (they need `images: bundle`).
    pub built: Vec<String>,
    /// Quadlet units found beside the compose file (`*.container`, `*.pod`, …).
    pub quadlet: Vec<String>,
    /// A systemd unit among the app's files (`NAME.service`).
    pub unit: Option<String>,
    /// Why: one line for the operator.
    pub why: String,
}

/// Look at `dir`'s files.
pub fn detect(dir: &Path) -> Result<Detected> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    for sub in ["quadlet", "systemd"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            names.extend(rd.flatten().filter_map(|e| e.file_name().to_str().map(|n| format!("{sub}/{n}"))));
        }
    }
    names.sort();
    let quadlet: Vec<String> = names
        .iter()
        .filter(|n| [".container", ".pod", ".kube", ".network", ".volume"].iter().any(|x| n.ends_with(x)))
        .cloned()
        .collect();
    let unit = names.iter().find(|n| n.ends_with(".service")).map(|n| {
        let base = n.rsplit('/').next().unwrap_or(n);
        base.trim_end_matches(".service").to_string()
    });
    let Some(file) = compose::find_compose_file(dir) else {
        return Ok(match unit {
            Some(u) => Detected {
                platform: Platform::SshRaw,
                compose: None,
                built: Vec::new(),
                quadlet,
                why: format!("no compose file; plain files with the systemd unit {u}.service"),
                unit: Some(u),
            },
            None => Detected {
                platform: Platform::SshRaw,
                compose: None,
                built: Vec::new(),
                quadlet,
                unit: None,
                why: "no compose file: plain files, copied as they are".into(),
            },
        });
    };
    // Which services are built: from the file as written (a broken file is `validate`'s to
    // report, not a reason to write nothing).
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let raw: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap_or(serde_yaml_ng::Value::Null);
    let built: Vec<String> = match raw.get("services") {
        Some(serde_yaml_ng::Value::Mapping(m)) => m
            .iter()
            .filter(|(_, s)| s.get("build").is_some())
            .filter_map(|(k, _)| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let shown = file.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    Ok(if quadlet.is_empty() {
        Detected {
            platform: Platform::DockerCompose,
            why: format!("{shown}: a Docker Compose app"),
            compose: Some(file),
            built,
            quadlet,
            unit: None,
        }
    } else {
        Detected {
            platform: Platform::Podman,
            why: format!("{shown} with Quadlet units ({}): a Podman app run by systemd", quadlet.join(", ")),
            compose: Some(file),
            built,
            quadlet,
            unit: None,
        }
    })
}

/// One target to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPlan {
    pub id: String,
    pub host: Option<String>,
    pub mode: Mode,
    pub labels: BTreeMap<String, String>,
}

/// What `setup` writes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub app: String,
    pub platform: Platform,
    pub os: Option<String>,
    pub targets: Vec<TargetPlan>,
    pub detected: Detected,
}

/// A target as `ID[=HOST]` on the command line.
pub fn parse_target(s: &str) -> Result<(String, Option<String>)> {
    let (id, host) = match s.split_once('=') {
        Some((i, h)) if !h.is_empty() => (i, Some(h.to_string())),
        Some((i, _)) => (i, None),
        None => (s, None),
    };
    check_id(id)?;
    Ok((id.to_string(), host))
}

fn check_id(id: &str) -> Result<()> {
    config::check_dns_label(id).map_err(|why| anyhow::anyhow!("target id: {why}"))
}

/// `key=value` labels.
pub fn parse_label(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => Ok((k.to_string(), v.to_string())),
        _ => bail!("label {s:?}: expected KEY=VALUE"),
    }
}

/// YAML for a scalar the operator typed: quoted whenever YAML could read it as anything but
/// that string.
fn scalar(s: &str) -> String {
    serde_yaml_ng::to_string(&serde_yaml_ng::Value::String(s.to_string()))
        .map(|y| y.trim_end().to_string())
        .unwrap_or_else(|_| format!("{s:?}"))
}

/// The commented file.
pub fn render(plan: &Plan) -> String {
    let d = &plan.detected;
    let mut y = String::new();
    let _ = writeln!(y, "# deploy-targets.yaml — where this app deploys (written by `dockfra-coord setup`).");
    let _ = writeln!(y, "# Detected: {}.", d.why);
    let _ = writeln!(y, "# Check it with `dockfra-coord validate`, see what a deploy would change with");
    let _ = writeln!(y, "# `dockfra-coord plan TARGET`, and deploy with `dockfra-coord deploy TARGET`.");
    let _ = writeln!(y, "# Every key: docs/CONFIGURATION.md.");
    let _ = writeln!(y);
    let _ = writeln!(y, "app:");
    let _ = writeln!(y, "  name: {}          # the app's name on every agent (its release store)", scalar(&plan.app));
    let _ = writeln!(y);
    let _ = writeln!(y, "targets:");
    for t in &plan.targets {
        let _ = writeln!(y, "  {}:", t.id);
        match &t.host {
            Some(h) => {
                let _ = writeln!(y, "    host: {}          # where the agent runs", scalar(h));
            }
            None => {
                let _ = writeln!(y, "    # host: 203.0.113.7       # where the agent runs (push mode dials it)");
            }
        }
        let _ = writeln!(y, "    platform: {}", plan.platform);
        if let Some(os) = &plan.os {
            let _ = writeln!(y, "    os: {os}");
        }
        if !t.labels.is_empty() {
            let _ = writeln!(y, "    labels:                  # for selectors: deploy -l env=prod");
            for (k, v) in &t.labels {
                let _ = writeln!(y, "      {}: {}", scalar(k), scalar(v));
            }
        }
        let _ = writeln!(y, "    agent:");
        let _ = writeln!(
            y,
            "      mode: {}               # push: the coordinator dials the agent; pull: the agent polls (NAT)",
            t.mode
        );
        match plan.platform {
            Platform::DockerCompose | Platform::Podman | Platform::Swarm => {
                let _ = writeln!(y, "    config:");
                if plan.platform == Platform::Podman {
                    let _ =
                        writeln!(y, "      use_quadlet: true      # run the services as Quadlet units under systemd");
                }
                if d.built.is_empty() {
                    let _ = writeln!(y, "      images: registry       # the target's engine has or pulls the images");
                } else {
                    let _ = writeln!(
                        y,
                        "      images: bundle         # {} built here: the bundle carries the images",
                        d.built.join(", ")
                    );
                }
            }
            Platform::SshRaw => {
                let _ = writeln!(y, "    config:");
                match &d.unit {
                    Some(u) => {
                        let _ = writeln!(y, "      service_manager: systemd   # restarted after each release swap");
                        let _ = writeln!(y, "      service_name: {}", scalar(u));
                    }
                    None => {
                        let _ =
                            writeln!(y, "      service_manager: none  # or systemd, openrc, supervisord, pm2, launchd");
                    }
                }
            }
            _ => {}
        }
        let _ = writeln!(y, "    keep_releases: 5         # releases kept for rollback");
    }
    y
}

/// Ask on the terminal for what the flags did not say.
pub fn ask_targets(default_mode: Mode) -> Result<Vec<TargetPlan>> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut ask = |q: &str, default: &str| -> Result<String> {
        print!("{q}{}: ", if default.is_empty() { String::new() } else { format!(" [{default}]") });
        std::io::stdout().flush()?;
        let line = lines.next().transpose()?.unwrap_or_default();
        let line = line.trim();
        Ok(if line.is_empty() { default.to_string() } else { line.to_string() })
    };
    let mut targets = Vec::new();
    loop {
        let id = loop {
            let id = ask("Target id (e.g. edge-rpi3)", if targets.is_empty() { "local" } else { "" })?;
            if id.is_empty() {
                break None;
            }
            match check_id(&id) {
                Ok(()) => break Some(id),
                Err(e) => println!("  {e}"),
            }
        };
        let Some(id) = id else { break };
        let host =
            ask("  Host the agent runs on (empty: none yet)", if targets.is_empty() { "127.0.0.1" } else { "" })?;
        let mode = loop {
            match ask(
                "  Mode: push (the coordinator dials) or pull (the agent polls, behind NAT)",
                default_mode.as_str(),
            )?
            .parse::<Mode>()
            {
                Ok(m) => break m,
                Err(e) => println!("  {e}"),
            }
        };
        let mut labels = BTreeMap::new();
        let text = ask("  Labels (KEY=VALUE, comma-separated, empty: none)", "")?;
        for l in text.split(',').map(str::trim).filter(|l| !l.is_empty()) {
            match parse_label(l) {
                Ok((k, v)) => {
                    labels.insert(k, v);
                }
                Err(e) => println!("  {e}: skipped"),
            }
        }
        targets.push(TargetPlan { id, host: (!host.is_empty()).then_some(host), mode, labels });
        if !ask("Another target? (y/N)", "n")?.eq_ignore_ascii_case("y") {
            break;
        }
    }
    Ok(targets)
}

/// Whether to ask: stdin and stdout on a terminal, and not told otherwise.
pub fn interactive(non_interactive: bool) -> bool {
    !non_interactive && std::io::stdin().is_terminal() && std::io::stdout().is_terminal()
}

/// Write `text` to `file` only if it loads as a project: via a temp file in the same dir and a
/// rename, so a failure leaves nothing behind.
pub fn write(file: &Path, text: &str) -> Result<config::Project> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".deploy-targets.yaml.setup-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    // Loaded from the temp file's own dir, exactly as the final one will be.
    let loaded = config::parse(text, file);
    match loaded {
        Ok(p) => {
            std::fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
            Ok(p)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(anyhow::anyhow!("setup made a file that does not load ({e}); nothing was written"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_files_load_with_what_was_asked() {
        let detected = Detected {
            platform: Platform::DockerCompose,
            compose: Some("compose.yaml".into()),
            built: vec!["web".into()],
            quadlet: Vec::new(),
            unit: None,
            why: "compose.yaml: a Docker Compose app".into(),
        };
        let plan = Plan {
            app: "shop".into(),
            platform: Platform::DockerCompose,
            os: Some("linux".into()),
            targets: vec![
                TargetPlan {
                    id: "vps".into(),
                    host: Some("127.0.0.1".into()),
                    mode: Mode::Push,
                    labels: BTreeMap::new(),
                },
                TargetPlan {
                    id: "edge-rpi3".into(),
                    host: None,
                    mode: Mode::Pull,
                    labels: [("env".to_string(), "yes".to_string()), ("device".into(), "rpi3".into())].into(),
                },
            ],
            detected,
        };
        let text = render(&plan);
        let p = config::parse(&text, Path::new("/tmp/x/deploy-targets.yaml")).unwrap();
        assert_eq!(p.app.name, "shop");
        assert_eq!(p.targets.len(), 2);
        let edge = p.target("edge-rpi3").unwrap();
        assert_eq!(edge.agent.mode, Mode::Pull);
        // `yes` stays the string it was typed as.
        assert_eq!(edge.labels.get("env").map(String::as_str), Some("yes"));
        assert!(matches!(edge.config, config::PlatformConfig::DockerCompose { ship_images: true, .. }));
        assert_eq!(p.target("vps").unwrap().host.as_deref(), Some("127.0.0.1"));
        assert!(text.contains("# Detected: compose.yaml"));
    }

    #[test]
    fn flags_are_checked() {
        assert_eq!(parse_target("pi=10.0.0.5").unwrap(), ("pi".into(), Some("10.0.0.5".into())));
        assert_eq!(parse_target("pi").unwrap(), ("pi".into(), None));
        assert!(parse_target("Pi_3").is_err());
        assert!(parse_label("env").is_err());
        assert_eq!(parse_label("env=prod").unwrap(), ("env".into(), "prod".into()));
    }
}
