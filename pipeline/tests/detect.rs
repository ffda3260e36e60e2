//! `stockanomaly detect` against the real broker and PostgreSQL: alerts
//! streamed from a topic equal `score`'s batch output, poison messages land
//! in `dead_letters` with their reasons, and a restart writes nothing twice.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::detector_run::detector_run;
use common::{ok, service_env, TestDb};
use rdkafka::ClientConfig;

use common::queries;

/// The keys of every message on an alert topic (each message's JSON `key`
/// must equal its Kafka key).
async fn topic_alerts(brokers: &str, topic: &str) -> std::collections::BTreeSet<String> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut keys = std::collections::BTreeSet::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(m)) => {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let body: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                assert_eq!(body["key"].as_str(), Some(key.as_str()));
                assert!(body["score"].as_f64().unwrap() >= body["threshold"].as_f64().unwrap());
                keys.insert(key);
            }
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!("reading {topic}: nothing for 30 s"),
        }
    }
    keys
}

#[tokio::test]
async fn streamed_alerts_equal_batch_scores_and_poison_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    // The lake's ticks, then poison, streamed through Kafka into `detect`.
    let run = detector_run(dir.path(), "detect").await;
    let lake = run.lake.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    let (brokers, topic, db, version) = (&run.brokers, &run.topic, &run.db, &run.model_version);
    // The batch answer over the same ticks.
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
        ],
    );
    let want = common::batch_alerts(dir.path(), lake, version);
    assert!(!want.is_empty(), "the model raises alerts on this lake");
    assert!(run.stdout.contains("detect:"), "{}", run.stdout);

    let client = db.client().await;
    let got = common::pg_alerts(&client, version).await;
    assert_eq!(got.len(), want.len(), "alert count: streamed vs batch");
    common::assert_same(&got, &want, "streamed vs batch");
    let rule_alerts: i64 = client
        .query_one("SELECT count(*) FROM alerts WHERE detector = 'rule'", &[])
        .await
        .unwrap()
        .get(0);
    let rule_want = common::sql_number(
        dir.path(),
        lake,
        "SELECT count(*) FROM scores WHERE detector = 'rule' AND alert",
    );
    assert_eq!(rule_alerts, rule_want, "rule alerts streamed vs batch");
    // The same alerts on the alert topic (keyed) and in the lake.
    let on_topic = topic_alerts(brokers, &format!("{topic}-alerts")).await;
    let pg_keys: std::collections::BTreeSet<String> = client
        .query(
            "SELECT model_version || '|' || symbol || '|' || \
             (extract(epoch FROM ts) * 1000000)::bigint || '|' || seq FROM alerts",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_eq!(on_topic, pg_keys, "alert topic keys vs PostgreSQL");
    let lake_alerts = common::sql_number(
        dir.path(),
        lake,
        &format!("SELECT count(DISTINCT (symbol, ts, seq)) FROM alerts WHERE model_version = '{version}'"),
    );
    assert_eq!(lake_alerts as usize, want.len(), "lake alerts of the model");
    // Alerts carry their evidence.
    let with_shap: i64 = client
        .query_one(
            "SELECT count(*) FROM alerts WHERE detector = 'model' AND json_array_length(top_features) = 3 \
             AND features ->> 'price_z_30m' IS NOT NULL AND source_offset IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(with_shap as usize, want.len());

    // Poison in dead_letters with reasons; the good ticks all went through.
    let dead: BTreeMap<String, i64> = client
        .query(
            "SELECT reason, count(*) FROM dead_letters GROUP BY reason",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect();
    assert_eq!(dead.get("malformed"), Some(&2), "{dead:?}");
    let details: Vec<String> = client
        .query(
            "SELECT reason || ': ' || coalesce(detail, '') FROM dead_letters",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert_eq!(dead.values().sum::<i64>(), 3, "{details:#?}");
    let models: i64 = client
        .query_one("SELECT count(*) FROM models", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(models, 2, "the model and the rule are registered");
    let stats = client
        .query_one(
            "SELECT count(*), max(ticks), max(alerts) FROM detector_stats",
            &[],
        )
        .await
        .unwrap();
    assert!(stats.get::<_, i64>(0) >= 1, "a detector_stats row at exit");
    assert!(stats.get::<_, i64>(1) > 0);
    assert_eq!(
        stats.get::<_, i64>(2) as usize,
        want.len() + rule_alerts as usize
    );

    // A restart of the same group resumes from PostgreSQL's offsets and
    // writes nothing again.
    let args: Vec<&str> = run.detect_args.iter().map(String::as_str).collect();
    let out = ok(dir.path(), &args);
    // Resumed past everything: the warm-up replays history without
    // emitting, so no tick is scored again (re-scoring would be hidden by
    // the alerts' unique key, so count emissions, not inserts).
    assert!(
        out.contains(" 0 ticks emitted, 0 alerts and 0 dead letters"),
        "{out}"
    );
    let again: i64 = client
        .query_one("SELECT count(*) FROM alerts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again as usize, want.len() + rule_alerts as usize);
}

/// Simulates and backfills `lake` under `dir` (`sim` as for
/// `simulate_backfill`), trains model `m` on it, scores it, and produces its
/// ticks to a fresh topic (3 partitions) named after `tag`: the model's
/// version, the batch's alert keys and the topic.
fn scored_lake_on_a_topic(
    dir: &std::path::Path,
    sim: [&str; 5],
    tag: &str,
) -> (String, BTreeMap<common::Key, f64>, String) {
    let lake = dir.join("lake");
    let lake = lake.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    common::simulate_backfill(dir, lake, sim);
    ok(
        dir,
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
        dir,
        &["score", "--lake", lake, "--queries", q, "--model", "m"],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("m/manifest.json")).unwrap()).unwrap();
    let version = manifest["version"].as_str().unwrap().to_owned();
    let want = common::batch_alerts(dir, lake, &version);
    let topic = format!(
        "{tag}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    ok(
        dir,
        &[
            "produce",
            &format!("kafka://{brokers}/{topic}"),
            "--lake",
            lake,
            "--partitions",
            "3",
        ],
    );
    (version, want, topic)
}

#[tokio::test]
async fn killed_and_restarted_detectors_write_exactly_the_alerts_once() {
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let lake = lake_path.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let (version, want, topic) =
        scored_lake_on_a_topic(dir.path(), ["3", "3", "500", "4", "41"], "crash");
    assert!(want.len() > 20, "{}", want.len());
    let db = TestDb::new("crash").await;
    let client = db.client().await;
    let args = vec![
        "detect".to_owned(),
        "--lake".into(),
        lake.into(),
        "--queries".into(),
        q.into(),
        "--model".into(),
        "m".into(),
        "--source".into(),
        format!("kafka://{brokers}/{topic}"),
        "--group".into(),
        "crash".into(),
        "--database-url".into(),
        db.url.clone(),
        "--batch-rows".into(),
        "150".into(),
        "--idle-timeout-ms".into(),
        "300".into(),
        // Longer than the session timeout (10 s): a SIGKILLed member keeps
        // its partitions until then, and the last run must outwait it.
        "--exit-when-idle".into(),
        "15".into(),
    ];
    let count = || async {
        client
            .query_one("SELECT count(*) FROM alerts", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    // SIGKILL at three points of the stream: after a third, after two thirds
    // of the alerts (counted from what is committed), and during warm-up of
    // a restart.
    for target in [want.len() / 3, 2 * want.len() / 3, 0] {
        let mut child = common::bin()
            .current_dir(dir.path())
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        loop {
            let n = count().await as usize;
            let waited = started.elapsed();
            if (target > 0 && n >= target) || (target == 0 && waited > Duration::from_millis(1500))
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("detect exited ({status}) before the kill point; {n} alerts");
            }
            assert!(waited < Duration::from_secs(240), "no progress: {n} alerts");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // The last run goes to the end.
    let last: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(dir.path(), &last);
    let got = common::pg_alerts(&client, &version).await;
    common::assert_same(&got, &want, "after kills and restarts vs batch");
    // The cases, carried across the kills (the first two land inside
    // cases: alerts come in episodes), equal batch `score`'s.
    let want_cases = common::batch_cases(dir.path(), lake, &version);
    assert!(!want_cases.is_empty(), "the batch opened no case");
    let got_cases = common::pg_cases(&client, &version).await;
    assert_eq!(
        got_cases, want_cases,
        "cases after kills and restarts vs batch"
    );
    let discarded: i64 = client
        .query_one(
            "SELECT count(*) FROM cases WHERE opened_ts IS NULL AND status = 'closed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(discarded, 0, "a case that closed unopened is not kept");
}

/// Two detectors sharing the partitions take the market context from the
/// `market-context` stage (which reads the whole topic, running beside
/// them) and together write exactly the batch's alerts; a second stage run
/// resumes after the buckets already published.
#[tokio::test]
async fn detectors_sharing_partitions_use_the_market_context_stage() {
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let lake = lake_path.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let (version, want, topic) =
        scored_lake_on_a_topic(dir.path(), ["4", "3", "400", "4", "51"], "mkt");
    assert!(want.len() > 5, "{}", want.len());
    let market = format!("{topic}-market");
    let source = format!("kafka://{brokers}/{topic}");
    let stage_args = |group: &str| -> Vec<String> {
        [
            "market-context",
            "--lake",
            lake,
            "--queries",
            q,
            "--source",
            &source,
            "--market-topic",
            &market,
            "--group",
            group,
            "--idle-timeout-ms",
            "2000",
            "--exit-when-idle",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let db = TestDb::new("market").await;
    // Group names unique per run: the test broker keeps groups across runs.
    let group = format!("{topic}-shared");
    let detect_args: Vec<String> = [
        "detect",
        "--lake",
        lake,
        "--queries",
        q,
        "--model",
        "m",
        "--source",
        &source,
        "--group",
        &group,
        "--market-topic",
        &market,
        "--database-url",
        &db.url,
        "--batch-rows",
        "300",
        "--idle-timeout-ms",
        "2000",
        "--exit-when-idle",
        "12",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let spawn = |args: &[String]| {
        common::bin()
            .current_dir(dir.path())
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stage = spawn(&stage_args(&format!("{topic}-mc")));
    let detectors = [spawn(&detect_args), spawn(&detect_args)];
    let out = stage.wait_with_output().unwrap();
    let stage_out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stage_out}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stage_out.contains(", 0 late;"), "{stage_out}");
    let mut logs = format!("market-context: {stage_out}\n");
    for d in detectors {
        let out = d.wait_with_output().unwrap();
        let log = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{log}");
        logs.push_str(&log);
    }
    let client = db.client().await;
    let got = common::pg_alerts(&client, &version).await;
    assert_eq!(
        got.len(),
        want.len(),
        "alert count: two detectors vs batch\n{logs}"
    );
    common::assert_same(&got, &want, "two detectors with the market stage vs batch");
    let dead: i64 = client
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "no tick was late for its bucket");

    // A new stage group re-reads the whole topic: every bucket was
    // published already, so every tick is late and nothing is published.
    let args = stage_args(&format!("{topic}-mc2"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let again = ok(dir.path(), &args);
    // It did read every message (a run that read nothing would print
    // the same zeros), and refused each as late for its bucket.
    let read = |out: &str| -> u64 {
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert!(read(&stage_out) > 0, "{stage_out}");
    assert_eq!(read(&again), read(&stage_out), "{again}");
    assert!(again.contains(" 0 ticks in buckets"), "{again}");
    // Every message read again is a tick of a published bucket (late) or
    // one of the producer's watermark messages.
    let watermarks = again
        .split(" watermarks,")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{again}"));
    assert!(watermarks > 0, "{again}");
    assert!(
        again.contains(&format!(" {} late;", read(&again) - watermarks)),
        "{again}"
    );
    assert!(again.contains(" 0 rows in 0 messages"), "{again}");
}

/// Watermark messages (`produce` sends them) let the detector close market
/// buckets while partitions carry no tick: with an idle timeout far longer
/// than the run, ticks are emitted as the topic is read. Without them
/// (`--watermark-every-ms 0`) the partitions without ticks hold every
/// bucket open, and nothing is emitted before the stream's end. Both ways,
/// the alerts are the batch's.
#[tokio::test]
async fn watermark_messages_close_buckets_that_partitions_without_ticks_held_open() {
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let lake = lake_path.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    // Three symbols on eight partitions: five or more carry no tick.
    let (version, want, topic) =
        scored_lake_on_a_topic(dir.path(), ["3", "3", "300", "4", "61"], "wm");
    assert!(!want.is_empty());
    let mut before_end = Vec::new();
    for every in ["20", "0"] {
        let topic = format!("{topic}-{every}");
        let out = ok(
            dir.path(),
            &[
                "produce",
                &format!("kafka://{brokers}/{topic}"),
                "--lake",
                lake,
                "--partitions",
                "8",
                "--watermark-every-ms",
                every,
            ],
        );
        assert_eq!(out.contains("watermark messages"), every != "0", "{out}");
        let db = TestDb::new(&format!("wm{every}")).await;
        let out = ok(
            dir.path(),
            &[
                "detect",
                "--lake",
                lake,
                "--queries",
                q,
                "--model",
                "m",
                "--source",
                &format!("kafka://{brokers}/{topic}"),
                "--group",
                &format!("{topic}-g"),
                "--database-url",
                &db.url,
                "--batch-rows",
                "200",
                "--idle-timeout-ms",
                "600000",
                "--stats-every",
                "0.2",
                "--exit-when-idle",
                "3",
            ],
        );
        // The run's latency quantiles, from a sample of every tick.
        let latency: Vec<f64> = out
            .lines()
            .find_map(|l| l.strip_prefix("  latency over the run: final -> committed p50 "))
            .unwrap_or_else(|| panic!("{out}"))
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        let [p50, p99, a50, a99] = latency[..] else {
            panic!("{out}")
        };
        // A tick is committed after it is final, which is after it arrived.
        assert!(0.0 < p50 && p50 <= p99 && p50 <= a50 && a50 <= a99, "{out}");
        let client = db.client().await;
        let got = common::pg_alerts(&client, &version).await;
        common::assert_same(
            &got,
            &want,
            &format!("--watermark-every-ms {every} vs batch"),
        );
        // Statistics rows carry running counts of messages read and alerts
        // stored. Once every message is read the detector waits 3 s for
        // more before it ends the stream and emits what it still holds:
        // the alerts stored when the reading was done are those emitted
        // while reading.
        let rows: Vec<(i64, i64)> = client
            .query("SELECT ticks, alerts FROM detector_stats ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let read = rows.iter().map(|r| r.0).max().unwrap_or(0);
        let total = rows.iter().map(|r| r.1).max().unwrap_or(0);
        let done_reading = rows.iter().find(|r| r.0 == read).map_or(0, |r| r.1);
        assert!(read > 1000 && total > 0, "{rows:?}");
        assert!(
            rows.iter().filter(|r| r.0 == read).count() >= 5,
            "rows while idle: {rows:?}"
        );
        before_end.push((done_reading, total));
    }
    let [(with_early, with_total), (without_early, _)] = before_end[..] else {
        unreachable!()
    };
    assert_eq!(without_early, 0, "no watermarks: no alert before the end");
    assert!(
        with_early * 2 >= with_total,
        "watermarks: {with_early} of {with_total} alerts stored before the end"
    );
}
