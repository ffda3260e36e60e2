//! A tick batch's columns, typed and looked up by name once per batch:
//! what the writers of ticks (JSON for Kafka, rows for PostgreSQL) read
//! instead of `column(N)` by position.

use arrow::array::{
    AsArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};

use super::col;

/// The batch does not have the tick columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a tick batch: column `{column}` is missing or not of the tick schema's type")]
pub struct NotTickBatch {
    /// The first column that is wrong.
    pub column: &'static str,
}

/// The optional prices and sizes of a tick, in the tick schema's order.
pub const OPTIONAL_FLOATS: [&str; 7] = [
    col::OPEN,
    col::HIGH,
    col::LOW,
    col::BID,
    col::ASK,
    col::BID_SIZE,
    col::ASK_SIZE,
];

/// The tick columns of a batch (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct TickView<'b> {
    /// Event time, µs UTC.
    pub ts: &'b TimestampMicrosecondArray,
    /// Symbol.
    pub symbol: &'b StringArray,
    /// Price.
    pub price: &'b Float64Array,
    /// Volume.
    pub volume: &'b Float64Array,
    /// [`OPTIONAL_FLOATS`], each with its name.
    pub optional: [(&'static str, &'b Float64Array); 7],
    /// Sequence number within `(symbol, ts)`, when the batch has it.
    pub seq: Option<&'b UInt32Array>,
    /// Where the tick came from, when the batch has it.
    pub source: Option<&'b StringArray>,
}

impl<'b> TickView<'b> {
    /// The tick columns of `batch` (extra columns, such as the lake's
    /// `date`, are ignored; `seq` and `source` may be absent).
    pub fn new(batch: &'b RecordBatch) -> Result<Self, NotTickBatch> {
        let get = |name: &'static str| {
            batch
                .column_by_name(name)
                .ok_or(NotTickBatch { column: name })
        };
        let f64s = |name: &'static str| {
            get(name)?
                .as_primitive_opt::<Float64Type>()
                .ok_or(NotTickBatch { column: name })
        };
        let wrong = |column| NotTickBatch { column };
        let opt = |name: &'static str| f64s(name).map(|a| (name, a));
        let [o, h, l, b, a, bs, as_] = OPTIONAL_FLOATS;
        let optional = [
            opt(o)?,
            opt(h)?,
            opt(l)?,
            opt(b)?,
            opt(a)?,
            opt(bs)?,
            opt(as_)?,
        ];
        Ok(Self {
            ts: get(col::TS)?
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or(wrong(col::TS))?,
            symbol: get(col::SYMBOL)?
                .as_string_opt::<i32>()
                .ok_or(wrong(col::SYMBOL))?,
            price: f64s(col::PRICE)?,
            volume: f64s(col::VOLUME)?,
            optional,
            seq: match batch.column_by_name(col::SEQ) {
                Some(c) => Some(c.as_primitive_opt::<UInt32Type>().ok_or(wrong(col::SEQ))?),
                None => None,
            },
            source: match batch.column_by_name(col::SOURCE) {
                Some(c) => Some(c.as_string_opt::<i32>().ok_or(wrong(col::SOURCE))?),
                None => None,
            },
        })
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The symbol of `row`.
    pub fn symbol(&self, row: usize) -> &'b str {
        self.symbol.value(row)
    }

    /// The event time of `row`, µs.
    pub fn ts_us(&self, row: usize) -> i64 {
        self.ts.value(row)
    }
}

/// The event times (`ts`, µs UTC) of a batch holding the tick columns or
/// a prefix of them (held ticks, feature rows), found by name.
pub fn event_times(batch: &RecordBatch) -> Result<&TimestampMicrosecondArray, NotTickBatch> {
    batch
        .column_by_name(col::TS)
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or(NotTickBatch { column: col::TS })
}

/// The symbols of a batch holding the tick columns, found by name.
pub fn symbols(batch: &RecordBatch) -> Result<&StringArray, NotTickBatch> {
    batch
        .column_by_name(col::SYMBOL)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or(NotTickBatch {
            column: col::SYMBOL,
        })
}

/// The sequence numbers of a batch holding the tick columns, by name.
pub fn seqs(batch: &RecordBatch) -> Result<&UInt32Array, NotTickBatch> {
    batch
        .column_by_name(col::SEQ)
        .and_then(|c| c.as_primitive_opt::<UInt32Type>())
        .ok_or(NotTickBatch { column: col::SEQ })
}

impl From<NotTickBatch> for arrow::error::ArrowError {
    fn from(e: NotTickBatch) -> Self {
        arrow::error::ArrowError::SchemaError(e.to_string())
    }
}
