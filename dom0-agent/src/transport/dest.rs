//! Destination URLs.

use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// `file:///path`: the receiver runs locally on that directory.
    File(PathBuf),
}

impl Dest {
    pub fn parse(url: &str) -> Result<Dest> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                bail!("destination '{url}': file:// needs an absolute path (file:///path)");
            }
            if path.split('/').any(|c| c == "..") {
                bail!("destination '{url}': '..' is not allowed");
            }
            let p = path.trim_end_matches('/');
            return Ok(Dest::File(PathBuf::from(if p.is_empty() {
                "/"
            } else {
                p
            })));
        }
        if url.starts_with("qubes://")
            || url.starts_with("ssh://")
            || url.starts_with("qubes-ssh://")
        {
            bail!("destination '{url}': this transport is not available in this build yet (use file:///path)");
        }
        bail!("destination '{url}' is not a URL sparsebak knows (file:///path)");
    }

    /// The canonical form stored in dom0's metadata.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::File(p) => write!(f, "file://{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(
            Dest::parse("file:///a/b/").unwrap(),
            Dest::File("/a/b".into())
        );
        assert_eq!(
            Dest::parse("file:///a/b").unwrap().canonical(),
            "file:///a/b"
        );
        assert!(Dest::parse("file://rel").is_err());
        assert!(Dest::parse("file:///a/../b").is_err());
        assert!(Dest::parse("http://x").is_err());
    }
}
