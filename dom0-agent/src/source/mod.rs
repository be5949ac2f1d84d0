//! Where volumes come from and how their changes are found.

pub mod fiemap;
pub mod file;
pub mod reflink;

use crate::chunkmap::ChunkMap;
use std::fs::File;

/// How the chunks of a new session are chosen.
pub enum Plan {
    /// First session: read the chunks that hold data; zero ones are implicit.
    Full { data: ChunkMap },
    /// The source knows what changed since the base snapshot: send exactly
    /// these chunks (zero ones as zero records).
    Changed { changed: ChunkMap },
    /// No usable base: read every chunk that holds data and compare with the
    /// previous session's hashes.
    Compare { data: ChunkMap },
}

/// A volume frozen for one backup.
pub struct Snapshot {
    pub file: File,
    pub size: u64,
    pub plan: Plan,
    /// How the plan was made, for the summary line.
    pub method: &'static str,
    /// The image file's permission bits (None for an LV), recorded so a
    /// restore to a file is no more open than its source was.
    pub mode: Option<u32>,
}

pub mod cmd;
pub mod lvm;
pub mod thin;

use anyhow::Result;

/// Where volumes live: a directory of image files, or an LVM thin pool.
pub enum Source {
    Dir(file::LocalDir),
    Lvm(lvm::LvmPool),
}

impl Source {
    /// `/path` is a directory; `VG/POOL` a thin pool.
    pub fn open(spec: &std::path::Path, archive_id: &str) -> Result<Source> {
        let s = spec.to_string_lossy();
        if s.starts_with('/') || s.starts_with('.') {
            Ok(Source::Dir(file::LocalDir::new(spec, archive_id)?))
        } else {
            Ok(Source::Lvm(lvm::LvmPool::new(&s, archive_id)?))
        }
    }

    pub fn prepare(&self, volume: &str, prev: Option<&str>, chunk_size: u64) -> Result<Snapshot> {
        match self {
            Source::Dir(d) => d.prepare(volume, prev, chunk_size),
            Source::Lvm(l) => l.prepare(volume, prev, chunk_size),
        }
    }

    pub fn rotate(&self, volume: &str, session: &str) -> Result<()> {
        match self {
            Source::Dir(d) => d.rotate(volume, session),
            Source::Lvm(l) => l.rotate(volume, session),
        }
    }

    pub fn discard_new(&self, volume: &str) {
        match self {
            Source::Dir(d) => d.discard_new(volume),
            Source::Lvm(l) => l.discard_new(volume),
        }
    }

    pub fn exists(&self, volume: &str) -> bool {
        match self {
            Source::Dir(d) => d.volume_path(volume).is_ok_and(|p| p.is_file()),
            Source::Lvm(l) => l.exists(volume),
        }
    }

    /// The live volume, read-only, and its size (for `diff`).
    pub fn open_live(&self, volume: &str) -> Result<(File, u64)> {
        use anyhow::Context;
        use std::io::{Seek, SeekFrom};
        let path = match self {
            Source::Dir(d) => d.volume_path(volume)?,
            Source::Lvm(l) => {
                protocol::names::validate_volume_name(volume)?;
                l.dev_path(volume)
            }
        };
        let mut f = File::open(&path)
            .with_context(|| format!("unable to open volume '{}'", path.display()))?;
        // Seeking to the end gives the size of block devices too.
        let size = f
            .seek(SeekFrom::End(0))
            .with_context(|| format!("unable to size '{}'", path.display()))?;
        Ok((f, size))
    }

    /// Drops the snapshots kept for a volume.
    pub fn forget(&self, volume: &str) -> Result<()> {
        match self {
            Source::Dir(d) => d.forget(volume),
            Source::Lvm(l) => l.forget(volume),
        }
    }
}
