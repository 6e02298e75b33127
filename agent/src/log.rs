//! The agent's log: one line per event on stderr, `TIME LEVEL target: message key=value…`,
//! filtered by `DOCKFRA_LOG` directives (`warn,dockfra_agent=debug`: a default level and
//! levels per target prefix, the longest prefix winning; a list without a default shows
//! only what it names). A [`tracing::Subscriber`] of its own rather than tracing-subscriber's
//! registry and formatter: the agent logs events, never spans, and stays within its size
//! budget (docs/PERFORMANCE.md).
use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Parsed `DOCKFRA_LOG` directives.
#[derive(Debug, PartialEq)]
pub struct Filter {
    default: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

fn level(s: &str) -> Option<LevelFilter> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => return None,
    })
}

impl Filter {
    /// `LEVEL`, `TARGET=LEVEL` or `TARGET` (all of it), comma-separated; `None` if any is not.
    pub fn parse(s: &str) -> Option<Filter> {
        let mut f = Filter { default: LevelFilter::OFF, targets: Vec::new() };
        for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            match d.split_once('=') {
                Some((t, l)) => f.targets.push((t.trim().to_string(), level(l)?)),
                None => match level(d) {
                    Some(l) => f.default = l,
                    None => f.targets.push((d.to_string(), LevelFilter::TRACE)),
                },
            }
        }
        f.targets.sort_by_key(|(t, _)| std::cmp::Reverse(t.len()));
        Some(f)
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        self.targets
            .iter()
            .find(|(t, _)| target == t || target.strip_prefix(t.as_str()).is_some_and(|r| r.starts_with("::")))
            .map(|(_, l)| *l)
            .unwrap_or(self.default)
    }

    fn max(&self) -> LevelFilter {
        self.targets.iter().map(|(_, l)| *l).fold(self.default, std::cmp::max)
    }
}

/// UTC `YYYY-MM-DDTHH:MM:SS.ffffffZ` (days to a civil date: Howard Hinnant's algorithm).
fn timestamp(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// Events to stderr by the filter; spans are not kept.
pub struct Log(pub Filter);

impl Subscriber for Log {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.0.level_for(m.target())
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.0.max())
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let m = e.metadata();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut line = Line(format!("{} {:>5} {}:", timestamp(now), m.level(), m.target()));
        e.record(&mut line);
        line.0.push('\n');
        let _ = std::io::stderr().lock().write_all(line.0.as_bytes());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_pick_the_longest_prefix() {
        let f = Filter::parse("warn,dockfra_agent=debug,dockfra_agent::net=trace").unwrap();
        assert_eq!(f.level_for("dockfra_agent::executor"), LevelFilter::DEBUG);
        assert_eq!(f.level_for("dockfra_agent::net"), LevelFilter::TRACE);
        assert_eq!(f.level_for("dockfra_agentx"), LevelFilter::WARN, "a prefix ends at ::");
        assert_eq!(f.level_for("h2::codec"), LevelFilter::WARN);
        assert_eq!(f.max(), LevelFilter::TRACE);
        let only = Filter::parse("dockfra_agent=debug").unwrap();
        assert_eq!(only.level_for("tonic"), LevelFilter::OFF, "no default: only what is named");
        assert!(Filter::parse("loud").is_some() && Filter::parse("x=loud").is_none());
    }

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(timestamp(std::time::Duration::from_secs(0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(std::time::Duration::from_micros(1_796_219_939_073_123)), "2026-12-02T13:58:59.073123Z");
        assert_eq!(timestamp(std::time::Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000Z");
    }
}
