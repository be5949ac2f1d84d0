//! `sparsebak arch-import`: rebuild dom0's records of an archive from the
//! archive itself and the passphrase (or a key file), on a dom0 that lost
//! them — or refresh them on one that has them.
//!
//! Order of events, and why: the key is unwrapped (a wrong passphrase
//! stops here, before anything is written); the root is authenticated and
//! checked against the archive's listings (a volume or session the root
//! names and the archive lacks is an error; one the archive has and the
//! root does not name was never committed by dom0, and is reported and
//! ignored); each manifest the root pins is fetched and its MAC checked;
//! the whole record is built in a staging directory and swapped in with
//! one rename at the end. So a failed import leaves dom0 as it was, and
//! nothing unauthenticated is ever recorded.

use crate::catalog;
use crate::client::{at_most, Client};
use crate::context::Ctx;
use crate::meta::{private_dir, read_key_file, ArchiveMeta, ArchiveRecord, MetaStore};
use crate::passphrase;
use anyhow::{bail, Context, Result};
use protocol::keys::{KeyFile, WrappedKey};
use protocol::manifest::{ENTRY_LEN, HEADER_LEN};
use protocol::message::{Blob, Operation};
use protocol::root::Root;
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
    let key = match (key_file, &existing) {
        (Some(f), _) => read_key_file(f)?,
        (None, Some(m)) => read_key_file(&m.dir.join(crate::meta::KEY_FILE))?,
        (None, None) => unwrap_key(ctx, &mut client)?,
    };
    if key.archive != params.id {
        bail!(
            "the key is for archive {}, the archive at {dest} is {}",
            key.archive.to_hex(),
            params.id.to_hex()
        );
    }
    let keys = key.keys();
    let root = catalog::fetch(&mut client, &keys)?;
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
    let report = check_listings(&mut client, &root)?;
    let staging = store
        .root
        .join("archives")
        .join(format!(".import-{}", root.params.id.to_hex()));
    let staged = match stage(
        &store,
        &staging,
        &dest.canonical(),
        &key,
        &root,
        &mut client,
    ) {
        Ok(()) => staging,
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
    for d in &differences {
        crate::report::line(format!("changed: {d}"));
    }
    crate::report::set("changed", &differences);
    let sessions: usize = root.volumes.iter().map(|v| v.sessions.len()).sum();
    crate::report::line(format!(
        "imported archive {} from {dest}: {}, {}, root generation {}, all authenticated",
        params.id.to_hex(),
        crate::units::count(root.volumes.len() as u64, "volume"),
        crate::units::count(sessions as u64, "session"),
        root.generation
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

/// The master key from the archive's wrapped copy and the passphrase.
fn unwrap_key(ctx: &Ctx, client: &mut Client) -> Result<KeyFile> {
    let bytes = client
        .get_blob(Blob::Key, Blob::Key.cap())
        .context("reading the archive's wrapped key")?;
    let w = WrappedKey::decode(&bytes).context("the archive's wrapped key")?;
    let pass = passphrase::read(
        ctx.passphrase_file.as_deref(),
        "Passphrase of the archive: ",
        false,
    )?;
    let master = w
        .unwrap(pass.as_bytes())
        .context("unable to unwrap the archive's key")?;
    Ok(KeyFile {
        archive: w.archive,
        encrypt: w.encrypt,
        master,
    })
}

/// Compares the receiver's listings with the root: what the root names
/// must be there; what is there and not named is reported.
fn check_listings(client: &mut Client, root: &Root) -> Result<Vec<String>> {
    let mut report = Vec::new();
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
    for v in &root.volumes {
        let id = v.volume_id().to_hex();
        if v.sessions.is_empty() {
            continue;
        }
        if !listed.contains(&id) {
            bail!(
                "volume '{}' (id {id}) is named by the archive's root but missing from the archive",
                v.name
            );
        }
        let theirs = client.sessions_by_id(&id, at_most(v.sessions.len()))?;
        for (ours, info) in v.sessions.iter().zip(v.session_infos()) {
            let Some(t) = theirs.iter().find(|t| t.name == ours.name) else {
                bail!(
                    "session {} of volume '{}' is named by the archive's root but missing from the archive",
                    ours.name,
                    v.name
                );
            };
            if t.volume_size != info.volume_size
                || t.chunks != info.chunks
                || t.zero_chunks != info.zero_chunks
            {
                bail!(
                    "session {} of volume '{}' in the archive does not match its root (size or chunk counts differ)",
                    ours.name,
                    v.name
                );
            }
        }
        for t in &theirs {
            if !v.sessions.iter().any(|s| s.name == t.name) {
                report.push(format!(
                    "session {} of volume '{}' is in the archive but not in its root (a commit cut short, or added behind dom0's back): ignored",
                    t.name, v.name
                ));
            }
        }
    }
    Ok(report)
}

/// Builds dom0's records in the staging directory `dir`.
fn stage(
    store: &MetaStore,
    dir: &Path,
    dest: &str,
    key: &KeyFile,
    root: &Root,
    client: &mut Client,
) -> Result<()> {
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
        },
        key,
    )?;
    client.set_ids(&meta);
    for v in &root.volumes {
        meta.set_volume_id(&v.name, v.volume_id())?;
        if v.mode != 0 {
            meta.set_volume_mode(&v.name, v.mode)?;
        }
        for (s, info) in v.sessions.iter().zip(v.session_infos()) {
            let sdir = meta.session_dir(&v.name, &s.name)?;
            fs::create_dir_all(&sdir)
                .with_context(|| format!("unable to create '{}'", sdir.display()))?;
            let len = (HEADER_LEN + ENTRY_LEN * (s.chunks + s.zero_chunks + 1) as usize) as u64;
            let path = sdir.join("manifest");
            let mut mac = meta.keys.manifest_mac();
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
                    mac.update(&buf[..n]);
                    f.write_all(&buf[..n])?;
                }
                stream.drain()?;
            }
            if *mac.finalize().as_bytes() != s.manifest_mac {
                bail!(
                    "the manifest of session {} of volume '{}' does not authenticate against the archive's root (altered, truncated or replaced)",
                    s.name,
                    v.name
                );
            }
            f.sync_all()?;
            // Parse it once: it must also be a well-formed manifest.
            for e in meta.manifest_at(&path)? {
                e?;
            }
            fs::write(
                sdir.join("mac"),
                format!("{}\n", protocol::keys::hex(&s.manifest_mac)),
            )?;
            fs::write(sdir.join("info.toml"), toml::to_string(&info)?)?;
        }
    }
    if !root.qubes.sessions.is_empty() {
        meta.set_qubes(&root.qubes)?;
        meta.clear_dirty()?;
    }
    meta.set_generation(root.generation)?;
    sysio::atomic::syncfs(dir).with_context(|| format!("unable to sync '{}'", dir.display()))?;
    Ok(())
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
