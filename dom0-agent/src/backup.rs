//! `sparsebak backup`: one session per volume.
//!
//! Order of events, and why: the receiver writes the session invisibly;
//! dom0 writes the session's manifest to a *pending* dir and syncs it; only
//! then is `Commit` sent. On the receiver's acknowledgement the pending dir
//! becomes the session and the new snapshot becomes the delta base. If the
//! acknowledgement is lost (stream cut, crash), the next run asks the
//! receiver whether the pending session exists and either finishes or drops
//! it, so dom0 and the archive never disagree about which sessions exist.

use crate::chunkmap::ChunkMap;
use crate::meta::{read_info, ArchiveMeta};
use crate::pipeline::{self, Job, Outcome, Prev, Settings};
use crate::progress::Progress;
use crate::source::{Plan, Source};
use crate::transport::Connection;
use crate::units::human;
use anyhow::{bail, Context, Result};
use protocol::chunk::{ChunkHeader, Codec};
use protocol::manifest::Entry;
use protocol::message::{Reply, Request, SessionInfo};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct Summary {
    pub volume: String,
    pub session: String,
    pub method: &'static str,
    pub volume_size: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backup {}: session {} ({}): volume {}, read {}, sent {}, {} chunks changed ({} zero), {:.2} s",
            self.volume,
            self.session,
            self.method,
            human(self.volume_size),
            human(self.bytes_read),
            human(self.bytes_sent),
            self.chunks + self.zero_chunks,
            self.zero_chunks,
            self.seconds
        )
    }
}

pub struct Backup<'a> {
    pub meta: &'a ArchiveMeta,
    pub local: &'a Source,
    pub conn: &'a mut Connection,
    pub workers: usize,
}

impl Backup<'_> {
    /// Settles a session left pending by an interrupted run.
    pub fn resolve_pending(&mut self, volume: &str) -> Result<()> {
        let pending = self.meta.pending(volume)?;
        if pending.is_empty() {
            return Ok(());
        }
        // Ask for every volume: one the receiver has never seen is simply
        // absent from the listing, no error code to interpret.
        let on_receiver: Vec<String> = crate::prune::receiver_sessions(self.conn, volume)?
            .into_iter()
            .map(|s| s.name)
            .collect();
        for s in pending {
            let complete = read_info(&self.meta.pending_dir(volume, &s)?).is_ok();
            if complete && on_receiver.contains(&s) {
                eprintln!(
                    "sparsebak: {volume}: session {s} was committed by the receiver; recording it"
                );
                self.meta.promote_pending(volume, &s)?;
                self.local.rotate(volume, &s)?;
            } else {
                self.meta.drop_pending(volume, &s)?;
                self.local.discard_new(volume);
            }
        }
        Ok(())
    }

    pub fn run(&mut self, volume: &str) -> Result<Summary> {
        let t0 = Instant::now();
        crate::prune::settle(self.meta, self.conn, volume)?;
        self.resolve_pending(volume)?;
        let cs = self.meta.params.chunk_size;
        let sessions = self.meta.sessions(volume)?;
        let prev = sessions.last().map(|s| s.name.clone());
        let snap = self.local.prepare(volume, prev.as_deref(), cs as u64)?;
        let res = self.send_session(volume, &sessions, prev, snap, t0);
        if res.is_err() {
            self.local.discard_new(volume);
        }
        res
    }

    fn send_session(
        &mut self,
        volume: &str,
        sessions: &[SessionInfo],
        prev: Option<String>,
        snap: crate::source::Snapshot,
        t0: Instant,
    ) -> Result<Summary> {
        let cs = self.meta.params.chunk_size as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let session =
            protocol::names::session_name(now.as_secs(), now.subsec_micros(), prev.as_deref());
        let size = snap.size;
        self.conn.call(&Request::BeginSession {
            volume: volume.to_string(),
            session: session.clone(),
            prev: prev.clone(),
            volume_size: size,
            time: now.as_secs(),
        })?;
        let mut pending = self.meta.begin_pending(volume, &session)?;
        let chunks = size.div_ceil(cs);
        let job_at = |idx: u64, read: bool, prev: Prev| Job {
            addr: idx * cs,
            len: (size - idx * cs).min(cs) as u32,
            read,
            prev,
        };
        let (jobs, total): (Box<dyn Iterator<Item = Result<Job>> + Send>, u64) = match snap.plan {
            Plan::Full { data } => {
                let n = data.count();
                (
                    Box::new(owned_iter(data).map(move |i| Ok(job_at(i, true, Prev::Absent)))),
                    n,
                )
            }
            Plan::Changed { changed } => {
                let n = changed.count();
                (
                    Box::new(owned_iter(changed).map(move |i| Ok(job_at(i, true, Prev::Unknown)))),
                    n,
                )
            }
            Plan::Compare { data } => {
                let view = self.meta.view(volume, sessions)?;
                let it = compare_jobs(view, size, cs, move |i| data.get(i));
                (Box::new(it), chunks)
            }
        };
        let mut progress = Progress::new(volume, total);
        let (mut n_data, mut n_zero, mut read, mut sent, mut done) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let settings = Settings {
            chunk_size: cs as u32,
            compression: self.meta.params.compression,
            workers: self.workers,
        };
        let conn = &mut *self.conn;
        let mut stream_err = None;
        let run = pipeline::run(&snap.file, jobs, &settings, |job, outcome, slot| {
            done += 1;
            if job.read {
                read += job.len as u64;
            }
            let (codec, hash) = match outcome {
                Outcome::Unchanged => return Ok(()),
                Outcome::Zero => (Codec::Zero, [0u8; 32]),
                Outcome::Data { codec, hash } => (codec, hash),
            };
            let data: &[u8] = if codec == Codec::Zero {
                &[]
            } else {
                slot.stored(codec)
            };
            let h = ChunkHeader {
                addr: job.addr,
                codec,
                raw_len: job.len,
                hash,
            };
            if let Err(e) = conn.wr.chunk(&h, data) {
                stream_err = Some(e);
                bail!("stream to the receiver failed");
            }
            pending.manifest.push(&Entry {
                addr: job.addr,
                codec,
                hash,
            })?;
            if codec == Codec::Zero {
                n_zero += 1;
            } else {
                n_data += 1;
                sent += data.len() as u64;
            }
            progress.update(done, read);
            Ok(())
        });
        progress.finish();
        // Close the snapshot: an LVM snapshot cannot be renamed or
        // deactivated while open.
        drop(snap.file);
        let fail = |this: &mut Self, e: anyhow::Error| -> Result<Summary> {
            let _ = this.meta.drop_pending(volume, &session);
            Err(e)
        };
        if let Some(e) = stream_err {
            let err = self.conn.read_error_after(e, "backup");
            return fail(self, err.context(format!("volume '{volume}'")));
        }
        if let Err(e) = run {
            // A local failure: tell the receiver to drop the session.
            let _ = self.conn.call(&Request::Abort);
            return fail(self, e.context(format!("volume '{volume}'")));
        }
        let info = SessionInfo {
            name: session.clone(),
            time: now.as_secs(),
            volume_size: size,
            chunks: n_data,
            zero_chunks: n_zero,
            stored_bytes: sent,
            prev,
        };
        if let Err(e) = pending.finish(&info) {
            let _ = self.conn.call(&Request::Abort);
            return fail(self, e);
        }
        let reply = match self.conn.call(&Request::Commit {
            chunks: n_data,
            zero_chunks: n_zero,
        }) {
            Ok(r) => r,
            // The pending session stays: the next run learns whether the
            // receiver committed it.
            Err(e) => {
                return Err(e.context(format!("volume '{volume}': commit of session {session}")))
            }
        };
        match reply {
            Reply::Committed(ci) if ci.name == session && ci.chunks == n_data && ci.zero_chunks == n_zero => {}
            other => bail!("volume '{volume}': receiver answered commit of {session} with an unexpected {} reply", other.name()),
        }
        self.meta.promote_pending(volume, &session)?;
        self.local
            .rotate(volume, &session)
            .context("rotating snapshots")?;
        Ok(Summary {
            volume: volume.to_string(),
            session,
            method: snap.method,
            volume_size: size,
            bytes_read: read,
            bytes_sent: sent,
            chunks: n_data,
            zero_chunks: n_zero,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// Jobs comparing every chunk of a volume of `size` with `view` (the
/// previous session): chunks that hold data (`has_data`) are read and
/// compared; the rest only matter if the view has data there.
pub fn compare_jobs(
    view: crate::meta::View,
    size: u64,
    cs: u64,
    has_data: impl Fn(u64) -> bool + Send,
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
        let has_data = has_data(i);
        let prev_zero = matches!(prev, Prev::Absent | Prev::Entry(Codec::Zero, _));
        (has_data || !prev_zero).then(|| Ok(job_at(i, has_data, prev)))
    })
}

/// Iterates the set bits of a map it owns (so the job iterator is 'static).
fn owned_iter(map: ChunkMap) -> impl Iterator<Item = u64> + Send {
    let mut from = 0u64;
    std::iter::from_fn(move || {
        let i = map.next_set(from)?;
        from = i + 1;
        Some(i)
    })
}
