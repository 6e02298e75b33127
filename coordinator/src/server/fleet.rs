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

use super::{can_take, facts_json, status_json, AgentPeer, Coordinator, DESIRED_TTL, MAX_ATTEMPTS};
use crate::ca::Subject;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::BlobChunk, Status>> + Send>>;

impl Coordinator {
    /// What to hand a polling agent, if anything (see the module doc).
    fn order_for(&self, target: &str, st: &proto::AgentStatus) -> Result<Option<proto::Assignment>, Status> {
        let Some(d) = self.store().desired(target)? else { return Ok(None) };
        let Some(dep) = self.store().deployment(&d.deployment_id)? else { return Ok(None) };
        if dep.finished_unix.is_some() || d.sequence <= st.last_desired_sequence {
            return Ok(None);
        }
        if let Ok((_, t)) = self.target(target) {
            if let Err(why) = can_take(&t, st) {
                self.finish(target, &dep.id, "refused", why);
                return Ok(None);
            }
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
        let ev = Self::event(
            &d.deployment_id,
            "Delivering",
            format!("{target} polled and picked up the order{again}"),
            None,
        );
        self.record_event(target, &ev);
        Ok(Some(a))
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
        let target = AgentPeer::of(&req)?.target;
        let st = req.into_inner().status.unwrap_or_default();
        self.store().touch_agent(&target, Some(&status_json(&st)), st.facts.as_ref().map(facts_json).as_ref())?;
        self.settle_with_status(&target, &st);
        let poll_ms = self.target(&target).map(|(_, t)| t.agent.poll_interval.as_millis() as u64).unwrap_or(30_000);
        let assignment = self.order_for(&target, &st)?;
        Ok(Response::new(proto::PollResponse { assignment, poll_interval_ms: poll_ms }))
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

    async fn report(&self, req: Request<proto::ReportRequest>) -> Result<Response<proto::ReportResponse>, Status> {
        let target = AgentPeer::of(&req)?.target;
        let r = req.into_inner();
        for ev in &r.events {
            self.record_event(&target, ev);
        }
        if let Some(st) = &r.status {
            self.store().touch_agent(&target, Some(&status_json(st)), st.facts.as_ref().map(facts_json).as_ref())?;
            self.settle_with_status(&target, st);
        }
        Ok(Response::new(proto::ReportResponse {}))
    }
}
