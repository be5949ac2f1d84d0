//! Chunk files written by a few threads, with direct I/O where the
//! filesystem allows it.
//!
//! Why: a full backup writes a gigabyte of chunk files. Through the page
//! cache that is one more copy of every byte on the backup qube's CPU, and
//! the disk only starts work at the commit's `syncfs` (dirty-page limits
//! are far above a backup's size), so the stream stalls on the one thread
//! that reads it. Here the connection thread reads each chunk frame
//! straight into a page-aligned buffer of a small pool and hands it on;
//! writer threads create the files and write the data from that buffer
//! with `O_DIRECT` (the sub-block tail, if any, through the page cache).
//! The pool bounds memory and gives back-pressure when the disk is slower
//! than the stream. Durability is unchanged: the commit still waits for
//! every write, then `syncfs`, then the rename.

use crate::error::{Failure, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use sysio::aligned::{AlignedBuf, DIRECT_ALIGN};

/// Writer threads: they mostly wait for the disk, and disks (virtual ones
/// above all) need several writes in flight to reach their speed.
const WRITERS: usize = 8;
/// Buffers: one being filled, one per writer, a few queued.
const POOL: usize = 12;

struct Job {
    path: PathBuf,
    buf: AlignedBuf,
    start: usize,
    len: usize,
}

pub struct ChunkWriter {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<AlignedBuf>,
    threads: Vec<JoinHandle<()>>,
    failed: Arc<Mutex<Option<Failure>>>,
}

impl ChunkWriter {
    /// A writer whose buffers hold `buf_size` bytes each.
    pub fn new(buf_size: usize) -> Self {
        let (free_tx, free) = sync_channel::<AlignedBuf>(POOL);
        for _ in 0..POOL {
            free_tx
                .send(AlignedBuf::new(buf_size))
                .expect("pool has room");
        }
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(POOL);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let failed = Arc::new(Mutex::new(None));
        let direct = Arc::new(AtomicBool::new(true));
        let threads = (0..WRITERS)
            .map(|_| {
                let (jobs_rx, free_tx) = (jobs_rx.clone(), free_tx.clone());
                let (failed, direct) = (failed.clone(), direct.clone());
                std::thread::spawn(move || loop {
                    let job = match jobs_rx.lock().expect("jobs lock").recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    };
                    // After a failure the session is lost: skip the rest.
                    if failed.lock().expect("failure lock").is_none() {
                        let data = &job.buf.whole()[job.start..job.start + job.len];
                        if let Err(e) = write_chunk_file(&job.path, data, &direct) {
                            let mut f = failed.lock().expect("failure lock");
                            f.get_or_insert(Failure::io("write chunk", &job.path, e));
                        }
                    }
                    if free_tx.send(job.buf).is_err() {
                        return;
                    }
                })
            })
            .collect();
        ChunkWriter {
            jobs: Some(jobs_tx),
            free,
            threads,
            failed,
        }
    }

    fn check(&self) -> Result<()> {
        match self.failed.lock().expect("failure lock").take() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// A free buffer (waits for one: the back-pressure). Reports a failed
    /// earlier write.
    pub fn buffer(&mut self) -> Result<AlignedBuf> {
        self.check()?;
        self.free
            .recv()
            .map_err(|_| Failure::new(protocol::message::ErrorCode::Io, "chunk writers stopped"))
    }

    /// Writes `buf.whole()[start..start + len]` to a new file at `path`.
    /// `start` should be page-aligned for direct I/O.
    pub fn write(
        &mut self,
        path: PathBuf,
        buf: AlignedBuf,
        start: usize,
        len: usize,
    ) -> Result<()> {
        self.check()?;
        let job = Job {
            path,
            buf,
            start,
            len,
        };
        self.jobs
            .as_ref()
            .expect("open until finish")
            .send(job)
            .map_err(|_| Failure::new(protocol::message::ErrorCode::Io, "chunk writers stopped"))
    }

    /// Waits for every write; the first failure, if any.
    pub fn finish(mut self) -> Result<()> {
        self.stop();
        self.check()
    }

    fn stop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ChunkWriter {
    /// No writer may still be creating files when the caller removes the
    /// session directory.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates `path` holding `data`: the whole blocks with `O_DIRECT` (when
/// `direct` still says the filesystem takes it and `data` starts aligned),
/// the rest through the page cache.
fn write_chunk_file(path: &Path, data: &[u8], direct: &AtomicBool) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_length_exactly() {
        let dir = std::env::temp_dir().join(format!("sbk-cw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = ChunkWriter::new(3 * DIRECT_ALIGN);
        let lens = [1, 4095, 4096, 4097, 8192, 3 * DIRECT_ALIGN - DIRECT_ALIGN];
        for (i, &len) in lens.iter().enumerate() {
            let mut b = w.buffer().unwrap();
            let start = DIRECT_ALIGN;
            for (k, x) in b.whole_mut()[start..start + len].iter_mut().enumerate() {
                *x = (k * 7 + i) as u8;
            }
            w.write(dir.join(format!("f{i}")), b, start, len).unwrap();
        }
        w.finish().unwrap();
        for (i, &len) in lens.iter().enumerate() {
            let got = std::fs::read(dir.join(format!("f{i}"))).unwrap();
            let want: Vec<u8> = (0..len).map(|k| (k * 7 + i) as u8).collect();
            assert_eq!(got, want, "length {len}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_reported() {
        let mut w = ChunkWriter::new(DIRECT_ALIGN);
        let b = w.buffer().unwrap();
        let path = PathBuf::from("/nonexistent-sparsebak-dir/x");
        w.write(path, b, 0, 10).unwrap();
        let e = w.finish().unwrap_err();
        assert!(e.message.contains("nonexistent-sparsebak-dir"), "{e}");
    }
}
