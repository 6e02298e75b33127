//! Paths that come from outside (bundle entries, release names, digests) are hostile until
//! proven otherwise. This module owns the newtypes that prove it; nothing else may turn a
//! string from a bundle into a filesystem path.
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Why a path from outside was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe path {path:?}: {reason}")]
pub struct UnsafePath {
    pub path: String,
    pub reason: &'static str,
}

fn refuse(path: &str, reason: &'static str) -> UnsafePath {
    UnsafePath { path: path.to_string(), reason }
}

/// A relative path that stays inside whatever root it is joined to: no absolute paths, no
/// `..`, no `.` or empty components, no NUL or backslash, bounded length.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafeRelPath(String);

impl SafeRelPath {
    pub const MAX_LEN: usize = 4096;

    pub fn new(s: &str) -> Result<Self, UnsafePath> {
        if s.is_empty() {
            return Err(refuse(s, "empty path"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(refuse(s, "path too long"));
        }
        if s.starts_with('/') {
            return Err(refuse(s, "absolute path"));
        }
        if s.contains('\0') || s.contains('\\') {
            return Err(refuse(s, "NUL or backslash in path"));
        }
        for part in s.split('/') {
            match part {
                "" => return Err(refuse(s, "empty path component")),
                "." => return Err(refuse(s, "`.` component")),
                ".." => return Err(refuse(s, "`..` component")),
                p if p.len() > 255 => return Err(refuse(s, "path component too long")),
                _ => {}
            }
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Join under `root`. Safe by construction: every component is a normal name.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }
}

impl fmt::Display for SafeRelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Check that a symlink at `link` (relative to a release root) pointing at `target` resolves
/// inside the root, lexically (the release is immutable once materialized, so lexical
/// resolution against the release's own entries is the whole truth).
pub fn symlink_stays_inside(link: &SafeRelPath, target: &str) -> Result<(), UnsafePath> {
    if target.is_empty() || target.starts_with('/') {
        return Err(refuse(target, "symlink target is absolute or empty"));
    }
    if target.contains('\0') {
        return Err(refuse(target, "NUL in symlink target"));
    }
    let mut depth: Vec<&str> = link.as_str().split('/').collect();
    depth.pop(); // the link's own name
    for comp in Path::new(target).components() {
        match comp {
            Component::Normal(n) => depth.push(n.to_str().unwrap_or("?")),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return Err(refuse(target, "symlink leaves the release"));
                }
            }
            _ => return Err(refuse(target, "symlink target is not relative")),
        }
    }
    Ok(())
}

/// A sha256 digest in lowercase hex: the only blob names we accept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn new(s: &str) -> Result<Self, UnsafePath> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Ok(Self(s.to_string()))
        } else {
            Err(refuse(s, "not a lowercase hex sha256 digest"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name usable as one directory entry (app names, release names): `[A-Za-z0-9._-]`, not
/// `.`/`..`, at most 128 bytes.
pub fn check_component(s: &str) -> Result<(), UnsafePath> {
    if s.is_empty() || s.len() > 128 || s == "." || s == ".." {
        return Err(refuse(s, "not a valid name"));
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(refuse(s, "only letters, digits, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rel_paths_refuse_escapes() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a/./b", "a//b", "a\\b", "a\0b", "..", "."] {
            assert!(SafeRelPath::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "a/b/c.txt", ".env", "dir/.hidden", "a..b"] {
            assert!(SafeRelPath::new(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn symlinks_must_stay_inside() {
        let l = SafeRelPath::new("a/b/link").unwrap();
        assert!(symlink_stays_inside(&l, "../c").is_ok());
        assert!(symlink_stays_inside(&l, "../../c").is_ok());
        assert!(symlink_stays_inside(&l, "../../../etc").is_err());
        assert!(symlink_stays_inside(&l, "/etc/passwd").is_err());
        let top = SafeRelPath::new("link").unwrap();
        assert!(symlink_stays_inside(&top, "..").is_err());
        assert!(symlink_stays_inside(&top, "x/../y").is_ok());
    }

    #[test]
    fn digests_and_components() {
        assert!(Digest::new(&"a".repeat(64)).is_ok());
        assert!(Digest::new(&"A".repeat(64)).is_err());
        assert!(Digest::new("../../etc").is_err());
        assert!(check_component("1-abc").is_ok());
        assert!(check_component("..").is_err());
        assert!(check_component("a/b").is_err());
    }
}
