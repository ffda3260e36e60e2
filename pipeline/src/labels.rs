//! Labels: surveillance cases as `(symbol, start_ts, end_ts, kind)` intervals.
//!
//! A tick is positive when its symbol matches and `start_ts <= ts <= end_ts`.
//! Annotated inputs (a per-row anomaly flag) become zero-length intervals.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::tick::tick_schema;

/// Column names of the labels table.
pub mod col {
    /// The symbol the case is about.
    pub const SYMBOL: &str = "symbol";
    /// First instant of the interval, inclusive.
    pub const START_TS: &str = "start_ts";
    /// Last instant of the interval, inclusive.
    pub const END_TS: &str = "end_ts";
    /// What happened (`price_spike`, `wash_trading`, `annotated`, ...).
    pub const KIND: &str = "kind";
    /// Who said so (`simulator`, `csv`, `review`).
    pub const SOURCE: &str = "source";
}

/// Kind of a label that marks an interval as reviewed and *not*
/// manipulation (an analyst dismissed an alert there): training never counts
/// it as positive, whatever its source.
pub const REVIEWED_NEGATIVE: &str = "reviewed_negative";

/// The schema of the `labels` table.
pub fn label_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = tick_schema().field(0).data_type().clone();
            Arc::new(Schema::new(vec![
                Field::new(col::SYMBOL, DataType::Utf8, false),
                Field::new(col::START_TS, ts.clone(), false),
                Field::new(col::END_TS, ts, false),
                Field::new(col::KIND, DataType::Utf8, false),
                Field::new(col::SOURCE, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// Appends label intervals to Arrow builders.
#[derive(Debug)]
pub struct LabelBuilder {
    source: String,
    symbol: StringBuilder,
    start: TimestampMicrosecondBuilder,
    end: TimestampMicrosecondBuilder,
    kind: StringBuilder,
    source_col: StringBuilder,
}

impl LabelBuilder {
    /// A builder whose labels carry `source`.
    pub fn new(source: &str) -> Self {
        Self {
            source: source.to_owned(),
            symbol: StringBuilder::new(),
            start: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            end: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            kind: StringBuilder::new(),
            source_col: StringBuilder::new(),
        }
    }

    /// Appends the interval `[start_us, end_us]` (swapped if given reversed).
    pub fn push(&mut self, symbol: &str, start_us: i64, end_us: i64, kind: &str) {
        let (s, e) = if start_us <= end_us {
            (start_us, end_us)
        } else {
            (end_us, start_us)
        };
        self.symbol.append_value(symbol);
        self.start.append_value(s);
        self.end.append_value(e);
        self.kind.append_value(kind);
        self.source_col.append_value(&self.source);
    }

    /// Labels appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.symbol.len()
    }

    /// Whether nothing was appended since the last finish.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The labels appended so far, as a batch of [`label_schema`].
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.symbol.finish()),
            Arc::new(self.start.finish()),
            Arc::new(self.end.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.source_col.finish()),
        ];
        // Types and lengths are fixed by this builder: a failure is our bug.
        RecordBatch::try_new(label_schema(), columns)
            .unwrap_or_else(|e| panic!("label builder produced an invalid batch: {e}"))
    }
}
