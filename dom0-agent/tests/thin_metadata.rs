//! thin_delta / thin_dump parsing and block→chunk mapping, on real thin
//! metadata: files built with `thin_restore` from XML, read by the real
//! `thin_delta` and `thin_dump` (Debian's thin-provisioning-tools), and a
//! kernel-made metadata file that holds a metadata snapshot.

use agent::chunkmap::ChunkMap;
use agent::source::thin::{fold_delta, fold_dump};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tool(name: &str, args: &[&str]) -> Vec<u8> {
    let o = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("{name} is needed for this test ({e}): apt-get install thin-provisioning-tools")
    });
    assert!(
        o.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sbk-thin-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A pool with two devices: block → data block maps.
struct Model {
    block_sectors: u64,
    devs: [BTreeMap<u64, u64>; 2],
}

impl Model {
    fn xml(&self) -> String {
        let nr = self
            .devs
            .iter()
            .flat_map(|d| d.values())
            .max()
            .map_or(1, |m| m + 1);
        let mut s = format!(
            "<superblock uuid=\"\" time=\"1\" transaction=\"2\" flags=\"0\" version=\"2\" data_block_size=\"{}\" nr_data_blocks=\"{nr}\">\n",
            self.block_sectors
        );
        for (i, d) in self.devs.iter().enumerate() {
            let _ = writeln!(s, "<device dev_id=\"{}\" mapped_blocks=\"{}\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">", i + 1, d.len());
            for (o, b) in d {
                let _ = writeln!(
                    s,
                    "<single_mapping origin_block=\"{o}\" data_block=\"{b}\" time=\"0\"/>"
                );
            }
            s.push_str("</device>\n");
        }
        s.push_str("</superblock>\n");
        s
    }

    fn restore(&self, dir: &Path) -> PathBuf {
        let xml = dir.join("pool.xml");
        std::fs::write(&xml, self.xml()).unwrap();
        let meta = dir.join("meta.bin");
        std::fs::File::create(&meta)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        tool(
            "thin_restore",
            &["-i", xml.to_str().unwrap(), "-o", meta.to_str().unwrap()],
        );
        meta
    }

    /// Brute force: every byte range of every block, one at a time.
    fn expected_delta(&self, chunk: u64, size: u64) -> Vec<u64> {
        let bb = self.block_sectors * 512;
        let mut set = std::collections::BTreeSet::new();
        let last = self
            .devs
            .iter()
            .flat_map(|d| d.keys())
            .max()
            .copied()
            .unwrap_or(0);
        for b in 0..=last {
            if self.devs[0].get(&b) != self.devs[1].get(&b) {
                let mut off = b * bb;
                while off < (b + 1) * bb && off < size {
                    set.insert(off / chunk);
                    off += 512;
                }
            }
        }
        set.into_iter().collect()
    }

    fn expected_dump(&self, dev: usize, chunk: u64, size: u64) -> Vec<u64> {
        let bb = self.block_sectors * 512;
        let mut set = std::collections::BTreeSet::new();
        for &b in self.devs[dev].keys() {
            let mut off = b * bb;
            while off < (b + 1) * bb && off < size {
                set.insert(off / chunk);
                off += 512;
            }
        }
        set.into_iter().collect()
    }
}

fn delta_chunks(meta: &Path, chunk: u64, size: u64) -> Vec<u64> {
    let out = tool(
        "thin_delta",
        &["--snap1", "1", "--snap2", "2", meta.to_str().unwrap()],
    );
    let mut m = ChunkMap::new(size.div_ceil(chunk));
    fold_delta(&out[..], &mut m, chunk, size).unwrap();
    m.iter().collect()
}

fn dump_chunks(meta: &Path, dev: &str, chunk: u64, size: u64) -> Vec<u64> {
    let out = tool("thin_dump", &["--dev-id", dev, meta.to_str().unwrap()]);
    let mut m = ChunkMap::new(size.div_ceil(chunk));
    fold_dump(&out[..], &mut m, chunk, size).unwrap();
    m.iter().collect()
}

#[test]
fn kernel_made_metadata_snapshot() {
    // Made by a real pool while reserve_metadata_snap was held: block size
    // 64 KiB; thin_delta -m between snap (2) and vol (1) reports blocks
    // 100..103 different and 8192..8208 right_only.
    let dir = scratch("msnap");
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tmeta-with-msnap.bin.gz");
    let meta = dir.join("tmeta.bin");
    let raw = Command::new("gzip").arg("-dc").arg(&gz).output().unwrap();
    assert!(raw.status.success());
    std::fs::write(&meta, raw.stdout).unwrap();
    // bare -m: accepted by 0.9 and by the 1.x rewrite
    let out = tool(
        "thin_delta",
        &["-m", "--snap1", "2", "--snap2", "1", meta.to_str().unwrap()],
    );
    let size = 1 << 30;
    let mut m = ChunkMap::new(size / 262_144);
    let r = fold_delta(&out[..], &mut m, 262_144, size).unwrap();
    assert_eq!(r.block_bytes, 65536);
    // 256 KiB chunks: blocks 100..=102 → chunk 25; 8192..8207 → chunks 2048..=2051
    assert_eq!(
        m.iter().collect::<Vec<_>>(),
        vec![25, 2048, 2049, 2050, 2051]
    );
    // clipped to a smaller volume (as after lvreduce)
    let mut m = ChunkMap::new(512);
    fold_delta(&out[..], &mut m, 65536, 512 * 65536).unwrap();
    assert_eq!(m.iter().collect::<Vec<_>>(), vec![100, 101, 102]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn restored_metadata_matches_the_model() {
    let dir = scratch("model");
    let mut devs = [BTreeMap::new(), BTreeMap::new()];
    // dev 1: 0..64 mapped; dev 2: a snapshot with 10..13 rewritten, 40..44
    // discarded, 100..110 added
    for b in 0..64 {
        devs[0].insert(b, b);
        devs[1].insert(b, b);
    }
    for b in 10..13 {
        devs[1].insert(b, 500 + b);
    }
    for b in 40..44 {
        devs[1].remove(&b);
    }
    for b in 100..110 {
        devs[1].insert(b, 600 + b);
    }
    let m = Model {
        block_sectors: 128,
        devs,
    };
    let meta = m.restore(&dir);
    for (chunk, size) in [
        (65536, 200 * 65536),
        (262_144, 200 * 65536),
        (2 << 20, 200 * 65536),
        (65536, 105 * 65536 + 512),
    ] {
        assert_eq!(
            delta_chunks(&meta, chunk, size),
            m.expected_delta(chunk, size),
            "chunk {chunk} size {size}"
        );
        assert_eq!(
            dump_chunks(&meta, "2", chunk, size),
            m.expected_dump(1, chunk, size)
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn block_to_chunk_mapping_matches_brute_force(
        block_pow in 0u32..5,        // 64 KiB .. 1 MiB pool blocks
        chunk_pow in 0u32..6,        // 64 KiB .. 2 MiB chunks
        size_blocks in 1u64..120,
        tail in 0u64..128,
        ops in proptest::collection::vec((0u64..128, 0u8..3), 0..60),
    ) {
        let block_sectors = 128u64 << block_pow;
        let chunk = 65536u64 << chunk_pow;
        let mut devs = [BTreeMap::new(), BTreeMap::new()];
        let mut next = 1000u64;
        for b in 0..100 {
            devs[0].insert(b, b);
            devs[1].insert(b, b);
        }
        for (b, op) in ops {
            match op {
                0 => { devs[1].insert(b, next); next += 1; }
                1 => { devs[1].remove(&b); }
                _ => { devs[0].remove(&b); devs[1].remove(&b); }
            }
        }
        let m = Model { block_sectors, devs };
        let dir = scratch("prop");
        let meta = m.restore(&dir);
        let size = size_blocks * block_sectors * 512 + tail * 512;
        prop_assert_eq!(delta_chunks(&meta, chunk, size), m.expected_delta(chunk, size));
        prop_assert_eq!(dump_chunks(&meta, "2", chunk, size), m.expected_dump(1, chunk, size));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// About a million changed ranges: the changed-chunk map is built from
/// the real thin_delta output as a stream. Prints the time it takes.
#[test]
fn a_million_changed_ranges() {
    let dir = scratch("million");
    let n: u64 = 1_000_000;
    let mut xml = String::with_capacity(150 << 20);
    let _ = writeln!(xml, "<superblock uuid=\"\" time=\"1\" transaction=\"2\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"{}\">", 4 * n);
    let _ = writeln!(xml, "<device dev_id=\"1\" mapped_blocks=\"{}\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">", 2 * n);
    let _ = writeln!(
        xml,
        "<range_mapping origin_begin=\"0\" data_begin=\"0\" length=\"{}\" time=\"0\"/>\n</device>",
        2 * n
    );
    let _ = writeln!(xml, "<device dev_id=\"2\" mapped_blocks=\"{}\" transaction=\"1\" creation_time=\"1\" snap_time=\"1\">", 2 * n);
    for i in 0..n {
        // every other block rewritten: a million separate changed ranges
        let _ = writeln!(
            xml,
            "<single_mapping origin_block=\"{}\" data_block=\"{}\" time=\"1\"/>",
            2 * i,
            2 * n + i
        );
        let _ = writeln!(
            xml,
            "<single_mapping origin_block=\"{}\" data_block=\"{}\" time=\"0\"/>",
            2 * i + 1,
            2 * i + 1
        );
    }
    xml.push_str("</device>\n</superblock>\n");
    let xp = dir.join("big.xml");
    std::fs::write(&xp, xml).unwrap();
    let meta = dir.join("big.meta");
    std::fs::File::create(&meta)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    tool(
        "thin_restore",
        &["-i", xp.to_str().unwrap(), "-o", meta.to_str().unwrap()],
    );
    let size = 2 * n * 65536;
    let t = std::time::Instant::now();
    let mut child = Command::new("thin_delta")
        .args(["--snap1", "1", "--snap2", "2", meta.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut m = ChunkMap::new(size / 65536);
    let r = fold_delta(
        std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut m,
        65536,
        size,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.ranges, n);
    assert_eq!(m.count(), n);
    assert!(m.iter().all(|c| c % 2 == 0));
    let mut m4 = ChunkMap::new(size / 262_144);
    let out = tool(
        "thin_delta",
        &["--snap1", "1", "--snap2", "2", meta.to_str().unwrap()],
    );
    fold_delta(&out[..], &mut m4, 262_144, size).unwrap();
    assert_eq!(
        m4.count(),
        size / 262_144,
        "every 256 KiB chunk holds a changed block"
    );
    println!(
        "changed-chunk map for {n} changed ranges (thin_delta + streaming parse): {secs:.2} s"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
