//! Changed ranges between two reflink snapshots, from FIEMAP alone.
//!
//! A logical range is unchanged when both files map it and `physical -
//! logical` is the same on both sides (with the same written/unwritten
//! state): a reflink clone shares the old blocks, and every write after it
//! goes to new blocks. The comparison is per range, not per extent record,
//! because Btrfs reports an old clone as one big extent while the rewritten
//! file shows it in pieces. A hole on both sides is unchanged; anything
//! else (hole on one side, unknown, delalloc, inline) is changed.
//!
//! Compressed (ENCODED) extents are always reported as changed. FIEMAP
//! gives the compressed extent's start for every reference into it, so a
//! range re-cloned from another part of the same extent (FICLONERANGE,
//! `copy_file_range`, `btrfs receive`), or from an older copy of it, keeps
//! a record identical to the old one while its bytes differ: an identical
//! record proves nothing. The backup compares every changed chunk with
//! the newest session's keyed id before sealing it, so these chunks are
//! read and hashed, and only those whose bytes differ are stored.

use super::fiemap::{Extent, FLAGS_UNCOMPARABLE, FLAG_ENCODED, FLAG_UNWRITTEN};

/// Bytes of `extents` in compressed (ENCODED) extents: what a delta must
/// compare by content.
pub fn encoded_bytes(extents: &[Extent]) -> u64 {
    extents
        .iter()
        .filter(|e| e.flags & FLAG_ENCODED != 0)
        .map(|e| e.length)
        .sum()
}

/// Changed byte ranges `[start, end)` within `[0, size)`, ascending and
/// coalesced. `old` and `new` are the extents of the base and the new
/// snapshot, sorted by logical offset (as FIEMAP returns them).
pub fn changed_ranges(old: &[Extent], new: &[Extent], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let (mut i, mut j) = (0usize, 0usize);
    let mut pos = 0u64;
    while pos < size {
        while i < old.len() && old[i].logical + old[i].length <= pos {
            i += 1;
        }
        while j < new.len() && new[j].logical + new[j].length <= pos {
            j += 1;
        }
        let a = old.get(i).filter(|e| e.logical <= pos);
        let b = new.get(j).filter(|e| e.logical <= pos);
        // End of the segment: the next boundary of either list.
        let bound = |list: &[Extent], k: usize, cur: Option<&Extent>| match cur {
            Some(e) => e.logical + e.length,
            None => list.get(k).map_or(u64::MAX, |e| e.logical),
        };
        let end = bound(old, i, a).min(bound(new, j, b)).min(size);
        let unchanged = match (a, b) {
            (None, None) => true,
            (Some(x), Some(y)) => same_data(x, y),
            _ => false,
        };
        if !unchanged {
            match out.last_mut() {
                Some(last) if last.1 == pos => last.1 = end,
                _ => out.push((pos, end)),
            }
        }
        pos = end;
    }
    out
}

fn same_data(x: &Extent, y: &Extent) -> bool {
    if (x.flags | y.flags) & FLAGS_UNCOMPARABLE != 0 {
        return false;
    }
    if (x.flags | y.flags) & FLAG_ENCODED != 0 {
        return false;
    }
    (x.flags & FLAG_UNWRITTEN) == (y.flags & FLAG_UNWRITTEN)
        && x.physical.wrapping_sub(x.logical) == y.physical.wrapping_sub(y.logical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags: 0,
        }
    }

    #[test]
    fn btrfs_big_clone_vs_split_rewrite() {
        // Old: one 1 MiB extent. New: same blocks but 64K..128K rewritten
        // elsewhere: three records. Only the rewritten range changed.
        let old = [e(0, 1 << 30, 1 << 20)];
        let new = [
            e(0, 1 << 30, 65536),
            e(65536, 5 << 30, 65536),
            e(131072, (1 << 30) + 131072, (1 << 20) - 131072),
        ];
        assert_eq!(changed_ranges(&old, &new, 1 << 20), vec![(65536, 131072)]);
    }

    #[test]
    fn holes_and_growth() {
        let old = [e(0, 4096, 8192)];
        let new = [e(0, 4096, 8192), e(20480, 99999 * 4096, 4096)];
        assert_eq!(changed_ranges(&old, &new, 32768), vec![(20480, 24576)]);
        // hole on one side only
        assert_eq!(changed_ranges(&old, &[], 8192), vec![(0, 8192)]);
        assert_eq!(changed_ranges(&[], &[], 8192), vec![]);
    }

    #[test]
    fn flags() {
        let mut enc_old = e(0, 4096, 131072);
        enc_old.flags = FLAG_ENCODED;
        let mut enc_new = e(0, 4096, 65536);
        enc_new.flags = FLAG_ENCODED;
        // a partial reference into a compressed extent reports the same start
        assert_eq!(
            changed_ranges(&[enc_old], &[enc_new, e(65536, 4096 * 100, 65536)], 131072),
            vec![(0, 131072)]
        );
        // An identical record of a compressed extent is no proof either:
        // a range re-cloned from elsewhere in the same extent keeps it.
        assert_eq!(
            changed_ranges(&[enc_old], &[enc_old], 131072),
            vec![(0, 131072)]
        );
        // Only the encoded part: a plain extent beside it still compares.
        let mut enc = e(65536, 4096, 65536);
        enc.flags = FLAG_ENCODED;
        let plain = e(0, 1 << 20, 65536);
        assert_eq!(
            changed_ranges(&[plain, enc], &[plain, enc], 131072),
            vec![(65536, 131072)]
        );
        let mut unwritten = e(0, 4096, 8192);
        unwritten.flags = FLAG_UNWRITTEN;
        assert_eq!(
            changed_ranges(&[unwritten], &[e(0, 4096, 8192)], 8192),
            vec![(0, 8192)]
        );
        let mut delalloc = e(0, 0, 8192);
        delalloc.flags = super::super::fiemap::FLAG_DELALLOC;
        assert_eq!(
            changed_ranges(&[delalloc], &[delalloc], 8192),
            vec![(0, 8192)]
        );
    }
}
