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
    /// `${` without its closing `}`.
    #[error("unterminated variable reference {text:?}: missing closing brace")]
    Unterminated { text: String },
    /// `${}` with a bad variable name or unsupported syntax.
    #[error("invalid variable reference {text:?}: {reason}")]
    Invalid { text: String, reason: String },
}

impl InterpolationError {
    /// The variable the error is about, when there is one.
    pub fn variable(&self) -> Option<&str> {
        match self {
            InterpolationError::Required { variable, .. } => Some(variable),
            _ => None,
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
/// character is kept literally.
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
            let close =
                closing_brace(body_and_rest).ok_or_else(|| InterpolationError::Unterminated { text: excerpt(here) })?;
            let body = &body_and_rest[..close];
            out.push_str(&substitute(body, lookup, unset)?);
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

/// Expand the inside of `${...}`.
fn substitute(
    body: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    unset: &mut BTreeSet<String>,
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
                interpolate_collect(arg, lookup, unset)
            } else {
                Ok(value.unwrap_or_default())
            }
        }
        Some('?') => {
            if missing {
                Err(InterpolationError::Required {
                    variable: name.to_string(),
                    reason: interpolate_collect(arg, lookup, unset)?,
                })
            } else {
                Ok(value.unwrap_or_default())
            }
        }
        Some('+') => {
            if missing {
                Ok(String::new())
            } else {
                interpolate_collect(arg, lookup, unset)
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

/// Index of the `}` closing a `${` whose body starts `s`, counting nested
/// `${`.
fn closing_brace(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 1usize;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
            depth += 1;
            i += 2;
            continue;
        }
        if b[i] == b'}' {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
        i += 1;
    }
    None
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
        for bad in ["${", "${SET", "${SET:-${B}", "x ${UNSET:-abc"] {
            let e = i(bad).unwrap_err();
            assert!(matches!(e, InterpolationError::Unterminated { .. }), "{bad}: {e:?}");
        }
        for bad in ["${}", "${1A}", "${-x}", "${SET/a/b}", "${SET:x}", "${ SET}", "${SET }", "${é}"] {
            let e = i(bad).unwrap_err();
            assert!(matches!(e, InterpolationError::Invalid { .. }), "{bad}: {e:?}");
            assert!(e.to_string().contains("invalid variable reference"), "{e}");
        }
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
