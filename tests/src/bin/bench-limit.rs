//! `bench-limit FILE CHUNK_SIZE ZSTD_LEVEL`: the machine's limit for a full
//! backup of FILE — SHA-256 plus zstd at LEVEL of every chunk, with the same
//! crates sparsebak uses, spread over all cores, reading from the page
//! cache. Prints the seconds it took. The benchmark compares sparsebak with
//! this number.

use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(
        a.len() == 4,
        "usage: bench-limit FILE CHUNK_SIZE ZSTD_LEVEL"
    );
    let f = std::fs::File::open(&a[1]).expect("open");
    let cs: u64 = a[2].parse().expect("CHUNK_SIZE");
    let level: i32 = a[3].parse().expect("ZSTD_LEVEL");
    let chunks = f.metadata().unwrap().len().div_ceil(cs);
    let next = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut c = zstd::bulk::Compressor::new(level).unwrap();
                let mut buf = vec![0u8; cs as usize];
                let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(cs as usize));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks {
                        break;
                    }
                    let n = f.read_at(&mut buf, i * cs).unwrap();
                    std::hint::black_box(Sha256::digest(&buf[..n]));
                    out.clear();
                    std::hint::black_box(c.compress_to_buffer(&buf[..n], &mut out).unwrap());
                }
            });
        }
    });
    println!("{:.3}", t.elapsed().as_secs_f64());
}
