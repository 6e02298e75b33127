//! End-to-end: the real `dockfra-coord` and `dockfra-agent` binaries in temp dirs on
//! 127.0.0.1 (and, for the NAT'd pull agent, in network namespaces the test creates).
//! Each test builds its own world; nothing is shared between tests.
use std::time::Duration;

use dockfra_e2e::*;

/// A project with a push target, a pull target and an offline target, all `ssh_raw`.
fn project(w: &World, push_port: u16, extra_pre: &str, extra_post: &str) {
    let d = w.dir.display();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: web, path: ./app }}
targets:
  edge-push:
    host: 127.0.0.1
    platform: ssh_raw
    os: linux
    labels: {{ env: test }}
    agent: {{ mode: push, port: {push_port} }}
    config:
      deploy_path: {d}/deploy-push
      pre_script: "{extra_pre}"
      post_script: "{extra_post}"
    health:
      retries: 1
      interval: 100ms
      timeout: 2s
      checks:
        - command: "grep -q ok health.txt"
  edge-pull:
    host: 127.0.0.1
    platform: ssh_raw
    agent: {{ mode: pull, poll_interval: 300ms }}
    config:
      deploy_path: {d}/deploy-pull
      pre_script: "{extra_pre}"
      post_script: "{extra_post}"
    health:
      retries: 1
      interval: 100ms
      checks:
        - command: "grep -q ok health.txt"
  edge-offline:
    platform: ssh_raw
    agent: {{ mode: pull }}
    config:
      deploy_path: {d}/deploy-offline
"#
        ),
    );
    // 200 KiB that never changes between versions: it must travel once per agent only.
    let big: String = (0..200 * 1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    w.write("project/app/big.txt", &big);
    w.write("project/app/health.txt", "ok\n");
    w.write("project/app/VERSION", "v1\n");
    w.write("project/app/notes.log", "ignored\n");
    w.write("project/app/.dockfraignore", "*.log\n");
}

fn current(w: &World, deploy: &str) -> String {
    let link = w.path(deploy).join("web/current");
    std::fs::read_link(&link).map(|p| p.display().to_string()).unwrap_or_default()
}

fn live_version(w: &World, deploy: &str) -> String {
    std::fs::read_to_string(w.path(deploy).join("web/current/VERSION")).unwrap_or_default().trim().to_string()
}

fn deploy_json(w: &World, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["deploy"];
    a.extend_from_slice(args);
    a.extend(["--output", "json"]);
    let r = w.coord(&a);
    let code = r.code();
    (code, r.json())
}

#[test]
fn push_and_pull_deploy_update_rollback_and_failed_health() {
    let w = World::new("spine");
    let port = free_port();
    project(&w, port, "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());

    let mut push = Agent::new(&w, "push");
    push.listen = Some(format!("127.0.0.1:{port}"));
    push.enroll(&url, &w.token("edge-push")).ok();
    let pull = Agent::new(&w, "pull");
    pull.enroll(&url, &w.token("edge-pull")).ok();
    let _pa = push.start(&w);
    let _pl = pull.start(&w);

    // v1 to both.
    let (code, v) = deploy_json(&w, &["edge-push"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["result"], "succeeded");
    let v1_push = current(&w, "deploy-push");
    assert!(v1_push.starts_with("releases/"), "{v1_push}");
    assert_eq!(live_version(&w, "deploy-push"), "v1");
    assert!(!w.path("deploy-push/web/current/notes.log").exists(), ".dockfraignore not honoured");
    let (code, v) = deploy_json(&w, &["edge-pull", "--wait", "--timeout", "60s"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(live_version(&w, "deploy-pull"), "v1");
    let first_bytes = v["bytes_received"].as_u64().unwrap();
    assert!(first_bytes >= 200 * 1024, "first deploy moved only {first_bytes} bytes");

    // Without --wait, a pull deploy is queued and says so.
    w.write("project/app/VERSION", "v2-changed\n");
    let r = w.coord(&["deploy", "edge-pull"]).ok();
    assert!(r.stdout().contains("queued"), "{}", r.stdout());
    wait_until("the pull agent to pick up v2", Duration::from_secs(30), || {
        live_version(&w, "deploy-pull") == "v2-changed"
    });

    // v2 by push: only the changed file travels.
    let (code, v) = deploy_json(&w, &["edge-push", "--version", "2.0"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["bytes_received"].as_u64(), Some("v2-changed\n".len() as u64), "{v}");
    assert_eq!(live_version(&w, "deploy-push"), "v2-changed");
    let st = w.coord(&["status", "edge-push", "--output", "json"]).ok().json();
    assert_eq!(st["target"], "edge-push");
    assert_eq!(st["current_version"], "2.0");
    assert_eq!(st["health"], "healthy");
    assert_eq!(st["previous_release"].as_str().unwrap(), v1_push.trim_start_matches("releases/"));
    assert_eq!(st["last_deploy"]["status"], "succeeded");
    assert!(st["current_release"].as_str().unwrap().starts_with(&st["current_sequence"].to_string()));

    // Rollback to v1: nothing needs to travel.
    let r = w.coord(&["rollback", "edge-push", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_eq!(r.json()["bytes_received"].as_u64(), Some(0));
    assert_eq!(current(&w, "deploy-push"), v1_push);
    assert_eq!(live_version(&w, "deploy-push"), "v1");

    // Roll forward again to a named release with --to.
    let v2_push = st["current_release"].as_str().unwrap().to_string();
    w.coord(&["rollback", "edge-push", "--to", &v2_push]).ok();
    assert_eq!(live_version(&w, "deploy-push"), "v2-changed");
    let e = w.coord(&["rollback", "edge-push", "--to", "99-ffffffffffff"]).fails().stderr();
    assert!(e.contains("has no release \"99-ffffffffffff\""), "{e}");
    w.coord(&["rollback", "edge-push", "--to", v1_push.trim_start_matches("releases/")]).ok();

    // v3 fails its health check: automatic rollback, reported as failed with the reason.
    let before = current(&w, "deploy-push");
    w.write("project/app/health.txt", "fail\n");
    w.write("project/app/VERSION", "v3\n");
    let (code, v) = deploy_json(&w, &["edge-push"]);
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["result"], "failed");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("health check failed") && msg.contains("rolled back to"), "{msg}");
    assert_eq!(current(&w, "deploy-push"), before, "current must be back on the healthy release");
    let quarantined: Vec<_> = std::fs::read_dir(w.path("deploy-push/web/quarantine")).unwrap().flatten().collect();
    assert!(!quarantined.is_empty(), "the failed release is quarantined");
    let (code, v) = deploy_json(&w, &["edge-pull", "--wait", "--timeout", "60s"]);
    assert_eq!(code, 3, "{v}");
    assert_eq!(live_version(&w, "deploy-pull"), "v2-changed");

    // History and listings.
    let h = w.coord(&["history", "edge-push", "--output", "json"]).ok().json();
    let statuses: Vec<&str> = h.as_array().unwrap().iter().map(|d| d["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["failed", "succeeded", "succeeded", "succeeded", "succeeded", "succeeded"]);
    let t = w.coord(&["targets", "--output", "json"]).ok().json();
    assert_eq!(t.as_array().unwrap().len(), 3);
    assert_eq!(t[2]["enrolled"], false);
    let a = w.coord(&["agents", "--output", "json"]).ok().json();
    assert_eq!(a.as_array().unwrap().len(), 2);
    let dt = w.coord(&["deploy-test", "edge-push", "--output", "json"]).ok().json();
    assert_eq!(dt["reachable"], true);
    assert_eq!(dt["facts"]["agent_version"], dockfra_common::VERSION);
    assert!(dt["facts"]["runtimes"].as_array().unwrap().iter().any(|r| r["name"] == "sh"));
    let s = pull.status();
    assert_eq!(s["apps"][0]["current_version"].as_str().unwrap().len(), 12);

    // Local emergency rollback on the agent.
    let r = pull.run_cmd(&["rollback", "web"]).ok();
    assert!(r.stdout().contains("current ->"), "{}", r.stdout());
    assert_eq!(live_version(&w, "deploy-pull"), "v1");

    // An exported bundle is for offline delivery: the online pull agent does not pick it up,
    // and applying the file on that host works.
    w.write("project/app/health.txt", "ok\n");
    w.write("project/app/VERSION", "usb\n");
    let usb = w.path("usb.tar");
    w.coord(&["bundle", "export", "edge-pull", "-o", usb.to_str().unwrap()]).ok();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(live_version(&w, "deploy-pull"), "v1", "an export must not change the target's desired state");
    pull.run_cmd(&["apply", usb.to_str().unwrap()]).ok();
    assert_eq!(live_version(&w, "deploy-pull"), "usb");

    // `poll-now` sends SIGHUP; a push agent must survive it.
    push.run_cmd(&["poll-now"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.coord(&["deploy-test", "edge-push", "--output", "json"]).ok().json()["reachable"], true);
}

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

/// Rewrite an exported bundle through `f` (which may change documents and blobs).
fn rewrite_bundle(
    src: &std::path::Path,
    dst: &std::path::Path,
    mut f: impl FnMut(&mut dockfra_common::proto::Assignment, &mut Vec<(String, Vec<u8>)>),
) {
    use std::io::Read;
    let mut docs = None;
    let mut blobs = Vec::new();
    dockfra_common::bundle::read_archive(
        std::fs::File::open(src).unwrap(),
        |a| {
            let m: dockfra_common::bundle::Manifest =
                serde_json::from_slice(&a.manifest.as_ref().unwrap().manifest).unwrap();
            docs = Some(a);
            Ok(m.digests().into_iter().collect())
        },
        |d, r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v).unwrap();
            blobs.push((d.to_string(), v));
            Ok(())
        },
    )
    .unwrap();
    let mut a = docs.unwrap();
    f(&mut a, &mut blobs);
    let names: Vec<String> = blobs.iter().map(|b| b.0.clone()).collect();
    let out = dockfra_common::bundle::write_archive(Vec::new(), &a, &names, |d| {
        let data = blobs.iter().find(|b| b.0 == d).unwrap().1.clone();
        Ok((data.len() as u64, Box::new(std::io::Cursor::new(data)) as Box<dyn Read>))
    })
    .unwrap();
    std::fs::write(dst, out).unwrap();
}

#[test]
fn offline_bundles_verified_and_bad_ones_refused_without_changing_disk() {
    use dockfra_common::bundle::{self, Action, DesiredState, EntryKind, FileEntry, Manifest};
    let w = World::new("offline");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let agent = Agent::new(&w, "offline");
    agent.enroll(&url, &w.token("edge-offline")).ok();

    let good = w.path("good.tar");
    w.coord(&["bundle", "export", "edge-offline", "-o", good.to_str().unwrap()]).ok();
    agent.run_cmd(&["apply", good.to_str().unwrap()]).ok();
    assert_eq!(live_version(&w, "deploy-offline"), "v1");

    // Every refusal below must leave the deploy dir and the agent's state byte-for-byte alone.
    let watched = || {
        (
            snapshot(&w.path("deploy-offline")),
            snapshot(&agent.state.join("blobs")),
            std::fs::read(agent.state.join("state.json")).unwrap(),
        )
    };
    let refused = |file: &std::path::Path, expect: &str| {
        let before = watched();
        let r = agent.run_cmd(&["apply", file.to_str().unwrap()]);
        let text = format!("{}{}", r.stdout(), r.stderr());
        assert_ne!(r.code(), 0, "{} was accepted: {text}", file.display());
        assert!(text.contains(expect), "{}: expected {expect:?} in: {text}", file.display());
        assert_eq!(before, watched(), "{} changed the disk", file.display());
        assert!(!agent.state.join("journal.json").exists());
    };

    refused(&good, "replay refused");

    let fresh = w.path("fresh.tar");
    w.write("project/app/VERSION", "v2\n");
    w.coord(&["bundle", "export", "edge-offline", "-o", fresh.to_str().unwrap()]).ok();
    let t = w.path("tampered-blob.tar");
    rewrite_bundle(&fresh, &t, |_, blobs| {
        for b in blobs.iter_mut() {
            b.1[0] ^= 0x20;
        }
    });
    refused(&t, "does not match its content hash");
    let t = w.path("tampered-manifest.tar");
    rewrite_bundle(&fresh, &t, |a, _| {
        let m = &mut a.manifest.as_mut().unwrap().manifest;
        let i = m.windows(2).position(|x| x == b"v2").unwrap_or(20);
        m[i] ^= 1;
    });
    refused(&t, "bad signature on the manifest");
    let other = w.path("other-target.tar");
    w.coord(&["bundle", "export", "edge-pull", "-o", other.to_str().unwrap()]).ok();
    refused(&other, "bundle is for target \"edge-pull\"");
    let expired = w.path("expired.tar");
    w.coord(&["bundle", "export", "edge-offline", "-o", expired.to_str().unwrap(), "--expires-in", "1s"]).ok();
    std::thread::sleep(Duration::from_millis(2100));
    refused(&expired, "expired");

    // Hostile manifests, validly signed with the coordinator's own key: the agent's path and
    // limit checks are the last line of defence and must hold on their own.
    let key = dockfra_common::sign::SigningKey::from_pkcs8(&std::fs::read(w.coord_state.join("signing.key")).unwrap())
        .unwrap();
    let blob = b"x".to_vec();
    let digest = dockfra_common::sha256_hex(&blob);
    let file = |path: &str| FileEntry {
        path: path.into(),
        kind: EntryKind::File,
        mode: 0o644,
        size: 1,
        sha256: digest.clone(),
        link: None,
    };
    let link = |path: &str, to: &str| FileEntry {
        path: path.into(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        size: 0,
        sha256: String::new(),
        link: Some(to.into()),
    };
    let cases: Vec<(&str, Vec<FileEntry>, &str)> = vec![
        ("dotdot", vec![file("../../escape")], "`..` component"),
        ("absolute", vec![file("/etc/dockfra-evil")], "absolute path"),
        ("symlink-out", vec![link("data", "../../../../etc")], "symlink leaves the release"),
        ("through-symlink", vec![link("d", "x"), file("d/f")], "is a file or symlink"),
        ("setuid", vec![FileEntry { mode: 0o4755, ..file("suid") }], "special bits"),
        ("device", vec![FileEntry { mode: 0o20644, ..file("dev") }], "special bits"),
        ("oversize", vec![FileEntry { size: bundle::MAX_FILE_SIZE + 1, ..file("huge") }], "over a limit"),
        ("too-many", (0..=bundle::MAX_FILES).map(|i| file(&format!("f{i}"))).collect(), "over a limit"),
    ];
    for (i, (name, files, expect)) in cases.into_iter().enumerate() {
        let m = Manifest {
            format: bundle::FORMAT,
            target: "edge-offline".into(),
            app: "web".into(),
            version: name.into(),
            sequence: 1000 + i as u64,
            platform: dockfra_common::config::Platform::SshRaw,
            created_unix: 0,
            files,
            ssh_raw: None,
            docker_compose: None,
            swarm: None,
            podman: None,
            health: None,
            keep_releases: 5,
            os: None,
        };
        let bytes = m.canonical_bytes();
        let d = DesiredState {
            target: "edge-offline".into(),
            app: "web".into(),
            action: Action::Deploy,
            sequence: 1000 + i as u64,
            bundle_id: dockfra_common::sha256_hex(&bytes),
            deployment_id: format!("evil-{name}"),
            issued_unix: dockfra_common::now_unix(),
            expires_unix: dockfra_common::now_unix() + 600,
        };
        let a = bundle::sign_assignment(&key, &d, bytes);
        let out = bundle::write_archive(Vec::new(), &a, std::slice::from_ref(&digest), |_| {
            Ok((1, Box::new(std::io::Cursor::new(blob.clone())) as Box<dyn std::io::Read>))
        })
        .unwrap();
        let p = w.path(&format!("evil-{name}.tar"));
        std::fs::write(&p, out).unwrap();
        refused(&p, expect);
    }

    // Link and device entries in the archive itself.
    for (name, kind) in [("symlink", 2u8), ("hardlink", 1), ("chardev", 3)] {
        let mut tar = Vec::new();
        let mut h = [0u8; 512];
        let entry = format!("blobs/{digest}");
        h[..entry.len()].copy_from_slice(entry.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[124..135].copy_from_slice(b"00000000000");
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = b'0' + kind;
        h[157..168].copy_from_slice(b"/etc/passwd");
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        tar.extend_from_slice(&h);
        tar.extend_from_slice(&[0u8; 1024]);
        let p = w.path(&format!("entry-{name}.tar"));
        std::fs::write(&p, tar).unwrap();
        refused(&p, "only regular files are allowed");
    }

    // And the fresh, untampered bundle still applies after all that.
    agent.run_cmd(&["apply", fresh.to_str().unwrap()]).ok();
    assert_eq!(live_version(&w, "deploy-offline"), "v2");
}

#[test]
fn enrollment_and_authorization_refusals() {
    let w = World::new("authz");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());

    let token = w.token("edge-pull");
    // A token for another target is refused, and not burnt by the refusal.
    let wrong = Agent::new(&w, "wrong");
    let r = wrong.run_cmd(&["enroll", "--coordinator", &url, "--token", &token, "--target", "edge-push"]).fails();
    assert!(r.stderr().contains("is for target \"edge-pull\""), "{}", r.stderr());
    assert!(!wrong.state.join("identity/agent.json").exists());
    let a = Agent::new(&w, "a");
    a.enroll(&url, &token).ok();
    // Reused.
    let r = Agent::new(&w, "b").enroll(&url, &token).fails();
    assert!(r.stderr().contains("already used"), "{}", r.stderr());
    // Expired.
    let short = w.coord(&["token", "create", "edge-push", "--ttl", "1s"]).ok().stdout().trim().to_string();
    std::thread::sleep(Duration::from_millis(2100));
    let r = Agent::new(&w, "c").enroll(&url, &short).fails();
    assert!(r.stderr().contains("expired"), "{}", r.stderr());
    // A token whose CA pin does not match this coordinator.
    let mut forged = token.rsplit_once('.').unwrap().0.to_string();
    forged.push('.');
    forged.push_str(&"0".repeat(64));
    let r = Agent::new(&w, "d").enroll(&url, &forged).fails();
    assert!(r.stderr().contains("did not present a CA whose SHA-256"), "{}", r.stderr());
    // Unknown target.
    let r = w.coord(&["token", "create", "nope"]).fails();
    assert!(r.stderr().contains("no target \"nope\""), "{}", r.stderr());

    // A second, foreign coordinator and its agent.
    let w2 = World::new("authz-foreign");
    project(&w2, free_port(), "", "");
    w2.init("127.0.0.1:0");
    let _coord2 = w2.serve(&[]);
    let foreign = Agent::new(&w2, "foreign");
    foreign.enroll(&format!("https://{}", w2.addr()), &w2.token("edge-pull")).ok();

    // Need a bundle of edge-push to ask for.
    let push_port = free_port();
    project(&w, push_port, "", "");
    let mut pusher = Agent::new(&w, "pusher");
    pusher.listen = Some(format!("127.0.0.1:{push_port}"));
    pusher.enroll(&url, &w.token("edge-push")).ok();
    let _pp = pusher.start(&w);
    assert_eq!(deploy_json(&w, &["edge-push"]).0, 0);
    let hist = w.coord(&["history", "edge-push", "--output", "json"]).ok().json();
    let push_bundle = hist[0]["bundle_id"].as_str().unwrap().to_string();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use dockfra_common::identity;
        use dockfra_common::proto::{self, fleet_client::FleetClient};
        let channel = |agent: &Agent, ca_from: &std::path::Path| {
            let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
            let tls = identity::client_tls(
                &read(ca_from.join("identity/ca.pem")),
                &read(agent.state.join("identity/cert.pem")),
                &read(agent.state.join("identity/key.pem")),
                identity::COORDINATOR_DNS,
            );
            let url = url.clone();
            async move { identity::connect(&url, tls, Duration::from_secs(5)).await }
        };
        // Agent A (edge-pull) asks for edge-push's bundle.
        let mut c = FleetClient::new(channel(&a, &a.state).await.unwrap());
        let e = c
            .fetch_blobs(proto::FetchBlobsRequest { bundle_id: push_bundle.clone(), digests: vec![] })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("is not for target \"edge-pull\""), "{}", e.message());
        // A push agent serves only the coordinator: another agent's certificate, though issued
        // by the same CA, is refused.
        {
            let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
            let tls = identity::client_tls(
                &read(a.state.join("identity/ca.pem")),
                &read(a.state.join("identity/cert.pem")),
                &read(a.state.join("identity/key.pem")),
                &identity::agent_dns("edge-push"),
            );
            let ch = identity::connect(&format!("https://127.0.0.1:{push_port}"), tls, Duration::from_secs(5))
                .await
                .unwrap();
            let e = proto::agent_client::AgentClient::new(ch).status(proto::StatusRequest {}).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
            assert!(e.message().contains("only the coordinator"), "{}", e.message());
        }
        // A certificate from a foreign CA does not get past TLS.
        let r = channel(&foreign, &a.state).await;
        match r {
            Err(_) => {}
            Ok(ch) => {
                let e = FleetClient::new(ch).poll(proto::PollRequest::default()).await.unwrap_err();
                assert_ne!(e.code(), tonic::Code::Ok, "foreign agent got in");
            }
        }
        // Revocation takes effect on the next call.
        let r = std::process::Command::new(bin("dockfra-coord"))
            .arg("--state-dir")
            .arg(&w.coord_state)
            .args(["agents", "revoke", "edge-pull"])
            .output()
            .unwrap();
        assert!(r.status.success());
        let e = c.poll(proto::PollRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("revoked"), "{}", e.message());
        // A revoked push agent is not dialled at all.
        let r = std::process::Command::new(bin("dockfra-coord"))
            .arg("--state-dir")
            .arg(&w.coord_state)
            .args(["agents", "revoke", "edge-push"])
            .output()
            .unwrap();
        assert!(r.status.success());
        let r = std::process::Command::new(bin("dockfra-coord"))
            .arg("--state-dir")
            .arg(&w.coord_state)
            .args(["deploy", "edge-push", "--output", "json"])
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(3));
        let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        assert!(v["message"].as_str().unwrap().contains("revoked: not dialling"), "{v}");
        // An agent certificate cannot use the admin API.
        let mut admin = proto::admin_client::AdminClient::new(channel(&pusher, &pusher.state).await.unwrap());
        let e =
            admin.create_token(proto::CreateTokenRequest { target: "edge-push".into(), ttl_ms: 0 }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
    });
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
fn agents_renew_their_short_lived_certificates() {
    let w = World::new("renew");
    let port = free_port();
    project(&w, port, "", "");
    w.coord(&["init", "--listen", "127.0.0.1:0", "--agent-cert-ttl", "12s"]).ok();
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let mut push = Agent::new(&w, "push");
    push.listen = Some(format!("127.0.0.1:{port}"));
    push.enroll(&url, &w.token("edge-push")).ok();
    let pull = Agent::new(&w, "pull");
    pull.enroll(&url, &w.token("edge-pull")).ok();
    let serial = |a: &Agent| {
        let pem = std::fs::read_to_string(a.state.join("identity/cert.pem")).unwrap();
        dockfra_common::identity::cert_info(&dockfra_common::identity::first_cert_der(&pem).unwrap())
            .unwrap()
            .serial_hex
    };
    let (push0, pull0) = (serial(&push), serial(&pull));
    let old_identity = w.path("old-identity");
    std::fs::create_dir_all(old_identity.join("identity")).unwrap();
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::copy(pull.state.join("identity").join(f), old_identity.join("identity").join(f)).unwrap();
    }
    let _p1 = push.start(&w);
    let _p2 = pull.start(&w);
    wait_until("both agents to renew", Duration::from_secs(40), || serial(&push) != push0 && serial(&pull) != pull0);
    // The coordinator knows the new serials, and both agents still work with them.
    let agents = w.coord(&["agents", "--output", "json"]).ok().json();
    let known: Vec<&str> = agents.as_array().unwrap().iter().map(|a| a["serial"].as_str().unwrap()).collect();
    assert!(known.contains(&serial(&push).as_str()) && known.contains(&serial(&pull).as_str()), "{agents}");
    assert_eq!(deploy_json(&w, &["edge-push"]).0, 0);
    assert_eq!(deploy_json(&w, &["edge-pull", "--wait", "--timeout", "60s"]).0, 0);

    // Once the agent has used its new certificate, a copy of the old one is dead.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use dockfra_common::{identity, proto};
        let read = |f: &str| std::fs::read_to_string(old_identity.join("identity").join(f)).unwrap();
        let tls = identity::client_tls(&read("ca.pem"), &read("cert.pem"), &read("key.pem"), identity::COORDINATOR_DNS);
        let ch = identity::connect(&url, tls, Duration::from_secs(5)).await.unwrap();
        let e = proto::fleet_client::FleetClient::new(ch).poll(proto::PollRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("revoked or superseded"), "{}", e.message());
    });
}

#[test]
fn disk_full_while_materializing_discards_the_release() {
    if !is_root() && skip_or_fail("root, to mount a small tmpfs") {
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

#[test]
fn pull_agent_behind_nat_in_a_network_namespace() {
    if !is_root() && skip_or_fail("root, for network namespaces") {
        return;
    }
    if runner_missing("ip") || runner_missing("iptables") {
        skip_or_fail("ip and iptables");
        return;
    }
    let id = std::process::id() % 200 + 20;
    let (nsc, nsa) = (format!("dkfc{id}"), format!("dkfa{id}"));
    let (ipc, ipa) = (format!("10.231.{id}.1"), format!("10.231.{id}.2"));
    struct Netns(Vec<String>);
    impl Drop for Netns {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = std::process::Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }
    let sh = |cmd: &str| {
        let s = std::process::Command::new("sh").args(["-c", cmd]).status().unwrap();
        assert!(s.success(), "{cmd}");
    };
    let _ns = Netns(vec![nsc.clone(), nsa.clone()]);
    sh(&format!("ip netns add {nsc} && ip netns add {nsa}"));
    sh(&format!("ip link add vc{id} netns {nsc} type veth peer name va{id} netns {nsa}"));
    sh(&format!(
        "ip -n {nsc} addr add {ipc}/30 dev vc{id} && ip -n {nsc} link set vc{id} up && ip -n {nsc} link set lo up"
    ));
    sh(&format!(
        "ip -n {nsa} addr add {ipa}/30 dev va{id} && ip -n {nsa} link set va{id} up && ip -n {nsa} link set lo up"
    ));
    // The agent's side accepts no inbound connection: like a device behind NAT.
    sh(&format!("ip netns exec {nsa} iptables -A INPUT -p tcp --syn -j DROP"));

    let mut w = World::new("netns");
    w.coord_prefix = vec!["ip".into(), "netns".into(), "exec".into(), nsc.clone()];
    project(&w, free_port(), "", "");
    w.init(&format!("{ipc}:0"));
    let _coord = w.serve(&[]);
    let mut agent = Agent::new(&w, "nat");
    agent.prefix = vec!["ip".into(), "netns".into(), "exec".into(), nsa.clone()];
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

/// What a package sets up: `--config FILE` with the state dir and coordinator, enrollment
/// with just a token, and a clear refusal (exit 78, no restart loop) before enrollment.
#[test]
fn agent_config_file_and_the_not_enrolled_refusal() {
    let w = World::new("agentcfg");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let state = w.path("var-lib-dockfra");
    let cfg = w.path("agent.yaml");
    w.write(
        "agent.yaml",
        &format!("# written by a package\nstate_dir: {}\ncoordinator: https://{}\n", state.display(), w.addr()),
    );
    let agent = |args: &[&str]| {
        let mut c = std::process::Command::new(bin("dockfra-agent"));
        c.arg("--config").arg(&cfg).args(args);
        run(c)
    };

    let r = agent(&["run"]);
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(r.stderr().contains("not enrolled") && r.stderr().contains("dockfra-agent --config "), "{}", r.stderr());
    assert_eq!(agent(&["status"]).code(), 78);
    assert!(!state.join("identity").exists(), "a refusal writes nothing");

    // As a package sets it up: the state dir belongs to the service user, root enrolls.
    if is_root() {
        std::fs::create_dir_all(&state).unwrap();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    }
    agent(&["enroll", "--token", &w.token("edge-pull")]).ok();
    assert!(state.join("identity/agent.json").is_file(), "enrolled into the config's state_dir");
    if is_root() {
        use std::os::unix::fs::MetadataExt as _;
        for f in ["identity", "identity/agent.json", "identity/key.pem"] {
            let m = std::fs::metadata(state.join(f)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{f} belongs to the state dir's owner");
        }
    }
    let st = agent(&["status", "--output", "json"]).ok().json();
    assert_eq!(st["target"], "edge-pull");

    w.write("agent.yaml", "state_dir: /tmp/x\nlisten_port: 1\n");
    let r = agent(&["status"]);
    assert_eq!(r.code(), 78, "a bad config is the operator's to fix: no restart loop");
    assert!(r.stderr().contains("agent.yaml") && r.stderr().contains("listen_port"), "{}", r.stderr());
    let r = std::process::Command::new(bin("dockfra-agent"))
        .args(["--config", "/nonexistent/agent.yaml", "status"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&r.stderr).contains("cannot read /nonexistent/agent.yaml"));
}

/// One static agent from `cross/build`, run (under qemu-user where it is not x86_64): it
/// enrolls with this x86_64 coordinator, takes two pull deploys and switches `current`, and
/// the coordinator sees its architecture.
fn static_agent_enrolls_deploys_and_switches_current(triple: &str, qemu: &[&str], arch: &str) {
    let binary = workspace().join(format!("target/cross/dist/dockfra-agent-{triple}"));
    let missing_qemu = qemu.first().is_some_and(|q| runner_missing(q));
    if (!binary.is_file() || missing_qemu)
        && skip_or_fail(&format!("the static agent for {triple} (cross/build) and qemu-user-static"))
    {
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
    assert_eq!(row["facts"]["arch"], arch, "the coordinator sees the agent's architecture: {row}");
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
    let have = docker_ready() && docker(&["image", "inspect", SYSTEMD_PODMAN]).0 && !runner_missing("cargo-deb");
    if !have && skip_or_fail("cargo-deb, Docker and the systemd+podman image (run scripts/engines and .ci/run)") {
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
/// parsing); macOS, brew and launchd themselves are not here.
#[test]
fn homebrew_formula_and_launchd_plists_check() {
    if (runner_missing("ruby") || runner_missing("plistutil"))
        && skip_or_fail("ruby and plistutil (apt-get install ruby libplist-utils; .ci/run does)")
    {
        return;
    }
    let mut c = std::process::Command::new(workspace().join("packaging/check-brew"));
    c.arg(bin("dockfra-agent"));
    let r = run(c);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(r.stdout().contains("check-brew: all checks passed"), "{}", r.stdout());
}

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

/// `dockfra-coord agent install` against a real sshd: a Debian 12 container booting systemd,
/// in a network namespace of its own (the coordinator joins it with nsenter). A wrong host
/// key fingerprint is refused before anything is uploaded; the right one installs the .deb,
/// enrolls, starts the hardened service, verifies with deploy-test, and a deploy lands.
#[test]
fn agent_install_over_ssh_into_a_systemd_host() {
    let have = docker_ready()
        && docker(&["image", "inspect", SYSTEMD_PODMAN]).0
        && !runner_missing("cargo-deb")
        && !runner_missing("ssh")
        && !runner_missing("nsenter");
    if !have && skip_or_fail("cargo-deb, ssh, nsenter, Docker and the systemd+podman image (run .ci/run)") {
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

fn runner_missing(program: &str) -> bool {
    !std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program} >/dev/null")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn config_errors_name_file_target_and_key_and_change_nothing() {
    let w = World::new("config");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    // Bad YAML keys stop `serve` at start-up, naming file, target and key.
    let good = std::fs::read_to_string(w.path("project/deploy-targets.yaml")).unwrap();
    w.write("project/deploy-targets.yaml", &good.replace("    os: linux\n", "    os: linux\n    colour: blue\n"));
    let r = w.coord(&["serve", "--root", w.project.to_str().unwrap()]).fails();
    let e = r.stderr();
    assert!(e.contains("deploy-targets.yaml") && e.contains("edge-push") && e.contains("colour"), "{e}");
    w.write("project/deploy-targets.yaml", &good.replace("platform: ssh_raw\n    os", "platform: openshift\n    os"));
    let e = w.coord(&["serve", "--root", w.project.to_str().unwrap()]).fails().stderr();
    assert!(e.contains("openshift") && e.contains("platform"), "{e}");

    // A running coordinator re-reads the file per deploy: a broken edit is refused, nothing queued.
    w.write("project/deploy-targets.yaml", &good);
    let _coord = w.serve(&[]);
    w.write(
        "project/deploy-targets.yaml",
        &good.replace("retries: 1\n      interval: 100ms\n      timeout: 2s", "retries: many"),
    );
    let e = w.coord(&["deploy", "edge-push"]).fails().stderr();
    assert!(e.contains("edge-push") && e.contains("health.retries"), "{e}");
    w.write("project/deploy-targets.yaml", &good);
    assert_eq!(w.coord(&["history", "--output", "json"]).ok().json(), serde_json::json!([]));

    // `config`: the compose project resolved with .env, process env and the target's env.
    w.write("project/app/compose.yaml", "services:\n  web:\n    image: \"busybox:${TAG:-latest}\"\n    environment:\n      - DB=${DB_HOST:?set DB_HOST in .env}\n      - GREETING=$${NOT_INTERPOLATED}\n");
    let e = w.coord(&["config", "--root", w.project.to_str().unwrap()]).fails().stderr();
    assert!(e.contains("DB_HOST") && e.contains("set DB_HOST in .env"), "{e}");
    w.write("project/app/.env", "DB_HOST=db.internal\nTAG=1.36\n");
    let out = w.coord(&["config", "--root", w.project.to_str().unwrap()]).ok().stdout();
    assert!(
        out.contains("busybox:1.36") && out.contains("db.internal") && out.contains("${NOT_INTERPOLATED}"),
        "{out}"
    );
    assert!(out.starts_with("name:"), "{out}");
}

#[test]
fn the_seed_fleet_loads_and_lists_without_dialling() {
    let w = World::new("seed");
    w.init("127.0.0.1:0");
    // The repository's own deploy-targets.yaml, byte for byte (the seed's six targets, on
    // private addresses that must never be dialled).
    std::fs::copy(workspace().join("deploy-targets.yaml"), w.project.join("deploy-targets.yaml")).unwrap();
    assert_eq!(
        std::fs::read(workspace().join("deploy-targets.yaml")).unwrap(),
        std::fs::read(workspace().join("../shared/seeds/deploy-targets.example.yaml")).unwrap(),
        "the top-level deploy-targets.yaml starts as the seed's example"
    );
    let _coord = w.serve(&[]);
    let t = w.coord(&["targets", "--output", "json"]).ok().json();
    let ids: Vec<&str> = t.as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["prod-vps", "staging-rhel", "prod-k8s", "edge-rpi3", "swarm-cluster", "nomad-cluster"]);
    assert!(t.as_array().unwrap().iter().all(|x| x["enrolled"] == false));
    let table = w.coord(&["status"]).ok().stdout();
    assert!(table.contains("edge-rpi3") && table.contains("unknown"), "{table}");
    // Platforms without a driver yet are refused clearly, before anything is queued or dialled.
    let e = w.coord(&["deploy", "prod-k8s"]).fails().stderr();
    assert!(e.contains("platform kubernetes is not supported by this build yet"), "{e}");
    // A docker_compose target needs a compose file in the app.
    let e = w.coord(&["deploy", "prod-vps"]).fails().stderr();
    assert!(e.contains("needs a compose.yaml or docker-compose.yml"), "{e}");
    assert_eq!(w.coord(&["history", "--output", "json"]).ok().json(), serde_json::json!([]));
}

/// `docker info` works and the local test image exists (`scripts/engines` makes both).
fn docker_ready() -> bool {
    let ok = |args: &[&str]| {
        std::process::Command::new("docker").args(args).output().map(|o| o.status.success()).unwrap_or(false)
    };
    ok(&["info"]) && ok(&["compose", "version"]) && ok(&["image", "inspect", "dockfra-busybox:test"])
}

/// GET http://127.0.0.1:PORT/ with a plain socket; the body, or "" when nothing answers.
fn http_body(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string()).unwrap_or_default()
}

/// The container platforms' common proof, once v1 is live: v2 deploys, `rollback` brings v1
/// back, and a v3 whose healthcheck fails is rolled back by the agent itself. `extra` goes to
/// every coordinator command (`--wait` for pull agents); `body` reads the app's answer.
fn v2_rollback_and_failing_v3(w: &World, target: &str, extra: &[&str], body: impl Fn() -> String, v3_says: &str) {
    let run = |verb: &str| w.coord_json(&[&[verb, target, "--output", "json"][..], extra].concat());
    w.write("project/app/.env", "APP_VERSION=v2\n");
    let (code, v) = run("deploy");
    assert_eq!(code, 0, "{v}");
    assert_eq!(body(), "hello v2");

    let (code, v) = run("rollback");
    assert_eq!(code, 0, "{v}");
    assert_eq!(body(), "hello v1", "v1 answers again after rollback");

    w.write("project/app/.env", "APP_VERSION=v3\nHEALTH_PATH=/missing\n");
    let (code, v) = run("deploy");
    assert_eq!(code, 3, "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains(v3_says) && msg.contains("rolled back to"), "{msg}");
    assert_eq!(body(), "hello v1", "the healthy release is back");
}

#[test]
fn docker_compose_deploy_update_rollback_and_failed_health_on_a_real_engine() {
    if !docker_ready() && skip_or_fail("a Docker engine with compose v2 and dockfra-busybox:test (run scripts/engines)")
    {
        return;
    }
    let w = World::new("compose");
    let (agent_port, web_port) = (free_port(), free_port());
    let project_name = format!("dkfe2e{}", std::process::id());
    let _cleanup = DockerCleanup { compose_projects: vec![project_name.clone()], stacks: vec![], images: vec![] };
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  vps:
    host: 127.0.0.1
    platform: docker_compose
    agent: {{ mode: push, port: {agent_port} }}
    config:
      compose_project: {project_name}
      pull_policy: never
      restart_policy: "no"
    env:
      WEB_PORT: "{web_port}"
    health:
      retries: 5
      interval: 500ms
      checks:
        - http: {{ url: "http://127.0.0.1:{web_port}/", status: 200, body: hello }}
"#
        ),
    );
    // Two services: `web` serves HTTP and has a healthcheck; `worker` starts only once web is
    // healthy. Versions come from .env, interpolated by the coordinator.
    w.write("project/app/compose.yaml", TWO_SERVICES);
    w.write("project/app/.env", "APP_VERSION=v1\n");
    let (_coord, agent, _a) = w.start_push("vps", "vps", agent_port);

    let deploy = |args: &[&str]| w.coord_json(args);
    let (code, v) = deploy(&["deploy", "vps", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(http_body(web_port), "hello v1");
    // The resolved compose file travelled in the bundle; `$` stays escaped for the agent.
    let rendered = std::fs::read_to_string(agent.state.join("apps/shop/current/.dockfra/compose.yaml")).unwrap();
    assert!(rendered.contains("hello v1") && rendered.contains(&format!("127.0.0.1:{web_port}:8080")), "{rendered}");
    let running = std::process::Command::new("docker")
        .args([
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={project_name}"),
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .output()
        .unwrap();
    let running = String::from_utf8_lossy(&running.stdout).to_string();
    assert!(running.contains("web-1") && running.contains("(healthy)") && running.contains("worker-1"), "{running}");

    // deploy-test reports the engine as its API describes it (negotiated version, swarm state).
    let dt = w.coord(&["deploy-test", "vps", "--output", "json"]).ok().json();
    let runtimes = dt["facts"]["runtimes"].as_array().unwrap().clone();
    let engine = runtimes.iter().find(|r| r["name"] == "docker engine").unwrap_or_else(|| panic!("{dt}"));
    let line = engine["version"].as_str().unwrap();
    assert!(line.contains("(API 1.") && line.contains("swarm ") && !line.starts_with("unreachable"), "{line}");
    assert!(runtimes.iter().any(|r| r["name"] == "docker compose"), "{dt}");
    let table = w.coord(&["deploy-test", "vps"]).ok().stdout();
    assert!(table.contains("runtime:    docker engine"), "{table}");

    // v3's healthcheck fails: compose reports the container unhealthy, the agent rolls back.
    v2_rollback_and_failing_v3(&w, "vps", &[], || http_body(web_port), "unhealthy");
    let st = w.coord(&["status", "vps", "--output", "json"]).ok().json();
    assert_eq!(st["last_deploy"]["status"], "failed");
    assert_eq!(st["health"], "healthy");

    // Health is read live from the engine: a container stopped behind our back shows.
    assert_eq!(agent.status()["apps"][0]["health"], "healthy");
    let web = format!("{project_name}-web-1");
    assert!(std::process::Command::new("docker").args(["stop", "-t", "1", &web]).output().unwrap().status.success());
    let health = agent.status()["apps"][0]["health"].as_str().unwrap().to_string();
    assert!(health.starts_with("unhealthy") && health.contains(&web), "{health}");
}

#[test]
fn images_carried_in_the_bundle_reach_an_engine_that_lacks_them() {
    if !docker_ready() && skip_or_fail("a Docker engine with compose v2 and dockfra-busybox:test (run scripts/engines)")
    {
        return;
    }
    let w = World::new("images");
    let pid = std::process::id();
    let (agent_port, web_port) = (free_port(), free_port());
    let project_name = format!("dkfimg{pid}");
    let image = format!("dkf-e2e-ship-{pid}:v1");
    let _cleanup =
        DockerCleanup { compose_projects: vec![project_name.clone()], stacks: vec![], images: vec![image.clone()] };
    // An image with an id of its own (not shared with the base image).
    let image_id = make_image(&image);

    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  airgap:
    host: 127.0.0.1
    platform: docker_compose
    agent: {{ mode: push, port: {agent_port} }}
    config: {{ compose_project: {project_name}, pull_policy: never, images: bundle }}
    env: {{ IMAGE: "{image}", WEB_PORT: "{web_port}" }}
"#
        ),
    );
    w.write(
        "project/app/compose.yaml",
        r#"services:
  web:
    image: ${IMAGE}
    init: true
    command: ["sh", "-c", "mkdir -p /www && echo 'hello ${APP_VERSION}' > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: ["127.0.0.1:${WEB_PORT}:8080"]
"#,
    );
    w.write("project/app/.env", "APP_VERSION=offline\n");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let mut agent = Agent::new(&w, "airgap");
    agent.listen = Some(format!("127.0.0.1:{agent_port}"));
    agent.enroll(&format!("https://{}", w.addr()), &w.token("airgap")).ok();

    // Offline: the bundle carries the image; then the engine loses it entirely.
    let usb = w.path("airgap.tar");
    w.coord(&["bundle", "export", "airgap", "-o", usb.to_str().unwrap()]).ok();
    let bundle_size = std::fs::metadata(&usb).unwrap().len();
    assert!(bundle_size > 1 << 20, "the image travels in the bundle ({bundle_size} bytes)");
    let (ok, _, err) = docker(&["rmi", &image]);
    assert!(ok, "{err}");
    assert!(!docker(&["image", "inspect", &image_id]).0, "the engine must not have the image now");
    let r = agent.run_cmd(&["apply", usb.to_str().unwrap()]);
    assert_eq!(r.code(), 0, "{}{}", r.stdout(), r.stderr());
    assert!(docker(&["image", "inspect", &image_id]).0, "the agent loaded the image into the engine");
    assert_eq!(http_body(web_port), "hello offline");

    // Online, the image is already in the agent's store and engine: it does not travel again.
    let _a = agent.start(&w);
    w.write("project/app/.env", "APP_VERSION=online\n");
    let r = w.coord(&["deploy", "airgap", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    let bytes = r.json()["bytes_received"].as_u64().unwrap();
    assert!(bytes < 64 * 1024, "only the changed compose file should travel, got {bytes} bytes");
    assert_eq!(http_body(web_port), "hello online");
}

#[test]
fn build_services_are_built_on_the_coordinator_and_carried() {
    if !docker_ready() && skip_or_fail("a Docker engine with compose v2 and dockfra-busybox:test (run scripts/engines)")
    {
        return;
    }
    let w = World::new("build");
    let (agent_port, web_port) = (free_port(), free_port());
    let project_name = format!("dkfbuild{}", std::process::id());
    struct Built(String);
    impl Drop for Built {
        fn drop(&mut self) {
            let (_, ids, _) = docker(&["images", "-q", "--filter", &format!("reference={}-web", self.0)]);
            for id in ids.split_whitespace() {
                docker(&["rmi", "-f", id]);
            }
        }
    }
    let _cleanup = DockerCleanup { compose_projects: vec![project_name.clone()], stacks: vec![], images: vec![] };
    let _built = Built(project_name.clone());
    let targets = |extra: &str| {
        format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  vps:
    host: 127.0.0.1
    platform: docker_compose
    agent: {{ mode: push, port: {agent_port} }}
    config: {{ compose_project: {project_name}, pull_policy: never{extra} }}
    env: {{ WEB_PORT: "{web_port}" }}
    keep_releases: 1
"#
        )
    };
    w.write("project/deploy-targets.yaml", &targets(""));
    w.write(
        "project/app/compose.yaml",
        r#"services:
  web:
    build: { context: ./web, args: { GREETING: built } }
    init: true
    ports: ["127.0.0.1:${WEB_PORT}:8080"]
"#,
    );
    w.write(
        "project/app/web/Dockerfile",
        "FROM dockfra-busybox:test\nARG GREETING\nCOPY index.html /www/index.html\nRUN sed -i \"s/^/$GREETING /\" /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    );
    w.write("project/app/web/index.html", "v1\n");
    let (_coord, agent, _a) = w.start_push("vps", "vps", agent_port);

    // Nothing would carry a built image to the target: refused, naming service and fix.
    let r = w.coord(&["deploy", "vps"]).fails();
    let err = r.stderr();
    assert!(err.contains("service \"web\"") && err.contains("images: bundle"), "{err}");
    assert!(agent.status()["apps"].as_array().unwrap().is_empty(), "nothing was deployed");

    w.write("project/deploy-targets.yaml", &targets(", images: bundle"));
    let r = w.coord(&["deploy", "vps", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(http_body(web_port), "built v1");
    let file = agent.state.join("apps/shop/current/.dockfra/compose.yaml");
    let v1: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let image_v1 = v1["services"]["web"]["image"].as_str().unwrap().to_string();
    assert!(image_v1.starts_with(&format!("{project_name}-web:b-")) && v1["services"]["web"].get("build").is_none());

    // New content, new image (and tag); the old release keeps naming its own.
    w.write("project/app/web/index.html", "v2\n");
    let r = w.coord(&["deploy", "vps", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(http_body(web_port), "built v2");
    let v2: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_ne!(v2["services"]["web"]["image"].as_str().unwrap(), image_v1);
    let r = w.coord(&["rollback", "vps", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(http_body(web_port), "built v1");

    // A build that fails names the target and the service; nothing is queued.
    w.write("project/app/web/Dockerfile", "FROM dockfra-busybox:test\nRUN exit 3\n");
    let err = w.coord(&["deploy", "vps"]).fails().stderr();
    assert!(err.contains("target \"vps\": service \"web\"") && err.contains("docker build"), "{err}");
    assert_eq!(http_body(web_port), "built v1");

    // v3 while v1 is current: with keep_releases 1, v2's release is pruned and so is its image;
    // v1's (the release to roll back to) and v3's stay.
    let image_v2 = v2["services"]["web"]["image"].as_str().unwrap().to_string();
    w.write(
        "project/app/web/Dockerfile",
        "FROM dockfra-busybox:test\nCOPY index.html /www/index.html\nCMD [\"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n",
    );
    w.write("project/app/web/index.html", "v3\n");
    let r = w.coord(&["deploy", "vps", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(http_body(web_port), "v3");
    assert!(!docker(&["image", "inspect", &image_v2]).0, "v2's image went with its release");
    assert!(docker(&["image", "inspect", &image_v1]).0, "the previous release's image stays");
    let r = w.coord(&["rollback", "vps", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert_eq!(http_body(web_port), "built v1");
}

#[test]
fn images_pushed_to_a_registry_are_pulled_by_the_agent() {
    if !docker_ready() && skip_or_fail("a Docker engine with compose v2 and dockfra-busybox:test (run scripts/engines)")
    {
        return;
    }
    if runner_missing("docker-registry") && skip_or_fail("Debian's docker-registry (run scripts/engines)") {
        return;
    }
    let w = World::new("registry");
    let pid = std::process::id();
    let (reg_port, web_port) = (free_port(), free_port());
    let registry = format!("127.0.0.1:{reg_port}");
    let project_name = format!("dkfreg{pid}");
    let image = format!("dkf-e2e-reg-{pid}:v1");
    let pushed = format!("{registry}/{image}");
    let _cleanup = DockerCleanup {
        compose_projects: vec![project_name.clone()],
        stacks: vec![],
        images: vec![image.clone(), pushed.clone()],
    };

    // A registry of our own on loopback (Docker trusts 127.0.0.0/8 without TLS).
    w.write(
        "registry.yml",
        &format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {registry}\n",
            w.path("registry-data").display()
        ),
    );
    let _registry = Proc {
        child: std::process::Command::new("docker-registry")
            .args(["serve", w.path("registry.yml").to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(w.path("registry.log")).unwrap())
            .spawn()
            .unwrap(),
        log: w.path("registry.log"),
    };
    wait_until("the registry", Duration::from_secs(20), || std::net::TcpStream::connect(&registry).is_ok());

    let image_id = make_image(&image);

    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  fleet:
    platform: docker_compose
    agent: {{ mode: pull, poll_interval: 1h }}
    config: {{ compose_project: {project_name}, pull_policy: missing, registry: "{registry}" }}
    env: {{ IMAGE: "{image}", WEB_PORT: "{web_port}" }}
"#
        ),
    );
    w.write(
        "project/app/compose.yaml",
        r#"services:
  web:
    image: ${IMAGE}
    init: true
    command: ["sh", "-c", "mkdir -p /www && echo 'hello from the registry' > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: ["127.0.0.1:${WEB_PORT}:8080"]
"#,
    );
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let agent = Agent::new(&w, "fleet");
    agent.enroll(&format!("https://{}", w.addr()), &w.token("fleet")).ok();
    let proc = agent.start(&w);
    wait_until("the agent's first poll", Duration::from_secs(10), || proc.log().contains("dockfra-agent running"));
    std::thread::sleep(Duration::from_millis(500));

    // The coordinator pushes the image and names it by the registry in the compose file …
    let r = w.coord(&["deploy", "fleet"]).ok();
    assert!(r.stdout().contains("queued"), "{}", r.stdout());
    // … then the engine loses every copy, so only a pull from the registry can bring it back.
    assert!(docker(&["rmi", &image, &pushed]).0);
    assert!(!docker(&["image", "inspect", &image_id]).0);
    agent.run_cmd(&["poll-now"]).ok();
    wait_until("the app pulled from the registry to answer", Duration::from_secs(60), || {
        http_body(web_port) == "hello from the registry"
    });
    let (_, used, _) = docker(&["inspect", "--format", "{{.Config.Image}}", &format!("{project_name}-web-1")]);
    assert_eq!(used, pushed, "the container runs the registry's reference");
    assert!(docker(&["image", "inspect", &image_id]).0, "the engine pulled the same image back");
}

fn swarm_active() -> bool {
    std::process::Command::new("docker")
        .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "active")
        .unwrap_or(false)
}

#[test]
fn swarm_stack_deploy_update_rollback_and_failed_health_on_a_real_swarm() {
    if !(docker_ready() && swarm_active()) && skip_or_fail("a Docker engine in swarm mode (run scripts/engines)") {
        return;
    }
    let w = World::new("swarm");
    let (agent_port, web_port) = (free_port(), free_port());
    let stack = format!("dkfsw{}", std::process::id());
    let _cleanup = DockerCleanup { compose_projects: vec![], stacks: vec![stack.clone()], images: vec![] };
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  swarm-cluster:
    host: 127.0.0.1
    platform: swarm
    agent: {{ mode: push, port: {agent_port} }}
    config: {{ stack_name: {stack}, replicas: 1, update_parallelism: 1, update_delay: 1s, images: bundle }}
    env: {{ WEB_PORT: "{web_port}" }}
    health:
      retries: 10
      interval: 500ms
      checks:
        - http: {{ url: "http://127.0.0.1:{web_port}/", status: 200, body: hello }}
"#
        ),
    );
    // No IPVS here: host-mode ports and dnsrr (RUNTIMES.md). busybox as PID 1 ignores SIGTERM:
    // init and a short grace period keep stop-first updates quick.
    w.write(
        "project/app/compose.yaml",
        r#"services:
  web:
    image: dockfra-busybox:test
    init: true
    stop_grace_period: 1s
    command: ["sh", "-c", "mkdir -p /www && echo 'hello ${APP_VERSION}' > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
      - target: 8080
        published: "${WEB_PORT}"
        protocol: tcp
        mode: host
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080${HEALTH_PATH:-/}"]
      interval: 1s
      timeout: 2s
      retries: 2
    deploy:
      endpoint_mode: dnsrr
  worker:
    image: dockfra-busybox:test
    init: true
    stop_grace_period: 1s
    command: ["sh", "-c", "while true; do wget -q -O- http://web:8080/ > /dev/null; sleep 1; done"]
    depends_on:
      web: { condition: service_healthy }
    deploy:
      endpoint_mode: dnsrr
"#,
    );
    w.write("project/app/.env", "APP_VERSION=v1\n");
    let (_coord, agent, _a) = w.start_push("swarm", "swarm-cluster", agent_port);
    let deploy = |args: &[&str]| w.coord_json(args);

    let (code, v) = deploy(&["deploy", "swarm-cluster", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(http_body(web_port), "hello v1");
    let bytes = v["bytes_received"].as_u64().unwrap();
    assert!(bytes > 1 << 20, "images: bundle carries the image to the manager ({bytes} bytes)");
    // The seed's keys reached the stack.
    let o = std::process::Command::new("docker")
        .args([
            "service",
            "inspect",
            &format!("{stack}_web"),
            "--format",
            "{{.Spec.Mode.Replicated.Replicas}} {{.Spec.UpdateConfig.Parallelism}} {{.Spec.UpdateConfig.Delay}}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1 1 1s");

    // v3's healthcheck fails: its task fails, the agent redeploys the previous stack file.
    v2_rollback_and_failing_v3(&w, "swarm-cluster", &[], || http_body(web_port), "");

    // Between deploys, health is read live from the task states: a web task that cannot be
    // placed shows, naming the service and why.
    assert_eq!(agent.status()["apps"][0]["health"], "healthy");
    let web = format!("{stack}_web");
    let (ok, _, err) =
        docker(&["service", "update", "--detach", "--constraint-add", "node.labels.dkfnowhere==1", &web]);
    assert!(ok, "{err}");
    let mut health = String::new();
    wait_until("the unplaceable task to show in status", Duration::from_secs(60), || {
        health = agent.status()["apps"][0]["health"].as_str().unwrap_or_default().to_string();
        health.starts_with("unhealthy") && health.contains(&format!("{web} 0/1 running"))
    });
}

fn podman_ready() -> bool {
    let ok = |prog: &str, args: &[&str]| {
        std::process::Command::new(prog).args(args).output().map(|o| o.status.success()).unwrap_or(false)
    };
    ok("podman", &["info"]) && ok("podman-compose", &["version"])
}

/// Removes what a Podman test made on this host's Podman.
struct PodmanCleanup {
    project: String,
    images: Vec<String>,
}

impl Drop for PodmanCleanup {
    fn drop(&mut self) {
        let podman = |args: &[&str]| std::process::Command::new("podman").args(args).output().ok();
        let label = format!("label=com.docker.compose.project={}", self.project);
        if let Some(o) = podman(&["ps", "-a", "-q", "--filter", &label]) {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                podman(&["rm", "-f", "-t", "0", id]);
            }
        }
        podman(&["network", "rm", "-f", &format!("{}_default", self.project)]);
        for i in &self.images {
            podman(&["rmi", "-f", i]);
        }
    }
}

/// The two-service app of the container platform tests: `web` serves HTTP and has a
/// healthcheck (its path from HEALTH_PATH), `worker` waits for it and polls it by name.
const TWO_SERVICES: &str = r#"services:
  web:
    image: ${IMAGE:-dockfra-busybox:test}
    init: true
    command: ["sh", "-c", "mkdir -p /www && echo 'hello ${APP_VERSION}' > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: ["127.0.0.1:${WEB_PORT}:8080"]
    restart: ${RESTART:-no}
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1:8080${HEALTH_PATH:-/}"]
      interval: 1s
      timeout: 2s
      retries: 3
  worker:
    image: ${IMAGE:-dockfra-busybox:test}
    init: true
    command: ["sh", "-c", "while true; do wget -q -O- http://web:8080/ > /dev/null; sleep 1; done"]
    depends_on:
      web: { condition: service_healthy }
"#;

#[test]
fn podman_compose_deploy_update_rollback_and_failed_health_on_a_real_engine() {
    if !(docker_ready() && podman_ready())
        && skip_or_fail("Podman with podman-compose, and Docker for the coordinator's images (run scripts/engines)")
    {
        return;
    }
    let w = World::new("podman");
    let pid = std::process::id();
    let (agent_port, web_port) = (free_port(), free_port());
    let project = format!("dkfpod{pid}");
    // An image this Podman has never seen: it travels in the bundle and the agent loads it.
    let image = format!("dkf-e2e-pod-{pid}:v1");
    let _docker = DockerCleanup { compose_projects: vec![], stacks: vec![], images: vec![image.clone()] };
    let _podman = PodmanCleanup { project: project.clone(), images: vec![format!("localhost/{image}")] };
    let image_id = make_image(&image);
    let podman_has = |id: &str| {
        std::process::Command::new("podman").args(["image", "exists", id]).status().map(|s| s.success()).unwrap()
    };
    assert!(!podman_has(&image_id));
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  rhel:
    host: 127.0.0.1
    platform: podman
    agent: {{ mode: push, port: {agent_port} }}
    config: {{ use_quadlet: false, rootless: false, compose_project: {project}, images: bundle }}
    env: {{ WEB_PORT: "{web_port}", IMAGE: "{image}" }}
    health:
      retries: 5
      interval: 500ms
      checks:
        - http: {{ url: "http://127.0.0.1:{web_port}/", status: 200, body: hello }}
"#
        ),
    );
    w.write("project/app/compose.yaml", TWO_SERVICES);
    w.write("project/app/.env", "APP_VERSION=v1\n");
    let (_coord, agent, _a) = w.start_push("rhel", "rhel", agent_port);
    let deploy = |args: &[&str]| w.coord_json(args);

    let (code, v) = deploy(&["deploy", "rhel", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert!(podman_has(&image_id), "the agent loaded the carried image into Podman");
    assert_eq!(http_body(web_port), "hello v1");
    assert_eq!(agent.status()["apps"][0]["health"], "healthy");

    // deploy-test reports Podman as it describes itself.
    let dt = w.coord(&["deploy-test", "rhel", "--output", "json"]).ok().json();
    let runtimes = dt["facts"]["runtimes"].as_array().unwrap().clone();
    let engine = runtimes.iter().find(|r| r["name"] == "podman engine").unwrap_or_else(|| panic!("{dt}"));
    let line = engine["version"].as_str().unwrap();
    assert!(line.contains("(rootful, ") && line.contains("socket "), "{line}");

    // v3's healthcheck fails: Podman marks the container unhealthy, the agent rolls back.
    v2_rollback_and_failing_v3(&w, "rhel", &[], || http_body(web_port), "unhealthy");

    // Health is read live: a container removed behind the agent's back shows.
    let o = std::process::Command::new("podman").args(["rm", "-f", "-t", "0", &format!("{project}_web_1")]).output();
    assert!(o.unwrap().status.success());
    let health = agent.status()["apps"][0]["health"].as_str().unwrap().to_string();
    assert!(health.starts_with("unhealthy") && health.contains("no container for service web"), "{health}");
}

const SYSTEMD_PODMAN: &str = "dockfra-systemd-podman:test";

/// A container booting systemd with Podman and Quadlet inside (scripts/systemd-podman-image),
/// on a network namespace of its own with nothing in it but loopback. The World's directory
/// and the built binaries are bind-mounted at the same paths, so an agent run inside sees
/// the same state paths as the test. Removed on drop.
struct SystemdBox {
    name: String,
    pid: String,
}

impl SystemdBox {
    fn start(w: &World) -> Self {
        let name = format!("dkf-systemd-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let world = format!("{}:{}", w.dir.display(), w.dir.display());
        let bins = bin("dockfra-agent").parent().unwrap().display().to_string();
        let bins = format!("{bins}:{bins}:ro");
        let (ok, _, err) = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--pull",
            "never",
            "--network",
            "none",
            "--cgroupns=private",
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "systempaths=unconfined",
            "--tmpfs",
            "/var/lib/containers:rw,exec,dev,suid",
            "-v",
            &world,
            "-v",
            &bins,
            SYSTEMD_PODMAN,
        ]);
        assert!(ok, "docker run {SYSTEMD_PODMAN}: {err}");
        let b = SystemdBox { pid: docker(&["inspect", "-f", "{{.State.Pid}}", &name]).1, name };
        // Right after start systemd may not answer on its bus yet.
        let mut state = String::new();
        wait_until("systemd to boot in the container", Duration::from_secs(90), || {
            state = docker(&["exec", &b.name, "systemctl", "is-system-running", "--wait"]).1;
            state == "running" || state == "degraded"
        });
        if state == "degraded" {
            let failed = docker(&["exec", &b.name, "systemctl", "--failed", "--no-legend"]).1;
            eprintln!("systemd in {} is degraded: {failed}", b.name);
        }
        b
    }

    /// Run a program from this host inside the container's network namespace only.
    fn in_netns(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid, "-n"].map(String::from).to_vec()
    }

    /// `docker exec` prefix for programs that must run inside the container (the agent).
    fn exec(&self) -> Vec<String> {
        ["docker", "exec", "-i", "-e", "DOCKFRA_LOG=dockfra_agent=debug", &self.name].map(String::from).to_vec()
    }

    fn sh(&self, cmd: &str) -> (bool, String, String) {
        docker(&["exec", &self.name, "sh", "-c", cmd])
    }

    /// GET http://127.0.0.1:PORT/ inside the container's network namespace.
    fn http_body(&self, port: u16) -> String {
        let get = format!(
            "import urllib.request as u\ntry: print(u.urlopen('http://127.0.0.1:{port}/', timeout=3).read().decode())\nexcept Exception: pass"
        );
        let mut c = std::process::Command::new("nsenter");
        c.args(["-t", &self.pid, "-n", "python3", "-c", &get]);
        c.output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}

#[test]
fn quadlet_deploy_update_rollback_and_failed_health_under_systemd() {
    let have = docker_ready() && docker(&["image", "inspect", SYSTEMD_PODMAN]).0 && !runner_missing("nsenter");
    if !have && skip_or_fail("Docker, nsenter and the systemd+podman image (run scripts/engines)") {
        return;
    }
    let mut w = World::new("quadlet-run");
    let sbox = SystemdBox::start(&w);
    let web_port = free_port();
    w.coord_prefix = sbox.in_netns();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  rhel:
    host: 127.0.0.1
    platform: podman
    agent: {{ mode: pull, poll_interval: 1s }}
    config: {{ use_quadlet: true, rootless: false, compose_project: shop, images: bundle }}
    env: {{ WEB_PORT: "{web_port}", RESTART: unless-stopped }}
    health:
      retries: 10
      interval: 500ms
      checks:
        - http: {{ url: "http://127.0.0.1:{web_port}/", status: 200, body: hello }}
"#
        ),
    );
    w.write("project/app/compose.yaml", TWO_SERVICES);
    w.write("project/app/.env", "APP_VERSION=v1\n");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let mut agent = Agent::new(&w, "rhel");
    agent.prefix = sbox.exec();
    agent.enroll(&format!("https://{}", w.addr()), &w.token("rhel")).ok();
    let _a = agent.start(&w);
    let deploy = |args: &[&str]| w.coord_json(args);
    let wait = ["--wait", "--timeout", "180s", "--output", "json"];

    // The container's Podman has never seen the image: it comes in the bundle.
    assert!(!sbox.sh("podman image exists dockfra-busybox:test").0);
    let (code, v) = deploy(&[&["deploy", "rhel"][..], &wait].concat());
    assert_eq!(code, 0, "{v}");
    assert_eq!(sbox.http_body(web_port), "hello v1");
    assert!(sbox.sh("podman image exists dockfra-busybox:test").0);
    // Installed as Quadlet units, marked as dockfra's, running as systemd services.
    let (_, units, _) = sbox.sh("ls /etc/containers/systemd");
    assert_eq!(
        units.split_whitespace().collect::<Vec<_>>(),
        ["shop-default.network", "shop-web.container", "shop-worker.container"]
    );
    let (_, active, _) = sbox.sh("systemctl is-active shop-web.service shop-worker.service");
    assert_eq!(active.split_whitespace().collect::<Vec<_>>(), ["active", "active"], "{active}");
    let (_, head, _) = sbox.sh("head -1 /etc/containers/systemd/shop-web.container");
    assert!(head.starts_with("# dockfra: project=shop"), "{head}");

    // v3's healthcheck fails: the agent rolls back to v1's units.
    v2_rollback_and_failing_v3(&w, "rhel", &["--wait", "--timeout", "180s"], || sbox.http_body(web_port), "unhealthy");
    let (_, unit, _) = sbox.sh("cat /etc/containers/systemd/shop-web.container");
    assert!(unit.contains("hello v1"), "the previous release's units are back:\n{unit}");

    // systemd keeps the service: a container killed behind the agent's back comes back.
    assert!(sbox.sh("podman kill shop-web").0);
    wait_until("systemd to restart shop-web", Duration::from_secs(60), || sbox.http_body(web_port) == "hello v1");
}

#[test]
fn quadlet_units_of_every_corpus_file_pass_the_real_generator() {
    let quadlet = std::path::Path::new("/usr/local/libexec/dockfra/quadlet");
    if !quadlet.is_file()
        && skip_or_fail("Quadlet's generator at /usr/local/libexec/dockfra/quadlet (run scripts/engines)")
    {
        return;
    }
    use dockfra_common::compose;
    use dockfra_coord::convert::quadlet::{convert, Options};
    let corpus = workspace().join("../shared/corpus/awesome-compose");
    let w = World::new("quadlet");
    let mut checked = 0;
    for entry in std::fs::read_dir(&corpus).unwrap().flatten() {
        let Some(file) = compose::find_compose_file(&entry.path()) else { continue };
        let opts = compose::LoadOptions { project_name: None, overrides: &Default::default(), use_process_env: false };
        let project = compose::load(&file, &opts).unwrap();
        for pod in [None, Some(format!("{}-pod", project.name))] {
            let c = convert(&project.model, &Options { project: project.name.clone(), pod: pod.clone() });
            let dir = w.path(&format!("{}-{}", project.name, pod.is_some()));
            std::fs::create_dir_all(&dir).unwrap();
            for u in &c.units {
                std::fs::write(dir.join(&u.name), &u.text).unwrap();
            }
            let out =
                std::process::Command::new(quadlet).arg("-dryrun").env("QUADLET_UNIT_DIRS", &dir).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{}: quadlet -dryrun refused the units:\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            for u in c.units.iter().filter(|u| u.name.ends_with(".container")) {
                let service = u.name.replace(".container", ".service");
                assert!(
                    stdout.contains(&format!("---{service}---")),
                    "{}: no {service} generated:\n{stdout}",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 60, "checked {checked} unit sets");
}

/// The README's first command: `dockfra-coord demo` deploys v1, v2, rolls back, prints status.
#[test]
fn the_readme_demo_runs() {
    let w = World::new("demo");
    let mut c = std::process::Command::new(bin("dockfra-coord"));
    c.arg("demo").env("TMPDIR", &w.dir).env("DOCKFRA_LOG", "warn");
    let r = run(c).ok();
    let out = r.stdout();
    assert!(out.contains("release") && out.contains("is live and healthy"), "{out}");
    assert!(out.contains("live index.html says: <p>version: v1</p>"), "after the rollback v1 is live again:\n{out}");
    assert!(out.contains("demo finished"), "{out}");
    // It cleans up after itself.
    let left: Vec<_> = std::fs::read_dir(&w.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("dockfra-demo-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
