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

/// One volume a backup run asks the source to freeze.
pub struct Want {
    pub volume: String,
    /// The session the delta is taken from (None: read it all).
    pub base: Option<String>,
    /// The session the new snapshot will hold once committed.
    pub session: String,
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
    Lvm(Box<lvm::LvmPool>),
}

impl Source {
    /// `/path` is a directory; `VG/POOL` a thin pool.
    pub fn open(spec: &std::path::Path, archive_id: &str) -> Result<Source> {
        let s = spec.to_string_lossy();
        if s.starts_with('/') || s.starts_with('.') {
            Ok(Source::Dir(file::LocalDir::new(spec, archive_id)?))
        } else {
            Ok(Source::Lvm(Box::new(lvm::LvmPool::new(&s, archive_id)?)))
        }
    }

    /// Freezes the volumes of a run and works out each one's plan; the
    /// plans come in the order asked. An LVM pool snapshots all of them
    /// first (one point in time, a handful of LVM commands for the whole
    /// run, `lvm.rs`) and plans on a thread while earlier volumes are
    /// sent; a directory freezes each volume when its turn comes.
    pub fn freeze<'a>(
        &'a self,
        wants: Vec<Want>,
        chunk_size: u64,
    ) -> Box<dyn Iterator<Item = Result<Snapshot>> + 'a> {
        match self {
            Source::Dir(d) => Box::new(
                wants
                    .into_iter()
                    .map(move |w| d.prepare(&w.volume, w.base.as_deref(), chunk_size)),
            ),
            Source::Lvm(l) => Box::new(l.freeze(wants, chunk_size)),
        }
    }

    /// After the receiver acknowledged `session` of `volume`: its new
    /// snapshot becomes the base (LVM: the old one goes at `finish`).
    pub fn rotate(&self, volume: &str, session: &str) -> Result<()> {
        match self {
            Source::Dir(d) => d.rotate(volume, session),
            Source::Lvm(l) => l.rotate(volume, session),
        }
    }

    /// Drops the snapshot this run made of `volume` (LVM: at `finish`).
    pub fn discard_new(&self, volume: &str) {
        match self {
            Source::Dir(d) => d.discard_new(volume),
            Source::Lvm(l) => l.discard_new(volume),
        }
    }

    /// The end of a run: what `rotate` and `discard_new` left to do, in as
    /// few commands as the source allows.
    pub fn finish(&self) {
        if let Source::Lvm(l) = self {
            l.finish();
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
