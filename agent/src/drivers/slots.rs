//! Zero-downtime releases on one host: `strategy: blue-green | canary` on `docker_compose`
//! and `podman` (podman-compose mode). The builder doubled each fronted service into
//! `S-blue` and `S-green`; here one slot runs the live release and the other takes the next:
//!
//! 1. the new release's slot comes up beside the live one (each slot's ports published on
//!    loopback ports this agent picked once and keeps, through an override file of its own),
//!    the shared services (databases, workers) updated in place as compose does;
//! 2. it must pass compose's healthchecks, then the agent's own probe of its loopback port
//!    and the proxy's check (`GET health_path`, else a TCP connect);
//! 3. HAProxy (the host's `haproxy`, started and reloaded by the agent, driven through its
//!    admin socket) moves the traffic: all at once (blue-green) or by weight, step by step,
//!    each step's checks held through the pause (canary);
//! 4. the old slot drains (its requests in flight finish), goes to maintenance, and stops;
//!    its containers are kept, so a rollback starts them again without re-creating anything.
//!
//! A failure before the switch completes stops the new slot and leaves the old one serving:
//! nothing restarted. Everything lives in `<app>/proxy/` beside the releases: `state.json`
//! (which release is in which slot, the ports), `override.yaml`, `haproxy.cfg`, the admin
//! socket and the pid file. The config written always describes what serves now, so a proxy
//! restarted by a reboot comes back routing to the live slot.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dockfra_common::bundle::{DockerComposeSpec, SlotSpec, SLOTS};

use super::{DriverError, StepCtx};
use crate::runner::{CommandSpec, Output};

/// Which compose CLI runs the slots.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Podman,
}

/// What this agent remembers of an app's slots (as JSON in `state.json`; read and written
/// through `serde_json::Value`, which the agent links anyway, to keep it small).
#[derive(Debug, Default, PartialEq)]
struct State {
    /// The slot serving now (`blue`, `green`), none before the first release.
    live: Option<String>,
    /// Slot → the release directory name it runs (or ran, when stopped).
    releases: BTreeMap<String, String>,
    /// `SERVICE:PORT:SLOT` → the loopback port that slot publishes the container port on.
    ports: BTreeMap<String, u16>,
    /// Podman: shared service → the digest of the definition its container was made from.
    shared: BTreeMap<String, String>,
}

struct Paths {
    dir: PathBuf,
}

impl Paths {
    fn of(ctx: &StepCtx<'_>) -> Paths {
        let base = ctx.current_link.parent().unwrap_or(Path::new("/")).to_path_buf();
        Paths { dir: base.join("proxy") }
    }
    fn state(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    fn cfg(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }
    fn sock(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
    fn pid(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }
    fn override_file(&self) -> PathBuf {
        self.dir.join("override.yaml")
    }
}

fn invalid(e: impl std::fmt::Display) -> DriverError {
    DriverError::Invalid(e.to_string())
}

/// Write `bytes` to `path` through a temporary file and a rename (never half a file).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DriverError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| invalid(format!("proxy: cannot write {}: {e}", path.display())))
}

impl State {
    fn load(p: &Paths) -> Result<State, DriverError> {
        let v: serde_json::Value = match std::fs::read(p.state()) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| invalid(format!("proxy: {}: {e}", p.state().display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(invalid(format!("proxy: {}: {e}", p.state().display()))),
        };
        let strings = |k: &str| -> BTreeMap<String, String> {
            let m = v[k].as_object().into_iter().flatten();
            m.filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()
        };
        let ports = v["ports"].as_object().into_iter().flatten();
        Ok(State {
            live: v["live"].as_str().map(String::from),
            releases: strings("releases"),
            ports: ports.filter_map(|(k, v)| Some((k.clone(), u16::try_from(v.as_u64()?).ok()?))).collect(),
            shared: strings("shared"),
        })
    }
    fn save(&self, p: &Paths) -> Result<(), DriverError> {
        use serde_json::{Map, Value};
        let strings = |m: &BTreeMap<String, String>| {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>())
        };
        let mut v = Map::new();
        v.insert("live".into(), self.live.clone().map(Value::String).unwrap_or(Value::Null));
        v.insert("releases".into(), strings(&self.releases));
        v.insert("ports".into(), Value::Object(self.ports.iter().map(|(k, p)| (k.clone(), Value::from(*p))).collect()));
        v.insert("shared".into(), strings(&self.shared));
        write_atomic(&p.state(), Value::Object(v).to_string().as_bytes())
    }
    fn port(&self, service: &str, port: u16, slot: &str) -> Option<u16> {
        self.ports.get(&format!("{service}:{port}:{slot}")).copied()
    }
}

fn other(slot: &str) -> &'static str {
    if slot == SLOTS[0] {
        SLOTS[1]
    } else {
        SLOTS[0]
    }
}

/// The host's HAProxy: on PATH, or where Debian (/usr/sbin) and Homebrew put it.
pub fn haproxy() -> Result<PathBuf, DriverError> {
    if let Some(p) = crate::runner::which("haproxy") {
        return Ok(p);
    }
    ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/opt/homebrew/bin/haproxy", "/usr/local/bin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            invalid("validate: strategy blue-green/canary needs HAProxy on this host, and none was found (Debian/Ubuntu: apt install haproxy; macOS: brew install haproxy)")
        })
}

/// A backend's name in HAProxy's config: the service and the port it listens on.
fn backend(service: &str, listen: &str) -> String {
    let port = listen.rsplit(':').next().unwrap_or_default();
    format!("{service}-{port}")
}

/// HAProxy's config for these routes, `serving` the slot that gets the traffic (weight 100;
/// the other is in maintenance). `idle-close-on-response`: on a reload the old process keeps
/// its idle kept-alive connections until it has answered their next request (with
/// `Connection: close`), so no client loses a request it sent as the connection closed. The first line is a digest of everything but the weights:
/// only a change there needs a reload.
fn render_cfg(sl: &SlotSpec, st: &State, p: &Paths, serving: &str) -> String {
    let mut body = String::new();
    body.push_str(&format!(
        "global\n  stats socket {} mode 600 level admin expose-fd listeners\n  pidfile {}\n\n",
        p.sock().display(),
        p.pid().display()
    ));
    body.push_str("defaults\n  mode http\n  option idle-close-on-response\n  option redispatch\n  retries 3\n  timeout connect 5s\n  timeout client 1m\n  timeout server 1m\n  timeout http-keep-alive 10s\n  default-server inter 1s fall 2 rise 2\n");
    let mut servers = Vec::new();
    for r in &sl.routes {
        let be = backend(&r.service, &r.listen);
        body.push_str(&format!("\nfrontend {be}\n  bind {}\n  default_backend {be}\n\nbackend {be}\n", r.listen));
        if let Some(path) = &sl.health_path {
            body.push_str(&format!("  option httpchk GET {path}\n  http-check expect status 200-399\n"));
        }
        for slot in SLOTS {
            let port = st.port(&r.service, r.port, slot).unwrap_or(0);
            servers.push((be.clone(), slot, port));
            body.push_str(&format!("  server {slot} 127.0.0.1:{port} check @{slot}@\n"));
        }
    }
    let digest = dockfra_common::sha256_hex(body.as_bytes());
    let mut out = format!(
        "# dockfra-agent: the proxy of these slots (written by the agent; do not edit)\n# structure {digest}\n"
    );
    for slot in SLOTS {
        let w = if slot == serving { "weight 100" } else { "weight 0 disabled" };
        body = body.replace(&format!("@{slot}@"), w);
    }
    out.push_str(&body);
    out
}

fn structure_of(cfg: &str) -> Option<&str> {
    cfg.lines().nth(1).and_then(|l| l.strip_prefix("# structure "))
}

/// One exchange with HAProxy's admin socket: the commands (`;`-separated) and its answer.
async fn admin(p: &Paths, command: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = async {
        let mut s = tokio::net::UnixStream::connect(p.sock()).await.map_err(|e| e.to_string())?;
        s.write_all(format!("{command}\n").as_bytes()).await.map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(5), run).await.map_err(|_| "the proxy did not answer in 5s".to_string())?
}

/// Commands that only change state answer nothing; anything else is HAProxy refusing.
async fn set(p: &Paths, commands: &[String]) -> Result<(), DriverError> {
    let answer = admin(p, &commands.join("; ")).await.map_err(|e| invalid(format!("proxy: {e}")))?;
    let answer = answer.trim();
    if !answer.is_empty() {
        return Err(invalid(format!("proxy: `{}` was refused: {answer}", commands.join("; "))));
    }
    Ok(())
}

/// One server's row of `show stat`.
#[derive(Debug, PartialEq)]
struct ServerStat {
    backend: String,
    server: String,
    sessions: u64,
    status: String,
    check: String,
}

fn parse_stat(csv: &str) -> Vec<ServerStat> {
    let mut lines = csv.lines();
    let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else { return Vec::new() };
    let cols: Vec<&str> = header.split(',').collect();
    let at = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(scur), Some(status), Some(check)) =
        (at("pxname"), at("svname"), at("scur"), at("status"), at("check_status"))
    else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<&str>>())
        .filter(|f| f.len() > check && !["FRONTEND", "BACKEND"].contains(&f[sv]))
        .map(|f| ServerStat {
            backend: f[px].to_string(),
            server: f[sv].to_string(),
            sessions: f[scur].parse().unwrap_or(0),
            status: f[status].to_string(),
            check: f[check].to_string(),
        })
        .collect()
}

async fn stats(p: &Paths) -> Result<Vec<ServerStat>, DriverError> {
    Ok(parse_stat(&admin(p, "show stat").await.map_err(|e| invalid(format!("proxy: {e}")))?))
}

/// Passing the proxy's own check right now.
fn passing(s: &ServerStat) -> bool {
    s.status.starts_with("UP") && ["L4OK", "L6OK", "L7OK"].contains(&s.check.as_str())
}

/// The slot answers on its loopback port: `GET health_path` with a 2xx/3xx, else a connect.
async fn probe(sl: &SlotSpec, port: u16) -> Result<(), String> {
    let t = Duration::from_secs(2);
    match &sl.health_path {
        Some(path) => {
            let ep = crate::http::Endpoint::new(&format!("http://127.0.0.1:{port}"), None, None, None)
                .map_err(|e| e.to_string())?;
            match ep.request("GET", path, &[], None, t).await {
                Ok((code, _)) if (200..400).contains(&code) => Ok(()),
                Ok((code, _)) => Err(format!("GET {path} answered {code}")),
                Err(e) => Err(e.to_string()),
            }
        }
        None => match tokio::time::timeout(t, tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connect timed out".into()),
        },
    }
}

/// A slot's fronted service names (`web-blue`, …).
fn slot_services(sl: &SlotSpec, slot: &str) -> Vec<String> {
    sl.services().iter().map(|s| format!("{s}-{slot}")).collect()
}

pub struct Slots<'a> {
    ctx: &'a StepCtx<'a>,
    spec: &'a DockerComposeSpec,
    sl: &'a SlotSpec,
    engine: Engine,
    paths: Paths,
}

impl<'a> Slots<'a> {
    pub fn new(ctx: &'a StepCtx<'a>, spec: &'a DockerComposeSpec, sl: &'a SlotSpec, engine: Engine) -> Self {
        Slots { ctx, spec, sl, engine, paths: Paths::of(ctx) }
    }

    fn release(&self) -> String {
        self.ctx.release_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// `docker compose …` or `podman-compose …` with the release's file and the ports override.
    async fn compose(&self, step: &'static str, args: &[&str]) -> Result<Output, DriverError> {
        let file = self.ctx.release_dir.join(&self.spec.file).display().to_string();
        let over = self.paths.override_file().display().to_string();
        let dir = self.ctx.release_dir.display().to_string();
        let (program, mut argv): (String, Vec<String>) = match self.engine {
            Engine::Docker => ("docker".into(), vec!["compose".into()]),
            Engine::Podman => {
                let tool = super::podman::compose_tool(self.ctx.runner).await?;
                (tool[0].clone(), tool[1..].to_vec())
            }
        };
        argv.extend(["-p", &self.spec.project, "-f", &file, "-f", &over].map(String::from));
        if self.engine == Engine::Docker {
            argv.extend(["--project-directory".to_string(), dir]);
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let cmd = CommandSpec::new(&program, &refs)
            .cwd(&self.ctx.release_dir)
            .timeout(Duration::from_secs(self.spec.wait_timeout_secs + 60));
        let out = self.ctx.runner.run(&cmd).await.map_err(|source| DriverError::Run { step, source })?;
        if !out.success() {
            return Err(DriverError::Failed { step, command: cmd.display(), code: out.code, tail: out.tail() });
        }
        Ok(out)
    }

    /// Podman: the containers of these services (by compose's labels).
    async fn podman_ids(&self, services: &[String]) -> Result<Vec<String>, DriverError> {
        let mut ids = Vec::new();
        for s in services {
            let project = format!("label=com.docker.compose.project={}", self.spec.project);
            let service = format!("label=com.docker.compose.service={s}");
            let cmd = CommandSpec::new("podman", &["ps", "-a", "-q", "--filter", &project, "--filter", &service]);
            let out =
                self.ctx.runner.run(&cmd).await.map_err(|source| DriverError::Run { step: "podman ps", source })?;
            ids.extend(out.stdout.split_whitespace().map(String::from));
        }
        Ok(ids)
    }

    async fn podman(&self, step: &'static str, verb: &[&str], ids: &[String]) -> Result<(), DriverError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args: Vec<&str> = verb.to_vec();
        args.extend(ids.iter().map(String::as_str));
        let cmd = CommandSpec::new("podman", &args).timeout(Duration::from_secs(120));
        super::run_step(self.ctx, step, &cmd).await
    }

    /// Bring up the shared services and one slot's, and wait until they are healthy.
    async fn up(&self, st: &mut State, slot: &str, fresh: bool) -> Result<(), DriverError> {
        let mut services = self.sl.shared.clone();
        services.extend(slot_services(self.sl, slot));
        match self.engine {
            Engine::Docker => {
                let timeout = self.spec.wait_timeout_secs.to_string();
                let mut args = vec!["up", "-d", "--remove-orphans", "--wait", "--wait-timeout", &timeout];
                args.extend(services.iter().map(String::as_str));
                self.compose("compose up", &args).await.map(|_| ())
            }
            Engine::Podman => {
                // podman-compose starts a container that exists instead of re-creating it: the
                // slot's are made anew for a new release, a shared one when its definition changed.
                let mut stale = Vec::new();
                if fresh {
                    stale.extend(slot_services(self.sl, slot));
                }
                let defs = self.shared_digests()?;
                for (svc, digest) in &defs {
                    if st.shared.get(svc) != Some(digest) {
                        stale.push(svc.clone());
                    }
                }
                let ids = self.podman_ids(&stale).await?;
                self.podman("remove containers", &["rm", "-f", "-t", "10"], &ids).await?;
                let mut args = vec!["up", "-d"];
                args.extend(services.iter().map(String::as_str));
                self.compose("compose up", &args).await?;
                st.shared = defs;
                super::podman::wait_services(
                    self.ctx,
                    super::podman::COMPOSE,
                    &self.spec.project,
                    &services,
                    self.spec.wait_timeout_secs,
                )
                .await
            }
        }
    }

    /// Podman: a digest of each shared service's definition in this release's compose file.
    fn shared_digests(&self) -> Result<BTreeMap<String, String>, DriverError> {
        let file = self.ctx.release_dir.join(&self.spec.file);
        let doc: serde_json::Value = std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
        Ok(self
            .sl
            .shared
            .iter()
            .map(|s| (s.clone(), dockfra_common::sha256_hex(doc["services"][s].to_string().as_bytes())))
            .collect())
    }

    async fn stop(&self, slot: &str) -> Result<(), DriverError> {
        let services = slot_services(self.sl, slot);
        match self.engine {
            Engine::Docker => {
                let mut args = vec!["stop", "-t", "10"];
                args.extend(services.iter().map(String::as_str));
                self.compose("stop old slot", &args).await.map(|_| ())
            }
            Engine::Podman => {
                let ids = self.podman_ids(&services).await?;
                self.podman("stop old slot", &["stop", "-t", "10"], &ids).await
            }
        }
    }

    /// Loopback ports for both slots of every route (picked once, kept), and the override
    /// file that publishes them.
    fn ports(&self, st: &mut State) -> Result<(), DriverError> {
        for r in &self.sl.routes {
            for slot in SLOTS {
                let key = format!("{}:{}:{slot}", r.service, r.port);
                if st.ports.contains_key(&key) {
                    continue;
                }
                let l = std::net::TcpListener::bind("127.0.0.1:0")
                    .map_err(|e| invalid(format!("proxy: no free port: {e}")))?;
                let port = l.local_addr().map_err(invalid)?.port();
                st.ports.insert(key, port);
            }
        }
        let mut doc = String::from(
            "# dockfra-agent: each slot's ports, on loopback only (the proxy listens outside)\nservices:\n",
        );
        for svc in self.sl.services() {
            for slot in SLOTS {
                doc.push_str(&format!("  {svc}-{slot}:\n    ports:\n"));
                for r in self.sl.routes.iter().filter(|r| r.service == svc) {
                    let port = st.port(svc, r.port, slot).unwrap_or(0);
                    doc.push_str(&format!("      - \"127.0.0.1:{port}:{}\"\n", r.port));
                }
            }
        }
        write_atomic(&self.paths.override_file(), doc.as_bytes())
    }

    /// The proxy runs this config's structure: started when it is not running, reloaded
    /// (listeners handed over through the admin socket, nothing dropped) when it changed.
    async fn proxy(&self, cfg: &str) -> Result<(), DriverError> {
        let bin = haproxy()?;
        let bin = bin.display().to_string();
        let running = std::fs::read_to_string(self.paths.cfg()).ok();
        let alive = admin(&self.paths, "show info").await.is_ok();
        if alive && running.as_deref().and_then(structure_of) == structure_of(cfg) {
            return write_atomic(&self.paths.cfg(), cfg.as_bytes());
        }
        let next = self.paths.dir.join("haproxy.cfg.next");
        write_atomic(&next, cfg.as_bytes())?;
        let next_s = next.display().to_string();
        let check = CommandSpec::new(&bin, &["-c", "-q", "-f", &next_s]).timeout(Duration::from_secs(30));
        super::run_step(self.ctx, "proxy config", &check).await?;
        write_atomic(&self.paths.cfg(), cfg.as_bytes())?;
        let (cfg_s, pid_s, sock_s) = (
            self.paths.cfg().display().to_string(),
            self.paths.pid().display().to_string(),
            self.paths.sock().display().to_string(),
        );
        let mut args = vec!["-f", cfg_s.as_str(), "-p", pid_s.as_str(), "-D"];
        let old = std::fs::read_to_string(self.paths.pid()).unwrap_or_default();
        let old = old.split_whitespace().next().unwrap_or_default().to_string();
        if alive && !old.is_empty() {
            args.extend(["-x", sock_s.as_str(), "-sf", old.as_str()]);
        }
        let cmd = CommandSpec::new(&bin, &args).timeout(Duration::from_secs(30));
        super::run_step(self.ctx, if alive { "proxy reload" } else { "proxy start" }, &cmd).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while admin(&self.paths, "show info").await.is_err() {
            if Instant::now() >= deadline {
                return Err(invalid("proxy: HAProxy started but its admin socket does not answer"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Until `slot` passes both the agent's probe of each of its ports and the proxy's check.
    async fn gate(&self, st: &State, slot: &str) -> Result<(), DriverError> {
        let deadline = Instant::now() + Duration::from_secs(self.spec.wait_timeout_secs);
        loop {
            let mut why = None;
            for r in &self.sl.routes {
                let port = st.port(&r.service, r.port, slot).unwrap_or(0);
                if let Err(e) = probe(self.sl, port).await {
                    why = Some(format!("{}-{slot} on 127.0.0.1:{port}: {e}", r.service));
                    break;
                }
            }
            if why.is_none() {
                let stats = stats(&self.paths).await?;
                for r in &self.sl.routes {
                    let be = backend(&r.service, &r.listen);
                    match stats.iter().find(|s| s.backend == be && s.server == slot) {
                        Some(s) if passing(s) => {}
                        Some(s) => why = Some(format!("the proxy's check of {be}/{slot}: {} {}", s.status, s.check)),
                        None => why = Some(format!("the proxy has no server {be}/{slot}")),
                    }
                }
            }
            let Some(why) = why else { return Ok(()) };
            if Instant::now() >= deadline {
                return Err(invalid(format!(
                    "slot {slot} did not pass its checks in {}s: {why}",
                    self.spec.wait_timeout_secs
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn for_all(&self, f: impl Fn(&str) -> Vec<String>) -> Vec<String> {
        self.sl.routes.iter().flat_map(|r| f(&backend(&r.service, &r.listen))).collect()
    }

    /// Send everything back to `old` and stop `new`: what a failed step ends with.
    async fn back(&self, old: &str, new: &str, why: DriverError) -> DriverError {
        let cmds = self.for_all(|be| {
            vec![
                format!("set server {be}/{old} weight 100"),
                format!("set server {be}/{old} state ready"),
                format!("set server {be}/{new} state maint"),
            ]
        });
        if let Err(e) = set(&self.paths, &cmds).await {
            return invalid(format!("{why}; sending the traffic back to slot {old} failed too: {e}"));
        }
        if let Err(e) = self.stop(new).await {
            tracing::warn!("stopping slot {new} after a failed switch: {e}");
        }
        invalid(format!("{why}; slot {old} kept serving"))
    }

    /// Move the traffic from `old` to `new`: one step (blue-green) or the canary's steps.
    async fn switch(&self, st: &State, old: &str, new: &str) -> Result<(), DriverError> {
        set(
            &self.paths,
            &self.for_all(|be| {
                vec![format!("set server {be}/{new} weight 0"), format!("set server {be}/{new} state ready")]
            }),
        )
        .await?;
        if let Err(e) = self.gate(st, new).await {
            return Err(self.back(old, new, e).await);
        }
        let steps: Vec<u8> = if self.sl.canary_steps.is_empty() { vec![100] } else { self.sl.canary_steps.clone() };
        for pct in steps {
            let cmds = self.for_all(|be| match pct {
                100 => vec![format!("set server {be}/{new} weight 100"), format!("set server {be}/{old} state drain")],
                p => vec![
                    format!("set server {be}/{new} weight {p}"),
                    format!("set server {be}/{old} weight {}", 100 - p),
                ],
            });
            set(&self.paths, &cmds).await?;
            if pct < 100 {
                let until = Instant::now() + Duration::from_secs(self.sl.canary_pause_secs);
                while Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let stats = stats(&self.paths).await?;
                    if let Some(s) = stats.iter().find(|s| s.server == new && !passing(s)) {
                        let why = invalid(format!(
                            "canary step {pct}%: the proxy's check of {}/{new} failed: {} {}",
                            s.backend, s.status, s.check
                        ));
                        return Err(self.back(old, new, why).await);
                    }
                }
            }
        }
        // The old slot finishes what it has (at most drain_secs), then leaves the rotation.
        let until = Instant::now() + Duration::from_secs(self.sl.drain_secs);
        loop {
            let busy: u64 = stats(&self.paths).await?.iter().filter(|s| s.server == old).map(|s| s.sessions).sum();
            if busy == 0 || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        set(&self.paths, &self.for_all(|be| vec![format!("set server {be}/{old} state maint")])).await
    }

    /// Deploy (or roll back to) this step's release.
    pub async fn apply(&self) -> Result<(), DriverError> {
        std::fs::create_dir_all(&self.paths.dir)
            .map_err(|e| invalid(format!("proxy: cannot create {}: {e}", self.paths.dir.display())))?;
        let mut st = State::load(&self.paths)?;
        let release = self.release();
        self.ports(&mut st)?;
        if let Some(live) = st.live.clone().filter(|l| st.releases.get(l) == Some(&release)) {
            // Already live (a rollback after a failed switch, a re-run): keep it up and fronted.
            self.up(&mut st, &live, false).await?;
            st.save(&self.paths)?;
            self.proxy(&render_cfg(self.sl, &st, &self.paths, &live)).await?;
            let idle = other(&live);
            let cmds = self.for_all(|be| {
                vec![
                    format!("set server {be}/{live} weight 100"),
                    format!("set server {be}/{live} state ready"),
                    format!("set server {be}/{idle} state maint"),
                ]
            });
            return set(&self.paths, &cmds).await;
        }
        let old = st.live.clone();
        let new = other(old.as_deref().unwrap_or(SLOTS[1]));
        let fresh = st.releases.get(new) != Some(&release);
        st.releases.insert(new.to_string(), release.clone());
        st.save(&self.paths)?;
        if let Err(e) = self.up(&mut st, new, fresh).await {
            if old.is_some() {
                if let Err(s) = self.stop(new).await {
                    tracing::warn!("stopping slot {new} after a failed start: {s}");
                }
            }
            return Err(e);
        }
        st.save(&self.paths)?;
        match &old {
            None => {
                self.proxy(&render_cfg(self.sl, &st, &self.paths, new)).await?;
                self.gate(&st, new).await?;
            }
            Some(old) => {
                self.proxy(&render_cfg(self.sl, &st, &self.paths, old)).await?;
                self.switch(&st, old, new).await?;
                // The switch is done: an old slot that will not stop is a leak, not a failure.
                if let Err(e) = self.stop(old).await {
                    tracing::warn!("slot {old} no longer serves but did not stop: {e}");
                }
            }
        }
        st.live = Some(new.to_string());
        st.save(&self.paths)?;
        // What serves now, for a proxy that starts again (same structure: no reload).
        write_atomic(&self.paths.cfg(), render_cfg(self.sl, &st, &self.paths, new).as_bytes())
    }

    /// The services to judge the app's health by: the shared ones and the live slot's.
    pub fn live_services(&self) -> Option<Vec<String>> {
        let st = State::load(&self.paths).ok()?;
        let live = st.live?;
        let mut out = self.sl.shared.clone();
        out.extend(slot_services(self.sl, &live));
        Some(out)
    }

    /// After a first release failed: stop the proxy and forget the slots.
    pub async fn teardown(&self) {
        let pid = std::fs::read_to_string(self.paths.pid()).unwrap_or_default();
        if let Some(pid) = pid.split_whitespace().next().filter(|p| p.chars().all(|c| c.is_ascii_digit())) {
            let _ = self.ctx.runner.run(&CommandSpec::new("kill", &[pid])).await;
        }
        for f in [self.paths.state(), self.paths.cfg(), self.paths.override_file(), self.paths.pid()] {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dockfra_common::bundle::Route;

    fn spec() -> SlotSpec {
        SlotSpec {
            canary_steps: vec![],
            canary_pause_secs: 0,
            drain_secs: 1,
            health_path: Some("/up".into()),
            routes: vec![Route { service: "web".into(), listen: "0.0.0.0:8080".into(), port: 80 }],
            shared: vec!["db".into()],
        }
    }

    #[test]
    fn config_serves_one_slot_and_its_structure_ignores_the_weights() {
        let p = Paths { dir: "/srv/app/proxy".into() };
        let mut st = State::default();
        st.ports.insert("web:80:blue".into(), 41001);
        st.ports.insert("web:80:green".into(), 41002);
        let blue = render_cfg(&spec(), &st, &p, "blue");
        let green = render_cfg(&spec(), &st, &p, "green");
        assert!(blue.contains("bind 0.0.0.0:8080"), "{blue}");
        assert!(blue.contains("server blue 127.0.0.1:41001 check weight 100\n"), "{blue}");
        assert!(blue.contains("server green 127.0.0.1:41002 check weight 0 disabled\n"), "{blue}");
        assert!(blue.contains("option httpchk GET /up"), "{blue}");
        assert!(blue.contains("stats socket /srv/app/proxy/admin.sock mode 600 level admin"), "{blue}");
        assert_eq!(structure_of(&blue), structure_of(&green), "a switch is no reload");
        st.ports.insert("web:80:green".into(), 41003);
        assert_ne!(structure_of(&render_cfg(&spec(), &st, &p, "blue")), structure_of(&blue), "a new port is");
    }

    #[test]
    fn state_survives_a_save_and_a_load() {
        let dir = std::env::temp_dir().join(format!("dkf-slots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = Paths { dir: dir.clone() };
        assert_eq!(State::load(&p).unwrap(), State::default(), "nothing yet");
        let mut st = State { live: Some("green".into()), ..Default::default() };
        st.releases.insert("green".into(), "4-abc".into());
        st.ports.insert("web:80:blue".into(), 41001);
        st.shared.insert("db".into(), "d1".into());
        st.save(&p).unwrap();
        assert_eq!(State::load(&p).unwrap(), st);
        std::fs::write(p.state(), "{not json").unwrap();
        assert!(State::load(&p).unwrap_err().to_string().contains("state.json"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn show_stat_rows_are_read_by_column_name() {
        // As HAProxy 2.6 prints it (columns cut after check_status, which `parse_stat` finds by name).
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,\n\
web-8080,FRONTEND,,,0,1,262,4,,,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,1,,\n\
web-8080,blue,0,0,2,1,,2,,,,0,,0,0,0,0,DRAIN,100,1,0,0,0,9,0,,1,3,1,,2,,2,0,,1,L7OK,\n\
web-8080,green,0,0,0,1,,2,,,,0,,0,0,0,0,UP,100,1,0,0,0,9,0,,1,3,2,,2,,2,0,,1,L7OK,\n\
web-8080,BACKEND,0,0,0,1,26,4,,,0,0,,0,0,0,0,UP,100,1,0,,0,9,0,,1,3,0,,4,,1,0,,1,,\n";
        let rows = parse_stat(csv);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].server.as_str(), rows[0].sessions, rows[0].status.as_str()), ("blue", 2, "DRAIN"));
        assert!(!passing(&rows[0]) && passing(&rows[1]));
        assert!(parse_stat("not csv").is_empty());
    }
}
