//! [`Secondary`]: a sink that is not the system of record (the alert topic,
//! the lake) made unable to stop the one that is (PostgreSQL).
//!
//! The wrapped sink runs on its own task, fed batches in order through a
//! bounded queue, and retries a failing write with exponential backoff
//! until it succeeds. While the sink is healthy, a batch waits (up to
//! [`HEALTHY_WAIT`]) for its own write before the driver commits it, so a
//! crash can repeat an alert there but not lose it, as before. Once the
//! sink fails, batches stop waiting: PostgreSQL commits on, the sink's
//! backlog is retried in the background, and a backlog beyond its bound is
//! dropped with an error naming how many alerts (PostgreSQL has them all).
//! At the end of the run the backlog gets [`DRAIN`] to go out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use crate::sinks::{AlertBatch, AlertSink, SinkError, Written};

/// How long a batch waits for a healthy secondary sink before the commit.
pub const HEALTHY_WAIT: Duration = Duration::from_secs(5);
/// How long the backlog may take to go out at the end of the run.
pub const DRAIN: Duration = Duration::from_secs(15);
/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A batch for the task, and who waits for it.
struct Job {
    batch: AlertBatch,
    done: Option<oneshot::Sender<()>>,
}

/// Counters a secondary sink moves, for the metrics (each shares its value
/// with the one registered; the defaults count for no one).
#[derive(Debug, Clone, Default)]
pub struct SecondaryCounters {
    /// Failed write attempts (each is retried).
    pub failures: Counter,
    /// Retries of a failed write.
    pub retries: Counter,
    /// Alerts dropped from a full backlog (PostgreSQL has them).
    pub dropped: Counter,
}

/// What the task and the driver both see.
#[derive(Debug, Default)]
struct State {
    /// The last write succeeded (or none failed yet).
    healthy: AtomicBool,
    /// Alerts handed over and not yet written.
    backlog: AtomicU64,
    /// Failed attempts.
    failures: AtomicU64,
    /// Alerts never handed over (the backlog was full).
    dropped: AtomicU64,
    /// The same, for the metrics.
    counters: SecondaryCounters,
}

/// A secondary sink (see the module documentation).
pub struct Secondary {
    name: String,
    tx: Option<mpsc::Sender<Job>>,
    state: Arc<State>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Alerts a batch carries for a secondary sink.
fn alerts_of(batch: &AlertBatch) -> u64 {
    (batch.alerts.len() as u64).max(batch.alerting_rows() as u64)
}

impl Secondary {
    /// Runs `inner` on its own task with a backlog of at most `capacity`
    /// batches.
    pub fn new(inner: Box<dyn AlertSink>, capacity: usize) -> Self {
        Self::counted(inner, capacity, SecondaryCounters::default())
    }

    /// [`new`](Self::new), moving `counters` as it goes.
    pub fn counted(
        inner: Box<dyn AlertSink>,
        capacity: usize,
        counters: SecondaryCounters,
    ) -> Self {
        let name = inner.name();
        let state = Arc::new(State {
            healthy: AtomicBool::new(true),
            counters,
            ..State::default()
        });
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = tokio::spawn(run(inner, rx, Arc::clone(&state)));
        Secondary {
            name,
            tx: Some(tx),
            state,
            task: Some(task),
        }
    }

    /// Failed attempts so far.
    pub fn failures(&self) -> u64 {
        self.state.failures.load(Ordering::Relaxed)
    }
}

/// The task: writes batches in order, each retried until it succeeds.
async fn run(mut inner: Box<dyn AlertSink>, mut rx: mpsc::Receiver<Job>, state: Arc<State>) {
    let name = inner.name();
    while let Some(job) = rx.recv().await {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match inner.write(&job.batch).await {
                Ok(_) => {
                    if !state.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!(sink = %name, "Secondary sink writes again.");
                    }
                    break;
                }
                Err(e) => {
                    state.healthy.store(false, Ordering::Relaxed);
                    let failures = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
                    state.counters.failures.inc();
                    tracing::warn!(
                        sink = %name,
                        error = %e,
                        retry_in = ?backoff,
                        failures,
                        backlog_alerts = state.backlog.load(Ordering::Relaxed),
                        "Secondary sink failed; retrying (PostgreSQL goes on)."
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    state.counters.retries.inc();
                }
            }
        }
        state
            .backlog
            .fetch_sub(alerts_of(&job.batch), Ordering::Relaxed);
        if let Some(done) = job.done {
            let _ = done.send(());
        }
    }
    if let Err(e) = inner.close().await {
        tracing::error!(sink = %name, error = %e, "Secondary sink failed to close.");
    }
}

#[async_trait::async_trait]
impl AlertSink for Secondary {
    fn name(&self) -> String {
        self.name.clone()
    }

    async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError> {
        let n = alerts_of(batch);
        if n == 0 {
            return Ok(Written::default());
        }
        let Some(tx) = &self.tx else {
            return Ok(Written::default());
        };
        // Only what a secondary sink writes: no dead letters or offsets.
        let job_batch = AlertBatch {
            alerts: batch.alerts.clone(),
            scores: batch.scores.clone(),
            ..AlertBatch::default()
        };
        let healthy = self.state.healthy.load(Ordering::Relaxed);
        let (done, wait) = oneshot::channel();
        let job = Job {
            batch: job_batch,
            done: healthy.then_some(done),
        };
        self.state.backlog.fetch_add(n, Ordering::Relaxed);
        if tx.try_send(job).is_err() {
            self.state.backlog.fetch_sub(n, Ordering::Relaxed);
            let dropped = self.state.dropped.fetch_add(n, Ordering::Relaxed) + n;
            self.state.counters.dropped.inc_by(n);
            tracing::error!(
                sink = %self.name,
                alerts = n,
                dropped,
                "Secondary sink's backlog is full: this batch's alerts are not written there \
                 (PostgreSQL, the system of record, has them)."
            );
            return Ok(Written::default());
        }
        if healthy {
            // While the sink is healthy, the batch is there before its
            // commit: a crash can repeat an alert there, never lose one.
            match tokio::time::timeout(HEALTHY_WAIT, wait).await {
                Ok(Ok(())) => {}
                _ => tracing::warn!(
                    sink = %self.name,
                    waited = ?HEALTHY_WAIT,
                    "Secondary sink is slow or failing: PostgreSQL commits without waiting for \
                     it; its alerts are retried in the background."
                ),
            }
        }
        Ok(Written {
            alerts: n,
            dead_letters: 0,
        })
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        // No more jobs: the task writes its backlog, then closes the sink.
        self.tx = None;
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        if tokio::time::timeout(DRAIN, &mut task).await.is_err() {
            task.abort();
            tracing::error!(
                sink = %self.name,
                alerts = self.state.backlog.load(Ordering::Relaxed),
                "Secondary sink could not catch up before the end: these alerts are not \
                 written there (PostgreSQL, the system of record, has them)."
            );
        }
        let dropped = self.state.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::error!(sink = %self.name, alerts = dropped, "Alerts dropped from a full backlog during the run.");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink failing its first `fail` writes, recording the rest.
    struct Flaky {
        fail: u32,
        written: Arc<Mutex<Vec<usize>>>,
    }

    #[async_trait::async_trait]
    impl AlertSink for Flaky {
        fn name(&self) -> String {
            "flaky".into()
        }
        async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(SinkError::ShutdownDuringOutage);
            }
            self.written.lock().unwrap().push(batch.alerts.len());
            Ok(Written::default())
        }
    }

    fn batch(n: usize) -> AlertBatch {
        let alert = crate::sinks::AlertRow {
            model_version: "m".into(),
            detector: "model",
            symbol: "A".into(),
            ts_us: 0,
            seq: 0,
            score: 1.0,
            threshold: 0.5,
            reason: None,
            top_features: None,
            features: None,
            evidence_start_us: None,
            evidence_end_us: None,
            source: "t".into(),
            source_partition: None,
            source_offset: None,
            delay_ticks: 0,
        };
        AlertBatch {
            alerts: vec![alert; n],
            ..AlertBatch::default()
        }
    }

    #[tokio::test]
    async fn failures_are_retried_in_order_and_never_returned() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let counters = SecondaryCounters::default();
        let mut s = Secondary::counted(
            Box::new(Flaky {
                fail: 3,
                written: Arc::clone(&written),
            }),
            8,
            counters.clone(),
        );
        for n in [1, 2, 3] {
            assert!(s.write(&batch(n)).await.is_ok());
        }
        s.close().await.unwrap();
        assert_eq!(*written.lock().unwrap(), vec![1, 2, 3]);
        assert_eq!(s.failures(), 3);
        assert_eq!(counters.failures.get(), 3);
        assert_eq!(counters.retries.get(), 3);
    }
}
