//! dockfra-common: what both the coordinator and the agent must agree on — the project config,
//! the compose model, the bundle format and its signatures, TLS identities and the wire types.
//! It must stay lean: nothing here may pull SQLite, a web framework or the converters.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod compose;
pub mod config;
pub mod diagnose;
pub mod fault;
pub mod identity;
pub mod paths;
pub mod pkg;
pub mod runner;
pub mod selector;
pub mod sign;

/// Generated from `proto/dockfra/v1/dockfra.proto` — the wire contract.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("dockfra.v1");
}

/// Version of this build, reported by agents and printed by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// What an agent's facts are known by on the wire (`AgentStatus.facts_digest`): the first
/// 16 bytes of the sha256 of their protobuf encoding, in hex. Only the agent computes it; the
/// coordinator keeps the digest it was sent beside the facts it was sent.
pub fn facts_digest(facts: &proto::Facts) -> String {
    use prost::Message as _;
    let mut d = sha256_hex(&facts.encode_to_vec());
    d.truncate(32);
    d
}

/// Hex sha256 and length of a file's content, read in 256 KiB pieces.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok((hex::encode(h.finalize()), size));
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Write a file atomically: temp file in the same dir, fsync, rename, fsync the dir.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// The team's shared reference material that the tests read (`shared/`: the compose corpus,
/// the seed documents): `$DOCKFRA_SHARED`, else `shared/` beside the workspace, else beside
/// the local repository this checkout was cloned from (a CI clone made elsewhere, e.g.
/// `git clone /work/main /tmp/ci-check`). Tests only; no program reads it.
#[doc(hidden)]
pub fn shared_dir(workspace: &std::path::Path) -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("DOCKFRA_SHARED").filter(|d| !d.is_empty()) {
        return d.into();
    }
    let beside = workspace.join("../shared");
    if beside.is_dir() {
        return beside;
    }
    let origin = std::fs::read_to_string(workspace.join(".git/config")).unwrap_or_default();
    let url = origin
        .split("[remote \"origin\"]")
        .nth(1)
        .and_then(|sec| sec.lines().find_map(|l| l.trim().strip_prefix("url = ").map(str::to_string)));
    match url.map(std::path::PathBuf::from).filter(|u| u.is_absolute()) {
        Some(repo) if repo.join("../shared").is_dir() => repo.join("../shared"),
        _ => beside,
    }
}

/// Free (for unprivileged users) and total bytes of the filesystem holding `path`.
pub fn free_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some((s.f_bavail.saturating_mul(s.f_frsize), s.f_blocks.saturating_mul(s.f_frsize)))
}

/// Files made durable and moved into place behind the writer's back: [`SyncBehind::put`]
/// hands over a written temp file and its final name, and a thread fsyncs the file and then
/// renames it in, while the caller goes on writing the next one (the disk flushes one file as
/// the next is received or copied, instead of the writer stopping for each). A final name only
/// ever holds fsynced content. [`SyncBehind::finish`] waits for all, fsyncs the directories
/// renamed into, and says which file failed first; dropping it waits too.
pub struct SyncBehind {
    tx: Option<std::sync::mpsc::SyncSender<(std::fs::File, std::path::PathBuf, std::path::PathBuf)>>,
    worker: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Default for SyncBehind {
    fn default() -> Self {
        Self::new()
    }
}

impl SyncBehind {
    /// At most this many files wait for their fsync (each holds its descriptor): a writer
    /// faster than the disk then waits for it.
    const QUEUE: usize = 16;

    pub fn new() -> Self {
        Self { tx: None, worker: None }
    }

    /// Fsync `file` (written at `tmp`) and rename it to `dest`, in the background. On failure
    /// the temp file is removed and [`finish`](Self::finish) reports it.
    pub fn put(&mut self, file: std::fs::File, tmp: std::path::PathBuf, dest: std::path::PathBuf) {
        if self.tx.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel(Self::QUEUE);
            self.tx = Some(tx);
            self.worker = Some(std::thread::spawn(move || Self::work(rx)));
        }
        if let Some(tx) = &self.tx {
            // The worker only stops when the sender is dropped.
            let _ = tx.send((file, tmp, dest));
        }
    }

    fn work(
        rx: std::sync::mpsc::Receiver<(std::fs::File, std::path::PathBuf, std::path::PathBuf)>,
    ) -> std::io::Result<()> {
        let mut first: Option<std::io::Error> = None;
        let mut dirs = std::collections::BTreeSet::new();
        for (file, tmp, dest) in rx {
            let done = if first.is_some() {
                Err(std::io::Error::other("an earlier file failed"))
            } else {
                file.sync_all().and_then(|()| std::fs::rename(&tmp, &dest))
            };
            match done {
                Ok(()) => {
                    dirs.insert(dest.parent().unwrap_or(std::path::Path::new(".")).to_path_buf());
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    if first.is_none() {
                        first = Some(std::io::Error::new(e.kind(), format!("{}: {e}", dest.display())));
                    }
                }
            }
        }
        for d in &dirs {
            if let Err(e) = fsync_dir(d) {
                first.get_or_insert(std::io::Error::new(e.kind(), format!("{}: {e}", d.display())));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Wait until every file handed over is durable under its final name.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.tx = None;
        match self.worker.take() {
            Some(w) => w.join().unwrap_or_else(|_| Err(std::io::Error::other("the fsync thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for SyncBehind {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// fsync a directory so a rename inside it is durable.
pub fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Default state dir of a dockfra program: `/var/lib/<name>` for root on Linux; otherwise
/// `$XDG_DATA_HOME/<name>`, `~/.local/share/<name>`, or on macOS
/// `~/Library/Application Support/<name>`.
pub fn default_state_dir(name: &str) -> std::path::PathBuf {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    if cfg!(target_os = "macos") {
        if let Some(h) = home {
            return h.join("Library/Application Support").join(name);
        }
    }
    if is_root() {
        return std::path::PathBuf::from("/var/lib").join(name);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return std::path::PathBuf::from(x).join(name);
    }
    home.map(|h| h.join(".local/share").join(name)).unwrap_or_else(|| std::path::PathBuf::from(".").join(name))
}

/// Are we running as root (uid 0)? Linux: the owner of /proc/self. Where there is no /proc
/// (macOS): the owner of $HOME, which is root's only for root.
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata("/proc/self") {
        Ok(m) => m.uid() == 0,
        Err(_) => std::env::var_os("HOME").and_then(|h| std::fs::metadata(h).ok()).is_some_and(|m| m.uid() == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_behind_renames_each_file_in_once_it_is_durable_and_names_a_failure() {
        let dir = std::env::temp_dir().join(format!("dkf-syncbehind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = SyncBehind::new();
        for i in 0..40 {
            let tmp = dir.join(format!(".part-{i}"));
            std::fs::write(&tmp, format!("file {i}")).unwrap();
            s.put(std::fs::File::open(&tmp).unwrap(), tmp, dir.join(format!("f{i}")));
        }
        s.finish().unwrap();
        for i in 0..40 {
            assert_eq!(std::fs::read_to_string(dir.join(format!("f{i}"))).unwrap(), format!("file {i}"));
            assert!(!dir.join(format!(".part-{i}")).exists());
        }
        // A rename that cannot happen (no such directory): reported by name, its temp file gone,
        // and nothing after it is renamed in.
        let tmp = dir.join(".part-bad");
        std::fs::write(&tmp, "x").unwrap();
        s.put(std::fs::File::open(&tmp).unwrap(), tmp.clone(), dir.join("missing/f"));
        let after = dir.join(".part-after");
        std::fs::write(&after, "y").unwrap();
        s.put(std::fs::File::open(&after).unwrap(), after.clone(), dir.join("after"));
        let e = s.finish().unwrap_err();
        assert!(e.to_string().contains("missing/f"), "{e}");
        assert!(!tmp.exists() && !after.exists() && !dir.join("after").exists());
        // Nothing handed over: nothing to wait for.
        SyncBehind::new().finish().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
