//! `stockanomaly detect` against what a long-running deployment meets, on
//! the real broker and PostgreSQL: offsets that no longer exist, a lake
//! without the context tables the feature files read, a database that stops
//! answering, secondary sinks that fail, and client options for secured
//! brokers. Each test fails on the detector before its fix.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ok, queries, service_env, TestDb};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}

/// `detect` with the rules only (no model to train) until idle.
fn detect_args(lake: &str, topic: &str, group: &str, url: &str, extra: &[&str]) -> Vec<String> {
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let q = queries();
    let mut args: Vec<String> = [
        "detect",
        "--lake",
        lake,
        "--queries",
        q.to_str().unwrap(),
        "--rules",
        "--source",
        &format!("kafka://{brokers}/{topic}"),
        "--group",
        group,
        "--database-url",
        url,
        "--idle-timeout-ms",
        "300",
        "--exit-when-idle",
        "4",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Runs the binary; returns (success, stdout, stderr).
fn run(dir: &Path, args: &[String]) -> (bool, String, String) {
    let out = common::bin()
        .current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number before `what` in a `detect:` summary line.
fn summary_number(out: &str, what: &str) -> i64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("detect: ") && l.contains(what))
        .unwrap_or_else(|| panic!("no summary with {what:?} in {out}"));
    let before = &line[..line.find(what).unwrap()];
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line}"))
}

/// The topic was recreated (tansu, the test broker, has no DeleteRecords,
/// the other way offsets vanish): the stored offsets point past the new
/// topic's end. The detector used to seek there, be reset to the first
/// offset, and skip every message of the partition (the `o == last + 1`
/// check) without a word. Now the gap is logged with the offsets, counted,
/// and the partition resumes from what exists: every tick is emitted.
#[tokio::test]
async fn an_offset_gap_resumes_from_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake, ["2", "2", "300", "2", "71"]);
    let days: Vec<String> = common::sql_json(
        dir.path(),
        &lake,
        "SELECT DISTINCT date FROM ticks ORDER BY date",
    )
    .iter()
    .map(|v| v["date"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(days.len(), 2);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("gap");
    let produce = |from: &str, to: &str| {
        ok(
            dir.path(),
            &[
                "produce",
                "--lake",
                &lake,
                "--topic",
                &topic,
                "--brokers",
                &brokers,
                "--partitions",
                "1",
                "--from",
                from,
                "--to",
                to,
            ],
        )
    };
    // The first incarnation of the topic holds both days, and a detector
    // of the group stored its positions near their end.
    produce(&days[0], &days[1]);
    let total = common::sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks");
    let (warm, next) = (total - 60, total - 10);
    let db = TestDb::new("gap").await;
    ok(dir.path(), &["db", "migrate", "--database-url", &db.url]);
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO detector_offsets (consumer_group, topic, partition, next_offset, \
             warmup_offset) VALUES ($1, $2, 0, $3, $4)",
            &[&"gap", &topic, &next, &warm],
        )
        .await
        .unwrap();
    // The topic is deleted and made again, with the second day only.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for r in admin
        .delete_topics(&[topic.as_str()], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    produce(&days[1], &days[1]);
    let second = common::sql_number(
        dir.path(),
        &lake,
        &format!("SELECT count(*) FROM ticks WHERE date = '{}'", days[1]),
    );
    assert!(
        second < warm,
        "{second} messages, stored warm-up offset {warm}"
    );

    let args = detect_args(&lake, &topic, "gap", &db.url, &[]);
    let (success, out, err) = run(dir.path(), &args);
    assert!(success, "{out}\n{err}");
    assert_eq!(
        summary_number(&out, "ticks emitted"),
        second,
        "every tick of the new topic is emitted:\n{out}\n{err}"
    );
    assert!(out.contains("1 offset gap"), "{out}");
    let logged = err
        .lines()
        .find(|l| l.contains("Offsets missing in the partition"))
        .unwrap_or_else(|| panic!("the gap is logged:\n{err}"));
    for field in [
        "partition=0".to_owned(),
        format!("expected={warm}"),
        "found=0".to_owned(),
    ] {
        assert!(logged.contains(&field), "{field} in {logged}");
    }
    let stored: i64 = client
        .query_one(
            "SELECT next_offset FROM detector_offsets WHERE consumer_group = 'gap'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, second, "the partition was read to its end");
}

/// Copies the folder `from` to `to`, leaving out the top-level folders
/// named in `skip`.
fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if skip.iter().any(|s| name.to_str() == Some(*s)) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name), &[]);
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// `detect` on a lake without the context tables the feature files read
/// (here: no lake at all) used to start and compute those features as NULL,
/// alerting on other numbers than `score`. It now refuses (exit 2), naming
/// the table and --lake; on a lake that has ticks but no stored `profiles`
/// or `betas` it starts and says they are made from the lake's ticks.
#[tokio::test]
async fn detect_refuses_a_lake_without_the_context_tables() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake_s, ["2", "1", "200", "2", "73"]);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("context");
    ok(
        dir.path(),
        &[
            "produce",
            "--lake",
            &lake_s,
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--partitions",
            "1",
        ],
    );
    let db = TestDb::new("context").await;

    let empty = dir.path().join("empty-lake");
    std::fs::create_dir_all(&empty).unwrap();
    let args = detect_args(empty.to_str().unwrap(), &topic, "context", &db.url, &[]);
    let out = common::bin()
        .current_dir(dir.path())
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused as a configuration error:\n{}\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("--lake"), "{err}");
    assert!(
        ["symbols", "profiles", "betas"]
            .iter()
            .any(|t| err.contains(&format!("has no `{t}` table"))),
        "names the missing table: {err}"
    );

    // Ticks but no stored profiles or betas: made from the ticks, and said.
    let partial = dir.path().join("partial-lake");
    copy_dir(&lake, &partial, &["profiles", "betas"]);
    let args = detect_args(partial.to_str().unwrap(), &topic, "context", &db.url, &[]);
    let (success, out, err) = run(dir.path(), &args);
    assert!(success, "{out}\n{err}");
    let said = |table: &str| {
        err.lines()
            .find(|l| l.starts_with(&format!("detect: context table `{table}`")))
            .unwrap_or_else(|| panic!("no word on `{table}`:\n{err}"))
            .to_owned()
    };
    assert!(
        said("profiles").ends_with("made from the lake's ticks"),
        "{err}"
    );
    assert!(
        said("betas").ends_with("made from the lake's ticks"),
        "{err}"
    );
    assert!(said("symbols").ends_with("stored in the lake"), "{err}");
    assert!(
        said("market").ends_with("computed from the stream"),
        "{err}"
    );
    assert!(summary_number(&out, "ticks emitted") > 0, "{out}");
}

/// Secured brokers need client options (TLS, SASL): `detect` takes them as
/// `--kafka-option key=value` (repeatable, or `;`-separated in
/// STOCKANOMALY_KAFKA_OPTIONS) for every client, and never shows a value:
/// not in `--help`, not in its output or logs, even at debug level. The
/// flag did not exist before.
#[tokio::test]
async fn kafka_options_reach_the_clients_and_their_values_stay_hidden() {
    const SECRET: &str = "hunter2-not-for-logs";
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake, ["2", "1", "150", "2", "79"]);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("options");
    ok(
        dir.path(),
        &[
            "produce",
            "--lake",
            &lake,
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--partitions",
            "1",
        ],
    );
    let db = TestDb::new("options").await;
    let help = common::bin()
        .args(["detect", "--help"])
        .env(
            "STOCKANOMALY_KAFKA_OPTIONS",
            format!("sasl.password={SECRET}"),
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--kafka-option"), "{help}");
    assert!(help.contains("STOCKANOMALY_KAFKA_OPTIONS"), "{help}");
    assert!(!help.contains(SECRET), "{help}");

    let args = detect_args(
        &lake,
        &topic,
        "options",
        &db.url,
        &[
            "--kafka-option",
            "client.id=stockanomaly-options-test",
            "--kafka-option",
            &format!("sasl.password={SECRET}"),
            "--alerts-topic",
            &format!("{topic}-alerts"),
        ],
    );
    let out = common::bin()
        .current_dir(dir.path())
        .args(&args)
        .env("STOCKANOMALY_LOG", "debug")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(summary_number(&stdout, "ticks emitted") > 0, "{stdout}");
    assert!(
        stderr.contains("client.id, sasl.password (values not shown)"),
        "the keys are named:\n{stderr}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    // The options reach the clients: one librdkafka refuses stops the run,
    // naming the property and not the value.
    let args = detect_args(
        &lake,
        &topic,
        "options",
        &db.url,
        &["--kafka-option", &format!("socket.timeout.ms={SECRET}")],
    );
    let (success, stdout, stderr) = run(dir.path(), &args);
    assert!(!success, "{stdout}\n{stderr}");
    assert!(stderr.contains("socket.timeout.ms"), "{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stderr}"
    );
}
