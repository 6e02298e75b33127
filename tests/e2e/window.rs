//! The operator's window: the REST API over real HTTPS (curl) and the dashboard in Debian's
//! Chromium (Playwright's `playwright-core`, tests/browser), against a running coordinator
//! with real push and pull agents. What the page or the API says is checked on disk too. The
//! OpenAPI document is exercised by schemathesis against the running server.
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use dockfra_e2e::*;

use crate::{current, live_version, project};

/// A server-sent-events stream read with curl until the server ends it (or `secs` pass):
/// `(event, data)` pairs.
fn sse(w: &World, path: &str, token: &str, secs: u64) -> Vec<(String, serde_json::Value)> {
    let out = Command::new("curl")
        .args(["-sS", "-N", "--max-time", &secs.to_string(), "--cacert"])
        .arg(w.path("coord/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://{}{path}", w.http_addr()))
        .output()
        .expect("curl");
    parse_sse(&String::from_utf8_lossy(&out.stdout))
}

fn parse_sse(text: &str) -> Vec<(String, serde_json::Value)> {
    let mut events = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if line.is_empty() && !name.is_empty() {
            let v = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data.clone()));
            events.push((std::mem::take(&mut name), v));
            data.clear();
        }
    }
    events
}

/// POST a deploy or rollback, then follow its stream to the end: (the 202's deployment,
/// every streamed event, the final deployment).
fn run_and_follow(
    w: &World,
    token: &str,
    path: &str,
    body: &str,
) -> (serde_json::Value, Vec<(String, serde_json::Value)>, serde_json::Value) {
    let (code, dep) = w.api("POST", path, Some(token), Some(body));
    assert_eq!(code, 202, "{path}: {dep}");
    let id = dep["id"].as_str().unwrap().to_string();
    let events = sse(w, &format!("/api/deployments/{id}/stream"), token, 120);
    let end = events.iter().find(|(n, _)| n == "end").map(|(_, v)| v.clone()).unwrap_or_else(|| {
        panic!("{path}: the stream of {id} ended without `end`: {events:?}");
    });
    assert_eq!(end["id"], id.as_str());
    (dep, events, end)
}

/// curl `path` with operator admin's client certificate (no token): what it printed.
fn with_admin_cert(w: &World, args: &[&str], path: &str) -> String {
    let out = Command::new("curl")
        .arg("-sS")
        .args(args)
        .arg("--cacert")
        .arg(w.path("coord/ca.crt"))
        .arg("--cert")
        .arg(w.path("coord/operators/admin.crt"))
        .arg("--key")
        .arg(w.path("coord/operators/admin.key"))
        .arg(format!("https://{}{path}", w.http_addr()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Files in the coordinator's blob store.
fn stored_blobs(w: &World) -> usize {
    snapshot(&w.path("coord/blobs")).iter().filter(|(_, h)| h != "dir" && !h.starts_with("-> ")).count()
}

fn start_world(name: &str) -> (World, Proc, Agent, Proc, Agent, Proc, String) {
    let w = World::new(name);
    let port = free_port();
    project(&w, port, "", "");
    w.init("127.0.0.1:0");
    // Push agents are asked for their status every second (30 s by default).
    let settings = w.path("coord/coordinator.json");
    let mut s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    s["push_probe_secs"] = serde_json::json!(1);
    std::fs::write(&settings, s.to_string()).unwrap();
    let coord = w.serve(&[]);
    let url = format!("https://{}", w.addr());
    let mut push = Agent::new(&w, "push");
    push.listen = Some(format!("127.0.0.1:{port}"));
    push.enroll(&url, &w.token("edge-push")).ok();
    let pull = Agent::new(&w, "pull");
    pull.enroll(&url, &w.token("edge-pull")).ok();
    let pa = push.start(&w);
    let pl = pull.start(&w);
    let token = w.api_token();
    assert!(token.starts_with("dkfo1."), "{token}");
    // A probe may have found the push agent before it listened: wait for the next one.
    wait_until("the push agent to answer its probe", Duration::from_secs(20), || {
        w.api("GET", "/api/deploy-targets/edge-push", Some(&token), None).1["state"] != "unreachable"
    });
    (w, coord, push, pa, pull, pl, token)
}

#[test]
fn rest_api_plans_deploys_streams_rolls_back_and_counts() {
    let (w, _coord, push, pa, _pull, _pl, token) = start_world("api");
    let t = Some(token.as_str());

    // The fleet before anything ran.
    let (code, list) = w.api("GET", "/api/deploy-targets", t, None);
    assert_eq!(code, 200, "{list}");
    let ids: Vec<&str> = list["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(ids, ["edge-push", "edge-pull", "edge-offline"]);
    assert_eq!(list["counts"]["never_deployed"], 3, "{list}");
    let (_, only) = w.api("GET", "/api/deploy-targets?label=env=test", t, None);
    assert_eq!(only["targets"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["targets"][0]["target"], "edge-push");

    // The plan of a first deploy: every file new, nothing stored, no sequence taken.
    let (code, plan) = w.api("GET", "/api/deploy-targets/edge-push/plan", t, None);
    assert_eq!(code, 200, "{plan}");
    assert_eq!(plan["files_changed"], 0);
    assert!(plan["files_added"].as_u64().unwrap() >= 3, "{plan}");
    assert!(plan["bytes_to_move"].as_u64().unwrap() >= 200 * 1024, "{plan}");
    assert_eq!(plan["changes"], true);
    assert_eq!(w.api("GET", "/api/deployments", t, None).1["deployments"], serde_json::json!([]));
    assert_eq!(stored_blobs(&w), 0, "a plan stored blobs");

    // Deploy v1 by push and follow it live: the steps stream, then the result.
    let fleet = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "25", "--cacert"])
        .arg(w.path("coord/ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("https://{}/api/stream", w.http_addr()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (dep, events, end) = run_and_follow(&w, &token, "/api/deploy/edge-push", "");
    assert_eq!(dep["status"], "queued");
    assert_eq!(dep["operator"], "admin");
    assert_eq!(end["status"], "succeeded", "{events:?}");
    // The steps: those recorded before the stream was opened come in its snapshot, the rest
    // as progress events; together, every step the agent reported, once each.
    assert_eq!(events.first().map(|(n, _)| n.as_str()), Some("snapshot"), "{events:?}");
    let mut steps: Vec<String> = events[0].1["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("").to_string())
        .collect();
    let seen = events[0].1["events"].as_array().unwrap().len();
    steps.extend(
        events.iter().filter(|(n, _)| n == "progress").map(|(_, v)| v["phase"].as_str().unwrap_or("").to_string()),
    );
    for want in ["deploy", "Verified", "Activated", "Healthy"] {
        assert_eq!(steps.iter().filter(|s| *s == want).count(), 1, "{want} in {steps:?} ({seen} in the snapshot)");
    }
    assert_eq!(live_version(&w, "deploy-push"), "v1");
    let v1 = current(&w, "deploy-push").trim_start_matches("releases/").to_string();
    let (_, st) = w.api("GET", "/api/deploy-targets/edge-push", t, None);
    assert_eq!(st["state"], "healthy", "{st}");
    assert_eq!(st["current_release"], v1.as_str());
    assert!(end["duration_ms"].as_u64().unwrap() > 0, "{end}");

    // The fleet stream saw the same deploy, with its target.
    let mut fleet = fleet;
    let _ = fleet.kill();
    let mut text = String::new();
    fleet.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let _ = fleet.wait();
    let fleet_events = parse_sse(&text);
    assert!(
        fleet_events.iter().any(|(n, v)| n == "progress" && v["target"] == "edge-push" && v["final"] == true),
        "{text}"
    );

    // v2: the plan names the one changed file and its bytes; the deploy moves only them.
    w.write("project/app/VERSION", "v2-changed\n");
    let (_, plan) = w.api("GET", "/api/deploy-targets/edge-push/plan", t, None);
    assert_eq!(plan["files_changed"], 1, "{plan}");
    assert_eq!(plan["files"][0]["path"], "VERSION");
    assert_eq!(plan["bytes_to_move"], "v2-changed\n".len());
    let (_, _, end) = run_and_follow(&w, &token, "/api/deploy/edge-push", r#"{"version": "2.0"}"#);
    assert_eq!(end["status"], "succeeded");
    assert_eq!(end["bytes"], "v2-changed\n".len(), "{end}");
    assert_eq!(live_version(&w, "deploy-push"), "v2-changed");

    // A pull target: queued, picked up at the agent's poll, followed to its result.
    let (_, _, end) = run_and_follow(&w, &token, "/api/deploy/edge-pull", "{}");
    assert_eq!(end["status"], "succeeded");
    assert_eq!(live_version(&w, "deploy-pull"), "v2-changed");

    // Rollback to the named first release, from history.
    let (_, st) = w.api("GET", "/api/deploy-targets/edge-push", t, None);
    let kept: Vec<&serde_json::Value> = st["releases"].as_array().unwrap().iter().collect();
    assert!(kept.iter().any(|r| r["name"] == v1.as_str() && r["rollback_ok"] == true), "{st}");
    assert_eq!(st["previous_release"], v1.as_str());
    let (_, _, end) = run_and_follow(&w, &token, "/api/rollback/edge-push", &format!(r#"{{"to_release": "{v1}"}}"#));
    assert_eq!(end["status"], "succeeded", "{end}");
    assert_eq!(end["action"], "rollback");
    assert_eq!(live_version(&w, "deploy-push"), "v1");

    // A failing health check: the result says why, the dot turns red, the agent rolled back.
    w.write("project/app/health.txt", "bad\n");
    w.write("project/app/VERSION", "v3-broken\n");
    let (_, _, end) = run_and_follow(&w, &token, "/api/deploy/edge-push", "");
    assert_eq!(end["status"], "failed", "{end}");
    assert!(end["reason"].as_str().unwrap().contains("health"), "{end}");
    assert_eq!(live_version(&w, "deploy-push"), "v1", "the agent did not roll the failed release back");
    let (_, st) = w.api("GET", "/api/deploy-targets/edge-push", t, None);
    assert_eq!(st["state"], "failed", "{st}");
    assert!(st["state_reason"].as_str().unwrap().contains("health"), "{st}");

    // History filters, one deployment with its events and who asked.
    let (_, failed) = w.api("GET", "/api/deployments?target=edge-push&result=failed", t, None);
    let failed = failed["deployments"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (_, all) = w.api("GET", "/api/deployments?target=edge-push&limit=2", t, None);
    assert_eq!(all["deployments"].as_array().unwrap().len(), 2);
    let (code, detail) = w.api("GET", &format!("/api/deployments/{}", failed[0]["id"].as_str().unwrap()), t, None);
    assert_eq!(code, 200);
    let evs = detail["events"].as_array().unwrap();
    assert!(evs.len() >= 3 && evs.iter().all(|e| e["operator"] == "admin"), "{detail}");

    // deploy-test, the plugins, the audit trail, the metrics.
    let (code, dt) = w.api("POST", "/api/deploy-test/edge-push", t, None);
    assert_eq!(code, 200, "{dt}");
    assert_eq!(dt["reachable"], true);
    let (_, plugins) = w.api("GET", "/api/deploy-plugins", t, None);
    let p = plugins["plugins"].as_array().unwrap();
    let ssh = p.iter().find(|p| p["name"] == "ssh_raw").unwrap();
    assert_eq!(ssh["supported"], true);
    assert!(ssh["agents"].as_array().unwrap().iter().any(|a| a == "edge-push"), "{ssh}");
    // All six platforms deploy.
    assert_eq!(p.len(), 6, "{p:?}");
    assert!(p.iter().all(|p| p["supported"] == true), "{p:?}");
    let (_, audit) = w.api("GET", "/api/events?target=edge-push&limit=500", t, None);
    assert!(
        audit["events"].as_array().unwrap().iter().any(|e| e["kind"] == "rollback" && e["operator"] == "admin"),
        "{audit}"
    );
    let (code, metrics) = w.api("GET", "/metrics", t, None);
    assert_eq!(code, 200);
    let m = metrics.as_str().unwrap();
    let value = |line: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{m}"))
    };
    assert!(value("dockfra_deploys_total{platform=\"ssh_raw\",result=\"succeeded\"}") >= 4.0, "{m}");
    assert_eq!(value("dockfra_deploys_total{platform=\"ssh_raw\",result=\"failed\"}"), 1.0);
    assert!(value("dockfra_deploy_duration_seconds_count{platform=\"ssh_raw\"}") >= 5.0);
    assert!(value("dockfra_bundle_bytes_moved_total{platform=\"ssh_raw\"}") >= 400.0 * 1024.0);
    assert!(value("dockfra_agents_connected") >= 2.0, "{m}");
    assert_eq!(value("dockfra_targets{state=\"failed\"}"), 1.0);

    // The CLI reads the same typed replies.
    let h = w.coord(&["history", "edge-push", "--result", "failed", "--output", "json"]).ok().json();
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");
    let plan = w.coord(&["plan", "edge-push", "--output", "json"]).ok().json();
    assert_eq!(plan["target"], "edge-push");
    let d = w.coord(&["deployment", failed[0]["id"].as_str().unwrap(), "--output", "json"]).ok().json();
    assert_eq!(d["deployment"]["status"], "failed");

    // Between deploys the coordinator asks push agents how they are: one that went away is
    // shown unreachable, with why, and comes back when it does.
    let (_, st) = w.api("GET", "/api/deploy-targets/edge-push", t, None);
    assert!(st["last_seen_unix"].as_u64().unwrap() > 0, "{st}");
    drop(pa);
    // (A probe that dialled just before the agent died says it did not answer its status
    // call; the next one finds nothing listening.)
    wait_until("the push agent to show unreachable", Duration::from_secs(20), || {
        let st = w.api("GET", "/api/deploy-targets/edge-push", t, None).1;
        st["state"] == "unreachable" && st["state_reason"].as_str().unwrap_or("").contains("cannot reach the agent")
    });
    let (_, st) = w.api("GET", "/api/deploy-targets/edge-push", t, None);
    assert!(st["state_reason"].as_str().unwrap().contains("cannot reach the agent"), "{st}");
    let _pa = push.start(&w);
    wait_until("the push agent to be back", Duration::from_secs(20), || {
        w.api("GET", "/api/deploy-targets/edge-push", t, None).1["state"] != "unreachable"
    });
}

#[test]
fn rest_api_refuses_bad_credentials_and_bad_input_and_changes_nothing() {
    let w = World::new("api-auth");
    project(&w, free_port(), "", "");
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let token = w.api_token();

    // Only the health endpoint and the page itself answer without credentials.
    let (code, h) = w.api("GET", "/api/health", None, None);
    assert_eq!((code, h["status"].as_str()), (200, Some("ok")));
    let (code, page) = w.api("GET", "/", None, None);
    assert_eq!(code, 200);
    assert!(page.as_str().unwrap().contains("<html"), "{page}");
    let protected = [
        ("GET", "/api/whoami"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/deploy-targets"),
        ("GET", "/api/deploy-targets/edge-push"),
        ("GET", "/api/deploy-targets/edge-push/plan"),
        ("POST", "/api/deploy/edge-push"),
        ("POST", "/api/rollback/edge-push"),
        ("POST", "/api/deploy-test/edge-push"),
        ("GET", "/api/deploy-plugins"),
        ("GET", "/api/deployments"),
        ("GET", "/api/deployments/d-1-abc"),
        ("GET", "/api/deployments/d-1-abc/stream"),
        ("GET", "/api/stream"),
        ("GET", "/api/agents"),
        ("POST", "/api/agents/edge-push/revoke"),
        ("GET", "/api/events"),
        ("GET", "/metrics"),
    ];
    let bad_tokens = [
        None,
        Some("nonsense"),
        Some("dkfo1.0000000000000000.00000000000000000000000000000000"),
        Some(&token[..token.len() - 1]),
    ];
    for (method, path) in protected {
        for bad in bad_tokens {
            let (code, v) = w.api(method, path, bad, None);
            assert_eq!(code, 401, "{method} {path} with {bad:?}: {v}");
            assert_eq!(v["code"], "unauthenticated", "{method} {path}: {v}");
        }
    }

    // A revoked operator's token stops working at once.
    w.coord(&["operator", "add", "bob"]).ok();
    let bob = w.coord(&["--operator", "bob", "operator", "token"]).ok().stdout().trim().to_string();
    let (code, me) = w.api("GET", "/api/whoami", Some(&bob), None);
    assert_eq!((code, me["operator"].as_str()), (200, Some("bob")), "{me}");
    w.coord(&["operator", "revoke", "bob"]).ok();
    let (code, v) = w.api("GET", "/api/whoami", Some(&bob), None);
    assert_eq!(code, 401, "{v}");
    assert!(v["message"].as_str().unwrap().contains("revoked"), "{v}");

    // A browser holding the operator's certificate cannot be made to deploy by another site.
    for header in ["Origin: https://evil.example", "Sec-Fetch-Site: cross-site"] {
        let text = with_admin_cert(&w, &["-X", "POST", "-w", "\n%{http_code}", "-H", header], "/api/deploy/edge-push");
        assert!(text.ends_with("403") && text.contains("cross-site"), "{header}: {text}");
    }

    // One leaked token can be revoked alone: the operator's others keep working.
    let second = w.coord(&["operator", "token", "--label", "ci"]).ok().stdout().trim().to_string();
    let listed = w.coord(&["operator", "tokens", "--output", "json"]).ok().json();
    let ci =
        listed.as_array().unwrap().iter().find(|t| t["label"] == "ci").unwrap()["id"].as_str().unwrap().to_string();
    assert!(second.contains(&ci), "{listed}");
    assert!(!listed.to_string().contains(second.rsplit('.').next().unwrap()), "a secret was listed: {listed}");
    w.coord(&["operator", "revoke-token", &ci]).ok();
    assert_eq!(w.api("GET", "/api/whoami", Some(&second), None).0, 401);
    assert_eq!(w.api("GET", "/api/whoami", Some(&token), None).0, 200);

    // An operator's client certificate authenticates without a token.
    let me: serde_json::Value = serde_json::from_str(&with_admin_cert(&w, &[], "/api/whoami")).unwrap();
    assert_eq!((me["operator"].as_str(), me["via"].as_str()), (Some("admin"), Some("certificate")), "{me}");

    // Malformed ids, unknown targets, bad bodies and queries: each a clear 4xx.
    let t = Some(token.as_str());
    let big = format!(r#"{{"version": "{}"}}"#, "x".repeat(100_000));
    for (method, path, body, want, code_name) in [
        ("POST", "/api/deploy/Not_A_Target", None, 400, "invalid_argument"),
        ("POST", "/api/deploy/..%2f..%2fetc", None, 400, "invalid_argument"),
        ("GET", "/api/deploy-targets/-bad-", None, 400, "invalid_argument"),
        ("POST", "/api/deploy/no-such-target", None, 404, "not_found"),
        ("POST", "/api/rollback/no-such-target", None, 404, "not_found"),
        ("POST", "/api/deploy-test/no-such-target", None, 404, "not_found"),
        ("GET", "/api/deploy-targets/no-such-target", None, 404, "not_found"),
        ("GET", "/api/deploy-targets/no-such-target/plan", None, 404, "not_found"),
        ("POST", "/api/agents/no-such-target/revoke", None, 404, "not_found"),
        ("GET", "/api/deployments/d-1-abc", None, 404, "not_found"),
        ("GET", "/api/deployments/bad%20id", None, 400, "invalid_argument"),
        ("POST", "/api/deploy/edge-push", Some("[1]"), 400, "invalid_argument"),
        ("POST", "/api/deploy/edge-push", Some(r#"{"version": 5}"#), 400, "invalid_argument"),
        ("POST", "/api/deploy/edge-push", Some(r#"{"version": "../x"}"#), 400, "invalid_argument"),
        ("POST", "/api/rollback/edge-push", Some(r#"{"to_release": "x; rm -rf /"}"#), 400, "invalid_argument"),
        ("POST", "/api/rollback/edge-push", None, 409, "failed_precondition"),
        ("GET", "/api/deployments?limit=0", None, 400, "invalid_argument"),
        ("GET", "/api/deployments?limit=abc", None, 400, "invalid_argument"),
        ("GET", "/api/deployments?result=nope", None, 400, "invalid_argument"),
        ("GET", "/api/deployments?colour=red", None, 400, "invalid_argument"),
        ("GET", "/api/deploy-targets?label=noequals", None, 400, "invalid_argument"),
        // Query values outside the published pattern, for any generator (found by schemathesis).
        ("GET", "/api/generate/systemd?domain=%C2%B87&upstream=%C2%9A", None, 400, "invalid_argument"),
        ("GET", "/api/generate/caddy?upstream=a%20b", None, 400, "invalid_argument"),
        ("GET", "/api/generate/compose?domain=a%7Bb", None, 400, "invalid_argument"),
        ("GET", "/api/rollback-plan?target=edge-push&to=a%2Fb", None, 400, "invalid_argument"),
        ("GET", "/api/no-such-route", None, 404, "not_found"),
        ("DELETE", "/api/deploy-targets", None, 405, "method_not_allowed"),
        ("POST", "/api/deploy/edge-push", Some(big.as_str()), 413, "payload_too_large"),
    ] {
        let (code, v) = w.api(method, path, t, body);
        assert_eq!(code, want, "{method} {path} {body:?}: {v}");
        assert_eq!(v["code"], code_name, "{method} {path}: {v}");
        assert!(!v["message"].as_str().unwrap_or("").is_empty(), "{v}");
    }

    // Nothing of it changed anything: no deployment, no release, no blob, no deploy event.
    assert_eq!(w.api("GET", "/api/deployments", t, None).1["deployments"], serde_json::json!([]));
    assert_eq!(stored_blobs(&w), 0);
    let (_, ev) = w.api("GET", "/api/events?limit=1000", t, None);
    let kinds: Vec<&str> = ev["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.iter().all(|k| ["operator", "operator-added", "api-token"].contains(k)), "{kinds:?}");

    // The served OpenAPI document is the one the binary prints.
    let (code, served) = w.api("GET", "/api/openapi.json", t, None);
    assert_eq!(code, 200);
    let printed: serde_json::Value = serde_json::from_str(&w.coord(&["openapi"]).ok().stdout()).unwrap();
    assert_eq!(served, printed);
    assert!(served["paths"]["/api/deploy/{id}"]["post"].is_object(), "{served}");
}

/// The schemathesis CLI (`scripts/setup` installs it in a venv).
fn schemathesis() -> Option<String> {
    ["/opt/dockfra-tools/venv/bin/st", "schemathesis"]
        .iter()
        .find(|p| if p.starts_with('/') { std::path::Path::new(p).exists() } else { on_path(p) })
        .map(|p| p.to_string())
}

#[test]
fn openapi_document_holds_under_schemathesis() {
    let st = schemathesis();
    if Needs::new().check(st.is_some(), "schemathesis (PyPI; scripts/setup installs it)").unmet() {
        return;
    }
    let (w, _coord, _push, _pa, _pull, _pl, token) = start_world("schemathesis");
    // Something to find: a deployment in the history.
    let (_, _, end) = run_and_follow(&w, &token, "/api/deploy/edge-push", "");
    assert_eq!(end["status"], "succeeded");
    let (_, doc) = w.api("GET", "/api/openapi.json", Some(&token), None);
    w.write("openapi.json", &doc.to_string());
    // Streams never end by themselves: they are proved above, not fuzzed.
    // tests/schemathesis/schemathesis.toml: the one cross-field exception, and why.
    let out = Command::new(st.unwrap())
        .arg("--config-file")
        .arg(workspace().join("tests/schemathesis/schemathesis.toml"))
        .args(["run"])
        .arg(w.path("openapi.json"))
        .args(["--url", &format!("https://{}", w.http_addr())])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--tls-verify", "false", "--checks", "all", "--exclude-path-regex", "stream"])
        .args(["--max-examples", "40", "--no-color", "--request-timeout", "60"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(&w.dir)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    assert!(!text.contains("[500]") && !text.contains("Server error"), "{text}");
    // Fuzzing changed nothing it should not have: the agent still runs v1.
    assert_eq!(live_version(&w, "deploy-push"), "v1");
}

/// playwright-core installed in tests/browser (scripts/setup runs `npm ci` there).
fn browser_ready() -> Needs {
    let dir = workspace().join("tests/browser");
    Needs::new()
        .tool("node", "Debian nodejs")
        .file(std::path::Path::new("/usr/bin/chromium"), "Debian chromium (scripts/setup)")
        .file(&dir.join("node_modules/playwright-core/package.json"), "npm ci in tests/browser (scripts/setup)")
}

/// Run one step of tests/browser/dashboard.mjs; its JSON lines.
fn browser_step(w: &World, token: &str, step: &str, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let shots = workspace().join("target/artifacts/dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .arg(workspace().join("tests/browser/dashboard.mjs"))
        .env("DOCKFRA_URL", format!("https://{}", w.http_addr()))
        .env("DOCKFRA_TOKEN", token)
        .env("DOCKFRA_SHOTS", &shots)
        .env("DOCKFRA_STEP", step)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "browser step {step} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn dashboard_in_chromium_deploys_streams_fails_red_and_rolls_back() {
    if browser_ready().unmet() {
        return;
    }
    let (w, _coord, _push, _pa, _pull, _pl, token) = start_world("dashboard");
    let t = Some(token.as_str());

    browser_step(&w, &token, "login-bad", &[]);
    browser_step(
        &w,
        &token,
        "fleet",
        &[
            ("DOCKFRA_EXPECT_TARGETS", "edge-push,edge-pull,edge-offline"),
            ("DOCKFRA_FILTER", "env=test"),
            ("DOCKFRA_FILTER_EXPECT", "edge-push"),
        ],
    );

    // A click deploys (after the plan), progress streams, the dot turns green.
    browser_step(&w, &token, "deploy", &[("DOCKFRA_TARGET", "edge-push")]);
    assert_eq!(live_version(&w, "deploy-push"), "v1");
    let v1 = current(&w, "deploy-push").trim_start_matches("releases/").to_string();
    w.write("project/app/VERSION", "v2\n");
    browser_step(&w, &token, "deploy", &[("DOCKFRA_TARGET", "edge-push")]);
    assert_eq!(live_version(&w, "deploy-push"), "v2");
    // The pull target too.
    browser_step(&w, &token, "deploy", &[("DOCKFRA_TARGET", "edge-pull")]);
    assert_eq!(live_version(&w, "deploy-pull"), "v2");

    // A failing health check shows red with the reason; the agent kept v2.
    w.write("project/app/health.txt", "bad\n");
    w.write("project/app/VERSION", "v3\n");
    browser_step(
        &w,
        &token,
        "deploy",
        &[("DOCKFRA_TARGET", "edge-push"), ("DOCKFRA_EXPECT_RESULT", "failed"), ("DOCKFRA_EXPECT_STATE", "failed")],
    );
    assert_eq!(live_version(&w, "deploy-push"), "v2");
    let (_, st) = w.api("GET", "/api/deploy-targets/edge-push", t, None);
    assert_eq!(st["state"], "failed", "{st}");

    // Rollback from the history to the first release: checked on disk; then forward again
    // from the kept releases.
    let v2 = current(&w, "deploy-push").trim_start_matches("releases/").to_string();
    let rollback = |release: &str, via: &str| {
        let steps = [("DOCKFRA_TARGET", "edge-push"), ("DOCKFRA_RELEASE", release), ("DOCKFRA_ROLLBACK_VIA", via)];
        let out = browser_step(&w, &token, "rollback", &steps);
        assert_eq!(out.last().unwrap()["via"], via, "{out:?}");
    };
    rollback(&v1, "history");
    assert_eq!(live_version(&w, "deploy-push"), "v1");
    assert_eq!(current(&w, "deploy-push"), format!("releases/{v1}"));
    rollback(&v2, "releases");
    assert_eq!(live_version(&w, "deploy-push"), "v2");
    rollback(&v1, "releases");
    assert_eq!(live_version(&w, "deploy-push"), "v1");
    let (_, hist) = w.api("GET", "/api/deployments?target=edge-push&limit=1", t, None);
    assert_eq!(hist["deployments"][0]["action"], "rollback");
    assert_eq!(hist["deployments"][0]["operator"], "admin");

    // Keyboard only.
    browser_step(&w, &token, "keyboard", &[("DOCKFRA_TARGET", "edge-push")]);

    // A fleet deploy from the page: the env=test targets (edge-push only), in one wave.
    w.write("project/app/health.txt", "ok\n");
    w.write("project/app/VERSION", "v4\n");
    let out = browser_step(
        &w,
        &token,
        "rollout",
        &[("DOCKFRA_SELECTOR", "env=test"), ("DOCKFRA_EXPECT_TARGETS", "edge-push=succeeded")],
    );
    let fleet_id = out.last().unwrap()["fleet_id"].as_str().unwrap().to_string();
    assert_eq!(live_version(&w, "deploy-push"), "v4");
    assert_eq!(live_version(&w, "deploy-pull"), "v2", "edge-pull is not env=test");
    let (_, fd) = w.api("GET", "/api/fleet-deploys", t, None);
    assert_eq!(fd["fleet_deploys"][0]["status"], "succeeded", "{fd}");
    assert_eq!(fd["fleet_deploys"][0]["id"], fleet_id.as_str());

    // The fleet after all that (docs/img/dashboard-fleet.png is one of these).
    let after = workspace().join("target/artifacts/dashboard/after");
    browser_step(
        &w,
        &token,
        "fleet",
        &[("DOCKFRA_EXPECT_TARGETS", "edge-push,edge-pull,edge-offline"), ("DOCKFRA_SHOTS", after.to_str().unwrap())],
    );
}
