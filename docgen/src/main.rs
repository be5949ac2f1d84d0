//! `sparsebak-docgen OUTDIR`: man pages and bash, zsh and fish completions
//! for `sparsebak` and `sparsebak-receiver`, generated from the same clap
//! definitions the binaries parse with, so they cannot drift from `--help`.
//!
//! A separate program on purpose: clap_mangen and clap_complete are needed
//! only when packaging, and dom0's binary keeps its short dependency list.
//!
//! Layout written, per binary NAME: `man/NAME/*.1` (its page and one per
//! subcommand, `sparsebak-backup.1` …), `bash/NAME`, `zsh/_NAME`,
//! `fish/NAME.fish` (the names each shell looks for).

use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: sparsebak-docgen OUTDIR");
        std::process::exit(2);
    };
    if let Err(e) = generate(&PathBuf::from(out)) {
        eprintln!("sparsebak-docgen: {e}");
        std::process::exit(1);
    }
}

fn generate(out: &Path) -> std::io::Result<()> {
    for (name, cmd) in [
        ("sparsebak", agent::cli::Cli::command()),
        ("sparsebak-receiver", receiver::cli::Cli::command()),
    ] {
        let mut cmd = cmd.name(name);
        cmd.build();
        let man = out.join("man").join(name);
        std::fs::create_dir_all(&man)?;
        pages(&cmd, name, &man)?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.to_string()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let d = out.join(dir);
            std::fs::create_dir_all(&d)?;
            let mut f = std::fs::File::create(d.join(file))?;
            clap_complete::generate(shell, &mut cmd.clone(), name, &mut f);
        }
    }
    Ok(())
}

/// The page of `cmd` as `title.1`, then one per subcommand
/// (`title-sub.1`), as git and cargo name theirs.
fn pages(cmd: &clap::Command, title: &str, dir: &Path) -> std::io::Result<()> {
    // clap names are 'static; this short-lived program leaks a few.
    let name: &'static str = Box::leak(title.to_string().into_boxed_str());
    let page = cmd.clone().name(name);
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    std::fs::write(dir.join(format!("{title}.1")), buf)?;
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        pages(sub, &format!("{title}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
