//! The bundle format: a signed manifest naming content-addressed blobs, and a signed desired
//! state naming the manifest. This module owns the types, their canonical bytes, the
//! compatibility rule between writers and readers of different versions, verification
//! (signatures, key rotations, target, app, sequence, age), and the checks every manifest
//! must pass before anything touches the disk. It never writes a release; the agent's release
//! store does, from a manifest this module accepted.
//!
//! # Compatibility rule (format 2)
//! - `format` is the major version. A reader refuses a format it does not list in [`FORMATS`]
//!   (the agent reports that list in its facts, so the coordinator never sends one).
//! - Within a format, a writer may add fields. A reader ignores fields it does not know,
//!   unless the document names them in `requires`: every entry there is a feature the reader
//!   must understand ([`FEATURES`]), or it refuses the document. Fields that change what runs
//!   or how it is verified always go into `requires`.
//! - The platform section is one tagged variant (`"platform": {"kind": "docker_compose", …}`);
//!   a reader refuses a kind it has no driver for.
//! - The bundle id is the sha256 of the manifest bytes exactly as signed, never of a
//!   re-serialization (a reader that dropped unknown fields would compute another id).
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::config::{HealthSpec, Platform, ServiceManager};
use crate::paths::{check_component, symlink_stays_inside, Digest, SafeRelPath, UnsafePath};
use crate::sign::SignError;

mod archive;
mod verify;

pub use archive::*;
pub use verify::*;

/// The manifest and desired-state format this build writes.
pub const FORMAT: u32 = 2;
/// The formats this build reads.
pub const FORMATS: &[u32] = &[2];
/// Optional features this build understands when a document `requires` them.
/// - [`AGENT_UPGRADE`]: the release is a new `dockfra-agent` binary for the agent itself
///   (app [`AGENT_APP`], one file [`AGENT_FILE`]); the agent starts it on trial instead of
///   running a driver.
pub const FEATURES: &[&str] = &[AGENT_UPGRADE];
/// The feature an agent-upgrade manifest requires.
pub const AGENT_UPGRADE: &str = "agent-upgrade";
/// The app under which an agent keeps its own upgrades (no project may use the name).
pub const AGENT_APP: &str = "dockfra-agent";
/// The one file of an agent-upgrade release.
pub const AGENT_FILE: &str = "dockfra-agent";
/// Limits a manifest must respect (a bundle is refused whole when over).
pub const MAX_FILES: usize = 20_000;
pub const MAX_FILE_SIZE: u64 = 4 << 30;
pub const MAX_TOTAL_SIZE: u64 = 16 << 30;
/// Largest manifest / desired state document accepted.
pub const MAX_DOC_SIZE: u64 = 16 << 20;
/// Longest key-rotation chain followed.
pub const MAX_ROTATIONS: usize = 64;

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// `strategy: blue-green | canary` on one host (`docker_compose`, `podman`): the fronted
    /// services run as `S-blue` and `S-green`, and the agent's HAProxy switches between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<SlotSpec>,
}

/// The two slots a zero-downtime single-host target switches between.
pub const SLOTS: [&str; 2] = ["blue", "green"];

/// Zero-downtime on one host: which services the proxy fronts, where it listens, and how it
/// moves traffic from the live slot to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotSpec {
    /// Canary steps (the new slot's share of requests, rising, the last 100); empty: a
    /// blue-green switch (all at once, once the new slot passes its checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_steps: Vec<u8>,
    /// How long each canary step's checks must hold.
    #[serde(default)]
    pub canary_pause_secs: u64,
    /// How long the old slot may finish the requests it has before it is stopped.
    pub drain_secs: u64,
    /// The proxy's HTTP check of a slot (`GET PATH`, any 2xx/3xx); none: a TCP connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<String>,
    /// One per published port of a fronted service.
    pub routes: Vec<Route>,
    /// The services outside the slots (databases, workers), updated in place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<String>,
}

/// One port the proxy publishes for a fronted service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The compose service (its slots are `SERVICE-blue` and `SERVICE-green`).
    pub service: String,
    /// Where the proxy listens: what the service published (`0.0.0.0:8080`, `[::1]:8443`).
    pub listen: String,
    /// The container port behind it.
    pub port: u16,
}

impl SlotSpec {
    /// The fronted services, each once, in route order.
    pub fn services(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.routes {
            if !out.contains(&r.service.as_str()) {
                out.push(&r.service);
            }
        }
        out
    }
}

/// A compose service name dockfra passes to compose and writes into HAProxy's config.
pub fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
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
    /// `kube_play: true`: the app rendered as Kubernetes objects in one file
    /// ([`KUBE_PLAY_FILE`]), run with `podman kube play --replace`; its pods and containers
    /// carry `app.kubernetes.io/part-of: <project>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_file: Option<String>,
}

/// Where a `kube_play` podman release carries its objects.
pub const KUBE_PLAY_FILE: &str = ".dockfra/kube/play.yaml";

/// One Kubernetes object the coordinator rendered into the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeObject {
    /// Its file inside the release (under [`KUBE_DIR`]).
    pub file: String,
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Service`, `ConfigMap`, `Secret`,
    /// `PersistentVolumeClaim`, `Ingress`.
    pub kind: String,
    pub name: String,
    /// A workload's replicas as rendered (canary steps take shares of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

impl KubeObject {
    /// Does `kubectl rollout status` follow it?
    pub fn is_workload(&self) -> bool {
        matches!(self.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
    }
    /// Is it what routes traffic (switched last under blue-green)?
    pub fn is_route(&self) -> bool {
        matches!(self.kind.as_str(), "Service" | "Ingress")
    }
}

/// One rendering of the app: the objects of a blue-green slot, the stable set, or a canary set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeSet {
    /// `blue` / `green` under blue-green, `stable` otherwise, `canary` for a canary's own objects.
    pub name: String,
    /// In apply order: data (ConfigMaps, Secrets, claims) first, then workloads, then routes.
    pub objects: Vec<KubeObject>,
}

/// What the `kubernetes` driver needs: the objects the coordinator rendered (with the
/// target's namespace, strategy, replicas and limits applied) and how to reach the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesSpec {
    pub namespace: String,
    /// Path of the kubeconfig on the agent's host (default: kubectl's own lookup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    pub strategy: crate::config::Strategy,
    /// The app's label value (`app.kubernetes.io/part-of`).
    pub app: String,
    /// This release's label value (`dockfra.dev/release`).
    pub release: String,
    /// How long each rollout may take, in seconds.
    pub rollout_timeout_secs: u64,
    /// `stable` (rolling, recreate), `blue` and `green` (blue-green), `stable` and `canary`.
    pub sets: Vec<KubeSet>,
    /// Under canary: the traffic percentages, rising, the last 100.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_steps: Vec<u8>,
    /// Under canary: how long each step must stay healthy, in seconds.
    #[serde(default)]
    pub canary_pause_secs: u64,
    /// Under canary with an Ingress: the canary Ingress whose weight annotation moves traffic
    /// (without one, the canary's share of replicas does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_ingress: Option<String>,
}

impl KubernetesSpec {
    pub fn set(&self, name: &str) -> Option<&KubeSet> {
        self.sets.iter().find(|s| s.name == name)
    }
}

/// What the `nomad` driver needs: the job in the HTTP API's JSON form (`{"Job": …}`), carried
/// in the release, and how to reach the API (no `nomad` binary is needed on the agent's host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NomadSpec {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub address: String,
    /// A file on the agent's host with the ACL token (else the agent's `NOMAD_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub job_id: String,
    /// The job's JSON inside the release (under [`NOMAD_DIR`]).
    pub file: String,
    /// Canaries wait for dockfra to promote them once healthy (`canary > 0`, no `auto_promote`).
    pub promote: bool,
    /// How long following the deployment may take, in seconds.
    pub deploy_timeout_secs: u64,
}

/// Where a release carries its Nomad job (HCL and JSON).
pub const NOMAD_DIR: &str = ".dockfra/nomad";

/// Where a release carries its Kubernetes objects: `KUBE_DIR/<set>/<kind>-<name>.yaml`.
pub const KUBE_DIR: &str = ".dockfra/k8s";

/// The platform a release runs on, with what its driver needs: one variant per platform.
/// Adding a platform is one variant here, one renderer in the coordinator's builder and one
/// driver module in the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlatformSpec {
    SshRaw(SshRawSpec),
    DockerCompose(DockerComposeSpec),
    /// `project` is the stack name.
    Swarm(DockerComposeSpec),
    Podman(PodmanSpec),
    Kubernetes(Box<KubernetesSpec>),
    Nomad(Box<NomadSpec>),
}

impl PlatformSpec {
    /// The `kind`s this build has a variant for.
    pub const KINDS: &'static [&'static str] = &["ssh_raw", "docker_compose", "swarm", "podman", "kubernetes", "nomad"];

    pub fn platform(&self) -> Platform {
        match self {
            PlatformSpec::SshRaw(_) => Platform::SshRaw,
            PlatformSpec::DockerCompose(_) => Platform::DockerCompose,
            PlatformSpec::Swarm(_) => Platform::Swarm,
            PlatformSpec::Podman(_) => Platform::Podman,
            PlatformSpec::Kubernetes(_) => Platform::Kubernetes,
            PlatformSpec::Nomad(_) => Platform::Nomad,
        }
    }

    /// The compose-shaped section (docker_compose, swarm, podman), if any.
    pub fn compose(&self) -> Option<&DockerComposeSpec> {
        match self {
            PlatformSpec::DockerCompose(c) | PlatformSpec::Swarm(c) => Some(c),
            PlatformSpec::Podman(p) => Some(&p.compose),
            PlatformSpec::SshRaw(_) | PlatformSpec::Kubernetes(_) | PlatformSpec::Nomad(_) => None,
        }
    }

    /// Where the app's releases live when the target says (`ssh_raw`'s `deploy_path`).
    pub fn deploy_path(&self) -> Option<&str> {
        match self {
            PlatformSpec::SshRaw(s) => s.deploy_path.as_deref(),
            _ => None,
        }
    }
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
/// Where the agent keeps, inside each release, the signed documents that installed it, so the
/// release can be re-verified later (`dockfra-agent verify`).
pub const SIGNED_DIR: &str = ".dockfra/signed";

/// A Kubernetes name the driver may pass to kubectl: a DNS subdomain (RFC 1123), lower case.
pub fn is_kube_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The object kinds the coordinator renders (and the driver applies).
pub const KUBE_KINDS: &[&str] =
    &["ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "StatefulSet", "DaemonSet", "Service", "Ingress"];

/// The signed description of one release for one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Features a reader must understand to use this manifest (see the module doc).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    pub target: String,
    pub app: String,
    pub version: String,
    pub sequence: u64,
    pub created_unix: u64,
    pub platform: PlatformSpec,
    pub files: Vec<FileEntry>,
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

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
        }
    }
}

/// What a target should run now. Signed with an expiry; its sequence only grows per target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub format: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    pub target: String,
    pub app: String,
    pub action: Action,
    pub sequence: u64,
    pub bundle_id: String,
    pub deployment_id: String,
    pub issued_unix: u64,
    pub expires_unix: u64,
}

/// A signing-key rotation: `new_key` replaces `old_key`. Signed by both keys in the
/// key-rotation context: the old one grants the move (an agent pinned to it follows), the new
/// one proves its holder took it. Like TUF's root rotation, an agent only ever moves along a
/// chain that starts at the key it pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotation {
    pub format: u32,
    /// 1 for the first rotation of a coordinator, then 2, 3, …
    pub number: u32,
    /// Hex of the raw Ed25519 public keys.
    pub old_key: String,
    pub new_key: String,
    pub issued_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Signature(#[from] SignError),
    #[error("{what} is not valid: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error(
        "{what} format {found} is not one this agent ({}) reads (it reads {FORMATS:?}): upgrade the agent",
        crate::VERSION
    )]
    Format { what: &'static str, found: u32 },
    #[error(
        "{what} requires feature {feature:?}, which this agent ({}) does not have: upgrade the agent",
        crate::VERSION
    )]
    Feature { what: &'static str, feature: String },
    #[error("platform {kind:?} has no driver in this agent ({}): upgrade the agent", crate::VERSION)]
    Platform { kind: String },
    #[error("bundle is for target {found:?}, this agent is {expected:?}")]
    WrongTarget { expected: String, found: String },
    #[error("desired state names app {desired:?}, the manifest is for app {manifest:?}: mixed documents refused")]
    WrongApp { desired: String, manifest: String },
    #[error("desired state expired at {expires_unix} (now {now}): refusing a stale order")]
    Expired { expires_unix: u64, now: u64 },
    #[error(
        "the order was issued {age}s ago, more than this agent's max_order_age ({max}s) allows: refusing a stale order"
    )]
    TooOld { age: u64, max: u64 },
    #[error("the order is valid for {lifetime}s, more than this agent's max_order_lifetime ({max}s) allows")]
    TooLong { lifetime: u64, max: u64 },
    #[error("desired state sequence {got} is not above the last one applied ({last}): replay refused")]
    Replay { got: u64, last: u64 },
    #[error("release sequence {got} is not above the current one ({last}) and the order is not a signed rollback")]
    OldRelease { got: u64, last: u64 },
    #[error("manifest sequence {manifest} is above its order's sequence {desired}: fast-forward refused")]
    FastForward { manifest: u64, desired: u64 },
    #[error("desired state names bundle {named}, manifest is {actual}")]
    BundleMismatch { named: String, actual: String },
    #[error("key rotation: {0}")]
    Rotation(String),
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

/// Check a document's `format` and `requires` before it is decoded into a struct, so that a
/// newer document is refused with a message that says so (not a serde error).
fn check_version(what: &'static str, v: &serde_json::Value) -> Result<(), BundleError> {
    let obj = v.as_object().ok_or_else(|| BundleError::Malformed { what, reason: "not a JSON object".into() })?;
    let format = obj.get("format").and_then(serde_json::Value::as_u64).ok_or_else(|| BundleError::Malformed {
        what,
        reason: "no `format` (a document from a dockfra before format 2?)".into(),
    })?;
    if !FORMATS.iter().any(|f| u64::from(*f) == format) {
        return Err(BundleError::Format { what, found: format.min(u64::from(u32::MAX)) as u32 });
    }
    if let Some(req) = obj.get("requires") {
        let list =
            req.as_array().ok_or_else(|| BundleError::Malformed { what, reason: "`requires` is not a list".into() })?;
        for f in list {
            let f = f
                .as_str()
                .ok_or_else(|| BundleError::Malformed { what, reason: "`requires` holds a non-string".into() })?;
            if !FEATURES.contains(&f) {
                return Err(BundleError::Feature { what, feature: f.chars().take(64).collect() });
            }
        }
    }
    Ok(())
}

/// A slot section's names and addresses reach compose's command line and HAProxy's config:
/// each must be what it says, with nothing that could end a line or start an option.
fn validate_slots(sl: &SlotSpec) -> Result<(), BundleError> {
    let bad = |path: &str, reason: &str| BundleError::Entry { path: path.to_string(), reason: reason.to_string() };
    if sl.routes.is_empty() {
        return Err(BundleError::Malformed { what: "manifest", reason: "slots: no route for the proxy".into() });
    }
    for name in sl.routes.iter().map(|r| &r.service).chain(&sl.shared) {
        if !is_service_name(name) {
            return Err(bad(name, "not a compose service name ([A-Za-z0-9][A-Za-z0-9._-]*)"));
        }
    }
    for r in &sl.routes {
        if r.listen.parse::<std::net::SocketAddr>().is_err() || r.port == 0 {
            return Err(bad(&r.listen, "not an address the proxy can listen on (IP:PORT)"));
        }
    }
    if let Some(p) = &sl.health_path {
        if !p.starts_with('/') || p.len() > 512 || p.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
            return Err(bad(p, "not an HTTP path for the proxy's check"));
        }
    }
    let steps = &sl.canary_steps;
    if !steps.is_empty() && (steps.windows(2).any(|w| w[0] >= w[1]) || steps[0] == 0 || steps.last() != Some(&100)) {
        return Err(BundleError::Malformed { what: "manifest", reason: "slots: canary steps must rise to 100".into() });
    }
    Ok(())
}

impl Manifest {
    /// Decode signed manifest bytes under the compatibility rule (see the module doc).
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| BundleError::Malformed { what: "manifest", reason: e.to_string() })?;
        check_version("manifest", &v)?;
        let kind = v.get("platform").and_then(|p| p.get("kind")).and_then(serde_json::Value::as_str).unwrap_or("");
        if !PlatformSpec::KINDS.contains(&kind) {
            return Err(BundleError::Platform { kind: kind.chars().take(64).collect() });
        }
        serde_json::from_value(v).map_err(|e| BundleError::Malformed { what: "manifest", reason: e.to_string() })
    }

    /// Canonical bytes: compact JSON of the struct (fixed field order, files sorted by path).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.files.sort_by(|a, b| a.path.cmp(&b.path));
        serde_json::to_vec(&m).expect("manifest serializes")
    }

    /// Bundle id of a manifest this side built: sha256 of its canonical bytes (which are the
    /// bytes it signs). A reader uses the id of the bytes it received ([`Verified::bundle_id`]).
    pub fn id(&self) -> String {
        crate::sha256_hex(&self.canonical_bytes())
    }

    /// Name of the release directory a manifest this side built materializes into.
    pub fn release_name(&self) -> String {
        release_name(self.sequence, &self.id())
    }

    /// The Nomad section names a URL, a job id that goes into URL paths, and files on the
    /// agent's host: each must be what it says, and the job file carried.
    fn validate_nomad(&self, n: &NomadSpec) -> Result<(), BundleError> {
        let bad = |path: &str, reason: &str| BundleError::Entry { path: path.to_string(), reason: reason.to_string() };
        let rest = n.address.strip_prefix("http://").or_else(|| n.address.strip_prefix("https://"));
        let host = rest.map(|r| r.trim_end_matches('/')).unwrap_or_default();
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control() || "/@?#".contains(c)) {
            return Err(bad(&n.address, "not a Nomad address (http://HOST:PORT or https://HOST:PORT)"));
        }
        let plain = |v: &str| {
            !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        for v in std::iter::once(&n.job_id).chain(&n.region).chain(&n.namespace) {
            if !plain(v) {
                return Err(bad(v, "not a Nomad job id, region or namespace dockfra renders ([A-Za-z0-9._-])"));
            }
        }
        for v in
            n.token_file.iter().chain(&n.ca_cert).chain(&n.client_cert).chain(&n.client_key).chain(&n.tls_server_name)
        {
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err(bad(v, "not a path or name"));
            }
        }
        if !n.file.starts_with(&format!("{NOMAD_DIR}/"))
            || !self.files.iter().any(|f| f.path == n.file && f.kind == EntryKind::File)
        {
            return Err(bad(&n.file, "the Nomad job is listed but not carried under .dockfra/nomad/"));
        }
        Ok(())
    }

    /// The Kubernetes section's names are what kubectl gets as arguments: each must be a
    /// Kubernetes name, each object carried in the release under its set's directory.
    fn validate_kube(&self, k: &KubernetesSpec) -> Result<(), BundleError> {
        let bad = |path: &str, reason: String| BundleError::Entry { path: path.to_string(), reason };
        for (what, v) in [("namespace", &k.namespace), ("app label", &k.app), ("release label", &k.release)] {
            if !is_kube_name(v) || v.contains('.') {
                return Err(bad(v, format!("kubernetes {what} is not a DNS label")));
            }
        }
        for v in k.kubeconfig.iter().chain(&k.context).chain(&k.canary_ingress) {
            if v.is_empty() || v.starts_with('-') || v.chars().any(char::is_control) {
                return Err(bad(v, "not a kubeconfig path, context or Ingress name kubectl can be given".into()));
            }
        }
        if k.sets.is_empty() {
            return Err(BundleError::Malformed { what: "manifest", reason: "kubernetes: no object set".into() });
        }
        for set in &k.sets {
            if !is_kube_name(&set.name) || set.name.contains('.') {
                return Err(bad(&set.name, "kubernetes object set name is not a DNS label".into()));
            }
            for o in &set.objects {
                if !KUBE_KINDS.contains(&o.kind.as_str()) || !is_kube_name(&o.name) {
                    return Err(bad(
                        &o.file,
                        format!("kubernetes object {}/{} is not one dockfra renders", o.kind, o.name),
                    ));
                }
                let dir = format!("{KUBE_DIR}/{}/", set.name);
                if !o.file.starts_with(&dir)
                    || !self.files.iter().any(|f| f.path == o.file && f.kind == EntryKind::File)
                {
                    return Err(bad(&o.file, format!("kubernetes object listed but not carried under {dir}")));
                }
            }
        }
        if k.strategy == crate::config::Strategy::Canary
            && (k.canary_steps.is_empty() || k.canary_steps.last() != Some(&100) || k.set("canary").is_none())
        {
            return Err(BundleError::Malformed {
                what: "manifest",
                reason: "kubernetes canary: needs a canary set and rising steps ending at 100".into(),
            });
        }
        Ok(())
    }

    /// Every check that needs no key and no disk: paths, kinds, modes, digests, limits, names.
    pub fn validate(&self) -> Result<(), BundleError> {
        if !FORMATS.contains(&self.format) {
            return Err(BundleError::Format { what: "manifest", found: self.format });
        }
        if let Some(f) = self.requires.iter().find(|f| !FEATURES.contains(&f.as_str())) {
            return Err(BundleError::Feature { what: "manifest", feature: f.clone() });
        }
        check_component(&self.app).map_err(|e| BundleError::Path { path: self.app.clone(), source: e })?;
        // An agent upgrade is exactly one executable file under the agent's own app name, and
        // that app name carries nothing else.
        let upgrade = self.requires.iter().any(|f| f == AGENT_UPGRADE);
        if upgrade != (self.app == AGENT_APP) {
            return Err(BundleError::Malformed {
                what: "manifest",
                reason: format!(
                    "app {AGENT_APP:?} is for agent upgrades only, and an agent upgrade is app {AGENT_APP:?}"
                ),
            });
        }
        if upgrade
            && !matches!(self.files.as_slice(), [f] if f.path == AGENT_FILE && f.kind == EntryKind::File && f.mode & 0o100 != 0)
        {
            return Err(BundleError::Malformed {
                what: "manifest",
                reason: format!("an agent upgrade carries one executable file, {AGENT_FILE:?}"),
            });
        }
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
            let lower = f.path.to_lowercase();
            if lower == RENDERED_DIR || lower == SIGNED_DIR || lower.starts_with(&format!("{SIGNED_DIR}/")) {
                return Err(BundleError::Entry {
                    path: f.path.clone(),
                    reason: format!("{RENDERED_DIR} must be a directory and {SIGNED_DIR}/ is the agent's own"),
                });
            }
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
                    // Bounded like a path: the checks below walk the target per component.
                    if link.len() > SafeRelPath::MAX_LEN {
                        return Err(BundleError::Entry {
                            path: f.path.clone(),
                            reason: format!("symlink target longer than {} bytes", SafeRelPath::MAX_LEN),
                        });
                    }
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
        if let PlatformSpec::Podman(p) = &self.platform {
            if let Some(f) = &p.kube_file {
                if f != KUBE_PLAY_FILE || !self.files.iter().any(|e| &e.path == f && e.kind == EntryKind::File) {
                    return Err(BundleError::Entry {
                        path: f.clone(),
                        reason: format!("the kube play file must be {KUBE_PLAY_FILE}, carried in the release"),
                    });
                }
                if !is_kube_name(&p.compose.project) {
                    return Err(BundleError::Entry {
                        path: p.compose.project.clone(),
                        reason: "a kube play project must be a DNS label (its pods are named by it)".into(),
                    });
                }
            }
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
        if let PlatformSpec::Kubernetes(k) = &self.platform {
            self.validate_kube(k)?;
        }
        if let PlatformSpec::Nomad(n) = &self.platform {
            self.validate_nomad(n)?;
        }
        if let Some(sl) = self.platform.compose().and_then(|c| c.slots.as_ref()) {
            validate_slots(sl)?;
        }
        for img in self.platform.compose().into_iter().flat_map(|d| &d.images) {
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
        let images =
            self.platform.compose().into_iter().flat_map(|d| d.images.iter().map(|i| (i.sha256.clone(), i.size)));
        files.chain(images).collect()
    }
}

/// `<sequence>-<first 12 hex of the bundle id>`.
pub fn release_name(sequence: u64, bundle_id: &str) -> String {
    format!("{sequence}-{}", bundle_id.chars().take(12).collect::<String>())
}

/// The documents exactly as signed: what a release dir keeps to be re-verified later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDocs {
    pub desired: Vec<u8>,
    pub desired_signature: Vec<u8>,
    pub manifest: Vec<u8>,
    pub manifest_signature: Vec<u8>,
}

/// A verified pair: the desired state and the manifest it names.
#[derive(Debug, Clone)]
pub struct Verified {
    pub desired: DesiredState,
    pub manifest: Manifest,
    /// sha256 of the manifest bytes as signed.
    pub bundle_id: String,
    pub signed: SignedDocs,
    /// The signing key the documents verified with, when a rotation chain moved it away from
    /// the pinned one: the caller pins it.
    pub rotated_to: Option<Vec<u8>>,
}

impl Verified {
    /// The release directory name: sequence and the signed bytes' id.
    pub fn release_name(&self) -> String {
        release_name(self.manifest.sequence, &self.bundle_id)
    }
}

/// What the agent remembers between orders, for replay checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermark {
    pub last_desired_sequence: u64,
    pub current_release_sequence: u64,
}

/// What an agent holds an order against.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// The target this agent is.
    pub me: &'a str,
    /// The pinned signing key (raw Ed25519).
    pub signing_key: &'a [u8],
    pub mark: Watermark,
    /// The newest release installed per app (an agent hosting several apps): a deploy must
    /// bring a release newer than its own app's. `None`: `mark.current_release_sequence`
    /// holds for every app.
    pub release_floors: Option<&'a std::collections::BTreeMap<String, u64>>,
    pub now: u64,
    /// Refuse an order signed to stay valid longer than this (seconds).
    pub max_order_lifetime: Option<u64>,
    /// Refuse an order issued longer ago than this (seconds).
    pub max_order_age: Option<u64>,
}

/// Builders shared by the bundle modules' tests.
#[cfg(test)]
pub(crate) mod testkit {
    use super::*;
    use crate::proto;
    use crate::sign;

    pub(crate) fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            format: FORMAT,
            requires: vec![],
            target: "t1".into(),
            app: "app".into(),
            version: "v1".into(),
            sequence: 1,
            created_unix: 0,
            platform: PlatformSpec::SshRaw(SshRawSpec {
                deploy_path: None,
                service_manager: ServiceManager::None,
                service_name: None,
                pre_script: None,
                post_script: None,
            }),
            files,
            health: None,
            keep_releases: 5,
            os: None,
        }
    }

    pub(crate) fn file(path: &str) -> FileEntry {
        FileEntry { path: path.into(), kind: EntryKind::File, mode: 0o644, size: 1, sha256: "a".repeat(64), link: None }
    }

    pub(crate) fn link(path: &str, to: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind: EntryKind::Symlink,
            mode: 0o777,
            size: 0,
            sha256: String::new(),
            link: Some(to.into()),
        }
    }

    pub(crate) fn key() -> sign::SigningKey {
        sign::SigningKey::from_pkcs8(&sign::SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    pub(crate) fn desired_for(m: &Manifest, seq: u64, action: Action, issued: u64, expires: u64) -> DesiredState {
        DesiredState {
            format: FORMAT,
            requires: vec![],
            target: "t1".into(),
            app: m.app.clone(),
            action,
            sequence: seq,
            bundle_id: m.id(),
            deployment_id: "d".into(),
            issued_unix: issued,
            expires_unix: expires,
        }
    }

    pub(crate) fn signed(key: &sign::SigningKey, seq: u64, action: Action, expires: u64) -> proto::Assignment {
        let m = manifest(vec![file("a")]);
        sign_assignment(key, &desired_for(&m, seq, action, 0, expires), m.canonical_bytes(), &[])
    }

    pub(crate) fn policy(pk: &[u8], mark: Watermark, now: u64) -> Policy<'_> {
        Policy {
            me: "t1",
            signing_key: pk,
            mark,
            release_floors: None,
            now,
            max_order_lifetime: None,
            max_order_age: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;

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
            ("the agent's signed dir", vec![file(".dockfra/signed/manifest.json")]),
            ("the agent's signed dir, other case", vec![file(".DOCKFRA/Signed/x")]),
            ("rendered dir as a symlink", vec![link(".dockfra", "x")]),
            // Found by review while fuzzing: validation time grew with the square of it.
            ("endless symlink target", vec![link("l", &"a/".repeat(60_000))]),
        ];
        for (what, files) in cases {
            assert!(manifest(files).validate().is_err(), "{what} accepted");
        }
        let many: Vec<FileEntry> = (0..=MAX_FILES).map(|i| file(&format!("f{i}"))).collect();
        assert!(matches!(manifest(many).validate(), Err(BundleError::Limit(_))));
        assert!(manifest(vec![file("a/b"), link("l", "a/b"), file(".dockfra/compose.yaml")]).validate().is_ok());
    }

    /// An agent upgrade is one executable file named `dockfra-agent` of the app
    /// `dockfra-agent`; that app carries nothing else, and nothing else is an upgrade.
    #[test]
    fn agent_upgrades_have_one_shape() {
        let exe = FileEntry { mode: 0o755, ..file(AGENT_FILE) };
        let upgrade = |files: Vec<FileEntry>| Manifest {
            requires: vec![AGENT_UPGRADE.into()],
            app: AGENT_APP.into(),
            ..manifest(files)
        };
        upgrade(vec![exe.clone()]).validate().unwrap();
        for (what, m) in [
            ("two files", upgrade(vec![exe.clone(), file("x")])),
            ("not executable", upgrade(vec![file(AGENT_FILE)])),
            ("another name", upgrade(vec![FileEntry { mode: 0o755, ..file("sh") }])),
            ("a symlink", upgrade(vec![link(AGENT_FILE, "x")])),
            ("the agent's app, not an upgrade", Manifest { requires: vec![], ..upgrade(vec![exe.clone()]) }),
            ("an upgrade of another app", Manifest { app: "web".into(), ..upgrade(vec![exe.clone()]) }),
        ] {
            assert!(matches!(m.validate(), Err(BundleError::Malformed { .. })), "{what} accepted");
        }
    }

    /// The compatibility rule: unknown fields are ignored, an unknown `requires` entry, a
    /// newer format or an unknown platform kind is refused with a message that says so.
    #[test]
    fn compatibility_rule() {
        let m = manifest(vec![file("a")]);
        let mut v: serde_json::Value = serde_json::from_slice(&m.canonical_bytes()).unwrap();
        v["some_future_field"] = serde_json::json!({"x": 1});
        v["platform"]["future_knob"] = serde_json::json!(true);
        assert_eq!(Manifest::parse(&serde_json::to_vec(&v).unwrap()).unwrap(), m);
        let mut req = v.clone();
        req["requires"] = serde_json::json!(["blue-green"]);
        let e = Manifest::parse(&serde_json::to_vec(&req).unwrap()).unwrap_err();
        assert!(matches!(&e, BundleError::Feature { feature, .. } if feature == "blue-green"), "{e}");
        assert!(e.to_string().contains("upgrade the agent"), "{e}");
        let mut newer = v.clone();
        newer["format"] = serde_json::json!(3);
        assert!(matches!(
            Manifest::parse(&serde_json::to_vec(&newer).unwrap()),
            Err(BundleError::Format { found: 3, .. })
        ));
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("format");
        assert!(matches!(Manifest::parse(&serde_json::to_vec(&old).unwrap()), Err(BundleError::Malformed { .. })));
        let mut future = v;
        future["platform"] = serde_json::json!({"kind": "lambda", "region": "x"});
        let e = Manifest::parse(&serde_json::to_vec(&future).unwrap()).unwrap_err();
        assert!(matches!(&e, BundleError::Platform { kind } if kind == "lambda"), "{e}");
    }

    /// What the kubernetes driver hands kubectl comes from the manifest: only names that
    /// cannot be options, and only files the release carries under its set's directory.
    #[test]
    fn kubernetes_sections_name_only_carried_objects_and_plain_names() {
        let file = format!("{KUBE_DIR}/stable/deployment-web.yaml");
        let obj = |file: &str, name: &str| KubeObject {
            file: file.into(),
            kind: "Deployment".into(),
            name: name.into(),
            replicas: Some(1),
        };
        let spec = |o: KubeObject, ns: &str| KubernetesSpec {
            namespace: ns.into(),
            kubeconfig: None,
            context: None,
            strategy: crate::config::Strategy::Rolling,
            app: "shop".into(),
            release: "7".into(),
            rollout_timeout_secs: 60,
            sets: vec![KubeSet { name: "stable".into(), objects: vec![o] }],
            canary_steps: vec![],
            canary_pause_secs: 0,
            canary_ingress: None,
        };
        let mut m = manifest(vec![self::tests::file(&file)]);
        m.platform = PlatformSpec::Kubernetes(Box::new(spec(obj(&file, "web"), "shop")));
        m.validate().unwrap();
        for (o, ns, says) in [
            (obj(&file, "--kubeconfig=/etc/x"), "shop", "not one dockfra renders"),
            (obj(&format!("{KUBE_DIR}/stable/other.yaml"), "web"), "shop", "not carried"),
            (obj("app/deployment-web.yaml", "web"), "shop", "not carried"),
            (obj(&file, "web"), "-n", "not a DNS label"),
        ] {
            m.platform = PlatformSpec::Kubernetes(Box::new(spec(o, ns)));
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    /// What the slots driver writes into HAProxy's config and compose's command line comes
    /// from the manifest: plain service names, real addresses, a path without line breaks.
    #[test]
    fn slot_sections_carry_only_plain_names_and_addresses() {
        let good = SlotSpec {
            canary_steps: vec![10, 100],
            canary_pause_secs: 1,
            drain_secs: 1,
            health_path: Some("/up".into()),
            routes: vec![Route { service: "web".into(), listen: "0.0.0.0:8080".into(), port: 80 }],
            shared: vec!["db".into()],
        };
        let compose = |sl: SlotSpec| DockerComposeSpec {
            project: "shop".into(),
            file: ".dockfra/compose.yaml".into(),
            wait_timeout_secs: 60,
            images: vec![],
            slots: Some(sl),
        };
        let mut m = manifest(vec![]);
        m.platform = PlatformSpec::DockerCompose(compose(good.clone()));
        m.validate().unwrap();
        let route = |service: &str, listen: &str| Route { service: service.into(), listen: listen.into(), port: 80 };
        for (sl, says) in [
            (SlotSpec { routes: vec![route("-p", "0.0.0.0:80")], ..good.clone() }, "not a compose service name"),
            (SlotSpec { shared: vec!["db\nbind :22".into()], ..good.clone() }, "not a compose service name"),
            (SlotSpec { routes: vec![route("web", "0.0.0.0:80\n  bind :22")], ..good.clone() }, "can listen on"),
            (SlotSpec { health_path: Some("/up\n  server x 1.2.3.4:80".into()), ..good.clone() }, "HTTP path"),
            (SlotSpec { canary_steps: vec![50, 10], ..good.clone() }, "rise to 100"),
            (SlotSpec { routes: vec![], ..good.clone() }, "no route"),
        ] {
            m.platform = PlatformSpec::DockerCompose(compose(sl));
            let e = m.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}
