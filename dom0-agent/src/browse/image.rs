//! A volume as of a session, read at any offset: the bytes a restore of
//! that session would write, fetched a few chunks at a time.
//!
//! Order of events for one read:
//! 1. dom0's own view of the session (built once from its manifests)
//!    says, for each chunk the read touches, whether it is zero (answered
//!    at once, nothing fetched) or which session holds it and its keyed id.
//! 2. Chunks in the cache (verified plain bytes) are used as they are;
//!    a chunk another read is already fetching is waited for.
//! 3. The rest, plus read-ahead when reads are sequential, are asked of
//!    the receiver (`ChunkSource`) per session, at most `MAX_READ_CHUNKS`
//!    a request.
//! 4. Every chunk that comes back is opened and verified against dom0's
//!    manifest (`restore::open_chunk`, as in a restore) before a byte of
//!    it is used or cached.
//! 5. If a chunk the read needs is missing, fails to verify or cannot be
//!    fetched, the read fails (EIO to the kernel), naming the chunk;
//!    unverified bytes are never returned. Later reads of other chunks are
//!    not affected: a connection that failed is dropped and made again on
//!    the next fetch.

use super::cache::ChunkCache;
use crate::commands::restore::{open_chunk, VerifyError};
use anyhow::Result;
use protocol::chunk::{ChunkHeader, Codec, Hash};
use protocol::manifest::Entry;
use protocol::message::MAX_READ_CHUNKS;
use sealed::envelope::{Opener, Place};
use sealed::keys::{Keys, Scope};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Bytes of the volume fetched ahead of a sequential read (in chunks:
/// at least 16), in batches of half that at least.
pub const READ_AHEAD_BYTES: u64 = 16 << 20;

/// What a source sent for one request: a frame per chunk it had.
pub type Frames = Vec<(ChunkHeader, Vec<u8>)>;

/// Where chunk envelopes come from: the receiver (`Client::read_chunks`),
/// or memory in tests.
pub trait ChunkSource: Send {
    /// Asks for each `(session, addrs)` (addresses ascending) and hands
    /// each answer to `each`, in order, as it arrives: all requests are
    /// sent first, so the source never waits between them. After a
    /// failure, the requests not answered yet fail too.
    fn fetch(&mut self, requests: &[(&str, Vec<u64>)], each: &mut dyn FnMut(usize, Result<Frames>));
    /// Called after a failed fetch: the next one starts afresh (a new
    /// connection), since the failed one may have left a reply half read.
    fn reset(&mut self) {}
    /// Called now and then: a source unused for `after` may let go of
    /// what it holds (the connection, and with it the archive's lock).
    fn release_idle(&mut self, _after: std::time::Duration) {}
}

/// A chunk that holds data, from dom0's view of the session.
struct Located {
    addr: u64,
    /// Index into `SessionImage::sessions`.
    session: u32,
    hash: Hash,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Chunk(#[from] VerifyError),
    #[error(
        "volume '{volume}' session {session}: fetching the chunk at {addr:#x} failed: {detail}"
    )]
    Fetch {
        volume: String,
        session: String,
        addr: u64,
        detail: String,
    },
}

/// Counts for `close` and the tests.
#[derive(Default, Debug, serde::Serialize, Clone, Copy)]
pub struct Stats {
    pub reads: u64,
    /// `ReadChunks` requests sent.
    pub requests: u64,
    /// Chunks that came back and verified.
    pub verified: u64,
    /// Chunks answered from the cache.
    pub cache_hits: u64,
    /// Reads that failed (EIO).
    pub failed_reads: u64,
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    requests: AtomicU64,
    verified: AtomicU64,
    cache_hits: AtomicU64,
    failed_reads: AtomicU64,
}

struct State {
    cache: ChunkCache,
    /// Chunks some read is fetching now.
    inflight: HashSet<u64>,
}

/// A chunk's verified plain bytes, or why there are none.
type Plain = Result<Arc<[u8]>, ReadError>;
type Fetched = HashMap<u64, Plain>;

pub struct SessionImage {
    volume: String,
    scope: Scope,
    size: u64,
    cs: u64,
    /// The sessions the view is made of, oldest first.
    sessions: Vec<String>,
    index: Vec<Located>,
    keys: Arc<Keys>,
    source: Mutex<Box<dyn ChunkSource>>,
    state: Mutex<State>,
    fetched: Condvar,
    /// Read-ahead only where the cache holds two windows (or the whole
    /// volume twice): fetched chunks it would drop at once are fetched for
    /// nothing.
    cache_holds_window: bool,
    /// Where the last read ended: a read starting near it is sequential.
    last_end: AtomicU64,
    counters: Counters,
    /// Told of every chunk a read needed and could not verify.
    on_bad: Box<dyn Fn(&VerifyError) + Send + Sync>,
}

pub struct ImageSpec {
    pub volume: String,
    pub scope: Scope,
    pub volume_size: u64,
    pub chunk_size: u64,
    pub sessions: Vec<String>,
    pub keys: Arc<Keys>,
    pub cache_bytes: usize,
}

impl SessionImage {
    /// `view`: the merged view of the session (ascending addresses, with
    /// the index of the session each entry is from), as `meta.view` gives.
    pub fn new(
        spec: ImageSpec,
        view: impl Iterator<Item = Result<(usize, Entry)>>,
        source: Box<dyn ChunkSource>,
        on_bad: Box<dyn Fn(&VerifyError) + Send + Sync>,
    ) -> Result<Self> {
        let mut index = Vec::new();
        for item in view {
            let (idx, e) = item?;
            if e.codec != Codec::Zero && e.addr < spec.volume_size {
                index.push(Located {
                    addr: e.addr,
                    session: idx as u32,
                    hash: e.hash,
                });
            }
        }
        index.shrink_to_fit();
        let window =
            ((READ_AHEAD_BYTES / spec.chunk_size).max(16) * spec.chunk_size).min(spec.volume_size);
        Ok(SessionImage {
            cache_holds_window: spec.cache_bytes as u64 >= 2 * window,
            volume: spec.volume,
            scope: spec.scope,
            size: spec.volume_size,
            cs: spec.chunk_size,
            sessions: spec.sessions,
            index,
            keys: spec.keys,
            source: Mutex::new(source),
            state: Mutex::new(State {
                cache: ChunkCache::new(spec.cache_bytes),
                inflight: HashSet::new(),
            }),
            fetched: Condvar::new(),
            last_end: AtomicU64::new(0),
            counters: Counters::default(),
            on_bad,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunks that hold data (the rest read as zeros, at no cost).
    pub fn data_chunks(&self) -> u64 {
        self.index.len() as u64
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            reads: c.reads.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            verified: c.verified.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            failed_reads: c.failed_reads.load(Ordering::Relaxed),
        }
    }

    /// Lets the source release what it holds if unused for `after`; never
    /// waits for a fetch in progress (then it is not idle).
    pub fn release_idle(&self, after: std::time::Duration) {
        if let Ok(mut src) = self.source.try_lock() {
            src.release_idle(after);
        }
    }

    /// Bytes `[offset, offset + len)` of the volume (fewer at its end).
    pub fn read(self: &Arc<Self>, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let r = self.read_inner(offset, len);
        if r.is_err() {
            self.counters.failed_reads.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn read_inner(self: &Arc<Self>, offset: u64, len: usize) -> Result<Vec<u8>, ReadError> {
        if offset >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(len as u64).min(self.size);
        let first = offset - offset % self.cs;
        // The kernel sends neighbouring reads of one scan in any order:
        // near the last end counts as sequential.
        let prev = self.last_end.swap(end, Ordering::Relaxed);
        let sequential = prev.abs_diff(offset) <= 2 * self.cs;
        let lo = self.index.partition_point(|l| l.addr < first);
        let hi = self.index.partition_point(|l| l.addr < end);
        let mut have: HashMap<u64, Arc<[u8]>> = HashMap::new();
        let mut failure: Option<ReadError> = None;
        loop {
            let (want, ahead, waiting) = self.claim(lo, hi, end, sequential, &mut have);
            // Read-ahead is fetched and verified beside this read (and the
            // next ones, which wait for what they need of it).
            if !ahead.is_empty() {
                let me = self.clone();
                std::thread::spawn(move || me.read_ahead(ahead));
            }
            if !want.is_empty() {
                self.fetch(&want, |group, got| {
                    if let Some(e) = self.settle(group, got, Some(&mut have)) {
                        failure.get_or_insert(e);
                    }
                });
            }
            if failure.is_some() || !waiting {
                break;
            }
            // Another read (or read-ahead) is fetching some of ours: wait
            // for it, then take what it cached (or fetch what it could not).
            let st = self.state.lock().expect("image state");
            let pending = |st: &State| {
                self.index[lo..hi]
                    .iter()
                    .any(|l| !have.contains_key(&l.addr) && st.inflight.contains(&l.addr))
            };
            let _st = self
                .fetched
                .wait_while(st, |st| pending(st))
                .expect("image state");
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let mut out = vec![0u8; (end - offset) as usize];
        for l in &self.index[lo..hi] {
            let d = &have[&l.addr];
            let (from, to) = (l.addr.max(offset), (l.addr + d.len() as u64).min(end));
            if from < to {
                out[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&d[(from - l.addr) as usize..(to - l.addr) as usize]);
            }
        }
        Ok(out)
    }

    /// Puts what a fetch of `list` got in the cache (and in `have`, for
    /// the read that needs it), releases the claims and wakes the waiting
    /// reads. Returns the first failure of a needed chunk, which is
    /// reported as damage where it is one; read-ahead failures are left
    /// for the read that needs the chunk to meet and report.
    fn settle(
        &self,
        list: &[usize],
        mut got: Fetched,
        mut have: Option<&mut HashMap<u64, Arc<[u8]>>>,
    ) -> Option<ReadError> {
        let mut failure = None;
        let mut st = self.state.lock().expect("image state");
        for &i in list {
            let addr = self.index[i].addr;
            st.inflight.remove(&addr);
            match (got.remove(&addr), have.as_deref_mut()) {
                (Some(Ok(d)), have) => {
                    st.cache.insert(addr, d.clone());
                    if let Some(h) = have {
                        h.insert(addr, d);
                    }
                }
                (Some(Err(e)), Some(_)) => {
                    if let ReadError::Chunk(ve) = &e {
                        (self.on_bad)(ve);
                    }
                    failure.get_or_insert(e);
                }
                _ => {}
            }
        }
        drop(st);
        self.fetched.notify_all();
        failure
    }

    /// Takes what the cache has into `have`, and claims (marks in flight)
    /// the chunks this read must fetch, and read-ahead. Returns their
    /// index positions, and whether some it needs are in flight already.
    fn claim(
        &self,
        lo: usize,
        hi: usize,
        end: u64,
        sequential: bool,
        have: &mut HashMap<u64, Arc<[u8]>>,
    ) -> (Vec<usize>, Vec<usize>, bool) {
        let mut st = self.state.lock().expect("image state");
        let (mut want, mut ahead, mut waiting) = (Vec::new(), Vec::new(), false);
        for i in lo..hi {
            let addr = self.index[i].addr;
            if have.contains_key(&addr) {
                continue;
            }
            if let Some(d) = st.cache.get(addr) {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                have.insert(addr, d);
            } else if st.inflight.contains(&addr) {
                waiting = true;
            } else {
                st.inflight.insert(addr);
                want.push(i);
            }
        }
        if sequential && self.cache_holds_window {
            ahead = self.claim_ahead(&mut st, hi, end, !want.is_empty());
        }
        (want, ahead, waiting)
    }

    /// Read-ahead: of the next window's worth of the volume after `end`
    /// (`hi`: the first chunk there), the chunks that hold data and that
    /// nobody has or is fetching, claimed; in batches of a quarter window
    /// at least, unless `any` (a fetch is made anyway).
    fn claim_ahead(&self, st: &mut State, hi: usize, end: u64, any: bool) -> Vec<usize> {
        let window = self.ahead_chunks();
        let limit = end.saturating_add(window as u64 * self.cs);
        let mut ahead = Vec::new();
        for i in hi..(hi + window).min(self.index.len()) {
            let addr = self.index[i].addr;
            if addr >= limit {
                break;
            }
            if !st.cache.contains(addr) && !st.inflight.contains(&addr) {
                ahead.push(i);
            }
        }
        if ahead.len() < window / 4 && !any {
            ahead.clear();
        }
        for &i in &ahead {
            st.inflight.insert(self.index[i].addr);
        }
        ahead
    }

    /// Fetches read-ahead, then keeps the window ahead of where the
    /// reads are, as long as they go on from there: the receiver need not
    /// wait for the next read to be asked for more.
    fn read_ahead(self: &Arc<Self>, mut ahead: Vec<usize>) {
        while !ahead.is_empty() {
            let before = self.last_end.load(Ordering::Relaxed);
            self.fetch(&ahead, |group, got| {
                self.settle(group, got, None);
            });
            let end = self.last_end.load(Ordering::Relaxed);
            if end == before {
                // The reads paused: the next one asks for more if it
                // needs it; fetching on would only refill what the cache
                // may already be dropping.
                return;
            }
            let hi = self.index.partition_point(|l| l.addr < end);
            let mut st = self.state.lock().expect("image state");
            ahead = self.claim_ahead(&mut st, hi, end, false);
        }
    }

    /// Fetches the chunks at index positions `list` (ascending), in
    /// pipelined requests, and verifies each request's chunks as its
    /// answer arrives, beside the transfer of the next; `done` gets each
    /// request's chunks and, per chunk, its plain bytes or the error.
    fn fetch(&self, list: &[usize], mut done: impl FnMut(&[usize], Fetched) + Send) {
        let groups = self.requests(list);
        let requests: Vec<(&str, Vec<u64>)> = groups
            .iter()
            .map(|g| {
                let l = &self.index[g[0]];
                (
                    self.sessions[l.session as usize].as_str(),
                    g.iter().map(|&i| self.index[i].addr).collect(),
                )
            })
            .collect();
        type Arrived = (usize, Fetched, Vec<(usize, Vec<u8>)>);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arrived>(4);
        std::thread::scope(|scope| {
            let groups = &groups;
            let verifier = scope.spawn(move || {
                for (k, mut out, arrived) in rx {
                    for (addr, r) in self.verify(arrived) {
                        out.insert(addr, r);
                    }
                    done(&groups[k], out);
                }
            });
            let mut src = self.source.lock().expect("chunk source");
            self.counters
                .requests
                .fetch_add(requests.len() as u64, Ordering::Relaxed);
            let mut failed = false;
            src.fetch(&requests, &mut |k, r| {
                let group = &groups[k];
                let (mut out, mut arrived) = (Fetched::new(), Vec::new());
                match r {
                    Ok(frames) => self.match_frames(group, frames, &mut arrived, &mut out),
                    Err(e) => {
                        failed = true;
                        let why = format!("{e:#}");
                        for &i in group {
                            out.insert(self.index[i].addr, Err(self.fetch_error(i, &why)));
                        }
                    }
                }
                let _ = tx.send((k, out, arrived));
            });
            if failed {
                src.reset();
            }
            drop(src);
            drop(tx);
            verifier.join().expect("verify thread panicked");
        });
    }

    /// Pairs the frames a source sent with the chunks asked for: a frame
    /// for an address not asked for, or a second one, is ignored, and a
    /// chunk without its frame is missing.
    fn match_frames(
        &self,
        group: &[usize],
        frames: Vec<(ChunkHeader, Vec<u8>)>,
        arrived: &mut Vec<(usize, Vec<u8>)>,
        out: &mut Fetched,
    ) {
        let mut stray: Option<u64> = None;
        let mut came: HashMap<u64, (ChunkHeader, Vec<u8>)> = HashMap::new();
        for (h, data) in frames {
            let asked = group.iter().any(|&i| self.index[i].addr == h.addr);
            if !asked || came.contains_key(&h.addr) {
                stray.get_or_insert(h.addr);
                continue;
            }
            came.insert(h.addr, (h, data));
        }
        for &i in group {
            let l = &self.index[i];
            let session = self.sessions[l.session as usize].clone();
            let raw_len = self.raw_len(l.addr);
            match came.remove(&l.addr) {
                None => {
                    out.insert(
                        l.addr,
                        Err(VerifyError::MissingChunk {
                            volume: self.volume.clone(),
                            session,
                            addr: l.addr,
                            next: stray,
                        }
                        .into()),
                    );
                }
                Some((h, _)) if h.codec != Codec::Sealed || h.raw_len as usize != raw_len => {
                    out.insert(
                        l.addr,
                        Err(VerifyError::BadChunk {
                            volume: self.volume.clone(),
                            session,
                            addr: l.addr,
                            detail: format!(
                                "the receiver sent a {} record of {} bytes for a chunk of {raw_len}",
                                h.codec, h.raw_len
                            ),
                        }
                        .into()),
                    );
                }
                Some((_, data)) => arrived.push((i, data)),
            }
        }
    }

    /// Opens and verifies chunks, on all cores when there are several.
    fn verify(&self, arrived: Vec<(usize, Vec<u8>)>) -> Vec<(u64, Plain)> {
        let one = |opener: &mut Opener, (i, data): &(usize, Vec<u8>)| {
            let l = &self.index[*i];
            let at = Place {
                scope: self.scope,
                addr: l.addr,
                raw_len: self.raw_len(l.addr) as u32,
            };
            let mut plain = vec![0u8; at.raw_len as usize];
            let session = &self.sessions[l.session as usize];
            let r = open_chunk(
                opener,
                &at,
                &l.hash,
                data,
                &mut plain,
                &self.volume,
                session,
            )
            .map(Arc::<[u8]>::from)
            .map_err(ReadError::from);
            if r.is_ok() {
                self.counters.verified.fetch_add(1, Ordering::Relaxed);
            }
            (l.addr, r)
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(arrived.len());
        if threads <= 1 {
            let mut opener = Opener::new(self.keys.clone());
            return arrived.iter().map(|a| one(&mut opener, a)).collect();
        }
        let per = arrived.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = arrived
                .chunks(per)
                .map(|part| {
                    scope.spawn(move || {
                        let mut opener = Opener::new(self.keys.clone());
                        part.iter().map(|a| one(&mut opener, a)).collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("verify thread panicked"))
                .collect()
        })
    }

    /// `list` (ascending index positions) as requests: per session, at
    /// most `MAX_READ_CHUNKS` each.
    fn requests(&self, list: &[usize]) -> Vec<Vec<usize>> {
        let mut by_session: Vec<(u32, Vec<usize>)> = Vec::new();
        for &i in list {
            let s = self.index[i].session;
            match by_session.iter_mut().find(|(x, _)| *x == s) {
                Some((_, v)) => v.push(i),
                None => by_session.push((s, vec![i])),
            }
        }
        by_session
            .into_iter()
            .flat_map(|(_, v)| {
                v.chunks(MAX_READ_CHUNKS)
                    .map(<[usize]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The read-ahead window, in chunks.
    fn ahead_chunks(&self) -> usize {
        (READ_AHEAD_BYTES / self.cs).max(16) as usize
    }

    fn raw_len(&self, addr: u64) -> usize {
        (self.size - addr).min(self.cs) as usize
    }

    fn fetch_error(&self, i: usize, detail: &str) -> ReadError {
        let l = &self.index[i];
        ReadError::Fetch {
            volume: self.volume.clone(),
            session: self.sessions[l.session as usize].clone(),
            addr: l.addr,
            detail: detail.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::ArchiveId;
    use sealed::envelope::Sealer;
    use sealed::keys::MasterKey;

    const CS: u64 = 4096;
    const VID: sealed::keys::VolumeId = sealed::keys::VolumeId([3; 16]);

    fn keys() -> Arc<Keys> {
        Arc::new(Keys::derive(
            &MasterKey::from_bytes([7; 32]),
            ArchiveId([1; 16]),
            true,
        ))
    }

    fn seal(plain: &[u8], addr: u64) -> (Hash, Vec<u8>) {
        let mut s = Sealer::new(Some(3), keys()).unwrap();
        let mut out = Vec::with_capacity(sealed::envelope::sealed_bound(plain.len()));
        let at = Place {
            scope: Scope::volume(VID),
            addr,
            raw_len: plain.len() as u32,
        };
        let h = s.seal(plain, &at, [addr as u8; 24], &mut out).unwrap();
        (h, out)
    }

    /// How the in-memory receiver misbehaves.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Honest,
        /// Sends the envelope of the next chunk for this address.
        Swap(u64),
        /// Leaves this address out.
        Drop(u64),
        /// Answers this address with a frame for another.
        OtherAddr(u64),
        /// Fails (a stall, a cut connection) on any request with this one.
        Fail(u64),
    }

    struct Mem {
        chunks: Arc<Mutex<HashMap<u64, Vec<u8>>>>,
        mode: Arc<Mutex<Mode>>,
        log: Arc<Mutex<Vec<Vec<u64>>>>,
        resets: Arc<AtomicU64>,
    }

    impl ChunkSource for Mem {
        fn fetch(
            &mut self,
            requests: &[(&str, Vec<u64>)],
            each: &mut dyn FnMut(usize, Result<Frames>),
        ) {
            for (k, (_, addrs)) in requests.iter().enumerate() {
                each(k, self.one(addrs));
            }
        }

        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Mem {
        fn one(&mut self, addrs: &[u64]) -> Result<Frames> {
            self.log.lock().unwrap().push(addrs.to_vec());
            let mode = *self.mode.lock().unwrap();
            let chunks = self.chunks.lock().unwrap();
            let mut out = Vec::new();
            for &a in addrs {
                let h = |addr| ChunkHeader {
                    addr,
                    codec: Codec::Sealed,
                    raw_len: CS as u32,
                    hash: [0; 32],
                };
                match mode {
                    Mode::Fail(x) if x == a => anyhow::bail!("the receiver stalled"),
                    Mode::Drop(x) if x == a => {}
                    Mode::Swap(x) if x == a => out.push((h(a), chunks[&(a + CS)].clone())),
                    Mode::OtherAddr(x) if x == a => {
                        out.push((h(a + CS), chunks[&(a + CS)].clone()))
                    }
                    _ => out.push((h(a), chunks[&a].clone())),
                }
            }
            Ok(out)
        }
    }

    struct Fixture {
        image: Arc<SessionImage>,
        volume: Vec<u8>,
        mode: Arc<Mutex<Mode>>,
        log: Arc<Mutex<Vec<Vec<u64>>>>,
        resets: Arc<AtomicU64>,
        bad: Arc<Mutex<Vec<u64>>>,
    }

    /// 64 chunks; every third one zero.
    fn fixture(cache_bytes: usize) -> Fixture {
        let n = 64u64;
        let mut volume = vec![0u8; (n * CS) as usize];
        let mut entries = Vec::new();
        let mut chunks = HashMap::new();
        for i in 0..n {
            let addr = i * CS;
            if i % 3 == 2 {
                entries.push(Ok((
                    0,
                    Entry {
                        addr,
                        codec: Codec::Zero,
                        hash: [0; 32],
                    },
                )));
                continue;
            }
            let plain: Vec<u8> = (0..CS).map(|j| (i * 7 + j * 13 % 251) as u8 | 1).collect();
            volume[addr as usize..(addr + CS) as usize].copy_from_slice(&plain);
            let (hash, env) = seal(&plain, addr);
            chunks.insert(addr, env);
            entries.push(Ok((
                0,
                Entry {
                    addr,
                    codec: Codec::Sealed,
                    hash,
                },
            )));
        }
        let mode = Arc::new(Mutex::new(Mode::Honest));
        let log = Arc::new(Mutex::new(Vec::new()));
        let resets = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let src = Mem {
            chunks: Arc::new(Mutex::new(chunks)),
            mode: mode.clone(),
            log: log.clone(),
            resets: resets.clone(),
        };
        let b2 = bad.clone();
        let image = SessionImage::new(
            ImageSpec {
                volume: "v".into(),
                scope: Scope::volume(VID),
                volume_size: n * CS,
                chunk_size: CS,
                sessions: vec!["S_1".into()],
                keys: keys(),
                cache_bytes,
            },
            entries.into_iter(),
            Box::new(src),
            Box::new(move |e: &VerifyError| b2.lock().unwrap().push(e.chunk().unwrap().1)),
        )
        .unwrap();
        let image = Arc::new(image);
        Fixture {
            image,
            volume,
            mode,
            log,
            resets,
            bad,
        }
    }

    #[test]
    fn reads_at_odd_offsets_match_the_volume() {
        let f = fixture(1 << 20);
        assert_eq!(f.image.data_chunks(), 43);
        let mut x = 12345u64;
        for _ in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 20) % (f.volume.len() as u64 + 100);
            let len = ((x >> 8) % 20000) as usize;
            let got = f.image.read(off, len).unwrap();
            let end = (off as usize + len).min(f.volume.len());
            let want = if (off as usize) < f.volume.len() {
                &f.volume[off as usize..end]
            } else {
                &[][..]
            };
            assert_eq!(got, want, "read {off}+{len}");
        }
    }

    #[test]
    fn zero_chunks_cost_nothing_and_sequential_reads_read_ahead() {
        let f = fixture(1 << 20);
        // Chunk 2 is zero: no request at all.
        assert_eq!(f.image.read(2 * CS + 5, 100).unwrap(), vec![0u8; 100]);
        assert!(f.log.lock().unwrap().is_empty());
        // A sequential scan asks for each chunk once, a window at a time.
        let mut all = Vec::new();
        let mut off = 0;
        while off < f.volume.len() as u64 {
            all.extend(f.image.read(off, 3000).unwrap());
            off += 3000;
        }
        assert_eq!(all, f.volume);
        let log = f.log.lock().unwrap();
        let asked: Vec<u64> = log.iter().flatten().copied().collect();
        let mut uniq = asked.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(asked.len(), uniq.len(), "a chunk was fetched twice");
        assert_eq!(asked.len(), 43);
        assert!(log.len() <= 8, "{} requests for 43 chunks", log.len());
        assert!(log.iter().all(|r| r.len() <= MAX_READ_CHUNKS));
        let s = f.image.stats();
        assert_eq!(s.verified, 43);
        assert!(s.cache_hits > 0);
    }

    #[test]
    fn a_bad_chunk_fails_its_read_and_nothing_else() {
        // Chunk 3 holds data, and so does chunk 4 (what a liar sends).
        const X: u64 = 3 * CS;
        for mode in [
            Mode::Swap(X),
            Mode::Drop(X),
            Mode::OtherAddr(X),
            Mode::Fail(X),
        ] {
            let f = fixture(1 << 20);
            *f.mode.lock().unwrap() = mode;
            let e = f.image.read(X + 10, 100).unwrap_err().to_string();
            let expect = match mode {
                Mode::Swap(_) => "chunk at 0x3000 failed verification",
                Mode::Drop(_) => "chunk at 0x3000 is missing",
                Mode::OtherAddr(_) => "chunk at 0x3000 is missing from the receiver's stream (it sent the chunk at 0x4000",
                _ => "fetching the chunk at 0x3000 failed: the receiver stalled",
            };
            assert!(e.contains(expect), "{e}");
            // Never cached: asking again fails again, while the receiver lies.
            assert!(f.image.read(X, 1).is_err());
            // Other chunks read fine, before and after it is honest again.
            assert_eq!(f.image.read(0, 100).unwrap(), f.volume[..100]);
            *f.mode.lock().unwrap() = Mode::Honest;
            assert_eq!(
                f.image.read(X + 10, 100).unwrap(),
                f.volume[X as usize + 10..X as usize + 110]
            );
            let bad = f.bad.lock().unwrap().clone();
            if matches!(mode, Mode::Fail(_)) {
                assert!(bad.is_empty(), "a fetch failure is not damage");
                assert!(
                    f.resets.load(Ordering::Relaxed) >= 1,
                    "the connection was not reset"
                );
            } else {
                assert!(bad.contains(&X), "{bad:?}");
            }
            assert!(f.image.stats().failed_reads >= 2);
        }
    }

    #[test]
    fn read_ahead_stops_when_reads_do_and_needs_a_cache_that_holds_it() {
        // A cache too small for the window: only what reads need.
        let f = fixture(4 * CS as usize);
        let mut off = 0;
        while off < 8 * CS {
            f.image.read(off, 1000).unwrap();
            off += 1000;
        }
        let asked: usize = f.log.lock().unwrap().iter().map(Vec::len).sum();
        assert!(asked <= 6, "{asked} chunks fetched for 6 read");
        // With room, a scan that stops leaves the read-ahead stopped too.
        let f = fixture(1 << 20);
        for k in 0..3 {
            f.image.read(k * 1000, 1000).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let n = f.log.lock().unwrap().len();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            f.log.lock().unwrap().len(),
            n,
            "read-ahead went on without reads"
        );
        assert!(f.image.stats().verified <= 43);
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let f = fixture(3 * CS as usize);
        for i in 0..64 {
            f.image.read(i * CS, CS as usize).unwrap();
            assert!(f.image.state.lock().unwrap().cache.used() <= 3 * CS as usize);
        }
        // Without a cache at all, reads still work.
        let f = fixture(0);
        assert_eq!(
            f.image.read(0, 3 * CS as usize).unwrap(),
            f.volume[..3 * CS as usize]
        );
    }

    #[test]
    fn concurrent_reads_agree() {
        let f = fixture(1 << 20);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (img, vol) = (&f.image, &f.volume);
                s.spawn(move || {
                    for k in 0..64u64 {
                        let off = ((k * 7 + t * 13) % 64) * CS + t;
                        let got = img.read(off, 5000).unwrap();
                        let end = (off as usize + 5000).min(vol.len());
                        assert_eq!(got, &vol[off as usize..end]);
                    }
                });
            }
        });
    }
}
