//! The reflink source on real loop-mounted XFS and Btrfs: after rewriting k
//! random 64 KiB blocks, the session holds exactly the chunks containing
//! them, only those chunks are read, and every session restores exactly.

use sparsebak_tests::{semi_compressible, write_at, FsKind, LoopFs, Rng, Setup};
use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

const MIB: u64 = 1024 * 1024;

fn changed_set_is_exact(kind: FsKind, chunk: &str, chunk_bytes: u64, seed: u64) {
    let lfs = LoopFs::new(kind, 512);
    let s = Setup::with_vols(&format!("reflink-{kind:?}"), Some(&lfs.mnt));
    s.init(chunk);
    let v = s.vol("vm.img");
    let size = 48 * MIB + 4096 * 3; // not chunk-aligned
    let mut rng = Rng::new(seed);
    fs::write(&v, semi_compressible(&mut rng, size as usize)).unwrap();
    let out = s.ok(&["backup", "vm.img"]);
    assert!(
        out.contains("reflink snapshot, full"),
        "{kind:?} should take reflink snapshots: {out}"
    );
    let mut history = vec![(s.sessions("vm.img")[0].clone(), s.dir.path().join("v0"))];
    fs::copy(&v, &history[0].1).unwrap();

    for round in 1..=3u64 {
        let k = 5 + rng.below(20);
        let mut blocks = BTreeSet::new();
        while (blocks.len() as u64) < k {
            blocks.insert(rng.below(size / 65536));
        }
        for &b in &blocks {
            write_at(&v, b * 65536, &rng.bytes(65536));
        }
        let out = s.ok(&["backup", "vm.img"]);
        assert!(out.contains("reflink delta"), "{out}");
        let sess = s.sessions("vm.img").last().unwrap().clone();
        let expect: BTreeSet<u64> = blocks
            .iter()
            .map(|b| b * 65536 / chunk_bytes * chunk_bytes)
            .collect();
        let got: BTreeSet<u64> = s.manifest("vm.img", &sess).iter().map(|e| e.addr).collect();
        assert_eq!(
            got, expect,
            "{kind:?} round {round}: changed chunks differ from the rewritten blocks"
        );
        let read = format!(
            "read {}",
            agent::units::human(expect.len() as u64 * chunk_bytes)
        );
        assert!(
            out.contains(&read),
            "{kind:?}: only the changed chunks may be read ({read}): {out}"
        );
        let copy = s.dir.path().join(format!("v{round}"));
        fs::copy(&v, &copy).unwrap();
        history.push((sess, copy));
    }
    // An unchanged volume: nothing read, nothing sent.
    let out = s.ok(&["backup", "vm.img"]);
    assert!(
        out.contains("read 0 B") && out.contains("0 chunks changed"),
        "{out}"
    );
    for (sess, copy) in &history {
        s.assert_restores("vm.img", sess, copy);
    }
    // Only the newest snapshot is kept as the next delta base.
    let snaps: Vec<_> = fs::read_dir(lfs.mnt.join(".sparsebak").join(s.archive_id()))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    drop(s);
    let _ = Command::new("sync").status();
}

#[test]
fn xfs_changed_chunks_are_exact() {
    changed_set_is_exact(FsKind::Xfs, "64K", 65536, 11);
    changed_set_is_exact(FsKind::Xfs, "256K", 262144, 12);
}

#[test]
fn btrfs_changed_chunks_are_exact() {
    changed_set_is_exact(FsKind::Btrfs, "64K", 65536, 21);
    changed_set_is_exact(FsKind::Btrfs, "256K", 262144, 22);
}

#[test]
fn growth_and_shrink_on_reflink() {
    let lfs = LoopFs::new(FsKind::Xfs, 300);
    let s = Setup::with_vols("reflink-grow", Some(&lfs.mnt));
    s.init("64K");
    let v = s.vol("g.img");
    let mut rng = Rng::new(5);
    fs::write(&v, rng.bytes(3 * MIB as usize + 100)).unwrap();
    let mut hist = Vec::new();
    for step in 0..4 {
        match step {
            1 => write_at(&v, 3 * MIB + 100, &rng.bytes(MIB as usize)), // grow
            2 => fs::OpenOptions::new()
                .write(true)
                .open(&v)
                .unwrap()
                .set_len(MIB + 5)
                .unwrap(), // shrink
            3 => fs::OpenOptions::new()
                .write(true)
                .open(&v)
                .unwrap()
                .set_len(5 * MIB)
                .unwrap(), // grow with a hole
            _ => {}
        }
        let sess = s.backup("g.img");
        let copy = s.dir.path().join(format!("g{step}"));
        fs::copy(&v, &copy).unwrap();
        hist.push((sess, copy));
    }
    for (sess, copy) in &hist {
        s.assert_restores("g.img", sess, copy);
    }
}
