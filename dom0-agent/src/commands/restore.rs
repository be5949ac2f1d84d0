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
use crate::source::Source;
use crate::target::{Out, Target};
use crate::units::human;
use anyhow::{bail, Context, Result};
use protocol::chunk::{Codec, Hash};
use protocol::envelope::{OpenError, Opener, Place};
use protocol::keys::VolumeId;
use protocol::message::Operation;
use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;
use std::time::Instant;
use sysio::aligned::AlignedBuf;
use sysio::direct::Direct;
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
    #[error("volume '{volume}' session {session}: chunk at {addr:#x} is missing from the receiver's stream")]
    MissingChunk {
        volume: String,
        session: String,
        addr: u64,
    },
    #[error("volume '{volume}' session {session}: the receiver sent chunks that session does not have (first at {addr:#x})")]
    ExtraChunk {
        volume: String,
        session: String,
        addr: u64,
    },
}

pub struct Summary {
    pub volume: String,
    pub session: String,
    pub volume_size: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub seconds: f64,
}

pub fn restore(
    meta: &ArchiveMeta,
    client: &mut Client,
    volume: &str,
    session: Option<&str>,
    target: Target,
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
    let vid = meta
        .volume_id(volume)?
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
    let target = out.as_ref().map(|o| (o, Direct::reopen(o.file(), true)));
    let target = target.as_ref();
    let (work_tx, work_rx) = sync_channel::<Work>(workers * 2);
    let work_rx = Mutex::new(work_rx);
    let streamed: Result<()> = std::thread::scope(|scope| {
        let (pool_tx, pool_rx) = channel::<Vec<u8>>();
        let (err_tx, err_rx) = channel::<anyhow::Error>();
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (work_rx, pool_tx, err_tx, names) =
                    (&work_rx, pool_tx.clone(), err_tx.clone(), &names);
                let mut opener = Opener::new(meta.keys.clone());
                scope.spawn(move || {
                    let mut plain = AlignedBuf::new(cs as usize);
                    loop {
                        let Ok(w) = work_rx.lock().expect("work lock").recv() else {
                            return;
                        };
                        let r = check_chunk(
                            &w,
                            &mut opener,
                            vid,
                            plain.whole_mut(),
                            volume,
                            names[w.session],
                        )
                        .and_then(|p| match target {
                            Some((o, d)) => o.write_at(d, p, w.addr),
                            None => Ok(()),
                        });
                        if let Err(e) = r {
                            let _ = err_tx.send(e);
                        }
                        let _ = pool_tx.send(w.data);
                    }
                })
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
                let frame = client.restore_frame().with_context(|| {
                    format!(
                        "volume '{volume}': reading the restore stream at chunk {:#x}",
                        e.addr
                    )
                })?;
                let (h, data) = match frame {
                    RestoreFrame::Chunk(h, data) => (h, data),
                    RestoreFrame::End(_) => {
                        return Err(VerifyError::MissingChunk {
                            volume: volume.into(),
                            session: from.clone(),
                            addr: e.addr,
                        }
                        .into())
                    }
                };
                if h.addr != e.addr {
                    return Err(VerifyError::WrongChunk {
                        volume: volume.into(),
                        session: from.clone(),
                        expected: e.addr,
                        got: h.addr,
                    }
                    .into());
                }
                let mut buf = pool_rx.try_recv().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(data);
                if h.codec != Codec::Sealed || h.raw_len as usize != raw_len {
                    return Err(VerifyError::BadChunk {
                        volume: volume.into(),
                        session: from.clone(),
                        addr: e.addr,
                        detail: format!(
                            "the receiver sent a {:?} record of {} bytes for a chunk of {raw_len}",
                            h.codec, h.raw_len
                        ),
                    }
                    .into());
                }
                let w = Work {
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
    match client
        .restore_frame()
        .with_context(|| format!("volume '{volume}': reading the end of the restore stream"))?
    {
        RestoreFrame::End(n) if n == chunks => {}
        RestoreFrame::End(n) => {
            bail!("volume '{volume}': the receiver claims {n} chunks, {chunks} were expected")
        }
        RestoreFrame::Chunk(h, _) => {
            return Err(VerifyError::ExtraChunk {
                volume: volume.into(),
                session: info.name.clone(),
                addr: h.addr,
            }
            .into())
        }
    }
    if let Some(o) = out.take() {
        o.finish()?;
    }
    Ok(Summary {
        volume: volume.into(),
        session: info.name.clone(),
        volume_size: size,
        chunks,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// One received chunk, to be checked (and written) by a worker.
struct Work {
    addr: u64,
    raw_len: usize,
    hash: Hash,
    /// Index of the session the chunk belongs to, for error messages.
    session: usize,
    data: Vec<u8>,
}

/// Opens a chunk (see `protocol::envelope`); returns its plain bytes if
/// they match dom0's manifest.
fn check_chunk<'a>(
    w: &Work,
    opener: &mut Opener,
    vid: VolumeId,
    plain: &'a mut [u8],
    volume: &str,
    session: &str,
) -> Result<&'a [u8]> {
    let at = Place {
        volume: vid,
        addr: w.addr,
        raw_len: w.raw_len as u32,
    };
    opener.open(&w.data, &at, &w.hash, plain).map_err(|err| {
        match err {
            OpenError::Id => VerifyError::HashMismatch {
                volume: volume.into(),
                session: session.into(),
                addr: w.addr,
            },
            detail => VerifyError::BadChunk {
                volume: volume.into(),
                session: session.into(),
                addr: w.addr,
                detail: detail.to_string(),
            },
        }
        .into()
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: session {}: volume {}, {} chunks ({}) verified, {:.2} s",
            self.volume,
            self.session,
            human(self.volume_size),
            self.chunks,
            human(self.bytes),
            self.seconds
        )
    }
}

/// Restore or verify: one restore connection, every chunk checked.
pub fn read_back(
    ctx: &Ctx,
    volume: &str,
    session: Option<&str>,
    target: Target,
) -> Result<Summary> {
    let (dest, meta) = ctx.archive()?;
    let mut client = ctx.connect(&dest, &meta, Operation::Restore)?;
    let s = restore(&meta, &mut client, volume, session, target)?;
    client.finish()?;
    Ok(s)
}

/// `sparsebak restore`: into a file (`--save-to`) or a thin LV.
pub fn run(
    ctx: &Ctx,
    volume: &str,
    session: Option<&str>,
    save_to: Option<PathBuf>,
    to_lv: Option<String>,
    force: bool,
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
            },
            format!("'{}'", path.display()),
        ),
        (None, Some(Source::Lvm(pool))) => {
            let name = to_lv.unwrap_or_else(|| volume.to_string());
            let label = format!("LV {}/{name}", pool.vg);
            (Target::Lv { pool, name, force }, label)
        }
        _ => bail!("give --save-to PATH (or a thin pool as --local to restore into an LV)"),
    };
    let s = read_back(ctx, volume, session, target)?;
    println!("restored {s} to {label}");
    Ok(0)
}
