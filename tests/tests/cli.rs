//! What a user (or a script) sees, through the real binaries: private
//! modes, a damaged archive healed by the next backup, salvage restores,
//! honest `list`, `--mkdir`, Ctrl-C, the fixes to delete/remove, and one
//! JSON document per run for every command.

use sparsebak_tests::{script, semi_compressible, write_at, FsKind, LoopFs, Rng, Setup};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const CS: u64 = 64 * 1024;

/// The archive's file of chunk `addr` in `session` of `vol`.
fn chunk_file(s: &Setup, vol: &str, session: &str, addr: u64) -> PathBuf {
    let name = format!("x{addr:016x}");
    let dir = s.archive_vol(vol).join(session);
    for d in fs::read_dir(&dir).unwrap().flatten() {
        let p = d.path().join(&name);
        if p.is_file() {
            return p;
        }
    }
    panic!("no chunk file {name} under {}", dir.display());
}

fn flip(p: &Path, at: usize) {
    let mut b = fs::read(p).unwrap();
    b[at] ^= 0x40;
    fs::write(p, b).unwrap();
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every file and directory under `dir`, with its mode.
fn modes_under(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push((p.clone(), mode(&p)));
        if e.file_type().unwrap().is_dir() {
            modes_under(&p, out);
        }
    }
}

/// A 1 MiB volume of 16 chunks, backed up once.
fn one_session(tag: &str) -> (Setup, PathBuf, String) {
    let s = Setup::new(tag);
    s.init("64K");
    let v = s.vol("v.img");
    fs::write(&v, semi_compressible(&mut Rng::new(7), 16 * CS as usize)).unwrap();
    let sess = s.backup("v.img");
    (s, v, sess)
}

#[test]
fn nothing_is_readable_by_other_users() {
    // A reflink filesystem, so that snapshots are taken; a umask that
    // would make everything world-readable.
    let fs_ = LoopFs::new(FsKind::Xfs, 300);
    let s = Setup::with_vols("modes", Some(&fs_.mnt));
    let run = |args: &[&str]| {
        let mut c = s.cmd(args);
        // umask 022 for the agent and (through it) the receiver.
        let sh = "umask 022; exec \"$0\" \"$@\"";
        let prog = c.get_program().to_owned();
        let a: Vec<_> = c.get_args().map(|x| x.to_owned()).collect();
        c = std::process::Command::new("sh");
        c.arg("-c").arg(sh).arg(prog).args(a);
        let o = c.stdin(std::process::Stdio::null()).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["arch-init", "--chunk-size", "64K"]);
    let v = s.vol("locked.img");
    fs::write(&v, semi_compressible(&mut Rng::new(1), 8 * CS as usize)).unwrap();
    fs::set_permissions(&v, fs::Permissions::from_mode(0o600)).unwrap();
    let w = s.vol("shared.img");
    fs::write(&w, semi_compressible(&mut Rng::new(2), 4 * CS as usize)).unwrap();
    fs::set_permissions(&w, fs::Permissions::from_mode(0o640)).unwrap();
    run(&["backup", "locked.img", "shared.img"]);
    write_at(&v, 0, b"changed");
    run(&["backup", "locked.img"]);
    // Snapshots: private directories, files no more open than the source.
    let snaps = fs_.mnt.join(".sparsebak");
    let mut found = Vec::new();
    modes_under(&snaps, &mut found);
    assert_eq!(mode(&snaps), 0o700);
    let files: Vec<_> = found.iter().filter(|(p, _)| p.is_file()).collect();
    assert_eq!(files.len(), 2, "{found:?}");
    for (p, m) in &found {
        if p.is_dir() {
            assert_eq!(*m, 0o700, "{}", p.display());
        } else {
            assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
        }
    }
    // Archive: nothing for group or others.
    let mut arch = Vec::new();
    modes_under(&s.arch, &mut arch);
    assert!(arch.len() > 10);
    for (p, m) in &arch {
        assert_eq!(m & 0o077, 0, "{} is {m:o}", p.display());
    }
    // dom0's metadata.
    assert_eq!(mode(&s.meta), 0o700);
    // Restores keep the source's mode, whatever the umask.
    let out = s.dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    for (vol, want) in [("locked.img", 0o600), ("shared.img", 0o640)] {
        let to = out.join(vol);
        run(&["restore", vol, "--save-to", to.to_str().unwrap()]);
        assert_eq!(mode(&to), want, "{vol}");
        assert_eq!(fs::read(&to).unwrap(), fs::read(s.vol(vol)).unwrap());
    }
}

#[test]
fn a_damaged_chunk_is_healed_by_the_next_backup() {
    let (s, v, s1) = one_session("heal");
    let expect = s.dir.path().join("expect.img");
    fs::copy(&v, &expect).unwrap();
    // Bit rot in the archive: the chunk at 0x30000 of the only session.
    flip(&chunk_file(&s, "v.img", &s1, 0x30000), 100);
    // A backup with nothing changed does not notice it...
    let out = s.ok(&["backup", "v.img"]);
    assert!(!out.contains("re-sent"), "{out}");
    let e = s.fails(&["verify", "v.img"]);
    assert!(e.contains("0x30000"), "{e}");
    // ...but the failed verify recorded it, and the next backup re-sends it.
    assert!(e.contains("the next backup of 'v.img' re-sends it"), "{e}");
    let out = s.ok(&["backup", "v.img"]);
    assert!(
        out.contains("re-sent 1 chunk damaged in the archive: this session is whole again"),
        "{out}"
    );
    let newest = s.sessions("v.img").pop().unwrap();
    s.ok(&["verify", "v.img"]);
    s.assert_restores("v.img", &newest, &expect);
    // Once healed, nothing more is re-sent.
    let out = s.ok(&["backup", "v.img"]);
    assert!(!out.contains("re-sent"), "{out}");

    // The same found by arch-check (the receiver's own check): a missing
    // chunk and a corrupt one, both re-sent by the next backup.
    fs::remove_file(chunk_file(&s, "v.img", &s1, 0x50000)).unwrap();
    flip(&chunk_file(&s, "v.img", &s1, 0x70000), 3);
    let o = s.run(&["arch-check"]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("recorded 2 chunks of 'v.img' as damaged"),
        "{text}"
    );
    let j = s.json(&["list", "v.img"]);
    assert_eq!(j["volumes"][0]["damaged_chunks"], 2, "{j}");
    let j = s.json(&["backup", "v.img"]);
    assert_eq!(j["volumes"][0]["healed"], 2, "{j}");
    s.ok(&["verify", "v.img"]);
    s.assert_restores("v.img", &s.sessions("v.img").pop().unwrap(), &expect);
}

#[test]
fn resend_all_finds_and_replaces_damage_without_a_prior_check() {
    let (s, v, s1) = one_session("resend");
    let expect = s.dir.path().join("expect.img");
    fs::copy(&v, &expect).unwrap();
    fs::remove_file(chunk_file(&s, "v.img", &s1, 0x20000)).unwrap();
    let out = s.ok(&["backup", "--resend-all", "v.img"]);
    assert!(out.contains("1 chunk missing or damaged"), "{out}");
    assert!(out.contains("re-read in full (--resend-all)"), "{out}");
    assert!(out.contains("re-sent 1 chunk damaged"), "{out}");
    s.ok(&["verify", "v.img"]);
    s.assert_restores("v.img", &s.sessions("v.img").pop().unwrap(), &expect);
}

#[test]
fn salvage_writes_what_verifies_and_zeros_the_rest() {
    let (s, v, s1) = one_session("salvage");
    let src = fs::read(&v).unwrap();
    flip(&chunk_file(&s, "v.img", &s1, 0x10000), 50);
    fs::remove_file(chunk_file(&s, "v.img", &s1, 0x80000)).unwrap();
    let to = s.dir.path().join("salvaged.img");
    // Without --salvage: nothing is written.
    s.fails(&["restore", "v.img", "--save-to", to.to_str().unwrap()]);
    assert!(!to.exists());
    let j = s.json(&[
        "restore",
        "v.img",
        "--salvage",
        "--save-to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(j["exit_status"], 1, "{j}");
    let bad: Vec<u64> = j["bad_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["addr"].as_u64().unwrap())
        .collect();
    assert_eq!(bad, [0x10000, 0x80000], "{j}");
    assert_eq!(j["chunks"], 14, "{j}");
    let got = fs::read(&to).unwrap();
    assert_eq!(got.len(), src.len());
    for i in 0..16u64 {
        let r = (i * CS) as usize..((i + 1) * CS) as usize;
        if bad.contains(&(i * CS)) {
            assert!(got[r].iter().all(|&b| b == 0), "chunk {i} not zero");
        } else {
            assert_eq!(got[r.clone()], src[r], "chunk {i}");
        }
    }
    // The text lists them, and verify --all lists both without writing.
    let o = s.run(&["verify", "v.img", "--all"]);
    assert_eq!(o.status.code(), Some(1));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("FAILED chunk 0x10000") && t.contains("FAILED chunk 0x80000"),
        "{t}"
    );
    assert!(t.contains("2 chunks FAILED"), "{t}");
}

#[test]
fn a_copied_image_is_not_stored_twice() {
    // `cp same.img vols/img` rewrites every extent on a reflink
    // filesystem: the delta says everything changed; ids say nothing did.
    let fs_ = LoopFs::new(FsKind::Xfs, 300);
    let s = Setup::with_vols("copied", Some(&fs_.mnt));
    s.init("64K");
    let v = s.vol("img");
    let data = semi_compressible(&mut Rng::new(3), 32 * CS as usize);
    fs::write(&v, &data).unwrap();
    s.backup("img");
    let copy = s.dir.path().join("same.img");
    fs::write(&copy, &data).unwrap();
    fs::remove_file(&v).unwrap();
    fs::copy(&copy, &v).unwrap();
    let j = s.json(&["backup", "img"]);
    let b = &j["volumes"][0];
    assert_eq!(b["method"], "reflink delta", "{j}");
    assert_eq!(b["chunks"], 0, "{j}");
    assert_eq!(b["bytes_sent"], 0, "{j}");
    s.assert_restores("img", &s.sessions("img").pop().unwrap(), &copy);
}

#[test]
fn list_asks_the_archive_and_says_when_it_cannot() {
    let (s, _, _) = one_session("list");
    let t = s.ok(&["list"]);
    assert!(t.contains("v.img: 1 session, all in the archive"), "{t}");
    // The archive's disk is not mounted.
    let away = s.dir.path().join("away");
    fs::rename(&s.arch, &away).unwrap();
    let e = s.fails(&["list"]);
    assert!(
        e.contains("is out of reach") && e.contains("list --offline"),
        "{e}"
    );
    let j = s.json(&["list"]);
    assert_eq!(j["ok"], false);
    assert!(j["error"].as_str().unwrap().contains("out of reach"), "{j}");
    let t = s.ok(&["list", "--offline"]);
    assert!(t.contains("OFFLINE: dom0's records only"), "{t}");
    let j = s.json(&["list", "--offline"]);
    assert_eq!(j["online"], false);
    assert_eq!(j["volumes"][0]["archive_sessions"], serde_json::Value::Null);
    fs::rename(&away, &s.arch).unwrap();
    // A session the archive lost is a disagreement, shown per volume.
    let s2 = s.backup("v.img");
    fs::remove_dir_all(s.archive_vol("v.img").join(&s2)).unwrap();
    let j = s.json(&["list", "v.img"]);
    assert_eq!(j["online"], true);
    let d = j["volumes"][0]["disagreements"].as_array().unwrap();
    assert_eq!(d.len(), 1, "{j}");
    assert!(d[0].as_str().unwrap().contains(&s2), "{j}");
    let t = s.ok(&["list", "v.img"]);
    assert!(t.contains("DISAGREE: session"), "{t}");
}

#[test]
fn arch_init_refuses_a_missing_parent_unless_told() {
    let s = Setup::new("mkdir");
    let dest = format!("file://{}/not-mounted/archive", s.dir.path().display());
    let mut c = s.cmd(&["arch-init"]);
    c.arg("--dest").arg(&dest);
    let o = c.output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("not-mounted' does not exist") && e.contains("--mkdir"),
        "{e}"
    );
    assert!(!s.dir.path().join("not-mounted").exists());
    // The receiver refuses too, whoever asks (ssh and qrexec included).
    let mut c = s.cmd(&["arch-init", "--mkdir"]);
    c.arg("--dest").arg(&dest);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(s.dir.path().join("not-mounted/archive").is_dir());
}

#[test]
fn ctrl_c_removes_a_partial_restore_and_says_so() {
    let s = Setup::new("sigint");
    s.init("64K");
    let v = s.vol("big.img");
    fs::write(&v, semi_compressible(&mut Rng::new(9), 64 * CS as usize)).unwrap();
    s.backup("big.img");
    // A receiver whose restore stream stalls after a few chunks.
    let slow = s.dir.path().join("slow-receiver.sh");
    script(
        &slow,
        &format!(
            // dd passes each read on at once (head would buffer it).
            "\"{}\" \"$@\" | {{ dd bs=4096 iflag=count_bytes count=300000 status=none; sleep 30; cat; }}",
            s.receiver.display()
        ),
    );
    let to = s.dir.path().join("restored.img");
    let partial = s.dir.path().join(".restored.img.sparsebak-partial");
    let mut c = s.cmd(&["restore", "big.img", "--save-to", to.to_str().unwrap()]);
    c.arg("--remote-receiver").arg(&slow);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !partial.exists() {
        assert!(t0.elapsed().as_secs() < 20, "no partial file appeared");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{e}");
    assert!(e.contains("interrupted (SIGINT)"), "{e}");
    assert!(e.contains("removed the partial restore"), "{e}");
    assert!(!partial.exists() && !to.exists());
}

#[test]
fn delete_and_remove_mean_what_they_say() {
    let s = Setup::new("delete");
    s.init("64K");
    // A 255-byte name, the longest FORMAT allows.
    let long = "L".repeat(251) + ".img";
    assert_eq!(long.len(), 255);
    fs::write(
        s.vol(&long),
        semi_compressible(&mut Rng::new(4), 3 * CS as usize),
    )
    .unwrap();
    s.backup(&long);
    let j = s.json(&["delete", &long, "--force"]);
    assert_eq!(j["ok"], true, "{j}");
    assert_eq!(j["sessions_deleted"], 1);
    assert!(!s.meta_vol(&long).exists());
    let left: Vec<_> = fs::read_dir(s.arch.join("volumes"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A name dom0 never knew is an error, not a success.
    let e = s.fails(&["delete", "never-existed.img", "--force"]);
    assert!(e.contains("no volume 'never-existed.img'"), "{e}");
    // Backed up by name, never added: remove drops its snapshots and says so.
    fs::write(s.vol("byname.img"), vec![1u8; CS as usize]).unwrap();
    s.backup("byname.img");
    let t = s.ok(&["remove", "byname.img"]);
    assert!(t.contains("was not in the configured set"), "{t}");
    let e = s.fails(&["remove", "never-existed.img"]);
    assert!(
        e.contains("neither in the configured set nor backed up"),
        "{e}"
    );
}

#[test]
fn a_receiver_with_another_chunk_size_is_named_plainly() {
    let s = Setup::new("cs-mismatch");
    s.init("64K");
    let meta = s
        .meta
        .join("archives")
        .join(s.archive_id())
        .join("archive.toml");
    let t = fs::read_to_string(meta).unwrap();
    let id = protocol::message::ArchiveId::from_hex(&s.archive_id()).unwrap();
    assert!(t.contains("chunk_size = 65536"));
    let params = protocol::message::ArchiveParams {
        id,
        chunk_size: 128 * 1024,
        compression: protocol::message::Compression::Zstd { level: 3 },
    };
    let hello = s.dir.path().join("hello.bin");
    fs::write(&hello, s.fake_hello(params)).unwrap();
    let fake = s.dir.path().join("fake.sh");
    script(
        &fake,
        &format!("cat '{}'\nexec cat >/dev/null", hello.display()),
    );
    let mut c = s.cmd(&["verify", "x.img"]);
    c.arg("--remote-receiver").arg(&fake);
    let o = c.output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("chunk size 128.0 KiB") && e.contains("chunk size 64.0 KiB"),
        "{e}"
    );
}

#[test]
fn every_command_prints_one_json_document() {
    let s = Setup::new("json");
    let j = s.json(&["arch-init", "--chunk-size", "64K"]);
    assert_eq!(j["command"], "arch-init");
    assert_eq!(j["chunk_size"], 65536);
    assert_eq!(j["encrypted"], true);
    let v = s.vol("v.img");
    fs::write(&v, semi_compressible(&mut Rng::new(5), 8 * CS as usize)).unwrap();
    let j = s.json(&["add", "v.img"]);
    assert_eq!(j["configured"][0], "v.img");
    let j = s.json(&["backup"]);
    let b = &j["volumes"][0];
    assert_eq!(
        (b["volume"].as_str(), b["ok"].as_bool()),
        (Some("v.img"), Some(true)),
        "{j}"
    );
    for k in [
        "session",
        "method",
        "volume_size",
        "bytes_read",
        "bytes_sent",
        "chunks",
        "zero_chunks",
        "healed",
        "seconds",
    ] {
        assert!(!b[k].is_null(), "backup: no {k}: {j}");
    }
    write_at(&v, 0, b"x");
    s.json(&["backup", "v.img"]);
    let j = s.json(&["list"]);
    assert_eq!(j["volumes"][0]["sessions"].as_array().unwrap().len(), 2);
    for k in [
        "archive",
        "dest",
        "chunk_size",
        "compression",
        "encrypted",
        "online",
        "configured",
        "missing",
        "unknown_to_dom0",
    ] {
        assert!(j.get(k).is_some(), "list: no {k}: {j}");
    }
    let j = s.json(&["verify", "v.img"]);
    assert_eq!(j["chunks"], 8, "{j}");
    let to = s.dir.path().join("r.img");
    let j = s.json(&["restore", "v.img", "--save-to", to.to_str().unwrap()]);
    assert_eq!(j["bad_chunks"].as_array().unwrap().len(), 0, "{j}");
    let j = s.json(&["diff", "v.img"]);
    assert_eq!(
        (j["ok"].as_bool(), j["changed_chunks"].as_u64()),
        (Some(true), Some(0)),
        "{j}"
    );
    write_at(&v, 5 * CS, b"y");
    let j = s.json(&["diff", "v.img"]);
    assert_eq!(j["exit_status"], 1);
    assert_eq!(j["changed_ranges"][0][0], 5 * CS, "{j}");
    let j = s.json(&["arch-check"]);
    assert_eq!(j["problems"].as_array().unwrap().len(), 0, "{j}");
    assert_eq!(j["sessions"], 2);
    let first = s.sessions("v.img")[0].clone();
    let j = s.json(&["prune", "v.img", "--session", &first, "--dry-run"]);
    assert_eq!(j["pruned"][0]["dry_run"], true, "{j}");
    let j = s.json(&["prune", "v.img", "--session", &first]);
    assert_eq!(j["sessions_pruned"], 1, "{j}");
    let key = s.dir.path().join("key.txt");
    let j = s.json(&["key", "export", key.to_str().unwrap()]);
    assert_eq!(j["command"], "key export");
    let j = s.json(&["key", "passwd"]);
    assert_eq!(j["ok"], true, "{j}");
    let j = s.json(&["rename", "v.img", "w.img"]);
    assert_eq!(j["new_name"], "w.img");
    // arch-import on a dom0 that lost its records.
    fs::remove_dir_all(&s.meta).unwrap();
    let j = s.json(&["arch-import"]);
    assert_eq!(
        (j["volumes"].as_u64(), j["sessions"].as_u64()),
        (Some(1), Some(1)),
        "{j}"
    );
    assert_eq!(j["newest"]["volume"], "w.img");
    let j = s.json(&["remove", "w.img"]);
    assert_eq!(j["ok"], true, "{j}");
    let j = s.json(&["delete", "w.img", "--force"]);
    assert_eq!(j["sessions_deleted"], 1);
    // Errors are documents too, with the message.
    let j = s.json(&["verify", "nope.img"]);
    assert_eq!(j["ok"], false);
    assert!(j["error"].as_str().unwrap().contains("nope.img"), "{j}");
    // A usage error is clap's, on stderr, before any document.
    let o = s.run(&["backup", "--no-such-flag", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    // --quiet prints no result lines.
    let o = s.run(&["list", "--offline", "--quiet"]);
    assert!(o.status.success() && o.stdout.is_empty());
}

#[test]
fn every_argument_and_option_has_help() {
    use clap::CommandFactory;
    fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in c.get_arguments() {
            if a.get_id() == "help" || a.get_id() == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {}", a.get_id()));
            }
        }
        for sc in c.get_subcommands() {
            if sc.get_about().is_none() {
                missing.push(format!("{path} {} (no about)", sc.get_name()));
            }
            walk(sc, &format!("{path} {}", sc.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&agent::cli::Cli::command(), "sparsebak", &mut missing);
    walk(
        &receiver::cli::Cli::command(),
        "sparsebak-receiver",
        &mut missing,
    );
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

/// What the receiver refuses is said in words, never as Rust values
/// (`Some("S_…")`, `None`) or enum names (`SessionOrder`), in the text
/// and in the JSON `error` field alike.
#[test]
fn a_refusal_is_written_for_a_person() {
    let (s, v, first) = one_session("words");
    write_at(&v, 0, &[9u8; 4096]);
    let second = s.backup("v.img");
    // The archive loses its newest session (a copy made before it).
    fs::rename(
        s.archive_vol("v.img").join(&second),
        s.dir.path().join("kept"),
    )
    .unwrap();
    write_at(&v, CS, &[8u8; 4096]);
    let e = s.fails(&["backup", "v.img"]);
    let j = s.json(&["backup", "v.img"]);
    let jerr = j.to_string();
    for text in [&e, &jerr] {
        for internal in ["Some(", "None", "SessionOrder", "NoSuchVolume", "{:?}"] {
            assert!(!text.contains(internal), "{internal:?} in: {text}");
        }
    }
    assert!(
        e.contains(&format!(
            "dom0's newest session is {second} but the archive's is {first}"
        )),
        "{e}"
    );
    assert!(
        e.contains("the archive's sessions of this volume are not the ones dom0 has"),
        "{e}"
    );
}
