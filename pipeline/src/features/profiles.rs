//! Intraday seasonality: per symbol and minute of the exchange's day, what
//! that minute usually looks like over the trailing days, as the lake table
//! `profiles` that feature files join on `(symbol, minute, date)`.
//!
//! Volume, activity and volatility follow the clock (a U over the session,
//! a burst at the open and into the close auction): heavy volume at 15:59
//! is normal, at 12:30 it is not. A feature compared with the same minute's
//! profile tells the two apart, which a trailing 30-minute z-score cannot.
//!
//! The profile of day `D` is computed from the [`PROFILE_DAYS`] latest
//! dates with ticks strictly before `D`, so it is known before `D` starts:
//! backfill writes it before computing `D`'s features, and the streaming
//! executor loads it from the lake when `D`'s first tick arrives (a daily
//! `stockanomaly profiles` run after the close prepares the next day).
//! Both read the same stored numbers, so streaming equals backfill.
//!
//! Per `(symbol, day, minute)`, the `minute_stats` table holds Σ volume of
//! the minute's ticks, their count and |ln(last price / first price)| in
//! the minute, made once per day from that day's ticks (backfill stores
//! them; a profile needing a day not stored yet makes and stores it). The
//! profile row holds the medians over the days that had ticks in that
//! minute (and how many there were): exact and independent of row order,
//! and reading 20 small tables instead of 20 days of ticks.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int32Type, Schema, SchemaRef};
use arrow::error::ArrowError;
use chrono::NaiveDate;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStoreExt;

use crate::lake::{register_table, LakeError, LakeRoot, TableSpec};
use crate::tick::ts_type;

/// Trailing dates a profile summarises.
pub const PROFILE_DAYS: usize = 20;

/// How far back (calendar days) the trailing dates are looked for: holidays
/// and weekends leave 20 trading dates within about four weeks; a symbol
/// silent for two months starts afresh.
const SEARCH_DAYS: i64 = 60;

/// Column names of [`profile_schema`].
pub mod profile_col {
    /// Midnight UTC of the day the profile is for (its `date=` partition).
    pub const TS: &str = "ts";
    /// The symbol.
    pub const SYMBOL: &str = "symbol";
    /// Minute of the day on the exchange's clock (0..1439).
    pub const MINUTE: &str = "minute";
    /// Days that had ticks in that minute.
    pub const DAYS: &str = "days";
    /// Median volume traded in the minute.
    pub const MEDIAN_VOLUME: &str = "median_volume";
    /// Median count of ticks in the minute.
    pub const MEDIAN_TICKS: &str = "median_ticks";
    /// Median |log return| from the minute's first to its last price.
    pub const MEDIAN_ABS_RETURN: &str = "median_abs_return";
}

/// The schema of the `profiles` table (without its `date` column).
pub fn profile_schema() -> SchemaRef {
    use profile_col::*;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(TS, ts_type(), false),
                Field::new(SYMBOL, DataType::Utf8, false),
                Field::new(MINUTE, DataType::Int32, false),
                Field::new(DAYS, DataType::Int64, false),
                Field::new(MEDIAN_VOLUME, DataType::Float64, true),
                Field::new(MEDIAN_TICKS, DataType::Float64, true),
                Field::new(MEDIAN_ABS_RETURN, DataType::Float64, true),
            ]))
        })
        .clone()
}

/// Why a profile could not be computed or stored.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Reading or writing the lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// The query failed.
    #[error("{table} for {date}: {source}")]
    Query {
        /// The table being made (`profiles`, `market`, ...).
        table: &'static str,
        /// The day being made.
        date: NaiveDate,
        /// DataFusion's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// The task making a table ahead of its readers ended before it made
    /// every date (it panicked or was cancelled).
    #[error(
        "{table}{}: the task making it stopped",
        .date.map(|d| format!(" for {d}")).unwrap_or_default()
    )]
    Stopped {
        /// The table being made.
        table: &'static str,
        /// The first day it did not make, where known.
        date: Option<NaiveDate>,
    },
}

/// Column names of [`minute_stats_schema`].
pub mod minute_col {
    /// Midnight UTC of the day summarised (its `date=` partition).
    pub const TS: &str = "ts";
    /// The symbol.
    pub const SYMBOL: &str = "symbol";
    /// Minute of the day on the exchange's clock (0..1439).
    pub const MINUTE: &str = "minute";
    /// Volume traded in the minute.
    pub const VOLUME: &str = "volume";
    /// Ticks in the minute.
    pub const TICKS: &str = "ticks";
    /// |ln(last price / first price)| in the minute.
    pub const ABS_RETURN: &str = "abs_return";
}

/// The schema of the `minute_stats` table (without its `date` column): one
/// row per day, symbol and minute that had ticks, made once per day from
/// that day's ticks, from which every later day's profile is a median.
pub fn minute_stats_schema() -> SchemaRef {
    use minute_col::*;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(TS, ts_type(), false),
                Field::new(SYMBOL, DataType::Utf8, false),
                Field::new(MINUTE, DataType::Int32, false),
                Field::new(VOLUME, DataType::Float64, true),
                Field::new(TICKS, DataType::Float64, false),
                Field::new(ABS_RETURN, DataType::Float64, true),
            ]))
        })
        .clone()
}

pub(super) fn midnight_us(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_micros())
}

/// A single-partition session over the lake's `ticks` and `symbols`: sums
/// in a fixed order, the same bits on every run.
pub(super) async fn lake_session(root: &LakeRoot) -> Result<SessionContext, LakeError> {
    let ctx = store_session(root);
    stockanomaly_udfs::register_all(&ctx);
    for spec in [TableSpec::ticks(), TableSpec::symbols()] {
        register_table(&ctx, root, &spec).await?;
    }
    Ok(ctx)
}

/// A single-partition session that can read `root`'s object store.
pub(super) fn store_session(root: &LakeRoot) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    if root.store_url().scheme() != "file" {
        ctx.register_object_store(root.store_url(), Arc::clone(root.store()));
    }
    ctx
}

/// The stored rows of `spec`'s `date` partition, with the `date` column
/// (empty when none are stored).
pub(super) async fn read_day(
    root: &LakeRoot,
    spec: &TableSpec,
    date: NaiveDate,
) -> Result<RecordBatch, ProfileError> {
    let ctx = store_session(root);
    register_table(&ctx, root, spec).await?;
    let sql = format!(
        "SELECT * FROM {} WHERE date = '{date}' ORDER BY {}",
        spec.name,
        spec.sort_by.join(", ")
    );
    collect_as(
        &ctx,
        &sql,
        &crate::lake::with_partitions(spec),
        "stored rows",
        date,
    )
    .await
}

pub(super) async fn collect_as(
    ctx: &SessionContext,
    sql: &str,
    schema: &SchemaRef,
    table: &'static str,
    date: NaiveDate,
) -> Result<RecordBatch, ProfileError> {
    let q = |source| ProfileError::Query {
        table,
        date,
        source,
    };
    let batches = ctx.sql(sql).await.map_err(q)?.collect().await.map_err(q)?;
    let all = arrow::compute::concat_batches(
        &batches.first().map_or(schema.clone(), |b| b.schema()),
        &batches,
    )
    .map_err(|e| q(e.into()))?;
    crate::features::conform(&all, schema).map_err(|e| q(e.into()))
}

/// The minute statistics of one day, from its ticks (zones from
/// `symbols`; New York for symbols not listed).
pub async fn compute_minute_stats(
    root: &LakeRoot,
    date: NaiveDate,
) -> Result<RecordBatch, ProfileError> {
    let ctx = lake_session(root).await?;
    let sql = format!(
        "WITH z AS (
            SELECT symbol, min(timezone) AS timezone FROM symbols GROUP BY symbol
        )
        SELECT to_timestamp_micros({}) AT TIME ZONE 'UTC' AS ts, k.symbol,
               CAST(floor(session_minute(k.ts, coalesce(z.timezone, 'America/New_York'), '00:00')) AS INT) AS minute,
               sum(k.volume) AS volume,
               CAST(count(*) AS DOUBLE) AS ticks,
               abs(ln(last_value(k.price ORDER BY k.ts, k.seq) / first_value(k.price ORDER BY k.ts, k.seq))) AS abs_return
        FROM ticks k LEFT JOIN z ON z.symbol = k.symbol
        WHERE k.date = '{date}'
        GROUP BY k.symbol, 3
        ORDER BY k.symbol, 3",
        midnight_us(date)
    );
    collect_as(&ctx, &sql, &minute_stats_schema(), "minute_stats", date).await
}

/// Stores `batch` as the only file of `spec`'s `date` partition, with a
/// `_SUCCESS` marker.
pub(super) async fn store_day(
    root: &LakeRoot,
    spec: &TableSpec,
    date: NaiveDate,
    batch: &RecordBatch,
) -> Result<(), ProfileError> {
    crate::lake::replace_named(root, spec, &format!("{}-{date}", spec.name), batch).await?;
    let marker = root.path(&format!("{}/date={date}/_SUCCESS", spec.name));
    root.store()
        .put(&marker, object_store::PutPayload::from_static(b""))
        .await
        .map_err(|source| LakeError::Store {
            path: marker.to_string(),
            source,
        })?;
    Ok(())
}

pub(super) async fn done(root: &LakeRoot, spec: &TableSpec, date: NaiveDate) -> bool {
    let marker = root.path(&format!("{}/date={date}/_SUCCESS", spec.name));
    root.store().head(&marker).await.is_ok()
}

/// Computes and stores the minute statistics of `date` (replacing what was
/// there): backfill does this for each date it computes, so that later
/// profiles read a small table instead of every earlier tick.
pub async fn write_minute_stats(root: &LakeRoot, date: NaiveDate) -> Result<(), ProfileError> {
    let batch = compute_minute_stats(root, date).await?;
    store_day(root, &TableSpec::minute_stats(), date, &batch).await
}

/// The rows of `spec` for `date`: the stored ones, else `make`'s (stored
/// when `store`). Derived daily tables are made once and read after.
pub(super) async fn stored_or_made<F, Fut>(
    root: &LakeRoot,
    spec: &TableSpec,
    table: &'static str,
    date: NaiveDate,
    store: bool,
    make: F,
) -> Result<RecordBatch, ProfileError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<RecordBatch, ProfileError>>,
{
    if done(root, spec, date).await {
        return read_stored(root, spec, table, date).await;
    }
    let batch = make().await?;
    if store {
        store_day(root, spec, date, &batch).await?;
    }
    Ok(batch)
}

/// The [`PROFILE_DAYS`] latest dates with ticks before `date` (within
/// about two months), oldest first: what a day's profiles and betas are
/// made from.
pub(super) async fn trailing_dates(
    root: &LakeRoot,
    date: NaiveDate,
) -> Result<Vec<NaiveDate>, ProfileError> {
    let search = date - chrono::Duration::days(SEARCH_DAYS);
    let mut days: Vec<NaiveDate> = tick_dates(root)
        .await?
        .into_iter()
        .filter(|d| *d < date && *d >= search)
        .rev()
        .take(PROFILE_DAYS)
        .collect();
    days.reverse();
    Ok(days)
}

/// The lake's dates with ticks, from the `ticks/date=...` folder names.
async fn tick_dates(root: &LakeRoot) -> Result<Vec<NaiveDate>, ProfileError> {
    let prefix = root.path(&TableSpec::ticks().name);
    let listed = root
        .store()
        .list_with_delimiter(Some(&prefix))
        .await
        .map_err(|source| LakeError::Store {
            path: prefix.to_string(),
            source,
        })?;
    let mut dates: Vec<NaiveDate> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename())
        .filter_map(|f| f.strip_prefix("date="))
        .filter_map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .collect();
    dates.sort_unstable();
    Ok(dates)
}

/// The minute statistics of single dates, kept across the dates of a
/// backfill: each date's are read once, not once per later date whose
/// profiles they feed.
#[derive(Debug, Default)]
pub struct MinuteStatsCache {
    dates: BTreeMap<NaiveDate, RecordBatch>,
}

/// Computes the profiles of `date` from the minute statistics of the
/// [`PROFILE_DAYS`] latest dates with ticks before it (made from their
/// ticks where not stored yet, and stored when `store`). Empty when no
/// earlier date has ticks.
pub async fn compute_profiles_with(
    root: &LakeRoot,
    date: NaiveDate,
    store: bool,
) -> Result<RecordBatch, ProfileError> {
    compute_profiles_cached(root, date, store, &mut MinuteStatsCache::default()).await
}

/// [`compute_profiles_with`], taking the minute statistics of dates already
/// in `cache` from it and adding those it reads; dates before the trailing
/// ones are dropped from it.
pub async fn compute_profiles_cached(
    root: &LakeRoot,
    date: NaiveDate,
    store: bool,
    cache: &mut MinuteStatsCache,
) -> Result<RecordBatch, ProfileError> {
    let spec = TableSpec::minute_stats();
    let trailing = trailing_dates(root, date).await?;
    if let Some(&first) = trailing.first() {
        cache.dates = cache.dates.split_off(&first);
    }
    let mut stats = Vec::with_capacity(trailing.len());
    for d in trailing {
        let day = match cache.dates.entry(d) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                stored_or_made(root, &spec, "minute_stats", d, store, || {
                    compute_minute_stats(root, d)
                })
                .await?,
            ),
        };
        stats.push(day.clone());
    }
    // Medians by selection over the sorted rows: the same bits as the
    // `GROUP BY symbol, minute` with `median` it replaces (`profile_rows`).
    profile_rows(&stats, midnight_us(date)).map_err(|e| ProfileError::Query {
        table: "profiles",
        date,
        source: e.into(),
    })
}

/// As [`compute_profiles_with`], storing the minute statistics it makes.
pub async fn compute_profiles(
    root: &LakeRoot,
    date: NaiveDate,
) -> Result<RecordBatch, ProfileError> {
    compute_profiles_with(root, date, true).await
}

/// Computes and stores the profiles of `date` (replacing what was there)
/// with its `_SUCCESS` marker; returns the rows written.
pub async fn write_profiles(root: &LakeRoot, date: NaiveDate) -> Result<u64, ProfileError> {
    let batch = write_profiles_cached(root, date, &mut MinuteStatsCache::default()).await?;
    Ok(batch.num_rows() as u64)
}

/// [`write_profiles`] with a [`MinuteStatsCache`] kept from one date to
/// the next; returns the profiles written, with the `date` column a
/// session's table has.
pub async fn write_profiles_cached(
    root: &LakeRoot,
    date: NaiveDate,
    cache: &mut MinuteStatsCache,
) -> Result<RecordBatch, ProfileError> {
    let batch = compute_profiles_cached(root, date, true, cache).await?;
    let spec = TableSpec::profiles();
    store_day(root, &spec, date, &batch).await?;
    with_date_column(&batch, &spec, "profiles", date)
}

/// Whether the minute statistics of `date` were stored (its marker exists).
pub async fn minute_stats_done(root: &LakeRoot, date: NaiveDate) -> bool {
    done(root, &TableSpec::minute_stats(), date).await
}

/// Whether the profiles of `date` were stored (its marker exists).
pub async fn profiles_done(root: &LakeRoot, date: NaiveDate) -> bool {
    done(root, &TableSpec::profiles(), date).await
}

/// The profiles of `date` with the `date` column, as a session registers
/// the table: the stored ones, else made from the lake's ticks now (not
/// stored; the same query and data give the same numbers). The flag says
/// whether they were stored.
pub async fn profiles_for(
    root: &LakeRoot,
    date: NaiveDate,
) -> Result<(RecordBatch, bool), ProfileError> {
    if profiles_done(root, date).await {
        return Ok((load_profiles(root, date).await?, true));
    }
    // The detector reads the lake; it does not write derived tables.
    let made = compute_profiles_with(root, date, false).await?;
    Ok((
        with_date_column(&made, &TableSpec::profiles(), "profiles", date)?,
        false,
    ))
}

/// `batch` (rows of `spec` computed for `date`) with the `date` column a
/// session's table has.
pub(super) fn with_date_column(
    batch: &RecordBatch,
    spec: &TableSpec,
    table: &'static str,
    date: NaiveDate,
) -> Result<RecordBatch, ProfileError> {
    let day: arrow::array::ArrayRef = Arc::new(arrow::array::StringArray::from(vec![
        date.to_string();
        batch.num_rows()
    ]));
    let mut columns = batch.columns().to_vec();
    columns.push(day);
    RecordBatch::try_new(crate::lake::with_partitions(spec), columns).map_err(|e| {
        ProfileError::Query {
            table,
            date,
            source: e.into(),
        }
    })
}

/// The stored rows of `spec` for `date` without the `date` column, as
/// computed.
async fn read_stored(
    root: &LakeRoot,
    spec: &TableSpec,
    table: &'static str,
    date: NaiveDate,
) -> Result<RecordBatch, ProfileError> {
    let stored = read_day(root, spec, date).await?;
    let fields: Vec<usize> = (0..spec.schema.fields().len()).collect();
    stored.project(&fields).map_err(|e| ProfileError::Query {
        table,
        date,
        source: e.into(),
    })
}

/// Reads the stored profiles of `date` (empty when none are stored).
pub async fn load_profiles(root: &LakeRoot, date: NaiveDate) -> Result<RecordBatch, ProfileError> {
    read_day(root, &TableSpec::profiles(), date).await
}

/// The profile rows ([`profile_schema`], by symbol and minute) of the day
/// starting at `day_us` from the `minute_stats` rows of its trailing days:
/// per symbol and minute, the days with a row (`count(*)`) and the medians
/// of volume, ticks and |return| over the non-NULL ones. The same values as
///
/// ```sql
/// SELECT symbol, minute, count(*) AS days, median(volume) AS median_volume,
///        median(ticks) AS median_ticks, median(abs_return) AS median_abs_return
/// FROM minute_stats GROUP BY symbol, minute ORDER BY symbol, minute
/// ```
pub(crate) fn profile_rows(stats: &[RecordBatch], day_us: i64) -> Result<RecordBatch, ArrowError> {
    struct Day<'a> {
        symbol: &'a StringArray,
        minute: &'a Int32Array,
        values: [&'a Float64Array; 3],
    }
    let mut days = Vec::with_capacity(stats.len());
    for b in stats {
        let column = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("minute_stats: no `{name}` column")))
        };
        let f64s = |name: &str| {
            column(name)?
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| {
                    ArrowError::SchemaError(format!("minute_stats: `{name}` is not Float64"))
                })
        };
        days.push(Day {
            symbol: column(minute_col::SYMBOL)?
                .as_string_opt::<i32>()
                .ok_or_else(|| {
                    ArrowError::SchemaError("minute_stats: `symbol` is not Utf8".into())
                })?,
            minute: column(minute_col::MINUTE)?
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| {
                    ArrowError::SchemaError("minute_stats: `minute` is not Int32".into())
                })?,
            values: [
                f64s(minute_col::VOLUME)?,
                f64s(minute_col::TICKS)?,
                f64s(minute_col::ABS_RETURN)?,
            ],
        });
    }
    // Symbols by rank in string order (NULL last, as ORDER BY puts it),
    // so the sort below compares integers, not strings.
    // A day's rows come in runs of one symbol: one lookup per run.
    let mut names: HashMap<Option<&str>, u32> = HashMap::new();
    let ids: Vec<Vec<u32>> = days
        .iter()
        .map(|day| {
            let mut last: Option<(Option<&str>, u32)> = None;
            (0..day.symbol.len())
                .map(|i| {
                    let name = day.symbol.is_valid(i).then(|| day.symbol.value(i));
                    match last {
                        Some((n, id)) if n == name => id,
                        _ => {
                            let next = names.len() as u32;
                            let id = *names.entry(name).or_insert(next);
                            last = Some((name, id));
                            id
                        }
                    }
                })
                .collect()
        })
        .collect();
    let mut by_name: Vec<(Option<&str>, u32)> = names.iter().map(|(n, &id)| (*n, id)).collect();
    by_name.sort_unstable_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => x.cmp(y),
        (x, y) => x.is_none().cmp(&y.is_none()),
    });
    let mut rank = vec![0u32; by_name.len()];
    for (r, &(_, id)) in by_name.iter().enumerate() {
        rank[id as usize] = r as u32;
    }
    // Every row's (symbol rank, minute, day, row), sorted: each group is a
    // run. A NULL minute sorts last, as ORDER BY puts it.
    let mut keys: Vec<Key> = Vec::with_capacity(days.iter().map(|d| d.symbol.len()).sum());
    for (d, day) in days.iter().enumerate() {
        for i in 0..day.symbol.len() {
            let m = day.minute.is_null(i);
            keys.push((
                rank[ids[d][i] as usize],
                (m, if m { 0 } else { day.minute.value(i) }),
                d as u32,
                i as u32,
            ));
        }
    }
    sort_keys(&mut keys, by_name.len());
    let mut symbol = Vec::new();
    let mut minute = Vec::new();
    let mut count = Vec::new();
    let mut medians: [Vec<Option<f64>>; 3] = Default::default();
    let mut scratch = Vec::with_capacity(32);
    let mut a = 0;
    while a < keys.len() {
        let (s, m) = (keys[a].0, keys[a].1);
        let mut b = a;
        while b < keys.len() && keys[b].0 == s && keys[b].1 == m {
            b += 1;
        }
        for (v, out) in medians.iter_mut().enumerate() {
            scratch.clear();
            for &(_, _, d, i) in &keys[a..b] {
                let array = days[d as usize].values[v];
                if array.is_valid(i as usize) {
                    scratch.push(array.value(i as usize));
                }
            }
            out.push(super::medians::median(&mut scratch));
        }
        symbol.push(by_name[s as usize].0);
        minute.push((!m.0).then_some(m.1));
        count.push((b - a) as i64);
        a = b;
    }
    let schema = profile_schema();
    let ts_zone = match schema.field(0).data_type() {
        arrow::datatypes::DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let [volume, ticks, abs_return] = medians;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(
                TimestampMicrosecondArray::from(vec![day_us; count.len()])
                    .with_timezone_opt(ts_zone),
            ),
            Arc::new(StringArray::from(symbol)),
            Arc::new(Int32Array::from(minute)),
            Arc::new(Int64Array::from(count)),
            Arc::new(Float64Array::from(volume)),
            Arc::new(Float64Array::from(ticks)),
            Arc::new(Float64Array::from(abs_return)),
        ],
    )
}

/// A `minute_stats` row's place in [`profile_rows`]' order: symbol rank,
/// (minute is NULL, minute), day, row.
type Key = (u32, (bool, i32), u32, u32);

/// Minutes of a day (0..1439), and a slot for a NULL minute.
const MINUTE_SLOTS: usize = 1441;

/// Sorts `keys` (of `symbols` symbol ranks) as `sort_unstable` would. A
/// day has 1,440 minutes, so (symbol, minute) takes few distinct values:
/// the keys are placed by counting, in two linear passes, instead of
/// compared (the rows were made in (day, row) order, so ties keep it). Keys
/// outside that range, or slots far outnumbering the keys (over 4 per key
/// and 64k), take the sort.
fn sort_keys(keys: &mut Vec<Key>, symbols: usize) {
    let slot = |k: &Key| -> Option<usize> {
        let minute = match k.1 {
            (true, _) => MINUTE_SLOTS - 1,
            (false, m) => usize::try_from(m).ok().filter(|&m| m < MINUTE_SLOTS - 1)?,
        };
        Some(k.0 as usize * MINUTE_SLOTS + minute)
    };
    let slots = symbols.saturating_mul(MINUTE_SLOTS);
    let slot_of: Option<Vec<u32>> = (slots <= 4 * keys.len() + (1 << 16))
        .then(|| keys.iter().map(|k| slot(k).map(|s| s as u32)).collect())
        .flatten();
    let Some(slot_of) = slot_of else {
        keys.sort_unstable();
        return;
    };
    let mut next = vec![0u32; slots + 1];
    for &s in &slot_of {
        next[s as usize + 1] += 1;
    }
    for i in 1..next.len() {
        next[i] += next[i - 1];
    }
    let mut sorted = vec![(0, (false, 0), 0, 0); keys.len()];
    for (k, &s) in keys.iter().zip(&slot_of) {
        let at = &mut next[s as usize];
        sorted[*at as usize] = *k;
        *at += 1;
    }
    *keys = sorted;
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use proptest::prelude::*;

    /// One day's minute statistics from (symbol, minute, volume, ticks,
    /// |return|) rows.
    #[allow(clippy::type_complexity)]
    fn day(rows: &[(u8, i32, Option<f64>, f64, Option<f64>)], day_us: i64) -> RecordBatch {
        let schema = minute_stats_schema();
        let tz = match schema.field(0).data_type() {
            arrow::datatypes::DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(
                    TimestampMicrosecondArray::from(vec![day_us; rows.len()]).with_timezone_opt(tz),
                ),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| format!("S{}", r.0)),
                )),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.4))),
            ],
        )
        .unwrap()
    }

    /// The profile query as `compute_profiles_cached` ran it through
    /// DataFusion before the native pass.
    async fn by_sql(stats: Vec<RecordBatch>, day_us: i64) -> RecordBatch {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let m =
            datafusion::datasource::MemTable::try_new(minute_stats_schema(), vec![stats]).unwrap();
        ctx.register_table("m", Arc::new(m)).unwrap();
        let sql = format!(
            "SELECT to_timestamp_micros({day_us}) AT TIME ZONE 'UTC' AS ts, symbol, minute,
                    count(*) AS days, median(volume) AS median_volume, median(ticks) AS median_ticks,
                    median(abs_return) AS median_abs_return
             FROM m GROUP BY symbol, minute ORDER BY symbol, minute"
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let Some(first) = batches.first() else {
            return RecordBatch::new_empty(profile_schema());
        };
        let all = arrow::compute::concat_batches(&first.schema(), &batches).unwrap();
        crate::features::conform(&all, &profile_schema()).unwrap()
    }

    /// Values with ties, NULLs, NaN, signed zeros and huge magnitudes:
    /// what medians and their means can get wrong.
    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            (0u8..6).prop_map(f64::from),
            Just(f64::NAN),
            Just(-0.0),
            Just(0.0),
            Just(1e308),
            Just(-1e308),
            any::<f64>().prop_filter("finite", |x| x.is_finite()),
        ]
    }

    proptest! {
        #[test]
        fn counted_keys_are_sorted_keys(
            keys in prop::collection::vec(
                (0u32..4, (any::<bool>(), prop_oneof![0i32..1440, -3i32..3, 1435i32..1445]), 0u32..3, 0u32..1000),
                0..200,
            )
        ) {
            let keys: Vec<Key> = keys
                .into_iter()
                .map(|(s, (null, m), d, i)| (s, (null, if null { 0 } else { m }), d, i))
                .collect();
            // In (day, row) order, as profile_rows makes them.
            let mut made = keys.clone();
            made.sort_by_key(|k| (k.2, k.3));
            let mut expected = made.clone();
            expected.sort_unstable();
            sort_keys(&mut made, 4);
            prop_assert_eq!(made, expected);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn native_profiles_are_the_query_bits(
            days in prop::collection::vec(
                prop::collection::vec(
                    // Minutes out of the day's range now and then: the
                    // keys are then sorted by comparison, not counted.
                    (0u8..5, prop_oneof![20 => 0i32..4, 1 => prop_oneof![Just(-1), Just(1439), Just(1440)]], prop::option::of(value()), value(), prop::option::of(value())),
                    0..30,
                ),
                0..21,
            )
        ) {
            let day_us = 1_700_006_400_000_000;
            // One row per (symbol, minute) a day, as the table holds.
            let stats: Vec<RecordBatch> = days
                .iter()
                .enumerate()
                .map(|(d, rows)| {
                    let mut seen = std::collections::HashSet::new();
                    let rows: Vec<_> = rows.iter().copied().filter(|r| seen.insert((r.0, r.1))).collect();
                    day(&rows, day_us - (d as i64 + 1) * 86_400_000_000)
                })
                .collect();
            let native = profile_rows(&stats, day_us).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let sql = rt.block_on(by_sql(stats, day_us));
            prop_assert_eq!(native.num_rows(), sql.num_rows());
            for c in 0..native.num_columns() {
                let (a, b) = (native.column(c), sql.column(c));
                if let (Some(a), Some(b)) = (a.as_primitive_opt::<Float64Type>(), b.as_primitive_opt::<Float64Type>()) {
                    for i in 0..a.len() {
                        prop_assert_eq!(a.is_valid(i), b.is_valid(i), "column {} row {}", c, i);
                        if a.is_valid(i) {
                            prop_assert_eq!(a.value(i).to_bits(), b.value(i).to_bits(), "column {} row {}", c, i);
                        }
                    }
                } else {
                    prop_assert_eq!(a.to_data(), b.to_data(), "column {}", c);
                }
            }
        }
    }
}
