//! What the agent knows of its host: OS (distribution and version, macOS, WSL), architecture,
//! hostname, and which runtimes are on PATH with their versions. Read-only; never changes
//! the host.
use std::time::Duration;

use dockfra_common::proto;

use crate::runner::{which, CommandSpec, Runner};

/// `PRETTY_NAME` (or NAME VERSION_ID) from an os-release file's text.
pub fn parse_os_release(text: &str) -> Option<String> {
    let mut kv = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            kv.insert(k.trim(), v.trim().trim_matches('"').trim_matches('\''));
        }
    }
    kv.get("PRETTY_NAME")
        .map(|s| s.to_string())
        .or_else(|| kv.get("NAME").map(|n| format!("{n} {}", kv.get("VERSION_ID").unwrap_or(&"")).trim().to_string()))
}

/// WSL is told by the kernel release ("...microsoft-standard-WSL2") or WSL_DISTRO_NAME.
pub fn is_wsl(kernel_release: &str, distro_env: Option<&str>) -> bool {
    distro_env.is_some_and(|d| !d.is_empty()) || kernel_release.to_ascii_lowercase().contains("microsoft")
}

/// Runtimes we look for, and the argv that prints each one's version.
const PROBES: &[(&str, &str, &[&str])] = &[
    ("docker", "docker", &["--version"]),
    ("docker compose", "docker", &["compose", "version", "--short"]),
    ("docker-compose", "docker-compose", &["--version"]),
    ("podman", "podman", &["--version"]),
    ("podman-compose", "podman-compose", &["version"]),
    ("kubectl", "kubectl", &["version", "--client"]),
    ("nomad", "nomad", &["version"]),
    ("systemctl", "systemctl", &["--version"]),
    ("supervisorctl", "supervisorctl", &["version"]),
    ("pm2", "pm2", &["--version"]),
    ("sh", "sh", &[]),
];

/// This host's OS as the agent reports it (`linux`, `macos`, `windows`) and whether it is WSL.
pub fn host_os() -> (String, bool) {
    // Rust's own names are the wire's: linux, macos, windows.
    let os = std::env::consts::OS;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    (os.to_string(), is_wsl(&kernel, std::env::var("WSL_DISTRO_NAME").ok().as_deref()))
}

pub async fn detect(runner: &dyn Runner) -> proto::Facts {
    let (os, wsl) = host_os();
    let os_release = if os == "macos" {
        runner
            .run(&CommandSpec::new("sw_vers", &["-productVersion"]).timeout(Duration::from_secs(3)))
            .await
            .map(|o| format!("macOS {}", o.stdout.trim()))
            .unwrap_or_else(|_| "macOS".into())
    } else {
        ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| parse_os_release(&t))
            .unwrap_or_else(|| "unknown".into())
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let mut runtimes = Vec::new();
    for (name, program, args) in PROBES {
        let Some(path) = which(program) else { continue };
        let version = if args.is_empty() {
            String::new()
        } else {
            match runner.run(&CommandSpec::new(program, args).timeout(Duration::from_secs(3))).await {
                Ok(o) if o.success() => o.stdout.lines().next().unwrap_or("").trim().to_string(),
                _ if *name == "docker compose" => continue, // the plugin is absent
                _ => String::new(),
            }
        };
        runtimes.push(proto::Runtime { name: name.to_string(), version, path: path.display().to_string() });
    }
    // The engine itself, through its API, when its CLI is here.
    if runtimes.iter().any(|r| r.name == "docker") {
        let socket = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        match crate::engine::detect().await {
            Ok(e) => runtimes.push(proto::Runtime { name: "docker engine".into(), version: e.summary(), path: socket }),
            Err(why) => runtimes.push(proto::Runtime {
                name: "docker engine".into(),
                version: format!("unreachable: {why}"),
                path: socket,
            }),
        }
    }
    // Podman: its own account of itself, and on macOS the machine that runs the containers.
    if runtimes.iter().any(|r| r.name == "podman") {
        use crate::drivers::podman;
        let info = CommandSpec::new("podman", &["info", "--format", "json"]).timeout(Duration::from_secs(10));
        let version = match runner.run(&info).await {
            Ok(o) if o.success() => podman::info_summary(&o.stdout),
            Ok(o) => format!("unreachable: {}", o.tail()),
            Err(e) => format!("unreachable: {e}"),
        };
        runtimes.push(proto::Runtime { name: "podman engine".into(), version, path: String::new() });
        if os == "macos" {
            let list =
                CommandSpec::new("podman", &["machine", "list", "--format", "json"]).timeout(Duration::from_secs(10));
            let version = match runner.run(&list).await {
                Ok(o) if o.success() => podman::machine_summary(&o.stdout),
                _ => "unknown".into(),
            };
            runtimes.push(proto::Runtime { name: "podman machine".into(), version, path: String::new() });
        }
    }
    proto::Facts {
        agent_version: dockfra_common::VERSION.to_string(),
        wsl,
        os,
        os_release,
        arch: std::env::consts::ARCH.to_string(),
        hostname,
        runtimes,
        manifest_formats: dockfra_common::bundle::FORMATS.to_vec(),
        platforms: crate::drivers::platforms(),
        features: dockfra_common::bundle::FEATURES.iter().map(|f| f.to_string()).collect(),
        binary_sha256: crate::upgrade::own_sha256().to_string(),
    }
}

/// The host's memory and bound ports now (Linux: from /proc; elsewhere unknown).
pub fn host_usage() -> proto::HostUsage {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (total, available) = parse_meminfo(&meminfo);
    let mut listening = Vec::new();
    let mut known = false;
    for (file, protocol, v6) in
        [("tcp", "tcp", false), ("tcp6", "tcp", true), ("udp", "udp", false), ("udp6", "udp", true)]
    {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/net/{file}")) {
            known = true;
            for (address, port) in parse_proc_net(&text, protocol == "tcp", v6) {
                let p = proto::ListeningPort { protocol: protocol.into(), address, port: port.into() };
                if !listening.contains(&p) {
                    listening.push(p);
                }
            }
        }
    }
    proto::HostUsage { memory_total_bytes: total, memory_available_bytes: available, listening, ports_known: known }
}

/// (MemTotal, MemAvailable) in bytes from /proc/meminfo's text.
fn parse_meminfo(text: &str) -> (u64, u64) {
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kib("MemTotal:"), kib("MemAvailable:"))
}

/// Listening TCP sockets (state 0A) or bound UDP sockets (state 07) of a /proc/net/{tcp,udp}[6]
/// table: (address, port).
fn parse_proc_net(text: &str, tcp: bool, v6: bool) -> Vec<(String, u16)> {
    let want = if tcp { "0A" } else { "07" };
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state)) = (f.get(1), f.get(3)) else { continue };
        // UDP sockets connected to a peer are not what a published port collides with.
        if *state != want || (!tcp && f.get(2).is_some_and(|r| !r.ends_with(":0000"))) {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else { continue };
        let Ok(port) = u16::from_str_radix(port, 16) else { continue };
        // The kernel prints each 32-bit word of the address as a number in host byte order.
        let words: Vec<u32> =
            (0..addr.len() / 8).filter_map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()).collect();
        let address = match (v6, words.as_slice()) {
            (false, [w]) => std::net::Ipv4Addr::from(w.to_ne_bytes()).to_string(),
            (true, [_, _, _, _]) => {
                let mut bytes = [0u8; 16];
                for (i, w) in words.iter().enumerate() {
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
                }
                std::net::Ipv6Addr::from(bytes).to_string()
            }
            _ => continue,
        };
        out.push((address, port));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_tables_and_meminfo() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 1 1 0\n\
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 2 1 0\n\
   2: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  0 0 3 1 0\n";
        assert_eq!(parse_proc_net(tcp, true, false), [("127.0.0.1".to_string(), 8080), ("0.0.0.0".to_string(), 22)]);
        let tcp6 = "  sl  local_address remote_address st\n\
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0\n\
   1: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0\n";
        assert_eq!(parse_proc_net(tcp6, true, true), [("::1".to_string(), 80), ("::".to_string(), 443)]);
        let udp = "  sl  local_address rem_address   st\n   0: 00000000:0035 00000000:0000 07 0\n   1: 0100007F:0036 0100007F:0035 01 0\n";
        assert_eq!(parse_proc_net(udp, false, false), [("0.0.0.0".to_string(), 53)]);
        assert_eq!(
            parse_meminfo("MemTotal:        1000 kB\nMemFree: 5 kB\nMemAvailable:     500 kB\n"),
            (1024000, 512000)
        );
    }

    #[test]
    fn os_release_and_wsl() {
        let deb = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n";
        assert_eq!(parse_os_release(deb).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(parse_os_release("NAME=Alpine\nVERSION_ID=3.19\n").as_deref(), Some("Alpine 3.19"));
        assert!(is_wsl("5.15.90.1-microsoft-standard-WSL2", None));
        assert!(is_wsl("6.1.0", Some("Ubuntu")));
        assert!(!is_wsl("6.1.0-18-amd64", None));
    }
}
