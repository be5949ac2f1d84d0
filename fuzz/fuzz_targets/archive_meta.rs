//! The receiver's on-disk records, read the way the receiver reads them:
//! the archive info file, a session's info, and a prune journal (which the
//! receiver acts on when it opens the archive). The first byte picks the
//! file; the rest is its content.
#![no_main]
use libfuzzer_sys::fuzz_target;
use receiver::archive::{prune, session, Archive};
use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The volume's directory: a volume id as the receiver accepts it.
const VOL: &str = "volumes/0123456789abcdef0123456789abcdef";

/// A scratch archive made once per process (init syncs; per-input work
/// only writes the file under test).
fn scratch() -> &'static (PathBuf, Archive) {
    static S: OnceLock<(PathBuf, Archive)> = OnceLock::new();
    S.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("sbk-fuzz-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let params = protocol::message::ArchiveParams {
            id: protocol::message::ArchiveId([1; 16]),
            chunk_size: 65536,
            compression: protocol::message::Compression::None,
        };
        let a = Archive::init(&d.join("a"), params, b"key", b"root", true).unwrap();
        fs::create_dir_all(d.join("a").join(VOL).join("S_000000000001")).unwrap();
        fs::create_dir_all(d.join("b")).unwrap();
        (d, a)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let (root, a) = scratch();
    match which % 3 {
        0 => {
            fs::write(root.join("b/sparsebak.archive"), body).unwrap();
            let _ = Archive::open(&root.join("b"));
        }
        1 => {
            let sdir = root.join("a").join(VOL).join("S_000000000001");
            fs::write(sdir.join(session::INFO_FILE), body).unwrap();
            let _ = session::read_info(&sdir);
        }
        _ => {
            let j = root.join("a").join(VOL).join(prune::JOURNAL_FILE);
            fs::write(&j, body).unwrap();
            // As a writer finishing a crashed prune does.
            let _ = a.recover(true);
            let _ = fs::remove_file(&j);
        }
    }
});
