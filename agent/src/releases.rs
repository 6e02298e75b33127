//! Capistrano-style releases of one app on this host:
//!
//! ```text
//! <base>/releases/<seq>-<id>/      one dir per release: built in a temp dir, fsynced, renamed in
//! <base>/releases/<seq>-<id>.json  its manifest, written last: a release without it is incomplete
//! <base>/current -> releases/…     swapped atomically (new symlink + rename(2))
//! <base>/shared/                   persistent files linked into every release
//! <base>/quarantine/               releases that failed their health check
//! ```
//! This module owns every write under `<base>`. It only materializes manifests that
//! `bundle::verify_assignment` accepted, from blobs whose hashes were checked on arrival.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use dockfra_common::bundle::{EntryKind, Manifest, SignedDocs, Verified, SIGNED_DIR};
use dockfra_common::paths::{check_component, Digest, SafeRelPath};

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("materializing release {release} in {dir}: {source}")]
    Materialize { release: String, dir: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("release {0} is not present on this host")]
    Missing(String),
    #[error("blob {digest} changed on disk (got {actual}); refusing to use it")]
    BlobCorrupt { digest: String, actual: String },
    #[error("invalid release name {0:?}")]
    BadName(String),
}

impl ReleaseError {
    /// Did materializing stop on a stored blob that no longer hashes to its name (it was
    /// dropped from the store: fetching it again can mend this)?
    pub fn is_blob_corrupt(&self) -> bool {
        match self {
            ReleaseError::BlobCorrupt { .. } => true,
            ReleaseError::Materialize { source, .. } => {
                source.get_ref().and_then(|e| e.downcast_ref::<ReleaseError>()).is_some_and(|e| e.is_blob_corrupt())
            }
            _ => false,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io { path: path.to_path_buf(), source }
}

/// The release store of one app.
#[derive(Debug, Clone)]
pub struct AppReleases {
    pub base: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub name: String,
    pub sequence: u64,
}

/// The sequence a release dir's name carries (`<sequence>-<12 hex>`), if it is one.
pub fn sequence_of(name: &str) -> Option<u64> {
    let (seq, id) = name.split_once('-')?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    seq.parse().ok()
}

/// File names of the signed documents inside `SIGNED_DIR`.
const SIGNED_FILES: [&str; 4] = ["desired.json", "desired.sig", "manifest.json", "manifest.sig"];

impl AppReleases {
    pub fn new(base: PathBuf) -> Self {
        Self { base }
    }
    pub fn base(&self) -> &Path {
        &self.base
    }
    pub fn releases_dir(&self) -> PathBuf {
        self.base.join("releases")
    }
    pub fn dir(&self, name: &str) -> PathBuf {
        self.releases_dir().join(name)
    }
    fn meta(&self, name: &str) -> PathBuf {
        self.releases_dir().join(format!("{name}.json"))
    }
    pub fn current_link(&self) -> PathBuf {
        self.base.join("current")
    }

    /// Is this release fully materialized (its manifest written last)?
    pub fn is_complete(&self, name: &str) -> bool {
        self.meta(name).is_file() && self.dir(name).is_dir()
    }

    /// The manifest a complete release was made from (its signed bytes, read under the
    /// compatibility rule).
    pub fn manifest(&self, name: &str) -> Option<Manifest> {
        let bytes = std::fs::read(self.meta(name)).ok()?;
        Manifest::parse(&bytes).ok()
    }

    /// The signed documents that installed a release, as received.
    pub fn signed_docs(&self, name: &str) -> Option<SignedDocs> {
        let dir = SafeRelPath::new(SIGNED_DIR).ok()?.under(&self.dir(name));
        let [d, ds, m, ms] = SIGNED_FILES.map(|f| std::fs::read(dir.join(f)).ok());
        Some(SignedDocs { desired: d?, desired_signature: ds?, manifest: m?, manifest_signature: ms? })
    }

    /// Bytes the releases take on disk beyond the blob store: a file linked to a blob (or to
    /// another release) is counted with the blobs, not again here.
    pub fn bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(m) = std::fs::symlink_metadata(p) else { return 0 };
            if m.is_file() && m.nlink() > 1 {
                0
            } else if m.is_dir() {
                std::fs::read_dir(p).into_iter().flatten().flatten().map(|e| walk(&e.path())).sum::<u64>() + m.len()
            } else {
                m.len()
            }
        }
        walk(&self.releases_dir())
    }

    /// Remove a release that was interrupted before it went live (never `current`).
    pub fn remove(&self, name: &str) -> Result<(), ReleaseError> {
        if self.current().as_deref() == Some(name) {
            return Err(ReleaseError::BadName(format!("{name} is current")));
        }
        let _ = std::fs::remove_file(self.meta(name));
        match std::fs::remove_dir_all(self.dir(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ReleaseError::Io { path: self.dir(name), source: e }),
        }
    }

    /// The release `current` points at, if any.
    pub fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        let name = target.file_name()?.to_str()?.to_string();
        self.is_complete(&name).then_some(name)
    }

    /// Complete releases, oldest first.
    pub fn list(&self) -> Vec<ReleaseInfo> {
        let mut out: Vec<ReleaseInfo> = std::fs::read_dir(self.releases_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let sequence = sequence_of(&name)?;
                (e.path().is_dir() && self.is_complete(&name)).then_some(ReleaseInfo { name, sequence })
            })
            .collect();
        out.sort_by_key(|r| r.sequence);
        out
    }

    /// Build the release from the blob store, with the signed documents that ordered it kept
    /// under `.dockfra/signed/`. Everything is written into a temp dir, fsynced, and renamed
    /// in; the manifest's signed bytes are written last, next to the dir, as its completion
    /// marker. On any error (a full disk included) the temp dir is removed and nothing else has
    /// changed.
    pub fn materialize(&self, v: &Verified, blobs: &Path) -> Result<String, ReleaseError> {
        let m = &v.manifest;
        let name = v.release_name();
        check_component(&name).map_err(|_| ReleaseError::BadName(name.clone()))?;
        if self.is_complete(&name) {
            return Ok(name);
        }
        let rel_dir = self.releases_dir();
        std::fs::create_dir_all(&rel_dir).map_err(io(&rel_dir))?;
        std::fs::create_dir_all(self.base.join("shared")).map_err(io(&self.base))?;
        let tmp = rel_dir.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = self.fill(&tmp, m, blobs).and_then(|()| {
            let signed = SafeRelPath::new(SIGNED_DIR).map_err(std::io::Error::other)?.under(&tmp);
            std::fs::create_dir_all(&signed)?;
            let s = &v.signed;
            for (f, bytes) in
                SIGNED_FILES.iter().zip([&s.desired, &s.desired_signature, &s.manifest, &s.manifest_signature])
            {
                dockfra_common::write_atomic(&signed.join(f), bytes, 0o444)?;
            }
            let fin = self.dir(&name);
            let _ = std::fs::remove_dir_all(&fin); // an incomplete leftover of a crash
            std::fs::rename(&tmp, &fin)?;
            dockfra_common::fsync_dir(&rel_dir)?;
            dockfra_common::write_atomic(&self.meta(&name), &v.signed.manifest, 0o644)
        });
        match result {
            Ok(()) => Ok(name),
            Err(source) => {
                let _ = std::fs::remove_dir_all(&tmp);
                let _ = std::fs::remove_dir_all(self.dir(&name));
                Err(ReleaseError::Materialize { release: name, dir: self.releases_dir(), source })
            }
        }
    }

    fn fill(&self, root: &Path, m: &Manifest, blobs: &Path) -> std::io::Result<()> {
        std::fs::create_dir(root)?;
        let mut dirs = vec![root.to_path_buf()];
        for f in &m.files {
            // validate() already refused these; checking again costs nothing and keeps this
            // function safe on its own.
            let rel = SafeRelPath::new(&f.path).map_err(std::io::Error::other)?;
            let dest = rel.under(root);
            if let Some(parent) = dest.parent() {
                if !parent.exists() {
                    std::fs::create_dir_all(parent)?;
                    dirs.push(parent.to_path_buf());
                }
            }
            match f.kind {
                EntryKind::Symlink => {
                    std::os::unix::fs::symlink(f.link.as_deref().unwrap_or_default(), &dest)?;
                }
                EntryKind::File => {
                    let d = Digest::new(&f.sha256).map_err(std::io::Error::other)?;
                    place(&blobs.join(d.as_str()), &dest, d.as_str(), f.size, f.mode)?;
                }
            }
        }
        // Link shared/ entries the release does not bring itself.
        let shared = std::fs::canonicalize(self.base.join("shared"))?;
        for e in std::fs::read_dir(&shared)?.flatten() {
            let dest = root.join(e.file_name());
            if std::fs::symlink_metadata(&dest).is_err() {
                std::os::unix::fs::symlink(e.path(), &dest)?;
            }
        }
        for d in dirs.iter().rev() {
            dockfra_common::fsync_dir(d)?;
        }
        Ok(())
    }

    /// Files of a complete release that are not as their manifest says any more (something
    /// wrote through them: the running app, an operator): their paths. A stamp check per file
    /// (one `stat`), a hash only where the stamp is gone.
    pub fn changed_files(&self, name: &str) -> Vec<String> {
        let (Some(m), dir) = (self.manifest(name), self.dir(name)) else { return vec!["(manifest)".into()] };
        let mut changed = Vec::new();
        for f in m.files.iter().filter(|f| f.kind == EntryKind::File) {
            let Ok(rel) = SafeRelPath::new(&f.path) else { continue };
            let path = rel.under(&dir);
            let ok = match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    crate::blobs::intact(&meta, &f.sha256, f.size) || hash_file(&path).is_ok_and(|h| h == f.sha256)
                }
                _ => false,
            };
            if !ok {
                changed.push(f.path.clone());
            }
        }
        changed
    }

    /// Point `current` at `name` atomically: a new symlink, renamed over the old one.
    pub fn activate(&self, name: &str) -> Result<(), ReleaseError> {
        if !self.is_complete(name) {
            return Err(ReleaseError::Missing(name.to_string()));
        }
        let tmp = self.base.join(format!(".current.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("releases").join(name), &tmp).map_err(io(&tmp))?;
        std::fs::rename(&tmp, self.current_link()).map_err(io(&self.base))?;
        dockfra_common::fsync_dir(&self.base).map_err(io(&self.base))
    }

    /// Remove `current` (a first release that failed, with nothing to go back to).
    pub fn deactivate(&self) -> Result<(), ReleaseError> {
        match std::fs::remove_file(self.current_link()) {
            Ok(()) => dockfra_common::fsync_dir(&self.base).map_err(io(&self.base)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ReleaseError::Io { path: self.current_link(), source: e }),
        }
    }

    /// Move a failed release out of `releases/` so it never counts against healthy ones.
    pub fn quarantine(&self, name: &str) -> Result<(), ReleaseError> {
        let q = self.base.join("quarantine");
        std::fs::create_dir_all(&q).map_err(io(&q))?;
        let dest = q.join(name);
        let _ = std::fs::remove_dir_all(&dest);
        if self.dir(name).exists() {
            std::fs::rename(self.dir(name), &dest).map_err(io(&dest))?;
        }
        let _ = std::fs::rename(self.meta(name), q.join(format!("{name}.json")));
        // Keep only the three newest quarantined releases.
        let mut qs: Vec<(u64, PathBuf)> = std::fs::read_dir(&q)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| Some((sequence_of(e.file_name().to_str()?)?, e.path())))
            .collect();
        qs.sort();
        for (_, p) in qs.iter().rev().skip(3) {
            let _ = std::fs::remove_dir_all(p);
            let _ = std::fs::remove_file(p.with_extension("json"));
        }
        Ok(())
    }

    /// Keep the newest `keep` complete releases plus `current` and `protect`; remove the rest
    /// and any temp dirs a crash left behind.
    pub fn prune(&self, keep: usize, protect: &[&str]) -> Vec<String> {
        let current = self.current();
        let list = self.list();
        let mut removed = Vec::new();
        let excess = list.len().saturating_sub(keep.max(1));
        for r in list.iter().take(excess) {
            if Some(&r.name) == current.as_ref() || protect.contains(&r.name.as_str()) {
                continue;
            }
            let _ = std::fs::remove_file(self.meta(&r.name));
            let _ = std::fs::remove_dir_all(self.dir(&r.name));
            removed.push(r.name.clone());
        }
        self.clean_temp();
        removed
    }

    /// Remove temp dirs and incomplete releases left by a crash (never a complete one).
    pub fn clean_temp(&self) {
        for e in std::fs::read_dir(self.releases_dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let path = e.path();
            if name.starts_with(".tmp-") || (path.is_dir() && !self.is_complete(&name)) {
                let _ = std::fs::remove_dir_all(&path);
            }
        }
        for e in std::fs::read_dir(&self.base).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".current.") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// How a release file was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// A hard link to the stored blob: no byte written.
    Linked,
    /// A copy (another filesystem, a blob whose mode another release holds, no hard links).
    Copied,
}

/// Put the content of `blob` at `dest`, read-only with `mode`'s other bits. Unchanged content
/// costs a link, not a copy: the blob and every release holding it share one read-only inode.
/// The blob is used only while its stamp says nothing wrote to it since it was checked, or when
/// hashing it again gives its digest; a blob that fails that is dropped from the store and the
/// release refused (the next attempt fetches it again).
pub fn place(blob: &Path, dest: &Path, digest: &str, size: u64, mode: u32) -> std::io::Result<Placed> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let want = crate::blobs::read_only(mode);
    let meta = std::fs::metadata(blob)?;
    if !crate::blobs::intact(&meta, digest, size) {
        let actual = hash_file(blob)?;
        if actual != digest || meta.len() != size {
            let _ = std::fs::remove_file(blob);
            return Err(std::io::Error::other(ReleaseError::BlobCorrupt { digest: digest.to_string(), actual }));
        }
        crate::blobs::stamp(&std::fs::File::open(blob)?, digest)?;
    }
    let mut held = meta.permissions().mode() & 0o777;
    if held != want.mode() && meta.nlink() == 1 {
        // Only the store holds it: the mode is this release's to set.
        std::fs::set_permissions(blob, want.clone())?;
        held = want.mode();
    }
    if held == want.mode() {
        match std::fs::hard_link(blob, dest) {
            Ok(()) => return Ok(Placed::Linked),
            // Another filesystem, no hard links there, or too many links to one inode: copy.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV | libc::EPERM | libc::EMLINK | libc::ENOTSUP)) => {}
            Err(e) => return Err(e),
        }
    }
    copy_checked(blob, dest, digest)?;
    std::fs::set_permissions(dest, want)?;
    Ok(Placed::Copied)
}

/// Copy `blob` to a new file `dest`, hashing as it goes: a blob that does not hash to `digest`
/// is dropped from the store and the copy refused.
fn copy_checked(blob: &Path, dest: &Path, digest: &str) -> std::io::Result<()> {
    use sha2::Digest as _;
    let mut src = std::fs::File::open(blob)?;
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(dest)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    let actual = hex::encode(h.finalize());
    if actual != digest {
        let _ = std::fs::remove_file(blob);
        return Err(std::io::Error::other(ReleaseError::BlobCorrupt { digest: digest.to_string(), actual }));
    }
    out.sync_all()
}

/// The sha256 (hex) of a file's content.
fn hash_file(path: &Path) -> std::io::Result<String> {
    dockfra_common::sha256_file(path).map(|(hex, _)| hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dockfra_common::bundle::FileEntry;
    use dockfra_common::config::Platform;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dkf-rel-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn manifest(seq: u64, content: &[u8], blobs: &Path) -> Manifest {
        let digest = dockfra_common::sha256_hex(content);
        std::fs::write(blobs.join(&digest), content).unwrap();
        Manifest {
            app: "app".into(),
            version: format!("v{seq}"),
            sequence: seq,
            files: vec![
                FileEntry {
                    path: "bin/run.sh".into(),
                    kind: EntryKind::File,
                    mode: 0o755,
                    size: content.len() as u64,
                    sha256: digest,
                    link: None,
                },
                FileEntry {
                    path: "run".into(),
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    size: 0,
                    sha256: String::new(),
                    link: Some("bin/run.sh".into()),
                },
            ],
            keep_releases: 2,
            ..crate::drivers::test_manifest(Platform::SshRaw)
        }
    }

    #[test]
    fn materialize_activate_prune() {
        let root = tmpdir("cycle");
        let blobs = root.join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let app = AppReleases::new(root.join("app"));
        std::fs::create_dir_all(app.base.join("shared")).unwrap();
        std::fs::write(app.base.join("shared/.env"), "A=1").unwrap();
        let mut names = Vec::new();
        for seq in 1..=4u64 {
            let m = manifest(seq, format!("echo {seq}").as_bytes(), &blobs);
            let n = app.materialize(&crate::drivers::verified(m), &blobs).unwrap();
            app.activate(&n).unwrap();
            names.push(n);
        }
        assert_eq!(app.current().as_deref(), Some(names[3].as_str()));
        let cur = app.current_link();
        assert_eq!(std::fs::read_to_string(cur.join("run")).unwrap(), "echo 4");
        assert_eq!(std::fs::read_to_string(cur.join(".env")).unwrap(), "A=1");
        use std::os::unix::fs::PermissionsExt;
        // Release files are read-only: they are the blob store's inodes.
        assert_eq!(std::fs::metadata(cur.join("bin/run.sh")).unwrap().permissions().mode() & 0o777, 0o555);
        // The signed documents that installed it are kept with it, and its manifest reads back.
        let docs = app.signed_docs(&names[3]).unwrap();
        assert_eq!(app.manifest(&names[3]).unwrap(), dockfra_common::bundle::Manifest::parse(&docs.manifest).unwrap());
        let removed = app.prune(2, &[]);
        assert_eq!(removed, vec![names[0].clone(), names[1].clone()]);
        assert_eq!(app.list().len(), 2);
        app.quarantine(&names[2]).unwrap();
        assert!(root.join("app/quarantine").join(&names[2]).is_dir());
        assert_eq!(app.list().len(), 1);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_blob_leaves_nothing_behind() {
        let root = tmpdir("missing");
        let blobs = root.join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let app = AppReleases::new(root.join("app"));
        let mut m = manifest(1, b"x", &blobs);
        m.files[0].sha256 = "b".repeat(64);
        assert!(app.materialize(&crate::drivers::verified(m), &blobs).is_err());
        assert!(app.list().is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(app.releases_dir()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(app.current().is_none());
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn inode(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    }

    fn file(path: &str, content: &[u8], mode: u32) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode,
            size: content.len() as u64,
            sha256: dockfra_common::sha256_hex(content),
            link: None,
        }
    }

    /// A blob as the store takes it in: checked, stamped, read-only.
    fn store(blobs: &Path, content: &[u8]) -> String {
        let digest = dockfra_common::sha256_hex(content);
        let mut w = crate::blobs::BlobWriter::new(blobs.to_path_buf(), [(digest.clone(), content.len() as u64)].into())
            .unwrap();
        w.chunk(&digest, 0, content, true).unwrap();
        w.finish().unwrap();
        digest
    }

    #[test]
    fn unchanged_files_are_links_to_the_store_not_copies() {
        let root = tmpdir("links");
        let blobs = root.join("blobs");
        let app = AppReleases::new(root.join("app"));
        let (a, b1, b2) = (b"same in both".as_slice(), b"first".as_slice(), b"second".as_slice());
        let da = store(&blobs, a);
        store(&blobs, b1);
        store(&blobs, b2);
        let release = |seq: u64, b: &[u8]| {
            let m = Manifest {
                sequence: seq,
                files: vec![file("a.txt", a, 0o644), file("b.txt", b, 0o644), file("run.sh", a, 0o755)],
                ..manifest(seq, b"x", &blobs)
            };
            app.materialize(&crate::drivers::verified(m), &blobs).unwrap()
        };
        let (r1, r2) = (release(1, b1), release(2, b2));
        let (d1, d2) = (app.dir(&r1), app.dir(&r2));
        assert_eq!(inode(&d1.join("a.txt")), inode(&blobs.join(&da)), "a first release links, it does not copy");
        assert_eq!(inode(&d2.join("a.txt")), inode(&d1.join("a.txt")), "an unchanged file is the same inode");
        assert_ne!(inode(&d2.join("b.txt")), inode(&d1.join("b.txt")));
        assert_eq!(std::fs::read(d2.join("b.txt")).unwrap(), b2);
        // The same content with another mode cannot share the inode: it is a copy of its own.
        assert_ne!(inode(&d1.join("run.sh")), inode(&d1.join("a.txt")));
        assert_eq!(std::fs::read(d1.join("run.sh")).unwrap(), a);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&d1.join("a.txt")), mode(&d1.join("run.sh"))), (0o444, 0o555));
        assert!(app.changed_files(&r1).is_empty() && app.changed_files(&r2).is_empty());
        // Linked files do not count twice in the disk figures; copies do.
        assert_eq!(app.bytes() - dir_sizes(&app), 2 * a.len() as u64, "run.sh, copied in each release");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Bytes of the directories alone under releases/ (what `bytes` counts besides files).
    fn dir_sizes(app: &AppReleases) -> u64 {
        fn walk(p: &Path) -> u64 {
            let m = std::fs::symlink_metadata(p).unwrap();
            if m.is_dir() {
                m.len() + std::fs::read_dir(p).unwrap().flatten().map(|e| walk(&e.path())).sum::<u64>()
            } else if m.is_symlink()
                || p.to_string_lossy().contains(SIGNED_DIR)
                || p.extension().is_some_and(|e| e == "json")
            {
                m.len()
            } else {
                0
            }
        }
        walk(&app.releases_dir())
    }

    #[test]
    fn a_write_through_a_link_is_caught_and_the_blob_never_used_again() {
        use std::os::unix::fs::PermissionsExt;
        let root = tmpdir("written");
        let blobs = root.join("blobs");
        let app = AppReleases::new(root.join("app"));
        let content = b"original content".as_slice();
        let digest = store(&blobs, content);
        let m = Manifest { files: vec![file("data.txt", content, 0o644)], ..manifest(1, b"x", &blobs) };
        let r1 = app.materialize(&crate::drivers::verified(m.clone()), &blobs).unwrap();
        // The app (as root, which read-only modes do not stop) writes into its release file,
        // and so into the blob.
        let path = app.dir(&r1).join("data.txt");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, b"ORIGINAL CONTENT").unwrap();
        assert_eq!(app.changed_files(&r1), vec!["data.txt".to_string()]);
        // A release that needs the same content refuses the blob and drops it from the store.
        let m2 = Manifest { sequence: 2, ..m };
        let err = app.materialize(&crate::drivers::verified(m2), &blobs).unwrap_err();
        assert!(err.is_blob_corrupt(), "{err}");
        assert!(!blobs.join(&digest).exists(), "a changed blob leaves the store");
        assert_eq!(app.list().len(), 1, "nothing half-made is left");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_blob_without_a_stamp_is_hashed_once_then_linked() {
        use std::os::unix::fs::MetadataExt;
        let root = tmpdir("unstamped");
        let blobs = root.join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let content = b"from an older agent".as_slice();
        let digest = dockfra_common::sha256_hex(content);
        std::fs::write(blobs.join(&digest), content).unwrap(); // no stamp, writable
        let dest = root.join("out");
        assert_eq!(place(&blobs.join(&digest), &dest, &digest, content.len() as u64, 0o644).unwrap(), Placed::Linked);
        let meta = std::fs::metadata(blobs.join(&digest)).unwrap();
        assert!(crate::blobs::intact(&meta, &digest, content.len() as u64), "stamped once checked");
        assert_eq!(meta.nlink(), 2);
        // A blob that does not hash to its name is refused, and nothing is placed.
        let bad = "0".repeat(64);
        std::fs::write(blobs.join(&bad), b"whatever").unwrap();
        let e = place(&blobs.join(&bad), &root.join("out2"), &bad, 8, 0o644).unwrap_err();
        assert!(e.to_string().contains("changed on disk"), "{e}");
        assert!(!root.join("out2").exists() && !blobs.join(&bad).exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
