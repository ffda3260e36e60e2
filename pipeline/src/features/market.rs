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
//! the market's mean return over the `market` rows of the [`PROFILE_DAYS`](super::profiles::PROFILE_DAYS)
//! latest dates before `D`, from exact sums, so it is known before `D`
//! starts and is the same wherever it is computed (stored by backfill and
//! `stockanomaly profiles`, loaded by the streaming executor like the
//! intraday profiles).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use stockanomaly_udfs::window::ExactSum;

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

pub use super::market_table::{market_col, market_schema};

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
/// symbols) and its intraday profiles: `profiles` when given (with the
/// `date` column, as just made), else the stored ones or made now.
pub async fn compute_market(
    root: &LakeRoot,
    date: NaiveDate,
    sql: &str,
    profiles: Option<RecordBatch>,
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
    let profiles = match profiles {
        Some(p) => p,
        None => profiles_for(root, date).await?.0,
    };
    // The shipped query runs natively, as the streaming executor runs it
    // (`NativeBuckets`: the same bits, held to the SQL by its test).
    if sql == MARKET_SQL {
        let ticks = ctx.table("ticks").await.map_err(q)?;
        let ticks_schema = Arc::new(ticks.schema().as_arrow().clone());
        let ticks = ticks.collect().await.map_err(q)?;
        let ticks =
            arrow::compute::concat_batches(&ticks_schema, &ticks).map_err(|e| q(e.into()))?;
        let symbols_schema = crate::lake::with_partitions(&TableSpec::symbols());
        let symbols = collect_as(
            &ctx,
            "SELECT * FROM symbols",
            &symbols_schema,
            "market",
            date,
        )
        .await?;
        let native = super::buckets::NativeBuckets::default()
            .rows(&ticks, &symbols, std::slice::from_ref(&profiles))
            .map_err(|e| q(e.into()))?;
        if let Some(rows) = native {
            return Ok(rows);
        }
    }
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
/// there) from `profiles` as [`compute_market`] takes them; returns the
/// rows written.
pub async fn write_market(
    root: &LakeRoot,
    date: NaiveDate,
    sql: &str,
    profiles: Option<RecordBatch>,
) -> Result<u64, ProfileError> {
    let batch = compute_market(root, date, sql, profiles).await?;
    store_day(root, &TableSpec::market(), date, &batch).await?;
    Ok(batch.num_rows() as u64)
}

/// Whether the `market` rows of `date` were stored.
pub async fn market_done(root: &LakeRoot, date: NaiveDate) -> bool {
    done(root, &TableSpec::market(), date).await
}

/// Exact per-symbol sums of `market` rows, from which a symbol's beta is
/// the least-squares slope of its bucket return (`ret`) on the market's mean
/// return (`ret_mean`). The sums are exact, so the sums of single dates,
/// merged in any order, equal the sums of all their rows at once: backfill
/// keeps each date's sums ([`BetaCache`]) instead of reading its rows again
/// for every later date.
#[derive(Debug, Clone, Default)]
pub struct BetaSums {
    per_symbol: BTreeMap<String, Moments>,
}

/// Σ over one symbol's buckets: their count, x = `ret_mean`, y = `ret`.
#[derive(Debug, Clone, Default)]
struct Moments {
    buckets: i64,
    x: ExactSum,
    y: ExactSum,
    xy: ExactSum,
    xx: ExactSum,
}

impl BetaSums {
    /// The sums of `rows` (in [`market_schema`]). A bucket counts when at
    /// least two symbols traded in it (a symbol trading alone says nothing
    /// about the market) and both returns are known and finite.
    pub fn of_market(rows: &RecordBatch, date: NaiveDate) -> Result<Self, ProfileError> {
        let missing = |name: &str| ProfileError::Query {
            table: "betas",
            date,
            source: datafusion::error::DataFusionError::Plan(format!(
                "market rows without a usable `{name}` column"
            )),
        };
        let f64s = |name: &'static str| {
            rows.column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .ok_or_else(|| missing(name))
        };
        let (ret, ret_mean) = (f64s(market_col::RET)?, f64s(market_col::RET_MEAN)?);
        let symbols = rows
            .column_by_name(market_col::SYMBOLS)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| missing(market_col::SYMBOLS))?;
        let names = rows
            .column_by_name(market_col::SYMBOL)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| missing(market_col::SYMBOL))?;
        let mut out = Self::default();
        for i in 0..rows.num_rows() {
            if symbols.is_null(i) || symbols.value(i) < 2 || ret.is_null(i) || ret_mean.is_null(i) {
                continue;
            }
            let (y, x) = (ret.value(i), ret_mean.value(i));
            // Rounded products, as `exact_sum(ret * ret_mean)` would add them.
            let (xy, xx) = (x * y, x * x);
            if ![x, y, xy, xx].iter().all(|v| v.is_finite()) {
                continue;
            }
            let name = names.value(i);
            let m = match out.per_symbol.get_mut(name) {
                Some(m) => m,
                None => out.per_symbol.entry(name.to_owned()).or_default(),
            };
            m.buckets += 1;
            m.x.add(x);
            m.y.add(y);
            m.xy.add(xy);
            m.xx.add(xx);
        }
        Ok(out)
    }

    /// Adds `other`'s sums to these (exactly).
    pub fn merge(&mut self, other: &BetaSums) {
        for (name, o) in &other.per_symbol {
            let m = self.per_symbol.entry(name.clone()).or_default();
            m.buckets += o.buckets;
            for (to, from) in [
                (&mut m.x, &o.x),
                (&mut m.y, &o.y),
                (&mut m.xy, &o.xy),
                (&mut m.xx, &o.xx),
            ] {
                for &p in from.partials() {
                    to.add(p);
                }
            }
        }
    }

    /// The betas of `date` ([`betas_schema`], by symbol): per symbol with
    /// at least [`MIN_BETA_BUCKETS`] buckets, (Σxy − Σx·Σy/n) / (Σx² −
    /// (Σx)²/n), NULL when the market never moved.
    pub fn betas(&self, date: NaiveDate) -> Result<RecordBatch, ProfileError> {
        let fitted = self
            .per_symbol
            .iter()
            .filter(|(_, m)| m.buckets >= MIN_BETA_BUCKETS);
        let mut symbols = StringBuilder::new();
        let (mut buckets, mut betas) = (Vec::new(), Vec::new());
        for (name, m) in fitted {
            let n = m.buckets as f64;
            let (x, y) = (m.x.round(), m.y.round());
            let num = m.xy.round() - y * x / n;
            let den = m.xx.round() - x * x / n;
            symbols.append_value(name);
            buckets.push(m.buckets);
            betas.push((den != 0.0).then(|| num / den));
        }
        let midnight = midnight_us(date);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMicrosecondArray::from(vec![midnight; buckets.len()]).with_timezone("UTC"),
            ),
            Arc::new(symbols.finish()),
            Arc::new(Int64Array::from(buckets)),
            Arc::new(Float64Array::from(betas)),
        ];
        RecordBatch::try_new(betas_schema(), columns).map_err(|e| ProfileError::Query {
            table: "betas",
            date,
            source: e.into(),
        })
    }
}

/// The [`BetaSums`] of single dates, kept across the dates of a backfill:
/// each date's `market` rows are read once, not once per later date.
#[derive(Debug, Default)]
pub struct BetaCache {
    dates: BTreeMap<NaiveDate, BetaSums>,
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
    compute_betas_cached(root, date, sql, store, &mut BetaCache::default()).await
}

/// [`compute_betas_with`], taking the sums of dates already in `cache`
/// from it and adding those it reads; dates before the trailing ones are
/// dropped from it.
pub async fn compute_betas_cached(
    root: &LakeRoot,
    date: NaiveDate,
    sql: &str,
    store: bool,
    cache: &mut BetaCache,
) -> Result<RecordBatch, ProfileError> {
    let spec = TableSpec::market();
    let trailing = trailing_dates(root, date).await?;
    if let Some(&first) = trailing.first() {
        cache.dates = cache.dates.split_off(&first);
    }
    let mut sums = BetaSums::default();
    for d in trailing {
        let day = match cache.dates.entry(d) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let rows = stored_or_made(root, &spec, "market", d, store, || {
                    compute_market(root, d, sql, None)
                })
                .await?;
                e.insert(BetaSums::of_market(&rows, d)?)
            }
        };
        sums.merge(day);
    }
    sums.betas(date)
}

/// Computes and stores the betas of `date` (replacing what was there),
/// storing the `market` rows of earlier dates it makes; returns the rows
/// written.
pub async fn write_betas(root: &LakeRoot, date: NaiveDate, sql: &str) -> Result<u64, ProfileError> {
    write_betas_cached(root, date, sql, &mut BetaCache::default()).await
}

/// [`write_betas`] with a [`BetaCache`] kept from one date to the next.
pub async fn write_betas_cached(
    root: &LakeRoot,
    date: NaiveDate,
    sql: &str,
    cache: &mut BetaCache,
) -> Result<u64, ProfileError> {
    let batch = compute_betas_cached(root, date, sql, true, cache).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};

    /// `market` rows of `symbols` over `n` buckets with pseudo-random
    /// returns (a fixed LCG, so the test is deterministic), the last bucket
    /// of each symbol traded alone.
    fn rows(symbols: &[&str], n: usize, seed: u64) -> RecordBatch {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.01
        };
        let (mut ts, mut sym, mut ret, mut mean, mut count) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for b in 0..n {
            let m = next();
            for (k, s) in symbols.iter().enumerate() {
                ts.push(b as i64 * BUCKET_US);
                sym.push(*s);
                ret.push((b % 7 != 3).then(|| (k as f64 + 0.5) * m + next()));
                mean.push(Some(m));
                count.push(if b + 1 == n { 1 } else { symbols.len() as i64 });
            }
        }
        let len = ts.len();
        let nulls = || Float64Array::from(vec![None::<f64>; len]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(StringArray::from(sym)),
            Arc::new(Int64Array::from(vec![1; len])),
            Arc::new(nulls()),
            Arc::new(Float64Array::from(ret)),
            Arc::new(nulls()),
            Arc::new(nulls()),
            Arc::new(nulls()),
            Arc::new(Int64Array::from(count)),
            Arc::new(nulls()),
            Arc::new(Float64Array::from(mean)),
            Arc::new(nulls()),
            Arc::new(nulls()),
        ];
        RecordBatch::try_new(market_schema(), columns).unwrap()
    }

    /// The betas as the SQL before `BetaSums` computed them.
    async fn by_sql(days: &[RecordBatch], date: NaiveDate) -> RecordBatch {
        let ctx = SessionContext::new();
        stockanomaly_udfs::register_all(&ctx);
        let m = datafusion::datasource::MemTable::try_new(market_schema(), vec![days.to_vec()])
            .unwrap();
        ctx.register_table("m", Arc::new(m)).unwrap();
        let sql = format!(
            "SELECT to_timestamp_micros({midnight}) AT TIME ZONE 'UTC' AS ts, symbol, count(*) AS buckets,
                    (exact_sum(ret * ret_mean) - exact_sum(ret) * exact_sum(ret_mean) / count(*))
                      / nullif(exact_sum(ret_mean * ret_mean)
                               - exact_sum(ret_mean) * exact_sum(ret_mean) / count(*), 0.0) AS beta
             FROM m WHERE symbols >= 2 AND ret IS NOT NULL AND ret_mean IS NOT NULL
             GROUP BY symbol HAVING count(*) >= {MIN_BETA_BUCKETS} ORDER BY symbol",
            midnight = midnight_us(date)
        );
        collect_as(&ctx, &sql, &betas_schema(), "betas", date)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn per_date_sums_merge_to_the_betas_of_all_rows_bit_for_bit() {
        let date = NaiveDate::from_ymd_opt(2024, 1, 10).unwrap();
        // "CCC" trades 20 buckets a day: a beta only from the second date.
        let days = [
            rows(&["AAA", "BBB"], 40, 1),
            rows(&["AAA", "BBB", "CCC"], 25, 2),
            rows(&["BBB", "CCC"], 30, 3),
        ];
        let mut merged = BetaSums::default();
        for (i, d) in days.iter().enumerate() {
            let one = BetaSums::of_market(d, date).unwrap();
            // Single dates merge in any order: here, newest first.
            let mut next = one.clone();
            next.merge(&merged);
            merged = next;
            let got = merged.betas(date).unwrap();
            let want = by_sql(&days[..=i], date).await;
            assert_eq!(got, want, "after {} date(s)", i + 1);
        }
        let got = merged.betas(date).unwrap();
        assert_eq!(got.num_rows(), 3, "CCC reaches {MIN_BETA_BUCKETS} buckets");
        let beta = got.column(3).as_primitive::<Float64Type>();
        assert!(
            (0..3).all(|i| beta.value(i).is_finite() && beta.value(i) > 0.0),
            "{beta:?}"
        );
    }

    #[test]
    fn a_market_that_never_moved_gives_a_null_beta() {
        let date = NaiveDate::from_ymd_opt(2024, 1, 10).unwrap();
        let mut flat = rows(&["AAA", "BBB"], 40, 7);
        let zeros: ArrayRef = Arc::new(Float64Array::from(vec![0.0; flat.num_rows()]));
        let mut cols = flat.columns().to_vec();
        cols[10] = zeros;
        flat = RecordBatch::try_new(market_schema(), cols).unwrap();
        let betas = BetaSums::of_market(&flat, date)
            .unwrap()
            .betas(date)
            .unwrap();
        assert_eq!(betas.num_rows(), 2);
        assert_eq!(betas.column(3).null_count(), 2);
    }
}
