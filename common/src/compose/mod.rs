//! Compose files: loading, variable interpolation and normalization.
//!
//! This module owns dockfra's model of a Compose project
//! ([`ComposeProject`]): finding the file in a directory
//! ([`find_compose_file`]), reading `.env` files ([`parse_env_file`]),
//! interpolating `${VAR}` references as the Compose spec describes
//! ([`interpolate`]), bringing in the files of a top-level `include:`
//! (`include`), choosing the project name, refusing dependencies on
//! undefined services and dependency cycles (`depends`), and producing
//! normalized YAML in the spirit of `docker compose config`
//! ([`ComposeProject::to_yaml`]). Where Compose's rules are unclear, it
//! follows compose-go, the library behind `docker compose`.
//!
//! It deliberately does not validate the Compose schema: unknown keys are
//! kept as they are. Only what dockfra relies on is checked (the top level
//! and `services` are mappings, each service is a mapping, `include:` and
//! the dependency lists are well formed). It never reads a file outside
//! the top-level compose file's directory on behalf of `include:`.

use serde_yaml_ng::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod depends;
mod env_file;
mod include;
mod interpolate;

use env_file::parse_env_file_layered;
pub use env_file::{parse_env_file, parse_env_file_with};
pub use interpolate::{interpolate, interpolate_collect, InterpolationError};

// ───────────────────────────── errors ─────────────────────────────

/// Everything that can go wrong loading a Compose file.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The compose file (or its `.env`) could not be read.
    #[error("{}: cannot read file: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not well-formed YAML.
    #[error("{}: malformed YAML: {message}", file.display())]
    Yaml { file: PathBuf, line: Option<usize>, column: Option<usize>, message: String },
    /// Well-formed YAML that is not a usable Compose file.
    #[error("{}: {}{message}", file.display(), key_prefix(key.as_deref()))]
    Invalid {
        file: PathBuf,
        /// YAML key path, e.g. `services.web`.
        key: Option<String>,
        message: String,
    },
    /// A value could not be interpolated.
    #[error("{}: key {key:?}: {source}", file.display())]
    Interpolation {
        file: PathBuf,
        /// YAML key path of the value, e.g.
        /// `services.db.environment.POSTGRES_PASSWORD` or
        /// `services.db.environment[0]`.
        key: String,
        source: InterpolationError,
    },
    /// A service depends on one that is not defined: through `depends_on`,
    /// `links`, `volumes_from` or `network_mode: service:…` (compose-go
    /// turns the last three into dependencies too).
    #[error("{}: key {key:?}: service {service:?} depends on undefined service {dependency:?}", file.display())]
    UndefinedService {
        file: PathBuf,
        /// e.g. `services.web.depends_on[0]`.
        key: String,
        service: String,
        dependency: String,
    },
    /// Services that depend on each other in a loop.
    #[error("{}: key {key:?}: dependency cycle detected: {}", file.display(), cycle.join(" -> "))]
    DependencyCycle {
        /// The file that defines the cycle's first service.
        file: PathBuf,
        /// The key of the cycle's first edge.
        key: String,
        /// The services in order, the first one repeated at the end:
        /// `[a, b, c, a]`, or `[a, a]` for a service on itself.
        cycle: Vec<String>,
    },
    /// A file includes itself, directly or through others.
    #[error("{}: key {key:?}: include cycle detected: {}", file.display(), chain_text(chain))]
    IncludeCycle {
        /// The file whose `include:` closes the cycle.
        file: PathBuf,
        /// e.g. `include[0]` or `include[0].path`.
        key: String,
        /// From the top-level file down, relative to its directory, the
        /// repeated file last: `[compose.yaml, b.yaml, compose.yaml]`.
        chain: Vec<PathBuf>,
    },
    /// A resource defined, differently, in two files of an `include:` tree.
    #[error("{}: key {key:?}: also defined, differently, in {}", file.display(), other.display())]
    Conflict {
        /// The included file that brings the second definition.
        file: PathBuf,
        /// e.g. `services.web`, `volumes.data`.
        key: String,
        /// The file of the first definition.
        other: PathBuf,
    },
    /// The `.env` file next to the compose file is invalid.
    #[error("{}: {message}", file.display())]
    EnvFile {
        /// Path of the `.env` file.
        file: PathBuf,
        /// Includes the line number.
        message: String,
    },
}

impl ComposeError {
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ComposeError::Io { file, .. }
            | ComposeError::Yaml { file, .. }
            | ComposeError::Invalid { file, .. }
            | ComposeError::Interpolation { file, .. }
            | ComposeError::UndefinedService { file, .. }
            | ComposeError::DependencyCycle { file, .. }
            | ComposeError::IncludeCycle { file, .. }
            | ComposeError::Conflict { file, .. }
            | ComposeError::EnvFile { file, .. } => file,
        }
    }

    /// The YAML key path the error is about, if known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ComposeError::Invalid { key, .. } => key.as_deref(),
            ComposeError::Interpolation { key, .. }
            | ComposeError::UndefinedService { key, .. }
            | ComposeError::DependencyCycle { key, .. }
            | ComposeError::IncludeCycle { key, .. }
            | ComposeError::Conflict { key, .. } => Some(key),
            ComposeError::Io { .. } | ComposeError::Yaml { .. } | ComposeError::EnvFile { .. } => None,
        }
    }
}

fn chain_text(chain: &[PathBuf]) -> String {
    chain.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> ")
}

fn key_prefix(key: Option<&str>) -> String {
    match key {
        Some(k) => format!("key {k:?}: "),
        None => String::new(),
    }
}

fn excerpt(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let mut e: String = s.chars().take(MAX).collect();
        e.push('…');
        e
    }
}

// ───────────────────────────── projects ─────────────────────────────

/// A loaded, interpolated and normalized Compose file.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeProject {
    /// The project name (see [`load`]).
    pub name: String,
    /// The compose file, as given to [`load`].
    pub file: PathBuf,
    /// The normalized model: `name` first, then `services` (sorted by
    /// name), `networks`, `volumes`, `secrets`, `configs`, `models`, then
    /// any other top-level keys in file order; all string values
    /// interpolated; `version` dropped; `include` replaced by the resources
    /// of the included files (their relative paths rewritten to start from
    /// this file's directory); `environment` lists turned into mappings.
    pub model: Value,
}

impl ComposeProject {
    /// Service names, sorted.
    pub fn services(&self) -> Vec<String> {
        match self.model.get("services") {
            Some(Value::Mapping(m)) => m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        }
    }

    /// The service definition called `name`.
    pub fn service(&self, name: &str) -> Option<&Mapping> {
        self.model.get("services")?.get(name)?.as_mapping()
    }

    /// The normalized model as YAML, like `docker compose config`.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(&self.model).unwrap_or_else(|e| format!("# cannot serialize compose model: {e}\n"))
    }
}

/// How to load a compose file.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Overrides the project name (`docker compose -p`).
    pub project_name: Option<&'a str>,
    /// Variables with the highest precedence (a target's `env:`).
    pub overrides: &'a BTreeMap<String, String>,
    /// Whether to consult the process environment (after `overrides`,
    /// before `.env`).
    pub use_process_env: bool,
}

/// Compose file names, in the order Compose looks for them.
pub const COMPOSE_FILE_NAMES: [&str; 4] = ["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"];

/// The compose file in `dir`: `compose.yaml`, `compose.yml`,
/// `docker-compose.yaml`, `docker-compose.yml`, in that order.
pub fn find_compose_file(dir: &Path) -> Option<PathBuf> {
    COMPOSE_FILE_NAMES.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Load `file`: parse, interpolate, pick the project name, normalize.
///
/// Variables are looked up in `opts.overrides`, then the process
/// environment (if `opts.use_process_env`), then the `.env` file in the
/// compose file's directory (if present); `COMPOSE_PROJECT_NAME` is the
/// project name. The project name is `opts.project_name`, else the
/// top-level `name:` (after interpolation), else the directory name
/// lowercased with characters outside `[a-z0-9_-]` removed and leading
/// `_`/`-` trimmed.
///
/// Files named by a top-level `include:` are loaded as the include module
/// describes, their resources added to the project; `include` itself does
/// not appear in the model. Then every dependency (`depends_on`, `links`,
/// `volumes_from`, `network_mode: service:…`) must name a defined
/// service, without cycles.
pub fn load(file: &Path, opts: &LoadOptions) -> Result<ComposeProject, ComposeError> {
    load_with_warnings(file, opts).map(|(p, _)| p)
}

/// [`load`], also returning warnings (unset variables, obsolete `version`).
pub fn load_with_warnings(file: &Path, opts: &LoadOptions) -> Result<(ComposeProject, Vec<String>), ComposeError> {
    let text = std::fs::read_to_string(file).map_err(|source| ComposeError::Io { file: file.to_path_buf(), source })?;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };

    let base_lookup = |k: &str| -> Option<String> {
        if let Some(v) = opts.overrides.get(k) {
            return Some(v.clone());
        }
        if opts.use_process_env {
            if let Ok(v) = std::env::var(k) {
                return Some(v);
            }
        }
        None
    };
    let dotenv_path = dir.join(".env");
    let dotenv = if dotenv_path.is_file() {
        let t = std::fs::read_to_string(&dotenv_path)
            .map_err(|source| ComposeError::Io { file: dotenv_path.clone(), source })?;
        parse_env_file_with(&t, &base_lookup)
            .map_err(|message| ComposeError::EnvFile { file: dotenv_path.clone(), message })?
    } else {
        BTreeMap::new()
    };
    let lookup = |k: &str| base_lookup(k).or_else(|| dotenv.get(k).cloned());

    parse_with(&text, file, &dir, opts.project_name, &lookup)
}

/// Parse compose `text` as if read from `file`, in project directory `dir`
/// (which names the project by default and is where `include:` paths
/// start), with variables from `lookup`.
pub fn parse_with(
    text: &str,
    file: &Path,
    dir: &Path,
    project_name: Option<&str>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(ComposeProject, Vec<String>), ComposeError> {
    let invalid = |key: Option<&str>, message: String| ComposeError::Invalid {
        file: file.to_path_buf(),
        key: key.map(str::to_string),
        message,
    };
    let top = match parse_top(text, file)? {
        Some(top) => top,
        None => return Err(invalid(None, "file is empty".into())),
    };
    let mut unset = BTreeSet::new();

    // Project name.
    let name = if let Some(n) = project_name {
        if !is_project_name(n) {
            return Err(invalid(None, format!("invalid project name {n:?} (must match [a-z0-9][a-z0-9_-]*)")));
        }
        n.to_string()
    } else {
        let from_file =
            match top.get("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => {
                    let n = interpolate_collect(s, lookup, &mut unset).map_err(|source| {
                        ComposeError::Interpolation { file: file.to_path_buf(), key: "name".into(), source }
                    })?;
                    (!n.is_empty()).then_some(n)
                }
                Some(other) => return Err(invalid(Some("name"), format!("expected a string, found {}", kind(other)))),
            };
        match from_file {
            Some(n) if is_project_name(&n) => n,
            Some(n) => {
                return Err(invalid(
                    Some("name"),
                    format!("invalid project name {n:?} (must match [a-z0-9][a-z0-9_-]*)"),
                ))
            }
            None => {
                let dir_name = dir_basename(dir).unwrap_or_default();
                let n = normalize_project_name(&dir_name);
                if n.is_empty() {
                    return Err(invalid(
                        None,
                        format!("cannot derive a project name from directory {dir_name:?}; set a top-level `name:`"),
                    ));
                }
                n
            }
        }
    };

    let lookup_with_name = |k: &str| {
        if k == "COMPOSE_PROJECT_NAME" {
            Some(name.clone())
        } else {
            lookup(k)
        }
    };
    let canonical_dir = dir.canonicalize().ok();
    let main = include::Located {
        shown: file.to_path_buf(),
        // Text not read from disk (`parse_with`): the path it would have.
        canonical: file.canonicalize().unwrap_or_else(|_| match (&canonical_dir, file.file_name()) {
            (Some(d), Some(n)) => d.join(n),
            _ => file.to_path_buf(),
        }),
    };
    let project_dir =
        include::Located { shown: dir.to_path_buf(), canonical: canonical_dir.clone().unwrap_or_default() };
    let mut load = Load { root: canonical_dir, unset, notes: Vec::new() };
    let chain = [main.clone()];
    let Loaded { top, origins } = load_file(&mut load, top, &main, &project_dir, &lookup_with_name, &chain)?;
    let origin = |section: &str, name: &str| -> PathBuf {
        origins.get(&(section.to_string(), name.to_string())).cloned().unwrap_or_else(|| file.to_path_buf())
    };
    if let Some(Value::Mapping(services)) = top.get("services") {
        depends::check(services, &|svc| origin("services", svc))?;
    }

    let mut model = Mapping::new();
    model.insert("name".into(), Value::String(name.clone()));
    model.extend(top);
    let mut warnings: Vec<String> =
        load.unset.iter().map(|v| format!("the {v:?} variable is not set; defaulting to a blank string")).collect();
    warnings.extend(load.notes);
    Ok((ComposeProject { name, file: file.to_path_buf(), model: Value::Mapping(model) }, warnings))
}

/// The top-level sections that hold named resources, in output order after
/// `services`; `include:` brings these in (compose-go's `importResources`).
const RESOURCE_SECTIONS: [&str; 5] = ["networks", "volumes", "secrets", "configs", "models"];

/// What the files of one load share.
struct Load {
    /// The top-level file's directory, canonical; `None` if it cannot be
    /// resolved (then nothing can be included).
    root: Option<PathBuf>,
    /// Variables substituted by "" because they are not set.
    unset: BTreeSet<String>,
    /// Other warnings, in the order they arose.
    notes: Vec<String>,
}

/// One file's model after interpolation, normalization and its includes:
/// `services` (sorted by name), the resource sections, then its other
/// top-level keys; and the file that defines each resource, keyed by
/// (section, name).
struct Loaded {
    top: Mapping,
    origins: BTreeMap<(String, String), PathBuf>,
}

/// Parse `text` to a top-level mapping (YAML merge keys applied); `None`
/// for an empty file.
fn parse_top(text: &str, file: &Path) -> Result<Option<Mapping>, ComposeError> {
    let mut root: Value = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, &e))?;
    root.apply_merge().map_err(|e| yaml_error(file, &e))?;
    match root {
        Value::Mapping(m) => Ok(Some(m)),
        Value::Null => Ok(None),
        other => Err(ComposeError::Invalid {
            file: file.to_path_buf(),
            key: None,
            message: format!("top level must be a mapping, found {}", kind(&other)),
        }),
    }
}

/// Interpolate and normalize `top`, the content of `file` (project
/// directory `dir`), and merge in what its `include:` names. `chain` runs
/// from the top-level file to `file`.
fn load_file(
    load: &mut Load,
    top: Mapping,
    file: &include::Located,
    dir: &include::Located,
    lookup: &dyn Fn(&str) -> Option<String>,
    chain: &[include::Located],
) -> Result<Loaded, ComposeError> {
    let shown = &file.shown;
    let invalid =
        |key: &str, message: String| ComposeError::Invalid { file: shown.clone(), key: Some(key.to_string()), message };
    let included = chain.len() > 1;

    // Interpolate every string value (not keys).
    let mut top = Value::Mapping(top);
    interpolate_value(&mut top, lookup, &mut load.unset, &mut Vec::new())
        .map_err(|(key, source)| ComposeError::Interpolation { file: shown.clone(), key, source })?;
    let Value::Mapping(mut top) = top else { unreachable!("interpolation keeps the top-level mapping") };

    // Shape checks and normalization.
    if top.remove("version").is_some() {
        load.notes.push(if included {
            format!("{}: the top-level `version` is obsolete; it was ignored", shown.display())
        } else {
            "the top-level `version` is obsolete; it was ignored".into()
        });
    }
    top.remove("name");
    let entries = match top.remove("include") {
        Some(v) => include::entries(v, shown)?,
        None => Vec::new(),
    };
    let services = match top.remove("services") {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(m)) => m,
        Some(other) => return Err(invalid("services", format!("expected a mapping, found {}", kind(&other)))),
    };
    let mut normalized = Mapping::new();
    for (k, v) in services {
        let Value::String(sname) = k else {
            return Err(invalid("services", format!("service names must be strings, found {}", kind(&k))));
        };
        let key = format!("services.{sname}");
        let Value::Mapping(mut svc) = v else {
            return Err(invalid(&key, format!("a service must be a mapping, found {}", kind(&v))));
        };
        if let Some(env) = svc.get_mut("environment") {
            normalize_environment(env).map_err(|(sub, msg)| invalid(&format!("{key}.environment{sub}"), msg))?;
        }
        normalized.insert(Value::String(sname), Value::Mapping(svc));
    }
    let mut out = Mapping::new();
    out.insert("services".into(), Value::Mapping(normalized));
    for section in RESOURCE_SECTIONS {
        if let Some(v) = top.remove(section) {
            if !matches!(v, Value::Mapping(_) | Value::Null) {
                return Err(invalid(section, format!("expected a mapping, found {}", kind(&v))));
            }
            out.insert(section.into(), v);
        }
    }
    // compose-go imports only the resources of an included file.
    if !included {
        out.extend(top);
    }
    let mut origins = BTreeMap::new();
    for section in std::iter::once("services").chain(RESOURCE_SECTIONS) {
        if let Some(Value::Mapping(m)) = out.get(section) {
            for name in m.keys() {
                origins.insert((section.to_string(), key_text(name)), shown.clone());
            }
        }
    }

    // This file's relative paths, from the top-level directory.
    if included {
        if let Some(root) = &load.root {
            include::rebase(&mut out, dir.canonical.strip_prefix(root).unwrap_or(Path::new("")));
        }
    }

    for entry in &entries {
        let Some(root) = load.root.clone() else {
            return Err(invalid(
                "include",
                format!("cannot include anything: the project directory {} cannot be resolved", dir.shown.display()),
            ));
        };
        let target = include::resolve(entry, file, dir, &root, chain)?;
        let env = target.env(lookup)?;
        let sub_lookup = |k: &str| lookup(k).or_else(|| env.get(k).cloned());
        let text = std::fs::read_to_string(&target.file.canonical)
            .map_err(|source| ComposeError::Io { file: target.file.shown.clone(), source })?;
        let sub_top = parse_top(&text, &target.file.shown)?.unwrap_or_default();
        let mut sub_chain = chain.to_vec();
        sub_chain.push(target.file.clone());
        let sub = load_file(load, sub_top, &target.file, &target.project_dir, &sub_lookup, &sub_chain)?;
        merge(&mut out, &mut origins, sub)?;
    }
    if let Some(Value::Mapping(services)) = out.get_mut("services") {
        let mut sorted: Vec<(Value, Value)> = std::mem::take(services).into_iter().collect();
        sorted.sort_by_key(|(k, _)| key_text(k));
        services.extend(sorted);
    }
    Ok(Loaded { top: out, origins })
}

/// Add an included file's resources to `out`. A resource defined twice
/// must be defined identically: compose-go before v2.10 refused a
/// different one ("conflicts with imported resource"); later versions
/// merge the two, which dockfra does not do.
fn merge(
    out: &mut Mapping,
    origins: &mut BTreeMap<(String, String), PathBuf>,
    sub: Loaded,
) -> Result<(), ComposeError> {
    for section in std::iter::once("services").chain(RESOURCE_SECTIONS) {
        let Some(Value::Mapping(from)) = sub.top.get(section) else { continue };
        let to = out.entry(section.into()).or_insert(Value::Null);
        if to.is_null() {
            *to = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(to) = to else { continue };
        for (name, def) in from {
            let id = (section.to_string(), key_text(name));
            let file_of = |o: &BTreeMap<(String, String), PathBuf>| o.get(&id).cloned().unwrap_or_default();
            match to.get(name) {
                Some(existing) if existing == def => {}
                Some(_) => {
                    return Err(ComposeError::Conflict {
                        file: file_of(&sub.origins),
                        key: format!("{section}.{}", id.1),
                        other: file_of(origins),
                    })
                }
                None => {
                    to.insert(name.clone(), def.clone());
                    origins.insert(id.clone(), file_of(&sub.origins));
                }
            }
        }
    }
    Ok(())
}

fn yaml_error(file: &Path, e: &serde_yaml_ng::Error) -> ComposeError {
    let loc = e.location();
    let (line, column) = (loc.as_ref().map(|l| l.line()), loc.as_ref().map(|l| l.column()));
    let mut message = e.to_string();
    if let (Some(l), Some(c)) = (line, column) {
        if !message.contains("line ") {
            message = format!("{message} at line {l} column {c}");
        }
    }
    ComposeError::Yaml { file: file.to_path_buf(), line, column, message }
}

/// Interpolate all string scalars under `v`; on error return the key path.
fn interpolate_value(
    v: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
    path: &mut Vec<String>,
) -> Result<(), (String, InterpolationError)> {
    match v {
        Value::String(s) => {
            if s.contains('$') {
                *s = interpolate_collect(s, lookup, unset).map_err(|e| (join_path(path), e))?;
            }
        }
        Value::Sequence(seq) => {
            for (i, x) in seq.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                interpolate_value(x, lookup, unset, path)?;
                path.pop();
            }
        }
        Value::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                path.push(key_text(k));
                interpolate_value(x, lookup, unset, path)?;
                path.pop();
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, lookup, unset, path)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "~".into(),
        _ => "?".into(),
    }
}

/// A YAML key path as errors name it: `services.web.ports[0]`.
pub fn join_path(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if !s.is_empty() && !p.starts_with('[') {
            s.push('.');
        }
        s.push_str(p);
    }
    s
}

/// `environment:` to mapping form with string (or null) values.
/// On error: (path suffix such as `[1]` or `.KEY`, message).
fn normalize_environment(env: &mut Value) -> Result<(), (String, String)> {
    let mut out = Mapping::new();
    match env {
        Value::Null => return Ok(()),
        Value::Sequence(items) => {
            for (i, item) in items.iter().enumerate() {
                let Value::String(s) = item else {
                    return Err((format!("[{i}]"), format!("expected a \"KEY=value\" string, found {}", kind(item))));
                };
                let (k, v) = match s.split_once('=') {
                    Some((k, v)) => (k, Value::String(v.to_string())),
                    None => (s.as_str(), Value::Null),
                };
                if k.is_empty() {
                    return Err((format!("[{i}]"), format!("empty variable name in {s:?}")));
                }
                out.insert(Value::String(k.to_string()), v);
            }
        }
        Value::Mapping(m) => {
            for (k, v) in m.iter() {
                let key = key_text(k);
                let v = match v {
                    Value::Null => Value::Null,
                    Value::String(s) => Value::String(s.clone()),
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::Bool(b) => Value::String(b.to_string()),
                    other => {
                        return Err((
                            format!(".{key}"),
                            format!("expected a string, number or boolean, found {}", kind(other)),
                        ))
                    }
                };
                out.insert(Value::String(key), v);
            }
        }
        other => return Err((String::new(), format!("expected a mapping or a list, found {}", kind(other)))),
    }
    *env = Value::Mapping(out);
    Ok(())
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {:?}", excerpt(s)),
        Value::Sequence(_) => "a sequence".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}

/// Compose's project-name rule: `[a-z0-9][a-z0-9_-]*`.
fn is_project_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Compose's default-name normalization: lowercase, drop characters outside
/// `[a-z0-9_-]`, trim leading `_` and `-`.
pub fn normalize_project_name(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    lower.trim_start_matches(['_', '-']).to_string()
}

/// Last component of `dir`, resolving `.`/`..` lexically against the
/// current directory when needed.
fn dir_basename(dir: &Path) -> Option<String> {
    if let Some(n) = dir.file_name() {
        return Some(n.to_string_lossy().into_owned());
    }
    let abs = std::path::absolute(dir).ok()?;
    let mut parts: Vec<std::path::Component> = Vec::new();
    for c in abs.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                if matches!(parts.last(), Some(std::path::Component::Normal(_))) {
                    parts.pop();
                }
            }
            other => parts.push(other),
        }
    }
    match parts.last() {
        Some(std::path::Component::Normal(n)) => Some(n.to_string_lossy().into_owned()),
        _ => None,
    }
}
// ───────────────────────────── tests ─────────────────────────────

#[cfg(test)]
pub(crate) mod test_util {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    pub(crate) fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);
    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("dockfra-compose-test-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::TempDir;
    use super::*;

    fn opts(overrides: &BTreeMap<String, String>) -> LoadOptions<'_> {
        LoadOptions { project_name: None, overrides, use_process_env: false }
    }

    #[test]
    fn find_compose_file_precedence() {
        let d = TempDir::new("find");
        assert_eq!(find_compose_file(&d.0), None);
        for name in COMPOSE_FILE_NAMES.iter().rev() {
            d.write(name, "services: {}\n");
            assert_eq!(find_compose_file(&d.0), Some(d.0.join(name)));
        }
        std::fs::create_dir(d.0.join("sub")).unwrap();
        std::fs::remove_file(d.0.join("compose.yaml")).unwrap();
        std::fs::create_dir(d.0.join("compose.yaml")).unwrap();
        assert_eq!(find_compose_file(&d.0), Some(d.0.join("compose.yml")));
    }

    #[test]
    fn dotenv_precedence() {
        let d = TempDir::new("precedence");
        d.write(".env", "FROM_DOTENV=dotenv\nBOTH=dotenv\nPATH=dotenv-path\n");
        let f = d.write(
            "compose.yaml",
            "services:\n  app:\n    image: \"img:${FROM_DOTENV}\"\n    command: [\"${BOTH}\", \"${PATH}\"]\n",
        );
        let none = BTreeMap::new();
        let p = load(&f, &opts(&none)).unwrap();
        let svc = p.service("app").unwrap();
        assert_eq!(svc["image"], Value::from("img:dotenv"));
        assert_eq!(svc["command"][0], Value::from("dotenv"));
        assert_eq!(svc["command"][1], Value::from("dotenv-path"));

        // Overrides beat .env.
        let over: BTreeMap<String, String> = [("BOTH".to_string(), "override".to_string())].into();
        let p = load(&f, &opts(&over)).unwrap();
        let svc = p.service("app").unwrap();
        assert_eq!(svc["command"][0], Value::from("override"));
        assert_eq!(svc["image"], Value::from("img:dotenv"));

        // The process environment beats .env when enabled (PATH is set in
        // any sane test environment), and overrides beat both.
        if let Ok(path) = std::env::var("PATH") {
            let o = LoadOptions { use_process_env: true, ..opts(&none) };
            let p = load(&f, &o).unwrap();
            assert_eq!(p.service("app").unwrap()["command"][1], Value::from(path));
            let over: BTreeMap<String, String> = [("PATH".to_string(), "ovr".to_string())].into();
            let o = LoadOptions { use_process_env: true, ..opts(&over) };
            let p = load(&f, &o).unwrap();
            assert_eq!(p.service("app").unwrap()["command"][1], Value::from("ovr"));
        }

        // A .env value may refer to an override.
        d.write(".env", "FROM_DOTENV=${BOTH}-x\n");
        let p = load(&f, &opts(&over)).unwrap();
        assert_eq!(p.service("app").unwrap()["image"], Value::from("img:override-x"));
    }

    #[test]
    fn bad_dotenv_is_reported() {
        let d = TempDir::new("baddotenv");
        d.write(".env", "OK=1\nnot a pair\n");
        let f = d.write("compose.yaml", "services: {}\n");
        let none = BTreeMap::new();
        let e = load(&f, &opts(&none)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(".env") && msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn required_variable_error_names_file_key_and_variable() {
        let d = TempDir::new("required");
        let f = d.write(
            "compose.yaml",
            "services:\n  db:\n    image: postgres\n    environment:\n      POSTGRES_PASSWORD: ${DB_PASSWORD:?set it in .env}\n  web:\n    environment:\n      - A=1\n      - B=${B:?}\n",
        );
        let none = BTreeMap::new();
        let e = load(&f, &opts(&none)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("compose.yaml"), "{msg}");
        assert_eq!(e.key(), Some("services.db.environment.POSTGRES_PASSWORD"));
        assert!(msg.contains("required variable DB_PASSWORD is missing a value: set it in .env"), "{msg}");
        let over: BTreeMap<String, String> = [("DB_PASSWORD".to_string(), "s3".to_string())].into();
        let e = load(&f, &opts(&over)).unwrap_err();
        assert_eq!(e.key(), Some("services.web.environment[1]"));
        assert!(e.to_string().contains("required variable B"), "{e}");
    }

    #[test]
    fn project_name_rules() {
        let d = TempDir::new("Name_Test.Dir");
        let f = d.write("compose.yaml", "services:\n  a: {image: x}\n");
        let none = BTreeMap::new();
        let p = load(&f, &opts(&none)).unwrap();
        let expected = normalize_project_name(&format!("dockfra-compose-test-{}-Name_Test.Dir", std::process::id()));
        assert_eq!(p.name, expected);
        assert!(p.name.ends_with("name_testdir"));

        let o = LoadOptions { project_name: Some("explicit"), ..opts(&none) };
        assert_eq!(load(&f, &o).unwrap().name, "explicit");
        let o = LoadOptions { project_name: Some("Bad Name"), ..opts(&none) };
        assert!(load(&f, &o).is_err());

        let f = d.write(
            "compose.yaml",
            "name: ${PROJ:-fromfile}\nservices:\n  a:\n    image: x\n    labels: [\"p=${COMPOSE_PROJECT_NAME}\"]\n",
        );
        let p = load(&f, &opts(&none)).unwrap();
        assert_eq!(p.name, "fromfile");
        assert_eq!(p.model["name"], Value::from("fromfile"));
        assert_eq!(p.service("a").unwrap()["labels"][0], Value::from("p=fromfile"));
        let over: BTreeMap<String, String> = [("PROJ".to_string(), "viaenv".to_string())].into();
        assert_eq!(load(&f, &opts(&over)).unwrap().name, "viaenv");
        let o = LoadOptions { project_name: Some("cli"), ..opts(&none) };
        let p = load(&f, &o).unwrap();
        assert_eq!(p.name, "cli");
        assert_eq!(p.model["name"], Value::from("cli"));
        assert_eq!(p.service("a").unwrap()["labels"][0], Value::from("p=cli"));

        let f = d.write("compose.yaml", "name: Not Valid\nservices: {}\n");
        let e = load(&f, &opts(&none)).unwrap_err();
        assert_eq!(e.key(), Some("name"));

        assert_eq!(normalize_project_name("pihole-cloudflared-DoH"), "pihole-cloudflared-doh");
        assert_eq!(normalize_project_name("__My.App-1"), "myapp-1");
        assert_eq!(normalize_project_name("..."), "");
    }

    #[test]
    fn normalization() {
        let d = TempDir::new("norm");
        let f = d.write(
            "compose.yaml",
            r#"
version: "3.9"
x-common: &common
  restart: always
volumes:
  data: {}
services:
  zeta:
    <<: *common
    image: "zeta:${TAG:-1}"
    environment:
      - A=1
      - B
      - C=x=y
      - EMPTY=
  alpha:
    image: alpha
    environment:
      NUM: 3
      BOOL: true
      NOVALUE:
      S: s
networks:
  front: {}
"#,
        );
        let none = BTreeMap::new();
        let (p, warnings) = load_with_warnings(&f, &opts(&none)).unwrap();
        assert!(warnings.iter().any(|w| w.contains("version")), "{warnings:?}");
        assert_eq!(p.services(), ["alpha", "zeta"]);
        let keys: Vec<&str> = p.model.as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()).collect();
        assert_eq!(keys, ["name", "services", "networks", "volumes", "x-common"]);
        let zeta = p.service("zeta").unwrap();
        assert_eq!(zeta["image"], Value::from("zeta:1"));
        assert_eq!(zeta["restart"], Value::from("always"));
        let env = zeta["environment"].as_mapping().unwrap();
        assert_eq!(env["A"], Value::from("1"));
        assert_eq!(env["B"], Value::Null);
        assert_eq!(env["C"], Value::from("x=y"));
        assert_eq!(env["EMPTY"], Value::from(""));
        let env = p.service("alpha").unwrap()["environment"].as_mapping().unwrap();
        assert_eq!(env["NUM"], Value::from("3"));
        assert_eq!(env["BOOL"], Value::from("true"));
        assert_eq!(env["NOVALUE"], Value::Null);

        let yaml = p.to_yaml();
        assert!(yaml.starts_with("name: "), "{yaml}");
        assert!(!yaml.contains("version"), "{yaml}");
        assert!(yaml.find("alpha:").unwrap() < yaml.find("zeta:").unwrap());
        let back: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(back, p.model);
    }

    #[test]
    fn dependency_errors_name_file_and_key() {
        let d = TempDir::new("deps");
        let none = BTreeMap::new();
        let f = d.write(
            "compose.yaml",
            "services:\n  c: {image: x, depends_on: [a]}\n  b: {image: x, depends_on: {c: {condition: service_started}}}\n  a: {image: x, links: [b]}\n",
        );
        let e = load(&f, &opts(&none)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: key \"services.a.links[0]\": dependency cycle detected: a -> b -> c -> a", f.display())
        );
        let f = d.write("compose.yaml", "services:\n  web:\n    image: x\n    depends_on:\n      - ${DB:-db}\n");
        let e = load(&f, &opts(&none)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: key \"services.web.depends_on[0]\": service \"web\" depends on undefined service \"db\"",
                f.display()
            )
        );
        assert_eq!(e.file(), f);
        // Interpolation happens first: the dependency is the value.
        let over: BTreeMap<String, String> = [("DB".to_string(), "web2".to_string())].into();
        let e = load(&f, &opts(&over)).unwrap_err();
        assert!(e.to_string().contains("undefined service \"web2\""), "{e}");
    }

    #[test]
    fn keys_are_not_interpolated() {
        let d = TempDir::new("keys");
        let f = d.write("compose.yaml", "services:\n  web:\n    image: x\n    labels:\n      \"$KEY\": \"$VAL\"\n");
        let over: BTreeMap<String, String> =
            [("KEY".to_string(), "k".to_string()), ("VAL".to_string(), "v".to_string())].into();
        let p = load(&f, &opts(&over)).unwrap();
        assert_eq!(p.service("web").unwrap()["labels"]["$KEY"], Value::from("v"));
    }

    #[test]
    fn shape_errors() {
        let d = TempDir::new("shape");
        let none = BTreeMap::new();
        let cases: [(&str, Option<&str>, &str); 9] = [
            ("services: [a\n", None, "malformed YAML"),
            ("- a\n- b\n", None, "top level must be a mapping"),
            ("", None, "empty"),
            ("services: [web]\n", Some("services"), "expected a mapping"),
            ("services:\n  web: nginx\n", Some("services.web"), "must be a mapping"),
            ("services:\n  web:\n    environment: 5\n", Some("services.web.environment"), "mapping or a list"),
            ("services:\n  web:\n    environment: [1]\n", Some("services.web.environment[0]"), "KEY=value"),
            ("services: {}\nvolumes: [a]\n", Some("volumes"), "expected a mapping"),
            ("services:\n  a: {image: x}\n  a: {image: y}\n", None, "duplicate"),
        ];
        for (text, key, needle) in cases {
            let f = d.write("compose.yaml", text);
            let e = load(&f, &opts(&none)).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("compose.yaml"), "{msg}");
            assert!(msg.contains(needle), "{text:?}: {msg}");
            assert_eq!(e.key(), key, "{msg}");
            if let Some(k) = key {
                assert!(msg.contains(&format!("key \"{k}\"")), "{msg}");
            }
        }
        let e = load(&d.0.join("missing.yaml"), &opts(&none)).unwrap_err();
        assert!(matches!(e, ComposeError::Io { .. }));
        assert!(e.to_string().contains("missing.yaml"));
        // Missing services is allowed and normalized to an empty mapping.
        let f = d.write("compose.yaml", "volumes: {a: {}}\n");
        let p = load(&f, &opts(&none)).unwrap();
        assert!(p.services().is_empty());
        assert!(p.model["services"].is_mapping());
    }

    #[test]
    fn awesome_compose_corpus_loads() {
        let root = &crate::shared_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..")).join("corpus/awesome-compose");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("manifest.json")).unwrap()).unwrap();
        let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in manifest["samples"].as_array().unwrap() {
            let mut svcs: Vec<String> =
                s["services"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
            svcs.sort();
            expected.insert(s["file"].as_str().unwrap().to_string(), svcs);
        }
        let mut dirs: Vec<PathBuf> =
            std::fs::read_dir(root).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        let none = BTreeMap::new();
        let mut loaded = 0;
        for dir in &dirs {
            let Some(file) = find_compose_file(dir) else {
                continue;
            };
            let p = load(&file, &opts(&none)).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let dir_name = dir.file_name().unwrap().to_str().unwrap();
            assert_eq!(p.name, normalize_project_name(dir_name));
            assert!(!p.services().is_empty(), "{}", file.display());
            let rel = format!("{dir_name}/{}", file.file_name().unwrap().to_str().unwrap());
            if let Some(svcs) = expected.get(&rel) {
                assert_eq!(&p.services(), svcs, "{rel}");
            }
            let yaml = p.to_yaml();
            let back: Value = serde_yaml_ng::from_str(&yaml)
                .unwrap_or_else(|e| panic!("{rel}: output does not re-parse: {e}\n{yaml}"));
            assert!(back["services"].is_mapping(), "{rel}");
            assert_eq!(back, p.model, "{rel}");
            // `$$` escapes are resolved.
            if yaml.contains("cat /run/secrets/db-password") {
                assert!(yaml.contains("$(cat /run/secrets/db-password)"), "{rel}");
                assert!(!yaml.contains("$$(cat"), "{rel}");
            }
            loaded += 1;
        }
        assert!(loaded >= 30, "only {loaded} compose files found");

        // Files with a .env pick their values up from it.
        let plex = load(&root.join("plex/compose.yaml"), &opts(&none)).unwrap();
        assert!(plex.to_yaml().contains("/media/your/plex/path:/media/"), "{}", plex.to_yaml());
        let wg = load(&root.join("wireguard/compose.yaml"), &opts(&none)).unwrap();
        let wg_yaml = wg.to_yaml();
        assert!(wg_yaml.contains("SERVERURL: your-domain.dyndns.com"), "{wg_yaml}");
        assert!(wg_yaml.contains("TZ: Etc/UTC"), "{wg_yaml}");
    }
}
