//! The feature catalog: the shipped pack passes, and every kind of broken
//! file is refused with a located message.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use stockanomaly::features::{Catalog, Lookback};

fn queries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries")
}

#[tokio::test]
async fn shipped_pack_passes_with_its_lookback() {
    let c = Catalog::load(&queries())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let names = c.feature_names();
    for want in [
        "ret_1",
        "ret_5m",
        "vol_5m",
        "drift_z_5m",
        "ret_ewm_z",
        "jump_30m",
        "volume_z_30m",
        "price_z_30m",
        "vwap_dev_30m",
        "range_ratio",
        "spread_bps",
        "tick_rate_1m",
        "tod_sin",
        "tod_cos",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let returns = c.files().iter().find(|f| f.name == "returns").unwrap();
    // 30-minute windows (jump_30m) and a 200-tick EWMA over ret_1, which
    // needs one more tick.
    assert_eq!(
        returns.lookback(),
        Lookback {
            time: Duration::from_secs(1800),
            rows: 201
        }
    );
    assert_eq!(
        c.lookback(),
        Lookback {
            time: Duration::from_secs(1800),
            rows: 201
        }
    );
    assert_eq!(c.hash().len(), 16);
    let embedded = Catalog::embedded().await.unwrap();
    assert_eq!(
        embedded.hash(),
        c.hash(),
        "the built-in pack is the queries/features folder"
    );
}

async fn errors_of(files: &[(&str, &str)]) -> String {
    let sources = files
        .iter()
        .map(|(n, s)| (PathBuf::from(n), s.to_string()))
        .collect();
    match Catalog::from_sources(sources).await {
        Ok(_) => panic!("{files:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

const GOOD: &str = "SELECT symbol, ts, seq, price * 2 AS double_price FROM ticks";

#[tokio::test]
async fn each_broken_kind_is_refused_with_file_and_line() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("syntax.sql", "-- name: x\nSELECT symbol, ts, seq,\n  price AS p,,\nFROM ticks", &["syntax.sql: line 3, column"]),
        ("eof.sql", "SELECT symbol, ts, seq,\n  price AS p\nFROM ticks WHERE", &["eof.sql: line 3", "EOF"]),
        ("nokey.sql", "SELECT symbol, ts, price AS p FROM ticks", &["nokey.sql", "key column `seq`"]),
        ("text.sql", "SELECT symbol, ts, seq, upper(symbol) AS loud FROM ticks", &["feature `loud`", "numeric"]),
        (
            "future.sql",
            "SELECT symbol, ts, seq,\n  avg(price) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN CURRENT ROW AND 5 FOLLOWING) AS f\nFROM ticks",
            &["future.sql: line 2", "later ticks"],
        ),
        (
            "months.sql",
            "SELECT symbol, ts, seq,\n  avg(price) OVER (PARTITION BY symbol ORDER BY ts\n    RANGE BETWEEN 300000 PRECEDING AND CURRENT ROW) AS f\nFROM ticks",
            &["months.sql: line 3", "INTERVAL"],
        ),
        (
            "unbounded.sql",
            "SELECT symbol, ts, seq,\n  sum(volume) OVER (PARTITION BY symbol ORDER BY ts ROWS UNBOUNDED PRECEDING) AS f\nFROM ticks",
            &["unbounded.sql: line 2", "UNBOUNDED PRECEDING"],
        ),
        (
            "default_frame.sql",
            "SELECT symbol, ts, seq, avg(price) OVER (PARTITION BY symbol ORDER BY ts) AS f FROM ticks",
            &["default_frame.sql", "without bound"],
        ),
        (
            "lead.sql",
            "SELECT symbol, ts, seq, lead(price) OVER (PARTITION BY symbol ORDER BY ts) AS f FROM ticks",
            &["lead.sql: line 1", "later ticks"],
        ),
        (
            "rownum.sql",
            "SELECT symbol, ts, seq, CAST(row_number() OVER (PARTITION BY symbol ORDER BY ts) AS DOUBLE) AS f FROM ticks",
            &["rownum.sql", "where the history starts"],
        ),
        (
            "drift.sql",
            "SELECT symbol, ts, seq,\n  avg(price) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 20 PRECEDING AND CURRENT ROW) AS f\nFROM ticks",
            &["drift.sql: line 2", "retracting floating-point"],
        ),
        ("header.sql", "-- lookback: 3 fortnights\nSELECT 1", &["header.sql: line 1", "fortnights"]),
        (
            "beyond.sql",
            "-- delay: 2 ticks\nSELECT symbol, ts, seq,\n  lead(price, 3) OVER (PARTITION BY symbol ORDER BY ts, seq) AS f FROM ticks",
            &["beyond.sql: line 3", "reads 3 later ticks, beyond the header's `-- delay: 2 ticks`"],
        ),
        (
            "range_ahead.sql",
            "-- delay: 5 ticks\nSELECT symbol, ts, seq,\n  min(price) OVER (PARTITION BY symbol ORDER BY ts RANGE BETWEEN CURRENT ROW AND INTERVAL '1 minute' FOLLOWING) AS f FROM ticks",
            &["range_ahead.sql: line 3", "without a bound in ticks"],
        ),
        ("minutes.sql", "-- delay: 2 minutes\nSELECT 1", &["minutes.sql: line 1", "number of ticks"]),
    ];
    for (file, sql, wants) in cases {
        let err = errors_of(&[(file, sql)]).await;
        for want in *wants {
            assert!(err.contains(want), "{file}: {want:?} not in:\n{err}");
        }
    }
}

/// A file with `-- delay: N ticks` may read up to N later ticks (stacked
/// leads add up); the catalog's delay is the largest declared.
#[tokio::test]
async fn delayed_confirmation_is_accepted_within_its_delay() {
    let sql = "-- delay: 4 ticks\nWITH l AS (SELECT symbol, ts, seq, \
               lead(price, 2) OVER (PARTITION BY symbol ORDER BY ts, seq) AS p2 FROM ticks)\n\
               SELECT symbol, ts, seq, lead(p2, 2) OVER (PARTITION BY symbol ORDER BY ts, seq) AS p4 FROM l";
    let c = Catalog::from_sources(vec![
        (PathBuf::from("ahead.sql"), sql.into()),
        (PathBuf::from("a.sql"), GOOD.into()),
    ])
    .await
    .unwrap();
    assert_eq!(c.delay(), 4);
    let ahead = c.files().iter().find(|f| f.name == "ahead").unwrap();
    assert_eq!((ahead.delay, ahead.derived_ahead), (4, 4));
    // Declared 3 while the leads stack to 4: refused.
    let err = errors_of(&[("short.sql", &sql.replace("4 ticks", "3 ticks"))]).await;
    assert!(err.contains("reads 4 later ticks"), "{err}");
}

#[tokio::test]
async fn duplicate_features_name_both_files() {
    let err = errors_of(&[("a.sql", GOOD), ("b.sql", GOOD)]).await;
    assert!(
        err.contains("b.sql") && err.contains("also defined in a.sql"),
        "{err}"
    );
}

#[tokio::test]
async fn the_hash_follows_the_content() {
    let one = Catalog::from_sources(vec![(PathBuf::from("a.sql"), GOOD.into())])
        .await
        .unwrap();
    let same = Catalog::from_sources(vec![(PathBuf::from("a.sql"), GOOD.into())])
        .await
        .unwrap();
    let other = Catalog::from_sources(vec![(PathBuf::from("a.sql"), format!("{GOOD} "))])
        .await
        .unwrap();
    assert_eq!(one.hash(), same.hash());
    assert_ne!(one.hash(), other.hash());
    assert_eq!(one.feature_names(), ["double_price"]);
}

#[test]
fn features_check_exits_2_on_a_broken_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run(dir.path(), &["features", "check"]);
    assert!(
        out.status.success(),
        "the built-in pack outside a checkout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok: 9 files"), "{stdout}");
    assert!(
        stdout.contains("streaming: 9 of 9 files incremental"),
        "{stdout}"
    );

    // A file streaming cannot run incrementally is named with its line.
    std::fs::create_dir_all(dir.path().join("r/features")).unwrap();
    std::fs::write(
        dir.path().join("r/features/rows.sql"),
        "SELECT symbol, ts, seq,\n max(price) OVER (PARTITION BY symbol ORDER BY ts, seq \
         ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS m FROM ticks",
    )
    .unwrap();
    let out = common::ok(dir.path(), &["features", "--queries", "r", "check"]);
    assert!(
        out.contains("not incremental: r/features/rows.sql:2:2: max over a ROWS frame")
            && out.contains("streaming: 0 of 1 files incremental"),
        "{out}"
    );

    std::fs::create_dir_all(dir.path().join("q/features")).unwrap();
    std::fs::write(
        dir.path().join("q/features/bad.sql"),
        "SELECT symbol, ts, seq,\n lead(price) OVER (ORDER BY ts) AS f FROM ticks",
    )
    .unwrap();
    let out = common::run(dir.path(), &["features", "--queries", "q", "check"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.sql: line 2"), "{err}");

    let out = common::ok(dir.path(), &["features", "explain"]);
    assert!(
        out.contains("lookback") && out.contains("WindowAggr"),
        "{out}"
    );
}
