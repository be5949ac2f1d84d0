//! `gen-image create PATH SIZE_MIB SEED`: a semi-compressible disk image
//! (each 64 KiB block half pseudo-random, half text), written densely.
//! `gen-image rewrite PATH PERCENT SEED`: rewrites that share of the
//! image's 64 KiB blocks, at random places, with fresh data (in place, so a
//! reflink snapshot keeps the old blocks).
//! Used by the demo and the benchmark.

use sparsebak_tests::Rng;
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;

const BLOCK: usize = 65536;

fn block(rng: &mut Rng, buf: &mut [u8]) {
    let half = buf.len() / 2;
    rng.fill(&mut buf[..half]);
    for (i, b) in buf[half..].iter_mut().enumerate() {
        *b = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. "[i % 57];
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let usage = "usage: gen-image create PATH SIZE_MIB SEED | gen-image rewrite PATH PERCENT SEED";
    if a.len() != 5 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let seed: u64 = a[4].parse().expect("SEED");
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; BLOCK];
    match a[1].as_str() {
        "create" => {
            let mib: u64 = a[3].parse().expect("SIZE_MIB");
            let mut f = std::io::BufWriter::with_capacity(
                1 << 20,
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&a[2])
                    .expect("create"),
            );
            for _ in 0..mib * 16 {
                block(&mut rng, &mut buf);
                f.write_all(&buf).expect("write");
            }
            f.into_inner().expect("flush").sync_all().expect("sync");
        }
        "rewrite" => {
            let pct: f64 = a[3].parse().expect("PERCENT");
            let f = OpenOptions::new().write(true).open(&a[2]).expect("open");
            let blocks = f.metadata().expect("stat").len() / BLOCK as u64;
            let n = ((blocks as f64 * pct / 100.0).round() as u64).clamp(1, blocks.max(1));
            let mut chosen = BTreeSet::new();
            while (chosen.len() as u64) < n {
                chosen.insert(rng.below(blocks));
            }
            for b in &chosen {
                block(&mut rng, &mut buf);
                f.write_all_at(&buf, b * BLOCK as u64).expect("write");
            }
            f.sync_all().expect("sync");
            println!("rewrote {n} of {blocks} blocks of 64 KiB");
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
