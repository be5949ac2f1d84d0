//! Remote endpoints both sides must agree on: qrexec service names and
//! arguments, ssh targets, the remote receiver command line, and the
//! one-line header the ssh relay service in a networked qube reads.
//!
//! Pure: validation, quoting and encoding only.

use crate::message::Operation;
use crate::ProtocolError;

/// qrexec services in the backup qube, one per operation, so that policy
/// can allow backups while denying restores to everyone but dom0.
pub const SERVICE_BACKUP: &str = "sparsebak.Backup";
pub const SERVICE_RESTORE: &str = "sparsebak.Restore";
pub const SERVICE_ADMIN: &str = "sparsebak.Admin";
/// In a networked qube: relays one connection to a receiver over ssh.
pub const SERVICE_SSH_RELAY: &str = "sparsebak.SshRelay";
/// The archive name used when a destination names none.
pub const DEFAULT_ARCHIVE: &str = "default";

pub fn service_for(op: Operation) -> &'static str {
    match op {
        Operation::Backup => SERVICE_BACKUP,
        Operation::Restore => SERVICE_RESTORE,
        Operation::Admin => SERVICE_ADMIN,
    }
}

/// The `--allow` word of an operation (receiver CLI, relay argument).
pub fn op_word(op: Operation) -> &'static str {
    match op {
        Operation::Admin => "admin",
        Operation::Backup => "backup",
        Operation::Restore => "restore",
    }
}

pub fn op_from_word(w: &str) -> Option<Operation> {
    match w {
        "admin" => Some(Operation::Admin),
        "backup" => Some(Operation::Backup),
        "restore" => Some(Operation::Restore),
        _ => None,
    }
}

/// An archive name as carried in a qrexec service argument: 1–64 bytes of
/// `[A-Za-z0-9_.-]` (all qrexec passes unchanged), not starting with `-`
/// or `.` (qrexec lets an argument start with `-`; a name never does), so
/// it is a single safe path component inside the qube's archive root.
pub fn validate_archive_name(name: &str) -> Result<&str, ProtocolError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(name)
    } else {
        Err(ProtocolError::malformed(
            "archive name",
            format!(
                "{} (use 1-64 of A-Z a-z 0-9 _ . -, not starting with - or .)",
                crate::names::display_safe(name)
            ),
        ))
    }
}

/// `user@host[:port]/path` (the part after `ssh://`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: Option<u16>,
    /// Absolute path of the archive on the far side.
    pub path: String,
}

fn bad(what: &'static str, detail: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::malformed(what, detail)
}

impl SshTarget {
    pub fn parse(s: &str) -> Result<SshTarget, ProtocolError> {
        let (userhost, path) = match s.find('/') {
            Some(i) => (&s[..i], &s[i..]),
            None => return Err(bad("ssh target", "needs user@host[:port]/absolute/path")),
        };
        let (user, hostport) = userhost
            .split_once('@')
            .ok_or_else(|| bad("ssh target", "needs user@host"))?;
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                let port: u16 = p
                    .parse()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| bad("ssh port", crate::names::display_safe(p)))?;
                (h, Some(port))
            }
            _ => (hostport, None),
        };
        let t = SshTarget {
            user: user.to_string(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: path.to_string(),
        };
        t.validate()?;
        Ok(t)
    }

    /// Nothing here may be taken for an ssh option or reach a shell
    /// unquoted: user and host are restricted, the path is quoted.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let word = |s: &str, extra: &[u8]| {
            !s.is_empty()
                && s.len() <= 255
                && !s.starts_with('-')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
        };
        if !word(&self.user, b"") {
            return Err(bad("ssh user", crate::names::display_safe(&self.user)));
        }
        if !word(&self.host, b":") {
            return Err(bad("ssh host", crate::names::display_safe(&self.host)));
        }
        if !self.path.starts_with('/')
            || self.path.len() > 4096
            || self.path.split('/').any(|c| c == "..")
            || self.path.chars().any(|c| c.is_control())
        {
            return Err(bad(
                "ssh archive path",
                format!(
                    "{} (absolute, no '..', no control characters)",
                    crate::names::display_safe(&self.path)
                ),
            ));
        }
        Ok(())
    }

    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// ssh arguments after the ssh program itself: options, `--`, the
    /// destination and the remote command (one string, each word quoted
    /// for the remote shell).
    pub fn ssh_args(&self, receiver: &str, op: Operation) -> Vec<String> {
        let mut a = vec!["-o".to_string(), "BatchMode=yes".to_string()];
        if let Some(p) = self.port {
            a.push("-p".into());
            a.push(p.to_string());
        }
        a.push("--".into());
        a.push(self.destination());
        a.push(remote_command(&[
            receiver,
            "serve",
            "--archive",
            &self.path,
            "--allow",
            op_word(op),
        ]));
        a
    }

    /// The header the ssh relay reads: one line, every field hex-encoded so
    /// no byte of it can be mistaken for a separator.
    pub fn relay_header(&self, op: Operation) -> String {
        format!(
            "{RELAY_MAGIC} {} {} {} {} {}\n",
            op_word(op),
            hex(&self.user),
            hex(&self.host),
            self.port.unwrap_or(22),
            hex(&self.path)
        )
    }

    pub fn parse_relay_header(line: &str) -> Result<(SshTarget, Operation), ProtocolError> {
        let f: Vec<&str> = line.trim_end_matches('\n').split(' ').collect();
        if f.len() != 6 || f[0] != RELAY_MAGIC {
            return Err(bad("relay header", "not a sparsebak relay header"));
        }
        let op = op_from_word(f[1]).ok_or_else(|| bad("relay header", "unknown operation"))?;
        let port: u16 = f[4]
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| bad("relay header", "bad port"))?;
        let t = SshTarget {
            user: unhex(f[2])?,
            host: unhex(f[3])?,
            port: Some(port),
            path: unhex(f[5])?,
        };
        t.validate()?;
        Ok((t, op))
    }
}

impl std::fmt::Display for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}@{}:{p}{}", self.user, self.host, self.path),
            None => write!(f, "{}@{}{}", self.user, self.host, self.path),
        }
    }
}

pub const RELAY_MAGIC: &str = "SBKRELAY1";
/// The relay header is at most this long (the relay reads it unbuffered).
pub const RELAY_HEADER_MAX: usize = 16384;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<String, ProtocolError> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("relay header", "bad hex field"));
    }
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("checked hex"))
        .collect();
    String::from_utf8(bytes).map_err(|_| bad("relay header", "field is not UTF-8"))
}

/// Quotes words for a POSIX shell (ssh hands the remote command to the
/// user's shell): each in single quotes, `'` as `'\''`.
pub fn remote_command(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        for ok in ["default", "laptop-2", "a.b_c", "X"] {
            assert!(validate_archive_name(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "-x",
            ".x",
            "..",
            "a/b",
            "a b",
            "a+b",
            "é",
            long.as_str(),
        ] {
            assert!(validate_archive_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ssh_targets() {
        let t = SshTarget::parse("bak@host.example:2222/srv/sparse bak").unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port, t.path.as_str()),
            ("bak", "host.example", Some(2222), "/srv/sparse bak")
        );
        assert_eq!(t.to_string(), "bak@host.example:2222/srv/sparse bak");
        let t = SshTarget::parse("u@[::1]:22/a").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(SshTarget::parse("u@h/a").unwrap().port, None);
        for bad in [
            "h/a",
            "u@h",
            "-oProxyCommand=x@h/a",
            "u@-oProxyCommand=x/a",
            "u@h:0/a",
            "u@h:99999/a",
            "u@h/../etc",
            "u@h/a\nb",
            "u;x@h/a",
        ] {
            assert!(SshTarget::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn remote_command_quotes_everything() {
        assert_eq!(
            remote_command(&["sparsebak-receiver", "/a b/it's $(x)"]),
            "'sparsebak-receiver' '/a b/it'\\''s $(x)'"
        );
        let t = SshTarget::parse("u@h/p").unwrap();
        let a = t.ssh_args("sparsebak-receiver", Operation::Restore);
        assert_eq!(a[a.len() - 2], "u@h");
        assert_eq!(a[a.len() - 3], "--");
        assert!(a.last().unwrap().ends_with("'--allow' 'restore'"));
    }

    #[test]
    fn relay_header_round_trip_and_rejects() {
        let t = SshTarget::parse("u@h:2200/x y/z").unwrap();
        let h = t.relay_header(Operation::Backup);
        assert!(h.ends_with('\n') && !h[..h.len() - 1].contains('\n'));
        let (t2, op) = SshTarget::parse_relay_header(&h).unwrap();
        assert_eq!((t2, op), (t, Operation::Backup));
        for bad in [
            "SBKRELAY1 backup 75 68 22\n",
            "SBKRELAY2 backup 75 68 22 2f61\n",
            "SBKRELAY1 nuke 75 68 22 2f61\n",
            "SBKRELAY1 backup 7 68 22 2f61\n",
            "SBKRELAY1 backup 2d6f 68 22 2f61\n", // user "-o"
            "SBKRELAY1 backup 75 68 22 612f\n",   // relative path
        ] {
            assert!(SshTarget::parse_relay_header(bad).is_err(), "{bad:?}");
        }
    }
}
