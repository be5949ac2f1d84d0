//! The `sparsebak-receiver` binary: a thin shell over the receiver
//! library (`cli` parses; `serve` runs a connection).

use anyhow::{bail, Context, Result};
use clap::Parser;
use receiver::cli::{Cli, Cmd, ConnLimits, Op};
use receiver::entry::{qrexec, relay};
use receiver::serve::{serve, ServeOptions};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use sysio::timed::{Bound, Limits, TimedRead, WatchedWrite};

/// What each bound's error says.
fn bound_text(b: Bound, t: Duration) -> String {
    match b {
        Bound::Stall => format!("no data from the agent for {} s", t.as_secs()),
        Bound::Frame => format!(
            "one frame from the agent took longer than {} s (--frame-timeout)",
            t.as_secs()
        ),
        Bound::Job => format!("time limit of {} s ran out", t.as_secs()),
    }
}

/// Serves one connection on stdin/stdout. A hung or trickling agent cannot
/// hold the archive (and its lock) forever: a read fails after
/// `--idle-timeout` without a byte, or when one frame takes longer than
/// `--frame-timeout`; the session in progress is then dropped like any cut
/// stream. An agent that stops reading is bound too (`WatchedWrite`).
fn serve_stdio(opts: ServeOptions, conn: &ConnLimits) -> Result<()> {
    let limits = Arc::new(Limits::new(
        Some(Duration::from_secs(conn.idle_timeout)),
        (conn.frame_timeout > 0).then(|| Duration::from_secs(conn.frame_timeout)),
        None,
        bound_text,
    ));
    let l = limits.clone();
    let opts = ServeOptions {
        pace: Some(Arc::new(move |started| l.frame(started))),
        ..opts
    };
    // Small buffers on purpose: a chunk frame larger than the buffer is
    // read straight into the frame reader's (one copy less).
    let stdin = BufReader::with_capacity(
        16 << 10,
        TimedRead {
            // fd 0 unbuffered: std's stdin buffer could hold bytes that
            // poll() on the descriptor would not see.
            inner: std::fs::File::from(
                std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned()?,
            ),
            limits,
        },
    );
    // fd 1 raw: std's stdout is line-buffered, which would cut binary
    // frames at every newline byte. Watched: an agent that stops reading
    // must not hold the archive either; a write that moves nothing for the
    // frame limit (else the idle limit) ends the process, which releases
    // the lock (the archive survives a kill at any point).
    let write_limit = Duration::from_secs(match conn.frame_timeout {
        0 => conn.idle_timeout,
        f => f.min(conn.idle_timeout),
    });
    let stdout = BufWriter::with_capacity(
        16 << 10,
        WatchedWrite::new(
            std::fs::File::from(std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?),
            write_limit,
            |t| {
                eprintln!(
                    "sparsebak-receiver: error: the agent read nothing for {} s: connection ended, archive released",
                    t.as_secs()
                );
                std::process::exit(1);
            },
        ),
    );
    serve(&opts, stdin, stdout)
        .with_context(|| format!("archive '{}'", opts.archive_dir.display()))?;
    Ok(())
}

fn main() {
    // Everything the receiver creates (chunks, manifests, dom0's records)
    // is for its own user only, whatever umask it was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    if let Err(e) = run() {
        eprintln!("sparsebak-receiver: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            archive,
            allow,
            limits,
        } => {
            if archive.as_os_str().is_empty() || !archive.is_absolute() {
                bail!(
                    "--archive must be an absolute path, got '{}'",
                    archive.display()
                );
            }
            let allowed = allow.into_iter().map(Op::operation).collect();
            let opts = ServeOptions {
                archive_dir: archive,
                allowed,
                lock_wait: std::time::Duration::from_secs(limits.lock_wait),
                pace: None,
            };
            serve_stdio(opts, &limits)
        }
        Cmd::Qrexec { op, limits } => {
            let cfg = qrexec::load_config()?;
            let arg = std::env::var("QREXEC_SERVICE_ARGUMENT").ok();
            let home = std::env::var_os("HOME").map(PathBuf::from);
            let dir = qrexec::archive_dir(&cfg, arg.as_deref(), home.as_deref())?;
            let opts = ServeOptions {
                archive_dir: dir,
                allowed: vec![op.operation()],
                lock_wait: std::time::Duration::from_secs(limits.lock_wait),
                pace: None,
            };
            serve_stdio(opts, &limits)
        }
        Cmd::SshRelay {
            ssh,
            remote_receiver,
        } => {
            let cfg = qrexec::load_config()?;
            let ssh = match ssh {
                Some(s) => vec![s],
                None => cfg.ssh_command.unwrap_or_else(|| vec!["ssh".into()]),
            };
            let remote = remote_receiver
                .or(cfg.ssh_remote_receiver)
                .unwrap_or_else(|| "sparsebak-receiver".into());
            relay::run(&ssh, &remote)
        }
    }
}
