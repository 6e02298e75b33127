//! Agent upgrades (`agent upgrade`, a fleet deploy with action `upgrade`): for each chosen
//! target's agent, the `dockfra-agent` binary for its OS and CPU (from a dir like
//! `cross/build`'s dist, checked against its `SHA256SUMS`) becomes a signed one-file release
//! of the app [`AGENT_APP`], ordered like a deploy. The agent stages it on trial and restarts
//! into it (agent/src/upgrade.rs); the deployment ends when the new agent reports success
//! once it reached us, or the old one reports that it came back. A push delivery follows that
//! through the agent's status and never sends the order again (`push.rs`).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tonic::Status;

use dockfra_common::bundle::{self, Action, EntryKind, FileEntry, Manifest, PlatformSpec, SshRawSpec, AGENT_APP};
use dockfra_common::config::{HealthSpec, Target};

use super::{Coordinator, Order};
use crate::builder;
use crate::error::{CoordError, Result};
use crate::store::ReleaseRow;

/// The file names of `cross/build`'s dist an agent reporting (os, arch) takes, best first.
fn triples(os: &str, arch: &str) -> &'static [&'static str] {
    match (os, arch) {
        ("linux", "x86_64") => &["x86_64-unknown-linux-musl", "x86_64-unknown-linux-gnu"],
        ("linux", "aarch64") => &["aarch64-unknown-linux-gnu", "aarch64-unknown-linux-musl"],
        ("linux", "arm") => &["armv7-unknown-linux-gnueabihf"],
        ("macos", "aarch64") => &["aarch64-apple-darwin"],
        ("macos", "x86_64") => &["x86_64-apple-darwin"],
        _ => &[],
    }
}

/// `dir/SHA256SUMS` (sha256sum's format): file name → hex sha256. Every line must parse.
pub fn read_sums(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let file = dir.join("SHA256SUMS");
    let text = std::fs::read_to_string(&file).map_err(|e| {
        anyhow::anyhow!("{}: {e} (agent binaries: a dir with dockfra-agent-<triple> files and their SHA256SUMS, as cross/build writes; --binaries DIR)", file.display())
    })?;
    let mut sums = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (sum, name) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let name = name.trim_start().trim_start_matches('*');
        let ok = sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty();
        if !ok || name.contains('/') {
            anyhow::bail!("{}: line {}: expected `<sha256>  <file name>`", file.display(), i + 1);
        }
        sums.insert(name.to_string(), sum.to_ascii_lowercase());
    }
    Ok(sums)
}

/// The binary for an agent with these facts: its path and sha256, checked against
/// SHA256SUMS. `Err` says what is missing or wrong.
fn binary_for(dir: &Path, facts: &serde_json::Value) -> std::result::Result<(std::path::PathBuf, String), String> {
    let s = |k: &str| facts[k].as_str().unwrap_or_default().to_string();
    let (os, arch) = (s("os"), s("arch"));
    let sums = read_sums(dir).map_err(|e| e.to_string())?;
    let wanted = triples(&os, &arch);
    if wanted.is_empty() {
        return Err(format!("no dockfra-agent build for {os}/{arch} (the agent's last reported facts)"));
    }
    let Some((name, sum)) =
        wanted.iter().map(|t| format!("dockfra-agent-{t}")).find_map(|n| sums.get(&n).map(|s| (n, s.clone())))
    else {
        return Err(format!(
            "{} lists none of {} (for {os}/{arch})",
            dir.join("SHA256SUMS").display(),
            wanted.iter().map(|t| format!("dockfra-agent-{t}")).collect::<Vec<_>>().join(", ")
        ));
    };
    let path = dir.join(&name);
    let actual = dockfra_common::sha256_file(&path).map(|(h, _)| h).map_err(|e| format!("{}: {e}", path.display()))?;
    if actual != sum {
        return Err(format!("{}: sha256 {actual}, but SHA256SUMS says {sum}: not sending it", path.display()));
    }
    Ok((path, sum))
}

impl Coordinator {
    /// Order an upgrade of `target_id`'s agent to the binary for it in `dir`. `None`: it
    /// runs that binary already.
    pub(super) async fn start_upgrade(
        &self,
        target_id: &str,
        dir: &Path,
        trial: Duration,
        order: &Order<'_>,
    ) -> std::result::Result<Option<(Target, String)>, Status> {
        let (_, target) = self.target(target_id)?;
        let _lock = self.take_target(&target, order)?;
        // An upgrade takes the target's desired state: it must not silently replace an order
        // that is still open.
        let open = self.store().open_deployments(Some(&target.id))?;
        if let Some(d) = open.iter().find(|d| d.status != "exporting") {
            return Err(CoordError::Precondition(format!(
                "target {target_id:?} has an open {} ({}, {}): upgrade its agent once it has ended",
                d.action, d.id, d.status
            ))
            .into());
        }
        let agent = target.agent_name().to_string();
        let row = self.store().agent(&agent)?.ok_or_else(|| {
            CoordError::Precondition(format!("target {target_id:?} has no enrolled agent ({agent:?}) to upgrade"))
        })?;
        let facts = &row.facts;
        let version = facts["agent_version"].as_str().unwrap_or("an unknown version");
        let can = facts["features"].as_array().is_some_and(|f| f.iter().any(|x| x == bundle::AGENT_UPGRADE));
        if !can {
            return Err(CoordError::Precondition(format!(
                "agent {agent:?} runs dockfra-agent {version}, which cannot upgrade itself: install the new one on its host \
                 (`dockfra-coord agent install {target_id}`, the .deb, or brew)"
            ))
            .into());
        }
        let (path, sha) =
            binary_for(dir, facts).map_err(|why| CoordError::Precondition(format!("agent {agent:?}: {why}")))?;
        if facts["binary_sha256"].as_str() == Some(sha.as_str()) {
            return Ok(None);
        }
        let this = self.clone();
        let (t, a) = (target.clone(), agent.clone());
        let row = tokio::task::spawn_blocking(move || this.build_upgrade(&t, &a, &path, &sha, trial))
            .await
            .map_err(|e| CoordError::internal(anyhow::anyhow!("build task: {e}")))??;
        let id = self.queue(&target, &row, Action::Deploy, row.sequence, true, order)?;
        Ok(Some((target, id)))
    }

    /// The signed one-file release of app [`AGENT_APP`] carrying `binary`.
    fn build_upgrade(
        &self,
        target: &Target,
        agent: &str,
        binary: &Path,
        sha: &str,
        trial: Duration,
    ) -> Result<ReleaseRow> {
        let _blobs = self.inner.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (digest, size) = builder::store_blob(&self.inner.state.blobs(), binary)
            .map_err(|e| CoordError::Precondition(format!("{e:#}")))?;
        if digest != sha {
            return Err(CoordError::Precondition(format!("{} changed while it was read", binary.display())));
        }
        let seq = self.store().next_sequence(agent)?;
        let m = Manifest {
            format: bundle::FORMAT,
            requires: vec![bundle::AGENT_UPGRADE.to_string()],
            target: agent.to_string(),
            app: AGENT_APP.to_string(),
            version: format!("sha256:{}", &sha[..12]),
            sequence: seq,
            created_unix: dockfra_common::now_unix(),
            platform: PlatformSpec::SshRaw(SshRawSpec::default()),
            files: vec![FileEntry {
                path: bundle::AGENT_FILE.to_string(),
                kind: EntryKind::File,
                mode: 0o755,
                size,
                sha256: digest,
                link: None,
            }],
            // The time the new agent has to reach the coordinator.
            health: Some(HealthSpec { start_period: trial.max(Duration::from_secs(1)), ..Default::default() }),
            keep_releases: 2,
            os: None,
        };
        m.validate().map_err(CoordError::internal)?;
        let row = ReleaseRow::of(&target.id, &m);
        self.store().add_release(&row)?;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_chosen_by_os_and_cpu_and_checked_against_its_sum() {
        let dir = std::env::temp_dir().join(format!("dkf-bins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dockfra-agent-armv7-unknown-linux-gnueabihf"), b"arm").unwrap();
        std::fs::write(dir.join("dockfra-agent-x86_64-unknown-linux-musl"), b"x86").unwrap();
        let arm = dockfra_common::sha256_hex(b"arm");
        let sums = format!(
            "{arm}  dockfra-agent-armv7-unknown-linux-gnueabihf\n{}  dockfra-agent-x86_64-unknown-linux-musl\n",
            "0".repeat(64)
        );
        std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
        let facts = |os: &str, arch: &str| serde_json::json!({"os": os, "arch": arch});
        let (p, sha) = binary_for(&dir, &facts("linux", "arm")).unwrap();
        assert_eq!(
            (p.file_name().unwrap().to_str().unwrap(), sha.as_str()),
            ("dockfra-agent-armv7-unknown-linux-gnueabihf", arm.as_str())
        );
        let e = binary_for(&dir, &facts("linux", "x86_64")).unwrap_err();
        assert!(e.contains("but SHA256SUMS says 000") && e.contains("not sending it"), "{e}");
        let e = binary_for(&dir, &facts("macos", "aarch64")).unwrap_err();
        assert!(e.contains("lists none of dockfra-agent-aarch64-apple-darwin"), "{e}");
        let e = binary_for(&dir, &facts("linux", "riscv64")).unwrap_err();
        assert!(e.contains("no dockfra-agent build for linux/riscv64"), "{e}");
        std::fs::write(dir.join("SHA256SUMS"), "nonsense\n").unwrap();
        let e = read_sums(&dir).unwrap_err().to_string();
        assert!(e.contains("SHA256SUMS: line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = read_sums(&dir).unwrap_err().to_string();
        assert!(e.contains("--binaries DIR"), "{e}");
    }
}
