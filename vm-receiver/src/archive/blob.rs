//! dom0's opaque records: the wrapped key and the sealed root. The
//! receiver stores them for dom0 and hands them back; it cannot read them
//! (they are sealed with keys it never sees) and does not try to.
//!
//! A record is replaced atomically: its parts go to a fixed temporary file
//! (`.upload-NAME`; one connection at a time holds the archive), which is
//! fsynced and renamed over `dom0.NAME` when the last part arrives. A cut
//! upload leaves the old record in place; the next upload truncates the
//! temporary file.

use super::{fsutil, Archive};
use crate::error::{Failure, Result};
use protocol::message::{Blob, ErrorCode};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn path(root: &Path, blob: Blob) -> PathBuf {
    root.join(format!("dom0.{}", blob.name()))
}

/// An upload in progress on this connection.
pub struct Upload {
    blob: Blob,
    tmp: PathBuf,
    file: File,
    len: u64,
}

impl Upload {
    pub fn start(a: &Archive, blob: Blob) -> Result<Upload> {
        let tmp = a.root.join(format!(".upload-{}", blob.name()));
        let file = File::create(&tmp).map_err(|e| Failure::io("create", &tmp, e))?;
        Ok(Upload {
            blob,
            tmp,
            file,
            len: 0,
        })
    }

    pub fn blob(&self) -> Blob {
        self.blob
    }

    pub fn append(&mut self, data: &[u8]) -> Result<()> {
        self.len += data.len() as u64;
        if self.len > self.blob.cap() {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "the {} record would exceed {} bytes",
                    self.blob.name(),
                    self.blob.cap()
                ),
            ));
        }
        self.file
            .write_all(data)
            .map_err(|e| Failure::io("write", &self.tmp, e))
    }

    /// Makes the uploaded record the archive's, durably.
    pub fn finish(self, a: &Archive) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Failure::io("sync", &self.tmp, e))?;
        let to = path(&a.root, self.blob);
        std::fs::rename(&self.tmp, &to).map_err(|e| Failure::io("replace", &to, e))?;
        fsutil::fsync_dir(&a.root)
    }
}

/// Whether `bytes` may be `blob`'s first record (at `arch-init`).
pub fn check_initial(blob: Blob, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 > blob.cap() || bytes.len() > protocol::message::DATA_PART {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!(
                "the {} record is too large ({} bytes, at most {})",
                blob.name(),
                bytes.len(),
                blob.cap().min(protocol::message::DATA_PART as u64)
            ),
        ));
    }
    Ok(())
}

/// Writes a record at `arch-init`, before the archive info exists.
pub fn write_initial(root: &Path, blob: Blob, bytes: &[u8]) -> Result<()> {
    check_initial(blob, bytes)?;
    fsutil::write_atomic(&path(root, blob), bytes)
}
