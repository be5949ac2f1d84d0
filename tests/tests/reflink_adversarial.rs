//! Adversarial rounds on the reflink source: between backups, the image is
//! changed in the ways that fool extent maps (ranges re-cloned from inside
//! the same image or from an older reflink copy of it, `copy_file_range`,
//! holes punched and zeroed, rewrites of the same bytes, growth and
//! shrink), on Btrfs, Btrfs with `compress=zstd` and XFS. Every session is
//! then restored and compared with the image as it was at that backup.
//!
//! Compressed Btrfs is the case that once failed: FIEMAP shows the same
//! record for every reference into one compressed extent, so a range
//! re-cloned from another part of it looked unchanged, the session kept
//! the old bytes and `verify` passed.

use sparsebak_tests::{semi_compressible, write_at, FsKind, LoopFs, Rng, Setup};
use std::fs;
use std::path::Path;
use std::process::Command;

const KIB: u64 = 1024;
const BLOCK: u64 = 4 * KIB;

fn xfs_io(file: &Path, cmd: &str) {
    let o = Command::new("xfs_io")
        .arg("-c")
        .arg(cmd)
        .arg(file)
        .output()
        .expect("xfs_io (xfsprogs) is needed");
    assert!(
        o.status.success(),
        "xfs_io -c '{cmd}' {}: {}",
        file.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn reflink_copy(src: &Path, dst: &Path) {
    let o = Command::new("cp")
        .arg("--reflink=always")
        .arg(src)
        .arg(dst)
        .output()
        .unwrap();
    assert!(o.status.success(), "cp --reflink: {o:?}");
}

/// Text that Btrfs' compression takes (its heuristic skips data that is
/// half random), different in every 4 KiB block so that moved ranges show.
fn text(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 64);
    let mut block = 0;
    while v.len() < n {
        let tag = rng.below(1 << 40);
        while v.len() < (block + 1) * 4096 && v.len() < n {
            v.extend_from_slice(format!("block {block} tag {tag:x}: lazy dog\n").as_bytes());
        }
        block += 1;
    }
    v.truncate(n);
    v
}

/// Bytes of `p` in compressed (ENCODED) extents, from `xfs_io fiemap`.
fn encoded(p: &Path) -> u64 {
    let o = Command::new("xfs_io")
        .args(["-c", "fiemap -v"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = u64::from_str_radix(f.last()?.trim_start_matches("0x"), 16).ok()?;
            let blocks: u64 = f.get(f.len().checked_sub(2)?)?.parse().ok()?;
            (flags & 0x8 != 0).then_some(blocks * 512)
        })
        .sum()
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

/// The minimal case, exactly: compress=zstd, 64 KiB chunks, a
/// 1 MiB compressible image; back up; keep a reflink copy; clone
/// `img[64K,+64K)` onto `img@0`; back up; clone `old[0,+64K)` back onto
/// `img@0`; back up. The last session must hold the original bytes.
#[test]
fn compressed_btrfs_reclone_from_the_same_extent_is_seen() {
    let lfs = LoopFs::with_options(FsKind::Btrfs, 300, "compress=zstd");
    let s = Setup::with_vols("adv-minimal", Some(&lfs.mnt));
    s.init("64K");
    let v = s.vol("img");
    fs::write(&v, text(&mut Rng::new(3), 1 << 20)).unwrap();
    let mut hist = vec![(s.backup("img"), s.dir.path().join("h0"))];
    assert!(encoded(&v) >= 1 << 19, "Btrfs did not compress the image");
    fs::copy(&v, &hist[0].1).unwrap();
    let old = lfs.mnt.join("old.img");
    reflink_copy(&v, &old);
    xfs_io(&v, &format!("reflink {} 65536 0 65536", v.display()));
    let out = s.ok(&["backup", "img"]);
    assert!(
        out.contains("compressed extents compared by content"),
        "{out}"
    );
    hist.push((
        s.sessions("img").last().unwrap().clone(),
        s.dir.path().join("h1"),
    ));
    fs::copy(&v, &hist[1].1).unwrap();
    xfs_io(&v, &format!("reflink {} 0 0 65536", old.display()));
    let out = s.ok(&["backup", "img"]);
    // The chunk at 0 went back to its first bytes: read, and stored.
    assert!(!out.contains("read 0 B"), "nothing was read: {out}");
    hist.push((
        s.sessions("img").last().unwrap().clone(),
        s.dir.path().join("h2"),
    ));
    fs::copy(&v, &hist[2].1).unwrap();
    for (sess, copy) in &hist {
        s.assert_restores("img", sess, copy);
    }
}

/// `rounds` rounds of 1–4 random mutations each, a backup after each,
/// then every session restored and compared.
fn rounds(kind: FsKind, options: &str, rounds: u32, seed: u64) {
    let lfs = LoopFs::with_options(kind, 400, options);
    let tag = format!("adv-{kind:?}-{}", options.replace('=', "-"));
    let s = Setup::with_vols(&tag, Some(&lfs.mnt));
    s.init("64K");
    let v = s.vol("img");
    let mut rng = Rng::new(seed);
    fs::write(&v, text(&mut rng, (3 << 20) + 12345)).unwrap();
    let mut olds: Vec<std::path::PathBuf> = Vec::new();
    let mut hist = Vec::new();
    let mut log = Vec::new();
    let mut enc_seen = 0;
    for round in 0..=rounds {
        if round > 0 {
            for _ in 0..1 + rng.below(4) {
                let size = len(&v);
                let blocks = size / BLOCK;
                // Half the time one of the moves extent maps cannot see.
                let pick = if rng.below(2) == 0 {
                    10 + rng.below(3)
                } else {
                    rng.below(13)
                };
                // Block-aligned offset and length inside the image.
                let mut range = |max_blocks: u64| {
                    let n = 1 + rng.below(max_blocks.min(blocks / 2).max(1));
                    let at = rng.below(blocks.saturating_sub(n).max(1));
                    (at * BLOCK, n * BLOCK)
                };
                let step = match pick {
                    0 | 1 => {
                        let (src, n) = range(32);
                        let (dst, _) = range(32);
                        let dst = dst.min(size / BLOCK * BLOCK - n);
                        xfs_io(&v, &format!("reflink {} {src} {dst} {n}", v.display()));
                        format!("clone {src}+{n} -> {dst}")
                    }
                    2 | 3 if !olds.is_empty() => {
                        let o = &olds[rng.below(olds.len() as u64) as usize];
                        let olen = len(o) / BLOCK * BLOCK;
                        let n = (1 + rng.below(32)) * BLOCK;
                        let n = n.min(olen).min(size / BLOCK * BLOCK);
                        let src = rng.below((olen - n) / BLOCK + 1) * BLOCK;
                        let dst = rng.below((size / BLOCK * BLOCK - n) / BLOCK + 1) * BLOCK;
                        xfs_io(&v, &format!("reflink {} {src} {dst} {n}", o.display()));
                        format!("clone old {src}+{n} -> {dst}")
                    }
                    10 | 11 if size >= 128 * KIB => {
                        // Inside one 128 KiB (compressed) extent: a 32 KiB
                        // piece re-pointed at another piece of it.
                        let base = rng.below(size / (128 * KIB)) * 128 * KIB;
                        let src = base + rng.below(4) * 32 * KIB;
                        let dst = base + rng.below(4) * 32 * KIB;
                        let n = 32 * KIB;
                        xfs_io(&v, &format!("reflink {} {src} {dst} {n}", v.display()));
                        format!("clone in extent {src}+{n} -> {dst}")
                    }
                    12 if !olds.is_empty() => {
                        // A range put back from an older copy, same offset.
                        let o = &olds[olds.len() - 1];
                        let lim = len(o).min(size) / (32 * KIB);
                        if lim == 0 {
                            continue;
                        }
                        let at = rng.below(lim) * 32 * KIB;
                        let n = 32 * KIB;
                        xfs_io(&v, &format!("reflink {} {at} {at} {n}", o.display()));
                        format!("revert from old {at}+{n}")
                    }
                    4 => {
                        let src = rng.below(size - 1);
                        let n = 1 + rng.below((200 * KIB).min(size - src));
                        let dst = rng.below(size - n + 1);
                        xfs_io(
                            &v,
                            &format!("copy_range -s {src} -d {dst} -l {n} {}", v.display()),
                        );
                        format!("copy_range {src}+{n} -> {dst}")
                    }
                    5 => {
                        let (at, n) = range(20);
                        xfs_io(&v, &format!("fpunch {at} {n}"));
                        format!("punch {at}+{n}")
                    }
                    6 => {
                        let (at, n) = range(20);
                        xfs_io(&v, &format!("fzero {at} {n}"));
                        format!("zero {at}+{n}")
                    }
                    7 => {
                        // The same bytes written again: new blocks, same data.
                        let at = rng.below(size - 1);
                        let n = (1 + rng.below(100 * KIB)).min(size - at);
                        let mut b = vec![0u8; n as usize];
                        use std::os::unix::fs::FileExt;
                        fs::File::open(&v)
                            .unwrap()
                            .read_exact_at(&mut b, at)
                            .unwrap();
                        write_at(&v, at, &b);
                        format!("rewrite same {at}+{n}")
                    }
                    8 => {
                        let new = if rng.below(2) == 0 && size > (1 << 20) {
                            size - rng.below(size / 3)
                        } else {
                            size + rng.below(1 << 20)
                        };
                        fs::OpenOptions::new()
                            .write(true)
                            .open(&v)
                            .unwrap()
                            .set_len(new)
                            .unwrap();
                        format!("resize {size} -> {new}")
                    }
                    _ => {
                        let at = rng.below(size);
                        let n = 1 + rng.below(70 * KIB);
                        let data = match rng.below(3) {
                            0 => rng.bytes(n as usize),
                            1 => semi_compressible(&mut rng, n as usize),
                            _ => text(&mut rng, n as usize),
                        };
                        write_at(&v, at, &data);
                        format!("write {at}+{n}")
                    }
                };
                log.push(format!("round {round}: {step}"));
            }
            // Now and then a reflink copy to clone from in later rounds.
            if rng.below(2) == 0 {
                let o = lfs.mnt.join(format!("old-{round}.img"));
                reflink_copy(&v, &o);
                olds.push(o);
            }
        }
        let sess = s.backup("img");
        enc_seen += encoded(&v);
        let copy = s.dir.path().join(format!("r{round}"));
        fs::copy(&v, &copy).unwrap();
        hist.push((sess, copy));
    }
    for (i, (sess, copy)) in hist.iter().enumerate() {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.assert_restores("img", sess, copy)
        }));
        if r.is_err() {
            panic!(
                "{kind:?} {options}: round {i} ({sess}) restored wrong; mutations:\n{}",
                log.join("\n")
            );
        }
    }
    s.ok(&["verify", "img"]);
    if options.contains("compress") {
        assert!(enc_seen > 0, "no compressed extent in any round");
    }
    eprintln!(
        "{kind:?} {options}: {rounds} adversarial rounds, {} mutations, every session exact",
        log.len()
    );
    drop(s);
    let _ = Command::new("sync").status();
}

#[test]
fn adversarial_rounds_on_compressed_btrfs() {
    rounds(FsKind::Btrfs, "compress=zstd", 70, 101);
}

#[test]
fn adversarial_rounds_on_btrfs() {
    rounds(FsKind::Btrfs, "", 70, 202);
}

#[test]
fn adversarial_rounds_on_xfs() {
    rounds(FsKind::Xfs, "", 70, 303);
}

/// A NOCOW image cannot be reflinked: it is read live, and the backup
/// says that it is no single moment of a volume in use.
#[test]
fn a_nocow_image_is_backed_up_with_a_warning() {
    let lfs = LoopFs::new(FsKind::Btrfs, 300);
    let s = Setup::with_vols("adv-nocow", Some(&lfs.mnt));
    s.init("64K");
    let v = s.vol("nocow.img");
    fs::File::create(&v).unwrap();
    let o = Command::new("chattr").arg("+C").arg(&v).output().unwrap();
    assert!(o.status.success(), "chattr +C: {o:?}");
    fs::write(&v, semi_compressible(&mut Rng::new(9), 1 << 20)).unwrap();
    let o = s.run(&["backup", "nocow.img"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("no snapshot taken") && err.contains("NOCOW"),
        "{err}"
    );
    let j = s.json(&["backup", "nocow.img"]);
    assert!(j["warnings"].to_string().contains("read while live"), "{j}");
    let copy = s.dir.path().join("copy");
    fs::copy(&v, &copy).unwrap();
    for sess in s.sessions("nocow.img") {
        s.assert_restores("nocow.img", &sess, &copy);
    }
}
