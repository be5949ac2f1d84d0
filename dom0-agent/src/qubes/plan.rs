//! What `restore-qubes` will do, decided before anything is done: which
//! qubes, under which names, in which order, with which settings; what
//! conflicts with a qube that exists and what a qube refers to that will
//! not exist. Pure: it takes the recorded settings and the names the
//! system has, so it is tested by tables and printed by `--dry-run`.
//!
//! Order: a qube comes after the qube it is built on (`template`);
//! among the qubes whose template is ready, templates first, then net
//! qubes (`provides_network`), then the rest, each group in name order.
//! References to other qubes (`netvm`, `default_dispvm`, `guivm`…) and
//! device assignments (their backend may be a qube restored later) are
//! set last, after every qube exists, mapped through renames.

use sealed::qubes::{validate_qube_name, Device, PropValue, QubeSettings};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What to do with a qube whose name the system already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnConflict {
    /// Refuse the whole restore (the default).
    Refuse,
    Rename,
    Skip,
}

pub struct Request<'a> {
    /// The qubes the settings session recorded.
    pub recorded: Vec<&'a QubeSettings>,
    /// The qubes asked for (empty: all recorded).
    pub names: &'a [String],
    /// The qubes the system has now.
    pub existing: &'a BTreeSet<String>,
    pub on_conflict: OnConflict,
    pub ignore_missing: bool,
    /// Archive volumes the restore can read: name → (session, size).
    pub volumes: &'a BTreeMap<String, (String, u64)>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Qubes to create, in order.
    pub qubes: Vec<Step>,
    /// Recorded qubes not created because the system has one by that name.
    pub skipped: Vec<String>,
    pub conflicts: Vec<Conflict>,
    pub missing: Vec<Missing>,
    /// The restore can go ahead (no refused conflict, nothing missing
    /// that is not replaced by a default).
    pub ok: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub qube: String,
    /// `refused`, `renamed` or `skipped`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renamed_to: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub qube: String,
    /// The property (or `device:CLASS`) that refers to it.
    pub property: String,
    pub refers_to: String,
    /// With --ignore-missing: left to the system's default.
    pub defaulted: bool,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The recorded name.
    pub qube: String,
    /// The name it is created under.
    pub name: String,
    pub class: String,
    pub label: String,
    pub template: Option<String>,
    /// Set at creation: (property, value).
    pub properties: Vec<(String, String)>,
    /// Set after every qube exists: (property, qube or "" for none).
    pub references: Vec<(String, String)>,
    pub features: Vec<(String, String)>,
    pub tags: Vec<String>,
    pub firewall: Option<Vec<Vec<(String, String)>>>,
    pub notes: Option<String>,
    /// After every qube exists (the backend renamed as its qube is).
    pub devices: Vec<Device>,
    /// Data to restore: (Qubes volume, archive volume, session, size).
    pub volumes: Vec<VolumeStep>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct VolumeStep {
    pub volume: String,
    pub archive_volume: String,
    pub session: String,
    pub size: u64,
}

/// The first free name for a renamed `name`: `NAME-restored`, then
/// `NAME-restored2`…, cut to Qubes' 31 characters.
fn free_name(name: &str, taken: &dyn Fn(&str) -> bool) -> String {
    for i in 1.. {
        let suffix = if i == 1 {
            "-restored".to_string()
        } else {
            format!("-restored{i}")
        };
        let base: String = name.chars().take(31 - suffix.len()).collect();
        let base = base.trim_end_matches(['-', '.', '_']);
        let n = format!("{base}{suffix}");
        if validate_qube_name(&n).is_ok() && !taken(&n) {
            return n;
        }
    }
    unreachable!()
}

fn rank(q: &QubeSettings) -> u8 {
    match (q.class.as_str(), q.text("provides_network")) {
        ("TemplateVM", _) => 0,
        (_, Some("True" | "true" | "1")) => 1,
        _ => 2,
    }
}

/// Builds the plan (see the module doc). Fails only on a name asked for
/// that the session does not have.
pub fn plan(r: &Request) -> Result<Plan, String> {
    let by_name: BTreeMap<&str, &QubeSettings> =
        r.recorded.iter().map(|q| (q.name.as_str(), *q)).collect();
    let mut chosen: Vec<&QubeSettings> = Vec::new();
    if r.names.is_empty() {
        chosen = by_name.values().copied().collect();
    } else {
        for n in r.names {
            let q = by_name.get(n.as_str()).ok_or_else(|| {
                format!(
                    "the settings session has no qube {} (it has: {})",
                    protocol::names::display_safe(n),
                    by_name.keys().copied().collect::<Vec<_>>().join(", ")
                )
            })?;
            if !chosen.iter().any(|c| c.name == q.name) {
                chosen.push(q);
            }
        }
        chosen.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let mut conflicts = Vec::new();
    let mut skipped = Vec::new();
    // Recorded name → name it will have (created or, if skipped, existing).
    let mut rename: BTreeMap<String, String> = BTreeMap::new();
    let mut creating: Vec<&QubeSettings> = Vec::new();
    let mut taken: BTreeSet<String> = r.existing.clone();
    for q in &chosen {
        taken.insert(q.name.clone());
    }
    for q in chosen {
        if !r.existing.contains(&q.name) {
            rename.insert(q.name.clone(), q.name.clone());
            creating.push(q);
            continue;
        }
        match r.on_conflict {
            OnConflict::Refuse => conflicts.push(Conflict {
                qube: q.name.clone(),
                action: "refused",
                renamed_to: None,
            }),
            OnConflict::Skip => {
                conflicts.push(Conflict {
                    qube: q.name.clone(),
                    action: "skipped",
                    renamed_to: None,
                });
                skipped.push(q.name.clone());
            }
            OnConflict::Rename => {
                let n = free_name(&q.name, &|n| taken.contains(n));
                taken.insert(n.clone());
                conflicts.push(Conflict {
                    qube: q.name.clone(),
                    action: "renamed",
                    renamed_to: Some(n.clone()),
                });
                rename.insert(q.name.clone(), n);
                creating.push(q);
            }
        }
    }
    // A reference resolves to a qube being created (under its new name),
    // else to one the system has (a skipped one among them).
    let mut missing = Vec::new();
    let mut resolve = |qube: &str, prop: String, target: &str| -> Option<String> {
        if let Some(n) = rename.get(target) {
            return Some(n.clone());
        }
        if r.existing.contains(target) {
            return Some(target.to_string());
        }
        missing.push(Missing {
            qube: qube.to_string(),
            property: prop,
            refers_to: target.to_string(),
            defaulted: r.ignore_missing,
        });
        None
    };
    let mut steps = Vec::new();
    for q in &creating {
        let mut s = Step {
            qube: q.name.clone(),
            name: rename[&q.name].clone(),
            class: q.class.clone(),
            label: q.label.clone(),
            template: None,
            properties: Vec::new(),
            references: Vec::new(),
            features: q.features.clone(),
            tags: q.tags.clone(),
            firewall: q.firewall.clone(),
            notes: q.notes.clone(),
            devices: Vec::new(),
            volumes: Vec::new(),
        };
        for (k, v) in &q.properties {
            match v {
                PropValue::Text(t) => s.properties.push((k.clone(), t.clone())),
                PropValue::Qube(Some(t)) => {
                    if let Some(n) = resolve(&q.name, k.clone(), t) {
                        if k == "template" {
                            s.template = Some(n);
                        } else {
                            s.references.push((k.clone(), n));
                        }
                    }
                }
                PropValue::Qube(None) => s.references.push((k.clone(), String::new())),
            }
        }
        for d in &q.devices {
            let backend = if d.backend == "dom0" {
                Some("dom0".to_string())
            } else {
                resolve(&q.name, format!("device:{}", d.class), &d.backend)
            };
            if let Some(backend) = backend {
                s.devices.push(Device {
                    backend,
                    ..d.clone()
                });
            }
        }
        for v in sealed::qubes::persistent_volumes(&q.class) {
            let av = QubeSettings::volume_name(&q.name, v);
            if let Some((session, size)) = r.volumes.get(&av) {
                s.volumes.push(VolumeStep {
                    volume: v.to_string(),
                    archive_volume: av,
                    session: session.clone(),
                    size: *size,
                });
            }
        }
        steps.push((rank(q), s));
    }
    // Kahn's algorithm over `template`, lowest (rank, name) first.
    let mut ordered = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    while !steps.is_empty() {
        let ready = |s: &Step| {
            s.template
                .as_ref()
                .is_none_or(|t| done.contains(t) || !steps.iter().any(|(_, o)| &o.name == t))
        };
        let pick = steps
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| ready(s))
            .min_by(|(_, a), (_, b)| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)))
            .map(|(i, _)| i)
            // A template cycle cannot be recorded by Qubes; taken in order.
            .unwrap_or(0);
        let (_, s) = steps.remove(pick);
        done.insert(s.name.clone());
        ordered.push(s);
    }
    let ok = !conflicts.iter().any(|c| c.action == "refused")
        && (r.ignore_missing || missing.is_empty());
    Ok(Plan {
        qubes: ordered,
        skipped,
        conflicts,
        missing,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, class: &str, props: &[(&str, PropValue)]) -> QubeSettings {
        let mut properties: Vec<(String, PropValue)> = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        properties.sort_by(|a, b| a.0.cmp(&b.0));
        QubeSettings {
            name: name.into(),
            class: class.into(),
            label: "red".into(),
            properties,
            features: vec![],
            tags: vec![],
            devices: vec![],
            firewall: None,
            notes: None,
            volumes: vec![],
        }
    }
    fn r(s: &str) -> PropValue {
        PropValue::Qube(Some(s.into()))
    }
    fn t(s: &str) -> PropValue {
        PropValue::Text(s.into())
    }

    fn world() -> Vec<QubeSettings> {
        vec![
            q(
                "work",
                "AppVM",
                &[("template", r("fedora")), ("netvm", r("sys-firewall"))],
            ),
            q(
                "sys-firewall",
                "AppVM",
                &[
                    ("template", r("fedora")),
                    ("netvm", r("sys-net")),
                    ("provides_network", t("True")),
                ],
            ),
            q(
                "sys-net",
                "AppVM",
                &[
                    ("template", r("debian")),
                    ("provides_network", t("True")),
                    ("netvm", PropValue::Qube(None)),
                ],
            ),
            q("fedora", "TemplateVM", &[("netvm", PropValue::Qube(None))]),
            q("debian", "TemplateVM", &[]),
            q(
                "dvm",
                "AppVM",
                &[
                    ("template", r("debian")),
                    ("template_for_dispvms", t("True")),
                ],
            ),
            q("disp1", "DispVM", &[("template", r("dvm"))]),
        ]
    }

    fn run(
        recorded: &[QubeSettings],
        names: &[&str],
        existing: &[&str],
        on_conflict: OnConflict,
        ignore_missing: bool,
    ) -> Plan {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let existing: BTreeSet<String> = existing.iter().map(|s| s.to_string()).collect();
        let mut volumes = BTreeMap::new();
        volumes.insert(
            "vm-work-private".to_string(),
            ("S_000000000002".to_string(), 4096),
        );
        volumes.insert(
            "vm-fedora-root".to_string(),
            ("S_000000000001".to_string(), 8192),
        );
        plan(&Request {
            recorded: recorded.iter().collect(),
            names: &names,
            existing: &existing,
            on_conflict,
            ignore_missing,
            volumes: &volumes,
        })
        .unwrap()
    }

    fn order(p: &Plan) -> Vec<&str> {
        p.qubes.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn templates_then_net_qubes_then_the_rest_and_each_after_its_template() {
        let p = run(&world(), &[], &["dom0"], OnConflict::Refuse, false);
        assert!(p.ok, "{p:?}");
        assert_eq!(
            order(&p),
            [
                "debian",
                "fedora",
                "sys-firewall",
                "sys-net",
                "dvm",
                "disp1",
                "work"
            ]
        );
        let work = p.qubes.iter().find(|s| s.name == "work").unwrap();
        assert_eq!(work.template.as_deref(), Some("fedora"));
        assert_eq!(
            work.references,
            [("netvm".to_string(), "sys-firewall".to_string())]
        );
        assert_eq!(work.volumes.len(), 1);
        assert_eq!(work.volumes[0].session, "S_000000000002");
        let fedora = p.qubes.iter().find(|s| s.name == "fedora").unwrap();
        assert_eq!(fedora.volumes[0].volume, "root");
        assert_eq!(fedora.references, [("netvm".to_string(), String::new())]);
        let net = p.qubes.iter().find(|s| s.name == "sys-net").unwrap();
        assert_eq!(
            net.properties,
            [("provides_network".to_string(), "True".to_string())]
        );
    }

    #[test]
    fn missing_dependencies_are_reported_up_front_or_defaulted() {
        let p = run(
            &world(),
            &["work", "disp1"],
            &["dom0", "fedora"],
            OnConflict::Refuse,
            false,
        );
        assert!(!p.ok);
        let m: Vec<_> = p
            .missing
            .iter()
            .map(|m| (m.qube.as_str(), m.property.as_str(), m.refers_to.as_str()))
            .collect();
        assert_eq!(
            m,
            [
                ("disp1", "template", "dvm"),
                ("work", "netvm", "sys-firewall")
            ]
        );
        let p = run(
            &world(),
            &["work", "disp1"],
            &["dom0", "fedora"],
            OnConflict::Refuse,
            true,
        );
        assert!(p.ok);
        assert!(p.missing.iter().all(|m| m.defaulted));
        let work = p.qubes.iter().find(|s| s.name == "work").unwrap();
        assert_eq!(work.template.as_deref(), Some("fedora"));
        assert!(work.references.is_empty());
        let disp = p.qubes.iter().find(|s| s.name == "disp1").unwrap();
        assert_eq!(disp.template, None);
    }

    #[test]
    fn conflicts_refuse_rename_or_skip_and_references_follow() {
        let existing = ["dom0", "fedora", "sys-firewall", "fedora-restored"];
        let p = run(&world(), &[], &existing, OnConflict::Refuse, false);
        assert!(!p.ok);
        assert_eq!(p.conflicts.len(), 2);
        let p = run(&world(), &[], &existing, OnConflict::Rename, false);
        assert!(p.ok);
        let work = p.qubes.iter().find(|s| s.qube == "work").unwrap();
        assert_eq!(work.template.as_deref(), Some("fedora-restored2"));
        assert_eq!(work.references[0].1, "sys-firewall-restored");
        assert_eq!(order(&p)[..2], ["debian", "fedora-restored2"]);
        let p = run(&world(), &[], &existing, OnConflict::Skip, false);
        assert!(p.ok);
        assert_eq!(p.skipped, ["fedora", "sys-firewall"]);
        let work = p.qubes.iter().find(|s| s.qube == "work").unwrap();
        assert_eq!(work.template.as_deref(), Some("fedora"));
        assert_eq!(work.references[0].1, "sys-firewall");
        assert!(!order(&p).contains(&"fedora"));
    }

    #[test]
    fn renamed_names_stay_valid_qube_names() {
        let long = "a".repeat(31);
        let n = free_name(&long, &|_| false);
        assert_eq!(n.len(), 31);
        assert!(validate_qube_name(&n).is_ok());
        assert_eq!(free_name("x", &|n| n == "x-restored"), "x-restored2");
    }

    #[test]
    fn an_unknown_name_is_an_error() {
        let e = plan(&Request {
            recorded: world().iter().collect(),
            names: &["nope".to_string()],
            existing: &BTreeSet::new(),
            on_conflict: OnConflict::Refuse,
            ignore_missing: false,
            volumes: &BTreeMap::new(),
        })
        .unwrap_err();
        assert!(e.contains("no qube 'nope'"), "{e}");
    }
}
