//! End to end on real dm-thin: boots a small VM under QEMU with Debian's
//! kernel, lvm2 and thin-provisioning-tools (`tests/vm/run-in-vm.sh`) and
//! runs `tests/vm/thin-e2e.sh` with the project's real binaries inside it.
//! The machines' own kernel has no device-mapper, so this is the only way
//! to run the LVM thin source for real here.

use std::path::Path;
use std::process::Command;

#[test]
fn lvm_thin_end_to_end_in_a_vm() {
    assert!(
        Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 is needed for the dm-thin VM test (scripts/test.sh installs qemu-system-x86)"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bins = sparsebak_tests::bin_dir();
    let work = sparsebak_tests::TempDir::new("dmthin-vm");
    let t = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(root.join("tests/vm/run-in-vm.sh"))
        .arg(root.join("tests/vm/thin-e2e.sh"))
        .arg(work.path().join("w"))
        .env("VM_SHARE", work.path())
        .env("VM_CACHE", root.join("target/vmcache"))
        .env(
            "VM_BINS",
            format!(
                "{} {}",
                bins.join("sparsebak").display(),
                bins.join("sparsebak-receiver").display()
            ),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("E2E OK"),
        "VM scenario failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!(
        "{}",
        stdout
            .lines()
            .filter(|l| l.starts_with('[') || l.starts_with("E2E"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "dm-thin VM end-to-end test: {:.0} s wall clock",
        t.elapsed().as_secs_f64()
    );
}
