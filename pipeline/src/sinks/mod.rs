//! Where results go outside the executor: alerts, dead letters, offsets and
//! statistics in PostgreSQL ([`postgres`]), alerts to a Kafka topic
//! ([`alert_topic`]) and to the lake ([`lake`]); and ingested ticks to the
//! lake, Kafka or the tick store ([`tick_sink`]). [`secondary`] keeps the
//! sinks that are not the system of record from ever stopping it.
//!
//! The streaming driver hands each micro-batch's output to every
//! [`AlertSink`] in turn, the system of record (PostgreSQL, which stores the
//! source positions in the same transaction as the alerts) last, and
//! commits the source only once they all returned Ok.

pub mod alert_topic;
pub mod json_text;
pub mod lake;
pub mod lake_units;
pub mod postgres;
pub mod secondary;
pub mod tick_sink;

use arrow::array::RecordBatch;

pub use json_text::JsonText;
pub use postgres::{AlertRow, DeadLetterRow, OffsetRow};

/// What one micro-batch produced, for the sinks.
#[derive(Debug, Default, Clone)]
pub struct AlertBatch {
    /// One row per alerting tick and detector (built only when a sink
    /// needs them: see the driver's options).
    pub alerts: Vec<AlertRow>,
    /// Per detector version, the alerting `scores` rows (the lake's
    /// `alerts` table layout) and where each row's tick came from.
    pub scores: Vec<ScoredAlerts>,
    /// Messages that did not become usable ticks, with their reasons.
    pub dead: Vec<DeadLetterRow>,
    /// Per partition, the position after this batch: stored with the
    /// alerts by the system of record.
    pub offsets: Vec<OffsetRow>,
    /// The consumer-group generation the batch was read in: fences the
    /// offsets (an evicted member cannot move a newer member's).
    pub generation: Option<i32>,
    /// Cases this batch changed (alerts joined, opened, closed), as they
    /// stand after it: stored with the alerts by the system of record.
    pub cases: Vec<CaseUpdate>,
}

/// A case as a batch left it, for the system of record.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseUpdate {
    /// The model version whose case rule it opens by.
    pub version: String,
    /// The topic its ticks came from.
    pub source: String,
    /// The detectors that fired in it, by name, comma-separated.
    pub detectors: String,
    /// The kinds those detectors tell, comma-separated, if any.
    pub likely_kinds: Option<String>,
    /// The case.
    pub case: crate::model::cases::Case,
}

impl CaseUpdate {
    /// Whether the case ended without ever opening: nothing to keep.
    pub fn is_discarded(&self) -> bool {
        self.case.closed && self.case.opened_us.is_none()
    }
}

impl AlertBatch {
    /// Alerting rows over every detector.
    pub fn alerting_rows(&self) -> usize {
        self.scores.iter().map(|s| s.rows.num_rows()).sum()
    }
}

/// One detector's alerting `scores` rows of a batch.
#[derive(Debug, Clone)]
pub struct ScoredAlerts {
    /// The detector's version (`model_version` of the lake table).
    pub version: String,
    /// The rows, the `scores` schema.
    pub rows: RecordBatch,
    /// Source partition and offset of each row's tick, aligned with `rows`.
    pub sources: Vec<(i32, i64)>,
}

/// What a sink stored of a batch (the system of record's counts are the
/// run's: rows already there are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Alerts new to the sink.
    pub alerts: u64,
    /// Dead letters new to the sink.
    pub dead_letters: u64,
}

/// A run's counters at one moment, for sinks that keep statistics (the
/// `detector_stats` table).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    /// Messages read.
    pub messages: u64,
    /// Messages per second since the start.
    pub messages_per_s: Option<f64>,
    /// Batches committed.
    pub batches: u64,
    /// Alerts stored.
    pub alerts: u64,
    /// Dead letters stored.
    pub dead_letters: u64,
    /// Messages behind the end of the source.
    pub lag: Option<i64>,
    /// Median batch time since the last report, ms.
    pub batch_p50_ms: Option<f64>,
    /// 99th percentile batch time since the last report, ms.
    pub batch_p99_ms: Option<f64>,
    /// Median arrival-to-commit time since the last report, ms.
    pub e2e_p50_ms: Option<f64>,
    /// 99th percentile arrival-to-commit time since the last report, ms.
    pub e2e_p99_ms: Option<f64>,
    /// Median time from a tick becoming final (its declared waits over) to
    /// its alerts committed since the last report, ms: processing.
    pub processing_p50_ms: Option<f64>,
    /// 99th percentile of that, ms.
    pub processing_p99_ms: Option<f64>,
    /// Median time from a tick's arrival to it becoming final since the
    /// last report, ms: what the pack declares (delay, bucket close).
    pub wait_p50_ms: Option<f64>,
    /// 99th percentile of that, ms.
    pub wait_p99_ms: Option<f64>,
}

/// Why a sink could not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// PostgreSQL refused the batch for good (not an outage: those are
    /// retried).
    #[error(transparent)]
    Db(#[from] postgres::DbError),
    /// The alert topic did not take the alerts.
    #[error(transparent)]
    AlertTopic(#[from] alert_topic::AlertTopicError),
    /// The lake did not take the alerts.
    #[error(transparent)]
    Lake(#[from] crate::lake::LakeError),
    /// Arranging rows failed.
    #[error("arranging alerts: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// A stop was asked for while the system of record was unreachable.
    #[error("stopped by a signal while PostgreSQL was unreachable; the batch in flight was not committed and will be read again")]
    ShutdownDuringOutage,
}

/// A destination of the streaming driver's output.
///
/// Implement [`write`](AlertSink::write) to store one batch; return only
/// when it is stored (or failed): the driver commits the source after every
/// sink returned Ok, so a sink that returns early can lose alerts.
/// [`report`](AlertSink::report) receives the run's counters periodically
/// and at exit, [`close`](AlertSink::close) is called once at the end.
///
/// A sink that counts what it was given (a real one stores it, as
/// [`postgres::PostgresSink`] does, before returning):
///
/// ```
/// use stockanomaly::sinks::{AlertBatch, AlertSink, SinkError, Written};
///
/// #[derive(Default)]
/// struct Counting {
///     alerts: u64,
/// }
///
/// #[async_trait::async_trait]
/// impl AlertSink for Counting {
///     fn name(&self) -> String {
///         "counting".into()
///     }
///
///     async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError> {
///         let n = batch.alerting_rows() as u64;
///         self.alerts += n;
///         Ok(Written { alerts: n, dead_letters: batch.dead.len() as u64 })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), SinkError> {
/// let mut sink = Counting::default();
/// let written = sink.write(&AlertBatch::default()).await?;
/// assert_eq!(written, Written::default());
/// sink.close().await?;
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait AlertSink: Send {
    /// What the sink writes to, for logs and errors.
    fn name(&self) -> String;

    /// Stores one batch's output.
    async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError>;

    /// Takes the run's counters (statistics tables); best effort.
    async fn report(&mut self, stats: &RunStats) {
        let _ = stats;
    }

    /// Writes what is buffered and lets go of connections.
    async fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Where a streaming detector's open cases were stored, for a detector
/// given partitions to take them back (restart, rebalance).
#[async_trait::async_trait]
pub trait CaseStore: Send {
    /// The open cases of model `version` from `source`'s `partitions`.
    async fn load(
        &mut self,
        version: &str,
        source: &str,
        partitions: &[i32],
    ) -> Result<Vec<crate::model::cases::Case>, SinkError>;
}
