//! Chunks read through the archive's store by a few threads ahead of the
//! stream, handed out in order.
//!
//! Why: a restore or verify reads thousands of small chunks that are
//! usually not cached (written days ago, with direct I/O). One at a time,
//! each costs a full disk round trip for its inode and its data; a few
//! readers keep several in flight.

use super::store::ChunkStore;
pub use super::store::ReadFailure;
use protocol::chunk::ChunkHeader;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;
use sysio::aligned::{AlignedBuf, DIRECT_ALIGN};

const READERS: usize = 4;
/// Files requested ahead of the one being sent (each holds a buffer).
const DEPTH: usize = 12;

/// A chunk to read: its session (as the store names it) and address.
pub type ChunkRef = (PathBuf, u64);

/// Buffers kept from one `read_in_order` to the next on a connection:
/// random-access reads make many short calls, and fresh buffers for each
/// cost page faults (system time) on every call.
pub type BufPool = Vec<AlignedBuf>;

/// Reads each item's chunk from `store` (at most `limit` bytes; a longer
/// chunk comes back with `limit + 1` bytes so the caller sees it is too
/// long) and calls `each` with the item, the chunk's location (for
/// messages) and the bytes, in the items' order. Stops at the first error
/// from `items`, a read or `each`.
pub fn read_in_order<T, E, I, F>(
    store: &dyn ChunkStore,
    mut items: I,
    limit: usize,
    pool: &mut BufPool,
    mut each: F,
) -> Result<(), E>
where
    T: Send,
    I: Iterator<Item = Result<(ChunkRef, T), E>>,
    F: FnMut(T, PathBuf, Result<&[u8], ReadFailure>) -> Result<(), E>,
{
    let cap = (limit + 1).next_multiple_of(DIRECT_ALIGN);
    let (job_tx, job_rx) = sync_channel::<(u64, ChunkRef, T, AlignedBuf)>(DEPTH);
    let job_rx = Mutex::new(job_rx);
    type Done<T> = (u64, ChunkRef, T, AlignedBuf, Result<(), ReadFailure>);
    let (done_tx, done_rx) = channel::<Done<T>>();
    std::thread::scope(|scope| {
        for _ in 0..READERS {
            let (job_rx, done_tx) = (&job_rx, done_tx.clone());
            let named = std::thread::Builder::new().name("sbk-read".into());
            named
                .spawn_scoped(scope, move || loop {
                    let Ok((seq, at, tag, mut buf)) = job_rx.lock().expect("jobs lock").recv()
                    else {
                        return;
                    };
                    let r = store.read(&at.0, at.1, &mut buf, limit + 1);
                    if done_tx.send((seq, at, tag, buf, r)).is_err() {
                        return;
                    }
                })
                .expect("spawning a reader thread");
        }
        drop(done_tx);
        pool.retain(|b| b.capacity() >= cap);
        let mut free: Vec<AlignedBuf> = std::mem::take(pool);
        while free.len() < DEPTH {
            free.push(AlignedBuf::new(cap));
        }
        let mut held: BTreeMap<u64, Done<T>> = BTreeMap::new();
        let (mut queued, mut next) = (0u64, 0u64);
        // An error from `items` stops the feeding; what was queued before
        // it is still handed out in order, then the error.
        let mut stopped: Option<E> = None;
        let res = loop {
            // Keep DEPTH files in flight.
            while stopped.is_none() {
                let Some(buf) = free.pop() else { break };
                match items.next() {
                    Some(Ok((path, tag))) => {
                        job_tx
                            .send((queued, path, tag, buf))
                            .expect("readers live while jobs are sent");
                        queued += 1;
                    }
                    Some(Err(e)) => {
                        free.push(buf);
                        stopped = Some(e);
                    }
                    None => {
                        free.push(buf);
                        break;
                    }
                }
            }
            if next == queued {
                break stopped.map_or(Ok(()), Err);
            }
            while !held.contains_key(&next) {
                let d = done_rx.recv().expect("readers live while jobs are out");
                held.insert(d.0, d);
            }
            let (_, at, tag, buf, r) = held.remove(&next).expect("just seen");
            next += 1;
            let r = each(
                tag,
                store.chunk_path(&at.0, at.1),
                r.map(|()| buf.as_slice()),
            );
            free.push(buf);
            if let Err(e) = r {
                break Err(e);
            }
        };
        drop(job_tx);
        // What is back (all of them, unless it stopped early) is kept.
        *pool = free;
        res
    })
}

/// Sends one chunk a stream read, if it can be one: a chunk file that
/// cannot be read, or whose length cannot be a chunk's, is left out of the
/// stream (`why` tells the log), not the end of it: dom0 names what is
/// missing, fails only what needed it, and can salvage the rest.
pub fn send_or_skip<E>(
    h: &ChunkHeader,
    chunk_size: u32,
    path: &std::path::Path,
    data: Result<&[u8], ReadFailure>,
    why: impl Fn(String),
    send: impl FnOnce(&ChunkHeader, &[u8]) -> Result<(), E>,
) -> Result<bool, E> {
    let data = match data {
        Ok(d) => d,
        Err(ReadFailure::Open(err)) | Err(ReadFailure::Read(err)) => {
            why(format!("unreadable at '{}': {err}", path.display()));
            return Ok(false);
        }
    };
    if let Err(err) = h.validate(chunk_size, data.len()) {
        why(format!("chunk file '{}': {err}", path.display()));
        return Ok(false);
    }
    send(h, data)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::fs::FsStore;

    #[test]
    fn in_order_bounded_and_failures_named() {
        let dir = std::env::temp_dir().join(format!("sbk-cr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Lengths around the block size and the limit; more files than DEPTH.
        let limit = 3 * DIRECT_ALIGN;
        let lens: Vec<usize> = (0..40)
            .map(|i| [1, 4095, 4096, 4097, limit, limit + 1][i % 6] + i / 6)
            .collect();
        let store = FsStore::default();
        let mut last = None;
        store.make_room(&dir, 0, &mut last).unwrap();
        let paths: Vec<ChunkRef> = (0..lens.len()).map(|i| (dir.clone(), i as u64)).collect();
        for (i, (p, &len)) in paths.iter().zip(&lens).enumerate() {
            let data: Vec<u8> = (0..len).map(|k| (k + i) as u8).collect();
            store.write(&p.0, p.1, &data).unwrap();
        }
        let mut seen = Vec::new();
        let items = paths
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, p)| Ok::<_, String>((p, i)));
        read_in_order(&store, items, limit, &mut Vec::new(), |i, _, data| {
            let data = data.map_err(|_| format!("f{i} unreadable"))?;
            let want: Vec<u8> = (0..lens[i].min(limit + 1)).map(|k| (k + i) as u8).collect();
            assert_eq!(data, &want[..], "file {i}");
            seen.push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..lens.len()).collect::<Vec<_>>());

        // A missing file: reported as an open failure, in its place.
        let mut with_gap = paths.clone();
        with_gap[5] = (dir.clone(), 0x1000);
        let mut n = 0;
        let items = with_gap
            .into_iter()
            .enumerate()
            .map(|(i, p)| Ok::<_, String>((p, i)));
        let e = read_in_order(&store, items, limit, &mut Vec::new(), |i, p, data| {
            n += 1;
            match data {
                Ok(_) => Ok(()),
                Err(ReadFailure::Open(e)) => Err(format!("{i} {} {e}", p.display())),
                Err(ReadFailure::Read(e)) => Err(format!("read {e}")),
            }
        })
        .unwrap_err();
        assert!(
            e.starts_with("5 ") && e.contains("x0000000000001000"),
            "{e}"
        );
        assert_eq!(n, 6);

        // An error from the items after three good ones: those three first.
        let mut got = 0;
        let items = paths.iter().cloned().enumerate().map(|(i, p)| {
            if i == 3 {
                Err("manifest broken".to_string())
            } else {
                Ok((p, i))
            }
        });
        let e = read_in_order(&store, items, limit, &mut Vec::new(), |_, _, _| {
            got += 1;
            Ok(())
        })
        .unwrap_err();
        assert_eq!((e.as_str(), got), ("manifest broken", 3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
