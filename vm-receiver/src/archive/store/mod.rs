//! Where chunk files live, behind one trait: the archive's code (sessions,
//! prune, check, restore) asks the store for a chunk of a session by
//! address and never builds a chunk's location itself. The filesystem store
//! ([`fs::FsStore`]) fans chunks out into directories by address; a second
//! store (an object store, say) implements the same trait with keys under
//! the session's prefix.
//!
//! A session is named by its directory (for an object store: its prefix);
//! the store owns everything below it except the manifest and info files.

pub mod fs;

use std::path::{Path, PathBuf};
use sysio::aligned::AlignedBuf;

/// What a session holds besides its records: its chunks, and anything
/// else (which a check reports as extra).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StoredChunks {
    /// Chunk addresses, ascending.
    pub addrs: Vec<u64>,
    /// Locations that are not chunks of this session.
    pub foreign: Vec<PathBuf>,
}

/// Why a chunk could not be read.
#[derive(Debug)]
pub enum ReadFailure {
    /// It does not exist or cannot be opened.
    Open(std::io::Error),
    /// It exists but reading it failed.
    Read(std::io::Error),
}

pub trait ChunkStore: Send + Sync {
    /// Where the chunk at `addr` of the session at `session` lives (a
    /// path here, a key for a store without files): for messages.
    fn chunk_path(&self, session: &Path, addr: u64) -> PathBuf;

    /// Creates the chunk at `addr` holding `data`. A store that can write
    /// without a copy does so when `data` starts page-aligned.
    fn write(&self, session: &Path, addr: u64, data: &[u8]) -> std::io::Result<()>;

    /// Reads at most `max` bytes of the chunk at `addr` into `buf` (whose
    /// length is set to what was read; it must hold `max` rounded up to
    /// `DIRECT_ALIGN`). A chunk longer than `max` is cut there: pass one
    /// more than the longest valid chunk to tell a too-long one.
    fn read(
        &self,
        session: &Path,
        addr: u64,
        buf: &mut AlignedBuf,
        max: usize,
    ) -> Result<(), ReadFailure>;

    /// The stored length of the chunk at `addr`.
    fn chunk_len(&self, session: &Path, addr: u64) -> std::io::Result<u64>;

    /// Makes room for a chunk at `addr` (its directory, for a store that
    /// has them). Mostly called in ascending address order while a session
    /// is written (the data of refused references comes after, in any
    /// order), so a store can do it once per group: `last` is the group it
    /// last made room for, which exists whatever the order.
    fn make_room(&self, session: &Path, addr: u64, last: &mut Option<u64>) -> std::io::Result<()>;

    /// Moves the chunk at `addr` from one session to another (a rename,
    /// never a data copy). False if `to` already has a chunk there (its
    /// own, or one moved before a crash).
    fn move_chunk(&self, from: &Path, to: &Path, addr: u64) -> std::io::Result<bool>;

    /// Moves the chunk at `addr` from one session to another, replacing
    /// the one `to` has there (a rename over it). False if `from` has none
    /// there (moved before a crash).
    fn replace_chunk(&self, from: &Path, to: &Path, addr: u64) -> std::io::Result<bool>;

    /// Makes the chunk at `to_addr` of session `to` the very chunk stored
    /// at `from_addr` of session `from`, without copying its bytes (a hard
    /// link here; a store of objects records a reference); returns its
    /// stored length. Deduplication's one store operation: removing either
    /// place later leaves the other whole.
    fn link(&self, from: &Path, from_addr: u64, to: &Path, to_addr: u64) -> std::io::Result<u64>;

    /// Removes the chunk at `addr` of a session; false if there was none.
    fn remove_chunk(&self, session: &Path, addr: u64) -> std::io::Result<bool>;

    /// Every chunk of a session, and whatever else is there.
    fn list(&self, session: &Path, records: &[&str]) -> std::io::Result<StoredChunks>;
}
