//! Golden tests: `tests/golden/<platform>/<feature>/` holds `compose.yaml`, optionally
//! `config.yaml` (the target's `config:`), and the expected output (`expected.yaml` for
//! Kubernetes; `expected.hcl` and `expected.json` for Nomad), and `warnings.txt` /
//! `errors.txt` when the conversion reports any. Outputs are compared after normalisation
//! (YAML and JSON as values; HCL line by line, trailing blanks ignored).
//! `DOCKFRA_UPDATE_GOLDEN=1 cargo test -p dockfra-coord golden` rewrites them.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dockfra_common::compose::{self, LoadOptions};
use dockfra_common::config::{self, PlatformConfig};

use super::Rendered;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The target `t` of a project whose `config:` is `config.yaml`'s content.
fn target_config(dir: &Path, platform: &str) -> PlatformConfig {
    let cfg = std::fs::read_to_string(dir.join("config.yaml")).unwrap_or_else(|_| "{}".into());
    let mut text = format!("app: {{ name: golden }}\ntargets:\n  t:\n    platform: {platform}\n    config:\n");
    for line in cfg.lines() {
        text.push_str("      ");
        text.push_str(line);
        text.push('\n');
    }
    let project = config::parse(&text, &dir.join("deploy-targets.yaml"))
        .unwrap_or_else(|e| panic!("{}: config.yaml: {e}", dir.display()));
    project.targets[0].config.clone()
}

/// Read a file the way a converter asks for it: relative to the compose file's directory.
pub(crate) fn files_in(dir: &Path) -> impl Fn(&str) -> Option<Vec<u8>> + '_ {
    move |p: &str| std::fs::read(dir.join(p)).ok()
}

pub(crate) fn load(dir: &Path) -> compose::ComposeProject {
    let env = BTreeMap::new();
    let opts = LoadOptions { project_name: Some("golden"), overrides: &env, use_process_env: false };
    compose::load(&dir.join("compose.yaml"), &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn normalized(name: &str, text: &str) -> String {
    if name.ends_with(".yaml") {
        let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{name}: {e}")))
            .collect();
        serde_yaml_ng::to_string(&docs).unwrap()
    } else if name.ends_with(".json") {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_json::to_string_pretty(&v).unwrap()
    } else {
        text.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n")
    }
}

/// Compare (or with DOCKFRA_UPDATE_GOLDEN, write) one expected file.
fn check(dir: &Path, name: &str, got: &str, failures: &mut Vec<String>) {
    let path = dir.join(name);
    if std::env::var_os("DOCKFRA_UPDATE_GOLDEN").is_some() {
        if got.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            std::fs::write(&path, got).unwrap();
        }
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if want.trim().is_empty() && got.trim().is_empty() {
        return;
    }
    if want.trim().is_empty() || got.trim().is_empty() || normalized(name, &want) != normalized(name, got) {
        failures.push(format!("{}:\n--- want\n{want}\n--- got\n{got}", path.display()));
    }
}

#[test]
fn nomad_golden() {
    run("nomad", &|dir, model, cfg| {
        let PlatformConfig::Nomad(c) = cfg else { unreachable!() };
        let opts = super::nomad::Options { app: "golden".into(), release: Some("7".into()), config: c };
        super::nomad::convert(model, &opts, &files_in(dir))
    });
}

/// Run every feature directory of `platform` through `convert`, comparing each output file.
pub(crate) fn run(platform: &str, convert: &dyn Fn(&Path, &serde_yaml_ng::Value, &PlatformConfig) -> Rendered) {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join(platform))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("compose.yaml").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no golden cases for {platform}");
    let mut failures = Vec::new();
    for dir in &dirs {
        let project = load(dir);
        let cfg = target_config(dir, if platform == "k8s" { "kubernetes" } else { platform });
        let out = convert(dir, &project.model, &cfg);
        // Files of one kind go into one expected file (`expected.yaml`: one YAML stream).
        let mut by_ext: BTreeMap<String, String> = BTreeMap::new();
        for (name, text) in &out.files {
            let ext = name.rsplit('.').next().unwrap_or("txt").to_string();
            let all = by_ext.entry(ext.clone()).or_default();
            if ext == "yaml" && !all.is_empty() {
                all.push_str("---\n");
            }
            all.push_str(text);
        }
        for ext in ["yaml", "json", "hcl"] {
            check(dir, &format!("expected.{ext}"), by_ext.get(ext).map(String::as_str).unwrap_or(""), &mut failures);
        }
        let lines = |v: &[String]| if v.is_empty() { String::new() } else { v.join("\n") + "\n" };
        check(dir, "warnings.txt", &lines(&out.warnings), &mut failures);
        check(dir, "errors.txt", &lines(&out.errors), &mut failures);
    }
    assert!(failures.is_empty(), "{} golden mismatches:\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn k8s_golden() {
    run("k8s", &|dir, model, cfg| {
        let PlatformConfig::Kubernetes(c) = cfg else { unreachable!() };
        let opts =
            super::k8s::Options { app: "golden".into(), release: Some("7".into()), config: c, slot: None, track: None };
        super::k8s::convert(model, &opts, &files_in(dir))
    });
}

/// Every golden Kubernetes object decodes into k8s-openapi's typed object of its kind (the
/// API of Kubernetes 1.37) and encodes back to the same value: no field is unknown, misnamed
/// or of the wrong type (serde would drop or refuse it).
#[test]
fn k8s_goldens_round_trip_through_typed_objects() {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, networking::v1 as net};
    fn round<T: serde::de::DeserializeOwned + serde::Serialize>(v: &serde_json::Value) -> serde_json::Value {
        let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"));
        serde_json::to_value(&typed).unwrap()
    }
    let mut seen = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("k8s")).unwrap() {
        let file = entry.unwrap().path().join("expected.yaml");
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let y: serde_yaml_ng::Value = serde::Deserialize::deserialize(doc).unwrap();
            let v: serde_json::Value = serde_json::to_value(&y).unwrap();
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let back = match kind.as_str() {
                "Deployment" => round::<apps::Deployment>(&v),
                "StatefulSet" => round::<apps::StatefulSet>(&v),
                "DaemonSet" => round::<apps::DaemonSet>(&v),
                "Service" => round::<core::Service>(&v),
                "ConfigMap" => round::<core::ConfigMap>(&v),
                "Secret" => round::<core::Secret>(&v),
                "PersistentVolumeClaim" => round::<core::PersistentVolumeClaim>(&v),
                "Ingress" => round::<net::Ingress>(&v),
                other => panic!("{}: kind {other} has no typed check", file.display()),
            };
            assert_eq!(back, v, "{}: {kind} {} changed in the round trip", file.display(), v["metadata"]["name"]);
            *seen.entry(kind).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 8, "every kind the converter makes is covered: {seen:?}");
}
