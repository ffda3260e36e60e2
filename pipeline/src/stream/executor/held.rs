//! What the executor holds of each symbol between steps, in columns:
//! admitted batches kept whole in an [`Arena`] and referenced by row, each
//! symbol's pending rows as runs of those batches, and its history (the
//! emitted ticks still needed to warm a restarted executor up) as `(ts,
//! offset)` pairs.
//!
//! Admitting, emitting and pruning touch only the rows they move: no step
//! re-sorts or copies what is held (the held lookback can be millions of
//! ticks, a step a thousand).

use std::collections::{HashMap, VecDeque};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};

/// Dense numbers for symbols, reused after a symbol is forgotten.
#[derive(Debug, Default)]
pub(super) struct Symbols {
    ids: HashMap<String, usize>,
    names: Vec<String>,
    free: Vec<usize>,
}

impl Symbols {
    /// The number of `name`, made on first sight.
    pub fn id(&mut self, name: &str) -> usize {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id] = name.to_owned();
                id
            }
            None => {
                self.names.push(name.to_owned());
                self.names.len() - 1
            }
        };
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// The number of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }

    pub fn name(&self, id: usize) -> &str {
        &self.names[id]
    }

    /// Frees `id` for another symbol.
    pub fn release(&mut self, id: usize) {
        if let Some(name) = self.names.get(id) {
            self.ids.remove(name);
            self.free.push(id);
        }
    }
}

/// Admitted batches (the held schema: tick columns, then partition, offset
/// and arrival), each kept while any of its rows is referenced.
#[derive(Debug, Default)]
pub(super) struct Arena {
    /// Number of the first batch in `batches`.
    base: u64,
    /// Each batch with the count of its rows still referenced; `None` once
    /// released.
    batches: VecDeque<Option<(RecordBatch, usize)>>,
}

/// A row of an arena batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowRef {
    pub batch: u64,
    pub row: u32,
}

impl Arena {
    /// Keeps `batch`, `refs` of its rows referenced; returns its number.
    pub fn push(&mut self, batch: RecordBatch, refs: usize) -> u64 {
        let id = self.base + self.batches.len() as u64;
        self.batches.push_back(Some((batch, refs)));
        id
    }

    pub fn get(&self, id: u64) -> Option<&RecordBatch> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.batches.get(i)?.as_ref().map(|(b, _)| b)
    }

    /// `n` rows of batch `id` are no longer referenced.
    pub fn release(&mut self, id: u64, n: usize) {
        let Some(slot) = self.slot(id) else {
            return;
        };
        if let Some((_, refs)) = slot {
            *refs = refs.saturating_sub(n);
            if *refs == 0 {
                *slot = None;
            }
        }
        while matches!(self.batches.front(), Some(None)) {
            self.batches.pop_front();
            self.base += 1;
        }
    }

    fn slot(&mut self, id: u64) -> Option<&mut Option<(RecordBatch, usize)>> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        self.batches.get_mut(i)
    }

    /// The live batches and, per batch number from `base`, its position
    /// among them: what `interleave` takes.
    pub fn live(&self) -> (Vec<&RecordBatch>, Vec<usize>) {
        let mut batches = Vec::with_capacity(self.batches.len());
        let mut at = Vec::with_capacity(self.batches.len());
        for b in &self.batches {
            at.push(batches.len());
            if let Some((b, _)) = b {
                batches.push(b);
            }
        }
        (batches, at)
    }

    /// Position of batch `id` in [`Arena::live`]'s list, given its `at`.
    pub fn index(&self, at: &[usize], id: u64) -> usize {
        at[(id - self.base) as usize]
    }
}

/// A symbol's pending rows: runs of arena batches, in key order.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// `(batch, first row, end row)`.
    runs: VecDeque<(u64, u32, u32)>,
    len: usize,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends rows `start..end` of batch `id`.
    pub fn push(&mut self, id: u64, start: u32, end: u32) {
        if end > start {
            self.runs.push_back((id, start, end));
            self.len += (end - start) as usize;
        }
    }

    /// The rows, in order.
    pub fn rows(&self) -> impl Iterator<Item = RowRef> + '_ {
        self.runs
            .iter()
            .flat_map(|&(batch, a, b)| (a..b).map(move |row| RowRef { batch, row }))
    }

    /// The rows, newest first.
    pub fn rows_rev(&self) -> impl Iterator<Item = RowRef> + '_ {
        self.runs
            .iter()
            .rev()
            .flat_map(|&(batch, a, b)| (a..b).rev().map(move |row| RowRef { batch, row }))
    }

    /// Removes the first `n` rows, calling `f` for each.
    pub fn pop_front(&mut self, mut n: usize, mut f: impl FnMut(RowRef)) {
        self.len -= n.min(self.len);
        while n > 0 {
            let Some(run) = self.runs.front_mut() else {
                return;
            };
            let take = n.min((run.2 - run.1) as usize);
            for row in run.1..run.1 + take as u32 {
                f(RowRef { batch: run.0, row });
            }
            run.1 += take as u32;
            n -= take;
            if run.1 == run.2 {
                self.runs.pop_front();
            }
        }
    }

    /// Removes every row, calling `f` for each.
    pub fn clear(&mut self, f: impl FnMut(RowRef)) {
        self.pop_front(self.len, f);
    }
}

/// The `ts` and offset of an arena row.
pub(super) fn ts_offset(arena: &Arena, r: RowRef, offset_col: usize) -> Option<(i64, i64)> {
    let b = arena.get(r.batch)?;
    let i = r.row as usize;
    let ts = b
        .column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .value(i);
    let off = b.column(offset_col).as_primitive::<Int64Type>().value(i);
    Some((ts, off))
}

/// One emitted tick still held as history.
#[derive(Debug, Clone, Copy)]
pub(super) struct HistRow {
    pub ts: i64,
    pub offset: i64,
    /// Its row, kept only when the recompute path needs the whole tick.
    pub at: Option<RowRef>,
}

/// A symbol's history, in key order, with its smallest offset.
#[derive(Debug, Default)]
pub(super) struct History {
    rows: VecDeque<HistRow>,
    /// Monotonic queue of `(row number, offset)`: the front is the smallest
    /// offset held.
    mins: VecDeque<(u64, i64)>,
    /// Row number of `rows[0]`.
    popped: u64,
    /// Row number of the first row not before the pruning horizon.
    horizon: u64,
}

impl History {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn push(&mut self, r: HistRow) {
        let n = self.popped + self.rows.len() as u64;
        while self.mins.back().is_some_and(|&(_, o)| o >= r.offset) {
            self.mins.pop_back();
        }
        self.mins.push_back((n, r.offset));
        self.rows.push_back(r);
    }

    /// The smallest offset held.
    pub fn min_offset(&self) -> Option<i64> {
        self.mins.front().map(|&(_, o)| o)
    }

    /// The oldest `ts` held.
    pub fn first_ts(&self) -> Option<i64> {
        self.rows.front().map(|r| r.ts)
    }

    pub fn rows(&self) -> impl Iterator<Item = &HistRow> {
        self.rows.iter()
    }

    /// Drops what no future tick needs: every row within `span` of
    /// `emitted` is kept, and `rows` rows before the oldest of those (one
    /// spare), never half of a `(symbol, ts)` group (replaying part of one
    /// would renumber its `seq`). Calls `f` for each row dropped.
    pub fn prune(&mut self, emitted: i64, span: i64, rows: usize, mut f: impl FnMut(&HistRow)) {
        let horizon = emitted.saturating_sub(span);
        self.horizon = self.horizon.max(self.popped);
        while let Some(r) = self.rows.get((self.horizon - self.popped) as usize) {
            if r.ts >= horizon {
                break;
            }
            self.horizon += 1;
        }
        let before = (self.horizon - self.popped) as usize;
        let mut cut = before.saturating_sub(rows.saturating_add(1));
        while cut > 0 && self.rows[cut - 1].ts == self.rows[cut].ts {
            cut -= 1;
        }
        for _ in 0..cut {
            if let Some(r) = self.rows.pop_front() {
                f(&r);
            }
            if self.mins.front().is_some_and(|&(n, _)| n == self.popped) {
                self.mins.pop_front();
            }
            self.popped += 1;
        }
    }

    /// Removes every row, calling `f` for each.
    pub fn clear(&mut self, mut f: impl FnMut(&HistRow)) {
        for r in self.rows.drain(..) {
            f(&r);
        }
        self.mins.clear();
        self.horizon = 0;
        self.popped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts: i64, offset: i64) -> HistRow {
        HistRow {
            ts,
            offset,
            at: None,
        }
    }

    #[test]
    fn history_keeps_the_span_and_rows_before_it_whole_groups() {
        let mut h = History::default();
        for (i, ts) in [1, 2, 2, 3, 4, 5, 10, 11].into_iter().enumerate() {
            h.push(row(ts, 100 + i as i64));
        }
        // Span 2 from 11: keep ts >= 9, plus 2 rows (and a spare) before.
        let mut dropped = Vec::new();
        h.prune(11, 2, 2, |r| dropped.push(r.ts));
        assert_eq!(dropped, [1, 2, 2]);
        assert_eq!(h.min_offset(), Some(103));
        // A cut inside a group keeps the whole group.
        let mut h = History::default();
        for (i, ts) in [1, 2, 2, 2, 9].into_iter().enumerate() {
            h.push(row(ts, i as i64));
        }
        let mut dropped = Vec::new();
        h.prune(9, 0, 1, |r| dropped.push(r.ts));
        assert_eq!(dropped, [1], "the three ticks at ts 2 stay together");
    }

    #[test]
    fn the_smallest_offset_follows_pushes_and_prunes_in_any_order() {
        let mut h = History::default();
        for (ts, off) in [(1, 50), (2, 40), (3, 45), (4, 60), (20, 70)] {
            h.push(row(ts, off));
        }
        assert_eq!(h.min_offset(), Some(40));
        h.prune(20, 5, 0, |_| {});
        // Rows before ts 15 go except one spare (ts 4, offset 60).
        assert_eq!(h.len(), 2);
        assert_eq!(h.min_offset(), Some(60));
    }

    #[test]
    fn pending_runs_pop_across_batches() {
        let mut p = Pending::default();
        p.push(7, 0, 2);
        p.push(8, 5, 8);
        assert_eq!(p.len(), 5);
        let mut seen = Vec::new();
        p.pop_front(3, |r| seen.push((r.batch, r.row)));
        assert_eq!(seen, [(7, 0), (7, 1), (8, 5)]);
        assert_eq!(p.rows().map(|r| r.row).collect::<Vec<_>>(), [6, 7]);
    }

    #[test]
    fn the_arena_drops_batches_once_unreferenced() {
        let b = RecordBatch::new_empty(crate::tick::tick_schema());
        let mut a = Arena::default();
        let x = a.push(b.clone(), 2);
        let y = a.push(b, 1);
        a.release(y, 1);
        assert!(a.get(y).is_none());
        assert!(a.get(x).is_some());
        a.release(x, 2);
        assert!(a.get(x).is_none());
        assert!(a.live().0.is_empty());
    }
}
