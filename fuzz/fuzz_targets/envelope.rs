#![no_main]
//! Opening a stored chunk: any bytes, codec and length either open to a
//! plaintext that matches the hash or fail; never a panic, never more
//! output than the chunk's length.

use libfuzzer_sys::fuzz_target;
use protocol::chunk::Codec;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let codec = Codec::from_byte(data[0] % 3).expect("0..3 are codecs");
    let raw_len = (u16::from_le_bytes([data[1], data[2]]) as usize) % 8192 + 1;
    let stored = &data[3..];
    let mut plain = vec![0u8; raw_len];
    let hash = protocol::envelope::hash(stored);
    if let Ok(p) = protocol::envelope::open(codec, stored, raw_len, &hash, &mut plain) {
        assert_eq!(p.len(), raw_len);
        assert_eq!(protocol::envelope::hash(p), hash);
    }
});
