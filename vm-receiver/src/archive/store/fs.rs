//! The filesystem store: a chunk is a file named by its address, fanned out
//! by address so no directory holds more than 4096 chunks (256 MiB of
//! volume per directory at the smallest chunk size):
//! `SESSION/cHHHHHHH/xHHHHHHHHHHHHHHHH` (see `vm-receiver/FORMAT.md`).

//!
//! Chunk data moves with `O_DIRECT` where the filesystem takes it: a full
//! backup writes a gigabyte of chunk files, and through the page cache that
//! is one more copy of every byte on the backup qube's CPU, with the disk
//! only starting work at the commit's `syncfs`. Restores read files written
//! days ago, uncached. The first refusal (`EINVAL`) switches this store to
//! the page cache for good.

use super::{ChunkStore, ReadFailure, StoredChunks};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use sysio::aligned::{read_direct, AlignedBuf, DIRECT_ALIGN};

/// Bits of address covered by one fan-out directory.
const FANOUT_SHIFT: u32 = 28;

pub struct FsStore {
    /// Whether direct writes and reads are still worth trying here.
    direct_write: AtomicBool,
    direct_read: AtomicBool,
}

impl Default for FsStore {
    fn default() -> Self {
        FsStore {
            direct_write: AtomicBool::new(true),
            direct_read: AtomicBool::new(true),
        }
    }
}

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

    fn write(&self, session: &Path, addr: u64, data: &[u8]) -> std::io::Result<()> {
        write_file(&self.chunk_path(session, addr), data, &self.direct_write)
    }

    fn read(
        &self,
        session: &Path,
        addr: u64,
        buf: &mut AlignedBuf,
        max: usize,
    ) -> Result<(), ReadFailure> {
        read_file(&self.chunk_path(session, addr), buf, max, &self.direct_read)
    }

    fn chunk_len(&self, session: &Path, addr: u64) -> std::io::Result<u64> {
        Ok(fs::metadata(self.chunk_path(session, addr))?.len())
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

    fn replace_chunk(&self, from: &Path, to: &Path, addr: u64) -> std::io::Result<bool> {
        let src = self.chunk_path(from, addr);
        fs::create_dir_all(to.join(fanout_dir_name(addr)))?;
        match fs::rename(&src, self.chunk_path(to, addr)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !src.exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn link(&self, from: &Path, from_addr: u64, to: &Path, to_addr: u64) -> std::io::Result<u64> {
        let dst = self.chunk_path(to, to_addr);
        fs::hard_link(self.chunk_path(from, from_addr), &dst)?;
        Ok(fs::metadata(dst)?.len())
    }

    fn remove_chunk(&self, session: &Path, addr: u64) -> std::io::Result<bool> {
        match fs::remove_file(self.chunk_path(session, addr)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
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

/// Creates `path` holding `data`: the whole blocks with `O_DIRECT` (when
/// `direct` still says the filesystem takes it and `data` starts aligned),
/// the rest through the page cache.
fn write_file(path: &Path, data: &[u8], direct: &AtomicBool) -> std::io::Result<()> {
    let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
    let aligned = (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN);
    if whole > 0 && aligned && direct.load(Ordering::Relaxed) {
        match OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => match f.write_all_at(&data[..whole], 0) {
                Ok(()) => {
                    if whole < data.len() {
                        clear_direct(&f)?;
                        f.write_all_at(&data[whole..], whole as u64)?;
                    }
                    return Ok(());
                }
                Err(e) if sysio::direct::refused(&e) => {
                    direct.store(false, Ordering::Relaxed);
                    clear_direct(&f)?;
                    return f.write_all_at(data, 0);
                }
                Err(e) => return Err(e),
            },
            Err(e) if sysio::direct::refused(&e) => {
                direct.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    File::create(path)?.write_all_at(data, 0)
}

fn clear_direct(f: &File) -> std::io::Result<()> {
    let fd = f.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_DIRECT))?;
    Ok(())
}

/// Reads up to `max` bytes of `path` into `buf` (its length is set to what
/// was read).
fn read_file(
    path: &Path,
    buf: &mut AlignedBuf,
    max: usize,
    direct: &AtomicBool,
) -> Result<(), ReadFailure> {
    if direct.load(Ordering::Relaxed) {
        match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => {
                let want = max.next_multiple_of(DIRECT_ALIGN);
                match read_direct(|b, at| f.read_at(b, at), &mut buf.whole_mut()[..want], 0) {
                    Ok(n) => {
                        buf.fill(n.min(max));
                        return Ok(());
                    }
                    Err(e) if sysio::direct::refused(&e) => {
                        direct.store(false, Ordering::Relaxed);
                    }
                    Err(e) => return Err(ReadFailure::Read(e)),
                }
            }
            Err(e) if sysio::direct::refused(&e) => {
                direct.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(ReadFailure::Open(e)),
        }
    }
    let f = File::open(path).map_err(ReadFailure::Open)?;
    let mut n = 0;
    let dst = buf.whole_mut();
    let mut r = f.take(max as u64);
    loop {
        match r.read(&mut dst[n..max]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadFailure::Read(e)),
        }
    }
    buf.fill(n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let p = FsStore::default().chunk_path(Path::new("/a"), 0x1_2345_0000);
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
        let st = FsStore::default();
        let mut last = None;
        for a in [0u64, 1 << 28, 3 << 28] {
            st.make_room(&p, a, &mut last).unwrap();
            st.write(&p, a, b"x").unwrap();
        }
        fs::write(p.join("manifest"), b"m").unwrap();
        fs::write(p.join("stray"), b"s").unwrap();
        let l = st.list(&p, &["manifest"]).unwrap();
        assert_eq!(l.addrs, vec![0, 1 << 28, 3 << 28]);
        assert_eq!(l.foreign, vec![p.join("stray")]);
        assert!(st.move_chunk(&p, &q, 1 << 28).unwrap());
        assert!(st.chunk_path(&q, 1 << 28).exists());
        fs::write(st.chunk_path(&p, 1 << 28), b"y").unwrap();
        assert!(!st.move_chunk(&p, &q, 1 << 28).unwrap());
        // Replacing goes over q's chunk; a second time finds nothing to move.
        assert!(st.replace_chunk(&p, &q, 1 << 28).unwrap());
        assert_eq!(fs::read(st.chunk_path(&q, 1 << 28)).unwrap(), b"y");
        assert!(!st.replace_chunk(&p, &q, 1 << 28).unwrap());
        assert!(st.replace_chunk(&p, &q, 3 << 28).unwrap());
        assert!(st.remove_chunk(&q, 3 << 28).unwrap());
        assert!(!st.remove_chunk(&q, 3 << 28).unwrap());
        fs::remove_dir_all(&d).unwrap();
    }
}
