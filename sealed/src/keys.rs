//! Keys: one random master key per archive, and the subkeys derived from
//! it per purpose (BLAKE3 `derive_key`, one context string each), so that
//! no key is used for two things:
//!
//! - *chunk id*: keyed BLAKE3 of a chunk's plaintext, under a key derived
//!   from this one and the chunk's dedup [`Scope`]. It is what manifests
//!   pin and the receiver sees; without the key it confirms nothing about
//!   guessed contents (a bare hash would), and equal chunks in two scopes
//!   get unrelated ids, so the receiver can compare nothing across scopes.
//! - *chunk* and *record*: XChaCha20-Poly1305 keys for chunk envelopes
//!   ([`crate::envelope`]) and sealed records (the root, [`crate::root`]).
//! - *manifest MAC*: keyed BLAKE3 of a manifest file's bytes, pinned by
//!   the root.
//! - *chunk MAC*: keyed BLAKE3 over a clear chunk's place and stored body
//!   (`--encrypt off` archives), checked before it is decompressed.
//!
//! Also here: the master key wrapped by a passphrase (Argon2id, its
//! parameters stored beside it and bounded when read, since the archive
//! that stores them is hostile) and the key file dom0 keeps and exports.
//!
//! Pure: the caller supplies every random byte (salts, nonces, the key).

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
pub use protocol::codec::{hex, parse_hex};
use protocol::message::ArchiveId;
pub use protocol::message::VolumeId;
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
pub use protocol::envelope::{NONCE_LEN, TAG_LEN};

/// A dedup scope (see `DESIGN.md` §13): where equal chunks are stored
/// once. A tag byte (0: one volume's own scope, 1: a named group) and 16
/// bytes (the volume's id; a hash of the group's name). Not secret: it
/// only selects the id key, which is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(pub [u8; 17]);

impl Scope {
    /// A volume's own scope, its default.
    pub fn volume(v: VolumeId) -> Scope {
        let mut s = [0u8; 17];
        s[1..].copy_from_slice(&v.0);
        Scope(s)
    }

    /// The scope of the dedup group `name` (any volume, any archive).
    pub fn group(name: &str) -> Scope {
        let h = blake3::derive_key("sparsebak 2026-12 dedup group", name.as_bytes());
        let mut s = [1u8; 17];
        s[1..].copy_from_slice(&h[..16]);
        Scope(s)
    }

    /// The scope of a volume with this id in this group (None: its own).
    pub fn of(v: VolumeId, group: Option<&str>) -> Scope {
        group.map_or(Scope::volume(v), Scope::group)
    }

    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// A dedup group's name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn validate_group(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid dedup group name {:?}: 1 to 64 letters, digits, '.', '_' or '-'",
            protocol::names::display_safe(name)
        ))
    }
}

/// An archive's master key: 32 random bytes, wiped from memory on drop.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        MasterKey(Zeroizing::new(b))
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// Everything derived from one master key, for one archive.
pub struct Keys {
    pub archive: ArchiveId,
    /// Chunks are encrypted (else stored in the clear, authenticated by
    /// their keyed ids).
    pub encrypt: bool,
    /// A clear archive may hold kind-2 envelopes (no MAC: made before
    /// kind 3). False for an archive made since, which refuses them.
    pub legacy_clear: bool,
    /// Pad stored sizes to buckets (`--pad-sizes`): the receiver learns a
    /// chunk's compressed size only to a sixteenth of the chunk.
    pub pad: bool,
    /// The keys of master keys `key rotate` retired, newest first: only
    /// to open what was sealed before (never to seal).
    pub older: Vec<Keys>,
    id: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
    cmac: Zeroizing<[u8; 32]>,
    chunk: XChaCha20Poly1305,
    record: XChaCha20Poly1305,
}

fn subkey(purpose: &str, master: &MasterKey) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(blake3::derive_key(
        &format!("sparsebak 2026-11 {purpose}"),
        master.bytes(),
    ))
}

impl Keys {
    pub fn derive(master: &MasterKey, archive: ArchiveId, encrypt: bool) -> Keys {
        let cipher = |p| XChaCha20Poly1305::new((&*subkey(p, master)).into());
        Keys {
            archive,
            encrypt,
            legacy_clear: false,
            pad: false,
            older: Vec::new(),
            id: subkey("chunk id", master),
            mac: subkey("manifest mac", master),
            cmac: subkey("chunk mac", master),
            chunk: cipher("chunk aead"),
            record: cipher("record aead"),
        }
    }

    /// A chunk's keyed id in `scope`: keyed BLAKE3 of its plaintext,
    /// the key itself keyed BLAKE3 of the scope under the id subkey.
    pub fn chunk_id(&self, scope: &Scope, plain: &[u8]) -> [u8; 32] {
        blake3::keyed_hash(&self.scope_id_key(scope), plain).into()
    }

    /// The id key of one scope (see [`Keys::chunk_id`]).
    pub fn scope_id_key(&self, scope: &Scope) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::keyed_hash(&self.id, &scope.0).into())
    }

    /// Streaming MACs over a manifest file's bytes under the current key and
    /// each retired one (a manifest written before a `key rotate` keeps the
    /// MAC it was written with).
    pub fn manifest_macs(&self) -> Vec<blake3::Hasher> {
        std::iter::once(self)
            .chain(&self.older)
            .map(Keys::manifest_mac)
            .collect()
    }

    /// A streaming MAC over a clear chunk's place and body.
    pub(crate) fn clear_mac(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.cmac)
    }

    /// A streaming MAC over a manifest file's bytes.
    pub fn manifest_mac(&self) -> blake3::Hasher {
        blake3::Hasher::new_keyed(&self.mac)
    }

    pub(crate) fn chunk_cipher(&self) -> &XChaCha20Poly1305 {
        &self.chunk
    }

    /// Seals a record: `magic | nonce | AEAD(body) | tag`, the magic and the
    /// archive id authenticated as associated data.
    pub fn seal_record(&self, magic: &[u8; 8], body: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + NONCE_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(magic);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(body);
        let tag = self
            .record
            .encrypt_in_place_detached(
                XNonce::from_slice(&nonce),
                &self.record_ad(magic),
                &mut out[8 + NONCE_LEN..],
            )
            .expect("a record is far below the AEAD's length limit");
        out.extend_from_slice(&tag);
        out
    }

    /// Opens a record sealed by [`Keys::seal_record`] with this key.
    pub fn open_record(&self, magic: &[u8; 8], bytes: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.open_record_in_place(magic, bytes.to_vec())
    }

    /// [`Keys::open_record`] in the record's own buffer: a record near its
    /// cap (a root) costs its size once, not twice.
    pub fn open_record_in_place(
        &self,
        magic: &[u8; 8],
        mut bytes: Vec<u8>,
    ) -> Result<Vec<u8>, KeyError> {
        let n = bytes.len();
        if n < 8 + NONCE_LEN + TAG_LEN || bytes[..8] != magic[..] {
            return Err(KeyError::Format(
                "not a sealed record of this kind or version",
            ));
        }
        let nonce = *XNonce::from_slice(&bytes[8..8 + NONCE_LEN]);
        let tag = *Tag::from_slice(&bytes[n - TAG_LEN..]);
        self.record
            .decrypt_in_place_detached(
                &nonce,
                &self.record_ad(magic),
                &mut bytes[8 + NONCE_LEN..n - TAG_LEN],
                &tag,
            )
            .map_err(|_| KeyError::Authentication)?;
        bytes.truncate(n - TAG_LEN);
        bytes.drain(..8 + NONCE_LEN);
        Ok(bytes)
    }

    fn record_ad(&self, magic: &[u8; 8]) -> [u8; 24] {
        let mut ad = [0u8; 24];
        ad[..8].copy_from_slice(magic);
        ad[8..].copy_from_slice(&self.archive.0);
        ad
    }
}

/// Why a key, a wrapped key or a sealed record did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("malformed: {0}")]
    Format(&'static str),
    #[error("does not authenticate with this key (wrong key, or altered)")]
    Authentication,
    #[error("wrong passphrase (or the wrapped key was altered)")]
    Passphrase,
    #[error("key derivation parameters out of bounds: {0}")]
    Params(String),
}

/// Argon2id parameters, stored beside the wrapped key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

/// 256 MiB, 3 passes, one lane: four times DESIGN §10's least. The key
/// is unwrapped only at `arch-import` (a disaster recovery) and wrapped at
/// `arch-init` and `key passwd`, so dom0 can afford the memory, which is
/// what makes each offline guess at a stolen archive's passphrase costly.
pub const DEFAULT_KDF: KdfParams = KdfParams {
    m_kib: 256 * 1024,
    t: 3,
    p: 1,
};

/// Most memory × passes a stored key may ask for: twice the default's.
pub const MAX_KDF_COST: u64 = 2 * 256 * 1024 * 3;

impl KdfParams {
    /// The archive holding these is hostile: at least 64 MiB (no
    /// downgrade); at most 512 MiB, 8 passes, 4 lanes and twice the
    /// default's memory × passes, so a forged key costs a fresh dom0 at
    /// most about twice an honest recovery before its tag fails.
    pub fn validate(self) -> Result<Self, KeyError> {
        if !(64 * 1024..=512 * 1024).contains(&self.m_kib)
            || !(1..=8).contains(&self.t)
            || !(1..=4).contains(&self.p)
            || u64::from(self.m_kib) * u64::from(self.t) > MAX_KDF_COST
        {
            return Err(KeyError::Params(format!(
                "{} KiB, {} passes, {} lanes (allowed: 64 to 512 MiB, 1 to 8 passes, 1 to 4 lanes, memory × passes at most 1.5 GiB)",
                self.m_kib, self.t, self.p
            )));
        }
        Ok(self)
    }

    fn kek(&self, passphrase: &[u8], salt: &[u8; 16]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| KeyError::Params(e.to_string()))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut k = Zeroizing::new([0u8; 32]);
        a.hash_password_into(passphrase, salt, &mut *k)
            .map_err(|e| KeyError::Params(e.to_string()))?;
        Ok(k)
    }
}

pub const WRAPPED_MAGIC: [u8; 8] = *b"SBKKEY01";
/// A wrapped key ring (the current master key, then retired ones, newest
/// first): what `key rotate` writes. Same layout, more keys.
pub const WRAPPED_RING_MAGIC: [u8; 8] = *b"SBKKEY02";
/// magic, archive id, encrypt, m, t, p, salt, nonce, key + tag.
pub const WRAPPED_LEN: usize = 8 + 16 + 1 + 12 + 16 + NONCE_LEN + KEY_LEN + TAG_LEN;
const WRAPPED_AD: usize = 8 + 16 + 1 + 12 + 16;
/// Most keys in one ring: the current one and 63 retired.
pub const MAX_RING: usize = 64;

/// The master key (or a ring of them, current first) wrapped by a
/// passphrase, as the archive stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub archive: ArchiveId,
    pub encrypt: bool,
    pub kdf: KdfParams,
    salt: [u8; 16],
    nonce: [u8; NONCE_LEN],
    /// The keys, encrypted, then the tag.
    sealed: Vec<u8>,
}

impl WrappedKey {
    /// Wraps `master` with a key derived from `passphrase` (slow: Argon2id).
    pub fn wrap(
        master: &MasterKey,
        archive: ArchiveId,
        encrypt: bool,
        passphrase: &[u8],
        kdf: KdfParams,
        salt: [u8; 16],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Self, KeyError> {
        Self::wrap_ring(
            std::slice::from_ref(master),
            archive,
            encrypt,
            passphrase,
            kdf,
            salt,
            nonce,
        )
    }

    /// Wraps a ring of master keys, the current one first.
    pub fn wrap_ring(
        ring: &[MasterKey],
        archive: ArchiveId,
        encrypt: bool,
        passphrase: &[u8],
        kdf: KdfParams,
        salt: [u8; 16],
        nonce: [u8; NONCE_LEN],
    ) -> Result<Self, KeyError> {
        if ring.is_empty() || ring.len() > MAX_RING {
            return Err(KeyError::Format("a key ring holds 1 to 64 keys"));
        }
        let kdf = kdf.validate()?;
        let mut w = WrappedKey {
            archive,
            encrypt,
            kdf,
            salt,
            nonce,
            sealed: vec![0; ring.len() * KEY_LEN + TAG_LEN],
        };
        let kek = kdf.kek(passphrase, &salt)?;
        let mut buf = Zeroizing::new(Vec::with_capacity(ring.len() * KEY_LEN));
        for k in ring {
            buf.extend_from_slice(k.bytes());
        }
        let tag = XChaCha20Poly1305::new((&*kek).into())
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &w.ad(), &mut buf[..])
            .expect("a ring always seals");
        let n = buf.len();
        w.sealed[..n].copy_from_slice(&buf);
        w.sealed[n..].copy_from_slice(&tag);
        Ok(w)
    }

    /// How many keys the ring holds.
    pub fn ring_len(&self) -> usize {
        (self.sealed.len() - TAG_LEN) / KEY_LEN
    }

    /// The master key, if `passphrase` is right and nothing was altered.
    pub fn unwrap(&self, passphrase: &[u8]) -> Result<MasterKey, KeyError> {
        Ok(self.unwrap_ring(passphrase)?.swap_remove(0))
    }

    /// The whole ring, current key first.
    pub fn unwrap_ring(&self, passphrase: &[u8]) -> Result<Vec<MasterKey>, KeyError> {
        let kek = self.kdf.validate()?.kek(passphrase, &self.salt)?;
        let n = self.sealed.len() - TAG_LEN;
        let mut buf = Zeroizing::new(self.sealed[..n].to_vec());
        XChaCha20Poly1305::new((&*kek).into())
            .decrypt_in_place_detached(
                XNonce::from_slice(&self.nonce),
                &self.ad(),
                &mut buf[..],
                Tag::from_slice(&self.sealed[n..]),
            )
            .map_err(|_| KeyError::Passphrase)?;
        Ok(buf
            .chunks(KEY_LEN)
            .map(|c| MasterKey::from_bytes(c.try_into().expect("32 bytes")))
            .collect())
    }

    fn ad(&self) -> [u8; WRAPPED_AD] {
        let b = self.encode();
        let mut ad = [0u8; WRAPPED_AD];
        ad.copy_from_slice(&b[..WRAPPED_AD]);
        ad
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(WRAPPED_AD + NONCE_LEN + self.sealed.len());
        b.extend_from_slice(if self.ring_len() == 1 {
            &WRAPPED_MAGIC
        } else {
            &WRAPPED_RING_MAGIC
        });
        b.extend_from_slice(&self.archive.0);
        b.push(self.encrypt as u8);
        for v in [self.kdf.m_kib, self.kdf.t, self.kdf.p] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.salt);
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.sealed);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, KeyError> {
        let head = WRAPPED_AD + NONCE_LEN;
        let ring = b
            .len()
            .checked_sub(head + TAG_LEN)
            .map(|n| (n / KEY_LEN, n % KEY_LEN));
        match (b.get(..8), ring) {
            (Some(m), _) if m == WRAPPED_MAGIC && b.len() != WRAPPED_LEN => {
                return Err(KeyError::Format("a wrapped key is 125 bytes"))
            }
            (Some(m), Some((n, 0))) if m == WRAPPED_RING_MAGIC && (2..=MAX_RING).contains(&n) => {}
            (Some(m), _) if m == WRAPPED_RING_MAGIC => {
                return Err(KeyError::Format(
                    "a wrapped key ring is 93 bytes and 2 to 64 keys of 32",
                ))
            }
            (Some(m), _) if m == WRAPPED_MAGIC => {}
            _ => return Err(KeyError::Format("not a sparsebak wrapped key (magic)")),
        }
        let u32at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let encrypt = match b[24] {
            0 => false,
            1 => true,
            _ => return Err(KeyError::Format("encrypt flag")),
        };
        let mut w = WrappedKey {
            archive: ArchiveId(b[8..24].try_into().expect("16 bytes")),
            encrypt,
            kdf: KdfParams {
                m_kib: u32at(25),
                t: u32at(29),
                p: u32at(33),
            }
            .validate()?,
            salt: [0; 16],
            nonce: [0; NONCE_LEN],
            sealed: b[head..].to_vec(),
        };
        w.salt.copy_from_slice(&b[37..53]);
        w.nonce.copy_from_slice(&b[53..53 + NONCE_LEN]);
        Ok(w)
    }
}

/// The key file dom0 keeps (and `key export` writes): text lines, so that
/// it can be printed and typed back in; one `retired` line per key a
/// `key rotate` replaced, newest first.
///
/// ```text
/// sparsebak-key 1
/// archive <32 hex digits>
/// encrypt on|off
/// key <64 hex digits>
/// retired <64 hex digits>
/// ```
pub struct KeyFile {
    pub archive: ArchiveId,
    pub encrypt: bool,
    pub master: MasterKey,
    /// Master keys `key rotate` replaced, newest first: data written
    /// before each rotation is still sealed with them.
    pub retired: Vec<MasterKey>,
}

impl KeyFile {
    pub fn encode(&self) -> Zeroizing<String> {
        use std::fmt::Write;
        // Sized once and written in place: no intermediate string, and
        // no reallocation, holds the key's digits without being wiped.
        let cap = 256 + 80 * self.retired.len();
        let mut s = Zeroizing::new(String::with_capacity(cap));
        let _ = write!(
            s,
            "sparsebak-key 1\narchive {}\nencrypt {}\nkey ",
            self.archive.to_hex(),
            if self.encrypt { "on" } else { "off" }
        );
        for b in self.master.bytes() {
            let _ = write!(s, "{b:02x}");
        }
        s.push('\n');
        for k in &self.retired {
            s.push_str("retired ");
            for b in k.bytes() {
                let _ = write!(s, "{b:02x}");
            }
            s.push('\n');
        }
        debug_assert!(
            s.capacity() == cap,
            "the key file text grew past its buffer"
        );
        s
    }

    pub fn decode(text: &str) -> Result<Self, KeyError> {
        let mut lines = text.lines();
        let mut field = |name: &str| -> Result<&str, KeyError> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(' '))
                .map(str::trim_end)
                .ok_or(KeyError::Format("not a sparsebak key file"))
        };
        if field("sparsebak-key")? != "1" {
            return Err(KeyError::Format("unknown key file version"));
        }
        let archive = ArchiveId::from_hex(field("archive")?)
            .ok_or(KeyError::Format("bad archive id in key file"))?;
        let encrypt = match field("encrypt")? {
            "on" => true,
            "off" => false,
            _ => return Err(KeyError::Format("encrypt must be on or off")),
        };
        let key = |hex: &str| -> Result<MasterKey, KeyError> {
            let mut k = Zeroizing::new([0u8; KEY_LEN]);
            protocol::codec::unhex(hex, &mut *k).ok_or(KeyError::Format("bad key in key file"))?;
            Ok(MasterKey::from_bytes(*k))
        };
        let master = key(field("key")?)?;
        let mut retired = Vec::new();
        for l in lines.filter(|l| !l.trim().is_empty()) {
            let hex = l
                .strip_prefix("retired ")
                .ok_or(KeyError::Format("not a sparsebak key file"))?;
            retired.push(key(hex.trim_end())?);
        }
        if retired.len() >= MAX_RING {
            return Err(KeyError::Format("more retired keys than a ring holds"));
        }
        Ok(KeyFile {
            archive,
            encrypt,
            master,
            retired,
        })
    }

    /// The current keys, with the retired ones to open older data.
    pub fn keys(&self) -> Keys {
        let mut k = Keys::derive(&self.master, self.archive, self.encrypt);
        k.older = self
            .retired
            .iter()
            .map(|m| Keys::derive(m, self.archive, self.encrypt))
            .collect();
        k
    }

    /// Current and retired keys, current first: what a ring wraps.
    pub fn ring(&self) -> Vec<MasterKey> {
        std::iter::once(self.master.clone())
            .chain(self.retired.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: u8) -> Keys {
        Keys::derive(&MasterKey::from_bytes([k; 32]), ArchiveId([1; 16]), true)
    }

    #[test]
    fn subkeys_differ_and_ids_are_keyed() {
        let (a, b) = (keys(1), keys(2));
        let s = Scope::volume(VolumeId([7; 16]));
        assert_ne!(a.chunk_id(&s, b"x"), b.chunk_id(&s, b"x"));
        assert_ne!(a.chunk_id(&s, b"x"), *blake3::hash(b"x").as_bytes());
        assert_ne!(
            a.chunk_id(&s, b"x"),
            *a.manifest_mac().update(b"x").finalize().as_bytes()
        );
    }

    #[test]
    fn equal_data_in_two_scopes_has_unrelated_ids() {
        let k = keys(1);
        let v = |b| Scope::volume(VolumeId([b; 16]));
        let ids = [
            k.chunk_id(&v(1), b"x"),
            k.chunk_id(&v(2), b"x"),
            k.chunk_id(&Scope::group("templates"), b"x"),
            k.chunk_id(&Scope::group("templates2"), b"x"),
        ];
        for i in 0..ids.len() {
            for j in i + 1..ids.len() {
                assert_ne!(ids[i], ids[j], "{i} {j}");
            }
        }
        assert_eq!(ids[2], k.chunk_id(&Scope::group("templates"), b"x"));
        // A group's tag keeps it apart from a volume whose id collides.
        assert_ne!(
            Scope::group("a").0[0],
            Scope::volume(VolumeId([0; 16])).0[0]
        );
    }

    #[test]
    fn records_open_only_with_their_key_magic_and_archive() {
        let k = keys(1);
        let r = k.seal_record(b"SBKTEST1", b"hello", [3; 24]);
        assert_eq!(k.open_record(b"SBKTEST1", &r).unwrap(), b"hello");
        assert!(k.open_record(b"SBKTEST2", &r).is_err());
        assert!(keys(2).open_record(b"SBKTEST1", &r).is_err());
        let other = Keys::derive(&MasterKey::from_bytes([1; 32]), ArchiveId([2; 16]), true);
        assert!(other.open_record(b"SBKTEST1", &r).is_err());
        for i in 0..r.len() {
            let mut c = r.clone();
            c[i] ^= 1;
            assert!(k.open_record(b"SBKTEST1", &c).is_err(), "flip at {i}");
            assert!(k.open_record(b"SBKTEST1", &r[..i]).is_err(), "cut at {i}");
        }
    }

    #[test]
    fn wrap_unwrap_and_wrong_passphrase() {
        let m = MasterKey::from_bytes([9; 32]);
        let w = WrappedKey::wrap(
            &m,
            ArchiveId([4; 16]),
            true,
            b"pw",
            DEFAULT_KDF,
            [5; 16],
            [6; 24],
        )
        .unwrap();
        let b = w.encode();
        assert_eq!(b.len(), WRAPPED_LEN);
        let d = WrappedKey::decode(&b).unwrap();
        assert_eq!(d.unwrap(b"pw").unwrap().bytes(), m.bytes());
        assert_eq!(d.unwrap(b"pW").unwrap_err(), KeyError::Passphrase);
        // The archive id, the flag and the parameters are authenticated.
        let mut c = b.clone();
        c[24] = 0;
        assert_eq!(
            WrappedKey::decode(&c).unwrap().unwrap(b"pw").unwrap_err(),
            KeyError::Passphrase
        );
        assert!(WrappedKey::decode(&b[..b.len() - 1]).is_err());
        // A hostile archive cannot make dom0 spend 4 GiB, or weaken the KDF.
        let mut big = b.clone();
        big[25..29].copy_from_slice(&(4u32 << 20).to_le_bytes());
        assert!(matches!(WrappedKey::decode(&big), Err(KeyError::Params(_))));
        let mut weak = b.clone();
        weak[25..29].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(
            WrappedKey::decode(&weak),
            Err(KeyError::Params(_))
        ));
        // The most a forged key may cost: 512 MiB, and memory × passes at
        // most twice the default's (the review's forged key asked for
        // 1 GiB and 16 passes).
        let at = |m: u32, t: u32| {
            let mut f = b.clone();
            f[25..29].copy_from_slice(&m.to_le_bytes());
            f[29..33].copy_from_slice(&t.to_le_bytes());
            WrappedKey::decode(&f).map(|_| ())
        };
        assert!(at(1 << 20, 16).is_err());
        assert!(at(1 << 20, 1).is_err());
        assert!(at(512 << 10, 3).is_ok());
        assert!(at(512 << 10, 4).is_err());
        assert!(at(256 << 10, 6).is_ok());
        assert!(at(64 << 10, 9).is_err());
        assert!(DEFAULT_KDF.validate().is_ok());
        assert!(u64::from(DEFAULT_KDF.m_kib) * u64::from(DEFAULT_KDF.t) * 2 == MAX_KDF_COST);
    }

    #[test]
    fn key_file_round_trip() {
        let f = KeyFile {
            archive: ArchiveId([0xab; 16]),
            encrypt: false,
            master: MasterKey::from_bytes([0x5c; 32]),
            retired: vec![MasterKey::from_bytes([0x6d; 32])],
        };
        let t = f.encode();
        let d = KeyFile::decode(&t).unwrap();
        assert_eq!((d.archive, d.encrypt), (f.archive, false));
        assert_eq!(d.master.bytes(), f.master.bytes());
        assert_eq!(d.retired.len(), 1);
        assert_eq!(d.retired[0].bytes(), &[0x6d; 32]);
        assert!(KeyFile::decode(&t.replace("key 5c", "key zz")).is_err());
        assert!(KeyFile::decode(&t.replace("retired 6d", "retired zz")).is_err());
        assert!(KeyFile::decode(&format!("{}other line\n", &*t)).is_err());
        assert!(KeyFile::decode("sparsebak-key 2\n").is_err());
        assert!(KeyFile::decode("").is_err());
    }

    #[test]
    fn a_ring_wraps_and_unwraps_and_one_key_stays_version_1() {
        let ring = [
            MasterKey::from_bytes([1; 32]),
            MasterKey::from_bytes([2; 32]),
            MasterKey::from_bytes([3; 32]),
        ];
        let kdf = KdfParams {
            m_kib: 64 * 1024,
            t: 1,
            p: 1,
        };
        let w = WrappedKey::wrap_ring(
            &ring,
            ArchiveId([9; 16]),
            true,
            b"pw",
            kdf,
            [4; 16],
            [5; 24],
        )
        .unwrap();
        let b = w.encode();
        assert_eq!(&b[..8], b"SBKKEY02");
        assert_eq!(b.len(), 77 + 3 * 32 + 16);
        let d = WrappedKey::decode(&b).unwrap();
        let got = d.unwrap_ring(b"pw").unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().zip(&ring).all(|(a, b)| a.bytes() == b.bytes()));
        assert_eq!(d.unwrap(b"pw").unwrap().bytes(), &[1; 32]);
        assert_eq!(d.unwrap(b"pW").unwrap_err(), KeyError::Passphrase);
        // A key cut off the ring, or the ring's magic on one key: refused
        // (the tag covers the length).
        let mut cut = b.clone();
        cut.drain(77..77 + 32);
        assert!(WrappedKey::decode(&cut)
            .unwrap()
            .unwrap_ring(b"pw")
            .is_err());
        let one = WrappedKey::wrap(
            &ring[0],
            ArchiveId([9; 16]),
            true,
            b"pw",
            kdf,
            [4; 16],
            [5; 24],
        )
        .unwrap()
        .encode();
        assert_eq!((&one[..8], one.len()), (&b"SBKKEY01"[..], WRAPPED_LEN));
        let mut fake = one.clone();
        fake[..8].copy_from_slice(b"SBKKEY02");
        assert!(WrappedKey::decode(&fake).is_err());
    }
}
