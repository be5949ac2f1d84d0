//! Prune, retention, delete, rename, arch-check and diff through the real
//! binaries; prunes interrupted by a SIGKILL at each file-system step (strace
//! fault injection on the real receiver) and by cut streams.

use sparsebak_tests::{receiver_bin, script, semi_compressible, write_at, Rng, Setup};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

const CUT: &str = env!("CARGO_BIN_EXE_cutpipe");

/// A volume with sessions whose expected contents are kept as copies.
struct Hist {
    s: Setup,
    rng: Rng,
    expect: BTreeMap<String, PathBuf>,
    n: u32,
}

impl Hist {
    fn new(tag: &str) -> Hist {
        let s = Setup::new(tag);
        s.init("64K");
        Hist {
            s,
            rng: Rng::new(5),
            expect: BTreeMap::new(),
            n: 0,
        }
    }

    fn vol(&self) -> PathBuf {
        self.s.vol("v.img")
    }

    /// Backs up the volume as it is now and remembers it.
    fn snap(&mut self) -> String {
        self.n += 1;
        let copy = self.s.dir.path().join(format!("copy-{}", self.n));
        fs::copy(self.vol(), &copy).unwrap();
        let sess = self.s.backup("v.img");
        self.expect.insert(sess.clone(), copy);
        sess
    }

    fn rewrite(&mut self, blocks: u64) {
        let v = self.vol();
        let len = fs::metadata(&v).unwrap().len();
        for _ in 0..blocks {
            let b = self.rng.below(len / 65536);
            let data = semi_compressible(&mut self.rng, 65536);
            write_at(&v, b * 65536, &data);
        }
    }

    /// Copies `n` 64 KiB blocks from block `from` to block `to`: moved
    /// data, which the next session stores by reference to the chunk files
    /// already stored (dedup within the volume's scope): shared files for
    /// every prune below to move and remove.
    fn copy_blocks(&self, from: u64, to: u64, n: u64) {
        let v = self.vol();
        let data = fs::read(&v).unwrap();
        let (a, b) = ((from * 65536) as usize, ((from + n) * 65536) as usize);
        write_at(&v, to * 65536, &data[a..b]);
    }

    /// The newest session stored some chunks by reference.
    fn shares(&self) {
        let j = self.s.json(&["list", "v.img", "--offline"]);
        let n = j["volumes"][0]["sessions"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["ref_chunks"]
            .as_u64()
            .unwrap();
        assert!(n > 0, "no chunk stored by reference: {j}");
    }

    fn resize(&self, len: u64) {
        fs::OpenOptions::new()
            .write(true)
            .open(self.vol())
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    /// A history with edits, a shrink, a regrowth with new data past the
    /// old end and an all-zero stretch: everything a merge must get right.
    fn build(tag: &str) -> Hist {
        let mut h = Hist::new(tag);
        fs::write(h.vol(), semi_compressible(&mut h.rng, 40 * 65536 + 777)).unwrap();
        h.snap();
        h.copy_blocks(1, 32, 3);
        h.rewrite(6);
        h.snap();
        h.shares();
        h.resize(12 * 65536 + 100); // shrink
        h.rewrite(2);
        h.snap();
        h.resize(30 * 65536); // regrow: old data must not reappear
        let d = semi_compressible(&mut h.rng, 65536);
        write_at(&h.vol(), 20 * 65536, &d);
        h.snap();
        write_at(&h.vol(), 0, &vec![0u8; 4 * 65536]);
        h.rewrite(3);
        h.snap();
        h.rewrite(1);
        h.snap();
        h
    }

    /// A full session whose later data mostly lands where it had zeros:
    /// the pruned session keeps fewer files than its successor, so a prune
    /// of the first moves its files into the second.
    fn build_growing(tag: &str) -> Hist {
        let mut h = Hist::new(tag);
        let mut v = semi_compressible(&mut h.rng, 20 * 65536);
        v.resize(64 * 65536, 0);
        fs::write(h.vol(), v).unwrap();
        h.snap();
        let d = semi_compressible(&mut h.rng, 44 * 65536);
        write_at(&h.vol(), 20 * 65536, &d);
        h.copy_blocks(2, 50, 4);
        h.snap();
        h.shares();
        h.rewrite(2);
        h.snap();
        h
    }

    /// dom0 and the archive list exactly the expected sessions, their
    /// manifests are identical, arch-check is clean, and each restores.
    fn assert_intact(&self, ctx: &str) {
        let want: Vec<String> = self.expect.keys().cloned().collect();
        assert_eq!(self.s.sessions("v.img"), want, "{ctx}: dom0 sessions");
        assert_eq!(
            self.s.archive_sessions("v.img"),
            want,
            "{ctx}: archive sessions"
        );
        for sess in &want {
            let ours = fs::read(self.dom0_session(sess).join("manifest")).unwrap();
            let theirs = fs::read(self.s.archive_vol("v.img").join(sess).join("manifest")).unwrap();
            assert_eq!(ours, theirs, "{ctx}: manifests of {sess} differ");
        }
        let out = self.s.ok(&["arch-check"]);
        assert!(out.contains("no problems"), "{ctx}: {out}");
        // Shared chunk files: one file per distinct chunk the sessions
        // name, and no other (nothing freed too early or left behind).
        let mut ids = std::collections::BTreeSet::new();
        for sess in &want {
            for e in self.s.manifest("v.img", sess) {
                if e.codec == protocol::chunk::Codec::Sealed {
                    ids.insert(e.hash);
                }
            }
        }
        let mut inodes = std::collections::BTreeSet::new();
        let mut stack = vec![self.s.archive_vol("v.img")];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let m = fs::symlink_metadata(e.path()).unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else if e.file_name().to_string_lossy().starts_with('x') {
                    inodes.insert(m.ino());
                }
            }
        }
        assert_eq!(
            inodes.len(),
            ids.len(),
            "{ctx}: chunk files vs distinct chunks"
        );
        for (sess, copy) in &self.expect {
            self.s.assert_restores("v.img", sess, copy);
        }
    }

    fn dom0_session(&self, sess: &str) -> PathBuf {
        self.s.meta_vol("v.img").join(sess)
    }

    fn forget(&mut self, sess: &str) {
        self.expect.remove(sess);
    }

    fn names(&self) -> Vec<String> {
        self.expect.keys().cloned().collect()
    }

    /// Runs the agent with the receiver wrapped by `body` (a shell script
    /// ending in `"$@"` for the receiver's arguments).
    fn wrapped(&self, args: &[&str], body: &str) -> std::process::Output {
        let w = self.s.dir.path().join("wrap.sh");
        script(&w, body);
        let mut c = self.s.cmd(args);
        c.arg("--remote-receiver").arg(&w);
        c.output().unwrap()
    }
}

#[test]
fn prune_every_way_keeps_remaining_sessions_exact() {
    let mut h = Hist::build("prune-ways");
    h.assert_intact("before");
    let names = h.names();

    // One session in the middle (the shrunk one): chunks it still needs
    // move by rename, so the successor's file is the same inode.
    let (p, q) = (&names[2], &names[3]);
    let p_dir = h.s.archive_vol("v.img").join(p);
    let mut inodes = BTreeMap::new();
    for e in fs::read_dir(p_dir.join("c0000000")).unwrap().flatten() {
        inodes.insert(e.file_name(), e.metadata().unwrap().ino());
    }
    let out = h.s.ok(&["prune", "v.img", "--session", p]);
    assert!(out.contains(&format!("merged into {q}")), "{out}");
    h.forget(p);
    h.assert_intact("after pruning the shrunk session");
    let q_fan = h.s.archive_vol("v.img").join(q).join("c0000000");
    let moved = inodes
        .iter()
        .filter(|(n, ino)| fs::metadata(q_fan.join(n)).is_ok_and(|m| m.ino() == **ino))
        .count();
    assert!(moved > 0, "no chunk file of {p} was moved into {q}");
    assert!(!p_dir.exists());

    // The newest is refused, by name and in a range.
    let newest = names.last().unwrap();
    let e = h.s.fails(&["prune", "v.img", "--session", newest]);
    assert!(e.contains("never pruned"), "{e}");
    let e = h.s.fails(&[
        "prune",
        "v.img",
        "--session",
        &format!("{},{newest}", names[0]),
    ]);
    assert!(e.contains("never pruned"), "{e}");
    let e =
        h.s.fails(&["prune", "v.img", "--session", "S_20000101-000000-000000"]);
    assert!(e.contains("no session"), "{e}");

    // A range: the first two remaining.
    let cur = h.names();
    h.s.ok(&[
        "prune",
        "v.img",
        "--session",
        &format!("{},{}", cur[0], cur[1]),
    ]);
    h.forget(&cur[0]);
    h.forget(&cur[1]);
    h.assert_intact("after pruning a range");

    // --dry-run changes nothing.
    let out = h.s.ok(&["prune", "v.img", "--keep", "last=1", "--dry-run"]);
    assert_eq!(
        out.matches("would prune").count(),
        h.names().len() - 1,
        "{out}"
    );
    h.assert_intact("after a dry run");

    // --all-before a future date: all but the newest.
    h.s.ok(&["prune", "v.img", "--all-before", "2099-01-01"]);
    let last = h.names().pop().unwrap();
    h.expect.retain(|k, _| *k == last);
    h.assert_intact("after --all-before");

    // And the next backup and prune still work.
    h.rewrite(2);
    h.snap();
    h.rewrite(2);
    h.snap();
    h.s.ok(&["prune", "v.img", "--keep", "last=2"]);
    let keep: Vec<String> = h.names().split_off(h.names().len() - 2);
    h.expect.retain(|k, _| keep.contains(k));
    h.assert_intact("after more backups and a keep prune");
}

#[test]
fn autoprune_applies_the_configured_policy() {
    let mut h = Hist::new("autoprune");
    fs::write(h.vol(), semi_compressible(&mut h.rng, 8 * 65536)).unwrap();
    let cfg = h.s.dir.path().join("sparsebak.toml");
    fs::write(&cfg, "keep = \"last=2\"\n").unwrap();
    for _ in 0..4 {
        h.rewrite(1);
        let mut c = h.s.cmd(&["backup", "v.img", "--autoprune"]);
        c.arg("--config").arg(&cfg);
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(h.s.sessions("v.img").len(), 2);
    assert_eq!(h.s.archive_sessions("v.img").len(), 2);
    let e = h.s.fails(&["backup", "v.img", "--autoprune"]);
    assert!(e.contains("needs a `keep` policy"), "{e}");
}

/// SIGKILLs the receiver at the Nth call of `syscall` while it prunes
/// session `victim_idx` of the history `build` makes, for N = 1, 2, ... until the prune
/// gets through untouched. After each kill the next command settles the
/// prune on both sides and every remaining session restores exact. Returns
/// how many kills there were.
fn kill_prune_at_each(build: fn(&str) -> Hist, syscall: &str, tag: &str, victim_idx: usize) -> u32 {
    let recv = receiver_bin();
    let mut killed = 0;
    for n in 1.. {
        let mut h = build(&format!("{tag}-{n}"));
        let victim = h.names()[victim_idx].clone();
        let o = h.wrapped(
            &["prune", "v.img", "--session", &victim],
            &format!(
                "exec strace -f -qq -o /dev/null -e trace={syscall} -e inject={syscall}:signal=KILL:when={n} {} \"$@\"",
                recv.display()
            ),
        );
        if o.status.success() {
            h.forget(&victim);
            h.assert_intact(&format!("{syscall}: prune untouched at #{n}"));
            break;
        }
        killed += 1;
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("sparsebak: error"), "{syscall} #{n}: {err}");
        // A backup settles the prune: finished if the receiver got past its
        // journal, undone if not. Then pruning again (if needed) works.
        h.rewrite(1);
        h.snap();
        if !h.s.archive_sessions("v.img").contains(&victim) {
            h.forget(&victim);
        }
        h.assert_intact(&format!("{syscall}: killed at #{n}, settled"));
        if h.expect.contains_key(&victim) {
            h.s.ok(&["prune", "v.img", "--session", &victim]);
            h.forget(&victim);
            h.assert_intact(&format!("{syscall}: killed at #{n}, pruned again"));
        }
        assert!(n < 200, "{syscall}: the prune never got through");
    }
    eprintln!("prune killed at {syscall}: {killed} kills, each settled and checked");
    killed
}

#[test]
fn prune_killed_at_every_rename() {
    // The first session into the second, which has more files: 20 chunk
    // files of the first move.
    let killed = kill_prune_at_each(Hist::build_growing, "rename", "kill-rename", 0);
    assert!(killed >= 20, "only {killed} kills happened");
    // A full session into a small incremental: the incremental's files
    // move into the full session's directory, which takes its name.
    let killed = kill_prune_at_each(Hist::build, "rename", "kill-rename-older", 0);
    assert!(killed >= 8, "only {killed} kills happened");
}

#[test]
fn prune_killed_at_every_unlink_and_sync() {
    // The shrunk session into the regrown one (mask entries), then the
    // full session into a small incremental (P's hidden chunks unlinked).
    let k1 = kill_prune_at_each(Hist::build, "unlink,rmdir,unlinkat", "kill-unlink", 2);
    let k2 = kill_prune_at_each(Hist::build, "fsync,syncfs", "kill-sync", 2);
    let k3 = kill_prune_at_each(Hist::build, "unlink,rmdir,unlinkat", "kill-unlink-older", 0);
    let k4 = kill_prune_at_each(Hist::build, "fsync,syncfs", "kill-sync-older", 0);
    assert!(
        k1 >= 4 && k2 >= 4 && k3 >= 4 && k4 >= 4,
        "too few kills: {k1} {k2} {k3} {k4}"
    );
}

/// The directory of a session in the archive, by inode.
fn ino(h: &Hist, sess: &str) -> u64 {
    fs::metadata(h.s.archive_vol("v.img").join(sess))
        .unwrap()
        .ino()
}

#[test]
fn prune_moves_the_side_with_fewer_files() {
    // A full session into a 1-chunk incremental: the incremental's chunk
    // moves, and the full session's directory becomes the successor.
    let mut h = Hist::new("smaller-side");
    fs::write(h.vol(), semi_compressible(&mut h.rng, 48 * 65536)).unwrap();
    let full = h.snap();
    let p_files: Vec<(PathBuf, u64)> = chunk_inodes(&h, &full);
    h.rewrite(1);
    let incr = h.snap();
    let p_ino = ino(&h, &full);
    h.s.ok(&["prune", "v.img", "--session", &full]);
    h.forget(&full);
    assert_eq!(ino(&h, &incr), p_ino, "the full session's directory stays");
    // 47 of its 48 chunk files are the very same files, not one renamed.
    let kept = chunk_inodes(&h, &incr);
    let same = p_files.iter().filter(|f| kept.contains(f)).count();
    assert_eq!(same, 47, "{kept:?}");
    h.assert_intact("full into incremental");
    assert_stored_bytes(&h, &incr);

    // The other way: the successor has more files; it keeps its directory.
    let mut h = Hist::build_growing("larger-side");
    let (p, q) = (h.names()[0].clone(), h.names()[1].clone());
    let q_ino = ino(&h, &q);
    h.s.ok(&["prune", "v.img", "--session", &p]);
    h.forget(&p);
    assert_eq!(ino(&h, &q), q_ino, "the successor's directory stays");
    assert_eq!(chunk_inodes(&h, &q).len(), 64);
    h.assert_intact("small into larger");
    assert_stored_bytes(&h, &q);
}

/// The merged session's recorded stored bytes are its chunk files' sizes
/// (the prune adds up whichever side is smaller), each file once: a chunk
/// the successor stored by reference to one of the pruned session's is
/// the same file under a second name, not bytes stored twice.
fn assert_stored_bytes(h: &Hist, sess: &str) {
    let dir = h.s.archive_vol("v.img").join(sess);
    let mut seen = std::collections::BTreeSet::new();
    let on_disk: u64 = chunk_inodes(h, sess)
        .iter()
        .filter(|(_, ino)| seen.insert(*ino))
        .map(|(f, _)| fs::metadata(dir.join(f)).unwrap().len())
        .sum();
    let doc = h.s.json(&["list", "v.img"]);
    let rec = doc["volumes"][0]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == sess)
        .unwrap_or_else(|| panic!("{sess} in {doc}"))["stored_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(rec, on_disk, "{sess}: recorded stored bytes");
}

/// (relative path, inode) of every chunk file of a session, sorted.
fn chunk_inodes(h: &Hist, sess: &str) -> Vec<(PathBuf, u64)> {
    let dir = h.s.archive_vol("v.img").join(sess);
    let mut out = Vec::new();
    for fan in fs::read_dir(&dir).unwrap() {
        let fan = fan.unwrap().path();
        if !fan.is_dir() {
            continue;
        }
        for f in fs::read_dir(&fan).unwrap() {
            let f = f.unwrap().path();
            let i = fs::metadata(&f).unwrap().ino();
            out.push((f.strip_prefix(&dir).unwrap().to_path_buf(), i));
        }
    }
    out.sort();
    out
}

#[test]
fn prune_reply_cut_is_settled_by_the_next_command() {
    // Cut the receiver's replies at every 32nd byte through the hello, the
    // root and both copies of the wrapped key, the listing and the prune's
    // answer: some cuts land after the receiver pruned but before dom0
    // heard, and the next backup must finish it.
    let mut h = Hist::build("prune-cut");
    let recv = receiver_bin();
    let (mut settled_forward, mut cut_before, mut passed) = (0, 0, 0);
    for off in (0u64..3200).step_by(32) {
        if h.names().len() < 3 {
            h = Hist::build(&format!("prune-cut-{off}"));
        }
        let victim = h.names()[1].clone();
        let o = h.wrapped(
            &["prune", "v.img", "--session", &victim],
            &format!("exec {CUT} - {off} {} \"$@\"", recv.display()),
        );
        let gone = !h.s.archive_sessions("v.img").contains(&victim);
        match (o.status.success(), gone) {
            (true, _) => {
                passed += 1;
                h.forget(&victim);
            }
            (false, true) => {
                settled_forward += 1;
                h.forget(&victim);
                h.rewrite(1);
                h.snap();
                h.assert_intact(&format!("reply cut at {off}, settled by backup"));
            }
            (false, false) => cut_before += 1,
        }
        assert_eq!(
            h.s.sessions("v.img"),
            h.s.archive_sessions("v.img"),
            "cut at {off}"
        );
    }
    h.assert_intact("after the cuts");
    eprintln!(
        "prune reply cuts: {settled_forward} after the prune, {cut_before} before, {passed} passed"
    );
    assert!(
        settled_forward > 0 && cut_before > 0 && passed > 0,
        "cuts: {settled_forward} after the prune, {cut_before} before, {passed} passed"
    );
}

#[test]
fn delete_and_rename_volumes() {
    let mut h = Hist::new("del-ren");
    fs::write(h.vol(), semi_compressible(&mut h.rng, 6 * 65536)).unwrap();
    h.snap();
    fs::write(h.s.vol("w.img"), semi_compressible(&mut h.rng, 3 * 65536)).unwrap();
    h.s.backup("w.img");
    h.s.ok(&["add", "w.img"]);

    // delete needs --force without a terminal, and changes nothing then.
    let e = h.s.fails(&["delete", "w.img"]);
    assert!(e.contains("--force"), "{e}");
    assert_eq!(h.s.archive_sessions("w.img").len(), 1);
    let w_dir = h.s.archive_vol("w.img");
    h.s.ok(&["delete", "w.img", "--force"]);
    assert!(!w_dir.exists());
    assert!(h.s.sessions("w.img").is_empty());
    let l = h.s.ok(&["list"]);
    assert!(!l.contains("w.img"), "{l}");
    // Repeating it names the volume as unknown (a delete cut between the
    // two sides still completes: dom0's record is removed last); v.img is
    // untouched.
    let e = h.s.fails(&["delete", "w.img", "--force"]);
    assert!(e.contains("no volume 'w.img'"), "{e}");
    h.assert_intact("after deleting another volume");

    // rename: sessions follow, the old name is gone; the source file is
    // renamed too, and the next backup of the new name works.
    h.s.ok(&["rename", "v.img", "u.img"]);
    fs::rename(h.vol(), h.s.vol("u.img")).unwrap();
    assert!(h.s.sessions("v.img").is_empty());
    let sess = h.s.sessions("u.img");
    assert_eq!(sess, h.names());
    for (s, copy) in &h.expect {
        h.s.assert_restores("u.img", s, copy);
    }
    h.s.backup("u.img");
    h.s.ok(&["arch-check"]);
    let e = h.s.fails(&["rename", "nope.img", "x.img"]);
    assert!(e.contains("no volume 'nope.img'"), "{e}");
    let e = h.s.fails(&["rename", "u.img", "../x"]);
    assert!(e.contains("invalid volume name"), "{e}");
}

#[test]
fn arch_check_names_every_problem_by_address() {
    let mut h = Hist::new("archcheck");
    fs::write(h.vol(), semi_compressible(&mut h.rng, 10 * 65536)).unwrap();
    let s1 = h.snap();
    h.rewrite(3);
    let s2 = h.snap();
    h.assert_intact("clean");
    let d1 = h.s.archive_vol("v.img").join(&s1).join("c0000000");
    fs::remove_file(d1.join("x0000000000010000")).unwrap();
    let mut b = fs::read(d1.join("x0000000000030000")).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    fs::write(d1.join("x0000000000030000"), b).unwrap();
    fs::write(d1.join("x00000000000b0000"), b"stray").unwrap();
    // The archive's manifest of s2 replaced by s1's.
    let m2 = h.s.archive_vol("v.img").join(&s2).join("manifest");
    fs::copy(h.s.archive_vol("v.img").join(&s1).join("manifest"), &m2).unwrap();
    let o = h.s.run(&["arch-check"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        format!("session '{s1}': missing chunk at 0x10000"),
        format!("session '{s1}': corrupt chunk at 0x30000"),
        format!("session '{s1}': extra file at 0xb0000"),
        format!("volume 'v.img' session {s2}: chunk 0x0: in the archive's manifest, not in dom0's"),
    ] {
        assert!(out.contains(&want), "missing '{want}' in:\n{out}");
    }
}

#[test]
fn diff_reports_changed_chunks() {
    let mut h = Hist::new("diff");
    fs::write(h.vol(), semi_compressible(&mut h.rng, 16 * 65536)).unwrap();
    h.snap();
    let out = h.s.ok(&["diff", "v.img"]);
    assert!(out.contains("0 of 16 chunks differ"), "{out}");
    write_at(&h.vol(), 3 * 65536 + 5, b"x");
    write_at(&h.vol(), 9 * 65536, &vec![7u8; 2 * 65536]);
    let o = h.s.run(&["diff", "v.img"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("changed 0x30000-0x40000"), "{out}");
    assert!(out.contains("changed 0x90000-0xb0000"), "{out}");
    assert!(out.contains("3 of 16 chunks differ"), "{out}");
}

/// Kills the receiver at the Nth call of a syscall during a backup — in
/// chunk writing (openat; pwrite64 from the chunk writer threads), manifest
/// and info writing (write), syncfs and the commit rename. Afterwards both sides agree and everything restores.
#[test]
fn backup_killed_at_each_receiver_step() {
    let mut h = Hist::new("kill-backup");
    fs::write(h.vol(), semi_compressible(&mut h.rng, 24 * 65536)).unwrap();
    h.snap();
    let recv = receiver_bin();
    let mut cases = 0;
    for (sc, ns) in [
        ("openat", &[1u32, 3, 8, 15, 20][..]),
        ("write", &[1, 2, 5, 10, 14, 20][..]),
        ("pwrite64", &[1, 4, 9, 16][..]),
        ("syncfs", &[1][..]),
        // The commit writes the `.newest` record (fsync, rename, fsync of
        // the directory), then renames the session into place and syncs.
        ("rename", &[1, 2][..]),
        ("fsync", &[1, 2, 3][..]),
    ] {
        for &n in ns {
            h.rewrite(12);
            let copy = h.s.dir.path().join("pending-copy");
            fs::copy(h.vol(), &copy).unwrap();
            let o = h.wrapped(
                &["backup", "v.img"],
                &format!(
                    "exec strace -f -qq -o /dev/null -e trace={sc} -e inject={sc}:signal=KILL:when={n} {} \"$@\"",
                    recv.display()
                ),
            );
            cases += 1;
            let ok = o.status.success();
            // Settle: the next backup records or drops what was in flight.
            let keep = h.s.dir.path().join(format!("k-{sc}-{n}"));
            fs::rename(&copy, &keep).unwrap();
            for s in h.s.archive_sessions("v.img") {
                h.expect.entry(s).or_insert_with(|| keep.clone());
            }
            h.snap();
            assert!(ok || !o.stderr.is_empty(), "{sc} #{n}: failed silently");
            h.assert_intact(&format!("backup killed at {sc} #{n}"));
        }
    }
    assert_eq!(cases, 21);
}
