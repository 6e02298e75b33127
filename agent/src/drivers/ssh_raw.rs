//! `ssh_raw`: plain files plus `pre_script` / `post_script` and a service manager (`none`,
//! `systemd`, `supervisord`, `pm2`, `openrc`, `launchd`), each through its own CLI. Rollback is the executor's
//! symlink swap back followed by this driver's `apply` for the previous release.
use dockfra_common::config::ServiceManager;

use super::{Driver, DriverError, StepCtx};
use crate::runner::CommandSpec;

pub struct SshRaw;

fn spec<'a>(ctx: &'a StepCtx<'_>) -> Result<&'a dockfra_common::bundle::SshRawSpec, DriverError> {
    match &ctx.manifest.platform {
        dockfra_common::bundle::PlatformSpec::SshRaw(s) => Ok(s),
        other => Err(DriverError::Invalid(format!("the ssh_raw driver got a {} manifest", other.platform()))),
    }
}

/// The argv that restarts `name` under `manager`, or None for `none`.
pub fn service_command(manager: ServiceManager, name: &str) -> Option<CommandSpec> {
    match manager {
        ServiceManager::None => None,
        ServiceManager::Systemd => Some(CommandSpec::new("systemctl", &["restart", name])),
        ServiceManager::Supervisord => Some(CommandSpec::new("supervisorctl", &["restart", name])),
        ServiceManager::Pm2 => Some(CommandSpec::new("pm2", &["restart", name, "--update-env"])),
        ServiceManager::OpenRc => Some(CommandSpec::new("rc-service", &[name, "restart"])),
        ServiceManager::Launchd => {
            let target = format!("{}/{name}", launchd_domain());
            Some(CommandSpec::new("launchctl", &["kickstart", "-k", &target]))
        }
    }
}

/// launchd's domain for jobs of the agent's user: `system` for root (LaunchDaemons), else the
/// user's GUI session `gui/UID` (LaunchAgents), UID being the owner of $HOME.
pub fn launchd_domain() -> String {
    use std::os::unix::fs::MetadataExt as _;
    if dockfra_common::is_root() {
        return "system".into();
    }
    std::env::var_os("HOME")
        .and_then(|h| std::fs::metadata(h).ok())
        .map(|m| format!("gui/{}", m.uid()))
        .unwrap_or_else(|| "system".into())
}

async fn script(ctx: &StepCtx<'_>, step: &'static str, script: &Option<String>) -> Result<(), DriverError> {
    let Some(s) = script.as_deref().filter(|s| !s.trim().is_empty()) else { return Ok(()) };
    super::run_step(ctx, step, &CommandSpec::script(s).cwd(&ctx.release_dir).env(&ctx.env)).await
}

#[tonic::async_trait]
impl Driver for SshRaw {
    async fn validate(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let s = spec(ctx)?;
        if let Some(cmd) = service_command(s.service_manager, "x") {
            if crate::runner::which(&cmd.program).is_none() {
                return Err(DriverError::Tool {
                    step: "validate",
                    manager: s.service_manager.as_str(),
                    source: crate::runner::RunError::NotFound { program: cmd.program },
                });
            }
        }
        Ok(())
    }

    async fn pre_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        script(ctx, "pre_script", &spec(ctx)?.pre_script).await
    }

    async fn apply(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        let s = spec(ctx)?;
        let name = s.service_name.clone().unwrap_or_else(|| ctx.manifest.app.clone());
        let Some(cmd) = service_command(s.service_manager, &name) else { return Ok(()) };
        let manager = s.service_manager.as_str();
        let out = ctx.runner.run(&cmd).await.map_err(|source| DriverError::Tool {
            step: "service restart",
            manager,
            source,
        })?;
        if !out.success() {
            return Err(DriverError::Failed {
                step: "service restart",
                command: cmd.display(),
                code: out.code,
                tail: out.tail(),
            });
        }
        Ok(())
    }

    async fn post_deploy(&self, ctx: &StepCtx<'_>) -> Result<(), DriverError> {
        script(ctx, "post_script", &spec(ctx)?.post_script).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::FakeRunner;
    use dockfra_common::bundle::{Manifest, SshRawSpec};
    use dockfra_common::config::Platform;

    fn manifest(m: ServiceManager) -> Manifest {
        Manifest {
            app: "myapp".into(),
            platform: dockfra_common::bundle::PlatformSpec::SshRaw(SshRawSpec {
                deploy_path: None,
                service_manager: m,
                service_name: None,
                pre_script: Some("echo pre".into()),
                post_script: None,
            }),
            ..crate::drivers::test_manifest(Platform::SshRaw)
        }
    }

    #[tokio::test]
    async fn each_service_manager_through_its_cli() {
        for (m, argv) in [
            (ServiceManager::Systemd, vec!["systemctl", "restart", "myapp"]),
            (ServiceManager::Supervisord, vec!["supervisorctl", "restart", "myapp"]),
            (ServiceManager::Pm2, vec!["pm2", "restart", "myapp", "--update-env"]),
            (ServiceManager::OpenRc, vec!["rc-service", "myapp", "restart"]),
            (ServiceManager::Launchd, vec!["launchctl", "kickstart", "-k", &format!("{}/myapp", launchd_domain())]),
        ] {
            let runner = FakeRunner::default();
            let man = manifest(m);
            let ctx = crate::drivers::test_ctx(&man, &runner);
            SshRaw.pre_deploy(&ctx).await.unwrap();
            SshRaw.apply(&ctx).await.unwrap();
            let calls = runner.calls.lock().unwrap().clone();
            assert_eq!(calls[0].args, vec!["-c", "echo pre"]);
            let got: Vec<&str> =
                std::iter::once(calls[1].program.as_str()).chain(calls[1].args.iter().map(String::as_str)).collect();
            assert_eq!(got, argv);
        }
        let runner = FakeRunner::default();
        let man = manifest(ServiceManager::None);
        let ctx = crate::drivers::test_ctx(&man, &runner);
        SshRaw.apply(&ctx).await.unwrap();
        assert!(runner.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_missing_service_manager_is_named() {
        let runner = FakeRunner { missing: vec!["supervisorctl".into()], ..Default::default() };
        let man = manifest(ServiceManager::Supervisord);
        let ctx = crate::drivers::test_ctx(&man, &runner);
        let e = SshRaw.apply(&ctx).await.unwrap_err().to_string();
        assert_eq!(e, "service restart: supervisorctl not found on PATH (service_manager: supervisord)");
    }
}
