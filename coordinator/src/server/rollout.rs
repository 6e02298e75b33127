//! Fleet deploys: one order over the targets a selector names, in waves.
//!
//! - The targets are fixed when the fleet deploy is made, in waves: a canary wave first (when
//!   asked), then waves of `max_parallel` (or all the rest in one). The plan is stored before
//!   anything runs.
//! - A wave starts every target of its own that has no deployment of this fleet deploy yet,
//!   then waits for their results. Every deployment it makes carries the fleet deploy's id, so
//!   after a coordinator restart the fleet deploy resumes where it was: a target with a
//!   deployment is never ordered again, one without is not forgotten.
//! - A pull target whose agent has not finished when the wave's time is up is `pending`: its
//!   order stays queued and the next wave goes on without it.
//! - The first wave with a failed target halts the fleet deploy; later waves are left
//!   untouched (`skipped`), and the report says which target runs what.
//! - After a canary wave, its targets must still be healthy at the end of the soak time.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt as _;
use tonic::Status;

use dockfra_common::proto;
use dockfra_common::selector::Selector;

use super::{views, Coordinator, Order};
use crate::error::CoordError;
use crate::store::{DeploymentRow, FleetRow};

const DEFAULT_SOAK: Duration = Duration::from_secs(30);
const DEFAULT_WAVE_TIMEOUT: Duration = Duration::from_secs(600);

/// What a fleet deploy was asked to do, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spec {
    selector: String,
    action: String,
    version: String,
    max_parallel: u32,
    canary: u32,
    soak_ms: u64,
    wave_timeout_ms: u64,
    confirm: bool,
    force: bool,
    #[serde(default)]
    wave_names: Vec<String>,
    #[serde(default)]
    auto_rollback: bool,
    /// upgrade: where the agent binaries are, and how long a new agent has to come back.
    #[serde(default)]
    binaries: String,
    #[serde(default)]
    trial_timeout_ms: u64,
}

/// `N` or `N%` of `total` targets (a percentage rounds up, to one at least).
pub fn canary_count(text: &str, total: usize) -> Result<u32, String> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(0);
    }
    let (num, pct) = match t.strip_suffix('%') {
        Some(n) => (n, true),
        None => (t, false),
    };
    let n: u32 =
        num.trim().parse().map_err(|_| format!("--canary {text:?}: a number of targets or a percentage (2, 10%)"))?;
    if pct {
        if n == 0 || n > 100 {
            return Err(format!("--canary {text:?}: a percentage from 1% to 100%"));
        }
        return Ok(((total as u64 * n as u64).div_ceil(100)).max(1) as u32);
    }
    if n == 0 {
        return Err(format!("--canary {text:?}: at least one target (or leave it out)"));
    }
    Ok(n.min(total as u32))
}

/// Assign targets (in order) to waves: the canary first, then `max_parallel` at a time (0:
/// all the rest at once).
pub fn plan_waves(ids: &[String], canary: u32, max_parallel: u32) -> Vec<(String, u32)> {
    let canary = (canary as usize).min(ids.len());
    let mut out: Vec<(String, u32)> = ids[..canary].iter().map(|t| (t.clone(), 0)).collect();
    let first = if canary > 0 { 1 } else { 0 };
    let per = if max_parallel == 0 { usize::MAX } else { max_parallel as usize };
    for (i, t) in ids[canary..].iter().enumerate() {
        out.push((t.clone(), first + (i / per) as u32));
    }
    out
}

/// (target, wave) in wave order.
pub type WavePlan = Vec<(String, u32)>;

/// Waves from the ones `deploy-targets.yaml` declares: each target goes to the first wave
/// whose selector it matches (one without a selector takes all the rest; targets no wave
/// takes go last, in `rest`), and a wave larger than `max_parallel` is split. The waves'
/// names come back with the plan.
pub fn declared_waves(
    targets: &[&dockfra_common::config::Target],
    waves: &[dockfra_common::config::WaveSpec],
    max_parallel: u32,
) -> Result<(WavePlan, Vec<String>), String> {
    let mut groups: Vec<(String, Vec<String>)> = waves.iter().map(|w| (w.name.clone(), Vec::new())).collect();
    let selectors: Vec<Option<Selector>> = waves
        .iter()
        .map(|w| w.selector.as_deref().map(Selector::parse).transpose().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut rest = Vec::new();
    for t in targets {
        match selectors.iter().position(|s| s.as_ref().is_none_or(|s| s.matches(&t.labels))) {
            Some(i) => groups[i].1.push(t.id.clone()),
            None => rest.push(t.id.clone()),
        }
    }
    if !rest.is_empty() {
        groups.push(("rest".into(), rest));
    }
    let per = if max_parallel == 0 { usize::MAX } else { max_parallel as usize };
    let (mut plan, mut names) = (Vec::new(), Vec::new());
    for (name, ids) in groups.into_iter().filter(|(_, ids)| !ids.is_empty()) {
        for (part, chunk) in ids.chunks(per.min(ids.len().max(1))).enumerate() {
            let wave = names.len() as u32;
            names.push(if part == 0 { name.clone() } else { format!("{name} ({})", part + 1) });
            plan.extend(chunk.iter().map(|t| (t.clone(), wave)));
        }
    }
    Ok((plan, names))
}

/// A target's place in a fleet deploy, from its note and the deployment the fleet made
/// (`action`: the fleet deploy's own; a rollback of a deploy is its wave's auto-rollback).
fn target_state(note: &str, dep: Option<&DeploymentRow>, action: &str) -> (&'static str, String) {
    if let Some(d) = dep.filter(|d| d.action == "rollback" && action == "deploy") {
        return match (d.finished_unix, d.status.as_str()) {
            (None, _) => ("deploying", format!("rolling back: {} {}", d.id, d.status)),
            (Some(_), "succeeded") => ("rolled_back", format!("its wave failed: {} came back", d.release)),
            _ => ("failed", format!("its wave failed, and the rollback {}: {}", d.status, d.reason)),
        };
    }
    match dep {
        Some(d) if d.finished_unix.is_none() && note == "pending" => {
            ("pending", format!("{} is queued: the agent takes it at its next poll", d.id))
        }
        Some(d) if d.finished_unix.is_none() => ("deploying", format!("{} {}", d.id, d.status)),
        Some(d) if d.status == "succeeded" => ("succeeded", d.reason.clone()),
        Some(d) => ("failed", format!("{}: {}", d.status, d.reason)),
        None => match note.split_once(": ") {
            Some(("failed", why)) => ("failed", why.to_string()),
            Some(("succeeded", why)) => ("succeeded", why.to_string()),
            Some(("skipped", why)) => ("skipped", why.to_string()),
            _ => ("planned", String::new()),
        },
    }
}

impl Coordinator {
    /// Make a fleet deploy and start it.
    pub(super) fn create_fleet(
        &self,
        r: &proto::FleetDeployRequest,
        operator: &str,
    ) -> Result<proto::FleetDeployInfo, Status> {
        let action = match r.action.as_str() {
            "" | "deploy" => "deploy",
            "rollback" => "rollback",
            "upgrade" => "upgrade",
            other => return Err(Status::invalid_argument(format!("action {other:?}: deploy, rollback or upgrade"))),
        };
        if !r.targets.is_empty() && (r.all || !r.selector.trim().is_empty()) {
            return Err(Status::invalid_argument("name targets, or a --selector, or --all: one of them"));
        }
        let selector = match (r.selector.trim(), r.all) {
            ("", false) if !r.targets.is_empty() => None,
            ("", false) => {
                return Err(Status::invalid_argument("name the targets with --selector (env=prod,region=eu) or --all"))
            }
            (s, true) if !s.is_empty() => {
                return Err(Status::invalid_argument("--selector and --all: one or the other"))
            }
            (_, true) => None,
            (s, false) => Some(Selector::parse(s).map_err(|e| Status::invalid_argument(e.to_string()))?),
        };
        let projects = self.projects()?;
        if let Some(unknown) = r.targets.iter().find(|t| projects.target(t).is_none()) {
            return Err(Status::not_found(format!("no target {unknown:?} in {}", projects.files())));
        }
        let mut picked: Vec<(&dockfra_common::config::Project, &dockfra_common::config::Target)> = projects
            .targets()
            .filter(|(_, t)| {
                if r.targets.is_empty() {
                    selector.as_ref().is_none_or(|s| s.matches(&t.labels))
                } else {
                    r.targets.contains(&t.id)
                }
            })
            .collect();
        let binaries = if action == "upgrade" {
            if r.auto_rollback {
                return Err(Status::invalid_argument(
                    "--auto-rollback-wave is for deploys: an agent whose upgrade fails goes back to its old binary by itself",
                ));
            }
            // An agent is upgraded once, through the first target chosen that uses it.
            let mut agents = std::collections::BTreeSet::new();
            picked.retain(|(_, t)| agents.insert(t.agent_name().to_string()));
            let dir = if r.binaries.is_empty() {
                self.inner.state.path("agent-binaries")
            } else {
                std::path::PathBuf::from(&r.binaries)
            };
            super::upgrade::read_sums(&dir).map_err(|e| Status::failed_precondition(e.to_string()))?;
            dir.display().to_string()
        } else {
            String::new()
        };
        let chosen: Vec<&dockfra_common::config::Target> = picked.iter().map(|(_, t)| *t).collect();
        if chosen.is_empty() {
            return Err(Status::not_found(format!(
                "no target in {} matches {}",
                projects.files(),
                selector.as_ref().map(|s| format!("selector {s:?}")).unwrap_or_else(|| "--all".into())
            )));
        }
        let production: Vec<&str> =
            chosen.iter().filter(|t| self.inner.production.matches(&t.labels)).map(|t| t.id.as_str()).collect();
        if !production.is_empty() && !r.confirm {
            return Err(Status::failed_precondition(format!(
                "{} production target(s) among the {} chosen ({}; {}): confirm with --yes (REST: \"confirm\": true)",
                production.len(),
                chosen.len(),
                production.join(", "),
                self.inner.production
            )));
        }
        let canary = canary_count(&r.canary, chosen.len()).map_err(Status::invalid_argument)?;
        let ids: Vec<String> = chosen.iter().map(|t| t.id.clone()).collect();
        let (waves, wave_names) = if r.waves {
            if canary > 0 {
                return Err(Status::invalid_argument(
                    "--waves and --canary: the declared waves, or a canary, not both",
                ));
            }
            let mut files: Vec<&std::path::Path> = picked.iter().map(|(p, _)| p.file.as_path()).collect();
            files.dedup();
            if files.len() > 1 {
                return Err(Status::invalid_argument(format!(
                    "--waves: the chosen targets belong to {} projects ({}); waves are declared per project: \
                     choose one project's targets with the selector",
                    files.len(),
                    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
                )));
            }
            let project = picked[0].0;
            if project.waves.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "--waves: {} declares no waves (waves: [{{name, selector}}, …])",
                    project.file.display()
                )));
            }
            declared_waves(&chosen, &project.waves, r.max_parallel).map_err(Status::internal)?
        } else {
            let plan = plan_waves(&ids, canary, r.max_parallel);
            let n = plan.iter().map(|(_, w)| w + 1).max().unwrap_or(0);
            let names = (0..n).map(|w| if w == 0 && canary > 0 { "canary".into() } else { format!("wave {}", w + 1) });
            (plan, names.collect())
        };
        let spec = Spec {
            selector: selector.as_ref().map(|s| s.to_string()).unwrap_or_default(),
            action: action.into(),
            version: r.version.clone(),
            max_parallel: r.max_parallel,
            canary,
            soak_ms: if r.soak_ms == 0 { DEFAULT_SOAK.as_millis() as u64 } else { r.soak_ms },
            wave_timeout_ms: if r.wave_timeout_ms == 0 {
                DEFAULT_WAVE_TIMEOUT.as_millis() as u64
            } else {
                r.wave_timeout_ms
            },
            confirm: r.confirm,
            force: r.force,
            wave_names,
            auto_rollback: r.auto_rollback,
            binaries,
            trial_timeout_ms: r.trial_timeout_ms,
        };
        let id = format!(
            "f-{}-{}",
            dockfra_common::now_unix_ms(),
            &dockfra_common::sha256_hex(format!("{operator}{:?}", std::time::SystemTime::now()).as_bytes())[..6]
        );
        let json = serde_json::to_string(&spec).map_err(CoordError::internal)?;
        let n_waves = waves.iter().map(|(_, w)| w + 1).max().unwrap_or(0);
        {
            let mut store = self.store();
            store.add_fleet(&id, &json, operator, &waves)?;
            let what = if spec.selector.is_empty() { "every target".to_string() } else { spec.selector.clone() };
            store.event_by(
                "-",
                "fleet",
                &format!("fleet {action} {id}: {} target(s) of {what} in {n_waves} wave(s)", ids.len()),
                operator,
            )?;
        }
        self.spawn_fleet(id.clone());
        self.fleet_info(&id)
    }

    /// Where a fleet deploy stands, target by target.
    pub(super) fn fleet_info(&self, id: &str) -> Result<proto::FleetDeployInfo, Status> {
        let projects = self.projects().ok();
        let store = self.store();
        let row = store.fleet(id)?.ok_or_else(|| Status::not_found(format!("no fleet deploy {id:?}")))?;
        let spec: Spec = serde_json::from_str(&row.spec).map_err(CoordError::internal)?;
        let mut targets = Vec::new();
        let mut counts: BTreeMap<String, u32> = BTreeMap::new();
        let mut waves = 0;
        for (t, wave, note) in store.fleet_targets(id)? {
            let dep = store.fleet_deployment(id, &t)?;
            let (status, reason) = target_state(&note, dep.as_ref(), &spec.action);
            // What the agent runs now, as it last reported.
            let (app, agent) = match projects.as_ref().and_then(|p| p.target(&t)) {
                Some((p, x)) => (p.app.name.clone(), x.agent_name().to_string()),
                None => (String::new(), t.clone()),
            };
            // An upgrade: what the agent runs is the binary (its upgrade release, its version).
            let upgrade = spec.action == "upgrade";
            let app = if upgrade { dockfra_common::bundle::AGENT_APP.to_string() } else { app };
            let running = store.agent(&agent)?.and_then(|a| {
                let apps = a.status["apps"].as_array()?.clone();
                let found = apps.into_iter().find(|x| x["app"] == app.as_str());
                let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
                if upgrade {
                    let release = found.as_ref().map(|f| s(f, "current_release")).unwrap_or_default();
                    let sha = s(&a.facts, "binary_sha256");
                    let version = format!("{} ({})", s(&a.facts, "agent_version"), &sha[..sha.len().min(12)]);
                    return Some((release, version));
                }
                let found = found?;
                Some((s(&found, "current_release"), s(&found, "current_version")))
            });
            let (current_release, current_version) = running.unwrap_or_default();
            *counts.entry(status.to_string()).or_default() += 1;
            waves = waves.max(wave + 1);
            targets.push(proto::FleetTarget {
                target: t,
                wave,
                status: status.into(),
                reason,
                deployment: dep.as_ref().map(views::deployment),
                current_release,
                current_version,
            });
        }
        Ok(proto::FleetDeployInfo {
            id: row.id,
            selector: spec.selector,
            action: spec.action,
            operator: row.operator,
            status: row.status,
            reason: row.reason,
            waves,
            wave: row.wave,
            created_unix: row.created_unix.max(0) as u64,
            finished_unix: row.finished_unix.unwrap_or(0).max(0) as u64,
            max_parallel: spec.max_parallel,
            canary: spec.canary,
            soak_ms: spec.soak_ms,
            wave_timeout_ms: spec.wave_timeout_ms,
            version: spec.version,
            targets,
            counts,
            wave_names: spec.wave_names,
            auto_rollback: spec.auto_rollback,
        })
    }

    /// Stop a running fleet deploy: the targets it has not ordered yet are skipped; orders
    /// already given run on (each is an ordinary deployment).
    pub(super) fn cancel_fleet(&self, id: &str, operator: &str) -> Result<proto::FleetDeployInfo, Status> {
        let row = self.store().fleet(id)?.ok_or_else(|| Status::not_found(format!("no fleet deploy {id:?}")))?;
        if row.status != "running" {
            return Err(Status::failed_precondition(format!("fleet deploy {id} is {} already", row.status)));
        }
        self.end_fleet(id, operator, "cancelled", &format!("cancelled by {operator}")).map_err(CoordError::internal)?;
        self.fleet_info(id)
    }

    pub(super) fn fleet_list(&self, limit: u32) -> Result<proto::FleetDeployList, Status> {
        let rows = self.store().fleets(false, limit)?;
        let fleet_deploys = rows.iter().map(|r| self.fleet_info(&r.id)).collect::<Result<_, _>>()?;
        Ok(proto::FleetDeployList { fleet_deploys })
    }

    fn spawn_fleet(&self, id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.run_fleet(&id).await {
                tracing::warn!(fleet = %id, "fleet deploy: {e}");
                let _ = this.store().finish_fleet(&id, "failed", &format!("stopped: {e}"));
            }
        });
    }

    /// At start-up: fleet deploys a previous run left running go on.
    pub(super) fn resume_fleets(&self) {
        let running = self.store().fleets(true, 1000).unwrap_or_default();
        for row in running {
            tracing::info!(fleet = %row.id, wave = row.wave, "resuming a fleet deploy");
            self.spawn_fleet(row.id);
        }
    }

    /// Record and announce a wave's end: its targets, the failed ones, and what follows.
    fn notify_wave(
        &self,
        id: &str,
        operator: &str,
        action: &str,
        (wave, waves): (u32, u32),
        members: &[String],
        failed: &[String],
    ) {
        let ok = failed.is_empty();
        let result = if ok { "succeeded" } else { "failed" };
        let summary = format!("fleet {action} {id}: wave {}/{waves} {result}", wave + 1);
        let mut details = vec![
            format!("fleet:    {id} ({action})"),
            format!("wave:     {}/{waves}", wave + 1),
            format!("result:   {result}"),
            format!("targets:  {}", members.join(", ")),
            format!("operator: {operator}"),
        ];
        if !ok {
            details.push(format!("failed:   {}", failed.join(", ")));
            details.push("the later waves are not started".into());
        }
        // The audit trail has every wave's end, as it has the fleet deploy's start and end.
        let trail = if ok { summary.clone() } else { format!("{summary} (failed: {})", failed.join(", ")) };
        let _ = self.store().event_by("-", "fleet-wave", &trail, operator);
        let notice = crate::notify::Notice {
            event: "wave".into(),
            succeeded: ok,
            payload: serde_json::json!({
                "event": "wave", "result": result, "fleet": id, "action": action, "wave": wave + 1, "waves": waves,
                "targets": members, "failed": failed, "operator": operator,
            }),
            summary,
            details,
        };
        self.notify(self.channels_of(members.iter().map(String::as_str)), notice);
    }

    async fn run_fleet(&self, id: &str) -> anyhow::Result<()> {
        let Some(row) = self.store().fleet(id)? else { anyhow::bail!("no fleet deploy {id}") };
        let spec: Spec = serde_json::from_str(&row.spec)?;
        let plan = self.store().fleet_targets(id)?;
        let waves = plan.iter().map(|(_, w, _)| w + 1).max().unwrap_or(0);
        let mut pending = Vec::new();
        for wave in row.wave..waves {
            if self.cancelled(id, &plan)? {
                return Ok(());
            }
            self.store().set_fleet_wave(id, wave)?;
            let members: Vec<String> = plan.iter().filter(|(_, w, _)| *w == wave).map(|(t, _, _)| t.clone()).collect();
            for t in &members {
                self.start_in_fleet(id, &row, &spec, t).await?;
            }
            self.wait_wave(id, &members, Duration::from_millis(spec.wave_timeout_ms)).await?;
            let mut failed = Vec::new();
            for t in &members {
                let note = self.note_of(id, t)?;
                let dep = self.store().fleet_deployment(id, t)?;
                match target_state(&note, dep.as_ref(), &spec.action).0 {
                    "failed" => failed.push(t.clone()),
                    "pending" => pending.push(t.clone()),
                    _ => {}
                }
            }
            if failed.is_empty() && wave == 0 && spec.canary > 0 && waves > 1 {
                failed = self.soak(&members, Duration::from_millis(spec.soak_ms)).await?;
            }
            self.notify_wave(id, &row.operator, &spec.action, (wave, waves), &members, &failed);
            if !failed.is_empty() {
                let rolled = if spec.auto_rollback && spec.action == "deploy" {
                    self.roll_wave_back(id, &row, &spec, &members, &failed).await?
                } else {
                    Vec::new()
                };
                let later: Vec<&String> = plan.iter().filter(|(_, w, _)| *w > wave).map(|(t, _, _)| t).collect();
                for t in &later {
                    self.store().note_fleet_target(id, t, &format!("skipped: wave {} failed", wave + 1))?;
                }
                let back =
                    if rolled.is_empty() { String::new() } else { format!("; rolled back: {}", rolled.join(", ")) };
                let why = format!(
                    "wave {}/{waves} failed ({}){back}; {} target(s) in later waves left untouched",
                    wave + 1,
                    failed.join(", "),
                    later.len()
                );
                self.end_fleet(id, &row.operator, "failed", &why)?;
                return Ok(());
            }
        }
        let why = if pending.is_empty() {
            String::new()
        } else {
            format!(
                "{} target(s) pending ({}): their agents take the order at their next poll",
                pending.len(),
                pending.join(", ")
            )
        };
        self.end_fleet(id, &row.operator, "succeeded", &why)?;
        Ok(())
    }

    /// Was the fleet deploy cancelled? Then the targets it has not ordered are skipped.
    fn cancelled(&self, id: &str, plan: &[(String, u32, String)]) -> anyhow::Result<bool> {
        let status = self.store().fleet(id)?.map(|r| r.status).unwrap_or_default();
        if status != "cancelled" {
            return Ok(false);
        }
        for (t, _, _) in plan {
            let ordered = self.store().fleet_deployment(id, t)?.is_some();
            if !ordered && self.note_of(id, t)?.is_empty() {
                self.store().note_fleet_target(id, t, "skipped: the fleet deploy was cancelled")?;
            }
        }
        Ok(true)
    }

    fn note_of(&self, id: &str, target: &str) -> anyhow::Result<String> {
        Ok(self.store().fleet_note(id, target)?)
    }

    fn end_fleet(&self, id: &str, operator: &str, status: &str, why: &str) -> anyhow::Result<()> {
        let store = self.store();
        if store.finish_fleet(id, status, why)? {
            let msg = if why.is_empty() {
                format!("fleet deploy {id} {status}")
            } else {
                format!("fleet deploy {id} {status}: {why}")
            };
            store.event_by("-", "fleet", &msg, operator)?;
        }
        Ok(())
    }

    /// Order `target` as part of fleet deploy `id`, unless it was ordered already (a resumed
    /// fleet deploy) or refused before.
    async fn start_in_fleet(&self, id: &str, row: &FleetRow, spec: &Spec, target: &str) -> anyhow::Result<()> {
        if self.store().fleet(id)?.is_some_and(|r| r.status == "cancelled") {
            return Ok(());
        }
        // (One store call per statement: its lock is held to the end of the statement.)
        let ordered = self.store().fleet_deployment(id, target)?.is_some();
        if ordered || !self.note_of(id, target)?.is_empty() {
            return Ok(());
        }
        let order = Order { operator: &row.operator, confirm: spec.confirm, force: spec.force, fleet: id };
        let started = if spec.action == "upgrade" {
            let trial = Duration::from_millis(spec.trial_timeout_ms);
            match self.start_upgrade(target, std::path::Path::new(&spec.binaries), trial, &order).await {
                Ok(Some(started)) => Ok(started),
                Ok(None) => {
                    let note = "succeeded: its agent already runs this binary (nothing to do)";
                    self.store().note_fleet_target(id, target, note)?;
                    return Ok(());
                }
                Err(e) => Err(e),
            }
        } else if spec.action == "rollback" {
            self.start_rollback(target, None, &order)
        } else {
            let version = (!spec.version.is_empty()).then_some(spec.version.as_str());
            self.start_deploy(target, version, &order).await
        };
        match started {
            Ok((t, dep)) => {
                let mut events = self.deliver(t, dep, false, Duration::from_secs(600));
                tokio::spawn(async move { while events.next().await.is_some() {} });
            }
            Err(e) => self.store().note_fleet_target(id, target, &format!("failed: {}", e.message()))?,
        }
        Ok(())
    }

    /// `--auto-rollback-wave`: the failed wave's targets that took the release go back to
    /// their previous one (the failed ones were rolled back by their agents already).
    async fn roll_wave_back(
        &self,
        id: &str,
        row: &FleetRow,
        spec: &Spec,
        members: &[String],
        failed: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let order = Order { operator: &row.operator, confirm: spec.confirm, force: true, fleet: id };
        let mut rolled = Vec::new();
        for t in members.iter().filter(|t| !failed.contains(t)) {
            let dep = self.store().fleet_deployment(id, t)?;
            if !dep.is_some_and(|d| d.status == "succeeded" && d.action == "deploy") {
                continue;
            }
            match self.start_rollback(t, None, &order) {
                Ok((target, dep)) => {
                    let mut events = self.deliver(target, dep, false, Duration::from_secs(600));
                    tokio::spawn(async move { while events.next().await.is_some() {} });
                    rolled.push(t.clone());
                }
                Err(e) => tracing::warn!(fleet = %id, target = %t, "auto-rollback: {}", e.message()),
            }
        }
        self.wait_wave(id, &rolled, Duration::from_millis(spec.wave_timeout_ms)).await?;
        Ok(rolled)
    }

    /// Wait until every member's deployment has ended, or the time is up: then the ones still
    /// open are `pending` (their orders stay queued).
    async fn wait_wave(&self, id: &str, members: &[String], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut open = Vec::new();
            for t in members {
                let dep = self.store().fleet_deployment(id, t)?;
                if let Some(d) = dep {
                    if d.finished_unix.is_none() && self.note_of(id, t)? != "pending" {
                        open.push(t.clone());
                    }
                }
            }
            if open.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                for t in open {
                    self.store().note_fleet_target(id, &t, "pending")?;
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The canary wave's targets must still be healthy at the end of the soak time: the ones
    /// that are not.
    async fn soak(&self, members: &[String], soak: Duration) -> anyhow::Result<Vec<String>> {
        tokio::time::sleep(soak).await;
        let projects = self.projects()?;
        let mut bad = Vec::new();
        for t in members {
            let Some((project, target)) = projects.target(t) else { continue };
            // A push agent is asked now, and so is a watching pull agent (it polls when told);
            // another pull agent's last poll is at most one interval old.
            let agent = target.agent_name();
            if target.agent.mode == dockfra_common::config::Mode::Pull && self.watching(agent) {
                let asked = self.store().agent(agent)?.and_then(|a| a.last_seen_unix).unwrap_or(0);
                let asked_ms = dockfra_common::now_unix_ms();
                if self.nudge(agent, super::watch::Nudge::Status) {
                    // last_seen has whole seconds: wait for a poll stamped after the nudge's second.
                    let fresh = async {
                        loop {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            let seen = self.store().agent(agent).ok().flatten().and_then(|a| a.last_seen_unix);
                            if seen.is_some_and(|s| s > asked || (s as u64) * 1000 > asked_ms) {
                                return;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(10), fresh).await;
                }
            } else if target.agent.mode == dockfra_common::config::Mode::Push {
                let asked = async {
                    let mut c = self.dial_agent(target).await.ok()?;
                    self.refresh_status(target.agent_name(), &mut c).await
                };
                if tokio::time::timeout(Duration::from_secs(10), asked).await.ok().flatten().is_none() {
                    self.note_reach(target.agent_name(), Some("no status at the end of the soak".into()));
                }
            }
            let st = self.target_status(project, target)?;
            if st.state != "healthy" && st.state != "unreachable" {
                bad.push(format!("{t} ({}: {})", st.state, st.state_reason));
            } else if st.state == "unreachable" && target.agent.mode == dockfra_common::config::Mode::Push {
                bad.push(format!("{t} (unreachable after the soak: {})", st.state_reason));
            }
        }
        Ok(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i}")).collect()
    }

    #[test]
    fn waves_put_the_canary_first_then_max_parallel_at_a_time() {
        let w = plan_waves(&ids(5), 1, 2);
        let waves: Vec<u32> = w.iter().map(|(_, w)| *w).collect();
        assert_eq!(waves, [0, 1, 1, 2, 2]);
        assert_eq!(plan_waves(&ids(3), 0, 0).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [0, 0, 0]);
        assert_eq!(plan_waves(&ids(4), 0, 3).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [0, 0, 0, 1]);
        assert_eq!(plan_waves(&ids(2), 5, 1).iter().map(|(_, w)| *w).collect::<Vec<_>>(), [0, 0]);
    }

    #[test]
    fn canary_counts_and_percentages() {
        assert_eq!(canary_count("", 10), Ok(0));
        assert_eq!(canary_count("2", 10), Ok(2));
        assert_eq!(canary_count("20", 10), Ok(10));
        assert_eq!(canary_count("10%", 10), Ok(1));
        assert_eq!(canary_count("15%", 10), Ok(2));
        assert_eq!(canary_count("1%", 3), Ok(1));
        for bad in ["0", "0%", "101%", "x", "-1"] {
            assert!(canary_count(bad, 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_targets_place_in_a_fleet_deploy() {
        assert_eq!(target_state("", None, "deploy").0, "planned");
        assert_eq!(target_state("skipped: wave 2 failed", None, "deploy").0, "skipped");
        let (s, why) = target_state("failed: target \"x\" is being deployed by bob", None, "deploy");
        assert_eq!(s, "failed");
        assert!(why.contains("bob"));
    }
}
