//! The root: the sealed record at the top of an archive's authentication
//! chain. It names every volume (its name and opaque id) and every session
//! of each (its time, size and counts), and pins each session manifest's
//! MAC; each manifest pins its chunks' keyed ids; each chunk's envelope
//! binds archive, volume and address. So from the key alone dom0 detects a
//! session added or dropped behind its back, an older or truncated
//! manifest, and a stale or moved chunk.
//!
//! dom0 writes a new root (generation + 1) after every change it makes to
//! the archive: it is dom0's record of the archive, less the manifests,
//! sealed (encrypted and authenticated) with the record key. A root with a
//! smaller generation than dom0 has seen is a rollback.

use crate::keys::{KeyError, Keys, VolumeId, NONCE_LEN};
use crate::qubes::QubesCatalog;
use protocol::message::{ArchiveParams, SessionInfo};
use protocol::names::{validate_session_name, validate_volume_name};
use protocol::{codec, ProtocolError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Version 5: archive format 3 (dedup scopes). Earlier roots belong to
/// format-2 archives, which this version refuses before any root is read.
pub const ROOT_MAGIC: [u8; 8] = *b"SBKROOT5";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub generation: u64,
    /// When dom0 wrote this root (seconds since the epoch, dom0's clock).
    pub written: u64,
    pub params: ArchiveParams,
    pub encrypt: bool,
    /// The volumes `backup` with no arguments backs up.
    pub configured: Vec<String>,
    /// By name, ascending.
    pub volumes: Vec<RootVolume>,
    /// The Qubes settings every backup run of a Qubes dom0 recorded.
    pub qubes: QubesCatalog,
    /// Changes dom0 asked the receiver for and had not seen done when it
    /// wrote this root, at most one per volume: with them a dom0 that
    /// was lost in the middle can tell, from the key and the archive
    /// alone, whether each happened, and finish or forget it.
    pub pending: Vec<Pending>,
    /// BLAKE3 of the wrapped key (`keys::WrappedKey`'s bytes) the archive
    /// must hold, in `dom0.key` and its copy: a damaged or replaced one is
    /// found (and put back) at the next connection, not at a disaster
    /// recovery. `None` in a root an earlier version wrote.
    pub key_hash: Option<[u8; 32]>,
    /// The archive may hold clear chunks without a MAC (kind 2: an
    /// `--encrypt off` archive made before kind 3). False for one made
    /// since, whose dom0 refuses them; true read from an older root.
    pub legacy_clear: bool,
    /// dom0 pads stored chunk sizes to buckets (`arch-init --pad-sizes`).
    pub pad_sizes: bool,
}

/// A change in flight (see `Root::pending`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Session `pruned` is being merged into its successor `into`; once
    /// merged, `into`'s manifest has this MAC and these counts.
    Prune {
        volume: String,
        pruned: String,
        into: String,
        manifest_mac: [u8; 32],
        chunks: u64,
        zero_chunks: u64,
    },
    /// The volume is being deleted, with all its sessions.
    Delete { volume: String },
}

impl Pending {
    pub fn volume(&self) -> &str {
        match self {
            Pending::Prune { volume, .. } | Pending::Delete { volume } => volume,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RootVolume {
    pub name: String,
    pub id: [u8; 16],
    /// Permission bits of the source image at its newest backup, which a
    /// restore to a file gives it back; 0 where unknown (an LV).
    pub mode: u32,
    /// The dedup group whose scope the volume's chunk ids are in (None:
    /// the volume's own scope). Fixed when the volume is first backed up.
    pub group: Option<String>,
    /// Oldest first.
    pub sessions: Vec<RootSession>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RootSession {
    pub name: String,
    pub time: u64,
    pub volume_size: u64,
    pub chunks: u64,
    pub zero_chunks: u64,
    pub stored_bytes: u64,
    pub ref_chunks: u64,
    pub ref_bytes: u64,
    /// Keyed MAC of the session's manifest file.
    pub manifest_mac: [u8; 32],
}

/// Why a root was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("{0}")]
    Decode(#[from] ProtocolError),
    #[error("inconsistent: {0}")]
    Inconsistent(String),
}

impl RootVolume {
    pub fn volume_id(&self) -> VolumeId {
        VolumeId(self.id)
    }

    /// The sessions as the protocol describes them (`prev` filled in).
    pub fn session_infos(&self) -> Vec<SessionInfo> {
        let mut prev: Option<String> = None;
        self.sessions
            .iter()
            .map(|s| {
                let i = SessionInfo {
                    name: s.name.clone(),
                    time: s.time,
                    volume_size: s.volume_size,
                    chunks: s.chunks,
                    zero_chunks: s.zero_chunks,
                    stored_bytes: s.stored_bytes,
                    ref_chunks: s.ref_chunks,
                    ref_bytes: s.ref_bytes,
                    prev: prev.take(),
                };
                prev = Some(s.name.clone());
                i
            })
            .collect()
    }
}

impl Root {
    pub fn seal(&self, keys: &Keys, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        keys.seal_record(&ROOT_MAGIC, &codec::encode_large(self), nonce)
    }

    /// Opens and checks a root read from the archive.
    pub fn open(keys: &Keys, bytes: &[u8]) -> Result<Root, RootError> {
        Root::open_in_place(keys, bytes.to_vec())
    }

    /// [`Root::open`], decrypting in the buffer read from the archive. A
    /// root sealed before a `key rotate` (one cut before the new root was
    /// written) opens with the retired key, tried only where the current
    /// one fails.
    pub fn open_in_place(keys: &Keys, bytes: Vec<u8>) -> Result<Root, RootError> {
        if keys.older.is_empty() {
            return Root::open_with(keys, bytes);
        }
        let first = Root::open_with(keys, bytes.clone());
        if let Err(RootError::Key(KeyError::Authentication)) = first {
            for k in &keys.older {
                if let Ok(r) = Root::open_with(k, bytes.clone()) {
                    r.validate(keys)?;
                    return Ok(r);
                }
            }
        }
        first
    }

    fn open_with(keys: &Keys, bytes: Vec<u8>) -> Result<Root, RootError> {
        let r: Root = codec::decode_large("root", &keys.open_record_in_place(&ROOT_MAGIC, bytes)?)?;
        r.validate(keys)?;
        Ok(r)
    }

    /// What must hold of any root dom0 accepts (it sealed it, but a root
    /// is checked like any record: no name dom0 would not write).
    pub fn validate(&self, keys: &Keys) -> Result<(), RootError> {
        let bad = |m: String| Err(RootError::Inconsistent(m));
        if self.params.id != keys.archive || self.encrypt != keys.encrypt {
            return bad("it belongs to another archive, or another mode".into());
        }
        self.params.validate()?;
        let mut ids = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            validate_volume_name(&v.name)?;
            if let Some(g) = &v.group {
                if let Err(e) = crate::keys::validate_group(g) {
                    return bad(e);
                }
            }
            if i > 0 && self.volumes[i - 1].name >= v.name {
                return bad("volumes out of order".into());
            }
            if !ids.insert(v.id) {
                return bad(format!("volume id of '{}' used twice", v.name));
            }
            for (j, s) in v.sessions.iter().enumerate() {
                validate_session_name(&s.name)?;
                if j > 0 && v.sessions[j - 1].name >= s.name {
                    return bad(format!("sessions of '{}' out of order", v.name));
                }
            }
        }
        for c in &self.configured {
            validate_volume_name(c)?;
        }
        self.qubes.validate()?;
        let mut pending_for = BTreeSet::new();
        for p in &self.pending {
            let Some(v) = self.volume(p.volume()) else {
                return bad(format!("a pending change names no volume '{}'", p.volume()));
            };
            if !pending_for.insert(p.volume()) {
                return bad(format!("two pending changes of '{}'", v.name));
            }
            if let Pending::Prune { pruned, into, .. } = p {
                let k = v.sessions.iter().position(|s| &s.name == pruned);
                if k.and_then(|k| v.sessions.get(k + 1)).map(|s| &s.name) != Some(into) {
                    return bad(format!(
                        "a pending prune of '{}' names no session and its successor",
                        v.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The change in flight for `volume`, if any.
    pub fn pending_for(&self, volume: &str) -> Option<&Pending> {
        self.pending.iter().find(|p| p.volume() == volume)
    }

    pub fn volume(&self, name: &str) -> Option<&RootVolume> {
        self.volumes
            .binary_search_by(|v| v.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.volumes[i])
    }

    /// The newest session of any volume: (volume, session).
    pub fn newest(&self) -> Option<(&RootVolume, &RootSession)> {
        self.volumes
            .iter()
            .filter_map(|v| v.sessions.last().map(|s| (v, s)))
            .max_by_key(|(_, s)| s.time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use protocol::message::{ArchiveId, Compression};

    fn keys() -> Keys {
        Keys::derive(&MasterKey::from_bytes([3; 32]), ArchiveId([4; 16]), true)
    }

    fn root() -> Root {
        Root {
            generation: 7,
            written: 1,
            params: ArchiveParams {
                id: ArchiveId([4; 16]),
                chunk_size: 65536,
                compression: Compression::None,
            },
            encrypt: true,
            configured: vec!["a".into()],
            volumes: vec![RootVolume {
                name: "a".into(),
                id: [1; 16],
                mode: 0o640,
                group: Some("templates".into()),
                sessions: vec![RootSession {
                    name: "S_000000000001".into(),
                    time: 5,
                    volume_size: 65536,
                    chunks: 1,
                    zero_chunks: 0,
                    stored_bytes: 10,
                    ref_chunks: 0,
                    ref_bytes: 0,
                    manifest_mac: [2; 32],
                }],
            }],
            qubes: QubesCatalog::default(),
            pending: Vec::new(),
            key_hash: Some([6; 32]),
            legacy_clear: false,
            pad_sizes: false,
        }
    }

    #[test]
    fn the_wrapped_key_and_groups_are_kept_and_a_format_2_root_is_refused() {
        let k = keys();
        let r = root();
        let back = Root::open(&k, &r.seal(&k, [0; 24])).unwrap();
        assert_eq!(back.key_hash, Some([6; 32]));
        assert_eq!(back.volumes[0].group.as_deref(), Some("templates"));
        // A root of a format-2 archive (magic SBKROOT4) does not open.
        let old = k.seal_record(b"SBKROOT4", &codec::encode_large(&r), [1; 24]);
        assert!(Root::open(&k, &old).is_err());
        let mut bad = r.clone();
        bad.volumes[0].group = Some("a b".into());
        assert!(Root::open(&k, &bad.seal(&k, [0; 24])).is_err());
    }

    #[test]
    fn pending_changes_ride_in_the_root() {
        let k = keys();
        let mut r = root();
        let second = RootSession {
            name: "S_000000000002".into(),
            ..r.volumes[0].sessions[0].clone()
        };
        r.volumes[0].sessions.push(second);
        r.pending = vec![Pending::Prune {
            volume: "a".into(),
            pruned: "S_000000000001".into(),
            into: "S_000000000002".into(),
            manifest_mac: [9; 32],
            chunks: 1,
            zero_chunks: 0,
        }];
        assert_eq!(Root::open(&k, &r.seal(&k, [0; 24])).unwrap(), r);
        assert!(r.pending_for("a").is_some() && r.pending_for("b").is_none());
        // A prune that is not of a session and its successor, a change of
        // no volume, two changes of one: refused.
        let mut bad = r.clone();
        if let Pending::Prune { into, .. } = &mut bad.pending[0] {
            *into = "S_000000000001".into();
        }
        assert!(Root::open(&k, &bad.seal(&k, [0; 24])).is_err());
        let mut bad = r.clone();
        bad.pending = vec![Pending::Delete { volume: "b".into() }];
        assert!(Root::open(&k, &bad.seal(&k, [0; 24])).is_err());
        let mut bad = r.clone();
        bad.pending.push(Pending::Delete { volume: "a".into() });
        assert!(Root::open(&k, &bad.seal(&k, [0; 24])).is_err());
    }

    #[test]
    fn qubes_settings_ride_in_the_root() {
        let k = keys();
        let mut r = root();
        let q = crate::qubes::QubeSettings {
            name: "work".into(),
            class: "AppVM".into(),
            label: "blue".into(),
            properties: vec![],
            features: vec![],
            tags: vec![],
            devices: vec![],
            firewall: None,
            notes: Some("secret plans".into()),
            volumes: vec![],
        };
        r.qubes.add(
            9,
            vec![q.clone()],
            vec![("a".into(), "S_000000000001".into())],
        );
        let b = r.seal(&k, [0; 24]);
        assert!(!b.windows(12).any(|w| w == b"secret plans"));
        assert_eq!(Root::open(&k, &b).unwrap(), r);
        let mut bad = q;
        bad.label = "-x".into();
        r.qubes.qubes[0] = bad;
        assert!(Root::open(&k, &r.seal(&k, [0; 24])).is_err());
    }

    #[test]
    fn round_trip_and_tamper() {
        let k = keys();
        let b = root().seal(&k, [0; 24]);
        assert_eq!(Root::open(&k, &b).unwrap(), root());
        assert!(!b.windows(14).any(|w| w == b"S_000000000001"));
        for i in (0..b.len()).step_by(7) {
            let mut c = b.clone();
            c[i] ^= 0x20;
            assert!(Root::open(&k, &c).is_err());
        }
        let other = Keys::derive(&MasterKey::from_bytes([3; 32]), ArchiveId([5; 16]), true);
        assert!(Root::open(&other, &b).is_err());
    }

    #[test]
    fn inconsistent_roots_are_refused() {
        let k = keys();
        let mut r = root();
        r.volumes.push(r.volumes[0].clone());
        assert!(Root::open(&k, &r.seal(&k, [0; 24])).is_err());
        let mut r = root();
        let s = r.volumes[0].sessions[0].clone();
        r.volumes[0].sessions.push(s);
        assert!(Root::open(&k, &r.seal(&k, [0; 24])).is_err());
        let infos = root().volumes[0].session_infos();
        assert_eq!(infos[0].prev, None);
    }
}
