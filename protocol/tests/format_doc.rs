//! The byte strings in `protocol/FORMAT.md` decode to the values the
//! document says, with the crate's own decoders: the contract and the code
//! cannot drift apart. A removed or renamed example fails too.

use protocol::chunk::{decode_chunk_payload, ChunkHeader, Codec};
use protocol::frame::{FrameKind, HEADER_LEN};
use protocol::message::*;
use protocol::stream::{FrameReader, Incoming};

/// The ```wire blocks of FORMAT.md: (name, bytes).
fn examples() -> Vec<(String, Vec<u8>)> {
    let doc = include_str!("../FORMAT.md");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(l) = lines.next() {
        if l.trim() != "```wire" {
            continue;
        }
        let name = lines.next().expect("example name").trim().to_string();
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            for h in l.split_whitespace() {
                let b = u8::from_str_radix(h, 16);
                bytes.push(b.unwrap_or_else(|_| panic!("{name}: bad hex {h}")));
            }
        }
        out.push((name, bytes));
    }
    out
}

/// The one frame in `b`, which must be all of `b`.
fn frame(b: &[u8]) -> Incoming<'static> {
    let mut r = FrameReader::new(std::io::Cursor::new(b.to_vec()));
    let f = match r.next_frame().expect("frame decodes") {
        Incoming::Hello(h) => Incoming::Hello(h),
        Incoming::Request(q) => Incoming::Request(q),
        Incoming::Reply(p) => Incoming::Reply(p),
        Incoming::Chunk(..) => panic!("no chunk frame examples"),
    };
    assert_eq!(r.offset, b.len() as u64, "frame is the whole example");
    f
}

/// The first root of the documented archive (`root-body`).
fn first_root() -> sealed::root::Root {
    sealed::root::Root {
        generation: 1,
        written: 0,
        params: ArchiveParams {
            id: ArchiveId([0xab; 16]),
            chunk_size: 0x40000,
            compression: Compression::Zstd { level: 3 },
        },
        encrypt: true,
        configured: vec![],
        volumes: vec![],
        qubes: Default::default(),
        pending: vec![],
        key_hash: Some([0x55; 32]),
        legacy_clear: false,
        pad_sizes: false,
    }
}

/// The documented reference (`request-ref`).
fn chunk_ref() -> ChunkRef {
    ChunkRef {
        addr: 0x40000,
        raw_len: 0x40000,
        hash: [0x5a; 32],
        volume: "v".into(),
        session: "S_000000000001".into(),
        from: 0,
    }
}

/// The documented resumed chunk (`request-resume`).
fn resumed_chunk() -> ResumedChunk {
    ResumedChunk {
        addr: 0x40000,
        raw_len: 0x40000,
        hash: [0x5a; 32],
    }
}

fn session() -> SessionInfo {
    SessionInfo {
        name: "S_000000000001".into(),
        time: 0,
        volume_size: 0x40000,
        chunks: 1,
        zero_chunks: 0,
        stored_bytes: 100,
        ref_chunks: 0,
        ref_bytes: 0,
        prev: None,
    }
}

#[test]
fn every_example_in_format_md_decodes_as_documented() {
    let mut seen = Vec::new();
    for (name, b) in examples() {
        match name.as_str() {
            "request-bye" => assert_eq!(decode_request(&b).unwrap(), Request::Bye),
            "request-list-volumes-first" => assert_eq!(
                decode_request(&b).unwrap(),
                Request::ListVolumes { after: None }
            ),
            "request-list-volumes-after" => assert_eq!(
                decode_request(&b).unwrap(),
                Request::ListVolumes {
                    after: Some("vm-a".into())
                }
            ),
            "request-commit" => assert_eq!(
                decode_request(&b).unwrap(),
                Request::Commit {
                    chunks: 3,
                    zero_chunks: 1
                }
            ),
            "request-ref" => assert_eq!(decode_request(&b).unwrap(), Request::Ref(chunk_ref())),
            "request-unfinished" => assert_eq!(
                decode_request(&b).unwrap(),
                Request::Unfinished { volume: "v".into() }
            ),
            "request-resume" => assert_eq!(
                decode_request(&b).unwrap(),
                Request::Resume(resumed_chunk())
            ),
            "reply-refused" => assert_eq!(
                decode_reply(&b).unwrap(),
                Reply::Refused {
                    addrs: vec![0x40000]
                }
            ),
            "reply-ok" => assert_eq!(decode_reply(&b).unwrap(), Reply::Ok),
            "reply-stream-end" => {
                assert_eq!(decode_reply(&b).unwrap(), Reply::StreamEnd { chunks: 2 })
            }
            "reply-error" => assert_eq!(
                decode_reply(&b).unwrap(),
                Reply::Error(RemoteError {
                    code: ErrorCode::Busy,
                    message: "busy".into()
                })
            ),
            "reply-sessions" => assert_eq!(
                decode_reply(&b).unwrap(),
                Reply::Sessions {
                    sessions: vec![session()],
                    more: false
                }
            ),
            "reply-check-report" => assert_eq!(
                decode_reply(&b).unwrap(),
                Reply::CheckReport {
                    checked: 5,
                    findings: vec![Finding {
                        volume: "v".into(),
                        session: "s".into(),
                        addr: Some(0x10000),
                        kind: FindingKind::Corrupt,
                        detail: "x".into()
                    }],
                    more: 0
                }
            ),
            "frame-request-bye" => {
                assert_eq!(b[4], FrameKind::Request as u8);
                assert!(matches!(frame(&b), Incoming::Request(Request::Bye)));
                // One flipped bit after the length fails the frame.
                for i in 4..b.len() {
                    let mut bad = b.clone();
                    bad[i] ^= 1;
                    let mut r = FrameReader::new(std::io::Cursor::new(bad));
                    assert!(r.next_frame().is_err(), "flip at {i} accepted");
                }
                assert_eq!(HEADER_LEN, 5);
            }
            "request-read-chunks" => assert_eq!(
                decode_request(&b).unwrap(),
                Request::ReadChunks {
                    volume: "v".into(),
                    session: "S_000000000001".into(),
                    addrs: vec![0, 0x40000]
                }
            ),
            "hello-agent" => match frame(&b) {
                Incoming::Hello(h) => assert_eq!(
                    h.body,
                    HelloBody::Agent {
                        archive_id: Some(ArchiveId([0xab; 16])),
                        op: Operation::Backup
                    }
                ),
                other => panic!("{name}: {}", other.name()),
            },
            "hello-receiver" => match frame(&b) {
                Incoming::Hello(h) => assert_eq!(
                    h.body,
                    HelloBody::Receiver {
                        archive: Some(ArchiveParams {
                            id: ArchiveId([0x11; 16]),
                            chunk_size: 0x40000,
                            compression: Compression::Zstd { level: 3 }
                        })
                    }
                ),
                other => panic!("{name}: {}", other.name()),
            },
            "chunk-header" => {
                let (h, data) = decode_chunk_payload(&b).unwrap();
                assert_eq!(
                    h,
                    ChunkHeader {
                        addr: 0x40000,
                        codec: Codec::Sealed,
                        raw_len: 0x40000,
                        hash: [0x5a; 32]
                    }
                );
                assert!(data.is_empty());
            }
            "wrapped-key" => {
                use sealed::keys::{KdfParams, MasterKey, WrappedKey};
                // 125 bytes, and the documented fields where the document
                // puts them (the associated data: the first 53).
                assert_eq!(b.len(), 125);
                assert_eq!(&b[..8], b"SBKKEY01");
                assert_eq!(&b[8..24], &[0xab; 16]);
                assert_eq!(b[24], 1);
                assert_eq!(&b[25..29], &(64u32 * 1024).to_le_bytes());
                assert_eq!(&b[29..33], &3u32.to_le_bytes());
                assert_eq!(&b[33..37], &1u32.to_le_bytes());
                assert_eq!(&b[37..53], &[0x22; 16]);
                assert_eq!(&b[53..77], &[0x33; 24]);
                let w = WrappedKey::decode(&b).unwrap();
                assert_eq!(w.unwrap(b"passphrase").unwrap().bytes(), &[0x11; 32]);
                let again = WrappedKey::wrap(
                    &MasterKey::from_bytes([0x11; 32]),
                    ArchiveId([0xab; 16]),
                    true,
                    b"passphrase",
                    KdfParams {
                        m_kib: 64 * 1024,
                        t: 3,
                        p: 1,
                    },
                    [0x22; 16],
                    [0x33; 24],
                )
                .unwrap();
                assert_eq!(again.encode(), b, "the same inputs wrap to the same bytes");
                // The associated data binds the header: a flipped bit in
                // it (the encrypt flag) fails the unwrap.
                let mut bad = b.clone();
                bad[24] = 0;
                assert!(WrappedKey::decode(&bad)
                    .unwrap()
                    .unwrap(b"passphrase")
                    .is_err());
            }
            "envelope-aead" | "envelope-clear" => {
                use sealed::envelope::{Opener, Place, Sealer};
                use sealed::keys::{Keys, MasterKey, Scope, VolumeId};
                let enc = name == "envelope-aead";
                let keys = std::sync::Arc::new(Keys::derive(
                    &MasterKey::from_bytes([0x11; 32]),
                    ArchiveId([0xab; 16]),
                    enc,
                ));
                let plain = b"hello, sparsebak";
                let at = Place {
                    scope: Scope::volume(VolumeId([0xcd; 16])),
                    addr: 0x40000,
                    raw_len: 16,
                };
                // The documented layout: kind, nonce (kind 1), body, tag
                // or MAC, CRC.
                if enc {
                    assert_eq!((b[0], b.len()), (1, 1 + 24 + 17 + 16 + 4));
                    assert_eq!(&b[1..25], &[0x44; 24]);
                } else {
                    assert_eq!((b[0], b.len()), (3, 1 + 17 + 16 + 4));
                    assert_eq!(&b[1..18], b"\0hello, sparsebak");
                }
                let id = keys.chunk_id(&at.scope, plain);
                let mut buf = [0u8; 16];
                let got = Opener::new(keys.clone())
                    .open(&b, &at, &id, &mut buf)
                    .unwrap();
                assert_eq!(got, plain);
                let mut again = Vec::with_capacity(200);
                Sealer::new(None, keys.clone())
                    .unwrap()
                    .seal(plain, &at, [0x44; 24], &mut again)
                    .unwrap();
                assert_eq!(again, b, "{name}: the same inputs seal to the same bytes");
                // Another address of the scope holds the same chunk (one
                // envelope serves every place that holds these bytes)...
                let mut buf2 = [0u8; 16];
                let moved = Place { addr: 0, ..at };
                assert!(Opener::new(keys.clone())
                    .open(&b, &moved, &id, &mut buf2)
                    .is_ok());
                // ...another scope does not: neither the tag nor the MAC.
                let other = Place {
                    scope: Scope::group("templates"),
                    ..at
                };
                let keys = std::sync::Arc::new(Keys::derive(
                    &MasterKey::from_bytes([0x11; 32]),
                    ArchiveId([0xab; 16]),
                    enc,
                ));
                assert!(Opener::new(keys).open(&b, &other, &id, &mut buf).is_err());
            }
            "chunk-id" | "chunk-id-group" => {
                use sealed::keys::{Scope, VolumeId};
                let keys = sealed::keys::Keys::derive(
                    &sealed::keys::MasterKey::from_bytes([0x11; 32]),
                    ArchiveId([0xab; 16]),
                    true,
                );
                let scope = if name == "chunk-id" {
                    Scope::volume(VolumeId([0xcd; 16]))
                } else {
                    Scope::group("templates")
                };
                assert_eq!(keys.chunk_id(&scope, b"hello, sparsebak").to_vec(), b);
            }
            "scope-group" => {
                assert_eq!(sealed::keys::Scope::group("templates").0.to_vec(), b);
            }
            "root-body" | "root-sealed" => {
                use sealed::root::Root;
                let keys = sealed::keys::Keys::derive(
                    &sealed::keys::MasterKey::from_bytes([0x11; 32]),
                    ArchiveId([0xab; 16]),
                    true,
                );
                let want = first_root();
                if name == "root-body" {
                    let r: Root = protocol::codec::decode_large("root", &b).unwrap();
                    assert_eq!(r, want);
                    assert_eq!(protocol::codec::encode_large(&want), b);
                } else {
                    assert_eq!(&b[..8], b"SBKROOT5");
                    assert_eq!(&b[8..32], &[0x66; 24]);
                    assert_eq!(Root::open(&keys, &b).unwrap(), want);
                    assert_eq!(want.seal(&keys, [0x66; 24]), b);
                }
            }
            other => panic!("FORMAT.md has an example this test does not know: {other}"),
        }
        seen.push(name);
    }
    for want in [
        "request-bye",
        "frame-request-bye",
        "request-list-volumes-first",
        "request-list-volumes-after",
        "request-commit",
        "request-ref",
        "request-unfinished",
        "request-resume",
        "reply-refused",
        "reply-ok",
        "reply-stream-end",
        "reply-error",
        "reply-sessions",
        "reply-check-report",
        "request-read-chunks",
        "hello-agent",
        "hello-receiver",
        "chunk-header",
        "wrapped-key",
        "envelope-aead",
        "envelope-clear",
        "chunk-id",
        "chunk-id-group",
        "scope-group",
        "root-body",
        "root-sealed",
    ] {
        assert!(
            seen.iter().any(|s| s == want),
            "example {want} missing from FORMAT.md"
        );
    }
}

/// The first four bytes of an encoded enum value: its variant index.
fn index(b: Vec<u8>) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[test]
fn enum_indexes_match_the_table() {
    let codes = [
        ErrorCode::NoArchive,
        ErrorCode::ArchiveExists,
        ErrorCode::ArchiveMismatch,
        ErrorCode::NoSuchVolume,
        ErrorCode::NoSuchSession,
        ErrorCode::BadRequest,
        ErrorCode::SessionOrder,
        ErrorCode::Io,
        ErrorCode::NoSpace,
        ErrorCode::Corrupt,
        ErrorCode::Busy,
    ];
    for (i, code) in codes.into_iter().enumerate() {
        assert_eq!(index(protocol::codec::encode(&code)), i as u32, "{code:?}");
    }
    let replies = [
        Reply::Ok,
        Reply::Volumes {
            names: vec![],
            more: false,
        },
        Reply::Committed(session()),
        Reply::StreamEnd { chunks: 0 },
        Reply::Error(RemoteError {
            code: ErrorCode::Io,
            message: String::new(),
        }),
        Reply::Pruned(session()),
        Reply::CheckReport {
            checked: 0,
            findings: vec![],
            more: 0,
        },
        Reply::Data(vec![]),
        Reply::Sessions {
            sessions: vec![],
            more: false,
        },
    ];
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(index(encode_reply(r)), i as u32, "{}", r.name());
    }
    let s = || String::new();
    let requests = [
        Request::Init {
            params: ArchiveParams {
                id: ArchiveId([0; 16]),
                chunk_size: 1 << 16,
                compression: Compression::None,
            },
            key: vec![],
            root: vec![],
            mkdir: false,
        },
        Request::ListVolumes { after: None },
        Request::BeginSession {
            volume: s(),
            session: s(),
            prev: None,
            volume_size: 0,
            time: 0,
        },
        Request::Commit {
            chunks: 0,
            zero_chunks: 0,
        },
        Request::Abort,
        Request::Restore {
            volume: s(),
            session: s(),
        },
        Request::Bye,
        Request::Prune {
            volume: s(),
            session: s(),
        },
        Request::DeleteVolume { volume: s() },
        Request::Check { volume: None },
        Request::GetManifest {
            volume: s(),
            session: s(),
        },
        Request::ListSessions {
            volume: s(),
            after: None,
        },
        Request::GetBlob {
            blob: protocol::message::Blob::Key,
        },
        Request::PutBlob {
            blob: protocol::message::Blob::Root,
            data: vec![],
            last: true,
        },
    ];
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(index(encode_request(r)), i as u32, "{}", r.name());
    }
    let kinds = [
        FindingKind::Missing,
        FindingKind::Corrupt,
        FindingKind::Extra,
        FindingKind::BadSession,
    ];
    for (i, k) in kinds.into_iter().enumerate() {
        assert_eq!(index(protocol::codec::encode(&k)), i as u32, "{k:?}");
    }
    for (i, op) in [Operation::Admin, Operation::Backup, Operation::Restore]
        .into_iter()
        .enumerate()
    {
        assert_eq!(index(protocol::codec::encode(&op)), i as u32, "{op:?}");
    }
    assert_eq!(index(protocol::codec::encode(&Compression::None)), 0);
    assert_eq!(
        index(protocol::codec::encode(&Compression::Zstd { level: 3 })),
        1
    );
}

/// Prints the examples as the code encodes them (`--ignored --nocapture`):
/// how the document's bytes are made after a format change.
#[test]
#[ignore]
fn print_examples() {
    use sealed::envelope::{Place, Sealer};
    use sealed::keys::{Keys, MasterKey, Scope, VolumeId};
    let hex = |b: &[u8]| {
        b.chunks(16)
            .map(|l| {
                l.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let r = encode_request(&Request::Ref(chunk_ref()));
    println!("request-ref\n{}", hex(&r));
    let r = encode_request(&Request::Unfinished { volume: "v".into() });
    println!("request-unfinished\n{}", hex(&r));
    let r = encode_request(&Request::Resume(resumed_chunk()));
    println!("request-resume\n{}", hex(&r));
    for (name, body) in [
        (
            "hello-agent",
            HelloBody::Agent {
                archive_id: Some(ArchiveId([0xab; 16])),
                op: Operation::Backup,
            },
        ),
        (
            "hello-receiver",
            HelloBody::Receiver {
                archive: Some(ArchiveParams {
                    id: ArchiveId([0x11; 16]),
                    chunk_size: 0x40000,
                    compression: Compression::Zstd { level: 3 },
                }),
            },
        ),
    ] {
        let f = protocol::frame::encode_frame(
            protocol::frame::FrameKind::Hello,
            &protocol::message::Hello::new(body).encode(),
        )
        .unwrap();
        println!("{name}\n{}", hex(&f));
    }
    let r = encode_reply(&Reply::Refused {
        addrs: vec![0x40000],
    });
    println!("reply-refused\n{}", hex(&r));
    let r = encode_reply(&Reply::Sessions {
        sessions: vec![session()],
        more: false,
    });
    println!("reply-sessions\n{}", hex(&r));
    for enc in [true, false] {
        let keys = std::sync::Arc::new(Keys::derive(
            &MasterKey::from_bytes([0x11; 32]),
            ArchiveId([0xab; 16]),
            enc,
        ));
        let at = Place {
            scope: Scope::volume(VolumeId([0xcd; 16])),
            addr: 0x40000,
            raw_len: 16,
        };
        let mut out = Vec::new();
        Sealer::new(None, keys.clone())
            .unwrap()
            .seal(b"hello, sparsebak", &at, [0x44; 24], &mut out)
            .unwrap();
        println!("envelope {enc}\n{}", hex(&out));
        if enc {
            println!(
                "chunk-id\n{}",
                hex(&keys.chunk_id(&at.scope, b"hello, sparsebak"))
            );
            let g = Scope::group("templates");
            println!(
                "chunk-id-group\n{}",
                hex(&keys.chunk_id(&g, b"hello, sparsebak"))
            );
            println!("scope-group\n{}", hex(&g.0));
        }
    }
    let keys = Keys::derive(
        &MasterKey::from_bytes([0x11; 32]),
        ArchiveId([0xab; 16]),
        true,
    );
    println!(
        "root-sealed\n{}",
        hex(&first_root().seal(&keys, [0x66; 24]))
    );
}
