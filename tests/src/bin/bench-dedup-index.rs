//! `bench-dedup-index META_ARCHIVE_DIR GROUP N`: fills the dedup index of
//! group GROUP in dom0's records of one archive (`META/archives/ID`) with
//! N entries of random ids (at places no volume has: every lookup of them
//! would be checked and fail), as if the group stored N chunks. Prints the
//! seconds it took, the entries, and the index's bytes on disk and in RAM.
//! The dedup benchmark then times a backup and measures dom0's peak RSS
//! with an index of that size.

use agent::dedup::index::{Index, Loc};
use sealed::keys::{Scope, VolumeId};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(
        a.len() == 4,
        "usage: bench-dedup-index META_ARCHIVE_DIR GROUP N"
    );
    let dir = std::path::Path::new(&a[1])
        .join("dedup")
        .join(Scope::group(&a[2]).to_hex());
    let n: u64 = a[3].parse().expect("N");
    let t = std::time::Instant::now();
    let mut ix = Index::open(&dir).expect("open the index");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        let mut id = [0u8; 32];
        for w in id.chunks_exact_mut(8) {
            // xorshift64*: ids as uniform as keyed BLAKE3's.
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            w.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let loc = Loc {
            volume: VolumeId([0xee; 16]),
            session: 1,
            addr: i * 262_144,
        };
        ix.insert(&id, loc, false).expect("insert");
    }
    ix.flush().expect("flush");
    let (disk, ram) = ix.sizes().expect("sizes");
    println!(
        "{:.1} s, {} entries, {} MiB on disk, {} MiB filter in RAM",
        t.elapsed().as_secs_f64(),
        ix.entries(),
        disk >> 20,
        ram >> 20
    );
}
