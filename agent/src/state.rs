//! The agent's state dir: identity (key, certificate, CA, pinned signing key), the persisted
//! watermark and per-app results, the fsynced journal of the deploy in flight, the
//! content-addressed blob store, and the lock that serializes deploys. Every state file is
//! written atomically (temp file, fsync, rename).
//!
//! ```text
//! <state>/identity/{key.pem,cert.pem,ca.pem,signing.pub,agent.json}
//! <state>/state.json      watermark + per-app current/previous/last result
//! <state>/journal.json    the deploy in flight (absent when idle)
//! <state>/blobs/sha256/   verified blobs
//! <state>/apps/<app>/     releases of apps without a deploy_path
//! <state>/tmp/            staging of offline bundles (removed after use)
//! <state>/agent.lock      held while a deploy, apply or local rollback runs
//! <state>/agent.pid       the running agent (for `poll-now`)
//! ```
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use dockfra_common::paths::Digest;

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Persisted {
    pub last_desired_sequence: u64,
    pub apps: BTreeMap<String, AppState>,
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

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
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

    pub fn signing_key(&self) -> Result<Vec<u8>> {
        let p = self.identity("signing.pub");
        std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
    }

    pub fn persisted(&self) -> Persisted {
        std::fs::read(self.root.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save_persisted(&self, p: &Persisted) -> Result<()> {
        write(&self.root.join("state.json"), &serde_json::to_vec_pretty(p)?, 0o644)
    }

    pub fn journal(&self) -> Option<Journal> {
        std::fs::read(self.root.join("journal.json")).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn write_journal(&self, j: &Journal) -> Result<()> {
        write(&self.root.join("journal.json"), &serde_json::to_vec(j)?, 0o644)
    }

    pub fn clear_journal(&self) -> Result<()> {
        match std::fs::remove_file(self.root.join("journal.json")) {
            Ok(()) => Ok(dockfra_common::fsync_dir(&self.root)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
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
}

/// Atomic write, creating the parent dir.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    dockfra_common::write_atomic(path, bytes, mode).with_context(|| format!("cannot write {}", path.display()))
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {digest} does not match its content hash (got {actual}): tampered or corrupt, refused")]
    Hash { digest: String, actual: String },
    #[error("blob {digest} is larger than the manifest says ({limit} bytes)")]
    TooBig { digest: String, limit: u64 },
    #[error("blob {digest}: chunk at offset {got}, expected {expected}")]
    Order { digest: String, got: u64, expected: u64 },
    #[error("blob {digest} was not requested")]
    Unrequested { digest: String },
    #[error("blob store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Receives blob chunks, writes each to a temp file, and moves it into the store only when
/// its sha256 matches its name. Sizes are capped at what the manifest says.
pub struct BlobWriter {
    dir: PathBuf,
    expected: BTreeMap<String, u64>,
    open: Option<(String, std::fs::File, sha2::Sha256, u64, PathBuf)>,
    pub bytes: u64,
}

impl BlobWriter {
    pub fn new(dir: PathBuf, expected: BTreeMap<String, u64>) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io { path: dir.clone(), source })?;
        Ok(Self { dir, expected, open: None, bytes: 0 })
    }

    pub fn remaining(&self) -> usize {
        self.expected.len()
    }

    pub fn chunk(&mut self, digest: &str, offset: u64, data: &[u8], last: bool) -> Result<(), BlobError> {
        use sha2::Digest as _;
        let d = Digest::new(digest).map_err(|_| BlobError::Unrequested { digest: digest.to_string() })?;
        let limit =
            *self.expected.get(d.as_str()).ok_or_else(|| BlobError::Unrequested { digest: digest.to_string() })?;
        let ioe = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BlobError::Io { path, source }
        };
        if self.open.as_ref().map(|o| o.0.as_str()) != Some(d.as_str()) {
            let tmp = self.dir.join(format!(".part-{}-{}", d.as_str(), std::process::id()));
            let f = std::fs::File::create(&tmp).map_err(ioe(&tmp))?;
            self.open = Some((d.as_str().to_string(), f, sha2::Sha256::new(), 0, tmp));
        }
        let (name, file, hasher, written, tmp) = self.open.as_mut().expect("just opened");
        if offset != *written {
            let e = BlobError::Order { digest: name.clone(), got: offset, expected: *written };
            self.abort();
            return Err(e);
        }
        if *written + data.len() as u64 > limit {
            let e = BlobError::TooBig { digest: name.clone(), limit };
            self.abort();
            return Err(e);
        }
        file.write_all(data).map_err(ioe(tmp))?;
        hasher.update(data);
        *written += data.len() as u64;
        self.bytes += data.len() as u64;
        if last {
            let (name, file, hasher, _, tmp) = self.open.take().expect("open");
            let actual = hex::encode(hasher.finalize());
            if actual != name {
                let _ = std::fs::remove_file(&tmp);
                return Err(BlobError::Hash { digest: name, actual });
            }
            file.sync_all().map_err(ioe(&tmp))?;
            std::fs::rename(&tmp, self.dir.join(&name)).map_err(ioe(&tmp))?;
            self.expected.remove(&name);
        }
        Ok(())
    }

    /// Drop a half-written blob.
    pub fn abort(&mut self) {
        if let Some((_, _, _, _, tmp)) = self.open.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_writer_checks_hash_size_and_order() {
        let dir = std::env::temp_dir().join(format!("dkf-blobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let good = dockfra_common::sha256_hex(b"hello world");
        let mut w = BlobWriter::new(dir.clone(), [(good.clone(), 11)].into()).unwrap();
        w.chunk(&good, 0, b"hello ", false).unwrap();
        w.chunk(&good, 6, b"world", true).unwrap();
        assert_eq!(std::fs::read(dir.join(&good)).unwrap(), b"hello world");
        assert_eq!(w.remaining(), 0);

        let other = dockfra_common::sha256_hex(b"abc");
        let mut w = BlobWriter::new(dir.clone(), [(other.clone(), 3)].into()).unwrap();
        assert!(matches!(w.chunk(&other, 0, b"abd", true), Err(BlobError::Hash { .. })));
        assert!(!dir.join(&other).exists());
        assert!(matches!(w.chunk(&other, 0, b"abcd", true), Err(BlobError::TooBig { .. })));
        assert!(matches!(w.chunk(&other, 5, b"a", true), Err(BlobError::Order { .. })));
        assert!(matches!(w.chunk(&"f".repeat(64), 0, b"a", true), Err(BlobError::Unrequested { .. })));
        let parts: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".part"))
            .collect();
        assert!(parts.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
