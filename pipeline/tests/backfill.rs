//! Backfill: features per date with the lookback before it equal features
//! over the whole history, bit for bit; resumable; the same over S3.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
use indicatif::ProgressBar;
use stockanomaly::features::{backfill, training_session, BackfillOptions, Catalog};
use stockanomaly::lake::{session_context, LakeRoot};

use common::{ok, service_env, sql_number};

fn queries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries")
}

use common::Key;

/// Rows of a feature result keyed by tick key, values as bit patterns (None
/// for NULL) so that comparison is exact.
fn rows(batches: &[RecordBatch], features: &[&str]) -> BTreeMap<Key, Vec<Option<u64>>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let s = b.column_by_name("symbol").unwrap().as_string::<i32>();
        let t = b
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let q = b
            .column_by_name("seq")
            .unwrap()
            .as_primitive::<UInt32Type>();
        let cols: Vec<_> = features
            .iter()
            .map(|f| {
                b.column_by_name(f)
                    .unwrap_or_else(|| panic!("no column {f}"))
                    .as_primitive::<Float64Type>()
            })
            .collect();
        for i in 0..b.num_rows() {
            let vals = cols
                .iter()
                .map(|c| (!c.is_null(i)).then(|| c.value(i).to_bits()))
                .collect();
            out.insert((s.value(i).to_owned(), t.value(i), q.value(i)), vals);
        }
    }
    out
}

#[tokio::test]
async fn each_date_equals_the_whole_history_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    ok(
        dir.path(),
        &[
            "simulate",
            "--lake",
            lake.to_str().unwrap(),
            "--symbols",
            "3",
            "--days",
            "3",
            "--trades-per-day",
            "1500",
            "--seed",
            "3",
        ],
    );
    let root = LakeRoot::parse(lake.to_str().unwrap()).unwrap();
    let catalog = Catalog::load(&queries()).await.unwrap();
    // One date per pass: each date computed from its own lookback only.
    let summary = backfill(
        &root,
        &catalog,
        &BackfillOptions {
            chunk_ticks: 1,
            ..BackfillOptions::default()
        },
        &ProgressBar::hidden(),
    )
    .await
    .unwrap();
    assert_eq!(summary.dates_done.len(), 3);

    // The whole history at once, each file over all ticks, cast as backfill does.
    let ctx = session_context(&root).await.unwrap();
    let full: BTreeMap<Key, Vec<Option<u64>>> = common::pack_features(&ctx, &catalog)
        .await
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|x| x.map(f64::to_bits)).collect()))
        .collect();
    let tctx = training_session(&root, &catalog).await.unwrap();
    let batches = tctx
        .sql("SELECT * FROM features")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let backfilled = rows(&batches, &catalog.feature_names());
    assert_eq!(backfilled.len(), full.len(), "one feature row per tick");
    let names = catalog.feature_names();
    let mut compared = 0;
    for (k, v) in &backfilled {
        let w = &full[k];
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                v[i].map(f64::from_bits),
                w[i].map(f64::from_bits),
                "{name} differs at {k:?} between per-date backfill and whole history"
            );
            compared += 1;
        }
    }
    assert!(compared > 10_000);
    // Features are not all NULL (range_ratio is for bars; these are trades).
    for (i, name) in names
        .iter()
        .enumerate()
        .filter(|(_, n)| **n != "range_ratio")
    {
        assert!(
            backfilled.values().any(|v| v[i].is_some()),
            "{name} is always NULL"
        );
    }
    // The training view marks ticks inside label intervals.
    let positives = sql_number(
        dir.path(),
        lake.to_str().unwrap(),
        "SELECT count(*) FROM training WHERE label = 1",
    );
    let inside = sql_number(
        dir.path(),
        lake.to_str().unwrap(),
        "SELECT count(*) FROM (SELECT DISTINCT t.symbol, t.ts, t.seq FROM ticks t JOIN labels l \
         ON t.symbol = l.symbol AND t.ts BETWEEN l.start_ts AND l.end_ts)",
    );
    assert!(positives > 0);
    assert_eq!(positives, inside);
}

#[test]
fn backfill_resumes_and_force_recomputes() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    ok(
        dir.path(),
        &[
            "simulate",
            "--lake",
            &lake,
            "--symbols",
            "2",
            "--days",
            "2",
            "--trades-per-day",
            "300",
        ],
    );
    let q = queries().display().to_string();
    let first = ok(
        dir.path(),
        &[
            "backfill",
            "--lake",
            &lake,
            "--queries",
            &q,
            "--to",
            "2024-01-02",
        ],
    );
    assert!(
        first.contains("1 dates computed, 0 already done"),
        "{first}"
    );
    let second = ok(dir.path(), &["backfill", "--lake", &lake, "--queries", &q]);
    assert!(
        second.contains("1 dates computed, 1 already done"),
        "{second}"
    );
    let forced = ok(
        dir.path(),
        &["backfill", "--lake", &lake, "--queries", &q, "--force"],
    );
    assert!(
        forced.contains("2 dates computed, 0 already done"),
        "{forced}"
    );
    let ticks = sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks");
    let features = ok(
        dir.path(),
        &[
            "sql",
            "--lake",
            &lake,
            "--queries",
            &q,
            "--format",
            "csv",
            "SELECT count(*) FROM features",
        ],
    );
    assert_eq!(
        features.lines().nth(1).unwrap().parse::<i64>().unwrap(),
        ticks
    );
}

/// `backfill --force` deleted a date's feature files (and its `_SUCCESS`
/// marker) before computing and writing the new ones: a run that failed
/// after that (here: the next date's folder cannot be written) left the
/// date with no features and not done. Now a run's old files are removed
/// only once its new ones are written; a run that succeeds still leaves
/// each date exactly its new files (a leftover copy is removed).
#[test]
fn a_failed_forced_backfill_keeps_the_dates_old_features() {
    let dir = tempfile::tempdir().unwrap();
    let lake_dir = dir.path().join("lake");
    let lake = lake_dir.display().to_string();
    ok(
        dir.path(),
        &[
            "simulate",
            "--lake",
            &lake,
            "--symbols",
            "2",
            "--days",
            "2",
            "--trades-per-day",
            "300",
        ],
    );
    let q = queries().display().to_string();
    let first = ok(dir.path(), &["backfill", "--lake", &lake, "--queries", &q]);
    assert!(
        first.contains("2 dates computed, 0 already done"),
        "{first}"
    );
    // features/<hash>/date=D/ for the two dates.
    let features = std::fs::read_dir(lake_dir.join("features"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut dates: Vec<PathBuf> = std::fs::read_dir(&features)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dates.sort();
    assert_eq!(dates.len(), 2, "{dates:?}");
    let before = common::files_under(&dates[0]);
    assert!(before.contains_key("_SUCCESS"), "{:?}", before.keys());
    // The second date's folder is a file: its features cannot be written.
    std::fs::remove_dir_all(&dates[1]).unwrap();
    std::fs::write(&dates[1], b"in the way").unwrap();
    let out = common::run(
        dir.path(),
        &["backfill", "--lake", &lake, "--queries", &q, "--force"],
    );
    assert!(!out.status.success(), "the forced run should fail");
    let after = common::files_under(&dates[0]);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the first date's features and marker are still there"
    );
    assert!(after == before, "the first date's files are unchanged");
    // Clear the way and leave a stray copy of a file in the first date (what
    // an interrupted run of other content leaves): a forced run that
    // succeeds replaces each date's files with exactly its new ones.
    std::fs::remove_file(&dates[1]).unwrap();
    let part = before.keys().find(|k| k.ends_with(".parquet")).unwrap();
    std::fs::copy(
        dates[0].join(part),
        dates[0].join("part-000000000000.parquet"),
    )
    .unwrap();
    let forced = ok(
        dir.path(),
        &["backfill", "--lake", &lake, "--queries", &q, "--force"],
    );
    assert!(
        forced.contains("2 dates computed, 0 already done"),
        "{forced}"
    );
    let after = common::files_under(&dates[0]);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the stray copy is removed"
    );
    assert!(after == before, "the same features again");
    let ticks = sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks");
    let rows = ok(
        dir.path(),
        &[
            "sql",
            "--lake",
            &lake,
            "--queries",
            &q,
            "--format",
            "csv",
            "SELECT count(*) FROM features",
        ],
    );
    assert_eq!(rows.lines().nth(1).unwrap().parse::<i64>().unwrap(), ticks);
}

#[test]
fn backfill_over_s3_equals_a_local_folder() {
    let endpoint = service_env("STOCKANOMALY_TEST_S3_ENDPOINT");
    let bucket = format!("backfill-{}", std::process::id());
    common::create_bucket(&endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    let s3 = format!("s3://{bucket}/lake");
    let local = dir.path().join("local").display().to_string();
    let q = queries().display().to_string();
    let run = |lake: &str, args: &[&str]| {
        common::ok_s3(
            dir.path(),
            &endpoint,
            &[("STOCKANOMALY_LAKE", lake), ("STOCKANOMALY_QUERIES", &q)],
            args,
        )
    };
    for lake in [&s3, &local] {
        run(
            lake,
            &[
                "simulate",
                "--symbols",
                "2",
                "--days",
                "2",
                "--trades-per-day",
                "400",
                "--seed",
                "8",
            ],
        );
        run(lake, &["backfill"]);
    }
    let query = "SELECT * FROM features ORDER BY symbol, ts, seq";
    let a = run(&s3, &["sql", "--format", "csv", query]);
    let b = run(&local, &["sql", "--format", "csv", query]);
    assert!(a.lines().count() > 500);
    assert_eq!(a, b);
}

/// `stockanomaly profiles`: per symbol and minute of the exchange's day,
/// the medians over the earlier dates, by hand; the default date is the day
/// after the last tick; backfill stores the same rows for the dates it
/// computes, and the features divide by them.
#[test]
fn intraday_profiles_are_the_medians_of_the_earlier_days() {
    let dir = tempfile::tempdir().unwrap();
    // 14:30Z is 09:30 in New York in January: minute 570.
    std::fs::write(
        dir.path().join("ticks.csv"),
        "ts,symbol,price,volume\n\
         2024-01-02T14:30:10Z,AAA,100,10\n\
         2024-01-02T14:30:50Z,AAA,101,30\n\
         2024-01-02T14:31:00Z,AAA,100,7\n\
         2024-01-03T14:30:05Z,AAA,50,5\n\
         2024-01-04T14:30:20Z,AAA,60,45\n",
    )
    .unwrap();
    ok(
        dir.path(),
        &["ingest", "csv", "--lake", "lake", "ticks.csv"],
    );
    let out = ok(
        dir.path(),
        &["profiles", "--lake", "lake", "--date", "2024-01-04"],
    );
    assert!(
        out.contains("profiles of 2024-01-04: 2 (symbol, minute) rows"),
        "{out}"
    );
    let rows = common::sql_json(
        dir.path(),
        "lake",
        "SELECT minute, days, median_volume, median_ticks, median_abs_return FROM profiles \
         WHERE date = '2024-01-04' ORDER BY minute",
    );
    let r = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((r(0, "minute"), r(0, "days")), (570.0, 2.0));
    assert_eq!(r(0, "median_volume"), (40.0 + 5.0) / 2.0);
    assert_eq!(r(0, "median_ticks"), 1.5);
    assert!((r(0, "median_abs_return") - (101f64 / 100.0).ln() / 2.0).abs() < 1e-15);
    assert_eq!(
        (
            r(1, "minute"),
            r(1, "days"),
            r(1, "median_volume"),
            r(1, "median_ticks")
        ),
        (571.0, 1.0, 7.0, 1.0)
    );

    // Made from the days' minute statistics, stored once per day.
    assert_eq!(
        sql_number(
            dir.path(),
            "lake",
            "SELECT count(*) FROM minute_stats WHERE date = '2024-01-02'"
        ),
        2
    );
    // No date: the day after the last tick, made from all three days.
    let out = ok(dir.path(), &["profiles", "--lake", "lake"]);
    assert!(out.contains("profiles of 2024-01-05:"), "{out}");
    assert_eq!(
        sql_number(
            dir.path(),
            "lake",
            "SELECT max(days) FROM profiles WHERE date = '2024-01-05'"
        ),
        3
    );

    // Backfill stores the profiles of its dates (the first has none) and
    // the 01-04 tick's trailing minute is divided by its minute's medians.
    let q = queries().to_string_lossy().into_owned();
    ok(dir.path(), &["backfill", "--lake", "lake", "--queries", &q]);
    let f = common::sql_json(
        dir.path(),
        "lake",
        "SELECT volume_vs_profile, ticks_vs_profile FROM features WHERE date = '2024-01-04'",
    );
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["volume_vs_profile"].as_f64(), Some(45.0 / 22.5));
    assert_eq!(f[0]["ticks_vs_profile"].as_f64(), Some(1.0 / 1.5));
    assert_eq!(
        sql_number(
            dir.path(),
            "lake",
            "SELECT count(*) FROM profiles WHERE date = '2024-01-02'"
        ),
        0
    );
}

/// The `market` table (per minute and symbol, with the cross-section of all
/// symbols), the `betas` over the earlier dates and the market features,
/// by hand; backfill makes the market over every symbol whatever
/// `--symbols` says.
#[test]
fn market_buckets_betas_and_features_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    // Day 1: 40 minutes from 14:30Z; each symbol opens every minute at 100
    // (CCC at 50) and closes at :50; AAA moves by a, BBB by 2a, CCC never.
    let a = |m: u32| 0.001 * (f64::from((m * 7) % 5) - 2.0);
    let mut csv = String::from("ts,symbol,price,volume\n");
    for m in 0..40u32 {
        let (h, mi) = (14 + (30 + m) / 60, (30 + m) % 60);
        for (sym, open, close) in [
            ("AAA", 100.0, 100.0 * (1.0 + a(m))),
            ("BBB", 100.0, 100.0 * (1.0 + 2.0 * a(m))),
            ("CCC", 50.0, 50.0),
        ] {
            csv.push_str(&format!("2024-01-02T{h:02}:{mi:02}:10Z,{sym},{open},10\n"));
            csv.push_str(&format!("2024-01-02T{h:02}:{mi:02}:50Z,{sym},{close},30\n"));
        }
    }
    // Day 2, one minute: AAA +1% on double volume, BBB flat, CCC -1% on
    // half volume.
    csv.push_str(
        "2024-01-03T14:30:10Z,AAA,100,20\n\
         2024-01-03T14:30:50Z,AAA,101,60\n\
         2024-01-03T14:30:10Z,BBB,100,10\n\
         2024-01-03T14:30:50Z,BBB,100,30\n\
         2024-01-03T14:30:10Z,CCC,50,5\n\
         2024-01-03T14:30:50Z,CCC,49.5,15\n",
    );
    std::fs::write(dir.path().join("ticks.csv"), csv).unwrap();
    ok(
        dir.path(),
        &["ingest", "csv", "--lake", "lake", "ticks.csv"],
    );
    let q = queries().to_string_lossy().into_owned();
    ok(
        dir.path(),
        &[
            "backfill",
            "--lake",
            "lake",
            "--queries",
            &q,
            "--symbols",
            "BBB",
        ],
    );
    assert_eq!(
        sql_number(
            dir.path(),
            "lake",
            "SELECT count(*) FROM market WHERE date = '2024-01-02'"
        ),
        120,
        "every symbol's buckets, not just --symbols"
    );
    let rows = common::sql_json(
        dir.path(),
        "lake",
        "SELECT symbol, ticks, open, ret, volume, rel_volume, move_rank, symbols, ret_median, \
         ret_mean, ret_dispersion, rel_volume_median FROM market WHERE date = '2024-01-03' \
         ORDER BY symbol",
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    let f = |i: usize, k: &str| rows[i][k].as_f64().unwrap();
    let (ra, rb, rc) = ((101f64 / 100.0).ln(), 0.0, (49.5f64 / 50.0).ln());
    assert_eq!(
        (f(0, "ticks"), f(0, "open"), f(0, "volume")),
        (2.0, 100.0, 80.0)
    );
    assert_eq!(f(0, "ret"), ra);
    assert_eq!(f(2, "ret"), rc);
    for i in 0..3 {
        assert_eq!(f(i, "symbols"), 3.0);
        assert_eq!(f(i, "ret_median"), rb);
        assert!((f(i, "ret_mean") - (ra + rb + rc) / 3.0).abs() < 1e-17);
        // |ret - median|: ra, 0, |rc|: the median is the smaller of ra, |rc|.
        assert_eq!(f(i, "ret_dispersion"), ra.min(rc.abs()));
        // Day 1 traded 40 a minute: relative volumes 2, 1, 0.5.
        assert_eq!(f(i, "rel_volume_median"), 1.0);
    }
    assert_eq!(
        (f(0, "rel_volume"), f(1, "rel_volume"), f(2, "rel_volume")),
        (2.0, 1.0, 0.5)
    );
    // |rc| > ra: CCC moved most, BBB least.
    assert_eq!(
        (f(0, "move_rank"), f(1, "move_rank"), f(2, "move_rank")),
        (0.5, 0.0, 1.0)
    );

    // Betas of day 2 from day 1's 40 buckets, by hand.
    let (mut xs, mut ms) = (Vec::new(), Vec::new());
    for m in 0..40 {
        let (x_a, x_b) = ((1.0 + a(m)).ln(), (1.0 + 2.0 * a(m)).ln());
        xs.push((x_a, x_b));
        ms.push((x_a + x_b) / 3.0);
    }
    let n = 40.0;
    let mean_m = ms.iter().sum::<f64>() / n;
    let var_m: f64 = ms.iter().map(|m| (m - mean_m).powi(2)).sum();
    let beta = |pick: fn(&(f64, f64)) -> f64| {
        let mean_x = xs.iter().map(pick).sum::<f64>() / n;
        xs.iter()
            .zip(&ms)
            .map(|(x, m)| (pick(x) - mean_x) * (m - mean_m))
            .sum::<f64>()
            / var_m
    };
    let betas = common::sql_json(
        dir.path(),
        "lake",
        "SELECT symbol, buckets, beta FROM betas WHERE date = '2024-01-03' ORDER BY symbol",
    );
    assert_eq!(betas.len(), 3, "{betas:?}");
    let b = |i: usize| betas[i]["beta"].as_f64().unwrap();
    assert_eq!(betas[0]["buckets"].as_f64(), Some(40.0));
    assert!(
        (b(0) - beta(|x| x.0)).abs() < 1e-9,
        "{} {}",
        b(0),
        beta(|x| x.0)
    );
    assert!((b(1) - beta(|x| x.1)).abs() < 1e-9);
    assert!(b(2).abs() < 1e-12, "CCC never moves: {}", b(2));
    assert!(b(1) > 1.9 * b(0), "BBB moves twice as much as AAA");

    // The features of BBB's ticks on day 2 (backfilled for --symbols BBB).
    let feats = common::sql_json(
        dir.path(),
        "lake",
        "SELECT symbol, mkt_ret_1m, mkt_dispersion_1m, excess_ret_1m, excess_move_1m, \
         rel_volume_vs_mkt, move_rank_1m FROM features WHERE date = '2024-01-03' ORDER BY ts",
    );
    assert_eq!(feats.len(), 2, "{feats:?}");
    let mean = f(0, "ret_mean");
    for (i, row) in feats.iter().enumerate() {
        assert_eq!(row["symbol"], "BBB");
        assert_eq!(row["mkt_ret_1m"].as_f64(), Some(rb));
        assert_eq!(row["mkt_dispersion_1m"].as_f64(), Some(ra.min(rc.abs())));
        assert_eq!(row["excess_ret_1m"].as_f64(), Some(rb - b(1) * mean));
        // The tick's price against the bucket's open (both 100).
        assert_eq!(
            row["excess_move_1m"].as_f64(),
            Some(0.0 - b(1) * mean),
            "row {i}"
        );
        assert_eq!(row["rel_volume_vs_mkt"].as_f64(), Some(1.0));
        assert_eq!(row["move_rank_1m"].as_f64(), Some(0.0));
    }
}

/// Backfill runs the shipped bucket query natively (as the streaming
/// executor does); a bucket file that differs from it in any byte runs
/// through DataFusion. Both give the same `market`, `betas` and features,
/// value for value, on a simulated market.
#[test]
fn native_market_buckets_equal_the_sql_file() {
    let dir = tempfile::tempdir().unwrap();
    let sql_queries = dir.path().join("queries-sql");
    for sub in ["features", "market", "rules"] {
        std::fs::create_dir_all(sql_queries.join(sub)).unwrap();
        for e in std::fs::read_dir(queries().join(sub)).unwrap() {
            let path = e.unwrap().path();
            let mut text = std::fs::read_to_string(&path).unwrap();
            if sub == "market" {
                text.push_str("\n-- not the shipped bytes: planned by DataFusion\n");
            }
            std::fs::write(sql_queries.join(sub).join(path.file_name().unwrap()), text).unwrap();
        }
    }
    let sim = ["5", "4", "300", "1", "11"];
    common::simulate_backfill(dir.path(), "native", sim);
    common::simulate_backfill_with(dir.path(), "sql", sim, &sql_queries);
    for (table, order) in [
        ("market", "date, symbol, ts"),
        ("betas", "date, symbol"),
        ("profiles", "date, symbol, minute"),
    ] {
        let query = format!("SELECT * FROM {table} ORDER BY {order}");
        let native = common::sql_json(dir.path(), "native", &query);
        assert!(!native.is_empty(), "no {table} rows");
        assert_eq!(
            native,
            common::sql_json(dir.path(), "sql", &query),
            "{table}"
        );
    }
    // Each lake's features under its own catalog (the bucket file is part
    // of what names the snapshot).
    let features = |lake: &str, q: &Path| -> Vec<serde_json::Value> {
        let q = q.to_str().unwrap();
        let query = "SELECT * FROM features ORDER BY symbol, ts, seq";
        ok(
            dir.path(),
            &[
                "sql",
                "--lake",
                lake,
                "--queries",
                q,
                "--format",
                "json",
                query,
            ],
        )
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
    };
    let native = features("native", &queries());
    assert!(native.len() > 1000, "{} feature rows", native.len());
    assert_eq!(native, features("sql", &sql_queries));
}
