//! A file reopened with `O_DIRECT`, for transfers that should not pass
//! through the page cache (data read or written once: a backup's source,
//! a restore's target), with the fallback every caller needs.

use std::fs::{File, OpenOptions};
use std::sync::atomic::{AtomicBool, Ordering};

/// `f` opened a second time with `O_DIRECT` (via /proc, so block devices
/// and files alike, without the caller's path), for reading or writing
/// without a copy through the page cache. Absent where the filesystem
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

    /// No direct descriptor: every transfer goes through the caller's own
    /// (a pipe, say).
    pub fn none() -> Self {
        Direct {
            file: None,
            refused: AtomicBool::new(true),
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
            Err(e) if refused(&e) => {
                self.refused.store(true, Ordering::Relaxed);
                None
            }
            r => Some(r),
        }
    }
}

/// Whether an error means "this file or device refuses direct I/O here".
pub fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EINVAL)
}
