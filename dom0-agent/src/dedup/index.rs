//! dom0's dedup index of one scope: keyed chunk id → one place where the
//! archive stores that chunk (volume, session, address). On disk, with
//! bounded memory: an open-addressing hash table of 4 KiB buckets in a
//! sparse file, read and written a slot at a time with `pread`/`pwrite`,
//! and a Bloom filter in RAM (about 8 to 16 bits per entry, three probes)
//! so that a chunk the scope does not hold — every chunk of a volume with
//! no duplicates — costs no read at all.
//!
//! The index is a cache, never an authority: an entry is only a hint
//! that the caller checks against dom0's own manifests (and the receiver
//! checks again). So it is written without ordering or fsync: a crash
//! that tears a bucket or loses the filter's last bits costs dedup for a
//! few chunks, never a wrong byte, and `arch-import` rebuilds it whole.
//!
//! Files, in `DIR`: `head` (magic `SBKDIX01`, buckets u64le, entries
//! u64le), `table` (buckets × 4096 bytes), `filter` (the filter's bits),
//! `volumes` (the volume ids entries name, one per line, 32 hex digits;
//! an entry's volume is its line number from 1, 0 marks an empty slot).
//! A slot is 24 bytes: the id's first 8 bytes, volume u32le, session
//! sequence number u32le, address u64le. 8 bytes of id are enough: a hit
//! is confirmed against the full id in a manifest before it is used.

use anyhow::{bail, Context, Result};
use protocol::chunk::Hash;
use sealed::keys::VolumeId;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SBKDIX01";
const BUCKET: usize = 4096;
const SLOT: usize = 24;
const SLOTS: usize = BUCKET / SLOT;
const FIRST_BUCKETS: u64 = 16;
/// Grown (doubled) when entries pass this share of the slots.
const LOAD_PERCENT: u64 = 80;

/// Where the archive stores a chunk: session by sequence number (the
/// `S_…` name's digits), address in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub volume: VolumeId,
    pub session: u64,
    pub addr: u64,
}

pub struct Index {
    dir: PathBuf,
    table: File,
    buckets: u64,
    entries: u64,
    filter: Vec<u64>,
    volumes: Vec<VolumeId>,
    /// The filter or head changed since the last `flush`.
    dirty: bool,
}

fn key(id: &Hash) -> u64 {
    u64::from_le_bytes(id[..8].try_into().expect("8 bytes"))
}

/// splitmix64's finalizer: spreads every bit of a key over all 64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// The filter's three probes of a key, each in `0..bits`: from the 8 id
/// bytes the table keeps, so the filter can be rebuilt from it.
fn probes(k: u64, bits: u64) -> [u64; 3] {
    // Multiply-shift: any size, not only powers of two.
    [1u64, 2, 3].map(|i| {
        let h = mix(k ^ i.wrapping_mul(0x9e3779b97f4a7c15));
        ((h as u128 * bits as u128) >> 64) as u64
    })
}

/// Filter words for a table of `buckets`: 10 bits for each entry the
/// table holds before it grows (80 % of its slots): 10 bits per entry at
/// the fullest (about 2 % false hits), 20 just after a growth; 1.25 bytes
/// of RAM per entry at 16 million.
fn filter_words(buckets: u64) -> usize {
    (buckets * SLOTS as u64 * LOAD_PERCENT / 100 * 10).div_ceil(64) as usize
}

impl Index {
    /// Opens the index in `dir`, creating an empty one if there is none.
    pub fn open(dir: &Path) -> Result<Index> {
        fs::create_dir_all(dir).with_context(|| format!("unable to create '{}'", dir.display()))?;
        let head = fs::read(dir.join("head")).ok();
        let parsed = head.as_deref().and_then(|h| {
            (h.len() == 24 && &h[..8] == MAGIC).then(|| {
                let w = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
                (w(8), w(16))
            })
        });
        let table_path = dir.join("table");
        let table = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&table_path)
            .with_context(|| format!("unable to open '{}'", table_path.display()))?;
        let len = table.metadata()?.len();
        let (buckets, entries) = match parsed {
            Some((b, e)) if b.is_power_of_two() && b * BUCKET as u64 == len => (b, e),
            // None yet, or torn: start again (a cache; `arch-import`
            // rebuilds a lost one).
            _ => {
                table.set_len(0)?;
                table.set_len(FIRST_BUCKETS * BUCKET as u64)?;
                (FIRST_BUCKETS, 0)
            }
        };
        let mut ix = Index {
            dir: dir.to_path_buf(),
            table,
            buckets,
            entries,
            filter: Vec::new(),
            volumes: read_volumes(&dir.join("volumes"))?,
            dirty: false,
        };
        if parsed.is_none() || !ix.read_filter()? {
            ix.rebuild_filter()?;
        }
        Ok(ix)
    }

    /// The saved filter, read straight into its words (no second copy of
    /// it in memory); false if there is none of the right size.
    fn read_filter(&mut self) -> Result<bool> {
        use std::io::Read;
        let words = filter_words(self.buckets);
        let Ok(f) = File::open(self.dir.join("filter")) else {
            return Ok(false);
        };
        if f.metadata()?.len() != words as u64 * 8 {
            return Ok(false);
        }
        let mut r = std::io::BufReader::with_capacity(1 << 16, f);
        let mut filter = Vec::with_capacity(words);
        let mut w = [0u8; 8];
        for _ in 0..words {
            r.read_exact(&mut w)?;
            filter.push(u64::from_le_bytes(w));
        }
        self.filter = filter;
        Ok(true)
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes the index takes on disk (the table is sparse: what is
    /// allocated) and in RAM (the filter).
    pub fn sizes(&self) -> Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let disk = self.table.metadata()?.blocks() * 512;
        Ok((disk, self.filter.len() as u64 * 8))
    }

    fn read_bucket(&self, b: u64, buf: &mut [u8; BUCKET]) -> Result<()> {
        self.table
            .read_exact_at(buf, b * BUCKET as u64)
            .with_context(|| format!("reading the dedup index in '{}'", self.dir.display()))
    }

    fn may_hold(&self, k: u64) -> bool {
        let bits = self.filter.len() as u64 * 64;
        probes(k, bits)
            .iter()
            .all(|&p| self.filter[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }

    fn remember(&mut self, k: u64) {
        let bits = self.filter.len() as u64 * 64;
        for p in probes(k, bits) {
            self.filter[(p / 64) as usize] |= 1 << (p % 64);
        }
        self.dirty = true;
    }

    /// Every place the index has for ids whose first 8 bytes are `id`'s
    /// (almost always none or one), to be checked by the caller.
    pub fn lookup(&self, id: &Hash) -> Result<Vec<Loc>> {
        let mut out = Vec::new();
        if !self.may_hold(key(id)) {
            return Ok(out);
        }
        self.probe(key(id), |_, slot| {
            if let Some((k, loc)) = slot {
                if k == key(id) {
                    out.push(loc);
                }
            }
            false
        })?;
        Ok(out)
    }

    /// Visits the slots of `k`'s probe sequence (bucket by bucket from its
    /// home) until `f` returns true or an empty slot ends the sequence;
    /// returns where it stopped (bucket, slot), None if no slot is empty.
    fn probe(
        &self,
        k: u64,
        mut f: impl FnMut((u64, usize), Option<(u64, Loc)>) -> bool,
    ) -> Result<Option<(u64, usize)>> {
        let mut buf = [0u8; BUCKET];
        let home = k & (self.buckets - 1);
        for step in 0..self.buckets {
            let b = (home + step) & (self.buckets - 1);
            self.read_bucket(b, &mut buf)?;
            for s in 0..SLOTS {
                let slot = self.decode(&buf[s * SLOT..(s + 1) * SLOT]);
                let empty = slot.is_none();
                if f((b, s), slot) || empty {
                    return Ok(Some((b, s)));
                }
            }
        }
        Ok(None)
    }

    fn decode(&self, s: &[u8]) -> Option<(u64, Loc)> {
        let w32 = |i: usize| u32::from_le_bytes(s[i..i + 4].try_into().expect("4 bytes"));
        let vol = w32(8) as usize;
        let volume = *self.volumes.get(vol.checked_sub(1)?)?;
        Some((
            u64::from_le_bytes(s[..8].try_into().expect("8 bytes")),
            Loc {
                volume,
                session: w32(12) as u64,
                addr: u64::from_le_bytes(s[16..24].try_into().expect("8 bytes")),
            },
        ))
    }

    fn volume_number(&mut self, v: VolumeId) -> Result<u32> {
        if let Some(i) = self.volumes.iter().position(|x| *x == v) {
            return Ok(i as u32 + 1);
        }
        self.volumes.push(v);
        let text: String = self
            .volumes
            .iter()
            .map(|v| format!("{}\n", v.to_hex()))
            .collect();
        replace(&self.dir.join("volumes"), text.as_bytes())?;
        Ok(self.volumes.len() as u32)
    }

    /// Records that `id` is stored at `loc`. With `replace`, an entry for
    /// the same id gives way (the caller found it stale); without, an
    /// id already present is left as it is.
    pub fn insert(&mut self, id: &Hash, loc: Loc, replace: bool) -> Result<()> {
        let Ok(session) = u32::try_from(loc.session) else {
            return Ok(()); // Past 4 billion sessions: not indexed.
        };
        if (self.entries + 1) * 100 > self.buckets * SLOTS as u64 * LOAD_PERCENT {
            self.grow()?;
        }
        let vol = self.volume_number(loc.volume)?;
        let k = key(id);
        let mut found_same = false;
        let at = self.probe(k, |_, slot| {
            found_same = slot.is_some_and(|(sk, _)| sk == k);
            found_same
        })?;
        if found_same && !replace {
            return Ok(());
        }
        let Some((b, s)) = at else {
            // Every slot taken (a count lost in a crash): grow and retry.
            self.grow()?;
            return self.insert(id, loc, replace);
        };
        let mut slot = [0u8; SLOT];
        slot[..8].copy_from_slice(&k.to_le_bytes());
        slot[8..12].copy_from_slice(&vol.to_le_bytes());
        slot[12..16].copy_from_slice(&session.to_le_bytes());
        slot[16..].copy_from_slice(&loc.addr.to_le_bytes());
        self.table
            .write_all_at(&slot, b * BUCKET as u64 + (s * SLOT) as u64)
            .with_context(|| format!("writing the dedup index in '{}'", self.dir.display()))?;
        if !found_same {
            self.entries += 1;
        }
        self.remember(k);
        Ok(())
    }

    /// Doubles the table: every slot re-placed into a new file, renamed
    /// over the old one; the filter rebuilt at its new size.
    fn grow(&mut self) -> Result<()> {
        let new_path = self.dir.join("table.new");
        let new = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&new_path)
            .with_context(|| format!("unable to create '{}'", new_path.display()))?;
        let buckets = self.buckets * 2;
        new.set_len(buckets * BUCKET as u64)?;
        let mut fill = vec![0u16; buckets as usize];
        let mut buf = [0u8; BUCKET];
        for b in 0..self.buckets {
            self.read_bucket(b, &mut buf)?;
            for s in buf.chunks_exact(SLOT) {
                if s[8..12] == [0; 4] {
                    continue;
                }
                let k = u64::from_le_bytes(s[..8].try_into().expect("8 bytes"));
                let mut nb = k & (buckets - 1);
                while fill[nb as usize] as usize == SLOTS {
                    nb = (nb + 1) & (buckets - 1);
                }
                let at = nb * BUCKET as u64 + fill[nb as usize] as u64 * SLOT as u64;
                new.write_all_at(s, at)?;
                fill[nb as usize] += 1;
            }
        }
        fs::rename(&new_path, self.dir.join("table"))?;
        self.table = new;
        self.buckets = buckets;
        self.rebuild_filter()?;
        self.write_head()
    }

    /// The filter (and the count) from the table's slots.
    fn rebuild_filter(&mut self) -> Result<()> {
        self.filter = vec![0; filter_words(self.buckets)];
        let mut buf = [0u8; BUCKET];
        let mut n = 0;
        for b in 0..self.buckets {
            self.read_bucket(b, &mut buf)?;
            for s in buf.chunks_exact(SLOT) {
                if s[8..12] != [0; 4] {
                    n += 1;
                    self.remember(u64::from_le_bytes(s[..8].try_into().expect("8 bytes")));
                }
            }
        }
        self.entries = n;
        self.dirty = true;
        Ok(())
    }

    fn write_head(&mut self) -> Result<()> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&self.buckets.to_le_bytes());
        h.extend_from_slice(&self.entries.to_le_bytes());
        replace(&self.dir.join("head"), &h)
    }

    /// Writes the head and the filter (after a session's commit).
    pub fn flush(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        // Streamed to a temporary file and renamed: no second copy of the
        // filter in memory.
        let tmp = self.dir.join("filter.new");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut w = std::io::BufWriter::with_capacity(1 << 16, File::create(&tmp)?);
            for word in &self.filter {
                w.write_all(&word.to_le_bytes())?;
            }
            w.into_inner().map_err(|e| e.into_error())?;
            fs::rename(&tmp, self.dir.join("filter"))
        };
        write().with_context(|| format!("writing the dedup filter in '{}'", self.dir.display()))?;
        self.write_head()?;
        self.dirty = false;
        Ok(())
    }
}

/// Replaces a file by rename, without fsync: the index is a cache (see
/// the module's note), and a backup should not wait on the disk for it.
fn replace(p: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = p.with_extension("new");
    fs::write(&tmp, bytes)
        .and_then(|_| fs::rename(&tmp, p))
        .with_context(|| format!("unable to write '{}'", p.display()))
}

fn read_volumes(p: &Path) -> Result<Vec<VolumeId>> {
    let text = match fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("unable to read '{}'", p.display())),
    };
    text.lines()
        .map(|l| match VolumeId::from_hex(l.trim()) {
            Some(v) => Ok(v),
            None => bail!("bad volume id in '{}'", p.display()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed when the test's value drops.
    struct TmpDir(PathBuf);

    impl TmpDir {
        fn new(tag: &str) -> TmpDir {
            let d = std::env::temp_dir().join(format!("sbk-dedup-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            TmpDir(d)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn id(i: u64) -> Hash {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    fn loc(i: u64) -> Loc {
        Loc {
            volume: VolumeId([(i % 3) as u8 + 1; 16]),
            session: i % 7,
            addr: i * 65536,
        }
    }

    #[test]
    fn inserts_grow_persist_and_find_every_entry() {
        let dir = TmpDir::new("grow");
        let n = 20_000u64;
        {
            let mut ix = Index::open(dir.path()).unwrap();
            for i in 0..n {
                ix.insert(&id(i), loc(i), false).unwrap();
            }
            // Present already: kept as it was without `replace`.
            ix.insert(&id(5), loc(6), false).unwrap();
            assert_eq!(ix.entries(), n);
            assert!(ix.buckets > FIRST_BUCKETS, "it grew");
            ix.flush().unwrap();
        }
        let mut ix = Index::open(dir.path()).unwrap();
        assert_eq!(ix.entries(), n);
        for i in 0..n {
            assert_eq!(ix.lookup(&id(i)).unwrap(), vec![loc(i)], "{i}");
        }
        // Absent ids: the filter answers nearly all without a read.
        let hits = (n..n + 10_000)
            .filter(|&i| ix.may_hold(key(&id(i))))
            .count();
        assert!(hits < 500, "{hits} false positives in 10000");
        assert!((n..n + 1000).all(|i| ix.lookup(&id(i)).unwrap().is_empty()));
        ix.insert(&id(5), loc(6), true).unwrap();
        assert_eq!(ix.lookup(&id(5)).unwrap(), vec![loc(6)]);
        assert_eq!(ix.entries(), n);
    }

    #[test]
    fn a_lost_filter_or_a_torn_head_is_survived() {
        let dir = TmpDir::new("torn");
        {
            let mut ix = Index::open(dir.path()).unwrap();
            for i in 0..3000 {
                ix.insert(&id(i), loc(i), false).unwrap();
            }
            ix.flush().unwrap();
        }
        // A crash before the filter was written: rebuilt from the table.
        fs::remove_file(dir.path().join("filter")).unwrap();
        let ix = Index::open(dir.path()).unwrap();
        assert_eq!(ix.entries(), 3000);
        assert!((0..3000).all(|i| ix.lookup(&id(i)).unwrap() == vec![loc(i)]));
        drop(ix);
        // A torn head: the index starts empty (a cache), and works.
        fs::write(dir.path().join("head"), b"SBKDIX01garbage").unwrap();
        let mut ix = Index::open(dir.path()).unwrap();
        assert_eq!(ix.entries(), 0);
        assert!(ix.lookup(&id(1)).unwrap().is_empty());
        ix.insert(&id(1), loc(1), false).unwrap();
        assert_eq!(ix.lookup(&id(1)).unwrap(), vec![loc(1)]);
    }
}
