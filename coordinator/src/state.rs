//! The coordinator's state directory: what `init` creates and what every later command reads.
//! Secrets (CA key, signing key, admin key) are written 0600 and never logged.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::ca::{Ca, Subject};
use crate::store::Store;

/// Settings written by `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordSettings {
    /// gRPC address agents and the CLI use (`ADDR:PORT`).
    pub listen: String,
    /// Lifetime of agent certificates; agents renew at two thirds of it.
    pub agent_cert_ttl_secs: u64,
}

pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }
    pub fn blob(&self, digest: &dockfra_common::paths::Digest) -> PathBuf {
        self.blobs().join(digest.as_str())
    }
    pub fn db(&self) -> PathBuf {
        self.path("dockfra.db")
    }
    /// The address the running server actually bound (written by `serve`).
    pub fn serve_addr_file(&self) -> PathBuf {
        self.path("serve.addr")
    }

    fn read(&self, name: &str) -> Result<String> {
        let p = self.path(name);
        std::fs::read_to_string(&p).with_context(|| {
            format!(
                "cannot read {} (is {} a dockfra-coord state dir? run `dockfra-coord init`)",
                p.display(),
                self.root.display()
            )
        })
    }

    pub fn settings(&self) -> Result<CoordSettings> {
        let text = self.read("coordinator.json")?;
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", self.path("coordinator.json").display()))
    }

    pub fn ca(&self) -> Result<Ca> {
        Ok(Ca::load(&self.read("ca.crt")?, &self.read("ca.key")?)?)
    }
    pub fn ca_pem(&self) -> Result<String> {
        self.read("ca.crt")
    }
    pub fn coordinator_identity(&self) -> Result<(String, String)> {
        Ok((self.read("coordinator.crt")?, self.read("coordinator.key")?))
    }
    pub fn admin_identity(&self) -> Result<(String, String)> {
        Ok((self.read("admin.crt")?, self.read("admin.key")?))
    }
    pub fn signing_key(&self) -> Result<dockfra_common::sign::SigningKey> {
        let p = self.path("signing.key");
        let doc = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        Ok(dockfra_common::sign::SigningKey::from_pkcs8(&doc)?)
    }

    /// Create a new state dir. Refuses to touch an existing one (that would orphan every agent).
    pub fn init(&self, listen: &str, agent_cert_ttl: Duration) -> Result<()> {
        if self.path("ca.crt").exists() {
            bail!("{} is already initialized (found ca.crt); refusing to overwrite the CA", self.root.display());
        }
        listen.parse::<std::net::SocketAddr>().with_context(|| format!("--listen {listen:?} is not ADDR:PORT"))?;
        std::fs::create_dir_all(&self.root).with_context(|| format!("cannot create {}", self.root.display()))?;
        set_mode(&self.root, 0o700)?;
        let (ca, ca_key) = Ca::generate()?;
        let coord = ca.issue_with_key(Subject::Coordinator, Duration::from_secs(5 * 365 * 86400))?;
        let admin = ca.issue_with_key(Subject::Admin, Duration::from_secs(5 * 365 * 86400))?;
        let signing = dockfra_common::sign::SigningKey::generate_pkcs8()?;
        let settings =
            CoordSettings { listen: listen.to_string(), agent_cert_ttl_secs: agent_cert_ttl.as_secs().max(10) };
        // ca.crt is written last: its presence is what marks the dir as initialized, so a failed
        // init can simply be run again.
        let files: Vec<(&str, Vec<u8>, u32)> = vec![
            ("ca.key", ca_key.into_bytes(), 0o600),
            ("coordinator.key", coord.key_pem.unwrap_or_default().into_bytes(), 0o600),
            // The server presents its chain (leaf + CA) so a joining agent can pin the CA.
            ("coordinator.crt", format!("{}{}", coord.cert_pem, ca.cert_pem).into_bytes(), 0o644),
            ("admin.key", admin.key_pem.unwrap_or_default().into_bytes(), 0o600),
            ("admin.crt", admin.cert_pem.into_bytes(), 0o644),
            ("signing.key", signing, 0o600),
            ("coordinator.json", serde_json::to_vec_pretty(&settings)?, 0o644),
            ("ca.crt", ca.cert_pem.clone().into_bytes(), 0o644),
        ];
        for (name, bytes, mode) in &files {
            dockfra_common::write_atomic(&self.path(name), bytes, *mode)
                .with_context(|| format!("cannot write {name}"))?;
        }
        std::fs::create_dir_all(self.blobs())?;
        Store::open(&self.db())?;
        Ok(())
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
}

/// Default state dir: `/var/lib/dockfra-coord` for root on Linux, else the user's data dir
/// (`$XDG_DATA_HOME/dockfra-coord`, `~/.local/share/dockfra-coord`, or on macOS
/// `~/Library/Application Support/dockfra-coord`).
pub fn default_state_dir() -> PathBuf {
    dockfra_common::default_state_dir("dockfra-coord")
}
