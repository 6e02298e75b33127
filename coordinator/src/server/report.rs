//! `report`: DEPLOYED.md, what runs where — per target the live release and version, its
//! health, since when and by whom it runs, and the release a rollback would bring back —
//! from the coordinator's records and its agents' last reports.
use std::fmt::Write as _;

use dockfra_common::proto;

use super::Coordinator;
use crate::error::Result;
use crate::store::HistoryFilter;

/// A Markdown table cell: no pipes, no line breaks.
fn cell(s: &str) -> String {
    let s = s.replace('|', "\\|").replace(['\r', '\n'], " ");
    if s.is_empty() {
        "—".into()
    } else {
        s
    }
}

/// `YYYY-MM-DD HH:MM UTC`.
pub fn when(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), t.month() as u8, t.day(), t.hour(), t.minute()),
        Err(_) => "—".into(),
    }
}

impl Coordinator {
    /// The report, for the targets `keep` selects.
    pub(super) fn report_markdown(
        &self,
        keep: impl Fn(&std::collections::BTreeMap<String, String>) -> bool,
    ) -> Result<String> {
        let list = self.target_list(None, keep)?;
        let now = dockfra_common::now_unix() as i64;
        let mut md = String::new();
        let _ = writeln!(md, "# Deployed\n");
        let _ = writeln!(
            md,
            "What runs where, as of {} (written by `dockfra-coord report` from the coordinator's records and its agents' last reports).\n",
            when(now)
        );
        let _ =
            writeln!(md, "| Target | App | Platform | Release | Version | Health | Since | Deployed by | Previous |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
        let mut sections = String::new();
        for t in &list.targets {
            let live = self.live_deployment(&t.target, &t.current_release)?;
            let (since, by) = match &live {
                Some(d) => (when(d.finished_unix.unwrap_or(d.started_unix)), d.operator.clone()),
                None => (String::new(), String::new()),
            };
            let health = if t.current_release.is_empty() { "not deployed".to_string() } else { t.health.clone() };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(&t.target),
                cell(&t.app),
                cell(&t.platform),
                cell(&t.current_release),
                cell(&t.current_version),
                cell(&health),
                cell(&since),
                cell(&by),
                cell(&t.previous_release)
            );
            let _ = writeln!(sections, "\n## {}\n", t.target);
            let host = if t.host.is_empty() { "—".to_string() } else { t.host.clone() };
            let _ = writeln!(sections, "- **State:** {} ({})", t.state, cell(&t.state_reason));
            let _ = writeln!(sections, "- **Host:** {host}, {} mode; agent {}", t.mode, cell(&t.agent_version));
            if !t.os.is_empty() {
                let _ = writeln!(sections, "- **System:** {} ({}, {})", t.os, cell(&t.os_release), t.arch);
            }
            if !t.labels.is_empty() {
                let labels: Vec<String> = t.labels.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
                let _ = writeln!(sections, "- **Labels:** {}", labels.join(", "));
            }
            match &live {
                Some(d) => {
                    let _ = writeln!(
                        sections,
                        "- **Live:** {} (version {}), {} by {} on {} (deployment `{}`)",
                        t.current_release,
                        cell(&t.current_version),
                        if d.action == "rollback" { "rolled back to" } else { "deployed" },
                        cell(&d.operator),
                        when(d.finished_unix.unwrap_or(d.started_unix)),
                        d.id
                    );
                }
                None if !t.current_release.is_empty() => {
                    let _ = writeln!(
                        sections,
                        "- **Live:** {} (no deployment of this coordinator made it)",
                        t.current_release
                    );
                }
                None => {
                    let _ = writeln!(sections, "- **Live:** nothing deployed yet");
                }
            }
            if !t.previous_release.is_empty() {
                let _ = writeln!(
                    sections,
                    "- **Rollback:** `dockfra-coord rollback {}` brings back {} (version {})",
                    t.target,
                    t.previous_release,
                    cell(&t.previous_version)
                );
            }
            if let Some(d) = &t.last_deploy {
                if live.as_ref().is_none_or(|l| l.id != d.id) {
                    let _ = writeln!(
                        sections,
                        "- **Last deployment:** `{}` {} {} by {}: {}",
                        d.id,
                        d.action,
                        d.status,
                        cell(&d.operator),
                        cell(&d.reason)
                    );
                }
            }
            let kept: Vec<&str> = t.releases.iter().map(|r: &proto::ReleaseInfo| r.name.as_str()).collect();
            if !kept.is_empty() {
                let _ = writeln!(sections, "- **Kept on the host:** {}", kept.join(", "));
            }
        }
        md.push_str(&sections);
        Ok(md)
    }

    /// The succeeded deployment that made `release` live on `target`, if this coordinator made it.
    fn live_deployment(&self, target: &str, release: &str) -> Result<Option<crate::store::DeploymentRow>> {
        if release.is_empty() {
            return Ok(None);
        }
        let rows = self.store().history(&HistoryFilter {
            target: Some(target),
            targets: None,
            status: Some("succeeded"),
            since_unix: None,
            until_unix: None,
            limit: 200,
        })?;
        Ok(rows.into_iter().find(|d| d.release == release))
    }
}
