//! Label selectors, as kubectl has them: requirements separated by commas, all of which a
//! target's labels must meet.
//!
//! - equality: `env=prod`, `env==prod`, `env!=prod` (`!=` also matches a target without the key);
//! - set-based: `region in (eu, us)`, `tier notin (canary)` (`notin` also matches without the key);
//! - existence: `gpu` (the key is set), `!gpu` (it is not).
//!
//! Keys and values are what `deploy-targets.yaml` allows for labels; whitespace around
//! operators and commas is ignored. An empty selector is refused: `--all` says "every target".
use std::collections::BTreeMap;
use std::fmt;

/// The selector language as a regular expression (ECMA-262, for the OpenAPI document):
/// exactly the texts [`Selector::parse`] accepts (only spaces count as whitespace).
pub const PATTERN: &str = "^( *! *([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])? *| *([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])? *(==|=|!=) *([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)? *| *([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])? +(in|notin) *\\( *[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?( *, *[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)* *\\) *| *([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])? *)(,( *! *([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])? *| *([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])? *(==|=|!=) *([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)? *| *([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])? +(in|notin) *\\( *[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?( *, *[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)* *\\) *| *([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])? *))*$";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    text: String,
    reqs: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector {text:?}: {why}")]
pub struct SelectorError {
    text: String,
    why: String,
}

fn valid_key(k: &str) -> bool {
    // A Kubernetes-style key: an optional DNS prefix and `/`, then a name of letters, digits,
    // `-`, `_`, `.` that starts and ends with a letter or digit.
    let name = k.rsplit_once('/').map(|(_, n)| n).unwrap_or(k);
    let prefix_ok = k.rsplit_once('/').is_none_or(|(p, _)| {
        !p.is_empty() && p.len() <= 253 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
    });
    prefix_ok && valid_value(name) && !name.is_empty()
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

/// Split at commas that are not inside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("a `)` without its `(`".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a `(` without its `)`".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

/// Spaces around a token go (only spaces: a tab or a newline is part of it, and wrong).
fn sp(s: &str) -> &str {
    s.trim_matches(' ')
}

fn parse_set(rest: &str) -> Result<Vec<String>, String> {
    let rest = sp(rest);
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("{rest:?}: a set is written (a, b, …)"))?;
    let values: Vec<String> = inner.split(',').map(|v| sp(v).to_string()).collect();
    if values.iter().any(|v| v.is_empty()) {
        return Err(format!("({inner}): an empty value in the set"));
    }
    for v in &values {
        if !valid_value(v) {
            return Err(format!("{v:?} is not a label value (letters, digits, - _ ., at most 63)"));
        }
    }
    Ok(values)
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let p = part.trim_matches(' ');
    if p.is_empty() {
        return Err("an empty requirement (two commas in a row, or one at an end)".into());
    }
    let req = if let Some(key) = p.strip_prefix('!') {
        Requirement { key: sp(key).to_string(), op: Op::NotExists }
    } else if let Some((k, v)) = p.split_once("!=") {
        Requirement { key: sp(k).to_string(), op: Op::NotEq(sp(v).to_string()) }
    } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
        Requirement { key: sp(k).to_string(), op: Op::Eq(sp(v).to_string()) }
    } else if let Some((k, rest)) = split_word(p, "notin") {
        Requirement { key: k.to_string(), op: Op::NotIn(parse_set(rest)?) }
    } else if let Some((k, rest)) = split_word(p, "in") {
        Requirement { key: k.to_string(), op: Op::In(parse_set(rest)?) }
    } else {
        Requirement { key: p.to_string(), op: Op::Exists }
    };
    if !valid_key(&req.key) {
        return Err(format!("{:?} is not a label key", req.key));
    }
    if let Op::Eq(v) | Op::NotEq(v) = &req.op {
        if !valid_value(v) {
            return Err(format!("{v:?} is not a label value (letters, digits, - _ ., at most 63)"));
        }
    }
    Ok(req)
}

/// `key WORD (set)`: the key and what follows the word.
fn split_word<'a>(p: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let pad = format!(" {word} ");
    let pad_paren = format!(" {word}(");
    if let Some(i) = p.find(&pad) {
        return Some((sp(&p[..i]), &p[i + pad.len()..]));
    }
    p.find(&pad_paren).map(|i| (sp(&p[..i]), &p[i + word.len() + 1..]))
}

impl Selector {
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let err = |why: String| SelectorError { text: text.to_string(), why };
        if sp(text).is_empty() {
            return Err(err("empty: name labels (env=prod), or use --all for every target".into()));
        }
        let reqs = split_top(text).map_err(err)?.into_iter().map(parse_requirement).collect::<Result<_, _>>();
        Ok(Self { text: sp(text).to_string(), reqs: reqs.map_err(err)? })
    }

    /// Do these labels meet every requirement?
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                Op::Eq(want) => v == Some(want),
                Op::NotEq(want) => v != Some(want),
                Op::In(set) => v.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
            }
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn kubectl_selectors_match_as_kubectl_does() {
        let eu_prod = labels(&[("env", "prod"), ("region", "eu"), ("gpu", "yes")]);
        let us_dev = labels(&[("env", "dev"), ("region", "us")]);
        let bare = labels(&[]);
        let cases: &[(&str, [bool; 3])] = &[
            ("env=prod", [true, false, false]),
            ("env==prod,region=eu", [true, false, false]),
            ("env!=prod", [false, true, true]),
            ("region in (eu, us)", [true, true, false]),
            ("region in(eu)", [true, false, false]),
            ("region notin (eu)", [false, true, true]),
            ("gpu", [true, false, false]),
            ("!gpu", [false, true, true]),
            ("env = prod , !gpu", [false, false, false]),
            ("env in (prod,dev), region!=us", [true, false, false]),
            ("example.com/role=edge", [false, false, false]),
        ];
        for (text, want) in cases {
            let s = Selector::parse(text).unwrap_or_else(|e| panic!("{e}"));
            let got = [s.matches(&eu_prod), s.matches(&us_dev), s.matches(&bare)];
            assert_eq!(&got, want, "{text}");
        }
    }

    /// [`PATTERN`] says yes exactly where the parser does: hand-picked texts, then many made
    /// of the selector alphabet at random.
    #[test]
    fn the_pattern_is_the_parser() {
        let re = regex::Regex::new(PATTERN).unwrap();
        let same = |t: &str| {
            assert_eq!(
                re.is_match(t),
                Selector::parse(t).is_ok(),
                "{t:?}: pattern {}, parser {:?}",
                re.is_match(t),
                Selector::parse(t)
            );
        };
        for t in [
            "env=prod",
            "a=",
            "a!=",
            "!a",
            "! a",
            "in",
            "a in",
            "a in ()",
            "a in (b",
            "a in (b=c)",
            "a=b=c",
            "=b",
            "a//b=c",
            "x.y/z",
            "-/z",
            "a notin(b)",
            "anotin (b)",
            "a  in  ( b , c ) ",
            " a = b ",
            "a\t=b",
            "a,,b",
            "",
            " ",
            "(a)",
            "a in (b), c",
            "A.b-C_d=0",
        ] {
            same(t);
        }
        let alphabet: Vec<char> = "ab0.-_/=!(), in\t".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut t = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 14) as usize;
            for i in 0..len {
                let x = seed.rotate_left(5 * i as u32 + 3);
                t.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            same(&t);
        }
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        for (text, says) in [
            ("", "--all"),
            ("env=prod,", "empty requirement"),
            ("region in (eu", "without its `)`"),
            ("region in eu", "a set is written"),
            ("region in (eu,,us)", "empty value"),
            ("env=pr od", "not a label value"),
            ("=prod", "not a label key"),
            ("a)b", "without its `(`"),
        ] {
            let e = Selector::parse(text).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains(&format!("{text:?}")), "{text}: {e}");
        }
    }
}
