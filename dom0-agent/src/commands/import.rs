//! `sparsebak arch-import`: rebuild dom0's records of an archive from the
//! archive itself and the passphrase (or a key file), on a dom0 that lost
//! them — or refresh them on one that has them.
//!
//! Order of events, and why: the key is unwrapped (a wrong passphrase
//! stops here, before anything is written); the root is authenticated;
//! each volume it names is compared with the archive's listing, and a
//! change the root names as in flight (a prune, a deletion: dom0 may have
//! been lost in the middle) is resolved by what the archive holds; each
//! manifest the root (or the change) pins is fetched and its MAC checked;
//! the whole record is built in a staging directory and swapped in with
//! one rename at the end. So a failed import leaves dom0 as it was, and
//! nothing unauthenticated is ever recorded.
//!
//! It degrades per volume and per session, never refusing the rest: a
//! volume missing from the archive is left out; a volume is imported up
//! to the first session that is missing, differs or does not authenticate
//! (a later session's view needs every earlier one); what was left out is
//! listed, with why. Sessions the archive has beyond what was imported
//! (a backup whose confirmation dom0 never wrote, or sessions after a
//! gap) cannot be authenticated: the next backup of the volume drops
//! them (`reconcile::drop_unconfirmed`).

use crate::client::{at_most, Client};
use crate::context::Ctx;
use crate::meta::{private_dir, read_key_file, ArchiveMeta, ArchiveRecord, MetaStore, RootDigest};
use crate::passphrase;
use crate::{catalog, keycheck};
use anyhow::{bail, Context, Result};
use protocol::manifest::{ENTRY_LEN, HEADER_LEN};
use protocol::message::{Blob, Operation};
use sealed::keys::{KeyFile, WrappedKey};
use sealed::root::{Pending, Root, RootSession, RootVolume};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

pub fn run(ctx: &Ctx, key_file: Option<&Path>) -> Result<i32> {
    let dest = ctx.dest()?;
    let store = ctx.meta_store();
    let existing = store.find_by_dest(&dest.canonical())?;
    let (mut client, params) = Client::connect_any(&dest, &ctx.reach, Operation::Admin)?;
    if let Some(m) = &existing {
        if m.params.id != params.id {
            bail!(
                "dom0 records archive {} for {dest}, but the archive there is {}: refusing to mix them (use another --meta-dir, or delete dom0's record)",
                m.rec.id,
                params.id.to_hex()
            );
        }
    }
    let copies = keycheck::read_copies(&mut client);
    let (key, unwrapped) = match (key_file, &existing) {
        (Some(f), _) => (read_key_file(f)?, None),
        (None, Some(m)) => (read_key_file(&m.dir.join(crate::meta::KEY_FILE))?, None),
        (None, None) => {
            let (k, w) = unwrap_key(ctx, &client, &copies)?;
            (k, Some(w))
        }
    };
    if key.archive != params.id {
        bail!(
            "the key is for archive {}, the archive at {dest} is {}",
            key.archive.to_hex(),
            params.id.to_hex()
        );
    }
    let keys = key.keys();
    // A dom0 that has records caps the root at what it last wrote; a
    // fresh one can only take the protocol's cap.
    let cap = match &existing {
        Some(m) => m.root_cap()?,
        None => Blob::Root.cap(),
    };
    let (root, root_digest) = catalog::fetch(&mut client, &keys, cap)?;
    // The wrapped key dom0 records: the copy the root pins, else the one
    // that just unwrapped with the passphrase (its hash is pinned at the
    // next root; the next connection puts back a copy that differs).
    let pinned = copies
        .iter()
        .filter_map(|(_, g)| g.as_ref().ok())
        .find(|g| Some(keycheck::hash(g)) == root.key_hash)
        .cloned();
    if let (Some(u), Some(_), None) = (&unwrapped, root.key_hash, &pinned) {
        if Some(keycheck::hash(u)) != root.key_hash {
            crate::report::warn(
                "the root pins another wrapped key than the one that opened with this passphrase (a copy from before a `key passwd`?): dom0 keeps the one that opened, and puts it back in the archive at the next backup; run `sparsebak key passwd` to choose the passphrase from now on",
            );
        }
    }
    let wrapped = pinned.or(unwrapped);
    if root.params != params {
        bail!(
            "the archive's root describes other parameters than the receiver reports: refusing it"
        );
    }
    if let Some(m) = &existing {
        let seen = m.generation()?;
        if root.generation < seen && !ctx.accept_rollback {
            bail!(
                "the archive at {dest} was rolled back: its root is generation {}, dom0 has seen {seen}; give --accept-rollback if you put back an older copy on purpose",
                root.generation
            );
        }
    }
    let mut report = Vec::new();
    let (volumes, deleting) = plan(&mut client, &root, &mut report)?;
    let staging = store
        .root
        .join("archives")
        .join(format!(".import-{}", root.params.id.to_hex()));
    let (root, staged) = match stage(
        &store,
        &staging,
        &dest.canonical(),
        &key,
        (&root, &root_digest),
        wrapped.as_deref(),
        volumes,
        &deleting,
        &mut client,
        &mut report,
    ) {
        Ok(r) => (r, staging),
        Err(e) => {
            // Nothing unauthenticated is kept: the staged records go.
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    client.finish()?;
    let differences = existing
        .as_ref()
        .map(|m| differences(m, &root))
        .transpose()?
        .unwrap_or_default();
    swap_in(&store, &staged, &root)?;
    for r in &report {
        crate::report::warn(r);
    }
    crate::report::set("not_imported", &report);
    for d in &differences {
        crate::report::line(format!("changed: {d}"));
    }
    crate::report::set("changed", &differences);
    let sessions: usize = root.volumes.iter().map(|v| v.sessions.len()).sum();
    crate::report::line(format!(
        "imported archive {} from {dest}: {}, {}, root generation {}, all authenticated{}",
        params.id.to_hex(),
        crate::units::count(root.volumes.len() as u64, "volume"),
        crate::units::count(sessions as u64, "session"),
        root.generation,
        if report.is_empty() {
            String::new()
        } else {
            format!(
                "; {} left out or to finish (above)",
                crate::units::count(report.len() as u64, "thing")
            )
        }
    ));
    crate::report::set("archive", params.id.to_hex());
    crate::report::set("dest", dest.to_string());
    crate::report::set("volumes", root.volumes.len());
    crate::report::set("sessions", sessions);
    crate::report::set("generation", root.generation);
    match root.newest() {
        Some((v, s)) => {
            crate::report::line(format!(
                "newest session: {} of '{}', taken {} (if you expected a later one, the archive may have been rolled back)",
                s.name,
                v.name,
                crate::timefmt::format_local(s.time)
            ));
            crate::report::set(
                "newest",
                serde_json::json!({"volume": v.name, "session": s.name, "time": s.time}),
            );
        }
        None => crate::report::line("the archive holds no sessions yet"),
    }
    Ok(0)
}

/// The master key from the archive's wrapped key and the passphrase,
/// with the bytes that unwrapped: `dom0.key`, else its copy where that
/// differs (one damaged file does not end a recovery).
fn unwrap_key(
    ctx: &Ctx,
    client: &Client,
    copies: &[(Blob, std::result::Result<Vec<u8>, String>)],
) -> Result<(KeyFile, Vec<u8>)> {
    let mut tried: Vec<&[u8]> = Vec::new();
    let mut why = Vec::new();
    let mut pass = None;
    for (b, got) in copies {
        let bytes = match got {
            Ok(g) if !tried.contains(&g.as_slice()) => g,
            Ok(_) => continue,
            Err(e) => {
                why.push(format!("dom0.{}: {e}", b.name()));
                continue;
            }
        };
        tried.push(bytes);
        let w = match WrappedKey::decode(bytes) {
            Ok(w) => w,
            Err(e) => {
                why.push(format!("dom0.{}: {e}", b.name()));
                continue;
            }
        };
        if pass.is_none() {
            pass = Some(passphrase::read(
                ctx.passphrase_file.as_deref(),
                "Passphrase of the archive: ",
                false,
            )?);
        }
        let p = pass.as_ref().expect("read above");
        match passphrase::unwrap(&w, p) {
            Ok(mut ring) => {
                let master = ring.remove(0);
                if !why.is_empty() {
                    crate::report::warn(format!(
                        "used the archive's dom0.{}: {}",
                        b.name(),
                        why.join("; ")
                    ));
                }
                let k = KeyFile {
                    archive: w.archive,
                    encrypt: w.encrypt,
                    master,
                    retired: ring,
                };
                return Ok((k, bytes.clone()));
            }
            Err(e) => why.push(format!("dom0.{}: {e}", b.name())),
        }
    }
    bail!(
        "unable to unwrap the key of the archive at {}: {}",
        client.label(),
        why.join("; ")
    )
}

/// What to import of each volume the root names: its sessions as the
/// archive holds them, a pending change resolved, cut at the first
/// session the archive lacks or holds otherwise. Also the volumes whose
/// deletion was in flight and did not reach the archive (imported, and
/// the deletion recorded so the next admin command finishes it). What is
/// left out goes to `report`.
fn plan(
    client: &mut Client,
    root: &Root,
    report: &mut Vec<String>,
) -> Result<(Vec<RootVolume>, Vec<String>)> {
    let want: std::collections::BTreeSet<String> = root
        .volumes
        .iter()
        .map(|v| v.volume_id().to_hex())
        .collect();
    let listed = client.volume_ids(at_most(want.len()))?;
    for id in &listed {
        if !want.contains(id) {
            report.push(format!(
                "the archive holds a volume (id {id}) its root does not name: ignored"
            ));
        }
    }
    let (mut out, mut deleting) = (Vec::new(), Vec::new());
    for v in &root.volumes {
        let id = v.volume_id().to_hex();
        let pending = root.pending_for(&v.name);
        if !listed.contains(&id) {
            match pending {
                Some(Pending::Delete { .. }) => report.push(format!(
                    "volume '{}': its deletion was interrupted and had finished in the archive: not imported",
                    v.name
                )),
                _ if v.sessions.is_empty() => out.push(v.clone()),
                _ => report.push(format!(
                    "volume '{}' (id {id}) is named by the archive's root but missing from the archive: not imported",
                    v.name
                )),
            }
            continue;
        }
        if let Some(Pending::Delete { .. }) = pending {
            report.push(format!(
                "volume '{}': its deletion was interrupted before the archive did it: imported, and the next admin command (prune, arch-check, delete) finishes it",
                v.name
            ));
            deleting.push(v.name.clone());
        }
        // Both lists ascend by name (the client refuses a listing that
        // does not; the root is checked so): searched, not scanned, with
        // tens of thousands of sessions.
        let theirs = client.sessions_by_id(&id, at_most(v.sessions.len()))?;
        let find = |n: &str| {
            theirs
                .binary_search_by(|t| t.name.as_str().cmp(n))
                .ok()
                .map(|i| &theirs[i])
        };
        let has = |n: &str| find(n).is_some();
        let mut sessions = v.sessions.clone();
        if let Some(Pending::Prune {
            pruned,
            into,
            manifest_mac,
            chunks,
            zero_chunks,
            ..
        }) = pending
        {
            if !has(pruned) && has(into) {
                // Done in the archive: the successor holds the merge,
                // which the root pinned before the receiver was asked.
                sessions.retain(|s| &s.name != pruned);
                if let Some(q) = sessions.iter_mut().find(|s| &s.name == into) {
                    q.manifest_mac = *manifest_mac;
                    q.chunks = *chunks;
                    q.zero_chunks = *zero_chunks;
                }
                report.push(format!(
                    "volume '{}': an interrupted prune of {pruned} into {into} had finished in the archive: imported the merged session",
                    v.name
                ));
            } else {
                report.push(format!(
                    "volume '{}': an interrupted prune of {pruned} had not happened in the archive: prune it again if you still want it gone",
                    v.name
                ));
            }
        }
        let mut kept = Vec::new();
        for s in sessions {
            let why = match find(&s.name) {
                None => "is missing from the archive",
                Some(t)
                    if t.volume_size != s.volume_size
                        || t.chunks != s.chunks
                        || t.zero_chunks != s.zero_chunks =>
                {
                    "differs in the archive from its root (size or chunk counts)"
                }
                Some(t) => {
                    kept.push(RootSession {
                        stored_bytes: t.stored_bytes,
                        ..s
                    });
                    continue;
                }
            };
            report.push(left_out(&v.name, &s.name, why, &kept));
            break;
        }
        let named = |n: &str| {
            v.sessions
                .binary_search_by(|s| s.name.as_str().cmp(n))
                .is_ok()
        };
        let newest = kept.last().map(|s| s.name.clone());
        for t in &theirs {
            // `kept` ascends: past its newest is outside it.
            if newest.as_ref().is_none_or(|n| &t.name > n) {
                report.push(format!(
                    "session {} of volume '{}' is in the archive but cannot be authenticated (its root does not name it, or an earlier session is missing): not imported; the next backup of the volume drops it",
                    t.name, v.name
                ));
            } else if !named(&t.name) {
                report.push(format!(
                    "session {} of volume '{}' is in the archive but not in its root (added behind dom0's back): ignored",
                    t.name, v.name
                ));
            }
        }
        out.push(RootVolume {
            sessions: kept,
            ..v.clone()
        });
    }
    Ok((out, deleting))
}

/// Why a volume's import stops at `session`, and what it keeps.
fn left_out(volume: &str, session: &str, why: &str, kept: &[RootSession]) -> String {
    format!(
        "volume '{volume}': session {session} {why}: it and every later session not imported (each later one needs it); {}",
        match kept.last() {
            Some(s) => format!("imported up to {}", s.name),
            None => "no session of it imported".into(),
        }
    )
}

/// Builds dom0's records in the staging directory `dir`: `volumes` as
/// planned, each cut at the first manifest that does not authenticate.
/// Returns the root as imported (what dom0's records now describe).
#[allow(clippy::too_many_arguments)]
fn stage(
    store: &MetaStore,
    dir: &Path,
    dest: &str,
    key: &KeyFile,
    (root, root_digest): (&Root, &RootDigest),
    wrapped: Option<&[u8]>,
    volumes: Vec<RootVolume>,
    deleting: &[String],
    client: &mut Client,
    report: &mut Vec<String>,
) -> Result<Root> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("unable to remove '{}'", dir.display()))?;
    }
    private_dir(&store.root)?;
    let meta = ArchiveMeta::create_in(
        dir,
        ArchiveRecord {
            id: root.params.id.to_hex(),
            dest: dest.to_string(),
            chunk_size: root.params.chunk_size,
            compression: root.params.compression.to_string(),
            created: catalog::now(),
            encrypt: root.encrypt,
            volumes: root.configured.clone(),
            legacy_clear: root.legacy_clear,
            pad_sizes: root.pad_sizes,
        },
        key,
    )?;
    client.set_ids(&meta);
    let mut imported = root.clone();
    imported.volumes.clear();
    imported.pending.clear();
    for mut v in volumes {
        meta.set_volume_id(&v.name, v.volume_id())?;
        meta.set_volume_group(&v.name, v.group.as_deref())?;
        if v.mode != 0 {
            meta.set_volume_mode(&v.name, v.mode)?;
        }
        if deleting.contains(&v.name) {
            meta.write_delete_intent(&v.name)?;
        }
        let infos = v.session_infos();
        let mut kept = 0;
        for (s, info) in v.sessions.iter().zip(infos) {
            let sdir = meta.session_dir(&v.name, &s.name)?;
            fs::create_dir_all(&sdir)
                .with_context(|| format!("unable to create '{}'", sdir.display()))?;
            let len = (HEADER_LEN + ENTRY_LEN * (s.chunks + s.zero_chunks + 1) as usize) as u64;
            let path = sdir.join("manifest");
            // Under the current key, or (written before a `key rotate`)
            // a retired one.
            let mut macs = meta.keys.manifest_macs();
            let mut f = File::create(&path)
                .with_context(|| format!("unable to create '{}'", path.display()))?;
            {
                let mut stream = client.manifest(&v.name, &s.name, len)?;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = std::io::Read::read(&mut stream, &mut buf).with_context(|| {
                        format!("reading the manifest of session {} of '{}'", s.name, v.name)
                    })?;
                    if n == 0 {
                        break;
                    }
                    for m in &mut macs {
                        m.update(&buf[..n]);
                    }
                    f.write_all(&buf[..n])?;
                }
                stream.drain()?;
            }
            let well_formed = || -> Result<()> {
                for e in meta.manifest_at(&path)? {
                    e?;
                }
                Ok(())
            };
            let pinned = macs
                .iter()
                .any(|m| *m.finalize().as_bytes() == s.manifest_mac);
            if !pinned || well_formed().is_err() {
                drop(f);
                fs::remove_dir_all(&sdir)
                    .with_context(|| format!("unable to remove '{}'", sdir.display()))?;
                report.push(left_out(
                    &v.name,
                    &s.name,
                    "has a manifest that does not authenticate against the archive's root (altered, truncated or replaced)",
                    &v.sessions[..kept],
                ));
                break;
            }
            f.sync_all()?;
            fs::write(
                sdir.join("mac"),
                format!("{}\n", sealed::keys::hex(&s.manifest_mac)),
            )?;
            fs::write(sdir.join("info.toml"), toml::to_string(&info)?)?;
            kept += 1;
        }
        v.sessions.truncate(kept);
        imported.volumes.push(v);
    }
    if !root.qubes.sessions.is_empty() {
        meta.set_qubes(&root.qubes)?;
    }
    if let Some(w) = wrapped {
        meta.set_wrapped_key(w)?;
    }
    // The dedup index, from the manifests just authenticated: the next
    // backup of a clone sends only what changed.
    let indexed = crate::dedup::rebuild(&meta).context("rebuilding the dedup index")?;
    crate::report::line(format!(
        "dedup index rebuilt: {}",
        crate::units::count(indexed, "stored chunk")
    ));
    crate::report::set("dedup_index_entries", indexed);
    meta.clear_dirty()?;
    let pinned = wrapped.map(keycheck::hash) == root.key_hash;
    if imported.volumes != root.volumes
        || !root.pending.is_empty()
        || !deleting.is_empty()
        || !pinned
    {
        // dom0's records differ from the root: the next connection that
        // may write publishes a root that says what dom0 now holds.
        meta.mark_dirty()?;
    }
    meta.set_seen(root.generation, root_digest)?;
    sysio::atomic::syncfs(dir).with_context(|| format!("unable to sync '{}'", dir.display()))?;
    Ok(imported)
}

/// What the root says that dom0's existing records did not.
fn differences(m: &ArchiveMeta, root: &Root) -> Result<Vec<String>> {
    let mut ours = catalog::build(m)?;
    ours.generation = root.generation;
    ours.written = root.written;
    let mut d = Vec::new();
    for v in &root.volumes {
        match ours.volume(&v.name) {
            None => d.push(format!("volume '{}' added", v.name)),
            Some(o) if o.sessions != v.sessions || o.id != v.id => {
                d.push(format!("volume '{}': sessions differ", v.name))
            }
            _ => {}
        }
    }
    for o in &ours.volumes {
        if root.volume(&o.name).is_none() {
            d.push(format!("volume '{}' is no longer in the archive", o.name));
        }
    }
    if ours.qubes != root.qubes {
        d.push("Qubes settings differ".into());
    }
    Ok(d)
}

/// Replaces dom0's record of the archive with the staged one: one rename.
fn swap_in(store: &MetaStore, staged: &Path, root: &Root) -> Result<()> {
    let archives = store.root.join("archives");
    let live = archives.join(root.params.id.to_hex());
    let old = archives.join(format!(".old-{}", root.params.id.to_hex()));
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    if live.exists() {
        // Snapshots and settings outside the record stay where they are.
        fs::rename(&live, &old).with_context(|| format!("unable to move '{}'", live.display()))?;
    }
    fs::rename(staged, &live).with_context(|| format!("unable to move '{}'", staged.display()))?;
    sysio::atomic::fsync_dir(&archives)?;
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    Ok(())
}
