//! Reaching the receiver: a spawned command whose stdin/stdout carry the
//! stream. Every destination kind goes through the same [`Connection`], so
//! the local `file://` path exercises exactly the protocol code the remote
//! ones use. A connection can also run over any pipe pair with the peer in
//! a thread of this process ([`Connection::in_process`]), so agent logic
//! is testable without spawning processes.
//!
//! Only `crate::client` sends requests and reads replies on a connection;
//! this module moves bytes, bounds the time a silent peer can cost, and
//! ends the peer.

pub mod dest;

use anyhow::{anyhow, bail, Context, Result};
use dest::Dest;
use nix::poll::PollFlags;
use protocol::message::{ArchiveId, ArchiveParams, Hello, HelloBody, Operation, Reply, Request};
use protocol::remote::{op_word, service_for, SERVICE_SSH_RELAY};
use protocol::stream::{FrameReader, FrameWriter, StreamError};
use std::io::{BufReader, BufWriter};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use sysio::timed::{poll_until, Bound, Limits};

/// How long a silent receiver is waited for before the stream fails.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long one frame may take once begun: the largest frame (2 MiB) at
/// 16 KiB/s, far below any working link, far above a trickling peer's
/// patience budget.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(128);

/// How long a receiver may take to exit once the connection is over.
const EXIT_GRACE: Duration = Duration::from_secs(30);

/// Buffer size of both stream directions.
const STREAM_BUF: usize = 16 << 10;

/// What each bound's error says, naming the option that sets it.
fn bound_text(b: Bound, t: Duration) -> String {
    match b {
        Bound::Stall => format!("the receiver stalled: nothing moved for {} s", t.as_secs()),
        Bound::Frame => format!(
            "one frame to or from the receiver took longer than {} s (--frame-timeout): a peer that trickles is given up",
            t.as_secs()
        ),
        Bound::Job => format!("the run's time limit of {} s ran out (--max-time)", t.as_secs()),
    }
}

/// The limits of a new connection under `reach`.
fn limits(reach: &Reach) -> Arc<Limits> {
    Arc::new(Limits::new(
        Some(reach.timeout),
        reach.frame_timeout,
        reach.deadline,
        bound_text,
    ))
}

/// The receiver's stdin. Writes are non-blocking underneath so that a
/// receiver that stops reading makes the write fail after the timeout
/// instead of hanging dom0.
struct PipeOut<P> {
    pipe: P,
    limits: Arc<Limits>,
}

impl<P: Write + AsFd> PipeOut<P> {
    /// Runs a non-blocking write, waiting (up to the timeout) while the
    /// pipe is full.
    fn retry(
        &mut self,
        mut op: impl FnMut(&mut P) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        loop {
            match op(&mut self.pipe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.limits.wait(self.pipe.as_fd(), PollFlags::POLLOUT)?
                }
                r => return r,
            }
        }
    }
}

impl<P: Write + AsFd> Write for PipeOut<P> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.retry(|p| p.write(buf))
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        self.retry(|p| p.write_vectored(bufs))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The receiver's stdout: reads wait at most the timeout for a byte.
struct PipeIn<P> {
    pipe: P,
    limits: Arc<Limits>,
}

impl<P: Read + AsFd> Read for PipeIn<P> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.limits.wait(self.pipe.as_fd(), PollFlags::POLLIN)?;
        self.pipe.read(buf)
    }
}

/// What stands in for a closed direction: writes fail, reads see the end.
struct Closed;

impl Write for Closed {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for Closed {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

pub type StreamIn = FrameReader<BufReader<Box<dyn Read + Send>>>;
pub type StreamOut = FrameWriter<BufWriter<Box<dyn Write + Send>>>;

/// The other end: a receiver process, or a thread of this process.
enum Peer {
    Process {
        child: Child,
        /// Copies the receiver's stderr; joined at the end so its last
        /// words (often the reason it failed) are printed before we exit.
        stderr_fwd: Option<std::thread::JoinHandle<()>>,
    },
    /// `serve` in a thread; true when it ended cleanly.
    Thread(Option<std::thread::JoinHandle<bool>>),
}

pub struct Connection {
    peer: Peer,
    pub(crate) rd: StreamIn,
    pub(crate) wr: StreamOut,
    limits: Arc<Limits>,
    /// What the receiver reported in its hello.
    pub archive: Option<ArchiveParams>,
    pub label: String,
}

/// The receiver program: `--remote-receiver`, else `sparsebak-receiver`
/// next to this binary, else on PATH.
pub fn default_receiver() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let sib = exe.with_file_name("sparsebak-receiver");
        if sib.is_file() {
            return sib;
        }
    }
    PathBuf::from("sparsebak-receiver")
}

/// How to reach receivers: the programs to run.
#[derive(Debug, Clone)]
pub struct Reach {
    /// The receiver program for `file://` (a local path).
    pub receiver: PathBuf,
    /// The receiver program's name on ssh hosts.
    pub remote_receiver: String,
    /// ssh and its options (e.g. `["ssh", "-F", "/etc/sparsebak/ssh_config"]`).
    pub ssh: Vec<String>,
    /// The longest wait for any byte to move.
    pub timeout: Duration,
    /// The longest one frame may take once begun.
    pub frame_timeout: Option<Duration>,
    /// The run's deadline and the limit it came from (`--max-time`).
    pub deadline: Option<(std::time::Instant, Duration)>,
}

/// Finds `prog` on PATH.
fn on_path(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// The Qubes way to start service `svc` in qube `vm`: qvm-run (it starts
/// the qube if needed, and works from a management qube under policy), or
/// qrexec-client where qvm-run is absent. Never -t/-T: they rewrite bytes.
fn qubes_command(vm: &str, svc: &str) -> Command {
    if let Some(qvm_run) = on_path("qvm-run") {
        let mut c = Command::new(qvm_run);
        c.args([
            "--pass-io",
            "--no-gui",
            "--no-filter-escape-chars",
            "--no-color-output",
            "--no-color-stderr",
            "--service",
            vm,
            svc,
        ]);
        c
    } else {
        let mut c = Command::new("qrexec-client");
        c.args(["-d", vm, &format!("DEFAULT:QUBESRPC {svc} dom0")]);
        c
    }
}

/// The command that starts the receiver for `dest`, and bytes to send
/// before the protocol starts (the ssh relay's header).
fn receiver_command(dest: &Dest, reach: &Reach, op: Operation) -> Result<(Command, Vec<u8>)> {
    Ok(match dest {
        Dest::File(path) => {
            let mut c = Command::new(&reach.receiver);
            c.arg("serve")
                .arg("--archive")
                .arg(path)
                .arg("--allow")
                .arg(op_word(op));
            (c, Vec::new())
        }
        Dest::Qubes { vm, archive } => (
            qubes_command(vm, &format!("{}+{archive}", service_for(op))),
            Vec::new(),
        ),
        Dest::Ssh(t) => {
            let (prog, opts) = reach
                .ssh
                .split_first()
                .context("the ssh command is empty")?;
            let mut c = Command::new(prog);
            c.args(opts).args(t.ssh_args(&reach.remote_receiver, op));
            (c, Vec::new())
        }
        Dest::QubesSsh { vm, target } => (
            qubes_command(vm, SERVICE_SSH_RELAY),
            target.relay_header(op).into_bytes(),
        ),
    })
}

/// Copies the receiver's stderr to ours a line at a time, escaped: it may
/// come from another qube or host and must not drive dom0's terminal.
fn forward_stderr(err: std::process::ChildStderr, label: String) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut rd = BufReader::new(err);
        let mut line = Vec::new();
        let mut total = 0usize;
        loop {
            line.clear();
            // Bounded line length: a peer cannot make us buffer without end.
            match (&mut rd).take(4096).read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
            if total > 1 << 20 {
                continue; // drain silently after 1 MiB
            }
            let text = String::from_utf8_lossy(&line);
            eprintln!(
                "sparsebak: receiver ({label}): {}",
                protocol::names::escape_text(text.trim_end_matches('\n'), 4096)
            );
        }
    })
}

/// The two directions of a connection over `input` (the receiver's output)
/// and `output` (its input), with the limits of `reach`. Our write end is
/// made non-blocking (the peer's end stays blocking), so a peer that stops
/// reading makes a write fail after the timeout instead of hanging dom0.
/// Small buffers on purpose: requests and replies are small, and a chunk
/// frame larger than the buffer bypasses it (one copy less). Every frame
/// read is paced by the limits (see `sysio::timed`).
fn streams<I, O>(input: I, output: O, reach: &Reach) -> Result<(StreamIn, StreamOut, Arc<Limits>)>
where
    I: Read + AsFd + Send + 'static,
    O: Write + AsFd + Send + 'static,
{
    {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use std::os::fd::AsRawFd;
        fcntl(
            output.as_fd().as_raw_fd(),
            FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .context("setting the receiver pipe non-blocking")?;
    }
    let limits = limits(reach);
    let input: Box<dyn Read + Send> = Box::new(PipeIn {
        pipe: input,
        limits: limits.clone(),
    });
    let output: Box<dyn Write + Send> = Box::new(PipeOut {
        pipe: output,
        limits: limits.clone(),
    });
    let mut rd = FrameReader::new(BufReader::with_capacity(STREAM_BUF, input));
    let l = limits.clone();
    rd.set_pace(Some(Arc::new(move |started| l.frame(started))));
    let wr = FrameWriter::new(BufWriter::with_capacity(STREAM_BUF, output));
    Ok((rd, wr, limits))
}

/// Spawns the receiver for `dest` and does the handshake.
pub fn connect(
    dest: &Dest,
    reach: &Reach,
    op: Operation,
    archive_id: Option<ArchiveId>,
) -> Result<Connection> {
    let (mut cmd, preamble) = receiver_command(dest, reach, op)?;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("unable to start '{prog}' for {dest}"))?;
    let stderr_fwd = Some(forward_stderr(
        child.stderr.take().expect("piped"),
        dest.to_string(),
    ));
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    // Bigger pipes: a chunk record crosses in one or two wakeups instead of
    // a dozen (best effort; the kernel may cap it).
    {
        use nix::fcntl::{fcntl, FcntlArg};
        use std::os::fd::AsRawFd;
        let _ = fcntl(stdin.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20));
        let _ = fcntl(stdout.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20));
    }
    let (rd, wr, limits) = streams(stdout, stdin, reach)?;
    let mut conn = Connection {
        peer: Peer::Process { child, stderr_fwd },
        rd,
        wr,
        limits,
        archive: None,
        label: dest.to_string(),
    };
    if let Err(e) = conn.handshake(&preamble, archive_id, op) {
        let e = match conn.exit_code_soon() {
            // qrexec's and a shell's "command not found".
            Some(127) => e.context(match dest {
                Dest::Qubes { vm, .. } | Dest::QubesSsh { vm, .. } => format!(
                    "qube '{vm}' has no {} service: install the sparsebak-vm package in its template (and restart the qube)",
                    match dest { Dest::QubesSsh { .. } => SERVICE_SSH_RELAY, _ => service_for(op) }
                ),
                Dest::Ssh(t) => format!("'{}' was not found on {}: install sparsebak-receiver there", reach.remote_receiver, t.host),
                Dest::File(_) => format!("receiver '{}' not found", reach.receiver.display()),
            }),
            _ => e,
        };
        conn.kill();
        return Err(e.context(format!("handshake with the receiver for {}", conn.label)));
    }
    Ok(conn)
}

impl Connection {
    /// A connection to a peer that `serve` runs in a thread of this
    /// process over two pipes (`serve(input, output)` gets the far ends,
    /// and returns whether it ended cleanly). The same stream code, stall
    /// timeouts and handshake as a spawned receiver: for tests of agent
    /// logic without processes.
    pub fn in_process(
        label: &str,
        reach: &Reach,
        op: Operation,
        archive_id: Option<ArchiveId>,
        serve: impl FnOnce(std::io::PipeReader, std::io::PipeWriter) -> bool + Send + 'static,
    ) -> Result<Connection> {
        let (their_in, our_out) = std::io::pipe().context("creating a pipe")?;
        let (our_in, their_out) = std::io::pipe().context("creating a pipe")?;
        let (rd, wr, limits) = streams(our_in, our_out, reach)?;
        let handle = std::thread::spawn(move || serve(their_in, their_out));
        let mut conn = Connection {
            peer: Peer::Thread(Some(handle)),
            rd,
            wr,
            limits,
            archive: None,
            label: label.to_string(),
        };
        conn.handshake(&[], archive_id, op)
            .with_context(|| format!("handshake with the receiver for {label}"))?;
        Ok(conn)
    }

    /// Sends `preamble` and our hello; reads the receiver's hello.
    fn handshake(
        &mut self,
        preamble: &[u8],
        archive_id: Option<ArchiveId>,
        op: Operation,
    ) -> Result<()> {
        let hello = Hello::new(HelloBody::Agent { archive_id, op });
        self.wr
            .get_mut()
            .write_all(preamble)
            .map_err(StreamError::Io)
            .and_then(|_| self.wr.hello(&hello))?;
        let h = self
            .rd
            .read_hello()
            .map_err(|e| self.stream_error(e, "handshake"))?;
        match h.body {
            HelloBody::Receiver { archive } => {
                self.archive = archive;
                Ok(())
            }
            HelloBody::Agent { .. } => {
                bail!("receiver at {} answered with an agent hello", self.label)
            }
        }
    }

    /// Turns a stream error into a message; a cut stream says so.
    pub fn stream_error(&mut self, e: StreamError, during: &str) -> anyhow::Error {
        match e {
            StreamError::Eof => anyhow!(
                "the receiver for {} closed the stream during {during}",
                self.label
            ),
            e => anyhow!(
                "bad stream from the receiver for {} during {during}: {e}",
                self.label
            ),
        }
    }

    /// After a failed write: read one reply for the receiver's reason.
    pub fn read_error_after(&mut self, e: StreamError, during: &str) -> anyhow::Error {
        match self.rd.read_reply() {
            Ok(Reply::Error(re)) => remote_error(&re, &self.label),
            _ => anyhow!("lost the receiver for {} during {during}: {e}", self.label),
        }
    }

    /// Ends the connection and waits (a bounded time) for the receiver to
    /// exit cleanly. One that stays is killed: after `Bye` a receiver has
    /// nothing left to do, and it must not hold dom0.
    pub fn finish(mut self) -> Result<()> {
        let _ = self.wr.request(&Request::Bye).and_then(|_| self.wr.flush());
        self.close_input();
        let grace = self.timeout().unwrap_or(EXIT_GRACE).min(EXIT_GRACE);
        match &mut self.peer {
            Peer::Process { child, .. } => {
                let mut status = None;
                poll_until(grace, || match child.try_wait() {
                    Ok(Some(st)) => {
                        status = Some(Ok(st));
                        true
                    }
                    Ok(None) => false,
                    Err(e) => {
                        status = Some(Err(e));
                        true
                    }
                });
                let Some(status) = status else {
                    self.kill();
                    bail!(
                        "the receiver for {} did not exit within {} s of the end of the connection: killed it",
                        self.label,
                        grace.as_secs()
                    );
                };
                let status = status.context("waiting for the receiver")?;
                self.join_stderr();
                if !status.success() {
                    bail!("the receiver for {} exited with {status}", self.label);
                }
            }
            Peer::Thread(h) => {
                let ok = match h.take() {
                    Some(h) if poll_until(grace, || h.is_finished()) => h.join().unwrap_or(false),
                    _ => false,
                };
                if !ok {
                    bail!("the receiver for {} ended with an error", self.label);
                }
            }
        }
        Ok(())
    }

    /// Closes the receiver's input (it sees end of input). Unflushed bytes
    /// are dropped: on an error path a flush could block on a stuck peer.
    fn close_input(&mut self) {
        *self.wr.get_mut().get_mut() = Box::new(Closed);
    }

    /// The stall timeout (None: wait forever, for requests whose answer
    /// takes long by nature, like an archive check; the run's deadline
    /// still holds).
    pub fn timeout(&self) -> Option<Duration> {
        self.limits.stall()
    }

    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.limits.set_stall(t);
    }

    /// Writes one frame with `write`, within the frame limit: a peer that
    /// reads a byte at a time cannot hold dom0 either.
    pub fn paced_write<T>(&mut self, write: impl FnOnce(&mut StreamOut) -> T) -> T {
        self.limits.frame(true);
        let r = write(&mut self.wr);
        self.limits.frame(false);
        r
    }

    /// The receiver's exit code if it exits within a moment (after a
    /// failed handshake, to tell "service missing" from other failures).
    fn exit_code_soon(&mut self) -> Option<i32> {
        let Peer::Process { child, .. } = &mut self.peer else {
            return None;
        };
        let mut code = None;
        poll_until(Duration::from_secs(2), || match child.try_wait() {
            Ok(Some(st)) => {
                code = st.code();
                true
            }
            Ok(None) => false,
            Err(_) => true,
        });
        code
    }

    pub fn kill(&mut self) {
        if let Peer::Process { child, .. } = &mut self.peer {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_stderr();
    }

    /// Waits (briefly: a grandchild may hold the pipe) for the stderr
    /// copier to reach the end of the receiver's output.
    fn join_stderr(&mut self) {
        if let Peer::Process { stderr_fwd, .. } = &mut self.peer {
            if let Some(h) = stderr_fwd.take() {
                if poll_until(Duration::from_secs(1), || h.is_finished()) {
                    let _ = h.join();
                }
            }
        }
    }
}

impl Drop for Connection {
    /// On an error path: end the receiver's input so it drops any session
    /// in progress, and its output so a write it is blocked in fails; it
    /// then exits by itself, or is killed if it does not.
    fn drop(&mut self) {
        self.close_input();
        *self.rd.get_mut().get_mut() = Box::new(Closed);
        match &mut self.peer {
            Peer::Process { child, .. } => {
                if poll_until(Duration::from_secs(5), || {
                    !matches!(child.try_wait(), Ok(None))
                }) {
                    return self.join_stderr();
                }
                self.kill();
            }
            // A thread cannot be killed; with both pipes closed it ends.
            Peer::Thread(h) => drop(h.take()),
        }
    }
}

/// An error the receiver reported; callers may act on the code.
#[derive(Debug)]
pub struct RemoteFailure {
    pub code: protocol::message::ErrorCode,
    pub message: String,
    pub label: String,
}

impl std::error::Error for RemoteFailure {}

impl std::fmt::Display for RemoteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use protocol::message::ErrorCode;
        // Longer than other peer text: the receiver's messages name paths.
        let msg = format!("'{}'", protocol::names::escape_text(&self.message, 600));
        match self.code {
            ErrorCode::NoSpace => write!(
                f,
                "the archive at {} is out of space (nothing of this session was kept): {msg}",
                self.label
            ),
            code => write!(
                f,
                "the receiver for {}: {}: {msg}",
                self.label,
                code.describe()
            ),
        }
    }
}

pub fn remote_error(re: &protocol::message::RemoteError, label: &str) -> anyhow::Error {
    RemoteFailure {
        code: re.code,
        message: re.message.clone(),
        label: label.to_string(),
    }
    .into()
}

/// Whether `e` is the receiver reporting `code`.
pub fn is_remote(e: &anyhow::Error, code: protocol::message::ErrorCode) -> bool {
    e.downcast_ref::<RemoteFailure>()
        .is_some_and(|r| r.code == code)
}

pub fn check_reply(reply: Reply, label: &str) -> Result<Reply> {
    match reply {
        Reply::Error(re) => Err(remote_error(&re, label)),
        r => Ok(r),
    }
}
