#![no_main]
//! dom0's records as the archive stores them, which a hostile qube may
//! replace with anything: the wrapped key, the key file format, and the
//! root (its decoder and its checks, and the sealed form). Never a panic,
//! and no allocation beyond the record's own bound.

use libfuzzer_sys::fuzz_target;
use sealed::keys::{KeyFile, Keys, MasterKey, WrappedKey};
use protocol::message::ArchiveId;
use sealed::root::Root;

fuzz_target!(|data: &[u8]| {
    // Decoding only: unwrapping runs Argon2id at 64 MiB, far too slow here
    // (the KDF bounds it decodes are what a hostile archive controls).
    let _ = WrappedKey::decode(data);
    if let Ok(t) = std::str::from_utf8(data) {
        let _ = KeyFile::decode(t);
    }
    let keys = Keys::derive(&MasterKey::from_bytes([3; 32]), ArchiveId([4; 16]), true);
    let _ = Root::open(&keys, data);
    if let Ok(r) = protocol::codec::decode_large::<Root>("root", data) {
        let _ = r.validate(&keys);
        let _ = r.newest();
        for v in &r.volumes {
            let _ = v.session_infos();
        }
    }
});
