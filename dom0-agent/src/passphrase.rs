//! The passphrase: from `--passphrase-file` (its first line) or from the
//! controlling terminal, without echo. Never from an argument or the
//! environment (both are visible to other processes).

use anyhow::{bail, Context, Result};
use nix::sys::termios::{self, LocalFlags, SetArg};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use zeroize::Zeroizing;

pub type Passphrase = Zeroizing<String>;

/// Reads the passphrase; from a terminal, `confirm` asks twice.
pub fn read(file: Option<&Path>, prompt: &str, confirm: bool) -> Result<Passphrase> {
    let p = match file {
        Some(f) => from_file(f)?,
        None => {
            let p = from_tty(prompt)?;
            if confirm && *from_tty("Again: ")? != *p {
                bail!("the two passphrases differ: nothing was changed");
            }
            p
        }
    };
    if p.is_empty() {
        bail!("the passphrase is empty: nothing was changed");
    }
    Ok(p)
}

fn from_file(f: &Path) -> Result<Passphrase> {
    let text = Zeroizing::new(
        std::fs::read_to_string(f)
            .with_context(|| format!("unable to read passphrase file '{}'", f.display()))?,
    );
    Ok(Zeroizing::new(
        text.lines().next().unwrap_or("").to_string(),
    ))
}

fn from_tty(prompt: &str) -> Result<Passphrase> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask for the passphrase on: give --passphrase-file FILE")?;
    let saved = termios::tcgetattr(&tty).context("the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    termios::tcsetattr(&tty, SetArg::TCSAFLUSH, &quiet).context("turning echo off")?;
    // Ctrl-C at the prompt must not leave the terminal without echo.
    let _restore = match (tty.try_clone(), saved.clone()) {
        (Ok(t), s) => Some(crate::interrupt::on_interrupt(move || {
            let _ = termios::tcsetattr(&t, SetArg::TCSAFLUSH, &s);
            None
        })),
        _ => None,
    };
    let res = (|| -> Result<Passphrase> {
        (&tty).write_all(prompt.as_bytes())?;
        let mut line = Zeroizing::new(String::new());
        BufReader::new(&tty).read_line(&mut line)?;
        Ok(Zeroizing::new(
            line.trim_end_matches(['\n', '\r']).to_string(),
        ))
    })();
    let _ = termios::tcsetattr(&tty, SetArg::TCSAFLUSH, &saved);
    res
}
