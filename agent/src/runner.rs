//! The one way the agent runs external programs: argv (never a shell string unless the user
//! wrote a script), a timeout, kill-on-drop, captured output, and an error that names the
//! program when it is missing. A fake twin records argv for unit tests.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    pub program: String,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

impl CommandSpec {
    pub fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.to_string(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            env: BTreeMap::new(),
            timeout: Duration::from_secs(300),
        }
    }
    /// A user-written script, run by `sh -c`.
    pub fn script(script: &str) -> Self {
        Self::new("sh", &["-c", script])
    }
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }
    pub fn env(mut self, env: &BTreeMap<String, String>) -> Self {
        self.env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn display(&self) -> String {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// Last lines of stderr (or stdout), for error messages.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{program} not found on PATH")]
    NotFound { program: String },
    #[error("`{command}` timed out after {secs}s")]
    Timeout { command: String, secs: u64 },
    #[error("`{command}` could not run: {source}")]
    Io { command: String, source: std::io::Error },
}

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

pub struct SystemRunner;

#[tonic::async_trait]
impl Runner for SystemRunner {
    async fn run(&self, spec: &CommandSpec) -> Result<Output, RunError> {
        if which(&spec.program).is_none() {
            return Err(RunError::NotFound { program: spec.program.clone() });
        }
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .envs(&spec.env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(d) = &spec.cwd {
            cmd.current_dir(d);
        }
        let child = cmd.spawn().map_err(|source| RunError::Io { command: spec.display(), source })?;
        match tokio::time::timeout(spec.timeout, child.wait_with_output()).await {
            Err(_) => Err(RunError::Timeout { command: spec.display(), secs: spec.timeout.as_secs() }),
            Ok(Err(source)) => Err(RunError::Io { command: spec.display(), source }),
            Ok(Ok(o)) => Ok(Output {
                code: o.status.code(),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            }),
        }
    }
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
}

#[tonic::async_trait]
impl Runner for FakeRunner {
    async fn run(&self, spec: &CommandSpec) -> Result<Output, RunError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn real_runner_reports_missing_timeout_and_exit() {
        let r = SystemRunner;
        let e = r.run(&CommandSpec::new("definitely-not-a-program-xyz", &[])).await.unwrap_err();
        assert_eq!(e.to_string(), "definitely-not-a-program-xyz not found on PATH");
        let e = r.run(&CommandSpec::script("sleep 5").timeout(Duration::from_millis(200))).await.unwrap_err();
        assert!(matches!(e, RunError::Timeout { .. }));
        let o = r.run(&CommandSpec::script("echo out; echo err >&2; exit 3")).await.unwrap();
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout.trim(), "out");
        assert_eq!(o.tail(), "err");
    }
}
