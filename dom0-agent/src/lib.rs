//! The sparsebak dom0 agent: finds what changed in a volume, reads only
//! that, hashes and compresses it, streams it to the receiver, and keeps the
//! manifests that every restore is verified against.

pub mod backup;
pub mod chunkmap;
pub mod config;
pub mod fsutil;
pub mod list;
pub mod meta;
pub mod pipeline;
pub mod progress;
pub mod restore;
pub mod retention;
pub mod source;
pub mod transport;
pub mod units;
