//! A real detector run into a fresh database, for the tests that read what a
//! detector leaves behind (the detect tests, the Grafana dashboards, the
//! review page): a small simulated lake, a small model, the ticks on a fresh
//! Kafka topic followed by poison, and one `stockanomaly detect` to the end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use super::{ok, queries, service_env, TestDb};

/// What [`detector_run`] made; the files live under the caller's folder.
pub struct DetectorRun {
    /// The database the detector wrote to (dropped with this value).
    pub db: TestDb,
    /// The lake the ticks were produced from (backfilled, not scored).
    pub lake: PathBuf,
    /// The trained model's folder (`m` under the caller's folder).
    pub model: PathBuf,
    /// The model's version, as recorded in `models` and `alerts`.
    pub model_version: String,
    /// The brokers of the test broker.
    pub brokers: String,
    /// The tick topic; alerts were also published to `{topic}-alerts`.
    pub topic: String,
    /// The `detect` arguments of the run (consumer group `g1`), so a test
    /// can run the same detector again.
    pub detect_args: Vec<String>,
    /// The run's stdout.
    pub stdout: String,
}

/// Poison produced after the good ticks: broken JSON, a negative volume, no
/// price (two `malformed` dead letters and one other).
pub const POISON: [(&str, &str); 3] = [
    ("ZZZ", "{\"symbol\": \"ZZZ\", \"price\": 1.0,"),
    (
        "ZZZ",
        "{\"symbol\":\"ZZZ\",\"timestamp\":\"2024-01-03T15:00:00Z\",\"price\":10.0,\"volume\":-5}",
    ),
    (
        "ZZZ",
        "{\"symbol\":\"ZZZ\",\"timestamp\":\"2024-01-03T15:00:01Z\",\"volume\":5}",
    ),
];

/// Simulates and backfills a lake (3 symbols, 2 days, 500 trades a day,
/// seed 31) under `dir`, trains a 10-round model on another lake with the
/// same features (two days are too few for train/valid/test splits),
/// produces the lake's ticks to a fresh topic (3 partitions) followed by
/// [`POISON`], and runs `stockanomaly detect` with the model and the rules
/// into a fresh database (named after `tag`) until idle, with a
/// `detector_stats` row every half second.
pub async fn detector_run(dir: &Path, tag: &str) -> DetectorRun {
    detector_run_days(dir, tag, 2).await
}

/// [`detector_run`] over a lake of `days` days (the review test trains on
/// the detected lake itself, which needs three).
pub async fn detector_run_days(dir: &Path, tag: &str, days: u32) -> DetectorRun {
    let days = days.to_string();
    let lake = dir.join("lake");
    let lake_s = lake.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    super::simulate_backfill(dir, lake_s, ["3", &days, "500", "4", "31"]);
    let model_lake = dir.join("model-lake");
    super::simulate_backfill(
        dir,
        model_lake.to_str().unwrap(),
        ["3", "3", "500", "4", "32"],
    );
    ok(
        dir,
        &[
            "train",
            "--lake",
            model_lake.to_str().unwrap(),
            "--queries",
            q,
            "--rounds",
            "10",
            "--out",
            "m",
        ],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("m/manifest.json")).unwrap()).unwrap();
    let model_version = manifest["version"].as_str().unwrap().to_owned();

    let topic = format!(
        "{tag}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    );
    ok(
        dir,
        &[
            "produce",
            &format!("kafka://{brokers}/{topic}"),
            "--lake",
            lake_s,
            "--partitions",
            "3",
        ],
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for (key, payload) in POISON {
        producer
            .send(
                FutureRecord::to(&topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let db = TestDb::new(tag).await;
    let detect_args: Vec<String> = [
        "detect",
        "--lake",
        lake_s,
        "--queries",
        q,
        "--model",
        "m",
        "--rules",
        "--source",
        &format!("kafka://{brokers}/{topic}"),
        "--group",
        "g1",
        "--database-url",
        &db.url,
        "--batch-rows",
        "700",
        "--idle-timeout-ms",
        "300",
        "--exit-when-idle",
        "4",
        // Several detector_stats rows, not only the one at exit.
        "--stats-every",
        "0.5",
        "--alerts-topic",
        &format!("{topic}-alerts"),
        "--alerts-to-lake",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let args: Vec<&str> = detect_args.iter().map(String::as_str).collect();
    let stdout = ok(dir, &args);
    DetectorRun {
        db,
        lake,
        model: dir.join("m"),
        model_version,
        brokers,
        topic,
        detect_args,
        stdout,
    }
}
