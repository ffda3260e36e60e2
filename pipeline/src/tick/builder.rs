//! Columnar builder: decoded records in, validated tick `RecordBatch`es out.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, Float64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, UInt32Builder,
};

use super::{tick_schema, Rejection, SeqAssigner, Validator};

/// One decoded record, borrowed from the decoder's input so that decoding
/// allocates nothing per tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TickRecord<'a> {
    /// Event time in microseconds since the epoch, UTC.
    pub ts_us: i64,
    /// The symbol as the source spells it.
    pub symbol: &'a str,
    /// Trade price or bar close.
    pub price: f64,
    /// Traded quantity.
    pub volume: f64,
    /// Bar open.
    pub open: Option<f64>,
    /// Bar high.
    pub high: Option<f64>,
    /// Bar low.
    pub low: Option<f64>,
    /// Best bid.
    pub bid: Option<f64>,
    /// Best ask.
    pub ask: Option<f64>,
    /// Size at the best bid.
    pub bid_size: Option<f64>,
    /// Size at the best ask.
    pub ask_size: Option<f64>,
}

impl<'a> TickRecord<'a> {
    /// A trade (no bar or quote fields).
    pub fn trade(ts_us: i64, symbol: &'a str, price: f64, volume: f64) -> Self {
        Self {
            ts_us,
            symbol,
            price,
            volume,
            open: None,
            high: None,
            low: None,
            bid: None,
            ask: None,
            bid_size: None,
            ask_size: None,
        }
    }
}

/// Validates records, assigns their `seq` and appends them to Arrow builders.
///
/// The builder keeps its [`SeqAssigner`] across [`finish`](Self::finish)
/// calls, so one builder per stream gives keys that do not depend on batch
/// boundaries.
///
/// ```
/// use stockanomaly::tick::{TickBuilder, TickRecord, RejectReason};
///
/// let mut b = TickBuilder::new("example");
/// b.push(&TickRecord::trade(1_700_000_000_000_000, "AAPL", 189.5, 100.0)).unwrap();
/// let bad = b.push(&TickRecord::trade(1_700_000_000_000_000, "AAPL", f64::NAN, 1.0));
/// assert_eq!(bad.unwrap_err().reason, RejectReason::NonFinitePrice);
/// let batch = b.finish();
/// assert_eq!(batch.num_rows(), 1);
/// ```
#[derive(Debug)]
pub struct TickBuilder {
    source: String,
    validator: Validator,
    seqs: SeqAssigner,
    ts: TimestampMicrosecondBuilder,
    symbol: StringBuilder,
    seq: UInt32Builder,
    price: Float64Builder,
    volume: Float64Builder,
    open: Float64Builder,
    high: Float64Builder,
    low: Float64Builder,
    bid: Float64Builder,
    ask: Float64Builder,
    bid_size: Float64Builder,
    ask_size: Float64Builder,
    source_col: StringBuilder,
}

impl TickBuilder {
    /// A builder whose ticks carry `source` in the `source` column.
    pub fn new(source: &str) -> Self {
        Self::with_validator(source, Validator::new())
    }

    /// A builder with a given validator (a fixed "now" for tests and replays).
    pub fn with_validator(source: &str, validator: Validator) -> Self {
        Self {
            source: source.to_owned(),
            validator,
            seqs: SeqAssigner::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            symbol: StringBuilder::new(),
            seq: UInt32Builder::new(),
            price: Float64Builder::new(),
            volume: Float64Builder::new(),
            open: Float64Builder::new(),
            high: Float64Builder::new(),
            low: Float64Builder::new(),
            bid: Float64Builder::new(),
            ask: Float64Builder::new(),
            bid_size: Float64Builder::new(),
            ask_size: Float64Builder::new(),
            source_col: StringBuilder::new(),
        }
    }

    /// Forgets `symbol`'s `seq` numbering (see [`SeqAssigner::forget`]).
    pub fn forget_symbol(&mut self, symbol: &str) {
        self.seqs.forget(symbol);
    }

    /// Validates `r` and appends it; a rejected record leaves the builder
    /// unchanged and takes no `seq`.
    pub fn push(&mut self, r: &TickRecord<'_>) -> Result<(), Rejection> {
        self.validator.check(r)?;
        self.append(r);
        Ok(())
    }

    /// [`push`](Self::push) for a record that arrived at `arrived_us`:
    /// its timestamp is also bounded by the arrival (see
    /// [`Validator::check_arrived`]).
    pub fn push_arrived(&mut self, r: &TickRecord<'_>, arrived_us: i64) -> Result<(), Rejection> {
        self.validator.check_arrived(r, arrived_us)?;
        self.append(r);
        Ok(())
    }

    /// Appends a validated record.
    fn append(&mut self, r: &TickRecord<'_>) {
        let seq = self.seqs.next(r.symbol, r.ts_us);
        self.ts.append_value(r.ts_us);
        self.symbol.append_value(r.symbol);
        self.seq.append_value(seq);
        self.price.append_value(r.price);
        self.volume.append_value(r.volume);
        self.open.append_option(r.open);
        self.high.append_option(r.high);
        self.low.append_option(r.low);
        self.bid.append_option(r.bid);
        self.ask.append_option(r.ask);
        self.bid_size.append_option(r.bid_size);
        self.ask_size.append_option(r.ask_size);
        self.source_col.append_value(&self.source);
    }

    /// Ticks appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.price.len()
    }

    /// Whether no tick was appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ticks appended so far as a batch of [`tick_schema`]; the builder
    /// starts a new batch and keeps its key state.
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.symbol.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.volume.finish()),
            Arc::new(self.open.finish()),
            Arc::new(self.high.finish()),
            Arc::new(self.low.finish()),
            Arc::new(self.bid.finish()),
            Arc::new(self.ask.finish()),
            Arc::new(self.bid_size.finish()),
            Arc::new(self.ask_size.finish()),
            Arc::new(self.source_col.finish()),
        ];
        // The arrays are built to the schema's types and lengths above, so a
        // failure here is a bug in this module, not bad input.
        RecordBatch::try_new(tick_schema(), columns)
            .unwrap_or_else(|e| panic!("tick builder produced an invalid batch: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::RejectReason;
    use arrow::array::{AsArray, UInt32Array};
    use arrow::datatypes::UInt32Type;

    #[test]
    fn builds_batches_and_keeps_keys_across_them() {
        let mut b = TickBuilder::with_validator("t", Validator::with_now(2_000_000_000_000_000));
        let ts = 1_700_000_000_000_000;
        b.push(&TickRecord::trade(ts, "A", 1.0, 1.0)).unwrap();
        b.push(&TickRecord::trade(ts, "A", 1.0, 1.0)).unwrap();
        let err = b.push(&TickRecord::trade(ts, "A", -1.0, 1.0)).unwrap_err();
        assert_eq!(err.reason, RejectReason::NonPositivePrice);
        let first = b.finish();
        b.push(&TickRecord::trade(ts, "A", 1.0, 1.0)).unwrap();
        let second = b.finish();
        assert_eq!(first.num_rows(), 2);
        assert_eq!(first.schema(), tick_schema());
        let seq = |batch: &RecordBatch| -> UInt32Array {
            batch.column(2).as_primitive::<UInt32Type>().clone()
        };
        assert_eq!(seq(&first), UInt32Array::from(vec![0, 1]));
        assert_eq!(
            seq(&second),
            UInt32Array::from(vec![2]),
            "the rejected tick took no seq"
        );
        assert!(b.is_empty());
    }
}
