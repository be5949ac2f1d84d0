//! The crash campaign: every operation that changes an archive (backup,
//! prune, a multi-session prune, delete, `key passwd`, `key rotate`, an `arch-import`
//! refresh) is killed (SIGKILL by strace fault injection at the Nth call
//! of a syscall) in dom0's agent or in the receiver. Then each scenario
//! is recovered twice, from copies of the same wreck:
//!
//! - *dom0 intact*: the next commands (`arch-check`, then a backup of each
//!   volume) must settle whatever was in flight, or refuse naming the
//!   command that does;
//! - *dom0 lost*: dom0's records are deleted and `arch-import` must
//!   rebuild them from the archive and the passphrase alone, importing
//!   every volume and session that authenticates, and the next backup of
//!   each volume must work.
//!
//! Both must end with every session dom0 lists restoring byte for byte as
//! the volume was when it was taken, and no leftover that holds a key.

use sparsebak_tests::{
    agent_bin, receiver_bin, script, semi_compressible, write_at, Rng, Setup, TempDir,
};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const CS: usize = 64 * 1024;
const NEW_PASSPHRASE: &str = "a new passphrase for the campaign";

/// A wreck: the setup and what each session must restore to.
struct World {
    s: Setup,
    /// (volume, session) → the image as it was when the session was taken.
    expect: BTreeMap<(String, String), PathBuf>,
    n: usize,
}

impl World {
    fn new(tag: &str) -> World {
        let s = Setup::new(tag);
        s.init("64K");
        let mut w = World {
            s,
            expect: BTreeMap::new(),
            n: 0,
        };
        let mut rng = Rng::new(7);
        for (v, sessions) in [("a.img", 3), ("b.img", 2)] {
            fs::write(w.s.vol(v), semi_compressible(&mut rng, 8 * CS)).unwrap();
            for _ in 0..sessions {
                w.change(v, &mut rng);
                let sess = w.s.backup(v);
                w.keep(v, &sess);
            }
        }
        w
    }

    fn change(&self, v: &str, rng: &mut Rng) {
        let at = rng.below(8) * CS as u64;
        write_at(&self.s.vol(v), at, &rng.bytes(CS / 2));
    }

    /// Records the image as it is now as session `sess`'s content.
    fn keep(&mut self, v: &str, sess: &str) {
        self.n += 1;
        let copy = self.s.dir.path().join(format!("expect-{}", self.n));
        fs::copy(self.s.vol(v), &copy).unwrap();
        self.expect.insert((v.into(), sess.into()), copy);
    }

    /// A copy of the whole wreck (volumes, dom0's records, the archive).
    fn copy(&self, tag: &str) -> World {
        let dir = TempDir::new(tag);
        let o = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.s.dir.path().display()))
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "cp -a: {o:?}");
        let at = |p: &Path| dir.path().join(p.strip_prefix(self.s.dir.path()).unwrap());
        let expect = self
            .expect
            .iter()
            .map(|(k, p)| (k.clone(), at(p)))
            .collect();
        World {
            s: Setup {
                vols: at(&self.s.vols),
                meta: at(&self.s.meta),
                arch: at(&self.s.arch),
                receiver: self.s.receiver.clone(),
                dir,
            },
            expect,
            n: self.n,
        }
    }

    /// The agent's arguments for `args`, with `passphrase` and `receiver`.
    fn argv(&self, args: &[&str], passphrase: &Path, receiver: &Path) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--dest".into(),
            self.s.dest(),
            "--meta-dir".into(),
            self.s.meta.display().to_string(),
            "--local".into(),
            self.s.vols.display().to_string(),
            "--remote-receiver".into(),
            receiver.display().to_string(),
            "--passphrase-file".into(),
            passphrase.display().to_string(),
        ];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    fn new_passphrase(&self) -> PathBuf {
        let p = self.s.dir.path().join("new-passphrase");
        fs::write(&p, format!("{NEW_PASSPHRASE}\n")).unwrap();
        p
    }

    /// Runs `args` with the agent or the receiver killed at the `n`th
    /// call of `syscall`.
    fn killed(&self, args: &[&str], who: Who, syscall: &str, n: u32) -> Output {
        let inject = [
            "-f".to_string(),
            "-qq".into(),
            "-o".into(),
            "/dev/null".into(),
            "-e".into(),
            format!("trace={syscall}"),
            "-e".into(),
            format!("inject={syscall}:signal=KILL:when={n}"),
        ];
        let pass = if args.first() == Some(&"key") {
            self.new_passphrase()
        } else {
            self.s.passphrase_file()
        };
        match who {
            Who::Agent => Command::new("strace")
                .args(&inject)
                .arg(agent_bin())
                .args(self.argv(args, &pass, &self.s.receiver))
                .stdin(Stdio::null())
                .output()
                .expect("strace is needed (scripts/test.sh installs it)"),
            Who::Receiver => {
                let wrap = self.s.dir.path().join("killing-receiver.sh");
                script(
                    &wrap,
                    &format!(
                        "exec strace {} {} \"$@\"",
                        inject.join(" "),
                        receiver_bin().display()
                    ),
                );
                Command::new(agent_bin())
                    .args(self.argv(args, &pass, &wrap))
                    .stdin(Stdio::null())
                    .output()
                    .unwrap()
            }
        }
    }

    /// Runs `args` plainly; (success, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let o = self.s.run(args);
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// Every session dom0 lists restores as it was taken; returns how
    /// many were checked.
    fn assert_exact(&self, what: &str) -> usize {
        let mut checked = 0;
        for v in ["a.img", "b.img"] {
            for sess in self.s.sessions(v) {
                let want = self
                    .expect
                    .get(&(v.to_string(), sess.clone()))
                    .unwrap_or_else(|| panic!("{what}: dom0 lists {v} {sess}, never taken"));
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.s.assert_restores(v, &sess, want)
                }));
                assert!(r.is_ok(), "{what}: {v} {sess} does not restore exactly");
                checked += 1;
            }
        }
        checked
    }

    /// Backs up each volume dom0 has and records the new sessions.
    fn next_backups(&mut self, what: &str, rng: &mut Rng) {
        for v in ["a.img", "b.img"] {
            if !self.s.meta_vol(v).exists() {
                continue;
            }
            self.change(v, rng);
            let (ok, out) = self.run(&["backup", v]);
            assert!(ok, "{what}: the next backup of {v} failed:\n{out}");
            let sess = self.s.sessions(v).last().unwrap().clone();
            self.keep(v, &sess);
        }
    }

    /// No staging or old copy of dom0's records is left (they hold keys).
    fn assert_tidy(&self, what: &str) {
        let archives = self.s.meta.join("archives");
        for e in fs::read_dir(&archives).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(
                !n.starts_with(".import-") && !n.starts_with(".old-"),
                "{what}: left {n} in dom0's records"
            );
        }
        assert!(
            !self.s.arch.join(".upload-key").exists(),
            "{what}: left .upload-key in the archive"
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Who {
    Agent,
    Receiver,
}

/// Recovery with dom0's records intact: an admin command settles
/// deletions, the next backups settle prunes and sessions in flight.
fn recover_intact(w: &mut World, what: &str) -> usize {
    let (ok, out) = w.run(&["arch-check"]);
    assert!(ok, "{what}: arch-check after the crash:\n{out}");
    let mut rng = Rng::new(99);
    w.next_backups(what, &mut rng);
    w.assert_tidy(what);
    w.assert_exact(what)
}

/// Recovery on a dom0 that lost its records: `arch-import` from the
/// archive and the passphrase (the new one if a `key passwd` got far
/// enough, else the old).
/// What `arch-import`'s report said, by the phrases that tell which way
/// a change in flight went.
const OUTCOMES: [&str; 5] = [
    "had finished in the archive",
    "had not happened in the archive",
    "before the archive did it",
    "cannot be authenticated",
    "had finished in the archive: not imported",
];

fn recover_lost(w: &mut World, what: &str, seen: &mut BTreeMap<&'static str, usize>) -> usize {
    fs::remove_dir_all(&w.s.meta).unwrap();
    let (mut ok, mut out) = w.run(&["arch-import"]);
    if !ok && out.contains("unable to unwrap") {
        let np = w.new_passphrase();
        let o = Command::new(agent_bin())
            .args(w.argv(&["arch-import"], &np, &w.s.receiver))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        ok = o.status.success();
        out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(ok, "{what}: arch-import on a fresh dom0 failed:\n{out}");
    for o in OUTCOMES {
        if out.contains(o) {
            *seen.entry(o).or_default() += 1;
        }
    }
    assert!(
        !w.s.sessions("a.img").is_empty(),
        "{what}: volume a.img (never deleted) lost all its sessions:\n{out}"
    );
    let mut rng = Rng::new(98);
    let deleting = out.contains("its deletion was interrupted before the archive did it");
    if deleting {
        // The import recorded the deletion: an admin command finishes it.
        let (ok, o2) = w.run(&["backup", "b.img"]);
        assert!(
            !ok && o2.contains("sparsebak delete b.img --force"),
            "{what}: a half-deleted volume must name the command that heals it:\n{o2}"
        );
        let (ok, o2) = w.run(&["arch-check"]);
        assert!(ok, "{what}: arch-check:\n{o2}");
        assert!(!w.s.meta_vol("b.img").exists(), "{what}: b.img not deleted");
    }
    w.next_backups(what, &mut rng);
    w.assert_tidy(what);
    w.assert_exact(what)
}

/// One operation, killed at each point, each wreck recovered both ways.
fn campaign(
    tag: &str,
    args: &[&str],
    points: &[(Who, &str, &[u32])],
    prepare: &dyn Fn(&mut World),
) -> (usize, usize) {
    let (mut scenarios, mut sessions) = (0, 0);
    let mut seen = BTreeMap::new();
    for &(who, sc, ns) in points {
        for &n in ns {
            let what = format!("{tag}: {who:?} killed at {sc} #{n}");
            let mut w = World::new(&format!("camp-{tag}"));
            prepare(&mut w);
            // The image as it is now is what a backup in flight holds.
            let before = w.s.sessions("a.img");
            // Whether it failed or got through before the kill point, the
            // recovery below must hold.
            w.killed(args, who, sc, n);
            // A backup that got as far as the receiver's commit holds the
            // image as it was: recorded under whatever name it got.
            if args[0] == "backup" {
                for sess in w.s.archive_sessions("a.img") {
                    if !before.contains(&sess) {
                        w.keep("a.img", &sess);
                    }
                }
            }
            let mut lost = w.copy(&format!("camp-{tag}-lost"));
            sessions += recover_intact(&mut w, &format!("{what}, dom0 intact"));
            sessions += recover_lost(&mut lost, &format!("{what}, dom0 lost"), &mut seen);
            scenarios += 1;
        }
    }
    eprintln!("{tag}: {scenarios} kill points, each recovered with dom0 intact and with dom0 lost ({sessions} sessions restored exactly); imports that found a change in flight: {seen:?}");
    (scenarios, sessions)
}

#[test]
fn a_killed_backup_recovers_either_way() {
    let (n, _) = campaign(
        "backup",
        &["backup", "a.img"],
        &[
            (Who::Receiver, "rename", &[1, 2]),
            (Who::Receiver, "syncfs", &[1]),
            (Who::Agent, "rename", &[1, 2, 3, 4]),
            (Who::Agent, "fsync", &[1, 3, 5]),
        ],
        &|w| {
            let mut rng = Rng::new(5);
            w.change("a.img", &mut rng);
        },
    );
    assert_eq!(n, 10);
}

#[test]
fn a_killed_prune_recovers_either_way() {
    let (n, _) = campaign(
        "prune",
        &["prune", "a.img", "--session", "S_000000000001"],
        &[
            (Who::Receiver, "rename", &[1, 2, 4, 8]),
            (Who::Receiver, "fsync", &[1, 3]),
            (Who::Agent, "rename", &[1, 2, 3, 4, 5]),
            (Who::Agent, "unlink", &[1, 2]),
        ],
        &|_| {},
    );
    assert_eq!(n, 13);
}

#[test]
fn a_killed_multi_session_prune_recovers_either_way() {
    let (n, _) = campaign(
        "retention",
        &["prune", "a.img", "--all-before", "2999-01-01"],
        &[
            (Who::Receiver, "rename", &[2, 6, 10]),
            (Who::Agent, "rename", &[2, 4, 6, 8]),
        ],
        &|_| {},
    );
    assert_eq!(n, 7);
}

#[test]
fn a_killed_delete_recovers_either_way() {
    let (n, _) = campaign(
        "delete",
        &["delete", "b.img", "--force"],
        &[
            (Who::Receiver, "rename", &[1, 2]),
            (Who::Receiver, "unlink", &[1]),
            (Who::Agent, "rename", &[1, 2, 3, 4]),
            (Who::Agent, "unlink", &[1, 3]),
        ],
        &|_| {},
    );
    assert_eq!(n, 9);
}

#[test]
fn a_killed_passphrase_change_recovers_either_way() {
    let (n, _) = campaign(
        "passwd",
        &["key", "passwd"],
        &[
            // The key, its copy, the root that pins them.
            (Who::Receiver, "rename", &[1, 2, 3]),
            (Who::Agent, "rename", &[1, 2, 3]),
            (Who::Agent, "write", &[3, 6]),
        ],
        &|_| {},
    );
    assert_eq!(n, 8);
}

#[test]
fn a_killed_key_rotation_recovers_either_way() {
    let (n, _) = campaign(
        "rotate",
        &["key", "rotate"],
        &[
            // The key, its copy, the root sealed with the new key.
            (Who::Receiver, "rename", &[1, 2, 3]),
            // dom0's wrapped-ring record, its key file, the root's
            // generation records.
            (Who::Agent, "rename", &[1, 2, 3, 4]),
            (Who::Agent, "write", &[2, 4, 6]),
        ],
        &|_| {},
    );
    assert_eq!(n, 10);
}

#[test]
fn a_killed_import_refresh_recovers_either_way() {
    let (n, _) = campaign(
        "import",
        &["arch-import"],
        &[
            (Who::Agent, "rename", &[1, 2, 3, 4, 6]),
            (Who::Agent, "mkdir", &[2, 5]),
            (Who::Receiver, "read", &[20]),
        ],
        &|_| {},
    );
    assert_eq!(n, 8);
}

/// A damaged archive: one volume gone, a middle session of another gone,
/// a manifest altered. `arch-import` imports everything that
/// authenticates (a.img up to the session before the gap), lists the
/// rest with why, and the next backup drops the sessions after the gap
/// (it cannot authenticate their views) and goes on.
#[test]
fn arch_import_degrades_per_volume_and_per_session() {
    let mut w = World::new("camp-degrade");
    let mut rng = Rng::new(11);
    w.change("b.img", &mut rng);
    let s3 = w.s.backup("b.img");
    w.keep("b.img", &s3);
    let a = w.s.sessions("a.img");
    let b = w.s.sessions("b.img");
    assert_eq!((a.len(), b.len()), (3, 3));
    fs::remove_dir_all(w.s.archive_vol("a.img").join(&a[1])).unwrap();
    // b.img's newest manifest, altered: b.img is imported up to the one
    // before it.
    let m = w.s.archive_vol("b.img").join(&b[2]).join("manifest");
    let mut bytes = fs::read(&m).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    fs::write(&m, bytes).unwrap();
    fs::remove_dir_all(&w.s.meta).unwrap();
    let t = std::time::Instant::now();
    let j = w.s.json(&["arch-import"]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(j["ok"], true, "{j}");
    let left = j["not_imported"].to_string();
    assert!(
        left.contains(&format!("session {} is missing from the archive", a[1]))
            && left.contains(&format!("imported up to {}", a[0]))
            && left.contains(&format!(
                "{} has a manifest that does not authenticate",
                b[2]
            ))
            && left.contains(&format!("imported up to {}", b[1])),
        "{left}"
    );
    assert_eq!(w.s.sessions("a.img"), [a[0].clone()]);
    assert_eq!(w.s.sessions("b.img"), b[..2]);
    assert_eq!(w.assert_exact("degraded import"), 3);
    eprintln!("degraded import of 2 volumes (4 of 6 sessions) in {secs:.2} s");
    // The next backups: a.img's sessions after the gap, and b.img's
    // altered one, are dropped (named), and the backups go on.
    let (ok, out) = w.run(&["backup", "a.img"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "session {} in the archive was never confirmed",
            a[2]
        )),
        "{out}"
    );
    let sess = w.s.sessions("a.img").last().unwrap().clone();
    w.keep("a.img", &sess);
    assert_eq!(w.s.archive_sessions("a.img"), [a[0].clone(), sess]);
    w.next_backups("after the degraded import", &mut rng);
    w.assert_exact("after the degraded import");
}

/// dom0 lost between the receiver's commit and its own record: the
/// session is in the archive, not in the root. The import leaves it out
/// and says so; the next backup drops it and works (it used to fail with
/// a session-order error for ever).
#[test]
fn an_unconfirmed_newest_session_is_dropped_by_the_next_backup() {
    let mut w = World::new("camp-unconfirmed");
    let root_before = fs::read(w.s.arch.join("dom0.root")).unwrap();
    let mut rng = Rng::new(12);
    w.change("a.img", &mut rng);
    let s4 = w.s.backup("a.img");
    // The root as it was before that backup recorded it.
    fs::write(w.s.arch.join("dom0.root"), root_before).unwrap();
    fs::remove_dir_all(&w.s.meta).unwrap();
    let out = w.s.ok(&["arch-import"]);
    let (_, err) = w.run(&["arch-import"]);
    assert!(
        err.contains(&format!(
            "session {s4} of volume 'a.img' is in the archive but cannot be authenticated"
        )),
        "{out}{err}"
    );
    assert!(!w.s.sessions("a.img").contains(&s4));
    w.next_backups("after an unconfirmed session", &mut rng);
    assert_eq!(
        w.s.archive_sessions("a.img"),
        w.s.sessions("a.img"),
        "the archive and dom0 list the same sessions"
    );
    w.assert_exact("after an unconfirmed session");
}
