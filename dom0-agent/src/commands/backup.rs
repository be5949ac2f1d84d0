//! `sparsebak backup`: one session per volume, one connection and one
//! root write per run.
//!
//! Order of events, and why: the receiver writes the session invisibly;
//! dom0 writes the session's manifest to a *pending* dir and syncs it; only
//! then is `Commit` sent. On the receiver's acknowledgement the pending dir
//! becomes the session and the new snapshot becomes the delta base. If the
//! acknowledgement is lost (stream cut, crash), the next run asks the
//! receiver whether the pending session exists and either finishes or drops
//! it (`crate::reconcile`), so dom0 and the archive never disagree about
//! which sessions exist.
//!
//! Healing: chunks recorded as damaged in the archive (`meta::damaged`)
//! join the delta as chunks sent whatever they hold; the record is cleared
//! only after the commit, so a cut backup re-sends them next time.

use super::prune::{prune_volume, Selection};
use crate::chunkmap::ChunkMap;
use crate::client::{Client, Commit};
use crate::context::Ctx;
use crate::dedup::index::Loc;
use crate::dedup::Dedup;
use crate::meta::ArchiveMeta;
use crate::pipeline::{self, owned_iter, view_jobs, Job, Outcome, Prev, Settings};
use crate::progress::Progress;
use crate::reconcile;
use crate::report;
use crate::retention::Policy;
use crate::source::{Plan, Source, Want};
use crate::units::human;
use anyhow::{bail, Context, Result};
use protocol::chunk::{ChunkHeader, Codec};
use protocol::manifest::Entry;
use protocol::message::ErrorCode;
use protocol::message::{ChunkRef, Operation, ResumedChunk, SessionInfo};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(serde::Serialize)]
pub struct Summary {
    pub volume: String,
    pub session: String,
    pub method: &'static str,
    pub volume_size: u64,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    /// Of `chunks`, those stored by reference to a chunk the dedup scope
    /// already held (not sent), and their plaintext bytes.
    pub ref_chunks: u64,
    pub ref_bytes: u64,
    /// Of `chunks`, those a cut backup of the volume had already stored
    /// (kept, not sent again).
    pub resumed_chunks: u64,
    /// Chunks found damaged in the archive and re-sent from the volume.
    pub healed: u64,
    pub seconds: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "backup {}: session {} ({}): volume {}, read {}, sent {}, {} chunks changed ({} zero, {} already stored: by reference), {:.2} s",
            self.volume,
            self.session,
            self.method,
            human(self.volume_size),
            human(self.bytes_read),
            human(self.bytes_sent),
            self.chunks + self.zero_chunks,
            self.zero_chunks,
            self.ref_chunks,
            self.seconds
        )?;
        if self.resumed_chunks > 0 {
            write!(
                f,
                "; resumed a cut backup: {} it had stored kept, not sent again",
                crate::units::count(self.resumed_chunks, "chunk")
            )?;
        }
        if self.healed > 0 {
            write!(
                f,
                "; re-sent {} damaged in the archive: this session is whole again",
                crate::units::count(self.healed, "chunk")
            )?;
        }
        Ok(())
    }
}

struct Backup<'a> {
    pub meta: &'a ArchiveMeta,
    pub local: &'a Source,
    pub client: &'a mut Client,
    pub workers: usize,
    /// Re-read the whole volume rather than the source's delta.
    pub resend_all: bool,
    /// When the root was last written in this run.
    pub published: Instant,
    pub groups: &'a [crate::dedup::GroupConfig],
}

/// How often a long run rewrites the root between its volumes.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl Backup<'_> {
    /// Sends one frozen volume as session `session` after `prev`.
    fn send_session(
        &mut self,
        volume: &str,
        prev: Option<String>,
        session: String,
        mut snap: crate::source::Snapshot,
        t0: Instant,
    ) -> Result<Summary> {
        let cs = self.meta.params.chunk_size as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if self.resend_all && prev.is_some() {
            snap.method = "re-read in full (--resend-all): hash compare";
        }
        let (size, mode) = (snap.size, snap.mode);
        let vid = match self.meta.volume_id(volume)? {
            Some(id) => {
                let cfg = crate::dedup::configured_group(self.groups, volume);
                let now = self.meta.volume_group(volume)?;
                if cfg.is_some() && cfg != now.as_deref() {
                    report::warn(format!(
                        "volume '{volume}' stays in {}: a volume's dedup group is fixed at its first backup, and the config's '{}' applies to new volumes only",
                        now.map_or("its own dedup scope".to_string(), |g| format!("dedup group '{g}'")),
                        cfg.unwrap_or_default()
                    ));
                }
                id
            }
            None => {
                // A first backup: the dedup group is fixed now (the
                // volume's chunk ids are derived in its scope).
                if self.meta.volume_group(volume)?.is_none() {
                    let g = crate::dedup::configured_group(self.groups, volume);
                    self.meta.set_volume_group(volume, g)?;
                }
                self.meta.ensure_volume_id(volume)?
            }
        };
        let seq = protocol::names::parse_session_name(&session)
            .with_context(|| format!("bad session name {session}"))?;
        let dedup = Arc::new(Dedup::open(self.meta, volume, Some((vid, seq, snap.size)))?);
        let scope = dedup.scope;
        // What a backup of this volume cut before its commit stored.
        let resume = crate::resume::fetch(self.meta, self.client, volume, size)?;
        // The receiver is told no time: sessions are an order to it, their
        // times are in dom0's records and the sealed root.
        match self
            .client
            .begin_session(volume, &session, prev.as_deref(), size, 0)
        {
            // The archive's newest is not dom0's: sessions dom0 cannot
            // authenticate are dropped, and the session begun again.
            Err(e)
                if crate::transport::is_remote(&e, ErrorCode::SessionOrder)
                    && crate::reconcile::drop_unconfirmed(self.meta, self.client, volume)? =>
            {
                self.client
                    .begin_session(volume, &session, prev.as_deref(), size, 0)?
            }
            r => r?,
        }
        let mut pending = self.meta.begin_pending(volume, &session)?;
        let _interrupt = crate::interrupt::note(format!(
            "backup of '{volume}': session {session} did not finish; the receiver drops it unless it was committed, and the next run settles dom0's records either way"
        ));
        let chunks = size.div_ceil(cs);
        let job_at = |idx: u64, read: bool, prev: Prev| Job {
            addr: idx * cs,
            len: (size - idx * cs).min(cs) as u32,
            read,
            prev,
        };
        // Chunks the archive lost or holds damaged: re-sent whatever the
        // delta says, so the new session is whole again.
        let damaged = self.meta.damaged(volume)?;
        let mut forced = damaged.clone();
        forced.retain(|a| *a < size);
        let healing = forced.len() as u64;
        let (jobs, total): (Box<dyn Iterator<Item = Result<Job>> + Send>, u64) =
            match (snap.plan, &prev) {
                (Plan::Full { data }, None) => {
                    let n = data.count();
                    (
                        Box::new(owned_iter(data).map(move |i| Ok(job_at(i, true, Prev::Absent)))),
                        n,
                    )
                }
                // Every chunk that changed (or may have) is compared with
                // the newest view's entry by keyed id: a chunk whose bytes
                // are the same (a copied image, a rewrite of the same data)
                // is not stored again. The entries are looked up newest
                // session first, for the changed chunks only.
                (Plan::Changed { mut changed }, Some(_)) => {
                    let prev = self.meta.newest_entries(volume, &changed)?;
                    for a in &forced {
                        changed.set_chunks(a / cs, a / cs);
                    }
                    let n = changed.count();
                    let it = owned_iter(changed).map(move |i| {
                        let p = if forced.contains(&(i * cs)) {
                            Prev::Damaged
                        } else {
                            prev.get(&i).map_or(Prev::Unknown, |(p, _)| *p)
                        };
                        Ok(job_at(i, true, p))
                    });
                    (Box::new(it), n)
                }
                (Plan::Full { data } | Plan::Compare { data }, _) => {
                    let view = self.meta.view(volume, &self.meta.sessions(volume)?)?;
                    let it = view_jobs(view, size, cs, move |i| data.get(i), forced);
                    (Box::new(it), chunks)
                }
                (Plan::Changed { .. }, None) => bail!(
                    "volume '{volume}': the source gave a delta but there is no previous session"
                ),
            };
        report::detail(format!(
            "{volume}: {}, {} to look at{}",
            snap.method,
            crate::units::count(total, "chunk"),
            if healing > 0 {
                format!(
                    ", {} damaged in the archive to re-send",
                    crate::units::count(healing, "chunk")
                )
            } else {
                String::new()
            }
        ));
        let mut progress = Progress::new(volume, total);
        let (mut n_data, mut n_zero, mut read, mut sent, mut done) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let (mut n_ref, mut ref_bytes, mut n_resumed) = (0u64, 0u64, 0u64);
        // The addresses sent without data (references, resumed chunks): a
        // refusal must name one; and of those, the resumed ones.
        let mut refs = ChunkMap::new(chunks);
        let mut resumed = ChunkMap::new(chunks);
        let settings = Settings {
            chunk_size: cs as u32,
            compression: self.meta.params.compression,
            workers: self.workers,
            keys: self.meta.keys.clone(),
            scope,
            dedup: Some(dedup.clone()),
            resume,
        };
        let client = &mut *self.client;
        let mut stream_err = None;
        let run = pipeline::run(&snap.file, jobs, &settings, |job, outcome, slot| {
            done += 1;
            if job.read {
                read += job.len as u64;
            }
            // Sent as a chunk record (its data, none for zero) or as a
            // reference; the manifest entry is the same either way.
            let (codec, hash, sent_now) = match outcome {
                Outcome::Unchanged => return Ok(()),
                Outcome::Zero | Outcome::Data { .. } => {
                    let (codec, hash, data): (_, _, &[u8]) = match outcome {
                        Outcome::Data { hash } => (Codec::Sealed, hash, slot.stored()),
                        _ => (Codec::Zero, [0u8; 32], &[]),
                    };
                    let h = ChunkHeader {
                        addr: job.addr,
                        codec,
                        raw_len: job.len,
                        hash,
                    };
                    if let Err(e) = client.send_chunk(&h, data) {
                        stream_err = Some(e);
                        bail!("stream to the receiver failed");
                    }
                    (codec, hash, data.len() as u64)
                }
                Outcome::Ref { hash, from } => {
                    let r = ChunkRef {
                        addr: job.addr,
                        raw_len: job.len,
                        hash,
                        volume: from.volume.to_hex(),
                        session: from.session,
                        from: from.addr,
                    };
                    if let Err(e) = client.send_ref(r) {
                        stream_err = Some(e);
                        bail!("stream to the receiver failed");
                    }
                    refs.set_chunks(job.addr / cs, job.addr / cs);
                    n_ref += 1;
                    ref_bytes += job.len as u64;
                    (Codec::Sealed, hash, 0)
                }
                Outcome::Resumed { hash } => {
                    let r = ResumedChunk {
                        addr: job.addr,
                        raw_len: job.len,
                        hash,
                    };
                    if let Err(e) = client.send_resume(r) {
                        stream_err = Some(e);
                        bail!("stream to the receiver failed");
                    }
                    refs.set_chunks(job.addr / cs, job.addr / cs);
                    resumed.set_chunks(job.addr / cs, job.addr / cs);
                    n_resumed += 1;
                    (Codec::Sealed, hash, 0)
                }
            };
            pending.manifest.push(&Entry {
                addr: job.addr,
                codec,
                hash,
            })?;
            if codec == Codec::Zero {
                n_zero += 1;
            } else {
                n_data += 1;
                sent += sent_now;
                // Its newest place (sent or referenced): the last a prune
                // removes.
                let at = Loc {
                    volume: vid,
                    session: seq,
                    addr: job.addr,
                };
                dedup.record(&hash, at)?;
            }
            progress.update(done, read);
            Ok(())
        });
        progress.finish();
        let fail = |this: &mut Self, e: anyhow::Error| -> Result<Summary> {
            let _ = this.meta.drop_pending(volume, &session);
            Err(e)
        };
        if let Some(e) = stream_err {
            let err = self.client.lost(e, "backup");
            return fail(self, err.context(format!("volume '{volume}'")));
        }
        if let Err(e) = run {
            // A local failure: tell the receiver to drop the session.
            let _ = self.client.abort();
            return fail(self, e.context(format!("volume '{volume}'")));
        }
        let mut info = SessionInfo {
            name: session.clone(),
            time: now.as_secs(),
            volume_size: size,
            chunks: n_data,
            zero_chunks: n_zero,
            stored_bytes: sent,
            ref_chunks: n_ref,
            ref_bytes,
            prev,
        };
        if let Err(e) = pending.finish(&info, &self.meta.keys) {
            let _ = self.client.abort();
            return fail(self, e);
        }
        // References the receiver refused are sent as data, from the
        // snapshot (still open), then the commit is asked again.
        let mut answered = ChunkMap::new(chunks);
        // What the resumed chunks hold stored, which dom0 did not seal this
        // time: the receiver's count (a figure for `list`, nothing relies
        // on it), bounded by what so many chunks can hold.
        let kept_bytes;
        loop {
            let addrs = match self.client.commit(&session, n_data, n_zero) {
                Ok(Commit::Done(theirs)) => {
                    let most = n_resumed * protocol::envelope::max_stored(cs as usize) as u64;
                    kept_bytes = theirs.stored_bytes.saturating_sub(sent).min(most);
                    break;
                }
                Ok(Commit::Refused(addrs)) => addrs,
                // The pending session stays: the next run learns whether
                // the receiver committed it.
                Err(e) => {
                    return Err(e.context(format!("volume '{volume}': commit of session {session}")))
                }
            };
            let resent = resend_refused(
                self.client,
                self.meta,
                &snap.file,
                (volume, &session, vid, seq),
                &dedup,
                &addrs,
                (&refs, &mut answered),
                size,
            )
            .with_context(|| format!("volume '{volume}': session {session}"));
            match resent {
                Ok(bytes) => {
                    let (kept, linked): (Vec<u64>, Vec<u64>) =
                        addrs.iter().partition(|&&a| resumed.get(a / cs));
                    if !linked.is_empty() {
                        report::warn(format!(
                            "volume '{volume}': the receiver could not confirm {} to chunks the archive should hold (pruned since, or lost: `arch-check` tells); sent their data instead",
                            crate::units::count(linked.len() as u64, "reference")
                        ));
                    }
                    if !kept.is_empty() {
                        report::warn(format!(
                            "volume '{volume}': the receiver no longer held {} of the cut backup it offered to resume (a cut leaves the last ones short); sent their data instead",
                            crate::units::count(kept.len() as u64, "chunk")
                        ));
                    }
                    n_ref -= linked.len() as u64;
                    ref_bytes -= linked.iter().map(|a| (size - a).min(cs)).sum::<u64>();
                    n_resumed -= kept.len() as u64;
                    sent += bytes;
                }
                Err(e) => {
                    let _ = self.client.abort();
                    return fail(self, e);
                }
            }
        }
        // Close the snapshot: an LVM snapshot cannot be renamed or
        // deactivated while open.
        drop(snap.file);
        if (info.ref_chunks, info.stored_bytes) != (n_ref, sent + kept_bytes) {
            info.ref_chunks = n_ref;
            info.ref_bytes = ref_bytes;
            info.stored_bytes = sent + kept_bytes;
            self.meta.write_pending_info(volume, &session, &info)?;
        }
        self.meta.promote_pending(volume, &session)?;
        dedup.flush()?;
        crate::resume::forget(self.meta, volume);
        if let Some(m) = mode {
            self.meta.set_volume_mode(volume, m)?;
        }
        // Every recorded address was re-sent (or is past the volume's end).
        self.meta.clear_damaged(volume, &damaged)?;
        self.local
            .rotate(volume, &session)
            .context("rotating snapshots")?;
        // One root for the whole run (written at its end); a long run also
        // writes one now and then, so that a dom0 lost mid-run leaves an
        // archive whose root knows most of what it holds.
        if self.published.elapsed() >= PUBLISH_EVERY {
            crate::catalog::publish(self.meta, self.client).with_context(|| {
                format!("volume '{volume}': session {session} is committed, but")
            })?;
            self.published = Instant::now();
        }
        Ok(Summary {
            volume: volume.to_string(),
            session,
            method: snap.method,
            volume_size: size,
            bytes_read: read,
            bytes_sent: sent,
            chunks: n_data,
            zero_chunks: n_zero,
            ref_chunks: n_ref,
            ref_bytes,
            resumed_chunks: n_resumed,
            healed: healing,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

/// `sparsebak backup`: the named volumes, else the config's, else the
/// configured set; one connection for all of them, then the optional
/// autoprune on an admin connection. With `resend_all`, the receiver first
/// checks each volume's chunks (what it finds missing or damaged is
/// recorded, and re-sent), and each volume is re-read whole.
pub fn run(ctx: &Ctx, volumes: Vec<String>, autoprune: bool, resend_all: bool) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    let policy = match (autoprune, &ctx.cfg.keep) {
        (false, _) => None,
        (true, Some(k)) => Some(k.parse::<Policy>().context("`keep` in the config")?),
        (true, None) => bail!(
            "--autoprune needs a `keep` policy in the config (e.g. keep = \"daily=7,weekly=4\")"
        ),
    };
    let local = ctx.source(&meta)?;
    let volumes = if !volumes.is_empty() {
        volumes
    } else if !ctx.cfg.volumes.is_empty() {
        ctx.cfg.volumes.clone()
    } else {
        meta.rec.volumes.clone()
    };
    if volumes.is_empty() {
        bail!("no volumes named and none configured (`sparsebak add VOLUME`, or `volumes` in the config)");
    }
    if resend_all {
        let mut admin = ctx.connect(&dest, &meta, Operation::Admin)?;
        for v in &volumes {
            if meta.volume_id(v).ok().flatten().is_none() {
                continue; // never backed up: the backup is full anyway
            }
            report::detail(format!(
                "--resend-all: the receiver checks the chunks of '{v}'"
            ));
            let rep = super::check::check(&meta, &mut admin, Some(v))?;
            for (vol, n) in super::check::record_damage(&meta, &rep)? {
                report::line(format!(
                    "'{vol}': {} missing or damaged in the archive, to be re-sent",
                    crate::units::count(n as u64, "chunk")
                ));
            }
        }
        admin.finish()?;
    }
    let mut client = ctx.connect(&dest, &meta, Operation::Backup)?;
    let how = How {
        workers: ctx.workers(),
        resend_all,
        source_label: ctx.local_label(),
        groups: ctx.cfg.dedup_group.clone(),
    };
    let sent = back_up(&meta, &local, &mut client, &volumes, &how)?;
    let mut failed = sent.failed;
    if sent.stopped {
        // The stream may be unusable: stop here.
        return Ok(1);
    }
    let done: Vec<String> = sent.done.into_iter().map(|s| s.volume).collect();
    // The settings of the qubes whose volumes the archive holds (Qubes
    // dom0 only), once their volumes are committed.
    if !done.is_empty() {
        if let Err(e) = super::qubes::capture(ctx, &meta) {
            report::error(format!("recording the Qubes settings: {e:#}"));
            failed += 1;
        }
    }
    // The run's one root write (unless a long run just wrote it).
    if meta.dirty() {
        crate::catalog::publish(&meta, &mut client)
            .context("the run's sessions are committed, but")?;
    }
    client.finish()?;
    if let Some(p) = policy {
        let mut admin = ctx.connect(&dest, &meta, Operation::Admin)?;
        for v in &done {
            let sel = Selection::Keep(p.clone());
            if let Err(e) = prune_volume(&meta, &mut admin, v, &sel, false) {
                report::error(format!("autoprune of '{v}': {e:#}"));
                failed += 1;
            }
        }
        admin.finish()?;
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// How a run backs up its volumes.
pub struct How {
    pub workers: usize,
    /// Re-read each volume whole rather than the source's delta.
    pub resend_all: bool,
    /// Where the volumes come from, for errors.
    pub source_label: String,
    /// The config's dedup groups, for volumes backed up the first time.
    pub groups: Vec<crate::dedup::GroupConfig>,
}

/// What a run did.
pub struct Sent {
    pub failed: usize,
    pub done: Vec<Summary>,
    /// The run stopped early: the stream may be unusable.
    pub stopped: bool,
}

/// Settles and freezes `volumes`, sends each as a new session, and lets
/// the source finish (old snapshots go, on every path). The root is the
/// caller's to write.
pub fn back_up(
    meta: &ArchiveMeta,
    local: &Source,
    client: &mut Client,
    volumes: &[String],
    how: &How,
) -> Result<Sent> {
    let sent = send_all(meta, local, client, volumes, how);
    // Once every plan is done with the pool.
    local.finish();
    sent
}

fn send_all(
    meta: &ArchiveMeta,
    local: &Source,
    client: &mut Client,
    volumes: &[String],
    how: &How,
) -> Result<Sent> {
    let mut failed = 0;
    let fail = |v: &str, msg: String| {
        report::error(&msg);
        report::push(
            "volumes",
            serde_json::json!({"volume": v, "ok": false, "error": msg}),
        );
    };
    let stop = |failed: usize, done: Vec<Summary>| Sent {
        failed: failed + 1,
        done,
        stopped: true,
    };
    let t0 = Instant::now();
    let cs = meta.params.chunk_size as u64;
    let mut todo = Vec::new();
    let mut wants = Vec::new();
    for v in volumes {
        if let Err(e) = protocol::names::validate_volume_name(v) {
            fail(v, e.to_string());
            failed += 1;
            continue;
        }
        if !local.exists(v) {
            fail(v, format!("volume '{v}' not found in {}", how.source_label));
            failed += 1;
            continue;
        }
        // Whatever an interrupted run left in flight, settled first.
        if let Err(e) = reconcile::settle(meta, local, client, v) {
            fail(v, format!("{:#}", e.context(format!("volume '{v}'"))));
            return Ok(stop(failed, Vec::new()));
        }
        // Only the newest name: reading every session's record would make
        // a backup's cost grow with the number of sessions.
        let prev = meta.session_names(v)?.pop();
        wants.push(Want {
            volume: v.clone(),
            // --resend-all: no delta base, so the whole volume is read and
            // compared by keyed id with the view.
            base: if how.resend_all { None } else { prev.clone() },
            session: protocol::names::session_name(prev.as_deref()),
        });
        todo.push((v.clone(), prev));
    }
    let sessions: Vec<String> = wants.iter().map(|w| w.session.clone()).collect();
    let plans = local.freeze(wants, cs);
    let mut b = Backup {
        meta,
        local,
        client,
        groups: &how.groups,
        workers: how.workers,
        resend_all: how.resend_all,
        published: Instant::now(),
    };
    let mut done = Vec::new();
    for (((v, prev), session), snap) in todo.into_iter().zip(sessions).zip(plans) {
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                // Nothing was sent: the stream is fine, the next volume goes on.
                local.discard_new(&v);
                fail(&v, format!("{:#}", e.context(format!("volume '{v}'"))));
                failed += 1;
                continue;
            }
        };
        // The first volume's time includes freezing them all.
        let t = if done.is_empty() && failed == 0 {
            t0
        } else {
            Instant::now()
        };
        match b.send_session(&v, prev, session, snap, t) {
            Ok(s) => {
                report::line(&s);
                let mut j = serde_json::to_value(&s)?;
                j["ok"] = true.into();
                report::push("volumes", j);
                done.push(s);
            }
            Err(e) => {
                local.discard_new(&v);
                fail(&v, format!("{e:#}"));
                return Ok(stop(failed, done));
            }
        }
    }
    Ok(Sent {
        failed,
        done,
        stopped: false,
    })
}

/// Sends the data of references the receiver refused: each address must
/// be one dom0 sent as a reference and not yet answered; the chunk is
/// read again from the snapshot, and must still have the id the manifest
/// recorded (a source that changed under the backup is an error, never a
/// session that disagrees with its manifest); it is indexed where it now
/// is. Returns the bytes sent.
#[allow(clippy::too_many_arguments)]
fn resend_refused(
    client: &mut Client,
    meta: &ArchiveMeta,
    file: &std::fs::File,
    (volume, session, vid, seq): (&str, &str, sealed::keys::VolumeId, u64),
    dedup: &Dedup,
    addrs: &[u64],
    (refs, answered): (&ChunkMap, &mut ChunkMap),
    size: u64,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let cs = meta.params.chunk_size as u64;
    let level = match meta.params.compression {
        protocol::message::Compression::Zstd { level } => Some(level),
        protocol::message::Compression::None => None,
    };
    let mut sealer = sealed::envelope::Sealer::new(level, meta.keys.clone())?;
    let mut plain = vec![0u8; cs as usize];
    let mut out = Vec::with_capacity(sealed::envelope::sealed_bound(cs as usize));
    let manifest = crate::meta::ManifestFile::open(
        &meta.pending_dir(volume, session)?.join("manifest"),
        meta.params.chunk_size,
    )?;
    let scope = &dedup.scope;
    let mut bytes = 0;
    for &addr in addrs {
        let i = addr / cs;
        if !addr.is_multiple_of(cs) || addr >= size || !refs.get(i) || answered.get(i) {
            bail!("the receiver refused a reference at {addr:#x}, which dom0 did not send or was answered already");
        }
        answered.set_chunks(i, i);
        let len = (size - addr).min(cs) as usize;
        file.read_exact_at(&mut plain[..len], addr)
            .with_context(|| format!("unable to read chunk at {addr:#x}"))?;
        let want = match manifest.entry_at(addr)? {
            Some(e) if e.codec == Codec::Sealed => e.hash,
            _ => bail!("the receiver refused a reference at {addr:#x}, where dom0 sent none"),
        };
        if sealer.id(scope, &plain[..len]) != want {
            bail!("chunk at {addr:#x} changed while it was backed up: the source is not frozen");
        }
        let at = sealed::envelope::Place {
            scope: *scope,
            addr,
            raw_len: len as u32,
        };
        sealer.seal_as(&plain[..len], &at, &want, crate::random::bytes()?, &mut out)?;
        let h = ChunkHeader {
            addr,
            codec: Codec::Sealed,
            raw_len: len as u32,
            hash: want,
        };
        if let Err(e) = client.send_chunk(&h, &out) {
            return Err(client.lost(e, "backup"));
        }
        bytes += out.len() as u64;
        let at = Loc {
            volume: vid,
            session: seq,
            addr,
        };
        dedup.record(&want, at)?;
    }
    Ok(bytes)
}
