//! Encryption, authentication and recovery without dom0 (DESIGN §10),
//! with the real binaries:
//!
//! - nothing of a volume (a planted marker, its name, any text of it)
//!   appears in the archive, raw or after decompressing anything in it;
//! - a dom0 that lost its records recovers everything from the archive and
//!   the passphrase (or the exported key), then backs up incrementally;
//! - a wrong passphrase, key file or damaged wrapped key changes nothing;
//! - every file of the archive flipped, truncated, deleted or swapped for
//!   its namesake from another session, volume or copy of the archive:
//!   recovery and restore fail naming what is wrong, or restore exactly —
//!   never a wrong byte with exit 0; a rolled-back archive is refused.

use sparsebak_tests::{expect_success, semi_compressible, write_at, Rng, Setup, PASSPHRASE};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const CS: usize = 65536;
const MARKER: &[u8] = b"SPARSEBAK-PLANTED-MARKER-9f27c1";
const SECRET_NAME: &str = "vm-secret-project-private.img";

fn files(dir: &Path) -> Vec<PathBuf> {
    sparsebak_tests::files_under(dir)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every zstd frame that starts anywhere in `b`, decompressed (bounded).
fn inflated(b: &[u8]) -> Vec<Vec<u8>> {
    let magic = [0x28, 0xb5, 0x2f, 0xfd];
    (0..b.len().saturating_sub(4))
        .filter(|&i| b[i..i + 4] == magic)
        .filter_map(|i| zstd::bulk::decompress(&b[i..], 8 << 20).ok())
        .collect()
}

/// A volume of text and random blocks with the marker planted in both.
fn planted_volume(rng: &mut Rng) -> Vec<u8> {
    let mut v = semi_compressible(rng, 16 * CS);
    for at in [100, 3 * CS + 7, 9 * CS + 4000] {
        v[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    v
}

/// Looks for the marker, the volume's name and any 12-byte text run of
/// the volume in every file of `arch`; returns what it found.
fn leaks(arch: &Path, volume: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for f in files(arch) {
        let b = fs::read(arch.join(&f)).unwrap();
        for (what, bytes) in std::iter::once(("raw", b.clone()))
            .chain(inflated(&b).into_iter().map(|x| ("inflated", x)))
        {
            if contains(&bytes, MARKER) {
                found.push(format!("marker in {} ({what})", f.display()));
            }
            if contains(&bytes, SECRET_NAME.as_bytes()) {
                found.push(format!("volume name in {} ({what})", f.display()));
            }
        }
        // `strings`: any printable run of 12 or more bytes that is also
        // in the volume is plaintext of the image.
        let o = Command::new("strings")
            .args(["-a", "-n", "12"])
            .arg(arch.join(&f))
            .output()
            .unwrap();
        for s in String::from_utf8_lossy(&o.stdout).lines() {
            if contains(volume, s.as_bytes()) {
                found.push(format!("image text {s:?} in {}", f.display()));
            }
        }
    }
    found
}

#[test]
fn nothing_of_the_volume_reaches_the_archive() {
    let mut rng = Rng::new(31);
    let vol = planted_volume(&mut rng);
    let s = Setup::new("confidential");
    s.init("64K");
    fs::write(s.vol(SECRET_NAME), &vol).unwrap();
    s.backup(SECRET_NAME);
    let mut v2 = vol.clone();
    v2[5 * CS..5 * CS + MARKER.len()].copy_from_slice(MARKER);
    fs::write(s.vol(SECRET_NAME), &v2).unwrap();
    s.backup(SECRET_NAME);
    s.ok(&["verify", SECRET_NAME]);
    let found = leaks(&s.arch, &v2);
    assert!(found.is_empty(), "the archive leaks: {found:#?}");
    // Session directories carry no time, volume directories no name.
    for f in files(&s.arch) {
        let p = f.to_string_lossy().into_owned();
        assert!(!p.contains("2026") && !p.contains("secret"), "{p}");
    }

    // The same check finds the marker in an archive made with
    // --encrypt off (so it is not blind), which still verifies.
    let clear = Setup::new("clear");
    clear.ok(&["arch-init", "--chunk-size", "64K", "--encrypt", "off"]);
    fs::write(clear.vol(SECRET_NAME), &vol).unwrap();
    clear.backup(SECRET_NAME);
    clear.ok(&["verify", SECRET_NAME]);
    let found = leaks(&clear.arch, &vol);
    assert!(
        found.iter().any(|f| f.starts_with("marker")),
        "an unencrypted archive must show the marker: {found:?}"
    );
    // ... but not the volume's name, which is in the sealed root only.
    assert!(!found.iter().any(|f| f.starts_with("volume name")));
}

/// Two volumes, three sessions each, and what each session held.
struct History {
    s: Setup,
    expect: BTreeMap<(String, String), Vec<u8>>,
    rng: Rng,
}

impl History {
    fn new(tag: &str) -> History {
        let s = Setup::new(tag);
        s.init("64K");
        let mut h = History {
            s,
            expect: BTreeMap::new(),
            rng: Rng::new(77),
        };
        for v in ["a.img", "b.img"] {
            let data = semi_compressible(&mut h.rng, 16 * CS);
            fs::write(h.s.vol(v), data).unwrap();
        }
        for _ in 0..3 {
            h.change_and_backup(2);
        }
        h
    }

    /// Rewrites `n` chunks of each volume and backs both up.
    fn change_and_backup(&mut self, n: usize) {
        for v in ["a.img", "b.img"] {
            for _ in 0..n {
                let at = self.rng.below(16) * CS as u64;
                write_at(&self.s.vol(v), at, &self.rng.bytes(CS));
            }
            let sess = self.s.backup(v);
            self.expect
                .insert((v.into(), sess), fs::read(self.s.vol(v)).unwrap());
        }
    }

    /// Restores every expected session through `s` (any setup sharing
    /// this archive's volumes): (session, exit ok, stderr) for each, and
    /// asserts a restore that succeeded is exact.
    fn restore_all(&self, s: &Setup, ctx: &str) -> Vec<(String, bool, String)> {
        let mut out = Vec::new();
        for ((v, sess), want) in &self.expect {
            let to = s.dir.path().join("restored.img");
            let _ = fs::remove_file(&to);
            let o = s.run(&[
                "restore",
                v,
                "--session",
                sess,
                "--save-to",
                to.to_str().unwrap(),
            ]);
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(!err.contains("panicked"), "{ctx}: {err}");
            if o.status.success() {
                assert!(
                    fs::read(&to).unwrap() == *want,
                    "{ctx}: {v} {sess} restored WRONG BYTES with exit 0"
                );
            } else {
                assert!(!to.exists(), "{ctx}: a failed restore left its target");
                assert!(
                    err.contains("sparsebak: error") && err.contains(v.as_str()),
                    "{ctx}: {v} {sess}: the failure does not name the volume: {err}"
                );
            }
            out.push((format!("{v} {sess}"), o.status.success(), err));
        }
        out
    }

    /// A fresh dom0 (no records) over a copy of this archive.
    fn fresh_dom0(&self, tag: &str) -> Setup {
        let f = Setup::with_vols(tag, Some(&self.s.vols));
        copy_tree(&self.s.arch, &f.arch);
        f
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn chunks_changed(summary: &str) -> u64 {
    summary
        .split(" chunks changed")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chunk count in {summary:?}"))
}

#[test]
fn a_fresh_dom0_recovers_everything_from_the_archive_and_the_passphrase() {
    let mut h = History::new("recover");
    let key = h.s.dir.path().join("exported.key");
    h.s.ok(&["key", "export", key.to_str().unwrap()]);
    // The disk of dom0 died: no records, no key.
    fs::remove_dir_all(&h.s.meta).unwrap();
    assert!(h.s.fails(&["verify", "a.img"]).contains("no archive for"));
    let out = h.s.ok(&["arch-import"]);
    assert!(
        out.contains("2 volumes, 6 sessions") && out.contains("all authenticated"),
        "{out}"
    );
    assert!(out.contains("newest session: S_000000000003"), "{out}");
    let list = h.s.ok(&["list"]);
    assert!(
        list.contains("a.img: 3 sessions, all in the archive"),
        "{list}"
    );
    let restored = h.restore_all(&h.s, "after import");
    assert!(restored.iter().all(|r| r.1), "{restored:?}");
    h.s.ok(&["verify", "b.img"]);
    h.s.ok(&["arch-check"]);
    // Prune works on the imported records, and the archive agrees.
    let first = h.s.sessions("a.img")[0].clone();
    h.s.ok(&["prune", "a.img", "--session", &first]);
    h.expect.remove(&("a.img".to_string(), first));
    // An incremental with no snapshot base compares by id and sends only
    // what changed: one chunk of sixteen.
    write_at(&h.s.vol("a.img"), 5 * CS as u64, &h.rng.bytes(CS));
    let out = h.s.ok(&["backup", "a.img"]);
    assert_eq!(chunks_changed(&out), 1, "{out}");
    let sess = sparsebak_tests::session_in(&out);
    h.expect
        .insert(("a.img".into(), sess), fs::read(h.s.vol("a.img")).unwrap());
    h.s.ok(&["arch-check"]);
    assert!(h
        .restore_all(&h.s, "after the incremental")
        .iter()
        .all(|r| r.1));

    // The exported key recovers too, on yet another dom0, with no
    // passphrase at all.
    let other = h.fresh_dom0("recover-key");
    fs::write(other.passphrase_file(), "not the passphrase\n").unwrap();
    let out = other.ok(&["arch-import", "--key-file", key.to_str().unwrap()]);
    assert!(out.contains("all authenticated"), "{out}");
    assert!(h.restore_all(&other, "key file").iter().all(|r| r.1));

    // On a dom0 that has the records, arch-import refreshes them and says
    // what differed: here nothing.
    let out = h.s.ok(&["arch-import"]);
    assert!(!out.contains("changed:"), "{out}");
}

#[test]
fn wrong_passphrase_key_file_or_wrapped_key_change_nothing() {
    let h = History::new("wrongkey");
    let d = h.fresh_dom0("wrongkey-fresh");
    let before = sparsebak_tests::tree_digest(&d.arch);
    fs::write(d.passphrase_file(), "Correct horse battery staple\n").unwrap();
    let e = d.fails(&["arch-import"]);
    assert!(e.contains("wrong passphrase"), "{e}");
    assert_eq!(
        dom0_files(&d),
        Vec::<PathBuf>::new(),
        "dom0 records written"
    );
    fs::write(d.passphrase_file(), format!("{PASSPHRASE}\n")).unwrap();

    // Another archive's key file; a file that is no key at all.
    let other = Setup::new("wrongkey-other");
    other.init("64K");
    let k = other.dir.path().join("other.key");
    other.ok(&["key", "export", k.to_str().unwrap()]);
    let e = d.fails(&["arch-import", "--key-file", k.to_str().unwrap()]);
    assert!(e.contains("the key is for archive"), "{e}");
    fs::write(&k, "hello\n").unwrap();
    let e = d.fails(&["arch-import", "--key-file", k.to_str().unwrap()]);
    assert!(e.contains("not a sparsebak key file"), "{e}");

    // The archive's wrapped key truncated, or altered, in both places.
    let wrapped = d.arch.join("dom0.key");
    let copy = d.arch.join("dom0.key-copy");
    let good = fs::read(&wrapped).unwrap();
    assert_eq!(fs::read(&copy).unwrap(), good, "the copy is the same bytes");
    for f in [&wrapped, &copy] {
        fs::write(f, &good[..100]).unwrap();
    }
    let e = d.fails(&["arch-import"]);
    assert!(e.contains("wrapped key"), "{e}");
    let mut bad = good.clone();
    bad[60] ^= 1;
    for f in [&wrapped, &copy] {
        fs::write(f, &bad).unwrap();
    }
    let e = d.fails(&["arch-import"]);
    assert!(
        e.contains("wrong passphrase (or the wrapped key was altered)"),
        "{e}"
    );
    fs::write(&copy, &good).unwrap();
    fs::write(&wrapped, &good).unwrap();
    assert_eq!(
        dom0_files(&d),
        Vec::<PathBuf>::new(),
        "a failed import left dom0 records"
    );
    assert_eq!(sparsebak_tests::tree_digest(&d.arch), before);
    // One copy damaged: the other recovers, and says which was used; the
    // next connection that may write puts the damaged one back.
    fs::write(&wrapped, &bad).unwrap();
    let o = d.run(&["arch-import"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("used the archive's dom0.key-copy"), "{err}");
    let o = d.run(&["list"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.contains("dom0.key differs from the wrapped key dom0 wrote (the next backup or admin command puts it back)"),
        "{err}"
    );
    let o = d.run(&["arch-check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("dom0.key differs from the wrapped key dom0 wrote: put back"),
        "{out}"
    );
    assert_eq!(fs::read(&wrapped).unwrap(), good);

    // key passwd re-wraps: the new passphrase works, the old one no longer
    // opens the archive's key, and no chunk or manifest changes (the two
    // copies of the key and the root that pins it do).
    let data = |dir: &Path| -> Vec<_> {
        digest_except(dir, "")
            .into_iter()
            .filter(|(f, _)| !f.to_string_lossy().starts_with("dom0."))
            .map(|(f, b)| (f, sparsebak_tests::sha_bytes(&b)))
            .collect()
    };
    let data_before = data(&h.s.arch);
    let old_key = fs::read(h.s.arch.join("dom0.key")).unwrap();
    fs::write(h.s.passphrase_file(), "a new passphrase\n").unwrap();
    h.s.ok(&["key", "passwd"]);
    assert_eq!(data(&h.s.arch), data_before);
    let new_key = fs::read(h.s.arch.join("dom0.key")).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(fs::read(h.s.arch.join("dom0.key-copy")).unwrap(), new_key);
    let n = h.fresh_dom0("wrongkey-passwd");
    let e = n.fails(&["arch-import"]);
    assert!(e.contains("wrong passphrase"), "{e}");
    fs::write(n.passphrase_file(), "a new passphrase\n").unwrap();
    n.ok(&["arch-import"]);
    assert!(n.ok(&["arch-check"]).contains("no problems"));
    // What passwd cannot do, as the README says: a copy of the key file
    // taken before it still opens with the old passphrase (the master
    // key is unchanged). dom0 says the root pins another key.
    let o = h.fresh_dom0("wrongkey-oldcopy");
    for f in ["dom0.key", "dom0.key-copy"] {
        fs::write(o.arch.join(f), &old_key).unwrap();
    }
    let r = o.run(&["arch-import"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("the root pins another wrapped key"), "{err}");
}

/// The files of a dom0's records (none before a successful import).
fn dom0_files(d: &Setup) -> Vec<PathBuf> {
    if d.meta.exists() {
        files(&d.meta)
    } else {
        Vec::new()
    }
}

/// One way of altering an archive file, in place.
type Mutation = Box<dyn Fn(&Path)>;

/// A digest of every file under `dir` except the one named.
fn digest_except(dir: &Path, except: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .filter(|f| f.to_str() != Some(except))
        .map(|f| {
            let b = fs::read(dir.join(&f)).unwrap();
            (f, b)
        })
        .collect()
}

#[test]
fn every_archive_file_altered_fails_by_name_or_restores_exactly() {
    let mut h = History::new("tamper");
    // An older copy of the same archive (same key: taken before the last
    // backup), and another archive of the same volumes (another key).
    let older = Setup::new("tamper-older");
    copy_tree(&h.s.arch, &older.arch);
    h.change_and_backup(1);
    let a = &h.s;
    let key = a.dir.path().join("k");
    a.ok(&["key", "export", key.to_str().unwrap()]);
    let h2 = History::new("tamper-other");
    let other = &h2.s;
    let ids: Vec<(String, String)> = ["a.img", "b.img"]
        .iter()
        .map(|v| (a.volume_id(v), other.volume_id(v)))
        .collect();
    let sessions = a.archive_sessions("a.img");
    let mut cases = 0;
    let mut failed_named = 0;
    let mut exact = 0;
    for f in files(&a.arch) {
        let fs_path = f.to_string_lossy().into_owned();
        // The same-named file elsewhere: another session, another volume,
        // another archive (same volume name and session).
        let mut swaps: Vec<(String, PathBuf)> = Vec::new();
        for s in &sessions {
            for t in &sessions {
                if s != t && fs_path.contains(s.as_str()) {
                    swaps.push(("other session".into(), a.arch.join(fs_path.replace(s, t))));
                }
            }
        }
        if fs_path.contains(&ids[0].0) {
            swaps.push((
                "other volume".into(),
                a.arch.join(fs_path.replace(&ids[0].0, &ids[1].0)),
            ));
        }
        let mut in_other = fs_path.clone();
        for (ours, theirs) in &ids {
            in_other = in_other.replace(ours, theirs);
        }
        swaps.push(("other archive".into(), other.arch.join(&in_other)));
        swaps.push(("older copy, same key".into(), older.arch.join(&fs_path)));
        let mut mutations: Vec<(String, Mutation)> = vec![
            (
                "flip".into(),
                Box::new(|p: &Path| {
                    let mut b = fs::read(p).unwrap();
                    if b.is_empty() {
                        b.push(1);
                    } else {
                        let i = b.len() / 2;
                        b[i] ^= 0x08;
                    }
                    fs::write(p, b).unwrap();
                }),
            ),
            (
                "truncate".into(),
                Box::new(|p: &Path| {
                    let b = fs::read(p).unwrap();
                    fs::write(p, &b[..b.len() * 2 / 3]).unwrap();
                }),
            ),
            (
                "delete".into(),
                Box::new(|p: &Path| fs::remove_file(p).unwrap()),
            ),
        ];
        for (what, from) in swaps {
            if from.is_file() && fs::read(&from).unwrap() != fs::read(a.arch.join(&f)).unwrap() {
                mutations.push((
                    what,
                    Box::new(move |p: &Path| {
                        fs::copy(&from, p).unwrap();
                    }),
                ));
            }
        }
        for (what, mutate) in &mutations {
            cases += 1;
            let ctx = format!("{what} of {fs_path}");
            let d = Setup::with_vols("tamper-case", Some(&a.vols));
            copy_tree(&a.arch, &d.arch);
            mutate(&d.arch.join(&f));
            // The key file for recovery (the wrapped key is itself one of
            // the files under test: recover it by passphrase).
            let o = if fs_path == "dom0.key" {
                d.run(&["arch-import"])
            } else {
                d.run(&["arch-import", "--key-file", key.to_str().unwrap()])
            };
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(!err.contains("panicked"), "{ctx}: {err}");
            if !o.status.success() {
                assert!(
                    err.contains("sparsebak: error"),
                    "{ctx}: unnamed failure: {err}"
                );
                assert_eq!(dom0_files(&d), Vec::<PathBuf>::new(), "{ctx}: records left");
                failed_named += 1;
                continue;
            }
            for (_, ok, _) in h.restore_all(&d, &ctx) {
                if ok {
                    exact += 1;
                } else {
                    failed_named += 1;
                }
            }
        }
    }
    eprintln!(
        "{cases} alterations of {} files: {failed_named} named failures, {exact} exact restores",
        files(&a.arch).len()
    );
    assert!(
        cases > 60 && failed_named > 30,
        "{cases} cases, {failed_named} failures"
    );
    drop(h2);
}

#[test]
fn a_rolled_back_archive_is_refused_by_a_dom0_that_saw_the_newer_one() {
    let mut h = History::new("rollback");
    let before_last = h.s.dir.path().join("before-last");
    copy_tree(&h.s.arch, &before_last);
    h.change_and_backup(1);
    // The qube puts back the copy taken before the last backup.
    fs::remove_dir_all(&h.s.arch).unwrap();
    fs::rename(&before_last, &h.s.arch).unwrap();
    for args in [
        &["verify", "a.img"][..],
        &["backup", "a.img"],
        &["arch-check"],
    ] {
        let e = h.s.fails(args);
        assert!(
            e.contains("was rolled back") && e.contains("--accept-rollback"),
            "{args:?}: {e}"
        );
    }
    let e = h.s.fails(&["arch-import"]);
    assert!(e.contains("rolled back"), "{e}");
    // The user says they did it on purpose: import takes the archive's word.
    let out = h.s.ok(&["--accept-rollback", "arch-import"]);
    assert!(
        out.contains("changed: volume 'a.img': sessions differ"),
        "{out}"
    );
    expect_success(h.s.run(&["verify", "a.img"]), "verify after accepting");
}

/// The archive's root generation dom0 recorded (`meta/archives/ID/generation`).
fn generation(s: &Setup) -> u64 {
    let archives = s.meta.join("archives");
    let id = fs::read_dir(&archives).unwrap().next().unwrap().unwrap();
    // `GENERATION HASH`.
    fs::read_to_string(id.path().join("generation"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn one_run_of_many_volumes_writes_the_root_once_and_it_holds_them_all() {
    let s = Setup::new("one-root");
    s.init("64K");
    let mut rng = Rng::new(61);
    let vols: Vec<String> = (0..6).map(|i| format!("v{i}.img")).collect();
    for v in &vols {
        fs::write(s.vol(v), semi_compressible(&mut rng, 5 * CS + 99)).unwrap();
    }
    let mut args = vec!["add"];
    args.extend(vols.iter().map(String::as_str));
    s.ok(&args);
    let out = s.ok(&["backup"]);
    assert_eq!(out.matches("session S_000000000001").count(), 6, "{out}");
    // (That first run also wrote the root `add` left behind its records.)
    let g0 = generation(&s);
    for v in &vols[..3] {
        write_at(&s.vol(v), 2 * CS as u64, &rng.bytes(1000));
    }
    let out = s.ok(&["backup"]);
    assert_eq!(out.matches("session S_000000000002").count(), 6, "{out}");
    // One root for the six sessions, not one per volume.
    assert_eq!(generation(&s), g0 + 1, "{out}");
    // That one root is enough for a dom0 that lost everything.
    let f = Setup::with_vols("one-root-fresh", Some(&s.vols));
    copy_tree(&s.arch, &f.arch);
    let out = f.ok(&["arch-import"]);
    assert!(out.contains("6 volumes, 12 sessions"), "{out}");
    for v in &vols {
        let to = f.dir.path().join(format!("r-{v}"));
        f.ok(&["restore", v, "--save-to", to.to_str().unwrap()]);
        assert!(fs::read(&to).unwrap() == fs::read(s.vol(v)).unwrap(), "{v}");
    }
}
