//! Progress on stderr while stderr is a terminal (and neither --quiet nor
//! --json was given): percentage, rate and time left, four times a second.

use crate::units::human;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: u64,
    enabled: bool,
    start: Instant,
    last: Instant,
    shown: bool,
}

/// `m:ss`, or `h:mm:ss` from an hour on.
pub fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

impl Progress {
    pub fn new(label: &str, total: u64) -> Self {
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            total,
            enabled: std::io::stderr().is_terminal() && !crate::report::quiet(),
            start: now,
            last: now,
            shown: false,
        }
    }

    /// The line for `done` of `total` units of work and `bytes` moved,
    /// `elapsed` after the start.
    pub fn text(&self, done: u64, bytes: u64, elapsed: Duration) -> String {
        let pct = (done * 100).checked_div(self.total).unwrap_or(100).min(100);
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            format!(", {}/s", human((bytes as f64 / secs) as u64))
        } else {
            String::new()
        };
        let eta = if done > 0 && done < self.total && secs > 1.0 {
            let left = secs * (self.total - done) as f64 / done as f64;
            format!(", {} left", clock(Duration::from_secs_f64(left)))
        } else {
            String::new()
        };
        format!(
            "{}: {pct:3}% ({done}/{} chunks, {}{rate}{eta})",
            self.label,
            self.total,
            human(bytes)
        )
    }

    /// `done` of `total` units of work; `bytes` moved so far.
    pub fn update(&mut self, done: u64, bytes: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        eprint!("\r\x1b[K{}", self.text(done, bytes, self.start.elapsed()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_time_left() {
        let p = Progress::new("vol", 100);
        assert_eq!(
            p.text(25, 100 << 20, Duration::from_secs(10)),
            "vol:  25% (25/100 chunks, 100.0 MiB, 10.0 MiB/s, 0:30 left)"
        );
        assert_eq!(
            p.text(100, 1 << 30, Duration::from_secs(4000)),
            "vol: 100% (100/100 chunks, 1.0 GiB, 262.1 KiB/s)"
        );
        assert_eq!(clock(Duration::from_secs(3 * 3600 + 61)), "3:01:01");
    }
}
