//! Crash-safe file replacement: temp file → fsync → rename → fsync of the
//! directory. After a crash a reader finds the old content or the new,
//! never a mix, and a completed call survives power loss.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The temporary name `write_atomic` uses for `path` (`.tmp-NAME` beside
/// it): readers that list a directory skip names starting with a dot.
pub fn temp_name(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{}' has no file name", path.display()),
        )
    })?;
    Ok(path.with_file_name(format!(".tmp-{}", name.to_string_lossy())))
}

/// Creates the temporary file itself, never through what is there: with
/// `O_EXCL | O_NOFOLLOW`, so a `.tmp-NAME` planted in a shared directory
/// (a symlink to another file, say) is never written through. What is
/// there (a crash's leftover, or a plant) is unlinked, which removes a
/// link and not its target, and the create is tried once more.
fn create_temp(tmp: &Path, mode: u32) -> std::io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(mode)
            .open(tmp)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            fs::remove_file(tmp)?;
            open()
        }
        r => r,
    }
}

/// Replaces `path` with `bytes` atomically and durably; the new file gets
/// `mode` (before umask). A failed call removes its temporary file.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_name(path)?;
    let res = (|| {
        let mut f = create_temp(&tmp, mode)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fsync_dir(parent(path))
}

/// [`write_atomic_mode`] with mode 0666 (before umask), as `File::create`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o666)
}

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// Flushes every dirty page of the filesystem holding `dir`: one call at
/// a commit instead of one fsync per file written.
pub fn syncfs(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(dir)?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(std::io::Error::from)
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let d = std::env::temp_dir().join(format!("sysio-atomic-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let p = d.join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!temp_name(&p).unwrap().exists());
        // A failing write (the target is a directory) removes its temp file.
        let sub = d.join("sub");
        fs::create_dir_all(sub.join("x")).unwrap();
        assert!(write_atomic(&sub, b"x").is_err());
        assert!(!temp_name(&sub).unwrap().exists());
        fs::remove_dir_all(&d).unwrap();
    }

    /// A `.tmp-` name planted as a symlink (a shared directory) is never
    /// written through: the target keeps its bytes, the file gets the new
    /// ones with the asked mode; a stale regular temp file is replaced.
    #[test]
    fn a_planted_temp_link_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("sysio-plant-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let victim = d.join("victim");
        fs::write(&victim, b"keep me").unwrap();
        let p = d.join("key");
        std::os::unix::fs::symlink(&victim, temp_name(&p).unwrap()).unwrap();
        write_atomic_mode(&p, b"secret", 0o600).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert_eq!(fs::read(&p).unwrap(), b"secret");
        assert_eq!(
            fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(temp_name(&p).unwrap(), b"stale").unwrap();
        write_atomic(&p, b"again").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"again");
        assert!(!temp_name(&p).unwrap().exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn parent_of_a_bare_name_is_dot() {
        assert_eq!(parent(Path::new("f")), Path::new("."));
        assert_eq!(parent(Path::new("/a/f")), Path::new("/a"));
    }
}
