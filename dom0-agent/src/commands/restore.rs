//! `restore` and `verify`: the receiver streams the chunks of a session;
//! every chunk is checked against dom0's own manifests before a byte of it
//! is written. The stream must hold exactly the non-zero chunks of dom0's
//! view of the session, in ascending order: a missing, extra, reordered or
//! altered chunk fails with an error naming volume, session and address.
//! A file target is built under a temporary name and renamed into place
//! only when everything verified, so a failed restore changes nothing.

use crate::client::{Client, RestoreFrame};
use crate::context::Ctx;
use crate::meta::ArchiveMeta;
use crate::progress::Progress;
use crate::report;
use crate::source::Source;
use crate::target::{Out, Target};
use crate::units::{count, human};
use anyhow::{bail, Context, Result};
use protocol::chunk::{Codec, Hash};
use protocol::message::Operation;
use sealed::envelope::{OpenError, Opener, Place};
use sealed::keys::Scope;
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;
use std::time::Instant;
use sysio::aligned::AlignedBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error("volume '{volume}' session {session}: chunk at {addr:#x} failed verification: its keyed id does not match dom0's manifest (a stale, swapped or altered chunk)")]
    HashMismatch {
        volume: String,
        session: String,
        addr: u64,
    },
    #[error(
        "volume '{volume}' session {session}: chunk at {addr:#x} failed verification: {detail}"
    )]
    BadChunk {
        volume: String,
        session: String,
        addr: u64,
        detail: String,
    },
    #[error("volume '{volume}' session {session}: expected chunk at {expected:#x}, the receiver sent {got:#x} (wrong, reordered or duplicated chunk)")]
    WrongChunk {
        volume: String,
        session: String,
        expected: u64,
        got: u64,
    },
    #[error("volume '{volume}' session {session}: chunk at {addr:#x} is missing from the receiver's stream ({})", match next {
        Some(n) => format!("it sent the chunk at {n:#x} in its place: the archive lacks this one or cannot read it"),
        None => "the stream ended: the archive lacks it or cannot read it".to_string(),
    })]
    MissingChunk {
        volume: String,
        session: String,
        addr: u64,
        /// The address the receiver sent instead (None: the stream ended).
        next: Option<u64>,
    },
    #[error("volume '{volume}' session {session}: the receiver sent chunks that session does not have (first at {addr:#x})")]
    ExtraChunk {
        volume: String,
        session: String,
        addr: u64,
    },
}

#[derive(serde::Serialize)]
pub struct Summary {
    pub volume: String,
    pub session: String,
    pub volume_size: u64,
    /// Chunks verified (and written).
    pub chunks: u64,
    pub bytes: u64,
    /// With --salvage: chunks that failed, written as zeros.
    pub bad_chunks: Vec<BadChunk>,
    pub seconds: f64,
}

/// A chunk a salvage restore could not verify.
#[derive(serde::Serialize, Clone)]
pub struct BadChunk {
    pub addr: u64,
    /// The session the chunk belongs to.
    pub session: String,
    pub error: String,
}

impl VerifyError {
    /// The session and address of the chunk that failed (for
    /// `ExtraChunk`, none of the session's: nothing to re-send).
    pub fn chunk(&self) -> Option<(String, u64)> {
        match self {
            VerifyError::HashMismatch { session, addr, .. }
            | VerifyError::BadChunk { session, addr, .. }
            | VerifyError::MissingChunk { session, addr, .. } => Some((session.clone(), *addr)),
            VerifyError::WrongChunk {
                session, expected, ..
            } => Some((session.clone(), *expected)),
            VerifyError::ExtraChunk { .. } => None,
        }
    }
}

/// Reads a session back and checks every chunk (see the module doc).
/// With `salvage`, a chunk that fails is recorded, left as zeros, and the
/// rest goes on; the target is still put in place.
pub fn restore(
    meta: &ArchiveMeta,
    client: &mut Client,
    volume: &str,
    session: Option<&str>,
    target: Target,
    salvage: bool,
) -> Result<Summary> {
    let t0 = Instant::now();
    let sessions = meta.sessions(volume)?;
    if sessions.is_empty() {
        bail!(
            "volume '{volume}' has no sessions in this archive (dom0 metadata '{}')",
            meta.dir.display()
        );
    }
    let upto = match session {
        None => sessions.len() - 1,
        Some(s) => sessions
            .iter()
            .position(|x| x.name == s)
            .with_context(|| format!("volume '{volume}' has no session {s}"))?,
    };
    let chosen = &sessions[..=upto];
    let info = &chosen[upto];
    let size = info.volume_size;
    let cs = meta.params.chunk_size as u64;
    let mut out = Out::open(&target, size)?;
    let view = meta.view(volume, chosen)?;
    let dedup_scope = meta
        .scope(volume)
        .with_context(|| format!("dom0 has no archive id for volume '{volume}'"))?;
    client.restore(volume, &info.name)?;
    let mut progress = Progress::new(volume, size.div_ceil(cs));
    let (mut chunks, mut bytes) = (0u64, 0u64);
    // Frames are read and their order checked here; decompression, hashing
    // and positioned writes run on all cores. The target is only renamed
    // into place once everything checked, so a late failure changes nothing.
    // Two more workers than cores: a worker waiting for its direct write
    // leaves its core to another.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) + 2;
    let names: Vec<&str> = chosen.iter().map(|s| s.name.as_str()).collect();
    let target = out.as_ref().map(|o| (o, o.direct()));
    let target = target.as_ref();
    let (work_tx, work_rx) = sync_channel::<Work>(workers * 2);
    let bad: Mutex<Vec<BadChunk>> = Mutex::new(Vec::new());
    // With --salvage the stream may end early or skip chunks: a frame read
    // ahead of its place in the view waits here; `ended` holds the count
    // of an early end.
    let mut ended: Option<u64> = None;
    let mut ahead: Option<(protocol::chunk::ChunkHeader, Vec<u8>)> = None;
    let mut received = 0u64;
    let good = std::sync::atomic::AtomicU64::new(0);
    let good_bytes = std::sync::atomic::AtomicU64::new(0);
    let work_rx = Mutex::new(work_rx);
    let streamed: Result<()> = std::thread::scope(|scope| {
        let (pool_tx, pool_rx) = channel::<Vec<u8>>();
        let (err_tx, err_rx) = channel::<anyhow::Error>();
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (work_rx, pool_tx, err_tx, names, bad, good, good_bytes) = (
                    &work_rx,
                    pool_tx.clone(),
                    err_tx.clone(),
                    &names,
                    &bad,
                    &good,
                    &good_bytes,
                );
                let mut opener = Opener::new(meta.keys.clone());
                let verifier = std::thread::Builder::new().name("sbk-open".into());
                verifier
                    .spawn_scoped(scope, move || {
                        let mut plain = AlignedBuf::new(cs as usize);
                        loop {
                            let Ok(w) = work_rx.lock().expect("work lock").recv() else {
                                return;
                            };
                            let r = check_chunk(
                                &w,
                                &mut opener,
                                dedup_scope,
                                plain.whole_mut(),
                                volume,
                                names[w.session],
                            );
                            // Every chunk reaches the target, written or
                            // skipped: a pipe takes them in stream order.
                            let r = match (target, r) {
                                (Some((o, d)), Ok(p)) => o.put(d, w.seq, p, w.addr),
                                (Some((o, _)), Err(e)) => {
                                    let _ = o.skip(w.seq, w.addr);
                                    Err(e)
                                }
                                (None, r) => r.map(|_| ()),
                            };
                            if r.is_ok() {
                                good.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                good_bytes.fetch_add(
                                    w.raw_len as u64,
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                            }
                            if let Err(e) = r {
                                match (salvage, e.downcast_ref::<VerifyError>()) {
                                    // Not written: the target holds zeros there.
                                    (true, Some(ve)) => {
                                        bad.lock().expect("bad lock").push(BadChunk {
                                            addr: w.addr,
                                            session: names[w.session].to_string(),
                                            error: ve.to_string(),
                                        })
                                    }
                                    _ => {
                                        let _ = err_tx.send(e);
                                    }
                                }
                            }
                            let _ = pool_tx.send(w.data);
                        }
                    })
                    .expect("spawning a verifier thread")
            })
            .collect();
        drop(err_tx);
        let read = (|| -> Result<()> {
            for item in view {
                let (idx, e) = item?;
                if e.codec == Codec::Zero {
                    continue;
                }
                if let Ok(err) = err_rx.try_recv() {
                    return Err(err);
                }
                let from = &chosen[idx].name;
                let raw_len = (size - e.addr).min(cs) as usize;
                // In salvage mode a failure of this chunk is noted and the
                // next one is looked at.
                let note = |err: VerifyError| -> Result<()> {
                    if !salvage {
                        return Err(err.into());
                    }
                    bad.lock().expect("bad lock").push(BadChunk {
                        addr: e.addr,
                        session: from.clone(),
                        error: err.to_string(),
                    });
                    Ok(())
                };
                let (h, buf) = match ahead.take() {
                    Some(f) => f,
                    None if ended.is_some() => (
                        // Past an early end: every chunk left is missing.
                        protocol::chunk::ChunkHeader {
                            addr: u64::MAX,
                            codec: Codec::Zero,
                            raw_len: 0,
                            hash: [0; 32],
                        },
                        Vec::new(),
                    ),
                    None => {
                        let frame = client.restore_frame().with_context(|| {
                            format!(
                                "volume '{volume}': reading the restore stream at chunk {:#x}",
                                e.addr
                            )
                        })?;
                        match frame {
                            RestoreFrame::Chunk(h, data) => {
                                received += 1;
                                let mut buf = pool_rx.try_recv().unwrap_or_default();
                                buf.clear();
                                buf.extend_from_slice(data);
                                (h, buf)
                            }
                            RestoreFrame::End(n) => {
                                ended = Some(n);
                                note(VerifyError::MissingChunk {
                                    volume: volume.into(),
                                    session: from.clone(),
                                    addr: e.addr,
                                    next: None,
                                })?;
                                continue;
                            }
                        }
                    }
                };
                if h.addr != e.addr {
                    let err = if h.addr > e.addr {
                        // The receiver left this one out (it could not
                        // read it); the frame is for a later chunk.
                        VerifyError::MissingChunk {
                            volume: volume.into(),
                            session: from.clone(),
                            addr: e.addr,
                            next: (h.addr != u64::MAX).then_some(h.addr),
                        }
                    } else {
                        VerifyError::WrongChunk {
                            volume: volume.into(),
                            session: from.clone(),
                            expected: e.addr,
                            got: h.addr,
                        }
                    };
                    if h.addr > e.addr && ended.is_none() {
                        ahead = Some((h, buf));
                    } else if salvage && h.addr < e.addr {
                        // Out of order, or a duplicate: a hostile stream.
                        return Err(err.into());
                    }
                    note(err)?;
                    continue;
                }
                if h.codec != Codec::Sealed || h.raw_len as usize != raw_len {
                    note(VerifyError::BadChunk {
                        volume: volume.into(),
                        session: from.clone(),
                        addr: e.addr,
                        detail: format!(
                            "the receiver sent a {} record of {} bytes for a chunk of {raw_len}",
                            h.codec, h.raw_len
                        ),
                    })?;
                    continue;
                }
                let w = Work {
                    seq: chunks,
                    addr: e.addr,
                    raw_len,
                    hash: e.hash,
                    session: idx,
                    data: buf,
                };
                if work_tx.send(w).is_err() {
                    bail!("restore workers stopped");
                }
                chunks += 1;
                bytes += raw_len as u64;
                progress.update(e.addr / cs, bytes);
            }
            Ok(())
        })();
        drop(work_tx);
        for h in handles {
            h.join().expect("restore worker panicked");
        }
        // A verification failure concerns an earlier chunk than a stream
        // failure noticed after it: report it first.
        match err_rx.try_recv() {
            Ok(err) => Err(err),
            Err(_) => read,
        }
    });
    streamed?;
    progress.finish();
    let extra = |addr| -> anyhow::Error {
        VerifyError::ExtraChunk {
            volume: volume.into(),
            session: info.name.clone(),
            addr,
        }
        .into()
    };
    let n = match (ended, ahead) {
        (_, Some((h, _))) => return Err(extra(h.addr)),
        (Some(n), None) => n,
        (None, None) => match client
            .restore_frame()
            .with_context(|| format!("volume '{volume}': reading the end of the restore stream"))?
        {
            RestoreFrame::End(n) => n,
            RestoreFrame::Chunk(h, _) => return Err(extra(h.addr)),
        },
    };
    if n != received {
        bail!("volume '{volume}': the receiver claims {n} chunks, it sent {received}");
    }
    let mut bad = bad.into_inner().expect("bad lock");
    bad.sort_by_key(|b| b.addr);
    if let Some(o) = out.take() {
        o.finish()?;
    }

    Ok(Summary {
        volume: volume.into(),
        session: info.name.clone(),
        volume_size: size,
        chunks: good.into_inner(),
        bytes: good_bytes.into_inner(),
        bad_chunks: bad,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// One received chunk, to be checked (and written) by a worker.
struct Work {
    /// Its number in the stream (the chunks sent to workers, from 0).
    seq: u64,
    addr: u64,
    raw_len: usize,
    hash: Hash,
    /// Index of the session the chunk belongs to, for error messages.
    session: usize,
    data: Vec<u8>,
}

/// Opens a chunk (see `sealed::envelope`); returns its plain bytes if
/// they match dom0's manifest.
fn check_chunk<'a>(
    w: &Work,
    opener: &mut Opener,
    scope: Scope,
    plain: &'a mut [u8],
    volume: &str,
    session: &str,
) -> Result<&'a [u8]> {
    let at = Place {
        scope,
        addr: w.addr,
        raw_len: w.raw_len as u32,
    };
    Ok(open_chunk(
        opener, &at, &w.hash, &w.data, plain, volume, session,
    )?)
}

/// Opens the envelope `data` of the chunk at `at`, whose keyed id dom0's
/// manifest says is `hash`: its plain bytes, or the error that names
/// volume, session and address. Every chunk dom0 reads back passes here.
pub fn open_chunk<'a>(
    opener: &mut Opener,
    at: &Place,
    hash: &Hash,
    data: &[u8],
    plain: &'a mut [u8],
    volume: &str,
    session: &str,
) -> Result<&'a [u8], VerifyError> {
    opener.open(data, at, hash, plain).map_err(|err| match err {
        OpenError::Id => VerifyError::HashMismatch {
            volume: volume.into(),
            session: session.into(),
            addr: at.addr,
        },
        detail => VerifyError::BadChunk {
            volume: volume.into(),
            session: session.into(),
            addr: at.addr,
            detail: detail.to_string(),
        },
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: session {}: volume {}, {} ({}) verified",
            self.volume,
            self.session,
            human(self.volume_size),
            count(self.chunks, "chunk"),
            human(self.bytes),
        )?;
        if !self.bad_chunks.is_empty() {
            write!(
                f,
                ", {} FAILED (written as zeros)",
                count(self.bad_chunks.len() as u64, "chunk")
            )?;
        }
        write!(f, ", {:.2} s", self.seconds)
    }
}

/// Records what a restore or verify found damaged, so the next backup of
/// the volume re-sends it; says so.
pub fn record(meta: &ArchiveMeta, volume: &str, chunks: &[(String, u64)]) {
    match meta.record_damaged(volume, chunks) {
        Ok(0) => {}
        Ok(n) => report::warn(format!(
            "recorded {} of '{volume}' as damaged in the archive: the next backup of '{volume}' re-sends {}",
            count(n as u64, "chunk"),
            if n == 1 { "it" } else { "them" }
        )),
        Err(e) => report::warn(format!(
            "unable to record the damaged chunks of '{volume}': {e:#}"
        )),
    }
}

/// Restore or verify: one restore connection, every chunk checked. A
/// chunk that fails is recorded as damaged (see `backup`).
pub fn read_back(
    ctx: &Ctx,
    volume: &str,
    session: Option<&str>,
    target: Target,
    salvage: bool,
) -> Result<Summary> {
    let (dest, meta) = ctx.archive()?;
    meta.check_not_deleting(volume)?;
    let mut client = ctx.connect(&dest, &meta, Operation::Restore)?;
    let s = match restore(&meta, &mut client, volume, session, target, salvage) {
        Ok(s) => s,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<VerifyError>().and_then(VerifyError::chunk) {
                record(&meta, volume, &[c]);
            }
            return Err(e);
        }
    };
    client.finish()?;
    let bad: Vec<(String, u64)> = s
        .bad_chunks
        .iter()
        .map(|b| (b.session.clone(), b.addr))
        .collect();
    record(&meta, volume, &bad);
    Ok(s)
}

/// The summary line and JSON fields of a restore or verify, and its exit
/// status: 1 when chunks failed (--salvage), each listed.
pub fn report_summary(verb: &str, s: &Summary, to: Option<&str>) -> i32 {
    report::line(format!(
        "{verb} {s}{}",
        to.map_or(String::new(), |t| format!(" to {t}"))
    ));
    for b in &s.bad_chunks {
        report::line(format!(
            "  FAILED chunk {:#x} (session {}): {}",
            b.addr, b.session, b.error
        ));
    }
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(s) {
        for (k, v) in m {
            report::set(&k, v);
        }
    }
    if let Some(t) = to {
        report::set("target", t);
    }
    if s.bad_chunks.is_empty() {
        0
    } else {
        1
    }
}

/// `sparsebak restore`: into a file (`--save-to`) or a thin LV.
pub fn run(
    ctx: &Ctx,
    volume: &str,
    session: Option<&str>,
    save_to: Option<PathBuf>,
    to_lv: Option<String>,
    force: bool,
    salvage: bool,
) -> Result<i32> {
    let (_, meta) = ctx.archive()?;
    let source = match (&save_to, &ctx.local) {
        (None, Some(_)) => Some(ctx.source(&meta)?),
        _ => None,
    };
    let (target, label) = match (save_to, &source) {
        (Some(path), _) => (
            Target::File {
                path: path.clone(),
                force,
                // Never more open than the image was; private if unknown.
                mode: meta.volume_mode(volume)?.unwrap_or(0o600),
            },
            format!("'{}'", path.display()),
        ),
        (None, Some(Source::Lvm(pool))) => {
            let name = to_lv.unwrap_or_else(|| volume.to_string());
            let label = format!("LV {}/{name}", pool.vg());
            (Target::Lv { pool, name, force }, label)
        }
        _ => bail!("give --save-to PATH (or a thin pool as --local to restore into an LV)"),
    };
    let s = read_back(ctx, volume, session, target, salvage)?;
    Ok(report_summary("restored", &s, Some(&label)))
}
