//! The sparsebak receiver: writes the sparse-bundle archive and serves it
//! back. Runs unprivileged in the backup qube (or over ssh, or locally) and
//! trusts nothing the agent sends beyond what `protocol` validates.

pub mod archive;
pub mod cli;
pub mod entry;
pub mod error;
pub mod serve;
pub mod skiplog;
