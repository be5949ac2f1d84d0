//! Test stand-in for dom0's `qvm-start` (see `sparsebak_tests::fakequbes`):
//! `qvm-start [--skip-if-running] VMNAME...`, the form sparsebak uses of
//! what Qubes' qvm-start accepts. A qube that runs already is an error
//! without `--skip-if-running`, as in Qubes; a name that is not a qube is
//! refused. Any other option is refused loudly.

use sparsebak_tests::fakequbes::{die, existing_qube, running};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let skip = args.first().is_some_and(|a| a == "--skip-if-running");
    let names = &args[usize::from(skip)..];
    if names.is_empty() {
        die(
            "qvm-start",
            "usage: qvm-start [--skip-if-running] VMNAME [VMNAME ...]",
        );
    }
    for n in names {
        if n.starts_with('-') {
            die("qvm-start", &format!("unsupported option '{n}'"));
        }
    }
    for n in names {
        let q = existing_qube("qvm-start", n);
        if running(&q) {
            if skip {
                continue;
            }
            eprintln!("qvm-start: error: domain {n} is already running");
            std::process::exit(1);
        }
        std::fs::write(q.join(".running"), "").unwrap();
    }
}
