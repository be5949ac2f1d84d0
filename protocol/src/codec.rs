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

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<DECODE_LIMIT>()
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
