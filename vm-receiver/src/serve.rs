//! One connection: handshake, then requests until `Bye` or end of stream.
//!
//! Everything the agent sends is validated by `protocol` and by the archive
//! code before it touches the disk; a bad frame ends the connection with an
//! error reply, and any session in progress is dropped.

use crate::archive::blob::{self, Upload};
use crate::archive::session::SessionWriter;
use crate::archive::{check, lock, prune, read, restore, Archive};
use crate::error::Failure;
use protocol::message::{ErrorCode, Hello, HelloBody, Operation, Reply, Request};
use protocol::stream::{FrameReader, FrameWriter, Incoming, Pace, StreamError};
use std::io::{Read, Write};
use std::path::Path;
use std::path::PathBuf;

pub struct ServeOptions {
    pub archive_dir: PathBuf,
    /// Operations this entry point permits (a restore-only service, say).
    pub allowed: Vec<Operation>,
    /// How long to wait for another connection to release the archive.
    pub lock_wait: std::time::Duration,
    /// Told where each frame from the agent begins and ends (to bound how
    /// long one frame may take; see `sysio::timed`).
    pub pace: Option<Pace>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// Serves one connection. Returns an error for anything that ended it
/// abnormally (after telling the agent, where the stream still allows it).
pub fn serve<R: Read, W: Write>(
    opts: &ServeOptions,
    input: R,
    output: W,
) -> Result<(), ServeError> {
    let mut rd = FrameReader::new(input);
    rd.set_pace(opts.pace.clone());
    let mut wr = FrameWriter::new(output);
    let hello = rd.read_hello();
    // Readers share the archive with each other and with a backup; writers
    // hold it one at a time (archive/lock.rs). Held until the connection
    // ends; a failure to get it is reported on the first request.
    let reading = matches!(
        &hello,
        Ok(Hello {
            body: HelloBody::Agent {
                op: Operation::Restore,
                ..
            },
            ..
        })
    );
    let held = if reading {
        hold_to_read(opts)
    } else {
        hold_to_write(opts)
    };
    // The lock lives in `_lock` until the connection ends.
    let (_lock, mut archive) = match held {
        Ok((lock, a)) => (lock, Ok(a)),
        Err(f) => (None, Err(f)),
    };
    let params = archive
        .as_ref()
        .ok()
        .and_then(|a| a.as_ref().map(|a| a.params));
    // Answer even a bad hello, so the agent can report a version mismatch.
    wr.hello(&Hello::new(HelloBody::Receiver { archive: params }))?;
    let (expected_id, op) = match hello?.body {
        HelloBody::Agent { archive_id, op } => (archive_id, op),
        HelloBody::Receiver { .. } => {
            return Err(fail(
                &mut wr,
                Failure::new(ErrorCode::BadRequest, "peer sent a receiver hello"),
            ))
        }
    };
    if !opts.allowed.contains(&op) {
        return Err(fail(
            &mut wr,
            Failure::new(
                ErrorCode::BadRequest,
                format!("{} connections are not offered here", op.describe()),
            ),
        ));
    }
    // A record upload in progress: its parts must come one after another.
    let mut upload: Option<Upload> = None;
    // Read buffers, kept across random-access reads.
    let mut pool = Vec::new();
    // What is said of left-out chunks: bounded per connection.
    let skipped = crate::skiplog::SkipLog::default();
    loop {
        let req = match rd.read_request() {
            Ok(r) => r,
            Err(StreamError::Eof) => return Ok(()),
            Err(e) => return Err(fail_stream(&mut wr, e)),
        };
        if let Request::Bye = req {
            wr.flush()?;
            return Ok(());
        }
        if !matches!(req, Request::PutBlob { .. }) {
            upload = None;
        }
        if let Request::Init {
            params,
            key,
            root,
            mkdir,
        } = req
        {
            let r = if op == Operation::Admin {
                Archive::init(&opts.archive_dir, params, &key, &root, mkdir).map(|a| {
                    archive = Ok(Some(a));
                })
            } else {
                Err(Failure::new(
                    ErrorCode::BadRequest,
                    "init needs an admin connection",
                ))
            };
            reply_result(&mut wr, r.map(|_| Reply::Ok))?;
            continue;
        }
        let a = match &archive {
            Ok(Some(a)) => a,
            Ok(None) => {
                let f = Failure::new(
                    ErrorCode::NoArchive,
                    format!(
                        "no archive at '{}' (run arch-init)",
                        opts.archive_dir.display()
                    ),
                );
                reply_result(&mut wr, Err(f))?;
                continue;
            }
            Err(f) => {
                reply_result(&mut wr, Err(Failure::new(f.code, f.message.clone())))?;
                continue;
            }
        };
        if expected_id.is_some_and(|id| id != a.params.id)
            && !matches!(req, Request::ListVolumes { .. })
        {
            let f = Failure::new(
                ErrorCode::ArchiveMismatch,
                format!(
                    "the archive at '{}' is not the one the agent expects",
                    a.root.display()
                ),
            );
            reply_result(&mut wr, Err(f))?;
            continue;
        }
        match req {
            Request::ListVolumes { after } => {
                let r = a
                    .volume_page(after.as_deref())
                    .map(|(names, more)| Reply::Volumes { names, more });
                reply_result(&mut wr, r)?;
            }
            Request::ListSessions { volume, after } => {
                let r = a
                    .session_page(&volume, after.as_deref())
                    .map(|(sessions, more)| Reply::Sessions { sessions, more });
                reply_result(&mut wr, r)?;
            }
            Request::BeginSession {
                volume,
                session,
                prev,
                volume_size,
                time,
            } if op == Operation::Backup => {
                let w = match SessionWriter::begin(
                    a,
                    &volume,
                    &session,
                    prev.as_deref(),
                    volume_size,
                    time,
                ) {
                    Ok(w) => w,
                    Err(f) => {
                        reply_result(&mut wr, Err(f))?;
                        continue;
                    }
                };
                wr.reply(&Reply::Ok)?;
                wr.flush()?;
                receive_session(a, &mut rd, &mut wr, w)?;
            }
            Request::Unfinished { volume } if op == Operation::Backup => {
                let r = a
                    .volume_dir(&volume)
                    .and_then(|d| crate::archive::resume::settle(&d, a.chunk_size()))
                    .and_then(|m| match m {
                        Some(m) => send_file(&m, "manifest", &mut wr),
                        None => Ok(0),
                    });
                reply_result(&mut wr, r.map(|parts| Reply::StreamEnd { chunks: parts }))?;
            }
            Request::Prune { volume, session } if op == Operation::Admin => {
                let r = lock::store(&a.root, opts.lock_wait, "a prune")
                    .and_then(|_held| prune::prune(a, &volume, &session))
                    .map(Reply::Pruned);
                reply_result(&mut wr, r)?;
            }
            Request::DeleteVolume { volume } if op == Operation::Admin => {
                let r = lock::store(&a.root, opts.lock_wait, "deleting a volume")
                    .and_then(|_held| a.delete_volume(&volume))
                    .map(|_| Reply::Ok);
                reply_result(&mut wr, r)?;
            }
            Request::DropSession { volume, session } if op != Operation::Restore => {
                let r = lock::store(&a.root, opts.lock_wait, "dropping a session")
                    .and_then(|_held| a.drop_newest(&volume, &session))
                    .map(|_| Reply::Ok);
                reply_result(&mut wr, r)?;
            }
            Request::Check { volume } if op == Operation::Admin => {
                let r = check::check(a, volume.as_deref()).map(|r| Reply::CheckReport {
                    checked: r.checked,
                    findings: r.findings,
                    more: r.more,
                });
                reply_result(&mut wr, r)?;
            }
            Request::GetManifest { volume, session } if op == Operation::Admin => {
                let r = send_manifest(a, &volume, &session, &mut wr);
                reply_result(&mut wr, r.map(|parts| Reply::StreamEnd { chunks: parts }))?;
            }
            Request::GetBlob { blob: b } => {
                let r = send_file(&blob::path(&a.root, b), b.name(), &mut wr);
                reply_result(&mut wr, r.map(|parts| Reply::StreamEnd { chunks: parts }))?;
            }
            Request::PutBlob {
                blob: b,
                data,
                last,
            } if op != Operation::Restore => {
                let mut up = match upload.take() {
                    Some(u) if u.blob() == b => u,
                    _ => match Upload::start(a, b) {
                        Ok(u) => u,
                        Err(f) => return Err(fail(&mut wr, f)),
                    },
                };
                let r = up.append(&data).and_then(|_| {
                    if last {
                        up.finish(a)
                    } else {
                        upload = Some(up);
                        Ok(())
                    }
                });
                if let Err(f) = r {
                    return Err(fail(&mut wr, f));
                }
                reply_result(&mut wr, Ok(Reply::Ok))?;
            }
            Request::Restore { volume, session } if op == Operation::Restore => {
                let r = restore::stream_view(a, &volume, &session, &skipped, |h, data| {
                    wr.chunk(h, data)
                        .map_err(|e| Failure::new(ErrorCode::Io, format!("sending chunk: {e}")))
                });
                reply_result(&mut wr, r.map(|chunks| Reply::StreamEnd { chunks }))?;
            }
            Request::ReadChunks {
                volume,
                session,
                addrs,
            } if op == Operation::Restore => {
                let r = read::read_chunks(
                    a,
                    &volume,
                    &session,
                    &addrs,
                    &mut pool,
                    &skipped,
                    |h, data| {
                        wr.chunk(h, data)
                            .map_err(|e| Failure::new(ErrorCode::Io, format!("sending chunk: {e}")))
                    },
                );
                reply_result(&mut wr, r.map(|chunks| Reply::StreamEnd { chunks }))?;
            }
            other => {
                let f = Failure::new(
                    ErrorCode::BadRequest,
                    format!(
                        "a {} request on a {} connection",
                        other.name(),
                        op.describe()
                    ),
                );
                return Err(fail(&mut wr, f));
            }
        }
    }
}

/// The lock a connection holds (none before the archive exists), and the
/// archive, opened once under it.
type Held = (Option<lock::Held>, Option<Archive>);

/// What a writer holds for its connection: the writer lock, after
/// finishing what a crash left, with the store held exclusive only for
/// that.
fn hold_to_write(opts: &ServeOptions) -> Result<Held, Failure> {
    let writer = lock::writer(&opts.archive_dir, opts.lock_wait)?;
    let archive = Archive::open(&opts.archive_dir)?;
    if let Some(a) = &archive {
        if a.needs_recovery()? {
            let _store = lock::store(&a.root, opts.lock_wait, "finishing an interrupted prune")?;
            a.recover(true)?;
        } else {
            a.recover(false)?;
        }
    }
    Ok((writer, archive))
}

/// What a reader holds for its connection: the store, shared. A crash's
/// leftovers that a read would trip on (a prune half done) are finished
/// first, as a writer would, before the shared lock is taken again.
fn hold_to_read(opts: &ServeOptions) -> Result<Held, Failure> {
    let shared = lock::reader(&opts.archive_dir, opts.lock_wait)?;
    match Archive::open(&opts.archive_dir)? {
        Some(a) if a.needs_recovery()? => {
            drop(shared);
            let (writer, archive) = hold_to_write(opts)?;
            drop(writer);
            Ok((lock::reader(&opts.archive_dir, opts.lock_wait)?, archive))
        }
        archive => Ok((shared, archive)),
    }
}

/// A session's manifest file as `Data` parts; returns the number of parts.
fn send_manifest<W: Write>(
    a: &Archive,
    volume: &str,
    session: &str,
    wr: &mut FrameWriter<W>,
) -> Result<u64, Failure> {
    let dir = a.committed_session_dir(volume, session)?;
    send_file(
        &dir.join(crate::archive::session::MANIFEST_FILE),
        "manifest",
        wr,
    )
}

/// A file as `Data` parts; returns the number of parts.
fn send_file<W: Write>(path: &Path, what: &str, wr: &mut FrameWriter<W>) -> Result<u64, Failure> {
    let mut f =
        std::fs::File::open(path).map_err(|e| Failure::io(&format!("open {what}"), path, e))?;
    let mut buf = vec![0u8; protocol::message::DATA_PART];
    let mut parts = 0;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Failure::io(&format!("read {what}"), path, e))?;
        if n == 0 {
            return Ok(parts);
        }
        wr.reply(&Reply::Data(buf[..n].to_vec()))
            .map_err(|e| Failure::new(ErrorCode::Io, format!("sending {what}: {e}")))?;
        parts += 1;
    }
}

/// Chunk frames until `Commit` or `Abort`.
fn receive_session<R: Read, W: Write>(
    a: &Archive,
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    mut w: SessionWriter,
) -> Result<(), ServeError> {
    let mut filling = false;
    loop {
        // Each frame is read straight into a writer buffer, where its data
        // stays until written to its chunk file.
        let mut buf = match w.buffer() {
            Ok(b) => b,
            Err(f) => return Err(fail(wr, f)),
        };
        let base = buf.whole().as_ptr() as usize;
        let frame = match rd.next_frame_into(SessionWriter::frame_space(&mut buf)) {
            Ok(f) => f,
            // A cut stream (end of input, inside a frame or between two; an
            // I/O error; a timeout): what the session stored is kept for
            // the next backup of the volume to resume from. A malformed
            // frame ends the session like any error.
            Err(e) => {
                let cut = match &e {
                    StreamError::Protocol(p) => {
                        matches!(p, protocol::ProtocolError::Truncated(_))
                    }
                    StreamError::Io(_) | StreamError::Eof => true,
                };
                if cut {
                    w.keep_for_resume();
                }
                return Err(fail_stream(wr, e));
            }
        };
        match frame {
            // After a `Refused` answer, chunks are the refused ones' data.
            Incoming::Chunk(h, data) => {
                let (start, len) = (data.as_ptr() as usize - base, data.len());
                let r = if filling {
                    w.fill_chunk(&h, buf, start, len)
                } else {
                    w.add_chunk(&h, buf, start, len)
                };
                if let Err(f) = r {
                    return Err(fail(wr, f));
                }
            }
            Incoming::Request(Request::Ref(r)) if !filling => {
                w.put_back(buf);
                if let Err(f) = w.add_ref(a, &r) {
                    return Err(fail(wr, f));
                }
            }
            Incoming::Request(Request::Resume(r)) if !filling => {
                w.put_back(buf);
                if let Err(f) = w.add_resumed(&r) {
                    return Err(fail(wr, f));
                }
            }
            Incoming::Request(Request::Commit { .. }) if w.awaiting_data() => {
                w.put_back(buf);
                filling = true;
                wr.reply(&Reply::Refused { addrs: w.refused() })?;
                wr.flush()?;
            }
            Incoming::Request(Request::Commit {
                chunks,
                zero_chunks,
            }) => {
                return match w.commit(chunks, zero_chunks) {
                    Ok(info) => {
                        wr.reply(&Reply::Committed(info))?;
                        wr.flush()?;
                        Ok(())
                    }
                    Err(f) => Err(fail(wr, f)),
                };
            }
            Incoming::Request(Request::Abort) => {
                drop(w);
                wr.reply(&Reply::Ok)?;
                wr.flush()?;
                return Ok(());
            }
            other => {
                let f = Failure::new(
                    ErrorCode::BadRequest,
                    format!("unexpected {} frame inside a session", other.name()),
                );
                return Err(fail(wr, f));
            }
        }
    }
}

fn reply_result<W: Write>(
    wr: &mut FrameWriter<W>,
    r: Result<Reply, Failure>,
) -> Result<(), ServeError> {
    let reply = match r {
        Ok(reply) => reply,
        Err(f) => Reply::Error(f.to_remote()),
    };
    wr.reply(&reply)?;
    wr.flush()?;
    Ok(())
}

/// Tells the agent (best effort: the pipe may be gone) and returns the error.
fn fail<W: Write>(wr: &mut FrameWriter<W>, f: Failure) -> ServeError {
    let _ = wr
        .reply(&Reply::Error(f.to_remote()))
        .and_then(|_| wr.flush());
    ServeError::Failed(f)
}

fn fail_stream<W: Write>(wr: &mut FrameWriter<W>, e: StreamError) -> ServeError {
    let code = if matches!(e, StreamError::Io(_)) {
        ErrorCode::Io
    } else {
        ErrorCode::BadRequest
    };
    let _ = wr
        .reply(&Reply::Error(protocol::message::RemoteError {
            code,
            message: e.to_string(),
        }))
        .and_then(|_| wr.flush());
    ServeError::Stream(e)
}
