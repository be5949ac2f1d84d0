//! Both specs built with the real rpmbuild (offline, from the release
//! binaries and the source tree; each spec's %check runs a backup, restore
//! and verify with the packaged binary), and each package holds exactly
//! the files it should, with the right modes, owners and config flags.

use sparsebak_tests::{run_script, TempDir};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn query(rpm: &Path) -> Vec<String> {
    let o = Command::new("rpm")
        .args(["-qp", "--qf", "[%{FILEFLAGS:fflags}|%{FILEMODES:perms}|%{FILEUSERNAME}|%{FILEGROUPNAME}|%{FILENAMES}\\n]"])
        .arg(rpm)
        .output()
        .expect("rpm (Debian package rpm) must be installed");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn list(rpm: &Path) -> Vec<String> {
    let o = Command::new("rpm").arg("-qlp").arg(rpm).output().unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn both_packages_build_offline_and_hold_exactly_their_files() {
    let out = TempDir::new("rpm");
    let log = run_script("rpm/build.sh", &[out.path().as_os_str()]);
    assert_eq!(
        log.matches("rpm-check: backup, restore, verify and recovery OK")
            .count(),
        2,
        "both %check runs: {log}"
    );
    let find = |name: &str| -> PathBuf {
        let dir = out.path().join("x86_64");
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-0"))
            })
            .unwrap_or_else(|| panic!("no {name} package in {}", dir.display()))
    };
    let dom0 = find("sparsebak-dom0");
    let vm = find("sparsebak-vm");
    // rpmlint, with Fedora's conventions and the deliberate findings each
    // overridden with why (rpm/rpmlint.toml): nothing left.
    let o = Command::new("rpmlint")
        .arg("-c")
        .arg(repo().join("rpm/rpmlint.toml"))
        .arg(&dom0)
        .arg(&vm)
        .output()
        .expect("rpmlint (Debian package rpmlint) must be installed");
    let said = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && said.contains("0 errors, 0 warnings"),
        "rpmlint:\n{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Both binaries stripped; every man page compressed.
    for (rpm, bin) in [(&dom0, "sparsebak"), (&vm, "sparsebak-receiver")] {
        let x = out.path().join(format!("x-{bin}"));
        std::fs::create_dir_all(&x).unwrap();
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "rpm2cpio '{}' | cpio -idm --quiet -D '{}'",
                rpm.display(),
                x.display()
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let o = Command::new("file")
            .arg(x.join("usr/bin").join(bin))
            .output()
            .unwrap();
        let kind = String::from_utf8_lossy(&o.stdout);
        assert!(kind.contains(", stripped"), "{kind}");
    }
    // Man pages (one per command; rpm may compress them) and completions,
    // checked apart from the rest.
    let split = |all: Vec<String>, bin: &str| -> Vec<String> {
        let (pages, rest): (Vec<String>, Vec<String>) = all
            .into_iter()
            .partition(|f| f.starts_with("/usr/share/man/man1/"));
        for cmd in ["", "-backup", "-restore", "-verify", "-list", "-key-export"] {
            if bin == "sparsebak-receiver" && !cmd.is_empty() {
                continue;
            }
            let want = format!("/usr/share/man/man1/{bin}{cmd}.1.gz");
            assert!(pages.iter().any(|p| p == &want), "no {want}: {pages:?}");
        }
        assert!(pages
            .iter()
            .all(|p| p.starts_with(&format!("/usr/share/man/man1/{bin}"))));
        if bin == "sparsebak" {
            assert!(!pages.iter().any(|p| p.contains("receiver")), "{pages:?}");
        }
        let comp = [
            format!("/usr/share/bash-completion/completions/{bin}"),
            format!("/usr/share/fish/vendor_completions.d/{bin}.fish"),
            format!("/usr/share/zsh/site-functions/_{bin}"),
        ];
        for c in &comp {
            assert!(rest.contains(c), "no {c}: {rest:?}");
        }
        rest.into_iter().filter(|f| !comp.contains(f)).collect()
    };
    let requires = |rpm: &Path| -> String {
        let o = Command::new("rpm")
            .args(["-qp", "--requires", "--recommends"])
            .arg(rpm)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let r = requires(&dom0);
    for want in [
        "lvm2",
        "device-mapper-persistent-data",
        "qubes-core-admin-client",
    ] {
        assert!(
            r.lines().any(|l| l.trim() == want),
            "dom0 package does not require {want}:\n{r}"
        );
    }
    let r = requires(&vm);
    for want in ["/bin/sh", "qubes-core-agent-qrexec", "openssh-clients"] {
        assert!(
            r.lines().any(|l| l.trim() == want),
            "vm package does not require {want}:\n{r}"
        );
    }
    assert_eq!(
        split(list(&dom0), "sparsebak"),
        [
            "/etc/qubes/policy.d/30-sparsebak.policy",
            "/etc/sparsebak",
            "/etc/sparsebak/sparsebak.toml",
            "/usr/bin/sparsebak",
            "/usr/lib/systemd/system/sparsebak-backup.service",
            "/usr/lib/systemd/system/sparsebak-backup.timer",
            "/usr/share/doc/sparsebak-dom0",
            "/usr/share/doc/sparsebak-dom0/README.md",
            "/var/lib/sparsebak",
        ]
    );
    assert_eq!(
        split(list(&vm), "sparsebak-receiver"),
        [
            "/etc/qubes-rpc/sparsebak.Admin",
            "/etc/qubes-rpc/sparsebak.Backup",
            "/etc/qubes-rpc/sparsebak.Restore",
            "/etc/qubes-rpc/sparsebak.SshRelay",
            "/etc/qubes/post-install.d/30-sparsebak-features.sh",
            "/etc/qubes/rpc-config/sparsebak.Admin",
            "/etc/qubes/rpc-config/sparsebak.Backup",
            "/etc/qubes/rpc-config/sparsebak.Restore",
            "/etc/qubes/rpc-config/sparsebak.SshRelay",
            "/etc/sparsebak",
            "/etc/sparsebak/receiver.toml",
            "/usr/bin/sparsebak-receiver",
        ]
    );
    let q = query(&dom0);
    for want in [
        "cn|-rw-rw-r--|root|qubes|/etc/qubes/policy.d/30-sparsebak.policy",
        "cn|-rw-r--r--|root|root|/etc/sparsebak/sparsebak.toml",
        "|-rwxr-xr-x|root|root|/usr/bin/sparsebak",
        "|drwx------|root|root|/var/lib/sparsebak",
    ] {
        assert!(
            q.iter().any(|l| l == want),
            "dom0 package lacks '{want}':\n{}",
            q.join("\n")
        );
    }
    let q = query(&vm);
    for svc in ["Backup", "Restore", "Admin", "SshRelay"] {
        let want = format!("|-rwxr-xr-x|root|root|/etc/qubes-rpc/sparsebak.{svc}");
        assert!(q.contains(&want), "vm package lacks '{want}'");
        let want = format!("cn|-rw-r--r--|root|root|/etc/qubes/rpc-config/sparsebak.{svc}");
        assert!(q.contains(&want), "vm package lacks '{want}'");
    }
    assert!(q.contains(
        &"|-rwxr-xr-x|root|root|/etc/qubes/post-install.d/30-sparsebak-features.sh".to_string()
    ));
    // The packaged service files are byte-identical to the tested ones.
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; rpm2cpio '{}' | cpio -i --quiet --to-stdout ./etc/qubes-rpc/sparsebak.Backup",
            vm.display()
        ))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "rpm2cpio | cpio: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        o.stdout,
        std::fs::read(repo().join("qubes-rpc/sparsebak.Backup")).unwrap()
    );
}
