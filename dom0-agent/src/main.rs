//! The `sparsebak` binary: a thin shell over the agent library. Parsing is
//! in `cli`, each verb in `commands/`, output in `report`.

use agent::cli::Cli;
use agent::report::{self, Verbosity};
use clap::{CommandFactory, FromArgMatches};

fn main() {
    // Before any thread starts, so that all of them (and the local
    // receiver) inherit it; where a sandbox refuses it, nothing is lost
    // but a few percent of speed.
    let _ = agent::sched::batch();
    agent::interrupt::install();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // `key export`, not just `key`: the name scripts match on.
    let mut name = Vec::new();
    let mut m = &matches;
    while let Some((n, sub)) = m.subcommand() {
        name.push(n.to_string());
        m = sub;
    }
    let name = name.join(" ");
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (_, true) => Verbosity::Verbose,
        _ => Verbosity::Normal,
    };
    report::init(&name, cli.json, verbosity);
    match agent::commands::run(cli) {
        Ok(code) => {
            report::finish(code, None);
            std::process::exit(code)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("sparsebak: error: {msg}");
            report::finish(1, Some(&msg));
            std::process::exit(1);
        }
    }
}
