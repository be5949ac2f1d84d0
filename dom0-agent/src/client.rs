//! The typed client of the receiver: the one place in dom0 that sends
//! requests and checks what comes back. Every reply the receiver may give
//! is matched here; anything else is "an unexpected X reply to Y", named
//! once. Callers get Rust values, never raw frames.
//!
//! Everything read here is hostile input (the backup qube may lie): the
//! frame decoder caps lengths before allocating, and a reply of the wrong
//! kind ends the operation with an error naming the receiver.
//!
//! Callers name volumes; the receiver knows them only by their opaque ids
//! (`meta::VolumeIds`): the translation happens here, both ways.

use crate::meta::{ArchiveMeta, VolumeIds};
use crate::transport::dest::Dest;
use crate::transport::{self, remote_error, Connection, Reach};
use anyhow::{anyhow, bail, Context, Result};
use protocol::chunk::ChunkHeader;
use protocol::message::{
    ArchiveParams, Blob, ChunkRef, ErrorCode, Finding, Operation, Reply, Request, ResumedChunk,
    SessionInfo, DATA_PART, MAX_REFUSED,
};
use protocol::stream::{Incoming, StreamError};
use sealed::keys::VolumeId;

pub struct Client {
    conn: Connection,
    /// None only while creating an archive.
    ids: Option<VolumeIds>,
    /// The archive's root as found on connecting, where it was newer than
    /// any dom0 had seen: what it names, dom0 never drops.
    pub newer_root: Option<sealed::root::Root>,
    /// What was wrong with the archive's wrapped key on connecting
    /// (`keycheck`), for `arch-check` to report.
    pub key_findings: Vec<String>,
}

/// What the receiver's archive check found.
pub struct RemoteCheck {
    pub checked: u64,
    pub findings: Vec<Finding>,
    /// Findings beyond those listed, counted only.
    pub more: u64,
}

/// One frame of a restore stream.
/// What a commit was answered.
#[derive(Debug)]
pub enum Commit {
    Done(SessionInfo),
    /// References the receiver could not confirm: send their data.
    Refused(Vec<u64>),
}

pub enum RestoreFrame<'a> {
    Chunk(ChunkHeader, &'a [u8]),
    /// The receiver's end of the stream, with the chunk count it claims.
    End(u64),
}

impl Client {
    fn new(conn: Connection, ids: Option<VolumeIds>) -> Self {
        Client {
            conn,
            ids,
            newer_root: None,
            key_findings: Vec::new(),
        }
    }

    /// Connects for `op` to the archive dom0 knows as `meta`, refusing a
    /// receiver that holds another archive (or none).
    pub fn connect(dest: &Dest, reach: &Reach, meta: &ArchiveMeta, op: Operation) -> Result<Self> {
        let conn = transport::connect(dest, reach, op, Some(meta.params.id))?;
        Client::over(conn, dest, meta)
    }

    /// Wraps a connection made elsewhere (in-process tests), with the same
    /// check of the archive it serves.
    pub fn over(
        conn: Connection,
        dest: impl std::fmt::Display,
        meta: &ArchiveMeta,
    ) -> Result<Self> {
        let expect = &meta.params;
        let mut c = Client::new(conn, Some(meta.ids()));
        match c.conn.archive {
            Some(p) if p == *expect => Ok(c),
            Some(p) => bail!(
                "the archive at {dest} is {} but dom0 expects {} for it: refusing to continue",
                describe(&p),
                describe(expect)
            ),
            None => {
                // The receiver's own reason (busy, unreadable, missing)
                // comes with the first request.
                c.call(&Request::ListVolumes { after: None })?;
                bail!(
                    "there is no archive at {dest} (dom0 expected {})",
                    expect.id.to_hex()
                )
            }
        }
    }

    /// Connects to create a new archive: there must be none at `dest`.
    pub fn connect_new(dest: &Dest, reach: &Reach) -> Result<Self> {
        let conn = transport::connect(dest, reach, Operation::Admin, None)?;
        if let Some(p) = conn.archive {
            bail!(
                "there is already an archive ({}) at {dest}: to adopt it on this dom0, run arch-import",
                p.id.to_hex()
            );
        }
        Ok(Client::new(conn, None))
    }

    /// Connects to an archive dom0 does not know yet (`arch-import`): any
    /// archive the receiver has is accepted here, and authenticated by the
    /// caller from its key and root.
    pub fn connect_any(dest: &Dest, reach: &Reach, op: Operation) -> Result<(Self, ArchiveParams)> {
        let conn = transport::connect(dest, reach, op, None)?;
        let Some(p) = conn.archive else {
            let mut c = Client::new(conn, None);
            c.call(&Request::ListVolumes { after: None })?;
            bail!("there is no archive at {dest}");
        };
        Ok((Client::new(conn, None), p))
    }

    /// Uses `meta`'s volume ids from now on (after `arch-import` made it).
    pub fn set_ids(&mut self, meta: &ArchiveMeta) {
        self.ids = Some(meta.ids());
    }

    /// The id the receiver knows `volume` by; None if dom0 never gave it
    /// one (the archive cannot have it).
    fn rid(&self, volume: &str) -> Result<Option<String>> {
        match &self.ids {
            Some(ids) => Ok(ids.get(volume)?.map(|id| id.to_hex())),
            None => bail!("no archive record to name volume '{volume}' by"),
        }
    }

    fn need_rid(&self, volume: &str) -> Result<String> {
        self.rid(volume)?
            .with_context(|| format!("dom0 has no archive id for volume '{volume}': it was never backed up to this archive"))
    }

    /// A volume's name from the id the receiver gave; an id dom0 does not
    /// know stays visible as `id:HEX` (never a valid volume name).
    fn name_of(&self, names: &std::collections::BTreeMap<VolumeId, String>, rid: &str) -> String {
        VolumeId::from_hex(rid)
            .and_then(|id| names.get(&id).cloned())
            .unwrap_or_else(|| format!("id:{}", protocol::names::escape_text(rid, 64)))
    }

    fn names(&self) -> Result<std::collections::BTreeMap<VolumeId, String>> {
        match &self.ids {
            Some(ids) => ids.names_by_id(),
            None => Ok(Default::default()),
        }
    }

    /// The destination, for messages.
    pub fn label(&self) -> &str {
        &self.conn.label
    }

    /// Ends the connection cleanly.
    pub fn finish(self) -> Result<()> {
        self.conn.finish()
    }

    /// Sends a request (flushing). If that fails, the receiver may have
    /// said why before it went away: its reason is the error.
    fn send(&mut self, r: &Request) -> Result<()> {
        self.conn
            .paced_write(|wr| wr.request(r).and_then(|_| wr.flush()))
            .map_err(|e| self.conn.read_error_after(e, r.name()))
    }

    /// Sends a request and reads its reply; a receiver error becomes an
    /// error naming the destination.
    fn call(&mut self, r: &Request) -> Result<Reply> {
        self.send(r)?;
        let reply = self
            .conn
            .rd
            .read_reply()
            .map_err(|e| self.conn.stream_error(e, r.name()))?;
        transport::check_reply(reply, &self.conn.label)
    }

    fn unexpected(&self, reply: &Reply, to: &str) -> anyhow::Error {
        anyhow!(
            "the receiver for {} gave an unexpected {} reply to {to}",
            self.conn.label,
            reply.name()
        )
    }

    /// Sends `r` and expects `Ok`.
    fn call_ok(&mut self, r: &Request) -> Result<()> {
        match self.call(r)? {
            Reply::Ok => Ok(()),
            other => Err(self.unexpected(&other, r.name())),
        }
    }

    pub fn init(
        &mut self,
        params: ArchiveParams,
        key: Vec<u8>,
        root: Vec<u8>,
        mkdir: bool,
    ) -> Result<()> {
        self.call_ok(&Request::Init {
            params,
            key,
            root,
            mkdir,
        })
    }

    /// One of dom0's records kept by the receiver, at most `cap` bytes.
    pub fn get_blob(&mut self, blob: Blob, cap: u64) -> Result<Vec<u8>> {
        self.send(&Request::GetBlob { blob })?;
        let mut s = ManifestStream::new(&mut self.conn, cap, blob.name());
        // Grown a part at a time, never doubled: a record near its cap
        // costs its size, not twice it.
        let mut out = Vec::new();
        loop {
            s.fill_if_empty()?;
            let part = s.take_part();
            if part.is_empty() {
                break;
            }
            out.reserve_exact(part.len());
            out.extend_from_slice(part);
        }
        s.drain()?;
        Ok(out)
    }

    /// Replaces one of dom0's records kept by the receiver (atomically on
    /// the receiver's side, at the last part).
    pub fn put_blob(&mut self, blob: Blob, bytes: &[u8]) -> Result<()> {
        let mut parts = bytes.chunks(DATA_PART).peekable();
        if parts.peek().is_none() {
            bail!("refusing to store an empty {} record", blob.name());
        }
        while let Some(p) = parts.next() {
            self.call_ok(&Request::PutBlob {
                blob,
                data: p.to_vec(),
                last: parts.peek().is_none(),
            })?;
        }
        Ok(())
    }

    /// Every volume name in the archive, ascending, asked a page at a time.
    /// More than `max` is an error: dom0 knows about how many to expect,
    /// and a hostile receiver must not make it hold an endless list.
    pub fn volumes(&mut self, max: usize) -> Result<Vec<String>> {
        let all = self.volume_ids(max)?;
        let names = self.names()?;
        let mut out: Vec<String> = all.iter().map(|r| self.name_of(&names, r)).collect();
        out.sort();
        Ok(out)
    }

    /// The receiver's volume ids, as it lists them (see [`Client::volumes`]).
    pub fn volume_ids(&mut self, max: usize) -> Result<Vec<String>> {
        let mut all: Vec<String> = Vec::new();
        loop {
            let after = all.last().cloned();
            let r = Request::ListVolumes { after };
            let (names, more) = match self.call(&r)? {
                Reply::Volumes { names, more } => (names, more),
                other => return Err(self.unexpected(&other, "list-volumes")),
            };
            self.take_page(&mut all, names, more, max, "volumes", |n| n)?;
            if !more {
                return Ok(all);
            }
        }
    }

    /// The receiver's sessions of `volume`, oldest first (empty if it has
    /// no such volume), asked a page at a time; more than `max` is an
    /// error, as for [`Client::volumes`].
    pub fn sessions(&mut self, volume: &str, max: usize) -> Result<Vec<SessionInfo>> {
        match self.rid(volume)? {
            Some(rid) => self.sessions_by_id(&rid, max),
            None => Ok(Vec::new()),
        }
    }

    /// The sessions of the volume the receiver knows as `rid`.
    pub fn sessions_by_id(&mut self, rid: &str, max: usize) -> Result<Vec<SessionInfo>> {
        let mut all: Vec<SessionInfo> = Vec::new();
        let (rid, volume) = (rid.to_string(), rid);
        loop {
            let r = Request::ListSessions {
                volume: rid.clone(),
                after: all.last().map(|s| s.name.clone()),
            };
            let (sessions, more) = match self.call(&r) {
                Ok(Reply::Sessions { sessions, more }) => (sessions, more),
                Ok(other) => return Err(self.unexpected(&other, "list-sessions")),
                Err(e) if all.is_empty() && transport::is_remote(&e, ErrorCode::NoSuchVolume) => {
                    return Ok(all)
                }
                Err(e) => return Err(e),
            };
            let what = format!("sessions of volume '{volume}'");
            self.take_page(&mut all, sessions, more, max, &what, |s| &s.name)?;
            if !more {
                return Ok(all);
            }
        }
    }

    /// Appends a page to `all`: its names must ascend past what came
    /// before, a page that promises more must hold something, and the
    /// whole listing must stay within `max`.
    fn take_page<T>(
        &self,
        all: &mut Vec<T>,
        page: Vec<T>,
        more: bool,
        max: usize,
        what: &str,
        name: impl Fn(&T) -> &String,
    ) -> Result<()> {
        let label = &self.conn.label;
        if more && page.is_empty() {
            bail!("the receiver for {label} sent an empty page of {what} that promises more");
        }
        for item in page {
            if all.last().is_some_and(|last| name(last) >= name(&item)) {
                bail!("the receiver for {label} listed {what} out of order");
            }
            if all.len() >= max {
                bail!("the receiver for {label} lists more than {max} {what}, more than dom0 can account for: refusing to go on");
            }
            all.push(item);
        }
        Ok(())
    }

    /// Drops `session`, the volume's newest in the archive.
    pub fn drop_session(&mut self, volume: &str, session: &str) -> Result<()> {
        self.call_ok(&Request::DropSession {
            volume: self.need_rid(volume)?,
            session: session.to_string(),
        })
    }

    /// Deletes a volume; false if the archive had no such volume (a
    /// repeated delete).
    pub fn delete_volume(&mut self, volume: &str) -> Result<bool> {
        let Some(rid) = self.rid(volume)? else {
            return Ok(false);
        };
        let r = Request::DeleteVolume { volume: rid };
        match self.call_ok(&r) {
            Ok(()) => Ok(true),
            Err(e) if transport::is_remote(&e, ErrorCode::NoSuchVolume) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Prunes `session`; the receiver answers with the merged successor.
    pub fn prune(&mut self, volume: &str, session: &str) -> Result<SessionInfo> {
        let r = Request::Prune {
            volume: self.need_rid(volume)?,
            session: session.to_string(),
        };
        match self.call(&r)? {
            Reply::Pruned(info) => Ok(info),
            other => Err(self.unexpected(&other, "prune")),
        }
    }

    /// The receiver's re-hash of every chunk. Hashing a whole archive
    /// takes as long as it takes: no stall timeout while it runs.
    pub fn check(&mut self, volume: Option<&str>) -> Result<RemoteCheck> {
        let rid = match volume {
            Some(v) => match self.rid(v)? {
                Some(r) => Some(r),
                None => {
                    return Ok(RemoteCheck {
                        checked: 0,
                        findings: Vec::new(),
                        more: 0,
                    })
                }
            },
            None => None,
        };
        let timeout = self.conn.timeout();
        self.conn.set_timeout(None);
        let reply = self.call(&Request::Check { volume: rid });
        self.conn.set_timeout(timeout);
        match reply? {
            Reply::CheckReport {
                checked,
                mut findings,
                more,
            } => {
                let names = self.names()?;
                for f in &mut findings {
                    f.volume = self.name_of(&names, &f.volume);
                }
                Ok(RemoteCheck {
                    checked,
                    findings,
                    more,
                })
            }
            other => Err(self.unexpected(&other, "check")),
        }
    }

    /// The archive's manifest file of a session, as a byte stream of at
    /// most `cap` bytes (more is an error: dom0 knows how large the file
    /// should be, and an endless stream must not cost it memory or time).
    /// Read it, then [`ManifestStream::drain`] it to keep the connection
    /// usable.
    pub fn manifest(
        &mut self,
        volume: &str,
        session: &str,
        cap: u64,
    ) -> Result<ManifestStream<'_>> {
        self.send(&Request::GetManifest {
            volume: self.need_rid(volume)?,
            session: session.to_string(),
        })?;
        Ok(ManifestStream::new(&mut self.conn, cap, "manifest"))
    }

    /// The manifest of the volume's unfinished session (what a cut backup
    /// stored; empty if there is none), at most `cap` bytes, as a stream
    /// like [`Client::manifest`]'s.
    pub fn unfinished(&mut self, volume: &str, cap: u64) -> Result<ManifestStream<'_>> {
        self.send(&Request::Unfinished {
            volume: self.need_rid(volume)?,
        })?;
        Ok(ManifestStream::new(&mut self.conn, cap, "manifest"))
    }

    /// Starts a backup session; chunks follow with [`Client::send_chunk`].
    pub fn begin_session(
        &mut self,
        volume: &str,
        session: &str,
        prev: Option<&str>,
        volume_size: u64,
        time: u64,
    ) -> Result<()> {
        self.call_ok(&Request::BeginSession {
            volume: self.need_rid(volume)?,
            session: session.to_string(),
            prev: prev.map(str::to_string),
            volume_size,
            time,
        })
    }

    /// One chunk record of the session in progress (not flushed: the
    /// commit flushes). A failure leaves the stream unusable; turn it into
    /// the receiver's reason with [`Client::lost`].
    pub fn send_chunk(&mut self, h: &ChunkHeader, data: &[u8]) -> Result<(), StreamError> {
        self.conn.paced_write(|wr| wr.chunk(h, data))
    }

    /// After a failed send: the receiver's reason, if it gave one.
    pub fn lost(&mut self, e: StreamError, during: &str) -> anyhow::Error {
        self.conn.read_error_after(e, during)
    }

    /// Drops the session in progress on the receiver's side.
    pub fn abort(&mut self) -> Result<()> {
        self.call_ok(&Request::Abort)
    }

    /// A resumed record: the unfinished session's chunk at `r.addr` is the
    /// one to keep (not flushed; see [`Client::send_chunk`]).
    pub fn send_resume(&mut self, r: ResumedChunk) -> Result<(), StreamError> {
        self.conn.paced_write(|wr| wr.request(&Request::Resume(r)))
    }

    /// One reference record of the session in progress (not flushed; see
    /// [`Client::send_chunk`]).
    pub fn send_ref(&mut self, r: ChunkRef) -> Result<(), StreamError> {
        self.conn.paced_write(|wr| wr.request(&Request::Ref(r)))
    }

    /// Commits the session in progress; the receiver answers with what it
    /// stored, which must be what was sent, or with references it refused
    /// (whose data the caller sends before committing again).
    pub fn commit(&mut self, session: &str, chunks: u64, zero_chunks: u64) -> Result<Commit> {
        match self.call(&Request::Commit {
            chunks,
            zero_chunks,
        })? {
            Reply::Committed(ci)
                if ci.name == session && ci.chunks == chunks && ci.zero_chunks == zero_chunks =>
            {
                Ok(Commit::Done(ci))
            }
            Reply::Refused { addrs } if !addrs.is_empty() && addrs.len() <= MAX_REFUSED => {
                Ok(Commit::Refused(addrs))
            }
            other => Err(self.unexpected(&other, "commit")),
        }
    }

    /// Asks for the chunks of `volume` as of `session`; read them with
    /// [`Client::restore_frame`].
    pub fn restore(&mut self, volume: &str, session: &str) -> Result<()> {
        self.send(&Request::Restore {
            volume: self.need_rid(volume)?,
            session: session.to_string(),
        })
    }

    /// The next frame of a restore stream: a chunk or the end. A receiver
    /// error and any other frame are errors.
    pub fn restore_frame(&mut self) -> Result<RestoreFrame<'_>> {
        let label = self.conn.label.clone();
        match self.conn.rd.next_frame().map_err(|e| anyhow!("{e}"))? {
            Incoming::Chunk(h, data) => Ok(RestoreFrame::Chunk(h, data)),
            Incoming::Reply(Reply::StreamEnd { chunks }) => Ok(RestoreFrame::End(chunks)),
            Incoming::Reply(Reply::Error(re)) => Err(remote_error(&re, &label)),
            other => bail!("unexpected {} frame in the restore stream", other.name()),
        }
    }
}

impl Client {
    /// Asks for chunks of one session by address (`addrs` ascending, at
    /// most `MAX_READ_CHUNKS`); read the answer with
    /// [`Client::read_chunks_reply`]. Several may be sent before their
    /// answers are read: the receiver answers them in order, and never
    /// waits between them.
    pub fn send_read_chunks(&mut self, volume: &str, session: &str, addrs: &[u64]) -> Result<()> {
        self.send(&Request::ReadChunks {
            volume: self.need_rid(volume)?,
            session: session.to_string(),
            addrs: addrs.to_vec(),
        })
    }

    /// The answer to one `send_read_chunks` for `asked` addresses: the
    /// frames the receiver sent, at most one per address. Which ones came,
    /// and whether each is the chunk asked for, is the caller's to check
    /// against its manifest; a receiver error, or more frames than asked,
    /// is an error here.
    pub fn read_chunks_reply(&mut self, asked: usize) -> Result<Vec<(ChunkHeader, Vec<u8>)>> {
        let label = self.conn.label.clone();
        let mut got = Vec::with_capacity(asked);
        loop {
            match self.restore_frame()? {
                RestoreFrame::Chunk(h, data) => {
                    if got.len() == asked {
                        bail!(
                            "the receiver for {label} sent more chunks than the {asked} asked for"
                        );
                    }
                    got.push((h, data.to_vec()));
                }
                RestoreFrame::End(n) if n == got.len() as u64 => return Ok(got),
                RestoreFrame::End(n) => bail!(
                    "the receiver for {label} claims {n} chunks, it sent {}",
                    got.len()
                ),
            }
        }
    }
}

/// The most entries of a listing dom0 accepts when it knows of `known`:
/// one page more, for what the archive has and dom0 does not (reported,
/// not refused), and no more: a hostile receiver cannot make dom0 hold an
/// endless listing.
pub fn at_most(known: usize) -> usize {
    known.saturating_add(protocol::message::LIST_PAGE)
}

/// An archive's identity for messages: its id, and the chunk size and
/// compression when the id is the same.
fn describe(p: &ArchiveParams) -> String {
    format!(
        "{} (chunk size {}, {})",
        p.id.to_hex(),
        crate::units::human(p.chunk_size as u64),
        p.compression
    )
}

/// `Reply::Data` parts as a byte stream, ending at `StreamEnd`: a
/// manifest, or one of dom0's records.
pub struct ManifestStream<'a> {
    conn: &'a mut Connection,
    what: &'static str,
    buf: Vec<u8>,
    pos: usize,
    parts: u64,
    /// Bytes received so far, and the most that may come.
    received: u64,
    cap: u64,
    done: bool,
    /// Set once the stream went past `cap`: the connection is unusable.
    over: Option<String>,
}

impl<'a> ManifestStream<'a> {
    fn new(conn: &'a mut Connection, cap: u64, what: &'static str) -> Self {
        ManifestStream {
            conn,
            what,
            buf: Vec::new(),
            pos: 0,
            parts: 0,
            received: 0,
            cap,
            done: false,
            over: None,
        }
    }

    fn fill(&mut self) -> Result<()> {
        // Whatever happens next, this stream has nothing more to give.
        self.done = true;
        let r = self
            .conn
            .rd
            .read_reply()
            .map_err(|e| self.conn.stream_error(e, self.what))?;
        match r {
            Reply::Data(b) => {
                self.received = self.received.saturating_add(b.len() as u64);
                if self.received > self.cap {
                    let why = format!(
                        "the receiver for {} sent {} bytes of a {} dom0 holds at {} bytes: giving up on it",
                        self.conn.label,
                        self.received,
                        self.what,
                        self.cap.saturating_sub(DATA_PART as u64)
                    );
                    self.over = Some(why.clone());
                    bail!(why);
                }
                self.done = false;
                self.parts += 1;
                self.buf = b;
                self.pos = 0;
            }
            Reply::StreamEnd { chunks } if chunks == self.parts => {}
            Reply::StreamEnd { chunks } => bail!(
                "the receiver announced {chunks} {} parts but sent {}",
                self.what,
                self.parts
            ),
            Reply::Error(e) => return Err(remote_error(&e, &self.conn.label)),
            other => bail!(
                "unexpected {} reply while reading a {}",
                other.name(),
                self.what
            ),
        }
        Ok(())
    }

    /// Reads the next part if the current one is used up.
    fn fill_if_empty(&mut self) -> Result<()> {
        while self.pos == self.buf.len() && !self.done {
            self.fill()?;
        }
        Ok(())
    }

    /// The rest of the current part (empty at the end of the stream).
    fn take_part(&mut self) -> &[u8] {
        let p = &self.buf[self.pos..];
        self.pos = self.buf.len();
        p
    }

    /// Reads to the end of the stream so the connection stays usable; an
    /// error if it cannot be (the stream went past its cap).
    pub fn drain(&mut self) -> Result<()> {
        if let Some(why) = &self.over {
            bail!("{why}");
        }
        while !self.done {
            self.fill()?;
        }
        Ok(())
    }
}

impl std::io::Read for ManifestStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() && !self.done {
            self.fill().map_err(std::io::Error::other)?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
