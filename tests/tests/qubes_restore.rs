//! Qubes settings and whole-qube restore (DESIGN §11), with the real
//! binaries and the `qvm-*` stand-ins of `sparsebak_tests::fakequbesd`
//! (a qubesd state file that enforces Qubes' rules):
//!
//! - a `qubes.xml` written like a Qubes 4.2 dom0's (two templates, a net
//!   qube chain, a disposable template and a named disposable, an app
//!   qube with firewall rules, features, tags and notes, a PCI device) is
//!   recorded by every backup; dom0's records and the stand-in state are
//!   wiped; `arch-import` + `restore-qubes` recreate every qube with the
//!   same settings, compared field by field, and byte-exact volumes;
//! - conflicts are refused, renamed (references follow) or skipped;
//!   missing dependencies are refused or defaulted; `--dry-run` changes
//!   nothing;
//! - hostile values never reach a tool as an option or a path, and
//!   nothing of the settings is readable or alterable in the archive.

use sparsebak_tests::fakequbesd::{self, Qube, State};
use sparsebak_tests::{bin_dir, json_doc, Rng, Setup};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

const CS: u64 = 65536;

/// (class, backend, port, options, Qubes 4.3's (device-id, mode): None
/// for an assignment as 4.2 records it, `id=` only)
type FDevice = (
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str)>,
    Option<(&'static str, &'static str)>,
);

/// A qube as the fixture defines it (what qubes.xml says of it).
#[derive(Clone)]
struct Fq {
    name: &'static str,
    class: &'static str,
    label: &'static str,
    template: Option<&'static str>,
    /// Plain properties.
    props: Vec<(&'static str, &'static str)>,
    /// References to other qubes ("" = none).
    refs: Vec<(&'static str, &'static str)>,
    features: Vec<(&'static str, &'static str)>,
    tags: Vec<&'static str>,
    devices: Vec<FDevice>,
    firewall: Option<Vec<Vec<(&'static str, &'static str)>>>,
    notes: Option<&'static str>,
}

fn fq(
    name: &'static str,
    class: &'static str,
    label: &'static str,
    template: Option<&'static str>,
) -> Fq {
    Fq {
        name,
        class,
        label,
        template,
        props: vec![],
        refs: vec![],
        features: vec![],
        tags: vec![],
        devices: vec![],
        firewall: None,
        notes: None,
    }
}

fn fixture() -> Vec<Fq> {
    let mut debian = fq("debian-12-xfce", "TemplateVM", "black", None);
    debian.refs = vec![("netvm", "")];
    debian.features = vec![("qrexec", "1"), ("gui", "1"), ("os-distribution", "debian")];
    debian.tags = vec!["created-by-dom0"];
    let mut fedora = fq("fedora-40-xfce", "TemplateVM", "black", None);
    fedora.refs = vec![("netvm", "")];
    fedora.props = vec![("memory", "1024")];
    fedora.features = vec![("qrexec", "1")];
    let mut net = fq("sys-net", "AppVM", "red", Some("debian-12-xfce"));
    net.props = vec![
        ("provides_network", "True"),
        ("virt_mode", "hvm"),
        ("memory", "425"),
        ("autostart", "True"),
    ];
    net.refs = vec![("netvm", "")];
    net.features = vec![("service.network-manager", "1")];
    net.devices = vec![(
        "pci",
        "dom0",
        "00_14.3",
        vec![("no-strict-reset", "True")],
        None,
    )];
    let mut fw = fq("sys-firewall", "AppVM", "green", Some("fedora-40-xfce"));
    fw.props = vec![
        ("provides_network", "True"),
        ("autostart", "True"),
        ("memory", "500"),
    ];
    fw.refs = vec![("netvm", "sys-net")];
    let mut dvm = fq("default-dvm", "AppVM", "red", Some("debian-12-xfce"));
    dvm.props = vec![("template_for_dispvms", "True")];
    dvm.refs = vec![("netvm", "sys-firewall")];
    dvm.features = vec![("appmenus-dispvm", "1")];
    let mut disp = fq("disp-mail", "DispVM", "purple", Some("default-dvm"));
    disp.refs = vec![("netvm", "sys-firewall")];
    let mut work = fq("work", "AppVM", "blue", Some("fedora-40-xfce"));
    work.props = vec![
        ("memory", "800"),
        ("maxmem", "4000"),
        ("vcpus", "4"),
        ("kernelopts", "nopat swiotlb=8192"),
        ("include_in_backups", "True"),
    ];
    work.refs = vec![("netvm", "sys-firewall"), ("default_dispvm", "default-dvm")];
    work.features = vec![
        ("service.crond", "1"),
        ("gui-default-secure-copy-sequence", "Ctrl-Shift-c"),
    ];
    work.tags = vec!["work", "backup-me"];
    // Qubes 4.3's assignments: bound to a device's identity, asked for
    // before attaching; and any device in a port, attached when seen.
    work.devices = vec![
        (
            "usb",
            "sys-net",
            "2-1",
            vec![],
            Some(("0x1234:0x5678::p0e0100", "ask-to-attach")),
        ),
        ("usb", "sys-net", "3-2", vec![], Some(("*", "auto-attach"))),
    ];
    work.firewall = Some(vec![
        vec![
            ("action", "accept"),
            ("dsthost", "example.com"),
            ("proto", "tcp"),
            ("dstports", "443-443"),
        ],
        vec![("action", "accept"), ("specialtarget", "dns")],
        vec![
            ("action", "accept"),
            ("dsthost", "10.0.0.0/8"),
            ("comment", "office network"),
        ],
        vec![("action", "drop")],
    ]);
    work.notes = Some("Work qube.\nDo not trust email links: SECRET-NOTE-4711 <&>");
    let mut vault = fq("vault", "AppVM", "black", Some("debian-12-xfce"));
    vault.refs = vec![("netvm", "")];
    vault.props = vec![("kernelopts", "--help -x")];
    vault.features = vec![("odd-value", "-rf")];
    vec![debian, fedora, net, fw, dvm, disp, work, vault]
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Writes `qubes.xml` as qubesd writes it, with each qube's firewall.xml
/// and notes.txt in its directory; `extra` is spliced into `<domains>` as
/// is. The form follows qubes-core-admin's serializer, not a guess of it:
/// `BaseVM.__xml__` (`<domain id="domain-QID" class=…>`, then properties,
/// features, one `<devices class=…>` per class, tags), and
/// `PropertyHolder.xml_properties` with each property's saver: element
/// text, never `ref=` (no QubesVM property has `save_via_ref`); `str()` of
/// the value (`True`, `800`); a `VMProperty` as the qube's name, `''` for
/// none; the label as `label-N` (`'label-{}'.format(value.index)`), an
/// index into `<labels>`.
fn write_qubes_xml(dir: &Path, qubes: &[Fq], extra: &str) -> PathBuf {
    let labels = fakequbesd::LABELS;
    let label_id = |l: &str| labels.iter().position(|x| *x == l).unwrap() + 1;
    let dom_id = |n: &str| qubes.iter().position(|q| q.name == n).map(|i| i + 1);
    let mut x = String::from("<?xml version='1.0' encoding='UTF-8'?>\n<qubes>\n  <labels>\n");
    for (i, l) in labels.iter().enumerate() {
        writeln!(
            x,
            "    <label id=\"label-{}\" color=\"0x{:06x}\">{l}</label>",
            i + 1,
            i * 0x111111
        )
        .unwrap();
    }
    x.push_str("  </labels>\n  <pools>\n    <pool driver=\"lvm_thin\" name=\"vm-pool\" thin_pool=\"vm-pool\" volume_group=\"qubes_dom0\" revisions_to_keep=\"2\"/>\n    <pool dir_path=\"/var/lib/qubes\" driver=\"file\" name=\"varlibqubes\" revisions_to_keep=\"1\"/>\n  </pools>\n");
    x.push_str("  <properties>\n    <property name=\"default_template\">fedora-40-xfce</property>\n    <property name=\"default_netvm\">sys-firewall</property>\n    <property name=\"clockvm\">sys-net</property>\n  </properties>\n  <domains>\n");
    x.push_str("    <domain id=\"domain-0\" class=\"AdminVM\">\n      <properties>\n        <property name=\"name\">dom0</property>\n        <property name=\"label\">label-8</property>\n        <property name=\"qid\">0</property>\n      </properties>\n      <features/>\n      <tags/>\n    </domain>\n");
    for (i, q) in qubes.iter().enumerate() {
        let id = i + 1;
        writeln!(
            x,
            "    <domain id=\"domain-{id}\" class=\"{}\">\n      <properties>",
            q.class
        )
        .unwrap();
        writeln!(x, "        <property name=\"qid\">{}</property>", id).unwrap();
        writeln!(
            x,
            "        <property name=\"name\">{}</property>",
            esc(q.name)
        )
        .unwrap();
        writeln!(x, "        <property name=\"uuid\">5d7d0a8b-{id:04x}-4000-8000-00000000{id:04x}</property>").unwrap();
        writeln!(
            x,
            "        <property name=\"label\">label-{}</property>",
            label_id(q.label)
        )
        .unwrap();
        if q.class != "TemplateVM" {
            writeln!(
                x,
                "        <property name=\"ip\">10.137.0.{}</property>",
                id + 1
            )
            .unwrap();
        }
        if let Some(t) = q.template {
            assert!(dom_id(t).is_some(), "{t}: not in the fixture");
            writeln!(
                x,
                "        <property name=\"template\">{}</property>",
                esc(t)
            )
            .unwrap();
        }
        for (k, v) in &q.refs {
            writeln!(x, "        <property name=\"{k}\">{}</property>", esc(v)).unwrap();
        }
        for (k, v) in &q.props {
            writeln!(x, "        <property name=\"{k}\">{}</property>", esc(v)).unwrap();
        }
        x.push_str("      </properties>\n      <features>\n");
        for (k, v) in &q.features {
            writeln!(
                x,
                "        <feature name=\"{}\">{}</feature>",
                esc(k),
                esc(v)
            )
            .unwrap();
        }
        x.push_str("      </features>\n");
        for class in ["pci", "block", "usb"] {
            writeln!(x, "      <devices class=\"{class}\">").unwrap();
            for (_, b, d, opts, v43) in q.devices.iter().filter(|d| d.0 == class) {
                match v43 {
                    // 4.3: the port, the identity it is bound to, the mode.
                    Some((id, mode)) => writeln!(
                        x,
                        "        <device backend-domain=\"{b}\" port-id=\"{d}\" device-id=\"{id}\" mode=\"{mode}\">"
                    ),
                    None => writeln!(x, "        <device backend-domain=\"{b}\" id=\"{d}\">"),
                }
                .unwrap();
                for (k, v) in opts {
                    writeln!(x, "          <option name=\"{k}\">{v}</option>").unwrap();
                }
                x.push_str("        </device>\n");
            }
            x.push_str("      </devices>\n");
        }
        x.push_str("      <tags>\n");
        for t in &q.tags {
            writeln!(x, "        <tag name=\"{}\"/>", esc(t)).unwrap();
        }
        x.push_str("      </tags>\n      <volume-config>\n");
        for v in ["root", "private", "volatile"] {
            writeln!(x, "        <volume name=\"{v}\" pool=\"vm-pool\" vid=\"qubes_dom0/vm-{}-{v}\" revisions_to_keep=\"2\" rw=\"True\" size=\"2147483648\"/>", q.name).unwrap();
        }
        x.push_str("      </volume-config>\n    </domain>\n");
        let qdir = dir
            .join(if q.class == "TemplateVM" {
                "vm-templates"
            } else {
                "appvms"
            })
            .join(q.name);
        fs::create_dir_all(&qdir).unwrap();
        if let Some(rules) = &q.firewall {
            let mut f = String::from(
                "<?xml version='1.0' encoding='UTF-8'?>\n<firewall version=\"2\">\n  <rules>\n",
            );
            for r in rules {
                f.push_str("    <rule>\n      <properties>\n");
                for (k, v) in r {
                    writeln!(f, "        <property name=\"{k}\">{}</property>", esc(v)).unwrap();
                }
                f.push_str("      </properties>\n    </rule>\n");
            }
            f.push_str("  </rules>\n</firewall>\n");
            fs::write(qdir.join("firewall.xml"), f).unwrap();
        }
        if let Some(n) = q.notes {
            fs::write(qdir.join("notes.txt"), n).unwrap();
        }
    }
    x.push_str(extra);
    x.push_str("  </domains>\n</qubes>\n");
    let p = dir.join("qubes.xml");
    fs::write(&p, x).unwrap();
    p
}

fn persistent(class: &str) -> &'static [&'static str] {
    match class {
        "TemplateVM" | "StandaloneVM" => &["root", "private"],
        "AppVM" => &["private"],
        _ => &[],
    }
}

struct Env {
    s: Setup,
    config: PathBuf,
    qubesd: PathBuf,
    qubes_dir: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let s = Setup::new(tag);
        let qubes_dir = s.dir.path().join("var-lib-qubes");
        fs::create_dir_all(&qubes_dir).unwrap();
        let config = s.dir.path().join("sparsebak.toml");
        fs::write(
            &config,
            format!(
                "qubes_xml = \"{}\"\n",
                qubes_dir.join("qubes.xml").display()
            ),
        )
        .unwrap();
        let qubesd = s.dir.path().join("qubesd").join("state.json");
        fs::create_dir_all(qubesd.parent().unwrap()).unwrap();
        let e = Env {
            s,
            config,
            qubesd,
            qubes_dir,
        };
        e.fresh_install(State::default());
        e
    }

    /// A Qubes install with dom0 and `s`'s qubes.
    fn fresh_install(&self, mut s: State) {
        s.qubes.insert(
            "dom0".into(),
            Qube {
                class: "AdminVM".into(),
                label: "black".into(),
                ..Default::default()
            },
        );
        let _ = fs::remove_dir_all(self.qubesd.parent().unwrap().join("volumes"));
        fs::write(&self.qubesd, serde_json::to_string(&s).unwrap()).unwrap();
    }

    /// Where the stand-in keeps a qube's imported volume.
    fn volume_file(&self, qube: &str, volume: &str) -> PathBuf {
        self.qubesd
            .parent()
            .unwrap()
            .join("volumes")
            .join(format!("{qube}-{volume}.img"))
    }

    fn state(&self) -> State {
        serde_json::from_str(&fs::read_to_string(&self.qubesd).unwrap()).unwrap()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["--config", self.config.to_str().unwrap()];
        a.extend_from_slice(args);
        let path = format!(
            "{}:{}",
            bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        self.s
            .cmd(&a)
            .env("PATH", path)
            .env("SBK_FAKE_QUBESD", &self.qubesd)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "{args:?} succeeded:\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn json(&self, args: &[&str]) -> (bool, serde_json::Value) {
        let mut a = args.to_vec();
        a.push("--json");
        let o = self.run(&a);
        (o.status.success(), json_doc(&o.stdout))
    }

    /// Writes every persistent volume of `qubes` (random data with holes).
    fn volumes(&self, qubes: &[Fq], rng: &mut Rng) {
        for q in qubes {
            for v in persistent(q.class) {
                let chunks = 3 + rng.below(5);
                let mut data = rng.bytes((chunks * CS) as usize - 1000);
                // A zero chunk: a hole in the archive.
                data[CS as usize..2 * CS as usize].fill(0);
                fs::write(self.s.vol(&format!("vm-{}-{v}", q.name)), data).unwrap();
            }
        }
    }
}

/// Asserts the stand-in's qube `got` is `want` restored: the same
/// settings, with recorded names mapped through `names`.
fn assert_restored(got: &Qube, want: &Fq, names: &BTreeMap<&str, String>) {
    let n = |x: &str| -> String { names.get(x).cloned().unwrap_or_else(|| x.to_string()) };
    let w = want.name;
    assert_eq!(got.class, want.class, "{w}: class");
    assert_eq!(got.label, want.label, "{w}: label");
    assert_eq!(got.template, want.template.map(n), "{w}: template");
    let mut props: BTreeMap<String, String> = want
        .props
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in &want.refs {
        props.insert(
            k.to_string(),
            if v.is_empty() { String::new() } else { n(v) },
        );
    }
    assert_eq!(got.properties, props, "{w}: properties");
    let features: BTreeMap<String, String> = want
        .features
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got.features, features, "{w}: features");
    let tags: std::collections::BTreeSet<String> =
        want.tags.iter().map(|t| t.to_string()).collect();
    assert_eq!(got.tags, tags, "{w}: tags");
    let fw: Vec<Vec<(String, String)>> = match &want.firewall {
        None => vec![vec![("action".into(), "accept".into())]],
        Some(r) => r
            .iter()
            .map(|r| {
                r.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect(),
    };
    assert_eq!(got.firewall, fw, "{w}: firewall");
    assert_eq!(got.notes, want.notes.unwrap_or(""), "{w}: notes");
    let devices: Vec<fakequbesd::Assigned> = want
        .devices
        .iter()
        .map(|(c, b, d, o, v43)| {
            let (id, mode) = match v43 {
                Some(("*", m)) => (String::new(), *m),
                Some((id, m)) => (format!(":{id}"), *m),
                None => (String::new(), "required"),
            };
            (
                c.to_string(),
                format!("{}:{d}{id}", n(b)),
                mode.to_string(),
                o.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(got.devices, devices, "{w}: devices");
}

fn assert_volumes(e: &Env, q: &Fq, as_name: &str, sources: &BTreeMap<String, Vec<u8>>) {
    for v in persistent(q.class) {
        let src = &sources[&format!("vm-{}-{v}", q.name)];
        let got = fs::read(e.volume_file(as_name, v)).unwrap_or_default();
        assert!(
            got == *src,
            "{as_name}:{v} differs from vm-{}-{v} as backed up",
            q.name
        );
        assert_eq!(e.state().qubes[as_name].volumes[*v], src.len() as u64);
    }
}

#[test]
fn whole_qubes_come_back_on_a_fresh_install() {
    let e = Env::new("qubes-restore");
    let qubes = fixture();
    let mut rng = Rng::new(0x9b5e);
    e.volumes(&qubes, &mut rng);
    fs::write(e.s.vol("other.img"), rng.bytes(100_000)).unwrap();
    write_qubes_xml(&e.qubes_dir, &qubes, "");
    e.ok(&["arch-init", "--chunk-size", "64K"]);

    // add --qube: each qube's persistent volumes, by Qubes' naming.
    let mut add = vec!["add", "other.img"];
    for q in qubes.iter().filter(|q| q.class != "DispVM") {
        add.extend(["--qube", q.name]);
    }
    // A named disposable keeps nothing: refused by name.
    let err = e.fails(&["add", "--qube", "disp-mail"]);
    assert!(err.contains("disp-mail") && err.contains("DispVM"), "{err}");
    let (ok, j) = e.json(&add);
    assert!(ok, "{j}");
    let mut want: Vec<String> = qubes
        .iter()
        .flat_map(|q| {
            persistent(q.class)
                .iter()
                .map(move |v| format!("vm-{}-{v}", q.name))
        })
        .collect();
    want.push("other.img".into());
    want.sort();
    let got: Vec<String> = serde_json::from_value(j["configured"].clone()).unwrap();
    assert_eq!(got, want);

    let out = e.ok(&["backup"]);
    assert!(
        out.contains("recorded the Qubes settings of 8 qubes (settings session S_000000000001)"),
        "{out}"
    );

    // A second run, with changed settings and data: a second settings
    // session; the first keeps the old settings.
    let mut qubes2 = qubes.clone();
    let work = qubes2.iter_mut().find(|q| q.name == "work").unwrap();
    work.props[0] = ("memory", "1200");
    work.tags.push("changed");
    write_qubes_xml(&e.qubes_dir, &qubes2, "");
    sparsebak_tests::write_at(
        &e.s.vol("vm-work-private"),
        5000,
        b"changed after the first backup",
    );
    let (ok, j) = e.json(&["backup"]);
    assert!(ok, "{j}");
    assert_eq!(j["qubes_session"], "S_000000000002");
    let sources: BTreeMap<String, Vec<u8>> = want
        .iter()
        .map(|v| (v.clone(), fs::read(e.s.vol(v)).unwrap()))
        .collect();

    let (ok, j) = e.json(&["list", "--qubes"]);
    assert!(ok);
    let sessions = j["qubes_sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let names: Vec<&str> = sessions[1]["qubes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "debian-12-xfce",
            "default-dvm",
            "disp-mail",
            "fedora-40-xfce",
            "sys-firewall",
            "sys-net",
            "vault",
            "work"
        ]
    );

    // Nothing of the settings is readable in the archive.
    for f in sparsebak_tests::files_under(&e.s.arch) {
        let b = fs::read(e.s.arch.join(f)).unwrap();
        for needle in [
            &b"SECRET-NOTE-4711"[..],
            b"example.com",
            b"sys-firewall",
            b"office network",
        ] {
            assert!(
                !b.windows(needle.len()).any(|w| w == needle),
                "{:?} in the archive",
                String::from_utf8_lossy(needle)
            );
        }
    }

    // The disaster: dom0's records and every qube are gone.
    fs::remove_dir_all(&e.s.meta).unwrap();
    e.fresh_install(State::default());
    e.ok(&["arch-import"]);

    // The plan, changing nothing.
    let before = fs::read(&e.qubesd).unwrap();
    let (ok, j) = e.json(&["restore-qubes", "--dry-run"]);
    assert!(ok, "{j}");
    let order: Vec<&str> = j["plan"]["qubes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "debian-12-xfce",
            "fedora-40-xfce",
            "sys-firewall",
            "sys-net",
            "default-dvm",
            "disp-mail",
            "vault",
            "work"
        ]
    );
    let w = j["plan"]["qubes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "work")
        .unwrap();
    assert!(
        w["properties"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[0] == "memory" && p[1] == "1200"),
        "{w}"
    );
    assert!(w["references"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p[0] == "netvm" && p[1] == "sys-firewall"));
    assert_eq!(w["volumes"][0]["archive_volume"], "vm-work-private");
    assert_eq!(
        fs::read(&e.qubesd).unwrap(),
        before,
        "--dry-run changed the qubes"
    );
    // The text plan: every qube of the fixture, counted in plain words.
    let text = e.ok(&["restore-qubes", "--dry-run"]);
    assert!(text.contains("create 8 qubes"), "{text}");
    assert!(
        text.contains("5 properties set") && !text.contains("propertys"),
        "{text}"
    );
    // The older settings session has the older settings.
    let (_, j) = e.json(&[
        "restore-qubes",
        "--dry-run",
        "--session",
        "S_000000000001",
        "work",
    ]);
    let w = &j["plan"]["qubes"][0];
    assert!(
        w["properties"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p[0] == "memory" && p[1] == "800"),
        "{w}"
    );
    assert!(
        !j["plan"]["ok"].as_bool().unwrap(),
        "work alone lacks its template: {j}"
    );
    assert_eq!(fs::read(&e.qubesd).unwrap(), before);

    let (ok, j) = e.json(&["restore-qubes"]);
    assert!(ok, "{j}");
    let st = e.state();
    let same: BTreeMap<&str, String> = BTreeMap::new();
    for q in &qubes2 {
        assert_restored(&st.qubes[q.name], q, &same);
        assert_volumes(&e, q, q.name, &sources);
        assert_eq!(st.qubes[q.name].pool, None);
    }
    assert_eq!(st.qubes.len(), qubes2.len() + 1);

    // Again: every name conflicts. Refused by default, changing nothing.
    let before = fs::read(&e.qubesd).unwrap();
    let err = e.fails(&["restore-qubes"]);
    assert!(
        err.contains("the system has a qube 'work'") && err.contains("--rename-conflicting"),
        "{err}"
    );
    assert_eq!(fs::read(&e.qubesd).unwrap(), before);

    // Renamed: every reference follows the renames.
    let (ok, j) = e.json(&["restore-qubes", "--rename-conflicting"]);
    assert!(ok, "{j}");
    let st = e.state();
    let renamed: BTreeMap<&str, String> = qubes2
        .iter()
        .map(|q| (q.name, format!("{}-restored", q.name)))
        .collect();
    for q in &qubes2 {
        assert_restored(&st.qubes[&renamed[q.name]], q, &renamed);
        assert_volumes(&e, q, &renamed[q.name], &sources);
        // The originals are untouched.
        assert_restored(&st.qubes[q.name], q, &same);
    }

    // Skipped: only the qube the system lacks is created; references to
    // the skipped ones use the existing qubes.
    let mut st = e.state();
    st.qubes
        .retain(|n, _| !n.ends_with("-restored") && n != "vault");
    fs::write(&e.qubesd, serde_json::to_string(&st).unwrap()).unwrap();
    let (ok, j) = e.json(&["restore-qubes", "--skip-conflicting"]);
    assert!(ok, "{j}");
    assert_eq!(j["plan"]["qubes"].as_array().unwrap().len(), 1);
    assert_eq!(
        j["plan"]["skipped"].as_array().unwrap().len(),
        qubes2.len() - 1
    );
    let vault = qubes2.iter().find(|q| q.name == "vault").unwrap();
    assert_restored(&e.state().qubes["vault"], vault, &same);
    assert_volumes(&e, vault, "vault", &sources);
}

#[test]
fn missing_dependencies_are_refused_up_front_or_defaulted() {
    let e = Env::new("qubes-missing");
    let qubes = fixture();
    let mut rng = Rng::new(7);
    e.volumes(&qubes, &mut rng);
    write_qubes_xml(&e.qubes_dir, &qubes, "");
    e.ok(&["arch-init", "--chunk-size", "64K"]);
    e.ok(&["add", "--qube", "work"]);
    e.ok(&["backup"]);
    // Only work's volume is in the archive: only work is recorded.
    let (_, j) = e.json(&["list", "--qubes"]);
    assert_eq!(j["qubes_sessions"][0]["qubes"].as_array().unwrap().len(), 1);

    // A fresh install with another template, the default one.
    let mut s = State {
        default_template: Some("fedora-41-xfce".into()),
        ..Default::default()
    };
    s.qubes.insert(
        "fedora-41-xfce".into(),
        Qube {
            class: "TemplateVM".into(),
            label: "black".into(),
            ..Default::default()
        },
    );
    e.fresh_install(s);
    let before = fs::read(&e.qubesd).unwrap();
    let err = e.fails(&["restore-qubes"]);
    for m in [
        "template refers to 'fedora-40-xfce'",
        "netvm refers to 'sys-firewall'",
        "default_dispvm refers to 'default-dvm'",
        "--ignore-missing",
    ] {
        assert!(err.contains(m), "{m}: {err}");
    }
    assert_eq!(
        fs::read(&e.qubesd).unwrap(),
        before,
        "a refused plan changed something"
    );
    let (ok, j) = e.json(&["restore-qubes", "--dry-run"]);
    assert!(!ok && !j["plan"]["ok"].as_bool().unwrap());
    // Template, netvm, default_dispvm, and the backend of each of work's
    // two USB assignments.
    let missing = j["plan"]["missing"].as_array().unwrap();
    assert_eq!(missing.len(), 5, "{missing:?}");
    assert_eq!(
        missing
            .iter()
            .filter(|m| m["property"] == "device:usb" && m["refers_to"] == "sys-net")
            .count(),
        2,
        "{missing:?}"
    );
    assert_eq!(fs::read(&e.qubesd).unwrap(), before);

    let (ok, j) = e.json(&["restore-qubes", "--ignore-missing", "--pool", "vm-pool2"]);
    assert!(ok, "{j}");
    let st = e.state();
    let w = &st.qubes["work"];
    assert_eq!(w.pool.as_deref(), Some("vm-pool2"));
    assert_eq!(
        w.template.as_deref(),
        Some("fedora-41-xfce"),
        "the default template"
    );
    assert!(!w.properties.contains_key("netvm") && !w.properties.contains_key("default_dispvm"));
    assert_eq!(w.properties["memory"], "800");
    assert_eq!(w.firewall.len(), 4);
    let src = fs::read(e.s.vol("vm-work-private")).unwrap();
    assert_eq!(fs::read(e.volume_file("work", "private")).unwrap(), src);
}

#[test]
fn hostile_settings_never_reach_a_tool_as_an_option_or_a_path() {
    let e = Env::new("qubes-hostile");
    let mut qubes = fixture();
    qubes.retain(|q| q.name == "debian-12-xfce" || q.name == "vault");
    // Valid names, hostile everything else: refused as a whole at capture.
    let mut evil = vec![];
    for (name, what) in [
        ("evil-label", 0),
        ("evil-feature", 1),
        ("evil-tag", 2),
        ("evil-escape", 3),
        ("evil-device", 4),
        ("evil-rule", 5),
        ("evil-ref", 6),
    ] {
        let mut q = fq(name, "AppVM", "red", Some("debian-12-xfce"));
        match what {
            0 => q.label = "red",
            1 => q.features = vec![("--help", "1")],
            2 => q.tags = vec!["-t"],
            3 => q.props = vec![("kernelopts", "a\u{9b}2Jb")],
            4 => q.devices = vec![("pci", "dom0", "../../etc/passwd", vec![], None)],
            5 => q.firewall = Some(vec![vec![("action", "accept"), ("comment", "a=b")]]),
            _ => q.refs = vec![("netvm", "-x")],
        }
        evil.push(q);
    }
    qubes.extend(evil.iter().cloned());
    let mut rng = Rng::new(11);
    e.volumes(&qubes, &mut rng);
    // The label case: a label Qubes does not have, by name.
    let mut extra = String::new();
    extra.push_str("    <domain id=\"domain-90\" class=\"AppVM\"><properties><property name=\"name\">evil-label2</property><property name=\"label\">-rf</property></properties></domain>\n");
    // Names Qubes would never allow: never a path, never a volume.
    for n in ["-x", "../../etc", "a b"] {
        writeln!(extra, "    <domain id=\"domain-9{}\" class=\"AppVM\"><properties><property name=\"name\">{}</property><property name=\"label\">label-1</property></properties></domain>", n.len(), esc(n)).unwrap();
    }
    fs::write(e.s.vol("vm-evil-label2-private"), rng.bytes(70_000)).unwrap();
    write_qubes_xml(&e.qubes_dir, &qubes, &extra);
    e.ok(&["arch-init", "--chunk-size", "64K"]);
    let mut vols: Vec<String> = fs::read_dir(&e.s.vols)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    vols.sort();
    let mut args = vec!["backup"];
    args.extend(vols.iter().map(String::as_str));
    let o = e.run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    for n in [
        "evil-feature",
        "evil-tag",
        "evil-escape",
        "evil-device",
        "evil-rule",
        "evil-ref",
        "evil-label2",
    ] {
        assert!(
            err.contains(&format!("qube '{n}'")) && err.contains("left out"),
            "{n}: {err}"
        );
    }
    assert!(
        !err.contains('\u{9b}'),
        "a terminal control reached the terminal"
    );
    let (_, j) = e.json(&["list", "--qubes"]);
    let names: Vec<&str> = j["qubes_sessions"][0]["qubes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["debian-12-xfce", "evil-label", "vault"]);

    // Values that look like options reach the tools as values: the
    // stand-ins (argparse rules) would fail on them otherwise.
    fs::remove_dir_all(&e.s.meta).unwrap();
    e.fresh_install(State::default());
    e.ok(&["arch-import"]);
    e.ok(&["restore-qubes"]);
    let st = e.state();
    assert_eq!(st.qubes["vault"].properties["kernelopts"], "--help -x");
    assert_eq!(st.qubes["vault"].features["odd-value"], "-rf");
    // Names given on the command line are checked against the records.
    let err = e.fails(&["restore-qubes", "--dry-run", "--", "-x"]);
    assert!(err.contains("no qube '-x'"), "{err}");
}

#[test]
fn the_receiver_cannot_alter_the_settings() {
    let e = Env::new("qubes-tamper");
    let mut qubes = fixture();
    qubes.retain(|q| q.name == "debian-12-xfce");
    let mut rng = Rng::new(3);
    e.volumes(&qubes, &mut rng);
    write_qubes_xml(&e.qubes_dir, &qubes, "");
    e.ok(&["arch-init", "--chunk-size", "64K"]);
    e.ok(&[
        "backup",
        "vm-debian-12-xfce-root",
        "vm-debian-12-xfce-private",
    ]);
    let root = e.s.arch.join("dom0.root");
    let good = fs::read(&root).unwrap();
    fs::remove_dir_all(&e.s.meta).unwrap();
    // Every byte of the sealed record that carries them is covered.
    for at in [good.len() / 2, good.len() - 20, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        fs::write(&root, &bad).unwrap();
        let err = e.fails(&["arch-import"]);
        assert!(err.contains("does not authenticate"), "{err}");
        assert!(
            !e.s.meta.join("archives").exists()
                || fs::read_dir(e.s.meta.join("archives")).unwrap().count() == 0
        );
    }
    fs::write(&root, &good).unwrap();
    e.ok(&["arch-import"]);
    let (_, j) = e.json(&["list", "--qubes"]);
    assert_eq!(j["qubes_sessions"][0]["qubes"][0]["name"], "debian-12-xfce");

    // A chunk of its data altered: the qube is created, but the import is
    // killed before its end, so Qubes keeps nothing of the volume; the
    // error names the qube, the volume and the chunk.
    let chunk =
        e.s.archive_vol("vm-debian-12-xfce-private")
            .join("S_000000000001")
            .join("c0000000")
            .join(format!("x{:016x}", 2 * CS));
    let mut b = fs::read(&chunk).unwrap();
    let n = b.len();
    b[n / 2] ^= 0x40;
    fs::write(&chunk, b).unwrap();
    let err = e.fails(&["restore-qubes"]);
    assert!(
        err.contains("qube 'debian-12-xfce'")
            && err.contains("private volume did not restore")
            && err.contains("0x20000"),
        "{err}"
    );
    let st = e.state();
    assert!(
        !st.qubes["debian-12-xfce"].volumes.contains_key("private"),
        "a partial import was kept"
    );
    assert!(!e.volume_file("debian-12-xfce", "private").exists());
}

#[test]
fn a_setting_qubes_refuses_is_reported_and_the_rest_goes_on() {
    let e = Env::new("qubes-refused");
    let mut qubes = fixture();
    qubes.retain(|q| q.name == "debian-12-xfce" || q.name == "vault");
    // A property this Qubes does not have (a newer one's, say).
    qubes[1].props.push(("preload_dispvm_max", "2"));
    let mut rng = Rng::new(5);
    e.volumes(&qubes, &mut rng);
    write_qubes_xml(&e.qubes_dir, &qubes, "");
    e.ok(&["arch-init", "--chunk-size", "64K"]);
    e.ok(&["add", "--qube", "debian-12-xfce", "--qube", "vault"]);
    e.ok(&["backup"]);
    fs::remove_dir_all(&e.s.meta).unwrap();
    e.fresh_install(State::default());
    e.ok(&["arch-import"]);
    let (ok, j) = e.json(&["restore-qubes"]);
    assert!(!ok, "{j}");
    let v = j["qubes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "vault")
        .unwrap();
    assert_eq!(v["created"], true);
    let errs = v["errors"].to_string();
    assert!(
        errs.contains("preload_dispvm_max") && errs.contains("but VM created"),
        "{errs}"
    );
    // Everything else of it is there: other properties, features, data.
    let st = e.state();
    assert_eq!(st.qubes["vault"].properties["kernelopts"], "--help -x");
    assert!(!st.qubes["vault"]
        .properties
        .contains_key("preload_dispvm_max"));
    assert_eq!(st.qubes["vault"].features["odd-value"], "-rf");
    let src = fs::read(e.s.vol("vm-vault-private")).unwrap();
    assert_eq!(fs::read(e.volume_file("vault", "private")).unwrap(), src);
    assert!(j["qubes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "debian-12-xfce" && q["errors"].as_array().unwrap().is_empty()));
}
