//! The spine: what every deploy goes through, on `ssh_raw` targets with real push and pull
//! agents on loopback. Deploy, update (only changed files travel), rollback (to the previous
//! release or `--to` a named one), a failing health check rolled back by the agent, status,
//! history and listings, an exported bundle applied by hand; short-lived agent certificates
//! renewed in place; the agent's config file and its not-enrolled refusal; config errors that
//! name file, target and key and change nothing; the seed's fleet loading without dialling;
//! and the README's `demo`.
use std::time::Duration;

use dockfra_e2e::*;

use crate::{current, deploy_json, live_version, project};

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
fn agents_renew_their_short_lived_certificates() {
    let w = World::new("renew");
    let port = free_port();
    project(&w, port, "", "");
    w.coord(&["init", "--listen", "127.0.0.1:0", "--agent-cert-ttl", "12s"]).ok();
    let _coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let serial = |a: &Agent| {
        let pem = std::fs::read_to_string(a.state.join("identity/cert.pem")).unwrap();
        dockfra_common::identity::cert_info(&dockfra_common::identity::first_cert_der(&pem).unwrap())
            .unwrap()
            .serial_hex
    };
    // Each agent starts as soon as it is enrolled: on a busy machine an enrollment takes
    // seconds, and a 12 s certificate must not run out before its agent runs.
    let (push_token, pull_token) = (w.token("edge-push"), w.token("edge-pull"));
    let mut push = Agent::new(&w, "push");
    push.listen = Some(format!("127.0.0.1:{port}"));
    push.enroll(&url, &push_token).ok();
    let push0 = serial(&push);
    let _p1 = push.start(&w);
    let pull = Agent::new(&w, "pull");
    pull.enroll(&url, &pull_token).ok();
    let pull0 = serial(&pull);
    let old_identity = w.path("old-identity");
    std::fs::create_dir_all(old_identity.join("identity")).unwrap();
    for f in ["cert.pem", "key.pem", "ca.pem"] {
        std::fs::copy(pull.state.join("identity").join(f), old_identity.join("identity").join(f)).unwrap();
    }
    let _p2 = pull.start(&w);
    wait_until("both agents to renew", Duration::from_secs(40), || serial(&push) != push0 && serial(&pull) != pull0);
    // The coordinator knows the new serials, and both agents still work with them.
    let agents = w.coord(&["agents", "--output", "json"]).ok().json();
    let known: Vec<&str> = agents.as_array().unwrap().iter().map(|a| a["serial"].as_str().unwrap()).collect();
    assert!(known.contains(&serial(&push).as_str()) && known.contains(&serial(&pull).as_str()), "{agents}");
    // Once the agent has used its new certificate (its next poll), a copy of the old one is
    // dead — checked while the old one has not expired yet, so it is the store that says no.
    std::thread::sleep(Duration::from_millis(800));
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
    assert_eq!(deploy_json(&w, &["edge-push"]).0, 0);
    assert_eq!(deploy_json(&w, &["edge-pull", "--wait", "--timeout", "60s"]).0, 0);
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
        std::fs::read(dockfra_common::shared_dir(&workspace()).join("seeds/deploy-targets.example.yaml")).unwrap(),
        "the top-level deploy-targets.yaml starts as the seed's example"
    );
    let _coord = w.serve(&[]);
    let t = w.coord(&["targets", "--output", "json"]).ok().json();
    let ids: Vec<&str> = t.as_array().unwrap().iter().map(|x| x["target"].as_str().unwrap()).collect();
    assert_eq!(ids, ["prod-vps", "staging-rhel", "prod-k8s", "edge-rpi3", "swarm-cluster", "nomad-cluster"]);
    assert!(t.as_array().unwrap().iter().all(|x| x["enrolled"] == false));
    let table = w.coord(&["status"]).ok().stdout();
    assert!(table.contains("edge-rpi3") && table.contains("unknown"), "{table}");
    // A converted platform without the compose file it is rendered from is refused clearly,
    // before anything is queued or dialled.
    let e = w.coord(&["deploy", "nomad-cluster"]).fails().stderr();
    assert!(e.contains("platform nomad needs a compose.yaml or docker-compose.yml"), "{e}");
    // prod-vps is labelled env: production: an order for it needs a yes.
    let e = w.coord(&["deploy", "prod-vps"]).fails().stderr();
    assert!(e.contains("is a production target (env=production)") && e.contains("--yes"), "{e}");
    // A docker_compose target needs a compose file in the app.
    let e = w.coord(&["deploy", "prod-vps", "--yes"]).fails().stderr();
    assert!(e.contains("needs a compose.yaml or docker-compose.yml"), "{e}");
    assert_eq!(w.coord(&["history", "--output", "json"]).ok().json(), serde_json::json!([]));
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

/// Hole 2 (issue #8): an order a pull agent refused was signed and sent again at every
/// poll, two event rows each time, forever. It ends `refused` with the agent's reason, once.
#[test]
fn an_order_the_agent_refuses_ends_refused_once() {
    let w = World::new("refused-once");
    project(&w, free_port(), "", "");
    let yaml = std::fs::read_to_string(w.project.join("deploy-targets.yaml")).unwrap();
    let yaml =
        yaml.replacen("  edge-pull:\n    host: 127.0.0.1\n", "  edge-pull:\n    host: 127.0.0.1\n    os: macos\n", 1);
    std::fs::write(w.project.join("deploy-targets.yaml"), yaml).unwrap();
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let agent = Agent::new(&w, "pull");
    agent.enroll(&format!("https://{}", w.addr()), &w.token("edge-pull")).ok();
    let run = agent.start(&w);
    let (code, v) = deploy_json(&w, &["edge-pull", "--wait", "--timeout", "30s"]);
    assert_eq!((code, v["result"].as_str()), (3, Some("refused")), "{v}");
    let id = v["deployment_id"].as_str().unwrap().to_string();
    let row = deployment(&w, &id);
    assert_eq!(row["status"], "refused");
    assert!(row["reason"].as_str().unwrap().contains("os: macos is declared"), "{row}");
    // Ten polls later: still one hand-out, one refusal.
    std::thread::sleep(Duration::from_secs(3));
    let events = w.coord(&["events", "edge-pull", "--limit", "1000", "--output", "json"]).ok().json();
    let count = |kind: &str| events.as_array().unwrap().iter().filter(|e| e["kind"] == kind).count();
    assert_eq!((count("Delivering"), count("Refused")), (1, 1), "{events}");
    assert_eq!(deployment(&w, &id)["attempts"], 1);
    assert_eq!(run.log().matches("refused: target edge-pull").count(), 1, "{}", run.log());
}

/// Hole 7 (issue #8): blobs and carried image archives piled up on small devices forever.
/// What no kept release names is collected on the agent and on the coordinator, disk use is
/// in `status`, and a release collected from the coordinator's store is refused up front.
#[test]
fn blobs_no_kept_release_names_are_collected_and_disk_use_is_reported() {
    let w = World::new("gc");
    let port = free_port();
    project(&w, port, "", "");
    let yaml = std::fs::read_to_string(w.project.join("deploy-targets.yaml")).unwrap();
    let yaml = yaml.replacen("    agent: { mode: push,", "    keep_releases: 2\n    agent: { mode: push,", 1);
    std::fs::write(w.project.join("deploy-targets.yaml"), yaml).unwrap();
    let (_coord, agent, _run) = w.start_push("p", "edge-push", port);
    let mut names = Vec::new();
    for i in 1..=4 {
        // One file that changes with each release (its old blobs become garbage).
        w.write("project/app/VERSION", &format!("v{i}\n"));
        w.write("project/app/payload.bin", &format!("{i}").repeat(50_000));
        assert_eq!(deploy_json(&w, &["edge-push"]).0, 0);
        names.push(current(&w, "deploy-push").trim_start_matches("releases/").to_string());
    }
    let digest = |i: usize| dockfra_common::sha256_hex(format!("{i}").repeat(50_000).as_bytes());
    let agent_blobs = agent.state.join("blobs/sha256");
    for i in 1..=2 {
        assert!(!agent_blobs.join(digest(i)).exists(), "the agent kept v{i}'s payload, which no kept release names");
    }
    for i in 3..=4 {
        assert!(agent_blobs.join(digest(i)).exists(), "the agent dropped v{i}'s payload, which a kept release needs");
    }
    let st = agent.status();
    let disk = &st["disk"];
    assert!(disk["blobs"].as_u64().unwrap() > 0 && disk["blobs_bytes"].as_u64().unwrap() >= 100_000, "{st}");
    assert!(disk["free_bytes"].as_u64().unwrap() > 0 && disk["releases_bytes"].as_u64().unwrap() > 0, "{st}");
    let (_, status) = w.coord_json(&["status", "edge-push", "--output", "json"]);
    assert!(status["disk"]["blobs_bytes"].as_u64().unwrap() > 0, "{status}");

    // The coordinator collected what no agent keeps (after each successful deploy).
    wait_until("the coordinator to collect", Duration::from_secs(10), || {
        !w.coord_state.join("blobs/sha256").join(digest(1)).exists()
    });
    assert!(w.coord_state.join("blobs/sha256").join(digest(4)).exists());
    let (_, gc) = w.coord_json(&["gc", "--dry-run", "--output", "json"]);
    assert_eq!(gc["blobs_removed"], 0, "nothing left to collect: {gc}");
    // What a build killed mid-copy left behind goes once it is old; a fresh one may be a
    // copy in progress and stays.
    let store = w.coord_state.join("blobs/sha256");
    let (old, fresh) = (store.join(".incoming-1-7"), store.join(".incoming-1-8"));
    std::fs::write(&old, "half a blob").unwrap();
    std::fs::write(&fresh, "the other half").unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(hour_ago).unwrap();
    let (_, gc) = w.coord_json(&["gc", "--output", "json"]);
    assert_eq!((gc["blobs_removed"].as_u64(), gc["bytes_freed"].as_u64()), (Some(1), Some(11)), "{gc}");
    assert!(!old.exists() && fresh.exists());
    let r = w.coord(&["rollback", "edge-push", "--to", &names[0]]).fails();
    assert!(r.stderr().contains("garbage-collected"), "{}", r.stderr());
    // The kept ones still roll back.
    let r = w.coord(&["rollback", "edge-push", "--output", "json"]).ok();
    assert_eq!(r.json()["result"], "succeeded");
    assert_eq!(live_version(&w, "deploy-push"), "v3");
}

/// The CLI's shell completions load in bash and complete commands and flags; its man pages,
/// generated from the same definition, render with `man -l`.
#[test]
fn completions_load_in_bash_and_the_man_pages_render() {
    if Needs::new().tool("bash", "Debian's bash").tool("man", "Debian's man-db").unmet() {
        return;
    }
    let w = World::new("cli-docs");
    let script = w.coord(&["completions", "bash"]).ok().stdout();
    w.write("completion.bash", &script);
    // What bash offers after `dockfra-coord agent up` and `dockfra-coord agent upgrade --tri`.
    let offer = |words: &str| {
        let mut c = std::process::Command::new("bash");
        c.arg("-c").arg(format!(
            "source {}; complete -p dockfra-coord >/dev/null || exit 9; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             _dockfra__coord dockfra-coord \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            w.path("completion.bash").display()
        ));
        let r = run(c);
        assert_eq!(r.code(), 0, "{}", r.stderr());
        r.stdout()
    };
    let top = offer("dockfra-coord dep");
    assert!(top.lines().any(|l| l == "deploy") && top.lines().any(|l| l == "deploy-test"), "{top}");
    assert_eq!(offer("dockfra-coord agent up").trim(), "upgrade");
    assert!(offer("dockfra-coord agent upgrade --tri").contains("--trial-timeout"));

    let dir = w.path("man");
    w.coord(&["man", "--out", dir.to_str().unwrap()]).ok();
    let render = |page: &str| {
        let mut c = std::process::Command::new("man");
        c.arg("-l").arg(dir.join(page)).env("MANWIDTH", "100").env("MAN_KEEP_FORMATTING", "");
        let r = run(c);
        assert_eq!(r.code(), 0, "man -l {page}: {}", r.stderr());
        r.stdout()
    };
    let main = render("dockfra-coord.1");
    let flat = main.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("NAME dockfra-coord - dockfra coordinator"), "{main}");
    assert!(main.contains("dockfra-coord-deploy(1)"), "the main page lists the commands' pages:\n{main}");
    let upgrade = render("dockfra-coord-agent-upgrade.1");
    assert!(upgrade.contains("--trial-timeout") && upgrade.contains("--binaries"), "{upgrade}");
    // The page on stdout is the main one.
    let stdout = w.coord(&["man"]).ok().stdout();
    assert_eq!(stdout, std::fs::read_to_string(dir.join("dockfra-coord.1")).unwrap());
}
