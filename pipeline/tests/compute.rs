//! `compute_features`: the feature files lined up by position give the same
//! rows and bits as joining them on the tick key, and a file that drops rows
//! falls back to the join's semantics.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;
use stockanomaly::features::{compute_features, feature_query, line_up_files, Catalog};
use stockanomaly::lake::{session_context, LakeRoot};

use common::ok;

fn queries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries")
}

async fn collect(ctx: &SessionContext, sql: &str) -> RecordBatch {
    let df = ctx.sql(sql).await.unwrap();
    let schema = Arc::new(df.schema().as_arrow().clone());
    concat_batches(&schema, &df.collect().await.unwrap()).unwrap()
}

/// A simulated lake with its context tables (profiles, market, betas)
/// stored by a backfill; returns its root.
fn lake(dir: &Path, seed: &str) -> LakeRoot {
    let lake = dir.join("lake");
    let path = lake.to_str().unwrap();
    ok(
        dir,
        &[
            "simulate",
            "--lake",
            path,
            "--symbols",
            "4",
            "--days",
            "3",
            "--trades-per-day",
            "800",
            "--seed",
            seed,
        ],
    );
    let queries = queries();
    ok(
        dir,
        &[
            "backfill",
            "--lake",
            path,
            "--queries",
            queries.to_str().unwrap(),
        ],
    );
    LakeRoot::parse(path).unwrap()
}

/// Column `i` of `a` and `b` hold the same values, bit for bit, NULL for
/// NULL.
fn same_column(a: &RecordBatch, b: &RecordBatch, i: usize) -> bool {
    let (x, y) = (a.column(i), b.column(i));
    if x.data_type() != y.data_type() || x.len() != y.len() {
        return false;
    }
    match (
        x.as_primitive_opt::<Float64Type>(),
        y.as_primitive_opt::<Float64Type>(),
    ) {
        (Some(x), Some(y)) => (0..x.len()).all(|r| {
            x.is_null(r) == y.is_null(r)
                && (x.is_null(r) || x.value(r).to_bits() == y.value(r).to_bits())
        }),
        _ => x.to_data() == y.to_data(),
    }
}

#[tokio::test]
async fn lined_up_files_equal_the_join_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let root = lake(dir.path(), "5");
    let catalog = Catalog::load(&queries()).await.unwrap();

    let ctx = session_context(&root).await.unwrap();
    // Ticks in lake order (by date, then file): compute_features sorts them.
    let ticks = collect(&ctx, "SELECT * FROM ticks").await;
    // The default pack returns one row per tick: lined up, no fallback.
    let lined_up = line_up_files(&ctx, &catalog, &ticks)
        .await
        .unwrap()
        .expect("the default pack lines up without the join");

    let join_ctx = session_context(&root).await.unwrap();
    let sql = feature_query(&join_ctx, &catalog).await.unwrap();
    let joined = collect(
        &join_ctx,
        &format!("{sql} ORDER BY f0.symbol, f0.ts, f0.seq"),
    )
    .await;

    assert_eq!(lined_up.num_rows(), ticks.num_rows(), "one row per tick");
    assert_eq!(lined_up.num_rows(), joined.num_rows());
    assert_eq!(lined_up.num_columns(), 3 + catalog.feature_names().len());
    for (i, field) in lined_up.schema().fields().iter().enumerate() {
        assert_eq!(field.name(), joined.schema().field(i).name());
        assert!(
            same_column(&lined_up, &joined, i),
            "column {} differs between the lined-up files and the join",
            field.name()
        );
    }
}

#[tokio::test]
async fn a_file_dropping_rows_falls_back_to_the_join() {
    let dir = tempfile::tempdir().unwrap();
    let root = lake(dir.path(), "6");
    let ctx = session_context(&root).await.unwrap();
    let ticks = collect(&ctx, "SELECT * FROM ticks").await;
    let prices = ticks
        .column_by_name("price")
        .unwrap()
        .as_primitive::<Float64Type>();
    let mut sorted: Vec<f64> = prices.values().to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];

    // Two files: one keeps every tick, one only those above the median price.
    let queries = dir.path().join("q");
    std::fs::create_dir_all(queries.join("features")).unwrap();
    std::fs::write(
        queries.join("features/a_all.sql"),
        "SELECT symbol, ts, seq, price * 2 AS double_price FROM ticks",
    )
    .unwrap();
    std::fs::write(
        queries.join("features/b_some.sql"),
        format!("SELECT symbol, ts, seq, price AS high_price FROM ticks WHERE price > {median:?}"),
    )
    .unwrap();
    let catalog = Catalog::load(&queries).await.unwrap();

    assert!(
        line_up_files(&ctx, &catalog, &ticks)
            .await
            .unwrap()
            .is_none(),
        "a file with fewer rows than ticks cannot be lined up"
    );
    let out = compute_features(&ctx, &catalog, &ticks).await.unwrap();
    let above = prices.values().iter().filter(|&&p| p > median).count();
    assert!(above > 0 && above < ticks.num_rows());
    assert_eq!(
        out.num_rows(),
        above,
        "the join keeps the ticks every file has"
    );
    let ts = out
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let symbols = out.column_by_name("symbol").unwrap().as_string::<i32>();
    let double = out
        .column_by_name("double_price")
        .unwrap()
        .as_primitive::<Float64Type>();
    let high = out
        .column_by_name("high_price")
        .unwrap()
        .as_primitive::<Float64Type>();
    for r in 0..out.num_rows() {
        assert!(high.value(r) > median);
        assert_eq!(double.value(r), 2.0 * high.value(r));
        if r > 0 {
            assert!(
                (symbols.value(r - 1), ts.value(r - 1)) <= (symbols.value(r), ts.value(r)),
                "rows in key order"
            );
        }
    }
}
