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
