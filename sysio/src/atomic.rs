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

/// Replaces `path` with `bytes` atomically and durably; the new file gets
/// `mode` (before umask). A failed call removes its temporary file.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_name(path)?;
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
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

    #[test]
    fn parent_of_a_bare_name_is_dot() {
        assert_eq!(parent(Path::new("f")), Path::new("."));
        assert_eq!(parent(Path::new("/a/f")), Path::new("/a"));
    }
}
