//! Full and incremental sessions restore byte-exact, through the real
//! agent and receiver: growth, shrink, all-zero volumes, sizes that are not
//! a multiple of the chunk size, and zero chunks kept as holes.

use sparsebak_tests::{semi_compressible, write_at, Rng, Setup};
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn sessions_grow_shrink_and_restore_exactly() {
    let s = Setup::new("roundtrip");
    s.init("64K");
    let v = s.vol("disk.img");
    let mut rng = Rng::new(1);
    // 3 MiB + 12345 bytes: not a multiple of the chunk size
    let base = semi_compressible(&mut rng, 3 * 1024 * 1024 + 12345);
    fs::write(&v, &base).unwrap();
    let mut expected = Vec::new(); // (session, copy of the volume)
    let snapshot = |tag: &str, sess: String, exp: &mut Vec<(String, std::path::PathBuf)>| {
        let copy = s.dir.path().join(format!("expect-{tag}"));
        fs::copy(&v, &copy).unwrap();
        exp.push((sess, copy));
    };
    snapshot("full", s.backup("disk.img"), &mut expected);

    // 1: small random rewrites
    for _ in 0..5 {
        let off = rng.below(3 * 1024 * 1024);
        write_at(&v, off, &rng.bytes(5000));
    }
    snapshot("edit", s.backup("disk.img"), &mut expected);

    // 2: grow by 1.5 MiB (random tail) to an odd size
    let len = fs::metadata(&v).unwrap().len();
    write_at(&v, len, &rng.bytes(1536 * 1024 + 7));
    snapshot("grow", s.backup("disk.img"), &mut expected);

    // 3: shrink below the original size, to an odd size
    fs::OpenOptions::new()
        .write(true)
        .open(&v)
        .unwrap()
        .set_len(2 * 1024 * 1024 + 999)
        .unwrap();
    snapshot("shrink", s.backup("disk.img"), &mut expected);

    // 4: grow again with a hole: data from before the shrink must not reappear
    fs::OpenOptions::new()
        .write(true)
        .open(&v)
        .unwrap()
        .set_len(4 * 1024 * 1024)
        .unwrap();
    write_at(&v, 4 * 1024 * 1024 - 100, &[7u8; 100]);
    snapshot("regrow", s.backup("disk.img"), &mut expected);

    // 5: zero a range that held data (zero chunks must be recorded)
    write_at(&v, 0, &vec![0u8; 256 * 1024]);
    snapshot("zeroed", s.backup("disk.img"), &mut expected);

    // 6: no change at all: an empty session
    let out = s.ok(&["backup", "disk.img"]);
    assert!(
        out.contains("0 chunks changed"),
        "unchanged volume sent chunks: {out}"
    );
    let sess = out
        .split_whitespace()
        .skip_while(|w| *w != "session")
        .nth(1)
        .unwrap()
        .to_string();
    snapshot("same", sess, &mut expected);

    let names: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(s.sessions("disk.img"), names);
    assert_eq!(s.archive_sessions("disk.img"), names);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, names, "session names sort in time order");
    for (sess, copy) in &expected {
        s.assert_restores("disk.img", sess, copy);
        s.ok(&["verify", "disk.img", "--session", sess]);
    }
    // The default session is the newest.
    let out = s.dir.path().join("latest.img");
    s.ok(&["restore", "disk.img", "--save-to", out.to_str().unwrap()]);
    assert_eq!(
        fs::read(&out).unwrap(),
        fs::read(&expected.last().unwrap().1).unwrap()
    );
}

#[test]
fn all_zero_and_sparse_volumes_restore_as_holes() {
    let s = Setup::new("zeros");
    s.init("64K");
    let v = s.vol("empty.img");
    fs::File::create(&v)
        .unwrap()
        .set_len(64 * 1024 * 1024)
        .unwrap();
    let out = s.ok(&["backup", "empty.img"]);
    assert!(out.contains("sent 0 B"), "{out}");
    let sess = s.sessions("empty.img");
    assert_eq!(
        s.manifest("empty.img", &sess[0]).len(),
        0,
        "an all-zero first session stores nothing"
    );
    let r = s.dir.path().join("r.img");
    s.ok(&["restore", "empty.img", "--save-to", r.to_str().unwrap()]);
    let m = fs::metadata(&r).unwrap();
    assert_eq!(m.len(), 64 * 1024 * 1024);
    assert_eq!(
        m.blocks(),
        0,
        "zero chunks must be holes, not written zeros"
    );
    assert!(fs::read(&r).unwrap().iter().all(|&b| b == 0));

    // A written all-zero file (no holes) is detected as zero, too.
    let z = s.vol("zeros.img");
    fs::write(&z, vec![0u8; 3 * 65536 + 5]).unwrap();
    let out = s.ok(&["backup", "zeros.img"]);
    assert!(out.contains("sent 0 B"), "{out}");
    let sess = s.sessions("zeros.img");
    s.assert_restores("zeros.img", &sess[0], &z);

    // Data, then zeroed: the second session records zero chunks.
    let d = s.vol("d.img");
    let mut rng = Rng::new(2);
    fs::write(&d, rng.bytes(4 * 65536)).unwrap();
    s.backup("d.img");
    write_at(&d, 65536, &vec![0u8; 2 * 65536]);
    let sess = s.backup("d.img");
    let m = s.manifest("d.img", &sess);
    assert_eq!(
        m.iter()
            .filter(|e| e.codec == protocol::chunk::Codec::Zero)
            .count(),
        2
    );
    s.assert_restores("d.img", &sess, &d);
    let r2 = s.dir.path().join("r2.img");
    s.ok(&["restore", "d.img", "--save-to", r2.to_str().unwrap()]);
    assert_eq!(
        fs::metadata(&r2).unwrap().blocks() * 512,
        2 * 65536,
        "the zeroed middle is a hole"
    );
}

#[test]
fn restore_refuses_to_overwrite_without_force_and_bad_input_is_named() {
    let s = Setup::new("cli");
    s.init("64K");
    let v = s.vol("a.img");
    fs::write(&v, Rng::new(3).bytes(200_000)).unwrap();
    s.backup("a.img");
    let r = s.dir.path().join("r.img");
    fs::write(&r, b"precious").unwrap();
    let err = s.fails(&["restore", "a.img", "--save-to", r.to_str().unwrap()]);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(&r).unwrap(), b"precious");
    s.ok(&[
        "restore",
        "a.img",
        "--save-to",
        r.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(fs::read(&r).unwrap(), fs::read(&v).unwrap());

    assert!(s
        .fails(&["backup", "../etc/passwd"])
        .contains("invalid volume name"));
    assert!(s.fails(&["backup", "missing.img"]).contains("not found"));
    assert!(s
        .fails(&[
            "restore",
            "a.img",
            "--session",
            "S_19990101-000000-000000",
            "--save-to",
            "/tmp/x"
        ])
        .contains("no session"));
    assert!(s.fails(&["arch-init"]).contains("already has archive"));
    let bad = Setup::new("cli-bad");
    assert!(bad
        .fails(&["arch-init", "--chunk-size", "100K"])
        .contains("chunk size"));
    assert!(bad
        .fails(&["arch-init", "--compression", "lz4"])
        .contains("compression"));
    assert!(bad.fails(&["backup", "a.img"]).contains("run arch-init"));
}

#[test]
fn two_backups_in_the_same_second_get_ordered_names() {
    let s = Setup::new("fast");
    s.init("64K");
    fs::write(s.vol("a.img"), Rng::new(4).bytes(70_000)).unwrap();
    let a = s.backup("a.img");
    let b = s.backup("a.img");
    let c = s.backup("a.img");
    assert!(a < b && b < c, "{a} {b} {c}");
}

/// `arch-init --pad-sizes`: every stored chunk's size is a multiple of the
/// bucket (a sixteenth of the chunk, at least 4 KiB) or the size of a
/// chunk stored raw; restores are exact; a fresh dom0 learns the setting
/// from the root and keeps padding.
#[test]
fn padded_sizes_fall_in_buckets_and_survive_a_recovery() {
    let s = Setup::new("pad");
    s.ok(&["arch-init", "--chunk-size", "64K", "--pad-sizes"]);
    let mut rng = Rng::new(31);
    const CS: usize = 65536;
    let mut v = semi_compressible(&mut rng, 24 * CS);
    // Some chunks compress well, some hardly at all.
    for i in 0..8 {
        let at = i * 3 * CS;
        v[at..at + CS / 2].fill(i as u8);
    }
    fs::write(s.vol("v.img"), &v).unwrap();
    let first = s.backup("v.img");
    let sizes = |s: &Setup| -> Vec<u64> {
        sparsebak_tests::files_under(&s.archive_vol("v.img"))
            .into_iter()
            .filter(|f| {
                f.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('x'))
            })
            .map(|f| fs::metadata(s.archive_vol("v.img").join(f)).unwrap().len())
            .collect()
    };
    let bucket = 4096;
    let check = |sz: &[u64]| {
        assert!(!sz.is_empty());
        for &n in sz {
            assert!(
                n % bucket == 0 || n == CS as u64 + 46,
                "a stored size of {n} is in no bucket"
            );
        }
    };
    check(&sizes(&s));
    assert!(
        sizes(&s).iter().any(|&n| n < CS as u64 / 2),
        "nothing compressed"
    );
    s.assert_restores("v.img", &first, &s.vol("v.img"));
    // A fresh dom0: the root says the archive pads.
    let f = Setup::with_vols("pad-fresh", Some(&s.vols));
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&s.arch)
        .arg(&f.arch)
        .status()
        .unwrap();
    assert!(st.success());
    f.ok(&["arch-import"]);
    write_at(&f.vol("v.img"), 5 * CS as u64, &[9u8; 30000]);
    let second = f.backup("v.img");
    check(&sizes(&f));
    f.assert_restores("v.img", &second, &f.vol("v.img"));
}
