//! Image files in a local directory (`--local DIR`).
//!
//! On Btrfs or XFS each backup takes a reflink copy of the image as its
//! snapshot and diffs it against the previous one with FIEMAP
//! (`reflink.rs`). Elsewhere the live file is read and compared by hash.
//! Snapshots live in `DIR/.sparsebak/ARCHIVE-ID/`, named after the volume and
//! the session they belong to, so they are never confused across archives.

use super::{fiemap, reflink, Plan, Snapshot};
use crate::chunkmap::ChunkMap;
use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use protocol::names::validate_volume_name;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub struct LocalDir {
    pub dir: PathBuf,
    snap_dir: PathBuf,
}

impl LocalDir {
    pub fn new(dir: &Path, archive_id: &str) -> Result<Self> {
        if !dir.is_dir() {
            bail!("local source '{}' is not a directory", dir.display());
        }
        Ok(LocalDir {
            dir: dir.to_path_buf(),
            snap_dir: dir.join(".sparsebak").join(archive_id),
        })
    }

    pub fn volume_path(&self, volume: &str) -> Result<PathBuf> {
        validate_volume_name(volume)?;
        Ok(self.dir.join(volume))
    }

    fn base_path(&self, volume: &str, session: &str) -> PathBuf {
        self.snap_dir
            .join(format!("{}@{session}.snap", snap_stem(volume)))
    }

    fn new_path(&self, volume: &str) -> PathBuf {
        self.snap_dir.join(format!("{}.new", snap_stem(volume)))
    }

    /// Freezes `volume` and works out which chunks to read, relative to
    /// the snapshot of session `prev` if there is one.
    pub fn prepare(&self, volume: &str, prev: Option<&str>, chunk_size: u64) -> Result<Snapshot> {
        let live_path = self.volume_path(volume)?;
        let live = File::open(&live_path)
            .with_context(|| format!("unable to open volume '{}'", live_path.display()))?;
        let meta = live.metadata()?;
        if !meta.is_file() {
            bail!("volume '{}' is not a regular file", live_path.display());
        }
        let mode = meta.permissions().mode() & 0o7777;
        // Snapshots are full copies of volumes their owners may have
        // locked: both directories private, each snapshot no more open
        // than its source (and never more than owner read-write).
        for d in [
            self.snap_dir.parent().expect("has a parent"),
            &self.snap_dir,
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .with_context(|| format!("unable to create '{}'", d.display()))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("unable to make '{}' private", d.display()))?;
        }
        let new_path = self.new_path(volume);
        let _ = fs::remove_file(&new_path);
        let snap = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode & 0o600)
            .open(&new_path)
            .with_context(|| format!("unable to create snapshot '{}'", new_path.display()))?;
        match fiemap::reflink(&live, &snap) {
            Ok(()) => {
                let size = snap.metadata()?.len();
                let chunks = size.div_ceil(chunk_size);
                let base = prev
                    .map(|s| self.base_path(volume, s))
                    .filter(|p| p.is_file());
                let new_ext = fiemap::extents(&snap, &new_path)?;
                let plan = match (prev, base) {
                    (None, _) => Plan::Full {
                        data: data_map_from_extents(&new_ext, size, chunk_size),
                    },
                    (Some(_), Some(base)) => {
                        let bf = File::open(&base).with_context(|| {
                            format!("unable to open snapshot '{}'", base.display())
                        })?;
                        let old_size = bf.metadata()?.len();
                        let old_ext = fiemap::extents(&bf, &base)?;
                        let mut changed = ChunkMap::new(chunks);
                        for (s, e) in reflink::changed_ranges(&old_ext, &new_ext, size) {
                            changed.set_bytes(s, e, chunk_size);
                        }
                        mark_size_change(&mut changed, old_size, size, chunk_size);
                        Plan::Changed { changed }
                    }
                    (Some(_), None) => Plan::Compare {
                        data: data_map_from_extents(&new_ext, size, chunk_size),
                    },
                };
                let method = match plan {
                    Plan::Changed { .. } if reflink::encoded_bytes(&new_ext) > 0 => {
                        "reflink delta (compressed extents compared by content)"
                    }
                    Plan::Changed { .. } => "reflink delta",
                    Plan::Full { .. } => "reflink snapshot, full",
                    Plan::Compare { .. } => "reflink snapshot, no base: hash compare",
                };
                drop(snap);
                let file = File::open(&new_path)?;
                Ok(Snapshot {
                    file,
                    size,
                    plan,
                    method,
                    mode: Some(mode),
                })
            }
            Err(
                e @ (Errno::EOPNOTSUPP
                | Errno::EXDEV
                | Errno::EINVAL
                | Errno::ENOTTY
                | Errno::EPERM),
            ) => {
                drop(snap);
                let _ = fs::remove_file(&new_path);
                // No snapshot: the live image is read while it may change.
                // On a filesystem that has reflinks, an image that refuses
                // one (EINVAL: on Btrfs, a NOCOW file) is a surprise worth
                // a warning at every backup; a filesystem without them
                // (ext4) is the documented plain-file case, and its
                // summary line says "read live".
                if e == Errno::EINVAL {
                    crate::report::warn(format!(
                        "volume '{volume}': no snapshot taken, since the image cannot be reflinked (on Btrfs: a NOCOW file, chattr +C): it is read while live, so if anything writes to it during the backup (a running qube) the session holds no single moment of it; back it up while it is not in use, or clear NOCOW on a copy"
                    ));
                }
                let size = meta.len();
                let data = data_map_seek(&live, size, chunk_size)?;
                let plan = if prev.is_some() {
                    Plan::Compare { data }
                } else {
                    Plan::Full { data }
                };
                Ok(Snapshot {
                    file: live,
                    size,
                    plan,
                    method: "plain file (no reflink, read live): hash compare",
                    mode: Some(mode),
                })
            }
            Err(e) => {
                drop(snap);
                let _ = fs::remove_file(&new_path);
                Err(e).with_context(|| format!("unable to snapshot '{}'", live_path.display()))
            }
        }
    }

    /// After the receiver acknowledged `session`: the new snapshot becomes
    /// the base, older bases of this volume go.
    pub fn rotate(&self, volume: &str, session: &str) -> Result<()> {
        let new_path = self.new_path(volume);
        if !new_path.exists() {
            return Ok(()); // plain-file volume: no snapshot kept
        }
        let base = self.base_path(volume, session);
        fs::rename(&new_path, &base)
            .with_context(|| format!("unable to keep snapshot '{}'", base.display()))?;
        let prefix = format!("{}@", snap_stem(volume));
        for ent in fs::read_dir(&self.snap_dir)?.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with(".snap") && ent.path() != base {
                let _ = fs::remove_file(ent.path());
            }
        }
        sysio::atomic::fsync_dir(&self.snap_dir)
            .with_context(|| format!("unable to sync directory '{}'", self.snap_dir.display()))
    }

    /// Drops every snapshot of a volume.
    pub fn forget(&self, volume: &str) -> Result<()> {
        self.discard_new(volume);
        let prefix = format!("{}@", snap_stem(volume));
        if let Ok(rd) = fs::read_dir(&self.snap_dir) {
            for ent in rd.flatten() {
                if ent.file_name().to_string_lossy().starts_with(&prefix) {
                    fs::remove_file(ent.path())?;
                }
            }
        }
        Ok(())
    }

    /// Drops an unfinished snapshot (the base stays for the next run).
    pub fn discard_new(&self, volume: &str) {
        let _ = fs::remove_file(self.new_path(volume));
    }
}

/// The start of a volume's snapshot names: the volume's own name, or for
/// names too long to take a suffix within a file name's 255 bytes, a
/// digest of it (volume names may be 255 bytes long).
fn snap_stem(volume: &str) -> String {
    if volume.len() <= 200 {
        volume.to_string()
    } else {
        format!("#{}", blake3::hash(volume.as_bytes()).to_hex())
    }
}

/// On a size change the old and new tail chunks change length, so they
/// are always sent (even if their bytes did not change).
pub fn mark_size_change(map: &mut ChunkMap, old_size: u64, new_size: u64, chunk_size: u64) {
    if old_size != new_size {
        for s in [old_size, new_size] {
            if s % chunk_size != 0 {
                map.set_chunks(s / chunk_size, s / chunk_size);
            }
        }
    }
}

fn data_map_from_extents(ext: &[fiemap::Extent], size: u64, chunk_size: u64) -> ChunkMap {
    let mut m = ChunkMap::new(size.div_ceil(chunk_size));
    for e in ext {
        // Unwritten (preallocated) extents read as zeros.
        if e.flags & fiemap::FLAG_UNWRITTEN == 0 {
            m.set_bytes(e.logical, (e.logical + e.length).min(size), chunk_size);
        }
    }
    m
}

/// Chunks holding data, from SEEK_DATA/SEEK_HOLE (any filesystem; one that
/// does not support it reports the whole file as data).
pub fn data_map_seek(file: &File, size: u64, chunk_size: u64) -> Result<ChunkMap> {
    let mut m = ChunkMap::new(size.div_ceil(chunk_size));
    let fd = file.as_raw_fd();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let start = match lseek(fd, pos, Whence::SeekData) {
            Ok(s) => s,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        let end = lseek(fd, start, Whence::SeekHole).context("SEEK_HOLE")?;
        m.set_bytes(start as u64, (end as u64).min(size), chunk_size);
        pos = end;
    }
    Ok(m)
}
