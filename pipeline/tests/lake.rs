//! The Parquet lake: atomic, content-addressed appends; local, memory and S3
//! roots; files that other tools read back row for row.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
use stockanomaly::lake::{session_context, Appender, AppenderOptions, LakeRoot, TableSpec};
use stockanomaly::tick::{TickBuilder, TickRecord, Validator};

use common::{ok, service_env, sql_number};

const T0: i64 = 1_704_205_800_000_000; // 2024-01-02T14:30:00Z
const DAY: i64 = 86_400_000_000;

fn ticks(n: usize, day_offset: i64) -> RecordBatch {
    let mut b = TickBuilder::with_validator("test", Validator::with_now(T0 + 100 * DAY));
    let symbols = ["ZZZ", "AAA", "MMM"];
    for i in 0..n {
        let ts = T0 + day_offset * DAY + (i as i64 / 3) * 1_000_000;
        b.push(&TickRecord::trade(
            ts,
            symbols[i % 3],
            100.0 + i as f64,
            1.0 + i as f64,
        ))
        .unwrap();
    }
    b.finish()
}

async fn count(root: &LakeRoot, sql: &str) -> i64 {
    let ctx = session_context(root).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

#[tokio::test]
async fn appends_are_sorted_partitioned_and_never_rewrite() {
    let dir = tempfile::tempdir().unwrap();
    let root = LakeRoot::parse(dir.path().to_str().unwrap()).unwrap();
    let mut a = Appender::new(root.clone(), TableSpec::ticks(), AppenderOptions::default());
    a.append(ticks(30, 0)).await.unwrap();
    a.append(ticks(9, 1)).await.unwrap();
    let stats = a.finish().await.unwrap();
    assert_eq!(
        (stats.rows, stats.files_written, stats.files_existing),
        (39, 2, 0)
    );

    let files = common::files_under(dir.path());
    let names: Vec<&String> = files.keys().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("ticks/date=2024-01-02/part-") && names[0].ends_with(".parquet"));
    assert!(names[1].starts_with("ticks/date=2024-01-03/part-"));

    // Rows inside a file are sorted by the tick key.
    let ctx = session_context(&root).await.unwrap();
    let batches = ctx
        .sql("SELECT symbol, ts FROM ticks WHERE date = '2024-01-02'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut keys = Vec::new();
    for b in &batches {
        let s = b.column(0).as_string::<i32>();
        let t = b.column(1).as_primitive::<TimestampMicrosecondType>();
        keys.extend((0..b.num_rows()).map(|i| (s.value(i).to_owned(), t.value(i))));
    }
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    // The same rows again: nothing written, existing files untouched.
    let mtimes: Vec<_> = walk_mtimes(dir.path());
    let mut again = Appender::new(root.clone(), TableSpec::ticks(), AppenderOptions::default());
    again.append(ticks(30, 0)).await.unwrap();
    let stats = again.finish().await.unwrap();
    assert_eq!((stats.files_written, stats.files_existing), (0, 1));
    assert_eq!(walk_mtimes(dir.path()), mtimes);
    assert_eq!(count(&root, "SELECT count(*) FROM ticks").await, 39);
}

fn walk_mtimes(dir: &Path) -> Vec<(String, std::time::SystemTime)> {
    common::files_under(dir)
        .keys()
        .map(|k| {
            (
                k.clone(),
                std::fs::metadata(dir.join(k)).unwrap().modified().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_crashed_write_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let root = LakeRoot::parse(dir.path().to_str().unwrap()).unwrap();
    let mut a = Appender::new(root.clone(), TableSpec::ticks(), AppenderOptions::default());
    a.append(ticks(12, 0)).await.unwrap();
    a.finish().await.unwrap();
    // What a crash in the middle of a put leaves behind: the store's staging
    // file with a partial write (object_store names it `<final>#<n>`).
    let part = dir.path().join("ticks/date=2024-01-02");
    let full = std::fs::read_dir(&part)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&full).unwrap();
    let staging = part.join("part-deadbeef.parquet#1");
    std::fs::write(&staging, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(count(&root, "SELECT count(*) FROM ticks").await, 12);
    // And the next append still works beside it.
    let mut b = Appender::new(root.clone(), TableSpec::ticks(), AppenderOptions::default());
    b.append(ticks(3, 2)).await.unwrap();
    b.finish().await.unwrap();
    assert_eq!(count(&root, "SELECT count(*) FROM ticks").await, 15);
}

#[tokio::test]
async fn small_file_limits_split_a_day_into_several_files() {
    let root = LakeRoot::parse("memory://lake-split").unwrap();
    let options = AppenderOptions {
        max_rows_per_file: 10,
        max_buffered_rows: 15,
        row_group_rows: 4,
        float_dictionary: true,
    };
    let mut a = Appender::new(root.clone(), TableSpec::ticks(), options);
    for _ in 0..5 {
        a.append(ticks(9, 0)).await.unwrap();
    }
    let stats = a.finish().await.unwrap();
    assert_eq!(stats.rows, 45);
    // Flushed at 18, 18 and 9 rows; more than 10 rows are cut into files
    // of about equal size: 9 + 9, 9 + 9, 9. Equal content hashes to one file.
    assert!(stats.files_written >= 2, "{stats:?}");
    assert_eq!(
        stats.files_written + stats.files_existing,
        5,
        "18 + 18 + 9 rows in files of at most 10: {stats:?}"
    );
}

#[tokio::test]
async fn memory_roots_are_shared_by_name() {
    let root = LakeRoot::parse("memory://lake-mem/prefix").unwrap();
    let mut a = Appender::new(root, TableSpec::ticks(), AppenderOptions::default());
    a.append(ticks(6, 0)).await.unwrap();
    a.finish().await.unwrap();
    let same = LakeRoot::parse("memory://lake-mem/prefix").unwrap();
    assert_eq!(count(&same, "SELECT count(*) FROM ticks").await, 6);
    let other = LakeRoot::parse("memory://lake-mem/elsewhere").unwrap();
    assert_eq!(count(&other, "SELECT count(*) FROM ticks").await, 0);
    assert_eq!(count(&same, "SELECT count(*) FROM labels").await, 0);
}

#[test]
fn s3_root_holds_the_same_lake_as_a_local_folder() {
    let endpoint = service_env("STOCKANOMALY_TEST_S3_ENDPOINT");
    let bucket = format!("lake-{}", std::process::id());
    common::create_bucket(&endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    let s3 = format!("s3://{bucket}/some/prefix");
    let local = dir.path().join("local").display().to_string();
    let sim = [
        "simulate",
        "--symbols",
        "3",
        "--days",
        "2",
        "--trades-per-day",
        "300",
        "--seed",
        "5",
    ];
    let with_s3 = |args: &[&str]| common::ok_s3(dir.path(), &endpoint, &[], args);
    let mut a: Vec<&str> = sim.to_vec();
    a.extend(["--lake", &s3]);
    with_s3(&a);
    let mut b: Vec<&str> = sim.to_vec();
    b.extend(["--lake", &local]);
    ok(dir.path(), &b);
    let q = "SELECT symbol, seq, CAST(ts AS BIGINT) AS ts, price, volume, bid, ask, date FROM ticks ORDER BY symbol, ts, seq";
    let from_s3 = with_s3(&["sql", "--lake", &s3, "--format", "csv", q]);
    let from_local = ok(dir.path(), &["sql", "--lake", &local, "--format", "csv", q]);
    assert!(from_s3.lines().count() > 100, "{from_s3}");
    assert_eq!(from_s3, from_local);
    let labels = "SELECT * FROM labels ORDER BY symbol, start_ts";
    assert_eq!(
        with_s3(&["sql", "--lake", &s3, "--format", "csv", labels]),
        ok(
            dir.path(),
            &["sql", "--lake", &local, "--format", "csv", labels]
        )
    );
}

#[tokio::test]
async fn other_tools_read_the_lake_row_for_row() {
    let python = service_env("STOCKANOMALY_TEST_PYTHON");
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    ok(
        dir.path(),
        &[
            "simulate",
            "--lake",
            lake.to_str().unwrap(),
            "--symbols",
            "4",
            "--days",
            "2",
            "--trades-per-day",
            "400",
            "--seed",
            "9",
        ],
    );
    let root = LakeRoot::parse(lake.to_str().unwrap()).unwrap();
    let ctx = session_context(&root).await.unwrap();
    let batches = ctx
        .sql("SELECT symbol, CAST(ts AS BIGINT) AS ts_us, seq, price, volume, bid, ask_size, date FROM ticks ORDER BY symbol, ts_us, seq")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut ours = Vec::new();
    for b in &batches {
        let sym = b.column(0).as_string::<i32>();
        let ts = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let seq = b.column(2).as_primitive::<UInt32Type>();
        let f = |c: usize, i: usize| {
            let a = b.column(c).as_primitive::<Float64Type>();
            if a.is_null(i) {
                serde_json::Value::Null
            } else {
                serde_json::json!(a.value(i))
            }
        };
        let date = b.column(7).as_string::<i32>();
        for i in 0..b.num_rows() {
            ours.push(serde_json::json!([
                sym.value(i),
                ts.value(i),
                seq.value(i),
                f(3, i),
                f(4, i),
                f(5, i),
                f(6, i),
                date.value(i)
            ]));
        }
    }
    assert!(ours.len() > 1000);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/read_lake.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(lake.join("ticks"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: BTreeMap<String, Vec<serde_json::Value>> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        theirs.keys().cloned().collect::<Vec<_>>(),
        ["duckdb", "polars", "pyarrow"]
    );
    for (tool, rows) in theirs {
        assert_eq!(rows.len(), ours.len(), "{tool}: row count");
        for (i, (a, b)) in rows.iter().zip(&ours).enumerate() {
            assert_eq!(a, b, "{tool}: row {i} differs");
        }
    }
}

#[test]
fn sql_counts_agree_with_the_simulation_summary() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let out = ok(
        dir.path(),
        &[
            "simulate",
            "--lake",
            &lake,
            "--symbols",
            "2",
            "--days",
            "1",
            "--trades-per-day",
            "500",
        ],
    );
    let reported: i64 = out
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(|s| s.replace(',', "").parse().unwrap())
        .unwrap();
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks"),
        reported
    );
}
