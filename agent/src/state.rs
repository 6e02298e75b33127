//! The agent's state dir: identity (key, certificate, CA, pinned signing key), the persisted
//! trust floor and per-app results, the fsynced journal of the deploy in flight, the outbox of
//! results the coordinator has not acknowledged, and the lock that serializes deploys. Every
//! state file is written atomically (temp file, fsync, rename).
//!
//! ```text
//! <state>/identity/{key.pem,cert.pem,ca.pem,signing.pub,signing.history,agent.json}
//! <state>/state.json      the floor + per-app current/previous/last result + recent results
//! <state>/floor.json      the second, independent copy of the floor (written first)
//! <state>/journal.json    the deploy in flight (absent when idle)
//! <state>/outbox.json     final results not yet acknowledged by the coordinator
//! <state>/blobs/sha256/   verified blobs (see crate::blobs)
//! <state>/apps/<app>/     releases of apps without a deploy_path
//! <state>/bases/<app>     symlink to where an app's releases live (written once per app)
//! <state>/tmp/            staging of offline bundles (removed after use)
//! <state>/agent.lock      held while a deploy, apply or local rollback runs
//! <state>/agent.pid       the running agent (for `poll-now`)
//! ```
//!
//! The trust floor (the last order sequence applied, the newest release sequence installed)
//! never goes down: it is the max of `state.json`, `floor.json` and the sequences the release
//! dirs carry in their names. A `state.json` that exists but cannot be read, or is gone while
//! `floor.json` remains, is an error that stops every order until an operator runs
//! `dockfra-agent state repair` — never a silent reset to 0, which would let an older, still
//! valid signed bundle install over a newer release.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use dockfra_common::proto;

/// Written at enrollment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    pub target: String,
    pub coordinator: String,
    pub coordinator_name: String,
    pub mode: String,
    pub listen_port: u16,
    pub poll_interval_ms: u64,
    /// When the current certificate was issued (for renewal at two thirds of its life).
    pub cert_issued_unix: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppState {
    pub current: Option<String>,
    pub previous: Option<String>,
    pub current_sequence: u64,
    pub current_version: String,
    pub health: String,
    pub last_result: String,
    /// Where this app's releases live.
    pub base: Option<PathBuf>,
}

/// The final result of one deployment (the agent remembers its last [`RECENT`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub deployment_id: String,
    pub result: String,
    pub release: String,
    pub message: String,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub bytes: u64,
    pub unix_ms: u64,
}

impl Outcome {
    pub fn from_event(ev: &proto::DeployEvent) -> Self {
        Self {
            deployment_id: ev.deployment_id.clone(),
            result: ev.result.clone(),
            release: ev.release.clone(),
            message: ev.message.clone(),
            phase: ev.phase.clone(),
            bytes: ev.bytes_received,
            unix_ms: ev.unix_ms,
        }
    }
    pub fn event(&self) -> proto::DeployEvent {
        proto::DeployEvent {
            deployment_id: self.deployment_id.clone(),
            phase: self.phase.clone(),
            message: self.message.clone(),
            r#final: !self.result.is_empty(),
            result: self.result.clone(),
            release: self.release.clone(),
            bytes_received: self.bytes,
            unix_ms: self.unix_ms,
            retry: false,
            target: String::new(),
        }
    }
    pub fn proto(&self) -> proto::DeployResult {
        proto::DeployResult {
            deployment_id: self.deployment_id.clone(),
            result: self.result.clone(),
            release: self.release.clone(),
            message: self.message.clone(),
            unix_ms: self.unix_ms,
        }
    }
}

/// How many final results `state.json` keeps.
pub const RECENT: usize = 20;

/// Disk use as of the last deploy or GC (walking release dirs on every status would wear a
/// Pi's SD card; free space is read live).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskSnapshot {
    pub blobs_bytes: u64,
    pub blobs: u32,
    pub releases_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    pub last_desired_sequence: u64,
    pub apps: BTreeMap<String, AppState>,
    #[serde(default)]
    pub recent: Vec<Outcome>,
    #[serde(default)]
    pub disk: DiskSnapshot,
}

impl Persisted {
    /// Remember a final result (newest last, bounded).
    pub fn remember(&mut self, o: Outcome) {
        push_bounded(&mut self.recent, o);
    }
}

/// Put `o` last in `list` (replacing an older entry of the same deployment), keeping the
/// newest [`RECENT`].
fn push_bounded(list: &mut Vec<Outcome>, o: Outcome) {
    list.retain(|r| r.deployment_id != o.deployment_id);
    list.push(o);
    let excess = list.len().saturating_sub(RECENT);
    list.drain(..excess);
}

/// `floor.json`: the second copy of the trust floor, and where the apps' releases live (so
/// the release dirs can be found when `state.json` is lost).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Floor {
    pub last_desired_sequence: u64,
    pub release_sequence: u64,
    #[serde(default)]
    pub bases: BTreeSet<PathBuf>,
    /// The newest release installed per app (an agent may host several apps; each one's
    /// deploys must bring a newer release than its own). Empty in floors written before
    /// agents kept it: then `release_sequence` holds for the apps `state.json` knows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub apps: BTreeMap<String, u64>,
}

/// The deploy in flight. `phase` is written (fsynced) before each step is taken.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Journal {
    pub deployment_id: String,
    pub desired_sequence: u64,
    pub action: String,
    pub app: String,
    pub base: PathBuf,
    pub release: String,
    pub previous: Option<String>,
    pub phase: Phase,
}

/// The phases of one deploy, in order (DESIGN §3.6).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Verified,
    Fetched,
    Materialized,
    PreDeployed,
    Activated,
    Applied,
    Healthy,
    Reported,
    Pruned,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Verified,
        Phase::Fetched,
        Phase::Materialized,
        Phase::PreDeployed,
        Phase::Activated,
        Phase::Applied,
        Phase::Healthy,
        Phase::Reported,
        Phase::Pruned,
    ];
}

/// Why the agent cannot trust its own state: it refuses every order until repaired.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    #[error(
        "{path} cannot be read ({reason}). This agent refuses every order until it is repaired: a lost state \
         file would lower its replay floor. Recover with `dockfra-agent state repair` (with the agent stopped): it \
         rebuilds the file from floor.json and the release dirs and never lowers the floor"
    )]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "{path} is missing, but {floor} says this agent has applied order {seq}. It refuses every order until it \
         is repaired: run `dockfra-agent state repair` (with the agent stopped)"
    )]
    Missing { path: PathBuf, floor: PathBuf, seq: u64 },
}

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

fn unreadable(path: &Path, reason: impl std::fmt::Display) -> StateError {
    StateError::Unreadable { path: path.to_path_buf(), reason: reason.to_string() }
}

impl StateDir {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }
    pub fn identity(&self, name: &str) -> PathBuf {
        self.root.join("identity").join(name)
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.root.join("agent.pid")
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn floor_file(&self) -> PathBuf {
        self.root.join("floor.json")
    }
    pub fn journal_file(&self) -> PathBuf {
        self.root.join("journal.json")
    }
    pub fn outbox_file(&self) -> PathBuf {
        self.root.join("outbox.json")
    }
    /// Where the releases of `app` live when its manifest names no deploy_path.
    pub fn default_app_base(&self, app: &str) -> PathBuf {
        self.root.join("apps").join(app)
    }

    pub fn is_enrolled(&self) -> bool {
        self.identity("agent.json").is_file()
    }

    pub fn config(&self) -> Result<AgentConfig> {
        let p = self.identity("agent.json");
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("{} not found: enroll first (`dockfra-agent enroll`)", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", p.display()))
    }

    pub fn save_config(&self, c: &AgentConfig) -> Result<()> {
        write(&self.identity("agent.json"), &serde_json::to_vec_pretty(c)?, 0o644)
    }

    pub fn read_identity(&self, name: &str) -> Result<String> {
        let p = self.identity(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    }

    /// The pinned bundle-signing key (raw Ed25519).
    pub fn signing_key(&self) -> Result<Vec<u8>> {
        let p = self.identity("signing.pub");
        let k = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        anyhow::ensure!(k.len() == 32, "{} is not a raw Ed25519 public key ({} bytes)", p.display(), k.len());
        Ok(k)
    }

    /// Every signing key this agent has trusted, oldest first (the pinned one last): what
    /// re-verifying an older release takes.
    pub fn signing_keys(&self) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = std::fs::read_to_string(self.identity("signing.history"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| hex::decode(l.trim()).ok().filter(|k| k.len() == 32))
            .collect();
        keys.extend(self.signing_key().ok());
        keys
    }

    /// Pin a new signing key (a verified rotation): the old one goes to the history first.
    pub fn pin_signing_key(&self, new: &[u8]) -> Result<()> {
        let old = self.signing_key()?;
        let mut history = std::fs::read_to_string(self.identity("signing.history")).unwrap_or_default();
        history.push_str(&hex::encode(&old));
        history.push('\n');
        write(&self.identity("signing.history"), history.as_bytes(), 0o644)?;
        write(&self.identity("signing.pub"), new, 0o644)
    }

    /// The persisted state, or why it cannot be trusted (see the module doc).
    pub fn persisted(&self) -> Result<Persisted, StateError> {
        let path = self.state_file();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut p: Persisted = serde_json::from_slice(&bytes).map_err(|e| {
                    let why = if bytes.is_empty() { "it is empty".to_string() } else { format!("not valid JSON: {e}") };
                    unreadable(&path, why)
                })?;
                let floor = self.floor().unwrap_or_default();
                p.last_desired_sequence = p.last_desired_sequence.max(floor.last_desired_sequence);
                Ok(p)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.floor_file().exists() {
                    let seq = self.floor().map(|f| f.last_desired_sequence).unwrap_or(0);
                    return Err(StateError::Missing { path, floor: self.floor_file(), seq });
                }
                Ok(Persisted::default())
            }
            Err(e) => Err(unreadable(&path, e)),
        }
    }

    /// `floor.json`, if it can be read.
    pub fn floor(&self) -> Result<Floor, StateError> {
        let path = self.floor_file();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| unreadable(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Floor::default()),
            Err(e) => Err(unreadable(&path, e)),
        }
    }

    /// Save the state. The floor only rises: `floor.json` is written first (fsynced) with the
    /// max of what it held and what `p` says, then `state.json`.
    pub fn save_persisted(&self, p: &Persisted) -> Result<()> {
        let old = self.floor().unwrap_or_default();
        let mut floor = Floor {
            last_desired_sequence: old.last_desired_sequence.max(p.last_desired_sequence),
            release_sequence: old.release_sequence.max(p.apps.values().map(|a| a.current_sequence).max().unwrap_or(0)),
            bases: old.bases.clone(),
            apps: old.apps.clone(),
        };
        floor.bases.extend(p.apps.values().filter_map(|a| a.base.clone()));
        for (app, a) in &p.apps {
            let seq = floor.apps.entry(app.clone()).or_default();
            *seq = (*seq).max(a.current_sequence);
        }
        if floor != old {
            write(&self.floor_file(), &serde_json::to_vec_pretty(&floor)?, 0o644)?;
        }
        let mut p = p.clone();
        p.last_desired_sequence = floor.last_desired_sequence;
        write(&self.state_file(), &serde_json::to_vec_pretty(&p)?, 0o644)
    }

    /// Remember where an app's releases live, apart from the state files: a symlink under
    /// `bases/`, made once (not rewritten at every deploy as the state files are), so that
    /// the release dirs can be found even when both copies of the floor are lost.
    pub fn register_base(&self, app: &str, base: &Path) -> Result<()> {
        let link = self.root.join("bases").join(app);
        if std::fs::read_link(&link).ok().as_deref() == Some(base) {
            return Ok(());
        }
        std::fs::create_dir_all(self.root.join("bases"))?;
        let tmp = self.root.join("bases").join(format!(".{app}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(base, &tmp)?;
        std::fs::rename(&tmp, &link)?;
        dockfra_common::fsync_dir(&self.root.join("bases"))?;
        Ok(())
    }

    /// Where every app's releases live, as far as any record knows: `bases/`, the default
    /// `apps/` dir, `floor.json` and `state.json`.
    pub fn app_bases(&self) -> BTreeSet<PathBuf> {
        let mut bases = self.floor().map(|f| f.bases).unwrap_or_default();
        if let Ok(p) = self.persisted() {
            bases.extend(p.apps.values().filter_map(|a| a.base.clone()));
        }
        for e in std::fs::read_dir(self.root.join("apps")).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                bases.insert(e.path());
            }
        }
        for e in std::fs::read_dir(self.root.join("bases")).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Ok(to) = std::fs::read_link(e.path()) {
                bases.insert(to);
            }
        }
        bases
    }

    /// The highest sequence any release dir of any app carries (kept or quarantined): the
    /// floor's independent source on disk.
    pub fn release_dir_floor(&self) -> u64 {
        self.release_dir_floors().into_values().max().unwrap_or(0)
    }

    /// The same, for one app's release dirs.
    pub fn release_dir_floor_of(&self, app: &str) -> u64 {
        self.release_dir_floors().get(app).copied().unwrap_or(0)
    }

    /// Per app (an app's base dir is named after it), the highest sequence its release dirs
    /// carry, kept or quarantined; every app base known appears, with 0 when it has none.
    pub fn release_dir_floors(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for base in self.app_bases() {
            let Some(app) = base.file_name().and_then(|n| n.to_str()) else { continue };
            let max = out.entry(app.to_string()).or_insert(0u64);
            for sub in ["releases", "quarantine"] {
                for e in std::fs::read_dir(base.join(sub)).into_iter().flatten().flatten() {
                    if let Some(seq) = e.file_name().to_str().and_then(crate::releases::sequence_of) {
                        *max = (*max).max(seq);
                    }
                }
            }
        }
        out
    }

    /// The deploy in flight, if any. An unreadable journal is an error like an unreadable
    /// state file: what was half done is unknown.
    pub fn journal(&self) -> Result<Option<Journal>, StateError> {
        let path = self.journal_file();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| unreadable(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unreadable(&path, e)),
        }
    }

    pub fn write_journal(&self, j: &Journal) -> Result<()> {
        write(&self.journal_file(), &serde_json::to_vec(j)?, 0o644)
    }

    pub fn clear_journal(&self) -> Result<()> {
        remove_durably(&self.journal_file())
    }

    /// Final results the coordinator has not acknowledged yet, oldest first.
    pub fn outbox(&self) -> Vec<Outcome> {
        std::fs::read(self.outbox_file()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Add a final result to the outbox (fsynced before anyone is told).
    pub fn push_outbox(&self, o: Outcome) -> Result<()> {
        let mut all = self.outbox();
        push_bounded(&mut all, o);
        write(&self.outbox_file(), &serde_json::to_vec(&all)?, 0o644)
    }

    /// The coordinator acknowledged these deployments' results.
    pub fn ack_outbox(&self, ids: &[String]) -> Result<()> {
        let mut all = self.outbox();
        all.retain(|x| !ids.contains(&x.deployment_id));
        if all.is_empty() {
            remove_durably(&self.outbox_file())
        } else {
            write(&self.outbox_file(), &serde_json::to_vec(&all)?, 0o644)
        }
    }

    /// Take the exclusive deploy lock (held until the returned file is dropped).
    pub fn lock(&self) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.root)?;
        let p = self.root.join("agent.lock");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p)?;
        f.lock().with_context(|| format!("cannot lock {}", p.display()))?;
        Ok(f)
    }

    /// Digests of `wanted` the local store lacks.
    pub fn missing_blobs(&self, wanted: &[String]) -> Vec<String> {
        wanted.iter().filter(|d| !self.blobs().join(d.as_str()).is_file()).cloned().collect()
    }

    /// Free and total bytes of the filesystem holding the state dir.
    pub fn free_space(&self) -> Option<(u64, u64)> {
        dockfra_common::free_space(&self.root)
    }
}

fn remove_durably(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(dockfra_common::fsync_dir(path.parent().unwrap_or(Path::new(".")))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Atomic write, creating the parent dir.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    dockfra_common::write_atomic(path, bytes, mode).with_context(|| format!("cannot write {}", path.display()))
}

/// `dockfra-agent state repair`: rebuild `state.json` from `floor.json` and the release dirs
/// after it was lost or corrupted. The floor never goes down: it is the max of every source
/// still readable. Unreadable files are moved aside (`*.corrupt-<unix>`), not deleted.
pub fn repair(state: &StateDir) -> Result<Vec<String>> {
    let _lock = state.lock()?;
    let mut notes = Vec::new();
    let stamp = dockfra_common::now_unix();
    let old = state.persisted();
    let floor = match state.floor() {
        Ok(f) => f,
        Err(e) => {
            let aside = state.floor_file().with_extension(format!("json.corrupt-{stamp}"));
            std::fs::rename(state.floor_file(), &aside)?;
            notes.push(format!("{e}; moved aside to {}", aside.display()));
            Floor::default()
        }
    };
    let mut p = match old {
        Ok(p) => {
            notes.push(format!("{} was readable; merged with the other sources", state.state_file().display()));
            p
        }
        Err(StateError::Unreadable { path, reason }) => {
            let aside = path.with_extension(format!("json.corrupt-{stamp}"));
            if path.exists() {
                std::fs::rename(&path, &aside)?;
            }
            notes.push(format!("{} was unreadable ({reason}); moved aside to {}", path.display(), aside.display()));
            Persisted::default()
        }
        Err(StateError::Missing { path, .. }) => {
            notes.push(format!("{} was missing", path.display()));
            Persisted::default()
        }
    };
    if let Err(e) = state.journal() {
        let aside = state.journal_file().with_extension(format!("json.corrupt-{stamp}"));
        std::fs::rename(state.journal_file(), &aside)?;
        notes.push(format!("{e}; moved aside to {} (the deploy it described is not resumed)", aside.display()));
    }
    let dirs = state.release_dir_floor();
    let floor_seq = floor.last_desired_sequence.max(floor.release_sequence).max(dirs);
    p.last_desired_sequence = p.last_desired_sequence.max(floor_seq);
    for base in state.app_bases() {
        let Some(app) = base.file_name().and_then(|n| n.to_str()).map(String::from) else { continue };
        let rel = crate::releases::AppReleases::new(base.clone());
        let Some(cur) = rel.current() else { continue };
        let m = rel.manifest(&cur);
        let entry = p.apps.entry(app.clone()).or_default();
        entry.base = Some(base.clone());
        entry.current = Some(cur.clone());
        entry.current_sequence = crate::releases::sequence_of(&cur).unwrap_or(0);
        entry.current_version = m.map(|m| m.version).unwrap_or_default();
        if entry.previous.is_none() {
            entry.previous = rel.list().into_iter().rev().map(|r| r.name).find(|n| *n != cur);
        }
        if entry.health.is_empty() {
            entry.health = "unknown".into();
        }
        notes.push(format!("app {app}: current {cur}"));
    }
    state.save_persisted(&p)?;
    notes.push(format!("floor: order sequence {} (release dirs reach {dirs})", p.last_desired_sequence));
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> StateDir {
        let d = std::env::temp_dir().join(format!("dkf-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        StateDir::new(&d)
    }

    /// Regression for issue #8 hole 1: an emptied or corrupt state.json silently reset the
    /// floor to 0.
    #[test]
    fn an_unreadable_or_lost_state_file_is_an_error_and_the_floor_survives() {
        let s = tmp("floor");
        assert_eq!(s.persisted().unwrap().last_desired_sequence, 0, "a fresh agent starts at 0");
        let p = Persisted { last_desired_sequence: 7, ..Default::default() };
        s.save_persisted(&p).unwrap();
        assert_eq!(s.floor().unwrap().last_desired_sequence, 7);
        std::fs::write(s.state_file(), b"").unwrap();
        let e = s.persisted().unwrap_err();
        assert!(e.to_string().contains("empty") && e.to_string().contains("state repair"), "{e}");
        std::fs::write(s.state_file(), b"{\"last_desired_seq").unwrap();
        assert!(matches!(s.persisted(), Err(StateError::Unreadable { .. })));
        std::fs::remove_file(s.state_file()).unwrap();
        assert!(matches!(s.persisted(), Err(StateError::Missing { seq: 7, .. })));
        // A state.json written back with a lower floor (an old backup) does not lower it.
        std::fs::write(s.state_file(), br#"{"last_desired_sequence": 2, "apps": {}}"#).unwrap();
        assert_eq!(s.persisted().unwrap().last_desired_sequence, 7);
        // Nor does saving it.
        s.save_persisted(&Persisted { last_desired_sequence: 3, ..Default::default() }).unwrap();
        assert_eq!(s.persisted().unwrap().last_desired_sequence, 7);
        // Repair rebuilds from the floor and the release dirs.
        std::fs::write(s.state_file(), b"garbage").unwrap();
        let rel = s.root.join("apps/web/releases/12-abcdefabcdef");
        std::fs::create_dir_all(&rel).unwrap();
        let notes = repair(&s).unwrap();
        assert!(notes.iter().any(|n| n.contains("moved aside")), "{notes:?}");
        assert_eq!(s.persisted().unwrap().last_desired_sequence, 12, "the release dirs raise the floor");
        std::fs::remove_dir_all(&s.root).unwrap();
    }

    #[test]
    fn the_release_floor_is_kept_per_app_and_never_goes_down() {
        let s = tmp("per-app");
        let app = |seq: u64| AppState { current_sequence: seq, ..Default::default() };
        let mut p = Persisted::default();
        p.apps.insert("web".into(), app(9));
        p.apps.insert("shop".into(), app(4));
        s.save_persisted(&p).unwrap();
        let f = s.floor().unwrap();
        assert_eq!((f.apps["web"], f.apps["shop"], f.release_sequence), (9, 4, 9));
        // A state written back lower does not lower an app's floor.
        p.apps.insert("web".into(), app(2));
        s.save_persisted(&p).unwrap();
        assert_eq!(s.floor().unwrap().apps["web"], 9);
        // Release dirs count for their own app only.
        std::fs::create_dir_all(s.root.join("apps/shop/releases/6-abcdefabcdef")).unwrap();
        std::fs::create_dir_all(s.root.join("apps/web/quarantine/11-abcdefabcdef")).unwrap();
        assert_eq!((s.release_dir_floor_of("shop"), s.release_dir_floor_of("web")), (6, 11));
        assert_eq!(s.release_dir_floor_of("other"), 0);
        assert_eq!(s.release_dir_floor(), 11);
        std::fs::remove_dir_all(&s.root).unwrap();
    }

    #[test]
    fn outbox_and_recent_results_are_bounded() {
        let s = tmp("outbox");
        for i in 0..(RECENT + 5) {
            s.push_outbox(Outcome { deployment_id: format!("d{i}"), result: "succeeded".into(), ..Default::default() })
                .unwrap();
        }
        let all = s.outbox();
        assert_eq!(all.len(), RECENT);
        assert_eq!(all.last().unwrap().deployment_id, format!("d{}", RECENT + 4));
        s.ack_outbox(&all.iter().map(|o| o.deployment_id.clone()).collect::<Vec<_>>()).unwrap();
        assert!(s.outbox().is_empty() && !s.outbox_file().exists());
        let mut p = Persisted::default();
        for i in 0..30 {
            p.remember(Outcome { deployment_id: format!("d{}", i % 25), ..Default::default() });
        }
        assert_eq!(p.recent.len(), RECENT);
        std::fs::remove_dir_all(&s.root).unwrap();
    }
}
