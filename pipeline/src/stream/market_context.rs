//! `market-context`: the one consumer of the **whole** tick topic that
//! computes the market rows of each one-minute bucket once it is closed
//! ([`BucketCloser`]) and publishes them to the `market` topic, which every
//! detector reads in full ([`crate::stream::Executor::push_market`]).
//!
//! A detector only sees its own partitions' symbols, so it cannot compute
//! a cross-section; this stage can, with the same bucket query and the same
//! closing rule as backfill's per-date pass, so the features agree.
//!
//! **Messages.** One per closing: an Arrow IPC stream of the closed
//! buckets' rows (the `market` table's schema, possibly no rows) whose
//! schema metadata `closed_until` (µs) says every earlier bucket is closed.
//! The topic has one partition, so the last message is the stage's state.
//!
//! **Restarts.** Offsets are committed to the consumer group once the rows
//! of every tick before them are published: per partition the first tick
//! still in an open bucket. On start the stage reads the last message's
//! `closed_until` back, so ticks of buckets already published are refused
//! as late instead of making a second, partial row; a repeated bucket is
//! ignored by detectors anyway.
//!
//! **Bad and late ticks.** Undecodable or invalid messages and ticks late
//! for their symbol (more than the allowed lateness behind its newest) or
//! for their bucket are counted and logged here; the detectors reading the
//! same topic dead-letter them with the record and reason.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::detect::QuietEof;
use super::market::{bucket_rows, BucketCloser, CloserConfig};
use crate::features::market::market_schema;
use crate::features::profiles::{profiles_for, ProfileError};
use crate::lake::LakeRoot;
use crate::sources::kafka::JsonTickDecoder;
use crate::tick::{tick_schema, TickBuilder};

/// Schema metadata key of a market message: every bucket before this (µs
/// since the epoch) is closed.
pub const CLOSED_UNTIL: &str = "closed_until";

/// Where and how `market-context` runs.
#[derive(Debug, Clone)]
pub struct MarketContextOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The tick topic (read in full).
    pub topic: String,
    /// The topic the market rows go to.
    pub market_topic: String,
    /// Consumer group of the stage (its offsets live in Kafka).
    pub group: String,
    /// Most ticks read before closing buckets.
    pub batch_rows: usize,
    /// Longest wait to fill a batch.
    pub batch_wait: Duration,
    /// How buckets close.
    pub closer: CloserConfig,
    /// Stop after this long without a tick, closing every bucket first (the
    /// end of a replay); run until a signal otherwise.
    pub exit_when_idle: Option<Duration>,
}

/// What a `market-context` run did.
#[derive(Debug, Default, Clone)]
pub struct MarketContextSummary {
    /// Messages read from the tick topic.
    pub messages: u64,
    /// Ticks counted in buckets.
    pub ticks: u64,
    /// Messages that were not valid ticks.
    pub rejected: u64,
    /// Ticks refused as late (for their symbol or their bucket).
    pub late: u64,
    /// Market rows published.
    pub rows: u64,
    /// Market messages published.
    pub published: u64,
    /// The last `closed_until` published (µs), if any.
    pub closed_until: Option<i64>,
}

/// Why `market-context` stopped.
#[derive(Debug, thiserror::Error)]
pub enum MarketContextError {
    /// Kafka failed.
    #[error("Kafka ({context}): {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The market topic could not be created.
    #[error(transparent)]
    Topic(#[from] crate::sources::kafka::ProduceError),
    /// Computing the rows failed.
    #[error(transparent)]
    Rows(#[from] ProfileError),
    /// Arranging ticks failed.
    #[error("arranging ticks: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A message of the market topic is not one this stage writes.
    #[error("market topic {topic}, offset {offset}: {reason}")]
    BadMessage {
        /// The market topic.
        topic: String,
        /// The message's offset.
        offset: i64,
        /// What is wrong.
        reason: String,
    },
}

/// Encodes a market message (see the module documentation).
pub fn encode_market(
    rows: &RecordBatch,
    closed_until: i64,
) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new_with_metadata(
        rows.schema().fields().clone(),
        HashMap::from([(CLOSED_UNTIL.to_owned(), closed_until.to_string())]),
    ));
    let rows = RecordBatch::try_new(Arc::clone(&schema), rows.columns().to_vec())?;
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)?;
        w.write(&rows)?;
        w.finish()?;
    }
    Ok(out)
}

/// Decodes a market message: its rows (the `market` schema) and
/// `closed_until`.
pub fn decode_market(payload: &[u8]) -> Result<(RecordBatch, i64), String> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(payload), None)
        .map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
    let schema = reader.schema();
    let closed_until = schema
        .metadata()
        .get(CLOSED_UNTIL)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| format!("no `{CLOSED_UNTIL}` in the schema metadata"))?;
    let want = market_schema();
    let mut batches = Vec::new();
    for b in reader {
        let b = b.map_err(|e| format!("unreadable rows: {e}"))?;
        let b = RecordBatch::try_new(Arc::clone(&want), b.columns().to_vec())
            .map_err(|e| format!("not the market table's schema: {e}"))?;
        batches.push(b);
    }
    let rows = arrow::compute::concat_batches(&want, &batches).map_err(|e| e.to_string())?;
    Ok((rows, closed_until))
}

/// The `closed_until` of the market topic's last message (`None`: empty or
/// missing topic), so a restarted stage does not publish a bucket twice.
pub fn last_closed_until(brokers: &str, topic: &str) -> Result<Option<i64>, MarketContextError> {
    let kafka = |context: &str| {
        let context = context.to_owned();
        move |source| MarketContextError::Kafka { context, source }
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "stockanomaly-market-resume")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(kafka("creating the resume reader"))?;
    let (low, high) = match consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) {
        Ok(w) => w,
        Err(_) => return Ok(None),
    };
    if high <= low {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(high - 1))
        .map_err(kafka("positioning the resume reader"))?;
    consumer
        .assign(&tpl)
        .map_err(kafka("assigning the resume reader"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let (_, closed) =
                    decode_market(m.payload().unwrap_or_default()).map_err(|reason| {
                        MarketContextError::BadMessage {
                            topic: topic.to_owned(),
                            offset: m.offset(),
                            reason,
                        }
                    })?;
                return Ok(Some(closed));
            }
            Some(Err(e)) => return Err(kafka("reading the last market message")(e)),
            None => continue,
        }
    }
    Err(MarketContextError::BadMessage {
        topic: topic.to_owned(),
        offset: high - 1,
        reason: "the last message could not be read within 30 s".into(),
    })
}

/// Runs the stage until a signal (or idleness, see
/// [`MarketContextOptions::exit_when_idle`]). `symbols` is the lake's
/// `symbols` table (with its `date` column); `lake`, if any, gives the
/// intraday profiles the relative volumes are measured against.
pub async fn market_context(
    sql: &str,
    symbols: &RecordBatch,
    lake: Option<&LakeRoot>,
    options: &MarketContextOptions,
) -> Result<MarketContextSummary, MarketContextError> {
    let kafka = |context: &str| {
        let context = context.to_owned();
        move |source| MarketContextError::Kafka { context, source }
    };
    crate::sources::kafka::ensure_topic(&options.brokers, &options.market_topic, 1).await?;
    let resumed = last_closed_until(&options.brokers, &options.market_topic)?;
    let consumer: StreamConsumer<QuietEof> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("enable.partition.eof", "true")
        .create_with_context(QuietEof)
        .map_err(kafka("creating the consumer"))?;
    consumer
        .subscribe(&[options.topic.as_str()])
        .map_err(kafka(&format!("subscribing to {}", options.topic)))?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(kafka("creating the producer"))?;

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let schema = held_schema();
    let mut closer = BucketCloser::new(Arc::clone(&schema), options.closer);
    closer.idle_needs_end();
    if let Some(c) = resumed {
        tracing::info!(
            closed_until = c,
            "Resuming after the last published bucket."
        );
        closer.resume(c);
    }
    let lateness = i64::try_from(options.closer.allowed_lateness.as_micros()).unwrap_or(i64::MAX);
    let mut newest: HashMap<String, i64> = HashMap::new();
    // Last offset read per partition, for the commit when nothing is open.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut profiles: BTreeMap<i64, RecordBatch> = BTreeMap::new();
    let mut decoder = JsonTickDecoder::default();
    let mut builder = TickBuilder::new(&format!("kafka:{}", options.topic));
    let mut summary = MarketContextSummary {
        closed_until: resumed,
        ..Default::default()
    };
    let mut reading = Duration::ZERO;
    let mut quiet = Duration::ZERO;
    loop {
        let mut parts: Vec<i32> = Vec::new();
        let mut offs: Vec<i64> = Vec::new();
        let fill_started = Instant::now();
        let deadline = fill_started + options.batch_wait;
        let before = summary.messages;
        let mut stop = false;
        while parts.len() < options.batch_rows {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let msg = tokio::select! {
                m = tokio::time::timeout(left, consumer.recv()) => m,
                _ = stop_rx.changed() => { stop = true; break; }
            };
            let Ok(msg) = msg else { break };
            let msg = match msg {
                Ok(m) => m,
                Err(rdkafka::error::KafkaError::MessageConsumption(code)) => {
                    tracing::warn!(error = %code, topic = %options.topic, "Kafka consumption error; retrying.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    closer.caught_up(p, reading + fill_started.elapsed());
                    continue;
                }
                Err(e) => return Err(kafka("receiving")(e)),
            };
            summary.messages += 1;
            let (p, o) = (msg.partition(), msg.offset());
            last.insert(p, o);
            let payload = msg.payload().unwrap_or_default();
            match decoder.decode(payload).and_then(|r| builder.push(&r)) {
                Ok(()) => {
                    parts.push(p);
                    offs.push(o);
                }
                Err(rejection) => {
                    summary.rejected += 1;
                    tracing::warn!(
                        partition = p,
                        offset = o,
                        reason = rejection.reason.code(),
                        detail = %rejection.detail,
                        "Not a tick; not counted in any bucket (the detectors dead-letter it)."
                    );
                }
            }
        }
        let filled = fill_started.elapsed();
        reading += filled;
        closer.expect(&super::detect::assigned(&consumer, &options.topic), reading);
        for p in super::detect::behind(&consumer, &options.topic, &closer.idle_at_end(reading)) {
            closer.not_caught_up(p);
        }
        if summary.messages == before {
            quiet += filled;
        } else {
            quiet = Duration::ZERO;
        }
        let ticks = builder.finish();
        if ticks.num_rows() > 0 {
            // Late for its symbol, as the detectors judge it.
            let syms = ticks.column(1).as_string::<i32>();
            let ts = ticks.column(0).as_primitive::<TimestampMicrosecondType>();
            let keep: BooleanArray = (0..ticks.num_rows())
                .map(|i| {
                    let (sym, t) = (syms.value(i), ts.value(i));
                    // A String only for a symbol's first tick, not per tick.
                    match newest.get_mut(sym) {
                        Some(n) => {
                            let ok = t >= n.saturating_sub(lateness);
                            *n = (*n).max(t);
                            Some(ok)
                        }
                        None => {
                            newest.insert(sym.to_owned(), t);
                            Some(true)
                        }
                    }
                })
                .collect();
            let mut columns: Vec<ArrayRef> = ticks.columns().to_vec();
            columns.push(Arc::new(Int32Array::from(parts)));
            columns.push(Arc::new(Int64Array::from(offs)));
            let all = RecordBatch::try_new(Arc::clone(&schema), columns)?;
            summary.late += (all.num_rows() - keep.true_count()) as u64;
            let kept = filter_record_batch(&all, &keep)?;
            let partitions = kept
                .column(kept.num_columns() - 2)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .clone();
            let late = closer.admit(&kept, &partitions, reading)?;
            let late_n = late.iter().filter(|l| **l).count();
            if late_n > 0 {
                tracing::warn!(
                    ticks = late_n,
                    "Ticks of buckets already closed: not counted (the detectors refuse them as late)."
                );
            }
            summary.late += late_n as u64;
            summary.ticks += (kept.num_rows() - late_n) as u64;
        }
        // Joining a group can take many seconds on a loaded machine: before
        // the first message, wait at least 60 s (as `detect` does).
        let end = options.exit_when_idle.is_some_and(|idle| {
            let limit = if summary.messages == 0 {
                idle.max(Duration::from_secs(60))
            } else {
                idle
            };
            quiet >= limit
        });
        // A watermark that closed no ticks is not worth a message, except
        // at the end (the state a restart resumes from).
        if let Some(closed) = closer
            .close(reading, end)?
            .filter(|c| c.ticks.num_rows() > 0 || end)
        {
            let rows = if closed.ticks.num_rows() == 0 {
                RecordBatch::new_empty(market_schema())
            } else {
                if let Some(root) = lake {
                    load_profiles(root, &closed.ticks, &mut profiles).await?;
                }
                let day_profiles: Vec<RecordBatch> = profiles.values().cloned().collect();
                bucket_rows(&closed.ticks, symbols, &day_profiles, sql).await?
            };
            let body = encode_market(&rows, closed.closed_until)?;
            let key = closed.closed_until.to_string();
            producer
                .send(
                    FutureRecord::to(&options.market_topic)
                        .key(&key)
                        .payload(&body),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| kafka(&format!("publishing to {}", options.market_topic))(e))?;
            summary.rows += rows.num_rows() as u64;
            summary.published += 1;
            summary.closed_until = Some(closed.closed_until);
            tracing::info!(
                closed_until = closed.closed_until,
                rows = rows.num_rows(),
                "Market buckets published."
            );
            commit(&consumer, &options.topic, &closer, &last)?;
        }
        if end || stop {
            break;
        }
    }
    Ok(summary)
}

/// Tick columns, then the source partition and offset.
fn held_schema() -> SchemaRef {
    let mut fields: Vec<Field> = tick_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("_partition", DataType::Int32, false));
    fields.push(Field::new("_offset", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Loads the profiles of the days of `ticks` not loaded yet.
async fn load_profiles(
    root: &LakeRoot,
    ticks: &RecordBatch,
    loaded: &mut BTreeMap<i64, RecordBatch>,
) -> Result<(), ProfileError> {
    const DAY_US: i64 = 86_400_000_000;
    let ts = ticks.column(0).as_primitive::<TimestampMicrosecondType>();
    let days: std::collections::BTreeSet<i64> =
        ts.values().iter().map(|t| t.div_euclid(DAY_US)).collect();
    // Only the days at hand: a long run does not keep every day's.
    loaded.retain(|d, _| days.contains(d));
    for d in days {
        if loaded.contains_key(&d) {
            continue;
        }
        let Some(date) = chrono::DateTime::from_timestamp(d * 86_400, 0).map(|t| t.date_naive())
        else {
            continue;
        };
        let (batch, stored) = profiles_for(root, date).await?;
        if !stored {
            tracing::warn!(%date, "No stored intraday profiles for the day: made from the lake.");
        }
        loaded.insert(d, batch);
    }
    Ok(())
}

/// Commits, per partition, the first offset whose bucket is still open (or
/// the one after the last read when none is).
fn commit(
    consumer: &StreamConsumer<QuietEof>,
    topic: &str,
    closer: &BucketCloser,
    last: &BTreeMap<i32, i64>,
) -> Result<(), MarketContextError> {
    let mut next: BTreeMap<i32, i64> = last.iter().map(|(&p, &o)| (p, o + 1)).collect();
    for b in closer.open() {
        let n = b.num_columns();
        let parts = b
            .column(n - 2)
            .as_primitive::<arrow::datatypes::Int32Type>();
        let offs = b
            .column(n - 1)
            .as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            let e = next.entry(parts.value(i)).or_insert(offs.value(i));
            *e = (*e).min(offs.value(i));
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in next {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .map_err(|source| MarketContextError::Kafka {
                context: format!("committing {topic}/{p}"),
                source,
            })?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|source| MarketContextError::Kafka {
            context: format!("committing {topic}"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn market_messages_round_trip() {
        let rows = RecordBatch::new_empty(market_schema());
        let body = encode_market(&rows, 42).unwrap();
        let (back, closed) = decode_market(&body).unwrap();
        assert_eq!(closed, 42);
        assert_eq!(back.num_rows(), 0);
        assert!(decode_market(b"{\"not\": \"arrow\"}").is_err());
    }
}
