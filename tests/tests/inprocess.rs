//! Agent logic against the receiver's `serve` running in a thread of this
//! process over two pipes: the real client, transport framing, stall
//! timeouts, backup pipeline, restore verification, prune and check, with
//! no process spawned. The process-level suites still run the binaries.

use agent::client::{at_most, Client};
use agent::commands::backup::{back_up, How};
use agent::commands::prune::{prune_volume, Selection};
use agent::commands::{check, restore};
use agent::meta::{ArchiveMeta, ArchiveRecord, MetaStore};
use agent::source::Source;
use agent::target::Target;
use agent::transport::{Connection, Reach};
use protocol::message::{
    ArchiveId, ArchiveParams, Compression, Finding, FindingKind, Hello, HelloBody, Operation, Reply,
};
use protocol::stream::{FrameReader, FrameWriter};
use receiver::archive::Archive;
use receiver::serve::{serve, ServeOptions};
use sealed::keys::{KeyFile, MasterKey, WrappedKey, DEFAULT_KDF};
use sealed::root::Root;
use sparsebak_tests::{semi_compressible, sha_file, write_at, Rng, TempDir};
use std::path::{Path, PathBuf};
use std::time::Duration;

const CS: u32 = 64 << 10;

struct World {
    _tmp: TempDir,
    archive_dir: PathBuf,
    images: PathBuf,
    meta: ArchiveMeta,
    params: ArchiveParams,
    /// The sealed root arch-init wrote.
    root: Vec<u8>,
    /// The wrapped key it wrote (twice).
    wrapped: Vec<u8>,
}

fn world() -> World {
    let tmp = TempDir::new("inproc");
    let archive_dir = tmp.path().join("archive");
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let params = ArchiveParams {
        id: ArchiveId([7; 16]),
        chunk_size: CS,
        compression: Compression::Zstd { level: 3 },
    };
    // What arch-init makes: a key, its wrapped copy, a first empty root.
    let key = KeyFile {
        archive: params.id,
        encrypt: true,
        master: MasterKey::from_bytes([42; 32]),
        retired: Vec::new(),
    };
    let wrapped = WrappedKey::wrap(
        &key.master,
        params.id,
        true,
        b"pw",
        DEFAULT_KDF,
        [1; 16],
        [2; 24],
    )
    .unwrap();
    let wrapped = wrapped.encode();
    let root = Root {
        generation: 1,
        written: 0,
        params,
        encrypt: true,
        configured: Vec::new(),
        volumes: Vec::new(),
        qubes: Default::default(),
        pending: Vec::new(),
        key_hash: Some(agent::keycheck::hash(&wrapped)),
        legacy_clear: false,
        pad_sizes: false,
    }
    .seal(&key.keys(), [3; 24]);
    Archive::init(&archive_dir, params, &wrapped, &root, true).unwrap();
    let meta = MetaStore::new(&tmp.path().join("meta"))
        .create(
            ArchiveRecord {
                id: params.id.to_hex(),
                dest: format!("file://{}", archive_dir.display()),
                chunk_size: CS,
                compression: params.compression.to_string(),
                created: 0,
                encrypt: true,
                volumes: Vec::new(),
                legacy_clear: false,
                pad_sizes: false,
            },
            &key,
        )
        .unwrap();
    meta.set_wrapped_key(&wrapped).unwrap();
    meta.clear_dirty().unwrap();
    meta.set_seen(1, &agent::meta::RootDigest::of(&root))
        .unwrap();
    World {
        _tmp: tmp,
        archive_dir,
        images,
        meta,
        params,
        root,
        wrapped,
    }
}

/// Limits for an in-process peer: `stall` and the default frame limit.
fn reach(stall: Duration) -> Reach {
    Reach {
        receiver: PathBuf::new(),
        remote_receiver: String::new(),
        ssh: Vec::new(),
        timeout: stall,
        frame_timeout: Some(agent::transport::DEFAULT_FRAME_TIMEOUT),
        deadline: None,
    }
}

/// A client whose receiver is `serve` in a thread, allowing `op`.
fn client(w: &World, op: Operation) -> Client {
    client_serving(w, op, |opts, input, output| {
        serve(&opts, input, output).is_ok()
    })
}

/// A client whose receiver runs `run` (given the serve options for `op`)
/// in a thread.
fn client_serving(
    w: &World,
    op: Operation,
    run: impl FnOnce(ServeOptions, std::io::PipeReader, std::io::PipeWriter) -> bool + Send + 'static,
) -> Client {
    let opts = ServeOptions {
        archive_dir: w.archive_dir.clone(),
        allowed: vec![op],
        lock_wait: Duration::from_secs(5),
        pace: None,
    };
    let conn = Connection::in_process(
        "in-process receiver",
        &reach(Duration::from_secs(30)),
        op,
        Some(w.params.id),
        move |input, output| run(opts, input, output),
    )
    .unwrap();
    Client::over(conn, "in-process receiver", &w.meta).unwrap()
}

/// How the tests back up: two workers, no groups from a config.
fn how(w: &World) -> How {
    How {
        workers: 2,
        resend_all: false,
        source_label: w.images.display().to_string(),
        groups: Vec::new(),
    }
}

fn backup(w: &World, volume: &str) -> String {
    let src = Source::open(&w.images, &w.meta.rec.id).unwrap();
    let mut c = client(w, Operation::Backup);
    let sent = back_up(&w.meta, &src, &mut c, &[volume.to_string()], &how(w)).unwrap();
    assert_eq!((sent.failed, sent.stopped, sent.done.len()), (0, false, 1));
    agent::catalog::publish(&w.meta, &mut c).unwrap();
    c.finish().unwrap();
    sent.done[0].session.clone()
}

fn restore_to(w: &World, volume: &str, session: Option<&str>, to: &Path) {
    let mut c = client(w, Operation::Restore);
    restore::restore(
        &w.meta,
        &mut c,
        volume,
        session,
        Target::File {
            path: to.to_path_buf(),
            force: true,
            mode: 0o600,
        },
        false,
    )
    .unwrap();
    c.finish().unwrap();
}

#[test]
fn backup_restore_prune_and_check_in_process() {
    let w = world();
    let img = w.images.join("disk.img");
    let mut rng = Rng::new(11);
    std::fs::write(&img, semi_compressible(&mut rng, 40 * CS as usize + 123)).unwrap();
    let s1 = backup(&w, "disk.img");
    let v1 = sha_file(&img);
    write_at(
        &img,
        5 * CS as u64 + 17,
        &semi_compressible(&mut rng, 3 * CS as usize),
    );
    let s2 = backup(&w, "disk.img");
    let v2 = sha_file(&img);
    assert_ne!(v1, v2);

    let out = w.images.join("out.img");
    restore_to(&w, "disk.img", Some(&s1), &out);
    assert_eq!(sha_file(&out), v1, "session 1 restored byte-exact");
    restore_to(&w, "disk.img", None, &out);
    assert_eq!(sha_file(&out), v2, "newest session restored byte-exact");

    // The receiver re-hashes every chunk and dom0 compares manifests.
    let mut c = client(&w, Operation::Admin);
    let rep = check::check(&w.meta, &mut c, None).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert!(rep.chunks_hashed > 0);
    c.finish().unwrap();

    // Prune the first session into the second; the newest still restores.
    let mut c = client(&w, Operation::Admin);
    let sel = Selection::Names {
        from: s1.clone(),
        to: s1.clone(),
    };
    assert_eq!(
        prune_volume(&w.meta, &mut c, "disk.img", &sel, false).unwrap(),
        1
    );
    assert_eq!(c.sessions("disk.img", 10).unwrap().len(), 1);
    c.finish().unwrap();
    restore_to(&w, "disk.img", Some(&s2), &out);
    assert_eq!(sha_file(&out), v2, "pruned archive restores byte-exact");
}

#[test]
fn a_corrupt_chunk_fails_restore_and_writes_nothing() {
    let w = world();
    let img = w.images.join("v.img");
    let mut rng = Rng::new(5);
    std::fs::write(&img, semi_compressible(&mut rng, 8 * CS as usize)).unwrap();
    backup(&w, "v.img");
    // Flip one byte of every chunk file of the session.
    let mut flipped = 0;
    let vid = w.meta.volume_id("v.img").unwrap().unwrap().to_hex();
    let mut stack = vec![w.archive_dir.join("volumes").join(vid)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with('x') {
                let mut b = std::fs::read(&p).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
                std::fs::write(&p, b).unwrap();
                flipped += 1;
            }
        }
    }
    assert!(flipped > 0);
    let out = w.images.join("out.img");
    let mut c = client(&w, Operation::Restore);
    let err = restore::restore(
        &w.meta,
        &mut c,
        "v.img",
        None,
        Target::File {
            path: out.clone(),
            force: false,
            mode: 0o600,
        },
        false,
    )
    .err()
    .expect("a corrupt chunk must fail the restore");
    assert!(
        format!("{err:#}").contains("failed verification"),
        "{err:#}"
    );
    assert!(!out.exists(), "nothing written on a failed restore");
}

#[test]
fn a_silent_in_process_peer_times_out() {
    let conn = Connection::in_process(
        "silent peer",
        &reach(Duration::from_millis(300)),
        Operation::Admin,
        None,
        |input, _output| {
            // Reads our hello, then never answers.
            std::thread::sleep(Duration::from_secs(2));
            drop(input);
            true
        },
    );
    let err = conn.err().expect("handshake must time out");
    assert!(
        format!("{err:#}").contains("the receiver stalled"),
        "{err:#}"
    );
}

/// A hostile peer in a thread: answers the hello, then each request with
/// the next of `replies` (whatever was asked; a `StreamEnd` goes out right
/// after the reply before it).
fn hostile_client(w: &World, replies: Vec<Reply>) -> Client {
    let params = w.params;
    let conn = Connection::in_process(
        "hostile peer",
        &reach(Duration::from_secs(10)),
        Operation::Admin,
        Some(params.id),
        move |input, output| {
            let mut rd = FrameReader::new(input);
            let mut wr = FrameWriter::new(output);
            if rd.read_hello().is_err() {
                return false;
            }
            let hello = Hello::new(HelloBody::Receiver {
                archive: Some(params),
            });
            if wr.hello(&hello).and_then(|_| wr.flush()).is_err() {
                return false;
            }
            for r in replies {
                // A stream's end follows its data with no request between.
                let asked = matches!(r, Reply::StreamEnd { .. }) || rd.read_request().is_ok();
                if !asked || wr.reply(&r).and_then(|_| wr.flush()).is_err() {
                    return false;
                }
            }
            // Then Bye.
            rd.read_request().is_ok()
        },
    )
    .unwrap();
    Client::over(conn, "hostile peer", &w.meta).unwrap()
}

fn finding(session: &str) -> Finding {
    Finding {
        volume: "v.img".into(),
        session: session.into(),
        addr: Some(0),
        kind: FindingKind::Corrupt,
        detail: "bad".into(),
    }
}

#[test]
fn check_counts_from_the_peer_never_understate() {
    let w = world();
    let empty = Reply::Volumes {
        names: vec![],
        more: false,
    };
    // A real finding next to a count that would wrap: saturated, and said
    // to be a lower bound.
    let mut c = hostile_client(
        &w,
        vec![
            Reply::CheckReport {
                checked: 1,
                findings: vec![finding("S_000000000001")],
                more: u64::MAX,
            },
            Reply::Data(w.root.clone()),
            Reply::StreamEnd { chunks: 1 },
            Reply::Data(w.wrapped.clone()),
            Reply::StreamEnd { chunks: 1 },
            Reply::Data(w.wrapped.clone()),
            Reply::StreamEnd { chunks: 1 },
            empty.clone(),
        ],
    );
    let rep = check::check(&w.meta, &mut c, None).unwrap();
    c.finish().unwrap();
    let text = check::text(&rep);
    assert_eq!(rep.total(), u64::MAX);
    assert!(
        text.contains("at least 18446744073709551615 problems"),
        "{text}"
    );
    assert!(!text.contains(" 0 problems"), "{text}");

    // 4,096 findings of one session: 20 listed, every one counted.
    let findings = vec![finding("S_000000000001"); 4096];
    let mut c = hostile_client(
        &w,
        vec![
            Reply::CheckReport {
                checked: 1,
                findings,
                more: 0,
            },
            Reply::Data(w.root.clone()),
            Reply::StreamEnd { chunks: 1 },
            Reply::Data(w.wrapped.clone()),
            Reply::StreamEnd { chunks: 1 },
            Reply::Data(w.wrapped.clone()),
            Reply::StreamEnd { chunks: 1 },
            empty,
        ],
    );
    let rep = check::check(&w.meta, &mut c, None).unwrap();
    c.finish().unwrap();
    let text = check::text(&rep);
    assert_eq!(rep.problems.len(), 20);
    assert!(text.contains("... and 4076 more problems"), "{text}");
    assert!(text.contains(": 4096 problems"), "{text}");
}

#[test]
fn an_endless_or_disordered_listing_is_refused() {
    let w = world();
    // Pages that promise more forever, each with new names: refused once
    // past what dom0 knows of plus one page, not held in memory forever.
    let pages: Vec<Reply> = (0..3)
        .map(|p| Reply::Volumes {
            names: (0..1000).map(|i| format!("v{p:02}{i:04}.img")).collect(),
            more: true,
        })
        .collect();
    let mut c = hostile_client(&w, pages);
    let e = c.volumes(at_most(0)).unwrap_err();
    assert!(
        format!("{e:#}").contains("lists more than 1000 volumes"),
        "{e:#}"
    );

    let mut c = hostile_client(
        &w,
        vec![Reply::Volumes {
            names: vec!["b.img".into(), "a.img".into()],
            more: false,
        }],
    );
    let e = c.volumes(at_most(0)).unwrap_err();
    assert!(format!("{e:#}").contains("out of order"), "{e:#}");

    let mut c = hostile_client(
        &w,
        vec![Reply::Volumes {
            names: vec![],
            more: true,
        }],
    );
    let e = c.volumes(at_most(0)).unwrap_err();
    assert!(format!("{e:#}").contains("empty page"), "{e:#}");
}

/// Every attempt to write a root consumes a generation: a root whose
/// upload failed is never followed by another root of the same
/// generation, so a backup qube that kept the first cannot show either.
#[test]
fn a_failed_root_write_consumes_its_generation() {
    use protocol::message::{ErrorCode, RemoteError};
    let w = world();
    let g = w.meta.generation().unwrap();
    let refuse = Reply::Error(RemoteError {
        code: ErrorCode::Io,
        message: "disk full".into(),
    });
    let mut c = hostile_client(&w, vec![refuse]);
    assert!(agent::catalog::publish(&w.meta, &mut c).is_err());
    drop(c);
    // Nothing accepted: dom0 has seen what it had; the next root skips the
    // generation the failed one took.
    assert_eq!(w.meta.generation().unwrap(), g);
    assert!(w.meta.dirty());
    let mut c = hostile_client(&w, vec![Reply::Ok]);
    let written = agent::catalog::publish(&w.meta, &mut c).unwrap();
    c.finish().unwrap();
    assert_eq!(written, g + 2);
    assert_eq!(w.meta.generation().unwrap(), g + 2);
    assert_eq!(w.meta.next_generation().unwrap(), g + 3);
}

/// A client whose receiver is the real `serve`, with its replies passed
/// through `edit` (frame kind, payload → what to send instead).
fn client_editing(
    w: &World,
    op: Operation,
    edit: impl Fn(protocol::frame::FrameKind, &[u8]) -> Vec<u8> + Send + 'static,
) -> Client {
    client_serving(w, op, move |opts, input, output| {
        let (inner_rd, inner_wr) = std::io::pipe().unwrap();
        let served = std::thread::spawn(move || serve(&opts, input, inner_wr).is_ok());
        let mut rd = FrameReader::new(inner_rd);
        let mut wr = FrameWriter::new(output);
        while let Ok((kind, payload)) = rd.read_frame() {
            let p = edit(kind, payload);
            if wr
                .write_frame(kind, &[&p])
                .and_then(|_| wr.flush())
                .is_err()
            {
                break;
            }
        }
        served.join().unwrap_or(false)
    })
}

/// A receiver that answers a commit with references "refused" that dom0
/// never sent (here: the address of a chunk sent as data) is caught: the
/// session is not committed in dom0's records, and an honest receiver
/// takes the next backup, which restores exactly.
#[test]
fn a_receiver_refusing_what_was_no_reference_is_refused() {
    let w = world();
    let tpl = w.images.join("tpl.img");
    let mut rng = Rng::new(21);
    std::fs::write(&tpl, semi_compressible(&mut rng, 16 * CS as usize)).unwrap();
    for v in ["tpl.img", "clone.img"] {
        w.meta.set_volume_group(v, Some("g")).unwrap();
    }
    backup(&w, "tpl.img");
    // The clone: the template with chunk 3 rewritten (sent as data).
    let clone = w.images.join("clone.img");
    std::fs::copy(&tpl, &clone).unwrap();
    write_at(&clone, 3 * CS as u64, &rng.bytes(CS as usize));
    let src = Source::open(&w.images, &w.meta.rec.id).unwrap();
    let mut c =
        client_editing(
            &w,
            Operation::Backup,
            |kind, payload| match protocol::message::decode_reply(payload) {
                Ok(Reply::Committed(_)) if kind == protocol::frame::FrameKind::Reply => {
                    protocol::message::encode_reply(&Reply::Refused {
                        addrs: vec![3 * CS as u64],
                    })
                }
                _ => payload.to_vec(),
            },
        );
    let sent = back_up(&w.meta, &src, &mut c, &["clone.img".to_string()], &how(&w)).unwrap();
    assert_eq!(sent.failed, 1, "the lie must fail the volume");
    assert!(w.meta.session_names("clone.img").unwrap().is_empty());
    drop(c);
    // The honest receiver: the clone's chunks but one by reference.
    let s = backup(&w, "clone.img");
    let info = &w.meta.sessions("clone.img").unwrap()[0];
    assert_eq!((info.name.as_str(), info.ref_chunks), (s.as_str(), 15));
    let out = w.images.join("out.img");
    restore_to(&w, "clone.img", None, &out);
    assert_eq!(sha_file(&out), sha_file(&clone));
}
