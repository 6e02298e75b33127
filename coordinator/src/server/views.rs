//! What operators see: the store's rows and the agents' reports turned into the typed admin
//! replies. The gRPC Admin service returns these messages and the REST API serves the same
//! messages as JSON, so the CLI, the API and the dashboard show one shape.
use dockfra_common::config::{Mode, Project, Target};
use dockfra_common::proto;

use super::{compat, Coordinator};
use crate::error::Result;
use crate::store::{AgentRow, DeploymentRow, EventRow};

/// The states of the fleet view's dot, in the order the counts are shown.
pub const STATES: &[&str] = &["healthy", "deploying", "failed", "unreachable", "never_deployed"];

/// Statuses of a deployment that has not ended.
pub const OPEN_STATUSES: &[&str] = &["queued", "running", "retrying", "exporting"];

pub fn deployment(d: &DeploymentRow) -> proto::Deployment {
    proto::Deployment {
        id: d.id.clone(),
        target: d.target.clone(),
        action: d.action.clone(),
        bundle_id: d.bundle_id.clone(),
        release: d.release.clone(),
        version: d.version.clone(),
        status: d.status.clone(),
        reason: d.reason.clone(),
        bytes: d.bytes,
        started_unix: d.started_unix.max(0) as u64,
        finished_unix: d.finished_unix.unwrap_or(0).max(0) as u64,
        duration_ms: d.duration_ms().unwrap_or(0),
        operator: d.operator.clone(),
        attempts: d.attempts,
        sequence: d.sequence,
        done: d.finished_unix.is_some(),
        fleet: d.fleet.clone(),
    }
}

pub fn event(e: &EventRow) -> proto::Event {
    proto::Event {
        unix_ms: e.unix_ms.max(0) as u64,
        target: e.target.clone(),
        kind: e.kind.clone(),
        message: e.message.clone(),
        operator: e.operator.clone(),
        deployment_id: e.deployment.clone(),
    }
}

pub fn agent_info(
    a: &AgentRow,
    projects: Option<&dockfra_common::config::Projects>,
    watching: bool,
) -> proto::AgentInfo {
    let s = |k: &str| a.facts[k].as_str().unwrap_or_default().to_string();
    proto::AgentInfo {
        targets: projects.map(|p| p.of_agent(&a.target).map(|(_, t)| t.id.clone()).collect()).unwrap_or_default(),
        target: a.target.clone(),
        serial: a.serial.clone(),
        cert_not_after_unix: a.cert_not_after.max(0) as u64,
        enrolled_unix: a.enrolled_unix.max(0) as u64,
        revoked: a.revoked,
        last_seen_unix: a.last_seen_unix.unwrap_or(0).max(0) as u64,
        agent_version: s("agent_version"),
        os: s("os"),
        arch: s("arch"),
        hostname: s("hostname"),
        binary_sha256: s("binary_sha256"),
        watching,
    }
}

/// `deploy-test`'s verdict on the target's `os:` against the agent's facts: `ok`,
/// `not declared`, `unknown (no facts yet)`, or `mismatch: …`.
pub fn os_check(target: &Target, facts: &serde_json::Value) -> String {
    let Some(declared) = &target.os else { return "not declared".into() };
    let Some(os) = facts["os"].as_str().filter(|s| !s.is_empty()) else { return "unknown (no facts yet)".into() };
    match dockfra_common::config::os_mismatch(declared, os, facts["wsl"] == true) {
        None => "ok".into(),
        Some(why) => format!("mismatch: {why}"),
    }
}

/// How long a pull agent may stay silent before the fleet view calls it unreachable.
pub fn pull_silence_limit(target: &Target) -> u64 {
    (3 * target.agent.poll_interval.as_secs()).max(30)
}

/// What the coordinator knows of an agent's link besides its last-seen time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach<'a> {
    Unknown,
    /// A push agent that did not answer its last probe, and why.
    Failed(&'a str),
    /// A pull agent holding its watch stream now.
    Watching,
}

/// The dot and its reason, from what the coordinator knows (see [`STATES`]).
fn state_of(
    target: &Target,
    agent: Option<&AgentRow>,
    last: Option<&DeploymentRow>,
    current_release: &str,
    health: &str,
    reach: Reach<'_>,
    now: u64,
) -> (&'static str, String) {
    if let Some(d) = last.filter(|d| d.finished_unix.is_none() && d.status != "exporting") {
        return ("deploying", format!("{} {} ({})", d.action, d.release, d.status));
    }
    let Some(a) = agent else {
        return match last {
            None => ("never_deployed", "no agent enrolled yet".into()),
            Some(_) => ("unreachable", "no agent enrolled".into()),
        };
    };
    if a.revoked {
        return ("unreachable", "its agent was revoked".into());
    }
    if let Reach::Failed(why) = reach {
        return ("unreachable", why.to_string());
    }
    if target.agent.mode == Mode::Pull && reach != Reach::Watching {
        // A watching agent is connected now. Otherwise enrolling counts as being heard from
        // (a new agent polls right after).
        match a.last_seen_unix.or(Some(a.enrolled_unix).filter(|e| *e > 0)) {
            None => return ("unreachable", "the agent has not polled yet".into()),
            Some(seen) => {
                let ago = now.saturating_sub(seen.max(0) as u64);
                if ago > pull_silence_limit(target) {
                    return (
                        "unreachable",
                        format!("no poll for {ago}s (polls every {}s)", target.agent.poll_interval.as_secs()),
                    );
                }
            }
        }
    }
    if let Some(d) = last.filter(|d| !matches!(d.status.as_str(), "succeeded" | "exported" | "superseded")) {
        if d.reason.starts_with("cannot reach the agent") {
            return ("unreachable", d.reason.clone());
        }
        return ("failed", format!("{} {} {}: {}", d.action, d.release, d.status, d.reason));
    }
    if health == "unhealthy" {
        return ("failed", "the agent reports the app unhealthy".into());
    }
    if current_release.is_empty() {
        return ("never_deployed", "nothing deployed yet".into());
    }
    ("healthy", String::new())
}

impl Coordinator {
    /// One target's status: the config, the agent's facts and report, the last deployment.
    pub(super) fn target_status(&self, project: &Project, t: &Target) -> Result<proto::TargetStatus> {
        let store = self.store();
        let agent = store.agent(t.agent_name())?;
        let last = store.deployments(Some(&t.id), 1)?.into_iter().next();
        let app = agent
            .as_ref()
            .and_then(|a| {
                a.status["apps"]
                    .as_array()
                    .and_then(|apps| apps.iter().find(|x| x["app"] == project.app.name.as_str()).cloned())
            })
            .unwrap_or(serde_json::Value::Null);
        let status = agent.as_ref().map(|a| a.status.clone()).unwrap_or_default();
        let facts = agent.as_ref().map(|a| a.facts.clone()).unwrap_or_default();
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let current_release = s(&app["current_release"]);
        let previous_release = s(&app["previous_release"]);
        let health = if app.is_null() { "unknown".to_string() } else { s(&app["health"]) };
        let version_of = |name: &str| -> Result<Option<crate::store::ReleaseRow>> {
            if name.is_empty() {
                return Ok(None);
            }
            Ok(store.release_by_name(&t.id, name)?)
        };
        let previous_version = version_of(&previous_release)?.map(|r| r.version).unwrap_or_default();
        let mut releases = Vec::new();
        for name in app["releases"].as_array().into_iter().flatten().filter_map(|n| n.as_str()) {
            let row = version_of(name)?;
            releases.push(proto::ReleaseInfo {
                name: name.to_string(),
                version: row.as_ref().map(|r| r.version.clone()).unwrap_or_default(),
                sequence: row
                    .as_ref()
                    .map(|r| r.sequence)
                    .or_else(|| name.split('-').next().and_then(|n| n.parse().ok()))
                    .unwrap_or(0),
                current: name == current_release,
                previous: name == previous_release,
                rollback_ok: row.as_ref().is_some_and(|r| r.pruned_unix.is_none()),
            });
        }
        releases.sort_by(|a, b| b.sequence.cmp(&a.sequence).then_with(|| a.name.cmp(&b.name)));
        drop(store);
        let probe = self.unreachable_reason(t.agent_name());
        let (state, state_reason) = state_of(
            t,
            agent.as_ref(),
            last.as_ref(),
            &current_release,
            &health,
            match probe.as_deref() {
                Some(why) => Reach::Failed(why),
                None if self.watching(t.agent_name()) => Reach::Watching,
                None => Reach::Unknown,
            },
            dockfra_common::now_unix(),
        );
        let disk = status.get("disk").filter(|d| d.is_object()).map(|d| {
            let n = |k: &str| d[k].as_u64().unwrap_or(0);
            proto::DiskUsage {
                blobs_bytes: n("blobs_bytes"),
                blobs: n("blobs") as u32,
                releases_bytes: n("releases_bytes"),
                free_bytes: n("free_bytes"),
                total_bytes: n("total_bytes"),
            }
        });
        Ok(proto::TargetStatus {
            target: t.id.clone(),
            platform: t.platform.as_str().into(),
            mode: t.agent.mode.as_str().into(),
            app: project.app.name.clone(),
            host: t.host.clone().unwrap_or_default(),
            port: t.port.map(u32::from).unwrap_or(0),
            user: t.user.clone().unwrap_or_default(),
            declared_os: t.os.clone().unwrap_or_default(),
            labels: t.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            state: state.into(),
            state_reason,
            enrolled: agent.is_some(),
            revoked: agent.as_ref().is_some_and(|a| a.revoked),
            last_seen_unix: agent.as_ref().and_then(|a| a.last_seen_unix).unwrap_or(0).max(0) as u64,
            agent_version: s(&facts["agent_version"]),
            os: s(&facts["os"]),
            os_release: s(&facts["os_release"]),
            arch: s(&facts["arch"]),
            wsl: facts["wsl"] == true,
            os_check: if agent.is_some() { os_check(t, &facts) } else { "unknown (no facts yet)".into() },
            current_version: s(&app["current_version"]),
            current_sequence: app["current_sequence"].as_u64().unwrap_or(0),
            current_release,
            previous_release,
            previous_version,
            releases,
            health,
            state_error: s(&status["state_error"]),
            disk,
            last_deploy: last.as_ref().map(deployment),
            in_flight: s(&status["in_flight"]),
        })
    }

    /// Every target (or one) whose labels `keep` accepts, with the count of each state. The
    /// others are left out before their status is read.
    pub(super) fn target_list(
        &self,
        only: Option<&str>,
        keep: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
    ) -> Result<proto::TargetList> {
        let projects = self.projects()?;
        let mut targets = Vec::new();
        match only {
            Some(id) => {
                let (project, t) = self.target(id)?;
                if keep(&t.labels) {
                    targets.push(self.target_status(&project, &t)?);
                }
            }
            None => {
                for (project, t) in projects.targets().filter(|(_, t)| keep(&t.labels)) {
                    targets.push(self.target_status(project, t)?);
                }
            }
        }
        let mut counts: std::collections::BTreeMap<String, u32> = STATES.iter().map(|s| (s.to_string(), 0)).collect();
        for t in &targets {
            *counts.entry(t.state.clone()).or_default() += 1;
        }
        Ok(proto::TargetList { targets, counts })
    }

    /// Refuse an order up front when the agent's last known facts say it cannot take it.
    pub(super) fn check_agent_can_take(&self, target: &Target) -> Result<()> {
        if let Some(a) = self.store().agent(target.agent_name())? {
            compat(target, &a.facts)
                .map_err(|why| crate::error::CoordError::Precondition(format!("refused by the coordinator: {why}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(mode: &str) -> Target {
        let yaml =
            format!("targets:\n  edge:\n    platform: ssh_raw\n    agent: {{mode: {mode}, poll_interval: 10s}}\n");
        dockfra_common::config::parse(&yaml, std::path::Path::new("/p/deploy-targets.yaml")).unwrap().targets.remove(0)
    }

    fn agent(last_seen: Option<i64>) -> AgentRow {
        AgentRow {
            target: "edge".into(),
            serial: "01".into(),
            cert_not_after: 0,
            enrolled_unix: 0,
            revoked: false,
            last_seen_unix: last_seen,
            facts: serde_json::json!({}),
            status: serde_json::json!({}),
            facts_digest: String::new(),
        }
    }

    fn dep(status: &str, done: bool, reason: &str) -> DeploymentRow {
        DeploymentRow {
            id: "d".into(),
            target: "edge".into(),
            action: "deploy".into(),
            bundle_id: "b".into(),
            release: "2-abc".into(),
            version: "v2".into(),
            status: status.into(),
            reason: reason.into(),
            bytes: 0,
            started_unix: 1,
            finished_unix: done.then_some(2),
            operator: "alice".into(),
            attempts: 1,
            sequence: 2,
            started_ms: 1000,
            finished_ms: done.then_some(2000),
            fleet: String::new(),
        }
    }

    #[test]
    fn the_dot_says_what_an_operator_needs_first() {
        let push = target("push");
        let pull = target("pull");
        let now = 1000;
        assert_eq!(state_of(&push, None, None, "", "unknown", Reach::Unknown, now).0, "never_deployed");
        let a = agent(Some(990));
        assert_eq!(state_of(&push, Some(&a), None, "", "unknown", Reach::Unknown, now).0, "never_deployed");
        assert_eq!(
            state_of(&push, Some(&a), Some(&dep("running", false, "")), "", "unknown", Reach::Unknown, now).0,
            "deploying"
        );
        assert_eq!(
            state_of(&push, Some(&a), Some(&dep("succeeded", true, "")), "2-abc", "healthy", Reach::Unknown, now).0,
            "healthy"
        );
        let (s, why) = state_of(
            &push,
            Some(&a),
            Some(&dep("failed", true, "health check failed")),
            "1-x",
            "healthy",
            Reach::Unknown,
            now,
        );
        assert_eq!(s, "failed");
        assert!(why.contains("health check failed"), "{why}");
        assert_eq!(state_of(&push, Some(&a), None, "1-x", "unhealthy", Reach::Unknown, now).0, "failed");
        let (s, _) = state_of(
            &push,
            Some(&a),
            Some(&dep("failed", true, "cannot reach the agent of \"edge\"")),
            "",
            "",
            Reach::Unknown,
            now,
        );
        assert_eq!(s, "unreachable");
        // A pull agent silent for longer than three poll intervals (30 s at least).
        assert_eq!(
            state_of(&pull, Some(&agent(Some(900))), None, "1-x", "healthy", Reach::Unknown, now).0,
            "unreachable"
        );
        assert_eq!(state_of(&pull, Some(&agent(Some(980))), None, "1-x", "healthy", Reach::Unknown, now).0, "healthy");
        // … unless it holds its watch stream now (it reports at longer intervals then).
        assert_eq!(state_of(&pull, Some(&agent(Some(900))), None, "1-x", "healthy", Reach::Watching, now).0, "healthy");
        let mut revoked = agent(Some(999));
        revoked.revoked = true;
        assert_eq!(state_of(&push, Some(&revoked), None, "1-x", "healthy", Reach::Unknown, now).0, "unreachable");
        // A push agent that did not answer its last probe.
        let (s, why) = state_of(&push, Some(&a), None, "1-x", "healthy", Reach::Failed("connection refused"), now);
        assert_eq!((s, why.as_str()), ("unreachable", "connection refused"));
    }
}
