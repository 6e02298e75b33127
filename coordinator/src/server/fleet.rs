//! Fleet: what agents call over mTLS (their identity verified by the interceptor) — renew
//! their certificate, poll for an order (pull mode), fetch a bundle's blobs, and report
//! events. An order is handed out only while its deployment is open and the agent's floor
//! is below it; one the agent refused, or cannot take, is not sent again.
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use dockfra_common::proto::{self, fleet_server};

use super::{can_take, facts_from_json, facts_json, status_json, AgentPeer, Coordinator, DESIRED_TTL, MAX_ATTEMPTS};
use crate::ca::Subject;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::BlobChunk, Status>> + Send>>;

impl Coordinator {
    /// What to hand a polling agent, if anything (see the module doc). An agent hosting
    /// several apps gets their orders one at a time, the lowest sequence first, so none
    /// overtakes another; an order overtaken before it was ever handed out gets a fresh
    /// sequence above the agent's floor.
    fn order_for(&self, agent: &str, st: &proto::AgentStatus) -> Result<Option<proto::Assignment>, Status> {
        let projects = self.projects()?;
        let mut pending = Vec::new();
        for (_, t) in projects.of_agent(agent) {
            let Some(d) = self.store().desired(&t.id)? else { continue };
            let Some(dep) = self.store().deployment(&d.deployment_id)? else { continue };
            if dep.finished_unix.is_some() {
                continue;
            }
            let floor = st.last_desired_sequence;
            if d.sequence <= floor && !self.may_resequence(&dep, floor) {
                // The agent's floor passed it (it took it, or its own target's export came
                // after it) and it reports no result for it.
                if dep.id != st.in_flight {
                    self.finish(
                        &t.id,
                        &dep.id,
                        "failed",
                        format!("lost: the agent's floor ({floor}) is past this order and it reports no result for it"),
                    );
                }
                continue;
            }
            pending.push((d, dep, t.clone()));
        }
        pending.sort_by_key(|(d, _, _)| d.sequence);
        let Some((d, dep, t)) = pending.into_iter().next() else { return Ok(None) };
        let target = t.id.as_str();
        if let Err(why) = can_take(&t, st) {
            self.finish(target, &dep.id, "refused", why);
            return Ok(None);
        }
        if d.sequence <= st.last_desired_sequence {
            self.resequence(target, &dep.id, agent, st.last_desired_sequence)?;
        }
        let attempt = self.store().bump_attempts(&dep.id)?;
        if attempt > MAX_ATTEMPTS {
            self.finish(
                target,
                &dep.id,
                "failed",
                format!("given up: the order was handed out {MAX_ATTEMPTS} times without a result ({})", dep.reason),
            );
            return Ok(None);
        }
        let Some((_, a)) = self.assignment_for(target, DESIRED_TTL)? else { return Ok(None) };
        let again = if attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
        let by = if agent != target { format!(" (agent {agent})") } else { String::new() };
        let ev = Self::event(
            &d.deployment_id,
            "Delivering",
            format!("{target}{by} polled and picked up the order{again}"),
            None,
        );
        self.record_event(target, &ev);
        Ok(Some(a))
    }

    /// The target an agent's event is about: its deployment's target when that target deploys
    /// through this agent; the agent itself otherwise (an event of no deployment).
    fn event_target(&self, agent: &str, ev: &proto::DeployEvent) -> String {
        if !ev.deployment_id.is_empty() {
            if let Ok(Some(d)) = self.store().deployment(&ev.deployment_id) {
                if self.agent_of(&d.target) == agent {
                    return d.target;
                }
            }
        }
        agent.to_string()
    }

    /// An agent's status, recorded and settled against every target it serves.
    pub(super) fn agent_reported(&self, agent: &str, st: &proto::AgentStatus) -> Result<(), Status> {
        let facts = st.facts.as_ref().map(facts_json);
        self.store().touch_agent(
            agent,
            Some(&status_json(st)),
            facts.as_ref().map(|f| (f, st.facts_digest.as_str())),
        )?;
        let targets: Vec<String> = match self.projects() {
            Ok(p) => p.of_agent(agent).map(|(_, t)| t.id.clone()).collect(),
            Err(_) => vec![agent.to_string()],
        };
        for t in targets {
            self.settle_with_status(&t, st);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl fleet_server::Fleet for Coordinator {
    async fn renew(&self, req: Request<proto::RenewRequest>) -> Result<Response<proto::RenewResponse>, Status> {
        let target = AgentPeer::of(&req)?.target;
        let ttl = Duration::from_secs(self.inner.settings.agent_cert_ttl_secs);
        let issued = self
            .inner
            .ca
            .issue_for_csr(&req.get_ref().csr_pem, Subject::Agent { target: &target }, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let not_after = (dockfra_common::now_unix() + ttl.as_secs()) as i64;
        let store = self.store();
        store.record_cert(&issued.serial_hex, &target, not_after)?;
        store.renew_agent(&target, &issued.serial_hex, not_after)?;
        store.event(&target, "renewed", &format!("certificate renewed, serial {}", issued.serial_hex))?;
        Ok(Response::new(proto::RenewResponse { cert_pem: issued.cert_pem }))
    }

    async fn poll(&self, req: Request<proto::PollRequest>) -> Result<Response<proto::PollResponse>, Status> {
        let agent = AgentPeer::of(&req)?.target;
        let mut st = req.into_inner().status.unwrap_or_default();
        self.agent_reported(&agent, &st)?;
        // Facts left out: those held here stand in when the agent named their digest (the
        // answer tells it whether they matched; if not, it polls again with them).
        let held = self.store().agent(&agent)?.filter(|a| !a.facts_digest.is_empty());
        let counts = &self.inner.polls;
        let mut ask = false;
        let counter = if st.facts.is_some() {
            Some(&counts.sent)
        } else if let Some(a) = held.as_ref().filter(|a| a.facts_digest == st.facts_digest) {
            st.facts = Some(facts_from_json(&a.facts));
            Some(&counts.held)
        } else if !st.facts_digest.is_empty() {
            // No order on facts it does not have: the agent polls again at once, with them.
            ask = true;
            Some(&counts.asked)
        } else {
            None // An agent that has no facts to give (it decides what it can take itself).
        };
        if let Some(n) = counter {
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let facts_digest = held.map(|a| a.facts_digest).unwrap_or_default();
        // The shortest interval of the targets it serves.
        let poll_ms = self
            .projects()
            .ok()
            .and_then(|p| p.of_agent(&agent).map(|(_, t)| t.agent.poll_interval.as_millis() as u64).min())
            .unwrap_or(30_000);
        let assignment = if ask { None } else { self.order_for(&agent, &st)? };
        Ok(Response::new(proto::PollResponse { assignment, poll_interval_ms: poll_ms, facts_digest }))
    }

    type FetchBlobsStream = ChunkStream;

    async fn fetch_blobs(&self, req: Request<proto::FetchBlobsRequest>) -> Result<Response<ChunkStream>, Status> {
        let target = AgentPeer::of(&req)?.target;
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
                tracing::warn!("sending blobs: {e:#}");
                let _ = err_tx.send(Err(Status::unavailable("the coordinator could not read a blob; try again"))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchStream = super::watch::WatchStream;

    async fn watch(&self, req: Request<proto::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let peer = AgentPeer::of(&req)?;
        let keepalive_events = req.get_ref().keepalive_events;
        Ok(Response::new(self.open_watch(peer, keepalive_events)?))
    }

    async fn report(&self, req: Request<proto::ReportRequest>) -> Result<Response<proto::ReportResponse>, Status> {
        let agent = AgentPeer::of(&req)?.target;
        let r = req.into_inner();
        for ev in &r.events {
            self.record_event(&self.event_target(&agent, ev), ev);
        }
        if let Some(st) = &r.status {
            self.agent_reported(&agent, st)?;
        }
        Ok(Response::new(proto::ReportResponse {}))
    }
}
