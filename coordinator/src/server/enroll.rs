//! Enrollment: the one call made without a client certificate. A one-time join token buys
//! an agent a certificate for the target the token names. Everything a caller without a
//! certificate can make the coordinator write is bounded: calls are rate-limited per address
//! (the interceptor), refusal events are rate-limited globally, and their text is sanitized.
use std::time::Duration;

use tonic::{Request, Response, Status};

use dockfra_common::identity;
use dockfra_common::proto::{self, enrollment_server};

use super::{facts_json, Coordinator};
use crate::ca::Subject;
use crate::store::TokenRefusal;

impl Coordinator {
    /// Log a refused enrollment, unless too many were logged lately (then count it, and say
    /// how many were left out in the next one written).
    fn enroll_refused(&self, expected: Option<&str>, why: &str) {
        let Some(suppressed) = self.inner.enroll_limit.refusal_event() else { return };
        // The agent an unauthenticated caller names is only recorded if it is a real one.
        let target = expected.filter(|t| self.resolve_agent(t).is_ok()).unwrap_or("-");
        let more = if suppressed > 0 { format!(" ({suppressed} more refusals not logged)") } else { String::new() };
        let _ = self.store().event(target, "enroll-refused", &format!("{why}{more}"));
    }
}

#[tonic::async_trait]
impl enrollment_server::Enrollment for Coordinator {
    async fn enroll(&self, req: Request<proto::EnrollRequest>) -> Result<Response<proto::EnrollResponse>, Status> {
        let r = req.into_inner();
        let expected = (!r.expected_target.is_empty()).then_some(r.expected_target.as_str());
        let mut parts = r.token.split('.');
        let (Some("dkf1"), Some(id), Some(secret), Some(_pin), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.enroll_refused(expected, "malformed join token");
            return Err(Status::invalid_argument("malformed join token (expected dkf1.<id>.<secret>.<ca-sha256>)"));
        };
        let refuse = |refusal: TokenRefusal| {
            self.enroll_refused(expected, &refusal.to_string());
            Status::permission_denied(refusal.to_string())
        };
        // Check everything that can fail before the token is burnt: the target it names must
        // still exist and the CSR must be good. Only then is it used (once, atomically).
        let named = self.store().peek_token(id)?;
        let named = named.ok_or_else(|| refuse(TokenRefusal::Unknown))?;
        // The agent the token names (a token from before agents had names names a target).
        let (agent, target) = self.resolve_agent(&named)?;
        let ttl = Duration::from_secs(self.inner.settings.agent_cert_ttl_secs);
        let issued = self
            .inner
            .ca
            .issue_for_csr(&r.csr_pem, Subject::Agent { target: &agent }, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The agent may name the target it is for, or its own name.
        let expected_agent = expected.map(|e| self.resolve_agent(e).map(|(a, _)| a).unwrap_or_else(|_| e.to_string()));
        // (Bind the verdict first: `refuse` takes the store lock again.)
        let verdict = self.store().use_token(
            id,
            &dockfra_common::sha256_hex(secret.as_bytes()),
            expected_agent.as_deref(),
            dockfra_common::now_unix(),
        )?;
        verdict.map_err(refuse)?;
        let target_id = agent;
        let not_after = (dockfra_common::now_unix() + ttl.as_secs()) as i64;
        let facts = r.facts.as_ref().map(facts_json).unwrap_or_default();
        {
            let store = self.store();
            store.record_cert(&issued.serial_hex, &target_id, not_after)?;
            store.enroll_agent(&target_id, &issued.serial_hex, not_after, &facts)?;
            store.event(
                &target_id,
                "enrolled",
                &format!("agent enrolled, certificate serial {}", issued.serial_hex),
            )?;
        }
        // Streams under the agent's old certificate end (the new one watches afresh).
        self.watchers().drop_agent(&target_id);
        tracing::info!(target = %target_id, "agent enrolled");
        let (key, _) = self.keys();
        Ok(Response::new(proto::EnrollResponse {
            target: target_id,
            cert_pem: issued.cert_pem,
            ca_pem: self.inner.ca_pem.clone(),
            signing_public_key: key.public_key(),
            mode: target.agent.mode.as_str().to_string(),
            listen_port: u32::from(target.agent.port),
            poll_interval_ms: target.agent.poll_interval.as_millis() as u64,
            coordinator_name: identity::COORDINATOR_DNS.to_string(),
        }))
    }
}
