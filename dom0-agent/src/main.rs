use agent::backup::Backup;
use agent::config::{Config, DEFAULT_META_DIR};
use agent::meta::{parse_compression, ArchiveMeta, ArchiveRecord, MetaStore};
use agent::restore::{restore, Target};
use agent::source::Source;
use agent::transport::dest::Dest;
use agent::transport::{connect, default_receiver, Connection};
use agent::units::parse_size;
use agent::{list, units};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use protocol::message::{ArchiveId, Operation, Reply, Request};
use std::io::Read;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// sparsebak: fast incremental backups of disk-image volumes.
///
/// The first backup of a volume is full; later ones send only the chunks
/// that changed, found from the volume's reflink snapshot (Btrfs, XFS) or by
/// hash comparison. Every restore and verify checks each chunk against the
/// SHA-256 manifests kept here in dom0 before writing a byte.
///
/// Settings come from /etc/sparsebak/sparsebak.toml (or --config); flags
/// override them. Example:
///
///   sparsebak --dest file:///backup --local /var/images arch-init
///   sparsebak --dest file:///backup --local /var/images backup disk.img
///   sparsebak --dest file:///backup restore disk.img --save-to /tmp/disk.img
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Config file (TOML: dest, local, meta_dir, remote_receiver, volumes, workers).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Archive destination: file:///path (receiver runs locally).
    #[arg(long, global = true, value_name = "URL")]
    dest: Option<String>,
    /// Volume source: a directory of image files (/path; a VOLUME is a file name in it) or an LVM thin pool (VG/POOL; a VOLUME is a thin LV in it).
    #[arg(long, global = true, value_name = "SOURCE")]
    local: Option<PathBuf>,
    /// dom0's metadata directory [default: /var/lib/sparsebak].
    #[arg(long, global = true, value_name = "DIR")]
    meta_dir: Option<PathBuf>,
    /// Receiver program to run [default: sparsebak-receiver next to this binary, else on PATH].
    #[arg(long, global = true, value_name = "PROGRAM")]
    remote_receiver: Option<PathBuf>,
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
    Backup { volumes: Vec<String> },
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
    Delete { volume: String },
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
    receiver: PathBuf,
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
        let conn = connect(dest, &self.receiver, op, Some(meta.params.id))?;
        match conn.archive {
            Some(p) if p == meta.params => Ok(conn),
            Some(p) => bail!(
                "the archive at {dest} is {} but dom0 expects {} for it: refusing to continue",
                p.id.to_hex(),
                meta.params.id.to_hex()
            ),
            None => bail!(
                "there is no archive at {dest} (dom0 expected {})",
                meta.params.id.to_hex()
            ),
        }
    }
}

impl Ctx {
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sparsebak: error: {e:#}");
            std::process::exit(1);
        }
    }
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
    let ctx = Ctx {
        dest: cli.dest.clone().or(cfg.dest.clone()),
        local: cli.local.clone().or(cfg.local.clone()),
        meta_dir: cli
            .meta_dir
            .clone()
            .or(cfg.meta_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_META_DIR)),
        receiver: cli
            .remote_receiver
            .clone()
            .or(cfg.remote_receiver.clone())
            .unwrap_or_else(default_receiver),
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
            let mut conn = connect(&dest, &ctx.receiver, Operation::Admin, None)?;
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
        Cmd::Backup { volumes } => {
            let (dest, meta) = ctx.archive()?;
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
            let workers = ctx
                .cfg
                .workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
            let mut failed = 0;
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
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        // The stream may be unusable now: stop here.
                        eprintln!("sparsebak: error: {e:#}");
                        return Ok(1);
                    }
                }
            }
            conn.finish()?;
            Ok(if failed > 0 { 1 } else { 0 })
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
        Cmd::Delete { volume } => {
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
