//! The top-level `include:` of a compose file: which files it names, the
//! variables they are interpolated with, and their relative paths.
//!
//! The rules are the Compose spec's (`14-include.md`) and compose-go's
//! (`loader/include.go`): the short form is a list of paths; the long form
//! has `path`, `project_directory` and `env_file`. Paths in an entry are
//! relative to the including file's project directory. An included file is
//! its own project: its relative paths resolve against its
//! `project_directory` (by default, its own directory), and its variables
//! come from the including project's first, then from its `env_file`s (by
//! default, the `.env` in its project directory). A file that includes
//! itself, directly or not, is refused with the chain.
//!
//! Where dockfra is stricter than compose-go: every file an include reads
//! (compose files, `project_directory`, `env_file`) must resolve, symlinks
//! followed, inside the top-level file's directory, since the bundle
//! carries only that directory and an app's compose file must not make the
//! coordinator read files outside it; remote includes (`oci://`, git) and
//! a `path` list (files merged with Compose's merge rules) are refused.
//!
//! This module never merges resources (the loader does) and never touches
//! a file outside that directory.

use super::{excerpt, kind, parse_env_file_layered, ComposeError};
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// A path as the user sees it (for messages) and as it is on disk
/// (canonical, for comparisons and confinement).
#[derive(Debug, Clone)]
pub(super) struct Located {
    pub(super) shown: PathBuf,
    pub(super) canonical: PathBuf,
}

/// One entry of `include:`, checked for shape, its paths not yet resolved.
pub(super) struct Entry {
    /// `include[0]`, or `include[0].path` for the long form.
    key: String,
    /// `include[0]`.
    entry_key: String,
    path: String,
    project_directory: Option<String>,
    env_file: Option<Vec<String>>,
}

/// Parse the value of `include:` in `file`.
pub(super) fn entries(v: Value, file: &Path) -> Result<Vec<Entry>, ComposeError> {
    let invalid =
        |key: String, message: String| ComposeError::Invalid { file: file.to_path_buf(), key: Some(key), message };
    let items = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Sequence(items) => items,
        other => return Err(invalid("include".into(), format!("expected a list, found {}", kind(&other)))),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let entry_key = format!("include[{i}]");
        let non_empty = |key: &str, v: Value| match v {
            Value::String(s) if !s.is_empty() => Ok(s),
            other => Err(invalid(key.to_string(), format!("expected a non-empty string, found {}", kind(&other)))),
        };
        match item {
            Value::String(_) => {
                let path = non_empty(&entry_key, item)?;
                out.push(Entry { key: entry_key.clone(), entry_key, path, project_directory: None, env_file: None });
            }
            Value::Mapping(m) => {
                let (mut path, mut project_directory, mut env_file) = (None, None, None);
                for (k, v) in m {
                    let name = k.as_str().unwrap_or_default().to_string();
                    let key = format!("{entry_key}.{name}");
                    match name.as_str() {
                        "path" => {
                            path = Some(match v {
                                Value::Sequence(list) => match <[Value; 1]>::try_from(list) {
                                    Ok([one]) => non_empty(&format!("{key}[0]"), one)?,
                                    Err(list) if list.is_empty() => {
                                        return Err(invalid(key, "expected at least one path".into()))
                                    }
                                    Err(_) => {
                                        return Err(invalid(
                                            key,
                                            "several files in one entry (merged with Compose's merge rules) are not supported; include one file per entry".into(),
                                        ))
                                    }
                                },
                                other => non_empty(&key, other)?,
                            })
                        }
                        "project_directory" => project_directory = Some(non_empty(&key, v)?),
                        "env_file" => {
                            env_file = Some(match v {
                                Value::Sequence(list) => list
                                    .into_iter()
                                    .enumerate()
                                    .map(|(j, f)| non_empty(&format!("{key}[{j}]"), f))
                                    .collect::<Result<Vec<_>, _>>()?,
                                other => vec![non_empty(&key, other)?],
                            })
                        }
                        _ => {
                            return Err(invalid(key, "unknown key (expected path, project_directory or env_file)".into()))
                        }
                    }
                }
                let Some(path) = path else {
                    return Err(invalid(entry_key, "missing `path`".into()));
                };
                out.push(Entry { key: format!("{entry_key}.path"), entry_key, path, project_directory, env_file });
            }
            other => {
                return Err(invalid(
                    entry_key,
                    format!("expected a path or a mapping with `path`, found {}", kind(&other)),
                ))
            }
        }
    }
    Ok(out)
}

/// An entry resolved: the file to load, its project directory and the
/// env files for its variables.
pub(super) struct Resolved {
    pub(super) file: Located,
    pub(super) project_dir: Located,
    env_files: Vec<Located>,
}

/// Where an entry of `including` (whose project directory is `dir`) leads.
/// `root` is the canonical top-level directory; `chain` the files from the
/// top-level one down to `including`.
pub(super) fn resolve(
    entry: &Entry,
    including: &Located,
    dir: &Located,
    root: &Path,
    chain: &[Located],
) -> Result<Resolved, ComposeError> {
    let invalid = |key: &str, message: String| ComposeError::Invalid {
        file: including.shown.clone(),
        key: Some(key.to_string()),
        message,
    };
    // `shown` for messages; `raw` the same path on disk, to resolve.
    let confine = |key: &str, shown: PathBuf, raw: PathBuf| -> Result<Located, ComposeError> {
        let canonical =
            raw.canonicalize().map_err(|e| invalid(key, format!("cannot resolve {}: {e}", shown.display())))?;
        if !canonical.starts_with(root) {
            return Err(invalid(
                key,
                format!(
                    "{} resolves to {}, outside {}: dockfra only includes files inside the top-level compose file's directory",
                    shown.display(),
                    canonical.display(),
                    root.display()
                ),
            ));
        }
        Ok(Located { shown, canonical })
    };
    let locate = |key: &str, p: &str| -> Result<Located, ComposeError> {
        if p.contains("://") || p.starts_with("git@") {
            return Err(invalid(key, format!("{:?}: remote includes are not supported", excerpt(p))));
        }
        confine(key, lexical_join(&dir.shown, Path::new(p)), dir.canonical.join(p))
    };

    let file = locate(&entry.key, &entry.path)?;
    if !file.canonical.is_file() {
        return Err(invalid(&entry.key, format!("{} is not a file", file.shown.display())));
    }
    if chain.iter().any(|c| c.canonical == file.canonical) {
        let mut names: Vec<PathBuf> = chain.iter().map(|c| shown_in(root, c)).collect();
        names.push(shown_in(root, &file));
        return Err(ComposeError::IncludeCycle { file: including.shown.clone(), key: entry.key.clone(), chain: names });
    }
    let pd_key = format!("{}.project_directory", entry.entry_key);
    let project_dir = match &entry.project_directory {
        Some(pd) => {
            let d = locate(&pd_key, pd)?;
            if !d.canonical.is_dir() {
                return Err(invalid(&pd_key, format!("{} is not a directory", d.shown.display())));
            }
            d
        }
        None => Located {
            shown: file.shown.parent().map(Path::to_path_buf).unwrap_or_default(),
            canonical: file.canonical.parent().map(Path::to_path_buf).unwrap_or_default(),
        },
    };
    let env_key = format!("{}.env_file", entry.entry_key);
    let env_files = match &entry.env_file {
        // compose-go: the `.env` of the project directory, when there is one.
        None => {
            let dotenv = project_dir.canonical.join(".env");
            if dotenv.is_file() {
                vec![confine(&env_key, project_dir.shown.join(".env"), dotenv)?]
            } else {
                Vec::new()
            }
        }
        // compose-go: relative to the including project, each one must
        // exist; `/dev/null` stands for none.
        Some(list) => {
            let mut out = Vec::new();
            for (j, f) in list.iter().enumerate() {
                if f == "/dev/null" {
                    continue;
                }
                let key = if list.len() == 1 { env_key.clone() } else { format!("{env_key}[{j}]") };
                let l = locate(&key, f)?;
                if !l.canonical.is_file() {
                    return Err(invalid(&key, format!("{} is not a file", l.shown.display())));
                }
                out.push(l);
            }
            out
        }
    };
    Ok(Resolved { file, project_dir, env_files })
}

impl Resolved {
    /// The variables of the included project's env files: later files win
    /// over earlier ones, and `lookup` (the including project's variables)
    /// is consulted first while parsing them. The including project's
    /// variables still win over these (the caller looks them up first).
    pub(super) fn env(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, String>, ComposeError> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for f in &self.env_files {
            let text = std::fs::read_to_string(&f.canonical)
                .map_err(|source| ComposeError::Io { file: f.shown.clone(), source })?;
            let earlier = env.clone();
            let parsed = parse_env_file_layered(&text, lookup, &|k| earlier.get(k).cloned())
                .map_err(|message| ComposeError::EnvFile { file: f.shown.clone(), message })?;
            env.extend(parsed);
        }
        Ok(env)
    }
}

/// `p` for a chain in an error: relative to the top-level directory.
fn shown_in(root: &Path, p: &Located) -> PathBuf {
    p.canonical.strip_prefix(root).map(Path::to_path_buf).unwrap_or_else(|_| p.shown.clone())
}

/// `base` joined with `p`, `.` and `x/..` removed without reading the disk
/// (for messages and for rewriting relative paths).
pub(super) fn lexical_join(base: &Path, p: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in base.components().chain(p.components()) {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::RootDir | Component::Prefix(_) => {
                out.retain(|c| matches!(c, Component::Prefix(_)));
                out.push(c);
            }
            other => out.push(other),
        }
    }
    out.iter().collect()
}

// ───────────────────────────── relative paths ─────────────────────────────

/// Rewrite the relative paths of an included file's own resources (`top`,
/// normalized) so that they resolve from the top-level directory the same
/// way they resolved from the included project's directory `rel` (relative
/// to the top-level one): the keys compose-go resolves in
/// `paths/resolve.go`, in their short and long forms.
pub(super) fn rebase(top: &mut Mapping, rel: &Path) {
    if rel.as_os_str().is_empty() {
        return;
    }
    if let Some(Value::Mapping(services)) = top.get_mut("services") {
        for (_, svc) in services.iter_mut() {
            if let Value::Mapping(svc) = svc {
                rebase_service(svc, rel);
            }
        }
    }
    for section in ["configs", "secrets"] {
        if let Some(Value::Mapping(m)) = top.get_mut(section) {
            for (_, def) in m.iter_mut() {
                if let Some(Value::String(f)) = def.get_mut("file") {
                    *f = rebase_path(f, rel);
                }
            }
        }
    }
    // A local volume with `o: bind` is a bind mount of `device`.
    if let Some(Value::Mapping(m)) = top.get_mut("volumes") {
        for (_, def) in m.iter_mut() {
            let Value::Mapping(def) = def else { continue };
            if def.get("driver").and_then(Value::as_str) != Some("local") {
                continue;
            }
            if let Some(Value::Mapping(opts)) = def.get_mut("driver_opts") {
                if opts.get("o").and_then(Value::as_str) == Some("bind") {
                    if let Some(Value::String(dev)) = opts.get_mut("device") {
                        *dev = rebase_path(dev, rel);
                    }
                }
            }
        }
    }
}

fn rebase_service(svc: &mut Mapping, rel: &Path) {
    match svc.get_mut("build") {
        Some(Value::String(ctx)) => *ctx = rebase_context(ctx, rel),
        Some(Value::Mapping(build)) => {
            match build.get_mut("context") {
                Some(Value::String(ctx)) => *ctx = rebase_context(ctx, rel),
                // The context defaults to the project directory.
                None => {
                    build.insert("context".into(), Value::String(rebase_path(".", rel)));
                }
                Some(_) => {}
            }
            match build.get_mut("additional_contexts") {
                Some(Value::Mapping(m)) => {
                    for (_, v) in m.iter_mut() {
                        if let Value::String(ctx) = v {
                            *ctx = rebase_context(ctx, rel);
                        }
                    }
                }
                Some(Value::Sequence(list)) => {
                    for v in list {
                        if let Value::String(s) = v {
                            if let Some((name, ctx)) = s.split_once('=') {
                                *s = format!("{name}={}", rebase_context(ctx, rel));
                            }
                        }
                    }
                }
                _ => {}
            }
            match build.get_mut("ssh") {
                Some(Value::Sequence(list)) => {
                    for v in list {
                        if let Value::String(s) = v {
                            if let Some((id, path)) = s.split_once('=') {
                                *s = format!("{id}={}", rebase_path(path, rel));
                            }
                        }
                    }
                }
                Some(Value::Mapping(m)) => {
                    for (_, v) in m.iter_mut() {
                        if let Value::String(path) = v {
                            *path = rebase_path(path, rel);
                        }
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
    for key in ["env_file", "label_file"] {
        match svc.get_mut(key) {
            Some(Value::String(f)) => *f = rebase_path(f, rel),
            Some(Value::Sequence(list)) => {
                for v in list {
                    match v {
                        Value::String(f) => *f = rebase_path(f, rel),
                        Value::Mapping(m) => {
                            if let Some(Value::String(f)) = m.get_mut("path") {
                                *f = rebase_path(f, rel);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Mapping(ext)) = svc.get_mut("extends") {
        if let Some(Value::String(f)) = ext.get_mut("file") {
            *f = rebase_path(f, rel);
        }
    }
    if let Some(Value::Sequence(vols)) = svc.get_mut("volumes") {
        for v in vols {
            match v {
                // `SOURCE:TARGET[:MODE]`; a source starting with `.` is a
                // relative bind mount (compose-go's format/volume.go).
                Value::String(s) => {
                    if let Some((src, rest)) = s.split_once(':') {
                        if src.starts_with('.') {
                            *s = format!("{}:{rest}", rebase_path(src, rel));
                        }
                    }
                }
                Value::Mapping(m) if m.get("type").and_then(Value::as_str) == Some("bind") => {
                    if let Some(Value::String(src)) = m.get_mut("source") {
                        *src = rebase_path(src, rel);
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(Value::Sequence(watch)) = svc.get_mut("develop").and_then(|d| d.get_mut("watch")) {
        for w in watch {
            if let Some(Value::String(p)) = w.get_mut("path") {
                *p = rebase_path(p, rel);
            }
        }
    }
}

/// A build context: URLs, `service:` and git references are not paths
/// (compose-go's paths/context.go).
fn rebase_context(ctx: &str, rel: &Path) -> String {
    const REMOTE: [&str; 6] = ["https://", "http://", "git://", "ssh://", "github.com/", "git@"];
    if ctx.contains("://") || ctx.starts_with("service:") || REMOTE.iter().any(|p| ctx.starts_with(p)) {
        ctx.to_string()
    } else {
        rebase_path(ctx, rel)
    }
}

/// `p`, relative to the included project's directory `rel`, made relative
/// to the top-level directory: `./sub/data` for `./data` in `sub`. Absolute
/// paths, `~` paths and empty strings are kept.
fn rebase_path(p: &str, rel: &Path) -> String {
    if p.is_empty() || p.starts_with('/') || p.starts_with('~') {
        return p.to_string();
    }
    let joined = lexical_join(rel, Path::new(p));
    let s = joined.to_string_lossy().replace('\\', "/");
    if s.is_empty() {
        ".".into()
    } else if s == ".." || s.starts_with("../") {
        s
    } else {
        format!("./{s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::test_util::TempDir;
    use crate::compose::{load, load_with_warnings, ComposeProject, LoadOptions};

    fn dir(tag: &str, files: &[(&str, &str)]) -> TempDir {
        let d = TempDir::new(tag);
        for (name, text) in files {
            if let Some(parent) = Path::new(name).parent() {
                std::fs::create_dir_all(d.0.join(parent)).unwrap();
            }
            d.write(name, text);
        }
        d
    }

    fn load_in(d: &TempDir, env: &[(&str, &str)]) -> Result<ComposeProject, ComposeError> {
        let overrides: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let o = LoadOptions { project_name: Some("p"), overrides: &overrides, use_process_env: false };
        load(&d.0.join("compose.yaml"), &o)
    }

    fn yaml(text: &str) -> Value {
        serde_yaml_ng::from_str(text).unwrap()
    }

    #[test]
    fn short_form_brings_in_every_resource_with_paths_from_the_top() {
        let d = dir(
            "inc-short",
            &[
                (
                    "compose.yaml",
                    "include:\n  - sub/compose.yaml\nservices:\n  web:\n    image: web\n    depends_on: [db]\n    volumes: [./html:/html]\n",
                ),
                (
                    "sub/compose.yaml",
                    r#"
name: ignored
x-ignored: {a: 1}
services:
  db:
    build: .
    env_file: db.env
    volumes: [./data:/data, dbdata:/var/lib/db]
    secrets: [pw]
networks: {back: {}}
volumes: {dbdata: {}}
secrets: {pw: {file: ./pw.txt}}
configs: {conf: {file: conf.ini}}
"#,
                ),
            ],
        );
        let p = load_in(&d, &[]).unwrap();
        assert_eq!(p.services(), ["db", "web"]);
        let m = &p.model;
        assert_eq!(m.get("include"), None);
        assert_eq!(m.get("x-ignored"), None);
        assert_eq!(p.name, "p");
        let db = p.service("db").unwrap();
        assert_eq!(db["build"], Value::from("./sub"));
        assert_eq!(db["env_file"], Value::from("./sub/db.env"));
        assert_eq!(db["volumes"], yaml("[./sub/data:/data, dbdata:/var/lib/db]"));
        assert_eq!(p.service("web").unwrap()["volumes"], yaml("[./html:/html]"));
        assert_eq!(m["networks"], yaml("{back: {}}"));
        assert_eq!(m["volumes"], yaml("{dbdata: {}}"));
        assert_eq!(m["secrets"], yaml("{pw: {file: ./sub/pw.txt}}"));
        assert_eq!(m["configs"], yaml("{conf: {file: ./sub/conf.ini}}"));
        let keys: Vec<&str> = m.as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["name", "services", "networks", "volumes", "secrets", "configs"]);
    }

    #[test]
    fn variables_come_from_the_including_project_first() {
        // Spec 14-include.md: the included file's `.env` gives defaults,
        // "overridden by the local project's environment"; compose-go's
        // TestLoadWithIncludeEnv: its variables stay in the included file.
        let d = dir(
            "inc-env",
            &[
                (
                    "compose.yaml",
                    "include: [sub/compose.yaml]\nservices:\n  web:\n    image: \"web:${ONLY_SUB:-none}\"\n",
                ),
                ("sub/.env", "ONLY_SUB=sub\nTAG=from-sub\nDERIVED=${TAG}-x\n"),
                ("sub/compose.yaml", "services:\n  db:\n    image: \"db:${TAG}\"\n    labels: [\"d=${DERIVED}\", \"p=${COMPOSE_PROJECT_NAME}\"]\n"),
            ],
        );
        let p = load_in(&d, &[]).unwrap();
        assert_eq!(p.service("web").unwrap()["image"], Value::from("web:none"));
        assert_eq!(p.service("db").unwrap()["image"], Value::from("db:from-sub"));
        assert_eq!(p.service("db").unwrap()["labels"], yaml("[d=from-sub-x, p=p]"));
        // The top-level `.env` and the target's env win over the included `.env`.
        d.write(".env", "TAG=from-top\n");
        let p = load_in(&d, &[]).unwrap();
        assert_eq!(p.service("db").unwrap()["image"], Value::from("db:from-top"));
        assert_eq!(p.service("db").unwrap()["labels"][0], Value::from("d=from-top-x"));
        let p = load_in(&d, &[("TAG", "from-env")]).unwrap();
        assert_eq!(p.service("db").unwrap()["image"], Value::from("db:from-env"));
    }

    #[test]
    fn long_form_project_directory_and_env_files() {
        let d = dir(
            "inc-long",
            &[
                (
                    "compose.yaml",
                    r#"
include:
  - path: ${SUB_DIR:-sub}/compose.yaml
    project_directory: other
    env_file: [envs/a.env, ./envs/b.env, /dev/null]
services: {}
"#,
                ),
                ("envs/a.env", "A=a\nB=from-a\n"),
                ("envs/b.env", "B=from-b\nC=${A}-${B}\n"),
                ("other/.env", "A=not-read\n"),
                (
                    "sub/compose.yaml",
                    "services:\n  s:\n    image: \"${A}:${B}:${C}\"\n    build: {dockerfile: Dockerfile}\n",
                ),
            ],
        );
        std::fs::create_dir_all(d.0.join("other")).unwrap();
        let p = load_in(&d, &[]).unwrap();
        let s = p.service("s").unwrap();
        // Later files win; while parsing, earlier files' keys are visible.
        assert_eq!(s["image"], Value::from("a:from-b:a-from-b"));
        // Relative paths resolve from `project_directory`, not from the file.
        assert_eq!(s["build"], yaml("{dockerfile: Dockerfile, context: ./other}"));

        // Without env_file, the `.env` of the project directory.
        d.write("compose.yaml", "include:\n  - path: sub/compose.yaml\n    project_directory: other\n");
        d.write("other/.env", "A=1\nB=2\nC=3\n");
        let p = load_in(&d, &[]).unwrap();
        assert_eq!(p.service("s").unwrap()["image"], Value::from("1:2:3"));

        // A path list of one file is the short form.
        d.write("compose.yaml", "include:\n  - path: [sub/compose.yaml]\n    env_file: envs/a.env\n");
        let p = load_in(&d, &[]).unwrap();
        assert_eq!(p.service("s").unwrap()["image"], Value::from("a:from-a:"));
        assert_eq!(p.service("s").unwrap()["build"], yaml("{dockerfile: Dockerfile, context: ./sub}"));
    }

    #[test]
    fn include_cycles_are_refused_with_the_chain() {
        let d = dir("inc-self", &[("compose.yaml", "include: [compose.yaml]\nservices: {}\n")]);
        let e = load_in(&d, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: key \"include[0]\": include cycle detected: compose.yaml -> compose.yaml",
                d.0.join("compose.yaml").display()
            )
        );

        let d = dir(
            "inc-loop",
            &[
                ("compose.yaml", "include: [a/a.yaml]\nservices: {}\n"),
                ("a/a.yaml", "include:\n  - path: ../b.yaml\nservices: {}\n"),
                ("b.yaml", "include: [./a/./a.yaml]\n"),
            ],
        );
        let e = load_in(&d, &[]).unwrap_err();
        let ComposeError::IncludeCycle { file, key, chain } = &e else { panic!("{e}") };
        assert_eq!(file, &d.0.join("b.yaml"));
        assert_eq!(key, "include[0]");
        let chain: Vec<&str> = chain.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(chain, ["compose.yaml", "a/a.yaml", "b.yaml", "a/a.yaml"]);
        assert!(
            e.to_string().ends_with("include cycle detected: compose.yaml -> a/a.yaml -> b.yaml -> a/a.yaml"),
            "{e}"
        );

        // Through a symlink too.
        let d = dir("inc-link", &[("compose.yaml", "include: [link.yaml]\nservices: {}\n")]);
        std::os::unix::fs::symlink(d.0.join("compose.yaml"), d.0.join("link.yaml")).unwrap();
        let e = load_in(&d, &[]).unwrap_err();
        assert!(matches!(e, ComposeError::IncludeCycle { .. }), "{e}");

        // The same file twice, side by side, is no cycle.
        let d = dir(
            "inc-diamond",
            &[
                ("compose.yaml", "include: [b/compose.yaml, c/compose.yaml]\nservices: {}\n"),
                ("b/compose.yaml", "include: [../d/compose.yaml]\n"),
                ("c/compose.yaml", "include: [../d/compose.yaml]\n"),
                ("d/compose.yaml", "services:\n  d: {image: d, build: .}\n"),
            ],
        );
        let p = load_in(&d, &[]).unwrap();
        assert_eq!(p.service("d").unwrap()["build"], Value::from("./d"));
    }

    #[test]
    fn a_resource_defined_twice_differently_is_refused() {
        let d = dir(
            "inc-conflict",
            &[
                ("compose.yaml", "include: [sub/compose.yaml]\nservices:\n  web: {image: web}\n"),
                ("sub/compose.yaml", "services:\n  web: {image: other}\n"),
            ],
        );
        let e = load_in(&d, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: key \"services.web\": also defined, differently, in {}",
                d.0.join("sub/compose.yaml").display(),
                d.0.join("compose.yaml").display()
            )
        );
        // Identically is fine (compose-go's TestLoadWithMultipleInclude).
        d.write("sub/compose.yaml", "services:\n  web: {image: web}\n");
        assert_eq!(load_in(&d, &[]).unwrap().services(), ["web"]);
        // Between two included files, for any section.
        d.write("compose.yaml", "include: [sub/compose.yaml, sub2/compose.yaml]\n");
        d.write("sub/compose.yaml", "volumes: {data: {}}\n");
        std::fs::create_dir_all(d.0.join("sub2")).unwrap();
        d.write("sub2/compose.yaml", "volumes: {data: {driver: other}}\n");
        let e = load_in(&d, &[]).unwrap_err();
        let ComposeError::Conflict { file, key, other } = &e else { panic!("{e}") };
        assert_eq!(
            (file, key.as_str(), other),
            (&d.0.join("sub2/compose.yaml"), "volumes.data", &d.0.join("sub/compose.yaml"))
        );
        // Relative paths are compared after rewriting: `.` in two
        // directories is two different build contexts.
        d.write("sub/compose.yaml", "services:\n  s: {build: .}\n");
        d.write("sub2/compose.yaml", "services:\n  s: {build: .}\n");
        assert!(matches!(load_in(&d, &[]).unwrap_err(), ComposeError::Conflict { .. }));
    }

    #[test]
    fn errors_inside_an_included_file_name_that_file() {
        let d = dir(
            "inc-errors",
            &[
                ("compose.yaml", "include: [sub/compose.yaml]\nservices:\n  web: {image: web, depends_on: [db]}\n"),
                ("sub/compose.yaml", "services:\n  db:\n    image: db\n    environment: [\"P=${P:?set P}\"]\n"),
            ],
        );
        let sub = d.0.join("sub/compose.yaml");
        let e = load_in(&d, &[]).unwrap_err();
        assert_eq!((e.file(), e.key()), (sub.as_path(), Some("services.db.environment[0]")));
        d.write("sub/compose.yaml", "services:\n  db: {image: db, depends_on: [cache]}\n");
        let e = load_in(&d, &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: key \"services.db.depends_on[0]\": service \"db\" depends on undefined service \"cache\"",
                sub.display()
            )
        );
        // A cycle across files is named from its first service's file.
        d.write("sub/compose.yaml", "services:\n  db: {image: db, links: [web]}\n");
        let e = load_in(&d, &[]).unwrap_err();
        assert_eq!(e.file(), sub);
        assert!(e.to_string().ends_with("dependency cycle detected: db -> web -> db"), "{e}");
        d.write("sub/compose.yaml", "services: [db]\n");
        let e = load_in(&d, &[]).unwrap_err();
        assert_eq!((e.file(), e.key()), (sub.as_path(), Some("services")));
        d.write("sub/compose.yaml", "services:\n  db: {image: [\n");
        assert!(matches!(load_in(&d, &[]).unwrap_err(), ComposeError::Yaml { file, .. } if file == sub));
        d.write("sub/.env", "not a pair\n");
        d.write("sub/compose.yaml", "services: {}\n");
        let e = load_in(&d, &[]).unwrap_err();
        assert!(matches!(&e, ComposeError::EnvFile { file, .. } if file == &d.0.join("sub/.env")), "{e}");
        // An empty included file brings nothing; its `version` is warned about.
        std::fs::remove_file(d.0.join("sub/.env")).unwrap();
        d.write("sub/compose.yaml", "");
        d.write("compose.yaml", "include: [sub/compose.yaml, sub/v.yaml]\nservices: {}\n");
        d.write("sub/v.yaml", "version: '3'\nservices: {}\n");
        let none = BTreeMap::new();
        let o = LoadOptions { project_name: Some("p"), overrides: &none, use_process_env: false };
        let (_, warnings) = load_with_warnings(&d.0.join("compose.yaml"), &o).unwrap();
        assert_eq!(
            warnings,
            [format!("{}: the top-level `version` is obsolete; it was ignored", d.0.join("sub/v.yaml").display())]
        );
    }

    #[test]
    fn malformed_entries_name_the_key() {
        let d = dir("inc-shape", &[("sub/compose.yaml", "services: {}\n")]);
        let cases = [
            ("include: sub/compose.yaml\n", "include", "expected a list"),
            ("include: [3]\n", "include[0]", "expected a path or a mapping"),
            ("include: ['']\n", "include[0]", "non-empty string"),
            ("include: [{project_directory: sub}]\n", "include[0]", "missing `path`"),
            ("include: [{path: sub/compose.yaml, envfile: x}]\n", "include[0].envfile", "unknown key"),
            ("include: [{path: []}]\n", "include[0].path", "at least one"),
            ("include: [{path: [sub/compose.yaml, sub/compose.yaml]}]\n", "include[0].path", "one file per entry"),
            ("include: [{path: sub/compose.yaml, env_file: [a, 1]}]\n", "include[0].env_file[1]", "non-empty string"),
            ("include: [missing.yaml]\n", "include[0]", "cannot resolve"),
            ("include: [sub]\n", "include[0]", "is not a file"),
            ("include: [{path: sub/compose.yaml, env_file: none.env}]\n", "include[0].env_file", "cannot resolve"),
            ("include: [{path: sub/compose.yaml, env_file: [sub]}]\n", "include[0].env_file", "is not a file"),
            (
                "include: [{path: sub/compose.yaml, project_directory: sub/compose.yaml}]\n",
                "include[0].project_directory",
                "is not a directory",
            ),
            ("include: [oci://docker.io/x/y:latest]\n", "include[0]", "remote includes are not supported"),
            ("include: [{path: 'git@github.com:x/y.git'}]\n", "include[0].path", "remote includes are not supported"),
        ];
        for (text, key, needle) in cases {
            d.write("compose.yaml", text);
            let e = load_in(&d, &[]).unwrap_err();
            assert_eq!(e.key(), Some(key), "{text:?}: {e}");
            assert_eq!(e.file(), d.0.join("compose.yaml"), "{text:?}: {e}");
            assert!(e.to_string().contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn nothing_outside_the_top_level_directory_is_read() {
        let outer = TempDir::new("inc-outer");
        std::fs::write(outer.0.join("outside.yaml"), "services:\n  o: {image: o}\n").unwrap();
        std::fs::write(outer.0.join("outside.env"), "A=1\n").unwrap();
        let app = outer.0.join("app");
        std::fs::create_dir_all(app.join("sub")).unwrap();
        std::fs::write(app.join("sub/compose.yaml"), "services: {}\n").unwrap();
        std::os::unix::fs::symlink(outer.0.join("outside.yaml"), app.join("link.yaml")).unwrap();
        std::os::unix::fs::symlink(&outer.0, app.join("linkdir")).unwrap();
        let abs = outer.0.join("outside.yaml");
        let cases = [
            "include: [../outside.yaml]\n".to_string(),
            format!("include: [{}]\n", abs.display()),
            "include: [link.yaml]\n".into(),
            "include: [linkdir/outside.yaml]\n".into(),
            "include: [{path: sub/compose.yaml, project_directory: ..}]\n".into(),
            "include: [{path: sub/compose.yaml, env_file: ../outside.env}]\n".into(),
            "include: [{path: sub/compose.yaml, project_directory: linkdir}]\n".into(),
        ];
        let none = BTreeMap::new();
        let o = LoadOptions { project_name: Some("p"), overrides: &none, use_process_env: false };
        for text in cases {
            std::fs::write(app.join("compose.yaml"), &text).unwrap();
            let e = load(&app.join("compose.yaml"), &o).unwrap_err();
            assert!(e.to_string().contains("outside"), "{text:?}: {e}");
            assert!(e.key().is_some_and(|k| k.starts_with("include[0]")), "{text:?}: {e}");
        }
        // An absolute path inside the directory is fine.
        std::fs::write(app.join("compose.yaml"), format!("include: [{}]\n", app.join("sub/compose.yaml").display()))
            .unwrap();
        load(&app.join("compose.yaml"), &o).unwrap();
    }

    #[test]
    fn lexical_join_and_rebase_path() {
        assert_eq!(lexical_join(Path::new("a/b"), Path::new("./c/../d")), PathBuf::from("a/b/d"));
        assert_eq!(lexical_join(Path::new("a"), Path::new("../../x")), PathBuf::from("../x"));
        assert_eq!(lexical_join(Path::new("/a"), Path::new("/b")), PathBuf::from("/b"));
        let sub = Path::new("sub");
        assert_eq!(rebase_path(".", sub), "./sub");
        assert_eq!(rebase_path("./data", sub), "./sub/data");
        assert_eq!(rebase_path("data/x", sub), "./sub/data/x");
        assert_eq!(rebase_path("..", sub), ".");
        assert_eq!(rebase_path("../shared", sub), "./shared");
        assert_eq!(rebase_path("../../up", sub), "../up");
        assert_eq!(rebase_path("/abs", sub), "/abs");
        assert_eq!(rebase_path("~/x", sub), "~/x");
        assert_eq!(rebase_path("", sub), "");
        assert_eq!(rebase_context("https://github.com/a/b.git", sub), "https://github.com/a/b.git");
        assert_eq!(rebase_context("git@github.com:a/b.git", sub), "git@github.com:a/b.git");
        assert_eq!(rebase_context("service:base", sub), "service:base");
        assert_eq!(rebase_context("docker-image://alpine", sub), "docker-image://alpine");
        assert_eq!(rebase_context("./app", sub), "./sub/app");
    }

    #[test]
    fn rebase_rewrites_the_keys_compose_go_resolves() {
        let mut top: Mapping = serde_yaml_ng::from_str(
            r#"
services:
  a:
    build: .
    env_file: .env.a
    label_file: [labels]
    volumes:
      - ./data:/data:ro
      - named:/named
      - /abs:/abs
      - anon
      - {type: bind, source: ../shared, target: /s}
      - {type: volume, source: v, target: /v}
    extends: {file: base.yaml, service: b}
    develop: {watch: [{path: ./src, action: sync, target: /src}]}
  b:
    build:
      dockerfile: Dockerfile.b
      additional_contexts: {lib: ../lib, img: "docker-image://alpine"}
      ssh: ["default", "key=./id"]
    env_file: [{path: ./b.env, required: false}, c.env]
  c:
    build: {context: "https://example.com/repo.git"}
    additional: untouched
configs: {conf: {file: ./app.conf}, ext: {external: true}}
secrets: {pw: {file: pw.txt}, env: {environment: PW}}
volumes:
  bound: {driver: local, driver_opts: {type: none, o: bind, device: ./bound}}
  other: {driver: local, driver_opts: {device: ./kept}}
"#,
        )
        .unwrap();
        rebase(&mut top, Path::new("sub"));
        let want: Mapping = serde_yaml_ng::from_str(
            r#"
services:
  a:
    build: ./sub
    env_file: ./sub/.env.a
    label_file: [./sub/labels]
    volumes:
      - ./sub/data:/data:ro
      - named:/named
      - /abs:/abs
      - anon
      - {type: bind, source: ./shared, target: /s}
      - {type: volume, source: v, target: /v}
    extends: {file: ./sub/base.yaml, service: b}
    develop: {watch: [{path: ./sub/src, action: sync, target: /src}]}
  b:
    build:
      dockerfile: Dockerfile.b
      additional_contexts: {lib: ./lib, img: "docker-image://alpine"}
      ssh: ["default", "key=./sub/id"]
      context: ./sub
    env_file: [{path: ./sub/b.env, required: false}, ./sub/c.env]
  c:
    build: {context: "https://example.com/repo.git"}
    additional: untouched
configs: {conf: {file: ./sub/app.conf}, ext: {external: true}}
secrets: {pw: {file: ./sub/pw.txt}, env: {environment: PW}}
volumes:
  bound: {driver: local, driver_opts: {type: none, o: bind, device: ./sub/bound}}
  other: {driver: local, driver_opts: {device: ./kept}}
"#,
        )
        .unwrap();
        assert_eq!(top, want);
        // The same directory: nothing changes.
        let before = want.clone();
        let mut same = want;
        rebase(&mut same, Path::new(""));
        assert_eq!(same, before);
    }
}
