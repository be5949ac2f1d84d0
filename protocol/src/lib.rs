//! The sparsebak wire protocol and the record formats both sides share.
//!
//! This crate is pure: types, encoding, decoding and validation. It never
//! opens a file, socket or process; the stream helpers in [`stream`] work on
//! whatever `Read`/`Write` the caller hands them (pipes, files, or memory in
//! tests and fuzzers). See `FORMAT.md` for the byte layout. What only dom0
//! (the key holder) reads is in the `sealed` crate, which the receiver
//! does not link.

pub mod chunk;
pub mod codec;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod manifest;
pub mod merge;
pub mod message;
pub mod names;
pub mod prune;
pub mod remote;
pub mod stream;

pub use error::ProtocolError;

/// Protocol version spoken in the handshake. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 7;

/// Smallest and largest chunk sizes an archive may use (powers of two only).
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
pub const MAX_CHUNK_SIZE: u32 = 2 * 1024 * 1024;
pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;

/// Validates a chunk size: a power of two between the limits.
pub fn validate_chunk_size(size: u32) -> Result<u32, ProtocolError> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) || !size.is_power_of_two() {
        return Err(ProtocolError::BadChunkSize(size));
    }
    Ok(size)
}
