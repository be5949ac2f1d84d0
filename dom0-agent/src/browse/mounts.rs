//! The mounts `open` made, found in `/proc/self/mountinfo` by their source
//! name `sparsebak:PID` (PID: the process serving it), and their unmount.
//! `close` acts only on such a mount, never on whatever else a path holds.

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The source name of a mount served by process `pid` (`:attached` when
/// its file is attached to a qube, which only the server may undo).
pub fn source_name(pid: u32, attached: bool) -> String {
    format!("sparsebak:{pid}{}", if attached { ":attached" } else { "" })
}

#[derive(Debug, PartialEq, Eq)]
pub struct OpenMount {
    pub mountpoint: PathBuf,
    /// The process serving it.
    pub pid: u32,
    /// Its file is attached to a qube (`open --attach`).
    pub attached: bool,
}

/// sparsebak's mounts in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<OpenMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(point), Some(fstype), Some(source)) =
            (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
        else {
            continue;
        };
        if *fstype != "fuse" && !fstype.starts_with("fuse.") {
            continue;
        }
        let Some(rest) = source.strip_prefix("sparsebak:") else {
            continue;
        };
        let (pid, attached) = match rest.strip_suffix(":attached") {
            Some(p) => (p, true),
            None => (rest, false),
        };
        let Ok(pid) = pid.parse() else { continue };
        out.push(OpenMount {
            mountpoint: PathBuf::from(unescape(point)),
            pid,
            attached,
        });
    }
    out
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn list() -> Result<Vec<OpenMount>> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// The sparsebak mount at `path`, if there is one.
pub fn find(path: &Path) -> Result<Option<OpenMount>> {
    // A mount whose server died cannot be resolved (ENOTCONN): its parent
    // can, and the mount is still listed under that name.
    let path = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(e).with_context(|| format!("'{}'", path.display()));
            };
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            std::fs::canonicalize(parent)
                .with_context(|| format!("'{}' does not exist", path.display()))?
                .join(name)
        }
    };
    Ok(list()?.into_iter().find(|m| m.mountpoint == path))
}

/// Whether the server of `m` still runs.
pub fn server_alive(m: &OpenMount) -> bool {
    Path::new(&format!("/proc/{}", m.pid)).exists()
}

/// Unmounts `m`; with `lazy`, even while in use (the mount goes away once
/// the last user does). Then waits (up to `wait`) for its server to exit,
/// so that the archive it held is free when this returns.
pub fn unmount(m: &OpenMount, lazy: bool, wait: Duration) -> Result<()> {
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    match umount2(&m.mountpoint, flags) {
        Ok(()) => {}
        Err(Errno::EBUSY) => bail!(
            "'{}' is in use (an open file, a mounted filesystem or a loop device on it): unmount and detach those first (losetup -d), or close --lazy",
            m.mountpoint.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("unmounting '{}'", m.mountpoint.display()))
        }
    }
    let t0 = Instant::now();
    let proc_dir = PathBuf::from(format!("/proc/{}", m.pid));
    while proc_dir.exists() && t0.elapsed() < wait && !lazy {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Asks the server of `m` to end (SIGTERM: it undoes an attachment,
/// unmounts and exits) and waits for it, at most `wait`.
pub fn stop_server(m: &OpenMount, wait: Duration) -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(m.pid as i32);
    kill(pid, Signal::SIGTERM).with_context(|| {
        format!(
            "signalling process {} (serving '{}')",
            m.pid,
            m.mountpoint.display()
        )
    })?;
    let t0 = Instant::now();
    let proc_dir = PathBuf::from(format!("/proc/{}", m.pid));
    while proc_dir.exists() {
        if t0.elapsed() > wait {
            bail!(
                "process {} serving '{}' did not end within {} s",
                m.pid,
                m.mountpoint.display(),
                wait.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if list()?.iter().any(|x| x.mountpoint == m.mountpoint) {
        bail!(
            "'{}' is still mounted after its server ended: see its log",
            m.mountpoint.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_sparsebak_fuse_mounts() {
        let text = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
97 22 0:50 / /mnt/a\\040b rw,nosuid,nodev,relatime shared:60 - fuse sparsebak:1234 ro,user_id=0,group_id=0
96 22 0:49 / /mnt/q rw - fuse sparsebak:55:attached ro
98 22 0:51 / /mnt/c rw,nosuid,nodev - fuse.sshfs host:/x rw
99 22 0:52 / /mnt/d rw - ext4 sparsebak:77 rw
100 22 0:53 / /mnt/e rw - fuse sparsebak:notapid rw
";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                OpenMount {
                    mountpoint: PathBuf::from("/mnt/a b"),
                    pid: 1234,
                    attached: false
                },
                OpenMount {
                    mountpoint: PathBuf::from("/mnt/q"),
                    pid: 55,
                    attached: true
                }
            ]
        );
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("/a\\040b\\134c\\011"), "/a b\\c\t");
        assert_eq!(unescape("/x\\04"), "/x\\04");
    }
}
