//! `sparsebak prune`: merge old sessions into their successors, on both
//! sides, so that dom0's manifests and the archive's stay the same.
//!
//! Order of events for one session P (successor Q), and why: dom0 writes
//! its merged manifest beside Q (`manifest.new`) and a *prune intent*; then
//! the receiver prunes (journaled on its side); on its answer dom0 checks
//! the merged counts agree, replaces Q's manifest and info, removes P and
//! the intent. If the answer is lost, the next command that changes the
//! volume settles the intent (`crate::reconcile`).

use crate::client::{at_most, Client};
use crate::context::Ctx;
use crate::meta::{ArchiveMeta, PruneIntent, NEW_MANIFEST};
use crate::reconcile::{check_merged, settle_prune};
use crate::report;
use crate::retention::{self, Policy};
use crate::timefmt::{local_offset, parse_local};
use crate::units::count;
use anyhow::{bail, Context, Result};
use protocol::chunk::Codec;
use protocol::manifest::ManifestWriter;
use protocol::message::{Operation, SessionInfo};
use protocol::prune::{mask_range, merge_into};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::time::{SystemTime, UNIX_EPOCH};

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

/// Prunes one session (merging it into its successor) on both sides.
pub fn prune_one(
    meta: &ArchiveMeta,
    client: &mut Client,
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
        manifest_mac: Some(sealed::keys::hex(&crate::meta::file_mac(
            &new_m, &meta.keys,
        )?)),
    };
    meta.write_prune_intent(volume, &intent)?;
    // The root names the prune before the receiver is asked: a dom0 lost
    // from here on can still tell, from the archive alone, whether it
    // happened (the merged manifest's MAC) and import either state.
    crate::catalog::publish(meta, client)?;
    match client.prune(volume, &p.name) {
        Ok(info) if info.prev == p.prev => {
            check_merged(volume, &intent, &info)?;
            meta.finish_prune(volume, &intent, &info)?;
            Ok(info)
        }
        Ok(info) => bail!(
            "volume '{volume}': the receiver's merge of {} into {} names {} as its predecessor, dom0 expects {}",
            p.name,
            info.name,
            info.prev.as_deref().unwrap_or("none"),
            p.prev.as_deref().unwrap_or("none")
        ),
        Err(e) => {
            // The receiver may have journaled the prune before failing: ask
            // it what exists now, and settle accordingly; a prune it
            // refused (Busy, say) leaves no pending change in the root.
            let _ = settle_prune(meta, client, volume);
            if matches!(meta.prune_intent(volume), Ok(None)) && meta.dirty() {
                let _ = crate::catalog::publish(meta, client);
            }
            Err(e.context(format!("volume '{volume}': prune of {}", p.name)))
        }
    }
}

/// Prunes what `sel` picks, oldest first; returns how many.
pub fn prune_volume(
    meta: &ArchiveMeta,
    client: &mut Client,
    volume: &str,
    sel: &Selection,
    dry_run: bool,
) -> Result<usize> {
    settle_prune(meta, client, volume)?;
    let ours = meta.sessions(volume)?;
    let theirs = client.sessions(volume, at_most(ours.len()))?;
    let names = |v: &[SessionInfo]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    if names(&ours) != names(&theirs) {
        bail!("volume '{volume}': dom0 and the archive list different sessions; run arch-check before pruning");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let picked = select(volume, &ours, sel, now, local_offset(now))?;
    let t0 = std::time::Instant::now();
    for (i, s) in picked.iter().enumerate() {
        if dry_run {
            report::line(format!("would prune {volume} {s}"));
            report::push(
                "pruned",
                serde_json::json!({"volume": volume, "session": s, "dry_run": true}),
            );
            continue;
        }
        // One new root for the whole run, also when a prune fails midway.
        let info = match prune_one(meta, client, volume, s) {
            Ok(i) => i,
            Err(e) => {
                if i > 0 {
                    let _ = crate::catalog::publish(meta, client);
                }
                return Err(e);
            }
        };
        report::line(format!(
            "pruned {volume} {s} ({}/{}): merged into {} (now {} data, {} zero chunks)",
            i + 1,
            picked.len(),
            info.name,
            info.chunks,
            info.zero_chunks
        ));
        report::push(
            "pruned",
            serde_json::json!({"volume": volume, "session": s, "merged_into": info.name,
                "chunks": info.chunks, "zero_chunks": info.zero_chunks}),
        );
    }
    if !dry_run && !picked.is_empty() {
        crate::catalog::publish(meta, client)?;
        report::line(format!(
            "prune {volume}: {} pruned, {} remain, {:.2} s",
            count(picked.len() as u64, "session"),
            ours.len() - picked.len(),
            t0.elapsed().as_secs_f64()
        ));
    }
    Ok(picked.len())
}

/// `sparsebak prune`: the CLI's selection (exactly one of the three).
pub fn run(
    ctx: &Ctx,
    volume: &str,
    session: Option<String>,
    all_before: Option<String>,
    keep: Option<String>,
    dry_run: bool,
) -> Result<i32> {
    let sel = match (session, all_before, keep) {
        (Some(s), _, _) => {
            let (from, to) = s.split_once(',').unwrap_or((&s, &s));
            Selection::Names {
                from: from.to_string(),
                to: to.to_string(),
            }
        }
        (_, Some(d), _) => Selection::Before(parse_local(&d)?),
        (_, _, Some(k)) => Selection::Keep(k.parse()?),
        _ => bail!("give --session, --all-before or --keep"),
    };
    let (dest, meta) = ctx.archive()?;
    let mut client = ctx.connect(&dest, &meta, Operation::Admin)?;
    let n = prune_volume(&meta, &mut client, volume, &sel, dry_run)?;
    client.finish()?;
    if n == 0 {
        report::line(format!("prune {volume}: nothing to prune"));
    }
    report::set("volume", volume);
    report::set("dry_run", dry_run);
    report::set("sessions_pruned", if dry_run { 0 } else { n });
    report::set("remaining", meta.session_names(volume)?.len());
    Ok(0)
}
