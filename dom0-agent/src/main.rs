//! The `sparsebak` binary: a thin shell over the agent library. Parsing is
//! in `cli`, each verb in `commands/`.

use agent::cli::Cli;
use clap::Parser;

fn main() {
    // Before any thread starts, so that all of them (and the local
    // receiver) inherit it; where a sandbox refuses it, nothing is lost
    // but a few percent of speed.
    let _ = agent::sched::batch();
    let cli = Cli::parse();
    match agent::commands::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sparsebak: error: {e:#}");
            std::process::exit(1);
        }
    }
}
