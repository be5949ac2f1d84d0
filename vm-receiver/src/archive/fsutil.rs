//! Crash-safe file primitives: temp file → fsync → rename → fsync directory.

use crate::error::{Failure, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().expect("archive paths have a parent");
    let name = path
        .file_name()
        .expect("archive paths have a name")
        .to_string_lossy();
    let tmp = dir.join(format!(".tmp-{name}"));
    let res = (|| {
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
        return Err(Failure::io("write", path, e));
    }
    fsync_dir(dir)
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Failure::io("sync directory", dir, e))
}

/// Flushes every dirty page of the filesystem holding `dir`: one call at
/// commit instead of one fsync per chunk file.
pub fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Failure::io("open", dir, e))?;
    use std::os::fd::AsRawFd;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| Failure::io("sync filesystem of", dir, e.into()))
}

pub fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Failure::io(&format!("read {what}"), path, e))
}
