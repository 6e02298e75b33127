//! Admin: what operators call (their named credential verified by the interceptor). Every
//! action that changes something is recorded in the audit trail with the operator's name.
use std::io::Read;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use dockfra_common::bundle::{self, Action, Manifest};
use dockfra_common::config::{Mode, Target};
use dockfra_common::identity;
use dockfra_common::proto::{self, admin_server};

use super::push::EventStream;
use super::{compat, facts_from_json, facts_json, views, Coordinator, OperatorPeer, Order, CHUNK, MAX_EXPORT_TTL};
use crate::builder;
use crate::ca::Subject;
use crate::error::CoordError;
use crate::state::OPERATOR_TTL;
use crate::store::HistoryFilter;

/// API tokens start with this (the id and secret follow, dot-separated).
pub const API_TOKEN_PREFIX: &str = "dkfo1.";
/// Default and longest lifetime of an API token.
const API_TOKEN_TTL: Duration = Duration::from_secs(30 * 86400);
const MAX_API_TOKEN_TTL: Duration = Duration::from_secs(365 * 86400);

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::BlobChunk, Status>> + Send>>;

fn wait_timeout(ms: u64) -> Duration {
    if ms == 0 {
        Duration::from_secs(600)
    } else {
        Duration::from_millis(ms)
    }
}

fn operator_info(o: &crate::store::OperatorRow) -> proto::OperatorInfo {
    proto::OperatorInfo {
        name: o.name.clone(),
        serial: o.serial.clone(),
        created_unix: o.created_unix.max(0) as u64,
        created_by: o.created_by.clone(),
        expires_unix: o.not_after.max(0) as u64,
        revoked_unix: o.revoked_unix.unwrap_or(0).max(0) as u64,
    }
}

/// Writes an archive as it is made into a stream of chunks (bounded channel: the archive is
/// never held in memory, whatever its size).
struct ChunkWriter {
    tx: mpsc::Sender<Result<proto::BlobChunk, Status>>,
    buf: Vec<u8>,
    offset: u64,
}

impl ChunkWriter {
    fn send(&mut self, last: bool) -> std::io::Result<()> {
        let data = std::mem::take(&mut self.buf);
        let n = data.len() as u64;
        let chunk = proto::BlobChunk { digest: String::new(), offset: self.offset, data, last };
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("the client went away"))?;
        self.offset += n;
        Ok(())
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send(false)?;
            dockfra_common::fault::hit("coord:export-chunk");
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Coordinator {
    /// Queue a deploy of a fresh build for `target_id` on behalf of `operator`: the deployment
    /// row exists when this returns (the CLI then follows it; the REST API answers 202).
    pub(super) async fn start_deploy(
        &self,
        target_id: &str,
        version: Option<&str>,
        order: &Order<'_>,
    ) -> Result<(Target, String), Status> {
        let (_, target) = self.target(target_id)?;
        let _lock = self.take_target(&target, order)?;
        self.check_agent_can_take(&target)?;
        let (row, target) = self.build_release(target_id, version).await?;
        let id = self.queue(&target, &row, Action::Deploy, row.sequence, true, order)?;
        Ok((target, id))
    }

    /// Queue a rollback of `target_id` to `to` (None: the previous release its agent reports).
    pub(super) fn start_rollback(
        &self,
        target_id: &str,
        to: Option<&str>,
        order: &Order<'_>,
    ) -> Result<(Target, String), Status> {
        let (project, target) = self.target(target_id)?;
        let _lock = self.take_target(&target, order)?;
        self.check_agent_can_take(&target)?;
        let to = match to.filter(|s| !s.is_empty()) {
            Some(t) => t.to_string(),
            None => {
                let st = self.target_status(&project, &target)?;
                Some(st.previous_release).filter(|s| !s.is_empty()).ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "target {target_id:?} reports no previous release to roll back to; name one with --to"
                    ))
                })?
            }
        };
        let row = self
            .store()
            .release_by_name(target_id, &to)?
            .ok_or_else(|| Status::not_found(format!("target {target_id:?} has no release {to:?} (see `history`)")))?;
        if row.pruned_unix.is_some() {
            return Err(Status::failed_precondition(format!(
                "release {to:?} of {target_id:?} was garbage-collected from the coordinator's store; it cannot be sent again \
                 (`dockfra-agent rollback` on the host can still use a copy the agent kept)"
            )));
        }
        let seq = self.store().next_sequence(target.agent_name())?;
        let id = self.queue(&target, &row, Action::Rollback, seq, true, order)?;
        Ok((target, id))
    }

    pub(super) fn deployment_detail(&self, id: &str) -> Result<proto::DeploymentDetail, Status> {
        let store = self.store();
        let d = store.deployment(id)?.ok_or_else(|| Status::not_found(format!("no deployment {id:?}")))?;
        let events = store.deployment_events(id, 2000)?.iter().map(views::event).collect();
        Ok(proto::DeploymentDetail { deployment: Some(views::deployment(&d)), events })
    }

    pub(super) fn history_of(&self, r: &proto::HistoryRequest) -> Result<proto::DeploymentList, Status> {
        let opt = |s: &str| (!s.is_empty()).then_some(s.to_string());
        let (target, result) = (opt(&r.target), opt(&r.result));
        let selected: Option<Vec<String>> = if r.selector.is_empty() {
            None
        } else {
            let sel = dockfra_common::selector::Selector::parse(&r.selector)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Some(
                self.projects()?.targets().filter(|(_, t)| sel.matches(&t.labels)).map(|(_, t)| t.id.clone()).collect(),
            )
        };
        let filter = HistoryFilter {
            target: target.as_deref(),
            targets: selected.as_deref(),
            status: result.as_deref(),
            since_unix: (r.since_unix > 0).then_some(r.since_unix.min(i64::MAX as u64) as i64),
            until_unix: (r.until_unix > 0).then_some(r.until_unix.min(i64::MAX as u64) as i64),
            limit: if r.limit == 0 { 200 } else { r.limit.min(10_000) },
        };
        let rows = self.store().history(&filter)?;
        Ok(proto::DeploymentList { deployments: rows.iter().map(views::deployment).collect() })
    }

    pub(super) fn revoke_agent_by(&self, name: &str, operator: &str) -> Result<proto::AgentInfo, Status> {
        // An agent's name, or the id of a target it serves.
        let known = self.store().agent(name)?.is_some();
        let t = if known { name.to_string() } else { self.agent_of(name) };
        let t = t.as_str();
        let store = self.store();
        if !store.revoke_agent(t)? {
            return Err(Status::not_found(format!("no agent {t:?} enrolled (see `agents`)")));
        }
        store.event_by(t, "revoked", "agent revoked", operator)?;
        self.watchers().drop_agent(t);
        let row = store.agent(t)?.ok_or_else(|| Status::not_found(format!("no agent {t:?} enrolled")))?;
        Ok(views::agent_info(&row, self.projects().ok().as_deref(), self.watching(t)))
    }

    pub(super) async fn deploy_test_of(&self, target_id: &str) -> Result<proto::DeployTestReport, Status> {
        let (_, target) = self.target(target_id)?;
        let agent = self.store().agent(target.agent_name())?;
        match target.agent.mode {
            Mode::Push => {
                let started = std::time::Instant::now();
                let mut c = self.dial_agent(&target).await?;
                let facts = c.detect(proto::DetectRequest {}).await?.into_inner();
                let rtt = started.elapsed().as_millis() as u64;
                let f = facts_json(&facts);
                // Detected afresh: not what the agent started with, so no digest (a pull
                // agent's next poll sends its own).
                let _ = self.store().touch_agent(target.agent_name(), None, Some((&f, "")));
                Ok(proto::DeployTestReport {
                    target: target.id.clone(),
                    mode: "push".into(),
                    reachable: true,
                    url: Self::agent_url(&target)?,
                    round_trip_ms: rtt,
                    last_seen_seconds_ago: 0,
                    os_check: views::os_check(&target, &f),
                    can_take: compat(&target, &f).err().unwrap_or_else(|| "yes".into()),
                    facts: Some(facts),
                })
            }
            Mode::Pull => {
                let Some(a) = agent else {
                    return Err(Status::failed_precondition(format!("target {:?} has no enrolled agent", target.id)));
                };
                let age = a.last_seen_unix.map(|s| (dockfra_common::now_unix() as i64 - s).max(0));
                Ok(proto::DeployTestReport {
                    target: target.id.clone(),
                    mode: "pull".into(),
                    reachable: age.is_some_and(|s| (s as u64) < views::pull_silence_limit(&target)),
                    url: String::new(),
                    round_trip_ms: 0,
                    last_seen_seconds_ago: age.unwrap_or(-1),
                    os_check: views::os_check(&target, &a.facts),
                    can_take: compat(&target, &a.facts).err().unwrap_or_else(|| "yes".into()),
                    facts: Some(facts_from_json(&a.facts)),
                })
            }
        }
    }

    /// A bearer token for the REST API bound to `operator`.
    pub(super) fn create_api_token_for(
        &self,
        operator: &str,
        ttl_secs: u64,
        label: &str,
    ) -> Result<proto::ApiToken, Status> {
        let ttl = if ttl_secs == 0 { API_TOKEN_TTL } else { Duration::from_secs(ttl_secs) };
        if ttl > MAX_API_TOKEN_TTL {
            return Err(Status::invalid_argument("--ttl: an API token may live for 365d at most"));
        }
        let (id, secret) = id_and_secret()?;
        let expires = dockfra_common::now_unix() + ttl.as_secs();
        let store = self.store();
        store.add_api_token(&id, &dockfra_common::sha256_hex(secret.as_bytes()), operator, label, expires as i64)?;
        let what = if label.is_empty() { String::new() } else { format!(" ({label})") };
        store.event_by("-", "api-token", &format!("API token {id}{what} issued, expires at {expires}"), operator)?;
        Ok(proto::ApiToken {
            token: format!("{API_TOKEN_PREFIX}{id}.{secret}"),
            id,
            operator: operator.to_string(),
            expires_unix: expires,
        })
    }
}

/// A fresh token's public id (64 bits, hex) and secret (128 bits, hex) from the system RNG:
/// join tokens and API tokens alike; only the secret's hash is stored.
fn id_and_secret() -> Result<(String, String), CoordError> {
    let mut raw = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
        .map_err(|_| CoordError::internal(anyhow::anyhow!("RNG failed")))?;
    Ok((hex::encode(&raw[..8]), hex::encode(&raw[8..])))
}

fn api_token_info(t: &crate::store::ApiTokenRow) -> proto::ApiTokenInfo {
    proto::ApiTokenInfo {
        id: t.id.clone(),
        operator: t.operator.clone(),
        label: t.label.clone(),
        created_unix: t.created_unix.max(0) as u64,
        expires_unix: t.expires_unix.max(0) as u64,
        revoked_unix: t.revoked_unix.unwrap_or(0).max(0) as u64,
    }
}

#[tonic::async_trait]
impl admin_server::Admin for Coordinator {
    async fn create_token(
        &self,
        req: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreateTokenResponse>, Status> {
        let op = OperatorPeer::of(&req)?;
        let r = req.into_inner();
        // A token names the agent (a target's id stands for the agent it deploys through).
        let (agent, _) = self.resolve_agent(&r.target)?;
        let (id, secret) = id_and_secret()?;
        let ttl = if r.ttl_ms == 0 { 3_600_000 } else { r.ttl_ms };
        let expires = dockfra_common::now_unix() + ttl.div_ceil(1000);
        let pin = identity::ca_pin(&self.inner.ca_pem).map_err(CoordError::internal)?;
        let store = self.store();
        store.add_token(&id, &dockfra_common::sha256_hex(secret.as_bytes()), &agent, expires)?;
        store.event_by(
            &agent,
            "token",
            &format!("join token {id} for agent {agent} created, expires at {expires}"),
            &op.name,
        )?;
        Ok(Response::new(proto::CreateTokenResponse {
            token: format!("dkf1.{id}.{secret}.{pin}"),
            expires_unix: expires,
        }))
    }

    async fn status(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::TargetList>, Status> {
        dockfra_common::fault::hit("coord:admin-status");
        let r = req.into_inner();
        let sel = (!r.selector.is_empty())
            .then(|| dockfra_common::selector::Selector::parse(&r.selector))
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let only = (!r.target.is_empty()).then_some(r.target.as_str());
        Ok(Response::new(self.target_list(only, |l| sel.as_ref().is_none_or(|s| s.matches(l)))?))
    }

    async fn fleet_deploy(
        &self,
        req: Request<proto::FleetDeployRequest>,
    ) -> Result<Response<proto::FleetDeployInfo>, Status> {
        let op = OperatorPeer::of(&req)?;
        Ok(Response::new(self.create_fleet(&req.into_inner(), &op.name)?))
    }

    async fn fleet_deploys(&self, _req: Request<proto::Empty>) -> Result<Response<proto::FleetDeployList>, Status> {
        Ok(Response::new(self.fleet_list(100)?))
    }

    async fn cancel_fleet_deploy(
        &self,
        req: Request<proto::FleetDeployId>,
    ) -> Result<Response<proto::FleetDeployInfo>, Status> {
        let op = OperatorPeer::of(&req)?;
        Ok(Response::new(self.cancel_fleet(&req.into_inner().id, &op.name)?))
    }

    async fn get_fleet_deploy(
        &self,
        req: Request<proto::FleetDeployId>,
    ) -> Result<Response<proto::FleetDeployInfo>, Status> {
        Ok(Response::new(self.fleet_info(&req.into_inner().id)?))
    }

    async fn agents(&self, _req: Request<proto::Empty>) -> Result<Response<proto::AgentList>, Status> {
        let projects = self.projects().ok();
        let agents = self
            .store()
            .agents()?
            .iter()
            .map(|a| views::agent_info(a, projects.as_deref(), self.watching(&a.target)))
            .collect();
        Ok(Response::new(proto::AgentList { agents }))
    }

    async fn revoke_agent(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::AgentInfo>, Status> {
        let op = OperatorPeer::of(&req)?;
        Ok(Response::new(self.revoke_agent_by(&req.into_inner().target, &op.name)?))
    }

    async fn history(&self, req: Request<proto::HistoryRequest>) -> Result<Response<proto::DeploymentList>, Status> {
        Ok(Response::new(self.history_of(&req.into_inner())?))
    }

    async fn get_deployment(
        &self,
        req: Request<proto::DeploymentRequest>,
    ) -> Result<Response<proto::DeploymentDetail>, Status> {
        Ok(Response::new(self.deployment_detail(&req.into_inner().id)?))
    }

    async fn plan(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::DeployPlan>, Status> {
        Ok(Response::new(Coordinator::plan(self, &req.into_inner().target).await?))
    }

    type DeployStream = EventStream;

    async fn deploy(&self, req: Request<proto::DeployRequest>) -> Result<Response<EventStream>, Status> {
        let op = OperatorPeer::of(&req)?;
        let r = req.into_inner();
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        let order = Order { confirm: r.confirm, force: r.force, ..Order::by(&op.name) };
        let (target, id) = self.start_deploy(&r.target, version, &order).await?;
        Ok(Response::new(self.deliver(target, id, r.wait, wait_timeout(r.wait_timeout_ms))))
    }

    type RollbackStream = EventStream;

    async fn rollback(&self, req: Request<proto::RollbackRequest>) -> Result<Response<EventStream>, Status> {
        let op = OperatorPeer::of(&req)?;
        let r = req.into_inner();
        let order = Order { confirm: r.confirm, force: r.force, ..Order::by(&op.name) };
        let (target, id) = self.start_rollback(&r.target, Some(&r.to_release), &order)?;
        Ok(Response::new(self.deliver(target, id, r.wait, wait_timeout(r.wait_timeout_ms))))
    }

    async fn deploy_test(
        &self,
        req: Request<proto::TargetRequest>,
    ) -> Result<Response<proto::DeployTestReport>, Status> {
        Ok(Response::new(self.deploy_test_of(&req.into_inner().target).await?))
    }

    async fn report(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::ReportReply>, Status> {
        let r = req.into_inner();
        let sel = (!r.selector.is_empty())
            .then(|| dockfra_common::selector::Selector::parse(&r.selector))
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let markdown = self.report_markdown(|l| sel.as_ref().is_none_or(|s| s.matches(l)))?;
        Ok(Response::new(proto::ReportReply { markdown }))
    }

    async fn rollback_plan(
        &self,
        req: Request<proto::RollbackPlanRequest>,
    ) -> Result<Response<proto::RollbackPlanList>, Status> {
        let this = self.clone();
        let r = req.into_inner();
        let plans = tokio::task::spawn_blocking(move || this.rollback_plans(&r))
            .await
            .map_err(|e| Status::internal(format!("plan task: {e}")))??;
        Ok(Response::new(plans))
    }

    async fn check(&self, req: Request<proto::CheckRequest>) -> Result<Response<proto::CheckReport>, Status> {
        Ok(Response::new(self.check_of(&req.into_inner()).await?))
    }

    async fn create_api_token(
        &self,
        req: Request<proto::ApiTokenRequest>,
    ) -> Result<Response<proto::ApiToken>, Status> {
        let op = OperatorPeer::of(&req)?;
        let r = req.into_inner();
        Ok(Response::new(self.create_api_token_for(&op.name, r.ttl_secs, &r.label)?))
    }

    async fn api_tokens(&self, _req: Request<proto::Empty>) -> Result<Response<proto::ApiTokenList>, Status> {
        let tokens = self.store().api_tokens()?.iter().map(api_token_info).collect();
        Ok(Response::new(proto::ApiTokenList { tokens }))
    }

    async fn revoke_api_token(&self, req: Request<proto::ApiTokenId>) -> Result<Response<proto::ApiTokenInfo>, Status> {
        let op = OperatorPeer::of(&req)?;
        let id = req.into_inner().id;
        let store = self.store();
        let Some(row) = store.api_token(&id)? else {
            return Err(Status::not_found(format!("no API token {id:?} (see `operator tokens`)")));
        };
        if !store.revoke_api_token(&id)? {
            return Err(Status::failed_precondition(format!("API token {id:?} is already revoked")));
        }
        store.event_by("-", "api-token", &format!("API token {id} of operator {} revoked", row.operator), &op.name)?;
        let row = store.api_token(&id)?.ok_or_else(|| Status::not_found(format!("no API token {id:?}")))?;
        Ok(Response::new(api_token_info(&row)))
    }

    type ExportBundleStream = ChunkStream;

    async fn export_bundle(&self, req: Request<proto::ExportRequest>) -> Result<Response<ChunkStream>, Status> {
        let op = OperatorPeer::of(&req)?;
        let r = req.into_inner();
        let ttl =
            if r.expires_in_ms == 0 { Duration::from_secs(7 * 86400) } else { Duration::from_millis(r.expires_in_ms) };
        if ttl > MAX_EXPORT_TTL {
            return Err(Status::invalid_argument(format!(
                "--expires-in {}: an offline bundle may be valid for 30d at most (agents refuse longer-lived orders)",
                dockfra_common::config::format_duration(ttl)
            )));
        }
        let (_, target) = self.target(&r.target)?;
        self.check_agent_can_take(&target)?;
        let (row, target) = self.build_release(&r.target, None).await?;
        let id = self.queue(&target, &row, Action::Deploy, row.sequence, false, &Order::by(&op.name))?;
        let assignment = self.sign(&row, Action::Deploy, row.sequence, &id, ttl);
        let m = Manifest::parse(&row.manifest).map_err(CoordError::internal)?;
        let blobs = self.inner.state.blobs();
        let (tx, rx) = mpsc::channel(8);
        let this = self.clone();
        let tid = target.id.clone();
        tokio::task::spawn_blocking(move || {
            let w = ChunkWriter { tx: tx.clone(), buf: Vec::new(), offset: 0 };
            let written = bundle::write_archive(w, &assignment, &m.digests(), |d| {
                let (size, f) = builder::open_blob(&blobs, d)?;
                Ok((size, Box::new(f) as Box<dyn Read>))
            })
            .map_err(|e| e.to_string())
            .and_then(|mut w| w.send(true).map(|()| w.offset).map_err(|e| e.to_string()));
            let store = this.store();
            match written {
                Ok(bytes) => {
                    let _ = store.update_deployment(&id, "exported", "written as an offline bundle", true, bytes);
                }
                Err(e) => {
                    tracing::warn!(target = %tid, "export {id}: {e}");
                    let _ = store.update_deployment(&id, "failed", &format!("export interrupted: {e}"), true, 0);
                    let _ = tx.blocking_send(Err(Status::aborted("the export could not be completed")));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn add_operator(
        &self,
        req: Request<proto::AddOperatorRequest>,
    ) -> Result<Response<proto::AddOperatorResponse>, Status> {
        let op = OperatorPeer::of(&req)?;
        let r = req.into_inner();
        if !identity::is_operator_name(&r.name) {
            return Err(Status::invalid_argument(format!(
                "operator name {:?}: 1-64 of a-z 0-9 . _ -, starting with a letter or digit",
                r.name
            )));
        }
        let existing = self.store().operator(&r.name)?;
        if existing.as_ref().is_some_and(|o| o.revoked_unix.is_none()) && !r.replace {
            return Err(Status::already_exists(format!(
                "operator {:?} exists; `operator add {} --replace` issues a new credential and revokes the old one",
                r.name, r.name
            )));
        }
        let ttl = if r.ttl_secs == 0 { OPERATOR_TTL } else { Duration::from_secs(r.ttl_secs) };
        let issued = self
            .inner
            .ca
            .issue_for_csr(&r.csr_pem, Subject::Operator { name: &r.name }, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let not_after = (dockfra_common::now_unix() + ttl.as_secs()) as i64;
        let store = self.store();
        store.put_operator(&r.name, &issued.serial_hex, &op.name, not_after)?;
        if existing.is_some() {
            store.revoke_api_tokens(&r.name)?;
        }
        let what = if existing.is_some() { "re-issued" } else { "added" };
        store.event_by(
            "-",
            "operator",
            &format!("operator {} {what} (serial {})", r.name, issued.serial_hex),
            &op.name,
        )?;
        let row = store.operator(&r.name)?.ok_or_else(|| CoordError::internal(anyhow::anyhow!("operator vanished")))?;
        Ok(Response::new(proto::AddOperatorResponse { cert_pem: issued.cert_pem, operator: Some(operator_info(&row)) }))
    }

    async fn operators(&self, req: Request<proto::Empty>) -> Result<Response<proto::OperatorList>, Status> {
        let op = OperatorPeer::of(&req)?;
        let operators = self.store().operators()?.iter().map(operator_info).collect();
        Ok(Response::new(proto::OperatorList { operators, you: op.name }))
    }

    async fn revoke_operator(
        &self,
        req: Request<proto::OperatorRequest>,
    ) -> Result<Response<proto::OperatorInfo>, Status> {
        let op = OperatorPeer::of(&req)?;
        let name = req.into_inner().name;
        let store = self.store();
        let row = store.operator(&name)?.ok_or_else(|| Status::not_found(format!("no operator {name:?}")))?;
        if row.revoked_unix.is_some() {
            return Err(Status::failed_precondition(format!("operator {name:?} is already revoked")));
        }
        if store.active_operators()? <= 1 {
            return Err(Status::failed_precondition(format!(
                "{name:?} is the last active operator: revoking it would lock everyone out (add another first)"
            )));
        }
        store.revoke_operator(&name)?;
        store.revoke_api_tokens(&name)?;
        store.event_by("-", "operator", &format!("operator {name} revoked"), &op.name)?;
        let row = store.operator(&name)?.ok_or_else(|| Status::not_found(format!("no operator {name:?}")))?;
        Ok(Response::new(operator_info(&row)))
    }

    async fn signing_key(&self, _req: Request<proto::Empty>) -> Result<Response<proto::SigningKeyInfo>, Status> {
        Ok(Response::new(self.signing_key_info()))
    }

    async fn rotate_signing_key(&self, req: Request<proto::Empty>) -> Result<Response<proto::SigningKeyInfo>, Status> {
        let op = OperatorPeer::of(&req)?;
        let (old, _) = self.keys();
        let (key, chain) = self.inner.state.rotate_signing_key().map_err(CoordError::internal)?;
        let new_fp = dockfra_common::sign::fingerprint(&key.public_key());
        {
            let mut k = self.inner.keys.write().unwrap_or_else(|p| p.into_inner());
            k.current = std::sync::Arc::new(key);
            k.rotations = chain;
        }
        let msg = format!(
            "bundle-signing key rotated from {} to {new_fp}: agents move to it at their next order (the old key signs it over)",
            dockfra_common::sign::fingerprint(&old.public_key())
        );
        self.store().event_by("-", "signing-key", &msg, &op.name)?;
        Ok(Response::new(self.signing_key_info()))
    }

    async fn events(&self, req: Request<proto::EventsRequest>) -> Result<Response<proto::EventList>, Status> {
        let r = req.into_inner();
        let filter = (!r.target.is_empty()).then_some(r.target.as_str());
        let limit = if r.limit == 0 { 100 } else { r.limit.min(10_000) };
        let events = self.store().events(filter, limit)?.into_iter().map(|e| views::event(&e)).collect();
        Ok(Response::new(proto::EventList { events }))
    }

    async fn gc(&self, req: Request<proto::GcRequest>) -> Result<Response<proto::GcReport>, Status> {
        let op = OperatorPeer::of(&req)?;
        let dry = req.into_inner().dry_run;
        let this = self.clone();
        let report = tokio::task::spawn_blocking(move || this.collect_garbage(dry))
            .await
            .map_err(|e| CoordError::internal(anyhow::anyhow!("gc task: {e}")))??;
        if !dry {
            let msg = format!(
                "gc: {} release(s) pruned, {} blob(s) removed ({} bytes)",
                report.releases_pruned, report.blobs_removed, report.bytes_freed
            );
            self.store().event_by("-", "gc", &msg, &op.name)?;
        }
        Ok(Response::new(report))
    }
}

impl Coordinator {
    fn signing_key_info(&self) -> proto::SigningKeyInfo {
        let (key, rotations) = self.keys();
        let mut history: Vec<String> = rotations
            .iter()
            .filter_map(|r| serde_json::from_slice::<bundle::KeyRotation>(&r.statement).ok())
            .filter_map(|r| hex::decode(r.old_key).ok())
            .map(|k| dockfra_common::sign::fingerprint(&k))
            .collect();
        let fingerprint = dockfra_common::sign::fingerprint(&key.public_key());
        history.push(fingerprint.clone());
        proto::SigningKeyInfo { fingerprint, rotations: rotations.len() as u32, history }
    }
}
