use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use protocol::message::Operation;
use receiver::serve::{serve, ServeOptions};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

/// sparsebak-receiver: the archive side of sparsebak.
///
/// It is started by the sparsebak agent (locally for file:// destinations,
/// by ssh, or by the qrexec services in a backup qube) and speaks the
/// sparsebak protocol on stdin/stdout. It never needs root and writes only
/// under its archive directory.
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
        } => {
            if archive.as_os_str().is_empty() || !archive.is_absolute() {
                bail!(
                    "--archive must be an absolute path, got '{}'",
                    archive.display()
                );
            }
            let allowed = allow
                .into_iter()
                .map(|o| match o {
                    Op::Admin => Operation::Admin,
                    Op::Backup => Operation::Backup,
                    Op::Restore => Operation::Restore,
                })
                .collect();
            let opts = ServeOptions {
                archive_dir: archive,
                allowed,
                lock_wait: std::time::Duration::from_secs(lock_wait),
            };
            let stdin = BufReader::with_capacity(1 << 20, std::io::stdin().lock());
            let stdout = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            serve(&opts, stdin, stdout)
                .with_context(|| format!("archive '{}'", opts.archive_dir.display()))?;
            Ok(())
        }
    }
}
