//! The agent's side of the wire: enrollment (the one call made before we hold a
//! certificate, over TLS pinned to the CA hash in the join token), the pull loop, the push
//! server (accepts only the coordinator's certificate), and certificate renewal.
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, Channel, Identity, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

use dockfra_common::identity;
use dockfra_common::proto::{self, agent_server, enrollment_client, fleet_client};

use crate::blobs::BlobWriter;
use crate::executor::{BlobSource, Executor, FetchError};
use crate::runner::Runner;
use crate::state::{AgentConfig, Outcome, StateDir};

/// A fresh ECDSA P-256 key and a CSR for it (the CSR asks for nothing: the coordinator
/// decides every field).
fn key_and_csr() -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), csr))
}

/// `dockfra-agent enroll`.
pub async fn enroll(
    state: &StateDir,
    coordinator: &str,
    token: &str,
    expected: Option<&str>,
    runner: &dyn Runner,
) -> Result<AgentConfig> {
    if state.is_enrolled() {
        bail!(
            "{} already holds an enrolled identity (target {:?}); use another --state-dir or remove it first",
            state.root.display(),
            state.config().map(|c| c.target).unwrap_or_default()
        );
    }
    let url =
        if coordinator.starts_with("https://") { coordinator.to_string() } else { format!("https://{coordinator}") };
    let pin = token.rsplit('.').next().filter(|p| p.len() == 64 && token.starts_with("dkf1."));
    let Some(pin) = pin else { bail!("malformed join token (expected dkf1.<id>.<secret>.<ca-sha256>)") };
    let ca_pem = identity::fetch_pinned_ca(identity::authority(&url), pin).await?;
    let (key_pem, csr) = key_and_csr()?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .domain_name(identity::COORDINATOR_DNS);
    let ch =
        identity::connect(&url, tls, Duration::from_secs(10)).await.with_context(|| format!("cannot reach {url}"))?;
    let facts = crate::facts::detect(runner).await;
    let r = enrollment_client::EnrollmentClient::new(ch)
        .enroll(proto::EnrollRequest {
            token: token.to_string(),
            csr_pem: csr,
            facts: Some(facts),
            expected_target: expected.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("enrollment refused: {}", s.message()))?
        .into_inner();
    if let Some(e) = expected {
        if e != r.target {
            bail!("the coordinator enrolled us as {:?}, not {e:?}", r.target);
        }
    }
    if r.ca_pem.trim() != ca_pem.trim() && identity::ca_pin(&r.ca_pem)? != pin {
        bail!("the coordinator answered with a CA that does not match the token's pin");
    }
    let cfg = AgentConfig {
        target: r.target,
        coordinator: url,
        coordinator_name: r.coordinator_name,
        mode: r.mode,
        listen_port: r.listen_port as u16,
        poll_interval_ms: r.poll_interval_ms,
        cert_issued_unix: dockfra_common::now_unix(),
    };
    crate::state::write(&state.identity("key.pem"), key_pem.as_bytes(), 0o600)?;
    crate::state::write(&state.identity("cert.pem"), r.cert_pem.as_bytes(), 0o644)?;
    crate::state::write(&state.identity("ca.pem"), r.ca_pem.as_bytes(), 0o644)?;
    crate::state::write(&state.identity("signing.pub"), &r.signing_public_key, 0o644)?;
    state.save_config(&cfg)?; // written last: its presence means "enrolled"
    Ok(cfg)
}

/// The TLS settings for the coordinator, with our current certificate.
fn coordinator_tls(state: &StateDir, cfg: &AgentConfig) -> Result<tonic::transport::ClientTlsConfig> {
    Ok(identity::client_tls(
        &state.read_identity("ca.pem")?,
        &state.read_identity("cert.pem")?,
        &state.read_identity("key.pem")?,
        &cfg.coordinator_name,
    ))
}

/// An mTLS channel to the coordinator with our current certificate.
pub async fn coordinator_channel(state: &StateDir, cfg: &AgentConfig) -> Result<Channel> {
    identity::connect(&cfg.coordinator, coordinator_tls(state, cfg)?, Duration::from_secs(10))
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", cfg.coordinator))
}

/// Renew the certificate when two thirds of its life have passed. Returns true if renewed.
pub async fn renew_if_due(state: &StateDir) -> Result<bool> {
    let mut cfg = state.config()?;
    let der = identity::first_cert_der(&state.read_identity("cert.pem")?)?;
    let info = identity::cert_info(&der)?;
    let now = dockfra_common::now_unix() as i64;
    let life = (info.not_after_unix - cfg.cert_issued_unix as i64).max(1);
    if now < cfg.cert_issued_unix as i64 + life * 2 / 3 {
        return Ok(false);
    }
    let ch = coordinator_channel(state, &cfg).await?;
    let (key_pem, csr) = key_and_csr()?;
    let r = fleet_client::FleetClient::new(ch)
        .renew(proto::RenewRequest { csr_pem: csr })
        .await
        .map_err(|s| anyhow::anyhow!("renewal refused: {}", s.message()))?
        .into_inner();
    // Both new files first; then the pair is swapped in. A crash in between is finished by
    // `finish_renewal` at the next start, so the key and certificate never disagree.
    crate::state::write(&state.identity("key.pem.new"), key_pem.as_bytes(), 0o600)?;
    crate::state::write(&state.identity("cert.pem.new"), r.cert_pem.as_bytes(), 0o644)?;
    finish_renewal(state)?;
    cfg.cert_issued_unix = dockfra_common::now_unix();
    state.save_config(&cfg)?;
    tracing::info!("certificate renewed");
    Ok(true)
}

/// Complete a renewal that was interrupted between writing the new key/cert pair and
/// swapping it in. Both `.new` files exist only once both were fully written.
pub fn finish_renewal(state: &StateDir) -> Result<()> {
    let (key_new, cert_new) = (state.identity("key.pem.new"), state.identity("cert.pem.new"));
    if cert_new.is_file() && key_new.is_file() {
        std::fs::rename(&key_new, state.identity("key.pem"))?;
    }
    if cert_new.is_file() && !key_new.is_file() {
        std::fs::rename(&cert_new, state.identity("cert.pem"))?;
        dockfra_common::fsync_dir(&state.root.join("identity"))?;
    }
    // A lone key.pem.new means the certificate never arrived: keep the old pair.
    let _ = std::fs::remove_file(&key_new);
    Ok(())
}

// ---------------------------------------------------------------------- pull

/// Blobs from `Fleet.FetchBlobs`.
pub struct PullSource {
    pub client: fleet_client::FleetClient<Channel>,
}

/// A blob transfer that delivers nothing for this long is given up (and tried again later).
const STALL: Duration = Duration::from_secs(60);

/// A failed call: transport trouble (the order may be tried again) or a refusal.
fn fetch_error(s: Status) -> FetchError {
    use tonic::Code;
    match s.code() {
        Code::Unavailable
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Internal => FetchError::Transport(s.message().to_string()),
        _ => FetchError::Other(s.message().to_string()),
    }
}

#[tonic::async_trait]
impl BlobSource for PullSource {
    async fn fetch(&mut self, bundle_id: &str, w: &mut BlobWriter, digests: Vec<String>) -> Result<(), FetchError> {
        let mut s = self
            .client
            .fetch_blobs(proto::FetchBlobsRequest { bundle_id: bundle_id.to_string(), digests })
            .await
            .map_err(fetch_error)?
            .into_inner();
        loop {
            let next = tokio::time::timeout(STALL, s.next())
                .await
                .map_err(|_| FetchError::Transport(format!("no data for {}s", STALL.as_secs())))?;
            let Some(c) = next else { return Ok(()) };
            let c = c.map_err(fetch_error)?;
            w.chunk(&c.digest, c.offset, &c.data, c.last)?;
        }
    }
}

/// Send the results the coordinator has not acknowledged (the outbox), with our status. A
/// result is dropped from the outbox only once the coordinator took it; it treats a result
/// it already has as a no-op, so sending one twice is harmless.
pub async fn flush_outbox(
    client: &mut fleet_client::FleetClient<Channel>,
    state: &StateDir,
    status: Option<proto::AgentStatus>,
) -> Result<()> {
    let pending = state.outbox();
    if pending.is_empty() && status.is_none() {
        return Ok(());
    }
    let events = pending.iter().map(Outcome::event).collect();
    client
        .report(proto::ReportRequest { events, status })
        .await
        .map_err(|s| anyhow::anyhow!("report refused: {}", s.message()))?;
    state.ack_outbox(&pending.into_iter().map(|o| o.deployment_id).collect::<Vec<_>>())
}

/// How often the agent pings a watch stream whose coordinator sends no keepalive events.
const WATCH_PING: Duration = identity::WATCH_KEEPALIVE;

/// How long a poll (with its outbox) may wait for the coordinator's answer.
const POLL_CALL: Duration = Duration::from_secs(30);

/// What one poll found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// The interval the coordinator asks for.
    pub next_ms: Option<u64>,
    /// An order was carried out: poll again at once (the agent may have more queued).
    pub took_order: bool,
    /// The coordinator holds our facts: the next poll may leave them out.
    pub facts_held: bool,
    /// The poll left the facts out and the coordinator does not hold them: poll again at
    /// once, with them.
    pub resend: bool,
}

/// One poll: report what is unacknowledged, get an assignment, carry it out, report events.
/// `link`: the watch stream's channel while one is held (a poll then costs no handshake); an
/// order's blobs and reports always go over a channel of their own, whose fast keep-alive
/// notices a cut link within seconds. `facts_held`: the last poll's answer said the
/// coordinator holds our facts, so this one sends only their digest.
pub async fn poll_once(
    exec: &Executor,
    state: &StateDir,
    facts: &proto::Facts,
    link: Option<Channel>,
    facts_held: bool,
) -> Result<Polled> {
    let cfg = state.config()?;
    let watched = link.is_some();
    let ch = match link {
        Some(ch) => ch,
        None => coordinator_channel(state, &cfg).await?,
    };
    let mut client = fleet_client::FleetClient::new(ch).max_decoding_message_size(64 << 20);
    let mut status = exec.status(Some(facts.clone())).await;
    let digest = status.facts_digest.clone();
    if facts_held {
        status.facts = None;
    }
    // Bounded: the watch link has no deadline of its own and is pinged only once a minute,
    // so a call on a link that died silently must not wait for that.
    let asked = async {
        flush_outbox(&mut client, state, None).await?;
        client
            .poll(proto::PollRequest { status: Some(status) })
            .await
            .map_err(|s| anyhow::anyhow!("poll refused: {}", s.message()))
    };
    let r = tokio::time::timeout(POLL_CALL, asked)
        .await
        .map_err(|_| anyhow::anyhow!("no answer to the poll in {}s", POLL_CALL.as_secs()))??
        .into_inner();
    let next_ms = (r.poll_interval_ms > 0).then_some(r.poll_interval_ms);
    let held = r.facts_digest == digest;
    let polled = Polled { next_ms, took_order: false, facts_held: held, resend: facts_held && !held };
    // A new agent on trial has reached the coordinator: the upgrade stays, and says so now.
    if crate::upgrade::confirm(state)? {
        flush_outbox(&mut client, state, Some(exec.status(Some(facts.clone())).await)).await?;
    }
    let Some(a) = r.assignment else { return Ok(polled) };
    if watched {
        let ch = coordinator_channel(state, &cfg).await?;
        client = fleet_client::FleetClient::new(ch).max_decoding_message_size(64 << 20);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<proto::DeployEvent>();
    // Forward progress as it happens; the final event goes with the status, below.
    let mut reporter = client.clone();
    let forward = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if ev.r#final {
                return Some(ev);
            }
            let _ = reporter.report(proto::ReportRequest { events: vec![ev], status: None }).await;
        }
        None
    });
    let mut source = PullSource { client: client.clone() };
    let last = exec.execute(&a, &mut source, &tx).await;
    drop(tx);
    let _ = forward.await;
    let status = Some(exec.status(Some(facts.clone())).await);
    if last.r#final {
        // Into the outbox first (fsynced): a report lost on the way is sent again at the next poll.
        state.push_outbox(Outcome::from_event(&last))?;
        flush_outbox(&mut client, state, status).await?;
    } else {
        client
            .report(proto::ReportRequest { events: vec![last], status })
            .await
            .map_err(|s| anyhow::anyhow!("report refused: {}", s.message()))?;
    }
    Ok(Polled { took_order: true, ..polled })
}

/// Random jitter of ±10%.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let f = 0.9 + (u16::from_le_bytes(b) as f64 / u16::MAX as f64) * 0.2;
    d.mul_f64(f)
}

/// How long a watching agent goes between polls when nothing tells it to poll: its status
/// (health, disk, host) still reaches the coordinator, ten times less often than when it
/// polls for orders (at least its poll interval, at most ten minutes unless that is longer).
fn heartbeat(interval: Duration) -> Duration {
    (interval * 10).min(interval.max(Duration::from_secs(600)))
}

/// A task that is stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Poll forever: on schedule with jitter, at once on SIGHUP or when the watch stream says an
/// order is waiting, backing off while the coordinator is unreachable (the current release
/// keeps running meanwhile). While the watch stream is held, polls go over its connection and
/// the schedule is the longer [`heartbeat`].
pub async fn pull_loop(
    exec: Arc<Executor>,
    state: StateDir,
    facts: proto::Facts,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut interval = Duration::from_millis(state.config()?.poll_interval_ms.max(100));
    let (wake_tx, mut wake) = mpsc::channel::<String>(1);
    let watch = Watch { state: state.clone(), link: Default::default(), rewatch: Default::default(), ping: false };
    let link = watch.link.clone();
    let rewatch = watch.rewatch.clone();
    let _watcher = AbortOnDrop(tokio::spawn(watch.run(wake_tx)));
    let held = || link.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut failures = 0u32;
    let mut facts_held = false;
    loop {
        match renew_if_due(&state).await {
            // The stream was opened with the old certificate: open it again with the new one.
            Ok(true) => rewatch.notify_one(),
            Ok(false) => {}
            Err(e) => tracing::warn!("renewal: {e:#}"),
        }
        let link = held();
        let watched = link.is_some();
        let polled = poll_once(&exec, &state, &facts, link, facts_held).await;
        if crate::upgrade::restart_requested() {
            return Ok(());
        }
        let wait = match polled {
            Ok(p) => {
                if failures > 0 {
                    tracing::info!("coordinator reachable again");
                }
                failures = 0;
                if let Some(ms) = p.next_ms {
                    interval = Duration::from_millis(ms.max(100));
                }
                facts_held = p.facts_held;
                if p.took_order || p.resend {
                    Duration::ZERO
                } else if held().is_some() {
                    jitter(heartbeat(interval))
                } else {
                    jitter(interval)
                }
            }
            Err(e) => {
                facts_held = false;
                if watched {
                    // The stream's connection failed us: open a fresh one.
                    rewatch.notify_one();
                }
                failures += 1;
                let backoff = Duration::from_millis(500u64.saturating_mul(1 << failures.min(10)))
                    .min(interval.max(Duration::from_secs(60)));
                tracing::warn!("poll failed ({failures} in a row), retrying in {backoff:?}: {e:#}");
                jitter(backoff)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = hup.recv() => tracing::info!("SIGHUP: polling now"),
            Some(why) = wake.recv() => tracing::debug!("watch: polling now ({why})"),
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// Why a watch stream ended.
enum WatchEnd {
    /// The coordinator will not hold one for us (too old to know Watch, `agent.watch: false`,
    /// revoked): poll, and ask again much later.
    Refused(String),
    /// The connection failed or dropped: try again soon.
    Lost(String),
}

/// The watch stream (see [`pull_loop`]): held while it can be, its channel shared for polls.
/// The coordinator keeps an idle stream alive with keepalive events, and the agent listens:
/// silence past the promised interval (and [`identity::WATCH_GRACE`]) means a dead link. A
/// coordinator that sends none (older) gets the agent's own pings instead (`ping`).
struct Watch {
    state: StateDir,
    link: Arc<std::sync::Mutex<Option<Channel>>>,
    rewatch: Arc<tokio::sync::Notify>,
    ping: bool,
}

impl Watch {
    /// Hold the stream forever, reconnecting with backoff; each event goes to `wake`.
    async fn run(mut self, wake: mpsc::Sender<String>) {
        let mut failures = 0u32;
        loop {
            let since = std::time::Instant::now();
            let ended = self.once(&wake).await;
            *self.link.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if since.elapsed() > Duration::from_secs(60) {
                failures = 0; // it was held a while: this is a new trouble, not the same one
            }
            let wait = match ended {
                Ok(()) => Duration::from_millis(100),
                Err(WatchEnd::Refused(why)) => {
                    tracing::info!(
                        "the coordinator holds no watch stream for us ({why}); polling, asking again in 10 minutes"
                    );
                    Duration::from_secs(600)
                }
                Err(WatchEnd::Lost(why)) => {
                    failures += 1;
                    let backoff =
                        Duration::from_millis(250u64.saturating_mul(1 << failures.min(8))).min(Duration::from_secs(60));
                    tracing::info!("watch stream lost ({why}); polling meanwhile, watching again in {backoff:?}");
                    jitter(backoff)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.rewatch.notified() => {}
            }
        }
    }

    /// One stream, until it ends.
    async fn once(&mut self, wake: &mpsc::Sender<String>) -> Result<(), WatchEnd> {
        use tonic::Code;
        let lost = |e: anyhow::Error| WatchEnd::Lost(format!("{e:#}"));
        let cfg = self.state.config().map_err(lost)?;
        let tls = coordinator_tls(&self.state, &cfg).map_err(lost)?;
        let ch = identity::connect_watch(&cfg.coordinator, tls, Duration::from_secs(10), self.ping)
            .await
            .map_err(|e| WatchEnd::Lost(format!("cannot reach the coordinator at {}: {e}", cfg.coordinator)))?;
        let asked = proto::WatchRequest { keepalive_events: true };
        let mut stream = match fleet_client::FleetClient::new(ch.clone()).watch(asked).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let why = format!("{:?}: {}", s.code(), s.message());
                return Err(match s.code() {
                    Code::Unimplemented | Code::FailedPrecondition | Code::NotFound | Code::PermissionDenied => {
                        WatchEnd::Refused(why)
                    }
                    _ => WatchEnd::Lost(why),
                });
            }
        };
        let greeting = tokio::time::timeout(POLL_CALL, stream.message())
            .await
            .map_err(|_| WatchEnd::Lost("no greeting on the watch stream".into()))?
            .map_err(|s| WatchEnd::Lost(s.message().to_string()))?
            .ok_or_else(|| WatchEnd::Lost("the coordinator ended it".into()))?;
        if greeting.keepalive_ms == 0 && !self.ping {
            // It will not keep the link alive: ping it ourselves, on a connection that does.
            tracing::info!("the coordinator sends no keepalive events: pinging the watch stream every {WATCH_PING:?}");
            self.ping = true;
            return Ok(());
        }
        // (A coordinator upgraded since: the next connection need not ping.)
        self.ping &= greeting.keepalive_ms == 0;
        // Silence for longer than this is a dead link (with our own pings, hyper finds it).
        let limit = if greeting.keepalive_ms > 0 {
            Duration::from_millis(greeting.keepalive_ms) + identity::WATCH_GRACE
        } else {
            Duration::MAX
        };
        let _ = wake.try_send(greeting.reason);
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(ch);
        loop {
            tokio::select! {
                m = tokio::time::timeout(limit, stream.message()) => match m {
                    Ok(Ok(Some(ev))) if ev.reason == "keepalive" => {}
                    // A full queue means a poll is already due: nudges coalesce.
                    Ok(Ok(Some(ev))) => { let _ = wake.try_send(ev.reason); }
                    Ok(Ok(None)) => return Err(WatchEnd::Lost("the coordinator ended it".into())),
                    Ok(Err(s)) => return Err(WatchEnd::Lost(s.message().to_string())),
                    Err(_) => return Err(WatchEnd::Lost(format!("no word from the coordinator in {}s", limit.as_secs()))),
                },
                _ = self.rewatch.notified() => return Ok(()),
            }
        }
    }
}

// ---------------------------------------------------------------------- push

pub struct PushService {
    pub exec: Arc<Executor>,
    pub facts: proto::Facts,
}

fn coordinator_only<T>(req: &Request<T>) -> Result<(), Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
    let first = certs.first().ok_or_else(|| Status::unauthenticated("client certificate required"))?;
    let info = identity::cert_info(first.as_ref()).map_err(|e| Status::unauthenticated(e.to_string()))?;
    if info.has_uri(identity::COORDINATOR_URI) {
        Ok(())
    } else {
        Err(Status::permission_denied("only the coordinator may call this agent"))
    }
}

/// Blobs arriving on the push stream after we asked for them.
struct PushSource {
    inbound: Streaming<proto::CoordinatorMsg>,
    out: mpsc::Sender<Result<proto::AgentMsg, Status>>,
}

#[tonic::async_trait]
impl BlobSource for PushSource {
    async fn fetch(&mut self, _bundle: &str, w: &mut BlobWriter, digests: Vec<String>) -> Result<(), FetchError> {
        self.out
            .send(Ok(proto::AgentMsg { msg: Some(proto::agent_msg::Msg::Need(proto::NeedBlobs { digests })) }))
            .await
            .map_err(|_| FetchError::Transport("the coordinator went away".into()))?;
        while w.remaining() > 0 {
            match self.inbound.next().await {
                Some(Ok(proto::CoordinatorMsg { msg: Some(proto::coordinator_msg::Msg::Chunk(c)) })) => {
                    w.chunk(&c.digest, c.offset, &c.data, c.last)?
                }
                Some(Ok(_)) => return Err(FetchError::Other("unexpected message while receiving blobs".into())),
                Some(Err(s)) => return Err(FetchError::Transport(format!("stream error: {}", s.message()))),
                None => {
                    return Err(FetchError::Transport(format!(
                        "the coordinator closed the stream with {} blob(s) outstanding",
                        w.remaining()
                    )))
                }
            }
        }
        Ok(())
    }
}

type AgentStream = Pin<Box<dyn Stream<Item = Result<proto::AgentMsg, Status>> + Send>>;

#[tonic::async_trait]
impl agent_server::Agent for PushService {
    type DeployStream = AgentStream;

    async fn deploy(&self, req: Request<Streaming<proto::CoordinatorMsg>>) -> Result<Response<AgentStream>, Status> {
        coordinator_only(&req)?;
        let mut inbound = req.into_inner();
        let first = inbound.next().await.ok_or_else(|| Status::invalid_argument("empty deploy stream"))??;
        let Some(proto::coordinator_msg::Msg::Assignment(a)) = first.msg else {
            return Err(Status::invalid_argument("a deploy stream starts with the assignment"));
        };
        let (out, rx) = mpsc::channel(32);
        let exec = self.exec.clone();
        tokio::spawn(async move {
            let (tx, mut evs) = mpsc::unbounded_channel();
            let fwd_out = out.clone();
            let forward = tokio::spawn(async move {
                while let Some(ev) = evs.recv().await {
                    let _ = fwd_out.send(Ok(proto::AgentMsg { msg: Some(proto::agent_msg::Msg::Event(ev)) })).await;
                }
            });
            let mut source = PushSource { inbound, out };
            exec.execute(&a, &mut source, &tx).await;
            drop(tx);
            let _ = forward.await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(&self, req: Request<proto::StatusRequest>) -> Result<Response<proto::AgentStatus>, Status> {
        coordinator_only(&req)?;
        // A new agent on trial has been reached by the coordinator: the upgrade stays (its
        // result is in this very status).
        if let Err(e) = crate::upgrade::confirm(&self.exec.state) {
            tracing::error!("confirming the upgrade: {e:#}");
        }
        Ok(Response::new(self.exec.status(Some(self.facts.clone())).await))
    }

    async fn detect(&self, req: Request<proto::DetectRequest>) -> Result<Response<proto::Facts>, Status> {
        coordinator_only(&req)?;
        Ok(Response::new(crate::facts::detect(self.exec.runner.as_ref()).await))
    }
}

/// Serve the push endpoint until `stop`; restarts itself when the certificate is renewed.
pub async fn push_server(
    exec: Arc<Executor>,
    state: StateDir,
    facts: proto::Facts,
    listen: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    loop {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(state.read_identity("cert.pem")?, state.read_identity("key.pem")?))
            .client_ca_root(Certificate::from_pem(state.read_identity("ca.pem")?));
        let listener =
            tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(addr = %listener.local_addr()?, "push endpoint listening (mTLS, coordinator only)");
        let svc = agent_server::AgentServer::new(PushService { exec: exec.clone(), facts: facts.clone() });
        let (renewed_tx, renewed_rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let renewer = tokio::spawn(async move {
            // Checked at once, then every 5 s: an agent that starts late in its certificate's
            // life (a slow start, a long stop) renews before it runs out.
            loop {
                match renew_if_due(&st).await {
                    Ok(true) => {
                        let _ = renewed_tx.send(());
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!("renewal: {e:#}"),
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let mut stop2 = stop.clone();
        let shutdown = async move {
            tokio::select! {
                _ = stop2.changed() => {}
                _ = renewed_rx => tracing::info!("reloading the push endpoint with the renewed certificate"),
            }
        };
        // One service, no router: the agent must not link axum.
        tonic::transport::Server::builder()
            .tls_config(tls)?
            .initial_stream_window_size(dockfra_common::identity::H2_STREAM_WINDOW)
            .initial_connection_window_size(dockfra_common::identity::H2_CONNECTION_WINDOW)
            .max_frame_size(dockfra_common::identity::H2_MAX_FRAME)
            .serve_with_incoming_shutdown(
                svc.max_decoding_message_size(64 << 20),
                // TCP_NODELAY: blob requests and events are small frames (no 40 ms waits).
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            )
            .await?;
        renewer.abort();
        if *stop.borrow_and_update() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watching_agent_reports_ten_times_less_often_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(heartbeat(s(30)), s(300));
        assert_eq!(heartbeat(Duration::from_millis(300)), s(3));
        // At most ten minutes, unless the poll interval itself is longer.
        assert_eq!(heartbeat(s(90)), s(600));
        assert_eq!(heartbeat(s(3600)), s(3600));
    }
}
