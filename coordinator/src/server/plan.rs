//! A deploy's plan: what a deploy would change on a target, against the release its agent
//! runs now, without side effects — the project is rendered and hashed (no blob stored, no
//! image saved or pushed, no sequence taken, no agent told).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use dockfra_common::bundle::{EntryKind, Manifest, PlatformSpec};
use dockfra_common::config::PlatformConfig;
use dockfra_common::proto;

use super::Coordinator;
use crate::builder;
use crate::error::{CoordError, Result};

/// The resolved compose file's path inside a release, for the platforms that have one.
fn compose_file(p: &PlatformSpec) -> Option<&str> {
    match p {
        PlatformSpec::DockerCompose(s) | PlatformSpec::Swarm(s) => Some(&s.file),
        PlatformSpec::Podman(p) => Some(&p.compose.file),
        PlatformSpec::SshRaw(_) | PlatformSpec::Kubernetes(_) | PlatformSpec::Nomad(_) => None,
    }
}

fn ships_images(c: &PlatformConfig) -> bool {
    matches!(
        c,
        PlatformConfig::DockerCompose { ship_images: true, .. }
            | PlatformConfig::Swarm { ship_images: true, .. }
            | PlatformConfig::Podman { ship_images: true, .. }
    )
}

/// The `services` mapping of a rendered compose file (JSON).
fn services(bytes: &[u8]) -> BTreeMap<String, serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    v["services"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

fn image(v: Option<&serde_json::Value>) -> String {
    v.and_then(|s| s["image"].as_str()).unwrap_or_default().to_string()
}

/// Compare two compose services mappings, service by service.
pub fn diff_services(
    old: &BTreeMap<String, serde_json::Value>,
    new: &BTreeMap<String, serde_json::Value>,
) -> Vec<proto::ServiceChange> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let (o, n) = (old.get(name), new.get(name));
            let change = match (o, n) {
                (None, _) => "added",
                (_, None) => "removed",
                (Some(a), Some(b)) if a == b => "unchanged",
                _ => "changed",
            };
            let fields = match (o.and_then(|v| v.as_object()), n.and_then(|v| v.as_object())) {
                (Some(a), Some(b)) => {
                    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
                }
                _ => Vec::new(),
            };
            proto::ServiceChange {
                service: name.clone(),
                change: change.into(),
                image: image(n),
                old_image: image(o),
                fields,
            }
        })
        .collect()
}

/// Compare the files of two manifests (`old` absent: nothing deployed yet).
pub fn diff_files(old: Option<&Manifest>, new: &Manifest, plan: &mut proto::DeployPlan) {
    let key = |f: &dockfra_common::bundle::FileEntry| (f.kind.clone(), f.sha256.clone(), f.link.clone(), f.mode);
    let before: BTreeMap<&str, &dockfra_common::bundle::FileEntry> =
        old.map(|m| m.files.iter().map(|f| (f.path.as_str(), f)).collect()).unwrap_or_default();
    let had: BTreeSet<&str> = old.map(|m| m.files.iter().map(|f| f.sha256.as_str()).collect()).unwrap_or_default();
    let mut moved: BTreeSet<&str> = BTreeSet::new();
    for f in &new.files {
        plan.bytes_total += f.size;
        if f.kind == EntryKind::File && !had.contains(f.sha256.as_str()) && moved.insert(&f.sha256) {
            plan.bytes_to_move += f.size;
        }
        match before.get(f.path.as_str()) {
            None => {
                plan.files_added += 1;
                plan.files.push(proto::FileChange {
                    path: f.path.clone(),
                    change: "added".into(),
                    size: f.size,
                    old_size: 0,
                });
            }
            Some(o) if key(o) != key(f) => {
                plan.files_changed += 1;
                plan.files.push(proto::FileChange {
                    path: f.path.clone(),
                    change: "changed".into(),
                    size: f.size,
                    old_size: o.size,
                });
            }
            Some(_) => plan.files_unchanged += 1,
        }
    }
    let now: BTreeSet<&str> = new.files.iter().map(|f| f.path.as_str()).collect();
    for (path, o) in &before {
        if !now.contains(path) {
            plan.files_removed += 1;
            plan.files.push(proto::FileChange {
                path: path.to_string(),
                change: "removed".into(),
                size: 0,
                old_size: o.size,
            });
        }
    }
}

impl Coordinator {
    pub(super) async fn plan(&self, target_id: &str) -> Result<proto::DeployPlan> {
        let this = self.clone();
        let id = target_id.to_string();
        tokio::task::spawn_blocking(move || this.plan_blocking(&id))
            .await
            .map_err(|e| CoordError::internal(anyhow::anyhow!("plan task: {e}")))?
    }

    fn plan_blocking(&self, target_id: &str) -> Result<proto::DeployPlan> {
        Ok(self.plan_parts(target_id)?.plan)
    }

    /// The plan, with the compose file a deploy would render and the one the current
    /// release runs (for `check`).
    pub(super) fn plan_parts(&self, target_id: &str) -> Result<PlanParts> {
        let (project, target) = self.target(target_id)?;
        let status = self.target_status(&project, &target)?;
        let blobs = self.inner.state.blobs();
        let built = builder::build(&project, &target, &blobs, 0, None, builder::Mode::DryRun)
            .map_err(|e| CoordError::Precondition(format!("{e:#}")))?;
        let new = built.manifest;
        let mut plan = proto::DeployPlan {
            target: target.id.clone(),
            platform: target.platform.as_str().into(),
            current_release: status.current_release.clone(),
            current_version: status.current_version.clone(),
            version: new.version.clone(),
            ..Default::default()
        };
        let old = if status.current_release.is_empty() {
            None
        } else {
            match self.store().release_by_name(&target.id, &status.current_release)? {
                Some(r) => Some(Manifest::parse(&r.manifest).map_err(CoordError::internal)?),
                None => {
                    plan.notes.push(format!(
                        "the agent runs {}, a release this coordinator did not build: every file counts as new",
                        status.current_release
                    ));
                    None
                }
            }
        };
        if old.is_none() && status.current_release.is_empty() {
            plan.notes.push("nothing is deployed yet: this is the first release".into());
        }
        diff_files(old.as_ref(), &new, &mut plan);
        let mut parts = PlanParts::default();
        if let Some(file) = compose_file(&new.platform) {
            parts.compose = built.rendered.iter().find(|(p, _)| p == file).map(|(_, b)| b.clone());
            parts.old_compose = old.as_ref().and_then(|m| rendered_compose(&blobs, m));
            let new_services = parts.compose.as_deref().map(services).unwrap_or_default();
            let old_services = parts.old_compose.as_deref().map(services).unwrap_or_default();
            plan.services = diff_services(&old_services, &new_services);
            if ships_images(&target.config) {
                plan.notes.push(
                    "images carried in the bundle are saved at deploy time: their bytes are not in bytes_to_move"
                        .into(),
                );
            }
        }
        plan.changes = plan.files_added + plan.files_changed + plan.files_removed > 0
            || plan.services.iter().any(|s| s.change != "unchanged");
        if !plan.changes {
            plan.notes.push(format!("{} already runs this content: a deploy would change nothing", target.id));
        }
        parts.plan = plan;
        Ok(parts)
    }
}

impl Coordinator {
    /// What a rollback would do on each target of `r`, without side effects.
    pub(super) fn rollback_plans(&self, r: &proto::RollbackPlanRequest) -> Result<proto::RollbackPlanList> {
        let all = r.all || (r.target.is_empty() && r.selector.is_empty());
        let ids = self.select_targets(&r.target, &r.selector, all)?;
        if !r.to_release.is_empty() && ids.len() > 1 {
            return Err(CoordError::Precondition(
                "a release (--to) names one target's release: name the target".into(),
            ));
        }
        let plans = ids.iter().map(|id| self.rollback_plan(id, &r.to_release)).collect::<Result<Vec<_>>>()?;
        Ok(proto::RollbackPlanList { plans })
    }

    fn rollback_plan(&self, target_id: &str, to: &str) -> Result<proto::DeployPlan> {
        let (project, target) = self.target(target_id)?;
        let status = self.target_status(&project, &target)?;
        let mut plan = proto::DeployPlan {
            target: target.id.clone(),
            platform: target.platform.as_str().into(),
            current_release: status.current_release.clone(),
            current_version: status.current_version.clone(),
            ..Default::default()
        };
        let to = if to.is_empty() { status.previous_release.clone() } else { to.to_string() };
        if to.is_empty() {
            plan.blocked = format!("{target_id} reports no previous release to roll back to; name one with --to");
            return Ok(plan);
        }
        plan.release = to.clone();
        let store = self.store();
        let Some(row) = store.release_by_name(&target.id, &to)? else {
            plan.blocked = format!("{target_id} has no release {to:?} this coordinator built (see `history`)");
            return Ok(plan);
        };
        let current = if status.current_release.is_empty() {
            None
        } else {
            store.release_by_name(&target.id, &status.current_release)?
        };
        drop(store);
        let new = Manifest::parse(&row.manifest).map_err(CoordError::internal)?;
        plan.version = new.version.clone();
        let old = current.as_ref().map(|r| Manifest::parse(&r.manifest)).transpose().map_err(CoordError::internal)?;
        if row.pruned_unix.is_some() {
            plan.blocked = format!(
                "release {to} was garbage-collected from the coordinator's store: it cannot be sent again (`dockfra-agent rollback` on the host can use a copy the agent kept)"
            );
        }
        if status.current_release == to {
            plan.notes.push(format!("{to} is already the current release: a rollback would change nothing"));
        }
        diff_files(old.as_ref(), &new, &mut plan);
        let blobs = self.inner.state.blobs();
        let rendered = |m: &Manifest| rendered_compose(&blobs, m);
        if compose_file(&new.platform).is_some() {
            let new_services = rendered(&new).as_deref().map(services).unwrap_or_default();
            let old_services = old.as_ref().and_then(rendered).as_deref().map(services).unwrap_or_default();
            plan.services = diff_services(&old_services, &new_services);
            let restart: Vec<&str> =
                plan.services.iter().filter(|s| s.change == "changed").map(|s| s.service.as_str()).collect();
            let stay: Vec<&str> =
                plan.services.iter().filter(|s| s.change == "unchanged").map(|s| s.service.as_str()).collect();
            if !restart.is_empty() {
                plan.notes.push(format!("recreated with their old definition: {}", restart.join(", ")));
            }
            if !stay.is_empty() {
                plan.notes.push(format!("left running as they are: {}", stay.join(", ")));
            }
        } else if let PlatformSpec::SshRaw(spec) = &new.platform {
            match (&spec.service_name, spec.service_manager) {
                (Some(name), m) if m != dockfra_common::config::ServiceManager::None => {
                    plan.notes.push(format!("the `current` link swaps back, then {m} restarts {name}"))
                }
                _ => plan.notes.push("the `current` link swaps back; no service manager restarts anything".into()),
            }
        }
        // The agent keeps its last releases: a kept one comes back without a transfer.
        let kept = status.releases.iter().any(|r| r.name == to);
        if kept {
            plan.bytes_to_move = 0;
            plan.notes.push(format!("the agent still has {to}: nothing is transferred"));
        }
        plan.changes = plan.files_added + plan.files_changed + plan.files_removed > 0
            || plan.services.iter().any(|s| s.change != "unchanged");
        Ok(plan)
    }
}

/// The compose file a stored release renders (from the blob store), if it has one.
fn rendered_compose(blobs: &std::path::Path, m: &Manifest) -> Option<Vec<u8>> {
    let f = compose_file(&m.platform)?;
    let entry = m.files.iter().find(|e| e.path == f)?;
    let (_, mut fh) = builder::open_blob(blobs, &entry.sha256).ok()?;
    let mut bytes = Vec::new();
    fh.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// A plan and the rendered compose files behind it (JSON, as the bundle carries them).
#[derive(Default)]
pub(super) struct PlanParts {
    pub plan: proto::DeployPlan,
    pub compose: Option<Vec<u8>>,
    pub old_compose: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_diff_names_what_changed() {
        let old = services(br#"{"services": {"web": {"image": "web:1", "ports": ["80"]}, "db": {"image": "pg:15"}, "old": {"image": "x"}}}"#);
        let new = services(br#"{"services": {"web": {"image": "web:2", "ports": ["80"]}, "db": {"image": "pg:15"}, "cache": {"image": "redis"}}}"#);
        let d = diff_services(&old, &new);
        let by: BTreeMap<&str, &proto::ServiceChange> = d.iter().map(|s| (s.service.as_str(), s)).collect();
        assert_eq!(by["web"].change, "changed");
        assert_eq!((by["web"].old_image.as_str(), by["web"].image.as_str()), ("web:1", "web:2"));
        assert_eq!(by["web"].fields, vec!["image".to_string()]);
        assert_eq!(by["db"].change, "unchanged");
        assert_eq!(by["cache"].change, "added");
        assert_eq!(by["old"].change, "removed");
    }
}
