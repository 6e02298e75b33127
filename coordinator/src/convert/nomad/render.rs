//! The job model as text: the HCL2 jobspec and the JSON `POST /v1/jobs` takes, with the
//! durations each form wants.
use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value as Json};

use super::model::{Cfg, CheckKind, Group, Job, NetPort, Restart, Service, Task};

// ───────────────────────────── durations ─────────────────────────────

/// A duration as Nomad's HCL takes it (Go's `time.ParseDuration`): the largest whole unit.
pub(super) fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    for (unit, size) in
        [("h", 3_600_000_000_000u128), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)]
    {
        if ns >= size && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    format!("{ns}ns")
}

/// A duration as Nomad's JSON API takes it: nanoseconds.
pub(super) fn nanos(d: Duration) -> Json {
    json!(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// ───────────────────────────── HCL ─────────────────────────────

/// An HCL2 expression, as much of the syntax as a jobspec needs.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Expr>),
    Object(Vec<(String, Expr)>),
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Item {
    Attr(String, Expr),
    Block(String, Vec<String>, Vec<Item>),
}

pub(super) fn attr(name: &str, e: Expr) -> Item {
    Item::Attr(name.into(), e)
}

pub(super) fn block(name: &str, labels: &[&str], body: Vec<Item>) -> Item {
    Item::Block(name.into(), labels.iter().map(|l| l.to_string()).collect(), body)
}

pub(super) fn s(v: &str) -> Expr {
    Expr::Str(v.into())
}

pub(super) fn strs(v: &[String]) -> Expr {
    Expr::List(v.iter().map(|x| s(x)).collect())
}

fn dur(d: Duration) -> Expr {
    Expr::Str(go_duration(d))
}

/// An HCL2 quoted string: `\` `"` and control characters escaped, and the template
/// sequences `${` and `%{` doubled so they stay literal.
pub(super) fn quote(v: &str) -> String {
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => q.push_str("\\\\"),
            '"' => q.push_str("\\\""),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                q.push(c);
                q.push(c);
            }
            c if c.is_control() => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn is_ident(k: &str) -> bool {
    k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(super) fn key(k: &str) -> String {
    if is_ident(k) {
        k.to_string()
    } else {
        quote(k)
    }
}

/// Render an expression at `indent` (the column of the line it starts on).
fn expr(e: &Expr, indent: usize) -> String {
    let pad = "  ".repeat(indent + 1);
    let end = "  ".repeat(indent);
    match e {
        Expr::Str(v) => quote(v),
        Expr::Int(n) => n.to_string(),
        Expr::Bool(b) => b.to_string(),
        Expr::List(items) if items.is_empty() => "[]".into(),
        Expr::List(items) => {
            let flat = items.iter().all(|i| matches!(i, Expr::Str(_) | Expr::Int(_) | Expr::Bool(_)));
            let one = format!("[{}]", items.iter().map(|i| expr(i, indent)).collect::<Vec<_>>().join(", "));
            if flat && one.len() <= 80 {
                one
            } else {
                let body: String = items.iter().map(|i| format!("{pad}{},\n", expr(i, indent + 1))).collect();
                format!("[\n{body}{end}]")
            }
        }
        Expr::Object(fields) if fields.is_empty() => "{}".into(),
        Expr::Object(fields) => {
            let width = fields.iter().map(|(k, _)| key(k).len()).max().unwrap_or(0);
            let body: String =
                fields.iter().map(|(k, v)| format!("{pad}{:width$} = {}\n", key(k), expr(v, indent + 1))).collect();
            format!("{{\n{body}{end}}}")
        }
    }
}

/// Render a body: attributes in runs with their `=` aligned (as `nomad fmt` does), blocks
/// set apart by blank lines.
pub(super) fn body(items: &[Item], indent: usize, out: &mut String) {
    let pad = "  ".repeat(indent);
    let mut i = 0;
    let mut first = true;
    while i < items.len() {
        match &items[i] {
            Item::Attr(..) => {
                let mut run = Vec::new();
                while let Some(Item::Attr(k, e)) = items.get(i) {
                    run.push((key(k), expr(e, indent)));
                    i += 1;
                }
                // A multi-line value ends a run of aligned lines.
                for chunk in run.split_inclusive(|(_, v)| v.contains('\n')) {
                    let width =
                        chunk.iter().filter(|(_, v)| !v.contains('\n')).map(|(k, _)| k.len()).max().unwrap_or(0);
                    for (k, v) in chunk {
                        if v.contains('\n') {
                            out.push_str(&format!("{pad}{k} = {v}\n"));
                        } else {
                            out.push_str(&format!("{pad}{k:width$} = {v}\n"));
                        }
                    }
                }
            }
            Item::Block(name, labels, inner) => {
                if !first {
                    out.push('\n');
                }
                let labels: String = labels.iter().map(|l| format!(" {}", quote(l))).collect();
                out.push_str(&format!("{pad}{name}{labels} {{\n"));
                body(inner, indent + 1, out);
                out.push_str(&format!("{pad}}}\n"));
                i += 1;
                if let Some(Item::Attr(..)) = items.get(i) {
                    out.push('\n');
                }
            }
        }
        first = false;
    }
}

fn cfg_expr(v: &Cfg) -> Expr {
    let obj = |o: &Vec<(String, Cfg)>| Expr::Object(o.iter().map(|(k, v)| (k.clone(), cfg_expr(v))).collect());
    match v {
        Cfg::Str(x) => s(x),
        Cfg::Int(n) => Expr::Int(*n),
        Cfg::Bool(b) => Expr::Bool(*b),
        Cfg::List(l) => strs(l),
        Cfg::Map(m) => Expr::Object(m.iter().map(|(k, v)| (k.clone(), s(v))).collect()),
        Cfg::Objects(os) | Cfg::Blocks(os) => Expr::List(os.iter().map(obj).collect()),
    }
}

fn cfg_items(cfg: &[(String, Cfg)]) -> Vec<Item> {
    let mut items = Vec::new();
    for (k, v) in cfg {
        match v {
            Cfg::Blocks(bs) => items.extend(bs.iter().map(|b| block(k, &[], cfg_items(b)))),
            other => items.push(attr(k, cfg_expr(other))),
        }
    }
    // Attributes first, then blocks, as `nomad fmt` leaves a hand-written jobspec.
    items.sort_by_key(|i| matches!(i, Item::Block(..)));
    items
}

fn restart_hcl(r: &Restart) -> Item {
    let mut b = Vec::new();
    if let Some(a) = r.attempts {
        b.push(attr("attempts", Expr::Int(a.into())));
    }
    if let Some(i) = r.interval {
        b.push(attr("interval", dur(i)));
    }
    if let Some(d) = r.delay {
        b.push(attr("delay", dur(d)));
    }
    if let Some(m) = r.mode {
        b.push(attr("mode", s(m)));
    }
    block("restart", &[], b)
}

/// `env` / `meta`: block syntax when every key is an identifier, else the map-attribute form
/// Nomad also reads (HCL2 blocks take no dotted keys).
fn map_hcl(name: &str, m: &BTreeMap<String, String>) -> Item {
    if m.keys().all(|k| is_ident(k)) {
        block(name, &[], m.iter().map(|(k, v)| attr(k, s(v))).collect())
    } else {
        attr(name, Expr::Object(m.iter().map(|(k, v)| (k.clone(), s(v))).collect()))
    }
}

fn service_hcl(sv: &Service) -> Item {
    let mut b = vec![
        attr("name", s(&sv.name)),
        attr("port", s(&sv.port)),
        attr("provider", s(&sv.provider)),
        attr("task", s(&sv.task)),
    ];
    if !sv.tags.is_empty() {
        b.push(attr("tags", strs(&sv.tags)));
    }
    for c in &sv.checks {
        let mut cb = vec![attr("name", s("healthcheck"))];
        match &c.kind {
            CheckKind::Script { task, command, args } => {
                cb.push(attr("type", s("script")));
                cb.push(attr("task", s(task)));
                cb.push(attr("command", s(command)));
                if !args.is_empty() {
                    cb.push(attr("args", strs(args)));
                }
            }
            CheckKind::Http { path } => {
                cb.push(attr("type", s("http")));
                cb.push(attr("path", s(path)));
            }
            CheckKind::Tcp => cb.push(attr("type", s("tcp"))),
        }
        if let Some(p) = &c.port {
            cb.push(attr("port", s(p)));
        }
        cb.push(attr("interval", dur(c.interval)));
        cb.push(attr("timeout", dur(c.timeout)));
        if let Some(f) = c.failures_before_critical {
            cb.push(attr("failures_before_critical", Expr::Int(f.into())));
        }
        b.push(block("check", &[], cb));
    }
    block("service", &[], b)
}

fn task_hcl(t: &Task) -> Item {
    let mut b = vec![attr("driver", s(&t.driver))];
    if let Some(u) = &t.user {
        b.push(attr("user", s(u)));
    }
    if let Some(k) = t.kill_timeout {
        b.push(attr("kill_timeout", dur(k)));
    }
    if let Some(k) = &t.kill_signal {
        b.push(attr("kill_signal", s(k)));
    }
    if let Some(l) = &t.lifecycle {
        b.push(block("lifecycle", &[], vec![attr("hook", s(l.hook)), attr("sidecar", Expr::Bool(l.sidecar))]));
    }
    b.push(block("config", &[], cfg_items(&t.config)));
    if !t.env.is_empty() {
        b.push(map_hcl("env", &t.env));
    }
    for tp in &t.templates {
        let mut tb = vec![attr("data", s(&tp.data)), attr("destination", s(&tp.destination))];
        if tp.env {
            tb.push(attr("env", Expr::Bool(true)));
        }
        tb.push(attr("change_mode", s(tp.change_mode)));
        if let Some(p) = &tp.perms {
            tb.push(attr("perms", s(p)));
        }
        if let Some(u) = tp.uid {
            tb.push(attr("uid", Expr::Int(u)));
        }
        if let Some(g) = tp.gid {
            tb.push(attr("gid", Expr::Int(g)));
        }
        b.push(block("template", &[], tb));
    }
    for m in &t.volume_mounts {
        b.push(block(
            "volume_mount",
            &[],
            vec![
                attr("volume", s(&m.volume)),
                attr("destination", s(&m.destination)),
                attr("read_only", Expr::Bool(m.read_only)),
            ],
        ));
    }
    if let Some(r) = &t.resources {
        let mut rb = Vec::new();
        if let Some(c) = r.cpu {
            rb.push(attr("cpu", Expr::Int(c.into())));
        }
        if let Some(m) = r.memory {
            rb.push(attr("memory", Expr::Int(m.into())));
        }
        if let Some(m) = r.memory_max {
            rb.push(attr("memory_max", Expr::Int(m.into())));
        }
        b.push(block("resources", &[], rb));
    }
    if let Some(r) = &t.restart {
        b.push(restart_hcl(r));
    }
    block("task", &[&t.name], b)
}

fn group_hcl(g: &Group) -> Item {
    let mut b = vec![attr("count", Expr::Int(g.count.into()))];
    if let Some(n) = &g.network {
        let mut nb = vec![attr("mode", s(n.mode.as_str()))];
        if let Some(h) = &n.hostname {
            nb.push(attr("hostname", s(h)));
        }
        if let Some(d) = &n.dns {
            let mut db = Vec::new();
            for (k, v) in [("servers", &d.servers), ("searches", &d.searches), ("options", &d.options)] {
                if !v.is_empty() {
                    db.push(attr(k, strs(v)));
                }
            }
            nb.push(block("dns", &[], db));
        }
        for p in &n.ports {
            let mut pb = Vec::new();
            if let Some(st) = p.static_port {
                pb.push(attr("static", Expr::Int(st.into())));
            }
            if let Some(to) = p.to {
                pb.push(attr("to", Expr::Int(to.into())));
            }
            nb.push(block("port", &[&p.label], pb));
        }
        b.push(block("network", &[], nb));
    }
    for (name, v) in &g.volumes {
        b.push(block("volume", &[name], vec![attr("type", s("host")), attr("source", s(&v.source))]));
    }
    if let Some(r) = &g.restart {
        b.push(restart_hcl(r));
    }
    if g.never_reschedule {
        b.push(block("reschedule", &[], vec![attr("attempts", Expr::Int(0)), attr("unlimited", Expr::Bool(false))]));
    }
    b.extend(g.services.iter().map(service_hcl));
    b.extend(g.tasks.iter().map(task_hcl));
    block("group", &[&g.name], b)
}

/// The jobspec in HCL2.
pub(super) fn hcl_job(job: &Job) -> String {
    let mut b = Vec::new();
    if let Some(r) = &job.region {
        b.push(attr("region", s(r)));
    }
    if let Some(n) = &job.namespace {
        b.push(attr("namespace", s(n)));
    }
    b.push(attr("datacenters", strs(&job.datacenters)));
    b.push(attr("type", s("service")));
    b.push(map_hcl("meta", &job.meta));
    let u = &job.update;
    b.push(block(
        "update",
        &[],
        vec![
            attr("max_parallel", Expr::Int(u.max_parallel.into())),
            attr("canary", Expr::Int(u.canary.into())),
            attr("auto_revert", Expr::Bool(u.auto_revert)),
            attr("auto_promote", Expr::Bool(u.auto_promote)),
            attr("min_healthy_time", dur(u.min_healthy_time)),
            attr("healthy_deadline", dur(u.healthy_deadline)),
            attr("progress_deadline", dur(u.progress_deadline)),
        ],
    ));
    b.extend(job.groups.iter().map(group_hcl));
    let mut text = String::from("# Rendered by dockfra from the compose file: change that, not this.\n");
    body(&[block("job", &[&job.id], b)], 0, &mut text);
    text
}

// ───────────────────────────── JSON ─────────────────────────────

fn cfg_json(v: &Cfg) -> Json {
    let obj = |o: &Vec<(String, Cfg)>| Json::Object(o.iter().map(|(k, v)| (k.clone(), cfg_json(v))).collect());
    match v {
        Cfg::Str(x) => json!(x),
        Cfg::Int(n) => json!(n),
        Cfg::Bool(b) => json!(b),
        Cfg::List(l) => json!(l),
        Cfg::Map(m) => json!(m),
        Cfg::Objects(os) | Cfg::Blocks(os) => Json::Array(os.iter().map(obj).collect()),
    }
}

fn restart_json(r: &Restart) -> Json {
    let mut m = Map::new();
    if let Some(a) = r.attempts {
        m.insert("Attempts".into(), json!(a));
    }
    if let Some(i) = r.interval {
        m.insert("Interval".into(), nanos(i));
    }
    if let Some(d) = r.delay {
        m.insert("Delay".into(), nanos(d));
    }
    if let Some(mode) = r.mode {
        m.insert("Mode".into(), json!(mode));
    }
    Json::Object(m)
}

fn service_json(sv: &Service) -> Json {
    let checks: Vec<Json> = sv
        .checks
        .iter()
        .map(|c| {
            let mut m = Map::new();
            m.insert("Name".into(), json!("healthcheck"));
            match &c.kind {
                CheckKind::Script { task, command, args } => {
                    m.insert("Type".into(), json!("script"));
                    m.insert("TaskName".into(), json!(task));
                    m.insert("Command".into(), json!(command));
                    if !args.is_empty() {
                        m.insert("Args".into(), json!(args));
                    }
                }
                CheckKind::Http { path } => {
                    m.insert("Type".into(), json!("http"));
                    m.insert("Path".into(), json!(path));
                }
                CheckKind::Tcp => {
                    m.insert("Type".into(), json!("tcp"));
                }
            }
            if let Some(p) = &c.port {
                m.insert("PortLabel".into(), json!(p));
            }
            m.insert("Interval".into(), nanos(c.interval));
            m.insert("Timeout".into(), nanos(c.timeout));
            if let Some(f) = c.failures_before_critical {
                m.insert("FailuresBeforeCritical".into(), json!(f));
            }
            Json::Object(m)
        })
        .collect();
    let mut m = Map::new();
    m.insert("Name".into(), json!(sv.name));
    m.insert("PortLabel".into(), json!(sv.port));
    m.insert("Provider".into(), json!(sv.provider));
    m.insert("TaskName".into(), json!(sv.task));
    if !sv.tags.is_empty() {
        m.insert("Tags".into(), json!(sv.tags));
    }
    if !checks.is_empty() {
        m.insert("Checks".into(), Json::Array(checks));
    }
    Json::Object(m)
}

fn task_json(t: &Task) -> Json {
    let mut m = Map::new();
    m.insert("Name".into(), json!(t.name));
    m.insert("Driver".into(), json!(t.driver));
    if let Some(u) = &t.user {
        m.insert("User".into(), json!(u));
    }
    if let Some(k) = t.kill_timeout {
        m.insert("KillTimeout".into(), nanos(k));
    }
    if let Some(k) = &t.kill_signal {
        m.insert("KillSignal".into(), json!(k));
    }
    if let Some(l) = &t.lifecycle {
        m.insert("Lifecycle".into(), json!({"Hook": l.hook, "Sidecar": l.sidecar}));
    }
    m.insert("Config".into(), Json::Object(t.config.iter().map(|(k, v)| (k.clone(), cfg_json(v))).collect()));
    if !t.env.is_empty() {
        m.insert("Env".into(), json!(t.env));
    }
    if !t.templates.is_empty() {
        let ts = t
            .templates
            .iter()
            .map(|tp| {
                let mut o = Map::new();
                o.insert("EmbeddedTmpl".into(), json!(tp.data));
                o.insert("DestPath".into(), json!(tp.destination));
                if tp.env {
                    o.insert("Envvars".into(), json!(true));
                }
                o.insert("ChangeMode".into(), json!(tp.change_mode));
                if let Some(p) = &tp.perms {
                    o.insert("Perms".into(), json!(p));
                }
                if let Some(u) = tp.uid {
                    o.insert("Uid".into(), json!(u));
                }
                if let Some(g) = tp.gid {
                    o.insert("Gid".into(), json!(g));
                }
                Json::Object(o)
            })
            .collect();
        m.insert("Templates".into(), Json::Array(ts));
    }
    if !t.volume_mounts.is_empty() {
        let vs = t
            .volume_mounts
            .iter()
            .map(|v| json!({"Volume": v.volume, "Destination": v.destination, "ReadOnly": v.read_only}))
            .collect();
        m.insert("VolumeMounts".into(), Json::Array(vs));
    }
    if let Some(r) = &t.resources {
        let mut o = Map::new();
        if let Some(c) = r.cpu {
            o.insert("CPU".into(), json!(c));
        }
        if let Some(x) = r.memory {
            o.insert("MemoryMB".into(), json!(x));
        }
        if let Some(x) = r.memory_max {
            o.insert("MemoryMaxMB".into(), json!(x));
        }
        m.insert("Resources".into(), Json::Object(o));
    }
    if let Some(r) = &t.restart {
        m.insert("RestartPolicy".into(), restart_json(r));
    }
    Json::Object(m)
}

fn group_json(g: &Group) -> Json {
    let mut m = Map::new();
    m.insert("Name".into(), json!(g.name));
    m.insert("Count".into(), json!(g.count));
    if let Some(n) = &g.network {
        let mut o = Map::new();
        o.insert("Mode".into(), json!(n.mode.as_str()));
        if let Some(h) = &n.hostname {
            o.insert("Hostname".into(), json!(h));
        }
        if let Some(d) = &n.dns {
            let mut dm = Map::new();
            for (k, v) in [("Servers", &d.servers), ("Searches", &d.searches), ("Options", &d.options)] {
                if !v.is_empty() {
                    dm.insert(k.into(), json!(v));
                }
            }
            o.insert("DNS".into(), Json::Object(dm));
        }
        let port = |p: &NetPort| {
            let mut pm = Map::new();
            pm.insert("Label".into(), json!(p.label));
            if let Some(v) = p.static_port {
                pm.insert("Value".into(), json!(v));
            }
            if let Some(to) = p.to {
                pm.insert("To".into(), json!(to));
            }
            Json::Object(pm)
        };
        // As Nomad's HCL parser files them: a port with a static value is reserved.
        let (reserved, dynamic): (Vec<&NetPort>, Vec<&NetPort>) = n.ports.iter().partition(|p| p.static_port.is_some());
        if !reserved.is_empty() {
            o.insert("ReservedPorts".into(), Json::Array(reserved.into_iter().map(port).collect()));
        }
        if !dynamic.is_empty() {
            o.insert("DynamicPorts".into(), Json::Array(dynamic.into_iter().map(port).collect()));
        }
        m.insert("Networks".into(), json!([Json::Object(o)]));
    }
    if !g.volumes.is_empty() {
        let vs: Map<String, Json> = g
            .volumes
            .iter()
            .map(|(k, v)| (k.clone(), json!({"Name": k, "Type": "host", "Source": v.source})))
            .collect();
        m.insert("Volumes".into(), Json::Object(vs));
    }
    if let Some(r) = &g.restart {
        m.insert("RestartPolicy".into(), restart_json(r));
    }
    if g.never_reschedule {
        m.insert("ReschedulePolicy".into(), json!({"Attempts": 0, "Unlimited": false}));
    }
    if !g.services.is_empty() {
        m.insert("Services".into(), Json::Array(g.services.iter().map(service_json).collect()));
    }
    m.insert("Tasks".into(), Json::Array(g.tasks.iter().map(task_json).collect()));
    Json::Object(m)
}

/// The job as `POST /v1/jobs` takes it, pretty-printed (keys sorted).
pub(super) fn json_job(job: &Job) -> String {
    let u = &job.update;
    let mut m = Map::new();
    m.insert("ID".into(), json!(job.id));
    m.insert("Name".into(), json!(job.id));
    m.insert("Type".into(), json!("service"));
    if let Some(r) = &job.region {
        m.insert("Region".into(), json!(r));
    }
    if let Some(n) = &job.namespace {
        m.insert("Namespace".into(), json!(n));
    }
    m.insert("Datacenters".into(), json!(job.datacenters));
    m.insert("Meta".into(), json!(job.meta));
    m.insert(
        "Update".into(),
        json!({
            "MaxParallel": u.max_parallel,
            "Canary": u.canary,
            "AutoRevert": u.auto_revert,
            "AutoPromote": u.auto_promote,
            "MinHealthyTime": nanos(u.min_healthy_time),
            "HealthyDeadline": nanos(u.healthy_deadline),
            "ProgressDeadline": nanos(u.progress_deadline),
        }),
    );
    m.insert("TaskGroups".into(), Json::Array(job.groups.iter().map(group_json).collect()));
    let mut text = serde_json::to_string_pretty(&json!({ "Job": Json::Object(m) })).unwrap_or_default();
    text.push('\n');
    text
}
