//! Progress on stderr while stderr is a terminal; silent otherwise.

use crate::units::human;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: u64,
    enabled: bool,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        Progress {
            label: label.to_string(),
            total,
            enabled: std::io::stderr().is_terminal(),
            last: Instant::now(),
            shown: false,
        }
    }

    /// `done` of `total` units of work; `bytes` moved so far.
    pub fn update(&mut self, done: u64, bytes: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let pct = (done * 100).checked_div(self.total).unwrap_or(100);
        eprint!(
            "\r\x1b[K{}: {pct:3}% ({done}/{} chunks, {})",
            self.label,
            self.total,
            human(bytes)
        );
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    pub fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            let _ = std::io::stderr().flush();
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
