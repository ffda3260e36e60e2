//! The shipped bucket query ([`MARKET_SQL`](super::market::MARKET_SQL), `queries/market/buckets.sql`)
//! computed in one pass over the ticks instead of through DataFusion.
//!
//! The streaming executor and the `market-context` stage close a bucket
//! every minute of event time (a replay: thousands of times a run), and the
//! query's joins, aggregates and window over a few thousand ticks cost
//! milliseconds each time in DataFusion, most of it per-operator work; this
//! is the same arithmetic on the same values in microseconds. The SQL file
//! stays the definition: a bucket query other than the shipped one runs
//! through DataFusion, and a test holds this to the SQL's bits on random
//! closings (ties, bars, several exchanges and zones, missing profiles).
//!
//! Each step mirrors a clause of the query: `date_trunc('minute', ts)`
//! buckets; per bucket and symbol the first `open` (else `price`) and last
//! `price` by `(ts, seq)`, `exact_sum(volume)` and the count; `ln(close /
//! open)`; the profile's median volume of the bucket's minute on the
//! symbol's clock; per bucket and exchange DataFusion's `median` (the middle
//! value in the total order, or the mean of the two middle ones),
//! `exact_mean`, the median distance from the median and `percent_rank`
//! over `|ret|` (peers share the rank of the first).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Float64Type, Int32Type, TimestampMicrosecondType, UInt32Type};
use arrow::error::ArrowError;
use chrono::NaiveTime;
use stockanomaly_udfs::aggregate::ExactTotal;

use super::market_table::market_schema;
use super::medians::median;
use crate::lake::{with_partitions, TableSpec};
use crate::tick::{col, DAY_US};

/// One minute, in µs.
const MINUTE_US: i64 = 60_000_000;
/// What the query takes for a symbol without a `symbols` row.
const DEFAULT_EXCHANGE: &str = "XNYS";
const DEFAULT_ZONE: &str = "America/New_York";

/// The shipped bucket query, natively, with what it keeps between
/// closings: the indexes of the `symbols` and `profiles` it was last given.
#[derive(Debug, Default)]
pub struct NativeBuckets {
    symbols: Option<(BatchIds, HashMap<String, Zone>)>,
    profiles: Option<(BatchIds, Option<Profiles>)>,
}

/// The batches an index was made of, kept: the same batches again need no
/// new index. Kept alive so that their buffers are not freed meanwhile: an
/// address alone was the identity before, and a new day's profiles, as
/// long as the last day's and allocated where they had been, could pass
/// for them (a streaming day on the last day's `rel_volume` profile; a
/// random test caught it).
type BatchIds = Vec<RecordBatch>;

/// A symbol's exchange and the zone of its clock (`Err`: the name the
/// `symbols` table gives, which is no zone).
type Zone = (String, Result<chrono_tz::Tz, String>);

/// Median volume per symbol, then per (day, minute).
type Profiles = HashMap<String, HashMap<(i64, i32), Option<f64>>>;

/// Whether `batches` are the `kept` ones: the same buffers (compared by
/// address, which a kept batch's buffers keep for themselves) holding the
/// same rows.
fn same_batches(kept: &[RecordBatch], batches: &[RecordBatch]) -> bool {
    kept.len() == batches.len()
        && kept.iter().zip(batches).all(|(k, b)| {
            k.num_rows() == b.num_rows()
                && k.num_columns() == b.num_columns()
                && k.columns()
                    .iter()
                    .zip(b.columns())
                    .all(|(x, y)| x.to_data().ptr_eq(&y.to_data()))
        })
}

/// One bucket of one symbol (the query's `r`).
struct Group<'a> {
    bucket: i64,
    symbol: &'a str,
    exchange: &'a str,
    ticks: i64,
    open: f64,
    ret: f64,
    volume: f64,
    rel_volume: Option<f64>,
}

impl NativeBuckets {
    /// The `market` rows ([`market_schema`], sorted by symbol and bucket)
    /// of `ticks` (tick columns), with `symbols` and `profiles` as the
    /// query sees them (their lake schemas, `date` included); `Ok(None)`
    /// where the native pass would not give the query's rows (profiles
    /// holding a key twice, which the query's join would repeat): run the
    /// query then.
    pub fn rows(
        &mut self,
        ticks: &RecordBatch,
        symbols: &RecordBatch,
        profiles: &[RecordBatch],
    ) -> Result<Option<RecordBatch>, ArrowError> {
        self.index_symbols(symbols)?;
        self.index_profiles(profiles)?;
        let (Some((_, zones)), Some((_, Some(profiles)))) = (&self.symbols, &self.profiles) else {
            return Ok(None);
        };
        let schema = ticks.schema();
        let column = |name: &str| schema.index_of(name).map(|i| ticks.column(i));
        let ts = column(col::TS)?.as_primitive::<TimestampMicrosecondType>();
        let symbol = column(col::SYMBOL)?.as_string::<i32>();
        let seq = column(col::SEQ)?.as_primitive::<UInt32Type>();
        let price = column(col::PRICE)?.as_primitive::<Float64Type>();
        let open = column(col::OPEN)?.as_primitive::<Float64Type>();
        let volume = column(col::VOLUME)?.as_primitive::<Float64Type>();
        // Ticks by (bucket, symbol, ts, seq): symbols numbered for the sort.
        let mut numbers: HashMap<&str, u32> = HashMap::new();
        let mut order: Vec<(i64, u32, i64, u32, u32)> = (0..ticks.num_rows())
            .map(|i| {
                let t = ts.value(i);
                let next = numbers.len() as u32;
                let s = *numbers.entry(symbol.value(i)).or_insert(next);
                (t - t.rem_euclid(MINUTE_US), s, t, seq.value(i), i as u32)
            })
            .collect();
        order.sort_unstable();
        let ny: chrono_tz::Tz = DEFAULT_ZONE
            .parse()
            .map_err(|e| ArrowError::ComputeError(format!("time zone {DEFAULT_ZONE}: {e}")))?;
        let mut groups: Vec<Group<'_>> = Vec::new();
        let mut a = 0;
        while a < order.len() {
            let (bucket, s) = (order[a].0, order[a].1);
            let mut b = a;
            let mut sum = ExactTotal::new();
            while b < order.len() && order[b].0 == bucket && order[b].1 == s {
                sum.add(volume.value(order[b].4 as usize));
                b += 1;
            }
            let (first, last) = (order[a].4 as usize, order[b - 1].4 as usize);
            let name = symbol.value(first);
            let (exchange, zone) = match zones.get(name) {
                Some((e, Ok(z))) => (e.as_str(), z),
                Some((_, Err(z))) => {
                    return Err(ArrowError::ComputeError(format!(
                    "session_minute(ts, zone, open): time zone {z:?} (symbol {name}) is not valid"
                )))
                }
                None => (DEFAULT_EXCHANGE, &ny),
            };
            let first_open = if open.is_valid(first) {
                open.value(first)
            } else {
                price.value(first)
            };
            let minute = stockanomaly_udfs::session_minute(bucket, zone, NaiveTime::MIN)
                .map(|m| m.floor() as i32);
            let day = bucket - bucket.rem_euclid(DAY_US);
            let median = minute.and_then(|m| {
                profiles
                    .get(name)
                    .and_then(|p| p.get(&(day, m)))
                    .copied()
                    .flatten()
            });
            let total = sum.sum().unwrap_or(0.0);
            groups.push(Group {
                bucket,
                symbol: name,
                exchange,
                ticks: (b - a) as i64,
                open: first_open,
                ret: (price.value(last) / first_open).ln(),
                volume: total,
                rel_volume: median.filter(|&m| m != 0.0).map(|m| total / m),
            });
            a = b;
        }
        Ok(Some(cross_section(groups)?))
    }

    fn index_symbols(&mut self, symbols: &RecordBatch) -> Result<(), ArrowError> {
        let given = std::slice::from_ref(symbols);
        if self
            .symbols
            .as_ref()
            .is_none_or(|(kept, _)| !same_batches(kept, given))
        {
            let batch = crate::features::conform(symbols, &with_partitions(&TableSpec::symbols()))?;
            let sym = batch.column_by_name("symbol").map(|c| c.as_string::<i32>());
            let exch = batch
                .column_by_name("exchange")
                .map(|c| c.as_string::<i32>());
            let zone = batch
                .column_by_name("timezone")
                .map(|c| c.as_string::<i32>());
            let (Some(sym), Some(exch), Some(zone)) = (sym, exch, zone) else {
                return Err(ArrowError::SchemaError("symbols: missing columns".into()));
            };
            // The query's `min(exchange)`, `min(timezone)` per symbol.
            let mut min: HashMap<&str, (Option<&str>, Option<&str>)> = HashMap::new();
            for i in 0..batch.num_rows() {
                if sym.is_null(i) {
                    continue;
                }
                let e = min.entry(sym.value(i)).or_insert((None, None));
                if exch.is_valid(i) && e.0.is_none_or(|m| exch.value(i) < m) {
                    e.0 = Some(exch.value(i));
                }
                if zone.is_valid(i) && e.1.is_none_or(|m| zone.value(i) < m) {
                    e.1 = Some(zone.value(i));
                }
            }
            let mut index = HashMap::with_capacity(min.len());
            for (s, (e, z)) in min {
                let z = z.unwrap_or(DEFAULT_ZONE);
                let tz = z.parse::<chrono_tz::Tz>().map_err(|_| z.to_owned());
                index.insert(s.to_owned(), (e.unwrap_or(DEFAULT_EXCHANGE).to_owned(), tz));
            }
            self.symbols = Some((given.to_vec(), index));
        }
        Ok(())
    }

    fn index_profiles(&mut self, profiles: &[RecordBatch]) -> Result<(), ArrowError> {
        if self
            .profiles
            .as_ref()
            .is_none_or(|(kept, _)| !same_batches(kept, profiles))
        {
            let schema = with_partitions(&TableSpec::profiles());
            let mut index: Profiles = HashMap::new();
            let mut repeated = false;
            for b in profiles {
                let b = crate::features::conform(b, &schema)?;
                let ts = b
                    .column_by_name("ts")
                    .map(|c| c.as_primitive::<TimestampMicrosecondType>());
                let sym = b.column_by_name("symbol").map(|c| c.as_string::<i32>());
                let minute = b
                    .column_by_name("minute")
                    .map(|c| c.as_primitive::<Int32Type>());
                let median = b
                    .column_by_name("median_volume")
                    .map(|c| c.as_primitive::<Float64Type>());
                let (Some(ts), Some(sym), Some(minute), Some(median)) = (ts, sym, minute, median)
                else {
                    return Err(ArrowError::SchemaError("profiles: missing columns".into()));
                };
                for i in 0..b.num_rows() {
                    if ts.is_null(i) || sym.is_null(i) || minute.is_null(i) {
                        continue; // matches nothing
                    }
                    let value = median.is_valid(i).then(|| median.value(i));
                    let prior = index
                        .entry(sym.value(i).to_owned())
                        .or_default()
                        .insert((ts.value(i), minute.value(i)), value);
                    repeated |= prior.is_some();
                }
            }
            self.profiles = Some((profiles.to_vec(), (!repeated).then_some(index)));
        }
        Ok(())
    }
}

/// The rows: each group with its bucket's cross-section over its exchange.
fn cross_section(mut groups: Vec<Group<'_>>) -> Result<RecordBatch, ArrowError> {
    let n = groups.len();
    groups.sort_unstable_by(|a, b| (a.bucket, a.exchange).cmp(&(b.bucket, b.exchange)));
    let mut move_rank = vec![0.0; n];
    let mut stats = vec![(0i64, None, None, None, None); n];
    let mut rets = Vec::new();
    let mut rels = Vec::new();
    let mut by_move: Vec<(f64, usize)> = Vec::new();
    let mut a = 0;
    while a < n {
        let mut b = a;
        while b < n
            && groups[b].bucket == groups[a].bucket
            && groups[b].exchange == groups[a].exchange
        {
            b += 1;
        }
        let members = &groups[a..b];
        rets.clear();
        rets.extend(members.iter().map(|g| g.ret));
        let mut total = ExactTotal::new();
        for &r in &rets {
            total.add(r);
        }
        let ret_median = median(&mut rets);
        rels.clear();
        rels.extend(members.iter().filter_map(|g| g.rel_volume));
        let rel_median = median(&mut rels);
        rets.clear();
        rets.extend(
            members
                .iter()
                .filter_map(|g| ret_median.map(|m| (g.ret - m).abs())),
        );
        let dispersion = median(&mut rets);
        // percent_rank() OVER (ORDER BY abs(ret)): rows before the peers
        // over max(n - 1, 1).
        by_move.clear();
        by_move.extend(
            members
                .iter()
                .enumerate()
                .map(|(i, g)| (g.ret.abs(), a + i)),
        );
        by_move.sort_by(|x, y| x.0.total_cmp(&y.0));
        let denominator = ((b - a) as f64 - 1.0).max(1.0);
        let mut k = 0;
        while k < by_move.len() {
            let mut e = k;
            while e < by_move.len() && by_move[e].0.total_cmp(&by_move[k].0).is_eq() {
                e += 1;
            }
            for &(_, i) in &by_move[k..e] {
                move_rank[i] = k as f64 / denominator;
            }
            k = e;
        }
        for s in &mut stats[a..b] {
            *s = (
                (b - a) as i64,
                ret_median,
                total.mean(),
                dispersion,
                rel_median,
            );
        }
        a = b;
    }
    // ORDER BY symbol, ts.
    let mut out: Vec<usize> = (0..n).collect();
    out.sort_by(|&x, &y| {
        (groups[x].symbol, groups[x].bucket).cmp(&(groups[y].symbol, groups[y].bucket))
    });
    let f64s = |f: &dyn Fn(usize) -> Option<f64>| -> ArrayRef {
        let mut b = Float64Builder::with_capacity(n);
        for &i in &out {
            b.append_option(f(i));
        }
        Arc::new(b.finish())
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(out.iter().map(|&i| groups[i].bucket))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(
            out.iter().map(|&i| groups[i].symbol),
        )),
        Arc::new(Int64Array::from_iter_values(
            out.iter().map(|&i| groups[i].ticks),
        )),
        f64s(&|i| Some(groups[i].open)),
        f64s(&|i| Some(groups[i].ret)),
        f64s(&|i| Some(groups[i].volume)),
        f64s(&|i| groups[i].rel_volume),
        f64s(&|i| Some(move_rank[i])),
        Arc::new(Int64Array::from_iter_values(
            out.iter().map(|&i| stats[i].0),
        )),
        f64s(&|i| stats[i].1),
        f64s(&|i| stats[i].2),
        f64s(&|i| stats[i].3),
        f64s(&|i| stats[i].4),
    ];
    RecordBatch::try_new(market_schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::market::{market_rows, MARKET_SQL};
    use crate::tick::{TickBuilder, TickRecord};
    use arrow::array::{Float64Array, Int32Array, Int64Array as I64, StringArray as S};
    use datafusion::datasource::MemTable;
    use rand::{Rng, SeedableRng};

    const T0: i64 = 1_704_205_800_000_000;

    /// The `symbols` rows: two venues and zones (one with a half-hour
    /// offset), a symbol listed twice (the query takes the least of each
    /// column) and symbols not listed at all.
    fn symbols() -> RecordBatch {
        let rows = [
            ("S0", "XLON", "Europe/London"),
            ("S1", "XNSE", "Asia/Kolkata"),
            ("S1", "XBOM", "Asia/Kolkata"),
            ("S2", "XNYS", "America/New_York"),
            ("S3", "XNSE", "Asia/Kolkata"),
        ];
        let n = rows.len();
        let batch = RecordBatch::try_new(
            crate::symbols::symbol_schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC")),
                Arc::new(S::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(S::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(S::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(S::from(vec!["09:00"; n])),
                Arc::new(S::from(vec!["15:30"; n])),
            ],
        )
        .unwrap();
        crate::lake::with_date(&batch).unwrap()
    }

    fn zone_of(sym: &str) -> chrono_tz::Tz {
        match sym {
            "S0" => chrono_tz::Europe::London,
            "S1" | "S3" => chrono_tz::Asia::Kolkata,
            _ => chrono_tz::America::New_York,
        }
    }

    /// The SQL over the same tables.
    async fn sql(
        ticks: &RecordBatch,
        symbols: &RecordBatch,
        profiles: &RecordBatch,
    ) -> RecordBatch {
        let ctx = crate::lake::schema_session();
        let with_date = crate::lake::with_date(ticks).unwrap();
        for (name, batch) in [
            ("ticks", with_date),
            ("symbols", symbols.clone()),
            ("profiles", profiles.clone()),
        ] {
            ctx.deregister_table(name).unwrap();
            let t = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
            ctx.register_table(name, Arc::new(t)).unwrap();
        }
        market_rows(&ctx, MARKET_SQL, chrono::NaiveDate::default())
            .await
            .unwrap()
    }

    /// The day of `T0` and its session minute for `S2` (the profiles' key).
    fn s2_day_and_minute() -> (i64, i32) {
        let day = T0 - T0.rem_euclid(DAY_US);
        let m = stockanomaly_udfs::session_minute(
            T0 - T0.rem_euclid(MINUTE_US),
            &zone_of("S2"),
            NaiveTime::MIN,
        )
        .unwrap()
        .floor() as i32;
        (day, m)
    }

    #[tokio::test]
    async fn native_rows_are_the_query_bits_on_random_closings() {
        let symbols = symbols();
        let mut native = NativeBuckets::default();
        let names = ["S0", "S1", "S2", "S3", "S4", "S5"];
        for seed in 0..12u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut b = TickBuilder::new("test");
            let start = T0 + seed as i64 * 11 * MINUTE_US;
            let mut rows = Vec::new();
            for _ in 0..rng.random_range(1..400) {
                let sym = names[rng.random_range(0..names.len())];
                // Ties on ts, and prices from a small set: equal returns.
                let t = start + rng.random_range(0..4 * 60) * 1_000_000;
                let p = [100.0, 100.5, 101.0, 99.25][rng.random_range(0..4)];
                rows.push((
                    t,
                    sym,
                    p,
                    rng.random_range(0..50) as f64,
                    rng.random_bool(0.2),
                ));
            }
            rows.sort_by_key(|r| r.0);
            for (t, sym, p, v, bar) in rows {
                let mut r = TickRecord::trade(t, sym, p, v);
                if bar {
                    (r.open, r.high, r.low) = (Some(p - 0.25), Some(p + 1.0), Some(p - 1.0));
                }
                b.push(&r).unwrap();
            }
            let ticks = b.finish();
            // Profiles for most (symbol, minute) of the closing's day: some
            // zero, some NULL, some missing.
            let day = start - start.rem_euclid(DAY_US);
            let (mut ts, mut sym, mut minute, mut median) = (vec![], vec![], vec![], vec![]);
            for s in names {
                for k in 0..5 {
                    let bucket = start - start.rem_euclid(MINUTE_US) + k * MINUTE_US;
                    let m = stockanomaly_udfs::session_minute(bucket, &zone_of(s), NaiveTime::MIN)
                        .unwrap()
                        .floor() as i32;
                    match rng.random_range(0..6) {
                        0 => continue,
                        1 => median.push(Some(0.0)),
                        2 => median.push(None),
                        _ => median.push(Some(rng.random_range(1..200) as f64)),
                    }
                    ts.push(day);
                    sym.push(s);
                    minute.push(m);
                }
            }
            let n = ts.len();
            let profiles = RecordBatch::try_new(
                crate::features::profiles::profile_schema(),
                vec![
                    Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
                    Arc::new(S::from(sym)),
                    Arc::new(Int32Array::from(minute)),
                    Arc::new(I64::from(vec![20; n])),
                    Arc::new(Float64Array::from(median)),
                    Arc::new(Float64Array::from(vec![Some(1.0); n])),
                    Arc::new(Float64Array::from(vec![Some(0.001); n])),
                ],
            )
            .unwrap();
            let profiles = crate::lake::with_date(&profiles).unwrap();
            let want = sql(&ticks, &symbols, &profiles).await;
            let got = native
                .rows(&ticks, &symbols, std::slice::from_ref(&profiles))
                .unwrap()
                .unwrap();
            assert!(want.num_rows() > 0);
            assert_eq!(got, want, "seed {seed}");
        }
        // Profiles holding a key twice: the query would repeat rows; the
        // native pass declines.
        let mut b = TickBuilder::new("test");
        b.push(&TickRecord::trade(T0, "S2", 10.0, 1.0)).unwrap();
        let ticks = b.finish();
        let (day, m) = s2_day_and_minute();
        let twice = RecordBatch::try_new(
            crate::features::profiles::profile_schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(vec![day; 2]).with_timezone("UTC")),
                Arc::new(S::from(vec!["S2"; 2])),
                Arc::new(Int32Array::from(vec![m; 2])),
                Arc::new(I64::from(vec![1; 2])),
                Arc::new(Float64Array::from(vec![1.0, 2.0])),
                Arc::new(Float64Array::from(vec![1.0; 2])),
                Arc::new(Float64Array::from(vec![1.0; 2])),
            ],
        )
        .unwrap();
        let twice = crate::lake::with_date(&twice).unwrap();
        assert!(native.rows(&ticks, &symbols, &[twice]).unwrap().is_none());
    }

    #[tokio::test]
    async fn new_profiles_are_indexed_even_where_they_share_buffers_with_old_ones() {
        // Two days' profiles of the same length sharing their first column
        // (what a new batch allocated where a freed one was looked like to
        // an identity made of row counts and one buffer's address).
        let symbols = symbols();
        let mut b = TickBuilder::new("test");
        for k in 0..4 {
            let r = TickRecord::trade(T0 + k * 10_000_000, "S2", 100.0 + k as f64, 10.0);
            b.push(&r).unwrap();
        }
        let ticks = b.finish();
        let (day, m) = s2_day_and_minute();
        let ts: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(vec![day]).with_timezone("UTC"));
        let profiles_with = |median: f64| {
            let b = RecordBatch::try_new(
                crate::features::profiles::profile_schema(),
                vec![
                    Arc::clone(&ts),
                    Arc::new(S::from(vec!["S2"])),
                    Arc::new(Int32Array::from(vec![m])),
                    Arc::new(I64::from(vec![20])),
                    Arc::new(Float64Array::from(vec![median])),
                    Arc::new(Float64Array::from(vec![1.0])),
                    Arc::new(Float64Array::from(vec![1.0])),
                ],
            )
            .unwrap();
            crate::lake::with_date(&b).unwrap()
        };
        let mut native = NativeBuckets::default();
        let mut seen = Vec::new();
        for median in [5.0, 50.0] {
            let profiles = profiles_with(median);
            let got = native
                .rows(&ticks, &symbols, std::slice::from_ref(&profiles))
                .unwrap()
                .unwrap();
            assert_eq!(
                got,
                sql(&ticks, &symbols, &profiles).await,
                "median {median}"
            );
            seen.push(got);
        }
        assert_ne!(seen[0], seen[1], "the median moves rel_volume");
    }
}
