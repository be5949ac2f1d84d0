//! `sparsebak prune`: merge old sessions into their successors, on both
//! sides, so that dom0's manifests and the archive's stay the same.
//!
//! Order of events for one session P (successor Q), and why: dom0 writes
//! its merged manifest beside Q (`manifest.new`) and a *prune intent*; then
//! the receiver prunes (journaled on its side); on its answer dom0 checks
//! the merged counts agree, replaces Q's manifest and info, removes P and
//! the intent. If the answer is lost, the next command that lists the
//! archive settles the intent: P still in the archive → dom0 drops its
//! prepared files; P gone → dom0 finishes with Q's info from the listing.

use crate::meta::{ArchiveMeta, PruneIntent, NEW_MANIFEST};
use crate::retention::{self, Policy};
use crate::transport::Connection;
use anyhow::{bail, Context, Result};
use protocol::chunk::Codec;
use protocol::manifest::ManifestWriter;
use protocol::message::{Reply, Request, SessionInfo};
use protocol::prune::{mask_range, merge_into};
use std::fs::File;
use std::io::{BufWriter, Write};

/// Which sessions to prune.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These sessions (one, or a range S1..=S2 by name).
    Names { from: String, to: String },
    /// Every session taken before this time (seconds since the epoch).
    Before(u64),
    /// Whatever the policy does not keep.
    Keep(Policy),
}

/// The sessions `sel` picks, oldest first. The newest is never picked; a
/// selection that names it explicitly is an error.
pub fn select(
    volume: &str,
    sessions: &[SessionInfo],
    sel: &Selection,
    now: u64,
    utc_offset: i64,
) -> Result<Vec<String>> {
    let Some(newest) = sessions.last() else {
        bail!("volume '{volume}' has no sessions");
    };
    let picked: Vec<String> = match sel {
        Selection::Names { from, to } => {
            let pos = |n: &str| {
                sessions
                    .iter()
                    .position(|s| s.name == n)
                    .with_context(|| format!("volume '{volume}' has no session {n}"))
            };
            let (a, b) = (pos(from)?, pos(to)?);
            if a > b {
                bail!("session range {from},{to} is backwards (older first)");
            }
            if b == sessions.len() - 1 {
                bail!(
                    "{} is the newest session of '{volume}' and is never pruned",
                    newest.name
                );
            }
            sessions[a..=b].iter().map(|s| s.name.clone()).collect()
        }
        Selection::Before(t) => sessions[..sessions.len() - 1]
            .iter()
            .filter(|s| s.time < *t)
            .map(|s| s.name.clone())
            .collect(),
        Selection::Keep(p) => {
            let times: Vec<u64> = sessions.iter().map(|s| s.time).collect();
            retention::select(&times, p, now, utc_offset)
                .into_iter()
                .zip(sessions)
                .filter(|(keep, _)| !keep)
                .map(|(_, s)| s.name.clone())
                .collect()
        }
    };
    Ok(picked)
}

/// The receiver's sessions of `volume` (empty if it has none).
pub fn receiver_sessions(conn: &mut Connection, volume: &str) -> Result<Vec<SessionInfo>> {
    match conn.call(&Request::List { volume: None })? {
        Reply::Listing(l) => Ok(l
            .into_iter()
            .filter(|v| v.name == volume)
            .flat_map(|v| v.sessions)
            .collect()),
        other => bail!("unexpected {} reply to list", other.name()),
    }
}

/// Settles a prune left in flight by an interrupted run (see module doc).
pub fn settle(meta: &ArchiveMeta, conn: &mut Connection, volume: &str) -> Result<()> {
    let Some(intent) = meta.prune_intent(volume)? else {
        return Ok(());
    };
    let remote = receiver_sessions(conn, volume)?;
    if remote.iter().any(|s| s.name == intent.pruned) {
        return meta.cancel_prune(volume, &intent);
    }
    let Some(q) = remote.iter().find(|s| s.name == intent.into) else {
        bail!(
            "volume '{volume}': an interrupted prune of {} into {} cannot be settled: the archive has neither (run arch-check)",
            intent.pruned,
            intent.into
        );
    };
    check_merged(volume, &intent, q)?;
    eprintln!(
        "sparsebak: {volume}: the receiver finished pruning {}; recording it",
        intent.pruned
    );
    meta.finish_prune(volume, &intent, q)
}

fn check_merged(volume: &str, intent: &PruneIntent, q: &SessionInfo) -> Result<()> {
    if q.name != intent.into || q.chunks != intent.chunks || q.zero_chunks != intent.zero_chunks {
        bail!(
            "volume '{volume}': the receiver's merge of {} into {} has {} data and {} zero chunks, dom0's has {} and {}: refusing to record it (run arch-check)",
            intent.pruned, intent.into, q.chunks, q.zero_chunks, intent.chunks, intent.zero_chunks
        );
    }
    Ok(())
}

/// Prunes one session (merging it into its successor) on both sides.
pub fn prune_one(
    meta: &ArchiveMeta,
    conn: &mut Connection,
    volume: &str,
    session: &str,
) -> Result<SessionInfo> {
    let sessions = meta.sessions(volume)?;
    let k = sessions
        .iter()
        .position(|s| s.name == session)
        .with_context(|| format!("volume '{volume}' has no session {session}"))?;
    if k + 1 == sessions.len() {
        bail!("{session} is the newest session of '{volume}' and is never pruned");
    }
    let (p, q) = (&sessions[k], &sessions[k + 1]);
    let max_before = sessions[..k]
        .iter()
        .map(|s| s.volume_size)
        .max()
        .unwrap_or(0);
    let cs = meta.params.chunk_size as u64;
    let mask = mask_range(p.volume_size, q.volume_size, max_before, cs);
    let new_m = meta.session_dir(volume, &q.name)?.join(NEW_MANIFEST);
    let f =
        File::create(&new_m).with_context(|| format!("unable to create '{}'", new_m.display()))?;
    let mut w = ManifestWriter::new(BufWriter::with_capacity(1 << 16, f), meta.params.chunk_size)?;
    let (mut chunks, mut zeros) = (0u64, 0u64);
    let merged = merge_into(
        meta.manifest(volume, &p.name)?,
        meta.manifest(volume, &q.name)?,
        q.volume_size,
        mask,
        cs,
    );
    for item in merged {
        let (e, _) = item?;
        w.push(&e)?;
        if e.codec == Codec::Zero {
            zeros += 1;
        } else {
            chunks += 1;
        }
    }
    let mut bw = w.finish()?;
    bw.flush()?;
    bw.get_ref().sync_all()?;
    drop(bw);
    let intent = PruneIntent {
        pruned: p.name.clone(),
        into: q.name.clone(),
        chunks,
        zero_chunks: zeros,
    };
    meta.write_prune_intent(volume, &intent)?;
    let reply = conn.call(&Request::Prune {
        volume: volume.to_string(),
        session: p.name.clone(),
    });
    match reply {
        Ok(Reply::Pruned(info)) if info.prev == p.prev => {
            check_merged(volume, &intent, &info)?;
            meta.finish_prune(volume, &intent, &info)?;
            Ok(info)
        }
        Ok(other) => bail!(
            "volume '{volume}': unexpected {} reply to prune of {}",
            other.name(),
            p.name
        ),
        Err(e) => {
            // The receiver may have journaled the prune before failing: ask
            // it what exists now, and settle accordingly.
            let _ = settle(meta, conn, volume);
            Err(e.context(format!("volume '{volume}': prune of {}", p.name)))
        }
    }
}
