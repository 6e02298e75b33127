//! Progress on long work (a deploy's steps and transfer, a fleet deploy's waves): on a
//! terminal, a status line redrawn in place above which finished steps stay; elsewhere (a
//! pipe, a CI log) plain lines, one per step, nothing redrawn.
use std::io::{IsTerminal, Write};
use std::time::Instant;

const SPIN: [char; 4] = ['|', '/', '-', '\\'];

pub struct Live {
    on: bool,
    status: String,
    tick: usize,
    started: Instant,
}

impl Live {
    /// Live on a terminal (stderr), unless DOCKFRA_PROGRESS=plain.
    pub fn new() -> Live {
        let on = std::io::stderr().is_terminal() && std::env::var("DOCKFRA_PROGRESS").as_deref() != Ok("plain");
        Live { on, status: String::new(), tick: 0, started: Instant::now() }
    }

    pub fn is_live(&self) -> bool {
        self.on
    }

    /// A line that stays (the status line is drawn again below it).
    pub fn line(&mut self, s: &str) {
        let mut e = std::io::stderr().lock();
        if self.on {
            let _ = write!(e, "\r\x1b[2K");
        }
        let _ = writeln!(e, "{s}");
        drop(e);
        self.draw();
    }

    /// Replace the status line (a terminal only).
    pub fn status(&mut self, s: impl Into<String>) {
        self.status = s.into();
        self.draw();
    }

    /// Redraw: the spinner turns and the elapsed time moves.
    pub fn draw(&mut self) {
        if !self.on || self.status.is_empty() {
            return;
        }
        self.tick = (self.tick + 1) % SPIN.len();
        let secs = self.started.elapsed().as_secs_f64();
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[2K{} {} · {secs:.1}s", SPIN[self.tick], self.status);
        let _ = e.flush();
    }

    /// Clear the status line for good.
    pub fn finish(&mut self) {
        if self.on {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            self.status.clear();
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

/// `[#####-----]`, `done` of `total`.
pub fn bar(done: usize, total: usize, width: usize) -> String {
    let filled = (done * width).checked_div(total).unwrap_or(width).min(width);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(width - filled))
}

/// Bytes as a person reads them.
pub fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Whether to color output: not with NO_COLOR set (https://no-color.org), and only on a
/// terminal.
pub fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_sizes() {
        assert_eq!(bar(0, 4, 8), "[--------]");
        assert_eq!(bar(2, 4, 8), "[####----]");
        assert_eq!(bar(5, 4, 8), "[########]");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
