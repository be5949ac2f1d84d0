//! The qrexec transport end to end, with the very files under `qubes-rpc/`
//! installed into stand-in qubes and run by the `qvm-run` / `qrexec-client`
//! stand-ins the way Qubes runs them (see `sparsebak_tests::fakequbes`),
//! and a check of the dom0 policy file.

use sparsebak_tests::fakequbes::{evaluate, make_qube, nobody, parse_policy, qvm_run, repo};
use sparsebak_tests::{
    bin_dir, expect_success, require_root_and_loop, transport_round_trip, Setup,
};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Q {
    s: Setup,
    qubes: PathBuf,
    backup_qube: PathBuf,
    /// PATH for dom0's sparsebak: where qvm-run (or only qrexec-client) is.
    dom0_path: String,
}

impl Q {
    fn new(tag: &str, with_qvm_run: bool) -> Q {
        require_root_and_loop();
        let mut s = Setup::new(tag);
        // sparsebak must reach the receiver only through qrexec here.
        s.receiver = PathBuf::from("/nonexistent/sparsebak-receiver");
        let qubes = s.dir.path().join("qubes");
        let backup_qube = make_qube(&qubes, "backup-qube", true);
        make_qube(&qubes, "bare-qube", false);
        let dom0_bin = s.dir.path().join("dom0-bin");
        fs::create_dir_all(&dom0_bin).unwrap();
        let tools: &[&str] = if with_qvm_run {
            &["qvm-run", "qrexec-client"]
        } else {
            &["qrexec-client"]
        };
        for t in tools {
            std::os::unix::fs::symlink(bin_dir().join(t), dom0_bin.join(t)).unwrap();
        }
        Q {
            s,
            qubes,
            backup_qube,
            dom0_path: format!("{}:/usr/bin:/bin", dom0_bin.display()),
        }
    }

    fn run(&self, dest: &str, args: &[&str]) -> Output {
        self.run_env(dest, args, &[])
    }

    fn run_env(&self, dest: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut c = self.s.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        // The last --dest wins.
        c.arg("--dest").arg(dest);
        c.env("PATH", &self.dom0_path)
            .env("SBK_FAKE_QUBES", &self.qubes)
            .env("SBK_FAKE_QUBES_PATH", bin_dir());
        c.output().unwrap()
    }

    fn ok(&self, dest: &str, args: &[&str]) -> String {
        expect_success(
            self.run(dest, args),
            &format!("sparsebak {args:?} to {dest}"),
        )
    }

    fn fails(&self, dest: &str, args: &[&str]) -> String {
        let o = self.run(dest, args);
        assert!(
            !o.status.success(),
            "sparsebak {args:?} to {dest} succeeded"
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

fn round_trip(q: &Q, dest: &str) {
    transport_round_trip(&q.s, &|args: &[&str]| q.ok(dest, args));
}

#[test]
fn backup_restore_verify_prune_through_qvm_run() {
    let q = Q::new("qubes-qvmrun", true);
    round_trip(&q, "qubes://backup-qube/laptop");
    // The archive is where the qube's config says (its home by default),
    // written as the unprivileged user, not root (force-user).
    let arch = q.backup_qube.join("home/user/sparsebak/laptop");
    assert!(arch.join("sparsebak.archive").is_file());
    let (uid, _) = nobody();
    for e in fs::read_dir(arch.join("volumes").join(q.s.volume_id("disk.img")))
        .unwrap()
        .flatten()
    {
        assert_eq!(
            e.metadata().unwrap().uid(),
            uid,
            "{:?} not written as the service user",
            e.path()
        );
    }
}

#[test]
fn qrexec_client_fallback_and_configured_archive_root() {
    let q = Q::new("qubes-qrexec-client", false);
    let root = q.s.dir.path().join("archives-elsewhere");
    fs::create_dir_all(&root).unwrap();
    let (uid, gid) = nobody();
    std::os::unix::fs::chown(&root, Some(uid), Some(gid)).unwrap();
    fs::write(
        q.backup_qube.join("etc/sparsebak/receiver.toml"),
        format!("archive_root = \"{}\"\n", root.display()),
    )
    .unwrap();
    round_trip(&q, "qubes://backup-qube");
    assert!(root.join("default/sparsebak.archive").is_file());
}

#[test]
fn missing_service_and_hostile_arguments() {
    let q = Q::new("qubes-hostile", true);
    // A qube without the package: exit 127 becomes a clear hint.
    let e = q.fails("qubes://bare-qube", &["arch-init"]);
    assert!(
        e.contains(
            "qube 'bare-qube' has no sparsebak.Admin service: install the sparsebak-vm package"
        ),
        "{e}"
    );
    // Paths and option-like names never leave dom0.
    for bad in [
        "qubes://backup-qube/-rf",
        "qubes://backup-qube/../x",
        "qubes://backup-qube/home/user/x",
        "qubes://-x",
    ] {
        let e = q.fails(bad, &["arch-init"]);
        assert!(e.contains("destination"), "{bad}: {e}");
    }
    // Called directly from dom0, where qrexec passes the argument unchanged
    // (`qrexec-client -d`; only calls from other qubes are sanitized), the
    // service refuses anything that is not an archive name and writes
    // nothing.
    let home = q.backup_qube.join("home/user");
    for arg in [
        "-rf",
        "../../etc",
        "..",
        ".hidden",
        "-",
        "a/b",
        &"x".repeat(65),
    ] {
        let o = qvm_run(&q.qubes, "backup-qube", &format!("sparsebak.Admin+{arg}"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("archive name"),
            "{arg}: {err}"
        );
        let made: Vec<_> = fs::read_dir(home.join("sparsebak"))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(made.is_empty(), "{arg}: created {made:?}");
    }
    // The stand-ins refuse what sparsebak never uses (and Qubes would
    // do differently): -t/-T, other options.
    let o = Command::new(bin_dir().join("qrexec-client"))
        .args([
            "-t",
            "-d",
            "backup-qube",
            "DEFAULT:QUBESRPC sparsebak.Admin dom0",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

/// From a management qube, `qvm-run` is an Admin API client: the policy
/// file's documented lines (sparsebak services and the admin.* calls)
/// are exactly what it needs, and the service argument arrives sanitized.
#[test]
fn a_management_qube_needs_the_documented_policy_lines() {
    let q = Q::new("qubes-mgmt", true);
    let shipped =
        fs::read_to_string(repo().join("qubes-rpc/policy.d/30-sparsebak.policy")).unwrap();
    let documented: Vec<String> = shipped
        .lines()
        .filter_map(|l| l.strip_prefix("##   "))
        .filter(|l| l.starts_with("sparsebak.") || l.starts_with("admin."))
        .map(|l| l.replace("mgmt-qube", "mgmt"))
        .collect();
    assert!(documented.len() >= 9, "{documented:?}");
    let policy = q.s.dir.path().join("policy");
    let write = |lines: &[String]| {
        fs::write(&policy, format!("{}\n{shipped}", lines.join("\n"))).unwrap();
    };
    let caller = Path::new("mgmt");
    let env = [
        ("SBK_FAKE_QUBES_CALLER", caller),
        ("SBK_FAKE_QUBES_POLICY", &policy),
    ];
    // The sparsebak lines alone are not enough: qvm-run first lists qubes.
    let services: Vec<String> = documented
        .iter()
        .filter(|l| l.starts_with("sparsebak."))
        .cloned()
        .collect();
    write(&services);
    let o = q.run_env("qubes://backup-qube/m", &["arch-init"], &env);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("Request refused (admin.vm.List"),
        "{e}"
    );
    // With every documented line, the whole round trip works.
    write(&documented);
    let ok = |args: &[&str]| {
        expect_success(
            q.run_env("qubes://backup-qube/m", args, &env),
            &format!("{args:?} from mgmt"),
        )
    };
    transport_round_trip(&q.s, &ok);
    // A caller the lines do not name is refused the service itself.
    let other = Path::new("work");
    let o = q.run_env(
        "qubes://backup-qube/m",
        &["list"],
        &[
            ("SBK_FAKE_QUBES_CALLER", other),
            ("SBK_FAKE_QUBES_POLICY", &policy),
        ],
    );
    assert!(!o.status.success());
    // From a qube, qrexec sanitizes the argument: "a/b" arrives as "a_b",
    // a valid archive name (from dom0 it arrives unchanged and is refused,
    // see missing_service_and_hostile_arguments).
    let o = qvm_run(&q.qubes, "backup-qube", "sparsebak.Admin+a/b")
        .env("SBK_FAKE_QUBES_CALLER", "mgmt")
        .env("SBK_FAKE_QUBES_POLICY", &policy)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!e.contains("archive name"), "{e}");
}

#[test]
fn restore_service_offers_only_restores() {
    let q = Q::new("qubes-ops", true);
    round_trip(&q, "qubes://backup-qube/a");
    // A backup hello sent to sparsebak.Restore is refused by the receiver.
    let hello = sparsebak_tests::agent_hello(protocol::message::Operation::Backup);
    let mut child = qvm_run(&q.qubes, "backup-qube", "sparsebak.Restore+a")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&hello).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not offered"));
}

/// The policy file: every line well-formed, every service denied to any
/// qube, and with the documented local allow line only the management
/// qube gets through.
#[test]
fn policy_file_is_well_formed_and_denies_other_qubes() {
    let text = fs::read_to_string(repo().join("qubes-rpc/policy.d/30-sparsebak.policy")).unwrap();
    let services = [
        "sparsebak.Backup",
        "sparsebak.Restore",
        "sparsebak.Admin",
        "sparsebak.SshRelay",
    ];
    let rules = parse_policy(&text);
    assert_eq!(rules.len(), 4);
    for s in services {
        assert!(
            rules.iter().any(|r| r.service == s
                && r.source == "@anyvm"
                && r.target == "@anyvm"
                && r.action == "deny"),
            "{s} has no catch-all deny"
        );
        for src in ["work", "backup-qube", "sys-net", "disp1234"] {
            assert_eq!(
                evaluate(&rules, s, src, "backup-qube"),
                "deny",
                "{s} from {src}"
            );
        }
    }
    // The local allow lines the comments document, parsed from the comments
    // themselves, placed before the shipped rules.
    let local: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("##   sparsebak."))
        .map(|l| format!("sparsebak.{l}\n"))
        .collect();
    assert_eq!(local.lines().count(), 4, "documented allow lines");
    let with_local = parse_policy(&format!("{local}{text}"));
    assert_eq!(
        evaluate(&with_local, "sparsebak.Restore", "mgmt-qube", "backup-qube"),
        "allow"
    );
    assert_eq!(
        evaluate(&with_local, "sparsebak.Restore", "work", "backup-qube"),
        "deny"
    );
    assert_eq!(
        evaluate(&with_local, "sparsebak.Restore", "mgmt-qube", "work"),
        "deny"
    );
}
