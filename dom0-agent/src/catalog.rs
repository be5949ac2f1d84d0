//! dom0's side of the archive's root (`sealed::root`): built from dom0's
//! records, sealed and stored in the archive after every change dom0
//! makes there, and read back (and authenticated) at every connection.
//!
//! Order of events, and why: a change (commit, prune, delete, rename) is
//! made and recorded in dom0 first; then the new root (generation + 1) is
//! written; dom0 records the generation only once the receiver said Ok. A
//! run cut between the two leaves a root one change behind dom0's records,
//! which the next connection finds (dom0's records marked dirty) and
//! rewrites. A root *older* than the generation dom0 recorded is a
//! rollback of the archive: refused, unless the user says they rolled it
//! back on purpose (`--accept-rollback`).
//!
//! Every attempt to write a root consumes a generation (recorded before
//! the root is sent), and dom0 keeps the hash of the newest root it wrote
//! or accepted: a root of that generation with other bytes is a second
//! history the backup qube could choose between, and is refused.

use crate::client::Client;
use crate::meta::{ArchiveMeta, RootDigest};
use anyhow::{bail, Context, Result};
use protocol::message::Blob;
use sealed::keys::Keys;
use sealed::root::{Pending, Root, RootSession, RootVolume};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The root that describes dom0's records of `meta` (generation unset).
pub fn build(meta: &ArchiveMeta) -> Result<Root> {
    let mut volumes = Vec::new();
    for v in meta.volumes()? {
        let Some(id) = meta.volume_id(&v)? else {
            continue;
        };
        let mut sessions = Vec::new();
        for s in meta.sessions(&v)? {
            sessions.push(RootSession {
                manifest_mac: meta.manifest_mac(&v, &s.name)?,
                name: s.name,
                time: s.time,
                volume_size: s.volume_size,
                chunks: s.chunks,
                zero_chunks: s.zero_chunks,
                stored_bytes: s.stored_bytes,
                ref_chunks: s.ref_chunks,
                ref_bytes: s.ref_bytes,
            });
        }
        volumes.push(RootVolume {
            mode: meta.volume_mode(&v)?.unwrap_or(0),
            group: meta.volume_group(&v)?,
            name: v,
            id: id.0,
            sessions,
        });
    }
    Ok(Root {
        pending: pending(meta, &volumes)?,
        generation: 0,
        written: now(),
        params: meta.params,
        encrypt: meta.rec.encrypt,
        configured: meta.rec.volumes.clone(),
        volumes,
        qubes: meta.qubes()?,
        key_hash: meta.wrapped_key()?.map(|k| *blake3::hash(&k).as_bytes()),
        legacy_clear: meta.rec.legacy_clear && !meta.rec.encrypt,
        pad_sizes: meta.rec.pad_sizes,
    })
}

/// The changes in flight in dom0's records, as the root names them: a
/// prune whose intent is written and whose pruned session dom0 still has,
/// a deletion dom0 asked for.
fn pending(meta: &ArchiveMeta, volumes: &[RootVolume]) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    for v in volumes {
        if meta.delete_intent(&v.name)? {
            out.push(Pending::Delete {
                volume: v.name.clone(),
            });
            continue;
        }
        let Some(i) = meta.prune_intent(&v.name)? else {
            continue;
        };
        let consecutive = v
            .sessions
            .windows(2)
            .any(|w| w[0].name == i.pruned && w[1].name == i.into);
        let mac = i.manifest_mac.as_deref().and_then(sealed::keys::parse_hex);
        if let (true, Some(manifest_mac)) = (consecutive, mac) {
            out.push(Pending::Prune {
                volume: v.name.clone(),
                pruned: i.pruned,
                into: i.into,
                manifest_mac,
                chunks: i.chunks,
                zero_chunks: i.zero_chunks,
            });
        }
    }
    Ok(out)
}

/// Seals `root` with a fresh nonce.
pub fn seal(root: &Root, keys: &Keys) -> Result<Vec<u8>> {
    Ok(root.seal(keys, crate::random::bytes()?))
}

/// Writes a new root describing dom0's records; returns its generation.
pub fn publish(meta: &ArchiveMeta, client: &mut Client) -> Result<u64> {
    // Cleared before the root is built: a change made while it is written
    // sets it again.
    meta.clear_dirty()?;
    let mut root = match build(meta) {
        Ok(r) => r,
        Err(e) => {
            meta.mark_dirty()?;
            return Err(e);
        }
    };
    root.generation = meta.next_generation()?;
    let bytes = seal(&root, &meta.keys)?;
    meta.record_attempt(root.generation, bytes.len())?;
    let res = client
        .put_blob(Blob::Root, &bytes)
        .context("writing the archive's root record");
    if res.is_err() {
        meta.mark_dirty()?;
    }
    res?;
    meta.set_seen(root.generation, &RootDigest::of(&bytes))?;
    Ok(root.generation)
}

/// Reads and authenticates the archive's root, at most `cap` bytes (see
/// `ArchiveMeta::root_cap`); also its sealed bytes.
pub fn fetch(client: &mut Client, keys: &Keys, cap: u64) -> Result<(Root, RootDigest)> {
    let bytes = client
        .get_blob(Blob::Root, cap)
        .context("reading the archive's root record")?;
    let digest = RootDigest::of(&bytes);
    let root = Root::open_in_place(keys, bytes).with_context(|| {
        format!(
            "the archive's root record at {} does not authenticate with this archive's key",
            client.label()
        )
    })?;
    Ok((root, digest))
}

/// At every connection: the root must authenticate and be no older than
/// what dom0 has seen. A newer one is accepted (and its generation
/// recorded); one that is behind dom0's records (a run cut before it was
/// rewritten: the records are marked dirty) is rewritten when `fix` (the
/// connection may write).
pub fn check_fresh(
    meta: &ArchiveMeta,
    client: &mut Client,
    accept_rollback: bool,
    fix: bool,
) -> Result<Root> {
    let (root, digest) = fetch(client, &meta.keys, meta.root_cap()?)?;
    let (seen, seen_hash) = meta.seen()?;
    if root.generation < seen {
        if !accept_rollback {
            bail!(
                "the archive at {} was rolled back: its root is generation {}, dom0 has seen generation {seen}. Someone put back an older copy of the archive, or the backup qube is replaying one. If you rolled it back on purpose, run again with --accept-rollback",
                client.label(),
                root.generation,
            );
        }
        crate::report::warn(format!(
            "accepting the rolled-back root (generation {} < {seen}) as asked; run arch-import to make dom0's records match it",
            root.generation
        ));
        meta.set_seen(root.generation, &digest)?;
        return Ok(root);
    } else if root.generation > seen {
        // Past every root this dom0 wrote or tried to write, with other
        // contents than its records: not this dom0's. Writing its records
        // over it would drop what the other writer added (and a later
        // backup would drop those sessions as unconfirmed), so refuse,
        // read-only connections too (they would record it as seen). Only
        // where the records know what they wrote (this version's).
        let newest = meta.next_generation()? - 1;
        if seen_hash.is_some() && root.generation > newest {
            let mut ours = build(meta)?;
            ours.generation = root.generation;
            ours.written = root.written;
            if ours != root {
                bail!(
                    "the archive at {} holds a root of generation {} that this dom0 never wrote (the newest it wrote or tried to write is {}), with other contents than its records: another dom0 with this archive's key writes to it, or this dom0's records were put back from an older copy. Nothing was changed; run arch-import to take the archive's records (it reports what differed)",
                    client.label(),
                    root.generation,
                    newest
                );
            }
        }
        meta.set_seen(root.generation, &digest)?;
    } else if seen_hash.is_some_and(|h| h != digest.hash) {
        bail!(
            "the archive at {} holds a root of generation {seen} that is not the one dom0 wrote or accepted at that generation: the backup qube is showing another history of the archive (or a second dom0 with this archive's key writes to it; if so, run arch-import on the one you keep)",
            client.label()
        );
    } else if seen_hash.is_none() {
        // Recorded by an earlier version: the hash is known from now on.
        meta.set_seen(root.generation, &digest)?;
    }
    // dom0's records changed since the root was written (a run cut before
    // it was rewritten), or someone else wrote it: compare.
    if fix && (meta.dirty() || root.generation > seen) {
        let mut ours = build(meta)?;
        ours.generation = root.generation;
        ours.written = root.written;
        if ours != root {
            publish(meta, client)?;
        } else {
            meta.clear_dirty()?;
        }
    }
    Ok(root)
}
