//! The one streaming loop: **fill → step → sink → commit**, for every
//! streaming command (`detect`, `market-context`, the demo's replay and
//! `bench --stream`), which only wire a [`Source`], a [`Stage`] and their
//! [`AlertSink`]s together.
//!
//! Each turn: the source fills a micro-batch (bounded by rows and time, or
//! cut short by a stop); the stage learns what happened to the source's
//! partitions and the input clock ([`Stage::prepare`]), then processes the
//! batch ([`Stage::process`]); its output goes to every sink in order, the
//! system of record last; only when they all returned Ok is the position
//! committed at the source. Partitions the source lost are dropped after
//! the batch that still carried their ticks.
//!
//! **Overlapped writes** ([`DriverOptions::overlap_writes`]). A write is
//! mostly waiting (PostgreSQL's round trips and its commit: ~2 ms for a
//! batch with few alerts, on a 1,000-tick batch's ~0.5 ms step), so with
//! small micro-batches a detector spent as long waiting as working and fell
//! behind its input. With the option on, batch k's output goes to the
//! sinks in a task of its own while batch k+1 is read and processed; batch
//! k+1's output waits for it (one write at a time, in order, so the system
//! of record sees the same transactions in the same order). A batch that
//! brings partitions assigned or revoked waits for the write in flight
//! before it is processed, and so do statistics reports, a stop, the end
//! and an error (the run returns it once the write in flight has landed,
//! with the sinks back from its task). A tick's latency is taken when its
//! batch's write returns.
//!
//! **Idleness.** The input clock is the time the source spent *waiting*
//! for input, never processing or an outage, so a slow batch never makes a
//! symbol look idle. With an idle exit (replays, tests), a run that has
//! been quiet that long (at least a minute before its first message: a
//! group join can be slow) flushes what is pending as the end of the
//! stream and exits; a bounded source (a replay) ends the stream when it
//! runs out. A signal finishes the batch in flight, commits it and exits.

use std::time::{Duration, Instant};

use super::metrics::{BatchMetrics, Metrics};
use super::ExecutorError;
use crate::shutdown::Shutdown;
use crate::sinks::{AlertBatch, AlertSink, RunStats, SinkError, Written};
use crate::sources::{Position, Source, SourceBatch, SourceError};

/// Why a streaming run stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The executor failed.
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    /// The feature files read the whole market but this detector reads only
    /// some partitions of the topic.
    #[error(
        "the feature files read the market (all symbols at each minute), but this detector \
         reads {mine} of the {all} partitions of {topic}: run `stockanomaly market-context` \
         and give every detector --market-topic"
    )]
    MarketNeedsStage {
        /// The tick topic.
        topic: String,
        /// Partitions assigned to this detector.
        mine: usize,
        /// Partitions of the topic.
        all: usize,
    },
    /// A stage of its own failed (the market-context stage).
    #[error(transparent)]
    Stage(Box<dyn std::error::Error + Send + Sync>),
}

/// What a [`Stage`] made of one batch.
#[derive(Debug, Default)]
pub struct Processed {
    /// The output for the sinks.
    pub output: AlertBatch,
    /// Whether the sinks must take `output` (something to store, or a
    /// position to move with it).
    pub write: bool,
    /// The position to commit at the source once the sinks have the output.
    pub commit: Option<Position>,
    /// Ticks emitted (features computed and scored).
    pub emitted: u64,
    /// Alerting rows raised, over every detector.
    pub raised: u64,
    /// The batch held ticks (warm-up ones included): its time is a batch
    /// time in the statistics.
    pub had_ticks: bool,
    /// Time the executor's step took (benchmarks).
    pub step_time: Option<Duration>,
    /// Arrival of each emitted tick (µs since the epoch).
    pub arrived_us: Vec<i64>,
    /// When each emitted tick became final (µs since the epoch; see
    /// [`crate::stream::Step::ready_us`]): arrival to ready is the wait the
    /// pack declares, ready to commit is processing.
    pub ready_us: Vec<i64>,
    /// Event time of each emitted tick (µs since the epoch).
    pub event_us: Vec<i64>,
}

/// The processing between a source and its sinks: the streaming executor
/// ([`crate::stream::detect::ExecutorStage`]) or the market-context stage
/// ([`crate::stream::market_context::MarketStage`]).
///
/// Implement [`prepare`](Stage::prepare) to take the source's news about
/// its partitions and the input clock, [`process`](Stage::process) to turn
/// a batch into output, [`forget`](Stage::forget) to drop partitions the
/// source lost, and [`pending`](Stage::pending) to say what an end of the
/// stream would still have to emit.
/// Its futures need not be `Send`: the executor's scoring holds XGBoost
/// handles across awaits, and the driver runs on one task.
#[async_trait::async_trait(?Send)]
pub trait Stage: Send {
    /// Before [`process`](Stage::process): what happened to the source's
    /// partitions during the fill, and the input clock (`before` at the
    /// start of the fill, `now` after it). `source` answers questions about
    /// its partitions. Returns whether input besides the batch arrived
    /// (market rows), which counts as activity for the idle exit.
    fn prepare(
        &mut self,
        batch: &SourceBatch,
        before: Duration,
        now: Duration,
        source: &dyn Source,
    ) -> Result<bool, DriverError>;

    /// Processes one batch; `end`: the stream has ended, so emit everything
    /// that can be.
    async fn process(&mut self, batch: SourceBatch, end: bool) -> Result<Processed, DriverError>;

    /// Drops the state of `partitions` (the source lost them) after their
    /// last batch.
    fn forget(&mut self, partitions: &[i32]) -> Result<(), DriverError>;

    /// Ticks held and not yet emitted.
    fn pending(&self) -> usize;

    /// Ticks held (history and pending), for the metrics.
    fn held(&self) -> usize;

    /// Quiet periods to wait at the end of the stream for input from
    /// elsewhere (market rows of a market-context stage).
    fn end_waits(&self) -> u32 {
        0
    }

    /// Called once when the run ends by idleness or by the end of a
    /// bounded source (not on a signal): a last output, if any.
    async fn finish(&mut self) -> Result<Option<Processed>, DriverError> {
        Ok(None)
    }
}

/// How the driver runs.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Stop after this long without input, flushing first (replays and
    /// tests); run until a signal otherwise.
    pub exit_when_idle: Option<Duration>,
    /// How often the sinks get the run's counters ([`AlertSink::report`]);
    /// they always get them at exit.
    pub stats_every: Option<Duration>,
    /// Ends the run after the batch in flight.
    pub shutdown: Shutdown,
    /// Metrics to update per batch.
    pub metrics: Option<Metrics>,
    /// Write a batch's output while the next batch is read and processed
    /// (see [`run`]). Only for a source whose positions live in the system
    /// of record (its own commits are advisory): its commit then trails the
    /// write by a batch.
    pub overlap_writes: bool,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct DriverSummary {
    /// Messages read (warm-up replays included).
    pub messages: u64,
    /// Ticks emitted.
    pub emitted: u64,
    /// Alerting rows raised over every detector.
    pub raised: u64,
    /// Alerts the system of record (the last sink) stored.
    pub alerts: u64,
    /// Dead letters it stored.
    pub dead_letters: u64,
    /// Batches the sinks took.
    pub batches: u64,
    /// Partitions dropped because the source lost them.
    pub revoked: u64,
    /// Offset gaps found (records deleted or the topic recreated).
    pub gaps: u64,
    /// Time of each executor step, seconds.
    pub step_seconds: Vec<f64>,
    /// Over the whole run, from a tick being final to its output committed
    /// (processing), milliseconds: p50 and p99 (of a uniform sample), when
    /// latencies were measured (statistics rows or metrics on).
    pub processing_ms: Option<[f64; 2]>,
    /// The same from a tick's arrival to its output committed.
    pub arrival_ms: Option<[f64; 2]>,
}

/// Longest the driver waits at the start before treating silence as the
/// end (joining a group can take many seconds on a loaded machine).
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(60);

/// Runs `stage` over `source` into `sinks` until a signal, the idle exit or
/// the end of a bounded source (see the module documentation).
pub async fn run<S: Source>(
    source: &mut S,
    stage: &mut dyn Stage,
    sinks: &mut Vec<Box<dyn AlertSink>>,
    options: &DriverOptions,
) -> Result<DriverSummary, DriverError> {
    let mut books = Books::default();
    let started = Instant::now();
    // The write of the last batch, when it runs beside the next one.
    let mut in_flight: Option<InFlight> = None;
    let finished = match drive(
        source,
        stage,
        sinks,
        options,
        &mut books,
        &mut in_flight,
        started,
    )
    .await
    {
        Ok(finished) => finished,
        Err(e) => {
            // A write still in flight is awaited before the error goes up:
            // left running, the task would outlive the run with the sinks
            // (and their connections) inside it, and its own outcome would
            // go unseen.
            if let Err(w) = land(&mut in_flight, source, sinks, &mut books, &*stage, options).await
            {
                tracing::warn!(error = %w, "Landing the write in flight failed as well.");
            }
            return Err(e);
        }
    };
    land(&mut in_flight, source, sinks, &mut books, &*stage, options).await?;
    if finished {
        if let Some(last) = stage.finish().await? {
            books.count(&last);
            deliver(source, sinks, &last, &mut books.summary).await?;
        }
    }
    let stats = books
        .window
        .take(&books.summary, started, options.metrics.as_ref());
    for sink in sinks.iter_mut() {
        sink.report(&stats).await;
    }
    for sink in sinks.iter_mut() {
        sink.close().await?;
    }
    let both = |q: [Option<f64>; 2]| Some([q[0]?, q[1]?]);
    let mut summary = books.summary;
    summary.processing_ms = both(books.run_processing.take_quantiles([0.5, 0.99]));
    summary.arrival_ms = both(books.run_arrival.take_quantiles([0.5, 0.99]));
    source.close().await?;
    Ok(summary)
}

/// The loop of [`run`]: batches until a signal, the idle exit or the end;
/// returns whether the stage finished (rather than stopped). The write of
/// the last batch may still be in flight (`in_flight`) when it returns.
async fn drive<S: Source>(
    source: &mut S,
    stage: &mut dyn Stage,
    sinks: &mut Vec<Box<dyn AlertSink>>,
    options: &DriverOptions,
    books: &mut Books,
    in_flight: &mut Option<InFlight>,
    started: Instant,
) -> Result<bool, DriverError> {
    // Total time spent waiting for input: the stage's idle clock.
    let mut reading = Duration::ZERO;
    // Time spent waiting with nothing arriving, since the last input.
    let mut quiet = Duration::ZERO;
    let mut end_of_stream = false;
    let mut input_ended = false;
    // Extra quiet periods waited at the end for input from elsewhere.
    let mut end_waits = 0;
    let mut last_stats = Instant::now();
    // Statistics rows are written: every `stats_every`, and at the end to
    // each sink.
    let reports = options.stats_every.is_some() || !sinks.is_empty();
    let mut finished = false;

    loop {
        let before = reading;
        let batch = if input_ended {
            None
        } else {
            source.next_batch().await?
        };
        let batch = match batch {
            Some(b) => b,
            None => {
                input_ended = true;
                end_of_stream = true;
                empty_batch()
            }
        };
        let (messages, waited) = match &batch.stream {
            Some(s) => (s.messages, s.waited),
            None => (batch.ticks.num_rows() as u64, Duration::ZERO),
        };
        reading += waited;
        let news = stage.prepare(&batch, before, reading, &*source)?;
        books.summary.messages += messages;
        if messages == 0 && !news {
            quiet += waited;
        } else {
            quiet = Duration::ZERO;
        }
        let revoked = batch
            .stream
            .as_ref()
            .map(|s| s.revoked.clone())
            .unwrap_or_default();
        let rebalanced = batch
            .stream
            .as_ref()
            .is_some_and(|s| !s.assigned.is_empty() || !s.revoked.is_empty());
        if let Some(stream) = &batch.stream {
            books.summary.gaps += stream.gaps.len() as u64;
            if let Some(m) = &options.metrics {
                m.record_gaps(stream.gaps.len() as u64);
            }
            if let (Some(m), Some(lag)) = (&options.metrics, &stream.lag) {
                m.set_lag(lag);
            }
        }
        if rebalanced {
            // Partitions changed hands: the stage may read what the last
            // write stores (open cases), so it lands first.
            land(in_flight, source, sinks, books, &*stage, options).await?;
        }
        let batch_started = Instant::now();
        let mut processed = stage.process(batch, end_of_stream).await?;
        let emitted = processed.emitted;
        let process_time = batch_started.elapsed();
        books.count(&processed);
        // One write at a time, in order: the previous batch's lands first.
        land(in_flight, source, sinks, books, &*stage, options).await?;
        let overlap = options.overlap_writes && processed.write;
        if overlap {
            let output = std::mem::take(&mut processed.output);
            let mut taken = std::mem::take(sinks);
            let task = tokio::spawn(async move {
                let began = Instant::now();
                let written = write_all(&mut taken, &output).await;
                let committed_us = crate::tick::now_us();
                (taken, output, written, committed_us, began.elapsed())
            });
            *in_flight = Some(InFlight {
                task,
                done: Done {
                    processed,
                    messages,
                    process_time,
                },
            });
        } else {
            let written = deliver(source, sinks, &processed, &mut books.summary).await?;
            let delivered = batch_started.elapsed() - process_time;
            let done = Done {
                processed,
                messages,
                process_time,
            };
            books.settle(
                &done,
                written,
                crate::tick::now_us(),
                delivered,
                stage.held(),
                options,
                reports,
            );
        }
        if !revoked.is_empty() {
            stage.forget(&revoked)?;
            books.summary.revoked += revoked.len() as u64;
            tracing::info!(partitions = ?revoked, "Partitions revoked: state dropped.");
        }
        if options
            .stats_every
            .is_some_and(|every| last_stats.elapsed() >= every)
        {
            land(in_flight, source, sinks, books, &*stage, options).await?;
            let stats = books
                .window
                .take(&books.summary, started, options.metrics.as_ref());
            for sink in sinks.iter_mut() {
                sink.report(&stats).await;
            }
            last_stats = Instant::now();
        }
        if options.shutdown.requested() {
            land(in_flight, source, sinks, books, &*stage, options).await?;
            tracing::info!("Signal received: batch committed, leaving the group.");
            break;
        }
        if input_ended {
            // A bounded source ran out: flush until nothing is pending (a
            // round that emits nothing cannot emit more).
            if stage.pending() == 0 || emitted == 0 {
                finished = true;
                break;
            }
            continue;
        }
        if let Some(idle) = options.exit_when_idle {
            let limit = if books.summary.messages == 0 {
                idle.max(FIRST_MESSAGE_WAIT)
            } else {
                idle
            };
            if quiet >= limit {
                if stage.pending() == 0 {
                    finished = true;
                    break;
                }
                if end_of_stream && end_waits < stage.end_waits() {
                    // Input from elsewhere may be slower than this stream:
                    // wait for it a few more quiet periods.
                    end_waits += 1;
                    quiet = Duration::ZERO;
                } else if end_of_stream {
                    // Still pending after a quiet period at the end: input
                    // that never came. Left uncommitted for the next run.
                    tracing::warn!(
                        pending = stage.pending(),
                        "Ticks still wait for their market rows at the end of the stream; \
                         left for the next run."
                    );
                    finished = true;
                    break;
                }
                end_of_stream = true;
                if stage.end_waits() > 0 {
                    // The other input ends once idle too: give it more
                    // quiet periods.
                    quiet = Duration::ZERO;
                }
            }
        }
    }
    Ok(finished)
}

/// A batch processed, its output on its way to the sinks.
struct Done {
    processed: Processed,
    /// Messages the batch read.
    messages: u64,
    /// Time the stage took over it.
    process_time: Duration,
}

/// What a write task gives back: the sinks, the output, what the last
/// sink stored, when it returned (µs since the epoch) and how long it took.
type WriteResult = (
    Vec<Box<dyn AlertSink>>,
    AlertBatch,
    Result<Written, SinkError>,
    i64,
    Duration,
);

/// A batch whose output is being written in a task of its own.
struct InFlight {
    task: tokio::task::JoinHandle<WriteResult>,
    /// The batch, its output inside the task.
    done: Done,
}

/// Waits for the write in flight, if any: gives the sinks back, commits
/// its position at the source and accounts for the batch.
async fn land<S: Source>(
    in_flight: &mut Option<InFlight>,
    source: &mut S,
    sinks: &mut Vec<Box<dyn AlertSink>>,
    books: &mut Books,
    stage: &dyn Stage,
    options: &DriverOptions,
) -> Result<(), DriverError> {
    let Some(InFlight { task, mut done }) = in_flight.take() else {
        return Ok(());
    };
    let (taken, output, written, committed_us, wrote) = match patiently(source, task).await {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => return Err(DriverError::Stage(Box::new(e))),
        },
    };
    *sinks = taken;
    done.processed.output = output;
    let last = written?;
    books.summary.alerts += last.alerts;
    books.summary.dead_letters += last.dead_letters;
    books.summary.batches += 1;
    if let Some(position) = &done.processed.commit {
        source.commit(position).await?;
    }
    let reports = options.stats_every.is_some() || !sinks.is_empty();
    books.settle(
        &done,
        Some(last),
        committed_us,
        wrote,
        stage.held(),
        options,
        reports,
    );
    Ok(())
}

/// The run's counters and latency samples, kept as batches' writes return.
#[derive(Debug, Default)]
struct Books {
    summary: DriverSummary,
    /// Since the last statistics report.
    window: StatsWindow,
    /// The whole run's latencies (windows are emptied at each report).
    run_processing: Samples,
    run_arrival: Samples,
}

impl Books {
    /// Counts a processed batch's ticks and alerts and its step time.
    fn count(&mut self, processed: &Processed) {
        self.summary.emitted += processed.emitted;
        self.summary.raised += processed.raised;
        if let Some(t) = processed.step_time {
            self.summary.step_seconds.push(t.as_secs_f64());
        }
    }

    /// Accounts for a batch whose output the sinks took (`written`, at
    /// `commit_us`, in `delivered`) or that had nothing to write: its
    /// latencies, batch time (its processing and its write) and metrics.
    /// `reports`: someone reads latencies (statistics rows), so they are
    /// measured per tick.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &mut self,
        done: &Done,
        written: Option<Written>,
        commit_us: i64,
        delivered: Duration,
        held: usize,
        options: &DriverOptions,
        reports: bool,
    ) {
        let processed = &done.processed;
        // Where a slow batch's time went (the statistics keep its total).
        tracing::debug!(
            messages = done.messages,
            emitted = processed.emitted,
            alerts = processed.output.alerts.len(),
            process_ms = done.process_time.as_secs_f64() * 1e3,
            deliver_ms = delivered.as_secs_f64() * 1e3,
            "batch"
        );
        // Per-tick latencies only for someone who reads them (statistics
        // rows, metrics): a benchmark or a replay would pay for them per tick.
        let latencies = written.is_some() && (reports || options.metrics.is_some());
        let since = |at: &[i64]| -> Vec<f64> {
            if latencies {
                at.iter().map(|&t| (commit_us - t) as f64 / 1e6).collect()
            } else {
                Vec::new()
            }
        };
        let arrival_s = since(&processed.arrived_us);
        let processing_s = since(&processed.ready_us);
        self.run_arrival.extend(arrival_s.iter().map(|s| s * 1e3));
        self.run_processing
            .extend(processing_s.iter().map(|s| s * 1e3));
        if latencies && reports {
            self.window.e2e_ms.extend(arrival_s.iter().map(|s| s * 1e3));
            self.window
                .processing_ms
                .extend(processing_s.iter().map(|s| s * 1e3));
            self.window.wait_ms.extend(
                processed
                    .ready_us
                    .iter()
                    .zip(&processed.arrived_us)
                    .map(|(&r, &a)| (r - a) as f64 / 1e3),
            );
        }
        let batch_s = processed
            .had_ticks
            .then(|| (done.process_time + delivered).as_secs_f64());
        if let Some(s) = batch_s {
            self.window.batch_ms.push(s * 1e3);
        }
        if let Some(m) = &options.metrics {
            let event_s = since(&processed.event_us);
            let reasons: Vec<&str> = match written {
                Some(_) => processed
                    .output
                    .dead
                    .iter()
                    .map(|d| d.reason.as_str())
                    .collect(),
                None => Vec::new(),
            };
            m.record(&BatchMetrics {
                messages: done.messages,
                emitted: processed.emitted,
                alerts: match written {
                    Some(_) => processed.output.alerts.len() as u64,
                    None => 0,
                },
                dead_letters: &reasons,
                batch_seconds: batch_s,
                arrival_to_commit: &arrival_s,
                ready_to_commit: &processing_s,
                event_to_commit: &event_s,
                held: held as u64,
            });
        }
    }
}

/// Hands `processed` to the sinks (in order; the last one's counts are the
/// run's) when it must be written, then commits its position at the
/// source. Returns what the last sink stored, if the sinks were written.
async fn deliver<S: Source>(
    source: &mut S,
    sinks: &mut [Box<dyn AlertSink>],
    processed: &Processed,
    summary: &mut DriverSummary,
) -> Result<Option<Written>, DriverError> {
    let mut written = None;
    if processed.write {
        let last = patiently(source, write_all(sinks, &processed.output)).await?;
        summary.alerts += last.alerts;
        summary.dead_letters += last.dead_letters;
        summary.batches += 1;
        written = Some(last);
    }
    if let Some(position) = &processed.commit {
        source.commit(position).await?;
    }
    Ok(written)
}

/// Waits for `write`; a slow write (an outage being retried) must not cost
/// the source its place: after a moment, keeps it alive meanwhile.
async fn patiently<S: Source, T>(source: &mut S, write: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(write);
    let patience = tokio::time::sleep(IDLE_AFTER);
    tokio::pin!(patience);
    let mut idling = false;
    loop {
        tokio::select! {
            biased;
            r = &mut write => break r,
            () = &mut patience, if !idling => idling = true,
            () = source.idle(), if idling => {}
        }
    }
}

/// How long a write may take before the driver keeps the source alive
/// meanwhile ([`Source::idle`]).
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Writes `output` to every sink in order; the last one's counts.
async fn write_all(
    sinks: &mut [Box<dyn AlertSink>],
    output: &AlertBatch,
) -> Result<Written, SinkError> {
    let mut last = Written::default();
    for sink in sinks.iter_mut() {
        last = sink.write(output).await?;
    }
    Ok(last)
}

/// A batch with nothing in it (the end of a bounded source).
fn empty_batch() -> SourceBatch {
    SourceBatch {
        ticks: arrow::array::RecordBatch::new_empty(crate::tick::tick_schema()),
        labels: None,
        amendments: None,
        rejects: Vec::new(),
        stream: None,
        position: Position::Partitions {
            topic: String::new(),
            next: Default::default(),
        },
    }
}

/// Batch and per-tick latencies since the last statistics report.
#[derive(Debug, Default)]
struct StatsWindow {
    batch_ms: Samples,
    /// Arrival to commit.
    e2e_ms: Samples,
    /// Ready (final) to commit: processing.
    processing_ms: Samples,
    /// Arrival to ready: the pack's declared waits.
    wait_ms: Samples,
}

/// Most latencies a [`Samples`] keeps between two reports.
const MAX_SAMPLES: usize = 100_000;

/// A uniform sample of at most [`MAX_SAMPLES`] of the values pushed
/// (reservoir sampling): percentiles of a window of any length (a run
/// without periodic reports, a burst of millions of ticks) in bounded
/// memory.
#[derive(Debug, Default)]
struct Samples {
    kept: Vec<f64>,
    seen: u64,
    rng: u64,
}

impl Samples {
    fn push(&mut self, v: f64) {
        self.seen += 1;
        if self.kept.len() < MAX_SAMPLES {
            self.kept.push(v);
            return;
        }
        // xorshift64*: cheap, and only the spread of picks matters.
        self.rng = if self.rng == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            self.rng
        };
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let j = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % self.seen;
        if let Some(slot) = usize::try_from(j).ok().and_then(|j| self.kept.get_mut(j)) {
            *slot = v;
        }
    }

    fn extend(&mut self, values: impl IntoIterator<Item = f64>) {
        for v in values {
            self.push(v);
        }
    }

    /// The `q` quantile of the values kept, and empties them.
    fn take_quantiles(&mut self, qs: [f64; 2]) -> [Option<f64>; 2] {
        let v = &mut self.kept;
        v.sort_by(f64::total_cmp);
        let out = qs.map(|q| (!v.is_empty()).then(|| v[((v.len() - 1) as f64 * q) as usize]));
        v.clear();
        self.seen = 0;
        out
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

impl StatsWindow {
    /// The run's counters now, with this window's percentiles; empties the
    /// window.
    fn take(
        &mut self,
        summary: &DriverSummary,
        started: Instant,
        metrics: Option<&Metrics>,
    ) -> RunStats {
        let [batch_p50_ms, batch_p99_ms] = self.batch_ms.take_quantiles([0.5, 0.99]);
        let [e2e_p50_ms, e2e_p99_ms] = self.e2e_ms.take_quantiles([0.5, 0.99]);
        let [processing_p50_ms, processing_p99_ms] = self.processing_ms.take_quantiles([0.5, 0.99]);
        let [wait_p50_ms, wait_p99_ms] = self.wait_ms.take_quantiles([0.5, 0.99]);
        RunStats {
            messages: summary.messages,
            messages_per_s: Some(
                summary.messages as f64 / started.elapsed().as_secs_f64().max(1e-3),
            ),
            batches: summary.batches,
            alerts: summary.alerts,
            dead_letters: summary.dead_letters,
            lag: metrics.and_then(Metrics::total_lag),
            batch_p50_ms,
            batch_p99_ms,
            e2e_p50_ms,
            e2e_p99_ms,
            processing_p50_ms,
            processing_p99_ms,
            wait_p50_ms,
            wait_p99_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_percentiles_come_from_the_window_and_empty_it() {
        let mut w = StatsWindow::default();
        w.batch_ms.extend([3.0, 1.0, 2.0]);
        w.processing_ms.extend([5.0, 9.0]);
        let s = w.take(&DriverSummary::default(), Instant::now(), None);
        assert_eq!(s.batch_p50_ms, Some(2.0));
        assert_eq!(s.batch_p99_ms, Some(2.0));
        assert_eq!(s.e2e_p50_ms, None);
        assert_eq!(s.processing_p50_ms, Some(5.0));
        assert_eq!(s.processing_p99_ms, Some(5.0));
        assert_eq!(s.wait_p50_ms, None);
        assert!(w.processing_ms.is_empty());
        assert!(w.batch_ms.is_empty());
    }

    /// Every step of a run, in the order it happened.
    type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

    fn note(log: &Log, what: String) {
        log.lock().unwrap().push(what);
    }

    /// `batches` empty batches, then the end.
    struct Batches {
        left: u32,
        log: Log,
    }

    #[async_trait::async_trait]
    impl Source for Batches {
        async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            Ok(Some(empty_batch()))
        }

        async fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
            if let Position::Partitions { next, .. } = upto {
                note(&self.log, format!("commit {}", next[&0]));
            }
            Ok(())
        }
    }

    /// Numbers its batches; each has output to write, carrying its number
    /// as an offset. Says which batch it began on `began`.
    struct Numbering {
        n: i64,
        last: i64,
        log: Log,
        began: tokio::sync::watch::Sender<i64>,
        /// The batch whose processing fails (0: none).
        fail_at: i64,
    }

    #[async_trait::async_trait(?Send)]
    impl Stage for Numbering {
        fn prepare(
            &mut self,
            _: &SourceBatch,
            _: Duration,
            _: Duration,
            _: &dyn Source,
        ) -> Result<bool, DriverError> {
            Ok(false)
        }

        async fn process(&mut self, _: SourceBatch, _: bool) -> Result<Processed, DriverError> {
            if self.n == self.last {
                // The end of the stream: nothing more.
                return Ok(Processed::default());
            }
            self.n += 1;
            let n = self.n;
            if n == self.fail_at {
                note(&self.log, format!("fail {n}"));
                return Err(DriverError::Stage(format!("batch {n} failed").into()));
            }
            note(&self.log, format!("process {n}"));
            self.began.send_replace(n);
            let mut output = AlertBatch::default();
            output.offsets.push(crate::sinks::postgres::OffsetRow {
                consumer_group: "g".into(),
                topic: "t".into(),
                partition: 0,
                next_offset: n,
                warmup_offset: n,
            });
            Ok(Processed {
                output,
                write: true,
                commit: Some(Position::Partitions {
                    topic: "t".into(),
                    next: [(0, n)].into(),
                }),
                emitted: 1,
                ..Processed::default()
            })
        }

        fn forget(&mut self, _: &[i32]) -> Result<(), DriverError> {
            Ok(())
        }

        fn pending(&self) -> usize {
            0
        }

        fn held(&self) -> usize {
            0
        }
    }

    /// Writes a batch; with `wait_for_next`, a batch's write returns only
    /// once the stage began the next batch (or fails after 10 s).
    struct Gate {
        log: Log,
        began: tokio::sync::watch::Receiver<i64>,
        wait_for_next: bool,
        last: i64,
    }

    #[async_trait::async_trait]
    impl AlertSink for Gate {
        fn name(&self) -> String {
            "gate".into()
        }

        async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError> {
            let n = batch.offsets[0].next_offset;
            note(&self.log, format!("write {n}"));
            if self.wait_for_next && n < self.last {
                let next = self.began.wait_for(|&b| b > n);
                if tokio::time::timeout(Duration::from_secs(10), next)
                    .await
                    .is_err()
                {
                    return Err(SinkError::ShutdownDuringOutage);
                }
            }
            note(&self.log, format!("wrote {n}"));
            Ok(Written {
                alerts: 1,
                dead_letters: 0,
            })
        }
    }

    /// Three batches (the `fail_at`-th failing) through the sink `sink`
    /// makes: the outcome, the log and how many sinks the caller got back.
    async fn run_three_with(
        overlap: bool,
        fail_at: i64,
        sink: impl FnOnce(Log, tokio::sync::watch::Receiver<i64>) -> Box<dyn AlertSink>,
    ) -> (Result<DriverSummary, DriverError>, Vec<String>, usize) {
        let log = Log::default();
        let (tx, rx) = tokio::sync::watch::channel(0);
        let mut source = Batches {
            left: 3,
            log: log.clone(),
        };
        let mut stage = Numbering {
            n: 0,
            last: 3,
            log: log.clone(),
            began: tx,
            fail_at,
        };
        let mut sinks = vec![sink(log.clone(), rx)];
        let options = DriverOptions {
            exit_when_idle: None,
            stats_every: None,
            shutdown: Shutdown::never(),
            metrics: None,
            overlap_writes: overlap,
        };
        let r = run(&mut source, &mut stage, &mut sinks, &options).await;
        let log = log.lock().unwrap().clone();
        (r, log, sinks.len())
    }

    async fn run_three(overlap: bool) -> (Result<DriverSummary, DriverError>, Vec<String>) {
        let (r, log, _) = run_three_with(overlap, 0, |log, began| {
            Box::new(Gate {
                log,
                began,
                wait_for_next: overlap,
                last: 3,
            })
        })
        .await;
        (r, log)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapped_writes_run_beside_the_next_batch_in_order() {
        let (r, log) = run_three(true).await;
        let summary = r.expect("each write returned once the next batch began");
        assert_eq!(
            (summary.batches, summary.alerts, summary.emitted),
            (3, 3, 3)
        );
        // A batch's write runs while the next one is processed (it waited
        // for that); writes, and the source's commits after them, stay in
        // order. (When a write task starts against the next batch's
        // processing is up to the scheduler.)
        let at = |what: &str| log.iter().position(|l| l == what).expect(what);
        let before = |a: String, b: String| assert!(at(&a) < at(&b), "{a} before {b}: {log:?}");
        for n in 1..=3 {
            before(format!("process {n}"), format!("write {n}"));
            before(format!("write {n}"), format!("wrote {n}"));
            before(format!("wrote {n}"), format!("commit {n}"));
            if n < 3 {
                let next = n + 1;
                before(format!("process {next}"), format!("wrote {n}"));
                before(format!("commit {n}"), format!("write {next}"));
            }
        }
        assert_eq!(log.len(), 12, "{log:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_overlap_a_batch_is_written_before_the_next() {
        let (r, log) = run_three(false).await;
        assert_eq!(r.unwrap().batches, 3);
        assert_eq!(
            log,
            [
                "process 1",
                "write 1",
                "wrote 1",
                "commit 1",
                "process 2",
                "write 2",
                "wrote 2",
                "commit 2",
                "process 3",
                "write 3",
                "wrote 3",
                "commit 3",
            ]
        );
    }

    /// Writes a batch slowly.
    struct Slow {
        log: Log,
    }

    #[async_trait::async_trait]
    impl AlertSink for Slow {
        fn name(&self) -> String {
            "slow".into()
        }

        async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError> {
            tokio::time::sleep(Duration::from_millis(300)).await;
            note(&self.log, format!("wrote {}", batch.offsets[0].next_offset));
            Ok(Written {
                alerts: 1,
                dead_letters: 0,
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_batch_waits_for_the_write_in_flight() {
        let (r, log, sinks) = run_three_with(true, 2, |log, _| Box::new(Slow { log })).await;
        let err = r.expect_err("batch 2 fails");
        assert_eq!(err.to_string(), "batch 2 failed");
        // Batch 1's write (300 ms) ran beside batch 2; the run returned the
        // error only once it had landed and its position was committed, with
        // the sinks back in the caller's hands.
        assert_eq!(log, ["process 1", "fail 2", "wrote 1", "commit 1"]);
        assert_eq!(sinks, 1, "the sinks came back from the write task");
    }

    #[test]
    fn samples_stay_bounded_and_keep_the_spread() {
        let mut s = Samples::default();
        // 0..1000 ten times over: the sample's median stays near 500.
        let n = 10 * MAX_SAMPLES;
        s.extend((0..n).map(|i| (i % 1000) as f64));
        assert_eq!(s.kept.len(), MAX_SAMPLES);
        assert_eq!(s.seen, n as u64);
        let [p50, p99] = s.take_quantiles([0.5, 0.99]);
        let (p50, p99) = (p50.unwrap(), p99.unwrap());
        assert!((480.0..=520.0).contains(&p50), "{p50}");
        assert!((980.0..=999.0).contains(&p99), "{p99}");
        assert!(s.is_empty());
        assert_eq!(s.take_quantiles([0.5, 0.99]), [None, None]);
    }
}
