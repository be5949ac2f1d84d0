//! The streaming parser of thin_delta / thin_dump output (read from a
//! subprocess in dom0), folded into the changed-chunk map as backup does.
#![no_main]
use agent::chunkmap::ChunkMap;
use agent::source::thin::{fold_delta, fold_dump};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let size = 1u64 << 30;
    let mut map = ChunkMap::new(size.div_ceil(65536));
    let _ = fold_delta(data, &mut map, 65536, size);
    let mut map = ChunkMap::new(size.div_ceil(65536));
    let _ = fold_dump(data, &mut map, 65536, size);
});
