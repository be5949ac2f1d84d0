//! Chunk records: a fixed 48-byte bincode header, then the stored bytes raw.

use crate::{codec, ProtocolError};
use serde::{Deserialize, Serialize};

/// How a chunk's bytes are stored.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// All zero; no bytes stored or sent.
    Zero,
    /// A chunk envelope ([`crate::envelope`]): encrypted or clear,
    /// compressed or not, only dom0 can tell.
    Sealed,
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Codec::Zero => "zero",
            Codec::Sealed => "sealed",
        })
    }
}

impl Codec {
    pub fn to_byte(self) -> u8 {
        match self {
            Codec::Zero => 0,
            Codec::Sealed => 1,
        }
    }

    pub fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            0 => Ok(Codec::Zero),
            1 => Ok(Codec::Sealed),
            b => Err(ProtocolError::malformed(
                "codec",
                format!("unknown codec {b}"),
            )),
        }
    }
}

/// A chunk's keyed id: keyed BLAKE3 of its plaintext ([`crate::keys`]).
pub type Hash = [u8; 32];

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Byte address of the chunk in the volume (a multiple of the chunk size).
    pub addr: u64,
    pub codec: Codec,
    /// Uncompressed length: the chunk size, less for the volume's last chunk,
    /// 0 is never valid.
    pub raw_len: u32,
    /// The chunk's keyed id (all zero for `Codec::Zero`).
    pub hash: Hash,
}

/// Encoded size of a [`ChunkHeader`].
pub const HEADER_LEN: usize = 48;

impl ChunkHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let v = codec::encode(self);
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(&v);
        out
    }

    /// Checks the header against the archive's chunk size and the data length.
    pub fn validate(&self, chunk_size: u32, data_len: usize) -> Result<(), ProtocolError> {
        if !self.addr.is_multiple_of(chunk_size as u64) {
            return Err(ProtocolError::UnalignedAddress {
                addr: self.addr,
                chunk_size,
            });
        }
        if self.raw_len == 0 || self.raw_len > chunk_size {
            return Err(ProtocolError::ChunkTooLarge {
                len: self.raw_len as usize,
                chunk_size,
            });
        }
        let ok = match self.codec {
            Codec::Zero => data_len == 0,
            Codec::Sealed => (crate::envelope::MIN_STORED
                ..=crate::envelope::max_stored(self.raw_len as usize))
                .contains(&data_len),
        };
        if !ok {
            return Err(ProtocolError::malformed(
                "chunk record",
                format!(
                    "{} chunk at {:#x} with {} data bytes for raw length {}",
                    self.codec, self.addr, data_len, self.raw_len
                ),
            ));
        }
        Ok(())
    }
}

/// Splits a chunk frame's payload into its header and data (unvalidated
/// against the archive; call [`ChunkHeader::validate`]).
pub fn decode_chunk_payload(payload: &[u8]) -> Result<(ChunkHeader, &[u8]), ProtocolError> {
    if payload.len() < HEADER_LEN {
        return Err(ProtocolError::Truncated("chunk header"));
    }
    let h: ChunkHeader = codec::decode("chunk header", &payload[..HEADER_LEN])?;
    Ok((h, &payload[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_fixed_size_and_round_trips() {
        for codec in [Codec::Zero, Codec::Sealed] {
            let h = ChunkHeader {
                addr: u64::MAX - 5,
                codec,
                raw_len: 12345,
                hash: [9; 32],
            };
            let mut p = h.encode().to_vec();
            p.extend_from_slice(b"data");
            let (d, data) = decode_chunk_payload(&p).unwrap();
            assert_eq!((d, data), (h, &b"data"[..]));
        }
    }

    #[test]
    fn validation() {
        let cs = 65536;
        let h = ChunkHeader {
            addr: 65536,
            codec: Codec::Sealed,
            raw_len: 10,
            hash: [0; 32],
        };
        assert!(h.validate(cs, 10).is_ok());
        assert!(h.validate(cs, 10 + crate::envelope::OVERHEAD).is_ok());
        assert!(h.validate(cs, 11 + crate::envelope::OVERHEAD).is_err());
        assert!(h.validate(cs, 5).is_err());
        assert!(ChunkHeader { addr: 1, ..h }.validate(cs, 10).is_err());
        assert!(ChunkHeader {
            raw_len: cs + 1,
            ..h
        }
        .validate(cs, 10)
        .is_err());
        assert!(ChunkHeader {
            codec: Codec::Zero,
            ..h
        }
        .validate(cs, 1)
        .is_err());
        assert!(ChunkHeader {
            codec: Codec::Zero,
            ..h
        }
        .validate(cs, 0)
        .is_ok());
    }

    #[test]
    fn bad_codec_tag_is_an_error() {
        let mut p = ChunkHeader {
            addr: 0,
            codec: Codec::Sealed,
            raw_len: 1,
            hash: [0; 32],
        }
        .encode();
        p[8] = 9;
        assert!(decode_chunk_payload(&p).is_err());
    }
}
