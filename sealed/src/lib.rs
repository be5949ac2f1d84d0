//! dom0's sealed formats: what only the key holder reads or writes. The
//! archive's keys and the passphrase-wrapped key ([`keys`]), the sealed
//! root ([`root`]) with the Qubes settings it carries ([`qubes`]), and
//! sealing and opening chunks ([`envelope`]).
//!
//! Apart from `protocol` so that the receiver, which never holds a key,
//! does not link the KDF, the AEAD or these formats: it keeps the wire
//! format, the manifest and the envelope's keyless check. Pure like
//! `protocol`: no file, socket or process; the caller supplies every
//! random byte. See `protocol/FORMAT.md` for the byte layouts.

pub mod envelope;
pub mod keys;
pub mod qubes;
pub mod root;
