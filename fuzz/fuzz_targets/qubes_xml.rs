//! dom0's `qubes.xml` and a qube's `firewall.xml`, as every backup of a
//! Qubes dom0 reads them, then the restore plan made from what passed.
//! Never a panic; whatever is kept passes the record checks.
#![no_main]
use agent::qubes::{plan, xml};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = xml::firewall(text);
    let Ok(found) = xml::parse(text, None, &|_, _, f| {
        Ok((f == "firewall.xml").then(|| text.to_string()))
    }) else {
        return;
    };
    for q in found.qubes.values() {
        assert!(q.validate().is_ok());
    }
    let existing: BTreeSet<String> = found.qubes.keys().take(2).cloned().collect();
    let _ = plan::plan(&plan::Request {
        recorded: found.qubes.values().collect(),
        names: &[],
        existing: &existing,
        on_conflict: plan::OnConflict::Rename,
        ignore_missing: false,
        volumes: &BTreeMap::new(),
    });
});
