//! dom0's metadata records (TOML) and config, parsed and validated as the
//! agent does: archive record, session info, prune intent, config, and the
//! keep-policy and date syntaxes users type.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = toml::from_str::<agent::meta::ArchiveRecord>(s) {
        let _ = r.params();
    }
    let _ = toml::from_str::<protocol::message::SessionInfo>(s);
    let _ = toml::from_str::<agent::meta::PruneIntent>(s);
    let _ = toml::from_str::<agent::config::Config>(s);
    let _ = s.parse::<agent::retention::Policy>();
    let _ = agent::timefmt::parse_local(s);
    let _ = agent::units::parse_size(s);
    let _ = agent::meta::parse_compression(s);
});
