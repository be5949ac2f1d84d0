//! Resuming a cut backup (`DESIGN.md` §14): what a session cut before its
//! commit stored is kept as the volume's *unfinished* session, so that the
//! next backup of the volume sends only what it lacks.
//!
//! Order of events. A cut stream (or a killed receiver) leaves the session
//! being written in `VOLUME/.incoming/`, its manifest unfinished: entries
//! up to the cut, the last perhaps torn, chunk files perhaps not all
//! written. Before its next `BeginSession` dom0 asks for the unfinished
//! session ([`settle`]): of `.incoming` and an earlier kept `.resume` the
//! one with more entries becomes `.resume`, its manifest rewritten as a
//! finished one (entries up to the first torn or out-of-order one), the
//! other is removed. dom0 compares that manifest with what it reads and
//! sends `Resume` records; each is confirmed here against the manifest
//! entry and the stored chunk's envelope (a cut can leave a file short),
//! then linked into the new session, or refused (dom0 sends its data). The
//! volume's next commit removes `.resume`.
//!
//! Nothing here is synced: `.resume` is a cache of chunks that are checked
//! before they are used, and a crash between two steps of [`settle`]
//! leaves a state the next call settles again.

use super::session::MANIFEST_FILE;
use crate::error::{Failure, Result};
use protocol::manifest::{decode_entry, Entry, ManifestWriter, ENTRY_LEN, HEADER_LEN, MAGIC};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// Where a volume's unfinished session is kept.
pub const RESUME: &str = ".resume";

/// Settles the volume's unfinished session (see the module doc) and
/// returns its finished manifest's path, None if it has none. Memory stays
/// bounded whatever the session's size: manifests are streamed.
pub fn settle(volume_dir: &Path, chunk_size: u32) -> Result<Option<PathBuf>> {
    let incoming = volume_dir.join(super::session::INCOMING);
    let kept = volume_dir.join(RESUME);
    let m = kept.join(MANIFEST_FILE);
    let mut kept_entries = finished_entries(&m, chunk_size);
    if incoming.is_dir() {
        let cut_manifest = incoming.join(MANIFEST_FILE);
        let cut = scan(&cut_manifest, chunk_size, |_| Ok(()))?;
        if cut > kept_entries {
            finish_manifest(&cut_manifest, cut, chunk_size)?;
            remove(&kept)?;
            fs::rename(&incoming, &kept)
                .map_err(|e| Failure::io("keep the unfinished session", &incoming, e))?;
            kept_entries = cut;
        } else {
            remove(&incoming)?;
        }
    }
    // A kept session whose manifest is gone or holds nothing is of no use.
    if kept_entries == 0 {
        remove(&kept)?;
        return Ok(None);
    }
    Ok(Some(m))
}

/// Removes the volume's unfinished session (after a commit, which
/// supersedes it; its chunks that the commit kept are linked there).
pub fn discard(volume_dir: &Path) -> Result<()> {
    remove(&volume_dir.join(RESUME))
}

fn remove(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Failure::io("remove unfinished session", dir, e))
        }
        _ => Ok(()),
    }
}

/// The entries of a finished manifest (one [`settle`] wrote), from its
/// length; 0 if it is missing or not one.
fn finished_entries(path: &Path, chunk_size: u32) -> u64 {
    super::refs::open_manifest(path, chunk_size).map_or(0, |(_, n)| n)
}

/// Calls `each` with the entries of a manifest as far as they are whole
/// and in order (a finished manifest's, or an unfinished one's up to its
/// cut) and returns their number: 0 if the file is missing or its header
/// is not the archive's. One pass, one entry in memory at a time.
fn scan(path: &Path, chunk_size: u32, mut each: impl FnMut(&Entry) -> Result<()>) -> Result<u64> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Failure::io("open manifest", path, e)),
    };
    let mut r = BufReader::with_capacity(1 << 16, f);
    let mut head = [0u8; HEADER_LEN];
    if r.read_exact(&mut head).is_err()
        || head[..8] != MAGIC
        || head[8..] != chunk_size.to_le_bytes()
    {
        return Ok(0);
    }
    let (mut n, mut last) = (0u64, None);
    let mut b = [0u8; ENTRY_LEN];
    while r.read_exact(&mut b).is_ok() {
        // The end record (codec 0xFF) and a torn entry end it alike.
        let Ok(e) = decode_entry(&b) else { break };
        let in_order = last.is_none_or(|l| e.addr > l);
        if !in_order || !e.addr.is_multiple_of(chunk_size as u64) {
            break;
        }
        each(&e)?;
        last = Some(e.addr);
        n += 1;
    }
    Ok(n)
}

/// Rewrites the manifest at `path` as a finished one holding its first
/// `n` whole entries.
fn finish_manifest(path: &Path, n: u64, chunk_size: u32) -> Result<()> {
    let tmp = path.with_extension("finished");
    let f = File::create(&tmp).map_err(|e| Failure::io("write manifest", &tmp, e))?;
    let mut w = ManifestWriter::new(BufWriter::with_capacity(1 << 16, f), chunk_size)
        .map_err(|e| Failure::io("write manifest", &tmp, e))?;
    let mut left = n;
    scan(path, chunk_size, |e| {
        if left > 0 {
            left -= 1;
            w.push(e)
                .map_err(|err| Failure::io("write manifest", &tmp, std::io::Error::other(err)))?;
        }
        Ok(())
    })?;
    w.finish()
        .and_then(|mut b| b.flush())
        .map_err(|e| Failure::io("write manifest", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Failure::io("write manifest", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::chunk::Codec;

    const CS: u32 = 65536;

    fn entry(i: u64) -> Entry {
        Entry {
            addr: i * CS as u64,
            codec: Codec::Sealed,
            hash: [i as u8; 32],
        }
    }

    /// An unfinished manifest of `n` entries, cut `torn` bytes into the next.
    fn cut_manifest(dir: &Path, n: u64, torn: usize) {
        fs::create_dir_all(dir).unwrap();
        let mut b = Vec::new();
        let mut w = ManifestWriter::new(&mut b, CS).unwrap();
        for i in 0..=n {
            w.push(&entry(i)).unwrap();
        }
        b.truncate(HEADER_LEN + n as usize * ENTRY_LEN + torn);
        fs::write(dir.join(MANIFEST_FILE), b).unwrap();
    }

    #[test]
    fn a_cut_session_is_kept_with_a_finished_manifest() {
        let t = tempdir();
        cut_manifest(&t.join(".incoming"), 5, 17);
        let m = settle(&t, CS).unwrap().expect("kept");
        assert_eq!(m, t.join(RESUME).join(MANIFEST_FILE));
        assert!(!t.join(".incoming").exists());
        // A finished manifest: every reader of manifests reads it.
        let f = File::open(&m).unwrap();
        let got: Vec<Entry> = protocol::manifest::ManifestReader::new(f)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(got, (0..5).map(entry).collect::<Vec<_>>());
        // Settling again changes nothing.
        assert_eq!(settle(&t, CS).unwrap(), Some(m));
    }

    #[test]
    fn of_two_cut_sessions_the_one_that_stored_more_is_kept() {
        let t = tempdir();
        cut_manifest(&t.join(".incoming"), 8, 0);
        settle(&t, CS).unwrap();
        // A resumed backup cut earlier than the first: the first stays.
        cut_manifest(&t.join(".incoming"), 3, 0);
        settle(&t, CS).unwrap();
        assert_eq!(finished_entries(&t.join(RESUME).join(MANIFEST_FILE), CS), 8);
        // Cut later: it replaces the first.
        cut_manifest(&t.join(".incoming"), 12, 40);
        settle(&t, CS).unwrap();
        assert_eq!(
            finished_entries(&t.join(RESUME).join(MANIFEST_FILE), CS),
            12
        );
        assert!(!t.join(".incoming").exists());
        discard(&t).unwrap();
        assert_eq!(settle(&t, CS).unwrap(), None);
    }

    #[test]
    fn nothing_whole_is_nothing_kept() {
        let t = tempdir();
        // Cut inside the first entry, or inside the header.
        cut_manifest(&t.join(".incoming"), 0, 40);
        assert_eq!(settle(&t, CS).unwrap(), None);
        fs::create_dir_all(t.join(".incoming")).unwrap();
        fs::write(t.join(".incoming").join(MANIFEST_FILE), b"SBKMAN").unwrap();
        assert_eq!(settle(&t, CS).unwrap(), None);
        assert!(!t.join(".incoming").exists() && !t.join(RESUME).exists());
    }

    #[test]
    fn entries_stop_at_the_first_out_of_order_or_unaligned_one() {
        let t = tempdir();
        let p = t.join("m");
        let mut b = Vec::from(&MAGIC[..]);
        b.extend_from_slice(&CS.to_le_bytes());
        for e in [entry(0), entry(2), entry(1), entry(3)] {
            b.extend_from_slice(&protocol::manifest::encode_entry(&e));
        }
        fs::write(&p, &b).unwrap();
        assert_eq!(entries(&p), vec![entry(0), entry(2)]);
        let mut odd = entry(4);
        odd.addr += 1;
        b.truncate(HEADER_LEN + ENTRY_LEN);
        b.extend_from_slice(&protocol::manifest::encode_entry(&odd));
        fs::write(&p, &b).unwrap();
        assert_eq!(entries(&p), vec![entry(0)]);
    }

    fn entries(p: &Path) -> Vec<Entry> {
        let mut v = Vec::new();
        let n = scan(p, CS, |e| {
            v.push(*e);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, v.len() as u64);
        v
    }

    fn tempdir() -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "sbk-resume-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }
}
