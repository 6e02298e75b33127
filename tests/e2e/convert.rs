//! `convert`: the project rendered for Kubernetes, Nomad, Quadlet and swarm from the CLI, and
//! every Kubernetes golden output checked by `kubernetes-validate --strict` (PyPI: the
//! Kubernetes OpenAPI schemas of a current release) — a validator that is not ours.
use std::path::{Path, PathBuf};
use std::process::Command;

use dockfra_e2e::*;

const VENV: &str = "/opt/dockfra-tools/venv/bin";

fn kubernetes_validate() -> PathBuf {
    Path::new(VENV).join("kubernetes-validate")
}

fn goldens(platform: &str) -> PathBuf {
    workspace().join("coordinator/tests/golden").join(platform)
}

const COMPOSE: &str = "services:
  web:
    image: nginx:1.27
    ports: ['8080:80']
    env_file: [web.env]
    depends_on:
      db: { condition: service_healthy }
  db:
    image: postgres:16
    expose: ['5432']
    volumes: [dbdata:/var/lib/postgresql/data]
    healthcheck:
      test: [CMD-SHELL, pg_isready]
      interval: 5s
volumes:
  dbdata: {}
";

const TARGETS: &str = "app: { name: shop, path: ./app }
targets:
  prod-k8s:
    platform: kubernetes
    env: { TAG: '1.27' }
    config:
      namespace: shop-prod
      replicas: 3
      resource_limits: { cpu: 500m, memory: 512Mi }
      workloads: { db: statefulset }
      volume_size: 5Gi
  nomad-cluster:
    platform: nomad
    config: { datacenter: dc1, job_name: shop, count: 2, driver: docker }
  staging:
    platform: podman
    config: { use_quadlet: true, pod_name: shop-pod }
  swarm:
    platform: swarm
    config: { replicas: 2 }
";

fn project(name: &str) -> World {
    let w = World::new(name);
    w.write("project/deploy-targets.yaml", TARGETS);
    w.write("project/app/compose.yaml", COMPOSE);
    w.write("project/app/web.env", "MODE=production\n");
    w
}

fn convert(w: &World, args: &[&str]) -> Run {
    let mut c = Command::new(bin("dockfra-coord"));
    c.arg("convert").arg("--root").arg(&w.project).args(args).env("DOCKFRA_LOG", "warn");
    run(c)
}

#[test]
fn convert_renders_each_platform_with_the_targets_config() {
    let w = project("convert");
    // Kubernetes: one YAML stream, the target's namespace, replicas, limits, StatefulSet.
    let k = convert(&w, &["--to", "k8s", "--target", "prod-k8s", "--release", "r42"]).ok();
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&k.stdout())
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let kinds: Vec<(String, String)> = docs
        .iter()
        .map(|d| (d["kind"].as_str().unwrap().to_string(), d["metadata"]["name"].as_str().unwrap().to_string()))
        .collect();
    for want in
        [("StatefulSet", "db"), ("Service", "db"), ("Deployment", "web"), ("Service", "web"), ("ConfigMap", "web-env")]
    {
        assert!(kinds.iter().any(|(k, n)| k == want.0 && n == want.1), "no {want:?} in {kinds:?}");
    }
    let web = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(web["metadata"]["namespace"], "shop-prod");
    assert_eq!(web["metadata"]["labels"]["dockfra.dev/release"], "r42");
    assert_eq!(web["spec"]["replicas"], 3);
    let c = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    let init = &web["spec"]["template"]["spec"]["initContainers"][0];
    assert!(init["command"][2].as_str().unwrap().contains("db 5432"), "{init:?}");
    let db = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    assert_eq!(db["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "5Gi");
    if kubernetes_validate().is_file() || skip_or_fail("kubernetes-validate (scripts/setup installs it)") {
        let f = w.path("stream.yaml");
        std::fs::write(&f, k.stdout()).unwrap();
        let mut v = Command::new(kubernetes_validate());
        v.args(["--strict", "--quiet"]).arg(&f);
        run(v).ok();
    }

    // --out: a file per object; all or nothing on a second run without --force.
    let out = w.path("manifests");
    convert(&w, &["--to", "k8s", "--target", "prod-k8s", "--out", out.to_str().unwrap()]).ok();
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert!(names.contains(&"statefulset-db.yaml".to_string()) && names.len() == 5, "{names:?}");
    let before = std::fs::read(out.join("deployment-web.yaml")).unwrap();
    let again = convert(&w, &["--to", "k8s", "--target", "prod-k8s", "--out", out.to_str().unwrap()]).fails();
    assert!(
        again.stderr().contains("exists: nothing written") && again.stderr().contains("--force"),
        "{}",
        again.stderr()
    );
    assert_eq!(std::fs::read(out.join("deployment-web.yaml")).unwrap(), before);

    // Nomad: HCL by default, the JSON job with --format json.
    let hcl = convert(&w, &["--to", "nomad", "--target", "nomad-cluster"]).ok().stdout();
    assert!(hcl.contains("job \"shop\"") && hcl.contains("datacenters"), "{hcl}");
    let json = convert(&w, &["--to", "nomad", "--target", "nomad-cluster", "--format", "json"]).ok().json();
    assert_eq!(json["Job"]["ID"], "shop");
    let groups = json["Job"]["TaskGroups"].as_array().unwrap();
    assert!(groups.iter().all(|g| g["Count"] == 2), "{groups:?}");

    // Quadlet and swarm, from their targets.
    let q = convert(&w, &["--to", "quadlet", "--target", "staging"]).ok().stdout();
    assert!(q.contains("# shop-pod.pod") && q.contains("Pod=shop-pod.pod"), "{q}");
    let s = convert(&w, &["--to", "swarm", "--target", "swarm"]).ok().stdout();
    let stack: serde_yaml_ng::Value = serde_yaml_ng::from_str(&s).unwrap();
    assert_eq!(stack["services"]["web"]["deploy"]["replicas"], 2, "{s}");
    assert!(stack.get("name").is_none(), "stack deploy refuses name: {s}");
}

#[test]
fn convert_refuses_dangerous_losses_and_bad_targets_and_writes_nothing() {
    let w = project("convert-refuse");
    w.write("project/app/compose.yaml", "services:\n  probe:\n    image: example/probe:1\n    network_mode: host\n");
    let out = w.path("never");
    let r = convert(&w, &["--to", "k8s", "--out", out.to_str().unwrap()]).fails();
    assert_eq!(r.code(), 5, "{}", r.stderr());
    assert!(
        r.stderr().contains("service probe: key network_mode") && r.stderr().contains("config.allow"),
        "{}",
        r.stderr()
    );
    assert!(!out.exists(), "a refused conversion wrote {}", out.display());
    // Allowed: the pod shares the node's network, and says so.
    let ok = convert(&w, &["--to", "k8s", "--allow", "network_mode"]).ok();
    assert!(
        ok.stdout().contains("hostNetwork: true") && ok.stderr().contains("warning: service probe"),
        "{}",
        ok.stderr()
    );
    // A target of another platform, an unknown target, an unknown --to.
    let r = convert(&w, &["--to", "k8s", "--target", "swarm"]).fails();
    assert!(r.stderr().contains("target \"swarm\" is not a kubernetes target"), "{}", r.stderr());
    let r = convert(&w, &["--to", "nomad", "--target", "nope"]).fails();
    assert!(r.stderr().contains("no target \"nope\""), "{}", r.stderr());
    let r = convert(&w, &["--to", "helm"]).fails();
    assert!(r.stderr().contains("invalid value 'helm'"), "{}", r.stderr());
}

/// Every golden Kubernetes output passes `kubernetes-validate --strict` for a current
/// Kubernetes (unknown fields and wrong types are refused).
#[test]
fn kubernetes_goldens_pass_kubernetes_validate_strict() {
    if Needs::new().file(&kubernetes_validate(), "scripts/setup: pip install kubernetes-validate").unmet() {
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(goldens("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path().join("expected.yaml"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    let mut v = Command::new(kubernetes_validate());
    v.args(["--strict", "--quiet"]).args(&files);
    run(v).ok();
    // And the validator does refuse: a wrong type and an unknown field in one of them.
    let w = World::new("k8s-validate");
    let bad = std::fs::read_to_string(&files[0]).unwrap().replacen("replicas: 1", "replicas: one\n  replikas: 1", 1);
    assert!(bad.contains("replicas: one"), "the first golden has no `replicas: 1`");
    w.write("bad.yaml", &bad);
    let mut v = Command::new(kubernetes_validate());
    v.args(["--strict", "--quiet"]).arg(w.path("bad.yaml"));
    let r = run(v).fails();
    assert!(r.stdout().contains("replicas") || r.stderr().contains("replicas"), "{}{}", r.stdout(), r.stderr());
}

/// Tears down what `podman kube play` made from a file, and the named volume.
struct KubeDown {
    file: PathBuf,
    volume: String,
}

impl Drop for KubeDown {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["kube", "down"]).arg(&self.file).output();
        let _ = Command::new("podman").args(["volume", "rm", "-f", &self.volume]).output();
    }
}

/// The Kubernetes rendering runs for real: `podman kube play` takes the objects `convert`
/// made from a compose app (a Deployment with its command, env and an env file's ConfigMap,
/// a PersistentVolumeClaim for a named volume), the pod comes up, and the app answers over
/// HTTP on the published port with what its environment and volume hold.
#[test]
fn kubernetes_rendering_runs_under_podman_kube_play() {
    if Needs::new().podman().image("dockfra-busybox:test").unmet() {
        return;
    }
    let w = World::new("kube-play");
    let port = free_port();
    let volume = format!("dkf-kp-{}", std::process::id());
    w.write(
        "project/app/compose.yaml",
        &format!(
            "services:
  web:
    image: dockfra-busybox:test
    command: [sh, -c, 'mkdir -p /data/www && echo \"$$GREETING from $$MODE\" > /data/www/index.html && exec httpd -f -p {port} -h /data/www']
    ports: ['{port}:{port}']
    env_file: [web.env]
    environment: {{ MODE: kube }}
    volumes: ['{volume}:/data']
    healthcheck:
      test: [CMD, wget, -q, -O, /dev/null, 'http://127.0.0.1:{port}/']
      interval: 2s
volumes:
  {volume}: {{}}
"
        ),
    );
    w.write("project/app/web.env", "GREETING=hello\n");
    w.write(
        "project/deploy-targets.yaml",
        "app: { name: kp, path: ./app }\ntargets:\n  k:\n    platform: kubernetes\n",
    );
    let k = convert(&w, &["--to", "k8s", "--target", "k"]).ok();
    let file = w.path("kp.yaml");
    std::fs::write(&file, k.stdout()).unwrap();
    // Podman's storage gets the image the Docker engine has.
    sh("docker save dockfra-busybox:test | podman load -q >/dev/null");
    let _down = KubeDown { file: file.clone(), volume: volume.clone() };
    let mut play = Command::new("podman");
    play.args(["kube", "play"]).arg(&file);
    run(play).ok();
    let mut body = String::new();
    wait_until("the pod answers over HTTP", std::time::Duration::from_secs(30), || {
        let o = Command::new("curl").args(["-sf", "-m", "2", &format!("http://127.0.0.1:{port}/")]).output().unwrap();
        body = String::from_utf8_lossy(&o.stdout).to_string();
        o.status.success()
    });
    assert_eq!(body.trim(), "hello from kube", "env from the ConfigMap and the container's own env");
    let o = Command::new("podman").args(["volume", "exists", &volume]).status().unwrap();
    assert!(o.success(), "the PersistentVolumeClaim became podman volume {volume}");
}

/// Every golden Nomad job parses with a real HCL2 parser (PyPI's python-hcl2), converts to the
/// same job as its JSON form, and that JSON decodes into a strict typed model of Nomad's job
/// API (`coordinator/tests/golden/nomad/check_hcl.py`: unknown fields and wrong types fail).
#[test]
fn nomad_goldens_parse_as_hcl2_and_decode_into_the_typed_job_model() {
    let python = Path::new(VENV).join("python");
    let venv_has_hcl2 = Command::new(&python).args(["-c", "import hcl2"]).status().is_ok_and(|s| s.success());
    if Needs::new().check(venv_has_hcl2, "python-hcl2 in /opt/dockfra-tools/venv (scripts/setup)").unmet() {
        return;
    }
    let mut c = Command::new(&python);
    c.arg(goldens("nomad").join("check_hcl.py"));
    let r = run(c).ok();
    let held = r.stdout().lines().filter(|l| l.starts_with("ok ")).count();
    assert!(held >= 10 && r.stdout().contains(&format!("{held} of {held} cases hold")), "{}", r.stdout());

    // The CLI's own output holds too: a case made from `convert --to nomad --out`.
    let w = project("convert-nomad");
    let case = w.path("case");
    convert(&w, &["--to", "nomad", "--target", "nomad-cluster", "--out", case.to_str().unwrap()]).ok();
    std::fs::rename(case.join("shop.nomad.hcl"), case.join("expected.hcl")).unwrap();
    std::fs::rename(case.join("shop.json"), case.join("expected.json")).unwrap();
    let mut c = Command::new(&python);
    c.arg(goldens("nomad").join("check_hcl.py")).arg(&case);
    run(c).ok();
}

/// The scripts that wait for a dependency run on a real BusyBox (Debian's, whose `nc` has no
/// `-z`): the Kubernetes init container's and the Nomad prestart task's wait until the
/// dependency's port answers, then let the service start.
#[test]
fn wait_for_dependency_scripts_run_on_real_busybox() {
    if Needs::new().image("dockfra-busybox:test").unmet() {
        return;
    }
    let w = project("convert-wait");
    w.write(
        "project/deploy-targets.yaml",
        &TARGETS.replace(
            "config: { datacenter: dc1, job_name: shop, count: 2, driver: docker }",
            "config: { datacenter: dc1, job_name: shop, group: single }",
        ),
    );
    let k = convert(&w, &["--to", "k8s", "--target", "prod-k8s"]).ok().stdout();
    let docs: Vec<serde_yaml_ng::Value> =
        serde_yaml_ng::Deserializer::from_str(&k).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let web = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let k8s_wait = web["spec"]["template"]["spec"]["initContainers"][0]["command"][2].as_str().unwrap().to_string();
    let job = convert(&w, &["--to", "nomad", "--target", "nomad-cluster", "--format", "json"]).ok().json();
    let tasks = job["Job"]["TaskGroups"][0]["Tasks"].as_array().unwrap().clone();
    let nomad_wait = tasks
        .iter()
        .find_map(|t| {
            let args = t["Config"]["args"].as_array()?;
            args.iter().filter_map(|a| a.as_str()).find(|a| a.starts_with("until ")).map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no wait task in {tasks:?}"));
    for (what, script, host) in [("kubernetes", &k8s_wait, "db"), ("nomad", &nomad_wait, "")] {
        let mut c = Command::new("docker");
        // --init: `timeout` below must not be PID 1, which SIGTERM cannot stop.
        c.args(["run", "--rm", "--init", "--network", "none"]);
        if !host.is_empty() {
            c.args(["--add-host", &format!("{host}:127.0.0.1")]);
        }
        // The dependency comes up 3 s late; the wait must hold until then, and only then end.
        let started = std::time::Instant::now();
        c.args([
            "dockfra-busybox:test",
            "timeout",
            "30",
            "sh",
            "-c",
            &format!("(sleep 3; httpd -p 5432 -h /) & {script} && echo ready"),
        ]);
        let r = run(c).ok();
        let took = started.elapsed();
        assert!(r.stdout().trim_end().ends_with("ready"), "{what}: {}{}", r.stdout(), r.stderr());
        assert!(
            took >= std::time::Duration::from_secs(3),
            "{what}: the wait ended after {took:?}, before the port was up"
        );
        assert!(took < std::time::Duration::from_secs(20), "{what}: the wait ran on for {took:?}");
    }
}
