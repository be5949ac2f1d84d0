//! Session manifests: address → (codec, keyed chunk id: keyed BLAKE3 of
//! the chunk's plaintext, `keys::Keys::chunk_id`), sorted by address.
//!
//! Both sides keep one per session in the same format, so both can stream
//! them and merge them with [`crate::merge`] without loading them whole.
//! Layout: 12-byte header (`SBKMAN01`, chunk size u32le), 41-byte entries
//! (addr u64le, codec u8, hash[32]), one 41-byte end record (codec 0xFF,
//! addr = entry count, hash[0..4] = CRC32 of everything before it).

use crate::chunk::{Codec, Hash};
use crate::stream::StreamError;
use crate::ProtocolError;
use std::io::{Read, Write};

pub const MAGIC: [u8; 8] = *b"SBKMAN01";
pub const HEADER_LEN: usize = 12;
pub const ENTRY_LEN: usize = 41;
const END_CODEC: u8 = 0xff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub addr: u64,
    pub codec: Codec,
    pub hash: Hash,
}

pub fn encode_entry(e: &Entry) -> [u8; ENTRY_LEN] {
    let mut b = [0u8; ENTRY_LEN];
    b[..8].copy_from_slice(&e.addr.to_le_bytes());
    b[8] = e.codec.to_byte();
    b[9..].copy_from_slice(&e.hash);
    b
}

/// Decodes one entry read at random (a binary search by address): the
/// end record and an unknown codec are errors. The caller checks order
/// and the file's CRC where it reads the whole file.
pub fn decode_entry(b: &[u8; ENTRY_LEN]) -> Result<Entry, ProtocolError> {
    let codec = Codec::from_byte(b[8])?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&b[9..]);
    Ok(Entry {
        addr: u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        codec,
        hash,
    })
}

/// Why a manifest could not be searched.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("bad header or length")]
    Shape,
    #[error("{0}")]
    Entry(#[from] ProtocolError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The number of entries of a manifest file of `len` bytes whose 12-byte
/// header is `head`, checked against the archive's chunk size.
pub fn entry_count(head: &[u8; HEADER_LEN], len: u64, chunk_size: u32) -> Result<u64, SearchError> {
    let body = len
        .checked_sub(HEADER_LEN as u64)
        .ok_or(SearchError::Shape)?;
    if head[..8] != MAGIC
        || head[8..] != chunk_size.to_le_bytes()
        || body < ENTRY_LEN as u64
        || !body.is_multiple_of(ENTRY_LEN as u64)
    {
        return Err(SearchError::Shape);
    }
    Ok(body / ENTRY_LEN as u64 - 1)
}

/// Finds the entry at `addr` of a manifest with `n` entries by binary
/// search, reading entries through `read(offset, buf)` (the caller's
/// I/O: a `pread` of the file). A few reads, nothing loaded whole; the
/// file's CRC is not checked (readers of the whole file check it).
pub fn find_entry(
    n: u64,
    addr: u64,
    mut read: impl FnMut(u64, &mut [u8; ENTRY_LEN]) -> std::io::Result<()>,
) -> Result<Option<Entry>, SearchError> {
    let (mut lo, mut hi) = (0u64, n);
    let mut b = [0u8; ENTRY_LEN];
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        read(HEADER_LEN as u64 + mid * ENTRY_LEN as u64, &mut b)?;
        let e = decode_entry(&b)?;
        match e.addr.cmp(&addr) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(Some(e)),
        }
    }
    Ok(None)
}

/// Writes a manifest, enforcing strictly ascending, aligned addresses.
pub struct ManifestWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    count: u64,
    chunk_size: u32,
    last: Option<u64>,
}

impl<W: Write> ManifestWriter<W> {
    pub fn new(mut out: W, chunk_size: u32) -> std::io::Result<Self> {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8..].copy_from_slice(&chunk_size.to_le_bytes());
        out.write_all(&h)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        Ok(ManifestWriter {
            out,
            crc,
            count: 0,
            chunk_size,
            last: None,
        })
    }

    pub fn push(&mut self, e: &Entry) -> Result<(), StreamError> {
        if let Some(prev) = self.last {
            if e.addr <= prev {
                return Err(ProtocolError::ManifestOrder { prev, next: e.addr }.into());
            }
        }
        if !e.addr.is_multiple_of(self.chunk_size as u64) {
            return Err(ProtocolError::UnalignedAddress {
                addr: e.addr,
                chunk_size: self.chunk_size,
            }
            .into());
        }
        let b = encode_entry(e);
        self.crc.update(&b);
        self.out.write_all(&b)?;
        self.last = Some(e.addr);
        self.count += 1;
        Ok(())
    }

    /// Pushes what is buffered to the writer below (a reader of the file
    /// then sees every entry pushed so far, `count()` of them).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Writes the end record and hands back the writer (to flush and fsync).
    pub fn finish(mut self) -> std::io::Result<W> {
        let mut b = [0u8; ENTRY_LEN];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8] = END_CODEC;
        b[9..13].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        self.out.write_all(&b)?;
        Ok(self.out)
    }
}

/// Streams a manifest's entries, validating order, alignment, the end
/// record and the checksum. Yields an error (once) instead of `None` if the
/// file is truncated or altered.
pub struct ManifestReader<R: Read> {
    inp: R,
    crc: crc32fast::Hasher,
    count: u64,
    chunk_size: u32,
    last: Option<u64>,
    done: bool,
}

impl<R: Read> ManifestReader<R> {
    pub fn new(mut inp: R) -> Result<Self, StreamError> {
        let mut h = [0u8; HEADER_LEN];
        if read_full(&mut inp, &mut h)? != HEADER_LEN || h[..8] != MAGIC {
            return Err(ProtocolError::ManifestMagic.into());
        }
        let chunk_size =
            crate::validate_chunk_size(u32::from_le_bytes([h[8], h[9], h[10], h[11]]))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&h);
        Ok(ManifestReader {
            inp,
            crc,
            count: 0,
            chunk_size,
            last: None,
            done: false,
        })
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    fn next_entry(&mut self) -> Result<Option<Entry>, StreamError> {
        let mut b = [0u8; ENTRY_LEN];
        let n = read_full(&mut self.inp, &mut b)?;
        if n != ENTRY_LEN {
            return Err(ProtocolError::Truncated("manifest").into());
        }
        let addr = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        if b[8] == END_CODEC {
            let crc = u32::from_le_bytes(b[9..13].try_into().expect("4 bytes"));
            if addr != self.count
                || crc != self.crc.clone().finalize()
                || b[13..].iter().any(|&x| x != 0)
            {
                return Err(ProtocolError::ManifestChecksum.into());
            }
            let mut extra = [0u8; 1];
            if read_full(&mut self.inp, &mut extra)? != 0 {
                return Err(
                    ProtocolError::malformed("manifest", "data after the end record").into(),
                );
            }
            return Ok(None);
        }
        self.crc.update(&b);
        let codec = Codec::from_byte(b[8])?;
        if let Some(prev) = self.last {
            if addr <= prev {
                return Err(ProtocolError::ManifestOrder { prev, next: addr }.into());
            }
        }
        if !addr.is_multiple_of(self.chunk_size as u64) {
            return Err(ProtocolError::UnalignedAddress {
                addr,
                chunk_size: self.chunk_size,
            }
            .into());
        }
        self.last = Some(addr);
        self.count += 1;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[9..]);
        Ok(Some(Entry { addr, codec, hash }))
    }
}

impl<R: Read> Iterator for ManifestReader<R> {
    type Item = Result<Entry, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads until `buf` is full or EOF; returns how much was read.
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(entries: &[Entry]) -> Vec<u8> {
        let mut w = ManifestWriter::new(Vec::new(), 65536).unwrap();
        for e in entries {
            w.push(e).unwrap();
        }
        w.finish().unwrap()
    }

    fn e(i: u64, codec: Codec) -> Entry {
        Entry {
            addr: i * 65536,
            codec,
            hash: [i as u8; 32],
        }
    }

    #[test]
    fn entries_are_found_by_binary_search() {
        const CS: u32 = 65536;
        let es: Vec<Entry> = (0..100)
            .filter(|a| a % 3 != 1)
            .map(|a| {
                e(
                    a,
                    if a % 5 == 0 {
                        Codec::Zero
                    } else {
                        Codec::Sealed
                    },
                )
            })
            .collect();
        let b = write(&es);
        let head: [u8; HEADER_LEN] = b[..HEADER_LEN].try_into().unwrap();
        let n = entry_count(&head, b.len() as u64, CS).unwrap();
        assert_eq!(n, es.len() as u64);
        let read = |off: u64, buf: &mut [u8; ENTRY_LEN]| {
            buf.copy_from_slice(&b[off as usize..off as usize + ENTRY_LEN]);
            Ok(())
        };
        for a in 0..101u64 {
            let want = es.iter().find(|x| x.addr == a * CS as u64).copied();
            assert_eq!(find_entry(n, a * CS as u64, read).unwrap(), want, "{a}");
        }
        assert!(entry_count(&head, b.len() as u64 - 1, CS).is_err());
        assert!(entry_count(&head, b.len() as u64, CS * 2).is_err());
    }

    #[test]
    fn round_trip() {
        let es = vec![e(0, Codec::Sealed), e(3, Codec::Zero), e(9, Codec::Sealed)];
        let b = write(&es);
        assert_eq!(b.len(), HEADER_LEN + 4 * ENTRY_LEN);
        let r: Vec<Entry> = ManifestReader::new(&b[..])
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(r, es);
    }

    #[test]
    fn writer_rejects_disorder() {
        let mut w = ManifestWriter::new(Vec::new(), 65536).unwrap();
        w.push(&e(2, Codec::Sealed)).unwrap();
        assert!(w.push(&e(2, Codec::Sealed)).is_err());
        assert!(w.push(&e(1, Codec::Sealed)).is_err());
    }

    #[test]
    fn every_truncation_and_flip_fails() {
        let b = write(&[e(0, Codec::Sealed), e(1, Codec::Sealed)]);
        for cut in 0..b.len() {
            let r = ManifestReader::new(&b[..cut]).and_then(|r| r.collect::<Result<Vec<_>, _>>());
            assert!(r.is_err(), "cut at {cut} accepted");
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            let r = ManifestReader::new(&c[..]).and_then(|r| r.collect::<Result<Vec<_>, _>>());
            assert!(r.is_err(), "flip at {i} accepted");
        }
    }

    proptest! {
        #[test]
        fn reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(r) = ManifestReader::new(&bytes[..]) {
                let _ = r.collect::<Vec<_>>();
            }
        }
    }
}
