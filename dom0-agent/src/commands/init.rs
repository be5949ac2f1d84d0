//! `sparsebak arch-init`: a new archive at the destination, its key, and
//! dom0's record of it.
//!
//! Order of events: the key is made and wrapped with the passphrase (so a
//! typo'd confirmation changes nothing anywhere); the receiver creates the
//! archive with the wrapped key and a first, empty root; dom0 records the
//! archive and its key only once the receiver said Ok, so a failed init
//! leaves dom0 as it was. (If dom0 fails to record it after that, the
//! archive is not lost: `arch-import` adopts it.)

use crate::catalog;
use crate::client::Client;
use crate::context::Ctx;
use crate::meta::{parse_compression, ArchiveRecord};
use crate::units::{self, parse_size};
use crate::{keycheck, passphrase, random};
use anyhow::{bail, Context, Result};
use protocol::message::{ArchiveId, ArchiveParams, Blob};
use sealed::keys::{KeyFile, MasterKey, DEFAULT_KDF};
use sealed::root::Root;

pub fn run(
    ctx: &Ctx,
    chunk_size: &str,
    compression: &str,
    encrypt: bool,
    mkdir: bool,
    pad_sizes: bool,
) -> Result<i32> {
    let dest = ctx.dest()?;
    let cs = parse_size(chunk_size)?;
    let cs = u32::try_from(cs).ok().context("chunk size too large")?;
    protocol::validate_chunk_size(cs)?;
    let compression = parse_compression(compression)?;
    let store = ctx.meta_store();
    if let Some(m) = store.find_by_dest(&dest.canonical())? {
        bail!(
            "dom0 already has archive {} for {dest} (meta dir '{}')",
            m.rec.id,
            ctx.meta_dir.display()
        );
    }
    // Checked before the passphrase is asked for (the receiver checks
    // again, for every kind of destination).
    if let crate::transport::dest::Dest::File(dir) = &dest {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !mkdir && !parent.is_dir() {
                bail!(
                    "the archive's parent directory '{}' does not exist (is the backup disk mounted?); create it, or give --mkdir",
                    parent.display()
                );
            }
        }
    }
    let pass = passphrase::read(
        ctx.passphrase_file.as_deref(),
        "Passphrase for the new archive (keep it safe: it recovers the archive without dom0): ",
        true,
    )?;
    let id = ArchiveId(random::bytes()?);
    let key = KeyFile {
        archive: id,
        encrypt,
        master: MasterKey::from_bytes(random::bytes()?),
        retired: Vec::new(),
    };
    let wrapped = passphrase::wrap(&key.ring(), id, encrypt, &pass, DEFAULT_KDF)?.encode();
    let params = ArchiveParams {
        id,
        chunk_size: cs,
        compression,
    };
    let keys = key.keys();
    let root = Root {
        generation: 1,
        written: catalog::now(),
        params,
        encrypt,
        configured: Vec::new(),
        volumes: Vec::new(),
        qubes: Default::default(),
        pending: Vec::new(),
        key_hash: Some(keycheck::hash(&wrapped)),
        legacy_clear: false,
        pad_sizes,
    };
    let sealed = catalog::seal(&root, &keys)?;
    let mut client = Client::connect_new(&dest, &ctx.reach)?;
    client.init(params, wrapped.clone(), sealed.clone(), mkdir)?;
    // Read back: an archive whose key did not land as written would fail
    // only at a disaster recovery.
    for (b, want) in [
        (Blob::Key, &wrapped),
        (Blob::KeyCopy, &wrapped),
        (Blob::Root, &sealed),
    ] {
        let got = client.get_blob(b, b.cap())?;
        if got != *want {
            bail!(
                "the receiver at {dest} did not keep dom0.{} as written: the new archive is not usable (remove it and run arch-init again)",
                b.name()
            );
        }
    }
    client.finish()?;
    let meta = store.create(
        ArchiveRecord {
            id: id.to_hex(),
            dest: dest.canonical(),
            chunk_size: cs,
            compression: compression.to_string(),
            created: root.written,
            encrypt,
            volumes: Vec::new(),
            legacy_clear: false,
            pad_sizes,
        },
        &key,
    )?;
    meta.set_wrapped_key(&wrapped)?;
    meta.clear_dirty()?;
    meta.set_seen(1, &crate::meta::RootDigest::of(&sealed))?;
    crate::report::line(format!(
        "created archive {} at {dest} (chunk size {}, {compression}, {})",
        id.to_hex(),
        units::human(cs as u64),
        if encrypt {
            "encrypted"
        } else {
            "not encrypted, authenticated"
        }
    ));
    crate::report::set("archive", id.to_hex());
    crate::report::set("dest", dest.canonical());
    crate::report::set("chunk_size", cs);
    crate::report::set("compression", compression.to_string());
    crate::report::set("encrypted", encrypt);
    crate::report::set("pad_sizes", pad_sizes);
    Ok(0)
}
