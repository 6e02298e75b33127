//! `deploy-targets.yaml`: where and how a project is deployed.
//!
//! This module owns that file format (the seed format — `targets:` with
//! `host`, `port`, `user`, `platform`, `os`, `labels`, `config` — plus
//! dockfra's optional additions `app:`, `agent:`, `health:`, `env:` and
//! `keep_releases:`), its validation, and the typed model the rest of dockfra
//! works from ([`Project`], [`Target`], [`PlatformConfig`], ...).
//!
//! The file is parsed by walking a [`serde_yaml_ng::Value`] by hand so that
//! every error can name the file, the target and the key path
//! (see [`ConfigError`]). Unknown keys are rejected at every level; `config`
//! keys are checked against the target's platform.
//!
//! It also owns the duration syntax used in that file and in signed manifests
//! (`500ms`, `30s`, `5m`, `1h`, `1h30m`): [`parse_duration`],
//! [`format_duration`] and the serde helper module [`duration_str`].

use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

// ───────────────────────────── errors ─────────────────────────────

/// Everything that can go wrong loading `deploy-targets.yaml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read file: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not well-formed YAML.
    #[error("{}: malformed YAML: {message}", file.display())]
    Yaml {
        file: PathBuf,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column of the error, when known.
        column: Option<usize>,
        message: String,
    },
    /// The YAML is well-formed but not a valid deploy-targets file.
    #[error("{}", Located { file, target: target.as_deref(), key: key.as_deref(), message })]
    Invalid {
        file: PathBuf,
        /// Target id, when the problem is inside one target.
        target: Option<String>,
        /// Key path (relative to the target when `target` is set),
        /// e.g. `config.service_manager` or `health.checks[0].http.url`.
        key: Option<String>,
        message: String,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Io { file, .. } | ConfigError::Yaml { file, .. } | ConfigError::Invalid { file, .. } => file,
        }
    }

    /// The target id the error is about, if any.
    pub fn target(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { target, .. } => target.as_deref(),
            _ => None,
        }
    }

    /// The key path the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            _ => None,
        }
    }
}

struct Located<'a> {
    file: &'a Path,
    target: Option<&'a str>,
    key: Option<&'a str>,
    message: &'a str,
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(t) = self.target {
            write!(f, ": target {t:?}")?;
        }
        if let Some(k) = self.key {
            write!(f, ": key {k:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

// ───────────────────────────── model ─────────────────────────────

/// A parsed `deploy-targets.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The file this project was loaded from (as given).
    pub file: PathBuf,
    pub app: AppSpec,
    /// Targets in file order.
    pub targets: Vec<Target>,
    /// Named waves for fleet deploys (`deploy --waves`), in order.
    pub waves: Vec<WaveSpec>,
    /// Where every deploy, rollback and fleet wave of the project is announced
    /// (`notifications:`); a target's own are added to these.
    pub notifications: Vec<Notification>,
}

/// One named wave (`waves:`): the targets its selector matches that no earlier wave took. A
/// wave without a selector takes every target left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveSpec {
    pub name: String,
    pub selector: Option<String>,
}

impl Project {
    /// The target with this id, if any.
    pub fn target(&self, id: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.id == id)
    }
}

/// The application being deployed (`app:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// Defaults to the name of the directory containing the file.
    /// Always a safe single path component (`[A-Za-z0-9._-]`, not `.`/`..`).
    pub name: String,
    /// Defaults to the directory containing the file; a relative `path` is
    /// resolved against that directory.
    pub path: PathBuf,
}

/// One deployment target (`targets.<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A DNS label: `[a-z0-9-]{1,63}`, not starting or ending with `-`.
    pub id: String,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub platform: Platform,
    /// One of `linux`, `macos`, `windows`, `wsl`.
    pub os: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub config: PlatformConfig,
    pub agent: AgentSpec,
    pub health: Option<HealthSpec>,
    /// Variables for compose interpolation on this target.
    pub env: BTreeMap<String, String>,
    /// How many releases to keep on the target (>= 1, default
    /// [`DEFAULT_KEEP_RELEASES`]).
    pub keep_releases: u32,
    /// This target's own notifications, besides the project's.
    pub notifications: Vec<Notification>,
}

/// One place deploys are announced (`notifications:` entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: Channel,
    /// Which events: `deploy`, `rollback`, `upgrade`, `wave` (default: all).
    pub events: Vec<String>,
    /// Only what did not succeed.
    pub failures_only: bool,
}

/// A secret given in the file, or the name of a variable of the coordinator's environment.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretValue {
    Literal(String),
    Env(String),
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretValue::Literal(_) => f.write_str("Literal(\"********\")"),
            SecretValue::Env(n) => write!(f, "Env({n:?})"),
        }
    }
}

impl SecretValue {
    /// The value: the literal, or the variable (an error naming it when unset).
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretValue::Literal(s) => Ok(s.clone()),
            SecretValue::Env(n) => std::env::var(n).map_err(|_| format!("the coordinator's environment has no {n}")),
        }
    }
}

/// How SMTP is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587); the default.
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only for a relay on loopback or a trusted network.
    None,
}

/// Where a notification goes, and in which format.
#[derive(Clone, PartialEq, Eq)]
pub enum Channel {
    /// A JSON body, signed with HMAC-SHA256 when `secret` is set.
    Webhook { url: String, secret: Option<SecretValue> },
    /// A Slack incoming webhook (`{"text": …}`).
    Slack { url: String },
    /// A Discord webhook (`{"content": …}`).
    Discord { url: String },
    /// Mail over SMTP.
    Email {
        host: String,
        port: u16,
        tls: SmtpTls,
        username: Option<String>,
        password: Option<SecretValue>,
        from: String,
        to: Vec<String>,
    },
}

impl Channel {
    /// How it is named in logs: never a URL's path or query (webhook URLs carry tokens).
    pub fn shown(&self) -> String {
        match self {
            Channel::Webhook { url, .. } => format!("webhook {}", redact_url(url)),
            Channel::Slack { url } => format!("slack {}", redact_url(url)),
            Channel::Discord { url } => format!("discord {}", redact_url(url)),
            Channel::Email { host, port, to, .. } => format!("email to {} via {host}:{port}", to.join(", ")),
        }
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `scheme://host[:port]/…`: what a log may say of a URL.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // user:password@host
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let tail = if rest.len() > authority.len() { "/…" } else { "" };
    format!("{scheme}://{host}{tail}")
}

/// Event kinds a notification may ask for.
pub const NOTIFY_EVENTS: &[&str] = &["deploy", "rollback", "upgrade", "wave"];

impl Target {
    /// The agent this target deploys through: `agent.name`, or the target's own id.
    pub fn agent_name(&self) -> &str {
        self.agent.name.as_deref().unwrap_or(&self.id)
    }
}

/// Default for [`Target::keep_releases`].
pub const DEFAULT_KEEP_RELEASES: u32 = 5;
/// Default for [`AgentSpec::port`].
pub const DEFAULT_AGENT_PORT: u16 = 7444;

/// Accepted values of `os:`.
pub const OS_IDS: &[&str] = &["linux", "macos", "windows", "wsl"];

/// Does a host match a target's declared `os:`? `os` is what the agent reports (`linux`,
/// `macos`, `windows`), `wsl` whether that Linux runs under WSL. `linux` accepts WSL too (it is
/// a Linux); `wsl` demands it. `None` when it matches, else why not, in one sentence.
pub fn os_mismatch(declared: &str, os: &str, wsl: bool) -> Option<String> {
    let host = if wsl { format!("{os} under WSL") } else { os.to_string() };
    let ok = match declared {
        "linux" => os == "linux",
        "wsl" => os == "linux" && wsl,
        "macos" => os == "macos",
        "windows" => os == "windows",
        _ => false,
    };
    if ok {
        return None;
    }
    let hint = match (declared, os, wsl) {
        ("windows", "linux", true) => " (the agent runs inside WSL: declare os: wsl or linux)",
        _ => "",
    };
    Some(format!("os: {declared} is declared, but the agent's host is {host}{hint}"))
}

/// Deployment platform of a target (`platform:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Platform {
    #[serde(rename = "docker_compose")]
    DockerCompose,
    #[serde(rename = "podman")]
    Podman,
    #[serde(rename = "kubernetes")]
    Kubernetes,
    #[serde(rename = "swarm")]
    Swarm,
    #[serde(rename = "nomad")]
    Nomad,
    #[serde(rename = "ssh_raw")]
    SshRaw,
}

impl Platform {
    /// All platforms, in documentation order.
    pub const ALL: [Platform; 6] = [
        Platform::DockerCompose,
        Platform::Podman,
        Platform::Kubernetes,
        Platform::Swarm,
        Platform::Nomad,
        Platform::SshRaw,
    ];

    /// The id used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::DockerCompose => "docker_compose",
            Platform::Podman => "podman",
            Platform::Kubernetes => "kubernetes",
            Platform::Swarm => "swarm",
            Platform::Nomad => "nomad",
            Platform::SshRaw => "ssh_raw",
        }
    }

    /// The `config:` keys this platform accepts.
    pub fn config_keys(self) -> &'static [&'static str] {
        match self {
            Platform::DockerCompose => &[
                "compose_project",
                "pull_policy",
                "restart_policy",
                "images",
                "registry",
                "strategy",
                "canary",
                "proxy",
            ],
            Platform::Podman => &[
                "use_quadlet",
                "rootless",
                "pod_name",
                "compose_project",
                "images",
                "registry",
                "start_machine",
                "kube_play",
                "strategy",
                "canary",
                "proxy",
            ],
            Platform::Kubernetes => &[
                "namespace",
                "kubeconfig",
                "context",
                "strategy",
                "canary",
                "replicas",
                "resource_limits",
                "workloads",
                "service_type",
                "volume_size",
                "storage_class",
                "ingress",
                "wait_image",
                "rollout_timeout",
                "allow",
            ],
            Platform::Swarm => &["stack_name", "replicas", "update_parallelism", "update_delay", "images", "registry"],
            Platform::Nomad => &[
                "datacenter",
                "job_name",
                "count",
                "driver",
                "region",
                "namespace",
                "group",
                "update",
                "service_provider",
                "wait_image",
                "allow",
                "address",
                "token_file",
                "ca_cert",
                "client_cert",
                "client_key",
                "tls_server_name",
            ],
            Platform::SshRaw => &["deploy_path", "service_manager", "service_name", "pre_script", "post_script"],
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Platform::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            format!("unknown platform {s:?} (expected one of: {})", Platform::ALL.map(Platform::as_str).join(", "))
        })
    }
}

/// How the agent on a target gets its work (`agent.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// The coordinator connects to the agent.
    #[default]
    #[serde(rename = "push")]
    Push,
    /// The agent polls the coordinator.
    #[serde(rename = "pull")]
    Pull,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Push => "push",
            Mode::Pull => "pull",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "push" => Ok(Mode::Push),
            "pull" => Ok(Mode::Pull),
            _ => Err(format!("unknown agent mode {s:?} (expected one of: push, pull)")),
        }
    }
}

/// The agent on a target (`agent:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// Default [`Mode::Push`].
    pub mode: Mode,
    /// Default [`DEFAULT_AGENT_PORT`] (7444).
    pub port: u16,
    /// Default 30s; must be > 0.
    pub poll_interval: Duration,
    /// The name the agent is enrolled under (`agent: {name: …}`); `None`: the target's id.
    /// Targets of several projects that name one agent deploy their apps side by side on it.
    pub name: Option<String>,
    /// Pull mode: the agent holds a watch stream, so an order reaches it at once (default
    /// true); `false` for a network that cuts long-lived connections: it polls only.
    pub watch: bool,
    /// How often the coordinator says "alive" on an idle watch stream (default 60 s, 10 s to
    /// 1 h): what keeps NAT mappings open and lets the agent notice a dead link within this
    /// and 20 s. Longer costs fewer bytes where the NATs on the way allow it.
    pub keepalive: Duration,
}

/// [`AgentSpec::keepalive`]'s default.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(60);

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            mode: Mode::Push,
            port: DEFAULT_AGENT_PORT,
            poll_interval: Duration::from_secs(30),
            name: None,
            watch: true,
            keepalive: DEFAULT_KEEPALIVE,
        }
    }
}

/// Service manager for `ssh_raw` targets (`config.service_manager`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceManager {
    #[default]
    #[serde(rename = "none")]
    None,
    #[serde(rename = "systemd")]
    Systemd,
    #[serde(rename = "supervisord")]
    Supervisord,
    #[serde(rename = "pm2")]
    Pm2,
    /// Alpine, Gentoo: `rc-service NAME restart`.
    #[serde(rename = "openrc")]
    OpenRc,
    /// macOS: `launchctl kickstart -k DOMAIN/LABEL` (`service_name` is the job's label).
    #[serde(rename = "launchd")]
    Launchd,
}

impl ServiceManager {
    pub const ALL: [ServiceManager; 6] = [
        ServiceManager::None,
        ServiceManager::Systemd,
        ServiceManager::Supervisord,
        ServiceManager::Pm2,
        ServiceManager::OpenRc,
        ServiceManager::Launchd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceManager::None => "none",
            ServiceManager::Systemd => "systemd",
            ServiceManager::Supervisord => "supervisord",
            ServiceManager::Pm2 => "pm2",
            ServiceManager::OpenRc => "openrc",
            ServiceManager::Launchd => "launchd",
        }
    }
}

impl fmt::Display for ServiceManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceManager {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ServiceManager::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            format!(
                "unknown service manager {s:?} (expected one of: {})",
                ServiceManager::ALL.map(ServiceManager::as_str).join(", ")
            )
        })
    }
}

/// Per-platform settings (`config:`); the variant always matches
/// [`Target::platform`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformConfig {
    DockerCompose {
        compose_project: Option<String>,
        pull_policy: Option<String>,
        restart_policy: Option<String>,
        /// dockfra addition, `images: bundle`: the coordinator saves the services' images from
        /// its engine into the bundle and the agent loads them (air-gapped / NAT'd hosts).
        /// Default `images: registry`: the agent's engine has or pulls them.
        ship_images: bool,
        /// dockfra addition, `registry: HOST[:PORT]`: the coordinator tags and pushes the
        /// services' images there and the compose file names them by it; the agent's engine
        /// pulls them.
        registry: Option<String>,
        /// `strategy: blue-green | canary`: zero-downtime releases behind the agent's proxy.
        slots: Option<Box<SlotConfig>>,
    },
    Podman {
        /// Run the services as Quadlet units under systemd (else `podman-compose`).
        use_quadlet: bool,
        /// The agent runs as an unprivileged user: rootless Podman, user units.
        rootless: bool,
        /// Put every container in this pod.
        pod_name: Option<String>,
        /// dockfra addition: the project name (container and unit prefix); default the app's.
        compose_project: Option<String>,
        /// dockfra addition, `images: bundle` as for `docker_compose`; the agent `podman load`s.
        ship_images: bool,
        /// dockfra addition, `registry: HOST[:PORT][/PATH]` as for `docker_compose`: pushed
        /// there by the coordinator, pulled by the host's Podman.
        registry: Option<String>,
        /// dockfra addition, macOS: start the default `podman machine` when it is stopped.
        start_machine: bool,
        /// `strategy: blue-green | canary` (podman-compose mode only).
        slots: Option<Box<SlotConfig>>,
        /// dockfra addition: run the app's Kubernetes rendering with `podman kube play`.
        kube_play: bool,
    },
    Kubernetes(Box<KubernetesConfig>),
    Swarm {
        stack_name: Option<String>,
        replicas: Option<u32>,
        update_parallelism: Option<u32>,
        update_delay: Option<Duration>,
        /// dockfra addition, `images: bundle`: loaded into the manager's engine (a one-node
        /// swarm, or nodes that get them otherwise).
        ship_images: bool,
        /// dockfra addition, `registry: HOST[:PORT]`: pushed there, pulled by every node.
        registry: Option<String>,
    },
    Nomad(Box<NomadConfig>),
    SshRaw {
        deploy_path: Option<PathBuf>,
        service_manager: ServiceManager,
        service_name: Option<String>,
        pre_script: Option<String>,
        post_script: Option<String>,
    },
}

/// How a target replaces a release (`config.strategy`): Kubernetes, and with `SlotConfig`
/// `docker_compose` and `podman`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// A Deployment's RollingUpdate: new pods before old ones go (the default).
    #[default]
    #[serde(rename = "rolling")]
    Rolling,
    /// Every old pod goes before a new one starts.
    #[serde(rename = "recreate")]
    Recreate,
    /// A second Deployment per slot (blue, green); the Service switches when the new one is ready.
    #[serde(rename = "blue-green")]
    BlueGreen,
    /// A canary beside the stable release, its share of traffic raised step by step.
    #[serde(rename = "canary")]
    Canary,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [Strategy::Rolling, Strategy::Recreate, Strategy::BlueGreen, Strategy::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Recreate => "recreate",
            Strategy::BlueGreen => "blue-green",
            Strategy::Canary => "canary",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::ALL.into_iter().find(|m| m.as_str() == s).ok_or_else(|| {
            format!("unknown strategy {s:?} (expected one of: {})", Strategy::ALL.map(Strategy::as_str).join(", "))
        })
    }
}

/// The seed's canary steps: the canary's share of traffic, in percent, raised in order.
pub const DEFAULT_CANARY_STEPS: [u8; 3] = [10, 50, 100];

/// A stepped canary (`config.canary`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    /// Percentages, rising, the last 100.
    pub steps: Vec<u8>,
    /// How long each step's checks must hold before the next (default 30s).
    pub pause: Duration,
}

impl Default for Canary {
    fn default() -> Self {
        Canary { steps: DEFAULT_CANARY_STEPS.to_vec(), pause: Duration::from_secs(30) }
    }
}

/// Zero-downtime releases on one host (`docker_compose`, `podman`): `strategy: blue-green`
/// or `canary`, with `proxy:` saying which services the agent's HAProxy fronts and how it
/// switches. `rolling` and `recreate` (the default) replace containers in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotConfig {
    /// `BlueGreen` or `Canary`.
    pub strategy: Strategy,
    /// With `strategy: canary`: its steps.
    pub canary: Canary,
    /// `proxy.services`: the fronted services (default: every one that publishes a port).
    pub services: Vec<String>,
    /// `proxy.drain`: how long the old slot may finish its requests (default 10s).
    pub drain: Duration,
    /// `proxy.health_path`: the proxy's HTTP check of a slot (default: a TCP connect).
    pub health_path: Option<String>,
}

/// The Kubernetes workload a compose service becomes (`config.workloads`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Workload {
    #[default]
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Deployment => "deployment",
            Workload::StatefulSet => "statefulset",
            Workload::DaemonSet => "daemonset",
        }
    }
    /// The object's `kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Workload::Deployment => "Deployment",
            Workload::StatefulSet => "StatefulSet",
            Workload::DaemonSet => "DaemonSet",
        }
    }
}

/// A value given once for all, with exceptions per name (`volume_size: 1Gi`, or
/// `volume_size: { default: 1Gi, data: 20Gi }`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerName {
    pub default: Option<String>,
    pub by_name: BTreeMap<String, String>,
}

impl PerName {
    /// The value for `name`: its own, else the default.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).or(self.default.as_ref()).map(String::as_str)
    }
}

/// An Ingress in front of one service (`config.ingress`): canary weights shift traffic on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress {
    pub host: String,
    /// The compose service it routes to (default: the first one that publishes a port).
    pub service: Option<String>,
    /// Its port (default: the service's first).
    pub port: Option<u16>,
    pub path: String,
    /// `ingressClassName` (default: the cluster's default class).
    pub class: Option<String>,
    /// A TLS Secret for `host`.
    pub tls_secret: Option<String>,
}

/// `config:` of a `kubernetes` target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub namespace: Option<String>,
    pub kubeconfig: Option<String>,
    /// A context of the kubeconfig (default: its current context).
    pub context: Option<String>,
    pub strategy: Strategy,
    /// With `strategy: canary`: its steps.
    pub canary: Canary,
    /// Replicas of every Deployment/StatefulSet (a service's `deploy.replicas` wins).
    pub replicas: Option<u32>,
    /// Default limits of every container (`cpu`, `memory`); `deploy.resources` wins.
    pub resource_limits: BTreeMap<String, String>,
    /// Services that become a StatefulSet or a DaemonSet instead of a Deployment.
    pub workloads: BTreeMap<String, Workload>,
    /// `ClusterIP` (default), `NodePort` or `LoadBalancer`, for all or per service.
    pub service_type: PerName,
    /// Size of each named volume's claim (default 1Gi), for all or per volume.
    pub volume_size: PerName,
    pub storage_class: Option<String>,
    pub ingress: Option<Ingress>,
    /// The image of the init containers that wait for a dependency (default busybox).
    pub wait_image: Option<String>,
    /// How long a rollout may take (default 5m).
    pub rollout_timeout: Option<Duration>,
    /// Compose keys whose loss is accepted (a dangerous loss is an error otherwise).
    pub allow: Vec<String>,
}

/// How a Nomad job groups the services (`config.group`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum NomadGrouping {
    /// One group per service: each scales and moves alone (the default).
    #[default]
    PerService,
    /// Every service a task of one group: placed together, sharing a network namespace.
    Single,
}

/// The job's `update` block (`config.update`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NomadUpdate {
    pub max_parallel: u32,
    /// Canaries placed before the old allocations are replaced (0: none).
    pub canary: u32,
    pub auto_revert: bool,
    pub auto_promote: bool,
    pub min_healthy_time: Duration,
    pub healthy_deadline: Duration,
    pub progress_deadline: Duration,
}

impl Default for NomadUpdate {
    fn default() -> Self {
        NomadUpdate {
            max_parallel: 1,
            canary: 0,
            auto_revert: true,
            auto_promote: false,
            min_healthy_time: Duration::from_secs(10),
            healthy_deadline: Duration::from_secs(300),
            progress_deadline: Duration::from_secs(600),
        }
    }
}

/// `config:` of a `nomad` target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NomadConfig {
    /// Datacenters the job may run in (default `["dc1"]`); the seed's `datacenter: dc1`.
    pub datacenters: Vec<String>,
    /// The job's id (default: the app's name).
    pub job_name: Option<String>,
    /// Allocations of every group (a service's `deploy.replicas` wins).
    pub count: Option<u32>,
    /// The task driver: `docker` (default) or `podman`.
    pub driver: Option<String>,
    pub region: Option<String>,
    pub namespace: Option<String>,
    pub group: NomadGrouping,
    pub update: NomadUpdate,
    /// Where services register: `nomad` (default, no Consul needed) or `consul`.
    pub service_provider: Option<String>,
    /// The image of the prestart tasks that wait for a dependency (default busybox).
    pub wait_image: Option<String>,
    /// Compose keys whose loss is accepted.
    pub allow: Vec<String>,
    /// The Nomad HTTP API the agent talks to (default `http://127.0.0.1:4646`, the local agent).
    pub address: Option<String>,
    /// A file on the agent's host holding the ACL token (else the agent's `NOMAD_TOKEN`).
    pub token_file: Option<String>,
    /// With an `https://` address: the CA (PEM) that signed the servers' certificates.
    pub ca_cert: Option<String>,
    /// A client certificate and key (PEM) when the servers verify clients (`verify_https_client`).
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// The name the servers' certificate carries, when not the address's host (Nomad's
    /// `server.<region>.nomad`).
    pub tls_server_name: Option<String>,
}

impl PlatformConfig {
    /// The config of `platform` with every key unset.
    pub fn default_for(platform: Platform) -> PlatformConfig {
        match platform {
            Platform::DockerCompose => PlatformConfig::DockerCompose {
                compose_project: None,
                pull_policy: None,
                restart_policy: None,
                ship_images: false,
                registry: None,
                slots: None,
            },
            Platform::Podman => PlatformConfig::Podman {
                use_quadlet: false,
                rootless: false,
                pod_name: None,
                compose_project: None,
                ship_images: false,
                registry: None,
                start_machine: false,
                slots: None,
                kube_play: false,
            },
            Platform::Kubernetes => PlatformConfig::Kubernetes(Box::default()),
            Platform::Swarm => PlatformConfig::Swarm {
                stack_name: None,
                replicas: None,
                update_parallelism: None,
                update_delay: None,
                ship_images: false,
                registry: None,
            },
            Platform::Nomad => PlatformConfig::Nomad(Box::default()),
            Platform::SshRaw => PlatformConfig::SshRaw {
                deploy_path: None,
                service_manager: ServiceManager::None,
                service_name: None,
                pre_script: None,
                post_script: None,
            },
        }
    }

    /// The platform this config belongs to.
    pub fn platform(&self) -> Platform {
        match self {
            PlatformConfig::DockerCompose { .. } => Platform::DockerCompose,
            PlatformConfig::Podman { .. } => Platform::Podman,
            PlatformConfig::Kubernetes(_) => Platform::Kubernetes,
            PlatformConfig::Swarm { .. } => Platform::Swarm,
            PlatformConfig::Nomad(_) => Platform::Nomad,
            PlatformConfig::SshRaw { .. } => Platform::SshRaw,
        }
    }
}

/// Post-deploy health checking (`health:`). Serializable (JSON) for
/// embedding in signed manifests; durations are strings such as `"2s"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub checks: Vec<HealthCheck>,
    /// Default 3.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Default 2s.
    #[serde(default = "default_interval", with = "duration_str")]
    pub interval: Duration,
    /// Default 5s; must be > 0.
    #[serde(default = "default_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// Default 0s.
    #[serde(default, with = "duration_str")]
    pub start_period: Duration,
}

fn default_retries() -> u32 {
    3
}
fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_http_status() -> u16 {
    200
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            checks: Vec::new(),
            retries: default_retries(),
            interval: default_interval(),
            timeout: default_timeout(),
            start_period: Duration::ZERO,
        }
    }
}

/// One health check. JSON form: `{"type": "http", "url": ..., "status": 200}`,
/// `{"type": "tcp", "address": "127.0.0.1:80"}`, `{"type": "command", "command": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HealthCheck {
    /// GET `url` (must be `http://`); expect `status` (default 200) and,
    /// when set, a body containing `body`.
    Http {
        url: String,
        #[serde(default = "default_http_status")]
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// A TCP connect to `host:port` succeeds.
    Tcp { address: String },
    /// A shell command exits 0.
    Command { command: String },
}

/// serde helpers: a [`Duration`] as a string such as `"2s"` or `"500ms"`
/// (see [`format_duration`] / [`parse_duration`]). Use with
/// `#[serde(with = "duration_str")]`.
pub mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

// ───────────────────────────── durations ─────────────────────────────

/// Parse a duration: one or more `<number><unit>` groups, units `ns`, `us`
/// (`µs`), `ms`, `s`, `m`, `h`; e.g. `500ms`, `30s`, `5m`, `1h`, `1h30m`,
/// `1.5s`. Rejects the empty string, bare numbers, negative values and
/// unknown units.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "expected e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"7d\"";
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration ({HINT})"));
    }
    if t.starts_with('-') {
        return Err(format!("negative duration {s:?} is not allowed"));
    }
    let bad = |why: &str| format!("invalid duration {s:?}: {why} ({HINT})");
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..n];
            rest = &r[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad("expected a number"));
        }
        let unit_len: usize = rest.chars().take_while(|c| c.is_alphabetic()).map(char::len_utf8).sum();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "" => return Err(bad("missing unit (ms, s, m, h or d)")),
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        let too_big = || bad("too large");
        let int: u128 = if int_part.is_empty() { 0 } else { int_part.parse().map_err(|_| too_big())? };
        let mut group = int.checked_mul(nanos_per).ok_or_else(too_big)?;
        if !frac_part.is_empty() {
            // Sub-nanosecond digits are dropped.
            let digits = &frac_part[..frac_part.len().min(18)];
            let frac: u128 = digits.parse().map_err(|_| too_big())?;
            let scale = 10u128.pow(digits.len() as u32);
            group = group.checked_add(frac * nanos_per / scale).ok_or_else(too_big)?;
        }
        total = total.checked_add(group).ok_or_else(too_big)?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Format a duration so that [`parse_duration`] reads it back exactly:
/// `500ms`, `30s`, `5m`, `1h`, `1h30m`, `1s500ms`; zero is `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos() as u64;
    let parts = [
        (secs / 3600, "h"),
        (secs % 3600 / 60, "m"),
        (secs % 60, "s"),
        (nanos / 1_000_000, "ms"),
        (nanos / 1_000 % 1_000, "us"),
        (nanos % 1_000, "ns"),
    ];
    let mut out = String::new();
    for (v, unit) in parts {
        if v > 0 {
            out.push_str(&v.to_string());
            out.push_str(unit);
        }
    }
    out
}

// ───────────────────────────── loading ─────────────────────────────

/// Read and parse `file`.
pub fn load(file: &Path) -> Result<Project, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io { file: file.to_path_buf(), source })?;
    parse(&text, file)
}

const TOP_KEYS: &[&str] = &["app", "targets", "waves", "notifications"];
const NOTIFY_KEYS: &[&str] = &[
    "type",
    "url",
    "secret",
    "secret_env",
    "events",
    "failures_only",
    "smtp",
    "tls",
    "username",
    "password",
    "password_env",
    "from",
    "to",
];
const WAVE_KEYS: &[&str] = &["name", "selector"];
const APP_KEYS: &[&str] = &["name", "path"];
const TARGET_KEYS: &[&str] = &[
    "host",
    "port",
    "user",
    "platform",
    "os",
    "labels",
    "config",
    "agent",
    "health",
    "env",
    "keep_releases",
    "notifications",
];
const AGENT_KEYS: &[&str] = &["name", "mode", "port", "poll_interval", "watch", "keepalive"];
const HEALTH_KEYS: &[&str] = &["checks", "retries", "interval", "timeout", "start_period"];
const CHECK_KINDS: &[&str] = &["http", "tcp", "command"];
const HTTP_KEYS: &[&str] = &["url", "status", "body"];
const TCP_KEYS: &[&str] = &["address"];

/// Parse the text of a deploy-targets file. `file` is used in error
/// messages and for the `app` defaults; it is not read.
pub fn parse(text: &str, file: &Path) -> Result<Project, ConfigError> {
    let root: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(yaml_error(text, file, &e)),
    };
    let top = Cx { file, target: None };
    let map = match &root {
        Value::Mapping(m) => m,
        Value::Null => return Err(top.err("", "file is empty (expected a `targets:` mapping)")),
        other => {
            return Err(top.err("", format!("top level must be a mapping with `targets:`, found {}", describe(other))))
        }
    };
    let f = top.fields("", map, TOP_KEYS, "")?;
    let app = parse_app(&top, &f)?;

    let targets_v = f.get("targets").ok_or_else(|| top.err("targets", "missing required key"))?;
    let targets_map = top.mapping("targets", targets_v)?;
    if targets_map.is_empty() {
        return Err(top.err("targets", "no targets defined"));
    }
    let mut targets: Vec<Target> = Vec::with_capacity(targets_map.len());
    for (k, v) in targets_map {
        let id = match k {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(top.err("targets", format!("target ids must be strings, found {}", describe(other)))),
        };
        if targets.iter().any(|t| t.id == id) {
            return Err(Cx { file, target: Some(&id) }.err("", format!("duplicate target id {id:?}")));
        }
        targets.push(parse_target(file, &id, v)?);
    }
    let waves = match f.get("waves") {
        Some(v) => parse_waves(&top, v)?,
        None => Vec::new(),
    };
    let notifications = match f.get("notifications") {
        Some(v) => parse_notifications(&top, "notifications", v)?,
        None => Vec::new(),
    };
    // An agent keeps one release store per app: two targets of one project (one app) cannot
    // share it.
    for (i, t) in targets.iter().enumerate() {
        if let Some(other) = targets[..i].iter().find(|o| o.agent_name() == t.agent_name()) {
            return Err(Cx { file, target: Some(&t.id) }.err(
                "agent.name",
                format!(
                    "target {:?} already deploys app {:?} through agent {:?}: an agent hosts one release of an app (two targets of one project need two agents)",
                    other.id,
                    app.name,
                    t.agent_name()
                ),
            ));
        }
    }
    Ok(Project { file: file.to_path_buf(), app, targets, waves, notifications })
}

/// The projects one coordinator serves (`serve --root A --root B`), checked as a whole: app
/// names and target ids are unique across them, and targets of several projects that name one
/// agent agree on how it is reached (mode, port, host). With one project this is that project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projects {
    list: Vec<Project>,
    /// Target id → (project, target) positions: every lookup by id or agent is a hash
    /// lookup, not a scan (a coordinator of 10,000 targets looks them up on every poll).
    by_id: HashMap<String, (usize, usize)>,
    /// Agent name → the positions of the targets that deploy through it, in file order.
    by_agent: HashMap<String, Vec<(usize, usize)>>,
}

impl Projects {
    /// Load and check every file.
    pub fn load(files: &[PathBuf]) -> Result<Projects, ConfigError> {
        Projects::check(files.iter().map(|f| load(f)).collect::<Result<_, _>>()?)
    }

    /// Check projects that were parsed one by one against each other.
    pub fn check(list: Vec<Project>) -> Result<Projects, ConfigError> {
        // What earlier projects define: a target id → its project; an agent name → the
        // project and first target of it.
        let mut seen_ids: HashMap<&str, usize> = HashMap::new();
        let mut seen_agents: HashMap<&str, (usize, &Target)> = HashMap::new();
        for (i, p) in list.iter().enumerate() {
            let invalid = |target: Option<&str>, key: &str, message: String| ConfigError::Invalid {
                file: p.file.clone(),
                target: target.map(String::from),
                key: (!key.is_empty()).then(|| key.to_string()),
                message,
            };
            if let Some(o) = list[..i].iter().find(|o| o.app.name == p.app.name) {
                return Err(invalid(
                    None,
                    "app.name",
                    format!(
                        "app {:?} is also served from {}: each project needs its own app name                          (an agent keeps one release store per app)",
                        p.app.name,
                        o.file.display()
                    ),
                ));
            }
            for t in &p.targets {
                for o in &list[..i] {
                    if seen_ids.get(t.id.as_str()).is_some_and(|j| std::ptr::eq(&list[*j], o)) {
                        return Err(invalid(
                            Some(&t.id),
                            "",
                            format!(
                                "target id {:?} is also defined in {}: target ids are unique across the projects                                  one coordinator serves (to deploy both apps to one agent, give the targets their                                  own ids and the same `agent: {{name: …}}`)",
                                t.id,
                                o.file.display()
                            ),
                        ));
                    }
                    let Some(s) =
                        seen_agents.get(t.agent_name()).and_then(|(j, s)| std::ptr::eq(&list[*j], o).then_some(*s))
                    else {
                        continue;
                    };
                    let also = format!(
                        "agent {:?} is also the agent of target {:?} ({})",
                        t.agent_name(),
                        s.id,
                        o.file.display()
                    );
                    if s.agent.mode != t.agent.mode {
                        return Err(invalid(
                            Some(&t.id),
                            "agent.mode",
                            format!("{also}, in {} mode: one agent runs in one mode", s.agent.mode.as_str()),
                        ));
                    }
                    if t.agent.mode == Mode::Push && (s.agent.port != t.agent.port || s.host != t.host) {
                        return Err(invalid(
                            Some(&t.id),
                            if s.host != t.host { "host" } else { "agent.port" },
                            format!(
                                "{also}, dialled at {}:{}: targets sharing a push agent name the same host and port",
                                s.host.as_deref().unwrap_or("(no host)"),
                                s.agent.port
                            ),
                        ));
                    }
                }
            }
            for t in &p.targets {
                seen_ids.entry(t.id.as_str()).or_insert(i);
                seen_agents.entry(t.agent_name()).or_insert((i, t));
            }
        }
        let mut by_id = HashMap::new();
        let mut by_agent: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
        for (i, p) in list.iter().enumerate() {
            for (j, t) in p.targets.iter().enumerate() {
                by_id.entry(t.id.clone()).or_insert((i, j));
                by_agent.entry(t.agent_name().to_string()).or_default().push((i, j));
            }
        }
        let all = Projects { list, by_id, by_agent };
        // An agent name must not be the id of a target that deploys through another agent:
        // `token create X` and `agents revoke X` would not know which is meant.
        for (p, t) in all.targets() {
            let name = t.agent_name();
            if let Some((q, u)) = all.target(name).filter(|(_, u)| u.agent_name() != name) {
                return Err(ConfigError::Invalid {
                    file: p.file.clone(),
                    target: Some(t.id.clone()),
                    key: Some("agent.name".into()),
                    message: format!(
                        "agent name {name:?} is the id of target {:?} ({}), which deploys through agent {:?}: \
                         choose another name",
                        u.id,
                        q.file.display(),
                        u.agent_name()
                    ),
                });
            }
        }
        Ok(all)
    }

    /// Every target with its project, in file order.
    pub fn targets(&self) -> impl Iterator<Item = (&Project, &Target)> {
        self.list.iter().flat_map(|p| p.targets.iter().map(move |t| (p, t)))
    }

    /// The target with this id and its project.
    pub fn target(&self, id: &str) -> Option<(&Project, &Target)> {
        self.by_id.get(id).map(|&(i, j)| (&self.list[i], &self.list[i].targets[j]))
    }

    /// The targets that deploy through the agent `name` (one per app), in file order.
    pub fn of_agent<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a Project, &'a Target)> + 'a {
        self.by_agent.get(name).into_iter().flatten().map(|&(i, j)| (&self.list[i], &self.list[i].targets[j]))
    }

    /// The projects, in the order they were given.
    pub fn list(&self) -> &[Project] {
        &self.list
    }

    /// The project files, for messages ("no target x in a.yaml, b.yaml").
    pub fn files(&self) -> String {
        self.list.iter().map(|p| p.file.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

fn parse_waves(top: &Cx, v: &Value) -> Result<Vec<WaveSpec>, ConfigError> {
    let Value::Sequence(seq) = v else {
        return Err(top.err("waves", format!("expected a list of {{name, selector}}, found {}", describe(v))));
    };
    let mut waves: Vec<WaveSpec> = Vec::new();
    for (i, w) in seq.iter().enumerate() {
        let at = format!("waves[{i}]");
        let m = top.mapping(&at, w)?;
        let f = top.fields(&at, m, WAVE_KEYS, "")?;
        let name = match f.get("name") {
            Some(n) => top.string(&format!("{at}.name"), n)?,
            None => return Err(top.err(format!("{at}.name"), "missing required key")),
        };
        if let Err(why) = check_dns_label(&name) {
            return Err(top.err(format!("{at}.name"), format!("invalid wave name: {why}")));
        }
        if waves.iter().any(|x| x.name == name) {
            return Err(top.err(format!("{at}.name"), format!("duplicate wave name {name:?}")));
        }
        let selector = match f.get("selector") {
            Some(s) => {
                let s = top.string(&format!("{at}.selector"), s)?;
                crate::selector::Selector::parse(&s).map_err(|e| top.err(format!("{at}.selector"), e.to_string()))?;
                Some(s)
            }
            None => None,
        };
        if let Some(prev) = waves.iter().find(|x| x.selector.is_none()) {
            return Err(top.err(
                &at,
                format!("wave {:?} has no selector, so it takes every target left: it must be the last", prev.name),
            ));
        }
        waves.push(WaveSpec { name, selector });
    }
    Ok(waves)
}

fn yaml_error(text: &str, file: &Path, e: &serde_yaml_ng::Error) -> ConfigError {
    let loc = e.location();
    let (line, column) = (loc.as_ref().map(|l| l.line()), loc.as_ref().map(|l| l.column()));
    let mut message = e.to_string();
    if message.contains("duplicate entry") {
        if let Some((path, key)) = dup::find(text) {
            // serde_yaml_ng points at the enclosing mapping; point at the
            // key's lines instead when that is unambiguous.
            let lines = key_lines(text, &key);
            let at = match lines.as_slice() {
                [a, b] => format!(" (lines {a} and {b})"),
                _ => String::new(),
            };
            let (target, key, message) = match path.as_slice() {
                [t] if t == "targets" => (Some(key.clone()), None, format!("duplicate target id {key:?}{at}")),
                [t, id, rest @ ..] if t == "targets" => {
                    (Some(id.clone()), Some(join_path(rest, &key)), format!("duplicate key{at}"))
                }
                _ => (None, Some(join_path(&path, &key)), format!("duplicate key{at}")),
            };
            return ConfigError::Invalid { file: file.to_path_buf(), target, key, message };
        }
    }
    if let (Some(l), Some(c)) = (line, column) {
        if !message.contains("line ") {
            message = format!("{message} at line {l} column {c}");
        }
    }
    ConfigError::Yaml { file: file.to_path_buf(), line, column, message }
}

/// 1-based numbers of the lines that start (after indentation) with
/// `key:`, `"key":` or `'key':`.
fn key_lines(text: &str, key: &str) -> Vec<usize> {
    let forms = [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")];
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            forms.iter().any(|f| l.starts_with(f.as_str()))
        })
        .map(|(i, _)| i + 1)
        .collect()
}

fn join_path(prefix: &[String], key: &str) -> String {
    let mut s = String::new();
    for p in prefix.iter().map(String::as_str).chain([key]) {
        if !s.is_empty() && !p.starts_with('[') {
            s.push('.');
        }
        s.push_str(p);
    }
    s
}

fn parse_app(top: &Cx, f: &Fields) -> Result<AppSpec, ConfigError> {
    let dir = file_dir(top.file);
    let (mut name, mut path) = (None, None);
    if let Some(v) = f.get("app") {
        let m = top.mapping("app", v)?;
        let af = top.fields("app", m, APP_KEYS, "")?;
        if let Some(v) = af.get("name") {
            let n = top.string("app.name", v)?;
            if !is_safe_component(&n) {
                return Err(top.err(
                    "app.name",
                    format!(
                        "invalid app name {n:?}: must be a single path component of [A-Za-z0-9._-] (not \".\" or \"..\")"
                    ),
                ));
            }
            name = Some(n);
        }
        if let Some(v) = af.get("path") {
            let p = top.string("app.path", v)?;
            if p.is_empty() {
                return Err(top.err("app.path", "must not be empty"));
            }
            path = Some(clean_path(&dir.join(p)));
        }
    }
    let name = match name {
        Some(n) => n,
        None => {
            let derived = dir_name(&dir).ok_or_else(|| {
                top.err(
                    "app.name",
                    format!("cannot derive an app name from directory {:?}; set app.name", dir.display()),
                )
            })?;
            if !is_safe_component(&derived) {
                return Err(top.err(
                    "app.name",
                    format!("directory name {derived:?} is not a safe app name ([A-Za-z0-9._-]); set app.name"),
                ));
            }
            derived
        }
    };
    if name == crate::bundle::AGENT_APP {
        return Err(top.err(
            "app.name",
            format!("{name:?} is the name under which agents keep their own upgrades: choose another app name"),
        ));
    }
    Ok(AppSpec { name, path: path.unwrap_or(dir) })
}

fn parse_target(file: &Path, id: &str, v: &Value) -> Result<Target, ConfigError> {
    let cx = Cx { file, target: Some(id) };
    if let Err(why) = check_dns_label(id) {
        return Err(cx.err("", format!("invalid target id: {why}")));
    }
    let map = match v {
        Value::Mapping(m) => m,
        other => return Err(cx.err("", format!("target must be a mapping, found {}", describe(other)))),
    };
    let f = cx.fields("", map, TARGET_KEYS, "")?;

    let platform = match f.get("platform") {
        None => {
            return Err(cx.err(
                "platform",
                format!("missing required key (expected one of: {})", Platform::ALL.map(Platform::as_str).join(", ")),
            ))
        }
        Some(v) => {
            let s = cx.string("platform", v)?;
            s.parse::<Platform>().map_err(|e| cx.err("platform", e))?
        }
    };

    let host = f.get("host").map(|v| cx.string("host", v)).transpose()?;
    if host.as_deref() == Some("") {
        return Err(cx.err("host", "must not be empty"));
    }
    let port = f.get("port").map(|v| cx.port("port", v)).transpose()?;
    let user = f.get("user").map(|v| cx.string("user", v)).transpose()?;
    let os = match f.get("os") {
        None => None,
        Some(v) => {
            let s = cx.string("os", v)?;
            if !OS_IDS.contains(&s.as_str()) {
                return Err(cx.err("os", format!("unknown os {s:?} (expected one of: {})", OS_IDS.join(", "))));
            }
            Some(s)
        }
    };
    let labels = match f.get("labels") {
        None => BTreeMap::new(),
        Some(v) => cx.string_map("labels", v)?,
    };
    let config = parse_platform_config(&cx, platform, f.get("config"))?;
    let agent = match f.get("agent") {
        None => AgentSpec::default(),
        Some(v) => parse_agent(&cx, v)?,
    };
    let health = f.get("health").map(|v| parse_health(&cx, v)).transpose()?;
    let env = match f.get("env") {
        None => BTreeMap::new(),
        Some(v) => {
            let env = cx.string_map("env", v)?;
            if let Some(bad) = env.keys().find(|k| !is_env_name(k)) {
                return Err(cx.err(format!("env.{bad}"), "invalid variable name (expected [A-Za-z_][A-Za-z0-9_]*)"));
            }
            env
        }
    };
    let keep_releases = match f.get("keep_releases") {
        None => DEFAULT_KEEP_RELEASES,
        Some(v) => {
            let n = cx.uint("keep_releases", v, u32::MAX as u64)?;
            if n < 1 {
                return Err(cx.err("keep_releases", "must be at least 1"));
            }
            n as u32
        }
    };
    let notifications = match f.get("notifications") {
        Some(v) => parse_notifications(&cx, "notifications", v)?,
        None => Vec::new(),
    };
    Ok(Target {
        id: id.to_string(),
        host,
        port,
        user,
        platform,
        os,
        labels,
        config,
        agent,
        health,
        env,
        keep_releases,
        notifications,
    })
}

fn parse_notifications(cx: &Cx, key: &str, v: &Value) -> Result<Vec<Notification>, ConfigError> {
    let Value::Sequence(items) = v else {
        return Err(cx.err(key, format!("expected a list of notifications, found {}", describe(v))));
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let m = cx.mapping(&at, item)?;
        let f = cx.fields(&at, m, NOTIFY_KEYS, " of a notification")?;
        let s = |k: &str| f.get(k).map(|v| cx.string(&format!("{at}.{k}"), v)).transpose();
        let kind = s("type")?
            .ok_or_else(|| cx.err(format!("{at}.type"), "missing required key (webhook, slack, discord or email)"))?;
        let secret = |lit: &str, env: &str| -> Result<Option<SecretValue>, ConfigError> {
            match (s(lit)?, s(env)?) {
                (Some(_), Some(_)) => Err(cx.err(format!("{at}.{env}"), format!("give {lit} or {env}, not both"))),
                (Some(v), None) => Ok(Some(SecretValue::Literal(v))),
                (None, Some(n)) if is_env_name(&n) => Ok(Some(SecretValue::Env(n))),
                (None, Some(n)) => Err(cx.err(format!("{at}.{env}"), format!("{n:?} is not a variable name"))),
                (None, None) => Ok(None),
            }
        };
        let url = || -> Result<String, ConfigError> {
            let u = s("url")?
                .ok_or_else(|| cx.err(format!("{at}.url"), format!("missing required key for type {kind}")))?;
            let rest = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://"));
            match rest {
                Some(r) if !r.is_empty() && !r.starts_with('/') && !u.contains(char::is_whitespace) => Ok(u),
                // The URL may carry a token: the message does not repeat it.
                _ => Err(cx.err(format!("{at}.url"), "expected an http:// or https:// URL")),
            }
        };
        let only = |keys: &[&str]| -> Result<(), ConfigError> {
            for (k, _) in &f.items {
                if !["type", "events", "failures_only"].contains(k) && !keys.contains(k) {
                    return Err(cx.err(format!("{at}.{k}"), format!("not a key of a {kind} notification")));
                }
            }
            Ok(())
        };
        let channel = match kind.as_str() {
            "webhook" => {
                only(&["url", "secret", "secret_env"])?;
                Channel::Webhook { url: url()?, secret: secret("secret", "secret_env")? }
            }
            "slack" => {
                only(&["url"])?;
                Channel::Slack { url: url()? }
            }
            "discord" => {
                only(&["url"])?;
                Channel::Discord { url: url()? }
            }
            "email" => {
                only(&["smtp", "tls", "username", "password", "password_env", "from", "to"])?;
                let smtp =
                    s("smtp")?.ok_or_else(|| cx.err(format!("{at}.smtp"), "missing required key (HOST[:PORT])"))?;
                let tls = match s("tls")?.as_deref() {
                    None | Some("starttls") => SmtpTls::StartTls,
                    Some("tls") => SmtpTls::Tls,
                    Some("none") => SmtpTls::None,
                    Some(o) => {
                        return Err(
                            cx.err(format!("{at}.tls"), format!("unknown {o:?} (expected starttls, tls or none)"))
                        )
                    }
                };
                let default_port = if tls == SmtpTls::Tls { 465 } else { 587 };
                let (host, port) = match smtp.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                        let port = p
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| cx.err(format!("{at}.smtp"), format!("{p:?} is not a port")))?;
                        (h.trim_start_matches('[').trim_end_matches(']').to_string(), port)
                    }
                    _ => (smtp.clone(), default_port),
                };
                if host.is_empty() {
                    return Err(cx.err(format!("{at}.smtp"), "expected HOST[:PORT]"));
                }
                let addr = |k: &str, a: &str| -> Result<String, ConfigError> {
                    let ok = a.split_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
                        && !a.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == '\r' || c == '\n');
                    if ok {
                        Ok(a.to_string())
                    } else {
                        Err(cx.err(format!("{at}.{k}"), format!("{a:?} is not a mail address")))
                    }
                };
                let from =
                    addr("from", &s("from")?.ok_or_else(|| cx.err(format!("{at}.from"), "missing required key"))?)?;
                let to = match f.get("to") {
                    None => return Err(cx.err(format!("{at}.to"), "missing required key")),
                    Some(Value::String(a)) => vec![addr("to", a)?],
                    Some(Value::Sequence(list)) if !list.is_empty() => list
                        .iter()
                        .map(|a| cx.string(&format!("{at}.to"), a).and_then(|a| addr("to", &a)))
                        .collect::<Result<_, _>>()?,
                    Some(other) => {
                        return Err(cx.err(
                            format!("{at}.to"),
                            format!("expected an address or a list of them, found {}", describe(other)),
                        ))
                    }
                };
                let password = secret("password", "password_env")?;
                let username = s("username")?;
                if password.is_some() && username.is_none() {
                    return Err(cx.err(format!("{at}.username"), "a password needs a username"));
                }
                Channel::Email { host, port, tls, username, password, from, to }
            }
            other => {
                return Err(cx.err(
                    format!("{at}.type"),
                    format!("unknown type {other:?} (expected webhook, slack, discord or email)"),
                ))
            }
        };
        let events = match f.get("events") {
            None => NOTIFY_EVENTS.iter().map(|e| e.to_string()).collect(),
            Some(Value::Sequence(list)) => {
                let mut ev = Vec::new();
                for e in list {
                    let e = cx.string(&format!("{at}.events"), e)?;
                    if !NOTIFY_EVENTS.contains(&e.as_str()) {
                        return Err(cx.err(
                            format!("{at}.events"),
                            format!("unknown event {e:?} (expected {})", NOTIFY_EVENTS.join(", ")),
                        ));
                    }
                    ev.push(e);
                }
                ev
            }
            Some(other) => {
                return Err(cx.err(format!("{at}.events"), format!("expected a list, found {}", describe(other))))
            }
        };
        let failures_only =
            f.get("failures_only").map(|v| cx.boolean(&format!("{at}.failures_only"), v)).transpose()?.unwrap_or(false);
        out.push(Notification { channel, events, failures_only });
    }
    Ok(out)
}

fn parse_platform_config(cx: &Cx, platform: Platform, v: Option<&Value>) -> Result<PlatformConfig, ConfigError> {
    let Some(v) = v else {
        return Ok(PlatformConfig::default_for(platform));
    };
    let m = cx.mapping("config", v)?;
    let ctx = format!(" for platform {platform}");
    let f = cx.fields("config", m, platform.config_keys(), &ctx)?;
    let s = |k: &str| f.get(k).map(|v| cx.string(&format!("config.{k}"), v)).transpose();
    let n =
        |k: &str| f.get(k).map(|v| cx.uint(&format!("config.{k}"), v, u32::MAX as u64).map(|n| n as u32)).transpose();
    let project_name = |p: Option<String>| match p {
        Some(p) if !is_compose_project_name(&p) => Err(cx.err(
            "config.compose_project",
            format!("invalid compose project name {p:?} (must match [a-z0-9][a-z0-9_-]*)"),
        )),
        p => Ok(p),
    };
    // `registry: HOST[:PORT][/PATH]`, only with `images: registry`.
    let registry_of = |r: Option<String>, ship_images: bool| {
        if let Some(r) = &r {
            if r.contains("://") || r.is_empty() || r.chars().any(|c| c.is_whitespace() || c == '@') {
                return Err(cx.err("config.registry", format!("{r:?} is not HOST[:PORT][/PATH] (no scheme)")));
            }
            if ship_images {
                return Err(cx.err(
                    "config.registry",
                    "images: bundle carries the images itself; a registry is for images: registry",
                ));
            }
        }
        Ok(r)
    };
    // `images: registry` (default: the engine has or pulls them) or `bundle` (carried).
    let image_source = |v: Option<String>| match v.as_deref() {
        None | Some("registry") => Ok(false),
        Some("bundle") => Ok(true),
        Some(other) => {
            Err(cx.err("config.images", format!("unknown image source {other:?} (expected one of: registry, bundle)")))
        }
    };
    Ok(match platform {
        Platform::DockerCompose => {
            let compose_project = project_name(s("compose_project")?)?;
            let ship_images = image_source(s("images")?)?;
            let registry = registry_of(s("registry")?, ship_images)?;
            PlatformConfig::DockerCompose {
                compose_project,
                pull_policy: s("pull_policy")?,
                restart_policy: s("restart_policy")?,
                ship_images,
                registry,
                slots: parse_slots(cx, &f)?,
            }
        }
        Platform::Podman => {
            let b = |k: &str| {
                f.get(k).map(|v| cx.boolean(&format!("config.{k}"), v)).transpose().map(|o| o.unwrap_or(false))
            };
            let pod_name = s("pod_name")?;
            if let Some(p) = &pod_name {
                if !is_compose_project_name(p) {
                    return Err(
                        cx.err("config.pod_name", format!("invalid pod name {p:?} (must match [a-z0-9][a-z0-9_-]*)"))
                    );
                }
            }
            let ship_images = image_source(s("images")?)?;
            let slots = parse_slots(cx, &f)?;
            if let (Some(sl), true) = (&slots, b("use_quadlet")?) {
                return Err(cx.err(
                    "config.strategy",
                    format!(
                        "strategy {} runs podman-compose projects behind the proxy; Quadlet units restart in place (set use_quadlet: false)",
                        sl.strategy
                    ),
                ));
            }
            let kube_play = b("kube_play")?;
            if kube_play && b("use_quadlet")? {
                return Err(
                    cx.err("config.kube_play", "kube_play and use_quadlet are two ways to run the app: choose one")
                );
            }
            if let (Some(sl), true) = (&slots, kube_play) {
                return Err(cx.err(
                    "config.strategy",
                    format!("strategy {} runs podman-compose projects behind the proxy; kube_play replaces pods in place (set kube_play: false)", sl.strategy),
                ));
            }
            PlatformConfig::Podman {
                slots,
                kube_play,
                use_quadlet: b("use_quadlet")?,
                rootless: b("rootless")?,
                pod_name,
                compose_project: project_name(s("compose_project")?)?,
                ship_images,
                registry: registry_of(s("registry")?, ship_images)?,
                start_machine: b("start_machine")?,
            }
        }
        Platform::Kubernetes => PlatformConfig::Kubernetes(Box::new(parse_kubernetes(cx, &f)?)),
        Platform::Swarm => {
            let stack_name = s("stack_name")?;
            if let Some(p) = &stack_name {
                if !is_compose_project_name(p) {
                    return Err(cx.err(
                        "config.stack_name",
                        format!("invalid stack name {p:?} (must match [a-z0-9][a-z0-9_-]*)"),
                    ));
                }
            }
            let ship_images = image_source(s("images")?)?;
            PlatformConfig::Swarm {
                stack_name,
                replicas: n("replicas")?,
                update_parallelism: n("update_parallelism")?,
                update_delay: f.get("update_delay").map(|v| cx.duration("config.update_delay", v)).transpose()?,
                ship_images,
                registry: registry_of(s("registry")?, ship_images)?,
            }
        }
        Platform::Nomad => PlatformConfig::Nomad(Box::new(parse_nomad(cx, &f)?)),
        Platform::SshRaw => PlatformConfig::SshRaw {
            deploy_path: match s("deploy_path")? {
                Some(p) if !p.starts_with('/') => {
                    return Err(cx.err("config.deploy_path", format!("{p:?} must be an absolute path")))
                }
                p => p.map(PathBuf::from),
            },
            service_manager: match s("service_manager")? {
                None => ServiceManager::None,
                Some(m) => m.parse().map_err(|e: String| cx.err("config.service_manager", e))?,
            },
            service_name: s("service_name")?,
            pre_script: s("pre_script")?,
            post_script: s("post_script")?,
        },
    })
}

/// Kubernetes quantities as `resource_limits` takes them: `500m`, `0.5`, `512Mi`, `1G`.
fn is_quantity(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.parse::<f64>().is_ok_and(|n| n >= 0.0)
        && ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"].contains(&unit)
}

/// A list of strings (a single string counts as a list of one).
fn string_list(cx: &Cx, key: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Sequence(items) => items.iter().enumerate().map(|(i, v)| cx.string(&format!("{key}[{i}]"), v)).collect(),
        other => Err(cx.err(key, format!("expected a list of strings, found {}", describe(other)))),
    }
}

/// `KEY: value` for all, or `KEY: { default: value, NAME: value, … }`.
fn per_name(cx: &Cx, key: &str, v: &Value, check: &dyn Fn(&str) -> Result<(), String>) -> Result<PerName, ConfigError> {
    let mut out = PerName::default();
    match v {
        Value::Mapping(_) => {
            for (k, val) in cx.string_map(key, v)? {
                check(&val).map_err(|e| cx.err(format!("{key}.{k}"), e))?;
                if k == "default" {
                    out.default = Some(val);
                } else {
                    out.by_name.insert(k, val);
                }
            }
        }
        other => {
            let val = cx.string(key, other)?;
            check(&val).map_err(|e| cx.err(key, e))?;
            out.default = Some(val);
        }
    }
    Ok(out)
}

fn parse_kubernetes(cx: &Cx, f: &Fields) -> Result<KubernetesConfig, ConfigError> {
    let s = |k: &str| f.get(k).map(|v| cx.string(&format!("config.{k}"), v)).transpose();
    let mut c = KubernetesConfig {
        kubeconfig: s("kubeconfig")?,
        context: s("context")?,
        storage_class: s("storage_class")?,
        wait_image: s("wait_image")?,
        ..Default::default()
    };
    if let Some(ns) = s("namespace")? {
        check_dns_label(&ns).map_err(|e| cx.err("config.namespace", format!("namespace {e}")))?;
        c.namespace = Some(ns);
    }
    if let Some(st) = s("strategy")? {
        c.strategy = st.parse().map_err(|e: String| cx.err("config.strategy", e))?;
    }
    if let Some(v) = f.get("canary") {
        if f.get("strategy").is_none() {
            c.strategy = Strategy::Canary;
        } else if c.strategy != Strategy::Canary {
            return Err(cx.err("config.canary", format!("canary steps need strategy: canary (it is {})", c.strategy)));
        }
        c.canary = parse_canary(cx, "config.canary", v)?;
    }
    c.replicas = f.get("replicas").map(|v| cx.uint("config.replicas", v, 10_000).map(|n| n as u32)).transpose()?;
    if let Some(v) = f.get("resource_limits") {
        c.resource_limits = cx.string_map("config.resource_limits", v)?;
        for (k, q) in &c.resource_limits {
            let key = format!("config.resource_limits.{k}");
            if !["cpu", "memory", "ephemeral-storage"].contains(&k.as_str()) {
                return Err(cx.err(key, "unknown resource (expected one of: cpu, memory, ephemeral-storage)"));
            }
            if !is_quantity(q) {
                return Err(cx.err(key, format!("{q:?} is not a Kubernetes quantity (e.g. 500m, 0.5, 512Mi, 1Gi)")));
            }
        }
    }
    if let Some(v) = f.get("workloads") {
        for (svc, kind) in cx.string_map("config.workloads", v)? {
            let w = match kind.to_ascii_lowercase().as_str() {
                "deployment" => Workload::Deployment,
                "statefulset" => Workload::StatefulSet,
                "daemonset" => Workload::DaemonSet,
                _ => {
                    return Err(cx.err(
                        format!("config.workloads.{svc}"),
                        format!("unknown workload {kind:?} (expected one of: deployment, statefulset, daemonset)"),
                    ))
                }
            };
            c.workloads.insert(svc, w);
        }
    }
    if let Some(v) = f.get("service_type") {
        c.service_type = per_name(cx, "config.service_type", v, &|t| match t {
            "ClusterIP" | "NodePort" | "LoadBalancer" => Ok(()),
            _ => Err(format!("unknown service type {t:?} (expected one of: ClusterIP, NodePort, LoadBalancer)")),
        })?;
    }
    if let Some(v) = f.get("volume_size") {
        c.volume_size = per_name(cx, "config.volume_size", v, &|q| {
            if is_quantity(q) {
                Ok(())
            } else {
                Err(format!("{q:?} is not a storage size (e.g. 1Gi, 500Mi)"))
            }
        })?;
    }
    if let Some(v) = f.get("ingress") {
        let m = cx.mapping("config.ingress", v)?;
        let g = cx.fields("config.ingress", m, &["host", "service", "port", "path", "class", "tls_secret"], "")?;
        let gs = |k: &str| g.get(k).map(|v| cx.string(&format!("config.ingress.{k}"), v)).transpose();
        let Some(host) = gs("host")? else {
            return Err(cx.err("config.ingress.host", "an ingress needs a host"));
        };
        let path = gs("path")?.unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            return Err(cx.err("config.ingress.path", format!("{path:?} must start with /")));
        }
        c.ingress = Some(Ingress {
            host,
            service: gs("service")?,
            port: g.get("port").map(|v| cx.port("config.ingress.port", v)).transpose()?,
            path,
            class: gs("class")?,
            tls_secret: gs("tls_secret")?,
        });
    }
    c.rollout_timeout = f.get("rollout_timeout").map(|v| cx.duration("config.rollout_timeout", v)).transpose()?;
    if let Some(v) = f.get("allow") {
        c.allow = string_list(cx, "config.allow", v)?;
    }
    Ok(c)
}

/// `canary: [10, 50, 100]` or `canary: { steps: [10, 50, 100], pause: 1m }`.
/// `strategy`, `canary` and `proxy` of a `docker_compose` or `podman` target: `None` for the
/// in-place strategies, which take no proxy.
fn parse_slots(cx: &Cx, f: &Fields) -> Result<Option<Box<SlotConfig>>, ConfigError> {
    let strategy = match f.get("strategy") {
        Some(v) => cx.string("config.strategy", v)?.parse().map_err(|e: String| cx.err("config.strategy", e))?,
        None if f.get("canary").is_some() => Strategy::Canary,
        None => Strategy::Recreate,
    };
    if matches!(strategy, Strategy::Rolling | Strategy::Recreate) {
        for k in ["canary", "proxy"] {
            if f.get(k).is_some() {
                return Err(cx.err(
                    format!("config.{k}"),
                    format!("{k} needs strategy: blue-green or canary (it is {strategy}, which replaces containers in place)"),
                ));
            }
        }
        return Ok(None);
    }
    let mut c = SlotConfig {
        strategy,
        canary: Canary::default(),
        services: Vec::new(),
        drain: Duration::from_secs(10),
        health_path: None,
    };
    if let Some(v) = f.get("canary") {
        if strategy != Strategy::Canary {
            return Err(cx.err("config.canary", format!("canary steps need strategy: canary (it is {strategy})")));
        }
        c.canary = parse_canary(cx, "config.canary", v)?;
    }
    if let Some(v) = f.get("proxy") {
        let m = cx.mapping("config.proxy", v)?;
        let g = cx.fields("config.proxy", m, &["services", "drain", "health_path"], "")?;
        if let Some(v) = g.get("services") {
            let Value::Sequence(items) = v else {
                return Err(
                    cx.err("config.proxy.services", format!("expected a list of services, found {}", describe(v)))
                );
            };
            for (i, it) in items.iter().enumerate() {
                let name = cx.string(&format!("config.proxy.services[{i}]"), it)?;
                if !crate::bundle::is_service_name(&name) {
                    return Err(cx.err(
                        format!("config.proxy.services[{i}]"),
                        format!("{name:?} is not a compose service name"),
                    ));
                }
                c.services.push(name);
            }
        }
        if let Some(v) = g.get("drain") {
            c.drain = cx.duration("config.proxy.drain", v)?;
        }
        if let Some(v) = g.get("health_path") {
            let p = cx.string("config.proxy.health_path", v)?;
            if !p.starts_with('/') || p.chars().any(|ch| ch.is_whitespace() || ch.is_control() || ch == '#') {
                return Err(
                    cx.err("config.proxy.health_path", format!("{p:?} is not an HTTP path (/health, no spaces)"))
                );
            }
            c.health_path = Some(p);
        }
    }
    Ok(Some(Box::new(c)))
}

fn parse_canary(cx: &Cx, key: &str, v: &Value) -> Result<Canary, ConfigError> {
    let mut c = Canary::default();
    let steps = match v {
        Value::Sequence(_) => Some(v),
        Value::Mapping(m) => {
            let g = cx.fields(key, m, &["steps", "pause"], "")?;
            if let Some(p) = g.get("pause") {
                c.pause = cx.duration(&format!("{key}.pause"), p)?;
            }
            g.get("steps")
        }
        other => {
            return Err(cx.err(key, format!("expected a list of percentages or a mapping, found {}", describe(other))))
        }
    };
    if let Some(steps) = steps {
        let key = if matches!(v, Value::Mapping(_)) { format!("{key}.steps") } else { key.to_string() };
        let Value::Sequence(items) = steps else {
            return Err(cx.err(&key, format!("expected a list of percentages, found {}", describe(steps))));
        };
        let mut out = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let n = cx.uint(&format!("{key}[{i}]"), it, 100)?;
            if n == 0 || out.last().is_some_and(|&l: &u8| l as u64 >= n) {
                return Err(cx.err(format!("{key}[{i}]"), format!("steps must rise above 0 (found {n})")));
            }
            out.push(n as u8);
        }
        if out.last() != Some(&100) {
            return Err(cx.err(&key, "the last step must be 100 (the canary takes all the traffic)"));
        }
        c.steps = out;
    }
    Ok(c)
}

fn parse_nomad(cx: &Cx, f: &Fields) -> Result<NomadConfig, ConfigError> {
    let s = |k: &str| f.get(k).map(|v| cx.string(&format!("config.{k}"), v)).transpose();
    let mut c = NomadConfig {
        job_name: s("job_name")?,
        region: s("region")?,
        namespace: s("namespace")?,
        wait_image: s("wait_image")?,
        address: s("address")?,
        token_file: s("token_file")?,
        ca_cert: s("ca_cert")?,
        client_cert: s("client_cert")?,
        client_key: s("client_key")?,
        tls_server_name: s("tls_server_name")?,
        ..Default::default()
    };
    if let Some(a) = &c.address {
        let rest = a.strip_prefix("http://").or_else(|| a.strip_prefix("https://"));
        let bad = |r: &str| {
            let host = r.trim_end_matches('/');
            host.is_empty() || host.contains(|c: char| c.is_whitespace() || "/@?#".contains(c))
        };
        if rest.is_none_or(bad) {
            return Err(cx.err(
                "config.address",
                format!("{a:?} is not a Nomad address (http://HOST:PORT or https://HOST:PORT)"),
            ));
        }
        if a.starts_with("https://") && c.ca_cert.is_none() {
            return Err(cx.err(
                "config.ca_cert",
                "an https:// address needs the CA that signed the Nomad servers' certificates",
            ));
        }
    }
    if c.client_cert.is_some() != c.client_key.is_some() {
        return Err(cx.err("config.client_cert", "client_cert and client_key go together"));
    }
    if let Some(v) = f.get("datacenter") {
        c.datacenters = string_list(cx, "config.datacenter", v)?;
        if c.datacenters.is_empty() {
            return Err(cx.err("config.datacenter", "name at least one datacenter"));
        }
    }
    if let Some(j) = &c.job_name {
        if j.is_empty() || j.len() > 128 || j.contains(|c: char| c.is_whitespace() || c == '\0') {
            return Err(cx.err("config.job_name", format!("{j:?} is not a job id (1..128 characters, no spaces)")));
        }
    }
    c.count = f.get("count").map(|v| cx.uint("config.count", v, 10_000).map(|n| n as u32)).transpose()?;
    if let Some(d) = s("driver")? {
        if !["docker", "podman"].contains(&d.as_str()) {
            return Err(cx.err("config.driver", format!("unknown task driver {d:?} (expected one of: docker, podman)")));
        }
        c.driver = Some(d);
    }
    if let Some(g) = s("group")? {
        c.group = match g.as_str() {
            "per-service" => NomadGrouping::PerService,
            "single" => NomadGrouping::Single,
            _ => {
                return Err(
                    cx.err("config.group", format!("unknown grouping {g:?} (expected one of: per-service, single)"))
                )
            }
        };
    }
    if let Some(p) = s("service_provider")? {
        if !["nomad", "consul"].contains(&p.as_str()) {
            return Err(cx.err(
                "config.service_provider",
                format!("unknown service provider {p:?} (expected one of: nomad, consul)"),
            ));
        }
        c.service_provider = Some(p);
    }
    if let Some(v) = f.get("update") {
        let m = cx.mapping("config.update", v)?;
        let keys = [
            "max_parallel",
            "canary",
            "auto_revert",
            "auto_promote",
            "min_healthy_time",
            "healthy_deadline",
            "progress_deadline",
        ];
        let g = cx.fields("config.update", m, &keys, "")?;
        let u = &mut c.update;
        let key = |k: &str| format!("config.update.{k}");
        if let Some(v) = g.get("max_parallel") {
            u.max_parallel = cx.uint(&key("max_parallel"), v, 1_000)? as u32;
        }
        if let Some(v) = g.get("canary") {
            u.canary = cx.uint(&key("canary"), v, 1_000)? as u32;
        }
        if let Some(v) = g.get("auto_revert") {
            u.auto_revert = cx.boolean(&key("auto_revert"), v)?;
        }
        if let Some(v) = g.get("auto_promote") {
            u.auto_promote = cx.boolean(&key("auto_promote"), v)?;
        }
        for (k, d) in [
            ("min_healthy_time", &mut u.min_healthy_time),
            ("healthy_deadline", &mut u.healthy_deadline),
            ("progress_deadline", &mut u.progress_deadline),
        ] {
            if let Some(v) = g.get(k) {
                *d = cx.duration(&key(k), v)?;
            }
        }
        if u.min_healthy_time >= u.healthy_deadline {
            return Err(cx.err(key("min_healthy_time"), "must be shorter than healthy_deadline"));
        }
        if u.auto_promote && u.canary == 0 {
            return Err(cx.err(key("auto_promote"), "auto_promote needs canary > 0"));
        }
    }
    if let Some(v) = f.get("allow") {
        c.allow = string_list(cx, "config.allow", v)?;
    }
    Ok(c)
}

fn parse_agent(cx: &Cx, v: &Value) -> Result<AgentSpec, ConfigError> {
    let m = cx.mapping("agent", v)?;
    let f = cx.fields("agent", m, AGENT_KEYS, "")?;
    let mut agent = AgentSpec::default();
    if let Some(v) = f.get("mode") {
        agent.mode = cx.string("agent.mode", v)?.parse().map_err(|e: String| cx.err("agent.mode", e))?;
    }
    if let Some(v) = f.get("port") {
        agent.port = cx.port("agent.port", v)?;
    }
    if let Some(v) = f.get("poll_interval") {
        agent.poll_interval = cx.duration("agent.poll_interval", v)?;
        if agent.poll_interval.is_zero() {
            return Err(cx.err("agent.poll_interval", "must be greater than 0"));
        }
    }
    if let Some(v) = f.get("name") {
        let name = cx.string("agent.name", v)?;
        if let Err(why) = check_dns_label(&name) {
            return Err(cx.err("agent.name", format!("invalid agent name: {why}")));
        }
        agent.name = Some(name);
    }
    if let Some(v) = f.get("watch") {
        agent.watch = cx.boolean("agent.watch", v)?;
    }
    if let Some(v) = f.get("keepalive") {
        agent.keepalive = cx.duration("agent.keepalive", v)?;
        if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&agent.keepalive) {
            return Err(cx.err("agent.keepalive", "must be between 10s and 1h"));
        }
    }
    Ok(agent)
}

fn parse_health(cx: &Cx, v: &Value) -> Result<HealthSpec, ConfigError> {
    let m = cx.mapping("health", v)?;
    let f = cx.fields("health", m, HEALTH_KEYS, "")?;
    let mut h = HealthSpec::default();
    if let Some(v) = f.get("retries") {
        h.retries = cx.uint("health.retries", v, u32::MAX as u64)? as u32;
    }
    if let Some(v) = f.get("interval") {
        h.interval = cx.duration("health.interval", v)?;
    }
    if let Some(v) = f.get("timeout") {
        h.timeout = cx.duration("health.timeout", v)?;
        if h.timeout.is_zero() {
            return Err(cx.err("health.timeout", "must be greater than 0"));
        }
    }
    if let Some(v) = f.get("start_period") {
        h.start_period = cx.duration("health.start_period", v)?;
    }
    let checks = f.get("checks").ok_or_else(|| cx.err("health.checks", "missing required key"))?;
    let Value::Sequence(seq) = checks else {
        return Err(cx.err("health.checks", format!("expected a sequence, found {}", describe(checks))));
    };
    if seq.is_empty() {
        return Err(cx.err("health.checks", "must contain at least one check"));
    }
    for (i, item) in seq.iter().enumerate() {
        h.checks.push(parse_check(cx, &format!("health.checks[{i}]"), item)?);
    }
    Ok(h)
}

fn parse_check(cx: &Cx, key: &str, v: &Value) -> Result<HealthCheck, ConfigError> {
    let expect = "a health check must have exactly one of: http, tcp, command";
    let m = match v {
        Value::Mapping(m) => m,
        other => {
            return Err(cx.err(key, format!("{expect}; found {}", describe(other))));
        }
    };
    let f = cx.fields(key, m, CHECK_KINDS, "")?;
    let present: Vec<&str> = f.items.iter().map(|(k, _)| *k).filter(|k| f.get(k).is_some()).collect();
    if present.len() != 1 {
        let found = if present.is_empty() { "none".to_string() } else { present.join(", ") };
        return Err(cx.err(key, format!("{expect} (found: {found})")));
    }
    let kind = present[0];
    let v = f.get(kind).unwrap_or(&Value::Null);
    let key = format!("{key}.{kind}");
    match kind {
        "http" => {
            let (url_key, url_v, status, body) = match v {
                Value::String(_) => (key.clone(), v, 200, None),
                Value::Mapping(m) => {
                    let hf = cx.fields(&key, m, HTTP_KEYS, "")?;
                    let url_key = format!("{key}.url");
                    let url_v = hf.get("url").ok_or_else(|| cx.err(&url_key, "missing required key"))?;
                    let status = match hf.get("status") {
                        None => 200,
                        Some(s) => {
                            let skey = format!("{key}.status");
                            let n = cx.uint(&skey, s, 599)?;
                            if n < 100 {
                                return Err(cx.err(&skey, "must be an HTTP status (100..=599)"));
                            }
                            n as u16
                        }
                    };
                    let body = hf.get("body").map(|b| cx.string(&format!("{key}.body"), b)).transpose()?;
                    (url_key, url_v, status, body)
                }
                other => {
                    return Err(cx.err(
                        &key,
                        format!("expected a mapping {{url, status, body}} or a URL string, found {}", describe(other)),
                    ))
                }
            };
            let url = cx.string(&url_key, url_v)?;
            check_http_url(&url).map_err(|e| cx.err(&url_key, e))?;
            Ok(HealthCheck::Http { url, status, body })
        }
        "tcp" => {
            let (akey, av) = match v {
                Value::Mapping(m) => {
                    let tf = cx.fields(&key, m, TCP_KEYS, "")?;
                    let akey = format!("{key}.address");
                    let av = tf.get("address").ok_or_else(|| cx.err(&akey, "missing required key"))?;
                    (akey, av)
                }
                _ => (key.clone(), v),
            };
            let address = cx.string(&akey, av)?;
            check_tcp_address(&address).map_err(|e| cx.err(&akey, e))?;
            Ok(HealthCheck::Tcp { address })
        }
        _ => {
            let command = cx.string(&key, v)?;
            if command.trim().is_empty() {
                return Err(cx.err(&key, "must not be empty"));
            }
            Ok(HealthCheck::Command { command })
        }
    }
}

fn check_http_url(url: &str) -> Result<(), String> {
    if let Some(rest) = url.strip_prefix("http://") {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("invalid URL {url:?}: missing host"));
        }
        return Ok(());
    }
    if url.starts_with("https://") {
        return Err(format!("unsupported URL {url:?}: https health checks are not supported yet (use http://)"));
    }
    Err(format!("invalid URL {url:?}: must start with http://"))
}

fn check_tcp_address(addr: &str) -> Result<(), String> {
    let bad = || format!("invalid address {addr:?} (expected host:port, e.g. \"127.0.0.1:8080\")");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad()),
    }
}

// ───────────────────────────── helpers ─────────────────────────────

/// Where we are, for error messages.
struct Cx<'a> {
    file: &'a Path,
    target: Option<&'a str>,
}

/// The entries of a mapping whose keys were all checked against a list.
struct Fields<'v> {
    items: Vec<(&'v str, &'v Value)>,
}

impl<'v> Fields<'v> {
    /// The value of `name`; an explicit YAML null counts as absent.
    fn get(&self, name: &str) -> Option<&'v Value> {
        self.items.iter().find(|(k, _)| *k == name).map(|(_, v)| *v).filter(|v| !v.is_null())
    }
}

fn sub(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Cx<'_> {
    fn err(&self, key: impl AsRef<str>, message: impl Into<String>) -> ConfigError {
        let key = key.as_ref();
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            target: self.target.map(str::to_string),
            key: (!key.is_empty()).then(|| key.to_string()),
            message: message.into(),
        }
    }

    fn fields<'v>(
        &self,
        prefix: &str,
        map: &'v Mapping,
        allowed: &[&str],
        context: &str,
    ) -> Result<Fields<'v>, ConfigError> {
        let mut items = Vec::with_capacity(map.len());
        for (k, v) in map {
            let Value::String(k) = k else {
                return Err(self.err(prefix, format!("keys must be strings, found {}", describe(k))));
            };
            if !allowed.contains(&k.as_str()) {
                return Err(
                    self.err(sub(prefix, k), format!("unknown key{context} (expected one of: {})", allowed.join(", ")))
                );
            }
            items.push((k.as_str(), v));
        }
        Ok(Fields { items })
    }

    fn mapping<'v>(&self, key: &str, v: &'v Value) -> Result<&'v Mapping, ConfigError> {
        match v {
            Value::Mapping(m) => Ok(m),
            other => Err(self.err(key, format!("expected a mapping, found {}", describe(other)))),
        }
    }

    fn string(&self, key: &str, v: &Value) -> Result<String, ConfigError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.err(key, format!("expected a string, found {}", describe(other)))),
        }
    }

    fn boolean(&self, key: &str, v: &Value) -> Result<bool, ConfigError> {
        match v {
            Value::Bool(b) => Ok(*b),
            other => Err(self.err(key, format!("expected true or false, found {}", describe(other)))),
        }
    }

    fn uint(&self, key: &str, v: &Value, max: u64) -> Result<u64, ConfigError> {
        match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            Some(n) => Err(self.err(key, format!("{n} is too large (maximum {max})"))),
            None => Err(self.err(key, format!("expected a non-negative integer, found {}", describe(v)))),
        }
    }

    fn port(&self, key: &str, v: &Value) -> Result<u16, ConfigError> {
        match v.as_u64() {
            Some(n @ 1..=65535) => Ok(n as u16),
            Some(n) => Err(self.err(key, format!("invalid port {n} (expected 1..65535)"))),
            None => Err(self.err(key, format!("expected a port number (1..65535), found {}", describe(v)))),
        }
    }

    fn duration(&self, key: &str, v: &Value) -> Result<Duration, ConfigError> {
        match v {
            Value::String(s) => parse_duration(s).map_err(|e| self.err(key, e)),
            Value::Number(n) => Err(self.err(key, format!("duration {n} has no unit (write e.g. \"{n}s\")"))),
            other => Err(self.err(key, format!("expected a duration such as \"30s\", found {}", describe(other)))),
        }
    }

    /// A mapping of scalars; numbers and booleans are stringified.
    fn string_map(&self, key: &str, v: &Value) -> Result<BTreeMap<String, String>, ConfigError> {
        let m = self.mapping(key, v)?;
        let mut out = BTreeMap::new();
        for (k, v) in m {
            let Some(k) = scalar_string(k) else {
                return Err(self.err(key, format!("keys must be strings, found {}", describe(k))));
            };
            let Some(val) = scalar_string(v) else {
                return Err(self.err(sub(key, &k), format!("expected a string, found {}", describe(v))));
            };
            out.insert(k, val);
        }
        Ok(out)
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Sequence(_) => "a sequence".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}

/// `[a-z0-9-]{1,63}`, not starting or ending with `-`.
/// A target id or agent name: a DNS label (`[a-z0-9-]{1,63}`, no `-` at either end); the
/// error says which rule it breaks.
pub fn check_dns_label(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 63 {
        return Err(format!("{id:?} must be 1 to 63 characters long (it is used as a DNS/TLS name)"));
    }
    if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(format!(
            "{id:?} may only contain lowercase letters a-z, digits and '-' (it is used as a DNS/TLS name)"
        ));
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Err(format!("{id:?} must not start or end with '-' (it is used as a DNS/TLS name)"));
    }
    Ok(())
}

/// A safe single path component: `[A-Za-z0-9._-]+`, not `.` or `..`.
fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Compose's project-name rule: `[a-z0-9][a-z0-9_-]*`.
fn is_compose_project_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// The directory containing `file` (`.` when it has none).
fn file_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Drop `.` components (keeps a lone `.`).
fn clean_path(p: &Path) -> PathBuf {
    let out: PathBuf = p.components().filter(|c| !matches!(c, Component::CurDir)).collect();
    if out.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        out
    }
}

/// The last component of `dir`, resolving `.`/`..` lexically against the
/// current directory when needed.
fn dir_name(dir: &Path) -> Option<String> {
    if let Some(n) = dir.file_name() {
        return n.to_str().map(str::to_string);
    }
    let abs = std::path::absolute(dir).ok()?;
    let mut parts: Vec<Component> = Vec::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(parts.last(), Some(Component::Normal(_))) {
                    parts.pop();
                }
            }
            other => parts.push(other),
        }
    }
    match parts.last() {
        Some(Component::Normal(n)) => n.to_str().map(str::to_string),
        _ => None,
    }
}

/// Locating duplicate mapping keys, which `serde_yaml_ng::Value` rejects
/// without saying where: re-read the text into a tree that keeps them.
mod dup {
    use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, VariantAccess, Visitor};
    use std::fmt;

    enum Raw {
        Scalar(Option<String>),
        Seq(Vec<Raw>),
        Map(Vec<(Raw, Raw)>),
    }

    impl<'de> Deserialize<'de> for Raw {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
            d.deserialize_any(RawVisitor)
        }
    }

    struct RawVisitor;

    impl<'de> Visitor<'de> for RawVisitor {
        type Value = Raw;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any YAML value")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
            Ok(Raw::Scalar(Some(v.to_string())))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
            Ok(Raw::Scalar(Some(v.to_string())))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
            Ok(Raw::Scalar(Some(v.to_string())))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
            Ok(Raw::Scalar(Some(v.to_string())))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
            Ok(Raw::Scalar(Some(v.to_string())))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
            Ok(Raw::Scalar(None))
        }
        fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
            Ok(Raw::Scalar(None))
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
            Raw::deserialize(d)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
            let mut v = Vec::new();
            while let Some(x) = a.next_element()? {
                v.push(x);
            }
            Ok(Raw::Seq(v))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
            let mut v = Vec::new();
            while let Some(kv) = a.next_entry()? {
                v.push(kv);
            }
            Ok(Raw::Map(v))
        }
        fn visit_enum<A: de::EnumAccess<'de>>(self, a: A) -> Result<Raw, A::Error> {
            let (_tag, variant): (String, _) = a.variant()?;
            variant.newtype_variant()
        }
    }

    /// The path (mapping keys / `[i]`) of the first mapping holding a
    /// duplicate key, and that key.
    pub(super) fn find(text: &str) -> Option<(Vec<String>, String)> {
        let raw: Raw = serde_yaml_ng::from_str(text).ok()?;
        let mut path = Vec::new();
        walk(&raw, &mut path)
    }

    fn walk(raw: &Raw, path: &mut Vec<String>) -> Option<(Vec<String>, String)> {
        match raw {
            Raw::Scalar(_) => None,
            Raw::Seq(items) => items.iter().enumerate().find_map(|(i, x)| {
                path.push(format!("[{i}]"));
                let r = walk(x, path);
                path.pop();
                r
            }),
            Raw::Map(entries) => {
                let mut seen: Vec<&str> = Vec::new();
                for (k, v) in entries {
                    let key = match k {
                        Raw::Scalar(Some(s)) => s.as_str(),
                        Raw::Scalar(None) => "~",
                        _ => "?",
                    };
                    if seen.contains(&key) {
                        return Some((path.clone(), key.to_string()));
                    }
                    seen.push(key);
                    path.push(key.to_string());
                    let r = walk(v, path);
                    path.pop();
                    if r.is_some() {
                        return r;
                    }
                }
                None
            }
        }
    }
}

// ───────────────────────────── tests ─────────────────────────────

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "deploy-targets.yaml";

    fn seed_path() -> PathBuf {
        crate::shared_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).join("seeds/deploy-targets.example.yaml")
    }

    fn p(text: &str) -> Result<Project, ConfigError> {
        parse(text, Path::new("/srv/proj/deploy-targets.yaml"))
    }

    fn in_file(file: &str, text: &str) -> Project {
        parse(text, Path::new(file)).unwrap()
    }

    #[test]
    fn targets_of_several_projects_share_an_agent_by_name() {
        let web = in_file(
            "/srv/web/deploy-targets.yaml",
            "app: {name: web}\ntargets:\n  web-pi:\n    platform: ssh_raw\n    host: pi\n    agent: {name: pi, port: 7000}\n  solo:\n    platform: ssh_raw\n",
        );
        assert_eq!(web.targets[0].agent_name(), "pi");
        assert_eq!(web.targets[1].agent_name(), "solo");
        let shop = |extra: &str| {
            in_file(
                "/srv/shop/deploy-targets.yaml",
                &format!("app: {{name: shop}}\ntargets:\n  shop-pi:\n    platform: ssh_raw\n    host: pi\n    agent: {{name: pi, port: 7000{extra}}}\n"),
            )
        };
        let both = Projects::check(vec![web.clone(), shop("")]).unwrap();
        let on_pi: Vec<&str> = both.of_agent("pi").map(|(_, t)| t.id.as_str()).collect();
        assert_eq!(on_pi, ["web-pi", "shop-pi"]);
        assert_eq!(both.target("shop-pi").unwrap().0.app.name, "shop");
        assert!(both.files().contains("/srv/web/") && both.files().contains("/srv/shop/"));

        let err = |list: Vec<Project>| Projects::check(list).unwrap_err().to_string();
        let e = err(vec![web.clone(), shop(", mode: pull")]);
        assert!(
            e.contains("/srv/shop/deploy-targets.yaml") && e.contains("shop-pi") && e.contains("agent.mode"),
            "{e}"
        );
        assert!(e.contains("one agent runs in one mode") && e.contains("/srv/web/"), "{e}");
        let mut elsewhere = shop("");
        elsewhere.targets[0].agent.port = 7001;
        let e = err(vec![web.clone(), elsewhere]);
        assert!(e.contains("agent.port") && e.contains("dialled at pi:7000"), "{e}");
        let e = err(vec![web.clone(), web.clone()]);
        assert!(e.contains("app.name") && e.contains("is also served from"), "{e}");
        let mut same_id = shop("");
        same_id.targets[0].id = "solo".into();
        let e = err(vec![web.clone(), same_id]);
        assert!(e.contains("target id \"solo\" is also defined in /srv/web/"), "{e}");
        // An agent name that is another target's id, when that target has its own agent.
        let mut taken = shop("");
        taken.targets[0].agent.name = Some("web-pi".into());
        let e = err(vec![web.clone(), taken]);
        assert!(
            e.contains("agent name \"web-pi\" is the id of target \"web-pi\"") && e.contains("agent \"pi\""),
            "{e}"
        );
        // A target's own id shared as an agent name is fine: that is the agent it has.
        let mut on_solo = shop("");
        on_solo.targets[0].agent.name = Some("solo".into());
        on_solo.targets[0].host = None;
        on_solo.targets[0].agent.port = DEFAULT_AGENT_PORT;
        assert_eq!(Projects::check(vec![web.clone(), on_solo]).unwrap().of_agent("solo").count(), 2);
        // Within one project two targets (one app) cannot share an agent.
        let e = p("targets:\n  a:\n    platform: ssh_raw\n  b:\n    platform: ssh_raw\n    agent: {name: a}\n")
            .unwrap_err();
        assert!(e.to_string().contains("already deploys app") && e.target() == Some("b"), "{e}");
        let e = p("targets:\n  a:\n    platform: ssh_raw\n    agent: {name: Not_A_Label}\n").unwrap_err();
        assert!(e.to_string().contains("agent.name") && e.to_string().contains("invalid agent name"), "{e}");
    }

    /// Parse `text` (one target `t1`), expect an error naming file, target
    /// and key; return its Display.
    #[track_caller]
    fn bad(text: &str, target: Option<&str>, key: Option<&str>) -> String {
        let e = p(text).expect_err("expected an error");
        let msg = e.to_string();
        assert!(msg.contains(FILE), "no file in: {msg}");
        if let Some(t) = target {
            assert!(msg.contains(&format!("target \"{t}\"")), "no target in: {msg}");
            assert_eq!(e.target(), Some(t), "{msg}");
        }
        if let Some(k) = key {
            assert!(msg.contains(&format!("key \"{k}\"")), "no key in: {msg}");
            assert_eq!(e.key(), Some(k), "{msg}");
        }
        msg
    }

    fn one(body: &str) -> String {
        let mut s = String::from("targets:\n  t1:\n");
        for line in body.lines() {
            s.push_str("    ");
            s.push_str(line);
            s.push('\n');
        }
        s
    }

    #[test]
    fn single_host_strategies_parse_and_bad_keys_are_named() {
        let t = p(&one(
            "platform: docker_compose\nconfig:\n  strategy: blue-green\n  proxy: { services: [web], drain: 3s, health_path: /healthz }",
        ))
        .unwrap();
        let PlatformConfig::DockerCompose { slots: Some(sl), .. } = &t.targets[0].config else { panic!() };
        assert_eq!(
            (sl.strategy, sl.drain, sl.health_path.as_deref()),
            (Strategy::BlueGreen, Duration::from_secs(3), Some("/healthz"))
        );
        assert_eq!(sl.services, ["web"]);
        let t = p(&one("platform: podman\nconfig: { canary: { steps: [20, 100], pause: 2s } }")).unwrap();
        let PlatformConfig::Podman { slots: Some(sl), .. } = &t.targets[0].config else { panic!() };
        assert_eq!(sl.strategy, Strategy::Canary, "canary steps imply the canary strategy");
        assert_eq!(sl.canary, Canary { steps: vec![20, 100], pause: Duration::from_secs(2) });
        assert_eq!(sl.drain, Duration::from_secs(10), "the default drain");
        for st in ["rolling", "recreate"] {
            let t = p(&one(&format!("platform: docker_compose\nconfig: {{ strategy: {st} }}"))).unwrap();
            assert!(
                matches!(t.targets[0].config, PlatformConfig::DockerCompose { slots: None, .. }),
                "{st} is in place"
            );
        }
        let db =
            |c: &str, key: &str| bad(&one(&format!("platform: docker_compose\nconfig: {c}")), Some("t1"), Some(key));
        db("{ strategy: bluegreen }", "config.strategy");
        assert!(db("{ proxy: { drain: 1s } }", "config.proxy").contains("needs strategy: blue-green or canary"));
        db("{ strategy: blue-green, canary: [10, 100] }", "config.canary");
        db("{ strategy: canary, canary: [50, 10, 100] }", "config.canary[1]");
        db("{ strategy: blue-green, proxy: { port: 80 } }", "config.proxy.port");
        db("{ strategy: blue-green, proxy: { services: web } }", "config.proxy.services");
        db("{ strategy: blue-green, proxy: { services: [\"-p\"] } }", "config.proxy.services[0]");
        db("{ strategy: blue-green, proxy: { health_path: \"/a b\" } }", "config.proxy.health_path");
        db("{ strategy: blue-green, proxy: { drain: soon } }", "config.proxy.drain");
        let pb = bad(
            &one("platform: podman\nconfig: { use_quadlet: true, strategy: blue-green }"),
            Some("t1"),
            Some("config.strategy"),
        );
        assert!(pb.contains("use_quadlet: false"), "{pb}");
    }

    #[test]
    fn kubernetes_and_nomad_configs_parse_and_bad_keys_are_named() {
        let k = p(&one(
            "platform: kubernetes\nconfig:\n  namespace: shop\n  context: prod\n  canary: { steps: [5, 25, 100], pause: 1m }\n  workloads: { db: statefulset, agent: DaemonSet }\n  service_type: { default: NodePort, db: ClusterIP }\n  volume_size: 5Gi\n  ingress: { host: shop.example.org, service: web }\n  rollout_timeout: 2m\n  allow: network_mode",
        ))
        .unwrap();
        let PlatformConfig::Kubernetes(k) = &k.targets[0].config else { panic!() };
        assert_eq!(k.strategy, Strategy::Canary, "canary steps imply the canary strategy");
        assert_eq!(k.canary, Canary { steps: vec![5, 25, 100], pause: Duration::from_secs(60) });
        assert_eq!(k.workloads["agent"], Workload::DaemonSet);
        assert_eq!((k.service_type.get("db"), k.service_type.get("web")), (Some("ClusterIP"), Some("NodePort")));
        assert_eq!(k.volume_size.get("any"), Some("5Gi"));
        assert_eq!(k.ingress.as_ref().map(|i| i.path.as_str()), Some("/"));
        assert_eq!(k.allow, ["network_mode"]);
        let kb = |c: &str, key: &str| bad(&one(&format!("platform: kubernetes\nconfig: {c}")), Some("t1"), Some(key));
        kb("{ strategy: bluegreen }", "config.strategy");
        kb("{ strategy: recreate, canary: [10, 100] }", "config.canary");
        kb("{ canary: [50, 10, 100] }", "config.canary[1]");
        assert!(kb("{ canary: [10, 50] }", "config.canary").contains("last step must be 100"));
        kb("{ canary: { steps: [100], wait: 1s } }", "config.canary.wait");
        kb("{ namespace: My_NS }", "config.namespace");
        kb("{ resource_limits: { cpu: lots } }", "config.resource_limits.cpu");
        kb("{ resource_limits: { gpu: 1 } }", "config.resource_limits.gpu");
        kb("{ workloads: { db: cronjob } }", "config.workloads.db");
        kb("{ service_type: { web: External } }", "config.service_type.web");
        kb("{ volume_size: big }", "config.volume_size");
        kb("{ ingress: { service: web } }", "config.ingress.host");
        kb("{ ingress: { host: h, path: x } }", "config.ingress.path");
        kb("{ allow: [1] }", "config.allow[0]");

        let n = p(&one(
            "platform: nomad\nconfig:\n  datacenter: [dc1, dc2]\n  group: single\n  update: { canary: 1, auto_promote: true, max_parallel: 2 }",
        ))
        .unwrap();
        let PlatformConfig::Nomad(n) = &n.targets[0].config else { panic!() };
        assert_eq!(n.datacenters, ["dc1", "dc2"]);
        assert_eq!(n.group, NomadGrouping::Single);
        assert_eq!((n.update.canary, n.update.max_parallel, n.update.auto_revert), (1, 2, true));
        let nb = |c: &str, key: &str| bad(&one(&format!("platform: nomad\nconfig: {c}")), Some("t1"), Some(key));
        nb("{ driver: exec }", "config.driver");
        nb("{ group: pairs }", "config.group");
        nb("{ datacenter: [] }", "config.datacenter");
        nb("{ job_name: \"my job\" }", "config.job_name");
        nb("{ update: { auto_promote: true } }", "config.update.auto_promote");
        nb("{ update: { min_healthy_time: 10m } }", "config.update.min_healthy_time");
        nb("{ update: { canaries: 1 } }", "config.update.canaries");
        nb("{ service_provider: etcd }", "config.service_provider");
        nb("{ address: nomad.example.org:4646 }", "config.address");
        nb("{ address: \"http://nomad:4646/v1/jobs\" }", "config.address");
        assert!(nb("{ address: \"https://nomad:4646\" }", "config.ca_cert").contains("CA"));
        nb("{ client_cert: /etc/nomad/cli.pem }", "config.client_cert");
        let n = p(&one("platform: nomad\nconfig: { address: \"https://nomad:4646\", ca_cert: /etc/nomad/ca.pem, token_file: /etc/dockfra/nomad-token }"))
            .unwrap();
        let PlatformConfig::Nomad(n) = &n.targets[0].config else { panic!() };
        assert_eq!(
            (n.address.as_deref(), n.token_file.as_deref()),
            (Some("https://nomad:4646"), Some("/etc/dockfra/nomad-token"))
        );
    }

    #[test]
    fn notifications_parse_and_bad_ones_name_their_key() {
        let good = "notifications:\n  - type: webhook\n    url: https://hooks.example.org/x?token=abc\n    secret_env: HOOK_SECRET\n  - type: email\n    smtp: mail.example.org\n    from: d@example.org\n    to: ops@example.org\n    username: d\n    password: pw\n    failures_only: true\n".to_string() + &one("platform: ssh_raw\nnotifications:\n  - {type: slack, url: 'http://127.0.0.1:9/s', events: [wave]}");
        let p = p(&good).unwrap();
        assert_eq!(p.notifications.len(), 2);
        assert!(
            matches!(&p.notifications[0].channel, Channel::Webhook { secret: Some(SecretValue::Env(n)), .. } if n == "HOOK_SECRET")
        );
        assert_eq!(p.notifications[0].events, NOTIFY_EVENTS);
        assert!(matches!(&p.notifications[1].channel, Channel::Email { port: 587, tls: SmtpTls::StartTls, .. }));
        assert!(p.notifications[1].failures_only);
        assert_eq!(p.targets[0].notifications[0].events, ["wave"]);
        // Neither Debug nor the log's name of a channel shows a secret or a URL's path.
        let shown = format!("{:?}", p.notifications);
        assert!(
            !shown.contains("abc") && !shown.contains("pw") && shown.contains("https://hooks.example.org/…"),
            "{shown}"
        );
        let n = |body: &str| format!("notifications:\n  - {body}\n") + &one("platform: ssh_raw");
        bad(&n("{type: pager, url: 'http://x'}"), None, Some("notifications[0].type"));
        bad(&n("{type: webhook}"), None, Some("notifications[0].url"));
        bad(&n("{type: webhook, url: 'ftp://x/y'}"), None, Some("notifications[0].url"));
        bad(
            &n("{type: webhook, url: 'http://x', secret: a, secret_env: B}"),
            None,
            Some("notifications[0].secret_env"),
        );
        bad(&n("{type: slack, url: 'http://x', secret: a}"), None, Some("notifications[0].secret"));
        bad(&n("{type: webhook, url: 'http://x', events: [deploys]}"), None, Some("notifications[0].events"));
        bad(&n("{type: email, smtp: 'h:25', to: a@b}"), None, Some("notifications[0].from"));
        bad(&n("{type: email, smtp: 'h:x', from: a@b, to: a@b}"), None, Some("notifications[0].smtp"));
        bad(&n("{type: email, smtp: h, from: 'a@b', to: 'not-an-address'}"), None, Some("notifications[0].to"));
        bad(&n("{type: email, smtp: h, from: a@b, to: a@b, password: x}"), None, Some("notifications[0].username"));
        bad(&n("{type: webhook, url: 'http://x', colour: red}"), None, Some("notifications[0].colour"));
        bad(
            &(String::from("notifications: {type: webhook}\n") + &one("platform: ssh_raw")),
            None,
            Some("notifications"),
        );
        bad(&one("platform: ssh_raw\nnotifications:\n  - {type: discord}"), Some("t1"), Some("notifications[0].url"));
        assert_eq!(redact_url("https://user:pw@hooks.slack.com/services/T/B/X"), "https://hooks.slack.com/…");
    }

    #[test]
    fn seed_example_loads_unchanged() {
        let project = load(&seed_path()).expect("seed must load");
        let ids: Vec<&str> = project.targets.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["prod-vps", "staging-rhel", "prod-k8s", "edge-rpi3", "swarm-cluster", "nomad-cluster"]);
        assert_eq!(project.app.name, "seeds");
        assert!(project.app.path.ends_with("seeds"));

        let vps = project.target("prod-vps").unwrap();
        assert_eq!(vps.host.as_deref(), Some("192.168.1.100"));
        assert_eq!(vps.port, Some(2224));
        assert_eq!(vps.user.as_deref(), Some("deployer"));
        assert_eq!(vps.platform, Platform::DockerCompose);
        assert_eq!(vps.os.as_deref(), Some("linux"));
        assert_eq!(vps.labels["env"], "production");
        assert_eq!(vps.labels["region"], "eu-central");
        assert_eq!(
            vps.config,
            PlatformConfig::DockerCompose {
                compose_project: Some("myapp".into()),
                pull_policy: Some("always".into()),
                restart_policy: Some("unless-stopped".into()),
                ship_images: false,
                registry: None,
                slots: None,
            }
        );
        assert_eq!(vps.agent, AgentSpec::default());
        assert_eq!(vps.health, None);
        assert!(vps.env.is_empty());
        assert_eq!(vps.keep_releases, DEFAULT_KEEP_RELEASES);

        let rhel = project.target("staging-rhel").unwrap();
        assert_eq!(rhel.port, None);
        assert_eq!(
            rhel.config,
            PlatformConfig::Podman {
                use_quadlet: true,
                rootless: true,
                pod_name: Some("myapp-pod".into()),
                compose_project: None,
                ship_images: false,
                registry: None,
                start_machine: false,
                slots: None,
                kube_play: false,
            }
        );

        let k8s = project.target("prod-k8s").unwrap();
        assert_eq!(k8s.user, None);
        assert_eq!(k8s.os, None);
        match &k8s.config {
            PlatformConfig::Kubernetes(k) => {
                assert_eq!(k.namespace.as_deref(), Some("myapp-prod"));
                assert_eq!(k.kubeconfig.as_deref(), Some("/home/deployer/.kube/config"));
                assert_eq!(k.strategy, Strategy::Rolling);
                assert_eq!(k.replicas, Some(3));
                assert_eq!(k.resource_limits["cpu"], "500m");
                assert_eq!(k.resource_limits["memory"], "512Mi");
            }
            other => panic!("wrong config {other:?}"),
        }

        let rpi = project.target("edge-rpi3").unwrap();
        assert_eq!(rpi.platform, Platform::SshRaw);
        assert_eq!(rpi.port, Some(22));
        assert_eq!(rpi.labels["device"], "rpi3");
        assert_eq!(
            rpi.config,
            PlatformConfig::SshRaw {
                deploy_path: Some(PathBuf::from("/home/pi/apps")),
                service_manager: ServiceManager::Systemd,
                service_name: None,
                pre_script: Some("sudo systemctl stop myapp".into()),
                post_script: Some("sudo systemctl start myapp".into()),
            }
        );

        let swarm = project.target("swarm-cluster").unwrap();
        assert_eq!(
            swarm.config,
            PlatformConfig::Swarm {
                stack_name: Some("myapp".into()),
                replicas: Some(2),
                update_parallelism: Some(1),
                update_delay: Some(Duration::from_secs(10)),
                ship_images: false,
                registry: None,
            }
        );

        let nomad = project.target("nomad-cluster").unwrap();
        assert_eq!(nomad.host.as_deref(), Some("nomad.company.com"));
        assert_eq!(
            nomad.config,
            PlatformConfig::Nomad(Box::new(NomadConfig {
                datacenters: vec!["dc1".into()],
                job_name: Some("myapp".into()),
                count: Some(3),
                driver: Some("docker".into()),
                ..Default::default()
            }))
        );
        assert!(project.target("nope").is_none());
    }

    #[test]
    fn dockfra_additions_parse() {
        let text = r#"
app: { name: myapp, path: ./app }
targets:
  edge-rpi3:
    host: 192.168.1.200
    port: 22
    user: pi
    platform: ssh_raw
    os: linux
    labels: { device: rpi3, gen: 3, fast: false }
    config: { service_manager: pm2, service_name: web }
    agent: { mode: pull, port: 7555, poll_interval: 1m30s }
    health:
      retries: 5
      interval: 1s
      timeout: 2s
      start_period: 500ms
      checks:
        - http: { url: "http://127.0.0.1:8080/health", status: 204, body: "ok" }
        - http: "http://127.0.0.1:8080/"
        - tcp: "127.0.0.1:8080"
        - tcp: { address: "localhost:22" }
        - command: "test -f ready"
    env: { KEY: value, N: 3 }
    keep_releases: 2
"#;
        let project = p(text).unwrap();
        assert_eq!(project.app, AppSpec { name: "myapp".into(), path: PathBuf::from("/srv/proj/app") });
        let t = &project.targets[0];
        assert_eq!(t.labels["gen"], "3");
        assert_eq!(t.labels["fast"], "false");
        assert_eq!(
            t.agent,
            AgentSpec {
                mode: Mode::Pull,
                port: 7555,
                poll_interval: Duration::from_secs(90),
                name: None,
                watch: true,
                keepalive: DEFAULT_KEEPALIVE
            }
        );
        let h = t.health.as_ref().unwrap();
        assert_eq!(h.retries, 5);
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(h.timeout, Duration::from_secs(2));
        assert_eq!(h.start_period, Duration::from_millis(500));
        assert_eq!(
            h.checks,
            vec![
                HealthCheck::Http { url: "http://127.0.0.1:8080/health".into(), status: 204, body: Some("ok".into()) },
                HealthCheck::Http { url: "http://127.0.0.1:8080/".into(), status: 200, body: None },
                HealthCheck::Tcp { address: "127.0.0.1:8080".into() },
                HealthCheck::Tcp { address: "localhost:22".into() },
                HealthCheck::Command { command: "test -f ready".into() },
            ]
        );
        assert_eq!(t.env["KEY"], "value");
        assert_eq!(t.env["N"], "3");
        assert_eq!(t.keep_releases, 2);
        match &t.config {
            PlatformConfig::SshRaw { service_manager, service_name, deploy_path, .. } => {
                assert_eq!(*service_manager, ServiceManager::Pm2);
                assert_eq!(service_name.as_deref(), Some("web"));
                assert_eq!(*deploy_path, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_apply() {
        let project = p("targets:\n  a:\n    platform: podman\n  b:\n    platform: ssh_raw\n    health: { checks: [ { tcp: 'h:1' } ] }\n").unwrap();
        assert_eq!(project.app.name, "proj");
        assert_eq!(project.app.path, PathBuf::from("/srv/proj"));
        let a = &project.targets[0];
        assert_eq!(a.agent.mode, Mode::Push);
        assert_eq!(a.agent.port, 7444);
        assert_eq!(a.agent.poll_interval, Duration::from_secs(30));
        assert_eq!(a.keep_releases, DEFAULT_KEEP_RELEASES);
        assert_eq!(a.config, PlatformConfig::default_for(Platform::Podman));
        assert_eq!((a.host.clone(), a.port, a.user.clone()), (None, None, None));
        let b = &project.targets[1];
        let h = b.health.as_ref().unwrap();
        assert_eq!(h.retries, 3);
        assert_eq!(h.interval, Duration::from_secs(2));
        assert_eq!(h.timeout, Duration::from_secs(5));
        assert_eq!(h.start_period, Duration::ZERO);
        match &b.config {
            PlatformConfig::SshRaw { service_manager, .. } => assert_eq!(*service_manager, ServiceManager::None),
            other => panic!("{other:?}"),
        }
        // Explicit nulls count as unset.
        let project = p("targets:\n  a:\n    platform: swarm\n    user:\n    config:\n").unwrap();
        assert_eq!(project.targets[0].user, None);
        assert_eq!(project.targets[0].config, PlatformConfig::default_for(Platform::Swarm));
    }

    #[test]
    fn app_defaults_for_relative_files() {
        let project = parse(
            "app: { path: ../other }\ntargets:\n  a: { platform: nomad }\n",
            Path::new("work/deploy-targets.yaml"),
        )
        .unwrap();
        assert_eq!(project.app.name, "work");
        assert_eq!(project.app.path, PathBuf::from("work/../other"));
        let project =
            parse("app: { path: /abs/app }\ntargets:\n  a: { platform: nomad }\n", Path::new("deploy-targets.yaml"))
                .unwrap();
        assert_eq!(project.app.path, PathBuf::from("/abs/app"));
        assert!(!project.app.name.is_empty());
    }

    #[test]
    fn io_error_names_path() {
        let e = load(Path::new("/nonexistent/dir/deploy-targets.yaml")).unwrap_err();
        assert!(matches!(e, ConfigError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/dir/deploy-targets.yaml"));
    }

    #[test]
    fn malformed_yaml_has_location() {
        let e = p("targets:\n  a:\n    platform: [unclosed\n").unwrap_err();
        let ConfigError::Yaml { line, column, .. } = &e else { panic!("{e:?}") };
        assert!(line.is_some() && column.is_some());
        let msg = e.to_string();
        assert!(msg.contains(FILE) && msg.contains("line"), "{msg}");
    }

    #[test]
    fn top_level_errors() {
        let m = bad("- a\n- b\n", None, None);
        assert!(m.contains("top level must be a mapping"), "{m}");
        let m = bad("", None, None);
        assert!(m.contains("empty"), "{m}");
        let m = bad("targets: {}\nextra: 1\n", None, Some("extra"));
        assert!(m.contains("unknown key"), "{m}");
        let m = bad("app: { name: x }\n", None, Some("targets"));
        assert!(m.contains("missing"), "{m}");
        bad("targets: [a]\n", None, Some("targets"));
        bad("targets: {}\n", None, Some("targets"));
        bad("app: { nme: x }\ntargets: {a: {platform: nomad}}\n", None, Some("app.nme"));
        for name in ["..", ".", "a/b", "my app", ""] {
            let m = bad(
                &format!("app: {{ name: {name:?} }}\ntargets: {{a: {{platform: nomad}}}}\n"),
                None,
                Some("app.name"),
            );
            assert!(m.contains("invalid app name"), "{m}");
        }
        let e = parse("targets: {a: {platform: nomad}}\n", Path::new("/srv/my app/deploy-targets.yaml")).unwrap_err();
        assert_eq!(e.key(), Some("app.name"));
    }

    #[test]
    fn target_shape_errors() {
        let m = bad("targets:\n  t1: 5\n", Some("t1"), None);
        assert!(m.contains("target must be a mapping"), "{m}");
        let m = bad(&one("host: h"), Some("t1"), Some("platform"));
        assert!(m.contains("missing") && m.contains("docker_compose"), "{m}");
        let m = bad(&one("platform: docker"), Some("t1"), Some("platform"));
        assert!(
            m.contains("unknown platform \"docker\"")
                && m.contains("docker_compose, podman, kubernetes, swarm, nomad, ssh_raw"),
            "{m}"
        );
        let m = bad(&one("platform: nomad\nhots: h"), Some("t1"), Some("hots"));
        assert!(m.contains("unknown key"), "{m}");
        bad(&one("platform: nomad\nos: beos"), Some("t1"), Some("os"));
        assert_eq!(os_mismatch("linux", "linux", false), None);
        assert_eq!(os_mismatch("linux", "linux", true), None);
        assert_eq!(os_mismatch("wsl", "linux", true), None);
        assert_eq!(
            os_mismatch("wsl", "linux", false).as_deref(),
            Some("os: wsl is declared, but the agent's host is linux")
        );
        assert_eq!(
            os_mismatch("macos", "linux", false).as_deref(),
            Some("os: macos is declared, but the agent's host is linux")
        );
        assert!(os_mismatch("windows", "linux", true).unwrap().contains("declare os: wsl or linux"));
    }

    #[test]
    fn wrong_types() {
        let m = bad(&one("platform: nomad\nport: abc"), Some("t1"), Some("port"));
        assert!(m.contains("expected a port number"), "{m}");
        let m = bad(&one("platform: nomad\nlabels: [1]"), Some("t1"), Some("labels"));
        assert!(m.contains("expected a mapping"), "{m}");
        bad(&one("platform: nomad\nlabels: {a: [1]}"), Some("t1"), Some("labels.a"));
        bad(&one("platform: nomad\nhost: [x]"), Some("t1"), Some("host"));
        bad(&one("platform: nomad\nport: -1"), Some("t1"), Some("port"));
        bad(&one("platform: nomad\nport: 70000"), Some("t1"), Some("port"));
        bad(&one("platform: nomad\nport: 22.5"), Some("t1"), Some("port"));
        bad(&one("platform: 5"), Some("t1"), Some("platform"));
        bad(&one("platform: podman\nconfig: { rootless: yes please }"), Some("t1"), Some("config.rootless"));
        bad(&one("platform: swarm\nconfig: { stack_name: My Stack }"), Some("t1"), Some("config.stack_name"));
        bad(&one("platform: podman\nconfig: { pod_name: \"a/b\" }"), Some("t1"), Some("config.pod_name"));
        bad(
            &one("platform: swarm\nconfig: { images: bundle, registry: \"r:5000\" }"),
            Some("t1"),
            Some("config.registry"),
        );
        bad(&one("platform: kubernetes\nconfig: { replicas: three }"), Some("t1"), Some("config.replicas"));
        let m = bad(&one("platform: swarm\nconfig: { update_delay: 10 }"), Some("t1"), Some("config.update_delay"));
        assert!(m.contains("no unit"), "{m}");
        bad(&one("platform: swarm\nconfig: { update_delay: 10x }"), Some("t1"), Some("config.update_delay"));
        bad(&one("platform: nomad\nconfig: [1]"), Some("t1"), Some("config"));
        bad(&one("platform: nomad\nagent: { port: 0 }"), Some("t1"), Some("agent.port"));
        bad(&one("platform: nomad\nagent: { mode: poll }"), Some("t1"), Some("agent.mode"));
        bad(&one("platform: nomad\nagent: { poll_interval: 0s }"), Some("t1"), Some("agent.poll_interval"));
        bad(&one("platform: nomad\nagent: { mode: pull, watch: sometimes }"), Some("t1"), Some("agent.watch"));
        let off = p(&one("platform: nomad\nagent: { mode: pull, watch: false }")).unwrap();
        assert!(!off.targets[0].agent.watch, "watch: false is kept");
        assert!(p(&one("platform: nomad\nagent: { mode: pull }")).unwrap().targets[0].agent.watch, "watch defaults on");
        let ka = p(&one("platform: nomad\nagent: { mode: pull, keepalive: 5m }")).unwrap();
        assert_eq!(ka.targets[0].agent.keepalive, Duration::from_secs(300));
        bad(&one("platform: nomad\nagent: { mode: pull, keepalive: 1s }"), Some("t1"), Some("agent.keepalive"));
        bad(&one("platform: nomad\nagent: { mode: pull, keepalive: 2h }"), Some("t1"), Some("agent.keepalive"));
        bad(&one("platform: nomad\nagent: { mode: pull, keepalive: often }"), Some("t1"), Some("agent.keepalive"));
        bad(&one("platform: nomad\nagent: { x: 1 }"), Some("t1"), Some("agent.x"));
        bad(&one("platform: nomad\nenv: { 1BAD: x }"), Some("t1"), Some("env.1BAD"));
        bad(&one("platform: nomad\nenv: [A=1]"), Some("t1"), Some("env"));
    }

    #[test]
    fn port_zero_invalid() {
        let m = bad(&one("platform: nomad\nport: 0"), Some("t1"), Some("port"));
        assert!(m.contains("invalid port 0"), "{m}");
    }

    #[test]
    fn service_manager_message() {
        let text = "targets:\n  edge-rpi3:\n    platform: ssh_raw\n    config:\n      service_manager: upstart\n";
        let e = parse(text, Path::new("deploy-targets.yaml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "deploy-targets.yaml: target \"edge-rpi3\": key \"config.service_manager\": unknown service manager \"upstart\" (expected one of: none, systemd, supervisord, pm2, openrc, launchd)"
        );
    }

    #[test]
    fn image_source_is_checked() {
        let m = bad(&one("platform: docker_compose\nconfig:\n  images: usb\n"), Some("t1"), Some("config.images"));
        assert!(m.contains("expected one of: registry, bundle"), "{m}");
        let ok = p(&one("platform: docker_compose\nconfig:\n  images: bundle\n")).unwrap();
        assert!(matches!(ok.targets[0].config, PlatformConfig::DockerCompose { ship_images: true, .. }));
        let m = bad(
            &one("platform: docker_compose\nconfig:\n  registry: https://r.local\n"),
            Some("t1"),
            Some("config.registry"),
        );
        assert!(m.contains("no scheme"), "{m}");
        let both = "platform: docker_compose\nconfig:\n  images: bundle\n  registry: r.local:5000\n";
        bad(&one(both), Some("t1"), Some("config.registry"));
    }

    #[test]
    fn deploy_path_must_be_absolute() {
        let m = bad(
            &one("    platform: ssh_raw\n    config:\n      deploy_path: apps\n"),
            Some("t1"),
            Some("config.deploy_path"),
        );
        assert!(m.contains("must be an absolute path"), "{m}");
    }

    #[test]
    fn config_keys_checked_against_platform() {
        // `replicas` is a swarm/kubernetes key, not a docker_compose one.
        let m = bad(&one("platform: docker_compose\nconfig: { replicas: 2 }"), Some("t1"), Some("config.replicas"));
        assert!(m.contains("platform docker_compose") && m.contains("compose_project"), "{m}");
        bad(&one("platform: nomad\nconfig: { replicas: 2 }"), Some("t1"), Some("config.replicas"));
        bad(
            &one("platform: docker_compose\nconfig: { compose_project: My_App }"),
            Some("t1"),
            Some("config.compose_project"),
        );
        bad(
            &one("platform: kubernetes\nconfig: { resource_limits: { cpu: [1] } }"),
            Some("t1"),
            Some("config.resource_limits.cpu"),
        );
    }

    #[test]
    fn duplicate_target_ids() {
        let text = "targets:\n  edge-rpi3:\n    platform: nomad\n  other:\n    platform: nomad\n  edge-rpi3:\n    platform: swarm\n";
        let m = bad(text, Some("edge-rpi3"), None);
        assert!(m.contains("duplicate target id \"edge-rpi3\""), "{m}");
        assert!(m.contains("(lines 2 and 6)"), "{m}");
        // A duplicate inside a target names the key.
        let text = "targets:\n  t1:\n    platform: nomad\n    labels:\n      a: 1\n      a: 2\n";
        let m = bad(text, Some("t1"), Some("labels.a"));
        assert!(m.contains("duplicate key"), "{m}");
        // Top-level duplicate.
        let m = bad("targets: {}\ntargets: {}\n", None, Some("targets"));
        assert!(m.contains("duplicate key"), "{m}");
    }

    #[test]
    fn target_ids_are_dns_labels() {
        let long = "a".repeat(64);
        for id in ["Edge", "-edge", "edge-", "edge_1", "edge.1", long.as_str(), "é"] {
            let text = format!("targets:\n  {id:?}:\n    platform: nomad\n");
            let m = bad(&text, Some(id), None);
            assert!(m.contains("invalid target id"), "{m}");
        }
        let ok = "a".repeat(63);
        let text = format!(
            "targets:\n  {ok}:\n    platform: nomad\n  0-x9:\n    platform: nomad\n  7:\n    platform: nomad\n"
        );
        let project = p(&text).unwrap();
        assert_eq!(project.targets[2].id, "7");
    }

    #[test]
    fn health_errors() {
        let h = |body: &str| one(&format!("platform: nomad\nhealth:\n{body}"));
        let m = bad(
            &h("  checks:\n    - http: { url: \"https://x/health\" }"),
            Some("t1"),
            Some("health.checks[0].http.url"),
        );
        assert!(m.contains("https") && m.contains("not supported yet"), "{m}");
        bad(&h("  checks:\n    - http: \"ftp://x\""), Some("t1"), Some("health.checks[0].http"));
        bad(&h("  checks:\n    - http: { status: 200 }"), Some("t1"), Some("health.checks[0].http.url"));
        bad(
            &h("  checks:\n    - http: { url: 'http://x', status: 99 }"),
            Some("t1"),
            Some("health.checks[0].http.status"),
        );
        bad(
            &h("  checks:\n    - http: { url: 'http://x', code: 200 }"),
            Some("t1"),
            Some("health.checks[0].http.code"),
        );
        let m = bad(
            &h("  checks:\n    - tcp: 'a:1'\n    - tcp: 'a:1'\n      command: x"),
            Some("t1"),
            Some("health.checks[1]"),
        );
        assert!(m.contains("exactly one of: http, tcp, command"), "{m}");
        let m = bad(&h("  checks:\n    - {}"), Some("t1"), Some("health.checks[0]"));
        assert!(m.contains("exactly one"), "{m}");
        bad(&h("  checks:\n    - ping: x"), Some("t1"), Some("health.checks[0].ping"));
        bad(&h("  checks:\n    - just-a-string"), Some("t1"), Some("health.checks[0]"));
        bad(&h("  checks:\n    - tcp: 'nohost'"), Some("t1"), Some("health.checks[0].tcp"));
        bad(&h("  checks:\n    - tcp: 'h:0'"), Some("t1"), Some("health.checks[0].tcp"));
        bad(&h("  checks:\n    - command: ''"), Some("t1"), Some("health.checks[0].command"));
        bad(&h("  retries: 3"), Some("t1"), Some("health.checks"));
        bad(&h("  checks: []"), Some("t1"), Some("health.checks"));
        bad(&h("  checks: {}"), Some("t1"), Some("health.checks"));
        bad(&h("  checks: [ {tcp: 'a:1'} ]\n  timeout: 0s"), Some("t1"), Some("health.timeout"));
        bad(&h("  checks: [ {tcp: 'a:1'} ]\n  interval: soon"), Some("t1"), Some("health.interval"));
        bad(&h("  checks: [ {tcp: 'a:1'} ]\n  retry: 1"), Some("t1"), Some("health.retry"));
    }

    #[test]
    fn keep_releases_at_least_one() {
        let m = bad(&one("platform: nomad\nkeep_releases: 0"), Some("t1"), Some("keep_releases"));
        assert!(m.contains("at least 1"), "{m}");
        bad(&one("platform: nomad\nkeep_releases: many"), Some("t1"), Some("keep_releases"));
    }

    #[test]
    fn durations_parse() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1m30s", Duration::from_secs(90)),
            ("0s", Duration::ZERO),
            ("1.5s", Duration::from_millis(1500)),
            ("250us", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            (" 2s ", Duration::from_secs(2)),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for s in [
            "",
            " ",
            "10",
            "-1s",
            "5x",
            "s",
            "1h30",
            "1.s.",
            "ms5",
            "1 s",
            "99999999999999999999h",
            "18446744073709551615h",
            "½s",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be rejected");
        }
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("-1s").unwrap_err().contains("negative"));
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn durations_format_and_round_trip() {
        let cases = [
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1_001), "1us1ns"),
        ];
        for (d, s) in cases {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d));
        }
        let big = Duration::new(u64::MAX / 4, 123_456_789);
        assert_eq!(parse_duration(&format_duration(big)), Ok(big));
    }

    #[test]
    fn health_spec_json_round_trip() {
        let spec = HealthSpec {
            checks: vec![
                HealthCheck::Http { url: "http://127.0.0.1:8080/health".into(), status: 200, body: Some("ok".into()) },
                HealthCheck::Tcp { address: "127.0.0.1:8080".into() },
                HealthCheck::Command { command: "test -f ready".into() },
            ],
            retries: 5,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(2500),
            start_period: Duration::ZERO,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"interval\":\"1s\""), "{json}");
        assert!(json.contains("\"timeout\":\"2s500ms\""), "{json}");
        assert!(json.contains("\"type\":\"http\""), "{json}");
        assert!(json.contains("\"type\":\"tcp\""), "{json}");
        let back: HealthSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);

        let minimal: HealthSpec = serde_json::from_str(r#"{"checks":[{"type":"http","url":"http://x/"}]}"#).unwrap();
        assert_eq!(minimal.retries, 3);
        assert_eq!(minimal.interval, Duration::from_secs(2));
        assert_eq!(minimal.timeout, Duration::from_secs(5));
        assert_eq!(minimal.checks[0], HealthCheck::Http { url: "http://x/".into(), status: 200, body: None });
        assert!(serde_json::from_str::<HealthSpec>(r#"{"checks":[],"interval":"2"}"#).is_err());
        assert!(serde_json::from_str::<HealthSpec>(r#"{"checks":[],"interval":2}"#).is_err());
    }

    #[test]
    fn enums_as_strings() {
        for p in Platform::ALL {
            assert_eq!(p.as_str().parse::<Platform>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{}\"", p.as_str()));
            assert_eq!(serde_json::from_str::<Platform>(&format!("\"{p}\"")).unwrap(), p);
        }
        for m in ServiceManager::ALL {
            assert_eq!(m.as_str().parse::<ServiceManager>(), Ok(m));
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{}\"", m.as_str()));
        }
        assert_eq!(serde_json::to_string(&Mode::Pull).unwrap(), "\"pull\"");
        assert_eq!("push".parse::<Mode>(), Ok(Mode::Push));
        assert!("Push".parse::<Mode>().is_err());
        assert!("Docker_Compose".parse::<Platform>().is_err());
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "targets: !tag {a: {platform: nomad}}",
            "targets:\n  ? [a]\n  : {platform: nomad}\n",
            "targets:\n  a: {platform: nomad, labels: {? [x] : y}}\n",
            "targets:\n  a: &x {platform: nomad}\n  b: *x\n",
            "targets:\n  a: {platform: nomad, config: {}}\n  <<: {b: 1}\n",
            "\u{feff}targets: {}",
            "targets:\n  a:\n    platform: nomad\n    port: 1e3\n",
            "targets: {a: {platform: !!str nomad}}",
            "{{{{",
            "targets: {a: {platform: nomad}}\n---\ntargets: {}\n",
        ] {
            let _ = p(text);
        }
        // Aliases are fine.
        let project = p("targets:\n  a: &x {platform: nomad}\n  b: *x\n").unwrap();
        assert_eq!(project.targets.len(), 2);
    }

    #[test]
    fn waves_are_named_groups_in_order_with_a_catch_all_last() {
        let t = "targets:\n  a: {platform: ssh_raw}\n";
        let ok = p(&format!("{t}waves:\n  - {{name: eu, selector: 'region=eu'}}\n  - {{name: rest}}\n")).unwrap();
        assert_eq!(ok.waves.len(), 2);
        assert_eq!(ok.waves[0].selector.as_deref(), Some("region=eu"));
        assert_eq!(ok.waves[1].selector, None);
        let m =
            bad(&format!("{t}waves:\n  - {{name: eu, selector: 'region in (eu'}}\n"), None, Some("waves[0].selector"));
        assert!(m.contains("without its `)`"), "{m}");
        let m = bad(
            &format!("{t}waves:\n  - {{name: all}}\n  - {{name: eu, selector: region=eu}}\n"),
            None,
            Some("waves[1]"),
        );
        assert!(m.contains("must be the last"), "{m}");
        bad(&format!("{t}waves:\n  - {{name: eu}}\n  - {{name: eu}}\n"), None, Some("waves[1].name"));
        bad(&format!("{t}waves:\n  - {{selector: x}}\n"), None, Some("waves[0].name"));
        bad(&format!("{t}waves:\n  - {{name: eu, colour: red}}\n"), None, Some("waves[0].colour"));
        bad(&format!("{t}waves: {{eu: x}}\n"), None, Some("waves"));
    }
}
