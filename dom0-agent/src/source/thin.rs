//! thin-provisioning-tools output, parsed as a stream.
//!
//! `thin_delta` and `thin_dump` print XML with one element per range; a
//! huge delta must not become a huge document in memory, so this reads one
//! tag at a time and folds each range straight into the chunk map. Works
//! with Debian's 0.9 and the 1.x rewrite Fedora (so Qubes dom0) ships.

use crate::chunkmap::ChunkMap;
use anyhow::{bail, Context, Result};
use std::io::BufRead;

/// One XML tag: its name and attributes (values unescaped only as far as
/// these tools need: they print numbers).
#[derive(Debug, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    pub attrs: Vec<(String, String)>,
}

impl Tag {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn num(&self, key: &str) -> Result<u64> {
        let v = self
            .get(key)
            .with_context(|| format!("<{}> without {key}", self.name))?;
        v.parse()
            .with_context(|| format!("<{}> {key}=\"{v}\" is not a number", self.name))
    }
}

/// Reads tags one at a time.
pub struct TagReader<R> {
    inp: R,
    buf: Vec<u8>,
}

impl<R: BufRead> TagReader<R> {
    pub fn new(inp: R) -> Self {
        TagReader {
            inp,
            buf: Vec::with_capacity(256),
        }
    }

    pub fn next_tag(&mut self) -> Result<Option<Tag>> {
        loop {
            // skip to '<'
            self.buf.clear();
            if self.inp.read_until(b'<', &mut self.buf)? == 0 || self.buf.last() != Some(&b'<') {
                return Ok(None);
            }
            self.buf.clear();
            self.inp.read_until(b'>', &mut self.buf)?;
            if self.buf.last() != Some(&b'>') {
                bail!("XML ends inside a tag");
            }
            let body =
                std::str::from_utf8(&self.buf[..self.buf.len() - 1]).context("XML is not UTF-8")?;
            let body = body.trim().trim_end_matches('/').trim();
            if body.starts_with('/') || body.starts_with('?') || body.starts_with('!') {
                continue; // end tags, declarations, comments
            }
            return parse_tag(body).map(Some);
        }
    }
}

fn parse_tag(body: &str) -> Result<Tag> {
    let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
    let name = body[..name_end].to_string();
    let mut rest = body[name_end..].trim_start();
    let mut attrs = Vec::new();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .with_context(|| format!("bad attribute in <{body}>"))?;
        let key = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let q = after
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .with_context(|| format!("unquoted attribute in <{body}>"))?;
        let close = after[1..]
            .find(q)
            .with_context(|| format!("unterminated attribute in <{body}>"))?;
        attrs.push((key, after[1..1 + close].to_string()));
        rest = after[close + 2..].trim_start();
    }
    Ok(Tag { name, attrs })
}

/// What a delta or a dump contributes, in pool blocks.
#[derive(Debug, Default)]
pub struct Ranges {
    /// Pool data block size in bytes.
    pub block_bytes: u64,
    /// Number of ranges folded in.
    pub ranges: u64,
}

/// Folds `thin_delta` output into `map`: `different`, `right_only` and
/// `left_only` (discarded in the newer volume: restored as zeros) ranges
/// changed; `same` did not. Ranges are clipped to `volume_size` (lvreduce
/// leaves mappings past the end).
pub fn fold_delta<R: BufRead>(
    inp: R,
    map: &mut ChunkMap,
    chunk_size: u64,
    volume_size: u64,
) -> Result<Ranges> {
    fold(inp, map, chunk_size, volume_size, |t| {
        match t.name.as_str() {
            "different" | "right_only" | "left_only" => Some(("begin", "length")),
            _ => None,
        }
    })
}

/// Folds the mappings of one device from `thin_dump --dev-id` into `map`
/// (the chunks that hold data, for a first backup).
pub fn fold_dump<R: BufRead>(
    inp: R,
    map: &mut ChunkMap,
    chunk_size: u64,
    volume_size: u64,
) -> Result<Ranges> {
    fold(inp, map, chunk_size, volume_size, |t| {
        match t.name.as_str() {
            "range_mapping" => Some(("origin_begin", "length")),
            "single_mapping" => Some(("origin_block", "")),
            _ => None,
        }
    })
}

fn fold<R: BufRead>(
    inp: R,
    map: &mut ChunkMap,
    chunk_size: u64,
    volume_size: u64,
    select: impl Fn(&Tag) -> Option<(&'static str, &'static str)>,
) -> Result<Ranges> {
    let mut r = TagReader::new(inp);
    let mut out = Ranges::default();
    let mut saw_superblock = false;
    while let Some(t) = r.next_tag()? {
        if t.name == "superblock" {
            let sectors = t.num("data_block_size")?;
            if sectors == 0 || sectors > (1 << 21) {
                bail!("implausible data_block_size {sectors}");
            }
            out.block_bytes = sectors * 512;
            saw_superblock = true;
            continue;
        }
        if let Some((begin_key, len_key)) = select(&t) {
            if !saw_superblock {
                bail!("range before <superblock>");
            }
            let begin = t.num(begin_key)?;
            let len = if len_key.is_empty() {
                1
            } else {
                t.num(len_key)?
            };
            let start = begin.saturating_mul(out.block_bytes);
            let end = begin
                .saturating_add(len)
                .saturating_mul(out.block_bytes)
                .min(volume_size);
            if start < end {
                map.set_bytes(start, end, chunk_size);
            }
            out.ranges += 1;
        }
    }
    if !saw_superblock {
        bail!("no <superblock> in the output");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags() {
        let x = "<?xml version=\"1.0\"?>\n<superblock uuid=\"\" data_block_size=\"128\">\n  <diff left=\"2\" right=\"1\">\n    <different begin=\"100\" length=\"3\"/>\n  </diff>\n</superblock>";
        let mut r = TagReader::new(x.as_bytes());
        assert_eq!(
            r.next_tag().unwrap().unwrap().get("data_block_size"),
            Some("128")
        );
        assert_eq!(r.next_tag().unwrap().unwrap().name, "diff");
        let t = r.next_tag().unwrap().unwrap();
        assert_eq!(
            (
                t.name.as_str(),
                t.num("begin").unwrap(),
                t.num("length").unwrap()
            ),
            ("different", 100, 3)
        );
        assert!(r.next_tag().unwrap().is_none());
    }

    #[test]
    fn bad_output_is_an_error() {
        let mut m = ChunkMap::new(10);
        for bad in [
            "<different begin=\"1\" length=\"1\"/>",
            "<superblock data_block_size=\"128\"><different begin=\"x\" length=\"1\"/>",
            "<superblock data_block_size=\"128\"><different begin=\"1\" len",
        ] {
            assert!(
                fold_delta(bad.as_bytes(), &mut m, 65536, 1 << 20).is_err(),
                "{bad}"
            );
        }
    }
}
