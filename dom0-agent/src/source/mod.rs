//! Where volumes come from and how their changes are found.

pub mod fiemap;
pub mod file;
pub mod reflink;

use crate::chunkmap::ChunkMap;
use std::fs::File;

/// How the chunks of a new session are chosen.
pub enum Plan {
    /// First session: read the chunks that hold data; zero ones are implicit.
    Full { data: ChunkMap },
    /// The source knows what changed since the base snapshot: send exactly
    /// these chunks (zero ones as zero records).
    Changed { changed: ChunkMap },
    /// No usable base: read every chunk that holds data and compare with the
    /// previous session's hashes.
    Compare { data: ChunkMap },
}

/// A volume frozen for one backup.
pub struct Snapshot {
    pub file: File,
    pub size: u64,
    pub plan: Plan,
    /// How the plan was made, for the summary line.
    pub method: &'static str,
}
