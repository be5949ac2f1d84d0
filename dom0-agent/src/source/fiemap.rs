//! FIEMAP and FICLONE: the two ioctls reflink volumes need.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

pub const FLAG_LAST: u32 = 0x1;
pub const FLAG_UNKNOWN: u32 = 0x2;
pub const FLAG_DELALLOC: u32 = 0x4;
pub const FLAG_ENCODED: u32 = 0x8;
pub const FLAG_NOT_ALIGNED: u32 = 0x100;
pub const FLAG_DATA_INLINE: u32 = 0x200;
pub const FLAG_DATA_TAIL: u32 = 0x400;
pub const FLAG_UNWRITTEN: u32 = 0x800;
/// Flags whose extents have no stable physical location to compare.
pub const FLAGS_UNCOMPARABLE: u32 =
    FLAG_UNKNOWN | FLAG_DELALLOC | FLAG_NOT_ALIGNED | FLAG_DATA_INLINE | FLAG_DATA_TAIL;

const FIEMAP_FLAG_SYNC: u32 = 0x1;

/// One extent as FIEMAP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

/// Extents per FIEMAP call: a fragmented multi-GiB image has thousands, and
/// each call costs a lookup from its start offset (56 bytes each: 224 KiB).
const BATCH: usize = 4096;

#[repr(C)]
struct Request {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    extents: [RawExtent; BATCH],
}

nix::ioctl_readwrite_bad!(
    fs_ioc_fiemap,
    nix::request_code_readwrite!(b'f', 11, 32),
    Request
);
nix::ioctl_write_int_bad!(
    ficlone,
    nix::request_code_write!(0x94, 9, std::mem::size_of::<nix::libc::c_int>())
);

/// All extents of `file`, synced first so delayed allocation is resolved.
pub fn extents(file: &File, path: &Path) -> Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut req = Box::new(Request {
        fm_start: 0,
        fm_length: u64::MAX,
        fm_flags: FIEMAP_FLAG_SYNC,
        fm_mapped_extents: 0,
        fm_extent_count: BATCH as u32,
        fm_reserved: 0,
        extents: [RawExtent::default(); BATCH],
    });
    loop {
        req.fm_length = u64::MAX - req.fm_start;
        req.fm_mapped_extents = 0;
        // SAFETY: `req` is a properly sized, initialized fiemap request with
        // room for `fm_extent_count` extents, as the ioctl requires.
        unsafe { fs_ioc_fiemap(file.as_raw_fd(), &mut *req) }
            .with_context(|| format!("FIEMAP on '{}'", path.display()))?;
        let n = req.fm_mapped_extents as usize;
        if n == 0 {
            break;
        }
        let mut last = false;
        for e in &req.extents[..n.min(BATCH)] {
            out.push(Extent {
                logical: e.fe_logical,
                physical: e.fe_physical,
                length: e.fe_length,
                flags: e.fe_flags,
            });
            last |= e.fe_flags & FLAG_LAST != 0;
        }
        let end = out.last().map(|e| e.logical + e.length).unwrap_or(0);
        if last || end <= req.fm_start {
            break;
        }
        req.fm_start = end;
        // Synced by the first call; later ones only continue the listing.
        req.fm_flags = 0;
    }
    Ok(out)
}

/// Makes `dst` a reflink clone of `src` (shares all extents; no data copied).
pub fn reflink(src: &File, dst: &File) -> nix::Result<()> {
    // SAFETY: FICLONE takes the source fd as its integer argument.
    unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd()) }.map(|_| ())
}
