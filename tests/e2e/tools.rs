//! The operator's daily tools: `setup` writes a deploy-targets.yaml that `validate` accepts,
//! in every project of the corpus; `validate` reports a broken project with the documented
//! exit status and JSON.
use dockfra_e2e::*;

/// `setup --non-interactive` in a copy of every awesome-compose project, then `validate`:
/// no project gets an error, and what setup detected is what the file says.
#[test]
fn setup_writes_a_file_validate_accepts_in_every_corpus_project() {
    let w = World::new("setup-corpus");
    let corpus = dockfra_common::shared_dir(&workspace()).join("corpus/awesome-compose");
    let copy = w.path("corpus");
    let mut c = std::process::Command::new("cp");
    c.arg("-r").arg(&corpus).arg(&copy);
    assert_eq!(run(c).code(), 0);
    let mut n = 0;
    for entry in std::fs::read_dir(&copy).unwrap().flatten() {
        let dir = entry.path();
        let Some(compose) = dockfra_common::compose::find_compose_file(&dir) else { continue };
        let d = dir.to_str().unwrap();
        let out = w.coord(&["setup", d, "--non-interactive"]).ok().stdout();
        assert!(out.contains("validate: 0 error(s)"), "{d}: {out}");
        let (code, report) = w.coord_json(&["validate", "--root", d, "--output", "json"]);
        assert_eq!((code, report["errors"].as_u64()), (0, Some(0)), "{d}: {report:#}");
        let text = std::fs::read_to_string(dir.join("deploy-targets.yaml")).unwrap();
        let builds = std::fs::read_to_string(&compose).unwrap().contains("build:");
        assert_eq!(text.contains("images: bundle"), builds, "{d}: images carried iff a service is built:\n{text}");
        n += 1;
    }
    assert!(n >= 30, "every project of the corpus ({n})");

    // Flags: several targets, a mode, labels; an existing file is kept, --force replaces it.
    let d = copy.join("nginx-golang-mysql");
    let ds = d.to_str().unwrap();
    let before = std::fs::read(d.join("deploy-targets.yaml")).unwrap();
    let r = w.coord(&["setup", ds, "--target", "vps=127.0.0.1"]).fails();
    assert!(r.stderr().contains("exists") && r.stderr().contains("--force"), "{}", r.stderr());
    assert_eq!(std::fs::read(d.join("deploy-targets.yaml")).unwrap(), before, "kept as it was");
    let r = w.coord(&["setup", ds, "--force", "--target", "Bad_Id"]).fails();
    assert!(r.stderr().contains("Bad_Id"), "{}", r.stderr());
    assert_eq!(std::fs::read(d.join("deploy-targets.yaml")).unwrap(), before, "bad input changes nothing");
    w.coord(&[
        "setup",
        ds,
        "--force",
        "--target",
        "vps=127.0.0.1",
        "--target",
        "edge-rpi3",
        "--mode",
        "pull",
        "--label",
        "env=prod",
        "--os",
        "linux",
    ])
    .ok();
    let (_, targets) = w.coord_json(&["validate", "--root", ds, "--output", "json"]);
    assert_eq!(targets["errors"], 0, "{targets:#}");
    let p = dockfra_common::config::load(&d.join("deploy-targets.yaml")).unwrap();
    let ids: Vec<&str> = p.targets.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["vps", "edge-rpi3"]);
    assert!(p.targets.iter().all(|t| t.agent.mode == dockfra_common::config::Mode::Pull
        && t.labels.get("env").map(String::as_str) == Some("prod")
        && t.os.as_deref() == Some("linux")));

    // Plain files with a systemd unit: ssh_raw restarting it.
    w.write("plain/site/index.html", "<h1>hi</h1>\n");
    w.write("plain/site/web.service", "[Service]\nExecStart=/bin/true\n");
    let site = w.path("plain/site");
    w.coord(&["setup", site.to_str().unwrap(), "--non-interactive"]).ok();
    let p = dockfra_common::config::load(&site.join("deploy-targets.yaml")).unwrap();
    assert!(
        matches!(
            &p.targets[0].config,
            dockfra_common::config::PlatformConfig::SshRaw { service_manager: dockfra_common::config::ServiceManager::Systemd, service_name: Some(n), .. } if n == "web"
        ),
        "{:?}",
        p.targets[0].config
    );
}

/// A broken project: exit 5, one finding naming file, target, service and key; `--strict`
/// fails on warnings; a valid project exits 0.
#[test]
fn validate_exit_codes_and_json_name_the_defect() {
    let w = World::new("validate-cli");
    w.write(
        "project/deploy-targets.yaml",
        "targets:\n  vps:\n    host: 127.0.0.1\n    platform: docker_compose\n  pi:\n    platform: docker_compose\n    agent: {mode: pull}\n",
    );
    w.write(
        "project/compose.yaml",
        "services:\n  web:\n    image: nginx:1.25\n    ports: [\"8080:80\"]\n  api:\n    image: nginx:1.25\n    ports: [\"8080:8080\"]\n",
    );
    let root = w.project.to_str().unwrap();
    let (code, r) = w.coord_json(&["validate", "--root", root, "--output", "json"]);
    assert_eq!(code, 5, "{r:#}");
    assert_eq!(r["errors"], 1, "{r:#}");
    let f = &r["findings"][0];
    assert_eq!(f["severity"], "error");
    assert!(f["file"].as_str().unwrap().ends_with("compose.yaml"), "{f:#}");
    assert_eq!(f["service"], "web", "{f:#}");
    assert_eq!(f["key"], "services.web.ports[0]", "{f:#}");
    assert_eq!(f["targets"], serde_json::json!(["vps", "pi"]), "one finding for both targets: {f:#}");
    let table = w.coord(&["validate", "--root", root]);
    assert_eq!(table.code(), 5);
    assert!(table.stdout().contains("error: ") && table.stdout().contains("  fix: "), "{}", table.stdout());

    // Fixed, with a warning left (an untagged image): 0, and 5 with --strict.
    w.write(
        "project/compose.yaml",
        "services:\n  web:\n    image: nginx\n    ports: [\"8080:80\"]\n  api:\n    image: nginx:1.25\n    ports: [\"8081:8080\"]\n",
    );
    assert_eq!(w.coord(&["validate", "--root", root]).code(), 0);
    assert_eq!(w.coord(&["validate", "--root", root, "--strict"]).code(), 5);
    // Nothing to validate: exit 1 with a clear error.
    let empty = w.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let r = w.coord(&["validate", "--root", empty.to_str().unwrap()]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("dockfra-coord setup"), "{}", r.stderr());
}

/// `env`: each variable with its value and source, the precedence documented, secrets masked,
/// in the table and in JSON; an unknown target is an error naming it.
#[test]
fn env_resolves_each_target_with_sources_and_masks_secrets() {
    let w = World::new("env-cli");
    w.write(
        "project/deploy-targets.yaml",
        "targets:\n  prod:\n    platform: docker_compose\n    labels: {env: production}\n    env: {TAG: '1.25'}\n  dev:\n    platform: docker_compose\n",
    );
    w.write("project/.env", "TAG=latest\nREGION=eu\nDB_PASSWORD=hunter2\n");
    w.write("project/.env.production", "REGION=eu-central\n");
    w.write(
        "project/compose.yaml",
        "services:\n  web:\n    image: nginx:${TAG}\n    environment:\n      REGION: ${REGION}\n      DB_PASSWORD: ${DB_PASSWORD}\n",
    );
    let root = w.project.to_str().unwrap();
    let (code, all) = w.coord_json(&["env", "--root", root, "--output", "json"]);
    assert_eq!(code, 0);
    let var = |t: usize, name: &str| {
        let v = all[t]["variables"].as_array().unwrap().iter().find(|v| v["name"] == name).cloned().unwrap();
        (v["value"].as_str().unwrap().to_string(), v["source"].as_str().unwrap().to_string())
    };
    assert_eq!(all[0]["target"], "prod");
    assert_eq!(var(0, "TAG"), ("1.25".into(), "target env:".into()));
    assert_eq!(var(0, "REGION"), ("eu-central".into(), ".env.production".into()));
    assert_eq!(var(1, "REGION"), ("eu".into(), ".env".into()));
    assert_eq!(var(1, "DB_PASSWORD"), ("********".into(), ".env".into()));
    let table = w.coord(&["env", "--root", root, "--target", "prod"]).ok().stdout();
    assert!(!table.contains("hunter2"), "a secret never printed:\n{table}");
    assert!(
        table.lines().any(|l| l.contains("service web") && l.contains("REGION") && l.contains("eu-central")),
        "{table}"
    );
    let r = w.coord(&["env", "--root", root, "--target", "nope"]).fails();
    assert!(r.stderr().contains("\"nope\""), "{}", r.stderr());
}
