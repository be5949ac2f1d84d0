//! Handshake, requests and replies.
//!
//! A connection is: agent sends `Hello`, receiver answers `Hello` (with the
//! archive's parameters if one exists), then any number of request/reply
//! exchanges, then `Request::Bye`. Some requests are followed by chunk frames
//! (see `FORMAT.md`).

use crate::{codec, ProtocolError, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

/// Identifies a sparsebak peer in the handshake.
pub const MAGIC: [u8; 8] = *b"SPARSBAK";

/// A random 128-bit archive identity, chosen by the agent at `arch-init`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArchiveId(pub [u8; 16]);

impl ArchiveId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ArchiveId(id))
    }
}

/// A volume's opaque id: what the receiver knows the volume by (as 32
/// lowercase hex digits, its directory name), chosen at random by dom0
/// when the volume is first backed up, kept across renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId(pub [u8; 16]);

impl VolumeId {
    pub fn to_hex(&self) -> String {
        crate::codec::hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut b = [0u8; 16];
        crate::codec::unhex(s, &mut b)?;
        Some(VolumeId(b))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

impl Compression {
    pub fn validate(self) -> Result<Self, ProtocolError> {
        match self {
            Compression::Zstd { level } if !(1..=19).contains(&level) => {
                Err(ProtocolError::malformed(
                    "compression",
                    format!("zstd level {level} not in 1..=19"),
                ))
            }
            c => Ok(c),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::None => write!(f, "none"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// Fixed parameters of an archive.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveParams {
    pub id: ArchiveId,
    pub chunk_size: u32,
    pub compression: Compression,
}

impl ArchiveParams {
    pub fn validate(self) -> Result<Self, ProtocolError> {
        crate::validate_chunk_size(self.chunk_size)?;
        self.compression.validate()?;
        Ok(self)
    }
}

/// What the connection is for; the qrexec layer maps each to its own service.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Create an archive, list it.
    Admin,
    /// Write sessions (and list).
    Backup,
    /// Read sessions back (and list).
    Restore,
}

/// The handshake record, sent by both sides. On the wire: `MAGIC`,
/// `version: u32le`, then the bincode body, so that a version mismatch is
/// recognized before the body is decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub body: HelloBody,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum HelloBody {
    /// Agent → receiver: the archive it expects (None at `arch-init`) and the
    /// operation.
    Agent {
        archive_id: Option<ArchiveId>,
        op: Operation,
    },
    /// Receiver → agent: the archive found at the destination, if any.
    Receiver { archive: Option<ArchiveParams> },
}

impl Hello {
    pub fn new(body: HelloBody) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        codec::encode_into(&self.body, &mut out);
        out
    }

    /// Decodes and checks magic and version.
    pub fn decode(payload: &[u8]) -> Result<Self, ProtocolError> {
        if payload.len() < 12 || payload[..8] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        let version = u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]);
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let body = codec::decode("hello", &payload[12..])?;
        if let HelloBody::Receiver { archive: Some(p) } = &body {
            p.validate()?;
        }
        Ok(Hello { version, body })
    }
}

/// One backup session as both sides describe it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub name: String,
    /// Seconds since the Unix epoch (UTC) when the snapshot was taken.
    pub time: u64,
    pub volume_size: u64,
    /// Data chunks stored in this session.
    pub chunks: u64,
    /// Chunks recorded as zero in this session.
    pub zero_chunks: u64,
    /// Bytes of stored (compressed) chunk data in this session.
    pub stored_bytes: u64,
    /// Of `chunks`, those stored by reference to a chunk the archive
    /// already held (a hard link, no bytes sent), and their plaintext
    /// length. Counted at commit; a prune adds the pruned session's.
    pub ref_chunks: u64,
    pub ref_bytes: u64,
    pub prev: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Create the archive at the destination (Admin), with its first
    /// wrapped key and root (opaque to the receiver; at most `DATA_PART`
    /// bytes each). Without `mkdir` the archive directory's parent must
    /// exist: an unmounted backup disk must not get an archive on the
    /// filesystem beneath its mount point.
    Init {
        params: ArchiveParams,
        key: Vec<u8>,
        root: Vec<u8>,
        mkdir: bool,
    },
    /// Volume names after `after` (from the first with None), at most
    /// `LIST_PAGE` of them, ascending. Answered with `Reply::Volumes`.
    ListVolumes { after: Option<String> },
    /// Start writing a session (Backup). Followed by chunk frames, then
    /// `Commit` or `Abort`.
    BeginSession {
        volume: String,
        session: String,
        prev: Option<String>,
        volume_size: u64,
        time: u64,
    },
    /// Make the session written since `BeginSession` visible. The counts must
    /// match what the receiver got.
    Commit { chunks: u64, zero_chunks: u64 },
    /// Drop the session written since `BeginSession`.
    Abort,
    /// Stream the volume as of `session` (Restore): the newest non-zero chunk
    /// of each address, ascending, then `Reply::StreamEnd`.
    Restore { volume: String, session: String },
    /// End of the connection.
    Bye,
    /// Merge `session` (not the volume's newest) into its successor and
    /// remove it (Admin). Answered with `Reply::Pruned`.
    Prune { volume: String, session: String },
    /// Remove a volume and all its sessions (Admin).
    DeleteVolume { volume: String },
    /// Re-read and re-hash every chunk of one volume or all (Admin).
    /// Answered with `Reply::CheckReport`.
    Check { volume: Option<String> },
    /// Send a session's manifest file (Admin): `Reply::Data` parts, then
    /// `Reply::StreamEnd` with the number of parts.
    GetManifest { volume: String, session: String },
    /// The sessions of `volume` named after `after`, at most `LIST_PAGE`,
    /// oldest first. Answered with `Reply::Sessions`.
    ListSessions {
        volume: String,
        after: Option<String>,
    },
    /// Send one of dom0's opaque archive records (any op): `Reply::Data`
    /// parts, then `Reply::StreamEnd` with the number of parts.
    GetBlob { blob: Blob },
    /// Replace one of dom0's opaque archive records (Admin, Backup): parts
    /// of at most `DATA_PART` bytes, each answered `Ok`; the record is
    /// replaced atomically when the `last` part arrives.
    PutBlob {
        blob: Blob,
        data: Vec<u8>,
        last: bool,
    },
    /// Send chunks of one session by address (Restore): for random-access
    /// reads of an opened session. `addrs` ascend strictly, at most
    /// `MAX_READ_CHUNKS` of them. Answered with a chunk frame for each
    /// chunk the session holds and the receiver can read, in that order
    /// (`hash` all zero: dom0 checks against its own manifest), then
    /// `Reply::StreamEnd` with their number.
    ReadChunks {
        volume: String,
        session: String,
        addrs: Vec<u64>,
    },
    /// Remove `session`, which must be the volume's newest (Admin,
    /// Backup): a session dom0 cannot authenticate (committed, but never
    /// named by the root dom0 wrote). Answered `Ok`; `Error(SessionOrder)`
    /// if it is not the newest.
    DropSession { volume: String, session: String },
    /// Inside a session, in address order with the chunk frames: the
    /// chunk at `addr` is the one the archive already holds at `from` (a
    /// committed session of a volume in the same dedup scope, or an
    /// earlier address of the session being written; dom0 knows scopes,
    /// the receiver does not). The receiver checks that `from`'s
    /// manifest names a chunk with this keyed id there and links it; what
    /// it cannot confirm it refuses at `Commit` (`Reply::Refused`), and
    /// dom0 sends those chunks' data.
    Ref(ChunkRef),
    /// Send the manifest of the volume's unfinished session (Backup),
    /// before `BeginSession`: what a backup cut before its commit (a lost
    /// link, a killed receiver or agent) stored, kept for the next one.
    /// `Reply::Data` parts of a finished manifest file (no part: there is
    /// none), then `Reply::StreamEnd` with their number. The receiver keeps
    /// it until the volume's next commit.
    Unfinished { volume: String },
    /// Inside a session, in address order with the chunk frames: the
    /// chunk at `addr` is the one the unfinished session holds at `addr`
    /// (its manifest entry has this keyed id: dom0 compared it with the
    /// chunk it read). The receiver checks that entry and the stored
    /// chunk and keeps it; what it cannot, it refuses at `Commit` like a
    /// reference.
    Resume(ResumedChunk),
}

/// A resumed chunk (`Request::Resume`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumedChunk {
    pub addr: u64,
    pub raw_len: u32,
    pub hash: crate::chunk::Hash,
}

/// A reference record (`Request::Ref`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    pub addr: u64,
    pub raw_len: u32,
    /// The chunk's keyed id: the manifest entry at `addr`, which must be
    /// the entry at `from`.
    pub hash: crate::chunk::Hash,
    /// Where the chunk is stored: a volume id (32 hex digits), one of its
    /// committed sessions, an address there.
    pub volume: String,
    pub session: String,
    pub from: u64,
}

/// Most addresses one `Reply::Refused` names: the agent sends those
/// chunks and commits again, and gets the next ones.
pub const MAX_REFUSED: usize = 65536;

/// Most addresses in one `ReadChunks` request: 64 chunks are 16 MiB at the
/// default chunk size, enough for read-ahead, and bound what one request
/// makes either side hold.
pub const MAX_READ_CHUNKS: usize = 64;

/// dom0's records that the receiver keeps for it without reading them.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blob {
    /// The master key wrapped by the passphrase (`keys::WrappedKey`).
    Key,
    /// The sealed root (`root::Root`).
    Root,
    /// A second copy of `Key`, written with it: one damaged file does not
    /// cost the only way in from a passphrase.
    KeyCopy,
}

impl Blob {
    pub const ALL: [Blob; 3] = [Blob::Key, Blob::Root, Blob::KeyCopy];

    /// The most bytes the receiver stores for it.
    pub fn cap(self) -> u64 {
        match self {
            Blob::Key | Blob::KeyCopy => 4096,
            Blob::Root => crate::codec::LARGE_LIMIT as u64 + 4096,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Blob::Key => "key",
            Blob::Root => "root",
            Blob::KeyCopy => "key-copy",
        }
    }
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::Init { .. } => "init",
            Request::ListVolumes { .. } => "list-volumes",
            Request::BeginSession { .. } => "begin-session",
            Request::Commit { .. } => "commit",
            Request::Abort => "abort",
            Request::Ref(_) => "ref",
            Request::Unfinished { .. } => "unfinished",
            Request::Resume(_) => "resume",
            Request::Restore { .. } => "restore",
            Request::Bye => "bye",
            Request::Prune { .. } => "prune",
            Request::DeleteVolume { .. } => "delete-volume",
            Request::Check { .. } => "check",
            Request::GetManifest { .. } => "get-manifest",
            Request::ListSessions { .. } => "list-sessions",
            Request::GetBlob { .. } => "get-blob",
            Request::PutBlob { .. } => "put-blob",
            Request::ReadChunks { .. } => "read-chunks",
            Request::DropSession { .. } => "drop-session",
        }
    }
}

/// Error classes the receiver reports; the message is for humans only.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoArchive,
    ArchiveExists,
    ArchiveMismatch,
    NoSuchVolume,
    NoSuchSession,
    BadRequest,
    SessionOrder,
    Io,
    NoSpace,
    Corrupt,
    /// Another connection holds the archive.
    Busy,
}

impl ErrorCode {
    /// What the code means, for a person (the wire carries the code; this
    /// text is never parsed).
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::NoArchive => "there is no archive of that name",
            ErrorCode::ArchiveExists => "an archive of that name exists already",
            ErrorCode::ArchiveMismatch => "the archive is not the one dom0 expects",
            ErrorCode::NoSuchVolume => "the archive has no such volume",
            ErrorCode::NoSuchSession => "the archive has no such session",
            ErrorCode::BadRequest => "the request was refused",
            ErrorCode::SessionOrder => {
                "the archive's sessions of this volume are not the ones dom0 has"
            }
            ErrorCode::Io => "the receiver could not read or write its storage",
            ErrorCode::NoSpace => "the archive is out of space",
            ErrorCode::Corrupt => "the archive's files are damaged",
            ErrorCode::Busy => "another connection is using the archive",
        }
    }
}

impl Operation {
    /// The operation as a person names it.
    pub fn describe(self) -> &'static str {
        match self {
            Operation::Admin => "administration",
            Operation::Backup => "backup",
            Operation::Restore => "restore",
        }
    }
}

/// Largest `Reply::Data` part.
pub const DATA_PART: usize = 1 << 20;

/// Most entries in one page of a listing: a page of sessions (about 110
/// bytes each) or of volume names (at most 263 bytes each) stays far below
/// the frame cap, however many sessions an archive holds.
pub const LIST_PAGE: usize = 1000;

/// What an archive check found wrong with one chunk or session.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingKind {
    /// The manifest names a chunk whose file is missing.
    Missing,
    /// The chunk file does not decode to the manifest's hash.
    Corrupt,
    /// A file in the session that the manifest does not name.
    Extra,
    /// The session's manifest or info is unreadable.
    BadSession,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub volume: String,
    pub session: String,
    pub addr: Option<u64>,
    pub kind: FindingKind,
    pub detail: String,
}

/// Most findings one report carries; the rest are only counted.
pub const MAX_FINDINGS: usize = 4096;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// A page of volume names; `more`: ask again after the last one.
    Volumes {
        names: Vec<String>,
        more: bool,
    },
    Committed(SessionInfo),
    /// End of a restore stream: how many chunk frames preceded it.
    StreamEnd {
        chunks: u64,
    },
    Error(RemoteError),
    /// A prune's result: the successor session as merged.
    Pruned(SessionInfo),
    /// An archive check's result.
    CheckReport {
        /// Data chunks read and hashed.
        checked: u64,
        findings: Vec<Finding>,
        /// Findings beyond `MAX_FINDINGS`, counted only.
        more: u64,
    },
    /// Part of a file (at most `DATA_PART` bytes).
    Data(Vec<u8>),
    /// A page of sessions; `more`: ask again after the last one.
    Sessions {
        sessions: Vec<SessionInfo>,
        more: bool,
    },
    /// The answer to `Commit` while references were refused: at most
    /// `MAX_REFUSED` of their addresses, ascending. The agent sends a chunk
    /// frame for each (in any order) and commits again; nothing is visible
    /// until a commit is answered `Committed`.
    Refused {
        addrs: Vec<u64>,
    },
}

impl Reply {
    pub fn name(&self) -> &'static str {
        match self {
            Reply::Ok => "ok",
            Reply::Volumes { .. } => "volumes",
            Reply::Committed(_) => "committed",
            Reply::Refused { .. } => "refused",
            Reply::StreamEnd { .. } => "stream-end",
            Reply::Error(_) => "error",
            Reply::Pruned(_) => "pruned",
            Reply::CheckReport { .. } => "check-report",
            Reply::Data(_) => "data",
            Reply::Sessions { .. } => "sessions",
        }
    }
}

pub fn encode_request(r: &Request) -> Vec<u8> {
    codec::encode(r)
}

pub fn decode_request(b: &[u8]) -> Result<Request, ProtocolError> {
    codec::decode("request", b)
}

pub fn encode_reply(r: &Reply) -> Vec<u8> {
    codec::encode(r)
}

pub fn decode_reply(b: &[u8]) -> Result<Reply, ProtocolError> {
    codec::decode("reply", b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hello_round_trip_and_version_check() {
        let h = Hello::new(HelloBody::Agent {
            archive_id: Some(ArchiveId([7; 16])),
            op: Operation::Backup,
        });
        let b = h.encode();
        assert_eq!(Hello::decode(&b).unwrap(), h);
        let mut v2 = b.clone();
        v2[8..12].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(
            Hello::decode(&v2).unwrap_err(),
            ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 99
            }
        );
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(Hello::decode(&bad).unwrap_err(), ProtocolError::BadMagic);
    }

    #[test]
    fn hello_rejects_bad_archive_params() {
        let p = ArchiveParams {
            id: ArchiveId([1; 16]),
            chunk_size: 1000,
            compression: Compression::None,
        };
        let b = Hello::new(HelloBody::Receiver { archive: Some(p) }).encode();
        assert_eq!(
            Hello::decode(&b).unwrap_err(),
            ProtocolError::BadChunkSize(1000)
        );
    }

    #[test]
    fn archive_id_hex() {
        let id = ArchiveId([0xab; 16]);
        assert_eq!(ArchiveId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ArchiveId::from_hex("zz"), None);
    }

    #[test]
    fn request_reply_round_trip() {
        let r = Request::BeginSession {
            volume: "vm-work-private".into(),
            session: "S_000000000001".into(),
            prev: None,
            volume_size: 1 << 30,
            time: 1,
        };
        assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        let e = Reply::Error(RemoteError {
            code: ErrorCode::NoSpace,
            message: "full".into(),
        });
        assert_eq!(decode_reply(&encode_reply(&e)).unwrap(), e);
        let rc = Request::ReadChunks {
            volume: "0123".into(),
            session: "S_000000000001".into(),
            addrs: vec![0, 1 << 18],
        };
        assert_eq!(decode_request(&encode_request(&rc)).unwrap(), rc);
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A volumes page claiming 2^60 names must fail, not try to allocate.
        let mut b = encode_reply(&Reply::Volumes {
            names: vec![],
            more: false,
        });
        b[4..12].copy_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode_reply(&b).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_request(&bytes);
            let _ = decode_reply(&bytes);
            let _ = Hello::decode(&bytes);
        }
    }
}
