//! The coordinator's server: gRPC over mTLS for agents (Enrollment, Fleet) and for the CLI
//! (Admin), and the push session that dials agents. Authorization is by the peer
//! certificate's URI SAN on every call, and agent certificates are checked against the store
//! on every call, so a revocation takes effect at the next one.
use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status};

use dockfra_common::bundle::{self, Action, DesiredState, Manifest};
use dockfra_common::config::{self, Mode, Project, Target};
use dockfra_common::identity::{self, CertInfo};
use dockfra_common::proto::{self, admin_server, agent_client, enrollment_server, fleet_server};
use dockfra_common::sign::SigningKey;

use crate::builder;
use crate::ca::{Ca, Subject};
use crate::state::{CoordSettings, StateDir};
use crate::store::{DeploymentRow, DesiredRow, ReleaseRow, Store, TokenRefusal};

/// How long a signed desired state stays valid once handed out.
const DESIRED_TTL: Duration = Duration::from_secs(600);
const CHUNK: usize = 256 * 1024;

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::DeployEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::BlobChunk, Status>> + Send>>;

pub struct Inner {
    state: StateDir,
    project_file: PathBuf,
    store: Mutex<Store>,
    signing: SigningKey,
    ca: Ca,
    ca_pem: String,
    settings: CoordSettings,
    coord_identity: (String, String),
    events: broadcast::Sender<(String, proto::DeployEvent)>,
    project_cache: Mutex<Option<((std::time::SystemTime, u64), Project)>>,
}

#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

/// One mapping from internal errors to gRPC status.
fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{e:#}"))
}

fn chunk_err(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

impl Coordinator {
    pub fn open(state: StateDir, project_file: PathBuf) -> anyhow::Result<Self> {
        let settings = state.settings()?;
        let store = Store::open(&state.db())?;
        let (events, _) = broadcast::channel(1024);
        let inner = Inner {
            signing: state.signing_key()?,
            ca: state.ca()?,
            ca_pem: state.ca_pem()?,
            coord_identity: state.coordinator_identity()?,
            settings,
            store: Mutex::new(store),
            project_file,
            state,
            events,
            project_cache: Mutex::new(None),
        };
        // Fail at start-up, naming file/target/key, rather than on the first request.
        config::load(&inner.project_file)?;
        Ok(Self { inner: Arc::new(inner) })
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The project's config, re-read only when the file changed (every poll of every agent
    /// asks for it; an operator's edit still applies at the next call).
    fn project(&self) -> Result<Project, Status> {
        let file = &self.inner.project_file;
        // Modification time and length: a cheap fingerprint of the file.
        let stamp = std::fs::metadata(file).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self.inner.project_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(stamp), Some((at, project))) = (stamp, cache.as_ref()) {
            if *at == stamp {
                return Ok(project.clone());
            }
        }
        let project = config::load(file).map_err(|e| Status::failed_precondition(e.to_string()))?;
        *cache = stamp.map(|s| (s, project.clone()));
        Ok(project)
    }

    fn target(&self, id: &str) -> Result<(Project, Target), Status> {
        let project = self.project()?;
        let t = project
            .target(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no target {id:?} in {}", self.inner.project_file.display())))?;
        Ok((project, t))
    }

    /// Serve until `shutdown` resolves. Writes the bound address to `serve.addr`.
    pub async fn serve(
        self,
        listen: &str,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        dockfra_common::write_atomic(&self.inner.state.serve_addr_file(), addr.to_string().as_bytes(), 0o644)?;
        tracing::info!(%addr, "dockfra-coord serving (gRPC, mTLS)");
        let (cert, key) = &self.inner.coord_identity;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .client_ca_root(Certificate::from_pem(&self.inner.ca_pem))
            .client_auth_optional(true); // only Enroll goes without a client cert; every other call checks
        tonic::transport::Server::builder()
            .tls_config(tls)?
            .add_service(enrollment_server::EnrollmentServer::new(self.clone()))
            .add_service(fleet_server::FleetServer::new(self.clone()))
            .add_service(admin_server::AdminServer::new(self.clone()))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
            .await?;
        let _ = std::fs::remove_file(self.inner.state.serve_addr_file());
        Ok(())
    }

    // ------------------------------------------------------------------ authorization

    fn peer<T>(req: &Request<T>) -> Result<CertInfo, Status> {
        let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let first = certs.first().ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        identity::cert_info(first.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// The target of an agent's certificate, if that certificate is still good.
    fn agent_peer<T>(&self, req: &Request<T>) -> Result<(String, String), Status> {
        let info = Self::peer(req)?;
        let target = info
            .target()
            .ok_or_else(|| Status::permission_denied("this call is for agents; the certificate names no target"))?
            .to_string();
        let store = self.store();
        if !store.cert_active(&target, &info.serial_hex).map_err(internal)? {
            return Err(Status::permission_denied(format!(
                "the certificate of agent {target:?} is revoked or superseded; re-enroll with a new token"
            )));
        }
        store.note_use(&target, &info.serial_hex).map_err(internal)?;
        drop(store);
        Ok((target, info.serial_hex))
    }

    fn admin_peer<T>(req: &Request<T>) -> Result<(), Status> {
        if Self::peer(req)?.has_uri(identity::ADMIN_URI) {
            Ok(())
        } else {
            Err(Status::permission_denied("this call needs the admin certificate"))
        }
    }

    // ------------------------------------------------------------------ deploy machinery

    fn record_event(&self, target: &str, ev: &proto::DeployEvent) {
        let store = self.store();
        let _ = store.event(target, &ev.phase, &ev.message);
        if ev.r#final {
            let status = if ev.result.is_empty() { "failed" } else { ev.result.as_str() };
            let _ = store.update_deployment(&ev.deployment_id, status, &ev.message, true, ev.bytes_received);
        } else if !ev.deployment_id.is_empty() {
            let _ = store.update_deployment(&ev.deployment_id, "running", &ev.message, false, ev.bytes_received);
        }
        drop(store);
        let _ = self.inner.events.send((target.to_string(), ev.clone()));
    }

    /// Build and store a new release for `target` (its sequence is the next of the target's).
    fn build_release(&self, target_id: &str, version: Option<&str>) -> Result<(ReleaseRow, Target), Status> {
        let (project, target) = self.target(target_id)?;
        let blobs = self.inner.state.blobs();
        let seq = self.store().next_sequence(target_id).map_err(internal)?;
        let built = builder::build(&project, &target, &blobs, seq, version)
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        let m = built.manifest;
        let bytes = m.canonical_bytes();
        let row = ReleaseRow {
            bundle_id: dockfra_common::sha256_hex(&bytes),
            target: target_id.to_string(),
            app: m.app.clone(),
            sequence: m.sequence,
            version: m.version.clone(),
            release: m.release_name(),
            manifest: bytes,
        };
        self.store().add_release(&row).map_err(internal)?;
        Ok((row, target))
    }

    /// Record a deployment. `online`: it becomes the target's desired state (pushed or polled);
    /// otherwise it is an offline export, which never changes what online agents are told.
    fn queue(
        &self,
        target: &Target,
        row: &ReleaseRow,
        action: Action,
        seq: u64,
        online: bool,
    ) -> Result<String, Status> {
        let id =
            format!("d-{}-{}", dockfra_common::now_unix_ms(), &dockfra_common::sha256_hex(&seq.to_be_bytes())[..6]);
        let action_s = match action {
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
        };
        let store = self.store();
        store
            .add_deployment(&DeploymentRow {
                id: id.clone(),
                target: target.id.clone(),
                action: action_s.into(),
                bundle_id: row.bundle_id.clone(),
                release: row.release.clone(),
                version: row.version.clone(),
                status: if online { "queued".into() } else { "exported".into() },
                reason: String::new(),
                bytes: 0,
                started_unix: dockfra_common::now_unix() as i64,
                finished_unix: None,
            })
            .map_err(internal)?;
        if online {
            store
                .set_desired(
                    &target.id,
                    &DesiredRow {
                        sequence: seq,
                        action: action_s.into(),
                        bundle_id: row.bundle_id.clone(),
                        deployment_id: id.clone(),
                    },
                )
                .map_err(internal)?;
        }
        store
            .event(&target.id, action_s, &format!("queued {} (version {}) as {id}", row.release, row.version))
            .map_err(internal)?;
        Ok(id)
    }

    /// Sign the current desired state of a target, fresh expiry.
    fn assignment_for(&self, target: &str, ttl: Duration) -> Result<Option<(DesiredRow, proto::Assignment)>, Status> {
        let store = self.store();
        let Some(d) = store.desired(target).map_err(internal)? else { return Ok(None) };
        let rel =
            store.release(&d.bundle_id).map_err(internal)?.ok_or_else(|| internal("desired release is missing"))?;
        drop(store);
        let action = if d.action == "rollback" { Action::Rollback } else { Action::Deploy };
        let a = self.sign(&rel, action, d.sequence, &d.deployment_id, ttl);
        Ok(Some((d, a)))
    }

    /// Sign a desired state naming `rel`, valid for `ttl` from now.
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
            target: rel.target.clone(),
            app: rel.app.clone(),
            action,
            sequence,
            bundle_id: rel.bundle_id.clone(),
            deployment_id: deployment_id.to_string(),
            issued_unix: now,
            expires_unix: now + ttl.as_secs().max(1),
        };
        bundle::sign_assignment(&self.inner.signing, &desired, rel.manifest.clone())
    }

    /// Allowed digests of a bundle for a target (authorization for blob fetches).
    fn bundle_digests(&self, target: &str, bundle_id: &str) -> Result<BTreeSet<String>, Status> {
        let rel = self
            .store()
            .release(bundle_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no bundle {bundle_id}")))?;
        if rel.target != target {
            return Err(Status::permission_denied(format!("bundle {bundle_id} is not for target {target:?}")));
        }
        let m: Manifest = serde_json::from_slice(&rel.manifest).map_err(internal)?;
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

    fn agent_url(target: &Target) -> Result<String, Status> {
        let host = target.host.as_deref().ok_or_else(|| {
            Status::failed_precondition(format!("target {:?} has no host: cannot dial its push agent", target.id))
        })?;
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        Ok(format!("https://{host}:{}", target.agent.port))
    }

    async fn dial_agent(
        &self,
        target: &Target,
    ) -> Result<agent_client::AgentClient<tonic::transport::Channel>, Status> {
        match self.store().agent(&target.id).map_err(internal)? {
            None => {
                return Err(Status::failed_precondition(format!(
                    "target {:?} has no enrolled agent (create a token with `dockfra-coord token create {}`)",
                    target.id, target.id
                )))
            }
            Some(a) if a.revoked => {
                return Err(Status::permission_denied(format!(
                    "the agent of {:?} is revoked: not dialling it (re-enroll with a new token)",
                    target.id
                )))
            }
            Some(_) => {}
        }
        let url = Self::agent_url(target)?;
        let (cert, key) = &self.inner.coord_identity;
        let tls = identity::client_tls(&self.inner.ca_pem, cert, key, &identity::agent_dns(&target.id));
        let ch = identity::connect(&url, tls, Duration::from_secs(5))
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the agent of {:?} at {url}: {e:#}", target.id)))?;
        Ok(agent_client::AgentClient::new(ch).max_decoding_message_size(64 << 20))
    }

    /// Push: dial the agent, run one Deploy stream, forward events to `out`.
    async fn push(&self, target: Target, out: mpsc::Sender<Result<proto::DeployEvent, Status>>) {
        let tid = target.id.clone();
        let Ok(Some((d, assignment))) = self.assignment_for(&tid, DESIRED_TTL) else {
            let _ = out.send(Err(Status::internal("no desired state to push"))).await;
            return;
        };
        let dep = d.deployment_id.clone();
        let fail = |msg: String| Self::event(&dep, "Failed", msg, Some("failed"));
        let mut client = match self.dial_agent(&target).await {
            Ok(c) => c,
            Err(e) => {
                let ev = fail(e.message().to_string());
                self.record_event(&tid, &ev);
                let _ = out.send(Ok(ev)).await;
                return;
            }
        };
        let (tx, rx) = mpsc::channel::<proto::CoordinatorMsg>(16);
        let _ = tx.send(proto::CoordinatorMsg { msg: Some(proto::coordinator_msg::Msg::Assignment(assignment)) }).await;
        let started =
            self.record_and_forward(&tid, Self::event(&dep, "Delivering", format!("pushing to {tid}"), None), &out);
        started.await;
        let mut stream = match client.deploy(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                let ev = fail(format!("agent refused the deploy stream: {}", e.message()));
                self.record_and_forward(&tid, ev, &out).await;
                return;
            }
        };
        let allowed = self.bundle_digests(&tid, &d.bundle_id).unwrap_or_default();
        loop {
            match stream.message().await {
                Ok(Some(proto::AgentMsg { msg: Some(proto::agent_msg::Msg::Need(need)) })) => {
                    let digests: Vec<String> = need.digests.into_iter().filter(|x| allowed.contains(x)).collect();
                    let tx = tx.clone();
                    let blobs = self.inner.state.blobs();
                    tokio::spawn(async move {
                        let wrap = |c| proto::CoordinatorMsg { msg: Some(proto::coordinator_msg::Msg::Chunk(c)) };
                        if let Err(e) = Self::send_blobs(blobs, digests, tx, wrap).await {
                            tracing::warn!("sending blobs: {e:#}");
                        }
                    });
                }
                Ok(Some(proto::AgentMsg { msg: Some(proto::agent_msg::Msg::Event(ev)) })) => {
                    let last = ev.r#final;
                    if last {
                        // Refresh what we know of the agent before the caller hears the result,
                        // so a `status` right after `deploy` shows the new release.
                        if let Ok(st) = client.status(proto::StatusRequest {}).await {
                            let st = st.into_inner();
                            let facts = st.facts.as_ref().map(facts_json);
                            let _ = self.store().touch_agent(&tid, Some(&status_json(&st)), facts.as_ref());
                        }
                    }
                    self.record_and_forward(&tid, ev, &out).await;
                    if last {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    let why = match stream.message().await {
                        Err(e) => e.message().to_string(),
                        _ => "stream ended".to_string(),
                    };
                    self.record_and_forward(
                        &tid,
                        fail(format!("connection to the agent was lost mid-deploy ({why})")),
                        &out,
                    )
                    .await;
                    break;
                }
            }
        }
        drop(tx);
    }

    async fn record_and_forward(
        &self,
        target: &str,
        ev: proto::DeployEvent,
        out: &mpsc::Sender<Result<proto::DeployEvent, Status>>,
    ) {
        self.record_event(target, &ev);
        let _ = out.send(Ok(ev)).await;
    }

    /// Deliver the queued desired state of `target` and stream progress.
    fn deliver(&self, target: Target, deployment_id: String, wait: bool, timeout: Duration) -> EventStream {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let mut sub = self.inner.events.subscribe();
        tokio::spawn(async move {
            match target.agent.mode {
                Mode::Push => this.push(target, tx).await,
                Mode::Pull => {
                    let msg = format!("queued for pull target {:?}: the agent picks it up at its next poll", target.id);
                    if !wait {
                        let _ = tx.send(Ok(Self::event(&deployment_id, "Queued", msg, Some("queued")))).await;
                        return;
                    }
                    let _ = tx.send(Ok(Self::event(&deployment_id, "Queued", msg, None))).await;
                    let deadline = tokio::time::sleep(timeout);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => {
                                let m = format!("timed out after {} waiting for the agent's report (the deploy stays queued)",
                                    config::format_duration(timeout));
                                let _ = tx.send(Ok(Self::event(&deployment_id, "Timeout", m, Some("timeout")))).await;
                                return;
                            }
                            got = sub.recv() => match got {
                                Ok((_, ev)) if ev.deployment_id == deployment_id => {
                                    let last = ev.r#final;
                                    if tx.send(Ok(ev)).await.is_err() || last { return; }
                                }
                                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                                Err(broadcast::error::RecvError::Closed) => return,
                            }
                        }
                    }
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

fn status_json(st: &proto::AgentStatus) -> serde_json::Value {
    serde_json::json!({
        "last_desired_sequence": st.last_desired_sequence,
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
    })
}

fn json_reply(v: serde_json::Value) -> Response<proto::JsonReply> {
    Response::new(proto::JsonReply { json: v.to_string() })
}

fn wait_timeout(ms: u64) -> Duration {
    if ms == 0 {
        Duration::from_secs(600)
    } else {
        Duration::from_millis(ms)
    }
}

// ---------------------------------------------------------------------- Enrollment

#[tonic::async_trait]
impl enrollment_server::Enrollment for Coordinator {
    async fn enroll(&self, req: Request<proto::EnrollRequest>) -> Result<Response<proto::EnrollResponse>, Status> {
        let r = req.into_inner();
        let mut parts = r.token.split('.');
        let (Some("dkf1"), Some(id), Some(secret), Some(_pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Status::invalid_argument("malformed join token (expected dkf1.<id>.<secret>.<ca-sha256>)"));
        };
        let expected = (!r.expected_target.is_empty()).then_some(r.expected_target.as_str());
        let refuse = |refusal: TokenRefusal| {
            let _ = self.store().event(expected.unwrap_or("-"), "enroll-refused", &refusal.to_string());
            Status::permission_denied(refusal.to_string())
        };
        // Check everything that can fail before the token is burnt: the target it names must
        // still exist and the CSR must be good. Only then is it used (once, atomically).
        let named = self.store().peek_token(id).map_err(internal)?;
        let named = named.ok_or_else(|| refuse(TokenRefusal::Unknown))?;
        let (_, target) = self.target(&named)?;
        let ttl = Duration::from_secs(self.inner.settings.agent_cert_ttl_secs);
        let issued = self
            .inner
            .ca
            .issue_for_csr(&r.csr_pem, Subject::Agent { target: &named }, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // (Bind the verdict first: `refuse` takes the store lock again.)
        let verdict = self
            .store()
            .use_token(id, &dockfra_common::sha256_hex(secret.as_bytes()), expected, dockfra_common::now_unix())
            .map_err(internal)?;
        let target_id = verdict.map_err(refuse)?;
        let not_after = (dockfra_common::now_unix() + ttl.as_secs()) as i64;
        let facts = r.facts.as_ref().map(facts_json).unwrap_or_default();
        {
            let store = self.store();
            store.record_cert(&issued.serial_hex, &target_id, not_after).map_err(internal)?;
            store.enroll_agent(&target_id, &issued.serial_hex, not_after, &facts).map_err(internal)?;
            store
                .event(&target_id, "enrolled", &format!("agent enrolled, certificate serial {}", issued.serial_hex))
                .map_err(internal)?;
        }
        tracing::info!(target = %target_id, "agent enrolled");
        Ok(Response::new(proto::EnrollResponse {
            target: target_id,
            cert_pem: issued.cert_pem,
            ca_pem: self.inner.ca_pem.clone(),
            signing_public_key: self.inner.signing.public_key(),
            mode: target.agent.mode.as_str().to_string(),
            listen_port: u32::from(target.agent.port),
            poll_interval_ms: target.agent.poll_interval.as_millis() as u64,
            coordinator_name: identity::COORDINATOR_DNS.to_string(),
        }))
    }
}

// ---------------------------------------------------------------------- Fleet

#[tonic::async_trait]
impl fleet_server::Fleet for Coordinator {
    async fn renew(&self, req: Request<proto::RenewRequest>) -> Result<Response<proto::RenewResponse>, Status> {
        let (target, _) = self.agent_peer(&req)?;
        let ttl = Duration::from_secs(self.inner.settings.agent_cert_ttl_secs);
        let issued = self
            .inner
            .ca
            .issue_for_csr(&req.get_ref().csr_pem, Subject::Agent { target: &target }, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let not_after = (dockfra_common::now_unix() + ttl.as_secs()) as i64;
        let store = self.store();
        store.record_cert(&issued.serial_hex, &target, not_after).map_err(internal)?;
        store.renew_agent(&target, &issued.serial_hex, not_after).map_err(internal)?;
        store
            .event(&target, "renewed", &format!("certificate renewed, serial {}", issued.serial_hex))
            .map_err(internal)?;
        Ok(Response::new(proto::RenewResponse { cert_pem: issued.cert_pem }))
    }

    async fn poll(&self, req: Request<proto::PollRequest>) -> Result<Response<proto::PollResponse>, Status> {
        let (target, _) = self.agent_peer(&req)?;
        let st = req.into_inner().status.unwrap_or_default();
        self.store()
            .touch_agent(&target, Some(&status_json(&st)), st.facts.as_ref().map(facts_json).as_ref())
            .map_err(internal)?;
        let poll_ms = self.target(&target).map(|(_, t)| t.agent.poll_interval.as_millis() as u64).unwrap_or(30_000);
        let mut assignment = None;
        if let Some((d, a)) = self.assignment_for(&target, DESIRED_TTL)? {
            if d.sequence > st.last_desired_sequence {
                let ev = Self::event(
                    &d.deployment_id,
                    "Delivering",
                    format!("{target} polled and picked up the order"),
                    None,
                );
                self.record_event(&target, &ev);
                assignment = Some(a);
            }
        }
        Ok(Response::new(proto::PollResponse { assignment, poll_interval_ms: poll_ms }))
    }

    type FetchBlobsStream = ChunkStream;

    async fn fetch_blobs(&self, req: Request<proto::FetchBlobsRequest>) -> Result<Response<ChunkStream>, Status> {
        let (target, _) = self.agent_peer(&req)?;
        let r = req.into_inner();
        let allowed = self.bundle_digests(&target, &r.bundle_id)?;
        if let Some(bad) = r.digests.iter().find(|d| !allowed.contains(*d)) {
            return Err(Status::permission_denied(format!("blob {bad} is not part of bundle {}", r.bundle_id)));
        }
        let (tx, rx) = mpsc::channel(8);
        let blobs = self.inner.state.blobs();
        tokio::spawn(async move {
            let err_tx = tx.clone();
            if let Err(e) = Self::send_blobs(blobs, r.digests, tx, Ok).await {
                let _ = err_tx.send(Err(chunk_err(e))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report(&self, req: Request<proto::ReportRequest>) -> Result<Response<proto::ReportResponse>, Status> {
        let (target, _) = self.agent_peer(&req)?;
        let r = req.into_inner();
        for ev in &r.events {
            let owned =
                self.store().deployment(&ev.deployment_id).map_err(internal)?.is_some_and(|d| d.target == target);
            if owned {
                self.record_event(&target, ev);
            } else {
                let _ = self.store().event(&target, &ev.phase, &ev.message);
            }
        }
        if let Some(st) = &r.status {
            self.store()
                .touch_agent(&target, Some(&status_json(st)), st.facts.as_ref().map(facts_json).as_ref())
                .map_err(internal)?;
        }
        Ok(Response::new(proto::ReportResponse {}))
    }
}

// ---------------------------------------------------------------------- Admin

impl Coordinator {
    fn status_of(&self, project: &Project, t: &Target) -> Result<serde_json::Value, Status> {
        let store = self.store();
        let agent = store.agent(&t.id).map_err(internal)?;
        let last = store.deployments(Some(&t.id), 1).map_err(internal)?.into_iter().next();
        let app = agent.as_ref().and_then(|a| {
            a.status["apps"]
                .as_array()
                .and_then(|apps| apps.iter().find(|x| x["app"] == project.app.name.as_str()).cloned())
        });
        let app = app.unwrap_or(serde_json::Value::Null);
        Ok(serde_json::json!({
            "target": t.id,
            "platform": t.platform.as_str(),
            "mode": t.agent.mode.as_str(),
            "app": project.app.name,
            "enrolled": agent.is_some(),
            "revoked": agent.as_ref().map(|a| a.revoked).unwrap_or(false),
            "last_seen_unix": agent.as_ref().and_then(|a| a.last_seen_unix),
            "os": agent.as_ref().map(|a| a.facts["os"].clone()).unwrap_or_default(),
            "os_release": agent.as_ref().map(|a| a.facts["os_release"].clone()).unwrap_or_default(),
            "arch": agent.as_ref().map(|a| a.facts["arch"].clone()).unwrap_or_default(),
            "wsl": agent.as_ref().map(|a| a.facts["wsl"].clone()).unwrap_or_default(),
            "os_check": agent.as_ref().map(|a| os_check(t, &a.facts)).unwrap_or_else(|| "unknown (no facts yet)".into()),
            "current_release": app["current_release"],
            "current_version": app["current_version"],
            "current_sequence": app["current_sequence"],
            "previous_release": app["previous_release"],
            "releases": app["releases"],
            "health": if app.is_null() { serde_json::json!("unknown") } else { app["health"].clone() },
            "last_deploy": last,
        }))
    }
}

#[tonic::async_trait]
impl admin_server::Admin for Coordinator {
    async fn create_token(
        &self,
        req: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        Self::admin_peer(&req)?;
        let r = req.into_inner();
        self.target(&r.target)?;
        let mut raw = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| internal("RNG failed"))?;
        let (id, secret) = (hex::encode(&raw[..8]), hex::encode(&raw[8..]));
        let ttl = if r.ttl_ms == 0 { 3_600_000 } else { r.ttl_ms };
        let expires = dockfra_common::now_unix() + ttl.div_ceil(1000);
        let pin = identity::ca_pin(&self.inner.ca_pem).map_err(internal)?;
        let store = self.store();
        store.add_token(&id, &dockfra_common::sha256_hex(secret.as_bytes()), &r.target, expires).map_err(internal)?;
        store.event(&r.target, "token", &format!("join token {id} created, expires at {expires}")).map_err(internal)?;
        Ok(Response::new(proto::CreateTokenResponse {
            token: format!("dkf1.{id}.{secret}.{pin}"),
            expires_unix: expires,
        }))
    }

    async fn targets(&self, req: Request<proto::Empty>) -> Result<Response<proto::JsonReply>, Status> {
        Self::admin_peer(&req)?;
        let project = self.project()?;
        let agents = self.store().agents().map_err(internal)?;
        let list: Vec<_> = project
            .targets
            .iter()
            .map(|t| {
                let a = agents.iter().find(|a| a.target == t.id);
                serde_json::json!({
                    "id": t.id, "platform": t.platform.as_str(), "host": t.host, "port": t.port, "user": t.user,
                    "os": t.os, "labels": t.labels,
                    "mode": t.agent.mode.as_str(), "enrolled": a.is_some(), "revoked": a.map(|a| a.revoked).unwrap_or(false),
                    "last_seen_unix": a.and_then(|a| a.last_seen_unix),
                })
            })
            .collect();
        Ok(json_reply(serde_json::json!(list)))
    }

    async fn agents(&self, req: Request<proto::Empty>) -> Result<Response<proto::JsonReply>, Status> {
        Self::admin_peer(&req)?;
        Ok(json_reply(serde_json::json!(self.store().agents().map_err(internal)?)))
    }

    async fn revoke_agent(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::JsonReply>, Status> {
        Self::admin_peer(&req)?;
        let t = req.into_inner().target;
        let store = self.store();
        if !store.revoke_agent(&t).map_err(internal)? {
            return Err(Status::not_found(format!("no agent enrolled for target {t:?}")));
        }
        store.event(&t, "revoked", "agent revoked by the operator").map_err(internal)?;
        Ok(json_reply(serde_json::json!({"target": t, "revoked": true})))
    }

    async fn status(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::JsonReply>, Status> {
        Self::admin_peer(&req)?;
        let t = req.into_inner().target;
        let project = self.project()?;
        if t.is_empty() {
            let all: Result<Vec<_>, _> = project.targets.iter().map(|x| self.status_of(&project, x)).collect();
            return Ok(json_reply(serde_json::json!(all?)));
        }
        let (_, target) = self.target(&t)?;
        Ok(json_reply(self.status_of(&project, &target)?))
    }

    async fn history(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::JsonReply>, Status> {
        Self::admin_peer(&req)?;
        let t = req.into_inner().target;
        let filter = (!t.is_empty()).then_some(t.as_str());
        Ok(json_reply(serde_json::json!(self.store().deployments(filter, 200).map_err(internal)?)))
    }

    type DeployStream = EventStream;

    async fn deploy(&self, req: Request<proto::DeployRequest>) -> Result<Response<EventStream>, Status> {
        Self::admin_peer(&req)?;
        let r = req.into_inner();
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        let (row, target) = self.build_release(&r.target, version)?;
        let id = self.queue(&target, &row, Action::Deploy, row.sequence, true)?;
        Ok(Response::new(self.deliver(target, id, r.wait, wait_timeout(r.wait_timeout_ms))))
    }

    type RollbackStream = EventStream;

    async fn rollback(&self, req: Request<proto::RollbackRequest>) -> Result<Response<EventStream>, Status> {
        Self::admin_peer(&req)?;
        let r = req.into_inner();
        let (project, target) = self.target(&r.target)?;
        let to = if r.to_release.is_empty() {
            let st = self.status_of(&project, &target)?;
            st["previous_release"].as_str().filter(|s| !s.is_empty()).map(String::from).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "target {:?} reports no previous release to roll back to; name one with --to",
                    r.target
                ))
            })?
        } else {
            r.to_release.clone()
        };
        let row =
            self.store().release_by_name(&r.target, &to).map_err(internal)?.ok_or_else(|| {
                Status::not_found(format!("target {:?} has no release {to:?} (see `history`)", r.target))
            })?;
        let seq = self.store().next_sequence(&r.target).map_err(internal)?;
        let id = self.queue(&target, &row, Action::Rollback, seq, true)?;
        Ok(Response::new(self.deliver(target, id, r.wait, wait_timeout(r.wait_timeout_ms))))
    }

    async fn deploy_test(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::JsonReply>, Status> {
        Self::admin_peer(&req)?;
        let (_, target) = self.target(&req.into_inner().target)?;
        let agent = self.store().agent(&target.id).map_err(internal)?;
        match target.agent.mode {
            Mode::Push => {
                let started = std::time::Instant::now();
                let mut c = self.dial_agent(&target).await?;
                let facts = c.detect(proto::DetectRequest {}).await?.into_inner();
                let rtt = started.elapsed().as_millis() as u64;
                let _ = self.store().touch_agent(&target.id, None, Some(&facts_json(&facts)));
                let f = facts_json(&facts);
                Ok(json_reply(serde_json::json!({
                    "target": target.id, "mode": "push", "reachable": true, "url": Self::agent_url(&target)?,
                    "round_trip_ms": rtt, "os_check": os_check(&target, &f), "facts": f,
                })))
            }
            Mode::Pull => {
                let Some(a) = agent else {
                    return Err(Status::failed_precondition(format!("target {:?} has no enrolled agent", target.id)));
                };
                let age = a.last_seen_unix.map(|s| dockfra_common::now_unix() as i64 - s);
                Ok(json_reply(serde_json::json!({
                    "target": target.id, "mode": "pull", "reachable": age.is_some_and(|s| (s as u64) < 3 * target.agent.poll_interval.as_secs().max(10)),
                    "last_seen_seconds_ago": age, "os_check": os_check(&target, &a.facts), "facts": a.facts,
                })))
            }
        }
    }

    type ExportBundleStream = ChunkStream;

    async fn export_bundle(&self, req: Request<proto::ExportRequest>) -> Result<Response<ChunkStream>, Status> {
        Self::admin_peer(&req)?;
        let r = req.into_inner();
        let (row, target) = self.build_release(&r.target, None)?;
        let id = self.queue(&target, &row, Action::Deploy, row.sequence, false)?;
        let ttl =
            if r.expires_in_ms == 0 { Duration::from_secs(7 * 86400) } else { Duration::from_millis(r.expires_in_ms) };
        let assignment = self.sign(&row, Action::Deploy, row.sequence, &id, ttl);
        let m: Manifest = serde_json::from_slice(&row.manifest).map_err(internal)?;
        let blobs = self.inner.state.blobs();
        let digests = m.digests();
        let out = bundle::write_archive(Vec::new(), &assignment, &digests, |d| {
            let (size, f) = builder::open_blob(&blobs, d)?;
            Ok((size, Box::new(f) as Box<dyn Read>))
        })
        .map_err(internal)?;
        self.store()
            .update_deployment(&id, "exported", "written as an offline bundle", true, out.len() as u64)
            .map_err(internal)?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            let mut offset = 0u64;
            for c in out.chunks(CHUNK) {
                let chunk = proto::BlobChunk { digest: String::new(), offset, data: c.to_vec(), last: false };
                offset += c.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Ok(proto::BlobChunk { digest: String::new(), offset, data: vec![], last: true })).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Convert anything displayable into an anyhow error for callers at the edge.
pub fn status_to_anyhow(s: Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}

/// `deploy-test`'s verdict on the target's `os:` against the agent's facts: `ok`,
/// `not declared`, `unknown (no facts yet)`, or `mismatch: …`.
fn os_check(target: &Target, facts: &serde_json::Value) -> String {
    let Some(declared) = &target.os else { return "not declared".into() };
    let Some(os) = facts["os"].as_str().filter(|s| !s.is_empty()) else { return "unknown (no facts yet)".into() };
    match dockfra_common::config::os_mismatch(declared, os, facts["wsl"] == true) {
        None => "ok".into(),
        Some(why) => format!("mismatch: {why}"),
    }
}
