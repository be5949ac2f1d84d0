//! `bench-transports [SIZE_MIB]` (root): full backup and restore of one
//! generated semi-compressible image through each transport — file://,
//! qubes:// through the qvm-run stand-in (running the real service files
//! as an unprivileged user), and ssh:// to a real sshd on 127.0.0.1 — with
//! the archive on the same filesystem, and prints times, MiB/s and the
//! ratio to file://. A benchmark: it asserts only that each run succeeded.

use sparsebak_tests::fakequbes::make_qube;
use sparsebak_tests::sshd::{ssh_command_setting, Sshd};
use sparsebak_tests::{bin_dir, expect_success, Setup};
use std::fs;
use std::process::Command;
use std::time::Instant;

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .map_or(2048, |s| s.parse().expect("SIZE_MIB"));
    let sshd = Sshd::start();
    let s = Setup::new("bench-transports");
    let img = s.vol("img");
    let st = Command::new(bin_dir().join("gen-image"))
        .arg("create")
        .arg(&img)
        .arg(mib.to_string())
        .arg("1")
        .status()
        .unwrap();
    assert!(st.success());
    let qubes = s.dir.path().join("qubes");
    make_qube(&qubes, "backup-qube", true);
    let dom0_bin = s.dir.path().join("dom0-bin");
    fs::create_dir_all(&dom0_bin).unwrap();
    std::os::unix::fs::symlink(bin_dir().join("qvm-run"), dom0_bin.join("qvm-run")).unwrap();
    let cfg = s.dir.path().join("sparsebak.toml");
    fs::write(&cfg, ssh_command_setting(&sshd.client_config)).unwrap();
    let dests = [
        (
            "file://",
            format!("file://{}/arch-file", s.dir.path().display()),
        ),
        (
            "qubes:// (stand-in)",
            "qubes://backup-qube/bench".to_string(),
        ),
        (
            "ssh:// (loopback sshd)",
            format!(
                "ssh://root@127.0.0.1:{}{}/arch-ssh",
                sshd.port,
                s.dir.path().display()
            ),
        ),
    ];
    println!("== {mib} MiB semi-compressible image, full backup and restore per transport");
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "transport", "backup s", "MiB/s", "restore s", "MiB/s", "vs file"
    );
    let mut base = None;
    for (i, (label, dest)) in dests.iter().enumerate() {
        let meta = s.dir.path().join(format!("meta-{i}"));
        let run = |args: &[&str]| -> f64 {
            let t = Instant::now();
            let o = Command::new(bin_dir().join("sparsebak"))
                .arg("--dest")
                .arg(dest)
                .arg("--meta-dir")
                .arg(&meta)
                .arg("--local")
                .arg(&s.vols)
                .arg("--config")
                .arg(&cfg)
                .arg("--remote-receiver")
                .arg(bin_dir().join("sparsebak-receiver"))
                .arg("--passphrase-file")
                .arg(s.passphrase_file())
                .args(args)
                .env("PATH", format!("{}:/usr/bin:/bin", dom0_bin.display()))
                .env("SBK_FAKE_QUBES", &qubes)
                .env("SBK_FAKE_QUBES_PATH", bin_dir())
                .output()
                .unwrap();
            expect_success(o, &format!("{label} {args:?}"));
            t.elapsed().as_secs_f64()
        };
        run(&["arch-init"]);
        let _ = fs::read(&img); // warm the page cache
        let b = run(&["backup", "img"]);
        let out = s.dir.path().join("restored");
        let r = run(&[
            "restore",
            "img",
            "--save-to",
            out.to_str().unwrap(),
            "--force",
        ]);
        let base_b = *base.get_or_insert(b);
        println!(
            "{label:<24} {b:>10.2} {:>10.0} {r:>10.2} {:>10.0} {:>8.2}",
            mib as f64 / b,
            mib as f64 / r,
            b / base_b
        );
    }
}
