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

/// `validate` refuses a blue-green target whose fronted service cannot run twice, naming the
/// target's strategy key and the service, before any build; fixed, it passes.
#[test]
fn validate_names_a_service_that_cannot_run_in_two_slots() {
    let w = World::new("validate-slots");
    w.write(
        "project/deploy-targets.yaml",
        "targets:\n  vps:\n    host: 127.0.0.1\n    platform: docker_compose\n    config: { strategy: blue-green, proxy: { health_path: /up } }\n",
    );
    w.write(
        "project/compose.yaml",
        "services:\n  web:\n    image: nginx:1.25\n    container_name: shop-web\n    ports: [\"8080:80\"]\n  db:\n    image: postgres:16\n",
    );
    let root = w.project.to_str().unwrap();
    let (code, r) = w.coord_json(&["validate", "--root", root, "--output", "json"]);
    assert_eq!(code, 5, "{r:#}");
    let f = r["findings"].as_array().unwrap().iter().find(|f| f["severity"] == "error").cloned().unwrap();
    assert_eq!(f["key"], "targets.vps.config.strategy", "{f:#}");
    let msg = f["message"].as_str().unwrap();
    assert!(msg.contains("\"web\"") && msg.contains("container_name"), "{msg}");
    assert!(f["file"].as_str().unwrap().ends_with("deploy-targets.yaml"), "{f:#}");
    w.write(
        "project/compose.yaml",
        "services:\n  web:\n    image: nginx:1.25\n    ports: [\"8080:80\"]\n  db:\n    image: postgres:16\n",
    );
    let (code, r) = w.coord_json(&["validate", "--root", root, "--output", "json"]);
    assert_eq!((code, r["errors"].as_u64()), (0, Some(0)), "{r:#}");
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

/// Unmounts a tmpfs the test mounted, whatever happens.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `check` against real agents: a push agent whose state dir is a 1 MiB tmpfs cannot take a
/// 2 MiB release (disk fails, category resource), and a host port the app publishes that
/// something else holds fails on both the push and the pull agent; released, it passes.
#[test]
fn check_catches_a_taken_host_port_and_a_too_small_disk() {
    if Needs::new().root("mount a tmpfs as an agent's state dir").unmet() {
        return;
    }
    let w = World::new("check");
    let (port, agent_port) = (free_port(), free_port());
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            "targets:\n  small:\n    host: 127.0.0.1\n    platform: docker_compose\n    agent: {{ port: {agent_port} }}\n  roomy:\n    platform: docker_compose\n    agent: {{ mode: pull, poll_interval: 1s }}\n"
        ),
    );
    w.write(
        "project/compose.yaml",
        &format!("services:\n  web:\n    image: busybox:1.36\n    ports: [\"{port}:80\"]\n    mem_reservation: 1m\n"),
    );
    w.write("project/big.bin", &"x".repeat(2 << 20));
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let coordinator = format!("https://{}", w.addr());

    let mut small = Agent::new(&w, "small");
    std::fs::create_dir_all(&small.state).unwrap();
    sh(&format!("mount -t tmpfs -o size=1m tmpfs {}", small.state.display()));
    let _mounted = Mounted(small.state.clone());
    small.listen = Some(format!("127.0.0.1:{agent_port}"));
    small.enroll(&coordinator, &w.token("small")).ok();
    let _small = small.start(&w);
    let roomy = Agent::new(&w, "roomy");
    roomy.enroll(&coordinator, &w.token("roomy")).ok();
    let _roomy = roomy.start(&w);

    let hold = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let item = |r: &serde_json::Value, target: &str, name: &str| -> serde_json::Value {
        let t = r["targets"].as_array().unwrap().iter().find(|t| t["target"] == target).cloned().unwrap();
        t["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or(serde_json::Value::Null)
    };
    // The pull agent has reported since the port was taken.
    wait_until("the pull agent's report to show the taken port", std::time::Duration::from_secs(20), || {
        let (_, r) = w.coord_json(&["check", "roomy", "--output", "json"]);
        item(&r, "roomy", "ports")["result"] == "fail"
    });

    let (code, r) = w.coord_json(&["check", "--all", "--output", "json"]);
    assert_eq!(code, 5, "{r:#}");
    assert_eq!(r["result"], "fail");
    let disk = item(&r, "small", "disk");
    assert_eq!((disk["result"].as_str(), disk["category"].as_str()), (Some("fail"), Some("resource")), "{r:#}");
    assert!(disk["message"].as_str().unwrap().contains("not enough disk"), "{disk:#}");
    assert!(!disk["fix"].as_str().unwrap().is_empty());
    assert_eq!(item(&r, "roomy", "disk")["result"], "ok", "{r:#}");
    for t in ["small", "roomy"] {
        let ports = item(&r, t, "ports");
        assert_eq!(ports["result"], "fail", "{t}: {r:#}");
        assert!(ports["message"].as_str().unwrap().contains(&format!("{port}/tcp")), "{t}: {ports:#}");
        assert_eq!(item(&r, t, "agent")["result"], "ok", "{t}: {r:#}");
        assert_eq!(item(&r, t, "memory")["result"], "ok", "{t}: {r:#}");
    }
    // The table says the same, with the fixes.
    let table = w.coord(&["check", "small"]);
    assert_eq!(table.code(), 5);
    assert!(table.stdout().contains("fix small disk (resource)"), "{}", table.stdout());

    drop(hold);
    let (_, r) = w.coord_json(&["check", "small", "--output", "json"]);
    assert_eq!(item(&r, "small", "ports")["result"], "ok", "the push agent is asked now: {r:#}");
    wait_until("the pull agent's report to show the port free", std::time::Duration::from_secs(20), || {
        let (_, r) = w.coord_json(&["check", "roomy", "--output", "json"]);
        item(&r, "roomy", "ports")["result"] == "ok"
    });
    // A selector no target matches is an error, not an empty success.
    let none = w.coord(&["check", "-l", "env=nowhere"]);
    assert_eq!(none.code(), 1, "{}", none.stderr());
}

/// A local HTTP receiver (Python's http.server): each POST as a JSON line in `out`, with
/// whether its HMAC-SHA256 signature (checked by Python's hmac) is valid; the first
/// `fail_first` requests are answered 503 (retries must bring them again).
const RECEIVER: &str = r#"
import hashlib, hmac, http.server, json, sys
out, secret, fail_first, port_file = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3]), sys.argv[4]
seen = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        global seen
        body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
        seen += 1
        if seen <= fail_first:
            self.send_response(503); self.end_headers(); return
        sig = self.headers.get('X-Dockfra-Signature-256', '')
        good = 'sha256=' + hmac.new(secret, body, hashlib.sha256).hexdigest()
        rec = {'path': self.path, 'body': json.loads(body), 'signed': sig != '', 'valid': hmac.compare_digest(sig, good),
               'event': self.headers.get('X-Dockfra-Event'), 'delivery': self.headers.get('X-Dockfra-Delivery')}
        with open(out, 'a') as f:
            f.write(json.dumps(rec) + '\n')
        self.send_response(200); self.end_headers()
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
open(port_file, 'w').write(str(s.server_address[1]))
s.serve_forever()
"#;

/// An SMTP sink (Python's smtpd): each message as a JSON line in `out`.
const SMTP_SINK: &str = r#"
import asyncore, json, smtpd, sys
out, port = sys.argv[1], int(sys.argv[2])
class S(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        with open(out, 'a') as f:
            f.write(json.dumps({'from': mailfrom, 'to': rcpttos, 'data': data.decode('utf-8', 'replace')}) + '\n')
S(('127.0.0.1', port), None, decode_data=False)
asyncore.loop()
"#;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Notifications reach a local HTTP receiver (generic webhook with a valid HMAC, Slack and
/// Discord formats, a 503 retried) and an SMTP sink after a deploy, a rollback and a failed
/// wave; a receiver that hangs and one that is down neither slow nor fail the deploy, and
/// no log line repeats a webhook URL's token.
#[test]
fn notifications_reach_webhooks_and_mail_after_deploys_rollbacks_and_waves() {
    if Needs::new().tool("python3", "Debian's python3").unmet() {
        return;
    }
    let w = World::new("notify");
    let (agent_port, smtp_port, down_port) = (free_port(), free_port(), free_port());
    let hooks = w.path("hooks.jsonl");
    let mails = w.path("mails.jsonl");
    w.write("receiver.py", RECEIVER);
    w.write("smtp.py", SMTP_SINK);
    let port_file = w.path("receiver.port");
    let _receiver = Child(
        std::process::Command::new("python3")
            .arg(w.path("receiver.py"))
            .args([hooks.to_str().unwrap(), "s3cret", "1", port_file.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    let _smtp = Child(
        std::process::Command::new("python3")
            .arg("-W")
            .arg("ignore")
            .arg(w.path("smtp.py"))
            .args([mails.to_str().unwrap(), &smtp_port.to_string()])
            .spawn()
            .unwrap(),
    );
    wait_until("the receiver to listen", std::time::Duration::from_secs(10), || port_file.exists());
    wait_until("the SMTP sink to listen", std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", smtp_port)).is_ok()
    });
    let hook_port = std::fs::read_to_string(&port_file).unwrap();
    // A receiver that accepts connections and never answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let d = w.dir.display();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: site, path: ./app }}
notifications:
  - type: webhook
    url: http://127.0.0.1:{hook_port}/hook
    secret_env: DOCKFRA_TEST_HOOK_SECRET
  - type: slack
    url: http://127.0.0.1:{hook_port}/slack/T000/B000/SLACKTOKEN
  - type: discord
    url: http://127.0.0.1:{hook_port}/discord/1234/DISCORDTOKEN
    events: [deploy, rollback]
  - type: email
    smtp: 127.0.0.1:{smtp_port}
    tls: none
    from: dockfra@example.org
    to: [ops@example.org, oncall@example.org]
  - type: webhook
    url: http://127.0.0.1:{hung_port}/hung/HUNGTOKEN
  - type: webhook
    url: http://127.0.0.1:{down_port}/down/DOWNTOKEN
targets:
  web:
    host: 127.0.0.1
    platform: ssh_raw
    labels: {{ role: web }}
    agent: {{ port: {agent_port} }}
    config: {{ deploy_path: {d}/deploy }}
  ghost:
    host: 127.0.0.1
    platform: ssh_raw
    labels: {{ role: ghost }}
    agent: {{ port: {down_port} }}
    config: {{ deploy_path: {d}/deploy-ghost }}
    notifications:
      - type: webhook
        url: http://127.0.0.1:{hook_port}/ghost-only
        events: [wave]
        failures_only: true
"#
        ),
    );
    w.write("project/app/index.html", "v1\n");
    w.init("127.0.0.1:0");
    let coord = w.serve_env(&[], &[("DOCKFRA_TEST_HOOK_SECRET", "s3cret")]);
    let mut agent = Agent::new(&w, "web");
    agent.listen = Some(format!("127.0.0.1:{agent_port}"));
    agent.enroll(&format!("https://{}", w.addr()), &w.token("web")).ok();
    let _agent = agent.start(&w);

    let hook = |path: &str, event: &str| -> Vec<serde_json::Value> {
        lines(&hooks).into_iter().filter(|r| r["path"] == path && r["body"]["event"] == event).collect()
    };
    // A deploy: every channel hears of it, and the deploy does not wait for any of them.
    let started = std::time::Instant::now();
    let r = w.coord(&["deploy", "web", "--output", "json"]).ok();
    let took = started.elapsed();
    assert_eq!(r.json()["result"], "succeeded", "{}", r.stdout());
    assert!(took < std::time::Duration::from_secs(8), "a hung receiver must not slow the deploy: {took:?}");
    wait_until("the webhook to hear of the deploy", std::time::Duration::from_secs(20), || {
        !hook("/hook", "deploy").is_empty()
    });
    let h = &hook("/hook", "deploy")[0];
    assert_eq!((h["signed"].as_bool(), h["valid"].as_bool()), (Some(true), Some(true)), "a valid HMAC: {h:#}");
    assert_eq!(h["event"], "deploy");
    assert_eq!((h["body"]["target"].as_str(), h["body"]["result"].as_str()), (Some("web"), Some("succeeded")), "{h:#}");
    assert_eq!(h["body"]["app"], "site");
    assert_eq!(h["body"]["operator"], "admin");
    // The receiver answered the first of the three requests 503: all three arriving proves
    // that one was retried.
    wait_until("slack and discord", std::time::Duration::from_secs(20), || {
        lines(&hooks).iter().any(|r| r["path"].as_str().unwrap().starts_with("/slack/"))
            && lines(&hooks).iter().any(|r| r["path"].as_str().unwrap().starts_with("/discord/"))
    });
    let all = lines(&hooks);
    let slack = all.iter().find(|r| r["path"].as_str().unwrap().starts_with("/slack/")).unwrap();
    assert!(slack["body"]["text"].as_str().unwrap().contains("deploy of site to web succeeded"), "{slack:#}");
    assert!(!slack["signed"].as_bool().unwrap(), "only the generic webhook is signed");
    let discord = all.iter().find(|r| r["path"].as_str().unwrap().starts_with("/discord/")).unwrap();
    assert!(discord["body"]["content"].as_str().unwrap().contains("deploy of site to web succeeded"), "{discord:#}");
    wait_until("the mail", std::time::Duration::from_secs(20), || !lines(&mails).is_empty());
    let m = &lines(&mails)[0];
    assert_eq!(m["from"], "dockfra@example.org");
    assert_eq!(m["to"], serde_json::json!(["ops@example.org", "oncall@example.org"]));
    let data = m["data"].as_str().unwrap();
    assert!(data.contains("Subject: [dockfra] deploy of site to web succeeded"), "{data}");
    assert!(data.contains("target:     web"), "{data}");

    // A rollback.
    w.write("project/app/index.html", "v2\n");
    w.coord(&["deploy", "web"]).ok();
    w.coord(&["rollback", "web"]).ok();
    wait_until("the rollback's webhook", std::time::Duration::from_secs(20), || !hook("/hook", "rollback").is_empty());
    assert_eq!(hook("/hook", "rollback")[0]["valid"], true);
    wait_until("the rollback's mail", std::time::Duration::from_secs(20), || {
        lines(&mails).iter().any(|m| m["data"].as_str().unwrap().contains("Subject: [dockfra] rollback of site to web"))
    });

    // A failed wave: the ghost target's agent is not there.
    let fleet = w.coord(&["deploy", "-l", "role=ghost", "--output", "json"]);
    assert_eq!(fleet.code(), 3, "{}{}", fleet.stdout(), fleet.stderr());
    wait_until("the failed wave's webhook", std::time::Duration::from_secs(30), || !hook("/hook", "wave").is_empty());
    let wave = &hook("/hook", "wave")[0];
    assert_eq!(wave["body"]["result"], "failed", "{wave:#}");
    assert_eq!(wave["body"]["failed"], serde_json::json!(["ghost"]));
    assert_eq!(wave["valid"], true);
    wait_until("the ghost's own failures-only hook", std::time::Duration::from_secs(20), || {
        !hook("/ghost-only", "wave").is_empty()
    });
    assert!(hook("/ghost-only", "deploy").is_empty(), "it asked for waves only");
    assert!(
        !lines(&hooks)
            .iter()
            .any(|r| r["path"].as_str().unwrap().starts_with("/discord/") && r["body"].to_string().contains("wave")),
        "discord asked for deploys and rollbacks only"
    );
    wait_until("the wave's mail", std::time::Duration::from_secs(20), || {
        lines(&mails).iter().any(|m| m["data"].as_str().unwrap().contains("wave 1/1 failed"))
    });

    // The receiver that is down is given up on, in the log, without its token.
    wait_until("the down receiver to be given up", std::time::Duration::from_secs(40), || {
        coord.log().contains("failed after 4 attempts")
    });
    let log = coord.log();
    for token in ["DOWNTOKEN", "HUNGTOKEN", "SLACKTOKEN", "DISCORDTOKEN", "s3cret"] {
        assert!(!log.contains(token), "the log repeats {token}:\n{log}");
    }
    assert!(log.contains(&format!("webhook http://127.0.0.1:{down_port}/…")), "{log}");
    drop(hung);
}

/// `rollback --plan`: the release that would come back, what changes and what stays, and
/// nothing done: the live release and the history are as they were.
#[test]
fn rollback_plan_says_what_would_come_back_and_changes_nothing() {
    let w = World::new("rollback-plan");
    let port = free_port();
    crate::project(&w, port, "", "");
    let (_coord, _agent, _run) = w.start_push("push", "edge-push", port);
    // Nothing deployed yet: nothing to go back to.
    let (code, none) = w.coord_json(&["rollback", "--plan", "edge-push", "--output", "json"]);
    assert_eq!(code, 0);
    assert!(none["plans"][0]["blocked"].as_str().unwrap().contains("no previous release"), "{none:#}");
    w.coord(&["deploy", "edge-push"]).ok();
    let first = crate::current(&w, "deploy-push");
    w.write("project/app/VERSION", "v2\n");
    w.coord(&["deploy", "edge-push"]).ok();
    let second = crate::current(&w, "deploy-push");
    let history = w.coord(&["history", "edge-push", "--output", "json"]).ok().json();

    let (code, r) = w.coord_json(&["rollback", "--plan", "edge-push", "--output", "json"]);
    assert_eq!(code, 0, "{r:#}");
    let p = &r["plans"][0];
    let name = |path: &str| std::path::Path::new(path).file_name().unwrap().to_string_lossy().to_string();
    assert_eq!(p["current_release"].as_str().unwrap(), name(&second), "{p:#}");
    assert_eq!(p["release"].as_str().unwrap(), name(&first), "{p:#}");
    assert_eq!(p["blocked"], "");
    assert_eq!(p["files_changed"], 1, "{p:#}");
    assert_eq!(p["files"][0]["path"], "VERSION");
    assert_eq!(p["bytes_to_move"], 0, "the agent keeps the release: {p:#}");
    assert!(p["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("swaps back")), "{p:#}");
    // The table names both releases.
    let table = w.coord(&["rollback", "--plan", "edge-push"]).ok().stdout();
    assert!(table.contains(&format!("{} -> {}", name(&second), name(&first))), "{table}");
    // No side effect.
    assert_eq!(crate::current(&w, "deploy-push"), second);
    assert_eq!(w.coord(&["history", "edge-push", "--output", "json"]).ok().json(), history);
    // By selector, every matching target; a release of another target is refused with --all.
    let (_, all) = w.coord_json(&["rollback", "--plan", "--all", "--output", "json"]);
    assert_eq!(all["plans"].as_array().unwrap().len(), 3, "{all:#}");
    let r = w.coord(&["rollback", "--plan", "-l", "env=nowhere"]);
    assert_eq!(r.code(), 1, "{}", r.stderr());

    // DEPLOYED.md: the live release, who deployed it, since when, the previous one.
    let md_path = w.path("DEPLOYED.md");
    w.coord(&["report", "--out", md_path.to_str().unwrap()]).ok();
    let md = std::fs::read_to_string(&md_path).unwrap();
    let row = md.lines().find(|l| l.starts_with("| edge-push |")).unwrap_or_else(|| panic!("{md}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[2], "web", "{row}");
    assert_eq!(cells[4], name(&second), "{row}");
    assert_eq!(cells[6], "healthy", "{row}");
    assert!(cells[7].ends_with(" UTC"), "{row}");
    assert_eq!(cells[8], "admin", "{row}");
    assert_eq!(cells[9], name(&first), "{row}");
    assert!(md.lines().any(|l| l.starts_with("| edge-pull |") && l.contains("not deployed")), "{md}");
    assert!(md.contains(&format!("`dockfra-coord rollback edge-push` brings back {}", name(&first))), "{md}");
    let only = w.coord(&["report", "-l", "env=test", "--out", "-"]).ok().stdout();
    assert!(only.contains("| edge-push |") && !only.contains("| edge-pull |"), "{only}");

    // The same tools over the REST API.
    let token = w.api_token();
    let (status, md) = w.api("GET", "/api/report?selector=env%3Dtest", Some(&token), None);
    assert_eq!(status, 200);
    assert!(md.as_str().unwrap().contains("| edge-push |"), "{md}");
    let (status, plans) = w.api("GET", "/api/rollback-plan?target=edge-push", Some(&token), None);
    assert_eq!(status, 200);
    assert_eq!(plans["plans"][0]["release"].as_str().unwrap(), name(&first), "{plans:#}");
    let (status, unit) = w.api("GET", "/api/generate/systemd?target=edge-push", Some(&token), None);
    assert_eq!(status, 200, "{unit}");
    assert!(
        unit.as_str().unwrap().contains(&format!("WorkingDirectory={}/deploy-push/web/current", w.dir.display())),
        "{unit}"
    );
    let (status, err) = w.api("GET", "/api/generate/caddy?target=edge-push", Some(&token), None);
    assert_eq!(status, 409, "an ssh_raw target publishes no port: {err:#}");
    assert_eq!(err["category"], "configuration", "{err:#}");
}

/// `generate`: Caddyfile entries Caddy itself accepts (`caddy adapt`), systemd units that
/// `systemd-analyze verify` accepts, and a starter compose file `validate` accepts; nothing
/// overwritten without --force.
#[test]
fn generate_writes_caddy_systemd_and_compose_files_their_tools_accept() {
    if Needs::new().tool("caddy", "Debian's caddy (scripts/setup)").tool("systemd-analyze", "Debian's systemd").unmet()
    {
        return;
    }
    let w = World::new("generate");
    let d = w.dir.display();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            "app: {{ name: shop }}\ntargets:\n  vps:\n    platform: docker_compose\n  pi:\n    platform: docker_compose\n  edge:\n    platform: ssh_raw\n    user: root\n    config: {{ deploy_path: {d}/apps, service_manager: systemd, service_name: shop-edge }}\n"
        ),
    );
    w.write(
        "project/compose.yaml",
        "services:\n  web:\n    image: nginx:1.27\n    ports: [\"8080:80\", \"8443:443\"]\n  api:\n    image: nginx:1.27\n    ports: [\"127.0.0.1:9000:9000\", \"5353:53/udp\"]\n  db:\n    image: postgres:16\n",
    );
    w.write("project/start", "#!/bin/sh\nexec sleep 1000\n");
    sh(&format!("chmod +x {}/project/start", d));
    let root = w.project.to_str().unwrap();

    let caddyfile = w.coord(&["generate", "caddy", "--root", root, "--domain", "example.org"]).ok().stdout();
    assert!(caddyfile.contains("web.vps.example.org {\n\treverse_proxy 127.0.0.1:8080\n}"), "{caddyfile}");
    assert!(caddyfile.contains("web-8443.vps.example.org {"), "{caddyfile}");
    assert!(caddyfile.contains("api.pi.example.org {\n\treverse_proxy 127.0.0.1:9000\n}"), "{caddyfile}");
    assert!(
        !caddyfile.contains("5353") && !caddyfile.contains("db."),
        "UDP and unpublished services are not proxied:\n{caddyfile}"
    );
    let one =
        w.coord(&["generate", "caddy", "--root", root, "--target", "vps", "--upstream", "127.0.0.2"]).ok().stdout();
    assert!(one.contains("web.localhost {\n\treverse_proxy 127.0.0.2:8080\n}"), "{one}");
    w.write("Caddyfile", &caddyfile);
    let mut adapt = std::process::Command::new("caddy");
    adapt.args(["adapt", "--adapter", "caddyfile", "--config"]).arg(w.path("Caddyfile"));
    let r = run(adapt);
    assert_eq!(r.code(), 0, "caddy adapt: {}", r.stderr());
    assert!(r.stdout().contains("web.vps.example.org"), "{}", r.stdout());

    let units = w.path("units");
    w.coord(&["generate", "systemd", "--root", root, "--out", units.to_str().unwrap()]).ok();
    let unit = std::fs::read_to_string(units.join("shop-edge.service")).unwrap();
    assert!(unit.contains(&format!("WorkingDirectory={d}/apps/shop/current")), "{unit}");
    assert!(unit.contains(&format!("ExecStart={d}/apps/shop/current/start")), "{unit}");
    // As after a deploy: the release's start script in place.
    std::fs::create_dir_all(w.path("apps/shop/current")).unwrap();
    std::fs::copy(w.project.join("start"), w.path("apps/shop/current/start")).unwrap();
    let mut verify = std::process::Command::new("systemd-analyze");
    verify.arg("verify").arg(units.join("shop-edge.service"));
    let r = run(verify);
    assert_eq!(r.code(), 0, "systemd-analyze verify: {}{}", r.stdout(), r.stderr());
    let again = w.coord(&["generate", "systemd", "--root", root, "--out", units.to_str().unwrap()]);
    assert_eq!(again.code(), 1, "exists: {}", again.stderr());
    w.coord(&["generate", "systemd", "--root", root, "--out", units.to_str().unwrap(), "--force"]).ok();
    let r = w.coord(&["generate", "systemd", "--root", root, "--target", "vps"]);
    assert!(r.stderr().contains("ssh_raw"), "{}", r.stderr());

    // compose: the resolved services, and a starter for a static site.
    let resolved = w.coord(&["generate", "compose", "--root", root, "--target", "pi"]).ok().stdout();
    assert!(resolved.contains("web:") && resolved.contains("8080:80"), "{resolved}");
    w.write(
        "site/deploy-targets.yaml",
        "app: {name: site}\ntargets:\n  local:\n    host: 127.0.0.1\n    platform: docker_compose\n",
    );
    w.write("site/index.html", "<h1>hi</h1>\n");
    let site = w.path("site");
    let out = site.join("compose.yaml");
    w.coord(&["generate", "compose", "--root", site.to_str().unwrap(), "--out", out.to_str().unwrap()]).ok();
    let (code, report) = w.coord_json(&["validate", "--root", site.to_str().unwrap(), "--output", "json"]);
    assert_eq!((code, report["errors"].as_u64()), (0, Some(0)), "{report:#}");
    let before = std::fs::read(&out).unwrap();
    let r = w.coord(&["generate", "compose", "--root", site.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(r.code(), 1);
    assert_eq!(std::fs::read(&out).unwrap(), before, "kept without --force");
}

/// Errors that reach an operator carry a category and a fix: an unreachable coordinator is
/// connectivity, a broken deploy-targets.yaml configuration, an unknown target (an answer of
/// the coordinator) configuration too.
#[test]
fn errors_carry_a_category_and_a_fix() {
    let w = World::new("categories");
    w.init("127.0.0.1:0");
    let r = w.coord(&["--coordinator", &format!("127.0.0.1:{}", free_port()), "status"]).fails();
    assert!(r.stderr().contains("\n  category: connectivity\n  fix: "), "{}", r.stderr());
    w.write("project/deploy-targets.yaml", "targets:\n  vps:\n    platform: docker_compose\n    colour: red\n");
    let r = w.coord(&["env", "--root", w.project.to_str().unwrap()]).fails();
    assert!(r.stderr().contains("colour") && r.stderr().contains("category: configuration"), "{}", r.stderr());
    w.write("project/deploy-targets.yaml", "targets:\n  vps:\n    platform: ssh_raw\n");
    let _coord = w.serve(&[]);
    let r = w.coord(&["deploy", "nope"]).fails();
    assert!(r.stderr().contains("\"nope\"") && r.stderr().contains("category: configuration"), "{}", r.stderr());
    // The REST API's errors say the same.
    let token = w.api_token();
    let (status, body) = w.api("GET", "/api/deploy-targets/nope", Some(&token), None);
    assert_eq!(status, 404);
    assert_eq!(body["category"], "configuration", "{body:#}");
    assert!(!body["fix"].as_str().unwrap().is_empty());
}

/// On a terminal (a pty from `script`), a deploy and a fleet deploy redraw a status line in
/// place; with NO_COLOR, nothing is colored; in a pipe, plain lines only.
#[test]
fn progress_is_live_on_a_terminal_and_plain_in_a_pipe() {
    if Needs::new().tool("script", "Debian's bsdutils").unmet() {
        return;
    }
    let w = World::new("progress");
    let port = free_port();
    crate::project(&w, port, "", "");
    let (_coord, _agent, _run) = w.start_push("push", "edge-push", port);
    let on_tty = |args: &str| -> String {
        let cmd = format!("{} --state-dir {} {args}", bin("dockfra-coord").display(), w.coord_state.display());
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]).env("NO_COLOR", "1").env("DOCKFRA_LOG", "info");
        let r = run(c);
        assert_eq!(r.code(), 0, "{}{}", r.stdout(), r.stderr());
        r.stdout()
    };
    let out = on_tty("deploy edge-push");
    assert!(out.contains("\r\x1b[2K[edge-push]"), "a status line redrawn in place: {out:?}");
    assert!(out.contains("is live and healthy"), "{out:?}");
    let sgr = |s: &str| {
        s.split("\x1b[")
            .skip(1)
            .any(|rest| rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';').starts_with('m'))
    };
    assert!(!sgr(&out), "NO_COLOR: no color codes: {out:?}");
    w.write("project/app/VERSION", "v2\n");
    let fleet = on_tty("deploy -l env=test");
    assert!(fleet.contains("targets done") && fleet.contains("[####################]"), "{fleet:?}");
    // The audit trail has the wave's end, with who ran it.
    let events = w.coord(&["events", "--output", "json"]).ok().json();
    assert!(
        events.as_array().unwrap().iter().any(|e| e["kind"] == "fleet-wave"
            && e["message"].as_str().unwrap().contains("wave 1/1 succeeded")
            && e["operator"] == "admin"),
        "{events:#}"
    );
    // In a pipe: the same steps as plain lines, nothing redrawn.
    w.write("project/app/VERSION", "v3\n");
    let r = w.coord(&["deploy", "edge-push"]).ok();
    assert!(!r.stderr().contains('\r') && r.stderr().contains("[edge-push]"), "{:?}", r.stderr());
}

/// `--output json` on the actions too: join tokens, API tokens and their revocation, the
/// signing key.
#[test]
fn actions_speak_json_too() {
    let w = World::new("json-actions");
    w.write("project/deploy-targets.yaml", "targets:\n  vps:\n    platform: ssh_raw\n");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let (code, t) = w.coord_json(&["token", "create", "vps", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(t["agent"], "vps");
    assert!(t["token"].as_str().unwrap().len() > 20, "{t:#}");
    let (_, api) = w.coord_json(&["operator", "token", "--label", "ci", "--output", "json"]);
    let id = api["id"].as_str().unwrap().to_string();
    assert_eq!(api["operator"], "admin");
    let (code, revoked) = w.coord_json(&["operator", "revoke-token", &id, "--output", "json"]);
    assert_eq!(code, 0, "{revoked:#}");
    assert_eq!(revoked["id"], id.as_str());
    let (_, key) = w.coord_json(&["signing-key", "show", "--output", "json"]);
    assert!(key["fingerprint"].as_str().is_some_and(|f| !f.is_empty()), "{key:#}");
    assert_eq!(key["rotations"], 0);
}
