//! The chunk envelope: how a chunk's plaintext becomes the bytes that are
//! stored and sent, and back. The one place that seals and opens chunks:
//! the agent seals during a backup and opens during a restore or verify,
//! the receiver opens during an archive check. Encryption and keyed chunk
//! ids belong here, and nowhere else.
//!
//! Sealing hashes the plaintext (SHA-256, what dom0's manifest pins) and
//! compresses it with zstd when that saves space; opening decompresses
//! into a caller's buffer of exactly the chunk's length (a decompression
//! bomb is an error, never an allocation) and checks the hash. Pure: no
//! I/O, no allocation per chunk (the caller owns the buffers).

use crate::chunk::{Codec, Hash};
use sha2::{Digest, Sha256};

/// SHA-256 of a chunk's plaintext.
pub fn hash(plain: &[u8]) -> Hash {
    Sha256::digest(plain).into()
}

/// Seals chunks: one per worker thread (it holds a zstd context).
pub struct Sealer {
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Sealer {
    /// `level`: the zstd level, None for no compression.
    pub fn new(level: Option<i32>) -> std::io::Result<Self> {
        Ok(Sealer {
            zstd: level.map(zstd::bulk::Compressor::new).transpose()?,
        })
    }

    /// Seals a non-zero chunk: its hash, and how it is stored. With
    /// `Codec::Zstd` the stored bytes are in `out` (cleared first), with
    /// `Codec::Raw` they are `plain` itself (no copy). `out` must have
    /// room for `zstd::zstd_safe::compress_bound(plain.len())` bytes.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> std::io::Result<(Codec, Hash)> {
        let h = hash(plain);
        let codec = match &mut self.zstd {
            Some(c) => {
                out.clear();
                let n = c.compress_to_buffer(plain, out)?;
                if n < plain.len() {
                    Codec::Zstd
                } else {
                    Codec::Raw
                }
            }
            None => Codec::Raw,
        };
        Ok((codec, h))
    }
}

/// The room a sealed chunk of `len` plaintext bytes may need in `out`.
pub fn sealed_bound(len: usize) -> usize {
    zstd::zstd_safe::compress_bound(len)
}

/// Why a stored chunk did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("does not decompress: {0}")]
    Decompress(String),
    #[error("decompresses to {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("{codec:?} record of {stored} bytes for a chunk of {expected} bytes")]
    Record {
        codec: Codec,
        stored: usize,
        expected: usize,
    },
    #[error("its SHA-256 does not match the manifest")]
    Hash,
}

/// Opens a stored chunk of `raw_len` plaintext bytes: decompresses (into
/// `plain`, which must hold at least `raw_len` bytes) and checks the hash.
/// Returns the plaintext, which is `stored` itself for a raw chunk.
pub fn open<'a>(
    codec: Codec,
    stored: &'a [u8],
    raw_len: usize,
    expect: &Hash,
    plain: &'a mut [u8],
) -> Result<&'a [u8], OpenError> {
    let bytes: &[u8] = match codec {
        Codec::Raw if stored.len() == raw_len => stored,
        Codec::Zstd => {
            // Bounded: output larger than the chunk is an error.
            let n = zstd::bulk::decompress_to_buffer(stored, &mut plain[..raw_len])
                .map_err(|e| OpenError::Decompress(e.to_string()))?;
            if n != raw_len {
                return Err(OpenError::Length {
                    got: n,
                    expected: raw_len,
                });
            }
            &plain[..raw_len]
        }
        c => {
            return Err(OpenError::Record {
                codec: c,
                stored: stored.len(),
                expected: raw_len,
            })
        }
    };
    if hash(bytes) != *expect {
        return Err(OpenError::Hash);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seal_all(level: Option<i32>, plain: &[u8]) -> (Codec, Hash, Vec<u8>) {
        let mut s = Sealer::new(level).unwrap();
        let mut out = Vec::with_capacity(sealed_bound(plain.len()));
        let (c, h) = s.seal(plain, &mut out).unwrap();
        let stored = if c == Codec::Zstd {
            out
        } else {
            plain.to_vec()
        };
        (c, h, stored)
    }

    proptest! {
        #[test]
        fn round_trip_and_no_flip_opens_wrong(
            plain in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 1..4096),
            level in prop_oneof![Just(None), Just(Some(3))],
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (c, h, stored) = seal_all(level, &plain);
            let mut buf = vec![0u8; plain.len()];
            prop_assert_eq!(open(c, &stored, plain.len(), &h, &mut buf).unwrap(), &plain[..]);
            let mut bad = stored.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1 << bit;
            // A flip fails to open, or (in a zstd field that does not
            // change the output, like the window size) opens to exactly
            // the original: never to a wrong byte.
            if let Ok(p) = open(c, &bad, plain.len(), &h, &mut buf) {
                prop_assert_eq!(p, &plain[..]);
                prop_assert_eq!(c, Codec::Zstd);
            }
        }
    }

    #[test]
    fn compressible_data_is_stored_compressed() {
        let (c, _, stored) = seal_all(Some(3), &[7u8; 65536]);
        assert_eq!(c, Codec::Zstd);
        assert!(stored.len() < 1000);
        let (c, _, _) = seal_all(None, &[7u8; 65536]);
        assert_eq!(c, Codec::Raw);
    }

    #[test]
    fn a_bomb_or_a_short_record_is_refused() {
        let big = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            open(Codec::Zstd, &big, 4096, &[0; 32], &mut buf),
            Err(OpenError::Decompress(_))
        ));
        assert!(matches!(
            open(Codec::Raw, b"abc", 4, &[0; 32], &mut buf),
            Err(OpenError::Record { .. })
        ));
        assert!(matches!(
            open(Codec::Zero, b"", 4, &[0; 32], &mut buf),
            Err(OpenError::Record { .. })
        ));
    }
}
