//! Test stand-in for dom0's `qvm-block` (see `sparsebak_tests::fakequbes`):
//! `qvm-block attach [--ro] VMNAME BACKEND:DEVICE` and `qvm-block detach
//! VMNAME BACKEND:DEVICE`, the forms sparsebak uses of what Qubes'
//! qvm-block accepts, with the rules it depends on: the qube exists and
//! runs (a halted qube takes a device only with --persistent, which
//! sparsebak never asks for), the device exists in the backend (here dom0
//! only: `/dev/DEVICE`, a block device), is attached once, and detach
//! needs it attached. Anything else is refused loudly.

use sparsebak_tests::fakequbes::{
    attached_blocks, die, existing_qube, running, set_attached_blocks,
};
use std::os::unix::fs::FileTypeExt;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: qvm-block attach [--ro] VMNAME BACKEND:DEVICE | qvm-block detach VMNAME BACKEND:DEVICE";
    let (verb, rest) = args
        .split_first()
        .unwrap_or_else(|| die("qvm-block", usage));
    let (ro, rest) = match (verb.as_str(), rest.first().map(String::as_str)) {
        ("attach", Some("--ro")) => (true, &rest[1..]),
        ("attach", _) | ("detach", _) => (false, rest),
        _ => die("qvm-block", usage),
    };
    let [vm, dev] = rest else {
        die("qvm-block", usage)
    };
    for a in [vm, dev] {
        if a.starts_with('-') {
            die("qvm-block", &format!("unsupported option '{a}'"));
        }
    }
    let q = existing_qube("qvm-block", vm);
    let Some(("dom0", name)) = dev.split_once(':') else {
        die(
            "qvm-block",
            &format!("'{dev}' is not BACKEND:DEVICE with backend dom0"),
        );
    };
    let mut blocks = attached_blocks(&q);
    let at = blocks.iter().position(|(d, _)| d == dev);
    if verb == "attach" {
        if !running(&q) {
            eprintln!("qvm-block: error: {vm} is not running (a halted qube takes a device only with --persistent)");
            std::process::exit(1);
        }
        let is_block = !name.is_empty()
            && !name.contains('/')
            && std::fs::metadata(format!("/dev/{name}"))
                .is_ok_and(|m| m.file_type().is_block_device());
        if !is_block {
            eprintln!("qvm-block: error: no such device: {dev}");
            std::process::exit(1);
        }
        if at.is_some() {
            eprintln!("qvm-block: error: device {dev} already attached to {vm}");
            std::process::exit(1);
        }
        blocks.push((dev.clone(), ro));
    } else {
        let Some(i) = at else {
            eprintln!("qvm-block: error: device {dev} is not attached to {vm}");
            std::process::exit(1);
        };
        blocks.remove(i);
    }
    set_attached_blocks(&q, &blocks);
}
