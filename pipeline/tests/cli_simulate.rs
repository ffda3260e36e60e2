//! `stockanomaly simulate`, `sql` and `demo` end to end.

mod common;

use common::{ok, run, sql_number};

const SIM: [&str; 7] = [
    "simulate",
    "--symbols",
    "8",
    "--days",
    "3",
    "--trades-per-day",
    "800",
];

#[test]
fn one_seed_gives_identical_lakes_and_another_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut lakes = Vec::new();
    for (name, seed) in [("a", "11"), ("b", "11"), ("c", "12")] {
        let lake = dir.path().join(name);
        let mut args = SIM.to_vec();
        args.extend(["--seed", seed, "--lake", lake.to_str().unwrap()]);
        ok(dir.path(), &args);
        lakes.push(common::files_under(&lake));
    }
    assert!(
        lakes[0].len() >= 6,
        "3 days of ticks and labels: {:?}",
        lakes[0].keys()
    );
    assert_eq!(lakes[0], lakes[1], "same seed, same bytes");
    assert_ne!(lakes[0], lakes[2], "another seed, another market");
}

#[test]
fn every_injected_kind_is_labelled_and_covers_ticks() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let out = ok(
        dir.path(),
        &[
            "simulate",
            "--symbols",
            "20",
            "--days",
            "5",
            "--trades-per-day",
            "1500",
            "--lake",
            &lake,
        ],
    );
    for kind in [
        "price_spike",
        "volume_burst",
        "pump_and_dump",
        "spoofing",
        "wash_trading",
        "marking_close",
        "quote_stuffing",
    ] {
        let n = sql_number(
            dir.path(),
            &lake,
            &format!("SELECT count(*) FROM labels WHERE kind = '{kind}'"),
        );
        assert!(n > 0, "no {kind} label:\n{out}");
        assert!(out.contains(kind), "summary lists {kind}:\n{out}");
    }
    // Every label interval holds at least one tick of its symbol.
    let empty = sql_number(
        dir.path(),
        &lake,
        "SELECT count(*) FROM labels l WHERE NOT EXISTS (SELECT 1 FROM ticks t WHERE t.symbol = l.symbol \
         AND t.ts BETWEEN l.start_ts AND l.end_ts)",
    );
    assert_eq!(empty, 0);
    // Every symbol is listed with its venue's clock.
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM symbols"),
        20
    );
    assert_eq!(
        sql_number(
            dir.path(),
            &lake,
            "SELECT count(*) FROM symbols WHERE NOT ((exchange = 'XNYS' AND timezone = 'America/New_York' \
             AND session_close = '16:00') OR (exchange = 'XNSE' AND timezone = 'Asia/Kolkata' \
             AND session_close = '15:30'))"
        ),
        0
    );
}

#[test]
fn sql_writes_csv_json_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let mut args = SIM.to_vec();
    args.extend(["--lake", &lake]);
    ok(dir.path(), &args);
    let q = "SELECT symbol, count(*) AS n FROM ticks GROUP BY symbol ORDER BY symbol";
    let csv = ok(dir.path(), &["sql", "--lake", &lake, "--format", "csv", q]);
    assert_eq!(csv.lines().count(), 9, "{csv}");
    assert!(csv.starts_with("symbol,n\n"));
    let json = ok(dir.path(), &["sql", "--lake", &lake, "--format", "json", q]);
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 8);
    let table = ok(dir.path(), &["sql", "--lake", &lake, q]);
    assert!(table.contains("| symbol"), "{table}");
    let pq = dir.path().join("out.parquet");
    ok(
        dir.path(),
        &[
            "sql",
            "--lake",
            &lake,
            "--format",
            "parquet",
            "--output",
            pq.to_str().unwrap(),
            q,
        ],
    );
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&pq).unwrap())
            .unwrap();
    use parquet::file::reader::FileReader;
    assert_eq!(reader.metadata().file_metadata().num_rows(), 8);

    // Bad queries and bad flags are usage errors (exit 2).
    let bad = run(
        dir.path(),
        &["sql", "--lake", &lake, "SELECT nope FROM ticks"],
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nope"));
    let bad = run(
        dir.path(),
        &["sql", "--lake", &lake, "--format", "parquet", q],
    );
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn sql_on_an_empty_lake_answers_zero() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        sql_number(dir.path(), "empty", "SELECT count(*) FROM ticks"),
        0
    );
    assert_eq!(
        sql_number(dir.path(), "empty", "SELECT count(*) FROM labels"),
        0
    );
}

#[test]
fn lake_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("envlake");
    let out = common::bin()
        .current_dir(dir.path())
        .env("STOCKANOMALY_LAKE", &lake)
        .args([
            "simulate",
            "--symbols",
            "1",
            "--days",
            "1",
            "--trades-per-day",
            "50",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(lake.join("ticks").is_dir());
}

#[test]
fn simulate_to_csv_round_trips_through_ingest() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("sim.csv");
    ok(
        dir.path(),
        &[
            "simulate",
            "--symbols",
            "3",
            "--days",
            "1",
            "--trades-per-day",
            "300",
            "--csv",
            csv.to_str().unwrap(),
        ],
    );
    let lake = dir.path().join("lake").display().to_string();
    let out = ok(
        dir.path(),
        &["ingest", "csv", "--lake", &lake, csv.to_str().unwrap()],
    );
    assert!(
        out.contains("canonical") && out.contains(" 0 rejected"),
        "{out}"
    );
    let lines = std::fs::read_to_string(&csv).unwrap().lines().count() as i64;
    assert_eq!(
        sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks"),
        lines - 1
    );
    assert!(dir.path().join("sim.csv.labels.csv").exists());
}

/// The metrics row of `name` in the demo's model-against-rules table.
fn pr_auc_of(stdout: &str, name: &str) -> f64 {
    let table = stdout
        .split("test split, model against the rules:")
        .nth(1)
        .unwrap_or_else(|| panic!("no comparison table in {stdout}"));
    let header: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("split "))
        .unwrap()
        .split_whitespace()
        .collect();
    let col = header.iter().position(|h| *h == "pr_auc").unwrap();
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} row in {table}"));
    row.split_whitespace().nth(col).unwrap().parse().unwrap()
}

#[test]
fn demo_runs_on_embedded_defaults_and_beats_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    // The demo's own defaults: what `make demo` prints.
    let out = ok(dir.path(), &["demo"]);
    assert!(out.contains("== 2. what the lake holds"), "{out}");
    assert!(
        out.contains("== 3. backfill") && out.contains("8 dates computed"),
        "{out}"
    );
    assert!(out.contains("(normal)"), "{out}");
    assert!(out.contains("== 4. train"), "{out}");
    assert!(
        dir.path().join("parquet/ticks").is_dir(),
        "the default lake is ./parquet"
    );
    assert!(dir.path().join("parquet/features").is_dir());
    let artifacts: Vec<_> = std::fs::read_dir(dir.path().join("model/artifacts"))
        .unwrap()
        .collect();
    assert_eq!(artifacts.len(), 1);
    let artifact = artifacts[0].as_ref().unwrap().path();
    for f in ["model.json", "manifest.json", "report.html"] {
        assert!(artifact.join(f).is_file(), "{f} missing");
    }
    assert!(out.contains("report.html"), "{out}");

    // On the held-out day, the model beats the prototype's |z| > 4 rule by a
    // wide margin.
    let model = pr_auc_of(&out, "model");
    let rule = pr_auc_of(&out, "rule:zscore_4");
    assert!(
        model >= rule + 0.25 && model >= 2.0 * rule,
        "model PR-AUC {model} vs rule {rule}:\n{out}"
    );

    // And the market context lifts it above the per-symbol files alone on
    // the same day (the demo's market holds shocks and swings).
    let line = out
        .lines()
        .find(|l| l.starts_with("test PR-AUC with market context"))
        .unwrap_or_else(|| panic!("no context comparison in {out}"));
    let number_after = |marker: &str| -> f64 {
        let rest = &line[line
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} in {line}"))
            + marker.len()..];
        rest.split_whitespace()
            .next()
            .unwrap()
            .trim_end_matches(',')
            .parse()
            .unwrap()
    };
    let (with, without) = (number_after("): "), number_after("same days: "));
    assert_eq!(with, model, "{line}");
    assert!(with > without + 0.01, "{line}");
}

/// `stockanomaly sql ... | head -1`: the reader goes away after one line;
/// the command ends as `cat` would (SIGPIPE), not with a panic and a
/// backtrace on stderr.
#[test]
fn sql_into_a_closed_pipe_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let mut child = common::bin()
        .current_dir(dir.path())
        .args([
            "sql",
            "--lake",
            "lake",
            "--format",
            "json",
            "SELECT value FROM range(5000000)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"value\":0"), "{first}");
    // The reader (and its end of the pipe) is gone now.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        out.status.signal(),
        Some(13),
        "ended by SIGPIPE: {:?}",
        out.status
    );
}
