//! Hostile peers. The receiver fed garbage, oversized, wrong-version frames
//! and names that try to escape: typed errors, no panic, archive unchanged.
//! The agent's restore reader fed wrong, stale, reordered, duplicated,
//! missing or oversized chunks by a fake receiver: a named error, and no
//! byte written to the target.

use protocol::chunk::{ChunkHeader, Codec};
use protocol::frame::{encode_frame, FrameKind, MAX_PAYLOAD};
use protocol::message::{
    ArchiveId, ArchiveParams, Compression, Hello, HelloBody, Operation, Reply, Request,
};
use protocol::stream::FrameWriter;
use sha2::{Digest, Sha256};
use sparsebak_tests::{chunk_frame, feed, receiver_bin, script, tree_digest, Rng, Setup};
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};

const CS: usize = 65536;

use sparsebak_tests::{agent_hello as hello, exit_within, receiver_fed, request_frame as request};
use std::time::Duration;

fn archive_with_one_session(tag: &str) -> Setup {
    let s = Setup::new(tag);
    s.init("64K");
    fs::write(s.vol("v.img"), Rng::new(5).bytes(4 * CS)).unwrap();
    s.backup("v.img");
    s
}

#[test]
fn receiver_rejects_garbage_and_changes_nothing() {
    let s = archive_with_one_session("hostile-recv");
    let before = tree_digest(s.dir.path());
    let mut oversized = hello(Operation::Backup);
    oversized.extend_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    oversized.push(FrameKind::Chunk as u8);
    let mut bad_version = Hello::new(HelloBody::Agent {
        archive_id: None,
        op: Operation::Backup,
    })
    .encode();
    bad_version[8..12].copy_from_slice(&(protocol::PROTOCOL_VERSION + 1).to_le_bytes());
    let mut bad_magic = Hello::new(HelloBody::Agent {
        archive_id: None,
        op: Operation::Backup,
    })
    .encode();
    bad_magic[..8].copy_from_slice(b"NOTSBAK!");
    let mut bad_crc = hello(Operation::Backup);
    let n = bad_crc.len();
    bad_crc[n - 1] ^= 0xff;
    let mut rng = Rng::new(77);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random garbage", rng.bytes(4096), "error"),
        ("oversized frame", oversized, "exceeds the cap"),
        (
            "wrong version",
            encode_frame(FrameKind::Hello, &bad_version).unwrap(),
            "version mismatch",
        ),
        (
            "bad magic",
            encode_frame(FrameKind::Hello, &bad_magic).unwrap(),
            "bad handshake magic",
        ),
        ("bad checksum", bad_crc, "checksum mismatch"),
        (
            "truncated hello",
            hello(Operation::Backup)[..20].to_vec(),
            "ended inside a frame",
        ),
        ("empty", Vec::new(), "closed the stream"),
    ];
    for (what, input, expect) in cases {
        let (ok, err, _) = feed(&s, &input);
        assert!(!ok, "{what}: receiver exited 0");
        assert!(
            err.contains(expect),
            "{what}: stderr lacks '{expect}': {err}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(
            tree_digest(s.dir.path()),
            before,
            "{what}: the archive changed"
        );
    }
    // a frame of an unknown kind after a good hello
    let mut input = hello(Operation::Backup);
    let mut f = encode_frame(FrameKind::Request, b"zz").unwrap();
    f[4] = 0x09;
    input.extend_from_slice(&f);
    let (ok, err, _) = feed(&s, &input);
    assert!(!ok && err.contains("unknown frame kind"), "{err}");
    assert_eq!(tree_digest(s.dir.path()), before);
}

#[test]
fn receiver_refuses_names_and_records_that_escape_the_archive() {
    let s = archive_with_one_session("hostile-names");
    let vid = s.volume_id("v.img");
    let outside = s.dir.path().to_path_buf();
    let before = tree_digest(&outside);
    let sess = "S_000000000099".to_string();
    let long = "a".repeat(256);
    let bad_volumes = [
        "../evil",
        "..",
        "a/b",
        "/etc",
        "a\0b",
        long.as_str(),
        ".hidden",
        "-x",
    ];
    for vol in bad_volumes {
        let mut input = hello(Operation::Backup);
        input.extend(request(&Request::BeginSession {
            volume: vol.into(),
            session: sess.clone(),
            prev: None,
            volume_size: CS as u64,
            time: 0,
        }));
        input.extend(request(&Request::Bye));
        let (_, _, replies) = feed(&s, &input);
        assert!(
            matches!(&replies[..], [Reply::Error(e)] if e.message.contains("invalid volume name")),
            "volume {vol:?}: {replies:?}"
        );
        assert_eq!(
            tree_digest(&outside),
            before,
            "volume {vol:?} changed something"
        );
    }
    // The admin requests with the same names: each refused by name, the
    // archive untouched.
    let real = s.archive_sessions("v.img")[0].clone();
    for vol in bad_volumes {
        let reqs = [
            Request::Prune {
                volume: vol.into(),
                session: real.clone(),
            },
            Request::DeleteVolume { volume: vol.into() },
            Request::Check {
                volume: Some(vol.into()),
            },
            Request::GetManifest {
                volume: vol.into(),
                session: real.clone(),
            },
        ];
        let mut input = hello(Operation::Admin);
        for r in &reqs {
            input.extend(request(r));
        }
        input.extend(request(&Request::Bye));
        let (_, _, replies) = feed(&s, &input);
        assert_eq!(replies.len(), reqs.len(), "volume {vol:?}: {replies:?}");
        for (r, rep) in reqs.iter().zip(&replies) {
            assert!(
                matches!(rep, Reply::Error(e) if e.message.contains("invalid volume name")),
                "{} with volume {vol:?}: {rep:?}",
                r.name()
            );
        }
        assert_eq!(
            tree_digest(&outside),
            before,
            "admin requests with {vol:?} changed something"
        );
    }
    for bad in ["../../x", "S_000000000099/..", "x", "."] {
        let mut input = hello(Operation::Admin);
        input.extend(request(&Request::Prune {
            volume: vid.clone(),
            session: bad.into(),
        }));
        input.extend(request(&Request::GetManifest {
            volume: vid.clone(),
            session: bad.into(),
        }));
        let (_, _, replies) = feed(&s, &input);
        assert!(
            replies.len() == 2
                && replies.iter().all(
                    |r| matches!(r, Reply::Error(e) if e.message.contains("invalid session name"))
                ),
            "session {bad:?}: {replies:?}"
        );
        assert_eq!(tree_digest(&outside), before);
    }
    // Admin requests on a backup connection are refused.
    let mut input = hello(Operation::Backup);
    input.extend(request(&Request::DeleteVolume {
        volume: vid.clone(),
    }));
    let (ok, _, replies) = feed(&s, &input);
    assert!(
        !ok && matches!(&replies[..], [Reply::Error(e)] if e.message.contains("a delete-volume request on a backup connection")),
        "{replies:?}"
    );
    assert_eq!(tree_digest(&outside), before);
    for bad_session in ["../../x", "S_000000000099/..", "x"] {
        let mut input = hello(Operation::Backup);
        input.extend(request(&Request::BeginSession {
            volume: vid.clone(),
            session: bad_session.into(),
            prev: None,
            volume_size: 1,
            time: 0,
        }));
        let (_, _, replies) = feed(&s, &input);
        assert!(
            matches!(&replies[..], [Reply::Error(e)] if e.message.contains("invalid session name")),
            "{replies:?}"
        );
        assert_eq!(tree_digest(&outside), before);
    }
    // Records inside a session that do not fit it: nothing is committed.
    let prev = s.archive_sessions("v.img").last().cloned();
    let data = vec![1u8; CS];
    let hash: [u8; 32] = Sha256::digest(&data).into();
    let bad_records: Vec<(&str, ChunkHeader, Vec<u8>)> = vec![
        (
            "past the end",
            ChunkHeader {
                addr: 64 * CS as u64,
                codec: Codec::Sealed,
                raw_len: CS as u32,
                hash,
            },
            data.clone(),
        ),
        (
            "unaligned",
            ChunkHeader {
                addr: 17,
                codec: Codec::Sealed,
                raw_len: CS as u32,
                hash,
            },
            data.clone(),
        ),
        (
            "length lie",
            ChunkHeader {
                addr: 0,
                codec: Codec::Sealed,
                raw_len: CS as u32,
                hash,
            },
            vec![1u8; CS + sealed::envelope::OVERHEAD + 1],
        ),
        (
            "bigger than a chunk",
            ChunkHeader {
                addr: 0,
                codec: Codec::Sealed,
                raw_len: 2 * CS as u32,
                hash,
            },
            vec![0; 2 * CS],
        ),
        (
            "address wraps",
            ChunkHeader {
                addr: u64::MAX - (CS as u64 - 1),
                codec: Codec::Sealed,
                raw_len: CS as u32,
                hash,
            },
            data.clone(),
        ),
    ];
    // The frames of a backup session on v.img, optionally committed.
    let session_stream = |records: &[(ChunkHeader, &[u8])], commit: Option<u64>| {
        let mut w = FrameWriter::new(Vec::new());
        w.hello(&Hello::new(HelloBody::Agent {
            archive_id: None,
            op: Operation::Backup,
        }))
        .unwrap();
        w.request(&Request::BeginSession {
            volume: vid.clone(),
            session: sess.clone(),
            prev: prev.clone(),
            volume_size: 4 * CS as u64,
            time: 0,
        })
        .unwrap();
        for (h, d) in records {
            w.chunk(h, d).unwrap();
        }
        if let Some(chunks) = commit {
            w.request(&Request::Commit {
                chunks,
                zero_chunks: 0,
            })
            .unwrap();
        }
        std::mem::take(w.get_mut())
    };
    for (what, h, d) in bad_records {
        let (ok, err, _) = feed(&s, &session_stream(&[(h, &d)], Some(1)));
        assert!(!ok, "{what}: accepted");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(tree_digest(&outside), before, "{what}: archive changed");
    }
    // Counts that do not match what was sent, and a session cut short.
    let good = ChunkHeader {
        addr: 0,
        codec: Codec::Sealed,
        raw_len: CS as u32,
        hash,
    };
    for (what, commit) in [("count lie", Some(2)), ("cut short", None)] {
        let (ok, _, _) = feed(&s, &session_stream(&[(good, &data)], commit));
        assert!(!ok, "{what}: accepted");
        // A cut session is kept only as the volume's unfinished session,
        // under its one fixed name (for resuming; tests/resume.rs).
        let kept = s.archive_vol("v.img").join(".incoming");
        assert_eq!(kept.exists(), commit.is_none(), "{what}");
        let _ = fs::remove_dir_all(&kept);
        assert_eq!(tree_digest(&outside), before, "{what}: archive changed");
    }
    // A restore-only connection cannot write.
    let mut input = hello(Operation::Backup);
    input.extend(request(&Request::BeginSession {
        volume: vid.clone(),
        session: sess,
        prev,
        volume_size: 1,
        time: 0,
    }));
    let o = Command::new(receiver_bin())
        .args(["serve", "--allow", "restore", "--archive"])
        .arg(&s.arch)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(&input)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not offered"));
    assert_eq!(tree_digest(&outside), before);
}

/// A fake receiver: answers with the prepared bytes whatever it is asked.
/// It holds what a hostile qube holds: the archive's files (sealed
/// chunks, the sealed root), never the key.
struct Fake {
    s: Setup,
    params: ArchiveParams,
    /// The envelopes of the volume's chunks as of the newest session, and
    /// their keyed ids (from dom0's manifests).
    envs: Vec<Vec<u8>>,
    ids: Vec<[u8; 32]>,
    /// Chunk 1's envelope as of the first session.
    old_env1: Vec<u8>,
}

impl Fake {
    fn new() -> Fake {
        let s = Setup::new("hostile-agent");
        s.init("64K");
        let v = s.vol("v.img");
        let mut rng = Rng::new(8);
        let first = rng.bytes(4 * CS);
        fs::write(&v, &first).unwrap();
        s.backup("v.img");
        let new1 = rng.bytes(CS);
        sparsebak_tests::write_at(&v, CS as u64, &new1);
        s.backup("v.img");
        let text = fs::read_to_string(
            s.meta
                .join("archives")
                .join(s.archive_id())
                .join("archive.toml"),
        )
        .unwrap();
        assert!(text.contains("chunk_size = 65536") && text.contains("zstd:3"));
        let params = ArchiveParams {
            id: ArchiveId::from_hex(&s.archive_id()).unwrap(),
            chunk_size: CS as u32,
            compression: Compression::Zstd { level: 3 },
        };
        let sess = s.archive_sessions("v.img");
        let at = |i: usize| s.stored_chunk("v.img", &sess[(i == 1) as usize], i as u64, CS as u64);
        let (envs, ids) = (0..4).map(at).unzip();
        let old_env1 = s.stored_chunk("v.img", &sess[0], 1, CS as u64).0;
        Fake {
            s,
            params,
            envs,
            ids,
            old_env1,
        }
    }

    /// The receiver's hello, and its answer to dom0's request for the root.
    fn hello(&self) -> Vec<u8> {
        self.s.fake_hello(self.params)
    }

    /// A chunk frame: `env` claimed for chunk `addr_idx`, with keyed id `id`.
    fn frame(addr_idx: usize, env: &[u8], id: [u8; 32]) -> Vec<u8> {
        chunk_frame((addr_idx * CS) as u64, CS as u32, env, id)
    }

    /// The honest frame of chunk `i`.
    fn chunk(&self, i: usize) -> Vec<u8> {
        Fake::frame(i, &self.envs[i], self.ids[i])
    }

    fn end(n: u64) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new());
        w.reply(&Reply::StreamEnd { chunks: n }).unwrap();
        std::mem::take(w.get_mut())
    }

    /// Runs restore and verify against the fake serving `stream`.
    fn run(&self, what: &str, stream: &[u8]) -> (bool, String) {
        let dir = self.s.dir.path();
        let file = dir.join("stream.bin");
        fs::write(&file, stream).unwrap();
        let fake = dir.join("fake-receiver.sh");
        script(
            &fake,
            &format!("cat '{}'\nexec cat >/dev/null", file.display()),
        );
        let target = dir.join("target.img");
        let _ = fs::remove_file(&target);
        let mut results = Vec::new();
        for args in [
            vec!["restore", "v.img", "--save-to", target.to_str().unwrap()],
            vec!["verify", "v.img"],
        ] {
            let mut c = self.s.cmd(&args);
            c.arg("--remote-receiver").arg(&fake);
            let o = c.output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            assert!(!err.contains("panicked"), "{what}: {err}");
            results.push((o.status.success(), err));
        }
        let leftovers: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{what}: partial files left: {leftovers:?}"
        );
        if !results[0].0 {
            assert!(
                !target.exists(),
                "{what}: a failed restore wrote its target"
            );
        }
        assert_eq!(
            results[0].0, results[1].0,
            "{what}: restore and verify disagree"
        );
        results.remove(0)
    }
}

#[test]
fn agent_rejects_hostile_restore_streams() {
    let f = Fake::new();
    let good: Vec<Vec<u8>> = (0..4).map(|i| f.chunk(i)).collect();
    let cat = |parts: &[&[u8]]| parts.concat();

    // The fake is right when honest: restore succeeds and is exact.
    let (ok, err) = f.run(
        "honest",
        &cat(&[
            &f.hello(),
            &good[0],
            &good[1],
            &good[2],
            &good[3],
            &Fake::end(4),
        ]),
    );
    assert!(ok, "the honest fake must pass: {err}");

    // Chunk 2's envelope sent as chunk 1, with chunk 1's id.
    let wrong_data = Fake::frame(1, &f.envs[2], f.ids[1]);
    // Chunk 1 as of the first session: a genuine envelope of this
    // address, but stale.
    let stale = Fake::frame(1, &f.old_env1, f.ids[1]);
    let mut oversized = Vec::new();
    oversized.extend_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
    oversized.push(FrameKind::Chunk as u8);
    let bomb = {
        // A clear envelope holding a zstd frame that inflates to 64 chunks.
        let mut env = vec![2u8, 1];
        env.extend(zstd::bulk::compress(&vec![0u8; 64 * CS], 3).unwrap());
        let crc = crc32fast::hash(&env);
        env.extend_from_slice(&crc.to_le_bytes());
        Fake::frame(0, &env, f.ids[0])
    };
    let mut bad_version = Hello::new(HelloBody::Receiver {
        archive: Some(f.params),
    })
    .encode();
    bad_version[8..12].copy_from_slice(&(protocol::PROTOCOL_VERSION + 1).to_le_bytes());
    let other_archive = encode_frame(
        FrameKind::Hello,
        &Hello::new(HelloBody::Receiver {
            archive: Some(ArchiveParams {
                id: ArchiveId([9; 16]),
                ..f.params
            }),
        })
        .encode(),
    )
    .unwrap();
    let h = f.hello();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wrong data",
            cat(&[&h, &good[0], &wrong_data, &good[2], &good[3], &Fake::end(4)]),
            "chunk at 0x10000 failed verification",
        ),
        (
            "stale chunk from an older session",
            cat(&[&h, &good[0], &stale, &good[2], &good[3], &Fake::end(4)]),
            "chunk at 0x10000 failed verification",
        ),
        (
            "chunk of another address",
            cat(&[&h, &good[0], &good[2], &good[2], &good[3], &Fake::end(4)]),
            "chunk at 0x10000 is missing from the receiver's stream (it sent the chunk at 0x20000 in its place",
        ),
        (
            "duplicated chunk",
            cat(&[
                &h,
                &good[0],
                &good[0],
                &good[1],
                &good[2],
                &good[3],
                &Fake::end(5),
            ]),
            "expected chunk at 0x10000, the receiver sent 0x0",
        ),
        (
            "reordered",
            cat(&[&h, &good[0], &good[2], &good[1], &good[3], &Fake::end(4)]),
            "chunk at 0x10000 is missing from the receiver's stream (it sent the chunk at 0x20000 in its place",
        ),
        (
            "missing chunk",
            cat(&[&h, &good[0], &good[1], &good[2], &Fake::end(3)]),
            "chunk at 0x30000 is missing",
        ),
        (
            "extra chunk",
            cat(&[
                &h,
                &good[0],
                &good[1],
                &good[2],
                &good[3],
                &good[3],
                &Fake::end(5),
            ]),
            "chunks that session does not have",
        ),
        (
            "truncated stream",
            cat(&[&h, &good[0], &good[1][..1000]]),
            "ended inside a frame",
        ),
        ("closed early", cat(&[&h, &good[0]]), "closed the stream"),
        (
            "oversized frame",
            cat(&[&h, &good[0], &oversized]),
            "exceeds the cap",
        ),
        (
            "decompression bomb",
            cat(&[&h, &bomb]),
            "chunk at 0x0 failed verification",
        ),
        (
            "garbage",
            cat(&[&h, &Rng::new(3).bytes(3000)]),
            "restore stream",
        ),
        (
            "wrong version",
            encode_frame(FrameKind::Hello, &bad_version).unwrap(),
            "version mismatch",
        ),
        (
            "another archive",
            cat(&[&other_archive, &good[0]]),
            "refusing to continue",
        ),
        ("no hello at all", good[0].clone(), "expected a hello frame"),
    ];
    for (what, stream, expect) in cases {
        let (ok, err) = f.run(what, &stream);
        assert!(!ok, "{what}: accepted");
        assert!(
            err.contains(expect),
            "{what}: stderr lacks '{expect}': {err}"
        );
    }
}

/// A receiver that stops talking, or stops reading: the agent gives up
/// after its timeout with a named error, writes nothing, and exits.
#[test]
fn agent_times_out_on_a_stalled_receiver() {
    let f = Fake::new();
    let dir = f.s.dir.path();
    let good: Vec<Vec<u8>> = (0..2).map(|i| f.chunk(i)).collect();
    let mut ok_reply = FrameWriter::new(Vec::new());
    ok_reply.reply(&Reply::Ok).unwrap();
    let ok_reply = std::mem::take(ok_reply.get_mut());
    let mut none_unfinished = FrameWriter::new(Vec::new());
    none_unfinished
        .reply(&Reply::StreamEnd { chunks: 0 })
        .unwrap();
    let none_unfinished = std::mem::take(none_unfinished.get_mut());
    let target = dir.join("stalled.img");
    // Big enough that the chunks cannot all sit in pipe buffers.
    fs::write(f.s.vol("big.img"), Rng::new(4).bytes(12 << 20)).unwrap();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "silent after the hello (restore)",
            f.hello(),
            vec!["restore", "v.img", "--save-to", target.to_str().unwrap()],
        ),
        (
            "silent in mid-stream (restore)",
            [f.hello(), good[0].clone(), good[1].clone()].concat(),
            vec!["restore", "v.img", "--save-to", target.to_str().unwrap()],
        ),
        (
            "silent in mid-stream (verify)",
            [f.hello(), good[0].clone()].concat(),
            vec!["verify", "v.img"],
        ),
        (
            "stops reading during a backup",
            // No unfinished session; then the session begins.
            [f.hello(), none_unfinished, ok_reply].concat(),
            vec!["backup", "big.img"],
        ),
    ];
    for (what, stream, args) in cases {
        let file = dir.join("stall.bin");
        fs::write(&file, &stream).unwrap();
        let fake = dir.join("stalling-receiver.sh");
        // Send the prepared bytes, then neither read nor write nor exit.
        script(&fake, &format!("cat '{}'\nexec sleep 600", file.display()));
        let mut c = f.s.cmd(&args);
        c.arg("--remote-receiver")
            .arg(&fake)
            .arg("--timeout")
            .arg("2");
        let t0 = std::time::Instant::now();
        let o = c.output().unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: succeeded");
        assert!(
            err.contains("the receiver stalled: nothing moved for 2 s"),
            "{what}: {err}"
        );
        assert!(secs < 15.0, "{what}: took {secs:.1} s");
        assert!(!target.exists(), "{what}: restore target written");
    }
    // Nothing half-done was recorded for the stalled backup.
    assert!(f.s.sessions("big.img").is_empty());
}

/// Whatever a receiver prints on stderr reaches dom0's terminal escaped:
/// no escape sequence or control byte of the peer's gets through.
#[test]
fn receiver_stderr_is_escaped_on_dom0s_terminal() {
    let s = archive_with_one_session("stderr-escape");
    let fake = s.dir.path().join("noisy-receiver.sh");
    script(
        &fake,
        "printf '\\033]0;owned\\007\\033[2J\\033[31mred\\rover\\n' >&2\nexit 3",
    );
    let mut c = s.cmd(&["verify", "v.img"]);
    c.arg("--remote-receiver").arg(&fake);
    let o = c.output().unwrap();
    assert!(!o.status.success());
    let err = o.stderr;
    assert!(
        !err.contains(&0x1b) && !err.contains(&0x07) && !err.contains(&b'\r'),
        "{err:?}"
    );
    let text = String::from_utf8_lossy(&err);
    assert!(text.contains("sparsebak: receiver ("), "{text}");
    assert!(text.contains("\\u{1b}[31mred\\rover"), "{text}");
}

/// Two writers to one archive never interleave: while another holds the
/// archive's writer lock, the receiver waits (here 1 s), then answers
/// Busy and changes nothing.
#[test]
fn a_busy_archive_is_refused_not_shared() {
    let s = archive_with_one_session("busy");
    let before = (tree_digest(&s.arch), tree_digest(&s.meta));
    let mut holder = Command::new("flock")
        .arg(&s.arch)
        .args(["sleep", "30"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let wrap = s.dir.path().join("impatient-receiver.sh");
    script(
        &wrap,
        &format!("exec {} \"$@\" --lock-wait 1", receiver_bin().display()),
    );
    fs::write(s.vol("v.img"), Rng::new(6).bytes(4 * CS)).unwrap();
    let mut c = s.cmd(&["backup", "v.img"]);
    c.arg("--remote-receiver").arg(&wrap);
    let o = c.output().unwrap();
    let _ = holder.kill();
    let _ = holder.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("another connection is using the archive")
            && err.contains("in use by another sparsebak connection"),
        "{err}"
    );
    fs::write(s.vol("v.img"), Rng::new(5).bytes(4 * CS)).unwrap();
    assert_eq!(
        (tree_digest(&s.arch), tree_digest(&s.meta)),
        before,
        "a refused backup changed something"
    );
    s.ok(&["backup", "v.img"]);
}

/// An agent that goes silent mid-session: the receiver gives up after its
/// idle timeout, commits nothing (what it stored is kept only as the
/// volume's unfinished session, for resuming) and releases the archive.
#[test]
fn receiver_gives_up_on_a_silent_agent() {
    let s = archive_with_one_session("idle");
    let vid = s.volume_id("v.img");
    let before = tree_digest(&s.arch);
    let prev = s.archive_sessions("v.img").last().cloned();
    let mut input = hello(Operation::Backup);
    input.extend(request(&Request::BeginSession {
        volume: vid.clone(),
        session: "S_000000000099".into(),
        prev,
        volume_size: 4 * CS as u64,
        time: 0,
    }));
    // A well-formed envelope (clear, stored), which the receiver keeps.
    let data = vec![3u8; CS];
    let mut env = vec![sealed::envelope::KIND_CLEAR, 0];
    env.extend_from_slice(&data);
    let crc = crc32fast::hash(&env);
    env.extend_from_slice(&crc.to_le_bytes());
    let mut w = FrameWriter::new(Vec::new());
    w.chunk(
        &ChunkHeader {
            addr: 0,
            codec: Codec::Sealed,
            raw_len: CS as u32,
            hash: Sha256::digest(&data).into(),
        },
        &env,
    )
    .unwrap();
    input.extend(std::mem::take(w.get_mut()));
    // Send the start of a session, then keep the pipe open and say nothing.
    let (child, stdin) = receiver_fed(&s.arch, &["--idle-timeout", "1"], &input);
    let (status, err, _) = exit_within(child, Duration::from_secs(10));
    drop(stdin);
    assert!(
        !status.success() && err.contains("no data from the agent for 1 s"),
        "{err}"
    );
    let kept = s.archive_vol("v.img").join(".incoming");
    assert!(kept.join("manifest").is_file(), "nothing kept to resume");
    fs::remove_dir_all(&kept).unwrap();
    assert_eq!(
        tree_digest(&s.arch),
        before,
        "the abandoned session left something else"
    );
    s.ok(&["backup", "v.img"]);
}

/// Readers share the archive: while a restore connection is open, a
/// backup and a second reader (verify) go ahead; a prune, which moves
/// committed chunks, waits for the reader (here 1 s), is refused in words
/// that name the reader and changes nothing; once the reader is gone it
/// runs.
#[test]
fn readers_share_the_archive_and_a_prune_waits_for_them() {
    use std::io::Read;
    let s = archive_with_one_session("readers");
    let wrap = s.dir.path().join("impatient-receiver.sh");
    script(
        &wrap,
        &format!("exec {} \"$@\" --lock-wait 1", receiver_bin().display()),
    );
    let with = |args: &[&str]| {
        let mut c = s.cmd(args);
        c.arg("--remote-receiver").arg(&wrap);
        c.output().unwrap()
    };
    // A reader that stays: a restore connection, open and idle. Its hello
    // reply comes only once it holds its lock.
    let mut reader = Command::new(receiver_bin())
        .args(["serve", "--archive"])
        .arg(&s.arch)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut rin = reader.stdin.take().unwrap();
    rin.write_all(&hello(Operation::Restore)).unwrap();
    let mut first = [0u8; 4];
    reader
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();

    fs::write(s.vol("v.img"), Rng::new(8).bytes(4 * CS)).unwrap();
    let o = with(&["backup", "v.img"]);
    assert!(
        o.status.success(),
        "a backup waited for a reader: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = with(&["verify", "v.img"]);
    assert!(
        o.status.success(),
        "a second reader waited for the first: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let sessions = s.sessions("v.img");
    assert_eq!(sessions.len(), 2);
    let before = s.archive_sessions("v.img");
    let o = with(&["prune", "v.img", "--session", &sessions[0]]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("being read by another connection (a restore, verify or open)")
            && err.contains("a prune must wait until it ends"),
        "{err}"
    );
    // Nothing of it happened: the same sessions on both sides (the root
    // named the prune as pending, then said it is not: rewritten twice).
    assert_eq!(
        s.archive_sessions("v.img"),
        before,
        "a refused prune moved chunks"
    );
    assert_eq!(
        s.sessions("v.img"),
        sessions,
        "a refused prune changed dom0"
    );
    assert!(!s.meta_vol("v.img").join(".prune-intent.toml").exists());
    let root = sealed::root::Root::open(&s.keys(), &s.root_blob()).unwrap();
    assert!(root.pending.is_empty(), "{:?}", root.pending);
    drop(rin);
    let _ = reader.wait();
    let o = with(&["prune", "v.img", "--session", &sessions[0]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s.sessions("v.img"), [sessions[1].clone()]);
    s.ok(&["verify", "v.img"]);
}

/// Envelopes the receiver could never give back whole (one too short for
/// its kind, an unknown kind, a wrong CRC: each checkable without the key)
/// are refused when they arrive, and the session is not committed; an
/// honest envelope in the same stream is taken.
#[test]
fn envelopes_the_receiver_cannot_keep_are_refused_on_arrival() {
    let s = archive_with_one_session("bad-envelopes");
    let vid = s.volume_id("v.img");
    let prev = s.archive_sessions("v.img").last().unwrap().clone();
    let (good, id) = s.stored_chunk("v.img", &prev, 0, CS as u64);
    let with_crc = |mut body: Vec<u8>| {
        let crc = crc32fast::hash(&body).to_le_bytes();
        body.extend_from_slice(&crc);
        body
    };
    // 30 bytes of kind 1 (encrypted): too short for its nonce and tag.
    let short = with_crc([vec![1u8], vec![0u8; 25]].concat());
    assert_eq!(short.len(), 30);
    let unknown = with_crc([vec![7u8], good[1..good.len() - 4].to_vec()].concat());
    let mut bad_crc = good.clone();
    *bad_crc.last_mut().unwrap() ^= 1;
    let session = |env: &[u8]| {
        let mut input = hello(Operation::Backup);
        input.extend(request(&Request::BeginSession {
            volume: vid.clone(),
            session: "S_000000000009".into(),
            prev: Some(prev.clone()),
            volume_size: 4 * CS as u64,
            time: 0,
        }));
        input.extend(chunk_frame(0, CS as u32, env, id));
        input.extend(request(&Request::Commit {
            chunks: 1,
            zero_chunks: 0,
        }));
        input
    };
    let before = tree_digest(&s.arch);
    for (what, env) in [
        ("30-byte envelope", &short),
        ("unknown kind", &unknown),
        ("wrong CRC", &bad_crc),
    ] {
        let (_, err, replies) = feed(&s, &session(env));
        assert!(
            replies
                .iter()
                .any(|r| matches!(r, Reply::Error(e) if e.message.contains("chunk 0x0") && e.message.contains("refused"))),
            "{what}: {replies:?} {err}"
        );
        assert!(
            !replies.iter().any(|r| matches!(r, Reply::Committed(_))),
            "{what}"
        );
        assert_eq!(
            tree_digest(&s.arch),
            before,
            "{what}: the archive kept something"
        );
    }
    let (_, err, replies) = feed(&s, &session(&good));
    assert!(
        replies.iter().any(|r| matches!(r, Reply::Committed(_))),
        "the honest envelope: {replies:?} {err}"
    );
}

/// The receiver refuses what it could not keep or remove later: a volume
/// id that is not 32 hex digits (a 255-byte one could be stored but never
/// deleted), and an `Init` whose key or root is too large, which leaves
/// nothing behind (no `volumes/`, no `dom0.key`).
#[test]
fn ids_and_inits_the_receiver_could_not_keep_are_refused_whole() {
    let s = archive_with_one_session("bad-ids");
    let before = tree_digest(&s.arch);
    let long = "a".repeat(255);
    let mut input = hello(Operation::Backup);
    input.extend(request(&Request::BeginSession {
        volume: long.clone(),
        session: "S_000000000001".into(),
        prev: None,
        volume_size: CS as u64,
        time: 0,
    }));
    let (_, _, replies) = feed(&s, &input);
    assert!(
        matches!(&replies[..], [Reply::Error(e)] if e.message.contains("32 lowercase hex digits")),
        "{replies:?}"
    );
    assert_eq!(
        tree_digest(&s.arch),
        before,
        "a bad volume id left something"
    );

    let fresh = Setup::new("bad-init");
    let params = ArchiveParams {
        id: ArchiveId([9; 16]),
        chunk_size: CS as u32,
        compression: Compression::Zstd { level: 3 },
    };
    for (what, key, root) in [
        ("an oversized key", vec![1u8; 5000], vec![2u8; 10]),
        ("an oversized root", vec![1u8; 10], vec![2u8; (1 << 20) + 1]),
    ] {
        let mut input = hello(Operation::Admin);
        input.extend(request(&Request::Init {
            params,
            key,
            root,
            mkdir: true,
        }));
        let (_, err, replies) = feed(&fresh, &input);
        assert!(
            matches!(&replies[..], [Reply::Error(e)] if e.message.contains("too large")),
            "{what}: {replies:?} {err}"
        );
        assert!(
            !fresh.arch.exists(),
            "{what}: the refused init left {}",
            fresh.arch.display()
        );
    }
}
