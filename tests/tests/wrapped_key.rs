//! The archive's wrapped key and root, checked where they used to be
//! trusted (security review, issue 28), with the real binaries:
//!
//! - the wrapped key is kept twice and pinned by the root: a damaged or
//!   missing copy is found and put back at the next connection that may
//!   write, said on one that may not, and reported by `arch-check`;
//! - a root of the generation dom0 last saw, with other bytes (a second
//!   history the backup qube could choose between), is refused;
//! - a forged wrapped key cannot make a fresh dom0 spend more than twice
//!   an honest recovery's KDF;
//! - a passphrase is the same whichever Unicode form it is typed in, and a
//!   weak new one is warned about.

use sealed::root::Root;
use sparsebak_tests::{Rng, Setup};
use std::fs;
use std::time::Instant;

const CS: usize = 65536;

fn archive_with_a_session(tag: &str) -> Setup {
    let s = Setup::new(tag);
    s.init("64K");
    fs::write(s.vol("v.img"), Rng::new(5).bytes(3 * CS)).unwrap();
    s.backup("v.img");
    s
}

fn copy_archive(from: &Setup, to: &Setup) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&from.arch)
        .arg(&to.arch)
        .status()
        .unwrap();
    assert!(st.success());
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn root(s: &Setup) -> Root {
    Root::open(&s.keys(), &s.root_blob()).unwrap()
}

#[test]
fn a_damaged_wrapped_key_is_found_put_back_and_reported() {
    let s = archive_with_a_session("wk-damage");
    let key = s.arch.join("dom0.key");
    let copy = s.arch.join("dom0.key-copy");
    let good = fs::read(&key).unwrap();
    assert_eq!(good.len(), 125);
    assert_eq!(fs::read(&copy).unwrap(), good);
    assert_eq!(root(&s).key_hash, Some(agent::keycheck::hash(&good)));

    // A connection that may not write (verify) says so and changes nothing.
    let mut bad = good.clone();
    bad[60] ^= 1;
    fs::write(&key, &bad).unwrap();
    fs::remove_file(&copy).unwrap();
    let o = s.run(&["verify", "v.img"]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("dom0.key differs from the wrapped key dom0 wrote"),
        "{e}"
    );
    assert!(e.contains("dom0.key-copy is missing or unreadable"), "{e}");
    assert_eq!(fs::read(&key).unwrap(), bad);
    assert!(!copy.exists());

    // A backup puts both back (and reads them back), saying so.
    fs::write(s.vol("v.img"), Rng::new(6).bytes(3 * CS)).unwrap();
    let o = s.run(&["backup", "v.img"]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("dom0.key differs from the wrapped key dom0 wrote: put back"),
        "{e}"
    );
    assert!(
        e.contains("dom0.key-copy is missing or unreadable: put back"),
        "{e}"
    );
    assert_eq!(fs::read(&key).unwrap(), good);
    assert_eq!(fs::read(&copy).unwrap(), good);
    assert!(s.ok(&["arch-check"]).contains("no problems"));

    // arch-check reports (as problems, exit 1) what it found and fixed.
    fs::write(&copy, b"garbage").unwrap();
    let o = s.run(&["--json", "arch-check"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let j = sparsebak_tests::json_doc(&o.stdout);
    let problems = j["problems"].to_string();
    assert!(problems.contains("dom0.key-copy differs"), "{problems}");
    assert_eq!(fs::read(&copy).unwrap(), good);
    assert!(s.ok(&["arch-check"]).contains("no problems"));
}

#[test]
fn an_archive_from_before_the_pin_is_pinned_at_its_next_writable_connection() {
    let s = archive_with_a_session("wk-upgrade");
    let good = fs::read(s.arch.join("dom0.key")).unwrap();
    // As an earlier version left it: no copy, a root pinning nothing
    // (sealed by dom0's key at a newer generation, as that version would
    // have written it) and no record of the key in dom0.
    fs::remove_file(s.arch.join("dom0.key-copy")).unwrap();
    let mut r = root(&s);
    r.key_hash = None;
    r.generation += 1;
    fs::write(s.arch.join("dom0.root"), r.seal(&s.keys(), [9; 24])).unwrap();
    let rec = fs::read_dir(s.meta.join("archives"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::remove_file(rec.join("wrapped-key")).unwrap();
    // ...and dom0's records as it kept them: the generation it wrote, no
    // hash, no attempts.
    fs::write(rec.join("generation"), format!("{}\n", r.generation)).unwrap();
    let _ = fs::remove_file(rec.join("generation.attempted"));
    s.ok(&["list"]);
    assert!(
        !s.arch.join("dom0.key-copy").exists(),
        "a read-only connection wrote"
    );
    fs::write(s.vol("v.img"), Rng::new(7).bytes(3 * CS)).unwrap();
    s.ok(&["backup", "v.img"]);
    assert_eq!(fs::read(s.arch.join("dom0.key-copy")).unwrap(), good);
    assert_eq!(root(&s).key_hash, Some(agent::keycheck::hash(&good)));
    assert_eq!(fs::read(rec.join("wrapped-key")).unwrap(), good);
}

#[test]
fn a_second_root_of_the_same_generation_is_refused() {
    let s = archive_with_a_session("wk-equivocate");
    let honest = s.root_blob();
    let r = root(&s);
    // The same generation, one session fewer: what a backup qube holding
    // two roots of one generation could show instead.
    let mut other = r.clone();
    other.volumes[0].sessions.clear();
    fs::write(s.arch.join("dom0.root"), other.seal(&s.keys(), [7; 24])).unwrap();
    let e = s.fails(&["list"]);
    assert!(
        e.contains(&format!(
            "holds a root of generation {} that is not the one dom0 wrote or accepted",
            r.generation
        )),
        "{e}"
    );
    // The same root sealed again (other nonce, same content) is other
    // bytes too: dom0 never writes two roots at one generation.
    fs::write(s.arch.join("dom0.root"), r.seal(&s.keys(), [8; 24])).unwrap();
    s.fails(&["list"]);
    fs::write(s.arch.join("dom0.root"), &honest).unwrap();
    s.ok(&["list"]);
}

#[test]
fn a_root_this_dom0_never_wrote_is_refused_not_overwritten() {
    let s = archive_with_a_session("wk-foreign");
    fs::write(s.vol("v.img"), Rng::new(9).bytes(3 * CS)).unwrap();
    s.backup("v.img");
    // Another writer's root, five generations on, one session fewer (what
    // a second dom0 with this key, or this dom0's records put back from
    // an older copy, would meet).
    let mut other = root(&s);
    other.generation += 5;
    other.volumes[0].sessions.pop();
    let foreign = other.seal(&s.keys(), [5; 24]);
    fs::write(s.arch.join("dom0.root"), &foreign).unwrap();
    for args in [&["list"][..], &["backup", "v.img"][..]] {
        let e = s.fails(args);
        assert!(e.contains("that this dom0 never wrote"), "{args:?}: {e}");
        assert_eq!(s.root_blob(), foreign, "{args:?} wrote over it");
    }
    // arch-import takes the archive's records, and says what differed.
    let out = s.ok(&["arch-import"]);
    assert!(
        out.contains("changed: volume 'v.img': sessions differ"),
        "{out}"
    );
    s.ok(&["list"]);
}

#[test]
fn a_forged_wrapped_key_cannot_make_a_fresh_dom0_spend_a_gib() {
    let s = archive_with_a_session("wk-forged");
    let f = Setup::with_vols("wk-forged-fresh", Some(&s.vols));
    copy_archive(&s, &f);
    // The review's forged key: 1 GiB, 16 passes (at the old bounds it
    // cost 1 GiB and 20 s before its tag failed).
    let mut forged = fs::read(s.arch.join("dom0.key")).unwrap();
    forged[25..29].copy_from_slice(&(1u32 << 20).to_le_bytes());
    forged[29..33].copy_from_slice(&16u32.to_le_bytes());
    for n in ["dom0.key", "dom0.key-copy"] {
        fs::write(f.arch.join(n), &forged).unwrap();
    }
    let t0 = Instant::now();
    let e = f.fails(&["arch-import"]);
    assert!(e.contains("key derivation parameters out of bounds"), "{e}");
    assert!(t0.elapsed().as_secs_f64() < 5.0, "{:?}", t0.elapsed());
}

#[test]
fn a_passphrase_opens_in_either_unicode_form_and_a_weak_one_is_warned_about() {
    let s = Setup::new("wk-nfc");
    // Composed (NFC): "é" is U+00E9.
    fs::write(
        s.passphrase_file(),
        "d\u{e9}j\u{e0} vu, mon ami, d\u{e9}j\u{e0} vu\n",
    )
    .unwrap();
    let o = s.run(&["arch-init", "--chunk-size", "64K"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("weak"), "{}", stderr(&o));
    let f = Setup::with_vols("wk-nfc-fresh", Some(&s.vols));
    copy_archive(&s, &f);
    // Decomposed (NFD), as another system's keyboard may send it.
    fs::write(
        f.passphrase_file(),
        "de\u{301}ja\u{300} vu, mon ami, de\u{301}ja\u{300} vu\n",
    )
    .unwrap();
    f.ok(&["arch-import"]);

    let w = Setup::new("wk-weak");
    fs::write(w.passphrase_file(), "hunter2\n").unwrap();
    let o = w.run(&["arch-init", "--chunk-size", "64K"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the new passphrase is weak: only 7 characters"),
        "{}",
        stderr(&o)
    );
    fs::write(w.passphrase_file(), "aaaaaaaaaaaaaaaaaaaa\n").unwrap();
    let o = w.run(&["key", "passwd"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the new passphrase is weak: about"),
        "{}",
        stderr(&o)
    );
}

/// `key rotate`: what is written after it is sealed with a new key the old
/// key and passphrase cannot open; what was written before still restores
/// (with the retired key the new ring keeps); a fresh dom0 recovers all of
/// it with the new passphrase, and neither the old passphrase nor the old
/// key file opens the archive's root any more.
#[test]
fn a_rotated_key_seals_what_comes_after_and_the_old_one_reads_only_what_came_before() {
    use sealed::envelope::{Opener, Place};
    use sealed::keys::{KeyFile, VolumeId};
    let s = Setup::new("wk-rotate");
    s.init("64K");
    let v1 = Rng::new(5).bytes(3 * CS);
    fs::write(s.vol("v.img"), &v1).unwrap();
    let first = s.backup("v.img");
    let kept1 = s.dir.path().join("v1.img");
    fs::write(&kept1, &v1).unwrap();
    let old_key = s.dir.path().join("old.key");
    s.ok(&["key", "export", old_key.to_str().unwrap()]);
    let new_pass = "a brand new passphrase, after the leak\n";
    fs::write(s.passphrase_file(), new_pass).unwrap();
    let out = s.ok(&["key", "rotate"]);
    assert!(out.contains("has a new key"), "{out}");
    let ring = fs::read(s.arch.join("dom0.key")).unwrap();
    assert_eq!(&ring[..8], b"SBKKEY02");
    assert_eq!(fs::read(s.arch.join("dom0.key-copy")).unwrap(), ring);
    assert!(s.ok(&["arch-check"]).contains("no problems"));
    // After the rotation: new data, and both sessions restore exactly.
    fs::write(s.vol("v.img"), Rng::new(8).bytes(3 * CS)).unwrap();
    let second = s.backup("v.img");
    s.assert_restores("v.img", &first, &kept1);
    s.assert_restores("v.img", &second, &s.vol("v.img"));
    // The old key opens the chunks of before, none of after.
    let old = std::sync::Arc::new(
        KeyFile::decode(&fs::read_to_string(&old_key).unwrap())
            .unwrap()
            .keys(),
    );
    let volume = VolumeId::from_hex(&s.volume_id("v.img")).unwrap();
    for (session, opens) in [(&first, true), (&second, false)] {
        for i in 0..3u64 {
            let (env, id) = s.stored_chunk("v.img", session, i, CS as u64);
            let at = Place {
                scope: sealed::keys::Scope::volume(volume),
                addr: i * CS as u64,
                raw_len: CS as u32,
            };
            let mut buf = vec![0u8; CS];
            let r = Opener::new(old.clone()).open(&env, &at, &id, &mut buf);
            assert_eq!(r.is_ok(), opens, "session {session} chunk {i}");
        }
    }
    // A fresh dom0 recovers both sessions with the new passphrase.
    let f = Setup::with_vols("wk-rotate-fresh", Some(&s.vols));
    copy_archive(&s, &f);
    fs::write(f.passphrase_file(), new_pass).unwrap();
    f.ok(&["arch-import"]);
    f.assert_restores("v.img", &first, &kept1);
    f.assert_restores("v.img", &second, &s.vol("v.img"));
    // The old passphrase and the old key file open nothing of it now.
    let g = Setup::with_vols("wk-rotate-old", Some(&s.vols));
    copy_archive(&s, &g);
    let e = g.fails(&["arch-import"]);
    assert!(e.contains("wrong passphrase"), "{e}");
    let e = g.fails(&["arch-import", "--key-file", old_key.to_str().unwrap()]);
    assert!(e.contains("does not authenticate"), "{e}");
}
