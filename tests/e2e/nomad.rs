//! The `nomad` platform end to end: the coordinator renders the compose app as a Nomad job,
//! the agent registers it through the HTTP API and follows its deployment. No Nomad binary
//! can be had here: `tests/nomadapi/nomad_api.py` answers with responses recorded from
//! Nomad's documentation (tests/nomadapi/recorded/), its deployments succeeding, failing
//! (`broken` images) or waiting for a canary promotion as Nomad's do. Proven: register with
//! the token and namespace, a failed deployment rolled back by re-registering the previous
//! release, `rollback`, canaries promoted once healthy, health from the allocations, and the
//! clear errors for a refused token, a missing namespace and an unreachable API.
use std::path::PathBuf;

use dockfra_e2e::*;

struct NomadApi {
    _proc: Proc,
    port: u16,
    log: PathBuf,
    state: PathBuf,
}

impl NomadApi {
    fn start(w: &World) -> Self {
        Self::start_with(w, &[])
    }

    fn start_with(w: &World, extra: &[&str]) -> Self {
        let tag = if extra.is_empty() { "nomad-api" } else { "nomad-api-tls" };
        let log = w.dir.join(format!("{tag}.log"));
        let state = w.dir.join(format!("{tag}.state.json"));
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["--log".as_ref(), log.as_os_str(), "--state-file".as_ref(), state.as_os_str()];
        for a in ["--token", "s3cret-token", "--namespace", "default", "--namespace", "shop"].iter().chain(extra) {
            args.push(a.as_ref());
        }
        let (proc, port) = scripted_api(w, "tests/nomadapi/nomad_api.py", tag, &args);
        NomadApi { _proc: proc, port, log, state }
    }

    /// The jobs the API holds: versions, the latest version's images, deployments.
    fn job(&self, id: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.state).unwrap_or_else(|_| "{}".into());
        serde_json::from_str::<serde_json::Value>(&text).unwrap()[id].clone()
    }

    fn image(&self, id: &str) -> String {
        self.job(id)["images"][0].as_str().unwrap_or_default().to_string()
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn deploy(w: &World) -> (i32, String) {
    let (code, v) = w.coord_json(&["deploy", "nomad", "--output", "json"]);
    (code, v["message"].as_str().unwrap_or_default().to_string())
}

#[test]
fn nomad_register_follow_promote_roll_back_and_api_errors_over_http() {
    if Needs::new().tool("python3", "python3").unmet() {
        return;
    }
    let w = World::new("nomad");
    let api = NomadApi::start(&w);
    let port = free_port();
    let token = w.dir.join("nomad-token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let targets = format!(
        "app: {{ name: shop, path: ./app }}\ntargets:\n  nomad:\n    host: 127.0.0.1\n    platform: nomad\n    \
         agent: {{ mode: push, port: {port} }}\n    config:\n      address: http://127.0.0.1:{}\n      \
         token_file: {}\n      namespace: shop\n      job_name: shop\n      \
         update: {{ min_healthy_time: 1s, healthy_deadline: 5s, progress_deadline: 10s }}\n",
        api.port,
        token.display()
    );
    w.write("project/deploy-targets.yaml", &targets);
    w.write(
        "project/app/compose.yaml",
        "services:\n  web:\n    image: registry.example/web:${TAG}\n    ports: [\"8080:8080\"]\n",
    );
    w.write("project/app/.env", "TAG=1\n");
    let (_coord, agent, _run) = w.start_push("nomad", "nomad", port);

    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(api.image("shop"), "registry.example/web:1");
    assert_eq!(api.job("shop")["deployments"][0]["Status"], "successful");
    let register = api.requests().into_iter().find(|r| r["method"] == "POST" && r["path"] == "/v1/jobs").unwrap();
    assert_eq!(register["query"]["namespace"], "shop");
    assert_eq!(register["token"], "s3cret-token");
    let body: serde_json::Value = serde_json::from_str(register["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["Job"]["ID"], "shop");
    assert_eq!(agent.status()["apps"][0]["health"], "healthy");

    w.write("project/app/.env", "TAG=2\n");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(api.image("shop"), "registry.example/web:2");

    // A deployment that fails: the previous release's job is registered again.
    w.write("project/app/.env", "TAG=broken\n");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 3, "{msg}");
    // Nomad's auto_revert went back first; the re-register of release 2 changes nothing.
    assert!(msg.contains("Failed due to unhealthy allocations - rolling back to job version 1"), "{msg}");
    assert!(msg.contains("rolled back to"), "{msg}");
    assert_eq!(api.image("shop"), "registry.example/web:2");

    let (code, v) = w.coord_json(&["rollback", "nomad", "--output", "json"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(api.image("shop"), "registry.example/web:1");

    // Canaries wait for a promotion; the agent promotes them once healthy.
    w.write("project/deploy-targets.yaml", &targets.replace("update: {", "update: { canary: 1,"));
    w.write("project/app/.env", "TAG=3\n");
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    let promote =
        api.requests().into_iter().find(|r| r["path"].as_str().unwrap().starts_with("/v1/deployment/promote/"));
    let promote = promote.expect("a promote request");
    let body: serde_json::Value = serde_json::from_str(promote["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["All"], true);
    assert_eq!(api.job("shop")["deployments"].as_array().unwrap().last().unwrap()["Status"], "successful");
    assert_eq!(api.image("shop"), "registry.example/web:3");

    // The API's refusals, said plainly; the job stays as it is.
    let versions = api.job("shop")["versions"].clone();
    w.write("project/app/.env", "TAG=4\n");
    std::fs::write(&token, "wrong-token\n").unwrap();
    let (code, msg) = deploy(&w);
    assert_ne!(code, 0, "{msg}");
    assert!(msg.contains("forbidden") && msg.contains("ACL token not found"), "{msg}");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    w.write("project/deploy-targets.yaml", &targets.replace("namespace: shop", "namespace: ghost"));
    let (code, msg) = deploy(&w);
    assert_ne!(code, 0, "{msg}");
    assert!(msg.contains("is in nonexistent namespace \"ghost\""), "{msg}");
    w.write(
        "project/deploy-targets.yaml",
        &targets.replace(&format!("127.0.0.1:{}", api.port), &format!("127.0.0.1:{}", free_port())),
    );
    let (code, msg) = deploy(&w);
    assert_ne!(code, 0, "{msg}");
    assert!(msg.contains("unreachable"), "{msg}");
    assert_eq!(api.job("shop")["versions"], versions);
    assert_eq!(api.image("shop"), "registry.example/web:3");
}

/// A CA, and certificates it signs for the servers (`server.global.nomad`, 127.0.0.1) and for
/// a client, made with the openssl CLI (the test's own PKI; nothing of dockfra's).
fn nomad_pki(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=nomad test CA"],
    ]
    .concat());
    for (name, san) in [
        ("server", "subjectAltName=DNS:server.global.nomad,IP:127.0.0.1"),
        ("client", "subjectAltName=DNS:cli.global.nomad"),
    ] {
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        std::fs::write(dir.join(&ext), format!("{san}\n")).unwrap();
        run(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}.global.nomad")]]
            .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

#[test]
fn nomad_over_https_with_the_targets_ca_and_client_certificate() {
    if Needs::new().tool("python3", "python3").tool("openssl", "openssl").unmet() {
        return;
    }
    let w = World::new("nomad-tls");
    let pki = w.dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    nomad_pki(&pki);
    let f = |n: &str| pki.join(n).display().to_string();
    let api = NomadApi::start_with(
        &w,
        &["--tls-cert", &f("server.pem"), "--tls-key", &f("server.key"), "--client-ca", &f("ca.pem")],
    );
    let port = free_port();
    let token = w.dir.join("nomad-token");
    std::fs::write(&token, "s3cret-token").unwrap();
    let targets = format!(
        "app: {{ name: shop, path: ./app }}\ntargets:\n  nomad:\n    host: 127.0.0.1\n    platform: nomad\n    \
         agent: {{ mode: push, port: {port} }}\n    config:\n      address: https://127.0.0.1:{}\n      \
         token_file: {}\n      ca_cert: {}\n      client_cert: {}\n      client_key: {}\n      \
         tls_server_name: server.global.nomad\n      job_name: shop\n      \
         update: {{ min_healthy_time: 1s, healthy_deadline: 5s, progress_deadline: 10s }}\n",
        api.port,
        token.display(),
        f("ca.pem"),
        f("client.pem"),
        f("client.key")
    );
    w.write("project/deploy-targets.yaml", &targets);
    w.write("project/app/compose.yaml", "services:\n  web:\n    image: registry.example/web:1\n");
    let (_coord, _agent, _run) = w.start_push("nomad", "nomad", port);
    let (code, msg) = deploy(&w);
    assert_eq!(code, 0, "{msg}");
    assert_eq!(api.job("shop")["deployments"][0]["Status"], "successful");

    // Without the client certificate the servers refuse the connection; with another CA the
    // agent refuses the servers.
    let no_client = targets
        .replace(&format!("      client_cert: {}\n      client_key: {}\n", f("client.pem"), f("client.key")), "");
    w.write("project/deploy-targets.yaml", &no_client);
    w.write("project/app/compose.yaml", "services:\n  web:\n    image: registry.example/web:2\n");
    let (code, msg) = deploy(&w);
    assert_ne!(code, 0, "{msg}");
    std::fs::copy(pki.join("client.pem"), pki.join("other-ca.pem")).unwrap();
    w.write("project/deploy-targets.yaml", &targets.replace(&f("ca.pem"), &f("other-ca.pem")));
    let (code, msg) = deploy(&w);
    assert_ne!(code, 0, "{msg}");
    assert!(msg.contains("TLS") || msg.contains("certificate"), "{msg}");
    assert_eq!(api.job("shop")["versions"], 1);
}
