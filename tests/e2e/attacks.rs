//! Refusals: what a hostile or mistaken input must not get past. Offline bundles that are
//! replayed, tampered with, for another target, expired, or validly signed but hostile (path
//! traversal, links leaving the release, special bits, limits, non-regular archive entries)
//! are refused without a byte on disk changing. Enrollment tokens that are for another target,
//! reused, expired or pin another CA are refused; an agent asking for another target's bundle,
//! calling another agent's push port or the admin API, or calling after revocation, is refused.
use std::time::Duration;

use dockfra_e2e::*;

use crate::{deploy_json, live_version, project};

/// What a refused offline bundle must leave byte-for-byte alone: the deploy dir, the blob
/// store, the agent's state file and its pinned signing key.
type Snapshot = Vec<(String, String)>;

fn watched(w: &World, agent: &Agent) -> (Snapshot, Snapshot, Vec<u8>, Vec<u8>) {
    (
        snapshot(&w.path("deploy-offline")),
        snapshot(&agent.state.join("blobs")),
        std::fs::read(agent.state.join("state.json")).unwrap_or_default(),
        std::fs::read(agent.state.join("identity/signing.pub")).unwrap(),
    )
}

/// `dockfra-agent apply FILE` is refused with `expect` in its message, and nothing changed.
fn refused_unchanged(w: &World, agent: &Agent, file: &std::path::Path, expect: &str) {
    let before = watched(w, agent);
    let r = agent.run_cmd(&["apply", file.to_str().unwrap()]);
    let text = format!("{}{}", r.stdout(), r.stderr());
    assert_ne!(r.code(), 0, "{} was accepted: {text}", file.display());
    assert!(text.contains(expect), "{}: expected {expect:?} in: {text}", file.display());
    assert_eq!(before, watched(w, agent), "{} changed the disk", file.display());
    assert!(!agent.state.join("journal.json").exists());
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
    let refused = |file: &std::path::Path, expect: &str| refused_unchanged(&w, &agent, file, expect);

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
    assert!(r.stderr().contains("no target or agent \"nope\""), "{}", r.stderr());

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
        assert!(e.message().contains("is not for agent \"edge-pull\""), "{}", e.message());
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

/// Decode an archive's documents as JSON, let `f` change them, and sign them again with the
/// coordinator's key — so that only the rule under test can refuse the result.
fn resign(
    src: &std::path::Path,
    dst: &std::path::Path,
    key: &dockfra_common::sign::SigningKey,
    mut f: impl FnMut(&mut serde_json::Value, &mut serde_json::Value, &mut Vec<(String, Vec<u8>)>),
) {
    use dockfra_common::sign::Context;
    rewrite_bundle(src, dst, |a, blobs| {
        let sd = a.desired.as_mut().unwrap();
        let sm = a.manifest.as_mut().unwrap();
        let mut d: serde_json::Value = serde_json::from_slice(&sd.payload).unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(&sm.manifest).unwrap();
        f(&mut d, &mut m, blobs);
        sm.manifest = serde_json::to_vec(&m).unwrap();
        // The order names the manifest as it now is (only the rule under test may refuse).
        d["bundle_id"] = dockfra_common::sha256_hex(&sm.manifest).into();
        sd.payload = serde_json::to_vec(&d).unwrap();
        sd.signature = key.sign(Context::DesiredState, &sd.payload);
        sm.signature = key.sign(Context::Manifest, &sm.manifest);
    });
}

fn coord_key(w: &World) -> dockfra_common::sign::SigningKey {
    dockfra_common::sign::SigningKey::from_pkcs8(&std::fs::read(w.coord_state.join("signing.key")).unwrap()).unwrap()
}

/// TUF's attacks on update metadata, as they apply to dockfra's signed order and manifest:
/// each is refused with an error that says what it was, and nothing on disk changes.
#[test]
fn tuf_attacks_on_orders_and_bundles_are_refused_and_change_nothing() {
    let w = World::new("tuf");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let agent = Agent::new(&w, "offline");
    agent.enroll(&format!("https://{}", w.addr()), &w.token("edge-offline")).ok();
    let export = |name: &str, extra: &[&str]| {
        let p = w.path(name);
        let mut args = vec!["bundle", "export", "edge-offline", "-o", p.to_str().unwrap()];
        args.extend_from_slice(extra);
        w.coord(&args).ok();
        p
    };
    let v1 = export("v1.tar", &[]);
    w.write("project/app/VERSION", "v2\n");
    let v2 = export("v2.tar", &[]);
    agent.run_cmd(&["apply", v2.to_str().unwrap()]).ok();
    assert_eq!(live_version(&w, "deploy-offline"), "v2");
    let refused = |file: &std::path::Path, expect: &str| refused_unchanged(&w, &agent, file, expect);
    let key = coord_key(&w);
    w.write("project/app/VERSION", "v3\n");
    let v3 = export("v3.tar", &[]);
    let evil = |name: &str| w.path(&format!("evil-{name}.tar"));

    // Rollback: an older, still valid bundle after a newer one.
    refused(&v1, "replay refused");
    // Indefinite freeze: an order past its expiry, or older than the agent accepts.
    let e = export("short.tar", &["--expires-in", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    refused(&e, "expired");
    resign(&v3, &evil("long"), &key, |d, _, _| {
        d["expires_unix"] = (dockfra_common::now_unix() + 40 * 86400).into();
    });
    refused(&evil("long"), "max_order_lifetime");
    w.write("agent-strict.yaml", "max_order_age: 1s\n");
    resign(&v3, &evil("stale"), &key, |d, _, _| d["issued_unix"] = (dockfra_common::now_unix() - 5).into());
    let before = watched(&w, &agent);
    let cfg = w.path("agent-strict.yaml");
    let r = agent.run_cmd(&["--config", cfg.to_str().unwrap(), "apply", evil("stale").to_str().unwrap()]);
    assert!(r.code() != 0 && r.stderr().contains("max_order_age"), "{}{}", r.stdout(), r.stderr());
    assert_eq!(before, watched(&w, &agent));
    // Mix and match: the order of one release with the manifest of another, and a blob the
    // manifest does not name.
    rewrite_bundle(&v3, &evil("mix"), |a, _| {
        let mut other = None;
        rewrite_bundle(&v1, &w.path("scratch.tar"), |b, _| other = b.manifest.clone());
        a.manifest = other;
    });
    refused(&evil("mix"), "desired state names bundle");
    rewrite_bundle(&v3, &evil("foreign-blob"), |_, blobs| blobs.push(("f".repeat(64), b"x".to_vec())));
    refused(&evil("foreign-blob"), "not named by the manifest");
    // Fast-forward: a manifest whose sequence is above its order's would lift the floor
    // above anything the coordinator will ever send.
    resign(&v3, &evil("ff"), &key, |_, m, _| m["sequence"] = 999_999.into());
    refused(&evil("ff"), "fast-forward refused");
    // Endless data: a blob longer than the manifest says; a document over the size limit.
    rewrite_bundle(&v3, &evil("long-blob"), |_, blobs| blobs[0].1.extend_from_slice(&[b'x'; 4096]));
    refused(&evil("long-blob"), "endless data");
    rewrite_bundle(&v3, &evil("huge-doc"), |a, _| {
        a.desired.as_mut().unwrap().payload = vec![b' '; 17 << 20];
    });
    refused(&evil("huge-doc"), "over 16 MiB");
    // Wrong target, wrong app (the two documents disagree).
    resign(&v3, &evil("target"), &key, |d, m, _| {
        d["target"] = "edge-pull".into();
        m["target"] = "edge-pull".into();
    });
    refused(&evil("target"), "bundle is for target \"edge-pull\"");
    resign(&v3, &evil("app"), &key, |d, _, _| d["app"] = "other".into());
    refused(&evil("app"), "desired state names app \"other\"");
    // A signature over one kind of document does not pass for another.
    rewrite_bundle(&v3, &evil("swap"), |a, _| {
        let (d, m) = (a.desired.as_mut().unwrap(), a.manifest.as_mut().unwrap());
        d.signature = key.sign(dockfra_common::sign::Context::Manifest, &d.payload);
        m.signature = key.sign(dockfra_common::sign::Context::DesiredState, &m.manifest);
    });
    refused(&evil("swap"), "bad signature on the desired state");
    // A newer format, or a feature this agent lacks: refused with the way out.
    resign(&v3, &evil("format"), &key, |_, m, _| m["format"] = 3.into());
    refused(&evil("format"), "upgrade the agent");
    resign(&v3, &evil("feature"), &key, |_, m, _| m["requires"] = serde_json::json!(["zero-downtime-v9"]));
    refused(&evil("feature"), "requires feature \"zero-downtime-v9\"");
    // A field it does not know, not marked required, is ignored (the compatibility rule).
    resign(&v3, &w.path("future.tar"), &key, |d, m, _| {
        m["telemetry"] = serde_json::json!({"level": 3});
        d["hint"] = "ignored".into();
    });
    agent.run_cmd(&["apply", w.path("future.tar").to_str().unwrap()]).ok();
    assert_eq!(live_version(&w, "deploy-offline"), "v3");
    // The coordinator will not sign an offline bundle for longer than agents accept.
    let r =
        w.coord(&["bundle", "export", "edge-offline", "-o", w.path("x.tar").to_str().unwrap(), "--expires-in", "45d"]);
    assert!(r.code() != 0 && r.stderr().contains("30d at most"), "{}", r.stderr());
    // What was installed can be re-verified against the signed manifest kept with it.
    let r = agent.run_cmd(&["verify"]).ok();
    assert!(r.stdout().contains("0 mismatch"), "{}", r.stdout());
    let cur = std::fs::read_link(w.path("deploy-offline/web/current")).unwrap();
    std::fs::write(w.path("deploy-offline/web").join(cur).join("VERSION"), "tampered\n").unwrap();
    let r = agent.run_cmd(&["verify"]).fails();
    assert!(r.stdout().contains("MISMATCH") && r.stdout().contains("VERSION was changed"), "{}", r.stdout());
}

/// Hole 1 (issue #8): an emptied or corrupt state.json reset the replay floor to 0, so an
/// older, still valid bundle installed over a newer release.
#[test]
fn a_lost_or_corrupt_state_file_never_lowers_the_floor() {
    let w = World::new("floor");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let agent = Agent::new(&w, "offline");
    agent.enroll(&format!("https://{}", w.addr()), &w.token("edge-offline")).ok();
    let (old, new) = (w.path("old.tar"), w.path("new.tar"));
    w.coord(&["bundle", "export", "edge-offline", "-o", old.to_str().unwrap()]).ok();
    w.write("project/app/VERSION", "v2\n");
    w.coord(&["bundle", "export", "edge-offline", "-o", new.to_str().unwrap()]).ok();
    agent.run_cmd(&["apply", new.to_str().unwrap()]).ok();
    let state = agent.state.join("state.json");
    let apply_old = || agent.run_cmd(&["apply", old.to_str().unwrap()]);
    let before = snapshot(&w.path("deploy-offline"));
    let version = agent.status()["apps"][0]["current_version"].clone();

    for (how, damage) in [("emptied", b"".as_slice()), ("torn", b"{\"last_desired_seq".as_slice())] {
        std::fs::write(&state, damage).unwrap();
        let r = apply_old();
        let text = format!("{}{}", r.stdout(), r.stderr());
        assert_ne!(r.code(), 0, "{how} state.json: the older bundle installed: {text}");
        assert!(text.contains("state repair"), "{how}: the error says how to recover: {text}");
        assert_eq!(snapshot(&w.path("deploy-offline")), before, "{how}: the disk changed");
        let st = agent.run_cmd(&["status", "--output", "json"]);
        assert_eq!(st.code(), 1, "status exits 1 while the state is unreadable");
        assert!(st.json()["state_error"].as_str().unwrap().contains("cannot be read"), "{}", st.stdout());
    }
    std::fs::remove_file(&state).unwrap();
    let r = apply_old();
    assert!(r.code() != 0 && format!("{}{}", r.stdout(), r.stderr()).contains("is missing"), "{}", r.stdout());

    // Repair rebuilds state.json; the floor is what floor.json and the release dirs say.
    let r = agent.run_cmd(&["state", "repair"]).ok();
    assert!(r.stdout().contains("floor: order sequence"), "{}", r.stdout());
    let r = apply_old();
    assert!(format!("{}{}", r.stdout(), r.stderr()).contains("replay refused"), "{}", r.stdout());
    // Both copies gone bad: the release dirs alone still hold the floor.
    std::fs::write(&state, b"garbage").unwrap();
    std::fs::write(agent.state.join("floor.json"), b"garbage").unwrap();
    agent.run_cmd(&["state", "repair"]).ok();
    let r = apply_old();
    assert!(format!("{}{}", r.stdout(), r.stderr()).contains("replay refused"), "{}", r.stdout());
    assert_eq!(snapshot(&w.path("deploy-offline")), before);
    assert_eq!(agent.status()["apps"][0]["current_version"], version, "repair found the current release");
}

/// Hole 2 (issue #8), its second half: enrollment failures cost an unauthenticated caller
/// nothing and grew the event log without bound. Calls are rate-limited per address, refusal
/// events are bounded, and text from the caller is sanitized.
#[test]
fn enrollment_floods_are_rate_limited_and_bounded() {
    let w = World::new("flood");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let pin = w.token("edge-pull").rsplit('.').next().unwrap().to_string();
    let mut limited = 0;
    let started = std::time::Instant::now();
    for i in 0..25 {
        let a = Agent::new(&w, &format!("f{i}"));
        let r = a
            .run_cmd(&[
                "enroll",
                "--coordinator",
                &url,
                "--token",
                &format!("dkf1.{i:016x}.bad.{pin}"),
                "--target",
                "evil\u{1b}[2J",
            ])
            .fails();
        if r.stderr().contains("too many enrollment attempts") {
            limited += 1;
        }
    }
    // A burst of 10, then one more every 6 s.
    let allowed = 10 + (started.elapsed().as_secs() / 6) as usize + 1;
    assert!(25 - limited <= allowed, "{} of 25 attempts got through (at most {allowed} may)", 25 - limited);
    let ev = w.coord(&["events", "--limit", "1000", "--output", "json"]).ok().json();
    let refusals: Vec<&serde_json::Value> =
        ev.as_array().unwrap().iter().filter(|e| e["kind"] == "enroll-refused").collect();
    assert!(!refusals.is_empty() && refusals.len() <= allowed, "{} refusal rows", refusals.len());
    assert!(refusals.iter().all(|e| e["target"] == "-"), "a made-up target is not recorded: {refusals:?}");
    // The bucket refills: a real agent from the same address gets in a little later.
    std::thread::sleep(Duration::from_secs(7));
    Agent::new(&w, "good").enroll(&url, &w.token("edge-pull")).ok();
}

/// Hole 3 (issue #8): dialling a push agent, the coordinator accepted any unexpired
/// certificate its CA issued for the target, even a superseded one. A listener holding the
/// old certificate (say, from a decommissioned disk) must not get the deploy.
#[test]
fn a_push_listener_with_a_superseded_certificate_is_refused() {
    let w = World::new("pin");
    let port = free_port();
    project(&w, port, "", "");
    let (_coord, old, mut old_run) = w.start_push("old", "edge-push", port);
    assert_eq!(deploy_json(&w, &["edge-push"]).0, 0);
    old_run.kill9();
    // The target is enrolled anew (a replaced device): the store now holds the new serial.
    let mut new = Agent::new(&w, "new");
    new.listen = Some(format!("127.0.0.1:{port}"));
    new.enroll(&format!("https://{}", w.addr()), &w.token("edge-push")).ok();
    // The old identity listens where the target's agent should be.
    let _impostor = old.start(&w);
    w.write("project/app/VERSION", "v2\n");
    let (code, v) = deploy_json(&w, &["edge-push"]);
    assert_eq!(code, 3, "the deploy went to a superseded certificate: {v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains("presented certificate serial") && msg.contains("the store holds"), "{v}");
    assert_eq!(live_version(&w, "deploy-push"), "v1", "the impostor did not deploy");
    // The real agent, with the certificate the store holds, is accepted.
    drop(_impostor);
    let _real = new.start(&w);
    assert_eq!(deploy_json(&w, &["edge-push"]).0, 0);
    assert_eq!(live_version(&w, "deploy-push"), "v2");
}

/// Hole 5 (issue #8): one five-year admin key that could not be revoked, no operator in the
/// audit trail, and a signing key that could never change. Named operators deploy under their
/// name and can be revoked; a rotated signing key reaches agents through the old key's
/// statement, after which the old key's signatures are refused.
#[test]
fn named_operators_are_audited_and_revocable_and_the_signing_key_rotates() {
    let w = World::new("operators");
    let port = free_port();
    project(&w, port, "", "");
    let (_coord, agent, _run) = w.start_push("p", "edge-push", port);
    w.coord(&["operator", "add", "alice"]).ok();
    assert!(w.coord_state.join("operators/alice.key").is_file());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(w.coord_state.join("operators/alice.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let r = w.coord(&["operator", "add", "alice"]).fails();
    assert!(r.stderr().contains("exists"), "{}", r.stderr());

    // alice deploys: the deployment and the audit trail name her.
    let r = w.coord(&["--operator", "alice", "deploy", "edge-push", "--output", "json"]).ok();
    let id = r.json()["deployment_id"].as_str().unwrap().to_string();
    assert_eq!(deployment(&w, &id)["operator"], "alice");
    let ev = w.coord(&["events", "edge-push", "--output", "json"]).ok().json();
    assert!(ev.as_array().unwrap().iter().any(|e| e["operator"] == "alice" && e["kind"] == "deploy"), "{ev}");
    // Every step of her deployment carries her name, the agent's own reports included.
    let done = ev.as_array().unwrap().iter().find(|e| e["kind"] == "Done").cloned().unwrap_or_default();
    assert_eq!(done["operator"], "alice", "{ev}");
    let list = w.coord(&["operator", "list", "--output", "json"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    // Revoked, her next call is refused; the last operator cannot be revoked.
    w.coord(&["operator", "revoke", "alice"]).ok();
    let r = w.coord(&["--operator", "alice", "status"]).fails();
    assert!(r.stderr().contains("operator \"alice\" is revoked"), "{}", r.stderr());
    let r = w.coord(&["operator", "revoke", "admin"]).fails();
    assert!(r.stderr().contains("last active operator"), "{}", r.stderr());
    // Re-issued, she is back (with a new certificate; the old one stays dead).
    let old_crt = std::fs::read(w.coord_state.join("operators/alice.crt")).unwrap();
    w.coord(&["operator", "add", "alice", "--replace"]).ok();
    assert_ne!(old_crt, std::fs::read(w.coord_state.join("operators/alice.crt")).unwrap());
    w.coord(&["--operator", "alice", "status"]).ok();

    // Rotate the signing key; export a bundle signed by the old key before that.
    w.write("project/app/VERSION", "v2\n");
    let signed_old = w.path("old-key.tar");
    let offline = Agent::new(&w, "offline");
    offline.enroll(&format!("https://{}", w.addr()), &w.token("edge-offline")).ok();
    w.coord(&["bundle", "export", "edge-offline", "-o", signed_old.to_str().unwrap()]).ok();
    let pinned = std::fs::read(agent.state.join("identity/signing.pub")).unwrap();
    let r = w.coord(&["signing-key", "rotate"]).ok();
    assert!(r.stdout().contains("1 rotation"), "{}", r.stdout());
    assert_eq!(deploy_json(&w, &["edge-push"]).0, 0, "the push agent follows the rotation");
    let now = std::fs::read(agent.state.join("identity/signing.pub")).unwrap();
    assert_ne!(now, pinned, "the agent pinned the new key");
    assert!(std::fs::read_to_string(agent.state.join("identity/signing.history")).unwrap().contains(&hex(&pinned)));
    // The offline agent follows it too, through an export that carries the chain …
    w.write("project/app/VERSION", "v3\n");
    let signed_new = w.path("new-key.tar");
    w.coord(&["bundle", "export", "edge-offline", "-o", signed_new.to_str().unwrap()]).ok();
    offline.run_cmd(&["apply", signed_new.to_str().unwrap()]).ok();
    assert_eq!(live_version(&w, "deploy-offline"), "v3");
    // … after which a bundle signed by the rotated-out key is refused, though not expired.
    let r = offline.run_cmd(&["apply", signed_old.to_str().unwrap()]).fails();
    assert!(format!("{}{}", r.stdout(), r.stderr()).contains("bad signature"), "{}{}", r.stdout(), r.stderr());
    // A chain forged by another key moves nothing.
    let mallory =
        dockfra_common::sign::SigningKey::from_pkcs8(&dockfra_common::sign::SigningKey::generate_pkcs8().unwrap())
            .unwrap();
    let forged = w.path("forged.tar");
    rewrite_bundle(&signed_new, &forged, |a, _| {
        let current = std::fs::read(offline.state.join("identity/signing.pub")).unwrap();
        let mut r = dockfra_common::bundle::sign_rotation(&mallory, &mallory, 9, 0);
        let stmt = serde_json::json!({"format": 1, "number": 9, "old_key": hex(&current),
            "new_key": hex(&mallory.public_key()), "issued_unix": 0});
        r.statement = serde_json::to_vec(&stmt).unwrap();
        r.old_signature = mallory.sign(dockfra_common::sign::Context::KeyRotation, &r.statement);
        r.new_signature = r.old_signature.clone();
        a.rotations = vec![r];
    });
    let r = offline.run_cmd(&["apply", forged.to_str().unwrap()]).fails();
    assert!(format!("{}{}", r.stdout(), r.stderr()).contains("not signed by the key it replaces"), "{}", r.stdout());
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
