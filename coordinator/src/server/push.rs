//! Push delivery: dial the agent of a push target (accepting only the certificate serial the
//! store holds for it), check it can take the order, stream the order and its blobs, and
//! follow its progress. A connection lost mid-deploy is not the end of the deployment: the
//! agent's status says whether it finished (its recent results), is still at it (in flight)
//! or stopped with nothing changed, and then the order is pushed again — only the blobs the
//! agent still lacks travel. After a restart, open push deployments are settled the same way.
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use dockfra_common::config::{self, Mode, Target};
use dockfra_common::identity::{self, PinnedError};
use dockfra_common::proto::{self, agent_client};

use super::{can_take, facts_json, status_json, Coordinator, DESIRED_TTL, MAX_ATTEMPTS};
use crate::error::{CoordError, Result};

pub(super) type EventStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::result::Result<proto::DeployEvent, Status>> + Send>>;
type Client = agent_client::AgentClient<tonic::transport::Channel>;
type Out = mpsc::Sender<std::result::Result<proto::DeployEvent, Status>>;

/// How long a push keeps trying after the connection broke mid-deploy.
const RETRY_WINDOW: Duration = Duration::from_secs(600);

/// What asking the agent about a deployment said.
enum Settled {
    /// The deployment is final (the agent's result, or settled otherwise).
    Final(proto::DeployEvent),
    /// The agent answered: it is not working on it and has no result (push again).
    Open,
    /// The agent could not be asked.
    Unreachable,
}

/// How one push session ended.
enum Session {
    /// The agent's final event.
    Final(proto::DeployEvent),
    /// The connection broke (or the agent's transfer was cut off) before a result.
    Lost(String),
}

impl Coordinator {
    pub(super) fn agent_url(target: &Target) -> Result<String> {
        let host = target.host.as_deref().ok_or_else(|| {
            CoordError::Precondition(format!("target {:?} has no host: cannot dial its push agent", target.id))
        })?;
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        Ok(format!("https://{host}:{}", target.agent.port))
    }

    /// Dial the push agent of `target`, accepting only the certificate the store holds as
    /// its live one. A renewal moves that serial; the agent swaps its listener's certificate
    /// a moment later, so a mismatch is retried briefly with a fresh look at the store.
    pub(super) async fn dial_agent(&self, target: &Target) -> Result<Client> {
        let url = Self::agent_url(target)?;
        let (cert, key) = &self.inner.coord_identity;
        let name = target.agent_name();
        let mut last = String::new();
        for attempt in 0..4 {
            let agent = match self.store().agent(name)? {
                None => {
                    let which = if name == target.id { String::new() } else { format!(" ({name:?})") };
                    return Err(CoordError::Precondition(format!(
                        "target {:?} has no enrolled agent{which} (create a token with `dockfra-coord token create {}`)",
                        target.id, target.id
                    )));
                }
                Some(a) if a.revoked => {
                    return Err(CoordError::Denied(format!(
                        "the agent of {:?} ({name:?}) is revoked: not dialling it (re-enroll with a new token)",
                        target.id
                    )))
                }
                Some(a) => a,
            };
            let dial = identity::connect_pinned(
                &url,
                &self.inner.ca_pem,
                cert,
                key,
                &identity::agent_dns(name),
                &agent.serial,
                Duration::from_secs(5),
            )
            .await;
            match dial {
                Ok(ch) => {
                    // The agent is using its newest certificate: older ones of the target die now.
                    let _ = self.store().note_use(name, &agent.serial);
                    self.note_reach(name, None);
                    return Ok(agent_client::AgentClient::new(ch).max_decoding_message_size(64 << 20));
                }
                Err(e @ PinnedError::Serial { .. }) => {
                    last = e.to_string();
                    if attempt < 3 {
                        tokio::time::sleep(Duration::from_millis(700)).await;
                    }
                }
                Err(PinnedError::Connect(m)) => {
                    let why = format!("cannot reach the agent of {:?} at {url}: {m}", target.id);
                    self.note_reach(name, Some(why.clone()));
                    return Err(CoordError::Unavailable(why));
                }
            }
        }
        let why = format!("refusing the agent of {:?}: {last}", target.id);
        self.note_reach(name, Some(why.clone()));
        Err(CoordError::Denied(why))
    }

    /// Push: deliver the target's desired state, then follow it to a result, re-pushing
    /// after a lost connection (see the module doc).
    async fn push(&self, target: Target, out: Out) {
        let tid = target.id.clone();
        // One push at a time per agent: the orders of the apps it hosts take turns.
        let gate = self.agent_gate(target.agent_name());
        let _turn = gate.lock().await;
        let Ok(Some((d, _))) = self.assignment_for(&tid, DESIRED_TTL) else {
            let _ = out.send(Err(Status::internal("no desired state to push"))).await;
            return;
        };
        let dep = d.deployment_id.clone();
        let started = Instant::now();
        let mut backoff = Duration::from_secs(1);
        let mut pushed = false;
        loop {
            let session = match self.dial_agent(&target).await {
                Ok(client) => self.push_once(&target, &dep, client, &out).await,
                Err(e) if !pushed => Session::Final(self.finish(&tid, &dep, "failed", e.to_string())),
                Err(e) => Session::Lost(e.to_string()),
            };
            pushed = true;
            let why = match session {
                Session::Final(ev) => {
                    let _ = out.send(Ok(ev)).await;
                    return;
                }
                Session::Lost(why) => why,
            };
            // An agent upgrade ends its stream by restarting: follow it, never push it again.
            let upgrade = self.store().deployment(&dep).ok().flatten().is_some_and(|d| d.action == "upgrade");
            if upgrade {
                let ev = self.follow_upgrade(&target, &dep).await;
                let _ = out.send(Ok(ev)).await;
                return;
            }
            // Did the agent finish, is it at it, or did it stop with nothing changed?
            match self.settle_push(&target, &dep).await {
                Settled::Final(ev) => {
                    let _ = out.send(Ok(ev)).await;
                    return;
                }
                _ if started.elapsed() >= RETRY_WINDOW => {
                    let ev = self.finish(
                        &tid,
                        &dep,
                        "failed",
                        format!(
                            "connection to the agent was lost mid-deploy ({why}); gave up after {}",
                            config::format_duration(RETRY_WINDOW)
                        ),
                    );
                    let _ = out.send(Ok(ev)).await;
                    return;
                }
                Settled::Open | Settled::Unreachable => {}
            }
            if self.store().deployment(&dep).ok().flatten().is_none_or(|x| x.finished_unix.is_some()) {
                return;
            }
            let msg =
                format!("connection to the agent was lost mid-deploy ({why}); pushing again in {}s", backoff.as_secs());
            let ev = proto::DeployEvent { retry: true, ..Self::event(&dep, "Interrupted", msg, None) };
            self.record_and_forward(&tid, ev, &out).await;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// One push session: check the agent can take the order, send it, serve its blob
    /// requests, forward its events.
    async fn push_once(&self, target: &Target, dep: &str, mut client: Client, out: &Out) -> Session {
        let tid = &target.id;
        let agent = target.agent_name();
        // The agent's status carries its facts as of its start (what it can take) and whether it
        // can trust its own state; unlike `Detect` it runs no programs.
        let Some(st) = self.refresh_status(agent, &mut client).await else {
            return Session::Lost("the agent did not answer its status".into());
        };
        if let Err(why) = can_take(target, &st) {
            return Session::Final(self.finish(tid, dep, "refused", why));
        }
        // Another app's order on this agent overtook this one before it was ever sent.
        let row = self.store().deployment(dep).ok().flatten();
        if row.is_some_and(|d| self.may_resequence(&d, st.last_desired_sequence)) {
            let _ = self.resequence(tid, dep, agent, st.last_desired_sequence);
        }
        let attempt = self.store().bump_attempts(dep).unwrap_or(0);
        if attempt > MAX_ATTEMPTS {
            return Session::Final(self.finish(tid, dep, "failed", format!("given up after {MAX_ATTEMPTS} pushes")));
        }
        let Ok(Some((d, assignment))) = self.assignment_for(tid, DESIRED_TTL) else {
            return Session::Final(self.finish(tid, dep, "failed", "the order vanished from the store".into()));
        };
        if d.deployment_id != dep {
            return Session::Final(self.finish(tid, dep, "superseded", format!("replaced by {}", d.deployment_id)));
        }
        let (tx, rx) = mpsc::channel::<proto::CoordinatorMsg>(16);
        let _ = tx.send(proto::CoordinatorMsg { msg: Some(proto::coordinator_msg::Msg::Assignment(assignment)) }).await;
        let again = if attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
        self.record_and_forward(tid, Self::event(dep, "Delivering", format!("pushing to {tid}{again}"), None), out)
            .await;
        let mut stream = match client.deploy(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(e) => return Session::Lost(format!("the agent refused the deploy stream: {}", e.message())),
        };
        let allowed = self.bundle_digests(agent, &d.bundle_id).unwrap_or_default();
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
                    if ev.retry {
                        return Session::Lost(ev.message);
                    }
                    if ev.r#final {
                        // Refresh what we know of the agent before the caller hears the result,
                        // so a `status` right after `deploy` shows the new release.
                        self.refresh_status(agent, &mut client).await;
                        self.record_event(tid, &ev);
                        return Session::Final(ev);
                    }
                    self.record_and_forward(tid, ev, out).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => return Session::Lost("the stream ended".into()),
                Err(e) => return Session::Lost(e.message().to_string()),
            }
        }
    }

    pub(super) async fn refresh_status(&self, agent: &str, client: &mut Client) -> Option<proto::AgentStatus> {
        let st = client.status(proto::StatusRequest {}).await.ok()?.into_inner();
        let facts = st.facts.as_ref().map(facts_json);
        let _ = self.store().touch_agent(
            agent,
            Some(&status_json(&st)),
            facts.as_ref().map(|f| (f, st.facts_digest.as_str())),
        );
        Some(st)
    }

    /// After a lost connection: ask the agent whether the deployment ended (it remembers its
    /// result, or it is no longer ours to push), waiting while the agent is still working on
    /// it.
    async fn settle_push(&self, target: &Target, dep: &str) -> Settled {
        let waited = Instant::now();
        loop {
            let Ok(mut client) = self.dial_agent(target).await else { return Settled::Unreachable };
            let Some(st) = self.refresh_status(target.agent_name(), &mut client).await else {
                return Settled::Unreachable;
            };
            if st.in_flight == dep && waited.elapsed() < RETRY_WINDOW {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.settle_with_status(&target.id, &st);
            return self.final_event(dep).map_or(Settled::Open, Settled::Final);
        }
    }

    /// The final event of a deployment that ended, from its row.
    fn final_event(&self, dep: &str) -> Option<proto::DeployEvent> {
        let row = self.store().deployment(dep).ok().flatten()?;
        row.finished_unix?;
        let result = if row.status.is_empty() { "failed".to_string() } else { row.status.clone() };
        let mut ev = Self::event(dep, if result == "succeeded" { "Done" } else { "Failed" }, row.reason, Some(&result));
        ev.release = row.release;
        ev.bytes_received = row.bytes;
        Some(ev)
    }

    /// After a push of an upgrade: the agent restarts into the trial, so the stream ends
    /// without a result. Ask its status (which is what the new agent waits for) until the
    /// new agent or the old one has said how it ended; never push it again.
    async fn follow_upgrade(&self, target: &Target, dep: &str) -> proto::DeployEvent {
        let start = Instant::now();
        loop {
            if let Settled::Final(ev) = self.settle_push(target, dep).await {
                return ev;
            }
            if start.elapsed() > RETRY_WINDOW {
                let why = format!(
                    "the agent restarted for its upgrade and has not said how it ended within {}",
                    config::format_duration(RETRY_WINDOW)
                );
                return self.finish(&target.id, dep, "failed", why);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn record_and_forward(&self, target: &str, ev: proto::DeployEvent, out: &Out) {
        self.record_event(target, &ev);
        let _ = out.send(Ok(ev)).await;
    }

    /// Deliver the queued desired state of `target` and stream progress.
    pub(super) fn deliver(&self, target: Target, deployment_id: String, wait: bool, timeout: Duration) -> EventStream {
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        let mut sub = self.inner.events.subscribe();
        tokio::spawn(async move {
            match target.agent.mode {
                Mode::Push => this.push(target, tx).await,
                Mode::Pull => {
                    let msg = if this.watching(target.agent_name()) {
                        format!("queued for pull target {:?}: its agent watches and was told at once", target.id)
                    } else {
                        format!("queued for pull target {:?}: the agent picks it up at its next poll", target.id)
                    };
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

    /// After a restart: every push deployment still open is settled against its agent — a
    /// result it remembers is recorded, one it is still working on is followed, and one it
    /// never finished is `interrupted` (deploy again). An agent that cannot be reached is
    /// asked again for a while, then the deployment is `interrupted` too.
    pub(super) fn spawn_push_reconcile(&self) {
        let open = self.store().open_deployments(None).unwrap_or_default();
        let Ok(projects) = self.projects() else { return };
        for d in open {
            let Some(target) =
                projects.target(&d.target).map(|(_, t)| t).filter(|t| t.agent.mode == Mode::Push).cloned()
            else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                loop {
                    let reachable = match this.settle_push(&target, &d.id).await {
                        Settled::Final(ev) => {
                            tracing::info!(target = %target.id, deployment = %d.id, "settled after restart: {}", ev.result);
                            return;
                        }
                        Settled::Open => true,
                        Settled::Unreachable => false,
                    };
                    if reachable || start.elapsed() > RETRY_WINDOW {
                        let why = if reachable {
                            "the coordinator restarted while pushing it; the agent is not working on it and has no result for it: deploy again"
                        } else {
                            "the coordinator restarted while pushing it, and the agent has not been reachable since: its status will show what runs"
                        };
                        this.finish(&target.id, &d.id, "interrupted", why.into());
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
    }

    /// Ask every enrolled push agent for its status now and then, so the fleet view's last
    /// seen and `unreachable` say the truth between deploys (pull agents say it themselves by
    /// polling). A few agents are asked at once; each answer or failure is noted.
    pub(super) fn spawn_push_probe(&self) {
        let every = self.inner.settings.push_probe();
        if every.is_zero() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Ok(projects) = this.projects() else { continue };
                // One probe per agent (an agent may serve several targets).
                let mut seen = std::collections::BTreeSet::new();
                let targets: Vec<Target> = projects
                    .targets()
                    .map(|(_, t)| t)
                    .filter(|t| t.agent.mode == Mode::Push && t.host.is_some())
                    .filter(|t| seen.insert(t.agent_name().to_string()))
                    .filter(|t| this.store().agent(t.agent_name()).ok().flatten().is_some_and(|a| !a.revoked))
                    .cloned()
                    .collect();
                futures_util::stream::iter(targets)
                    .for_each_concurrent(PROBE_PARALLEL, |t| {
                        let this = this.clone();
                        async move {
                            let probe = async {
                                let mut c = this.dial_agent(&t).await.map_err(|e| e.to_string())?;
                                this.refresh_status(t.agent_name(), &mut c)
                                    .await
                                    .map(|_| ())
                                    .ok_or_else(|| "the agent did not answer a status call".to_string())
                            };
                            let why = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                                Ok(Ok(())) => None,
                                Ok(Err(e)) => Some(e),
                                Err(_) => Some(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
                            };
                            this.note_reach(t.agent_name(), why);
                        }
                    })
                    .await;
            }
        });
    }

    /// Remember whether a push agent answered its last probe (`why`: it did not).
    pub(super) fn note_reach(&self, agent: &str, why: Option<String>) {
        let target = agent;
        let mut m = self.inner.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        match why {
            None => {
                m.remove(target);
            }
            Some(w) => {
                m.insert(target.to_string(), w);
            }
        }
    }

    /// Why a push agent did not answer its last probe, if it did not.
    pub(super) fn unreachable_reason(&self, agent: &str) -> Option<String> {
        self.inner.unreachable.lock().unwrap_or_else(|p| p.into_inner()).get(agent).cloned()
    }
}

/// Push agents probed at once, and how long one probe may take.
const PROBE_PARALLEL: usize = 16;
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
