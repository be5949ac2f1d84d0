//! Test stand-in for dom0's `qrexec-client` (see `sparsebak_tests::fakequbes`):
//! only `-d VM 'DEFAULT:QUBESRPC SERVICE+ARG dom0'`; -t and -T (which
//! rewrite bytes) and everything else are refused.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    fn die(m: &str) -> ! {
        sparsebak_tests::fakequbes::die("qrexec-client", m)
    }
    if args.len() != 3 || args[0] != "-d" {
        die(&format!(
            "unsupported arguments {args:?} (only -d VM 'DEFAULT:QUBESRPC SVC dom0')"
        ));
    }
    let cmd = &args[2];
    let Some(rest) = cmd.strip_prefix("DEFAULT:QUBESRPC ") else {
        die(&format!("unsupported command '{cmd}'"));
    };
    let f: Vec<&str> = rest.split(' ').collect();
    if f.len() != 2 || f[1] != "dom0" {
        die(&format!("unsupported command '{cmd}'"));
    }
    sparsebak_tests::fakequbes::call("qrexec-client", &args[1], f[0]);
}
