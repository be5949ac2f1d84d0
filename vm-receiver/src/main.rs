use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use protocol::message::Operation;
use receiver::entry::{qrexec, relay};
use receiver::serve::{serve, ServeOptions};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use sysio::timed::TimedRead;

/// sparsebak-receiver: the archive side of sparsebak.
///
/// It is started by the sparsebak agent (locally for file:// destinations,
/// by ssh, or by the qrexec services in a backup qube) and speaks the
/// sparsebak protocol on stdin/stdout. It never needs root and writes only
/// under its archive directory.
///
/// In a backup qube the services /etc/qubes-rpc/sparsebak.{Backup,Restore,Admin}
/// run `sparsebak-receiver qrexec --op OP`; the archives live under
/// `archive_root` from /etc/sparsebak/receiver.toml (default ~/sparsebak),
/// one directory per name given as the service argument.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve one connection on stdin/stdout for the archive at --archive.
    Serve {
        /// Archive directory (created by the agent's arch-init).
        #[arg(long)]
        archive: PathBuf,
        /// Operations to permit on this connection.
        #[arg(long, value_delimiter = ',', default_values_t = [Op::Admin, Op::Backup, Op::Restore])]
        allow: Vec<Op>,
        /// Seconds to wait while another connection holds the archive.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        lock_wait: u64,
        /// Seconds without a byte from the agent before giving up (and
        /// releasing the archive).
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        idle_timeout: u64,
    },
    /// Serve one connection started by a qrexec service: the archive is
    /// QREXEC_SERVICE_ARGUMENT (a name, default "default") under this qube's
    /// archive root; only --op is offered.
    Qrexec {
        #[arg(long)]
        op: Op,
        /// Seconds to wait while another connection holds the archive.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        lock_wait: u64,
        /// Seconds without a byte from the agent before giving up.
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        idle_timeout: u64,
    },
    /// Relay one connection to a receiver on another host over ssh (the
    /// sparsebak.SshRelay service of a networked qube). The target comes in
    /// a header line on stdin.
    SshRelay {
        /// ssh program [default: `ssh_command` in the receiver config, else ssh].
        #[arg(long)]
        ssh: Option<String>,
        /// Receiver program on the far host [default: `ssh_remote_receiver` in the receiver config, else sparsebak-receiver].
        #[arg(long)]
        remote_receiver: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Op {
    Admin,
    Backup,
    Restore,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_possible_value()
            .expect("no skipped values")
            .get_name()
            .fmt(f)
    }
}

impl Op {
    fn operation(self) -> Operation {
        match self {
            Op::Admin => Operation::Admin,
            Op::Backup => Operation::Backup,
            Op::Restore => Operation::Restore,
        }
    }
}

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
