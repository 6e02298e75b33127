//! What travels inside the job as templates: `env_file`, `configs`, `secrets` and project files,
//! and the tmpfs sizes of long-syntax mounts.
use std::collections::{BTreeMap, BTreeSet};

use dockfra_common::compose::parse_env_file;
use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Value};

use super::model::Template;
use super::{label_safe, runtime_interpolation, warn, Cx};
use crate::convert::{bytes, scalar, section, Rendered};

/// `env_file:` entries: (path, required).
fn env_file_paths(v: &Value) -> Vec<(String, bool)> {
    match v {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|i| match i {
                Value::Mapping(m) => {
                    Some((m.get("path").and_then(scalar)?, m.get("required").and_then(Value::as_bool).unwrap_or(true)))
                }
                other => scalar(other).map(|p| (p, true)),
            })
            .collect(),
        other => scalar(other).map(|p| (p, true)).into_iter().collect(),
    }
}

/// `env_file:` as one `env = true` template: the files parsed as compose reads them, later
/// files winning, keys of `environment` left out (compose's precedence; a template's
/// variables would win over `env` in Nomad), each value a JSON string (go-envparse's form).
pub(super) fn env_files(
    cx: &Cx,
    name: &str,
    svc: &Mapping,
    env_keys: &BTreeSet<String>,
    out: &mut Rendered,
) -> Option<Template> {
    let paths = env_file_paths(svc.get("env_file")?);
    let mut vars = BTreeMap::new();
    for (p, required) in paths {
        match (cx.files)(&p) {
            Some(data) => match parse_env_file(&String::from_utf8_lossy(&data)) {
                Ok(m) => vars.extend(m),
                Err(e) => out.errors.push(format!("service {name}: env_file {p}: {e}")),
            },
            None if required => out.errors.push(format!("service {name}: env_file {p}: cannot be read")),
            None => warn(out, name, "env_file", &format!("{p} cannot be read (required: false); skipped")),
        }
    }
    let mut text = String::new();
    for (k, v) in vars {
        if env_keys.contains(&k) {
            continue;
        }
        let ident = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            warn(
                out,
                name,
                "env_file",
                &format!("variable {k:?}: Nomad's env templates take [A-Za-z_][A-Za-z0-9_]* names; not set"),
            );
            continue;
        }
        runtime_interpolation(out, name, &format!("env_file.{k}"), &[&v]);
        text.push_str(&format!("{k}={}\n", Json::String(v)));
    }
    (!text.is_empty()).then(|| Template {
        data: template_escape(&text),
        destination: "secrets/env_file.env".into(),
        env: true,
        change_mode: "restart",
        perms: None,
        uid: None,
        gid: None,
    })
}

/// A project file as text (templates carry text only).
pub(super) fn project_file(cx: &Cx, path: &str) -> Option<String> {
    (cx.files)(path).and_then(|d| String::from_utf8(d).ok())
}

/// A relative path as a path under a task directory: no `.`, `..` or empty segments.
pub(super) fn safe_path(p: &str) -> String {
    let segs: Vec<String> = p
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .map(|s| if s == ".." { "__".to_string() } else { s.to_string() })
        .collect();
    if segs.is_empty() {
        "file".into()
    } else {
        segs.join("/")
    }
}

/// Text inside a Nomad template is a Go template: a literal `{{` must be written as an
/// action printing it.
pub(super) fn template_escape(s: &str) -> String {
    s.replace("{{", "{{\"{{\"}}")
}

/// A file mode as compose writes it (`0440` as a string, `0o440` as a number) in octal.
pub(super) fn file_mode(v: &Value) -> Option<String> {
    let n = match v {
        Value::Number(n) => n.as_u64()?,
        other => {
            let s = scalar(other)?;
            let s = s.trim();
            u64::from_str_radix(s.strip_prefix("0o").unwrap_or(s), 8).ok()?
        }
    };
    (n <= 0o7777).then(|| format!("{n:04o}"))
}

/// A service's `configs:` or `secrets:` as templates (and the container path of each).
pub(super) fn file_refs(cx: &Cx, name: &str, svc: &Mapping, kind: &str, out: &mut Rendered) -> Vec<(Template, String)> {
    let Some(items) = svc.get(kind).and_then(Value::as_sequence) else { return vec![] };
    let one = if kind == "configs" { "config" } else { "secret" };
    let defined = section(cx.model, kind);
    let mut res = Vec::new();
    for item in items {
        let (source, target, m) = match item {
            Value::Mapping(m) => (m.get("source").and_then(scalar), m.get("target").and_then(scalar), Some(m)),
            other => (scalar(other), None, None),
        };
        let Some(source) = source else {
            warn(out, name, kind, "an entry without source; ignored");
            continue;
        };
        let Some(def) = defined.iter().find(|(n, _)| *n == source).map(|(_, d)| *d) else {
            warn(out, name, kind, &format!("{one} {source} is not defined at the top level; not mounted"));
            continue;
        };
        let text = if let Some(f) = def.get("file").and_then(scalar) {
            match (cx.files)(&f).map(String::from_utf8) {
                Some(Ok(t)) => t,
                Some(Err(_)) => {
                    warn(
                        out,
                        name,
                        kind,
                        &format!("{one} {source}: file {f} is not text (templates carry text); not mounted"),
                    );
                    continue;
                }
                None => {
                    out.errors.push(format!("service {name}: {one} {source}: file {f}: cannot be read"));
                    continue;
                }
            }
        } else if let Some(c) = def.get("content").and_then(scalar).filter(|_| kind == "configs") {
            c
        } else if def.get("external").and_then(Value::as_bool) == Some(true) {
            warn(out, name, kind, &format!("{one} {source} is external: Nomad cannot fetch it; not mounted (a template reading a Nomad Variable can)"));
            continue;
        } else if def.get("environment").is_some() {
            warn(
                out,
                name,
                kind,
                &format!("{one} {source} comes from the host's environment at deploy time; not carried"),
            );
            continue;
        } else {
            warn(out, name, kind, &format!("{one} {source} has no file or content; not mounted"));
            continue;
        };
        let target = match (kind, target) {
            ("configs", Some(t)) => t,
            ("configs", None) => format!("/{source}"),
            (_, Some(t)) if t.starts_with('/') => t,
            (_, Some(t)) => format!("/run/secrets/{t}"),
            (_, None) => format!("/run/secrets/{source}"),
        };
        let dest = match kind {
            "configs" => format!("local/configs/{}", label_safe(&source)),
            _ => format!("secrets/{}", label_safe(&source)),
        };
        let int = |k: &str| m.and_then(|m| m.get(k)).and_then(scalar).and_then(|s| s.parse::<i64>().ok());
        res.push((
            Template {
                data: template_escape(&text),
                destination: dest,
                env: false,
                change_mode: "restart",
                perms: m.and_then(|m| m.get("mode")).and_then(file_mode),
                uid: int("uid"),
                gid: int("gid"),
            },
            target,
        ));
    }
    res
}

/// Sizes of long-syntax tmpfs mounts (`{type: tmpfs, target, tmpfs: {size}}`), by target.
pub(super) fn long_tmpfs_sizes(svc: &Mapping) -> BTreeMap<String, u64> {
    let mut sizes = BTreeMap::new();
    for v in svc.get("volumes").and_then(Value::as_sequence).into_iter().flatten() {
        let Value::Mapping(m) = v else { continue };
        let target = m.get("target").and_then(scalar);
        let size = m.get("tmpfs").and_then(|t| t.get("size")).and_then(|s| match s {
            Value::Number(n) => n.as_u64(),
            other => scalar(other).and_then(|s| bytes(&s)),
        });
        if let (Some(t), Some(s)) = (target, size) {
            sizes.insert(t, s);
        }
    }
    sizes
}
