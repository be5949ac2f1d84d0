//! Resuming cut backups (`DESIGN.md` §14), with the real binaries: a 1 GiB
//! full backup is cut at 25 %, 50 % and 90 % of its chunks, by a cut link,
//! a SIGKILL of the receiver and a SIGKILL of dom0. The next backup sends
//! at most what the cut session lacks plus one pipeline window, keeps the
//! rest, and every session restores byte-exact; the archive checks clean.
//! A volume changed between the cut and the resume is stored as it is
//! now: dom0 keeps only chunks whose id it computed again from the source.

use sparsebak_tests::{receiver_bin, script, write_at, Rng, Setup};
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const CUT: &str = env!("CARGO_BIN_EXE_cutpipe");
const SIZE: u64 = 1 << 30;
const CS: u64 = 256 * 1024;
const CHUNKS: u64 = SIZE / CS;
/// What a cut may lose beyond the chunks whose manifest entries the
/// receiver wrote: its writers' buffers (12) and what was in flight, and
/// so what the next backup may send again beyond the missing part.
const WINDOW: u64 = 32;
/// The most one sealed 256 KiB chunk of random data is stored as.
const STORED_MAX: u64 = CS + 4096;

#[derive(Debug, Clone, Copy)]
enum Cut {
    Link,
    Receiver,
    Dom0,
}

/// Entries the receiver wrote to the unfinished session's manifest.
fn entries(s: &Setup, vol: &str) -> u64 {
    let p = s.archive_vol(vol).join(".incoming").join("manifest");
    fs::metadata(p).map_or(0, |m| m.len().saturating_sub(12) / 41)
}

/// Waits until the session being written holds `want` entries, or the
/// backup ended; kills `victim` then.
fn kill_at(s: &Setup, vol: &str, backup: &mut Child, want: u64, victim: impl FnOnce()) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(300) {
        if backup.try_wait().unwrap().is_some() {
            panic!("{vol}: the backup ended before the cut");
        }
        let id = fs::read_to_string(s.meta_vol(vol).join("id")).unwrap_or_default();
        if !id.trim().is_empty() && entries(s, vol) >= want {
            victim();
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("{vol}: no cut within 300 s");
}

fn spawn_backup(s: &Setup, vol: &str, receiver: &Path) -> Child {
    let mut c = s.cmd(&["backup", vol]);
    c.arg("--remote-receiver").arg(receiver);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c.spawn().unwrap()
}

/// Cuts a first backup of `vol` once about `frac` of it is stored; returns
/// the entries the receiver had written.
fn cut_backup(s: &Setup, vol: &str, how: Cut, frac: f64) -> u64 {
    let want = (CHUNKS as f64 * frac) as u64;
    let pidfile = s.dir.path().join("receiver.pid");
    let _ = fs::remove_file(&pidfile);
    let recv = receiver_bin();
    // The receiver, its pid recorded (to kill it, or to wait for it).
    let pid_wrapper = s.dir.path().join("pid.sh");
    script(
        &pid_wrapper,
        &format!(
            "echo $$ > {}\nexec {} \"$@\"",
            pidfile.display(),
            recv.display()
        ),
    );
    let status = match how {
        Cut::Link => {
            // Random data: each chunk is stored as a little more than its
            // size, so this many bytes reach the receiver before the cut.
            let w = s.dir.path().join("cut.sh");
            let bytes = want * CS;
            script(
                &w,
                &format!("exec {CUT} {bytes} - {} \"$@\"", recv.display()),
            );
            spawn_backup(s, vol, &w).wait_with_output().unwrap()
        }
        Cut::Receiver => {
            let mut b = spawn_backup(s, vol, &pid_wrapper);
            kill_at(s, vol, &mut b, want, || {
                let pid = fs::read_to_string(&pidfile).unwrap();
                let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
            });
            b.wait_with_output().unwrap()
        }
        Cut::Dom0 => {
            let mut b = spawn_backup(s, vol, &pid_wrapper);
            let pid = nix::unistd::Pid::from_raw(b.id() as i32);
            kill_at(s, vol, &mut b, want, || {
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
            });
            b.wait_with_output().unwrap()
        }
    };
    assert!(!status.status.success(), "{vol}: the cut backup succeeded");
    if !matches!(how, Cut::Dom0) {
        let err = String::from_utf8_lossy(&status.stderr);
        assert!(err.contains("sparsebak: error"), "{vol}: {err}");
    }
    // dom0 killed: its receiver stores what was in its pipe, then ends
    // once it sees the end of its input. Counted after it is gone.
    if let Ok(pid) = fs::read_to_string(&pidfile) {
        // Gone, or a zombie nobody reaped yet.
        let stat = Path::new("/proc").join(pid.trim()).join("stat");
        let running = || {
            fs::read_to_string(&stat)
                .is_ok_and(|st| st.rsplit(") ").next().is_some_and(|r| !r.starts_with('Z')))
        };
        let t0 = Instant::now();
        while running() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{vol}: receiver still running"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let kept = entries(s, vol);
    assert!(
        kept + WINDOW >= want && kept > 0,
        "{vol}: cut with {kept} entries stored, meant about {want}"
    );
    kept
}

/// Backs up `vol` (resuming) and returns (bytes sent, chunks resumed).
fn resume(s: &Setup, vol: &str) -> (u64, u64, String) {
    let v = s.json(&["backup", vol]);
    assert_eq!(v["ok"].as_bool(), Some(true), "{v}");
    let r = &v["volumes"][0];
    (
        r["bytes_sent"].as_u64().unwrap(),
        r["resumed_chunks"].as_u64().unwrap(),
        r["session"].as_str().unwrap().to_string(),
    )
}

fn assert_checks_clean(s: &Setup) {
    let out = s.ok(&["arch-check"]);
    assert!(out.contains("no problems"), "{out}");
}

#[test]
fn a_full_backup_cut_anywhere_resumes_with_what_it_stored() {
    let s = Setup::new("resume");
    s.init("256K");
    // Random data: nothing compresses, every chunk is its own.
    let base = s.dir.path().join("base.img");
    {
        let mut rng = Rng::new(7);
        let mut f = fs::File::create(&base).unwrap();
        let mut buf = vec![0u8; 8 << 20];
        for _ in 0..SIZE / buf.len() as u64 {
            rng.fill(&mut buf);
            std::io::Write::write_all(&mut f, &buf).unwrap();
        }
    }
    let mut n = 0;
    for how in [Cut::Link, Cut::Receiver, Cut::Dom0] {
        for frac in [0.25, 0.5, 0.9] {
            n += 1;
            let vol = format!("v{n}.img");
            let path = s.vol(&vol);
            // Each volume is its own dedup scope: its first backup sends
            // everything, whatever the others hold.
            fs::hard_link(&base, &path).unwrap();
            let kept = cut_backup(&s, &vol, how, frac);
            let (sent, resumed, session) = resume(&s, &vol);
            let missing = CHUNKS - kept;
            eprintln!(
                "{how:?} at {frac}: cut with {kept} of {CHUNKS} chunks stored; resumed {resumed}, sent {sent} bytes"
            );
            assert!(
                sent <= (missing + WINDOW) * STORED_MAX,
                "{how:?} at {frac}: sent {sent} bytes after {kept} of {CHUNKS} chunks were stored"
            );
            assert!(
                resumed + WINDOW >= kept && resumed <= kept,
                "{how:?} at {frac}: {resumed} chunks resumed of {kept} stored"
            );
            assert_eq!(s.archive_sessions(&vol), vec![session.clone()]);
            s.assert_restores(&vol, &session, &path);
            // Nothing of the cut session is left once its volume committed.
            let left: Vec<String> = fs::read_dir(s.archive_vol(&vol))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".incoming") || n.starts_with(".resume"))
                .collect();
            assert!(left.is_empty(), "{how:?} at {frac}: left {left:?}");
            assert_checks_clean(&s);
            s.ok(&["delete", &vol, "--force"]);
            fs::remove_file(&path).unwrap();
        }
    }
}

#[test]
fn a_volume_changed_after_the_cut_is_stored_as_it_is_now() {
    let s = Setup::new("resume-changed");
    s.init("64K");
    let cs = 65536u64;
    let size = 64u64 << 20;
    let mut rng = Rng::new(11);
    let vol = s.vol("v.img");
    fs::write(&vol, rng.bytes(size as usize)).unwrap();
    let w = s.dir.path().join("cut.sh");
    script(
        &w,
        &format!(
            "exec {CUT} {} - {} \"$@\"",
            size / 2,
            receiver_bin().display()
        ),
    );
    assert!(!spawn_backup(&s, "v.img", &w)
        .wait_with_output()
        .unwrap()
        .status
        .success());
    let kept = entries(&s, "v.img");
    assert!(kept > 100, "{kept}");
    // Rewritten where the cut session stored chunks, and beyond.
    let changed: Vec<u64> = vec![0, 3, kept / 2, kept - 1, kept + 5];
    for &c in &changed {
        write_at(&vol, c * cs, &rng.bytes(cs as usize));
    }
    let (sent, resumed, session) = resume(&s, "v.img");
    let chunks = size / cs;
    // The changed chunks the cut session held are sent, not kept.
    assert!(resumed + 4 <= kept, "{resumed} resumed of {kept}");
    assert!(resumed + WINDOW + 4 >= kept, "{resumed} resumed of {kept}");
    assert!(sent <= (chunks - resumed) * (cs + 4096), "{sent}");
    s.assert_restores("v.img", &session, &vol);
    assert_checks_clean(&s);
    // The next backup is an ordinary incremental.
    write_at(&vol, 7 * cs, &rng.bytes(cs as usize));
    let (sent, resumed, session) = resume(&s, "v.img");
    assert_eq!(resumed, 0);
    assert!(sent <= cs + 4096, "{sent}");
    s.assert_restores("v.img", &session, &vol);
}

/// The unfinished and kept sessions' directories of a volume.
fn leftovers(s: &Setup, vol: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(s.archive_vol(vol))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n == ".incoming" || n == ".resume")
        .collect();
    v.sort();
    v
}

#[test]
fn the_receiver_keeps_only_what_it_can_confirm_and_an_abort_keeps_nothing() {
    use protocol::message::{Operation, Reply, Request, ResumedChunk};
    use sparsebak_tests::{agent_hello, chunk_frame, feed, request_frame};
    let cs = 65536u64;
    let s = Setup::new("resume-recv");
    s.init("64K");
    fs::write(s.vol("v.img"), Rng::new(5).bytes(4 * cs as usize)).unwrap();
    let s1 = s.backup("v.img");
    let vid = s.volume_id("v.img");
    let (env0, id0) = s.stored_chunk("v.img", &s1, 0, cs);
    let (env1, id1) = s.stored_chunk("v.img", &s1, 1, cs);
    let begin = |name: &str| Request::BeginSession {
        volume: vid.clone(),
        session: name.into(),
        prev: Some(s1.clone()),
        volume_size: 4 * cs,
        time: 0,
    };
    let resume = |addr: u64, hash: [u8; 32]| {
        request_frame(&Request::Resume(ResumedChunk {
            addr,
            raw_len: cs as u32,
            hash,
        }))
    };

    // An abort: nothing of the session is kept.
    let mut input = agent_hello(Operation::Backup);
    input.extend(request_frame(&begin("S_000000000090")));
    input.extend(chunk_frame(0, cs as u32, &env0, id0));
    input.extend(request_frame(&Request::Abort));
    input.extend(request_frame(&Request::Bye));
    let (ok, err, replies) = feed(&s, &input);
    assert!(ok, "{err}");
    assert_eq!(replies, vec![Reply::Ok, Reply::Ok]);
    assert!(leftovers(&s, "v.img").is_empty());

    // A cut stream: the session is kept; `Unfinished` sends its entries.
    let mut input = agent_hello(Operation::Backup);
    input.extend(request_frame(&begin("S_000000000090")));
    input.extend(chunk_frame(0, cs as u32, &env0, id0));
    // (The receiver's answer to the cut goes nowhere.)
    let (_, _, replies) = feed(&s, &input);
    assert!(
        matches!(&replies[..], [Reply::Ok, Reply::Error(e)] if e.message.contains("closed")),
        "{replies:?}"
    );
    assert_eq!(leftovers(&s, "v.img"), vec![".incoming"]);
    let mut input = agent_hello(Operation::Backup);
    input.extend(request_frame(&Request::Unfinished {
        volume: vid.clone(),
    }));
    input.extend(request_frame(&Request::Bye));
    let (_, err, replies) = feed(&s, &input);
    let [Reply::Data(m), Reply::StreamEnd { chunks: 1 }] = &replies[..] else {
        panic!("{replies:?} {err}");
    };
    let got: Vec<_> = protocol::manifest::ManifestReader::new(&m[..])
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.addr, e.hash))
        .collect();
    assert_eq!(got, vec![(0, id0)]);
    assert_eq!(leftovers(&s, "v.img"), vec![".resume"]);

    // Kept only where the entry has exactly that id: another id at 0 and
    // an address it never stored are refused, and their data is asked for.
    for (addr, hash, refused) in [(0, id1, true), (cs, id1, true), (0, id0, false)] {
        let mut input = agent_hello(Operation::Backup);
        input.extend(request_frame(&begin("S_000000000091")));
        input.extend(resume(addr, hash));
        input.extend(request_frame(&Request::Commit {
            chunks: 1,
            zero_chunks: 0,
        }));
        let (_, err, replies) = feed(&s, &input);
        if refused {
            assert_eq!(
                replies[..2],
                [Reply::Ok, Reply::Refused { addrs: vec![addr] }],
                "{err}"
            );
            // The cut stream after `Refused` is a cut too: the same session
            // is offered again (it holds more than the one just cut).
            assert_eq!(leftovers(&s, "v.img"), vec![".incoming", ".resume"]);
        } else {
            assert!(
                matches!(&replies[..], [Reply::Ok, Reply::Committed(i)] if i.chunks == 1 && i.stored_bytes == env0.len() as u64),
                "{replies:?} {err}"
            );
        }
    }
    // The commit linked the kept chunk and dropped the rest.
    assert!(leftovers(&s, "v.img").is_empty());
    let c0 = s
        .archive_vol("v.img")
        .join("S_000000000091")
        .join("c0000000")
        .join(format!("x{:016x}", 0));
    assert_eq!(fs::read(&c0).unwrap(), env0);
    let _ = env1;

    // A name that escapes the archive is refused by name.
    for bad in ["../evil", ".resume", "a/b"] {
        let mut input = agent_hello(Operation::Backup);
        input.extend(request_frame(&Request::Unfinished { volume: bad.into() }));
        input.extend(request_frame(&Request::Bye));
        let (_, _, replies) = feed(&s, &input);
        assert!(
            matches!(&replies[..], [Reply::Error(e)] if e.message.contains("invalid volume name")),
            "{bad}: {replies:?}"
        );
    }
}
