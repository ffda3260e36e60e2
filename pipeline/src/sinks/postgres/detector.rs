//! The streaming detector's side of PostgreSQL, the system of record:
//! [`PostgresSink`] commits each batch's alerts, dead letters and offsets in
//! one transaction ([`commit_batch_fenced`], fenced by the consumer group's
//! generation), riding out outages that close the connection or only stop
//! answering (every attempt is bounded in time, and a stop is heard while
//! waiting), and writes the
//! `detector_stats` rows; [`PgOffsetStore`] gives the Kafka source the
//! stored offsets it resumes from. Both share one reconnecting connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::cases::load_open_cases;
use super::{commit_output, load_offsets, write_stats, DbError, Reconnecting, StatsRow};
use crate::model::cases::Case;
use crate::shutdown::Shutdown;
use crate::sinks::{AlertBatch, AlertSink, CaseStore, RunStats, SinkError, Written};
use crate::sources::kafka::OffsetStore;
use crate::sources::SourceError;

/// One reconnecting connection shared by the sink and the offset store.
pub type SharedDb = Arc<tokio::sync::Mutex<Reconnecting>>;

/// Wraps a reconnecting client for sharing.
pub fn shared(db: Reconnecting) -> SharedDb {
    Arc::new(tokio::sync::Mutex::new(db))
}

/// The server-side `statement_timeout` of the detector's session: a batch
/// stuck behind a lock fails and is retried.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest the detector waits for PostgreSQL's answer to one attempt (a
/// network that stops answering without closing the connection): then the
/// connection is dropped and the attempt retried on a new one.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// After a stop was asked for, how long an attempt in flight may still
/// finish (a healthy commit takes milliseconds: the batch is then
/// committed as a stop promises).
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How one attempt ended, seen from the retry loop.
enum Attempt<T> {
    Done(Result<T, DbError>),
    Stopped,
}

/// Runs `attempt` within [`ANSWER_TIMEOUT`], unless a stop is asked for and
/// the attempt does not finish within [`STOP_GRACE`] of it. A timeout is a
/// retryable [`DbError::Timeout`]: the caller drops the connection.
async fn bounded<T>(
    context: &str,
    shutdown: &mut Shutdown,
    attempt: impl Future<Output = Result<T, DbError>>,
) -> Attempt<T> {
    let timed = tokio::time::timeout(ANSWER_TIMEOUT, attempt);
    tokio::pin!(timed);
    let result = tokio::select! {
        r = &mut timed => r,
        () = shutdown.wait() => match tokio::time::timeout(STOP_GRACE, &mut timed).await {
            Ok(r) => r,
            Err(_) => return Attempt::Stopped,
        },
    };
    Attempt::Done(result.unwrap_or_else(|_| {
        Err(DbError::Timeout {
            context: context.to_owned(),
            after: ANSWER_TIMEOUT,
        })
    }))
}

/// Drops the connection after a timeout (it may be stuck), so that the
/// retry connects anew.
fn after_attempt<T>(db: &mut Reconnecting, result: &Result<T, DbError>) {
    if matches!(result, Err(DbError::Timeout { .. })) {
        db.abandon();
    }
}

/// Runs one database call until it succeeds: each attempt bounded in time
/// ([`bounded`]), a failure reconnecting with backoff (`$db.failed`, whose
/// final error goes through `$give_up`), a stop asked for meanwhile
/// returning `Err($stopped)` from the enclosing function. `$c` names the
/// client inside `$call`.
macro_rules! until_done {
    ($db:ident, $shutdown:ident, $context:expr, $stopped:expr, $give_up:expr, |$c:ident| $call:expr) => {{
        let value = loop {
            let outcome = bounded($context, &mut $shutdown, async {
                let $c = $db.client().await?;
                $call.await
            })
            .await;
            let Attempt::Done(result) = outcome else {
                return Err($stopped);
            };
            after_attempt(&mut $db, &result);
            match result {
                Ok(v) => break v,
                Err(e) => {
                    tokio::select! {
                        r = $db.failed(e) => r.map_err($give_up)?,
                        () = $shutdown.wait() => return Err($stopped),
                    }
                }
            }
        };
        $db.succeeded();
        value
    }};
}

/// Commits batches to PostgreSQL exactly once (see the module
/// documentation). While PostgreSQL is unreachable a batch is retried with
/// backoff, reconnecting, and nothing moves; a stop asked for meanwhile
/// ends the run without committing ([`SinkError::ShutdownDuringOutage`]).
pub struct PostgresSink {
    db: SharedDb,
    shutdown: Shutdown,
    /// The detector instance named in `detector_stats`.
    instance: String,
    /// Its consumer group.
    group: Option<String>,
}

impl PostgresSink {
    /// A sink on `db`; `group` is recorded with the statistics.
    pub fn new(db: SharedDb, group: Option<String>, shutdown: Shutdown) -> Self {
        let instance = format!(
            "{}:{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "detect".to_owned()),
            std::process::id()
        );
        PostgresSink {
            db,
            shutdown,
            instance,
            group,
        }
    }
}

#[async_trait::async_trait]
impl AlertSink for PostgresSink {
    fn name(&self) -> String {
        "PostgreSQL".into()
    }

    async fn write(&mut self, batch: &AlertBatch) -> Result<Written, SinkError> {
        let mut db = self.db.lock().await;
        let mut shutdown = self.shutdown.clone();
        let stats = until_done!(
            db,
            shutdown,
            "commit batch",
            SinkError::ShutdownDuringOutage,
            SinkError::from,
            |c| commit_output(
                c,
                &batch.alerts,
                &batch.dead,
                &batch.offsets,
                &batch.cases,
                batch.generation,
            )
        );
        if !batch.alerts.is_empty() && !stats.alerts_copied {
            tracing::debug!(
                alerts = batch.alerts.len(),
                existing = stats.alerts_existing,
                "Alerts stored already in the batch (a replay): inserted skipping them, not copied."
            );
        }
        if !stats.fenced.is_empty() {
            tracing::warn!(
                partitions = ?stats.fenced,
                generation = ?batch.generation,
                "Offsets not stored: a member of a newer consumer-group generation owns these \
                 partitions (this one was evicted); its alerts are stored, keyed."
            );
        }
        Ok(Written {
            alerts: stats.alerts_inserted,
            dead_letters: stats.dead_letters_inserted,
        })
    }

    /// Writes a `detector_stats` row; statistics are best effort, so a
    /// failure is logged and the stream goes on.
    async fn report(&mut self, stats: &RunStats) {
        let row = StatsRow {
            instance: self.instance.clone(),
            consumer_group: self.group.clone(),
            ticks: stats.messages,
            ticks_per_s: stats.messages_per_s,
            batches: stats.batches,
            alerts: stats.alerts,
            dead_letters: stats.dead_letters,
            lag: stats.lag,
            batch_p50_ms: stats.batch_p50_ms,
            batch_p99_ms: stats.batch_p99_ms,
            e2e_p50_ms: stats.e2e_p50_ms,
            e2e_p99_ms: stats.e2e_p99_ms,
            processing_p50_ms: stats.processing_p50_ms,
            processing_p99_ms: stats.processing_p99_ms,
            wait_p50_ms: stats.wait_p50_ms,
            wait_p99_ms: stats.wait_p99_ms,
        };
        let mut db = self.db.lock().await;
        let mut shutdown = self.shutdown.clone();
        let outcome = bounded("insert into detector_stats", &mut shutdown, async {
            let c = db.client().await?;
            write_stats(c, &row).await
        })
        .await;
        if let Attempt::Done(result) = outcome {
            after_attempt(&mut db, &result);
            if let Err(e) = result {
                tracing::warn!(error = %e, "Could not write detector_stats.");
            }
        }
    }
}

/// The offsets [`PostgresSink`] stored, for the Kafka source to resume
/// from; outages are retried with backoff.
pub struct PgOffsetStore {
    db: SharedDb,
    shutdown: Shutdown,
}

impl PgOffsetStore {
    /// A store on `db`; a stop asked for while PostgreSQL is unreachable
    /// ends the wait ([`SourceError::Stopped`]).
    pub fn new(db: SharedDb, shutdown: Shutdown) -> Self {
        PgOffsetStore { db, shutdown }
    }
}

#[async_trait::async_trait]
impl OffsetStore for PgOffsetStore {
    async fn load(
        &mut self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, (i64, i64)>, SourceError> {
        let mut db = self.db.lock().await;
        let mut shutdown = self.shutdown.clone();
        let give_up = |e: DbError| SourceError::Offsets {
            topic: topic.to_owned(),
            detail: e.to_string(),
        };
        let stopped = || SourceError::Stopped {
            what: format!("loading the stored offsets of {topic} (PostgreSQL unreachable)"),
        };
        let stored = until_done!(
            db,
            shutdown,
            "read detector_offsets",
            stopped(),
            give_up,
            |c| load_offsets(c, group, topic)
        );
        Ok(stored)
    }
}

/// The open cases [`PostgresSink`] stored, for a detector given partitions
/// to take back; outages are retried with backoff.
pub struct PgCaseStore {
    db: SharedDb,
    shutdown: Shutdown,
}

impl PgCaseStore {
    /// A store on `db`; a stop asked for while PostgreSQL is unreachable
    /// ends the wait.
    pub fn new(db: SharedDb, shutdown: Shutdown) -> Self {
        PgCaseStore { db, shutdown }
    }
}

#[async_trait::async_trait]
impl CaseStore for PgCaseStore {
    async fn load(
        &mut self,
        version: &str,
        source: &str,
        partitions: &[i32],
    ) -> Result<Vec<Case>, SinkError> {
        let mut db = self.db.lock().await;
        let mut shutdown = self.shutdown.clone();
        let cases = until_done!(
            db,
            shutdown,
            "read the open cases",
            SinkError::ShutdownDuringOutage,
            SinkError::from,
            |c| load_open_cases(c, version, source, partitions)
        );
        Ok(cases)
    }
}
