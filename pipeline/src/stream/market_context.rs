//! `market-context`: the one consumer of the **whole** tick topic that
//! computes the market rows of each one-minute bucket once it is closed
//! ([`BucketCloser`]) and publishes them to the `market` topic, which every
//! detector reads in full ([`crate::stream::Executor::push_market`]).
//!
//! A detector only sees its own partitions' symbols, so it cannot compute
//! a cross-section; this stage can, with the same bucket query and the same
//! closing rule as backfill's per-date pass, so the features agree.
//!
//! **Messages.** One per closing (see [`crate::sources::kafka::market`] for
//! the codec): the closed buckets' rows and the `closed_until` watermark.
//! The topic has one partition, so the last message is the stage's state.
//!
//! [`MarketStage`] is the stage on the [`driver`](mod@super::driver): the same
//! Kafka source as the detector's (reading the group's committed offsets),
//! the bucket closer in place of the executor, the market topic as output.
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
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::driver::{self, DriverError, DriverOptions, Processed, Stage};
use super::market::{BucketCloser, BucketQuery, CloserConfig};
use crate::features::market::market_schema;
use crate::features::profiles::{profiles_for, ProfileError};
use crate::lake::LakeRoot;
use crate::shutdown::Shutdown;
use crate::sources::kafka::market::last_closed_until;
use crate::sources::kafka::{KafkaConfig, KafkaSource, KafkaSourceOptions, Resume};
use crate::sources::{Position, Source, SourceBatch, SourceError};
use crate::tick::{event_times, symbols, tick_schema};

pub use crate::sources::kafka::market::{decode_market, encode_market, CLOSED_UNTIL};

/// Where and how `market-context` runs.
#[derive(Debug, Clone)]
pub struct MarketContextOptions {
    /// Kafka brokers and client options (TLS, SASL; values never shown).
    pub kafka: KafkaConfig,
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
    /// Validation of the ticks (`--max-future`).
    pub validator: crate::tick::Validator,
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
    /// Watermark messages (neither ticks nor rejected).
    pub watermarks: u64,
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
    /// The market topic's last message could not be read back.
    #[error(transparent)]
    LastMessage(#[from] crate::sources::kafka::market::LastMarketError),
    /// The tick topic could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The run failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

impl From<MarketContextError> for DriverError {
    fn from(e: MarketContextError) -> Self {
        match e {
            MarketContextError::Driver(d) => d,
            MarketContextError::Source(s) => DriverError::Source(s),
            other => DriverError::Stage(Box::new(other)),
        }
    }
}

/// The market-context stage on the driver: closes buckets and publishes
/// their rows (see the module documentation).
pub struct MarketStage {
    closer: BucketCloser,
    schema: SchemaRef,
    producer: FutureProducer,
    topic: String,
    market_topic: String,
    sql: String,
    /// The bucket query, planned at the first closing.
    buckets: Option<BucketQuery>,
    symbols: RecordBatch,
    lake: Option<LakeRoot>,
    profiles: BTreeMap<i64, RecordBatch>,
    /// Newest `ts` per symbol, for lateness as the detectors judge it.
    newest: HashMap<String, i64>,
    lateness: i64,
    /// Last offset read per partition, for the commit when nothing is open.
    last: BTreeMap<i32, i64>,
    /// The input clock.
    reading: Duration,
    summary: MarketContextSummary,
}

impl MarketStage {
    /// Closes the buckets the clock allows (all of them with `end`) and
    /// publishes their rows; returns the position to commit, if any.
    async fn close_and_publish(
        &mut self,
        end: bool,
    ) -> Result<Option<Position>, MarketContextError> {
        // A watermark that closed no ticks is not worth a message, except
        // at the end (the state a restart resumes from).
        let Some(closed) = self
            .closer
            .close(self.reading, end)?
            .filter(|c| c.ticks.num_rows() > 0 || end)
        else {
            return Ok(None);
        };
        let rows = if closed.ticks.num_rows() == 0 {
            RecordBatch::new_empty(market_schema())
        } else {
            if let Some(root) = &self.lake {
                load_profiles(root, &closed.ticks, &mut self.profiles).await?;
            }
            let day_profiles: Vec<RecordBatch> = self.profiles.values().cloned().collect();
            let query = match &mut self.buckets {
                Some(q) => q,
                None => self.buckets.insert(BucketQuery::new(&self.sql)),
            };
            query
                .rows(&closed.ticks, &self.symbols, &day_profiles)
                .await?
        };
        let body = encode_market(&rows, closed.closed_until)?;
        let key = closed.closed_until.to_string();
        self.producer
            .send(
                FutureRecord::to(&self.market_topic)
                    .key(&key)
                    .payload(&body),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(source, _)| MarketContextError::Kafka {
                context: format!("publishing to {}", self.market_topic),
                source,
            })?;
        self.summary.rows += rows.num_rows() as u64;
        self.summary.published += 1;
        self.summary.closed_until = Some(closed.closed_until);
        tracing::info!(
            closed_until = closed.closed_until,
            rows = rows.num_rows(),
            "Market buckets published."
        );
        Ok(Some(self.position()))
    }

    /// Per partition, the first offset whose bucket is still open (or the
    /// one after the last read when none is).
    fn position(&self) -> Position {
        let mut next: BTreeMap<i32, i64> = self.last.iter().map(|(&p, &o)| (p, o + 1)).collect();
        for b in self.closer.open() {
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
        Position::Partitions {
            topic: self.topic.clone(),
            next,
        }
    }
}

#[async_trait::async_trait(?Send)]
impl Stage for MarketStage {
    fn prepare(
        &mut self,
        batch: &SourceBatch,
        before: Duration,
        now: Duration,
        source: &dyn Source,
    ) -> Result<bool, DriverError> {
        if let Some(stream) = &batch.stream {
            for &(p, at) in &stream.caught_up {
                self.closer.caught_up(p, before + at);
            }
            self.closer.expect(&stream.assignment, now);
        }
        self.reading = now;
        for p in source.behind(&self.closer.idle_at_end(now)) {
            self.closer.not_caught_up(p);
        }
        Ok(false)
    }

    async fn process(&mut self, batch: SourceBatch, end: bool) -> Result<Processed, DriverError> {
        let ticks = batch.ticks;
        let Some(stream) = batch.stream else {
            return Ok(Processed::default());
        };
        self.summary.messages += stream.messages;
        for (&p, &o) in stream.partitions.iter().zip(&stream.offsets) {
            self.last.insert(p, o);
        }
        for r in &stream.refused {
            let e = self.last.entry(r.partition).or_insert(r.offset);
            *e = (*e).max(r.offset);
        }
        self.summary.watermarks += stream.watermarks.len() as u64;
        for w in &stream.watermarks {
            let e = self.last.entry(w.partition).or_insert(w.offset);
            *e = (*e).max(w.offset);
            self.closer.advance(w.partition, w.ts_us, self.reading);
        }
        if let Some(first) = stream.refused.first() {
            self.summary.rejected += stream.refused.len() as u64;
            tracing::warn!(
                messages = stream.refused.len(),
                partition = first.partition,
                offset = first.offset,
                reason = first.reason.code(),
                detail = %first.detail,
                "Not ticks; not counted in any bucket (the detectors dead-letter them). The first:"
            );
        }
        if ticks.num_rows() > 0 {
            // Late for its symbol, as the detectors judge it.
            let (syms, ts) = symbols(&ticks)
                .and_then(|s| Ok((s, event_times(&ticks)?)))
                .map_err(|e| MarketContextError::from(arrow::error::ArrowError::from(e)))?;
            let lateness = self.lateness;
            let keep: BooleanArray = (0..ticks.num_rows())
                .map(|i| {
                    let (sym, t) = (syms.value(i), ts.value(i));
                    // A String only for a symbol's first tick, not per tick.
                    match self.newest.get_mut(sym) {
                        Some(n) => {
                            let ok = t >= n.saturating_sub(lateness);
                            *n = (*n).max(t);
                            Some(ok)
                        }
                        None => {
                            self.newest.insert(sym.to_owned(), t);
                            Some(true)
                        }
                    }
                })
                .collect();
            let mut columns: Vec<ArrayRef> = ticks.columns().to_vec();
            columns.push(Arc::new(Int32Array::from(stream.partitions.clone())));
            columns.push(Arc::new(Int64Array::from(stream.offsets.clone())));
            let all = RecordBatch::try_new(Arc::clone(&self.schema), columns)
                .map_err(MarketContextError::from)?;
            self.summary.late += (all.num_rows() - keep.true_count()) as u64;
            let kept = filter_record_batch(&all, &keep).map_err(MarketContextError::from)?;
            let partitions = kept
                .column(kept.num_columns() - 2)
                .as_primitive::<arrow::datatypes::Int32Type>()
                .clone();
            let late = self
                .closer
                .admit(&kept, &partitions, self.reading)
                .map_err(MarketContextError::from)?;
            let late_n = late.iter().filter(|l| **l).count();
            if late_n > 0 {
                tracing::warn!(
                    ticks = late_n,
                    "Ticks of buckets already closed: not counted (the detectors refuse them as late)."
                );
            }
            self.summary.late += late_n as u64;
            self.summary.ticks += (kept.num_rows() - late_n) as u64;
        }
        let commit = self.close_and_publish(end).await?;
        Ok(Processed {
            commit,
            ..Processed::default()
        })
    }

    fn forget(&mut self, _partitions: &[i32]) -> Result<(), DriverError> {
        // One stage reads the whole topic: a revocation is a restart of the
        // group, and the buckets it holds stay open until their ticks come.
        Ok(())
    }

    fn pending(&self) -> usize {
        self.closer.open_ticks()
    }

    fn held(&self) -> usize {
        self.closer.open_ticks()
    }

    async fn finish(&mut self) -> Result<Option<Processed>, DriverError> {
        let commit = self.close_and_publish(true).await?;
        Ok(commit.map(|c| Processed {
            commit: Some(c),
            ..Processed::default()
        }))
    }
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
    let kafka = options.kafka.clone();
    crate::sources::kafka::ensure_topic_with(&kafka, &options.market_topic, 1).await?;
    let resumed = last_closed_until(&kafka, &options.market_topic)?;
    let shutdown = Shutdown::on_signals();
    let mut source = KafkaSource::new(KafkaSourceOptions {
        kafka: kafka.clone(),
        topic: options.topic.clone(),
        group: options.group.clone(),
        batch_rows: options.batch_rows,
        batch_wait: options.batch_wait,
        resume: Resume::Committed,
        shutdown: shutdown.clone(),
        validator: options.validator.clone(),
    })?;
    let mut config = kafka.client();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000");
    let producer: FutureProducer =
        kafka
            .finish(&mut config)
            .create()
            .map_err(|e| MarketContextError::Kafka {
                context: "creating the producer".into(),
                source: kafka.redact(e),
            })?;
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
    let mut stage = MarketStage {
        closer,
        schema,
        producer,
        topic: options.topic.clone(),
        market_topic: options.market_topic.clone(),
        sql: sql.to_owned(),
        buckets: None,
        symbols: symbols.clone(),
        lake: lake.cloned(),
        profiles: BTreeMap::new(),
        newest: HashMap::new(),
        lateness: i64::try_from(options.closer.allowed_lateness.as_micros()).unwrap_or(i64::MAX),
        last: BTreeMap::new(),
        reading: Duration::ZERO,
        summary: MarketContextSummary {
            closed_until: resumed,
            ..Default::default()
        },
    };
    driver::run(
        &mut source,
        &mut stage,
        &mut Vec::new(),
        &DriverOptions {
            exit_when_idle: options.exit_when_idle,
            stats_every: None,
            shutdown,
            metrics: None,
            overlap_writes: false,
        },
    )
    .await?;
    Ok(stage.summary)
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
    use crate::tick::DAY_US;
    // Held ticks always carry `ts`; a batch without it has no days.
    let days: std::collections::BTreeSet<i64> = event_times(ticks)
        .map(|ts| ts.values().iter().map(|t| t.div_euclid(DAY_US)).collect())
        .unwrap_or_default();
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
