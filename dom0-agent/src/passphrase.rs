//! The passphrase: from `--passphrase-file` (its first line) or from the
//! controlling terminal, without echo. Never from an argument or the
//! environment (both are visible to other processes).
//!
//! The KDF sees it in Unicode NFC, so the same words typed where accents
//! arrive decomposed (another keyboard, another system at recovery) open
//! the archive; a key wrapped before that was done is still tried with the
//! bytes as typed. A new passphrase that looks weak is warned about: it
//! is all that stands between the backup qube and the data.

use anyhow::{bail, Context, Result};
use nix::sys::termios::{self, LocalFlags, SetArg};
use protocol::message::ArchiveId;
use sealed::keys::{KdfParams, KeyError, MasterKey, WrappedKey};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use unicode_normalization::UnicodeNormalization;
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
    if confirm {
        if let Some(w) = weakness(&p) {
            crate::report::warn(format!(
                "the new passphrase is weak: {w}. Anyone who gets the archive (the backup qube, a stolen disk) can try guesses offline; four or more random words are far stronger"
            ));
        }
    }
    Ok(p)
}

/// Why a new passphrase looks weak, if it does: short, or little
/// variety. A rough guess (about bits of entropy for random characters
/// from the classes used), never a refusal: the user may know better.
pub fn weakness(p: &str) -> Option<String> {
    let chars: Vec<char> = p.chars().collect();
    if chars.len() < 12 {
        return Some(format!("only {} characters", chars.len()));
    }
    let mut pool = 0u32;
    for (has, size) in [
        (chars.iter().any(|c| c.is_ascii_lowercase()), 26),
        (chars.iter().any(|c| c.is_ascii_uppercase()), 26),
        (chars.iter().any(|c| c.is_ascii_digit()), 10),
        (
            chars
                .iter()
                .any(|c| c.is_ascii() && !c.is_ascii_alphanumeric()),
            33,
        ),
        (chars.iter().any(|c| !c.is_ascii()), 100),
    ] {
        if has {
            pool += size;
        }
    }
    let distinct = chars
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // Repeats add little: count at most two uses of each character.
    let effective = chars.len().min(2 * distinct);
    let bits = effective as f64 * f64::from(pool).log2();
    (bits < 60.0).then(|| format!("about {bits:.0} bits of entropy at best"))
}

/// The passphrase as the KDF sees it (NFC).
fn kdf_bytes(p: &str) -> Zeroizing<String> {
    Zeroizing::new(p.nfc().collect())
}

/// Wraps a ring of master keys (the current one first; usually just it)
/// with `pass` (NFC), fresh salt and nonce.
pub fn wrap(
    ring: &[MasterKey],
    archive: ArchiveId,
    encrypt: bool,
    pass: &str,
    kdf: KdfParams,
) -> Result<WrappedKey> {
    Ok(WrappedKey::wrap_ring(
        ring,
        archive,
        encrypt,
        kdf_bytes(pass).as_bytes(),
        kdf,
        crate::random::bytes()?,
        crate::random::bytes()?,
    )?)
}

/// Unwraps `w` with `pass`: NFC first, then as typed where that differs
/// (a key wrapped before passphrases were normalised). The ring, current
/// key first.
pub fn unwrap(w: &WrappedKey, pass: &str) -> Result<Vec<MasterKey>, KeyError> {
    let nfc = kdf_bytes(pass);
    match w.unwrap_ring(nfc.as_bytes()) {
        Err(KeyError::Passphrase) if *nfc != pass => w.unwrap_ring(pass.as_bytes()),
        r => r,
    }
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
