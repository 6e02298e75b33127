//! Writes the generated seed corpora into `OUT_DIR/<target>/`: valid manifests of every
//! platform kind, assignments in the `assignment` target's layout (manifest, desired state
//! with the `@BUNDLE@` placeholder, rotation statements), offline archives signed with the
//! fixed test keys, and interpolation strings. `scripts/fuzz` runs it before fuzzing; the
//! compose and `deploy-targets.yaml` seeds are files it copies.
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use dockfra_common::bundle::{self, *};
use dockfra_common::config::{HealthCheck, HealthSpec, ServiceManager};
use dockfra_fuzz::{keys, BUNDLE_ID, ME, NOW, SEPARATOR};

fn file(path: &str, content: &[u8], mode: u32) -> (FileEntry, Vec<u8>) {
    let e = FileEntry {
        path: path.into(),
        kind: EntryKind::File,
        mode,
        size: content.len() as u64,
        sha256: dockfra_common::sha256_hex(content),
        link: None,
    };
    (e, content.to_vec())
}

fn link(path: &str, to: &str) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind: EntryKind::Symlink,
        mode: 0o777,
        size: 0,
        sha256: String::new(),
        link: Some(to.into()),
    }
}

fn compose(project: &str) -> DockerComposeSpec {
    DockerComposeSpec {
        project: project.into(),
        file: ".dockfra/compose.yaml".into(),
        wait_timeout_secs: 60,
        images: vec![],
        slots: None,
    }
}

/// Manifests with the blobs their files name.
fn manifests() -> Vec<(Manifest, Vec<Vec<u8>>)> {
    let (app, app_blob) = file("bin/app", b"#!/bin/sh\necho hi\n", 0o755);
    let (conf, conf_blob) = file("etc/app.conf", b"port=8080\n", 0o644);
    let (cf, cf_blob) = file(".dockfra/compose.yaml", b"services:\n  web:\n    image: shop/web:1.4\n", 0o644);
    let (unit, unit_blob) = file(".dockfra/quadlet/shop-web.container", b"[Container]\nImage=shop/web:1.4\n", 0o644);
    let image = b"not really a docker save archive";
    let base = Manifest {
        format: FORMAT,
        requires: vec![],
        target: ME.into(),
        app: "shop".into(),
        version: "v1.4".into(),
        sequence: 5,
        created_unix: NOW - 100,
        platform: PlatformSpec::SshRaw(SshRawSpec {
            deploy_path: Some("/srv/shop".into()),
            service_manager: ServiceManager::Systemd,
            service_name: Some("shop".into()),
            pre_script: Some("./migrate.sh".into()),
            post_script: None,
        }),
        files: vec![app.clone(), conf.clone(), link("current-conf", "etc/app.conf")],
        health: Some(HealthSpec {
            checks: vec![
                HealthCheck::Http { url: "http://127.0.0.1:8080/health".into(), status: 200, body: Some("ok".into()) },
                HealthCheck::Tcp { address: "127.0.0.1:8080".into() },
                HealthCheck::Command { command: "test -f /tmp/ok".into() },
            ],
            retries: 3,
            interval: Duration::from_millis(1500),
            timeout: Duration::from_secs(5),
            start_period: Duration::ZERO,
        }),
        keep_releases: 5,
        os: Some("linux".into()),
    };
    let with_images = DockerComposeSpec {
        images: vec![ImageRef {
            name: "shop/web:1.4".into(),
            id: "sha256:".to_string() + &"1".repeat(64),
            sha256: dockfra_common::sha256_hex(image),
            size: image.len() as u64,
        }],
        ..compose("shop")
    };
    vec![
        (base.clone(), vec![app_blob.clone(), conf_blob.clone()]),
        (
            Manifest {
                platform: PlatformSpec::DockerCompose(with_images),
                files: vec![cf.clone()],
                health: None,
                os: None,
                ..base.clone()
            },
            vec![cf_blob.clone(), image.to_vec()],
        ),
        (
            Manifest { platform: PlatformSpec::Swarm(compose("shop")), files: vec![cf.clone()], ..base.clone() },
            vec![cf_blob.clone()],
        ),
        (
            Manifest {
                platform: PlatformSpec::Podman(PodmanSpec {
                    compose: compose("shop"),
                    quadlet_units: vec!["shop-web.container".into()],
                    services: vec!["web".into()],
                    use_quadlet: true,
                    rootless: false,
                    start_machine: false,
                }),
                files: vec![cf, unit],
                ..base
            },
            vec![cf_blob, unit_blob],
        ),
    ]
}

fn desired(m: &Manifest, action: Action, sequence: u64) -> Vec<u8> {
    let d = DesiredState {
        format: FORMAT,
        requires: vec![],
        target: ME.into(),
        app: m.app.clone(),
        action,
        sequence,
        bundle_id: BUNDLE_ID.into(),
        deployment_id: "d-1".into(),
        issued_unix: NOW - 60,
        expires_unix: NOW + 3600,
    };
    serde_json::to_vec(&d).expect("serializes")
}

fn rotation(number: u32, old: usize, new: usize) -> Vec<u8> {
    format!(r#"{{"format":1,"number":{number},"old_key":"@K{old}@","new_key":"@K{new}@","issued_unix":{}}}"#, NOW - 10)
        .into_bytes()
}

fn join(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.join(SEPARATOR)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn main() {
    let out = std::env::args().nth(1).expect("usage: seeds OUT_DIR");
    let out = Path::new(&out);
    let keys = keys();
    for (i, (m, blobs)) in manifests().into_iter().enumerate() {
        let kind = m.platform.platform().as_str();
        let bytes = m.canonical_bytes();
        write(&out.join("manifest"), &format!("{i}-{kind}.json"), &bytes);
        let deploy = desired(&m, Action::Deploy, 7);
        write(&out.join("assignment"), &format!("{i}-{kind}"), &join(&[bytes.clone(), deploy.clone()]));
        let rollback = desired(&m, Action::Rollback, 9);
        write(&out.join("assignment"), &format!("{i}-{kind}-rollback"), &join(&[bytes.clone(), rollback]));
        let chain = [bytes.clone(), deploy, rotation(1, 0, 1), rotation(2, 1, 2)];
        write(&out.join("assignment"), &format!("{i}-{kind}-rotated"), &join(&chain));

        // Archives: the same documents signed for real, with their blobs (one with the chain).
        for (suffix, parts) in [("", &chain[..2]), ("-rotated", &chain[..])] {
            let a = dockfra_fuzz::signed_assignment(&keys, &join(parts));
            bundle::verify_assignment(&a, &dockfra_fuzz::policy(&keys[0].1)).expect("seed verifies");
            let digests: Vec<String> = blobs.iter().map(|b| dockfra_common::sha256_hex(b)).collect();
            let tar = write_archive(Vec::new(), &a, &digests, |d| {
                let b = blobs.iter().find(|b| dockfra_common::sha256_hex(b) == d).expect("blob").clone();
                Ok((b.len() as u64, Box::new(std::io::Cursor::new(b)) as Box<dyn Read>))
            })
            .expect("archive");
            write(&out.join("archive"), &format!("{i}-{kind}{suffix}.tar"), &tar);
        }
    }
    let strings = [
        "image: shop/web:${TAG:-latest}",
        "${SET:?set it in .env} $SET ${EMPTY-x} ${UNSET:+alt} $$ $${SET}",
        r#"${X:-{"a":{"b":1}}} ${SET:-${UNSET:-deep}}"#,
        "A=1\nexport B=\"two $A\\n\"\nC='lit $A'\nD=${A}-${MISSING:-def} # c\nE=\"multi\nline\"\n",
        "\u{feff}X=1\r\nY='2'\r\n",
    ];
    for (i, s) in strings.iter().enumerate() {
        write(&out.join("interpolate"), &format!("{i}.txt"), s.as_bytes());
    }
}
