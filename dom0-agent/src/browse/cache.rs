//! The opened session's cache of verified chunks: least recently used
//! out first, bounded by bytes. Only chunks that verified are put here, so
//! a hit needs no second check.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub struct ChunkCache {
    cap: usize,
    used: usize,
    tick: u64,
    /// Chunk address → (plain bytes, last use).
    chunks: HashMap<u64, (Arc<[u8]>, u64)>,
    /// Last use → chunk address: the oldest is first.
    by_use: BTreeMap<u64, u64>,
}

impl ChunkCache {
    /// A cache of at most `cap` bytes (0: caches nothing).
    pub fn new(cap: usize) -> Self {
        ChunkCache {
            cap,
            used: 0,
            tick: 0,
            chunks: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    pub fn get(&mut self, addr: u64) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let (data, used) = self.chunks.get_mut(&addr)?;
        self.by_use.remove(used);
        *used = self.tick;
        self.by_use.insert(self.tick, addr);
        Some(data.clone())
    }

    /// Whether `addr` is cached, without counting it as a use.
    pub fn contains(&self, addr: u64) -> bool {
        self.chunks.contains_key(&addr)
    }

    pub fn insert(&mut self, addr: u64, data: Arc<[u8]>) {
        if data.len() > self.cap || self.chunks.contains_key(&addr) {
            return;
        }
        while self.used + data.len() > self.cap {
            let Some((_, old)) = self.by_use.pop_first() else {
                break;
            };
            if let Some((d, _)) = self.chunks.remove(&old) {
                self.used -= d.len();
            }
        }
        self.tick += 1;
        self.used += data.len();
        self.by_use.insert(self.tick, addr);
        self.chunks.insert(addr, (data, self.tick));
    }

    /// Bytes held.
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: u8) -> Arc<[u8]> {
        vec![b; 10].into()
    }

    #[test]
    fn least_recently_used_goes_first_and_bytes_stay_bounded() {
        let mut c = ChunkCache::new(30);
        c.insert(0, chunk(0));
        c.insert(10, chunk(1));
        c.insert(20, chunk(2));
        assert_eq!(c.used(), 30);
        // A use makes 0 the newest: 10 is the one evicted.
        assert_eq!(c.get(0).unwrap()[0], 0);
        c.insert(30, chunk(3));
        assert_eq!(c.used(), 30);
        assert!(c.contains(0) && !c.contains(10) && c.contains(20) && c.contains(30));
        assert!(c.get(10).is_none());
    }

    #[test]
    fn a_cache_too_small_holds_nothing() {
        let mut c = ChunkCache::new(5);
        c.insert(0, chunk(0));
        assert_eq!(c.used(), 0);
        assert!(c.get(0).is_none());
    }
}
