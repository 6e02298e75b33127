//! Reaching the hosts: the static agents (armv7 for the Raspberry Pi 3 and aarch64 under
//! qemu-user, x86_64 musl natively) enroll and deploy; the .deb installs, upgrades, is removed
//! and purged under systemd; the Homebrew formula and launchd plists check; `agent install`
//! over SSH into a systemd host; the declared `os:` is checked against the agent; and a pull
//! agent behind NAT, in a network namespace the coordinator cannot reach into, deploys.
use std::time::Duration;

use dockfra_e2e::*;

use crate::{current, deploy_json, live_version, project, SystemdBox, SYSTEMD_PODMAN};

#[test]
fn pull_agent_behind_nat_in_a_network_namespace() {
    if Needs::new()
        .root("for network namespaces")
        .tool("ip", "Debian's iproute2")
        .tool("iptables", "Debian's iptables")
        .tool("python3", "Debian's python3")
        .unmet()
    {
        return;
    }
    let net = NetPair::new("nat", 231);
    let (nsc, nsa, ipc, ipa) = (net.c.clone(), net.a.clone(), net.ipc.clone(), net.ipa.clone());
    // The agent's side accepts no inbound connection: like a device behind NAT.
    sh(&format!("ip netns exec {nsa} iptables -A INPUT -p tcp --syn -j DROP"));

    let mut w = World::new("netns");
    w.coord_prefix = NetPair::prefix(&nsc);
    project(&w, free_port(), "", "");
    w.init(&format!("{ipc}:0"));
    let _coord = w.serve(&[]);
    let mut agent = Agent::new(&w, "nat");
    agent.prefix = NetPair::prefix(&nsa);
    agent.enroll(&format!("https://{}", w.addr()), &w.token("edge-pull")).ok();
    let _a = agent.start(&w);

    // The coordinator cannot reach into the agent's namespace, even where something listens …
    let listener = "import socket,time\ns=socket.socket();s.bind(('0.0.0.0',9000));s.listen();time.sleep(120)";
    let _listener = Proc {
        child: std::process::Command::new("ip")
            .args(["netns", "exec", &nsa, "python3", "-c", listener])
            .spawn()
            .unwrap(),
        log: w.path("listener.log"),
    };
    std::thread::sleep(Duration::from_millis(500));
    let probe = format!(
        "import socket,sys\ns=socket.socket();s.settimeout(2)\ntry:\n s.connect(('{ipa}',9000))\n sys.exit(0)\nexcept Exception:\n sys.exit(7)"
    );
    let r = std::process::Command::new("ip").args(["netns", "exec", &nsc, "python3", "-c", &probe]).status().unwrap();
    assert_eq!(r.code(), Some(7), "the coordinator could open a connection to the agent");
    // … yet the pull agent deploys.
    let (code, v) = deploy_json(&w, &["edge-pull", "--wait", "--timeout", "60s"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(live_version(&w, "deploy-pull"), "v1");
}

/// A pull agent behind NAT holds a watch stream: with a poll interval of an hour, a deploy
/// still reaches it in seconds. The coordinator restarts: the agent watches again and the
/// next deploy is as quick. A target with `watch: false` only polls, and still deploys. A
/// revoked agent's stream ends at once.
#[test]
fn pull_agent_behind_nat_takes_orders_at_once_over_its_watch_stream() {
    if Needs::new()
        .root("for network namespaces")
        .tool("ip", "Debian's iproute2")
        .tool("iptables", "Debian's iptables")
        .tool("curl", "Debian's curl")
        .unmet()
    {
        return;
    }
    let net = NetPair::new("wat", 232);
    let (nsc, nsa, ipc) = (net.c.clone(), net.a.clone(), net.ipc.clone());
    sh(&format!("ip netns exec {nsa} iptables -A INPUT -p tcp --syn -j DROP"));
    let mut w = World::new("watch");
    w.coord_prefix = NetPair::prefix(&nsc);
    let d = w.dir.display();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: web, path: ./app }}
targets:
  nat-watch:
    platform: ssh_raw
    agent: {{ mode: pull, poll_interval: 1h, keepalive: 10s }}
    config: {{ deploy_path: {d}/deploy-watch }}
  nat-poll:
    platform: ssh_raw
    agent: {{ mode: pull, poll_interval: 1s, watch: false }}
    config: {{ deploy_path: {d}/deploy-poll }}
"#
        ),
    );
    w.write("project/app/VERSION", "v1\n");
    // A fixed port: the agents must find the coordinator again after its restart.
    w.init(&format!("{ipc}:7443"));
    let mut coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let mut procs = Vec::new();
    for name in ["nat-watch", "nat-poll"] {
        let mut agent = Agent::new(&w, name);
        agent.prefix = NetPair::prefix(&nsa);
        agent.enroll(&url, &w.token(name)).ok();
        procs.push(agent.start(&w));
    }
    let watching = |name: &str| {
        let v = w.coord(&["agents", "--output", "json"]).ok().json();
        let list = v.as_array().cloned().unwrap_or_default();
        list.iter().find(|a| a["target"] == name).map(|a| a["watching"] == true).unwrap_or(false)
    };
    wait_until("nat-watch holds its watch stream", Duration::from_secs(20), || watching("nat-watch"));
    assert!(!watching("nat-poll"), "an agent of a watch: false target holds a stream");

    // An hour between polls, yet the order arrives at once.
    let timed_deploy = |target: &str| {
        let t = std::time::Instant::now();
        let (code, v) = deploy_json(&w, &[target, "--wait", "--timeout", "60s"]);
        assert_eq!(code, 0, "{v}");
        t.elapsed()
    };
    let took = timed_deploy("nat-watch");
    assert!(took < Duration::from_secs(10), "the deploy took {took:?}: the order waited for a poll");
    assert_eq!(std::fs::read_to_string(w.path("deploy-watch/web/current/VERSION")).unwrap().trim(), "v1");

    // The coordinator goes away and comes back: the agent watches again, orders are instant.
    coord.kill9();
    coord = w.serve(&[]);
    wait_until("nat-watch watches the new coordinator", Duration::from_secs(30), || watching("nat-watch"));
    w.write("project/app/VERSION", "v2\n");
    let took = timed_deploy("nat-watch");
    assert!(took < Duration::from_secs(10), "after the restart the deploy took {took:?}");
    assert_eq!(std::fs::read_to_string(w.path("deploy-watch/web/current/VERSION")).unwrap().trim(), "v2");

    // The polling one deploys too (within its 1 s interval), and never watched.
    timed_deploy("nat-poll");
    assert_eq!(std::fs::read_to_string(w.path("deploy-poll/web/current/VERSION")).unwrap().trim(), "v2");
    assert!(!watching("nat-poll"));
    let metrics = std::process::Command::new("ip")
        .args(["netns", "exec", &nsc, "curl", "-sS", "--cacert"])
        .arg(w.coord_state.join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", w.api_token())])
        .arg(format!("https://{}/metrics", w.http_addr()))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    assert!(metrics.contains("\ndockfra_agents_watching 1\n"), "{metrics}");
    assert!(metrics.contains("\ndockfra_agents_connected 2\n"), "{metrics}");
    // Since the restart the agents have polled with their facts about once each (the first
    // poll after a failed one sends them), then by digest only.
    let polls = |facts: &str| -> u64 {
        let key = format!("dockfra_polls_total{{facts=\"{facts}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&key)).unwrap_or_else(|| panic!("no {key}: {metrics}"));
        line[key.len()..].parse().unwrap()
    };
    assert_eq!(polls("asked"), 0, "{metrics}");
    assert!(polls("sent") <= 4 && polls("held") >= 2, "{metrics}");

    // A link that dies silently (a NAT forgot the mapping, a cable was pulled: nothing
    // arrives and nothing is refused): the agent hears no keepalive event for 10 s and 20 s
    // more, opens a new stream once the link is back, and orders are instant again.
    let greeted = |p: &Proc| p.log().matches("polling now (watching)").count();
    let before = greeted(&procs[0]);
    let cut = format!("ip netns exec {nsa} iptables -I INPUT -p tcp --sport 7443 -j DROP");
    sh(&cut);
    let t = std::time::Instant::now();
    wait_until("the agent notices its silent link", Duration::from_secs(50), || {
        procs[0].log().contains("no word from the coordinator in 30s")
    });
    assert!(t.elapsed() >= Duration::from_secs(25), "the link was declared dead after {:?}", t.elapsed());
    sh(&cut.replace(" -I ", " -D "));
    wait_until("the agent watches again", Duration::from_secs(40), || greeted(&procs[0]) > before);
    w.write("project/app/VERSION", "v3\n");
    let took = timed_deploy("nat-watch");
    assert!(took < Duration::from_secs(10), "after the silent cut the deploy took {took:?}");

    // Revoked: the stream ends now, not at the certificate's expiry.
    w.coord(&["agents", "revoke", "nat-watch"]).ok();
    wait_until("the revoked agent's stream ends", Duration::from_secs(5), || !watching("nat-watch"));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!watching("nat-watch"), "the revoked agent watches again");
    drop(coord);
}

/// An agent enrolled for `target` with `w`'s serving coordinator but not run: the
/// coordinator's URL and the agent's TLS identity, for a test that speaks the wire itself.
fn enrolled_identity(w: &World, target: &str) -> (String, tonic::transport::ClientTlsConfig) {
    use dockfra_common::identity;
    let url = format!("https://{}", w.addr());
    let agent = Agent::new(w, target);
    agent.enroll(&url, &w.token(target)).ok();
    let read = |f: &str| std::fs::read_to_string(agent.state.join("identity").join(f)).unwrap();
    let tls = identity::client_tls(&read("ca.pem"), &read("cert.pem"), &read("key.pem"), identity::COORDINATOR_DNS);
    (url, tls)
}

/// The coordinator keeps an idle watch stream alive itself: an agent that asks for keepalive
/// events is told the interval in the greeting (`agent.keepalive`) and gets a "keepalive"
/// event each time the stream was quiet that long; one that does not ask (an older agent,
/// which would take any event for "poll now") gets none and pings by itself.
#[test]
fn the_coordinator_keeps_an_idle_watch_stream_alive_at_the_targets_keepalive() {
    use dockfra_common::identity;
    use dockfra_common::proto::{self, fleet_client::FleetClient};
    let w = World::new("keepalive");
    let d = w.dir.display();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            "app: {{ name: web, path: ./app }}\ntargets:\n  ka:\n    platform: ssh_raw\n    agent: {{ mode: pull, keepalive: 10s }}\n    config: {{ deploy_path: {d}/deploy }}\n  kb:\n    platform: ssh_raw\n    agent: {{ mode: pull, keepalive: 10s }}\n    config: {{ deploy_path: {d}/deploy-b }}\n"
        ),
    );
    w.write("project/app/VERSION", "v1\n");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    // Two agents: a stream of an agent ends its older ones.
    let (url, tls) = enrolled_identity(&w, "ka");
    let (_, tls_b) = enrolled_identity(&w, "kb");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let connect = |tls| identity::connect_watch(&url, tls, Duration::from_secs(5), false);
        let mut a = FleetClient::new(connect(tls).await.unwrap());
        let mut b = FleetClient::new(connect(tls_b).await.unwrap());
        let mut new = a.watch(proto::WatchRequest { keepalive_events: true }).await.unwrap().into_inner();
        let mut old = b.watch(proto::WatchRequest { keepalive_events: false }).await.unwrap().into_inner();
        let hello = new.message().await.unwrap().unwrap();
        let t = tokio::time::Instant::now();
        assert_eq!((hello.reason.as_str(), hello.keepalive_ms), ("watching", 10_000));
        let hello = old.message().await.unwrap().unwrap();
        assert_eq!((hello.reason.as_str(), hello.keepalive_ms), ("watching", 0));
        let ev = tokio::time::timeout(Duration::from_secs(15), new.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(ev.reason, "keepalive");
        assert!(t.elapsed() >= Duration::from_secs(9), "a keepalive after {:?} of quiet", t.elapsed());
        // The old-style stream was as quiet, and heard nothing.
        assert!(
            tokio::time::timeout(Duration::from_millis(500), old.message()).await.is_err(),
            "an older agent got an event"
        );
        // The agent opens another stream (it took the first one's link for dead): the first ends.
        let mut again = a.watch(proto::WatchRequest { keepalive_events: true }).await.unwrap().into_inner();
        assert_eq!(again.message().await.unwrap().unwrap().reason, "watching");
        let ended =
            tokio::time::timeout(Duration::from_secs(5), new.message()).await.expect("the older stream still runs");
        assert!(matches!(ended, Ok(None) | Err(_)), "{ended:?}");
    });
}

/// An idle agent's polls are mostly its facts, which change only when it restarts: once the
/// coordinator says it holds them (by the digest the agent gave them) a poll names the digest
/// instead. The coordinator judges what the agent can take by the held facts, and asks for
/// them again when a digest matches nothing it holds.
#[test]
fn a_poll_names_facts_the_coordinator_holds_by_their_digest() {
    use dockfra_common::proto::{self, fleet_client::FleetClient};
    use dockfra_common::{facts_digest, identity};
    let w = World::new("facts-digest");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let (url, tls) = enrolled_identity(&w, "edge-pull");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut c = FleetClient::new(rt.block_on(identity::connect(&url, tls, Duration::from_secs(5))).unwrap());
    let mut poll = |facts: Option<&proto::Facts>, digest: &str| {
        let status = proto::AgentStatus {
            target: "edge-pull".into(),
            facts: facts.cloned(),
            facts_digest: digest.into(),
            ..Default::default()
        };
        rt.block_on(c.poll(proto::PollRequest { status: Some(status) })).unwrap().into_inner()
    };
    let facts = |version: &str, host: &str, formats: Vec<u32>| proto::Facts {
        agent_version: version.into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        hostname: host.into(),
        manifest_formats: formats,
        platforms: vec!["ssh_raw".into()],
        ..Default::default()
    };
    let current = facts(dockfra_common::VERSION, "host-a", dockfra_common::bundle::FORMATS.to_vec());
    let d = facts_digest(&current);
    assert_eq!(poll(None, &d).facts_digest, "", "the coordinator claims facts it was never sent");
    assert_eq!(poll(Some(&current), &d).facts_digest, d);
    let agent_row = |w: &World| {
        let v = w.coord(&["agents", "--output", "json"]).ok().json();
        v.as_array().unwrap().iter().find(|a| a["target"] == "edge-pull").unwrap().clone()
    };
    assert_eq!(agent_row(&w)["hostname"], "host-a");

    // An order is waiting. A digest the coordinator does not hold gets the digest it does
    // (the agent then sends its facts) and no order: nothing is handed out on facts it lacks.
    w.coord(&["deploy", "edge-pull"]).ok();
    let r = poll(None, "0123456789abcdef0123456789abcdef");
    assert_eq!(r.facts_digest, d);
    assert!(r.assignment.is_none(), "an order was handed out on unknown facts");
    // The digest of the held facts: they stand in, and the order comes.
    let r = poll(None, &d);
    assert_eq!(r.facts_digest, d);
    assert!(r.assignment.is_some(), "the order was not handed out on the held facts");
    assert_eq!(agent_row(&w)["hostname"], "host-a", "facts left out of a poll were lost");

    // The agent restarts as an older one: new facts, a new digest, held from then on, and
    // they decide what it can take (a deploy is refused up front: format 1 only).
    let old = facts("0.1.0", "host-b", vec![1]);
    let d_old = facts_digest(&old);
    assert_ne!(d_old, d);
    assert_eq!(poll(Some(&old), &d_old).facts_digest, d_old);
    assert_eq!(poll(None, &d_old).facts_digest, d_old);
    let row = agent_row(&w);
    assert_eq!((row["hostname"].as_str(), row["agent_version"].as_str()), (Some("host-b"), Some("0.1.0")), "{row}");
    let r = w.coord(&["deploy", "edge-pull"]).fails();
    assert!(r.stderr().contains("reads manifest format [1]"), "{}", r.stderr());
}

/// One static agent from `cross/build`, run (under qemu-user where it is not x86_64): it
/// enrolls with this x86_64 coordinator, takes two pull deploys and switches `current`, and
/// the coordinator sees its architecture.
fn static_agent_enrolls_deploys_and_switches_current(triple: &str, qemu: &[&str], arch: &str) {
    let binary = workspace().join(format!("target/cross/dist/dockfra-agent-{triple}"));
    let mut needs = Needs::new().file(&binary, "cross/build --install makes it");
    if let Some(q) = qemu.first() {
        needs = needs.tool(q, "Debian's qemu-user-static");
    }
    if needs.unmet() {
        return;
    }
    let w = World::new(&format!("static-{arch}"));
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let mut agent = Agent::new(&w, arch);
    agent.prefix = qemu.iter().map(|s| s.to_string()).collect();
    agent.program = Some(binary);

    let detect = agent.run_cmd(&["detect"]).ok().stdout();
    let reported = detect.lines().find_map(|l| l.strip_prefix("arch:")).map(str::trim);
    assert_eq!(reported, Some(arch), "{detect}");
    agent.enroll(&format!("https://{}", w.addr()), &w.token("edge-pull")).ok();
    let _a = agent.start(&w);
    let (code, v) = deploy_json(&w, &["edge-pull", "--wait", "--timeout", "120s"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(live_version(&w, "deploy-pull"), "v1");
    let first = current(&w, "deploy-pull");

    w.write("project/app/VERSION", "v2\n");
    let (code, v) = deploy_json(&w, &["edge-pull", "--wait", "--timeout", "120s"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(live_version(&w, "deploy-pull"), "v2");
    assert_ne!(current(&w, "deploy-pull"), first, "current moved to the new release");
    let agents = w.coord(&["agents", "--output", "json"]).ok().json();
    let row = agents.as_array().unwrap().iter().find(|a| a["target"] == "edge-pull").cloned().unwrap();
    assert_eq!(row["arch"], arch, "the coordinator sees the agent's architecture: {row}");
}

/// The Raspberry Pi 3 agent, as a Cortex-A7 (the Pi 3's core).
#[test]
fn armv7_agent_under_qemu_enrolls_deploys_and_switches_current() {
    static_agent_enrolls_deploys_and_switches_current(
        "armv7-unknown-linux-gnueabihf",
        &["qemu-arm-static", "-cpu", "cortex-a7"],
        "arm",
    );
}

#[test]
fn aarch64_agent_under_qemu_enrolls_deploys_and_switches_current() {
    static_agent_enrolls_deploys_and_switches_current("aarch64-unknown-linux-gnu", &["qemu-aarch64-static"], "aarch64");
}

/// The x86_64 agent: static musl, run natively.
#[test]
fn x86_64_static_agent_enrolls_deploys_and_switches_current() {
    static_agent_enrolls_deploys_and_switches_current("x86_64-unknown-linux-musl", &[], "x86_64");
}

/// `os:` is checked against what the agent reports: `deploy-test` says so, and the agent
/// refuses a release for another OS before anything on disk changes.
#[test]
fn declared_os_is_checked_against_the_agent() {
    let w = World::new("os");
    let port = free_port();
    let targets = |os: &str| {
        format!(
            "app: {{ name: web, path: ./app }}\ntargets:\n  box:\n    host: 127.0.0.1\n    platform: ssh_raw\n    os: {os}\n    agent: {{ mode: push, port: {port} }}\n    config: {{ deploy_path: {}/deploy }}\n",
            w.dir.display()
        )
    };
    w.write("project/deploy-targets.yaml", &targets("macos"));
    w.write("project/app/VERSION", "v1\n");
    let (_coord, _agent, _a) = w.start_push("box", "box", port);

    let r = w.coord(&["deploy-test", "box"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(
        r.stdout().contains("os check:   mismatch: os: macos is declared, but the agent's host is linux"),
        "{}",
        r.stdout()
    );
    let (code, v) = deploy_json(&w, &["box"]);
    assert_eq!(code, 3, "{v}");
    assert!(v["message"].as_str().unwrap().contains("os: macos is declared, but the agent's host is linux"), "{v}");
    assert!(!w.path("deploy").exists(), "nothing on disk for a refused release");

    w.write("project/deploy-targets.yaml", &targets("linux"));
    let r = w.coord(&["deploy-test", "box"]).ok();
    assert!(r.stdout().contains("os check:   ok"), "{}", r.stdout());
    let (code, v) = deploy_json(&w, &["box"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(std::fs::read_to_string(w.path("deploy/web/current/VERSION")).unwrap(), "v1\n");
    let st = w.coord(&["status", "box", "--output", "json"]).ok().json();
    assert_eq!((st["os"].as_str(), st["os_check"].as_str()), (Some("linux"), Some("ok")), "{st}");
    assert!(!st["os_release"].as_str().unwrap_or_default().is_empty() && st["arch"] == std::env::consts::ARCH, "{st}");
}

/// The .deb (packaging/deb, cargo-deb) installs, upgrades, is removed and purged in a
/// Debian 12 container that boots systemd: packaging/test-deb does each step and checks it.
/// The package carries this build's agent binary; cross/build makes the static ones.
#[test]
fn deb_package_installs_upgrades_removes_and_purges_under_systemd() {
    if Needs::new().docker().image(SYSTEMD_PODMAN).tool("cargo-deb", CARGO_DEB).unmet() {
        return;
    }
    let w = World::new("deb");
    let out = w.path("out");
    let debs = [build_deb(&w, &out, "0.1.0-1"), build_deb(&w, &out, "0.1.0-2")];
    let mut c = std::process::Command::new(workspace().join("packaging/test-deb"));
    c.args(&debs);
    let r = run(c);
    assert_eq!(r.code(), 0, "packaging/test-deb failed:\n{}\n{}", r.stdout(), r.stderr());
    let log = r.stdout();
    for step in ["--- install V1", "--- upgrade to V2", "--- remove", "--- purge", "test-deb: all checks passed"] {
        assert!(log.contains(step), "missing step {step:?}:\n{log}");
    }
}

/// The Homebrew formula and the launchd plists, as far as Linux can check them
/// (packaging/check-brew: `ruby -c`, the formula against a stand-in of Homebrew's DSL, plist
/// parsing); macOS, brew and launchd themselves are not here. The formula installs the
/// prebuilt agents of `cross/build`: rendered from their SHA256SUMS, it installs each
/// platform's binary byte for byte, and a wrong sum stops the install.
#[test]
fn homebrew_formula_and_launchd_plists_check() {
    let dist = workspace().join("target/cross/dist");
    if Needs::new()
        .tool("ruby", "Debian's ruby")
        .tool("plistutil", "Debian's libplist-utils")
        .tool("python3", "Debian's python3")
        .file(&dist.join("SHA256SUMS"), "cross/build --install makes it")
        .unmet()
    {
        return;
    }
    let mut c = std::process::Command::new(workspace().join("packaging/check-brew"));
    c.arg("--dist").arg(&dist).arg(bin("dockfra-agent"));
    let r = run(c);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let out = r.stdout();
    assert!(out.contains("check-brew: all checks passed"), "{out}");
    for platform in ["macos/arm", "macos/intel", "linux/arm", "linux/intel"] {
        assert!(out.contains(&format!("ok - {platform} installs dockfra-agent-")), "{platform}: {out}");
    }
    assert!(out.contains("SHA256 mismatch"), "{out}");
}

/// The macOS agents from `cross/build` (zig, no Apple SDK): built and checked, not run —
/// Mach-O for the right CPU, macOS 11 at least, only libSystem linked, and on arm64 an ad-hoc
/// code signature whose page hashes match. A binary with one byte changed fails the check.
#[test]
fn macos_agents_are_mach_o_for_macos_11_linking_only_libsystem_and_signed() {
    let dist = workspace().join("target/cross/dist");
    let arm = dist.join("dockfra-agent-aarch64-apple-darwin");
    let intel = dist.join("dockfra-agent-x86_64-apple-darwin");
    if Needs::new()
        .file(&arm, "cross/build --install makes it")
        .file(&intel, "cross/build --install makes it")
        .tool("python3", "Debian's python3")
        .unmet()
    {
        return;
    }
    let check = |bin: &std::path::Path, arch: &str| {
        let mut c = std::process::Command::new(workspace().join("cross/check-macho"));
        c.arg(bin).args(["--arch", arch, "--min-os", "11.0"]);
        run(c)
    };
    let r = check(&arm, "arm64");
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert!(r.stdout().contains("page hashes (SHA-256, 4096-byte pages) match"), "{}", r.stdout());
    let r = check(&intel, "x86_64");
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert!(r.stdout().contains("links only /usr/lib/libSystem.B.dylib"), "{}", r.stdout());
    // The wrong architecture, and a changed byte in the signed code, are caught.
    assert_ne!(check(&intel, "arm64").code(), 0);
    let w = World::new("macho");
    let mut bytes = std::fs::read(&arm).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    let tampered = w.path("tampered");
    std::fs::write(&tampered, &bytes).unwrap();
    let r = check(&tampered, "arm64");
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(r.stdout().contains("does not match the CodeDirectory"), "{}", r.stdout());
    // Small, as the agent must be.
    for b in [&arm, &intel] {
        let size = std::fs::metadata(b).unwrap().len();
        assert!(size < 6 << 20, "{}: {size} bytes", b.display());
    }
}

/// Where cargo-deb comes from (scripts/setup installs this version).
const CARGO_DEB: &str = "cargo install cargo-deb --locked --version 3.8.0";

/// Package this build's agent as a .deb (cargo-deb, private target dir) into `out`.
fn build_deb(w: &World, out: &std::path::Path, version: &str) -> String {
    let target = w.path("deb-target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    std::fs::copy(bin("dockfra-agent"), target.join("release/dockfra-agent")).unwrap();
    let mut c = std::process::Command::new("cargo");
    c.current_dir(workspace())
        .env("CARGO_TARGET_DIR", &target)
        .args(["deb", "-p", "dockfra-agent", "--no-build", "--strip", "--deb-version", version, "-o"])
        .arg(out);
    let r = run(c).ok();
    let deb = r.stdout().lines().last().unwrap_or_default().trim().to_string();
    assert!(deb.ends_with(&format!("dockfra-agent_{version}_amd64.deb")), "{}{}", r.stdout(), r.stderr());
    deb
}

/// The .deb's agent upgrades itself under its systemd unit: the unit's process (the
/// package's `/usr/bin/dockfra-agent`, as user dockfra) starts the static x86_64 agent on
/// trial; it reaches the coordinator and stays, deploys, and after a restart of the unit is
/// what the unit runs. A broken binary is tried, fails, and the unit goes on with the binary
/// it had, still active and deploying.
fn upgrade_under_systemd(w: &World, sbox: &SystemdBox) {
    let musl = workspace().join("target/cross/dist/dockfra-agent-x86_64-unknown-linux-musl");
    if Needs::new().file(&musl, "cross/build --install makes it").unmet() {
        return;
    }
    let bins = |name: &str, bytes: Vec<u8>| {
        let dir = w.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dockfra-agent-x86_64-unknown-linux-musl"), &bytes).unwrap();
        let sums = format!("{}  dockfra-agent-x86_64-unknown-linux-musl\n", dockfra_common::sha256_hex(&bytes));
        std::fs::write(dir.join("SHA256SUMS"), sums).unwrap();
        (dir.display().to_string(), dockfra_common::sha256_hex(&bytes))
    };
    let main_pid = || sbox.sh("systemctl show -p MainPID --value dockfra-agent").1;
    let exe = |pid: &str| sbox.sh(&format!("readlink /proc/{pid}/exe")).1;
    let children = |pid: &str| {
        sbox.sh(&format!(
            "for p in /proc/[0-9]*; do [ \"$(awk '/^PPid/{{print $2}}' $p/status 2>/dev/null)\" = {pid} ] && echo ${{p#/proc/}}; done"
        ))
        .1
    };
    let agent_sha = || {
        let a = w.coord(&["agents", "--output", "json"]).ok().json();
        a[0]["binary_sha256"].as_str().unwrap_or_default().to_string()
    };
    let installed = agent_sha();

    let (good, good_sha) = bins("good-bins", {
        let mut b = std::fs::read(&musl).unwrap();
        b.extend_from_slice(b"\0under-systemd");
        b
    });
    let r = w.coord(&["agent", "upgrade", "box", "--binaries", &good, "--trial-timeout", "60s", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert_eq!(agent_sha(), good_sha);
    let main = main_pid();
    assert_eq!(exe(&main), "/usr/bin/dockfra-agent", "the unit's process is the package's binary, supervising");
    let child = children(&main);
    assert!(exe(&child).starts_with("/var/lib/dockfra/apps/dockfra-agent/releases/"), "child {child}: {}", exe(&child));
    assert_eq!(sbox.sh(&format!("stat -c %U /proc/{child}")).1, "dockfra", "the new agent runs as the unit's user");
    w.write("project/app/VERSION", "up1\n");
    let (code, v) = deploy_json(w, &["box"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(sbox.sh("cat /var/lib/dockfra/apps/web/current/VERSION").1, "up1");

    // Restarted, the unit runs the committed binary itself.
    assert!(sbox.sh("systemctl restart dockfra-agent").0);
    wait_until("the upgraded unit to answer", Duration::from_secs(30), || w.coord(&["deploy-test", "box"]).code() == 0);
    let main = main_pid();
    assert!(exe(&main).starts_with("/var/lib/dockfra/apps/dockfra-agent/releases/"), "{}", exe(&main));
    assert_eq!(agent_sha(), good_sha);

    // A broken binary: tried, failed, the unit goes on with what it had.
    let (broken, _) = bins("broken-bins", std::fs::read(&musl).unwrap()[..4096].to_vec());
    let r = w.coord(&["agent", "upgrade", "box", "--binaries", &broken, "--trial-timeout", "30s", "--output", "json"]);
    assert_eq!(r.code(), 3, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("runs again"), "{}", r.stdout());
    assert_eq!(sbox.sh("systemctl is-active dockfra-agent").1, "active");
    wait_until("the agent to answer after the failed trial", Duration::from_secs(30), || agent_sha() == good_sha);
    w.write("project/app/VERSION", "up2\n");
    let (code, v) = deploy_json(w, &["box"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(sbox.sh("cat /var/lib/dockfra/apps/web/current/VERSION").1, "up2");
    assert_ne!(installed, good_sha);
}

/// `dockfra-coord agent install` against a real sshd: a Debian 12 container booting systemd,
/// in a network namespace of its own (the coordinator joins it with nsenter). A wrong host
/// key fingerprint is refused before anything is uploaded; the right one installs the .deb,
/// enrolls, starts the hardened service, verifies with deploy-test, and a deploy lands.
#[test]
fn agent_install_over_ssh_into_a_systemd_host() {
    if Needs::new()
        .docker()
        .image(SYSTEMD_PODMAN)
        .tool("cargo-deb", CARGO_DEB)
        .tool("ssh", "Debian's openssh-client")
        .tool("ssh-keygen", "Debian's openssh-client")
        .tool("nsenter", "Debian's util-linux")
        .unmet()
    {
        return;
    }
    let mut w = World::new("sshinst");
    let sbox = SystemdBox::start(&w);
    wait_until("sshd in the container", Duration::from_secs(30), || sbox.sh("systemctl is-active ssh").1 == "active");
    let key = w.path("id_ed25519");
    let r = run({
        let mut c = std::process::Command::new("ssh-keygen");
        c.args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key);
        c
    });
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let public = std::fs::read_to_string(w.path("id_ed25519.pub")).unwrap();
    let (ok, _, err) = sbox.sh(&format!(
        "mkdir -p /root/.ssh && chmod 700 /root/.ssh && echo '{}' > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys",
        public.trim()
    ));
    assert!(ok, "{err}");
    let (_, fp_line, _) = sbox.sh("ssh-keygen -l -E sha256 -f /etc/ssh/ssh_host_ed25519_key.pub");
    let fingerprint = fp_line.split_whitespace().nth(1).unwrap().to_string();
    let artifacts = w.path("artifacts");
    build_deb(&w, &artifacts, "0.1.0-1");

    let port = free_port();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            "app: {{ name: web, path: ./app }}\ntargets:\n  box:\n    host: 127.0.0.1\n    port: 22\n    user: root\n    os: linux\n    platform: ssh_raw\n    agent: {{ mode: push, port: {port} }}\n"
        ),
    );
    w.write("project/app/VERSION", "v1\n");
    w.coord_prefix = sbox.in_netns();
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let install = |fp: &str| {
        let (k, a) = (key.display().to_string(), artifacts.display().to_string());
        w.coord(&["agent", "install", "box", "--identity", &k, "--host-key-fingerprint", fp, "--artifacts", &a])
    };

    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let r = install(wrong);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(r.stderr().contains("does not match") && r.stderr().contains(&fingerprint), "{}", r.stderr());
    assert!(!sbox.sh("test -e /usr/bin/dockfra-agent").0, "nothing reached a host whose key did not match");

    let r = install(&fingerprint);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let out = r.stdout();
    for step in [
        "probe:    Linux x86_64 (debian, systemd)",
        "install:  dockfra-agent_0.1.0-1_amd64.deb",
        "enroll:   as target box",
        "verify:   deploy-test: reachable",
    ] {
        assert!(out.contains(step), "missing {step:?} in:\n{out}");
    }
    assert!(out.contains("os check ok"), "{out}");
    let (_, pid, _) = sbox.sh("systemctl show -p MainPID --value dockfra-agent");
    let (_, owner, _) = sbox.sh(&format!("stat -c %U /proc/{pid}"));
    assert_eq!(owner, "dockfra", "the service runs as its own user");
    let (_, cfg, _) = sbox.sh("cat /etc/dockfra/agent.yaml");
    assert!(cfg.contains("coordinator: https://127.0.0.1:"), "{cfg}");

    let (code, v) = deploy_json(&w, &["box"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(sbox.sh("cat /var/lib/dockfra/apps/web/current/VERSION").1, "v1");

    upgrade_under_systemd(&w, &sbox);

    // Again: the package is reinstalled, the enrollment kept.
    let r = install(&fingerprint);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("already enrolled; kept"), "{}", r.stdout());

    // A host without the package: the static binary, with the package's unit and user.
    assert!(sbox.sh("dpkg -P dockfra-agent && ! id dockfra && test ! -e /var/lib/dockfra").0, "purged");
    std::fs::copy(bin("dockfra-agent"), artifacts.join("dockfra-agent-x86_64-unknown-linux-musl")).unwrap();
    let (k, a) = (key.display().to_string(), artifacts.display().to_string());
    let r = w.coord(&[
        "agent",
        "install",
        "box",
        "--binary",
        "--identity",
        &k,
        "--host-key-fingerprint",
        &fingerprint,
        "--artifacts",
        &a,
    ]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("-> /usr/local/bin/dockfra-agent, user dockfra"), "{}", r.stdout());
    let (_, pid, _) = sbox.sh("systemctl show -p MainPID --value dockfra-agent");
    assert_eq!(sbox.sh(&format!("stat -c %U /proc/{pid}")).1, "dockfra");
    w.write("project/app/VERSION", "v2\n");
    let (code, v) = deploy_json(&w, &["box"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(sbox.sh("cat /var/lib/dockfra/apps/web/current/VERSION").1, "v2");
}
