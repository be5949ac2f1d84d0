use thiserror::Error;

/// Everything that can be wrong with bytes the other side sent us.
///
/// Decoders return these and never panic, whatever the input.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("frame length {len} exceeds the cap of {cap} bytes")]
    FrameTooLong { len: u32, cap: u32 },
    #[error("unknown frame kind {0:#04x}")]
    UnknownFrameKind(u8),
    #[error(
        "frame checksum mismatch (kind {kind:#04x}, expected {expected:#010x}, got {actual:#010x})"
    )]
    BadChecksum {
        kind: u8,
        expected: u32,
        actual: u32,
    },
    #[error("stream ended inside a frame ({0})")]
    Truncated(&'static str),
    #[error("expected a {expected} frame, got {got}")]
    UnexpectedFrame {
        expected: &'static str,
        got: &'static str,
    },
    #[error("bad handshake magic: not a sparsebak peer")]
    BadMagic,
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("invalid volume name {0}")]
    BadVolumeName(String),
    #[error("invalid session name {0}")]
    BadSessionName(String),
    #[error("chunk size {0} is not a power of two between 64 KiB and 2 MiB")]
    BadChunkSize(u32),
    #[error("chunk address {addr:#x} is not aligned to the chunk size {chunk_size}")]
    UnalignedAddress { addr: u64, chunk_size: u32 },
    #[error("chunk payload of {len} bytes exceeds the chunk size {chunk_size}")]
    ChunkTooLarge { len: usize, chunk_size: u32 },
    #[error("manifest entries out of order: {prev:#x} followed by {next:#x}")]
    ManifestOrder { prev: u64, next: u64 },
    #[error("bad manifest header")]
    ManifestMagic,
    #[error("manifest checksum mismatch")]
    ManifestChecksum,
}

impl ProtocolError {
    pub(crate) fn malformed(what: &'static str, detail: impl std::fmt::Display) -> Self {
        ProtocolError::Malformed {
            what,
            detail: detail.to_string(),
        }
    }
}
