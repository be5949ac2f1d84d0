//! Crash-safe writes for dom0's own metadata.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Replaces `path` with `bytes`: temp file, fsync, rename, fsync directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path without a parent")?;
    let tmp = dir.join(format!(
        ".tmp-{}",
        path.file_name()
            .context("path without a name")?
            .to_string_lossy()
    ));
    let res = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("unable to write '{}'", path.display()));
    }
    fsync_dir(dir)
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("unable to sync directory '{}'", dir.display()))
}

/// `f` opened a second time with `O_DIRECT` (via /proc, so block devices
/// and files alike, without the caller's path), for reading or writing
/// without a copy through dom0's page cache. Absent where the filesystem
/// refuses direct I/O (tmpfs, some FUSE), and given up for good the first
/// time a transfer is refused (`EINVAL`: an alignment the device does not
/// take); callers then use `f` itself.
pub struct Direct {
    file: Option<File>,
    refused: AtomicBool,
}

impl Direct {
    pub fn reopen(f: &File, write: bool) -> Self {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(nix::libc::O_DIRECT)
            .open(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .ok();
        Direct {
            file,
            refused: AtomicBool::new(false),
        }
    }

    /// Runs `op` on the direct descriptor. None if there is none, it was
    /// given up, or `op` got `EINVAL` (then it is given up): the caller
    /// does the transfer through the page cache instead.
    pub fn try_io<T>(
        &self,
        op: impl FnOnce(&File) -> std::io::Result<T>,
    ) -> Option<std::io::Result<T>> {
        let f = self.file.as_ref()?;
        if self.refused.load(Ordering::Relaxed) {
            return None;
        }
        match op(f) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                self.refused.store(true, Ordering::Relaxed);
                None
            }
            r => Some(r),
        }
    }
}
