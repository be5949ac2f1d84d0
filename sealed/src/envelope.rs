//! Sealing and opening chunks, with the archive's keys: the one place
//! that does either. The agent seals during a backup and opens during a
//! restore or verify; the receiver only checks the frame
//! (`protocol::envelope`, re-exported here).
//!
//! Sealing computes the chunk's keyed id (what the manifest pins),
//! compresses with zstd when that saves space, and encrypts with
//! XChaCha20-Poly1305 under a random nonce, the archive, dedup scope,
//! keyed id and length bound as associated data (not the place: one
//! stored envelope serves every place in its scope that holds the same
//! bytes, and what binds data to a place is dom0's manifest) — or, in an archive made with
//! `--encrypt off`, stores the compressed bytes in the clear with a keyed
//! BLAKE3 MAC over the same associated data and the body (kind 3), so that
//! nothing a hostile receiver sends reaches the decompressor before it
//! authenticates. Opening checks the CRC, decrypts or checks the MAC,
//! decompresses into a caller's buffer of exactly the chunk's length (a
//! decompression bomb is an error, never an allocation) and checks the id.
//! Pure: no I/O; the caller supplies nonces and owns the buffers.

pub use protocol::envelope::*;

use crate::keys::{Keys, Scope};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{Tag, XNonce};
use protocol::chunk::Hash;
use std::sync::Arc;

/// What a chunk is bound to: its envelope opens only in this archive and
/// scope, as the chunk with this keyed id and length. (`addr` is only for
/// messages.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub scope: Scope,
    pub addr: u64,
    pub raw_len: u32,
}

/// Associated data: `SBKCHNK2`, archive id, scope, keyed id, length.
pub const AD_LEN: usize = 8 + 16 + 17 + 32 + 4;

fn ad(keys: &Keys, at: &Place, id: &Hash) -> [u8; AD_LEN] {
    let mut a = [0u8; AD_LEN];
    a[..8].copy_from_slice(b"SBKCHNK2");
    a[8..24].copy_from_slice(&keys.archive.0);
    a[24..41].copy_from_slice(&at.scope.0);
    a[41..73].copy_from_slice(id);
    a[73..].copy_from_slice(&at.raw_len.to_le_bytes());
    a
}

/// A kind-3 envelope's MAC: keyed BLAKE3 of the associated data and the
/// body, its first 16 bytes.
fn clear_mac(keys: &Keys, at: &Place, id: &Hash, body: &[u8]) -> [u8; TAG_LEN] {
    let mut h = keys.clear_mac();
    h.update(&ad(keys, at, id));
    h.update(body);
    let mut m = [0u8; TAG_LEN];
    m.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
    m
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Seals chunks: one per worker thread (it holds a zstd context).
pub struct Sealer {
    zstd: Option<zstd::bulk::Compressor<'static>>,
    keys: Arc<Keys>,
}

impl Sealer {
    /// `level`: the zstd level, None for no compression.
    pub fn new(level: Option<i32>, keys: Arc<Keys>) -> std::io::Result<Self> {
        Ok(Sealer {
            zstd: level.map(zstd::bulk::Compressor::new).transpose()?,
            keys,
        })
    }

    /// A chunk's keyed id in `scope` (what [`Sealer::seal`] returns), to
    /// compare a chunk with a manifest entry without sealing it.
    pub fn id(&self, scope: &Scope, plain: &[u8]) -> Hash {
        self.keys.chunk_id(scope, plain)
    }

    /// Seals a non-zero chunk into `out` (cleared first; it must have room
    /// for [`sealed_bound`] bytes) and returns its keyed id. `nonce` must
    /// be fresh random bytes (ignored by an `--encrypt off` archive).
    pub fn seal(
        &mut self,
        plain: &[u8],
        at: &Place,
        nonce: [u8; NONCE_LEN],
        out: &mut Vec<u8>,
    ) -> std::io::Result<Hash> {
        let id = self.keys.chunk_id(&at.scope, plain);
        self.seal_as(plain, at, &id, nonce, out)?;
        Ok(id)
    }

    /// [`Sealer::seal`] of a chunk whose id the caller computed with
    /// [`Sealer::id`] (hashing it once, not twice).
    pub fn seal_as(
        &mut self,
        plain: &[u8],
        at: &Place,
        id: &Hash,
        nonce: [u8; NONCE_LEN],
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        out.clear();
        let enc = self.keys.encrypt;
        out.push(if enc { KIND_AEAD } else { KIND_CLEAR_MAC });
        if enc {
            out.extend_from_slice(&nonce);
        }
        let body = out.len();
        let bound = zstd::zstd_safe::compress_bound(plain.len());
        // A padded body has the frame's length before the frame.
        let head = if self.keys.pad { 5 } else { 1 };
        let compressed = match &mut self.zstd {
            Some(c) => {
                out.resize(body + head + bound, 0);
                let n = c.compress_to_buffer(plain, &mut out[body + head..])?;
                out.truncate(body + head + n);
                if self.keys.pad {
                    // Round the whole envelope up to the bucket; stored
                    // raw instead where that would not save space.
                    let bucket = pad_bucket(plain.len());
                    let total = (out.len() + TAG_LEN + CRC_LEN).next_multiple_of(bucket);
                    let padded = total - TAG_LEN - CRC_LEN;
                    let fits = padded - body < 1 + plain.len();
                    if fits {
                        out[body] = ZSTD_PADDED;
                        out[body + 1..body + 5].copy_from_slice(&(n as u32).to_le_bytes());
                        out.resize(padded, 0);
                    }
                    fits
                } else {
                    out[body] = ZSTD;
                    n < plain.len()
                }
            }
            None => false,
        };
        if !compressed {
            out.truncate(body);
            out.push(STORED);
            out.extend_from_slice(plain);
        }
        if enc {
            let tag = self
                .keys
                .chunk_cipher()
                .encrypt_in_place_detached(
                    XNonce::from_slice(&nonce),
                    &ad(&self.keys, at, id),
                    &mut out[body..],
                )
                .map_err(|_| std::io::Error::other("chunk too large to seal"))?;
            out.extend_from_slice(&tag);
        } else {
            let m = clear_mac(&self.keys, at, id, &out[body..]);
            out.extend_from_slice(&m);
        }
        let crc = crc32fast::hash(out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

fn mode(enc: bool) -> &'static str {
    if enc {
        "encrypted"
    } else {
        "clear"
    }
}

/// Opens chunks: one per worker (it holds a scratch buffer).
pub struct Opener {
    keys: Arc<Keys>,
    scratch: Vec<u8>,
}

impl Opener {
    pub fn new(keys: Arc<Keys>) -> Self {
        Opener {
            keys,
            scratch: Vec::new(),
        }
    }

    /// Opens an envelope for the chunk at `at` whose manifest id is
    /// `expect`; the plaintext lands in `plain` (at least `at.raw_len`
    /// bytes) and is returned. Sealed before a `key rotate`, a chunk opens
    /// with the retired key it was sealed with: tried, newest first, only
    /// where the current key's tag or id does not match.
    pub fn open<'a>(
        &mut self,
        stored: &[u8],
        at: &Place,
        expect: &Hash,
        plain: &'a mut [u8],
    ) -> Result<&'a [u8], OpenError> {
        let keys = self.keys.clone();
        match open_with(&keys, &mut self.scratch, stored, at, expect, plain) {
            Err(e @ (OpenError::Authentication | OpenError::Id)) => {
                for k in &keys.older {
                    if open_with(k, &mut self.scratch, stored, at, expect, plain).is_ok() {
                        return Ok(&plain[..at.raw_len as usize]);
                    }
                }
                Err(e)
            }
            r => r.map(|_| &plain[..at.raw_len as usize]),
        }
    }
}

/// [`Opener::open`] with one set of keys.
fn open_with(
    keys: &Keys,
    scratch: &mut Vec<u8>,
    stored: &[u8],
    at: &Place,
    expect: &Hash,
    plain: &mut [u8],
) -> Result<(), OpenError> {
    let raw_len = at.raw_len as usize;
    let kind = check_stored(stored, raw_len)?;
    let enc = kind == KIND_AEAD;
    if enc != keys.encrypt {
        return Err(OpenError::Mode {
            found: mode(enc),
            expected: mode(keys.encrypt),
        });
    }
    if kind == KIND_CLEAR && !keys.legacy_clear {
        // Kind 2 has no MAC: only an archive made before kind 3 may
        // hold it, and only there is its body decompressed unchecked.
        return Err(OpenError::Kind(kind));
    }
    let framed = &stored[..stored.len() - CRC_LEN];
    let body: &[u8] = if enc {
        let nonce = XNonce::from_slice(&framed[1..1 + NONCE_LEN]);
        let (ct, tag) = framed[1 + NONCE_LEN..].split_at(framed.len() - 1 - NONCE_LEN - TAG_LEN);
        scratch.clear();
        scratch.extend_from_slice(ct);
        keys.chunk_cipher()
            .decrypt_in_place_detached(
                nonce,
                &ad(keys, at, expect),
                &mut *scratch,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError::Authentication)?;
        &*scratch
    } else if kind == KIND_CLEAR_MAC {
        let (body, mac) = framed[1..].split_at(framed.len() - 1 - TAG_LEN);
        if !same(&clear_mac(keys, at, expect, body), mac) {
            return Err(OpenError::Authentication);
        }
        body
    } else {
        &framed[1..]
    };
    let (flag, bytes) = body.split_first().ok_or(OpenError::Size {
        stored: stored.len(),
        expected: raw_len,
    })?;
    let out = &mut plain[..raw_len];
    match *flag {
        STORED if bytes.len() == raw_len => out.copy_from_slice(bytes),
        STORED => {
            return Err(OpenError::Length {
                got: bytes.len(),
                expected: raw_len,
            })
        }
        ZSTD | ZSTD_PADDED => {
            let frame = if *flag == ZSTD {
                bytes
            } else {
                let n = bytes
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize);
                match n.and_then(|n| bytes.get(4..4 + n)) {
                    Some(f) => f,
                    None => {
                        return Err(OpenError::Size {
                            stored: stored.len(),
                            expected: raw_len,
                        })
                    }
                }
            };
            // Bounded: output larger than the chunk is an error.
            let n = zstd::bulk::decompress_to_buffer(frame, &mut *out)
                .map_err(|e| OpenError::Decompress(e.to_string()))?;
            if n != raw_len {
                return Err(OpenError::Length {
                    got: n,
                    expected: raw_len,
                });
            }
        }
        f => return Err(OpenError::Compression(f)),
    }
    if keys.chunk_id(&at.scope, out) != *expect {
        return Err(OpenError::Id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;
    use proptest::prelude::*;
    use protocol::message::ArchiveId;

    fn keys(enc: bool) -> Arc<Keys> {
        Arc::new(Keys::derive(
            &MasterKey::from_bytes([7; 32]),
            ArchiveId([1; 16]),
            enc,
        ))
    }

    fn place(addr: u64, len: usize) -> Place {
        Place {
            scope: Scope::volume(crate::keys::VolumeId([2; 16])),
            addr,
            raw_len: len as u32,
        }
    }

    fn seal_all(enc: bool, level: Option<i32>, plain: &[u8]) -> (Hash, Vec<u8>) {
        let mut s = Sealer::new(level, keys(enc)).unwrap();
        let mut out = Vec::with_capacity(sealed_bound(plain.len()));
        let h = s
            .seal(plain, &place(0, plain.len()), [9; 24], &mut out)
            .unwrap();
        assert!(out.len() <= max_stored(plain.len()));
        (h, out)
    }

    fn open_with(enc: bool, stored: &[u8], at: &Place, h: &Hash) -> Result<Vec<u8>, OpenError> {
        let mut buf = vec![0u8; at.raw_len as usize];
        Opener::new(keys(enc))
            .open(stored, at, h, &mut buf)
            .map(|p| p.to_vec())
    }

    proptest! {
        #[test]
        fn round_trip_and_no_flip_opens(
            plain in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 1..4096),
            level in prop_oneof![Just(None), Just(Some(3))],
            enc in any::<bool>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (h, stored) = seal_all(enc, level, &plain);
            let at = place(0, plain.len());
            prop_assert_eq!(open_with(enc, &stored, &at, &h).unwrap(), plain.clone());
            let mut bad = stored.clone();
            let i = flip.index(bad.len());
            bad[i] ^= 1 << bit;
            // Every flip is caught: by the CRC, or (a flip that also fixes
            // the CRC cannot happen with one bit) by the tag or the id.
            prop_assert!(open_with(enc, &bad, &at, &h).is_err());
            // The receiver's check alone catches it too.
            prop_assert!(check_stored(&bad, plain.len()).is_err());
        }
    }

    #[test]
    fn encrypted_chunks_hide_their_content_and_bind_their_scope() {
        let plain = b"MARKER-MARKER-MARKER-MARKER".repeat(100);
        let (h, stored) = seal_all(true, None, &plain);
        assert!(!stored.windows(6).any(|w| w == b"MARKER"));
        let at = place(0, plain.len());
        assert!(open_with(true, &stored, &at, &h).is_ok());
        // Another address of the same scope: the same chunk (dedup).
        assert!(open_with(true, &stored, &place(65536, plain.len()), &h).is_ok());
        // Another scope (a volume, a group) or length: the tag fails.
        for other in [
            Place {
                scope: Scope::volume(crate::keys::VolumeId([3; 16])),
                ..at
            },
            Place {
                scope: Scope::group("templates"),
                ..at
            },
        ] {
            assert_eq!(
                open_with(true, &stored, &other, &h),
                Err(OpenError::Authentication)
            );
        }
        let shorter = Place {
            raw_len: at.raw_len - 1,
            ..at
        };
        assert!(open_with(true, &stored, &shorter, &h).is_err());
        // A key of another archive, a stale id, a clear-mode reader.
        let other = Arc::new(Keys::derive(
            &MasterKey::from_bytes([8; 32]),
            ArchiveId([1; 16]),
            true,
        ));
        let mut buf = vec![0u8; plain.len()];
        assert!(Opener::new(other).open(&stored, &at, &h, &mut buf).is_err());
        // The id is bound too: an envelope opens only as the chunk it was
        // sealed for (a stale or swapped one fails the tag).
        assert_eq!(
            open_with(true, &stored, &at, &[0; 32]),
            Err(OpenError::Authentication)
        );
        assert!(matches!(
            open_with(false, &stored, &at, &h),
            Err(OpenError::Mode { .. })
        ));
    }

    #[test]
    fn clear_chunks_are_authenticated_by_their_mac_and_their_id() {
        let plain = vec![5u8; 65536];
        let (h, stored) = seal_all(false, Some(3), &plain);
        assert!(stored.len() < 1000);
        assert_eq!(stored[0], KIND_CLEAR_MAC);
        let at = place(0, plain.len());
        assert!(open_with(false, &stored, &at, &h).is_ok());
        // The MAC binds the scope, as the AEAD does.
        let other = Place {
            scope: Scope::group("g"),
            ..at
        };
        assert_eq!(
            open_with(false, &stored, &other, &h),
            Err(OpenError::Authentication)
        );
        // A well-formed clear envelope of other content: the MAC, which
        // binds the id, fails.
        let (_, other) = seal_all(false, Some(3), &vec![6u8; 65536]);
        assert_eq!(
            open_with(false, &other, &at, &h),
            Err(OpenError::Authentication)
        );
        assert!(matches!(
            open_with(true, &stored, &at, &h),
            Err(OpenError::Mode { .. })
        ));
    }

    #[test]
    fn a_bomb_or_a_short_record_is_refused() {
        // A clear envelope holding a zstd frame of 1 MiB for a 4 KiB chunk:
        // as kind 3 with no valid MAC, refused before decompressing; as
        // kind 2, refused unless the archive may hold kind 2, and then
        // bounded.
        let frame = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        let mut bomb = vec![KIND_CLEAR_MAC, ZSTD];
        bomb.extend(&frame);
        bomb.extend_from_slice(&[0; TAG_LEN]);
        let crc = crc32fast::hash(&bomb);
        bomb.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            open_with(false, &bomb, &place(0, 4096), &[0; 32]),
            Err(OpenError::Authentication)
        );
        let mut old = vec![KIND_CLEAR, ZSTD];
        old.extend(&frame);
        let crc = crc32fast::hash(&old);
        old.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            open_with(false, &old, &place(0, 4096), &[0; 32]),
            Err(OpenError::Kind(KIND_CLEAR))
        );
        let mut legacy = Keys::derive(&MasterKey::from_bytes([7; 32]), ArchiveId([1; 16]), false);
        legacy.legacy_clear = true;
        let mut buf = vec![0u8; 4096];
        assert!(matches!(
            Opener::new(Arc::new(legacy)).open(&old, &place(0, 4096), &[0; 32], &mut buf),
            Err(OpenError::Decompress(_))
        ));
        assert!(matches!(
            open_with(false, b"abc", &place(0, 4), &[0; 32]),
            Err(OpenError::Size { .. })
        ));
        assert!(matches!(
            check_stored(&[9, 0, 0, 0, 0, 0], 4),
            Err(OpenError::Crc)
        ));
    }

    #[test]
    fn padded_archives_store_sizes_in_buckets_and_still_open() {
        let mut rng = 1u64;
        for enc in [true, false] {
            let mut k = Keys::derive(&MasterKey::from_bytes([7; 32]), ArchiveId([1; 16]), enc);
            k.pad = true;
            let k = Arc::new(k);
            let mut sizes = std::collections::BTreeSet::new();
            for fill in [0usize, 1000, 20000, 60000, 65536] {
                // `fill` random bytes, the rest a repeated pattern.
                let mut plain = vec![7u8; 65536];
                for b in &mut plain[..fill] {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    *b = rng as u8;
                }
                let mut s = Sealer::new(Some(3), k.clone()).unwrap();
                let mut out = Vec::with_capacity(sealed_bound(plain.len()));
                let at = place(0, plain.len());
                let h = s.seal(&plain, &at, [9; 24], &mut out).unwrap();
                let full = max_stored(plain.len()) - if enc { 0 } else { NONCE_LEN };
                assert!(
                    out.len() % pad_bucket(plain.len()) == 0 || out.len() == full,
                    "{enc} {fill}: {} bytes",
                    out.len()
                );
                sizes.insert(out.len());
                let mut buf = vec![0u8; plain.len()];
                let got = Opener::new(k.clone())
                    .open(&out, &at, &h, &mut buf)
                    .unwrap();
                assert_eq!(got, &plain[..]);
            }
            assert!(sizes.len() >= 3, "{sizes:?}");
        }
    }
}
