//! The configured set and the volumes themselves: `add`, `remove`,
//! `delete`, `rename`. The receiver's side goes first where there is one,
//! and each command is idempotent, so one interrupted between the two
//! sides is completed by running it again.

use crate::context::Ctx;
use anyhow::{bail, Result};
use protocol::message::Operation;
use protocol::names::validate_volume_name;

/// `add`: volumes into the set `backup` takes when none are named.
pub fn add(ctx: &Ctx, volumes: &[String]) -> Result<i32> {
    let (_, mut meta) = ctx.archive()?;
    let local = ctx.source(&meta)?;
    for v in volumes {
        validate_volume_name(v)?;
        if !local.exists(v) {
            bail!("volume '{v}' not found in {}", ctx.local_label());
        }
        if !meta.rec.volumes.contains(v) {
            meta.rec.volumes.push(v.clone());
        }
    }
    meta.rec.volumes.sort();
    meta.save()?;
    println!("configured volumes: {}", meta.rec.volumes.join(" "));
    Ok(0)
}

/// `remove`: out of the set, snapshots dropped; the sessions stay.
pub fn remove(ctx: &Ctx, volume: &str) -> Result<i32> {
    let (_, mut meta) = ctx.archive()?;
    if !meta.rec.volumes.iter().any(|v| v == volume) {
        bail!("volume '{volume}' is not in the configured set");
    }
    ctx.forget_snapshots(&meta, volume)?;
    meta.rec.volumes.retain(|v| v != volume);
    meta.save()?;
    println!("removed '{volume}' from the configured set; its sessions stay in the archive");
    Ok(0)
}

/// `delete`: every session of a volume, from the archive and from dom0.
pub fn delete(ctx: &Ctx, volume: &str, force: bool) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    validate_volume_name(volume)?;
    if !force {
        confirm(
            &format!(
                "delete volume '{volume}' and all {} of its sessions from {dest}? type the volume name to confirm: ",
                meta.sessions(volume)?.len()
            ),
            volume,
        )?;
    }
    let mut client = ctx.connect(&dest, &meta, Operation::Admin)?;
    // The root will name a volume the archive no longer has until it is
    // rewritten: say so first, in case this run is cut.
    meta.mark_dirty()?;
    // False: already gone from the archive (a repeated delete).
    client.delete_volume(volume)?;
    meta.delete_volume(volume)?;
    crate::catalog::publish(&meta, &mut client)?;
    client.finish()?;
    ctx.forget_snapshots(&meta, volume)?;
    let mut meta = meta;
    meta.rec.volumes.retain(|v| v != volume);
    meta.save()?;
    println!("deleted volume '{volume}' from {dest} and from dom0's metadata");
    Ok(0)
}

/// `rename`: in dom0's records, then in the archive's root. The receiver
/// knows the volume by its opaque id, which stays: nothing moves there.
pub fn rename(ctx: &Ctx, volume: &str, new_name: &str) -> Result<i32> {
    let (dest, mut meta) = ctx.archive()?;
    validate_volume_name(volume)?;
    validate_volume_name(new_name)?;
    let mut client = ctx.connect(&dest, &meta, Operation::Admin)?;
    if meta.volume_dir(volume)?.exists() {
        meta.rename_volume(volume, new_name)?;
    } else if !meta.volume_dir(new_name)?.exists() {
        bail!("the archive at {dest} has no volume '{volume}'");
    }
    crate::catalog::publish(&meta, &mut client)?;
    client.finish()?;
    ctx.forget_snapshots(&meta, volume)?;
    if meta.rec.volumes.iter().any(|v| v == volume) {
        meta.rec.volumes.retain(|v| v != volume);
        meta.rec.volumes.push(new_name.to_string());
        meta.rec.volumes.sort();
        meta.save()?;
    }
    println!("renamed volume '{volume}' to '{new_name}'");
    Ok(0)
}

/// Asks on the terminal; anything but `expect` (or no terminal) refuses.
fn confirm(question: &str, expect: &str) -> Result<()> {
    use std::io::{IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("refusing without confirmation: give --force (stdin is not a terminal)");
    }
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if line.trim() != expect {
        bail!("not confirmed; nothing deleted");
    }
    Ok(())
}
