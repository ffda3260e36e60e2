//! Ticks through Kafka: `stockanomaly produce` publishes the lake (a CSV, the
//! simulator) to the test broker; consuming the topic back and decoding it
//! with `JsonTickDecoder` must give exactly the ticks we started from, keys
//! included. And the in-process replay source reads the lake in event order.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
use common::{fixture, ok, service_env};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use stockanomaly::lake::{session_context, LakeRoot};
use stockanomaly::sources::csv::{CsvFormat, CsvSource};
use stockanomaly::sources::kafka::{watermark, JsonTickDecoder, WATERMARK_HEADER};
use stockanomaly::sources::replay::{ReplayOptions, ReplaySource};
use stockanomaly::sources::{Position, Source};
use stockanomaly::tick::{tick_schema, TickBuilder, Validator};

/// A topic name no other test (or earlier run) uses.
fn unique_topic(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{what}-{}-{nanos}", std::process::id())
}

/// One consumed message: partition, key, payload, and the time a
/// watermark message announces (`None`: a tick).
type Consumed = (i32, Vec<u8>, Vec<u8>, Option<i64>);

/// Every message of `topic` (which has `partitions` partitions), in
/// partition order then offset order, read until partition EOF on all of
/// them (watermarks are not trusted against tansu).
fn consume_all(brokers: &str, topic: &str, partitions: i32) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut by_partition: BTreeMap<i32, Vec<Consumed>> = BTreeMap::new();
    let mut at_eof = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while at_eof.len() < partitions as usize {
        assert!(
            Instant::now() < deadline,
            "{topic}: no EOF on every partition within 180 s (EOF on {at_eof:?})"
        );
        match consumer.poll(Duration::from_millis(500)) {
            None => {}
            Some(Ok(m)) => {
                at_eof.remove(&m.partition());
                let mark = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == WATERMARK_HEADER)
                        .map(|h| watermark::parse(h.value).unwrap())
                });
                by_partition.entry(m.partition()).or_default().push((
                    m.partition(),
                    m.key().unwrap_or_default().to_vec(),
                    m.payload().unwrap_or_default().to_vec(),
                    mark,
                ));
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_eof.insert(p);
            }
            Some(Err(e)) => panic!("{topic}: consume: {e}"),
        }
    }
    by_partition.into_values().flatten().collect()
}

/// Decodes consumed messages into ticks, as a consumer would; every message
/// must decode and validate, and carry its symbol as key.
fn decode_all(messages: &[Consumed]) -> RecordBatch {
    let mut decoder = JsonTickDecoder::default();
    let mut builder = TickBuilder::with_validator("kafka", Validator::with_now(i64::MAX / 4));
    let mut partition_of: BTreeMap<String, i32> = BTreeMap::new();
    for (partition, key, payload, mark) in messages {
        if mark.is_some() {
            continue;
        }
        let tick = decoder.decode(payload).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(payload));
        });
        assert_eq!(tick.symbol.as_bytes(), key.as_slice(), "key is the symbol");
        let p = *partition_of
            .entry(tick.symbol.to_owned())
            .or_insert(*partition);
        assert_eq!(p, *partition, "{} is in one partition", tick.symbol);
        builder.push(&tick).unwrap();
    }
    builder.finish()
}

/// Checks the watermark messages' promise on `messages` (as
/// [`consume_all`] returns them): every partition of `partitions` has some,
/// each partition's never go back, every tick after one is at least as
/// new, and the last announces the newest tick of all. Returns how many.
fn check_watermarks(messages: &[Consumed], partitions: i32) -> usize {
    let mut decoder = JsonTickDecoder::default();
    let mut mark: BTreeMap<i32, i64> = BTreeMap::new();
    let mut newest = i64::MIN;
    let mut n = 0;
    for (partition, _, payload, m) in messages {
        let floor = mark.get(partition).copied().unwrap_or(i64::MIN);
        match m {
            Some(ts) => {
                assert!(
                    *ts >= floor,
                    "partition {partition}: watermark {ts} after {floor}"
                );
                mark.insert(*partition, *ts);
                n += 1;
            }
            None => {
                let ts = decoder.decode(payload).unwrap().ts_us;
                assert!(
                    ts >= floor,
                    "partition {partition}: tick at {ts} after watermark {floor}"
                );
                newest = newest.max(ts);
            }
        }
    }
    assert_eq!(
        mark.len(),
        partitions as usize,
        "watermarks on every partition: {mark:?}"
    );
    assert!(
        mark.values().all(|&m| m == newest),
        "last watermarks {mark:?}, newest tick {newest}"
    );
    n
}

/// `batch` (tick columns) sorted by the tick key.
fn by_key(batch: &RecordBatch) -> RecordBatch {
    let col = |name: &str| SortColumn {
        values: batch.column_by_name(name).unwrap().clone(),
        options: None,
    };
    let idx = lexsort_to_indices(&[col("symbol"), col("ts"), col("seq")], None).unwrap();
    take_record_batch(batch, &idx).unwrap()
}

/// Asserts two tick batches hold the same ticks row for row: keys, the
/// bits of every float and the null pattern (`source` aside: it names who
/// decoded them).
fn assert_same_ticks(got: &RecordBatch, want: &RecordBatch) {
    assert_eq!(got.num_rows(), want.num_rows(), "tick count");
    let ts = |b: &RecordBatch| {
        b.column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .to_vec()
    };
    let seq = |b: &RecordBatch| {
        b.column_by_name("seq")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .values()
            .to_vec()
    };
    let sym = |b: &RecordBatch| -> Vec<String> {
        b.column_by_name("symbol")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap().to_owned())
            .collect()
    };
    assert_eq!(sym(got), sym(want), "symbols");
    assert_eq!(ts(got), ts(want), "timestamps");
    assert_eq!(seq(got), seq(want), "seq");
    for name in [
        "price", "volume", "open", "high", "low", "bid", "ask", "bid_size", "ask_size",
    ] {
        let bits = |b: &RecordBatch| -> Vec<Option<u64>> {
            let a = b
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Float64Type>();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i).to_bits()))
                .collect()
        };
        assert_eq!(bits(got), bits(want), "column {name}");
    }
}

/// The lake's ticks, sorted by key.
async fn lake_ticks(lake: &Path) -> RecordBatch {
    let root = LakeRoot::parse(lake.to_str().unwrap()).unwrap();
    let ctx = session_context(&root).await.unwrap();
    let cols: Vec<String> = tick_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let batches = ctx
        .sql(&format!(
            "SELECT {} FROM ticks ORDER BY symbol, ts, seq",
            cols.join(", ")
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn simulate_lake(dir: &Path) -> std::path::PathBuf {
    let lake = dir.join("lake");
    ok(
        dir,
        &[
            "simulate",
            "--lake",
            lake.to_str().unwrap(),
            "--symbols",
            "5",
            "--days",
            "2",
            "--trades-per-day",
            "1500",
            "--seed",
            "11",
        ],
    );
    lake
}

#[tokio::test]
async fn produce_lake_round_trips_every_tick_exactly() {
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let dir = tempfile::tempdir().unwrap();
    let lake = simulate_lake(dir.path());
    let topic = unique_topic("lake");
    let out = ok(
        dir.path(),
        &[
            "produce",
            &format!("kafka://{brokers}/{topic}"),
            "--lake",
            lake.to_str().unwrap(),
            "--partitions",
            "3",
        ],
    );
    let want = lake_ticks(&lake).await;
    assert!(want.num_rows() > 10_000, "{} ticks", want.num_rows());
    assert!(
        out.contains(&format!("produced {} messages", fmt_count(want.num_rows()))),
        "{out}"
    );
    assert!(out.contains("(3 partitions, created)"), "{out}");

    let messages = consume_all(&brokers, &topic, 3);
    let marks = check_watermarks(&messages, 3);
    assert!(
        out.contains(&format!("and {marks} watermark messages")),
        "{out}"
    );
    let used: HashSet<i32> = messages
        .iter()
        .filter(|m| m.3.is_none())
        .map(|m| m.0)
        .collect();
    assert!(used.len() > 1, "5 symbols spread over partitions: {used:?}");
    let got = by_key(&decode_all(&messages));
    assert_same_ticks(&got, &want);
    // The lake holds ticks sharing (symbol, ts), so seq > 0 was exercised.
    let seqs = got
        .column_by_name("seq")
        .unwrap()
        .as_primitive::<UInt32Type>();
    assert!(seqs.values().iter().any(|&s| s > 0));

    // Date range: only the first day. (Named the old way, --topic and
    // --brokers: still published, with a warning.)
    let topic2 = unique_topic("lake-day");
    let out = common::run(
        dir.path(),
        &[
            "produce",
            "--topic",
            &topic2,
            "--brokers",
            &brokers,
            "--lake",
            lake.to_str().unwrap(),
            "--partitions",
            "1",
            "--from",
            "2024-01-02",
            "--to",
            "2024-01-02",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--topic/--brokers is deprecated"),
        "{stderr}"
    );
    // Both ways at once is a usage error, and no way at all says how.
    let both = common::run(
        dir.path(),
        &["produce", "kafka://localhost:1/t", "--topic", "t"],
    );
    assert_eq!(both.status.code(), Some(2));
    let none = common::run(dir.path(), &["produce", "--lake", lake.to_str().unwrap()]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("kafka://BROKER[,BROKER...]/TOPIC"));
    let day1 = by_key(&decode_all(&consume_all(&brokers, &topic2, 1)));
    let ts = day1
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let (lo, hi) = (1_704_153_600_000_000i64, 1_704_240_000_000_000i64);
    assert!(day1.num_rows() > 0 && day1.num_rows() < want.num_rows());
    assert!(ts.values().iter().all(|&t| (lo..hi).contains(&t)));
}

fn fmt_count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[tokio::test]
async fn produce_csv_publishes_the_fixture() {
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let dir = tempfile::tempdir().unwrap();
    let csv = fixture("canonical.csv");
    let topic = unique_topic("csv");
    let out = ok(
        dir.path(),
        &[
            "produce",
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--csv",
            csv.to_str().unwrap(),
            "--partitions",
            "2",
            "--rate",
            "1000",
        ],
    );
    let mut source = CsvSource::open(&csv, CsvFormat::Auto, Validator::new()).unwrap();
    let mut batches = Vec::new();
    while let Some(b) = source.read_batch().unwrap() {
        batches.push(b.ticks);
    }
    let want = by_key(&concat_batches(&tick_schema(), &batches).unwrap());
    assert!(want.num_rows() >= 4);
    assert!(
        out.contains(&format!("produced {} messages", want.num_rows())),
        "{out}"
    );
    let got = by_key(&decode_all(&consume_all(&brokers, &topic, 2)));
    assert_same_ticks(&got, &want);
}

#[tokio::test]
async fn produce_simulate_matches_the_simulator() {
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let dir = tempfile::tempdir().unwrap();
    let topic = unique_topic("sim");
    ok(
        dir.path(),
        &[
            "produce",
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--simulate",
            "--symbols",
            "3",
            "--days",
            "1",
            "--trades-per-day",
            "500",
            "--seed",
            "5",
            "--partitions",
            "2",
        ],
    );
    let sim = stockanomaly::sources::simulate::Simulator::new(
        stockanomaly::sources::simulate::SimConfig {
            symbols: 3,
            days: 1,
            seed: 5,
            trades_per_day: 500.0,
            ..Default::default()
        },
    );
    let want = by_key(&sim.simulate_day(0).ticks);
    let got = by_key(&decode_all(&consume_all(&brokers, &topic, 2)));
    assert_same_ticks(&got, &want);
}

#[tokio::test]
async fn replay_source_yields_the_lake_in_event_order() {
    let dir = tempfile::tempdir().unwrap();
    let lake = simulate_lake(dir.path());
    let want = lake_ticks(&lake).await;
    let root = LakeRoot::parse(lake.to_str().unwrap()).unwrap();

    for speed in [None, Some(1e5)] {
        let options = ReplayOptions {
            batch_rows: 1000,
            speed,
            ..ReplayOptions::default()
        };
        let mut source = ReplaySource::open(&root, options).await.unwrap();
        assert_eq!(source.dates_left(), 2);
        let mut batches = Vec::new();
        let mut last_key: Option<(i64, u32, String)> = None;
        while let Some(b) = source.next_batch().await.unwrap() {
            let t = &b.ticks;
            assert!(
                t.num_rows() >= 1 && t.num_rows() <= 1000,
                "{}",
                t.num_rows()
            );
            assert_eq!(t.schema(), tick_schema());
            let ts = t.column(0).as_primitive::<TimestampMicrosecondType>();
            let sym = t.column(1).as_string::<i32>();
            let seq = t.column(2).as_primitive::<UInt32Type>();
            for i in 0..t.num_rows() {
                let key = (ts.value(i), seq.value(i), sym.value(i).to_owned());
                if let Some(prev) = &last_key {
                    assert!(*prev <= key, "{prev:?} then {key:?}");
                }
                last_key = Some(key);
            }
            if speed.is_some() {
                // Paced batches span at most 100 ms of wall time.
                let span = ts.value(t.num_rows() - 1) - ts.value(0);
                assert!(span <= 10_000_000_000, "span {span} µs");
            }
            let n = t.num_rows() - 1;
            match &b.position {
                Position::Replay {
                    ts_us,
                    seq: s,
                    symbol,
                    ticks,
                } => {
                    assert_eq!(*ts_us, ts.value(n));
                    assert_eq!(*s, seq.value(n));
                    assert_eq!(symbol, sym.value(n));
                    assert_eq!(
                        *ticks,
                        batches.iter().map(RecordBatch::num_rows).sum::<usize>() as u64
                            + t.num_rows() as u64
                    );
                }
                other => panic!("{other:?}"),
            }
            batches.push(b.ticks);
        }
        assert_eq!(source.ticks_replayed(), want.num_rows() as u64);
        let got = by_key(&concat_batches(&tick_schema(), &batches).unwrap());
        assert_same_ticks(&got, &want);
    }
}
