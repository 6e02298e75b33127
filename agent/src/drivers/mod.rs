//! Drivers: one per platform id (the seed's ids). A driver turns a materialized release into
//! something running. The executor owns ordering, journaling and rollback; a driver only
//! answers its steps. External programs are reached through the [`Runner`] only.
use std::collections::BTreeMap;
use std::path::PathBuf;

use dockfra_common::bundle::{ImageRef, Manifest};
use dockfra_common::config::Platform;

use crate::runner::{RunError, Runner};

pub mod docker_compose;
pub mod podman;
pub mod ssh_raw;
pub mod swarm;

/// What a driver step needs to know.
pub struct StepCtx<'a> {
    pub manifest: &'a Manifest,
    pub release_dir: PathBuf,
    pub current_link: PathBuf,
    pub env: BTreeMap<String, String>,
    pub runner: &'a dyn Runner,
    /// The agent's verified blob store (carried images are read from here).
    pub blobs: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{step}: {source} (service_manager: {manager})")]
    Tool { step: &'static str, manager: &'static str, source: RunError },
    #[error("{step}: {source}")]
    Run { step: &'static str, source: RunError },
    #[error("{step}: `{command}` exited with {code:?}: {tail}")]
    Failed { step: &'static str, command: String, code: Option<i32>, tail: String },
    #[error("platform {0} is not supported by this agent yet")]
    Unsupported(&'static str),
    #[error("{0}")]
    Invalid(String),
}

#[tonic::async_trait]
pub trait Driver: Send + Sync {
    /// Can this release run here (tools present, config sane)? Changes nothing.
    async fn validate(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError>;
    /// Before `current` moves (the seed's `pre_script`).
    async fn pre_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError>;
    /// After `current` points at the release: make it run (service restart, `up`, …).
    async fn apply(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError>;
    /// After apply (the seed's `post_script`).
    async fn post_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError>;
    /// Stop what `apply` started, when a first release fails and there is nothing to go back to.
    async fn teardown(&self, _ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        Ok(())
    }
    /// Remove images that pruned releases carried and no kept release carries. Returns what
    /// it removed and what the engine refused to remove (in use, tagged elsewhere), with why.
    async fn remove_images(&self, _ctx: &StepCtx<'_>, _images: &[ImageRef]) -> (Vec<String>, Vec<String>) {
        (Vec::new(), Vec::new())
    }
}

/// Run one step's command through the runner; a non-zero exit is a [`DriverError::Failed`]
/// naming the step, the command and the tail of its output.
pub(crate) async fn run_step(
    ctx: &StepCtx<'_>,
    step: &'static str,
    cmd: &crate::runner::CommandSpec,
) -> Result<(), DriverError> {
    let out = ctx.runner.run(cmd).await.map_err(|source| DriverError::Run { step, source })?;
    if !out.success() {
        return Err(DriverError::Failed { step, command: cmd.display(), code: out.code, tail: out.tail() });
    }
    Ok(())
}

pub fn for_platform(p: Platform) -> Result<Box<dyn Driver>, DriverError> {
    match p {
        Platform::SshRaw => Ok(Box::new(ssh_raw::SshRaw)),
        Platform::DockerCompose => Ok(Box::new(docker_compose::DockerCompose)),
        Platform::Swarm => Ok(Box::new(swarm::Swarm)),
        Platform::Podman => Ok(Box::new(podman::Podman)),
        other => Err(DriverError::Unsupported(other.as_str())),
    }
}

/// A manifest for unit tests: `platform`, app `web`, no platform section, nothing else set.
#[cfg(test)]
pub(crate) fn test_manifest(platform: dockfra_common::config::Platform) -> Manifest {
    Manifest {
        format: dockfra_common::bundle::FORMAT,
        target: "t".into(),
        app: "web".into(),
        version: "v".into(),
        sequence: 1,
        platform,
        created_unix: 0,
        files: vec![],
        ssh_raw: None,
        docker_compose: None,
        swarm: None,
        podman: None,
        health: None,
        keep_releases: 5,
        os: None,
    }
}

/// A step context for driver unit tests: fixed paths, the given manifest and runner.
#[cfg(test)]
pub(crate) fn test_ctx<'a>(manifest: &'a Manifest, runner: &'a dyn Runner) -> StepCtx<'a> {
    StepCtx {
        manifest,
        release_dir: "/tmp".into(),
        current_link: "/tmp".into(),
        env: BTreeMap::new(),
        runner,
        blobs: "/tmp".into(),
    }
}
