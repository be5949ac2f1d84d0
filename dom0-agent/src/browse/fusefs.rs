//! The FUSE front of an opened session: a read-only directory holding one
//! file, named for the volume, whose bytes are the image's. Kernel reads
//! are handed to a few worker threads (the session loop itself only
//! dispatches), so the kernel's parallel read-ahead overlaps fetching
//! with verifying; any read that fails is EIO, and the error is logged
//! on stderr. Writes cannot happen: the mount is read-only and `open`
//! refuses write access.

use super::image::SessionImage;
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};
use std::ffi::{OsStr, OsString};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

const ROOT: u64 = 1;
const FILE: u64 = 2;
/// Nothing here ever changes while mounted.
const TTL: Duration = Duration::from_secs(3600);

struct ReadJob {
    offset: u64,
    size: u32,
    reply: ReplyData,
}

pub struct SessionFs {
    image: Arc<SessionImage>,
    name: OsString,
    uid: u32,
    gid: u32,
    time: SystemTime,
    jobs: SyncSender<ReadJob>,
}

impl SessionFs {
    /// Serves `image` as `name`, owned by `uid`:`gid` (mode 0400: the
    /// plain data of a volume is for its owner only), dated `time`, with
    /// `workers` threads answering reads.
    pub fn new(
        image: Arc<SessionImage>,
        name: &str,
        owner: (u32, u32),
        time: SystemTime,
        workers: usize,
    ) -> Self {
        let (tx, rx) = sync_channel::<ReadJob>(workers * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..workers.max(1) {
            let (img, rx) = (image.clone(), rx.clone());
            std::thread::spawn(move || serve_reads(&img, &rx));
        }
        SessionFs {
            image,
            name: name.into(),
            uid: owner.0,
            gid: owner.1,
            time,
            jobs: tx,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size, nlink) = if ino == ROOT {
            (FileType::Directory, 0o500, 0, 2)
        } else {
            (FileType::RegularFile, 0o400, self.image.size(), 1)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.time,
            mtime: self.time,
            ctime: self.time,
            crtime: self.time,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn serve_reads(image: &Arc<SessionImage>, jobs: &Mutex<Receiver<ReadJob>>) {
    loop {
        let Ok(job) = jobs.lock().expect("read jobs").recv() else {
            return;
        };
        match image.read(job.offset, job.size as usize) {
            Ok(data) => job.reply.data(&data),
            Err(e) => {
                eprintln!("sparsebak: read at {:#x} failed (EIO): {e}", job.offset);
                job.reply.error(libc_eio());
            }
        }
    }
}

fn libc_eio() -> i32 {
    nix::errno::Errno::EIO as i32
}

impl Filesystem for SessionFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), i32> {
        // Larger kernel read-ahead, where the kernel allows it: fewer,
        // larger reads of a sequential scan.
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        if parent == ROOT && name == self.name {
            reply.entry(&TTL, &self.attr(FILE), 0);
        } else {
            reply.error(nix::errno::Errno::ENOENT as i32);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match ino {
            ROOT | FILE => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(nix::errno::Errno::ENOENT as i32),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if ino != FILE {
            reply.error(nix::errno::Errno::EISDIR as i32);
        } else if flags & nix::libc::O_ACCMODE != nix::libc::O_RDONLY {
            reply.error(nix::errno::Errno::EROFS as i32);
        } else {
            // FOPEN_DIRECT_IO: each read comes here whole (up to 1 MiB a
            // request), not in the page cache's 128 KiB read-ahead steps,
            // and dom0 does not keep a second copy of what the image's
            // cache (or the loop device's user) already holds.
            reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        if ino != FILE || offset < 0 {
            reply.error(nix::errno::Errno::EINVAL as i32);
            return;
        }
        let job = ReadJob {
            offset: offset as u64,
            size,
            reply,
        };
        if let Err(e) = self.jobs.send(job) {
            e.0.reply.error(libc_eio());
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if ino != ROOT {
            reply.error(nix::errno::Errno::ENOTDIR as i32);
            return;
        }
        let entries = [
            (ROOT, FileType::Directory, OsStr::new(".")),
            (ROOT, FileType::Directory, OsStr::new("..")),
            (FILE, FileType::RegularFile, self.name.as_os_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, i as i64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
