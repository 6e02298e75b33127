//! Fleet rollouts: one order over the targets a selector names, in waves, on real push and
//! pull agents on loopback. A failed wave halts the rest and the report says which target
//! runs what; a coordinator killed mid fleet-deploy resumes it with no target deployed twice;
//! two operators racing for one target; production targets that need a confirmation;
//! selectors on the listings.
use std::time::Duration;

use dockfra_e2e::*;

/// Five `ssh_raw` targets: `a` and `b` push, `c`, `d`, `e` pull; `c`'s health check fails
/// when `fail_c` is set. `pre` runs before each activation (to slow a deploy down).
fn fleet_project(w: &World, ports: &[u16; 2], fail_c: bool, pre: &str) {
    let d = w.dir.display();
    let c_check = if fail_c { "test -f no-such-file" } else { "true" };
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: web, path: ./app }}
targets:
  a:
    host: 127.0.0.1
    platform: ssh_raw
    labels: {{ role: edge, region: eu }}
    agent: {{ mode: push, port: {p0} }}
    config: {{ deploy_path: {d}/deploy-a, pre_script: "{pre}" }}
  b:
    host: 127.0.0.1
    platform: ssh_raw
    labels: {{ role: edge, region: eu }}
    agent: {{ mode: push, port: {p1} }}
    config: {{ deploy_path: {d}/deploy-b, pre_script: "{pre}" }}
  c:
    platform: ssh_raw
    labels: {{ role: edge, region: us }}
    agent: {{ mode: pull, poll_interval: 300ms }}
    config: {{ deploy_path: {d}/deploy-c, pre_script: "{pre}" }}
    health: {{ retries: 0, interval: 100ms, checks: [ {{ command: "{c_check}" }} ] }}
  d:
    platform: ssh_raw
    labels: {{ role: edge, region: us }}
    agent: {{ mode: pull, poll_interval: 300ms }}
    config: {{ deploy_path: {d}/deploy-d, pre_script: "{pre}" }}
  e:
    platform: ssh_raw
    labels: {{ role: core, region: eu, env: production }}
    agent: {{ mode: pull, poll_interval: 300ms }}
    config: {{ deploy_path: {d}/deploy-e, pre_script: "{pre}" }}
waves:
  - {{ name: eu, selector: "region=eu" }}
  - {{ name: us, selector: "region=us" }}
"#,
            p0 = ports[0],
            p1 = ports[1],
        ),
    );
    w.write("project/app/VERSION", "v1\n");
}

struct Fleet {
    w: World,
    _coord: Proc,
    agents: Vec<(Agent, Option<Proc>)>,
    ports: [u16; 2],
}

impl Fleet {
    fn start(name: &str, fail_c: bool, pre: &str) -> Self {
        Self::start_in(name, fail_c, pre, None)
    }

    /// With `net`: the coordinator and agents a, b, c in namespace `net.c` (on its loopback),
    /// and the pull agents d and e in `net.a`, reaching the coordinator across the link.
    fn start_in(name: &str, fail_c: bool, pre: &str, net: Option<&NetPair>) -> Self {
        let mut w = World::new(name);
        let ports = [free_port(), free_port()];
        fleet_project(&w, &ports, fail_c, pre);
        if let Some(n) = net {
            w.coord_prefix = NetPair::prefix(&n.c);
        }
        w.init(&net.map(|n| format!("{}:0", n.ipc)).unwrap_or_else(|| "127.0.0.1:0".into()));
        let coord = w.serve(&[]);
        let url = format!("https://{}", w.addr());
        let mut agents = Vec::new();
        for (i, t) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            let mut agent = Agent::new(&w, t);
            if let Some(n) = net {
                agent.prefix = NetPair::prefix(if i < 3 { &n.c } else { &n.a });
            }
            if i < 2 {
                agent.listen = Some(format!("127.0.0.1:{}", ports[i]));
            }
            agent.enroll(&url, &w.token(t)).ok();
            let run = agent.start(&w);
            agents.push((agent, Some(run)));
        }
        Self { w, _coord: coord, agents, ports }
    }

    fn live(&self, t: &str) -> String {
        std::fs::read_to_string(self.w.path(&format!("deploy-{t}/web/current/VERSION")))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    fn deployments_of(&self, t: &str) -> Vec<serde_json::Value> {
        let h = self.w.coord(&["history", t, "--output", "json"]).ok().json();
        h.as_array().unwrap().clone()
    }
}

fn by_target(info: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    info["targets"].as_array().unwrap().iter().map(|t| (t["target"].as_str().unwrap().to_string(), t.clone())).collect()
}

#[test]
fn a_failed_wave_halts_the_fleet_deploy_and_the_report_says_who_runs_what() {
    let f = Fleet::start("fleet-waves", true, "");
    let w = &f.w;

    // Selectors on the listings.
    let eu = w.coord(&["status", "--selector", "region=eu", "--output", "json"]).ok().json();
    let ids: Vec<&str> = eu.as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "e"]);
    let t = w.coord(&["targets", "-l", "role=edge,region notin (us)", "--output", "json"]).ok().json();
    assert_eq!(t.as_array().unwrap().len(), 2, "{t}");
    let e = w.coord(&["status", "--selector", "region in (eu"]).fails().stderr();
    assert!(e.contains("without its `)`"), "{e}");

    // role=edge: a (canary), then b+c, then d. c's health check fails: wave 2 fails, d is
    // left untouched, and the exit code says it failed.
    let r = w.coord(&[
        "deploy",
        "--selector",
        "role=edge",
        "--canary",
        "1",
        "--soak",
        "1s",
        "--max-parallel",
        "2",
        "--output",
        "json",
    ]);
    assert_eq!(r.code(), 3, "{}\n{}", r.stdout(), r.stderr());
    let info = r.json();
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["waves"], 3);
    assert!(info["reason"].as_str().unwrap().contains("wave 2/3 failed (c)"), "{info}");
    let t = by_target(&info);
    assert_eq!((t["a"]["wave"].as_u64(), t["a"]["status"].as_str()), (Some(0), Some("succeeded")));
    assert_eq!(t["b"]["status"], "succeeded");
    assert_eq!(t["c"]["status"], "failed");
    assert!(t["c"]["reason"].as_str().unwrap().contains("health"), "{}", t["c"]);
    assert_eq!((t["d"]["wave"].as_u64(), t["d"]["status"].as_str()), (Some(2), Some("skipped")));
    assert!(t["d"]["deployment"].is_null());
    assert!(!t.contains_key("e"), "e is not role=edge");
    // On disk: a and b run v1, c kept nothing (its first release failed), d was never touched.
    assert_eq!((f.live("a").as_str(), f.live("b").as_str()), ("v1", "v1"));
    assert_eq!(f.live("c"), "");
    assert!(!w.path("deploy-d").exists(), "wave 3 was touched");
    // What each runs now, as its agent reports it.
    let now = by_target(&w.coord(&["fleet", "show", info["id"].as_str().unwrap(), "--output", "json"]).json());
    assert_eq!(now["a"]["current_version"], t["a"]["deployment"]["version"], "{:?}", now["a"]);
    assert_eq!(now["d"]["current_release"], "");
    assert!(f.deployments_of("d").is_empty());
    // The report, in a table, and in the list.
    let id = info["id"].as_str().unwrap();
    let show = w.coord(&["fleet", "show", id]).code();
    assert_eq!(show, 3);
    let table = w.coord(&["fleet", "show", id]).stdout();
    assert!(table.contains("skipped") && table.contains("wave 2/3 failed"), "{table}");
    let list = w.coord(&["fleet", "list", "--output", "json"]).ok().json();
    assert_eq!(list[0]["id"], id);
    // Every deployment it made carries its id; history and the REST API show it.
    assert_eq!(f.deployments_of("a")[0]["fleet"], id);
    let token = w.api_token();
    let (code, v) = w.api("GET", &format!("/api/fleet-deploys/{id}"), Some(&token), None);
    assert_eq!((code, v["status"].as_str()), (200, Some("failed")), "{v}");
    let (_, h) = w.api("GET", "/api/deployments?selector=region%3Dus", Some(&token), None);
    let targets: Vec<&str> =
        h["deployments"].as_array().unwrap().iter().map(|d| d["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["c"], "{h}");

    // The API starts one too: the eu edge targets, all in one wave.
    w.write("project/app/VERSION", "v2\n");
    let (code, v) = w.api("POST", "/api/fleet-deploys", Some(&token), Some(r#"{"selector": "role=edge,region=eu"}"#));
    assert_eq!(code, 202, "{v}");
    let id2 = v["id"].as_str().unwrap().to_string();
    wait_until("the API's fleet deploy to end", Duration::from_secs(60), || {
        w.api("GET", &format!("/api/fleet-deploys/{id2}"), Some(&token), None).1["status"] != "running"
    });
    assert_eq!(w.api("GET", &format!("/api/fleet-deploys/{id2}"), Some(&token), None).1["status"], "succeeded");
    assert_eq!((f.live("a").as_str(), f.live("b").as_str()), ("v2", "v2"));
    assert_eq!(f.live("d"), "", "d is not in region eu");
    let (code, v) = w.api("POST", "/api/fleet-deploys", Some(&token), Some(r#"{"selector": "role=nothing"}"#));
    assert_eq!((code, v["code"].as_str()), (404, Some("not_found")), "{v}");
    let (code, _) = w.api("POST", "/api/fleet-deploys", Some(&token), Some(r#"{}"#));
    assert_eq!(code, 400);
}

#[test]
fn production_targets_need_a_yes_and_racing_operators_are_told_who_holds_a_target() {
    let mut f = Fleet::start("fleet-guard", false, "");
    let w = &f.w;
    // e is env=production: refused without --yes, before anything is built or queued.
    let e = w.coord(&["deploy", "e"]).fails().stderr();
    assert!(e.contains("production target") && e.contains("--yes"), "{e}");
    let e = w.coord(&["deploy", "--selector", "region=eu"]).fails().stderr();
    assert!(e.contains("1 production target(s) among the 3 chosen (e;"), "{e}");
    assert!(f.deployments_of("e").is_empty());
    let token = w.api_token();
    let (code, v) = w.api("POST", "/api/deploy/e", Some(&token), Some("{}"));
    assert_eq!((code, v["code"].as_str()), (409, Some("failed_precondition")), "{v}");
    assert!(f.deployments_of("e").is_empty());
    let (code, _) = w.api("POST", "/api/deploy/e", Some(&token), Some(r#"{"confirm": true}"#));
    assert_eq!(code, 202);
    w.coord(&["deploy", "e", "--yes", "--wait", "--timeout", "60s"]).ok();
    assert_eq!(f.live("e"), "v1");

    // d's agent is stopped: alice's order for it stays queued. Bob is refused, named whose
    // it is, until he takes it over; alice's order then says who replaced it.
    f.agents[3].1 = None;
    w.coord(&["operator", "add", "alice"]).ok();
    w.coord(&["operator", "add", "bob"]).ok();
    let r = w.coord(&["--operator", "alice", "deploy", "d", "--output", "json"]).ok().json();
    let alices = r["deployment_id"].as_str().unwrap().to_string();
    let e = w.coord(&["--operator", "bob", "deploy", "d"]).fails().stderr();
    assert!(e.contains("is being deployed by alice") && e.contains(&alices) && e.contains("--force"), "{e}");
    let bobs_token = w.coord(&["--operator", "bob", "operator", "token"]).ok().stdout().trim().to_string();
    let (code, v) = w.api("POST", "/api/deploy/d", Some(&bobs_token), None);
    assert_eq!(code, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("alice"), "{v}");
    w.coord(&["--operator", "bob", "deploy", "d", "--force"]).ok();
    let d = w.coord(&["deployment", &alices, "--output", "json"]).ok().json();
    assert_eq!(d["deployment"]["status"], "superseded");
    assert!(d["deployment"]["reason"].as_str().unwrap().contains("taken over by bob"), "{d}");
    // The same operator may replace an order of their own, as before.
    w.coord(&["--operator", "bob", "deploy", "d"]).ok();
    // The agent comes back and runs bob's latest order.
    let agent = &f.agents[3].0;
    let run = agent.start(w);
    wait_until("d to run v1", Duration::from_secs(30), || f.live("d") == "v1");
    f.agents[3].1 = Some(run);
}

#[test]
fn a_coordinator_killed_mid_fleet_deploy_resumes_it_and_deploys_no_target_twice() {
    // Each activation takes a second and leaves a mark: the coordinator is killed once both
    // agents of wave 1 have taken their orders and are at work on them.
    let marks = std::env::temp_dir().join(format!("dkf-fleet-resume-marks-{}", std::process::id()));
    let pre = format!("mkdir -p {m} && touch {m}/$$; sleep 1", m = marks.display());
    let mut f = Fleet::start("fleet-resume", false, &pre);
    let addr = f.w.addr();
    let w = &f.w;
    // A first fleet deploy, followed to its end by the CLI.
    w.coord(&["deploy", "--all", "--yes", "--max-parallel", "2", "--wave-timeout", "60s", "--output", "json"]).ok();
    let id = w.coord(&["fleet", "list", "--output", "json"]).ok().json()[0]["id"].as_str().unwrap().to_string();
    let first = by_target(&w.coord(&["fleet", "show", &id, "--output", "json"]).ok().json());
    assert_eq!(first.values().filter(|t| t["status"] == "succeeded").count(), 5, "{first:?}");
    // Now again, killed mid-way.
    let _ = std::fs::remove_dir_all(&marks);
    w.write("project/app/VERSION", "v2\n");
    let mut cli = std::process::Command::new(bin("dockfra-coord"));
    cli.arg("--state-dir")
        .arg(&w.coord_state)
        .args(["deploy", "--all", "--yes", "--max-parallel", "2", "--wave-timeout", "60s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut cli = cli.spawn().unwrap();
    let mut id2 = String::new();
    wait_until("a second fleet deploy to start its first wave", Duration::from_secs(30), || {
        let l = w.coord(&["fleet", "list", "--output", "json"]).ok().json();
        id2 = l[0]["id"].as_str().unwrap_or_default().to_string();
        id2 != id && l[0]["targets"].as_array().unwrap().iter().any(|t| t["status"] == "deploying")
    });
    wait_until("both agents of wave 1 to be at work", Duration::from_secs(30), || {
        std::fs::read_dir(&marks).map(|d| d.count()).unwrap_or(0) >= 2
    });
    f._coord.kill9();
    let _ = cli.kill();
    let _ = cli.wait();
    let _coord = f.w.serve(&["--listen", &addr]);
    let w = &f.w;
    wait_until("the resumed fleet deploy to end", Duration::from_secs(120), || {
        w.coord(&["fleet", "show", &id2, "--output", "json"]).json()["status"] != "running"
    });
    let info = w.coord(&["fleet", "show", &id2, "--output", "json"]).ok().json();
    assert_eq!(info["status"], "succeeded", "{info}");
    for t in ["a", "b", "c", "d", "e"] {
        let of_fleet: Vec<serde_json::Value> =
            f.deployments_of(t).into_iter().filter(|d| d["fleet"] == id2.as_str()).collect();
        assert_eq!(of_fleet.len(), 1, "{t} was deployed {} times by {id2}: {of_fleet:?}", of_fleet.len());
        wait_until(&format!("{t} to run v2"), Duration::from_secs(30), || f.live(t) == "v2");
    }
}

/// In network namespaces: the coordinator with a, b and c on one side, the pull agents d and
/// e on the other. Then a second project whose app shares agents a (push) and d (pull).
#[test]
fn declared_waves_and_a_failed_wave_rolled_back() {
    if Needs::new().root("network namespaces").tool("ip", "Debian iproute2").unmet() {
        return;
    }
    let net = NetPair::new("flt", 233);
    let mut f = Fleet::start_in("fleet-declared", false, "", Some(&net));
    let w = &f.w;
    w.coord(&["deploy", "--all", "--yes", "--output", "json"]).ok();
    for t in ["a", "b", "c", "d", "e"] {
        wait_until(&format!("{t} to run v1"), Duration::from_secs(30), || f.live(t) == "v1");
    }
    // v2, where c's health check fails: the eu wave (a, b) takes it, the us wave (c, d) fails
    // and --auto-rollback-wave brings d back to v1 (c's agent rolled c back itself).
    fleet_project(w, &f.ports, true, "");
    w.write("project/app/VERSION", "v2\n");
    let r = w.coord(&["deploy", "-l", "role=edge", "--waves", "--auto-rollback-wave", "--output", "json"]);
    assert_eq!(r.code(), 3, "{}\n{}", r.stdout(), r.stderr());
    let info = r.json();
    assert_eq!(info["wave_names"], serde_json::json!(["eu", "us"]), "{info}");
    let t = by_target(&info);
    assert_eq!((t["a"]["status"].as_str(), t["b"]["status"].as_str()), (Some("succeeded"), Some("succeeded")));
    assert_eq!(t["c"]["status"], "failed", "{}", t["c"]);
    assert_eq!(t["d"]["status"], "rolled_back", "{}", t["d"]);
    assert_eq!(t["d"]["deployment"]["action"], "rollback");
    assert!(info["reason"].as_str().unwrap().contains("rolled back: d"), "{info}");
    assert_eq!((f.live("a").as_str(), f.live("b").as_str()), ("v2", "v2"));
    assert_eq!((f.live("c").as_str(), f.live("d").as_str()), ("v1", "v1"));
    assert_eq!(f.live("e"), "v1", "e is not role=edge");
    // --waves needs waves in the file, and not with a canary.
    let e = w.coord(&["deploy", "--all", "--waves", "--canary", "1"]).fails().stderr();
    assert!(e.contains("cannot be used with"), "{e}");

    // A second app on two of these agents: push `a` here, pull `d` across the link. The
    // coordinator restarts serving both projects; one fleet deploy over both apps lands
    // `metrics` beside `web` on each, and touches no `web` release.
    let d = w.dir.display();
    w.write(
        "metrics/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: metrics, path: ./app }}
targets:
  m-a:
    host: 127.0.0.1
    platform: ssh_raw
    labels: {{ app: metrics }}
    agent: {{ name: a, mode: push, port: {p0} }}
    config: {{ deploy_path: {d}/deploy-a }}
  m-d:
    platform: ssh_raw
    labels: {{ app: metrics }}
    agent: {{ name: d, mode: pull, poll_interval: 300ms }}
    config: {{ deploy_path: {d}/deploy-d }}
"#,
            p0 = f.ports[0]
        ),
    );
    w.write("metrics/app/VERSION", "m1\n");
    let addr = w.addr();
    f._coord.kill9();
    let metrics = w.path("metrics");
    let _coord = f.w.serve(&["--listen", &addr, "--root", metrics.to_str().unwrap()]);
    let w = &f.w;
    let web_a = std::fs::read_link(w.path("deploy-a/web/current")).unwrap();
    let r = w.coord(&["deploy", "-l", "app=metrics", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let app_live = |agent: &str, app: &str| {
        std::fs::read_to_string(w.path(&format!("deploy-{agent}/{app}/current/VERSION"))).unwrap_or_default()
    };
    assert_eq!((app_live("a", "metrics").trim(), app_live("d", "metrics").trim()), ("m1", "m1"));
    assert_eq!(std::fs::read_link(w.path("deploy-a/web/current")).unwrap(), web_a, "web on a is untouched");
    assert_eq!((f.live("a").as_str(), f.live("d").as_str()), ("v2", "v1"));
    let agents = w.coord(&["agents", "--output", "json"]).ok().json();
    let of = |n: &str| agents.as_array().unwrap().iter().find(|x| x["target"] == n).unwrap()["targets"].clone();
    assert_eq!((of("a"), of("d")), (serde_json::json!(["a", "m-a"]), serde_json::json!(["d", "m-d"])));
    assert_eq!(f.deployments_of("m-d").len(), 1, "m-d has its own history");
}

#[test]
fn a_running_fleet_deploy_can_be_cancelled_and_wave_flags_need_a_fleet() {
    let f = Fleet::start("fleet-cancel", false, "sleep 1");
    let w = &f.w;
    let e = w.coord(&["deploy", "a", "--canary", "1"]).fails().stderr();
    assert!(e.contains("--canary shape(s) a fleet deploy"), "{e}");
    let token = w.api_token();
    let body = r#"{"all": true, "confirm": true, "max_parallel": 1}"#;
    let (code, v) = w.api("POST", "/api/fleet-deploys", Some(&token), Some(body));
    assert_eq!(code, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    wait_until("the first wave to be under way", Duration::from_secs(30), || {
        let info = w.coord(&["fleet", "show", &id, "--output", "json"]).json();
        info["targets"][0]["status"] == "deploying"
    });
    w.coord(&["fleet", "cancel", &id]).ok();
    let e = w.coord(&["fleet", "cancel", &id]).fails().stderr();
    assert!(e.contains("cancelled already"), "{e}");
    // The order given runs on; nothing after it is ordered.
    wait_until("a to finish", Duration::from_secs(30), || f.live("a") == "v1");
    std::thread::sleep(Duration::from_secs(2));
    let info = w.coord(&["fleet", "show", &id, "--output", "json"]).json();
    assert_eq!(info["status"], "cancelled", "{info}");
    let t = by_target(&info);
    assert_eq!(t["a"]["status"], "succeeded", "{info}");
    for x in ["c", "d", "e"] {
        assert_eq!(t[x]["status"], "skipped", "{x}: {info}");
        assert!(t[x]["reason"].as_str().unwrap().contains("cancelled"), "{info}");
        assert!(f.deployments_of(x).is_empty(), "{x} was ordered after the cancel");
    }
}
