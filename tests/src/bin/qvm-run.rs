//! Test stand-in for dom0's `qvm-run` (see `sparsebak_tests::fakequbes`).
//! Accepts exactly the options sparsebak uses.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let want = sparsebak_tests::fakequbes::QVM_RUN_OPTS;
    let (opts, rest) = args.split_at(args.len().saturating_sub(2));
    for o in opts {
        if !want.contains(&o.as_str()) {
            sparsebak_tests::fakequbes::die("qvm-run", &format!("unsupported argument '{o}'"));
        }
    }
    for w in want {
        if !opts.iter().any(|o| o == w) {
            sparsebak_tests::fakequbes::die("qvm-run", &format!("expected {w}"));
        }
    }
    if rest.len() != 2 || rest[0].starts_with('-') {
        sparsebak_tests::fakequbes::die("qvm-run", "usage: qvm-run [options] --service VM SERVICE");
    }
    sparsebak_tests::fakequbes::call("qvm-run", &rest[0], &rest[1]);
}
