//! Archive check: every chunk a manifest names must exist and be a
//! well-formed envelope whose CRC matches (the receiver has no key: it
//! finds bit rot and loss, dom0 authenticates content when it reads it);
//! every file in a session must be named by its manifest.
//!
//! Session directories and their manifests are both in address order, so
//! the two are walked together: memory stays bounded whatever the volume
//! size.

use super::session::{self, manifest_entries, INFO_FILE, MANIFEST_FILE};
use super::store::ReadFailure;
use super::Archive;
use crate::error::{Failure, Result};
use protocol::chunk::{Codec, HEADER_LEN};
use protocol::manifest::Entry;
use protocol::message::{Finding, FindingKind, MAX_FINDINGS};
use sysio::aligned::{AlignedBuf, DIRECT_ALIGN};

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
    let mut stored = AlignedBuf::new((STORED_LIMIT + 1).next_multiple_of(DIRECT_ALIGN));
    for v in &vols {
        super::prune::recover(archive, v)?;
        for s in archive.session_names(v)? {
            let dir = archive.session_dir(v, &s)?;
            if let Err(f) = check_session(archive, v, &s, &dir, &mut r, &mut stored) {
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
    stored: &mut AlignedBuf,
) -> Result<()> {
    let info = session::read_info(dir)?;
    let files = chunk_files(archive, volume, sess, dir, r)?;
    let mut files = files.into_iter().peekable();
    let unnamed = |r: &mut Report, a: u64| {
        let why = "chunk file not in the manifest".to_string();
        r.add(volume, sess, Some(a), FindingKind::Extra, why);
    };
    let cs = archive.chunk_size() as u64;
    for e in manifest_entries(&dir.join(MANIFEST_FILE), archive.chunk_size())? {
        let e: Entry = e?;
        while let Some(&a) = files.peek().filter(|&&a| a < e.addr) {
            files.next();
            unnamed(r, a);
        }
        let has_file = files.peek() == Some(&e.addr);
        if has_file {
            files.next();
        }
        if e.addr >= info.volume_size {
            r.add(
                volume,
                sess,
                Some(e.addr),
                FindingKind::Corrupt,
                "entry past the session's volume size".into(),
            );
            continue;
        }
        match (e.codec, has_file) {
            (Codec::Zero, false) => {}
            (Codec::Zero, true) => r.add(
                volume,
                sess,
                Some(e.addr),
                FindingKind::Extra,
                "file for a zero chunk".into(),
            ),
            (_, false) => r.add(
                volume,
                sess,
                Some(e.addr),
                FindingKind::Missing,
                "chunk file missing".into(),
            ),
            (_, true) => {
                r.checked += 1;
                let raw_len = (info.volume_size - e.addr).min(cs) as usize;
                if let Err(why) = verify_chunk(archive, dir, e.addr, raw_len, stored) {
                    r.add(volume, sess, Some(e.addr), FindingKind::Corrupt, why);
                }
            }
        }
    }
    for a in files {
        unnamed(r, a);
    }
    Ok(())
}

fn verify_chunk(
    archive: &Archive,
    dir: &Path,
    addr: u64,
    raw_len: usize,
    stored: &mut AlignedBuf,
) -> std::result::Result<(), String> {
    let limit = STORED_LIMIT;
    archive
        .store
        .read(dir, addr, stored, limit + 1)
        .map_err(|e| match e {
            ReadFailure::Open(e) | ReadFailure::Read(e) => format!("unreadable: {e}"),
        })?;
    if stored.as_slice().len() > limit {
        return Err("chunk file larger than any valid chunk".into());
    }
    // No key here: the envelope's frame and CRC are what can be checked
    // (bit rot); dom0 authenticates the content when it reads it.
    protocol::envelope::check_stored(stored.as_slice(), raw_len)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
