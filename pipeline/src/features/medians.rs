//! Medians over small groups, with DataFusion's `median`'s bits, by
//! selection instead of a hash aggregate.
//!
//! A day's intraday profile is, per symbol and minute of the day, three
//! medians over at most [`PROFILE_DAYS`](super::profiles::PROFILE_DAYS)
//! values. DataFusion's `median` in a `GROUP BY` keeps a growing list per
//! group in a hash table and sorts each at the end; a backfill paid that
//! (tens of thousands of groups a date) for every date. Sorting the rows'
//! keys once and selecting the middle of each run gives the same values
//! in time proportional to the rows.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Float64Type, Int32Type};
use arrow::error::ArrowError;

use super::profiles::{minute_col, profile_schema};

/// DataFusion's `median` of `values` (NULLs already left out): the middle
/// value in the total order of `f64`, or the mean of the two middle ones for
/// an even count; `None` when there are none.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (low, mid, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let mid = *mid;
    if n % 2 == 1 {
        return Some(mid);
    }
    let left = low.iter().copied().max_by(f64::total_cmp)?;
    Some((left + mid) / 2.0)
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
    let mut names: HashMap<Option<&str>, u32> = HashMap::new();
    let ids: Vec<Vec<u32>> = days
        .iter()
        .map(|day| {
            (0..day.symbol.len())
                .map(|i| {
                    let next = names.len() as u32;
                    *names
                        .entry(day.symbol.is_valid(i).then(|| day.symbol.value(i)))
                        .or_insert(next)
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
    type Key = (u32, (bool, i32), u32, u32);
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
    keys.sort_unstable();
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
            out.push(median(&mut scratch));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::profiles::minute_stats_schema;
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
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn native_profiles_are_the_query_bits(
            days in prop::collection::vec(
                prop::collection::vec(
                    (0u8..5, 0i32..4, prop::option::of(value()), value(), prop::option::of(value())),
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
