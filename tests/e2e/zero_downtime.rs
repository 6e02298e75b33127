//! Zero downtime on one host: `strategy: blue-green` and `canary` on `docker_compose` (the
//! real Docker engine) and `podman` (real rootful Podman with podman-compose), behind the
//! agent's HAProxy (Debian's `haproxy`). A load generator sends requests through the proxy
//! the whole time: a deploy, a rollback and a release that fails its checks each end with
//! zero failed requests, the new slot serving (or the old one, still), the old slot stopped
//! but kept, and only the live slot counted in the app's health.
use dockfra_e2e::*;

use crate::containers::{http_body, two_services_target, PodmanCleanup, TWO_SERVICES};

/// Run `verb` on target `one` under load; the report, with every request's outcome.
fn under_load(w: &World, web_port: u16, verb: &str, expect_code: i32) -> (serde_json::Value, LoadReport) {
    let load = Load::start(web_port, 4);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (code, v) = w.coord_json(&[verb, "one", "--output", "json"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let rep = load.stop();
    assert_eq!(code, expect_code, "{verb}: {v}");
    eprintln!(
        "{verb}: {} requests in {:.1}s, {} failed, bodies {:?}",
        rep.ok + rep.failed.len() as u64,
        rep.seconds,
        rep.failed.len(),
        rep.bodies
    );
    assert!(
        rep.failed.is_empty(),
        "{verb}: {} of {} requests failed: {:?}",
        rep.failed.len(),
        rep.ok,
        &rep.failed[..rep.failed.len().min(5)]
    );
    assert!(rep.ok > 20, "{verb}: the load ran ({} requests)", rep.ok);
    (v, rep)
}

fn states(engine: &str, project: &str) -> String {
    let o = std::process::Command::new(engine)
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--format",
            "{{.Names}} {{.State}}",
        ])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout).lines().map(|l| l.to_lowercase()).collect();
    lines.sort();
    lines.join("\n")
}

/// Slot `slot` of service `web` is in `state` (as the engine's first word says it: Docker's
/// `running`/`exited`, Podman's `up`/`exited`).
fn slot_is(engine: &str, project: &str, slot: &str, state: &str) -> bool {
    let all = states(engine, project);
    all.lines().any(|l| l.contains(&format!("web-{slot}")) && l.split_whitespace().nth(1) == Some(state))
}

#[test]
fn docker_compose_blue_green_deploy_rollback_and_failed_release_drop_no_request() {
    if Needs::new().docker().tool("haproxy", "Debian's haproxy").unmet() {
        return;
    }
    let w = World::new("bluegreen");
    let (agent_port, web_port) = (free_port(), free_port());
    let project_name = format!("dkfbg{}", std::process::id());
    let _cleanup = DockerCleanup { compose_projects: vec![project_name.clone()], stacks: vec![], images: vec![] };
    let config = format!("compose_project: {project_name}, pull_policy: never, restart_policy: \"no\", strategy: blue-green, proxy: {{ health_path: /, drain: 1s }}");
    w.write(
        "project/deploy-targets.yaml",
        &two_services_target("docker_compose", "one", agent_port, web_port, &config, ""),
    );
    w.write("project/app/compose.yaml", TWO_SERVICES);
    w.write("project/app/.env", "APP_VERSION=v1\n");
    let (_coord, agent, _a) = w.start_push("one", "one", agent_port);
    let proxy_dir = agent.state.join("apps/shop/proxy");
    let _proxy = KillPidFile(proxy_dir.join("haproxy.pid"));

    let (code, v) = w.coord_json(&["deploy", "one", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(http_body(web_port), "hello v1", "the proxy answers on the published port");
    assert!(slot_is("docker", &project_name, "blue", "running"), "{}", states("docker", &project_name));
    let cfg = std::fs::read_to_string(proxy_dir.join("haproxy.cfg")).unwrap();
    assert!(cfg.contains(&format!("bind 127.0.0.1:{web_port}")), "{cfg}");
    // The worker reaches the live slot by the service's own name.
    assert!(states("docker", &project_name).contains("worker-1 running"), "{}", states("docker", &project_name));

    // v2 goes to green beside blue; the proxy switches; blue drains and stops, kept.
    w.write("project/app/.env", "APP_VERSION=v2\n");
    let (_, rep) = under_load(&w, web_port, "deploy", 0);
    assert!(rep.bodies.contains_key("hello v1") && rep.bodies.contains_key("hello v2"), "{:?}", rep.bodies);
    assert_eq!(http_body(web_port), "hello v2");
    assert!(slot_is("docker", &project_name, "green", "running"));
    assert!(
        slot_is("docker", &project_name, "blue", "exited"),
        "old slot stopped, kept: {}",
        states("docker", &project_name)
    );
    assert_eq!(agent.status()["apps"][0]["health"], "healthy", "the stopped slot does not count");

    // Rollback: blue's containers start again (not re-created) and take the traffic back.
    let blue_id = |p: &str| {
        let o = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("name={p}-web-blue-1")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let before = blue_id(&project_name);
    let (_, rep) = under_load(&w, web_port, "rollback", 0);
    assert!(rep.bodies.contains_key("hello v1"), "{:?}", rep.bodies);
    assert_eq!(http_body(web_port), "hello v1");
    assert_eq!(blue_id(&project_name), before, "the old slot's container came back as it was");
    assert!(slot_is("docker", &project_name, "green", "exited"));

    // v3 fails its healthcheck in green: blue never stops serving.
    w.write("project/app/.env", "APP_VERSION=v3\nHEALTH_PATH=/missing\n");
    let (v, rep) = under_load(&w, web_port, "deploy", 3);
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("rolled back to"), "{msg}");
    assert_eq!(rep.bodies.keys().collect::<Vec<_>>(), ["hello v1"], "only v1 ever answered");
    assert!(slot_is("docker", &project_name, "green", "exited"), "{}", states("docker", &project_name));
    assert_eq!(agent.status()["apps"][0]["health"], "healthy");

    // A new proxy check changes HAProxy's config: the next deploy reloads it (the listeners
    // handed over to a new process, the old one finishing its connections), under load.
    let pid_file = proxy_dir.join("haproxy.pid");
    let before = std::fs::read_to_string(&pid_file).unwrap();
    let checked = config.replace("health_path: /,", "health_path: /index.html,");
    assert_ne!(checked, config);
    w.write(
        "project/deploy-targets.yaml",
        &two_services_target("docker_compose", "one", agent_port, web_port, &checked, ""),
    );
    w.write("project/app/.env", "APP_VERSION=v4\n");
    let (_, rep) = under_load(&w, web_port, "deploy", 0);
    assert!(rep.bodies.contains_key("hello v4"), "{:?}", rep.bodies);
    assert_ne!(std::fs::read_to_string(&pid_file).unwrap(), before, "the proxy was reloaded, not restarted in place");
    let cfg = std::fs::read_to_string(proxy_dir.join("haproxy.cfg")).unwrap();
    assert!(cfg.contains("option httpchk GET /index.html"), "{cfg}");
}

#[test]
fn podman_blue_green_and_canary_drop_no_request() {
    if Needs::new().podman().docker().tool("haproxy", "Debian's haproxy").unmet() {
        return;
    }
    let w = World::new("podman-bg");
    let pid = std::process::id();
    let (agent_port, web_port) = (free_port(), free_port());
    let project_name = format!("dkfpbg{pid}");
    let image = format!("dkf-e2e-pbg-{pid}:v1");
    let _docker = DockerCleanup { compose_projects: vec![], stacks: vec![], images: vec![image.clone()] };
    let _podman = PodmanCleanup { project: project_name.clone(), images: vec![format!("localhost/{image}")] };
    make_image(&image);
    let base = format!("use_quadlet: false, compose_project: {project_name}, images: bundle");
    let env = format!(", IMAGE: \"{image}\"");
    let bg = format!("{base}, strategy: blue-green, proxy: {{ health_path: /, drain: 1s }}");
    w.write("project/deploy-targets.yaml", &two_services_target("podman", "one", agent_port, web_port, &bg, &env));
    w.write("project/app/compose.yaml", TWO_SERVICES);
    w.write("project/app/.env", "APP_VERSION=v1\n");
    let (_coord, agent, _a) = w.start_push("one", "one", agent_port);
    let _proxy = KillPidFile(agent.state.join("apps/shop/proxy/haproxy.pid"));

    let (code, v) = w.coord_json(&["deploy", "one", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(http_body(web_port), "hello v1");

    w.write("project/app/.env", "APP_VERSION=v2\n");
    under_load(&w, web_port, "deploy", 0);
    assert_eq!(http_body(web_port), "hello v2");
    assert!(slot_is("podman", &project_name, "blue", "exited"), "{}", states("podman", &project_name));
    let (_, rep) = under_load(&w, web_port, "rollback", 0);
    assert!(rep.bodies.contains_key("hello v1"));
    assert_eq!(http_body(web_port), "hello v1");
    assert_eq!(agent.status()["apps"][0]["health"], "healthy");

    // Canary: half the requests go to v3 for the step's pause, then all of them.
    let canary = format!(
        "{base}, strategy: canary, canary: {{ steps: [50, 100], pause: 3s }}, proxy: {{ health_path: /, drain: 1s }}"
    );
    w.write("project/deploy-targets.yaml", &two_services_target("podman", "one", agent_port, web_port, &canary, &env));
    w.write("project/app/.env", "APP_VERSION=v3\n");
    let (_, rep) = under_load(&w, web_port, "deploy", 0);
    let (v1, v3) = (rep.bodies.get("hello v1").copied().unwrap_or(0), rep.bodies.get("hello v3").copied().unwrap_or(0));
    assert!(v1 > 10 && v3 > 10, "both answered during the 50% step: {:?}", rep.bodies);
    assert_eq!(http_body(web_port), "hello v3");
}
