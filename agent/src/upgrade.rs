//! The agent upgrading itself (`dockfra-coord agent upgrade`).
//!
//! An upgrade is an order like any other (signed, sequenced, its one file fetched and
//! hash-checked into a release dir of the app [`AGENT_APP`]), but no driver runs it:
//! 1. **Stage.** The executor checks the binary is for this OS and CPU, writes
//!    `upgrade/trial.json` (which release, its sha256, a deadline), raises the order floor and
//!    asks the process to restart ([`request_restart`]). The binary it runs from — the
//!    package's `/usr/bin/dockfra-agent`, or whichever started it — is never touched.
//! 2. **Trial.** The restarted process sees the trial ([`launch`], before anything else) and
//!    supervises it: it starts the new binary as its child with the same arguments and waits
//!    until the child has reached the coordinator (it writes `upgrade/confirmed`), the child
//!    exits, or the deadline passes.
//! 3. **Confirmed:** the child activates the release, records the deployment's success
//!    itself (the coordinator hears it through the usual outbox or status), and the
//!    supervisor records `upgrade/committed.json`; from then on every start of the agent
//!    executes the committed binary (its sha256 checked first), unless the installed one is
//!    newer (a package upgrade wins). The supervisor stays the child's parent until it exits.
//! 4. **Not confirmed:** the supervisor kills the child, records the deployment as failed
//!    with the reason, and goes on as the agent it was: the old binary comes back by itself.
//!    A supervisor killed mid-trial resumes the trial at the next start, up to
//!    [`MAX_ATTEMPTS`], and never after the deadline.
//!
//! A trial child exits when its supervisor goes away (it watches its parent pid), so two
//! agents never run on one state dir.
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use dockfra_common::bundle::AGENT_APP;

use crate::releases::AppReleases;
use crate::state::{Outcome, StateDir};

/// Set in a trial child's environment: the deployment id of the trial it runs for.
pub const TRIAL_ENV: &str = "DOCKFRA_AGENT_TRIAL";
/// Set when a start executed the committed binary (it must not do so again).
const LAUNCHED_ENV: &str = "DOCKFRA_AGENT_LAUNCHED";
/// Starts of one trial (a supervisor killed mid-trial tries again at the next start).
pub const MAX_ATTEMPTS: u32 = 2;
/// How long a new agent has to reach the coordinator when the order names no time.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

/// A staged upgrade on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub deployment_id: String,
    pub desired_sequence: u64,
    /// The release (of app [`AGENT_APP`]) holding the new binary.
    pub base: PathBuf,
    pub release: String,
    pub previous: Option<String>,
    pub manifest_sequence: u64,
    pub version: String,
    pub binary: PathBuf,
    pub sha256: String,
    pub deadline_unix: u64,
    #[serde(default)]
    pub attempts: u32,
}

/// The binary a confirmed trial left in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub binary: PathBuf,
    pub sha256: String,
    pub version: String,
}

/// What the new binary wrote when it reached the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Confirmed {
    deployment_id: String,
    version: String,
    sha256: String,
}

fn dir(state: &StateDir) -> PathBuf {
    state.root.join("upgrade")
}
fn trial_file(state: &StateDir) -> PathBuf {
    dir(state).join("trial.json")
}
fn confirmed_file(state: &StateDir) -> PathBuf {
    dir(state).join("confirmed.json")
}
fn committed_file(state: &StateDir) -> PathBuf {
    dir(state).join("committed.json")
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!("{}: {e}: ignored", path.display());
            None
        }
    }
}

fn write<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    crate::state::write(path, &serde_json::to_vec_pretty(v)?, 0o644)
}

/// The staged trial, if any.
pub fn trial(state: &StateDir) -> Option<Trial> {
    read(&trial_file(state))
}

/// The deployment a trial in progress is for (the agent's status says it is in flight, so the
/// coordinator neither re-sends nor gives up on it).
pub fn pending(state: &StateDir) -> Option<String> {
    let t = trial(state)?;
    let done = read::<Confirmed>(&confirmed_file(state)).is_some_and(|c| c.deployment_id == t.deployment_id);
    (!done).then_some(t.deployment_id)
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    dockfra_common::sha256_file(path).map(|(h, _)| h)
}

/// The sha256 of the running binary ("" when it cannot be read), computed once.
pub fn own_sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| std::env::current_exe().and_then(|p| sha256_file(&p)).unwrap_or_default())
}

/// The OS and CPU an executable is for, from its header: ELF (Linux) or 64-bit Mach-O.
pub fn binary_kind(head: &[u8]) -> Option<(&'static str, &'static str)> {
    if head.len() >= 20 && head[..4] == *b"\x7fELF" {
        let machine = u16::from_le_bytes([head[18], head[19]]);
        let arch = match machine {
            0x3e => "x86_64",
            0xb7 => "aarch64",
            0x28 => "arm",
            _ => return None,
        };
        return Some(("linux", arch));
    }
    if head.len() >= 8 && head[..4] == [0xcf, 0xfa, 0xed, 0xfe] {
        let cpu = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let arch = match cpu {
            0x0100_0007 => "x86_64",
            0x0100_000c => "aarch64",
            _ => return None,
        };
        return Some(("macos", arch));
    }
    None
}

/// Is `path` an executable for this host? `Err` says why not.
pub fn check_binary(path: &Path) -> std::result::Result<(), String> {
    use std::io::Read as _;
    let mut head = [0u8; 64];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let here = (std::env::consts::OS, std::env::consts::ARCH);
    match binary_kind(&head[..n]) {
        Some(k) if k == here => Ok(()),
        Some((os, arch)) => Err(format!("the new binary is for {os}/{arch}; this agent runs on {}/{}", here.0, here.1)),
        None => Err("the new binary is not an ELF or Mach-O executable this agent knows".into()),
    }
}

/// Write the trial for the executor (step 1); a stale confirmation goes.
pub fn stage(state: &StateDir, t: &Trial) -> Result<()> {
    let _ = std::fs::remove_file(confirmed_file(state));
    write(&trial_file(state), t)
}

// ---------------------------------------------------------------- restart

static RESTART: AtomicBool = AtomicBool::new(false);
static STOP: OnceLock<tokio::sync::watch::Sender<bool>> = OnceLock::new();

/// The run loop's stop switch, for [`request_restart`].
pub fn set_stopper(tx: tokio::sync::watch::Sender<bool>) {
    let _ = STOP.set(tx);
}

/// Stop the run loop soon (after the order's last event went out) and start again.
pub fn request_restart() {
    RESTART.store(true, Ordering::SeqCst);
    if let Some(tx) = STOP.get() {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = tx.send(true);
        });
    }
}

pub fn restart_requested() -> bool {
    RESTART.load(Ordering::SeqCst)
}

/// Replace this process by a fresh start of the binary it runs from, with the same arguments
/// (it then supervises the staged trial).
pub fn reexec() -> std::process::ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot restart for the upgrade: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env_remove(TRIAL_ENV)
        .env_remove(LAUNCHED_ENV)
        .exec();
    eprintln!("error: cannot restart {} for the upgrade: {err}", exe.display());
    std::process::ExitCode::from(1)
}

// ---------------------------------------------------------------- the child's side

/// The trial this process is the child of, while it is not confirmed. (A confirmed child
/// that stages the next upgrade keeps its environment until it restarts: the trial on disk
/// is then another one, for another binary, and not its own.)
fn own_trial(state: &StateDir) -> Option<Trial> {
    let mine = std::env::var(TRIAL_ENV).ok()?;
    let t = trial(state)?;
    let open = pending(state).as_deref() == Some(t.deployment_id.as_str());
    (open && t.deployment_id == mine && t.sha256 == own_sha256()).then_some(t)
}

/// In a trial child, end the process when the supervisor is gone (so a new start of the agent
/// never finds this one still running on the state dir).
pub fn watch_supervisor() {
    if std::env::var_os(TRIAL_ENV).is_none() {
        return;
    }
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(500));
        if std::os::unix::process::parent_id() != parent {
            eprintln!("dockfra-agent: the supervisor of this upgrade trial is gone: exiting");
            std::process::exit(1);
        }
    });
}

/// The coordinator was reached: in a trial child, make the upgrade good (step 3). Returns
/// whether it did.
pub fn confirm(state: &StateDir) -> Result<bool> {
    let Some(t) = own_trial(state) else { return Ok(false) };
    let _lock = state.lock()?;
    let rel = AppReleases::new(t.base.clone());
    rel.activate(&t.release).map_err(|e| anyhow::anyhow!("{e}"))?;
    let message = format!(
        "dockfra-agent {} is running (sha256 {}, release {}); the previous binary is kept",
        dockfra_common::VERSION,
        own_sha256(),
        t.release
    );
    // (`current` points at the new release already: the previous one is the trial's.)
    let previous = t.previous.clone();
    record(state, &t, "succeeded", &t.release, message, |app| {
        app.previous = previous.clone();
        app.current = Some(t.release.clone());
        app.current_sequence = t.manifest_sequence;
        app.current_version = t.version.clone();
        app.health = "healthy".into();
        app.base = Some(t.base.clone());
    })?;
    // Keep this binary and the one before it; older upgrades go (their blobs at the next GC).
    let protect: Vec<&str> = previous.iter().map(String::as_str).collect();
    let pruned = rel.prune(2, &protect);
    if !pruned.is_empty() {
        tracing::info!("pruned older agent upgrades: {}", pruned.join(", "));
    }
    write(
        &confirmed_file(state),
        &Confirmed {
            deployment_id: t.deployment_id.clone(),
            version: dockfra_common::VERSION.into(),
            sha256: own_sha256().into(),
        },
    )?;
    tracing::info!(release = %t.release, "upgrade confirmed: this binary stays");
    Ok(true)
}

// ---------------------------------------------------------------- the supervisor's side

/// What the start of `run` does after [`launch`].
#[derive(Debug, PartialEq, Eq)]
pub enum Launch {
    /// Run as the agent (no trial, the trial failed, or this is the trial's child).
    Continue,
    /// The trial's child ran and exited with this code: exit with it.
    Exit(u8),
}

/// Dotted versions, numerically (`0.10.0` > `0.9.1`); non-numeric parts count as 0.
fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-', '+']).map(|p| p.parse().unwrap_or(0)).collect()
}

/// Before `run` starts: execute the committed binary, supervise a staged trial, or go on.
pub fn launch(state: &StateDir) -> Launch {
    if std::env::var_os(TRIAL_ENV).is_some() {
        return Launch::Continue;
    }
    if let Some(t) = trial(state) {
        return supervise(state, t);
    }
    if std::env::var_os(LAUNCHED_ENV).is_none() {
        if let Some(c) = read::<Committed>(&committed_file(state)) {
            run_committed(state, &c);
        }
    }
    Launch::Continue
}

/// Execute the committed binary (does not return) unless it is this one, the installed one is
/// newer, or it is not what was committed.
fn run_committed(state: &StateDir, c: &Committed) {
    let me = std::env::current_exe().ok();
    if me.as_deref() == Some(c.binary.as_path()) || own_sha256() == c.sha256 {
        return;
    }
    if version_key(dockfra_common::VERSION) > version_key(&c.version) {
        tracing::info!(
            "the installed agent ({}) is newer than the upgrade committed ({}): using the installed one",
            dockfra_common::VERSION,
            c.version
        );
        let _ = std::fs::remove_file(committed_file(state));
        return;
    }
    match sha256_file(&c.binary) {
        Ok(sha) if sha == c.sha256 => {}
        Ok(sha) => {
            tracing::error!("{}: sha256 {sha}, committed {}: not running it", c.binary.display(), c.sha256);
            return;
        }
        Err(e) => {
            tracing::error!("{}: {e}: running the installed agent", c.binary.display());
            return;
        }
    }
    let err = std::process::Command::new(&c.binary).args(std::env::args_os().skip(1)).env(LAUNCHED_ENV, "1").exec();
    tracing::error!("cannot run the committed agent {}: {err}", c.binary.display());
}

fn supervise(state: &StateDir, mut t: Trial) -> Launch {
    let now = dockfra_common::now_unix();
    if t.attempts >= MAX_ATTEMPTS {
        return give_up(
            state,
            &t,
            format!("the new agent was started {} times and never reached the coordinator", t.attempts),
        );
    }
    if now >= t.deadline_unix {
        return give_up(state, &t, "the trial's deadline passed before it could start".into());
    }
    match sha256_file(&t.binary) {
        Ok(sha) if sha == t.sha256 => {}
        Ok(sha) => return give_up(state, &t, format!("the staged binary changed (sha256 {sha}, signed {})", t.sha256)),
        Err(e) => return give_up(state, &t, format!("the staged binary cannot be read: {e}")),
    }
    t.attempts += 1;
    if let Err(e) = write(&trial_file(state), &t) {
        return give_up(state, &t, format!("cannot record the trial: {e:#}"));
    }
    let mut child = match std::process::Command::new(&t.binary)
        .args(std::env::args_os().skip(1))
        .env(TRIAL_ENV, &t.deployment_id)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return give_up(state, &t, format!("the new agent did not start: {e}")),
    };
    let left = Duration::from_secs(t.deadline_unix.saturating_sub(now));
    eprintln!(
        "dockfra-agent: trying the upgrade {} (pid {}): it has {}s to reach the coordinator",
        t.release,
        child.id(),
        left.as_secs()
    );
    let deadline = Instant::now() + left;
    let why = loop {
        if let Some(c) = read::<Confirmed>(&confirmed_file(state)).filter(|c| c.deployment_id == t.deployment_id) {
            let committed = Committed { binary: t.binary.clone(), sha256: t.sha256.clone(), version: c.version };
            if let Err(e) = write(&committed_file(state), &committed) {
                eprintln!("dockfra-agent: cannot record the committed upgrade: {e:#}");
            }
            let _ = std::fs::remove_file(trial_file(state));
            let _ = std::fs::remove_file(confirmed_file(state));
            eprintln!("dockfra-agent: the upgrade {} reached the coordinator: it stays", t.release);
            let code = child.wait().ok().and_then(|s| s.code()).unwrap_or(1);
            return Launch::Exit(code.clamp(0, 255) as u8);
        }
        match child.try_wait() {
            Ok(Some(status)) => break format!("the new agent exited ({status}) before it reached the coordinator"),
            Ok(None) => {}
            Err(e) => break format!("cannot watch the new agent: {e}"),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break format!("the new agent did not reach the coordinator within {}s", left.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    give_up(state, &t, why)
}

/// The trial's result, for the coordinator: in the state (the order's sequence used up, the
/// agent's app updated, the outcome remembered) and in the outbox. The caller holds the lock.
fn record(
    state: &StateDir,
    t: &Trial,
    result: &str,
    release: &str,
    message: String,
    update: impl FnOnce(&mut crate::state::AppState),
) -> Result<()> {
    let outcome = Outcome {
        deployment_id: t.deployment_id.clone(),
        result: result.into(),
        release: release.into(),
        message,
        phase: if result == "succeeded" { "Done" } else { "Failed" }.into(),
        bytes: 0,
        unix_ms: dockfra_common::now_unix_ms(),
    };
    let mut p = state.persisted()?;
    p.last_desired_sequence = p.last_desired_sequence.max(t.desired_sequence);
    let app = p.apps.entry(AGENT_APP.to_string()).or_default();
    app.last_result = result.into();
    update(app);
    p.remember(outcome.clone());
    state.save_persisted(&p)?;
    state.push_outbox(outcome)
}

/// The trial failed: record it for the coordinator and go on as the old agent.
fn give_up(state: &StateDir, t: &Trial, why: String) -> Launch {
    eprintln!("dockfra-agent: upgrade {} failed: {why}; the previous binary runs again", t.release);
    let message = format!(
        "upgrade to {} failed: {why}; dockfra-agent {} (sha256 {}) runs again",
        t.release,
        dockfra_common::VERSION,
        own_sha256()
    );
    let release = t.previous.clone().unwrap_or_default();
    let recorded = state.lock().and_then(|_lock| record(state, t, "failed", &release, message, |_| {}));
    if let Err(e) = recorded {
        eprintln!("dockfra-agent: cannot record the failed upgrade: {e:#}");
    }
    let _ = std::fs::remove_file(confirmed_file(state));
    if let Err(e) = std::fs::remove_file(trial_file(state)).context("removing the trial") {
        eprintln!("dockfra-agent: {e:#}");
    }
    Launch::Continue
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_say_which_os_and_cpu_a_binary_is_for() {
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        elf.resize(20, 0);
        elf[18] = 0x3e;
        assert_eq!(binary_kind(&elf), Some(("linux", "x86_64")));
        elf[18] = 0xb7;
        assert_eq!(binary_kind(&elf), Some(("linux", "aarch64")));
        elf[18] = 0x28;
        assert_eq!(binary_kind(&elf), Some(("linux", "arm")));
        elf[18] = 0x08;
        assert_eq!(binary_kind(&elf), None, "MIPS is no agent");
        let macho = [0xcf, 0xfa, 0xed, 0xfe, 0x0c, 0x00, 0x00, 0x01];
        assert_eq!(binary_kind(&macho), Some(("macos", "aarch64")));
        assert_eq!(binary_kind(b"#!/bin/sh\n"), None);
        // This test's own binary is for this host.
        check_binary(&std::env::current_exe().unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("dkf-upg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("s"), b"#!/bin/sh\nexit 0\n").unwrap();
        assert!(check_binary(&dir.join("s")).unwrap_err().contains("not an ELF or Mach-O"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_key("0.10.0") > version_key("0.9.9"));
        assert!(version_key("1.0.0") > version_key("0.99"));
        assert_eq!(version_key("0.2.0"), version_key("0.2.0"));
    }

    fn trial_in(state: &StateDir, binary: &Path, deadline_in: u64) -> Trial {
        let sha = sha256_file(binary).unwrap();
        Trial {
            deployment_id: "d-1".into(),
            desired_sequence: 7,
            base: state.root.join("apps").join(AGENT_APP),
            release: "7-abcdefabcdef".into(),
            previous: None,
            manifest_sequence: 7,
            version: "v".into(),
            binary: binary.to_path_buf(),
            sha256: sha,
            deadline_unix: dockfra_common::now_unix() + deadline_in,
            attempts: 0,
        }
    }

    /// A new binary that exits at once, or one that never reaches the coordinator: the
    /// supervisor records the failure and goes on as the old agent.
    #[test]
    fn a_trial_that_never_confirms_fails_and_the_old_agent_goes_on() {
        let root = std::env::temp_dir().join(format!("dkf-trial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let state = StateDir::new(&root);
        for (name, script, deadline) in
            [("exits", "#!/bin/sh\nexit 3\n", 30), ("hangs", "#!/bin/sh\nexec sleep 30\n", 1)]
        {
            let bin = root.join(name);
            std::fs::write(&bin, script).unwrap();
            std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let t = Trial { deployment_id: format!("d-{name}"), ..trial_in(&state, &bin, deadline) };
            stage(&state, &t).unwrap();
            assert_eq!(pending(&state).as_deref(), Some(t.deployment_id.as_str()));
            let started = Instant::now();
            assert_eq!(launch(&state), Launch::Continue);
            assert!(started.elapsed() < Duration::from_secs(10), "{name}: the supervisor waited too long");
            assert!(trial(&state).is_none(), "{name}: the trial is over");
            let p = state.persisted().unwrap();
            let o = p.recent.iter().find(|o| o.deployment_id == t.deployment_id).unwrap();
            assert_eq!(o.result, "failed");
            let want = if name == "exits" { "exited" } else { "did not reach the coordinator within" };
            assert!(o.message.contains(want) && o.message.contains("runs again"), "{name}: {}", o.message);
            assert!(state.outbox().iter().any(|o| o.deployment_id == t.deployment_id));
            assert_eq!(p.last_desired_sequence, 7, "the order's sequence is used up");
            assert!(read::<Committed>(&committed_file(&state)).is_none());
        }
        // A staged binary that changed after staging is never started.
        let bin = root.join("exits");
        let t = Trial { deployment_id: "d-changed".into(), ..trial_in(&state, &bin, 30) };
        stage(&state, &t).unwrap();
        std::fs::write(&bin, "#!/bin/sh\nexit 0\n").unwrap();
        assert_eq!(launch(&state), Launch::Continue);
        let p = state.persisted().unwrap();
        assert!(p.recent.iter().any(|o| o.deployment_id == "d-changed" && o.message.contains("changed")));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
