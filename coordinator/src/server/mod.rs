//! The coordinator's server: gRPC over mTLS for agents (Enrollment, Fleet) and for operators
//! (Admin), and the push sessions that dial agents.
//!
//! - Authorization lives in one interceptor per service (`auth`): a Fleet handler only runs
//!   with a verified [`AgentPeer`], an Admin handler with a verified [`OperatorPeer`], and
//!   Enroll calls are rate-limited per source address. Certificates are checked against the
//!   store on every call, so a revocation takes effect at the next one.
//! - Errors reach clients through one mapping (`crate::error`): internal causes are logged
//!   under an incident id and never sent.
//! - Blocking work (builds, `docker save`, exports) runs on blocking threads with timeouts;
//!   a panicking request is answered with INTERNAL and the server goes on.
//! - Every order's deployment row reaches a final state: a result from the agent (reported,
//!   re-reported from its outbox, or read from its recent results), `refused` up front when
//!   the agent cannot take it, `superseded` when a newer order replaced it before the agent
//!   took it, `interrupted` when the coordinator restarted and no agent is working on it.
use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{broadcast, mpsc};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::Status;

use dockfra_common::bundle::{self, Action, DesiredState, Manifest};
use dockfra_common::config::{self, Project, Projects, Target};
use dockfra_common::proto::{self, admin_server, enrollment_server, fleet_server};
use dockfra_common::sign::SigningKey;

use crate::builder;
use crate::ca::Ca;
use crate::error::{CoordError, Result};
use crate::state::{CoordSettings, StateDir};
use crate::store::{DeploymentRow, DesiredRow, ReleaseRow, Store};

mod admin;
mod api;
mod auth;
mod check;
mod enroll;
mod fleet;
mod https;
mod layers;
mod metrics;
mod plan;
mod push;
mod report;
mod rollout;
mod upgrade;
mod views;
mod watch;
mod web;

pub use api::openapi_json;

/// Who asks for an order and on what terms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Order<'a> {
    pub operator: &'a str,
    /// A production target and the operator said yes.
    pub confirm: bool,
    /// Take the target over from another operator's open deployment.
    pub force: bool,
    /// The fleet deploy this order is part of ("" for none).
    pub fleet: &'a str,
}

impl<'a> Order<'a> {
    pub fn by(operator: &'a str) -> Self {
        Self { operator, confirm: false, force: false, fleet: "" }
    }
}

/// Held while an order for a target is built and queued: a second one waits its turn.
pub(crate) struct TargetLock {
    c: Coordinator,
    target: String,
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        self.c.inner.deploying.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.target);
    }
}
pub use auth::{AgentPeer, OperatorPeer};
pub use https::HttpOptions;

/// How long a signed desired state stays valid once handed out.
const DESIRED_TTL: Duration = Duration::from_secs(600);
/// An offline bundle may be exported for at most this long (agents refuse longer by default).
pub const MAX_EXPORT_TTL: Duration = Duration::from_secs(30 * 86400);
const CHUNK: usize = 256 * 1024;

/// How old a build's half-written copy in the blob store must be before GC removes it.
const LEFTOVER_AGE: Duration = Duration::from_secs(600);
/// An order handed out this often without a result is given up (a failing transfer).
const MAX_ATTEMPTS: u32 = 10;

/// The signing key and the chain of rotations that leads to it.
struct Keys {
    current: Arc<SigningKey>,
    rotations: Vec<proto::SignedKeyRotation>,
}

pub struct Inner {
    state: StateDir,
    /// The projects served (`serve --root`, once or more), each a `deploy-targets.yaml`.
    project_files: Vec<PathBuf>,
    store: Mutex<Store>,
    keys: RwLock<Keys>,
    ca: Ca,
    ca_pem: String,
    settings: CoordSettings,
    coord_identity: (String, String),
    events: broadcast::Sender<(String, proto::DeployEvent)>,
    project_cache: Mutex<Option<(Vec<FileStamp>, Arc<Projects>)>>,
    enroll_limit: auth::RateLimiter,
    /// Held by a build (which writes blobs before its release row exists) and by GC.
    blob_lock: Mutex<()>,
    /// Push agents that did not answer their last probe, and why.
    unreachable: Mutex<std::collections::HashMap<String, String>>,
    /// Targets an order is being built for now, and by whom.
    deploying: Mutex<std::collections::HashMap<String, String>>,
    /// Targets whose labels make them production ones (they need a confirmation).
    production: dockfra_common::selector::Selector,
    /// One push session at a time per agent (an agent hosting several apps takes their
    /// orders one after the other, in sequence order).
    agent_gates: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Deploys, rollbacks and waves announced (started on first use, on the runtime).
    notifier: std::sync::OnceLock<crate::notify::Notifier>,
    /// `check` runs one at a time (each sizes a bundle and asks agents).
    check_gate: tokio::sync::Semaphore,
    /// Pull agents holding a watch stream.
    watchers: watch::Watchers,
    /// Polls answered since start, by what they said of the agent's facts.
    polls: PollCounts,
}

/// Polls answered since this coordinator started (a Prometheus counter: it restarts at 0).
#[derive(Default)]
pub struct PollCounts {
    /// The facts came in full.
    sent: std::sync::atomic::AtomicU64,
    /// Left out, and the digest named those held here.
    held: std::sync::atomic::AtomicU64,
    /// Left out, and nothing here matched the digest: the agent was asked for them.
    asked: std::sync::atomic::AtomicU64,
}

/// Modification time and length: a cheap fingerprint of a project file.
type FileStamp = Option<(std::time::SystemTime, u64)>;

#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl Coordinator {
    pub fn open(state: StateDir, project_files: Vec<PathBuf>) -> anyhow::Result<Self> {
        anyhow::ensure!(!project_files.is_empty(), "no project to serve");
        let settings = state.settings()?;
        let store = Store::open(&state.db())?;
        // A state dir from before operators had names: its admin certificate is operator
        // `admin` while the store holds its serial.
        if store.operators()?.is_empty() && state.path("admin.crt").is_file() {
            let (crt, _) = state.operator_identity("admin")?;
            let info = dockfra_common::identity::cert_info(&dockfra_common::identity::first_cert_der(&crt)?)?;
            store.put_operator("admin", &info.serial_hex, "migration", info.not_after_unix)?;
        }
        let (events, _) = broadcast::channel(1024);
        let production = dockfra_common::selector::Selector::parse(settings.production_selector())
            .map_err(|e| anyhow::anyhow!("{}: production_selector: {e}", state.path("coordinator.json").display()))?;
        let keys = Keys { current: Arc::new(state.signing_key()?), rotations: state.signing_chain()? };
        let inner = Inner {
            keys: RwLock::new(keys),
            ca: state.ca()?,
            ca_pem: state.ca_pem()?,
            coord_identity: state.coordinator_identity()?,
            enroll_limit: auth::RateLimiter::new(settings.enroll_burst(), settings.enroll_refill()),
            settings,
            store: Mutex::new(store),
            project_files,
            state,
            events,
            project_cache: Mutex::new(None),
            blob_lock: Mutex::new(()),
            unreachable: Mutex::new(Default::default()),
            deploying: Mutex::new(Default::default()),
            production,
            agent_gates: Mutex::new(Default::default()),
            watchers: Default::default(),
            polls: Default::default(),
            notifier: std::sync::OnceLock::new(),
            check_gate: tokio::sync::Semaphore::new(1),
        };
        // Fail at start-up, naming file/target/key, rather than on the first request.
        Projects::load(&inner.project_files)?;
        let this = Self { inner: Arc::new(inner) };
        this.settle_after_restart()?;
        Ok(this)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(&self) -> (Arc<SigningKey>, Vec<proto::SignedKeyRotation>) {
        let k = self.inner.keys.read().unwrap_or_else(|p| p.into_inner());
        (k.current.clone(), k.rotations.clone())
    }

    /// The projects' config, re-read only when a file changed (every poll of every agent
    /// asks for it, shared, not copied; an operator's edit still applies at the next call).
    fn projects(&self) -> Result<Arc<Projects>> {
        let files = &self.inner.project_files;
        let stamps: Vec<FileStamp> =
            files.iter().map(|f| std::fs::metadata(f).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect();
        let mut cache = self.inner.project_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, projects)) = cache.as_ref() {
            if *at == stamps && stamps.iter().all(Option::is_some) {
                return Ok(projects.clone());
            }
        }
        let projects = Arc::new(Projects::load(files).map_err(|e| CoordError::Precondition(e.to_string()))?);
        *cache = Some((stamps, projects.clone()));
        Ok(projects)
    }

    fn target(&self, id: &str) -> Result<(Project, Target)> {
        let projects = self.projects()?;
        let (p, t) = projects
            .target(id)
            .ok_or_else(|| CoordError::NotFound(format!("no target {id:?} in {}", projects.files())))?;
        Ok((p.clone(), t.clone()))
    }

    /// The agent a target deploys through (its own id when the target is gone from the config).
    fn agent_of(&self, target_id: &str) -> String {
        self.projects()
            .ok()
            .and_then(|p| p.target(target_id).map(|(_, t)| t.agent_name().to_string()))
            .unwrap_or_else(|| target_id.to_string())
    }

    /// An agent by its name or by the id of a target that deploys through it, with the
    /// first target it serves (whose `agent:` says how it runs).
    fn resolve_agent(&self, name: &str) -> Result<(String, Target)> {
        let projects = self.projects()?;
        let t = projects.target(name).or_else(|| projects.of_agent(name).next()).map(|(_, t)| t.clone());
        let t =
            t.ok_or_else(|| CoordError::NotFound(format!("no target or agent {name:?} in {}", projects.files())))?;
        Ok((t.agent_name().to_string(), t))
    }

    /// Was this order overtaken on its agent by another app's order only, before it was ever
    /// handed out? Then it may take a fresh sequence above the agent's floor. (Overtaken by an
    /// order or export of its own target, it is lost, as before.)
    fn may_resequence(&self, d: &DeploymentRow, floor: u64) -> bool {
        d.attempts == 0
            && d.sequence <= floor
            && !self.store().newer_deployment_of(&d.target, d.sequence, &d.id).unwrap_or(true)
    }

    /// Give an overtaken order ([`Self::may_resequence`]) a fresh sequence above `floor`.
    fn resequence(&self, target: &str, dep: &str, agent: &str, floor: u64) -> Result<()> {
        let store = self.store();
        let seq = store.next_sequence_above(agent, floor)?;
        store.resequence(target, dep, seq)?;
        Ok(())
    }

    /// The gate an agent's push sessions take turns at.
    fn agent_gate(&self, agent: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = self.inner.agent_gates.lock().unwrap_or_else(|p| p.into_inner());
        gates.entry(agent.to_string()).or_default().clone()
    }

    /// Serve until `shutdown` resolves: gRPC on `listen` (its bound address written to
    /// `serve.addr`), and with `http` the REST API and the dashboard over HTTPS (`http.addr`).
    pub async fn serve(
        self,
        listen: &str,
        http: Option<HttpOptions>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "dockfra-coord serving (gRPC, mTLS)");
        let web = match &http {
            Some(opts) => {
                let (l, tls, web_addr) = https::bind(&self, opts).await?;
                // A wildcard address is no URL: name what a browser would use.
                let host = if web_addr.ip().is_unspecified() {
                    opts.names.first().cloned().unwrap_or_else(|| "127.0.0.1".into())
                } else {
                    web_addr.ip().to_string()
                };
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                let url = format!("https://{host}:{}/", web_addr.port());
                tracing::info!(%web_addr, "dashboard and REST API");
                println!("dashboard: {url}  (REST API: {url}api/, OpenAPI: {url}api/openapi.json; log in with `dockfra-coord operator token`)");
                let task = tokio::spawn(https::run(self.clone(), l, tls));
                dockfra_common::write_atomic(
                    &self.inner.state.http_addr_file(),
                    web_addr.to_string().as_bytes(),
                    0o644,
                )?;
                Some(task)
            }
            None => None,
        };
        let (cert, key) = &self.inner.coord_identity;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.inner.ca_pem))
            .client_auth_optional(true); // only Enroll goes without a client cert; every other service checks
        self.spawn_push_reconcile();
        self.spawn_push_probe();
        self.resume_fleets();
        let router = tonic::transport::Server::builder()
            .tls_config(tls)?
            // Connections whose peer vanished (a cut link, a NAT that forgot them) are
            // closed instead of holding a blob stream open for TCP's retransmission timeout.
            // Five minutes: this timer restarts only on a request or a body the coordinator
            // reads (not on the peer's pings, nor on what it writes), so it pings every idle
            // watch stream at this rate, besides the stream's own keepalive events.
            .http2_keepalive_interval(Some(Duration::from_secs(300)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .initial_stream_window_size(dockfra_common::identity::H2_STREAM_WINDOW)
            .initial_connection_window_size(dockfra_common::identity::H2_CONNECTION_WINDOW)
            .max_frame_size(dockfra_common::identity::H2_MAX_FRAME)
            .layer(layers::CatchPanicLayer)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                enrollment_server::EnrollmentServer::new(self.clone()),
                auth::enroll_interceptor(self.clone()),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                fleet_server::FleetServer::new(self.clone()),
                auth::agent_interceptor(self.clone()),
            ))
            .add_service(tonic::service::interceptor::InterceptedService::new(
                admin_server::AdminServer::new(self.clone()),
                auth::operator_interceptor(self.clone()),
            ));
        // Written once the services exist: whoever waits for it may call at once.
        dockfra_common::write_atomic(&self.inner.state.serve_addr_file(), addr.to_string().as_bytes(), 0o644)?;
        // TCP_NODELAY: small gRPC frames must not wait for delayed ACKs (40 ms a round trip).
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let served = router.serve_with_incoming_shutdown(incoming, shutdown).await;
        if let Some(t) = web {
            t.abort();
            let _ = std::fs::remove_file(self.inner.state.http_addr_file());
        }
        served?;
        let _ = std::fs::remove_file(self.inner.state.serve_addr_file());
        Ok(())
    }

    // ------------------------------------------------------------------ deployments

    /// May `order` go to `target` now? A production target needs the operator's yes; a target
    /// another operator is deploying is theirs until it ends (or `force`); and one order at a
    /// time is built for a target. The lock is held until the order is queued.
    pub(crate) fn take_target(&self, target: &Target, order: &Order<'_>) -> Result<TargetLock> {
        if self.inner.production.matches(&target.labels) && !order.confirm {
            return Err(CoordError::Precondition(format!(
                "target {:?} is a production target ({}): confirm with --yes (REST: \"confirm\": true)",
                target.id, self.inner.production
            )));
        }
        if !order.force {
            let open = self.store().open_deployments(Some(&target.id))?;
            if let Some(d) = open.iter().find(|d| d.status != "exporting" && d.operator != order.operator) {
                let holder = if d.operator.is_empty() { "another operator" } else { d.operator.as_str() };
                let age = (dockfra_common::now_unix() as i64 - d.started_unix).max(0);
                return Err(CoordError::Precondition(format!(
                    "target {:?} is being deployed by {holder} ({} {}, {} for {age}s): wait for it \
                     (`dockfra-coord deployment {}`) or take it over with --force",
                    target.id, d.action, d.id, d.status, d.id
                )));
            }
        }
        let mut locks = self.inner.deploying.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(holder) = locks.get(&target.id) {
            return Err(CoordError::Precondition(format!(
                "target {:?} is locked: {holder} is building an order for it right now; try again when it is queued",
                target.id
            )));
        }
        locks.insert(target.id.clone(), order.operator.to_string());
        Ok(TargetLock { c: self.clone(), target: target.id.clone() })
    }

    /// Record an agent's (or our own) event. Idempotent: an event for a deployment that is
    /// already final changes nothing and adds no row (results are re-sent from outboxes).
    /// Returns whether it was recorded.
    fn record_event(&self, target: &str, ev: &proto::DeployEvent) -> bool {
        let store = self.store();
        let dep = if ev.deployment_id.is_empty() { None } else { store.deployment(&ev.deployment_id).ok().flatten() };
        if let Some(d) = &dep {
            if d.finished_unix.is_some() || d.target != target {
                return false;
            }
        }
        // An event of a deployment carries the operator who asked for it: the trail says who
        // deployed what, step by step.
        let operator = dep.as_ref().map(|d| d.operator.as_str()).unwrap_or_default();
        let dep_id = if dep.is_some() { ev.deployment_id.as_str() } else { "" };
        let _ = store.event_of(target, &ev.phase, &ev.message, operator, dep_id);
        if dep.is_some() {
            if ev.r#final {
                let status = if ev.result.is_empty() { "failed" } else { ev.result.as_str() };
                let _ = store.update_deployment(&ev.deployment_id, status, &ev.message, true, ev.bytes_received);
                if let Ok(Some(done)) = store.deployment(&ev.deployment_id) {
                    let app = store.release(&done.bundle_id).ok().flatten().map(|r| r.app).unwrap_or_default();
                    let channels = self.channels_of([target]);
                    self.notify(channels, crate::notify::Notice::deployment(&done, &app));
                }
            } else {
                let status = if ev.retry { "retrying" } else { "running" };
                let _ = store.update_deployment(&ev.deployment_id, status, &ev.message, false, ev.bytes_received);
            }
        }
        drop(store);
        let mut forwarded = ev.clone();
        forwarded.target = target.to_string();
        let _ = self.inner.events.send((target.to_string(), forwarded));
        if ev.r#final && ev.result == "succeeded" {
            let this = self.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = this.collect_garbage(false) {
                    tracing::warn!("gc: {e}");
                }
            });
        }
        true
    }

    /// The targets a many-target tool names: one (checked), those a selector matches, or all.
    fn select_targets(&self, target: &str, selector: &str, all: bool) -> Result<Vec<String>> {
        if !target.is_empty() {
            return Ok(vec![self.target(target)?.1.id]);
        }
        if !all && selector.is_empty() {
            return Err(CoordError::Invalid("name a target, a selector, or all".into()));
        }
        let sel = (!selector.is_empty())
            .then(|| dockfra_common::selector::Selector::parse(selector))
            .transpose()
            .map_err(|e| CoordError::Invalid(e.to_string()))?;
        let ids: Vec<String> = self
            .projects()?
            .targets()
            .filter(|(_, t)| sel.as_ref().is_none_or(|s| s.matches(&t.labels)))
            .map(|(_, t)| t.id.clone())
            .collect();
        if ids.is_empty() {
            return Err(CoordError::Precondition(format!("no target matches the selector {selector:?}")));
        }
        Ok(ids)
    }

    /// The notifications of these targets: their projects' and their own, each once.
    fn channels_of<'a>(&self, targets: impl IntoIterator<Item = &'a str>) -> Vec<dockfra_common::config::Notification> {
        let Ok(projects) = self.projects() else { return Vec::new() };
        let mut out: Vec<dockfra_common::config::Notification> = Vec::new();
        for id in targets {
            let Some((p, t)) = projects.target(id) else { continue };
            for n in p.notifications.iter().chain(&t.notifications) {
                if !out.contains(n) {
                    out.push(n.clone());
                }
            }
        }
        out
    }

    /// Announce `notice` on `channels`, never waiting for it.
    fn notify(&self, channels: Vec<dockfra_common::config::Notification>, notice: crate::notify::Notice) {
        if channels.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.inner.notifier.get_or_init(crate::notify::Notifier::start).send(channels, notice);
    }

    /// End a deployment ourselves (a refusal up front, a supersession, an interruption).
    fn finish(&self, target: &str, deployment_id: &str, result: &str, message: String) -> proto::DeployEvent {
        let phase = match result {
            "refused" => "Refused",
            "superseded" => "Superseded",
            "interrupted" => "Interrupted",
            _ => "Failed",
        };
        let ev = Self::event(deployment_id, phase, message, Some(result));
        self.record_event(target, &ev);
        ev
    }

    /// Build and store a new release for `target` (its sequence is the next of the target's),
    /// on a blocking thread: builds run `docker build`/`save` and hash every file.
    async fn build_release(&self, target_id: &str, version: Option<&str>) -> Result<(ReleaseRow, Target)> {
        let this = self.clone();
        let (target_id, version) = (target_id.to_string(), version.map(String::from));
        tokio::task::spawn_blocking(move || this.build_release_blocking(&target_id, version.as_deref()))
            .await
            .map_err(|e| CoordError::internal(anyhow::anyhow!("build task: {e}")))?
    }

    fn build_release_blocking(&self, target_id: &str, version: Option<&str>) -> Result<(ReleaseRow, Target)> {
        let (project, target) = self.target(target_id)?;
        let _blobs = self.inner.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        let blobs = self.inner.state.blobs();
        let seq = self.store().next_sequence(target.agent_name())?;
        let built = builder::build(&project, &target, &blobs, seq, version, builder::Mode::Store)
            .map_err(|e| CoordError::Precondition(format!("{e:#}")))?;
        let row = ReleaseRow::of(target_id, &built.manifest);
        self.store().add_release(&row)?;
        Ok((row, target))
    }

    /// Record a deployment. `online`: it becomes the target's desired state (pushed or polled),
    /// and older orders the agent has not taken yet are superseded; otherwise it is an
    /// offline export, which never changes what online agents are told.
    fn queue(
        &self,
        target: &Target,
        row: &ReleaseRow,
        action: Action,
        seq: u64,
        online: bool,
        order: &Order<'_>,
    ) -> Result<String> {
        let operator = order.operator;
        // An agent upgrade travels as a deploy of the agent's own app; its history says so.
        let label = if row.app == bundle::AGENT_APP { "upgrade" } else { action.as_str() };
        let id =
            format!("d-{}-{}", dockfra_common::now_unix_ms(), &dockfra_common::sha256_hex(&seq.to_be_bytes())[..6]);
        let store = self.store();
        let superseded: Vec<DeploymentRow> = if online {
            store.open_deployments(Some(&target.id))?.into_iter().filter(|d| d.status == "queued").collect()
        } else {
            Vec::new()
        };
        store.add_deployment(&DeploymentRow {
            id: id.clone(),
            target: target.id.clone(),
            action: label.into(),
            bundle_id: row.bundle_id.clone(),
            release: row.release.clone(),
            version: row.version.clone(),
            status: if online { "queued".into() } else { "exporting".into() },
            reason: String::new(),
            bytes: 0,
            started_unix: dockfra_common::now_unix() as i64,
            finished_unix: None,
            operator: operator.to_string(),
            attempts: 0,
            sequence: seq,
            started_ms: dockfra_common::now_unix_ms() as i64,
            finished_ms: None,
            fleet: order.fleet.to_string(),
        })?;
        if online {
            store.set_desired(
                &target.id,
                &DesiredRow {
                    sequence: seq,
                    action: action.as_str().into(),
                    bundle_id: row.bundle_id.clone(),
                    deployment_id: id.clone(),
                },
            )?;
        }
        let what = if online { "queued" } else { "exporting" };
        store.event_of(
            &target.id,
            label,
            &format!("{what} {} (version {}) as {id}", row.release, row.version),
            operator,
            &id,
        )?;
        drop(store);
        for d in superseded {
            let by = if d.operator != operator { format!(" (taken over by {operator})") } else { String::new() };
            self.finish(&target.id, &d.id, "superseded", format!("replaced by {id} before the agent took it{by}"));
        }
        if online && target.agent.mode == config::Mode::Pull {
            self.nudge(target.agent_name(), watch::Nudge::Order);
        }
        Ok(id)
    }

    /// Sign the current desired state of a target, fresh expiry.
    fn assignment_for(&self, target: &str, ttl: Duration) -> Result<Option<(DesiredRow, proto::Assignment)>> {
        let store = self.store();
        let Some(d) = store.desired(target)? else { return Ok(None) };
        let rel = store
            .release(&d.bundle_id)?
            .ok_or_else(|| CoordError::internal(anyhow::anyhow!("desired release {} is missing", d.bundle_id)))?;
        drop(store);
        let action = if d.action == "rollback" { Action::Rollback } else { Action::Deploy };
        let a = self.sign(&rel, action, d.sequence, &d.deployment_id, ttl);
        Ok(Some((d, a)))
    }

    /// Sign a desired state naming `rel`, valid for `ttl` from now, with the key chain.
    fn sign(
        &self,
        rel: &ReleaseRow,
        action: Action,
        sequence: u64,
        deployment_id: &str,
        ttl: Duration,
    ) -> proto::Assignment {
        let now = dockfra_common::now_unix();
        let desired = DesiredState {
            format: bundle::FORMAT,
            requires: Vec::new(),
            target: self.agent_of(&rel.target),
            app: rel.app.clone(),
            action,
            sequence,
            bundle_id: rel.bundle_id.clone(),
            deployment_id: deployment_id.to_string(),
            issued_unix: now,
            expires_unix: now + ttl.as_secs().max(1),
        };
        let (key, rotations) = self.keys();
        bundle::sign_assignment(&key, &desired, rel.manifest.clone(), &rotations)
    }

    /// Allowed digests of a bundle for an agent (authorization for blob fetches).
    fn bundle_digests(&self, agent: &str, bundle_id: &str) -> Result<BTreeSet<String>> {
        let rel =
            self.store().release(bundle_id)?.ok_or_else(|| CoordError::NotFound(format!("no bundle {bundle_id}")))?;
        if self.agent_of(&rel.target) != agent {
            return Err(CoordError::Denied(format!("bundle {bundle_id} is not for agent {agent:?}")));
        }
        if rel.pruned_unix.is_some() {
            return Err(CoordError::Precondition(format!("bundle {bundle_id} was garbage-collected")));
        }
        let m: Manifest = Manifest::parse(&rel.manifest).map_err(CoordError::internal)?;
        Ok(m.digests().into_iter().collect())
    }

    /// Stream blobs as chunks into `tx`.
    async fn send_blobs<T: Send + 'static>(
        blobs: PathBuf,
        digests: Vec<String>,
        tx: mpsc::Sender<T>,
        wrap: impl Fn(proto::BlobChunk) -> T + Send + 'static,
    ) -> anyhow::Result<()> {
        for d in digests {
            let (size, mut f) = builder::open_blob(&blobs, &d).with_context(|| format!("blob {d}"))?;
            let mut offset = 0u64;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = f.read(&mut buf)?;
                buf.truncate(n);
                let last = offset + n as u64 >= size || n == 0;
                let chunk = proto::BlobChunk { digest: d.clone(), offset, data: buf, last };
                offset += n as u64;
                if tx.send(wrap(chunk)).await.is_err() {
                    return Ok(()); // the other side went away
                }
                dockfra_common::fault::hit("coord:blob-chunk");
                if last {
                    break;
                }
            }
        }
        Ok(())
    }

    fn event(deployment_id: &str, phase: &str, message: String, result: Option<&str>) -> proto::DeployEvent {
        proto::DeployEvent {
            deployment_id: deployment_id.to_string(),
            phase: phase.to_string(),
            message,
            r#final: result.is_some(),
            result: result.unwrap_or_default().to_string(),
            unix_ms: dockfra_common::now_unix_ms(),
            ..Default::default()
        }
    }

    // ------------------------------------------------------------------ settling

    /// Settle a target's open deployments against what its agent reports: results it
    /// remembers are recorded; an order its floor has passed without a result is `lost`; an
    /// order it never finished that is no longer the desired one is `superseded`.
    fn settle_with_status(&self, target: &str, st: &proto::AgentStatus) {
        // One indexed query on every poll; the rest only when something is open.
        let open = self.store().open_deployments(Some(target)).unwrap_or_default();
        if open.is_empty() {
            return;
        }
        for r in st.recent.iter().filter(|r| open.iter().any(|d| d.id == r.deployment_id)) {
            let ev = proto::DeployEvent {
                deployment_id: r.deployment_id.clone(),
                phase: if r.result == "succeeded" { "Done".into() } else { "Failed".into() },
                message: r.message.clone(),
                r#final: true,
                result: r.result.clone(),
                release: r.release.clone(),
                unix_ms: r.unix_ms,
                ..Default::default()
            };
            self.record_event(target, &ev);
        }
        let (open, desired) = {
            let store = self.store();
            (store.open_deployments(Some(target)).unwrap_or_default(), store.desired(target).ok().flatten())
        };
        let desired_id = desired.map(|d| d.deployment_id).unwrap_or_default();
        for d in open {
            if d.status == "exporting" || d.id == st.in_flight || d.status == "queued" && d.id == desired_id {
                continue;
            }
            // Lost: the agent's floor passed it. (Not an order another app's order overtook on
            // the same agent before it was ever handed out: that one gets a fresh sequence
            // when it is handed out.)
            if d.sequence > 0
                && d.sequence <= st.last_desired_sequence
                && !self.may_resequence(&d, st.last_desired_sequence)
            {
                self.finish(
                    target,
                    &d.id,
                    "failed",
                    format!(
                        "lost: the agent's floor ({}) is past this order and it reports no result for it",
                        st.last_desired_sequence
                    ),
                );
            } else if d.id != desired_id {
                self.finish(
                    target,
                    &d.id,
                    "superseded",
                    "a newer order replaced it before the agent finished it".into(),
                );
            }
        }
    }

    /// At start-up: exports cut off by a restart failed, and orders a newer one replaced
    /// are superseded. Push deployments still open are settled against their agents once
    /// the server runs ([`Coordinator::spawn_push_reconcile`]); pull ones at the agent's next
    /// poll.
    fn settle_after_restart(&self) -> anyhow::Result<()> {
        let open = self.store().open_deployments(None)?;
        for d in open {
            let desired = self.store().desired(&d.target)?.map(|x| x.deployment_id).unwrap_or_default();
            if d.status == "exporting" {
                self.finish(
                    &d.target,
                    &d.id,
                    "failed",
                    "interrupted: the coordinator stopped while writing this export".into(),
                );
            } else if d.id != desired {
                self.finish(
                    &d.target,
                    &d.id,
                    "superseded",
                    "a newer order replaced it before the agent finished it".into(),
                );
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ garbage collection

    /// Drop releases no agent keeps and blobs no kept release names. Kept per target: the
    /// newest `keep_releases`, the desired one, those of open deployments, and every release
    /// the agent reports having.
    fn collect_garbage(&self, dry_run: bool) -> Result<proto::GcReport> {
        let _blobs = self.inner.blob_lock.lock().unwrap_or_else(|p| p.into_inner());
        let projects = self.projects()?;
        let store = self.store();
        let live = store.live_releases()?;
        let mut protected: BTreeSet<String> = BTreeSet::new();
        for d in store.open_deployments(None)? {
            protected.insert(d.bundle_id);
        }
        for (p, t) in projects.targets() {
            if let Some(d) = store.desired(&t.id)? {
                protected.insert(d.bundle_id);
            }
            let Some(a) = store.agent(t.agent_name())? else { continue };
            for app in a.status["apps"].as_array().into_iter().flatten().filter(|x| x["app"] == p.app.name.as_str()) {
                let names = app["releases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain([&app["current_release"], &app["previous_release"]]);
                for n in names.filter_map(|n| n.as_str()) {
                    protected.insert(format!("{}/{n}", t.id));
                }
            }
        }
        let mut report = proto::GcReport::default();
        let mut kept: Vec<&ReleaseRow> = Vec::new();
        let mut per_target: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
        for r in &live {
            let keep = projects.target(&r.target).map(|(_, t)| t.keep_releases).unwrap_or(config::DEFAULT_KEEP_RELEASES)
                as usize;
            let n = per_target.entry((r.target.as_str(), r.app.as_str())).or_default();
            *n += 1;
            let named = protected.contains(&r.bundle_id) || protected.contains(&format!("{}/{}", r.target, r.release));
            if *n <= keep || named {
                kept.push(r);
            } else {
                report.releases_pruned += 1;
                report.pruned.push(format!("{}/{}", r.target, r.release));
                if !dry_run {
                    store.mark_pruned(&r.bundle_id)?;
                }
            }
        }
        drop(store);
        let mut referenced = BTreeSet::new();
        for r in kept {
            let m = Manifest::parse(&r.manifest).map_err(CoordError::internal)?;
            referenced.extend(m.digests());
        }
        let dir = self.inner.state.blobs();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Ok(meta) = e.metadata() else { continue };
            if dockfra_common::paths::Digest::new(&name).is_err() {
                // A copy a build was cut off in (the coordinator killed mid-copy): nothing
                // will name it. No build is copying now (they hold the blob lock, as GC
                // does); an old one only, to be sure.
                let leftover = name.starts_with(".incoming-") || name.starts_with(".save-");
                let stale = meta.modified().ok().and_then(|m| m.elapsed().ok()).is_some_and(|a| a >= LEFTOVER_AGE);
                if leftover && stale && (dry_run || std::fs::remove_file(e.path()).is_ok()) {
                    report.blobs_removed += 1;
                    report.bytes_freed += meta.len();
                }
                continue;
            }
            if referenced.contains(&name) {
                report.blobs_kept += 1;
                report.bytes_kept += meta.len();
            } else if dry_run || std::fs::remove_file(e.path()).is_ok() {
                report.blobs_removed += 1;
                report.bytes_freed += meta.len();
            }
        }
        Ok(report)
    }
}

/// May the agent that sent `st` be handed an order for `target` now? `Err` is the refusal,
/// worded for the deployment's history: its state is unreadable, or its facts say it cannot
/// take what this coordinator builds. The one check for pull (at a poll) and push (before a
/// push).
fn can_take(target: &Target, st: &proto::AgentStatus) -> std::result::Result<(), String> {
    if !st.state_error.is_empty() {
        return Err(format!("refused: the agent cannot trust its own state: {}", st.state_error));
    }
    match &st.facts {
        Some(f) => compat(target, &facts_json(f)).map_err(|why| format!("refused by the coordinator: {why}")),
        None => Ok(()),
    }
}

/// Can the agent whose facts these are take what this coordinator builds for `target`? An
/// agent with no facts yet decides itself (and refuses once, with its reason).
fn compat(target: &Target, facts: &serde_json::Value) -> std::result::Result<(), String> {
    let Some(version) = facts["agent_version"].as_str().filter(|v| !v.is_empty()) else { return Ok(()) };
    let formats: Vec<u64> =
        facts["manifest_formats"].as_array().into_iter().flatten().filter_map(|f| f.as_u64()).collect();
    let formats = if formats.is_empty() { vec![1] } else { formats };
    let upgrade = format!(
        "upgrade the agent to {} (`dockfra-coord agent install {}`, or install the dockfra-agent {} package on the host) and deploy again",
        dockfra_common::VERSION,
        target.id,
        dockfra_common::VERSION
    );
    if !formats.contains(&u64::from(bundle::FORMAT)) {
        return Err(format!(
            "the agent of {:?} runs dockfra-agent {version}, which reads manifest format {formats:?}; this coordinator ({}) builds format {}: {upgrade}",
            target.id,
            dockfra_common::VERSION,
            bundle::FORMAT
        ));
    }
    let platforms: Vec<&str> = facts["platforms"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
    if !platforms.is_empty() && !platforms.contains(&target.platform.as_str()) {
        return Err(format!(
            "the agent of {:?} runs dockfra-agent {version}, which has no {} driver (it has: {}): {upgrade}",
            target.id,
            target.platform,
            platforms.join(", ")
        ));
    }
    Ok(())
}

fn status_json(st: &proto::AgentStatus) -> serde_json::Value {
    let disk = st.disk.unwrap_or_default();
    serde_json::json!({
        "last_desired_sequence": st.last_desired_sequence,
        "state_error": st.state_error,
        "in_flight": st.in_flight,
        "disk": {"blobs": disk.blobs, "blobs_bytes": disk.blobs_bytes, "releases_bytes": disk.releases_bytes,
            "free_bytes": disk.free_bytes, "total_bytes": disk.total_bytes},
        "host": st.host.as_ref().map(|h| serde_json::json!({
            "memory_total_bytes": h.memory_total_bytes, "memory_available_bytes": h.memory_available_bytes,
            "ports_known": h.ports_known,
            "listening": h.listening.iter().map(|p| serde_json::json!({"protocol": p.protocol, "address": p.address, "port": p.port})).collect::<Vec<_>>(),
        })),
        "apps": st.apps.iter().map(|a| serde_json::json!({
            "app": a.app, "current_release": a.current_release, "previous_release": a.previous_release,
            "current_sequence": a.current_sequence, "current_version": a.current_version, "health": a.health,
            "releases": a.releases, "last_result": a.last_result,
        })).collect::<Vec<_>>(),
    })
}

fn facts_json(f: &proto::Facts) -> serde_json::Value {
    serde_json::json!({
        "agent_version": f.agent_version, "os": f.os, "os_release": f.os_release, "arch": f.arch,
        "hostname": f.hostname, "wsl": f.wsl,
        "runtimes": f.runtimes.iter().map(|r| serde_json::json!({"name": r.name, "version": r.version, "path": r.path})).collect::<Vec<_>>(),
        "manifest_formats": f.manifest_formats, "platforms": f.platforms, "features": f.features,
        "binary_sha256": f.binary_sha256,
    })
}

/// An agent's facts as the store keeps them, back into the wire message.
fn facts_from_json(f: &serde_json::Value) -> proto::Facts {
    let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
    let strings = |k: &str| -> Vec<String> {
        f[k].as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect()
    };
    proto::Facts {
        agent_version: s("agent_version"),
        os: s("os"),
        os_release: s("os_release"),
        arch: s("arch"),
        hostname: s("hostname"),
        wsl: f["wsl"] == true,
        runtimes: f["runtimes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| proto::Runtime {
                name: r["name"].as_str().unwrap_or_default().into(),
                version: r["version"].as_str().unwrap_or_default().into(),
                path: r["path"].as_str().unwrap_or_default().into(),
            })
            .collect(),
        manifest_formats: f["manifest_formats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_u64().map(|n| n as u32))
            .collect(),
        platforms: strings("platforms"),
        features: strings("features"),
        binary_sha256: s("binary_sha256"),
    }
}

/// Convert a gRPC status into an anyhow error for callers at the edge.
pub fn status_to_anyhow(s: Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_names_the_agent_version_and_how_to_upgrade() {
        let t = config::parse(
            "targets:\n  edge:\n    platform: docker_compose\n",
            std::path::Path::new("/p/deploy-targets.yaml"),
        )
        .unwrap()
        .targets
        .remove(0);
        assert!(compat(&t, &serde_json::json!({})).is_ok(), "no facts: the agent decides");
        let old = serde_json::json!({"agent_version": "0.1.0"});
        let e = compat(&t, &old).unwrap_err();
        assert!(e.contains("0.1.0") && e.contains("format [1]") && e.contains("agent install edge"), "{e}");
        let no_driver = serde_json::json!({"agent_version": "9", "manifest_formats": [2], "platforms": ["ssh_raw"]});
        assert!(compat(&t, &no_driver).unwrap_err().contains("no docker_compose driver"));
        let ok = serde_json::json!({"agent_version": "9", "manifest_formats": [2], "platforms": ["docker_compose"]});
        assert!(compat(&t, &ok).is_ok());
    }
}
