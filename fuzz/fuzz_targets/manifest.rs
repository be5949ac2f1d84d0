//! The manifest reader (both sides keep manifests in this format).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::manifest::ManifestReader;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = ManifestReader::new(data) {
        for e in r {
            if e.is_err() {
                break;
            }
        }
    }
});
