//! `dockfra-coord demo`: a real deploy on this machine, on embedded defaults. It makes a temp
//! dir with the bundled example project, a coordinator state dir and an agent state dir,
//! serves the coordinator in-process on 127.0.0.1, starts a real `dockfra-agent` (found next
//! to this binary or on PATH) on loopback, deploys v1, then v2, rolls back, and prints status.
//! Nothing outside the temp dir is touched, and nothing but loopback is dialled.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use dockfra_common::proto;

use crate::cli::{self, Output};
use crate::state::StateDir;

const TARGETS: &str = include_str!("../../examples/hello/deploy-targets.yaml");
const INDEX: &str = include_str!("../../examples/hello/app/index.html");
const IGNORE: &str = include_str!("../../examples/hello/app/.dockfraignore");

fn agent_binary() -> Result<PathBuf> {
    let beside = std::env::current_exe()?.with_file_name("dockfra-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("dockfra-agent")).find(|p| p.is_file()))
        .context(
            "dockfra-agent not found next to dockfra-coord or on PATH (build the workspace: cargo build --release)",
        )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write_app(dir: &Path, version: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("index.html"), INDEX.replace("__VERSION__", version))?;
    std::fs::write(dir.join(".dockfraignore"), IGNORE)?;
    std::fs::write(dir.join("debug.log"), "left out of the bundle by .dockfraignore\n")?;
    Ok(())
}

struct Child(tokio::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

pub async fn run(keep: bool) -> Result<u8> {
    let base = std::env::temp_dir().join(format!("dockfra-demo-{}", std::process::id()));
    let r = demo(&base).await;
    if keep {
        eprintln!("demo files kept in {}", base.display());
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    r
}

async fn step(title: &str) {
    println!("\n== {title}");
}

async fn demo(base: &Path) -> Result<u8> {
    let project = base.join("project");
    let deploy_path = base.join("deploy");
    let port = free_port()?;
    std::fs::create_dir_all(&project)?;
    std::fs::write(
        project.join("deploy-targets.yaml"),
        TARGETS.replace("__PORT__", &port.to_string()).replace("__DEPLOY_PATH__", &deploy_path.display().to_string()),
    )?;
    write_app(&project.join("app"), "v1")?;

    step("init: CA, coordinator certificate, signing key, SQLite store").await;
    let state = StateDir::new(&base.join("coordinator"));
    state.init("127.0.0.1:0", Duration::from_secs(86400), "admin")?;
    println!("state dir {}", state.root.display());

    let coord = crate::server::Coordinator::open(StateDir::new(&state.root), vec![cli::project_file(&project)?])?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        coord
            .serve("127.0.0.1:0", None, async {
                let _ = stop_rx.await;
            })
            .await
    });
    let mut tries = 0;
    while !state.serve_addr_file().exists() {
        tries += 1;
        if tries > 100 {
            bail!("the coordinator did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = std::fs::read_to_string(state.serve_addr_file())?;
    println!("coordinator serving gRPC (mTLS) on {addr}");
    let mut admin = cli::admin_client(&state, None, "admin").await?;

    step("enroll: one-time join token, agent key made locally, certificate for target `local`").await;
    let token = admin
        .create_token(proto::CreateTokenRequest { target: "local".into(), ttl_ms: 600_000 })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .token;
    let agent = agent_binary()?;
    let agent_state = base.join("agent");
    let st = tokio::process::Command::new(&agent)
        .arg("--state-dir")
        .arg(&agent_state)
        .args(["enroll", "--coordinator", &format!("https://{addr}"), "--token", &token, "--target", "local"])
        .status()
        .await?;
    if !st.success() {
        bail!("agent enrollment failed");
    }
    let _agent = Child(
        tokio::process::Command::new(&agent)
            .arg("--state-dir")
            .arg(&agent_state)
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .env("DOCKFRA_LOG", "warn")
            .kill_on_drop(true)
            .spawn()?,
    );
    // Wait for the push endpoint (the agent detects its runtimes first: seconds on a busy host).
    let mut listening = false;
    for _ in 0..1200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            listening = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !listening {
        bail!("the demo's agent did not listen on 127.0.0.1:{port} within 60 s");
    }

    let mut code = 0;
    for (title, version) in [("deploy v1", "v1"), ("deploy v2 (only the changed file travels)", "v2")] {
        step(title).await;
        write_app(&project.join("app"), version)?;
        let s = admin
            .deploy(proto::DeployRequest { target: "local".into(), version: version.into(), ..Default::default() })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        code = code.max(cli::follow("local", s, Output::Table).await?);
    }
    step("rollback to the previous release").await;
    let s = admin
        .rollback(proto::RollbackRequest { target: "local".into(), ..Default::default() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    code = code.max(cli::follow("local", s, Output::Table).await?);

    step("status").await;
    let list = admin
        .status(proto::TargetRequest { target: "local".into(), ..Default::default() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let v = list.targets.first().context("the coordinator reported no target")?;
    println!(
        "target {}: {}, current {} (version {}), previous {}, health {}",
        v.target, v.state, v.current_release, v.current_version, v.previous_release, v.health
    );
    let current = deploy_path.join("hello/current");
    println!(
        "{} -> {}",
        current.display(),
        std::fs::read_link(&current).map(|p| p.display().to_string()).unwrap_or_default()
    );
    let html = std::fs::read_to_string(current.join("index.html")).unwrap_or_default();
    println!("live index.html says: {}", html.lines().find(|l| l.contains("version")).unwrap_or("?"));
    let _ = stop_tx.send(());
    let _ = server.await;
    if code == 0 {
        println!("\ndemo finished: deployed v1 and v2 and rolled back, all on loopback");
    }
    Ok(code)
}
