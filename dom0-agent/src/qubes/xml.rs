//! Reads dom0's own Qubes records: `qubes.xml` (written by qubesd), and
//! each qube's `firewall.xml` and `notes.txt` in its directory beside it
//! (also qubesd's). Nothing a qube wrote is read. Each qube becomes a
//! `sealed::qubes::QubeSettings`, checked as a restore will need it; a
//! qube whose record does not pass is reported and left out, never
//! "cleaned up" into something else.
//!
//! What qubesd writes (qubes-core-admin's `PropertyHolder.xml_properties`
//! and the property savers): every property as element text, `str()` of
//! its value (`True`/`False`, decimal numbers); a reference to a qube as
//! that qube's name (`VMProperty`'s saver, `''` for none); the label as
//! `label-N`, an index into `<labels>`. A `ref=` attribute
//! (`save_via_ref`) is also read: domains by `ref="domain-N"`, labels by
//! `ref="label-N"`. Both are resolved to names here, since ids are an
//! install's own.

use anyhow::{bail, Context, Result};
use roxmltree::{Document, Node};
use sealed::qubes::{Device, PropValue, QubeSettings, MAX_NOTES};
use std::collections::BTreeMap;
use std::path::Path;

/// Properties that name another qube (stored by name, or by `ref`).
pub const QUBE_PROPERTIES: [&str; 6] = [
    "template",
    "netvm",
    "default_dispvm",
    "management_dispvm",
    "guivm",
    "audiovm",
];

/// What `qubes.xml` holds that a restore never sets, and why: an
/// install's own identities (qid, uuid, xid, stubdom_xid, dispid), the
/// addresses Qubes derives from them (ip, ip6, mac, visible_*), the name
/// and label (given to qvm-create), and what Qubes itself maintains
/// (installed_by_rpm, backup_timestamp, start_time).
pub const NOT_RESTORED: [&str; 15] = [
    "qid",
    "uuid",
    "xid",
    "stubdom_xid",
    "dispid",
    "name",
    "label",
    "ip",
    "ip6",
    "mac",
    "visible_ip",
    "visible_ip6",
    "installed_by_rpm",
    "backup_timestamp",
    "start_time",
];

/// The most of `qubes.xml` read (a real one is well under a megabyte).
const MAX_XML: u64 = 64 << 20;

/// What reading found: the qubes, and the ones left out (with why).
#[derive(Default, Debug)]
pub struct Found {
    pub qubes: BTreeMap<String, QubeSettings>,
    /// (qube name, why it was left out)
    pub refused: Vec<(String, String)>,
}

fn read_capped(path: &Path, cap: u64) -> Result<Option<String>> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("unable to read '{}'", path.display())),
    };
    let mut s = String::new();
    f.take(cap + 1)
        .read_to_string(&mut s)
        .with_context(|| format!("unable to read '{}' as UTF-8 text", path.display()))?;
    if s.len() as u64 > cap {
        bail!("'{}' is larger than {cap} bytes", path.display());
    }
    Ok(Some(s))
}

/// Reads `qubes_xml` and the qubes' own files beside it; only the qubes
/// qubes `wanted` keeps (all, if None).
pub fn read(qubes_xml: &Path, wanted: Option<&Wanted>) -> Result<Found> {
    let text = read_capped(qubes_xml, MAX_XML)?
        .with_context(|| format!("'{}' does not exist", qubes_xml.display()))?;
    let base = qubes_xml.parent().unwrap_or(Path::new("/"));
    parse(&text, wanted, &|class, name, file| {
        let dir = if class == "TemplateVM" {
            "vm-templates"
        } else {
            "appvms"
        };
        let cap = if file == "notes.txt" {
            MAX_NOTES as u64
        } else {
            16 << 20
        };
        read_capped(&base.join(dir).join(name).join(file), cap)
    })
    .with_context(|| format!("reading '{}'", qubes_xml.display()))
}

/// Which qubes to keep, asked of each qube's record before its own files
/// are read (name, class and properties are there; firewall and notes
/// not yet).
pub type Wanted<'a> = dyn Fn(&QubeSettings) -> bool + 'a;

type FileReader<'a> = dyn Fn(&str, &str, &str) -> Result<Option<String>> + 'a;

fn child<'a, 'i>(n: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(tag))
}

/// Parses the text of a `qubes.xml`; `file(class, qube, name)` reads a
/// qube's own `firewall.xml` or `notes.txt` (the name is checked first).
pub fn parse(text: &str, wanted: Option<&Wanted>, file: &FileReader) -> Result<Found> {
    let doc = Document::parse(text).context("not well-formed XML")?;
    let root = doc.root_element();
    if root.tag_name().name() != "qubes" {
        bail!("the document is not <qubes>");
    }
    let mut labels = BTreeMap::new();
    if let Some(ls) = child(root, "labels") {
        for l in ls.children().filter(|c| c.has_tag_name("label")) {
            if let Some(id) = l.attribute("id") {
                labels.insert(id.to_string(), l.text().unwrap_or("").trim().to_string());
            }
        }
    }
    let domains: Vec<Node> = child(root, "domains")
        .map(|d| d.children().filter(|c| c.has_tag_name("domain")).collect())
        .unwrap_or_default();
    let prop_text = |d: Node, name: &str| -> Option<String> {
        let ps = child(d, "properties")?;
        ps.children()
            .find(|p| p.has_tag_name("property") && p.attribute("name") == Some(name))
            .map(|p| p.text().unwrap_or("").to_string())
    };
    let mut ids = BTreeMap::new();
    for d in &domains {
        if let (Some(id), Some(name)) = (d.attribute("id"), prop_text(*d, "name")) {
            ids.insert(id.to_string(), name);
        }
    }
    let mut found = Found::default();
    for d in domains {
        let class = d.attribute("class").unwrap_or("").to_string();
        if class == "AdminVM" {
            continue;
        }
        let Some(name) = prop_text(d, "name") else {
            found.refused.push((
                String::new(),
                "a domain without a name: left out".to_string(),
            ));
            continue;
        };
        match domain(d, &class, &name, &labels, &ids, wanted, file) {
            Ok(None) => {}
            Ok(Some(q)) => match q.validate() {
                Ok(()) => {
                    found.qubes.insert(name, q);
                }
                Err(e) => found.refused.push((
                    name.clone(),
                    format!(
                        "qube {}: {e}: left out",
                        protocol::names::display_safe(&name)
                    ),
                )),
            },
            Err(e) => found.refused.push((
                name.clone(),
                format!(
                    "qube {}: {e:#}: left out",
                    protocol::names::display_safe(&name)
                ),
            )),
        }
    }
    Ok(found)
}

fn domain(
    d: Node,
    class: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    ids: &BTreeMap<String, String>,
    wanted: Option<&Wanted>,
    file: &FileReader,
) -> Result<Option<QubeSettings>> {
    // Checked before the name becomes part of a path.
    sealed::qubes::validate_qube_name(name)?;
    let mut q = QubeSettings {
        name: name.to_string(),
        class: class.to_string(),
        label: String::new(),
        properties: Vec::new(),
        features: Vec::new(),
        tags: Vec::new(),
        devices: Vec::new(),
        firewall: None,
        notes: None,
        volumes: Vec::new(),
    };
    for part in d.children().filter(|c| c.is_element()) {
        match part.tag_name().name() {
            "properties" => {
                for p in part.children().filter(|c| c.has_tag_name("property")) {
                    let pname = p.attribute("name").unwrap_or("").to_string();
                    let r = p.attribute("ref");
                    let text = p.text().unwrap_or("").to_string();
                    if pname == "label" {
                        q.label = label(labels, r, &text)?;
                        continue;
                    }
                    if NOT_RESTORED.contains(&pname.as_str()) {
                        continue;
                    }
                    let v = if let Some(r) = r {
                        let target = ids
                            .get(r)
                            .with_context(|| format!("property {pname}: no domain '{r}'"))?;
                        PropValue::Qube(Some(target.clone()))
                    } else if QUBE_PROPERTIES.contains(&pname.as_str()) {
                        PropValue::Qube((!text.is_empty()).then_some(text))
                    } else {
                        PropValue::Text(text)
                    };
                    q.properties.push((pname, v));
                }
            }
            "features" => {
                for f in part.children().filter(|c| c.has_tag_name("feature")) {
                    q.features.push((
                        f.attribute("name").unwrap_or("").to_string(),
                        f.text().unwrap_or("").to_string(),
                    ));
                }
            }
            "tags" => {
                for t in part.children().filter(|c| c.has_tag_name("tag")) {
                    q.tags.push(t.attribute("name").unwrap_or("").to_string());
                }
            }
            "devices" => {
                let dclass = part.attribute("class").unwrap_or("").to_string();
                for dev in part.children().filter(|c| c.has_tag_name("device")) {
                    let ident_attr = if dev.attribute("id").is_some() {
                        "id"
                    } else {
                        "port-id"
                    };
                    let ident = dev.attribute(ident_attr).unwrap_or("");
                    let mut attrs: Vec<(String, String)> = dev
                        .attributes()
                        .filter(|a| a.name() != ident_attr && a.name() != "backend-domain")
                        .map(|a| (a.name().to_string(), a.value().to_string()))
                        .collect();
                    attrs.sort();
                    q.devices.push(Device {
                        class: dclass.clone(),
                        backend: dev.attribute("backend-domain").unwrap_or("").to_string(),
                        ident: ident.to_string(),
                        options: dev
                            .children()
                            .filter(|c| c.has_tag_name("option"))
                            .map(|o| {
                                (
                                    o.attribute("name").unwrap_or("").to_string(),
                                    o.text().unwrap_or("").to_string(),
                                )
                            })
                            .collect(),
                        attrs,
                    });
                }
            }
            "volume-config" => {
                for v in part.children().filter(|c| c.has_tag_name("volume")) {
                    let mut attrs: Vec<(String, String)> = v
                        .attributes()
                        .filter(|a| a.name() != "name")
                        .map(|a| (a.name().to_string(), a.value().to_string()))
                        .collect();
                    attrs.sort();
                    q.volumes
                        .push((v.attribute("name").unwrap_or("").to_string(), attrs));
                }
            }
            _ => {}
        }
    }
    // Sorted, not deduplicated: a property given twice is refused.
    q.properties.sort_by(|a, b| a.0.cmp(&b.0));
    q.features.sort();
    q.tags.sort();
    q.volumes.sort();
    if wanted.is_some_and(|w| !w(&q)) {
        return Ok(None);
    }
    if let Some(fw) = file(class, name, "firewall.xml")? {
        q.firewall = Some(firewall(&fw).context("firewall.xml")?);
    }
    q.notes = file(class, name, "notes.txt")?.filter(|n| !n.is_empty());
    Ok(Some(q))
}

/// A qube's label as a name. qubesd's saver writes the element text
/// `label-N` (`'label-{}'.format(value.index)`), and its loader
/// (`_setter_label`) resolves `label-N` through `<labels>` and anything
/// else as a label's name; the `ref="label-N"` form is kept for records
/// written by hand or by older tools.
fn label(labels: &BTreeMap<String, String>, r: Option<&str>, text: &str) -> Result<String> {
    let id = match r {
        Some(r) => r,
        None if text.starts_with("label-") => text,
        None => return Ok(text.to_string()),
    };
    labels
        .get(id)
        .cloned()
        .with_context(|| format!("label '{id}' is not defined in <labels>"))
}

/// A qube's `firewall.xml`: `<firewall><rules><rule><properties>
/// <property name="action">accept</property>…`.
pub fn firewall(text: &str) -> Result<Vec<Vec<(String, String)>>> {
    let doc = Document::parse(text).context("not well-formed XML")?;
    let root = doc.root_element();
    if root.tag_name().name() != "firewall" {
        bail!("the document is not <firewall>");
    }
    let mut rules = Vec::new();
    for r in root.descendants().filter(|n| n.has_tag_name("rule")) {
        let mut rule = Vec::new();
        for p in r.descendants().filter(|n| n.has_tag_name("property")) {
            rule.push((
                p.attribute("name").unwrap_or("").to_string(),
                p.text().unwrap_or("").to_string(),
            ));
        }
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<?xml version='1.0' encoding='UTF-8'?>
<qubes>
  <labels>
    <label id="label-1" color="0xcc0000">red</label>
    <label id="label-8" color="0x000000">black</label>
  </labels>
  <properties><property name="default_netvm">sys-firewall</property></properties>
  <domains>
    <domain id="domain-0" class="AdminVM">
      <properties><property name="name">dom0</property><property name="label" ref="label-8"/></properties>
    </domain>
    <domain id="domain-1" class="TemplateVM">
      <properties>
        <property name="qid">1</property>
        <property name="name">fedora-40</property>
        <property name="uuid">5d7d0a8b-0000-4000-8000-000000000001</property>
        <property name="label" ref="label-8"/>
        <property name="netvm"></property>
      </properties>
      <features><feature name="qrexec">1</feature></features>
      <volume-config>
        <volume name="root" pool="lvm" vid="qubes_dom0/vm-fedora-40-root" size="21474836480" rw="True" save_on_stop="True"/>
        <volume name="private" pool="lvm" vid="qubes_dom0/vm-fedora-40-private" size="2147483648" rw="True"/>
      </volume-config>
    </domain>
    <domain id="domain-2" class="AppVM">
      <properties>
        <property name="name">work</property>
        <property name="label" ref="label-1"/>
        <property name="template" ref="domain-1"/>
        <property name="netvm">sys-firewall</property>
        <property name="memory">800</property>
        <property name="kernelopts">swiotlb=8192 "quoted" &amp; more</property>
      </properties>
      <features><feature name="service.crond">1</feature><feature name="gui-default-secure-copy-sequence">Ctrl-Shift-c</feature></features>
      <tags><tag name="created-by-dom0"/><tag name="work"/></tags>
      <devices class="pci"><device backend-domain="dom0" id="00_14.3"><option name="no-strict-reset">True</option></device></devices>
      <devices class="usb"><device backend-domain="dom0" port-id="2-1" device-id="0x1234:0x5678::p0e0100" mode="required"/></devices>
    </domain>
    <domain id="domain-3" class="AppVM">
      <properties><property name="name">-x</property><property name="label" ref="label-1"/></properties>
    </domain>
    <domain id="domain-4" class="AppVM">
      <properties><property name="name">twice</property><property name="label" ref="label-1"/>
        <property name="memory">1</property><property name="memory">2</property></properties>
    </domain>
  </domains>
</qubes>"#;

    const FW: &str = r#"<firewall version="2"><rules>
      <rule><properties><property name="action">accept</property><property name="dsthost">example.com</property><property name="proto">tcp</property><property name="dstports">443-443</property></properties></rule>
      <rule><properties><property name="action">drop</property></properties></rule>
    </rules></firewall>"#;

    fn files(class: &str, name: &str, file: &str) -> Result<Option<String>> {
        Ok(match (class, name, file) {
            ("AppVM", "work", "firewall.xml") => Some(FW.into()),
            ("AppVM", "work", "notes.txt") => Some("my notes\nline 2".into()),
            _ => None,
        })
    }

    #[test]
    fn reads_qubes_as_qubes_records_them() {
        let f = parse(XML, None, &files).unwrap();
        assert_eq!(f.qubes.keys().collect::<Vec<_>>(), ["fedora-40", "work"]);
        let t = &f.qubes["fedora-40"];
        assert_eq!(
            (t.class.as_str(), t.label.as_str()),
            ("TemplateVM", "black")
        );
        assert_eq!(t.properties, [("netvm".to_string(), PropValue::Qube(None))]);
        assert_eq!(t.volumes[0].0, "private");
        assert!(t.volumes[1]
            .1
            .contains(&("size".to_string(), "21474836480".to_string())));
        let w = &f.qubes["work"];
        assert_eq!(w.template(), Some("fedora-40"));
        assert_eq!(
            w.property("netvm"),
            Some(&PropValue::Qube(Some("sys-firewall".into())))
        );
        assert_eq!(
            w.text("kernelopts"),
            Some(r#"swiotlb=8192 "quoted" & more"#)
        );
        assert_eq!(w.text("memory"), Some("800"));
        assert_eq!(w.tags, ["created-by-dom0", "work"]);
        assert_eq!(w.features.len(), 2);
        assert_eq!(w.devices.len(), 2);
        assert_eq!(
            w.devices[0].options,
            [("no-strict-reset".to_string(), "True".to_string())]
        );
        // Qubes 4.3's form: the port is the id, the rest is kept.
        let usb = &w.devices[1];
        assert_eq!((usb.class.as_str(), usb.ident.as_str()), ("usb", "2-1"));
        assert_eq!(
            usb.attrs,
            [
                (
                    "device-id".to_string(),
                    "0x1234:0x5678::p0e0100".to_string()
                ),
                ("mode".to_string(), "required".to_string())
            ]
        );
        let fw = w.firewall.as_ref().unwrap();
        assert_eq!(fw.len(), 2);
        assert_eq!(fw[0][3], ("dstports".to_string(), "443-443".to_string()));
        assert_eq!(w.notes.as_deref(), Some("my notes\nline 2"));
        // Identities are never recorded.
        assert!(t.property("qid").is_none() && t.property("uuid").is_none());
        // A bad name and a property given twice: refused, not cleaned up.
        assert_eq!(f.refused.len(), 2, "{:?}", f.refused);
        assert!(f.refused[0].1.contains("'-x'"));
        assert_eq!(f.refused[1].0, "twice");
    }

    /// The form qubesd itself writes (qubes-core-admin's savers): the label
    /// as the text `label-N`, references by name, `str()` of booleans.
    /// The earlier parser left every such qube out.
    #[test]
    fn reads_labels_as_qubesd_saves_them() {
        let x = r#"<qubes><labels>
            <label id="label-1" color="0xcc0000">red</label>
            <label id="label-4" color="0x3874d8">blue</label></labels>
          <domains>
            <domain id="domain-0" class="AdminVM"><properties><property name="label">label-8</property></properties></domain>
            <domain id="domain-2" class="TemplateVM"><properties><property name="label">label-1</property>
              <property name="name">fedora-41</property></properties></domain>
            <domain id="domain-3" class="AppVM"><properties><property name="label">label-4</property>
              <property name="name">work</property><property name="template">fedora-41</property>
              <property name="netvm"></property><property name="autostart">True</property></properties></domain>
            <domain id="domain-4" class="AppVM"><properties><property name="label">label-99</property>
              <property name="name">stray</property></properties></domain>
            <domain id="domain-5" class="AppVM"><properties><property name="label">purple</property>
              <property name="name">by-name</property></properties></domain>
          </domains></qubes>"#;
        let f = parse(x, None, &|_, _, _| Ok(None)).unwrap();
        assert_eq!(f.qubes["fedora-41"].label, "red");
        let w = &f.qubes["work"];
        assert_eq!(w.label, "blue");
        assert_eq!(w.template(), Some("fedora-41"));
        assert_eq!(w.property("netvm"), Some(&PropValue::Qube(None)));
        assert_eq!(w.text("autostart"), Some("True"));
        assert_eq!(f.qubes["by-name"].label, "purple");
        assert_eq!(f.refused.len(), 1, "{:?}", f.refused);
        assert!(
            f.refused[0].1.contains("label 'label-99' is not defined"),
            "{:?}",
            f.refused
        );
    }

    #[test]
    fn only_wanted_qubes_and_no_path_for_a_bad_name() {
        let asked = std::cell::RefCell::new(Vec::new());
        let f = parse(
            XML,
            Some(&|q: &QubeSettings| q.name != "fedora-40"),
            &|c, n, file| {
                asked.borrow_mut().push(n.to_string());
                files(c, n, file)
            },
        )
        .unwrap();
        assert_eq!(f.qubes.keys().collect::<Vec<_>>(), ["work"]);
        // Files are read for the wanted qubes only, never for a bad name.
        assert!(!asked.borrow().iter().any(|n| n == "-x" || n == "fedora-40"));
        assert!(parse("<qubes><domains>", None, &files).is_err());
        assert!(parse("<other/>", None, &files).is_err());
    }
}
