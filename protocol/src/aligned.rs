//! A buffer for chunk data whose first byte sits on a page boundary, as
//! direct I/O (`O_DIRECT`) wants on both sides. Pure memory: no I/O here.

/// Alignment of direct-I/O buffers, offsets and lengths: the largest
/// logical block size in use (4Kn disks); 512-byte devices accept it too.
pub const DIRECT_ALIGN: usize = 4096;

/// A fixed-capacity buffer starting on a `DIRECT_ALIGN` boundary (a `Vec`
/// over-allocated by one alignment unit, so no unsafe code), with a
/// current length for callers that fill it piecewise.
pub struct AlignedBuf {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(cap: usize) -> Self {
        let v = vec![0u8; cap + DIRECT_ALIGN];
        let off = v.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuf { v, off, len: 0 }
    }

    pub fn capacity(&self) -> usize {
        self.v.len() - DIRECT_ALIGN
    }

    /// The current content.
    pub fn as_slice(&self) -> &[u8] {
        &self.v[self.off..self.off + self.len]
    }

    /// Makes the first `n` bytes the content and returns them for filling.
    /// Not cleared: callers overwrite them.
    pub fn fill(&mut self, n: usize) -> &mut [u8] {
        assert!(n <= self.capacity(), "aligned buffer overflow");
        self.len = n;
        &mut self.v[self.off..self.off + n]
    }

    /// The whole capacity, whatever the current length.
    pub fn whole(&self) -> &[u8] {
        &self.v[self.off..self.off + self.capacity()]
    }

    /// The whole capacity, mutable.
    pub fn whole_mut(&mut self) -> &mut [u8] {
        let cap = self.capacity();
        &mut self.v[self.off..self.off + cap]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_bounded() {
        for cap in [0, 1, 4096, 65536 + 17] {
            let mut b = AlignedBuf::new(cap);
            assert_eq!(b.capacity(), cap);
            assert_eq!(b.whole().as_ptr() as usize % DIRECT_ALIGN, 0);
            assert_eq!(b.fill(cap).len(), cap);
            assert_eq!(b.as_slice().len(), cap);
            assert_eq!(b.whole_mut().len(), cap);
        }
        let r = std::panic::catch_unwind(|| AlignedBuf::new(8).fill(9).len());
        assert!(r.is_err());
    }
}
