//! The container platforms on real engines (`scripts/engines` sets them up): `docker_compose`
//! (deploy, update, rollback, a failing healthcheck rolled back, health read live from the
//! engine), images carried in the bundle to an engine that lacks them, `build:` services built
//! on the coordinator and carried, images pushed to a registry and pulled by the agent, `swarm`
//! stacks on a one-node swarm (start-first updates), `podman` with podman-compose and with a
//! registry, Quadlet units under systemd, rootful and rootless in a pod under a user's systemd —
//! plus the units of every corpus file through Quadlet's real generator.
use std::time::Duration;

use dockfra_e2e::*;

use crate::{SystemdBox, SYSTEMD_PODMAN};

/// GET http://127.0.0.1:PORT/ with a plain socket; the body, or "" when nothing answers.
pub(crate) fn http_body(port: u16) -> String {
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
    if Needs::new().docker().unmet() {
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
    if Needs::new().docker().unmet() {
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
    if Needs::new().docker().unmet() {
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

/// Debian's docker-registry serving `addr` (plain HTTP on loopback), its data in the world.
fn start_registry(w: &World, addr: &str) -> Proc {
    w.write(
        "registry.yml",
        &format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            w.path("registry-data").display()
        ),
    );
    let p = Proc {
        child: std::process::Command::new("docker-registry")
            .args(["serve", w.path("registry.yml").to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(w.path("registry.log")).unwrap())
            .spawn()
            .unwrap(),
        log: w.path("registry.log"),
    };
    wait_until("the registry", Duration::from_secs(20), || std::net::TcpStream::connect(addr).is_ok());
    p
}

#[test]
fn images_pushed_to_a_registry_are_pulled_by_the_agent() {
    if Needs::new().docker().tool("docker-registry", "Debian's docker-registry; scripts/engines").unmet() {
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
    let _registry = start_registry(&w, &registry);

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

#[test]
fn swarm_stack_deploy_update_rollback_and_failed_health_on_a_real_swarm() {
    if Needs::new().docker().swarm().unmet() {
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
    // Zero-downtime updates: a new worker task starts before the old one stops; web's
    // host-mode port could not be bound twice on one node, so it stays stop-first.
    let order = |svc: &str| {
        let o = std::process::Command::new("docker")
            .args(["service", "inspect", &format!("{stack}_{svc}"), "--format", "{{.Spec.UpdateConfig.Order}}"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!((order("worker").as_str(), order("web").as_str()), ("start-first", "stop-first"));

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

/// Removes what a Podman test made on this host's Podman (compose-mode containers and kube play pods).
pub(crate) struct PodmanCleanup {
    pub project: String,
    pub images: Vec<String>,
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
        // kube play mode: the pods, by the rendering's label.
        let label = format!("label=app.kubernetes.io/part-of={}", self.project);
        if let Some(o) = podman(&["pod", "ps", "-q", "--filter", &label]) {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                podman(&["pod", "rm", "-f", "-t", "0", id]);
            }
        }
        for i in &self.images {
            podman(&["rmi", "-f", i]);
        }
    }
}

/// The two-service app of the container platform tests: `web` serves HTTP and has a
/// healthcheck (its path from HEALTH_PATH), `worker` waits for it and polls it by name.
pub(crate) const TWO_SERVICES: &str = r#"services:
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

/// `deploy-targets.yaml` for the two-service app: one push target `id` on this host with
/// `platform`, `config` (a flow mapping's inside), `WEB_PORT` and the `env` entries given
/// (`, KEY: "V"`…), its health checked over HTTP on the web port.
pub(crate) fn two_services_target(
    platform: &str,
    id: &str,
    agent_port: u16,
    web_port: u16,
    config: &str,
    env: &str,
) -> String {
    format!(
        r#"app: {{ name: shop, path: ./app }}
targets:
  {id}:
    host: 127.0.0.1
    platform: {platform}
    agent: {{ mode: push, port: {agent_port} }}
    config: {{ {config} }}
    env: {{ WEB_PORT: "{web_port}"{env} }}
    health:
      retries: 5
      interval: 500ms
      checks:
        - http: {{ url: "http://127.0.0.1:{web_port}/", status: 200, body: hello }}
"#
    )
}

#[test]
fn podman_compose_deploy_update_rollback_and_failed_health_on_a_real_engine() {
    // Docker too: the coordinator makes and saves the image the bundle carries.
    if Needs::new().podman().docker().unmet() {
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
    let config = format!("use_quadlet: false, rootless: false, compose_project: {project}, images: bundle");
    let env = format!(", IMAGE: \"{image}\"");
    w.write("project/deploy-targets.yaml", &two_services_target("podman", "rhel", agent_port, web_port, &config, &env));
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

/// `kube_play: true`: the compose app's Kubernetes rendering runs under `podman kube play`.
/// Pods named by the project, the published port on its host port and nothing else
/// published, the carried image loaded. Then v2, rollback, and a v3 whose healthcheck (the
/// readiness probe, run by Podman as the liveness healthcheck) fails and is rolled back.
#[test]
fn podman_kube_play_deploy_update_rollback_and_failed_health_on_a_real_engine() {
    if Needs::new().podman().docker().unmet() {
        return;
    }
    let w = World::new("kube-play-deploy");
    let pid = std::process::id();
    let (agent_port, web_port) = (free_port(), free_port());
    let project = format!("dkfkp{pid}");
    let image = format!("dkf-e2e-kp-{pid}:v1");
    let _docker = DockerCleanup { compose_projects: vec![], stacks: vec![], images: vec![image.clone()] };
    let _podman = PodmanCleanup { project: project.clone(), images: vec![format!("localhost/{image}")] };
    make_image(&image);
    let config = format!("kube_play: true, compose_project: {project}, images: bundle");
    let env = format!(", IMAGE: \"{image}\"");
    w.write("project/deploy-targets.yaml", &two_services_target("podman", "kp", agent_port, web_port, &config, &env));
    w.write("project/app/compose.yaml", TWO_SERVICES);
    w.write("project/app/.env", "APP_VERSION=v1\n");
    let (_coord, agent, _a) = w.start_push("kp", "kp", agent_port);
    let (code, v) = w.coord_json(&["deploy", "kp", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(http_body(web_port), "hello v1");
    let play = std::fs::read_to_string(agent.state.join("apps/shop/current/.dockfra/kube/play.yaml")).unwrap();
    assert!(play.contains(&format!("hostPort: {web_port}")) && play.contains("hostIP: 127.0.0.1"), "{play}");
    assert!(!play.contains("kind: Service\n") && !play.contains("initContainers"), "{play}");
    let pods = std::process::Command::new("podman")
        .args([
            "pod",
            "ps",
            "--filter",
            &format!("label=app.kubernetes.io/part-of={project}"),
            "--format",
            "{{.Name}} {{.Status}}",
        ])
        .output()
        .unwrap();
    let pods = String::from_utf8_lossy(&pods.stdout).to_string();
    assert!(pods.contains(&format!("{project}-web-pod")) && pods.contains(&format!("{project}-worker-pod")), "{pods}");
    assert_eq!(agent.status()["apps"][0]["health"], "healthy");
    v2_rollback_and_failing_v3(&w, "kp", &[], || http_body(web_port), "unhealthy");
}

/// Removes a registries.conf drop-in a test wrote.
struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `registry:` on a podman target: the coordinator pushes the image, the compose file names it
/// by the registry, and the host's Podman, which has never had it, pulls it from there.
#[test]
fn podman_pulls_images_the_coordinator_pushed_to_a_registry() {
    if Needs::new().podman().docker().tool("docker-registry", "Debian's docker-registry; scripts/engines").unmet() {
        return;
    }
    let w = World::new("podman-registry");
    let pid = std::process::id();
    let (reg_port, web_port) = (free_port(), free_port());
    let registry = format!("127.0.0.1:{reg_port}");
    let project = format!("dkfpodreg{pid}");
    let image = format!("dkf-e2e-podreg-{pid}:v1");
    let pushed = format!("{registry}/{image}");
    let _docker =
        DockerCleanup { compose_projects: vec![], stacks: vec![], images: vec![image.clone(), pushed.clone()] };
    let _podman = PodmanCleanup { project: project.clone(), images: vec![pushed.clone()] };
    let _registry = start_registry(&w, &registry);
    // Podman wants TLS unless registries.conf says otherwise: an operator's plain-HTTP
    // registry is declared insecure there.
    let conf = std::path::PathBuf::from(format!("/etc/containers/registries.conf.d/90-dkf-e2e-{pid}.conf"));
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    std::fs::write(&conf, format!("[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n")).unwrap();
    let _conf = RemoveFile(conf);
    make_image(&image);
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  rhel:
    platform: podman
    agent: {{ mode: pull, poll_interval: 1s }}
    config: {{ compose_project: {project}, registry: "{registry}" }}
    env: {{ IMAGE: "{image}", WEB_PORT: "{web_port}" }}
"#
        ),
    );
    w.write(
        "project/app/compose.yaml",
        r#"services:
  web:
    image: ${IMAGE}
    command: ["sh", "-c", "mkdir -p /www && echo 'hello from the registry' > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports: ["127.0.0.1:${WEB_PORT}:8080"]
"#,
    );
    w.init("127.0.0.1:0");
    let _coord = w.serve(&[]);
    let agent = Agent::new(&w, "rhel");
    agent.enroll(&format!("https://{}", w.addr()), &w.token("rhel")).ok();
    let _a = agent.start(&w);
    let podman_has =
        |r: &str| std::process::Command::new("podman").args(["image", "exists", r]).status().is_ok_and(|s| s.success());
    assert!(!podman_has(&pushed));
    let (code, v) = w.coord_json(&["deploy", "rhel", "--wait", "--timeout", "120s", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(http_body(web_port), "hello from the registry");
    assert!(podman_has(&pushed), "Podman pulled {pushed}");
    let o = std::process::Command::new("podman")
        .args(["ps", "--filter", &format!("label=com.docker.compose.project={project}"), "--format", "{{.Image}}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), pushed, "the container runs the registry's reference");
}

/// A systemd box, and a project whose podman target `target` (a pull agent; `config:` is
/// `config`) runs `compose` with the v1 `.env`, its web checked over HTTP on the returned port;
/// the coordinator's state is made, in the box's network namespace. `None`: skipped.
fn quadlet_world(name: &str, target: &str, config: &str, compose: &str) -> Option<(World, SystemdBox, u16)> {
    if Needs::new()
        .docker()
        .image(SYSTEMD_PODMAN)
        .tool("nsenter", "Debian's util-linux")
        .tool("python3", "Debian's python3")
        .unmet()
    {
        return None;
    }
    let mut w = World::new(name);
    let sbox = SystemdBox::start(&w);
    let web_port = free_port();
    w.coord_prefix = sbox.in_netns();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: shop, path: ./app }}
targets:
  {target}:
    host: 127.0.0.1
    platform: podman
    agent: {{ mode: pull, poll_interval: 1s }}
    config: {{ {config} }}
    env: {{ WEB_PORT: "{web_port}", RESTART: unless-stopped }}
    health:
      retries: 10
      interval: 500ms
      checks:
        - http: {{ url: "http://127.0.0.1:{web_port}/", status: 200, body: hello }}
"#
        ),
    );
    w.write("project/app/compose.yaml", compose);
    w.write("project/app/.env", "APP_VERSION=v1\n");
    w.init("127.0.0.1:0");
    Some((w, sbox, web_port))
}

#[test]
fn quadlet_deploy_update_rollback_and_failed_health_under_systemd() {
    let Some((w, sbox, web_port)) = quadlet_world(
        "quadlet-run",
        "rhel",
        "use_quadlet: true, rootless: false, compose_project: shop, images: bundle",
        TWO_SERVICES,
    ) else {
        return;
    };
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

/// The seed's own podman target (`use_quadlet: true`, `rootless: true`, `pod_name`): an agent
/// running as an unprivileged user installs user Quadlet units, which its systemd user instance
/// (started at boot by lingering) runs in one pod under rootless Podman; update, rollback and
/// a failed health check roll back as for rootful.
#[test]
fn rootless_quadlet_in_a_pod_under_a_users_systemd() {
    // In a pod the services share localhost: the worker reaches web there.
    let Some((w, sbox, web_port)) = quadlet_world(
        "quadlet-rootless",
        "staging-rhel",
        "use_quadlet: true, rootless: true, pod_name: shop-pod, compose_project: shop, images: bundle",
        &TWO_SERVICES.replace("http://web:8080/", "http://127.0.0.1:8080/"),
    ) else {
        return;
    };
    let _coord = w.serve(&[]);
    let mut agent = Agent::new(&w, "staging-rhel");
    std::fs::create_dir_all(&agent.state).unwrap();
    sh(&format!("chown 1000:1000 {}", agent.state.display()));
    agent.prefix = sbox.exec_as_user();
    agent.enroll(&format!("https://{}", w.addr()), &w.token("staging-rhel")).ok();
    let _a = agent.start(&w);
    let deploy = |args: &[&str]| w.coord_json(args);
    let wait = ["--wait", "--timeout", "180s", "--output", "json"];
    let user = |cmd: &str| {
        sbox.sh(&format!(
            "cd /home/dkf && runuser -u dkf -- env XDG_RUNTIME_DIR=/run/user/1000 DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus {cmd}"
        ))
    };

    let (code, v) = deploy(&[&["deploy", "staging-rhel"][..], &wait].concat());
    assert_eq!(code, 0, "{v}");
    assert_eq!(sbox.http_body(web_port), "hello v1");
    // The user's units, run by the user's systemd, in the user's Podman: root's has nothing.
    let (_, units, _) = sbox.sh("ls /home/dkf/.config/containers/systemd");
    let units: Vec<&str> = units.split_whitespace().collect();
    assert!(
        ["shop-pod.pod", "shop-web.container", "shop-worker.container"].iter().all(|u| units.contains(u)),
        "{units:?}"
    );
    assert_eq!(sbox.sh("ls /etc/containers/systemd").1, "", "nothing rootful");
    let (_, active, _) = user("systemctl --user is-active shop-pod-pod.service shop-web.service shop-worker.service");
    assert_eq!(active.split_whitespace().collect::<Vec<_>>(), ["active"; 3], "{active}");
    let (_, pods, _) = user("podman pod ps --format '{{.Name}} {{.NumberOfContainers}}'");
    assert_eq!(pods.trim(), "shop-pod 3", "web, worker and the pod's infra container");
    let (_, root_ps, _) = sbox.sh("podman ps -q");
    assert_eq!(root_ps.trim(), "", "root's Podman runs nothing");
    let (_, owner, _) = user("podman ps --filter name=shop-web --format '{{.Names}}'");
    assert_eq!(owner.trim(), "shop-web");

    v2_rollback_and_failing_v3(
        &w,
        "staging-rhel",
        &["--wait", "--timeout", "180s"],
        || sbox.http_body(web_port),
        "unhealthy",
    );
    // systemd (the user's) keeps the service: a container killed behind the agent's back
    // comes back.
    assert!(user("podman kill shop-web").0);
    wait_until("the user's systemd to restart shop-web", Duration::from_secs(60), || {
        sbox.http_body(web_port) == "hello v1"
    });
}

#[test]
fn quadlet_units_of_every_corpus_file_pass_the_real_generator() {
    let quadlet = std::path::Path::new("/usr/local/libexec/dockfra/quadlet");
    if Needs::new().file(quadlet, "Quadlet's generator; scripts/engines installs it").unmet() {
        return;
    }
    use dockfra_common::compose;
    use dockfra_coord::convert::quadlet::{convert, Options};
    let corpus = dockfra_common::shared_dir(&workspace()).join("corpus/awesome-compose");
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
