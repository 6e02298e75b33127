//! `.env` files: `KEY=VALUE` lines as Compose reads them.
//!
//! Pure text parsing; reading the file is the caller's job.

use super::excerpt;
use super::interpolate::interpolate;
use std::collections::BTreeMap;

/// Parse a `.env` file: `KEY=VAL` lines, `#` comments, blank lines,
/// `export KEY=VAL`; single-quoted values are literal; double-quoted values
/// understand `\n`, `\r`, `\t`, `\\`, `\"`, `\$`; quoted values may span
/// lines; an unquoted value ends at ` #` (a comment). Unquoted and
/// double-quoted values are interpolated with the variables defined earlier
/// in the file (like Compose; unknown ones expand to ""). Errors name the
/// line number.
pub fn parse_env_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    parse_env_file_with(text, &|_| None)
}

/// [`parse_env_file`], resolving variables in values through `lookup` first
/// and then through the variables defined earlier in the file (Compose's
/// order).
pub fn parse_env_file_with(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    parse_env_file_layered(text, lookup, &|_| None)
}

/// [`parse_env_file_with`], with `then` consulted last: after `first` and
/// the keys defined earlier in this file. For a list of env files, `then`
/// holds the earlier files' keys (compose-go's `dotenv.GetEnvFromFile`).
pub(crate) fn parse_env_file_layered(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    then: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let lineno = i + 1;
        let mut line = lines[i].trim_start();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(r) = line.strip_prefix("export") {
            if r.starts_with([' ', '\t']) {
                line = r.trim_start();
            }
        }
        let Some((key, raw)) = line.split_once('=') else {
            return Err(format!("line {lineno}: expected KEY=VALUE, found {:?}", excerpt(line)));
        };
        let key = key.trim_end();
        if !is_env_key(key) {
            return Err(format!("line {lineno}: invalid variable name {key:?}"));
        }
        let raw = raw.trim_start();
        let expand = |s: &str, out: &BTreeMap<String, String>| {
            interpolate(s, &|k| lookup(k).or_else(|| out.get(k).cloned()).or_else(|| then(k)))
                .map_err(|e| format!("line {lineno}: {key}: {e}"))
        };
        let value = match raw.chars().next() {
            Some(q @ ('\'' | '"')) => {
                let mut buf = raw[1..].to_string();
                // Each added line is scanned once: rescanning the whole value for every line
                // made an unterminated quote quadratic (a 200 KB file took two minutes).
                let mut scan = QuoteScan { from: 0, escaped: false };
                let (content, trailing) = loop {
                    if let Some(end) = scan.closing_quote(&buf, q) {
                        break (buf[..end].to_string(), buf[end + 1..].to_string());
                    }
                    if i < lines.len() {
                        buf.push('\n');
                        buf.push_str(lines[i]);
                        i += 1;
                    } else {
                        return Err(format!("line {lineno}: unterminated {q}-quoted value for {key}"));
                    }
                };
                let trailing = trailing.trim();
                if !trailing.is_empty() && !trailing.starts_with('#') {
                    return Err(format!(
                        "line {lineno}: unexpected characters after closing quote: {:?}",
                        excerpt(trailing)
                    ));
                }
                if q == '\'' {
                    content
                } else {
                    expand(&unescape_double(&content), &out)?
                }
            }
            _ => {
                let end = raw
                    .char_indices()
                    .find(|&(j, c)| c == '#' && j > 0 && raw[..j].ends_with([' ', '\t']))
                    .map_or(raw.len(), |(j, _)| j);
                expand(raw[..end].trim_end(), &out)?
            }
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

/// `.env` keys: `[A-Za-z_][A-Za-z0-9_.-]*`.
fn is_env_key(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Where the search for a value's closing quote stands, so that a value spanning lines is
/// scanned once, line by line, as it grows.
struct QuoteScan {
    /// Bytes of the value already scanned.
    from: usize,
    /// Whether the last byte scanned was an escaping backslash.
    escaped: bool,
}

impl QuoteScan {
    /// Byte index of the closing quote `q` in `s` (for `"`, one not escaped by a backslash),
    /// scanning only what was added to `s` since the last call.
    fn closing_quote(&mut self, s: &str, q: char) -> Option<usize> {
        let from = std::mem::replace(&mut self.from, s.len());
        if q == '\'' {
            return s[from..].find('\'').map(|i| from + i);
        }
        for (i, c) in s[from..].char_indices() {
            match c {
                _ if self.escaped => self.escaped = false,
                '\\' => self.escaped = true,
                '"' => return Some(from + i),
                _ => {}
            }
        }
        None
    }
}

/// Resolve backslash escapes of a double-quoted `.env` value. `\$` becomes
/// `$$` so that the following interpolation yields a literal `$`.
fn unescape_double(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some('$') => out.push_str("$$"),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::test_util::env;

    #[test]
    fn env_file_parsing() {
        let text = "\
# comment
   # indented comment

A=1
export B = two words  
C='single $A # kept'
D=\"double\\n$A \\\"q\\\" \\$A\"
E=unquoted # comment
F=no#comment
G=
H=\"multi
line\"
I='x' # trailing comment
J=${A}-${MISSING:-def}
K=a=b=c
L=${L:-self}
A=override
";
        let m = parse_env_file(text).unwrap();
        assert_eq!(m["A"], "override");
        assert_eq!(m["B"], "two words");
        assert_eq!(m["C"], "single $A # kept");
        assert_eq!(m["D"], "double\n1 \"q\" $A");
        assert_eq!(m["E"], "unquoted");
        assert_eq!(m["F"], "no#comment");
        assert_eq!(m["G"], "");
        assert_eq!(m["H"], "multi\nline");
        assert_eq!(m["I"], "x");
        assert_eq!(m["J"], "1-def");
        assert_eq!(m["K"], "a=b=c");
        assert_eq!(m["L"], "self");
        assert_eq!(m.len(), 12);
        // CRLF and BOM.
        let m = parse_env_file("\u{feff}X=1\r\nY='2'\r\n").unwrap();
        assert_eq!((m["X"].as_str(), m["Y"].as_str()), ("1", "2"));
        // Lookup first, then earlier keys.
        let l = env(&[("A", "outer")]);
        let m = parse_env_file_with("A=inner\nB=$A\n", &l).unwrap();
        assert_eq!(m["B"], "outer");
    }

    /// Found by review while fuzzing (the fuzzer's 4 KB inputs are too short to show it): a
    /// quote left open rescanned the whole value for each following line, so a 200 KB file
    /// with 100,000 lines after `A="` took two minutes to refuse. Each line is scanned once now.
    #[test]
    fn an_unterminated_quote_over_many_lines_is_refused_in_linear_time() {
        for q in ['"', '\''] {
            let text = format!("A={q}\n{}", "x\\\n".repeat(100_000));
            let start = std::time::Instant::now();
            let e = parse_env_file(&text).unwrap_err();
            assert!(e.starts_with("line 1: unterminated"), "{e}");
            assert!(start.elapsed() < std::time::Duration::from_secs(5), "{q}: took {:?}", start.elapsed());
        }
        // Values spanning lines still end at their quote; a backslash at a line's end escapes
        // the newline it is joined with.
        let m = parse_env_file("A=\"one\\\ntwo\"\nB='x\ny' # c\nC=3\n").unwrap();
        assert_eq!((m["A"].as_str(), m["B"].as_str(), m["C"].as_str()), ("one\ntwo", "x\ny", "3"));
    }

    #[test]
    fn env_file_errors_name_the_line() {
        let cases = [
            ("A=1\nJUSTAKEY\n", "line 2"),
            ("A=1\n\n1BAD=x\n", "line 3"),
            ("A='unterminated\nB=2\n", "line 1"),
            ("A=1\nB=\"x\" y\n", "line 2"),
            ("A=1\nB=${C:?needed}\n", "line 2"),
            ("A=${\n", "line 1"),
            ("=x\n", "line 1"),
        ];
        for (text, line) in cases {
            let e = parse_env_file(text).unwrap_err();
            assert!(e.starts_with(line), "{text:?}: {e}");
        }
    }
}
