use agent::backup::Backup;
use agent::config::{Config, DEFAULT_META_DIR};
use agent::meta::{parse_compression, ArchiveMeta, ArchiveRecord, MetaStore};
use agent::prune::{self, Selection};
use agent::restore::{restore, Target};
use agent::retention::Policy;
use agent::source::Source;
use agent::timefmt::{local_offset, parse_local};
use agent::transport::dest::Dest;
use agent::transport::{connect, default_receiver, is_remote, Connection, Reach};
use agent::units::parse_size;
use agent::{list, units};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use protocol::message::{ArchiveId, ErrorCode, Operation, Reply, Request};
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// sparsebak: fast incremental backups of disk-image volumes.
///
/// The first backup of a volume is full; later ones send only the chunks
/// that changed, found from the volume's reflink snapshot (Btrfs, XFS) or by
/// hash comparison. Every restore and verify checks each chunk against the
/// SHA-256 manifests kept here in dom0 before writing a byte.
///
/// Settings come from /etc/sparsebak/sparsebak.toml (or --config); flags
/// override them. On Qubes OS (receiver in the backup qube sys-backup):
///
///   sparsebak --dest qubes://sys-backup --local qubes_dom0/vm-pool arch-init
///   sparsebak --dest qubes://sys-backup --local qubes_dom0/vm-pool add vm-work-private
///   sparsebak --dest qubes://sys-backup --local qubes_dom0/vm-pool backup
///   sparsebak --dest qubes://sys-backup list
///   sparsebak --dest qubes://sys-backup --local qubes_dom0/vm-pool restore vm-work-private --to-lv vm-work-restored
///
/// With image files and a local archive:
///
///   sparsebak --dest file:///backup --local /var/images arch-init
///   sparsebak --dest file:///backup --local /var/images backup disk.img
///   sparsebak --dest file:///backup restore disk.img --save-to /tmp/disk.img
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Config file (TOML: dest, local, meta_dir, remote_receiver, volumes, workers, keep, timeout, ssh_command) [default: /etc/sparsebak/sparsebak.toml].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Archive destination: file:///path (receiver runs here), qubes://VM[/NAME] (archive NAME in backup qube VM), ssh://user@host[:port]/path, qubes-ssh://VM/user@host[:port]/path (ssh from networked qube VM).
    #[arg(long, global = true, value_name = "URL")]
    dest: Option<String>,
    /// Volume source: a directory of image files (/path; a VOLUME is a file name in it) or an LVM thin pool (VG/POOL; a VOLUME is a thin LV in it).
    #[arg(long, global = true, value_name = "SOURCE")]
    local: Option<PathBuf>,
    /// dom0's metadata directory [default: /var/lib/sparsebak].
    #[arg(long, global = true, value_name = "DIR")]
    meta_dir: Option<PathBuf>,
    /// Receiver program: for file:// the local program [default: sparsebak-receiver next to this binary, else on PATH]; for ssh the program name on the far host [default: sparsebak-receiver].
    #[arg(long, global = true, value_name = "PROGRAM")]
    remote_receiver: Option<PathBuf>,
    /// Seconds to wait for a receiver that has stopped sending or reading before giving up [default: 300].
    #[arg(long, global = true, value_name = "SECONDS")]
    timeout: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new archive at --dest.
    ArchInit {
        /// Chunk size, a power of two from 64K to 2M.
        #[arg(long, default_value = "256K", value_name = "SIZE")]
        chunk_size: String,
        /// Compression: zstd:LEVEL (1-19) or none.
        #[arg(long, default_value = "zstd:3", value_name = "zstd:LEVEL")]
        compression: String,
    },
    /// Back up volumes (the configured ones if none are named): full the first time, incremental after.
    Backup {
        volumes: Vec<String>,
        /// After each successful backup, prune the volume by the `keep` policy in the config.
        #[arg(long)]
        autoprune: bool,
    },
    /// Remove old sessions of a volume, merging each into the next one
    ///
    /// The volume as of every remaining session stays exactly as it was;
    /// chunks still needed move to the next session (no data is copied),
    /// the rest are deleted. The newest session is never pruned. An
    /// interrupted prune is finished or undone by the next command.
    ///
    /// Examples:
    ///   sparsebak prune disk.img --session S_20261101-020000-000001
    ///   sparsebak prune disk.img --session S_20261101-020000-000001,S_20261108-020000-000001
    ///   sparsebak prune disk.img --all-before 2026-10-01
    ///   sparsebak prune disk.img --keep daily=7,weekly=4,monthly=6
    #[command(verbatim_doc_comment)]
    #[command(group(clap::ArgGroup::new("which").required(true).args(["session", "all_before", "keep"])))]
    Prune {
        volume: String,
        /// One session, or an inclusive range OLDER,NEWER.
        #[arg(long, value_name = "S[,S2]")]
        session: Option<String>,
        /// Every session taken before this local date/time (YYYY-MM-DD[ HH:MM[:SS]]).
        #[arg(long, value_name = "DATE")]
        all_before: Option<String>,
        /// Keep policy: last, hourly, daily, weekly, monthly, yearly counts and within=DURATION (36h, 7d, 2w, 1m, 1y); prune the rest.
        #[arg(long, value_name = "SPEC")]
        keep: Option<String>,
        /// Show what would be pruned, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a volume as of a session (default: the newest) into a file or a thin LV.
    ///
    /// With --save-to the volume is written to a file (zero chunks become
    /// holes). With a thin pool as --local and no --save-to, it is written
    /// to a new thin LV (--to-lv NAME, default: the volume's own name),
    /// which replaces an existing LV only with --force. Either way the
    /// target appears only once every chunk has been verified.
    Restore {
        volume: String,
        /// Session name, as shown by `list`.
        #[arg(long)]
        session: Option<String>,
        /// File to write.
        #[arg(long, value_name = "PATH", conflicts_with = "to_lv")]
        save_to: Option<PathBuf>,
        /// LV to write in the --local thin pool.
        #[arg(long, value_name = "NAME")]
        to_lv: Option<String>,
        /// Replace the target if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Add volumes to the set `backup` takes when none are named.
    Add {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove a volume from that set and drop its snapshots (its sessions stay in the archive).
    Remove { volume: String },
    /// Delete a volume from the archive and from dom0's metadata: every session, for good.
    Delete {
        volume: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Rename a volume in the archive and in dom0's metadata (after renaming the LV or image).
    ///
    /// The old name's snapshots are dropped, so the next backup of the new
    /// name reads the volume once and compares it by hash.
    Rename { volume: String, new_name: String },
    /// Check the archive: the receiver re-hashes every chunk, dom0 compares every manifest with its own.
    ///
    /// Missing, extra and corrupt chunks are reported by volume, session
    /// and address. Exit status 1 if anything is wrong.
    ArchCheck { volume: Option<String> },
    /// Compare the live volume with its newest session and report the chunks that differ.
    ///
    /// Reads and hashes the whole volume; exit status 1 if it differs.
    Diff { volume: String },
    /// Read a session back from the archive and check every chunk, writing nothing.
    Verify {
        volume: String,
        #[arg(long)]
        session: Option<String>,
    },
    /// List volumes and sessions this dom0 knows for the archive at --dest.
    List {
        volume: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

struct Ctx {
    cfg: Config,
    dest: Option<String>,
    local: Option<PathBuf>,
    meta_dir: PathBuf,
    reach: Reach,
}

impl Ctx {
    fn dest(&self) -> Result<Dest> {
        let d = self
            .dest
            .as_deref()
            .context("no destination: give --dest URL or set `dest` in the config")?;
        Dest::parse(d)
    }

    fn archive(&self) -> Result<(Dest, ArchiveMeta)> {
        let dest = self.dest()?;
        let store = MetaStore::new(&self.meta_dir);
        let meta = store.find_by_dest(&dest.canonical())?.with_context(|| {
            format!("no archive for {dest} in dom0 metadata '{}' (run arch-init, or give the right --meta-dir)", self.meta_dir.display())
        })?;
        Ok((dest, meta))
    }

    fn source(&self, meta: &ArchiveMeta) -> Result<Source> {
        let l = self.local.as_deref().context(
            "no volume source: give --local DIR or VG/POOL, or set `local` in the config",
        )?;
        Source::open(l, &meta.rec.id)
    }

    fn local_label(&self) -> String {
        self.local
            .as_deref()
            .map_or("(no --local)".into(), |p| p.display().to_string())
    }

    fn connect(&self, dest: &Dest, meta: &ArchiveMeta, op: Operation) -> Result<Connection> {
        let conn = connect(dest, &self.reach, op, Some(meta.params.id))?;
        match conn.archive {
            Some(p) if p == meta.params => Ok(conn),
            Some(p) => bail!(
                "the archive at {dest} is {} but dom0 expects {} for it: refusing to continue",
                p.id.to_hex(),
                meta.params.id.to_hex()
            ),
            None => {
                // The receiver's own reason (busy, unreadable, missing)
                // comes with the first request.
                let mut conn = conn;
                conn.call(&Request::List { volume: None })?;
                bail!(
                    "there is no archive at {dest} (dom0 expected {})",
                    meta.params.id.to_hex()
                )
            }
        }
    }
}

impl Ctx {
    fn workers(&self) -> usize {
        self.cfg
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Prunes what `sel` picks, oldest first; returns how many.
    fn prune(
        &self,
        meta: &ArchiveMeta,
        conn: &mut Connection,
        volume: &str,
        sel: &Selection,
        dry_run: bool,
    ) -> Result<usize> {
        prune::settle(meta, conn, volume)?;
        let ours = meta.sessions(volume)?;
        let theirs = prune::receiver_sessions(conn, volume)?;
        let names = |v: &[protocol::message::SessionInfo]| {
            v.iter().map(|s| s.name.clone()).collect::<Vec<_>>()
        };
        if names(&ours) != names(&theirs) {
            bail!("volume '{volume}': dom0 and the archive list different sessions; run arch-check before pruning");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let picked = prune::select(volume, &ours, sel, now, local_offset(now))?;
        let t0 = std::time::Instant::now();
        for (i, s) in picked.iter().enumerate() {
            if dry_run {
                println!("would prune {volume} {s}");
                continue;
            }
            let info = prune::prune_one(meta, conn, volume, s)?;
            println!(
                "pruned {volume} {s} ({}/{}): merged into {} (now {} data, {} zero chunks)",
                i + 1,
                picked.len(),
                info.name,
                info.chunks,
                info.zero_chunks
            );
        }
        if !dry_run && !picked.is_empty() {
            println!(
                "prune {volume}: {} sessions pruned, {} remain, {:.2} s",
                picked.len(),
                ours.len() - picked.len(),
                t0.elapsed().as_secs_f64()
            );
        }
        Ok(picked.len())
    }

    /// Restore or verify: one restore connection, every chunk checked.
    fn read_back(
        &self,
        volume: &str,
        session: Option<&str>,
        target: Target,
    ) -> Result<agent::restore::Summary> {
        let (dest, meta) = self.archive()?;
        let mut conn = self.connect(&dest, &meta, Operation::Restore)?;
        let s = restore(&meta, &mut conn, volume, session, target)?;
        conn.finish()?;
        Ok(s)
    }
}

fn main() {
    // Before any thread starts, so that all of them (and the local
    // receiver) inherit it; where a sandbox refuses it, nothing is lost
    // but a few percent of speed.
    let _ = agent::sched::batch();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sparsebak: error: {e:#}");
            std::process::exit(1);
        }
    }
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

fn random_id() -> Result<ArchiveId> {
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .context("reading /dev/urandom")?;
    Ok(ArchiveId(id))
}

fn run(cli: Cli) -> Result<i32> {
    let cfg = Config::load(cli.config.as_deref())?;
    // One flag names the receiver: a local program for file://, the
    // program's name on the far host for ssh.
    let receiver = cli.remote_receiver.clone().or(cfg.remote_receiver.clone());
    let ctx = Ctx {
        dest: cli.dest.clone().or(cfg.dest.clone()),
        local: cli.local.clone().or(cfg.local.clone()),
        meta_dir: cli
            .meta_dir
            .clone()
            .or(cfg.meta_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_META_DIR)),
        reach: Reach {
            receiver: receiver.clone().unwrap_or_else(default_receiver),
            remote_receiver: receiver.map_or("sparsebak-receiver".into(), |p| {
                p.to_string_lossy().into_owned()
            }),
            ssh: cfg
                .ssh_command
                .clone()
                .unwrap_or_else(|| vec!["ssh".into()]),
            timeout: cli
                .timeout
                .or(cfg.timeout)
                .map_or(agent::transport::DEFAULT_TIMEOUT, Duration::from_secs),
        },
        cfg,
    };
    match cli.cmd {
        Cmd::ArchInit {
            chunk_size,
            compression,
        } => {
            let dest = ctx.dest()?;
            let cs = parse_size(&chunk_size)?;
            let cs = u32::try_from(cs).ok().context("chunk size too large")?;
            protocol::validate_chunk_size(cs)?;
            let compression = parse_compression(&compression)?;
            let store = MetaStore::new(&ctx.meta_dir);
            if let Some(m) = store.find_by_dest(&dest.canonical())? {
                bail!(
                    "dom0 already has archive {} for {dest} (meta dir '{}')",
                    m.rec.id,
                    ctx.meta_dir.display()
                );
            }
            let id = random_id()?;
            let params = protocol::message::ArchiveParams {
                id,
                chunk_size: cs,
                compression,
            };
            let mut conn = connect(&dest, &ctx.reach, Operation::Admin, None)?;
            if let Some(p) = conn.archive {
                bail!("there is already an archive ({}) at {dest}", p.id.to_hex());
            }
            match conn.call(&Request::Init { params })? {
                Reply::Ok => {}
                other => bail!("unexpected {} reply to init", other.name()),
            }
            conn.finish()?;
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
        Cmd::Backup { volumes, autoprune } => {
            let (dest, meta) = ctx.archive()?;
            let policy = match (autoprune, &ctx.cfg.keep) {
                (false, _) => None,
                (true, Some(k)) => Some(k.parse::<Policy>().context("`keep` in the config")?),
                (true, None) => bail!("--autoprune needs a `keep` policy in the config (e.g. keep = \"daily=7,weekly=4\")"),
            };
            let local = ctx.source(&meta)?;
            let volumes = if !volumes.is_empty() {
                volumes
            } else if !ctx.cfg.volumes.is_empty() {
                ctx.cfg.volumes.clone()
            } else {
                meta.rec.volumes.clone()
            };
            if volumes.is_empty() {
                bail!("no volumes named and none configured (`sparsebak add VOLUME`, or `volumes` in the config)");
            }
            let mut conn = ctx.connect(&dest, &meta, Operation::Backup)?;
            let workers = ctx.workers();
            let mut failed = 0;
            let mut done = Vec::new();
            for v in &volumes {
                if let Err(e) = protocol::names::validate_volume_name(v) {
                    eprintln!("sparsebak: error: {e}");
                    failed += 1;
                    continue;
                }
                if !local.exists(v) {
                    eprintln!(
                        "sparsebak: error: volume '{v}' not found in {}",
                        ctx.local_label()
                    );
                    failed += 1;
                    continue;
                }
                let mut b = Backup {
                    meta: &meta,
                    local: &local,
                    conn: &mut conn,
                    workers,
                };
                match b.run(v) {
                    Ok(s) => {
                        println!("{s}");
                        done.push(v.clone());
                    }
                    Err(e) => {
                        // The stream may be unusable now: stop here.
                        eprintln!("sparsebak: error: {e:#}");
                        return Ok(1);
                    }
                }
            }
            conn.finish()?;
            if let Some(p) = policy {
                let mut admin = ctx.connect(&dest, &meta, Operation::Admin)?;
                for v in &done {
                    let sel = Selection::Keep(p.clone());
                    if let Err(e) = ctx.prune(&meta, &mut admin, v, &sel, false) {
                        eprintln!("sparsebak: error: autoprune of '{v}': {e:#}");
                        failed += 1;
                    }
                }
                admin.finish()?;
            }
            Ok(if failed > 0 { 1 } else { 0 })
        }
        Cmd::Prune {
            volume,
            session,
            all_before,
            keep,
            dry_run,
        } => {
            let sel = match (session, all_before, keep) {
                (Some(s), _, _) => {
                    let (from, to) = s.split_once(',').unwrap_or((&s, &s));
                    Selection::Names {
                        from: from.to_string(),
                        to: to.to_string(),
                    }
                }
                (_, Some(d), _) => Selection::Before(parse_local(&d)?),
                (_, _, Some(k)) => Selection::Keep(k.parse()?),
                _ => unreachable!("clap requires one"),
            };
            let (dest, meta) = ctx.archive()?;
            let mut conn = ctx.connect(&dest, &meta, Operation::Admin)?;
            let n = ctx.prune(&meta, &mut conn, &volume, &sel, dry_run)?;
            conn.finish()?;
            if n == 0 {
                println!("prune {volume}: nothing to prune");
            }
            Ok(0)
        }
        Cmd::Delete { volume, force } => {
            let (dest, meta) = ctx.archive()?;
            protocol::names::validate_volume_name(&volume)?;
            if !force {
                confirm(&format!(
                    "delete volume '{volume}' and all {} of its sessions from {dest}? type the volume name to confirm: ",
                    meta.sessions(&volume)?.len()
                ), &volume)?;
            }
            let mut conn = ctx.connect(&dest, &meta, Operation::Admin)?;
            match conn.call(&Request::DeleteVolume {
                volume: volume.clone(),
            }) {
                Ok(_) => {}
                // Already gone from the archive (a repeated delete).
                Err(e) if is_remote(&e, ErrorCode::NoSuchVolume) => {}
                Err(e) => return Err(e),
            }
            conn.finish()?;
            meta.delete_volume(&volume)?;
            let mut meta = meta;
            if ctx.local.is_some() {
                ctx.source(&meta)?.forget(&volume)?;
            }
            meta.rec.volumes.retain(|v| *v != volume);
            meta.save()?;
            println!("deleted volume '{volume}' from {dest} and from dom0's metadata");
            Ok(0)
        }
        Cmd::Rename { volume, new_name } => {
            let (dest, mut meta) = ctx.archive()?;
            protocol::names::validate_volume_name(&volume)?;
            protocol::names::validate_volume_name(&new_name)?;
            let mut conn = ctx.connect(&dest, &meta, Operation::Admin)?;
            // Idempotent: a rename interrupted between the two sides is
            // completed by running it again.
            let remote = match conn.call(&Request::List { volume: None })? {
                Reply::Listing(l) => l.into_iter().map(|v| v.name).collect::<Vec<_>>(),
                other => bail!("unexpected {} reply to list", other.name()),
            };
            if remote.contains(&volume) {
                conn.call(&Request::RenameVolume {
                    volume: volume.clone(),
                    new_name: new_name.clone(),
                })?;
            } else if !remote.contains(&new_name) {
                bail!("the archive at {dest} has no volume '{volume}'");
            }
            conn.finish()?;
            if meta.volume_dir(&volume)?.exists() {
                meta.rename_volume(&volume, &new_name)?;
            }
            if ctx.local.is_some() {
                ctx.source(&meta)?.forget(&volume)?;
            }
            if meta.rec.volumes.contains(&volume) {
                meta.rec.volumes.retain(|v| *v != volume);
                meta.rec.volumes.push(new_name.clone());
                meta.rec.volumes.sort();
                meta.save()?;
            }
            println!("renamed volume '{volume}' to '{new_name}'");
            Ok(0)
        }
        Cmd::ArchCheck { volume } => {
            let (dest, meta) = ctx.archive()?;
            let mut conn = ctx.connect(&dest, &meta, Operation::Admin)?;
            let rep = agent::archcheck::check(&meta, &mut conn, volume.as_deref())?;
            conn.finish()?;
            print!("{}", agent::archcheck::text(&rep));
            Ok(if rep.problems.is_empty() && rep.unlisted == 0 {
                0
            } else {
                1
            })
        }
        Cmd::Diff { volume } => {
            let (_, meta) = ctx.archive()?;
            let (file, size) = ctx.source(&meta)?.open_live(&volume)?;
            let r = agent::diff::diff(&meta, &volume, &file, size, ctx.workers())?;
            let cs = meta.params.chunk_size as u64;
            for (a, b) in agent::diff::ranges(&r.changed, cs).iter().take(100) {
                println!("changed {a:#x}-{:#x}", b.min(&r.live_size));
            }
            if r.live_size != r.session_size {
                println!(
                    "size: {} in session {}, {} now",
                    r.session_size, r.session, r.live_size
                );
            }
            println!(
                "diff {volume}: {} of {} chunks differ from session {}",
                r.changed.len(),
                r.chunks,
                r.session
            );
            Ok(if r.changed.is_empty() && r.live_size == r.session_size {
                0
            } else {
                1
            })
        }
        Cmd::Add { volumes } => {
            let (_, mut meta) = ctx.archive()?;
            let local = ctx.source(&meta)?;
            for v in &volumes {
                protocol::names::validate_volume_name(v)?;
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
        Cmd::Remove { volume } => {
            let (_, mut meta) = ctx.archive()?;
            if !meta.rec.volumes.contains(&volume) {
                bail!("volume '{volume}' is not in the configured set");
            }
            if ctx.local.is_some() {
                ctx.source(&meta)?.forget(&volume)?;
            }
            meta.rec.volumes.retain(|v| *v != volume);
            meta.save()?;
            println!(
                "removed '{volume}' from the configured set; its sessions stay in the archive"
            );
            Ok(0)
        }
        Cmd::Restore {
            volume,
            session,
            save_to,
            to_lv,
            force,
        } => {
            let (_, meta) = ctx.archive()?;
            let source = match (&save_to, &ctx.local) {
                (None, Some(_)) => Some(ctx.source(&meta)?),
                _ => None,
            };
            let (target, label) = match (save_to, &source) {
                (Some(path), _) => (
                    Target::File {
                        path: path.clone(),
                        force,
                    },
                    format!("'{}'", path.display()),
                ),
                (None, Some(Source::Lvm(pool))) => {
                    let name = to_lv.unwrap_or_else(|| volume.clone());
                    let label = format!("LV {}/{name}", pool.vg);
                    (Target::Lv { pool, name, force }, label)
                }
                _ => bail!("give --save-to PATH (or a thin pool as --local to restore into an LV)"),
            };
            let s = ctx.read_back(&volume, session.as_deref(), target)?;
            println!("restored {s} to {label}");
            Ok(0)
        }
        Cmd::Verify { volume, session } => {
            let s = ctx.read_back(&volume, session.as_deref(), Target::Nothing)?;
            println!("verified {s}");
            Ok(0)
        }
        Cmd::List { volume, json } => {
            let (_, meta) = ctx.archive()?;
            let vols = list::volumes_and_sessions(&meta, volume.as_deref())?;
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
            let cfg = list::Configured {
                volumes: &meta.rec.volumes,
                missing,
            };
            if json {
                println!("{}", list::json(&meta, &vols, &cfg));
            } else {
                print!("{}", list::text(&meta, &vols, &cfg));
            }
            Ok(0)
        }
    }
}
