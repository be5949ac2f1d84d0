//! The backup pipeline: N workers that each read, hash and compress a
//! chunk, one ordered sink. Buffers circulate through a fixed pool, which
//! bounds memory and gives back-pressure: the workers wait when the sink
//! falls behind.
//!
//! The source is read with `O_DIRECT` where the kernel allows it: the data
//! goes from the device straight into the pool's buffers, without a copy
//! through dom0's page cache (which also stays free for dom0's own use: a
//! backup reads every changed byte once and never again).

use crate::dedup::{Dedup, Found};
use crate::meta::View;
use anyhow::{anyhow, Context, Result};
use protocol::chunk::{Codec, Hash};
use protocol::message::Compression;
use sealed::envelope::{self, Place, Sealer};
use sealed::keys::{Keys, Scope};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};
use sysio::aligned::{read_direct, AlignedBuf, DIRECT_ALIGN};
use sysio::direct::Direct;

/// The source, read directly where possible and through the page cache
/// otherwise (see `sysio::direct::Direct`).
struct Reader<'a> {
    buffered: &'a File,
    direct: Direct,
}

impl Reader<'_> {
    fn read(&self, buf: &mut AlignedBuf, addr: u64, len: usize) -> std::io::Result<()> {
        // The length rounded up to the alignment: the last chunk of a file
        // ends at EOF, which direct reads may cross.
        let want = len.next_multiple_of(DIRECT_ALIGN);
        let direct = self
            .direct
            .try_io(|d| read_direct(|b, at| d.read_at(b, at), &mut buf.whole_mut()[..want], addr));
        match direct {
            Some(Ok(n)) if n >= len => {
                buf.fill(len);
                Ok(())
            }
            Some(Ok(_)) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the source ended early",
            )),
            Some(Err(e)) => Err(e),
            None => self.buffered.read_exact_at(buf.fill(len), addr),
        }
    }
}

/// What the previous session had at a chunk's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prev {
    /// Unknown: send the chunk whatever it holds (zero as a zero record).
    Unknown,
    /// Nothing, i.e. zero: send only if the chunk now holds data.
    Absent,
    /// This entry: send only if the chunk differs.
    Entry(Codec, Hash),
    /// The archive holds this chunk damaged: send it whatever it holds,
    /// as data (a reference could name the damaged file itself).
    Damaged,
}

#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub addr: u64,
    pub len: u32,
    /// False where the source knows the range is a hole (zero, not read).
    pub read: bool,
    pub prev: Prev,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Zero,
    /// Sealed into the slot's `stored()` bytes, with this keyed id.
    Data {
        hash: Hash,
    },
    /// Already stored in the scope, at `from` (checked against dom0's
    /// manifest): sent as a reference, not sealed.
    Ref {
        hash: Hash,
        from: Found,
    },
    /// Held at this address by the volume's unfinished session (a cut
    /// backup): kept there, not sealed.
    Resumed {
        hash: Hash,
    },
}

pub struct Slot {
    raw: AlignedBuf,
    out: Vec<u8>,
}

impl Slot {
    /// The envelope to store for a `Data` outcome.
    pub fn stored(&self) -> &[u8] {
        &self.out
    }
}

pub struct Settings {
    pub chunk_size: u32,
    pub compression: Compression,
    pub workers: usize,
    pub keys: Arc<Keys>,
    /// The volume's dedup scope: chunk ids are computed in it, and bound
    /// into every chunk's envelope.
    pub scope: Scope,
    /// The scope's index, where chunks already stored are found (None:
    /// every changed chunk is sealed and sent).
    pub dedup: Option<Arc<Dedup>>,
    /// The manifest of the volume's unfinished session, as the receiver
    /// sent it (None: there is none): a chunk whose id it has at the same
    /// address is not sent again.
    pub resume: Option<Arc<crate::meta::ManifestFile>>,
}

/// Runs `jobs` (ascending addresses) through the pipeline and calls `sink`
/// for each in order with its outcome and buffers.
pub fn run<J, S>(file: &File, jobs: J, settings: &Settings, mut sink: S) -> Result<()>
where
    J: Iterator<Item = Result<Job>> + Send,
    S: FnMut(&Job, Outcome, &Slot) -> Result<()>,
{
    let workers = settings.workers.max(1);
    let slots = workers * 4;
    let cs = settings.chunk_size as usize;
    let out_cap = envelope::sealed_bound(cs);
    let reader = Reader {
        buffered: file,
        direct: Direct::reopen(file, false),
    };
    let (pool_tx, pool_rx) = sync_channel::<Slot>(slots);
    for _ in 0..slots {
        pool_tx
            .send(Slot {
                raw: AlignedBuf::new(cs.next_multiple_of(DIRECT_ALIGN)),
                out: Vec::with_capacity(out_cap),
            })
            .expect("pool has room");
    }
    // Workers take a buffer (back-pressure), then the next job, read it
    // themselves and process it: no reader thread, one hand-off per chunk.
    let pool_rx = Mutex::new(pool_rx);
    let jobs = Mutex::new(jobs.enumerate());
    let (res_tx, res_rx) = channel::<Result<(u64, Job, Outcome, Slot)>>();

    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..workers {
            let tx = res_tx.clone();
            let (pool_rx, jobs, reader) = (&pool_rx, &jobs, &reader);
            let compression = settings.compression;
            let (keys, dscope) = (settings.keys.clone(), settings.scope);
            let dedup = settings.dedup.as_deref();
            let resume = settings.resume.as_deref();
            // Named, so that `top -H` and bench/stages.sh tell the stages.
            let worker = std::thread::Builder::new().name("sbk-seal".into());
            let spawned = worker.spawn_scoped(scope, move || {
                let level = match compression {
                    Compression::Zstd { level } => Some(level),
                    Compression::None => None,
                };
                let mut sealer = match Sealer::new(level, keys) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!("zstd: {e}")));
                        return;
                    }
                };
                loop {
                    let Ok(mut slot) = pool_rx.lock().expect("pool lock").recv() else {
                        return;
                    };
                    let Some((seq, job)) = jobs.lock().expect("jobs lock").next() else {
                        return;
                    };
                    let r = job.and_then(|job| {
                        if job.read {
                            reader
                                .read(&mut slot.raw, job.addr, job.len as usize)
                                .with_context(|| {
                                    format!("unable to read chunk at {:#x}", job.addr)
                                })?;
                        } else {
                            // A known hole: its content is never looked at.
                            slot.raw.fill(0);
                        }
                        let o = process(&job, &mut slot, &mut sealer, &dscope, dedup, resume)?;
                        Ok((seq as u64, job, o, slot))
                    });
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            });
            spawned.expect("spawning a worker thread");
        }
        drop(res_tx);
        // Sink: reorder by sequence number and hand out in order. Dropping
        // the channels on return stops the threads if the sink fails.
        let res = (|| -> Result<()> {
            let mut next = 0u64;
            let mut held: BTreeMap<u64, (Job, Outcome, Slot)> = BTreeMap::new();
            for r in res_rx.iter() {
                let (seq, job, outcome, slot) = r?;
                held.insert(seq, (job, outcome, slot));
                while let Some((job, outcome, slot)) = held.remove(&next) {
                    sink(&job, outcome, &slot)?;
                    next += 1;
                    // The pool is sized to hold every slot: never blocks.
                    let _ = pool_tx.try_send(slot);
                }
            }
            Ok(())
        })();
        drop(pool_tx);
        res
    })
}

fn process(
    job: &Job,
    slot: &mut Slot,
    sealer: &mut Sealer,
    scope: &Scope,
    dedup: Option<&Dedup>,
    resume: Option<&crate::meta::ManifestFile>,
) -> Result<Outcome> {
    let zero = !job.read || is_zero(slot.raw.as_slice());
    if zero {
        return Ok(match job.prev {
            Prev::Absent | Prev::Entry(Codec::Zero, _) => Outcome::Unchanged,
            _ => Outcome::Zero,
        });
    }
    // Hashed once: compared with the previous entry, looked up in the
    // scope, and only then (if neither) sealed.
    let hash = sealer.id(scope, slot.raw.as_slice());
    if let Prev::Entry(c, h) = job.prev {
        if c != Codec::Zero && h == hash {
            return Ok(Outcome::Unchanged);
        }
    }
    // The receiver's word is taken for nothing but where to look: the id
    // compared is the one just computed from the source.
    if let Some(m) = resume.filter(|_| job.prev != Prev::Damaged) {
        if let Some(e) = m.entry_at(job.addr)? {
            if e.codec == Codec::Sealed && e.hash == hash {
                return Ok(Outcome::Resumed { hash });
            }
        }
    }
    if let Some(d) = dedup.filter(|_| job.prev != Prev::Damaged) {
        if let Some(from) = d.find(&hash, job.len, job.addr)? {
            return Ok(Outcome::Ref { hash, from });
        }
    }
    seal_into(sealer, slot, scope, job, &hash)?;
    Ok(Outcome::Data { hash })
}

/// Seals the chunk in `slot` (id `hash`) into the slot's stored bytes.
fn seal_into(
    sealer: &mut Sealer,
    slot: &mut Slot,
    scope: &Scope,
    job: &Job,
    hash: &Hash,
) -> Result<()> {
    let at = Place {
        scope: *scope,
        addr: job.addr,
        raw_len: job.len,
    };
    sealer
        .seal_as(
            slot.raw.as_slice(),
            &at,
            hash,
            crate::random::bytes()?,
            &mut slot.out,
        )
        .context("sealing a chunk")
}

/// All-zero test, 64 bytes at a time (the compiler vectorizes the OR).
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    for b in &mut blocks {
        let acc = b.chunks_exact(8).fold(0u64, |a, w| {
            a | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
        });
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Jobs comparing every chunk of a volume of `size` with `view` (the
/// previous session): chunks that hold data (`has_data`) are read and
/// compared by keyed id; the rest only matter if the view has data there.
/// Chunks in `forced` (damaged in the archive) are re-read and re-sent
/// whatever they hold.
pub fn view_jobs(
    view: View,
    size: u64,
    cs: u64,
    has_data: impl Fn(u64) -> bool + Send,
    forced: std::collections::BTreeSet<u64>,
) -> impl Iterator<Item = Result<Job>> + Send {
    let mut view = view.peekable();
    let job_at = move |idx: u64, read: bool, prev: Prev| Job {
        addr: idx * cs,
        len: (size - idx * cs).min(cs) as u32,
        read,
        prev,
    };
    (0..size.div_ceil(cs)).filter_map(move |i| {
        let addr = i * cs;
        // Advance the previous view to this address.
        let mut prev = Prev::Absent;
        loop {
            match view.peek() {
                Some(Ok((_, e))) if e.addr < addr => {
                    view.next();
                }
                Some(Ok((_, e))) if e.addr == addr => {
                    prev = Prev::Entry(e.codec, e.hash);
                    break;
                }
                Some(Err(_)) => {
                    return Some(Err(view
                        .next()
                        .expect("peeked")
                        .expect_err("peeked an error")))
                }
                _ => break,
            }
        }
        if forced.contains(&addr) {
            return Some(Ok(job_at(i, true, Prev::Damaged)));
        }
        let has_data = has_data(i);
        let prev_zero = matches!(prev, Prev::Absent | Prev::Entry(Codec::Zero, _));
        (has_data || !prev_zero).then(|| Ok(job_at(i, has_data, prev)))
    })
}

/// Iterates the set bits of a map it owns (so the job iterator is 'static).
pub fn owned_iter(map: crate::chunkmap::ChunkMap) -> impl Iterator<Item = u64> + Send {
    let mut from = 0u64;
    std::iter::from_fn(move || {
        let i = map.next_set(from)?;
        from = i + 1;
        Some(i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_test() {
        let mut b = vec![0u8; 1000];
        assert!(is_zero(&b));
        for i in [0, 63, 64, 511, 999] {
            b[i] = 1;
            assert!(!is_zero(&b), "{i}");
            b[i] = 0;
        }
    }
}
