//! Frame layout: `len:u32le | kind:u8 | payload[len] | crc32:u32le`.
//!
//! The CRC covers the kind byte and the payload. `len` is checked against
//! [`MAX_PAYLOAD`] from the 5-byte header alone, before anything is allocated.

use crate::{ProtocolError, MAX_CHUNK_SIZE};

/// Bytes before the payload: length and kind.
pub const HEADER_LEN: usize = 5;
/// Bytes after the payload: the CRC32.
pub const TRAILER_LEN: usize = 4;
/// Largest payload a frame may carry: a whole uncompressed chunk plus room
/// for its header (a chunk that does not compress travels raw).
pub const MAX_PAYLOAD: u32 = MAX_CHUNK_SIZE + 4096;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Handshake, both directions (see [`crate::message::Hello`]).
    Hello = 0x01,
    /// A request from the agent.
    Request = 0x02,
    /// A reply from the receiver.
    Reply = 0x03,
    /// A chunk record: header then raw stored bytes (see [`crate::chunk`]).
    Chunk = 0x04,
}

impl FrameKind {
    pub fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        Ok(match b {
            0x01 => FrameKind::Hello,
            0x02 => FrameKind::Request,
            0x03 => FrameKind::Reply,
            0x04 => FrameKind::Chunk,
            other => return Err(ProtocolError::UnknownFrameKind(other)),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "hello",
            FrameKind::Request => "request",
            FrameKind::Reply => "reply",
            FrameKind::Chunk => "chunk",
        }
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub len: u32,
}

/// Validates the 5 header bytes: cap first, then kind.
pub fn decode_header(h: &[u8; HEADER_LEN]) -> Result<FrameHeader, ProtocolError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::FrameTooLong {
            len,
            cap: MAX_PAYLOAD,
        });
    }
    Ok(FrameHeader {
        kind: FrameKind::from_byte(h[4])?,
        len,
    })
}

/// The header bytes for a frame of `kind` whose payload is `len` bytes.
pub fn encode_header(kind: FrameKind, len: usize) -> Result<[u8; HEADER_LEN], ProtocolError> {
    if len > MAX_PAYLOAD as usize {
        return Err(ProtocolError::FrameTooLong {
            len: len.min(u32::MAX as usize) as u32,
            cap: MAX_PAYLOAD,
        });
    }
    let l = (len as u32).to_le_bytes();
    Ok([l[0], l[1], l[2], l[3], kind as u8])
}

/// CRC32 over the kind byte and the payload parts.
pub fn checksum(kind: FrameKind, parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind as u8]);
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Checks a received frame's trailer.
pub fn check_crc(
    kind: FrameKind,
    payload: &[u8],
    trailer: [u8; TRAILER_LEN],
) -> Result<(), ProtocolError> {
    let expected = u32::from_le_bytes(trailer);
    let actual = checksum(kind, &[payload]);
    if expected != actual {
        return Err(ProtocolError::BadChecksum {
            kind: kind as u8,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Encodes a whole frame into a buffer (tests, fuzzers, small records).
pub fn encode_frame(kind: FrameKind, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&encode_header(kind, payload.len())?);
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum(kind, &[payload]).to_le_bytes());
    Ok(out)
}

/// Decodes one whole frame from the front of `buf`.
///
/// Returns the kind, the payload and the number of bytes consumed, or
/// `Truncated` if `buf` ends inside the frame.
pub fn decode_frame(buf: &[u8]) -> Result<(FrameKind, &[u8], usize), ProtocolError> {
    let h: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(ProtocolError::Truncated("header"))?;
    let hdr = decode_header(h)?;
    let end = HEADER_LEN + hdr.len as usize;
    let payload = buf
        .get(HEADER_LEN..end)
        .ok_or(ProtocolError::Truncated("payload"))?;
    let t: [u8; TRAILER_LEN] = buf
        .get(end..end + TRAILER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(ProtocolError::Truncated("checksum"))?;
    check_crc(hdr.kind, payload, t)?;
    Ok((hdr.kind, payload, end + TRAILER_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let f = encode_frame(FrameKind::Reply, b"hello").unwrap();
        assert_eq!(f.len(), HEADER_LEN + 5 + TRAILER_LEN);
        let (k, p, used) = decode_frame(&f).unwrap();
        assert_eq!((k, p, used), (FrameKind::Reply, &b"hello"[..], f.len()));
    }

    #[test]
    fn cap_checked_before_anything_else() {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        h[4] = 0xee; // also a bad kind: the length must be reported first
        assert!(matches!(
            decode_header(&h),
            Err(ProtocolError::FrameTooLong { .. })
        ));
    }

    #[test]
    fn unknown_kind_and_bad_crc() {
        let mut f = encode_frame(FrameKind::Chunk, b"abc").unwrap();
        f[4] = 0x7f;
        assert_eq!(
            decode_frame(&f).unwrap_err(),
            ProtocolError::UnknownFrameKind(0x7f)
        );
        let mut f = encode_frame(FrameKind::Chunk, b"abc").unwrap();
        f[6] ^= 1;
        assert!(matches!(
            decode_frame(&f),
            Err(ProtocolError::BadChecksum { .. })
        ));
    }

    #[test]
    fn every_truncation_is_typed() {
        let f = encode_frame(FrameKind::Request, b"0123456789").unwrap();
        for cut in 0..f.len() {
            assert!(
                matches!(decode_frame(&f[..cut]), Err(ProtocolError::Truncated(_))),
                "cut {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame(&bytes);
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..64), bit in 0usize..1000) {
            let mut f = encode_frame(FrameKind::Chunk, &payload).unwrap();
            let bit = bit % (f.len() * 8);
            f[bit / 8] ^= 1 << (bit % 8);
            // A flip in the length makes the frame look truncated or too
            // long; any other flip fails the kind or checksum test.
            prop_assert!(decode_frame(&f).is_err());
        }
    }
}
