//! Faults, and what the agent does about them: killed with SIGKILL in the middle of a deploy
//! (before and after activation), it restarts, recovers from its journal and converges; a pull
//! agent keeps the current release running while the coordinator is down and catches up when
//! it is back; a disk that fills while a release is materialized leaves the previous release
//! live and nothing behind.
use std::time::Duration;

use dockfra_e2e::*;

use crate::{current, deploy_json, live_version, project};

#[test]
fn kill_9_mid_deploy_then_restart_converges() {
    let w = World::new("crash");
    let port = free_port();
    let d = w.dir.display();
    // Hang (once) in pre_script, then (once) in post_script, when the trigger files exist.
    let pre = format!("if [ -f {d}/trig-pre ] && [ ! -f {d}/hit-pre ]; then touch {d}/hit-pre; sleep 30; fi");
    let post = format!("if [ -f {d}/trig-post ] && [ ! -f {d}/hit-post ]; then touch {d}/hit-post; sleep 30; fi");
    project(&w, port, &pre, &post);
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let agent = Agent::new(&w, "pull");
    agent.enroll(&url, &w.token("edge-pull")).ok();
    let mut proc = agent.start(&w);
    assert_eq!(deploy_json(&w, &["edge-pull", "--wait", "--timeout", "60s"]).0, 0);
    let v1 = current(&w, "deploy-pull");

    for (phase, trig, hit) in [("pre", "trig-pre", "hit-pre"), ("post", "trig-post", "hit-post")] {
        w.write(trig, "");
        w.write("project/app/VERSION", &format!("after-{phase}\n"));
        let waiter = {
            let mut c = std::process::Command::new(bin("dockfra-coord"));
            c.arg("--state-dir").arg(&w.coord_state).args([
                "deploy",
                "edge-pull",
                "--wait",
                "--timeout",
                "90s",
                "--output",
                "json",
            ]);
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap()
        };
        wait_until("the agent to hang mid-deploy", Duration::from_secs(30), || w.path(hit).exists());
        assert!(agent.state.join("journal.json").exists(), "the journal records the deploy in flight");
        proc.kill9();
        let _ = std::process::Command::new("pkill").args(["-f", &format!("touch {d}/{hit}")]).status();
        let cur = current(&w, "deploy-pull");
        if phase == "pre" {
            assert_eq!(cur, v1, "a crash before activation leaves current alone");
        }
        assert!(w.path("deploy-pull/web").join(&cur).join("VERSION").is_file(), "current is always a complete release");
        proc = agent.start(&w);
        let out = waiter.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["result"], "succeeded", "{v}\nagent log:\n{}", proc.log());
        assert_eq!(live_version(&w, "deploy-pull"), format!("after-{phase}"));
        assert!(!agent.state.join("journal.json").exists());
        assert!(proc.log().contains("recovered interrupted deploy"), "{}", proc.log());
        let leftovers: Vec<_> = std::fs::read_dir(w.path("deploy-pull/web/releases"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

#[test]
fn pull_agent_keeps_running_while_the_coordinator_is_down() {
    let w = World::new("outage");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let mut coord = w.serve(&[]);
    let addr = w.addr();
    let agent = Agent::new(&w, "pull");
    agent.enroll(&format!("https://{addr}"), &w.token("edge-pull")).ok();
    let proc = agent.start(&w);
    assert_eq!(deploy_json(&w, &["edge-pull", "--wait", "--timeout", "60s"]).0, 0);
    let v1 = current(&w, "deploy-pull");

    assert!(coord.term().success(), "coordinator stops cleanly on SIGTERM");
    wait_until("the agent to notice the outage", Duration::from_secs(20), || {
        proc.log().matches("poll failed").count() >= 2
    });
    assert_eq!(current(&w, "deploy-pull"), v1, "the current release keeps running");
    assert!(proc.log().contains("retrying in"), "{}", proc.log());

    let _coord = w.serve(&["--listen", &addr]);
    w.write("project/app/VERSION", "v2\n");
    let (code, v) = deploy_json(&w, &["edge-pull", "--wait", "--timeout", "60s"]);
    assert_eq!(code, 0, "{v}\n{}", proc.log());
    assert_eq!(live_version(&w, "deploy-pull"), "v2");

    // `poll-now` (SIGHUP) makes an agent with a 30s schedule poll at once.
    let slow = Agent::new(&w, "slow");
    slow.enroll(&format!("https://{addr}"), &w.token("edge-offline")).ok();
    let slow_proc = slow.start(&w);
    wait_until("the first poll", Duration::from_secs(10), || slow_proc.log().contains("dockfra-agent running"));
    std::thread::sleep(Duration::from_millis(500));
    w.coord(&["deploy", "edge-offline"]).ok();
    let asked = std::time::Instant::now();
    slow.run_cmd(&["poll-now"]).ok();
    wait_until("poll-now to deliver", Duration::from_secs(10), || live_version(&w, "deploy-offline") == "v2");
    assert!(asked.elapsed() < Duration::from_secs(10));
}

#[test]
fn disk_full_while_materializing_discards_the_release() {
    if Needs::new().root("to mount a small tmpfs").unmet() {
        return;
    }
    let w = World::new("diskfull");
    project(&w, free_port(), "", "");
    let mnt = w.path("deploy-offline");
    std::fs::create_dir_all(&mnt).unwrap();
    let m =
        std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(m.success(), "mount tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let agent = Agent::new(&w, "offline");
    agent.enroll(&format!("https://{}", w.addr()), &w.token("edge-offline")).ok();
    let small = w.path("small.tar");
    w.coord(&["bundle", "export", "edge-offline", "-o", small.to_str().unwrap()]).ok();
    agent.run_cmd(&["apply", small.to_str().unwrap()]).ok();
    let v1 = current(&w, "deploy-offline");
    let before = snapshot(&mnt);
    // 3 MiB of content that does not compress: it cannot fit in the 1 MiB tmpfs.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(w.path("project/app/blob.bin"), noise).unwrap();
    let big = w.path("big.tar");
    w.coord(&["bundle", "export", "edge-offline", "-o", big.to_str().unwrap()]).ok();
    let r = agent.run_cmd(&["apply", big.to_str().unwrap()]);
    assert_eq!(r.code(), 3, "{}{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("No space left on device"), "{}", r.stdout());
    assert_eq!(current(&w, "deploy-offline"), v1);
    assert_eq!(snapshot(&mnt), before, "the failed release left nothing behind");
}

/// Phases whose kill the agent must survive, in journal order.
const PHASES: [&str; 9] =
    ["Verified", "Fetched", "Materialized", "PreDeployed", "Activated", "Applied", "Healthy", "Reported", "Pruned"];

fn deploy_id(w: &World, target: &str) -> String {
    let r = w.coord(&["deploy", target, "--output", "json"]).ok();
    r.json()["deployment_id"].as_str().unwrap().to_string()
}

/// `kill -9` of the agent at every journal phase: after a restart it converges — a release
/// that passed its health check is kept and reported (through the outbox, without running
/// again), anything earlier is undone and the order runs whole when the coordinator hands it
/// out again. `current` is a complete release at every moment, and nothing is left behind.
#[test]
fn kill_9_of_the_agent_at_every_journal_phase_converges() {
    let w = World::new("phases");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let agent = Agent::new(&w, "pull");
    agent.enroll(&format!("https://{}", w.addr()), &w.token("edge-pull")).ok();
    let mut run = agent.start(&w);
    let id = deploy_id(&w, "edge-pull");
    assert_eq!(wait_final(&w, &id, Duration::from_secs(60))["status"], "succeeded");
    drop(run);
    for phase in PHASES {
        let version = format!("at-{phase}");
        w.write("project/app/VERSION", &format!("{version}\n"));
        let marker = w.path(&format!("marker-{phase}"));
        let fault = format!("pause@agent:{phase}");
        run = agent.start_env(&w, &[("DOCKFRA_FAULT", &fault), ("DOCKFRA_FAULT_MARKER", marker.to_str().unwrap())]);
        let id = deploy_id(&w, "edge-pull");
        wait_until(&format!("the agent to reach {phase}"), Duration::from_secs(60), || marker.exists());
        run.kill9();
        let cur = current(&w, "deploy-pull");
        assert!(w.path("deploy-pull/web").join(&cur).join("VERSION").is_file(), "{phase}: current is incomplete");
        run = agent.start(&w);
        let row = wait_final(&w, &id, Duration::from_secs(60));
        assert_eq!(row["status"], "succeeded", "{phase}: {row}\n{}", run.log());
        assert_eq!(live_version(&w, "deploy-pull"), version, "{phase}");
        let kept = PHASES.iter().position(|p| *p == phase) >= PHASES.iter().position(|p| *p == "Healthy");
        assert_eq!(row["attempts"], if kept { 1 } else { 2 }, "{phase}: {row}");
        assert!(run.log().contains("recovered interrupted deploy"), "{phase}: {}", run.log());
        assert!(!agent.state.join("journal.json").exists(), "{phase}");
        wait_until("the outbox to empty", Duration::from_secs(10), || !agent.state.join("outbox.json").exists());
        let leftovers: Vec<String> = std::fs::read_dir(w.path("deploy-pull/web/releases"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{phase}: {leftovers:?}");
        let st = agent.status();
        assert_eq!(st["apps"][0]["current_version"], row["version"], "{phase}: {st}");
        drop(run);
    }
}

/// Hole 4 (issue #8): a pull agent's final report that failed to reach the coordinator was
/// never sent again, so the deployment stayed `running` for good. It waits in the agent's
/// outbox until the coordinator takes it.
#[test]
fn a_final_report_lost_while_the_coordinator_is_down_arrives_later() {
    let w = World::new("lost-report");
    let d = w.dir.display();
    project(&w, free_port(), &format!("touch {d}/in-pre; sleep 2"), "");
    w.init("127.0.0.1:0");
    let mut coord = w.serve(&[]);
    let addr = w.addr();
    let agent = Agent::new(&w, "pull");
    agent.enroll(&format!("https://{addr}"), &w.token("edge-pull")).ok();
    let run = agent.start(&w);
    let id = deploy_id(&w, "edge-pull");
    wait_until("the agent to be mid-deploy", Duration::from_secs(30), || w.path("in-pre").exists());
    coord.kill9();
    wait_until("the agent to finish with nobody to tell", Duration::from_secs(30), || {
        agent.state.join("outbox.json").exists() && live_version(&w, "deploy-pull") == "v1"
    });
    let _coord = w.serve(&["--listen", &addr]);
    let row = wait_final(&w, &id, Duration::from_secs(30));
    assert_eq!(row["status"], "succeeded", "{row}\n{}", run.log());
    wait_until("the outbox to empty", Duration::from_secs(10), || !agent.state.join("outbox.json").exists());
    // Reported twice (say the agent could not tell the first went through): still one result.
    let events = w.coord(&["events", "edge-pull", "--limit", "500", "--output", "json"]).ok().json();
    let done = events.as_array().unwrap().iter().filter(|e| e["kind"] == "Done").count();
    assert_eq!(done, 1, "{events}");
}

/// After a coordinator restart no deployment is left open without an agent working on it:
/// killed mid-push, the deployment ends `interrupted` (the agent stopped with nothing
/// changed); killed mid-export, the export ends `failed` and the CLI leaves no file.
#[test]
fn kill_9_of_the_coordinator_mid_push_and_mid_export_leaves_nothing_open() {
    let w = World::new("coord-kill");
    let port = free_port();
    project(&w, port, "", "");
    // More than one chunk of blobs and of archive.
    let big: String = (0..1_200_000).map(|i| (b'a' + (i % 23) as u8) as char).collect();
    w.write("project/app/large.txt", &big);
    let (mut coord, agent, _run) = w.start_push("p", "edge-push", port);
    let addr = w.addr();
    assert_eq!(deploy_json(&w, &["edge-push"]).0, 0);
    let v1 = current(&w, "deploy-push");
    coord.kill9();

    // Mid-push.
    w.write("project/app/large.txt", &big.replace('a', "b"));
    let marker = w.path("marker-push");
    coord = w.serve_env(
        &["--listen", &addr],
        &[("DOCKFRA_FAULT", "pause@coord:blob-chunk"), ("DOCKFRA_FAULT_MARKER", marker.to_str().unwrap())],
    );
    let cli = std::process::Command::new(bin("dockfra-coord"))
        .arg("--state-dir")
        .arg(&w.coord_state)
        .args(["deploy", "edge-push"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut cli = Proc { child: cli, log: w.path("cli.log") };
    wait_until("the push to be mid-transfer", Duration::from_secs(30), || marker.exists());
    coord.kill9();
    cli.kill9();
    coord = w.serve(&["--listen", &addr]);
    let hist = w.coord(&["history", "edge-push", "--output", "json"]).ok().json();
    let id = hist[0]["id"].as_str().unwrap().to_string();
    let row = wait_final(&w, &id, Duration::from_secs(30));
    assert_eq!(row["status"], "interrupted", "{row}");
    assert_eq!(current(&w, "deploy-push"), v1, "nothing changed on the agent");
    assert!(!agent.state.join("journal.json").exists());
    assert_eq!(deploy_json(&w, &["edge-push"]).0, 0, "the next deploy goes through");
    coord.kill9();

    // Mid-export.
    let marker = w.path("marker-export");
    coord = w.serve_env(
        &["--listen", &addr],
        &[("DOCKFRA_FAULT", "pause@coord:export-chunk"), ("DOCKFRA_FAULT_MARKER", marker.to_str().unwrap())],
    );
    let out = w.path("exports/b.tar");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let cli = std::process::Command::new(bin("dockfra-coord"))
        .arg("--state-dir")
        .arg(&w.coord_state)
        .args(["bundle", "export", "edge-offline", "-o", out.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the export to be mid-way", Duration::from_secs(30), || marker.exists());
    coord.kill9();
    let o = cli.wait_with_output().unwrap();
    assert!(!o.status.success());
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "the CLI left {left:?}");
    let _coord = w.serve(&["--listen", &addr]);
    let hist = w.coord(&["history", "edge-offline", "--output", "json"]).ok().json();
    assert_eq!(hist[0]["status"], "failed", "{hist}");
    assert!(hist[0]["reason"].as_str().unwrap().contains("interrupted"), "{hist}");
    let open: Vec<_> = w
        .coord(&["history", "--output", "json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["done"] == false)
        .cloned()
        .collect();
    assert!(open.is_empty(), "open deployments after the restarts: {open:?}");
}

/// One panicking request does not take the fleet's server down: its caller gets INTERNAL,
/// everyone else is served.
#[test]
fn a_panicking_request_does_not_kill_the_coordinator() {
    let w = World::new("panic");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let mut coord = w.serve_env(&[], &[("DOCKFRA_FAULT", "panic@coord:admin-status")]);
    for _ in 0..3 {
        let r = w.coord(&["status"]).fails();
        assert!(r.stderr().contains("internal error"), "{}", r.stderr());
        w.coord(&["events"]).ok();
    }
    assert!(coord.child.try_wait().unwrap().is_none(), "the coordinator died:\n{}", coord.log());
    assert!(coord.log().contains("panicked"), "{}", coord.log());
}

/// A network cut in the middle of a blob transfer (the agent's link down), then healed: the
/// deploy resumes by itself and only the blobs that had not arrived travel again.
#[test]
fn a_network_cut_mid_transfer_resumes_and_only_missing_blobs_travel() {
    if Needs::new()
        .root("for network namespaces")
        .tool("ip", "Debian's iproute2")
        .tool("tc", "Debian's iproute2")
        .unmet()
    {
        return;
    }
    let net = NetPair::new("cut", 232);
    // About 1 MB/s from the coordinator to the agent, so the transfer takes a while.
    sh(&format!("ip netns exec {} tc qdisc add dev {} root tbf rate 8mbit burst 32kb latency 2s", net.c, net.link_c));

    let mut w = World::new("cut");
    w.coord_prefix = NetPair::prefix(&net.c);
    project(&w, free_port(), "", "");
    let files = 12;
    for i in 0..files {
        let body: String = (0..512 * 1024).map(|j| (b'a' + ((i * 7 + j) % 26) as u8) as char).collect();
        w.write(&format!("project/app/data/part{i}.bin"), &body);
    }
    w.init(&format!("{}:0", net.ipc));
    let _coord = w.serve(&[]);
    let mut agent = Agent::new(&w, "cut");
    agent.prefix = NetPair::prefix(&net.a);
    agent.enroll(&format!("https://{}", w.addr()), &w.token("edge-pull")).ok();
    let run = agent.start(&w);
    let dep = deploy_id(&w, "edge-pull");
    let blobs = agent.state.join("blobs/sha256");
    let count = || {
        std::fs::read_dir(&blobs)
            .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
            .unwrap_or(0)
    };
    wait_until("a few blobs to arrive", Duration::from_secs(60), || count() >= 3);
    sh(&format!("ip -n {} link set {} down", net.a, net.link_a));
    let arrived = count();
    assert!(arrived < files, "the whole transfer finished before the cut ({arrived} blobs)");
    wait_until("the agent to notice the cut", Duration::from_secs(60), || run.log().contains("transfer interrupted"));
    std::thread::sleep(Duration::from_secs(2));
    sh(&format!("ip -n {} link set {} up", net.a, net.link_a));
    let row = wait_final(&w, &dep, Duration::from_secs(120));
    assert_eq!(row["status"], "succeeded", "{row}\n{}", run.log());
    assert!(row["attempts"].as_u64().unwrap() >= 2, "{row}");
    // "N of M blob(s) fetched (B bytes)": the resumed attempt fetched fewer than all.
    let events = w.coord(&["events", "edge-pull", "--limit", "500", "--output", "json"]).ok().json();
    let fetched = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "Fetched")
        .and_then(|e| e["message"].as_str())
        .unwrap_or_default()
        .to_string();
    let nums: Vec<u64> = fetched.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    let (got, wanted, bytes) = (nums[0], nums[1], nums[2]);
    assert!(got + arrived as u64 <= wanted && got < wanted, "{fetched}: the blobs that had arrived travelled again");
    assert!(bytes < (files * 512 * 1024) as u64, "{fetched}");
    assert_eq!(live_version(&w, "deploy-pull"), "v1");
}
