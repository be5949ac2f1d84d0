//! What the receiver says on stderr of chunks it leaves out of a restore
//! stream or a read, bounded per connection: the first few are listed,
//! the rest counted and summed up in one line when the connection ends.
//! A peer that asks for ten thousand missing chunks gets a few lines of
//! log, not tens of megabytes (dom0 names each missing chunk itself).

use std::cell::Cell;

/// Lines listed per connection before the rest are only counted.
pub const LISTED: u64 = 20;

#[derive(Default)]
pub struct SkipLog {
    listed: Cell<u64>,
    more: Cell<u64>,
}

impl SkipLog {
    /// Logs `line()` while under the limit; counts it otherwise.
    pub fn note(&self, line: impl FnOnce() -> String) {
        if self.listed.get() < LISTED {
            eprintln!("sparsebak-receiver: {}", line());
            self.listed.set(self.listed.get() + 1);
        } else {
            self.more.set(self.more.get() + 1);
        }
    }
}

impl Drop for SkipLog {
    fn drop(&mut self) {
        let more = self.more.get();
        if more > 0 {
            eprintln!(
                "sparsebak-receiver: {more} more chunks left out on this connection (only the first {LISTED} are listed)"
            );
        }
    }
}
