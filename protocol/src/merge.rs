//! The volume as of a session: a k-way merge of sorted session manifests.
//!
//! The volume as of session S is the union of sessions up to S, the newest
//! entry for an address winning. A shrink hides everything past the new end:
//! an entry of session P counts only below the smallest volume size of P and
//! every later session up to S, so data from before a shrink never reappears
//! when the volume grows again. Addresses with no winning entry are zero.

use crate::manifest::Entry;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One session's manifest, oldest session first in the list given to
/// [`merge_view`].
pub struct ViewSource<I> {
    pub volume_size: u64,
    pub entries: I,
}

pub struct MergeView<I> {
    /// (limit, entries) per session, oldest first.
    sources: Vec<(u64, I)>,
    /// Min-heap on (addr, newest session first).
    heap: BinaryHeap<Reverse<(u64, Reverse<usize>)>>,
    /// The entry each source has in the heap.
    pending: Vec<Option<Entry>>,
    started: bool,
    failed: bool,
}

/// Merges `sources` (oldest first). Yields `(session index, entry)` for the
/// winning entry of each address, ascending, zero entries included.
pub fn merge_view<I, E>(sources: Vec<ViewSource<I>>) -> MergeView<I>
where
    I: Iterator<Item = Result<Entry, E>>,
{
    let mut limit = u64::MAX;
    let mut limited: Vec<(u64, I)> = Vec::with_capacity(sources.len());
    for s in sources.into_iter().rev() {
        limit = limit.min(s.volume_size);
        limited.push((limit, s.entries));
    }
    limited.reverse();
    let n = limited.len();
    MergeView {
        sources: limited,
        heap: BinaryHeap::with_capacity(n),
        pending: vec![None; n],
        started: false,
        failed: false,
    }
}

impl<I, E> MergeView<I>
where
    I: Iterator<Item = Result<Entry, E>>,
{
    /// Pulls the next in-limit entry of source `i` into the heap.
    fn advance(&mut self, i: usize) -> Result<(), E> {
        let (limit, it) = &mut self.sources[i];
        self.pending[i] = None;
        match it.next() {
            Some(Ok(e)) if e.addr < *limit => {
                self.pending[i] = Some(e);
                self.heap.push(Reverse((e.addr, Reverse(i))));
            }
            Some(Err(err)) => return Err(err),
            // Past the limit (entries ascend, so the rest is too) or exhausted.
            _ => {}
        }
        Ok(())
    }

    fn step(&mut self) -> Result<Option<(usize, Entry)>, E> {
        if !self.started {
            self.started = true;
            for i in 0..self.sources.len() {
                self.advance(i)?;
            }
        }
        let Some(Reverse((addr, Reverse(win)))) = self.heap.pop() else {
            return Ok(None);
        };
        let entry = self.pending[win].expect("a heap item has its pending entry");
        self.advance(win)?;
        // Older sessions' entries for the same address are shadowed.
        while let Some(&Reverse((a, Reverse(i)))) = self.heap.peek() {
            if a != addr {
                break;
            }
            self.heap.pop();
            self.advance(i)?;
        }
        Ok(Some((win, entry)))
    }
}

impl<I, E> Iterator for MergeView<I>
where
    I: Iterator<Item = Result<Entry, E>>,
{
    type Item = Result<(usize, Entry), E>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.step() {
            Ok(v) => v.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Codec;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const CS: u64 = 65536;

    /// Brute force: replay sessions in order on a map, truncating on shrink.
    fn model(sessions: &[(u64, Vec<(u64, u8)>)]) -> BTreeMap<u64, (usize, u8)> {
        let mut m = BTreeMap::new();
        for (i, (size, es)) in sessions.iter().enumerate() {
            m.retain(|&a, _| a < *size);
            for &(a, tag) in es {
                if a < *size {
                    m.insert(a, (i, tag));
                }
            }
        }
        m
    }

    fn run(sessions: &[(u64, Vec<(u64, u8)>)]) -> BTreeMap<u64, (usize, u8)> {
        let srcs = sessions
            .iter()
            .map(|(size, es)| ViewSource {
                volume_size: *size,
                entries: es
                    .iter()
                    .map(|&(a, tag)| {
                        Ok::<_, ()>(Entry {
                            addr: a,
                            codec: Codec::Sealed,
                            hash: [tag; 32],
                        })
                    })
                    .collect::<Vec<_>>()
                    .into_iter(),
            })
            .collect();
        let mut out = BTreeMap::new();
        let mut last = None;
        for r in merge_view(srcs) {
            let (i, e) = r.unwrap();
            assert!(last.is_none_or(|l| l < e.addr), "not ascending");
            last = Some(e.addr);
            out.insert(e.addr, (i, e.hash[0]));
        }
        out
    }

    #[test]
    fn shrink_then_grow_hides_old_tail() {
        let s = vec![
            (10 * CS, vec![(0, 1), (8 * CS, 1)]),
            (4 * CS, vec![(CS, 2)]),
            (10 * CS, vec![(2 * CS, 3)]),
        ];
        let v = run(&s);
        assert_eq!(v.keys().copied().collect::<Vec<_>>(), vec![0, CS, 2 * CS]);
        assert_eq!(v, model(&s));
    }

    #[test]
    fn error_is_yielded_once() {
        let srcs = vec![ViewSource {
            volume_size: CS,
            entries: vec![Err::<Entry, &str>("boom")].into_iter(),
        }];
        let r: Vec<_> = merge_view(srcs).collect();
        assert_eq!(r.len(), 1);
        assert!(r[0].is_err());
    }

    proptest! {
        #[test]
        fn matches_brute_force(sessions in proptest::collection::vec(
            (1u64..40, proptest::collection::btree_set(0u64..40, 0..20)), 1..8)) {
            let s: Vec<(u64, Vec<(u64, u8)>)> = sessions
                .into_iter()
                .enumerate()
                .map(|(i, (size, set))| (size * CS, set.into_iter().map(|a| (a * CS, i as u8)).collect()))
                .collect();
            prop_assert_eq!(run(&s), model(&s));
        }
    }
}
