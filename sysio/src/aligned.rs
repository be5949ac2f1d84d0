//! Page-aligned buffers for chunk data, as direct I/O (`O_DIRECT`) wants
//! on both sides, and the read loop that direct reads need.

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

/// Fills `buf` from positioned reads starting at `at` until it is full or
/// the source ends; returns the bytes read. For direct I/O: a count that
/// is not whole blocks means the end, because reading on from an unaligned
/// offset would be refused. `read_at` does the I/O (the caller's file).
pub fn read_direct(
    mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<usize>,
    buf: &mut [u8],
    at: u64,
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if !n.is_multiple_of(DIRECT_ALIGN) {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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

    #[test]
    fn direct_reads_stop_at_an_unaligned_end() {
        let src: Vec<u8> = (0..3 * DIRECT_ALIGN + 100).map(|i| i as u8).collect();
        // A source that returns at most one block per call, and fails
        // (like O_DIRECT) when asked at an unaligned offset.
        let mut calls = 0;
        let read = |b: &mut [u8], at: u64| {
            calls += 1;
            assert!(
                at.is_multiple_of(DIRECT_ALIGN as u64),
                "unaligned read at {at}"
            );
            let at = (at as usize).min(src.len());
            let n = b.len().min(DIRECT_ALIGN).min(src.len() - at);
            b[..n].copy_from_slice(&src[at..at + n]);
            Ok(n)
        };
        let mut buf = vec![0u8; 4 * DIRECT_ALIGN];
        let n = read_direct(read, &mut buf, 0).unwrap();
        assert_eq!(&buf[..n], &src[..]);
        assert_eq!(calls, 4);
    }
}
