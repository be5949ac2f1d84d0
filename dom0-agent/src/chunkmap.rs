//! The changed-chunk bitmap: one bit per chunk, filled from byte ranges with
//! range arithmetic (whole 64-bit words at a time), never a loop over bytes.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMap {
    words: Vec<u64>,
    chunks: u64,
}

impl ChunkMap {
    pub fn new(chunks: u64) -> Self {
        ChunkMap {
            words: vec![0; chunks.div_ceil(64) as usize],
            chunks,
        }
    }

    pub fn len(&self) -> u64 {
        self.chunks
    }

    pub fn is_empty(&self) -> bool {
        self.chunks == 0
    }

    /// Marks chunks `first..=last` (clipped to the map).
    pub fn set_chunks(&mut self, first: u64, last: u64) {
        if self.chunks == 0 || first >= self.chunks {
            return;
        }
        let last = last.min(self.chunks - 1);
        if first > last {
            return;
        }
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        let lo_mask = !0u64 << (first % 64);
        let hi_mask = !0u64 >> (63 - last % 64);
        if fw == lw {
            self.words[fw] |= lo_mask & hi_mask;
        } else {
            self.words[fw] |= lo_mask;
            for w in &mut self.words[fw + 1..lw] {
                *w = !0;
            }
            self.words[lw] |= hi_mask;
        }
    }

    /// Marks every chunk touching bytes `[start, end)`.
    pub fn set_bytes(&mut self, start: u64, end: u64, chunk_size: u64) {
        if end > start {
            self.set_chunks(start / chunk_size, (end - 1) / chunk_size);
        }
    }

    pub fn set_all(&mut self) {
        if self.chunks > 0 {
            self.set_chunks(0, self.chunks - 1);
        }
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.chunks && self.words[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    /// The first set chunk at or after `from`, skipping empty words whole.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.chunks {
            return None;
        }
        let mut wi = (from / 64) as usize;
        let mut w = self.words[wi] & (!0u64 << (from % 64));
        loop {
            if w != 0 {
                return Some(wi as u64 * 64 + w.trailing_zeros() as u64);
            }
            wi += 1;
            w = *self.words.get(wi)?;
        }
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// Set chunk indices, ascending; skips empty words whole.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(wi as u64 * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_a_brute_force_model() {
        // deterministic pseudo-random ranges
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200 {
            let n = next() % 300;
            let mut m = ChunkMap::new(n);
            let mut model = vec![false; n as usize];
            for _ in 0..(next() % 6) {
                let cs = 4096u64;
                let s = next() % (n * cs + 10_000);
                let e = s + next() % (70 * cs);
                m.set_bytes(s, e, cs);
                for (i, b) in model.iter_mut().enumerate() {
                    let (cs0, ce0) = (i as u64 * cs, (i as u64 + 1) * cs);
                    if s < ce0 && e > cs0 {
                        *b = true;
                    }
                }
            }
            let got: Vec<u64> = m.iter().collect();
            let mut via_next = Vec::new();
            let mut k = 0;
            while let Some(i) = m.next_set(k) {
                via_next.push(i);
                k = i + 1;
            }
            assert_eq!(via_next, got);
            let want: Vec<u64> = (0..n).filter(|&i| model[i as usize]).collect();
            assert_eq!(got, want);
            assert_eq!(m.count(), want.len() as u64);
        }
    }
}
