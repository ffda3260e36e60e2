//! The PostgreSQL sink against the real server the test command starts:
//! migrations, the detector's batch commit, partitions. Each test works in
//! its own database, dropped at the end.

mod common;

use common::TestDb;
use serde_json::json;
use stockanomaly::sinks::postgres::{
    applied_migrations, commit_batch, connect, load_offsets, migrate, register_model, write_stats,
    AlertRow, DbError, DeadLetterRow, OffsetRow, StatsRow, MIGRATIONS,
};
use stockanomaly::sinks::JsonText;

fn alert(symbol: &str, ts_us: i64, seq: u32) -> AlertRow {
    AlertRow {
        model_version: "xgb-abc".into(),
        detector: "model",
        symbol: symbol.into(),
        ts_us,
        seq,
        score: 0.93,
        threshold: 0.5,
        reason: Some("spoofing pattern".into()),
        top_features: Some(JsonText::from_value(
            &json!([{"name": "imbalance", "value": 3.5}]),
        )),
        features: Some(JsonText::from_value(&json!({"imbalance": 3.5, "z": -1.25}))),
        evidence_start_us: Some(ts_us - 60_000_000),
        evidence_end_us: Some(ts_us),
        source: "ticks".into(),
        source_partition: Some(0),
        source_offset: Some(i64::from(seq)),
        delay_ticks: seq % 3,
    }
}

fn offset(partition: i32, next: i64, warmup: i64) -> OffsetRow {
    OffsetRow {
        consumer_group: "detector".into(),
        topic: "ticks".into(),
        partition,
        next_offset: next,
        warmup_offset: warmup,
    }
}

async fn count(c: &tokio_postgres::Client, table: &str) -> i64 {
    c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn migrate_applies_once_and_creates_the_schema() {
    let db = TestDb::new("migrate").await;
    let mut c = db.client().await;
    assert!(applied_migrations(&c).await.unwrap().is_empty());

    let first = migrate(&mut c).await.unwrap();
    assert_eq!(
        first,
        vec![
            "0001_init".to_owned(),
            "0002_review".to_owned(),
            "0003_alert_delay".to_owned(),
            "0004_review_accounts".to_owned(),
            "0005_offset_generation".to_owned(),
            "0006_latency_split".to_owned(),
            "0007_cases".to_owned(),
            "0008_case_review".to_owned(),
            "0009_alert_json_text".to_owned()
        ]
    );
    let second = migrate(&mut c).await.unwrap();
    assert!(second.is_empty(), "{second:?}");

    let applied = applied_migrations(&c).await.unwrap();
    assert_eq!(applied.len(), MIGRATIONS.len());
    assert_eq!(applied[0].version, 1);
    assert_eq!(applied[0].name, "init");
    assert_eq!(applied[0].checksum, MIGRATIONS[0].checksum());

    for table in [
        "models",
        "alerts",
        "dead_letters",
        "detector_offsets",
        "detector_stats",
        "ticks",
        "ticks_default",
        "dispositions",
        "alert_status",
    ] {
        let exists: bool = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .unwrap()
            .get(0);
        assert!(exists, "table {table} missing");
    }
    // The unique and primary keys the sink's ON CONFLICT clauses rely on.
    let keys: Vec<String> = c
        .query(
            "SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE contype IN ('u', 'p') ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for want in [
        "alerts UNIQUE (model_version, symbol, ts, seq)",
        "dead_letters UNIQUE (source, source_partition, source_offset)",
        "detector_offsets PRIMARY KEY (consumer_group, topic, partition)",
        "models PRIMARY KEY (version)",
        "ticks PRIMARY KEY (symbol, ts, seq)",
        "schema_migrations PRIMARY KEY (version)",
    ] {
        assert!(keys.iter().any(|k| k == want), "{want} not in {keys:?}");
    }
    let indexes: Vec<String> = c
        .query(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'alerts'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        indexes.iter().any(|i| i.ends_with("USING btree (ts)")),
        "{indexes:?}"
    );
    assert!(
        indexes
            .iter()
            .any(|i| i.ends_with("USING btree (symbol, ts)")),
        "{indexes:?}"
    );
}

#[tokio::test]
async fn changed_migration_is_refused() {
    let db = TestDb::new("checksum").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    c.execute(
        "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1",
        &[],
    )
    .await
    .unwrap();
    let e = migrate(&mut c).await.unwrap_err();
    assert!(
        matches!(e, DbError::ChecksumMismatch { version: 1, .. }),
        "{e}"
    );
    assert!(!e.is_retryable());
}

#[tokio::test]
async fn concurrent_migrations_both_succeed() {
    let db = TestDb::new("concurrent").await;
    let (mut a, mut b) = (db.client().await, db.client().await);
    let (ra, rb) = tokio::join!(migrate(&mut a), migrate(&mut b));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    // Each migration was applied by exactly one of them; the other found
    // it done.
    let mut all = ra.clone();
    all.extend(rb.clone());
    all.sort();
    assert_eq!(
        all,
        vec![
            "0001_init".to_owned(),
            "0002_review".to_owned(),
            "0003_alert_delay".to_owned(),
            "0004_review_accounts".to_owned(),
            "0005_offset_generation".to_owned(),
            "0006_latency_split".to_owned(),
            "0007_cases".to_owned(),
            "0008_case_review".to_owned(),
            "0009_alert_json_text".to_owned()
        ],
        "{ra:?} {rb:?}"
    );
    assert_eq!(
        count(&a, "schema_migrations").await,
        MIGRATIONS.len() as i64
    );
}

#[tokio::test]
async fn cli_migrate_and_status() {
    let db = TestDb::new("cli").await;
    let dir = tempfile::tempdir().unwrap();
    let out = common::ok(dir.path(), &["db", "migrate", "--database-url", &db.url]);
    assert!(out.contains("applied 0001_init"), "{out}");
    assert!(out.contains("applied 0002_review"), "{out}");
    assert!(out.contains("applied 0003_alert_delay"), "{out}");
    assert!(out.contains("applied 0004_review_accounts"), "{out}");
    // The URL from the environment, as deployments pass it.
    let out = common::bin()
        .current_dir(dir.path())
        .env("DATABASE_URL", &db.url)
        .args(["db", "migrate"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("up to date"), "{stdout}");
    let out = common::ok(dir.path(), &["db", "status", "--database-url", &db.url]);
    assert!(out.contains("0001_init  applied"), "{out}");

    // A malformed URL is a usage error (2) and is not echoed.
    let out = common::run(
        dir.path(),
        &[
            "db",
            "migrate",
            "--database-url",
            "postgres://u:topsecret@127.0.0.1/x?sslmode=nonsense",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("topsecret"), "{stderr}");
    // An unreachable server names host and database, never the password.
    let out = common::run(
        dir.path(),
        &[
            "db",
            "status",
            "--database-url",
            "postgres://u:topsecret@127.0.0.1:1/nowhere?sslmode=disable",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("u@127.0.0.1:1/nowhere"), "{stderr}");
    assert!(!stderr.contains("topsecret"), "{stderr}");
}

#[tokio::test]
async fn commit_batch_stores_everything_once() {
    let db = TestDb::new("commit").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    register_model(&c, "xgb-abc", "model", &json!({"features": 42}))
        .await
        .unwrap();

    let base = 1_704_205_800_123_457; // 2024-01-02 14:30:00.123457 UTC
    let alerts: Vec<AlertRow> = (0..2000)
        .map(|i| alert(if i % 2 == 0 { "AAPL" } else { "MSFT" }, base + i as i64, i))
        .collect();
    let dead = vec![DeadLetterRow {
        source: "ticks".into(),
        source_partition: Some(0),
        source_offset: Some(99),
        payload: b"\x00not json\xff".to_vec(),
        reason: "decode".into(),
        detail: "expected value at line 1".into(),
    }];
    let offsets = vec![offset(0, 2000, 1500), offset(1, 10, 0)];
    let s = commit_batch(&mut c, &alerts, &dead, &offsets)
        .await
        .unwrap();
    assert_eq!(s.alerts_inserted, 2000);
    assert_eq!(s.alerts_existing, 0);
    assert!(s.alerts_copied);
    assert_eq!(s.dead_letters_inserted, 1);

    // A replay (the detector restarted before its Kafka commit) adds nothing
    // and moves the offsets.
    let offsets2 = vec![offset(0, 2100, 1600)];
    let s = commit_batch(&mut c, &alerts, &dead, &offsets2)
        .await
        .unwrap();
    assert_eq!(s.alerts_inserted, 0);
    assert_eq!(s.alerts_existing, 2000);
    assert!(
        !s.alerts_copied,
        "a replay takes the insert that skips stored keys"
    );
    assert_eq!(s.dead_letters_inserted, 0);
    assert_eq!(count(&c, "alerts").await, 2000);
    assert_eq!(count(&c, "dead_letters").await, 1);
    let stored = load_offsets(&c, "detector", "ticks").await.unwrap();
    assert_eq!(
        stored.into_iter().collect::<Vec<_>>(),
        vec![(0, (2100, 1600)), (1, (10, 0))]
    );
    assert!(load_offsets(&c, "other", "ticks").await.unwrap().is_empty());

    // Columns round-trip: payload bytes, JSON, µs timestamps.
    let row = c
        .query_one(
            "SELECT ts, evidence_start, seq, features, reason, detector, delay_ticks, \
             top_features FROM alerts WHERE symbol = 'MSFT' AND seq = 1",
            &[],
        )
        .await
        .unwrap();
    let ts: chrono::DateTime<chrono::Utc> = row.get(0);
    assert_eq!(ts.timestamp_micros(), base + 1);
    let start: chrono::DateTime<chrono::Utc> = row.get(1);
    assert_eq!(start.timestamp_micros(), base + 1 - 60_000_000);
    assert_eq!(row.get::<_, i32>(2), 1);
    assert_eq!(
        row.get::<_, serde_json::Value>(3),
        json!({"imbalance": 3.5, "z": -1.25})
    );
    assert_eq!(row.get::<_, &str>(4), "spoofing pattern");
    assert_eq!(row.get::<_, &str>(5), "model");
    assert_eq!(row.get::<_, i32>(6), 1, "the delay the alert waited for");
    assert_eq!(
        row.get::<_, serde_json::Value>(7),
        json!([{"name": "imbalance", "value": 3.5}])
    );
    let payload: Vec<u8> = c
        .query_one("SELECT payload FROM dead_letters", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(payload, b"\x00not json\xff");

    // register_model is idempotent, and refuses another manifest.
    register_model(&c, "xgb-abc", "model", &json!({"features": 42}))
        .await
        .unwrap();
    let e = register_model(&c, "xgb-abc", "model", &json!({"features": 7}))
        .await
        .unwrap_err();
    assert!(matches!(e, DbError::ModelConflict { .. }), "{e}");
    assert_eq!(count(&c, "models").await, 1);

    write_stats(
        &c,
        &StatsRow {
            instance: "host-1".into(),
            consumer_group: Some("detector".into()),
            ticks: 5000,
            ticks_per_s: Some(1234.5),
            batches: 3,
            alerts: 2000,
            dead_letters: 1,
            lag: Some(17),
            batch_p50_ms: Some(4.5),
            batch_p99_ms: Some(20.0),
            e2e_p50_ms: None,
            e2e_p99_ms: None,
            processing_p50_ms: Some(3.25),
            processing_p99_ms: Some(41.0),
            wait_p50_ms: Some(900.0),
            wait_p99_ms: None,
        },
    )
    .await
    .unwrap();
    let row = c
        .query_one(
            "SELECT instance, ticks, alerts, lag, ticks_per_s, e2e_p50_ms, processing_p50_ms, \
             processing_p99_ms, wait_p50_ms, wait_p99_ms FROM detector_stats",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "host-1");
    assert_eq!(row.get::<_, i64>(1), 5000);
    assert_eq!(row.get::<_, i64>(2), 2000);
    assert_eq!(row.get::<_, Option<i64>>(3), Some(17));
    assert_eq!(row.get::<_, Option<f64>>(4), Some(1234.5));
    assert_eq!(row.get::<_, Option<f64>>(5), None);
    assert_eq!(row.get::<_, Option<f64>>(6), Some(3.25));
    assert_eq!(row.get::<_, Option<f64>>(7), Some(41.0));
    assert_eq!(row.get::<_, Option<f64>>(8), Some(900.0));
    assert_eq!(row.get::<_, Option<f64>>(9), None);
}

#[tokio::test]
async fn failing_row_rolls_back_the_whole_batch() {
    let db = TestDb::new("atomic").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    // An earlier batch, which the failing one must leave as it is.
    commit_batch(&mut c, &[alert("IBM", 5, 0)], &[], &[offset(0, 5, 1)])
        .await
        .unwrap();
    let mut alerts: Vec<AlertRow> = (0..10)
        .map(|i| alert("AAPL", 1_000_000 + i, i as u32))
        .collect();
    alerts[7].detector = "bogus"; // violates the CHECK on detector
    let dead = vec![DeadLetterRow {
        source: "ticks".into(),
        source_partition: Some(0),
        source_offset: Some(1),
        payload: vec![1, 2, 3],
        reason: "decode".into(),
        detail: String::new(),
    }];
    let e = commit_batch(&mut c, &alerts, &dead, &[offset(0, 11, 0)])
        .await
        .unwrap_err();
    assert!(matches!(e, DbError::Query { .. }), "{e}");
    assert!(e.to_string().contains("alerts"), "{e}");
    assert!(!e.is_retryable(), "a CHECK violation is not transient: {e}");
    assert_eq!(count(&c, "alerts").await, 1);
    assert_eq!(count(&c, "dead_letters").await, 0);
    let stored = load_offsets(&c, "detector", "ticks").await.unwrap();
    assert_eq!(
        stored.get(&0),
        Some(&(5, 1)),
        "offset moved by a failed batch"
    );

    // The client is still usable and the corrected batch goes in whole.
    alerts[7].detector = "rule";
    let s = commit_batch(&mut c, &alerts, &dead, &[offset(0, 11, 0)])
        .await
        .unwrap();
    assert_eq!(s.alerts_inserted, 10);
    assert_eq!(s.dead_letters_inserted, 1);
    let stored = load_offsets(&c, "detector", "ticks").await.unwrap();
    assert_eq!(stored.get(&0), Some(&(11, 0)));
}

/// Alerts go by COPY when none is stored yet; a batch with one stored
/// already (or one key twice) falls back to the insert that skips them,
/// inside the same transaction, and what it stores is the same.
#[tokio::test]
async fn alerts_partly_stored_are_inserted_once() {
    let db = TestDb::new("alerts_partly").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    register_model(&c, "xgb-abc", "model", &json!({"features": 42}))
        .await
        .unwrap();
    let base = 1_704_205_800_000_000;
    let alerts: Vec<AlertRow> = (0..300)
        .map(|i| alert("AAPL", base + i as i64, i))
        .collect();
    let s = commit_batch(&mut c, &alerts[..100], &[], &[offset(0, 100, 0)])
        .await
        .unwrap();
    assert_eq!((s.alerts_inserted, s.alerts_existing), (100, 0));
    assert!(s.alerts_copied, "new alerts only: by COPY");

    // 50 stored and 250 new, one of them twice, and NULL optional columns.
    let mut batch: Vec<AlertRow> = alerts[50..].to_vec();
    batch.push(alerts[299].clone());
    for a in batch.iter_mut().skip(100) {
        a.reason = None;
        a.top_features = None;
        a.features = None;
        a.evidence_start_us = None;
        a.source_partition = None;
    }
    let s = commit_batch(&mut c, &batch, &[], &[offset(0, 301, 0)])
        .await
        .unwrap();
    assert_eq!((s.alerts_inserted, s.alerts_existing), (200, 51));
    assert!(
        !s.alerts_copied,
        "some stored already: the insert skipping them"
    );
    assert_eq!(count(&c, "alerts").await, 300);
    let stored = load_offsets(&c, "detector", "ticks").await.unwrap();
    assert_eq!(stored.get(&0), Some(&(301, 0)), "offsets with the fallback");
    let nulls: i64 = c
        .query_one(
            "SELECT count(*) FROM alerts WHERE reason IS NULL AND top_features IS NULL \
             AND features IS NULL AND evidence_start IS NULL AND source_partition IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(nulls, 150);

    // A batch of new alerts only goes in whole again (the fast path after
    // a fallback in the same session).
    let more: Vec<AlertRow> = (300..400)
        .map(|i| alert("MSFT", base + i as i64, i))
        .collect();
    let s = commit_batch(&mut c, &more, &[], &[offset(0, 401, 0)])
        .await
        .unwrap();
    assert_eq!((s.alerts_inserted, s.alerts_existing), (100, 0));
    assert!(s.alerts_copied);
    assert_eq!(count(&c, "alerts").await, 400);
}

#[tokio::test]
async fn timestamps_round_trip_at_microseconds() {
    let db = TestDb::new("micros").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    // Session time zone must not matter.
    c.batch_execute("SET TimeZone = 'America/New_York'")
        .await
        .unwrap();
    let stamps = [
        0_i64,
        1,
        -1,
        1_704_205_800_000_001,
        1_704_205_800_999_999,
        -2_208_988_800_000_000,  // 1900-01-01
        253_402_300_799_999_999, // 9999-12-31 23:59:59.999999
    ];
    let alerts: Vec<AlertRow> = stamps
        .iter()
        .enumerate()
        .map(|(i, &t)| alert("IBM", t, i as u32))
        .collect();
    commit_batch(&mut c, &alerts, &[], &[]).await.unwrap();
    let rows = c
        .query(
            "SELECT seq, ts, (extract(epoch FROM ts) * 1000000)::bigint FROM alerts ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), stamps.len());
    for (r, &want) in rows.iter().zip(&stamps) {
        let ts: chrono::DateTime<chrono::Utc> = r.get(1);
        assert_eq!(ts.timestamp_micros(), want);
        assert_eq!(
            r.get::<_, i64>(2),
            want,
            "server-side epoch of seq {}",
            r.get::<_, i32>(0)
        );
    }
}

#[tokio::test]
async fn tick_partitions_are_created_and_take_their_day() {
    let db = TestDb::new("partition").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    c.batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let insert = "INSERT INTO ticks (symbol, ts, seq, price, volume, source) \
                  VALUES ($1, $2::text::timestamptz, 0, 10.0, 100.0, 'test')";
    // A tick of 2024-01-02 before its partition exists lands in the default.
    c.execute(insert, &[&"AAPL", &"2024-01-02 10:00:00+00"])
        .await
        .unwrap();
    let created: bool = c
        .query_one(
            "SELECT stockanomaly_ensure_tick_partition('2024-01-02')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(created);
    let again: bool = c
        .query_one(
            "SELECT stockanomaly_ensure_tick_partition('2024-01-02')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!again, "second call must find the partition");
    // The day's edges by UTC, whatever the session's zone.
    for ts in [
        "2024-01-02 00:00:00+00",
        "2024-01-02 23:59:59.999999+00",
        "2024-01-03 00:00:00+00",
    ] {
        c.execute(insert, &[&"MSFT", &ts]).await.unwrap();
    }
    let where_: Vec<(String, String)> = c
        .query(
            "SELECT tableoid::regclass::text, symbol || ' ' || to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') \
             FROM ticks ORDER BY ts",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        where_,
        vec![
            (
                "ticks_20240102".into(),
                "MSFT 2024-01-02 00:00:00.000000".into()
            ),
            (
                "ticks_20240102".into(),
                "AAPL 2024-01-02 10:00:00.000000".into()
            ),
            (
                "ticks_20240102".into(),
                "MSFT 2024-01-02 23:59:59.999999".into()
            ),
            (
                "ticks_default".into(),
                "MSFT 2024-01-03 00:00:00.000000".into()
            ),
        ]
    );
    let bound: String = c
        .query_one(
            "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'ticks_20240102'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        bound.starts_with("FOR VALUES FROM ('2024-01-02 09:00:00+09')"),
        "{bound}"
    );
    // The partition has the primary key (duplicates refused).
    let dup = c
        .execute(insert, &[&"MSFT", &"2024-01-02 00:00:00+00"])
        .await;
    assert!(dup.is_err());
}

#[tokio::test]
async fn ssl_modes_follow_the_url() {
    let db = TestDb::new("tls").await;
    let with = |mode: &str| {
        let sep = if db.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}sslmode={mode}", db.url)
    };
    let uses_tls = |c: tokio_postgres::Client| async move {
        c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    };
    let plain = connect(&with("disable")).await.unwrap();
    let server_ssl: String = plain.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert!(!uses_tls(plain).await, "sslmode=disable used TLS");

    // The machine's own server has TLS on (a self-signed certificate, which
    // prefer and require accept as libpq does); the fallback test server
    // has it off.
    let preferred = connect(&with("prefer")).await.unwrap();
    assert_eq!(uses_tls(preferred).await, server_ssl == "on");
    let required = connect(&with("require")).await;
    if server_ssl == "on" {
        assert!(uses_tls(required.unwrap()).await);
    } else {
        let e = required.err().unwrap();
        assert!(matches!(e, DbError::Connect { .. }), "{e}");
    }
}

/// A row of `ticks`: partition, symbol, ts µs, seq, price, volume, bid,
/// ask, source.
type StoredTick = (
    String,
    String,
    i64,
    i32,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    String,
);

#[tokio::test]
async fn the_tick_store_copies_batches_once_each_into_day_partitions() {
    use stockanomaly::sinks::postgres::write_ticks;
    use stockanomaly::tick::{TickBuilder, TickRecord};

    let db = TestDb::new("tickstore").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    // Two UTC days, two ticks sharing a timestamp (seq 0 and 1), a quote.
    let day = 86_400_000_000i64;
    let t0 = 1_704_153_600_000_000i64; // 2024-01-02T00:00:00Z
    let mut b = TickBuilder::new("feed:test");
    b.push(&TickRecord::trade(t0 + 1, "AAPL", 185.25, 100.0))
        .unwrap();
    b.push(&TickRecord::trade(t0 + 1, "AAPL", 185.5, 50.0))
        .unwrap();
    let mut quoted = TickRecord::trade(t0 + day - 1, "MSFT", 370.125, 10.0);
    quoted.bid = Some(370.0);
    quoted.ask = Some(370.25);
    b.push(&quoted).unwrap();
    b.push(&TickRecord::trade(t0 + day + 5, "MSFT", 371.0, 7.5))
        .unwrap();
    let batch = b.finish();

    let first = write_ticks(&mut c, &batch).await.unwrap();
    assert_eq!(
        (first.rows, first.inserted, first.partitions_created),
        (4, 4, 2)
    );
    // Again (a replay, a backfill overlapping live data): nothing new.
    let again = write_ticks(&mut c, &batch).await.unwrap();
    assert_eq!(
        (again.rows, again.inserted, again.partitions_created),
        (4, 0, 0)
    );
    let rows: Vec<StoredTick> = c
        .query(
            "SELECT tableoid::regclass::text, symbol, \
             (extract(epoch FROM ts) * 1000000)::bigint, seq, price, volume, bid, ask, source \
             FROM ticks ORDER BY symbol, ts, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
            )
        })
        .collect();
    let want = [
        (
            "ticks_20240102",
            "AAPL",
            t0 + 1,
            0,
            185.25,
            100.0,
            None,
            None,
        ),
        ("ticks_20240102", "AAPL", t0 + 1, 1, 185.5, 50.0, None, None),
        (
            "ticks_20240102",
            "MSFT",
            t0 + day - 1,
            0,
            370.125,
            10.0,
            Some(370.0),
            Some(370.25),
        ),
        (
            "ticks_20240103",
            "MSFT",
            t0 + day + 5,
            0,
            371.0,
            7.5,
            None,
            None,
        ),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (got, w) in rows.iter().zip(want) {
        assert_eq!(
            (
                got.0.as_str(),
                got.1.as_str(),
                got.2,
                got.3,
                got.4,
                got.5,
                got.6,
                got.7
            ),
            w
        );
        assert_eq!(got.8, "feed:test");
    }
    assert_eq!(count(&c, "ticks_default").await, 0);
}

/// `ingest csv --to postgres`, twice, on a file with bad rows: the rejects
/// are reported and written aside, the good rows stored, and the second run
/// adds nothing.
#[tokio::test]
async fn cli_csv_into_the_tick_store_twice_keeps_one_copy() {
    let db = TestDb::new("csvstore").await;
    let c = db.client().await;
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = common::bin()
            .current_dir(dir.path())
            .env("DATABASE_URL", &db.url)
            .args([
                "ingest",
                "csv",
                "--lake",
                "lake",
                "--to",
                "postgres",
                "--rejects",
                "rejects.csv",
            ])
            .arg(common::fixture("broken.csv"))
            .output()
            .unwrap();
        let o = String::from_utf8_lossy(&out.stdout).into_owned();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{o}\n{e}");
        assert!(!o.contains(&db.url) && !e.contains(&db.url), "{o}\n{e}");
        o
    };
    let first = run();
    let good = first
        .lines()
        .find_map(|l| l.strip_prefix("ingested "))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or_else(|| panic!("no tick count in {first}"));
    assert!(good > 0, "{first}");
    assert!(
        first.contains(&format!("tick store: {good} ticks new, 0 already there")),
        "{first}"
    );
    assert!(first.contains("into PostgreSQL's ticks table"), "{first}");
    let rejects = std::fs::read_to_string(dir.path().join("rejects.csv")).unwrap();
    assert!(rejects.lines().count() > 1, "{rejects}");
    assert_eq!(count(&c, "ticks").await, good);

    let second = run();
    assert!(
        second.contains(&format!(
            "tick store: 0 ticks new, {good} already there, 0 day partitions created"
        )),
        "{second}"
    );
    assert_eq!(count(&c, "ticks").await, good);
    // The ticks never went to the lake.
    assert!(!dir.path().join("lake/ticks").exists());
}

/// Cases go in the batch's transaction: upserted as they stand, deleted
/// when they close without opening, left alone on a fenced partition, and
/// read back (exactly) as the open cases of a partition.
#[tokio::test]
async fn cases_are_upserted_with_the_batch_and_restored_per_partition() {
    use stockanomaly::model::cases::{AlertIn, CaseRule, CaseTracker};
    use stockanomaly::sinks::postgres::{commit_output, load_open_cases};
    use stockanomaly::sinks::CaseUpdate;

    let db = TestDb::new("cases").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    let s = 1_000_000;
    let mut t = CaseTracker::new(CaseRule::open_all(300 * s));
    let shap = r#"[{"contribution": 1.5, "feature": "z", "value": 4.0}]"#;
    let a = |ts: i64, score: Option<f32>, partition: i32| AlertIn {
        ts_us: 1_704_205_800_000_000 + ts * s,
        seq: 7,
        model_score: score,
        detectors: if score.is_some() { 1 } else { 2 },
        top_shap: score.map(|_| shap),
        partition: Some(partition),
    };
    t.alert("IBM", a(0, Some(0.875), 0));
    t.alert("IBM", a(10, Some(0.9375), 0));
    // A rule's alone: never opens.
    t.alert("AAPL", a(0, None, 1));
    let update = |case: stockanomaly::model::cases::Case| CaseUpdate {
        version: "xgb-abc".into(),
        source: "ticks".into(),
        detectors: "model".into(),
        likely_kinds: Some("spoofing".into()),
        case,
    };
    let ibm = t.open_case("IBM").unwrap().clone();
    let aapl = t.open_case("AAPL").unwrap().clone();
    // IBM twice in one batch (as after a partition moved away and back):
    // the last state is stored, in one statement that touches it once.
    let mut earlier = ibm.clone();
    earlier.alerts = 1;
    let stats = commit_output(
        &mut c,
        &[],
        &[],
        &[offset(0, 10, 0), offset(1, 10, 0)],
        &[update(earlier), update(ibm.clone()), update(aapl.clone())],
        None,
    )
    .await
    .unwrap();
    assert_eq!(stats.cases_upserted, 2);
    let back = load_open_cases(&c, "xgb-abc", "ticks", &[0]).await.unwrap();
    assert_eq!(back.len(), 1);
    let mut restored = back[0].clone();
    // JSON comes back as PostgreSQL writes it.
    assert!(restored
        .top_shap
        .take()
        .unwrap()
        .contains("\"feature\": \"z\""));
    let mut want = ibm.clone();
    want.top_shap = None;
    assert_eq!(restored, want, "restored exactly");
    assert_eq!(
        load_open_cases(&c, "xgb-abc", "ticks", &[1])
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(load_open_cases(&c, "xgb-abc", "other", &[0, 1])
        .await
        .unwrap()
        .is_empty());

    // AAPL closes unopened: deleted. IBM closes opened: kept, closed.
    let mut closed_aapl = aapl;
    closed_aapl.closed = true;
    let mut closed_ibm = ibm;
    closed_ibm.closed = true;
    commit_output(
        &mut c,
        &[],
        &[],
        &[],
        &[update(closed_ibm), update(closed_aapl)],
        None,
    )
    .await
    .unwrap();
    let rows = c
        .query(
            "SELECT symbol, status, alerts, likely_kinds, opened_at IS NOT NULL FROM cases",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].get::<_, String>(0),
            rows[0].get::<_, String>(1),
            rows[0].get::<_, i32>(2),
            rows[0].get::<_, Option<String>>(3),
            rows[0].get::<_, bool>(4)
        ),
        (
            "IBM".to_owned(),
            "closed".to_owned(),
            2,
            Some("spoofing".to_owned()),
            true
        )
    );
    assert!(load_open_cases(&c, "xgb-abc", "ticks", &[0, 1])
        .await
        .unwrap()
        .is_empty());

    // A member of an older generation writes nothing of a fenced partition.
    commit_output(&mut c, &[], &[], &[offset(2, 50, 0)], &[], Some(5))
        .await
        .unwrap();
    let mut late = CaseTracker::new(CaseRule::open_all(300 * s));
    late.alert("MSFT", a(0, Some(0.75), 2));
    let msft = late.open_case("MSFT").unwrap().clone();
    let stale = commit_output(
        &mut c,
        &[],
        &[],
        &[offset(2, 40, 0)],
        &[update(msft)],
        Some(4),
    )
    .await
    .unwrap();
    assert_eq!(stale.fenced, vec![2]);
    assert_eq!(stale.cases_upserted, 0);
    assert_eq!(count(&c, "cases").await, 1);
}
