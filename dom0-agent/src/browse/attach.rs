//! `open --attach QUBE` on Qubes: the opened volume given to a qube as a
//! read-only block device, so that its filesystem is parsed there, never
//! in dom0. In order: a read-only loop device on the opened file
//! (`losetup -r`), the qube started if it is not running (`qvm-start
//! --skip-if-running`), the device attached read-only (`qvm-block attach
//! --ro QUBE dom0:loopN`). Undone in the reverse order (`qvm-block
//! detach`, `losetup -d`) before the mount goes away. Every tool gets an
//! argument vector, never a shell; the qube's name is checked first, so
//! it can be neither an option nor anything but a name.

use crate::transport::dest::validate_vm_name;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub qube: String,
    /// The loop device, `/dev/loopN`.
    pub device: String,
}

impl Attachment {
    /// What `qvm-block` calls the device: `dom0:loopN`.
    pub fn ident(&self) -> String {
        format!(
            "dom0:{}",
            self.device.strip_prefix("/dev/").unwrap_or(&self.device)
        )
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<String> {
    let o = cmd
        .output()
        .with_context(|| format!("running {what} (is it installed?)"))?;
    if !o.status.success() {
        bail!(
            "{what} failed ({}): {}",
            o.status,
            protocol::names::escape_text(String::from_utf8_lossy(&o.stderr).trim(), 400)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Attaches `file` to `qube` read-only (see the module doc).
pub fn attach(file: &Path, qube: &str) -> Result<Attachment> {
    let qube = validate_vm_name(qube)?.to_string();
    let device = run(
        "losetup",
        Command::new("losetup")
            .args(["-r", "-f", "--show"])
            .arg(file),
    )?;
    if !device.starts_with("/dev/loop") {
        bail!("losetup gave '{device}', not a loop device");
    }
    let a = Attachment { qube, device };
    let r = run(
        "qvm-start",
        Command::new("qvm-start")
            .arg("--skip-if-running")
            .arg(&a.qube),
    )
    .and_then(|_| {
        run(
            "qvm-block attach",
            Command::new("qvm-block")
                .args(["attach", "--ro"])
                .arg(&a.qube)
                .arg(a.ident()),
        )
    });
    if let Err(e) = r {
        let _ = run(
            "losetup -d",
            Command::new("losetup").arg("-d").arg(&a.device),
        );
        return Err(e.context(format!("attaching {} to qube '{}'", a.device, a.qube)));
    }
    Ok(a)
}

/// Detaches from the qube and removes the loop device; says what it did.
pub fn detach(a: &Attachment) -> String {
    let mut done = Vec::new();
    match run(
        "qvm-block detach",
        Command::new("qvm-block")
            .arg("detach")
            .arg(&a.qube)
            .arg(a.ident()),
    ) {
        Ok(_) => done.push(format!("detached {} from '{}'", a.ident(), a.qube)),
        Err(e) => done.push(format!("{e:#}")),
    }
    match run(
        "losetup -d",
        Command::new("losetup").arg("-d").arg(&a.device),
    ) {
        Ok(_) => done.push(format!("removed {}", a.device)),
        Err(e) => done.push(format!("{e:#}")),
    }
    done.join("; ")
}
