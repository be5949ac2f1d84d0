//! The `qvm-*` command lines `restore-qubes` runs, built as argument
//! vectors (never a shell) from a checked plan, and the runner. Forms
//! are those of qubes-core-admin-client (Qubes 4.2; `qvm-notes` 4.3):
//!
//! - `qvm-create --class C --label L [--template T] [-P POOL]
//!   [--property=K=V]… NAME`: plain properties in the same call;
//! - `qvm-volume import --size=N NAME:VOLUME -`: the data on stdin;
//! - `qvm-features -- NAME FEATURE VALUE` (`--`: a value may start with
//!   `-`);
//! - `qvm-tags NAME add TAG…`;
//! - `qvm-firewall NAME add K=V…` per rule, then `qvm-firewall NAME del
//!   --rule-no 0` (a new qube starts with one rule, accept all);
//! - `qvm-notes --force --set=TEXT NAME`;
//! - `qvm-prefs NAME PROPERTY VALUE` (`''` for none) for references;
//! - a device Qubes 4.3 recorded (with its `mode`): 4.3's `qvm-device
//!   CLASS assign [--required|--ask] [--port] [--option K=V]… NAME
//!   BACKEND:PORT[:DEVICE_ID]`, so its mode and the identity it was bound
//!   to come back (`--port`: any device in that port); one Qubes 4.2
//!   recorded (every persistent one is required, by port): `qvm-device
//!   CLASS attach --persistent [--option K=V]… NAME BACKEND:IDENT`, which
//!   4.3 also takes. 4.2's tool has no `assign`: a 4.3 record restored
//!   there is refused by it and reported, and the rest goes on.
//!
//! Every value that is not a checked name rides inside an `--opt=value`
//! argument or after `--`, so none can be read as an option.

use super::plan::Step;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::process::{Command, Stdio};

/// Runs `argv` to its end, stdin empty: its exit status, stdout, and
/// stderr made safe to print.
fn output(argv: &[String]) -> Result<(std::process::ExitStatus, Vec<u8>, String)> {
    crate::report::detail(format!("running {}", shown(argv)));
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("unable to run {}", argv[0]))?;
    let err = protocol::names::escape_text(String::from_utf8_lossy(&out.stderr).trim(), 2000);
    Ok((out.status, out.stdout, err))
}

/// The qubes this system has (`qvm-ls --raw-list`).
pub fn existing_qubes() -> Result<BTreeSet<String>> {
    let (st, stdout, err) =
        output(&v(&["qvm-ls", "--raw-list"])).context("restore-qubes runs in a Qubes dom0")?;
    if !st.success() {
        bail!("qvm-ls --raw-list failed ({st}): {err}");
    }
    Ok(String::from_utf8_lossy(&stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// Runs one tool; its error output on failure.
pub fn run(argv: &[String]) -> Result<()> {
    let (st, _, err) = output(argv)?;
    if !st.success() {
        bail!("{} failed ({st}): {err}", shown(argv));
    }
    Ok(())
}

/// Runs `qvm-create`: Ok with the errors of properties it could not set
/// (exit status 2: "but VM created"), an error if the qube was not made.
pub fn create(argv: &[String]) -> Result<Vec<String>> {
    let (st, _, err) = output(argv)?;
    match st.code() {
        Some(0) => Ok(Vec::new()),
        Some(2) => Ok(vec![format!(
            "created, but some properties were refused: {err}"
        )]),
        _ => bail!("{} failed ({st}): {err}", shown(argv)),
    }
}

/// A command line for messages (values escaped, long ones cut).
pub fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|a| protocol::names::escape_text(a, 80))
        .collect::<Vec<_>>()
        .join(" ")
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn create_command(s: &Step, pool: Option<&str>) -> Vec<String> {
    let mut a = v(&["qvm-create", "--class", &s.class, "--label", &s.label]);
    if let Some(t) = &s.template {
        a.extend(v(&["--template", t]));
    }
    if let Some(p) = pool {
        a.extend(v(&["-P", p]));
    }
    for (k, val) in &s.properties {
        a.push(format!("--property={k}={val}"));
    }
    a.push(s.name.clone());
    a
}

pub fn import_command(qube: &str, volume: &str, size: u64) -> Vec<String> {
    vec![
        "qvm-volume".into(),
        "import".into(),
        format!("--size={size}"),
        format!("{qube}:{volume}"),
        "-".into(),
    ]
}

/// A qube's own settings, once it exists and holds its data.
pub fn settings_commands(s: &Step) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (k, val) in &s.features {
        out.push(v(&["qvm-features", "--", &s.name, k, val]));
    }
    if !s.tags.is_empty() {
        let mut a = v(&["qvm-tags", &s.name, "add"]);
        a.extend(s.tags.iter().cloned());
        out.push(a);
    }
    if let Some(rules) = &s.firewall {
        let default =
            rules.len() == 1 && rules[0] == [("action".to_string(), "accept".to_string())];
        if !default {
            for r in rules {
                let mut a = v(&["qvm-firewall", &s.name, "add"]);
                a.extend(r.iter().map(|(k, val)| format!("{k}={val}")));
                out.push(a);
            }
            out.push(v(&["qvm-firewall", &s.name, "del", "--rule-no", "0"]));
        }
    }
    if let Some(n) = &s.notes {
        out.push(vec![
            "qvm-notes".into(),
            "--force".into(),
            format!("--set={n}"),
            s.name.clone(),
        ]);
    }
    out
}

/// What refers to other qubes: set once every qube exists.
pub fn last_commands(s: &Step) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (k, target) in &s.references {
        out.push(v(&["qvm-prefs", &s.name, k, target]));
    }
    for d in &s.devices {
        out.push(device_command(&s.name, d));
    }
    out
}

/// The command that gives `name` device `d` back (see the module doc).
fn device_command(name: &str, d: &sealed::qubes::Device) -> Vec<String> {
    let attr = |k: &str| {
        d.attrs
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    };
    let (mut a, target) = match attr("mode") {
        Some(mode) => {
            let mut a = v(&["qvm-device", &d.class, "assign"]);
            match mode {
                "required" => a.push("--required".into()),
                "ask-to-attach" => a.push("--ask".into()),
                // auto-attach: the tool's default.
                _ => {}
            }
            let target = match attr("device-id") {
                Some("*") | None => {
                    a.push("--port".into());
                    format!("{}:{}", d.backend, d.ident)
                }
                Some(id) => format!("{}:{}:{id}", d.backend, d.ident),
            };
            (a, target)
        }
        None => (
            v(&["qvm-device", &d.class, "attach", "--persistent"]),
            format!("{}:{}", d.backend, d.ident),
        ),
    };
    for (k, val) in &d.options {
        a.push("--option".into());
        a.push(format!("{k}={val}"));
    }
    a.push(name.to_string());
    a.push(target);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> Step {
        Step {
            qube: "work".into(),
            name: "work-restored".into(),
            class: "AppVM".into(),
            label: "blue".into(),
            template: Some("fedora".into()),
            properties: vec![("kernelopts".into(), "-x --help".into())],
            references: vec![("netvm".into(), String::new())],
            features: vec![("f".into(), "-rf".into())],
            tags: vec!["a".into(), "b".into()],
            firewall: Some(vec![vec![
                ("action".into(), "accept".into()),
                ("dsthost".into(), "example.com".into()),
            ]]),
            notes: Some("--delete".into()),
            devices: vec![sealed::qubes::Device {
                class: "pci".into(),
                backend: "dom0".into(),
                ident: "00_14.3".into(),
                options: vec![("no-strict-reset".into(), "True".into())],
                attrs: vec![],
            }],
            volumes: vec![],
        }
    }

    #[test]
    fn values_never_stand_alone_as_options() {
        let s = step();
        assert_eq!(
            create_command(&s, Some("lvm2")),
            v(&[
                "qvm-create",
                "--class",
                "AppVM",
                "--label",
                "blue",
                "--template",
                "fedora",
                "-P",
                "lvm2",
                "--property=kernelopts=-x --help",
                "work-restored"
            ])
        );
        let cmds = settings_commands(&s);
        assert_eq!(
            cmds[0],
            v(&["qvm-features", "--", "work-restored", "f", "-rf"])
        );
        assert_eq!(cmds[1], v(&["qvm-tags", "work-restored", "add", "a", "b"]));
        assert_eq!(
            cmds[2],
            v(&[
                "qvm-firewall",
                "work-restored",
                "add",
                "action=accept",
                "dsthost=example.com"
            ])
        );
        assert_eq!(
            cmds[3],
            v(&["qvm-firewall", "work-restored", "del", "--rule-no", "0"])
        );
        assert_eq!(
            cmds[4],
            v(&["qvm-notes", "--force", "--set=--delete", "work-restored"])
        );
        let last = last_commands(&s);
        assert_eq!(last[0], v(&["qvm-prefs", "work-restored", "netvm", ""]));
        assert_eq!(
            last[1],
            v(&[
                "qvm-device",
                "pci",
                "attach",
                "--persistent",
                "--option",
                "no-strict-reset=True",
                "work-restored",
                "dom0:00_14.3"
            ])
        );
        // Qubes 4.3's records: the mode and the identity come back.
        let dev = |mode: &str, id: &str| sealed::qubes::Device {
            class: "usb".into(),
            backend: "sys-usb".into(),
            ident: "2-1".into(),
            options: vec![],
            attrs: vec![
                ("device-id".into(), id.into()),
                ("mode".into(), mode.into()),
            ],
        };
        assert_eq!(
            device_command("w", &dev("required", "0x1234:0x5678::p0e0100")),
            v(&[
                "qvm-device",
                "usb",
                "assign",
                "--required",
                "w",
                "sys-usb:2-1:0x1234:0x5678::p0e0100"
            ])
        );
        assert_eq!(
            device_command("w", &dev("ask-to-attach", "*")),
            v(&[
                "qvm-device",
                "usb",
                "assign",
                "--ask",
                "--port",
                "w",
                "sys-usb:2-1"
            ])
        );
        assert_eq!(
            device_command("w", &dev("auto-attach", "0xab:0xcd::p030000")),
            v(&[
                "qvm-device",
                "usb",
                "assign",
                "w",
                "sys-usb:2-1:0xab:0xcd::p030000"
            ])
        );
        assert_eq!(
            import_command("work-restored", "private", 4096),
            v(&[
                "qvm-volume",
                "import",
                "--size=4096",
                "work-restored:private",
                "-"
            ])
        );
    }

    #[test]
    fn the_default_firewall_is_left_alone() {
        let mut s = step();
        s.firewall = Some(vec![vec![("action".into(), "accept".into())]]);
        assert!(!settings_commands(&s).iter().any(|c| c[0] == "qvm-firewall"));
    }
}
