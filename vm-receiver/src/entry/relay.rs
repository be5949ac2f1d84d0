//! `ssh-relay`: in a networked qube, carries one connection from dom0 to a
//! receiver on another host over ssh (`qubes-ssh://` destinations). Reads
//! the one-line header unbuffered (so no stream byte is swallowed), checks
//! it, and replaces itself with ssh; the stream then flows straight through.

use anyhow::{bail, Context, Result};
use protocol::remote::{SshTarget, RELAY_HEADER_MAX};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// `ssh` is the ssh program and its options.
pub fn run(ssh: &[String], receiver: &str) -> Result<()> {
    let (prog, opts) = ssh.split_first().context("empty ssh command")?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        // Straight from fd 0, a byte at a time: std's stdin would buffer
        // stream bytes past the header, and ssh would never see them.
        let n = loop {
            match nix::unistd::read(nix::libc::STDIN_FILENO, &mut b) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.context("reading the relay header")?,
            }
        };
        if n == 0 {
            bail!("the stream ended before the relay header did");
        }
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
        if line.len() > RELAY_HEADER_MAX {
            bail!("relay header longer than {RELAY_HEADER_MAX} bytes");
        }
    }
    let text = std::str::from_utf8(&line).context("relay header is not UTF-8")?;
    let (target, op) = SshTarget::parse_relay_header(text)?;
    let err = Command::new(prog)
        .args(opts)
        .args(target.ssh_args(receiver, op))
        .exec();
    bail!("unable to run '{prog}': {err}")
}
