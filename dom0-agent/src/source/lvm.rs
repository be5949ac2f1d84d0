//! Volumes in an LVM thin pool (`--local VG/POOL`), as in Qubes' default
//! pool.
//!
//! Each volume keeps at most one *base*: a thin snapshot named
//! `VOL.sbk-ID8-tick` or `VOL.sbk-ID8-tock`, tagged `sbk_ARCHIVEID` and
//! `sbks_SESSION` (the session it holds). A backup run freezes all of its
//! volumes at once, in the other of the two names, each snapshot tagged
//! with the session it is about to become; changes since the base come
//! from `thin_delta` on one metadata snapshot of the pool, read while the
//! previous volumes' data is being sent. Snapshots without our archive tag
//! are never touched.
//!
//! Order of events, and why (LVM commands cost 50–100 ms each on a real
//! dom0, so a run of 40 volumes must not pay thirteen per volume):
//! 1. one `lvs` report of the volume group (kept until something changes);
//! 2. one `lvremove` of whatever stale snapshots of ours sit where the new
//!    ones go (left by a crash; none in steady state);
//! 3. one `lvcreate` per volume, the snapshot activated at creation (`-K`)
//!    and tagged with its session, so no rename and no re-tag is needed
//!    after the commit: a crash anywhere leaves snapshots whose tags say
//!    which session each holds;
//! 4. one `lvs` for the new thin ids, one metadata snapshot reserved;
//! 5. one `thin_delta` (or `thin_dump`) per volume, on a thread, in order;
//!    the metadata snapshot is released after the last;
//! 6. at the end of the run ([`LvmPool::finish`]): one `lvremove` of the old
//!    bases of committed volumes and the new snapshots of failed ones, and
//!    one `lvchange -an` of the bases kept.
//!
//! That is one `lvcreate` and one `thin_delta` per volume plus six
//! commands per run.

use super::cmd;
use super::file::mark_size_change;
use super::thin;
use super::{Plan, Snapshot, Want};
use crate::chunkmap::ChunkMap;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::{mpsc, Mutex};

/// What `lvs` says about one LV.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lv {
    pub size: u64,
    pub thin_id: Option<u64>,
    pub tags: Vec<String>,
    pub pool: String,
    pub segtype: String,
}

type Listing = HashMap<String, Lv>;

/// The names and tags of one pool and archive (cheap to clone into the
/// planning thread).
#[derive(Debug, Clone)]
struct Names {
    vg: String,
    pool: String,
    archive_id: String,
}

impl Names {
    fn tag(&self) -> String {
        format!("sbk_{}", self.archive_id)
    }

    fn snap_name(&self, volume: &str, which: &str) -> String {
        format!("{volume}.sbk-{}-{which}", &self.archive_id[..8])
    }

    fn full(&self, lv: &str) -> String {
        format!("{}/{lv}", self.vg)
    }

    fn dev_path(&self, lv: &str) -> PathBuf {
        PathBuf::from(format!("/dev/{}/{lv}", self.vg))
    }

    fn tmeta(&self) -> String {
        format!("/dev/mapper/{}-{}_tmeta", dm(&self.vg), dm(&self.pool))
    }

    fn tpool(&self) -> String {
        format!("{}-{}-tpool", dm(&self.vg), dm(&self.pool))
    }
}

pub struct LvmPool {
    names: Names,
    /// The volume group's LVs as last listed; None once something changed.
    listed: Mutex<Option<Listing>>,
    /// Snapshots of ours to remove at `finish`, in one command.
    doomed: Mutex<Vec<String>>,
    /// Bases to deactivate at `finish`, in one command.
    kept: Mutex<Vec<String>>,
    /// The new snapshot of each volume frozen in this run.
    fresh: Mutex<HashMap<String, String>>,
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

/// Where a volume's snapshots go in one run, decided from the listing.
#[derive(Debug, PartialEq, Eq)]
pub struct Slots {
    /// The snapshot holding session `prev`, if there is exactly one.
    pub base: Option<String>,
    /// The name the new snapshot takes.
    pub new: String,
    /// Snapshots of ours to remove before the new one is made.
    pub stale: Vec<String>,
}

/// Decides the slots of `volume` (pure, table-tested): the base is the one
/// of our two names tagged with the previous session; the new snapshot
/// takes the other name; everything else of ours goes first, so that no
/// two snapshots of a volume can ever claim the same session.
pub fn slots(listed: &Listing, names: [String; 2], tag: &str, prev: Option<&str>) -> Result<Slots> {
    let mut ours = Vec::new();
    for n in &names {
        if let Some(l) = listed.get(n) {
            if !l.tags.iter().any(|t| t == tag) {
                bail!("'{n}' exists but is not tagged {tag}: not touching it");
            }
            ours.push(n.clone());
        }
    }
    let base = prev.and_then(|p| {
        let want = format!("sbks_{p}");
        ours.iter()
            .find(|n| listed[n.as_str()].tags.contains(&want))
            .cloned()
    });
    let new = match &base {
        Some(b) if *b == names[1] => names[0].clone(),
        _ => names[1].clone(),
    };
    let stale = ours
        .into_iter()
        .filter(|n| Some(n) != base.as_ref())
        .collect();
    Ok(Slots { base, new, stale })
}

/// Parses `lvs --separator |` output of
/// `lv_name,lv_size,thin_id,lv_tags,pool_lv,segtype`.
pub fn parse_listing(out: &str) -> Result<Listing> {
    let mut m = HashMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.trim().split('|').collect();
        if f.len() != 6 {
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
            segtype: f[5].trim().to_string(),
        };
        m.insert(f[0].trim().to_string(), lv);
    }
    Ok(m)
}

/// A volume frozen by `freeze`, waiting for its plan.
struct Frozen {
    volume: String,
    new: String,
    /// The new snapshot as listed right after it was made.
    lv: Lv,
    base: Option<Lv>,
    prev: bool,
}

/// The plans of a run's volumes, in the order asked, made on a thread
/// while the caller sends the earlier volumes.
pub struct Plans {
    rx: Option<mpsc::Receiver<Result<Snapshot>>>,
    early: std::vec::IntoIter<Option<anyhow::Error>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Iterator for Plans {
    type Item = Result<Snapshot>;

    fn next(&mut self) -> Option<Result<Snapshot>> {
        match self.early.next()? {
            Some(e) => Some(Err(e)),
            None => Some(match self.rx.as_ref().map(|rx| rx.recv()) {
                Some(Ok(r)) => r,
                _ => Err(anyhow::anyhow!("the planning thread ended early")),
            }),
        }
    }
}

impl Drop for Plans {
    /// Stops the planner and waits for it, so the pool's metadata snapshot
    /// is released before anything else touches the pool.
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
            names: Names {
                vg: vg.into(),
                pool: pool.into(),
                archive_id: archive_id.into(),
            },
            listed: Mutex::new(None),
            doomed: Mutex::new(Vec::new()),
            kept: Mutex::new(Vec::new()),
            fresh: Mutex::new(HashMap::new()),
        };
        let seg = p
            .report()
            .with_context(|| format!("thin pool '{spec}'"))?
            .get(pool)
            .map(|l| l.segtype.clone())
            .with_context(|| format!("thin pool '{spec}': no LV '{pool}' in '{vg}'"))?;
        if seg != "thin-pool" {
            bail!("'{spec}' is a {seg} LV, not a thin pool");
        }
        Ok(p)
    }

    /// The volume group's name.
    pub fn vg(&self) -> &str {
        &self.names.vg
    }

    pub fn dev_path(&self, lv: &str) -> PathBuf {
        self.names.dev_path(lv)
    }

    /// Every LV of the volume group, from one `lvs` call, kept until a
    /// command of ours changes the group.
    fn report(&self) -> Result<Listing> {
        let mut cached = self.listed.lock().expect("not poisoned");
        if let Some(l) = &*cached {
            return Ok(l.clone());
        }
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
                "lv_name,lv_size,thin_id,lv_tags,pool_lv,segtype",
                &self.names.vg,
            ],
        )?;
        let l = parse_listing(&out)?;
        *cached = Some(l.clone());
        Ok(l)
    }

    /// Runs an LVM command that changes the group (the listing is stale
    /// after it, whether or not it succeeded).
    fn change(&self, tool: &str, args: &[&str]) -> Result<()> {
        *self.listed.lock().expect("not poisoned") = None;
        cmd::run(tool, args).map(|_| ())
    }

    pub fn exists(&self, lv: &str) -> bool {
        valid_lvm_name(lv) && self.report().is_ok_and(|l| l.contains_key(lv))
    }

    /// Thin volumes of the pool that are not our snapshots.
    pub fn volumes(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .report()?
            .into_iter()
            .filter(|(name, l)| l.pool == self.names.pool && !name.contains(".sbk-"))
            .map(|(name, _)| name)
            .collect();
        v.sort();
        Ok(v)
    }

    fn both_names(&self, volume: &str) -> [String; 2] {
        [
            self.names.snap_name(volume, "tick"),
            self.names.snap_name(volume, "tock"),
        ]
    }

    /// Snapshots every volume of `wants` (one point in time for all of
    /// them) and starts working out their plans; the plans come in order.
    pub fn freeze(&self, wants: Vec<Want>, chunk_size: u64) -> Plans {
        let mut early: Vec<Option<anyhow::Error>> = Vec::new();
        let mut frozen = Vec::new();
        let res = self.snapshot_all(&wants, &mut early, &mut frozen);
        if let Err(e) = res {
            // Nothing could be frozen: every volume fails with the cause.
            let msg = format!("{e:#}");
            return Plans {
                rx: None,
                early: wants
                    .iter()
                    .map(|_| Some(anyhow::anyhow!("{msg}")))
                    .collect::<Vec<_>>()
                    .into_iter(),
                thread: None,
            };
        }
        let names = self.names.clone();
        let (tx, rx) = mpsc::sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("sbk-plan".into())
            .spawn(move || plan_all(&names, frozen, chunk_size, tx))
            .expect("spawning the planning thread");
        Plans {
            rx: Some(rx),
            early: early.into_iter(),
            thread: Some(thread),
        }
    }

    /// Steps 1–4 of the module's order; a volume that cannot be frozen has
    /// its error in `early`, the others a `None` there and a `Frozen`.
    fn snapshot_all(
        &self,
        wants: &[Want],
        early: &mut Vec<Option<anyhow::Error>>,
        frozen: &mut Vec<Frozen>,
    ) -> Result<()> {
        let listed = self.report()?;
        let tag = self.names.tag();
        let mut chosen = Vec::new();
        let mut stale = Vec::new();
        for w in wants {
            let r = if !valid_lvm_name(&w.volume)
                || listed
                    .get(&w.volume)
                    .is_none_or(|l| l.pool != self.names.pool)
            {
                Err(anyhow::anyhow!(
                    "volume '{}' not found in thin pool {}/{}",
                    w.volume,
                    self.names.vg,
                    self.names.pool
                ))
            } else {
                slots(&listed, self.both_names(&w.volume), &tag, w.base.as_deref())
            };
            match r {
                Ok(s) => {
                    stale.extend(s.stale.iter().map(|n| self.names.full(n)));
                    chosen.push(Some(s));
                }
                Err(e) => {
                    early.push(Some(e));
                    chosen.push(None);
                    continue;
                }
            }
            early.push(None);
        }
        // This run decides everything about these volumes' snapshots: what
        // an earlier step (settling a run cut before) left to do for them
        // is superseded.
        let mine: Vec<String> = wants
            .iter()
            .flat_map(|w| self.both_names(&w.volume))
            .collect();
        self.doomed
            .lock()
            .expect("not poisoned")
            .retain(|n| !mine.contains(n));
        self.kept
            .lock()
            .expect("not poisoned")
            .retain(|n| !mine.contains(n));
        if !stale.is_empty() {
            let mut args = vec!["-q", "-f"];
            args.extend(stale.iter().map(String::as_str));
            self.change("lvremove", &args)
                .context("removing stale snapshots")?;
        }
        let mut made = Vec::new();
        for (i, w) in wants.iter().enumerate() {
            let Some(s) = chosen[i].take() else { continue };
            let stag = format!("sbks_{}", w.session);
            let r = self.change(
                "lvcreate",
                &[
                    "-q",
                    "-s",
                    "-K",
                    "-n",
                    &s.new,
                    "--addtag",
                    &tag,
                    "--addtag",
                    &stag,
                    &self.names.full(&w.volume),
                ],
            );
            match r {
                Ok(()) => {
                    self.fresh
                        .lock()
                        .expect("not poisoned")
                        .insert(w.volume.clone(), s.new.clone());
                    made.push((i, s));
                }
                Err(e) => early[i] = Some(e.context(format!("snapshot of '{}'", w.volume))),
            }
        }
        let listed = self.report()?;
        for (i, s) in made {
            let w = &wants[i];
            let Some(lv) = listed.get(&s.new).cloned() else {
                early[i] = Some(anyhow::anyhow!(
                    "snapshot {} vanished",
                    self.names.full(&s.new)
                ));
                continue;
            };
            frozen.push(Frozen {
                volume: w.volume.clone(),
                base: s.base.as_ref().and_then(|b| listed.get(b).cloned()),
                lv,
                new: s.new,
                prev: w.base.is_some(),
            });
        }
        Ok(())
    }

    /// After the receiver acknowledged `session`: the snapshot tagged with
    /// it is the base, the volume's other one goes at `finish`.
    pub fn rotate(&self, volume: &str, session: &str) -> Result<()> {
        let listed = self.report()?;
        let want = format!("sbks_{session}");
        let tag = self.names.tag();
        let [a, b] = self.both_names(volume);
        let holds = |n: &str| {
            listed
                .get(n)
                .is_some_and(|l| l.tags.contains(&tag) && l.tags.contains(&want))
        };
        let (keep, old) = if holds(&a) {
            (a, b)
        } else if holds(&b) {
            (b, a)
        } else {
            return Ok(()); // no snapshot holds it: the next run compares
        };
        if listed.get(&old).is_some_and(|l| l.tags.contains(&tag)) {
            self.doomed.lock().expect("not poisoned").push(old);
        }
        self.kept.lock().expect("not poisoned").push(keep);
        Ok(())
    }

    /// Drops the snapshot this run made of `volume` (at `finish`).
    pub fn discard_new(&self, volume: &str) {
        if let Some(n) = self.fresh.lock().expect("not poisoned").remove(volume) {
            self.doomed.lock().expect("not poisoned").push(n);
        }
    }

    /// Step 6: one `lvremove` of what the run doomed, one `lvchange -an`
    /// of the bases it kept (tidying: a failure is reported, never fatal).
    pub fn finish(&self) {
        let doomed: Vec<String> = std::mem::take(&mut *self.doomed.lock().expect("not poisoned"));
        let kept: Vec<String> = std::mem::take(&mut *self.kept.lock().expect("not poisoned"));
        // A new snapshot neither kept nor doomed (its volume's run stopped
        // early) is left active: the next run removes or uses it.
        self.fresh.lock().expect("not poisoned").clear();
        if !doomed.is_empty() {
            let mut args = vec!["-q".to_string(), "-f".to_string()];
            args.extend(doomed.iter().map(|n| self.names.full(n)));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = self.change("lvremove", &args) {
                crate::report::warn(format!("removing old snapshots: {e:#}"));
            }
        }
        let kept: Vec<String> = kept
            .iter()
            .filter(|n| !doomed.contains(n))
            .map(|n| self.names.full(n))
            .collect();
        if !kept.is_empty() {
            let mut args = vec!["-q", "-an"];
            args.extend(kept.iter().map(String::as_str));
            // An inactive base is tidiness, not a failed backup.
            let _ = self.change("lvchange", &args);
        }
    }

    /// Drops both snapshots of a volume (when it leaves the configured set).
    pub fn forget(&self, volume: &str) -> Result<()> {
        let listed = self.report()?;
        let tag = self.names.tag();
        let mut gone = Vec::new();
        for n in self.both_names(volume) {
            if let Some(l) = listed.get(&n) {
                if !l.tags.contains(&tag) {
                    bail!(
                        "{} exists but is not tagged {tag}: not touching it",
                        self.names.full(&n)
                    );
                }
                gone.push(self.names.full(&n));
            }
        }
        if gone.is_empty() {
            return Ok(());
        }
        let mut args = vec!["-q", "-f"];
        args.extend(gone.iter().map(String::as_str));
        self.change("lvremove", &args)
    }

    /// A new thin LV of `size` bytes for a restore, named `name`.
    pub fn create_volume(&self, name: &str, size: u64) -> Result<()> {
        if !valid_lvm_name(name) {
            bail!("'{name}' is not a valid LV name");
        }
        let pool = self.names.full(&self.names.pool);
        self.change(
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
                &self.names.tag(),
            ],
        )
    }

    pub fn remove_volume(&self, name: &str) -> Result<()> {
        self.change("lvremove", &["-q", "-f", &self.names.full(name)])
    }

    pub fn rename_volume(&self, from: &str, to: &str) -> Result<()> {
        self.change("lvrename", &["-q", &self.names.vg, from, to])
    }
}

/// Step 5, on the planning thread: the pool's metadata snapshot is held
/// for all volumes; each plan is sent as soon as it is made (the channel
/// is small, so at most a few snapshots wait open).
fn plan_all(
    names: &Names,
    frozen: Vec<Frozen>,
    chunk_size: u64,
    tx: mpsc::SyncSender<Result<Snapshot>>,
) {
    if frozen.is_empty() {
        return;
    }
    let msnap = MetaSnap::reserve(names);
    for f in frozen {
        let r = match &msnap {
            Ok(_) => plan(names, &f, chunk_size),
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        if tx.send(r).is_err() {
            return; // the run stopped
        }
    }
}

/// One volume's plan: `thin_delta` against its base, or `thin_dump` of the
/// new snapshot where there is none.
fn plan(names: &Names, f: &Frozen, chunk_size: u64) -> Result<Snapshot> {
    let volume = &f.volume;
    let size = f.lv.size;
    let chunks = size.div_ceil(chunk_size);
    let new_id =
        f.lv.thin_id
            .with_context(|| format!("{} has no thin id", names.full(&f.new)))?
            .to_string();
    let tmeta = names.tmeta();
    let (plan, method) = if let Some(base) = &f.base {
        let old_id = base
            .thin_id
            .with_context(|| format!("the base snapshot of '{volume}' has no thin id"))?
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
        if f.prev {
            (
                Plan::Compare { data },
                "thin snapshot, no base: hash compare",
            )
        } else {
            (Plan::Full { data }, "thin snapshot, mapped blocks")
        }
    };
    let dev = names.dev_path(&f.new);
    let file =
        File::open(&dev).with_context(|| format!("unable to open snapshot '{}'", dev.display()))?;
    Ok(Snapshot {
        file,
        size,
        plan,
        method,
        mode: None,
    })
}

/// A held pool metadata snapshot, released on drop (every path).
struct MetaSnap {
    tpool: String,
}

impl MetaSnap {
    fn reserve(names: &Names) -> Result<Self> {
        let tpool = names.tpool();
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
        Ok(MetaSnap { tpool })
    }
}

impl Drop for MetaSnap {
    fn drop(&mut self) {
        let _ = cmd::run(
            "dmsetup",
            &["message", &self.tpool, "0", "release_metadata_snap"],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "sbk_0123456789abcdef";

    fn lv(tags: &[&str]) -> Lv {
        Lv {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..Lv::default()
        }
    }

    fn names() -> [String; 2] {
        ["v.sbk-01234567-tick".into(), "v.sbk-01234567-tock".into()]
    }

    fn listing(entries: &[(&str, &[&str])]) -> Listing {
        entries
            .iter()
            .map(|(n, t)| (format!("v.sbk-01234567-{n}"), lv(t)))
            .collect()
    }

    #[test]
    fn slots_table() {
        let s2 = "sbks_S_000000000002";
        let s3 = "sbks_S_000000000003";
        let n = |x: &str| format!("v.sbk-01234567-{x}");
        // (listing, prev) -> (base, new, stale)
        type Case<'a> = (
            &'a [(&'a str, &'a [&'a str])],
            Option<&'a str>,
            Option<&'a str>,
            &'a str,
            &'a [&'a str],
        );
        let cases: &[Case] = &[
            // first backup: nothing there
            (&[], None, None, "tock", &[]),
            // steady state, base in either name: the new one takes the other
            (
                &[("tick", &[TAG, s2])],
                Some("S_000000000002"),
                Some("tick"),
                "tock",
                &[],
            ),
            (
                &[("tock", &[TAG, s2])],
                Some("S_000000000002"),
                Some("tock"),
                "tick",
                &[],
            ),
            // crash after the commit, before finish: base and the older one
            (
                &[("tick", &[TAG, s2]), ("tock", &[TAG, s3])],
                Some("S_000000000003"),
                Some("tock"),
                "tick",
                &["tick"],
            ),
            // crash before the commit: the uncommitted one is stale
            (
                &[("tick", &[TAG, s2]), ("tock", &[TAG, s3])],
                Some("S_000000000002"),
                Some("tick"),
                "tock",
                &["tock"],
            ),
            // no base (lost, or --resend-all): everything of ours goes
            (
                &[("tick", &[TAG, s3]), ("tock", &[TAG, s2])],
                Some("S_000000000009"),
                None,
                "tock",
                &["tick", "tock"],
            ),
            (&[("tick", &[TAG, s2])], None, None, "tock", &["tick"]),
            // written by an older version: the base tagged, a stale untagged tock
            (
                &[("tick", &[TAG, s2]), ("tock", &[TAG])],
                Some("S_000000000002"),
                Some("tick"),
                "tock",
                &["tock"],
            ),
        ];
        for (i, (l, prev, base, new, stale)) in cases.iter().enumerate() {
            let got = slots(&listing(l), names(), TAG, *prev).unwrap();
            let mut want_stale: Vec<String> = stale.iter().map(|x| n(x)).collect();
            let mut got_stale = got.stale.clone();
            want_stale.sort();
            got_stale.sort();
            assert_eq!(got.base, base.map(n), "case {i}");
            assert_eq!(got.new, n(new), "case {i}");
            assert_eq!(got_stale, want_stale, "case {i}");
            assert!(Some(&got.new) != got.base.as_ref(), "case {i}");
        }
    }

    #[test]
    fn a_snapshot_name_that_is_not_ours_is_refused() {
        let l = listing(&[("tock", &["someone_else"])]);
        let e = slots(&l, names(), TAG, None).unwrap_err().to_string();
        assert!(
            e.contains("v.sbk-01234567-tock") && e.contains("not tagged"),
            "{e}"
        );
    }

    #[test]
    fn listing_is_parsed_and_bad_lines_are_refused() {
        let out = "  pool|1073741824||||thin-pool\n  work-private|50331648|1|sbk_x,sbks_S_000000000001|pool|thin\n";
        let l = parse_listing(out).unwrap();
        assert_eq!(l["pool"].segtype, "thin-pool");
        assert_eq!(l["pool"].thin_id, None);
        let w = &l["work-private"];
        assert_eq!(
            (w.size, w.thin_id, w.pool.as_str()),
            (50331648, Some(1), "pool")
        );
        assert_eq!(w.tags, ["sbk_x", "sbks_S_000000000001"]);
        assert!(parse_listing("a|1|2").is_err());
        assert!(parse_listing("a|x|1||pool|thin").is_err());
    }
}
