//! `podman`: the coordinator's resolved compose file run one of two ways, chosen by the
//! target's `use_quadlet`:
//! - compose mode: `podman-compose` (or `podman compose` where Podman has it). Podman's compose
//!   tools do not recreate changed containers reliably, so a deploy removes the project's
//!   containers and brings the release up (stop-first, like a swarm update).
//! - Quadlet mode: the release carries `.container`/`.network`/`.volume`/`.pod` units rendered
//!   by the coordinator; they are installed into the rootful or rootless Quadlet unit dir
//!   (each marked as dockfra's, so nothing else there is touched), systemd reloads, and the
//!   container services restart. Rollback re-installs the previous release's units.
//!
//! Either way the step ends only when every service has a running container and every
//! container with a healthcheck is healthy. The agent runs the healthchecks itself
//! (`podman healthcheck run`): without systemd Podman has no timer that would.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dockfra_common::bundle::{PodmanSpec, QUADLET_DIR};

use super::{Driver, DriverError, StepCtx};
use crate::engine::{compose_health, ContainerState};
use crate::runner::{CommandSpec, Output, Runner};

pub struct Podman;

/// First line of every unit file dockfra installs: what marks it as ours, and whose.
fn marker(project: &str) -> String {
    format!("# dockfra: project={project} (installed by dockfra-agent; edits are overwritten)")
}

fn spec<'a>(ctx: &'a StepCtx<'_>) -> Result<&'a PodmanSpec, DriverError> {
    match &ctx.manifest.platform {
        dockfra_common::bundle::PlatformSpec::Podman(s) => Ok(s),
        other => Err(DriverError::Invalid(format!("the podman driver got a {} manifest", other.platform()))),
    }
}

fn podman(args: &[&str]) -> CommandSpec {
    CommandSpec::new("podman", args).timeout(Duration::from_secs(120))
}

async fn run_ok(runner: &dyn Runner, step: &'static str, cmd: &CommandSpec) -> Result<Output, DriverError> {
    let out = runner.run(cmd).await.map_err(|source| DriverError::Run { step, source })?;
    if !out.success() {
        return Err(DriverError::Failed { step, command: cmd.display(), code: out.code, tail: out.tail() });
    }
    Ok(out)
}

/// Where Quadlet looks for units: rootful `/etc/containers/systemd`, rootless
/// `$XDG_CONFIG_HOME/containers/systemd` (default `~/.config/containers/systemd`).
pub fn unit_dir(rootless: bool) -> PathBuf {
    if !rootless {
        return PathBuf::from("/etc/containers/systemd");
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    config.join("containers/systemd")
}

/// The systemd service Quadlet generates for a unit file.
pub fn service_of(unit: &str) -> String {
    match unit.rsplit_once('.') {
        Some((stem, "container")) => format!("{stem}.service"),
        Some((stem, kind)) => format!("{stem}-{kind}.service"),
        None => unit.to_string(),
    }
}

fn systemctl(rootless: bool, args: &[&str]) -> CommandSpec {
    let mut argv: Vec<&str> = Vec::new();
    if rootless {
        argv.push("--user");
    }
    argv.extend_from_slice(args);
    CommandSpec::new("systemctl", &argv).timeout(Duration::from_secs(180))
}

/// The units in `dir` that carry `project`'s marker.
pub fn installed_units(dir: &Path, project: &str) -> std::io::Result<BTreeSet<String>> {
    let mark = marker(project);
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !dockfra_common::bundle::is_quadlet_unit_name(&name) || !entry.file_type()?.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if text.lines().next() == Some(mark.as_str()) {
            out.insert(name);
        }
    }
    Ok(out)
}

/// Make `dir` hold exactly the release's units for `project` (each written atomically, with
/// the marker): returns the project's units that were there and are not in the release.
/// A unit of the same name that is not dockfra's is never overwritten.
pub fn install_units(dir: &Path, release: &Path, project: &str, units: &[String]) -> Result<Vec<String>, DriverError> {
    let io = |what: String| move |e: std::io::Error| DriverError::Invalid(format!("install units: {what}: {e}"));
    std::fs::create_dir_all(dir).map_err(io(dir.display().to_string()))?;
    let before = installed_units(dir, project).map_err(io(dir.display().to_string()))?;
    for unit in units {
        let dest = dir.join(unit);
        if dest.exists() && !before.contains(unit) {
            return Err(DriverError::Invalid(format!(
                "install units: {} exists and is not dockfra's (project {project}); refusing to overwrite it",
                dest.display()
            )));
        }
    }
    for unit in units {
        let src = release.join(QUADLET_DIR).join(unit);
        let body = std::fs::read_to_string(&src).map_err(io(src.display().to_string()))?;
        let text = format!("{}\n{body}", marker(project));
        dockfra_common::write_atomic(&dir.join(unit), text.as_bytes(), 0o644).map_err(io(unit.clone()))?;
    }
    let gone: Vec<String> = before.into_iter().filter(|u| !units.contains(u)).collect();
    for unit in &gone {
        std::fs::remove_file(dir.join(unit)).map_err(io(unit.clone()))?;
    }
    Ok(gone)
}

/// (compose service, container name) pairs.
type ServiceContainers = Vec<(String, String)>;

/// A project's containers as `podman inspect` tells them, in the shape compose health reads,
/// and which service each belongs to.
/// Which labels name a project's containers and the service each runs: compose's (both
/// compose tools and Quadlet units set them), or the Kubernetes rendering's under `kube play`.
#[derive(Clone, Copy)]
pub struct Labels {
    pub project: &'static str,
    pub service: &'static str,
}

pub const COMPOSE: Labels = Labels { project: "com.docker.compose.project", service: "com.docker.compose.service" };
pub const KUBE: Labels = Labels { project: "app.kubernetes.io/part-of", service: "app.kubernetes.io/name" };

#[cfg(test)]
fn container_states(inspect_json: &str) -> Result<(Vec<ContainerState>, ServiceContainers), String> {
    container_states_by(inspect_json, COMPOSE.service)
}

fn container_states_by(
    inspect_json: &str,
    service_label: &str,
) -> Result<(Vec<ContainerState>, ServiceContainers), String> {
    let v: serde_json::Value =
        serde_json::from_str(inspect_json).map_err(|e| format!("cannot read `podman inspect` output: {e}"))?;
    let mut states = Vec::new();
    let mut services = Vec::new();
    for c in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = c["Name"].as_str().unwrap_or_default().trim_start_matches('/').to_string();
        let state = c["State"]["Status"].as_str().unwrap_or_default().to_string();
        let health = c["State"]["Health"]["Status"]
            .as_str()
            .or_else(|| c["State"]["Healthcheck"]["Status"].as_str())
            .unwrap_or_default();
        let has_check =
            c["Config"]["Healthcheck"]["Test"].as_array().is_some_and(|t| t.first().is_some_and(|f| f != "NONE"));
        // Under kube play a failing check restarts the container (a liveness probe), which
        // puts its health back to "starting": the failing streak still counts.
        let streak =
            c["State"]["Health"]["FailingStreak"].as_u64().or(c["State"]["Healthcheck"]["FailingStreak"].as_u64());
        let retries = c["Config"]["Healthcheck"]["Retries"].as_u64().unwrap_or(0);
        let failing = retries > 0 && streak.unwrap_or(0) >= retries;
        let status = match (has_check, health) {
            (false, _) => "Up".to_string(),
            (true, _) if failing => "Up (unhealthy)".to_string(),
            (true, "healthy") => "Up (healthy)".to_string(),
            (true, "unhealthy") => "Up (unhealthy)".to_string(),
            (true, _) => "Up (health: starting)".to_string(),
        };
        if let Some(svc) = c["Config"]["Labels"][service_label].as_str() {
            services.push((svc.to_string(), name.clone()));
        }
        states.push(ContainerState { name, state, status });
    }
    states.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((states, services))
}

/// The project's containers (by the compose project label both modes set), with a verdict:
/// `healthy`, `starting`, or `unhealthy: why`. With `run_checks`, each running container's
/// healthcheck is run first, which is what moves its health state.
pub async fn project_health(
    runner: &dyn Runner,
    labels: Labels,
    project: &str,
    services: &[String],
    run_checks: bool,
) -> Result<String, String> {
    let label = format!("label={}={project}", labels.project);
    let ids =
        runner.run(&podman(&["ps", "-a", "-q", "--no-trunc", "--filter", &label])).await.map_err(|e| e.to_string())?;
    if !ids.success() {
        return Err(format!("podman ps: {}", ids.tail()));
    }
    let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
    if ids.is_empty() {
        return Ok("unhealthy: no containers".into());
    }
    let inspect = |ids: &[&str]| {
        let mut args = vec!["inspect", "--type", "container"];
        args.extend_from_slice(ids);
        podman(&args)
    };
    if run_checks {
        let out = runner.run(&inspect(&ids)).await.map_err(|e| e.to_string())?;
        let (states, _) = container_states_by(&out.stdout, labels.service)?;
        for c in states.iter().filter(|c| c.state == "running" && c.status != "Up") {
            // Its exit code is the check's result; the health state it updates is what counts.
            let _ = runner.run(&podman(&["healthcheck", "run", &c.name])).await;
        }
    }
    let out = runner.run(&inspect(&ids)).await.map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("podman inspect: {}", out.tail()));
    }
    let (mut states, seen) = container_states_by(&out.stdout, labels.service)?;
    // Only the services named count (behind the proxy, the idle slot's stopped containers do not).
    states.retain(|c| seen.iter().any(|(svc, name)| name == &c.name && services.contains(svc)));
    let verdict = compose_health(&states);
    let missing: Vec<&str> =
        services.iter().filter(|s| !seen.iter().any(|(svc, _)| svc == *s)).map(String::as_str).collect();
    if !missing.is_empty() {
        let mut why = format!("no container for service {}", missing.join(", "));
        if let Some(rest) = verdict.strip_prefix("unhealthy: ") {
            why = format!("{rest}, {why}");
        }
        return Ok(format!("unhealthy: {why}"));
    }
    Ok(verdict)
}

/// Poll until every service runs and every healthcheck passes. A container Podman calls
/// unhealthy (its retries spent) fails at once; one that is not running may be restarting,
/// so that fails only when it persists.
async fn wait_healthy(ctx: &StepCtx<'_>, s: &PodmanSpec) -> Result<(), DriverError> {
    let labels = if s.kube_file.is_some() { KUBE } else { COMPOSE };
    wait_services(ctx, labels, &s.compose.project, &s.services, s.compose.wait_timeout_secs).await
}

/// [`wait_healthy`] for some of a project's services.
pub(crate) async fn wait_services(
    ctx: &StepCtx<'_>,
    labels: Labels,
    project: &str,
    services: &[String],
    timeout_secs: u64,
) -> Result<(), DriverError> {
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let (mut good, mut down) = (0, 0);
    loop {
        let verdict = project_health(ctx.runner, labels, project, services, true)
            .await
            .map_err(|e| DriverError::Invalid(format!("health: {e}")))?;
        if verdict == "healthy" {
            good += 1;
            if good >= 2 {
                return Ok(());
            }
        } else {
            good = 0;
        }
        if verdict.contains(" unhealthy") {
            return Err(DriverError::Invalid(format!("project {project}: {verdict}")));
        }
        down = if verdict.starts_with("unhealthy") { down + 1 } else { 0 };
        if down >= 5 {
            return Err(DriverError::Invalid(format!("project {project}: {verdict}")));
        }
        if Instant::now() >= deadline {
            return Err(DriverError::Invalid(format!("project {project}: not up after {timeout_secs}s: {verdict}")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How this host runs compose files with Podman: `podman-compose`, else `podman compose`.
pub(crate) async fn compose_tool(runner: &dyn Runner) -> Result<Vec<String>, DriverError> {
    if crate::runner::which("podman-compose").is_some() {
        return Ok(vec!["podman-compose".into()]);
    }
    let probe = CommandSpec::new("podman", &["compose", "version"]).timeout(Duration::from_secs(10));
    match runner.run(&probe).await {
        Ok(o) if o.success() => Ok(vec!["podman".into(), "compose".into()]),
        _ => Err(DriverError::Invalid(
            "validate: neither podman-compose nor `podman compose` is available (Debian: apt install podman-compose)"
                .into(),
        )),
    }
}

async fn compose(ctx: &StepCtx<'_>, step: &'static str, args: &[&str]) -> Result<Output, DriverError> {
    let s = spec(ctx)?;
    let tool = compose_tool(ctx.runner).await?;
    let file = ctx.release_dir.join(&s.compose.file).display().to_string();
    let mut argv: Vec<&str> = tool[1..].iter().map(String::as_str).collect();
    argv.extend(["-p", s.compose.project.as_str(), "-f", file.as_str()]);
    argv.extend_from_slice(args);
    let cmd = CommandSpec::new(&tool[0], &argv)
        .cwd(&ctx.release_dir)
        .timeout(Duration::from_secs(s.compose.wait_timeout_secs + 60));
    run_ok(ctx.runner, step, &cmd).await
}

/// The `Error:` lines of a podman-compose run (it exits 0 even when a container failed).
fn compose_errors(out: &Output) -> String {
    let lines: Vec<&str> =
        out.stdout.lines().chain(out.stderr.lines()).filter(|l| l.trim_start().starts_with("Error")).collect();
    lines.join(" | ")
}

/// `kube play` mode: remove the project's pods whose service is not in `keep` (a service the
/// new release dropped; `--replace` only replaces the pods its file names).
async fn remove_pods(ctx: &StepCtx<'_>, project: &str, keep: &[String]) -> Result<(), DriverError> {
    let label = format!("label={}={project}", KUBE.project);
    let format = format!("{{{{.Id}}}} {{{{index .Labels \"{}\"}}}}", KUBE.service);
    let pods =
        run_ok(ctx.runner, "remove pods", &podman(&["pod", "ps", "--filter", &label, "--format", &format])).await?;
    let gone: Vec<&str> = pods
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' ').or(Some((l, ""))))
        .filter(|(_, svc)| !keep.iter().any(|k| k == svc.trim()))
        .map(|(id, _)| id.trim())
        .filter(|id| !id.is_empty())
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    let mut args = vec!["pod", "rm", "-f"];
    args.extend(gone);
    run_ok(ctx.runner, "remove pods", &podman(&args)).await.map(|_| ())
}

/// Remove the project's containers (whatever release made them).
async fn remove_containers(ctx: &StepCtx<'_>, project: &str) -> Result<(), DriverError> {
    let label = format!("label=com.docker.compose.project={project}");
    let ids = run_ok(ctx.runner, "remove containers", &podman(&["ps", "-a", "-q", "--filter", &label])).await?;
    let ids: Vec<&str> = ids.stdout.split_whitespace().collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut args = vec!["rm", "-f", "-t", "10"];
    args.extend_from_slice(&ids);
    run_ok(ctx.runner, "remove containers", &podman(&args)).await.map(|_| ())
}

/// macOS: the `podman machine` VM runs the containers. Report it, start the default one when
/// `start` says so, and refuse clearly when none runs.
pub async fn ensure_machine(runner: &dyn Runner, start: bool) -> Result<String, DriverError> {
    let list = || podman(&["machine", "list", "--format", "json"]);
    let out = run_ok(runner, "podman machine", &list()).await?;
    let summary = machine_summary(&out.stdout);
    if summary.contains("running") {
        return Ok(summary);
    }
    if summary.starts_with("no machine") {
        return Err(DriverError::Invalid(
            "validate: Podman on macOS needs a machine: run `podman machine init` (then start it, or set start_machine: true)"
                .into(),
        ));
    }
    if !start {
        return Err(DriverError::Invalid(format!(
            "validate: {summary}: run `podman machine start`, or set start_machine: true in the target's config"
        )));
    }
    run_ok(runner, "podman machine start", &podman(&["machine", "start"]).timeout(Duration::from_secs(300))).await?;
    let out = run_ok(runner, "podman machine", &list()).await?;
    let summary = machine_summary(&out.stdout);
    if summary.contains("running") {
        Ok(summary)
    } else {
        Err(DriverError::Invalid(format!("validate: `podman machine start` ran but {summary}")))
    }
}

/// `podman info --format json` in one line for `deploy-test`:
/// `4.3.1 (rootful, amd64, netavark, cgroups v2, socket /run/podman/podman.sock absent)`.
pub fn info_summary(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return "unreadable `podman info` output".into();
    };
    let h = &v["host"];
    let text = |x: &serde_json::Value| x.as_str().unwrap_or("?").to_string();
    let mode = if h["security"]["rootless"] == true { "rootless" } else { "rootful" };
    let socket = match (h["remoteSocket"]["path"].as_str(), h["remoteSocket"]["exists"] == true) {
        (Some(p), true) => format!("socket {p}"),
        (Some(p), false) => format!("socket {p} absent"),
        (None, _) => "no socket".into(),
    };
    format!(
        "{} ({mode}, {}, {}, cgroups {}, {socket})",
        text(&v["version"]["Version"]),
        text(&h["arch"]),
        text(&h["networkBackend"]),
        text(&h["cgroupVersion"])
    )
}

/// `podman machine list --format json` in one line: `machine NAME running` (the default
/// machine, else the first), or `no machine`.
pub fn machine_summary(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
    let machines = v.as_array().map(Vec::as_slice).unwrap_or_default();
    let Some(m) = machines.iter().find(|m| m["Default"] == true).or(machines.first()) else {
        return "no machine".into();
    };
    let name = m["Name"].as_str().unwrap_or("?").trim_end_matches('*');
    let state = if m["Running"] == true {
        "running"
    } else if m["Starting"] == true {
        "starting"
    } else {
        "stopped"
    };
    format!("machine {name} {state}")
}

#[tonic::async_trait]
impl Driver for Podman {
    async fn validate(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let s = spec(ctx)?;
        run_ok(ctx.runner, "validate", &podman(&["--version"]).timeout(Duration::from_secs(10))).await?;
        if cfg!(target_os = "macos") {
            ensure_machine(ctx.runner, s.start_machine).await?;
        } else if s.rootless && dockfra_common::is_root() {
            return Err(DriverError::Invalid(
                "validate: config.rootless is true but the agent runs as root: run the agent as the user who owns the containers".into(),
            ));
        } else if !s.rootless && !dockfra_common::is_root() {
            return Err(DriverError::Invalid(
                "validate: rootful Podman needs the agent to run as root; set config.rootless: true for a user's Podman"
                    .into(),
            ));
        }
        if s.compose.slots.is_some() {
            super::slots::haproxy()?;
        }
        if s.use_quadlet {
            if !Path::new("/run/systemd/system").is_dir() {
                return Err(DriverError::Invalid(
                    "validate: use_quadlet needs systemd as the service manager (no /run/systemd/system); use compose mode instead".into(),
                ));
            }
            let generator = if s.rootless {
                [
                    "/usr/lib/systemd/user-generators/podman-user-generator",
                    "/usr/local/lib/systemd/user-generators/podman-user-generator",
                ]
            } else {
                [
                    "/usr/lib/systemd/system-generators/podman-system-generator",
                    "/usr/local/lib/systemd/system-generators/podman-system-generator",
                ]
            };
            if !generator.iter().any(|g| Path::new(g).exists()) {
                return Err(DriverError::Invalid(format!(
                    "validate: use_quadlet needs Podman's Quadlet generator (Podman 4.4 or later) at {}",
                    generator[0]
                )));
            }
        } else {
            compose_tool(ctx.runner).await?;
        }
        Ok(())
    }

    async fn pre_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        for img in &spec(ctx)?.compose.images {
            let exists = ctx.runner.run(&podman(&["image", "exists", &img.id])).await;
            if exists.is_ok_and(|o| o.success()) {
                continue;
            }
            let archive = ctx.blobs.join(&img.sha256);
            super::docker_compose::check_archive(img, &archive)?;
            let archive = archive.display().to_string();
            let load = podman(&["load", "-q", "-i", &archive]).timeout(Duration::from_secs(600));
            run_ok(ctx.runner, "podman load", &load).await?;
            let now = ctx.runner.run(&podman(&["image", "exists", &img.id])).await;
            if !now.is_ok_and(|o| o.success()) {
                return Err(DriverError::Invalid(format!(
                    "image {}: loading did not produce image {}",
                    img.name, img.id
                )));
            }
        }
        Ok(())
    }

    async fn apply(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let s = spec(ctx)?;
        if s.use_quadlet {
            let dir = unit_dir(s.rootless);
            let before = installed_units(&dir, &s.compose.project)
                .map_err(|e| DriverError::Invalid(format!("install units: {}: {e}", dir.display())))?;
            for gone in before.iter().filter(|u| !s.quadlet_units.contains(u) && u.ends_with(".container")) {
                let _ = ctx.runner.run(&systemctl(s.rootless, &["stop", &service_of(gone)])).await;
            }
            install_units(&dir, &ctx.release_dir, &s.compose.project, &s.quadlet_units)?;
            run_ok(ctx.runner, "daemon-reload", &systemctl(s.rootless, &["daemon-reload"])).await?;
            let services: Vec<String> =
                s.quadlet_units.iter().filter(|u| u.ends_with(".container")).map(|u| service_of(u)).collect();
            let mut args = vec!["restart"];
            args.extend(services.iter().map(String::as_str));
            if let Err(e) = run_ok(ctx.runner, "systemctl restart", &systemctl(s.rootless, &args)).await {
                let mut st = vec!["status", "--no-pager", "--lines", "5"];
                st.extend(services.iter().map(String::as_str));
                let detail = ctx.runner.run(&systemctl(s.rootless, &st)).await.map(|o| o.stdout).unwrap_or_default();
                let tail: Vec<&str> = detail.lines().rev().take(12).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(DriverError::Invalid(format!("{e}\n{}", tail.join("\n"))));
            }
        } else if let Some(kube) = &s.kube_file {
            let file = ctx.release_dir.join(kube).display().to_string();
            let play = podman(&["kube", "play", "--replace", &file])
                .timeout(Duration::from_secs(s.compose.wait_timeout_secs + 60));
            run_ok(ctx.runner, "kube play", &play).await?;
            remove_pods(ctx, &s.compose.project, &s.services).await?;
        } else if let Some(sl) = &s.compose.slots {
            return super::slots::Slots::new(ctx, &s.compose, sl, super::slots::Engine::Podman).apply().await;
        } else {
            remove_containers(ctx, &s.compose.project).await?;
            let up = compose(ctx, "compose up", &["up", "-d"]).await?;
            let errors = compose_errors(&up);
            return wait_healthy(ctx, s).await.map_err(|e| match errors.is_empty() {
                true => e,
                false => DriverError::Invalid(format!("{e} (podman-compose up: {errors})")),
            });
        }
        wait_healthy(ctx, s).await
    }

    async fn post_deploy(&self, _ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        Ok(())
    }

    async fn remove_images(
        &self,
        ctx: &StepCtx<'_>,
        images: &[dockfra_common::bundle::ImageRef],
    ) -> (Vec<String>, Vec<String>) {
        let (mut gone, mut kept) = (Vec::new(), Vec::new());
        for img in images {
            match run_ok(ctx.runner, "podman rmi", &podman(&["rmi", &img.id])).await {
                Ok(_) => gone.push(img.name.clone()),
                Err(e) => kept.push(format!("{}: {e}", img.name)),
            }
        }
        (gone, kept)
    }

    async fn health(&self, ctx: &StepCtx<'_>) -> Option<String> {
        let s = spec(ctx).ok()?;
        let live =
            s.compose.slots.as_ref().and_then(|sl| {
                super::slots::Slots::new(ctx, &s.compose, sl, super::slots::Engine::Podman).live_services()
            });
        let labels = if s.kube_file.is_some() { KUBE } else { COMPOSE };
        Some(
            match project_health(ctx.runner, labels, &s.compose.project, live.as_ref().unwrap_or(&s.services), false)
                .await
            {
                Ok(h) => h,
                Err(e) => format!("unknown: {e}"),
            },
        )
    }

    async fn teardown(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let s = spec(ctx)?;
        if s.use_quadlet {
            let dir = unit_dir(s.rootless);
            let mut args = vec!["stop".to_string()];
            args.extend(s.quadlet_units.iter().map(|u| service_of(u)));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = ctx.runner.run(&systemctl(s.rootless, &refs)).await;
            install_units(&dir, &ctx.release_dir, &s.compose.project, &[])?;
            run_ok(ctx.runner, "daemon-reload", &systemctl(s.rootless, &["daemon-reload"])).await?;
            Ok(())
        } else if let Some(kube) = &s.kube_file {
            let file = ctx.release_dir.join(kube).display().to_string();
            let _ = ctx.runner.run(&podman(&["kube", "down", &file]).timeout(Duration::from_secs(120))).await;
            remove_pods(ctx, &s.compose.project, &[]).await
        } else {
            if let Some(sl) = &s.compose.slots {
                super::slots::Slots::new(ctx, &s.compose, sl, super::slots::Engine::Podman).teardown().await;
            }
            remove_containers(ctx, &s.compose.project).await?;
            compose(ctx, "compose down", &["down"]).await.map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::FakeRunner;

    #[test]
    fn units_are_installed_marked_and_only_ours_are_removed() {
        let t = std::env::temp_dir().join(format!("dkf-quadlet-{}", std::process::id()));
        let (dir, rel) = (t.join("units"), t.join("release"));
        std::fs::create_dir_all(rel.join(QUADLET_DIR)).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        for u in ["shop-web.container", "shop-worker.container", "shop-default.network"] {
            std::fs::write(rel.join(QUADLET_DIR).join(u), format!("[Unit]\nDescription={u}\n")).unwrap();
        }
        std::fs::write(dir.join("other.container"), "[Container]\nImage=x\n").unwrap();
        let all: Vec<String> =
            ["shop-web.container", "shop-worker.container", "shop-default.network"].map(String::from).to_vec();
        assert!(install_units(&dir, &rel, "shop", &all).unwrap().is_empty());
        let web = std::fs::read_to_string(dir.join("shop-web.container")).unwrap();
        assert!(web.starts_with("# dockfra: project=shop ") && web.ends_with("Description=shop-web.container\n"));
        assert_eq!(installed_units(&dir, "shop").unwrap().len(), 3);
        assert!(installed_units(&dir, "other").unwrap().is_empty());

        // The next release drops the worker: its unit goes, the foreign unit stays.
        let gone = install_units(&dir, &rel, "shop", &all[..1]).unwrap();
        assert_eq!(gone, ["shop-default.network", "shop-worker.container"]);
        assert!(!dir.join("shop-worker.container").exists());
        assert!(dir.join("other.container").exists());

        // A unit of the same name that is not ours is never overwritten.
        std::fs::write(rel.join(QUADLET_DIR).join("other.container"), "[Container]\nImage=y\n").unwrap();
        let e = install_units(&dir, &rel, "shop", &["other.container".to_string()]).unwrap_err().to_string();
        assert!(e.contains("other.container exists and is not dockfra's"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.join("other.container")).unwrap(), "[Container]\nImage=x\n");
        std::fs::remove_dir_all(&t).unwrap();
    }

    #[test]
    fn service_names_follow_quadlet() {
        assert_eq!(service_of("shop-web.container"), "shop-web.service");
        assert_eq!(service_of("shop-default.network"), "shop-default-network.service");
        assert_eq!(service_of("data.volume"), "data-volume.service");
        assert_eq!(service_of("shop.pod"), "shop-pod.service");
    }

    #[test]
    fn inspect_output_becomes_health() {
        let json = r#"[
          {"Name": "shop_web_1", "State": {"Status": "running", "Health": {"Status": "healthy"}},
           "Config": {"Healthcheck": {"Test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/"]},
                      "Labels": {"com.docker.compose.service": "web"}}},
          {"Name": "shop_worker_1", "State": {"Status": "running", "Health": {"Status": ""}},
           "Config": {"Labels": {"com.docker.compose.service": "worker"}}}
        ]"#;
        let (states, services) = container_states(json).unwrap();
        assert_eq!(compose_health(&states), "healthy");
        assert_eq!(
            services,
            [("web".to_string(), "shop_web_1".to_string()), ("worker".into(), "shop_worker_1".into())]
        );
        let bad =
            json.replace("\"healthy\"", "\"unhealthy\"").replace("\"Status\": \"running\"}", "\"Status\": \"exited\"}");
        let (states, _) = container_states(&bad).unwrap();
        assert_eq!(compose_health(&states), "unhealthy: shop_web_1 unhealthy");
        let starting = json.replace("\"healthy\"", "\"starting\"");
        assert_eq!(compose_health(&container_states(&starting).unwrap().0), "starting");
        assert!(container_states("not json").is_err());
        // kube play: a failing liveness check restarts the container ("starting" again);
        // its failing streak past the retries is what says unhealthy.
        let kube = r#"[{"Name": "shop-web-pod-0-web", "State": {"Status": "running", "Health": {"Status": "starting", "FailingStreak": 3}},
           "Config": {"Healthcheck": {"Test": ["CMD-SHELL", "wget"], "Retries": 3}, "Labels": {"app.kubernetes.io/name": "web"}}}]"#;
        let (states, services) = container_states_by(kube, KUBE.service).unwrap();
        assert_eq!(compose_health(&states), "unhealthy: shop-web-pod-0-web unhealthy");
        assert_eq!(services, [("web".to_string(), "shop-web-pod-0-web".to_string())]);
        let once = kube.replace("\"FailingStreak\": 3", "\"FailingStreak\": 1");
        assert_eq!(compose_health(&container_states_by(&once, KUBE.service).unwrap().0), "starting");
    }

    #[test]
    fn podman_info_in_one_line() {
        let info = r#"{"host": {"arch": "amd64", "cgroupVersion": "v2", "networkBackend": "netavark",
            "security": {"rootless": true}, "remoteSocket": {"path": "/run/user/1000/podman/podman.sock", "exists": true}},
            "version": {"Version": "4.3.1"}}"#;
        assert_eq!(
            info_summary(info),
            "4.3.1 (rootless, amd64, netavark, cgroups v2, socket /run/user/1000/podman/podman.sock)"
        );
        let rootful =
            info.replace("\"rootless\": true", "\"rootless\": false").replace("\"exists\": true", "\"exists\": false");
        assert!(
            info_summary(&rootful).contains("(rootful, ") && info_summary(&rootful).ends_with("podman.sock absent)")
        );
        assert_eq!(info_summary("Error: no"), "unreadable `podman info` output");
    }

    #[test]
    fn machine_list_in_one_line() {
        assert_eq!(machine_summary("[]"), "no machine");
        let two = r#"[{"Name":"dev","Default":false,"Running":true},{"Name":"podman-machine-default*","Default":true,"Running":false,"Starting":false}]"#;
        assert_eq!(machine_summary(two), "machine podman-machine-default stopped");
        assert_eq!(machine_summary(r#"[{"Name":"m","Running":true}]"#), "machine m running");
    }

    /// macOS, with a fake runner: a stopped machine is refused unless start_machine, which
    /// starts it and checks again.
    #[tokio::test]
    async fn podman_machine_is_reported_and_started_when_configured() {
        let stopped = r#"[{"Name":"podman-machine-default*","Default":true,"Running":false}]"#;
        let running = r#"[{"Name":"podman-machine-default*","Default":true,"Running":true}]"#;
        let r = FakeRunner::default().reply("podman machine list", stopped);
        let e = ensure_machine(&r, false).await.unwrap_err().to_string();
        assert!(e.contains("machine podman-machine-default stopped") && e.contains("start_machine: true"), "{e}");
        assert_eq!(r.calls.lock().unwrap().len(), 1, "nothing started");

        let r = FakeRunner::default().reply("podman machine list", stopped).reply("podman machine list", running);
        assert_eq!(ensure_machine(&r, true).await.unwrap(), "machine podman-machine-default running");
        let calls: Vec<String> = r.calls.lock().unwrap().iter().map(|c| c.display()).collect();
        assert_eq!(
            calls,
            ["podman machine list --format json", "podman machine start", "podman machine list --format json"]
        );

        let r = FakeRunner::default().reply("podman machine list", "[]");
        assert!(ensure_machine(&r, true).await.unwrap_err().to_string().contains("podman machine init"));
    }
}
