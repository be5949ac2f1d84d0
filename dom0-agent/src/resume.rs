//! Resuming a cut backup (`DESIGN.md` §14), dom0's side. Before each
//! session dom0 asks the receiver for the manifest of the volume's
//! unfinished session (what a backup cut before its commit stored) and
//! keeps it in its records for lookups by address; the pipeline compares
//! each chunk it reads with the entry there and sends a `Resume` record
//! instead of the chunk where the keyed ids are equal.
//!
//! Trust: the receiver's manifest is used only to choose where to look.
//! The id compared is the one computed from the source now, so a volume
//! written to between the cut and the resume is stored as it is now (a
//! new snapshot is taken, as for any backup); what the receiver cannot
//! back with a whole chunk it refuses at the commit, and dom0 sends that
//! chunk's data (`backup::resend_refused`).

use crate::client::Client;
use crate::meta::{ArchiveMeta, ManifestFile};
use crate::report;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the unfinished session's manifest is kept in dom0's records (a
/// dot name: no listing of the volume's sessions sees it).
fn path(meta: &ArchiveMeta, volume: &str) -> Result<PathBuf> {
    Ok(meta.volume_dir(volume)?.join(".unfinished-manifest"))
}

/// The manifest of the volume's unfinished session (of a volume of `size`
/// bytes now), None if the receiver holds none. One that is not well
/// formed is not used: everything is sent, as without one.
pub fn fetch(
    meta: &ArchiveMeta,
    client: &mut Client,
    volume: &str,
    size: u64,
) -> Result<Option<Arc<ManifestFile>>> {
    use protocol::manifest::{ENTRY_LEN, HEADER_LEN};
    let cs = meta.params.chunk_size as u64;
    // At most an entry per chunk of the volume, or of a volume twice its
    // size (it may have shrunk since the cut): a longer stream is refused.
    let entries = 2 * size.div_ceil(cs).max(1) + 1;
    let cap = HEADER_LEN as u64 + ENTRY_LEN as u64 * entries;
    let path = path(meta, volume)?;
    let mut f = std::fs::File::create(&path)
        .with_context(|| format!("unable to create '{}'", path.display()))?;
    let len = {
        let mut stream = client.unfinished(volume, cap)?;
        let n = std::io::copy(&mut stream, &mut f).with_context(|| {
            format!("volume '{volume}': reading the manifest of its unfinished session")
        })?;
        stream.drain()?;
        n
    };
    drop(f);
    if len == 0 {
        forget(meta, volume);
        return Ok(None);
    }
    // Read whole once (its CRC, its order), then searched by address.
    let whole = (|| -> Result<ManifestFile> {
        for e in meta.manifest_at(&path)? {
            e?;
        }
        ManifestFile::open(&path, cs as u32)
    })();
    match whole {
        Ok(m) => {
            report::detail(format!(
                "{volume}: a cut backup left {} in the archive; each one the volume still holds is kept, not sent again",
                crate::units::count(m.entries(), "chunk")
            ));
            Ok(Some(Arc::new(m)))
        }
        Err(e) => {
            report::warn(format!(
                "volume '{volume}': the receiver's record of a cut backup is not usable ({e:#}); sending everything"
            ));
            Ok(None)
        }
    }
}

/// Forgets the unfinished session (the receiver dropped it at the commit).
pub fn forget(meta: &ArchiveMeta, volume: &str) {
    if let Ok(p) = path(meta, volume) {
        let _ = std::fs::remove_file(p);
    }
}
