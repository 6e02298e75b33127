//! Compose's variable interpolation: `$VAR`, `${VAR}` and the `${VAR:-default}` family.
//!
//! Pure string functions; it never reads the environment itself: every value comes
//! through the caller's `lookup`.

use super::excerpt;
use std::collections::BTreeSet;

/// A `${...}` reference that cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    /// `${VAR:?reason}` / `${VAR?reason}` with `VAR` missing.
    #[error("required variable {variable} is missing a value{}", colon_reason(reason))]
    Required { variable: String, reason: String },
    /// `${` without a closing `}` on its line.
    #[error("unterminated variable reference {text:?}: no closing brace on its line")]
    Unterminated {
        /// The variable named after `${`, if there is one.
        variable: Option<String>,
        /// The reference, to the end of its line (shortened).
        text: String,
    },
    /// `${}` with a bad variable name or unsupported syntax.
    #[error("invalid variable reference {text:?}: {reason}")]
    Invalid { text: String, reason: String },
}

impl InterpolationError {
    /// The variable the error is about, when there is one.
    pub fn variable(&self) -> Option<&str> {
        match self {
            InterpolationError::Required { variable, .. } => Some(variable),
            InterpolationError::Unterminated { variable, .. } => variable.as_deref(),
            InterpolationError::Invalid { .. } => None,
        }
    }
}

fn colon_reason(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

// ───────────────────────────── interpolation ─────────────────────────────

/// Expand `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
/// `${VAR:?err}`, `${VAR?err}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` in
/// `input`, as the Compose spec describes. Defaults, alternatives and error
/// texts are themselves interpolated (only when used), so
/// `${A:-${B:-x}}` works. A variable that is unset and has no default
/// expands to the empty string. A `$` not followed by `$`, `{` or a name
/// character is kept literally. A `${...}` reference stays on one line and
/// ends at the `}` that balances it, so defaults may hold braces
/// (`${X:-{"a":1}}`); unbalanced ones run to the last `}` on the line, as in
/// compose-go.
pub fn interpolate(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, InterpolationError> {
    let mut unset = BTreeSet::new();
    interpolate_collect(input, lookup, &mut unset)
}

/// [`interpolate`], also recording in `unset` the variables that were
/// substituted by an empty string because they are not set (what
/// `docker compose` warns about).
pub fn interpolate_collect(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
) -> Result<String, InterpolationError> {
    expand(input, lookup, unset, 0)
}

/// How deep `${A:-${B:-…}}` may nest. Each level is a recursion (and a scan of the rest of
/// the line): without a bound, deep nesting (6 KB of it in a debug build) overflows the
/// 2 MiB stack of the coordinator's blocking threads, which aborts the process. Real files
/// nest two or three levels.
const MAX_NESTING: usize = 64;

/// [`interpolate_collect`] at nesting level `depth` (a default, alternative or error text).
fn expand(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    if depth > MAX_NESTING {
        return Err(InterpolationError::Invalid {
            text: excerpt(input),
            reason: format!("variable references nested more than {MAX_NESTING} deep"),
        });
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let here = &rest[pos..];
        let after = &here[1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body_and_rest) = after.strip_prefix('{') {
            let close = closing_brace(body_and_rest).ok_or_else(|| {
                let n = name_len(body_and_rest);
                let line = here.split('\n').next().unwrap_or(here);
                InterpolationError::Unterminated {
                    variable: (n > 0).then(|| body_and_rest[..n].to_string()),
                    text: excerpt(line),
                }
            })?;
            let body = &body_and_rest[..close];
            out.push_str(&substitute(body, lookup, unset, depth)?);
            rest = &body_and_rest[close + 1..];
        } else {
            let n = name_len(after);
            if n == 0 {
                out.push('$');
                rest = after;
            } else {
                let name = &after[..n];
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => {
                        unset.insert(name.to_string());
                    }
                }
                rest = &after[n..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expand the inside of `${...}` found at nesting level `depth`.
fn substitute(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
    depth: usize,
) -> Result<String, InterpolationError> {
    let text = || format!("${{{body}}}");
    let n = name_len(body);
    if n == 0 {
        return Err(InterpolationError::Invalid {
            text: text(),
            reason: "expected a variable name ([A-Za-z_][A-Za-z0-9_]*)".into(),
        });
    }
    let name = &body[..n];
    let tail = &body[n..];
    let value = lookup(name);
    if tail.is_empty() {
        return Ok(match value {
            Some(v) => v,
            None => {
                unset.insert(name.to_string());
                String::new()
            }
        });
    }
    let (colon, tail) = match tail.strip_prefix(':') {
        Some(t) => (true, t),
        None => (false, tail),
    };
    let mut chars = tail.chars();
    let op = chars.next();
    let arg = chars.as_str();
    let missing = if colon { value.as_deref().is_none_or(str::is_empty) } else { value.is_none() };
    match op {
        Some('-') => {
            if missing {
                expand(arg, lookup, unset, depth + 1)
            } else {
                Ok(value.unwrap_or_default())
            }
        }
        Some('?') => {
            if missing {
                Err(InterpolationError::Required {
                    variable: name.to_string(),
                    reason: expand(arg, lookup, unset, depth + 1)?,
                })
            } else {
                Ok(value.unwrap_or_default())
            }
        }
        Some('+') => {
            if missing {
                Ok(String::new())
            } else {
                expand(arg, lookup, unset, depth + 1)
            }
        }
        _ => Err(InterpolationError::Invalid {
            text: text(),
            reason: format!(
                "unsupported syntax after {name:?} (supported: ${{VAR}}, ${{VAR:-default}}, ${{VAR-default}}, ${{VAR:?error}}, ${{VAR?error}}, ${{VAR:+alt}}, ${{VAR+alt}})"
            ),
        }),
    }
}

/// Length of the variable name at the start of `s`: `[_A-Za-z][_A-Za-z0-9]*`.
fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
            1 + b[1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == b'_').count()
        }
        _ => 0,
    }
}

/// Index of the `}` closing a `${` whose body starts `s`, as compose-go
/// finds it (template/template.go): a reference never spans lines; it ends
/// at the `}` that balances its `${`, counting every `{` and `}` on the
/// way (so `${X:-{"a":1}}` has the default `{"a":1}`); when the braces do
/// not balance before the line ends, it ends at the line's last `}`
/// (compose-go's greedy pattern `${NAME:-(.*)}`), so `${X:-{}` has the
/// default `{`. compose-go's counter also skips the character after each
/// `{`, which miscounts `{{` and `{}`; that slip is not copied.
fn closing_brace(s: &str) -> Option<usize> {
    let line = &s[..s.find('\n').unwrap_or(s.len())];
    let mut depth = 1usize;
    for (i, b) in line.bytes().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    line.rfind('}')
}

// ───────────────────────────── tests ─────────────────────────────

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::test_util::env;

    fn i(s: &str) -> Result<String, InterpolationError> {
        let l = env(&[("SET", "val"), ("EMPTY", ""), ("B", "bee"), ("NUM", "42")]);
        interpolate(s, &l)
    }

    #[test]
    fn plain_forms() {
        assert_eq!(i("$SET").unwrap(), "val");
        assert_eq!(i("${SET}").unwrap(), "val");
        assert_eq!(i("a-${SET}-b $SET.x").unwrap(), "a-val-b val.x");
        assert_eq!(i("${UNSET}").unwrap(), "");
        assert_eq!(i("$UNSET/x").unwrap(), "/x");
        assert_eq!(i("no vars").unwrap(), "no vars");
        assert_eq!(i("").unwrap(), "");
        assert_eq!(i("$NUM$NUM").unwrap(), "4242");
        assert_eq!(i("${SET}${B}").unwrap(), "valbee");
        assert_eq!(i("é$SET€").unwrap(), "éval€");
    }

    #[test]
    fn default_forms() {
        assert_eq!(i("${SET:-d}").unwrap(), "val");
        assert_eq!(i("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(i("${UNSET:-d}").unwrap(), "d");
        assert_eq!(i("${SET-d}").unwrap(), "val");
        assert_eq!(i("${EMPTY-d}").unwrap(), "");
        assert_eq!(i("${UNSET-d}").unwrap(), "d");
        assert_eq!(i("${UNSET:-}").unwrap(), "");
        assert_eq!(i("${UNSET:-a b:c-d}").unwrap(), "a b:c-d");
    }

    #[test]
    fn required_forms() {
        assert_eq!(i("${SET:?boom}").unwrap(), "val");
        assert_eq!(i("${SET?boom}").unwrap(), "val");
        assert_eq!(i("${EMPTY?boom}").unwrap(), "");
        let e = i("${EMPTY:?boom}").unwrap_err();
        assert_eq!(e.variable(), Some("EMPTY"));
        let e = i("${DB_PASSWORD:?set it in .env}").unwrap_err();
        assert_eq!(e.to_string(), "required variable DB_PASSWORD is missing a value: set it in .env");
        let e = i("${DB_PASSWORD?}").unwrap_err();
        assert_eq!(e.to_string(), "required variable DB_PASSWORD is missing a value");
        // The message is interpolated too.
        let e = i("${X?need $B}").unwrap_err();
        assert_eq!(e, InterpolationError::Required { variable: "X".into(), reason: "need bee".into() });
    }

    #[test]
    fn alternative_forms() {
        assert_eq!(i("${SET:+alt}").unwrap(), "alt");
        assert_eq!(i("${EMPTY:+alt}").unwrap(), "");
        assert_eq!(i("${UNSET:+alt}").unwrap(), "");
        assert_eq!(i("${SET+alt}").unwrap(), "alt");
        assert_eq!(i("${EMPTY+alt}").unwrap(), "alt");
        assert_eq!(i("${UNSET+alt}").unwrap(), "");
        assert_eq!(i("${SET:+[$B]}").unwrap(), "[bee]");
    }

    #[test]
    fn dollar_escapes_and_literals() {
        assert_eq!(i("$$").unwrap(), "$");
        assert_eq!(i("$$SET").unwrap(), "$SET");
        assert_eq!(i("$${SET}").unwrap(), "${SET}");
        assert_eq!(i("$$$SET").unwrap(), "$val");
        assert_eq!(
            i("--password=\"$$(cat /run/secrets/db-password)\"").unwrap(),
            "--password=\"$(cat /run/secrets/db-password)\""
        );
        // `$` not followed by a name, `{` or `$` is kept.
        assert_eq!(i("cost $5 $ x$").unwrap(), "cost $5 $ x$");
        assert_eq!(i("$-x $.").unwrap(), "$-x $.");
    }

    #[test]
    fn nested_defaults() {
        assert_eq!(i("${UNSET:-${B}}").unwrap(), "bee");
        assert_eq!(i("${UNSET:-${ALSO_UNSET:-deep}}").unwrap(), "deep");
        assert_eq!(i("${UNSET:-x${B}y}z").unwrap(), "xbeeyz");
        assert_eq!(i("${SET:-${B}}").unwrap(), "val");
        assert_eq!(i("${UNSET-${SET:+${B}}}").unwrap(), "bee");
        // An unused default is not evaluated.
        assert_eq!(i("${SET:-${NOPE:?never}}").unwrap(), "val");
        assert!(i("${UNSET:-${NOPE:?needed}}").is_err());
        assert_eq!(i("${UNSET:-$$}").unwrap(), "$");
    }

    #[test]
    fn syntax_errors() {
        for bad in ["${", "${SET", "${UNSET:-${B}", "x ${UNSET:-abc"] {
            let e = i(bad).unwrap_err();
            assert!(matches!(e, InterpolationError::Unterminated { .. }), "{bad}: {e:?}");
        }
        for bad in ["${}", "${1A}", "${-x}", "${SET/a/b}", "${SET:x}", "${ SET}", "${SET }", "${é}"] {
            let e = i(bad).unwrap_err();
            assert!(matches!(e, InterpolationError::Invalid { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("invalid variable reference"), "{e}");
        }
    }

    /// Defaults, alternatives and error texts that contain braces. Every
    /// expected value was checked against compose-go's `template.Substitute`
    /// (template/template.go, v2.13) with SET=val, EMPTY="", B=bee.
    #[test]
    fn braces_in_defaults_follow_compose_go() {
        let ok = [
            // The reference ends at the `}` that balances its `${`.
            (r#"${X:-{"a":1}}"#, r#"{"a":1}"#),
            (r#"${X-{"a":1}}"#, r#"{"a":1}"#),
            (r#"${SET:-{"a":1}}"#, "val"),
            (r#"ok ${X:-{"a":1}} tail"#, r#"ok {"a":1} tail"#),
            (r#"${X:-{"a":{"b":1}}}"#, r#"{"a":{"b":1}}"#),
            (r#"${SET:-{"a":{"b":1}}}"#, "val"),
            ("${X:-{}}", "{}"),
            ("${EMPTY:-{}}", "{}"),
            ("${X:-{a}b}", "{a}b"),
            ("${X:-{x}} and ${Y:-{y}}", "{x} and {y}"),
            ("${X:-{a}} ${SET:-{b}", "{a} val"),
            (r#"${SET:+{"a":$B}}"#, r#"{"a":bee}"#),
            ("${SET:+{x}}", "{x}"),
            ("${X:-{${B}}}", "{bee}"),
            (r#"${X:-${Y:-{"k":"v"}}}"#, r#"{"k":"v"}"#),
            // A `}` after the balancing one is plain text.
            ("${X:-}}", "}"),
            ("${X:-a}b}", "ab}"),
            ("${SET:-a}b}", "valb}"),
            ("${X:-${B}}}", "bee}"),
            ("${X:-x}${SET}}", "xval}"),
            ("{${SET}}", "{val}"),
            ("{$SET}", "{val}"),
            ("a}b{c", "a}b{c"),
            // `$$` in a default is a literal `$`; its braces still count.
            ("${X:-$${Y}}", "${Y}"),
            ("$${X:-{}}", "${X:-{}}"),
            // Braces that never balance on the line: the reference runs to
            // the line's last `}` (compose-go's greedy pattern).
            ("${X:-{}", "{"),
            ("${SET:-{}", "val"),
            ("${SET:+{}", "{"),
            ("${X:-a{b}", "a{b"),
            ("${SET:-a{b}", "val"),
            ("${X:-{$B}", "{bee"),
            ("${X:-$${}", "${"),
            ("${SET:-{a} ${B}", "val"),
            ("${SET:-${B}", "val"),
            ("${X:-{a}\n}} end", "{a\n}} end"),
            ("${X:-{a}\n${SET}}", "{a\nval}"),
            ("${SET}\n${X:-{\"a\":1}}\n", "val\n{\"a\":1}\n"),
            // Where compose-go's brace counter skips the character after
            // every `{` (so `{{` and `{}` miscount) we balance braces as
            // written: compose-go gives "val}" and "val" for these two.
            ("${SET:-{{a}}}", "val"),
            ("${SET:-{}}}", "val}"),
            ("${X:-{{a}}}", "{{a}}"),
            ("${X:-{{}}}", "{{}}"),
        ];
        for (input, want) in ok {
            assert_eq!(i(input).as_deref(), Ok(want), "{input:?}");
        }
        let e = i(r#"${X:?{"need":1}}"#).unwrap_err();
        assert_eq!(e, InterpolationError::Required { variable: "X".into(), reason: r#"{"need":1}"#.into() });
        let e = i("${X:?{}").unwrap_err();
        assert_eq!(e, InterpolationError::Required { variable: "X".into(), reason: "{".into() });
        // Where compose-go says "Invalid template".
        for bad in ["${X:-{", "${X:-{a} ${SET}", "l1 ${X:-a\nb} end", "l1 ${X:-{a\n}} end", "${X:-${B}"] {
            let e = i(bad).unwrap_err();
            assert!(matches!(e, InterpolationError::Unterminated { .. }), "{bad:?}: {e:?}");
        }
        // The error names the variable whose reference is unterminated.
        let e = i("a ${X:-{").unwrap_err();
        assert_eq!(e.variable(), Some("X"));
        assert_eq!(e.to_string(), r#"unterminated variable reference "${X:-{": no closing brace on its line"#);
        // compose-go reports the whole string where we report the reference:
        // here it says `Invalid template: "{}} ${SET"`.
        assert_eq!(i("${X:-{}} ${SET}").as_deref(), Ok("{} val"));
    }

    /// Found by review while fuzzing (the fuzzer's 4 KB inputs nest too shallowly to reach
    /// it): 20,000 nested `${A:-` (120 KB) overflowed the 8 MiB main stack of a release build,
    /// 1,000 (6 KB) a 2 MiB thread's in a debug build. The coordinator loads compose files on
    /// tokio's blocking threads (2 MiB), and a stack overflow aborts the process. Now a clear
    /// error past 64 levels, found in time linear in the input.
    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let nested = |n: usize| "${A:-".repeat(n) + "x" + &"}".repeat(n);
        assert_eq!(i(&nested(MAX_NESTING)).as_deref(), Ok("x"));
        let e = i(&nested(MAX_NESTING + 1)).unwrap_err();
        assert!(e.to_string().contains("nested more than 64 deep"), "{e}");
        // Deep input on a small stack: refused, not a crash.
        let deep = nested(200_000);
        let r = std::thread::Builder::new().stack_size(1 << 20).spawn(move || i(&deep)).unwrap().join().unwrap();
        assert!(matches!(r, Err(InterpolationError::Invalid { .. })), "{r:?}");
        // Used defaults only count: an unused deep default is never expanded.
        assert_eq!(i(&format!("${{SET:-{}}}", nested(MAX_NESTING + 1))).as_deref(), Ok("val"));
    }

    #[test]
    fn unset_variables_are_collected() {
        let mut unset = BTreeSet::new();
        let l = env(&[("A", "1")]);
        let out = interpolate_collect("$A ${B} ${C:-x} ${D-y} ${E:+z} $F", &l, &mut unset).unwrap();
        assert_eq!(out, "1  x y  ");
        assert_eq!(unset.into_iter().collect::<Vec<_>>(), ["B", "F"]);
    }
}
