//! A target's variables: what `${VAR}` in its compose file resolves to, and where each value
//! comes from. From lowest to highest precedence:
//!
//! 1. `.env` beside the compose file (the app dir for `ssh_raw`),
//! 2. `.env.<environment>` beside it, where the environment is the target's `env` label
//!    (`labels: {env: production}` reads `.env.production`),
//! 3. the target's `env:` in deploy-targets.yaml.
//!
//! The coordinator's own process environment never takes part: a bundle does not depend on
//! who built it. The builder, `validate` and `env` all resolve through here.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use dockfra_common::compose;
use dockfra_common::config::{Project, Target};

/// One variable and where its value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Var {
    pub name: String,
    /// The value, or `********` when `masked`.
    pub value: String,
    /// `.env`, `.env.production`, `target env:`, `environment`, `env_file web.env`.
    pub source: String,
    /// The name looks like a secret's: the value is not shown.
    pub masked: bool,
}

/// Where the `.env` files of a target's app are: beside the compose file, else the app dir.
pub fn env_dir(project: &Project) -> PathBuf {
    compose::find_compose_file(&project.app.path)
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| project.app.path.clone())
}

/// The target's environment name: its `env` label.
pub fn environment(target: &Target) -> Option<&str> {
    target.labels.get("env").map(String::as_str).filter(|e| is_safe(e))
}

fn is_safe(e: &str) -> bool {
    !e.is_empty() && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') && e != ".."
}

/// Every variable of the target with its source, highest precedence winning, by name.
pub fn layered(project: &Project, target: &Target) -> Result<Vec<(String, String, String)>> {
    let dir = env_dir(project);
    let mut out: BTreeMap<String, (String, String)> = BTreeMap::new();
    let target_env = |k: &str| target.env.get(k).cloned();
    let base_file = dir.join(".env");
    let base = read(&base_file, &target_env)?;
    for (k, v) in &base {
        out.insert(k.clone(), (v.clone(), ".env".into()));
    }
    if let Some(e) = environment(target) {
        let name = format!(".env.{e}");
        let lookup = |k: &str| target.env.get(k).cloned().or_else(|| base.get(k).cloned());
        for (k, v) in read(&dir.join(&name), &lookup)? {
            out.insert(k, (v, name.clone()));
        }
    }
    for (k, v) in &target.env {
        out.insert(k.clone(), (v.clone(), "target env:".into()));
    }
    Ok(out.into_iter().map(|(k, (v, s))| (k, v, s)).collect())
}

/// Load `file` as the app's bundles name it: the app's name (normalized), unless the compose
/// file has a `name:` of its own; variables from `env` only (never the process environment).
pub(crate) fn load_as_app(
    file: &Path,
    app: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<(compose::ComposeProject, Vec<String>), compose::ComposeError> {
    let name = app.map(compose::normalize_project_name).unwrap_or_default();
    let named = !name.is_empty() && !crate::validate::has_name(file);
    let opts =
        compose::LoadOptions { project_name: named.then_some(name.as_str()), overrides: env, use_process_env: false };
    compose::load_with_warnings(file, &opts)
}

/// What the compose loader takes as `overrides`: everything above `.env` (which it reads
/// itself): `.env.<environment>`, then the target's `env:`.
pub fn overrides(project: &Project, target: &Target) -> Result<BTreeMap<String, String>> {
    Ok(layered(project, target)?.into_iter().filter(|(_, _, s)| s != ".env").map(|(k, v, _)| (k, v)).collect())
}

fn read(file: &Path, lookup: &dyn Fn(&str) -> Option<String>) -> Result<BTreeMap<String, String>> {
    match std::fs::read_to_string(file) {
        Ok(t) => compose::parse_env_file_with(&t, lookup).map_err(|e| anyhow::anyhow!("{}: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// Mask a value whose name looks like a secret's.
pub fn var(name: &str, value: &str, source: &str) -> Var {
    let masked = crate::validate::looks_secret(name) && !value.is_empty();
    Var {
        name: name.to_string(),
        value: if masked { "********".into() } else { value.to_string() },
        source: source.to_string(),
        masked,
    }
}

/// One target's resolved environment: its variables, and each compose service's
/// `environment` (from `env_file`s and `environment:`, as the container gets it).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TargetEnv {
    pub target: String,
    /// The `env` label: which `.env.<environment>` applies ("" for none).
    pub environment: String,
    pub variables: Vec<Var>,
    pub services: Vec<ServiceEnv>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceEnv {
    pub service: String,
    pub environment: Vec<Var>,
}

/// Resolve `target` of `project`.
pub fn resolve(project: &Project, target: &Target) -> Result<TargetEnv> {
    let layered = layered(project, target)?;
    let variables = layered.iter().map(|(k, v, s)| var(k, v, s)).collect();
    let mut services = Vec::new();
    if let Some(file) = compose::find_compose_file(&project.app.path) {
        let over = overrides(project, target)?;
        let name = compose::normalize_project_name(&project.app.name);
        let named = !crate::validate::has_name(&file) && !name.is_empty();
        let opts = compose::LoadOptions {
            project_name: named.then_some(name.as_str()),
            overrides: &over,
            use_process_env: false,
        };
        let cp = compose::load(&file, &opts).with_context(|| format!("target {:?}: {}", target.id, file.display()))?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        for svc in cp.services() {
            let Some(s) = cp.service(&svc) else { continue };
            let mut env: BTreeMap<String, (String, String)> = BTreeMap::new();
            for f in env_files(s.get("env_file")) {
                let p = dir.join(&f);
                let lookup = |k: &str| over.get(k).cloned();
                if let Ok(vars) = read(&p, &lookup) {
                    for (k, v) in vars {
                        env.insert(k, (v, format!("env_file {f}")));
                    }
                }
            }
            if let Some(serde_yaml_ng::Value::Mapping(m)) = s.get("environment") {
                for (k, v) in m {
                    let Some(k) = k.as_str() else { continue };
                    let v = match v {
                        serde_yaml_ng::Value::String(s) => s.clone(),
                        serde_yaml_ng::Value::Null => match over.get(k) {
                            // `- NAME` alone takes the variable's value.
                            Some(v) => v.clone(),
                            None => continue,
                        },
                        other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_string(),
                    };
                    env.insert(k.to_string(), (v, "environment".into()));
                }
            }
            services
                .push(ServiceEnv { service: svc, environment: env.iter().map(|(k, (v, s))| var(k, v, s)).collect() });
        }
    }
    Ok(TargetEnv {
        target: target.id.clone(),
        environment: environment(target).unwrap_or("").to_string(),
        variables,
        services,
    })
}

fn env_files(v: Option<&serde_yaml_ng::Value>) -> Vec<String> {
    use serde_yaml_ng::Value;
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|i| match i {
                Value::String(s) => Some(s.clone()),
                Value::Mapping(m) => m.get("path").and_then(Value::as_str).map(str::to_string),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_dotenv_then_environment_file_then_target() {
        let dir = std::env::temp_dir().join(format!("dockfra-envs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".env"), "A=base\nB=base\nC=base\nDB_PASSWORD=hunter2\n").unwrap();
        std::fs::write(dir.join(".env.production"), "B=prod\nC=prod\nURL=https://${HOSTNAME}/\n").unwrap();
        std::fs::write(dir.join(".env.staging"), "B=staging\n").unwrap();
        std::fs::write(dir.join("compose.yaml"), "services:\n  web:\n    image: nginx:1.25\n    environment:\n      MODE: ${B}\n      API_TOKEN: ${DB_PASSWORD}\n").unwrap();
        std::fs::write(
            dir.join("deploy-targets.yaml"),
            "targets:\n  prod:\n    platform: docker_compose\n    labels: {env: production}\n    env: {C: target, HOSTNAME: shop.example}\n  dev:\n    platform: docker_compose\n",
        )
        .unwrap();
        let p = dockfra_common::config::load(&dir.join("deploy-targets.yaml")).unwrap();
        let prod = resolve(&p, p.target("prod").unwrap()).unwrap();
        let get = |e: &TargetEnv, k: &str| {
            e.variables.iter().find(|v| v.name == k).map(|v| (v.value.clone(), v.source.clone()))
        };
        assert_eq!(prod.environment, "production");
        assert_eq!(get(&prod, "A"), Some(("base".into(), ".env".into())));
        assert_eq!(get(&prod, "B"), Some(("prod".into(), ".env.production".into())));
        assert_eq!(get(&prod, "C"), Some(("target".into(), "target env:".into())));
        assert_eq!(get(&prod, "URL"), Some(("https://shop.example/".into(), ".env.production".into())));
        assert_eq!(get(&prod, "DB_PASSWORD"), Some(("********".into(), ".env".into())), "secrets masked");
        let web = &prod.services[0];
        let mode = web.environment.iter().find(|v| v.name == "MODE").unwrap();
        assert_eq!((mode.value.as_str(), mode.source.as_str()), ("prod", "environment"));
        assert!(web.environment.iter().any(|v| v.name == "API_TOKEN" && v.masked && v.value == "********"));
        let dev = resolve(&p, p.target("dev").unwrap()).unwrap();
        assert_eq!(get(&dev, "B"), Some(("base".into(), ".env".into())));
        // What the builder passes to the loader: everything above .env.
        let over = overrides(&p, p.target("prod").unwrap()).unwrap();
        assert_eq!(over.get("B").map(String::as_str), Some("prod"));
        assert!(!over.contains_key("A"));
        // A bundle carries .env and its own environment's file, not another's.
        std::fs::write(
            dir.join("deploy-targets.yaml"),
            "targets:\n  prod:\n    platform: ssh_raw\n    labels: {env: production}\n  stage:\n    platform: ssh_raw\n    labels: {env: staging}\n",
        )
        .unwrap();
        let p = dockfra_common::config::load(&dir.join("deploy-targets.yaml")).unwrap();
        let files = |t: &str| -> Vec<String> {
            let b = crate::builder::build(
                &p,
                p.target(t).unwrap(),
                &dir.join("blobs"),
                1,
                None,
                crate::builder::Mode::DryRun,
            )
            .unwrap();
            b.manifest.files.iter().map(|f| f.path.clone()).filter(|f| f.starts_with(".env")).collect()
        };
        assert_eq!(files("prod"), [".env", ".env.production"]);
        assert_eq!(files("stage"), [".env", ".env.staging"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
