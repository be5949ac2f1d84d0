//! Pruning: merging a session into its successor by renames, journaled.
//!
//! A merge moves the chunk files of one side into the other's directory,
//! and it moves the side with fewer files, so its cost follows the smaller
//! side: pruning a full session into a 1 % incremental moves the
//! incremental's chunks, not 99 % of the full session's.
//!
//! Steps for pruned session P with successor Q:
//! 1. write the journal `VOL/.prune-journal` (P, Q, not committed), then
//!    the merged manifest and info as `Q/manifest.new` and
//!    `Q/session.info.new` (see `protocol::prune`), synced, counting the
//!    files each side keeps;
//! 2. mark the journal committed, with the direction — the commit point;
//! 3. roll forward, one of:
//!    - *into Q* (P keeps fewer files): move each chunk file of P the
//!      merged manifest still needs into Q, sync, rename the `.new` files
//!      over the old, rename P to `.pruned` and remove it (its superseded
//!      chunks go with it);
//!    - *into P* (Q has fewer files): remove P's chunk files the merged
//!      manifest no longer names, move each of Q's chunk files into P over
//!      the one P has there, sync, rename the `.new` files into P, then
//!      swap: Q goes to `.pruned`, P is renamed to Q;
//!
//!    and remove the journal.
//!
//! Every step of 3 is idempotent and the next one is told by what exists
//! (`Q/manifest.new`, P), so a committed journal found later (crash, cut
//! stream) is finished by [`recover`] before anything else reads the
//! volume; an uncommitted one is undone (the `.new` files go).
//! Cost: the manifests of P and Q, and one rename per file of the smaller
//! side (plus, into P, one unlink per chunk of P that Q hid without a file).
//! A run of prunes (a range, `--keep`) merges pairwise; since each move
//! goes into a set at least twice the size of the one it leaves, a chunk
//! moves at most about log2 of the run's length times, and once in the
//! usual run (a full session, then small incrementals).

use super::session::{manifest_entries, read_info, write_info, Entries, INFO_FILE, MANIFEST_FILE};
use super::{fsutil, Archive};
use crate::error::{Failure, Result};
use protocol::chunk::Codec;
use protocol::manifest::{Entry, ManifestWriter};
use protocol::message::{ErrorCode, SessionInfo};
use protocol::prune::{mask_range, merge_into, merged_info, Origin};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::iter::Peekable;
use std::path::Path;

pub const JOURNAL_MAGIC: [u8; 8] = *b"SBKPRJ02";
/// The journal before the direction was recorded (always into Q).
const JOURNAL_MAGIC_V1: [u8; 8] = *b"SBKPRJ01";
pub const JOURNAL_FILE: &str = ".prune-journal";
/// A pruned session while it is removed (fixed: one lookup at recovery).
pub const PRUNED: &str = ".pruned";
const NEW_MANIFEST: &str = "manifest.new";
const NEW_INFO: &str = "session.info.new";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct Journal {
    pruned: String,
    into: String,
    /// False while the `.new` files are being written.
    committed: bool,
    /// Q's files move into P, which then takes Q's name.
    into_older: bool,
}

#[derive(Deserialize)]
struct JournalV1 {
    pruned: String,
    into: String,
    committed: bool,
}

fn read_journal(path: &Path, b: &[u8]) -> Result<Journal> {
    let j = if b.starts_with(&JOURNAL_MAGIC_V1) {
        protocol::codec::decode_sealed::<JournalV1>("prune journal", &JOURNAL_MAGIC_V1, b).map(
            |j| Journal {
                pruned: j.pruned,
                into: j.into,
                committed: j.committed,
                into_older: false,
            },
        )
    } else {
        protocol::codec::decode_sealed("prune journal", &JOURNAL_MAGIC, b)
    };
    j.map_err(|e| {
        Failure::new(
            ErrorCode::Corrupt,
            format!("prune journal '{}': {e}", path.display()),
        )
    })
}

/// Merges `session` of `volume` into its successor; returns the merged
/// successor's info.
pub fn prune(archive: &Archive, volume: &str, session: &str) -> Result<SessionInfo> {
    protocol::names::validate_session_name(session)?;
    recover(archive, volume)?;
    let names = archive.session_names(volume)?;
    let k = names.iter().position(|n| n == session).ok_or_else(|| {
        Failure::new(
            ErrorCode::NoSuchSession,
            format!(
                "no session {session} of volume '{volume}' in '{}'",
                archive.root.display()
            ),
        )
    })?;
    if k + 1 == names.len() {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!("volume '{volume}': {session} is the newest session and is never pruned"),
        ));
    }
    let p_dir = archive.session_dir(volume, session)?;
    let q_dir = archive.session_dir(volume, &names[k + 1])?;
    let p = read_info(&p_dir)?;
    let q = read_info(&q_dir)?;
    let mut max_before = 0;
    for n in &names[..k] {
        max_before = max_before.max(archive.session_info(volume, n)?.volume_size);
    }
    let mut journal = Journal {
        pruned: session.to_string(),
        into: names[k + 1].clone(),
        committed: false,
        into_older: false,
    };
    let jpath = archive.volume_dir(volume)?.join(JOURNAL_FILE);
    let seal = |j: &Journal| protocol::codec::encode_sealed(&JOURNAL_MAGIC, j);
    fsutil::write_atomic(&jpath, &seal(&journal))?;
    let cs = archive.chunk_size() as u64;
    let mask = mask_range(p.volume_size, q.volume_size, max_before, cs);
    let p_entries = manifest_entries(&p_dir.join(MANIFEST_FILE), archive.chunk_size())?;
    let q_entries = manifest_entries(&q_dir.join(MANIFEST_FILE), archive.chunk_size())?;

    let new_m = q_dir.join(NEW_MANIFEST);
    let f = File::create(&new_m).map_err(|e| Failure::io("create manifest", &new_m, e))?;
    let mut w = ManifestWriter::new(BufWriter::with_capacity(1 << 16, f), archive.chunk_size())
        .map_err(|e| Failure::io("write manifest", &new_m, e))?;
    let (mut chunks, mut zeros) = (0u64, 0u64);
    // Files each side keeps: the side with fewer moves.
    let (mut p_files, mut q_files) = (0u64, 0u64);
    // Which of P's chunks the merge carries, by chunk index (a bit each).
    let mut carried = Bits::new(p.volume_size.div_ceil(cs));
    for item in merge_into(p_entries, q_entries, q.volume_size, mask, cs) {
        let (e, origin) = item?;
        w.push(&e)
            .map_err(|err| Failure::new(ErrorCode::Corrupt, format!("merging manifests: {err}")))?;
        if e.codec == Codec::Zero {
            zeros += 1;
            continue;
        }
        chunks += 1;
        match origin {
            Origin::Newer => q_files += 1,
            Origin::Older => {
                p_files += 1;
                carried.set(e.addr / cs);
            }
            Origin::Mask => {}
        }
    }
    journal.into_older = q_files < p_files;
    let stored =
        q.stored_bytes + carried_bytes(archive, volume, session, &p_dir, &p, &carried, &journal)?;
    let mut bw = w
        .finish()
        .map_err(|e| Failure::io("write manifest", &new_m, e))?;
    bw.flush()
        .and_then(|_| bw.get_ref().sync_all())
        .map_err(|e| Failure::io("write manifest", &new_m, e))?;
    drop(bw);
    let info = merged_info(&p, &q, chunks, zeros, stored);
    let new_i = q_dir.join(NEW_INFO);
    write_info(&new_i, &info)?;
    File::open(&new_i)
        .and_then(|f| f.sync_all())
        .map_err(|e| Failure::io("sync", &new_i, e))?;
    journal.committed = true;
    fsutil::write_atomic(&jpath, &seal(&journal))?;
    roll_forward(archive, volume, &journal)?;
    Ok(info)
}

/// One bit per chunk index.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    fn set(&mut self, i: u64) {
        if let Some(w) = self.0.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
        }
    }
    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// The stored bytes of P's chunks that the merge carries, from whichever
/// of the carried and the dropped is the smaller set (the dropped ones'
/// lengths are taken off P's total), so that this too follows the smaller
/// side. A prune into Q moves the carried ones anyway: they are looked at
/// here, so a missing one fails the prune before its commit point.
fn carried_bytes(
    archive: &Archive,
    volume: &str,
    session: &str,
    p_dir: &Path,
    p: &SessionInfo,
    carried: &Bits,
    j: &Journal,
) -> Result<u64> {
    let cs = archive.chunk_size() as u64;
    let n_carried = carried
        .0
        .iter()
        .map(|w| u64::from(w.count_ones()))
        .sum::<u64>();
    let by_carried = !j.into_older || n_carried <= p.chunks.saturating_sub(n_carried);
    let mut sum = 0u64;
    for pe in manifest_entries(&p_dir.join(MANIFEST_FILE), archive.chunk_size())? {
        let pe: Entry = pe?;
        if pe.codec == Codec::Zero || carried.get(pe.addr / cs) != by_carried {
            continue;
        }
        match archive.store.chunk_len(p_dir, pe.addr) {
            Ok(n) => sum += n,
            // A dropped chunk that is already gone counts nothing.
            Err(e) if !by_carried && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let src = archive.store.chunk_path(p_dir, pe.addr);
                return Err(missing_chunk(volume, session, pe.addr, &src, e));
            }
        }
    }
    Ok(if by_carried {
        sum
    } else {
        p.stored_bytes.saturating_sub(sum)
    })
}

fn missing_chunk(volume: &str, session: &str, addr: u64, p: &Path, e: std::io::Error) -> Failure {
    Failure::new(
        ErrorCode::Corrupt,
        format!(
            "volume '{volume}' session {session}: chunk {addr:#x} missing at '{}': {e}",
            p.display()
        ),
    )
}

/// Finishes an interrupted prune of `volume`, if there is one, and removes
/// leftovers of earlier ones.
pub fn recover(archive: &Archive, volume: &str) -> Result<()> {
    let vdir = archive.volume_dir(volume)?;
    let jpath = vdir.join(JOURNAL_FILE);
    match fs::read(&jpath) {
        Ok(b) => {
            let j = read_journal(&jpath, &b)?;
            if j.committed {
                roll_forward(archive, volume, &j)?;
            } else {
                roll_back(archive, volume, &j)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Failure::io("read prune journal", &jpath, e)),
    }
    // A crash while removing a pruned session's directory leaves it under
    // the `.pruned` name, which no reader looks at.
    remove_pruned(&vdir)?;
    Ok(())
}

pub fn remove_pruned(vdir: &Path) -> Result<()> {
    super::remove_tree(&vdir.join(PRUNED))
}

fn roll_back(archive: &Archive, volume: &str, j: &Journal) -> Result<()> {
    let q_dir = archive.session_dir(volume, &j.into)?;
    for n in [NEW_MANIFEST, NEW_INFO] {
        let p = q_dir.join(n);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Failure::io("remove", &p, e))
            }
            _ => {}
        }
    }
    let vdir = archive.volume_dir(volume)?;
    let jpath = vdir.join(JOURNAL_FILE);
    fs::remove_file(&jpath).map_err(|e| Failure::io("remove prune journal", &jpath, e))?;
    fsutil::fsync_dir(&vdir)
}

/// Finishes a committed prune; each step is told by what exists.
fn roll_forward(archive: &Archive, volume: &str, j: &Journal) -> Result<()> {
    let vdir = archive.volume_dir(volume)?;
    let p_dir = archive.session_dir(volume, &j.pruned)?;
    let q_dir = archive.session_dir(volume, &j.into)?;
    // The directory that ends up holding the merged session.
    let home = if j.into_older { &p_dir } else { &q_dir };
    let new_m = q_dir.join(NEW_MANIFEST);
    if new_m.exists() {
        if j.into_older {
            absorb(archive, volume, j, &p_dir, &q_dir, &new_m)?;
        } else {
            move_chunks(archive, volume, j, &p_dir, &q_dir, &new_m)?;
        }
        fsutil::syncfs(home)?;
        let m = home.join(MANIFEST_FILE);
        fs::rename(&new_m, &m).map_err(|e| Failure::io("replace manifest", &m, e))?;
    }
    let new_i = q_dir.join(NEW_INFO);
    if new_i.exists() {
        let i = home.join(INFO_FILE);
        fs::rename(&new_i, &i).map_err(|e| Failure::io("replace session info", &i, e))?;
    }
    if home.exists() {
        fsutil::fsync_dir(home)?;
    }
    if p_dir.exists() {
        if !j.into_older {
            retire(&vdir, &p_dir)?;
        } else {
            if q_dir.exists() {
                retire(&vdir, &q_dir)?;
            }
            fs::rename(&p_dir, &q_dir)
                .map_err(|e| Failure::io("rename merged session", &p_dir, e))?;
            fsutil::fsync_dir(&vdir)?;
        }
        remove_pruned(&vdir)?;
    }
    let jpath = vdir.join(JOURNAL_FILE);
    fs::remove_file(&jpath).map_err(|e| Failure::io("remove prune journal", &jpath, e))?;
    fsutil::fsync_dir(&vdir)
}

/// Renames a session directory that is going away to `.pruned`, which no
/// reader looks at (removed by the caller or the next recovery).
fn retire(vdir: &Path, dir: &Path) -> Result<()> {
    remove_pruned(vdir)?;
    let gone = vdir.join(PRUNED);
    fs::rename(dir, &gone).map_err(|e| Failure::io("remove pruned session", dir, e))?;
    fsutil::fsync_dir(vdir)
}

/// Advances an ascending manifest walk to `addr`: the entry there, if any.
fn entry_at(it: &mut Peekable<Entries>, addr: u64) -> Result<Option<Entry>> {
    loop {
        match it.peek() {
            Some(Ok(e)) if e.addr < addr => {
                it.next();
            }
            Some(Ok(e)) => return Ok((e.addr == addr).then_some(*e)),
            Some(Err(_)) => return Err(it.next().expect("peeked").expect_err("peeked an error")),
            None => return Ok(None),
        }
    }
}

/// Moves into Q every chunk file of P that the merged manifest names and Q
/// lacks. Walks the merged manifest and P's manifest together, so only P's
/// entries cost a lookup.
fn move_chunks(
    archive: &Archive,
    volume: &str,
    j: &Journal,
    p_dir: &Path,
    q_dir: &Path,
    new_m: &Path,
) -> Result<()> {
    let merged = manifest_entries(new_m, archive.chunk_size())?;
    let mut p_entries =
        manifest_entries(&p_dir.join(MANIFEST_FILE), archive.chunk_size())?.peekable();
    for m in merged {
        let m: Entry = m?;
        let from_p = entry_at(&mut p_entries, m.addr)?.is_some_and(|pe| pe == m);
        if !from_p || m.codec == Codec::Zero {
            continue;
        }
        // False: Q's own chunk (same data), or moved before a crash.
        archive
            .store
            .move_chunk(p_dir, q_dir, m.addr)
            .map_err(|e| {
                let src = archive.store.chunk_path(p_dir, m.addr);
                missing_chunk(volume, &j.pruned, m.addr, &src, e)
            })?;
    }
    Ok(())
}

/// Makes P's directory hold exactly the merged manifest's chunk files:
/// removes P's chunks that the merge dropped (hidden by a zero entry of Q
/// or by Q's smaller size), then moves each of Q's chunks in, over P's
/// chunk at that address if there is one. A chunk of Q already gone was
/// moved before a crash.
fn absorb(
    archive: &Archive,
    volume: &str,
    j: &Journal,
    p_dir: &Path,
    q_dir: &Path,
    new_m: &Path,
) -> Result<()> {
    let cs = archive.chunk_size();
    let mut merged = manifest_entries(new_m, cs)?.peekable();
    for pe in manifest_entries(&p_dir.join(MANIFEST_FILE), cs)? {
        let pe: Entry = pe?;
        if pe.codec == Codec::Zero {
            continue;
        }
        let kept = entry_at(&mut merged, pe.addr)?.is_some_and(|m| m.codec != Codec::Zero);
        if !kept {
            archive.store.remove_chunk(p_dir, pe.addr).map_err(|e| {
                let f = archive.store.chunk_path(p_dir, pe.addr);
                Failure::io("remove superseded chunk", &f, e)
            })?;
        }
    }
    for qe in manifest_entries(&q_dir.join(MANIFEST_FILE), cs)? {
        let qe: Entry = qe?;
        if qe.codec == Codec::Zero {
            continue;
        }
        archive
            .store
            .replace_chunk(q_dir, p_dir, qe.addr)
            .map_err(|e| {
                let src = archive.store.chunk_path(q_dir, qe.addr);
                missing_chunk(volume, &j.into, qe.addr, &src, e)
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_of_both_versions_are_read() {
        let p = Path::new("j");
        let v1 = protocol::codec::encode_sealed(&JOURNAL_MAGIC_V1, &("S_1", "S_2", true));
        let j = read_journal(p, &v1).unwrap();
        let want = Journal {
            pruned: "S_1".into(),
            into: "S_2".into(),
            committed: true,
            into_older: false,
        };
        assert_eq!(j, want);
        let v2 = protocol::codec::encode_sealed(
            &JOURNAL_MAGIC,
            &Journal {
                into_older: true,
                ..want.clone()
            },
        );
        assert!(read_journal(p, &v2).unwrap().into_older);
        let mut bad = v2.clone();
        bad[9] ^= 1;
        let e = read_journal(p, &bad).unwrap_err();
        assert!(e.message.contains("prune journal 'j'"), "{}", e.message);
        assert!(read_journal(p, b"SBKPRJ03xxxxxxxx").is_err());
    }
}
