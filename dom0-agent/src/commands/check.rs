//! `sparsebak arch-check`: the receiver re-reads and re-hashes every chunk
//! against its manifests; dom0 then compares the archive's sessions and
//! manifests with its own, entry by entry. Every problem is reported by
//! volume, session and address.

use crate::client::{at_most, Client};
use crate::context::Ctx;
use crate::meta::{ArchiveMeta, ManifestIter};
use anyhow::{anyhow, Context, Result};
use protocol::manifest::{Entry, ManifestReader};
use protocol::message::{Finding, FindingKind, Operation, SessionInfo, DATA_PART};
use protocol::names::display_safe;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

/// Most address-level problems listed per session; the rest are counted.
const PER_SESSION: usize = 20;

#[derive(Default)]
pub struct CheckReport {
    pub volumes: usize,
    pub sessions: usize,
    pub chunks_hashed: u64,
    /// Of the chunks the checked sessions hold, those stored by reference
    /// (dom0's records): each is a place that shares another's file, which
    /// the check reads like any chunk, so a reference whose file is gone
    /// (dangling) is a missing chunk of its session.
    pub referenced_chunks: u64,
    pub problems: Vec<String>,
    pub unlisted: u64,
    /// Chunks missing or damaged in the archive, by volume: the next
    /// backup of each re-sends them (see `record_damage`).
    pub damaged: std::collections::BTreeMap<String, Vec<(String, u64)>>,
}

impl CheckReport {
    fn add(&mut self, s: String) {
        self.problems.push(s);
    }

    /// Every problem, listed or not; `u64::MAX` means at least that many.
    pub fn total(&self) -> u64 {
        (self.problems.len() as u64).saturating_add(self.unlisted)
    }
}

/// A count for the text: a saturated one is a lower bound, and says so.
fn count(n: u64) -> String {
    if n == u64::MAX {
        format!("at least {n}")
    } else {
        n.to_string()
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn describe(f: &Finding) -> String {
    let what = match f.kind {
        FindingKind::Missing => "missing chunk",
        FindingKind::Corrupt => "corrupt chunk",
        FindingKind::Extra => "extra file",
        FindingKind::BadSession => "unreadable session",
    };
    let addr = f.addr.map_or(String::new(), |a| format!(" at {a:#x}"));
    format!(
        "archive: volume {} session {}: {what}{addr}: {}",
        display_safe(&f.volume),
        display_safe(&f.session),
        display_safe(&f.detail)
    )
}

pub fn check(meta: &ArchiveMeta, client: &mut Client, volume: Option<&str>) -> Result<CheckReport> {
    let mut rep = CheckReport::default();
    let remote = client.check(volume)?;
    rep.chunks_hashed = remote.checked;
    let mut per: std::collections::HashMap<(&str, &str), usize> = Default::default();
    for f in &remote.findings {
        if let (FindingKind::Missing | FindingKind::Corrupt, Some(a)) = (f.kind, f.addr) {
            rep.damaged
                .entry(f.volume.clone())
                .or_default()
                .push((f.session.clone(), a));
        }
        let n = per.entry((&f.volume, &f.session)).or_default();
        *n += 1;
        if *n <= PER_SESSION {
            rep.add(describe(f));
        } else {
            rep.unlisted = rep.unlisted.saturating_add(1);
        }
    }
    // Counts from the peer: saturated, never wrapped.
    rep.unlisted = rep.unlisted.saturating_add(remote.more);
    // The archive's own chain: its root must say what dom0's records say.
    let (root, _) = crate::catalog::fetch(client, &meta.keys, meta.root_cap()?)?;
    // The wrapped key: what connecting found (and put back), then both
    // copies as they are now, against dom0's record and the root's pin.
    for f in &client.key_findings {
        rep.add(format!("archive: {f}"));
    }
    let ours = meta.wrapped_key()?;
    for (b, got) in crate::keycheck::read_copies(client) {
        if ours.is_some() && got.as_ref().ok() != ours.as_ref() {
            rep.add(format!(
                "archive: dom0.{} is not the wrapped key dom0 wrote",
                b.name()
            ));
        }
    }
    match (&ours, root.key_hash) {
        (Some(k), Some(h)) if crate::keycheck::hash(k) == h => {}
        (Some(_), _) => rep.add(format!(
            "archive: the root (generation {}) does not pin the wrapped key dom0 wrote",
            root.generation
        )),
        (None, _) => rep.add(
            "dom0 holds no record of the archive's wrapped key (see the warning above)".into(),
        ),
    }
    let mut ours = crate::catalog::build(meta)?;
    (ours.generation, ours.written) = (root.generation, root.written);
    for v in &root.volumes {
        if volume.is_some_and(|x| x != v.name) {
            continue;
        }
        if ours.volume(&v.name) != Some(v) {
            rep.add(format!(
                "volume '{}': the archive's root (generation {}) differs from dom0's records",
                v.name, root.generation
            ));
        }
    }
    for o in &ours.volumes {
        if volume.is_none_or(|x| x == o.name) && root.volume(&o.name).is_none() {
            rep.add(format!(
                "volume '{}': in dom0's records but not in the archive's root",
                o.name
            ));
        }
    }
    let ours_vols = meta.volumes()?;
    let mut vols: BTreeSet<String> = ours_vols.iter().cloned().collect();
    vols.extend(client.volumes(at_most(ours_vols.len()))?);
    if let Some(v) = volume {
        vols.retain(|x| x == v);
    }
    for v in &vols {
        rep.volumes += 1;
        let ours = meta.sessions(v)?;
        let theirs = client.sessions(v, at_most(ours.len()))?;
        let by_name: HashMap<&str, &SessionInfo> =
            ours.iter().map(|s| (s.name.as_str(), s)).collect();
        let in_archive: HashSet<&str> = theirs.iter().map(|t| t.name.as_str()).collect();
        for s in &ours {
            if !in_archive.contains(s.name.as_str()) {
                rep.add(format!(
                    "volume '{v}' session {}: in dom0's metadata but not in the archive",
                    s.name
                ));
            }
        }
        for t in &theirs {
            let Some(s) = by_name.get(t.name.as_str()) else {
                rep.add(format!(
                    "volume '{v}' session {}: in the archive but unknown to dom0 (cannot be verified)",
                    display_safe(&t.name)
                ));
                continue;
            };
            rep.sessions += 1;
            rep.referenced_chunks += s.ref_chunks;
            if (s.volume_size, s.chunks, s.zero_chunks, &s.prev)
                != (t.volume_size, t.chunks, t.zero_chunks, &t.prev)
            {
                rep.add(format!(
                    "volume '{v}' session {}: the archive's info differs from dom0's (size {} vs {}, {} vs {} data chunks, {} vs {} zero chunks, previous session {} vs {})",
                    s.name, t.volume_size, s.volume_size, t.chunks, s.chunks, t.zero_chunks, s.zero_chunks,
                    t.prev.as_deref().unwrap_or("none"), s.prev.as_deref().unwrap_or("none")
                ));
            }
            compare_manifest(meta, client, v, &s.name, &mut rep)?;
        }
    }
    Ok(rep)
}

/// Reads the archive's manifest of one session over the connection and
/// compares it with dom0's, entry by entry.
fn compare_manifest(
    meta: &ArchiveMeta,
    client: &mut Client,
    volume: &str,
    session: &str,
    rep: &mut CheckReport,
) -> Result<()> {
    // The archive's copy should be dom0's byte for byte: more than that
    // plus one part is not read (a hostile stream could be endless).
    let cap = meta
        .manifest_len(volume, session)?
        .saturating_add(DATA_PART as u64);
    let mut stream = client.manifest(volume, session, cap)?;
    let label = format!("volume '{volume}' session {session}");
    let mut found = Found::default();
    match ManifestReader::new(&mut stream) {
        Err(e) => found.push(format!(
            "{label}: the archive's manifest is unreadable: {e}"
        )),
        Ok(r) => {
            let ours = meta.manifest(volume, session)?;
            diff_manifests(
                ours,
                r.map(|e| e.map_err(|err| anyhow!("{err}"))),
                &label,
                &mut found,
            )?;
        }
    }
    // Drain to the end of the stream so the connection stays usable.
    stream
        .drain()
        .with_context(|| format!("{label}: reading the archive's manifest"))?;
    for p in found.listed {
        rep.add(p);
    }
    if !found.addrs.is_empty() {
        rep.damaged
            .entry(volume.to_string())
            .or_default()
            .extend(found.addrs.into_iter().map(|a| (session.to_string(), a)));
    }
    rep.unlisted = rep.unlisted.saturating_add(found.more);
    Ok(())
}

/// Problems of one session: the first `PER_SESSION` as text, the rest
/// counted (a damaged or hostile manifest must not grow dom0's memory).
#[derive(Default)]
struct Found {
    listed: Vec<String>,
    more: u64,
    /// Addresses whose archive entry is wrong or missing (bounded by
    /// dom0's own manifest: only its addresses are kept).
    addrs: Vec<u64>,
}

impl Found {
    fn push(&mut self, s: String) {
        if self.listed.len() < PER_SESSION {
            self.listed.push(s);
        } else {
            self.more = self.more.saturating_add(1);
        }
    }
}

fn diff_manifests(
    ours: ManifestIter,
    theirs: impl Iterator<Item = Result<Entry>>,
    label: &str,
    out: &mut Found,
) -> Result<()> {
    let mut ours = ours.peekable();
    let mut theirs = theirs.peekable();
    loop {
        let a = match ours.peek() {
            Some(Ok(e)) => Some(*e),
            Some(Err(_)) => return Err(ours.next().expect("peeked").expect_err("err")),
            None => None,
        };
        let b = match theirs.peek() {
            Some(Ok(e)) => Some(*e),
            Some(Err(_)) => {
                let e = theirs.next().expect("peeked").expect_err("err");
                out.push(format!("{label}: the archive's manifest is damaged: {e}"));
                return Ok(());
            }
            None => None,
        };
        match (a, b) {
            (None, None) => return Ok(()),
            (Some(x), Some(y)) if x.addr == y.addr => {
                if x != y {
                    out.addrs.push(x.addr);
                    out.push(format!(
                        "{label}: chunk {:#x}: the archive's manifest entry differs from dom0's",
                        x.addr
                    ));
                }
                ours.next();
                theirs.next();
            }
            (Some(x), y) if y.is_none_or(|y| x.addr < y.addr) => {
                out.addrs.push(x.addr);
                out.push(format!(
                    "{label}: chunk {:#x}: in dom0's manifest, missing from the archive's",
                    x.addr
                ));
                ours.next();
            }
            (_, Some(y)) => {
                out.push(format!(
                    "{label}: chunk {:#x}: in the archive's manifest, not in dom0's",
                    y.addr
                ));
                theirs.next();
            }
            (Some(_), None) => unreachable!("covered above"),
        }
    }
}

/// Records in dom0 what the check found missing or damaged, so the next
/// backup of each volume re-sends it; returns what was recorded, by volume.
pub fn record_damage(meta: &ArchiveMeta, rep: &CheckReport) -> Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for (v, addrs) in &rep.damaged {
        if protocol::names::validate_volume_name(v).is_err() {
            continue; // an id dom0 does not know: nothing to re-send from
        }
        meta.record_damaged(v, addrs)?;
        let total = meta.damaged(v)?.len();
        if total > 0 {
            out.push((v.clone(), total));
        }
    }
    Ok(out)
}

/// The report as text, one problem a line, then a summary.
pub fn text(rep: &CheckReport) -> String {
    let mut s = String::new();
    for p in &rep.problems {
        let _ = writeln!(s, "{p}");
    }
    let total = rep.total();
    if rep.unlisted > 0 {
        let _ = writeln!(
            s,
            "... and {} more {}",
            count(rep.unlisted),
            plural(rep.unlisted, "problem")
        );
    }
    let _ = writeln!(
        s,
        "arch-check: {}, {}, {} hashed ({} by reference): {}",
        crate::units::count(rep.volumes as u64, "volume"),
        crate::units::count(rep.sessions as u64, "session"),
        crate::units::count(rep.chunks_hashed, "chunk"),
        rep.referenced_chunks,
        if rep.problems.is_empty() && rep.unlisted == 0 {
            "no problems".to_string()
        } else {
            format!("{} {}", count(total), plural(total, "problem"))
        }
    );
    s
}

/// `sparsebak arch-check`: exit status 1 if anything is wrong.
pub fn run(ctx: &Ctx, volume: Option<&str>) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    let mut client = ctx.connect(&dest, &meta, Operation::Admin)?;
    let rep = check(&meta, &mut client, volume)?;
    client.finish()?;
    crate::report::line(text(&rep).trim_end());
    let recorded = record_damage(&meta, &rep)?;
    for (v, n) in &recorded {
        crate::report::line(format!(
            "recorded {} of '{v}' as damaged: the next backup of '{v}' re-sends {}",
            crate::units::count(*n as u64, "chunk"),
            if *n == 1 { "it" } else { "them" }
        ));
    }
    crate::report::set("volumes", rep.volumes);
    crate::report::set("sessions", rep.sessions);
    crate::report::set("chunks_hashed", rep.chunks_hashed);
    crate::report::set("referenced_chunks", rep.referenced_chunks);
    crate::report::set("problems", &rep.problems);
    crate::report::set("unlisted_problems", rep.unlisted);
    crate::report::set(
        "damaged",
        recorded
            .iter()
            .map(|(v, n)| serde_json::json!({"volume": v, "chunks": n}))
            .collect::<Vec<_>>(),
    );
    Ok(if rep.problems.is_empty() && rep.unlisted == 0 {
        0
    } else {
        1
    })
}
