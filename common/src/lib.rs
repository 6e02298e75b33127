//! dockfra-common: what both the coordinator and the agent must agree on — the project config,
//! the compose model, the bundle format and its signatures, TLS identities and the wire types.
//! It must stay lean: nothing here may pull SQLite, a web framework or the converters.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod compose;
pub mod config;
pub mod identity;
pub mod paths;
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

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Write a file atomically: temp file in the same dir, fsync, rename, fsync the dir.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// fsync a directory so a rename inside it is durable.
pub fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
