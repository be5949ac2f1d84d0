//! Serving a session back: the volume as of a session is the merge of that
//! session's and all earlier sessions' manifests (see `protocol::merge`).

use super::chunk_reader::{read_in_order, send_or_skip};
use super::{session, Archive};
use crate::error::{Failure, Result};
use protocol::chunk::{ChunkHeader, Codec};
use protocol::merge::{merge_view, ViewSource};
use protocol::message::ErrorCode;
use std::path::PathBuf;

/// Calls `send` for every non-zero chunk of `volume` as of `session`, in
/// ascending address order. Returns the number of chunks sent.
pub fn stream_view(
    archive: &Archive,
    volume: &str,
    session_name: &str,
    log: &crate::skiplog::SkipLog,
    mut send: impl FnMut(&ChunkHeader, &[u8]) -> Result<()>,
) -> Result<u64> {
    let names = archive.session_names(volume)?;
    let upto = names
        .iter()
        .position(|n| n == session_name)
        .ok_or_else(|| {
            Failure::new(
                ErrorCode::NoSuchSession,
                format!(
                    "no session {session_name} of volume '{volume}' in '{}'",
                    archive.root.display()
                ),
            )
        })?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut sources = Vec::new();
    let mut target_size = 0;
    for name in &names[..=upto] {
        let dir = archive.session_dir(volume, name)?;
        let info = session::read_info(&dir)?;
        let entries =
            session::manifest_entries(&dir.join(session::MANIFEST_FILE), archive.chunk_size())?;
        target_size = info.volume_size;
        sources.push(ViewSource {
            volume_size: info.volume_size,
            entries,
        });
        dirs.push(dir);
    }
    let cs = archive.chunk_size() as u64;
    let mut sent = 0;
    let items = merge_view(sources).filter_map(|item| match item {
        Ok((_, e)) if e.codec == Codec::Zero => None,
        Ok((idx, e)) => Some(Ok(((dirs[idx].clone(), e.addr), (idx, e)))),
        Err(f) => Some(Err(f)),
    });
    // A chunk file longer than a chunk's largest envelope is corrupt; the
    // reader says so by returning one byte more.
    read_in_order(
        archive.store.as_ref(),
        items,
        protocol::envelope::max_stored(cs as usize),
        &mut Vec::new(),
        |(idx, e), path, data| {
            let h = ChunkHeader {
                addr: e.addr,
                codec: e.codec,
                raw_len: (target_size - e.addr).min(cs) as u32,
                hash: e.hash,
            };
            let why = |why: String| {
                log.note(|| {
                    format!(
                        "volume '{volume}' session {}: chunk {:#x} left out of the restore stream: {why}",
                        names[idx], e.addr
                    )
                })
            };
            if send_or_skip(&h, archive.chunk_size(), &path, data, why, &mut send)? {
                sent += 1;
            }
            Ok(())
        },
    )?;
    Ok(sent)
}
