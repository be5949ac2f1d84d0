//! `sparsebak key export FILE` and `sparsebak key passwd`.
//!
//! `export` copies dom0's key file (the archive's master key) for
//! safekeeping; `passwd` wraps the same key with a new passphrase and
//! replaces the archive's wrapped copy (one atomic record write; no chunk,
//! manifest or root changes).

use crate::context::Ctx;
use crate::meta::{read_key_file, KEY_FILE};
use crate::{passphrase, random};
use anyhow::{bail, Context, Result};
use protocol::keys::{WrappedKey, DEFAULT_KDF};
use protocol::message::{Blob, Operation};
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
    let w = WrappedKey::wrap(
        &key.master,
        key.archive,
        key.encrypt,
        pass.as_bytes(),
        DEFAULT_KDF,
        random::bytes()?,
        random::bytes()?,
    )?;
    client.put_blob(Blob::Key, &w.encode())?;
    client.finish()?;
    crate::report::line(format!(
        "the archive at {dest} now opens with the new passphrase (the old one no longer does)"
    ));
    crate::report::set("archive", &meta.rec.id);
    Ok(0)
}
