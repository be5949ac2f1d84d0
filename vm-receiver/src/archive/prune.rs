//! Pruning: merging a session into its successor by renames, journaled.
//!
//! Steps for pruned session P with successor Q:
//! 1. write the journal `VOL/.prune-journal` (P, Q, not committed), then
//!    the merged manifest and info as `Q/manifest.new` and
//!    `Q/session.info.new` (see `protocol::prune`), synced;
//! 2. mark the journal committed — the commit point;
//! 3. roll forward: move each chunk file of P the merged manifest still
//!    needs into Q (rename; never a data copy), sync, rename the `.new`
//!    files over the old, rename P to `.pruned` and remove it (its
//!    superseded chunks go with it), remove the journal.
//!
//! Every step of 3 is idempotent, so a committed journal found later
//! (crash, cut stream) is finished by [`recover`] before anything else
//! reads the volume; an uncommitted one is undone (the `.new` files go).
//! Cost: the manifests of P and Q and one rename per surviving chunk of P.

use super::session::{manifest_entries, read_info, write_info, INFO_FILE, MANIFEST_FILE};
use super::{fsutil, Archive};
use crate::error::{Failure, Result};
use protocol::chunk::Codec;
use protocol::manifest::{Entry, ManifestWriter};
use protocol::message::{ErrorCode, SessionInfo};
use protocol::prune::{mask_range, merge_into, merged_info, Origin};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

pub const JOURNAL_MAGIC: [u8; 8] = *b"SBKPRJ01";
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
    let (mut chunks, mut zeros, mut stored) = (0u64, 0u64, q.stored_bytes);
    for item in merge_into(p_entries, q_entries, q.volume_size, mask, cs) {
        let (e, origin) = item?;
        w.push(&e)
            .map_err(|err| Failure::new(ErrorCode::Corrupt, format!("merging manifests: {err}")))?;
        if e.codec == Codec::Zero {
            zeros += 1;
            continue;
        }
        chunks += 1;
        if origin == Origin::Older {
            let len = archive.store.chunk_len(&p_dir, e.addr).map_err(|err| {
                let src = archive.store.chunk_path(&p_dir, e.addr);
                missing_chunk(volume, session, e.addr, &src, err)
            })?;
            stored += len;
        }
    }
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
            let j: Journal = protocol::codec::decode_sealed("prune journal", &JOURNAL_MAGIC, &b)
                .map_err(|e| {
                    Failure::new(
                        ErrorCode::Corrupt,
                        format!("prune journal '{}': {e}", jpath.display()),
                    )
                })?;
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

fn remove_pruned(vdir: &Path) -> Result<()> {
    let p = vdir.join(PRUNED);
    match fs::remove_dir_all(&p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::io("remove", &p, e)),
        _ => Ok(()),
    }
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

fn roll_forward(archive: &Archive, volume: &str, j: &Journal) -> Result<()> {
    let vdir = archive.volume_dir(volume)?;
    let p_dir = archive.session_dir(volume, &j.pruned)?;
    let q_dir = archive.session_dir(volume, &j.into)?;
    let new_m = q_dir.join(NEW_MANIFEST);
    if new_m.exists() {
        move_chunks(archive, volume, j, &p_dir, &q_dir, &new_m)?;
        fsutil::syncfs(&q_dir)?;
        let m = q_dir.join(MANIFEST_FILE);
        fs::rename(&new_m, &m).map_err(|e| Failure::io("replace manifest", &m, e))?;
    }
    let new_i = q_dir.join(NEW_INFO);
    if new_i.exists() {
        let i = q_dir.join(INFO_FILE);
        fs::rename(&new_i, &i).map_err(|e| Failure::io("replace session info", &i, e))?;
    }
    fsutil::fsync_dir(&q_dir)?;
    if p_dir.exists() {
        remove_pruned(&vdir)?;
        let gone = vdir.join(PRUNED);
        fs::rename(&p_dir, &gone).map_err(|e| Failure::io("remove pruned session", &p_dir, e))?;
        fsutil::fsync_dir(&vdir)?;
        remove_pruned(&vdir)?;
    }
    let jpath = vdir.join(JOURNAL_FILE);
    fs::remove_file(&jpath).map_err(|e| Failure::io("remove prune journal", &jpath, e))?;
    fsutil::fsync_dir(&vdir)
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
        let mut from_p = false;
        while let Some(pe) = p_entries.peek() {
            match pe {
                Ok(pe) if pe.addr < m.addr => {
                    p_entries.next();
                }
                Ok(pe) => {
                    from_p = pe.addr == m.addr && pe.hash == m.hash && pe.codec == m.codec;
                    break;
                }
                Err(_) => return Err(p_entries.next().expect("peeked").expect_err("err")),
            }
        }
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
