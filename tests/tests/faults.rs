//! Cut streams and a killed receiver: afterwards dom0 and the archive agree
//! on the sessions, every session restores byte-exact, and the next backup
//! works. Altered chunk files fail verify and restore with a named error.

use sparsebak_tests::{receiver_bin, script, semi_compressible, write_at, Rng, Setup};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const CUT: &str = env!("CARGO_BIN_EXE_cutpipe");

struct Run {
    s: Setup,
    rng: Rng,
    /// session → copy of the volume it must restore to
    expect: BTreeMap<String, PathBuf>,
    n: u32,
}

impl Run {
    fn new(tag: &str, size: usize) -> Run {
        let s = Setup::new(tag);
        s.init("64K");
        let mut rng = Rng::new(99);
        fs::write(s.vol("v.img"), semi_compressible(&mut rng, size)).unwrap();
        let mut r = Run {
            s,
            rng,
            expect: BTreeMap::new(),
            n: 0,
        };
        r.clean_backup();
        r
    }

    /// Rewrites some random 64 KiB blocks and keeps a copy of the result.
    fn change(&mut self, blocks: u64) -> PathBuf {
        let v = self.s.vol("v.img");
        let len = fs::metadata(&v).unwrap().len();
        for _ in 0..blocks {
            let b = self.rng.below(len / 65536);
            let data = self.rng.bytes(65536);
            write_at(&v, b * 65536, &data);
        }
        self.n += 1;
        let copy = self.s.dir.path().join(format!("copy-{}", self.n));
        fs::copy(&v, &copy).unwrap();
        copy
    }

    /// Records which copy each new session must restore to.
    fn learn(&mut self, copy: &Path) {
        for sess in self.s.sessions("v.img") {
            self.expect
                .entry(sess)
                .or_insert_with(|| copy.to_path_buf());
        }
    }

    /// After a failed attempt on `copy`: a clean run settles any session the
    /// attempt left pending (it holds `copy`), then adds one more (same data).
    fn settle(&mut self, copy: &Path) {
        self.s.ok(&["backup", "v.img"]);
        self.learn(copy);
    }

    fn clean_backup(&mut self) {
        let copy = self.change(3);
        self.s.ok(&["backup", "v.img"]);
        self.learn(&copy);
    }

    /// dom0 and the archive list the same sessions, with no half-written
    /// session visible.
    fn assert_consistent(&self, ctx: &str) {
        let dom0 = self.s.sessions("v.img");
        assert_eq!(
            dom0,
            self.s.archive_sessions("v.img"),
            "{ctx}: dom0 and archive disagree"
        );
        assert_eq!(
            dom0,
            self.expect.keys().cloned().collect::<Vec<_>>(),
            "{ctx}"
        );
    }

    fn assert_all_restore(&self) {
        for (sess, copy) in &self.expect {
            self.s.assert_restores("v.img", sess, copy);
        }
    }

    fn with_wrapper(&mut self, body: &str) -> std::process::Output {
        let w = self.s.dir.path().join("wrapper.sh");
        script(&w, body);
        let mut cmd = self.s.cmd(&["backup", "v.img"]);
        // the wrapper goes last, so it wins over the default --remote-receiver
        cmd.arg("--remote-receiver").arg(&w);
        cmd.output().unwrap()
    }
}

#[test]
fn backup_stream_cut_at_many_offsets() {
    let mut r = Run::new("cut-fwd", 2 * 1024 * 1024);
    let recv = receiver_bin();
    let mut offsets: Vec<u64> = vec![0, 1, 4, 5, 11, 12, 13, 40, 41, 60, 100, 150, 200];
    for i in 0..36u64 {
        offsets.push(300 + i * 1_300_000 / 36 + r.rng.below(5000));
    }
    let (mut failed, mut succeeded) = (0, 0);
    for off in offsets {
        let copy = r.change(20);
        let o = r.with_wrapper(&format!("exec {CUT} {off} - {} \"$@\"", recv.display()));
        if o.status.success() {
            succeeded += 1;
        } else {
            failed += 1;
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("sparsebak: error"),
                "cut at {off}: no error message: {err}"
            );
        }
        r.learn(&copy);
        r.assert_consistent(&format!("cut at {off}"));
        // What a cut session stored is kept under one fixed name for the
        // next backup to resume from (tests/resume.rs), nothing else.
        let leftovers: Vec<_> = fs::read_dir(r.s.archive_vol("v.img"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                n.starts_with('.') && ![".newest", ".incoming", ".resume"].contains(&n.as_str())
            })
            .collect();
        assert!(
            leftovers.is_empty(),
            "cut at {off}: the receiver left {leftovers:?}"
        );
    }
    assert!(
        failed >= 40,
        "most cuts must fail ({failed} failed, {succeeded} succeeded)"
    );
    r.clean_backup();
    r.assert_consistent("after the cuts");
    r.assert_all_restore();
}

#[test]
fn reply_stream_cut_at_many_offsets() {
    // Cutting the receiver's replies can lose the commit acknowledgement
    // after the receiver committed: the next run must record that session.
    let mut r = Run::new("cut-back", 1024 * 1024);
    let recv = receiver_bin();
    let mut recovered = 0;
    // The replies begin with the hello (54 bytes) and the sealed root (a
    // `Data` frame of 21 bytes and the root, then a 21-byte `StreamEnd`),
    // which grows with every session: the session's replies are counted
    // from its end. A few cuts land in the hello and the root.
    let offsets = [0, 30, 60, 90].into_iter().map(|o| (o, false)).chain(
        (0..220)
            .step_by(7)
            .chain([230, 260, 300, 400])
            .map(|o| (o, true)),
    );
    for (off, after_root) in offsets {
        let off = if after_root {
            54 + 21 + 21 + fs::metadata(r.s.arch.join("dom0.root")).unwrap().len() + off
        } else {
            off
        };
        let copy = r.change(4);
        let before = r.s.sessions("v.img").len();
        let o = r.with_wrapper(&format!("exec {CUT} - {off} {} \"$@\"", recv.display()));
        let archive_has = r.s.archive_sessions("v.img").len();
        if !o.status.success() && archive_has > before {
            recovered += 1;
        }
        r.settle(&copy);
        r.assert_consistent(&format!("reply cut at {off}"));
    }
    assert!(
        recovered > 0,
        "no cut hit the window between commit and acknowledgement"
    );
    r.assert_all_restore();
}

#[test]
fn receiver_killed_at_random_moments() {
    let mut r = Run::new("kill", 8 * 1024 * 1024);
    let recv = receiver_bin();
    for (i, delay) in [
        "0.001", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.15", "0.2", "0.3", "0.5", "1",
    ]
    .iter()
    .enumerate()
    {
        let copy = r.change(40 + i as u64);
        let _ = r.with_wrapper(&format!(
            "exec timeout -s KILL {delay} {} \"$@\"",
            recv.display()
        ));
        r.settle(&copy);
        r.assert_consistent(&format!("killed after {delay}s"));
    }
    r.assert_all_restore();
}

#[test]
fn altered_chunk_files_fail_verify_and_restore_by_name() {
    let s = Setup::new("corrupt");
    s.init("64K");
    let v = s.vol("c.img");
    fs::write(&v, Rng::new(7).bytes(10 * 65536)).unwrap();
    let sess = s.backup("c.img");
    s.ok(&["verify", "c.img"]);
    let chunk = s
        .archive_vol("c.img")
        .join(format!("{sess}/c0000000/x0000000000030000"));
    let good = fs::read(&chunk).unwrap();
    let target = s.dir.path().join("out.img");

    let check = |what: &str, expect: &str| {
        let e = s.fails(&["verify", "c.img"]);
        assert!(
            e.contains(expect) && e.contains("'c.img'") && e.contains(&sess),
            "{what}: {e}"
        );
        let e = s.fails(&["restore", "c.img", "--save-to", target.to_str().unwrap()]);
        assert!(e.contains(expect), "{what}: {e}");
        assert!(
            !target.exists(),
            "{what}: a failed restore must not create its target"
        );
        assert!(fs::read_dir(s.dir.path())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().contains("partial")));
    };
    // one flipped bit
    let mut bad = good.clone();
    bad[1000] ^= 0x01;
    fs::write(&chunk, &bad).unwrap();
    check("flipped bit", "chunk at 0x30000 failed verification");
    // another chunk's data under this chunk's name
    fs::copy(
        s.archive_vol("c.img")
            .join(format!("{sess}/c0000000/x0000000000040000")),
        &chunk,
    )
    .unwrap();
    check("swapped chunk", "chunk at 0x30000 failed verification");
    // truncated
    fs::write(&chunk, &good[..good.len() / 2]).unwrap();
    check("truncated", "chunk");
    // missing: the receiver reports it, by volume, session and address
    fs::remove_file(&chunk).unwrap();
    check("missing", "0x30000");
    fs::write(&chunk, &good).unwrap();
    s.ok(&["verify", "c.img"]);
    s.assert_restores("c.img", &sess, &v);
}
