//! The bundle format: a signed manifest naming content-addressed blobs, and a signed desired
//! state naming the manifest. This module owns the types, their canonical bytes, verification
//! and the checks every manifest must pass before anything touches the disk. It never writes
//! a release; the agent's release store does, from a manifest this module accepted.
use std::collections::BTreeSet;
use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::config::{HealthSpec, Platform, ServiceManager};
use crate::paths::{check_component, symlink_stays_inside, Digest, SafeRelPath, UnsafePath};
use crate::proto;
use crate::sign::{self, SignError};

pub const FORMAT: u32 = 1;
/// Limits a manifest must respect (a bundle is refused whole when over).
pub const MAX_FILES: usize = 20_000;
pub const MAX_FILE_SIZE: u64 = 4 << 30;
pub const MAX_TOTAL_SIZE: u64 = 16 << 30;
/// Largest manifest / desired state document accepted.
pub const MAX_DOC_SIZE: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Symlink,
}

/// One entry of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits only (0o777 at most: no setuid, setgid, sticky, or type bits).
    pub mode: u32,
    pub size: u64,
    /// Hex sha256 of the content (files); empty for symlinks.
    pub sha256: String,
    /// Symlink target, relative, inside the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// What the `ssh_raw` driver needs, copied from the target's config at build time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRawSpec {
    pub deploy_path: Option<String>,
    pub service_manager: ServiceManager,
    pub service_name: Option<String>,
    pub pre_script: Option<String>,
    pub post_script: Option<String>,
}

/// What the `docker_compose` driver needs. The compose file is the coordinator's resolved
/// rendering (interpolated with `.env` and the target's env, `$` re-escaped), shipped in the
/// bundle at `file`, so the agent's host needs no env of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerComposeSpec {
    /// `docker compose -p` project name.
    pub project: String,
    /// Path of the resolved compose file inside the release.
    pub file: String,
    /// How long `up --wait` may take, in seconds.
    pub wait_timeout_secs: u64,
    /// Images carried in the bundle (`docker save` archives as blobs), loaded by the agent
    /// into an engine that lacks them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageRef>,
}

/// One image carried in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// The reference the compose file uses, e.g. `shop/web:1.4`.
    pub name: String,
    /// The engine's image id (`sha256:…`): an engine that has it needs no load.
    pub id: String,
    /// Blob holding the `docker save` archive.
    pub sha256: String,
    pub size: u64,
}

/// What the `podman` driver needs: the resolved compose file (run by `podman-compose`, or
/// the source of the units), and in Quadlet mode the units rendered from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodmanSpec {
    /// Project name, compose file, wait timeout and carried images, as for `docker_compose`.
    pub compose: DockerComposeSpec,
    /// Quadlet mode: unit file names (`shop-web.container`, …), each shipped in the release
    /// under [`QUADLET_DIR`] and installed into the systemd unit dir for Quadlet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quadlet_units: Vec<String>,
    /// The compose services: each must have a running container for the release to be up.
    pub services: Vec<String>,
    pub use_quadlet: bool,
    pub rootless: bool,
    #[serde(default)]
    pub start_machine: bool,
}

/// Where a release carries its Quadlet units.
pub const QUADLET_DIR: &str = ".dockfra/quadlet";

/// A Quadlet unit file name dockfra may install: `NAME.container|.network|.volume|.pod`, NAME
/// of `[A-Za-z0-9_.@-]` starting with an alphanumeric (no path, no hidden file).
pub fn is_quadlet_unit_name(name: &str) -> bool {
    let Some((stem, ext)) = name.rsplit_once('.') else { return false };
    matches!(ext, "container" | "network" | "volume" | "pod")
        && stem.len() <= 200
        && stem.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && stem.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
}

/// Directory inside a release that holds what dockfra renders (never an app file).
pub const RENDERED_DIR: &str = ".dockfra";

/// The signed description of one release for one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub target: String,
    pub app: String,
    pub version: String,
    pub sequence: u64,
    pub platform: Platform,
    pub created_unix: u64,
    pub files: Vec<FileEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_raw: Option<SshRawSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_compose: Option<DockerComposeSpec>,
    /// `swarm`: the same shape; `project` is the stack name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<DockerComposeSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub podman: Option<PodmanSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    pub keep_releases: u32,
    /// The target's `os:`: the agent refuses the release on a host that does not match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Deploy,
    Rollback,
}

/// What a target should run now. Signed with an expiry; its sequence only grows per target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub target: String,
    pub app: String,
    pub action: Action,
    pub sequence: u64,
    pub bundle_id: String,
    pub deployment_id: String,
    pub issued_unix: u64,
    pub expires_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Signature(#[from] SignError),
    #[error("{what} is not valid: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("bundle is for target {found:?}, this agent is {expected:?}")]
    WrongTarget { expected: String, found: String },
    #[error("desired state expired at {expires_unix} (now {now}): refusing a stale order")]
    Expired { expires_unix: u64, now: u64 },
    #[error("desired state sequence {got} is not above the last one applied ({last}): replay refused")]
    Replay { got: u64, last: u64 },
    #[error("release sequence {got} is not above the current one ({last}) and the order is not a signed rollback")]
    OldRelease { got: u64, last: u64 },
    #[error("desired state names bundle {named}, manifest is {actual}")]
    BundleMismatch { named: String, actual: String },
    #[error("manifest entry {path:?}: {source}")]
    Path { path: String, source: UnsafePath },
    #[error("manifest entry {path:?}: {reason}")]
    Entry { path: String, reason: String },
    #[error("manifest is over a limit: {0}")]
    Limit(String),
    #[error("blob {digest} does not match its content hash (got {actual})")]
    BlobHash { digest: String, actual: String },
    #[error("bundle archive: {0}")]
    Archive(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl Manifest {
    /// Canonical bytes: compact JSON of the struct (fixed field order, files sorted by path).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        serde_json::to_vec(&m).expect("manifest serializes")
    }

    /// Bundle id: sha256 of the canonical manifest bytes.
    pub fn id(&self) -> String {
        crate::sha256_hex(&self.canonical_bytes())
    }

    /// Name of the release directory this manifest materializes into.
    pub fn release_name(&self) -> String {
        release_name(self.sequence, &self.id())
    }

    /// Every check that needs no key and no disk: paths, kinds, modes, digests, limits, names.
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.format != FORMAT {
            return Err(BundleError::Malformed {
                what: "manifest",
                reason: format!("unsupported format {}", self.format),
            });
        }
        check_component(&self.app).map_err(|e| BundleError::Path { path: self.app.clone(), source: e })?;
        if self.keep_releases == 0 {
            return Err(BundleError::Malformed { what: "manifest", reason: "keep_releases must be at least 1".into() });
        }
        if self.files.len() > MAX_FILES {
            return Err(BundleError::Limit(format!("{} files (at most {MAX_FILES})", self.files.len())));
        }
        let mut seen = BTreeSet::new();
        let mut total = 0u64;
        for f in &self.files {
            let p = SafeRelPath::new(&f.path).map_err(|e| BundleError::Path { path: f.path.clone(), source: e })?;
            if !seen.insert(p.as_str().to_string()) {
                return Err(BundleError::Entry { path: f.path.clone(), reason: "listed twice".into() });
            }
            if f.mode & !0o777 != 0 {
                return Err(BundleError::Entry {
                    path: f.path.clone(),
                    reason: format!("mode {:o} has special bits (setuid/setgid/sticky/device) — refused", f.mode),
                });
            }
            match f.kind {
                EntryKind::File => {
                    Digest::new(&f.sha256).map_err(|e| BundleError::Path { path: f.path.clone(), source: e })?;
                    if f.size > MAX_FILE_SIZE {
                        return Err(BundleError::Limit(format!(
                            "{} is {} bytes (at most {MAX_FILE_SIZE})",
                            f.path, f.size
                        )));
                    }
                    total = total.saturating_add(f.size);
                }
                EntryKind::Symlink => {
                    let link = f.link.as_deref().ok_or_else(|| BundleError::Entry {
                        path: f.path.clone(),
                        reason: "symlink without a target".into(),
                    })?;
                    // Link checks compare names case-insensitively; only for ASCII is that exact
                    // on every filesystem (Unicode normalization differs between them).
                    if !f.path.is_ascii() || !link.is_ascii() {
                        return Err(BundleError::Entry {
                            path: f.path.clone(),
                            reason: "symlink paths and targets must be ASCII".into(),
                        });
                    }
                    symlink_stays_inside(&p, link)
                        .map_err(|e| BundleError::Path { path: f.path.clone(), source: e })?;
                }
            }
        }
        // A file may not live under a path that is itself a file or a symlink (that would let a
        // symlink entry redirect a later write outside the release). Compared case-insensitively:
        // on a case-insensitive filesystem (macOS) `D/x` is written through a symlink `d`.
        let folded: BTreeSet<String> = seen.iter().map(|p| p.to_lowercase()).collect();
        let links: BTreeSet<String> =
            self.files.iter().filter(|f| f.kind == EntryKind::Symlink).map(|f| f.path.to_lowercase()).collect();
        for f in &self.files {
            let lower = f.path.to_lowercase();
            for (i, _) in lower.match_indices('/') {
                let prefix = &lower[..i];
                if folded.contains(prefix) {
                    return Err(BundleError::Entry {
                        path: f.path.clone(),
                        reason: format!("its parent {prefix:?} is a file or symlink"),
                    });
                }
            }
            // Lexical resolution is only the truth when no step of a link's target is itself a
            // link (`b -> .` plus `a -> b/..` escapes), so a target may not pass through a link.
            if let (EntryKind::Symlink, Some(to)) = (&f.kind, &f.link) {
                let mut at: Vec<String> = lower.split('/').map(String::from).collect();
                at.pop();
                for comp in to.to_lowercase().split('/') {
                    match comp {
                        "" | "." => continue,
                        ".." => {
                            at.pop();
                        }
                        name => at.push(name.to_string()),
                    }
                    if links.contains(&at.join("/")) {
                        return Err(BundleError::Entry {
                            path: f.path.clone(),
                            reason: format!("symlink target {to:?} passes through another symlink"),
                        });
                    }
                }
            }
        }
        if let Some(p) = &self.podman {
            for unit in &p.quadlet_units {
                if !is_quadlet_unit_name(unit) {
                    return Err(BundleError::Entry {
                        path: unit.clone(),
                        reason: "not a Quadlet unit name (NAME.container|network|volume|pod)".into(),
                    });
                }
                let path = format!("{QUADLET_DIR}/{unit}");
                if !self.files.iter().any(|f| f.path == path && f.kind == EntryKind::File) {
                    return Err(BundleError::Entry { path, reason: "Quadlet unit listed but not carried".into() });
                }
            }
        }
        for img in self.compose_specs().flat_map(|d| &d.images) {
            Digest::new(&img.sha256).map_err(|e| BundleError::Path { path: img.name.clone(), source: e })?;
            if img.name.is_empty()
                || img.name.len() > 512
                || img.name.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(BundleError::Entry {
                    path: img.name.clone(),
                    reason: "not a valid image reference".into(),
                });
            }
            total = total.saturating_add(img.size);
        }
        if total > MAX_TOTAL_SIZE {
            return Err(BundleError::Limit(format!("{total} bytes in all (at most {MAX_TOTAL_SIZE})")));
        }
        Ok(())
    }

    /// Distinct blob digests this manifest needs (files and carried images).
    pub fn digests(&self) -> Vec<String> {
        self.blob_sizes().into_keys().collect()
    }

    /// Every blob this manifest needs, with the size it must have.
    pub fn blob_sizes(&self) -> std::collections::BTreeMap<String, u64> {
        let files = self.files.iter().filter(|f| f.kind == EntryKind::File).map(|f| (f.sha256.clone(), f.size));
        let images = self.compose_specs().flat_map(|d| d.images.iter().map(|i| (i.sha256.clone(), i.size)));
        files.chain(images).collect()
    }

    /// The compose-shaped sections (docker_compose, swarm, podman) this manifest has.
    pub fn compose_specs(&self) -> impl Iterator<Item = &DockerComposeSpec> {
        self.docker_compose.iter().chain(&self.swarm).chain(self.podman.iter().map(|p| &p.compose))
    }
}

/// `<sequence>-<first 12 hex of the bundle id>`.
pub fn release_name(sequence: u64, bundle_id: &str) -> String {
    format!("{sequence}-{}", &bundle_id[..bundle_id.len().min(12)])
}

/// A verified pair: the desired state and the manifest it names.
#[derive(Debug, Clone)]
pub struct Verified {
    pub desired: DesiredState,
    pub manifest: Manifest,
    pub bundle_id: String,
}

/// What the agent remembers between orders, for replay checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watermark {
    pub last_desired_sequence: u64,
    pub current_release_sequence: u64,
}

/// Sign a manifest and a desired state (coordinator side).
pub fn sign_assignment(key: &sign::SigningKey, desired: &DesiredState, manifest_bytes: Vec<u8>) -> proto::Assignment {
    let payload = serde_json::to_vec(desired).expect("desired state serializes");
    proto::Assignment {
        desired: Some(proto::SignedDesiredState { signature: key.sign(&payload), payload }),
        manifest: Some(proto::SignedManifest { signature: key.sign(&manifest_bytes), manifest: manifest_bytes }),
    }
}

/// Verify an assignment for `me`: both signatures, expiry, target, replay and the manifest's own
/// checks. Nothing is written; callers act only on the returned [`Verified`].
pub fn verify_assignment(
    a: &proto::Assignment,
    signing_key: &[u8],
    me: &str,
    mark: Watermark,
    now: u64,
) -> Result<Verified, BundleError> {
    let sd =
        a.desired.as_ref().ok_or(BundleError::Malformed { what: "assignment", reason: "no desired state".into() })?;
    let sm = a.manifest.as_ref().ok_or(BundleError::Malformed { what: "assignment", reason: "no manifest".into() })?;
    if sd.payload.len() as u64 > MAX_DOC_SIZE || sm.manifest.len() as u64 > MAX_DOC_SIZE {
        return Err(BundleError::Limit("manifest or desired state over 16 MiB".into()));
    }
    sign::verify(signing_key, &sd.payload, &sd.signature, "desired state")?;
    sign::verify(signing_key, &sm.manifest, &sm.signature, "manifest")?;
    let desired: DesiredState = serde_json::from_slice(&sd.payload)
        .map_err(|e| BundleError::Malformed { what: "desired state", reason: e.to_string() })?;
    let manifest: Manifest = serde_json::from_slice(&sm.manifest)
        .map_err(|e| BundleError::Malformed { what: "manifest", reason: e.to_string() })?;
    let bundle_id = crate::sha256_hex(&sm.manifest);
    if desired.target != me {
        return Err(BundleError::WrongTarget { expected: me.into(), found: desired.target });
    }
    if manifest.target != me {
        return Err(BundleError::WrongTarget { expected: me.into(), found: manifest.target });
    }
    if manifest.app != desired.app {
        return Err(BundleError::Malformed {
            what: "desired state",
            reason: format!("names app {:?}, the manifest is for {:?}", desired.app, manifest.app),
        });
    }
    if desired.bundle_id != bundle_id {
        return Err(BundleError::BundleMismatch { named: desired.bundle_id, actual: bundle_id });
    }
    if desired.expires_unix <= now {
        return Err(BundleError::Expired { expires_unix: desired.expires_unix, now });
    }
    if desired.sequence <= mark.last_desired_sequence {
        return Err(BundleError::Replay { got: desired.sequence, last: mark.last_desired_sequence });
    }
    if desired.action == Action::Deploy && manifest.sequence <= mark.current_release_sequence {
        return Err(BundleError::OldRelease { got: manifest.sequence, last: mark.current_release_sequence });
    }
    manifest.validate()?;
    Ok(Verified { desired, manifest, bundle_id })
}

// ------------------------------------------------------------------ offline archive

/// Names inside an exported bundle archive. The documents come first so they can be
/// verified before any blob is read.
pub const ARCHIVE_DESIRED: &str = "desired.json";
pub const ARCHIVE_DESIRED_SIG: &str = "desired.sig";
pub const ARCHIVE_MANIFEST: &str = "manifest.json";
pub const ARCHIVE_MANIFEST_SIG: &str = "manifest.sig";
pub const ARCHIVE_BLOBS: &str = "blobs/";

/// Write an offline bundle archive: the four documents, then each blob, read by `open_blob`.
pub fn write_archive<W: std::io::Write>(
    out: W,
    a: &proto::Assignment,
    blobs: &[String],
    mut open_blob: impl FnMut(&str) -> std::io::Result<(u64, Box<dyn Read>)>,
) -> Result<W, BundleError> {
    let io = |path: &str| {
        let path = path.to_string();
        move |source| BundleError::Io { path, source }
    };
    let mut tar = tar::Builder::new(out);
    let sd = a.desired.as_ref().ok_or(BundleError::Archive("no desired state".into()))?;
    let sm = a.manifest.as_ref().ok_or(BundleError::Archive("no manifest".into()))?;
    for (name, data) in [
        (ARCHIVE_DESIRED, &sd.payload),
        (ARCHIVE_DESIRED_SIG, &sd.signature),
        (ARCHIVE_MANIFEST, &sm.manifest),
        (ARCHIVE_MANIFEST_SIG, &sm.signature),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data.as_slice()).map_err(io(name))?;
    }
    for d in blobs {
        let name = format!("{ARCHIVE_BLOBS}{d}");
        let (size, reader) = open_blob(d).map_err(io(&name))?;
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, &name, reader).map_err(io(&name))?;
    }
    tar.into_inner().map_err(io("archive"))
}

/// Read an offline archive. The four documents are collected (size-limited) and handed to
/// `on_docs`, which must verify them and return the digests it will accept; then each blob is
/// streamed to `on_blob` (which must hash-check it). Any entry that is not a regular file with
/// an expected name — links, devices, directories, unknown names — refuses the archive.
pub fn read_archive<R: Read>(
    input: R,
    mut on_docs: impl FnMut(proto::Assignment) -> Result<BTreeSet<String>, BundleError>,
    mut on_blob: impl FnMut(&Digest, &mut dyn Read) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut ar = tar::Archive::new(input);
    let mut docs: [Option<Vec<u8>>; 4] = Default::default();
    let mut accepted: Option<BTreeSet<String>> = None;
    let entries = ar.entries().map_err(|e| BundleError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::Archive(e.to_string()))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        let kind = entry.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(BundleError::Archive(format!("entry {name:?} is a {kind:?}, only regular files are allowed")));
        }
        let slot = match name.as_str() {
            ARCHIVE_DESIRED => Some(0),
            ARCHIVE_DESIRED_SIG => Some(1),
            ARCHIVE_MANIFEST => Some(2),
            ARCHIVE_MANIFEST_SIG => Some(3),
            _ => None,
        };
        if let Some(i) = slot {
            if accepted.is_some() || docs[i].is_some() {
                return Err(BundleError::Archive(format!("entry {name:?} is out of place or repeated")));
            }
            if entry.size() > MAX_DOC_SIZE {
                return Err(BundleError::Limit(format!("{name} is over 16 MiB")));
            }
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(|e| BundleError::Archive(e.to_string()))?;
            docs[i] = Some(buf);
            if docs.iter().all(Option::is_some) {
                let [d, ds, m, ms] = std::mem::take(&mut docs).map(Option::unwrap_or_default);
                let a = proto::Assignment {
                    desired: Some(proto::SignedDesiredState { payload: d, signature: ds }),
                    manifest: Some(proto::SignedManifest { manifest: m, signature: ms }),
                };
                accepted = Some(on_docs(a)?);
            }
            continue;
        }
        let Some(hexd) = name.strip_prefix(ARCHIVE_BLOBS) else {
            return Err(BundleError::Archive(format!("unexpected entry {name:?}")));
        };
        let Some(ok) = accepted.as_ref() else {
            return Err(BundleError::Archive(format!("blob {name:?} comes before the signed documents")));
        };
        let digest = Digest::new(hexd).map_err(|e| BundleError::Path { path: name.clone(), source: e })?;
        if !ok.contains(digest.as_str()) {
            return Err(BundleError::Archive(format!("blob {digest} is not named by the manifest")));
        }
        on_blob(&digest, &mut entry)?;
    }
    if accepted.is_none() {
        return Err(BundleError::Archive("the archive lacks the signed desired state and manifest".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: FORMAT,
            target: "t1".into(),
            app: "app".into(),
            version: "v1".into(),
            sequence: 1,
            platform: Platform::SshRaw,
            created_unix: 0,
            files,
            ssh_raw: None,
            docker_compose: None,
            swarm: None,
            podman: None,
            health: None,
            keep_releases: 5,
            os: None,
        }
    }

    fn file(path: &str) -> FileEntry {
        FileEntry { path: path.into(), kind: EntryKind::File, mode: 0o644, size: 1, sha256: "a".repeat(64), link: None }
    }

    fn link(path: &str, to: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 0,
            sha256: String::new(),
            link: Some(to.into()),
        }
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let cases: Vec<(&str, Vec<FileEntry>)> = vec![
            ("dotdot", vec![file("../evil")]),
            ("absolute", vec![file("/etc/passwd")]),
            ("symlink out", vec![link("a", "../../etc")]),
            ("absolute symlink", vec![link("a", "/etc/passwd")]),
            ("file under symlink", vec![link("d", "x"), file("d/f")]),
            ("file under symlink, other case", vec![link("d", "x"), file("D/f")]),
            ("symlink chain escape", vec![link("b", "."), link("a", "b/..")]),
            ("non-ascii symlink", vec![link("caf\u{e9}", "x")]),
            ("symlink through symlink", vec![link("b", "sub"), link("a", "b/x")]),
            ("duplicate", vec![file("a"), file("a")]),
            ("setuid", vec![FileEntry { mode: 0o4755, ..file("a") }]),
            ("device type bits", vec![FileEntry { mode: 0o20644, ..file("a") }]),
            ("bad digest", vec![FileEntry { sha256: "../x".into(), ..file("a") }]),
            ("oversize", vec![FileEntry { size: MAX_FILE_SIZE + 1, ..file("a") }]),
        ];
        for (what, files) in cases {
            assert!(manifest(files).validate().is_err(), "{what} accepted");
        }
        let many: Vec<FileEntry> = (0..=MAX_FILES).map(|i| file(&format!("f{i}"))).collect();
        assert!(matches!(manifest(many).validate(), Err(BundleError::Limit(_))));
        assert!(manifest(vec![file("a/b"), link("l", "a/b")]).validate().is_ok());
    }

    fn signed(key: &sign::SigningKey, seq: u64, action: Action, expires: u64) -> proto::Assignment {
        let m = manifest(vec![file("a")]);
        let bytes = m.canonical_bytes();
        let d = DesiredState {
            target: "t1".into(),
            app: "app".into(),
            action,
            sequence: seq,
            bundle_id: crate::sha256_hex(&bytes),
            deployment_id: "d".into(),
            issued_unix: 0,
            expires_unix: expires,
        };
        sign_assignment(key, &d, bytes)
    }

    #[test]
    fn verification_refuses_what_it_must() {
        let key = sign::SigningKey::from_pkcs8(&sign::SigningKey::generate_pkcs8().unwrap()).unwrap();
        let pk = key.public_key();
        let mark = Watermark::default();
        let a = signed(&key, 5, Action::Deploy, 100);
        verify_assignment(&a, &pk, "t1", mark, 50).unwrap();
        assert!(matches!(verify_assignment(&a, &pk, "t2", mark, 50), Err(BundleError::WrongTarget { .. })));
        assert!(matches!(verify_assignment(&a, &pk, "t1", mark, 100), Err(BundleError::Expired { .. })));
        let seen = Watermark { last_desired_sequence: 5, current_release_sequence: 0 };
        assert!(matches!(verify_assignment(&a, &pk, "t1", seen, 50), Err(BundleError::Replay { .. })));
        let newer = Watermark { last_desired_sequence: 1, current_release_sequence: 1 };
        assert!(matches!(verify_assignment(&a, &pk, "t1", newer, 50), Err(BundleError::OldRelease { .. })));
        let rb = signed(&key, 6, Action::Rollback, 100);
        verify_assignment(&rb, &pk, "t1", newer, 50).unwrap();
        let mut tampered = a.clone();
        tampered.manifest.as_mut().unwrap().manifest[10] ^= 1;
        assert!(matches!(verify_assignment(&tampered, &pk, "t1", mark, 50), Err(BundleError::Signature(_))));
    }

    #[test]
    fn archive_roundtrip_and_refusals() {
        let key = sign::SigningKey::from_pkcs8(&sign::SigningKey::generate_pkcs8().unwrap()).unwrap();
        let a = signed(&key, 5, Action::Deploy, 100);
        let digest = "a".repeat(64);
        let buf = write_archive(Vec::new(), &a, std::slice::from_ref(&digest), |_| {
            Ok((3, Box::new(&b"abc"[..]) as Box<dyn Read>))
        })
        .unwrap();
        let mut got = Vec::new();
        read_archive(
            &buf[..],
            |_a| Ok([digest.clone()].into_iter().collect()),
            |d, r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v).unwrap();
                got.push((d.to_string(), v));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, vec![(digest.clone(), b"abc".to_vec())]);

        // A symlink entry refuses the whole archive.
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, "blobs/x", "/etc/passwd").unwrap();
        let evil = tar.into_inner().unwrap();
        let r = read_archive(&evil[..], |_| Ok(BTreeSet::new()), |_, _| Ok(()));
        assert!(matches!(r, Err(BundleError::Archive(m)) if m.contains("Symlink")));
    }
}
