//! `stockanomaly ingest csv` end to end: every layout, rejects, strictness.

mod common;

use common::{fixture, ok, run, sql_number};

fn lake(dir: &tempfile::TempDir) -> String {
    dir.path().join("lake").display().to_string()
}

#[test]
fn annotated_file_gives_exactly_its_rows_and_anomalies() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let f = fixture("annotated.csv");
    let out = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, f.to_str().unwrap()],
    );
    assert!(out.contains("seed-annotated"), "{out}");
    assert!(out.contains("12 ticks, 2 labels, 0 rejected"), "{out}");
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks"),
        12
    );
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM labels"),
        2
    );
    // The labels are the anomaly rows, as zero-length intervals.
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM labels l JOIN ticks t ON t.symbol = l.symbol AND t.ts = l.start_ts \
             WHERE l.start_ts = l.end_ts AND l.kind = 'annotated' AND t.symbol = 'TSLA'"
        ),
        2
    );
    // price is the close; open/high/low are kept.
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM ticks WHERE symbol = 'TSLA' AND price = 261.5 AND high = 262.0 \
             AND ts = to_timestamp_millis(1704205860000)"
        ),
        1
    );
    // Ingesting the same file again adds nothing: files are content-addressed.
    let again = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, f.to_str().unwrap()],
    );
    assert!(
        again.contains("0 files written, 2 already present"),
        "{again}"
    );
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks"),
        12
    );
}

#[test]
fn broken_lines_are_reported_with_number_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let input = dir.path().join("broken.csv");
    std::fs::copy(fixture("broken.csv"), &input).unwrap();
    let out = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, input.to_str().unwrap()],
    );
    assert!(
        out.contains("12 rows, 2 ticks, 1 labels, 10 rejected"),
        "{out}"
    );
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks"),
        2
    );
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM labels"),
        1
    );

    let rejects = std::fs::read_to_string(dir.path().join("broken.csv.rejects.csv")).unwrap();
    let mut rows = csv::Reader::from_reader(rejects.as_bytes());
    let got: Vec<(u64, String, String)> = rows
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[1].parse().unwrap(), r[2].to_owned(), r[3].to_owned())
        })
        .collect();
    let want = [
        (3, "non_finite_price"),
        (4, "negative_volume"),
        (5, "malformed"),
        (6, "wrong_schema"),
        (7, "invalid_symbol"),
        (8, "high_below_low"),
        (9, "malformed"),
        (10, "malformed"),
        (11, "empty_symbol"),
        (12, "timestamp_too_old"),
    ];
    assert_eq!(got.len(), want.len(), "{rejects}");
    for ((line, reason, detail), (wl, wr)) in got.iter().zip(want) {
        assert_eq!((*line, reason.as_str()), (wl, wr), "{detail}");
        assert!(!detail.is_empty());
    }
    assert!(
        got[2].2.contains("\"12,5O\""),
        "the detail quotes the bad value: {}",
        got[2].2
    );
}

#[test]
fn strict_stops_at_the_first_bad_row() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let f = fixture("broken.csv");
    let out = run(
        dir.path(),
        &[
            "ingest",
            "csv",
            "--strict",
            "--lake",
            &lake,
            f.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("non_finite_price"),
        "{err}"
    );
}

#[test]
fn seed_history_layout_without_header() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let f = fixture("history.csv");
    let out = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, f.to_str().unwrap()],
    );
    assert!(
        out.contains("seed-history") && out.contains("6 ticks"),
        "{out}"
    );
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM ticks WHERE open IS NOT NULL AND price = 478.66"
        ),
        1
    );
}

#[test]
fn nse_bhavcopy_with_trailing_comma_closes_at_1530_ist() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let f = fixture("bhavcopy.csv");
    let out = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, f.to_str().unwrap()],
    );
    assert!(
        out.contains("nse-bhavcopy") && out.contains("4 ticks"),
        "{out}"
    );
    // 15:30 in Kolkata is 10:00 UTC.
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM ticks WHERE ts = TIMESTAMP '2024-01-01T10:00:00Z' AND date = '2024-01-01'"
        ),
        4
    );
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM ticks WHERE symbol IN ('M&M', 'BAJAJ-AUTO', 'IDEA.BE')"
        ),
        3
    );
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT CAST(volume AS BIGINT) FROM ticks WHERE symbol = 'RELIANCE'"
        ),
        4_518_233
    );
    // Listed on NSE: the symbols table gives them Kolkata's clock.
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM symbols WHERE exchange = 'XNSE' AND timezone = 'Asia/Kolkata' \
             AND session_close = '15:30'"
        ),
        4
    );
}

#[test]
fn exchange_flag_lists_the_symbols_and_refuses_unknown_codes() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let f = fixture("canonical.csv");
    ok(
        dir.path(),
        &[
            "ingest",
            "csv",
            "--lake",
            &lake,
            "--exchange",
            "XLON",
            f.to_str().unwrap(),
        ],
    );
    let symbols = sql_number(
        dir.path(),
        &lake,
        "SELECT count(DISTINCT symbol) FROM ticks",
    );
    assert!(symbols > 0);
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM symbols WHERE exchange = 'XLON' AND timezone = 'Europe/London'"
        ),
        symbols
    );
    let out = common::run(
        dir.path(),
        &[
            "ingest",
            "csv",
            "--lake",
            &lake,
            "--exchange",
            "MARS",
            f.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown exchange \"MARS\"") && err.contains("XNSE"),
        "{err}"
    );
}

#[test]
fn canonical_layout_with_quotes_ties_and_mixed_time_formats() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let f = fixture("canonical.csv");
    let out = ok(
        dir.path(),
        &[
            "ingest",
            "csv",
            "--format",
            "canonical",
            "--lake",
            &lake,
            f.to_str().unwrap(),
        ],
    );
    assert!(
        out.contains("5 ticks") && out.contains("0 rejected"),
        "{out}"
    );
    // Two AAPL ticks share a timestamp: the key's seq tells them apart.
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT max(seq) FROM ticks WHERE symbol = 'AAPL'"
        ),
        1
    );
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM ticks WHERE bid IS NULL"
        ),
        1
    );
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM ticks WHERE symbol = 'MSFT' AND ts = TIMESTAMP '2024-01-02T14:30:01.5Z'"
        ),
        1
    );
}

#[test]
fn unknown_layout_is_a_usage_error_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mystery.csv");
    std::fs::write(&input, "a,b,c\n1,2,3\n").unwrap();
    let out = run(
        dir.path(),
        &["ingest", "csv", "--lake", "lake", input.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mystery.csv") && err.contains("--format"),
        "{err}"
    );

    let out = run(
        dir.path(),
        &["ingest", "csv", "--lake", "lake", "missing.csv"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.csv: no such file"));
}

#[test]
fn the_shipped_sample_ingests_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let lake = lake(&dir);
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sample-trades.csv");
    let out = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, sample.to_str().unwrap()],
    );
    assert!(
        out.contains("canonical") && out.contains(" 0 rejected"),
        "{out}"
    );
    let rows = std::fs::read_to_string(&sample).unwrap().lines().count() as i64 - 1;
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks"),
        rows
    );
}
