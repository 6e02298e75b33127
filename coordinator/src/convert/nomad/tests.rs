use std::collections::BTreeMap;
use std::path::Path;

use dockfra_common::compose::{self, LoadOptions};
use serde_json::{json, Value as Json};

use super::files::file_mode;
use super::render::{attr, block, body, go_duration, key, nanos, quote, s, strs, Expr};
use super::*;

fn yaml(s: &str) -> Value {
    serde_yaml_ng::from_str(s).unwrap()
}

fn render(model: &str, cfg: &NomadConfig) -> Rendered {
    let opts = Options { app: "t".into(), release: None, config: cfg };
    convert(&yaml(model), &opts, &|_: &str| None)
}

fn hcl_of(r: &Rendered) -> &str {
    &r.files.iter().find(|(n, _)| n.ends_with(".hcl")).unwrap().1
}

#[test]
fn hcl_strings_escape_quotes_backslashes_controls_and_template_sequences() {
    assert_eq!(quote(r#"say "hi" \o/"#), r#""say \"hi\" \\o/""#);
    assert_eq!(quote("a\nb\tc\rd\u{1}"), r#""a\nb\tc\rd\u0001""#);
    // `${` and `%{` start interpolations and directives; doubled they are literal.
    assert_eq!(quote("${HOME} %{if} $${x}"), r#""$${HOME} %%{if} $$${x}""#);
    // A `$` or `%` not followed by `{` is literal as it is.
    assert_eq!(quote("$HOME 100% $$ %"), r#""$HOME 100% $$ %""#);
    assert_eq!(quote("ünïcødé ✓"), "\"ünïcødé ✓\"");
    assert_eq!(key("plain_key-1"), "plain_key-1");
    assert_eq!(key("com.example.label"), "\"com.example.label\"");
    assert_eq!(key("1abc"), "\"1abc\"");
}

#[test]
fn hcl_bodies_align_runs_and_break_them_at_multi_line_values() {
    let mut out = String::new();
    let items = vec![
        attr("a", s("1")),
        attr("long_name", Expr::Int(2)),
        attr("m", Expr::Object(vec![("k".into(), s("v"))])),
        attr("after", Expr::Bool(true)),
        block("blk", &["x y"], vec![attr("z", strs(&["q".to_string()]))]),
    ];
    body(&items, 0, &mut out);
    assert_eq!(
        out,
        "a         = \"1\"\nlong_name = 2\nm = {\n  k = \"v\"\n}\nafter = true\n\nblk \"x y\" {\n  z = [\"q\"]\n}\n"
    );
}

#[test]
fn durations_in_go_form_and_nanoseconds() {
    let d = |ms| go_duration(Duration::from_millis(ms));
    assert_eq!(
        [d(10_000), d(300_000), d(3_600_000), d(90_000), d(1_500), d(0), d(5_400_000)],
        ["10s", "5m", "1h", "90s", "1500ms", "0s", "90m"]
    );
    assert_eq!(go_duration(Duration::from_nanos(1_500)), "1500ns");
    assert_eq!(nanos(Duration::from_secs(10)), json!(10_000_000_000u64));
}

#[test]
fn restart_policies() {
    let r = |policy: &str| {
        let mut out = Rendered::default();
        let svc = yaml(&format!("restart: {policy:?}"));
        (restart_policy("s", svc.as_mapping().unwrap(), &mut out), out.warnings.len())
    };
    let fail = |n| Some(Restart { attempts: Some(n), mode: Some("fail"), ..Default::default() });
    let delay = Some(Restart { mode: Some("delay"), ..Default::default() });
    assert_eq!(r("no"), (fail(0), 0));
    assert_eq!(r("always"), (delay.clone(), 0));
    assert_eq!(r("unless-stopped"), (delay.clone(), 0));
    // Nomad cannot tell a failure from a clean exit: a warning says so.
    assert_eq!(r("on-failure"), (delay, 1));
    assert_eq!(r("on-failure:3"), (fail(3), 1));
    assert_eq!(r("on-failure:x"), (None, 2));
    assert_eq!(r("sometimes"), (None, 1));
}

#[test]
fn a_fail_mode_restart_also_stops_rescheduling() {
    let r = render("services: {a: {image: x, restart: 'no'}, b: {image: y, restart: always}}", &NomadConfig::default());
    let h = hcl_of(&r);
    assert_eq!(h.matches("reschedule {").count(), 1, "{h}");
    assert!(h.contains("group \"a\" {\n    count = 1\n\n    network {\n      mode = \"bridge\"\n    }\n\n    restart {\n      attempts = 0\n      mode     = \"fail\"\n    }\n\n    reschedule {\n      attempts  = 0\n      unlimited = false\n    }"), "{h}");
}

#[test]
fn http_probes_of_localhost_become_http_checks() {
    let p = |v: &[&str]| http_probe(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(p(&["curl", "-f", "http://localhost:8080/health"]), Some((8080, "/health".into())));
    assert_eq!(p(&["/bin/sh", "-c", "wget -qO- http://127.0.0.1/ || exit 1"]), Some((80, "/".into())));
    assert_eq!(p(&["/bin/sh", "-c", "curl -f http://localhost:3000"]), Some((3000, "/".into())));
    assert_eq!(p(&["curl", "http://example.com/"]), None);
    assert_eq!(p(&["pg_isready"]), None);
    assert_eq!(p(&["/bin/sh", "-c", "true || curl http://localhost/"]), None);
    assert_eq!(p(&[]), None);
}

#[test]
fn template_text_and_file_modes() {
    assert_eq!(template_escape("a {{ b }} {{{"), "a {{\"{{\"}} b }} {{\"{{\"}}{");
    assert_eq!(file_mode(&yaml("'0440'")), Some("0440".into()));
    assert_eq!(file_mode(&yaml("0o440")), Some("0440".into()));
    assert_eq!(file_mode(&yaml("288")), Some("0440".into()));
    assert_eq!(file_mode(&yaml("'rw'")), None);
    assert_eq!(safe_path("./a/../b//c"), "a/__/b/c");
    assert_eq!(safe_path("./"), "file");
}

#[test]
fn port_labels_are_unique_per_group_and_udp_shares_the_tcp_label() {
    let r = render(
        "services: {dns: {image: x, ports: ['53:53/udp', '53:53/tcp', '8053:53', {target: 80, name: web-ui}]}}",
        &NomadConfig::default(),
    );
    let h = hcl_of(&r);
    assert!(h.contains("ports = [\"p53\", \"p53_2\", \"web_ui\"]"), "{h}");
    assert!(r.errors.is_empty() && r.warnings.is_empty(), "{r:?}");
}

#[test]
fn single_group_ports_that_collide_are_refused() {
    let cfg = NomadConfig { group: NomadGrouping::Single, ..Default::default() };
    let r = render("services: {a: {image: x, expose: ['80']}, b: {image: y, expose: ['80']}}", &cfg);
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(r.errors[0].starts_with("service b: key ports: port 80 is also a's"), "{r:?}");
    let allowed = NomadConfig { allow: vec!["b.ports".into()], ..cfg };
    assert!(render("services: {a: {image: x, expose: ['80']}, b: {image: y, expose: ['80']}}", &allowed)
        .errors
        .is_empty());
}

#[test]
fn both_files_are_rendered_and_name_the_job() {
    let cfg = NomadConfig { job_name: Some("shop".into()), ..Default::default() };
    let r = render("services: {web: {image: nginx}}", &cfg);
    let names: Vec<&str> = r.files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["shop.nomad.hcl", "shop.json"]);
    let j: Json = serde_json::from_str(&r.files[1].1).unwrap();
    assert_eq!(j["Job"]["ID"], "shop");
    assert_eq!(j["Job"]["Meta"], json!({"dockfra_app": "t"}));
}

#[test]
fn secret_contents_stay_out_of_warnings_and_errors() {
    let model = yaml(
        "services: {app: {image: x, secrets: [pw], environment: {TOKEN: 'hunter2-${x}'}, env_file: [e.env]}}\nsecrets: {pw: {file: pw.txt}}",
    );
    let files = |p: &str| match p {
        "pw.txt" => Some(b"hunter2-secret".to_vec()),
        "e.env" => Some(b"KEY=hunter2-env\nbad-key=hunter2-bad\n".to_vec()),
        _ => None,
    };
    let cfg = NomadConfig::default();
    let r = convert(&model, &Options { app: "t".into(), release: None, config: &cfg }, &files);
    let notes = format!("{:?}{:?}", r.warnings, r.errors);
    assert!(!notes.contains("hunter2"), "{notes}");
    assert!(hcl_of(&r).contains("hunter2-secret") && hcl_of(&r).contains("KEY=\\\"hunter2-env\\\""));
}

/// Every key the converter reads, given every shape of value: warnings, never a panic.
#[test]
fn malformed_values_never_panic() {
    let shapes = [
        "null",
        "true",
        "-1",
        "3.5",
        "''",
        "'::'",
        "'a:b:c:d'",
        "'on-failure:'",
        "'service:'",
        "[]",
        "[null, 1, [2], {a: 3}]",
        "['x=y', 'z']",
        "{}",
        "{a: null, b: [1], c: {d: e}}",
        "{source: 1, target: [], soft: x}",
    ];
    let keys: Vec<&str> = HANDLED.iter().copied().chain(DROPPED.iter().map(|(k, _, _)| *k)).collect();
    for single in [false, true] {
        for provider in ["nomad", "consul"] {
            for driver in ["docker", "podman"] {
                let cfg = NomadConfig {
                    group: if single { NomadGrouping::Single } else { NomadGrouping::PerService },
                    service_provider: Some(provider.into()),
                    driver: Some(driver.into()),
                    ..Default::default()
                };
                for key in &keys {
                    for shape in shapes {
                        let image = if *key == "image" { shape } else { "x" };
                        let model = format!(
                            "services:\n  s:\n    image: {image}\n    {key}: {shape}\n    ports: ['80']\n  t:\n    image: y\n    depends_on: [s]\nvolumes: {shape}\nconfigs: {shape}\nsecrets: {shape}"
                        );
                        let Ok(model) = serde_yaml_ng::from_str::<Value>(&model) else { continue };
                        let opts = Options { app: "t".into(), release: None, config: &cfg };
                        let r = convert(&model, &opts, &|_: &str| Some(b"\xff\xfe{{".to_vec()));
                        assert_eq!(r.files.len(), 2, "{key}: {shape}");
                    }
                }
            }
        }
    }
    // Not even a mapping.
    for top in ["null", "[1, 2]", "services: [1]", "services: {a: 1, b: null}"] {
        let r = render(top, &NomadConfig::default());
        assert_eq!(r.files.len(), 2, "{top}");
    }
}

/// What the corpus may refuse: the conversion's true errors, each a documented kind.
const CORPUS_ERRORS: &[&str] = &[
    // Nomad runs images: a service compose would build has none.
    "key build: no image: build it and set image:",
    // Shared namespaces of another service or container.
    "key network_mode: service:",
    "key network_mode: container:",
    "key pid: ",
    "key ipc: ",
    "key volumes_from: ",
    // A port compose binds to loopback only would be open to the network.
    ": the port would be reachable from the network",
    // A project file the job must carry, missing.
    ": cannot be read",
];

/// The awesome-compose samples convert without a panic, and every error they get is one
/// of [`CORPUS_ERRORS`], in both groupings and with both providers.
#[test]
fn awesome_compose_corpus_converts() {
    let root =
        dockfra_common::shared_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).join("corpus/awesome-compose");
    let Ok(entries) = std::fs::read_dir(&root) else {
        panic!("corpus not found at {}", root.display());
    };
    let mut dirs: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    dirs.sort();
    let env = BTreeMap::new();
    let (mut loaded, mut failed, mut refused) = (0, Vec::new(), 0);
    for dir in &dirs {
        let Some(file) = compose::find_compose_file(dir) else { continue };
        let opts = LoadOptions { project_name: None, overrides: &env, use_process_env: false };
        let project = match compose::load(&file, &opts) {
            Ok(p) => p,
            Err(e) => {
                failed.push(format!("{e}"));
                continue;
            }
        };
        loaded += 1;
        let files = |p: &str| std::fs::read(dir.join(p)).ok();
        for (group, provider) in [(NomadGrouping::PerService, "nomad"), (NomadGrouping::Single, "consul")] {
            let cfg = NomadConfig { group, service_provider: Some(provider.into()), ..Default::default() };
            let opts = Options { app: "corpus".into(), release: Some("1".into()), config: &cfg };
            let r = convert(&project.model, &opts, &files);
            assert_eq!(r.files.len(), 2);
            let json: Json = serde_json::from_str(&r.files[1].1).unwrap();
            assert!(json["Job"]["TaskGroups"].is_array(), "{}", file.display());
            for e in &r.errors {
                assert!(
                    CORPUS_ERRORS.iter().any(|k| e.contains(k)),
                    "{}: an error of no documented kind: {e}",
                    file.display()
                );
            }
            refused += usize::from(!r.errors.is_empty());
        }
    }
    assert!(loaded >= 30 && failed.len() * 10 <= loaded, "{loaded} loaded; failed: {failed:#?}");
    // Most samples build their own images: they are refused, but not all.
    assert!(refused < loaded * 2, "every sample was refused");
}
