//! Qubes settings as the sealed root carries them: each qube as dom0's
//! `qubes.xml` describes it (class, label, properties, features, tags,
//! device assignments; its firewall and notes from its own directory), in
//! the shape Qubes uses (the Admin API's name → value lists), so nothing is
//! lost in translation. A settings session (one per backup run of a Qubes
//! dom0) names the qubes it saw and the volume session that holds each of
//! their volumes; identical qube records are stored once.
//!
//! Everything here is checked the way Qubes checks it before it can reach
//! a `qvm-*` tool: a record that does not pass is refused as a whole, so a
//! restore never hands a tool an option-like, path-like or unprintable
//! argument.

use protocol::names::{display_safe, validate_session_name, validate_volume_name};
use protocol::ProtocolError;
use serde::{Deserialize, Serialize};

/// The labels a Qubes install has (`qvm-create --label`).
pub const LABELS: [&str; 8] = [
    "red", "orange", "yellow", "green", "gray", "blue", "purple", "black",
];

/// The qube classes a restore recreates.
pub const CLASSES: [&str; 4] = ["TemplateVM", "StandaloneVM", "AppVM", "DispVM"];

/// The volumes whose data a qube keeps across restarts, by class: the
/// private volume always; the root volume only where the qube owns it.
pub fn persistent_volumes(class: &str) -> &'static [&'static str] {
    match class {
        "TemplateVM" | "StandaloneVM" => &["root", "private"],
        "AppVM" => &["private"],
        _ => &[],
    }
}

/// Notes are at most 256 KiB (Qubes' own limit).
pub const MAX_NOTES: usize = 256 * 1024;
/// A qube has at most this many of each list (far above any real qube).
pub const MAX_ITEMS: usize = 4096;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct QubesCatalog {
    /// Distinct qube records; sessions point into it.
    pub qubes: Vec<QubeSettings>,
    /// Oldest first; names ascend.
    pub sessions: Vec<QubesSession>,
}

/// What one backup run saw: the qubes whose volumes the archive held.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QubesSession {
    /// `S_` and a sequence number of its own (not a volume's session).
    pub name: String,
    pub time: u64,
    /// Indexes into [`QubesCatalog::qubes`], by qube name ascending.
    pub qubes: Vec<u32>,
    /// The volume session that held each volume at this run: (volume,
    /// session), by volume ascending.
    pub volumes: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct QubeSettings {
    pub name: String,
    /// `TemplateVM`, `StandaloneVM`, `AppVM` or `DispVM`.
    pub class: String,
    pub label: String,
    /// The properties qubes.xml sets (the rest are Qubes' defaults), by
    /// name ascending; `label` and the identity properties are not here.
    pub properties: Vec<(String, PropValue)>,
    pub features: Vec<(String, String)>,
    pub tags: Vec<String>,
    pub devices: Vec<Device>,
    /// Firewall rules in order, each as `(key, value)` pairs as
    /// `qvm-firewall` takes them; None: the qube had no firewall file.
    pub firewall: Option<Vec<Vec<(String, String)>>>,
    pub notes: Option<String>,
    /// Each volume's `volume-config` attributes, by volume name.
    pub volumes: Vec<(String, Vec<(String, String)>)>,
}

/// A property's value: text, or a reference to another qube (`template`,
/// `netvm`, `default_dispvm`…; None: set to none).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum PropValue {
    Text(String),
    Qube(Option<String>),
}

/// A persistent device assignment (`<devices class=…><device …>`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `pci`, `usb`, `block`, `mic`…
    pub class: String,
    pub backend: String,
    pub ident: String,
    pub options: Vec<(String, String)>,
    /// The element's other attributes as Qubes wrote them (4.3:
    /// `device-id`, `mode`), kept so nothing is lost; a restore assigns
    /// the device with its mode and identity where they were recorded.
    pub attrs: Vec<(String, String)>,
}

fn bad(what: &'static str, detail: String) -> ProtocolError {
    ProtocolError::Malformed { what, detail }
}

/// A qube name as Qubes allows it (`qubes.vm.validate_name`): a letter,
/// then letters, digits, `_`, `.`, `-`; at most 31; not `none` or
/// `default`, not ending in `-dm`. So never an option and never a path.
pub fn validate_qube_name(name: &str) -> Result<&str, ProtocolError> {
    let ok = name.len() <= 31
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !matches!(name, "none" | "default")
        && !name.ends_with("-dm");
    if ok {
        Ok(name)
    } else {
        Err(bad("qube name", display_safe(name)))
    }
}

/// An identifier (property, feature, tag, device class or option, rule
/// key): `[A-Za-z0-9_.-]`, 1..=64, not starting with `-` or `.`.
fn validate_ident(what: &'static str, s: &str) -> Result<(), ProtocolError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(bad(what, display_safe(s)))
    }
}

/// A value Qubes takes over its Admin API: printable ASCII and spaces, at
/// most 4 KiB (qubesd refuses anything else in a property or feature).
fn validate_value(what: &'static str, s: &str) -> Result<(), ProtocolError> {
    if s.len() <= 4096 && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        Ok(())
    } else {
        Err(bad(what, display_safe(s)))
    }
}

fn bounded<T>(what: &'static str, v: &[T]) -> Result<(), ProtocolError> {
    if v.len() > MAX_ITEMS {
        return Err(bad(what, format!("{} entries", v.len())));
    }
    Ok(())
}

/// Rule keys `qvm-firewall add` takes.
pub const FIREWALL_KEYS: [&str; 8] = [
    "action",
    "dsthost",
    "proto",
    "dstports",
    "icmptype",
    "specialtarget",
    "comment",
    "expire",
];

impl QubeSettings {
    pub fn validate(&self) -> Result<(), ProtocolError> {
        validate_qube_name(&self.name)?;
        if !CLASSES.contains(&self.class.as_str()) {
            return Err(bad("qube class", display_safe(&self.class)));
        }
        if !LABELS.contains(&self.label.as_str()) {
            return Err(bad("label", display_safe(&self.label)));
        }
        bounded("properties", &self.properties)?;
        for (i, (k, v)) in self.properties.iter().enumerate() {
            validate_ident("property name", k)?;
            if k.contains([':', '.', '-']) {
                return Err(bad("property name", display_safe(k)));
            }
            if i > 0 && self.properties[i - 1].0 >= *k {
                return Err(bad("properties", "out of order".into()));
            }
            match v {
                PropValue::Text(t) => validate_value("property value", t)?,
                PropValue::Qube(Some(q)) => {
                    validate_qube_name(q)?;
                }
                PropValue::Qube(None) => {}
            }
        }
        bounded("features", &self.features)?;
        for (k, v) in &self.features {
            validate_ident("feature name", k)?;
            validate_value("feature value", v)?;
        }
        bounded("tags", &self.tags)?;
        for t in &self.tags {
            validate_ident("tag", t)?;
            if t.contains([':', '.']) {
                return Err(bad("tag", display_safe(t)));
            }
        }
        bounded("devices", &self.devices)?;
        for d in &self.devices {
            validate_ident("device class", &d.class)?;
            if d.backend != "dom0" {
                validate_qube_name(&d.backend)?;
            }
            validate_ident("device id", &d.ident)?;
            for (k, v) in &d.attrs {
                validate_ident("device attribute", k)?;
                validate_value("device attribute value", v)?;
            }
            for (k, v) in &d.options {
                validate_ident("device option", k)?;
                validate_value("device option value", v)?;
                if k.contains(['=', ':']) {
                    return Err(bad("device option", display_safe(k)));
                }
            }
        }
        if let Some(rules) = &self.firewall {
            bounded("firewall rules", rules)?;
            for r in rules {
                bounded("firewall rule", r)?;
                for (k, v) in r {
                    if !FIREWALL_KEYS.contains(&k.as_str()) {
                        return Err(bad("firewall rule key", display_safe(k)));
                    }
                    // qvm-firewall splits each element at `=`.
                    validate_value("firewall rule value", v)?;
                    if v.contains('=') || v.is_empty() {
                        return Err(bad("firewall rule value", display_safe(v)));
                    }
                }
            }
        }
        if let Some(n) = &self.notes {
            if n.len() > MAX_NOTES || n.contains('\0') {
                return Err(bad("notes", format!("{} bytes", n.len())));
            }
        }
        bounded("volumes", &self.volumes)?;
        for (name, attrs) in &self.volumes {
            validate_ident("volume name", name)?;
            bounded("volume attributes", attrs)?;
            for (k, v) in attrs {
                validate_ident("volume attribute", k)?;
                validate_value("volume attribute value", v)?;
            }
        }
        Ok(())
    }

    pub fn property(&self, name: &str) -> Option<&PropValue> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        match self.property(name) {
            Some(PropValue::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The qube this one is built on (`template`), if any.
    pub fn template(&self) -> Option<&str> {
        match self.property("template") {
            Some(PropValue::Qube(Some(t))) => Some(t),
            _ => None,
        }
    }

    /// The archive's name of this qube's `volume` in an LVM pool, as Qubes
    /// names it there: `vm-NAME-VOLUME`.
    pub fn volume_name(qube: &str, volume: &str) -> String {
        format!("vm-{qube}-{volume}")
    }
}

/// The qube and volume an archive volume name stands for under Qubes'
/// naming in its pools (`vm-NAME-private`, `vm-NAME-root`); None for any
/// other name (and for `-volatile`, never worth keeping).
pub fn qube_of_volume(volume: &str) -> Option<(&str, &'static str)> {
    let rest = volume.strip_prefix("vm-")?;
    for v in ["private", "root"] {
        if let Some(q) = rest.strip_suffix(v).and_then(|q| q.strip_suffix('-')) {
            if validate_qube_name(q).is_ok() {
                return Some((q, v));
            }
        }
    }
    None
}

impl QubesCatalog {
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.qubes.len() > u32::MAX as usize {
            return Err(bad("qubes catalog", "too many qubes".into()));
        }
        for q in &self.qubes {
            q.validate()?;
        }
        for (i, s) in self.sessions.iter().enumerate() {
            validate_session_name(&s.name)?;
            if i > 0 && self.sessions[i - 1].name >= s.name {
                return Err(bad("qubes catalog", "sessions out of order".into()));
            }
            let mut last: Option<&str> = None;
            for &q in &s.qubes {
                let Some(r) = self.qubes.get(q as usize) else {
                    return Err(bad("qubes catalog", format!("no qube record {q}")));
                };
                if last.is_some_and(|l| l >= r.name.as_str()) {
                    return Err(bad("qubes catalog", "qubes out of order".into()));
                }
                last = Some(&r.name);
            }
            for (j, (v, sess)) in s.volumes.iter().enumerate() {
                validate_volume_name(v)?;
                validate_session_name(sess)?;
                if j > 0 && s.volumes[j - 1].0 >= *v {
                    return Err(bad("qubes catalog", "volumes out of order".into()));
                }
            }
        }
        Ok(())
    }

    /// The session named `name`, else the newest.
    pub fn session(&self, name: Option<&str>) -> Option<&QubesSession> {
        match name {
            Some(n) => self.sessions.iter().find(|s| s.name == n),
            None => self.sessions.last(),
        }
    }

    /// The qubes of session `s`.
    pub fn qubes_of<'a>(&'a self, s: &'a QubesSession) -> impl Iterator<Item = &'a QubeSettings> {
        s.qubes.iter().filter_map(|&i| self.qubes.get(i as usize))
    }

    /// Adds a session that saw `qubes` (any order) and `volumes`; a qube
    /// record equal to a stored one is not stored again.
    pub fn add(
        &mut self,
        time: u64,
        mut qubes: Vec<QubeSettings>,
        mut volumes: Vec<(String, String)>,
    ) -> String {
        let name = protocol::names::session_name(self.sessions.last().map(|s| s.name.as_str()));
        qubes.sort_by(|a, b| a.name.cmp(&b.name));
        volumes.sort();
        let idx = qubes
            .into_iter()
            .map(|q| match self.qubes.iter().position(|x| *x == q) {
                Some(i) => i as u32,
                None => {
                    self.qubes.push(q);
                    (self.qubes.len() - 1) as u32
                }
            })
            .collect();
        self.sessions.push(QubesSession {
            name: name.clone(),
            time,
            qubes: idx,
            volumes,
        });
        name
    }

    /// Drops the sessions none of whose volume sessions `exists` any more
    /// (the newest is always kept), and the qube records no session uses.
    pub fn retain(&mut self, exists: impl Fn(&str, &str) -> bool) {
        let n = self.sessions.len();
        let mut i = 0;
        self.sessions.retain(|s| {
            i += 1;
            i == n || s.volumes.iter().any(|(v, x)| exists(v, x))
        });
        let mut used = vec![false; self.qubes.len()];
        for s in &self.sessions {
            for &q in &s.qubes {
                used[q as usize] = true;
            }
        }
        let mut map = vec![u32::MAX; self.qubes.len()];
        let mut next = 0u32;
        for (j, u) in used.iter().enumerate() {
            if *u {
                map[j] = next;
                next += 1;
            }
        }
        let mut j = 0;
        self.qubes.retain(|_| {
            j += 1;
            used[j - 1]
        });
        for s in &mut self.sessions {
            for q in &mut s.qubes {
                *q = map[*q as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn qube(name: &str) -> QubeSettings {
        QubeSettings {
            name: name.into(),
            class: "AppVM".into(),
            label: "red".into(),
            properties: vec![
                ("memory".into(), PropValue::Text("400".into())),
                ("netvm".into(), PropValue::Qube(None)),
                ("template".into(), PropValue::Qube(Some("debian-12".into()))),
            ],
            features: vec![("service.crond".into(), "1".into())],
            tags: vec!["work".into()],
            devices: vec![Device {
                class: "pci".into(),
                backend: "dom0".into(),
                ident: "00_14.3".into(),
                options: vec![("no-strict-reset".into(), "True".into())],
                attrs: vec![],
            }],
            firewall: Some(vec![vec![
                ("action".into(), "accept".into()),
                ("comment".into(), "a comment".into()),
            ]]),
            notes: Some("line\nline".into()),
            volumes: vec![("private".into(), vec![("size".into(), "2048".into())])],
        }
    }

    #[test]
    fn qube_names_as_qubes_allows_them() {
        for ok in [
            "work",
            "sys-net",
            "debian-12-xfce",
            "a.b_c",
            &"a".repeat(31),
        ] {
            assert!(validate_qube_name(ok).is_ok(), "{ok}");
        }
        for b in [
            "",
            "-x",
            "..",
            ".a",
            "1abc",
            "a/b",
            "a b",
            "none",
            "default",
            "x-dm",
            "é",
            &"a".repeat(32),
            "a\nb",
        ] {
            assert!(validate_qube_name(b).is_err(), "{b:?}");
        }
    }

    type Tamper = Box<dyn Fn(&mut QubeSettings)>;

    #[test]
    fn a_record_with_anything_a_tool_would_misread_is_refused() {
        assert!(qube("work").validate().is_ok());
        let cases: Vec<Tamper> = vec![
            Box::new(|q| q.label = "pink".into()),
            Box::new(|q| q.class = "AdminVM".into()),
            Box::new(|q| q.properties[0].0 = "-x".into()),
            Box::new(|q| q.properties[0].1 = PropValue::Text("a\x1b[2J".into())),
            Box::new(|q| q.properties[2].1 = PropValue::Qube(Some("../x".into()))),
            Box::new(|q| q.properties.swap(0, 1)),
            Box::new(|q| q.features[0].0 = "--help".into()),
            Box::new(|q| q.features[0].1 = "a\nb".into()),
            Box::new(|q| q.tags[0] = "-x".into()),
            Box::new(|q| q.devices[0].backend = "-x".into()),
            Box::new(|q| q.devices[0].ident = "../../x".into()),
            Box::new(|q| q.devices[0].options[0].0 = "a=b".into()),
            Box::new(|q| q.firewall.as_mut().unwrap()[0][0].0 = "exec".into()),
            Box::new(|q| q.firewall.as_mut().unwrap()[0][1].1 = "a=b".into()),
            Box::new(|q| q.notes = Some("a\0b".into())),
            Box::new(|q| q.volumes[0].0 = "../p".into()),
        ];
        for (i, c) in cases.iter().enumerate() {
            let mut q = qube("work");
            c(&mut q);
            assert!(q.validate().is_err(), "case {i}");
        }
    }

    #[test]
    fn volume_names_map_to_qubes_by_qubes_naming() {
        assert_eq!(qube_of_volume("vm-work-private"), Some(("work", "private")));
        assert_eq!(
            qube_of_volume("vm-debian-12-root"),
            Some(("debian-12", "root"))
        );
        for none in [
            "vm-work-volatile",
            "work-private",
            "vm--private",
            "vm-private",
            "disk.img",
        ] {
            assert_eq!(qube_of_volume(none), None, "{none}");
        }
    }

    #[test]
    fn sessions_share_records_and_retain_drops_unused_ones() {
        let mut c = QubesCatalog::default();
        let a = c.add(
            1,
            vec![qube("work"), qube("mail")],
            vec![("vm-work-private".into(), "S_000000000001".into())],
        );
        let mut changed = qube("work");
        changed.tags.push("new".into());
        let b = c.add(
            2,
            vec![qube("mail"), changed.clone()],
            vec![("vm-work-private".into(), "S_000000000002".into())],
        );
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("S_000000000001", "S_000000000002")
        );
        assert_eq!(c.qubes.len(), 3);
        assert!(c.validate().is_ok());
        let names: Vec<_> = c.qubes_of(&c.sessions[0]).map(|q| q.name.clone()).collect();
        assert_eq!(names, ["mail", "work"]);
        c.retain(|_, s| s == "S_000000000002");
        assert_eq!(c.sessions.len(), 1);
        assert_eq!(c.qubes.len(), 2);
        assert!(c.validate().is_ok());
        let got: Vec<_> = c.qubes_of(&c.sessions[0]).cloned().collect();
        assert_eq!(got, vec![qube("mail"), changed]);
        // The newest is kept even when its volume sessions are gone.
        c.retain(|_, _| false);
        assert_eq!(c.sessions.len(), 1);
        let mut bad = c.clone();
        bad.sessions[0].qubes.push(9);
        assert!(bad.validate().is_err());
    }
}
