//! The streaming detector's side of PostgreSQL, the system of record:
//! [`PostgresSink`] commits each batch's alerts, dead letters and offsets in
//! one transaction ([`commit_batch`]), riding out outages, and writes the
//! `detector_stats` rows; [`PgOffsetStore`] gives the Kafka source the
//! stored offsets it resumes from. Both share one reconnecting connection.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{commit_batch, load_offsets, write_stats, DbError, Reconnecting, StatsRow};
use crate::shutdown::Shutdown;
use crate::sinks::{AlertBatch, AlertSink, RunStats, SinkError, Written};
use crate::sources::kafka::OffsetStore;
use crate::sources::SourceError;

/// One reconnecting connection shared by the sink and the offset store.
pub type SharedDb = Arc<tokio::sync::Mutex<Reconnecting>>;

/// Wraps a reconnecting client for sharing.
pub fn shared(db: Reconnecting) -> SharedDb {
    Arc::new(tokio::sync::Mutex::new(db))
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
        let stats = loop {
            let attempt = match db.client().await {
                Ok(c) => commit_batch(c, &batch.alerts, &batch.dead, &batch.offsets).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(s) => break s,
                Err(e) => {
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        r = db.failed(e) => r?,
                        _ = shutdown.wait() => return Err(SinkError::ShutdownDuringOutage),
                    }
                }
            }
        };
        db.succeeded();
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
        };
        let mut db = self.db.lock().await;
        let result = match db.client().await {
            Ok(c) => write_stats(c, &row).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "Could not write detector_stats.");
        }
    }
}

/// The offsets [`PostgresSink`] stored, for the Kafka source to resume
/// from; outages are retried with backoff.
pub struct PgOffsetStore {
    db: SharedDb,
}

impl PgOffsetStore {
    /// A store on `db`.
    pub fn new(db: SharedDb) -> Self {
        PgOffsetStore { db }
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
        let give_up = |e: DbError| SourceError::Offsets {
            topic: topic.to_owned(),
            detail: e.to_string(),
        };
        let stored = loop {
            let attempt = match db.client().await {
                Ok(c) => load_offsets(c, group, topic).await,
                Err(e) => Err(e),
            };
            match attempt {
                Ok(s) => break s,
                Err(e) => db.failed(e).await.map_err(give_up)?,
            }
        };
        db.succeeded();
        Ok(stored)
    }
}
