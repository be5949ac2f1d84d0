//! Running the storage tools: always an argument vector, never a shell;
//! their stderr goes into the error; a missing tool names its package.

use anyhow::{bail, Context, Result};
use std::process::{Child, Command, Output, Stdio};

/// The package that provides `tool` on Debian and on Fedora (Qubes dom0).
fn package_of(tool: &str) -> &'static str {
    match tool {
        "thin_delta" | "thin_dump" | "thin_restore" => {
            "thin-provisioning-tools (Debian) / device-mapper-persistent-data (Fedora)"
        }
        "dmsetup" => "dmsetup (Debian) / device-mapper (Fedora)",
        _ => "lvm2",
    }
}

fn spawn_error(tool: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow::anyhow!("'{tool}' not found: install {}", package_of(tool))
    } else {
        anyhow::anyhow!("unable to run '{tool}': {e}")
    }
}

/// Runs `tool args…` to completion; fails with its stderr if it fails.
pub fn run(tool: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(tool, e))?;
    check(tool, args, out)
}

/// Runs and returns trimmed stdout.
pub fn output(tool: &str, args: &[&str]) -> Result<String> {
    Ok(String::from_utf8(run(tool, args)?.stdout)
        .context("tool output is not UTF-8")?
        .trim()
        .to_string())
}

/// Starts `tool args…` with stdout piped, for streaming its output.
pub fn spawn(tool: &str, args: &[&str]) -> Result<Child> {
    Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(tool, e))
}

/// Waits for a spawned tool; fails with its stderr.
pub fn finish(tool: &str, args: &[&str], child: Child) -> Result<()> {
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {tool}"))?;
    check(tool, args, out).map(|_| ())
}

/// A finished tool's output, or an error carrying its stderr.
fn check(tool: &str, args: &[&str], out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "{tool} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
