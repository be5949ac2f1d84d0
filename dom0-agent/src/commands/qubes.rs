//! Qubes settings: recorded by every backup run of a Qubes dom0
//! (`capture`), listed (`list --qubes`), used to pick a qube's volumes
//! (`add --qube`), and turned back into qubes (`restore-qubes`).
//!
//! `restore-qubes`, order of events, and why: everything is decided first
//! (`crate::qubes::plan`: which qubes, names, order, conflicts, missing
//! dependencies), from dom0's records and the names the system has, and
//! printed with `--dry-run`; a plan with a refused conflict or a missing
//! dependency stops here, before anything is created. Then, per qube in
//! order: `qvm-create` (class, label, template, pool, the plain
//! properties), its volumes' data streamed through `qvm-volume import`
//! (every chunk verified against dom0's manifests before it is sent;
//! a failure kills the import, so Qubes keeps nothing of it), features,
//! tags, firewall, notes. Last, with every qube there: the properties
//! that name other qubes and the device assignments. Each tool gets an
//! argument vector, never a shell, with names and values checked as Qubes
//! checks them (`sealed::qubes`).

use crate::client::Client;
use crate::context::Ctx;
use crate::meta::ArchiveMeta;
use crate::qubes::plan::{self, OnConflict, Plan, Step};
use crate::qubes::{tools, xml};
use crate::report;
use crate::target::Target;
use crate::units::{count, human};
use anyhow::{bail, Context, Result};
use protocol::message::Operation;
use sealed::qubes::{qube_of_volume, QubeSettings};
use std::collections::{BTreeMap, BTreeSet};

/// Records the settings of the qubes whose volumes the archive holds, as
/// a new settings session (the caller writes the root). Nothing happens where
/// dom0 is not a Qubes dom0 (no `qubes.xml`, and none configured).
pub fn capture(ctx: &Ctx, meta: &ArchiveMeta) -> Result<()> {
    let path = ctx.qubes_xml();
    if !path.exists() {
        if ctx.cfg.qubes_xml.is_some() {
            bail!(
                "`qubes_xml` in the config names '{}', which does not exist",
                path.display()
            );
        }
        return Ok(());
    }
    let mut volumes = Vec::new();
    let mut wanted = BTreeSet::new();
    for v in meta.volumes()? {
        if let Some((q, _)) = qube_of_volume(&v) {
            if let Some(s) = meta.session_names(&v)?.pop() {
                wanted.insert(q.to_string());
                volumes.push((v.clone(), s));
            }
        }
    }
    if wanted.is_empty() {
        report::detail(format!(
            "{}: no volume of this archive is a qube's (vm-NAME-private, vm-NAME-root): no Qubes settings recorded",
            path.display()
        ));
        return Ok(());
    }
    // A named disposable keeps no volume: it is recorded with the
    // disposable template it is made from.
    let keep = |q: &QubeSettings| {
        wanted.contains(&q.name)
            || (q.class == "DispVM" && q.template().is_some_and(|t| wanted.contains(t)))
    };
    let found = xml::read(&path, Some(&keep))?;
    for (name, why) in &found.refused {
        if wanted.contains(name) {
            report::warn(format!("{}: {why}", path.display()));
        }
    }
    for q in &wanted {
        if !found.qubes.contains_key(q) && !found.refused.iter().any(|(n, _)| n == q) {
            report::detail(format!(
                "qube '{q}' has volumes in the archive but is not in {} (removed?): its settings are not recorded",
                path.display()
            ));
        }
    }
    // Only the volumes of qubes whose settings are recorded.
    volumes.retain(|(v, _)| qube_of_volume(v).is_some_and(|(q, _)| found.qubes.contains_key(q)));
    let n = found.qubes.len();
    let mut cat = meta.qubes()?;
    // Settings sessions whose volume sessions were all pruned go (a
    // directory lookup each: only pinned sessions are looked at).
    cat.retain(|v, s| meta.session_dir(v, s).is_ok_and(|d| d.is_dir()));
    let name = cat.add(
        crate::catalog::now(),
        found.qubes.into_values().collect(),
        volumes,
    );
    // The root that carries them is written by the caller, once for the
    // whole run.
    meta.set_qubes(&cat)?;
    report::line(format!(
        "recorded the Qubes settings of {} (settings session {name})",
        count(n as u64, "qube")
    ));
    report::set("qubes_session", &name);
    report::set("qubes_recorded", n);
    Ok(())
}

/// `add --qube NAME`: the qube's persistent volumes, by Qubes' naming.
pub fn volumes_of_qubes(ctx: &Ctx, names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let path = ctx.qubes_xml();
    if !path.exists() {
        bail!(
            "--qube needs dom0's Qubes record, and '{}' does not exist (not a Qubes dom0? set `qubes_xml` in the config)",
            path.display()
        );
    }
    let want: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    for n in names {
        sealed::qubes::validate_qube_name(n)?;
    }
    let found = xml::read(
        &path,
        Some(&|q: &QubeSettings| want.contains(q.name.as_str())),
    )?;
    let mut out = Vec::new();
    for n in names {
        let Some(q) = found.qubes.get(n) else {
            if let Some((_, why)) = found.refused.iter().find(|(q, _)| q == n) {
                bail!("{}: {why}", path.display());
            }
            bail!("no qube '{n}' in {}", path.display());
        };
        let vols = sealed::qubes::persistent_volumes(&q.class);
        if vols.is_empty() {
            bail!(
                "qube '{n}' is a {}: it keeps no volume across restarts, nothing to back up",
                q.class
            );
        }
        out.extend(vols.iter().map(|v| QubeSettings::volume_name(n, v)));
    }
    Ok(out)
}

/// `list --qubes`: per settings session, the qubes it can recreate.
pub fn list(ctx: &Ctx) -> Result<i32> {
    let (_, meta) = ctx.archive()?;
    let cat = meta.qubes()?;
    if cat.sessions.is_empty() {
        report::line("no Qubes settings recorded in this archive");
    }
    for s in &cat.sessions {
        report::line(format!(
            "settings session {} taken {}: {}",
            s.name,
            crate::timefmt::format_local(s.time),
            count(s.qubes.len() as u64, "qube")
        ));
        let mut qubes = Vec::new();
        for q in cat.qubes_of(s) {
            let vols: Vec<_> = s
                .volumes
                .iter()
                .filter(|(v, _)| qube_of_volume(v).is_some_and(|(n, _)| n == q.name))
                .collect();
            report::line(format!(
                "  {} ({}, {}{}){}",
                q.name,
                q.class,
                q.label,
                q.template().map_or(String::new(), |t| format!(", on {t}")),
                if vols.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        vols.iter()
                            .map(|(v, x)| format!("{v} {x}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ));
            qubes.push(serde_json::json!({
                "name": q.name,
                "class": q.class,
                "label": q.label,
                "template": q.template(),
                "volumes": vols.iter().map(|(v, x)| serde_json::json!({"volume": v, "session": x})).collect::<Vec<_>>(),
            }));
        }
        report::push(
            "qubes_sessions",
            serde_json::json!({"name": s.name, "time": s.time, "qubes": qubes}),
        );
    }
    Ok(0)
}

pub struct RestoreArgs {
    pub names: Vec<String>,
    pub session: Option<String>,
    pub dry_run: bool,
    pub on_conflict: OnConflict,
    pub pool: Option<String>,
    pub ignore_missing: bool,
}

/// For each volume a settings session pinned: the session to restore and
/// its size; a pruned session's data is in the next session that remains.
fn volume_sessions(
    meta: &ArchiveMeta,
    pinned: &[(String, String)],
) -> Result<BTreeMap<String, (String, u64)>> {
    let mut m = BTreeMap::new();
    for (v, s) in pinned {
        let sessions = meta.sessions(v)?;
        if let Some(i) = sessions.iter().position(|x| x.name >= *s) {
            let x = &sessions[i];
            if x.name != *s {
                report::warn(format!(
                    "volume '{v}': session {s} was pruned; its data is restored as of {}, the session it was merged into",
                    x.name
                ));
            }
            m.insert(v.clone(), (x.name.clone(), x.volume_size));
        } else {
            report::warn(format!(
                "volume '{v}': session {s} and every later one are gone from dom0's records: its data cannot be restored"
            ));
        }
    }
    Ok(m)
}

fn print_plan(p: &Plan, session: &str) {
    report::line(format!(
        "plan from settings session {session}: create {}{}",
        count(p.qubes.len() as u64, "qube"),
        if p.skipped.is_empty() {
            String::new()
        } else {
            format!(", skip {} the system has", p.skipped.join(", "))
        }
    ));
    for (i, s) in p.qubes.iter().enumerate() {
        let renamed = if s.name != s.qube {
            format!(" (recorded as {})", s.qube)
        } else {
            String::new()
        };
        let vols: Vec<String> = s
            .volumes
            .iter()
            .map(|v| format!("{} {} from {}", v.volume, human(v.size), v.session))
            .collect();
        report::line(format!(
            "  {}. {}{renamed}: {}, {}{}{}; {} set, {} set last, {}, {}{}{}",
            i + 1,
            s.name,
            s.class,
            s.label,
            s.template
                .as_ref()
                .map_or(String::new(), |t| format!(", on {t}")),
            if vols.is_empty() {
                String::new()
            } else {
                format!(", data: {}", vols.join(", "))
            },
            count(s.properties.len() as u64, "property"),
            count(s.references.len() as u64, "reference"),
            count(s.features.len() as u64, "feature"),
            count(s.tags.len() as u64, "tag"),
            s.firewall.as_ref().map_or(String::new(), |r| format!(
                ", {}",
                count(r.len() as u64, "firewall rule")
            )),
            if s.devices.is_empty() {
                String::new()
            } else {
                format!(", {}", count(s.devices.len() as u64, "device"))
            },
        ));
    }
    for c in &p.conflicts {
        match (&c.renamed_to, c.action) {
            (Some(n), _) => report::line(format!(
                "  conflict: the system has a qube '{}': restored as '{n}'",
                c.qube
            )),
            (None, "skipped") => report::line(format!(
                "  conflict: the system has a qube '{}': skipped (references to it use the existing one)",
                c.qube
            )),
            _ => report::error(format!(
                "conflict: the system has a qube '{}' (give --rename-conflicting or --skip-conflicting)",
                c.qube
            )),
        }
    }
    for m in &p.missing {
        let msg = format!(
            "qube '{}': {} refers to '{}', which is neither restored nor on this system",
            m.qube, m.property, m.refers_to
        );
        if m.defaulted {
            report::warn(format!("{msg}: left to the system's default"));
        } else {
            report::error(format!("{msg} (restore it too, or give --ignore-missing)"));
        }
    }
}

/// `restore-qubes` (see the module doc).
pub fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<i32> {
    let (dest, meta) = ctx.archive()?;
    let cat = meta.qubes()?;
    if cat.sessions.is_empty() {
        bail!(
            "no Qubes settings are recorded for the archive at {dest}: its backups were not made on a Qubes dom0 (or before sparsebak recorded them); restore volumes one by one with `restore`"
        );
    }
    let s = cat.session(a.session.as_deref()).with_context(|| {
        format!(
            "no settings session {} (see `list --qubes`)",
            a.session.as_deref().unwrap_or("")
        )
    })?;
    if let Some(p) = &a.pool {
        // A Qubes pool name: the same rules as a qube name, so it can
        // never be an option.
        sealed::qubes::validate_qube_name(p).context("--pool")?;
    }
    let existing = tools::existing_qubes()?;
    let volumes = volume_sessions(&meta, &s.volumes)?;
    let recorded: Vec<&QubeSettings> = cat.qubes_of(s).collect();
    let p = plan::plan(&plan::Request {
        recorded,
        names: &a.names,
        existing: &existing,
        on_conflict: a.on_conflict,
        ignore_missing: a.ignore_missing,
        volumes: &volumes,
    })
    .map_err(anyhow::Error::msg)?;
    report::set("qubes_session", &s.name);
    report::set("plan", &p);
    report::set("dry_run", a.dry_run);
    print_plan(&p, &s.name);
    if a.dry_run {
        report::line(if p.ok {
            "dry run: nothing changed"
        } else {
            "dry run: nothing changed; the restore would be refused as planned"
        });
        return Ok(if p.ok { 0 } else { 1 });
    }
    if !p.ok {
        bail!("nothing restored: resolve the conflicts or missing qubes above first");
    }
    let mut client: Option<Client> = None;
    let mut failed: BTreeSet<String> = BTreeSet::new();
    let mut results: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for step in &p.qubes {
        let r = create_one(
            ctx,
            &dest,
            &meta,
            &mut client,
            step,
            a.pool.as_deref(),
            &failed,
        );
        let (ok, errors, bytes) = match r {
            Ok((errs, bytes)) => (true, errs, bytes),
            Err(e) => (false, vec![format!("{e:#}")], 0),
        };
        for e in &errors {
            report::error(format!("qube '{}': {e}", step.name));
        }
        if !ok {
            failed.insert(step.name.clone());
        } else {
            report::line(format!(
                "created {} ({}){}",
                step.name,
                step.class,
                if bytes > 0 {
                    format!(", {} of volume data verified and imported", human(bytes))
                } else {
                    String::new()
                }
            ));
        }
        results.insert(
            step.name.clone(),
            serde_json::json!({"name": step.name, "recorded_as": step.qube, "created": ok, "bytes": bytes, "errors": errors}),
        );
    }
    if let Some(c) = client.take() {
        c.finish()?;
    }
    // With every qube there: references and devices.
    for step in &p.qubes {
        if failed.contains(&step.name) {
            continue;
        }
        let mut errs = Vec::new();
        for argv in tools::last_commands(step) {
            if let Err(e) = tools::run(&argv) {
                errs.push(format!("{e:#}"));
            }
        }
        for e in &errs {
            report::error(format!("qube '{}': {e}", step.name));
        }
        if let Some(r) = results.get_mut(&step.name) {
            if let Some(a) = r["errors"].as_array_mut() {
                a.extend(errs.into_iter().map(serde_json::Value::from));
            }
        }
    }
    let bad = results
        .values()
        .filter(|r| r["errors"].as_array().is_some_and(|a| !a.is_empty()))
        .count();
    report::set("qubes", results.values().collect::<Vec<_>>());
    report::line(format!(
        "restored {} of {} from settings session {}{}",
        count((p.qubes.len() - failed.len()) as u64, "qube"),
        p.qubes.len(),
        s.name,
        if bad > 0 {
            format!("; {bad} with errors (see above)")
        } else {
            String::new()
        }
    ));
    Ok(if bad > 0 { 1 } else { 0 })
}

/// Creates one qube and restores its data and own settings: the errors
/// of the settings that failed, and the bytes imported. An error: the
/// qube was not created, or its data did not restore.
fn create_one(
    ctx: &Ctx,
    dest: &crate::transport::dest::Dest,
    meta: &ArchiveMeta,
    client: &mut Option<Client>,
    step: &Step,
    pool: Option<&str>,
    failed: &BTreeSet<String>,
) -> Result<(Vec<String>, u64)> {
    if let Some(t) = step.template.as_ref().filter(|t| failed.contains(*t)) {
        bail!("not created: its template '{t}' could not be restored");
    }
    let mut errs = tools::create(&tools::create_command(step, pool))?;
    let mut bytes = 0;
    for v in &step.volumes {
        if client.is_none() {
            *client = Some(ctx.connect(dest, meta, Operation::Restore)?);
        }
        let c = client.as_mut().expect("connected");
        let target = Target::Command {
            argv: tools::import_command(&step.name, &v.volume, v.size),
        };
        match super::restore::restore(meta, c, &v.archive_volume, Some(&v.session), target, false) {
            Ok(s) => bytes += s.bytes,
            Err(e) => {
                // The stream may be unusable: the next volume reconnects.
                *client = None;
                if let Some(c) = e
                    .downcast_ref::<super::restore::VerifyError>()
                    .and_then(super::restore::VerifyError::chunk)
                {
                    super::restore::record(meta, &v.archive_volume, &[c]);
                }
                return Err(e.context(format!(
                    "created, but its {} volume did not restore (the import was discarded; `qvm-remove {}` and run again once the archive is whole)",
                    v.volume, step.name
                )));
            }
        }
    }
    for argv in tools::settings_commands(step) {
        if let Err(e) = tools::run(&argv) {
            errs.push(format!("{e:#}"));
        }
    }
    Ok((errs, bytes))
}
