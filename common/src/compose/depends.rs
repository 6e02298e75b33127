//! The service graph: which service needs which, and the two checks
//! compose-go makes on it before anything runs.
//!
//! The edges are `depends_on` (list or mapping form) and what compose-go's
//! `loader/normalize.go` turns into `depends_on`: `links` (`NAME` or
//! `NAME:ALIAS`), `volumes_from` (`NAME[:MODE]`, not `container:…`) and
//! `network_mode`, `ipc`, `pid`, `uts`, `cgroup` set to `service:NAME`.
//! Every edge must reach a defined service (`loader/validate.go`), and there
//! must be no cycle (`graph/cycle.go`), a service on itself included.
//!
//! It only reads the model: it never reorders, completes or rewrites it.

use super::{kind, ComposeError};
use serde_yaml_ng::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// One dependency and the key that declares it.
struct Edge {
    to: String,
    /// e.g. `services.web.depends_on[0]`, `services.web.network_mode`.
    key: String,
}

/// Check the dependencies between `services` (a `services:` mapping whose
/// values are service mappings). `file_of(name)` is the file that defines
/// service `name`, for the error.
pub(super) fn check(services: &Mapping, file_of: &dyn Fn(&str) -> PathBuf) -> Result<(), ComposeError> {
    let mut graph: BTreeMap<String, Vec<Edge>> = BTreeMap::new();
    for (name, svc) in services {
        let (Some(name), Some(svc)) = (name.as_str(), svc.as_mapping()) else { continue };
        let edges = edges(name, svc).map_err(|(key, message)| ComposeError::Invalid {
            file: file_of(name),
            key: Some(key),
            message,
        })?;
        graph.insert(name.to_string(), edges);
    }
    for (name, edges) in &graph {
        if let Some(e) = edges.iter().find(|e| !graph.contains_key(&e.to)) {
            return Err(ComposeError::UndefinedService {
                file: file_of(name),
                key: e.key.clone(),
                service: name.clone(),
                dependency: e.to.clone(),
            });
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        let key = graph[&cycle[0]].iter().find(|e| e.to == cycle[1]).map(|e| e.key.clone()).unwrap_or_default();
        return Err(ComposeError::DependencyCycle { file: file_of(&cycle[0]), key, cycle });
    }
    Ok(())
}

/// The dependencies of service `name`, in the order compose-go adds them
/// (`depends_on`, `links`, the `service:` namespaces, `volumes_from`), each
/// target once. On a malformed value: (key, message).
fn edges(name: &str, svc: &Mapping) -> Result<Vec<Edge>, (String, String)> {
    let mut out: Vec<Edge> = Vec::new();
    let mut add = |to: &str, key: String| {
        if !out.iter().any(|e| e.to == to) {
            out.push(Edge { to: to.to_string(), key });
        }
    };
    let base = format!("services.{name}");
    match svc.get("depends_on") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let key = format!("{base}.depends_on[{i}]");
                match item.as_str() {
                    Some(dep) => add(dep, key),
                    None => return Err((key, format!("expected a service name, found {}", kind(item)))),
                }
            }
        }
        Some(Value::Mapping(m)) => {
            for k in m.keys() {
                match k.as_str() {
                    Some(dep) => add(dep, format!("{base}.depends_on.{dep}")),
                    None => {
                        return Err((
                            format!("{base}.depends_on"),
                            format!("expected service names as keys, found {}", kind(k)),
                        ))
                    }
                }
            }
        }
        Some(other) => {
            return Err((
                format!("{base}.depends_on"),
                format!("expected a list of service names or a mapping, found {}", kind(other)),
            ))
        }
    }
    for (i, link) in strings(svc, "links", &base)?.into_iter().enumerate() {
        // compose-go: "NAME:ALIAS" names NAME; anything else is the name.
        let to = match link.split(':').collect::<Vec<_>>().as_slice() {
            [service, _alias] => *service,
            _ => link,
        };
        add(to, format!("{base}.links[{i}]"));
    }
    for ns in ["network_mode", "ipc", "pid", "uts", "cgroup"] {
        if let Some(to) = svc.get(ns).and_then(Value::as_str).and_then(|v| v.strip_prefix("service:")) {
            add(to, format!("{base}.{ns}"));
        }
    }
    for (i, from) in strings(svc, "volumes_from", &base)?.into_iter().enumerate() {
        if !from.starts_with("container:") {
            add(from.split(':').next().unwrap_or(from), format!("{base}.volumes_from[{i}]"));
        }
    }
    Ok(out)
}

/// The strings of list `key` in `svc` (none if absent).
fn strings<'a>(svc: &'a Mapping, key: &str, base: &str) -> Result<Vec<&'a str>, (String, String)> {
    match svc.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .ok_or_else(|| (format!("{base}.{key}[{i}]"), format!("expected a string, found {}", kind(v))))
            })
            .collect(),
        Some(other) => Err((format!("{base}.{key}"), format!("expected a list, found {}", kind(other)))),
    }
}

/// The first cycle in `graph` as compose-go's `graph/cycle.go` finds it:
/// services in name order, each one's dependencies in name order, depth
/// first; the cycle from the first service seen twice on the path, that
/// service repeated at the end (`[a, b, a]`, `[a, a]`). Services already
/// explored without finding a cycle are not explored again, which does not
/// change which cycle is found first.
fn find_cycle(graph: &BTreeMap<String, Vec<Edge>>) -> Option<Vec<String>> {
    fn visit<'a>(
        graph: &'a BTreeMap<String, Vec<Edge>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        let here = *path.last()?;
        let mut deps: Vec<&str> =
            graph.get(here).map(|es| es.iter().map(|e| e.to.as_str()).collect()).unwrap_or_default();
        deps.sort_unstable();
        for dep in deps {
            if let Some(i) = path.iter().position(|p| *p == dep) {
                let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
                cycle.push(dep.to_string());
                return Some(cycle);
            }
            if done.contains(dep) {
                continue;
            }
            path.push(dep);
            let found = visit(graph, path, done);
            path.pop();
            if found.is_some() {
                return found;
            }
        }
        done.insert(here);
        None
    }
    let mut done = BTreeSet::new();
    for name in graph.keys() {
        if done.contains(name.as_str()) {
            continue;
        }
        if let Some(c) = visit(graph, &mut vec![name.as_str()], &mut done) {
            return Some(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(services: &str) -> Result<(), ComposeError> {
        let v: Value = serde_yaml_ng::from_str(services).unwrap();
        check(v.as_mapping().unwrap(), &|name| PathBuf::from(format!("{name}.yaml")))
    }

    fn cycle(services: &str) -> (Vec<String>, String, String) {
        match run(services).unwrap_err() {
            e @ ComposeError::DependencyCycle { .. } => {
                let msg = e.to_string();
                let ComposeError::DependencyCycle { cycle, key, .. } = e else { unreachable!() };
                (cycle, key, msg)
            }
            other => panic!("expected a cycle: {other}"),
        }
    }

    #[test]
    fn acyclic_graphs_pass() {
        run("{}").unwrap();
        run("web: {depends_on: [db, cache]}\ndb: {}\ncache: {depends_on: {db: {condition: service_started}}}\n")
            .unwrap();
        // A diamond is not a cycle.
        run("a: {depends_on: [b, c]}\nb: {depends_on: [d]}\nc: {depends_on: [d]}\nd: {}\n").unwrap();
        run("a: {links: ['b:alias'], volumes_from: ['c:ro', 'container:other'], network_mode: 'service:d'}\nb: {}\nc: {}\nd: {}\n")
            .unwrap();
        run("a: {network_mode: host, pid: host, ipc: shareable}\n").unwrap();
        run("a: {depends_on: null, links: null}\n").unwrap();
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        // compose-go: loader/testdata/compose-depends-on-self.yaml gives
        // "dependency cycle detected: service1 -> service1".
        let (c, key, msg) = cycle("service1: {image: x, depends_on: [service1]}\n");
        assert_eq!(c, ["service1", "service1"]);
        assert_eq!(key, "services.service1.depends_on[0]");
        assert_eq!(
            msg,
            "service1.yaml: key \"services.service1.depends_on[0]\": dependency cycle detected: service1 -> service1"
        );
        let (c, key, _) = cycle("a: {depends_on: {a: {condition: service_healthy}}}\n");
        assert_eq!((c.as_slice(), key.as_str()), (["a", "a"].map(String::from).as_slice(), "services.a.depends_on.a"));
    }

    #[test]
    fn longer_cycles_are_named_in_order() {
        // compose-go: loader/testdata/compose-depends-on-cycle.yaml gives
        // "dependency cycle detected: service1 -> service2 -> service3 -> service1".
        let (c, key, msg) = cycle(
            "service1: {depends_on: [service2]}\nservice2: {depends_on: [service3]}\nservice3: {depends_on: [service1]}\n",
        );
        assert_eq!(c, ["service1", "service2", "service3", "service1"]);
        assert_eq!(key, "services.service1.depends_on[0]");
        assert!(msg.ends_with("dependency cycle detected: service1 -> service2 -> service3 -> service1"), "{msg}");
        assert!(msg.starts_with("service1.yaml: "), "{msg}");
        // The cycle need not start at the first service: `a` only leads into it.
        let (c, _, _) =
            cycle("a: {depends_on: [c]}\nb: {depends_on: [c]}\nc: {depends_on: [d]}\nd: {depends_on: [c]}\n");
        assert_eq!(c, ["c", "d", "c"]);
        // Dependencies are explored in name order.
        let (c, _, _) = cycle("a: {depends_on: [z, b]}\nb: {depends_on: [a]}\nz: {depends_on: [a]}\n");
        assert_eq!(c, ["a", "b", "a"]);
    }

    #[test]
    fn implicit_dependencies_take_part() {
        let (c, key, _) = cycle("a: {links: ['b:db']}\nb: {depends_on: [a]}\n");
        assert_eq!((c, key), (vec!["a".into(), "b".into(), "a".into()], "services.a.links[0]".to_string()));
        let (c, key, _) = cycle("a: {network_mode: 'service:b'}\nb: {volumes_from: ['a:ro']}\n");
        assert_eq!((c, key), (vec!["a".into(), "b".into(), "a".into()], "services.a.network_mode".to_string()));
        for ns in ["ipc", "pid", "uts", "cgroup"] {
            let (c, key, _) = cycle(&format!("a: {{{ns}: 'service:a'}}\n"));
            assert_eq!((c, key), (vec!["a".into(), "a".into()], format!("services.a.{ns}")));
        }
        // A depends_on entry for the same service keeps its own key.
        let (_, key, _) = cycle("a: {depends_on: [b], links: [b]}\nb: {links: [a]}\n");
        assert_eq!(key, "services.a.depends_on[0]");
    }

    #[test]
    fn undefined_dependencies_are_refused() {
        let cases = [
            ("web: {depends_on: [db]}\n", "services.web.depends_on[0]", "db"),
            (
                "web: {depends_on: {db: {condition: service_healthy, required: false}}}\n",
                "services.web.depends_on.db",
                "db",
            ),
            ("web: {links: ['db:database']}\n", "services.web.links[0]", "db"),
            ("web: {volumes_from: ['data:ro']}\n", "services.web.volumes_from[0]", "data"),
            ("web: {network_mode: 'service:vpn'}\n", "services.web.network_mode", "vpn"),
            ("web: {pid: 'service:init'}\n", "services.web.pid", "init"),
        ];
        for (text, want_key, dep) in cases {
            let e = run(text).unwrap_err();
            let msg = e.to_string();
            let ComposeError::UndefinedService { key, service, dependency, .. } = &e else { panic!("{text}: {e}") };
            assert_eq!((key.as_str(), service.as_str(), dependency.as_str()), (want_key, "web", dep), "{text}");
            assert_eq!(
                msg,
                format!("web.yaml: key \"{want_key}\": service \"web\" depends on undefined service \"{dep}\""),
                "{text}"
            );
        }
        // `container:` in volumes_from names a container, not a service.
        run("web: {volumes_from: ['container:legacy']}\n").unwrap();
    }

    #[test]
    fn malformed_dependency_lists_name_the_key() {
        let cases = [
            ("web: {depends_on: db}\n", "services.web.depends_on"),
            ("web: {depends_on: [1]}\n", "services.web.depends_on[0]"),
            ("web: {links: db}\n", "services.web.links"),
            ("web: {volumes_from: [{a: b}]}\n", "services.web.volumes_from[0]"),
        ];
        for (text, want) in cases {
            let e = run(text).unwrap_err();
            assert_eq!(e.key(), Some(want), "{text}: {e}");
            assert!(e.to_string().starts_with("web.yaml: "), "{e}");
        }
    }
}
