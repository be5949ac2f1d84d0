//! `list`: per volume, what dom0's records hold (the sessions it can
//! verify) and, unless `--offline`, what the archive holds, and where the
//! two disagree. An archive out of reach is an error that says so: dom0's
//! records alone could describe an archive that is no longer there.

use crate::client::{at_most, Client};
use crate::context::Ctx;
use crate::meta::ArchiveMeta;
use crate::report;
use crate::units::{count, human};
use anyhow::{Context, Result};
use protocol::message::{Operation, SessionInfo};
use serde::Serialize;
use std::collections::BTreeSet;
use std::fmt::Write;

#[derive(Serialize)]
pub struct VolumeRow {
    pub name: String,
    /// dom0's sessions, oldest first (as the protocol's `SessionInfo`:
    /// name, time, volume_size, chunks, zero_chunks, stored_bytes, prev).
    pub sessions: Vec<SessionInfo>,
    /// The archive's session names (None with --offline).
    pub archive_sessions: Option<Vec<String>>,
    /// Where dom0 and the archive disagree (empty with --offline).
    pub disagreements: Vec<String>,
    /// Chunks recorded as damaged in the archive, re-sent by the next backup.
    pub damaged_chunks: usize,
    /// The volume's dedup group (None: its own scope).
    pub dedup_group: Option<String>,
    /// Bytes of chunk envelopes the volume's sessions stored (sent), and
    /// plaintext bytes they hold by reference to chunks already stored.
    pub stored_bytes: u64,
    pub referenced_bytes: u64,
}

#[derive(Serialize)]
pub struct Listing {
    pub archive: String,
    pub dest: String,
    pub chunk_size: u32,
    pub compression: String,
    pub encrypted: bool,
    /// The archive was asked (false: `--offline`, dom0's records only).
    pub online: bool,
    /// The configured set (`add`), what `backup` takes with no names.
    pub configured: Vec<String>,
    /// Configured volumes the source lacks (None: no `--local` given).
    pub missing: Option<Vec<String>>,
    pub volumes: Vec<VolumeRow>,
    /// Volumes the archive has and dom0 has no record of (`id:HEX`).
    pub unknown_to_dom0: Vec<String>,
    /// The volumes' sums: envelope bytes stored, plaintext bytes held by
    /// reference instead.
    pub stored_bytes: u64,
    pub referenced_bytes: u64,
}

/// dom0's records, and with a client the archive's listing compared.
pub fn build(
    meta: &ArchiveMeta,
    volume: Option<&str>,
    mut client: Option<&mut Client>,
    missing: Option<Vec<String>>,
) -> Result<Listing> {
    let mut names: Vec<String> = match volume {
        Some(v) => vec![v.to_string()],
        None => {
            let mut v = meta.volumes()?;
            v.extend(meta.rec.volumes.iter().cloned());
            v
        }
    };
    let mut unknown = Vec::new();
    if let (Some(c), None) = (client.as_deref_mut(), volume) {
        let known: BTreeSet<String> = names.iter().cloned().collect();
        for v in c.volumes(at_most(known.len()))? {
            if v.starts_with("id:") {
                unknown.push(v);
            } else if !known.contains(&v) {
                names.push(v);
            }
        }
    }
    names.sort();
    names.dedup();
    let mut volumes = Vec::new();
    for v in names {
        let ours = meta.sessions(&v)?;
        let mut disagreements = Vec::new();
        let archive_sessions = match client.as_deref_mut() {
            None => None,
            Some(c) => {
                let theirs: Vec<String> = c
                    .sessions(&v, at_most(ours.len()))?
                    .into_iter()
                    .map(|s| s.name)
                    .collect();
                let t: BTreeSet<&str> = theirs.iter().map(String::as_str).collect();
                let o: BTreeSet<&str> = ours.iter().map(|s| s.name.as_str()).collect();
                for s in o.difference(&t) {
                    disagreements.push(format!(
                        "session {s} is in dom0's records but not in the archive"
                    ));
                }
                for s in t.difference(&o) {
                    disagreements.push(format!(
                        "session {} is in the archive but not in dom0's records (cannot be verified)",
                        protocol::names::display_safe(s)
                    ));
                }
                Some(theirs)
            }
        };
        volumes.push(VolumeRow {
            damaged_chunks: meta.damaged(&v)?.len(),
            dedup_group: meta.volume_group(&v)?,
            stored_bytes: ours.iter().map(|s| s.stored_bytes).sum(),
            referenced_bytes: ours.iter().map(|s| s.ref_bytes).sum(),
            name: v,
            sessions: ours,
            archive_sessions,
            disagreements,
        });
    }
    Ok(Listing {
        stored_bytes: volumes.iter().map(|v| v.stored_bytes).sum(),
        referenced_bytes: volumes.iter().map(|v| v.referenced_bytes).sum(),
        archive: meta.rec.id.clone(),
        dest: meta.rec.dest.clone(),
        chunk_size: meta.params.chunk_size,
        compression: meta.params.compression.to_string(),
        encrypted: meta.rec.encrypt,
        online: client.is_some(),
        configured: meta.rec.volumes.clone(),
        missing,
        volumes,
        unknown_to_dom0: unknown,
    })
}

pub fn text(l: &Listing) -> String {
    let mut s = format!(
        "archive {} at {} (chunk size {}, {}, {})\n",
        l.archive,
        l.dest,
        human(l.chunk_size as u64),
        l.compression,
        if l.encrypted {
            "encrypted"
        } else {
            "not encrypted"
        }
    );
    if !l.online {
        let _ = writeln!(
            s,
            "OFFLINE: dom0's records only; the archive was not asked and may differ"
        );
    }
    let _ = writeln!(
        s,
        "configured: {}",
        if l.configured.is_empty() {
            "(none)".to_string()
        } else {
            l.configured.join(" ")
        }
    );
    if let Some(missing) = l.missing.as_ref().filter(|m| !m.is_empty()) {
        let _ = writeln!(
            s,
            "MISSING from the source (configured but not present): {}",
            missing.join(" ")
        );
    }
    for v in &l.volumes {
        let mark = if l.missing.as_ref().is_some_and(|m| m.contains(&v.name)) {
            " [missing]"
        } else {
            ""
        };
        let archive = match &v.archive_sessions {
            Some(_) if v.disagreements.is_empty() => ", all in the archive".to_string(),
            Some(a) => format!(", the archive has {}", count(a.len() as u64, "session")),
            None => String::new(),
        };
        let group = match &v.dedup_group {
            Some(g) => format!(", dedup group '{g}'"),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "{}{mark}: {}{archive}{group}, stored {}, by reference {}",
            v.name,
            count(v.sessions.len() as u64, "session"),
            human(v.stored_bytes),
            human(v.referenced_bytes)
        );
        for x in &v.sessions {
            let _ = writeln!(
                s,
                "  {}  {}  size {:>10}  {:>7} chunks {:>6} zero  stored {}{}",
                x.name,
                crate::timefmt::format_local(x.time),
                human(x.volume_size),
                x.chunks,
                x.zero_chunks,
                human(x.stored_bytes),
                if x.ref_chunks > 0 {
                    format!(
                        ", {} by reference ({})",
                        count(x.ref_chunks, "chunk"),
                        human(x.ref_bytes)
                    )
                } else {
                    String::new()
                }
            );
        }
        for d in &v.disagreements {
            let _ = writeln!(s, "  DISAGREE: {d}");
        }
        if v.damaged_chunks > 0 {
            let _ = writeln!(
                s,
                "  DAMAGED: {} in the archive; the next backup re-sends them",
                count(v.damaged_chunks as u64, "chunk")
            );
        }
    }
    let _ = writeln!(
        s,
        "in all: stored {}, held by reference {}",
        human(l.stored_bytes),
        human(l.referenced_bytes)
    );
    for u in &l.unknown_to_dom0 {
        let _ = writeln!(
            s,
            "{u}: in the archive, unknown to dom0 (arch-import names it if the archive's root does)"
        );
    }
    s
}

/// `sparsebak list`: disagreements are shown, not an error (`arch-check`
/// is the command whose exit status judges the archive).
pub fn run(ctx: &Ctx, volume: Option<&str>, offline: bool) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    let missing = match &ctx.local {
        Some(_) => {
            let src = ctx.source(&meta)?;
            Some(
                meta.rec
                    .volumes
                    .iter()
                    .filter(|v| !src.exists(v))
                    .cloned()
                    .collect(),
            )
        }
        None => None,
    };
    let listing = if offline {
        build(&meta, volume, None, missing)?
    } else {
        let mut c = ctx
            .connect(&dest, &meta, Operation::Restore)
            .with_context(|| {
                format!("the archive at {dest} is out of reach (`list --offline` shows dom0's records alone)")
            })?;
        let l = build(&meta, volume, Some(&mut c), missing)?;
        c.finish()?;
        l
    };
    report::line(text(&listing).trim_end());
    for (k, v) in serde_json::to_value(&listing)?
        .as_object()
        .expect("a struct")
    {
        report::set(k, v);
    }
    Ok(0)
}
