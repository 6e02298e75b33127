//! `kubernetes`: the objects the coordinator rendered, applied with `kubectl apply
//! --server-side --field-manager dockfra` (the target's kubeconfig, context and namespace),
//! each workload followed with `kubectl rollout status` within the target's timeout, health
//! read from the workloads' readiness.
//!
//! Strategies:
//! - rolling, recreate: one object set; the Deployments' own strategy replaces the pods.
//! - blue-green: two sets, one per slot. The release goes to the slot that is not live (or,
//!   for a release already in a slot — a rollback — to that slot), its workloads are followed
//!   until ready, and only then its Services are applied: the selector switch. The old slot
//!   keeps running, so going back is a switch too, with no pod restarted.
//! - canary: the stable set and the canary's own (`S-canary` Deployments). Each step of the
//!   target's (10 → 50 → 100 by default) gives the canary its share of traffic — through the
//!   canary Ingress's weight annotation when the target has an Ingress, by its share of the
//!   replicas otherwise — and must stay ready (and pass the target's health checks) for the
//!   step's pause. At 100 the stable set takes the release and the canary goes; on a failed
//!   step the canary goes and the stable workloads get their replicas back.
//!
//! A rollback is the executor's re-apply of the previous release: its ConfigMaps and Secrets
//! included (`kubectl rollout undo` only restores a pod template). After a success, objects
//! of this app that no kept slot or this release carries are deleted (never a claim: a
//! PersistentVolumeClaim holds data).
use std::time::Duration;

use dockfra_common::bundle::{KubeObject, KubeSet, KubernetesSpec, PlatformSpec};
use dockfra_common::config::Strategy;
use serde_json::Value;

use super::{Driver, DriverError, StepCtx};
use crate::runner::{CommandSpec, Output, RunError};

pub struct Kubernetes;

const SLOTS: [&str; 2] = ["blue", "green"];
/// What a prune may delete: everything dockfra renders but claims.
const PRUNED: &str = "deployments,statefulsets,daemonsets,services,configmaps,secrets,ingresses";
const WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";

fn spec<'a>(ctx: &'a StepCtx<'_>) -> Result<&'a KubernetesSpec, DriverError> {
    match &ctx.manifest.platform {
        PlatformSpec::Kubernetes(k) => Ok(k),
        other => Err(DriverError::Invalid(format!("the kubernetes driver got a {} manifest", other.platform()))),
    }
}

/// kubectl for one target: its kubeconfig, context and namespace on every call.
struct Kubectl<'a> {
    ctx: &'a StepCtx<'a>,
    k: &'a KubernetesSpec,
}

impl<'a> Kubectl<'a> {
    fn new(ctx: &'a StepCtx<'a>) -> Result<Self, DriverError> {
        Ok(Kubectl { ctx, k: spec(ctx)? })
    }

    fn command(&self, args: &[&str], timeout: Duration) -> CommandSpec {
        let mut c = CommandSpec::new("kubectl", &[]).cwd(&self.ctx.release_dir).timeout(timeout);
        if let Some(k) = &self.k.kubeconfig {
            c = c.arg(format!("--kubeconfig={k}"));
        }
        if let Some(x) = &self.k.context {
            c = c.arg(format!("--context={x}"));
        }
        c = c.arg(format!("--namespace={}", self.k.namespace));
        for a in args {
            c = c.arg(*a);
        }
        c
    }

    /// Run kubectl; a failure is an error that says what went wrong in the cluster's words.
    async fn run(&self, step: &'static str, args: &[&str], timeout: Duration) -> Result<Output, DriverError> {
        let cmd = self.command(args, timeout);
        let out = self.ctx.runner.run(&cmd).await.map_err(|source| missing(step, source))?;
        if !out.success() {
            return Err(DriverError::Invalid(explain(step, &self.k.namespace, &cmd.display(), &out)));
        }
        Ok(out)
    }

    /// Short calls (get, version, scale, annotate, delete).
    async fn quick(&self, step: &'static str, args: &[&str]) -> Result<Output, DriverError> {
        let mut a = vec!["--request-timeout=30s"];
        a.extend_from_slice(args);
        self.run(step, &a, Duration::from_secs(60)).await
    }

    /// Server-side apply of these objects, in their order.
    async fn apply(&self, objects: &[&KubeObject]) -> Result<(), DriverError> {
        if objects.is_empty() {
            return Ok(());
        }
        let mut args = vec!["apply", "--server-side", "--field-manager=dockfra", "--force-conflicts"];
        for o in objects {
            args.extend(["-f", o.file.as_str()]);
        }
        self.quick("kubectl apply", &args).await.map(drop)
    }

    /// Follow each workload until its rollout is done, within the target's timeout.
    async fn rollout(&self, objects: &[&KubeObject]) -> Result<(), DriverError> {
        let t = self.k.rollout_timeout_secs;
        let timeout = format!("--timeout={t}s");
        for o in objects.iter().filter(|o| o.is_workload()) {
            let what = format!("{}/{}", o.kind.to_ascii_lowercase(), o.name);
            self.run("rollout status", &["rollout", "status", &what, &timeout], Duration::from_secs(t + 30)).await?;
        }
        Ok(())
    }

    /// A JSON answer of `kubectl get … -o json`; `None` when the object does not exist.
    async fn get(&self, what: &[&str]) -> Result<Option<Value>, DriverError> {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend(["-o", "json"]);
        match self.quick("kubectl get", &args).await {
            Ok(out) => Ok(serde_json::from_str(&out.stdout).ok()),
            Err(DriverError::Invalid(m)) if m.contains("(NotFound)") => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, objects: &[&KubeObject]) -> Result<(), DriverError> {
        let mut args = vec!["delete", "--ignore-not-found", "--wait=false"];
        let names: Vec<String> = objects
            .iter()
            .filter(|o| o.kind != "PersistentVolumeClaim")
            .map(|o| format!("{}/{}", o.kind.to_ascii_lowercase(), o.name))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        args.extend(names.iter().map(String::as_str));
        self.quick("kubectl delete", &args).await.map(drop)
    }

    async fn scale(&self, o: &KubeObject, replicas: u32) -> Result<(), DriverError> {
        let what = format!("{}/{}", o.kind.to_ascii_lowercase(), o.name);
        self.quick("kubectl scale", &["scale", &what, &format!("--replicas={replicas}")]).await.map(drop)
    }

    fn selector(&self, release: Option<&str>) -> String {
        let mut s = format!("app.kubernetes.io/part-of={},app.kubernetes.io/managed-by=dockfra", self.k.app);
        if let Some(r) = release {
            s.push_str(&format!(",dockfra.dev/release={r}"));
        }
        s
    }

    /// After a success: delete this app's objects that neither this release nor a kept
    /// blue-green slot carries.
    async fn prune(&self) -> Result<(), DriverError> {
        let mut sel = format!("{},dockfra.dev/release!={}", self.selector(None), self.k.release);
        if self.k.strategy == Strategy::BlueGreen {
            sel.push_str(",!dockfra.dev/slot");
        }
        self.quick("prune", &["delete", PRUNED, "-l", &sel, "--ignore-not-found", "--wait=false"]).await.map(drop)
    }
}

/// kubectl itself is missing (or cannot be started).
fn missing(step: &'static str, source: RunError) -> DriverError {
    match source {
        RunError::NotFound { .. } => DriverError::Invalid(format!(
            "{step}: kubectl is not installed on this host (or not on the agent's PATH): install kubectl of your cluster's minor version"
        )),
        source => DriverError::Run { step, source },
    }
}

/// The cluster's answer, said plainly: unreachable, forbidden, a missing namespace, a failed
/// or unfinished rollout — each with kubectl's own words.
fn explain(step: &str, namespace: &str, command: &str, out: &Output) -> String {
    let text = if out.stderr.trim().is_empty() { out.stdout.trim() } else { out.stderr.trim() };
    let first = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let lower = text.to_ascii_lowercase();
    if lower.contains("the connection to the server") || lower.contains("unable to connect to the server") {
        format!("{step}: the cluster is unreachable: {first}")
    } else if lower.contains("(forbidden)") {
        format!("{step}: forbidden in namespace {namespace}: {first} (grant the kubeconfig's user this right there)")
    } else if lower.contains("(notfound): namespaces") {
        format!(
            "{step}: namespace {namespace} does not exist: {first} (create it: kubectl create namespace {namespace})"
        )
    } else if lower.contains("exceeded its progress deadline") {
        format!("{step}: the rollout failed: {first}")
    } else if lower.contains("timed out waiting for the condition") {
        format!("{step}: the rollout did not finish in time: {first}")
    } else if lower.contains("(unauthorized)") || lower.contains("must be logged in") {
        format!("{step}: the cluster refused the kubeconfig's credentials: {first}")
    } else {
        format!("{step}: `{command}` {}: {first}", dockfra_common::runner::exit_text(out.code))
    }
}

fn objects(set: &KubeSet, f: impl Fn(&KubeObject) -> bool) -> Vec<&KubeObject> {
    set.objects.iter().filter(|o| f(o)).collect()
}

fn set<'s>(k: &'s KubernetesSpec, name: &str) -> Result<&'s KubeSet, DriverError> {
    k.set(name).ok_or_else(|| DriverError::Invalid(format!("the release has no {name} object set")))
}

/// Is every workload in a `get -o json` answer ready, and if not, which is not and why.
fn readiness(list: &Value) -> Result<(), String> {
    let items = list["items"].as_array().cloned().unwrap_or_else(|| vec![list.clone()]);
    let mut waiting = Vec::new();
    for it in &items {
        let name = it["metadata"]["name"].as_str().unwrap_or("?");
        let st = &it["status"];
        let (want, ready) = match it["kind"].as_str() {
            Some("DaemonSet") => {
                (st["desiredNumberScheduled"].as_u64().unwrap_or(0), st["numberReady"].as_u64().unwrap_or(0))
            }
            _ => (it["spec"]["replicas"].as_u64().unwrap_or(1), st["readyReplicas"].as_u64().unwrap_or(0)),
        };
        let stale = st["observedGeneration"].as_u64().unwrap_or(0) < it["metadata"]["generation"].as_u64().unwrap_or(0);
        if ready < want || stale {
            let why = st["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["status"] == "False"))
                .and_then(|c| c["reason"].as_str())
                .map(|r| format!(", {r}"))
                .unwrap_or_default();
            waiting.push(format!("{name} {ready}/{want} ready{why}"));
        }
    }
    if waiting.is_empty() {
        Ok(())
    } else {
        Err(waiting.join("; "))
    }
}

impl Kubectl<'_> {
    async fn rolling(&self) -> Result<(), DriverError> {
        let s = set(self.k, "stable")?;
        let all = objects(s, |_| true);
        self.apply(&all).await?;
        self.rollout(&all).await?;
        self.prune().await
    }

    /// The slot the Services select now, if they exist.
    async fn live_slot(&self, s: &KubeSet) -> Result<Option<String>, DriverError> {
        let Some(svc) = s.objects.iter().find(|o| o.kind == "Service") else { return Ok(None) };
        let v = self.get(&["service", &svc.name]).await?;
        Ok(v.and_then(|v| v["spec"]["selector"]["dockfra.dev/slot"].as_str().map(String::from)))
    }

    /// The slot whose workloads already run this release (a rollback goes back there).
    async fn slot_of_release(&self) -> Result<Option<String>, DriverError> {
        let sel = self.selector(Some(&self.k.release));
        let v = self.get(&["deployments,statefulsets", "-l", &sel]).await?;
        Ok(v.and_then(|v| {
            v["items"]
                .as_array()?
                .iter()
                .find_map(|i| i["metadata"]["labels"]["dockfra.dev/slot"].as_str().map(String::from))
        }))
    }

    async fn blue_green(&self) -> Result<(), DriverError> {
        let any = set(self.k, SLOTS[0])?;
        let live = self.live_slot(any).await?;
        let slot = match self.slot_of_release().await? {
            Some(s) if SLOTS.contains(&s.as_str()) => s,
            _ => match live.as_deref() {
                Some(l) if l == SLOTS[0] => SLOTS[1].to_string(),
                Some(_) => SLOTS[0].to_string(),
                None => SLOTS[0].to_string(),
            },
        };
        let s = set(self.k, &slot)?;
        let workloads = objects(s, |o| !o.is_route());
        self.apply(&workloads).await?;
        self.rollout(&workloads).await?;
        // Ready: switch the Services (and the Ingress) to this slot.
        self.apply(&objects(s, KubeObject::is_route)).await?;
        tracing::info!(namespace = %self.k.namespace, "blue-green: traffic switched to slot {slot} (was {})", live.as_deref().unwrap_or("none"));
        self.prune().await
    }

    async fn canary(&self) -> Result<(), DriverError> {
        let stable = set(self.k, "stable")?;
        let canary = set(self.k, "canary")?;
        let stable_workloads = objects(stable, KubeObject::is_workload);
        // First release, or the stable track already runs this one (a rollback): no canary.
        let mut runs_this = true;
        let mut exists = true;
        for o in &stable_workloads {
            match self.get(&[&o.kind.to_ascii_lowercase(), &o.name]).await? {
                None => exists = false,
                Some(v) => {
                    runs_this &= v["metadata"]["labels"]["dockfra.dev/release"].as_str() == Some(&self.k.release)
                }
            }
        }
        if !exists || runs_this {
            self.delete(&objects(canary, |_| true)).await?;
            return self.rolling().await;
        }
        let steps: Vec<u8> = self.k.canary_steps.iter().copied().filter(|p| *p < 100).collect();
        for pct in steps {
            if let Err(e) = self.canary_step(stable, canary, pct).await {
                self.abort_canary(stable, canary).await;
                return Err(DriverError::Invalid(format!("canary at {pct}%: {e}; the canary was removed")));
            }
        }
        // Promote: the stable track takes the release, then the canary goes.
        let all = objects(stable, |_| true);
        self.apply(&all).await?;
        self.rollout(&all).await?;
        self.delete(&objects(canary, |_| true)).await?;
        self.prune().await
    }

    /// One step: the canary takes `pct`% of the traffic, then must stay ready for the pause.
    async fn canary_step(&self, stable: &KubeSet, canary: &KubeSet, pct: u8) -> Result<(), DriverError> {
        let objs = objects(canary, |_| true);
        self.apply(&objs).await?;
        let by_ingress = self.k.canary_ingress.as_deref();
        for c in objects(canary, |o| o.kind == "Deployment") {
            let base = c.name.strip_suffix("-canary").unwrap_or(&c.name);
            let st = stable.objects.iter().find(|o| o.kind == "Deployment" && o.name == base);
            let n = st.and_then(|o| o.replicas).unwrap_or(1).max(1);
            if by_ingress.is_some() {
                // The Ingress moves traffic: the canary runs at full size.
                self.scale(c, n).await?;
            } else {
                // The replicas' share moves traffic (granularity: one pod in n).
                let share = ((u32::from(pct) * n).div_ceil(100)).clamp(1, n);
                self.scale(c, share).await?;
                if let Some(st) = st {
                    self.scale(st, n.saturating_sub(share).max(1)).await?;
                }
            }
        }
        self.rollout(&objs).await?;
        if let Some(ing) = by_ingress {
            let w = format!("{WEIGHT}={pct}");
            self.quick("kubectl annotate", &["annotate", "--overwrite", &format!("ingress/{ing}"), &w]).await?;
        }
        tracing::info!(namespace = %self.k.namespace, "canary: {pct}% of the traffic");
        tokio::time::sleep(Duration::from_secs(self.k.canary_pause_secs)).await;
        if let Some(h) = &self.ctx.manifest.health {
            crate::health::run(h, self.ctx.runner, &self.ctx.release_dir).await.map_err(DriverError::Invalid)?;
        }
        let sel = format!("{},dockfra.dev/track=canary", self.selector(Some(&self.k.release)));
        if let Some(v) = self.get(&["deployments", "-l", &sel]).await? {
            readiness(&v).map_err(|w| DriverError::Invalid(format!("the canary is not ready: {w}")))?;
        }
        Ok(())
    }

    /// A failed step: traffic back to the stable track, the canary gone.
    async fn abort_canary(&self, stable: &KubeSet, canary: &KubeSet) {
        if let Some(ing) = self.k.canary_ingress.as_deref() {
            let w = format!("{WEIGHT}=0");
            let _ = self.quick("kubectl annotate", &["annotate", "--overwrite", &format!("ingress/{ing}"), &w]).await;
        }
        for o in objects(stable, |o| o.kind == "Deployment") {
            if let Err(e) = self.scale(o, o.replicas.unwrap_or(1)).await {
                tracing::warn!("canary abort: {e}");
            }
        }
        if let Err(e) = self.delete(&objects(canary, |_| true)).await {
            tracing::warn!("canary abort: {e}");
        }
    }
}

#[tonic::async_trait]
impl Driver for Kubernetes {
    async fn validate(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        spec(ctx)?;
        if crate::runner::which("kubectl").is_none() {
            return Err(missing("validate", RunError::NotFound { program: "kubectl".into() }));
        }
        Ok(())
    }

    /// The cluster answers (and the namespace exists) before `current` moves.
    async fn pre_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let kc = Kubectl::new(ctx)?;
        let out = kc.quick("cluster", &["version", "-o", "json"]).await?;
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        tracing::info!(
            "kubernetes: kubectl {}, cluster {}",
            v["clientVersion"]["gitVersion"].as_str().unwrap_or("?"),
            v["serverVersion"]["gitVersion"].as_str().unwrap_or("?")
        );
        let ns = kc.k.namespace.as_str();
        match kc.get(&["namespace", ns]).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(DriverError::Invalid(format!(
                "cluster: namespace {ns} does not exist (create it: kubectl create namespace {ns})"
            ))),
            // Namespaced rights need not include reading the namespace: the apply will tell.
            Err(DriverError::Invalid(m)) if m.contains("forbidden") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn apply(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let kc = Kubectl::new(ctx)?;
        match kc.k.strategy {
            Strategy::Rolling | Strategy::Recreate => kc.rolling().await,
            Strategy::BlueGreen => kc.blue_green().await,
            Strategy::Canary => kc.canary().await,
        }
    }

    async fn post_deploy(&self, _ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        Ok(())
    }

    /// A first release that failed: remove what it made (never its claims).
    async fn teardown(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let kc = Kubectl::new(ctx)?;
        let all: Vec<&KubeObject> = kc.k.sets.iter().flat_map(|s| &s.objects).collect();
        kc.delete(&all).await
    }

    async fn health(&self, ctx: &StepCtx<'_>) -> Option<String> {
        let kc = Kubectl::new(ctx).ok()?;
        let sel = kc.selector(Some(&kc.k.release));
        Some(match kc.get(&["deployments,statefulsets,daemonsets", "-l", &sel]).await {
            Ok(Some(v)) if v["items"].as_array().is_some_and(|i| i.is_empty()) => {
                "unhealthy: no workload of this release in the cluster".into()
            }
            Ok(Some(v)) => match readiness(&v) {
                Ok(()) => "healthy".into(),
                Err(w) => format!("unhealthy: {w}"),
            },
            Ok(None) => "unknown: no answer".into(),
            Err(e) => format!("unknown: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(code: i32, stderr: &str) -> Output {
        Output { code: Some(code), stdout: String::new(), stderr: stderr.into() }
    }

    // The stderr lines are the real kubectl 1.37's (recorded against tests/kubeapi/kube_api.py).
    #[test]
    fn each_cluster_answer_is_said_plainly() {
        let cases = [
            (
                "The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?",
                "the cluster is unreachable",
            ),
            (
                "Error from server (Forbidden): deployments.apps \"web\" is forbidden: User \"system:serviceaccount:dockfra:deployer\" cannot patch resource \"deployments\" in API group \"apps\" in the namespace \"locked\"",
                "forbidden in namespace shop",
            ),
            ("Error from server (NotFound): namespaces \"shop\" not found", "namespace shop does not exist"),
            ("error: deployment \"web\" exceeded its progress deadline", "the rollout failed"),
            ("error: timed out waiting for the condition", "did not finish in time"),
        ];
        for (stderr, says) in cases {
            let m = explain("step", "shop", "kubectl x", &out(1, stderr));
            assert!(m.contains(says) && m.contains(stderr.lines().last().unwrap()), "{m}");
        }
    }

    #[test]
    fn readiness_names_what_is_not_ready_and_why() {
        let ready = serde_json::json!({"items": [{"kind": "Deployment", "metadata": {"name": "web", "generation": 2},
            "spec": {"replicas": 2}, "status": {"observedGeneration": 2, "readyReplicas": 2}}]});
        assert_eq!(readiness(&ready), Ok(()));
        let stalled = serde_json::json!({"items": [{"kind": "Deployment", "metadata": {"name": "web", "generation": 3},
            "spec": {"replicas": 2}, "status": {"observedGeneration": 3, "readyReplicas": 0,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}}]});
        assert_eq!(readiness(&stalled), Err("web 0/2 ready, ProgressDeadlineExceeded".into()));
        let stale = serde_json::json!({"items": [{"kind": "DaemonSet", "metadata": {"name": "agent", "generation": 4},
            "status": {"observedGeneration": 3, "desiredNumberScheduled": 1, "numberReady": 1}}]});
        assert!(readiness(&stale).unwrap_err().starts_with("agent 1/1"));
    }
}
