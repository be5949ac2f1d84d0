//! Waiting on a descriptor with limits, so that a peer that stops reading
//! or writing, or trickles, makes the transfer fail instead of holding the
//! process (and whatever it holds: a snapshot, the archive lock).
//!
//! Three bounds, each optional ([`Limits`]): *stall*, the longest wait for
//! any byte to move; *frame*, the longest one frame may take once its
//! header is in (a peer sending one byte every second never stalls, but
//! cannot stretch a frame past this); *job*, a deadline for the whole run
//! that a scheduled job can rely on.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits until `fd` is ready for `events`, at most `timeout` (None: no
/// wait at all, the caller blocks in its own read or write). On timeout
/// the error is `TimedOut` with the text `stalled()` gives.
pub fn wait_ready(
    fd: BorrowedFd,
    events: PollFlags,
    timeout: Option<Duration>,
    stalled: impl FnOnce(Duration) -> String,
) -> std::io::Result<()> {
    let Some(t) = timeout else { return Ok(()) };
    // Rounded up: a deadline is never reported before it has passed.
    let ms = t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let ms = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(fd, events)];
        match poll(&mut fds, ms) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    stalled(t),
                ))
            }
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Which bound ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Nothing moved for the stall limit.
    Stall,
    /// One frame took longer than the frame limit.
    Frame,
    /// The whole job's deadline passed.
    Job,
}

const NONE: u64 = u64::MAX;

/// The limits of one connection, shared by its reader and writer (and
/// armed per frame by whoever knows where frames are).
pub struct Limits {
    base: Instant,
    /// Milliseconds; `NONE`: no limit.
    stall_ms: AtomicU64,
    frame_ms: u64,
    /// Deadline of the frame in progress, in ms since `base`; `NONE`.
    frame_end: AtomicU64,
    job_end: Option<Instant>,
    job_limit: Duration,
    /// The error text for a bound that ran out, and the limit it had.
    text: fn(Bound, Duration) -> String,
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(NONE, |d| (d.as_millis() as u64).min(NONE - 1))
}

impl Limits {
    /// `job`: the deadline of the whole job and the limit it came from.
    pub fn new(
        stall: Option<Duration>,
        frame: Option<Duration>,
        job: Option<(Instant, Duration)>,
        text: fn(Bound, Duration) -> String,
    ) -> Self {
        Limits {
            base: Instant::now(),
            stall_ms: AtomicU64::new(ms(stall)),
            frame_ms: ms(frame),
            frame_end: AtomicU64::new(NONE),
            job_end: job.map(|j| j.0),
            job_limit: job.map_or(Duration::ZERO, |j| j.1),
            text,
        }
    }

    pub fn stall(&self) -> Option<Duration> {
        match self.stall_ms.load(Ordering::Relaxed) {
            NONE => None,
            m => Some(Duration::from_millis(m)),
        }
    }

    /// Changes the stall limit (None: wait as long as it takes, for an
    /// answer that takes long by nature; the job deadline still holds).
    pub fn set_stall(&self, t: Option<Duration>) {
        self.stall_ms.store(ms(t), Ordering::Relaxed);
    }

    /// A frame has begun (true) or ended (false).
    pub fn frame(&self, started: bool) {
        let end = match (started, self.frame_ms) {
            (true, f) if f != NONE => (self.base.elapsed().as_millis() as u64).saturating_add(f),
            _ => NONE,
        };
        self.frame_end.store(end, Ordering::Relaxed);
    }

    /// The time left before the nearest bound, and which bound that is.
    fn left(&self) -> Option<(Duration, Bound)> {
        let now = self.base.elapsed();
        let mut best: Option<(Duration, Bound)> = self.stall().map(|d| (d, Bound::Stall));
        let mut consider = |d: Duration, b: Bound| {
            if best.is_none_or(|(x, _)| d < x) {
                best = Some((d, b));
            }
        };
        match self.frame_end.load(Ordering::Relaxed) {
            NONE => {}
            end => consider(Duration::from_millis(end).saturating_sub(now), Bound::Frame),
        }
        if let Some(end) = self.job_end {
            consider(end.saturating_duration_since(Instant::now()), Bound::Job);
        }
        best
    }

    /// Waits until `fd` is ready for `events` within every bound.
    pub fn wait(&self, fd: BorrowedFd, events: PollFlags) -> std::io::Result<()> {
        let Some((t, bound)) = self.left() else {
            return Ok(());
        };
        let limit = match bound {
            Bound::Stall => t,
            Bound::Frame => Duration::from_millis(self.frame_ms),
            Bound::Job => self.job_limit,
        };
        // A deadline that has passed fails even if bytes are waiting: a
        // peer that always has one more byte ready must not get past it.
        if t.is_zero() && bound != Bound::Stall {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                (self.text)(bound, limit),
            ));
        }
        wait_ready(fd, events, Some(t), |_| (self.text)(bound, limit))
    }
}

/// A reader whose every wait is within `limits`.
pub struct TimedRead<R> {
    pub inner: R,
    pub limits: Arc<Limits>,
}

impl<R: std::io::Read + AsFd> std::io::Read for TimedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.limits.wait(self.inner.as_fd(), PollFlags::POLLIN)?;
        self.inner.read(buf)
    }
}

/// A writer whose writes are watched: when one stays blocked longer than
/// `limit` (the peer stopped reading), a watchdog thread calls `stuck`.
/// A blocking write cannot be interrupted from outside without `unsafe`
/// or making the descriptor non-blocking (which would change it for
/// whoever shares it, such as an ssh or qrexec peer), so `stuck` is
/// expected to end the process: what it holds (the archive's lock, by
/// `flock`) goes with it, as on any kill, which the archive survives.
/// Writes go in pieces of at most [`WATCHED_PIECE`] bytes, so the limit
/// bounds a piece that moves nothing, not a large frame to a slow reader.
pub struct WatchedWrite<W> {
    inner: W,
    watch: Arc<Watch>,
}

/// The most one watched `write` passes down at a time.
pub const WATCHED_PIECE: usize = 64 << 10;

struct Watch {
    base: Instant,
    /// When the write in progress began, ms since `base`; `NONE`: none.
    since: AtomicU64,
    /// The watched writer was dropped: the watchdog ends.
    done: std::sync::atomic::AtomicBool,
}

impl<W: std::io::Write> WatchedWrite<W> {
    pub fn new(inner: W, limit: Duration, stuck: impl FnOnce(Duration) + Send + 'static) -> Self {
        let watch = Arc::new(Watch {
            base: Instant::now(),
            since: AtomicU64::new(NONE),
            done: false.into(),
        });
        let w = watch.clone();
        let tick = (limit / 8).clamp(Duration::from_millis(10), Duration::from_millis(500));
        std::thread::spawn(move || loop {
            std::thread::sleep(tick);
            if w.done.load(Ordering::Relaxed) {
                return;
            }
            let since = w.since.load(Ordering::Relaxed);
            let now = w.base.elapsed().as_millis() as u64;
            if since != NONE && now.saturating_sub(since) > limit.as_millis() as u64 {
                stuck(limit);
                return;
            }
        });
        WatchedWrite { inner, watch }
    }
}

impl<W: std::io::Write> std::io::Write for WatchedWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let piece = &buf[..buf.len().min(WATCHED_PIECE)];
        let w = &self.watch;
        w.since
            .store(w.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        let r = self.inner.write(piece);
        w.since.store(NONE, Ordering::Relaxed);
        r
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let w = &self.watch;
        w.since
            .store(w.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        let r = self.inner.flush();
        w.since.store(NONE, Ordering::Relaxed);
        r
    }
}

impl<W> Drop for WatchedWrite<W> {
    fn drop(&mut self) {
        self.watch.done.store(true, Ordering::Relaxed);
    }
}

/// Polls `done` until it holds or `limit` has passed; whether it held.
/// Sleeps 1 ms at first, doubling up to 50 ms: an answer that comes at
/// once (a child's usual exit) costs a millisecond, not a fixed tick.
pub fn poll_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    let mut nap = Duration::from_millis(1);
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn text(b: Bound, d: Duration) -> String {
        format!("{b:?} {} ms", d.as_millis())
    }

    fn reader(limits: Limits) -> (TimedRead<std::os::unix::net::UnixStream>, impl Write) {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let limits = Arc::new(limits);
        (TimedRead { inner: r, limits }, w)
    }

    #[test]
    fn a_silent_pipe_times_out_with_the_callers_text() {
        let (mut t, mut w) = reader(Limits::new(
            Some(Duration::from_millis(50)),
            None,
            None,
            text,
        ));
        let mut b = [0u8; 4];
        let e = t.read(&mut b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "Stall 50 ms");
        w.write_all(b"ab").unwrap();
        assert_eq!(t.read(&mut b).unwrap(), 2);
    }

    #[test]
    fn a_trickled_frame_runs_out_of_its_own_limit() {
        let (mut t, mut w) = reader(Limits::new(
            Some(Duration::from_millis(400)),
            Some(Duration::from_millis(250)),
            None,
            text,
        ));
        let mut b = [0u8; 1];
        // Between frames only the stall limit holds; in a frame, bytes
        // arriving every 100 ms never stall but cannot pass 250 ms.
        t.limits.frame(true);
        let t0 = Instant::now();
        let e = loop {
            w.write_all(b"x").unwrap();
            match t.read(&mut b) {
                Ok(n) => {
                    assert_eq!(n, 1);
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => break e,
            }
        };
        assert_eq!(e.to_string(), "Frame 250 ms");
        // About 300 ms; without the frame limit it would go on for ever
        // (a generous bound for a loaded machine).
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        t.limits.frame(false);
        w.write_all(b"y").unwrap();
        assert_eq!(t.read(&mut b).unwrap(), 1);
    }

    #[test]
    fn the_job_deadline_holds_even_without_a_stall_limit() {
        let end = Instant::now() + Duration::from_millis(100);
        let (mut t, _w) = reader(Limits::new(
            None,
            None,
            Some((end, Duration::from_secs(9))),
            text,
        ));
        let mut b = [0u8; 1];
        assert_eq!(t.read(&mut b).unwrap_err().to_string(), "Job 9000 ms");
        assert!(Instant::now() >= end);
    }

    #[test]
    fn poll_until_reports_whether_it_held() {
        assert!(poll_until(Duration::from_millis(10), || true));
        assert!(!poll_until(Duration::from_millis(5), || false));
    }

    #[test]
    fn a_write_to_a_peer_that_stopped_reading_is_reported_stuck() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = b.try_clone().unwrap();
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = fired.clone();
        let t0 = Instant::now();
        let mut w = WatchedWrite::new(a, Duration::from_millis(300), move |_| {
            f.store(true, Ordering::Relaxed);
            // What the receiver does instead is end the process; here the
            // peer goes, which unblocks the write.
            let _ = peer.shutdown(std::net::Shutdown::Both);
        });
        // Far more than the socket buffer, and nobody reads.
        let r = w.write_all(&vec![7u8; 16 << 20]);
        assert!(r.is_err());
        assert!(fired.load(Ordering::Relaxed));
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "{took:?}"
        );
        drop(b);
    }

    #[test]
    fn a_reader_that_keeps_up_never_trips_the_watch() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = fired.clone();
        let mut w = WatchedWrite::new(a, Duration::from_millis(200), move |_| {
            f.store(true, Ordering::Relaxed)
        });
        let rd = std::thread::spawn(move || {
            let mut n = 0;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match b.read(&mut buf) {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k,
                }
            }
        });
        for _ in 0..64 {
            w.write_all(&vec![1u8; 1 << 20]).unwrap();
        }
        drop(w);
        assert_eq!(rd.join().unwrap(), 64 << 20);
        assert!(!fired.load(Ordering::Relaxed));
    }
}
