//! Refusals: what a hostile or mistaken input must not get past. Offline bundles that are
//! replayed, tampered with, for another target, expired, or validly signed but hostile (path
//! traversal, links leaving the release, special bits, limits, non-regular archive entries)
//! are refused without a byte on disk changing. Enrollment tokens that are for another target,
//! reused, expired or pin another CA are refused; an agent asking for another target's bundle,
//! calling another agent's push port or the admin API, or calling after revocation, is refused.
use std::time::Duration;

use dockfra_e2e::*;

use crate::{deploy_json, live_version, project};

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
            let m = dockfra_common::bundle::Manifest::parse(&a.manifest.as_ref().unwrap().manifest).unwrap();
            docs = Some(a);
            Ok(m.blob_sizes())
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
            requires: vec![],
            target: "edge-offline".into(),
            app: "web".into(),
            version: name.into(),
            sequence: 1000 + i as u64,
            created_unix: 0,
            platform: bundle::PlatformSpec::SshRaw(bundle::SshRawSpec {
                deploy_path: None,
                service_manager: dockfra_common::config::ServiceManager::None,
                service_name: None,
                pre_script: None,
                post_script: None,
            }),
            files,
            health: None,
            keep_releases: 5,
            os: None,
        };
        let bytes = m.canonical_bytes();
        let d = DesiredState {
            format: bundle::FORMAT,
            requires: vec![],
            target: "edge-offline".into(),
            app: "web".into(),
            action: Action::Deploy,
            sequence: 1000 + i as u64,
            bundle_id: dockfra_common::sha256_hex(&bytes),
            deployment_id: format!("evil-{name}"),
            issued_unix: dockfra_common::now_unix(),
            expires_unix: dockfra_common::now_unix() + 600,
        };
        let a = bundle::sign_assignment(&key, &d, bytes, &[]);
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
