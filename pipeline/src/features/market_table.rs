//! The `market` table's columns: what the bucket query
//! (`queries/market/buckets.sql`) returns per one-minute bucket and symbol,
//! whether DataFusion runs it or the native pass
//! ([`NativeBuckets`](super::buckets::NativeBuckets)) does.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::tick::ts_type;

/// Column names of [`market_schema`].
pub mod market_col {
    /// Start of the one-minute bucket (UTC).
    pub const TS: &str = "ts";
    /// The symbol.
    pub const SYMBOL: &str = "symbol";
    /// The symbol's ticks in the bucket.
    pub const TICKS: &str = "ticks";
    /// The bucket's first open (bars) or price (trades).
    pub const OPEN: &str = "open";
    /// ln(last price / open).
    pub const RET: &str = "ret";
    /// Σ volume.
    pub const VOLUME: &str = "volume";
    /// Volume over the minute's median in the symbol's intraday profile.
    pub const REL_VOLUME: &str = "rel_volume";
    /// Percent rank of |ret| among the bucket's symbols.
    pub const MOVE_RANK: &str = "move_rank";
    /// Symbols with ticks in the bucket.
    pub const SYMBOLS: &str = "symbols";
    /// Median `ret` over the bucket's symbols.
    pub const RET_MEDIAN: &str = "ret_median";
    /// Mean `ret` over the bucket's symbols.
    pub const RET_MEAN: &str = "ret_mean";
    /// Median |ret − ret_median|.
    pub const RET_DISPERSION: &str = "ret_dispersion";
    /// Median `rel_volume`.
    pub const REL_VOLUME_MEDIAN: &str = "rel_volume_median";
}

/// The schema of the `market` table (without its `date` column).
pub fn market_schema() -> SchemaRef {
    use market_col::*;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let f = |name| Field::new(name, DataType::Float64, true);
            Arc::new(Schema::new(vec![
                Field::new(TS, ts_type(), false),
                Field::new(SYMBOL, DataType::Utf8, false),
                Field::new(TICKS, DataType::Int64, false),
                f(OPEN),
                f(RET),
                f(VOLUME),
                f(REL_VOLUME),
                f(MOVE_RANK),
                Field::new(SYMBOLS, DataType::Int64, false),
                f(RET_MEDIAN),
                f(RET_MEAN),
                f(RET_DISPERSION),
                f(REL_VOLUME_MEDIAN),
            ]))
        })
        .clone()
}
