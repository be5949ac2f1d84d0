//! Settings from `/etc/sparsebak/sparsebak.toml` (or `--config`), each
//! overridden by its command-line flag.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/sparsebak/sparsebak.toml";
pub const DEFAULT_META_DIR: &str = "/var/lib/sparsebak";
pub const DEFAULT_QUBES_XML: &str = "/var/lib/qubes/qubes.xml";

#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Archive destination URL, e.g. `file:///var/backups/sparsebak`.
    pub dest: Option<String>,
    /// Where volumes come from: a directory of image files.
    pub local: Option<PathBuf>,
    /// dom0's metadata directory.
    pub meta_dir: Option<PathBuf>,
    /// The receiver program to run.
    pub remote_receiver: Option<PathBuf>,
    /// Volumes `backup` takes when none are named.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Read/hash/compress threads (default: the cores and two more).
    pub workers: Option<usize>,
    /// Retention policy `backup --autoprune` applies, e.g. "daily=7,weekly=4".
    pub keep: Option<String>,
    /// Seconds a silent receiver is waited for (default 300).
    pub timeout: Option<u64>,
    /// Seconds one frame may take once begun (default 128; 0: no limit).
    pub frame_timeout: Option<u64>,
    /// Seconds a whole run may spend waiting on the receiver (default: no
    /// limit; the shipped systemd unit sets one).
    pub max_time: Option<u64>,
    /// ssh and its options for ssh:// destinations, e.g.
    /// `["ssh", "-F", "/etc/sparsebak/ssh_config"]` (default `["ssh"]`).
    pub ssh_command: Option<Vec<String>>,
    /// dom0's Qubes record, whose settings every backup run records
    /// (default `/var/lib/qubes/qubes.xml`; absent: not a Qubes dom0).
    pub qubes_xml: Option<PathBuf>,
    /// Named dedup groups: volumes whose names match share one dedup
    /// scope (`[[dedup_group]]` tables: `name`, `volumes` patterns).
    #[serde(default)]
    pub dedup_group: Vec<crate::dedup::GroupConfig>,
}

impl Config {
    /// Loads `explicit` (which must exist) or the default file if present.
    pub fn load(explicit: Option<&Path>) -> Result<Config> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG).is_file() => PathBuf::from(DEFAULT_CONFIG),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("unable to read config '{}'", path.display()))?;
        let c: Config = toml::from_str(&text)
            .with_context(|| format!("unable to parse config '{}'", path.display()))?;
        crate::dedup::validate_groups(&c.dedup_group)
            .with_context(|| format!("config '{}'", path.display()))?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_keys() {
        let c: Config =
            toml::from_str("dest = \"file:///b\"\nlocal = \"/v\"\nvolumes = [\"a.img\"]\n")
                .unwrap();
        assert_eq!(c.dest.as_deref(), Some("file:///b"));
        assert_eq!(c.volumes, vec!["a.img"]);
        assert!(toml::from_str::<Config>("dset = 1").is_err());
    }

    #[test]
    fn every_key_of_the_shipped_example_exists() {
        let text = include_str!("../sparsebak.toml.example");
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| {
                l.starts_with("[[") || l.split_once(" = ").is_some_and(|(k, _)| !k.contains(' '))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c: Config = toml::from_str(&uncommented).unwrap();
        assert_eq!(c.dedup_group.len(), 1);
        assert_eq!(
            crate::dedup::configured_group(&c.dedup_group, "vm-debian-12-work-root"),
            Some("debian-12")
        );
        assert_eq!(
            c.qubes_xml.as_deref(),
            Some(Path::new("/var/lib/qubes/qubes.xml"))
        );
        assert!(c.dest.is_some() && c.keep.is_some() && c.ssh_command.is_some());
    }
}
