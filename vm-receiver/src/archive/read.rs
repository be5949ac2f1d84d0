//! Random-access reads: chunks of one session by address, for dom0's
//! opened (browsed) sessions. dom0 knows from its own manifests which
//! session holds each chunk, so the receiver reads no manifest here: it
//! checks the request, reads the session's info for the volume size, and
//! sends the chunk files it has, in the request's order. As in a restore,
//! a chunk it lacks or cannot read is left out (and logged), not the end
//! of the reply: dom0 names it and fails only the read that needed it.

use super::chunk_reader::{read_in_order, send_or_skip, BufPool};
use super::{session, Archive};
use crate::error::{Failure, Result};
use protocol::chunk::{ChunkHeader, Codec};
use protocol::message::{ErrorCode, MAX_READ_CHUNKS};

/// Calls `send` for each chunk of `addrs` that `session_name` holds.
/// Returns the number sent.
pub fn read_chunks(
    archive: &Archive,
    volume: &str,
    session_name: &str,
    addrs: &[u64],
    pool: &mut BufPool,
    log: &crate::skiplog::SkipLog,
    mut send: impl FnMut(&ChunkHeader, &[u8]) -> Result<()>,
) -> Result<u64> {
    let dir = archive.committed_session_dir(volume, session_name)?;
    let info = session::read_info(&dir)?;
    check_addrs(addrs, archive.chunk_size(), info.volume_size)?;
    let cs = archive.chunk_size() as u64;
    let mut sent = 0;
    let items = addrs
        .iter()
        .map(|&a| Ok::<_, Failure>(((dir.clone(), a), a)));
    read_in_order(
        archive.store.as_ref(),
        items,
        protocol::envelope::max_stored(cs as usize),
        pool,
        |addr, path, data| {
            let h = ChunkHeader {
                addr,
                codec: Codec::Sealed,
                raw_len: (info.volume_size - addr).min(cs) as u32,
                hash: [0; 32],
            };
            let why = |why: String| {
                log.note(|| {
                    format!(
                        "volume '{volume}' session {session_name}: chunk {addr:#x} left out of a read: {why}"
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

/// 1 to `MAX_READ_CHUNKS` addresses, aligned, strictly ascending, inside
/// the volume: a request that asks for more, or for the same chunk twice,
/// is refused before anything is read.
fn check_addrs(addrs: &[u64], chunk_size: u32, volume_size: u64) -> Result<()> {
    let bad = |why: String| Err(Failure::new(ErrorCode::BadRequest, why));
    if addrs.is_empty() || addrs.len() > MAX_READ_CHUNKS {
        return bad(format!(
            "a read asks for {} chunks (1 to {MAX_READ_CHUNKS})",
            addrs.len()
        ));
    }
    let mut prev: Option<u64> = None;
    for &a in addrs {
        if !a.is_multiple_of(chunk_size as u64) || a >= volume_size {
            return bad(format!(
                "chunk address {a:#x} is not a chunk of this session's volume ({volume_size} bytes)"
            ));
        }
        if prev.is_some_and(|p| p >= a) {
            return bad(format!("chunk addresses do not ascend at {a:#x}"));
        }
        prev = Some(a);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        let cs = 65536u32;
        let size = 4 * cs as u64;
        assert!(check_addrs(&[0, 65536, 3 * 65536], cs, size).is_ok());
        let big = 1u64 << 40;
        for (bad, vsize) in [
            (vec![], big),
            (vec![1], big),
            (vec![65536, 0], big),
            (vec![0, 0], big),
            (vec![size], size),
            (
                (0..=MAX_READ_CHUNKS as u64).map(|i| i * 65536).collect(),
                big,
            ),
        ] {
            let e = check_addrs(&bad, cs, vsize).expect_err("refused");
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
        }
    }
}
