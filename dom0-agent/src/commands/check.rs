//! `sparsebak arch-check`: the receiver re-reads and re-hashes every chunk
//! against its manifests; dom0 then compares the archive's sessions and
//! manifests with its own, entry by entry. Every problem is reported by
//! volume, session and address.

use crate::client::Client;
use crate::context::Ctx;
use crate::meta::{ArchiveMeta, ManifestIter};
use anyhow::{anyhow, Result};
use protocol::manifest::{Entry, ManifestReader};
use protocol::message::{Finding, FindingKind, Operation, SessionInfo};
use protocol::names::display_safe;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Most address-level problems listed per session; the rest are counted.
const PER_SESSION: usize = 20;

#[derive(Default)]
pub struct CheckReport {
    pub volumes: usize,
    pub sessions: usize,
    pub chunks_hashed: u64,
    pub problems: Vec<String>,
    pub unlisted: u64,
}

impl CheckReport {
    fn add(&mut self, s: String) {
        self.problems.push(s);
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
        let n = per.entry((&f.volume, &f.session)).or_default();
        *n += 1;
        if *n <= PER_SESSION {
            rep.add(describe(f));
        } else {
            rep.unlisted += 1;
        }
    }
    rep.unlisted += remote.more;
    let listing = client.list(None)?;
    let mut vols: BTreeSet<String> = meta.volumes()?.into_iter().collect();
    vols.extend(listing.iter().map(|v| v.name.clone()));
    if let Some(v) = volume {
        vols.retain(|x| x == v);
    }
    for v in &vols {
        rep.volumes += 1;
        let ours = meta.sessions(v)?;
        let theirs: Vec<SessionInfo> = listing
            .iter()
            .filter(|l| &l.name == v)
            .flat_map(|l| l.sessions.clone())
            .collect();
        for s in &ours {
            if !theirs.iter().any(|t| t.name == s.name) {
                rep.add(format!(
                    "volume '{v}' session {}: in dom0's metadata but not in the archive",
                    s.name
                ));
            }
        }
        for t in &theirs {
            let Some(s) = ours.iter().find(|s| s.name == t.name) else {
                rep.add(format!(
                    "volume '{v}' session {}: in the archive but unknown to dom0 (cannot be verified)",
                    display_safe(&t.name)
                ));
                continue;
            };
            rep.sessions += 1;
            if (s.volume_size, s.chunks, s.zero_chunks, &s.prev)
                != (t.volume_size, t.chunks, t.zero_chunks, &t.prev)
            {
                rep.add(format!(
                    "volume '{v}' session {}: the archive's info differs from dom0's (size {} vs {}, {} vs {} data chunks, {} vs {} zero chunks, prev {:?} vs {:?})",
                    s.name, t.volume_size, s.volume_size, t.chunks, s.chunks, t.zero_chunks, s.zero_chunks, t.prev, s.prev
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
    let mut stream = client.manifest(volume, session)?;
    let label = format!("volume '{volume}' session {session}");
    let theirs: Vec<String> = {
        let reader = ManifestReader::new(&mut stream);
        let mut found = Vec::new();
        match reader {
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
        found
    };
    // Drain to the end of the stream so the connection stays usable.
    stream.drain()?;
    let n = theirs.len();
    for p in theirs.into_iter().take(PER_SESSION) {
        rep.add(p);
    }
    rep.unlisted += n.saturating_sub(PER_SESSION) as u64;
    Ok(())
}

fn diff_manifests(
    ours: ManifestIter,
    theirs: impl Iterator<Item = Result<Entry>>,
    label: &str,
    out: &mut Vec<String>,
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
                    out.push(format!(
                        "{label}: chunk {:#x}: the archive's manifest entry differs from dom0's",
                        x.addr
                    ));
                }
                ours.next();
                theirs.next();
            }
            (Some(x), y) if y.is_none_or(|y| x.addr < y.addr) => {
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

/// The report as text, one problem a line, then a summary.
pub fn text(rep: &CheckReport) -> String {
    let mut s = String::new();
    for p in &rep.problems {
        let _ = writeln!(s, "{p}");
    }
    if rep.unlisted > 0 {
        let _ = writeln!(s, "... and {} more problems", rep.unlisted);
    }
    let _ = writeln!(
        s,
        "arch-check: {} volumes, {} sessions, {} chunks hashed: {}",
        rep.volumes,
        rep.sessions,
        rep.chunks_hashed,
        if rep.problems.is_empty() && rep.unlisted == 0 {
            "no problems".to_string()
        } else {
            format!("{} problems", rep.problems.len() as u64 + rep.unlisted)
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
    print!("{}", text(&rep));
    Ok(if rep.problems.is_empty() && rep.unlisted == 0 {
        0
    } else {
        1
    })
}
