//! Publishing tick batches to a topic: one JSON message per tick, keyed by
//! symbol, through an idempotent producer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use super::watermark::{self, WATERMARK_HEADER};
use crate::tick::schema;
use crate::tick::{NotTickBatch, TickView};

/// What went wrong talking to the broker; each names the topic (and the
/// partition, offset or tick involved when there is one).
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The client could not be configured or created.
    #[error("kafka {brokers}: cannot create a client: {source}")]
    Client {
        /// The bootstrap servers.
        brokers: String,
        /// rdkafka's error (boxed: it is large, and errors are rare).
        #[source]
        source: Box<KafkaError>,
    },
    /// The topic does not exist and could not be created.
    #[error("kafka topic {topic}: cannot create it: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// The topic's metadata could not be read.
    #[error("kafka topic {topic}: cannot read its metadata: {reason}")]
    Metadata {
        /// The topic.
        topic: String,
        /// What failed.
        reason: String,
    },
    /// A message could not be queued for sending.
    #[error("kafka topic {topic}: cannot send the tick of {symbol} at {ts}: {source}")]
    Enqueue {
        /// The topic.
        topic: String,
        /// The tick's symbol (the message key).
        symbol: String,
        /// The tick's event time.
        ts: String,
        /// rdkafka's error (boxed: it is large, and errors are rare).
        #[source]
        source: Box<KafkaError>,
    },
    /// A watermark message could not be queued for sending.
    #[error(
        "kafka topic {topic}: cannot send a watermark message to partition {partition}: {source}"
    )]
    EnqueueWatermark {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// rdkafka's error (boxed: it is large, and errors are rare).
        #[source]
        source: Box<KafkaError>,
    },
    /// The broker refused or lost messages (after the producer's retries).
    #[error(
        "kafka topic {topic}: {failed} message(s) not delivered; the first, to partition \
         {partition}: {first}"
    )]
    Delivery {
        /// The topic.
        topic: String,
        /// Messages that failed.
        failed: u64,
        /// Partition of the first failure.
        partition: i32,
        /// The first failure.
        first: String,
    },
    /// Waiting for outstanding messages failed or timed out.
    #[error("kafka topic {topic}: flush: {source}")]
    Flush {
        /// The topic.
        topic: String,
        /// rdkafka's error (boxed: it is large, and errors are rare).
        #[source]
        source: Box<KafkaError>,
    },
    /// The batch handed in is not a tick batch (a caller's bug).
    #[error(transparent)]
    NotTickBatch(#[from] NotTickBatch),
}

/// The topic as [`ensure_topic`] left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicStatus {
    /// Whether this call created it.
    pub created: bool,
    /// Its partitions (an existing topic keeps its own count).
    pub partitions: usize,
}

/// Creates `topic` with `partitions` partitions (replication 1) unless it
/// exists, and answers how many partitions it has.
pub async fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> Result<TopicStatus, ProduceError> {
    ensure_topic_with(&super::KafkaConfig::new(brokers), topic, partitions).await
}

/// [`ensure_topic`] with the client options of `kafka` (TLS, SASL).
pub async fn ensure_topic_with(
    kafka: &super::KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<TopicStatus, ProduceError> {
    let brokers = kafka.brokers();
    let admin: AdminClient<DefaultClientContext> = kafka
        .finish(&mut kafka.client())
        .create()
        .map_err(|source| ProduceError::Client {
            brokers: brokers.to_owned(),
            source: Box::new(kafka.redact(source)),
        })?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .map_err(|e| ProduceError::CreateTopic {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })?;
    let mut created = false;
    for r in results {
        match r {
            Ok(_) => created = true,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(ProduceError::CreateTopic {
                    topic: topic.to_owned(),
                    reason: code.to_string(),
                })
            }
        }
    }
    // A new topic's partitions can take a moment to show in the metadata.
    let mut last = String::from("no partitions");
    for _ in 0..50 {
        match admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
        {
            Ok(md) => {
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map_or(0, |t| t.partitions().len());
                if n > 0 {
                    return Ok(TopicStatus {
                        created,
                        partitions: n,
                    });
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ProduceError::Metadata {
        topic: topic.to_owned(),
        reason: last,
    })
}

/// Counts delivery reports; librdkafka calls it from the producer's thread.
#[derive(Debug, Default)]
pub struct DeliveryTracker {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<(i32, String)>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(msg) => {
                // Watermark messages are the only ones with headers.
                let mark = msg
                    .headers()
                    .is_some_and(|h| h.iter().any(|h| h.key == WATERMARK_HEADER));
                if !mark {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err((e, msg)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_failure.lock() {
                    first.get_or_insert_with(|| {
                        let key = msg.key().map(String::from_utf8_lossy).unwrap_or_default();
                        (msg.partition(), format!("key {key}: {e}"))
                    });
                }
            }
        }
    }
}

/// Messages and payload bytes sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Messages queued.
    pub messages: u64,
    /// Payload bytes queued (keys not counted).
    pub bytes: u64,
    /// Messages the broker acknowledged so far.
    pub delivered: u64,
    /// Watermark messages queued (not in `messages`; see
    /// [`TickPublisher::with_watermarks`]).
    pub watermarks: u64,
}

/// How often a publisher sends watermark messages, and what it knows for
/// them.
struct Watermarks {
    every: Duration,
    last_round: Instant,
    /// Newest tick time published, and the newest announced.
    newest: i64,
    sent: i64,
    /// The topic's partitions, and when they were last looked up.
    partitions: i32,
    looked_up: Option<Instant>,
    /// A lookup in flight. A metadata request blocks its thread (up to
    /// [`LOOKUP_TIMEOUT`] when the broker does not answer), so it runs on
    /// a blocking thread and the publisher goes on meanwhile.
    lookup: Option<tokio::task::JoinHandle<Result<usize, KafkaError>>>,
}

/// How often a publisher looks up its topic's partitions again.
const PARTITIONS_LOOKUP: Duration = Duration::from_secs(60);

/// How long a partition lookup may wait for the broker.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes ticks as JSON ([`TickView::encode`]) keyed by symbol.
///
/// The producer is idempotent with `acks=all`: a retried batch is not
/// duplicated and messages of one partition keep their order, which the
/// consumer's `seq` assignment relies on. Callers publish each symbol's ticks
/// in `(ts, seq)` order; the key sends them all to one partition.
pub struct TickPublisher {
    // Shared with a partition lookup on a blocking thread.
    producer: Arc<ThreadedProducer<DeliveryTracker>>,
    topic: String,
    buf: Vec<u8>,
    stats: PublishStats,
    watermarks: Option<Watermarks>,
}

impl TickPublisher {
    /// A publisher to `topic` on `kafka`'s brokers; its options
    /// (`--kafka-option`: TLS, SASL, tuning) are applied over the defaults
    /// (`enable.idempotence=true`, `acks=all`, `compression.type=zstd`,
    /// `linger.ms=20`), and never shown in errors.
    pub fn new(kafka: &super::KafkaConfig, topic: &str) -> Result<Self, ProduceError> {
        let mut config = kafka.client();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "zstd")
            .set("linger.ms", "20")
            .set("message.timeout.ms", "120000");
        let producer = kafka
            .finish(&mut config)
            .create_with_context(DeliveryTracker::default())
            .map_err(|source| ProduceError::Client {
                brokers: kafka.brokers().to_owned(),
                source: Box::new(kafka.redact(source)),
            })?;
        Ok(Self {
            producer: Arc::new(producer),
            topic: topic.to_owned(),
            buf: Vec::with_capacity(512),
            stats: PublishStats::default(),
            watermarks: None,
        })
    }

    /// Also sends, at most every `every` and only when time moved on, a
    /// watermark message to every partition of the topic with the newest
    /// tick time published (see [`super::watermark`]), so that consumers
    /// close market buckets without waiting for partitions that carry no
    /// ticks. Only for callers that publish in event-time order (the
    /// promise the watermark makes); `Duration::ZERO`: none.
    pub fn with_watermarks(mut self, every: Duration) -> Self {
        self.watermarks = (!every.is_zero()).then(|| Watermarks {
            every,
            last_round: Instant::now(),
            newest: i64::MIN,
            sent: i64::MIN,
            partitions: 0,
            looked_up: None,
            lookup: None,
        });
        self
    }

    /// Sends the watermark messages now if time moved on since the last
    /// ones (the end of a run: consumers need not wait for silence),
    /// waiting for the topic's partitions if they are being looked up.
    pub async fn send_watermarks(&mut self) -> Result<(), ProduceError> {
        self.watermark_round(true).await
    }

    /// One round of watermark messages. The topic's partitions are looked
    /// up in the background (once a minute); until the first answer there
    /// is no round, and the time stays to announce in the next one.
    /// `wait`: wait for a lookup in flight (the end of a run) instead.
    async fn watermark_round(&mut self, wait: bool) -> Result<(), ProduceError> {
        let Some(w) = &mut self.watermarks else {
            return Ok(());
        };
        w.last_round = Instant::now();
        if w.newest <= w.sent {
            return Ok(());
        }
        if w.lookup.is_none() && w.looked_up.is_none_or(|t| t.elapsed() >= PARTITIONS_LOOKUP) {
            w.looked_up = Some(Instant::now());
            let (producer, topic) = (Arc::clone(&self.producer), self.topic.clone());
            w.lookup = Some(tokio::task::spawn_blocking(move || {
                let md = producer
                    .client()
                    .fetch_metadata(Some(&topic), LOOKUP_TIMEOUT)?;
                Ok(md.topics().first().map_or(0, |t| t.partitions().len()))
            }));
        }
        if let Some(lookup) = w.lookup.take_if(|h| wait || h.is_finished()) {
            match lookup.await {
                Ok(Ok(n)) => w.partitions = i32::try_from(n).unwrap_or(i32::MAX),
                Ok(Err(e)) => {
                    tracing::warn!(topic = %self.topic, error = %e, "Cannot look up the topic's partitions for watermark messages; trying again in a minute.");
                }
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "The lookup of the topic's partitions for watermark messages failed; trying again in a minute.");
                }
            }
        }
        if w.partitions == 0 {
            return Ok(());
        }
        let value = watermark::encode(w.newest);
        let (newest, partitions) = (w.newest, w.partitions);
        for partition in 0..partitions {
            let headers = OwnedHeaders::new().insert(Header {
                key: WATERMARK_HEADER,
                value: Some(value.as_bytes()),
            });
            let record = BaseRecord::<(), [u8]>::to(&self.topic)
                .partition(partition)
                .payload(&[])
                .headers(headers);
            send_when_room(&self.producer, record)
                .await
                .map_err(|source| ProduceError::EnqueueWatermark {
                    topic: self.topic.clone(),
                    partition,
                    source: Box::new(source),
                })?;
            self.stats.watermarks += 1;
        }
        if let Some(w) = &mut self.watermarks {
            w.sent = newest;
        }
        Ok(())
    }

    /// The topic published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes row `row` of `cols`. Waits (without blocking the runtime)
    /// while the producer's queue is full; fails as soon as a delivery has
    /// failed, so a dead broker stops the run instead of filling memory.
    pub async fn publish(&mut self, cols: &TickView<'_>, row: usize) -> Result<(), ProduceError> {
        self.check_deliveries()?;
        self.buf.clear();
        cols.encode(row, &mut self.buf);
        let symbol = cols.symbol(row);
        let record = BaseRecord::to(&self.topic)
            .key(symbol)
            .payload(&self.buf[..]);
        send_when_room(&self.producer, record)
            .await
            .map_err(|source| ProduceError::Enqueue {
                topic: self.topic.clone(),
                symbol: symbol.to_owned(),
                ts: fmt_ts(cols.ts_us(row)),
                source: Box::new(source),
            })?;
        self.stats.messages += 1;
        self.stats.bytes += self.buf.len() as u64;
        if let Some(w) = &mut self.watermarks {
            w.newest = w.newest.max(cols.ts_us(row));
            if w.last_round.elapsed() >= w.every {
                self.watermark_round(false).await?;
            }
        }
        Ok(())
    }

    /// Publishes every row of a tick batch, in row order.
    pub async fn publish_batch(&mut self, batch: &RecordBatch) -> Result<(), ProduceError> {
        let cols = TickView::new(batch)?;
        for row in 0..cols.len() {
            self.publish(&cols, row).await?;
        }
        Ok(())
    }

    /// What was sent so far.
    pub fn stats(&self) -> PublishStats {
        PublishStats {
            delivered: self.producer.context().delivered.load(Ordering::Relaxed),
            ..self.stats
        }
    }

    /// Waits up to `timeout` until every message is acknowledged (this
    /// blocks the calling thread) and fails if any was not.
    pub fn flush(&self, timeout: Duration) -> Result<PublishStats, ProduceError> {
        self.producer
            .flush(timeout)
            .map_err(|source| ProduceError::Flush {
                topic: self.topic.clone(),
                source: Box::new(source),
            })?;
        self.check_deliveries()?;
        Ok(self.stats())
    }

    fn check_deliveries(&self) -> Result<(), ProduceError> {
        let ctx = self.producer.context();
        let failed = ctx.failed.load(Ordering::Relaxed);
        if failed == 0 {
            return Ok(());
        }
        let (partition, first) = ctx
            .first_failure
            .lock()
            .ok()
            .and_then(|f| f.clone())
            .unwrap_or((-1, "unknown".into()));
        Err(ProduceError::Delivery {
            topic: self.topic.clone(),
            failed,
            partition,
            first,
        })
    }
}

/// Queues `record`, waiting (without blocking the runtime) while the
/// producer's queue is full.
async fn send_when_room<K: rdkafka::message::ToBytes + ?Sized>(
    producer: &ThreadedProducer<DeliveryTracker>,
    mut record: BaseRecord<'_, K, [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((source, _)) => return Err(source),
        }
    }
}

/// Orders a tick batch for publishing: by `ts`, then `seq`, then `symbol`
/// (the last only for a deterministic order across symbols), so that every
/// symbol's ticks leave in key order.
pub fn sort_event_time(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::compute::{lexsort_to_indices, take_record_batch, SortColumn};
    let column = |name: &str| -> Result<SortColumn, arrow::error::ArrowError> {
        let i = batch.schema_ref().index_of(name)?;
        Ok(SortColumn {
            values: batch.column(i).clone(),
            options: None,
        })
    };
    let keys = [
        column(schema::col::TS)?,
        column(schema::col::SEQ)?,
        column(schema::col::SYMBOL)?,
    ];
    let indices = lexsort_to_indices(&keys, None)?;
    take_record_batch(batch, &indices)
}

fn fmt_ts(ts_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("{ts_us}µs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that does not answer holds a partition lookup for its
    /// timeout: the publisher must not wait for it between ticks.
    #[tokio::test]
    async fn a_lookup_the_broker_does_not_answer_holds_no_round() {
        let kafka = super::super::KafkaConfig::new("127.0.0.1:1");
        let mut p = TickPublisher::new(&kafka, "ticks")
            .unwrap()
            .with_watermarks(Duration::from_millis(1));
        if let Some(w) = &mut p.watermarks {
            w.newest = 5;
        }
        let started = Instant::now();
        p.watermark_round(false).await.unwrap();
        p.watermark_round(false).await.unwrap();
        assert!(
            started.elapsed() < LOOKUP_TIMEOUT / 5,
            "rounds waited {:?} for the lookup",
            started.elapsed()
        );
        let w = p.watermarks.as_ref().unwrap();
        assert!(w.lookup.is_some(), "the lookup runs in the background");
        assert_eq!(p.stats.watermarks, 0, "no partitions known: none sent");
        assert!(w.sent < 5, "the time stays to announce");

        // The end of a run waits for it (and it fails: none sent).
        p.send_watermarks().await.unwrap();
        let w = p.watermarks.as_ref().unwrap();
        assert!(w.lookup.is_none() && w.sent < 5);
        assert!(started.elapsed() >= Duration::from_secs(1), "it did wait");
    }
}
