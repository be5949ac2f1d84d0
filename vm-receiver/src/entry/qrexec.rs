//! Started by a qrexec service (`/etc/qubes-rpc/sparsebak.*`): the service
//! argument names an archive under this qube's archive root, chosen here,
//! never by the caller.

use crate::error::{Failure, Result};
use protocol::message::ErrorCode;
use protocol::remote::{validate_archive_name, DEFAULT_ARCHIVE};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `/etc/sparsebak/receiver.toml` (or `$SPARSEBAK_RECEIVER_CONFIG`).
pub const CONFIG: &str = "/etc/sparsebak/receiver.toml";

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// Directory holding one archive per name [default: ~/sparsebak].
    pub archive_root: Option<PathBuf>,
    /// For the ssh relay: ssh and its options [default: ["ssh"]].
    pub ssh_command: Option<Vec<String>>,
    /// For the ssh relay: the receiver program on the far hosts
    /// [default: sparsebak-receiver].
    pub ssh_remote_receiver: Option<String>,
}

pub fn load_config() -> Result<ReceiverConfig> {
    let path = std::env::var_os("SPARSEBAK_RECEIVER_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CONFIG));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(Failure::io("read config", &path, e)),
    };
    toml::from_str(&text).map_err(|e| {
        Failure::new(
            ErrorCode::BadRequest,
            format!("receiver config '{}': {e}", path.display()),
        )
    })
}

/// The archive directory for a service argument (absent or empty: the
/// default archive).
pub fn archive_dir(
    cfg: &ReceiverConfig,
    arg: Option<&str>,
    home: Option<&Path>,
) -> Result<PathBuf> {
    let name = match arg {
        None | Some("") => DEFAULT_ARCHIVE,
        Some(a) => validate_archive_name(a)?,
    };
    // The default root is made on first use; a configured one is often a
    // mount point and is never created here (`Archive::init` then names it
    // as a missing parent, unless dom0 asked for --mkdir).
    let (root, default) = match (&cfg.archive_root, home) {
        (Some(r), _) => (r.clone(), false),
        (None, Some(h)) => (h.join("sparsebak"), true),
        (None, None) => {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                "no archive_root configured and no HOME",
            ))
        }
    };
    if !root.is_absolute() {
        return Err(Failure::new(
            ErrorCode::BadRequest,
            format!("archive_root '{}' must be absolute", root.display()),
        ));
    }
    if default {
        std::fs::create_dir_all(&root).map_err(|e| Failure::io("create archive root", &root, e))?;
    }
    Ok(root.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_maps_under_the_root_only() {
        let d = std::env::temp_dir().join(format!("sbk-qrexec-{}", std::process::id()));
        let cfg = ReceiverConfig {
            archive_root: Some(d.clone()),
            ..Default::default()
        };
        assert_eq!(archive_dir(&cfg, None, None).unwrap(), d.join("default"));
        assert_eq!(
            archive_dir(&cfg, Some("lap-1"), None).unwrap(),
            d.join("lap-1")
        );
        // What qrexec could deliver: sanitized characters, a leading dash.
        for bad in ["..", "-rf", ".x", "a_b/c", "x\ny"] {
            assert!(archive_dir(&cfg, Some(bad), None).is_err(), "{bad}");
        }
        let home = ReceiverConfig::default();
        assert_eq!(
            archive_dir(&home, Some("a"), Some(&d)).unwrap(),
            d.join("sparsebak/a")
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
