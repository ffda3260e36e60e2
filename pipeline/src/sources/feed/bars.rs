//! The bar book: the state that lets a re-sent bar replace the one it
//! revises instead of becoming a second tick for the same minute.
//!
//! Feeds send a minute bar again when late trades change it (Alpaca `u`,
//! Polygon re-sends `AM` within 15 minutes) and sometimes send the same
//! minute twice (alpaca-trade-api-csharp#426). Bars of the current batch are
//! held here until the batch is finished, so a re-send in the meantime simply
//! replaces the pending bar; a re-send of a bar already emitted becomes an
//! amendment (see [`super::amend`]), because emitted ticks are never rewritten.

use std::collections::{HashMap, VecDeque};

/// How far back, in event time, the book remembers emitted bars per
/// symbol: Polygon re-sends for 15 minutes after the minute; twice that
/// leaves room for a slow feed.
pub(crate) const REVISION_WINDOW_US: i64 = 30 * 60 * 1_000_000;

/// Emitted bars remembered per symbol at most, whatever their times (bounds
/// memory when a feed sends second bars or garbage times).
const MAX_REMEMBERED: usize = 256;

/// One bar's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bar {
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

/// What staging a bar did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Staged {
    /// A minute not seen before: it will be emitted with the batch.
    New,
    /// It replaced a pending bar of the same minute.
    Replaced,
    /// The minute was already emitted as `previous`: record an amendment.
    Revision { previous: Bar },
}

/// Pending and recently emitted bars, keyed by `(symbol, start)`.
#[derive(Debug, Default)]
pub(crate) struct BarBook {
    ids: HashMap<String, u32>,
    names: Vec<String>,
    /// Bars of the current batch in first-arrival order.
    pending: Vec<(u32, i64, Bar)>,
    pending_at: HashMap<(u32, i64), usize>,
    /// Per symbol id: emitted `(start, bar)`, newest last.
    emitted: Vec<VecDeque<(i64, Bar)>>,
}

impl BarBook {
    fn id(&mut self, symbol: &str) -> u32 {
        if let Some(&id) = self.ids.get(symbol) {
            return id;
        }
        let id = self.names.len() as u32;
        self.ids.insert(symbol.to_owned(), id);
        self.names.push(symbol.to_owned());
        self.emitted.push(VecDeque::new());
        id
    }

    /// Stages the bar of `symbol` starting at `start_us`.
    pub fn stage(&mut self, symbol: &str, start_us: i64, bar: Bar) -> Staged {
        let id = self.id(symbol);
        if let Some(&i) = self.pending_at.get(&(id, start_us)) {
            self.pending[i].2 = bar;
            return Staged::Replaced;
        }
        let emitted = &mut self.emitted[id as usize];
        if let Some(slot) = emitted.iter_mut().rev().find(|(s, _)| *s == start_us) {
            let previous = slot.1;
            slot.1 = bar;
            return Staged::Revision { previous };
        }
        self.pending_at.insert((id, start_us), self.pending.len());
        self.pending.push((id, start_us, bar));
        Staged::New
    }

    /// Bars waiting for the end of the batch.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Hands every pending bar to `emit` in arrival order, then remembers
    /// them as emitted.
    pub fn flush(&mut self, mut emit: impl FnMut(&str, i64, &Bar)) {
        for (id, start, bar) in self.pending.drain(..) {
            emit(&self.names[id as usize], start, &bar);
            let mem = &mut self.emitted[id as usize];
            mem.push_back((start, bar));
            let newest = mem.iter().map(|(s, _)| *s).max().unwrap_or(start);
            while mem.len() > MAX_REMEMBERED
                || mem
                    .front()
                    .is_some_and(|(s, _)| *s < newest - REVISION_WINDOW_US)
            {
                mem.pop_front();
            }
        }
        self.pending_at.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(close: f64) -> Bar {
        Bar {
            open: 1.0,
            high: 9.0,
            low: 0.5,
            close,
            volume: 10.0,
        }
    }

    #[test]
    fn resends_replace_then_revise() {
        let mut b = BarBook::default();
        let m = 60_000_000;
        assert_eq!(b.stage("A", m, bar(1.0)), Staged::New);
        assert_eq!(b.stage("B", m, bar(1.0)), Staged::New);
        assert_eq!(b.stage("A", m, bar(2.0)), Staged::Replaced);
        let mut out = Vec::new();
        b.flush(|s, t, x| out.push((s.to_owned(), t, x.close)));
        assert_eq!(out, [("A".into(), m, 2.0), ("B".into(), m, 1.0)]);
        assert_eq!(
            b.stage("A", m, bar(3.0)),
            Staged::Revision { previous: bar(2.0) }
        );
        assert_eq!(
            b.stage("A", m, bar(4.0)),
            Staged::Revision { previous: bar(3.0) }
        );
        assert_eq!(b.stage("A", 2 * m, bar(1.0)), Staged::New);
        assert_eq!(b.pending(), 1);
    }

    #[test]
    fn forgets_bars_older_than_the_window() {
        let mut b = BarBook::default();
        b.stage("A", 0, bar(1.0));
        b.flush(|_, _, _| {});
        b.stage("A", REVISION_WINDOW_US + 60_000_000, bar(1.0));
        b.flush(|_, _, _| {});
        // Minute 0 is out of memory: a re-send is taken as a new (late) bar.
        assert_eq!(b.stage("A", 0, bar(1.0)), Staged::New);
    }
}
