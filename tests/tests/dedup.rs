//! Deduplication (DESIGN §13) through the real binaries: a template and
//! its reflink clones on real loop-mounted Btrfs and XFS share one dedup
//! group; every session of every volume restores byte-exact; the clones
//! store only what they rewrote; prune and delete in every order free
//! exactly the chunks no session names; two scopes show the receiver no
//! equality; damage a hostile receiver could do to shared chunks is
//! caught by dom0; `arch-import` rebuilds dom0's index.

use sparsebak_tests::{semi_compressible, write_at, FsKind, LoopFs, Rng, Setup};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1024 * 1024;
const CS: u64 = 256 * 1024;

/// Every chunk file under the archive's volumes: path → (inode, size).
fn chunk_files(arch: &Path) -> BTreeMap<PathBuf, (u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![arch.join("volumes")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with('x') {
                out.insert(p, (m.ino(), m.len()));
            }
        }
    }
    out
}

/// The keyed ids of stored chunks of every session dom0 has, of `vols`.
fn stored_ids(s: &Setup, vols: &[&str]) -> BTreeSet<[u8; 32]> {
    let mut ids = BTreeSet::new();
    for v in vols {
        for sess in s.sessions(v) {
            for e in s.manifest(v, &sess) {
                if e.codec == protocol::chunk::Codec::Sealed {
                    ids.insert(e.hash);
                }
            }
        }
    }
    ids
}

/// The archive stores each chunk its sessions name exactly once, and
/// nothing else: as many distinct files (inodes) as distinct keyed ids.
fn stored_exactly_once(s: &Setup, vols: &[&str], what: &str) {
    let files = chunk_files(&s.arch);
    let inodes: BTreeSet<u64> = files.values().map(|(i, _)| *i).collect();
    let ids = stored_ids(s, vols);
    assert_eq!(
        inodes.len(),
        ids.len(),
        "{what}: the archive holds {} distinct chunks for {} distinct ids",
        inodes.len(),
        ids.len()
    );
}

/// Restores every session of every volume and compares it with the copy
/// kept when it was taken.
fn all_restore(s: &Setup, kept: &BTreeMap<(String, String), PathBuf>) {
    for ((v, sess), copy) in kept {
        if s.sessions(v).contains(sess) {
            s.assert_restores(v, sess, copy);
        }
    }
}

/// Rewrites `n` random 64 KiB blocks of `path`; the chunks they touch.
fn rewrite(path: &Path, rng: &mut Rng, n: u64) -> BTreeSet<u64> {
    let size = fs::metadata(path).unwrap().len();
    let mut chunks = BTreeSet::new();
    for _ in 0..n {
        let b = rng.below(size / 65536);
        write_at(path, b * 65536, &rng.bytes(65536));
        chunks.insert(b * 65536 / CS);
    }
    chunks
}

fn stored_bytes(s: &Setup, vol: &str) -> Vec<u64> {
    let j = s.json(&["list", vol, "--offline"]);
    j["volumes"][0]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["stored_bytes"].as_u64().unwrap())
        .collect()
}

/// A template and two reflink clones, each clone 1 % rewritten, in one
/// dedup group; returns the setup, the loop filesystem and the copies of
/// every session.
struct Clones {
    s: Setup,
    _fs: LoopFs,
    kept: BTreeMap<(String, String), PathBuf>,
    rng: Rng,
}

impl Clones {
    fn keep(&mut self, vol: &str, session: &str) {
        let copy = self.s.dir.path().join(format!("{vol}-{session}"));
        fs::copy(self.s.vol(vol), &copy).unwrap();
        self.kept.insert((vol.into(), session.into()), copy);
    }

    fn backup(&mut self, vol: &str) -> String {
        let sess = self.s.backup(vol);
        self.keep(vol, &sess);
        sess
    }
}

const VOLS: [&str; 3] = ["tpl.img", "c1.img", "c2.img"];

fn template_and_clones(kind: FsKind, tag: &str) -> Clones {
    let lfs = LoopFs::new(kind, 600);
    let s = Setup::with_vols(tag, Some(&lfs.mnt));
    s.init("256K");
    let mut c = Clones {
        s,
        _fs: lfs,
        kept: BTreeMap::new(),
        rng: Rng::new(29),
    };
    let size = 40 * MIB + 3 * 4096; // not chunk-aligned: a short last chunk
    let tpl = c.s.vol("tpl.img");
    fs::write(&tpl, semi_compressible(&mut c.rng, size as usize)).unwrap();
    let out = c.s.ok(&["add", "--dedup-group", "templates", "tpl.img"]);
    assert!(out.contains("dedup group 'templates'"), "{out}");
    // c2 joins the group through the config's patterns instead.
    fs::write(
        c.s.dir.path().join("sparsebak.toml"),
        "[[dedup_group]]\nname = \"templates\"\nvolumes = [\"c?.img\"]\n",
    )
    .unwrap();
    let out = c.s.ok(&["backup", "tpl.img"]);
    assert!(out.contains("reflink snapshot, full"), "{out}");
    let t1 = c.s.sessions("tpl.img")[0].clone();
    c.keep("tpl.img", &t1);
    let tpl_stored = stored_bytes(&c.s, "tpl.img")[0];
    for (i, v) in ["c1.img", "c2.img"].into_iter().enumerate() {
        let st = Command::new("cp")
            .arg("--reflink=always")
            .arg(&tpl)
            .arg(c.s.vol(v))
            .status()
            .unwrap();
        assert!(st.success(), "{kind:?}: cp --reflink");
        // 1 % of the clone rewritten. c1 is added to the group by name,
        // c2 joins it through the config's patterns.
        let touched = rewrite(&c.s.vol(v), &mut c.rng, size / 65536 / 100);
        if v == "c1.img" {
            c.s.ok(&["add", "--dedup-group", "templates", v]);
        }
        let cfg = c.s.dir.path().join("sparsebak.toml");
        let out = c.s.ok(&["--config", cfg.to_str().unwrap(), "backup", v]);
        let sess = session_of(&out);
        c.keep(v, &sess);
        // The clone's first session stores what it rewrote, and at most
        // 2 % of the template's stored bytes beyond it.
        let stored = stored_bytes(&c.s, v)[0];
        let bound = tpl_stored / 50 + touched.len() as u64 * (CS + 64);
        assert!(
            stored <= bound,
            "{kind:?} clone {i}: stored {stored} bytes, more than {bound} (template {tpl_stored}): {out}"
        );
        assert!(out.contains("already stored: by reference"), "{out}");
    }
    let l = c.s.json(&["list", "--offline"]);
    for v in l["volumes"].as_array().unwrap() {
        assert_eq!(v["dedup_group"], "templates", "{v}");
    }
    assert!(
        l["referenced_bytes"].as_u64().unwrap() > 2 * 36 * MIB,
        "{l}"
    );
    c
}

fn session_of(out: &str) -> String {
    sparsebak_tests::session_in(out)
}

fn clones_restore_and_store_once(kind: FsKind, tag: &str) {
    let mut c = template_and_clones(kind, tag);
    stored_exactly_once(&c.s, &VOLS, "after the first backups");
    // The template is updated; a clone picks the same update up (the
    // same chunks stored once in the group).
    let size = fs::metadata(c.s.vol("tpl.img")).unwrap().len();
    let update = semi_compressible(&mut c.rng, 2 * MIB as usize);
    write_at(&c.s.vol("tpl.img"), 8 * MIB, &update);
    write_at(&c.s.vol("c1.img"), 8 * MIB, &update);
    c.backup("tpl.img");
    let out = c.s.ok(&["backup", "c1.img"]);
    let sess = session_of(&out);
    c.keep("c1.img", &sess);
    assert!(
        out.contains("sent 0 B"),
        "the update is already stored: {out}"
    );
    assert_eq!(size, fs::metadata(c.s.vol("c1.img")).unwrap().len());
    stored_exactly_once(&c.s, &VOLS, "after the updates");
    all_restore(&c.s, &c.kept);
    assert!(c.s.ok(&["arch-check"]).contains("no problems"));
    drop(c);
    let _ = Command::new("sync").status();
}

#[test]
fn btrfs_template_and_clones_are_stored_once() {
    clones_restore_and_store_once(FsKind::Btrfs, "dedup-btrfs");
}

#[test]
fn xfs_template_and_clones_are_stored_once() {
    clones_restore_and_store_once(FsKind::Xfs, "dedup-xfs");
}

/// Prune and delete in every order the issue names: the template's
/// oldest first, a clone first, the group's newest session, a whole
/// volume. After each, every remaining session restores byte-exact and
/// the archive holds exactly the chunks some session names.
#[test]
fn prune_and_delete_in_every_order_free_exactly_what_nothing_names() {
    for order in 0..3 {
        let mut c = template_and_clones(FsKind::Btrfs, &format!("dedup-prune-{order}"));
        // A second session of each: some chunks rewritten, some moved
        // within the group (a clone takes the template's new data).
        let update = semi_compressible(&mut c.rng, MIB as usize);
        for v in VOLS {
            write_at(&c.s.vol(v), 4 * MIB, &update);
            rewrite(&c.s.vol(v), &mut c.rng, 4);
            c.backup(v);
        }
        let first = |c: &Clones, v: &str| c.s.sessions(v)[0].clone();
        let steps: Vec<(&str, &str)> = match order {
            // The template's oldest first, then a clone's, then delete the template.
            0 => vec![
                ("prune", "tpl.img"),
                ("prune", "c1.img"),
                ("delete", "tpl.img"),
            ],
            // A clone first, then the template, then delete a clone.
            1 => vec![
                ("prune", "c2.img"),
                ("prune", "tpl.img"),
                ("delete", "c1.img"),
            ],
            // Delete the template whole first, then prune both clones.
            _ => vec![
                ("delete", "tpl.img"),
                ("prune", "c1.img"),
                ("prune", "c2.img"),
            ],
        };
        let mut left: Vec<&str> = VOLS.to_vec();
        for (what, v) in steps {
            if what == "prune" {
                let s1 = first(&c, v);
                c.s.ok(&["prune", v, "--session", &s1]);
            } else {
                c.s.ok(&["delete", v, "--force"]);
                left.retain(|x| *x != v);
            }
            stored_exactly_once(&c.s, &left, &format!("order {order} after {what} {v}"));
            all_restore(&c.s, &c.kept);
        }
        // The group's newest: still restores, and a new clone of what the
        // group holds is stored by reference alone.
        let survivor = left[0];
        let st = Command::new("cp")
            .arg("--reflink=always")
            .arg(c.s.vol(survivor))
            .arg(c.s.vol("c3.img"))
            .status()
            .unwrap();
        assert!(st.success());
        c.s.ok(&["add", "--dedup-group", "templates", "c3.img"]);
        let o = c.s.run(&["backup", "c3.img", "-v"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("sent 0 B"),
            "order {order}: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(c.s.ok(&["arch-check"]).contains("no problems"));
    }
}

/// Two volumes holding identical data in their own scopes: the receiver
/// sees unrelated ids and no shared file. (With one scope the ids would
/// be equal and the files linked: this fails if the scope is ignored.)
#[test]
fn identical_volumes_in_two_scopes_show_the_receiver_no_equality() {
    let s = Setup::new("dedup-scopes");
    s.init("256K");
    let data = semi_compressible(&mut Rng::new(3), 6 * MIB as usize);
    fs::write(s.vol("a.img"), &data).unwrap();
    fs::write(s.vol("b.img"), &data).unwrap();
    s.ok(&["backup", "a.img", "b.img"]);
    let receiver_ids = |v: &str| -> BTreeSet<[u8; 32]> {
        let sess = s.sessions(v)[0].clone();
        let p = s.archive_vol(v).join(&sess).join("manifest");
        protocol::manifest::ManifestReader::new(fs::File::open(p).unwrap())
            .unwrap()
            .map(|e| e.unwrap().hash)
            .collect()
    };
    let (a, b) = (receiver_ids("a.img"), receiver_ids("b.img"));
    assert_eq!(a.len(), 24);
    assert!(a.is_disjoint(&b), "equal data in two scopes has equal ids");
    for (p, _) in chunk_files(&s.arch) {
        assert_eq!(
            fs::metadata(&p).unwrap().nlink(),
            1,
            "{} is shared",
            p.display()
        );
    }
    // In one group the same data is stored once (the control).
    fs::write(s.vol("c.img"), &data).unwrap();
    fs::write(s.vol("d.img"), &data).unwrap();
    s.ok(&["add", "--dedup-group", "g", "c.img", "d.img"]);
    let out = s.ok(&["backup", "c.img", "d.img"]);
    assert!(out.contains("sent 0 B"), "{out}");
    let (c_ids, d_ids) = (receiver_ids("c.img"), receiver_ids("d.img"));
    assert_eq!(c_ids, d_ids);
    assert!(c_ids.is_disjoint(&a));
    // A group is fixed once a volume is backed up.
    let e = s.fails(&["add", "--dedup-group", "g", "a.img"]);
    assert!(e.contains("fixed at its first backup"), "{e}");
}

/// What a hostile or damaged receiver can do to shared chunks is caught:
/// a reference it cannot confirm is sent as data; a wrong, stale or
/// foreign chunk where a reference was linked fails restore and verify by
/// name, and writes nothing.
#[test]
fn shared_chunks_a_receiver_damages_are_caught_never_restored() {
    let s = Setup::new("dedup-hostile");
    s.init("256K");
    let mut rng = Rng::new(8);
    let data = semi_compressible(&mut rng, 4 * MIB as usize);
    fs::write(s.vol("tpl.img"), &data).unwrap();
    s.ok(&["add", "--dedup-group", "g", "tpl.img"]);
    let t1 = s.backup("tpl.img");
    // The place chunk 2 would be referenced at is gone from the archive:
    // the receiver refuses that reference and dom0 sends the data.
    let gone = s
        .archive_vol("tpl.img")
        .join(&t1)
        .join("c0000000")
        .join(format!("x{:016x}", 2 * CS));
    fs::remove_file(&gone).unwrap();
    fs::write(s.vol("c1.img"), &data).unwrap();
    s.ok(&["add", "--dedup-group", "g", "c1.img"]);
    let o = s.run(&["backup", "c1.img"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("could not confirm 1 reference"), "{err}");
    let c1 = s.sessions("c1.img")[0].clone();
    s.assert_restores("c1.img", &c1, &s.vol("c1.img"));
    let l = s.json(&["list", "c1.img", "--offline"]);
    assert_eq!(l["volumes"][0]["sessions"][0]["ref_chunks"], 15);
    // The template's chunk is reported missing, its session only.
    let e = s.json(&["arch-check"]);
    assert_eq!(e["ok"], false, "{e}");
    let problems = e["problems"].to_string();
    assert!(
        problems.contains("tpl.img") && !problems.contains("c1.img"),
        "{problems}"
    );
    // Now damage what c1's links point at, three ways. Each is caught.
    let c1_dir = s.archive_vol("c1.img").join(&c1).join("c0000000");
    let file = |a: u64| c1_dir.join(format!("x{:016x}", a * CS));
    fs::write(
        s.vol("other.img"),
        semi_compressible(&mut rng, 4 * MIB as usize),
    )
    .unwrap();
    let o1 = s.backup("other.img");
    let foreign = s
        .archive_vol("other.img")
        .join(&o1)
        .join("c0000000")
        .join(format!("x{:016x}", 5 * CS));
    let wrong_chunk = fs::read(file(7)).unwrap();
    for (what, a, bytes) in [
        ("another chunk of the group", 5u64, wrong_chunk),
        ("a chunk of another scope", 6, fs::read(&foreign).unwrap()),
    ] {
        let good = fs::read(file(a)).unwrap();
        // Replaced, not written through: the link's other names keep theirs.
        fs::remove_file(file(a)).unwrap();
        fs::write(file(a), &bytes).unwrap();
        let target = s.dir.path().join("never.img");
        let e = s.fails(&["restore", "c1.img", "--save-to", target.to_str().unwrap()]);
        assert!(e.contains(&format!("{:#x}", a * CS)), "{what}: {e}");
        assert!(
            !target.exists(),
            "{what}: a failed restore wrote its target"
        );
        let v = s.fails(&["verify", "c1.img"]);
        assert!(v.contains(&format!("{:#x}", a * CS)), "{what}: {v}");
        fs::remove_file(file(a)).unwrap();
        fs::write(file(a), good).unwrap();
    }
    s.assert_restores("c1.img", &c1, &s.vol("c1.img"));
    // A dangling reference (the clone's linked file gone): arch-check
    // counts the references and names the missing one, the clone's only.
    fs::remove_file(file(9)).unwrap();
    let e = s.json(&["arch-check", "c1.img"]);
    assert_eq!(e["referenced_chunks"], 15, "{e}");
    let problems = e["problems"].to_string();
    assert!(
        problems.contains("missing chunk") && problems.contains(&format!("{:#x}", 9 * CS)),
        "{problems}"
    );
    // The next backup of the clone sends it again, as data (healing; the
    // restores above recorded the chunks they found bad, 5 and 6, too).
    let out = s.ok(&["backup", "c1.img"]);
    assert!(
        out.contains("re-sent 3 chunks damaged") && out.contains("0 already stored"),
        "{out}"
    );
    let c2 = s.sessions("c1.img")[1].clone();
    s.assert_restores("c1.img", &c2, &s.vol("c1.img"));
}

/// A fresh dom0 recovers from the archive and a passphrase and rebuilds
/// its dedup index from the manifests: a new clone of the template is
/// stored by reference alone.
#[test]
fn arch_import_rebuilds_the_index() {
    let s = Setup::new("dedup-import");
    s.init("256K");
    let data = semi_compressible(&mut Rng::new(4), 5 * MIB as usize);
    fs::write(s.vol("tpl.img"), &data).unwrap();
    s.ok(&["add", "--dedup-group", "g", "tpl.img"]);
    s.backup("tpl.img");
    let fresh = Setup::with_vols("dedup-import-fresh", Some(&s.vols));
    fs::remove_dir_all(&fresh.arch).ok();
    let st = Command::new("cp")
        .arg("-a")
        .arg(&s.arch)
        .arg(&fresh.arch)
        .status()
        .unwrap();
    assert!(st.success());
    let out = fresh.ok(&["arch-import"]);
    assert!(
        out.contains("dedup index rebuilt: 20 stored chunks"),
        "{out}"
    );
    let l = fresh.json(&["list", "--offline"]);
    assert_eq!(l["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(l["volumes"][0]["dedup_group"], "g");
    // c1 is not in the group on the fresh dom0's records unless added.
    fs::write(s.vol("c1.img"), &data).unwrap();
    write_at(&s.vol("c1.img"), MIB, &Rng::new(5).bytes(4096));
    fresh.ok(&["add", "--dedup-group", "g", "c1.img"]);
    let out = fresh.ok(&["backup", "c1.img"]);
    assert!(out.contains("19 already stored: by reference"), "{out}");
    let c1 = fresh.sessions("c1.img")[0].clone();
    fresh.assert_restores("c1.img", &c1, &s.vol("c1.img"));
}

/// An archive of format 2 (before deduplication: ids not bound to a
/// scope) is refused with a message naming the format; nothing changes.
#[test]
fn a_format_2_archive_is_refused_by_name() {
    let s = Setup::new("dedup-format2");
    s.init("256K");
    let info = s.arch.join("sparsebak.archive");
    let mut b = fs::read(&info).unwrap();
    assert_eq!(&b[..8], b"SBKARC03");
    b[6..8].copy_from_slice(b"02");
    fs::write(&info, &b).unwrap();
    let before = sparsebak_tests::tree_digest(&s.arch);
    let e = s.fails(&["list"]);
    assert!(
        e.contains("is of format 2") && e.contains("before deduplication"),
        "{e}"
    );
    assert_eq!(sparsebak_tests::tree_digest(&s.arch), before);
}

/// Equal chunks within one new session (two copies of the same data in a
/// fresh image) are stored once: the second copy's chunks are links to
/// the first's, made as the session is written; restores are exact, and
/// a prune and a delete keep the count of files right. A copy is found
/// once the pipeline has sent the first: further on than its window
/// (workers × 4 chunks; 2 workers here, so 8 chunks, 2 MiB), as below.
#[test]
fn equal_chunks_within_one_session_are_stored_once() {
    let s = Setup::new("dedup-within");
    s.init("256K");
    let mut rng = Rng::new(12);
    let half = semi_compressible(&mut rng, 3 * MIB as usize);
    let mut image = half.clone();
    image.extend_from_slice(&semi_compressible(&mut rng, 3 * MIB as usize));
    image.extend_from_slice(&half);
    image.extend_from_slice(&half[..MIB as usize]);
    fs::write(s.vol("v.img"), &image).unwrap();
    let cfg = s.dir.path().join("two-workers.toml");
    fs::write(&cfg, "workers = 2\n").unwrap();
    let out = s.ok(&["--config", cfg.to_str().unwrap(), "backup", "v.img"]);
    assert!(
        out.contains("40 chunks changed (0 zero, 16 already stored"),
        "{out}"
    );
    let s1 = s.sessions("v.img")[0].clone();
    let files = chunk_files(&s.arch);
    let inodes: BTreeSet<u64> = files.values().map(|(i, _)| *i).collect();
    assert_eq!((files.len(), inodes.len()), (40, 24));
    s.assert_restores("v.img", &s1, &s.vol("v.img"));
    // A later session rewrites the first copy: the second still restores
    // from the shared files, and a prune of the first session keeps them.
    let keep = s.dir.path().join("s1.img");
    fs::copy(s.vol("v.img"), &keep).unwrap();
    write_at(&s.vol("v.img"), 0, &Rng::new(13).bytes(MIB as usize));
    let s2 = s.backup("v.img");
    s.assert_restores("v.img", &s1, &keep);
    s.ok(&["prune", "v.img", "--session", &s1]);
    s.assert_restores("v.img", &s2, &s.vol("v.img"));
    stored_exactly_once(&s, &["v.img"], "after the prune");
    assert!(s.ok(&["arch-check"]).contains("no problems"));
}
