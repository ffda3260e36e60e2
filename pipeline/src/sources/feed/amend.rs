//! Amendments: what a feed says about ticks it already sent (trade
//! corrections, cancels and errors, revised bars), kept beside the ticks in a
//! batch of their own.
//!
//! The tick schema is the contract between every stage and a tick, once
//! keyed, is never rewritten (streaming may already have scored it). So a
//! feed's afterthoughts are not new ticks and are not dropped either: they
//! are recorded here, validated like ticks, for the lake or the tick store to
//! apply and for analysts to read (a burst of cancels is itself a
//! surveillance signal).

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, Float64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::tick::{ts_type, Rejection, TickRecord, Validator};

/// What an amendment does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AmendmentKind {
    /// A trade was cancelled (Alpaca `x` with action `C`).
    Cancel,
    /// A trade was reported in error (Alpaca `x` with action `E`).
    Error,
    /// A trade's price, size or conditions were corrected (Alpaca `c`).
    Correction,
    /// A bar already emitted was revised after late trades (Alpaca `u`, a
    /// re-sent Polygon `AM`): the `new_*` columns are the bar now.
    BarRevision,
}

impl AmendmentKind {
    /// The stable code stored in the `kind` column.
    pub fn code(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Error => "error",
            Self::Correction => "correction",
            Self::BarRevision => "bar_revision",
        }
    }
}

/// Column names of [`amendment_schema`].
pub mod amend_col {
    /// Event time of the amended tick (trade time; a bar's start), UTC µs.
    pub const TS: &str = "ts";
    /// Symbol of the amended tick.
    pub const SYMBOL: &str = "symbol";
    /// [`AmendmentKind::code`](super::AmendmentKind::code).
    pub const KIND: &str = "kind";
    /// The feed's id of the amended trade (u64: crypto ids outgrow 2^53).
    pub const TRADE_ID: &str = "trade_id";
    /// Exchange code of the amended trade, as the feed spells it.
    pub const EXCHANGE: &str = "exchange";
    /// Price of the amended tick as first reported (a bar: its close).
    pub const PRICE: &str = "price";
    /// Volume of the amended tick as first reported.
    pub const VOLUME: &str = "volume";
    /// The corrected trade's id.
    pub const NEW_TRADE_ID: &str = "new_trade_id";
    /// Corrected price (a revised bar: its new close).
    pub const NEW_PRICE: &str = "new_price";
    /// Corrected volume.
    pub const NEW_VOLUME: &str = "new_volume";
    /// A revised bar's new open.
    pub const NEW_OPEN: &str = "new_open";
    /// A revised bar's new high.
    pub const NEW_HIGH: &str = "new_high";
    /// A revised bar's new low.
    pub const NEW_LOW: &str = "new_low";
    /// The feed (`alpaca`, `polygon`, ...).
    pub const SOURCE: &str = "source";
}

/// The schema of amendment batches.
///
/// | column | type | null |
/// | --- | --- | --- |
/// | `ts` | `Timestamp(µs, "UTC")` | no |
/// | `symbol`, `kind` | `Utf8` | no |
/// | `trade_id`, `new_trade_id` | `UInt64` | yes |
/// | `exchange` | `Utf8` | yes |
/// | `price`, `volume`, `new_price`, `new_volume`, `new_open`, `new_high`, `new_low` | `Float64` | yes |
/// | `source` | `Utf8` | no |
///
/// The tick schema carries no trade id, so an amended trade is found in the
/// ticks by `(symbol, ts, price, volume)`; a revised bar by `(symbol, ts)`.
pub fn amendment_schema() -> SchemaRef {
    use amend_col::*;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let f = |name, dt| Field::new(name, dt, true);
            Arc::new(Schema::new(vec![
                Field::new(TS, ts_type(), false),
                Field::new(SYMBOL, DataType::Utf8, false),
                Field::new(KIND, DataType::Utf8, false),
                f(TRADE_ID, DataType::UInt64),
                f(EXCHANGE, DataType::Utf8),
                f(PRICE, DataType::Float64),
                f(VOLUME, DataType::Float64),
                f(NEW_TRADE_ID, DataType::UInt64),
                f(NEW_PRICE, DataType::Float64),
                f(NEW_VOLUME, DataType::Float64),
                f(NEW_OPEN, DataType::Float64),
                f(NEW_HIGH, DataType::Float64),
                f(NEW_LOW, DataType::Float64),
                Field::new(SOURCE, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// One amendment, borrowed from the decoder's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AmendmentRecord<'a> {
    /// Event time of the amended tick, µs.
    pub ts_us: i64,
    /// Its symbol.
    pub symbol: &'a str,
    /// What happens to it.
    pub kind: AmendmentKind,
    /// The feed's id of the amended trade.
    pub trade_id: Option<u64>,
    /// Exchange of the amended trade.
    pub exchange: Option<&'a str>,
    /// Price as first reported.
    pub price: Option<f64>,
    /// Volume as first reported.
    pub volume: Option<f64>,
    /// Id of the corrected trade.
    pub new_trade_id: Option<u64>,
    /// Corrected price, or a revised bar's close.
    pub new_price: Option<f64>,
    /// Corrected volume, or a revised bar's volume.
    pub new_volume: Option<f64>,
    /// A revised bar's open.
    pub new_open: Option<f64>,
    /// A revised bar's high.
    pub new_high: Option<f64>,
    /// A revised bar's low.
    pub new_low: Option<f64>,
}

impl<'a> AmendmentRecord<'a> {
    /// An amendment of `kind` with every optional field empty.
    pub fn new(ts_us: i64, symbol: &'a str, kind: AmendmentKind) -> Self {
        Self {
            ts_us,
            symbol,
            kind,
            trade_id: None,
            exchange: None,
            price: None,
            volume: None,
            new_trade_id: None,
            new_price: None,
            new_volume: None,
            new_open: None,
            new_high: None,
            new_low: None,
        }
    }

    /// Checks the amendment with the tick rules: the amended tick as first
    /// reported and as it is now must each be a valid tick, so a bad value
    /// is refused with the same reason a tick would get.
    fn check(&self, v: &Validator) -> Result<(), Rejection> {
        let tick = |price: Option<f64>, volume: Option<f64>| TickRecord {
            price: price.unwrap_or(1.0),
            volume: volume.unwrap_or(0.0),
            ..TickRecord::trade(self.ts_us, self.symbol, 1.0, 0.0)
        };
        v.check(&tick(self.price, self.volume))?;
        v.check(&TickRecord {
            open: self.new_open,
            high: self.new_high,
            low: self.new_low,
            ..tick(self.new_price, self.new_volume)
        })
    }
}

/// Validates amendments and appends them to Arrow builders.
#[derive(Debug)]
pub struct AmendmentBuilder {
    source: String,
    validator: Validator,
    ts: TimestampMicrosecondBuilder,
    symbol: StringBuilder,
    kind: StringBuilder,
    trade_id: UInt64Builder,
    exchange: StringBuilder,
    floats: [Float64Builder; 7],
    new_trade_id: UInt64Builder,
    source_col: StringBuilder,
}

impl AmendmentBuilder {
    /// A builder whose rows carry `source`.
    pub fn new(source: &str, validator: Validator) -> Self {
        Self {
            source: source.to_owned(),
            validator,
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            symbol: StringBuilder::new(),
            kind: StringBuilder::new(),
            trade_id: UInt64Builder::new(),
            exchange: StringBuilder::new(),
            floats: Default::default(),
            new_trade_id: UInt64Builder::new(),
            source_col: StringBuilder::new(),
        }
    }

    /// Validates `r` and appends it; a refused record leaves the builder
    /// unchanged.
    pub fn push(&mut self, r: &AmendmentRecord<'_>) -> Result<(), Rejection> {
        r.check(&self.validator)?;
        self.ts.append_value(r.ts_us);
        self.symbol.append_value(r.symbol);
        self.kind.append_value(r.kind.code());
        self.trade_id.append_option(r.trade_id);
        self.exchange.append_option(r.exchange);
        let [price, volume, new_price, new_volume, new_open, new_high, new_low] = &mut self.floats;
        price.append_option(r.price);
        volume.append_option(r.volume);
        new_price.append_option(r.new_price);
        new_volume.append_option(r.new_volume);
        new_open.append_option(r.new_open);
        new_high.append_option(r.new_high);
        new_low.append_option(r.new_low);
        self.new_trade_id.append_option(r.new_trade_id);
        self.source_col.append_value(&self.source);
        Ok(())
    }

    /// Amendments appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether none was appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The amendments so far as a batch of [`amendment_schema`].
    pub fn finish(&mut self) -> RecordBatch {
        let [price, volume, new_price, new_volume, new_open, new_high, new_low] = &mut self.floats;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.ts.finish()),
            Arc::new(self.symbol.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.trade_id.finish()),
            Arc::new(self.exchange.finish()),
            Arc::new(price.finish()),
            Arc::new(volume.finish()),
            Arc::new(self.new_trade_id.finish()),
            Arc::new(new_price.finish()),
            Arc::new(new_volume.finish()),
            Arc::new(new_open.finish()),
            Arc::new(new_high.finish()),
            Arc::new(new_low.finish()),
            Arc::new(self.source_col.finish()),
        ];
        // Built to the schema's types and equal lengths above: a failure is
        // a bug in this module, not bad input.
        RecordBatch::try_new(amendment_schema(), columns)
            .unwrap_or_else(|e| panic!("amendment builder produced an invalid batch: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::RejectReason;
    use arrow::array::AsArray;

    #[test]
    fn builds_and_validates_like_ticks() {
        let now = 1_741_012_201_000_000;
        let mut b = AmendmentBuilder::new("alpaca", Validator::with_now(now));
        let cancel = AmendmentRecord {
            trade_id: Some((1 << 53) + 1),
            price: Some(10.0),
            volume: Some(5.0),
            ..AmendmentRecord::new(now, "AAPL", AmendmentKind::Cancel)
        };
        b.push(&cancel).unwrap();
        let bad = AmendmentRecord {
            new_price: Some(-1.0),
            ..AmendmentRecord::new(now, "AAPL", AmendmentKind::Correction)
        };
        assert_eq!(
            b.push(&bad).unwrap_err().reason,
            RejectReason::NonPositivePrice
        );
        let bar = AmendmentRecord {
            new_open: Some(2.0),
            new_high: Some(1.0),
            new_low: Some(1.5),
            new_price: Some(1.5),
            new_volume: Some(3.0),
            ..AmendmentRecord::new(now, "AAPL", AmendmentKind::BarRevision)
        };
        assert_eq!(b.push(&bar).unwrap_err().reason, RejectReason::HighBelowLow);
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), amendment_schema());
        let ids = batch
            .column_by_name(amend_col::TRADE_ID)
            .unwrap()
            .as_primitive::<arrow::datatypes::UInt64Type>()
            .value(0);
        assert_eq!(ids, (1 << 53) + 1);
    }
}
