//! The command line: every verb, option and help text, in one place.
//! `commands::run` takes what this parses.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// sparsebak: fast incremental backups of disk-image volumes.
///
/// The first backup of a volume is full; later ones send only the chunks
/// that changed, found from the volume's reflink snapshot (Btrfs, XFS) or by
/// hash comparison. Chunks are encrypted and authenticated (XChaCha20-
/// Poly1305, keyed BLAKE3 ids): the backup qube learns nothing of the data
/// and cannot alter it undetected. Every restore and verify checks each
/// chunk against the manifests kept here in dom0 before writing a byte.
///
/// Keep your passphrase (or `key export`) safe: with it, `arch-import`
/// rebuilds everything on a fresh dom0 from the archive alone.
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
pub struct Cli {
    /// Config file (TOML: dest, local, meta_dir, remote_receiver, volumes, workers, keep, timeout, frame_timeout, max_time, ssh_command, qubes_xml, [[dedup_group]] name and volumes patterns) [default: /etc/sparsebak/sparsebak.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Archive destination: file:///path (receiver runs here), qubes://VM[/NAME] (archive NAME in backup qube VM), ssh://user@host[:port]/path, qubes-ssh://VM/user@host[:port]/path (ssh from networked qube VM).
    #[arg(long, global = true, value_name = "URL")]
    pub dest: Option<String>,
    /// Volume source: a directory of image files (/path; a VOLUME is a file name in it) or an LVM thin pool (VG/POOL; a VOLUME is a thin LV in it).
    #[arg(long, global = true, value_name = "SOURCE")]
    pub local: Option<PathBuf>,
    /// dom0's metadata directory [default: /var/lib/sparsebak].
    #[arg(long, global = true, value_name = "DIR")]
    pub meta_dir: Option<PathBuf>,
    /// Receiver program: for file:// the local program [default: sparsebak-receiver next to this binary, else on PATH]; for ssh the program name on the far host [default: sparsebak-receiver].
    #[arg(long, global = true, value_name = "PROGRAM")]
    pub remote_receiver: Option<PathBuf>,
    /// Seconds to wait for a receiver that has stopped sending or reading before giving up [default: 300].
    #[arg(long, global = true, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Seconds one frame to or from the receiver may take once it has begun, however steadily bytes trickle; 0 for no limit [default: 128].
    #[arg(long, global = true, value_name = "SECONDS")]
    pub frame_timeout: Option<u64>,
    /// Seconds this run may take at most, counted from its start: when they run out, the wait on the receiver fails and nothing half-done is kept [default: no limit].
    #[arg(long, global = true, value_name = "SECONDS")]
    pub max_time: Option<u64>,
    /// Read the passphrase from FILE (its first line) instead of the terminal: for scripts and units.
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Accept an archive whose root is older than the newest dom0 has seen (you restored an older copy of the archive on purpose).
    #[arg(long, global = true)]
    pub accept_rollback: bool,
    /// Print one JSON document on stdout when the command ends (errors included) instead of text; the schema of each command's document is in the README.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but warnings and errors (no progress, no summary lines).
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Say more about what is being done (on stderr).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Write the archive's key to FILE (0600): with it, `arch-import --key-file` needs no passphrase. Keep it offline.
    Export {
        /// Where to write the key (must not exist yet).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Change the passphrase: re-wraps the key in the archive (asks for the new one twice, or reads --passphrase-file); no data is rewritten. Copies of the archive's old dom0.key made before still open with the old passphrase (the key itself is unchanged): to retire a passphrase, not to recover from a leak (see `key rotate`).
    Passwd,
    /// After a passphrase or key file leaked: a new master key, and a new passphrase, for everything written from now on.
    ///
    /// The old key is retired, not forgotten: dom0's key file and the
    /// archive's wrapped key keep it (under the new passphrase only) to
    /// open what was written before. Nothing is rewritten, so what the old
    /// key and passphrase could read before stays readable to whoever has
    /// them and an old copy of the archive; nothing written after the
    /// rotation is. Asks for the new passphrase twice (or reads
    /// --passphrase-file). Export the key again afterwards: an exported
    /// key file from before holds only the old key.
    #[command(verbatim_doc_comment)]
    Rotate,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a new archive at --dest, with a new random key.
    ///
    /// Asks for a passphrase twice (or reads --passphrase-file): it wraps a
    /// copy of the key stored in the archive, so that `arch-import` can
    /// recover everything if dom0 is lost. dom0 keeps the key itself
    /// (0600, in its metadata directory), so backups need no passphrase.
    #[command(verbatim_doc_comment)]
    ArchInit {
        /// Chunk size, a power of two from 64K to 2M.
        #[arg(long, default_value = "256K", value_name = "SIZE")]
        chunk_size: String,
        /// Compression: zstd:LEVEL (1-19) or none.
        #[arg(long, default_value = "zstd:3", value_name = "zstd:LEVEL")]
        compression: String,
        /// Encrypt chunks (on), or store them in the clear, still authenticated (off).
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        encrypt: String,
        /// Create missing parent directories of the archive directory. Without it a missing parent is refused: it is most often a backup disk that is not mounted.
        #[arg(long)]
        mkdir: bool,
        /// Pad each stored chunk to a size bucket (a sixteenth of the chunk), so the backup qube learns how compressible a chunk is only roughly and matching a volume against a known image (a public template) by sizes gets harder. Costs about half a bucket per compressible chunk (see the README).
        #[arg(long)]
        pad_sizes: bool,
    },
    /// Adopt an existing archive on a dom0 that lost (or never had) its records.
    ///
    /// Unwraps the archive's key with the passphrase (or takes --key-file),
    /// authenticates the archive's root, every session manifest it pins,
    /// and rebuilds dom0's records from them. Then list, restore, verify,
    /// prune and incremental backups work as before. On a dom0 that knows
    /// the archive already, refreshes its records and reports differences.
    #[command(verbatim_doc_comment)]
    ArchImport {
        /// The key file written by `key export`, instead of the passphrase.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
    },
    /// Export the archive's key, change the passphrase, or rotate the key.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Back up volumes (the configured ones if none are named): full the first time, incremental after.
    ///
    /// Chunks that `arch-check`, `verify` or `restore` found missing or
    /// damaged in the archive are re-read and re-sent by the next backup
    /// of their volume, so its newest session is whole again.
    #[command(verbatim_doc_comment)]
    Backup {
        /// Volumes to back up: file names in --local DIR, or thin LVs in --local VG/POOL [default: the configured set].
        volumes: Vec<String>,
        /// After each successful backup, prune the volume by the `keep` policy in the config.
        #[arg(long)]
        autoprune: bool,
        /// Have the receiver check the volumes' chunks first, then read each volume whole and send every chunk that differs from the archive's view (what is damaged or missing there, and whatever the delta may have missed).
        #[arg(long)]
        resend_all: bool,
    },
    /// Remove old sessions of a volume, merging each into the next one
    ///
    /// The volume as of every remaining session stays exactly as it was;
    /// chunks still needed move to the next session (no data is copied),
    /// the rest are deleted. The newest session is never pruned. An
    /// interrupted prune is finished or undone by the next command.
    ///
    /// Examples:
    ///   sparsebak prune disk.img --session S_000000000001
    ///   sparsebak prune disk.img --session S_000000000001,S_000000000005
    ///   sparsebak prune disk.img --all-before 2026-10-01
    ///   sparsebak prune disk.img --keep daily=7,weekly=4,monthly=6
    #[command(verbatim_doc_comment)]
    #[command(group(clap::ArgGroup::new("which").required(true).args(["session", "all_before", "keep"])))]
    Prune {
        /// The volume, by the name it was backed up under (see `list`).
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
        /// The volume, by the name it was backed up under (see `list`).
        volume: String,
        /// Session name, as shown by `list` [default: the newest].
        #[arg(long)]
        session: Option<String>,
        /// Write every chunk that verifies and zeros for those that do not, list the failed ones, and exit with status 1. Without it, the first failure stops the restore and nothing is written.
        #[arg(long)]
        salvage: bool,
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
    /// Serve a session read-only as MOUNTPOINT/VOLUME, without restoring it.
    ///
    /// Each read fetches the chunks it needs from the archive and verifies them against dom0's manifests before returning a byte; a chunk that fails makes the read fail (EIO), never return unverified data. Zero chunks cost nothing. Attach it read-only as a block device with `losetup -r -f --show MOUNTPOINT/VOLUME`; on Qubes, give that device to a disposable qube (`qvm-block attach --ro`) so that its filesystem is parsed there, never in dom0. Runs in the background until `sparsebak close MOUNTPOINT`. Between reads (after --idle seconds) the archive is released, so scheduled backups and prunes go on; a prune that moves the session's chunks is followed.
    Open {
        /// The volume, by the name it was backed up under (see `list`).
        volume: String,
        /// An empty directory to mount on.
        mountpoint: PathBuf,
        /// Session name, as shown by `list` [default: the newest].
        #[arg(long)]
        session: Option<String>,
        /// Memory for verified chunks, in MiB: repeated reads of them need no fetch.
        #[arg(long, value_name = "MIB", default_value_t = 128)]
        cache: u64,
        /// Stay in the foreground until closed; Ctrl-C unmounts and exits.
        #[arg(long)]
        foreground: bool,
        /// Qubes: attach the volume read-only to QUBE (a disposable, ideally without network) as a block device, starting QUBE if needed, so that its filesystem is parsed there and never in dom0; close detaches it.
        #[arg(long, value_name = "QUBE")]
        attach: Option<String>,
        /// Let go of the archive after this many seconds without a read (the next read connects again), so that backups and prunes run while the session stays open; 0 holds it until closed.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        idle: u64,
        /// Where the background server writes its messages [default: META_DIR/open.log].
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
        /// Internal: this is the background server `open` started.
        #[arg(long, hide = true)]
        serve: bool,
    },
    /// Recreate qubes from the Qubes settings a backup recorded, with their data.
    ///
    /// For a fresh Qubes install after a disaster: arch-import, then
    /// restore-qubes. Qubes are created with Qubes' own tools in
    /// dependency order (templates, net qubes, the rest), each with its
    /// class, label, template, properties, features, tags, firewall and
    /// notes; its volumes are restored (every chunk verified) through
    /// `qvm-volume import`; last, the properties that name other qubes
    /// (netvm, default_dispvm…) and device assignments, mapped through any
    /// renames. A qube the system already has is refused unless
    /// --rename-conflicting or --skip-conflicting; a template or net qube
    /// neither restored nor on the system is refused unless
    /// --ignore-missing. Not restored: what a Qubes install assigns itself
    /// (qid, uuid, xid, ip, mac…).
    ///
    /// Examples:
    ///   sparsebak restore-qubes --dry-run
    ///   sparsebak restore-qubes work personal --rename-conflicting
    RestoreQubes {
        /// Qubes to restore, by their recorded names [default: every qube of the session].
        names: Vec<String>,
        /// Settings session, as shown by `list --qubes` [default: the newest].
        #[arg(long)]
        session: Option<String>,
        /// Print the plan (qubes in order with their settings, conflicts, missing dependencies) and change nothing; exit 1 if it would be refused.
        #[arg(long)]
        dry_run: bool,
        /// Restore a qube whose name the system has under a new name (NAME-restored); references to it follow.
        #[arg(long, conflicts_with = "skip_conflicting")]
        rename_conflicting: bool,
        /// Leave out a qube whose name the system has; references to it use the existing one.
        #[arg(long)]
        skip_conflicting: bool,
        /// Create the qubes' volumes in this Qubes pool (qvm-create -P).
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// Go ahead when a template, net qube or other qube referred to is neither restored nor on the system: the system's default is used instead.
        #[arg(long)]
        ignore_missing: bool,
    },
    /// Unmount a session `open` served, and wait for its server to end.
    Close {
        /// The mount point given to `open`.
        mountpoint: PathBuf,
        /// Detach it even while in use (a loop device on it): it goes away when its last user does, and reads fail from then on.
        #[arg(long)]
        lazy: bool,
    },
    /// Add volumes to the set `backup` takes when none are named.
    ///
    /// On Qubes, --qube NAME adds a qube's volumes by Qubes' naming in its
    /// pool: vm-NAME-private, and vm-NAME-root for a template or standalone
    /// qube (never -volatile). Every backup then also records the qube's
    /// settings, for `restore-qubes`.
    Add {
        /// Volumes to add: file names in --local DIR, or thin LVs in --local VG/POOL (they must exist there).
        #[arg(required_unless_present = "qube")]
        volumes: Vec<String>,
        /// A qube whose volumes to add (repeatable), as dom0's qubes.xml names it.
        #[arg(long, value_name = "NAME")]
        qube: Vec<String>,
        /// Put the volumes in dedup group G: a chunk already stored by any
        /// volume of the group is not stored or sent again. The backup qube
        /// then learns which places in the group hold equal data: group a
        /// template with its clones, never qubes of different trust. Fixed
        /// at a volume's first backup (default: the config's `dedup_group`
        /// patterns, else the volume's own scope).
        #[arg(long, value_name = "G")]
        dedup_group: Option<String>,
    },
    /// Remove a volume from that set and drop its snapshots (its sessions stay in the archive).
    Remove {
        /// The volume (configured, or backed up by name).
        volume: String,
    },
    /// Delete a volume from the archive and from dom0's metadata: every session, for good.
    Delete {
        /// The volume, by the name it was backed up under (see `list`).
        volume: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Rename a volume in the archive and in dom0's metadata (after renaming the LV or image).
    ///
    /// The old name's snapshots are dropped, so the next backup of the new
    /// name reads the volume once and compares it by hash.
    Rename {
        /// The volume's current name.
        volume: String,
        /// Its new name (that of the renamed LV or image).
        new_name: String,
    },
    /// Check the archive: the receiver re-hashes every chunk, dom0 compares every manifest with its own.
    ///
    /// Missing, extra and corrupt chunks are reported by volume, session
    /// and address. Exit status 1 if anything is wrong.
    ArchCheck {
        /// Check only this volume [default: every volume].
        volume: Option<String>,
    },
    /// Compare the live volume with its newest session and report the chunks that differ.
    ///
    /// Reads and hashes the whole volume; exit status 1 if it differs.
    Diff {
        /// The volume, in --local, compared with its newest session.
        volume: String,
    },
    /// Read a session back from the archive and check every chunk, writing nothing.
    Verify {
        /// The volume, by the name it was backed up under (see `list`).
        volume: String,
        /// Session name, as shown by `list` [default: the newest].
        #[arg(long)]
        session: Option<String>,
        /// Check every chunk and list all that fail, rather than stopping at the first.
        #[arg(long)]
        all: bool,
    },
    /// List volumes and sessions this dom0 knows for the archive at --dest.
    List {
        /// Only this volume.
        #[arg(conflicts_with = "qubes")]
        volume: Option<String>,
        /// List the Qubes settings sessions instead: per backup run of a Qubes dom0, the qubes `restore-qubes` can recreate from it (dom0's records; the archive is not asked).
        #[arg(long)]
        qubes: bool,
        /// Only dom0's records, without asking the receiver (for when the archive is out of reach, e.g. its disk is not mounted); the output says so.
        #[arg(long)]
        offline: bool,
    },
}
