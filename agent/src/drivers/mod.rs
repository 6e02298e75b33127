//! Drivers: one per platform id (the seed's ids). A driver turns a materialized release into
//! something running. The executor owns ordering, journaling and rollback; a driver only
//! answers its steps. External programs are reached through the [`Runner`] only.
use std::collections::BTreeMap;
use std::path::PathBuf;

use dockfra_common::bundle::{ImageRef, Manifest, PlatformSpec};

use crate::runner::{RunError, Runner};

pub mod docker_compose;
pub mod kubernetes;
pub mod nomad;
pub mod podman;
pub mod slots;
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
    #[error("{step}: `{command}` {}{}", dockfra_common::runner::exit_text(*code), if tail.is_empty() { String::new() } else { format!(": {tail}") })]
    Failed { step: &'static str, command: String, code: Option<i32>, tail: String },
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
    /// Live health of the release between deploys (`status`), when the platform can tell:
    /// `healthy`, `starting`, `unhealthy: …`, or `unknown: …`. `None`: only what the last
    /// deploy saw is known.
    async fn health(&self, _ctx: &StepCtx<'_>) -> Option<String> {
        None
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

/// The driver for a manifest's platform section: one arm per [`PlatformSpec`] variant.
pub fn for_spec(p: &PlatformSpec) -> Box<dyn Driver> {
    match p {
        PlatformSpec::SshRaw(_) => Box::new(ssh_raw::SshRaw),
        PlatformSpec::DockerCompose(_) => Box::new(docker_compose::DockerCompose),
        PlatformSpec::Swarm(_) => Box::new(swarm::Swarm),
        PlatformSpec::Podman(_) => Box::new(podman::Podman),
        PlatformSpec::Kubernetes(_) => Box::new(kubernetes::Kubernetes),
        PlatformSpec::Nomad(_) => Box::new(nomad::Nomad),
    }
}

/// The platform kinds this agent has a driver for (reported in its facts).
pub fn platforms() -> Vec<String> {
    PlatformSpec::KINDS.iter().map(|k| k.to_string()).collect()
}

/// A manifest for unit tests: `platform` with an empty section, app `web`, nothing else set.
#[cfg(test)]
pub(crate) fn test_manifest(platform: dockfra_common::config::Platform) -> Manifest {
    use dockfra_common::bundle::{DockerComposeSpec, PlatformSpec, PodmanSpec, SshRawSpec};
    use dockfra_common::config::Platform as P;
    let compose = DockerComposeSpec {
        project: "web".into(),
        file: "f".into(),
        wait_timeout_secs: 1,
        images: vec![],
        slots: None,
    };
    let spec = match platform {
        P::DockerCompose => PlatformSpec::DockerCompose(compose),
        P::Swarm => PlatformSpec::Swarm(compose),
        P::Podman => PlatformSpec::Podman(PodmanSpec {
            compose,
            quadlet_units: vec![],
            services: vec![],
            use_quadlet: false,
            rootless: false,
            start_machine: false,
            kube_file: None,
        }),
        _ => PlatformSpec::SshRaw(SshRawSpec {
            deploy_path: None,
            service_manager: dockfra_common::config::ServiceManager::None,
            service_name: None,
            pre_script: None,
            post_script: None,
        }),
    };
    Manifest {
        format: dockfra_common::bundle::FORMAT,
        requires: vec![],
        target: "t".into(),
        app: "web".into(),
        version: "v".into(),
        sequence: 1,
        created_unix: 0,
        platform: spec,
        files: vec![],
        health: None,
        keep_releases: 5,
        os: None,
    }
}

/// A verified pair around `m` for unit tests (signatures not made: nothing here checks them).
#[cfg(test)]
pub(crate) fn verified(m: Manifest) -> dockfra_common::bundle::Verified {
    use dockfra_common::bundle::{Action, DesiredState, SignedDocs, Verified};
    let bytes = m.canonical_bytes();
    let bundle_id = dockfra_common::sha256_hex(&bytes);
    let desired = DesiredState {
        format: dockfra_common::bundle::FORMAT,
        requires: vec![],
        target: m.target.clone(),
        app: m.app.clone(),
        action: Action::Deploy,
        sequence: m.sequence,
        bundle_id: bundle_id.clone(),
        deployment_id: "d-test".into(),
        issued_unix: 0,
        expires_unix: u64::MAX,
    };
    let signed = SignedDocs {
        desired: serde_json::to_vec(&desired).unwrap(),
        desired_signature: vec![],
        manifest: bytes,
        manifest_signature: vec![],
    };
    Verified { desired, manifest: m, bundle_id, signed, rotated_to: None }
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
