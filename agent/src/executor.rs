//! The deploy state machine on the agent (DESIGN §3.3, §3.6):
//! `Verified → Fetched → Materialized → PreDeployed → Activated → Applied → Healthy →
//! Reported → Pruned`, with rollback and failure as ends. The phase is journaled (fsynced)
//! before each step; on restart [`Executor::recover`] reads the journal and converges: a
//! release that passed its health check is kept and recorded, anything earlier is undone
//! (`current` swapped back, the half-made release removed) and the order runs whole when the
//! coordinator hands it out again.
//!
//! Every order ends in exactly one of: a final event (`succeeded`, `failed`, `refused`), or —
//! when the transfer was cut off — a non-final event with `retry` set, after which nothing
//! has changed but the blobs that did arrive, and the same order may come again.
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use dockfra_common::bundle::{self, Action, Manifest, Verified, Watermark};
use dockfra_common::proto;

use crate::blobs::{BlobError, BlobWriter};
use crate::drivers::{self, StepCtx};
use crate::health;
use crate::releases::AppReleases;
use crate::runner::Runner;
use crate::state::{AppState, DiskSnapshot, Journal, Outcome, Phase, StateDir, StateError};

/// Why fetching blobs stopped.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The connection failed: the order may be tried again, only the missing blobs travel.
    #[error("transfer interrupted: {0}")]
    Transport(String),
    /// A blob broke a rule (hash, size, order, not requested) or could not be stored.
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("{0}")]
    Other(String),
}

/// Where missing blobs come from: the coordinator (pull), the push stream, or nowhere (an
/// offline bundle whose blobs were staged beforehand).
#[tonic::async_trait]
pub trait BlobSource: Send {
    async fn fetch(&mut self, bundle_id: &str, writer: &mut BlobWriter, digests: Vec<String>)
        -> Result<(), FetchError>;
}

/// For offline bundles: every blob must already be in the store.
pub struct NoSource;

#[tonic::async_trait]
impl BlobSource for NoSource {
    async fn fetch(&mut self, _: &str, _: &mut BlobWriter, digests: Vec<String>) -> Result<(), FetchError> {
        Err(FetchError::Other(format!(
            "{} blob(s) missing and no source to fetch them from: {}",
            digests.len(),
            digests.join(", ")
        )))
    }
}

pub type Events = mpsc::UnboundedSender<proto::DeployEvent>;

/// What an operator allows orders to be (`max_order_age`, `max_order_lifetime` in the
/// agent's config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Refuse an order signed longer ago than this.
    pub max_order_age: Option<Duration>,
    /// Refuse an order signed to stay valid longer than this (an offline bundle's lifetime).
    pub max_order_lifetime: Option<Duration>,
}

/// An offline bundle (`bundle export`) lives 7 days by default and 30 at most; an agent takes
/// none valid for longer unless its operator says so.
pub const DEFAULT_MAX_ORDER_LIFETIME: Duration = Duration::from_secs(30 * 86400);

impl Default for Limits {
    fn default() -> Self {
        Self { max_order_age: None, max_order_lifetime: Some(DEFAULT_MAX_ORDER_LIFETIME) }
    }
}

/// Why an order was not taken.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Key(String),
}

pub struct Executor {
    pub state: StateDir,
    pub target: String,
    pub runner: Arc<dyn Runner>,
    pub limits: Limits,
    /// One deploy at a time within this process (the file lock covers other processes).
    gate: tokio::sync::Mutex<()>,
}

struct Emitter<'a> {
    tx: &'a Events,
    deployment_id: String,
    bytes: u64,
}

impl Emitter<'_> {
    fn event(&self, phase: &str, message: String) -> proto::DeployEvent {
        proto::DeployEvent {
            deployment_id: self.deployment_id.clone(),
            phase: phase.into(),
            message,
            bytes_received: self.bytes,
            unix_ms: dockfra_common::now_unix_ms(),
            ..Default::default()
        }
    }

    fn send(&self, phase: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(phase, "{message}");
        let _ = self.tx.send(self.event(phase, message));
    }

    fn finish(&self, result: &str, release: &str, message: impl Into<String>) -> proto::DeployEvent {
        let message = message.into();
        tracing::info!(result, release, "{message}");
        let phase = match result {
            "succeeded" => "Done",
            "refused" => "Refused",
            _ => "Failed",
        };
        let ev = proto::DeployEvent {
            r#final: true,
            result: result.into(),
            release: release.into(),
            ..self.event(phase, message)
        };
        let _ = self.tx.send(ev.clone());
        ev
    }

    /// Not final, and the last this process says about the deployment (another one ends it).
    fn progress(&self, phase: &str, message: impl Into<String>) -> proto::DeployEvent {
        let message = message.into();
        tracing::info!(phase, "{message}");
        let ev = self.event(phase, message);
        let _ = self.tx.send(ev.clone());
        ev
    }

    /// Not final: the transfer broke; the same order may come again.
    fn retry(&self, message: impl Into<String>) -> proto::DeployEvent {
        let message = message.into();
        tracing::warn!("{message}");
        let ev = proto::DeployEvent { retry: true, ..self.event("Interrupted", message) };
        let _ = self.tx.send(ev.clone());
        ev
    }
}

impl Executor {
    pub fn new(state: StateDir, target: String, runner: Arc<dyn Runner>, limits: Limits) -> Self {
        Self { state, target, runner, limits, gate: tokio::sync::Mutex::new(()) }
    }

    /// The trust floor: the max of `state.json`, `floor.json` and the release dirs (see
    /// crate::state). Unreadable state is an error, never a floor of 0.
    pub fn watermark(&self) -> Result<Watermark, StateError> {
        let p = self.state.persisted()?;
        self.state.journal()?;
        Ok(self.floor_of(&p))
    }

    /// The floor given the persisted state (which already holds `floor.json`'s order floor):
    /// raised by `floor.json`'s release floor and the release dirs.
    fn floor_of(&self, p: &crate::state::Persisted) -> Watermark {
        let releases = self.state.floor().map(|f| f.release_sequence).unwrap_or(0);
        let dirs = self.state.release_dir_floor();
        let current = p.apps.values().map(|a| a.current_sequence).max().unwrap_or(0);
        Watermark {
            last_desired_sequence: p.last_desired_sequence.max(dirs),
            current_release_sequence: current.max(releases).max(dirs),
        }
    }

    /// The newest release installed of each app this agent hosts: the max of `state.json`,
    /// `floor.json` and the app's release dirs. A floor from before agents kept one per app
    /// lends its single release floor to the apps `state.json` knows.
    fn release_floors(&self, p: &crate::state::Persisted) -> BTreeMap<String, u64> {
        let floor = self.state.floor().unwrap_or_default();
        let legacy = if floor.apps.is_empty() { floor.release_sequence } else { 0 };
        let mut out: BTreeMap<String, u64> = floor.apps.clone();
        for (app, a) in &p.apps {
            let seq = out.entry(app.clone()).or_default();
            *seq = (*seq).max(a.current_sequence).max(legacy);
        }
        for (app, dirs) in self.state.release_dir_floors() {
            let seq = out.entry(app).or_default();
            *seq = (*seq).max(dirs);
        }
        out
    }

    /// Verify an assignment against this agent's pinned key, target, floor and limits.
    pub fn verify(&self, a: &proto::Assignment) -> Result<Verified, Refusal> {
        // One read of the state for both floors (as `watermark` reads it).
        let p = self.state.persisted()?;
        self.state.journal()?;
        let mark = self.floor_of(&p);
        let floors = self.release_floors(&p);
        let key = self.state.signing_key().map_err(|e| Refusal::Key(format!("{e:#}")))?;
        let policy = bundle::Policy {
            me: &self.target,
            signing_key: &key,
            mark,
            release_floors: Some(&floors),
            now: dockfra_common::now_unix(),
            max_order_lifetime: self.limits.max_order_lifetime.map(|d| d.as_secs()),
            max_order_age: self.limits.max_order_age.map(|d| d.as_secs()),
        };
        Ok(bundle::verify_assignment(a, &policy)?)
    }

    /// Where an app's releases live: `<deploy_path>/<app>` or `<state>/apps/<app>`.
    pub fn app_base(&self, m: &Manifest) -> anyhow::Result<PathBuf> {
        match m.platform.deploy_path() {
            Some(p) if !p.starts_with('/') => {
                anyhow::bail!("config.deploy_path {p:?} must be an absolute path")
            }
            Some(p) => Ok(PathBuf::from(p).join(&m.app)),
            None => Ok(self.state.default_app_base(&m.app)),
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

    fn ctx<'a>(&'a self, m: &'a Manifest, rel: &AppReleases, name: &str, previous: Option<&str>) -> StepCtx<'a> {
        StepCtx {
            manifest: m,
            release_dir: rel.dir(name),
            current_link: rel.current_link(),
            env: self.env(m, rel, name, previous),
            runner: self.runner.as_ref(),
            blobs: self.state.blobs(),
        }
    }

    /// Carry out one assignment end to end. Ends with exactly one final event, or one
    /// non-final event with `retry` set (see the module doc); that event is also returned.
    pub async fn execute(
        &self,
        a: &proto::Assignment,
        source: &mut dyn BlobSource,
        events: &Events,
    ) -> proto::DeployEvent {
        let _gate = self.gate.lock().await;
        let deployment_id = serde_json::from_slice::<serde_json::Value>(
            a.desired.as_ref().map(|d| d.payload.as_slice()).unwrap_or_default(),
        )
        .ok()
        .and_then(|v| v["deployment_id"].as_str().map(|s| s.chars().take(128).collect()))
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
        if let Some(k) = &v.rotated_to {
            if let Err(e) = self.state.pin_signing_key(k) {
                return em.finish("failed", "", format!("cannot pin the rotated signing key: {e:#}"));
            }
            em.send("Verified", format!("signing key rotated to {}", dockfra_common::sign::fingerprint(k)));
        }
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
        let name = v.release_name();
        let base = match self.app_base(m).and_then(|b| self.state.register_base(&m.app, &b).map(|()| b)) {
            Ok(b) => b,
            Err(e) => return self.failed_early(v, em, format!("{e:#}")),
        };
        let rel = AppReleases::new(base.clone());
        let previous = rel.current();
        let mut journal = Journal {
            deployment_id: v.desired.deployment_id.clone(),
            desired_sequence: v.desired.sequence,
            action: v.desired.action.as_str().into(),
            app: m.app.clone(),
            base: base.clone(),
            release: name.clone(),
            previous: previous.clone(),
            phase: Phase::Verified,
        };
        let step = |j: &mut Journal, p: Phase| -> anyhow::Result<()> {
            j.phase = p;
            self.state.write_journal(j)?;
            dockfra_common::fault::hit(&format!("agent:{p:?}"));
            Ok(())
        };
        if let Err(e) = step(&mut journal, Phase::Verified) {
            return self.failed_early(v, em, format!("cannot write the journal: {e:#}"));
        }
        let what = if v.desired.action == Action::Rollback { "rollback to" } else { "release" };
        em.send(
            "Verified",
            format!("{what} {name} (version {}) verified: signature, target, sequence, paths", m.version),
        );

        // A kept release something wrote through since it was made (a rollback's target) is
        // made again from the store: its files are the blobs' links, and a changed one is
        // never started.
        if previous.as_deref() != Some(name.as_str()) && rel.is_complete(&name) {
            let changed = rel.changed_files(&name);
            if !changed.is_empty() {
                em.send(
                    "Verified",
                    format!(
                        "release {name} changed on disk since it was made ({}): making it again",
                        changed.join(", ")
                    ),
                );
                if let Err(e) = rel.remove(&name) {
                    return self.abandon(v, em, e.to_string());
                }
            }
        }
        // Fetch what is missing, and make the release. A stored blob found changed while
        // materializing is dropped; it is fetched again once.
        for attempt in 0.. {
            if !rel.is_complete(&name) {
                let wanted = m.digests();
                let missing = self.state.missing_blobs(&wanted);
                let sizes: BTreeMap<String, u64> =
                    m.blob_sizes().into_iter().filter(|(d, _)| missing.contains(d)).collect();
                if !missing.is_empty() {
                    let mut w = match BlobWriter::new(self.state.blobs(), sizes) {
                        Ok(w) => w,
                        Err(e) => return self.abandon(v, em, format!("{e}")),
                    };
                    let fetched = source.fetch(&v.bundle_id, &mut w, missing.clone()).await;
                    em.bytes += w.bytes;
                    let left = w.remaining();
                    // What arrived whole is kept (a cut transfer resumes from it), once durable.
                    let synced = w.finish();
                    drop(w);
                    if let Err(e) = synced {
                        return self.abandon(v, em, format!("storing blobs: {e}"));
                    }
                    match fetched {
                        Ok(()) if left == 0 => {}
                        Ok(()) => return self.abandon(v, em, format!("fetching blobs: {left} blob(s) never arrived")),
                        Err(FetchError::Transport(why)) => {
                            let _ = self.state.clear_journal();
                            return em.retry(format!(
                                "transfer interrupted ({why}): {} of {} missing blob(s) arrived; nothing else changed, \
                                 the order is taken again when it comes back",
                                missing.len() - left,
                                missing.len()
                            ));
                        }
                        Err(e) => return self.abandon(v, em, format!("fetching blobs: {e}")),
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
            if attempt == 0 {
                if let Err(e) = step(&mut journal, Phase::Fetched) {
                    return self.abandon(v, em, format!("cannot write the journal: {e:#}"));
                }
            }
            match rel.materialize(v, &self.state.blobs()) {
                Ok(_) => break,
                Err(e) if attempt == 0 && e.is_blob_corrupt() => {
                    em.send("Fetched", format!("{e}: fetching it again"));
                }
                Err(e) => return self.abandon(v, em, format!("{e}")),
            }
        }
        if let Err(e) = step(&mut journal, Phase::Materialized) {
            return self.abandon(v, em, format!("cannot write the journal: {e:#}"));
        }
        em.send("Materialized", format!("release dir {}", rel.dir(&name).display()));
        if m.requires.iter().any(|f| f == bundle::AGENT_UPGRADE) {
            return self.stage_upgrade(v, em, &rel, previous).await;
        }

        let driver = drivers::for_spec(&m.platform);
        let ctx = self.ctx(m, &rel, &name, previous.as_deref());
        if let Err(e) = driver.validate(&ctx).await {
            return self.abandon(v, em, e.to_string());
        }
        if let Err(e) = step(&mut journal, Phase::PreDeployed) {
            return self.abandon(v, em, format!("cannot write the journal: {e:#}"));
        }
        if let Err(e) = driver.pre_deploy(&ctx).await {
            return self.abandon(v, em, e.to_string());
        }
        em.send("PreDeployed", "pre-deploy step done");

        // From here on `current` may move: a failure must swap back.
        if let Err(e) = step(&mut journal, Phase::Activated) {
            return self.abandon(v, em, format!("cannot write the journal: {e:#}"));
        }
        if let Err(e) = rel.activate(&name) {
            return self.abandon(v, em, e.to_string());
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
        let message = format!("release {name} (version {}) is live and healthy", m.version);
        self.record_success(v, &rel, previous.as_deref(), &message, em.bytes);
        let _ = step(&mut journal, Phase::Reported);
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
        let gc = self.collect_garbage();
        if gc.blobs > 0 {
            em.send("Pruned", format!("removed {} blob(s) no kept release names ({} bytes)", gc.blobs, gc.bytes));
        }
        let _ = step(&mut journal, Phase::Pruned);
        let _ = self.state.clear_journal();
        em.finish("succeeded", &name, message)
    }

    /// An agent upgrade (crate::upgrade): check the binary is for this host, stage it on
    /// trial, use up the order's sequence, and restart into the trial. The result comes from
    /// the trial: the new agent reports success once it reaches the coordinator, the old one
    /// the failure.
    async fn stage_upgrade(
        &self,
        v: &Verified,
        em: &mut Emitter<'_>,
        rel: &AppReleases,
        previous: Option<String>,
    ) -> proto::DeployEvent {
        let m = &v.manifest;
        let name = v.release_name();
        let binary = rel.dir(&name).join(bundle::AGENT_FILE);
        if let Err(why) = crate::upgrade::check_binary(&binary) {
            let _ = rel.remove(&name);
            return self.abandon(v, em, format!("refused: {why}"));
        }
        let deadline = m.health.as_ref().map(|h| h.start_period).filter(|d| !d.is_zero());
        let deadline = deadline.unwrap_or(crate::upgrade::DEFAULT_DEADLINE);
        let trial = crate::upgrade::Trial {
            deployment_id: v.desired.deployment_id.clone(),
            desired_sequence: v.desired.sequence,
            base: rel.base().to_path_buf(),
            release: name.clone(),
            previous,
            manifest_sequence: m.sequence,
            version: m.version.clone(),
            binary,
            sha256: m.files[0].sha256.clone(),
            deadline_unix: dockfra_common::now_unix() + deadline.as_secs().max(1),
            attempts: 0,
        };
        if let Err(e) = crate::upgrade::stage(&self.state, &trial) {
            return self.abandon(v, em, format!("cannot stage the upgrade: {e:#}"));
        }
        // The order is taken: its sequence is used up whatever the trial says.
        let mut p = match self.state.persisted() {
            Ok(p) => p,
            Err(e) => return self.abandon(v, em, format!("{e}")),
        };
        p.last_desired_sequence = p.last_desired_sequence.max(v.desired.sequence);
        if let Err(e) = self.state.save_persisted(&p) {
            return self.abandon(v, em, format!("cannot save state: {e:#}"));
        }
        let _ = self.state.clear_journal();
        let message = format!(
            "restarting into dockfra-agent {} (release {name}); it has {}s to reach the coordinator, or this one comes back",
            m.version,
            deadline.as_secs()
        );
        crate::upgrade::request_restart();
        em.progress("Restarting", message)
    }

    /// Update the state for a final result (under the lock), remembering the outcome.
    fn settle(&self, v: &Verified, outcome: Outcome, update: impl FnOnce(&mut AppState)) {
        let mut p = match self.state.persisted() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("cannot record the result: {e}");
                return;
            }
        };
        p.last_desired_sequence = p.last_desired_sequence.max(v.desired.sequence);
        update(p.apps.entry(v.manifest.app.clone()).or_default());
        p.remember(outcome);
        if let Err(e) = self.state.save_persisted(&p) {
            tracing::error!("cannot save state: {e:#}");
        }
    }

    fn record_success(&self, v: &Verified, rel: &AppReleases, previous: Option<&str>, message: &str, bytes: u64) {
        let m = &v.manifest;
        let name = v.release_name();
        let outcome = Outcome {
            deployment_id: v.desired.deployment_id.clone(),
            result: "succeeded".into(),
            release: name.clone(),
            message: message.into(),
            phase: "Done".into(),
            bytes,
            unix_ms: dockfra_common::now_unix_ms(),
        };
        self.settle(v, outcome, |app| {
            *app = AppState {
                previous: previous.filter(|prev| *prev != name).map(String::from).or(app.previous.clone()),
                current: Some(name.clone()),
                current_sequence: m.sequence,
                current_version: m.version.clone(),
                health: "healthy".into(),
                last_result: "succeeded".into(),
                base: Some(rel.base.clone()),
            }
        });
    }

    /// The order was processed and failed before `current` moved: nothing to undo. The
    /// floor advances so the order is not taken again.
    fn abandon(&self, v: &Verified, em: &Emitter<'_>, reason: String) -> proto::DeployEvent {
        let _ = self.state.clear_journal();
        self.failed_early(v, em, reason)
    }

    fn failed_early(&self, v: &Verified, em: &Emitter<'_>, reason: String) -> proto::DeployEvent {
        let current = self
            .state
            .persisted()
            .ok()
            .and_then(|p| p.apps.get(&v.manifest.app).and_then(|a| a.current.clone()))
            .unwrap_or_default();
        let message = format!("{reason}; current release unchanged");
        let outcome = self.outcome(v, "failed", &current, &message, em.bytes);
        self.settle(v, outcome, |app| app.last_result = "failed".into());
        em.finish("failed", &current, message)
    }

    fn outcome(&self, v: &Verified, result: &str, release: &str, message: &str, bytes: u64) -> Outcome {
        Outcome {
            deployment_id: v.desired.deployment_id.clone(),
            result: result.into(),
            release: release.into(),
            message: message.into(),
            phase: "Failed".into(),
            bytes,
            unix_ms: dockfra_common::now_unix_ms(),
        }
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
            let ctx = self.ctx(&v.manifest, rel, name, None);
            if let Err(e) = driver.teardown(&ctx).await {
                em.send("RollingBack", format!("teardown of {name} failed: {e}"));
            }
        }
        let back = self.restore(rel, journal.previous.as_deref()).await;
        let _ = rel.quarantine(name);
        let prev = journal.previous.clone().unwrap_or_default();
        let msg = match (&journal.previous, back) {
            (Some(p), Ok(())) => format!("{reason}; rolled back to {p}; release {name} quarantined"),
            (Some(p), Err(e)) => format!("{reason}; going back to {p} failed too: {e}"),
            (None, _) => format!("{reason}; no previous release to go back to; release {name} quarantined"),
        };
        let outcome = self.outcome(v, "failed", &prev, &msg, em.bytes);
        let first = journal.previous.is_none();
        self.settle(v, outcome, |app| {
            app.last_result = "failed".into();
            if first {
                app.current = None;
                app.health = "unhealthy".into();
            }
        });
        let _ = self.state.clear_journal();
        em.finish("failed", &prev, msg)
    }

    /// Point `current` back at `previous` (or remove it) and re-run its service step.
    async fn restore(&self, rel: &AppReleases, previous: Option<&str>) -> Result<(), String> {
        let Some(prev) = previous else {
            return rel.deactivate().map_err(|e| e.to_string());
        };
        rel.activate(prev).map_err(|e| e.to_string())?;
        let Some(pm) = rel.manifest(prev) else { return Ok(()) };
        let ctx = self.ctx(&pm, rel, prev, None);
        drivers::for_spec(&pm.platform).apply(&ctx).await.map_err(|e| e.to_string())
    }

    /// Remove blobs no complete release of any app names, and record disk use.
    pub fn collect_garbage(&self) -> crate::blobs::Collected {
        let bases = self.state.app_bases();
        let mut keep = BTreeSet::new();
        let mut releases_bytes = 0;
        for base in &bases {
            let rel = AppReleases::new(base.clone());
            for r in rel.list() {
                match rel.manifest(&r.name) {
                    Some(m) => keep.extend(m.digests()),
                    // A release whose manifest this build cannot read: keep everything.
                    None => return Default::default(),
                }
            }
            releases_bytes += rel.bytes();
        }
        if let Ok(Some(j)) = self.state.journal() {
            if let Some(m) = AppReleases::new(j.base).manifest(&j.release) {
                keep.extend(m.digests());
            }
        }
        let got = crate::blobs::collect(&self.state.blobs(), &keep, Duration::from_secs(3600));
        let (blobs, blobs_bytes) = crate::blobs::usage(&self.state.blobs());
        if let Ok(mut p) = self.state.persisted() {
            p.disk = DiskSnapshot { blobs_bytes, blobs, releases_bytes };
            let _ = self.state.save_persisted(&p);
        }
        got
    }

    /// After a crash: read the journal and converge (see the module doc). Returns the outcome
    /// to tell the coordinator: final when the release was kept, else a progress note.
    pub async fn recover(&self) -> anyhow::Result<Option<Outcome>> {
        let Some(j) = self.state.journal()? else { return Ok(None) };
        let _lock = self.state.lock()?;
        let rel = AppReleases::new(j.base.clone());
        let mut note = format!("recovered interrupted deploy of {} (phase {:?})", j.release, j.phase);
        let mut result = String::new();
        if j.phase >= Phase::Healthy && rel.is_complete(&j.release) {
            note.push_str(": it had passed its health check; kept");
            let pm = rel.manifest(&j.release);
            let mut p = self.state.persisted()?;
            p.last_desired_sequence = p.last_desired_sequence.max(j.desired_sequence);
            let app = p.apps.entry(j.app.clone()).or_default();
            let prev = j.previous.clone().filter(|x| *x != j.release);
            *app = AppState {
                previous: prev.or(app.previous.clone()),
                current: Some(j.release.clone()),
                current_sequence: crate::releases::sequence_of(&j.release).unwrap_or(0),
                current_version: pm.map(|m| m.version).unwrap_or_default(),
                health: "healthy".into(),
                last_result: "succeeded".into(),
                base: Some(j.base.clone()),
            };
            result = "succeeded".into();
            p.remember(Outcome {
                deployment_id: j.deployment_id.clone(),
                result: result.clone(),
                release: j.release.clone(),
                message: note.clone(),
                phase: "Done".into(),
                bytes: 0,
                unix_ms: dockfra_common::now_unix_ms(),
            });
            self.state.save_persisted(&p)?;
        } else {
            if j.phase >= Phase::Activated && rel.current().as_deref() == Some(j.release.as_str()) {
                match self.restore(&rel, j.previous.as_deref()).await {
                    Ok(()) => {
                        note.push_str(&format!(": swapped back to {}", j.previous.as_deref().unwrap_or("nothing")))
                    }
                    Err(e) => note.push_str(&format!(": swap back failed: {e}")),
                }
            } else {
                note.push_str(&format!(": current untouched ({})", rel.current().unwrap_or_else(|| "none".into())));
            }
            // The half-made release goes: the order runs whole when it comes again (its
            // sequence must not stay on disk as a floor above the order).
            if j.action == "deploy" && j.previous.as_deref() != Some(j.release.as_str()) {
                if let Err(e) = rel.remove(&j.release) {
                    note.push_str(&format!("; could not remove {}: {e}", j.release));
                }
            }
        }
        rel.clean_temp();
        self.state.clear_journal()?;
        tracing::warn!("{note}");
        Ok(Some(Outcome {
            deployment_id: j.deployment_id,
            result,
            release: j.release,
            message: note,
            phase: "Recovered".into(),
            bytes: 0,
            unix_ms: dockfra_common::now_unix_ms(),
        }))
    }

    /// Local emergency rollback (`dockfra-agent rollback APP`): swap to the previous (or a
    /// named) release, re-run its service step and health check. Not signed; needs root
    /// on the host, which is the trust it stands on.
    pub async fn local_rollback(&self, app: &str, to: Option<&str>) -> anyhow::Result<String> {
        let _gate = self.gate.lock().await;
        let _lock = self.state.lock()?;
        let mut p = self.state.persisted()?;
        let st = p.apps.get(app).cloned().with_context(|| format!("no app {app:?} has been deployed here"))?;
        let base = st.base.clone().unwrap_or_else(|| self.state.default_app_base(app));
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
        let current = rel.current();
        let switched = async {
            self.restore(&rel, Some(&target)).await?;
            match &pm.health {
                Some(h) => health::run(h, self.runner.as_ref(), &rel.dir(&target)).await,
                None => Ok(()),
            }
        }
        .await;
        if let Err(e) = switched {
            // Undo: go back to what ran before this command.
            let back = self.restore(&rel, current.as_deref()).await;
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

    /// This agent's view of its apps, its recent results, disk use, and — when it cannot read
    /// its own state — why (it refuses orders then). Where the platform can tell, health is
    /// read live from the engine (the driver's `health`), not remembered from the deploy.
    pub async fn status(&self, facts: Option<proto::Facts>) -> proto::AgentStatus {
        let mut st = self.remembered_status(facts);
        let Ok(p) = self.state.persisted() else { return st };
        for app in &mut st.apps {
            let Some(base) = p.apps.get(&app.app).and_then(|a| a.base.clone()) else { continue };
            let rel = AppReleases::new(base);
            let Some(cur) = rel.current() else { continue };
            let Some(m) = rel.manifest(&cur) else { continue };
            let ctx = self.ctx(&m, &rel, &cur, None);
            if let Some(h) = drivers::for_spec(&m.platform).health(&ctx).await {
                app.health = h;
            }
        }
        st
    }

    fn remembered_status(&self, facts: Option<proto::Facts>) -> proto::AgentStatus {
        let facts_digest = facts.as_ref().map(dockfra_common::facts_digest).unwrap_or_default();
        let (free, total) = self.state.free_space().unwrap_or((0, 0));
        let p = match self.state.persisted() {
            Ok(p) => p,
            Err(e) => {
                return proto::AgentStatus {
                    target: self.target.clone(),
                    facts,
                    facts_digest,
                    state_error: e.to_string(),
                    disk: Some(proto::DiskUsage { free_bytes: free, total_bytes: total, ..Default::default() }),
                    host: Some(crate::facts::host_usage()),
                    ..Default::default()
                }
            }
        };
        let (in_flight, state_error) = match self.state.journal() {
            // An upgrade on trial is in flight until the new agent or the old one ends it.
            Ok(j) => (
                j.map(|j| j.deployment_id).or_else(|| crate::upgrade::pending(&self.state)).unwrap_or_default(),
                String::new(),
            ),
            Err(e) => (String::new(), e.to_string()),
        };
        proto::AgentStatus {
            target: self.target.clone(),
            facts,
            facts_digest,
            last_desired_sequence: self.floor_of(&p).last_desired_sequence,
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
            recent: p.recent.iter().map(Outcome::proto).collect(),
            in_flight,
            disk: Some(proto::DiskUsage {
                blobs_bytes: p.disk.blobs_bytes,
                blobs: p.disk.blobs,
                releases_bytes: p.disk.releases_bytes,
                free_bytes: free,
                total_bytes: total,
            }),
            state_error,
            host: Some(crate::facts::host_usage()),
        }
    }
}

/// Images carried by the `removed` releases and by none of the others (compared by image id):
/// what pruning may take from the engine without touching what a kept release needs.
fn images_only_in(manifests: &[(String, Manifest)], removed: &[String]) -> Vec<bundle::ImageRef> {
    let carried = |m: &Manifest| m.platform.compose().map(|c| c.images.clone()).unwrap_or_default();
    let kept: BTreeSet<String> =
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
    use dockfra_common::bundle::{DockerComposeSpec, ImageRef, PlatformSpec};
    use dockfra_common::config::Platform;

    fn with_images(ids: &[&str]) -> Manifest {
        let images = ids
            .iter()
            .map(|id| ImageRef { name: format!("img-{id}"), id: (*id).into(), sha256: "0".repeat(64), size: 1 })
            .collect();
        Manifest {
            platform: PlatformSpec::DockerCompose(DockerComposeSpec {
                project: "p".into(),
                file: "f".into(),
                wait_timeout_secs: 1,
                images,
                slots: None,
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
