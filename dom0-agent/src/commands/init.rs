//! `sparsebak arch-init`: a new archive at the destination, and dom0's
//! record of it. The receiver creates the archive first; dom0 records it
//! only once the receiver said Ok, so a failed init leaves dom0 as it was.

use crate::client::Client;
use crate::context::Ctx;
use crate::meta::{parse_compression, ArchiveRecord};
use crate::units::{self, parse_size};
use anyhow::{bail, Context, Result};
use protocol::message::{ArchiveId, ArchiveParams};
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn run(ctx: &Ctx, chunk_size: &str, compression: &str) -> Result<i32> {
    let dest = ctx.dest()?;
    let cs = parse_size(chunk_size)?;
    let cs = u32::try_from(cs).ok().context("chunk size too large")?;
    protocol::validate_chunk_size(cs)?;
    let compression = parse_compression(compression)?;
    let store = ctx.meta_store();
    if let Some(m) = store.find_by_dest(&dest.canonical())? {
        bail!(
            "dom0 already has archive {} for {dest} (meta dir '{}')",
            m.rec.id,
            ctx.meta_dir.display()
        );
    }
    let id = random_id()?;
    let params = ArchiveParams {
        id,
        chunk_size: cs,
        compression,
    };
    let mut client = Client::connect_new(&dest, &ctx.reach)?;
    client.init(params)?;
    client.finish()?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    store.create(ArchiveRecord {
        id: id.to_hex(),
        dest: dest.canonical(),
        chunk_size: cs,
        compression: compression.to_string(),
        created,
        volumes: Vec::new(),
    })?;
    println!(
        "created archive {} at {dest} (chunk size {}, {compression})",
        id.to_hex(),
        units::human(cs as u64)
    );
    Ok(0)
}

fn random_id() -> Result<ArchiveId> {
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .context("reading /dev/urandom")?;
    Ok(ArchiveId(id))
}
