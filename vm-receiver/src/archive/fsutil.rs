//! The receiver's view of sysio's crash-safe file primitives: the same
//! operations, with failures turned into typed [`Failure`]s that name the
//! path (and carry `NoSpace` for a full disk).

use crate::error::{Failure, Result};
use std::path::Path;

/// Replaces `path` with `bytes` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    sysio::atomic::write_atomic(path, bytes).map_err(|e| Failure::io("write", path, e))
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    sysio::atomic::fsync_dir(dir).map_err(|e| Failure::io("sync directory", dir, e))
}

/// Flushes every dirty page of the filesystem holding `dir`: one call at
/// commit instead of one fsync per chunk file.
pub fn syncfs(dir: &Path) -> Result<()> {
    sysio::atomic::syncfs(dir).map_err(|e| Failure::io("sync filesystem of", dir, e))
}

pub fn read_file(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Failure::io(&format!("read {what}"), path, e))
}
