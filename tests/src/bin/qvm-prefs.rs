//! Test stand-in for dom0's `qvm-prefs`: see `sparsebak_tests::fakequbesd`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(sparsebak_tests::fakequbesd::qvm_prefs(&args));
}
