//! `detect`: Kafka ticks through the [`Executor`] into PostgreSQL, exactly
//! once.
//!
//! Each micro-batch's alerts, dead letters and the partitions' next and
//! warm-up offsets are written in **one** transaction
//! ([`commit_batch`]); Kafka's own committed offsets are updated afterwards,
//! for lag monitoring only. On the first message of a partition the detector
//! looks its offsets up in PostgreSQL, seeks back to the warm-up offset and
//! replays up to the next offset without emitting, which restores the
//! symbols' history (and their `seq` numbering) exactly; alerts already
//! written are keyed, so a replayed alert is not written twice.
//!
//! **Rebalances.** Partitions revoked from this member (another member
//! joined, or the group shrank and grew) are dropped from the state at the
//! end of the batch in flight: their ticks, books, `seq` numbering and
//! positions. A partition assigned later starts again from PostgreSQL's
//! offsets with a warm-up, whoever had it before.
//!
//! While PostgreSQL is down the batch is retried with backoff, reconnecting,
//! and nothing moves on: no offset is ever stored past an unwritten alert.
//! Alerts also go to an optional Kafka topic and to the lake, both written
//! **before** the transaction (at least once, keyed by the alert key).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, BooleanArray, Int32Array, Int64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::executor::{Executor, Step};
use super::metrics::{BatchMetrics, Metrics};
use crate::lake::{Appender, AppenderOptions, LakeRoot, TableSpec};
use crate::sinks::alert_topic::{AlertTopic, AlertTopicError};
use crate::sinks::postgres::{
    commit_batch, load_offsets, write_stats, AlertRow, DbError, DeadLetterRow, OffsetRow,
    Reconnecting, StatsRow,
};
use crate::sources::kafka::JsonTickDecoder;
use crate::tick::{RejectReason, TickBuilder};

/// Where `detect` reads and writes.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// The tick topic.
    pub topic: String,
    /// Consumer group (also the key of the offsets in PostgreSQL).
    pub group: String,
    /// Most ticks in a micro-batch.
    pub batch_rows: usize,
    /// Longest wait to fill a micro-batch.
    pub batch_wait: Duration,
    /// Stop after this long without a message (tests and replays): the
    /// stream has ended, so what is still pending (ticks awaiting later
    /// ticks under delayed confirmation) is scored first. Run until a
    /// signal otherwise.
    pub exit_when_idle: Option<Duration>,
    /// How often a `detector_stats` row is written (and once at exit).
    pub stats_every: Duration,
    /// Also publish alerts to this Kafka topic (same brokers).
    pub alerts_topic: Option<String>,
    /// Also write alerts to this lake's `alerts` table.
    pub alerts_lake: Option<LakeRoot>,
    /// Read the market rows from this topic (same brokers), published by
    /// `stockanomaly market-context`, instead of computing them from this
    /// detector's own partitions (exact only when it reads them all).
    pub market_topic: Option<String>,
}

/// What a `detect` run did.
#[derive(Debug, Default, Clone)]
pub struct DetectSummary {
    /// Messages read (warm-up replays included).
    pub messages: u64,
    /// Ticks emitted (features computed and scored).
    pub emitted: u64,
    /// Alerts inserted (not counting ones already there).
    pub alerts: u64,
    /// Dead letters inserted.
    pub dead_letters: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Partitions dropped because the group took them away.
    pub revoked: u64,
}

/// Why `detect` stopped.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("Kafka ({context}): {source}")]
    Kafka {
        context: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Executor(#[from] super::ExecutorError),
    #[error(transparent)]
    AlertTopic(#[from] AlertTopicError),
    #[error(transparent)]
    Lake(#[from] crate::lake::LakeError),
    #[error("stopped by a signal while PostgreSQL was unreachable; the batch in flight was not committed and will be read again")]
    ShutdownDuringOutage,
    #[error(
        "the feature files read the market (all symbols at each minute), but this detector \
         reads {mine} of the {all} partitions of {topic}: run `stockanomaly market-context` \
         and give every detector --market-topic"
    )]
    MarketNeedsStage {
        topic: String,
        mine: usize,
        all: usize,
    },
}

/// A partition's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Seeked back to the warm-up offset: messages below `next` rebuild
    /// history without emitting.
    WarmingUp { next: i64 },
    /// Emitting.
    Live,
}

/// One decoded tick waiting for the executor.
struct Pending {
    partition: i32,
    offset: i64,
    warm: bool,
    arrived_us: i64,
    /// Its payload in the batch's payload buffer (for a late tick's dead
    /// letter): one growing buffer per batch, not an allocation per tick.
    payload: std::ops::Range<usize>,
}

/// What the consumer's callbacks saw, for the main loop.
#[derive(Debug, Default)]
struct GroupEvents {
    /// Partitions revoked since the main loop last looked, and assigned
    /// since, in order: `(partition, assigned)`.
    changes: Vec<(i32, bool)>,
    /// Consumer lag per partition from librdkafka's statistics.
    lag: BTreeMap<i32, i64>,
}

/// The consumer's context: records rebalances and lag (the callbacks run
/// inside `recv`, so they only note things down).
struct DetectContext {
    topic: String,
    events: Arc<Mutex<GroupEvents>>,
}

impl DetectContext {
    fn with(&self, f: impl FnOnce(&mut GroupEvents)) {
        let mut g = match self.events.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g);
    }
}

impl ClientContext for DetectContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        quiet_eof(error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let lag: BTreeMap<i32, i64> = topic
            .partitions
            .iter()
            // -1 is the internal UA partition; a negative lag is unknown.
            .filter(|(p, part)| **p >= 0 && part.consumer_lag >= 0)
            .map(|(p, part)| (*p, part.consumer_lag))
            .collect();
        self.with(|e| e.lag = lag);
    }
}

impl ConsumerContext for DetectContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (tpl, assigned) = match rebalance {
            Rebalance::Assign(tpl) => (*tpl, true),
            Rebalance::Revoke(tpl) => (*tpl, false),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "Rebalance error.");
                return;
            }
        };
        let parts: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        tracing::info!(partitions = ?parts, assigned, "Rebalance.");
        self.with(|e| e.changes.extend(parts.iter().map(|&p| (p, assigned))));
    }
}

/// A consumer context for which end-of-partition reports are events, not
/// errors to log.
pub(crate) struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        quiet_eof(error, reason);
    }
}

impl ConsumerContext for QuietEof {}

/// Logs a librdkafka client error, except the end-of-partition reports
/// (`enable.partition.eof`), which the consumer loops handle as events.
pub(crate) fn quiet_eof(error: rdkafka::error::KafkaError, reason: &str) {
    if !matches!(error, rdkafka::error::KafkaError::PartitionEOF(_)) {
        tracing::error!(%error, reason, "librdkafka error.");
    }
}

/// Resolves once a shutdown was asked for (and at once if it already was).
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Runs the detector until a signal (or idleness, see
/// [`DetectOptions::exit_when_idle`]). `metrics` are updated as it goes.
pub async fn detect(
    mut executor: Executor,
    db: &mut Reconnecting,
    options: &DetectOptions,
    metrics: &Metrics,
) -> Result<DetectSummary, DetectError> {
    let kafka = |context: &str| {
        let context = context.to_owned();
        move |source| DetectError::Kafka { context, source }
    };
    let events = Arc::new(Mutex::new(GroupEvents::default()));
    let consumer: StreamConsumer<DetectContext> = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        // Rebalances are noticed within a second, and a member that stops
        // polling (a batch stuck on an outage) is not waited for forever.
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "120000")
        .set("statistics.interval.ms", "1000")
        // A topic created after the detector started is found within
        // seconds, not librdkafka's default five minutes.
        .set("topic.metadata.refresh.interval.ms", "5000")
        // The end of a partition is reported: only then may an idle
        // partition stop holding market buckets open.
        .set("enable.partition.eof", "true")
        .create_with_context(DetectContext {
            topic: options.topic.clone(),
            events: Arc::clone(&events),
        })
        .map_err(kafka("creating the consumer"))?;
    consumer
        .subscribe(&[options.topic.as_str()])
        .map_err(kafka(&format!("subscribing to {}", options.topic)))?;
    let market = match &options.market_topic {
        Some(t) => {
            executor = executor.with_external_market();
            Some(MarketReader::new(&options.brokers, &options.group, t)?)
        }
        None => {
            executor = executor.idle_needs_end();
            None
        }
    };
    // Partitions of the tick topic, once known: a detector computing the
    // market itself must read them all.
    let mut topic_partitions: Option<usize> = None;
    let alert_topic = match &options.alerts_topic {
        Some(t) => Some(AlertTopic::new(&options.brokers, t).await?),
        None => None,
    };

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let mut phases: HashMap<i32, Phase> = HashMap::new();
    // Offset of the last message taken from each partition: after a seek,
    // messages fetched before it may still arrive and are skipped.
    let mut cursor: HashMap<i32, i64> = HashMap::new();
    // Partitions currently assigned to this member, as the callbacks said.
    let mut owned: BTreeSet<i32> = BTreeSet::new();
    let mut decoder = JsonTickDecoder::default();
    let mut builder = TickBuilder::new(&format!("kafka:{}", options.topic));
    let mut summary = DetectSummary::default();
    // Time spent waiting on the topic with nothing arriving, since the last
    // message (not wall time: a batch stuck on a PostgreSQL outage is not
    // idleness).
    let mut quiet = Duration::ZERO;
    let mut end_of_stream = false;
    // Extra quiet periods waited at the end for the stage's last rows.
    let mut end_waits = 0;
    // Total time spent reading the topic: the executor's idle clock.
    let mut reading = Duration::ZERO;
    let started = Instant::now();
    let mut last_stats = Instant::now();
    let mut batch_ms: Vec<f64> = Vec::new();
    let mut e2e_ms: Vec<f64> = Vec::new();
    let instance = format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "detect".to_owned()),
        std::process::id()
    );
    let stats = |summary: &DetectSummary, batch_ms: &mut Vec<f64>, e2e_ms: &mut Vec<f64>| {
        let pct = |v: &mut Vec<f64>, q: f64| {
            v.sort_by(f64::total_cmp);
            (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q) as usize])
        };
        let row = StatsRow {
            instance: instance.clone(),
            consumer_group: Some(options.group.clone()),
            ticks: summary.messages,
            ticks_per_s: Some(summary.messages as f64 / started.elapsed().as_secs_f64().max(1e-3)),
            batches: summary.batches,
            alerts: summary.alerts,
            dead_letters: summary.dead_letters,
            lag: metrics.total_lag(),
            batch_p50_ms: pct(batch_ms, 0.5),
            batch_p99_ms: pct(batch_ms, 0.99),
            e2e_p50_ms: pct(e2e_ms, 0.5),
            e2e_p99_ms: pct(e2e_ms, 0.99),
        };
        batch_ms.clear();
        e2e_ms.clear();
        row
    };

    loop {
        // Fill a micro-batch.
        let mut pending: Vec<Pending> = Vec::new();
        let mut payloads: Vec<u8> = Vec::new();
        let mut dead: Vec<DeadLetterRow> = Vec::new();
        let fill_started = Instant::now();
        let deadline = fill_started + options.batch_wait;
        let mut stop = false;
        let messages_before = summary.messages;
        while pending.len() < options.batch_rows {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let msg = tokio::select! {
                m = tokio::time::timeout(left, consumer.recv()) => m,
                _ = stopped(&mut stop_rx) => { stop = true; break; }
            };
            let Ok(msg) = msg else { break };
            let msg = match msg {
                Ok(m) => m,
                // The topic not created yet, a partition leader moving: the
                // consumer recovers by itself, so wait rather than exit.
                Err(rdkafka::error::KafkaError::MessageConsumption(code)) => {
                    tracing::warn!(error = %code, topic = %options.topic, "Kafka consumption error; retrying.");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                    executor.partition_caught_up(p);
                    continue;
                }
                Err(e) => return Err(kafka("receiving")(e)),
            };
            summary.messages += 1;
            let (p, o) = (msg.partition(), msg.offset());
            let phase = match phases.get(&p) {
                Some(ph) => *ph,
                None => {
                    // First message of this partition here: resume where
                    // PostgreSQL says (read now, not at start: another
                    // detector of the group may have moved it since),
                    // warming up first.
                    let stored = loop {
                        let attempt = match db.client().await {
                            Ok(c) => load_offsets(c, &options.group, &options.topic).await,
                            Err(e) => Err(e),
                        };
                        match attempt {
                            Ok(s) => break s,
                            Err(e) => db.failed(e).await?,
                        }
                    };
                    db.succeeded();
                    let ph = match stored.get(&p) {
                        Some(&(next, warm)) if warm < next => Phase::WarmingUp { next },
                        _ => Phase::Live,
                    };
                    phases.insert(p, ph);
                    let start = match stored.get(&p) {
                        Some(&(next, warm)) => warm.min(next),
                        None => o,
                    };
                    cursor.insert(p, start - 1);
                    if start != o {
                        let sought = consumer.seek(
                            &options.topic,
                            p,
                            Offset::Offset(start),
                            Duration::from_secs(10),
                        );
                        if let Err(e) = sought {
                            // A message fetched just before a rebalance took
                            // the partition away: whoever owns it now resumes
                            // it; here it is forgotten.
                            tracing::warn!(partition = p, error = %e, "Cannot seek (partition no longer assigned?); skipping it.");
                            phases.remove(&p);
                            cursor.remove(&p);
                            continue;
                        }
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
            let last = cursor.get(&p).copied().unwrap_or(o - 1);
            let expected = match phase {
                Phase::WarmingUp { .. } => o == last + 1,
                Phase::Live => o > last,
            };
            if !expected {
                continue;
            }
            cursor.insert(p, o);
            let warm = match phase {
                Phase::WarmingUp { next } if o < next => true,
                Phase::WarmingUp { .. } => {
                    phases.insert(p, Phase::Live);
                    false
                }
                Phase::Live => false,
            };
            let payload = msg.payload().unwrap_or_default();
            let decoded = decoder.decode(payload).and_then(|r| builder.push(&r));
            match decoded {
                Ok(()) => {
                    let start = payloads.len();
                    payloads.extend_from_slice(payload);
                    pending.push(Pending {
                        partition: p,
                        offset: o,
                        warm,
                        arrived_us: super::now_us(),
                        payload: start..payloads.len(),
                    });
                }
                Err(rejection) => {
                    executor.observe(p, o);
                    if !warm {
                        dead.push(DeadLetterRow {
                            source: options.topic.clone(),
                            source_partition: Some(p),
                            source_offset: Some(o),
                            payload: payload.to_vec(),
                            reason: rejection.reason.code().to_owned(),
                            detail: rejection.detail,
                        });
                    }
                }
            }
        }

        let filled = fill_started.elapsed();
        reading += filled;
        executor.set_clock(reading);
        let mine = assigned(&consumer, &options.topic);
        if market.is_none() && executor.uses_market() && !mine.is_empty() {
            if topic_partitions.is_none() {
                topic_partitions = consumer
                    .fetch_metadata(Some(&options.topic), Duration::from_secs(10))
                    .ok()
                    .and_then(|md| {
                        md.topics()
                            .iter()
                            .find(|t| t.name() == options.topic)
                            .map(|t| t.partitions().len())
                    })
                    .filter(|&n| n > 0);
            }
            if let Some(all) = topic_partitions.filter(|&all| mine.len() < all) {
                return Err(DetectError::MarketNeedsStage {
                    topic: options.topic.clone(),
                    mine: mine.len(),
                    all,
                });
            }
        }
        executor.expect_partitions(&mine);
        for p in behind(&consumer, &options.topic, &executor.market_idle_at_end()) {
            executor.partition_behind(p);
        }
        let market_news = match &market {
            Some(m) => m.drain(&mut executor)?,
            None => 0,
        };
        if summary.messages == messages_before && market_news == 0 {
            quiet += filled;
        } else {
            quiet = Duration::ZERO;
        }
        let batch_started = Instant::now();
        // Warm-up ticks first (history), then the live ones.
        let ticks = builder.finish();
        let mut steps: Vec<Step> = Vec::new();
        if ticks.num_rows() > 0 {
            let warm: BooleanArray = pending.iter().map(|x| Some(x.warm)).collect();
            let live: BooleanArray = pending.iter().map(|x| Some(!x.warm)).collect();
            let input = |mask: &BooleanArray| -> Result<super::Input, DetectError> {
                let t = filter_record_batch(&ticks, mask).map_err(super::ExecutorError::from)?;
                let picked = || {
                    pending
                        .iter()
                        .zip(mask.values().iter())
                        .filter(|(_, m)| *m)
                        .map(|(x, _)| x)
                };
                Ok(super::Input {
                    ticks: t,
                    partitions: picked().map(|x| x.partition).collect::<Int32Array>(),
                    offsets: picked().map(|x| x.offset).collect::<Int64Array>(),
                    arrived_us: Some(picked().map(|x| x.arrived_us).collect::<Int64Array>()),
                })
            };
            if warm.true_count() > 0 {
                executor.warm_up(input(&warm)?)?;
            }
            if live.true_count() > 0 {
                steps.push(executor.step(input(&live)?).await?);
            }
        }
        // At the end of the stream (idle past --exit-when-idle), ticks
        // still awaiting later ticks (delayed confirmation) are scored with
        // what is held, as backfill does at the end of the lake.
        steps.push(executor.flush(end_of_stream).await?);

        // Partitions the group took away during this batch (and did not
        // give back): their alerts are still written, their offsets are
        // not (the new owner's are authoritative), then they are dropped.
        let lost: Vec<i32> = {
            let changes = {
                let mut g = match events.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                metrics.set_lag(&g.lag);
                std::mem::take(&mut g.changes)
            };
            let before = owned.clone();
            for (p, assigned) in changes {
                if assigned {
                    owned.insert(p);
                } else {
                    owned.remove(&p);
                }
            }
            // New partitions replay from their stored offsets, into buckets
            // whose market rows this detector may have forgotten: read the
            // market topic again (known buckets are skipped).
            if owned.difference(&before).next().is_some() {
                if let Some(m) = &market {
                    m.rewind()?;
                    executor.market_rewound();
                }
            }
            before.difference(&owned).copied().collect()
        };

        let mut alerts = Vec::new();
        for step in &steps {
            alerts.extend(alert_rows(&executor, step, &options.topic)?);
            for late in &step.late {
                dead.push(DeadLetterRow {
                    source: options.topic.clone(),
                    source_partition: Some(late.partition),
                    source_offset: Some(late.offset),
                    payload: pending
                        .iter()
                        .find(|x| (x.partition, x.offset) == (late.partition, late.offset))
                        .map(|x| payloads[x.payload.clone()].to_vec())
                        .unwrap_or_default(),
                    reason: RejectReason::Late.code().to_owned(),
                    detail: late.detail.clone(),
                });
            }
            summary.emitted += step.emitted() as u64;
        }
        let positions = executor.positions();
        let offsets: Vec<OffsetRow> = positions
            .iter()
            .filter(|(p, _)| !lost.contains(p))
            .map(|(&p, pos)| OffsetRow {
                consumer_group: options.group.clone(),
                topic: options.topic.clone(),
                partition: p,
                next_offset: pos.next_offset,
                warmup_offset: pos.warmup_offset,
            })
            .collect();
        let progressed = !pending.is_empty() || steps.iter().any(|s| s.emitted() > 0);
        let mut committed = false;
        if !alerts.is_empty() || !dead.is_empty() || (progressed && !offsets.is_empty()) {
            // The other outputs first: a crash before the transaction
            // replays this batch and writes them again, under the same keys.
            if let Some(t) = &alert_topic {
                if !alerts.is_empty() {
                    t.publish(&alerts).await?;
                }
            }
            if let Some(root) = &options.alerts_lake {
                write_lake_alerts(root, &executor, &steps).await?;
            }
            let stats = loop {
                let attempt = match db.client().await {
                    Ok(c) => commit_batch(c, &alerts, &dead, &offsets).await,
                    Err(e) => Err(e),
                };
                match attempt {
                    Ok(s) => break s,
                    Err(e) => {
                        tokio::select! {
                            r = db.failed(e) => r?,
                            _ = stopped(&mut stop_rx) => return Err(DetectError::ShutdownDuringOutage),
                        }
                    }
                }
            };
            db.succeeded();
            committed = true;
            summary.alerts += stats.alerts_inserted;
            summary.dead_letters += stats.dead_letters_inserted;
            summary.batches += 1;
            // Kafka's committed offsets: for lag monitoring only.
            let mut tpl = TopicPartitionList::new();
            for o in &offsets {
                let _ =
                    tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.next_offset));
            }
            if tpl.count() > 0 {
                if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                    tracing::warn!(error = %e, "Kafka offset commit failed (monitoring only).");
                }
            }
        }
        let commit_us = super::now_us();
        let mut arrival_s: Vec<f64> = Vec::new();
        let mut event_s: Vec<f64> = Vec::new();
        if committed {
            for step in &steps {
                arrival_s.extend(
                    step.arrived_us
                        .iter()
                        .map(|&a| (commit_us - a) as f64 / 1e6),
                );
                if let Some(f) = &step.features {
                    let ts = f.column(0).as_primitive::<TimestampMicrosecondType>();
                    event_s.extend(ts.values().iter().map(|&t| (commit_us - t) as f64 / 1e6));
                }
            }
        }
        e2e_ms.extend(arrival_s.iter().map(|s| s * 1e3));
        let batch_s = (!pending.is_empty()).then(|| batch_started.elapsed().as_secs_f64());
        if let Some(s) = batch_s {
            batch_ms.push(s * 1e3);
        }
        let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        metrics.record(&BatchMetrics {
            messages: summary.messages - messages_before,
            emitted: steps.iter().map(|s| s.emitted() as u64).sum(),
            alerts: if committed { alerts.len() as u64 } else { 0 },
            dead_letters: if committed { &reasons } else { &[] },
            batch_seconds: batch_s,
            arrival_to_commit: &arrival_s,
            event_to_commit: &event_s,
            held: executor.held() as u64,
        });

        if !lost.is_empty() {
            for symbol in executor.forget_partitions(&lost)? {
                builder.forget_symbol(&symbol);
            }
            for p in &lost {
                phases.remove(p);
                cursor.remove(p);
            }
            summary.revoked += lost.len() as u64;
            tracing::info!(partitions = ?lost, "Partitions revoked: state dropped.");
        }
        if last_stats.elapsed() >= options.stats_every {
            let row = stats(&summary, &mut batch_ms, &mut e2e_ms);
            write_stats_once(db, &row).await;
            last_stats = Instant::now();
        }
        if stop {
            tracing::info!("Signal received: batch committed, leaving the group.");
            break;
        }
        if let Some(idle) = options.exit_when_idle {
            // Joining a group can take many seconds on a loaded machine:
            // before the first message, wait at least 60 s.
            let limit = if summary.messages == 0 {
                idle.max(Duration::from_secs(60))
            } else {
                idle
            };
            if quiet >= limit {
                if executor.pending() == 0 {
                    break;
                }
                if end_of_stream && market.is_some() && end_waits < MARKET_END_WAITS {
                    // The stage may be slower than this detector: wait for
                    // its last buckets a few more quiet periods.
                    end_waits += 1;
                    quiet = Duration::ZERO;
                } else if end_of_stream {
                    // Still pending after a quiet period at the end: market
                    // rows that never came. Left uncommitted for the next run.
                    tracing::warn!(
                        pending = executor.pending(),
                        "Ticks still wait for their market rows at the end of the stream; \
                         left for the next run."
                    );
                    break;
                }
                end_of_stream = true;
                if market.is_some() {
                    // The stage closes the last buckets once it is idle
                    // too: give their rows more quiet periods.
                    quiet = Duration::ZERO;
                }
            }
        }
    }
    let row = stats(&summary, &mut batch_ms, &mut e2e_ms);
    write_stats_once(db, &row).await;
    // Leave the group now rather than at drop, so the partitions move to
    // the other members without waiting for the session timeout.
    consumer.unsubscribe();
    Ok(summary)
}

/// The partitions of `topic` assigned to this consumer now.
pub(crate) fn assigned<C: ConsumerContext>(consumer: &StreamConsumer<C>, topic: &str) -> Vec<i32> {
    consumer
        .assignment()
        .map(|tpl| {
            tpl.elements_for_topic(topic)
                .iter()
                .map(|e| e.partition())
                .collect()
        })
        .unwrap_or_default()
}

/// Of `partitions` (counted idle because their end was reached), those
/// whose end has moved on since: they are not idle. Local: librdkafka's
/// cached high watermarks (refreshed by its fetches, which go on at a
/// partition's end) against this consumer's positions, no broker round trip.
pub(crate) fn behind<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    partitions: &[i32],
) -> Vec<i32> {
    if partitions.is_empty() {
        return Vec::new();
    }
    let (Ok(position), Ok(c_topic)) = (consumer.position(), std::ffi::CString::new(topic)) else {
        // Unknown: not idle, the safe side.
        return partitions.to_vec();
    };
    partitions
        .iter()
        .copied()
        .filter(|&p| {
            let at = position
                .find_partition(topic, p)
                .and_then(|e| e.offset().to_raw());
            let (mut low, mut high) = (-1i64, -1i64);
            // SAFETY: the client pointer lives as long as `consumer`; the
            // topic is a NUL-terminated string alive for the call; the
            // outputs are plain integers. The call only reads librdkafka's
            // cached offsets (rd_kafka_get_watermark_offsets).
            let err = unsafe {
                rdkafka::bindings::rd_kafka_get_watermark_offsets(
                    consumer.client().native_ptr(),
                    c_topic.as_ptr(),
                    p,
                    &mut low,
                    &mut high,
                )
            };
            let known = err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;
            match at {
                Some(at) if known && at >= 0 && high >= 0 => high > at,
                // No position or no cached watermark yet: the end was
                // reported by librdkafka itself, so trust it.
                _ => false,
            }
        })
        .collect()
}

/// Quiet periods (`--exit-when-idle`) a detector reading a market-context
/// stage waits at the end of the stream for the rows of its last buckets.
const MARKET_END_WAITS: u32 = 4;

/// Reads the `market` topic in full (see
/// [`crate::stream::market_context`]) into the executor.
struct MarketReader {
    consumer: BaseConsumer<QuietEof>,
    topic: String,
}

impl MarketReader {
    fn new(brokers: &str, group: &str, topic: &str) -> Result<Self, DetectError> {
        let kafka = |context: String| move |source| DetectError::Kafka { context, source };
        let consumer: BaseConsumer<QuietEof> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            // Never committed: every detector reads the whole topic.
            .set("group.id", format!("{group}-market"))
            .set("enable.auto.commit", "false")
            // Its end says every bucket's rows are known again.
            .set("enable.partition.eof", "true")
            .create_with_context(QuietEof)
            .map_err(kafka(format!("creating the reader of {topic}")))?;
        let reader = MarketReader {
            consumer,
            topic: topic.to_owned(),
        };
        reader.rewind()?;
        Ok(reader)
    }

    /// Reads the topic again from its beginning.
    fn rewind(&self) -> Result<(), DetectError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Beginning)
            .map_err(|source| DetectError::Kafka {
                context: format!("positioning on {}", self.topic),
                source,
            })?;
        self.consumer
            .assign(&tpl)
            .map_err(|source| DetectError::Kafka {
                context: format!("assigning {}", self.topic),
                source,
            })
    }

    /// Hands every market message that has arrived to `executor`; returns
    /// how many there were.
    fn drain(&self, executor: &mut Executor) -> Result<usize, DetectError> {
        let mut n = 0;
        while let Some(m) = self.consumer.poll(Duration::ZERO) {
            let m = match m {
                Ok(m) => m,
                Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {
                    executor.market_caught_up();
                    break;
                }
                // Not created yet by the stage, or a leader moving.
                Err(e) => {
                    tracing::debug!(error = %e, topic = %self.topic, "Market topic not readable yet.");
                    break;
                }
            };
            match crate::stream::market_context::decode_market(m.payload().unwrap_or_default()) {
                Ok((rows, closed_until)) => {
                    executor.push_market(&rows, closed_until)?;
                    n += 1;
                }
                Err(reason) => tracing::error!(
                    topic = %self.topic,
                    offset = m.offset(),
                    %reason,
                    "Not a market message; skipped."
                ),
            }
        }
        Ok(n)
    }
}

/// Writes a `detector_stats` row; statistics are best effort, so a failure
/// is logged and the stream goes on.
async fn write_stats_once(db: &mut Reconnecting, row: &StatsRow) {
    let result = match db.client().await {
        Ok(c) => write_stats(c, row).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "Could not write detector_stats.");
    }
}

/// Appends the steps' alerting `scores` rows to the lake's `alerts` table
/// (content-addressed files: a replayed batch rewrites nothing).
async fn write_lake_alerts(
    root: &LakeRoot,
    executor: &Executor,
    steps: &[Step],
) -> Result<(), DetectError> {
    for (d, detector) in executor.detectors().iter().enumerate() {
        let mut appender: Option<Appender> = None;
        for step in steps {
            let Some(scores) = step.scores.get(d) else {
                continue;
            };
            let mask = scores.column(4).as_boolean();
            if mask.true_count() == 0 {
                continue;
            }
            let picked = filter_record_batch(scores, mask).map_err(super::ExecutorError::from)?;
            let a = appender.get_or_insert_with(|| {
                Appender::new(
                    root.clone(),
                    TableSpec::alerts().sub_table(&detector.version()),
                    AppenderOptions::default(),
                )
            });
            a.append(picked).await?;
        }
        if let Some(a) = appender {
            a.finish().await?;
        }
    }
    Ok(())
}

/// The alerts of a step, one row per alerting tick and detector.
fn alert_rows(executor: &Executor, step: &Step, topic: &str) -> Result<Vec<AlertRow>, DetectError> {
    let Some(features) = &step.features else {
        return Ok(Vec::new());
    };
    let names = executor.catalog().feature_names();
    let span = i64::try_from(executor.catalog().lookback().time.as_micros()).unwrap_or(0);
    let delay_ticks = u32::try_from(executor.catalog().delay()).unwrap_or(u32::MAX);
    let mut out = Vec::new();
    for (detector, scores) in executor.detectors().iter().zip(&step.scores) {
        let alert = scores.column(4).as_boolean();
        let score = scores.column(3).as_primitive::<Float64Type>();
        let threshold = scores.column(5).as_primitive::<Float64Type>();
        let reason = scores.column(7).as_string::<i32>();
        let shap = scores.column(8).as_string::<i32>();
        let ts = scores.column(0).as_primitive::<TimestampMicrosecondType>();
        let sym = scores.column(1).as_string::<i32>();
        let seq = scores.column(2).as_primitive::<UInt32Type>();
        for i in 0..scores.num_rows() {
            if !alert.value(i) {
                continue;
            }
            let values: serde_json::Map<String, serde_json::Value> = names
                .iter()
                .enumerate()
                .map(|(j, n)| {
                    let c = features.column(3 + j).as_primitive::<Float64Type>();
                    let v = if c.is_null(i) || !c.value(i).is_finite() {
                        serde_json::Value::Null
                    } else {
                        serde_json::json!(c.value(i))
                    };
                    ((*n).to_owned(), v)
                })
                .collect();
            let (p, o) = step.sources.get(i).copied().unwrap_or((-1, -1));
            out.push(AlertRow {
                model_version: detector.version(),
                detector: detector.kind(),
                symbol: sym.value(i).to_owned(),
                ts_us: ts.value(i),
                seq: seq.value(i),
                score: score.value(i),
                threshold: threshold.value(i),
                reason: (!reason.is_null(i)).then(|| reason.value(i).to_owned()),
                top_features: (!shap.is_null(i))
                    .then(|| serde_json::from_str(shap.value(i)).ok())
                    .flatten(),
                features: Some(serde_json::Value::Object(values)),
                evidence_start_us: Some(ts.value(i) - span),
                evidence_end_us: Some(ts.value(i)),
                source: topic.to_owned(),
                source_partition: (p >= 0).then_some(p),
                source_offset: (o >= 0).then_some(o),
                delay_ticks,
            });
        }
    }
    Ok(out)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
