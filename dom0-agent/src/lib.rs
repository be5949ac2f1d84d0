//! The sparsebak dom0 agent: finds what changed in a volume, reads only
//! that, hashes and compresses it, streams it to the receiver, and keeps the
//! manifests that every restore is verified against.
//!
//! Layout: `cli` parses, `commands/` holds one file per verb, `context`
//! merges config and flags. Below them: `client` (the one place that talks
//! to the receiver) over `transport` (processes, pipes, timeouts);
//! `reconcile` (settling interrupted runs); `keycheck` (the archive's
//! wrapped key, checked at every connection); `meta` (dom0's records);
//! `source/` (volumes and their deltas), `pipeline` (read, seal, in order)
//! and `target` (where restores write). Chunks are sealed and opened only
//! by `sealed::envelope`.

pub mod browse;
pub mod catalog;
pub mod chunkmap;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod context;
pub mod dedup;
pub mod interrupt;
pub mod keycheck;
pub mod meta;
pub mod passphrase;
pub mod pipeline;
pub mod progress;
pub mod qubes;
pub mod random;
pub mod reconcile;
pub mod report;
pub mod resume;
pub mod retention;
pub mod sched;
pub mod source;
pub mod target;
pub mod timefmt;
pub mod transport;
pub mod units;
