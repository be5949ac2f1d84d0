//! `bench-limit FILE CHUNK_SIZE ZSTD_LEVEL [on|off|hash]`: the machine's
//! limit for a full backup of FILE — every chunk through the chunk
//! envelope's work alone (keyed BLAKE3 id, zstd at LEVEL, and with `on`,
//! the default, XChaCha20-Poly1305; a CRC either way), with the same code
//! sparsebak uses (`sealed::envelope`), spread over all cores, reading
//! through the page cache (cold or warm: the caller chooses). With `hash`,
//! only the read and the keyed id: what a backup of a chunk the archive
//! already holds cannot avoid (the dedup benchmark's floor). Prints the
//! seconds it took. The benchmark compares sparsebak with this number.

use protocol::message::ArchiveId;
use sealed::envelope::{sealed_bound, Place, Sealer};
use sealed::keys::{Keys, MasterKey, VolumeId};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(
        a.len() == 4 || a.len() == 5,
        "usage: bench-limit FILE CHUNK_SIZE ZSTD_LEVEL [on|off|hash]"
    );
    let hash_only = a.get(4).is_some_and(|m| m == "hash");
    let f = std::fs::File::open(&a[1]).expect("open");
    let cs: u64 = a[2].parse().expect("CHUNK_SIZE");
    let level: i32 = a[3].parse().expect("ZSTD_LEVEL");
    let encrypt = a.get(4).is_none_or(|m| m == "on");
    let keys = Arc::new(Keys::derive(
        &MasterKey::from_bytes([7; 32]),
        ArchiveId([1; 16]),
        encrypt,
    ));
    let chunks = f.metadata().unwrap().len().div_ceil(cs);
    let next = AtomicU64::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let keys = keys.clone();
            let (f, next) = (&f, &next);
            s.spawn(move || {
                let mut sealer = Sealer::new(Some(level), keys).unwrap();
                let mut buf = vec![0u8; cs as usize];
                let mut out = Vec::with_capacity(sealed_bound(cs as usize));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks {
                        break;
                    }
                    let n = f.read_at(&mut buf, i * cs).unwrap();
                    let scope = sealed::keys::Scope::volume(VolumeId([2; 16]));
                    if hash_only {
                        std::hint::black_box(sealer.id(&scope, &buf[..n]));
                        continue;
                    }
                    let at = Place {
                        scope,
                        addr: i * cs,
                        raw_len: n as u32,
                    };
                    let nonce = [i as u8; 24];
                    std::hint::black_box(sealer.seal(&buf[..n], &at, nonce, &mut out).unwrap());
                }
            });
        }
    });
    println!("{:.3}", t.elapsed().as_secs_f64());
}
