//! `check`: pre-flight for a deploy, through what the target's agent reports of its host. A
//! push agent is asked now; a pull agent's last report is used, with its age. Nothing is
//! built into the store and nothing is sent: the bundle is sized by a dry-run plan.
//!
//! Each check ends ok, warn or fail; a warning or failure carries a category (what kind of
//! problem: configuration, connectivity, permission, resource, runtime) and a fix.
use dockfra_common::config::{Mode, Platform, PlatformConfig, ServiceManager, Target};
use dockfra_common::proto;
use serde_json::Value as J;
use tonic::Status;

use super::{facts_json, status_json, views, Coordinator};
use crate::progress::human;

const OK: &str = "ok";
const WARN: &str = "warn";
const FAIL: &str = "fail";

fn item(name: &str, result: &str, message: String, category: &str, fix: &str) -> proto::CheckItem {
    let quiet = result == OK;
    proto::CheckItem {
        name: name.into(),
        result: result.into(),
        message,
        category: if quiet { String::new() } else { category.into() },
        fix: if quiet { String::new() } else { fix.into() },
    }
}

fn worst<'a>(results: impl Iterator<Item = &'a str>) -> String {
    let mut w = OK;
    for r in results {
        if r == FAIL {
            return FAIL.into();
        }
        if r == WARN {
            w = WARN;
        }
    }
    w.into()
}

impl Coordinator {
    pub(super) async fn check_of(&self, r: &proto::CheckRequest) -> Result<proto::CheckReport, Status> {
        // Nothing named: every target. One check at a time: each sizes a bundle.
        let all = r.all || (r.target.is_empty() && r.selector.is_empty());
        let ids = self.select_targets(&r.target, &r.selector, all)?;
        let _one = self.inner.check_gate.acquire().await.map_err(|_| Status::unavailable("shutting down"))?;
        let mut targets = Vec::new();
        for id in ids {
            targets.push(self.check_target(&id).await?);
        }
        Ok(proto::CheckReport { result: worst(targets.iter().map(|t| t.result.as_str())), targets })
    }

    async fn check_target(&self, id: &str) -> Result<proto::TargetCheck, Status> {
        let (_, target) = self.target(id)?;
        let mut checks = Vec::new();
        // The agent's figures: asked now (push), or its last report (pull).
        let (facts, status, age) = match target.agent.mode {
            // Status carries the facts the agent detected at its start: cheap to ask for
            // (`deploy-test` runs the detection afresh).
            Mode::Push => match self.dial_agent(&target).await {
                Ok(mut c) => match c.status(proto::StatusRequest {}).await {
                    Ok(st) => {
                        let st = st.into_inner();
                        let sj = status_json(&st);
                        let fj = st.facts.as_ref().map(facts_json).unwrap_or_default();
                        let _ = self.store().touch_agent(
                            target.agent_name(),
                            Some(&sj),
                            st.facts.as_ref().map(|_| (&fj, st.facts_digest.as_str())),
                        );
                        (fj, sj, 0)
                    }
                    Err(e) => {
                        checks.push(unreachable(&target, e.message()));
                        return Ok(done(&target, checks, -1));
                    }
                },
                Err(e) => {
                    checks.push(unreachable(&target, &e.to_string()));
                    return Ok(done(&target, checks, -1));
                }
            },
            Mode::Pull => match self.store().agent(target.agent_name())? {
                Some(a) if !a.revoked && a.last_seen_unix.is_some() => {
                    let age = (dockfra_common::now_unix() as i64 - a.last_seen_unix.unwrap_or(0)).max(0);
                    (a.facts, a.status, age)
                }
                _ => {
                    checks.push(item(
                        "agent",
                        FAIL,
                        format!(
                            "no report from the agent of {:?} yet (not enrolled, revoked, or never polled)",
                            target.id
                        ),
                        "connectivity",
                        &format!(
                            "enroll it (`dockfra-coord token create {}`) and start dockfra-agent",
                            target.agent_name()
                        ),
                    ));
                    return Ok(done(&target, checks, -1));
                }
            },
        };
        checks.push(if target.agent.mode == Mode::Push {
            item(
                "agent",
                OK,
                format!("reached, dockfra-agent {}", facts["agent_version"].as_str().unwrap_or("?")),
                "",
                "",
            )
        } else if (age as u64) < views::pull_silence_limit(&target) {
            item(
                "agent",
                OK,
                format!("last report {age}s ago, dockfra-agent {}", facts["agent_version"].as_str().unwrap_or("?")),
                "",
                "",
            )
        } else {
            item(
                "agent",
                WARN,
                format!(
                    "last report {age}s ago (polls every {}s): these figures may be stale",
                    target.agent.poll_interval.as_secs()
                ),
                "connectivity",
                "check that dockfra-agent runs and can reach the coordinator (`dockfra-agent status` on the host)",
            )
        });
        checks.push(match super::compat(&target, &facts) {
            Ok(()) => item("driver", OK, format!("has a {} driver", target.platform), "", ""),
            Err(why) => {
                item("driver", FAIL, why, "runtime", &format!("upgrade it: dockfra-coord agent upgrade {}", target.id))
            }
        });
        let os = views::os_check(&target, &facts);
        checks.push(if os.starts_with("mismatch") {
            item(
                "os",
                FAIL,
                os,
                "configuration",
                "fix the target's os: in deploy-targets.yaml, or deploy to another host",
            )
        } else {
            item(
                "os",
                OK,
                format!(
                    "{} ({}, {})",
                    os,
                    facts["os_release"].as_str().unwrap_or("?"),
                    facts["arch"].as_str().unwrap_or("?")
                ),
                "",
                "",
            )
        });
        if !status["state_error"].as_str().unwrap_or("").is_empty() {
            checks.push(item(
                "state",
                FAIL,
                format!("the agent cannot read its state: {}", status["state_error"].as_str().unwrap_or("")),
                "permission",
                "see `dockfra-agent status` on the host; `dockfra-agent state repair` restores it",
            ));
        }
        checks.push(runtime_check(&target, &facts));
        // The bundle, sized without storing it.
        let this = self.clone();
        let tid = target.id.clone();
        let parts = tokio::task::spawn_blocking(move || this.plan_parts(&tid))
            .await
            .map_err(|e| Status::internal(format!("plan task: {e}")))?;
        match parts {
            Ok(parts) => {
                checks.push(disk_check(&parts.plan, &status));
                let compose = parts.compose.as_deref().and_then(|b| serde_yaml_ng::from_slice(b).ok());
                let old = parts.old_compose.as_deref().and_then(|b| serde_yaml_ng::from_slice(b).ok());
                checks.push(memory_check(compose.as_ref(), &status));
                if let Some(c) = compose.as_ref() {
                    checks.push(ports_check(c, old.as_ref(), &status));
                }
            }
            Err(e) => checks.push(item(
                "bundle",
                FAIL,
                format!("the bundle cannot be built: {e}"),
                "configuration",
                "run `dockfra-coord validate` for the project's defects",
            )),
        }
        Ok(done(&target, checks, age))
    }
}

fn done(target: &Target, checks: Vec<proto::CheckItem>, age: i64) -> proto::TargetCheck {
    proto::TargetCheck {
        target: target.id.clone(),
        result: worst(checks.iter().map(|c| c.result.as_str())),
        checks,
        reported_seconds_ago: age,
    }
}

fn unreachable(target: &Target, why: &str) -> proto::CheckItem {
    item(
        "agent",
        FAIL,
        format!("cannot reach the agent of {:?}: {why}", target.id),
        "connectivity",
        "is dockfra-agent running there, and is its port open to the coordinator? (`dockfra-coord deploy-test TARGET`)",
    )
}

/// The tools the target's platform drives, found on the agent's host with their versions.
fn runtime_check(target: &Target, facts: &J) -> proto::CheckItem {
    let runtimes: Vec<(&str, &str)> = facts["runtimes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["name"].as_str().unwrap_or(""), r["version"].as_str().unwrap_or("")))
        .collect();
    let has = |n: &str| runtimes.iter().find(|(name, _)| *name == n).map(|(_, v)| *v);
    // Alternatives per need: any one of them will do.
    let mut needs: Vec<&[&str]> = match target.platform {
        Platform::DockerCompose => vec![&["docker engine"], &["docker compose", "docker-compose"]],
        Platform::Swarm => vec![&["docker engine"]],
        Platform::Podman => vec![&["podman engine"]],
        Platform::Kubernetes => vec![&["kubectl"]],
        // The HTTP API: nothing to find on the host.
        Platform::Nomad => vec![],
        Platform::SshRaw => vec![&["sh"]],
    };
    match &target.config {
        PlatformConfig::Podman { use_quadlet: true, .. } => needs.push(&["systemctl"]),
        PlatformConfig::Podman { .. } => needs.push(&["podman-compose", "docker-compose"]),
        PlatformConfig::SshRaw { service_manager, .. } => match service_manager {
            ServiceManager::Systemd => needs.push(&["systemctl"]),
            ServiceManager::Supervisord => needs.push(&["supervisorctl"]),
            ServiceManager::Pm2 => needs.push(&["pm2"]),
            _ => {}
        },
        _ => {}
    }
    let mut found = Vec::new();
    for alternatives in needs {
        match alternatives.iter().find_map(|n| has(n).map(|v| (*n, v))) {
            Some((n, v)) if v.starts_with("unreachable") => {
                return item(
                    "runtime",
                    FAIL,
                    format!("{n} is installed but {v}"),
                    "runtime",
                    "start it (e.g. `systemctl start docker`) and give the agent's user access to its socket",
                )
            }
            Some((n, v)) => found.push(if v.is_empty() { n.to_string() } else { format!("{n} {v}") }),
            None => {
                return item(
                    "runtime",
                    FAIL,
                    format!(
                        "platform {} needs {}, which the agent's host does not have",
                        target.platform,
                        alternatives.join(" or ")
                    ),
                    "runtime",
                    &format!("install {} on the target", alternatives[0]),
                )
            }
        }
    }
    item("runtime", OK, found.join(", "), "", "")
}

/// Free space where the agent keeps releases against what the release would write: the
/// content it does not have yet plus the release dir materialized.
fn disk_check(plan: &proto::DeployPlan, status: &J) -> proto::CheckItem {
    let free = status["disk"]["free_bytes"].as_u64().unwrap_or(0);
    let total = status["disk"]["total_bytes"].as_u64().unwrap_or(0);
    let need = plan.bytes_to_move + plan.bytes_total;
    let shown = format!(
        "{} free of {}; this release writes up to {} ({} new content, {} release files)",
        human(free),
        human(total),
        human(need),
        human(plan.bytes_to_move),
        human(plan.bytes_total)
    );
    let fix = "free space on the agent's state dir filesystem: `dockfra-coord gc` on the coordinator prunes old releases, a lower keep_releases keeps fewer";
    if total == 0 {
        item("disk", WARN, "the agent reported no disk figures".into(), "resource", "upgrade the agent")
    } else if free < need {
        item("disk", FAIL, format!("not enough disk: {shown}"), "resource", fix)
    } else if free < need.saturating_mul(2) {
        item("disk", WARN, format!("disk nearly full after the deploy: {shown}"), "resource", fix)
    } else {
        item("disk", OK, shown, "", "")
    }
}

/// Memory the services reserve (`deploy.resources.reservations.memory`, `mem_reservation`)
/// against what the host has available; limits beyond its total are worth a warning.
fn memory_check(compose: Option<&serde_yaml_ng::Value>, status: &J) -> proto::CheckItem {
    let total = status["host"]["memory_total_bytes"].as_u64().unwrap_or(0);
    let available = status["host"]["memory_available_bytes"].as_u64().unwrap_or(0);
    if total == 0 {
        return item("memory", OK, "the agent reports no memory figures (not Linux, or an older agent)".into(), "", "");
    }
    let (mut reserved, mut limits) = (0u64, 0u64);
    if let Some(serde_yaml_ng::Value::Mapping(services)) = compose.and_then(|c| c.get("services")) {
        for svc in services.values() {
            let res = svc.get("deploy").and_then(|d| d.get("resources"));
            let r = res
                .and_then(|r| r.get("reservations"))
                .and_then(|r| r.get("memory"))
                .or_else(|| svc.get("mem_reservation"));
            let l = res.and_then(|r| r.get("limits")).and_then(|r| r.get("memory")).or_else(|| svc.get("mem_limit"));
            reserved += r.and_then(bytes_of).unwrap_or(0);
            limits += l.and_then(bytes_of).unwrap_or(0);
        }
    }
    let shown = format!("{} available of {}", human(available), human(total));
    if reserved > available {
        item(
            "memory",
            FAIL,
            format!("the services reserve {}, more than the {shown}", human(reserved)),
            "resource",
            "lower the services' memory reservations, or free memory on the host",
        )
    } else if limits > total {
        item(
            "memory",
            WARN,
            format!("the services' memory limits add up to {}, more than the host's {}", human(limits), human(total)),
            "resource",
            "lower the limits, or expect the kernel's OOM killer under load",
        )
    } else if reserved > 0 {
        item("memory", OK, format!("{shown}; the services reserve {}", human(reserved)), "", "")
    } else {
        item("memory", OK, shown, "", "")
    }
}

/// Compose's byte values: a number, or a number with b, k, m, g (kb, mb, gb; any case).
fn bytes_of(v: &serde_yaml_ng::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim().trim_end_matches('b').trim_end_matches('i') {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

/// Host ports the release publishes against the sockets bound on the agent's host, leaving
/// out those the current release of the app publishes itself (a redeploy takes them over).
fn ports_check(compose: &serde_yaml_ng::Value, old: Option<&serde_yaml_ng::Value>, status: &J) -> proto::CheckItem {
    let wanted = crate::validate::published_ports(compose);
    if wanted.is_empty() {
        return item("ports", OK, "the release publishes no host port".into(), "", "");
    }
    if status["host"]["ports_known"] != true {
        return item(
            "ports",
            WARN,
            "the agent cannot list its host's bound ports (not Linux, or an older agent): not checked".into(),
            "runtime",
            "upgrade the agent",
        );
    }
    let ours = old.map(crate::validate::published_ports).unwrap_or_default();
    let bound: Vec<(String, String, u16)> = status["host"]["listening"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["protocol"].as_str().unwrap_or("").to_string(),
                p["address"].as_str().unwrap_or("").to_string(),
                p["port"].as_u64().unwrap_or(0) as u16,
            )
        })
        .collect();
    let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
    let mut taken = Vec::new();
    for w in &wanted {
        for (proto_, addr, port) in &bound {
            let overlaps = *proto_ == w.protocol
                && (w.first..=w.last).contains(port)
                && (any(&w.ip) || any(addr) || *addr == w.ip);
            let held_by_us = ours.iter().any(|o| o.protocol == *proto_ && (o.first..=o.last).contains(port));
            if overlaps && !held_by_us {
                taken.push(format!("{port}/{proto_} (service {:?}; bound on {addr})", w.service));
            }
        }
    }
    taken.dedup();
    let list: Vec<String> = wanted.iter().map(|w| w.shown()).collect();
    if taken.is_empty() {
        item("ports", OK, format!("free: {}", list.join(", ")), "", "")
    } else {
        item(
            "ports",
            FAIL,
            format!("host port(s) already taken on the agent's host: {}", taken.join(", ")),
            "resource",
            "stop what holds them (`ss -lntup` on the host), or publish the services on other host ports",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_values_as_compose_writes_them() {
        let v = |s: &str| bytes_of(&serde_yaml_ng::Value::String(s.into()));
        assert_eq!(v("512m"), Some(512 << 20));
        assert_eq!(v("1G"), Some(1 << 30));
        assert_eq!(v("1.5gb"), Some(3 << 29));
        assert_eq!(v("100"), Some(100));
        assert_eq!(v("64MiB"), Some(64 << 20));
        assert_eq!(v("lots"), None);
        assert_eq!(bytes_of(&serde_yaml_ng::Value::Number(2048.into())), Some(2048));
    }

    #[test]
    fn ports_taken_unless_the_current_release_holds_them() {
        let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            r#"{"services": {"web": {"image": "x", "ports": ["8080:80", "127.0.0.1:9000:9000/udp"]}}}"#,
        )
        .unwrap();
        let status = |ports: J| serde_json::json!({"host": {"ports_known": true, "listening": ports}});
        let free = ports_check(
            &compose,
            None,
            &status(serde_json::json!([{"protocol": "tcp", "address": "127.0.0.1", "port": 8081}])),
        );
        assert_eq!(free.result, OK, "{}", free.message);
        let taken = ports_check(
            &compose,
            None,
            &status(serde_json::json!([{"protocol": "tcp", "address": "::", "port": 8080}])),
        );
        assert_eq!((taken.result.as_str(), taken.category.as_str()), (FAIL, "resource"));
        assert!(taken.message.contains("8080/tcp") && taken.message.contains("\"web\""), "{}", taken.message);
        let udp_elsewhere = ports_check(
            &compose,
            None,
            &status(serde_json::json!([{"protocol": "udp", "address": "127.0.0.2", "port": 9000}])),
        );
        assert_eq!(udp_elsewhere.result, OK, "another address: {}", udp_elsewhere.message);
        let ours = ports_check(
            &compose,
            Some(&compose),
            &status(serde_json::json!([{"protocol": "tcp", "address": "0.0.0.0", "port": 8080}])),
        );
        assert_eq!(ours.result, OK, "the running release holds it: {}", ours.message);
    }
}
