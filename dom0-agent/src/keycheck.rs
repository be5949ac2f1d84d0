//! The archive's wrapped key (`dom0.key` and its copy `dom0.key-copy`):
//! the only way back in from a passphrase after dom0 is lost, so it is
//! checked at every connection, not first at a disaster recovery.
//!
//! What it must be: dom0 records the wrapped key it wrote (`wrapped-key`
//! in its records) and the sealed root pins its BLAKE3. At a connection
//! both copies are read and compared with dom0's record; a copy that is
//! missing or differs is put back (and read back) on a connection that
//! may write, and reported on one that may not. Either way it is said
//! (a warning, and in `arch-check`'s findings), since it means the backup
//! qube lost or altered a file.
//!
//! A copy that is the key the root pins, while dom0 holds a newer one, is
//! a `key passwd` that was cut: finishing it is not reported.
//!
//! An archive written by an earlier version pinned nothing: its key is
//! adopted as the receiver holds it, if it is a wrapped key of this
//! archive (dom0 cannot check more without the passphrase), and `key
//! passwd` writes one dom0 has checked.

use crate::client::Client;
use crate::meta::ArchiveMeta;
use anyhow::Result;
use protocol::message::Blob;
use sealed::keys::WrappedKey;
use sealed::root::Root;

/// The two places the archive keeps the wrapped key.
pub const COPIES: [Blob; 2] = [Blob::Key, Blob::KeyCopy];

pub fn hash(b: &[u8]) -> [u8; 32] {
    *blake3::hash(b).as_bytes()
}

/// Both copies as the receiver holds them (`Err`: its answer, for the
/// report).
pub fn read_copies(client: &mut Client) -> Vec<(Blob, std::result::Result<Vec<u8>, String>)> {
    COPIES
        .iter()
        .map(|&b| {
            let got = client.get_blob(b, b.cap()).map_err(|e| format!("{e:#}"));
            (b, got)
        })
        .collect()
}

fn file(b: Blob) -> String {
    format!("dom0.{}", b.name())
}

/// Checks (and, where `fix`, repairs) the archive's wrapped key against
/// dom0's record and the root's pin. Returns what was wrong, each said as
/// a warning too.
pub fn check(
    meta: &ArchiveMeta,
    client: &mut Client,
    root: &Root,
    fix: bool,
) -> Result<Vec<String>> {
    let copies = read_copies(client);
    let mut found = Vec::new();
    let ours = match meta.wrapped_key()? {
        Some(k) => Some(k),
        None => adopt(meta, root, &copies, &mut found)?,
    };
    if let Some(ours) = &ours {
        for (b, got) in &copies {
            let what = match got {
                Ok(g) if g == ours => continue,
                Ok(_) => "differs from the wrapped key dom0 wrote",
                Err(_) => "is missing or unreadable",
            };
            // The copy is the key the root pins and dom0 holds a newer one:
            // a `key passwd` cut before it was done. Finishing it is no
            // finding.
            let unfinished = matches!(got, Ok(g) if Some(hash(g)) == root.key_hash)
                && root.key_hash != Some(hash(ours));
            if unfinished {
                if fix {
                    put_checked(client, *b, ours)?;
                    crate::report::detail(format!(
                        "finished a passphrase change: wrote the new wrapped key to {}",
                        file(*b)
                    ));
                }
                continue;
            }
            if fix {
                put_checked(client, *b, ours)?;
                found.push(format!(
                    "the archive's {} {what}: put back from dom0's record",
                    file(*b)
                ));
            } else {
                found.push(format!(
                    "the archive's {} {what} (the next backup or admin command puts it back)",
                    file(*b)
                ));
            }
        }
        if fix && root.key_hash != Some(hash(ours)) {
            // An earlier version's root, or dom0's record changed: the
            // root must pin what dom0 holds.
            meta.mark_dirty()?;
            crate::catalog::publish(meta, client)?;
        }
    }
    for f in &found {
        crate::report::warn(f);
    }
    Ok(found)
}

/// dom0 holds no record of the wrapped key (an archive from an earlier
/// version, or records from before it was kept): takes the copy the root
/// pins, else (nothing pinned) the first copy that is a wrapped key of
/// this archive.
fn adopt(
    meta: &ArchiveMeta,
    root: &Root,
    copies: &[(Blob, std::result::Result<Vec<u8>, String>)],
    found: &mut Vec<String>,
) -> Result<Option<Vec<u8>>> {
    let of_this = |b: &[u8]| {
        WrappedKey::decode(b)
            .is_ok_and(|w| w.archive == meta.params.id && w.encrypt == meta.rec.encrypt)
    };
    let pick = copies.iter().find_map(|(_, g)| {
        let g = g.as_ref().ok()?;
        match root.key_hash {
            Some(h) => (hash(g) == h).then(|| g.clone()),
            None => of_this(g).then(|| g.clone()),
        }
    });
    match &pick {
        Some(k) => {
            meta.set_wrapped_key(k)?;
            if root.key_hash.is_none() {
                crate::report::detail(
                    "pinned the archive's wrapped key as the receiver holds it (an earlier version did not pin it; `sparsebak key passwd` writes one dom0 has checked)",
                );
            }
        }
        None => found.push(
            "neither dom0.key nor dom0.key-copy in the archive is the wrapped key the root pins, and dom0 holds no copy: a disaster recovery from the passphrase would fail; run `sparsebak key passwd` now to write a new one"
                .into(),
        ),
    }
    Ok(pick)
}

/// Writes one copy of the wrapped key and reads it back.
pub fn put_checked(client: &mut Client, b: Blob, bytes: &[u8]) -> Result<()> {
    client.put_blob(b, bytes)?;
    let back = client.get_blob(b, b.cap())?;
    if back != bytes {
        anyhow::bail!(
            "the receiver for {} did not keep {} as written (read back {} bytes that differ)",
            client.label(),
            file(b),
            back.len()
        );
    }
    Ok(())
}
