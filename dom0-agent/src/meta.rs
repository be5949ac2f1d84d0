//! dom0's own metadata: per archive, per volume, per session a manifest
//! (address → SHA-256) and an info record. This, not the archive, is what
//! restores are verified against.
//!
//! Layout under the meta dir:
//! `archives/ID/archive.toml`, `archives/ID/volumes/VOL/SESSION/{manifest,info.toml}`,
//! and `archives/ID/volumes/VOL/.pending-SESSION/` while a session is being
//! committed (see `backup.rs` for how a pending session is resolved).

use anyhow::{bail, Context, Result};
use protocol::manifest::{ManifestReader, ManifestWriter};
use protocol::merge::{merge_view, MergeView, ViewSource};
use protocol::message::{ArchiveId, ArchiveParams, Compression, SessionInfo};
use protocol::names::{validate_session_name, validate_volume_name};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

pub const PENDING_PREFIX: &str = ".pending-";
/// Written while a prune is in flight (see `prune.rs`).
pub const PRUNE_INTENT: &str = ".prune-intent.toml";
pub const NEW_MANIFEST: &str = "manifest.new";
pub const NEW_INFO: &str = "info.toml.new";

/// A prune dom0 has prepared and asked the receiver for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PruneIntent {
    pub pruned: String,
    pub into: String,
    /// Counts of the merged manifest, to check the receiver's answer.
    pub chunks: u64,
    pub zero_chunks: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    pub id: String,
    pub dest: String,
    pub chunk_size: u32,
    /// `none` or `zstd:LEVEL`.
    pub compression: String,
    pub created: u64,
    /// Volumes that `backup` with no arguments backs up.
    #[serde(default)]
    pub volumes: Vec<String>,
}

impl ArchiveRecord {
    pub fn params(&self) -> Result<ArchiveParams> {
        let id = ArchiveId::from_hex(&self.id)
            .with_context(|| format!("bad archive id '{}'", self.id))?;
        Ok(ArchiveParams {
            id,
            chunk_size: self.chunk_size,
            compression: parse_compression(&self.compression)?,
        }
        .validate()?)
    }
}

pub fn parse_compression(s: &str) -> Result<Compression> {
    let c = match s.split_once(':') {
        None if s == "none" => Compression::None,
        None if s == "zstd" => Compression::Zstd { level: 3 },
        Some(("zstd", l)) => Compression::Zstd {
            level: l
                .parse()
                .with_context(|| format!("bad zstd level in '{s}'"))?,
        },
        _ => bail!("unknown compression '{s}' (use zstd:LEVEL or none)"),
    };
    Ok(c.validate()?)
}

pub struct MetaStore {
    pub root: PathBuf,
}

pub struct ArchiveMeta {
    pub dir: PathBuf,
    pub rec: ArchiveRecord,
    pub params: ArchiveParams,
}

impl MetaStore {
    pub fn new(root: &Path) -> Self {
        MetaStore {
            root: root.to_path_buf(),
        }
    }

    fn archives_dir(&self) -> PathBuf {
        self.root.join("archives")
    }

    /// The archive this dom0 created at `dest`.
    pub fn find_by_dest(&self, dest: &str) -> Result<Option<ArchiveMeta>> {
        let dir = self.archives_dir();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("unable to read meta dir '{}'", dir.display()))
            }
        };
        for ent in rd {
            let ent = ent?;
            if ent.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let a = ArchiveMeta::open(&ent.path())?;
            if a.rec.dest == dest {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    pub fn create(&self, rec: ArchiveRecord) -> Result<ArchiveMeta> {
        let params = rec.params()?;
        let dir = self.archives_dir().join(&rec.id);
        fs::create_dir_all(dir.join("volumes"))
            .with_context(|| format!("unable to create meta dir '{}'", dir.display()))?;
        let a = ArchiveMeta { dir, rec, params };
        a.save()?;
        Ok(a)
    }
}

impl ArchiveMeta {
    pub fn open(dir: &Path) -> Result<Self> {
        let p = dir.join("archive.toml");
        let text =
            fs::read_to_string(&p).with_context(|| format!("unable to read '{}'", p.display()))?;
        let rec: ArchiveRecord =
            toml::from_str(&text).with_context(|| format!("unable to parse '{}'", p.display()))?;
        let params = rec
            .params()
            .with_context(|| format!("in '{}'", p.display()))?;
        Ok(ArchiveMeta {
            dir: dir.to_path_buf(),
            rec,
            params,
        })
    }

    pub fn save(&self) -> Result<()> {
        write_atomic(
            &self.dir.join("archive.toml"),
            toml::to_string(&self.rec)?.as_bytes(),
        )
    }

    pub fn volume_dir(&self, volume: &str) -> Result<PathBuf> {
        validate_volume_name(volume)?;
        Ok(self.dir.join("volumes").join(volume))
    }

    pub fn session_dir(&self, volume: &str, session: &str) -> Result<PathBuf> {
        validate_session_name(session)?;
        Ok(self.volume_dir(volume)?.join(session))
    }

    /// Volumes with at least one session dir (committed or pending).
    pub fn volumes(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("volumes");
        let mut v: Vec<String> = fs::read_dir(&dir)
            .with_context(|| format!("unable to read '{}'", dir.display()))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| validate_volume_name(n).is_ok())
            .collect();
        v.sort();
        Ok(v)
    }

    /// Names of a volume's committed sessions, oldest first: a directory
    /// listing, no record read (what a backup needs of 50,000 sessions).
    pub fn session_names(&self, volume: &str) -> Result<Vec<String>> {
        let dir = self.volume_dir(volume)?;
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("unable to read '{}'", dir.display())),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| validate_session_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Committed sessions of a volume, oldest first.
    pub fn sessions(&self, volume: &str) -> Result<Vec<SessionInfo>> {
        let dir = self.volume_dir(volume)?;
        self.session_names(volume)?
            .iter()
            .map(|n| read_info(&dir.join(n)))
            .collect()
    }

    pub fn pending(&self, volume: &str) -> Result<Vec<String>> {
        let dir = self.volume_dir(volume)?;
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut v: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(PENDING_PREFIX).map(str::to_string))
            .filter(|n| validate_session_name(n).is_ok())
            .collect();
        v.sort();
        Ok(v)
    }

    pub fn pending_dir(&self, volume: &str, session: &str) -> Result<PathBuf> {
        validate_session_name(session)?;
        Ok(self
            .volume_dir(volume)?
            .join(format!("{PENDING_PREFIX}{session}")))
    }

    /// Starts recording a new session's manifest in its pending dir.
    pub fn begin_pending(&self, volume: &str, session: &str) -> Result<PendingSession> {
        let dir = self.pending_dir(volume, session)?;
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)
            .with_context(|| format!("unable to create '{}'", dir.display()))?;
        let mpath = dir.join("manifest");
        let f = File::create(&mpath)
            .with_context(|| format!("unable to create '{}'", mpath.display()))?;
        let manifest =
            ManifestWriter::new(BufWriter::with_capacity(1 << 16, f), self.params.chunk_size)?;
        Ok(PendingSession { dir, manifest })
    }

    /// Pending → committed (after the receiver acknowledged the commit).
    pub fn promote_pending(&self, volume: &str, session: &str) -> Result<()> {
        let from = self.pending_dir(volume, session)?;
        let to = self.session_dir(volume, session)?;
        fs::rename(&from, &to).with_context(|| format!("unable to commit '{}'", to.display()))?;
        fsync_dir(&self.volume_dir(volume)?)
    }

    pub fn drop_pending(&self, volume: &str, session: &str) -> Result<()> {
        let dir = self.pending_dir(volume, session)?;
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("unable to remove '{}'", dir.display()))
            }
            _ => Ok(()),
        }
    }

    /// One session's manifest, streamed.
    pub fn manifest(&self, volume: &str, session: &str) -> Result<ManifestIter> {
        let p = self.session_dir(volume, session)?.join("manifest");
        self.manifest_at(&p)
    }

    /// The size of one session's manifest file, in bytes.
    pub fn manifest_len(&self, volume: &str, session: &str) -> Result<u64> {
        let p = self.session_dir(volume, session)?.join("manifest");
        Ok(fs::metadata(&p)
            .with_context(|| format!("unable to read manifest '{}'", p.display()))?
            .len())
    }

    pub fn manifest_at(&self, p: &Path) -> Result<ManifestIter> {
        let f =
            File::open(p).with_context(|| format!("unable to open manifest '{}'", p.display()))?;
        let r = ManifestReader::new(BufReader::with_capacity(1 << 16, f))
            .with_context(|| format!("manifest '{}'", p.display()))?;
        if r.chunk_size() != self.params.chunk_size {
            bail!(
                "manifest '{}' has chunk size {}, archive has {}",
                p.display(),
                r.chunk_size(),
                self.params.chunk_size
            );
        }
        let path = p.to_path_buf();
        Ok(Box::new(r.map(move |e| {
            e.map_err(|err| anyhow::anyhow!("manifest '{}': {err}", path.display()))
        })))
    }

    /// Removes a volume's metadata: one rename, then the files.
    pub fn delete_volume(&self, volume: &str) -> Result<()> {
        let dir = self.volume_dir(volume)?;
        if !dir.exists() {
            return Ok(());
        }
        let gone = self.dir.join("volumes").join(format!(".deleting-{volume}"));
        fs::rename(&dir, &gone).with_context(|| format!("unable to remove '{}'", dir.display()))?;
        fsync_dir(&self.dir.join("volumes"))?;
        fs::remove_dir_all(&gone).with_context(|| format!("unable to remove '{}'", gone.display()))
    }

    pub fn rename_volume(&self, volume: &str, new_name: &str) -> Result<()> {
        let from = self.volume_dir(volume)?;
        let to = self.volume_dir(new_name)?;
        if to.exists() {
            bail!("dom0 already has metadata for a volume '{new_name}'");
        }
        fs::rename(&from, &to).with_context(|| format!("unable to rename '{}'", from.display()))?;
        fsync_dir(&self.dir.join("volumes"))
    }

    pub fn prune_intent(&self, volume: &str) -> Result<Option<PruneIntent>> {
        let p = self.volume_dir(volume)?.join(PRUNE_INTENT);
        match fs::read_to_string(&p) {
            Ok(t) => {
                Ok(Some(toml::from_str(&t).with_context(|| {
                    format!("unable to parse '{}'", p.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("unable to read '{}'", p.display())),
        }
    }

    pub fn write_prune_intent(&self, volume: &str, i: &PruneIntent) -> Result<()> {
        write_atomic(
            &self.volume_dir(volume)?.join(PRUNE_INTENT),
            toml::to_string(i)?.as_bytes(),
        )
    }

    /// Drops a prepared prune the receiver never did.
    pub fn cancel_prune(&self, volume: &str, i: &PruneIntent) -> Result<()> {
        let q = self.session_dir(volume, &i.into)?;
        for n in [NEW_MANIFEST, NEW_INFO] {
            let _ = fs::remove_file(q.join(n));
        }
        remove_if_exists(&self.volume_dir(volume)?.join(PRUNE_INTENT))
    }

    /// Finishes a prune the receiver did: the merged manifest and info
    /// replace the successor's, the pruned session goes. Idempotent.
    pub fn finish_prune(&self, volume: &str, i: &PruneIntent, info: &SessionInfo) -> Result<()> {
        let vdir = self.volume_dir(volume)?;
        let q = self.session_dir(volume, &i.into)?;
        let new_m = q.join(NEW_MANIFEST);
        if new_m.exists() {
            write_atomic(&q.join(NEW_INFO), toml::to_string(info)?.as_bytes())?;
            fs::rename(&new_m, q.join("manifest"))
                .with_context(|| format!("unable to replace '{}'", new_m.display()))?;
        }
        let new_i = q.join(NEW_INFO);
        if new_i.exists() {
            fs::rename(&new_i, q.join("info.toml"))
                .with_context(|| format!("unable to replace '{}'", new_i.display()))?;
        }
        fsync_dir(&q)?;
        let p = self.session_dir(volume, &i.pruned)?;
        if p.exists() {
            let gone = vdir.join(format!(".pruned-{}", i.pruned));
            fs::rename(&p, &gone).with_context(|| format!("unable to remove '{}'", p.display()))?;
            fsync_dir(&vdir)?;
            fs::remove_dir_all(&gone)
                .with_context(|| format!("unable to remove '{}'", gone.display()))?;
        }
        remove_if_exists(&vdir.join(PRUNE_INTENT))?;
        fsync_dir(&vdir)
    }

    /// The volume as of `sessions.last()`: merged manifests, streamed.
    pub fn view(&self, volume: &str, sessions: &[SessionInfo]) -> Result<View> {
        let mut srcs = Vec::with_capacity(sessions.len());
        for s in sessions {
            srcs.push(ViewSource {
                volume_size: s.volume_size,
                entries: self.manifest(volume, &s.name)?,
            });
        }
        Ok(merge_view(srcs))
    }
}

pub type ManifestIter = Box<dyn Iterator<Item = Result<protocol::manifest::Entry>> + Send>;
pub type View = MergeView<ManifestIter>;

pub struct PendingSession {
    pub dir: PathBuf,
    pub manifest: ManifestWriter<BufWriter<File>>,
}

impl PendingSession {
    /// Writes the manifest end and the info record, durably.
    pub fn finish(self, info: &SessionInfo) -> Result<()> {
        let mut w = self.manifest.finish()?;
        w.flush()?;
        w.get_ref().sync_all()?;
        write_atomic(
            &self.dir.join("info.toml"),
            toml::to_string(info)?.as_bytes(),
        )
    }
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("unable to remove '{}'", p.display()))
        }
        _ => Ok(()),
    }
}

/// A session's info record (committed or pending dir).
pub fn read_info(dir: &Path) -> Result<SessionInfo> {
    let p = dir.join("info.toml");
    let text =
        fs::read_to_string(&p).with_context(|| format!("unable to read '{}'", p.display()))?;
    toml::from_str(&text).with_context(|| format!("unable to parse '{}'", p.display()))
}

/// sysio's atomic replacement, with the file named in the error.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    sysio::atomic::write_atomic(path, bytes)
        .with_context(|| format!("unable to write '{}'", path.display()))
}

/// sysio's directory sync, with the directory named in the error.
fn fsync_dir(dir: &Path) -> Result<()> {
    sysio::atomic::fsync_dir(dir)
        .with_context(|| format!("unable to sync directory '{}'", dir.display()))
}
