//! Volumes in an LVM thin pool (`--local VG/POOL`), as in Qubes' default
//! pool.
//!
//! Each backup takes a thin snapshot `VOL.sbk-ID8-tock` of the volume
//! (tagged `sbk_ARCHIVEID`); changes since the previous session come from
//! `thin_delta` between the previous snapshot `VOL.sbk-ID8-tick` (tagged
//! with that session's name) and the new one, read from a metadata
//! snapshot of the pool. After the receiver acknowledged the session the
//! new snapshot replaces the old. Snapshots without our archive tag are
//! never touched.

use super::cmd;
use super::file::mark_size_change;
use super::thin;
use super::{Plan, Snapshot};
use crate::chunkmap::ChunkMap;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;

/// What `lvs` says about one LV.
#[derive(Debug, Clone, Default)]
struct Lv {
    size: u64,
    thin_id: Option<u64>,
    tags: Vec<String>,
    pool: String,
}

pub struct LvmPool {
    pub vg: String,
    pub pool: String,
    archive_id: String,
}

/// LVM's name rules (a subset: what `validate_volume_name` also allows).
fn valid_lvm_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 127
        && !n.starts_with('-')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
}

/// The device-mapper spelling of an LVM name: `-` doubled.
fn dm(n: &str) -> String {
    n.replace('-', "--")
}

impl LvmPool {
    /// `spec` is `VG/POOL`.
    pub fn new(spec: &str, archive_id: &str) -> Result<Self> {
        let (vg, pool) = spec
            .split_once('/')
            .with_context(|| format!("'{spec}' is not VG/POOL"))?;
        if !valid_lvm_name(vg) || !valid_lvm_name(pool) {
            bail!("'{spec}' is not a valid VG/POOL name");
        }
        let p = LvmPool {
            vg: vg.into(),
            pool: pool.into(),
            archive_id: archive_id.into(),
        };
        let seg = p
            .lv_field(pool, "segtype")
            .with_context(|| format!("thin pool '{spec}'"))?;
        if seg != "thin-pool" {
            bail!("'{spec}' is a {seg} LV, not a thin pool");
        }
        Ok(p)
    }

    fn tag(&self) -> String {
        format!("sbk_{}", self.archive_id)
    }

    fn snap_name(&self, volume: &str, which: &str) -> String {
        format!("{volume}.sbk-{}-{which}", &self.archive_id[..8])
    }

    fn full(&self, lv: &str) -> String {
        format!("{}/{lv}", self.vg)
    }

    pub fn dev_path(&self, lv: &str) -> PathBuf {
        PathBuf::from(format!("/dev/{}/{lv}", self.vg))
    }

    fn tmeta(&self) -> String {
        format!("/dev/mapper/{}-{}_tmeta", dm(&self.vg), dm(&self.pool))
    }

    fn tpool(&self) -> String {
        format!("{}-{}-tpool", dm(&self.vg), dm(&self.pool))
    }

    /// Every LV of the volume group in one `lvs` call (each LVM command is
    /// slow, so the hot paths ask once and look things up here).
    fn report(&self) -> Result<std::collections::HashMap<String, Lv>> {
        let out = cmd::output(
            "lvs",
            &[
                "--noheadings",
                "--nosuffix",
                "--units",
                "b",
                "--separator",
                "|",
                "-o",
                "lv_name,lv_size,thin_id,lv_tags,pool_lv",
                &self.vg,
            ],
        )?;
        let mut m = std::collections::HashMap::new();
        for line in out.lines() {
            let f: Vec<&str> = line.trim().split('|').collect();
            if f.len() != 5 {
                bail!("unexpected lvs output line '{line}'");
            }
            let lv = Lv {
                size: f[1]
                    .trim()
                    .parse()
                    .with_context(|| format!("lvs size '{}'", f[1]))?,
                thin_id: f[2].trim().parse().ok(),
                tags: f[3]
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect(),
                pool: f[4].trim().to_string(),
            };
            m.insert(f[0].trim().to_string(), lv);
        }
        Ok(m)
    }

    fn lv_field(&self, lv: &str, field: &str) -> Result<String> {
        cmd::output(
            "lvs",
            &[
                "--noheadings",
                "--nosuffix",
                "--units",
                "b",
                "-o",
                field,
                &self.full(lv),
            ],
        )
    }

    pub fn exists(&self, lv: &str) -> bool {
        valid_lvm_name(lv) && self.lv_field(lv, "lv_name").is_ok()
    }

    /// Thin volumes of the pool that are not our snapshots.
    pub fn volumes(&self) -> Result<Vec<String>> {
        let out = cmd::output("lvs", &["--noheadings", "-o", "lv_name,pool_lv", &self.vg])?;
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let (name, pool) = (it.next()?, it.next()?);
                (pool == self.pool && !name.contains(".sbk-")).then(|| name.to_string())
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn remove_ours(&self, lv: &str) -> Result<()> {
        let lvs = self.report()?;
        self.remove_listed(lvs.get(lv), lv)
    }

    /// Removes `lv` (as listed in a report, if it exists) only if it
    /// carries our archive tag.
    fn remove_listed(&self, listed: Option<&Lv>, lv: &str) -> Result<()> {
        let Some(l) = listed else { return Ok(()) };
        if !l.tags.contains(&self.tag()) {
            bail!(
                "{} exists but is not tagged {}: not touching it",
                self.full(lv),
                self.tag()
            );
        }
        cmd::run("lvremove", &["-q", "-f", &self.full(lv)]).map(|_| ())
    }

    /// Snapshots `volume` and works out which chunks to read.
    pub fn prepare(&self, volume: &str, prev: Option<&str>, chunk_size: u64) -> Result<Snapshot> {
        let lvs = self.report()?;
        if !valid_lvm_name(volume) || lvs.get(volume).is_none_or(|l| l.pool != self.pool) {
            bail!(
                "volume '{volume}' not found in thin pool {}/{}",
                self.vg,
                self.pool
            );
        }
        let tick = self.snap_name(volume, "tick");
        let tock = self.snap_name(volume, "tock");
        self.remove_listed(lvs.get(&tock), &tock)?;
        cmd::run(
            "lvcreate",
            &[
                "-q",
                "-s",
                "-n",
                &tock,
                "--addtag",
                &self.tag(),
                &self.full(volume),
            ],
        )?;
        let res = self.plan(volume, &tick, &tock, prev, chunk_size);
        if res.is_err() {
            let _ = self.remove_ours(&tock);
        }
        res
    }

    fn plan(
        &self,
        volume: &str,
        tick: &str,
        tock: &str,
        prev: Option<&str>,
        chunk_size: u64,
    ) -> Result<Snapshot> {
        // Thin snapshots skip activation by default.
        cmd::run("lvchange", &["-q", "-ay", "-K", &self.full(tock)])?;
        let lvs = self.report()?;
        let new = lvs
            .get(tock)
            .with_context(|| format!("snapshot {} vanished", self.full(tock)))?;
        let size = new.size;
        let chunks = size.div_ceil(chunk_size);
        let base = match prev {
            Some(p) => lvs
                .get(tick)
                .filter(|t| t.tags.contains(&self.tag()) && t.tags.contains(&format!("sbks_{p}"))),
            None => None,
        };
        let new_id = new
            .thin_id
            .with_context(|| format!("{} has no thin id", self.full(tock)))?
            .to_string();
        let _msnap = MetaSnap::reserve(self)?;
        let tmeta = self.tmeta();
        let (plan, method) = if let Some(base) = base {
            let old_id = base
                .thin_id
                .with_context(|| format!("{} has no thin id", self.full(tick)))?
                .to_string();
            let mut changed = ChunkMap::new(chunks);
            let args = [
                "-m",
                "--snap1",
                old_id.as_str(),
                "--snap2",
                new_id.as_str(),
                tmeta.as_str(),
            ];
            let mut child = cmd::spawn("thin_delta", &args)?;
            let out = BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped"));
            let folded = thin::fold_delta(out, &mut changed, chunk_size, size);
            cmd::finish("thin_delta", &args, child)?;
            folded.with_context(|| format!("parsing thin_delta for '{volume}'"))?;
            mark_size_change(&mut changed, base.size, size, chunk_size);
            (Plan::Changed { changed }, "thin delta")
        } else {
            let mut data = ChunkMap::new(chunks);
            let args = ["-m", "--dev-id", new_id.as_str(), tmeta.as_str()];
            let mut child = cmd::spawn("thin_dump", &args)?;
            let out = BufReader::with_capacity(1 << 16, child.stdout.take().expect("piped"));
            let folded = thin::fold_dump(out, &mut data, chunk_size, size);
            cmd::finish("thin_dump", &args, child)?;
            folded.with_context(|| format!("parsing thin_dump for '{volume}'"))?;
            if prev.is_some() {
                (
                    Plan::Compare { data },
                    "thin snapshot, no base: hash compare",
                )
            } else {
                (Plan::Full { data }, "thin snapshot, mapped blocks")
            }
        };
        let dev = self.dev_path(tock);
        let file = File::open(&dev)
            .with_context(|| format!("unable to open snapshot '{}'", dev.display()))?;
        Ok(Snapshot {
            file,
            size,
            plan,
            method,
            mode: None,
        })
    }

    /// After the receiver acknowledged `session`: the new snapshot, tagged
    /// with the session, replaces the old one.
    pub fn rotate(&self, volume: &str, session: &str) -> Result<()> {
        let tick = self.snap_name(volume, "tick");
        let tock = self.snap_name(volume, "tock");
        let lvs = self.report()?;
        if !lvs.get(&tock).is_some_and(|l| l.tags.contains(&self.tag())) {
            return Ok(());
        }
        cmd::run(
            "lvchange",
            &[
                "-q",
                "--addtag",
                &format!("sbks_{session}"),
                &self.full(&tock),
            ],
        )?;
        self.remove_listed(lvs.get(&tick), &tick)?;
        cmd::run("lvrename", &["-q", &self.vg, &tock, &tick])?;
        // Tidying only: an inactive base snapshot is not a failed backup.
        let _ = cmd::run("lvchange", &["-q", "-an", &self.full(&tick)]);
        Ok(())
    }

    pub fn discard_new(&self, volume: &str) {
        let _ = self.remove_ours(&self.snap_name(volume, "tock"));
    }

    /// Drops both snapshots of a volume (when it leaves the configured set).
    pub fn forget(&self, volume: &str) -> Result<()> {
        self.remove_ours(&self.snap_name(volume, "tock"))?;
        self.remove_ours(&self.snap_name(volume, "tick"))
    }

    /// A new thin LV of `size` bytes for a restore, named `name`.
    pub fn create_volume(&self, name: &str, size: u64) -> Result<()> {
        if !valid_lvm_name(name) {
            bail!("'{name}' is not a valid LV name");
        }
        let pool = self.full(&self.pool);
        cmd::run(
            "lvcreate",
            &[
                "-q",
                "-V",
                &format!("{size}b"),
                "-T",
                &pool,
                "-n",
                name,
                "--addtag",
                &self.tag(),
            ],
        )?;
        Ok(())
    }

    pub fn remove_volume(&self, name: &str) -> Result<()> {
        cmd::run("lvremove", &["-q", "-f", &self.full(name)]).map(|_| ())
    }

    pub fn rename_volume(&self, from: &str, to: &str) -> Result<()> {
        cmd::run("lvrename", &["-q", &self.vg, from, to]).map(|_| ())
    }
}

/// A held pool metadata snapshot, released on drop (every path).
struct MetaSnap<'a> {
    pool: &'a LvmPool,
}

impl<'a> MetaSnap<'a> {
    fn reserve(pool: &'a LvmPool) -> Result<Self> {
        let tpool = pool.tpool();
        let reserve = || {
            cmd::run(
                "dmsetup",
                &["message", &tpool, "0", "reserve_metadata_snap"],
            )
        };
        if reserve().is_err() {
            // A snapshot left by a crash makes reserving fail (EBUSY).
            let _ = cmd::run(
                "dmsetup",
                &["message", &tpool, "0", "release_metadata_snap"],
            );
            reserve().context("reserving the pool's metadata snapshot")?;
        }
        Ok(MetaSnap { pool })
    }
}

impl Drop for MetaSnap<'_> {
    fn drop(&mut self) {
        let _ = cmd::run(
            "dmsetup",
            &["message", &self.pool.tpool(), "0", "release_metadata_snap"],
        );
    }
}
