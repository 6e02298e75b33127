//! Several apps on one coordinator: two projects served together, whose targets share two
//! agents (one push, one pull). Each app lands in its own release store on each agent, each
//! target keeps its own history, and deploying or rolling back one app leaves the other alone.
use dockfra_e2e::*;

use crate::deploy_json;

/// Project `dir` with app `app`: a push target and a pull target, through agents `p1` and
/// `q1`. `ids` are the two targets' ids.
fn app_project(w: &World, dir: &str, app: &str, ids: [&str; 2], port: u16) {
    let d = w.dir.display();
    w.write(
        &format!("{dir}/deploy-targets.yaml"),
        &format!(
            r#"app: {{ name: {app}, path: ./app }}
targets:
  {p}:
    host: 127.0.0.1
    platform: ssh_raw
    labels: {{ app: {app}, site: lab }}
    agent: {{ name: p1, mode: push, port: {port} }}
    config: {{ deploy_path: {d}/deploy-p }}
  {q}:
    platform: ssh_raw
    labels: {{ app: {app}, site: lab }}
    agent: {{ name: q1, mode: pull, poll_interval: 300ms }}
    config: {{ deploy_path: {d}/deploy-q }}
"#,
            p = ids[0],
            q = ids[1],
        ),
    );
    w.write(&format!("{dir}/app/VERSION"), &format!("{app}-v1\n"));
}

/// Projects `web` and `shop`, served by one coordinator: its push port for `p1`, the
/// coordinator and its URL.
fn serve_web_and_shop(w: &World) -> (u16, Proc, String) {
    let port = free_port();
    app_project(w, "project", "web", ["web-p", "web-q"], port);
    app_project(w, "shop", "shop", ["shop-p", "shop-q"], port);
    w.init("127.0.0.1:0");
    let shop = w.path("shop");
    let coord = w.serve(&["--root", shop.to_str().unwrap()]);
    let url = format!("https://{}", w.addr());
    (port, coord, url)
}

fn live(w: &World, agent: &str, app: &str) -> String {
    std::fs::read_to_string(w.path(&format!("deploy-{agent}/{app}/current/VERSION"))).unwrap_or_default().trim().into()
}

#[test]
fn two_projects_share_agents_each_app_in_its_own_release_store_with_its_own_history() {
    let w = World::new("apps-shared");
    let (port, _coord, url) = serve_web_and_shop(&w);

    // A token names the agent, by its name or by a target that deploys through it.
    let mut p1 = Agent::new(&w, "p1");
    p1.listen = Some(format!("127.0.0.1:{port}"));
    let enrolled = p1.enroll(&url, &w.token("p1")).ok().stdout();
    assert!(enrolled.contains("p1"), "{enrolled}");
    let q1 = Agent::new(&w, "q1");
    q1.enroll(&url, &w.token("shop-q")).ok();
    let _runs = [p1.start(&w), q1.start(&w)];
    let agents = w.coord(&["agents", "--output", "json"]).ok().json();
    let of = |name: &str| -> Vec<String> {
        let a = agents["agents"].as_array().or(agents.as_array()).unwrap();
        let a = a.iter().find(|a| a["target"] == name).unwrap_or_else(|| panic!("no agent {name}: {agents}"));
        a["targets"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(of("p1"), ["web-p", "shop-p"]);
    assert_eq!(of("q1"), ["web-q", "shop-q"]);

    // One fleet deploy over both projects: all four at once, two apps on each agent.
    let r = w.coord(&["deploy", "--all", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert_eq!(r.json()["status"], "succeeded", "{}", r.stdout());
    for agent in ["p", "q"] {
        assert_eq!(live(&w, agent, "web"), "web-v1");
        assert_eq!(live(&w, agent, "shop"), "shop-v1");
    }

    // A new shop release on the pull agent, then a rollback: web there is never touched.
    let web_release = std::fs::read_link(w.path("deploy-q/web/current")).unwrap();
    w.write("shop/app/VERSION", "shop-v2\n");
    let (code, d) = deploy_json(&w, &["shop-q", "--wait"]);
    assert_eq!((code, d["result"].as_str()), (0, Some("succeeded")), "{d}");
    assert_eq!((live(&w, "q", "shop").as_str(), live(&w, "q", "web").as_str()), ("shop-v2", "web-v1"));
    let rb = w.coord(&["rollback", "shop-q", "--wait", "--output", "json"]);
    assert_eq!(rb.code(), 0, "{}\n{}", rb.stdout(), rb.stderr());
    assert_eq!(live(&w, "q", "shop"), "shop-v1");
    assert_eq!(std::fs::read_link(w.path("deploy-q/web/current")).unwrap(), web_release);
    // The push agent takes a web deploy while the shop stays.
    w.write("project/app/VERSION", "web-v2\n");
    assert_eq!(deploy_json(&w, &["web-p"]).0, 0);
    assert_eq!((live(&w, "p", "web").as_str(), live(&w, "p", "shop").as_str()), ("web-v2", "shop-v1"));

    // Each target its own history, and its status its own app's release.
    let history = |t: &str| -> Vec<String> {
        let h = w.coord(&["history", t, "--output", "json"]).ok().json();
        h.as_array().unwrap().iter().map(|d| d["action"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(history("shop-q"), ["rollback", "deploy", "deploy"]);
    assert_eq!(history("web-q"), ["deploy"]);
    assert_eq!(history("web-p"), ["deploy", "deploy"]);
    let st = w.coord(&["status", "--selector", "site=lab", "--output", "json"]).ok().json();
    for t in st.as_array().unwrap() {
        let (id, app) = (t["target"].as_str().unwrap(), t["app"].as_str().unwrap());
        assert!(id.starts_with(app), "{t}");
        assert_eq!(t["state"], "healthy", "{t}");
        let want = if id == "web-p" { "web-v2" } else { &format!("{app}-v1") };
        let agent = if id.ends_with("-p") { "p" } else { "q" };
        assert_eq!(live(&w, agent, app), *want, "{id}");
        assert!(t["current_release"].as_str().is_some_and(|r| !r.is_empty()), "{t}");
    }
    // A selector per app reaches only its targets.
    let r = w.coord(&["deploy", "--selector", "app=web", "--output", "json"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let info = r.json();
    let mut ids: Vec<&str> =
        info["targets"].as_array().unwrap().iter().map(|t| t["target"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["web-p", "web-q"]);
    assert_eq!(history("shop-p"), ["deploy"]);
}

#[test]
fn projects_that_clash_are_refused_at_start_naming_both_files() {
    let w = World::new("apps-clash");
    let port = free_port();
    app_project(&w, "project", "web", ["web-p", "web-q"], port);
    // The same target id in a second project.
    app_project(&w, "other", "other", ["web-p", "other-q"], port);
    w.init("127.0.0.1:0");
    let other = w.path("other");
    let project = w.path("project");
    let serve = |roots: &[&std::path::Path]| {
        let mut args = vec!["serve".to_string(), "--http-listen".into(), "off".into()];
        for r in roots {
            args.extend(["--root".to_string(), r.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        w.coord(&args).fails().stderr()
    };
    let e = serve(&[&project, &other]);
    assert!(e.contains("target id \"web-p\" is also defined in") && e.contains("project/deploy-targets.yaml"), "{e}");
    assert!(e.contains("other/deploy-targets.yaml"), "{e}");
    // The same app name.
    app_project(&w, "other", "web", ["o-p", "o-q"], port);
    let e = serve(&[&project, &other]);
    assert!(e.contains("app.name") && e.contains("app \"web\" is also served from"), "{e}");
    // A shared push agent dialled at another port.
    app_project(&w, "other", "other", ["o-p", "o-q"], port + 1);
    let e = serve(&[&project, &other]);
    assert!(e.contains("agent.port") && e.contains("agent \"p1\" is also the agent of target \"web-p\""), "{e}");
    // One project named twice.
    let e = serve(&[&project, &project]);
    assert!(e.contains("already served"), "{e}");
    // Nothing was written: no serve.addr.
    assert!(!w.coord_state.join("serve.addr").exists());
}

/// Orders of two apps for one pull agent that is offline, while an offline bundle raises its
/// floor: the other app's queued order is not lost (it takes a fresh sequence and is
/// delivered), while the app whose own export came after its queued order has that order
/// settled as lost, as with one app.
#[test]
fn an_order_overtaken_by_another_apps_bundle_is_still_delivered() {
    let w = World::new("apps-overtaken");
    let (_port, _coord, url) = serve_web_and_shop(&w);
    let q1 = Agent::new(&w, "q1");
    q1.enroll(&url, &w.token("q1")).ok();

    // Offline: web's deploy and shop's deploy queue; then a shop bundle made after both is
    // applied by hand, which lifts the agent's floor past both orders.
    let (code, web) = deploy_json(&w, &["web-q"]);
    assert_eq!((code, web["result"].as_str()), (0, Some("queued")), "{web}");
    let (_, shop_order) = deploy_json(&w, &["shop-q"]);
    assert_eq!(shop_order["result"], "queued", "{shop_order}");
    w.write("shop/app/VERSION", "shop-offline\n");
    let file = w.path("shop.tar");
    w.coord(&["bundle", "export", "shop-q", "-o", file.to_str().unwrap()]).ok();
    q1.run_cmd(&["apply", file.to_str().unwrap()]).ok();
    assert_eq!(live(&w, "q", "shop"), "shop-offline");

    let _run = q1.start(&w);
    let id = web["deployment_id"].as_str().unwrap().to_string();
    let detail = |id: &str| w.coord(&["deployment", id, "--output", "json"]).ok().json();
    let ended =
        |d: &serde_json::Value| !matches!(d["deployment"]["status"].as_str(), Some("queued" | "running" | "retrying"));
    wait_until("web's order to end", std::time::Duration::from_secs(30), || ended(&detail(&id)));
    let d = detail(&id);
    assert_eq!(d["deployment"]["status"], "succeeded", "{d}");
    assert_eq!(live(&w, "q", "web"), "web-v1");
    // Shop's own export came after its queued order: that order is lost, the export stays.
    let sid = shop_order["deployment_id"].as_str().unwrap().to_string();
    wait_until("shop's overtaken order to be settled", std::time::Duration::from_secs(30), || ended(&detail(&sid)));
    let s = detail(&sid);
    assert_eq!(s["deployment"]["status"], "failed", "{s}");
    assert!(s["deployment"]["reason"].as_str().unwrap().contains("lost"), "{s}");
    assert_eq!(live(&w, "q", "shop"), "shop-offline");
}
