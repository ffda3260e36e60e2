//! Assigns `seq`, the tick key's ordinal among ticks sharing `(symbol, ts)`.

use std::collections::HashMap;

/// How many distinct recent timestamps are remembered per symbol. A tick
/// whose timestamp is older than all of them is out of order by more than
/// that; it still gets an ordinal, counted from the oldest remembered
/// timestamp's, so keys stay unique as long as sources are roughly ordered
/// (streaming sends such ticks to the dead letters as `late` anyway).
const RECENT: usize = 64;

/// Per-symbol memory of the last timestamps seen and how many ticks each had.
///
/// State survives across batches: a stream keeps one assigner for its life,
/// so a tick's `seq` does not depend on where micro-batch boundaries fall.
#[derive(Debug, Default, Clone)]
pub struct SeqAssigner {
    symbols: HashMap<String, Recent>,
}

#[derive(Debug, Default, Clone)]
struct Recent {
    /// `(ts, ticks seen with that ts)`, ascending by `ts`.
    seen: Vec<(i64, u32)>,
}

impl SeqAssigner {
    /// An assigner with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ordinal of the next tick of `symbol` at `ts_us`.
    pub fn next(&mut self, symbol: &str, ts_us: i64) -> u32 {
        let recent = match self.symbols.get_mut(symbol) {
            Some(r) => r,
            None => self.symbols.entry(symbol.to_owned()).or_default(),
        };
        recent.next(ts_us)
    }

    /// Forgets everything (a new, independent stream).
    pub fn clear(&mut self) {
        self.symbols.clear();
    }

    /// Forgets `symbol`: its ticks will be numbered afresh, as after a
    /// restart (a stream replaying a partition it lost and got back).
    pub fn forget(&mut self, symbol: &str) {
        self.symbols.remove(symbol);
    }
}

impl Recent {
    fn next(&mut self, ts: i64) -> u32 {
        // In-order data hits the last entry or appends after it.
        match self.seen.last_mut() {
            Some((last, n)) if *last == ts => {
                *n += 1;
                return *n - 1;
            }
            Some((last, _)) if *last > ts => {}
            _ => {
                self.push_back(ts);
                return 0;
            }
        }
        match self.seen.binary_search_by_key(&ts, |&(t, _)| t) {
            Ok(i) => {
                self.seen[i].1 += 1;
                self.seen[i].1 - 1
            }
            Err(0) if self.seen.len() >= RECENT => {
                // Older than the whole memory: continue after the oldest
                // entry's count so the ordinal cannot repeat one handed out
                // since that entry was remembered.
                let n = &mut self.seen[0].1;
                *n += 1;
                *n - 1
            }
            Err(i) => {
                self.seen.insert(i, (ts, 1));
                self.trim();
                0
            }
        }
    }

    fn push_back(&mut self, ts: i64) {
        self.seen.push((ts, 1));
        self.trim();
    }

    fn trim(&mut self) {
        if self.seen.len() > RECENT {
            let extra = self.seen.len() - RECENT;
            self.seen.drain(..extra);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ties_per_symbol_in_arrival_order() {
        let mut s = SeqAssigner::new();
        let got: Vec<u32> = [
            ("A", 1),
            ("A", 1),
            ("B", 1),
            ("A", 2),
            ("A", 2),
            ("A", 2),
            ("B", 1),
        ]
        .iter()
        .map(|&(sym, ts)| s.next(sym, ts))
        .collect();
        assert_eq!(got, vec![0, 1, 0, 0, 1, 2, 1]);
    }

    #[test]
    fn out_of_order_ticks_keep_unique_ordinals() {
        let mut s = SeqAssigner::new();
        assert_eq!(s.next("A", 10), 0);
        assert_eq!(s.next("A", 20), 0);
        assert_eq!(s.next("A", 10), 1);
        assert_eq!(s.next("A", 15), 0);
        assert_eq!(s.next("A", 15), 1);
        assert_eq!(s.next("A", 20), 1);
    }

    #[test]
    fn same_answers_whatever_the_batching() {
        // The assigner is the only state: feeding the same sequence in one go
        // or with a clone in between gives the same ordinals.
        let ticks: Vec<i64> = (0..500).map(|i| (i * 7919 % 97) / 3).collect();
        let mut one = SeqAssigner::new();
        let a: Vec<u32> = ticks.iter().map(|&t| one.next("X", t)).collect();
        let mut two = SeqAssigner::new();
        let mut b: Vec<u32> = ticks[..250].iter().map(|&t| two.next("X", t)).collect();
        let mut resumed = two.clone();
        b.extend(ticks[250..].iter().map(|&t| resumed.next("X", t)));
        assert_eq!(a, b);
    }
}
