//! `stockanomaly bench --feeds` end to end with tiny counts, against the
//! PostgreSQL server the test command starts: a figure for every feed and for
//! COPY and INSERT, nothing of the benchmark's left in `ticks` afterwards.
//! Figures are checked to be printed and positive, never against targets.

mod common;

use std::process::Output;

use common::{bin, TestDb};

const SOURCE: &str = "stockanomaly-bench";

fn bench(args: &[&str], url: Option<&str>) -> Output {
    let mut c = bin();
    c.env_remove("DATABASE_URL")
        .args([
            "bench",
            "--feeds",
            "--ticks",
            "3000",
            "--insert-rows",
            "300",
        ])
        .args(args);
    if let Some(url) = url {
        c.args(["--database-url", url]);
    }
    c.output()
        .unwrap_or_else(|e| panic!("cannot run stockanomaly: {e}"))
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "bench --feeds failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rate before `unit` (`ticks/s`, `rows/s`) on the line starting with
/// `label`: `950`, `12.3k`, `2.41M`.
fn rate(out: &str, label: &str, unit: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line starting with {label:?} in:\n{out}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == unit)
        .unwrap_or_else(|| panic!("no {unit:?} in {line:?}"));
    let figure = words[at - 1];
    let (number, scale) = match figure.as_bytes().last() {
        Some(b'M') => (&figure[..figure.len() - 1], 1e6),
        Some(b'k') => (&figure[..figure.len() - 1], 1e3),
        _ => (figure, 1.0),
    };
    number
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("{figure:?} in {line:?} is not a rate: {e}"))
        * scale
}

const FEEDS: [&str; 4] = [
    "alpaca, trades only",
    "alpaca, trades + quotes",
    "polygon, trades + quotes",
    "finnhub, trades",
];

#[tokio::test(flavor = "multi_thread")]
async fn bench_feeds_prints_every_rate_and_leaves_no_rows() {
    let db = TestDb::new("bench_feeds").await;
    let out = stdout_of(&bench(&[], Some(&db.url)));
    for feed in FEEDS {
        assert!(rate(&out, feed, "ticks/s") > 0.0, "{feed}:\n{out}");
    }
    assert!(out.contains("3,000 ticks"), "{out}");
    assert!(rate(&out, "COPY ", "rows/s") > 0.0, "{out}");
    assert!(rate(&out, "INSERT ", "rows/s") > 0.0, "{out}");
    assert!(out.contains("COPY / INSERT: "), "{out}");
    assert!(out.contains("one transaction"), "{out}");
    assert!(
        out.contains(
            "cleaned up: 3,000 stockanomaly-bench rows deleted, partition ticks_20000103 dropped"
        ),
        "{out}"
    );
    assert!(!out.contains(&db.url), "the URL is never printed: {out}");

    let c = db.client().await;
    let left: i64 = c
        .query_one("SELECT count(*) FROM ticks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "rows remain in ticks");
    let partition: bool = c
        .query_one("SELECT to_regclass('ticks_20000103') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!partition, "the benchmark's partition remains");
}

#[test]
fn bench_feeds_without_a_database_skips_the_load_and_says_why() {
    let out = stdout_of(&bench(&[], None));
    for feed in FEEDS {
        assert!(rate(&out, feed, "ticks/s") > 0.0, "{feed}:\n{out}");
    }
    assert!(
        out.contains("postgres load: skipped, no database URL"),
        "{out}"
    );
    assert!(!out.contains("rows/s"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_feeds_leaves_a_day_with_other_ticks_alone_and_clears_its_leftovers() {
    let db = TestDb::new("bench_feeds_busy").await;
    let mut c = db.client().await;
    stockanomaly::sinks::postgres::migrate(&mut c)
        .await
        .unwrap();
    // A leftover of an interrupted run, then someone else's tick of the day.
    for (symbol, source) in [("AAPL", SOURCE), ("MSFT", "alpaca")] {
        c.execute(
            "INSERT INTO ticks (symbol, ts, seq, price, volume, source) \
             VALUES ($1, '2000-01-03T15:00:00Z', 0, 10.0, 1.0, $2)",
            &[&symbol, &source],
        )
        .await
        .unwrap();
    }
    let out = bench(&[], Some(&db.url));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "table ticks already holds ticks of 2000-01-03 not written by the benchmark (1)"
        ),
        "{stderr}"
    );
    let rows: Vec<(String, String)> = c
        .query("SELECT symbol, source FROM ticks", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [("MSFT".to_owned(), "alpaca".to_owned())]);
}
