//! What a hostile peer can make the other side spend is bounded: memory,
//! time, and listing size. Each test runs the real victim process against
//! a hostile peer (`fake-receiver`, or raw frames into the real receiver),
//! measures its peak RSS (VmHWM from /proc/PID/status) or wall time, and
//! fails above a stated bound. Before the bounds existed, each of these
//! ran until the test's own limit killed it.

use protocol::frame::{encode_frame, FrameKind};
use protocol::message::{
    encode_reply, ArchiveId, ArchiveParams, Compression, Hello, HelloBody, Operation, Reply,
    Request, SessionInfo,
};
use protocol::stream::{FrameReader, FrameWriter, Incoming};
use sparsebak_tests::{
    agent_hello, bin_dir, chunk_frame, exit_within, receiver_bin, receiver_fed, request_frame,
    script, tree_digest, Rng, Setup,
};
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CS: usize = 65536;

/// A process's exit, stderr, peak RSS (KiB) and wall time. Killed (and
/// reported as such) if it runs longer than `limit`.
struct Measured {
    ok: bool,
    stderr: String,
    peak_kib: u64,
    secs: f64,
    killed: bool,
}

fn peak_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn measure(cmd: Command, limit: Duration) -> Measured {
    measure_fed(cmd, Stdio::null(), limit, Duration::from_millis(20))
}

/// [`measure`] with `stdin`, sampling every `every`.
fn measure_fed(mut cmd: Command, stdin: Stdio, limit: Duration, every: Duration) -> Measured {
    let t0 = Instant::now();
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let (mut peak, mut killed) = (0, false);
    let status = loop {
        if let Some(p) = peak_kib(child.id()) {
            peak = peak.max(p);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > limit {
            killed = true;
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(every);
    };
    Measured {
        ok: status.success(),
        stderr: reader.join().unwrap(),
        peak_kib: peak,
        secs: t0.elapsed().as_secs_f64(),
        killed,
    }
}

fn reply(r: &Reply) -> Vec<u8> {
    encode_frame(FrameKind::Reply, &encode_reply(r)).unwrap()
}

/// An archive with one session of a 4-chunk volume, and what a fake
/// receiver needs to pass for it.
struct World {
    s: Setup,
    params: ArchiveParams,
    session: SessionInfo,
}

fn world(tag: &str) -> World {
    let s = Setup::new(tag);
    s.init("64K");
    let data = Rng::new(3).bytes(4 * CS);
    fs::write(s.vol("v.img"), &data).unwrap();
    let name = s.backup("v.img");
    let params = ArchiveParams {
        id: ArchiveId::from_hex(&s.archive_id()).unwrap(),
        chunk_size: CS as u32,
        compression: Compression::Zstd { level: 3 },
    };
    let session = SessionInfo {
        name,
        time: 0,
        volume_size: 4 * CS as u64,
        chunks: 4,
        zero_chunks: 0,
        stored_bytes: 0,
        ref_chunks: 0,
        ref_bytes: 0,
        prev: None,
    };
    World { s, params, session }
}

impl World {
    /// The hello and the sealed root, as the archive's receiver sends them.
    fn hello(&self) -> Vec<u8> {
        self.s.fake_hello(self.params)
    }

    /// The honest frame of chunk `i`, as stored in the archive.
    fn chunk(&self, i: usize) -> Vec<u8> {
        let (env, id) = self
            .s
            .stored_chunk("v.img", &self.session.name, i as u64, CS as u64);
        chunk_frame((i * CS) as u64, CS as u32, &env, id)
    }

    /// Runs the agent with `args` against `fake-receiver MODE PREFIX REST…`.
    fn against_fake(&self, mode: &str, prefix: &[u8], rest: &[&str], args: &[&str]) -> Measured {
        let dir = self.s.dir.path();
        let p = dir.join(format!("{mode}-prefix.bin"));
        fs::write(&p, prefix).unwrap();
        let fake = dir.join(format!("{mode}-receiver.sh"));
        let quoted: Vec<String> = rest.iter().map(|a| format!("'{a}'")).collect();
        script(
            &fake,
            &format!(
                "exec '{}' {mode} '{}' {}",
                bin_dir().join("fake-receiver").display(),
                p.display(),
                quoted.join(" ")
            ),
        );
        let mut c = self.s.cmd(args);
        c.arg("--remote-receiver").arg(&fake);
        measure(c, Duration::from_secs(60))
    }
}

/// The bound on dom0's memory while a receiver streams an endless manifest:
/// the agent's own working set (a few MiB) plus a few 1 MiB parts.
const AGENT_RSS_BOUND_KIB: u64 = 64 << 10;

#[test]
fn arch_check_memory_is_bounded_against_an_endless_manifest() {
    let w = world("bound-manifest");
    let prefix = [
        w.hello(),
        reply(&Reply::CheckReport {
            checked: 0,
            findings: vec![],
            more: 0,
        }),
        reply(&Reply::Data(w.s.root_blob())),
        reply(&Reply::StreamEnd { chunks: 1 }),
        w.s.key_replies(),
        reply(&Reply::Volumes {
            names: vec![w.s.volume_id("v.img")],
            more: false,
        }),
        reply(&Reply::Sessions {
            sessions: vec![w.session.clone()],
            more: false,
        }),
    ]
    .concat();
    let m = w.against_fake(
        "endless-manifest",
        &prefix,
        &[&CS.to_string()],
        &["arch-check"],
    );
    assert!(!m.killed, "arch-check ran {:.1} s: {}", m.secs, m.stderr);
    assert!(!m.ok);
    assert!(
        m.stderr.contains("bytes of a manifest dom0 holds at"),
        "{}",
        m.stderr
    );
    assert!(
        m.peak_kib < AGENT_RSS_BOUND_KIB,
        "peak RSS {} KiB, bound {AGENT_RSS_BOUND_KIB} KiB",
        m.peak_kib
    );
    eprintln!(
        "arch-check vs an endless manifest: refused in {:.2} s, peak RSS {} KiB",
        m.secs, m.peak_kib
    );
}

/// A root of 64 MiB (the protocol's cap), 1 MiB parts, as one file of
/// frames: what a hostile receiver answers `GetBlob(Root)` with.
fn huge_root(w: &World) -> std::path::PathBuf {
    let p = w.s.dir.path().join("huge-root.bin");
    let mut f = std::io::BufWriter::new(fs::File::create(&p).unwrap());
    let part = vec![0x5au8; protocol::message::DATA_PART];
    for _ in 0..64 {
        f.write_all(&reply(&Reply::Data(part.clone()))).unwrap();
    }
    f.write_all(&reply(&Reply::StreamEnd { chunks: 64 }))
        .unwrap();
    f.flush().unwrap();
    p
}

fn bare_hello(w: &World) -> Vec<u8> {
    let mut fw = FrameWriter::new(Vec::new());
    fw.hello(&Hello::new(HelloBody::Receiver {
        archive: Some(w.params),
    }))
    .unwrap();
    std::mem::take(fw.get_mut())
}

#[test]
fn a_huge_root_is_refused_at_what_dom0_last_wrote_and_held_once_by_a_fresh_dom0() {
    let w = world("bound-root");
    let huge = huge_root(&w);
    let honest = w.s.root_blob().len();
    // A dom0 with records: refused past its last root plus one part.
    let m = w.against_fake(
        "paced",
        &bare_hello(&w),
        &[huge.to_str().unwrap(), "0"],
        &["list"],
    );
    assert!(!m.killed && !m.ok, "ran {:.1} s: {}", m.secs, m.stderr);
    assert!(
        m.stderr
            .contains(&format!("bytes of a root dom0 holds at {honest} bytes")),
        "{}",
        m.stderr
    );
    assert!(
        m.peak_kib < 24 << 10,
        "peak RSS {} KiB, bound 24 MiB",
        m.peak_kib
    );
    eprintln!(
        "a 64 MiB root against dom0's records: refused, peak RSS {} KiB",
        m.peak_kib
    );
    // A fresh dom0 (arch-import with the key file, no KDF) takes up to
    // the protocol's cap, once: 64 MiB and its own few MiB, not twice.
    let key = w.s.dir.path().join("exported.key");
    w.s.ok(&["key", "export", key.to_str().unwrap()]);
    let fresh = Setup::new("bound-root-fresh");
    let mut prefix = bare_hello(&w);
    prefix.extend(w.s.key_replies());
    let dir = fresh.dir.path();
    let p = dir.join("root-prefix.bin");
    fs::write(&p, &prefix).unwrap();
    let fake = dir.join("root-receiver.sh");
    script(
        &fake,
        &format!(
            "exec '{}' paced '{}' '{}' 0",
            bin_dir().join("fake-receiver").display(),
            p.display(),
            huge.display()
        ),
    );
    let mut c = fresh.cmd(&["arch-import", "--key-file", key.to_str().unwrap()]);
    c.arg("--remote-receiver").arg(&fake);
    let m = measure(c, Duration::from_secs(60));
    assert!(!m.killed && !m.ok, "ran {:.1} s: {}", m.secs, m.stderr);
    assert!(m.stderr.contains("does not authenticate"), "{}", m.stderr);
    assert!(
        m.peak_kib < 80 << 10,
        "peak RSS {} KiB, bound 80 MiB",
        m.peak_kib
    );
    eprintln!(
        "a 64 MiB root against a fresh dom0: refused, peak RSS {} KiB",
        m.peak_kib
    );
}

#[test]
fn a_trickling_receiver_cannot_hold_a_restore_or_verify() {
    let w = world("bound-trickle");
    let dir = w.s.dir.path();
    let frame = dir.join("chunk0.bin");
    fs::write(&frame, w.chunk(0)).unwrap();
    let target = dir.join("out.img");
    let restore = [
        "restore",
        "v.img",
        "--save-to",
        target.to_str().unwrap(),
        "--frame-timeout",
        "2",
        "--timeout",
        "5",
    ];
    let verify = ["verify", "v.img", "--frame-timeout", "2", "--timeout", "5"];
    for args in [&restore[..], &verify[..]] {
        // One byte every 100 ms: never silent for the 5 s stall limit.
        let m = w.against_fake(
            "trickle",
            &w.hello(),
            &[frame.to_str().unwrap(), "100"],
            args,
        );
        assert!(!m.killed && !m.ok, "{args:?}: ran {:.1} s", m.secs);
        assert!(
            m.stderr.contains("--frame-timeout"),
            "{args:?}: {}",
            m.stderr
        );
        assert!(m.secs < 10.0, "{args:?}: took {:.1} s, bound 10 s", m.secs);
        assert!(!target.exists(), "restore target written");
        eprintln!(
            "{}: a trickled frame given up after {:.2} s",
            args[0], m.secs
        );
    }
}

#[test]
fn max_time_bounds_a_whole_run() {
    let w = world("bound-maxtime");
    let dir = w.s.dir.path();
    // Every frame arrives whole and on time, but 1.5 s apart: 4 chunks and
    // the end would take 7.5 s.
    let frames = dir.join("frames.bin");
    let all: Vec<Vec<u8>> = (0..4)
        .map(|i| w.chunk(i))
        .chain([reply(&Reply::StreamEnd { chunks: 4 })])
        .collect();
    fs::write(&frames, all.concat()).unwrap();
    let m = w.against_fake(
        "paced",
        &w.hello(),
        &[frames.to_str().unwrap(), "1500"],
        &["verify", "v.img", "--max-time", "3", "--timeout", "5"],
    );
    assert!(!m.killed && !m.ok, "ran {:.1} s: {}", m.secs, m.stderr);
    assert!(
        m.stderr.contains("time limit of 3 s ran out (--max-time)"),
        "{}",
        m.stderr
    );
    assert!(m.secs < 5.0, "took {:.1} s, bound 5 s", m.secs);
    // The same pace with no limit is an honest, slow receiver: it passes.
    let m = w.against_fake(
        "paced",
        &w.hello(),
        &[frames.to_str().unwrap(), "300"],
        &["verify", "v.img", "--timeout", "5"],
    );
    assert!(m.ok, "{}", m.stderr);
}

#[test]
fn a_trickling_agent_cannot_hold_the_receiver_or_its_lock() {
    let w = world("bound-recv");
    let s = &w.s;
    let before = tree_digest(&s.arch);
    let mut input = agent_hello(Operation::Backup);
    input.extend(request_frame(&Request::BeginSession {
        volume: w.s.volume_id("v.img"),
        session: "S_000000000099".into(),
        prev: Some(w.session.name.clone()),
        volume_size: 4 * CS as u64,
        time: 0,
    }));
    // The header of the largest chunk frame this archive takes (a chunk
    // and its header), then its bytes one by one.
    input.extend_from_slice(&((CS + protocol::chunk::HEADER_LEN) as u32).to_le_bytes());
    input.push(FrameKind::Chunk as u8);
    let (child, mut stdin) = receiver_fed(
        &s.arch,
        &["--frame-timeout", "2", "--idle-timeout", "60"],
        &input,
    );
    let trickler = std::thread::spawn(move || {
        for _ in 0..600 {
            if stdin.write_all(&[0x55]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (status, err, secs) = exit_within(child, Duration::from_secs(15));
    trickler.join().unwrap();
    assert!(
        !status.success() && err.contains("one frame from the agent took longer than 2 s"),
        "{err}"
    );
    assert!(secs < 6.0, "took {secs:.1} s, bound 6 s");
    assert_eq!(
        tree_digest(&s.arch),
        before,
        "the abandoned session left something"
    );
    // The lock went with it: the next connection is not Busy.
    s.ok(&["backup", "v.img"]);
}

#[test]
fn an_agent_that_stops_reading_cannot_hold_the_receiver_or_its_lock() {
    let w = world("bound-noread");
    let s = &w.s;
    // A backup connection (the writer lock), then far more answers than a
    // pipe holds, which the agent never reads.
    let mut input = agent_hello(Operation::Backup);
    for _ in 0..4000 {
        input.extend(request_frame(&Request::GetBlob {
            blob: protocol::message::Blob::Root,
        }));
    }
    let mut child = Command::new(receiver_bin())
        .args([
            "serve",
            "--frame-timeout",
            "2",
            "--idle-timeout",
            "60",
            "--archive",
        ])
        .arg(&s.arch)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Held open and never read.
    let _stdout = child.stdout.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
        // The agent stays connected: its end of stdin stays open.
        std::thread::sleep(Duration::from_secs(20));
    });
    let (status, err, secs) = exit_within(child, Duration::from_secs(15));
    assert!(
        !status.success() && err.contains("the agent read nothing for 2 s"),
        "{err}"
    );
    assert!(secs < 6.0, "took {secs:.1} s, bound 6 s");
    // The lock went with it: the next connection is not Busy.
    s.ok(&["backup", "v.img"]);
    drop(feeder);
}

/// The real receiver fed `input` on stdin (its stdout discarded): its
/// exit, stderr, peak RSS and time, killed past `limit`.
fn measure_receiver(arch: &std::path::Path, input: &[u8], limit: Duration) -> Measured {
    let f = arch.parent().unwrap().join("hostile-input.bin");
    fs::write(&f, input).unwrap();
    let mut c = Command::new(receiver_bin());
    c.args(["serve", "--archive"]).arg(arch);
    let stdin = Stdio::from(fs::File::open(&f).unwrap());
    measure_fed(c, stdin, limit, Duration::from_millis(5))
}

/// The receiver's memory and log against a hostile agent: reads of
/// missing chunks by the ten thousand, a root upload at its cap, and a
/// session of large chunk frames. Each is bounded; the numbers are the
/// issue's record of them.
#[test]
fn the_receiver_stays_small_against_a_hostile_agent() {
    const RECEIVER_RSS_BOUND_KIB: u64 = 48 << 10;
    let w = world("bound-receiver-rss");
    let s = &w.s;
    // 1. 10,000 ReadChunks of chunks the session lacks.
    let sess = w.session.name.clone();
    let dir = s.archive_vol("v.img").join(&sess);
    for f in sparsebak_tests::files_under(&dir) {
        if f.file_name().unwrap().to_string_lossy().starts_with('x') {
            fs::remove_file(dir.join(f)).unwrap();
        }
    }
    let mut input = agent_hello(Operation::Restore);
    let ask = request_frame(&Request::ReadChunks {
        volume: s.volume_id("v.img"),
        session: sess,
        addrs: (0..4).map(|i| (i * CS) as u64).collect(),
    });
    for _ in 0..10_000 {
        input.extend_from_slice(&ask);
    }
    let m = measure_receiver(&s.arch, &input, Duration::from_secs(60));
    assert!(!m.killed && m.ok, "{}", m.stderr);
    assert!(m.stderr.len() < 16 << 10, "logged {} bytes", m.stderr.len());
    assert!(
        m.peak_kib < RECEIVER_RSS_BOUND_KIB,
        "peak RSS {} KiB",
        m.peak_kib
    );
    eprintln!(
        "receiver, 40,000 missing chunks asked for: {} bytes of log, peak RSS {} KiB, {:.2} s",
        m.stderr.len(),
        m.peak_kib,
        m.secs
    );
    // 2. A root upload of 64 MiB in 1 MiB parts, then one part more.
    let root_before = s.root_blob();
    let mut input = agent_hello(Operation::Admin);
    let part = vec![0x5au8; protocol::message::DATA_PART];
    for _ in 0..65 {
        input.extend(request_frame(&Request::PutBlob {
            blob: protocol::message::Blob::Root,
            data: part.clone(),
            last: false,
        }));
    }
    let m = measure_receiver(&s.arch, &input, Duration::from_secs(60));
    assert!(!m.killed && !m.ok, "{}", m.stderr);
    assert!(m.stderr.contains("would exceed"), "{}", m.stderr);
    assert!(
        m.peak_kib < RECEIVER_RSS_BOUND_KIB,
        "peak RSS {} KiB",
        m.peak_kib
    );
    // The archive's root is the one it had.
    assert_eq!(s.root_blob(), root_before);
    eprintln!(
        "receiver, a root upload past its cap: refused, peak RSS {} KiB",
        m.peak_kib
    );
    // 3. A session of 2,000 chunk frames (well-formed clear envelopes of
    // 64 KiB), then no commit.
    let mut input = agent_hello(Operation::Backup);
    input.extend(request_frame(&Request::BeginSession {
        volume: s.volume_id("v.img"),
        session: "S_000000000099".into(),
        prev: Some(w.session.name.clone()),
        volume_size: 2000 * CS as u64,
        time: 0,
    }));
    let mut env = vec![sealed::envelope::KIND_CLEAR, 0];
    env.extend_from_slice(&vec![1u8; CS]);
    let crc = crc32fast::hash(&env);
    env.extend_from_slice(&crc.to_le_bytes());
    for i in 0..2000u64 {
        input.extend(chunk_frame(i * CS as u64, CS as u32, &env, [0; 32]));
    }
    let m = measure_receiver(&s.arch, &input, Duration::from_secs(120));
    // Every frame taken (the stream ends without a commit: dropped).
    assert!(!m.killed && !m.stderr.contains("refused"), "{}", m.stderr);
    assert!(
        m.peak_kib < RECEIVER_RSS_BOUND_KIB,
        "peak RSS {} KiB",
        m.peak_kib
    );
    eprintln!(
        "receiver, a 125 MiB session never committed: peak RSS {} KiB, {:.2} s: {}",
        m.peak_kib,
        m.secs,
        m.stderr.trim()
    );
}

/// Writes `n` empty sessions of `volume` (all zero, `size` bytes) straight
/// into both dom0's metadata and the archive, chained after `prev`, with
/// names that sort before `before`... in the year 2025.
fn many_sessions(s: &Setup, volume: &str, n: usize, size: u64) -> Vec<String> {
    let manifest = {
        let w = protocol::manifest::ManifestWriter::new(Vec::new(), CS as u32).unwrap();
        w.finish().unwrap()
    };
    let ours = s.meta_vol(volume);
    let theirs = s.archive_vol(volume);
    let mac = {
        let mut h = s.keys().manifest_mac();
        h.update(&manifest);
        format!("{}\n", sealed::keys::hex(h.finalize().as_bytes()))
    };
    let mut names = Vec::with_capacity(n);
    let mut prev: Option<String> = None;
    for i in 0..n {
        // One a minute from 2025-01-01: valid, ascending, distinct.
        let name = protocol::names::session_name(prev.as_deref());
        let info = SessionInfo {
            name: name.clone(),
            time: 1_735_689_600 + 60 * i as u64,
            volume_size: size,
            chunks: 0,
            zero_chunks: 0,
            stored_bytes: 0,
            ref_chunks: 0,
            ref_bytes: 0,
            prev: prev.clone(),
        };
        for (root, info_file, bytes) in [
            (
                &ours,
                "info.toml",
                toml::to_string(&info).unwrap().into_bytes(),
            ),
            (
                &theirs,
                receiver::archive::session::INFO_FILE,
                protocol::codec::encode_sealed(&receiver::archive::session::SESSION_MAGIC, &info),
            ),
        ] {
            let d = root.join(&name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(info_file), bytes).unwrap();
            fs::write(d.join("manifest"), &manifest).unwrap();
        }
        fs::write(ours.join(&name).join("mac"), &mac).unwrap();
        prev = Some(name.clone());
        names.push(name);
    }
    names
}

/// One BeginSession + Commit of an empty session, straight to the real
/// receiver: the time from sending BeginSession to reading Committed.
fn commit_cost(s: &Setup, volume: &str, prev: Option<&str>, session: &str, size: u64) -> f64 {
    let mut child = Command::new(receiver_bin())
        .args(["serve", "--archive"])
        .arg(&s.arch)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut w = FrameWriter::new(child.stdin.take().unwrap());
    let mut r = FrameReader::new(std::io::BufReader::new(child.stdout.take().unwrap()));
    w.hello(&Hello::new(HelloBody::Agent {
        archive_id: None,
        op: Operation::Backup,
    }))
    .unwrap();
    w.flush().unwrap();
    r.read_hello().unwrap();
    let t0 = Instant::now();
    w.request(&Request::BeginSession {
        volume: volume.into(),
        session: session.into(),
        prev: prev.map(str::to_string),
        volume_size: size,
        time: 0,
    })
    .unwrap();
    w.flush().unwrap();
    assert!(matches!(r.read_reply().unwrap(), Reply::Ok));
    w.request(&Request::Commit {
        chunks: 0,
        zero_chunks: 0,
    })
    .unwrap();
    w.flush().unwrap();
    match r.next_frame().unwrap() {
        Incoming::Reply(Reply::Committed(_)) => {}
        other => panic!("commit: {}", other.name()),
    }
    let secs = t0.elapsed().as_secs_f64();
    w.request(&Request::Bye).unwrap();
    w.flush().unwrap();
    drop(w);
    assert!(child.wait().unwrap().success());
    secs
}

#[test]
fn fifty_thousand_sessions_list_prune_and_commit_in_flat_time() {
    const N: usize = 50_000;
    let s = Setup::new("bound-50k");
    s.init("64K");
    let size = 4 * CS as u64;
    fs::write(s.vol("v.img"), vec![0u8; size as usize]).unwrap();
    // A first real session makes the volume on both sides; the generated
    // ones come before it in time, so move it last by name: drop it.
    s.backup("v.img");
    let real = s.sessions("v.img");
    for root in [s.meta_vol("v.img"), s.archive_vol("v.img")] {
        fs::remove_dir_all(root.join(&real[0])).unwrap();
    }
    let names = many_sessions(&s, "v.img", N, size);

    // dom0 lists them all, and the receiver's paged listing agrees with
    // dom0's (prune refuses to go on otherwise): prune the oldest.
    let t0 = Instant::now();
    let out = s.ok(&["prune", "v.img", "--session", &names[0]]);
    let prune_secs = t0.elapsed().as_secs_f64();
    assert!(out.contains("1 session pruned"), "{out}");
    assert_eq!(s.sessions("v.img").len(), N - 1);
    assert!(
        prune_secs < 60.0,
        "prune at {N} sessions took {prune_secs:.1} s"
    );

    // The cost of one commit with N sessions before it, against the cost
    // on a volume with none (best of 3 each: this machine is noisy).
    let best = |f: &dyn Fn(usize) -> f64| (0..3).map(f).fold(f64::MAX, f64::min);
    let empty = best(&|i| {
        let name = format!("S_90000000000{i}");
        let prev = (i > 0).then(|| format!("S_90000000000{}", i - 1));
        // A volume of its own, named by an id as dom0 names volumes.
        commit_cost(
            &s,
            "00000000000000000000000000000077",
            prev.as_deref(),
            &name,
            size,
        )
    });
    let full = best(&|i| {
        let name = format!("S_90000000000{i}");
        let prev = if i == 0 {
            names[N - 1].clone()
        } else {
            format!("S_90000000000{}", i - 1)
        };
        commit_cost(&s, &s.volume_id("v.img"), Some(&prev), &name, size)
    });
    eprintln!(
        "prune at {N} sessions: {prune_secs:.2} s; one commit: {:.1} ms with no sessions, {:.1} ms after {N}",
        empty * 1e3,
        full * 1e3
    );
    assert!(
        full < 3.0 * empty + 0.010,
        "a commit after {N} sessions costs {:.1} ms, one on an empty volume {:.1} ms",
        full * 1e3,
        empty * 1e3
    );
}

/// A peer asking again and again for chunks a session does not hold (a
/// sparse volume's zero chunks, through `ReadChunks`) gets each read
/// answered without them, and the receiver's log stays a few lines: the
/// first chunks left out are listed, the rest counted in one summary.
#[test]
fn reads_of_missing_chunks_cannot_flood_the_receivers_log() {
    use protocol::message::Request;
    let s = Setup::new("bound-log");
    s.init("64K");
    // 64 MiB, one data chunk: 1,023 chunks the session does not store.
    let mut img = vec![0u8; 64 << 20];
    img[..16].copy_from_slice(b"one stored chunk");
    fs::write(s.vol("v.img"), img).unwrap();
    let session = s.backup("v.img");
    let vid = s.volume_id("v.img");
    let mut input = sparsebak_tests::agent_hello(Operation::Restore);
    let mut asked = 0u64;
    for _ in 0..40 {
        for first in (1..1024u64).step_by(64) {
            let addrs: Vec<u64> = (first..(first + 64).min(1024))
                .map(|i| i * CS as u64)
                .collect();
            asked += addrs.len() as u64;
            input.extend(sparsebak_tests::request_frame(&Request::ReadChunks {
                volume: vid.clone(),
                session: session.clone(),
                addrs,
            }));
        }
    }
    let (_, err, replies) = sparsebak_tests::feed(&s, &input);
    let ends = replies
        .iter()
        .filter(|r| matches!(r, Reply::StreamEnd { chunks: 0 }))
        .count();
    assert_eq!(ends, 40 * 16, "every read answered, with no chunk");
    assert!(asked > 40_000);
    assert!(
        err.len() < 8 * 1024,
        "{} bytes of log for {asked} chunks left out",
        err.len()
    );
    assert!(
        err.contains(&format!(
            "{} more chunks left out on this connection",
            asked - 20
        )),
        "{err}"
    );
}
