//! Where a chunk lives inside a session directory: fanned out by address so
//! no directory holds more than 4096 chunks (256 MiB of volume per directory
//! at the smallest chunk size).

use std::path::{Path, PathBuf};

/// Bits of address covered by one fan-out directory.
const FANOUT_SHIFT: u32 = 28;

pub fn fanout_dir_name(addr: u64) -> String {
    format!("c{:07x}", addr >> FANOUT_SHIFT)
}

pub fn chunk_file_name(addr: u64) -> String {
    format!("x{addr:016x}")
}

pub fn chunk_path(session_dir: &Path, addr: u64) -> PathBuf {
    session_dir
        .join(fanout_dir_name(addr))
        .join(chunk_file_name(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let p = chunk_path(Path::new("/a"), 0x1_2345_0000);
        assert_eq!(p, Path::new("/a/c0000012/x0000000123450000"));
        assert_eq!(fanout_dir_name(u64::MAX), "cfffffffff");
    }
}
