//! Destination URLs.
//!
//! - `file:///path`: the receiver runs here, on that directory.
//! - `qubes://VM[/NAME]`: the receiver runs in qube VM, started through the
//!   qrexec services `sparsebak.{Backup,Restore,Admin}+NAME`; NAME picks an
//!   archive under the qube's own archive root (default `default`).
//! - `ssh://user@host[:port]/path`: ssh runs the receiver on the far host.
//! - `qubes-ssh://VM/user@host[:port]/path`: the same, with ssh running in
//!   the networked qube VM (service `sparsebak.SshRelay`), as dom0 has no
//!   network.

use anyhow::{bail, Result};
use protocol::remote::{validate_archive_name, SshTarget, DEFAULT_ARCHIVE};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    File(PathBuf),
    Qubes { vm: String, archive: String },
    Ssh(SshTarget),
    QubesSsh { vm: String, target: SshTarget },
}

/// Qube names as Qubes allows them: a letter, then `[A-Za-z0-9_.-]`, at
/// most 31 characters.
pub fn validate_vm_name(vm: &str) -> Result<&str> {
    let ok = (1..=31).contains(&vm.len())
        && vm.as_bytes()[0].is_ascii_alphabetic()
        && vm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !ok {
        bail!("{} is not a qube name", protocol::names::display_safe(vm));
    }
    Ok(vm)
}

impl Dest {
    pub fn parse(url: &str) -> Result<Dest> {
        let ctx = |e: anyhow::Error| e.context(format!("destination '{url}'"));
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("destination '{url}': file:// needs an absolute path (file:///path)");
            }
            if path.split('/').any(|c| c == "..") {
                bail!("destination '{url}': '..' is not allowed");
            }
            let p = path.trim_end_matches('/');
            return Ok(Dest::File(PathBuf::from(if p.is_empty() {
                "/"
            } else {
                p
            })));
        }
        if let Some(rest) = url.strip_prefix("qubes://") {
            let (vm, name) = match rest.split_once('/') {
                Some((vm, n)) if !n.is_empty() => (vm, n.trim_end_matches('/')),
                Some((vm, _)) => (vm, DEFAULT_ARCHIVE),
                None => (rest, DEFAULT_ARCHIVE),
            };
            validate_vm_name(vm).map_err(ctx)?;
            validate_archive_name(name).map_err(|e| {
                ctx(anyhow::anyhow!(
                    "{e}: after the qube comes an archive name, not a path; the qube's own config decides where its archives live"
                ))
            })?;
            return Ok(Dest::Qubes {
                vm: vm.to_string(),
                archive: name.to_string(),
            });
        }
        if let Some(rest) = url.strip_prefix("ssh://") {
            return Ok(Dest::Ssh(
                SshTarget::parse(rest).map_err(|e| ctx(e.into()))?,
            ));
        }
        if let Some(rest) = url.strip_prefix("qubes-ssh://") {
            let Some((vm, target)) = rest.split_once('/') else {
                bail!("destination '{url}': use qubes-ssh://VM/user@host[:port]/path");
            };
            validate_vm_name(vm).map_err(ctx)?;
            return Ok(Dest::QubesSsh {
                vm: vm.to_string(),
                target: SshTarget::parse(target).map_err(|e| ctx(e.into()))?,
            });
        }
        bail!("destination '{url}' is not a URL sparsebak knows (file:///path, qubes://VM[/NAME], ssh://user@host[:port]/path, qubes-ssh://VM/user@host[:port]/path)");
    }

    /// The canonical form stored in dom0's metadata.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::File(p) => write!(f, "file://{}", p.display()),
            Dest::Qubes { vm, archive } => write!(f, "qubes://{vm}/{archive}"),
            Dest::Ssh(t) => write!(f, "ssh://{t}"),
            Dest::QubesSsh { vm, target } => write!(f, "qubes-ssh://{vm}/{target}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(
            Dest::parse("file:///a/b/").unwrap(),
            Dest::File("/a/b".into())
        );
        assert_eq!(
            Dest::parse("file:///a/b").unwrap().canonical(),
            "file:///a/b"
        );
        assert!(Dest::parse("file://rel").is_err());
        assert!(Dest::parse("file:///a/../b").is_err());
        assert!(Dest::parse("http://x").is_err());
        // qubes: the default archive name, round trips.
        assert_eq!(
            Dest::parse("qubes://backup").unwrap().canonical(),
            "qubes://backup/default"
        );
        assert_eq!(
            Dest::parse("qubes://backup/laptop").unwrap(),
            Dest::Qubes {
                vm: "backup".into(),
                archive: "laptop".into()
            }
        );
        for bad in [
            "qubes://-x/a",
            "qubes://backup/a/b",
            "qubes://backup/-rf",
            "qubes://backup/..",
            "qubes://1vm",
            "qubes://backup/home/user/x",
        ] {
            assert!(Dest::parse(bad).is_err(), "{bad}");
        }
        let s = Dest::parse("ssh://u@h:2222/srv/b").unwrap();
        assert_eq!(s.canonical(), "ssh://u@h:2222/srv/b");
        let q = Dest::parse("qubes-ssh://sys-net/u@h/srv/b").unwrap();
        assert_eq!(q.canonical(), "qubes-ssh://sys-net/u@h/srv/b");
        assert!(Dest::parse("ssh://-oProxyCommand=x@h/a").is_err());
        assert!(Dest::parse("qubes-ssh://sys-net").is_err());
    }
}
