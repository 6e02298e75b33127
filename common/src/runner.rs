//! The one way dockfra runs external programs, on the agent (drivers, hooks, health checks)
//! and on the coordinator (`docker build/save/push`, `ssh`/`scp` for `agent install`):
//! argv (never a shell string unless the user wrote a script), a timeout, captured output
//! (capped, the tail kept), secrets on stdin, and an error that names the program when it is
//! missing.
//!
//! Every child runs in a process group of its own. A timeout, or a caller that gives up (the
//! future dropped), kills the whole group, so a hook's own children (`sleep`, a forked
//! server) do not outlive it as orphans. A child that exits normally keeps whatever it left
//! running on purpose; its output is read until it exits and briefly after, never until a
//! background process closes an inherited pipe.
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// At most this much of each of stdout and stderr is kept (the tail).
pub const MAX_CAPTURE: usize = 1 << 20;
/// After the child exits, how long its pipes are still read (a daemon it forked may hold them).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Bytes written to the child's stdin (then closed): how secrets reach a program, never argv.
    pub stdin: Option<Vec<u8>>,
}

impl CommandSpec {
    pub fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: BTreeMap::new(),
            timeout: Duration::from_secs(300),
            stdin: None,
        }
    }
    /// From an argv vector (`argv[0]` is the program).
    pub fn argv(argv: &[String]) -> Self {
        let mut s = Self::new(argv.first().map(String::as_str).unwrap_or_default(), &[]);
        s.args = argv.iter().skip(1).cloned().collect();
        s
    }
    /// A user-written script, run by `sh -c`.
    pub fn script(script: &str) -> Self {
        Self::new("sh", &["-c", script])
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }
    pub fn env(mut self, env: &BTreeMap<String, String>) -> Self {
        self.env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }
    pub fn var(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }
    /// The command line for messages (stdin is never shown).
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// How it ended, in words: `exited with 1`, `was killed by a signal`; with the tail of its
    /// output when there is one.
    pub fn failure(&self) -> String {
        let how = exit_text(self.code);
        match self.tail() {
            t if t.is_empty() => how,
            t => format!("{how}: {t}"),
        }
    }
    /// Last lines of stderr (or stdout), for error messages.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

/// `exited with N`, or `was killed by a signal` when there is no exit code.
pub fn exit_text(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exited with {c}"),
        None => "was killed by a signal".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{program} not found on PATH")]
    NotFound { program: String },
    #[error("`{command}` timed out after {secs}s (its process group was killed)")]
    Timeout { command: String, secs: u64 },
    #[error("`{command}` could not run: {source}")]
    Io { command: String, source: std::io::Error },
}

/// The seam drivers and builders run programs through; [`SystemRunner`] runs them for real,
/// [`FakeRunner`] records them in unit tests.
#[tonic::async_trait]
pub trait Runner: Send + Sync {
    async fn run(&self, spec: &CommandSpec) -> Result<Output, RunError>;
}

/// Find a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
    })
}

/// SIGKILL every process of the group led by `pid` (the child we started).
fn kill_group(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// Kills the child's process group when dropped before it was disarmed: a timeout, or a
/// caller that stopped waiting.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_group(pid);
        }
    }
}

/// Keep the last [`MAX_CAPTURE`] bytes of a stream.
fn keep_tail(buf: &mut Vec<u8>, chunk: &[u8]) {
    buf.extend_from_slice(chunk);
    if buf.len() > 2 * MAX_CAPTURE {
        buf.drain(..buf.len() - MAX_CAPTURE);
    }
}

fn finish_capture(mut buf: Vec<u8>) -> String {
    if buf.len() > MAX_CAPTURE {
        buf.drain(..buf.len() - MAX_CAPTURE);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

pub struct SystemRunner;

#[tonic::async_trait]
impl Runner for SystemRunner {
    async fn run(&self, spec: &CommandSpec) -> Result<Output, RunError> {
        run(spec).await
    }
}

/// Run a command on the tokio runtime (see the module doc for what is killed when).
pub async fn run(spec: &CommandSpec) -> Result<Output, RunError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if which(&spec.program).is_none() {
        return Err(RunError::NotFound { program: spec.program.clone() });
    }
    let io = |source| RunError::Io { command: spec.display(), source };
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(io)?;
    let mut guard = GroupGuard(child.id());
    if let (Some(bytes), Some(mut pipe)) = (spec.stdin.clone(), child.stdin.take()) {
        // A child that never reads its stdin must not block us: write in the background.
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    let reader = |pipe: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>| {
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let Some(mut pipe) = pipe else { return buf };
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut chunk).await {
                    Ok(0) | Err(_) => return buf,
                    Ok(n) => keep_tail(&mut buf, &chunk[..n]),
                }
            }
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Err(_) => {
            drop(guard); // kills the group
            let _ = child.wait().await;
            out.abort();
            err.abort();
            return Err(RunError::Timeout { command: spec.display(), secs: spec.timeout.as_secs() });
        }
        Ok(r) => r.map_err(io)?,
    };
    guard.disarm();
    let collect = |h: tokio::task::JoinHandle<Vec<u8>>| async move {
        let abort = h.abort_handle();
        match tokio::time::timeout(DRAIN_GRACE, h).await {
            Ok(Ok(buf)) => buf,
            _ => {
                abort.abort();
                Vec::new()
            }
        }
    };
    let (stdout, stderr) = tokio::join!(collect(out), collect(err));
    Ok(Output { code: status.code(), stdout: finish_capture(stdout), stderr: finish_capture(stderr) })
}

/// The same, for synchronous callers (the coordinator's builder on a blocking thread, the SSH
/// bootstrap): no runtime needed.
pub fn run_blocking(spec: &CommandSpec) -> Result<Output, RunError> {
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    if which(&spec.program).is_none() {
        return Err(RunError::NotFound { program: spec.program.clone() });
    }
    let io = |source| RunError::Io { command: spec.display(), source };
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(&spec.env)
        .stdin(if spec.stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(io)?;
    let mut guard = GroupGuard(Some(child.id()));
    if let (Some(bytes), Some(mut pipe)) = (spec.stdin.clone(), child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let reader = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let mut chunk = vec![0u8; 64 * 1024];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    keep_tail(&mut buf, &chunk[..n]);
                }
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(io)? {
            break s;
        }
        if start.elapsed() >= spec.timeout {
            drop(guard);
            let _ = child.wait();
            return Err(RunError::Timeout { command: spec.display(), secs: spec.timeout.as_secs() });
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    guard.disarm();
    let stdout = out.recv_timeout(DRAIN_GRACE).unwrap_or_default();
    let stderr = err.recv_timeout(DRAIN_GRACE).unwrap_or_default();
    Ok(Output { code: status.code(), stdout: finish_capture(stdout), stderr: finish_capture(stderr) })
}

/// Records every command; answers from a script of canned outputs (default: success, no
/// output).
#[derive(Default)]
pub struct FakeRunner {
    pub calls: std::sync::Mutex<Vec<CommandSpec>>,
    pub missing: Vec<String>,
    /// (start of the command line, stdout): the first match answers; when a later entry
    /// matches too, the first is used up, so replies to one command come in order.
    pub replies: std::sync::Mutex<Vec<(String, String)>>,
}

impl FakeRunner {
    /// Answer commands that start with `prefix` with `stdout` (exit 0).
    pub fn reply(self, prefix: &str, stdout: &str) -> Self {
        self.replies.lock().unwrap_or_else(|p| p.into_inner()).push((prefix.into(), stdout.into()));
        self
    }

    fn answer(&self, spec: &CommandSpec) -> Result<Output, RunError> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).push(spec.clone());
        if self.missing.contains(&spec.program) {
            return Err(RunError::NotFound { program: spec.program.clone() });
        }
        let line = spec.display();
        let mut replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let matching: Vec<usize> =
            replies.iter().enumerate().filter(|(_, (p, _))| line.starts_with(p.as_str())).map(|(i, _)| i).collect();
        let stdout = match matching.as_slice() {
            [] => String::new(),
            [only] => replies[*only].1.clone(),
            [first, ..] => replies.remove(*first).1,
        };
        Ok(Output { code: Some(0), stdout, stderr: String::new() })
    }

    /// The blocking twin of [`Runner::run`], for synchronous callers under test.
    pub fn run_blocking(&self, spec: &CommandSpec) -> Result<Output, RunError> {
        self.answer(spec)
    }
}

#[tonic::async_trait]
impl Runner for FakeRunner {
    async fn run(&self, spec: &CommandSpec) -> Result<Output, RunError> {
        self.answer(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: &str) -> bool {
        std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default().contains(") Z ")
    }

    #[tokio::test]
    async fn reports_missing_timeout_exit_and_stdin() {
        let e = run(&CommandSpec::new("definitely-not-a-program-xyz", &[])).await.unwrap_err();
        assert_eq!(e.to_string(), "definitely-not-a-program-xyz not found on PATH");
        let e = run(&CommandSpec::script("sleep 5").timeout(Duration::from_millis(200))).await.unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }));
        let o = run(&CommandSpec::script("echo out; echo err >&2; exit 3")).await.unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout.trim(), "out");
        assert_eq!(o.tail(), "err");
        let o = run(&CommandSpec::script("read x; echo got:$x").stdin("secret\n")).await.unwrap();
        assert_eq!(o.stdout.trim(), "got:secret");
        let o = run_blocking(&CommandSpec::script("read x; echo got:$x; exit 4").stdin("s\n")).unwrap();
        assert_eq!((o.code, o.stdout.trim()), (Some(4), "got:s"));
        assert!(matches!(
            run_blocking(&CommandSpec::script("sleep 5").timeout(Duration::from_millis(200))),
            Err(RunError::Timeout { .. })
        ));
    }

    /// A killed hook takes its children along: the grandchild `sleep` started by the script
    /// dies with it, on a timeout and when the caller drops the future.
    #[tokio::test]
    async fn a_timeout_or_a_cancel_kills_the_whole_process_group() {
        let dir = std::env::temp_dir().join(format!("dkf-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (i, how) in ["timeout", "cancel", "blocking"].iter().enumerate() {
            let pidfile = dir.join(format!("pid{i}"));
            let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
            let spec = CommandSpec::script(&script).timeout(Duration::from_millis(500));
            match *how {
                "timeout" => assert!(run(&spec).await.is_err()),
                "blocking" => assert!(run_blocking(&spec).is_err()),
                _ => {
                    let spec = spec.timeout(Duration::from_secs(60));
                    let _ = tokio::time::timeout(Duration::from_millis(500), run(&spec)).await;
                }
            }
            let pid = std::fs::read_to_string(&pidfile).unwrap();
            let start = Instant::now();
            while alive(&pid) && start.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(!alive(&pid), "{how}: the hook's child {} outlived it", pid.trim());
        }
        // A daemon a successful command leaves behind keeps running, and does not make us
        // wait for its inherited stdout.
        let pidfile = dir.join("daemon");
        let started = Instant::now();
        let o =
            run(&CommandSpec::script(&format!("sleep 30 & echo $! > {}; echo up", pidfile.display()))).await.unwrap();
        assert!(o.success() && started.elapsed() < Duration::from_secs(10));
        let pid = std::fs::read_to_string(&pidfile).unwrap();
        assert!(alive(&pid));
        kill_group(pid.trim().parse().unwrap());
        let _ = std::process::Command::new("kill").args(["-9", pid.trim()]).status();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
