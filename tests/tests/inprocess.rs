//! Agent logic against the receiver's `serve` running in a thread of this
//! process over two pipes: the real client, transport framing, stall
//! timeouts, backup pipeline, restore verification, prune and check, with
//! no process spawned. The process-level suites still run the binaries.

use agent::client::Client;
use agent::commands::backup::Backup;
use agent::commands::prune::{prune_volume, Selection};
use agent::commands::{check, restore};
use agent::meta::{ArchiveMeta, ArchiveRecord, MetaStore};
use agent::source::Source;
use agent::target::Target;
use agent::transport::Connection;
use protocol::message::{ArchiveId, ArchiveParams, Compression, Operation};
use receiver::archive::Archive;
use receiver::serve::{serve, ServeOptions};
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
    Archive::init(&archive_dir, params).unwrap();
    let meta = MetaStore::new(&tmp.path().join("meta"))
        .create(ArchiveRecord {
            id: params.id.to_hex(),
            dest: format!("file://{}", archive_dir.display()),
            chunk_size: CS,
            compression: params.compression.to_string(),
            created: 0,
            volumes: Vec::new(),
        })
        .unwrap();
    World {
        _tmp: tmp,
        archive_dir,
        images,
        meta,
        params,
    }
}

/// A client whose receiver is `serve` in a thread, allowing `op`.
fn client(w: &World, op: Operation) -> Client {
    let opts = ServeOptions {
        archive_dir: w.archive_dir.clone(),
        allowed: vec![op],
        lock_wait: Duration::from_secs(5),
    };
    let conn = Connection::in_process(
        "in-process receiver",
        Duration::from_secs(30),
        op,
        Some(w.params.id),
        move |input, output| serve(&opts, input, output).is_ok(),
    )
    .unwrap();
    Client::over(conn, "in-process receiver", &w.params).unwrap()
}

fn backup(w: &World, volume: &str) -> String {
    let src = Source::open(&w.images, &w.meta.rec.id).unwrap();
    let mut c = client(w, Operation::Backup);
    let s = Backup {
        meta: &w.meta,
        local: &src,
        client: &mut c,
        workers: 2,
    }
    .run(volume)
    .unwrap();
    c.finish().unwrap();
    s.session
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
        },
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
    assert_eq!(c.sessions("disk.img").unwrap().len(), 1);
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
    let mut stack = vec![w.archive_dir.join("volumes").join("v.img")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with('x') {
                let mut b = std::fs::read(&p).unwrap();
                b[0] ^= 0x40;
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
        },
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
        Duration::from_millis(300),
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
