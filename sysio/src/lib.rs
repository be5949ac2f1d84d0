//! Low-level I/O that both binaries need, in one place: page-aligned
//! buffers and direct reads ([`aligned`]), a file reopened for `O_DIRECT`
//! with a fallback when the kernel refuses ([`direct`]), crash-safe file
//! replacement ([`atomic`]) and reads and writes that give up after a
//! timeout ([`timed`]).
//!
//! What this crate must not hold: protocol, archive or metadata logic. The
//! agent never links receiver code and the receiver never links agent
//! code; this is the only code they share besides `protocol`. Errors are
//! plain `std::io::Error`s: each caller names the object in its own error
//! type (anyhow context in dom0, typed `Failure`s in the receiver).

pub mod aligned;
pub mod atomic;
pub mod direct;
pub mod timed;
