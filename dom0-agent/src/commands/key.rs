//! `sparsebak key export FILE` and `sparsebak key passwd`.
//!
//! `export` copies dom0's key file (the archive's master key) for
//! safekeeping; `passwd` wraps the same key with a new passphrase and
//! replaces the archive's wrapped key (both copies, each read back) and
//! the root that pins it; no chunk or manifest changes. The master key
//! stays: a copy of the old wrapped key still opens with the old
//! passphrase, which `passwd` cannot reach (see the README).
//!
//! `rotate` makes a new master key for what is written from now on and
//! retires the old one: dom0's key file and the archive's wrapped key (a
//! ring, `SBKKEY02`) keep it to open older data. Order of events, and
//! why (each step is atomic; a crash between any two leaves an archive
//! that opens with the passphrase of that moment, and an intact dom0 that
//! finishes the rotation at its next connection):
//! 1. dom0's record of the wrapped ring (the new key first);
//! 2. dom0's key file: from here dom0 seals with the new key (and opens
//!    with either);
//! 3. both copies in the archive, each read back: from here the archive
//!    opens with the new passphrase (the root is still sealed with the old
//!    key, which the ring holds);
//! 4. a root sealed with the new key, pinning the new ring.

use crate::context::Ctx;
use crate::meta::{read_key_file, ArchiveMeta, KEY_FILE};
use crate::{catalog, keycheck, passphrase, random};
use anyhow::{bail, Context, Result};
use protocol::message::Operation;
use sealed::keys::{KeyFile, MasterKey, DEFAULT_KDF, MAX_RING};
use std::path::Path;

pub fn export(ctx: &Ctx, file: &Path) -> Result<i32> {
    let (_, meta) = ctx.archive()?;
    let key = read_key_file(&meta.dir.join(KEY_FILE))?;
    if file.exists() {
        bail!("'{}' exists: refusing to overwrite it", file.display());
    }
    sysio::atomic::write_atomic_mode(file, key.encode().as_bytes(), 0o600)
        .with_context(|| format!("unable to write '{}'", file.display()))?;
    crate::report::line(format!(
        "wrote the key of archive {} to '{}': anyone holding it can read the archive; keep it offline",
        meta.rec.id,
        file.display()
    ));
    crate::report::set("archive", &meta.rec.id);
    crate::report::set("file", file);
    Ok(0)
}

pub fn passwd(ctx: &Ctx) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    let key = read_key_file(&meta.dir.join(KEY_FILE))?;
    let mut client = ctx.connect(&dest, &meta, Operation::Admin)?;
    let pass = passphrase::read(
        ctx.passphrase_file.as_deref(),
        "New passphrase for the archive: ",
        true,
    )?;
    let w = passphrase::wrap(&key.ring(), key.archive, key.encrypt, &pass, DEFAULT_KDF)?.encode();
    // Order: dom0's record first (marks the root dirty), then both copies,
    // each read back, then the root that pins the new key. A run cut in
    // between is finished by the next connection, which puts back the
    // copies that differ from dom0's record and rewrites the root.
    meta.set_wrapped_key(&w)?;
    for b in keycheck::COPIES {
        keycheck::put_checked(&mut client, b, &w)?;
    }
    catalog::publish(&meta, &mut client)?;
    client.finish()?;
    crate::report::line(format!(
        "the archive at {dest} now opens with the new passphrase. Copies of its key file taken before (an old disk image, an offsite copy) still open with the old one and give the same master key: if the old passphrase leaked, treat the archive's data as exposed"
    ));
    crate::report::set("archive", &meta.rec.id);
    Ok(0)
}

pub fn rotate(ctx: &Ctx) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    let old = read_key_file(&meta.dir.join(KEY_FILE))?;
    if old.retired.len() + 1 >= MAX_RING {
        bail!(
            "archive {} has retired {} keys already, the most a key ring holds: make a new archive instead",
            meta.rec.id,
            old.retired.len()
        );
    }
    let mut client = ctx.connect(&dest, &meta, Operation::Admin)?;
    let pass = passphrase::read(
        ctx.passphrase_file.as_deref(),
        "New passphrase for the archive (the old one stops working): ",
        true,
    )?;
    let new = KeyFile {
        archive: old.archive,
        encrypt: old.encrypt,
        master: MasterKey::from_bytes(random::bytes()?),
        retired: old.ring(),
    };
    let w = passphrase::wrap(&new.ring(), new.archive, new.encrypt, &pass, DEFAULT_KDF)?.encode();
    meta.set_wrapped_key(&w)?;
    let kp = meta.dir.join(KEY_FILE);
    sysio::atomic::write_atomic_mode(&kp, new.encode().as_bytes(), 0o600)
        .with_context(|| format!("unable to write key file '{}'", kp.display()))?;
    let meta = ArchiveMeta::open(&meta.dir)?;
    for b in keycheck::COPIES {
        keycheck::put_checked(&mut client, b, &w)?;
    }
    catalog::publish(&meta, &mut client)?;
    client.finish()?;
    crate::report::line(format!(
        "archive {} at {dest} has a new key, and opens only with the new passphrase; {} retired key(s) kept to open what was written before. Export the key again if you keep an exported copy",
        meta.rec.id,
        new.retired.len()
    ));
    crate::report::set("archive", &meta.rec.id);
    crate::report::set("retired_keys", new.retired.len());
    Ok(0)
}
