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
use dockfra_common::config::{Mode, Project, Target};
use dockfra_common::identity;
use dockfra_common::proto::{self, admin_server};

use super::push::EventStream;
use super::{compat, facts_json, Coordinator, OperatorPeer, CHUNK, MAX_EXPORT_TTL};
use crate::builder;
use crate::ca::Subject;
use crate::error::CoordError;
use crate::state::OPERATOR_TTL;

type ChunkStream = Pin<Box<dyn Stream<Item = Result<proto::BlobChunk, Status>> + Send>>;

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
    fn status_of(&self, project: &Project, t: &Target) -> Result<serde_json::Value, Status> {
        let store = self.store();
        let agent = store.agent(&t.id)?;
        let last = store.deployments(Some(&t.id), 1)?.into_iter().next();
        let app = agent.as_ref().and_then(|a| {
            a.status["apps"]
                .as_array()
                .and_then(|apps| apps.iter().find(|x| x["app"] == project.app.name.as_str()).cloned())
        });
        let app = app.unwrap_or(serde_json::Value::Null);
        let status = agent.as_ref().map(|a| a.status.clone()).unwrap_or_default();
        Ok(serde_json::json!({
            "target": t.id,
            "platform": t.platform.as_str(),
            "mode": t.agent.mode.as_str(),
            "app": project.app.name,
            "enrolled": agent.is_some(),
            "revoked": agent.as_ref().map(|a| a.revoked).unwrap_or(false),
            "last_seen_unix": agent.as_ref().and_then(|a| a.last_seen_unix),
            "agent_version": agent.as_ref().map(|a| a.facts["agent_version"].clone()).unwrap_or_default(),
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
            "state_error": status["state_error"],
            "disk": status["disk"],
            "last_deploy": last,
        }))
    }

    /// Refuse an order up front when the agent's last known facts say it cannot take it.
    fn check_agent_can_take(&self, target: &Target) -> Result<(), Status> {
        if let Some(a) = self.store().agent(&target.id)? {
            compat(target, &a.facts)
                .map_err(|why| Status::failed_precondition(format!("refused by the coordinator: {why}")))?;
        }
        Ok(())
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
        self.target(&r.target)?;
        let mut raw = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| CoordError::internal(anyhow::anyhow!("RNG failed")))?;
        let (id, secret) = (hex::encode(&raw[..8]), hex::encode(&raw[8..]));
        let ttl = if r.ttl_ms == 0 { 3_600_000 } else { r.ttl_ms };
        let expires = dockfra_common::now_unix() + ttl.div_ceil(1000);
        let pin = identity::ca_pin(&self.inner.ca_pem).map_err(CoordError::internal)?;
        let store = self.store();
        store.add_token(&id, &dockfra_common::sha256_hex(secret.as_bytes()), &r.target, expires)?;
        store.event_by(&r.target, "token", &format!("join token {id} created, expires at {expires}"), &op.name)?;
        Ok(Response::new(proto::CreateTokenResponse {
            token: format!("dkf1.{id}.{secret}.{pin}"),
            expires_unix: expires,
        }))
    }

    async fn targets(&self, _req: Request<proto::Empty>) -> Result<Response<proto::JsonReply>, Status> {
        let project = self.project()?;
        let store = self.store();
        let mut list = Vec::new();
        for t in &project.targets {
            let a = store.agent(&t.id)?;
            list.push(serde_json::json!({
                "id": t.id, "platform": t.platform.as_str(), "host": t.host, "port": t.port, "user": t.user,
                "os": t.os, "labels": t.labels,
                "mode": t.agent.mode.as_str(), "enrolled": a.is_some(), "revoked": a.as_ref().map(|a| a.revoked).unwrap_or(false),
                "last_seen_unix": a.as_ref().and_then(|a| a.last_seen_unix),
            }));
        }
        Ok(json_reply(serde_json::json!(list)))
    }

    async fn agents(&self, _req: Request<proto::Empty>) -> Result<Response<proto::JsonReply>, Status> {
        Ok(json_reply(serde_json::json!(self.store().agents()?)))
    }

    async fn revoke_agent(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::JsonReply>, Status> {
        let op = OperatorPeer::of(&req)?;
        let t = req.into_inner().target;
        let store = self.store();
        if !store.revoke_agent(&t)? {
            return Err(Status::not_found(format!("no agent enrolled for target {t:?}")));
        }
        store.event_by(&t, "revoked", "agent revoked", &op.name)?;
        Ok(json_reply(serde_json::json!({"target": t, "revoked": true})))
    }

    async fn status(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::JsonReply>, Status> {
        dockfra_common::fault::hit("coord:admin-status");
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
        let t = req.into_inner().target;
        let filter = (!t.is_empty()).then_some(t.as_str());
        Ok(json_reply(serde_json::json!(self.store().deployments(filter, 200)?)))
    }

    type DeployStream = EventStream;

    async fn deploy(&self, req: Request<proto::DeployRequest>) -> Result<Response<EventStream>, Status> {
        let op = OperatorPeer::of(&req)?;
        let r = req.into_inner();
        let (_, target) = self.target(&r.target)?;
        self.check_agent_can_take(&target)?;
        let version = (!r.version.is_empty()).then_some(r.version.as_str());
        let (row, target) = self.build_release(&r.target, version).await?;
        let id = self.queue(&target, &row, Action::Deploy, row.sequence, true, &op.name)?;
        Ok(Response::new(self.deliver(target, id, r.wait, wait_timeout(r.wait_timeout_ms))))
    }

    type RollbackStream = EventStream;

    async fn rollback(&self, req: Request<proto::RollbackRequest>) -> Result<Response<EventStream>, Status> {
        let op = OperatorPeer::of(&req)?;
        let r = req.into_inner();
        let (project, target) = self.target(&r.target)?;
        self.check_agent_can_take(&target)?;
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
        let row = self
            .store()
            .release_by_name(&r.target, &to)?
            .ok_or_else(|| Status::not_found(format!("target {:?} has no release {to:?} (see `history`)", r.target)))?;
        if row.pruned_unix.is_some() {
            return Err(Status::failed_precondition(format!(
                "release {to:?} of {:?} was garbage-collected from the coordinator's store; it cannot be sent again \
                 (`dockfra-agent rollback` on the host can still use a copy the agent kept)",
                r.target
            )));
        }
        let seq = self.store().next_sequence(&r.target)?;
        let id = self.queue(&target, &row, Action::Rollback, seq, true, &op.name)?;
        Ok(Response::new(self.deliver(target, id, r.wait, wait_timeout(r.wait_timeout_ms))))
    }

    async fn deploy_test(&self, req: Request<proto::TargetRequest>) -> Result<Response<proto::JsonReply>, Status> {
        let (_, target) = self.target(&req.into_inner().target)?;
        let agent = self.store().agent(&target.id)?;
        match target.agent.mode {
            Mode::Push => {
                let started = std::time::Instant::now();
                let mut c = self.dial_agent(&target).await?;
                let facts = c.detect(proto::DetectRequest {}).await?.into_inner();
                let rtt = started.elapsed().as_millis() as u64;
                let f = facts_json(&facts);
                let _ = self.store().touch_agent(&target.id, None, Some(&f));
                Ok(json_reply(serde_json::json!({
                    "target": target.id, "mode": "push", "reachable": true, "url": Self::agent_url(&target)?,
                    "round_trip_ms": rtt, "os_check": os_check(&target, &f), "can_take": compat(&target, &f).err().unwrap_or_else(|| "yes".into()),
                    "facts": f,
                })))
            }
            Mode::Pull => {
                let Some(a) = agent else {
                    return Err(Status::failed_precondition(format!("target {:?} has no enrolled agent", target.id)));
                };
                let age = a.last_seen_unix.map(|s| dockfra_common::now_unix() as i64 - s);
                Ok(json_reply(serde_json::json!({
                    "target": target.id, "mode": "pull", "reachable": age.is_some_and(|s| (s as u64) < 3 * target.agent.poll_interval.as_secs().max(10)),
                    "last_seen_seconds_ago": age, "os_check": os_check(&target, &a.facts),
                    "can_take": compat(&target, &a.facts).err().unwrap_or_else(|| "yes".into()), "facts": a.facts,
                })))
            }
        }
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
        let id = self.queue(&target, &row, Action::Deploy, row.sequence, false, &op.name)?;
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
        let events = self
            .store()
            .events(filter, limit)?
            .into_iter()
            .map(|e| proto::Event {
                unix_ms: e.unix_ms.max(0) as u64,
                target: e.target,
                kind: e.kind,
                message: e.message,
                operator: e.operator,
            })
            .collect();
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
