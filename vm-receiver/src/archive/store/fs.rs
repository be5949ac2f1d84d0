//! The filesystem store: a chunk is a file named by its address, fanned out
//! by address so no directory holds more than 4096 chunks (256 MiB of
//! volume per directory at the smallest chunk size):
//! `SESSION/cHHHHHHH/xHHHHHHHHHHHHHHHH` (see `vm-receiver/FORMAT.md`).

use super::{ChunkStore, StoredChunks};
use std::fs;
use std::path::{Path, PathBuf};

/// Bits of address covered by one fan-out directory.
const FANOUT_SHIFT: u32 = 28;

pub struct FsStore;

fn fanout(addr: u64) -> u64 {
    addr >> FANOUT_SHIFT
}

pub fn fanout_dir_name(addr: u64) -> String {
    format!("c{:07x}", fanout(addr))
}

pub fn chunk_file_name(addr: u64) -> String {
    format!("x{addr:016x}")
}

/// The fan-out group a directory name stands for.
fn parse_fanout(name: &str) -> Option<u64> {
    name.strip_prefix('c')
        .filter(|h| h.len() >= 7 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
}

/// The address a chunk file name stands for, if it belongs in group `fan`.
fn parse_chunk(name: &str, fan: u64) -> Option<u64> {
    name.strip_prefix('x')
        .filter(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .filter(|&a| fanout(a) == fan)
}

fn sorted_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut v = Vec::new();
    for ent in fs::read_dir(dir)? {
        v.push(ent?.file_name().to_string_lossy().into_owned());
    }
    v.sort();
    Ok(v)
}

impl ChunkStore for FsStore {
    fn chunk_path(&self, session: &Path, addr: u64) -> PathBuf {
        session
            .join(fanout_dir_name(addr))
            .join(chunk_file_name(addr))
    }

    fn make_room(&self, session: &Path, addr: u64, last: &mut Option<u64>) -> std::io::Result<()> {
        let fan = fanout(addr);
        if *last != Some(fan) {
            fs::create_dir_all(session.join(fanout_dir_name(addr)))?;
            *last = Some(fan);
        }
        Ok(())
    }

    fn move_chunk(&self, from: &Path, to: &Path, addr: u64) -> std::io::Result<bool> {
        let dst = self.chunk_path(to, addr);
        if dst.exists() {
            return Ok(false);
        }
        fs::create_dir_all(to.join(fanout_dir_name(addr)))?;
        fs::rename(self.chunk_path(from, addr), dst)?;
        Ok(true)
    }

    fn list(&self, session: &Path, records: &[&str]) -> std::io::Result<StoredChunks> {
        let mut out = StoredChunks::default();
        for name in sorted_names(session)? {
            if records.contains(&name.as_str()) {
                continue;
            }
            let sub = session.join(&name);
            let Some(fan) = parse_fanout(&name).filter(|_| sub.is_dir()) else {
                out.foreign.push(sub);
                continue;
            };
            for f in sorted_names(&sub)? {
                match parse_chunk(&f, fan) {
                    Some(a) => out.addrs.push(a),
                    None => out.foreign.push(sub.join(f)),
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let p = FsStore.chunk_path(Path::new("/a"), 0x1_2345_0000);
        assert_eq!(p, Path::new("/a/c0000012/x0000000123450000"));
        assert_eq!(fanout_dir_name(u64::MAX), "cfffffffff");
        assert_eq!(parse_chunk("x0000000123450000", 0x12), Some(0x1_2345_0000));
        assert_eq!(parse_chunk("x0000000123450000", 0x13), None);
        assert_eq!(parse_chunk("x+000000123450000", 0), None);
        assert_eq!(parse_fanout("c0000012"), Some(0x12));
        assert_eq!(parse_fanout("c+000012"), None);
    }

    #[test]
    fn list_and_move() {
        let d = std::env::temp_dir().join(format!("fsstore-{}", std::process::id()));
        let (p, q) = (d.join("p"), d.join("q"));
        let _ = fs::remove_dir_all(&d);
        let mut last = None;
        for a in [0u64, 1 << 28, 3 << 28] {
            FsStore.make_room(&p, a, &mut last).unwrap();
            fs::write(FsStore.chunk_path(&p, a), b"x").unwrap();
        }
        fs::write(p.join("manifest"), b"m").unwrap();
        fs::write(p.join("stray"), b"s").unwrap();
        let l = FsStore.list(&p, &["manifest"]).unwrap();
        assert_eq!(l.addrs, vec![0, 1 << 28, 3 << 28]);
        assert_eq!(l.foreign, vec![p.join("stray")]);
        assert!(FsStore.move_chunk(&p, &q, 1 << 28).unwrap());
        assert!(FsStore.chunk_path(&q, 1 << 28).exists());
        fs::write(FsStore.chunk_path(&p, 1 << 28), b"y").unwrap();
        assert!(!FsStore.move_chunk(&p, &q, 1 << 28).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }
}
