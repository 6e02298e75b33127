//! The agent's CLI. Thin: parse, call into the library, print, map to exit codes
//! (0 ok, 1 error, 2 usage, 3 a deploy or apply that did not end live and healthy).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;

use dockfra_common::bundle;
use dockfra_common::proto;

use crate::blobs::BlobWriter;
use crate::executor::{Executor, Limits, NoSource, Refusal};
use crate::runner::{Runner, SystemRunner};
use crate::state::StateDir;

#[derive(Parser, Debug)]
#[command(
    name = "dockfra-agent",
    version = dockfra_common::VERSION,
    about = "dockfra agent: verifies signed bundles and carries out releases on this host",
    long_about = "dockfra agent: verifies signed bundles and carries out releases on this host \
(release dirs with an atomic `current` swap, health checks, automatic rollback).\n\n\
First steps:\n  dockfra-agent enroll --coordinator https://COORD:7443 --token dkf1....\n  dockfra-agent run\n\n\
When something looks wrong:\n  dockfra-agent status          # STATE ERROR, recent results, disk use\n  \
dockfra-agent verify          # kept releases against their signed manifests\n  \
dockfra-agent state repair    # after a lost or corrupt state.json (agent stopped)"
)]
pub struct Cli {
    /// Agent config file (YAML: `state_dir`, `listen`, `coordinator`, `max_order_age`,
    /// `max_order_lifetime`); flags win over it. The packages install /etc/dockfra/agent.yaml
    /// and run the agent with it.
    #[arg(long, global = true, env = "DOCKFRA_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory (identity, journal, blobs, releases). Default: /var/lib/dockfra-agent for
    /// root, else ~/.local/share/dockfra-agent (macOS: ~/Library/Application Support/dockfra-agent).
    #[arg(long, global = true, env = "DOCKFRA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Log more (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Join a coordinator with a one-time token (`dockfra-coord token create TARGET`).
    Enroll {
        /// The coordinator's gRPC address, e.g. https://10.0.0.1:7443 (default: `coordinator`
        /// in the --config file).
        #[arg(long)]
        coordinator: Option<String>,
        #[arg(long, env = "DOCKFRA_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Refuse a token that names another target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Run in the mode the target declares: push (listen for the coordinator) or pull (hold a
    /// watch stream to the coordinator, which says at once when an order waits; poll on the
    /// interval whenever the stream cannot be held).
    Run {
        /// Push mode: the address to listen on (default: `listen` in the --config file, else
        /// 0.0.0.0:<agent.port>).
        #[arg(long)]
        listen: Option<String>,
    },
    /// This agent's target, apps, current and previous releases.
    Status {
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Apply an offline bundle (`dockfra-coord bundle export`), with the same verification.
    Apply { file: PathBuf },
    /// Local emergency rollback of APP to its previous release (or --to RELEASE).
    Rollback {
        app: String,
        #[arg(long)]
        to: Option<String>,
    },
    /// Ask the running pull agent to poll now (sends it SIGHUP).
    PollNow,
    /// Print what this host runs: OS, architecture, runtimes.
    Detect,
    /// Re-verify the kept releases: the signed manifest that installed each (by the pinned
    /// signing key or one it replaced) and every file on disk against it. Exit 1 on any
    /// mismatch.
    Verify {
        /// Only this app (default: every app).
        app: Option<String>,
    },
    /// The agent's own state files.
    #[command(subcommand)]
    State(StateCmd),
}

#[derive(Subcommand, Debug)]
pub enum StateCmd {
    /// Rebuild state.json after it was lost or corrupted, from floor.json and the release
    /// dirs; the replay floor never goes down. Stop the agent first.
    Repair,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let level = ["info", "debug", "trace"][cli.verbose.min(2) as usize];
    // `DOCKFRA_LOG=warn,dockfra_agent=debug` style targets (crate::log: the agent stays small).
    let default = format!("warn,dockfra_agent={level}");
    let filter = std::env::var("DOCKFRA_LOG")
        .ok()
        .and_then(|s| crate::log::Filter::parse(&s))
        .or_else(|| crate::log::Filter::parse(&default))
        .expect("the default directives parse");
    let _ = tracing::subscriber::set_global_default(crate::log::Log(filter));
    // `run`: an upgrade on trial is supervised (or the committed binary runs) before anything
    // else starts (crate::upgrade).
    if matches!(cli.command, Command::Run { .. }) {
        if let Ok(dir) = state_dir_of(&cli) {
            let state = StateDir::new(&dir);
            if state.is_enrolled() {
                if let crate::upgrade::Launch::Exit(code) = crate::upgrade::launch(&state) {
                    return ExitCode::from(code);
                }
            }
        }
        crate::upgrade::watch_supervisor();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(cli));
    drop(rt);
    if crate::upgrade::restart_requested() {
        return crate::upgrade::reexec();
    }
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            use dockfra_common::diagnose::{self, Diagnosis};
            let text = format!("{e:#}");
            let d = e
                .chain()
                .find_map(|c| c.downcast_ref::<std::io::Error>().and_then(diagnose::from_io))
                .map(Diagnosis::of)
                .or_else(|| diagnose::from_text(&text))
                .unwrap_or_else(|| Diagnosis::of(diagnose::Category::Runtime));
            eprintln!("error: {text}\n  category: {}\n  fix: {}", d.category, d.fix);
            ExitCode::from(1)
        }
    }
}

fn executor(state: &StateDir, runner: Arc<dyn Runner>, limits: Limits) -> Result<Executor> {
    let cfg = state.config()?;
    state.signing_key()?;
    Ok(Executor::new(state.clone(), cfg.target, runner, limits))
}

/// `enroll` run as root (`sudo dockfra-agent --config … enroll`) into a state dir that a
/// service user owns (the packages' `dockfra`): hand what it wrote to that user, or the
/// service could not read its own key.
fn give_to_state_owner(root: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = std::fs::metadata(root).with_context(|| format!("{}", root.display()))?;
    if !dockfra_common::is_root() || owner.uid() == 0 {
        return Ok(());
    }
    fn walk(p: &std::path::Path, uid: u32, gid: u32) -> std::io::Result<()> {
        let m = std::fs::symlink_metadata(p)?;
        if m.uid() == 0 {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(p)? {
                walk(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    walk(root, owner.uid(), owner.gid()).with_context(|| format!("cannot hand {} to its owner", root.display()))
}

/// The agent's config file (`--config`): what a package or a service definition sets once.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub state_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub coordinator: Option<String>,
    /// Refuse orders signed longer ago than this (e.g. `1d`; default: no limit but expiry).
    pub max_order_age: Option<String>,
    /// Refuse orders signed to stay valid longer than this (default `30d`, the longest an
    /// offline bundle can be exported for; `none` lifts it).
    pub max_order_lifetime: Option<String>,
}

fn parse_limit(
    key: &str,
    v: &Option<String>,
    default: Option<std::time::Duration>,
) -> Result<Option<std::time::Duration>> {
    match v.as_deref().map(str::trim) {
        None => Ok(default),
        Some("none") => Ok(None),
        Some(s) => dockfra_common::config::parse_duration(s).map(Some).map_err(|e| anyhow::anyhow!("{key}: {e}")),
    }
}

impl AgentFile {
    /// The order limits this file sets (defaults where it is silent).
    pub fn limits(&self) -> Result<Limits> {
        let d = Limits::default();
        Ok(Limits {
            max_order_age: parse_limit("max_order_age", &self.max_order_age, d.max_order_age)?,
            max_order_lifetime: parse_limit("max_order_lifetime", &self.max_order_lifetime, d.max_order_lifetime)?,
        })
    }
}

impl AgentFile {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        if text.trim().is_empty() || text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Ok(Self::default());
        }
        let f: Self = serde_yaml_ng::from_str(&text).with_context(|| {
            format!(
                "{}: not a valid agent config (keys: state_dir, listen, coordinator, max_order_age, max_order_lifetime)",
                path.display()
            )
        })?;
        f.limits().with_context(|| format!("{}", path.display()))?;
        Ok(f)
    }
}

/// Exit status (EX_CONFIG) for what only an operator can fix: not enrolled yet, or a bad
/// --config file. A service manager should not restart it (the systemd unit says
/// `RestartPreventExitStatus=78`).
pub const NOT_ENROLLED: u8 = 78;

/// The state dir: `--state-dir`, else the config file's `state_dir`, else the default; made
/// absolute (paths under it end up in symlinks and in the journal).
fn state_dir_of(cli: &Cli) -> Result<std::path::PathBuf> {
    let from_file = match &cli.config {
        Some(p) => AgentFile::load(p).ok().and_then(|f| f.state_dir),
        None => None,
    };
    let dir = cli.state_dir.clone().or(from_file).unwrap_or_else(|| dockfra_common::default_state_dir("dockfra-agent"));
    std::path::absolute(&dir).with_context(|| format!("bad --state-dir {}", dir.display()))
}

pub async fn run(cli: Cli) -> Result<u8> {
    let file = match &cli.config {
        Some(p) => match AgentFile::load(p) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(NOT_ENROLLED);
            }
        },
        None => AgentFile::default(),
    };
    let state = StateDir::new(&state_dir_of(&cli)?);
    let runner: Arc<dyn Runner> = Arc::new(SystemRunner);
    let limits = file.limits()?;
    let needs_identity =
        matches!(cli.command, Command::Run { .. } | Command::Status { .. } | Command::PollNow | Command::Verify { .. });
    if needs_identity && !state.is_enrolled() {
        eprintln!(
            "error: not enrolled: {} holds no identity yet; enroll first: dockfra-agent{} enroll --coordinator https://COORD:7443 --token TOKEN",
            state.root.display(),
            cli.config.as_ref().map(|c| format!(" --config {}", c.display())).unwrap_or_default()
        );
        return Ok(NOT_ENROLLED);
    }
    match cli.command {
        Command::Enroll { coordinator, token, target } => {
            let Some(coordinator) = coordinator.or(file.coordinator.clone()) else {
                anyhow::bail!("enroll needs the coordinator's address: --coordinator https://COORD:7443 (or `coordinator:` in the --config file)");
            };
            let cfg = crate::net::enroll(&state, &coordinator, &token, target.as_deref(), runner.as_ref()).await?;
            give_to_state_owner(&state.root)?;
            println!("enrolled as target {} ({} mode); start with `dockfra-agent run`", cfg.target, cfg.mode);
            Ok(0)
        }
        Command::Run { listen } => run_agent(&state, runner, limits, listen.or(file.listen.clone())).await,
        Command::Status { output } => {
            let exec = executor(&state, runner, limits)?;
            let st = exec.status(None).await;
            let cfg = state.config()?;
            if output == Output::Json {
                let apps: Vec<_> = st
                    .apps
                    .iter()
                    .map(|a| {
                        serde_json::json!({"app": a.app, "current_release": a.current_release, "previous_release": a.previous_release,
                            "current_version": a.current_version, "current_sequence": a.current_sequence, "health": a.health,
                            "releases": a.releases, "last_result": a.last_result})
                    })
                    .collect();
                let disk = st.disk.unwrap_or_default();
                let v = serde_json::json!({"target": st.target, "mode": cfg.mode, "coordinator": cfg.coordinator,
                    "last_desired_sequence": st.last_desired_sequence, "apps": apps, "state_error": st.state_error,
                    "in_flight": st.in_flight,
                    "recent": st.recent.iter().map(|r| serde_json::json!({"deployment_id": r.deployment_id,
                        "result": r.result, "release": r.release, "message": r.message})).collect::<Vec<_>>(),
                    "disk": {"blobs": disk.blobs, "blobs_bytes": disk.blobs_bytes, "releases_bytes": disk.releases_bytes,
                        "free_bytes": disk.free_bytes, "total_bytes": disk.total_bytes}});
                println!("{v}");
            } else {
                println!("target: {} ({} mode, coordinator {})", st.target, cfg.mode, cfg.coordinator);
                if !st.state_error.is_empty() {
                    println!("STATE ERROR: {}", st.state_error);
                }
                for a in &st.apps {
                    println!(
                        "app {}: current {} (version {}), previous {}, health {}, last result {}",
                        a.app,
                        or_dash(&a.current_release),
                        or_dash(&a.current_version),
                        or_dash(&a.previous_release),
                        a.health,
                        or_dash(&a.last_result)
                    );
                    println!("  releases: {}", a.releases.join(" "));
                }
                let d = st.disk.unwrap_or_default();
                println!(
                    "disk: {} blob(s) {}, releases {}, {} free of {}",
                    d.blobs,
                    human_bytes(d.blobs_bytes),
                    human_bytes(d.releases_bytes),
                    human_bytes(d.free_bytes),
                    human_bytes(d.total_bytes)
                );
            }
            Ok(if st.state_error.is_empty() { 0 } else { 1 })
        }
        Command::Apply { file } => apply(&state, runner, limits, &file).await,
        Command::Verify { app } => verify_releases(&state, app.as_deref()),
        Command::State(StateCmd::Repair) => {
            for note in crate::state::repair(&state)? {
                println!("{note}");
            }
            println!("state repaired; start the agent again");
            Ok(0)
        }
        Command::Rollback { app, to } => {
            let exec = executor(&state, runner, limits)?;
            let r = exec.local_rollback(&app, to.as_deref()).await?;
            println!("{app}: current -> {r}");
            Ok(0)
        }
        Command::PollNow => {
            let pid = std::fs::read_to_string(state.pid_file())
                .with_context(|| format!("no running agent ({} missing)", state.pid_file().display()))?;
            let kill = crate::runner::CommandSpec::new("kill", &["-HUP", pid.trim()])
                .timeout(std::time::Duration::from_secs(5));
            let out = runner.run(&kill).await?;
            if !out.success() {
                bail!("cannot signal agent pid {}: {}", pid.trim(), out.tail());
            }
            println!("asked agent (pid {}) to poll now", pid.trim());
            Ok(0)
        }
        Command::Detect => {
            let f = crate::facts::detect(runner.as_ref()).await;
            println!("os:      {} ({}){}", f.os, f.os_release, if f.wsl { " [WSL]" } else { "" });
            println!("arch:    {}", f.arch);
            println!("host:    {}", f.hostname);
            for r in f.runtimes {
                println!("runtime: {} {} ({})", r.name, r.version, r.path);
            }
            Ok(0)
        }
    }
}

/// `1.5 MiB` style.
fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `dockfra-agent verify`: every kept release against the signed manifest that installed it.
fn verify_releases(state: &StateDir, only: Option<&str>) -> Result<u8> {
    use crate::releases::AppReleases;
    let keys = state.signing_keys();
    let mut bad = 0;
    let mut checked = 0;
    for base in state.app_bases() {
        let app = base.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if only.is_some_and(|o| o != app) {
            continue;
        }
        let rel = AppReleases::new(base);
        for r in rel.list() {
            checked += 1;
            let verdict = (|| -> Result<()> {
                let docs = rel.signed_docs(&r.name).context("no signed documents kept with it")?;
                let m = bundle::verify_manifest(&keys, &docs.manifest, &docs.manifest_signature)?;
                let marker = std::fs::read(rel.releases_dir().join(format!("{}.json", r.name)))?;
                anyhow::ensure!(marker == docs.manifest, "its manifest file differs from the signed one");
                let dir = rel.dir(&r.name);
                for f in &m.files {
                    let p = dockfra_common::paths::SafeRelPath::new(&f.path)?.under(&dir);
                    match f.kind {
                        bundle::EntryKind::File => {
                            let bytes = std::fs::read(&p).with_context(|| f.path.clone())?;
                            anyhow::ensure!(dockfra_common::sha256_hex(&bytes) == f.sha256, "{} was changed", f.path);
                        }
                        bundle::EntryKind::Symlink => {
                            let to = std::fs::read_link(&p).with_context(|| f.path.clone())?;
                            anyhow::ensure!(
                                Some(to.to_string_lossy().as_ref()) == f.link.as_deref(),
                                "{} points elsewhere",
                                f.path
                            );
                        }
                    }
                }
                Ok(())
            })();
            match verdict {
                Ok(()) => println!("ok       {app}/{}", r.name),
                Err(e) => {
                    bad += 1;
                    println!("MISMATCH {app}/{}: {e:#}", r.name);
                }
            }
        }
    }
    println!("{checked} release(s) checked, {bad} mismatch(es)");
    Ok(if bad == 0 { 0 } else { 1 })
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

async fn run_agent(state: &StateDir, runner: Arc<dyn Runner>, limits: Limits, listen: Option<String>) -> Result<u8> {
    crate::net::finish_renewal(state)?;
    let cfg = state.config()?;
    let exec = Arc::new(executor(state, runner.clone(), limits)?);
    let _ = std::fs::remove_dir_all(state.tmp());
    // A journal or state file the agent cannot read does not stop it: it keeps serving its
    // status (which says why) and refuses every order until repaired.
    let recovered = match exec.recover().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("{e:#}");
            None
        }
    };
    crate::state::write(&state.pid_file(), std::process::id().to_string().as_bytes(), 0o644)?;
    let facts = crate::facts::detect(runner.as_ref()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    crate::upgrade::set_stopper(stop_tx.clone());
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    if let Some(o) = recovered {
        // A kept release is a final result: it goes through the outbox. A progress note is
        // best effort; the next poll's status says enough.
        if !o.result.is_empty() {
            state.push_outbox(o.clone())?;
        }
        if let Ok(ch) = crate::net::coordinator_channel(state, &cfg).await {
            let mut client = proto::fleet_client::FleetClient::new(ch);
            if o.result.is_empty() {
                let _ = client.report(proto::ReportRequest { events: vec![o.event()], status: None }).await;
            } else if let Err(e) = crate::net::flush_outbox(&mut client, state, None).await {
                tracing::warn!("{e:#}");
            }
        }
    }
    tracing::info!(target = %cfg.target, mode = %cfg.mode, "dockfra-agent running");
    let r = match cfg.mode.as_str() {
        "pull" => crate::net::pull_loop(exec, state.clone(), facts, stop_rx).await,
        _ => {
            // SIGHUP (`poll-now`) must not kill a push agent: there is nothing to poll.
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP ignored: push mode waits for the coordinator");
                }
            });
            let listen = listen.unwrap_or_else(|| format!("0.0.0.0:{}", cfg.listen_port));
            crate::net::push_server(exec, state.clone(), facts, listen, stop_rx).await
        }
    };
    let _ = std::fs::remove_file(state.pid_file());
    r.map(|()| 0)
}

/// Apply an offline bundle: verify the signed documents before reading any blob, stage the
/// blobs (hash-checked) in a temp dir, and only then move them into the store and deploy.
/// A bad archive leaves nothing behind.
async fn apply(state: &StateDir, runner: Arc<dyn Runner>, limits: Limits, file: &std::path::Path) -> Result<u8> {
    let exec = executor(state, runner, limits)?;
    let f = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let staging = state.tmp().join(format!("import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let mut assignment = None;
    let writer: std::cell::RefCell<Option<BlobWriter>> = std::cell::RefCell::new(None);
    let read = bundle::read_archive(
        std::io::BufReader::new(f),
        |a| {
            let v = exec.verify(&a).map_err(|e| match e {
                Refusal::Bundle(b) => b,
                other => bundle::BundleError::Archive(other.to_string()),
            })?;
            let sizes = v.manifest.blob_sizes();
            *writer.borrow_mut() = Some(
                BlobWriter::new(staging.clone(), sizes.clone())
                    .map_err(|e| bundle::BundleError::Archive(e.to_string()))?,
            );
            assignment = Some(a);
            Ok(sizes)
        },
        |d, r| {
            let mut guard = writer.borrow_mut();
            let w = guard.as_mut().ok_or_else(|| bundle::BundleError::Archive("blob before documents".into()))?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut offset = 0u64;
            loop {
                let n = r.read(&mut buf).map_err(|e| bundle::BundleError::Archive(e.to_string()))?;
                w.chunk(d.as_str(), offset, &buf[..n], n == 0)
                    .map_err(|e| bundle::BundleError::Archive(e.to_string()))?;
                if n == 0 {
                    return Ok(());
                }
                offset += n as u64;
            }
        },
    );
    let synced = writer.borrow_mut().as_mut().map(BlobWriter::finish).unwrap_or(Ok(()));
    drop(writer);
    let read = read.and_then(|r| synced.map(|()| r).map_err(|e| bundle::BundleError::Archive(e.to_string())));
    if let Err(e) = read {
        let _ = std::fs::remove_dir_all(&staging);
        bail!("{}: {e}", file.display());
    }
    let a = assignment.context("no assignment")?;
    std::fs::create_dir_all(state.blobs())?;
    for e in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with('.') {
            std::fs::rename(e.path(), state.blobs().join(&name))?;
        }
    }
    let _ = std::fs::remove_dir_all(&staging);
    let (tx, mut rx) = mpsc::unbounded_channel::<proto::DeployEvent>();
    let printer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            eprintln!("{:<13} {}", ev.phase, ev.message);
        }
    });
    let fin = exec.execute(&a, &mut NoSource, &tx).await;
    drop(tx);
    let _ = printer.await;
    if fin.result == "succeeded" {
        println!("applied {}: release {} is live and healthy", file.display(), fin.release);
        Ok(0)
    } else {
        println!("{}: {}: {}", file.display(), fin.result, fin.message);
        Ok(3)
    }
}
