//! Where a live feed's history has a hole, and which REST ticks fill it.
//!
//! A connection drop loses whatever the feed sent while no socket was open.
//! The [`GapTracker`] remembers, per symbol, the last tick received (its
//! `ts` and how many ticks shared that `ts`), snapshots that when a
//! connection is lost, and when the first ticks arrive on the new session
//! says which window to fetch from the feed's REST history:
//! `[earliest last tick, first tick after]`.
//!
//! The fetched ticks are keyed exactly as the stream keys them (`seq` counts
//! ticks of a symbol sharing a `ts`, in the feed's order; the history fetch
//! starts its count afresh at the window's start), so de-duplication is a
//! comparison with the snapshot: a REST tick of symbol `s` is new when
//! `ts > last(s)`, or `ts == last(s)` and `seq >= count(s)`; and when it is
//! earlier than the first tick after the reconnect (from then on the stream
//! has it). Symbols that had no tick before the drop take the window's
//! start as their bound.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{TimestampMicrosecondType, UInt32Type};

use crate::tick::col;

/// A symbol's last tick: its `ts` (µs) and the ticks seen with that `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastTick {
    /// Event time, µs since the epoch.
    pub ts_us: i64,
    /// Ticks of the symbol with that `ts` (the next `seq`).
    pub count: u32,
}

/// A hole to fill: from the snapshot at the drop to the first tick after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapWindow {
    /// The earliest of the symbols' last ticks (or the drop's wall-clock
    /// time when no tick had arrived), µs: the fetch starts here.
    pub from_us: i64,
    /// The first tick after the reconnect, µs: the fetch ends here and
    /// keeps only what is strictly earlier.
    pub until_us: i64,
    /// Per symbol, the last tick before the drop.
    pub last: HashMap<String, LastTick>,
}

impl GapWindow {
    /// Which rows of `fetched` (a tick batch from the REST history of this
    /// window) the stream did not deliver.
    pub fn keep_mask(&self, fetched: &RecordBatch) -> Option<BooleanArray> {
        let symbol = fetched
            .column_by_name(col::SYMBOL)?
            .as_string_opt::<i32>()?;
        let ts = fetched
            .column_by_name(col::TS)?
            .as_primitive_opt::<TimestampMicrosecondType>()?;
        let seq = fetched
            .column_by_name(col::SEQ)?
            .as_primitive_opt::<UInt32Type>()?;
        let keep = (0..fetched.num_rows()).map(|i| {
            if symbol.is_null(i) {
                return false;
            }
            let t = ts.value(i);
            if t >= self.until_us {
                return false;
            }
            match self.last.get(symbol.value(i)) {
                Some(l) => t > l.ts_us || (t == l.ts_us && seq.value(i) >= l.count),
                None => t >= self.from_us,
            }
        });
        Some(keep.map(Some).collect())
    }
}

/// Follows a live feed's ticks across connection drops (see the module
/// documentation).
#[derive(Debug, Default, Clone)]
pub struct GapTracker {
    last: HashMap<String, LastTick>,
    /// The snapshot at a drop, with the drop's wall-clock time (µs), until
    /// the first ticks after it arrive.
    open: Option<(HashMap<String, LastTick>, i64)>,
}

impl GapTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a drop happened and no tick has arrived since.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Records that the connection was lost at `now_us` (wall clock, µs).
    /// A second drop before any tick keeps the first snapshot: the hole is
    /// still the same one.
    pub fn dropped(&mut self, now_us: i64) {
        if self.open.is_none() {
            self.open = Some((self.last.clone(), now_us));
        }
    }

    /// Accounts for a batch of ticks received from the stream. When a drop
    /// is open and the batch has ticks, returns the window to fetch (and
    /// closes the gap).
    pub fn received(&mut self, ticks: &RecordBatch) -> Option<GapWindow> {
        let (symbol, ts) = match (
            ticks
                .column_by_name(col::SYMBOL)
                .and_then(|c| c.as_string_opt::<i32>()),
            ticks
                .column_by_name(col::TS)
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>()),
        ) {
            (Some(s), Some(t)) if ticks.num_rows() > 0 => (s, t),
            _ => return None,
        };
        let window = self.open.take().map(|(last, dropped_at)| {
            let until_us = arrow::compute::min(ts).unwrap_or(dropped_at);
            let from_us = last
                .values()
                .map(|l| l.ts_us)
                .min()
                .unwrap_or(dropped_at)
                .min(until_us);
            GapWindow {
                from_us,
                until_us,
                last,
            }
        });
        for (s, t) in symbol.iter().zip(ts.iter()) {
            let (Some(s), Some(t)) = (s, t) else { continue };
            match self.last.get_mut(s) {
                Some(l) if l.ts_us == t => l.count += 1,
                // Out-of-order ticks do not move the mark back.
                Some(l) if l.ts_us > t => {}
                Some(l) => *l = LastTick { ts_us: t, count: 1 },
                None => {
                    self.last
                        .insert(s.to_owned(), LastTick { ts_us: t, count: 1 });
                }
            }
        }
        window
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, StringArray, TimestampMicrosecondArray, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(rows: &[(&str, i64, u32)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(col::SYMBOL, DataType::Utf8, false),
            Field::new(col::TS, crate::tick::ts_type(), false),
            Field::new(col::SEQ, DataType::UInt32, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.2))),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    #[test]
    fn the_window_keeps_only_what_the_stream_missed() {
        let mut g = GapTracker::new();
        // Before the drop: AAPL up to ts 10 (two ticks at 10), MSFT to 7.
        assert!(g
            .received(&batch(&[("AAPL", 5, 0), ("AAPL", 10, 0), ("MSFT", 7, 0)]))
            .is_none());
        assert!(g.received(&batch(&[("AAPL", 10, 1)])).is_none());
        g.dropped(1_000);
        g.dropped(2_000);
        assert!(g.is_open());
        // Nothing in an empty batch closes the gap.
        assert!(g.received(&batch(&[])).is_none());
        let w = g
            .received(&batch(&[("MSFT", 20, 0), ("AAPL", 21, 0)]))
            .unwrap();
        assert!(!g.is_open());
        assert_eq!((w.from_us, w.until_us), (7, 20));
        // What the REST history has for [7, 20].
        let fetched = batch(&[
            ("AAPL", 10, 0), // had
            ("AAPL", 10, 1), // had
            ("AAPL", 10, 2), // missed: a third tick at 10
            ("AAPL", 15, 0), // missed
            ("MSFT", 7, 0),  // had
            ("MSFT", 12, 0), // missed
            ("MSFT", 20, 0), // the stream has it again
            ("NVDA", 6, 0),  // before the window
            ("NVDA", 8, 0),  // missed, a symbol not seen before
        ]);
        let keep: Vec<bool> = w.keep_mask(&fetched).unwrap().iter().flatten().collect();
        assert_eq!(
            keep,
            [false, false, true, true, false, true, false, false, true]
        );
    }

    #[test]
    fn a_drop_before_any_tick_starts_at_the_drop() {
        let mut g = GapTracker::new();
        g.dropped(50);
        let w = g.received(&batch(&[("AAPL", 90, 0)])).unwrap();
        assert_eq!((w.from_us, w.until_us), (50, 90));
        let keep: Vec<bool> = w
            .keep_mask(&batch(&[("AAPL", 40, 0), ("AAPL", 60, 0), ("AAPL", 90, 0)]))
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(keep, [false, true, false]);
    }
}
