//! Handshake, request and reply decoders (bincode behind protocol::codec).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::message::{decode_reply, decode_request, Hello};

fuzz_target!(|data: &[u8]| {
    let _ = Hello::decode(data);
    let _ = decode_request(data);
    let _ = decode_reply(data);
});
