//! The deploy state machine on the agent (DESIGN §3.3, §3.6):
//! `Verified → Fetched → Materialized → PreDeployed → Activated → Applied → Healthy →
//! Reported → Pruned`, with rollback and failure as ends. The phase is journaled (fsynced)
//! before each step; on restart [`Executor::recover`] reads the journal and converges —
//! never leaving `current` on an incomplete release or a half-applied step.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;

use dockfra_common::bundle::{self, Action, Manifest, Verified, Watermark};
use dockfra_common::proto;

use crate::drivers::{self, StepCtx};
use crate::health;
use crate::releases::AppReleases;
use crate::runner::Runner;
use crate::state::{AppState, BlobWriter, Journal, Phase, StateDir};

/// Where missing blobs come from: the coordinator (pull), the push stream, or nowhere (an
/// offline bundle whose blobs were staged beforehand).
#[tonic::async_trait]
pub trait BlobSource: Send {
    async fn fetch(&mut self, bundle_id: &str, writer: &mut BlobWriter, digests: Vec<String>) -> anyhow::Result<()>;
}

/// For offline bundles: every blob must already be in the store.
pub struct NoSource;

#[tonic::async_trait]
impl BlobSource for NoSource {
    async fn fetch(&mut self, _: &str, _: &mut BlobWriter, digests: Vec<String>) -> anyhow::Result<()> {
        anyhow::bail!("{} blob(s) missing and no source to fetch them from: {}", digests.len(), digests.join(", "))
    }
}

pub type Events = mpsc::UnboundedSender<proto::DeployEvent>;

pub struct Executor {
    pub state: StateDir,
    pub target: String,
    pub signing_key: Vec<u8>,
    pub runner: Arc<dyn Runner>,
    /// One deploy at a time within this process (the file lock covers other processes).
    gate: tokio::sync::Mutex<()>,
}

struct Emitter<'a> {
    tx: &'a Events,
    deployment_id: String,
    bytes: u64,
}

impl Emitter<'_> {
    fn send(&self, phase: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(phase, "{message}");
        let _ = self.tx.send(proto::DeployEvent {
            deployment_id: self.deployment_id.clone(),
            phase: phase.into(),
            message,
            bytes_received: self.bytes,
            unix_ms: dockfra_common::now_unix_ms(),
            ..Default::default()
        });
    }

    fn finish(&self, result: &str, release: &str, message: impl Into<String>) -> proto::DeployEvent {
        let message = message.into();
        tracing::info!(result, release, "{message}");
        let ev = proto::DeployEvent {
            deployment_id: self.deployment_id.clone(),
            phase: if result == "succeeded" { "Done".into() } else { "Failed".into() },
            message,
            r#final: true,
            result: result.into(),
            release: release.into(),
            bytes_received: self.bytes,
            unix_ms: dockfra_common::now_unix_ms(),
        };
        let _ = self.tx.send(ev.clone());
        ev
    }
}

impl Executor {
    pub fn new(state: StateDir, target: String, signing_key: Vec<u8>, runner: Arc<dyn Runner>) -> Self {
        Self { state, target, signing_key, runner, gate: tokio::sync::Mutex::new(()) }
    }

    pub fn watermark(&self) -> Watermark {
        let p = self.state.persisted();
        Watermark {
            last_desired_sequence: p.last_desired_sequence,
            current_release_sequence: p.apps.values().map(|a| a.current_sequence).max().unwrap_or(0),
        }
    }

    /// Verify an assignment against this agent's key, target and watermark.
    pub fn verify(&self, a: &proto::Assignment) -> Result<Verified, bundle::BundleError> {
        bundle::verify_assignment(a, &self.signing_key, &self.target, self.watermark(), dockfra_common::now_unix())
    }

    /// Where an app's releases live: `<deploy_path>/<app>` or `<state>/apps/<app>`.
    pub fn app_base(&self, m: &Manifest) -> anyhow::Result<PathBuf> {
        match m.ssh_raw.as_ref().and_then(|s| s.deploy_path.as_deref()) {
            Some(p) if !p.starts_with('/') => {
                anyhow::bail!("config.deploy_path {p:?} must be an absolute path")
            }
            Some(p) => Ok(PathBuf::from(p).join(&m.app)),
            None => Ok(self.state.root.join("apps").join(&m.app)),
        }
    }

    fn env(&self, m: &Manifest, rel: &AppReleases, release: &str, previous: Option<&str>) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("DOCKFRA_TARGET".into(), self.target.clone());
        env.insert("DOCKFRA_APP".into(), m.app.clone());
        env.insert("DOCKFRA_VERSION".into(), m.version.clone());
        env.insert("DOCKFRA_RELEASE".into(), release.into());
        env.insert("DOCKFRA_RELEASE_DIR".into(), rel.dir(release).display().to_string());
        env.insert("DOCKFRA_CURRENT".into(), rel.current_link().display().to_string());
        env.insert("DOCKFRA_PREVIOUS_RELEASE".into(), previous.unwrap_or_default().into());
        env
    }

    /// Carry out one assignment end to end. Always ends with exactly one final event, which
    /// is also returned.
    pub async fn execute(
        &self,
        a: &proto::Assignment,
        source: &mut dyn BlobSource,
        events: &Events,
    ) -> proto::DeployEvent {
        let _gate = self.gate.lock().await;
        let deployment_id = serde_json::from_slice::<bundle::DesiredState>(
            a.desired.as_ref().map(|d| d.payload.as_slice()).unwrap_or_default(),
        )
        .map(|d| d.deployment_id)
        .unwrap_or_default();
        let mut em = Emitter { tx: events, deployment_id, bytes: 0 };
        let lock = match self.state.lock() {
            Ok(l) => l,
            Err(e) => return em.finish("failed", "", format!("{e:#}")),
        };
        let v = match self.verify(a) {
            Ok(v) => v,
            Err(e) => return em.finish("refused", "", format!("refused: {e}")),
        };
        em.deployment_id = v.desired.deployment_id.clone();
        if let Some(declared) = &v.manifest.os {
            let (os, wsl) = crate::facts::host_os();
            if let Some(why) = dockfra_common::config::os_mismatch(declared, &os, wsl) {
                return em.finish("refused", "", format!("refused: target {}: {why}", v.manifest.target));
            }
        }
        let r = self.run_verified(&v, source, &mut em).await;
        drop(lock);
        r
    }

    async fn run_verified(
        &self,
        v: &Verified,
        source: &mut dyn BlobSource,
        em: &mut Emitter<'_>,
    ) -> proto::DeployEvent {
        let m = &v.manifest;
        let name = m.release_name();
        let base = match self.app_base(m) {
            Ok(b) => b,
            Err(e) => return self.failed_early(v, em, format!("{e:#}")),
        };
        let rel = AppReleases::new(base.clone());
        let previous = rel.current();
        let mut journal = Journal {
            deployment_id: v.desired.deployment_id.clone(),
            desired_sequence: v.desired.sequence,
            action: format!("{:?}", v.desired.action).to_lowercase(),
            app: m.app.clone(),
            base: base.clone(),
            release: name.clone(),
            previous: previous.clone(),
            phase: Phase::Verified,
        };
        let step = |j: &mut Journal, p: Phase| -> anyhow::Result<()> {
            j.phase = p;
            self.state.write_journal(j)
        };
        if let Err(e) = step(&mut journal, Phase::Verified) {
            return self.failed_early(v, em, format!("cannot write the journal: {e:#}"));
        }
        let what = if v.desired.action == Action::Rollback { "rollback to" } else { "release" };
        em.send(
            "Verified",
            format!("{what} {name} (version {}) verified: signature, target, sequence, paths", m.version),
        );

        // Fetch what is missing.
        if !rel.is_complete(&name) {
            let wanted = m.digests();
            let missing = self.state.missing_blobs(&wanted);
            let sizes: BTreeMap<String, u64> =
                m.blob_sizes().into_iter().filter(|(d, _)| missing.contains(d)).collect();
            if !missing.is_empty() {
                let r = async {
                    let mut w = BlobWriter::new(self.state.blobs(), sizes)?;
                    source.fetch(&v.bundle_id, &mut w, missing.clone()).await?;
                    if w.remaining() > 0 {
                        anyhow::bail!("{} blob(s) never arrived", w.remaining());
                    }
                    Ok::<u64, anyhow::Error>(w.bytes)
                }
                .await;
                match r {
                    Ok(bytes) => em.bytes = bytes,
                    Err(e) => return self.abandon(v, em, &journal, format!("fetching blobs: {e:#}")),
                }
            }
            em.send(
                "Fetched",
                format!(
                    "{} of {} blob(s) fetched ({} bytes); the rest were already here",
                    missing.len(),
                    wanted.len(),
                    em.bytes
                ),
            );
        }
        if let Err(e) = step(&mut journal, Phase::Fetched) {
            return self.abandon(v, em, &journal, format!("cannot write the journal: {e:#}"));
        }

        if let Err(e) = rel.materialize(m, &self.state.blobs()) {
            return self.abandon(v, em, &journal, format!("{e}"));
        }
        if let Err(e) = step(&mut journal, Phase::Materialized) {
            return self.abandon(v, em, &journal, format!("cannot write the journal: {e:#}"));
        }
        em.send("Materialized", format!("release dir {}", rel.dir(&name).display()));

        let driver = match drivers::for_platform(m.platform) {
            Ok(d) => d,
            Err(e) => return self.abandon(v, em, &journal, e.to_string()),
        };
        let ctx = StepCtx {
            manifest: m,
            release_dir: rel.dir(&name),
            current_link: rel.current_link(),
            env: self.env(m, &rel, &name, previous.as_deref()),
            runner: self.runner.as_ref(),
            blobs: self.state.blobs(),
        };
        if let Err(e) = driver.validate(&ctx).await {
            return self.abandon(v, em, &journal, e.to_string());
        }
        if let Err(e) = step(&mut journal, Phase::PreDeployed) {
            return self.abandon(v, em, &journal, format!("cannot write the journal: {e:#}"));
        }
        if let Err(e) = driver.pre_deploy(&ctx).await {
            return self.abandon(v, em, &journal, e.to_string());
        }
        em.send("PreDeployed", "pre-deploy step done");

        // From here on `current` may move: a failure must swap back.
        if let Err(e) = step(&mut journal, Phase::Activated) {
            return self.abandon(v, em, &journal, format!("cannot write the journal: {e:#}"));
        }
        if let Err(e) = rel.activate(&name) {
            return self.abandon(v, em, &journal, e.to_string());
        }
        em.send("Activated", format!("current -> releases/{name}"));
        if let Err(e) = step(&mut journal, Phase::Applied) {
            let reason = format!("cannot write the journal: {e:#}");
            return self.roll_back(v, em, &rel, &journal, driver.as_ref(), reason).await;
        }
        let applied = async {
            driver.apply(&ctx).await.map_err(|e| e.to_string())?;
            driver.post_deploy(&ctx).await.map_err(|e| e.to_string())?;
            if let Some(h) = &m.health {
                em.send("Health", format!("checking health ({} check(s), {} retries)", h.checks.len(), h.retries));
                health::run(h, self.runner.as_ref(), &rel.dir(&name)).await?;
            }
            Ok::<(), String>(())
        }
        .await;
        if let Err(reason) = applied {
            return self.roll_back(v, em, &rel, &journal, driver.as_ref(), reason).await;
        }
        let _ = step(&mut journal, Phase::Healthy);
        em.send("Healthy", "release is live and healthy");
        self.record_success(v, &rel, previous.as_deref());
        let _ = step(&mut journal, Phase::Reported);
        let _ = step(&mut journal, Phase::Pruned);
        let keep = m.keep_releases as usize;
        let protect: Vec<&str> = previous.iter().map(String::as_str).collect();
        let manifests: Vec<(String, Manifest)> =
            rel.list().into_iter().filter_map(|r| rel.manifest(&r.name).map(|m| (r.name, m))).collect();
        let removed = rel.prune(keep, &protect);
        if !removed.is_empty() {
            em.send("Pruned", format!("pruned {}", removed.join(", ")));
            let unused = images_only_in(&manifests, &removed);
            if !unused.is_empty() {
                let (gone, kept) = driver.remove_images(&ctx, &unused).await;
                if !gone.is_empty() {
                    em.send("Pruned", format!("removed image(s) no kept release uses: {}", gone.join(", ")));
                }
                for k in kept {
                    tracing::info!("image kept: {k}");
                }
            }
        }
        let _ = self.state.clear_journal();
        em.finish("succeeded", &name, format!("release {name} (version {}) is live and healthy", m.version))
    }

    fn record_success(&self, v: &Verified, rel: &AppReleases, previous: Option<&str>) {
        let m = &v.manifest;
        let name = m.release_name();
        let mut p = self.state.persisted();
        p.last_desired_sequence = p.last_desired_sequence.max(v.desired.sequence);
        let app = p.apps.entry(m.app.clone()).or_default();
        *app = AppState {
            previous: previous.filter(|prev| *prev != name).map(String::from).or(app.previous.clone()),
            current: Some(name),
            current_sequence: m.sequence,
            current_version: m.version.clone(),
            health: "healthy".into(),
            last_result: "succeeded".into(),
            base: Some(rel.base.clone()),
        };
        if let Err(e) = self.state.save_persisted(&p) {
            tracing::error!("cannot save state: {e:#}");
        }
    }

    /// The order was processed and failed before `current` moved: nothing to undo. The
    /// watermark advances so a pull agent does not retry a failing order forever.
    fn abandon(&self, v: &Verified, em: &Emitter<'_>, _journal: &Journal, reason: String) -> proto::DeployEvent {
        let _ = self.state.clear_journal();
        self.failed_early(v, em, reason)
    }

    fn failed_early(&self, v: &Verified, em: &Emitter<'_>, reason: String) -> proto::DeployEvent {
        let mut p = self.state.persisted();
        p.last_desired_sequence = p.last_desired_sequence.max(v.desired.sequence);
        p.apps.entry(v.manifest.app.clone()).or_default().last_result = "failed".into();
        let _ = self.state.save_persisted(&p);
        let current = p.apps.get(&v.manifest.app).and_then(|a| a.current.clone()).unwrap_or_default();
        em.finish("failed", &current, format!("{reason}; current release unchanged"))
    }

    /// `current` moved and the release failed: swap back, re-run the service step for the
    /// previous release, quarantine the failed one.
    async fn roll_back(
        &self,
        v: &Verified,
        em: &Emitter<'_>,
        rel: &AppReleases,
        journal: &Journal,
        driver: &dyn drivers::Driver,
        reason: String,
    ) -> proto::DeployEvent {
        let name = &journal.release;
        em.send("RollingBack", format!("{reason}; rolling back"));
        if journal.previous.is_none() {
            // Nothing to go back to: stop what this release started.
            let ctx = StepCtx {
                manifest: &v.manifest,
                release_dir: rel.dir(name),
                current_link: rel.current_link(),
                env: self.env(&v.manifest, rel, name, None),
                runner: self.runner.as_ref(),
                blobs: self.state.blobs(),
            };
            if let Err(e) = driver.teardown(&ctx).await {
                em.send("RollingBack", format!("teardown of {name} failed: {e}"));
            }
        }
        let back = self.restore(rel, journal.previous.as_deref(), driver).await;
        let _ = rel.quarantine(name);
        let mut p = self.state.persisted();
        p.last_desired_sequence = p.last_desired_sequence.max(v.desired.sequence);
        let app = p.apps.entry(v.manifest.app.clone()).or_default();
        app.last_result = "failed".into();
        if journal.previous.is_none() {
            app.current = None;
            app.health = "unhealthy".into();
        }
        let _ = self.state.save_persisted(&p);
        let _ = self.state.clear_journal();
        let prev = journal.previous.clone().unwrap_or_default();
        let msg = match (&journal.previous, back) {
            (Some(p), Ok(())) => format!("{reason}; rolled back to {p}; release {name} quarantined"),
            (Some(p), Err(e)) => format!("{reason}; going back to {p} failed too: {e}"),
            (None, _) => format!("{reason}; no previous release to go back to; release {name} quarantined"),
        };
        em.finish("failed", &prev, msg)
    }

    /// Point `current` back at `previous` (or remove it) and re-run the service step.
    async fn restore(
        &self,
        rel: &AppReleases,
        previous: Option<&str>,
        driver: &dyn drivers::Driver,
    ) -> Result<(), String> {
        let Some(prev) = previous else {
            return rel.deactivate().map_err(|e| e.to_string());
        };
        rel.activate(prev).map_err(|e| e.to_string())?;
        let Some(pm) = rel.manifest(prev) else { return Ok(()) };
        let ctx = StepCtx {
            manifest: &pm,
            release_dir: rel.dir(prev),
            current_link: rel.current_link(),
            env: self.env(&pm, rel, prev, None),
            runner: self.runner.as_ref(),
            blobs: self.state.blobs(),
        };
        driver.apply(&ctx).await.map_err(|e| e.to_string())
    }

    /// After a crash: read the journal and converge. Before activation nothing ran that
    /// needs undoing; after it, the half-applied release is swapped back. The watermark is
    /// not advanced, so the coordinator hands the order out again and it runs whole.
    pub async fn recover(&self) -> anyhow::Result<Option<proto::DeployEvent>> {
        let Some(j) = self.state.journal() else { return Ok(None) };
        let _lock = self.state.lock()?;
        let rel = AppReleases::new(j.base.clone());
        let mut note = format!("recovered interrupted deploy of {} (phase {:?})", j.release, j.phase);
        if j.phase >= Phase::Healthy {
            note.push_str(": it had passed its health check; kept");
        } else if j.phase >= Phase::Activated && rel.current().as_deref() == Some(j.release.as_str()) {
            let pm = rel.manifest(&j.release).context("journaled release has no manifest")?;
            let driver = drivers::for_platform(pm.platform)?;
            match self.restore(&rel, j.previous.as_deref(), driver.as_ref()).await {
                Ok(()) => note.push_str(&format!(": swapped back to {}", j.previous.as_deref().unwrap_or("nothing"))),
                Err(e) => note.push_str(&format!(": swap back failed: {e}")),
            }
        } else {
            note.push_str(&format!(": current untouched ({})", rel.current().unwrap_or_else(|| "none".into())));
        }
        rel.clean_temp();
        self.state.clear_journal()?;
        tracing::warn!("{note}");
        Ok(Some(proto::DeployEvent {
            deployment_id: j.deployment_id,
            phase: "Recovered".into(),
            message: note,
            unix_ms: dockfra_common::now_unix_ms(),
            ..Default::default()
        }))
    }

    /// Local emergency rollback (`dockfra-agent rollback APP`): swap to the previous (or a
    /// named) release, re-run its service step and health check. Not signed; needs root
    /// on the host, which is the trust it stands on.
    pub async fn local_rollback(&self, app: &str, to: Option<&str>) -> anyhow::Result<String> {
        let _gate = self.gate.lock().await;
        let _lock = self.state.lock()?;
        let mut p = self.state.persisted();
        let st = p.apps.get(app).cloned().with_context(|| format!("no app {app:?} has been deployed here"))?;
        let base = st.base.clone().unwrap_or_else(|| self.state.root.join("apps").join(app));
        let rel = AppReleases::new(base);
        let target = match to {
            Some(t) => t.to_string(),
            None => st
                .previous
                .clone()
                .with_context(|| format!("app {app:?} has no previous release; name one with --to"))?,
        };
        if !rel.is_complete(&target) {
            anyhow::bail!(
                "release {target:?} of {app:?} is not on this host (have: {})",
                rel.list().iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        let pm = rel.manifest(&target).context("release has no manifest")?;
        let driver = drivers::for_platform(pm.platform)?;
        let current = rel.current();
        let switched = async {
            self.restore(&rel, Some(&target), driver.as_ref()).await?;
            match &pm.health {
                Some(h) => health::run(h, self.runner.as_ref(), &rel.dir(&target)).await,
                None => Ok(()),
            }
        }
        .await;
        if let Err(e) = switched {
            // Undo: go back to what ran before this command.
            let back = self.restore(&rel, current.as_deref(), driver.as_ref()).await;
            let how = match (&current, back) {
                (Some(c), Ok(())) => format!("back on {c}"),
                (Some(c), Err(b)) => format!("going back to {c} failed too: {b}"),
                (None, _) => "no release was current before".to_string(),
            };
            anyhow::bail!("rollback of {app:?} to {target} failed: {e}; {how}");
        }
        let app_state = p.apps.entry(app.to_string()).or_default();
        app_state.previous = current;
        app_state.current = Some(target.clone());
        app_state.current_sequence = pm.sequence;
        app_state.current_version = pm.version.clone();
        app_state.health = "healthy".into();
        app_state.last_result = "rolled back locally".into();
        self.state.save_persisted(&p)?;
        Ok(target)
    }

    /// This agent's view of its apps. For `docker_compose`, `swarm` and `podman` apps the health is read
    /// live from the engine (the project's containers and their health), not remembered from
    /// the deploy.
    pub async fn status(&self, facts: Option<proto::Facts>) -> proto::AgentStatus {
        let mut st = self.remembered_status(facts);
        let p = self.state.persisted();
        for app in &mut st.apps {
            let Some(base) = p.apps.get(&app.app).and_then(|a| a.base.clone()) else { continue };
            let rel = AppReleases::new(base);
            let Some(m) = rel.current().and_then(|c| rel.manifest(&c)) else { continue };
            if let Some(d) = m.docker_compose {
                app.health = match crate::engine::compose_containers(&d.project).await {
                    Ok(cs) => crate::engine::compose_health(&cs),
                    Err(e) => format!("unknown: {e}"),
                };
            } else if let Some(s) = m.swarm {
                app.health = match crate::engine::stack_state(&s.project).await {
                    Ok((services, tasks)) => crate::engine::stack_health(&services, &tasks),
                    Err(e) => format!("unknown: {e}"),
                };
            } else if let Some(p) = m.podman {
                let runner = self.runner.as_ref();
                app.health = match crate::drivers::podman::project_health(
                    runner,
                    &p.compose.project,
                    &p.services,
                    false,
                )
                .await
                {
                    Ok(h) => h,
                    Err(e) => format!("unknown: {e}"),
                };
            }
        }
        st
    }

    fn remembered_status(&self, facts: Option<proto::Facts>) -> proto::AgentStatus {
        let p = self.state.persisted();
        proto::AgentStatus {
            target: self.target.clone(),
            facts,
            last_desired_sequence: p.last_desired_sequence,
            apps: p
                .apps
                .iter()
                .map(|(name, a)| {
                    let rel = a.base.clone().map(AppReleases::new);
                    proto::AppStatus {
                        app: name.clone(),
                        current_release: rel.as_ref().and_then(|r| r.current()).unwrap_or_default(),
                        previous_release: a.previous.clone().unwrap_or_default(),
                        current_sequence: a.current_sequence,
                        current_version: a.current_version.clone(),
                        health: if a.health.is_empty() { "unknown".into() } else { a.health.clone() },
                        releases: rel.map(|r| r.list().into_iter().map(|x| x.name).collect()).unwrap_or_default(),
                        last_result: a.last_result.clone(),
                    }
                })
                .collect(),
        }
    }
}

/// Images carried by the `removed` releases and by none of the others (compared by image id):
/// what pruning may take from the engine without touching what a kept release needs.
fn images_only_in(manifests: &[(String, Manifest)], removed: &[String]) -> Vec<bundle::ImageRef> {
    let carried = |m: &Manifest| m.compose_specs().flat_map(|c| c.images.clone()).collect::<Vec<_>>();
    let kept: std::collections::BTreeSet<String> =
        manifests.iter().filter(|(n, _)| !removed.contains(n)).flat_map(|(_, m)| carried(m)).map(|i| i.id).collect();
    let mut out: Vec<bundle::ImageRef> = Vec::new();
    for img in manifests.iter().filter(|(n, _)| removed.contains(n)).flat_map(|(_, m)| carried(m)) {
        if !kept.contains(&img.id) && !out.iter().any(|o| o.id == img.id) {
            out.push(img);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dockfra_common::bundle::{DockerComposeSpec, ImageRef};
    use dockfra_common::config::Platform;

    fn with_images(ids: &[&str]) -> Manifest {
        let images = ids
            .iter()
            .map(|id| ImageRef { name: format!("img-{id}"), id: (*id).into(), sha256: "0".repeat(64), size: 1 })
            .collect();
        Manifest {
            docker_compose: Some(DockerComposeSpec {
                project: "p".into(),
                file: "f".into(),
                wait_timeout_secs: 1,
                images,
            }),
            ..crate::drivers::test_manifest(Platform::DockerCompose)
        }
    }

    #[test]
    fn pruning_takes_only_images_no_kept_release_carries() {
        let all = vec![
            ("1".to_string(), with_images(&["A", "shared"])),
            ("2".to_string(), with_images(&["B", "B"])),
            ("3".to_string(), with_images(&["C", "shared"])),
        ];
        let ids = |v: Vec<ImageRef>| v.into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(images_only_in(&all, &["1".into(), "2".into()])), ["A", "B"]);
        assert_eq!(ids(images_only_in(&all, &["3".into()])), ["C"]);
        assert!(images_only_in(&all, &[]).is_empty());
    }
}
