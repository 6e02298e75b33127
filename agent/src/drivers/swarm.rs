//! `swarm`: `docker stack deploy` of the coordinator's resolved stack file on a swarm
//! manager, then a wait for convergence read from the service and task states (they lag, so
//! the state must hold for a while), failing fast when a task of this deploy fails — a
//! failed healthcheck included. Rollback is the executor's swap back and a redeploy of the
//! previous release's stack file.
use std::time::Duration;

use super::{Driver, DriverError, StepCtx};
use crate::runner::CommandSpec;

pub struct Swarm;

fn spec<'a>(ctx: &'a StepCtx<'_>) -> Result<&'a dockfra_common::bundle::DockerComposeSpec, DriverError> {
    match &ctx.manifest.platform {
        dockfra_common::bundle::PlatformSpec::Swarm(s) => Ok(s),
        other => Err(DriverError::Invalid(format!("the swarm driver got a {} manifest", other.platform()))),
    }
}

async fn docker(ctx: &StepCtx<'_>, step: &'static str, args: &[&str]) -> Result<(), DriverError> {
    let cmd = CommandSpec::new("docker", args).cwd(&ctx.release_dir).timeout(Duration::from_secs(300));
    super::run_step(ctx, step, &cmd).await
}

#[tonic::async_trait]
impl Driver for Swarm {
    async fn validate(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        spec(ctx)?;
        // The CLI is needed for `stack deploy`; find out now, before `current` moves.
        if crate::runner::which("docker").is_none() {
            return Err(DriverError::Run {
                step: "validate",
                source: crate::runner::RunError::NotFound { program: "docker".into() },
            });
        }
        let facts = crate::engine::detect().await.map_err(|e| DriverError::Invalid(format!("validate: {e}")))?;
        if facts.swarm != "active" {
            return Err(DriverError::Invalid(format!(
                "validate: this Docker engine is not part of a swarm (swarm {}): run `docker swarm init` on a manager",
                facts.swarm
            )));
        }
        Ok(())
    }

    async fn pre_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        super::docker_compose::load_images(&spec(ctx)?.images, ctx).await
    }

    async fn apply(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let s = spec(ctx)?;
        let before = crate::engine::stack_state(&s.project)
            .await
            .map(|(_, tasks)| tasks.into_iter().map(|t| t.id).collect())
            .unwrap_or_default();
        let file = ctx.release_dir.join(&s.file).display().to_string();
        docker(
            ctx,
            "stack deploy",
            &["stack", "deploy", "--resolve-image", "never", "--prune", "-c", &file, &s.project],
        )
        .await?;
        crate::engine::wait_stack(&s.project, &before, Duration::from_secs(s.wait_timeout_secs))
            .await
            .map_err(|e| DriverError::Invalid(format!("stack {}: {e}", s.project)))
    }

    async fn post_deploy(&self, _ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        Ok(())
    }

    /// `stack rm` returns before the stack's networks are gone; a deploy right after would
    /// meet them half-removed, so wait (up to 30 s) until none is left.
    async fn health(&self, ctx: &StepCtx<'_>) -> Option<String> {
        let s = spec(ctx).ok()?;
        Some(match crate::engine::stack_state(&s.project).await {
            Ok((services, tasks)) => crate::engine::stack_health(&services, &tasks),
            Err(e) => format!("unknown: {e}"),
        })
    }

    async fn teardown(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let stack = &spec(ctx)?.project;
        docker(ctx, "stack rm", &["stack", "rm", stack]).await?;
        let label = format!("label=com.docker.stack.namespace={stack}");
        let list =
            CommandSpec::new("docker", &["network", "ls", "-q", "--filter", &label]).timeout(Duration::from_secs(10));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = ctx.runner.run(&list).await.map_err(|source| DriverError::Run { step: "stack rm", source })?;
            if out.success() && out.stdout.trim().is_empty() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(DriverError::Invalid(format!(
                    "stack rm: the networks of stack {stack} are still there after 30s: {}",
                    out.stdout.split_whitespace().collect::<Vec<_>>().join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
