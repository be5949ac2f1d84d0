//! The archive's filesystem fills up mid-backup (a small ext4 on a loop
//! device): a clean error naming the archive, no session committed on
//! either side, earlier sessions intact, the failed session's space freed,
//! and the next backup that fits works.

use sparsebak_tests::{FsKind, LoopFs, Rng, Setup};
use std::fs;
use std::path::Path;

fn free_bytes(p: &Path) -> u64 {
    let o = std::process::Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(p)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    let v: Vec<u64> = t.split_whitespace().map(|x| x.parse().unwrap()).collect();
    v[0] * v[1]
}

#[test]
fn disk_full_mid_backup_is_clean() {
    let lfs = LoopFs::new(FsKind::Ext4, 48);
    let mut s = Setup::new("enospc");
    s.arch = lfs.mnt.join("archive");
    s.init("64K");
    let mut rng = Rng::new(11);
    fs::write(s.vol("small.img"), rng.bytes(2 << 20)).unwrap();
    let first = s.backup("small.img");
    let copy = s.dir.path().join("small-copy");
    fs::copy(s.vol("small.img"), &copy).unwrap();
    let free_before = free_bytes(&lfs.mnt);

    // Incompressible and larger than the whole filesystem.
    fs::write(s.vol("big.img"), rng.bytes(64 << 20)).unwrap();
    let err = s.fails(&["backup", "big.img"]);
    assert!(
        err.contains(&format!("the archive at {} is out of space", s.dest()))
            && err.contains("No space left on device"),
        "{err}"
    );
    assert!(s.sessions("big.img").is_empty(), "dom0 recorded a session");
    assert!(
        s.archive_sessions("big.img").is_empty(),
        "archive kept a session"
    );
    let leftovers: Vec<_> = fs::read_dir(s.archive_vol("big.img"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "left in the archive: {leftovers:?}");
    let free_after = free_bytes(&lfs.mnt);
    assert!(
        free_after + (1 << 20) >= free_before,
        "space not freed: {free_before} free before, {free_after} after"
    );

    // Earlier sessions intact; the next backup that fits works.
    s.assert_restores("small.img", &first, &copy);
    sparsebak_tests::write_at(&s.vol("small.img"), 4096, &rng.bytes(8192));
    fs::copy(s.vol("small.img"), &copy).unwrap();
    let second = s.backup("small.img");
    s.assert_restores("small.img", &second, &copy);
    let out = s.ok(&["arch-check"]);
    assert!(out.contains("no problems"), "{out}");
}
