//! Market context: what every symbol did at the same minute, as the lake
//! tables `market` (per one-minute bucket and symbol) and `betas` (per day
//! and symbol) that feature files join.
//!
//! A manipulated symbol moves alone; a market shock moves every symbol by
//! its beta. Comparing a tick with its own past cannot tell the two apart,
//! comparing it with the cross-section at the same minute can.
//!
//! **`market`** is made by the bucket query (`queries/market/buckets.sql`,
//! [`MARKET_SQL`] built in) over the ticks of whole buckets of **all**
//! symbols: backfill runs it over each date (whatever `--symbols` says),
//! the streaming market-context stage over each bucket once it is closed
//! (see [`crate::stream::market`]). The query's aggregates are medians,
//! ranks and exact sums, which depend only on the bucket's ticks, so both
//! give the same bits.
//!
//! **`betas`** of day `D`: per symbol, the slope of its bucket returns on
//! the market's mean return over the `market` rows of the [`PROFILE_DAYS`]
//! latest dates before `D`, from exact sums, so it is known before `D`
//! starts and is the same wherever it is computed (stored by backfill and
//! `stockanomaly profiles`, loaded by the streaming executor like the
//! intraday profiles).

use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::NaiveDate;
use datafusion::prelude::{SessionConfig, SessionContext};

use super::profiles::{
    collect_as, done, lake_session, midnight_us, profiles_for, read_day, store_day, stored_or_made,
    trailing_dates, with_date_column, ProfileError,
};
use crate::lake::{LakeRoot, TableSpec};
use crate::tick::ts_type;

/// The built-in bucket query (`queries/market/buckets.sql`).
pub const MARKET_SQL: &str = include_str!("../../../queries/market/buckets.sql");

/// Length of a market bucket: the one-minute buckets of [`MARKET_SQL`]
/// (`date_trunc('minute', ts)`), in microseconds.
pub const BUCKET_US: i64 = 60_000_000;

/// The bucket (its start, µs since the epoch) a tick at `ts_us` falls in.
pub fn bucket_of(ts_us: i64) -> i64 {
    ts_us.div_euclid(BUCKET_US).saturating_mul(BUCKET_US)
}

/// Fewest buckets of a symbol (over the trailing dates) for a beta.
pub const MIN_BETA_BUCKETS: i64 = 30;

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

/// Column names of [`betas_schema`].
pub mod beta_col {
    /// Midnight UTC of the day the beta is for (its `date=` partition).
    pub const TS: &str = "ts";
    /// The symbol.
    pub const SYMBOL: &str = "symbol";
    /// Buckets the slope was fitted on.
    pub const BUCKETS: &str = "buckets";
    /// Slope of the symbol's bucket return on the market's mean return.
    pub const BETA: &str = "beta";
}

/// The schema of the `betas` table (without its `date` column).
pub fn betas_schema() -> SchemaRef {
    use beta_col::*;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(TS, ts_type(), false),
                Field::new(SYMBOL, DataType::Utf8, false),
                Field::new(BUCKETS, DataType::Int64, false),
                Field::new(BETA, DataType::Float64, true),
            ]))
        })
        .clone()
}

/// Runs the bucket query `sql` in `ctx` (which holds the `ticks` of whole
/// buckets, `symbols` and `profiles`): the `market` rows, by symbol and
/// bucket. `date` names the computation in errors.
pub async fn market_rows(
    ctx: &SessionContext,
    sql: &str,
    date: NaiveDate,
) -> Result<RecordBatch, ProfileError> {
    let q = |source| ProfileError::Query {
        table: "market",
        date,
        source,
    };
    let view = ctx.sql(sql).await.map_err(q)?.into_view();
    ctx.deregister_table("market_query").map_err(q)?;
    ctx.register_table("market_query", view).map_err(q)?;
    collect_as(
        ctx,
        "SELECT * FROM market_query ORDER BY symbol, ts",
        &market_schema(),
        "market",
        date,
    )
    .await
}

/// The `market` rows of `date` from the lake's ticks of that date (all
/// symbols) and its intraday profiles (stored or made).
pub async fn compute_market(
    root: &LakeRoot,
    date: NaiveDate,
    sql: &str,
) -> Result<RecordBatch, ProfileError> {
    let q = |source| ProfileError::Query {
        table: "market",
        date,
        source,
    };
    let ctx = lake_session(root).await?;
    let day = ctx
        .sql(&format!("SELECT * FROM ticks WHERE date = '{date}'"))
        .await
        .map_err(q)?
        .into_view();
    ctx.deregister_table("ticks").map_err(q)?;
    ctx.register_table("ticks", day).map_err(q)?;
    let (profiles, _) = profiles_for(root, date).await?;
    let spec = TableSpec::profiles();
    let table = datafusion::datasource::MemTable::try_new(
        crate::lake::with_partitions(&spec),
        vec![vec![profiles]],
    )
    .map_err(q)?;
    ctx.deregister_table(spec.name.as_str()).map_err(q)?;
    ctx.register_table(spec.name.as_str(), Arc::new(table))
        .map_err(q)?;
    market_rows(&ctx, sql, date).await
}

/// Computes and stores the `market` rows of `date` (replacing what was
/// there); returns the rows written.
pub async fn write_market(
    root: &LakeRoot,
    date: NaiveDate,
    sql: &str,
) -> Result<u64, ProfileError> {
    let batch = compute_market(root, date, sql).await?;
    store_day(root, &TableSpec::market(), date, &batch).await?;
    Ok(batch.num_rows() as u64)
}

/// Whether the `market` rows of `date` were stored.
pub async fn market_done(root: &LakeRoot, date: NaiveDate) -> bool {
    done(root, &TableSpec::market(), date).await
}

/// Computes the betas of `date` from the `market` rows of the
/// [`PROFILE_DAYS`](super::profiles::PROFILE_DAYS) latest dates with ticks before it (made where not
/// stored, and stored when `store`). A symbol with fewer than
/// [`MIN_BETA_BUCKETS`] buckets, or whose market never moved, has none.
pub async fn compute_betas_with(
    root: &LakeRoot,
    date: NaiveDate,
    sql: &str,
    store: bool,
) -> Result<RecordBatch, ProfileError> {
    let q = |source| ProfileError::Query {
        table: "betas",
        date,
        source,
    };
    let spec = TableSpec::market();
    let mut rows = Vec::new();
    for d in trailing_dates(root, date).await? {
        rows.push(
            stored_or_made(root, &spec, "market", d, store, || {
                compute_market(root, d, sql)
            })
            .await?,
        );
    }
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    stockanomaly_udfs::register_all(&ctx);
    let m = datafusion::datasource::MemTable::try_new(market_schema(), vec![rows]).map_err(q)?;
    ctx.register_table("m", Arc::new(m)).map_err(q)?;
    // Exact sums: the slope depends on the rows, not on their order. A
    // bucket where the symbol traded alone says nothing about the market.
    let sql = format!(
        "SELECT to_timestamp_micros({midnight}) AT TIME ZONE 'UTC' AS ts, symbol, count(*) AS buckets,
                (exact_sum(ret * ret_mean) - exact_sum(ret) * exact_sum(ret_mean) / count(*))
                  / nullif(exact_sum(ret_mean * ret_mean)
                           - exact_sum(ret_mean) * exact_sum(ret_mean) / count(*), 0.0) AS beta
         FROM m WHERE symbols >= 2 AND ret IS NOT NULL AND ret_mean IS NOT NULL
         GROUP BY symbol HAVING count(*) >= {MIN_BETA_BUCKETS} ORDER BY symbol",
        midnight = midnight_us(date)
    );
    collect_as(&ctx, &sql, &betas_schema(), "betas", date).await
}

/// Computes and stores the betas of `date` (replacing what was there),
/// storing the `market` rows of earlier dates it makes; returns the rows
/// written.
pub async fn write_betas(root: &LakeRoot, date: NaiveDate, sql: &str) -> Result<u64, ProfileError> {
    let batch = compute_betas_with(root, date, sql, true).await?;
    store_day(root, &TableSpec::betas(), date, &batch).await?;
    Ok(batch.num_rows() as u64)
}

/// Whether the betas of `date` were stored.
pub async fn betas_done(root: &LakeRoot, date: NaiveDate) -> bool {
    done(root, &TableSpec::betas(), date).await
}

/// The betas of `date` with the `date` column, as a session registers the
/// table: the stored ones, else made now from the lake (not stored). The
/// flag says whether they were stored.
pub async fn betas_for(
    root: &LakeRoot,
    date: NaiveDate,
    sql: &str,
) -> Result<(RecordBatch, bool), ProfileError> {
    let spec = TableSpec::betas();
    if betas_done(root, date).await {
        return Ok((read_day(root, &spec, date).await?, true));
    }
    let made = compute_betas_with(root, date, sql, false).await?;
    Ok((with_date_column(&made, &spec, "betas", date)?, false))
}
