//! `bench-randread FILE COUNT SEED`: COUNT reads of 4 KiB at random
//! 4 KiB-aligned offsets of FILE, one after another; prints the median and
//! the 99th percentile latency in milliseconds. For the benchmark's
//! figures of an opened session (`sparsebak open`), whose file is served
//! with direct I/O: every read reaches sparsebak.

use sparsebak_tests::Rng;
use std::os::unix::fs::FileExt;
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(a.len() == 4, "usage: bench-randread FILE COUNT SEED");
    let f = std::fs::File::open(&a[1]).expect("open");
    let count: usize = a[2].parse().expect("COUNT");
    let mut rng = Rng::new(a[3].parse().expect("SEED"));
    let blocks = f.metadata().expect("stat").len() / 4096;
    let mut buf = vec![0u8; 4096];
    let mut ms: Vec<f64> = (0..count)
        .map(|_| {
            let at = rng.below(blocks) * 4096;
            let t0 = Instant::now();
            f.read_exact_at(&mut buf, at).expect("read");
            t0.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!("{:.3} {:.3}", pct(0.5), pct(0.99));
}
