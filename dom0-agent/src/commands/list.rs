//! `list`: dom0's record of the archive (the sessions it can verify).

use crate::context::Ctx;
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
        None => {
            let mut v = meta.volumes()?;
            v.extend(meta.rec.volumes.iter().cloned());
            v.sort();
            v.dedup();
            v
        }
    };
    vols.into_iter()
        .map(|v| Ok((v.clone(), meta.sessions(&v)?)))
        .collect()
}

/// The configured set, and which of it the source lacks (None: no source given).
pub struct Configured<'a> {
    pub volumes: &'a [String],
    pub missing: Option<Vec<String>>,
}

pub fn text(meta: &ArchiveMeta, vols: &[(String, Vec<SessionInfo>)], cfg: &Configured) -> String {
    let mut s = format!(
        "archive {} at {} (chunk size {}, {})\n",
        meta.rec.id,
        meta.rec.dest,
        human(meta.params.chunk_size as u64),
        meta.params.compression
    );
    let _ = writeln!(
        s,
        "configured: {}",
        if cfg.volumes.is_empty() {
            "(none)".to_string()
        } else {
            cfg.volumes.join(" ")
        }
    );
    if let Some(missing) = &cfg.missing {
        if !missing.is_empty() {
            let _ = writeln!(
                s,
                "MISSING from the source (configured but not present): {}",
                missing.join(" ")
            );
        }
    }
    for (v, sessions) in vols {
        let mark = if cfg.missing.as_ref().is_some_and(|m| m.contains(v)) {
            " [missing]"
        } else {
            ""
        };
        let _ = writeln!(s, "{v}{mark}: {} session(s)", sessions.len());
        for x in sessions {
            let _ = writeln!(
                s,
                "  {}  {}  size {:>10}  {:>7} chunks {:>6} zero  stored {}",
                x.name,
                crate::timefmt::format_local(x.time),
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
pub fn json(meta: &ArchiveMeta, vols: &[(String, Vec<SessionInfo>)], cfg: &Configured) -> String {
    let list = |v: &[String]| v.iter().map(|x| js(x)).collect::<Vec<_>>().join(",");
    let mut s = format!(
        "{{\"archive\":{},\"dest\":{},\"chunk_size\":{},\"configured\":[{}],\"missing\":{},\"volumes\":[",
        js(&meta.rec.id),
        js(&meta.rec.dest),
        meta.params.chunk_size,
        list(cfg.volumes),
        cfg.missing.as_ref().map_or("null".to_string(), |m| format!("[{}]", list(m)))
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

/// `sparsebak list`: dom0's records, as text or JSON.
pub fn run(ctx: &Ctx, volume: Option<&str>, json_out: bool) -> Result<i32> {
    let (_, meta) = ctx.archive()?;
    let vols = volumes_and_sessions(&meta, volume)?;
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
    let cfg = Configured {
        volumes: &meta.rec.volumes,
        missing,
    };
    if json_out {
        println!("{}", json(&meta, &vols, &cfg));
    } else {
        print!("{}", text(&meta, &vols, &cfg));
    }
    Ok(0)
}
