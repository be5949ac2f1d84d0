//! The one place that knows about bincode.
//!
//! bincode is pinned to `=2.0.1` and unmaintained upstream; everything that
//! serializes a serde struct goes through [`encode`] and [`decode`] so that a
//! later swap touches only this file. The configuration is fixed: little
//! endian, fixed-width integers (so headers have a known size), and a decode
//! limit so a hostile length prefix cannot make us allocate.

use crate::ProtocolError;
use serde::{de::DeserializeOwned, Serialize};

/// Upper bound for any bincode-encoded record; larger claims fail to decode.
pub const DECODE_LIMIT: usize = 4 * 1024 * 1024;

/// The fixed configuration, with a decode limit of `LIMIT` bytes.
fn limited<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>()
}

fn config() -> impl bincode::config::Config {
    limited::<DECODE_LIMIT>()
}

/// Upper bound for the one record that grows with the archive: dom0's
/// root ([`crate::root`]), about 110 bytes a session.
pub const LARGE_LIMIT: usize = 64 * 1024 * 1024;

fn large_config() -> impl bincode::config::Config {
    limited::<LARGE_LIMIT>()
}

/// Encodes a large record (see [`LARGE_LIMIT`]).
pub fn encode_large<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, large_config())
        .expect("encoding an in-memory record cannot fail")
}

/// Decodes a large record that must fill `bytes` exactly.
pub fn decode_large<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ProtocolError> {
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(bytes, large_config())
        .map_err(|e| ProtocolError::malformed(what, e))?;
    if used != bytes.len() {
        return Err(ProtocolError::malformed(
            what,
            format!("{} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(value)
}

/// Encodes `value`, appending to `out`.
pub fn encode_into<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Encoding our own in-memory types into a Vec cannot fail except by
    // exceeding the limit, which our types never approach.
    let bytes = bincode::serde::encode_to_vec(value, config())
        .expect("encoding an in-memory record cannot fail");
    out.extend_from_slice(&bytes);
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Decodes a `T` that must fill `bytes` exactly.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, ProtocolError> {
    let (value, used) = decode_prefix(what, bytes)?;
    if used != bytes.len() {
        return Err(ProtocolError::malformed(
            what,
            format!("{} trailing bytes", bytes.len() - used),
        ));
    }
    Ok(value)
}

/// Decodes a `T` from the start of `bytes`, returning it and the bytes used.
pub fn decode_prefix<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<(T, usize), ProtocolError> {
    bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| ProtocolError::malformed(what, e))
}

/// A sealed on-disk record: `magic[8] | bincode(value) | crc32le(magic+body)`.
/// The magic carries the format version (e.g. `SBKARC01`).
pub fn encode_sealed<T: Serialize>(magic: &[u8; 8], value: &T) -> Vec<u8> {
    let mut out = magic.to_vec();
    encode_into(value, &mut out);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode_sealed<T: DeserializeOwned>(
    what: &'static str,
    magic: &[u8; 8],
    bytes: &[u8],
) -> Result<T, ProtocolError> {
    if bytes.len() < 12 || &bytes[..8] != magic {
        return Err(ProtocolError::malformed(
            what,
            "bad magic or unsupported format version",
        ));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(ProtocolError::malformed(what, "checksum mismatch"));
    }
    decode(what, &body[8..])
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Exactly `N` bytes of hex.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    unhex(s, &mut b)?;
    Some(b)
}

/// Lowercase or uppercase hex of exactly `out.len()` bytes.
pub fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_round_trip_and_damage() {
        let b = encode_sealed(b"TESTREC1", &(7u32, "x".to_string()));
        assert_eq!(
            decode_sealed::<(u32, String)>("t", b"TESTREC1", &b).unwrap(),
            (7, "x".into())
        );
        assert!(decode_sealed::<(u32, String)>("t", b"TESTREC2", &b).is_err());
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 4;
            assert!(decode_sealed::<(u32, String)>("t", b"TESTREC1", &c).is_err());
        }
    }
}
