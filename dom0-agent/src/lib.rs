//! The sparsebak dom0 agent: finds what changed in a volume, reads only
//! that, hashes and compresses it, streams it to the receiver, and keeps the
//! manifests that every restore is verified against.

pub mod archcheck;
pub mod backup;
pub mod chunkmap;
pub mod config;
pub mod diff;
pub mod list;
pub mod meta;
pub mod pipeline;
pub mod progress;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod sched;
pub mod source;
pub mod timefmt;
pub mod transport;
pub mod units;
