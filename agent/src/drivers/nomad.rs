//! `nomad`: the job the coordinator rendered, registered through Nomad's HTTP API (no `nomad`
//! binary on the agent's host), its deployment followed until it succeeds or fails, canaries
//! promoted once healthy when the job's update block waits for a promotion, health read from
//! the allocations. Token (`X-Nomad-Token`) from the target's `token_file` or the agent's
//! `NOMAD_TOKEN`; TLS with the target's CA and, when asked, a client certificate.
//!
//! A failed deployment fails the release; the executor then re-registers the previous
//! release's job, which Nomad records as a new version equal to the old one (with
//! `auto_revert`, Nomad has usually gone back by itself already, and the re-register changes
//! nothing). A first release that fails is deregistered.
use std::time::{Duration, Instant};

use dockfra_common::bundle::{NomadSpec, PlatformSpec};
use serde_json::Value;

use super::{Driver, DriverError, StepCtx};
use crate::http::{Endpoint, HttpError};

pub struct Nomad;

const POLL: Duration = Duration::from_millis(500);
const CALL: Duration = Duration::from_secs(30);

fn spec<'a>(ctx: &'a StepCtx<'_>) -> Result<&'a NomadSpec, DriverError> {
    match &ctx.manifest.platform {
        PlatformSpec::Nomad(n) => Ok(n),
        other => Err(DriverError::Invalid(format!("the nomad driver got a {} manifest", other.platform()))),
    }
}

fn invalid(m: impl Into<String>) -> DriverError {
    DriverError::Invalid(m.into())
}

/// One target's API: its endpoint, token, region and namespace.
struct Api<'a> {
    n: &'a NomadSpec,
    endpoint: Endpoint,
    token: Option<String>,
}

impl<'a> Api<'a> {
    fn new(n: &'a NomadSpec) -> Result<Self, DriverError> {
        let client = n.client_cert.as_deref().zip(n.client_key.as_deref());
        let endpoint = Endpoint::new(&n.address, n.ca_cert.as_deref(), client, n.tls_server_name.as_deref())
            .map_err(|e| invalid(format!("nomad: {e}")))?;
        let token = match &n.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| invalid(format!("nomad: cannot read the token file {f}: {e}")))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("NOMAD_TOKEN").ok().filter(|t| !t.is_empty()),
        };
        Ok(Api { n, endpoint, token })
    }

    /// `path` with the target's region and namespace.
    fn url(&self, path: &str) -> String {
        let mut q = Vec::new();
        if let Some(r) = &self.n.region {
            q.push(format!("region={r}"));
        }
        if let Some(ns) = &self.n.namespace {
            q.push(format!("namespace={ns}"));
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        if q.is_empty() {
            path.to_string()
        } else {
            format!("{path}{sep}{}", q.join("&"))
        }
    }

    /// A call; a 2xx answer's JSON (`Null` for an empty body), or what Nomad said, plainly.
    async fn call(&self, step: &str, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value, DriverError> {
        let url = self.url(path);
        let headers: Vec<(&str, &str)> = self.token.as_deref().map(|t| ("x-nomad-token", t)).into_iter().collect();
        let (status, bytes) = self.endpoint.request(method, &url, &headers, body, CALL).await.map_err(|e| match e {
            HttpError::Unreachable(m) => {
                invalid(format!("{step}: the Nomad API at {} is unreachable: {m}", self.endpoint.address()))
            }
            HttpError::Failed(m) => invalid(format!("{step}: {m}")),
        })?;
        let text = String::from_utf8_lossy(&bytes);
        match status {
            200..=299 if text.trim().is_empty() => Ok(Value::Null),
            200..=299 => {
                serde_json::from_str(&text).map_err(|e| invalid(format!("{step}: {method} {path}: not JSON: {e}")))
            }
            403 => Err(invalid(format!(
                "{step}: forbidden: Nomad answered 403 {} (the token needs {} in namespace {})",
                text.trim(),
                if method == "GET" { "read-job" } else { "submit-job" },
                self.n.namespace.as_deref().unwrap_or("default")
            ))),
            404 => Err(invalid(format!("{step}: {method} {path}: not found (404 {})", text.trim()))),
            _ => Err(invalid(format!("{step}: {method} {path}: Nomad answered {status}: {}", text.trim()))),
        }
    }

    fn job_path(&self, rest: &str) -> String {
        format!("/v1/job/{}{rest}", self.n.job_id)
    }

    /// The registered job's version, or `None` when it is not registered.
    async fn version(&self) -> Result<Option<u64>, DriverError> {
        match self.call("nomad", "GET", &self.job_path(""), None).await {
            Ok(j) => Ok(j["Version"].as_u64()),
            Err(DriverError::Invalid(m)) if m.contains("(404") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Follow the deployment of job version `version` to its end.
    async fn follow(&self, version: u64) -> Result<(), DriverError> {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(self.n.deploy_timeout_secs);
        let mut promoted = false;
        let mut last = String::from("no deployment yet");
        while Instant::now() < deadline {
            // The job's deployments, newest first: ours is the one of our version (the latest
            // may already be another, e.g. auto_revert's).
            let list = self.call("deployment", "GET", &self.job_path("/deployments"), None).await?;
            let list = list.as_array().cloned().unwrap_or_default();
            let d = list.iter().find(|d| d["JobVersion"].as_u64() == Some(version)).cloned().unwrap_or(Value::Null);
            if d.is_null() {
                // No deployment for this version (yet, or ever: a job without an update
                // block): once the scheduler had a moment, the allocations tell.
                if start.elapsed() > Duration::from_secs(3) {
                    match self.allocations_healthy(Some(version)).await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = e,
                    }
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            let status = d["Status"].as_str().unwrap_or("");
            let why = d["StatusDescription"].as_str().unwrap_or("").to_string();
            last = format!("{status}: {why}");
            match status {
                "successful" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(invalid(format!(
                        "deployment {} of job {} version {version} {status}: {why}",
                        short(&d["ID"]),
                        self.n.job_id
                    )))
                }
                "running" if self.n.promote && !promoted && canaries_healthy(&d) => {
                    let id = d["ID"].as_str().unwrap_or_default().to_string();
                    let body = serde_json::json!({"DeploymentID": id, "All": true});
                    self.call(
                        "promote",
                        "POST",
                        &format!("/v1/deployment/promote/{id}"),
                        Some(body.to_string().into_bytes()),
                    )
                    .await?;
                    tracing::info!("nomad: canaries of deployment {} healthy: promoted", short(&d["ID"]));
                    promoted = true;
                }
                _ => {}
            }
            tokio::time::sleep(POLL).await;
        }
        Err(invalid(format!(
            "deployment of job {} version {version} did not finish within {}s (last: {last})",
            self.n.job_id, self.n.deploy_timeout_secs
        )))
    }

    /// Are the allocations of `version` (or of the latest version) all running and not
    /// unhealthy? Otherwise which are not, and why.
    async fn allocations_healthy(&self, version: Option<u64>) -> Result<(), String> {
        let allocs =
            self.call("health", "GET", &self.job_path("/allocations"), None).await.map_err(|e| e.to_string())?;
        let allocs = allocs.as_array().cloned().unwrap_or_default();
        let latest = version.or_else(|| allocs.iter().filter_map(|a| a["JobVersion"].as_u64()).max());
        let live: Vec<&Value> = allocs
            .iter()
            .filter(|a| a["JobVersion"].as_u64() == latest && a["DesiredStatus"].as_str().unwrap_or("run") == "run")
            .collect();
        if live.is_empty() {
            return Err(format!(
                "no allocation of job {} version {}",
                self.n.job_id,
                latest.map(|v| v.to_string()).unwrap_or("?".into())
            ));
        }
        let bad: Vec<String> = live
            .iter()
            .filter(|a| a["ClientStatus"] != "running" || a["DeploymentStatus"]["Healthy"] == false)
            .map(|a| {
                let health = if a["DeploymentStatus"]["Healthy"] == false { ", unhealthy" } else { "" };
                format!("{} {}{health}", a["Name"].as_str().unwrap_or("?"), a["ClientStatus"].as_str().unwrap_or("?"))
            })
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

/// The first 8 characters of an id, as Nomad's CLI shows them.
fn short(id: &Value) -> String {
    id.as_str().unwrap_or("?").chars().take(8).collect()
}

/// Every group that places canaries has them all placed and healthy, and none is promoted.
fn canaries_healthy(d: &Value) -> bool {
    let Some(groups) = d["TaskGroups"].as_object() else { return false };
    let with: Vec<&Value> = groups.values().filter(|g| g["DesiredCanaries"].as_u64().unwrap_or(0) > 0).collect();
    !with.is_empty()
        && with.iter().all(|g| {
            let want = g["DesiredCanaries"].as_u64().unwrap_or(0);
            g["Promoted"] != true && g["HealthyAllocs"].as_u64().unwrap_or(0) >= want
        })
}

#[tonic::async_trait]
impl Driver for Nomad {
    async fn validate(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let n = spec(ctx)?;
        for f in n.token_file.iter().chain(&n.ca_cert).chain(&n.client_cert).chain(&n.client_key) {
            crate::http::readable(f).map_err(|e| invalid(format!("validate: {e}")))?;
        }
        Api::new(n).map(drop)
    }

    /// The API answers, before `current` moves.
    async fn pre_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let api = Api::new(spec(ctx)?)?;
        let v = api.call("cluster", "GET", "/v1/agent/self", None).await?;
        tracing::info!(
            "nomad: {} (Nomad {}, region {})",
            api.endpoint.address(),
            // An object since Nomad 0.6 ({"Version": "1.9.3", …}), a string before.
            v["config"]["Version"]["Version"].as_str().or(v["config"]["Version"].as_str()).unwrap_or("?"),
            v["config"]["Region"].as_str().unwrap_or("?")
        );
        Ok(())
    }

    async fn apply(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let n = spec(ctx)?;
        let api = Api::new(n)?;
        let job = std::fs::read(ctx.release_dir.join(&n.file))
            .map_err(|e| invalid(format!("register: cannot read {}: {e}", n.file)))?;
        let r = api.call("register", "POST", "/v1/jobs", Some(job)).await?;
        if let Some(w) = r["Warnings"].as_str().filter(|w| !w.is_empty()) {
            tracing::warn!("nomad: register of {}: {w}", n.job_id);
        }
        let version = api
            .version()
            .await?
            .ok_or_else(|| invalid(format!("register: job {} is not there after registering", n.job_id)))?;
        tracing::info!("nomad: job {} version {version} registered (evaluation {})", n.job_id, short(&r["EvalID"]));
        api.follow(version).await
    }

    async fn post_deploy(&self, _ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        Ok(())
    }

    /// A first release that failed: stop the job (its history stays in Nomad).
    async fn teardown(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let api = Api::new(spec(ctx)?)?;
        api.call("deregister", "DELETE", &api.job_path(""), None).await.map(drop)
    }

    async fn health(&self, ctx: &StepCtx<'_>) -> Option<String> {
        let api = Api::new(spec(ctx).ok()?).ok()?;
        Some(match api.allocations_healthy(None).await {
            Ok(()) => "healthy".into(),
            Err(e) if e.contains("unreachable") || e.contains("forbidden") => format!("unknown: {e}"),
            Err(e) => format!("unhealthy: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canaries_are_promoted_only_when_all_are_placed_and_healthy() {
        let d = |healthy: u64, promoted: bool| {
            serde_json::json!({"TaskGroups": {
                "web": {"DesiredCanaries": 2, "HealthyAllocs": healthy, "Promoted": promoted},
                "worker": {"DesiredCanaries": 0, "HealthyAllocs": 0, "Promoted": false}}})
        };
        assert!(!canaries_healthy(&d(1, false)));
        assert!(canaries_healthy(&d(2, false)));
        assert!(!canaries_healthy(&d(2, true)), "promoted already");
        assert!(!canaries_healthy(&serde_json::json!({"TaskGroups": {"web": {"DesiredCanaries": 0}}})), "no canaries");
    }
}
