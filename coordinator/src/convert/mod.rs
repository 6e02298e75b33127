//! Converters: pure functions from a resolved Compose model to another platform's files.
//! No I/O, no engine: golden- and corpus-tested. What a converter cannot express becomes a
//! warning naming the service and the key; a loss that would change behaviour dangerously
//! (host networking, privileged containers, …) is an error unless the target's `allow:` names
//! the key.
pub mod k8s;
pub mod nomad;
pub mod quadlet;

use serde_yaml_ng::{Mapping, Value};

/// What a converter made: files (name, text), and what it could not carry over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    pub files: Vec<(String, String)>,
    /// `service S: key K: why` — kept going, but something was left out or approximated.
    pub warnings: Vec<String>,
    /// Losses that would change the app's behaviour; the caller refuses to go on.
    pub errors: Vec<String>,
}

impl Rendered {
    /// Warn, or (when `dangerous` and the key is not allowed) refuse.
    pub fn lose(&mut self, svc: &str, key: &str, why: &str, dangerous: bool, allow: &[String]) {
        let allowed = allow.iter().any(|a| a == key || a == &format!("{svc}.{key}"));
        if dangerous && !allowed {
            self.errors.push(format!("service {svc}: key {key}: {why} (accept the loss with config.allow: [{key}])"));
        } else {
            self.warnings.push(format!("service {svc}: key {key}: {why}"));
        }
    }
}

/// Reads a file of the project by its path as the compose file wrote it (relative to the
/// compose file's directory, or absolute); `None` when it cannot be read.
pub type Files<'a> = &'a dyn Fn(&str) -> Option<Vec<u8>>;

pub(crate) fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A string or a list of strings.
pub(crate) fn list(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().filter_map(scalar).collect(),
        other => scalar(other).into_iter().collect(),
    }
}

/// `environment:` / `labels:` in map or `K=V` list form; `None` for a key with no value.
pub(crate) fn pairs(v: &Value) -> Vec<(String, Option<String>)> {
    match v {
        Value::Mapping(m) => m.iter().filter_map(|(k, v)| Some((scalar(k)?, scalar(v)))).collect(),
        Value::Sequence(items) => items
            .iter()
            .filter_map(scalar)
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (s, None),
            })
            .collect(),
        _ => vec![],
    }
}

/// The services of a model, by name (sorted, as the loader leaves them).
pub(crate) fn services(model: &Value) -> Vec<(String, &Mapping)> {
    let Some(m) = model.get("services").and_then(Value::as_mapping) else { return vec![] };
    m.iter().filter_map(|(k, v)| Some((scalar(k)?, v.as_mapping()?))).collect()
}

/// A top-level section (`volumes`, `configs`, `secrets`, `networks`) by name.
pub(crate) fn section<'m>(model: &'m Value, name: &str) -> Vec<(String, &'m Value)> {
    let Some(m) = model.get(name).and_then(Value::as_mapping) else { return vec![] };
    m.iter().filter_map(|(k, v)| Some((scalar(k)?, v))).collect()
}

/// A compose duration (`1m30s`, `500ms`, `10s`, a bare number of seconds) in milliseconds.
pub(crate) fn duration_ms(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n * 1000);
    }
    let s = scalar(v)?;
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (mut total, mut num) = (0f64, String::new());
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() || n == 'µ' {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let ms = match unit.as_str() {
            "ns" => n / 1e6,
            "us" | "µs" => n / 1e3,
            "ms" => n,
            "s" => n * 1e3,
            "m" => n * 60e3,
            "h" => n * 3600e3,
            _ => return None,
        };
        total += ms;
        any = true;
    }
    if !num.is_empty() {
        total += num.parse::<f64>().ok()? * 1e3;
        any = true;
    }
    any.then_some(total.round() as u64)
}

/// Whole seconds, at least `min` (Kubernetes probe fields are seconds ≥ 1).
pub(crate) fn seconds(v: &Value, min: u64) -> Option<u64> {
    duration_ms(v).map(|ms| ms.div_ceil(1000).max(min))
}

/// One container port of a service (`ports:` or `expose:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Port {
    pub target: u16,
    /// The host port (`ports:` only), `None` for an ephemeral one or `expose:`.
    pub published: Option<u16>,
    pub host_ip: Option<String>,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// `ports:` (short `[IP:][HOST:]CONTAINER[/PROTO]`, ranges, or long form) then `expose:`.
/// Entries that cannot be read are returned as errors to warn about.
pub(crate) fn ports(svc: &Mapping) -> (Vec<Port>, Vec<String>) {
    let (mut out, mut bad) = (Vec::new(), Vec::new());
    for p in svc.get("ports").and_then(Value::as_sequence).into_iter().flatten() {
        match p {
            Value::Mapping(m) => {
                let target = m.get("target").and_then(scalar).and_then(|t| t.parse::<u16>().ok());
                let Some(target) = target else {
                    bad.push(format!("{p:?}"));
                    continue;
                };
                let published = m.get("published").and_then(scalar).and_then(|p| p.parse::<u16>().ok());
                out.push(Port {
                    target,
                    published,
                    host_ip: m.get("host_ip").and_then(scalar),
                    protocol: m.get("protocol").and_then(scalar).unwrap_or_else(|| "tcp".into()),
                });
            }
            other => match scalar(other).as_deref().map(short_port) {
                Some(Some(ps)) => out.extend(ps),
                _ => bad.push(scalar(other).unwrap_or_default()),
            },
        }
    }
    for e in svc.get("expose").map(list).unwrap_or_default() {
        let (num, proto) = e.split_once('/').unwrap_or((&e, "tcp"));
        match range(num) {
            Some((a, b)) => {
                for t in a..=b {
                    if !out.iter().any(|p| p.target == t && p.protocol == proto) {
                        out.push(Port { target: t, published: None, host_ip: None, protocol: proto.into() });
                    }
                }
            }
            None => bad.push(e.clone()),
        }
    }
    (out, bad)
}

fn range(s: &str) -> Option<(u16, u16)> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b && b - a < 1000).then_some((a, b))
        }
        None => s.parse().ok().map(|a| (a, a)),
    }
}

fn short_port(s: &str) -> Option<Vec<Port>> {
    let (rest, protocol) = match s.rsplit_once('/') {
        Some((r, p)) => (r, p.to_string()),
        None => (s, "tcp".to_string()),
    };
    // `[IP:]HOST:CONTAINER`; an IPv6 address is bracketed.
    let (ip, rest) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, r) = r.split_once("]:")?;
        (Some(ip.to_string()), r)
    } else {
        let parts: Vec<&str> = rest.split(':').collect();
        match parts.len() {
            3 => (Some(parts[0].to_string()), &rest[parts[0].len() + 1..]),
            1 | 2 => (None, rest),
            _ => return None,
        }
    };
    let (host, container) = match rest.split_once(':') {
        Some((h, c)) => (Some(h), c),
        None => (None, rest),
    };
    let (c0, c1) = range(container)?;
    let host = match host.filter(|h| !h.is_empty()) {
        Some(h) => Some(range(h)?),
        None => None,
    };
    let mut out = Vec::new();
    for (i, t) in (c0..=c1).enumerate() {
        let published = host.map(|(h0, h1)| if h0 == h1 { h0 } else { h0 + i as u16 });
        out.push(Port {
            target: t,
            published,
            host_ip: ip.clone().filter(|i| !i.is_empty()),
            protocol: protocol.clone(),
        });
    }
    Some(out)
}

/// One `volumes:` entry of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// `volume`, `bind` or `tmpfs` (others are reported, not mounted).
    pub kind: String,
    /// The named volume or host path; `None` for an anonymous volume or tmpfs.
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
}

/// `volumes:` of a service, short (`SRC:DST[:ro]`) or long form; a bare path is anonymous.
pub(crate) fn mounts(svc: &Mapping) -> (Vec<Mount>, Vec<String>) {
    let (mut out, mut bad) = (Vec::new(), Vec::new());
    for v in svc.get("volumes").and_then(Value::as_sequence).into_iter().flatten() {
        match v {
            Value::Mapping(m) => {
                let kind = m.get("type").and_then(scalar).unwrap_or_else(|| "volume".into());
                let Some(target) = m.get("target").and_then(scalar) else {
                    bad.push("a volume without target".into());
                    continue;
                };
                let read_only = m.get("read_only").and_then(Value::as_bool) == Some(true);
                out.push(Mount { kind, source: m.get("source").and_then(scalar), target, read_only });
            }
            other => {
                let Some(s) = scalar(other) else { continue };
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target, opts) = match parts.as_slice() {
                    [t] => (None, t.to_string(), ""),
                    [s, t] => (Some(s.to_string()), t.to_string(), ""),
                    [s, t, o] => (Some(s.to_string()), t.to_string(), *o),
                    _ => {
                        bad.push(s.clone());
                        continue;
                    }
                };
                let kind = match &source {
                    Some(s) if s.starts_with(['.', '/', '~', '$']) => "bind",
                    _ => "volume",
                };
                let read_only = opts.split(',').any(|o| o == "ro");
                out.push(Mount { kind: kind.into(), source, target, read_only });
            }
        }
    }
    (out, bad)
}

/// `depends_on:` as (service, condition), short or long form.
pub(crate) fn depends_on(svc: &Mapping) -> Vec<(String, String)> {
    match svc.get("depends_on") {
        Some(Value::Mapping(m)) => m
            .iter()
            .filter_map(|(k, v)| {
                let c = v.get("condition").and_then(scalar).unwrap_or_else(|| "service_started".into());
                Some((scalar(k)?, c))
            })
            .collect(),
        Some(other) => list(other).into_iter().map(|s| (s, "service_started".into())).collect(),
        None => vec![],
    }
}

/// A healthcheck's `test` as an argv, `Ok(None)` when disabled, `Err` when unreadable.
pub(crate) fn health_argv(h: &Mapping) -> Result<Option<Vec<String>>, String> {
    if h.get("disable").and_then(Value::as_bool) == Some(true) {
        return Ok(None);
    }
    match h.get("test") {
        None => Ok(None),
        Some(Value::Sequence(items)) => {
            let items: Vec<String> = items.iter().filter_map(scalar).collect();
            match items.first().map(String::as_str) {
                Some("CMD") if items.len() > 1 => Ok(Some(items[1..].to_vec())),
                Some("CMD-SHELL") if items.len() > 1 => {
                    Ok(Some(vec!["/bin/sh".into(), "-c".into(), items[1..].join(" ")]))
                }
                Some("NONE") => Ok(None),
                _ => Err(format!("unrecognised test {items:?}")),
            }
        }
        Some(other) => match scalar(other) {
            Some(s) => Ok(Some(vec!["/bin/sh".into(), "-c".into(), s])),
            None => Err("unrecognised test".into()),
        },
    }
}

/// `command:` / `entrypoint:` as an argv: a list as it is, a string split as a shell would
/// split words (compose does the same; no expansion).
pub(crate) fn argv(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Sequence(items) => Some(items.iter().filter_map(scalar).collect()),
        Value::Null => None,
        other => scalar(other).map(|s| shell_words(&s)),
    }
}

/// Split like a POSIX shell: whitespace separates, quotes group, backslash escapes.
pub(crate) fn shell_words(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut any) = (Vec::new(), String::new(), false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                any = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                any = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(n) = chars.next() {
                                if !matches!(n, '"' | '\\' | '$' | '`') {
                                    cur.push('\\');
                                }
                                cur.push(n);
                            }
                        }
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                any = true;
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A shell test that `HOST PORT` (`target`, two words) accepts a TCP connection, for the
/// wait tasks' loops. BusyBox builds differ: the full `nc` has `-z`, the small one (Debian's
/// busybox-static) only `-e`, so it tries one, then the other.
pub(crate) fn tcp_probe(target: &str) -> String {
    format!("{{ nc -z -w 2 {target} || nc -w 2 {target} -e true; }} 2>/dev/null")
}

/// A name as a DNS-1123 label: lowercase, `[a-z0-9-]`, at most 63, no `-` at either end.
pub(crate) fn dns_label(s: &str) -> String {
    let mut out: String =
        s.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    out.truncate(63);
    let t = out.trim_matches('-');
    if t.is_empty() {
        "x".into()
    } else {
        t.to_string()
    }
}

/// Compose memory sizes (`512m`, `1g`, `1024k`, bytes) as a Kubernetes quantity / MiB.
pub(crate) fn bytes(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1u64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num.trim().parse().ok()?;
    (n >= 0.0).then_some((n * mul as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Mapping {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn durations_ports_mounts_and_words() {
        let d = |s: &str| duration_ms(&Value::String(s.into()));
        assert_eq!(
            (d("1m30s"), d("500ms"), d("10s"), d("2h"), d("1.5s")),
            (Some(90_000), Some(500), Some(10_000), Some(7_200_000), Some(1500))
        );
        assert_eq!((d(""), d("3 parsecs"), d("10x")), (None, None, None));
        assert_eq!(seconds(&Value::String("300ms".into()), 1), Some(1));

        let (p, bad) = ports(&svc("ports: ['8080:80', '127.0.0.1:5432:5432/tcp', '9000-9001:9000-9001', '53/udp', {target: 443, published: 8443}, 'x:y']\nexpose: ['3000', '80']"));
        let got: Vec<_> =
            p.iter().map(|p| (p.target, p.published, p.host_ip.as_deref(), p.protocol.as_str())).collect();
        assert_eq!(
            got,
            [
                (80, Some(8080), None, "tcp"),
                (5432, Some(5432), Some("127.0.0.1"), "tcp"),
                (9000, Some(9000), None, "tcp"),
                (9001, Some(9001), None, "tcp"),
                (53, None, None, "udp"),
                (443, Some(8443), None, "tcp"),
                (3000, None, None, "tcp"),
            ]
        );
        assert_eq!(bad, ["x:y"]);

        let (m, _) =
            mounts(&svc("volumes: ['data:/var/lib/db', './conf:/etc/app:ro', '/cache', {type: tmpfs, target: /tmp}]"));
        assert_eq!(
            m[0],
            Mount {
                kind: "volume".into(),
                source: Some("data".into()),
                target: "/var/lib/db".into(),
                read_only: false
            }
        );
        assert_eq!((m[1].kind.as_str(), m[1].read_only), ("bind", true));
        assert_eq!((m[2].source.as_deref(), m[3].kind.as_str()), (None, "tmpfs"));

        assert_eq!(
            shell_words(r#"sh -c 'echo "hi there"' a\ b "x\"y""#),
            ["sh", "-c", "echo \"hi there\"", "a b", "x\"y"]
        );
        assert_eq!(shell_words("  "), Vec::<String>::new());
        assert_eq!(dns_label("My_Service.1"), "my-service-1");
        assert_eq!((bytes("512m"), bytes("1G"), bytes("100")), (Some(512 << 20), Some(1 << 30), Some(100)));
        assert_eq!(
            depends_on(&svc("depends_on: {db: {condition: service_healthy}, cache: {}}")),
            [("db".to_string(), "service_healthy".to_string()), ("cache".into(), "service_started".into())]
        );
        assert_eq!(
            health_argv(&svc("test: [CMD-SHELL, curl -f localhost]")).unwrap(),
            Some(vec!["/bin/sh".into(), "-c".into(), "curl -f localhost".into()])
        );
        assert_eq!(health_argv(&svc("test: [NONE]")).unwrap(), None);
    }
}
#[cfg(test)]
mod golden;
