//! The window UDFs through SQL: hand-computed cases, plan errors, the parity
//! property (suffix equals full history, bit for bit) and accuracy.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
    TimestampSecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::function::PartitionEvaluatorArgs;
use datafusion::logical_expr::WindowUDFImpl;
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
struct Row {
    symbol: String,
    seq: i64,
    /// Seconds.
    ts: Option<i64>,
    x: Option<f64>,
    v: Option<f64>,
}

fn row(symbol: &str, seq: i64, ts: Option<i64>, x: Option<f64>, v: Option<f64>) -> Row {
    Row {
        symbol: symbol.to_string(),
        seq,
        ts,
        x,
        v,
    }
}

fn context(rows: &[Row]) -> SessionContext {
    let schema = Arc::new(Schema::new(vec![
        Field::new("symbol", DataType::Utf8, false),
        Field::new("seq", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("x", DataType::Float64, true),
        Field::new("v", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.symbol.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.seq))),
        Arc::new(
            TimestampMicrosecondArray::from_iter(rows.iter().map(|r| r.ts.map(|s| s * 1_000_000)))
                .with_timezone("UTC"),
        ),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.x))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.v))),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
    let ctx = SessionContext::new();
    crate::register_all(&ctx);
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx
}

/// Each result column as `to_bits` of its values (Int64 as is), NULL as None.
fn bits(array: &ArrayRef) -> Vec<Option<u64>> {
    match array.data_type() {
        DataType::Float64 => array
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.map(f64::to_bits))
            .collect(),
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|v| v as u64))
            .collect(),
        other => panic!("unexpected result type {other}"),
    }
}

/// Runs `sql` and returns its columns, all batches concatenated.
async fn run(ctx: &SessionContext, sql: &str) -> Vec<ArrayRef> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let schema = batches[0].schema();
    (0..schema.fields().len())
        .map(|c| {
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
            arrow::compute::concat(&parts).unwrap()
        })
        .collect()
}

async fn one_column(ctx: &SessionContext, call: &str) -> Vec<Option<f64>> {
    let sql = format!(
        "SELECT CAST({call} OVER (PARTITION BY symbol ORDER BY ts, seq) AS DOUBLE) \
         FROM t ORDER BY seq"
    );
    let cols = run(ctx, &sql).await;
    cols[0].as_primitive::<Float64Type>().iter().collect()
}

fn hand_rows() -> Vec<Row> {
    vec![
        row("a", 0, Some(0), Some(1.0), Some(1.0)),
        row("a", 1, Some(10), Some(2.0), Some(1.0)),
        row("a", 2, Some(10), Some(4.0), Some(3.0)), // peer of seq 1
        row("a", 3, Some(70), None, Some(1.0)),      // NULL x
        row("a", 4, Some(200), Some(5.0), Some(2.0)), // after a gap: alone
        row("a", 5, Some(230), Some(f64::NAN), Some(1.0)),
        row("a", 6, Some(240), Some(5.0), Some(2.0)),
        row("a", 7, Some(400), Some(7.0), Some(0.0)),
        row("a", 8, Some(401), Some(7.0), Some(0.0)), // zero variance
        row("b", 9, Some(5), Some(100.0), Some(1.0)),
        row("b", 10, None, Some(3.0), Some(1.0)), // NULL ts: in no window
    ]
}

const NAN: f64 = f64::NAN;

/// Compares with NaN = NaN, NULL = NULL, and 1e-14 relative slack for the
/// hand-computed irrationals.
fn assert_close(what: &str, got: &[Option<f64>], want: &[Option<f64>]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = match (g, w) {
            (None, None) => true,
            (Some(g), Some(w)) if w.is_nan() => g.is_nan(),
            (Some(g), Some(w)) => (g - w).abs() <= 1e-14 * w.abs().max(1.0),
            _ => false,
        };
        assert!(
            ok,
            "{what}: row {i}: got {g:?}, want {w:?}\n got {got:?}\nwant {want:?}"
        );
    }
}

#[tokio::test]
async fn hand_computed_cases() {
    let ctx = context(&hand_rows());
    let w = "INTERVAL '1 minute'";
    let s73 = (7.0f64 / 3.0).sqrt();
    let n = None;
    let cases: Vec<(String, Vec<Option<f64>>)> = vec![
        (
            format!("rolling_count(x, ts, {w})"),
            [1., 3., 3., 2., 1., 2., 3., 1., 2., 1.]
                .map(Some)
                .into_iter()
                .chain([n])
                .collect(),
        ),
        (
            format!("rolling_sum(x, ts, {w})"),
            vec![
                Some(1.),
                Some(7.),
                Some(7.),
                Some(6.),
                Some(5.),
                Some(NAN),
                Some(NAN),
                Some(7.),
                Some(14.),
                Some(100.),
                n,
            ],
        ),
        (
            format!("rolling_mean(x, ts, {w})"),
            vec![
                Some(1.),
                Some(7. / 3.),
                Some(7. / 3.),
                Some(3.),
                Some(5.),
                Some(NAN),
                Some(NAN),
                Some(7.),
                Some(7.),
                Some(100.),
                n,
            ],
        ),
        (
            format!("rolling_var(x, ts, {w})"),
            vec![
                n,
                Some(7. / 3.),
                Some(7. / 3.),
                Some(2.),
                n,
                Some(NAN),
                Some(NAN),
                n,
                Some(0.),
                n,
                n,
            ],
        ),
        (
            format!("rolling_std(x, ts, {w})"),
            vec![
                n,
                Some(s73),
                Some(s73),
                Some(2f64.sqrt()),
                n,
                Some(NAN),
                Some(NAN),
                n,
                Some(0.),
                n,
                n,
            ],
        ),
        (
            format!("rolling_zscore(x, ts, {w})"),
            vec![
                n,
                Some((2. - 7. / 3.) / s73),
                Some((4. - 7. / 3.) / s73),
                n,
                n,
                Some(NAN),
                Some(NAN),
                n,
                n,
                n,
                n,
            ],
        ),
        (
            format!("rolling_min(x, ts, {w})"),
            vec![
                Some(1.),
                Some(1.),
                Some(1.),
                Some(2.),
                Some(5.),
                Some(NAN),
                Some(NAN),
                Some(7.),
                Some(7.),
                Some(100.),
                n,
            ],
        ),
        (
            format!("rolling_max(x, ts, {w})"),
            vec![
                Some(1.),
                Some(4.),
                Some(4.),
                Some(4.),
                Some(5.),
                Some(NAN),
                Some(NAN),
                Some(7.),
                Some(7.),
                Some(100.),
                n,
            ],
        ),
        (
            format!("rolling_first(x, ts, {w})"),
            vec![
                Some(1.),
                Some(1.),
                Some(1.),
                Some(2.),
                Some(5.),
                Some(5.),
                Some(5.),
                Some(7.),
                Some(7.),
                Some(100.),
                n,
            ],
        ),
        (
            format!("rolling_vwap(x, v, ts, {w})"),
            vec![
                Some(1.),
                Some(3.),
                Some(3.),
                Some(3.5),
                Some(5.),
                Some(NAN),
                Some(NAN),
                n,
                n,
                Some(100.),
                n,
            ],
        ),
        // Width zero: peers only.
        (
            "rolling_sum(x, ts, INTERVAL '0 seconds')".to_string(),
            vec![
                Some(1.),
                Some(6.),
                Some(6.),
                n,
                Some(5.),
                Some(NAN),
                Some(5.),
                Some(7.),
                Some(7.),
                Some(100.),
                n,
            ],
        ),
    ];
    for (call, want) in cases {
        let got = one_column(&ctx, &call).await;
        assert_close(&call, &got, &want);
    }
}

#[tokio::test]
async fn ewm_zscore_hand_computed() {
    let rows: Vec<Row> = [1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0]
        .iter()
        .enumerate()
        .map(|(i, &x)| row("a", i as i64, Some(i as i64), Some(x), None))
        .chain([row("a", 7, Some(7), None, None)])
        .collect();
    let ctx = context(&rows);
    let got = one_column(&ctx, "ewm_zscore(x, 1, 2)").await;
    // Previous (2, w=1/2) and (1, w=1/4): mean 5/3, variance 1/2.
    let z = (4.0 / 3.0) / 0.5f64.sqrt();
    // Row 4: previous (4, 1/2), (3, 1/4): mean 11/3, var 1/2, z = (1/3)/sqrt(1/2).
    let z4 = (1.0 / 3.0) / 0.5f64.sqrt();
    let want = vec![None, None, Some(z), Some(z), Some(z4), None, None, None];
    assert_close("ewm_zscore", &got, &want);
}

#[tokio::test]
async fn user_mistakes_are_plan_errors() {
    let ctx = context(&hand_rows());
    let cases = [
        ("rolling_std(x, ts, INTERVAL '1 day')", "24 hours"),
        ("rolling_std(x, ts, INTERVAL '1 month')", "hours or minutes"),
        ("rolling_std(x, ts, 300000)", "INTERVAL"),
        ("rolling_std(x, seq, INTERVAL '5 minutes')", "TIMESTAMP"),
        ("rolling_std(x, ts)", "takes 3 arguments"),
        (
            "rolling_vwap(x, ts, INTERVAL '5 minutes')",
            "takes 4 arguments",
        ),
        ("ewm_zscore(x, 0, 10)", "halflife_ticks"),
        ("ewm_zscore(x, 2, seq)", "literal"),
    ];
    for (call, needle) in cases {
        let sql = format!("SELECT {call} OVER (PARTITION BY symbol ORDER BY ts) FROM t");
        let err = match ctx.sql(&sql).await {
            Ok(df) => df.collect().await.map(|_| ()).unwrap_err(),
            Err(e) => e,
        };
        assert!(err.to_string().contains(needle), "{call}: {err}");
    }
    let sql = "SELECT rolling_std(x, ts, INTERVAL '5 minutes') \
               OVER (PARTITION BY symbol ORDER BY ts DESC) FROM t";
    let err = ctx.sql(sql).await.unwrap().collect().await.unwrap_err();
    assert!(err.to_string().contains("out of `ts` order"), "{err}");
}

/// Direct evaluation, without SQL: `cols` are the evaluated columns,
/// `literals` the remaining arguments.
fn eval_direct(udf: &dyn WindowUDFImpl, cols: &[ArrayRef], literals: &[ScalarValue]) -> ArrayRef {
    let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    let mut fields = Vec::new();
    for (i, c) in cols.iter().enumerate() {
        exprs.push(Arc::new(Column::new(&format!("c{i}"), i)));
        fields.push(Arc::new(Field::new(
            format!("c{i}"),
            c.data_type().clone(),
            true,
        )));
    }
    for (i, l) in literals.iter().enumerate() {
        exprs.push(Arc::new(Literal::new(l.clone())));
        fields.push(Arc::new(Field::new(format!("l{i}"), l.data_type(), true)));
    }
    let mut evaluator = udf
        .partition_evaluator(PartitionEvaluatorArgs::new(&exprs, &fields, false, false))
        .unwrap();
    evaluator.evaluate_all(cols, cols[0].len()).unwrap()
}

fn minutes(m: i64) -> ScalarValue {
    ScalarValue::IntervalMonthDayNano(Some(arrow::datatypes::IntervalMonthDayNano::new(
        0,
        0,
        m * 60_000_000_000,
    )))
}

#[test]
fn second_timestamps_and_day_time_widths() {
    let ts: ArrayRef = Arc::new(TimestampSecondArray::from(vec![0, 30, 59, 60, 61, 200]));
    let x: ArrayRef = Arc::new(Float64Array::from(vec![1.0; 6]));
    let width =
        ScalarValue::IntervalDayTime(Some(arrow::datatypes::IntervalDayTime::new(0, 60_500)));
    let out = eval_direct(&RollingCountUdf::new(), &[x, ts], &[width]);
    let got: Vec<i64> = out.as_primitive::<Int64Type>().values().to_vec();
    // 60.5 s on a 1 s clock: rows at ts >= t − 60.
    assert_eq!(got, vec![1, 2, 3, 4, 4, 1]);
}

/// A random series of one symbol: (ts step in seconds, x, volume).
fn series() -> impl Strategy<Value = Vec<(i64, Option<f64>, Option<f64>)>> {
    let step = prop_oneof![
        3 => Just(0i64),
        4 => Just(1),
        2 => Just(2),
        2 => Just(30),
        2 => Just(61),
        1 => Just(600),
        3 => 0i64..120,
    ];
    let value = prop_oneof![
        8 => (-1.0f64..1.0).prop_map(|d| Some(1000.0 + d * 1e-6)),
        3 => (-100.0f64..100.0).prop_map(Some),
        2 => (-3i32..3).prop_map(|k| Some(1e16 * k as f64 + 1.0)),
        1 => Just(Some(1e-130)),
        1 => Just(None),
        1 => Just(Some(f64::NAN)),
    ];
    let volume = prop_oneof![
        6 => (0.0f64..1000.0).prop_map(|v| Some(v.round())),
        1 => Just(Some(0.0)),
        1 => Just(None),
    ];
    prop::collection::vec((step, value, volume), 1..60)
}

const PARITY_CALLS: [&str; 10] = [
    "rolling_count(x, ts, W)",
    "rolling_sum(x, ts, W)",
    "rolling_mean(x, ts, W)",
    "rolling_var(x, ts, W)",
    "rolling_std(x, ts, W)",
    "rolling_zscore(x, ts, W)",
    "rolling_min(x, ts, W)",
    "rolling_max(x, ts, W)",
    "rolling_first(x, ts, W)",
    "rolling_vwap(x, v, ts, W)",
];
const EWM_MAX: usize = 5;

/// Every UDF over `rows`, keyed by `seq`: one vector of bits per call, the
/// last one `ewm_zscore(x, 2, EWM_MAX)`.
async fn all_results(rows: &[Row], width: &str) -> HashMap<i64, Vec<Option<u64>>> {
    let ctx = context(rows);
    let over = "OVER (PARTITION BY symbol ORDER BY ts, seq)";
    let mut select: Vec<String> = PARITY_CALLS
        .iter()
        .map(|c| format!("{} {over}", c.replace('W', width)))
        .collect();
    select.push(format!("ewm_zscore(x, 2, {EWM_MAX}) {over}"));
    let sql = format!("SELECT seq, {} FROM t", select.join(", "));
    let cols = run(&ctx, &sql).await;
    let seqs = cols[0].as_primitive::<Int64Type>().values().to_vec();
    let values: Vec<Vec<Option<u64>>> = cols[1..].iter().map(bits).collect();
    seqs.iter()
        .enumerate()
        .map(|(r, &seq)| (seq, values.iter().map(|c| c[r]).collect()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Parity: over any suffix of the history that still holds a row's whole
    /// window, every UDF gives that row the same bits as over the full
    /// history.
    #[test]
    fn suffix_equals_full_history(
        symbols in prop::collection::vec((series(), any::<prop::sample::Index>()), 1..4),
        five in any::<bool>(),
    ) {
        let (width_sql, width_s) = if five {
            ("INTERVAL '5 minutes'", 300)
        } else {
            ("INTERVAL '1 minute'", 60)
        };
        let mut full = Vec::new();
        let mut suffix = Vec::new();
        // seq -> (first index of its window, index, cut) within its symbol.
        let mut checks: Vec<(i64, bool, bool)> = Vec::new();
        let mut seq = 0i64;
        for (s, (points, cut)) in symbols.iter().enumerate() {
            let cut = cut.index(points.len());
            let mut ts = 1_700_000_000i64;
            let times: Vec<i64> = points.iter().map(|(step, _, _)| { ts += step; ts }).collect();
            for (i, (_, x, v)) in points.iter().enumerate() {
                let r = row(&format!("s{s}"), seq, Some(times[i]), *x, *v);
                let start = times.iter().position(|&t| t >= times[i] - width_s).unwrap_or(i);
                checks.push((seq, start >= cut && i >= cut, i >= cut + EWM_MAX));
                if i >= cut {
                    suffix.push(r.clone());
                }
                full.push(r);
                seq += 1;
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (on_full, on_suffix) = runtime.block_on(async {
            (all_results(&full, width_sql).await, all_results(&suffix, width_sql).await)
        });
        for (seq, rolling_ok, ewm_ok) in checks {
            let f = &on_full[&seq];
            if rolling_ok {
                let s = &on_suffix[&seq];
                for (k, call) in PARITY_CALLS.iter().enumerate() {
                    prop_assert_eq!(f[k], s[k], "{} at seq {}", call, seq);
                }
            }
            if ewm_ok {
                let s = &on_suffix[&seq];
                prop_assert_eq!(f[PARITY_CALLS.len()], s[PARITY_CALLS.len()], "ewm_zscore at seq {}", seq);
            }
        }
    }

    /// Accuracy on prices near 1000 with noise of 1e-6: std and z-score within
    /// 1e-12 relative of a two-pass reference on the exact deviations.
    #[test]
    fn std_and_zscore_are_accurate(
        noise in prop::collection::vec((-1.0f64..1.0, 0i64..40), 2..200),
    ) {
        let mut t = 0i64;
        let mut ts = Vec::new();
        let mut xs = Vec::new();
        for (d, step) in &noise {
            t += step * 1_000_000;
            ts.push(t);
            xs.push(1000.0 + d * 1e-6);
        }
        let ts_arr: ArrayRef = Arc::new(TimestampMicrosecondArray::from(ts.clone()));
        let x_arr: ArrayRef = Arc::new(Float64Array::from(xs.clone()));
        let std = eval_direct(&RollingStdUdf::new(), &[x_arr.clone(), ts_arr.clone()], &[minutes(5)]);
        let z = eval_direct(&RollingZscoreUdf::new(), &[x_arr, ts_arr], &[minutes(5)]);
        let std = std.as_primitive::<Float64Type>();
        let z = z.as_primitive::<Float64Type>();
        for i in 0..xs.len() {
            // The window: ts in [ts_i − 5 min, ts_i] and peers after i.
            let win: Vec<f64> = (0..xs.len())
                .filter(|&j| ts[j] >= ts[i] - 300_000_000 && ts[j] <= ts[i])
                .map(|j| xs[j] - 1000.0) // exact (Sterbenz)
                .collect();
            let n = win.len() as f64;
            if win.len() < 2 {
                prop_assert!(std.is_null(i));
                continue;
            }
            let mean = win.iter().sum::<f64>() / n;
            let m2: f64 = win.iter().map(|d| (d - mean) * (d - mean)).sum();
            let want_std = (m2 / (n - 1.0)).sqrt();
            let got = std.value(i);
            prop_assert!((got - want_std).abs() <= 1e-12 * want_std, "std row {}: {} vs {}", i, got, want_std);
            if want_std > 0.0 {
                let want_z = ((xs[i] - 1000.0) - mean) / want_std;
                let got = z.value(i);
                prop_assert!((got - want_z).abs() <= 1e-12 * want_z.abs().max(1.0), "z row {}: {} vs {}", i, got, want_z);
            }
        }
    }
}

#[test]
fn ewm_zscore_accuracy_near_1000() {
    let xs: Vec<f64> = (0..50)
        .map(|i| 1000.0 + ((i * 7919) % 13) as f64 * 1e-7)
        .collect();
    let x_arr: ArrayRef = Arc::new(Float64Array::from(xs.clone()));
    let out = eval_direct(
        &EwmZscoreUdf::new(),
        &[x_arr],
        &[ScalarValue::Int64(Some(3)), ScalarValue::Int64(Some(10))],
    );
    let out = out.as_primitive::<Float64Type>();
    for i in 12..xs.len() {
        // Reference on deviations from 1000 (exact), same formulas.
        let (mut w_sum, mut wx, mut w2) = (0.0, 0.0, 0.0);
        for k in 1..=10 {
            let w = 0.5f64.powf(k as f64 / 3.0);
            w_sum += w;
            wx += w * (xs[i - k] - 1000.0);
            w2 += w * w;
        }
        let mean = wx / w_sum;
        let m2: f64 = (1..=10)
            .map(|k| 0.5f64.powf(k as f64 / 3.0) * ((xs[i - k] - 1000.0) - mean).powi(2))
            .sum();
        let var = m2 / (w_sum - w2 / w_sum);
        let want = ((xs[i] - 1000.0) - mean) / var.sqrt();
        let got = out.value(i);
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "row {i}: {got} vs {want}"
        );
    }
}

#[tokio::test]
async fn all_calls_share_one_unbounded_window_pass() {
    let ctx = context(&hand_rows());
    let sql = "EXPLAIN SELECT \
        rolling_std(x, ts, INTERVAL '5 minutes') OVER (PARTITION BY symbol ORDER BY ts), \
        rolling_mean(x, ts, INTERVAL '1 minute') OVER (PARTITION BY symbol ORDER BY ts), \
        ewm_zscore(x, 2, 10) OVER (PARTITION BY symbol ORDER BY ts) FROM t";
    let cols = run(&ctx, sql).await;
    let plan: String = cols[1]
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(plan.matches("WindowAggExec").count(), 1, "{plan}");
    assert!(!plan.contains("BoundedWindowAggExec"), "{plan}");
}

#[test]
fn lookback_of_every_udf() {
    let five = [minutes(5)];
    for name in ROLLING_UDF_NAMES {
        assert_eq!(
            lookback_of(name, &five),
            Some(Lookback::Time(std::time::Duration::from_secs(300))),
            "{name}"
        );
    }
    let day = ScalarValue::IntervalMonthDayNano(Some(arrow::datatypes::IntervalMonthDayNano::new(
        0, 1, 0,
    )));
    assert_eq!(lookback_of("rolling_std", &[day]), None);
    assert_eq!(
        lookback_of(
            "ewm_zscore",
            &[ScalarValue::Int64(Some(2)), ScalarValue::Int64(Some(0))]
        ),
        None
    );
    assert_eq!(lookback_of("log_return", &five), None);
}
