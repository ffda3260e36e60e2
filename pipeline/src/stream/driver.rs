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
    sinks: &mut [Box<dyn AlertSink>],
    options: &DriverOptions,
) -> Result<DriverSummary, DriverError> {
    let mut summary = DriverSummary::default();
    // Total time spent waiting for input: the stage's idle clock.
    let mut reading = Duration::ZERO;
    // Time spent waiting with nothing arriving, since the last input.
    let mut quiet = Duration::ZERO;
    let mut end_of_stream = false;
    let mut input_ended = false;
    // Extra quiet periods waited at the end for input from elsewhere.
    let mut end_waits = 0;
    let started = Instant::now();
    let mut last_stats = Instant::now();
    let mut window = StatsWindow::default();
    // The whole run's latencies (windows are emptied at each report).
    let mut run_processing = Samples::default();
    let mut run_arrival = Samples::default();
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
        summary.messages += messages;
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
        if let Some(stream) = &batch.stream {
            summary.gaps += stream.gaps.len() as u64;
            if let Some(m) = &options.metrics {
                m.record_gaps(stream.gaps.len() as u64);
            }
            if let (Some(m), Some(lag)) = (&options.metrics, &stream.lag) {
                m.set_lag(lag);
            }
        }
        let batch_started = Instant::now();
        let processed = stage.process(batch, end_of_stream).await?;
        let emitted = processed.emitted;
        let delivering = Instant::now();
        let written = deliver(source, sinks, &processed, &mut summary).await?;
        // Where a slow batch's time went (the statistics keep its total).
        tracing::debug!(
            messages,
            emitted,
            alerts = processed.output.alerts.len(),
            process_ms = (delivering - batch_started).as_secs_f64() * 1e3,
            deliver_ms = delivering.elapsed().as_secs_f64() * 1e3,
            "batch"
        );
        let commit_us = crate::tick::now_us();
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
        run_arrival.extend(arrival_s.iter().map(|s| s * 1e3));
        run_processing.extend(processing_s.iter().map(|s| s * 1e3));
        if latencies && reports {
            window.e2e_ms.extend(arrival_s.iter().map(|s| s * 1e3));
            window
                .processing_ms
                .extend(processing_s.iter().map(|s| s * 1e3));
            window.wait_ms.extend(
                processed
                    .ready_us
                    .iter()
                    .zip(&processed.arrived_us)
                    .map(|(&r, &a)| (r - a) as f64 / 1e3),
            );
        }
        let batch_s = processed
            .had_ticks
            .then(|| batch_started.elapsed().as_secs_f64());
        if let Some(s) = batch_s {
            window.batch_ms.push(s * 1e3);
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
                messages,
                emitted,
                alerts: match written {
                    Some(_) => processed.output.alerts.len() as u64,
                    None => 0,
                },
                dead_letters: &reasons,
                batch_seconds: batch_s,
                arrival_to_commit: &arrival_s,
                ready_to_commit: &processing_s,
                event_to_commit: &event_s,
                held: stage.held() as u64,
            });
        }
        if !revoked.is_empty() {
            stage.forget(&revoked)?;
            summary.revoked += revoked.len() as u64;
            tracing::info!(partitions = ?revoked, "Partitions revoked: state dropped.");
        }
        if options
            .stats_every
            .is_some_and(|every| last_stats.elapsed() >= every)
        {
            let stats = window.take(&summary, started, options.metrics.as_ref());
            for sink in sinks.iter_mut() {
                sink.report(&stats).await;
            }
            last_stats = Instant::now();
        }
        if options.shutdown.requested() {
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
            let limit = if summary.messages == 0 {
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
    if finished {
        if let Some(last) = stage.finish().await? {
            deliver(source, sinks, &last, &mut summary).await?;
        }
    }
    let stats = window.take(&summary, started, options.metrics.as_ref());
    for sink in sinks.iter_mut() {
        sink.report(&stats).await;
    }
    for sink in sinks.iter_mut() {
        sink.close().await?;
    }
    let both = |q: [Option<f64>; 2]| Some([q[0]?, q[1]?]);
    summary.processing_ms = both(run_processing.take_quantiles([0.5, 0.99]));
    summary.arrival_ms = both(run_arrival.take_quantiles([0.5, 0.99]));
    source.close().await?;
    Ok(summary)
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
    summary.emitted += processed.emitted;
    summary.raised += processed.raised;
    if let Some(t) = processed.step_time {
        summary.step_seconds.push(t.as_secs_f64());
    }
    let mut written = None;
    if processed.write {
        let write = write_all(sinks, &processed.output);
        tokio::pin!(write);
        // A slow write (an outage being retried) must not cost the source
        // its place: after a moment, keep it alive while waiting.
        let patience = tokio::time::sleep(IDLE_AFTER);
        tokio::pin!(patience);
        let mut idling = false;
        let last = loop {
            tokio::select! {
                biased;
                r = &mut write => break r?,
                () = &mut patience, if !idling => idling = true,
                () = source.idle(), if idling => {}
            }
        };
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
