//! Deduplication (`DESIGN.md` §13): a chunk already stored in its dedup
//! scope is sent as a reference to where it is stored, not as data.
//!
//! Scopes: a volume is in its own scope unless it is in a named group
//! (`add --dedup-group`, or the config's `dedup_group` patterns), fixed
//! at its first backup because its chunk ids are derived in that scope.
//!
//! Order of events in a backup: a worker hashes a chunk (the id in its
//! scope), asks the scope's [`index::Index`] for a place, and checks that
//! place against dom0's own manifest of that session (the session a prune
//! merged it into, if it is gone: a prune merges into the successor and
//! keeps addresses); only a place whose manifest entry is exactly this id
//! becomes a reference. A place earlier in the session being written (the
//! sink records each chunk as it sends it) becomes one too: its manifest
//! is not written yet, so there the receiver's check is the one. The sink records every chunk it sends as data in
//! the index, and every reference it sends too: the index keeps the
//! newest place of each chunk, the one a prune removes last. The receiver
//! confirms each reference again, and one it refuses is sent as data
//! after the commit asks for it. A prune needs no index update (its
//! merged sessions keep their addresses, and the check above follows
//! them); deleting a volume rebuilds its scope's index from the other
//! volumes of the scope, which may hold the same chunks. A place that is
//! gone all the same (a chunk a prune superseded) fails the check and
//! costs that chunk's dedup once: it is sent, and indexed where it lands.

pub mod index;

use crate::meta::{ArchiveMeta, ManifestFile};
use anyhow::{Context, Result};
use index::{Index, Loc};
use protocol::chunk::{Codec, Hash};
use protocol::names::parse_session_name;
use sealed::keys::{Scope, VolumeId};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

/// A named group in the config: the volumes whose names match one of the
/// patterns share one dedup scope.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// Shell-style patterns over volume names (`*` any run, `?` one).
    pub volumes: Vec<String>,
}

/// Whether `name` matches the shell-style `pattern` (`*`, `?`).
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Greedy with one backtrack point: linear enough for volume names.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// The group the config puts `volume` in: the first whose patterns match.
pub fn configured_group<'a>(groups: &'a [GroupConfig], volume: &str) -> Option<&'a str> {
    groups
        .iter()
        .find(|g| g.volumes.iter().any(|p| glob(p, volume)))
        .map(|g| g.name.as_str())
}

/// Checks the config's groups: valid names, each named once.
pub fn validate_groups(groups: &[GroupConfig]) -> Result<()> {
    for (i, g) in groups.iter().enumerate() {
        sealed::keys::validate_group(&g.name).map_err(anyhow::Error::msg)?;
        if groups[..i].iter().any(|o| o.name == g.name) {
            anyhow::bail!("dedup group '{}' is configured twice", g.name);
        }
    }
    Ok(())
}

/// Where an index of a scope lives in dom0's records.
pub fn index_dir(meta: &ArchiveMeta, scope: &Scope) -> PathBuf {
    meta.dir.join("dedup").join(scope.to_hex())
}

/// Volumes of the scope looked at for a chunk whose indexed place is gone.
const STALE_TRIES: usize = 16;

/// A place the scope stores a chunk at, checked against dom0's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub volume: VolumeId,
    pub session: String,
    pub addr: u64,
}

/// A volume of the scope: its records directory, committed sessions, and
/// the addresses dom0 knows the archive holds damaged there (never a
/// place to refer to: the reference would share the damage).
struct ScopeVolume {
    dir: PathBuf,
    sessions: Vec<u64>,
    damaged: std::collections::BTreeSet<u64>,
}

/// One scope's index and the volumes of the scope, for one volume's
/// backup (made again for the next volume, so it sees what was just
/// committed).
pub struct Dedup {
    pub scope: Scope,
    /// The session being written (volume, sequence number, volume size):
    /// its chunks sent so far are places too (see [`Dedup::find`]).
    current: Option<(VolumeId, u64, u64)>,
    index: RwLock<Index>,
    /// By id: the stale-place fallback looks at them in a fixed order.
    volumes: BTreeMap<VolumeId, ScopeVolume>,
    chunk_size: u32,
    /// Open manifests, with their session's volume size.
    manifests: Mutex<HashMap<PathBuf, (ManifestFile, u64)>>,
}

impl Dedup {
    /// The dedup state of `volume`'s scope, for writing `current` (the
    /// volume's id, the new session's sequence number, the volume's size).
    pub fn open(
        meta: &ArchiveMeta,
        volume: &str,
        current: Option<(VolumeId, u64, u64)>,
    ) -> Result<Dedup> {
        let scope = meta.scope(volume)?;
        let mut volumes = BTreeMap::new();
        // A volume's own scope holds that volume alone: no other volume's
        // records need reading.
        let members = match meta.volume_group(volume)? {
            None => vec![volume.to_string()],
            Some(_) => meta.volumes()?,
        };
        for v in members {
            let Some(id) = meta.volume_id(&v)? else {
                continue;
            };
            if Scope::of(id, meta.volume_group(&v)?.as_deref()) != scope {
                continue;
            }
            let sessions = meta
                .session_names(&v)?
                .iter()
                .filter_map(|n| parse_session_name(n))
                .collect();
            volumes.insert(
                id,
                ScopeVolume {
                    dir: meta.volume_dir(&v)?,
                    sessions,
                    damaged: meta.damaged(&v)?,
                },
            );
        }
        Ok(Dedup {
            scope,
            current,
            index: RwLock::new(Index::open(&index_dir(meta, &scope))?),
            volumes,
            chunk_size: meta.params.chunk_size,
            manifests: Mutex::new(HashMap::new()),
        })
    }

    /// A checked place that stores the chunk `id` of length `len` (the
    /// chunk at `addr` of the session being written), if the index knows
    /// one.
    pub fn find(&self, id: &Hash, len: u32, addr: u64) -> Result<Option<Found>> {
        let locs = self.index.read().expect("index lock").lookup(id)?;
        for loc in &locs {
            if let Some(f) = self.here(loc, len, addr) {
                return Ok(Some(f));
            }
            if let Some(f) = self.check(loc, id, len)? {
                return Ok(Some(f));
            }
        }
        // The indexed place is gone (superseded there, and pruned): clones
        // keep their template's data at the same addresses, so the same
        // address of the scope's other volumes, in their oldest and newest
        // sessions, is where the chunk most often still is. Found there,
        // the index is mended.
        for loc in locs {
            for (v, sv) in self.volumes.iter().take(STALE_TRIES) {
                for &session in [sv.sessions.first(), sv.sessions.last()].iter().flatten() {
                    let at = Loc {
                        volume: *v,
                        session: *session,
                        addr: loc.addr,
                    };
                    if let Some(f) = self.check(&at, id, len)? {
                        self.record(id, at)?;
                        return Ok(Some(f));
                    }
                }
            }
        }
        Ok(None)
    }

    /// `loc` if it is an earlier chunk of the session being written (equal
    /// chunks within one new session: two copies of a file in a fresh
    /// image). The sink recorded it when it sent it, in address order, so
    /// it precedes this chunk on the stream; its manifest is still being
    /// written, so its full id is checked by the receiver, against the
    /// entries it has (a refusal costs a send, never a wrong byte: dom0
    /// checks every chunk it reads back).
    fn here(&self, loc: &Loc, len: u32, addr: u64) -> Option<Found> {
        let (volume, session, size) = self.current?;
        let cs = self.chunk_size as u64;
        let fits = loc.addr < addr && loc.addr < size && (size - loc.addr).min(cs) == len as u64;
        (loc.volume == volume && loc.session == session && fits).then(|| Found {
            volume,
            session: protocol::names::session_name_of(session),
            addr: loc.addr,
        })
    }

    /// `loc` as it stands in dom0's records: the session that now holds
    /// it (itself, or the one a prune merged it into), if that session's
    /// manifest has exactly `id` there, and the chunk's length is `len`.
    fn check(&self, loc: &Loc, id: &Hash, len: u32) -> Result<Option<Found>> {
        let Some(v) = self.volumes.get(&loc.volume) else {
            return Ok(None); // Deleted, or not in this scope.
        };
        if v.damaged.contains(&loc.addr) {
            return Ok(None);
        }
        let k = v.sessions.partition_point(|&s| s < loc.session);
        let Some(&seq) = v.sessions.get(k) else {
            return Ok(None);
        };
        let session = protocol::names::session_name_of(seq);
        let dir = v.dir.join(&session);
        let path = dir.join("manifest");
        let mut open = self.manifests.lock().expect("manifest cache");
        if !open.contains_key(&path) {
            if open.len() >= 64 {
                open.clear();
            }
            let m = ManifestFile::open(&path, self.chunk_size)?;
            let size = crate::meta::read_info(&dir)?.volume_size;
            open.insert(path.clone(), (m, size));
        }
        let (m, size) = &open[&path];
        // The chunk's length at that place: from its volume's size there.
        let cs = self.chunk_size as u64;
        if loc.addr >= *size || (*size - loc.addr).min(cs) != len as u64 {
            return Ok(None);
        }
        Ok(m.entry_at(loc.addr)?
            .filter(|e| e.codec == Codec::Sealed && e.hash == *id)
            .map(|_| Found {
                volume: loc.volume,
                session,
                addr: loc.addr,
            }))
    }

    /// Records that the chunk `id` is now stored at `loc` (sent as data):
    /// it replaces what the index had, which was absent or stale.
    pub fn record(&self, id: &Hash, loc: Loc) -> Result<()> {
        self.index
            .write()
            .expect("index lock")
            .insert(id, loc, true)
    }

    /// Writes the index's head and filter (after a commit).
    pub fn flush(&self) -> Result<()> {
        self.index.write().expect("index lock").flush()
    }
}

/// Rebuilds the indexes of every scope from dom0's manifests (after
/// `arch-import`): every stored chunk of every session, the newest place
/// kept. Returns the number of places read.
pub fn rebuild(meta: &ArchiveMeta) -> Result<u64> {
    let dir = meta.dir.join("dedup");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("unable to remove '{}'", dir.display()))?;
    }
    rebuild_where(meta, |_| true)
}

/// Rebuilds one scope's index (after a volume of it was deleted: its
/// places go, and the chunks it shared are found at the others').
pub fn rebuild_scope(meta: &ArchiveMeta, scope: &Scope) -> Result<u64> {
    let dir = index_dir(meta, scope);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("unable to remove '{}'", dir.display()))?;
    }
    rebuild_where(meta, |s| s == scope)
}

fn rebuild_where(meta: &ArchiveMeta, want: impl Fn(&Scope) -> bool) -> Result<u64> {
    let mut indexes: HashMap<Scope, Index> = HashMap::new();
    let mut n = 0;
    for v in meta.volumes()? {
        let Some(id) = meta.volume_id(&v)? else {
            continue;
        };
        let scope = meta.scope(&v)?;
        if !want(&scope) {
            continue;
        }
        let ix = match indexes.entry(scope) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Index::open(&index_dir(meta, &scope))?)
            }
        };
        for s in meta.session_names(&v)? {
            let seq = parse_session_name(&s).expect("listed names are valid");
            for e in meta.manifest(&v, &s)? {
                let e = e?;
                if e.codec == Codec::Sealed {
                    let loc = Loc {
                        volume: id,
                        session: seq,
                        addr: e.addr,
                    };
                    // Sessions oldest first: a later place replaces.
                    ix.insert(&e.hash, loc, true)?;
                    n += 1;
                }
            }
        }
    }
    for ix in indexes.values_mut() {
        ix.flush()?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_a_shell() {
        for (p, n, want) in [
            ("vm-*-root", "vm-debian-12-root", true),
            ("vm-*-root", "vm-debian-12-private", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.img", "fedora.img", true),
            ("*.img", "fedora.img2", false),
            ("*a*b*", "xxaxxbxx", true),
            ("*a*b", "xxaxxbxxb", true),
            ("*a*b", "xxaxxbxxc", false),
            ("debian-12", "debian-12", true),
            ("debian-12", "debian-123", false),
        ] {
            assert_eq!(glob(p, n), want, "{p:?} {n:?}");
        }
    }

    #[test]
    fn the_first_matching_group_wins_and_names_are_checked() {
        let g = |n: &str, v: &[&str]| GroupConfig {
            name: n.into(),
            volumes: v.iter().map(|s| s.to_string()).collect(),
        };
        let groups = [g("templates", &["vm-*-root", "tpl-*"]), g("all", &["*"])];
        assert_eq!(configured_group(&groups, "vm-d12-root"), Some("templates"));
        assert_eq!(configured_group(&groups, "tpl-x"), Some("templates"));
        assert_eq!(configured_group(&groups, "vm-d12-private"), Some("all"));
        assert_eq!(configured_group(&groups[..1], "vm-d12-private"), None);
        assert!(validate_groups(&groups).is_ok());
        assert!(validate_groups(&[g("a b", &[])]).is_err());
        assert!(validate_groups(&[g("a", &[]), g("a", &[])]).is_err());
    }
}
