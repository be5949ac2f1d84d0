//! The ssh transports against a real sshd on 127.0.0.1: `ssh://` from
//! dom0 directly, and `qubes-ssh://` through the sparsebak.SshRelay service
//! of a stand-in networked qube (run as its unprivileged user, with its own
//! ssh config). The archive path has a space, a quote and a `$(...)`: it
//! reaches the far side as one literal path, never as shell code.

use sparsebak_tests::fakequbes::{make_qube, nobody};
use sparsebak_tests::sshd::{client_config, ssh_command_setting, Sshd};
use sparsebak_tests::{bin_dir, expect_success, receiver_bin, transport_round_trip, Setup};
use std::fs;
use std::path::Path;
use std::process::Output;

struct T {
    s: Setup,
    cfg: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl T {
    fn run(&self, dest: &str, args: &[&str]) -> Output {
        let mut c = self.s.cmd(args);
        c.arg("--dest").arg(dest).arg("--config").arg(&self.cfg);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn ok(&self, dest: &str, args: &[&str]) -> String {
        expect_success(
            self.run(dest, args),
            &format!("sparsebak {args:?} to {dest}"),
        )
    }
}

fn round_trip(t: &T, dest: &str, archive: &Path) {
    transport_round_trip(&t.s, &|args: &[&str]| t.ok(dest, args));
    assert!(
        archive.join("sparsebak.archive").is_file(),
        "archive not at {}",
        archive.display()
    );
}

const NASTY: &str = "arch ive's $(touch PWNED)";

#[test]
fn ssh_transport_to_a_real_sshd() {
    let sshd = Sshd::start();
    let s = Setup::new("ssh");
    let cfg = s.dir.path().join("sparsebak.toml");
    fs::write(&cfg, ssh_command_setting(&sshd.client_config)).unwrap();
    let archive = s.dir.path().join(NASTY);
    let dest = format!("ssh://root@127.0.0.1:{}{}", sshd.port, archive.display());
    let t = T {
        s,
        cfg,
        env: vec![],
    };
    // The far side runs the receiver named by --remote-receiver (an
    // absolute path here; `sparsebak-receiver` on PATH by default).
    round_trip(&t, &dest, &archive);
    assert!(!Path::new("/root/PWNED").exists() && !t.s.dir.path().join("PWNED").exists());

    // A missing receiver on the far side is named.
    let mut c = t.s.cmd(&["arch-check"]);
    c.arg("--dest").arg(&dest).arg("--config").arg(&t.cfg);
    c.arg("--remote-receiver")
        .arg("/nonexistent/sparsebak-receiver");
    let o = c.output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("was not found on 127.0.0.1: install sparsebak-receiver there"),
        "{e}"
    );
}

#[test]
fn qubes_ssh_through_the_relay_service() {
    let sshd = Sshd::start();
    let s = Setup::new("qubes-ssh");
    let qubes = s.dir.path().join("qubes");
    let net = make_qube(&qubes, "net-qube", true);
    // The networked qube's own ssh setup, readable by its user only.
    let home = net.join("home/user");
    let key = home.join("id_backup");
    fs::copy(&sshd.key, &key).unwrap();
    let ssh_cfg = home.join("ssh_config");
    client_config(&ssh_cfg, sshd.port, &key);
    let (uid, gid) = nobody();
    for p in [&key, &ssh_cfg] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    fs::write(
        net.join("etc/sparsebak/receiver.toml"),
        format!(
            "{}ssh_remote_receiver = \"{}\"\n",
            ssh_command_setting(&ssh_cfg),
            receiver_bin().display()
        ),
    )
    .unwrap();
    let dom0_bin = s.dir.path().join("dom0-bin");
    fs::create_dir_all(&dom0_bin).unwrap();
    std::os::unix::fs::symlink(bin_dir().join("qvm-run"), dom0_bin.join("qvm-run")).unwrap();
    let cfg = s.dir.path().join("sparsebak.toml");
    fs::write(&cfg, "").unwrap();
    let archive = s.dir.path().join(NASTY);
    let dest = format!(
        "qubes-ssh://net-qube/root@127.0.0.1:{}{}",
        sshd.port,
        archive.display()
    );
    let t = T {
        s,
        cfg,
        env: vec![
            (
                "PATH".into(),
                format!("{}:/usr/bin:/bin", dom0_bin.display()),
            ),
            ("SBK_FAKE_QUBES".into(), qubes.display().to_string()),
            (
                "SBK_FAKE_QUBES_PATH".into(),
                bin_dir().display().to_string(),
            ),
        ],
    };
    round_trip(&t, &dest, &archive);
    assert!(!t.s.dir.path().join("PWNED").exists());
}
