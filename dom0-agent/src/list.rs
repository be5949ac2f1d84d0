//! `list`: dom0's record of the archive (the sessions it can verify).

use crate::meta::ArchiveMeta;
use crate::units::human;
use anyhow::Result;
use protocol::message::SessionInfo;
use std::fmt::Write;

pub fn volumes_and_sessions(
    meta: &ArchiveMeta,
    volume: Option<&str>,
) -> Result<Vec<(String, Vec<SessionInfo>)>> {
    let vols = match volume {
        Some(v) => vec![v.to_string()],
        None => meta.volumes()?,
    };
    vols.into_iter()
        .map(|v| Ok((v.clone(), meta.sessions(&v)?)))
        .collect()
}

pub fn text(meta: &ArchiveMeta, vols: &[(String, Vec<SessionInfo>)]) -> String {
    let mut s = format!(
        "archive {} at {} (chunk size {}, {})\n",
        meta.rec.id,
        meta.rec.dest,
        human(meta.params.chunk_size as u64),
        meta.params.compression
    );
    for (v, sessions) in vols {
        let _ = writeln!(s, "{v}: {} session(s)", sessions.len());
        for x in sessions {
            let _ = writeln!(
                s,
                "  {}  size {:>10}  {:>7} chunks {:>6} zero  stored {}",
                x.name,
                human(x.volume_size),
                x.chunks,
                x.zero_chunks,
                human(x.stored_bytes)
            );
        }
    }
    s
}

fn js(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// `{"archive": ID, "dest": URL, "chunk_size": N, "volumes": [{"name": V,
/// "sessions": [{"name", "time", "volume_size", ...}, ...]}, ...]}`,
/// sessions oldest first.
pub fn json(meta: &ArchiveMeta, vols: &[(String, Vec<SessionInfo>)]) -> String {
    let mut s = format!(
        "{{\"archive\":{},\"dest\":{},\"chunk_size\":{},\"volumes\":[",
        js(&meta.rec.id),
        js(&meta.rec.dest),
        meta.params.chunk_size
    );
    for (i, (v, sessions)) in vols.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{{\"name\":{},\"sessions\":[", js(v));
        for (k, x) in sessions.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"name\":{},\"time\":{},\"volume_size\":{},\"chunks\":{},\"zero_chunks\":{},\"stored_bytes\":{},\"prev\":{}}}",
                js(&x.name),
                x.time,
                x.volume_size,
                x.chunks,
                x.zero_chunks,
                x.stored_bytes,
                x.prev.as_deref().map_or("null".to_string(), js)
            );
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    s
}
