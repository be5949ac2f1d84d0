//! The frame decoder and the stream reader on arbitrary bytes: every frame
//! kind, the size cap, checksums, truncation; also reading into a caller's
//! buffer of a size taken from the input (as the receiver does for chunk
//! frames), which must refuse what does not fit and never panic.
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
    if let Some((&size, rest)) = data.split_first() {
        let mut dst = vec![0u8; size as usize * 16];
        let mut rd = FrameReader::new(rest);
        for _ in 0..64 {
            if rd.next_frame_into(&mut dst).is_err() {
                break;
            }
        }
    }
});
