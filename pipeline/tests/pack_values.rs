//! Every feature of the shipped pack against an independent computation on
//! hand-made ticks: a first tick, ties on `ts`, gaps longer than the
//! windows, zero variance, bars and trades, missing quotes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::RecordBatch;
use stockanomaly::features::Catalog;
use stockanomaly::tick::{TickBuilder, TickRecord, Validator};

const T0: i64 = 1_704_205_800_000_000; // 2024-01-02T14:30:00Z = 09:30 New York
const S: i64 = 1_000_000;
const MIN: i64 = 60 * S;

#[derive(Debug, Clone, Copy)]
struct T {
    sym: &'static str,
    ts: i64,
    seq: u32,
    price: f64,
    volume: f64,
    bar: Option<(f64, f64, f64)>,
    quote: Option<(f64, f64, f64, f64)>,
}

fn ticks() -> Vec<T> {
    let q = |b: f64, a: f64, bs: f64, as_: f64| Some((b, a, bs, as_));
    let trade = |ts, seq, price, volume, quote| T {
        sym: "AAA",
        ts,
        seq,
        price,
        volume,
        bar: None,
        quote,
    };
    let bar = |ts, price, volume, o, h, l| T {
        sym: "BBB",
        ts,
        seq: 0,
        price,
        volume,
        bar: Some((o, h, l)),
        quote: None,
    };
    vec![
        trade(T0, 0, 100.0, 10.0, q(99.9, 100.1, 100.0, 300.0)),
        trade(T0, 1, 100.5, 20.0, q(99.9, 100.1, 100.0, 300.0)),
        trade(T0 + 30 * S, 0, 100.2, 5.0, None),
        trade(T0 + 2 * MIN, 0, 100.2, 5.0, q(100.1, 100.3, 0.0, 0.0)),
        trade(
            T0 + 2 * MIN + 5 * S,
            0,
            100.4,
            0.0,
            q(100.3, 100.5, 500.0, 100.0),
        ),
        trade(T0 + 10 * MIN, 0, 101.0, 50.0, q(100.9, 101.1, 200.0, 200.0)),
        trade(
            T0 + 10 * MIN + S,
            0,
            101.0,
            50.0,
            q(100.9, 101.1, 200.0, 200.0),
        ),
        trade(
            T0 + 10 * MIN + S,
            1,
            101.0,
            50.0,
            q(100.9, 101.1, 200.0, 200.0),
        ),
        trade(T0 + 50 * MIN, 0, 99.0, 1.0, q(98.9, 99.1, 10.0, 30.0)),
        trade(
            T0 + 50 * MIN + 4 * S,
            0,
            99.5,
            3.0,
            q(99.4, 99.6, 10.0, 30.0),
        ),
        bar(T0, 20.0, 1000.0, 19.5, 20.5, 19.0),
        bar(T0 + MIN, 20.2, 0.0, 20.0, 20.4, 19.9),
        bar(T0 + 2 * MIN, 20.1, 300.0, 20.2, 20.3, 20.0),
    ]
}

fn batch(ts: &[T]) -> RecordBatch {
    let mut b = TickBuilder::with_validator("test", Validator::with_now(T0 + 86_400_000_000));
    for t in ts {
        let mut r = TickRecord::trade(t.ts, t.sym, t.price, t.volume);
        if let Some((o, h, l)) = t.bar {
            (r.open, r.high, r.low) = (Some(o), Some(h), Some(l));
        }
        if let Some((bid, ask, bs, as_)) = t.quote {
            (r.bid, r.ask, r.bid_size, r.ask_size) = (Some(bid), Some(ask), Some(bs), Some(as_));
        }
        b.push(&r).unwrap();
    }
    b.finish()
}

type Row = BTreeMap<String, Option<f64>>;

/// Intraday profile rows: symbol, days after T0's date (0: its own), minute
/// of the exchange's day, median volume, ticks, |return|.
const PROFILES: &[(&str, i64, i32, f64, f64, f64)] = &[
    ("AAA", 0, 570, 15.0, 2.0, 0.001), // 09:30 New York
    ("AAA", 0, 572, 0.0, 4.0, 0.0),    // zero medians: NULL ratios
    ("AAA", 0, 580, 100.0, 3.0, 0.01),
    // 620 has no profile: NULL.
    ("AAA", -1, 620, 1.0, 1.0, 1.0), // another day's: never joined
    ("BBB", 0, 1201, 500.0, 1.0, 0.002), // 20:01 Kolkata
];

fn profiles() -> RecordBatch {
    use arrow::array::TimestampMicrosecondArray;
    use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, StringArray};
    let day0 = T0 - T0.rem_euclid(86_400 * S);
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                PROFILES.iter().map(|p| day0 + p.1 * 86_400 * S),
            )
            .with_timezone("UTC"),
        ),
        std::sync::Arc::new(StringArray::from_iter_values(PROFILES.iter().map(|p| p.0))),
        std::sync::Arc::new(Int32Array::from_iter_values(PROFILES.iter().map(|p| p.2))),
        std::sync::Arc::new(Int64Array::from_iter_values(PROFILES.iter().map(|_| 5))),
        std::sync::Arc::new(Float64Array::from_iter_values(PROFILES.iter().map(|p| p.3))),
        std::sync::Arc::new(Float64Array::from_iter_values(PROFILES.iter().map(|p| p.4))),
        std::sync::Arc::new(Float64Array::from_iter_values(PROFILES.iter().map(|p| p.5))),
    ];
    RecordBatch::try_new(stockanomaly::features::profiles::profile_schema(), cols).unwrap()
}

/// Market rows: symbol, bucket (minutes after T0), open, ret, rel_volume,
/// move_rank, ret_median, ret_mean, ret_dispersion, rel_volume_median. AAA
/// has none at T0 + 50 min (NULL features).
type MarketRow = (
    &'static str,
    i64,
    f64,
    f64,
    Option<f64>,
    f64,
    f64,
    f64,
    f64,
    Option<f64>,
);

const MARKET: &[MarketRow] = &[
    (
        "AAA",
        0,
        100.0,
        0.002,
        Some(2.0),
        1.0,
        0.001,
        0.0015,
        0.0005,
        Some(1.5),
    ),
    // A zero market median relative volume: NULL ratio.
    (
        "AAA",
        2,
        100.2,
        0.001,
        Some(1.0),
        0.5,
        0.0,
        -0.001,
        0.0002,
        Some(0.0),
    ),
    // No profile for the symbol's own volume: NULL ratio.
    (
        "AAA",
        10,
        101.0,
        0.0,
        None,
        0.0,
        0.003,
        0.002,
        0.001,
        Some(1.0),
    ),
    (
        "BBB",
        0,
        19.5,
        0.02,
        Some(0.5),
        0.8,
        0.001,
        0.0015,
        0.0005,
        Some(1.5),
    ),
    (
        "BBB",
        1,
        20.0,
        0.01,
        Some(1.0),
        0.2,
        -0.002,
        0.0,
        0.0,
        Some(2.0),
    ),
];

/// Betas: symbol, days after T0's date, beta. BBB has none (NULL excess
/// returns); AAA's of another day is never joined.
const BETAS: &[(&str, i64, f64)] = &[("AAA", 0, 1.2), ("AAA", -1, 9.0)];

fn market() -> RecordBatch {
    use arrow::array::TimestampMicrosecondArray;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    let f = |g: &dyn Fn(&MarketRow) -> Option<f64>| -> ArrayRef {
        std::sync::Arc::new(MARKET.iter().map(g).collect::<Float64Array>())
    };
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(
            TimestampMicrosecondArray::from_iter_values(MARKET.iter().map(|m| T0 + m.1 * MIN))
                .with_timezone("UTC"),
        ),
        std::sync::Arc::new(StringArray::from_iter_values(MARKET.iter().map(|m| m.0))),
        std::sync::Arc::new(Int64Array::from_iter_values(MARKET.iter().map(|_| 2))),
        f(&|m| Some(m.2)),
        f(&|m| Some(m.3)),
        f(&|_| Some(1.0)),
        f(&|m| m.4),
        f(&|m| Some(m.5)),
        std::sync::Arc::new(Int64Array::from_iter_values(MARKET.iter().map(|_| 2))),
        f(&|m| Some(m.6)),
        f(&|m| Some(m.7)),
        f(&|m| Some(m.8)),
        f(&|m| m.9),
    ];
    RecordBatch::try_new(stockanomaly::features::market::market_schema(), cols).unwrap()
}

fn betas() -> RecordBatch {
    use arrow::array::TimestampMicrosecondArray;
    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    let day0 = T0 - T0.rem_euclid(86_400 * S);
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                BETAS.iter().map(|b| day0 + b.1 * 86_400 * S),
            )
            .with_timezone("UTC"),
        ),
        std::sync::Arc::new(StringArray::from_iter_values(BETAS.iter().map(|b| b.0))),
        std::sync::Arc::new(Int64Array::from_iter_values(BETAS.iter().map(|_| 40))),
        std::sync::Arc::new(Float64Array::from_iter_values(BETAS.iter().map(|b| b.2))),
    ];
    RecordBatch::try_new(stockanomaly::features::market::betas_schema(), cols).unwrap()
}

async fn computed(ts: &[T]) -> BTreeMap<(String, i64, u32), Row> {
    let catalog = Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries"))
        .await
        .unwrap();
    let names = catalog.feature_names();
    // BBB is listed in Mumbai (Kolkata time, close 15:30); AAA has no row
    // and is taken as New York.
    let ctx = common::session_over(batch(ts));
    let symbols = stockanomaly::symbols::symbols_batch(
        0,
        &[stockanomaly::symbols::SymbolInfo {
            symbol: "BBB",
            exchange: "XNSE",
            timezone: "Asia/Kolkata",
            open: (9, 15),
            close: (15, 30),
        }],
    );
    let symbols = with_date(symbols);
    ctx.deregister_table("symbols").unwrap();
    ctx.register_table(
        "symbols",
        std::sync::Arc::new(
            datafusion::datasource::MemTable::try_new(symbols.schema(), vec![vec![symbols]])
                .unwrap(),
        ),
    )
    .unwrap();
    for (name, table) in [
        ("profiles", with_date(profiles())),
        ("market", with_date(market())),
        ("betas", with_date(betas())),
    ] {
        ctx.deregister_table(name).unwrap();
        ctx.register_table(
            name,
            std::sync::Arc::new(
                datafusion::datasource::MemTable::try_new(table.schema(), vec![vec![table]])
                    .unwrap(),
            ),
        )
        .unwrap();
    }
    common::pack_features(&ctx, &catalog)
        .await
        .into_iter()
        .map(|(k, v)| (k, names.iter().map(|n| n.to_string()).zip(v).collect()))
        .collect()
}

/// `batch` with the lake's `date` partition column, as sessions register it.
fn with_date(batch: RecordBatch) -> RecordBatch {
    use arrow::array::{ArrayRef, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("date", DataType::Utf8, false));
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(std::sync::Arc::new(StringArray::from(vec![
        "1970-01-01";
        batch.num_rows()
    ])));
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns).unwrap()
}

// ---- the independent computation: plain loops over one symbol's ticks ----

fn mean(x: &[f64]) -> Option<f64> {
    (!x.is_empty()).then(|| x.iter().sum::<f64>() / x.len() as f64)
}

fn sd(x: &[f64]) -> Option<f64> {
    if x.len() < 2 {
        return None;
    }
    let m = mean(x)?;
    Some((x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (x.len() - 1) as f64).sqrt())
}

fn nonzero_f(v: f64) -> Option<f64> {
    (v != 0.0).then_some(v)
}

fn nonzero(v: Option<f64>) -> Option<f64> {
    v.filter(|v| *v != 0.0)
}

fn expected(all: &[T]) -> BTreeMap<(String, i64, u32), Row> {
    let mut out = BTreeMap::new();
    for sym in ["AAA", "BBB"] {
        let mut s: Vec<T> = all.iter().copied().filter(|t| t.sym == sym).collect();
        s.sort_by_key(|t| (t.ts, t.seq));
        let ret1: Vec<Option<f64>> = (0..s.len())
            .map(|i| (i > 0).then(|| (s[i].price / s[i - 1].price).ln()))
            .collect();
        let imbalance: Vec<Option<f64>> = s
            .iter()
            .map(|t| {
                t.quote
                    .and_then(|(_, _, b, a)| (b + a > 0.0).then(|| (b - a) / (b + a)))
            })
            .collect();
        for (i, t) in s.iter().enumerate() {
            // RANGE frames: same symbol, ts in [t - w, t], peers with equal ts included.
            let window = |w: i64| -> Vec<usize> {
                (0..s.len())
                    .filter(|&j| s[j].ts >= t.ts - w && s[j].ts <= t.ts)
                    .collect()
            };
            let vals = |idx: &[usize], f: &dyn Fn(usize) -> Option<f64>| -> Vec<f64> {
                idx.iter().filter_map(|&j| f(j)).collect()
            };
            let w5 = window(5 * MIN);
            let w30 = window(30 * MIN);
            let w1 = window(MIN);
            let w10s = window(10 * S);
            let mut r = Row::new();
            r.insert("ret_1".into(), ret1[i]);
            r.insert("ret_5m".into(), Some((t.price / s[w5[0]].price).ln()));
            r.insert("vol_5m".into(), sd(&vals(&w5, &|j| ret1[j])));
            let r5 = vals(&w5, &|j| ret1[j]);
            r.insert(
                "drift_z_5m".into(),
                nonzero(sd(&r5)).map(|d| r5.iter().sum::<f64>() / (d * (r5.len() as f64).sqrt())),
            );
            // EWMA of the previous up-to-200 ticks' ret_1, half-life 20 ticks.
            let prev: Vec<(f64, f64)> = (1..=200usize.min(i))
                .filter_map(|k| ret1[i - k].map(|x| (0.5f64.powf(k as f64 / 20.0), x)))
                .collect();
            let ewm = if prev.len() < 2 || ret1[i].is_none() {
                None
            } else {
                let w: f64 = prev.iter().map(|p| p.0).sum();
                let w2: f64 = prev.iter().map(|p| p.0 * p.0).sum();
                let m = prev.iter().map(|p| p.0 * p.1).sum::<f64>() / w;
                let var = prev.iter().map(|p| p.0 * (p.1 - m).powi(2)).sum::<f64>() / (w - w2 / w);
                (var > 0.0).then(|| (ret1[i].unwrap_or(0.0) - m) / var.sqrt())
            };
            r.insert("ret_ewm_z".into(), ewm);
            let r30 = vals(&w30, &|j| ret1[j]);
            let biggest = r30.iter().map(|x| x.abs()).reduce(f64::max);
            r.insert(
                "jump_30m".into(),
                biggest.zip(nonzero(sd(&r30))).map(|(m, d)| m / d),
            );
            let z = |x: f64, xs: &[f64]| -> Option<f64> {
                nonzero(sd(xs)).map(|d| (x - mean(xs).unwrap_or(0.0)) / d)
            };
            r.insert(
                "volume_z_30m".into(),
                z(t.volume, &vals(&w30, &|j| Some(s[j].volume))),
            );
            r.insert(
                "price_z_30m".into(),
                z(t.price, &vals(&w30, &|j| Some(s[j].price))),
            );
            let pv: f64 = w30.iter().map(|&j| s[j].price * s[j].volume).sum();
            let v: f64 = w30.iter().map(|&j| s[j].volume).sum();
            r.insert(
                "vwap_dev_30m".into(),
                nonzero(Some(v)).map(|v| t.price / (pv / v) - 1.0),
            );
            r.insert(
                "range_ratio".into(),
                t.bar.map(|(_, h, l)| (h - l) / t.price),
            );
            r.insert(
                "spread_bps".into(),
                t.quote.and_then(|(b, a, _, _)| {
                    (b > 0.0 && a > 0.0).then(|| (a - b) / ((a + b) / 2.0) * 1e4)
                }),
            );
            r.insert("quote_imbalance".into(), imbalance[i]);
            r.insert("tick_rate_1m".into(), Some(w1.len() as f64));
            r.insert(
                "burst_ratio".into(),
                Some(w10s.len() as f64 / (w5.len() as f64 / 30.0)),
            );
            // The exchange's clock: BBB trades in Kolkata, AAA in New York.
            let (zone, close) = if sym == "BBB" {
                (chrono_tz::Asia::Kolkata, (15 * 60 + 30) as f64)
            } else {
                (chrono_tz::America::New_York, (16 * 60) as f64)
            };
            let ny = chrono::DateTime::from_timestamp_micros(t.ts)
                .unwrap()
                .with_timezone(&zone);
            let frac = (chrono::Timelike::num_seconds_from_midnight(&ny) as f64
                + f64::from(chrono::Timelike::nanosecond(&ny)) / 1e9)
                / 86_400.0;
            // Delayed confirmation: the price 5 ticks later (NULL near the
            // end of the data).
            let later = s.get(i + 5).map(|u| u.price);
            r.insert("ret_next_5".into(), later.map(|p| (p / t.price).ln()));
            r.insert(
                "retained_5".into(),
                later
                    .zip(i.checked_sub(1).map(|j| s[j].price))
                    .and_then(|(p, prev)| nonzero_f(t.price - prev).map(|d| (p - prev) / d)),
            );
            // Seasonality: the trailing minute against the profile of the
            // tick's own date and minute of the exchange's day.
            let minute = (chrono::Timelike::num_seconds_from_midnight(&ny) / 60) as i32;
            let profile = PROFILES
                .iter()
                .find(|p| p.0 == sym && p.1 == 0 && p.2 == minute);
            let volume_1m: f64 = w1.iter().map(|&j| s[j].volume).sum();
            let ratio = |x: f64, median: Option<f64>| median.and_then(nonzero_f).map(|m| x / m);
            r.insert(
                "volume_vs_profile".into(),
                ratio(volume_1m, profile.map(|p| p.3)),
            );
            r.insert(
                "ticks_vs_profile".into(),
                ratio(w1.len() as f64, profile.map(|p| p.4)),
            );
            r.insert(
                "move_vs_profile".into(),
                ratio((t.price / s[w1[0]].price).ln().abs(), profile.map(|p| p.5)),
            );
            // Market context: the row of the tick's own minute bucket and
            // the beta of its own day.
            let bucket = (t.ts - T0).div_euclid(MIN);
            let m = MARKET.iter().find(|m| m.0 == sym && m.1 == bucket);
            let beta = BETAS.iter().find(|b| b.0 == sym && b.1 == 0).map(|b| b.2);
            r.insert("mkt_ret_1m".into(), m.map(|m| m.6));
            r.insert("mkt_dispersion_1m".into(), m.map(|m| m.8));
            r.insert(
                "excess_ret_1m".into(),
                m.zip(beta).map(|(m, b)| m.3 - b * m.7),
            );
            r.insert(
                "excess_move_1m".into(),
                m.zip(beta).map(|(m, b)| (t.price / m.2).ln() - b * m.7),
            );
            r.insert(
                "rel_volume_vs_mkt".into(),
                m.and_then(|m| m.4.zip(m.9.and_then(nonzero_f)).map(|(v, med)| v / med)),
            );
            r.insert("move_rank_1m".into(), m.map(|m| m.5));
            r.insert(
                "tod_sin".into(),
                Some((2.0 * std::f64::consts::PI * frac).sin()),
            );
            r.insert(
                "tod_cos".into(),
                Some((2.0 * std::f64::consts::PI * frac).cos()),
            );
            r.insert("imbalance_1m".into(), mean(&vals(&w1, &|j| imbalance[j])));
            let v5: f64 = w5.iter().map(|&j| s[j].volume).sum();
            r.insert(
                "volume_share_5m".into(),
                nonzero(Some(v)).map(|v30| v5 / v30),
            );
            let p5 = vals(&w5, &|j| Some(s[j].price));
            let (hi, lo) = p5
                .iter()
                .fold((f64::MIN, f64::MAX), |a, &p| (a.0.max(p), a.1.min(p)));
            r.insert("range_5m".into(), Some((hi - lo) / t.price));
            r.insert("max_move_5m".into(), z(t.price, &p5).map(f64::abs));
            let signed: Vec<Option<f64>> = (0..s.len())
                .map(|j| {
                    (j > 0).then(|| {
                        let d = s[j].price - s[j - 1].price;
                        if d > 0.0 {
                            s[j].volume
                        } else if d < 0.0 {
                            -s[j].volume
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            // SQL's sum of nothing but NULLs is NULL.
            let sv5 = vals(&w5, &|j| signed[j]);
            let sv5 = (!sv5.is_empty()).then(|| sv5.iter().sum::<f64>());
            r.insert(
                "flow_imbalance_5m".into(),
                sv5.zip(nonzero(Some(v5))).map(|(a, v)| a / v),
            );
            let minute = (chrono::Timelike::num_seconds_from_midnight(&ny) as f64
                + f64::from(chrono::Timelike::nanosecond(&ny)) / 1e9)
                / 60.0;
            let to_close = close - minute;
            r.insert("minutes_to_close".into(), Some(to_close));
            r.insert(
                "close_move_5m".into(),
                Some(if to_close <= 15.0 {
                    (t.price / s[w5[0]].price).ln()
                } else {
                    0.0
                }),
            );
            out.insert((sym.to_owned(), t.ts, t.seq), r);
        }
    }
    out
}

#[tokio::test]
async fn every_feature_matches_an_independent_computation() {
    let ts = ticks();
    let got = computed(&ts).await;
    let want = expected(&ts);
    assert_eq!(got.len(), want.len());
    let catalog = Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries"))
        .await
        .unwrap();
    for name in catalog.feature_names() {
        assert!(
            want.values().next().unwrap().contains_key(name),
            "no independent computation for {name}"
        );
    }
    for (key, w) in &want {
        let g = &got[key];
        for (name, wv) in w {
            let gv = g[name];
            match (gv, wv) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    let tol = 1e-9 * b.abs().max(1.0);
                    assert!((a - b).abs() <= tol, "{name} at {key:?}: got {a}, want {b}");
                }
                _ => panic!("{name} at {key:?}: got {gv:?}, want {wv:?}"),
            }
        }
    }
    // Seasonality: the profile of the tick's own minute and day, or NULL.
    let open = &got[&("AAA".to_owned(), T0 + 30 * S, 0)];
    assert_eq!(open["volume_vs_profile"], Some(35.0 / 15.0));
    assert_eq!(open["ticks_vs_profile"], Some(3.0 / 2.0));
    let zero = &got[&("AAA".to_owned(), T0 + 2 * MIN, 0)];
    assert_eq!(zero["volume_vs_profile"], None, "a zero median");
    assert_eq!(zero["ticks_vs_profile"], Some(0.25));
    let unprofiled = &got[&("AAA".to_owned(), T0 + 50 * MIN, 0)];
    assert_eq!(
        unprofiled["ticks_vs_profile"], None,
        "no profile, or another day's"
    );
    assert_eq!(
        got[&("BBB".to_owned(), T0 + MIN, 0)]["volume_vs_profile"],
        Some(1000.0 / 500.0),
        "Kolkata's 20:01; the trailing minute holds both bars"
    );
    // Spot checks of the cases the fixture is built for.
    let first = &got[&("AAA".to_owned(), T0, 0)];
    assert_eq!(first["ret_1"], None, "first tick has no previous price");
    assert_eq!(
        first["tick_rate_1m"],
        Some(2.0),
        "a tick sees its peer with the same ts"
    );
    let after_gap = &got[&("AAA".to_owned(), T0 + 50 * MIN, 0)];
    assert_eq!(
        after_gap["price_z_30m"], None,
        "alone in its window after a 40-minute gap"
    );
    let flat = &got[&("AAA".to_owned(), T0 + 10 * MIN + S, 1)];
    assert_eq!(
        flat["max_move_5m"], None,
        "zero variance in the 5-minute window"
    );
    assert_eq!(
        got[&("BBB".to_owned(), T0 + MIN, 0)]["range_ratio"],
        Some(0.5 / 20.2)
    );
}
