//! The frame decoder and the stream reader on arbitrary bytes: every frame
//! kind, the size cap, checksums, truncation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::stream::FrameReader;

fuzz_target!(|data: &[u8]| {
    let mut rd = FrameReader::new(data);
    let _ = rd.read_hello();
    let mut rd = FrameReader::new(data);
    for _ in 0..64 {
        if rd.next_frame().is_err() {
            break;
        }
    }
});
