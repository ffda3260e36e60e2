//! The streaming executor against batch: features and scores of ticks fed
//! in micro-batches of several sizes equal the backfill's snapshot and
//! `score`'s output, bit for bit.

mod common;

use std::collections::BTreeMap;

use arrow::array::{AsArray, Int32Array, Int64Array, RecordBatch};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
use common::{ok, queries, Key};
use stockanomaly::features::{training_session, Catalog};
use stockanomaly::lake::{session_context, LakeRoot};
use stockanomaly::model::{Detector, ModelDetector, RuleSet};
use stockanomaly::stream::{load_symbols, Executor, ExecutorConfig, Input};

fn key(b: &RecordBatch, i: usize) -> Key {
    (
        b.column_by_name("symbol")
            .unwrap()
            .as_string::<i32>()
            .value(i)
            .to_owned(),
        b.column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .value(i),
        b.column_by_name("seq")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .value(i),
    )
}

/// Feature rows by key, values as bits (NULL as None).
fn rows(batches: &[RecordBatch], names: &[&str]) -> BTreeMap<Key, Vec<Option<u64>>> {
    let mut out = BTreeMap::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let v = names
                .iter()
                .map(|n| {
                    let c = b.column_by_name(n).unwrap().as_primitive::<Float64Type>();
                    (!arrow::array::Array::is_null(c, i)).then(|| c.value(i).to_bits())
                })
                .collect();
            out.insert(key(b, i), v);
        }
    }
    out
}

/// Score rows by key: (score bits, alert, reason).
fn scores(batches: &[RecordBatch]) -> BTreeMap<Key, (Option<u64>, bool, Option<String>)> {
    let mut out = BTreeMap::new();
    for b in batches {
        let s = b
            .column_by_name("score")
            .unwrap()
            .as_primitive::<Float64Type>();
        let a = b.column_by_name("alert").unwrap().as_boolean();
        let r = b.column_by_name("reason").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            out.insert(
                key(b, i),
                (
                    (!arrow::array::Array::is_null(s, i)).then(|| s.value(i).to_bits()),
                    a.value(i),
                    (!arrow::array::Array::is_null(r, i)).then(|| r.value(i).to_owned()),
                ),
            );
        }
    }
    out
}

/// Every feature of every tick of `want` is in `got`, bit for bit.
fn assert_bit_equal(
    got: &BTreeMap<Key, Vec<Option<u64>>>,
    want: &BTreeMap<Key, Vec<Option<u64>>>,
    names: &[&str],
    label: &str,
) {
    for (k, w) in want {
        let g = &got[k];
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                g[i].map(f64::from_bits),
                w[i].map(f64::from_bits),
                "{label}: {name} differs at {k:?}"
            );
        }
    }
}

#[tokio::test]
async fn micro_batches_equal_backfill_and_score() {
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let lake = lake_path.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    common::simulate_backfill(dir.path(), lake, ["3", "3", "600", "3", "21"]);
    ok(
        dir.path(),
        &[
            "train",
            "--lake",
            lake,
            "--queries",
            q,
            "--rounds",
            "10",
            "--out",
            "m",
        ],
    );
    ok(
        dir.path(),
        &[
            "score",
            "--lake",
            lake,
            "--queries",
            q,
            "--model",
            "m",
            "--rules",
            "--top-shap",
            "3",
        ],
    );

    let root = LakeRoot::parse(lake).unwrap();
    let catalog = Catalog::load(&queries()).await.unwrap();
    let names = catalog.feature_names();
    let tctx = training_session(&root, &catalog).await.unwrap();
    let snapshot = tctx
        .sql("SELECT * FROM features")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let want_features = rows(&snapshot, &names);

    // Ticks in arrival order: by time, each symbol's in (ts, seq) order.
    let ctx = session_context(&root).await.unwrap();
    let df = ctx.sql("SELECT ts, symbol, seq, price, volume, open, high, low, bid, ask, bid_size, ask_size, source FROM ticks").await.unwrap();
    let schema = df.schema().inner().clone();
    let all = concat_batches(&schema, &df.collect().await.unwrap()).unwrap();
    let order = lexsort_to_indices(
        &[
            SortColumn {
                values: all.column(0).clone(),
                options: None,
            },
            SortColumn {
                values: all.column(1).clone(),
                options: None,
            },
            SortColumn {
                values: all.column(2).clone(),
                options: None,
            },
        ],
        None,
    )
    .unwrap();
    let all = take_record_batch(&all, &order).unwrap();
    let all =
        RecordBatch::try_new(stockanomaly::tick::tick_schema(), all.columns().to_vec()).unwrap();
    let n = all.num_rows();
    assert_eq!(n, want_features.len());

    let symbols = load_symbols(&root).await.unwrap();
    assert!(symbols.num_rows() > 0);
    for batch_rows in [n + 1, 997, 113] {
        let rules = RuleSet::load(&queries(), &catalog).await.unwrap();
        let model = ModelDetector::load(&dir.path().join("m"), &catalog).unwrap();
        // The pack's trained model runs on the compiled trees, scores and
        // explanations (a silent fall-back to XGBoost would pass the parity
        // checks below and cost the detector its speed).
        assert_eq!(model.compiled(), (true, true));
        let mut detectors = vec![Detector::Model(Box::new(model))];
        detectors.extend(rules.rules().iter().cloned().map(Detector::Rule));
        let versions: Vec<String> = detectors.iter().map(Detector::version).collect();
        let mut ex = Executor::new(
            catalog.clone(),
            detectors,
            Some(symbols.clone()),
            ExecutorConfig {
                // Groups complete only by a later tick or the end of the stream.
                idle_timeout: std::time::Duration::from_secs(3600),
                top_shap: 3,
                ..ExecutorConfig::default()
            },
        )
        .unwrap()
        .with_profiles(root.clone());
        let mut features = Vec::new();
        let mut by_detector: Vec<Vec<RecordBatch>> = vec![Vec::new(); versions.len()];
        let mut start = 0;
        while start < n {
            let len = batch_rows.min(n - start);
            let input = Input {
                ticks: all.slice(start, len),
                partitions: Int32Array::from(vec![0; len]),
                offsets: Int64Array::from_iter_values((start as i64)..(start + len) as i64),
                arrived_us: None,
            };
            let step = ex.step(input).await.unwrap();
            assert!(step.late.is_empty(), "{:?}", step.late);
            let pos = step.positions[&0];
            assert!(
                pos.next_offset <= (start + len) as i64 && pos.warmup_offset <= pos.next_offset
            );
            features.extend(step.features);
            for (d, s) in step.scores.into_iter().enumerate() {
                by_detector[d].push(s);
            }
            start += len;
        }
        let last = ex.flush(true).await.unwrap();
        features.extend(last.features);
        for (d, s) in last.scores.into_iter().enumerate() {
            by_detector[d].push(s);
        }
        assert_eq!(
            last.positions[&0].next_offset, n as i64,
            "everything emitted"
        );
        assert!(ex.held() < n, "history is pruned");

        let got = rows(&features, &names);
        assert_eq!(
            got.len(),
            n,
            "batch size {batch_rows}: one feature row per tick"
        );
        // The seasonality features join the intraday profiles the executor
        // loaded from the lake: present (days after the first), and equal.
        let seasonal = names
            .iter()
            .position(|f| *f == "volume_vs_profile")
            .expect("the pack has volume_vs_profile");
        let profiled = got.values().filter(|r| r[seasonal].is_some()).count();
        assert!(profiled > n / 3, "{profiled} of {n} ticks have a profile");
        assert_bit_equal(
            &got,
            &want_features,
            &names,
            &format!("batch size {batch_rows}"),
        );
        for (d, version) in versions.iter().enumerate() {
            let batch = ctx
                .sql(&format!(
                    "SELECT * FROM scores WHERE model_version = '{version}'"
                ))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let want = scores(&batch);
            let got = scores(&by_detector[d]);
            assert_eq!(want.len(), n);
            assert_eq!(got.len(), n, "{version}: one score per tick");
            let alerts = want.values().filter(|v| v.1).count();
            assert_eq!(
                got.values().filter(|v| v.1).count(),
                alerts,
                "{version}: alert count"
            );
            assert_eq!(
                got, want,
                "batch size {batch_rows}: {version} scores differ"
            );
        }
    }

    // Market buckets closed by the idle timeout: the stream pauses at a
    // minute boundary for longer than the timeout, so the buckets held are
    // closed (and their groups emitted) without a later tick; then it goes
    // on. The features are unchanged.
    let ts = all.column(0).as_primitive::<TimestampMicrosecondType>();
    let minute = 60_000_000i64;
    let cut = (n / 2..n)
        .find(|&i| ts.value(i).div_euclid(minute) != ts.value(i - 1).div_euclid(minute))
        .expect("a minute boundary in the second half");
    let mut ex = Executor::new(
        catalog.clone(),
        Vec::new(),
        Some(symbols.clone()),
        ExecutorConfig {
            idle_timeout: std::time::Duration::from_secs(2),
            top_shap: 0,
            allowed_lateness: std::time::Duration::ZERO,
        },
    )
    .unwrap()
    .with_profiles(root.clone());
    assert!(ex.uses_market(), "the pack reads the market");
    ex.set_clock(std::time::Duration::ZERO);
    let mut features = Vec::new();
    let open_bucket = ts.value(cut - 1).div_euclid(minute) * minute;
    let ranges: Vec<(usize, usize)> = (0..cut)
        .step_by(500)
        .map(|s| (s, (s + 500).min(cut)))
        .chain((cut..n).step_by(500).map(|s| (s, (s + 500).min(n))))
        .collect();
    for (from, to) in ranges {
        if from == cut {
            assert!(
                ex.market_closed_until().is_none_or(|c| c <= open_bucket),
                "the last bucket before the pause is still open"
            );
            ex.set_clock(std::time::Duration::from_secs(3));
            let idle = ex.flush(false).await.unwrap();
            assert_eq!(
                ex.market_closed_until(),
                Some(open_bucket + minute),
                "closed by the idle timeout"
            );
            assert!(idle.emitted() > 0);
            features.extend(idle.features);
        }
        let step = ex
            .step(Input {
                ticks: all.slice(from, to - from),
                partitions: Int32Array::from(vec![0; to - from]),
                offsets: Int64Array::from_iter_values((from as i64)..(to as i64)),
                arrived_us: None,
            })
            .await
            .unwrap();
        assert!(step.late.is_empty(), "{:?}", step.late);
        features.extend(step.features);
    }
    features.extend(ex.flush(true).await.unwrap().features);
    let got = rows(&features, &names);
    assert_eq!(got.len(), n, "idle pause: one feature row per tick");
    let market = names
        .iter()
        .position(|f| *f == "excess_ret_1m")
        .expect("the pack has excess_ret_1m");
    let with_beta = got.values().filter(|r| r[market].is_some()).count();
    assert!(with_beta > n / 3, "{with_beta} of {n} ticks have a beta");
    assert_bit_equal(&got, &want_features, &names, "idle pause");

    // Out of order within the allowed lateness: blocks of 50 ticks arrive
    // reversed; with a lateness covering each block's time span, the
    // reorder buffer restores event order and the features are unchanged.
    let block = 50;
    let mut lateness_us = 0;
    let mut shuffled: Vec<u64> = Vec::with_capacity(n);
    for start in (0..n).step_by(block) {
        let end = (start + block).min(n);
        lateness_us = lateness_us.max(ts.value(end - 1) - ts.value(start));
        shuffled.extend((start..end).rev().map(|i| i as u64));
    }
    let reordered = take_record_batch(&all, &arrow::array::UInt64Array::from(shuffled)).unwrap();
    let mut ex = Executor::new(
        catalog.clone(),
        Vec::new(),
        Some(symbols.clone()),
        ExecutorConfig {
            idle_timeout: std::time::Duration::from_secs(3600),
            top_shap: 0,
            allowed_lateness: std::time::Duration::from_micros(lateness_us as u64 + 1),
        },
    )
    .unwrap()
    .with_profiles(root.clone());
    let mut features = Vec::new();
    let mut start = 0;
    let mut out_of_order = 0;
    while start < n {
        let len = 333.min(n - start);
        let step = ex
            .step(Input {
                ticks: reordered.slice(start, len),
                partitions: Int32Array::from(vec![0; len]),
                offsets: Int64Array::from_iter_values((start as i64)..(start + len) as i64),
                arrived_us: None,
            })
            .await
            .unwrap();
        assert!(step.late.is_empty(), "within the lateness: {:?}", step.late);
        features.extend(step.features);
        start += len;
    }
    features.extend(ex.flush(true).await.unwrap().features);
    let rts = reordered
        .column(0)
        .as_primitive::<TimestampMicrosecondType>();
    let rsym = reordered.column(1).as_string::<i32>();
    for i in 1..n {
        if rsym.value(i) == rsym.value(i - 1) && rts.value(i) < rts.value(i - 1) {
            out_of_order += 1;
        }
    }
    assert!(out_of_order > n / 10, "the input is really out of order");
    let got = rows(&features, &names);
    assert_eq!(got.len(), n, "reordered: one feature row per tick");
    assert_bit_equal(&got, &want_features, &names, "reordered");
}
