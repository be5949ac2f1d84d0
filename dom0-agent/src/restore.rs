//! `restore` and `verify`: the receiver streams the chunks of a session;
//! every chunk is checked against dom0's own manifests before a byte of it
//! is written. The stream must hold exactly the non-zero chunks of dom0's
//! view of the session, in ascending order: a missing, extra, reordered or
//! altered chunk fails with an error naming volume, session and address.
//! A file target is built under a temporary name and renamed into place
//! only when everything verified, so a failed restore changes nothing.

use crate::meta::ArchiveMeta;
use crate::progress::Progress;
use crate::source::lvm::LvmPool;
use crate::transport::{remote_error, Connection};
use crate::units::human;
use anyhow::{bail, Context, Result};
use protocol::chunk::{Codec, Hash};
use protocol::envelope::{self, OpenError};
use protocol::message::{Reply, Request};
use protocol::stream::Incoming;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Mutex;
use std::time::Instant;
use sysio::aligned::{AlignedBuf, DIRECT_ALIGN};
use sysio::direct::Direct;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error("volume '{volume}' session {session}: chunk at {addr:#x} failed verification: its SHA-256 does not match dom0's manifest")]
    HashMismatch {
        volume: String,
        session: String,
        addr: u64,
    },
    #[error(
        "volume '{volume}' session {session}: chunk at {addr:#x} failed verification: {detail}"
    )]
    BadChunk {
        volume: String,
        session: String,
        addr: u64,
        detail: String,
    },
    #[error("volume '{volume}' session {session}: expected chunk at {expected:#x}, the receiver sent {got:#x} (wrong, reordered or duplicated chunk)")]
    WrongChunk {
        volume: String,
        session: String,
        expected: u64,
        got: u64,
    },
    #[error("volume '{volume}' session {session}: chunk at {addr:#x} is missing from the receiver's stream")]
    MissingChunk {
        volume: String,
        session: String,
        addr: u64,
    },
    #[error("volume '{volume}' session {session}: the receiver sent chunks that session does not have (first at {addr:#x})")]
    ExtraChunk {
        volume: String,
        session: String,
        addr: u64,
    },
}

pub enum Target<'a> {
    /// Verify only.
    Nothing,
    /// Write a file (a new one, or replace an existing one with `force`).
    File { path: PathBuf, force: bool },
    /// Write a thin LV in the pool (a new one, or replace one with `force`).
    Lv {
        pool: &'a LvmPool,
        name: String,
        force: bool,
    },
}

pub struct Summary {
    pub volume: String,
    pub session: String,
    pub volume_size: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// A file being restored: a temp file beside the target, renamed at the end.
struct FileOut {
    tmp: PathBuf,
    path: PathBuf,
    file: File,
    done: bool,
}

impl FileOut {
    fn create(path: &Path, force: bool, size: u64) -> Result<Self> {
        match fs::symlink_metadata(path) {
            Ok(m) if !force => bail!(
                "'{}' exists ({}); use --force to replace it",
                path.display(),
                if m.is_file() {
                    "a file"
                } else {
                    "not a regular file"
                }
            ),
            Ok(m) if !m.is_file() => bail!("'{}' exists and is not a regular file", path.display()),
            _ => {}
        }
        let name = path
            .file_name()
            .with_context(|| format!("'{}' has no file name", path.display()))?;
        let tmp = path.with_file_name(format!(".{}.sparsebak-partial", name.to_string_lossy()));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("unable to create '{}'", tmp.display()))?;
        // Zero chunks stay holes: the file starts all hole.
        file.set_len(size)
            .with_context(|| format!("unable to size '{}'", tmp.display()))?;
        Ok(FileOut {
            tmp,
            path: path.to_path_buf(),
            file,
            done: false,
        })
    }

    fn finish(mut self) -> Result<()> {
        self.file
            .sync_all()
            .with_context(|| format!("unable to sync '{}'", self.tmp.display()))?;
        fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("unable to rename into '{}'", self.path.display()))?;
        self.done = true;
        let _ = sysio::atomic::fsync_dir(sysio::atomic::parent(&self.path));
        Ok(())
    }
}

/// An LV being restored: a new thin LV (all unmapped, so zero chunks need
/// neither writes nor discards), renamed over the target at the end.
struct LvOut<'a> {
    pool: &'a LvmPool,
    name: String,
    tmp: String,
    file: File,
    done: bool,
}

impl<'a> LvOut<'a> {
    fn create(pool: &'a LvmPool, name: &str, force: bool, size: u64) -> Result<Self> {
        protocol::names::validate_volume_name(name)?;
        if pool.exists(name) && !force {
            bail!("LV {}/{name} exists; use --force to replace it", pool.vg);
        }
        let tmp = format!("{name}.sbk-restore");
        if pool.exists(&tmp) {
            pool.remove_volume(&tmp)?;
        }
        pool.create_volume(&tmp, size)?;
        let dev = pool.dev_path(&tmp);
        let file = match OpenOptions::new().write(true).open(&dev) {
            Ok(f) => f,
            Err(e) => {
                let _ = pool.remove_volume(&tmp);
                return Err(e).with_context(|| format!("unable to open '{}'", dev.display()));
            }
        };
        Ok(LvOut {
            pool,
            name: name.to_string(),
            tmp,
            file,
            done: false,
        })
    }

    fn finish(mut self) -> Result<()> {
        self.file.sync_all().context("syncing the restored LV")?;
        let old = format!("{}.sbk-old", self.name);
        let replacing = self.pool.exists(&self.name);
        if replacing {
            self.pool.rename_volume(&self.name, &old)?;
        }
        self.pool.rename_volume(&self.tmp, &self.name)?;
        self.done = true;
        if replacing {
            self.pool.remove_volume(&old)?;
        }
        Ok(())
    }
}

impl Drop for LvOut<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.pool.remove_volume(&self.tmp);
        }
    }
}

enum Out<'a> {
    File(FileOut),
    Lv(LvOut<'a>),
}

impl Out<'_> {
    fn file(&self) -> &File {
        match self {
            Out::File(o) => &o.file,
            Out::Lv(o) => &o.file,
        }
    }

    /// Writes `data` at `at`: its whole blocks directly (from the worker's
    /// buffer to the disk, no copy through dom0's page cache, and the disk
    /// busy during the stream rather than at the final fsync) when `data`
    /// and `at` are aligned and the target takes it, the rest buffered.
    fn write_at(&self, direct: &Direct, data: &[u8], at: u64) -> Result<()> {
        let f = self.file();
        let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        let aligned = (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && at.is_multiple_of(DIRECT_ALIGN as u64);
        let direct = (whole > 0 && aligned)
            .then(|| direct.try_io(|d| d.write_all_at(&data[..whole], at)))
            .flatten();
        let r = match direct {
            Some(r) => r.and_then(|()| f.write_all_at(&data[whole..], at + whole as u64)),
            None => f.write_all_at(data, at),
        };
        r.with_context(|| {
            let what = match self {
                Out::File(o) => o.tmp.display().to_string(),
                Out::Lv(o) => o.tmp.clone(),
            };
            format!("unable to write '{what}'")
        })
    }

    fn finish(self) -> Result<()> {
        match self {
            Out::File(o) => o.finish(),
            Out::Lv(o) => o.finish(),
        }
    }
}

impl Drop for FileOut {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

pub fn restore(
    meta: &ArchiveMeta,
    conn: &mut Connection,
    volume: &str,
    session: Option<&str>,
    target: Target,
) -> Result<Summary> {
    let t0 = Instant::now();
    let sessions = meta.sessions(volume)?;
    if sessions.is_empty() {
        bail!(
            "volume '{volume}' has no sessions in this archive (dom0 metadata '{}')",
            meta.dir.display()
        );
    }
    let upto = match session {
        None => sessions.len() - 1,
        Some(s) => sessions
            .iter()
            .position(|x| x.name == s)
            .with_context(|| format!("volume '{volume}' has no session {s}"))?,
    };
    let chosen = &sessions[..=upto];
    let info = &chosen[upto];
    let size = info.volume_size;
    let cs = meta.params.chunk_size as u64;
    let mut out = match &target {
        Target::Nothing => None,
        Target::File { path, force } => Some(Out::File(FileOut::create(path, *force, size)?)),
        Target::Lv { pool, name, force } => Some(Out::Lv(LvOut::create(pool, name, *force, size)?)),
    };
    let view = meta.view(volume, chosen)?;
    conn.wr
        .request(&Request::Restore {
            volume: volume.to_string(),
            session: info.name.clone(),
        })
        .and_then(|_| conn.wr.flush())
        .map_err(|e| conn.read_error_after(e, "restore"))?;
    let mut progress = Progress::new(volume, size.div_ceil(cs));
    let (mut chunks, mut bytes) = (0u64, 0u64);
    // Frames are read and their order checked here; decompression, hashing
    // and positioned writes run on all cores. The target is only renamed
    // into place once everything checked, so a late failure changes nothing.
    // Two more workers than cores: a worker waiting for its direct write
    // leaves its core to another.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) + 2;
    let names: Vec<&str> = chosen.iter().map(|s| s.name.as_str()).collect();
    let target = out.as_ref().map(|o| (o, Direct::reopen(o.file(), true)));
    let target = target.as_ref();
    let (work_tx, work_rx) = sync_channel::<Work>(workers * 2);
    let work_rx = Mutex::new(work_rx);
    let streamed: Result<()> = std::thread::scope(|scope| {
        let (pool_tx, pool_rx) = channel::<Vec<u8>>();
        let (err_tx, err_rx) = channel::<anyhow::Error>();
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (work_rx, pool_tx, err_tx, names) =
                    (&work_rx, pool_tx.clone(), err_tx.clone(), &names);
                scope.spawn(move || {
                    let mut plain = AlignedBuf::new(cs as usize);
                    loop {
                        let Ok(w) = work_rx.lock().expect("work lock").recv() else {
                            return;
                        };
                        let r = check_chunk(&w, plain.whole_mut(), volume, names[w.session])
                            .and_then(|p| match target {
                                Some((o, d)) => o.write_at(d, p, w.addr),
                                None => Ok(()),
                            });
                        if let Err(e) = r {
                            let _ = err_tx.send(e);
                        }
                        let _ = pool_tx.send(w.data);
                    }
                })
            })
            .collect();
        drop(err_tx);
        let read = (|| -> Result<()> {
            for item in view {
                let (idx, e) = item?;
                if e.codec == Codec::Zero {
                    continue;
                }
                if let Ok(err) = err_rx.try_recv() {
                    return Err(err);
                }
                let from = &chosen[idx].name;
                let raw_len = (size - e.addr).min(cs) as usize;
                let frame = conn
                    .rd
                    .next_frame()
                    .map_err(|err| anyhow::anyhow!("{err}"))
                    .with_context(|| {
                        format!(
                            "volume '{volume}': reading the restore stream at chunk {:#x}",
                            e.addr
                        )
                    })?;
                let (h, data) = match frame {
                    Incoming::Chunk(h, data) => (h, data),
                    Incoming::Reply(Reply::Error(re)) => {
                        return Err(remote_error(&re, &conn.label))
                    }
                    Incoming::Reply(Reply::StreamEnd { .. }) => {
                        return Err(VerifyError::MissingChunk {
                            volume: volume.into(),
                            session: from.clone(),
                            addr: e.addr,
                        }
                        .into())
                    }
                    other => bail!(
                        "volume '{volume}': unexpected {} frame in the restore stream",
                        other.name()
                    ),
                };
                if h.addr != e.addr {
                    return Err(VerifyError::WrongChunk {
                        volume: volume.into(),
                        session: from.clone(),
                        expected: e.addr,
                        got: h.addr,
                    }
                    .into());
                }
                let mut buf = pool_rx.try_recv().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(data);
                let w = Work {
                    addr: e.addr,
                    codec: h.codec,
                    raw_len,
                    hash: e.hash,
                    session: idx,
                    data: buf,
                };
                if work_tx.send(w).is_err() {
                    bail!("restore workers stopped");
                }
                chunks += 1;
                bytes += raw_len as u64;
                progress.update(e.addr / cs, bytes);
            }
            Ok(())
        })();
        drop(work_tx);
        for h in handles {
            h.join().expect("restore worker panicked");
        }
        // A verification failure concerns an earlier chunk than a stream
        // failure noticed after it: report it first.
        match err_rx.try_recv() {
            Ok(err) => Err(err),
            Err(_) => read,
        }
    });
    streamed?;
    progress.finish();
    match conn
        .rd
        .next_frame()
        .map_err(|err| anyhow::anyhow!("{err}"))
        .with_context(|| format!("volume '{volume}': reading the end of the restore stream"))?
    {
        Incoming::Reply(Reply::StreamEnd { chunks: n }) if n == chunks => {}
        Incoming::Reply(Reply::StreamEnd { chunks: n }) => {
            bail!("volume '{volume}': the receiver claims {n} chunks, {chunks} were expected")
        }
        Incoming::Chunk(h, _) => {
            return Err(VerifyError::ExtraChunk {
                volume: volume.into(),
                session: info.name.clone(),
                addr: h.addr,
            }
            .into())
        }
        Incoming::Reply(Reply::Error(re)) => return Err(remote_error(&re, &conn.label)),
        other => bail!(
            "volume '{volume}': unexpected {} frame at the end of the restore stream",
            other.name()
        ),
    }
    if let Some(o) = out.take() {
        o.finish()?;
    }
    Ok(Summary {
        volume: volume.into(),
        session: info.name.clone(),
        volume_size: size,
        chunks,
        bytes,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// One received chunk, to be checked (and written) by a worker.
struct Work {
    addr: u64,
    codec: Codec,
    raw_len: usize,
    hash: Hash,
    /// Index of the session the chunk belongs to, for error messages.
    session: usize,
    data: Vec<u8>,
}

/// Opens a chunk (see `protocol::envelope`); returns its plain bytes if
/// they match dom0's manifest.
fn check_chunk<'a>(
    w: &'a Work,
    plain: &'a mut [u8],
    volume: &str,
    session: &str,
) -> Result<&'a [u8]> {
    envelope::open(w.codec, &w.data, w.raw_len, &w.hash, plain).map_err(|err| {
        match err {
            OpenError::Hash => VerifyError::HashMismatch {
                volume: volume.into(),
                session: session.into(),
                addr: w.addr,
            },
            detail => VerifyError::BadChunk {
                volume: volume.into(),
                session: session.into(),
                addr: w.addr,
                detail: detail.to_string(),
            },
        }
        .into()
    })
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: session {}: volume {}, {} chunks ({}) verified, {:.2} s",
            self.volume,
            self.session,
            human(self.volume_size),
            self.chunks,
            human(self.bytes),
            self.seconds
        )
    }
}
