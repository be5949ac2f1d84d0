//! What each binary links, from Cargo's own resolution of the workspace
//! (`cargo tree`, offline, on the lock file): the receiver, which never
//! holds a key, links no KDF, no AEAD and none of dom0's sealed formats,
//! so a flaw in them cannot be reached through it; dom0 links no receiver
//! code and the receiver no agent code.

use std::path::PathBuf;
use std::process::Command;

/// The crates `package` links (normal dependencies, no dev or build).
fn links(package: &str) -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .current_dir(&root)
        .args([
            "tree",
            "--offline",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "-p",
            package,
        ])
        .output()
        .expect("cargo tree");
    assert!(
        o.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_receiver_links_no_key_code_and_neither_side_links_the_other() {
    let receiver = links("sparsebak-receiver");
    for banned in [
        "sparsebak-sealed",
        "argon2",
        "chacha20poly1305",
        "blake3",
        "sparsebak",
    ] {
        assert!(
            !receiver.iter().any(|c| c == banned),
            "the receiver links {banned}: {receiver:?}"
        );
    }
    assert!(receiver.iter().any(|c| c == "sparsebak-protocol"));
    let agent = links("sparsebak");
    assert!(agent.iter().any(|c| c == "sparsebak-sealed"));
    assert!(
        !agent.iter().any(|c| c == "sparsebak-receiver"),
        "dom0 links the receiver: {agent:?}"
    );
}
