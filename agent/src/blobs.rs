//! The agent's content-addressed blob store (`<state>/blobs/sha256/<hex>`): blobs arrive in
//! chunks and enter the store only when their sha256 matches their name and their size is no
//! more than the manifest says; garbage collection removes what no kept release names, so a
//! small device's disk does not fill with old content.
//!
//! A blob is read-only once stored, and its mtime carries a stamp: nanoseconds derived from
//! its digest. Releases hard-link their files to the blobs (`releases.rs`), so a write through
//! any link moves the mtime and breaks the stamp; [`intact`] then says so, and the blob is
//! hashed again before it is used. Checking a stamp is one `stat`, not a read of the content.
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use dockfra_common::paths::Digest;

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
/// its sha256 matches its name and it is fsynced (behind the writer: the next blob is received
/// while the disk flushes the last; [`BlobWriter::finish`] waits for all). Sizes are capped
/// at what the manifest says.
pub struct BlobWriter {
    dir: PathBuf,
    expected: BTreeMap<String, u64>,
    open: Option<(String, std::fs::File, sha2::Sha256, u64, PathBuf)>,
    behind: dockfra_common::SyncBehind,
    pub bytes: u64,
}

impl BlobWriter {
    pub fn new(dir: PathBuf, expected: BTreeMap<String, u64>) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io { path: dir.clone(), source })?;
        Ok(Self { dir, expected, open: None, behind: Default::default(), bytes: 0 })
    }

    /// Wait until every blob checked so far is durable in the store; the first that could not
    /// be made so is named.
    pub fn finish(&mut self) -> Result<(), BlobError> {
        self.behind.finish().map_err(|source| BlobError::Io { path: self.dir.clone(), source })
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
            let checked = stamp(&file, &name).and_then(|()| file.set_permissions(read_only(0o444)));
            if let Err(e) = checked {
                let _ = std::fs::remove_file(&tmp);
                return Err(BlobError::Io { path: tmp, source: e });
            }
            let dest = self.dir.join(&name);
            self.behind.put(file, tmp, dest);
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

/// The sub-second part a stored blob's mtime carries: 1..=999,999,999 from its digest (never
/// 0, so a filesystem that keeps whole seconds only never shows a stamp by chance).
fn stamp_nanos(digest: &str) -> u32 {
    let head = digest.get(..8).and_then(|h| u32::from_str_radix(h, 16).ok()).unwrap_or(0);
    1 + head % 999_999_999
}

/// Stamp a blob the store has just checked: its mtime becomes now, with the digest's nanos.
pub fn stamp(file: &std::fs::File, digest: &str) -> std::io::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::new(now.as_secs(), stamp_nanos(digest)))
}

/// Is this stored blob as it was checked: its size, and its stamp (nothing wrote to it since)?
/// `false` means "hash it again", not "corrupt".
pub fn intact(meta: &std::fs::Metadata, digest: &str, size: u64) -> bool {
    meta.len() == size
        && meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .is_some_and(|d| d.subsec_nanos() == stamp_nanos(digest))
}

/// `mode` without its write bits: what stored blobs and the release files linked to them carry.
pub fn read_only(mode: u32) -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(mode & 0o555)
}

/// Count and bytes of the blobs in `dir`.
pub fn usage(dir: &Path) -> (u32, u64) {
    let mut n = 0u32;
    let mut bytes = 0u64;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if Digest::new(&e.file_name().to_string_lossy()).is_ok() {
            n += 1;
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    (n, bytes)
}

/// What a collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    pub blobs: u32,
    pub bytes: u64,
}

/// Remove every blob of `dir` not in `keep`, and half-written parts older than `stale` (a
/// transfer cut off by a crash). Only names that are digests or our own part files are
/// touched.
pub fn collect(dir: &Path, keep: &BTreeSet<String>, stale: std::time::Duration) -> Collected {
    let mut out = Collected::default();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(meta) = e.metadata() else { continue };
        let old = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|age| age >= stale);
        let remove = match Digest::new(&name) {
            Ok(d) => !keep.contains(d.as_str()),
            Err(_) => name.starts_with(".part-") && old,
        };
        if remove && std::fs::remove_file(e.path()).is_ok() {
            out.blobs += 1;
            out.bytes += meta.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_keeps_what_is_named_and_drops_the_rest() {
        let dir = std::env::temp_dir().join(format!("dkf-gc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dockfra_common::sha256_hex(b"a"), dockfra_common::sha256_hex(b"bb"));
        std::fs::write(dir.join(&a), "a").unwrap();
        std::fs::write(dir.join(&b), "bb").unwrap();
        std::fs::write(dir.join(".part-x-1"), "partial").unwrap();
        std::fs::write(dir.join("README"), "not ours").unwrap();
        assert_eq!(usage(&dir), (2, 3));
        let got = collect(&dir, &[a.clone()].into(), std::time::Duration::from_secs(3600));
        assert_eq!(got, Collected { blobs: 1, bytes: 2 });
        assert!(dir.join(&a).exists() && !dir.join(&b).exists());
        assert!(dir.join(".part-x-1").exists(), "a fresh part may belong to a transfer in progress");
        collect(&dir, &[a.clone()].into(), std::time::Duration::ZERO);
        assert!(!dir.join(".part-x-1").exists() && dir.join("README").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blob_writer_checks_hash_size_and_order() {
        let dir = std::env::temp_dir().join(format!("dkf-blobs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let good = dockfra_common::sha256_hex(b"hello world");
        let mut w = BlobWriter::new(dir.clone(), [(good.clone(), 11)].into()).unwrap();
        w.chunk(&good, 0, b"hello ", false).unwrap();
        w.chunk(&good, 6, b"world", true).unwrap();
        w.finish().unwrap();
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
