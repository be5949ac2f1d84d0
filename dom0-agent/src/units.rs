//! Human sizes in and out.

use anyhow::{bail, Result};

/// Parses `262144`, `256K`, `256KiB`, `2M`, `2MiB` (binary units).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("bad size '{s}'"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => bail!("bad size unit in '{s}' (use K, M or G)"),
    };
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("size '{s}' is too large"))
}

pub fn human(bytes: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// `n` and the word, pluralised: "1 chunk", "2 chunks", "0 chunks",
/// "2 properties" (a consonant and y take "ies"; "2 keys" stays).
pub fn count(n: u64, word: &str) -> String {
    if n == 1 {
        return format!("1 {word}");
    }
    let b = word.as_bytes();
    match b {
        [.., c, b'y'] if !b"aeiou".contains(c) => format!("{n} {}ies", &word[..word.len() - 1]),
        _ => format!("{n} {word}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256K").unwrap(), 262_144);
        assert_eq!(parse_size("2MiB").unwrap(), 2 << 20);
        assert_eq!(parse_size("65536").unwrap(), 65_536);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(count(1, "chunk"), "1 chunk");
        assert_eq!(count(0, "chunk"), "0 chunks");
        assert_eq!(count(2, "volume"), "2 volumes");
        assert_eq!(count(0, "property"), "0 properties");
        assert_eq!(count(1, "property"), "1 property");
        assert_eq!(count(3, "key"), "3 keys");
    }
}
