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
pub fn settle_pending(
    meta: &ArchiveMeta,
    local: &Source,
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
            local.rotate(volume, &s)?;
            crate::catalog::publish(meta, client)?;
        } else {
            meta.drop_pending(volume, &s)?;
            local.discard_new(volume);
        }
    }
    Ok(())
}

/// Everything in flight for `volume`, settled: prunes, then sessions.
pub fn settle(meta: &ArchiveMeta, local: &Source, client: &mut Client, volume: &str) -> Result<()> {
    settle_prune(meta, client, volume)?;
    settle_pending(meta, local, client, volume)
}
