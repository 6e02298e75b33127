//! The coordinator's state directory: what `init` creates and what every later command reads.
//! Secrets (CA key, signing key, operator keys) are written 0600 and never logged.
//!
//! ```text
//! <state>/ca.crt, ca.key                 the CA (agents and operators are its leaves)
//! <state>/coordinator.crt, .key          the server's identity
//! <state>/operators/<name>.crt, .key     operator credentials made here (`init`, `operator add`)
//! <state>/signing.key                    the bundle-signing key (Ed25519, PKCS#8)
//! <state>/signing.chain.json             rotations: each old key signing the next one over
//! <state>/coordinator.json, dockfra.db, blobs/sha256/, serve.addr
//! ```
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::ca::{Ca, Subject};
use crate::store::Store;
use dockfra_common::proto::SignedKeyRotation;
use dockfra_common::sign::SigningKey;

/// Lifetime of an operator credential made by `init` or `operator add` (default).
pub const OPERATOR_TTL: Duration = Duration::from_secs(365 * 86400);

/// One rotation as `signing.chain.json` stores it (hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRotation {
    statement: String,
    old_signature: String,
    new_signature: String,
}

/// Settings written by `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordSettings {
    /// gRPC address agents and the CLI use (`ADDR:PORT`).
    pub listen: String,
    /// Where the REST API and the dashboard listen (HTTPS); `off`: not served. Default
    /// [`DEFAULT_HTTP_LISTEN`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// How often push agents are asked for their status between deploys (seconds; 0: never).
    /// Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push_probe_secs: Option<u64>,
    /// Targets whose labels match this selector are production ones: an order for one needs
    /// the operator's confirmation (`--yes`). Default `env=production`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub production_selector: Option<String>,
    /// Lifetime of agent certificates; agents renew at two thirds of it.
    pub agent_cert_ttl_secs: u64,
    /// Enrollment calls one source address may make at once (default 10) …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_burst: Option<u32>,
    /// … and how often it gets one more (default every 6 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll_refill_ms: Option<u64>,
}

/// The REST API's and dashboard's default address: loopback only, until an operator says
/// otherwise (`init --http-listen` / `serve --http-listen`).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8443";

impl CoordSettings {
    pub fn production_selector(&self) -> &str {
        self.production_selector.as_deref().unwrap_or("env=production")
    }
    pub fn push_probe(&self) -> Duration {
        Duration::from_secs(self.push_probe_secs.unwrap_or(30))
    }
    pub fn enroll_burst(&self) -> u32 {
        self.enroll_burst.unwrap_or(10)
    }
    pub fn enroll_refill(&self) -> Duration {
        Duration::from_millis(self.enroll_refill_ms.unwrap_or(6000))
    }
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
    /// Where `serve` writes the address of its HTTPS listener (REST API and dashboard).
    pub fn http_addr_file(&self) -> PathBuf {
        self.path("http.addr")
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
    pub fn operators_dir(&self) -> PathBuf {
        self.path("operators")
    }

    /// The credential (certificate, key) of operator `name`: `operators/<name>.{crt,key}`, or
    /// for `admin` of a state dir made before operators had names, `admin.{crt,key}`.
    pub fn operator_identity(&self, name: &str) -> Result<(String, String)> {
        let dir = self.operators_dir();
        let (crt, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        if crt.is_file() {
            let c = std::fs::read_to_string(&crt).with_context(|| format!("cannot read {}", crt.display()))?;
            let k = std::fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
            return Ok((c, k));
        }
        if name == "admin" && self.path("admin.crt").is_file() {
            return Ok((self.read("admin.crt")?, self.read("admin.key")?));
        }
        bail!(
            "no credential for operator {name:?} in {} (have: {}); `dockfra-coord operator add {name}` makes one",
            dir.display(),
            self.operator_names().join(", ")
        )
    }

    /// Operators whose credential is in this state dir.
    pub fn operator_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.operators_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".crt").map(String::from))
            .filter(|n| self.operators_dir().join(format!("{n}.key")).is_file())
            .collect();
        if names.is_empty() && self.path("admin.crt").is_file() {
            names.push("admin".into());
        }
        names.sort();
        names
    }

    /// Write an operator's credential (key 0600) into `dir`.
    pub fn write_credential(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let key = dir.join(format!("{name}.key"));
        dockfra_common::write_atomic(&key, key_pem.as_bytes(), 0o600)
            .with_context(|| format!("cannot write {}", key.display()))?;
        let crt = dir.join(format!("{name}.crt"));
        dockfra_common::write_atomic(&crt, cert_pem.as_bytes(), 0o644)
            .with_context(|| format!("cannot write {}", crt.display()))?;
        Ok(crt)
    }

    /// The current bundle-signing key. A rotation interrupted between writing the chain and
    /// swapping the key in is finished here (the pending key matches the chain's last step).
    pub fn signing_key(&self) -> Result<SigningKey> {
        let p = self.path("signing.key");
        let pending = self.path("signing.key.next");
        let chain = self.signing_chain()?;
        let doc = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let key = SigningKey::from_pkcs8(&doc)?;
        let want = chain.last().map(|r| rotation_keys(r).map(|(_, new)| new)).transpose()?;
        match want {
            Some(new) if new != key.public_key() => {
                let next = std::fs::read(&pending).with_context(|| {
                    format!(
                        "{} does not hold the key {} names last, and no rotation is pending",
                        p.display(),
                        self.path("signing.chain.json").display()
                    )
                })?;
                let k = SigningKey::from_pkcs8(&next)?;
                anyhow::ensure!(k.public_key() == new, "{} is not the key the chain names", pending.display());
                dockfra_common::write_atomic(&p, &next, 0o600)?;
                let _ = std::fs::remove_file(&pending);
                Ok(k)
            }
            _ => {
                let _ = std::fs::remove_file(&pending);
                Ok(key)
            }
        }
    }

    /// The rotation chain, oldest first (empty before the first rotation).
    pub fn signing_chain(&self) -> Result<Vec<SignedKeyRotation>> {
        let p = self.path("signing.chain.json");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        let stored: Vec<StoredRotation> =
            serde_json::from_str(&text).with_context(|| format!("{} is not valid", p.display()))?;
        let unhex = |s: &str| hex::decode(s).with_context(|| format!("{} is not valid", p.display()));
        stored
            .iter()
            .map(|r| {
                Ok(SignedKeyRotation {
                    statement: unhex(&r.statement)?,
                    old_signature: unhex(&r.old_signature)?,
                    new_signature: unhex(&r.new_signature)?,
                })
            })
            .collect()
    }

    /// Replace the signing key: a new key, a statement the old key and the new one both sign,
    /// appended to the chain. Crash-safe: the new key is written aside first, then the chain,
    /// then the key is swapped in (see [`StateDir::signing_key`]); the old private key is
    /// gone once this returns.
    pub fn rotate_signing_key(&self) -> Result<(SigningKey, Vec<SignedKeyRotation>)> {
        let old = self.signing_key()?;
        let mut chain = self.signing_chain()?;
        let doc = SigningKey::generate_pkcs8()?;
        let new = SigningKey::from_pkcs8(&doc)?;
        let number = chain.len() as u32 + 1;
        chain.push(dockfra_common::bundle::sign_rotation(&old, &new, number, dockfra_common::now_unix()));
        dockfra_common::write_atomic(&self.path("signing.key.next"), &doc, 0o600)?;
        let stored: Vec<StoredRotation> = chain
            .iter()
            .map(|r| StoredRotation {
                statement: hex::encode(&r.statement),
                old_signature: hex::encode(&r.old_signature),
                new_signature: hex::encode(&r.new_signature),
            })
            .collect();
        dockfra_common::write_atomic(&self.path("signing.chain.json"), &serde_json::to_vec_pretty(&stored)?, 0o644)?;
        let key = self.signing_key()?;
        anyhow::ensure!(key.public_key() == new.public_key(), "the rotated key did not take");
        Ok((key, chain))
    }

    /// Create a new state dir with a first operator `operator`. Refuses to touch an existing
    /// one (that would orphan every agent).
    pub fn init(&self, listen: &str, agent_cert_ttl: Duration, operator: &str) -> Result<()> {
        anyhow::ensure!(
            dockfra_common::identity::is_operator_name(operator),
            "--operator {operator:?}: 1-64 of a-z 0-9 . _ -, starting with a letter or digit"
        );
        if self.path("ca.crt").exists() {
            bail!("{} is already initialized (found ca.crt); refusing to overwrite the CA", self.root.display());
        }
        listen.parse::<std::net::SocketAddr>().with_context(|| format!("--listen {listen:?} is not ADDR:PORT"))?;
        std::fs::create_dir_all(&self.root).with_context(|| format!("cannot create {}", self.root.display()))?;
        set_mode(&self.root, 0o700)?;
        let (ca, ca_key) = Ca::generate()?;
        let coord = ca.issue_with_key(Subject::Coordinator, Duration::from_secs(5 * 365 * 86400))?;
        let first = ca.issue_with_key(Subject::Operator { name: operator }, OPERATOR_TTL)?;
        let signing = dockfra_common::sign::SigningKey::generate_pkcs8()?;
        let settings = CoordSettings {
            listen: listen.to_string(),
            http_listen: None,
            push_probe_secs: None,
            production_selector: None,
            agent_cert_ttl_secs: agent_cert_ttl.as_secs().max(10),
            enroll_burst: None,
            enroll_refill_ms: None,
        };
        // ca.crt is written last: its presence is what marks the dir as initialized, so a failed
        // init can simply be run again.
        let files: Vec<(&str, Vec<u8>, u32)> = vec![
            ("ca.key", ca_key.into_bytes(), 0o600),
            ("coordinator.key", coord.key_pem.unwrap_or_default().into_bytes(), 0o600),
            // The server presents its chain (leaf + CA) so a joining agent can pin the CA.
            ("coordinator.crt", format!("{}{}", coord.cert_pem, ca.cert_pem).into_bytes(), 0o644),
            ("signing.key", signing, 0o600),
            ("coordinator.json", serde_json::to_vec_pretty(&settings)?, 0o644),
            ("ca.crt", ca.cert_pem.clone().into_bytes(), 0o644),
        ];
        for (name, bytes, mode) in &files {
            dockfra_common::write_atomic(&self.path(name), bytes, *mode)
                .with_context(|| format!("cannot write {name}"))?;
        }
        std::fs::create_dir_all(self.blobs())?;
        let store = Store::open(&self.db())?;
        let not_after = (dockfra_common::now_unix() + OPERATOR_TTL.as_secs()) as i64;
        store.put_operator(operator, &first.serial_hex, "init", not_after)?;
        store.event_by("-", "operator-added", &format!("operator {operator} created by init"), operator)?;
        Self::write_credential(&self.operators_dir(), operator, &first.cert_pem, &first.key_pem.unwrap_or_default())?;
        Ok(())
    }
}

/// The (old, new) public keys a rotation statement names.
fn rotation_keys(r: &SignedKeyRotation) -> Result<(Vec<u8>, Vec<u8>)> {
    let s: dockfra_common::bundle::KeyRotation = serde_json::from_slice(&r.statement)?;
    Ok((hex::decode(&s.old_key)?, hex::decode(&s.new_key)?))
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
