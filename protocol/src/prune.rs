//! Pruning a session: merging its manifest into its successor's.
//!
//! Both sides run this same function, so dom0's manifests and the archive's
//! stay identical after a prune. Pruning session P (successor Q) must leave
//! the volume as of Q and of every later session unchanged:
//!
//! - Q's entries win; P's entries survive where Q has none and the address
//!   is below Q's size (above it, P's data was hidden by Q's shrink).
//! - If P shrank the volume and Q grew it again, sessions older than P must
//!   stay hidden in the regrown range: P's size limited them, and P is going
//!   away. The merged session therefore gets zero entries ("mask") for every
//!   address in `[P's size, min(Q's size, largest size before P))` that it
//!   has no entry for. Above the largest older size there is nothing to hide.

use crate::chunk::Codec;
use crate::manifest::Entry;
use crate::message::SessionInfo;
use std::iter::Peekable;
use std::ops::Range;

/// Where an entry of the merged manifest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The successor's own entry.
    Newer,
    /// Carried over from the pruned session (its chunk file moves).
    Older,
    /// A zero entry added to keep older sessions hidden.
    Mask,
}

/// The mask range (see the module comment); empty if nothing is hidden.
pub fn mask_range(older_size: u64, newer_size: u64, max_size_before: u64, cs: u64) -> Range<u64> {
    let start = older_size.div_ceil(cs) * cs;
    let end = newer_size.min(max_size_before);
    if start < end {
        start..end
    } else {
        0..0
    }
}

pub struct PruneMerge<I: Iterator, J: Iterator> {
    older: Peekable<I>,
    newer: Peekable<J>,
    newer_size: u64,
    mask: Range<u64>,
    /// Next mask address not yet considered.
    mask_next: u64,
    cs: u64,
    failed: bool,
}

/// Merges the pruned session's entries (`older`) into its successor's
/// (`newer`). Yields the merged manifest, ascending, with each entry's
/// origin.
pub fn merge_into<I, J, E>(
    older: I,
    newer: J,
    newer_size: u64,
    mask: Range<u64>,
    cs: u64,
) -> PruneMerge<I, J>
where
    I: Iterator<Item = Result<Entry, E>>,
    J: Iterator<Item = Result<Entry, E>>,
{
    PruneMerge {
        older: older.peekable(),
        newer: newer.peekable(),
        newer_size,
        mask_next: mask.start,
        mask,
        cs,
        failed: false,
    }
}

/// The address of the next item of a peekable, taking an error out.
fn peek_addr<T: Iterator<Item = Result<Entry, E>>, E>(
    it: &mut Peekable<T>,
) -> Result<Option<u64>, E> {
    match it.peek() {
        None => Ok(None),
        Some(Ok(e)) => Ok(Some(e.addr)),
        Some(Err(_)) => Err(it.next().expect("peeked").expect_err("peeked an error")),
    }
}

impl<I, J, E> PruneMerge<I, J>
where
    I: Iterator<Item = Result<Entry, E>>,
    J: Iterator<Item = Result<Entry, E>>,
{
    fn step(&mut self) -> Result<Option<(Entry, Origin)>, E> {
        // Older entries at or past the successor's size are hidden by it.
        let o = match peek_addr(&mut self.older)? {
            Some(a) if a >= self.newer_size => {
                while self.older.next().is_some() {}
                None
            }
            a => a,
        };
        let n = peek_addr(&mut self.newer)?;
        let m = (self.mask_next < self.mask.end).then_some(self.mask_next);
        let Some(next) = [o, n, m].into_iter().flatten().min() else {
            return Ok(None);
        };
        if m == Some(next) {
            self.mask_next += self.cs;
        }
        if o == Some(next) {
            let e = self.older.next().expect("peeked").ok().expect("peeked ok");
            if n != Some(next) {
                return Ok(Some((e, Origin::Older)));
            }
        }
        if n == Some(next) {
            let e = self.newer.next().expect("peeked").ok().expect("peeked ok");
            return Ok(Some((e, Origin::Newer)));
        }
        Ok(Some((
            Entry {
                addr: next,
                codec: Codec::Zero,
                hash: [0; 32],
            },
            Origin::Mask,
        )))
    }
}

impl<I, J, E> Iterator for PruneMerge<I, J>
where
    I: Iterator<Item = Result<Entry, E>>,
    J: Iterator<Item = Result<Entry, E>>,
{
    type Item = Result<(Entry, Origin), E>;

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

/// The successor's info after the merge: its own name, time and size, the
/// pruned session's predecessor, and the merged counts.
pub fn merged_info(
    pruned: &SessionInfo,
    successor: &SessionInfo,
    chunks: u64,
    zero_chunks: u64,
    stored_bytes: u64,
) -> SessionInfo {
    SessionInfo {
        name: successor.name.clone(),
        time: successor.time,
        volume_size: successor.volume_size,
        chunks,
        zero_chunks,
        stored_bytes,
        ref_chunks: successor.ref_chunks.saturating_add(pruned.ref_chunks),
        ref_bytes: successor.ref_bytes.saturating_add(pruned.ref_bytes),
        prev: pruned.prev.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{merge_view, ViewSource};
    use proptest::prelude::*;

    const CS: u64 = 65536;

    type Sess = (u64, Vec<Entry>);

    fn ent(a: u64, tag: u8) -> Entry {
        Entry {
            addr: a * CS,
            codec: if tag == 0 { Codec::Zero } else { Codec::Sealed },
            hash: [tag; 32],
        }
    }

    /// The volume as of the last session: address → hash tag (zero omitted).
    fn view(sessions: &[Sess]) -> Vec<(u64, u8)> {
        let srcs = sessions
            .iter()
            .map(|(size, es)| ViewSource {
                volume_size: *size,
                entries: es
                    .iter()
                    .map(|e| Ok::<_, ()>(*e))
                    .collect::<Vec<_>>()
                    .into_iter(),
            })
            .collect();
        merge_view(srcs)
            .map(|r| r.unwrap().1)
            .filter(|e| e.codec != Codec::Zero)
            .map(|e| (e.addr, e.hash[0]))
            .collect()
    }

    /// Prunes session `k` (not the last) the way both sides do.
    fn prune(sessions: &[Sess], k: usize) -> Vec<Sess> {
        let max_before = sessions[..k].iter().map(|s| s.0).max().unwrap_or(0);
        let (p, q) = (&sessions[k], &sessions[k + 1]);
        let mask = mask_range(p.0, q.0, max_before, CS);
        let merged: Vec<Entry> = merge_into(
            p.1.iter().map(|e| Ok::<_, ()>(*e)),
            q.1.iter().map(|e| Ok::<_, ()>(*e)),
            q.0,
            mask,
            CS,
        )
        .map(|r| r.unwrap().0)
        .collect();
        for w in merged.windows(2) {
            assert!(w[0].addr < w[1].addr, "merged manifest not ascending");
        }
        let mut out = sessions.to_vec();
        out[k + 1] = (q.0, merged);
        out.remove(k);
        out
    }

    #[test]
    fn newer_wins_and_older_fills_in() {
        let s = vec![
            (8 * CS, vec![ent(0, 1), ent(1, 1)]),
            (8 * CS, vec![ent(1, 2), ent(5, 2)]),
            (8 * CS, vec![ent(5, 3)]),
        ];
        let p = prune(&s, 1);
        assert_eq!(p[1].1, vec![ent(1, 2), ent(5, 3)]);
        assert_eq!(view(&p), view(&s));
    }

    #[test]
    fn shrink_then_regrow_keeps_old_data_hidden() {
        let s = vec![
            (10 * CS, vec![ent(0, 1), ent(8, 1)]),
            (4 * CS, vec![ent(1, 2)]),
            (10 * CS, vec![ent(2, 3)]),
        ];
        let p = prune(&s, 1);
        // Mask zeros from 4 to 9 stop session 0's chunk 8 reappearing.
        assert!(p[1].1.contains(&ent(8, 0)));
        assert_eq!(view(&p), view(&s));
        assert_eq!(view(&p), vec![(0, 1), (CS, 2), (2 * CS, 3)]);
    }

    #[test]
    fn older_past_successor_size_dropped() {
        let s = vec![(10 * CS, vec![ent(1, 1), ent(9, 1)]), (5 * CS, vec![])];
        let p = prune(&s, 0);
        assert_eq!(p[0].1, vec![ent(1, 1)]);
    }

    #[test]
    fn mask_range_edges() {
        assert_eq!(mask_range(4 * CS, 10 * CS, 8 * CS, CS), 4 * CS..8 * CS);
        assert_eq!(
            mask_range(4 * CS + 1, 10 * CS, 20 * CS, CS),
            5 * CS..10 * CS
        );
        assert!(mask_range(10 * CS, 10 * CS, 20 * CS, CS).is_empty());
        assert!(mask_range(4 * CS, 10 * CS, 0, CS).is_empty());
    }

    fn arb_sessions() -> impl Strategy<Value = Vec<Sess>> {
        proptest::collection::vec(
            (
                1u64..24,
                proptest::collection::btree_map(0u64..24, 0u8..4, 0..12),
            ),
            2..7,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (size, m))| {
                    let es = m
                        .into_iter()
                        .filter(|&(a, _)| a < size)
                        .map(|(a, z)| ent(a, if z == 0 { 0 } else { 10 + i as u8 }))
                        .collect();
                    (size * CS, es)
                })
                .collect()
        })
    }

    proptest! {
        /// Any sequence of prunes leaves every remaining session's view as it was.
        #[test]
        fn prune_preserves_later_views(s in arb_sessions(), picks in proptest::collection::vec(any::<usize>(), 1..5)) {
            let mut cur: Vec<(usize, Sess)> = s.iter().cloned().enumerate().collect();
            for pick in picks {
                if cur.len() < 2 { break; }
                let k = pick % (cur.len() - 1);
                let sess: Vec<Sess> = cur.iter().map(|c| c.1.clone()).collect();
                let pruned = prune(&sess, k);
                let ids: Vec<usize> = cur.iter().map(|c| c.0).filter(|&i| i != cur[k].0).collect();
                cur = ids.into_iter().zip(pruned).collect();
                for (j, (orig, _)) in cur.iter().enumerate() {
                    let now: Vec<Sess> = cur[..=j].iter().map(|c| c.1.clone()).collect();
                    prop_assert_eq!(view(&now), view(&s[..=*orig]), "session {} changed", orig);
                }
            }
        }
    }
}
