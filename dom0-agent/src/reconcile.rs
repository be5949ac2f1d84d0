//! Settling what an interrupted run left between dom0 and the archive, in
//! one place. Two things can be in flight when a run dies or the stream is
//! cut after the receiver acted but before dom0 heard its answer:
//!
//! - a *pending session* (backup): dom0 wrote the session's manifest to a
//!   pending dir and sent `Commit`. If the receiver has the session, dom0
//!   promotes the pending dir and rotates the volume's snapshots; if not,
//!   it drops both. Either way dom0 and the archive agree again.
//! - a *prune intent* (prune): dom0 prepared the merged manifest and wrote
//!   the intent, then asked the receiver to prune. If the pruned session is
//!   still in the archive, dom0 drops what it prepared; if it is gone, dom0
//!   finishes with the successor's info from the listing (after checking
//!   the receiver's merged counts match its own).
//!
//! Every command that changes a volume settles it first, so dom0 never acts
//! on a view of the archive that is out of date; what settling records is
//! published in a new root at once.

use crate::client::{at_most, Client};
use crate::meta::{read_info, ArchiveMeta, PruneIntent};
use crate::source::Source;
use anyhow::{bail, Result};
use protocol::message::SessionInfo;

/// Settles a prune left in flight by an interrupted run.
pub fn settle_prune(meta: &ArchiveMeta, client: &mut Client, volume: &str) -> Result<()> {
    let Some(intent) = meta.prune_intent(volume)? else {
        return Ok(());
    };
    let remote = client.sessions(volume, at_most(meta.sessions(volume)?.len() + 1))?;
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
    crate::report::warn(format!(
        "{volume}: the receiver finished pruning {}; recording it",
        intent.pruned
    ));
    meta.finish_prune(volume, &intent, q)?;
    crate::catalog::publish(meta, client).map(|_| ())
}

/// The receiver's merge must have the counts dom0's has.
pub fn check_merged(volume: &str, intent: &PruneIntent, q: &SessionInfo) -> Result<()> {
    if q.name != intent.into || q.chunks != intent.chunks || q.zero_chunks != intent.zero_chunks {
        bail!(
            "volume '{volume}': the receiver's merge of {} into {} has {} data and {} zero chunks, dom0's has {} and {}: refusing to record it (run arch-check)",
            intent.pruned, intent.into, q.chunks, q.zero_chunks, intent.chunks, intent.zero_chunks
        );
    }
    Ok(())
}

/// Settles a session left pending by an interrupted backup.
/// Without `local` (an admin command) no snapshot is rotated: the next
/// backup of the volume, finding no base for its newest session, compares
/// every chunk by hash instead of reading a delta.
pub fn settle_pending(
    meta: &ArchiveMeta,
    local: Option<&Source>,
    client: &mut Client,
    volume: &str,
) -> Result<()> {
    let pending = meta.pending(volume)?;
    if pending.is_empty() {
        return Ok(());
    }
    let known = meta.sessions(volume)?.len() + pending.len();
    let on_receiver: Vec<String> = client
        .sessions(volume, at_most(known))?
        .into_iter()
        .map(|s| s.name)
        .collect();
    for s in pending {
        let complete = read_info(&meta.pending_dir(volume, &s)?).is_ok();
        if complete && on_receiver.contains(&s) {
            crate::report::warn(format!(
                "{volume}: session {s} was committed by the receiver; recording it"
            ));
            meta.promote_pending(volume, &s)?;
            if let Some(local) = local {
                local.rotate(volume, &s)?;
            }
            crate::catalog::publish(meta, client)?;
        } else {
            meta.drop_pending(volume, &s)?;
            if let Some(local) = local {
                local.discard_new(volume);
            }
        }
    }
    Ok(())
}

/// Everything in flight for `volume`, settled: prunes, then sessions.
pub fn settle(meta: &ArchiveMeta, local: &Source, client: &mut Client, volume: &str) -> Result<()> {
    meta.check_not_deleting(volume)?;
    settle_prune(meta, client, volume)?;
    settle_pending(meta, Some(local), client, volume)
}

/// Finishes the deletion of `volume` dom0 asked for: in the archive (a
/// volume already gone is a deletion done), then in dom0's records, then
/// a root without it.
pub fn finish_delete(meta: &ArchiveMeta, client: &mut Client, volume: &str) -> Result<()> {
    client.delete_volume(volume)?;
    let scope = meta.scope(volume).ok();
    meta.delete_volume(volume)?;
    // The dedup index of its scope, without the deleted volume's places
    // (another volume of the group may hold the same chunks).
    if let Some(scope) = scope {
        crate::dedup::rebuild_scope(meta, &scope)?;
    }
    crate::catalog::publish(meta, client).map(|_| ())
}

/// At an admin connection: every prune and deletion an interrupted run
/// left, settled (a backup settles its own volumes as it goes).
pub fn settle_all(meta: &ArchiveMeta, client: &mut Client) -> Result<()> {
    meta.remove_deleted_remains()?;
    for v in meta.volumes()? {
        settle_prune(meta, client, &v)?;
        settle_pending(meta, None, client, &v)?;
        if meta.delete_intent(&v)? {
            crate::report::warn(format!(
                "volume '{v}': finishing a deletion an interrupted run left"
            ));
            finish_delete(meta, client, &v)?;
        }
    }
    Ok(())
}

/// Sessions the archive has after dom0's newest of `volume`, which dom0
/// cannot authenticate (its root never named them: committed while dom0
/// was lost before writing it, or after a gap `arch-import` could not
/// cross), dropped newest first so that backups go on. Returns whether
/// anything was dropped; drops nothing where the archive and dom0
/// disagree otherwise (a session of dom0's missing there, an unknown one
/// between known ones) or where a root newer than dom0 had seen names it
/// (dom0's records are behind: `arch-import` brings them up to date).
pub fn drop_unconfirmed(meta: &ArchiveMeta, client: &mut Client, volume: &str) -> Result<bool> {
    let ours = meta.session_names(volume)?;
    let theirs = client.sessions(volume, at_most(ours.len() + 1))?;
    let newest = ours.last();
    // `ours` is sorted (a directory listing, sorted): one search each, not
    // a scan, with tens of thousands of sessions.
    let (known, extra): (Vec<&SessionInfo>, Vec<&SessionInfo>) = theirs
        .iter()
        .partition(|t| ours.binary_search(&t.name).is_ok());
    if known.len() != ours.len()
        || extra.is_empty()
        || extra.iter().any(|t| newest.is_some_and(|n| &t.name < n))
    {
        return Ok(false);
    }
    if let Some(r) = &client.newer_root {
        if let Some(t) = extra.iter().find(|t| {
            r.volume(volume)
                .is_some_and(|v| v.sessions.iter().any(|s| s.name == t.name))
        }) {
            bail!(
                "volume '{volume}': the archive's root names session {}, which dom0's records lack: they are older than the archive; run `sparsebak arch-import` to bring them up to date",
                t.name
            );
        }
    }
    let names: Vec<String> = extra.iter().rev().map(|t| t.name.clone()).collect();
    for n in names {
        crate::report::warn(format!(
            "volume '{volume}': session {n} in the archive was never confirmed by dom0 (its record was lost with dom0, or it follows a session that could not be imported) and cannot be authenticated: dropped it; this backup stores what it held again"
        ));
        client.drop_session(volume, &n)?;
    }
    Ok(true)
}
