#![no_main]
//! The chunk envelope. Any bytes opened as a stored chunk fail or open to
//! a plaintext of exactly the chunk's length whose keyed id matches; never
//! a panic. Any plaintext sealed opens back to itself, in both modes, and
//! the receiver's keyless check accepts what was sealed.

use libfuzzer_sys::fuzz_target;
use sealed::envelope::{check_stored, sealed_bound, Opener, Place, Sealer};
use sealed::keys::{Keys, MasterKey, Scope, VolumeId};
use protocol::message::ArchiveId;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let encrypt = data[0] & 1 == 1;
    let keys = Arc::new(Keys::derive(
        &MasterKey::from_bytes([7; 32]),
        ArchiveId([1; 16]),
        encrypt,
    ));
    let raw_len = (u16::from_le_bytes([data[2], data[3]]) as usize) % 8192 + 1;
    let body = &data[4..];
    let mut plain = vec![0u8; 8192];
    let mut opener = Opener::new(keys.clone());
    if data[1] & 1 == 1 {
        let at = Place {
            scope: Scope::volume(VolumeId([2; 16])),
            addr: 0,
            raw_len: raw_len as u32,
        };
        let id = keys.chunk_id(&at.scope, &body[..body.len().min(raw_len)]);
        let _ = check_stored(body, raw_len);
        if let Ok(p) = opener.open(body, &at, &id, &mut plain) {
            assert_eq!(p.len(), raw_len);
            assert_eq!(keys.chunk_id(&at.scope, p), id);
        }
    } else if !body.is_empty() {
        let at = Place {
            scope: Scope::group("g"),
            addr: 65536,
            raw_len: body.len() as u32,
        };
        let level = if data[1] & 2 == 2 { Some(1) } else { None };
        let mut s = Sealer::new(level, keys.clone()).expect("zstd context");
        let mut out = Vec::with_capacity(sealed_bound(body.len()));
        let id = s.seal(body, &at, [data[1]; 24], &mut out).expect("seals");
        assert!(check_stored(&out, body.len()).is_ok());
        let mut big = vec![0u8; body.len()];
        assert_eq!(opener.open(&out, &at, &id, &mut big).unwrap(), body);
    }
});
