//! The chunk envelope's frame, as both sides read it: its kinds, its size
//! bounds and its CRC. Sealing and opening (which need the key) are dom0's,
//! in `sealed::envelope`; the receiver, which has no key, checks only what
//! is here when a chunk arrives and in an archive check (bit rot,
//! truncation, a kind it cannot keep).
//!
//! Layout (see `FORMAT.md`): `kind u8 | [nonce 24] | body | [tag 16] |
//! crc32le` for kind 1 (encrypted), `kind u8 | body | mac 16 | crc32le`
//! for kind 3 (clear, authenticated), `kind u8 | body | crc32le` for kind
//! 2 (clear, as archives made before kind 3 hold it); body =
//! `compression u8 | bytes`.

/// Envelope kinds.
pub const KIND_AEAD: u8 = 1;
/// Clear, no MAC: written before kind 3, read only where the archive may
/// hold it (dom0 refuses it in an archive made since).
pub const KIND_CLEAR: u8 = 2;
/// Clear with a keyed MAC over its place and body, checked before the body
/// is decompressed.
pub const KIND_CLEAR_MAC: u8 = 3;
/// Body compression flags.
pub const STORED: u8 = 0;
pub const ZSTD: u8 = 1;
/// zstd, padded: `n u32le | zstd frame (n bytes) | zero bytes`, so that the
/// stored size falls in a bucket (archives made with `--pad-sizes`).
pub const ZSTD_PADDED: u8 = 2;

/// The stored sizes of a padded archive are multiples of this (for a
/// chunk of `raw_len` bytes): a sixteenth of the chunk, at least 4 KiB.
pub fn pad_bucket(raw_len: usize) -> usize {
    (raw_len / 16).max(4096)
}
pub const CRC_LEN: usize = 4;
/// XChaCha20-Poly1305's nonce and tag; the clear MAC is as long as a tag.
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// Bytes an envelope adds to a chunk stored uncompressed, at most.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 1 + TAG_LEN + CRC_LEN;

/// The largest envelope of a chunk of `raw_len` bytes (compression is
/// kept only when it saves space).
pub fn max_stored(raw_len: usize) -> usize {
    raw_len + OVERHEAD
}

/// The smallest well-formed envelope.
pub const MIN_STORED: usize = 1 + 1 + CRC_LEN;

/// The room sealing needs for `len` plaintext bytes.
pub fn sealed_bound(len: usize) -> usize {
    OVERHEAD + zstd::zstd_safe::compress_bound(len).max(len)
}

/// Why a stored chunk did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("envelope of {stored} bytes for a chunk of {expected} bytes")]
    Size { stored: usize, expected: usize },
    #[error("envelope checksum mismatch (damaged)")]
    Crc,
    #[error("unknown envelope kind {0}")]
    Kind(u8),
    #[error("a {found} chunk in an archive whose chunks are {expected}")]
    Mode {
        found: &'static str,
        expected: &'static str,
    },
    #[error("does not authenticate (altered, or from another volume, address or archive)")]
    Authentication,
    #[error("unknown compression flag {0}")]
    Compression(u8),
    #[error("does not decompress: {0}")]
    Decompress(String),
    #[error("decompresses to {got} bytes, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("its keyed id does not match the manifest (stale or swapped chunk)")]
    Id,
}

/// The envelope's frame: its kind, after checking the size and the CRC.
/// All the receiver (no key) can check of a chunk.
pub fn check_stored(stored: &[u8], raw_len: usize) -> Result<u8, OpenError> {
    if stored.len() < MIN_STORED || stored.len() > max_stored(raw_len) {
        return Err(OpenError::Size {
            stored: stored.len(),
            expected: raw_len,
        });
    }
    let (body, crc) = stored.split_at(stored.len() - CRC_LEN);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(OpenError::Crc);
    }
    let short = |least: usize| body.len() < least;
    match body[0] {
        KIND_AEAD if short(1 + NONCE_LEN + 1 + TAG_LEN) => Err(OpenError::Size {
            stored: stored.len(),
            expected: raw_len,
        }),
        KIND_CLEAR_MAC if short(1 + 1 + TAG_LEN) => Err(OpenError::Size {
            stored: stored.len(),
            expected: raw_len,
        }),
        k @ (KIND_AEAD | KIND_CLEAR | KIND_CLEAR_MAC) => Ok(k),
        k => Err(OpenError::Kind(k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(mut e: Vec<u8>) -> Vec<u8> {
        let crc = crc32fast::hash(&e);
        e.extend_from_slice(&crc.to_le_bytes());
        e
    }

    #[test]
    fn the_frame_is_all_the_receiver_checks() {
        assert_eq!(
            check_stored(&framed(vec![KIND_CLEAR, STORED, 7]), 1),
            Ok(KIND_CLEAR)
        );
        assert!(matches!(
            check_stored(&[9, 0, 0, 0, 0, 0], 4),
            Err(OpenError::Crc)
        ));
        assert_eq!(
            check_stored(&framed(vec![7, 0]), 4),
            Err(OpenError::Kind(7))
        );
        // A kind-3 envelope too short to hold its MAC, a kind-1 one its
        // nonce and tag.
        assert!(matches!(
            check_stored(&framed(vec![KIND_CLEAR_MAC, 0, 1, 2]), 4),
            Err(OpenError::Size { .. })
        ));
        assert!(matches!(
            check_stored(&framed(vec![KIND_AEAD; 30]), 4096),
            Err(OpenError::Size { .. })
        ));
        let mut m = vec![KIND_CLEAR_MAC, STORED, 1];
        m.extend_from_slice(&[0; TAG_LEN]);
        assert_eq!(check_stored(&framed(m), 1), Ok(KIND_CLEAR_MAC));
    }
}
