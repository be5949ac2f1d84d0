//! Waiting on a descriptor with a limit, so that a peer that stops
//! reading or writing makes the transfer fail instead of hanging the
//! process (and whatever it holds: a snapshot, the archive lock).

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

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
    let ms = PollTimeout::try_from(t.as_millis().min(i32::MAX as u128) as i32)
        .unwrap_or(PollTimeout::MAX);
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

/// A reader that fails with `TimedOut` when no byte arrives for
/// `timeout`; the message comes from `stalled`.
pub struct TimedRead<R> {
    pub inner: R,
    pub timeout: Option<Duration>,
    pub stalled: fn(Duration) -> String,
}

impl<R: std::io::Read + AsFd> std::io::Read for TimedRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        wait_ready(
            self.inner.as_fd(),
            PollFlags::POLLIN,
            self.timeout,
            self.stalled,
        )?;
        self.inner.read(buf)
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

    #[test]
    fn a_silent_pipe_times_out_with_the_callers_text() {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut t = TimedRead {
            inner: r,
            timeout: Some(Duration::from_millis(50)),
            stalled: |d| format!("nothing for {} ms", d.as_millis()),
        };
        let mut b = [0u8; 4];
        let e = t.read(&mut b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(e.to_string(), "nothing for 50 ms");
        (&w).write_all(b"ab").unwrap();
        assert_eq!(t.read(&mut b).unwrap(), 2);
    }

    #[test]
    fn poll_until_reports_whether_it_held() {
        assert!(poll_until(Duration::from_millis(10), || true));
        assert!(!poll_until(Duration::from_millis(5), || false));
    }
}
