//! Where ingested ticks go, behind one writer: the lake's `ticks` table, a
//! Kafka topic of JSON ticks, or PostgreSQL's tick store
//! ([`TickTarget`]); with the amendments a live feed sends (corrections,
//! cancels, revised bars) written to the lake's `amendments` table.
//!
//! Nothing handed over is dropped on a failure: lake rows stay in memory
//! until a flush has them in files ([`LakeUnits`]), and a PostgreSQL write
//! reconnects and retries with backoff (bounded) before it gives up.

use std::time::Duration;

use arrow::array::RecordBatch;

use super::lake_units::{add, LakeUnits};
use super::postgres::{DbError, Reconnecting};
use crate::lake::{AppendStats, LakeRoot, TableSpec};
use crate::sources::kafka::{ensure_topic, KafkaConfig, KafkaUrl, TickPublisher};

/// Attempts at one PostgreSQL write before giving up: with the backoff of
/// [`Reconnecting`] (0.2 s doubling up to 10 s) about a minute of outage is
/// ridden out.
const PG_ATTEMPTS: u32 = 10;

/// Lake rows held before a write flushes them (the appender's own bound).
const LAKE_FLUSH_ROWS: usize = 4_000_000;

/// Lake rows held while flushes fail before the sink gives up: memory is
/// not endless.
const LAKE_HOLD_ROWS: usize = 2 * LAKE_FLUSH_ROWS;

/// Attempts of the last flush, at [`TickSink::finish`], with a doubling
/// pause from half a second.
const FINISH_ATTEMPTS: u32 = 5;

/// Why a [`TickSink`] could not take ticks.
#[derive(Debug, thiserror::Error)]
pub enum TickSinkError {
    /// Writing the lake failed.
    #[error(transparent)]
    Lake(#[from] crate::lake::LakeError),
    /// Publishing to Kafka failed.
    #[error(transparent)]
    Kafka(#[from] crate::sources::kafka::ProduceError),
    /// Writing to PostgreSQL's tick store failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A live feed sent amendments and the target has no lake to record
    /// them in.
    #[error("{amendments} amendments (trade corrections, cancels, revised bars) arrived and no lake was given to record them in")]
    NoAmendmentTable {
        /// Amendments in the batch.
        amendments: u64,
    },
}

/// Where fetched ticks go.
#[derive(Debug, Clone)]
pub enum TickTarget {
    /// The lake's `ticks` table (content-addressed files: re-ingesting the
    /// same range adds nothing).
    Lake(LakeRoot),
    /// A Kafka topic, as the JSON tick `detect` consumes, keyed by symbol.
    Kafka {
        /// Bootstrap servers (`host:port`, comma-separated).
        brokers: String,
        /// The topic.
        topic: String,
        /// Partitions if the topic has to be created.
        partitions: u16,
    },
    /// PostgreSQL's `ticks` table (the tick store): COPY into a staging
    /// table, insert what is new on the tick key, so re-ingesting adds
    /// nothing.
    Postgres {
        /// Connection URL (never printed).
        url: String,
    },
}

impl TickTarget {
    /// Reads `kafka://BROKERS/TOPIC`, or a lake root (a folder,
    /// `file://`, `s3://`, `memory://`); the error says what is expected.
    pub fn parse(to: &str, partitions: u16) -> Result<Self, String> {
        if to.starts_with("kafka://") {
            let KafkaUrl { brokers, topic } = KafkaUrl::parse(to)?;
            return Ok(Self::Kafka {
                brokers,
                topic,
                partitions,
            });
        }
        if to.starts_with("postgres://") || to.starts_with("postgresql://") {
            return Ok(Self::Postgres { url: to.to_owned() });
        }
        if to == "postgres" {
            return match std::env::var("DATABASE_URL") {
                Ok(url) if !url.is_empty() => Ok(Self::Postgres { url }),
                _ => Err(
                    "--to postgres reads the database from DATABASE_URL, which is not set \
                          (or give --to postgres://user@host/db; the password in PGPASSWORD)"
                        .into(),
                ),
            };
        }
        LakeRoot::parse(to)
            .map(Self::Lake)
            .map_err(|e| e.to_string())
    }
}

impl std::fmt::Display for TickTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lake(root) => write!(f, "{root}"),
            Self::Kafka { brokers, topic, .. } => write!(f, "kafka://{brokers}/{topic}"),
            // The URL may carry a password.
            Self::Postgres { .. } => f.write_str("PostgreSQL's ticks table"),
        }
    }
}

/// What a [`TickSink`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkStats {
    /// Ticks handed to the sink.
    pub ticks: u64,
    /// Lake files of ticks (lake target).
    pub tick_files: AppendStats,
    /// Bytes of JSON acknowledged by the brokers (Kafka target).
    pub published_bytes: u64,
    /// Ticks new to the tick store; the others were there already
    /// (PostgreSQL target).
    pub stored_new: u64,
    /// Day partitions created in the tick store (PostgreSQL target).
    pub partitions_created: u64,
    /// Amendments recorded.
    pub amendments: u64,
    /// Lake files of amendments.
    pub amendment_files: AppendStats,
}

// One sink per run: the size difference between variants is moot.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Lake(LakeUnits),
    Kafka(TickPublisher),
    Postgres(Reconnecting),
}

/// Writes tick batches to a [`TickTarget`].
///
/// The lake holds rows until [`flush`](Self::flush) (or until they are
/// many) and keeps them when a flush fails; Kafka publishes each batch
/// (librdkafka queues and retries); PostgreSQL commits each batch (COPY
/// into a staging table, insert what is new on the tick key), reconnecting
/// and retrying when the connection fails.
pub struct TickSink {
    inner: Inner,
    amendments_root: Option<LakeRoot>,
    amendments: Option<LakeUnits>,
    stats: SinkStats,
}

impl TickSink {
    /// Opens `target` (creating the Kafka topic with its partitions if it
    /// does not exist; connecting to PostgreSQL and applying the schema's
    /// missing migrations). Amendments go to the
    /// `amendments` table of `amendments_lake`; without one they are
    /// counted and logged, and [`write_amendments`](Self::write_amendments)
    /// refuses them rather than lose them silently.
    pub async fn open(
        target: &TickTarget,
        amendments_lake: Option<LakeRoot>,
    ) -> Result<Self, TickSinkError> {
        let inner = match target {
            TickTarget::Lake(root) => Inner::Lake(LakeUnits::new(root.clone(), TableSpec::ticks())),
            TickTarget::Kafka {
                brokers,
                topic,
                partitions,
            } => {
                ensure_topic(brokers, topic, i32::from(*partitions)).await?;
                Inner::Kafka(TickPublisher::new(&KafkaConfig::new(brokers), topic)?)
            }
            TickTarget::Postgres { url } => {
                let mut client = crate::sinks::postgres::connect(url).await?;
                // The tick store's table and partition function come with
                // the schema; applying what is missing is idempotent.
                crate::sinks::postgres::migrate(&mut client).await?;
                Inner::Postgres(Reconnecting::new(url, client))
            }
        };
        Ok(Self {
            inner,
            amendments_root: amendments_lake,
            amendments: None,
            stats: SinkStats::default(),
        })
    }

    /// Writes a batch of ticks ([`tick_schema`](crate::tick::tick_schema)).
    pub async fn write(&mut self, ticks: RecordBatch) -> Result<(), TickSinkError> {
        if ticks.num_rows() == 0 {
            return Ok(());
        }
        let n = ticks.num_rows() as u64;
        match &mut self.inner {
            Inner::Lake(units) => {
                units.push(ticks);
                if units.rows() >= LAKE_FLUSH_ROWS {
                    self.flush_or_keep().await?;
                }
            }
            Inner::Kafka(p) => p.publish_batch(&ticks).await?,
            Inner::Postgres(db) => {
                let w = write_with_retries(db, &ticks).await?;
                self.stats.stored_new += w.inserted;
                self.stats.partitions_created += w.partitions_created;
            }
        }
        self.stats.ticks += n;
        Ok(())
    }

    /// Records a batch of amendments
    /// ([`amendment_schema`](crate::sources::feed::amendment_schema)).
    pub async fn write_amendments(&mut self, amendments: RecordBatch) -> Result<(), TickSinkError> {
        if amendments.num_rows() == 0 {
            return Ok(());
        }
        let Some(root) = &self.amendments_root else {
            return Err(TickSinkError::NoAmendmentTable {
                amendments: amendments.num_rows() as u64,
            });
        };
        self.stats.amendments += amendments.num_rows() as u64;
        self.amendments
            .get_or_insert_with(|| LakeUnits::new(root.clone(), TableSpec::amendments()))
            .push(amendments);
        Ok(())
    }

    /// Makes everything written so far durable: the lake's rows become
    /// files (a live ingestion calls this every few seconds, so that a
    /// crash loses at most that much). Kafka and PostgreSQL are durable
    /// per batch already. On an error the rows are kept, and the next
    /// flush writes them.
    pub async fn flush(&mut self) -> Result<(), TickSinkError> {
        if let Inner::Lake(units) = &mut self.inner {
            add(&mut self.stats.tick_files, units.flush().await?);
        }
        if let Some(units) = &mut self.amendments {
            add(&mut self.stats.amendment_files, units.flush().await?);
        }
        Ok(())
    }

    /// [`flush`](Self::flush) for a periodic flush: a failure is logged
    /// and the rows kept for the next one; the error is returned only when
    /// more than `LAKE_HOLD_ROWS` rows are held.
    pub async fn flush_or_keep(&mut self) -> Result<(), TickSinkError> {
        match self.flush().await {
            Ok(()) => Ok(()),
            Err(e) if self.unflushed() <= LAKE_HOLD_ROWS => {
                tracing::warn!(
                    error = %e,
                    kept = self.unflushed(),
                    "Lake flush failed: the rows are kept for the next flush."
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Rows handed over and not yet in lake files (ticks and amendments).
    pub fn unflushed(&self) -> usize {
        let ticks = match &self.inner {
            Inner::Lake(units) => units.rows(),
            _ => 0,
        };
        ticks + self.amendments.as_ref().map_or(0, LakeUnits::rows)
    }

    /// What was written so far.
    pub fn stats(&self) -> SinkStats {
        self.stats
    }

    /// Flushes and closes: lake files written, Kafka acknowledgements
    /// awaited (up to two minutes).
    pub async fn finish(mut self) -> Result<SinkStats, TickSinkError> {
        // The last chance for rows a failed flush kept: a few attempts.
        let mut pause = Duration::from_millis(500);
        for attempt in 1..=FINISH_ATTEMPTS {
            match self.flush().await {
                Ok(()) => break,
                Err(e) if attempt < FINISH_ATTEMPTS => {
                    tracing::warn!(
                        error = %e,
                        kept = self.unflushed(),
                        retry_in = ?pause,
                        "Lake flush failed at the end; retrying."
                    );
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    tracing::error!(
                        kept = self.unflushed(),
                        "Lake flush failed at the end: these rows are not stored."
                    );
                    return Err(e);
                }
            }
        }
        match self.inner {
            Inner::Lake(_) | Inner::Postgres(_) => {}
            Inner::Kafka(p) => {
                // flush blocks on librdkafka: off the runtime's threads.
                let flushed =
                    tokio::task::spawn_blocking(move || p.flush(Duration::from_secs(120))).await;
                let flushed = match flushed {
                    Ok(s) => s?,
                    Err(join) => std::panic::resume_unwind(join.into_panic()),
                };
                self.stats.published_bytes = flushed.bytes;
            }
        }
        Ok(self.stats)
    }
}

/// Writes `ticks` to the tick store, reconnecting and retrying (the write
/// is one transaction keyed on the tick key, so a retry after a commit whose
/// answer was lost stores nothing twice); gives up after [`PG_ATTEMPTS`] or
/// on an error a retry cannot cure.
async fn write_with_retries(
    db: &mut Reconnecting,
    ticks: &RecordBatch,
) -> Result<crate::sinks::postgres::TickWriteStats, DbError> {
    let mut attempt = 1;
    loop {
        let written = match db.client().await {
            Ok(client) => crate::sinks::postgres::write_ticks(client, ticks).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(w) => {
                db.succeeded();
                return Ok(w);
            }
            Err(e) if attempt < PG_ATTEMPTS => {
                // Sleeps the backoff for a connection-class error, returns
                // any other at once.
                db.failed(e).await?;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::{TickBuilder, TickRecord, Validator};

    fn ticks(from: i64, n: i64) -> RecordBatch {
        let mut b = TickBuilder::with_validator("t", Validator::with_now(2_000_000_000_000_000));
        for i in from..from + n {
            b.push(&TickRecord::trade(
                1_700_000_000_000_000 + i * 1_000_000,
                "AAPL",
                10.0,
                1.0,
            ))
            .unwrap();
        }
        b.finish()
    }

    /// A flush that failed used to take the appender's rows with it: they
    /// were never written. Now they are kept and the next flush writes them.
    #[tokio::test]
    async fn a_failed_lake_flush_keeps_its_rows_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let root = LakeRoot::parse(dir.path().to_str().unwrap()).unwrap();
        let mut sink = TickSink::open(&TickTarget::Lake(root), None).await.unwrap();
        sink.write(ticks(0, 3)).await.unwrap();
        // The table's folder cannot be made: a file is in the way.
        let blocker = dir.path().join("ticks");
        std::fs::write(&blocker, b"not a folder").unwrap();
        assert!(sink.flush().await.is_err());
        assert_eq!(sink.unflushed(), 3);
        assert!(sink.flush_or_keep().await.is_ok(), "kept, not fatal");
        sink.write(ticks(3, 2)).await.unwrap();
        std::fs::remove_file(&blocker).unwrap();
        sink.flush().await.unwrap();
        assert_eq!(sink.unflushed(), 0);
        let stats = sink.finish().await.unwrap();
        assert_eq!(stats.ticks, 5);
        assert_eq!(stats.tick_files.rows, 5, "every row is in a file");
    }
}
