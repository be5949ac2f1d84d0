//! Where a restore writes: a file or a new thin LV, built under a
//! temporary name and put in place only by `finish`, after every chunk
//! verified. Dropping an unfinished target removes it, so a failed restore
//! changes nothing.

use crate::source::lvm::LvmPool;
use anyhow::{bail, Context, Result};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use sysio::aligned::DIRECT_ALIGN;
use sysio::direct::Direct;

/// What the user asked to restore into.
pub enum Target<'a> {
    /// Verify only.
    Nothing,
    /// Write a file (a new one, or replace an existing one with `force`),
    /// given permission bits `mode` once complete.
    File {
        path: PathBuf,
        force: bool,
        mode: u32,
    },
    /// Write a thin LV in the pool (a new one, or replace one with `force`).
    Lv {
        pool: &'a LvmPool,
        name: String,
        force: bool,
    },
    /// Stream the whole volume, in order, to a program's standard input
    /// (`qvm-volume import`, which commits it only when all of it arrived
    /// and the program exits 0). An argument vector, never a shell.
    Command { argv: Vec<String> },
}

/// A file being restored: a temp file beside the target, renamed at the end.
pub struct FileOut {
    tmp: PathBuf,
    path: PathBuf,
    file: File,
    mode: u32,
    done: bool,
    _interrupt: crate::interrupt::Guard,
}

impl FileOut {
    fn create(path: &Path, force: bool, size: u64, mode: u32) -> Result<Self> {
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
        // Private while it is built (a leftover from a crash may be wider);
        // the recorded mode is set once it is complete.
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("unable to create '{}'", tmp.display()))?;
        let interrupt = crate::interrupt::remove_file(tmp.clone(), "the partial restore");
        // Zero chunks stay holes: the file starts all hole.
        file.set_len(size)
            .with_context(|| format!("unable to size '{}'", tmp.display()))?;
        Ok(FileOut {
            tmp,
            path: path.to_path_buf(),
            file,
            mode,
            done: false,
            _interrupt: interrupt,
        })
    }

    fn finish(mut self) -> Result<()> {
        self.file
            .set_permissions(fs::Permissions::from_mode(self.mode & 0o7777))
            .with_context(|| format!("unable to set the mode of '{}'", self.tmp.display()))?;
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
pub struct LvOut<'a> {
    pool: &'a LvmPool,
    name: String,
    tmp: String,
    file: File,
    done: bool,
    _interrupt: crate::interrupt::Guard,
}

impl<'a> LvOut<'a> {
    fn create(pool: &'a LvmPool, name: &str, force: bool, size: u64) -> Result<Self> {
        protocol::names::validate_volume_name(name)?;
        if pool.exists(name) && !force {
            bail!("LV {}/{name} exists; use --force to replace it", pool.vg());
        }
        let tmp = format!("{name}.sbk-restore");
        if pool.exists(&tmp) {
            pool.remove_volume(&tmp)?;
        }
        pool.create_volume(&tmp, size)?;
        let interrupt = crate::interrupt::note(format!(
            "kept the partial LV {}/{tmp} (it may be open): the next restore to {name} removes it, or `lvremove {}/{tmp}`",
            pool.vg(), pool.vg()
        ));
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
            _interrupt: interrupt,
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

/// A program the volume is streamed to, in order: chunks are verified on
/// all cores and arrive here numbered in stream order; each is sent when
/// all before it were (the holes between them as zeros), a later one
/// waits in memory, at most `AHEAD` of them. The program is killed, not
/// finished, if the restore fails: it must then discard what it got
/// (`qvm-volume import` does: the size it was promised never arrives).
pub struct PipeOut {
    argv: Vec<String>,
    child: std::process::Child,
    order: std::sync::Mutex<Order>,
    /// Signalled when `Order::next` moves.
    moved: std::sync::Condvar,
    size: u64,
    done: bool,
    _interrupt: crate::interrupt::Guard,
}

/// Chunks held back before a worker with a later one waits: any worker
/// holding a later chunk means the next one is already with a worker that
/// never waits, so waiting cannot deadlock.
const AHEAD: u64 = 32;

struct Order {
    w: Option<std::process::ChildStdin>,
    /// Bytes of the volume sent.
    cursor: u64,
    /// The number of the chunk to send next.
    next: u64,
    /// Chunks that came early: number → (address, bytes; None: skipped).
    early: std::collections::BTreeMap<u64, (u64, Option<Vec<u8>>)>,
}

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

impl Order {
    fn write(&mut self, data: &[u8], at: u64) -> std::io::Result<()> {
        use std::io::Write;
        let w = self
            .w
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the pipe is closed"))?;
        if at < self.cursor {
            return Err(std::io::Error::other(format!(
                "out of order write at {at:#x} (sent up to {:#x})",
                self.cursor
            )));
        }
        while self.cursor < at {
            let n = (at - self.cursor).min(ZEROS.len() as u64) as usize;
            w.write_all(&ZEROS[..n])?;
            self.cursor += n as u64;
        }
        w.write_all(data)?;
        self.cursor += data.len() as u64;
        Ok(())
    }
}

impl PipeOut {
    fn spawn(argv: &[String], size: u64) -> Result<Self> {
        let (prog, args) = argv.split_first().context("an empty command")?;
        let mut child = std::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("unable to run {prog}"))?;
        let w = child.stdin.take();
        let interrupt = crate::interrupt::note(format!(
            "{} did not get the whole volume: it discards what it got",
            argv.join(" ")
        ));
        Ok(PipeOut {
            argv: argv.to_vec(),
            child,
            order: std::sync::Mutex::new(Order {
                w,
                cursor: 0,
                next: 0,
                early: Default::default(),
            }),
            moved: std::sync::Condvar::new(),
            size,
            done: false,
            _interrupt: interrupt,
        })
    }

    fn label(&self) -> String {
        self.argv.join(" ")
    }

    /// Chunk number `seq`, at `at` (None: it failed and is left as zeros).
    fn put(&self, seq: u64, at: u64, data: Option<&[u8]>) -> Result<()> {
        let mut o = self.order.lock().expect("pipe lock");
        while seq >= o.next + AHEAD {
            o = self.moved.wait(o).expect("pipe lock");
        }
        if seq != o.next {
            o.early.insert(seq, (at, data.map(<[u8]>::to_vec)));
            return Ok(());
        }
        let mut r = match data {
            Some(d) => o.write(d, at),
            None => Ok(()),
        };
        o.next += 1;
        while r.is_ok() {
            let n = o.next;
            let Some((at, d)) = o.early.remove(&n) else {
                break;
            };
            if let Some(d) = d {
                r = o.write(&d, at);
            }
            o.next += 1;
        }
        self.moved.notify_all();
        r.with_context(|| format!("unable to write to {}", self.label()))
    }

    fn finish(mut self) -> Result<()> {
        {
            let mut o = self.order.lock().expect("pipe lock");
            o.write(&[], self.size)
                .with_context(|| format!("unable to write to {}", self.label()))?;
            drop(o.w.take());
        }
        let st = self
            .child
            .wait()
            .with_context(|| format!("waiting for {}", self.label()))?;
        self.done = true;
        if !st.success() {
            bail!("{} failed ({st})", self.label());
        }
        Ok(())
    }
}

impl Drop for PipeOut {
    fn drop(&mut self) {
        if !self.done {
            // Killed before its input is closed: it never sees a complete
            // volume.
            let _ = self.child.kill();
            drop(self.order.lock().map(|mut o| o.w.take()));
            let _ = self.child.wait();
        }
    }
}

/// An open target.
pub enum Out<'a> {
    File(FileOut),
    Lv(LvOut<'a>),
    Pipe(PipeOut),
}

impl Out<'_> {
    /// The direct-I/O twin of the target (none for a pipe).
    pub fn direct(&self) -> Direct {
        match self {
            Out::File(o) => Direct::reopen(&o.file, true),
            Out::Lv(o) => Direct::reopen(&o.file, true),
            Out::Pipe(_) => Direct::none(),
        }
    }

    /// Writes verified chunk number `seq` of the stream (its place in
    /// the order a pipe needs) at `at`.
    pub fn put(&self, direct: &Direct, seq: u64, data: &[u8], at: u64) -> Result<()> {
        match self {
            Out::Pipe(p) => p.put(seq, at, Some(data)),
            _ => self.write_at(direct, data, at),
        }
    }

    /// Chunk number `seq` failed and is not written (a pipe sends zeros
    /// there and goes on: the restore ends, or with --salvage keeps them).
    pub fn skip(&self, seq: u64, at: u64) -> Result<()> {
        match self {
            Out::Pipe(p) => p.put(seq, at, None),
            _ => Ok(()),
        }
    }

    /// Writes `data` at `at`: its whole blocks directly (from the worker's
    /// buffer to the disk, no copy through dom0's page cache, and the disk
    /// busy during the stream rather than at the final fsync) when `data`
    /// and `at` are aligned and the target takes it, the rest buffered.
    pub fn write_at(&self, direct: &Direct, data: &[u8], at: u64) -> Result<()> {
        let f = match self {
            Out::File(o) => &o.file,
            Out::Lv(o) => &o.file,
            Out::Pipe(p) => bail!("{}: a pipe takes numbered chunks", p.label()),
        };
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
                Out::Pipe(p) => p.label(),
            };
            format!("unable to write '{what}'")
        })
    }

    pub fn finish(self) -> Result<()> {
        match self {
            Out::File(o) => o.finish(),
            Out::Lv(o) => o.finish(),
            Out::Pipe(p) => p.finish(),
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

impl<'a> Out<'a> {
    /// Opens the target `t` for a volume of `size` bytes (None: verify only).
    pub fn open(t: &Target<'a>, size: u64) -> Result<Option<Self>> {
        Ok(match t {
            Target::Nothing => None,
            Target::File { path, force, mode } => {
                Some(Out::File(FileOut::create(path, *force, size, *mode)?))
            }
            Target::Lv { pool, name, force } => {
                Some(Out::Lv(LvOut::create(pool, name, *force, size)?))
            }
            Target::Command { argv } => Some(Out::Pipe(PipeOut::spawn(argv, size)?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sbk-target-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_pipe_gets_the_volume_in_order_from_many_threads() {
        let d = tmp("pipe");
        let f = d.join("out");
        let argv = vec![
            "dd".to_string(),
            format!("of={}", f.display()),
            "status=none".into(),
        ];
        let cs = 4096u64;
        // Chunks 0..200, every third a hole (never put), odd size at the end.
        let size = 200 * cs - 100;
        let data: Vec<(u64, Vec<u8>)> = (0..200u64)
            .filter(|i| i % 3 != 1)
            .map(|i| {
                let len = (size - i * cs).min(cs) as usize;
                (i * cs, vec![(i % 251) as u8 + 1; len])
            })
            .collect();
        let out = Out::open(&Target::Command { argv }, size).unwrap().unwrap();
        let direct = out.direct();
        // As restore's workers do: each takes the next chunk in stream
        // order, one at a time, and finishes it after a while of its own.
        let queue = std::sync::Mutex::new(data.iter().enumerate());
        std::thread::scope(|s| {
            for t in 0..6u64 {
                let (out, queue, direct) = (&out, &queue, &direct);
                s.spawn(move || loop {
                    let Some((seq, (at, bytes))) = queue.lock().unwrap().next() else {
                        return;
                    };
                    let wait = (seq as u64 * 7919 + t * 104729) % 3000;
                    std::thread::sleep(std::time::Duration::from_micros(wait));
                    if seq % 7 == 0 {
                        out.skip(seq as u64, *at).unwrap();
                    } else {
                        out.put(direct, seq as u64, bytes, *at).unwrap();
                    }
                });
            }
        });
        out.finish().unwrap();
        let got = fs::read(&f).unwrap();
        let mut want = vec![0u8; size as usize];
        for (seq, (at, bytes)) in data.iter().enumerate() {
            if seq % 7 != 0 {
                want[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
            }
        }
        assert!(got == want);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unfinished_pipe_is_killed_and_a_failing_program_is_an_error() {
        let d = tmp("kill");
        let argv = vec!["sleep".to_string(), "30".into()];
        let t0 = std::time::Instant::now();
        drop(Out::open(&Target::Command { argv }, 1 << 20).unwrap());
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        let argv = vec!["false".to_string()];
        let out = Out::open(&Target::Command { argv }, 0).unwrap().unwrap();
        assert!(out
            .finish()
            .unwrap_err()
            .to_string()
            .contains("false failed"));
        let _ = fs::remove_dir_all(&d);
    }
}
