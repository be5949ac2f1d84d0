//! Archive check: every chunk a manifest names must exist and be a
//! well-formed envelope whose CRC matches (the receiver has no key: it
//! finds bit rot and loss, dom0 authenticates content when it reads it);
//! every file in a session must be named by its manifest.
//!
//! Session directories and their manifests are both in address order, so
//! the two are walked together: memory stays bounded whatever the volume
//! size. The chunk files are read a few at a time ahead of the walk
//! (`chunk_reader`), in order.

use super::chunk_reader::{read_in_order, BufPool};
use super::session::{self, manifest_entries, INFO_FILE, MANIFEST_FILE};
use super::store::ReadFailure;
use super::Archive;
use crate::error::{Failure, Result};
use protocol::chunk::{Codec, HEADER_LEN};
use protocol::manifest::Entry;
use protocol::message::{Finding, FindingKind, MAX_FINDINGS};
use std::cell::RefCell;

/// The most a stored chunk can hold: a chunk record's data at most.
const STORED_LIMIT: usize = protocol::frame::MAX_PAYLOAD as usize - HEADER_LEN;
use std::path::Path;

#[derive(Default)]
pub struct Report {
    pub checked: u64,
    pub findings: Vec<Finding>,
    pub more: u64,
}

impl Report {
    fn add(
        &mut self,
        volume: &str,
        session: &str,
        addr: Option<u64>,
        kind: FindingKind,
        detail: String,
    ) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding {
                volume: volume.to_string(),
                session: session.to_string(),
                addr,
                kind,
                detail,
            });
        } else {
            self.more += 1;
        }
    }
}

pub fn check(archive: &Archive, volume: Option<&str>) -> Result<Report> {
    let vols = match volume {
        Some(v) => vec![v.to_string()],
        None => archive.volume_names()?,
    };
    let mut r = Report::default();
    let mut pool = BufPool::new();
    for v in &vols {
        super::prune::recover(archive, v)?;
        for s in archive.session_names(v)? {
            let dir = archive.session_dir(v, &s)?;
            if let Err(f) = check_session(archive, v, &s, &dir, &mut r, &mut pool) {
                r.add(v, &s, None, FindingKind::BadSession, f.message);
            }
        }
    }
    Ok(r)
}

/// Chunk files of a session in address order, with anything that is not a
/// chunk file reported as extra.
fn chunk_files(
    archive: &Archive,
    volume: &str,
    sess: &str,
    dir: &Path,
    r: &mut Report,
) -> Result<Vec<u64>> {
    let stored = archive
        .store
        .list(dir, &[MANIFEST_FILE, INFO_FILE])
        .map_err(|e| Failure::io("list session", dir, e))?;
    for f in stored.foreign {
        let what = if f.parent() == Some(dir) {
            "entry"
        } else {
            "file"
        };
        r.add(
            volume,
            sess,
            None,
            FindingKind::Extra,
            format!("unexpected {what} '{}'", f.display()),
        );
    }
    Ok(stored.addrs)
}

fn check_session(
    archive: &Archive,
    volume: &str,
    sess: &str,
    dir: &Path,
    r: &mut Report,
    pool: &mut BufPool,
) -> Result<()> {
    let info = session::read_info(dir)?;
    let files = chunk_files(archive, volume, sess, dir, r)?;
    let mut files = files.into_iter().peekable();
    // The walk (findings about names) and the reads (findings about
    // contents) both report, one after the other on this thread.
    let r = RefCell::new(r);
    let unnamed = |a: u64| {
        let why = "chunk file not in the manifest".to_string();
        r.borrow_mut()
            .add(volume, sess, Some(a), FindingKind::Extra, why);
    };
    let add = |addr: u64, kind: FindingKind, why: &str| {
        r.borrow_mut()
            .add(volume, sess, Some(addr), kind, why.to_string());
    };
    let cs = archive.chunk_size() as u64;
    let entries = manifest_entries(&dir.join(MANIFEST_FILE), archive.chunk_size())?;
    // The chunks to read, in address order; the readers of `read_in_order`
    // keep several in flight, so a check runs at the disk's speed rather
    // than one round trip per chunk.
    let items = entries.filter_map(|e| {
        let e: Entry = match e {
            Ok(e) => e,
            Err(f) => return Some(Err(f)),
        };
        while let Some(&a) = files.peek().filter(|&&a| a < e.addr) {
            files.next();
            unnamed(a);
        }
        let has_file = files.peek() == Some(&e.addr);
        if has_file {
            files.next();
        }
        if e.addr >= info.volume_size {
            add(
                e.addr,
                FindingKind::Corrupt,
                "entry past the session's volume size",
            );
            return None;
        }
        match (e.codec, has_file) {
            (Codec::Zero, false) => None,
            (Codec::Zero, true) => {
                add(e.addr, FindingKind::Extra, "file for a zero chunk");
                None
            }
            (_, false) => {
                add(e.addr, FindingKind::Missing, "chunk file missing");
                None
            }
            (_, true) => {
                let raw_len = (info.volume_size - e.addr).min(cs) as usize;
                Some(Ok(((dir.to_path_buf(), e.addr), (e.addr, raw_len))))
            }
        }
    });
    read_in_order(
        archive.store.as_ref(),
        items,
        STORED_LIMIT,
        pool,
        |(addr, raw_len), _, data| {
            r.borrow_mut().checked += 1;
            if let Err(why) = verify_chunk(data, raw_len) {
                add(addr, FindingKind::Corrupt, &why);
            }
            Ok(())
        },
    )?;
    for a in files {
        unnamed(a);
    }
    Ok(())
}

/// A stored chunk read for `raw_len` bytes of plaintext: whole, or why not
/// (for a finding or a log line).
pub(super) fn verify_chunk(
    data: std::result::Result<&[u8], ReadFailure>,
    raw_len: usize,
) -> std::result::Result<(), String> {
    let stored = data.map_err(|e| match e {
        ReadFailure::Open(e) | ReadFailure::Read(e) => format!("unreadable: {e}"),
    })?;
    if stored.len() > STORED_LIMIT {
        return Err("chunk file larger than any valid chunk".into());
    }
    // No key here: the envelope's frame and CRC are what can be checked
    // (bit rot); dom0 authenticates the content when it reads it.
    protocol::envelope::check_stored(stored, raw_len)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
