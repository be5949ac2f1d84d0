//! `open` and `close`: a session served read-only as `MOUNTPOINT/VOLUME`
//! without restoring it (see `crate::browse`).
//!
//! Order of events for `open`:
//! 1. dom0's records give the session's view (which chunk is where, and
//!    its keyed id); the receiver is connected (restore entry point) so
//!    that a wrong destination fails before anything is mounted.
//! 2. The FUSE mount is made, read-only, owned by the caller, mode 0400;
//!    its source name `sparsebak:PID` lets `close` find it.
//! 3. "Ready" is reported; reads are then served until the mount goes
//!    away: `close` (or any umount), or a signal, which unmounts first.
//!    The connection (and with it the archive's lock) is let go after
//!    `--idle` seconds without a read and made again by the next one, so
//!    backups and prunes are not shut out; on each new connection dom0's
//!    records say where a prune moved the view's chunks.
//!
//! Without `--foreground`, `open` starts itself again in the background
//! (`--serve`), waits for that process to report ready (or to fail) and
//! returns, so that a script can go on to `losetup`. The background
//! process then writes its messages (a failed read, the final counts) to
//! the log file, not to the terminal it was started from.

use crate::browse::fusefs::SessionFs;
use crate::browse::image::{ChunkSource, Frames, ImageSpec, SessionImage, Stats};
use crate::browse::{attach, mounts};
use crate::client::Client;
use crate::context::Ctx;
use crate::meta::ArchiveMeta;
use crate::report;
use crate::transport::dest::Dest;
use crate::transport::Reach;
use crate::units::{count, human};
use anyhow::{bail, Context, Result};
use protocol::message::Operation;
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub struct OpenArgs {
    pub volume: String,
    pub session: Option<String>,
    pub mountpoint: PathBuf,
    /// MiB of verified chunks kept in memory.
    pub cache_mib: u64,
    pub foreground: bool,
    /// The background process `open` started (internal).
    pub serve: bool,
    pub log: Option<PathBuf>,
    /// Release the archive after this long without a read (None: hold it
    /// while open).
    pub idle: Option<Duration>,
    /// Qubes: the qube to give the volume to, read-only.
    pub attach: Option<String>,
}

/// What `open` reports once the mount is ready.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct Ready {
    volume: String,
    session: String,
    volume_size: u64,
    mountpoint: PathBuf,
    file: PathBuf,
    pid: u32,
    log: Option<PathBuf>,
    /// With --attach: the qube and the loop device given to it.
    attached: Option<attach::Attachment>,
}

pub fn run(ctx: &Ctx, a: OpenArgs) -> Result<i32> {
    check_mountpoint(&a.mountpoint)?;
    if let Some(q) = &a.attach {
        crate::transport::dest::validate_vm_name(q)?;
    }
    if !a.foreground && !a.serve {
        return start_in_background(ctx, &a);
    }
    serve(ctx, &a)
}

fn check_mountpoint(p: &Path) -> Result<()> {
    let md = std::fs::metadata(p)
        .with_context(|| format!("mount point '{}' does not exist", p.display()))?;
    if !md.is_dir() {
        bail!("mount point '{}' is not a directory", p.display());
    }
    if let Some(m) = mounts::find(p)? {
        bail!(
            "'{}' already serves a session (process {}): sparsebak close '{}' first",
            p.display(),
            m.pid,
            p.display()
        );
    }
    Ok(())
}

/// Runs this same command again as a background server and waits until
/// it says the mount is ready, or fails.
fn start_in_background(ctx: &Ctx, a: &OpenArgs) -> Result<i32> {
    let log = a
        .log
        .clone()
        .unwrap_or_else(|| ctx.meta_dir.join("open.log"));
    let exe = std::env::current_exe().context("finding the sparsebak binary")?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.push("--serve".into());
    if a.log.is_none() {
        args.push("--log".into());
        args.push(log.clone().into());
    }
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Its own process group: Ctrl-C at the terminal that ran `open`
        // must not take the mount down later.
        .process_group(0)
        .spawn()
        .context("starting the background server")?;
    let out = child.stdout.take().expect("piped stdout");
    let mut ready: Option<Ready> = None;
    let mut error: Option<String> = None;
    // The server writes one line: its ready record, or (with --json) its
    // error document; then its stdout closes.
    for line in std::io::BufReader::new(out).lines() {
        let line = line.context("reading from the background server")?;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(r) = v.get("ready") {
            ready = serde_json::from_value(r.clone()).ok();
        } else if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            error = Some(e.to_string());
        }
    }
    let Some(r) = ready else {
        let status = child.wait().context("waiting for the background server")?;
        bail!(
            "{}",
            error.unwrap_or_else(|| format!(
                "the background server ended ({status}) before the mount was ready"
            ))
        );
    };
    report_ready(&r);
    Ok(0)
}

fn report_ready(r: &Ready) {
    report::set("volume", &r.volume);
    report::set("session", &r.session);
    report::set("volume_size", r.volume_size);
    report::set("mountpoint", &r.mountpoint);
    report::set("file", &r.file);
    report::set("pid", r.pid);
    report::set("log", &r.log);
    report::set("attached", &r.attached);
    report::line(format!(
        "opened {} session {} ({}) read-only at {}",
        r.volume,
        r.session,
        human(r.volume_size),
        r.file.display()
    ));
    report::line(format!(
        "  served by process {}{}; end it with: sparsebak close {}",
        r.pid,
        r.log
            .as_ref()
            .map_or(String::new(), |l| format!(" (messages in {})", l.display())),
        r.mountpoint.display()
    ));
    if let Some(at) = &r.attached {
        report::line(format!(
            "  attached read-only to qube '{}' as {} ({}): mount it there, e.g. mount -o ro,noload /dev/xvdi /mnt",
            at.qube,
            at.ident(),
            at.device
        ));
    }
}

/// The receiver as a chunk source: one connection, made again after a
/// failure.
struct Remote {
    client: Option<Client>,
    last_used: std::time::Instant,
    volume: String,
    dest: Dest,
    reach: Reach,
    meta: Arc<ArchiveMeta>,
    accept_rollback: bool,
    /// The sessions of the view as opened, oldest first.
    opened: Vec<String>,
    /// Where each of them is now, if a prune merged it into a later one
    /// while the archive was released.
    moved: std::collections::HashMap<String, String>,
}

impl Remote {
    /// Connects, and follows any prune that ran while the archive was
    /// released: a pruned session's chunks that the view still uses moved
    /// into the next session that remains, and are asked for there. What
    /// comes back is verified as always, so a stale map costs a failed
    /// read, never a wrong byte.
    fn connect(&mut self) -> Result<Client> {
        let mut c = Client::connect(&self.dest, &self.reach, &self.meta, Operation::Restore)?;
        let root = crate::catalog::check_fresh(&self.meta, &mut c, self.accept_rollback, false)?;
        // As at every connection; read-only here, so only said.
        crate::keycheck::check(&self.meta, &mut c, &root, false)?;
        let now: Vec<String> = self
            .meta
            .sessions(&self.volume)?
            .into_iter()
            .map(|s| s.name)
            .collect();
        self.moved.clear();
        for s in &self.opened {
            if now.binary_search(s).is_ok() {
                continue;
            }
            match now.iter().find(|n| *n > s) {
                Some(n) => {
                    self.moved.insert(s.clone(), n.clone());
                }
                None => {
                    eprintln!("sparsebak: session {s} of '{}' is no longer in the archive: reads of its chunks fail", self.volume);
                }
            }
        }
        if self
            .opened
            .last()
            .is_some_and(|s| self.moved.contains_key(s))
        {
            eprintln!(
                "sparsebak: the opened session {} of '{}' was pruned: chunks that its successor replaced are gone, and reads of them fail",
                self.opened.last().expect("non-empty"),
                self.volume
            );
        }
        Ok(c)
    }
}

impl Remote {
    /// Sends every request, then reads the answers in order.
    fn exchange(
        &mut self,
        requests: &[(&str, Vec<u64>)],
        each: &mut dyn FnMut(usize, Result<Frames>),
        answered: &mut usize,
    ) -> Result<()> {
        if self.client.is_none() {
            let c = self.connect()?;
            self.client = Some(c);
        }
        let c = self.client.as_mut().expect("connected");
        for (session, addrs) in requests {
            let at = self.moved.get(*session).map_or(*session, String::as_str);
            c.send_read_chunks(&self.volume, at, addrs)?;
        }
        while *answered < requests.len() {
            let r = c.read_chunks_reply(requests[*answered].1.len())?;
            each(*answered, Ok(r));
            *answered += 1;
        }
        Ok(())
    }
}

impl ChunkSource for Remote {
    fn fetch(
        &mut self,
        requests: &[(&str, Vec<u64>)],
        each: &mut dyn FnMut(usize, Result<Frames>),
    ) {
        // A receiver gives up on a connection idle for its idle timeout
        // (an hour by default): after a long pause, a failure before any
        // answer is that, and one fresh connection is tried before any
        // read fails.
        let idle = self.client.is_some() && self.last_used.elapsed() > Duration::from_secs(30);
        self.last_used = std::time::Instant::now();
        let mut answered = 0;
        let mut r = self.exchange(requests, each, &mut answered);
        if let Err(e) = &r {
            if idle && answered == 0 {
                crate::report::detail(format!(
                    "reconnecting after an idle connection failed: {e:#}"
                ));
                self.reset();
                r = self.exchange(requests, each, &mut answered);
            }
        }
        if let Err(e) = r {
            let why = format!("{e:#}");
            for k in answered..requests.len() {
                each(k, Err(anyhow::anyhow!("{why}")));
            }
        }
    }

    fn release_idle(&mut self, after: Duration) {
        if self.client.is_some() && self.last_used.elapsed() >= after {
            if let Some(c) = self.client.take() {
                if let Err(e) = c.finish() {
                    eprintln!("sparsebak: releasing the archive: {e:#}");
                }
            }
        }
    }

    fn reset(&mut self) {
        // Dropping the connection ends (and reaps) the receiver, waiting
        // a few seconds for a stalled one before killing it: not on the
        // read that already failed.
        if let Some(c) = self.client.take() {
            std::thread::spawn(move || drop(c));
        }
    }
}

fn serve(ctx: &Ctx, a: &OpenArgs) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    let meta = Arc::new(meta);
    let volume = a.volume.as_str();
    let sessions = meta.sessions(volume)?;
    if sessions.is_empty() {
        bail!("volume '{volume}' has no sessions in this archive");
    }
    let upto = match &a.session {
        None => sessions.len() - 1,
        Some(s) => sessions
            .iter()
            .position(|x| &x.name == s)
            .with_context(|| format!("volume '{volume}' has no session {s}"))?,
    };
    let chosen = &sessions[..=upto];
    let info = &chosen[upto];
    let scope = meta
        .scope(volume)
        .with_context(|| format!("dom0 has no archive id for volume '{volume}'"))?;
    let mut remote = Remote {
        opened: chosen.iter().map(|s| s.name.clone()).collect(),
        moved: Default::default(),
        client: None,
        last_used: std::time::Instant::now(),
        volume: volume.to_string(),
        dest,
        reach: ctx.reach.clone(),
        meta: meta.clone(),
        accept_rollback: ctx.accept_rollback,
    };
    let c = remote.connect()?;
    remote.client = Some(c);
    let rec_meta = meta.clone();
    let rec_volume = volume.to_string();
    let image = SessionImage::new(
        ImageSpec {
            volume: volume.to_string(),
            scope,
            volume_size: info.volume_size,
            chunk_size: meta.params.chunk_size as u64,
            sessions: chosen.iter().map(|s| s.name.clone()).collect(),
            keys: meta.keys.clone(),
            cache_bytes: (a.cache_mib.saturating_mul(1 << 20)).min(usize::MAX as u64) as usize,
        },
        meta.view(volume, chosen)?,
        Box::new(remote),
        // A chunk that fails is damage, as in a restore: the next backup
        // of the volume re-sends it if the newest view still uses it.
        Box::new(move |e| {
            if let Some(c) = e.chunk() {
                let _ = rec_meta.record_damaged(&rec_volume, &[c]);
            }
        }),
    )?;
    let image = Arc::new(image);
    if let Some(idle) = a.idle {
        // Releases the archive between bursts of reads, so that backups
        // and prunes run while the session stays open.
        let img = Arc::downgrade(&image);
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(250));
            match img.upgrade() {
                Some(i) => i.release_idle(idle),
                None => return,
            }
        });
    }
    let uid = nix::unistd::getuid().as_raw();
    let gid = nix::unistd::getgid().as_raw();
    let time = UNIX_EPOCH + Duration::from_secs(info.time);
    let fs = SessionFs::new(image.clone(), volume, (uid, gid), time, ctx.workers() + 2);
    let pid = std::process::id();
    let options = [
        fuser::MountOption::RO,
        fuser::MountOption::FSName(mounts::source_name(pid, a.attach.is_some())),
        fuser::MountOption::Subtype("sparsebak".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::NoExec,
        fuser::MountOption::DefaultPermissions,
    ];
    let session = fuser::Session::new(fs, &a.mountpoint, &options).with_context(|| {
        format!(
            "mounting at '{}' (FUSE: is /dev/fuse there, and are you root?)",
            a.mountpoint.display()
        )
    })?;
    let mountpoint = std::fs::canonicalize(&a.mountpoint)?;
    // Reads are served from here on (the attach below reads the file).
    let mut session = session;
    let serving = std::thread::spawn(move || {
        let r = session.run();
        drop(session);
        r
    });
    let _stats_on_signal = {
        let (img, v, sn) = (image.clone(), volume.to_string(), info.name.clone());
        // Registered first, so it runs last: the counts once all is undone.
        crate::interrupt::on_interrupt(move || {
            Some(format!("{v} session {sn}: {}", counts(&img.stats())))
        })
    };
    let _unmount = {
        let m = mounts::OpenMount {
            mountpoint: mountpoint.clone(),
            pid,
            attached: a.attach.is_some(),
        };
        crate::interrupt::on_interrupt(move || {
            Some(match mounts::unmount(&m, false, Duration::ZERO) {
                Ok(()) => format!("unmounted '{}'", m.mountpoint.display()),
                Err(_) => match mounts::unmount(&m, true, Duration::ZERO) {
                    Ok(()) => format!(
                        "'{}' was in use: detached it (reads of it now fail)",
                        m.mountpoint.display()
                    ),
                    Err(e) => format!("unable to unmount '{}': {e:#}", m.mountpoint.display()),
                },
            })
        })
    };
    let file = mountpoint.join(volume);
    // A failure from here on must not leave a mount nobody serves.
    let unmount_now = |e: anyhow::Error| {
        let m = mounts::OpenMount {
            mountpoint: mountpoint.clone(),
            pid,
            attached: false,
        };
        let _ = mounts::unmount(&m, true, Duration::ZERO);
        e
    };
    let attached = match &a.attach {
        Some(q) => Some(attach::attach(&file, q).map_err(unmount_now)?),
        None => None,
    };
    // Registered after the unmount, so it runs before it.
    let _detach = attached
        .clone()
        .map(|at| crate::interrupt::on_interrupt(move || Some(attach::detach(&at))));
    let ready = Ready {
        volume: volume.to_string(),
        session: info.name.clone(),
        volume_size: info.volume_size,
        file,
        mountpoint,
        pid,
        log: if a.serve { a.log.clone() } else { None },
        attached,
    };
    if a.serve {
        hand_over(&ready, a.log.as_deref())?;
    } else {
        report_ready(&ready);
    }
    serving
        .join()
        .expect("FUSE session thread panicked")
        .with_context(|| format!("serving '{}'", ready.mountpoint.display()))?;
    crate::interrupt::hold_if_interrupted();
    let stats = image.stats();
    report::set("stats", stats);
    report::line(closed_line(&ready, &stats));
    if a.serve {
        eprintln!("sparsebak: {}", closed_line(&ready, &stats));
    }
    Ok(0)
}

fn closed_line(r: &Ready, s: &Stats) -> String {
    format!("closed {} session {}: {}", r.volume, r.session, counts(s))
}

fn counts(s: &Stats) -> String {
    format!(
        "{}, {} verified, {} from the cache, {} failed",
        count(s.reads, "read"),
        count(s.verified, "chunk"),
        s.cache_hits,
        count(s.failed_reads, "read"),
    )
}

/// Tells the process that started this one that the mount is ready, then
/// points stdout at /dev/null and stderr at the log, so that nothing it
/// writes later lands on (or holds open) that process's terminal or pipes.
fn hand_over(r: &Ready, log: Option<&Path>) -> Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let log = log
        .map(|l| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(l)
                .with_context(|| format!("opening the log '{}'", l.display()))
        })
        .transpose()?;
    let line = serde_json::json!({ "ready": r }).to_string();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush())?;
    drop(out);
    nix::unistd::dup2(null.as_raw_fd(), 1).context("redirecting stdout")?;
    if let Some(f) = log {
        nix::unistd::dup2(f.as_raw_fd(), 2).context("redirecting stderr")?;
        eprintln!(
            "sparsebak: process {} serves {} session {} at '{}'",
            r.pid,
            r.volume,
            r.session,
            r.file.display()
        );
    }
    Ok(())
}

/// `close MOUNTPOINT`: unmounts a session `open` made, and waits for its
/// server to end (so that the archive is free for the next backup).
pub fn close(mountpoint: &Path, lazy: bool) -> Result<i32> {
    let Some(m) = mounts::find(mountpoint)? else {
        bail!(
            "'{}' is not a session opened by sparsebak (nothing unmounted)",
            mountpoint.display()
        );
    };
    let alive = mounts::server_alive(&m);
    if !alive {
        // Killed or crashed: nothing serves the mount, and every read of
        // it fails; only the mount itself is left to remove.
        report::warn(format!(
            "process {} that served '{}' is gone: removing its mount{}",
            m.pid,
            m.mountpoint.display(),
            if m.attached {
                " (a loop device or qube attachment it made may be left: see losetup -a and qvm-block list)"
            } else {
                ""
            }
        ));
        mounts::unmount(&m, true, Duration::ZERO)?;
    } else if m.attached {
        // Its server detaches the loop device from the qube and removes
        // it before it unmounts: a signal asks it to, as Ctrl-C would.
        mounts::stop_server(&m, Duration::from_secs(60))?;
    } else {
        mounts::unmount(&m, lazy, Duration::from_secs(30))?;
    }
    report::set("mountpoint", &m.mountpoint);
    report::set("pid", m.pid);
    report::line(format!(
        "closed '{}'{}",
        m.mountpoint.display(),
        if lazy {
            " (detached: it goes away when its last user does)"
        } else {
            ""
        }
    ));
    Ok(0)
}
