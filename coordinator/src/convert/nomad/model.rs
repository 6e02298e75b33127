//! The Nomad job model both renderers read: only what dockfra emits, shaped after Nomad's
//! `api` package. Plain data: no conversion, no rendering.
use std::collections::BTreeMap;
use std::time::Duration;

/// The job, holding only what dockfra emits; field names follow Nomad's `api` package
/// (`api/jobs.go`, `api/tasks.go`, `api/services.go`, `api/resources.go`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Job {
    pub(super) id: String,
    pub(super) region: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) datacenters: Vec<String>,
    pub(super) meta: BTreeMap<String, String>,
    pub(super) update: Update,
    pub(super) groups: Vec<Group>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Update {
    pub(super) max_parallel: u32,
    pub(super) canary: u32,
    pub(super) auto_revert: bool,
    pub(super) auto_promote: bool,
    pub(super) min_healthy_time: Duration,
    pub(super) healthy_deadline: Duration,
    pub(super) progress_deadline: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group {
    pub(super) name: String,
    pub(super) count: u32,
    pub(super) network: Option<Network>,
    pub(super) volumes: BTreeMap<String, HostVolume>,
    pub(super) restart: Option<Restart>,
    /// Compose stops for good after `restart: no` or `on-failure:N`: no new allocation either.
    pub(super) never_reschedule: bool,
    pub(super) services: Vec<Service>,
    pub(super) tasks: Vec<Task>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NetMode {
    Bridge,
    Host,
    /// No network at all (`network_mode: none`): no group network, the driver's `none`.
    None,
}

impl NetMode {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            NetMode::Bridge => "bridge",
            NetMode::Host => "host",
            NetMode::None => "none",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Network {
    pub(super) mode: NetMode,
    pub(super) hostname: Option<String>,
    pub(super) dns: Option<Dns>,
    pub(super) ports: Vec<NetPort>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Dns {
    pub(super) servers: Vec<String>,
    pub(super) searches: Vec<String>,
    pub(super) options: Vec<String>,
}

impl Dns {
    pub(super) fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }
}

/// A group port: `static` is the host port (`ReservedPorts` in JSON), else it is dynamic.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct NetPort {
    pub(super) label: String,
    pub(super) static_port: Option<u16>,
    /// The container port (bridge mode).
    pub(super) to: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct HostVolume {
    pub(super) source: String,
}

/// A group restart policy; unset fields keep Nomad's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Restart {
    pub(super) attempts: Option<u32>,
    pub(super) interval: Option<Duration>,
    pub(super) delay: Option<Duration>,
    pub(super) mode: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Service {
    pub(super) name: String,
    pub(super) port: String,
    pub(super) provider: String,
    pub(super) task: String,
    pub(super) tags: Vec<String>,
    pub(super) checks: Vec<Check>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Check {
    pub(super) kind: CheckKind,
    /// The port label when it differs from the service's.
    pub(super) port: Option<String>,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    /// Consul only: compose's `retries`.
    pub(super) failures_before_critical: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum CheckKind {
    Script { task: String, command: String, args: Vec<String> },
    Http { path: String },
    Tcp,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Task {
    pub(super) name: String,
    pub(super) driver: String,
    pub(super) user: Option<String>,
    pub(super) lifecycle: Option<Lifecycle>,
    pub(super) config: Vec<(String, Cfg)>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) templates: Vec<Template>,
    pub(super) volume_mounts: Vec<VolumeMount>,
    pub(super) resources: Option<Resources>,
    pub(super) restart: Option<Restart>,
    pub(super) kill_timeout: Option<Duration>,
    pub(super) kill_signal: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Lifecycle {
    pub(super) hook: &'static str,
    pub(super) sidecar: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Resources {
    pub(super) cpu: Option<u32>,
    pub(super) memory: Option<u32>,
    pub(super) memory_max: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Template {
    pub(super) data: String,
    pub(super) destination: String,
    pub(super) env: bool,
    pub(super) change_mode: &'static str,
    pub(super) perms: Option<String>,
    pub(super) uid: Option<i64>,
    pub(super) gid: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct VolumeMount {
    pub(super) volume: String,
    pub(super) destination: String,
    pub(super) read_only: bool,
}

/// A value of a task driver's `config` block.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cfg {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
    /// An attribute holding a map (`labels = { … }`).
    Map(BTreeMap<String, String>),
    /// An attribute holding a list of objects (`devices = [{ … }]`).
    Objects(Vec<Vec<(String, Cfg)>>),
    /// Repeated blocks (`mount { … }`); JSON has them as a list of objects.
    Blocks(Vec<Vec<(String, Cfg)>>),
}
