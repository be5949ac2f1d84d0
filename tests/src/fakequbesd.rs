//! Stand-ins for the dom0 tools `restore-qubes` runs (`qvm-ls`,
//! `qvm-create`, `qvm-prefs`, `qvm-features`, `qvm-tags`, `qvm-firewall`,
//! `qvm-notes`, `qvm-device`, `qvm-volume`), which cannot exist outside
//! Qubes. They keep a qubesd's state in the JSON file `$SBK_FAKE_QUBESD`
//! (imported volume data beside it, in `volumes/QUBE-VOLUME.img`).
//!
//! Each parses its arguments as the real tool's argparse parser does
//! (qubes-core-admin-client `qubesadmin/tools/qvm_*.py`): options as
//! `--opt value`, `--opt=value` or `-o value`, anywhere before `--`; an
//! argument starting with `-` that is not one of the tool's options is an
//! error ("unrecognized arguments"), exit 2, as argparse does. Only the
//! forms listed in each tool's usage are accepted; anything else fails
//! loudly. And the rules Qubes enforces that a restore depends on:
//! names are valid and unique, labels and classes from the fixed sets, a
//! template exists and is of the right class, a qube referred to exists
//! (a netvm provides network, a default_dispvm is a disposable template),
//! properties exist and take values of their type, tags and features are
//! well-formed, a device's backend exists, a volume import gets exactly
//! the size it promised or changes nothing, a firewall rule number exists.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub qubes: BTreeMap<String, Qube>,
    /// What `qvm-create` uses when no --template is given.
    pub default_template: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Qube {
    pub class: String,
    pub label: String,
    pub template: Option<String>,
    /// Properties set (not defaults); a reference as the qube's name, or
    /// "" for none.
    pub properties: BTreeMap<String, String>,
    pub features: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    pub firewall: Vec<Vec<(String, String)>>,
    pub notes: String,
    pub devices: Vec<Assigned>,
    /// Volume name → size of the imported data (absent: never imported).
    pub volumes: BTreeMap<String, u64>,
    /// The pool its volumes were created in (`-P`; None: the default).
    #[serde(default)]
    pub pool: Option<String>,
}

/// A persistent device assignment: (class, backend:port[:device-id],
/// mode, options). `attach --persistent` is an assignment of mode
/// `required`, as Qubes 4.3's tool says (an alias of `assign
/// --required`) and as 4.2 stored it.
pub type Assigned = (String, String, String, Vec<(String, String)>);

pub const LABELS: [&str; 8] = [
    "red", "orange", "yellow", "green", "gray", "blue", "purple", "black",
];
const CLASSES: [&str; 4] = ["AppVM", "TemplateVM", "StandaloneVM", "DispVM"];
const REFS: [&str; 5] = [
    "netvm",
    "default_dispvm",
    "management_dispvm",
    "guivm",
    "audiovm",
];
const INTS: [&str; 6] = [
    "memory",
    "maxmem",
    "vcpus",
    "qrexec_timeout",
    "shutdown_timeout",
    "stubdom_mem",
];
const BOOLS: [&str; 6] = [
    "provides_network",
    "template_for_dispvms",
    "include_in_backups",
    "autostart",
    "debug",
    "seamless_gui_mode",
];
const TEXTS: [&str; 5] = [
    "kernel",
    "kernelopts",
    "default_user",
    "virt_mode",
    "keyboard_layout",
];

pub fn state_path() -> PathBuf {
    PathBuf::from(
        std::env::var_os("SBK_FAKE_QUBESD")
            .unwrap_or_else(|| die("qubesd", "SBK_FAKE_QUBESD unset")),
    )
}

pub fn load() -> State {
    let t = std::fs::read_to_string(state_path()).unwrap_or_else(|e| die("qubesd", &e.to_string()));
    serde_json::from_str(&t).unwrap_or_else(|e| die("qubesd", &e.to_string()))
}

pub fn save(s: &State) {
    let p = state_path();
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(s).unwrap()).unwrap();
    std::fs::rename(tmp, p).unwrap();
}

pub fn volume_file(qube: &str, volume: &str) -> PathBuf {
    state_path()
        .parent()
        .unwrap()
        .join("volumes")
        .join(format!("{qube}-{volume}.img"))
}

fn die(tool: &str, msg: &str) -> ! {
    eprintln!("{tool}: error: {msg} (sparsebak test stand-in)");
    std::process::exit(2)
}

/// A Qubes refusal (qubesd said no): exit 1.
fn refuse(tool: &str, msg: &str) -> ! {
    eprintln!("{tool}: error: {msg}");
    std::process::exit(1)
}

fn valid_name(n: &str) -> bool {
    n.len() <= 31
        && n.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !matches!(n, "none" | "default")
        && !n.ends_with("-dm")
}

/// argparse, as far as these tools use it: `spec` lists each option's
/// spellings and whether it takes a value.
struct Parsed {
    opts: Vec<(String, Option<String>)>,
    pos: Vec<String>,
}

fn parse(tool: &str, args: &[String], spec: &[(&[&str], bool)]) -> Parsed {
    let mut p = Parsed {
        opts: Vec::new(),
        pos: Vec::new(),
    };
    let mut i = 0;
    let mut rest = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if rest || a == "-" || !a.starts_with('-') {
            p.pos.push(a.clone());
            continue;
        }
        if a == "--" {
            rest = true;
            continue;
        }
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if a.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let Some((names, takes)) = spec.iter().find(|(n, _)| n.contains(&flag.as_str())) else {
            die(tool, &format!("unrecognized arguments: {a}"));
        };
        let canon = names[0].to_string();
        let value = match (takes, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => {
                let v = args
                    .get(i)
                    .filter(|v| !v.starts_with('-') || v.len() == 1)
                    .unwrap_or_else(|| {
                        die(tool, &format!("argument {flag}: expected one argument"))
                    });
                i += 1;
                Some(v.clone())
            }
            (false, None) => None,
            (false, Some(_)) => die(tool, &format!("argument {flag}: ignored explicit argument")),
        };
        p.opts.push((canon, value));
    }
    p
}

impl Parsed {
    fn get(&self, o: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(k, _)| k == o)
            .and_then(|(_, v)| v.as_deref())
    }
    fn has(&self, o: &str) -> bool {
        self.opts.iter().any(|(k, _)| k == o)
    }
    fn all(&self, o: &str) -> Vec<&str> {
        self.opts
            .iter()
            .filter(|(k, _)| k == o)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }
}

fn qube<'a>(tool: &str, s: &'a mut State, name: &str) -> &'a mut Qube {
    s.qubes
        .get_mut(name)
        .unwrap_or_else(|| die(tool, &format!("argument VMNAME: no such domain: '{name}'")))
}

/// Checks `value` for property `prop` of qube `owner` as qubesd does.
fn check_property(s: &State, owner: &str, prop: &str, value: &str) -> Result<(), String> {
    if REFS.contains(&prop) {
        if value.is_empty() {
            return Ok(());
        }
        let Some(t) = s.qubes.get(value) else {
            return Err(format!("{owner}: {prop}: no such qube '{value}'"));
        };
        let is = |k: &str| t.properties.get(k).map(String::as_str) == Some("True");
        if prop == "netvm" && !is("provides_network") {
            return Err(format!("{owner}: netvm {value} does not provide network"));
        }
        if prop == "default_dispvm" && !is("template_for_dispvms") {
            return Err(format!(
                "{owner}: default_dispvm {value} is not a disposable template"
            ));
        }
        if value == owner {
            return Err(format!("{owner}: {prop} cannot be the qube itself"));
        }
    } else if INTS.contains(&prop) {
        if value.parse::<u64>().is_err() {
            return Err(format!("{prop}: invalid value '{value}'"));
        }
    } else if BOOLS.contains(&prop) {
        if !matches!(value, "True" | "False") {
            return Err(format!("{prop}: invalid boolean '{value}'"));
        }
    } else if prop == "virt_mode" {
        if !matches!(value, "pv" | "pvh" | "hvm") {
            return Err(format!("virt_mode: invalid value '{value}'"));
        }
    } else if !TEXTS.contains(&prop) {
        return Err(format!("no such property: '{prop}'"));
    }
    Ok(())
}

pub fn qvm_ls(args: &[String]) -> i32 {
    let p = parse("qvm-ls", args, &[(&["--raw-list"], false)]);
    if !p.has("--raw-list") || !p.pos.is_empty() {
        die(
            "qvm-ls",
            "usage: qvm-ls --raw-list (the only form sparsebak uses)",
        );
    }
    let s = load();
    for n in s.qubes.keys() {
        println!("{n}");
    }
    0
}

pub fn qvm_create(args: &[String]) -> i32 {
    let t = "qvm-create";
    let p = parse(
        t,
        args,
        &[
            (&["--class", "-C"], true),
            (&["--label", "-l"], true),
            (&["--template", "-t"], true),
            (&["--property", "--prop"], true),
            (&["-P"], true),
            (&["--pool", "-p"], true),
        ],
    );
    let [name] = p.pos.as_slice() else {
        die(t, "usage: qvm-create [--class C] --label L [--template T] [-P POOL] [--property K=V]... VMNAME");
    };
    let mut s = load();
    if !valid_name(name) {
        refuse(t, &format!("invalid qube name '{name}'"));
    }
    if s.qubes.contains_key(name) {
        refuse(
            t,
            &format!("Error creating VM: A VM with name {name} already exists"),
        );
    }
    let class = p.get("--class").unwrap_or("AppVM");
    if !CLASSES.contains(&class) {
        die(t, &format!("no such domain class: '{class}'"));
    }
    let label = p
        .get("--label")
        .unwrap_or_else(|| die(t, "--label option is mandatory"));
    if !LABELS.contains(&label) {
        die(t, &format!("no such label: '{label}'"));
    }
    if let Some(pool) = p.get("-P") {
        if pool != "lvm" && pool != "varlibqubes" && pool != "vm-pool2" {
            refuse(t, &format!("Error creating VM: no such pool: '{pool}'"));
        }
    }
    let template = match (class, p.get("--template")) {
        ("TemplateVM", Some(_)) => refuse(t, "a TemplateVM has no template"),
        ("TemplateVM", None) | ("StandaloneVM", None) => None,
        (_, Some(tp)) => Some(tp.to_string()),
        ("DispVM", None) => refuse(
            t,
            "Error creating VM: a DispVM needs a template (no default_dispvm here)",
        ),
        (_, None) => Some(
            s.default_template
                .clone()
                .unwrap_or_else(|| refuse(t, "Error creating VM: no default template")),
        ),
    };
    if let Some(tp) = &template {
        let Some(tq) = s.qubes.get(tp) else {
            refuse(t, &format!("Error creating VM: no such template: '{tp}'"));
        };
        let fits = match class {
            "AppVM" | "StandaloneVM" => tq.class == "TemplateVM",
            "DispVM" => {
                tq.class == "AppVM"
                    && tq
                        .properties
                        .get("template_for_dispvms")
                        .map(String::as_str)
                        == Some("True")
            }
            _ => false,
        };
        if !fits {
            refuse(
                t,
                &format!("Error creating VM: '{tp}' cannot be the template of a {class}"),
            );
        }
    }
    let mut q = Qube {
        class: class.into(),
        label: label.into(),
        template,
        firewall: vec![vec![("action".into(), "accept".into())]],
        pool: p.get("-P").map(str::to_string),
        ..Default::default()
    };
    let mut props = Vec::new();
    for kv in p.all("--property") {
        let Some((k, v)) = kv.split_once('=') else {
            die(
                t,
                &format!("argument --property: expected NAME=VALUE, got '{kv}'"),
            );
        };
        props.push((k.to_string(), v.to_string()));
    }
    // As qvm-create does: the qube is created, then each property set; one
    // that fails is reported and the status is 2 ("but VM created").
    s.qubes.insert(name.clone(), q.clone());
    let mut status = 0;
    for (k, v) in props {
        match check_property(&s, name, &k, &v) {
            Ok(()) => {
                q.properties.insert(k, v);
            }
            Err(e) => {
                eprintln!("qvm-create: error: Error setting property {k} (but VM created): {e}");
                status = 2;
            }
        }
    }
    s.qubes.insert(name.clone(), q);
    save(&s);
    status
}

pub fn qvm_prefs(args: &[String]) -> i32 {
    let t = "qvm-prefs";
    let p = parse(t, args, &[]);
    let [name, prop, value] = p.pos.as_slice() else {
        die(
            t,
            "usage: qvm-prefs VMNAME PROPERTY VALUE (the form sparsebak uses)",
        );
    };
    let mut s = load();
    qube(t, &mut s, name);
    if let Err(e) = check_property(&s, name, prop, value) {
        refuse(t, &e);
    }
    qube(t, &mut s, name)
        .properties
        .insert(prop.clone(), value.clone());
    save(&s);
    0
}

pub fn qvm_features(args: &[String]) -> i32 {
    let t = "qvm-features";
    let p = parse(t, args, &[]);
    let [name, feature, value] = p.pos.as_slice() else {
        die(
            t,
            "usage: qvm-features VMNAME FEATURE VALUE (the form sparsebak uses)",
        );
    };
    if feature.is_empty()
        || !feature
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        refuse(t, &format!("invalid feature name '{feature}'"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        refuse(t, "invalid feature value");
    }
    let mut s = load();
    qube(t, &mut s, name)
        .features
        .insert(feature.clone(), value.clone());
    save(&s);
    0
}

pub fn qvm_tags(args: &[String]) -> i32 {
    let t = "qvm-tags";
    let p = parse(t, args, &[]);
    let Some((name, rest)) = p.pos.split_first() else {
        die(t, "usage: qvm-tags VMNAME add TAG...");
    };
    let Some((verb, tags)) = rest.split_first() else {
        die(t, "usage: qvm-tags VMNAME add TAG...");
    };
    if !matches!(verb.as_str(), "add" | "a" | "set") || tags.is_empty() {
        die(
            t,
            "usage: qvm-tags VMNAME add TAG... (the form sparsebak uses)",
        );
    }
    for tag in tags {
        if tag.is_empty()
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            refuse(t, &format!("invalid tag '{tag}'"));
        }
    }
    let mut s = load();
    qube(t, &mut s, name).tags.extend(tags.iter().cloned());
    save(&s);
    0
}

pub fn qvm_firewall(args: &[String]) -> i32 {
    let t = "qvm-firewall";
    let p = parse(t, args, &[(&["--rule-no"], true), (&["--before"], true)]);
    let Some((name, rest)) = p.pos.split_first() else {
        die(
            t,
            "usage: qvm-firewall VMNAME add RULE... | del --rule-no N",
        );
    };
    let mut s = load();
    let q = qube(t, &mut s, name);
    match rest.split_first() {
        Some((verb, rule)) if verb == "add" && !rule.is_empty() && !p.has("--rule-no") => {
            let mut assumed = vec!["action", "dsthost", "proto", "dstports", "icmptype"];
            let allowed = [
                "action",
                "dsthost",
                "proto",
                "dstports",
                "icmptype",
                "specialtarget",
                "comment",
                "expire",
            ];
            let mut r = Vec::new();
            for el in rule {
                let parts: Vec<&str> = el.split('=').collect();
                let (k, v) = match parts.as_slice() {
                    [k, v] => (k.to_string(), v.to_string()),
                    [v] => (assumed[0].to_string(), v.to_string()),
                    _ => die(t, &format!("invalid rule description: {el}")),
                };
                let k = if k == "dst4" || k == "dst6" {
                    "dsthost".to_string()
                } else {
                    k
                };
                if !allowed.contains(&k.as_str()) {
                    die(t, &format!("Invalid rule element: {el}"));
                }
                assumed.retain(|a| *a != k);
                r.push((k, v));
            }
            if !r.iter().any(|(k, _)| k == "action")
                || !r
                    .iter()
                    .any(|(k, v)| k == "action" && (v == "accept" || v == "drop"))
            {
                refuse(t, "a rule needs action=accept or action=drop");
            }
            match p.get("--before") {
                Some(b) => {
                    let b: usize = b
                        .parse()
                        .unwrap_or_else(|_| die(t, "--before: not a number"));
                    if b > q.firewall.len() {
                        refuse(t, "list index out of range");
                    }
                    q.firewall.insert(b, r);
                }
                None => q.firewall.push(r),
            }
        }
        Some((verb, none)) if verb == "del" && none.is_empty() => {
            let n: usize = p
                .get("--rule-no")
                .unwrap_or_else(|| {
                    die(
                        t,
                        "usage: qvm-firewall VMNAME del --rule-no N (the form sparsebak uses)",
                    )
                })
                .parse()
                .unwrap_or_else(|_| die(t, "argument --rule-no: invalid int value"));
            if n >= q.firewall.len() {
                refuse(t, "pop index out of range");
            }
            q.firewall.remove(n);
        }
        _ => die(
            t,
            "usage: qvm-firewall VMNAME add RULE... | del --rule-no N",
        ),
    }
    save(&s);
    0
}

pub fn qvm_notes(args: &[String]) -> i32 {
    let t = "qvm-notes";
    let p = parse(
        t,
        args,
        &[(&["--force", "-f"], false), (&["--set", "-s"], true)],
    );
    let [name] = p.pos.as_slice() else {
        die(t, "usage: qvm-notes [--force] --set NOTES VMNAME");
    };
    let notes = p
        .get("--set")
        .unwrap_or_else(|| die(t, "--set is the only action sparsebak uses"));
    if !p.has("--force") {
        die(t, "without --force it asks on the terminal");
    }
    if notes.len() > 256 * 1024 {
        refuse(t, "notes over 256 KiB");
    }
    let mut s = load();
    qube(t, &mut s, name).notes = notes.to_string();
    save(&s);
    0
}

/// `attach --persistent` (4.2, and 4.3's alias of `assign --required`),
/// and 4.3's `assign [--ask|--required] [--port|--device]`, each option
/// only on the subcommand whose parser has it (`qvm_device.py`).
pub fn qvm_device(args: &[String]) -> i32 {
    let t = "qvm-device";
    let p = parse(
        t,
        args,
        &[
            (&["--persistent", "-p"], false),
            (&["--option", "-o"], true),
            (&["--ro"], false),
            (&["--ask", "--ask-to-attach"], false),
            (&["--required", "-r"], false),
            (&["--port", "--only-port"], false),
            (&["--device", "--only-device"], false),
        ],
    );
    let [class, verb, name, dev] = p.pos.as_slice() else {
        die(
            t,
            "usage: qvm-device CLASS {attach --persistent | assign [--ask|--required] [--port|--device]} [--option K=V]... VMNAME BACKEND:PORT[:DEVICE_ID]",
        );
    };
    let only = |allowed: &[&str]| {
        for o in ["--persistent", "--ask", "--required", "--port", "--device"] {
            if p.has(o) && !allowed.contains(&o) {
                die(t, &format!("unrecognized arguments: {o}"));
            }
        }
    };
    let mode = match verb.as_str() {
        "attach" | "at" | "a" => {
            only(&["--persistent"]);
            if !p.has("--persistent") {
                die(t, "only `attach --persistent` is a form sparsebak uses");
            }
            "required"
        }
        "assign" | "s" => {
            only(&["--ask", "--required", "--port", "--device"]);
            if p.has("--ask") && p.has("--required") {
                die(
                    t,
                    "argument --required/-r: not allowed with argument --ask/--ask-to-attach",
                );
            }
            if p.has("--port") && p.has("--device") {
                die(
                    t,
                    "argument --device/--only-device: not allowed with argument --port/--only-port",
                );
            }
            if p.has("--required") {
                "required"
            } else if p.has("--ask") {
                "ask-to-attach"
            } else {
                "auto-attach"
            }
        }
        _ => die(
            t,
            "only `attach --persistent` and `assign` are forms sparsebak uses",
        ),
    };
    if !["pci", "usb", "block", "mic"].contains(&class.as_str()) {
        die(t, &format!("no such device class: '{class}'"));
    }
    let Some((backend, ident)) = dev.split_once(':') else {
        die(t, &format!("expected a backend:device pair, got '{dev}'"));
    };
    // BACKEND:PORT[:DEVICE_ID]; --port binds the port alone.
    let (port, device_id) = ident.split_once(':').unwrap_or((ident, ""));
    if p.has("--port") && !device_id.is_empty() {
        die(
            t,
            "this option works only for explicitly given port ID and does not support device ID",
        );
    }
    let ident = port;
    let mut s = load();
    if !s.qubes.contains_key(backend) {
        refuse(t, &format!("no backend vm '{backend}'"));
    }
    if ident.is_empty() || ident.starts_with('-') {
        refuse(t, &format!("invalid device id '{ident}'"));
    }
    let mut options = Vec::new();
    for o in p.all("--option") {
        let Some((k, v)) = o.split_once('=') else {
            die(t, &format!("option '{o}' is not NAME=VALUE"));
        };
        options.push((k.to_string(), v.to_string()));
    }
    let q = qube(t, &mut s, name);
    if q.devices.iter().any(|(c, d, _, _)| c == class && d == dev) {
        refuse(t, &format!("device {dev} already assigned to {name}"));
    }
    q.devices
        .push((class.clone(), dev.clone(), mode.to_string(), options));
    save(&s);
    0
}

pub fn qvm_volume(args: &[String]) -> i32 {
    let t = "qvm-volume";
    let p = parse(t, args, &[(&["--size"], true), (&["--no-resize"], false)]);
    let [verb, target, path] = p.pos.as_slice() else {
        die(
            t,
            "usage: qvm-volume import [--size N] VMNAME:VOLUME PATH (the form sparsebak uses)",
        );
    };
    if verb != "import" {
        die(t, "only `import` is a form sparsebak uses");
    }
    let Some((name, volume)) = target.split_once(':') else {
        die(t, &format!("expected VMNAME:VOLUME, got '{target}'"));
    };
    let size: u64 = p
        .get("--size")
        .unwrap_or_else(|| die(t, "sparsebak always gives --size"))
        .parse()
        .unwrap_or_else(|_| die(t, "argument --size: invalid int value"));
    let mut s = load();
    let q = qube(t, &mut s, name);
    let persistent = match q.class.as_str() {
        "TemplateVM" | "StandaloneVM" => ["root", "private"].contains(&volume),
        "AppVM" => volume == "private",
        _ => false,
    };
    if !persistent {
        refuse(
            t,
            &format!("volume {volume} of {name} cannot be imported into (not persistent)"),
        );
    }
    // Streamed to a temporary file, kept only if exactly `size` bytes came.
    let f = volume_file(name, volume);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    let tmp = f.with_extension("importing");
    let mut input: Box<dyn Read> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).unwrap_or_else(|e| refuse(t, &format!("{path}: {e}"))))
    };
    // Synced before it counts, as a volume Qubes commits is.
    let n = std::fs::File::create(&tmp).and_then(|mut out| {
        let n = std::io::copy(&mut input.by_ref().take(size + 1), &mut out)?;
        out.sync_all()?;
        Ok(n)
    });
    match n {
        Ok(n) if n == size => std::fs::rename(&tmp, &f).unwrap(),
        Ok(n) => {
            let _ = std::fs::remove_file(&tmp);
            // qubesd's ImportWithSize: the volume is left as it was.
            refuse(
                t,
                &format!("Got {n} bytes of data, expected {size}: import discarded"),
            );
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            refuse(t, &format!("reading the data: {e}"));
        }
    }
    q.volumes.insert(volume.to_string(), size);
    save(&s);
    0
}
