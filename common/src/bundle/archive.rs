//! The offline bundle: one tar with the rotation chain, the signed documents, then the
//! blobs — written as a stream and read with the documents verified before any blob.
use std::collections::BTreeSet;
use std::io::Read;

use serde::{Deserialize, Serialize};

use super::*;
use crate::paths::Digest;
use crate::proto;

/// Names inside an exported bundle archive. The documents come first so they can be
/// verified before any blob is read; the rotation chain (optional) comes before them.
pub const ARCHIVE_ROTATIONS: &str = "keys.json";
pub const ARCHIVE_DESIRED: &str = "desired.json";
pub const ARCHIVE_DESIRED_SIG: &str = "desired.sig";
pub const ARCHIVE_MANIFEST: &str = "manifest.json";
pub const ARCHIVE_MANIFEST_SIG: &str = "manifest.sig";
pub const ARCHIVE_BLOBS: &str = "blobs/";

/// The rotation chain as the archive carries it.
#[derive(Serialize, Deserialize)]
struct ArchivedRotation {
    statement: String,
    old_signature: String,
    new_signature: String,
}

/// Write an offline bundle archive: the rotation chain (if any), the four documents, then
/// each blob, read by `open_blob`. Streams: nothing but one blob's buffer is held in memory.
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
    let mut docs: Vec<(&str, Vec<u8>)> = Vec::new();
    if !a.rotations.is_empty() {
        let chain: Vec<ArchivedRotation> = a
            .rotations
            .iter()
            .map(|r| ArchivedRotation {
                statement: hex::encode(&r.statement),
                old_signature: hex::encode(&r.old_signature),
                new_signature: hex::encode(&r.new_signature),
            })
            .collect();
        docs.push((ARCHIVE_ROTATIONS, serde_json::to_vec(&chain).expect("chain serializes")));
    }
    docs.push((ARCHIVE_DESIRED, sd.payload.clone()));
    docs.push((ARCHIVE_DESIRED_SIG, sd.signature.clone()));
    docs.push((ARCHIVE_MANIFEST, sm.manifest.clone()));
    docs.push((ARCHIVE_MANIFEST_SIG, sm.signature.clone()));
    for (name, data) in docs {
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

/// Read an offline archive. The documents are collected (size-limited) and handed to
/// `on_docs`, which must verify them and return the blobs it will accept with their sizes;
/// then each blob is streamed to `on_blob` (which must hash-check it). Any entry that is not
/// a regular file with an expected name — links, devices, directories, unknown names, a blob
/// not named by the manifest, one larger than the manifest says, one given twice — refuses
/// the archive.
pub fn read_archive<R: Read>(
    input: R,
    mut on_docs: impl FnMut(proto::Assignment) -> Result<std::collections::BTreeMap<String, u64>, BundleError>,
    mut on_blob: impl FnMut(&Digest, &mut dyn Read) -> Result<(), BundleError>,
) -> Result<(), BundleError> {
    let mut ar = tar::Archive::new(input);
    let mut docs: [Option<Vec<u8>>; 4] = Default::default();
    let mut rotations: Vec<proto::SignedKeyRotation> = Vec::new();
    let mut accepted: Option<std::collections::BTreeMap<String, u64>> = None;
    let mut seen = BTreeSet::new();
    let entries = ar.entries().map_err(|e| BundleError::Archive(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BundleError::Archive(e.to_string()))?;
        let name: String = String::from_utf8_lossy(&entry.path_bytes()).chars().take(300).collect();
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
        let read_doc = |entry: &mut tar::Entry<'_, R>| -> Result<Vec<u8>, BundleError> {
            if entry.size() > MAX_DOC_SIZE {
                return Err(BundleError::Limit(format!("{name} is over 16 MiB")));
            }
            let mut buf = Vec::new();
            entry.take(MAX_DOC_SIZE + 1).read_to_end(&mut buf).map_err(|e| BundleError::Archive(e.to_string()))?;
            if buf.len() as u64 > MAX_DOC_SIZE {
                return Err(BundleError::Limit(format!("{name} is over 16 MiB")));
            }
            Ok(buf)
        };
        if name == ARCHIVE_ROTATIONS {
            if accepted.is_some() || docs.iter().any(Option::is_some) || !rotations.is_empty() {
                return Err(BundleError::Archive(format!("entry {name:?} is out of place or repeated")));
            }
            let chain: Vec<ArchivedRotation> = serde_json::from_slice(&read_doc(&mut entry)?)
                .map_err(|e| BundleError::Archive(format!("{name}: {e}")))?;
            let unhex = |s: &str| hex::decode(s).map_err(|e| BundleError::Archive(format!("{name}: {e}")));
            for r in chain {
                rotations.push(proto::SignedKeyRotation {
                    statement: unhex(&r.statement)?,
                    old_signature: unhex(&r.old_signature)?,
                    new_signature: unhex(&r.new_signature)?,
                });
            }
            continue;
        }
        if let Some(i) = slot {
            if accepted.is_some() || docs[i].is_some() {
                return Err(BundleError::Archive(format!("entry {name:?} is out of place or repeated")));
            }
            docs[i] = Some(read_doc(&mut entry)?);
            if docs.iter().all(Option::is_some) {
                let [d, ds, m, ms] = std::mem::take(&mut docs).map(Option::unwrap_or_default);
                let a = proto::Assignment {
                    desired: Some(proto::SignedDesiredState { payload: d, signature: ds }),
                    manifest: Some(proto::SignedManifest { manifest: m, signature: ms }),
                    rotations: std::mem::take(&mut rotations),
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
        let Some(&size) = ok.get(digest.as_str()) else {
            return Err(BundleError::Archive(format!("blob {digest} is not named by the manifest")));
        };
        if entry.size() > size {
            return Err(BundleError::Archive(format!(
                "blob {digest} is {} bytes, the manifest says {size}: endless data refused",
                entry.size()
            )));
        }
        if !seen.insert(digest.as_str().to_string()) {
            return Err(BundleError::Archive(format!("blob {digest} is given twice")));
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
    use super::super::testkit::*;
    use super::*;

    #[test]
    fn archive_roundtrip_and_refusals() {
        let key = key();
        let mut a = signed(&key, 5, Action::Deploy, 100);
        a.rotations = vec![sign_rotation(&key, &key, 1, 1)];
        let digest = "a".repeat(64);
        let buf = write_archive(Vec::new(), &a, std::slice::from_ref(&digest), |_| {
            Ok((3, Box::new(&b"abc"[..]) as Box<dyn Read>))
        })
        .unwrap();
        let mut got = Vec::new();
        let mut docs = None;
        read_archive(
            &buf[..],
            |a| {
                docs = Some(a);
                Ok([(digest.clone(), 3)].into_iter().collect())
            },
            |d, r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v).unwrap();
                got.push((d.to_string(), v));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, vec![(digest.clone(), b"abc".to_vec())]);
        assert_eq!(docs.unwrap(), a, "the documents and the rotation chain come back as written");

        // A blob longer than the manifest says is refused before it is read.
        let r = read_archive(&buf[..], |_| Ok([(digest.clone(), 2)].into_iter().collect()), |_, _| Ok(()));
        assert!(matches!(r, Err(BundleError::Archive(m)) if m.contains("endless data")));

        // A symlink entry refuses the whole archive.
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        tar.append_link(&mut h, "blobs/x", "/etc/passwd").unwrap();
        let evil = tar.into_inner().unwrap();
        let r = read_archive(&evil[..], |_| Ok(Default::default()), |_, _| Ok(()));
        assert!(matches!(r, Err(BundleError::Archive(m)) if m.contains("Symlink")));
    }
}
