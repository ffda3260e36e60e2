//! [`KafkaSource`]: a consumer group member reading JSON ticks from a topic
//! as a [`Source`].
//!
//! **Resume.** With stored offsets ([`Resume::Stored`], the detector), the
//! first message of a partition makes the source look the partition up in
//! the [`OffsetStore`] (read then, not at start: another member of the group
//! may have moved it since), seek back to its warm-up offset and replay up
//! to its next offset as **warm-up** ticks (history, never emitted): that
//! restores the symbols' state and `seq` numbering exactly. Messages fetched
//! before a seek may still arrive and are skipped. Without
//! ([`Resume::Committed`], the market-context stage) the group's committed
//! offsets in Kafka are the position.
//!
//! **Rebalances.** Assignments and revocations are reported net per batch
//! ([`StreamBatch::assigned`], [`StreamBatch::revoked`]): a partition taken
//! away has its ticks of the batch processed, then the source forgets its
//! phase, cursor and symbols before the next fill; whoever owns it next
//! resumes from the stored offsets.
//!
//! **Gaps.** The stored offsets may no longer exist: retention deleted the
//! warm-up range, or the topic was recreated. The broker's watermarks are
//! checked when a partition is resumed (and on the first message after the
//! seek, should that not be the one sought): the gap is logged with the
//! partition and offsets, reported ([`StreamBatch::gaps`]), and the warm-up
//! restarts from the first offset that exists (live at once when that is
//! past the stored next offset, or when the topic was recreated). Nothing
//! is skipped silently.
//!
//! **Bad messages** become [`RefusedMessage`]s with their bytes and reason,
//! for the dead letters; nothing is dropped silently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::BinaryBuilder;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::context::{GroupContext, GroupEvents};
use super::{JsonTickDecoder, KafkaConfig};
use crate::shutdown::Shutdown;
use crate::sources::{
    OffsetGap, PartitionWatermark, Position, RefusedMessage, Source, SourceBatch, SourceError,
    StreamBatch,
};
use crate::tick::{RejectReason, TickBuilder, Validator};

/// Where a consumer's stored positions live: partition → (next offset,
/// warm-up offset), as the detector's sink commits them with its alerts.
#[async_trait::async_trait]
pub trait OffsetStore: Send {
    /// The stored positions of `group` on `topic` (empty for a group that
    /// never committed). Implementations ride out outages themselves and
    /// give up only on errors a retry cannot cure, or on a stop.
    async fn load(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, (i64, i64)>, SourceError>;
}

/// How a [`KafkaSource`] resumes (see the module documentation).
pub enum Resume {
    /// From an [`OffsetStore`], warming each partition up; Kafka's own
    /// commits are advisory (lag monitoring).
    Stored(Box<dyn OffsetStore>),
    /// From the group's offsets committed in Kafka (synchronously, by
    /// [`Source::commit`]).
    Committed,
}

/// What a [`KafkaSource`] reads and how.
pub struct KafkaSourceOptions {
    /// Brokers and client options.
    pub kafka: KafkaConfig,
    /// The tick topic.
    pub topic: String,
    /// The consumer group.
    pub group: String,
    /// Most ticks in a batch.
    pub batch_rows: usize,
    /// Longest wait to fill a batch.
    pub batch_wait: Duration,
    /// Where positions come from.
    pub resume: Resume,
    /// Ends a fill early (the batch so far is returned).
    pub shutdown: Shutdown,
    /// Validation of the ticks: its clock and how far ahead of a message's
    /// arrival a tick may be (`--max-future`).
    pub validator: Validator,
}

/// A partition's phase (detector mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Seeked back to the warm-up offset: messages below `next` rebuild
    /// history without emitting.
    WarmingUp { next: i64 },
    /// Emitting.
    Live,
}

/// A consumer of a tick topic (see the module documentation).
pub struct KafkaSource {
    consumer: StreamConsumer<GroupContext>,
    events: Arc<Mutex<GroupEvents>>,
    topic: String,
    group: String,
    batch_rows: usize,
    batch_wait: Duration,
    /// `None`: positions are Kafka's committed offsets.
    store: Option<Box<dyn OffsetStore>>,
    shutdown: Shutdown,
    decoder: JsonTickDecoder,
    builder: TickBuilder,
    phases: HashMap<i32, Phase>,
    /// Offset of the last message taken from each partition: after a seek,
    /// messages fetched before it may still arrive and are skipped.
    cursor: HashMap<i32, i64>,
    /// Partitions assigned to this member, as the callbacks said.
    owned: BTreeSet<i32>,
    /// Partitions sought to an offset whose first message has not come yet.
    sought: HashMap<i32, i64>,
    /// Partitions revoked in the last batch: forgotten before the next fill.
    lost: Vec<i32>,
    /// The assignment was paused by [`Source::idle`]: resumed by the next
    /// fill.
    paused: bool,
    /// Partition ends seen while idle, for the next fill.
    idle_ends: Vec<i32>,
    /// The partition each symbol's last tick came from (detector mode), to
    /// forget the `seq` numbering of a revoked partition's symbols.
    symbol_partition: HashMap<String, i32>,
}

impl KafkaSource {
    /// Creates the consumer and subscribes to the topic.
    pub fn new(options: KafkaSourceOptions) -> Result<Self, SourceError> {
        let kafka = |context: String| move |source| SourceError::Kafka { context, source };
        let events = Arc::new(Mutex::new(GroupEvents::default()));
        let mut config = options.kafka.client();
        config
            .set("group.id", &options.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // A topic created after the consumer started is found within
            // seconds, not librdkafka's default five minutes.
            .set("topic.metadata.refresh.interval.ms", "5000")
            // The end of a partition is reported: only then may an idle
            // partition stop holding market buckets open.
            .set("enable.partition.eof", "true")
            // librdkafka waits up to 500 ms for a fetch to fill; a broker
            // that holds fetches that long (tansu does) delivers the ticks
            // in bursts a quarter of a second apart, and every burst is a
            // step of final ticks at once. Measured at 100k ticks/s offered:
            // processing p50 67 -> 36 ms. Idle, it costs 40 empty fetches a
            // second.
            .set("fetch.wait.max.ms", "25");
        if matches!(options.resume, Resume::Stored(_)) {
            config
                .set("session.timeout.ms", "10000")
                // Rebalances are noticed within a second, and a member that
                // stops polling (a batch stuck on an outage) is not waited
                // for forever.
                .set("heartbeat.interval.ms", "1000")
                .set("max.poll.interval.ms", "120000")
                .set("statistics.interval.ms", "1000");
        }
        options.kafka.finish(&mut config);
        let consumer: StreamConsumer<GroupContext> = config
            .create_with_context(GroupContext {
                topic: options.topic.clone(),
                events: Arc::clone(&events),
            })
            .map_err(|e| {
                kafka(format!("creating the consumer of {}", options.topic))(
                    options.kafka.redact(e),
                )
            })?;
        consumer
            .subscribe(&[options.topic.as_str()])
            .map_err(kafka(format!("subscribing to {}", options.topic)))?;
        let store = match options.resume {
            Resume::Stored(s) => Some(s),
            Resume::Committed => None,
        };
        Ok(KafkaSource {
            consumer,
            events,
            builder: TickBuilder::with_validator(
                &format!("kafka:{}", options.topic),
                options.validator,
            ),
            topic: options.topic,
            group: options.group,
            batch_rows: options.batch_rows.max(1),
            batch_wait: options.batch_wait,
            store,
            shutdown: options.shutdown,
            decoder: JsonTickDecoder::default(),
            phases: HashMap::new(),
            cursor: HashMap::new(),
            owned: BTreeSet::new(),
            sought: HashMap::new(),
            lost: Vec::new(),
            paused: false,
            idle_ends: Vec::new(),
            symbol_partition: HashMap::new(),
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partitions of the topic assigned to this consumer now.
    fn assignment(&self) -> Vec<i32> {
        self.consumer
            .assignment()
            .map(|tpl| {
                tpl.elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether offset `start` of partition `p` is gone (`o` is the message
    /// at hand): `Some((first offset that exists, recreated))` when the
    /// records were deleted (`start` below the log start) or the topic was
    /// recreated (`start` past its end, and the consumer was reset below
    /// it). The broker is asked (watermarks); when it cannot answer, no gap
    /// is assumed (the message is taken as one fetched before the seek).
    fn gap_at(&self, p: i32, start: i64, o: i64) -> Option<(i64, bool)> {
        let (low, high) = match self.consumer.fetch_watermarks(
            &self.topic,
            p,
            Duration::from_secs(10),
        ) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = p, error = %e, "Cannot read the partition's watermarks to check for an offset gap.");
                return None;
            }
        };
        // tansu (and any broker) may answer ListOffsets with the base offset
        // of the last record batch: the high watermark of the fetches,
        // cached by librdkafka, is exact; take the larger.
        let high = high.max(self.cached_high(p).unwrap_or(-1));
        if start < low {
            Some((low, false))
        } else if o < start && start > high {
            Some((low.min(o), true))
        } else {
            None
        }
    }

    /// The high watermark of partition `p` from librdkafka's cache (its
    /// fetch responses), when known.
    fn cached_high(&self, p: i32) -> Option<i64> {
        let c_topic = std::ffi::CString::new(self.topic.as_str()).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client pointer lives as long as `consumer`; the topic
        // is a NUL-terminated string alive for the call; the outputs are
        // plain integers. The call only reads librdkafka's cached offsets
        // (rd_kafka_get_watermark_offsets).
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                c_topic.as_ptr(),
                p,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some(high)
    }

    /// Records a gap found on partition `p` (see the module documentation)
    /// and returns the phase to resume in.
    fn gap(
        &self,
        gaps: &mut Vec<OffsetGap>,
        p: i32,
        expected: i64,
        (found, recreated): (i64, bool),
        next: Option<i64>,
    ) -> Phase {
        tracing::warn!(
            topic = %self.topic,
            partition = p,
            expected,
            found,
            recreated,
            "Offsets missing in the partition (deleted by retention, or the topic was \
             recreated): resuming from the first offset that exists."
        );
        gaps.push(OffsetGap {
            partition: p,
            expected,
            found,
        });
        match next {
            Some(next) if !recreated && found < next => Phase::WarmingUp { next },
            _ => Phase::Live,
        }
    }

    /// The consumer group's generation now (`None` before the first join).
    fn generation(&self) -> Option<i32> {
        // SAFETY: the client pointer lives as long as `consumer`. The group
        // metadata returned is owned by the caller and destroyed here after
        // one plain read; a null pointer (no group) is checked first.
        let generation = unsafe {
            let md = rdkafka::bindings::rd_kafka_consumer_group_metadata(
                self.consumer.client().native_ptr(),
            );
            if md.is_null() {
                return None;
            }
            let g = rdkafka::bindings::rd_kafka_consumer_group_metadata_generation_id(md);
            rdkafka::bindings::rd_kafka_consumer_group_metadata_destroy(md);
            g
        };
        (generation >= 0).then_some(generation)
    }

    /// Drops what is kept of the partitions revoked in the last batch.
    fn forget_lost(&mut self) {
        if self.lost.is_empty() {
            return;
        }
        let lost = std::mem::take(&mut self.lost);
        for p in &lost {
            self.phases.remove(p);
            self.cursor.remove(p);
            self.sought.remove(p);
        }
        if self.store.is_some() {
            let builder = &mut self.builder;
            self.symbol_partition.retain(|symbol, p| {
                let keep = !lost.contains(p);
                if !keep {
                    builder.forget_symbol(symbol);
                }
                keep
            });
        }
    }

    /// The group's changes since the last batch, net: (newly assigned,
    /// revoked), and the lag.
    fn take_group_events(&mut self) -> (Vec<i32>, Vec<i32>, BTreeMap<i32, i64>) {
        let (changes, lag) = GroupContext::with(&self.events, |g| {
            (std::mem::take(&mut g.changes), g.lag.clone())
        });
        let before = self.owned.clone();
        for (p, assigned) in changes {
            if assigned {
                self.owned.insert(p);
            } else {
                self.owned.remove(&p);
            }
        }
        let new = self.owned.difference(&before).copied().collect();
        let lost: Vec<i32> = before.difference(&self.owned).copied().collect();
        self.lost.clone_from(&lost);
        (new, lost, lag)
    }
}

/// One batch being filled.
struct Fill {
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    arrived: Vec<i64>,
    warm: Vec<bool>,
    payloads: BinaryBuilder,
    refused: Vec<RefusedMessage>,
    watermarks: Vec<PartitionWatermark>,
    caught_up: Vec<(i32, Duration)>,
    gaps: Vec<OffsetGap>,
    messages: u64,
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        self.forget_lost();
        if self.paused {
            self.paused = false;
            if let Ok(tpl) = self.consumer.assignment() {
                if let Err(e) = self.consumer.resume(&tpl) {
                    tracing::warn!(topic = %self.topic, error = %e, "Cannot resume the partitions paused during an outage.");
                }
            }
        }
        let mut fill = Fill {
            partitions: Vec::new(),
            offsets: Vec::new(),
            arrived: Vec::new(),
            warm: Vec::new(),
            payloads: BinaryBuilder::new(),
            refused: Vec::new(),
            watermarks: Vec::new(),
            caught_up: Vec::new(),
            gaps: Vec::new(),
            messages: 0,
        };
        fill.caught_up
            .extend(self.idle_ends.drain(..).map(|p| (p, Duration::ZERO)));
        let started = Instant::now();
        let deadline = started + self.batch_wait;
        let mut shutdown = self.shutdown.clone();
        while fill.partitions.len() < self.batch_rows {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let msg = tokio::select! {
                m = tokio::time::timeout(left, self.consumer.recv()) => m,
                _ = shutdown.wait() => break,
            };
            let Ok(msg) = msg else { break };
            let msg = match msg {
                Ok(m) => m,
                // The topic not created yet, a partition leader moving: the
                // consumer recovers by itself, so wait rather than exit.
                Err(rdkafka::error::KafkaError::MessageConsumption(code)) => {
                    tracing::warn!(error = %code, topic = %self.topic, "Kafka consumption error; retrying.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    tracing::debug!(topic = %self.topic, partition = p, "Partition end reached.");
                    fill.caught_up.push((p, started.elapsed()));
                    continue;
                }
                Err(e) => {
                    return Err(SourceError::Kafka {
                        context: format!("receiving from {}", self.topic),
                        source: e,
                    })
                }
            };
            fill.messages += 1;
            let (p, o) = (msg.partition(), msg.offset());
            let mut warm = false;
            if self.store.is_some() {
                let phase = match self.phases.get(&p) {
                    Some(ph) => *ph,
                    None => {
                        // First message of this partition here: resume
                        // where the store says, warming up first.
                        let stored = match &mut self.store {
                            Some(store) => store.load(&self.group, &self.topic).await?,
                            None => BTreeMap::new(),
                        };
                        let next = stored.get(&p).map(|&(next, _)| next);
                        let (mut ph, mut start) = match stored.get(&p) {
                            Some(&(next, warm)) if warm < next => (Phase::WarmingUp { next }, warm),
                            Some(&(next, warm)) => (Phase::Live, warm.min(next)),
                            None => (Phase::Live, o),
                        };
                        if start != o {
                            if let Some(found) = self.gap_at(p, start, o) {
                                ph = self.gap(&mut fill.gaps, p, start, found, next);
                                start = found.0;
                            }
                        }
                        self.phases.insert(p, ph);
                        self.cursor.insert(p, start - 1);
                        if start != o {
                            let sought = self.consumer.seek(
                                &self.topic,
                                p,
                                Offset::Offset(start),
                                Duration::from_secs(10),
                            );
                            if let Err(e) = sought {
                                // A message fetched just before a rebalance
                                // took the partition away: whoever owns it
                                // now resumes it; here it is forgotten.
                                tracing::warn!(partition = p, error = %e, "Cannot seek (partition no longer assigned?); skipping it.");
                                self.phases.remove(&p);
                                self.cursor.remove(&p);
                                continue;
                            }
                            self.sought.insert(p, start);
                            tracing::info!(
                                partition = p,
                                from = start,
                                "Warming up from the stored offsets."
                            );
                            continue;
                        }
                        ph
                    }
                };
                let mut phase = phase;
                if let Some(start) = self.sought.remove(&p) {
                    // The first message after a seek: the offset sought
                    // should come; if another does, the records may have
                    // gone meanwhile (checked once per seek).
                    if o != start {
                        if let Some(found) = self.gap_at(p, start, o) {
                            let next = match phase {
                                Phase::WarmingUp { next } => Some(next),
                                Phase::Live => None,
                            };
                            phase = self.gap(&mut fill.gaps, p, start, found, next);
                            self.phases.insert(p, phase);
                            self.cursor.insert(p, found.0 - 1);
                            if o != found.0 {
                                if let Err(e) = self.consumer.seek(
                                    &self.topic,
                                    p,
                                    Offset::Offset(found.0),
                                    Duration::from_secs(10),
                                ) {
                                    tracing::warn!(partition = p, error = %e, "Cannot seek (partition no longer assigned?); skipping it.");
                                    self.phases.remove(&p);
                                    self.cursor.remove(&p);
                                    continue;
                                }
                                self.sought.insert(p, found.0);
                                continue;
                            }
                        }
                    }
                }
                let last = self.cursor.get(&p).copied().unwrap_or(o - 1);
                let expected = match phase {
                    Phase::WarmingUp { .. } => o == last + 1,
                    Phase::Live => o > last,
                };
                if !expected {
                    continue;
                }
                self.cursor.insert(p, o);
                warm = match phase {
                    Phase::WarmingUp { next } if o < next => true,
                    Phase::WarmingUp { .. } => {
                        self.phases.insert(p, Phase::Live);
                        false
                    }
                    Phase::Live => false,
                };
            }
            let payload = msg.payload().unwrap_or_default();
            if let Some(mark) = super::watermark::watermark_of(&msg) {
                match mark {
                    Ok(ts_us) => fill.watermarks.push(PartitionWatermark {
                        partition: p,
                        offset: o,
                        ts_us,
                    }),
                    Err(detail) => fill.refused.push(RefusedMessage {
                        partition: p,
                        offset: o,
                        payload: payload.to_vec(),
                        reason: RejectReason::Malformed,
                        detail,
                        warm,
                    }),
                }
                continue;
            }
            // Arrival is the message's timestamp (when the producer sent it
            // or the broker stored it), not when this member reads it: a
            // warm-up replay or a restart after an outage then refuses the
            // same ticks as the first reading did.
            let arrived = match msg.timestamp().to_millis() {
                Some(ms) if ms > 0 => ms.saturating_mul(1000),
                _ => crate::tick::now_us(),
            };
            let decoded = self
                .decoder
                .decode(payload)
                .and_then(|r| self.builder.push_arrived(&r, arrived).map(|()| r.symbol));
            match decoded {
                Ok(symbol) => {
                    if self.store.is_some() && self.symbol_partition.get(symbol) != Some(&p) {
                        // A String per symbol (or partition move), not per tick.
                        self.symbol_partition.insert(symbol.to_owned(), p);
                    }
                    fill.partitions.push(p);
                    fill.offsets.push(o);
                    fill.arrived.push(crate::tick::now_us());
                    fill.warm.push(warm);
                    fill.payloads.append_value(payload);
                }
                Err(rejection) => fill.refused.push(RefusedMessage {
                    partition: p,
                    offset: o,
                    payload: payload.to_vec(),
                    reason: rejection.reason,
                    detail: rejection.detail,
                    warm,
                }),
            }
        }
        let waited = started.elapsed();
        let ticks = self.builder.finish();
        let assignment = self.assignment();
        let (assigned, revoked, lag) = self.take_group_events();
        let next = fill
            .partitions
            .iter()
            .zip(&fill.offsets)
            .map(|(&p, &o)| (p, o + 1))
            .chain(fill.refused.iter().map(|r| (r.partition, r.offset + 1)))
            .chain(fill.watermarks.iter().map(|w| (w.partition, w.offset + 1)))
            .fold(BTreeMap::new(), |mut m: BTreeMap<i32, i64>, (p, o)| {
                let e = m.entry(p).or_insert(o);
                *e = (*e).max(o);
                m
            });
        let stream = StreamBatch {
            messages: fill.messages,
            partitions: fill.partitions,
            offsets: fill.offsets,
            arrived_us: Some(fill.arrived),
            warm: fill.warm,
            payloads: fill.payloads.finish(),
            refused: fill.refused,
            watermarks: fill.watermarks,
            caught_up: fill.caught_up,
            assigned,
            revoked,
            assignment,
            waited,
            lag: self.store.is_some().then_some(lag),
            gaps: fill.gaps,
            generation: self.store.as_ref().and_then(|_| self.generation()),
        };
        Ok(Some(SourceBatch {
            ticks,
            labels: None,
            amendments: None,
            rejects: Vec::new(),
            stream: Some(stream),
            position: Position::Partitions {
                topic: self.topic.clone(),
                next,
            },
        }))
    }

    async fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
        let Position::Partitions { topic, next } = upto else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        if self.store.is_some() {
            // Kafka's committed offsets are for lag monitoring only: the
            // store holds the real positions, committed with the alerts.
            for (&p, &o) in next {
                let _ = tpl.add_partition_offset(topic, p, Offset::Offset(o));
            }
            if tpl.count() > 0 {
                if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(error = %e, "Kafka offset commit failed (monitoring only).");
                }
            }
            return Ok(());
        }
        for (&p, &o) in next {
            tpl.add_partition_offset(topic, p, Offset::Offset(o))
                .map_err(|source| SourceError::Kafka {
                    context: format!("committing {topic}/{p}"),
                    source,
                })?;
        }
        self.consumer
            .commit(&tpl, CommitMode::Sync)
            .map_err(|source| SourceError::Kafka {
                context: format!("committing {topic}"),
                source,
            })
    }

    /// Of `partitions` (counted idle because their end was reached), those
    /// whose end has moved on since. Local: librdkafka's cached high
    /// watermarks (refreshed by its fetches, which go on at a partition's
    /// end) against this consumer's positions, no broker round trip.
    fn behind(&self, partitions: &[i32]) -> Vec<i32> {
        if partitions.is_empty() {
            return Vec::new();
        }
        let (Ok(position), Ok(c_topic)) = (
            self.consumer.position(),
            std::ffi::CString::new(self.topic.as_str()),
        ) else {
            // Unknown: not idle, the safe side.
            return partitions.to_vec();
        };
        partitions
            .iter()
            .copied()
            .filter(|&p| {
                let at = position
                    .find_partition(&self.topic, p)
                    .and_then(|e| e.offset().to_raw());
                let (mut low, mut high) = (-1i64, -1i64);
                // SAFETY: the client pointer lives as long as `consumer`; the
                // topic is a NUL-terminated string alive for the call; the
                // outputs are plain integers. The call only reads
                // librdkafka's cached offsets (rd_kafka_get_watermark_offsets).
                let err = unsafe {
                    rdkafka::bindings::rd_kafka_get_watermark_offsets(
                        self.consumer.client().native_ptr(),
                        c_topic.as_ptr(),
                        p,
                        &mut low,
                        &mut high,
                    )
                };
                let known =
                    err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
                match at {
                    Some(at) if known && at >= 0 && high >= 0 => high > at,
                    // No position or no cached watermark yet: the end was
                    // reported by librdkafka itself, so trust it.
                    _ => false,
                }
            })
            .collect()
    }

    async fn idle(&mut self) {
        if !self.paused {
            // Nothing is read ahead while the batch waits: the partitions
            // resume where the last message taken left them.
            if let Ok(tpl) = self.consumer.assignment() {
                if let Err(e) = self.consumer.pause(&tpl) {
                    tracing::warn!(topic = %self.topic, error = %e, "Cannot pause the partitions while waiting.");
                }
            }
            self.paused = true;
            tracing::info!(topic = %self.topic, "Sinks are slow: polling the group with the partitions paused.");
        }
        // Each poll tells the group this member is alive (max.poll.interval.ms).
        match tokio::time::timeout(Duration::from_secs(1), self.consumer.recv()).await {
            Ok(Ok(m)) => {
                // Fetched before the pause took hold: not taken now, so
                // read again after the resume.
                let (p, o) = (m.partition(), m.offset());
                drop(m);
                if let Err(e) =
                    self.consumer
                        .seek(&self.topic, p, Offset::Offset(o), Duration::from_secs(10))
                {
                    tracing::warn!(partition = p, offset = o, error = %e, "Cannot seek back to a message fetched while paused (partition no longer assigned?).");
                }
            }
            Ok(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => self.idle_ends.push(p),
            Ok(Err(e)) => {
                tracing::debug!(topic = %self.topic, error = %e, "Kafka error while paused.")
            }
            Err(_) => {}
        }
    }

    fn partition_count(&self) -> Option<usize> {
        self.consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))
            .ok()
            .and_then(|md| {
                md.topics()
                    .iter()
                    .find(|t| t.name() == self.topic)
                    .map(|t| t.partitions().len())
            })
            .filter(|&n| n > 0)
    }

    async fn close(&mut self) -> Result<(), SourceError> {
        // Leave the group now rather than at drop, so the partitions move to
        // the other members without waiting for the session timeout.
        self.consumer.unsubscribe();
        Ok(())
    }
}
