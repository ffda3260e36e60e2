//! The tick schema and the tick key.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Column names of the tick schema, so that no stage spells them by hand.
pub mod col {
    /// Event time, microseconds since the epoch, UTC.
    pub const TS: &str = "ts";
    /// Instrument symbol as the venue spells it (`AAPL`, `RELIANCE`, `BTC/USD`).
    pub const SYMBOL: &str = "symbol";
    /// Ordinal among ticks of the same symbol sharing `ts`, in arrival order.
    pub const SEQ: &str = "seq";
    /// Trade price, or a bar's close.
    pub const PRICE: &str = "price";
    /// Traded quantity (a bar's total volume).
    pub const VOLUME: &str = "volume";
    /// Bar open; NULL for trades.
    pub const OPEN: &str = "open";
    /// Bar high; NULL for trades.
    pub const HIGH: &str = "high";
    /// Bar low; NULL for trades.
    pub const LOW: &str = "low";
    /// Best bid at the time of the tick; NULL without quotes.
    pub const BID: &str = "bid";
    /// Best ask at the time of the tick; NULL without quotes.
    pub const ASK: &str = "ask";
    /// Size at the best bid; NULL without quotes.
    pub const BID_SIZE: &str = "bid_size";
    /// Size at the best ask; NULL without quotes.
    pub const ASK_SIZE: &str = "ask_size";
    /// Where the tick came from (`csv`, `simulator`, `alpaca`, ...).
    pub const SOURCE: &str = "source";
}

/// The columns that identify a tick: `(symbol, ts, seq)`.
///
/// `seq` is the ordinal (0, 1, 2, ...) of a tick among the ticks of the same
/// symbol with the same `ts`, in the order the source delivered them. Sources
/// deliver one symbol's ticks in order (a file's row order; a Kafka partition,
/// where ticks are keyed by symbol), so backfill and streaming assign the same
/// key to the same tick. Features, labels and alerts all join on this key.
pub const TICK_KEY: [&str; 3] = [col::SYMBOL, col::TS, col::SEQ];

/// The tick schema shared by every stage.
///
/// | column | type | null |
/// | --- | --- | --- |
/// | `ts` | `Timestamp(µs, "UTC")` | no |
/// | `symbol` | `Utf8` | no |
/// | `seq` | `UInt32` | no |
/// | `price`, `volume` | `Float64` | no |
/// | `open`, `high`, `low` | `Float64` | bars only |
/// | `bid`, `ask`, `bid_size`, `ask_size` | `Float64` | quotes only |
/// | `source` | `Utf8` | no |
pub fn tick_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let f = |name, nullable| Field::new(name, DataType::Float64, nullable);
            Arc::new(Schema::new(vec![
                Field::new(col::TS, ts_type(), false),
                Field::new(col::SYMBOL, DataType::Utf8, false),
                Field::new(col::SEQ, DataType::UInt32, false),
                f(col::PRICE, false),
                f(col::VOLUME, false),
                f(col::OPEN, true),
                f(col::HIGH, true),
                f(col::LOW, true),
                f(col::BID, true),
                f(col::ASK, true),
                f(col::BID_SIZE, true),
                f(col::ASK_SIZE, true),
                Field::new(col::SOURCE, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// The timestamp type of every event-time column: microseconds, UTC.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}
