//! `sparsebak diff`: which chunks of the live volume differ from the newest
//! session, by hashing the volume and comparing with dom0's manifests. Reads
//! the whole volume (data ranges only where the source can tell); writes
//! nothing.

use crate::context::Ctx;
use crate::meta::ArchiveMeta;
use crate::pipeline::{self, view_jobs, Outcome, Settings};
use crate::progress::Progress;
use anyhow::{bail, Result};
use protocol::message::Compression;
use std::fs::File;

pub struct DiffReport {
    pub session: String,
    pub session_size: u64,
    pub live_size: u64,
    /// Addresses of chunks that differ, ascending.
    pub changed: Vec<u64>,
    pub chunks: u64,
}

pub fn diff(
    meta: &ArchiveMeta,
    volume: &str,
    live: &File,
    live_size: u64,
    workers: usize,
) -> Result<DiffReport> {
    let sessions = meta.sessions(volume)?;
    let Some(newest) = sessions.last() else {
        bail!("volume '{volume}' has no sessions to compare with");
    };
    let cs = meta.params.chunk_size as u64;
    let view = meta.view(volume, &sessions)?;
    let jobs = view_jobs(view, live_size, cs, |_| true, Default::default());
    let settings = Settings {
        chunk_size: cs as u32,
        // Hashing is all a comparison needs.
        compression: Compression::None,
        workers,
        keys: meta.keys.clone(),
        scope: meta.scope(volume)?,
        dedup: None,
        resume: None,
    };
    let total = live_size.div_ceil(cs);
    let mut progress = Progress::new(volume, total);
    let (mut changed, mut done, mut read) = (Vec::new(), 0u64, 0u64);
    pipeline::run(live, jobs, &settings, |job, outcome, _| {
        done += 1;
        read += job.len as u64;
        if outcome != Outcome::Unchanged {
            changed.push(job.addr);
        }
        progress.update(done, read);
        Ok(())
    })?;
    progress.finish();
    Ok(DiffReport {
        session: newest.name.clone(),
        session_size: newest.volume_size,
        live_size,
        changed,
        chunks: total,
    })
}

/// Addresses as `start-end` byte ranges of consecutive chunks.
pub fn ranges(addrs: &[u64], cs: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &a in addrs {
        match out.last_mut() {
            Some(r) if r.1 == a => r.1 = a + cs,
            _ => out.push((a, a + cs)),
        }
    }
    out
}

/// `sparsebak diff`: exit status 1 if the volume differs.
pub fn run(ctx: &Ctx, volume: &str) -> Result<i32> {
    let (_, meta) = ctx.archive()?;
    let (file, size) = ctx.source(&meta)?.open_live(volume)?;
    let r = diff(&meta, volume, &file, size, ctx.workers())?;
    let cs = meta.params.chunk_size as u64;
    let rs = ranges(&r.changed, cs);
    for (a, b) in rs.iter().take(100) {
        crate::report::line(format!("changed {a:#x}-{:#x}", b.min(&r.live_size)));
    }
    if rs.len() > 100 {
        crate::report::line(format!("... and {} more ranges", rs.len() - 100));
    }
    if r.live_size != r.session_size {
        crate::report::line(format!(
            "size: {} in session {}, {} now",
            r.session_size, r.session, r.live_size
        ));
    }
    crate::report::line(format!(
        "diff {volume}: {} of {} differ from session {}",
        r.changed.len(),
        crate::units::count(r.chunks, "chunk"),
        r.session
    ));
    crate::report::set("volume", volume);
    crate::report::set("session", &r.session);
    crate::report::set("session_size", r.session_size);
    crate::report::set("live_size", r.live_size);
    crate::report::set("chunks", r.chunks);
    crate::report::set("changed_chunks", r.changed.len());
    crate::report::set(
        "changed_ranges",
        rs.iter()
            .map(|(a, b)| [*a, (*b).min(r.live_size)])
            .collect::<Vec<_>>(),
    );
    Ok(if r.changed.is_empty() && r.live_size == r.session_size {
        0
    } else {
        1
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ranges_coalesce() {
        assert_eq!(super::ranges(&[0, 10, 20, 50], 10), vec![(0, 30), (50, 60)]);
    }
}
