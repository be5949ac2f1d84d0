//! The sparse-bundle archive on disk (see `vm-receiver/FORMAT.md`).

pub mod blob;
pub mod check;
pub mod chunk_reader;
pub mod chunk_writer;
pub mod fsutil;
pub mod lock;
pub mod prune;
pub mod read;
pub mod refs;
pub mod restore;
pub mod resume;
pub mod session;
pub mod store;

use crate::error::{Failure, Result};
use protocol::message::{ArchiveParams, ErrorCode, SessionInfo, LIST_PAGE};
use protocol::names::{validate_session_name, validate_volume_id};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store::fs::FsStore;
use store::ChunkStore;

/// Archive info file magic; the last two bytes are the format version.
pub const ARCHIVE_MAGIC: [u8; 8] = *b"SBKARC03";
pub const FORMAT_VERSION: u32 = 3;
pub const ARCHIVE_FILE: &str = "sparsebak.archive";
pub const VOLUMES_DIR: &str = "volumes";
/// A volume being deleted is renamed to this prefix first.
pub const DELETING_PREFIX: &str = ".deleting-";
/// A dropped session's directory while it is removed.
pub const DROPPED: &str = ".dropped";

/// Removes a file that may not exist.
fn remove_file_if_exists(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::io("remove", p, e)),
        _ => Ok(()),
    }
}

/// Removes a directory tree that may not exist.
pub(crate) fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Failure::io("remove", p, e)),
        _ => Ok(()),
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
struct ArchiveFile {
    format_version: u32,
    params: ArchiveParams,
}

pub struct Archive {
    pub root: PathBuf,
    pub params: ArchiveParams,
    /// Where the sessions' chunks live.
    pub store: Arc<dyn ChunkStore>,
}

impl Archive {
    /// Opens the archive at `root`; `Ok(None)` if there is none yet.
    pub fn open(root: &Path) -> Result<Option<Archive>> {
        let info = root.join(ARCHIVE_FILE);
        let bytes = match fs::read(&info) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Failure::io("read archive info", &info, e)),
        };
        if bytes.starts_with(b"SBKARC") && !bytes.starts_with(&ARCHIVE_MAGIC) {
            let found = String::from_utf8_lossy(&bytes[6..8.min(bytes.len())]).into_owned();
            let what = match found.as_str() {
                "01" => "an unencrypted archive of an older sparsebak",
                "02" => "an archive of sparsebak before deduplication, whose chunk ids are not bound to a dedup scope",
                _ => "not a format this receiver knows",
            };
            return Err(Failure::new(
                ErrorCode::Corrupt,
                format!(
                    "archive '{}' is of format {} ({what}); this receiver reads format {FORMAT_VERSION} only and there is no migration: restore what you need with the sparsebak that wrote it, and make a new archive with arch-init",
                    root.display(),
                    found.trim_start_matches('0'),
                ),
            ));
        }
        let f: ArchiveFile = protocol::codec::decode_sealed("archive info", &ARCHIVE_MAGIC, &bytes)
            .map_err(|e| {
                Failure::new(
                    ErrorCode::Corrupt,
                    format!("archive info '{}': {e}", info.display()),
                )
            })?;
        if f.format_version != FORMAT_VERSION {
            return Err(Failure::new(
                ErrorCode::Corrupt,
                format!(
                    "archive '{}' has format version {}, this receiver reads {FORMAT_VERSION}",
                    root.display(),
                    f.format_version
                ),
            ));
        }
        let params = f.params.validate()?;
        Ok(Some(Archive {
            root: root.to_path_buf(),
            params,
            store: Arc::new(FsStore::default()),
        }))
    }

    /// Creates a new archive at `root` (which may exist, but must not hold
    /// one), with dom0's first wrapped key and root; the archive info is
    /// written last, so an archive never exists without them.
    pub fn init(
        root: &Path,
        params: ArchiveParams,
        key: &[u8],
        root_rec: &[u8],
        mkdir: bool,
    ) -> Result<Archive> {
        let params = params.validate()?;
        if Archive::open(root)?.is_some() {
            return Err(Failure::new(
                ErrorCode::ArchiveExists,
                format!("an archive already exists at '{}'", root.display()),
            ));
        }
        // A missing parent is most often an unmounted disk: creating it
        // would put the archive on the filesystem beneath the mount point.
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !mkdir && !parent.is_dir() {
                return Err(Failure::new(
                    ErrorCode::NoArchive,
                    format!(
                        "the archive's parent directory '{}' does not exist (is the backup disk mounted?); create it, or give arch-init --mkdir",
                        parent.display()
                    ),
                ));
            }
        }
        // Everything that can be refused is refused before anything is
        // made: a refused init leaves nothing behind.
        blob::check_initial(protocol::message::Blob::Key, key)?;
        blob::check_initial(protocol::message::Blob::Root, root_rec)?;
        let made_root = !root.exists();
        let made = (|| {
            fs::create_dir_all(root.join(VOLUMES_DIR))
                .map_err(|e| Failure::io("create archive", root, e))?;
            let bytes = protocol::codec::encode_sealed(
                &ARCHIVE_MAGIC,
                &ArchiveFile {
                    format_version: FORMAT_VERSION,
                    params,
                },
            );
            fsutil::fsync_dir(&root.join(VOLUMES_DIR))?;
            blob::write_initial(root, protocol::message::Blob::Key, key)?;
            blob::write_initial(root, protocol::message::Blob::KeyCopy, key)?;
            blob::write_initial(root, protocol::message::Blob::Root, root_rec)?;
            // Last: the archive exists once this is in place.
            fsutil::write_atomic(&root.join(ARCHIVE_FILE), &bytes)
        })();
        if let Err(f) = made {
            // An I/O failure part way: what this init made goes again.
            if made_root {
                let _ = fs::remove_dir_all(root);
            } else {
                for b in protocol::message::Blob::ALL {
                    let _ = fs::remove_file(blob::path(root, b));
                }
                let _ = fs::remove_dir(root.join(VOLUMES_DIR));
            }
            return Err(f);
        }
        Ok(Archive {
            root: root.to_path_buf(),
            params,
            store: Arc::new(FsStore::default()),
        })
    }

    pub fn chunk_size(&self) -> u32 {
        self.params.chunk_size
    }

    /// The directory of a volume; the name is validated here so that no
    /// caller can build a path from an unchecked name.
    pub fn volume_dir(&self, volume: &str) -> Result<PathBuf> {
        validate_volume_id(volume)?;
        Ok(self.root.join(VOLUMES_DIR).join(volume))
    }

    pub fn session_dir(&self, volume: &str, session: &str) -> Result<PathBuf> {
        validate_session_name(session)?;
        Ok(self.volume_dir(volume)?.join(session))
    }

    /// The directory of a session that exists (NoSuchSession otherwise).
    pub fn committed_session_dir(&self, volume: &str, session: &str) -> Result<PathBuf> {
        let dir = self.session_dir(volume, session)?;
        if !dir.is_dir() {
            return Err(Failure::new(
                ErrorCode::NoSuchSession,
                format!(
                    "no session {session} of volume '{volume}' in '{}'",
                    self.root.display()
                ),
            ));
        }
        Ok(dir)
    }

    /// Committed session names of a volume, oldest first. In-progress
    /// (`.incoming-*`) and temporary entries are skipped.
    pub fn session_names(&self, volume: &str) -> Result<Vec<String>> {
        let dir = self.volume_dir(volume)?;
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.no_volume(volume))
            }
            Err(e) => return Err(Failure::io("list volume", &dir, e)),
        };
        valid_names(rd, &dir, |n| validate_session_name(n).is_ok())
    }

    pub fn volume_names(&self) -> Result<Vec<String>> {
        let dir = self.root.join(VOLUMES_DIR);
        let rd = fs::read_dir(&dir).map_err(|e| Failure::io("list volumes", &dir, e))?;
        valid_names(rd, &dir, |n| validate_volume_id(n).is_ok())
    }

    /// Finishes whatever a crash interrupted: prunes (journaled), pruned
    /// sessions' and deleted volumes' remains. Called by each writer
    /// connection under the writer lock; the prunes only with the store
    /// held exclusive (`store_held`), since they move committed chunks
    /// that a reader may be reading. Remains are under names no reader
    /// looks at, so they go without it.
    pub fn recover(&self, store_held: bool) -> Result<()> {
        // A record upload cut short (writers only make them).
        for b in protocol::message::Blob::ALL {
            remove_file_if_exists(&self.root.join(format!(".upload-{}", b.name())))?;
        }
        let dir = self.root.join(VOLUMES_DIR);
        let rd = fs::read_dir(&dir).map_err(|e| Failure::io("list volumes", &dir, e))?;
        for ent in rd.flatten() {
            if ent
                .file_name()
                .to_string_lossy()
                .starts_with(DELETING_PREFIX)
            {
                let p = ent.path();
                fs::remove_dir_all(&p).map_err(|e| Failure::io("remove deleted volume", &p, e))?;
            }
        }
        for v in self.volume_names()? {
            if store_held {
                prune::recover(self, &v)?;
            } else {
                prune::remove_pruned(&self.volume_dir(&v)?)?;
            }
            remove_tree(&self.volume_dir(&v)?.join(DROPPED))?;
        }
        Ok(())
    }

    /// Whether a crash left something a reader would trip on: a prune
    /// journal in some volume (a deleted volume's remains are under a name
    /// no reader looks at, and so is a pruned session's).
    pub fn needs_recovery(&self) -> Result<bool> {
        for v in self.volume_names()? {
            let j = self.volume_dir(&v)?.join(prune::JOURNAL_FILE);
            match fs::symlink_metadata(&j) {
                Ok(_) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Failure::io("look for a prune journal", &j, e)),
            }
        }
        Ok(false)
    }

    /// Removes `session` if it is the volume's newest: one rename to
    /// `.dropped` (a name no reader looks at), then the files; `recover`
    /// finishes a removal a crash cut short.
    pub fn drop_newest(&self, volume: &str, session: &str) -> Result<()> {
        validate_session_name(session)?;
        let names = self.session_names(volume)?;
        if names.last().map(String::as_str) != Some(session) {
            return Err(Failure::new(
                ErrorCode::SessionOrder,
                format!(
                    "volume '{volume}': session {session} is not the newest ({}): not dropped",
                    names.last().map_or("the volume has none", String::as_str)
                ),
            ));
        }
        let vdir = self.volume_dir(volume)?;
        let gone = vdir.join(DROPPED);
        remove_tree(&gone)?;
        let dir = self.session_dir(volume, session)?;
        fs::rename(&dir, &gone).map_err(|e| Failure::io("drop session", &dir, e))?;
        // `.newest` named the dropped session: it names the one before
        // (a crash before this only makes readers list the sessions).
        let newest = vdir.join(session::NEWEST);
        match names.len().checked_sub(2).map(|i| &names[i]) {
            Some(prev) => fsutil::write_atomic(&newest, prev.as_bytes())?,
            None => remove_file_if_exists(&newest)?,
        }
        fsutil::fsync_dir(&vdir)?;
        remove_tree(&gone)
    }

    /// Removes a volume and all its sessions: one rename makes it vanish,
    /// then the files are removed (finished by `recover` after a crash).
    pub fn delete_volume(&self, volume: &str) -> Result<()> {
        let dir = self.volume_dir(volume)?;
        if !dir.is_dir() {
            return Err(self.no_volume(volume));
        }
        let gone = self
            .root
            .join(VOLUMES_DIR)
            .join(format!("{DELETING_PREFIX}{volume}"));
        fs::rename(&dir, &gone).map_err(|e| Failure::io("delete volume", &dir, e))?;
        fsutil::fsync_dir(&self.root.join(VOLUMES_DIR))?;
        fs::remove_dir_all(&gone).map_err(|e| Failure::io("remove deleted volume", &gone, e))
    }

    fn no_volume(&self, volume: &str) -> Failure {
        Failure::new(
            ErrorCode::NoSuchVolume,
            format!("no volume '{volume}' in archive '{}'", self.root.display()),
        )
    }

    pub fn session_info(&self, volume: &str, session: &str) -> Result<SessionInfo> {
        session::read_info(&self.session_dir(volume, session)?)
    }

    /// A page of volume names after `after`: at most `LIST_PAGE`, and
    /// whether more follow.
    pub fn volume_page(&self, after: Option<&str>) -> Result<(Vec<String>, bool)> {
        Ok(page(self.volume_names()?, after, |n| n.as_str()))
    }

    /// A page of the sessions of `volume` named after `after`: at most
    /// `LIST_PAGE`, oldest first, and whether more follow. Only the page's
    /// own info records are read.
    pub fn session_page(
        &self,
        volume: &str,
        after: Option<&str>,
    ) -> Result<(Vec<SessionInfo>, bool)> {
        if let Some(a) = after {
            validate_session_name(a)?;
        }
        let (names, more) = page(self.session_names(volume)?, after, |n| n.as_str());
        let infos = names
            .iter()
            .map(|s| self.session_info(volume, s))
            .collect::<Result<Vec<_>>>()?;
        Ok((infos, more))
    }
}

/// The items of sorted `all` that sort after `after`: at most `LIST_PAGE`,
/// and whether more follow.
fn page<T>(all: Vec<T>, after: Option<&str>, key: impl Fn(&T) -> &str) -> (Vec<T>, bool) {
    let start = after.map_or(0, |a| all.partition_point(|x| key(x) <= a));
    let more = all.len() - start > LIST_PAGE;
    let items = all.into_iter().skip(start).take(LIST_PAGE).collect();
    (items, more)
}

/// The entries of a directory whose names pass `valid`, sorted; anything
/// else there (temporary, incoming, foreign) is skipped.
fn valid_names(rd: fs::ReadDir, dir: &Path, valid: impl Fn(&str) -> bool) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| Failure::io("list", dir, e))?;
        if let Some(n) = ent.file_name().to_str().filter(|n| valid(n)) {
            names.push(n.to_string());
        }
    }
    names.sort();
    Ok(names)
}
