//! The configured set and the volumes themselves: `add`, `remove`,
//! `delete`, `rename`. The receiver's side goes first where there is one,
//! and each command is idempotent, so one interrupted between the two
//! sides is completed by running it again.

use crate::context::Ctx;
use crate::report;
use anyhow::{bail, Result};
use protocol::message::Operation;
use protocol::names::validate_volume_name;

/// `add`: volumes into the set `backup` takes when none are named.
pub fn add(ctx: &Ctx, volumes: &[String], group: Option<&str>) -> Result<i32> {
    let (_, mut meta) = ctx.archive()?;
    let local = ctx.source(&meta)?;
    if let Some(g) = group {
        sealed::keys::validate_group(g).map_err(anyhow::Error::msg)?;
    }
    for v in volumes {
        validate_volume_name(v)?;
        if !local.exists(v) {
            bail!("volume '{v}' not found in {}", ctx.local_label());
        }
        // A volume's chunk ids are derived in its scope: once it has an
        // id (its first backup), its group cannot change.
        if let Some(g) = group {
            let now = meta.volume_group(v)?;
            if meta.volume_id(v)?.is_some() && now.as_deref() != Some(g) {
                bail!(
                    "volume '{v}' is already backed up {}: its dedup group is fixed at its first backup (delete it from the archive, or give it a new name, to back it up in group '{g}')",
                    match &now {
                        Some(n) => format!("in dedup group '{n}'"),
                        None => "in its own dedup scope".into(),
                    }
                );
            }
        }
    }
    for v in volumes {
        if let Some(g) = group {
            meta.set_volume_group(v, Some(g))?;
        }
        if !meta.rec.volumes.contains(v) {
            meta.rec.volumes.push(v.clone());
        }
    }
    if let Some(g) = group {
        report::line(format!(
            "dedup group '{g}': {} (the backup qube can tell which places in a group hold equal data)",
            volumes.join(" ")
        ));
        report::set("dedup_group", g);
    }
    meta.rec.volumes.sort();
    meta.save()?;
    report::line(format!(
        "configured volumes: {}",
        meta.rec.volumes.join(" ")
    ));
    report::set("configured", &meta.rec.volumes);
    Ok(0)
}

/// `remove`: out of the set, snapshots dropped; the sessions stay.
pub fn remove(ctx: &Ctx, volume: &str) -> Result<i32> {
    let (_, mut meta) = ctx.archive()?;
    validate_volume_name(volume)?;
    let configured = meta.rec.volumes.iter().any(|v| v == volume);
    // A volume backed up by name was never added, but has snapshots.
    if !configured && !meta.volume_dir(volume)?.exists() {
        bail!("volume '{volume}' is neither in the configured set nor backed up to this archive");
    }
    ctx.forget_snapshots(&meta, volume)?;
    if configured {
        meta.rec.volumes.retain(|v| v != volume);
        meta.save()?;
        report::line(format!("removed '{volume}' from the configured set and dropped its snapshots; its sessions stay in the archive"));
    } else {
        report::line(format!("'{volume}' was not in the configured set; dropped its snapshots; its sessions stay in the archive"));
    }
    report::set("volume", volume);
    report::set("was_configured", configured);
    report::set("configured", &meta.rec.volumes);
    Ok(0)
}

/// `delete`: every session of a volume, from the archive and from dom0.
pub fn delete(ctx: &Ctx, volume: &str, force: bool) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    validate_volume_name(volume)?;
    // dom0's records are what names a volume (the archive knows ids only):
    // a name they never had is an error, not a silent success.
    if !meta.volume_dir(volume)?.exists() {
        if meta.rec.volumes.iter().any(|v| v == volume) {
            let mut meta = meta;
            meta.rec.volumes.retain(|v| v != volume);
            meta.save()?;
            report::line(format!("volume '{volume}' was configured but never backed up: removed it from the configured set; nothing was in the archive"));
            report::set("volume", volume);
            report::set("sessions_deleted", 0);
            return Ok(0);
        }
        bail!("no volume '{volume}' in the archive at {dest} (dom0's records name none by that name); nothing deleted");
    }
    if !force {
        confirm(
            &format!(
                "delete volume '{volume}' and all {} of its sessions from {dest}? type the volume name to confirm: ",
                meta.sessions(volume)?.len()
            ),
            volume,
        )?;
    }
    let sessions = meta.session_names(volume)?.len();
    let mut client = ctx.connect(&dest, &meta, Operation::Admin)?;
    if meta.volume_dir(volume)?.exists() {
        // The intent, in dom0 and in the root, before the receiver is
        // asked: a run cut from here on is finished by the next admin
        // connection, and a dom0 lost from here on by `arch-import`.
        meta.write_delete_intent(volume)?;
        crate::catalog::publish(&meta, &mut client)?;
        crate::reconcile::finish_delete(&meta, &mut client, volume)?;
    }
    // (Else an interrupted delete of it was finished on connecting.)
    client.finish()?;
    ctx.forget_snapshots(&meta, volume)?;
    let mut meta = meta;
    meta.rec.volumes.retain(|v| v != volume);
    meta.save()?;
    report::line(format!(
        "deleted volume '{volume}' ({}) from {dest} and from dom0's metadata",
        crate::units::count(sessions as u64, "session")
    ));
    report::set("volume", volume);
    report::set("sessions_deleted", sessions);
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
    report::line(format!("renamed volume '{volume}' to '{new_name}'"));
    report::set("volume", volume);
    report::set("new_name", new_name);
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
