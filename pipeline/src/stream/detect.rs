//! `detect`: Kafka ticks through the [`Executor`] into PostgreSQL, exactly
//! once, wired on the [`driver`](mod@super::driver).
//!
//! [`ExecutorStage`] is the executor as a driver [`Stage`]: warm-up ticks
//! restore state, live ticks are stepped, idle groups flushed; each batch's
//! alerts, dead letters (undecodable, invalid and late messages) and, per
//! partition, the next and warm-up offsets go to the sinks, PostgreSQL last
//! ([`PostgresSink`]: one transaction, so no offset is ever stored past an
//! unwritten alert). Kafka's own committed offsets are updated afterwards,
//! for lag monitoring only.
//!
//! **Resume and rebalances** are the [`KafkaSource`]'s: on the first message
//! of a partition it seeks back to the warm-up offset stored in PostgreSQL
//! and replays up to the next offset as warm-up, which restores the
//! symbols' history (and their `seq` numbering) exactly; alerts already
//! written are keyed, so a replayed alert is not written twice. Partitions
//! revoked from this member are dropped from the state at the end of the
//! batch in flight; whoever owns them next resumes from PostgreSQL.
//!
//! Alerts also go to an optional Kafka topic and to the lake, both written
//! **before** the transaction (at least once, keyed by the alert key).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, Int32Array, Int64Array, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::error::ArrowError;

use super::alert_rows::alert_rows;
use super::cases::StreamCases;
use super::driver::{self, DriverError, DriverOptions, Processed, Stage};
use super::executor::{Executor, Input, Step};
use super::metrics::Metrics;
use crate::lake::LakeRoot;
use crate::model::scores_table::ScoresView;
use crate::shutdown::Shutdown;
use crate::sinks::alert_topic::AlertTopic;
use crate::sinks::lake::{LakeAlertSink, LakeWrites};
use crate::sinks::postgres::{
    shared, PgCaseStore, PgOffsetStore, PostgresSink, Reconnecting, STATEMENT_TIMEOUT,
};
use crate::sinks::secondary::Secondary;
use crate::sinks::{AlertBatch, AlertSink, CaseStore, DeadLetterRow, OffsetRow, ScoredAlerts};
use crate::sources::kafka::market::MarketReader;
use crate::sources::kafka::{KafkaConfig, KafkaSource, KafkaSourceOptions, Resume};
use crate::sources::{Position, Source, SourceBatch, StreamBatch};
use crate::tick::{event_times, RejectReason};

/// Where `detect` reads and writes.
#[derive(Debug, Clone)]
pub struct DetectOptions {
    /// Kafka brokers and client options (TLS, SASL; values never shown).
    pub kafka: KafkaConfig,
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
    /// Validation of the ticks (`--max-future`).
    pub validator: crate::tick::Validator,
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
    /// Offset gaps found on resuming a partition (records deleted by
    /// retention, or the topic recreated), each logged with its offsets.
    pub gaps: u64,
    /// Over the run, final to committed: p50 and p99, milliseconds
    /// ([`DriverSummary::processing_ms`](super::driver::DriverSummary)).
    pub processing_ms: Option<[f64; 2]>,
    /// Over the run, arrival to committed: p50 and p99, milliseconds.
    pub arrival_ms: Option<[f64; 2]>,
}

/// Why `detect` stopped.
pub type DetectError = DriverError;

/// Batches a secondary sink (alert topic, lake) may fall behind before its
/// alerts are dropped there (PostgreSQL keeps them all).
const SECONDARY_BACKLOG: usize = 10_000;

/// Quiet periods (`--exit-when-idle`) a detector reading a market-context
/// stage waits at the end of the stream for the rows of its last buckets.
const MARKET_END_WAITS: u32 = 4;

/// The streaming executor as a driver stage (see the module documentation).
pub struct ExecutorStage {
    executor: Executor,
    market: Option<MarketReader>,
    /// Named as the source of alerts and dead letters.
    topic: String,
    /// Keys the offsets.
    group: String,
    /// Build [`AlertRow`]s (for sinks that store rows, not the lake's
    /// `scores` layout).
    alert_rows: bool,
    /// Emit idle symbols' groups after each step (a stream's clock moves; a
    /// replay's does not).
    idle_flush: bool,
    /// Partitions of the topic, once known: a detector computing the
    /// market itself must read them all.
    topic_partitions: Option<usize>,
    /// Next offset for batches without stream information.
    next_offset: i64,
    /// The model's alerts grouped into cases ([`ExecutorStage::with_cases`]).
    cases: Option<StreamCases>,
}

impl ExecutorStage {
    /// A stage running `executor`; `market` reads a market-context stage's
    /// rows (the executor must then be
    /// [`with_external_market`](Executor::with_external_market)). Alerts and
    /// dead letters name `topic`, offsets are keyed by `group`.
    pub fn new(executor: Executor, market: Option<MarketReader>, topic: &str, group: &str) -> Self {
        ExecutorStage {
            executor,
            market,
            topic: topic.to_owned(),
            group: group.to_owned(),
            alert_rows: true,
            idle_flush: true,
            topic_partitions: None,
            next_offset: 0,
            cases: None,
        }
    }

    /// Also groups the model's alerts (and the rules' beside them) into
    /// cases, written with each batch (see [`super::cases`]); the open
    /// cases of a partition are taken back from `store` before its ticks.
    /// Without a model there are no cases.
    pub fn with_cases(mut self, store: Option<Box<dyn CaseStore>>) -> Self {
        self.cases = StreamCases::new(self.executor.detectors(), &self.topic, store);
        self
    }

    /// For replays: no alert rows (the lake sink and the counters take the
    /// `scores` rows) and no idle flushes (a replay never waits, so nothing
    /// becomes idle; groups close by later ticks and at the end).
    pub fn replay(executor: Executor) -> Self {
        ExecutorStage {
            alert_rows: false,
            idle_flush: false,
            ..ExecutorStage::new(executor, None, "replay", "replay")
        }
    }

    /// Builds the alert rows (`detect`'s, for PostgreSQL) or not (a
    /// replay's default): benchmarks measure them without a database.
    pub fn with_alert_rows(mut self, on: bool) -> Self {
        self.alert_rows = on;
        self
    }

    /// The executor.
    pub fn executor(&self) -> &Executor {
        &self.executor
    }

    /// Stream information for a batch that has none: one partition,
    /// offsets counting on.
    fn synthetic(&mut self, n: usize) -> StreamBatch {
        let first = self.next_offset;
        self.next_offset += n as i64;
        StreamBatch {
            messages: n as u64,
            partitions: vec![0; n],
            offsets: (first..first + n as i64).collect(),
            warm: vec![false; n],
            ..StreamBatch::empty()
        }
    }
}

/// The executor's input for the ticks of `ticks` picked by `mask`.
fn input(
    ticks: &RecordBatch,
    stream: &StreamBatch,
    mask: &BooleanArray,
) -> Result<Input, DriverError> {
    let t = filter_record_batch(ticks, mask).map_err(super::ExecutorError::from)?;
    let picked = || {
        mask.values()
            .iter()
            .enumerate()
            .filter(|(_, m)| *m)
            .map(|(i, _)| i)
    };
    Ok(Input {
        ticks: t,
        partitions: picked()
            .map(|i| stream.partitions[i])
            .collect::<Int32Array>(),
        offsets: picked().map(|i| stream.offsets[i]).collect::<Int64Array>(),
        arrived_us: stream
            .arrived_us
            .as_ref()
            .map(|a| picked().map(|i| a[i]).collect::<Int64Array>()),
    })
}

#[async_trait::async_trait(?Send)]
impl Stage for ExecutorStage {
    fn prepare(
        &mut self,
        batch: &SourceBatch,
        _before: Duration,
        now: Duration,
        source: &dyn Source,
    ) -> Result<bool, DriverError> {
        let Some(stream) = &batch.stream else {
            self.executor.set_clock(now);
            return Ok(false);
        };
        self.executor.set_clock(now);
        let mine = &stream.assignment;
        if self.market.is_none() && self.executor.uses_market() && !mine.is_empty() {
            if self.topic_partitions.is_none() {
                self.topic_partitions = source.partition_count();
            }
            if let Some(all) = self.topic_partitions.filter(|&all| mine.len() < all) {
                return Err(DriverError::MarketNeedsStage {
                    topic: self.topic.clone(),
                    mine: mine.len(),
                    all,
                });
            }
        }
        self.executor.expect_partitions(mine);
        for p in source.behind(&self.executor.market_idle_at_end()) {
            self.executor.partition_behind(p);
        }
        let Some(market) = &self.market else {
            return Ok(false);
        };
        let news = market.drain();
        for (rows, closed_until) in &news.closings {
            self.executor.push_market(rows, *closed_until)?;
        }
        if news.caught_up {
            self.executor.market_caught_up();
        }
        Ok(!news.closings.is_empty())
    }

    async fn process(&mut self, batch: SourceBatch, end: bool) -> Result<Processed, DriverError> {
        let ticks = batch.ticks;
        let stream = match batch.stream {
            Some(s) => s,
            None => self.synthetic(ticks.num_rows()),
        };
        let mut dead: Vec<DeadLetterRow> = Vec::new();
        for r in &stream.refused {
            // Positions move past it either way; a warm-up's was
            // dead-lettered by the run that first read it.
            self.executor.observe(r.partition, r.offset);
            if !r.warm {
                dead.push(DeadLetterRow {
                    source: self.topic.clone(),
                    source_partition: Some(r.partition),
                    source_offset: Some(r.offset),
                    payload: r.payload.clone(),
                    reason: r.reason.code().to_owned(),
                    detail: r.detail.clone(),
                });
            }
        }
        for w in &stream.watermarks {
            // Before the step: its ticks are at or after their partition's
            // watermark, so the buckets it lets close are whole.
            self.executor
                .partition_watermark(w.partition, w.offset, w.ts_us);
        }
        if let Some(cases) = &mut self.cases {
            // Before any tick of a partition reaches a case: its open
            // cases as the last commit left them.
            let seen = stream.partitions.iter().copied();
            cases
                .restore(stream.assignment.iter().copied().chain(seen))
                .await?;
        }
        // Warm-up ticks first (history), then the live ones.
        let had_ticks = ticks.num_rows() > 0;
        let mut steps: Vec<Step> = Vec::new();
        let mut step_time = None;
        if had_ticks {
            let warm: BooleanArray = stream.warm.iter().map(|&w| Some(w)).collect();
            let live: BooleanArray = stream.warm.iter().map(|&w| Some(!w)).collect();
            if warm.true_count() > 0 {
                let late = self.executor.warm_up(input(&ticks, &stream, &warm)?)?;
                if !late.is_empty() {
                    // Refused when first read too: dead-lettered then.
                    tracing::debug!(
                        refused = late.len(),
                        "Replayed ticks refused again as late."
                    );
                }
            }
            if live.true_count() > 0 {
                let started = Instant::now();
                steps.push(self.executor.step(input(&ticks, &stream, &live)?).await?);
                step_time = Some(started.elapsed());
            }
        }
        // A partition's end came after its messages of this fill: taken
        // only once they are admitted (admitting a tick marks its partition
        // as not at its end), so a partition whose last messages and end
        // arrive in one fill does not hold market buckets open.
        for &(p, _) in &stream.caught_up {
            self.executor.partition_caught_up(p);
        }
        // At the end of the stream, ticks still awaiting later ticks
        // (delayed confirmation) are scored with what is held, as backfill
        // does at the end of the lake.
        if self.idle_flush || end {
            steps.push(self.executor.flush(end).await?);
        }
        // New partitions replay from their stored offsets, into buckets
        // whose market rows this detector may have forgotten: read the
        // market topic again (known buckets are skipped).
        if !stream.assigned.is_empty() {
            if let Some(m) = &self.market {
                m.rewind()?;
                self.executor.market_rewound();
            }
        }
        let mut out = AlertBatch::default();
        let mut processed = Processed {
            had_ticks,
            step_time,
            ..Processed::default()
        };
        let mut origin: Option<HashMap<(i32, i64), usize>> = None;
        for step in &steps {
            if let Some(cases) = &mut self.cases {
                cases.feed(step)?;
            }
            if self.alert_rows {
                out.alerts
                    .extend(alert_rows(&self.executor, step, &self.topic)?);
            }
            for late in &step.late {
                let origin = origin.get_or_insert_with(|| {
                    stream
                        .partitions
                        .iter()
                        .zip(&stream.offsets)
                        .enumerate()
                        .map(|(i, (&p, &o))| ((p, o), i))
                        .collect()
                });
                dead.push(DeadLetterRow {
                    source: self.topic.clone(),
                    source_partition: Some(late.partition),
                    source_offset: Some(late.offset),
                    payload: origin
                        .get(&(late.partition, late.offset))
                        .filter(|&&i| i < stream.payloads.len())
                        .map(|&i| stream.payloads.value(i).to_vec())
                        .unwrap_or_default(),
                    reason: RejectReason::Late.code().to_owned(),
                    detail: late.detail.clone(),
                });
            }
            processed.emitted += step.emitted() as u64;
            processed.arrived_us.extend_from_slice(&step.arrived_us);
            processed.ready_us.extend_from_slice(&step.ready_us);
            let ts = step.features.as_ref().map(event_times).transpose();
            let ts = ts.map_err(|e| DriverError::Executor(ArrowError::from(e).into()))?;
            if let Some(ts) = ts {
                processed.event_us.extend_from_slice(ts.values());
            }
        }
        for (d, detector) in self.executor.detectors().iter().enumerate() {
            let mut picked = Vec::new();
            let mut sources = Vec::new();
            for step in &steps {
                let Some(scores) = step.scores.get(d) else {
                    continue;
                };
                let mask = ScoresView::new(scores)
                    .map_err(super::ExecutorError::from)?
                    .alert;
                if mask.true_count() > 0 {
                    picked.push(
                        filter_record_batch(scores, mask).map_err(super::ExecutorError::from)?,
                    );
                    sources.extend(
                        mask.iter()
                            .zip(&step.sources)
                            .filter(|(m, _)| m.unwrap_or(false))
                            .map(|(_, s)| *s),
                    );
                }
            }
            if let Some(first) = picked.first() {
                let rows =
                    concat_batches(&first.schema(), &picked).map_err(super::ExecutorError::from)?;
                processed.raised += rows.num_rows() as u64;
                out.scores.push(ScoredAlerts {
                    version: detector.version(),
                    rows,
                    sources,
                });
            }
        }
        // Partitions the group took away during this batch: their alerts
        // are still written, their offsets are not (the new owner's are
        // authoritative); the driver drops them afterwards.
        let positions = self.executor.positions();
        out.offsets = positions
            .iter()
            .filter(|(p, _)| !stream.revoked.contains(p))
            .map(|(&p, pos)| OffsetRow {
                consumer_group: self.group.clone(),
                topic: self.topic.clone(),
                partition: p,
                next_offset: pos.next_offset,
                warmup_offset: pos.warmup_offset,
            })
            .collect();
        out.dead = dead;
        out.generation = stream.generation;
        if let Some(cases) = &mut self.cases {
            // As with offsets, a revoked partition's cases are its next
            // owner's: it replays this batch from the stored state.
            out.cases = cases.take_updates();
            out.cases.retain(|u| {
                !u.case
                    .partition
                    .is_some_and(|p| stream.revoked.contains(&p))
            });
        }
        let progressed = had_ticks || processed.emitted > 0;
        processed.write = processed.raised > 0
            || !out.dead.is_empty()
            || !out.cases.is_empty()
            || (progressed && !out.offsets.is_empty());
        if processed.write {
            processed.commit = Some(Position::Partitions {
                topic: self.topic.clone(),
                next: out
                    .offsets
                    .iter()
                    .map(|o| (o.partition, o.next_offset))
                    .collect(),
            });
        }
        processed.output = out;
        Ok(processed)
    }

    fn forget(&mut self, partitions: &[i32]) -> Result<(), DriverError> {
        self.executor.forget_partitions(partitions)?;
        if let Some(cases) = &mut self.cases {
            cases.forget(partitions);
        }
        Ok(())
    }

    fn pending(&self) -> usize {
        self.executor.pending()
    }

    fn held(&self) -> usize {
        self.executor.held()
    }

    fn end_waits(&self) -> u32 {
        if self.market.is_some() {
            MARKET_END_WAITS
        } else {
            0
        }
    }
}

/// Runs the detector until a signal (or idleness, see
/// [`DetectOptions::exit_when_idle`]). `metrics` are updated as it goes.
pub async fn detect(
    mut executor: Executor,
    db: Reconnecting,
    options: &DetectOptions,
    metrics: &Metrics,
) -> Result<DetectSummary, DetectError> {
    let shutdown = Shutdown::on_signals();
    let kafka = options.kafka.clone();
    let db = db
        .with_statement_timeout(STATEMENT_TIMEOUT)
        .await
        .map_err(crate::sinks::SinkError::from)?;
    let db = shared(db);
    let mut source = KafkaSource::new(KafkaSourceOptions {
        kafka: kafka.clone(),
        topic: options.topic.clone(),
        group: options.group.clone(),
        batch_rows: options.batch_rows,
        batch_wait: options.batch_wait,
        resume: Resume::Stored(Box::new(PgOffsetStore::new(db.clone(), shutdown.clone()))),
        shutdown: shutdown.clone(),
        validator: options.validator.clone(),
    })?;
    let market = match &options.market_topic {
        Some(t) => {
            executor = executor.with_external_market();
            Some(MarketReader::new(&kafka, &options.group, t)?)
        }
        None => {
            executor = executor.idle_needs_end();
            None
        }
    };
    // The other outputs first: a crash before the transaction replays the
    // batch and writes them again, under the same keys. They are secondary:
    // retried in the background when they fail, never stopping PostgreSQL.
    let mut sinks: Vec<Box<dyn AlertSink>> = Vec::new();
    if let Some(t) = &options.alerts_topic {
        let topic = AlertTopic::new(&kafka, t)
            .await
            .map_err(crate::sinks::SinkError::from)?;
        sinks.push(Box::new(Secondary::counted(
            Box::new(topic),
            SECONDARY_BACKLOG,
            metrics.secondary("alert_topic"),
        )));
    }
    if let Some(root) = &options.alerts_lake {
        let lake = LakeAlertSink::new(root.clone(), LakeWrites::Keyed);
        sinks.push(Box::new(Secondary::counted(
            Box::new(lake),
            SECONDARY_BACKLOG,
            metrics.secondary("lake"),
        )));
    }
    sinks.push(Box::new(PostgresSink::new(
        db.clone(),
        Some(options.group.clone()),
        shutdown.clone(),
    )));
    let cases: Box<dyn CaseStore> = Box::new(PgCaseStore::new(db, shutdown.clone()));
    let mut stage = ExecutorStage::new(executor, market, &options.topic, &options.group)
        .with_cases(Some(cases));
    let s = driver::run(
        &mut source,
        &mut stage,
        &mut sinks,
        &DriverOptions {
            exit_when_idle: options.exit_when_idle,
            stats_every: Some(options.stats_every),
            shutdown,
            metrics: Some(metrics.clone()),
            // The positions live in PostgreSQL, written with the alerts:
            // the consumer's own commits only show lag.
            overlap_writes: true,
        },
    )
    .await?;
    Ok(DetectSummary {
        messages: s.messages,
        emitted: s.emitted,
        alerts: s.alerts,
        dead_letters: s.dead_letters,
        batches: s.batches,
        revoked: s.revoked,
        gaps: s.gaps,
        processing_ms: s.processing_ms,
        arrival_ms: s.arrival_ms,
    })
}
