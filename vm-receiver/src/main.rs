//! The `sparsebak-receiver` binary: a thin shell over the receiver
//! library (`cli` parses; `serve` runs a connection).

use anyhow::{bail, Context, Result};
use clap::Parser;
use receiver::cli::{Cli, Cmd, Op};
use receiver::entry::{qrexec, relay};
use receiver::serve::{serve, ServeOptions};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use sysio::timed::TimedRead;

fn serve_stdio(opts: &ServeOptions, idle_timeout: u64) -> Result<()> {
    // Small buffers on purpose: a chunk frame larger than the buffer is
    // read straight into the frame reader's (one copy less).
    let stdin = BufReader::with_capacity(
        16 << 10,
        // Fails after `idle_timeout` without a byte, so a hung agent cannot
        // hold the archive (and its lock) forever; the session in progress
        // is then dropped like any cut stream.
        TimedRead {
            // fd 0 unbuffered: std's stdin buffer could hold bytes that
            // poll() on the descriptor would not see.
            inner: std::fs::File::from(
                std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned()?,
            ),
            timeout: Some(std::time::Duration::from_secs(idle_timeout)),
            stalled: |t| format!("no data from the agent for {} s", t.as_secs()),
        },
    );
    // fd 1 raw: std's stdout is line-buffered, which would cut binary
    // frames at every newline byte.
    let stdout = BufWriter::with_capacity(
        16 << 10,
        std::fs::File::from(std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?),
    );
    serve(opts, stdin, stdout)
        .with_context(|| format!("archive '{}'", opts.archive_dir.display()))?;
    Ok(())
}

fn main() {
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
            lock_wait,
            idle_timeout,
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
                lock_wait: std::time::Duration::from_secs(lock_wait),
            };
            serve_stdio(&opts, idle_timeout)
        }
        Cmd::Qrexec {
            op,
            lock_wait,
            idle_timeout,
        } => {
            let cfg = qrexec::load_config()?;
            let arg = std::env::var("QREXEC_SERVICE_ARGUMENT").ok();
            let home = std::env::var_os("HOME").map(PathBuf::from);
            let dir = qrexec::archive_dir(&cfg, arg.as_deref(), home.as_deref())?;
            let opts = ServeOptions {
                archive_dir: dir,
                allowed: vec![op.operation()],
                lock_wait: std::time::Duration::from_secs(lock_wait),
            };
            serve_stdio(&opts, idle_timeout)
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
