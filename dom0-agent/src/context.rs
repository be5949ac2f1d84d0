//! What every command needs: the config file merged with the flags (flags
//! win), and from it the destination, dom0's record of its archive, the
//! volume source and connections to the receiver.

use crate::cli::Cli;
use crate::client::Client;
use crate::config::{Config, DEFAULT_META_DIR};
use crate::meta::{ArchiveMeta, MetaStore};
use crate::source::Source;
use crate::transport::dest::Dest;
use crate::transport::{default_receiver, Reach, DEFAULT_FRAME_TIMEOUT, DEFAULT_TIMEOUT};
use anyhow::{Context, Result};
use protocol::message::Operation;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Ctx {
    pub cfg: Config,
    pub dest: Option<String>,
    pub local: Option<PathBuf>,
    pub meta_dir: PathBuf,
    pub reach: Reach,
    pub passphrase_file: Option<PathBuf>,
    pub accept_rollback: bool,
}

impl Ctx {
    /// Loads the config (`--config` or the default path) and applies the flags.
    pub fn new(cli: &Cli) -> Result<Self> {
        let cfg = Config::load(cli.config.as_deref())?;
        // One flag names the receiver: a local program for file://, the
        // program's name on the far host for ssh.
        let receiver = cli.remote_receiver.clone().or(cfg.remote_receiver.clone());
        Ok(Ctx {
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
                    .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
                frame_timeout: match cli.frame_timeout.or(cfg.frame_timeout) {
                    None => Some(DEFAULT_FRAME_TIMEOUT),
                    Some(0) => None,
                    Some(s) => Some(Duration::from_secs(s)),
                },
                deadline: cli.max_time.or(cfg.max_time).map(|s| {
                    let limit = Duration::from_secs(s);
                    (Instant::now() + limit, limit)
                }),
            },
            passphrase_file: cli.passphrase_file.clone(),
            accept_rollback: cli.accept_rollback,
            cfg,
        })
    }

    pub fn dest(&self) -> Result<Dest> {
        let d = self
            .dest
            .as_deref()
            .context("no destination: give --dest URL or set `dest` in the config")?;
        Dest::parse(d)
    }

    pub fn meta_store(&self) -> MetaStore {
        MetaStore::new(&self.meta_dir)
    }

    /// The destination and dom0's record of the archive there.
    pub fn archive(&self) -> Result<(Dest, ArchiveMeta)> {
        let dest = self.dest()?;
        let meta = self.meta_store().find_by_dest(&dest.canonical())?.with_context(|| {
            format!("no archive for {dest} in dom0 metadata '{}' (run arch-init for a new one, arch-import to recover an existing one, or give the right --meta-dir)", self.meta_dir.display())
        })?;
        Ok((dest, meta))
    }

    pub fn source(&self, meta: &ArchiveMeta) -> Result<Source> {
        let l = self.local.as_deref().context(
            "no volume source: give --local DIR or VG/POOL, or set `local` in the config",
        )?;
        Source::open(l, &meta.rec.id)
    }

    /// Drops a volume's snapshots, where a source is configured.
    pub fn forget_snapshots(&self, meta: &ArchiveMeta, volume: &str) -> Result<()> {
        if self.local.is_some() {
            self.source(meta)?.forget(volume)?;
        }
        Ok(())
    }

    pub fn local_label(&self) -> String {
        self.local
            .as_deref()
            .map_or("(no --local)".into(), |p| p.display().to_string())
    }

    /// A client for `op` on the archive dom0 knows as `meta`, whose root
    /// authenticated and is not older than dom0 has seen (`catalog`).
    pub fn connect(&self, dest: &Dest, meta: &ArchiveMeta, op: Operation) -> Result<Client> {
        crate::report::detail(format!("connecting to {dest} ({})", op.describe()));
        let mut c = Client::connect(dest, &self.reach, meta, op)?;
        let seen = meta.generation()?;
        let root = crate::catalog::check_fresh(
            meta,
            &mut c,
            self.accept_rollback,
            op != Operation::Restore,
        )?;
        c.key_findings = crate::keycheck::check(meta, &mut c, &root, op != Operation::Restore)?;
        if root.generation > seen {
            c.newer_root = Some(root);
        }
        if op == Operation::Admin {
            // Only an admin connection may delete: prunes and deletions
            // an interrupted run left are settled at the next one.
            crate::reconcile::settle_all(meta, &mut c)?;
        }
        Ok(c)
    }

    /// dom0's `qubes.xml` (the config's `qubes_xml`, else Qubes' own path).
    pub fn qubes_xml(&self) -> PathBuf {
        self.cfg
            .qubes_xml
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_QUBES_XML))
    }

    /// Backup workers: the config's, else the cores and two more, as a
    /// restore has: a worker reads its chunk (direct I/O, no readahead)
    /// and then hashes it, so with one per core the disk idles while every
    /// core hashes. Measured on 2 cores: a full backup of 512 MiB, 0.92 s
    /// with 2 and 0.81 s with 4; a clone's first backup (read and hash,
    /// all by reference), 0.53 s and 0.38 s.
    pub fn workers(&self) -> usize {
        self.cfg
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()) + 2)
    }
}
