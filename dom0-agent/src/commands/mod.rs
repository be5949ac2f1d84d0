//! One file per verb. Each takes the context and its own arguments, does
//! its work through the typed client (`crate::client`) and dom0's records
//! (`crate::meta`), prints what it did, and returns the exit status.

pub mod backup;
pub mod check;
pub mod diff;
pub mod import;
pub mod init;
pub mod key;
pub mod list;
pub mod open;
pub mod prune;
pub mod qubes;
pub mod restore;
pub mod verify;
pub mod volumes;

use crate::cli::{Cli, Cmd, KeyCmd};
use crate::context::Ctx;
use anyhow::Result;

/// Runs the command `cli` names; the process exit status.
pub fn run(cli: Cli) -> Result<i32> {
    let ctx = Ctx::new(&cli)?;
    match cli.cmd {
        Cmd::ArchInit {
            chunk_size,
            compression,
            encrypt,
            mkdir,
            pad_sizes,
        } => init::run(
            &ctx,
            &chunk_size,
            &compression,
            encrypt == "on",
            mkdir,
            pad_sizes,
        ),
        Cmd::ArchImport { key_file } => import::run(&ctx, key_file.as_deref()),
        Cmd::Key(KeyCmd::Export { file }) => key::export(&ctx, &file),
        Cmd::Key(KeyCmd::Passwd) => key::passwd(&ctx),
        Cmd::Key(KeyCmd::Rotate) => key::rotate(&ctx),
        Cmd::Backup {
            volumes,
            autoprune,
            resend_all,
        } => backup::run(&ctx, volumes, autoprune, resend_all),
        Cmd::Prune {
            volume,
            session,
            all_before,
            keep,
            dry_run,
        } => prune::run(&ctx, &volume, session, all_before, keep, dry_run),
        Cmd::Delete { volume, force } => volumes::delete(&ctx, &volume, force),
        Cmd::Rename { volume, new_name } => volumes::rename(&ctx, &volume, &new_name),
        Cmd::Add {
            mut volumes,
            qube,
            dedup_group,
        } => {
            volumes.extend(qubes::volumes_of_qubes(&ctx, &qube)?);
            volumes::add(&ctx, &volumes, dedup_group.as_deref())
        }
        Cmd::Remove { volume } => volumes::remove(&ctx, &volume),
        Cmd::ArchCheck { volume } => check::run(&ctx, volume.as_deref()),
        Cmd::Diff { volume } => diff::run(&ctx, &volume),
        Cmd::Restore {
            volume,
            session,
            save_to,
            to_lv,
            force,
            salvage,
        } => restore::run(
            &ctx,
            &volume,
            session.as_deref(),
            save_to,
            to_lv,
            force,
            salvage,
        ),
        Cmd::Verify {
            volume,
            session,
            all,
        } => verify::run(&ctx, &volume, session.as_deref(), all),
        Cmd::List { qubes: true, .. } => qubes::list(&ctx),
        Cmd::List {
            volume, offline, ..
        } => list::run(&ctx, volume.as_deref(), offline),
        Cmd::RestoreQubes {
            names,
            session,
            dry_run,
            rename_conflicting,
            skip_conflicting,
            pool,
            ignore_missing,
        } => qubes::restore(
            &ctx,
            qubes::RestoreArgs {
                names,
                session,
                dry_run,
                on_conflict: match (rename_conflicting, skip_conflicting) {
                    (true, _) => crate::qubes::plan::OnConflict::Rename,
                    (_, true) => crate::qubes::plan::OnConflict::Skip,
                    _ => crate::qubes::plan::OnConflict::Refuse,
                },
                pool,
                ignore_missing,
            },
        ),
        Cmd::Open {
            volume,
            mountpoint,
            session,
            cache,
            foreground,
            attach,
            idle,
            log,
            serve,
        } => open::run(
            &ctx,
            open::OpenArgs {
                volume,
                session,
                mountpoint,
                cache_mib: cache,
                foreground,
                serve,
                log,
                idle: (idle > 0).then(|| std::time::Duration::from_secs(idle)),
                attach,
            },
        ),
        Cmd::Close { mountpoint, lazy } => open::close(&mountpoint, lazy),
    }
}
