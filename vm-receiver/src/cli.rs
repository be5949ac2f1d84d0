//! The receiver's command line: its entry points and their options.

use clap::{Parser, Subcommand, ValueEnum};
use protocol::message::Operation;
use std::path::PathBuf;

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
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// How long one connection may wait, and be made to wait (both entry
/// points take the same options).
#[derive(clap::Args)]
pub struct ConnLimits {
    /// Seconds to wait while another connection holds the archive.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub lock_wait: u64,
    /// Seconds without a byte from the agent before giving up (and
    /// releasing the archive).
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub idle_timeout: u64,
    /// Seconds one frame from the agent may take once begun, however
    /// steadily its bytes trickle (0: no limit); also the longest a write
    /// to an agent that stopped reading may stay blocked (0: the idle
    /// timeout) before the receiver ends, releasing the archive.
    #[arg(long, default_value_t = 128, value_name = "SECONDS")]
    pub frame_timeout: u64,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Serve one connection on stdin/stdout for the archive at --archive.
    Serve {
        /// Archive directory (created by the agent's arch-init).
        #[arg(long)]
        archive: PathBuf,
        /// Operations to permit on this connection.
        #[arg(long, value_delimiter = ',', default_values_t = [Op::Admin, Op::Backup, Op::Restore])]
        allow: Vec<Op>,
        #[command(flatten)]
        limits: ConnLimits,
    },
    /// Serve one connection started by a qrexec service: the archive is
    /// QREXEC_SERVICE_ARGUMENT (a name, default "default") under this qube's
    /// archive root; only --op is offered.
    Qrexec {
        /// The one operation this service offers (each qrexec service passes its own).
        #[arg(long)]
        op: Op,
        #[command(flatten)]
        limits: ConnLimits,
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
pub enum Op {
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
    pub fn operation(self) -> Operation {
        match self {
            Op::Admin => Operation::Admin,
            Op::Backup => Operation::Backup,
            Op::Restore => Operation::Restore,
        }
    }
}
