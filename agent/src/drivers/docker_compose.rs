//! `docker_compose`: runs the coordinator's resolved compose file with the Compose v2 CLI:
//! `docker compose -p <project> -f <release>/.dockfra/compose.yaml --project-directory
//! <release> up -d --remove-orphans --wait`. `--wait` makes the step end only when every
//! service is running and, where it has a healthcheck, healthy. Rollback is the executor's
//! swap back followed by `apply` of the previous release, which recreates what changed.
//! With `strategy: blue-green | canary` (a slot section in the manifest) the release goes to
//! the idle slot and the agent's proxy switches to it: `super::slots`.
use std::time::Duration;

use super::{Driver, DriverError, StepCtx};
use crate::runner::{CommandSpec, RunError};

pub struct DockerCompose;

fn spec<'a>(ctx: &'a StepCtx<'_>) -> Result<&'a dockfra_common::bundle::DockerComposeSpec, DriverError> {
    match &ctx.manifest.platform {
        dockfra_common::bundle::PlatformSpec::DockerCompose(s) => Ok(s),
        other => Err(DriverError::Invalid(format!("the docker_compose driver got a {} manifest", other.platform()))),
    }
}

/// `docker compose -p P -f FILE --project-directory DIR ARGS…`
pub fn compose_command(ctx: &StepCtx<'_>, args: &[&str]) -> Result<CommandSpec, DriverError> {
    let s = spec(ctx)?;
    let file = ctx.release_dir.join(&s.file);
    let mut argv: Vec<String> = vec!["compose".into(), "-p".into(), s.project.clone(), "-f".into()];
    argv.push(file.display().to_string());
    argv.push("--project-directory".into());
    argv.push(ctx.release_dir.display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    Ok(CommandSpec::new("docker", &refs).cwd(&ctx.release_dir).timeout(Duration::from_secs(s.wait_timeout_secs + 60)))
}

/// Load the images a release carries into an engine that lacks them — each archive
/// hash-checked again right before the engine sees it — before `current` moves.
pub(crate) async fn load_images(
    images: &[dockfra_common::bundle::ImageRef],
    ctx: &StepCtx<'_>,
) -> Result<(), DriverError> {
    use crate::engine;
    for img in images {
        let has = engine::has_image(&img.id).await.map_err(DriverError::Invalid)?;
        if has {
            continue;
        }
        let archive = ctx.blobs.join(&img.sha256);
        check_archive(img, &archive)?;
        engine::load_image(&archive).await.map_err(|e| DriverError::Invalid(format!("image {}: {e}", img.name)))?;
        if !engine::has_image(&img.id).await.map_err(DriverError::Invalid)? {
            return Err(DriverError::Invalid(format!("image {}: loading did not produce image {}", img.name, img.id)));
        }
    }
    Ok(())
}

/// Hash-check a carried image archive again right before an engine sees it.
pub(crate) fn check_archive(
    img: &dockfra_common::bundle::ImageRef,
    archive: &std::path::Path,
) -> Result<(), DriverError> {
    let actual = dockfra_common::sha256_file(archive)
        .map(|(h, _)| h)
        .map_err(|e| DriverError::Invalid(format!("image {}: {e}", img.name)))?;
    if actual != img.sha256 {
        return Err(DriverError::Invalid(format!(
            "image {}: archive {} does not match its hash (got {actual}); refused",
            img.name, img.sha256
        )));
    }
    Ok(())
}

async fn run(ctx: &StepCtx<'_>, step: &'static str, args: &[&str]) -> Result<(), DriverError> {
    super::run_step(ctx, step, &compose_command(ctx, args)?).await
}

#[tonic::async_trait]
impl Driver for DockerCompose {
    async fn validate(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        spec(ctx)?;
        let probe = CommandSpec::new("docker", &["compose", "version", "--short"]).timeout(Duration::from_secs(10));
        match ctx.runner.run(&probe).await {
            Err(e @ RunError::NotFound { .. }) => Err(DriverError::Run { step: "validate", source: e }),
            Err(e) => Err(DriverError::Run { step: "validate", source: e }),
            Ok(o) if !o.success() => Err(DriverError::Invalid(format!(
                "validate: `docker compose` (Compose v2) is not available: {}",
                o.tail()
            ))),
            Ok(_) => {
                if spec(ctx)?.slots.is_some() {
                    super::slots::haproxy()?;
                }
                run(ctx, "validate", &["config", "--quiet"]).await
            }
        }
    }

    async fn pre_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        load_images(&spec(ctx)?.images, ctx).await
    }

    async fn apply(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let s = spec(ctx)?;
        if let Some(sl) = &s.slots {
            return super::slots::Slots::new(ctx, s, sl, super::slots::Engine::Docker).apply().await;
        }
        let timeout = s.wait_timeout_secs.to_string();
        run(ctx, "compose up", &["up", "-d", "--remove-orphans", "--wait", "--wait-timeout", &timeout]).await
    }

    async fn post_deploy(&self, _ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        Ok(())
    }

    async fn health(&self, ctx: &StepCtx<'_>) -> Option<String> {
        let s = spec(ctx).ok()?;
        let live = s
            .slots
            .as_ref()
            .and_then(|sl| super::slots::Slots::new(ctx, s, sl, super::slots::Engine::Docker).live_services());
        Some(match crate::engine::compose_containers(&s.project).await {
            Ok(mut cs) => {
                // Behind the proxy only the shared services and the live slot count; compose
                // names a container PROJECT-SERVICE-N.
                if let Some(live) = live {
                    cs.retain(|c| live.iter().any(|svc| c.name.starts_with(&format!("{}-{svc}-", s.project))));
                }
                crate::engine::compose_health(&cs)
            }
            Err(e) => format!("unknown: {e}"),
        })
    }

    async fn teardown(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let s = spec(ctx)?;
        if let Some(sl) = &s.slots {
            super::slots::Slots::new(ctx, s, sl, super::slots::Engine::Docker).teardown().await;
        }
        run(ctx, "compose down", &["down", "--remove-orphans", "--timeout", "10"]).await
    }

    async fn remove_images(
        &self,
        _ctx: &StepCtx<'_>,
        images: &[dockfra_common::bundle::ImageRef],
    ) -> (Vec<String>, Vec<String>) {
        let (mut gone, mut kept) = (Vec::new(), Vec::new());
        for img in images {
            match crate::engine::remove_image(&img.id).await {
                Ok(()) => gone.push(img.name.clone()),
                Err(e) => kept.push(format!("{}: {e}", img.name)),
            }
        }
        (gone, kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::FakeRunner;
    use dockfra_common::bundle::{DockerComposeSpec, Manifest};
    use dockfra_common::config::Platform;

    #[tokio::test]
    async fn argv_is_the_compose_cli() {
        let m = Manifest {
            platform: dockfra_common::bundle::PlatformSpec::DockerCompose(DockerComposeSpec {
                project: "shop".into(),
                file: ".dockfra/compose.yaml".into(),
                wait_timeout_secs: 30,
                images: vec![],
                slots: None,
            }),
            ..crate::drivers::test_manifest(Platform::DockerCompose)
        };
        let runner = FakeRunner::default();
        let ctx = StepCtx {
            manifest: &m,
            release_dir: "/r/1-abc".into(),
            current_link: "/r/current".into(),
            env: Default::default(),
            runner: &runner,
            blobs: "/tmp".into(),
        };
        DockerCompose.apply(&ctx).await.unwrap();
        DockerCompose.teardown(&ctx).await.unwrap();
        let calls = runner.calls.lock().unwrap().clone();
        assert_eq!(calls[0].program, "docker");
        assert_eq!(
            calls[0].args,
            [
                "compose",
                "-p",
                "shop",
                "-f",
                "/r/1-abc/.dockfra/compose.yaml",
                "--project-directory",
                "/r/1-abc",
                "up",
                "-d",
                "--remove-orphans",
                "--wait",
                "--wait-timeout",
                "30"
            ]
        );
        assert_eq!(&calls[1].args[7..], ["down", "--remove-orphans", "--timeout", "10"]);
        let missing = FakeRunner { missing: vec!["docker".into()], ..Default::default() };
        let ctx = StepCtx { runner: &missing, ..ctx };
        assert_eq!(DockerCompose.validate(&ctx).await.unwrap_err().to_string(), "validate: docker not found on PATH");
    }
}
