//! Ctrl-C (SIGINT), SIGTERM and SIGHUP: undo what must not outlive the
//! run, say what was kept, exit 128 + the signal's number.
//!
//! How, and why this way: `install` blocks the three signals in the main
//! thread before any other thread exists, so every thread inherits the
//! mask and none is ever interrupted mid-write; one thread waits for them
//! with `sigwait` and runs the registered undo actions (no async-signal
//! handler, no `unsafe`). Child processes start with an empty mask (std
//! resets it), so a Ctrl-C on the terminal reaches the local receiver,
//! `ssh` and LVM tools as usual.
//!
//! What is registered: a partial restore file (removed), the terminal's
//! echo while a passphrase is asked for (restored), an opened session's
//! mount (unmounted), and notes on what an
//! interrupted run leaves for the next one to settle (printed).

use nix::sys::signal::{SigSet, Signal};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

type Action = Box<dyn FnOnce() -> Option<String> + Send>;

struct State {
    next: u64,
    actions: Vec<(u64, Action)>,
}

/// Set once a signal arrived, before its actions run.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Work that an undo action itself ends (a mount's serving loop, which
/// returns once the action unmounted) calls this before going on: if a
/// signal is being handled, it waits for the exit that comes after the
/// actions, instead of finishing as if nothing happened.
pub fn hold_if_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}

static STATE: Mutex<State> = Mutex::new(State {
    next: 0,
    actions: Vec::new(),
});

/// Unregisters its action when dropped (the work finished normally).
#[must_use]
pub struct Guard(u64);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut s) = STATE.lock() {
            s.actions.retain(|(id, _)| *id != self.0);
        }
    }
}

/// Runs `action` if the run is interrupted while the guard lives; the
/// line it returns is printed.
pub fn on_interrupt(action: impl FnOnce() -> Option<String> + Send + 'static) -> Guard {
    let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
    s.next += 1;
    let id = s.next;
    s.actions.push((id, Box::new(action)));
    Guard(id)
}

/// Removes `path` if the run is interrupted, and says so.
pub fn remove_file(path: PathBuf, what: &str) -> Guard {
    let what = what.to_string();
    on_interrupt(move || {
        Some(match std::fs::remove_file(&path) {
            Ok(()) => format!("removed {what} '{}'", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => format!("unable to remove {what} '{}': {e}", path.display()),
        })
    })
}

/// Prints `text` if the run is interrupted.
pub fn note(text: String) -> Guard {
    on_interrupt(move || Some(text))
}

/// Blocks the signals and starts the thread that waits for them. Call
/// first thing in `main`, before any thread starts.
pub fn install() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return; // the default actions stay: the run just dies
    }
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        INTERRUPTED.store(true, Ordering::SeqCst);
        let actions = {
            let mut s = STATE.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut s.actions)
        };
        let mut lines = Vec::new();
        // Newest first: undo in the reverse order of doing.
        for (_, a) in actions.into_iter().rev() {
            if let Some(l) = a() {
                lines.push(l);
            }
        }
        eprintln!();
        eprintln!("sparsebak: interrupted ({sig}): stopped before finishing");
        for l in &lines {
            eprintln!("sparsebak: {l}");
        }
        if lines.is_empty() {
            eprintln!("sparsebak: nothing half-done was kept");
        }
        let status = 128 + sig as i32;
        for l in &lines {
            crate::report::push("interrupted", l);
        }
        crate::report::finish(status, Some(&format!("interrupted ({sig})")));
        std::process::exit(status);
    });
}
