//! `sparsebak key export FILE` and `sparsebak key passwd`.
//!
//! `export` copies dom0's key file (the archive's master key) for
//! safekeeping; `passwd` wraps the same key with a new passphrase and
//! replaces the archive's wrapped key (both copies, each read back) and
//! the root that pins it; no chunk or manifest changes. The master key
//! stays: a copy of the old wrapped key still opens with the old
//! passphrase, which `passwd` cannot reach (see the README).

use crate::context::Ctx;
use crate::meta::{read_key_file, KEY_FILE};
use crate::{catalog, keycheck, passphrase};
use anyhow::{bail, Context, Result};
use protocol::message::Operation;
use sealed::keys::DEFAULT_KDF;
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
    let w = passphrase::wrap(&key.master, key.archive, key.encrypt, &pass, DEFAULT_KDF)?.encode();
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
