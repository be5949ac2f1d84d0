//! `open`/`close` (DESIGN §12) with the real binaries, a real FUSE mount,
//! real loop devices and a real ext4 filesystem:
//!
//! - every session of an ext4 image, opened, attached with `losetup -r`
//!   and mounted read-only, holds exactly the files it held when it was
//!   backed up; random reads at odd offsets equal a restore;
//! - a chunk the archive swapped, rolled back or lost fails its read with
//!   EIO (and only its read); once the archive is whole, it reads again;
//! - a stalled receiver fails reads after the timeout, and the next read
//!   reconnects;
//! - Ctrl-C unmounts; a 16 GiB sparse volume reads end to end in bounded
//!   memory; the receiver offers random-access reads on the restore entry
//!   point only, and checks every address.

use sparsebak_tests::{
    agent_hello, expect_success, feed, request_frame, require_root_and_loop, script, Rng, Setup,
};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CS: u64 = 64 * 1024;

fn require_fuse() {
    require_root_and_loop();
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test needs FUSE (/dev/fuse missing; modprobe fuse)"
    );
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    expect_success(o, &format!("{cmd} {}", args.join(" ")))
}

/// A session opened (in the background) at `mnt`; closed on drop.
struct Opened<'a> {
    s: &'a Setup,
    mnt: PathBuf,
    file: PathBuf,
    pid: u32,
}

impl<'a> Opened<'a> {
    fn new(s: &'a Setup, vol: &str, session: Option<&str>, extra: &[&str]) -> Opened<'a> {
        let mnt = s
            .dir
            .path()
            .join(format!("mnt-{vol}-{}", session.unwrap_or("newest")));
        fs::create_dir_all(&mnt).unwrap();
        let mut args = vec!["open", vol, mnt.to_str().unwrap()];
        if let Some(x) = session {
            args.extend(["--session", x]);
        }
        args.extend(extra);
        let doc = s.json(&args);
        assert_eq!(doc["ok"], true, "open failed: {doc}");
        let file = PathBuf::from(doc["file"].as_str().unwrap());
        assert_eq!(file, mnt.canonicalize().unwrap().join(vol));
        Opened {
            s,
            mnt,
            file,
            pid: doc["pid"].as_u64().unwrap() as u32,
        }
    }

    /// Peak memory of the serving process, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let st = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        st.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn close(&mut self) {
        if self.pid != 0 {
            let doc = self.s.json(&["close", self.mnt.to_str().unwrap()]);
            assert_eq!(doc["pid"].as_u64(), Some(self.pid as u64));
            assert!(
                !Path::new(&format!("/proc/{}", self.pid)).exists(),
                "the server outlived close"
            );
            assert!(!mounted(&self.mnt), "still mounted after close");
            self.pid = 0;
        }
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        if self.pid != 0 {
            let _ = self.s.run(&["close", "--lazy", self.mnt.to_str().unwrap()]);
        }
    }
}

fn mounted(p: &Path) -> bool {
    let p = p.canonicalize().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
}

/// A read-only loop device on `file`, and the filesystem on it mounted
/// read-only at `at`; both undone on drop.
struct RoMount {
    dev: String,
    at: PathBuf,
}

impl RoMount {
    fn new(file: &Path, at: &Path) -> RoMount {
        fs::create_dir_all(at).unwrap();
        let dev = run("losetup", &["-r", "-f", "--show", file.to_str().unwrap()])
            .trim()
            .to_string();
        run("mount", &["-o", "ro,noload", &dev, at.to_str().unwrap()]);
        RoMount {
            dev,
            at: at.to_path_buf(),
        }
    }
}

impl Drop for RoMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Every regular file under `dir` with its bytes, by relative path.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                if e.file_name() != "lost+found" {
                    stack.push(p);
                }
            } else if t.is_file() {
                out.push((
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_session_of_an_ext4_image_opens_as_it_was() {
    require_fuse();
    let s = Setup::new("open-ext4");
    s.init("64K");
    let img = s.vol("fs.img");
    fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    run("mkfs.ext4", &["-q", "-F", img.to_str().unwrap()]);
    let rw = s.dir.path().join("rw");
    fs::create_dir_all(&rw).unwrap();
    let mut rng = Rng::new(17);
    // Three sessions: files added, changed, removed, grown.
    let mut expected = Vec::new();
    let mut sessions = Vec::new();
    for round in 0..3u64 {
        run(
            "mount",
            &["-o", "loop", img.to_str().unwrap(), rw.to_str().unwrap()],
        );
        let d = rw.join("docs");
        fs::create_dir_all(&d).unwrap();
        match round {
            0 => {
                for i in 0..20 {
                    let n = 100 + rng.below(200_000) as usize;
                    fs::write(d.join(format!("f{i}.bin")), rng.bytes(n)).unwrap();
                }
                fs::write(rw.join("notes.txt"), "as of the first session\n").unwrap();
            }
            1 => {
                fs::write(rw.join("notes.txt"), "changed in the second session\n").unwrap();
                fs::remove_file(d.join("f3.bin")).unwrap();
                fs::write(d.join("big.bin"), rng.bytes(3 << 20)).unwrap();
            }
            _ => {
                let b = d.join("f5.bin");
                let mut v = fs::read(&b).unwrap();
                v.extend(rng.bytes(50_000));
                fs::write(&b, v).unwrap();
                fs::create_dir_all(rw.join("new/deep")).unwrap();
                fs::write(rw.join("new/deep/x.txt"), "third\n").unwrap();
            }
        }
        let t = tree(&rw);
        run("umount", &[rw.to_str().unwrap()]);
        expected.push(t);
        sessions.push(s.backup("fs.img"));
    }
    for (i, session) in sessions.iter().enumerate() {
        let mut o = Opened::new(&s, "fs.img", Some(session), &[]);
        // Read-only, owner only.
        let md = fs::metadata(&o.file).unwrap();
        assert_eq!(md.len(), 64 << 20);
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
            0o400
        );
        let w = fs::OpenOptions::new().write(true).open(&o.file);
        assert!(w.is_err(), "opened for writing");
        {
            let m = RoMount::new(&o.file, &s.dir.path().join(format!("ro{i}")));
            assert_eq!(
                tree(&m.at),
                expected[i],
                "session {session}: files differ from when it was backed up"
            );
        }
        o.close();
    }
    // Random reads at odd offsets and lengths equal a restore of the
    // same session (the middle one).
    let restored = s.dir.path().join("restored.img");
    s.ok(&[
        "restore",
        "fs.img",
        "--session",
        &sessions[1],
        "--save-to",
        restored.to_str().unwrap(),
    ]);
    let want = fs::read(&restored).unwrap();
    let mut o = Opened::new(&s, "fs.img", Some(&sessions[1]), &["--cache", "1"]);
    let f = fs::File::open(&o.file).unwrap();
    let mut rng = Rng::new(5);
    for _ in 0..300 {
        let off = rng.below(want.len() as u64 + 1000);
        let len = 1 + rng.below(300_000) as usize;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let end = (off as usize + len).min(want.len());
        let exp = if (off as usize) < want.len() {
            &want[off as usize..end]
        } else {
            &[][..]
        };
        assert_eq!(&buf[..got], exp, "read of {len} at {off}");
    }
    drop(f);
    o.close();
}

/// `v.img` of `chunks` chunks backed up, then chunks `changed..changed+4`
/// rewritten and backed up again: the two sessions, the volume as of the
/// second, and the generator for more.
fn two_sessions(
    tag: &str,
    chunks: u64,
    changed: u64,
    seed: u64,
) -> (Setup, [String; 2], Vec<u8>, Rng) {
    require_fuse();
    let s = Setup::new(tag);
    s.init("64K");
    let v = s.vol("v.img");
    let mut rng = Rng::new(seed);
    fs::write(&v, rng.bytes((chunks * CS) as usize)).unwrap();
    let s1 = s.backup("v.img");
    sparsebak_tests::write_at(&v, changed * CS, &rng.bytes(4 * CS as usize));
    let s2 = s.backup("v.img");
    let want = fs::read(&v).unwrap();
    (s, [s1, s2], want, rng)
}

#[test]
fn a_bad_chunk_fails_its_read_and_only_its_read() {
    let (s, [s1, s2], want, _) = two_sessions("open-hostile", 16, 4, 9);
    let file = |session: &str, idx: u64| chunk_file(&s, session, idx * CS);
    // Chunk 2 (session 1's) swapped for chunk 3; chunk 5 (session 2's)
    // rolled back to session 1's; chunk 6 (session 2's) lost.
    let keep: Vec<(PathBuf, Vec<u8>)> = [file(&s1, 2), file(&s2, 5), file(&s2, 6)]
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    fs::copy(file(&s1, 3), file(&s1, 2)).unwrap();
    fs::copy(file(&s1, 5), file(&s2, 5)).unwrap();
    fs::remove_file(file(&s2, 6)).unwrap();

    let log = s.dir.path().join("open.log");
    let mut o = Opened::new(&s, "v.img", None, &["--log", log.to_str().unwrap()]);
    let f = fs::File::open(&o.file).unwrap();
    let read_chunk = |idx: u64| -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; CS as usize];
        f.read_exact_at(&mut b, idx * CS).map(|_| b)
    };
    for idx in [0, 1, 3, 4, 7, 15] {
        assert_eq!(
            read_chunk(idx).unwrap(),
            want[(idx * CS) as usize..((idx + 1) * CS) as usize],
            "chunk {idx}"
        );
    }
    for idx in [2, 5, 6] {
        let e = read_chunk(idx).expect_err("a bad chunk was read");
        assert_eq!(e.raw_os_error(), Some(5), "chunk {idx}: {e}");
    }
    let text = fs::read_to_string(&log).unwrap();
    for expect in [
        "chunk at 0x20000 failed verification",
        "chunk at 0x50000 failed verification",
        "chunk at 0x60000 is missing",
    ] {
        assert!(text.contains(expect), "log lacks '{expect}': {text}");
    }
    // Good chunks still read after the failures; the bad ones are damage
    // for the next backup to heal.
    assert_eq!(read_chunk(1).unwrap(), want[CS as usize..2 * CS as usize]);
    assert!(s.meta_vol("v.img").join("damaged").exists());
    // The archive whole again: the same mount reads them.
    for (p, b) in &keep {
        fs::write(p, b).unwrap();
    }
    for idx in [2, 5, 6] {
        assert_eq!(
            read_chunk(idx).unwrap(),
            want[(idx * CS) as usize..((idx + 1) * CS) as usize],
            "chunk {idx} after repair"
        );
    }
    drop(f);
    o.close();
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("3 reads failed") || text.contains("reads failed"),
        "{text}"
    );
}

/// The archive's file of chunk `addr` in `session` of `v.img`.
fn chunk_file(s: &Setup, session: &str, addr: u64) -> PathBuf {
    s.archive_vol("v.img")
        .join(session)
        .join(format!("c{:07x}", addr >> 28))
        .join(format!("x{addr:016x}"))
}

#[test]
fn a_stalled_receiver_fails_reads_after_the_timeout_then_reconnects() {
    require_fuse();
    let mut s = Setup::new("open-stall");
    s.init("64K");
    let v = s.vol("v.img");
    fs::write(&v, Rng::new(3).bytes(64 * CS as usize)).unwrap();
    s.backup("v.img");
    let want = fs::read(&v).unwrap();
    // Each connection's receiver records its pid, then is the real one.
    let pids = s.dir.path().join("pids");
    // While it exists, new connections stall too: the whole qube hangs.
    let stall = s.dir.path().join("stall");
    let wrapper = s.dir.path().join("recording-receiver.sh");
    script(
        &wrapper,
        &format!(
            "echo $$ >> '{}'\n[ -e '{}' ] && sleep 30\nexec '{}' \"$@\"",
            pids.display(),
            stall.display(),
            s.receiver.display()
        ),
    );
    s.receiver = wrapper;
    let mut o = Opened::new(&s, "v.img", None, &["--timeout", "2"]);
    let f = fs::File::open(&o.file).unwrap();
    let mut b = vec![0u8; 4096];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b, want[..4096]);
    // Every receiver this mount started: readers share the archive, so a
    // read-ahead may have its own connection beside the first.
    fs::write(&stall, b"").unwrap();
    let first = fs::read_to_string(&pids).unwrap();
    let stopped: Vec<String> = first.lines().map(|l| l.trim().to_string()).collect();
    for pid in &stopped {
        run("kill", &["-STOP", pid]);
    }
    // Far from what was read (and read ahead): a fetch of its own.
    let at = 50 * CS + 123;
    let t0 = Instant::now();
    let e = f
        .read_exact_at(&mut b, at)
        .expect_err("read from a stalled receiver");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    assert!(secs < 15.0, "the failing read took {secs:.1} s");
    fs::remove_file(&stall).unwrap();
    for pid in &stopped {
        let _ = Command::new("kill").args(["-CONT", pid]).status();
    }
    // The next read makes a new connection.
    f.read_exact_at(&mut b, at).unwrap();
    assert_eq!(b, want[at as usize..at as usize + 4096]);
    assert!(fs::read_to_string(&pids).unwrap().lines().count() >= 2);
    drop(f);
    o.close();
}

#[test]
fn ctrl_c_unmounts_a_foreground_open() {
    require_fuse();
    let s = Setup::new("open-sigint");
    s.init("64K");
    fs::write(s.vol("v.img"), Rng::new(1).bytes(8 * CS as usize)).unwrap();
    s.backup("v.img");
    let mnt = s.dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let mut child = s
        .cmd(&["open", "--foreground", "v.img", mnt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.starts_with("opened v.img"), "{line}");
    assert!(mounted(&mnt));
    assert_eq!(
        fs::read(mnt.join("v.img")).unwrap(),
        fs::read(s.vol("v.img")).unwrap()
    );
    run("kill", &["-INT", &child.id().to_string()]);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("unmounted"), "{err}");
    assert!(!mounted(&mnt));
    // Nothing to close now; close says so.
    let e = s.fails(&["close", mnt.to_str().unwrap()]);
    assert!(e.contains("is not a session opened by sparsebak"), "{e}");
}

#[test]
fn a_16_gib_sparse_volume_reads_end_to_end_in_bounded_memory() {
    require_fuse();
    let s = Setup::new("open-sparse");
    s.init("256K");
    let v = s.vol("big.img");
    fs::File::create(&v).unwrap().set_len(16 << 30).unwrap();
    let mut rng = Rng::new(4);
    let places = [0u64, 5 << 30, (16 << 30) - (1 << 20)];
    for p in places {
        sparsebak_tests::write_at(&v, p, &rng.bytes(1 << 20));
    }
    s.backup("big.img");
    let mut o = Opened::new(&s, "big.img", None, &["--cache", "16"]);
    let f = fs::File::open(&o.file).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    let (mut data_bytes, mut zero_ok) = (0u64, true);
    let t0 = Instant::now();
    while off < 16 << 30 {
        f.read_exact_at(&mut buf, off).unwrap();
        for (i, c) in buf.chunks(1 << 20).enumerate() {
            let at = off + ((i as u64) << 20);
            if places.contains(&at) {
                let mut exp = vec![0u8; 1 << 20];
                fs::File::open(&v)
                    .unwrap()
                    .read_exact_at(&mut exp, at)
                    .unwrap();
                assert_eq!(c, &exp[..], "data at {at}");
                data_bytes += c.len() as u64;
            } else if c.iter().any(|&b| b != 0) {
                zero_ok = false;
            }
        }
        off += buf.len() as u64;
    }
    assert!(zero_ok, "a hole read as non-zero");
    assert_eq!(data_bytes, 3 << 20);
    let rss = o.peak_rss_kib();
    eprintln!(
        "16 GiB sparse volume read in {:.1} s; server peak RSS {} MiB",
        t0.elapsed().as_secs_f64(),
        rss >> 10
    );
    assert!(rss < 200 << 10, "server peak RSS {} MiB", rss >> 10);
    drop(f);
    o.close();
}

#[test]
fn receiver_serves_random_reads_on_the_restore_entry_point_only() {
    use protocol::message::{Operation, Reply, Request, MAX_READ_CHUNKS};
    let s = Setup::new("open-proto");
    s.init("64K");
    fs::write(s.vol("v.img"), Rng::new(2).bytes(4 * CS as usize)).unwrap();
    let session = s.backup("v.img");
    let rid = s.volume_id("v.img");
    let req = |addrs: Vec<u64>, session: &str| {
        request_frame(&Request::ReadChunks {
            volume: rid.clone(),
            session: session.to_string(),
            addrs,
        })
    };
    // Refused on the backup and admin entry points: the connection ends.
    for op in [Operation::Backup, Operation::Admin] {
        let (ok, _, replies) = feed(&s, &[agent_hello(op), req(vec![0], &session)].concat());
        assert!(!ok, "{op:?}");
        assert!(
            matches!(&replies[..], [Reply::Error(e)] if e.message.contains("a read-chunks request on a")),
            "{op:?}: {replies:?}"
        );
    }
    // On restore: bad requests are refused and the connection goes on;
    // a good one gets its chunks, then the end.
    let input = [
        agent_hello(Operation::Restore),
        req(vec![1], &session),
        req(vec![CS, 0], &session),
        req(
            (0..=MAX_READ_CHUNKS as u64).map(|i| i * CS).collect(),
            &session,
        ),
        req(vec![4 * CS], &session),
        req(vec![0], "../../etc"),
        req(vec![0], "S_999999999999"),
        req(vec![0, 3 * CS], &session),
        request_frame(&Request::Bye),
    ]
    .concat();
    let (ok, _, replies) = feed(&s, &input);
    assert!(ok, "{replies:?}");
    let errors: Vec<String> = replies
        .iter()
        .filter_map(|r| match r {
            Reply::Error(e) => Some(format!("{:?}: {}", e.code, e.message)),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 6, "{errors:?}");
    for (e, expect) in errors.iter().zip([
        "BadRequest: chunk address 0x1 ",
        "BadRequest: chunk addresses do not ascend",
        "BadRequest: a read asks for 65 chunks",
        "BadRequest: chunk address 0x40000 ",
        "BadRequest",
        "NoSuchSession",
    ]) {
        assert!(e.starts_with(expect), "'{e}' is not '{expect}…'");
    }
    assert!(
        matches!(replies.last(), Some(Reply::StreamEnd { chunks: 2 })),
        "{replies:?}"
    );
}

/// Between reads the archive is released: a backup and a prune run while
/// a session stays open, and the prune, which moves the opened view's
/// chunks into the next session, is followed by the next reads.
#[test]
fn backups_and_prunes_run_while_a_session_is_open() {
    let (s, [s1, s2], want, mut rng) = two_sessions("open-idle", 32, 8, 21);
    let v = s.vol("v.img");
    sparsebak_tests::write_at(&v, 20 * CS, &rng.bytes(4 * CS as usize));
    s.backup("v.img");
    // No cache: every read below fetches from the archive.
    let mut o = Opened::new(&s, "v.img", Some(&s2), &["--idle", "1", "--cache", "0"]);
    assert_eq!(fs::read(&o.file).unwrap(), want);
    std::thread::sleep(Duration::from_millis(2500));
    // Both need the archive: they wait for no one.
    let t0 = Instant::now();
    sparsebak_tests::write_at(&v, 0, &rng.bytes(CS as usize));
    s.backup("v.img");
    let pruned = s.ok(&["prune", "v.img", "--session", &s1]);
    assert!(t0.elapsed() < Duration::from_secs(30), "{pruned}");
    assert!(!s.sessions("v.img").contains(&s1));
    // Session 1's chunks (most of this view) now live in session 2.
    assert_eq!(fs::read(&o.file).unwrap(), want, "after the prune");
    o.close();
}

/// `--attach QUBE`: the opened file becomes a read-only loop device
/// attached read-only to the qube (started first), through the Qubes
/// tools' stand-ins; close detaches and removes it before unmounting. A
/// name that is not a qube never reaches a tool, and a failed attach
/// leaves no mount and no loop device behind.
#[test]
fn attach_gives_a_qube_the_volume_read_only_and_close_takes_it_back() {
    use sparsebak_tests::fakequbes::{attached_blocks, make_qube, running};
    require_fuse();
    let s = Setup::new("open-attach");
    s.init("64K");
    fs::write(s.vol("v.img"), Rng::new(8).bytes(16 * CS as usize)).unwrap();
    s.backup("v.img");
    let qubes = s.dir.path().join("qubes");
    let disp = make_qube(&qubes, "disp-browse", false);
    let mnt = s.dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let path = format!(
        "{}:{}",
        sparsebak_tests::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sb = |args: &[&str]| {
        let mut c = s.cmd(args);
        c.arg("--json")
            .env("PATH", &path)
            .env("SBK_FAKE_QUBES", &qubes);
        let o = c.output().unwrap();
        (
            o.status.success(),
            sparsebak_tests::json_doc(&o.stdout),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let loops_on = |needle: &str| -> Vec<String> {
        run("losetup", &["-a"])
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    };
    let m = mnt.to_str().unwrap();

    // Refused before anything happens: not a qube name, or no such qube.
    let (ok, doc, _) = sb(&["open", "v.img", m, "--attach=-x"]);
    assert!(
        !ok && doc["error"]
            .as_str()
            .unwrap()
            .contains("is not a qube name"),
        "{doc}"
    );
    let (ok, doc, _) = sb(&["open", "v.img", m, "--attach", "nosuch"]);
    assert!(
        !ok && doc["error"].as_str().unwrap().contains("no such domain"),
        "{doc}"
    );
    assert!(!mounted(&mnt), "a failed attach left the mount");
    assert!(loops_on(m).is_empty(), "a failed attach left a loop device");
    assert!(!running(&disp));

    let (ok, doc, err) = sb(&["open", "v.img", m, "--attach", "disp-browse"]);
    assert!(ok, "{doc} {err}");
    let dev = doc["attached"]["device"].as_str().unwrap().to_string();
    let name = dev.strip_prefix("/dev/").unwrap();
    assert!(running(&disp), "the qube was not started");
    assert_eq!(attached_blocks(&disp), vec![(format!("dom0:{name}"), true)]);
    assert_eq!(run("blockdev", &["--getro", &dev]).trim(), "1");
    let file = doc["file"].as_str().unwrap();
    assert!(loops_on(file)
        .iter()
        .any(|l| l.starts_with(&format!("{dev}:"))));
    // What the qube reads through the device is the volume.
    assert_eq!(fs::read(&dev).unwrap(), fs::read(s.vol("v.img")).unwrap());

    let pid = doc["pid"].as_u64().unwrap();
    let (ok, doc, err) = sb(&["close", m]);
    assert!(ok, "{doc} {err}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        attached_blocks(&disp).is_empty(),
        "still attached after close"
    );
    assert!(loops_on(file).is_empty(), "loop device left after close");
    assert!(!mounted(&mnt));
}

/// A server killed outright leaves a mount nobody serves: reads of it
/// fail (never hang), and close removes it.
#[test]
fn close_removes_the_mount_of_a_killed_server() {
    require_fuse();
    let s = Setup::new("open-killed");
    s.init("64K");
    fs::write(s.vol("v.img"), Rng::new(6).bytes(4 * CS as usize)).unwrap();
    s.backup("v.img");
    let mut o = Opened::new(&s, "v.img", None, &[]);
    run("kill", &["-KILL", &o.pid.to_string()]);
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{}", o.pid)).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(fs::read(&o.file).is_err(), "a dead mount was read");
    let doc = s.json(&["close", o.mnt.to_str().unwrap()]);
    assert_eq!(doc["ok"], true, "{doc}");
    assert!(
        doc["warnings"][0].as_str().unwrap().contains("is gone"),
        "{doc}"
    );
    assert!(!mounted(&o.mnt));
    o.pid = 0;
    // The mount point can serve again.
    let mut again = Opened::new(&s, "v.img", None, &[]);
    assert_eq!(
        fs::read(&again.file).unwrap(),
        fs::read(s.vol("v.img")).unwrap()
    );
    again.close();
}

/// The hostile-peer harness (a receiver that sends prepared bytes and
/// reads nothing): mid-read, a chunk of another address, another chunk's
/// bytes under this address, and a stale chunk each fail their read with
/// EIO; the honest answers between and after them, on the same
/// connection, read exactly.
#[test]
fn a_lying_receiver_fails_single_reads_and_the_mount_goes_on() {
    use protocol::message::{ArchiveId, ArchiveParams, Compression, Reply};
    let (mut s, [s1, s2], want, _) = two_sessions("open-liar", 16, 12, 13);
    let params = ArchiveParams {
        id: ArchiveId::from_hex(&s.archive_id()).unwrap(),
        chunk_size: CS as u32,
        compression: Compression::Zstd { level: 3 },
    };
    let env = |session: &str, i: u64| s.stored_chunk("v.img", session, i, CS).0;
    // Chunk `i` claimed to be `env`, then the end of the answer.
    let answer = |i: u64, env: Vec<u8>| {
        let mut w = protocol::stream::FrameWriter::new(Vec::new());
        w.reply(&Reply::StreamEnd { chunks: 1 }).unwrap();
        [
            sparsebak_tests::chunk_frame(i * CS, CS as u32, &env, [0; 32]),
            std::mem::take(w.get_mut()),
        ]
        .concat()
    };
    // Reads three chunks apart or more from the last (none sequential: no
    // read-ahead),
    // each with the answer prepared for it; true: honest.
    let reads: Vec<(u64, Vec<u8>, bool)> = vec![
        (3, answer(4, env(&s1, 4)), false),
        (7, answer(7, env(&s1, 8)), false),
        (11, answer(11, env(&s1, 11)), true),
        (14, answer(14, env(&s1, 14)), false),
        (0, answer(0, env(&s1, 0)), true),
    ];
    let mut stream = s.fake_hello(params);
    for (_, a, _) in &reads {
        stream.extend_from_slice(a);
    }
    let file = s.dir.path().join("lies.bin");
    fs::write(&file, &stream).unwrap();
    let liar = s.dir.path().join("lying-receiver.sh");
    script(&liar, &format!("cat '{}'\nexec sleep 600", file.display()));
    s.receiver = liar;
    let mut o = Opened::new(&s, "v.img", Some(&s2), &["--cache", "0", "--idle", "0"]);
    let f = fs::File::open(&o.file).unwrap();
    for (i, _, honest) in &reads {
        let mut b = vec![0u8; 4096];
        let r = f.read_exact_at(&mut b, i * CS);
        if *honest {
            r.unwrap_or_else(|e| {
                panic!(
                    "honest chunk {i}: {e}\n{}",
                    fs::read_to_string(s.meta.join("open.log")).unwrap_or_default()
                )
            });
            assert_eq!(
                b,
                want[(i * CS) as usize..(i * CS) as usize + 4096],
                "chunk {i}"
            );
        } else {
            let e = r.expect_err("a lie was read");
            assert_eq!(e.raw_os_error(), Some(5), "chunk {i}: {e}");
        }
    }
    drop(f);
    o.close();
}
