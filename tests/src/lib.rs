//! Helpers for the cross-crate tests: they run the real `sparsebak` and
//! `sparsebak-receiver` binaries over real pipes, on real files and real
//! loop-mounted filesystems. Nothing here stands in for project code.

pub mod fakequbes;
pub mod fakequbesd;
pub mod sshd;

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The directory holding the built binaries (same profile as this test or
/// bench binary: tests run from `target/<profile>/deps/`, bins from
/// `target/<profile>/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let parent = exe.parent().expect("exe has a directory");
    let dir = if parent.join("sparsebak").is_file() {
        parent.to_path_buf()
    } else {
        parent
            .parent()
            .expect("target/<profile>/deps/<test>")
            .to_path_buf()
    };
    for b in ["sparsebak", "sparsebak-receiver"] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: build the workspace first (cargo build --workspace, with the same --release flag as the tests); scripts/test.sh does",
            dir.join(b).display()
        );
    }
    dir
}

pub fn agent_bin() -> PathBuf {
    bin_dir().join("sparsebak")
}

pub fn receiver_bin() -> PathBuf {
    bin_dir().join("sparsebak-receiver")
}

/// A scratch directory removed on drop (kept if SPARSEBAK_KEEP_TEST_DIRS is set).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = std::env::var_os("SPARSEBAK_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "sbk-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SPARSEBAK_KEEP_TEST_DIRS").is_none() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.fill(&mut v);
        v
    }
}

/// Half random, half text: compresses about 2:1 like real disk images.
pub fn semi_compressible(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = rng.bytes(n);
    for block in v.chunks_mut(4096) {
        let half = block.len() / 2;
        for (i, b) in block[half..].iter_mut().enumerate() {
            *b = b"the quick brown fox jumps over the lazy dog "[i % 44];
        }
    }
    v
}

pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

pub fn sha_file(path: &Path) -> [u8; 32] {
    sha_bytes(&fs::read(path).unwrap())
}

pub fn sha_bytes(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Every file under `dir`, relative to it, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A digest of every path, type and content under `dir`: equal digests
/// mean the tree did not change.
pub fn tree_digest(dir: &Path) -> String {
    let mut entries = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.push((rel + "/", vec![]));
                walk(base, &p, out);
            } else {
                out.push((rel, fs::read(&p).unwrap_or_default()));
            }
        }
    }
    walk(dir, dir, &mut entries);
    entries.sort();
    let mut h = Sha256::new();
    for (n, c) in &entries {
        h.update(n.as_bytes());
        h.update([0]);
        h.update(Sha256::digest(c));
    }
    format!("{:x} ({} entries)", h.finalize(), entries.len())
}

/// Writes an executable shell script.
/// An agent's hello frame for `op`, naming no archive: what a raw test
/// client sends a real receiver first.
pub fn agent_hello(op: protocol::message::Operation) -> Vec<u8> {
    use protocol::message::{Hello, HelloBody};
    let h = Hello::new(HelloBody::Agent {
        archive_id: None,
        op,
    });
    protocol::frame::encode_frame(protocol::frame::FrameKind::Hello, &h.encode()).unwrap()
}

/// The real receiver (`serve ARGS --archive ARCH`) with `input` already on
/// its stdin, which stays open for the caller (to say nothing, or trickle).
pub fn receiver_fed(
    arch: &Path,
    args: &[&str],
    input: &[u8],
) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = Command::new(receiver_bin())
        .arg("serve")
        .args(args)
        .arg("--archive")
        .arg(arch)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    (child, stdin)
}

/// Waits for `child` to exit, failing the test past `limit`; its status,
/// stderr and the seconds it took.
pub fn exit_within(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, String, f64) {
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < limit, "the process was held past {limit:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let secs = t0.elapsed().as_secs_f64();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err, secs)
}

/// Feeds `input` to a real receiver serving `s`'s archive, whose stdin
/// then closes; returns (success, stderr, the replies it sent).
pub fn feed(s: &Setup, input: &[u8]) -> (bool, String, Vec<protocol::message::Reply>) {
    use protocol::stream::{FrameReader, Incoming};
    let mut child = Command::new(receiver_bin())
        .args(["serve", "--archive"])
        .arg(&s.arch)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    w.join().unwrap();
    let mut replies = Vec::new();
    let mut rd = FrameReader::new(&o.stdout[..]);
    while let Ok(f) = rd.next_frame() {
        if let Incoming::Reply(r) = f {
            replies.push(r);
        }
    }
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        replies,
    )
}

/// A request frame.
pub fn request_frame(r: &protocol::message::Request) -> Vec<u8> {
    let payload = protocol::message::encode_request(r);
    protocol::frame::encode_frame(protocol::frame::FrameKind::Request, &payload).unwrap()
}

pub fn script(path: &Path, body: &str) {
    let mut f = fs::File::create(path).unwrap();
    writeln!(f, "#!/bin/sh\n{body}").unwrap();
    drop(f);
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A chunk frame: `env` claimed for the chunk at `addr` (`raw_len` bytes),
/// with keyed id `id`.
pub fn chunk_frame(addr: u64, raw_len: u32, env: &[u8], id: [u8; 32]) -> Vec<u8> {
    let h = protocol::chunk::ChunkHeader {
        addr,
        codec: protocol::chunk::Codec::Sealed,
        raw_len,
        hash: id,
    };
    let mut w = protocol::stream::FrameWriter::new(Vec::new());
    w.chunk(&h, env).unwrap();
    std::mem::take(w.get_mut())
}

/// The single JSON document a `--json` run printed: stdout must be one
/// line that parses, nothing else.
pub fn json_doc(stdout: &[u8]) -> serde_json::Value {
    let s = String::from_utf8_lossy(stdout);
    assert_eq!(
        s.lines().count(),
        1,
        "--json must print one line on stdout, got:\n{s}"
    );
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Runs a repository script (`bash SCRIPT ARGS…`) and returns its stdout
/// and stderr together; panics with them if it failed.
pub fn run_script(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let o = Command::new("bash")
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(script),
        )
        .args(args)
        .output()
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{script} failed:\n{log}");
    log
}

/// The passphrase every test archive is made with.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// One archive + dom0 metadata + volume directory, driven through the CLI.
pub struct Setup {
    pub dir: TempDir,
    pub vols: PathBuf,
    pub meta: PathBuf,
    pub arch: PathBuf,
    pub receiver: PathBuf,
}

impl Setup {
    /// A setup whose volumes live in `vols` (e.g. on a loop mount).
    pub fn with_vols(tag: &str, vols: Option<&Path>) -> Setup {
        let dir = TempDir::new(tag);
        let v = vols
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("vols"));
        fs::create_dir_all(&v).unwrap();
        Setup {
            vols: v,
            meta: dir.path().join("meta"),
            arch: dir.path().join("archive"),
            receiver: receiver_bin(),
            dir,
        }
    }

    pub fn new(tag: &str) -> Setup {
        Setup::with_vols(tag, None)
    }

    pub fn dest(&self) -> String {
        format!("file://{}", self.arch.display())
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(agent_bin());
        c.arg("--dest")
            .arg(self.dest())
            .arg("--meta-dir")
            .arg(&self.meta)
            .arg("--local")
            .arg(&self.vols);
        c.arg("--remote-receiver").arg(&self.receiver);
        c.arg("--passphrase-file").arg(self.passphrase_file());
        c.args(args).stdin(Stdio::null());
        c
    }

    /// The archive's passphrase, in a file (written on first use).
    pub fn passphrase_file(&self) -> PathBuf {
        let p = self.dir.path().join("passphrase");
        if !p.exists() {
            fs::write(&p, format!("{PASSPHRASE}\n")).unwrap();
        }
        p
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn sparsebak")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        expect_success(self.run(args), &format!("sparsebak {args:?}"))
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "sparsebak {args:?} unexpectedly succeeded:\nstdout: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn init(&self, chunk_size: &str) {
        self.ok(&["arch-init", "--chunk-size", chunk_size]);
    }

    pub fn vol(&self, name: &str) -> PathBuf {
        self.vols.join(name)
    }

    /// Backs up and returns the new session's name.
    pub fn backup(&self, vol: &str) -> String {
        session_in(&self.ok(&["backup", vol]))
    }

    /// Session names dom0 knows for a volume, oldest first.
    pub fn sessions(&self, vol: &str) -> Vec<String> {
        self.session_infos(vol)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    /// (name, volume_size) per session in dom0's records, parsed from
    /// `list --offline --json`.
    pub fn session_infos(&self, vol: &str) -> Vec<(String, u64)> {
        let o = self.run(&["list", vol, "--offline", "--json"]);
        if !o.status.success() {
            return Vec::new();
        }
        let v = json_doc(&o.stdout);
        v["volumes"][0]["sessions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap().to_string(),
                            s["volume_size"].as_u64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs with `--json`; the one JSON document it printed on stdout
    /// (whatever its exit status), checked for the fields every command's
    /// document has.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(&a);
        let v = json_doc(&o.stdout);
        assert_eq!(
            v["exit_status"].as_i64(),
            Some(o.status.code().unwrap_or(-1) as i64),
            "{args:?}: {v}"
        );
        assert_eq!(v["ok"].as_bool(), Some(o.status.success()), "{args:?}: {v}");
        assert!(v["command"].is_string(), "{args:?}: {v}");
        v
    }

    /// dom0's directory of a volume's records.
    pub fn meta_vol(&self, vol: &str) -> PathBuf {
        self.meta
            .join("archives")
            .join(self.archive_id())
            .join("volumes")
            .join(vol)
    }

    /// The opaque id the archive knows `vol` by (from dom0's records).
    pub fn volume_id(&self, vol: &str) -> String {
        let p = self.meta_vol(vol).join("id");
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("no volume id for {vol} at {}: {e}", p.display()))
            .trim()
            .to_string()
    }

    /// The archive's directory of a volume (named by its id).
    pub fn archive_vol(&self, vol: &str) -> PathBuf {
        self.arch.join("volumes").join(self.volume_id(vol))
    }

    /// dom0's key for the archive (what the receiver never has).
    pub fn keys(&self) -> sealed::keys::Keys {
        let p = self
            .meta
            .join("archives")
            .join(self.archive_id())
            .join("key");
        sealed::keys::KeyFile::decode(&fs::read_to_string(p).unwrap())
            .unwrap()
            .keys()
    }

    /// A hostile receiver's opening, from what the archive holds: its
    /// hello and its answers to dom0's first requests (the sealed root,
    /// then both copies of the wrapped key).
    pub fn fake_hello(&self, params: protocol::message::ArchiveParams) -> Vec<u8> {
        use protocol::message::{Hello, HelloBody, Reply};
        let mut w = protocol::stream::FrameWriter::new(Vec::new());
        w.hello(&Hello::new(HelloBody::Receiver {
            archive: Some(params),
        }))
        .unwrap();
        w.reply(&Reply::Data(self.root_blob())).unwrap();
        w.reply(&Reply::StreamEnd { chunks: 1 }).unwrap();
        let mut b = std::mem::take(w.get_mut());
        b.extend(self.key_replies());
        b
    }

    /// The answers to dom0's reads of both copies of the wrapped key.
    pub fn key_replies(&self) -> Vec<u8> {
        use protocol::message::Reply;
        let mut w = protocol::stream::FrameWriter::new(Vec::new());
        for _ in 0..2 {
            w.reply(&Reply::Data(fs::read(self.arch.join("dom0.key")).unwrap()))
                .unwrap();
            w.reply(&Reply::StreamEnd { chunks: 1 }).unwrap();
        }
        std::mem::take(w.get_mut())
    }

    /// The archive's sealed root, as the receiver stores it.
    pub fn root_blob(&self) -> Vec<u8> {
        fs::read(self.arch.join("dom0.root")).unwrap()
    }

    /// The envelope of chunk `idx` (of `cs` bytes) stored in `session`,
    /// and its keyed id from dom0's manifest.
    pub fn stored_chunk(&self, vol: &str, session: &str, idx: u64, cs: u64) -> (Vec<u8>, [u8; 32]) {
        let addr = idx * cs;
        let env = fs::read(
            self.archive_vol(vol)
                .join(session)
                .join(format!("c{:07x}", addr >> 28))
                .join(format!("x{addr:016x}")),
        )
        .unwrap();
        let id = self
            .manifest(vol, session)
            .into_iter()
            .find(|e| e.addr == addr)
            .expect("chunk in the manifest")
            .hash;
        (env, id)
    }

    /// Session directories in the archive itself (committed ones only).
    pub fn archive_sessions(&self, vol: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.archive_vol(vol))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("S_"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn archive_id(&self) -> String {
        let d = self.meta.join("archives");
        fs::read_dir(&d)
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .into_owned()
    }

    /// dom0's manifest of a session.
    pub fn manifest(&self, vol: &str, session: &str) -> Vec<protocol::manifest::Entry> {
        let p = self.meta_vol(vol).join(session).join("manifest");
        let f = fs::File::open(&p).unwrap();
        protocol::manifest::ManifestReader::new(std::io::BufReader::new(f))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    /// Restores `session` and asserts it equals `expected` byte for byte.
    pub fn assert_restores(&self, vol: &str, session: &str, expected: &Path) {
        let out = self.dir.path().join(format!("restored-{session}"));
        let _ = fs::remove_file(&out);
        self.ok(&[
            "restore",
            vol,
            "--session",
            session,
            "--save-to",
            out.to_str().unwrap(),
        ]);
        let (la, lb) = (
            fs::metadata(&out).unwrap().len(),
            fs::metadata(expected).unwrap().len(),
        );
        assert_eq!(la, lb, "restored {vol} {session}: size differs");
        // Compared a block at a time: images of a GiB stay out of memory.
        let (mut a, mut b) = (
            fs::File::open(&out).unwrap(),
            fs::File::open(expected).unwrap(),
        );
        let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        let mut at = 0u64;
        while at < la {
            let n = (la - at).min(x.len() as u64) as usize;
            std::io::Read::read_exact(&mut a, &mut x[..n]).unwrap();
            std::io::Read::read_exact(&mut b, &mut y[..n]).unwrap();
            if let Some(i) = x[..n].iter().zip(&y[..n]).position(|(p, q)| p != q) {
                panic!(
                    "restored {vol} {session}: first difference at byte {}",
                    at + i as u64
                );
            }
            at += n as u64;
        }
        fs::remove_file(&out).unwrap();
    }
}

/// Asserts a command succeeded (showing its output if not); its stdout.
pub fn expect_success(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The session name in a backup summary line.
pub fn session_in(out: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != "session")
        .nth(1)
        .expect("session in summary")
        .to_string()
}

/// The same work through any transport: `ok` runs sparsebak (with the
/// transport's destination and settings) and returns stdout, failing the
/// test on error. arch-init, a full and an incremental backup of a 3 MiB
/// image in `s`'s volume dir, both sessions restored and compared byte for
/// byte, verify, a prune, and a clean arch-check.
pub fn transport_round_trip(s: &Setup, ok: &dyn Fn(&[&str]) -> String) {
    let mut rng = Rng::new(21);
    let v = s.vol("disk.img");
    fs::write(&v, semi_compressible(&mut rng, 3 << 20)).unwrap();
    ok(&["arch-init", "--chunk-size", "64K"]);
    let c1 = s.dir.path().join("c1");
    fs::copy(&v, &c1).unwrap();
    let s1 = session_in(&ok(&["backup", "disk.img"]));
    write_at(&v, 70000, &rng.bytes(200_000));
    let c2 = s.dir.path().join("c2");
    fs::copy(&v, &c2).unwrap();
    let s2 = session_in(&ok(&["backup", "disk.img"]));
    for (sess, copy) in [(&s1, &c1), (&s2, &c2)] {
        let out = s.dir.path().join(format!("r-{sess}"));
        ok(&[
            "restore",
            "disk.img",
            "--session",
            sess,
            "--save-to",
            out.to_str().unwrap(),
        ]);
        assert_eq!(
            fs::read(&out).unwrap(),
            fs::read(copy).unwrap(),
            "restore of {sess}"
        );
        ok(&["verify", "disk.img", "--session", sess]);
    }
    ok(&["prune", "disk.img", "--session", &s1]);
    let out = ok(&["arch-check"]);
    assert!(out.contains("no problems"), "{out}");
}

/// Fails with a clear message unless we are root with loop devices; tests
/// that need a real filesystem call this rather than passing vacuously.
pub fn require_root_and_loop() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test mounts loop filesystems and needs root (CI runs as root)"
    );
    assert!(
        Path::new("/dev/loop-control").exists(),
        "this test needs loop devices (/dev/loop-control missing; modprobe loop)"
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    Xfs,
    Btrfs,
    /// Small filesystems (XFS needs 300 MiB at least), e.g. to fill up.
    Ext4,
}

/// A real filesystem on a loop device, unmounted on drop.
pub struct LoopFs {
    pub mnt: PathBuf,
    _dir: TempDir,
}

impl LoopFs {
    pub fn new(kind: FsKind, size_mib: u64) -> LoopFs {
        LoopFs::with_options(kind, size_mib, "")
    }

    /// Mounted with extra options (e.g. Btrfs' `compress=zstd`).
    pub fn with_options(kind: FsKind, size_mib: u64, options: &str) -> LoopFs {
        require_root_and_loop();
        let dir = TempDir::new(&format!("{kind:?}").to_lowercase());
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(&mnt).unwrap();
        fs::File::create(&img)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let (mkfs, args): (&str, &[&str]) = match kind {
            FsKind::Xfs => ("mkfs.xfs", &["-q", "-f", "-m", "reflink=1"]),
            FsKind::Btrfs => ("mkfs.btrfs", &["-q", "-f"]),
            FsKind::Ext4 => ("mkfs.ext4", &["-q", "-F"]),
        };
        let o = Command::new(mkfs)
            .args(args)
            .arg(&img)
            .output()
            .unwrap_or_else(|e| panic!("{mkfs} not runnable ({e}): install xfsprogs/btrfs-progs"));
        expect_success(o, mkfs);
        let opts = if options.is_empty() {
            "loop".to_string()
        } else {
            format!("loop,{options}")
        };
        let o = Command::new("mount")
            .arg("-o")
            .arg(&opts)
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        expect_success(o, "mount -o loop");
        LoopFs { mnt, _dir: dir }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}
