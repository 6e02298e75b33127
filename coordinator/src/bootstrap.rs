//! `dockfra-coord agent install TARGET`: put an agent on a target over SSH. The system's
//! `ssh`/`scp` do the work (key auth only, `BatchMode`), and the host key is always checked:
//! against a known_hosts file, or against a SHA256 fingerprint the operator gives, never
//! accepted on first sight. The steps: probe the host (OS, architecture, distribution,
//! systemd, uid), pick the matching package, upload it, install it, write
//! /etc/dockfra/agent.yaml, enroll with a fresh one-time token (sent on stdin, never in an
//! argv or a log), start the service, and let the caller verify with `deploy-test`.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use dockfra_common::pkg::PackageManager;

/// One finished command.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs local programs (`ssh`, `scp`, `ssh-keyscan`, `ssh-keygen`); a fake in unit tests.
pub trait Shell {
    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<Output>;
}

/// How long one ssh/scp step may take (an upload over a slow link included).
const STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The real one: the shared runner (timeout, the whole process group killed on it, stdin
/// piped when given).
pub struct SystemShell;

impl Shell for SystemShell {
    fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<Output> {
        let mut spec = dockfra_common::runner::CommandSpec::argv(argv).timeout(STEP_TIMEOUT);
        if let Some(bytes) = stdin {
            spec = spec.stdin(bytes);
        }
        let o = dockfra_common::runner::run_blocking(&spec).with_context(|| format!("cannot run {}", argv[0]))?;
        Ok(Output { code: o.code.unwrap_or(-1), stdout: o.stdout, stderr: o.stderr })
    }
}

/// How the host key is checked.
#[derive(Debug, Clone)]
pub enum HostKey {
    /// A known_hosts file (default: the user's ~/.ssh/known_hosts).
    KnownHosts(PathBuf),
    /// `SHA256:…` as `ssh-keygen -lf` prints it: the keys the host offers are fetched with
    /// `ssh-keyscan` and only one with this fingerprint is trusted.
    Fingerprint(String),
}

/// Where and as whom to log in.
#[derive(Debug, Clone)]
pub struct Remote {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity: Option<PathBuf>,
    /// The known_hosts file ssh is told to trust (a temp one for a fingerprint).
    pub known_hosts: PathBuf,
}

/// Quote one word for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

impl Remote {
    fn opts(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]
        .map(String::from)
        .to_vec();
        v.push("-o".into());
        v.push(format!("UserKnownHostsFile={}", self.known_hosts.display()));
        if let Some(id) = &self.identity {
            v.extend(["-o".into(), "IdentitiesOnly=yes".into(), "-i".into(), id.display().to_string()]);
        }
        v
    }

    /// `ssh … USER@HOST -- SCRIPT`: SCRIPT runs in the remote user's shell.
    pub fn ssh_argv(&self, script: &str) -> Vec<String> {
        let mut v = vec!["ssh".to_string(), "-p".into(), self.port.to_string()];
        v.extend(self.opts());
        v.push(format!("{}@{}", self.user, self.host));
        v.push("--".into());
        v.push(script.to_string());
        v
    }

    /// `scp … LOCAL USER@HOST:REMOTE`.
    pub fn scp_argv(&self, local: &Path, remote: &str) -> Vec<String> {
        let mut v = vec!["scp".to_string(), "-q".into(), "-P".into(), self.port.to_string()];
        v.extend(self.opts());
        v.push(local.display().to_string());
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        v.push(format!("{}@{host}:{remote}", self.user));
        v
    }

    fn exec(&self, sh: &dyn Shell, step: &str, script: &str, stdin: Option<&[u8]>) -> Result<String> {
        let o = sh.run(&self.ssh_argv(script), stdin)?;
        if o.code != 0 {
            let tail: Vec<&str> = o.stderr.lines().rev().filter(|l| !l.trim().is_empty()).take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{step} on {}@{}:{} failed (exit {}): {}", self.user, self.host, self.port, o.code, tail.join(" | "));
        }
        Ok(o.stdout)
    }
}

/// Trust only the host key with `fingerprint`: fetch the host's keys with ssh-keyscan, keep
/// the one whose `ssh-keygen -lf` fingerprint matches, and write it to `known_hosts`.
pub fn pin_fingerprint(sh: &dyn Shell, host: &str, port: u16, fingerprint: &str, known_hosts: &Path) -> Result<()> {
    let scan = sh.run(&["ssh-keyscan", "-p", &port.to_string(), "-T", "10", host].map(String::from), None)?;
    let mut matched = Vec::new();
    let mut seen = Vec::new();
    for line in scan.stdout.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let fp = sh.run(&["ssh-keygen", "-l", "-E", "sha256", "-f", "-"].map(String::from), Some(line.as_bytes()))?;
        let Some(got) = fp.stdout.split_whitespace().nth(1).map(String::from) else { continue };
        if got == fingerprint {
            matched.push(line.to_string());
        }
        seen.push(got);
    }
    if seen.is_empty() {
        bail!("cannot read the host key of {host}:{port} (ssh-keyscan: {})", scan.stderr.trim());
    }
    if matched.is_empty() {
        bail!(
            "host key of {host}:{port} does not match {fingerprint} (it offers {}): refusing to connect",
            seen.join(", ")
        );
    }
    dockfra_common::write_atomic(known_hosts, format!("{}\n", matched.join("\n")).as_bytes(), 0o600)?;
    Ok(())
}

/// What the probe found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub kernel: String,
    pub machine: String,
    pub id: String,
    pub id_like: String,
    pub systemd: bool,
    pub root: bool,
}

/// The probe's script: one `key=value` per line.
pub const PROBE: &str = "echo kernel=$(uname -s); echo machine=$(uname -m); \
if [ -r /etc/os-release ]; then . /etc/os-release; echo id=$ID; echo id_like=$ID_LIKE; fi; \
if [ -d /run/systemd/system ]; then echo systemd=1; fi; echo uid=$(id -u)";

pub fn parse_probe(out: &str) -> HostFacts {
    let get = |k: &str| {
        out.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(|v| v.trim().to_string()).unwrap_or_default()
    };
    HostFacts {
        kernel: get("kernel"),
        machine: get("machine"),
        id: get("id"),
        id_like: get("id_like"),
        systemd: get("systemd") == "1",
        root: get("uid") == "0",
    }
}

/// Debian's architecture name and Rust's target for `uname -m`.
pub fn arch_of(machine: &str) -> Option<(&'static str, &'static str)> {
    match machine {
        "x86_64" | "amd64" => Some(("amd64", "x86_64-unknown-linux-musl")),
        "aarch64" | "arm64" => Some(("arm64", "aarch64-unknown-linux-gnu")),
        "armv7l" | "armv8l" => Some(("armhf", "armv7-unknown-linux-gnueabihf")),
        _ => None,
    }
}

/// What goes onto the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// `dockfra-agent_VERSION_ARCH.deb`: the package brings user, unit and config.
    Deb(PathBuf),
    /// `dockfra-agent-TRIPLE` from cross/build: installed to /usr/local/bin with the same
    /// systemd unit as the package's, written by the bootstrap.
    Binary(PathBuf),
}

/// Newest (by name) file in `dir` that `wanted` accepts.
fn newest(dir: &Path, wanted: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&wanted))
        .collect();
    found.sort();
    Ok(found.pop())
}

/// Choose what to install from `artifacts`: the .deb for a Debian-family host with systemd
/// (unless `binary`), else the static binary for its architecture on any host with systemd.
pub fn pick_artifact(artifacts: &Path, facts: &HostFacts, binary: bool) -> Result<Artifact> {
    if facts.kernel == "Darwin" {
        bail!("the host runs macOS: install the agent with Homebrew (packaging/homebrew), not over SSH");
    }
    if facts.kernel != "Linux" {
        bail!("the host runs {:?}; the agent is packaged for Linux and macOS", facts.kernel);
    }
    let Some((debarch, triple)) = arch_of(&facts.machine) else {
        bail!("no agent is built for architecture {:?} (armv7l, aarch64, x86_64 are)", facts.machine);
    };
    if !facts.systemd {
        bail!(
            "the host ({} {}) does not run systemd: install {} by hand and run `dockfra-agent run` under its service manager (packaging/README.md, packaging/wsl.md)",
            facts.id,
            facts.machine,
            format_args!("dockfra-agent-{triple}")
        );
    }
    let debian = PackageManager::for_os_release(&facts.id, &facts.id_like) == Some(PackageManager::Apt);
    if debian && !binary {
        let suffix = format!("_{debarch}.deb");
        if let Some(deb) = newest(artifacts, |n| n.starts_with("dockfra-agent_") && n.ends_with(&suffix))? {
            return Ok(Artifact::Deb(deb));
        }
        bail!(
            "no dockfra-agent_*{suffix} in {} (build it: cross/build, then cargo deb --no-build; packaging/README.md; or --binary)",
            artifacts.display()
        );
    }
    let name = format!("dockfra-agent-{triple}");
    match newest(artifacts, |n| n == name)? {
        Some(b) => Ok(Artifact::Binary(b)),
        None => bail!("no {name} in {} (build it: cross/build)", artifacts.display()),
    }
}

/// What `install` needs besides the remote.
pub struct Plan<'a> {
    pub target: &'a str,
    /// The coordinator's address as the target reaches it.
    pub coordinator: &'a str,
    pub artifacts: &'a Path,
    /// Install the static binary even where a .deb would fit.
    pub binary: bool,
    /// Called for a fresh one-time token, only when the host is not enrolled yet.
    pub token: &'a mut dyn FnMut() -> Result<String>,
}

/// The packaged systemd unit: the binary install writes the same one.
const UNIT: &str = include_str!("../../packaging/deb/dockfra-agent.service");

/// For a binary install: the user, the dirs and the unit the .deb's maintainer scripts make.
/// Runs as root (`sh -s`, the unit on stdin after the script is read from a file).
fn binary_setup_script(file: &str) -> String {
    format!(
        "set -e\n\
install -m 0755 {file} /usr/local/bin/dockfra-agent\n\
rm -f {file}\n\
if ! id dockfra >/dev/null 2>&1; then\n\
  if command -v useradd >/dev/null; then useradd --system --user-group --home-dir /var/lib/dockfra --shell /usr/sbin/nologin dockfra;\n\
  else adduser -S -D -H -h /var/lib/dockfra -s /sbin/nologin dockfra; fi\n\
  if getent group docker >/dev/null; then usermod -aG docker dockfra 2>/dev/null || addgroup dockfra docker; fi\n\
fi\n\
mkdir -p /etc/dockfra /var/lib/dockfra\n\
chown dockfra:dockfra /var/lib/dockfra\n\
chmod 0750 /var/lib/dockfra\n\
cat > /etc/systemd/system/dockfra-agent.service\n\
systemctl daemon-reload\n"
    )
}

/// Install, configure, enroll and start. Prints one line per step; returns the probe.
pub fn install(sh: &dyn Shell, remote: &Remote, plan: Plan<'_>) -> Result<HostFacts> {
    let facts = parse_probe(&remote.exec(sh, "probe", PROBE, None)?);
    println!(
        "probe:    {} {} ({}{}), logged in as {}",
        facts.kernel,
        facts.machine,
        facts.id,
        if facts.systemd { ", systemd" } else { "" },
        if facts.root { "root" } else { "a user (sudo -n for the rest)" }
    );
    let artifact = pick_artifact(plan.artifacts, &facts, plan.binary)?;
    let local = match &artifact {
        Artifact::Deb(p) | Artifact::Binary(p) => p.clone(),
    };
    let sudo = if facts.root { "" } else { "sudo -n " };
    let name = local.file_name().and_then(|n| n.to_str()).unwrap_or("dockfra-agent").to_string();
    let remote_file = format!("/tmp/{}-{}", std::process::id(), name);
    let up = sh.run(&remote.scp_argv(&local, &remote_file), None)?;
    if up.code != 0 {
        bail!("upload of {} failed: {}", local.display(), up.stderr.trim());
    }
    println!("upload:   {} -> {remote_file}", local.display());
    let file = sh_quote(&remote_file);
    let agent_bin = match &artifact {
        Artifact::Deb(_) => {
            // apt-get resolves the package's dependencies; a minimal system without apt gets dpkg.
            let install = PackageManager::Apt.install_file(&remote_file).unwrap_or_default();
            let install: Vec<String> = install.iter().map(|a| sh_quote(a)).collect();
            remote.exec(
                sh,
                "install",
                &format!(
                    "if command -v apt-get >/dev/null; then {sudo}env DEBIAN_FRONTEND=noninteractive {}; \
else {sudo}env DEBIAN_FRONTEND=noninteractive dpkg -i {file}; fi; rc=$?; rm -f {file}; exit $rc",
                    install.join(" "),
                ),
                None,
            )?;
            println!("install:  {name}");
            "/usr/bin/dockfra-agent"
        }
        Artifact::Binary(_) => {
            // The script goes to a file first: stdin then carries the unit.
            let script = binary_setup_script(&file);
            let script_file = format!("{remote_file}.setup");
            remote.exec(sh, "install", &format!("cat > {}", sh_quote(&script_file)), Some(script.as_bytes()))?;
            let unit = UNIT.replace("/usr/bin/dockfra-agent", "/usr/local/bin/dockfra-agent");
            let sf = sh_quote(&script_file);
            remote.exec(
                sh,
                "install",
                &format!("{sudo}sh {sf}; rc=$?; rm -f {sf}; exit $rc"),
                Some(unit.as_bytes()),
            )?;
            println!("install:  {name} -> /usr/local/bin/dockfra-agent, user dockfra, /etc/systemd/system/dockfra-agent.service");
            "/usr/local/bin/dockfra-agent"
        }
    };
    let config = format!(
        "# written by `dockfra-coord agent install {}`\nstate_dir: /var/lib/dockfra\ncoordinator: {}\n",
        plan.target, plan.coordinator
    );
    remote.exec(sh, "config", &format!("{sudo}tee /etc/dockfra/agent.yaml >/dev/null"), Some(config.as_bytes()))?;
    println!("config:   /etc/dockfra/agent.yaml (coordinator {})", plan.coordinator);
    let enrolled = remote.exec(
        sh,
        "check enrollment",
        "test -f /var/lib/dockfra/identity/agent.json && echo yes || true",
        None,
    )?;
    if enrolled.trim() == "yes" {
        println!("enroll:   already enrolled; kept (revoke it and remove /var/lib/dockfra/identity to re-enroll)");
    } else {
        let token = (plan.token)()?;
        let script = format!(
            "{sudo}sh -c 'read -r DOCKFRA_JOIN_TOKEN && export DOCKFRA_JOIN_TOKEN && exec {agent_bin} --config /etc/dockfra/agent.yaml enroll --target {}'",
            sh_quote(plan.target).replace('\'', "'\\''")
        );
        remote.exec(sh, "enroll", &script, Some(format!("{token}\n").as_bytes()))?;
        println!("enroll:   as target {}", plan.target);
    }
    remote.exec(
        sh,
        "start",
        &format!("{sudo}systemctl enable dockfra-agent && {sudo}systemctl restart dockfra-agent"),
        None,
    )?;
    println!("start:    systemctl restart dockfra-agent");
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records argv and stdin; answers by the first matching substring of the command line.
    #[derive(Default)]
    struct FakeShell {
        calls: Mutex<Vec<(Vec<String>, Option<String>)>>,
        replies: Vec<(&'static str, Output)>,
    }

    impl Shell for FakeShell {
        fn run(&self, argv: &[String], stdin: Option<&[u8]>) -> Result<Output> {
            let line = argv.join(" ");
            self.calls.lock().unwrap().push((argv.to_vec(), stdin.map(|s| String::from_utf8_lossy(s).into_owned())));
            Ok(self.replies.iter().find(|(k, _)| line.contains(k)).map(|(_, o)| o.clone()).unwrap_or_default())
        }
    }

    fn out(s: &str) -> Output {
        Output { code: 0, stdout: s.into(), stderr: String::new() }
    }

    #[test]
    fn probe_and_package_choice() {
        let f = parse_probe("kernel=Linux\nmachine=armv7l\nid=raspbian\nid_like=debian\nsystemd=1\nuid=1000\n");
        assert_eq!(f.machine, "armv7l");
        assert!(f.systemd && !f.root);
        let dir = std::env::temp_dir().join(format!("dkf-pick-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for n in
            ["dockfra-agent_0.1.0-1_armhf.deb", "dockfra-agent_0.1.0-2_armhf.deb", "dockfra-agent_0.1.0-2_amd64.deb"]
        {
            std::fs::write(dir.join(n), "x").unwrap();
        }
        let pick = |f: &HostFacts, binary: bool| pick_artifact(&dir, f, binary);
        assert_eq!(pick(&f, false).unwrap(), Artifact::Deb(dir.join("dockfra-agent_0.1.0-2_armhf.deb")));
        let fedora = HostFacts { id: "fedora".into(), id_like: String::new(), ..f.clone() };
        assert!(pick(&fedora, false)
            .unwrap_err()
            .to_string()
            .contains("no dockfra-agent-armv7-unknown-linux-gnueabihf"));
        std::fs::write(dir.join("dockfra-agent-armv7-unknown-linux-gnueabihf"), "x").unwrap();
        let bin = Artifact::Binary(dir.join("dockfra-agent-armv7-unknown-linux-gnueabihf"));
        assert_eq!(pick(&fedora, false).unwrap(), bin);
        assert_eq!(pick(&f, true).unwrap(), bin, "--binary wins over the .deb");
        let alpine = HostFacts { id: "alpine".into(), id_like: String::new(), systemd: false, ..f.clone() };
        assert!(pick_artifact(&dir, &alpine, false).unwrap_err().to_string().contains("does not run systemd"));
        let mac = HostFacts { kernel: "Darwin".into(), ..f.clone() };
        assert!(pick_artifact(&dir, &mac, false).unwrap_err().to_string().contains("Homebrew"));
        let mips = HostFacts { machine: "mips".into(), ..f };
        assert!(pick_artifact(&dir, &mips, false).unwrap_err().to_string().contains("\"mips\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ssh_argv_checks_the_host_key_and_never_prompts() {
        let r = Remote {
            host: "10.0.0.5".into(),
            port: 2222,
            user: "pi".into(),
            identity: Some("/k/id".into()),
            known_hosts: "/k/known".into(),
        };
        let a = r.ssh_argv("uname -m").join(" ");
        assert_eq!(
            a,
            "ssh -p 2222 -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=10 -o LogLevel=ERROR \
-o UserKnownHostsFile=/k/known -o IdentitiesOnly=yes -i /k/id pi@10.0.0.5 -- uname -m"
        );
        let s = r.scp_argv(Path::new("/d/a.deb"), "/tmp/a.deb").join(" ");
        assert!(
            s.starts_with("scp -q -P 2222 -o BatchMode=yes") && s.ends_with("/d/a.deb pi@10.0.0.5:/tmp/a.deb"),
            "{s}"
        );
        assert_eq!(sh_quote("a b'c"), "'a b'\\''c'");
        assert_eq!(sh_quote("/tmp/x.deb"), "/tmp/x.deb");
    }

    #[test]
    fn only_the_pinned_host_key_is_trusted() {
        let sh = FakeShell {
            replies: vec![
                ("ssh-keyscan", out("h ssh-ed25519 AAAA1\nh ssh-rsa AAAA2\n")),
                ("ssh-keygen", out("256 SHA256:good h (ED25519)\n")),
            ],
            ..Default::default()
        };
        let kh = std::env::temp_dir().join(format!("dkf-kh-{}", std::process::id()));
        pin_fingerprint(&sh, "h", 22, "SHA256:good", &kh).unwrap();
        assert!(std::fs::read_to_string(&kh).unwrap().contains("AAAA1"));
        let e = pin_fingerprint(&sh, "h", 22, "SHA256:other", &kh).unwrap_err().to_string();
        assert!(e.contains("does not match SHA256:other") && e.contains("refusing"), "{e}");
        std::fs::remove_file(&kh).unwrap();
    }

    /// The token goes on stdin, never into an argv.
    #[test]
    fn install_steps_and_the_token_stays_off_the_command_line() {
        let dir = std::env::temp_dir().join(format!("dkf-inst-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dockfra-agent_0.1.0-1_amd64.deb"), "x").unwrap();
        let sh = FakeShell {
            replies: vec![("uname -s", out("kernel=Linux\nmachine=x86_64\nid=debian\nsystemd=1\nuid=0\n"))],
            ..Default::default()
        };
        let r = Remote { host: "h".into(), port: 22, user: "root".into(), identity: None, known_hosts: "/kh".into() };
        let mut token = || Ok("dkf1.secret".to_string());
        install(
            &sh,
            &r,
            Plan { target: "box", coordinator: "https://c:7443", artifacts: &dir, binary: false, token: &mut token },
        )
        .unwrap();
        let calls = sh.calls.lock().unwrap().clone();
        assert!(calls.iter().all(|(argv, _)| !argv.join(" ").contains("dkf1.secret")));
        let enroll = calls.iter().find(|(a, _)| a.join(" ").contains(" enroll ")).unwrap();
        assert_eq!(enroll.1.as_deref(), Some("dkf1.secret\n"));
        let lines: Vec<String> = calls.iter().map(|(a, _)| a.last().unwrap().clone()).collect();
        assert!(lines.iter().any(|l| l.contains("apt-get install -y --no-install-recommends /tmp/")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("systemctl enable dockfra-agent && systemctl restart dockfra-agent")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
