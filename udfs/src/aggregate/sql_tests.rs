//! `exact_sum` and `exact_mean` through SQL: hand cases, errors, sliding
//! windows (retraction) and the determinism property (same bits for any row
//! order, batching, partitioning and `target_partitions`).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use proptest::prelude::*;

use super::total::tests::assert_correct_mean;
use crate::window::exact_sum::tests::BigSum;
use crate::window::{ExactSum, SUM_LIMIT};

/// One row: group, sequence number, value.
type Row = (i64, i64, Option<f64>);

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("seq", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
    ]))
}

fn batch(rows: &[Row]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
    ];
    RecordBatch::try_new(schema(), columns).unwrap()
}

/// A context over table `t` made of `partitions`, each a list of batches.
fn context(partitions: &[Vec<Vec<Row>>], target_partitions: usize) -> SessionContext {
    let parts: Vec<Vec<RecordBatch>> = partitions
        .iter()
        .map(|p| p.iter().map(|b| batch(b)).collect())
        .collect();
    let table = MemTable::try_new(schema(), parts).unwrap();
    let config = SessionConfig::new().with_target_partitions(target_partitions);
    let ctx = SessionContext::new_with_config(config);
    crate::register_all(&ctx);
    ctx.register_table("t", Arc::new(table)).unwrap();
    ctx
}

async fn try_run(ctx: &SessionContext, sql: &str) -> datafusion::common::Result<Vec<ArrayRef>> {
    let df = ctx.sql(sql).await?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    Ok(batch.columns().to_vec())
}

async fn run(ctx: &SessionContext, sql: &str) -> Vec<ArrayRef> {
    try_run(ctx, sql).await.unwrap()
}

fn floats(array: &ArrayRef) -> Vec<Option<f64>> {
    array.as_primitive::<Float64Type>().iter().collect()
}

fn bits(array: &ArrayRef) -> Vec<Option<u64>> {
    floats(array)
        .into_iter()
        .map(|v| v.map(f64::to_bits))
        .collect()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

/// `(exact_sum(x), exact_mean(x))` over one batch holding `values`.
fn sum_mean(values: &[Option<f64>]) -> (Option<f64>, Option<f64>) {
    let rows: Vec<Row> = values
        .iter()
        .enumerate()
        .map(|(i, &x)| (0, i as i64, x))
        .collect();
    let ctx = context(&[vec![rows]], 1);
    let cols = block_on(run(&ctx, "SELECT exact_sum(x), exact_mean(x) FROM t"));
    (floats(&cols[0])[0], floats(&cols[1])[0])
}

#[test]
fn hand_cases() {
    assert_eq!(sum_mean(&[]), (None, None));
    assert_eq!(sum_mean(&[None, None]), (None, None));
    assert_eq!(
        sum_mean(&[Some(1e16), Some(1.0), Some(-1e16)]),
        (Some(1.0), Some(1.0 / 3.0))
    );
    assert_eq!(
        sum_mean(&[Some(1.0), None, Some(2.0), Some(3.0), None, Some(4.0)]),
        (Some(10.0), Some(2.5))
    );
    // Exact Σ = 0.6000000000000000055…, nearest double 0.6 (a left-to-right
    // f64 sum gives 0.6000000000000001); / 3 = 0.2000000000000000018…,
    // nearest double 0.2 (the f64 mean gives 0.20000000000000004).
    let (sum, mean) = sum_mean(&[Some(0.1), Some(0.2), Some(0.3)]);
    assert_eq!(sum, Some(0.6));
    assert_eq!(mean, Some(0.2));
    // Exact zero is +0.0.
    let (sum, mean) = sum_mean(&[Some(-0.5), Some(0.5)]);
    assert_eq!(sum.map(f64::to_bits), Some(0f64.to_bits()));
    assert_eq!(mean.map(f64::to_bits), Some(0f64.to_bits()));
    // Beyond the 2^960 of the rolling UDFs: still exact.
    assert_eq!(
        sum_mean(&[Some(1e300), Some(1.0), Some(-1e300)]),
        (Some(1.0), Some(1.0 / 3.0))
    );
    assert_eq!(
        sum_mean(&[Some(f64::MAX), Some(f64::MAX)]),
        (Some(f64::INFINITY), Some(f64::MAX))
    );
}

#[test]
fn non_finite_values() {
    let (s, m) = sum_mean(&[Some(1.0), Some(f64::NAN), None]);
    assert!(s.unwrap().is_nan() && m.unwrap().is_nan());
    let (s, m) = sum_mean(&[Some(f64::INFINITY), Some(f64::NEG_INFINITY)]);
    assert!(s.unwrap().is_nan() && m.unwrap().is_nan());
    assert_eq!(
        sum_mean(&[Some(f64::INFINITY), Some(-1e308), Some(-1e308)]),
        (Some(f64::INFINITY), Some(f64::INFINITY))
    );
    assert_eq!(
        sum_mean(&[Some(f64::NEG_INFINITY), Some(1.0)]),
        (Some(f64::NEG_INFINITY), Some(f64::NEG_INFINITY))
    );
}

#[test]
fn coercion_and_errors() {
    let ctx = context(&[vec![vec![(0, 0, Some(1.5)), (0, 1, Some(2.0))]]], 1);
    block_on(async {
        let cols = run(&ctx, "SELECT exact_sum(seq), exact_mean(seq) FROM t").await;
        assert_eq!(floats(&cols[0]), vec![Some(1.0)]);
        assert_eq!(floats(&cols[1]), vec![Some(0.5)]);
        let cols = run(&ctx, "SELECT exact_sum(NULL) FROM t").await;
        assert_eq!(floats(&cols[0]), vec![None]);
        let err = try_run(&ctx, "SELECT exact_sum('a') FROM t")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must be a number"), "{err}");
        let err = try_run(&ctx, "SELECT exact_mean(x, x) FROM t")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("takes 1 argument"), "{err}");
        let err = try_run(&ctx, "SELECT exact_sum(DISTINCT x), exact_mean(x) FROM t").await;
        assert!(err.is_err(), "{err:?}");
    });
}

/// As sliding window aggregates (retraction), each row matches the
/// aggregate of its own frame computed from scratch.
#[test]
fn sliding_window_retracts_exactly() {
    let xs = [
        Some(1e16),
        Some(1.0),
        Some(-1e16),
        None,
        Some(0.1),
        Some(1e300),
        Some(0.2),
        Some(-1e300),
        Some(f64::NAN),
        Some(0.3),
        Some(3.0),
        Some(f64::INFINITY),
        Some(5.0),
        Some(7.0),
    ];
    let rows: Vec<Row> = xs
        .iter()
        .enumerate()
        .map(|(i, &x)| (0, i as i64, x))
        .collect();
    let ctx = context(&[vec![rows]], 1);
    let cols = block_on(run(
        &ctx,
        "SELECT seq, \
           exact_sum(x) OVER (ORDER BY seq ROWS BETWEEN 2 PRECEDING AND CURRENT ROW), \
           exact_mean(x) OVER (ORDER BY seq ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) \
         FROM t ORDER BY seq",
    ));
    let seqs = cols[0].as_primitive::<Int64Type>().values().to_vec();
    let (sums, means) = (bits(&cols[1]), bits(&cols[2]));
    for (r, &seq) in seqs.iter().enumerate() {
        let i = seq as usize;
        let (s, m) = sum_mean(&xs[i.saturating_sub(2)..=i]);
        assert_eq!(sums[r], s.map(f64::to_bits), "sum at {i}");
        assert_eq!(means[r], m.map(f64::to_bits), "mean at {i}");
    }
}

/// The expected `(sum, mean)` of the non-NULL `values`, from independent
/// references: a plain [`ExactSum`] loop (and [`BigSum`] beyond
/// [`SUM_LIMIT`]) for the sum, an exact check of correct rounding for the
/// mean.
fn check_reference(values: &[f64], sum: Option<f64>, mean: Option<f64>) {
    if values.is_empty() {
        assert_eq!((sum, mean), (None, None));
        return;
    }
    let (sum, mean) = (sum.unwrap(), mean.unwrap());
    let nan = values.iter().any(|v| v.is_nan());
    let pos = values.contains(&f64::INFINITY);
    let neg = values.contains(&f64::NEG_INFINITY);
    if nan || (pos && neg) {
        assert_eq!(sum.to_bits(), f64::NAN.to_bits());
        assert_eq!(mean.to_bits(), f64::NAN.to_bits());
        return;
    }
    if pos || neg {
        let inf = if pos {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        };
        assert_eq!((sum, mean), (inf, inf));
        return;
    }
    let expected = if values.iter().all(|v| v.abs() <= SUM_LIMIT) {
        let mut s = ExactSum::new();
        for &v in values {
            s.add(v);
        }
        s.round()
    } else {
        let mut b = BigSum::new();
        for &v in values {
            b.add(v);
        }
        b.round()
    };
    assert_eq!(sum.to_bits(), expected.to_bits(), "sum of {values:?}");
    assert_correct_mean(values, mean);
}

fn value() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        6 => (-1e6f64..1e6).prop_map(Some),
        3 => (-1e-6f64..1e-6).prop_map(|d| Some(1000.0 + d)),
        2 => (0u32..64).prop_map(|k| Some(1e16 * (k as f64 - 32.0))),
        2 => (-300i32..300, any::<bool>())
            .prop_map(|(e, neg)| Some(if neg { -(10f64.powi(e)) } else { 10f64.powi(e) })),
        1 => (1.0f64..1.79, any::<bool>())
            .prop_map(|(m, neg)| Some(if neg { -m * 1e308 } else { m * 1e308 })),
        1 => Just(Some(0.1)),
        1 => Just(Some(1.0)),
        2 => Just(None),
    ]
}

/// xorshift64*: a fixed shuffle from a proptest seed.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut s = seed | 1;
    for i in (1..items.len()).rev() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let r = s.wrapping_mul(0x2545_f491_4f6c_dd1d);
        items.swap(i, (r % (i as u64 + 1)) as usize);
    }
}

/// `rows` shuffled by `seed`, cut into batches of 1..=7 rows dealt over
/// `1..=4` partitions.
fn layout(rows: &[Row], seed: u64) -> Vec<Vec<Vec<Row>>> {
    let mut rows = rows.to_vec();
    shuffle(&mut rows, seed);
    let n_parts = 1 + (seed >> 60) as usize % 4;
    let mut parts: Vec<Vec<Vec<Row>>> = vec![Vec::new(); n_parts];
    let mut start = 0;
    let mut k = 0;
    while start < rows.len() {
        let len = 1 + ((seed >> (k % 16 * 3)) as usize % 7);
        let end = (start + len).min(rows.len());
        parts[k % n_parts].push(rows[start..end].to_vec());
        start = end;
        k += 1;
    }
    parts.retain(|p| !p.is_empty());
    if parts.is_empty() {
        parts.push(vec![Vec::new()]);
    }
    parts
}

const GROUPED: &str = "SELECT g, exact_sum(x), exact_mean(x) FROM t GROUP BY g ORDER BY g";
const WHOLE: &str = "SELECT exact_sum(x), exact_mean(x) FROM t";

/// Per group: `(sum bits, mean bits)`, the group `-1` being the whole table.
type Results = BTreeMap<i64, (Option<u64>, Option<u64>)>;

/// [`GROUPED`] and [`WHOLE`] over `ctx`.
async fn results(ctx: &SessionContext) -> Results {
    let cols = run(ctx, GROUPED).await;
    let groups = cols[0].as_primitive::<Int64Type>().values().to_vec();
    let (sums, means) = (bits(&cols[1]), bits(&cols[2]));
    let mut out: BTreeMap<i64, _> = groups
        .iter()
        .enumerate()
        .map(|(r, &g)| (g, (sums[r], means[r])))
        .collect();
    let cols = run(ctx, WHOLE).await;
    out.insert(-1, (bits(&cols[0])[0], bits(&cols[1])[0]));
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Same bits for every shuffle, batching, partitioning and
    /// `target_partitions`, equal to the references.
    #[test]
    fn bits_do_not_depend_on_order_or_partitioning(
        values in prop::collection::vec((0i64..4, value()), 0..80),
        with_non_finite in prop::option::weighted(0.2, (0i64..4, prop_oneof![
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
        ])),
        seeds in prop::collection::vec(any::<u64>(), 3),
    ) {
        let mut rows: Vec<Row> = values
            .iter()
            .enumerate()
            .map(|(i, &(g, x))| (g, i as i64, x))
            .collect();
        if let Some((g, x)) = with_non_finite {
            rows.push((g, rows.len() as i64, Some(x)));
        }
        let mut first: Option<Results> = None;
        for (k, &seed) in seeds.iter().enumerate() {
            for target in [1, 4] {
                let parts = layout(&rows, seed);
                let got = block_on(results(&context(&parts, target)));
                match &first {
                    None => first = Some(got),
                    Some(f) => prop_assert_eq!(f, &got, "layout {} target {}", k, target),
                }
            }
        }
        let first = first.unwrap();
        for (&g, &(sum, mean)) in &first {
            let group: Vec<f64> = rows
                .iter()
                .filter(|r| g == -1 || r.0 == g)
                .filter_map(|r| r.2)
                .collect();
            check_reference(&group, sum.map(f64::from_bits), mean.map(f64::from_bits));
        }
        // Every group with a row is there (NULL-only groups give NULLs).
        for r in &rows {
            prop_assert!(first.contains_key(&r.0));
        }
    }
}
