//! Writing one session: chunks and manifest go to `VOLUME/.incoming/`, which
//! is renamed to `NAME/` only at commit, after everything is on disk.
//!
//! Nothing on the way scans the volume's sessions, so a commit costs the
//! same after 50,000 sessions as after one: the newest session comes from
//! the `.newest` record, stale leftovers sit under one fixed name.

use super::chunk_writer::ChunkWriter;
use super::refs::{self, ManifestLookup, Refused};
use super::resume;
use super::store::ChunkStore;
use super::{fsutil, Archive};
use crate::error::{Failure, Result};
use protocol::chunk::{self, ChunkHeader, Codec, Hash};
use protocol::frame::TRAILER_LEN;
use protocol::manifest::{Entry, ManifestReader, ManifestWriter};
use protocol::message::{ChunkRef, ErrorCode, ResumedChunk, SessionInfo, MAX_REFUSED};
use protocol::names::validate_session_name;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use sysio::aligned::{AlignedBuf, DIRECT_ALIGN};

pub const SESSION_MAGIC: [u8; 8] = *b"SBKSES02";
pub const INFO_FILE: &str = "session.info";
pub const MANIFEST_FILE: &str = "manifest";
/// Where the one session being written to a volume lives until commit (one
/// at a time: the archive lock). A fixed name, so that clearing a crashed
/// backup's leftovers costs one lookup, not a scan of every session.
pub const INCOMING: &str = ".incoming";
/// The name of a volume's newest committed session, written before the
/// commit's rename (see [`newest`]).
pub const NEWEST: &str = ".newest";

pub fn read_info(session_dir: &Path) -> Result<SessionInfo> {
    let p = session_dir.join(INFO_FILE);
    let b = fsutil::read_file("session info", &p)?;
    protocol::codec::decode_sealed("session info", &SESSION_MAGIC, &b).map_err(|e| {
        Failure::new(
            ErrorCode::Corrupt,
            format!("session info '{}': {e}", p.display()),
        )
    })
}

/// A manifest's entries, streamed; errors name the file.
pub type Entries = Box<dyn Iterator<Item = Result<Entry>>>;

/// Opens the manifest at `mpath`, checking it has the archive's chunk size.
pub fn manifest_entries(mpath: &Path, chunk_size: u32) -> Result<Entries> {
    let corrupt = |e: &dyn std::fmt::Display, p: &Path| {
        Failure::new(
            ErrorCode::Corrupt,
            format!("manifest '{}': {e}", p.display()),
        )
    };
    let f = File::open(mpath).map_err(|e| Failure::io("open manifest", mpath, e))?;
    let reader = ManifestReader::new(BufReader::with_capacity(1 << 16, f))
        .map_err(|e| corrupt(&e, mpath))?;
    if reader.chunk_size() != chunk_size {
        return Err(corrupt(&"wrong chunk size", mpath));
    }
    let p = mpath.to_path_buf();
    Ok(Box::new(
        reader.map(move |r| r.map_err(|e| corrupt(&e, &p))),
    ))
}

/// Writes a sealed session info record (not synced: callers sync).
pub fn write_info(path: &Path, info: &SessionInfo) -> Result<()> {
    let bytes = protocol::codec::encode_sealed(&SESSION_MAGIC, info);
    fs::write(path, bytes).map_err(|e| Failure::io("write session info", path, e))
}

/// The newest committed session of a volume (None: it has none), without
/// listing them all: the `.newest` record, if the session it names exists.
/// Why that is enough: sessions are only ever added by a commit, which
/// writes `.newest` first and renames the session into place second; a
/// prune never removes the newest; a dropped newest session is renamed
/// away before `.newest` names the one before it. A record naming a
/// missing session (a crash between two such steps) or no record falls
/// back to the listing.
pub fn newest(archive: &Archive, volume: &str) -> Result<Option<String>> {
    let vdir = archive.volume_dir(volume)?;
    if let Ok(name) = fs::read_to_string(vdir.join(NEWEST)) {
        let name = name.trim();
        if validate_session_name(name).is_ok() && vdir.join(name).is_dir() {
            return Ok(Some(name.to_string()));
        }
    }
    match archive.session_names(volume) {
        Ok(v) => Ok(v.last().cloned()),
        Err(f) if f.code == ErrorCode::NoSuchVolume => Ok(None),
        Err(f) => Err(f),
    }
}

pub struct SessionWriter {
    volume: String,
    info: SessionInfo,
    volume_dir: PathBuf,
    incoming: PathBuf,
    final_dir: PathBuf,
    chunk_size: u32,
    manifest: Option<ManifestWriter<BufWriter<File>>>,
    store: std::sync::Arc<dyn ChunkStore>,
    /// The store's last group made room for (see `ChunkStore::make_room`).
    last_room: Option<u64>,
    committed: bool,
    /// Taken from `writer` for a zero chunk, which has no data to write:
    /// the next frame is read into it.
    spare: Option<AlignedBuf>,
    writer: Option<ChunkWriter>,
    /// References not confirmed, whose data dom0 sends after `Commit`.
    refused: Refused,
    lookup: ManifestLookup,
    /// The unfinished session's manifest (opened at the first `Resume`)
    /// and a buffer its chunks are checked in.
    resumed: Option<(File, u64, AlignedBuf)>,
    /// Set when the stream was cut: what was stored is kept for resuming.
    keep: bool,
}

/// Where a chunk frame starts in a writer buffer: so that its data, after
/// the chunk header, starts on a page boundary (for direct I/O).
const FRAME_AT: usize = DIRECT_ALIGN - chunk::HEADER_LEN;

impl SessionWriter {
    /// Starts a session. `prev` must name the volume's newest session (None
    /// for a volume's first), and the new name must sort after it.
    pub fn begin(
        archive: &Archive,
        volume: &str,
        session: &str,
        prev: Option<&str>,
        volume_size: u64,
        time: u64,
    ) -> Result<Self> {
        let final_dir = archive.session_dir(volume, session)?;
        let volume_dir = archive.volume_dir(volume)?;
        let newest = newest(archive, volume)?;
        let newest = newest.as_deref();
        if prev != newest {
            return Err(Failure::new(
                ErrorCode::SessionOrder,
                format!(
                    "volume '{volume}': dom0's newest session is {} but the archive's is {}",
                    prev.unwrap_or("none (a first backup)"),
                    newest.unwrap_or("none (the volume has no session)")
                ),
            ));
        }
        if newest.is_some_and(|n| session <= n) {
            return Err(Failure::new(
                ErrorCode::SessionOrder,
                format!(
                    "volume '{volume}': the new session {session} does not sort after the archive's newest, {}",
                    newest.unwrap_or("none")
                ),
            ));
        }
        fs::create_dir_all(&volume_dir)
            .map_err(|e| Failure::io("create volume", &volume_dir, e))?;
        // What a cut backup left is kept aside (dom0 asked for it with
        // `Unfinished`), never overwritten by the new session.
        resume::settle(&volume_dir, archive.chunk_size())?;
        let incoming = volume_dir.join(INCOMING);
        fs::create_dir(&incoming).map_err(|e| Failure::io("create session", &incoming, e))?;
        let mpath = incoming.join(MANIFEST_FILE);
        let mut w = Self {
            volume: volume.to_string(),
            info: SessionInfo {
                name: session.to_string(),
                time,
                volume_size,
                chunks: 0,
                zero_chunks: 0,
                stored_bytes: 0,
                ref_chunks: 0,
                ref_bytes: 0,
                prev: prev.map(str::to_string),
            },
            volume_dir,
            incoming,
            final_dir,
            chunk_size: archive.chunk_size(),
            manifest: None,
            store: archive.store.clone(),
            last_room: None,
            committed: false,
            spare: None,
            writer: None,
            refused: Refused::default(),
            lookup: ManifestLookup::default(),
            resumed: None,
            keep: false,
        };
        w.writer = Some(ChunkWriter::new(
            archive.store.clone(),
            w.incoming.clone(),
            FRAME_AT
                + chunk::HEADER_LEN
                + protocol::envelope::max_stored(archive.chunk_size() as usize)
                + TRAILER_LEN,
        ));
        let f = File::create(&mpath).map_err(|e| Failure::io("create manifest", &mpath, e))?;
        w.manifest = Some(
            ManifestWriter::new(BufWriter::with_capacity(1 << 16, f), w.chunk_size)
                .map_err(|e| Failure::io("write manifest", &mpath, e))?,
        );
        Ok(w)
    }

    /// A buffer for the next frame (waits while the writers are behind).
    /// Reports a chunk write that failed since the last call.
    pub fn buffer(&mut self) -> Result<AlignedBuf> {
        match self.spare.take() {
            Some(b) => Ok(b),
            None => self.writer.as_mut().expect("open until commit").buffer(),
        }
    }

    /// Gives back a buffer a frame that carried no chunk data was read into.
    pub fn put_back(&mut self, buf: AlignedBuf) {
        self.spare = Some(buf);
    }

    /// The part of `buf` to read one frame into: a chunk frame of the
    /// archive's chunk size fits exactly, with its data page-aligned.
    pub fn frame_space(buf: &mut AlignedBuf) -> &mut [u8] {
        &mut buf.whole_mut()[FRAME_AT..]
    }

    /// Stores one chunk record: its data, `len` bytes at `start` in `buf`,
    /// goes to its file (written in the background; a failure surfaces at
    /// the next call or at commit), its entry to the manifest. Records must
    /// come in ascending address order.
    pub fn add_chunk(
        &mut self,
        h: &ChunkHeader,
        buf: AlignedBuf,
        start: usize,
        len: usize,
    ) -> Result<()> {
        // A failed record ends the session, so its buffer is not needed.
        self.check_chunk(h, len)?;
        if h.codec == Codec::Zero {
            self.spare = Some(buf);
            return Ok(());
        }
        self.write_data(h, buf, start, len)?;
        self.info.chunks += 1;
        Ok(())
    }

    /// The chunk's directory (the store caches the last group made, which
    /// holds in any order), then its data to a writer thread.
    fn write_data(
        &mut self,
        h: &ChunkHeader,
        buf: AlignedBuf,
        start: usize,
        len: usize,
    ) -> Result<()> {
        self.make_room(h.addr)?;
        let w = self.writer.as_mut().expect("open until commit");
        w.write(h.addr, h.raw_len, buf, start, len)?;
        self.info.stored_bytes += len as u64;
        Ok(())
    }

    fn make_room(&mut self, addr: u64) -> Result<()> {
        self.store
            .make_room(&self.incoming, addr, &mut self.last_room)
            .map_err(|e| Failure::io("create directory for chunk", &self.incoming, e))
    }

    /// Stores one reference record: confirmed and linked, or marked
    /// refused (see `refs.rs`); its manifest entry is written either way.
    pub fn add_ref(&mut self, archive: &Archive, r: &ChunkRef) -> Result<()> {
        self.add_entry_without_data(r.addr, r.raw_len, r.hash)?;
        let here = r.volume == self.volume && r.session == self.info.name;
        let source = if here {
            // A chunk of this very session, at an earlier address: its
            // entry is in the manifest being written, its file once its
            // write is done (a failed write ends the session).
            let found = self.confirm_here(r);
            if found.is_ok() {
                self.writer
                    .as_mut()
                    .expect("open until commit")
                    .wait_written(r.from)?;
            }
            found.map(|_| self.incoming.clone())
        } else {
            refs::confirm(archive, &mut self.lookup, r)
        };
        let linked = source.and_then(|from| {
            self.make_room(r.addr)?;
            self.store
                .link(&from, r.from, &self.incoming, r.addr)
                .map_err(|e| Failure::io("link chunk", &self.store.chunk_path(&from, r.from), e))
        });
        match linked {
            Ok(_) => {
                self.info.ref_chunks += 1;
                self.info.ref_bytes += r.raw_len as u64;
            }
            Err(f) => self.refuse(r.addr, "reference", &f),
        }
        Ok(())
    }

    /// The manifest entry of a stored chunk whose data does not come in a
    /// chunk record (a reference, a resumed chunk), checked as a record.
    fn add_entry_without_data(&mut self, addr: u64, raw_len: u32, hash: Hash) -> Result<()> {
        let h = ChunkHeader {
            addr,
            codec: Codec::Sealed,
            raw_len,
            hash,
        };
        // Its length is checked as a chunk's of the longest valid size.
        self.check_chunk(&h, protocol::envelope::MIN_STORED)?;
        self.info.chunks += 1;
        Ok(())
    }

    /// Marks `addr` refused (its data is asked for at `Commit`), saying why.
    fn refuse(&mut self, addr: u64, what: &str, why: &Failure) {
        eprintln!(
            "sparsebak-receiver: volume '{}': {what} at {addr:#x} refused, asking for its data: {}",
            self.volume, why.message
        );
        self.refused.mark(addr / self.chunk_size as u64);
    }

    /// Stores one resumed record: the unfinished session's chunk at the
    /// same address, confirmed and linked, or marked refused (see
    /// `resume.rs`); its manifest entry is written either way.
    pub fn add_resumed(&mut self, r: &ResumedChunk) -> Result<()> {
        self.add_entry_without_data(r.addr, r.raw_len, r.hash)?;
        match self.keep_resumed(r) {
            Ok(len) => self.info.stored_bytes += len,
            Err(f) => self.refuse(r.addr, "chunk of the unfinished session", &f),
        }
        Ok(())
    }

    /// Links the unfinished session's chunk at `r.addr` into this one if
    /// its manifest names exactly `r.hash` there and its envelope is whole
    /// (a cut can leave the last files short); returns its stored length.
    fn keep_resumed(&mut self, r: &ResumedChunk) -> Result<u64> {
        let dir = self.volume_dir.join(resume::RESUME);
        let mpath = dir.join(MANIFEST_FILE);
        let path = self.store.chunk_path(&dir, r.addr);
        // One more than the longest valid chunk: a longer one is told.
        let max = protocol::envelope::max_stored(self.chunk_size as usize) + 1;
        if self.resumed.is_none() {
            let (f, n) = refs::open_manifest(&mpath, self.chunk_size)?;
            let buf = AlignedBuf::new(max.next_multiple_of(DIRECT_ALIGN));
            self.resumed = Some((f, n, buf));
        }
        let (f, n, buf) = self.resumed.as_mut().expect("opened above");
        let found = refs::stored_entry(f, &mpath, *n, r.addr)?;
        refs::holds(found, &r.hash).map_err(|why| Failure::new(ErrorCode::BadRequest, why))?;
        let read = self.store.read(&dir, r.addr, buf, max);
        super::check::verify_chunk(read.map(|_| buf.as_slice()), r.raw_len as usize).map_err(
            |why| {
                Failure::new(
                    ErrorCode::Corrupt,
                    format!("chunk '{}': {why}", path.display()),
                )
            },
        )?;
        self.make_room(r.addr)?;
        self.store
            .link(&dir, r.addr, &self.incoming, r.addr)
            .map_err(|e| Failure::io("link chunk", &path, e))
    }

    /// The stream was cut: what this session stored is kept for the next
    /// backup of the volume to resume from (dropping it leaves it).
    pub fn keep_for_resume(&mut self) {
        self.keep = true;
    }

    /// Confirms a reference to an earlier chunk of the session being
    /// written, against the entries of its manifest written so far.
    fn confirm_here(&mut self, r: &ChunkRef) -> Result<()> {
        if r.from >= r.addr || !r.from.is_multiple_of(self.chunk_size as u64) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "reference to chunk {:#x} of this session: not an earlier chunk",
                    r.from
                ),
            ));
        }
        let mpath = self.incoming.join(MANIFEST_FILE);
        let m = self.manifest.as_mut().expect("manifest open until commit");
        m.flush()
            .map_err(|e| Failure::io("write manifest", &mpath, e))?;
        let n = m.count();
        let f = File::open(&mpath).map_err(|e| Failure::io("read manifest", &mpath, e))?;
        refs::judge(r, refs::stored_entry(&f, &mpath, n, r.from)?)
    }

    /// The addresses of refused references whose data has not come, at
    /// most `MAX_REFUSED`: what a `Commit` is answered while any are left.
    pub fn refused(&self) -> Vec<u64> {
        let cs = self.chunk_size as u64;
        self.refused
            .first(MAX_REFUSED)
            .into_iter()
            .map(|i| i * cs)
            .collect()
    }

    /// Stores the data of a refused reference (sent after `Reply::Refused`,
    /// in any order): only where a reference was refused.
    pub fn fill_chunk(
        &mut self,
        h: &ChunkHeader,
        buf: AlignedBuf,
        start: usize,
        len: usize,
    ) -> Result<()> {
        h.validate(self.chunk_size, len)?;
        let cs = self.chunk_size as u64;
        if h.codec != Codec::Sealed || !self.refused.take(h.addr / cs) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "volume '{}': chunk {:#x} after a commit, where no reference was refused",
                    self.volume, h.addr
                ),
            ));
        }
        let expect_len = (self.info.volume_size - h.addr).min(cs);
        if h.raw_len as u64 != expect_len {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "volume '{}': chunk {:#x} has the wrong length",
                    self.volume, h.addr
                ),
            ));
        }
        self.write_data(h, buf, start, len)
    }

    /// Whether references are refused and their data not yet come.
    pub fn awaiting_data(&self) -> bool {
        self.refused.count() > 0
    }

    /// Validates a record and appends its manifest entry.
    fn check_chunk(&mut self, h: &ChunkHeader, len: usize) -> Result<()> {
        h.validate(self.chunk_size, len)?;
        if h.addr >= self.info.volume_size {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "volume '{}': chunk {:#x} is past the volume size {}",
                    self.volume, h.addr, self.info.volume_size
                ),
            ));
        }
        let expect_len = (self.info.volume_size - h.addr).min(self.chunk_size as u64);
        if h.raw_len as u64 != expect_len {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "volume '{}': chunk {:#x} has length {} but should have {expect_len}",
                    self.volume, h.addr, h.raw_len
                ),
            ));
        }
        let entry = Entry {
            addr: h.addr,
            codec: h.codec,
            hash: h.hash,
        };
        let m = self.manifest.as_mut().expect("manifest open until commit");
        m.push(&entry).map_err(|e| {
            Failure::new(
                ErrorCode::BadRequest,
                format!("volume '{}': {e}", self.volume),
            )
        })?;
        // Each entry reaches the file at once (a 41-byte write beside a
        // chunk's): a receiver killed mid-session loses none of what it
        // stored, and a resumed backup need not send it again.
        m.flush()
            .map_err(|e| Failure::io("write manifest", &self.incoming.join(MANIFEST_FILE), e))?;
        if h.codec == Codec::Zero {
            self.info.zero_chunks += 1;
        }
        Ok(())
    }

    /// Makes the session visible: manifest and info written, everything
    /// synced, then one rename.
    pub fn commit(mut self, chunks: u64, zero_chunks: u64) -> Result<SessionInfo> {
        // Every chunk file written (or the first failure) before counting.
        self.writer.take().expect("open until commit").finish()?;
        if (chunks, zero_chunks) != (self.info.chunks, self.info.zero_chunks) {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                format!(
                    "volume '{}' session {}: agent sent {chunks} data and {zero_chunks} zero chunks, receiver got {} and {}",
                    self.volume, self.info.name, self.info.chunks, self.info.zero_chunks
                ),
            ));
        }
        let mpath = self.incoming.join(MANIFEST_FILE);
        let m = self.manifest.take().expect("manifest open until commit");
        let mut bw = m
            .finish()
            .map_err(|e| Failure::io("write manifest", &mpath, e))?;
        bw.flush()
            .map_err(|e| Failure::io("write manifest", &mpath, e))?;
        drop(bw);
        write_info(&self.incoming.join(INFO_FILE), &self.info)?;
        fsutil::syncfs(&self.incoming)?;
        // Before the rename (see `newest`): durable with the rename's fsync.
        fsutil::write_atomic(&self.volume_dir.join(NEWEST), self.info.name.as_bytes())?;
        fs::rename(&self.incoming, &self.final_dir)
            .map_err(|e| Failure::io("commit session", &self.final_dir, e))?;
        self.committed = true;
        fsutil::fsync_dir(&self.volume_dir)?;
        // Superseded: what it held that this session needed is linked here.
        if let Err(f) = resume::discard(&self.volume_dir) {
            eprintln!("sparsebak-receiver: {}", f.message);
        }
        Ok(self.info.clone())
    }
}

impl Drop for SessionWriter {
    /// An uncommitted session (abort, error) leaves nothing; a cut one
    /// that stored chunks is left for resuming (as is one whose receiver
    /// was killed).
    fn drop(&mut self) {
        // A cut session that stored no chunk has nothing to resume from.
        let keep = self.keep && self.info.chunks > 0;
        if !self.committed && !keep {
            // Writers stopped first: none may create a file after removal.
            self.writer = None;
            self.manifest = None;
            let _ = fs::remove_dir_all(&self.incoming);
        }
    }
}
