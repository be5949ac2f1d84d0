//! Stand-ins for Qubes' `qvm-run` and `qrexec-client` (dom0 side), which
//! cannot exist here. They do for the calls sparsebak makes what Qubes does,
//! and fail loudly on anything else:
//!
//! - a "qube" is a directory `$SBK_FAKE_QUBES/VM/` holding the files the
//!   packages install there: `etc/qubes-rpc/`, `etc/qubes/rpc-config/`,
//!   `etc/sparsebak/receiver.toml`, and `home/user/`;
//! - the service is looked up as qrexec does: `NAME+ARG` first, then `NAME`;
//!   missing → exit status 127;
//! - the caller is dom0, or with `SBK_FAKE_QUBES_CALLER=QUBE` another qube
//!   (a management qube running `qvm-run`; `qrexec-client` exists only in
//!   dom0). From dom0 the argument passes unchanged, as `qrexec-client -d`
//!   passes it; from a qube it is sanitized as qrexec-daemon does
//!   (anything outside `[A-Za-z0-9_.-]` becomes `_`; a leading `-` stays);
//! - a call from a qube goes through policy as Qubes' does, with the rules
//!   in the file `$SBK_FAKE_QUBES_POLICY` (first match wins, no match is a
//!   deny): `qvm-run` there is an Admin API client, which first needs
//!   `admin.vm.List` (for `@adminvm` and for the target) and
//!   `admin.vm.CurrentState` of the target, then the service itself; a
//!   refusal exits 126 with "Request refused", as `qrexec-client-vm` does;
//! - the service runs with `QREXEC_REMOTE_DOMAIN` (the caller),
//!   `QREXEC_SERVICE_ARGUMENT` (only when there is one),
//!   `QREXEC_SERVICE_FULL_NAME`, `HOME=VM/home/user`, PATH with the qube's
//!   programs (`$SBK_FAKE_QUBES_PATH`), and the qube's config paths;
//! - `force-user='user'` in rpc-config runs it as the unprivileged account
//!   `$SBK_FAKE_QUBES_USER` (default `nobody`), never as root;
//! - stdin, stdout, stderr and the exit status pass straight through.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The options sparsebak passes to qvm-run before `VM SERVICE`, exactly.
pub const QVM_RUN_OPTS: [&str; 6] = [
    "--pass-io",
    "--no-gui",
    "--no-filter-escape-chars",
    "--no-color-output",
    "--no-color-stderr",
    "--service",
];

/// The qvm-run stand-in called the way sparsebak calls it, on the stand-in
/// qubes under `qubes`.
pub fn qvm_run(qubes: &Path, vm: &str, service: &str) -> Command {
    let mut c = Command::new(crate::bin_dir().join("qvm-run"));
    c.args(QVM_RUN_OPTS)
        .arg(vm)
        .arg(service)
        .env("SBK_FAKE_QUBES", qubes)
        .env("SBK_FAKE_QUBES_PATH", crate::bin_dir());
    c
}

pub fn die(tool: &str, msg: &str) -> ! {
    eprintln!("{tool} (sparsebak test stand-in): {msg}");
    std::process::exit(2)
}

/// qrexec's argument sanitizing.
pub fn sanitize_arg(arg: &str) -> String {
    arg.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn rpc_config(root: &Path, names: &[&str]) -> Option<String> {
    for n in names {
        if let Ok(t) = std::fs::read_to_string(root.join("etc/qubes/rpc-config").join(n)) {
            for line in t.lines() {
                let line = line.trim();
                if line.starts_with('#') || line.is_empty() {
                    continue;
                }
                let Some((k, v)) = line.split_once('=') else {
                    die("qrexec", &format!("bad rpc-config line '{line}' in {n}"));
                };
                match k.trim() {
                    "force-user" => {
                        return Some(v.trim().trim_matches('\'').trim_matches('"').to_string())
                    }
                    "wait-for-session" | "skip-service-descriptor" => {}
                    other => die(
                        "qrexec",
                        &format!("unknown rpc-config key '{other}' in {n}"),
                    ),
                }
            }
        }
    }
    None
}

fn account(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for l in passwd.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() > 3 && f[0] == name {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    die(
        "qrexec",
        &format!("no local account '{name}' to run services as"),
    )
}

/// Runs `SERVICE[+ARG]` in qube `vm` from dom0, as qrexec would; never
/// returns.
pub fn call(tool: &str, vm: &str, service_and_arg: &str) -> ! {
    let qubes = std::env::var_os("SBK_FAKE_QUBES")
        .map(PathBuf::from)
        .unwrap_or_else(|| die(tool, "SBK_FAKE_QUBES is not set"));
    let root = qubes.join(vm);
    if vm.contains('/') || !root.is_dir() {
        eprintln!("{tool}: domain '{vm}' does not exist");
        std::process::exit(1);
    }
    let caller = std::env::var("SBK_FAKE_QUBES_CALLER").unwrap_or_else(|_| "dom0".into());
    let from_qube = caller != "dom0";
    let (service, arg) = match service_and_arg.split_once('+') {
        Some((s, a)) if from_qube => (s.to_string(), Some(sanitize_arg(a))),
        Some((s, a)) => (s.to_string(), Some(a.to_string())),
        None => (service_and_arg.to_string(), None),
    };
    if from_qube {
        if tool != "qvm-run" {
            die(tool, "runs only in dom0");
        }
        let file = std::env::var("SBK_FAKE_QUBES_POLICY")
            .unwrap_or_else(|_| die(tool, "a call from a qube needs SBK_FAKE_QUBES_POLICY"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| die(tool, &format!("policy file {file}: {e}")));
        let rules = parse_policy(&text);
        for (svc, target) in [
            ("admin.vm.List", "@adminvm"),
            ("admin.vm.List", vm),
            ("admin.vm.CurrentState", vm),
            (service.as_str(), vm),
        ] {
            if evaluate(&rules, svc, &caller, target) != "allow" {
                eprintln!("{tool}: Request refused ({svc} from {caller} to {target})");
                std::process::exit(126);
            }
        }
    }
    let full = match &arg {
        Some(a) => format!("{service}+{a}"),
        None => service.clone(),
    };
    let rpc = root.join("etc/qubes-rpc");
    let file = [rpc.join(&full), rpc.join(&service)]
        .into_iter()
        .find(|p| p.is_file());
    let Some(file) = file else {
        eprintln!("{tool}: service {full} not found in {vm}");
        std::process::exit(127);
    };
    let home = root.join("home/user");
    let mut cmd = Command::new(&file);
    cmd.env_clear()
        .env(
            "PATH",
            std::env::var("SBK_FAKE_QUBES_PATH").unwrap_or_default() + ":/usr/bin:/bin",
        )
        .env("HOME", &home)
        .env("USER", "user")
        .env("QREXEC_REMOTE_DOMAIN", &caller)
        .env("QREXEC_SERVICE_FULL_NAME", &full)
        .env(
            "SPARSEBAK_RECEIVER_CONFIG",
            root.join("etc/sparsebak/receiver.toml"),
        );
    if let Some(a) = &arg {
        cmd.env("QREXEC_SERVICE_ARGUMENT", a);
    }
    let names = [full.as_str(), service.as_str()];
    if let Some(u) = rpc_config(&root, &names) {
        if u != "user" {
            die(
                tool,
                &format!("force-user='{u}': the stand-in knows only 'user'"),
            );
        }
        let acct = std::env::var("SBK_FAKE_QUBES_USER").unwrap_or_else(|_| "nobody".into());
        let (uid, gid) = account(&acct);
        use std::os::unix::fs::MetadataExt;
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(1)
            != 0
        {
            die(
                tool,
                "force-user needs root to switch users (run the tests as root)",
            );
        }
        // std drops root's supplementary groups when it switches uid.
        cmd.uid(uid).gid(gid);
    }
    let st = cmd
        .status()
        .unwrap_or_else(|e| die(tool, &format!("cannot run {}: {e}", file.display())));
    std::process::exit(st.code().unwrap_or(128 + 9))
}

/// The repository root (where `qubes-rpc/` is).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// uid and gid of the `nobody` account (the stand-in's service user).
pub fn nobody() -> (u32, u32) {
    let p = std::fs::read_to_string("/etc/passwd").unwrap();
    let l = p
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("a 'nobody' account");
    let f: Vec<&str> = l.split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

/// A stand-in qube, with the sparsebak-vm files from `qubes-rpc/`
/// installed or not. Its `home/user` belongs to the service user.
pub fn make_qube(qubes: &Path, vm: &str, with_package: bool) -> PathBuf {
    use std::fs;
    let root = qubes.join(vm);
    let home = root.join("home/user");
    for d in ["etc/qubes-rpc", "etc/qubes/rpc-config", "etc/sparsebak"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::create_dir_all(&home).unwrap();
    let (uid, gid) = nobody();
    std::os::unix::fs::chown(&home, Some(uid), Some(gid)).unwrap();
    if with_package {
        for e in fs::read_dir(repo().join("qubes-rpc")).unwrap().flatten() {
            if e.path().is_file() {
                fs::copy(e.path(), root.join("etc/qubes-rpc").join(e.file_name())).unwrap();
            }
        }
        for e in fs::read_dir(repo().join("qubes-rpc/rpc-config"))
            .unwrap()
            .flatten()
        {
            fs::copy(
                e.path(),
                root.join("etc/qubes/rpc-config").join(e.file_name()),
            )
            .unwrap();
        }
    }
    root
}

pub struct Rule {
    pub service: String,
    pub source: String,
    pub target: String,
    pub action: String,
}

/// Qubes policy v5 lines: service argument source target action [options].
pub fn parse_policy(text: &str) -> Vec<Rule> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 5, "line {}: too few fields: {line}", n + 1);
        assert!(
            f[0].chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                && f[0] != "*",
            "line {}: service {}",
            n + 1,
            f[0]
        );
        assert!(
            f[1] == "*" || f[1].starts_with('+'),
            "line {}: argument {}",
            n + 1,
            f[1]
        );
        for tok in [f[2], f[3]] {
            let ok = ["@anyvm", "@adminvm", "@dispvm", "@default"].contains(&tok)
                || tok.starts_with("@tag:")
                || tok.starts_with("@type:")
                || tok.starts_with("@dispvm:")
                || (tok.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                    && tok
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
            assert!(ok, "line {}: bad qube token {tok}", n + 1);
        }
        assert!(
            ["allow", "deny", "ask"].contains(&f[4]),
            "line {}: action {}",
            n + 1,
            f[4]
        );
        for opt in &f[5..] {
            let (k, _) = opt.split_once('=').unwrap_or((opt, ""));
            assert!(
                ["target", "user", "default_target", "notify", "autostart"].contains(&k),
                "line {}: option {opt}",
                n + 1
            );
            assert!(
                f[4] != "deny" || k == "notify",
                "line {}: deny takes only notify",
                n + 1
            );
        }
        out.push(Rule {
            service: f[0].into(),
            source: f[2].into(),
            target: f[3].into(),
            action: f[4].into(),
        });
    }
    out
}

/// First match wins; no match is a deny.
pub fn evaluate(rules: &[Rule], service: &str, source: &str, target: &str) -> &'static str {
    let m = |tok: &str, q: &str| tok == "@anyvm" || tok == q;
    for r in rules {
        if r.service == service && m(&r.source, source) && m(&r.target, target) {
            return if r.action == "allow" { "allow" } else { "deny" };
        }
    }
    "deny"
}

/// The stand-in qube `vm` under `$SBK_FAKE_QUBES`, which must exist (as
/// Qubes' tools refuse a name that is not a qube).
pub fn existing_qube(tool: &str, vm: &str) -> PathBuf {
    let root = std::env::var_os("SBK_FAKE_QUBES")
        .map(PathBuf::from)
        .unwrap_or_else(|| die(tool, "SBK_FAKE_QUBES is not set"));
    let d = root.join(vm);
    if vm.is_empty() || vm.starts_with('-') || vm.contains('/') || !d.is_dir() {
        eprintln!("{tool}: error: no such domain: '{vm}'");
        std::process::exit(2);
    }
    d
}

/// Whether a stand-in qube runs (`qvm-start` makes it so).
pub fn running(qube: &Path) -> bool {
    qube.join(".running").exists()
}

/// The block devices attached to a stand-in qube: `BACKEND:DEVICE ro|rw`
/// lines, in `VM/.block`.
pub fn attached_blocks(qube: &Path) -> Vec<(String, bool)> {
    std::fs::read_to_string(qube.join(".block"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (dev, mode) = l.split_once(' ')?;
            Some((dev.to_string(), mode == "ro"))
        })
        .collect()
}

pub fn set_attached_blocks(qube: &Path, blocks: &[(String, bool)]) {
    let text: String = blocks
        .iter()
        .map(|(d, ro)| format!("{d} {}\n", if *ro { "ro" } else { "rw" }))
        .collect();
    std::fs::write(qube.join(".block"), text).unwrap();
}
