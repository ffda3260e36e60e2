//! `ingest live`: a [`LiveSource`] read on its own task, a bounded buffer,
//! and a [`TickSink`] written on the caller's, with a status callback.
//!
//! The reader never waits for the writer: a feed that is not read falls
//! behind and the server drops the connection (Polygon's `slow_consumer`).
//! So when the sink is slower than the feed, the buffer between them is
//! bounded by ticks and a batch that does not fit has its ticks dropped,
//! counted and logged (never its rejects or amendments, which are small and
//! must not vanish). Everything else is written: at shutdown (SIGINT or
//! SIGTERM, `--max-ticks`, or a fatal feed error) the reader hands over
//! what it still holds and the sink is flushed before returning.
//!
//! The hand-over itself is bounded too ([`HANDOVERS`] batches): while it is
//! full the reader folds what comes into one batch it keeps (ticks dropped
//! and counted, amendments kept, rejects kept up to [`HELD_REJECTS`] and
//! counted by reason beyond), so a sink stuck on an outage cannot make the
//! reader's memory grow without end.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;
use tokio::sync::{mpsc, watch};

use crate::ingest::IngestError;
use crate::sinks::tick_sink::{SinkStats, TickSink};
use crate::sources::feed::connect::ConnectionStats;
use crate::sources::feed::FeedCounters;
use crate::sources::live::{GapStats, LiveSource};
use crate::sources::{Source, SourceBatch, SourceError};
use crate::tick::{col, RejectCounts, RejectWriter};

/// Batches the reader may hand over before the writer takes them.
pub const HANDOVERS: usize = 64;

/// Reject records the reader keeps while the hand-over is full; beyond,
/// records are dropped and only counted (by reason).
pub const HELD_REJECTS: usize = 100_000;

/// How a live ingestion runs.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// Stop after this many ticks (the last batch is cut to fit).
    pub max_ticks: Option<u64>,
    /// Ticks the buffer between feed and sink may hold; beyond, batches'
    /// ticks are dropped and counted.
    pub buffer_ticks: usize,
    /// How often the lake's buffers become files (what a crash can lose).
    pub flush_every: Duration,
    /// How often the status callback runs.
    pub status_every: Duration,
    /// Where rejected records are written (CSV), if anywhere.
    pub rejects: Option<PathBuf>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            max_ticks: None,
            buffer_ticks: 1_000_000,
            flush_every: Duration::from_secs(10),
            status_every: Duration::from_secs(1),
            rejects: None,
        }
    }
}

/// Why the ingestion ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// SIGINT or SIGTERM (or the caller's shutdown future).
    Signal,
    /// `--max-ticks` reached.
    MaxTicks,
}

/// Where a live ingestion stands (the status line) or ended (the summary).
#[derive(Debug, Clone, Default)]
pub struct LiveStatus {
    /// Ticks written.
    pub ticks: u64,
    /// Ticks per symbol over the last status interval, per second, highest
    /// first.
    pub rates: Vec<(String, f64)>,
    /// Ticks written per symbol since the start.
    pub per_symbol: HashMap<String, u64>,
    /// What the sink stored.
    pub written: SinkStats,
    /// Rejected records by reason.
    pub rejects: RejectCounts,
    /// Where they were written, if asked and any.
    pub rejects_path: Option<PathBuf>,
    /// Ticks dropped because the sink fell behind.
    pub dropped_ticks: u64,
    /// Batches whose ticks were dropped.
    pub dropped_batches: u64,
    /// Rejected records counted but not written to the rejects file
    /// (the writer was behind and [`HELD_REJECTS`] were held).
    pub dropped_rejects: u64,
    /// Connection history.
    pub connection: ConnectionStats,
    /// Decoder counters (unknown message types among them).
    pub counters: FeedCounters,
    /// Gap repair after reconnects.
    pub gaps: GapStats,
    /// Wall time.
    pub elapsed: Duration,
    /// Why it ended (summary only).
    pub stopped: Option<Stopped>,
}

/// What the reader task hands over.
struct Handover {
    batch: SourceBatch,
    /// Ticks dropped for want of room.
    dropped: usize,
    /// Batches whose ticks were dropped.
    dropped_batches: u64,
    /// Rejects counted, not kept (beyond [`HELD_REJECTS`]).
    rejects_dropped: RejectCounts,
    connection: ConnectionStats,
    counters: FeedCounters,
    gaps: GapStats,
}

/// Reads `source` into `sink` until `shutdown` resolves, `--max-ticks` is
/// reached or the feed fails for good (the error, after what came before
/// it was written). `status` is called every `status_every`.
pub async fn ingest_live(
    source: LiveSource,
    mut sink: TickSink,
    options: &LiveOptions,
    shutdown: impl Future<Output = ()> + Send,
    mut status: impl FnMut(&LiveStatus),
) -> Result<LiveStatus, IngestError> {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Result<Handover, SourceError>>(HANDOVERS);
    let (stop_tx, stop_rx) = watch::channel(false);
    let buffered = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(read(
        source,
        tx,
        stop_rx,
        buffered.clone(),
        options.buffer_ticks,
    ));

    let mut st = LiveStatus::default();
    let mut rejects = options.rejects.as_deref().map(RejectWriter::new);
    let mut interval: HashMap<String, u64> = HashMap::new();
    let mut last_status = Instant::now();
    let mut last_flush = Instant::now();
    let mut failure = None;
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(options.status_every.min(options.flush_every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = &mut shutdown, if st.stopped.is_none() => {
                tracing::info!("Stopping: flushing what the feed delivered.");
                st.stopped = Some(Stopped::Signal);
                let _ = stop_tx.send(true);
                continue;
            }
            _ = tick.tick() => {
                maybe_report(&mut st, &mut interval, &mut last_status, options, &mut status, started);
                if last_flush.elapsed() >= options.flush_every {
                    // A failed flush keeps its rows for the next one.
                    sink.flush_or_keep().await?;
                    last_flush = Instant::now();
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        let h = match msg {
            Ok(h) => h,
            Err(e) => {
                failure = Some(e);
                continue;
            }
        };
        st.connection = h.connection;
        st.counters = h.counters;
        st.gaps = h.gaps;
        st.dropped_ticks += h.dropped as u64;
        st.dropped_batches += h.dropped_batches;
        st.rejects.merge(&h.rejects_dropped);
        st.dropped_rejects += h.rejects_dropped.total();
        if let Some(w) = rejects.as_mut() {
            for r in &h.batch.rejects {
                w.write(r).map_err(|source| IngestError::Rejects {
                    path: w.path().to_owned(),
                    source,
                })?;
                st.rejects_path = Some(w.path().to_owned());
            }
        }
        for r in &h.batch.rejects {
            st.rejects.add(r.reason);
        }
        if let Some(a) = h.batch.amendments {
            sink.write_amendments(a).await?;
        }
        let mut ticks = h.batch.ticks;
        buffered.fetch_sub(ticks.num_rows(), Ordering::Relaxed);
        if st.stopped == Some(Stopped::MaxTicks) {
            continue;
        }
        if let Some(max) = options.max_ticks {
            let room = max.saturating_sub(st.ticks) as usize;
            if ticks.num_rows() >= room {
                ticks = ticks.slice(0, room);
                st.stopped = Some(Stopped::MaxTicks);
                let _ = stop_tx.send(true);
            }
        }
        count_symbols(&ticks, &mut interval, &mut st.per_symbol);
        st.ticks += ticks.num_rows() as u64;
        sink.write(ticks).await?;
    }
    // The reader has returned (the channel closed); a panic there is a bug.
    if let Err(join) = reader.await {
        if join.is_panic() {
            std::panic::resume_unwind(join.into_panic());
        }
    }
    if let Some(w) = rejects.as_mut() {
        w.flush().map_err(|source| IngestError::Rejects {
            path: w.path().to_owned(),
            source,
        })?;
    }
    st.written = sink.finish().await?;
    st.elapsed = started.elapsed();
    if let Some(e) = failure {
        return Err(e.into());
    }
    Ok(st)
}

fn maybe_report(
    st: &mut LiveStatus,
    interval: &mut HashMap<String, u64>,
    last: &mut Instant,
    options: &LiveOptions,
    status: &mut impl FnMut(&LiveStatus),
    started: Instant,
) {
    let secs = last.elapsed().as_secs_f64();
    if secs < options.status_every.as_secs_f64() {
        return;
    }
    st.rates = interval
        .drain()
        .map(|(s, n)| (s, n as f64 / secs))
        .collect();
    st.rates
        .sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    st.elapsed = started.elapsed();
    *last = Instant::now();
    status(st);
}

fn count_symbols(
    ticks: &RecordBatch,
    interval: &mut HashMap<String, u64>,
    total: &mut HashMap<String, u64>,
) {
    let Some(symbols) = ticks
        .column_by_name(col::SYMBOL)
        .and_then(|c| c.as_string_opt::<i32>())
    else {
        return;
    };
    // Runs of one symbol are common (feeds batch per symbol): count a run
    // with one lookup.
    let mut run: Option<(&str, u64)> = None;
    let mut add = |s: &str, n: u64| {
        for map in [&mut *interval, &mut *total] {
            match map.get_mut(s) {
                Some(c) => *c += n,
                None => {
                    map.insert(s.to_owned(), n);
                }
            }
        }
    };
    for s in symbols.iter().flatten() {
        match &mut run {
            Some((r, n)) if *r == s => *n += 1,
            _ => {
                if let Some((r, n)) = run {
                    add(r, n);
                }
                run = Some((s, 1));
            }
        }
    }
    if let Some((r, n)) = run {
        add(r, n);
    }
}

/// Folds `more` into `held` while the hand-over is full: `more`'s ticks
/// are dropped (the writer is behind), its amendments kept, its rejects
/// kept up to [`HELD_REJECTS`] and counted beyond.
fn fold(held: &mut Handover, mut more: Handover, buffered: &AtomicUsize) {
    let n = more.batch.ticks.num_rows();
    if n > 0 {
        buffered.fetch_sub(n, Ordering::Relaxed);
        more.dropped += n;
        more.dropped_batches += 1;
    }
    held.dropped += more.dropped;
    held.dropped_batches += more.dropped_batches;
    held.rejects_dropped.merge(&more.rejects_dropped);
    let room = HELD_REJECTS.saturating_sub(held.batch.rejects.len());
    for r in more
        .batch
        .rejects
        .drain(room.min(more.batch.rejects.len())..)
    {
        held.rejects_dropped.add(r.reason);
    }
    held.batch.rejects.append(&mut more.batch.rejects);
    held.batch.amendments = match (held.batch.amendments.take(), more.batch.amendments) {
        (Some(a), Some(b)) => match concat_batches(&a.schema(), [&a, &b]) {
            Ok(c) => Some(c),
            // Same schema from the same decoder: cannot fail; keep the
            // newer rather than panic.
            Err(e) => {
                tracing::error!(error = %e, "Cannot merge amendments batches; the older is lost.");
                Some(b)
            }
        },
        (a, b) => a.or(b),
    };
    held.connection = more.connection;
    held.counters = more.counters;
    held.gaps = more.gaps;
}

/// The reader task: batches from the feed into the channel, ticks dropped
/// when the buffer is full, until stopped or the feed fails. It never waits
/// for the writer while reading (see the module documentation); only the
/// last hand-overs, after the feed is closed, wait for room.
async fn read(
    mut source: LiveSource,
    tx: mpsc::Sender<Result<Handover, SourceError>>,
    mut stop: watch::Receiver<bool>,
    buffered: Arc<AtomicUsize>,
    capacity: usize,
) {
    let mut drops_logged = 0u64;
    let hand = |source: &LiveSource, mut batch: SourceBatch, drops_logged: &mut u64| {
        let n = batch.ticks.num_rows();
        let mut dropped = 0;
        if buffered.load(Ordering::Relaxed) + n > capacity && n > 0 {
            dropped = n;
            *drops_logged += 1;
            // The first few and then every hundredth: a sink that is behind
            // stays behind, and the log must not become the bottleneck.
            if *drops_logged <= 5 || drops_logged.is_multiple_of(100) {
                tracing::warn!(
                    feed = %source.request().feed,
                    ticks = n,
                    buffered = buffered.load(Ordering::Relaxed),
                    capacity,
                    "The sink is behind the feed: ticks dropped (counted in the summary)."
                );
            }
            batch.ticks = RecordBatch::new_empty(batch.ticks.schema());
        } else {
            buffered.fetch_add(n, Ordering::Relaxed);
        }
        Handover {
            batch,
            dropped,
            dropped_batches: u64::from(dropped > 0),
            rejects_dropped: RejectCounts::default(),
            connection: source.connection().clone(),
            counters: source.counters().clone(),
            gaps: source.gaps().clone(),
        }
    };
    // What could not be handed over yet (the channel was full).
    let mut held: Option<Handover> = None;
    let mut failure = None;
    loop {
        let next = tokio::select! {
            r = source.next_batch() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let h = match next {
            Ok(Some(batch)) => hand(&source, batch, &mut drops_logged),
            Ok(None) => break,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let h = match held.take() {
            Some(mut kept) => {
                fold(&mut kept, h, &buffered);
                kept
            }
            None => h,
        };
        match tx.try_send(Ok(h)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Ok(h))) => held = Some(h),
            Err(_) => return,
        }
    }
    // The end: what is kept, then the feed's last batch, waiting for room
    // (the writer takes everything before it finishes).
    if let Some(kept) = held.take() {
        if tx.send(Ok(kept)).await.is_err() {
            return;
        }
    }
    let last = source.finish().await;
    if tx
        .send(Ok(hand(&source, last, &mut drops_logged)))
        .await
        .is_err()
    {
        return;
    }
    if let Some(e) = failure {
        let _ = tx.send(Err(e)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::Position;
    use crate::tick::{Reject, RejectReason, Rejection, TickBuilder, TickRecord, Validator};

    fn handover(ticks: usize, rejects: usize) -> Handover {
        let mut b = TickBuilder::with_validator("t", Validator::with_now(2_000_000_000_000_000));
        for i in 0..ticks {
            b.push(&TickRecord::trade(
                1_700_000_000_000_000 + i as i64,
                "A",
                1.0,
                1.0,
            ))
            .unwrap();
        }
        let reject = Reject::new(
            "t",
            0,
            Rejection::new(RejectReason::NonPositivePrice, "price is -1"),
            String::new(),
        );
        Handover {
            batch: SourceBatch {
                ticks: b.finish(),
                labels: None,
                amendments: None,
                rejects: vec![reject; rejects],
                stream: None,
                position: Position::Partitions {
                    topic: String::new(),
                    next: Default::default(),
                },
            },
            dropped: 0,
            dropped_batches: 0,
            rejects_dropped: RejectCounts::default(),
            connection: ConnectionStats::default(),
            counters: FeedCounters::default(),
            gaps: GapStats::default(),
        }
    }

    /// While the writer is stuck the reader folds what comes into the batch
    /// it holds: its memory stays bounded (the channel was unbounded, and
    /// every reject of a stuck run was held), ticks are dropped and counted,
    /// and every reject is still counted by reason.
    #[test]
    fn a_stuck_writer_bounds_what_the_reader_holds() {
        let buffered = AtomicUsize::new(0);
        let mut held = handover(10, 0);
        buffered.fetch_add(10, Ordering::Relaxed);
        let per = HELD_REJECTS / 4 + 1;
        for _ in 0..8 {
            buffered.fetch_add(5, Ordering::Relaxed);
            fold(&mut held, handover(5, per), &buffered);
        }
        assert_eq!(held.batch.ticks.num_rows(), 10, "admitted before: kept");
        assert_eq!(held.dropped, 40);
        assert_eq!(held.dropped_batches, 8);
        assert_eq!(buffered.load(Ordering::Relaxed), 10);
        assert_eq!(held.batch.rejects.len(), HELD_REJECTS);
        assert_eq!(
            held.batch.rejects.len() as u64 + held.rejects_dropped.total(),
            8 * per as u64,
            "every reject is counted"
        );
    }
}
