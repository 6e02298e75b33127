//! Prometheus metrics (text exposition format 0.0.4), computed at scrape time from the store
//! and the project: nothing to lose at a restart, nothing counted twice. The one exception,
//! `dockfra_polls_total`, counts in memory and starts again at 0 with the process (as
//! Prometheus counters may).
use std::collections::BTreeMap;
use std::fmt::Write as _;

use dockfra_common::config::Mode;

use super::{views, Coordinator};
use crate::error::Result;

/// Deploy duration histogram buckets, in seconds.
const BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// A label value, escaped as the exposition format wants.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(c: &Coordinator) -> Result<String> {
    let projects = c.projects()?;
    let platform_of: BTreeMap<&str, &str> =
        projects.targets().map(|(_, t)| (t.id.as_str(), t.platform.as_str())).collect();
    let platform = |t: &str| platform_of.get(t).copied().unwrap_or("unknown");
    let (agents, counts, durations) = {
        let store = c.store();
        (store.agents()?, store.deployment_counts()?, store.deployment_durations()?)
    };
    let now = dockfra_common::now_unix();
    let mut out = String::new();

    head(&mut out, "dockfra_build_info", "gauge", "The coordinator's version.");
    let _ = writeln!(out, "dockfra_build_info{{version=\"{}\"}} 1", esc(dockfra_common::VERSION));

    // Agents: connected means watching now, or heard from within the target's silence limit
    // (pull: three poll intervals; push: the last dial or status call within five minutes).
    let mut connected = 0u64;
    let mut seen = String::new();
    for a in &agents {
        let Some(last) = a.last_seen_unix else { continue };
        let _ = writeln!(seen, "dockfra_agent_last_seen_timestamp_seconds{{target=\"{}\"}} {last}", esc(&a.target));
        // (An agent serving several targets is silent for as long as the most patient allows.)
        let limit = match projects.of_agent(&a.target).map(|(_, t)| t).max_by_key(|t| t.agent.poll_interval) {
            Some(t) if t.agent.mode == Mode::Pull => views::pull_silence_limit(t),
            _ => 300,
        };
        if !a.revoked && (c.watching(&a.target) || now.saturating_sub(last.max(0) as u64) <= limit) {
            connected += 1;
        }
    }
    head(&mut out, "dockfra_agents_enrolled", "gauge", "Agents enrolled and not revoked.");
    let _ = writeln!(out, "dockfra_agents_enrolled {}", agents.iter().filter(|a| !a.revoked).count());
    head(
        &mut out,
        "dockfra_agents_connected",
        "gauge",
        "Agents watching now or heard from recently (pull: within three poll intervals; push: five minutes).",
    );
    let _ = writeln!(out, "dockfra_agents_connected {connected}");
    head(&mut out, "dockfra_agents_watching", "gauge", "Pull agents holding a watch stream now.");
    let _ = writeln!(out, "dockfra_agents_watching {}", c.watchers().count());
    head(
        &mut out,
        "dockfra_polls_total",
        "counter",
        "Polls answered since the coordinator started, by the agent's facts: sent in full, held here (only their digest came), asked for (the digest matched nothing held).",
    );
    for (facts, n) in [("sent", &c.inner.polls.sent), ("held", &c.inner.polls.held), ("asked", &c.inner.polls.asked)] {
        let _ =
            writeln!(out, "dockfra_polls_total{{facts=\"{facts}\"}} {}", n.load(std::sync::atomic::Ordering::Relaxed));
    }
    head(
        &mut out,
        "dockfra_agent_last_seen_timestamp_seconds",
        "gauge",
        "When each agent was last heard from (unix seconds).",
    );
    out.push_str(&seen);

    let list = c.target_list(None, |_| true)?;
    head(&mut out, "dockfra_targets", "gauge", "Targets per state (the dashboard's dots).");
    for (state, n) in &list.counts {
        let _ = writeln!(out, "dockfra_targets{{state=\"{}\"}} {n}", esc(state));
    }

    let mut by_result: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut bytes: BTreeMap<&str, u64> = BTreeMap::new();
    for (target, status, n, b) in &counts {
        if views::OPEN_STATUSES.contains(&status.as_str()) {
            continue;
        }
        *by_result.entry((platform(target), status.as_str())).or_default() += n;
        *bytes.entry(platform(target)).or_default() += b;
    }
    head(
        &mut out,
        "dockfra_deploys_total",
        "counter",
        "Finished deployments (deploys, rollbacks, exports) by platform and result.",
    );
    for ((p, r), n) in &by_result {
        let _ = writeln!(out, "dockfra_deploys_total{{platform=\"{}\",result=\"{}\"}} {n}", esc(p), esc(r));
    }
    head(&mut out, "dockfra_bundle_bytes_moved_total", "counter", "Bundle bytes sent to agents, by platform.");
    for (p, n) in &bytes {
        let _ = writeln!(out, "dockfra_bundle_bytes_moved_total{{platform=\"{}\"}} {n}", esc(p));
    }

    head(
        &mut out,
        "dockfra_deploy_duration_seconds",
        "histogram",
        "Time from queueing a deployment to its result, by platform.",
    );
    let mut hist: BTreeMap<&str, (Vec<u64>, u64, f64)> = BTreeMap::new();
    for (target, _, ms) in &durations {
        let e = hist.entry(platform(target)).or_insert_with(|| (vec![0; BUCKETS.len()], 0, 0.0));
        let secs = *ms as f64 / 1000.0;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                e.0[i] += 1;
            }
        }
        e.1 += 1;
        e.2 += secs;
    }
    for (p, (buckets, count, sum)) in &hist {
        let p = esc(p);
        for (b, n) in BUCKETS.iter().zip(buckets) {
            let _ = writeln!(out, "dockfra_deploy_duration_seconds_bucket{{platform=\"{p}\",le=\"{b}\"}} {n}");
        }
        let _ = writeln!(out, "dockfra_deploy_duration_seconds_bucket{{platform=\"{p}\",le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "dockfra_deploy_duration_seconds_sum{{platform=\"{p}\"}} {sum}");
        let _ = writeln!(out, "dockfra_deploy_duration_seconds_count{{platform=\"{p}\"}} {count}");
    }
    Ok(out)
}
