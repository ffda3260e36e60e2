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
//! While PostgreSQL is down the batch is retried with backoff and nothing
//! moves on: no offset is ever stored past an unwritten alert.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, BooleanArray, Int32Array, Int64Array};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::executor::{Executor, Step};
use crate::sinks::postgres::{
    commit_batch, load_offsets, write_stats, AlertRow, DbError, DeadLetterRow, OffsetRow, StatsRow,
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
    /// Stop after this long without a message once nothing is pending
    /// (tests and replays); run until a signal otherwise.
    pub exit_when_idle: Option<Duration>,
    /// How often a `detector_stats` row is written (and once at exit).
    pub stats_every: Duration,
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
    /// Its payload in the batch's payload buffer (for a late tick's dead
    /// letter): one growing buffer per batch, not an allocation per tick.
    payload: std::ops::Range<usize>,
}

/// Runs the detector until a signal (or idleness, see
/// [`DetectOptions::exit_when_idle`]).
pub async fn detect(
    mut executor: Executor,
    db: &mut tokio_postgres::Client,
    options: &DetectOptions,
) -> Result<DetectSummary, DetectError> {
    let kafka = |context: &str| {
        let context = context.to_owned();
        move |source| DetectError::Kafka { context, source }
    };
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()
        .map_err(kafka("creating the consumer"))?;
    consumer
        .subscribe(&[options.topic.as_str()])
        .map_err(kafka(&format!("subscribing to {}", options.topic)))?;

    let mut phases: HashMap<i32, Phase> = HashMap::new();
    // Offset of the last message taken from each partition: after a seek,
    // messages fetched before it may still arrive and are skipped.
    let mut cursor: HashMap<i32, i64> = HashMap::new();
    let mut decoder = JsonTickDecoder::default();
    let mut builder = TickBuilder::new(&format!("kafka:{}", options.topic));
    let mut summary = DetectSummary::default();
    let mut last_message = Instant::now();
    let mut shutdown = Box::pin(shutdown_signal());
    let started = Instant::now();
    let mut last_stats = Instant::now();
    let mut batch_ms: Vec<f64> = Vec::new();
    let instance = format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "detect".to_owned()),
        std::process::id()
    );
    let stats = |summary: &DetectSummary, batch_ms: &mut Vec<f64>| {
        batch_ms.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            (!batch_ms.is_empty()).then(|| batch_ms[((batch_ms.len() - 1) as f64 * q) as usize])
        };
        let row = StatsRow {
            instance: instance.clone(),
            consumer_group: Some(options.group.clone()),
            ticks: summary.messages,
            ticks_per_s: Some(summary.messages as f64 / started.elapsed().as_secs_f64().max(1e-3)),
            batches: summary.batches,
            alerts: summary.alerts,
            dead_letters: summary.dead_letters,
            batch_p50_ms: pct(0.5),
            batch_p99_ms: pct(0.99),
            ..StatsRow::default()
        };
        batch_ms.clear();
        row
    };

    loop {
        // Fill a micro-batch.
        let mut pending: Vec<Pending> = Vec::new();
        let mut payloads: Vec<u8> = Vec::new();
        let mut dead: Vec<DeadLetterRow> = Vec::new();
        let deadline = Instant::now() + options.batch_wait;
        let mut stop = false;
        while pending.len() < options.batch_rows {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let msg = tokio::select! {
                m = tokio::time::timeout(left, consumer.recv()) => m,
                _ = &mut shutdown => { stop = true; break; }
            };
            let Ok(msg) = msg else { break };
            let msg = msg.map_err(kafka("receiving"))?;
            last_message = Instant::now();
            summary.messages += 1;
            let (p, o) = (msg.partition(), msg.offset());
            let phase = match phases.get(&p) {
                Some(ph) => *ph,
                None => {
                    // First message of this partition here: resume where
                    // PostgreSQL says (read now, not at start: another
                    // detector of the group may have moved it since),
                    // warming up first.
                    let stored = load_offsets(db, &options.group, &options.topic).await?;
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
                        consumer
                            .seek(
                                &options.topic,
                                p,
                                Offset::Offset(start),
                                Duration::from_secs(10),
                            )
                            .map_err(kafka(&format!("seeking partition {p} to {start}")))?;
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

        let batch_started = Instant::now();
        // Warm-up ticks first (history), then the live ones.
        let ticks = builder.finish();
        let mut steps: Vec<Step> = Vec::new();
        if ticks.num_rows() > 0 {
            let warm: BooleanArray = pending.iter().map(|x| Some(x.warm)).collect();
            let live: BooleanArray = pending.iter().map(|x| Some(!x.warm)).collect();
            let input = |mask: &BooleanArray| -> Result<super::Input, DetectError> {
                let t = filter_record_batch(&ticks, mask).map_err(super::ExecutorError::from)?;
                let parts: Int32Array = pending
                    .iter()
                    .zip(mask.values().iter())
                    .filter(|(_, m)| *m)
                    .map(|(x, _)| x.partition)
                    .collect();
                let offs: Int64Array = pending
                    .iter()
                    .zip(mask.values().iter())
                    .filter(|(_, m)| *m)
                    .map(|(x, _)| x.offset)
                    .collect();
                Ok(super::Input {
                    ticks: t,
                    partitions: parts,
                    offsets: offs,
                })
            };
            if warm.true_count() > 0 {
                executor.warm_up(input(&warm)?)?;
            }
            if live.true_count() > 0 {
                steps.push(executor.step(input(&live)?).await?);
            }
        }
        steps.push(executor.flush(false).await?);

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
            .map(|(&p, pos)| OffsetRow {
                consumer_group: options.group.clone(),
                topic: options.topic.clone(),
                partition: p,
                next_offset: pos.next_offset,
                warmup_offset: pos.warmup_offset,
            })
            .collect();
        let progressed = !pending.is_empty() || steps.iter().any(|s| s.emitted() > 0);
        if !alerts.is_empty() || !dead.is_empty() || (progressed && !offsets.is_empty()) {
            let stats = commit_with_retry(db, &alerts, &dead, &offsets).await?;
            summary.alerts += stats.alerts_inserted;
            summary.dead_letters += stats.dead_letters_inserted;
            summary.batches += 1;
            // Kafka's committed offsets: for lag monitoring only.
            let mut tpl = TopicPartitionList::new();
            for o in &offsets {
                let _ =
                    tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.next_offset));
            }
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                tracing::warn!(error = %e, "Kafka offset commit failed (monitoring only).");
            }
        }
        if !pending.is_empty() {
            batch_ms.push(batch_started.elapsed().as_secs_f64() * 1e3);
        }
        if last_stats.elapsed() >= options.stats_every {
            let row = stats(&summary, &mut batch_ms);
            if let Err(e) = write_stats(db, &row).await {
                tracing::warn!(error = %e, "Could not write detector_stats.");
            }
            last_stats = Instant::now();
        }
        if stop {
            tracing::info!("Signal received: batch committed, leaving the group.");
            break;
        }
        if let Some(idle) = options.exit_when_idle {
            // Joining a group can take seconds: before the first message,
            // wait at least 30 s.
            let quiet = if summary.messages == 0 {
                idle.max(Duration::from_secs(30))
            } else {
                idle
            };
            if last_message.elapsed() >= quiet && executor.pending() == 0 {
                break;
            }
        }
    }
    let row = stats(&summary, &mut batch_ms);
    if let Err(e) = write_stats(db, &row).await {
        tracing::warn!(error = %e, "Could not write detector_stats.");
    }
    Ok(summary)
}

/// Commits, retrying with backoff while PostgreSQL is unreachable.
async fn commit_with_retry(
    db: &mut tokio_postgres::Client,
    alerts: &[AlertRow],
    dead: &[DeadLetterRow],
    offsets: &[OffsetRow],
) -> Result<crate::sinks::postgres::CommitStats, DetectError> {
    let mut wait = Duration::from_millis(200);
    loop {
        match commit_batch(db, alerts, dead, offsets).await {
            Ok(s) => return Ok(s),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, retry_in = ?wait, "PostgreSQL unavailable; retrying the batch.");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The alerts of a step, one row per alerting tick and detector.
fn alert_rows(executor: &Executor, step: &Step, topic: &str) -> Result<Vec<AlertRow>, DetectError> {
    let Some(features) = &step.features else {
        return Ok(Vec::new());
    };
    let names = executor.catalog().feature_names();
    let span = i64::try_from(executor.catalog().lookback().time.as_micros()).unwrap_or(0);
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
            });
        }
    }
    Ok(out)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
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
