//! Reference records (deduplication, `DESIGN.md` §13): dom0 says "the
//! chunk at this address is the one stored at volume/session/address",
//! and the receiver links it instead of receiving its bytes.
//!
//! The receiver holds no key and cannot tell what a chunk holds; what it
//! can check is that the place dom0 names is a committed session whose
//! manifest has a stored chunk with the keyed id dom0 gives. That is what
//! is confirmed before linking, so a stale entry in dom0's index (a chunk
//! pruned or superseded since) is refused, never linked as the wrong
//! chunk; dom0 then sends the data. Order of events in a session: each
//! reference is confirmed and linked (or marked refused) as it arrives,
//! in address order with the chunk records; at `Commit` the refused
//! addresses are answered (`Reply::Refused`), dom0 sends those chunks,
//! and only a commit with none left makes the session visible.
//!
//! Cost: a binary search of 41-byte manifest entries by address (a few
//! `pread`s, no manifest loaded), with the last few manifests' files kept
//! open.

use super::Archive;
use crate::error::{Failure, Result};
use protocol::chunk::{Codec, Hash};
use protocol::manifest::{entry_count, find_entry, SearchError, HEADER_LEN};
use protocol::message::{ChunkRef, ErrorCode};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Manifest files kept open between references.
const OPEN_MANIFESTS: usize = 64;

/// Finds entries of committed manifests by address.
#[derive(Default)]
pub struct ManifestLookup {
    open: HashMap<PathBuf, (File, u64)>,
}

impl ManifestLookup {
    /// The hash of the stored (non-zero) chunk at `addr` in the manifest at
    /// `path`, None if it has none there. Errors name the file.
    pub fn stored_at(&mut self, path: &Path, chunk_size: u32, addr: u64) -> Result<Option<Hash>> {
        if !self.open.contains_key(path) {
            if self.open.len() >= OPEN_MANIFESTS {
                self.open.clear();
            }
            let opened = open_manifest(path, chunk_size)?;
            self.open.insert(path.to_path_buf(), opened);
        }
        let (f, n) = &self.open[path];
        stored_entry(f, path, *n, addr)
    }
}

/// Opens a finished manifest for searches: the file and its number of
/// entries (checked against its length and the archive's chunk size).
pub fn open_manifest(path: &Path, chunk_size: u32) -> Result<(File, u64)> {
    let f = File::open(path).map_err(|e| Failure::io("open manifest", path, e))?;
    let mut head = [0u8; HEADER_LEN];
    let len = f
        .read_exact_at(&mut head, 0)
        .and_then(|_| f.metadata())
        .map_err(|e| Failure::io("read manifest", path, e))?
        .len();
    let n = entry_count(&head, len, chunk_size).map_err(|e| search_failure(path, e))?;
    Ok((f, n))
}

/// Confirms a reference: the committed session directory it names, or
/// why it is refused (for the log; dom0 is told the address only).
pub fn confirm(archive: &Archive, lookup: &mut ManifestLookup, r: &ChunkRef) -> Result<PathBuf> {
    // Names are validated before a path is built from them.
    let dir = archive.session_dir(&r.volume, &r.session)?;
    if !r.from.is_multiple_of(archive.chunk_size() as u64) {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!("reference to unaligned address {:#x}", r.from),
        ));
    }
    let m = dir.join(super::session::MANIFEST_FILE);
    if !m.is_file() {
        return Err(Failure::new(
            ErrorCode::NoSuchSession,
            format!(
                "reference to session {} of volume '{}', which the archive does not hold",
                r.session, r.volume
            ),
        ));
    }
    let found = lookup.stored_at(&m, archive.chunk_size(), r.from)?;
    judge(r, found).map(|_| dir)
}

/// A reference is confirmed only where the manifest stores exactly its id
/// (`found`: the hash of the stored chunk at `from`, None if none).
pub fn judge(r: &ChunkRef, found: Option<Hash>) -> Result<()> {
    holds(found, &r.hash).map_err(|why| {
        Failure::new(
            ErrorCode::BadRequest,
            format!(
                "reference to chunk {:#x} of session {} of volume '{}': {why}",
                r.from, r.session, r.volume
            ),
        )
    })
}

/// Whether the stored chunk a manifest has at an address (`found`, None if
/// none) is exactly `want`; if not, why not.
pub fn holds(found: Option<Hash>, want: &Hash) -> std::result::Result<(), &'static str> {
    match found {
        Some(h) if h == *want => Ok(()),
        Some(_) => Err("another chunk is stored there"),
        None => Err("no chunk is stored there"),
    }
}

/// The hash of the stored chunk at `addr` among the first `n` entries of
/// the manifest `f` at `path`.
pub fn stored_entry(f: &File, path: &Path, n: u64, addr: u64) -> Result<Option<Hash>> {
    let e = find_entry(n, addr, |off, b| f.read_exact_at(b, off))
        .map_err(|e| search_failure(path, e))?;
    Ok(e.filter(|e| e.codec == Codec::Sealed).map(|e| e.hash))
}

/// A failed search of the manifest at `path`, named.
fn search_failure(path: &Path, e: SearchError) -> Failure {
    match e {
        SearchError::Io(e) => Failure::io("read manifest", path, e),
        e => Failure::new(
            ErrorCode::Corrupt,
            format!("manifest '{}': {e}", path.display()),
        ),
    }
}

/// The addresses whose references were refused and whose data has not
/// come yet: a sparse bitmap (64 chunks a word, only the words that have
/// a refusal), so its memory follows the refusals, never the volume size
/// an agent announced.
#[derive(Default)]
pub struct Refused {
    words: std::collections::BTreeMap<u64, u64>,
    count: u64,
}

impl Refused {
    pub fn mark(&mut self, index: u64) {
        let w = self.words.entry(index / 64).or_default();
        if *w & (1 << (index % 64)) == 0 {
            *w |= 1 << (index % 64);
            self.count += 1;
        }
    }

    /// Clears the bit of `index`; false if it was not set.
    pub fn take(&mut self, index: u64) -> bool {
        let (k, b) = (index / 64, index % 64);
        match self.words.get_mut(&k) {
            Some(word) if *word & (1 << b) != 0 => {
                *word &= !(1 << b);
                if *word == 0 {
                    self.words.remove(&k);
                }
                self.count -= 1;
                true
            }
            _ => false,
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The first `max` indexes still refused, ascending.
    pub fn first(&self, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for (&k, &word) in &self.words {
            let mut x = word;
            while x != 0 && out.len() < max {
                out.push(k * 64 + u64::from(x.trailing_zeros()));
                x &= x - 1;
            }
            if out.len() >= max {
                break;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_marks_takes_and_lists_in_order() {
        let mut r = Refused::default();
        assert!(r.first(10).is_empty());
        for i in [130, 3, 64, 3] {
            r.mark(i);
        }
        assert_eq!(r.count(), 3);
        assert_eq!(r.first(10), vec![3, 64, 130]);
        assert_eq!(r.first(2), vec![3, 64]);
        assert!(r.take(64));
        assert!(!r.take(64));
        assert!(!r.take(5000));
        assert_eq!(r.first(10), vec![3, 130]);
        assert_eq!(r.count(), 2);
        // Far apart: memory for two words, whatever the distance.
        r.mark(1 << 50);
        assert_eq!(r.first(10), vec![3, 130, 1 << 50]);
        assert_eq!(r.words.len(), 3);
    }
}
