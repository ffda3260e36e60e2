//! The market context of an executor whose feature files read the
//! `market` table: the rows of closed one-minute buckets (from the
//! in-process [`BucketCloser`] or a market-context stage), how many ticks of
//! each symbol each was made from, and the betas of the held days.

use std::collections::{BTreeMap, HashMap};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;

use super::{Book, ExecutorError};
use crate::lake::with_date;
use crate::stream::market::BucketCloser;

/// What this executor has read of a source partition, for forgetting
/// market rows no tick can need any more.
pub(super) use crate::stream::market::PartitionMark as Mark;

/// The market context of an executor whose catalog reads `market`.
#[derive(Debug)]
pub(super) struct MarketContext {
    /// The in-process bucket closer; `None` when rows come from a
    /// market-context stage ([`super::Executor::push_market`]).
    pub closer: Option<BucketCloser>,
    /// Market rows (with their `date` column) per bucket.
    pub rows: BTreeMap<i64, RecordBatch>,
    /// Per symbol and bucket, the ticks its market row was made from.
    pub counts: HashMap<String, BTreeMap<i64, i64>>,
    /// Every bucket before this (µs) is closed.
    pub closed_until: i64,
    /// Rows of buckets before this (µs) were forgotten: nothing is known of
    /// them until a market-context stage's rows are read again.
    pub forgotten_before: i64,
    /// Betas per day (days since the epoch), with their `date` column.
    pub betas: BTreeMap<i64, RecordBatch>,
    /// Per partition, the newest `ts` and when it arrived: what this
    /// executor can still receive, for forgetting old rows.
    pub marks: BTreeMap<i32, Mark>,
    /// The stage's topic is being read from its start (at first, or again
    /// for new partitions): nothing is forgotten until its end is reached.
    pub rereading: bool,
    /// Rows were added or forgotten since the context tables last took
    /// them.
    pub changed: bool,
}

impl MarketContext {
    /// Adds rows of closed buckets (see [`super::Executor::push_market`]).
    pub fn add_rows(&mut self, rows: &RecordBatch, closed_until: i64) -> Result<(), ExecutorError> {
        use crate::features::market::market_col;
        self.closed_until = self.closed_until.max(closed_until);
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let schema = rows.schema();
        let ts = rows
            .column(schema.index_of(market_col::TS)?)
            .as_primitive::<TimestampMicrosecondType>();
        let syms = rows
            .column(schema.index_of(market_col::SYMBOL)?)
            .as_string::<i32>();
        let ticks = rows
            .column(schema.index_of(market_col::TICKS)?)
            .as_primitive::<arrow::datatypes::Int64Type>();
        // One pass: rows in bucket order, each bucket a contiguous slice
        // (a closing can hold a whole day of buckets).
        let order = arrow::compute::sort_to_indices(ts, None, None)?;
        let sorted = arrow::compute::take_record_batch(rows, &order)?;
        let sts = sorted
            .column(schema.index_of(market_col::TS)?)
            .as_primitive::<TimestampMicrosecondType>();
        let mut start = 0;
        while start < sorted.num_rows() {
            let b = sts.value(start);
            let mut end = start;
            while end < sorted.num_rows() && sts.value(end) == b {
                end += 1;
            }
            if !self.rows.contains_key(&b) {
                for &i in &order.values()[start..end] {
                    let i = i as usize;
                    self.counts
                        .entry(syms.value(i).to_owned())
                        .or_default()
                        .insert(b, ticks.value(i));
                }
                self.rows
                    .insert(b, with_date(&sorted.slice(start, end - start))?);
                self.changed = true;
            }
            start = end;
        }
        Ok(())
    }

    /// Whether the absence of a row of `bucket` means something: not a
    /// bucket forgotten while rows come from a market-context stage (an
    /// in-process closer refuses such ticks itself).
    pub fn knows(&self, bucket: i64) -> bool {
        self.closer.is_some() || bucket >= self.forgotten_before
    }

    /// The first bucket of `book`'s symbol whose ticks are not final yet
    /// (`i64::MAX`: none): its market row unknown, or made from more ticks
    /// than are held (the rest are still on their way). The stage refuses
    /// late ticks by the same rules as the executor, so the counts meet.
    pub fn ready_until(&self, symbol: &str, book: &Book) -> i64 {
        let counts = self.counts.get(symbol);
        for (&b, &have) in &book.buckets {
            let closed = b < self.closed_until;
            let complete = match counts.and_then(|c| c.get(&b)) {
                // Fewer held: the rest are still on their way (a consumer
                // serves partitions unevenly), however long that takes.
                Some(&n) => have >= n,
                // A forgotten bucket waits for its rows to be read again.
                None => closed && self.knows(b),
            };
            if !complete {
                return b;
            }
        }
        i64::MAX
    }
}
