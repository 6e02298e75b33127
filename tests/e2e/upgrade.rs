//! Agents that upgrade themselves (`agent upgrade`), proven with the static agents of
//! `cross/build`: an armv7 one run by the kernel through qemu-user's binfmt entry (it must
//! execute its new binary itself), and x86_64 ones natively, pull and push. A good binary is
//! taken in waves (the canary first) and the new agents keep deploying; a broken one is
//! started on trial, never reaches the coordinator, and the old binary comes back by itself
//! while the rest of the fleet is left alone.
use std::path::{Path, PathBuf};
use std::time::Duration;

use dockfra_e2e::*;

const ARM: &str = "armv7-unknown-linux-gnueabihf";
const X86: &str = "x86_64-unknown-linux-musl";

fn dist(triple: &str) -> PathBuf {
    workspace().join(format!("target/cross/dist/dockfra-agent-{triple}"))
}

fn sha256(path: &Path) -> String {
    dockfra_common::sha256_hex(&std::fs::read(path).unwrap())
}

/// A binaries dir as `cross/build` leaves one: each triple's file (made by `make` from the
/// dist binary) and their SHA256SUMS.
fn binaries(w: &World, name: &str, make: impl Fn(Vec<u8>) -> Vec<u8>) -> PathBuf {
    let dir = w.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut sums = String::new();
    for t in [ARM, X86] {
        let file = dir.join(format!("dockfra-agent-{t}"));
        std::fs::write(&file, make(std::fs::read(dist(t)).unwrap())).unwrap();
        sums.push_str(&format!("{}  dockfra-agent-{t}\n", sha256(&file)));
    }
    std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
    dir
}

fn project(w: &World, port: u16) {
    let d = w.dir.display();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: web, path: ./app }}
targets:
  pi:
    platform: ssh_raw
    labels: {{ site: lab }}
    agent: {{ mode: pull, poll_interval: 300ms }}
    config: {{ deploy_path: {d}/deploy-pi }}
  box:
    platform: ssh_raw
    labels: {{ site: lab }}
    agent: {{ mode: pull, poll_interval: 300ms }}
    config: {{ deploy_path: {d}/deploy-box }}
  vps:
    host: 127.0.0.1
    platform: ssh_raw
    labels: {{ site: lab }}
    agent: {{ mode: push, port: {port} }}
    config: {{ deploy_path: {d}/deploy-vps }}
"#
        ),
    );
    w.write("project/app/VERSION", "v1\n");
}

fn shas(w: &World) -> std::collections::BTreeMap<String, String> {
    let agents = w.coord(&["agents", "--output", "json"]).ok().json();
    agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["target"].as_str().unwrap().to_string(), a["binary_sha256"].as_str().unwrap_or("").to_string()))
        .collect()
}

/// `agent upgrade --all` from `binaries`, a canary first (soaked 1 s), as JSON.
fn canary_upgrade(w: &World, binaries: &str, trial: &str, wave_timeout: &str) -> Run {
    w.coord(&[
        "agent",
        "upgrade",
        "--all",
        "--canary",
        "1",
        "--soak",
        "1s",
        "--binaries",
        binaries,
        "--trial-timeout",
        trial,
        "--wave-timeout",
        wave_timeout,
        "--output",
        "json",
    ])
}

fn live(w: &World, t: &str) -> String {
    std::fs::read_to_string(w.path(&format!("deploy-{t}/web/current/VERSION"))).unwrap_or_default().trim().into()
}

fn by_target(info: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    info["targets"].as_array().unwrap().iter().map(|t| (t["target"].as_str().unwrap().to_string(), t.clone())).collect()
}

#[test]
fn agents_upgrade_in_waves_and_a_broken_binary_gives_the_old_one_back() {
    if Needs::new()
        .file(&dist(ARM), "cross/build --install makes it")
        .file(&dist(X86), "cross/build --install makes it")
        .file(Path::new("/proc/sys/fs/binfmt_misc/qemu-arm"), "scripts/setup registers qemu-user-static's binfmt entry")
        .unmet()
    {
        return;
    }
    let w = World::new("upgrade");
    let port = free_port();
    project(&w, port);
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let mut runs = Vec::new();
    for (t, triple) in [("pi", ARM), ("box", X86), ("vps", X86)] {
        let mut a = Agent::new(&w, t);
        a.program = Some(dist(triple));
        if t == "vps" {
            a.listen = Some(format!("127.0.0.1:{port}"));
        }
        a.enroll(&url, &w.token(t)).ok();
        runs.push(a.start(&w));
    }
    let r = w.coord(&["deploy", "--all", "--wave-timeout", "3m", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let before = shas(&w);
    assert_eq!(before["pi"], sha256(&dist(ARM)), "{before:?}");
    assert_eq!(before["box"], sha256(&dist(X86)));

    // A rebuilt binary (the same code, other bytes: an ELF ignores what follows its end),
    // in waves: the armv7 agent first as the canary, then the two x86_64 ones.
    let good = binaries(&w, "good", |mut b| {
        b.extend_from_slice(b"\0dockfra-upgrade-test");
        b
    });
    let g = good.to_str().unwrap();
    let r = canary_upgrade(&w, g, "90s", "4m");
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let info = r.json();
    assert_eq!((info["status"].as_str(), info["action"].as_str()), (Some("succeeded"), Some("upgrade")), "{info}");
    let t = by_target(&info);
    assert_eq!((t["pi"]["wave"].as_u64(), t["box"]["wave"].as_u64()), (Some(0), Some(1)), "{info}");
    let after = shas(&w);
    assert_eq!(after["pi"], sha256(&good.join(format!("dockfra-agent-{ARM}"))), "{after:?}");
    assert_eq!(after["box"], sha256(&good.join(format!("dockfra-agent-{X86}"))));
    assert_eq!(after["vps"], after["box"]);
    for a in ["pi", "box", "vps"] {
        let committed = std::fs::read_to_string(w.path(&format!("agent-{a}/upgrade/committed.json"))).unwrap();
        assert!(committed.contains("apps/dockfra-agent/releases/"), "{a}: {committed}");
        let h = w.coord(&["history", a, "--output", "json"]).ok().json();
        assert_eq!(
            (h[0]["action"].as_str(), h[0]["status"].as_str()),
            (Some("upgrade"), Some("succeeded")),
            "{a}: {h}"
        );
        assert!(h[0]["reason"].as_str().unwrap().contains("is running (sha256"), "{a}: {h}");
    }
    // The new agents deploy.
    w.write("project/app/VERSION", "v2\n");
    let r = w.coord(&["deploy", "--all", "--wave-timeout", "3m", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert_eq!((live(&w, "pi").as_str(), live(&w, "box").as_str(), live(&w, "vps").as_str()), ("v2", "v2", "v2"));
    // Asked again, nothing to do.
    let r = w.coord(&["agent", "upgrade", "--all", "--binaries", g, "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(
        by_target(&r.json()).values().all(|t| t["reason"].as_str().unwrap().contains("already runs")),
        "{}",
        r.stdout()
    );

    // A broken binary (cut short: its header is right, it cannot run). The canary takes it on
    // trial, the trial fails, its old binary comes back; the other waves are left alone.
    let broken = binaries(&w, "broken", |mut b| {
        b.truncate(4096);
        b
    });
    let b = broken.to_str().unwrap();
    let r = canary_upgrade(&w, b, "30s", "3m");
    assert_eq!(r.code(), 3, "{}\n{}", r.stdout(), r.stderr());
    let info = r.json();
    assert_eq!(info["status"], "failed", "{info}");
    let t = by_target(&info);
    assert_eq!(t["pi"]["status"], "failed", "{info}");
    let why = t["pi"]["reason"].as_str().unwrap();
    assert!(why.contains("upgrade to") && why.contains("runs again"), "{why}");
    assert_eq!((t["box"]["status"].as_str(), t["vps"]["status"].as_str()), (Some("skipped"), Some("skipped")));
    assert_eq!(shas(&w), after, "every agent runs the binary it ran before");
    // The push agent, on its own: the same.
    let r = w.coord(&["agent", "upgrade", "vps", "--binaries", b, "--trial-timeout", "30s", "--output", "json"]);
    assert_eq!(r.code(), 3, "{}\n{}", r.stdout(), r.stderr());
    assert!(by_target(&r.json())["vps"]["reason"].as_str().unwrap().contains("runs again"), "{}", r.stdout());
    wait_until("the push agent to answer again", Duration::from_secs(30), || shas(&w)["vps"] == after["vps"]);
    // The old binaries keep working.
    w.write("project/app/VERSION", "v3\n");
    let r = w.coord(&["deploy", "--all", "--wave-timeout", "3m", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert_eq!((live(&w, "pi").as_str(), live(&w, "vps").as_str()), ("v3", "v3"));
    assert_eq!(shas(&w), after);
}

/// What the coordinator refuses before it orders anything: a binaries dir without
/// SHA256SUMS, a binary whose sum does not match, flags that make no sense for an upgrade.
#[test]
fn agent_upgrade_refuses_unchecked_binaries() {
    let w = World::new("upgrade-refusals");
    project(&w, free_port());
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let a = Agent::new(&w, "box");
    a.enroll(&url, &w.token("box")).ok();
    let _run = a.start(&w);
    wait_until("box to report its facts", Duration::from_secs(20), || {
        !shas(&w).get("box").map(String::is_empty).unwrap_or(true)
    });
    let empty = w.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = w.coord(&["agent", "upgrade", "box", "--binaries", empty.to_str().unwrap()]).fails().stderr();
    assert!(e.contains("SHA256SUMS") && e.contains("--binaries DIR"), "{e}");
    let e = w.coord(&["agent", "upgrade", "box", "--binaries", "/nonexistent-dir"]).fails().stderr();
    assert!(e.contains("no such dir"), "{e}");
    let e = w.coord(&["agent", "upgrade"]).fails().stderr();
    assert!(e.contains("--selector, or --all"), "{e}");
    let e = w.coord(&["agent", "upgrade", "--all", "--auto-rollback-wave"]).fails().stderr();
    assert!(e.contains("goes back to its old binary by itself"), "{e}");
    // A sum that does not match the file: the target fails, nothing is sent.
    let bad = w.path("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("dockfra-agent-x86_64-unknown-linux-musl"), b"\x7fELF not really").unwrap();
    std::fs::write(bad.join("SHA256SUMS"), format!("{}  dockfra-agent-x86_64-unknown-linux-musl\n", "ab".repeat(32)))
        .unwrap();
    let r = w.coord(&["agent", "upgrade", "box", "--binaries", bad.to_str().unwrap(), "--output", "json"]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    let why = by_target(&r.json())["box"]["reason"].as_str().unwrap().to_string();
    assert!(why.contains("but SHA256SUMS says abab") && why.contains("not sending it"), "{why}");
    let h = w.coord(&["history", "box", "--output", "json"]).ok().json();
    assert!(h.as_array().unwrap().is_empty(), "no order was made: {h}");
    // A target with an open order: the upgrade would replace it, so it waits its turn.
    let (code, queued) = crate::deploy_json(&w, &["pi"]);
    assert_eq!((code, queued["result"].as_str()), (0, Some("queued")), "{queued}");
    let r = w.coord(&["agent", "upgrade", "pi", "--binaries", bad.to_str().unwrap(), "--output", "json"]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    let why = by_target(&r.json())["pi"]["reason"].as_str().unwrap().to_string();
    assert!(why.contains("has an open deploy") && why.contains("once it has ended"), "{why}");
    let h = w.coord(&["history", "pi", "--output", "json"]).ok().json();
    assert_eq!((h[0]["action"].as_str(), h[0]["status"].as_str()), (Some("deploy"), Some("queued")), "{h}");
}
