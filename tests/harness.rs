//! Test harness for the end-to-end suite: finds the real `dockfra-coord` and `dockfra-agent`
//! binaries, gives each test its own temp dir, runs commands, starts servers and agents as
//! child processes (killed on drop), and waits for conditions with deadlines.
//!
//! A test that needs what this machine lacks (root, an engine, a tool) says so up front with
//! [`Needs`] and skips, naming exactly what is missing. `DOCKFRA_REQUIRE_ENGINES=1` (set by
//! `.ci/run`) turns that skip into a failure, so CI never passes by skipping; `DOCKFRA_SKIP_LOG`
//! (set by `scripts/test`) collects the skips so the total line can count and list them.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where cargo put the binaries (`CARGO_TARGET_DIR` or `<workspace>/target`, debug profile).
pub fn bin(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("debug").join(name);
    assert!(p.is_file(), "{} not built: run `cargo build --workspace` first (scripts/test does it)", p.display());
    p.canonicalize().expect("binary path")
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("workspace dir")
}

/// Skip a test that needs something this machine lacks — unless CI demands it. `why` names
/// what is missing. With `DOCKFRA_SKIP_LOG` naming a file, appends `<test name>: <why>` to it
/// (libtest names each test's thread after the test's path, e.g. `faults::disk_full_…`).
pub fn skip_or_fail(why: &str) -> bool {
    if std::env::var_os("DOCKFRA_REQUIRE_ENGINES").is_some_and(|v| v == "1") {
        panic!("required for this test but missing: {why} (DOCKFRA_REQUIRE_ENGINES=1)");
    }
    eprintln!("SKIP: {why}");
    if let Some(log) = std::env::var_os("DOCKFRA_SKIP_LOG") {
        let log = PathBuf::from(log);
        let test = std::thread::current().name().unwrap_or("(unnamed test)").to_string();
        // One write per line, appended: tests skip from several threads at once.
        let line = format!("{test}: {}\n", why.replace('\n', " "));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("DOCKFRA_SKIP_LOG {}: {e}", log.display()));
    }
    true
}

/// What a test needs from this machine, checked before it starts. Each check that fails
/// records exactly what is missing and where it comes from; [`Needs::unmet`] then skips
/// (through [`skip_or_fail`]) naming all of it:
///
/// ```ignore
/// if Needs::new().docker().tool("cargo-deb", "cargo install cargo-deb").unmet() {
///     return;
/// }
/// ```
#[must_use = "call .unmet() and return when it says so"]
#[derive(Default)]
pub struct Needs {
    missing: Vec<String>,
    /// Whether `docker info` answered, once asked: image and swarm checks need the engine.
    engine: Option<bool>,
}

impl Needs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `what` as missing unless `ok`.
    pub fn check(mut self, ok: bool, what: impl Into<String>) -> Self {
        if !ok {
            self.missing.push(what.into());
        }
        self
    }

    /// Root, for `purpose` (e.g. "to mount a small tmpfs").
    pub fn root(self, purpose: &str) -> Self {
        self.check(is_root(), format!("root ({purpose})"))
    }

    /// `program` on PATH; `from` says where it comes from (a Debian package, a script).
    pub fn tool(self, program: &str, from: &str) -> Self {
        self.check(on_path(program), format!("`{program}` on PATH ({from})"))
    }

    /// A file some script makes, e.g. a cross-built agent.
    pub fn file(self, path: &Path, from: &str) -> Self {
        self.check(path.is_file(), format!("{} ({from})", path.display()))
    }

    /// What the Docker tests drive: an engine, compose v2 and the local test image
    /// (`scripts/engines` makes all three).
    pub fn docker(self) -> Self {
        self.engine()
            .check(succeeds("docker", &["compose", "version"]), "docker compose v2 (scripts/engines)")
            .image("dockfra-busybox:test")
    }

    /// The image `tag` in a Docker engine.
    pub fn image(mut self, tag: &str) -> Self {
        self = self.engine();
        if self.engine != Some(true) {
            return self;
        }
        let ok = succeeds("docker", &["image", "inspect", tag]);
        self.check(ok, format!("the Docker image {tag} (scripts/engines makes it)"))
    }

    /// A Docker engine in swarm mode.
    pub fn swarm(mut self) -> Self {
        self = self.engine();
        if self.engine != Some(true) {
            return self;
        }
        let state = Command::new("docker")
            .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let what =
            format!("a swarm: the Docker engine's swarm state is {state:?} (scripts/engines runs `docker swarm init`)");
        self.check(state == "active", what)
    }

    /// Podman and podman-compose.
    pub fn podman(self) -> Self {
        self.check(succeeds("podman", &["info"]), "Podman (`podman info` fails; scripts/engines)").check(
            succeeds("podman-compose", &["version"]),
            "podman-compose (`podman-compose version` fails; scripts/engines)",
        )
    }

    /// True when something is missing: the test has been skipped (or, under
    /// `DOCKFRA_REQUIRE_ENGINES=1`, failed) and must return.
    pub fn unmet(self) -> bool {
        !self.missing.is_empty() && skip_or_fail(&self.missing.join("; "))
    }

    /// A Docker engine that answers `docker info`; asked once, recorded once if missing.
    fn engine(mut self) -> Self {
        if self.engine.is_none() {
            let up = succeeds("docker", &["info"]);
            self.engine = Some(up);
            self = self.check(up, "a Docker engine (`docker info` fails; scripts/engines starts dockerd)");
        }
        self
    }
}

/// `program ARGS…` runs and exits 0 (output discarded).
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).output().map(|o| o.status.success()).unwrap_or(false)
}

/// `program` is found on PATH.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable = |p: PathBuf| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| runnable(d.join(program))))
}

pub fn is_root() -> bool {
    dockfra_common::is_root()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One of the tests' scripted API servers (`tests/kubeapi/kube_api.py`, …) on a free
/// loopback port it picks itself and writes to `--port-file`; its stderr in `w`'s dir as
/// `TAG.stderr`. The running process and its port.
pub fn scripted_api(w: &World, script: &str, tag: &str, args: &[&std::ffi::OsStr]) -> (Proc, u16) {
    let port_file = w.dir.join(format!("{tag}.port"));
    let stderr = w.dir.join(format!("{tag}.stderr"));
    let mut c = Command::new("python3");
    c.arg(workspace().join(script))
        .arg("--port-file")
        .arg(&port_file)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap());
    let proc = Proc { child: c.spawn().unwrap_or_else(|e| panic!("python3 {script}: {e}")), log: stderr };
    wait_until(script, Duration::from_secs(10), || port_file.exists());
    let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
    (proc, port)
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// Graceful stop: SIGTERM, then wait.
    pub fn term(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "process ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Result of a finished command, with helpers that print everything on failure.
pub struct Run {
    pub out: Output,
    pub what: String,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn ok(self) -> Self {
        assert!(
            self.out.status.success(),
            "{} failed ({}):\nstdout: {}\nstderr: {}",
            self.what,
            self.code(),
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn fails(self) -> Self {
        assert!(
            !self.out.status.success(),
            "{} unexpectedly succeeded:\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout(),
            self.stderr()
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout().trim())
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.what, self.stdout()))
    }
}

pub fn run(mut cmd: Command) -> Run {
    let what = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    Run { out, what }
}

/// One test's world: a temp dir, a project, a coordinator, agents.
pub struct World {
    pub dir: PathBuf,
    pub coord_state: PathBuf,
    pub project: PathBuf,
    /// Prefix for commands (e.g. `ip netns exec NS`); empty on the host.
    pub coord_prefix: Vec<String>,
}

impl World {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("dkf-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let project = dir.join("project");
        std::fs::create_dir_all(project.join("app")).unwrap();
        Self { coord_state: dir.join("coord"), project, dir, coord_prefix: vec![] }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn prefixed(&self, program: PathBuf) -> Command {
        if self.coord_prefix.is_empty() {
            Command::new(program)
        } else {
            let mut c = Command::new(&self.coord_prefix[0]);
            c.args(&self.coord_prefix[1..]).arg(program);
            c
        }
    }

    /// `dockfra-coord --state-dir <coord> ARGS…`
    pub fn coord(&self, args: &[&str]) -> Run {
        let mut c = self.prefixed(bin("dockfra-coord"));
        c.arg("--state-dir").arg(&self.coord_state).args(args).env("DOCKFRA_LOG", "warn");
        run(c)
    }

    pub fn init(&self, listen: &str) {
        self.coord(&["init", "--listen", listen]).ok();
    }

    /// Start `serve --root <project>` and wait until it has bound.
    pub fn serve(&self, extra: &[&str]) -> Proc {
        self.serve_env(extra, &[])
    }

    /// `serve` with extra environment (e.g. `DOCKFRA_FAULT` for the fault suite).
    pub fn serve_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let addr_file = self.coord_state.join("serve.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = self.dir.join(format!("coord-{}.log", rand_u64()));
        let mut c = self.prefixed(bin("dockfra-coord"));
        c.arg("--state-dir")
            .arg(&self.coord_state)
            .args(["serve", "--root"])
            .arg(&self.project)
            .args(extra)
            // Tests run side by side: the dashboard takes a free port unless a test names one.
            .args(if extra.contains(&"--http-listen") { &[][..] } else { &["--http-listen", "127.0.0.1:0"][..] })
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut p = Proc { child: c.spawn().unwrap(), log };
        let start = Instant::now();
        while !addr_file.exists() {
            if let Some(s) = p.child.try_wait().unwrap() {
                panic!("coordinator exited ({s}) before binding:\n{}", p.log());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "coordinator did not bind:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(30));
        }
        p
    }

    pub fn addr(&self) -> String {
        std::fs::read_to_string(self.coord_state.join("serve.addr")).unwrap().trim().to_string()
    }

    /// Where `serve` put the dashboard and the REST API (`ADDR:PORT`).
    pub fn http_addr(&self) -> String {
        std::fs::read_to_string(self.coord_state.join("http.addr")).unwrap().trim().to_string()
    }

    /// A REST API bearer token for the CLI's operator (`operator token`).
    pub fn api_token(&self) -> String {
        self.coord(&["operator", "token"]).ok().stdout().trim().to_string()
    }

    /// One REST API call over real HTTPS (curl, the coordinator's CA trusted): the status
    /// code and the body (JSON when it is JSON, else a string).
    pub fn api(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, serde_json::Value) {
        let mut c = Command::new("curl");
        c.args(["-sS", "-X", method, "--max-time", "120", "-w", "\n%{http_code}", "--cacert"])
            .arg(self.coord_state.join("ca.crt"));
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        c.arg(format!("https://{}{path}", self.http_addr()));
        let out = c.output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code: u16 = code
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl {path}: {text} {}", String::from_utf8_lossy(&out.stderr)));
        let v = serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.to_string()));
        (code, v)
    }

    /// `coord ARGS… --output json` style: (exit code, the JSON it printed).
    pub fn coord_json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let r = self.coord(args);
        (r.code(), r.json())
    }

    /// The usual start of a test: `init` on loopback, `serve`, and a push agent for `target`
    /// listening on 127.0.0.1:`port`, enrolled and running. Keep the two processes alive.
    pub fn start_push(&self, name: &str, target: &str, port: u16) -> (Proc, Agent, Proc) {
        self.init("127.0.0.1:0");
        let coord = self.serve(&[]);
        let mut agent = Agent::new(self, name);
        agent.listen = Some(format!("127.0.0.1:{port}"));
        agent.enroll(&format!("https://{}", self.addr()), &self.token(target)).ok();
        let run = agent.start(self);
        (coord, agent, run)
    }

    pub fn token(&self, target: &str) -> String {
        self.coord(&["token", "create", target]).ok().stdout().trim().to_string()
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// An agent's state dir and how to run it.
pub struct Agent {
    pub state: PathBuf,
    pub prefix: Vec<String>,
    pub listen: Option<String>,
    /// Another agent binary (e.g. a cross-built one); default: the workspace's debug build.
    pub program: Option<PathBuf>,
}

impl Agent {
    pub fn new(world: &World, name: &str) -> Self {
        Self { state: world.dir.join(format!("agent-{name}")), prefix: vec![], listen: None, program: None }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let program = self.program.clone().unwrap_or_else(|| bin("dockfra-agent"));
        let mut c = if self.prefix.is_empty() {
            Command::new(program)
        } else {
            let mut c = Command::new(&self.prefix[0]);
            c.args(&self.prefix[1..]).arg(program);
            c
        };
        c.arg("--state-dir").arg(&self.state).args(args);
        c
    }

    pub fn run_cmd(&self, args: &[&str]) -> Run {
        run(self.cmd(args))
    }

    pub fn enroll(&self, coordinator: &str, token: &str) -> Run {
        self.run_cmd(&["enroll", "--coordinator", coordinator, "--token", token])
    }

    /// Start `run`; for push agents, wait until the port accepts connections.
    pub fn start(&self, world: &World) -> Proc {
        self.start_env(world, &[])
    }

    /// `run` with extra environment (e.g. `DOCKFRA_FAULT` for the fault suite).
    pub fn start_env(&self, world: &World, env: &[(&str, &str)]) -> Proc {
        let log = world.dir.join(format!("{}-{}.log", self.state.file_name().unwrap().to_string_lossy(), rand_u64()));
        let mut args = vec!["run"];
        if let Some(l) = &self.listen {
            args.extend(["--listen", l.as_str()]);
        }
        let mut c = self.cmd(&args);
        c.env("DOCKFRA_LOG", "dockfra_agent=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let p = Proc { child: c.spawn().unwrap(), log };
        if let Some(l) = &self.listen {
            wait_until("the push agent to listen", Duration::from_secs(20), || {
                if self.prefix.is_empty() {
                    return std::net::TcpStream::connect(l).is_ok();
                }
                // In a network namespace: connect from inside it.
                let (host, port) = l.rsplit_once(':').unwrap();
                Command::new(&self.prefix[0])
                    .args(&self.prefix[1..])
                    .args(["bash", "-c", &format!("exec 3<>/dev/tcp/{host}/{port}")])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
        } else {
            wait_until("the agent to start", Duration::from_secs(20), || self.state.join("agent.pid").exists());
        }
        p
    }

    pub fn status(&self) -> serde_json::Value {
        self.run_cmd(&["status", "--output", "json"]).ok().json()
    }
}

/// Run `sh -c CMD` and assert it succeeded.
pub fn sh(cmd: &str) {
    let s = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(s.success(), "{cmd}");
}

/// Two network namespaces joined by a veth pair, made for one test and removed when dropped:
/// `c` (the coordinator's side, `ipc`, link `link_c`) and `a` (the agent's, `ipa`, `link_a`),
/// on a /30 of 10.`net`.`id`.0.
pub struct NetPair {
    pub c: String,
    pub a: String,
    pub ipc: String,
    pub ipa: String,
    pub link_c: String,
    pub link_a: String,
}

impl NetPair {
    /// `tag` keeps the names of tests that run at once apart; `net` their subnets.
    pub fn new(tag: &str, net: u8) -> Self {
        let id = (std::process::id() + u32::from(net)) % 200 + 20;
        let p = NetPair {
            c: format!("dkf{tag}c{id}"),
            a: format!("dkf{tag}a{id}"),
            ipc: format!("10.{net}.{id}.1"),
            ipa: format!("10.{net}.{id}.2"),
            link_c: format!("v{tag}c{id}"),
            link_a: format!("v{tag}a{id}"),
        };
        sh(&format!("ip netns add {} && ip netns add {}", p.c, p.a));
        sh(&format!("ip link add {} netns {} type veth peer name {} netns {}", p.link_c, p.c, p.link_a, p.a));
        for (ns, link, ip) in [(&p.c, &p.link_c, &p.ipc), (&p.a, &p.link_a, &p.ipa)] {
            sh(&format!(
                "ip -n {ns} addr add {ip}/30 dev {link} && ip -n {ns} link set {link} up && ip -n {ns} link set lo up"
            ));
        }
        p
    }

    /// `ip netns exec NS` as a command prefix.
    pub fn prefix(ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.to_string()]
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for n in [&self.c, &self.a] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// The coordinator's view of one deployment (from `history --output json`).
pub fn deployment(w: &World, id: &str) -> serde_json::Value {
    let (_, v) = w.coord_json(&["history", "--output", "json"]);
    v.as_array().into_iter().flatten().find(|d| d["id"] == id).cloned().unwrap_or_default()
}

/// Wait until deployment `id` is final; returns its row.
pub fn wait_final(w: &World, id: &str, timeout: Duration) -> serde_json::Value {
    let mut row = serde_json::Value::Null;
    wait_until(&format!("deployment {id} to be final"), timeout, || {
        row = deployment(w, id);
        row["done"] == true
    });
    row
}

/// Every file under `root` with its content hash (symlinks by target) — to assert "nothing changed".
pub fn snapshot(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.push((rel, format!("-> {}", std::fs::read_link(&p).unwrap().display())));
            } else if ft.is_dir() {
                out.push((rel, "dir".into()));
                stack.push(p);
            } else {
                out.push((rel, dockfra_common::sha256_hex(&std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

/// Run `docker ARGS…`: (success, trimmed stdout, stderr).
pub fn docker(args: &[&str]) -> (bool, String, String) {
    let o = Command::new("docker").args(args).output().expect("docker");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

/// Make image `tag` from the local test image with an id of its own (a new layer of
/// metadata), so removing it really removes it from the engine. Returns its id.
pub fn make_image(tag: &str) -> String {
    let tmp = format!("dkf-e2e-mk-{}-{}", std::process::id(), rand_u64());
    assert!(docker(&["create", "--name", &tmp, "dockfra-busybox:test", "true"]).0);
    let (ok, _, err) = docker(&["commit", "-c", &format!("LABEL dockfra.e2e={tag}"), &tmp, tag]);
    docker(&["rm", &tmp]);
    assert!(ok, "docker commit: {err}");
    docker(&["image", "inspect", "--format", "{{.Id}}", tag]).1
}

/// Removes what a Docker test made (compose projects, stacks, images), also when it fails.
pub struct DockerCleanup {
    pub compose_projects: Vec<String>,
    pub stacks: Vec<String>,
    pub images: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for p in &self.compose_projects {
            docker(&["compose", "-p", p, "down", "-t", "1", "--remove-orphans"]);
        }
        for s in &self.stacks {
            docker(&["stack", "rm", s]);
        }
        for i in &self.images {
            docker(&["rmi", "-f", i]);
        }
    }
}

/// A load generator for the zero-downtime proofs: `workers` threads send `GET /` to
/// 127.0.0.1:`port` over keep-alive connections (a new one when the server says `close` or
/// closes it between answers), one request after another, until [`Load::stop`]. A request
/// written that gets no complete `200` is a failure, with what went wrong.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<LoadReport>>,
    started: Instant,
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: Vec<String>,
    /// Each body answered, and how often.
    pub bodies: std::collections::BTreeMap<String, u64>,
    pub seconds: f64,
}

/// One HTTP/1.1 exchange on `conn` (made when `None`): the status, the body, and whether the
/// connection may be used again.
fn http_exchange(conn: &mut Option<std::net::TcpStream>, port: u16) -> Result<(u16, String), String> {
    use std::io::{BufRead, BufReader, Read};
    let fresh = conn.is_none();
    if conn.is_none() {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        *conn = Some(s);
    }
    let s = conn.as_mut().unwrap();
    if let Err(e) = s.write_all(b"GET / HTTP/1.1\r\nHost: load\r\n\r\n") {
        *conn = None;
        return Err(format!("write: {e}"));
    }
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut status = String::new();
    if r.read_line(&mut status).map_err(|e| format!("read: {e}"))? == 0 {
        *conn = None;
        // A kept-alive connection the server closed before this request: ask again, once.
        return if fresh { Err("closed without an answer".into()) } else { http_exchange(conn, port) };
    }
    let code: u16 =
        status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(format!("status line {status:?}"))?;
    let (mut len, mut close) = (None, false);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| format!("read headers: {e}"))?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap_or((line, ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse::<usize>().ok(),
            "connection" => close = v.trim().eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).map_err(|e| format!("read body: {e}"))?;
        }
        None => {
            r.read_to_end(&mut body).map_err(|e| format!("read body: {e}"))?;
            close = true;
        }
    }
    if close {
        *conn = None;
    }
    Ok((code, String::from_utf8_lossy(&body).trim().to_string()))
}

impl Load {
    pub fn start(port: u16, workers: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut rep = LoadReport::default();
                    let mut conn = None;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match http_exchange(&mut conn, port) {
                            Ok((200, body)) => {
                                rep.ok += 1;
                                *rep.bodies.entry(body).or_default() += 1;
                            }
                            Ok((code, body)) => rep.failed.push(format!("{code}: {body}")),
                            Err(e) => {
                                conn = None;
                                rep.failed.push(e);
                            }
                        }
                    }
                    rep
                })
            })
            .collect();
        Load { stop, threads, started: Instant::now() }
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = LoadReport { seconds: self.started.elapsed().as_secs_f64(), ..Default::default() };
        for t in self.threads {
            let r = t.join().expect("load thread");
            all.ok += r.ok;
            all.failed.extend(r.failed);
            for (b, n) in r.bodies {
                *all.bodies.entry(b).or_default() += n;
            }
        }
        all
    }
}

/// Kills the process a pid file names (a daemon a test's agent started), also when it fails.
pub struct KillPidFile(pub PathBuf);

impl Drop for KillPidFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}
