//! Chunks written by a few threads, through the archive's store.
//!
//! Why: a full backup writes a gigabyte of chunks; written one at a time
//! on the connection thread, the stream would stall on every disk wait.
//! Here the connection thread reads each chunk frame straight into a
//! page-aligned buffer of a small pool and hands it on; writer threads
//! have the store write the data from that buffer (the filesystem store
//! with `O_DIRECT`, so no copy goes through the page cache). The pool
//! bounds memory and gives back-pressure when the disk is slower than the
//! stream. Durability is unchanged: the commit still waits for every
//! write, then `syncfs`, then the rename.

use super::store::ChunkStore;
use crate::error::{Failure, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use sysio::aligned::AlignedBuf;

/// Writer threads: they mostly wait for the disk, and disks (virtual ones
/// above all) need several writes in flight to reach their speed.
const WRITERS: usize = 8;
/// Buffers: one being filled, one per writer, a few queued.
const POOL: usize = 12;

struct Job {
    addr: u64,
    raw_len: u32,
    buf: AlignedBuf,
    start: usize,
    len: usize,
}

/// Addresses queued and not yet written, and a signal when one is.
type Pending = Arc<(Mutex<BTreeSet<u64>>, Condvar)>;

pub struct ChunkWriter {
    jobs: Option<SyncSender<Job>>,
    free: Receiver<AlignedBuf>,
    threads: Vec<JoinHandle<()>>,
    failed: Arc<Mutex<Option<Failure>>>,
    pending: Pending,
}

impl ChunkWriter {
    /// A writer of the session at `session` in `store`, whose buffers hold
    /// `buf_size` bytes each.
    pub fn new(store: Arc<dyn ChunkStore>, session: PathBuf, buf_size: usize) -> Self {
        let (free_tx, free) = sync_channel::<AlignedBuf>(POOL);
        for _ in 0..POOL {
            free_tx
                .send(AlignedBuf::new(buf_size))
                .expect("pool has room");
        }
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(POOL);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let failed = Arc::new(Mutex::new(None));
        let pending: Pending = Arc::new((Mutex::new(BTreeSet::new()), Condvar::new()));
        let session = Arc::new(session);
        let threads = (0..WRITERS)
            .map(|_| {
                let (jobs_rx, free_tx) = (jobs_rx.clone(), free_tx.clone());
                let pending = pending.clone();
                let (failed, store, session) = (failed.clone(), store.clone(), session.clone());
                let named = std::thread::Builder::new().name("sbk-write".into());
                named
                    .spawn(move || loop {
                        let job = match jobs_rx.lock().expect("jobs lock").recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        // After a failure the session is lost: skip the rest.
                        if failed.lock().expect("failure lock").is_none() {
                            let data = &job.buf.whole()[job.start..job.start + job.len];
                            // What the receiver can check without a key (size,
                            // kind, CRC), here on the writer threads: a chunk it
                            // could never give back whole is refused now, not
                            // found by a later arch-check.
                            if let Err(e) =
                                protocol::envelope::check_stored(data, job.raw_len as usize)
                            {
                                let mut f = failed.lock().expect("failure lock");
                                f.get_or_insert(Failure::new(
                                    protocol::message::ErrorCode::BadRequest,
                                    format!("chunk {:#x}: {e}: refused", job.addr),
                                ));
                            } else if let Err(e) = store.write(&session, job.addr, data) {
                                let path = store.chunk_path(&session, job.addr);
                                let mut f = failed.lock().expect("failure lock");
                                f.get_or_insert(Failure::io("write chunk", &path, e));
                            }
                        }
                        let (set, done) = &*pending;
                        set.lock().expect("pending lock").remove(&job.addr);
                        done.notify_all();
                        if free_tx.send(job.buf).is_err() {
                            return;
                        }
                    })
                    .expect("spawning a writer thread")
            })
            .collect();
        ChunkWriter {
            jobs: Some(jobs_tx),
            free,
            threads,
            failed,
            pending,
        }
    }

    /// Waits until the chunk at `addr`, if it was queued, is written (or
    /// its write failed: reported here). A reference to a chunk of the
    /// session being written links its file only once it is there.
    pub fn wait_written(&mut self, addr: u64) -> Result<()> {
        let (set, done) = &*self.pending;
        let mut s = set.lock().expect("pending lock");
        while s.contains(&addr) {
            s = done.wait(s).expect("pending lock");
        }
        drop(s);
        self.check()
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

    /// Writes `buf.whole()[start..start + len]`, the envelope of a chunk
    /// of `raw_len` bytes, as the chunk at `addr` (after checking its
    /// frame and CRC). `start` should be page-aligned for direct I/O.
    pub fn write(
        &mut self,
        addr: u64,
        raw_len: u32,
        buf: AlignedBuf,
        start: usize,
        len: usize,
    ) -> Result<()> {
        self.check()?;
        self.pending.0.lock().expect("pending lock").insert(addr);
        let job = Job {
            addr,
            raw_len,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::store::fs::FsStore;
    use sysio::aligned::DIRECT_ALIGN;

    /// A writer into `dir` whose chunks at addresses 0, 1, 2… all land in
    /// one fan-out directory.
    fn writer(dir: &std::path::Path, buf: usize) -> (ChunkWriter, Arc<dyn ChunkStore>) {
        let store: Arc<dyn ChunkStore> = Arc::new(FsStore::default());
        let mut last = None;
        store.make_room(dir, 0, &mut last).unwrap();
        (
            ChunkWriter::new(store.clone(), dir.to_path_buf(), buf),
            store,
        )
    }

    /// A well-formed clear envelope (kind 2, stored body) of `len` bytes
    /// in all, its payload a pattern of `seed`.
    fn envelope(len: usize, seed: usize) -> Vec<u8> {
        let mut e = vec![protocol::envelope::KIND_CLEAR, 0];
        e.extend((0..len - 6).map(|k| (k * 7 + seed) as u8));
        let crc = crc32fast::hash(&e).to_le_bytes();
        e.extend_from_slice(&crc);
        e
    }

    fn put(w: &mut ChunkWriter, addr: u64, env: &[u8]) {
        let mut b = w.buffer().unwrap();
        let start = DIRECT_ALIGN;
        b.whole_mut()[start..start + env.len()].copy_from_slice(env);
        w.write(addr, env.len() as u32, b, start, env.len())
            .unwrap();
    }

    #[test]
    fn writes_every_length_exactly() {
        let dir = std::env::temp_dir().join(format!("sbk-cw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut w, store) = writer(&dir, 3 * DIRECT_ALIGN);
        let lens = [6, 4095, 4096, 4097, 8192, 3 * DIRECT_ALIGN - DIRECT_ALIGN];
        for (i, &len) in lens.iter().enumerate() {
            put(&mut w, i as u64, &envelope(len, i));
        }
        w.finish().unwrap();
        for (i, &len) in lens.iter().enumerate() {
            let got = std::fs::read(store.chunk_path(&dir, i as u64)).unwrap();
            assert_eq!(got, envelope(len, i), "length {len}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_envelope_the_receiver_cannot_keep_is_refused() {
        let dir = std::env::temp_dir().join(format!("sbk-cw-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut w, store) = writer(&dir, 2 * DIRECT_ALIGN);
        let mut bad = envelope(100, 1);
        bad[50] ^= 1;
        put(&mut w, 0x30000, &bad);
        let e = w.finish().unwrap_err();
        assert!(
            e.message.contains("chunk 0x30000") && e.message.contains("refused"),
            "{e}"
        );
        assert!(!store.chunk_path(&dir, 0x30000).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_is_reported() {
        let store: Arc<dyn ChunkStore> = Arc::new(FsStore::default());
        let dir = PathBuf::from("/nonexistent-sparsebak-dir");
        let mut w = ChunkWriter::new(store, dir, 2 * DIRECT_ALIGN);
        put(&mut w, 0, &envelope(10, 0));
        let e = w.finish().unwrap_err();
        assert!(e.message.contains("nonexistent-sparsebak-dir"), "{e}");
    }
}
