//! Where ingested ticks go, behind one writer: the lake's `ticks` table, a
//! Kafka topic of JSON ticks, or PostgreSQL's tick store
//! ([`TickTarget`]); with the amendments a live feed sends (corrections,
//! cancels, revised bars) written to the lake's `amendments` table.

use std::time::Duration;

use arrow::array::RecordBatch;

use crate::ingest::{IngestError, TickTarget};
use crate::lake::{AppendStats, Appender, AppenderOptions, LakeRoot, TableSpec};
use crate::sources::kafka::{ensure_topic, TickPublisher};

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
    Lake(Appender),
    Kafka(TickPublisher),
    Postgres(tokio_postgres::Client),
}

/// Writes tick batches to a [`TickTarget`].
///
/// The lake buffers per day and writes files when buffers fill (memory
/// stays bounded) and at [`flush`](Self::flush); Kafka publishes each
/// batch (librdkafka queues and retries); PostgreSQL commits each batch
/// (COPY into a staging table, insert what is new on the tick key).
pub struct TickSink {
    inner: Inner,
    /// The lake root of the tick files (to reopen after a flush).
    lake: Option<LakeRoot>,
    amendments_root: Option<LakeRoot>,
    amendments: Option<Appender>,
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
    ) -> Result<Self, IngestError> {
        let (inner, lake) = match target {
            TickTarget::Lake(root) => (Inner::Lake(ticks_appender(root)), Some(root.clone())),
            TickTarget::Kafka {
                brokers,
                topic,
                partitions,
            } => {
                ensure_topic(brokers, topic, i32::from(*partitions)).await?;
                (Inner::Kafka(TickPublisher::new(brokers, topic, &[])?), None)
            }
            TickTarget::Postgres { url } => {
                let mut client = crate::sinks::postgres::connect(url).await?;
                // The tick store's table and partition function come with
                // the schema; applying what is missing is idempotent.
                crate::sinks::postgres::migrate(&mut client).await?;
                (Inner::Postgres(client), None)
            }
        };
        Ok(Self {
            inner,
            lake,
            amendments_root: amendments_lake,
            amendments: None,
            stats: SinkStats::default(),
        })
    }

    /// Writes a batch of ticks ([`tick_schema`](crate::tick::tick_schema)).
    pub async fn write(&mut self, ticks: RecordBatch) -> Result<(), IngestError> {
        if ticks.num_rows() == 0 {
            return Ok(());
        }
        self.stats.ticks += ticks.num_rows() as u64;
        match &mut self.inner {
            Inner::Lake(a) => a.append(ticks).await?,
            Inner::Kafka(p) => p.publish_batch(&ticks).await?,
            Inner::Postgres(client) => {
                let w = crate::sinks::postgres::write_ticks(client, &ticks).await?;
                self.stats.stored_new += w.inserted;
                self.stats.partitions_created += w.partitions_created;
            }
        }
        Ok(())
    }

    /// Records a batch of amendments
    /// ([`amendment_schema`](crate::sources::feed::amendment_schema)).
    pub async fn write_amendments(&mut self, amendments: RecordBatch) -> Result<(), IngestError> {
        if amendments.num_rows() == 0 {
            return Ok(());
        }
        let Some(root) = &self.amendments_root else {
            return Err(IngestError::NoAmendmentTable {
                amendments: amendments.num_rows() as u64,
            });
        };
        self.stats.amendments += amendments.num_rows() as u64;
        let a = self
            .amendments
            .get_or_insert_with(|| amendments_appender(root));
        a.append(amendments).await?;
        Ok(())
    }

    /// Makes everything written so far durable: the lake's buffers become
    /// files (a live ingestion calls this every few seconds, so that a
    /// crash loses at most that much). Kafka and PostgreSQL are durable
    /// per batch already.
    pub async fn flush(&mut self) -> Result<(), IngestError> {
        if let (Inner::Lake(a), Some(root)) = (&mut self.inner, &self.lake) {
            let full = std::mem::replace(a, ticks_appender(root));
            add(&mut self.stats.tick_files, full.finish().await?);
        }
        if let (Some(a), Some(root)) = (self.amendments.take(), &self.amendments_root) {
            add(&mut self.stats.amendment_files, a.finish().await?);
            self.amendments = Some(amendments_appender(root));
        }
        Ok(())
    }

    /// What was written so far.
    pub fn stats(&self) -> SinkStats {
        self.stats
    }

    /// Flushes and closes: lake files written, Kafka acknowledgements
    /// awaited (up to two minutes).
    pub async fn finish(mut self) -> Result<SinkStats, IngestError> {
        if let Some(a) = self.amendments.take() {
            add(&mut self.stats.amendment_files, a.finish().await?);
        }
        match self.inner {
            Inner::Lake(a) => add(&mut self.stats.tick_files, a.finish().await?),
            Inner::Postgres(_) => {}
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

fn ticks_appender(root: &LakeRoot) -> Appender {
    Appender::new(root.clone(), TableSpec::ticks(), AppenderOptions::default())
}

fn amendments_appender(root: &LakeRoot) -> Appender {
    Appender::new(
        root.clone(),
        TableSpec::amendments(),
        AppenderOptions::default(),
    )
}

fn add(total: &mut AppendStats, more: AppendStats) {
    total.rows += more.rows;
    total.files_written += more.files_written;
    total.files_existing += more.files_existing;
    total.bytes_written += more.bytes_written;
}
