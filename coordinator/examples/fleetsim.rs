//! A fleet simulator for issue #13's figures: a bench, not a test (`scripts/bench fleet` runs
//! it). N simulated pull agents, each with a real identity (its own key, a CSR, a join token
//! burnt at a real `Enroll`) and its own mTLS connection from its own loopback address
//! (127.1.x.y), against one running coordinator. Each agent watches (`Fleet.Watch`, then
//! polls when told) or polls on a schedule with a fresh connection per poll, as the real agent
//! does; on an order it fetches every blob of the bundle and reports the release live. It does
//! not verify signatures or write files: what is measured is the coordinator.
//!
//! Prints, as `key: value` lines: enrollment rate; the coordinator's CPU (share of one core)
//! and RSS while the fleet idles; `status` and `history` latency for the whole fleet; with
//! `--deploy`, a fleet deploy's fan-out time to all N and the p50/p99 time to live.
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::sync::Semaphore;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use dockfra_common::bundle::{self, DesiredState, Manifest};
use dockfra_common::identity;
use dockfra_common::proto::{self, enrollment_client::EnrollmentClient, fleet_client::FleetClient};
use dockfra_coord::state::StateDir;

#[derive(Parser)]
struct Args {
    /// The coordinator's state dir (its address, CA and the admin operator's credential).
    #[arg(long)]
    state_dir: PathBuf,
    /// The coordinator's process, for its CPU and RSS.
    #[arg(long)]
    pid: u32,
    /// How many agents: targets PREFIX0 … PREFIX{N-1} of the project the coordinator serves.
    #[arg(short, long)]
    n: usize,
    #[arg(long, default_value = "sim-")]
    prefix: String,
    /// watch | poll
    #[arg(long, default_value = "watch")]
    mode: String,
    /// Poll mode: the interval.
    #[arg(long, default_value = "30")]
    poll_secs: u64,
    /// How long to measure the idle fleet.
    #[arg(long, default_value = "60")]
    idle_secs: u64,
    /// Then deploy to the whole fleet (`fleet deploy --all --max-parallel K`).
    #[arg(long)]
    deploy: bool,
    #[arg(long, default_value = "0")]
    max_parallel: u32,
}

#[derive(Default)]
struct Stats {
    polls: AtomicU64,
    watching: AtomicUsize,
    errors: AtomicU64,
    fetched: AtomicU64,
    /// When each order went live.
    live: Mutex<Vec<Instant>>,
}

/// Counts one watching agent until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One simulated agent.
struct Sim {
    index: usize,
    name: String,
    tls: ClientTlsConfig,
    local: IpAddr,
    state: Mutex<(u64, String, String)>, // floor, current release, last deployment
    /// The coordinator said it holds our facts: polls leave them out, as the agent's do.
    facts_held: std::sync::atomic::AtomicBool,
}

fn local_addr(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1 + (i / 62_500) as u8, ((i / 250) % 250) as u8, (i % 250 + 1) as u8))
}

fn endpoint(url: &str, tls: ClientTlsConfig, local: IpAddr) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_string())?
        .tls_config(tls)?
        .local_address(Some(local))
        .connect_timeout(Duration::from_secs(30))
        .initial_stream_window_size(identity::H2_STREAM_WINDOW)
        .initial_connection_window_size(identity::H2_CONNECTION_WINDOW))
}

fn facts() -> proto::Facts {
    proto::Facts {
        agent_version: dockfra_common::VERSION.into(),
        os: "linux".into(),
        arch: std::env::consts::ARCH.into(),
        hostname: "fleetsim".into(),
        manifest_formats: bundle::FORMATS.to_vec(),
        platforms: vec!["ssh_raw".into()],
        ..Default::default()
    }
}

impl Sim {
    fn status(&self) -> proto::AgentStatus {
        let (floor, current, last) = self.state.lock().unwrap().clone();
        let facts = facts();
        proto::AgentStatus {
            target: self.name.clone(),
            facts_digest: dockfra_common::facts_digest(&facts),
            facts: (!self.facts_held.load(Ordering::Relaxed)).then_some(facts),
            last_desired_sequence: floor,
            apps: (!current.is_empty())
                .then(|| proto::AppStatus {
                    app: "web".into(),
                    current_release: current.clone(),
                    current_sequence: floor,
                    health: "healthy".into(),
                    releases: vec![current.clone()],
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            recent: (!last.is_empty())
                .then(|| proto::DeployResult {
                    deployment_id: last,
                    result: "succeeded".into(),
                    release: current,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    /// One poll; an order is fetched whole and reported live.
    async fn poll(&self, fc: &mut FleetClient<Channel>, stats: &Stats) -> Result<()> {
        let status = self.status();
        let digest = status.facts_digest.clone();
        let r = fc.poll(proto::PollRequest { status: Some(status) }).await?.into_inner();
        stats.polls.fetch_add(1, Ordering::Relaxed);
        self.facts_held.store(r.facts_digest == digest, Ordering::Relaxed);
        let Some(a) = r.assignment else { return Ok(()) };
        let d: DesiredState = serde_json::from_slice(&a.desired.context("no desired state")?.payload)?;
        let m = Manifest::parse(&a.manifest.context("no manifest")?.manifest)?;
        let mut s = fc
            .fetch_blobs(proto::FetchBlobsRequest { bundle_id: d.bundle_id.clone(), digests: m.digests() })
            .await?
            .into_inner();
        let mut bytes = 0u64;
        while let Some(c) = s.message().await? {
            bytes += c.data.len() as u64;
        }
        stats.fetched.fetch_add(bytes, Ordering::Relaxed);
        let release = bundle::release_name(d.sequence, &d.bundle_id);
        *self.state.lock().unwrap() = (d.sequence, release.clone(), d.deployment_id.clone());
        let ev = proto::DeployEvent {
            deployment_id: d.deployment_id,
            phase: "Done".into(),
            message: format!("release {release} is live (simulated)"),
            r#final: true,
            result: "succeeded".into(),
            release,
            bytes_received: bytes,
            unix_ms: dockfra_common::now_unix_ms(),
            ..Default::default()
        };
        fc.report(proto::ReportRequest { events: vec![ev], status: Some(self.status()) }).await?;
        stats.live.lock().unwrap().push(Instant::now());
        Ok(())
    }

    async fn watch(self: Arc<Self>, url: String, stats: Arc<Stats>) {
        loop {
            let held = async {
                let ch = endpoint(&url, self.tls.clone(), self.local)?.connect().await?;
                let mut fc = FleetClient::new(ch).max_decoding_message_size(64 << 20);
                // As the agent: the coordinator keeps the idle link alive, the agent listens.
                let mut s = fc.watch(proto::WatchRequest { keepalive_events: true }).await?.into_inner();
                let mut counted: Option<Counted<'_>> = None;
                // Told to poll, or the heartbeat (10 x the 30 s default interval) came round.
                let heartbeat = Duration::from_secs(300);
                let due = tokio::time::sleep(heartbeat);
                tokio::pin!(due);
                loop {
                    tokio::select! {
                        ev = s.message() => match ev? {
                            None => break,
                            Some(ev) if ev.reason == "keepalive" => continue,
                            Some(_) => {}
                        },
                        _ = &mut due => {}
                    }
                    due.as_mut().reset(tokio::time::Instant::now() + heartbeat);
                    if counted.is_none() {
                        stats.watching.fetch_add(1, Ordering::Relaxed);
                        counted = Some(Counted(&stats.watching));
                    }
                    if self.poll(&mut fc, &stats).await.is_err() {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(counted);
                anyhow::Ok(())
            };
            if held.await.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn poll_loop(self: Arc<Self>, url: String, every: Duration, stats: Arc<Stats>) {
        // Spread the first polls over one interval, as agents started at different times are.
        let offset = every.mul_f64((self.index * 7919 % 1000) as f64 / 1000.0);
        tokio::time::sleep(offset).await;
        loop {
            let once = async {
                let ch = endpoint(&url, self.tls.clone(), self.local)?.connect().await?;
                let mut fc = FleetClient::new(ch).max_decoding_message_size(64 << 20);
                self.poll(&mut fc, &stats).await
            };
            if once.await.is_err() {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// utime + stime of a process, in clock ticks, and its RSS in KiB.
fn proc_usage(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(") ").context("odd /proc stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((ticks, rss))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let state = StateDir::new(&args.state_dir);
    let url = format!("https://{}", std::fs::read_to_string(args.state_dir.join("serve.addr"))?.trim());
    let ca = state.ca_pem()?;
    let mut admin = dockfra_coord::cli::admin_client(&state, None, "admin").await?;
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let names: Vec<String> = (0..args.n).map(|i| format!("{}{i}", args.prefix)).collect();

    // Tokens (the operator's part), then enrollment (the agents' part, timed).
    let mut tokens = Vec::with_capacity(args.n);
    for n in &names {
        let t = admin.create_token(proto::CreateTokenRequest { target: n.clone(), ttl_ms: 3_600_000 }).await?;
        tokens.push(t.into_inner().token);
    }
    let gate = Arc::new(Semaphore::new(64));
    let t0 = Instant::now();
    let mut enrolling = Vec::new();
    for (i, (name, token)) in names.iter().cloned().zip(tokens).enumerate() {
        let (gate, url, ca) = (gate.clone(), url.clone(), ca.clone());
        enrolling.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await?;
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let csr = rcgen::CertificateParams::default().serialize_request(&key)?.pem()?;
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca))
                .domain_name(identity::COORDINATOR_DNS);
            let ch = endpoint(&url, tls, local_addr(i))?.connect().await?;
            let r = EnrollmentClient::new(ch)
                .enroll(proto::EnrollRequest {
                    token,
                    csr_pem: csr,
                    facts: Some(facts()),
                    expected_target: name.clone(),
                })
                .await?
                .into_inner();
            let tls = identity::client_tls(&ca, &r.cert_pem, &key.serialize_pem(), &r.coordinator_name);
            anyhow::Ok(Arc::new(Sim {
                index: i,
                name,
                tls,
                local: local_addr(i),
                state: Mutex::new((0, String::new(), String::new())),
                facts_held: Default::default(),
            }))
        }));
    }
    let mut sims = Vec::with_capacity(args.n);
    for e in enrolling {
        sims.push(e.await??);
    }
    let took = t0.elapsed().as_secs_f64();
    println!("agents: {}", args.n);
    println!("enrollment: {:.0} agents/s ({} in {took:.1} s, 64 at a time)", args.n as f64 / took, args.n);

    let stats = Arc::new(Stats::default());
    let t0 = Instant::now();
    for s in &sims {
        let (s, url, stats) = (s.clone(), url.clone(), stats.clone());
        match args.mode.as_str() {
            "watch" => tokio::spawn(s.watch(url, stats)),
            "poll" => tokio::spawn(s.poll_loop(url, Duration::from_secs(args.poll_secs), stats)),
            m => bail!("--mode {m}: expected watch or poll"),
        };
    }
    if args.mode == "watch" {
        while stats.watching.load(Ordering::Relaxed) < args.n {
            if t0.elapsed() > Duration::from_secs(600) {
                bail!("only {} of {} agents watching after 10 minutes", stats.watching.load(Ordering::Relaxed), args.n);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("all watching after: {:.1} s", t0.elapsed().as_secs_f64());
    }
    // Let the first polls settle, then measure the idle fleet.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (c0, _) = proc_usage(args.pid)?;
    let (p0, e0) = (stats.polls.load(Ordering::Relaxed), stats.errors.load(Ordering::Relaxed));
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let (c1, rss) = proc_usage(args.pid)?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "idle ({}, {:.0} s): coordinator CPU {:.1}% of one core, RSS {:.0} MiB; {:.1} polls/s; errors {}",
        args.mode,
        secs,
        (c1 - c0) as f64 / ticks_per_sec / secs * 100.0,
        rss as f64 / 1024.0,
        (stats.polls.load(Ordering::Relaxed) - p0) as f64 / secs,
        stats.errors.load(Ordering::Relaxed) - e0,
    );

    if args.deploy {
        let t0 = Instant::now();
        stats.live.lock().unwrap().clear();
        let f = admin
            .fleet_deploy(proto::FleetDeployRequest {
                all: true,
                max_parallel: args.max_parallel,
                version: format!("sim-{}", dockfra_common::now_unix()),
                ..Default::default()
            })
            .await?
            .into_inner();
        let done = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let i = admin.get_fleet_deploy(proto::FleetDeployId { id: f.id.clone() }).await?.into_inner();
            if i.status != "running" {
                break i;
            }
        };
        let total = t0.elapsed().as_secs_f64();
        let mut live: Vec<f64> = stats.live.lock().unwrap().iter().map(|t| (*t - t0).as_secs_f64()).collect();
        live.sort_by(|a, b| a.total_cmp(b));
        println!(
            "fleet deploy (max_parallel {}): {} in {total:.1} s; {} agents live, time to live p50 {:.2} s, p99 {:.2} s; {} MB fetched",
            args.max_parallel,
            done.status,
            live.len(),
            percentile(&live, 0.5),
            percentile(&live, 0.99),
            stats.fetched.load(Ordering::Relaxed) / 1_000_000,
        );
        let (_, rss) = proc_usage(args.pid)?;
        println!("coordinator RSS after the deploy: {:.0} MiB", rss as f64 / 1024.0);
    }
    // The operator's views of the whole fleet (after the deploy: with a history to show).
    let t = Instant::now();
    let st = admin.status(proto::TargetRequest::default()).await?.into_inner();
    println!("status (all {} targets): {} ms", st.targets.len(), t.elapsed().as_millis());
    let t = Instant::now();
    let h = admin.history(proto::HistoryRequest::default()).await?.into_inner();
    println!("history (newest {}): {} ms", h.deployments.len(), t.elapsed().as_millis());
    Ok(())
}
