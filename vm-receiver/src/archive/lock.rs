//! Who may use the archive at once: two `flock`s.
//!
//! - The *writer lock*, on the archive directory, exclusive: one backup or
//!   administration connection at a time, for its whole connection, since
//!   their requests build on each other (a session's chain, the sealed
//!   root, uploads).
//! - The *store lock*, on `volumes/`: readers (restore, verify, `open`)
//!   hold it shared for their whole connection; a writer takes it
//!   exclusive only around what moves or removes committed files (crash
//!   recovery, a prune, a volume's deletion). A backup's session is
//!   written under `.incoming-…` and appears by one rename, which no
//!   reader can see half-done, so backups and readers run side by side.
//!
//! The order is always the writer lock, then the store lock; a reader
//! that finds recovery to do lets go of its shared lock before taking
//! both, so no two connections wait on each other in a cycle.

use crate::error::{Failure, Result};
use nix::fcntl::{Flock, FlockArg};
use protocol::message::ErrorCode;
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// A held lock; released when dropped.
pub type Held = Flock<File>;

/// The writer lock on archive `root`, waiting up to `wait` for another
/// writer. None before the archive exists (nothing to hold yet).
pub fn writer(root: &Path, wait: Duration) -> Result<Option<Held>> {
    take(root, FlockArg::LockExclusiveNonblock, wait, || {
        format!(
            "archive '{}' is in use by another sparsebak connection that writes to it (a backup, prune or change)",
            root.display()
        )
    })
}

/// The store lock, shared (a reader's, for its connection).
pub fn reader(root: &Path, wait: Duration) -> Result<Option<Held>> {
    let dir = root.join(super::VOLUMES_DIR);
    take(&dir, FlockArg::LockSharedNonblock, wait, || {
        format!(
            "archive '{}' is being pruned or repaired by another sparsebak connection",
            root.display()
        )
    })
}

/// The store lock, exclusive (a writer's, around a prune, a deletion or
/// recovery): waits for readers to finish.
pub fn store(root: &Path, wait: Duration, what: &str) -> Result<Option<Held>> {
    let dir = root.join(super::VOLUMES_DIR);
    take(&dir, FlockArg::LockExclusiveNonblock, wait, || {
        format!(
            "archive '{}' is being read by another connection (a restore, verify or open): {what} must wait until it ends",
            root.display()
        )
    })
}

fn take(
    path: &Path,
    arg: FlockArg,
    wait: Duration,
    busy: impl Fn() -> String,
) -> Result<Option<Held>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::io("open for locking", path, e)),
    };
    let start = Instant::now();
    let mut said = false;
    loop {
        match Flock::lock(f, arg) {
            Ok(l) => return Ok(Some(l)),
            Err((back, _)) if start.elapsed() < wait => {
                if !said && start.elapsed() >= Duration::from_secs(2) {
                    // Said once, on stderr (which dom0 shows), so a wait
                    // of minutes is never silent.
                    eprintln!(
                        "sparsebak-receiver: {}: waiting up to {} s",
                        busy(),
                        wait.as_secs()
                    );
                    said = true;
                }
                f = back;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(_) => {
                return Err(Failure::new(
                    ErrorCode::Busy,
                    format!(
                        "{} (waited {} s; run it again once it has)",
                        busy(),
                        wait.as_secs()
                    ),
                ))
            }
        }
    }
}
