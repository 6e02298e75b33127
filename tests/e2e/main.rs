//! End-to-end: the real `dockfra-coord` and `dockfra-agent` binaries in temp dirs on
//! 127.0.0.1 (and, for the NAT'd pull agent, in network namespaces the test creates).
//! Each test builds its own world; nothing is shared between tests.
//!
//! One test binary, a module per area; a feature's proof is the test named after it:
//! - [`spine`]: push and pull deploy, update, rollback, health, status and history; certificate
//!   renewal; the agent's config file; config errors; the seed fleet; the README demo.
//! - [`containers`]: `docker_compose`, images carried, built and pulled from a registry,
//!   `swarm`, `podman`, Quadlet.
//! - [`reach`]: the static agents under qemu, the .deb, Homebrew and launchd, `agent install`
//!   over SSH, the declared `os:`, a pull agent behind NAT.
//! - [`attacks`]: offline bundles, enrollment and authorization refused.
//! - [`faults`]: `kill -9` mid-deploy, the coordinator down, the disk full.
//! - [`apps`]: several projects on one coordinator, their targets sharing agents.
//! - [`rollouts`]: fleet deploys by selector in waves, resumed after a restart; production
//!   confirmation; two operators racing for a target.
//! - [`upgrade`]: agents that upgrade themselves in waves (static x86_64 and armv7 agents),
//!   and a broken binary that gives the old one back.
//! - [`convert`]: `convert` to Kubernetes, Nomad, Quadlet and swarm; the Kubernetes goldens
//!   under `kubernetes-validate --strict`.
//! - [`kubernetes`]: the kubernetes platform driving the real kubectl against a scripted API
//!   server: rolling, blue-green, canary, rollback, the cluster's refusals.
//! - [`nomad`]: the nomad platform over the HTTP API against responses recorded from Nomad's
//!   docs: register, follow, promote, revert, the API's refusals.
//! - [`zero_downtime`]: `strategy: blue-green` and `canary` on `docker_compose` and `podman`
//!   behind the agent's HAProxy, under load: deploy, rollback, a failed release, zero failures.
//! - [`tools`]: the daily tools: `setup`, `validate`.
//! - [`window`]: the REST API over HTTPS, its OpenAPI document under schemathesis, and the
//!   dashboard in headless Chromium.
//!
//! One area or one test: `cargo test -p dockfra-e2e --test e2e spine::` (or part of a name).
//! This file holds what several areas share: the three-target `ssh_raw` project, reading a
//! deploy dir, `deploy --output json`, and the systemd container. A test that needs root, an
//! engine or a tool says so first with the harness's `Needs`, which skips naming what is missing.
use std::time::Duration;

use dockfra_e2e::*;

mod apps;
mod attacks;
mod containers;
mod convert;
mod faults;
mod kubernetes;
mod nomad;
mod reach;
mod rollouts;
mod spine;
mod tools;
mod upgrade;
mod window;
mod zero_downtime;

/// A project with a push target, a pull target and an offline target, all `ssh_raw`.
fn project(w: &World, push_port: u16, extra_pre: &str, extra_post: &str) {
    let d = w.dir.display();
    w.write(
        "project/deploy-targets.yaml",
        &format!(
            r#"app: {{ name: web, path: ./app }}
targets:
  edge-push:
    host: 127.0.0.1
    platform: ssh_raw
    os: linux
    labels: {{ env: test }}
    agent: {{ mode: push, port: {push_port} }}
    config:
      deploy_path: {d}/deploy-push
      pre_script: "{extra_pre}"
      post_script: "{extra_post}"
    health:
      retries: 1
      interval: 100ms
      timeout: 2s
      checks:
        - command: "grep -q ok health.txt"
  edge-pull:
    host: 127.0.0.1
    platform: ssh_raw
    agent: {{ mode: pull, poll_interval: 300ms }}
    config:
      deploy_path: {d}/deploy-pull
      pre_script: "{extra_pre}"
      post_script: "{extra_post}"
    health:
      retries: 1
      interval: 100ms
      checks:
        - command: "grep -q ok health.txt"
  edge-offline:
    platform: ssh_raw
    agent: {{ mode: pull }}
    config:
      deploy_path: {d}/deploy-offline
"#
        ),
    );
    // 200 KiB that never changes between versions: it must travel once per agent only.
    let big: String = (0..200 * 1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    w.write("project/app/big.txt", &big);
    w.write("project/app/health.txt", "ok\n");
    w.write("project/app/VERSION", "v1\n");
    w.write("project/app/notes.log", "ignored\n");
    w.write("project/app/.dockfraignore", "*.log\n");
}

fn current(w: &World, deploy: &str) -> String {
    let link = w.path(deploy).join("web/current");
    std::fs::read_link(&link).map(|p| p.display().to_string()).unwrap_or_default()
}

fn live_version(w: &World, deploy: &str) -> String {
    std::fs::read_to_string(w.path(deploy).join("web/current/VERSION")).unwrap_or_default().trim().to_string()
}

fn deploy_json(w: &World, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["deploy"];
    a.extend_from_slice(args);
    a.extend(["--output", "json"]);
    let r = w.coord(&a);
    let code = r.code();
    (code, r.json())
}

const SYSTEMD_PODMAN: &str = "dockfra-systemd-podman:test";

/// A container booting systemd with Podman and Quadlet inside (scripts/systemd-podman-image),
/// on a network namespace of its own with nothing in it but loopback. The World's directory
/// and the built binaries are bind-mounted at the same paths, so an agent run inside sees
/// the same state paths as the test. Removed on drop.
struct SystemdBox {
    name: String,
    pid: String,
}

impl SystemdBox {
    fn start(w: &World) -> Self {
        // Several tests may each run a box at once: one name per box.
        static BOXES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BOXES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("dkf-systemd-{}-{n}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let world = format!("{}:{}", w.dir.display(), w.dir.display());
        let bins = bin("dockfra-agent").parent().unwrap().display().to_string();
        let bins = format!("{bins}:{bins}:ro");
        let (ok, _, err) = docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--pull",
            "never",
            "--network",
            "none",
            "--cgroupns=private",
            "--cap-add",
            "ALL",
            "--cap-drop",
            "SYS_RESOURCE",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "systempaths=unconfined",
            "--tmpfs",
            "/var/lib/containers:rw,exec,dev,suid",
            // Rootless Podman (user dkf): slirp4netns's tun device, and storage off overlayfs.
            "--device",
            "/dev/net/tun",
            "--tmpfs",
            "/home/dkf/.local/share/containers:rw,exec,dev,suid,uid=1000,gid=1000,mode=0700",
            "-v",
            &world,
            "-v",
            &bins,
            SYSTEMD_PODMAN,
        ]);
        assert!(ok, "docker run {SYSTEMD_PODMAN}: {err}");
        let b = SystemdBox { pid: docker(&["inspect", "-f", "{{.State.Pid}}", &name]).1, name };
        // Right after start systemd may not answer on its bus yet.
        let mut state = String::new();
        wait_until("systemd to boot in the container", Duration::from_secs(90), || {
            state = docker(&["exec", &b.name, "systemctl", "is-system-running", "--wait"]).1;
            state == "running" || state == "degraded"
        });
        if state == "degraded" {
            let failed = docker(&["exec", &b.name, "systemctl", "--failed", "--no-legend"]).1;
            eprintln!("systemd in {} is degraded: {failed}", b.name);
        }
        b
    }

    /// `docker exec` prefix for the agent as the unprivileged user `dkf` (uid 1000), with its
    /// systemd user instance (started at boot: lingering) and session bus.
    fn exec_as_user(&self) -> Vec<String> {
        wait_until("dkf's systemd user instance", Duration::from_secs(60), || {
            docker(&["exec", &self.name, "systemctl", "is-active", "user@1000.service"]).1 == "active"
        });
        [
            "docker",
            "exec",
            "-i",
            "-u",
            "dkf",
            "-w",
            "/home/dkf",
            "-e",
            "XDG_RUNTIME_DIR=/run/user/1000",
            "-e",
            "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus",
            "-e",
            "DOCKFRA_LOG=dockfra_agent=debug",
            &self.name,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Run a program from this host inside the container's network namespace only.
    fn in_netns(&self) -> Vec<String> {
        ["nsenter", "-t", &self.pid, "-n"].map(String::from).to_vec()
    }

    /// `docker exec` prefix for programs that must run inside the container (the agent).
    fn exec(&self) -> Vec<String> {
        ["docker", "exec", "-i", "-e", "DOCKFRA_LOG=dockfra_agent=debug", &self.name].map(String::from).to_vec()
    }

    fn sh(&self, cmd: &str) -> (bool, String, String) {
        docker(&["exec", &self.name, "sh", "-c", cmd])
    }

    /// GET http://127.0.0.1:PORT/ inside the container's network namespace.
    fn http_body(&self, port: u16) -> String {
        let get = format!(
            "import urllib.request as u\ntry: print(u.urlopen('http://127.0.0.1:{port}/', timeout=3).read().decode())\nexcept Exception: pass"
        );
        let mut c = std::process::Command::new("nsenter");
        c.args(["-t", &self.pid, "-n", "python3", "-c", &get]);
        c.output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
    }
}

impl Drop for SystemdBox {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
    }
}
