//! dom0's own metadata: per archive its key, per volume its opaque id, per
//! session a manifest (address → keyed chunk id), its MAC and an info
//! record. This, not the archive, is what restores are verified against;
//! the archive's sealed root is a copy of it (less the manifests, which it
//! pins by MAC), from which `arch-import` rebuilds it.
//!
//! Layout under the meta dir (0700; the key file 0600):
//! `archives/ID/{archive.toml,key,generation}`,
//! `archives/ID/volumes/VOL/{id,mode,damaged}` (the image's permission
//! bits; chunk addresses to re-send, see `backup.rs`),
//! `archives/ID/volumes/VOL/SESSION/{manifest,mac,info.toml}`,
//! and `archives/ID/volumes/VOL/.pending-SESSION/` while a session is being
//! committed (see `backup.rs` for how a pending session is resolved).

use anyhow::{bail, Context, Result};
use protocol::manifest::{ManifestReader, ManifestWriter};
use protocol::merge::{merge_view, MergeView, ViewSource};
use protocol::message::{ArchiveId, ArchiveParams, Compression, SessionInfo};
use protocol::names::{validate_session_name, validate_volume_name};
use sealed::keys::{KeyFile, Keys, VolumeId};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const PENDING_PREFIX: &str = ".pending-";
/// Bounds of [`ArchiveMeta::newest_entries`]' search.
pub const LOOKUP_SESSIONS: usize = 4096;
pub const LOOKUP_BYTES: u64 = 64 << 20;
/// Written while a prune is in flight (see `prune.rs`).
pub const PRUNE_INTENT: &str = ".prune-intent.toml";
/// Marks a volume whose deletion dom0 asked for and has not seen done.
pub const DELETE_INTENT: &str = ".delete-intent";
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
    /// MAC of the merged manifest (hex), which the root pins while the
    /// prune is in flight. Absent in intents written before it was kept.
    #[serde(default)]
    pub manifest_mac: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecord {
    pub id: String,
    pub dest: String,
    pub chunk_size: u32,
    /// `none` or `zstd:LEVEL`.
    pub compression: String,
    pub created: u64,
    /// Chunks are encrypted (else authenticated only).
    pub encrypt: bool,
    /// Volumes that `backup` with no arguments backs up.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// An `--encrypt off` archive made before clear chunks carried a MAC
    /// (true in records that predate the field): only it may hold such
    /// chunks, and only in it are they read.
    #[serde(default = "legacy")]
    pub legacy_clear: bool,
    /// Stored sizes are padded to buckets (`arch-init --pad-sizes`).
    #[serde(default)]
    pub pad_sizes: bool,
}

fn legacy() -> bool {
    true
}

impl ArchiveRecord {
    /// The archive's keys, as this record says to use them.
    pub fn keys(&self, key: &KeyFile) -> Keys {
        let mut k = key.keys();
        k.legacy_clear = self.legacy_clear && !self.encrypt;
        k.pad = self.pad_sizes;
        for o in &mut k.older {
            o.legacy_clear = k.legacy_clear;
        }
        k
    }
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

/// What dom0 keeps of a sealed root's bytes: their BLAKE3 and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootDigest {
    pub hash: [u8; 32],
    pub len: usize,
}

impl RootDigest {
    pub fn of(sealed: &[u8]) -> Self {
        RootDigest {
            hash: *blake3::hash(sealed).as_bytes(),
            len: sealed.len(),
        }
    }
}

pub struct MetaStore {
    pub root: PathBuf,
}

pub struct ArchiveMeta {
    pub dir: PathBuf,
    pub rec: ArchiveRecord,
    pub params: ArchiveParams,
    pub keys: Arc<Keys>,
}

/// Where dom0 records each volume's opaque id: `volumes/VOL/id`. A copy
/// travels with each client, which names volumes to the receiver by id.
#[derive(Clone)]
pub struct VolumeIds {
    dir: PathBuf,
}

impl VolumeIds {
    fn path(&self, volume: &str) -> Result<PathBuf> {
        validate_volume_name(volume)?;
        Ok(self.dir.join(volume).join(ID_FILE))
    }

    /// The opaque id the archive knows `volume` by, if it has one.
    pub fn get(&self, volume: &str) -> Result<Option<VolumeId>> {
        let p = self.path(volume)?;
        match fs::read_to_string(&p) {
            Ok(t) => VolumeId::from_hex(t.trim())
                .map(Some)
                .with_context(|| format!("bad volume id in '{}'", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("unable to read '{}'", p.display())),
        }
    }

    /// Every volume dom0 has an id for, by id.
    pub fn names_by_id(&self) -> Result<std::collections::BTreeMap<VolumeId, String>> {
        let mut m = std::collections::BTreeMap::new();
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(m);
        };
        for e in rd.flatten() {
            let Ok(v) = e.file_name().into_string() else {
                continue;
            };
            if validate_volume_name(&v).is_ok() {
                if let Some(id) = self.get(&v)? {
                    m.insert(id, v);
                }
            }
        }
        Ok(m)
    }
}

pub const KEY_FILE: &str = "key";
/// `GENERATION [HASH]`: the newest root generation dom0 wrote or
/// accepted, and the BLAKE3 of that root's bytes (absent where an earlier
/// version wrote the file).
const GENERATION_FILE: &str = "generation";
/// The newest generation dom0 tried to write: a generation is consumed by
/// every attempt, so two different roots never carry the same one.
const ATTEMPTED_FILE: &str = "generation.attempted";
/// The wrapped key (`keys::WrappedKey`'s bytes) the archive must hold,
/// as dom0 wrote or pinned it.
const WRAPPED_KEY_FILE: &str = "wrapped-key";
const DIRTY_FILE: &str = "root.dirty";
const ID_FILE: &str = "id";
const MAC_FILE: &str = "mac";
const MODE_FILE: &str = "mode";
const DAMAGED_FILE: &str = "damaged";
/// The volume's dedup group (absent: its own scope), fixed at its first
/// backup (see `dedup`).
const GROUP_FILE: &str = "group";
/// The Qubes settings of every backup run (`sealed::qubes`), as the
/// sealed root carries them.
const QUBES_FILE: &str = "qubes";

impl MetaStore {
    pub fn new(root: &Path) -> Self {
        MetaStore {
            root: root.to_path_buf(),
        }
    }

    fn archives_dir(&self) -> PathBuf {
        self.root.join("archives")
    }

    /// What a killed `arch-import` left: its staging directory (which
    /// holds a copy of the key) goes; a swap cut between its two renames
    /// puts the previous record back (the import is simply run again).
    fn tidy(&self, dir: &Path) -> Result<()> {
        for ent in fs::read_dir(dir)?.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let p = ent.path();
            if name.starts_with(".import-") {
                fs::remove_dir_all(&p)
                    .with_context(|| format!("unable to remove '{}'", p.display()))?;
            } else if let Some(id) = name.strip_prefix(".old-") {
                let live = dir.join(id);
                if live.exists() {
                    fs::remove_dir_all(&p)
                        .with_context(|| format!("unable to remove '{}'", p.display()))?;
                } else {
                    fs::rename(&p, &live)
                        .with_context(|| format!("unable to put back '{}'", p.display()))?;
                    fsync_dir(dir)?;
                }
            }
        }
        Ok(())
    }

    /// The archive this dom0 created at `dest`.
    pub fn find_by_dest(&self, dest: &str) -> Result<Option<ArchiveMeta>> {
        let dir = self.archives_dir();
        if dir.exists() {
            self.tidy(&dir)?;
        }
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

    /// Records an archive: its key first (0600), then its record. The
    /// meta dir is private (0700): it holds the key.
    pub fn create(&self, rec: ArchiveRecord, key: &KeyFile) -> Result<ArchiveMeta> {
        private_dir(&self.root)?;
        ArchiveMeta::create_in(&self.archives_dir().join(&rec.id), rec, key)
    }
}

impl ArchiveMeta {
    /// Records an archive in `dir` (see [`MetaStore::create`]).
    pub fn create_in(dir: &Path, rec: ArchiveRecord, key: &KeyFile) -> Result<ArchiveMeta> {
        let params = rec.params()?;
        let dir = dir.to_path_buf();
        fs::create_dir_all(dir.join("volumes"))
            .with_context(|| format!("unable to create meta dir '{}'", dir.display()))?;
        let kp = dir.join(KEY_FILE);
        sysio::atomic::write_atomic_mode(&kp, key.encode().as_bytes(), 0o600)
            .with_context(|| format!("unable to write key file '{}'", kp.display()))?;
        let a = ArchiveMeta {
            keys: Arc::new(rec.keys(key)),
            dir,
            rec,
            params,
        };
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
        let key = read_key_file(&dir.join(KEY_FILE))?;
        if key.archive != params.id || key.encrypt != rec.encrypt {
            bail!(
                "the key file '{}' is for archive {}, not {}",
                dir.join(KEY_FILE).display(),
                key.archive.to_hex(),
                rec.id
            );
        }
        Ok(ArchiveMeta {
            dir: dir.to_path_buf(),
            keys: Arc::new(rec.keys(&key)),
            rec,
            params,
        })
    }

    /// Marks the archive's root as behind dom0's records: set before every
    /// change the root describes, cleared once a new root is written, so a
    /// connection knows (cheaply) when the root must be rewritten.
    pub fn mark_dirty(&self) -> Result<()> {
        let p = self.dir.join(DIRTY_FILE);
        if p.exists() {
            return Ok(());
        }
        write_atomic(&p, b"")
    }

    pub fn dirty(&self) -> bool {
        self.dir.join(DIRTY_FILE).exists()
    }

    pub fn clear_dirty(&self) -> Result<()> {
        remove_if_exists(&self.dir.join(DIRTY_FILE))
    }

    /// The Qubes settings recorded so far (empty if none).
    pub fn qubes(&self) -> Result<sealed::qubes::QubesCatalog> {
        let p = self.dir.join(QUBES_FILE);
        match fs::read(&p) {
            Ok(b) => {
                let c: sealed::qubes::QubesCatalog = protocol::codec::decode_large("qubes", &b)
                    .with_context(|| format!("unable to read '{}'", p.display()))?;
                c.validate()
                    .with_context(|| format!("'{}' is not valid", p.display()))?;
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e).with_context(|| format!("unable to read '{}'", p.display())),
        }
    }

    /// Records `c` (the root must then be rewritten: marked dirty first).
    pub fn set_qubes(&self, c: &sealed::qubes::QubesCatalog) -> Result<()> {
        self.mark_dirty()?;
        write_atomic(
            &self.dir.join(QUBES_FILE),
            &protocol::codec::encode_large(c),
        )
    }

    /// The newest root generation dom0 has written or accepted.
    pub fn generation(&self) -> Result<u64> {
        Ok(self.seen()?.0)
    }

    /// The newest root dom0 has written or accepted: its generation and,
    /// where recorded, the hash of its bytes.
    pub fn seen(&self) -> Result<(u64, Option<[u8; 32]>)> {
        let (g, h, _) = self.seen_record()?;
        Ok((g, h))
    }

    /// `GENERATION [HASH [LEN]]`.
    fn seen_record(&self) -> Result<(u64, Option<[u8; 32]>, Option<u64>)> {
        let p = self.dir.join(GENERATION_FILE);
        let bad = || format!("unable to parse '{}'", p.display());
        let Some(words) = read_words(&p)? else {
            return Ok((0, None, None));
        };
        let mut w = words.iter().map(String::as_str);
        let g = w.next().unwrap_or("").parse().with_context(bad)?;
        let h = w
            .next()
            .map(|h| sealed::keys::parse_hex(h).with_context(bad))
            .transpose()?;
        let len = w.next().map(str::parse).transpose().with_context(bad)?;
        Ok((g, h, len))
    }

    /// Records `root` as the newest root of generation `g` dom0 has
    /// written or accepted.
    pub fn set_seen(&self, g: u64, root: &RootDigest) -> Result<()> {
        let h = sealed::keys::hex(&root.hash);
        write_atomic(
            &self.dir.join(GENERATION_FILE),
            format!("{g} {h} {}\n", root.len).as_bytes(),
        )
    }

    /// `GENERATION LEN` of the newest root dom0 tried to write.
    fn attempted(&self) -> Result<(u64, Option<u64>)> {
        let p = self.dir.join(ATTEMPTED_FILE);
        let bad = || format!("unable to parse '{}'", p.display());
        let Some(words) = read_words(&p)? else {
            return Ok((0, None));
        };
        let mut w = words.iter().map(String::as_str);
        let g = w.next().unwrap_or("").parse().with_context(bad)?;
        let len = w.next().map(str::parse).transpose().with_context(bad)?;
        Ok((g, len))
    }

    /// The generation the next root dom0 writes takes: one past any it
    /// wrote, accepted or tried to write.
    pub fn next_generation(&self) -> Result<u64> {
        Ok(self.generation()?.max(self.attempted()?.0) + 1)
    }

    /// Records that a root of generation `g`, `len` bytes, is about to be
    /// sent: the generation is consumed whether or not it lands.
    pub fn record_attempt(&self, g: u64, len: usize) -> Result<()> {
        write_atomic(
            &self.dir.join(ATTEMPTED_FILE),
            format!("{g} {len}\n").as_bytes(),
        )
    }

    /// The most bytes of root dom0 accepts from the receiver: the larger
    /// of the last root it wrote or accepted and the last it tried to
    /// write, plus one part; the protocol's cap where neither is recorded.
    pub fn root_cap(&self) -> Result<u64> {
        let cap = protocol::message::Blob::Root.cap();
        let (_, _, seen) = self.seen_record()?;
        let (_, tried) = self.attempted()?;
        Ok(match seen.max(tried) {
            Some(n) => cap.min(n.saturating_add(protocol::message::DATA_PART as u64)),
            None => cap,
        })
    }

    /// The wrapped key the archive must hold, if dom0 has one recorded.
    pub fn wrapped_key(&self) -> Result<Option<Vec<u8>>> {
        let p = self.dir.join(WRAPPED_KEY_FILE);
        match fs::read(&p) {
            Ok(b) => {
                sealed::keys::WrappedKey::decode(&b)
                    .with_context(|| format!("'{}' is not a wrapped key", p.display()))?;
                Ok(Some(b))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("unable to read '{}'", p.display())),
        }
    }

    /// Records the wrapped key the archive must hold (the root, which pins
    /// its hash, must then be rewritten: marked dirty first).
    pub fn set_wrapped_key(&self, bytes: &[u8]) -> Result<()> {
        self.mark_dirty()?;
        let p = self.dir.join(WRAPPED_KEY_FILE);
        sysio::atomic::write_atomic_mode(&p, bytes, 0o600)
            .with_context(|| format!("unable to write '{}'", p.display()))
    }

    pub fn ids(&self) -> VolumeIds {
        VolumeIds {
            dir: self.dir.join("volumes"),
        }
    }

    /// The opaque id the archive knows `volume` by, if it has one.
    pub fn volume_id(&self, volume: &str) -> Result<Option<VolumeId>> {
        self.ids().get(volume)
    }

    /// The volume's id, chosen at random (and recorded) on first use.
    pub fn ensure_volume_id(&self, volume: &str) -> Result<VolumeId> {
        if let Some(id) = self.volume_id(volume)? {
            return Ok(id);
        }
        let id = VolumeId(crate::random::bytes()?);
        self.set_volume_id(volume, id)?;
        Ok(id)
    }

    pub fn set_volume_id(&self, volume: &str, id: VolumeId) -> Result<()> {
        let dir = self.volume_dir(volume)?;
        fs::create_dir_all(&dir)
            .with_context(|| format!("unable to create '{}'", dir.display()))?;
        write_atomic(&dir.join(ID_FILE), format!("{}\n", id.to_hex()).as_bytes())
    }

    /// The volume's dedup group, as recorded (by `add --dedup-group`, or
    /// at its first backup).
    pub fn volume_group(&self, volume: &str) -> Result<Option<String>> {
        let p = self.volume_dir(volume)?.join(GROUP_FILE);
        match fs::read_to_string(&p) {
            Ok(t) => {
                let g = t.trim().to_string();
                sealed::keys::validate_group(&g)
                    .map_err(|e| anyhow::anyhow!("'{}': {e}", p.display()))?;
                Ok(Some(g))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("unable to read '{}'", p.display())),
        }
    }

    pub fn set_volume_group(&self, volume: &str, group: Option<&str>) -> Result<()> {
        let dir = self.volume_dir(volume)?;
        let p = dir.join(GROUP_FILE);
        match group {
            Some(g) => {
                sealed::keys::validate_group(g).map_err(anyhow::Error::msg)?;
                fs::create_dir_all(&dir)
                    .with_context(|| format!("unable to create '{}'", dir.display()))?;
                write_atomic(&p, format!("{g}\n").as_bytes())
            }
            None => match fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("unable to remove '{}'", p.display()))
                }
                _ => Ok(()),
            },
        }
    }

    /// The dedup scope of a volume that has an id.
    pub fn scope(&self, volume: &str) -> Result<sealed::keys::Scope> {
        let id = self
            .volume_id(volume)?
            .with_context(|| format!("volume '{volume}' has no id yet"))?;
        Ok(sealed::keys::Scope::of(
            id,
            self.volume_group(volume)?.as_deref(),
        ))
    }

    /// The source image's permission bits at its newest backup (None for
    /// an LV, or a volume backed up before modes were recorded).
    pub fn volume_mode(&self, volume: &str) -> Result<Option<u32>> {
        let p = self.volume_dir(volume)?.join(MODE_FILE);
        match fs::read_to_string(&p) {
            Ok(t) => u32::from_str_radix(t.trim(), 8)
                .map(|m| Some(m & 0o7777))
                .with_context(|| format!("bad mode in '{}'", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("unable to read '{}'", p.display())),
        }
    }

    pub fn set_volume_mode(&self, volume: &str, mode: u32) -> Result<()> {
        if self.volume_mode(volume)? == Some(mode & 0o7777) {
            return Ok(());
        }
        self.mark_dirty()?;
        write_atomic(
            &self.volume_dir(volume)?.join(MODE_FILE),
            format!("{:o}\n", mode & 0o7777).as_bytes(),
        )
    }

    /// Addresses of the volume's chunks found missing or corrupt in the
    /// archive (by `arch-check`, `verify` or `restore`), which the next
    /// backup re-reads and re-sends whatever the source's delta says.
    pub fn damaged(&self, volume: &str) -> Result<std::collections::BTreeSet<u64>> {
        let p = self.volume_dir(volume)?.join(DAMAGED_FILE);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
            Err(e) => return Err(e).with_context(|| format!("unable to read '{}'", p.display())),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                u64::from_str_radix(l.trim().trim_start_matches("0x"), 16)
                    .with_context(|| format!("bad address '{l}' in '{}'", p.display()))
            })
            .collect()
    }

    /// Adds to the volume's damaged set the chunks of `found` (session,
    /// address) that the newest view still uses: a damaged chunk a later
    /// session superseded needs no re-send (the session it is in stays
    /// damaged). Returns how many were added.
    pub fn record_damaged(&self, volume: &str, found: &[(String, u64)]) -> Result<usize> {
        if found.is_empty() || !self.volume_dir(volume)?.is_dir() {
            return Ok(0);
        }
        let cs = self.params.chunk_size as u64;
        let size = self
            .session_names(volume)?
            .last()
            .map(|s| read_info(&self.session_dir(volume, s)?).map(|i| i.volume_size))
            .transpose()?
            .unwrap_or(0);
        let mut wanted = crate::chunkmap::ChunkMap::new(size.div_ceil(cs));
        for (_, a) in found {
            wanted.set_chunks(a / cs, a / cs);
        }
        let newest = self.newest_entries(volume, &wanted)?;
        let mut set = self.damaged(volume)?;
        let before = set.len();
        set.extend(found.iter().filter_map(|(s, a)| {
            match newest.get(&(a / cs)) {
                Some((_, Some(from))) if &**from == s.as_str() => Some(*a),
                // Not found within the search's bounds: re-send to be safe.
                None if *a < size => Some(*a),
                _ => None,
            }
        }));
        if set.len() == before {
            return Ok(0);
        }
        self.write_damaged(volume, &set)?;
        Ok(set.len() - before)
    }

    /// Forgets the damaged addresses a committed session re-sent.
    pub fn clear_damaged(
        &self,
        volume: &str,
        healed: &std::collections::BTreeSet<u64>,
    ) -> Result<()> {
        let mut set = self.damaged(volume)?;
        set.retain(|a| !healed.contains(a));
        self.write_damaged(volume, &set)
    }

    fn write_damaged(&self, volume: &str, set: &std::collections::BTreeSet<u64>) -> Result<()> {
        let p = self.volume_dir(volume)?.join(DAMAGED_FILE);
        if set.is_empty() {
            return remove_if_exists(&p);
        }
        let text: String = set.iter().map(|a| format!("{a:#x}\n")).collect();
        write_atomic(&p, text.as_bytes())
    }

    /// A session's manifest MAC, as recorded when its manifest was written.
    pub fn manifest_mac(&self, volume: &str, session: &str) -> Result<[u8; 32]> {
        let p = self.session_dir(volume, session)?.join(MAC_FILE);
        let t =
            fs::read_to_string(&p).with_context(|| format!("unable to read '{}'", p.display()))?;
        sealed::keys::parse_hex(t.trim()).with_context(|| format!("bad MAC in '{}'", p.display()))
    }

    pub fn save(&self) -> Result<()> {
        self.mark_dirty()?;
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

    /// Rewrites a pending session's info record (its counts changed after
    /// the receiver refused references).
    pub fn write_pending_info(
        &self,
        volume: &str,
        session: &str,
        info: &SessionInfo,
    ) -> Result<()> {
        write_atomic(
            &self.pending_dir(volume, session)?.join("info.toml"),
            toml::to_string(info)?.as_bytes(),
        )
    }

    /// Pending → committed (after the receiver acknowledged the commit).
    pub fn promote_pending(&self, volume: &str, session: &str) -> Result<()> {
        self.mark_dirty()?;
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

    /// Removes what deletions killed after their rename left behind.
    pub fn remove_deleted_remains(&self) -> Result<()> {
        let dir = self.dir.join("volumes");
        for ent in fs::read_dir(&dir)
            .with_context(|| format!("unable to read '{}'", dir.display()))?
            .flatten()
        {
            if ent.file_name().to_string_lossy().starts_with(".deleting-") {
                let p = ent.path();
                fs::remove_dir_all(&p)
                    .with_context(|| format!("unable to remove '{}'", p.display()))?;
            }
        }
        Ok(())
    }

    /// Removes a volume's metadata: one rename, then the files.
    pub fn delete_volume(&self, volume: &str) -> Result<()> {
        self.mark_dirty()?;
        let dir = self.volume_dir(volume)?;
        if !dir.exists() {
            return Ok(());
        }
        // A fixed-length name: the volume's own may be 255 bytes, which
        // leaves no room for a prefix.
        let gone = self.dir.join("volumes").join(format!(
            ".deleting-{}",
            &blake3::hash(volume.as_bytes()).to_hex()[..32]
        ));
        fs::rename(&dir, &gone).with_context(|| format!("unable to remove '{}'", dir.display()))?;
        fsync_dir(&self.dir.join("volumes"))?;
        fs::remove_dir_all(&gone).with_context(|| format!("unable to remove '{}'", gone.display()))
    }

    pub fn rename_volume(&self, volume: &str, new_name: &str) -> Result<()> {
        self.mark_dirty()?;
        let from = self.volume_dir(volume)?;
        let to = self.volume_dir(new_name)?;
        if to.exists() {
            bail!("dom0 already has metadata for a volume '{new_name}'");
        }
        fs::rename(&from, &to).with_context(|| format!("unable to rename '{}'", from.display()))?;
        fsync_dir(&self.dir.join("volumes"))
    }

    /// Records that dom0 is about to ask the receiver to delete `volume`.
    pub fn write_delete_intent(&self, volume: &str) -> Result<()> {
        self.mark_dirty()?;
        write_atomic(&self.volume_dir(volume)?.join(DELETE_INTENT), b"")
    }

    /// Whether a deletion of `volume` was asked for and not seen done.
    pub fn delete_intent(&self, volume: &str) -> Result<bool> {
        Ok(self.volume_dir(volume)?.join(DELETE_INTENT).exists())
    }

    /// Fails, naming the command that heals it, if `volume` is half
    /// deleted: what it held may be gone from the archive already.
    pub fn check_not_deleting(&self, volume: &str) -> Result<()> {
        if self.delete_intent(volume)? {
            bail!(
                "volume '{volume}' is being deleted (a `delete` was interrupted): run `sparsebak delete {volume} --force` to finish it"
            );
        }
        Ok(())
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

    /// Drops a prepared prune the receiver never did. The root named it
    /// as pending: marked dirty, so the next root says it is not.
    pub fn cancel_prune(&self, volume: &str, i: &PruneIntent) -> Result<()> {
        self.mark_dirty()?;
        let q = self.session_dir(volume, &i.into)?;
        for n in [NEW_MANIFEST, NEW_INFO] {
            let _ = fs::remove_file(q.join(n));
        }
        remove_if_exists(&self.volume_dir(volume)?.join(PRUNE_INTENT))
    }

    /// Finishes a prune the receiver did: the merged manifest and info
    /// replace the successor's, the pruned session goes. Idempotent.
    pub fn finish_prune(&self, volume: &str, i: &PruneIntent, info: &SessionInfo) -> Result<()> {
        self.mark_dirty()?;
        let vdir = self.volume_dir(volume)?;
        let q = self.session_dir(volume, &i.into)?;
        let new_m = q.join(NEW_MANIFEST);
        if new_m.exists() {
            // The receiver knows no times: the successor keeps dom0's.
            let mut info = info.clone();
            info.time = read_info(&q)?.time;
            write_atomic(&q.join(NEW_INFO), toml::to_string(&info)?.as_bytes())?;
            write_mac(&q, &new_m, MAC_FILE, &self.keys)?;
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
        let gone = vdir.join(format!(".pruned-{}", i.pruned));
        if p.exists() {
            fs::rename(&p, &gone).with_context(|| format!("unable to remove '{}'", p.display()))?;
            fsync_dir(&vdir)?;
        }
        // Also what a run killed after the rename left.
        if gone.exists() {
            fs::remove_dir_all(&gone)
                .with_context(|| format!("unable to remove '{}'", gone.display()))?;
        }
        remove_if_exists(&vdir.join(PRUNE_INTENT))?;
        fsync_dir(&vdir)
    }

    /// The entries the volume's newest view holds at the chunks set in
    /// `wanted`, by chunk index: read newest session first, only until
    /// every one is found, so a backup's cost follows what changed, not how
    /// many sessions there are. A chunk no session wrote (or cut off by a
    /// shrink) is `Prev::Absent`. The search stops after `LOOKUP_SESSIONS`
    /// sessions or `LOOKUP_BYTES` of manifests: chunks not found by then are
    /// left out (the caller sends them). With each entry, the name of the
    /// session it belongs to (None for `Absent`).
    pub fn newest_entries(
        &self,
        volume: &str,
        wanted: &crate::chunkmap::ChunkMap,
    ) -> Result<NewestEntries> {
        use crate::pipeline::Prev;
        let cs = self.params.chunk_size as u64;
        let mut pending: std::collections::BTreeSet<u64> = wanted.iter().collect();
        let mut found = std::collections::HashMap::with_capacity(pending.len());
        let names = self.session_names(volume)?;
        let dir = self.volume_dir(volume)?;
        let (mut limit, mut bytes) = (u64::MAX, 0u64);
        for (n, name) in names.iter().rev().enumerate() {
            if pending.is_empty() {
                return Ok(found);
            }
            if n >= LOOKUP_SESSIONS || bytes >= LOOKUP_BYTES {
                return Ok(found);
            }
            // Past the smallest size of this or any newer session, the
            // view is zero (the merge's truncation rule).
            limit = limit.min(read_info(&dir.join(name))?.volume_size);
            for i in pending.split_off(&limit.div_ceil(cs)) {
                found.insert(i, (Prev::Absent, None));
            }
            bytes += self.manifest_len(volume, name)?;
            let from: Arc<str> = Arc::from(name.as_str());
            for e in self.manifest(volume, name)? {
                let e = e?;
                if e.addr < limit && pending.remove(&(e.addr / cs)) {
                    found.insert(
                        e.addr / cs,
                        (Prev::Entry(e.codec, e.hash), Some(from.clone())),
                    );
                }
            }
        }
        for i in pending {
            found.insert(i, (Prev::Absent, None));
        }
        Ok(found)
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

/// By chunk index: the newest view's entry, and the session it is from
/// (None for `Absent`).
pub type NewestEntries = std::collections::HashMap<u64, (crate::pipeline::Prev, Option<Arc<str>>)>;

pub type ManifestIter = Box<dyn Iterator<Item = Result<protocol::manifest::Entry>> + Send>;
pub type View = MergeView<ManifestIter>;

pub struct PendingSession {
    pub dir: PathBuf,
    pub manifest: ManifestWriter<BufWriter<File>>,
}

impl PendingSession {
    /// Writes the manifest end, its MAC and the info record, durably.
    pub fn finish(self, info: &SessionInfo, keys: &Keys) -> Result<()> {
        let mut w = self.manifest.finish()?;
        w.flush()?;
        w.get_ref().sync_all()?;
        write_mac(&self.dir, &self.dir.join("manifest"), MAC_FILE, keys)?;
        write_atomic(
            &self.dir.join("info.toml"),
            toml::to_string(info)?.as_bytes(),
        )
    }
}

/// A manifest file opened for lookups by address (a binary search of its
/// fixed-size entries, `protocol::manifest::find_entry`): what a reference
/// is checked against, without reading the manifest whole.
pub struct ManifestFile {
    path: PathBuf,
    file: File,
    entries: u64,
}

impl ManifestFile {
    pub fn open(path: &Path, chunk_size: u32) -> Result<ManifestFile> {
        use std::os::unix::fs::FileExt;
        let file =
            File::open(path).with_context(|| format!("unable to open '{}'", path.display()))?;
        let mut head = [0u8; protocol::manifest::HEADER_LEN];
        file.read_exact_at(&mut head, 0)
            .with_context(|| format!("unable to read '{}'", path.display()))?;
        let entries = protocol::manifest::entry_count(&head, file.metadata()?.len(), chunk_size)
            .with_context(|| format!("manifest '{}'", path.display()))?;
        Ok(ManifestFile {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    /// Its number of entries.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The entry at `addr`, if the manifest has one.
    pub fn entry_at(&self, addr: u64) -> Result<Option<protocol::manifest::Entry>> {
        use std::os::unix::fs::FileExt;
        protocol::manifest::find_entry(self.entries, addr, |off, b| self.file.read_exact_at(b, off))
            .with_context(|| format!("manifest '{}'", self.path.display()))
    }
}

/// The keyed MAC of a manifest file.
pub fn file_mac(path: &Path, keys: &Keys) -> Result<[u8; 32]> {
    let mut h = keys.manifest_mac();
    let f = File::open(path).with_context(|| format!("unable to open '{}'", path.display()))?;
    h.update_reader(f)
        .with_context(|| format!("unable to read '{}'", path.display()))?;
    Ok(*h.finalize().as_bytes())
}

fn write_mac(dir: &Path, manifest: &Path, name: &str, keys: &Keys) -> Result<()> {
    let m = file_mac(manifest, keys)?;
    write_atomic(
        &dir.join(name),
        format!("{}\n", sealed::keys::hex(&m)).as_bytes(),
    )
}

/// Reads dom0's key file for an archive.
pub fn read_key_file(p: &Path) -> Result<KeyFile> {
    let text = zeroize::Zeroizing::new(fs::read_to_string(p).with_context(|| {
        format!(
            "unable to read dom0's key file '{}' (restore it with `arch-import --key-file` or the passphrase)",
            p.display()
        )
    })?);
    KeyFile::decode(&text).with_context(|| format!("key file '{}'", p.display()))
}

/// Creates `dir` (and parents) and makes it private to root.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).with_context(|| format!("unable to create '{}'", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("unable to make '{}' private", dir.display()))
}

/// The whitespace-separated words of a small record file; None if it
/// does not exist.
fn read_words(p: &Path) -> Result<Option<Vec<String>>> {
    match fs::read_to_string(p) {
        Ok(t) => Ok(Some(t.split_whitespace().map(str::to_string).collect())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("unable to read '{}'", p.display())),
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
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    sysio::atomic::write_atomic(path, bytes)
        .with_context(|| format!("unable to write '{}'", path.display()))
}

/// sysio's directory sync, with the directory named in the error.
fn fsync_dir(dir: &Path) -> Result<()> {
    sysio::atomic::fsync_dir(dir)
        .with_context(|| format!("unable to sync directory '{}'", dir.display()))
}
