//! The writes of the streaming detector: alerts, dead letters and offsets in
//! one transaction per batch, models, statistics.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::cases::write_cases;
use super::DbError;
use crate::sinks::json_text::JsonText;
use crate::sinks::CaseUpdate;

/// An alert to store in `alerts`. Its key is (model_version, symbol, ts, seq):
/// storing it again does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    /// The model or rule set that raised it.
    pub model_version: String,
    /// `"model"` or `"rule"` (checked by the table).
    pub detector: &'static str,
    /// The tick's symbol.
    pub symbol: String,
    /// The tick's time, µs since the Unix epoch, UTC.
    pub ts_us: i64,
    /// The tick's sequence number within its timestamp (at most `i32::MAX`).
    pub seq: u32,
    /// The score.
    pub score: f64,
    /// The threshold the score crossed.
    pub threshold: f64,
    /// Why, in words.
    pub reason: Option<String>,
    /// The features that weighed most, as JSON.
    pub top_features: Option<JsonText>,
    /// All the tick's features, as JSON.
    pub features: Option<JsonText>,
    /// First tick of the evidence window, µs UTC.
    pub evidence_start_us: Option<i64>,
    /// Last tick of the evidence window, µs UTC.
    pub evidence_end_us: Option<i64>,
    /// Where the tick came from (e.g. the Kafka topic).
    pub source: String,
    /// Its Kafka partition.
    pub source_partition: Option<i32>,
    /// Its Kafka offset.
    pub source_offset: Option<i64>,
    /// Later ticks of the symbol awaited before scoring (the feature set's
    /// `-- delay:`).
    pub delay_ticks: u32,
}

/// A message the detector could not use, for `dead_letters`. Keyed by
/// (source, source_partition, source_offset) when both are set.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    /// Where it came from (e.g. the Kafka topic).
    pub source: String,
    /// Its Kafka partition.
    pub source_partition: Option<i32>,
    /// Its Kafka offset.
    pub source_offset: Option<i64>,
    /// The message as received.
    pub payload: Vec<u8>,
    /// A short, stable reason (e.g. `decode`).
    pub reason: String,
    /// The details (the decoder's message).
    pub detail: String,
}

/// A consumer position for `detector_offsets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRow {
    /// The Kafka consumer group.
    pub consumer_group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// First offset not yet fully processed.
    pub next_offset: i64,
    /// Earliest offset whose tick is still needed as feature history.
    pub warmup_offset: i64,
}

/// What [`commit_batch`] stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Alerts new to the table.
    pub alerts_inserted: u64,
    /// Alerts whose key was already stored (or repeated within the batch).
    pub alerts_existing: u64,
    /// Dead letters new to the table.
    pub dead_letters_inserted: u64,
    /// Partitions whose offsets were not stored because a member of a newer
    /// consumer-group generation stored them ([`commit_batch_fenced`]).
    pub fenced: Vec<i32>,
    /// Case rows upserted (cases that closed without opening are deleted
    /// instead).
    pub cases_upserted: u64,
    /// The alerts went in by COPY; false when there were none, or some were
    /// stored already and the insert that skips them ran instead.
    pub alerts_copied: bool,
}

/// A row of `detector_stats`: one instance's counters at one moment (the
/// table stamps the time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsRow {
    /// The detector instance (host name, pod).
    pub instance: String,
    /// Its consumer group.
    pub consumer_group: Option<String>,
    /// Ticks processed.
    pub ticks: u64,
    /// Recent throughput.
    pub ticks_per_s: Option<f64>,
    /// Batches committed.
    pub batches: u64,
    /// Alerts inserted.
    pub alerts: u64,
    /// Dead letters inserted.
    pub dead_letters: u64,
    /// Messages behind the end of the topic.
    pub lag: Option<i64>,
    /// Median batch time, ms.
    pub batch_p50_ms: Option<f64>,
    /// 99th percentile batch time, ms.
    pub batch_p99_ms: Option<f64>,
    /// Median time from tick to committed alert, ms.
    pub e2e_p50_ms: Option<f64>,
    /// 99th percentile time from tick to committed alert, ms.
    pub e2e_p99_ms: Option<f64>,
    /// Median time from a tick becoming final to its alerts committed, ms.
    pub processing_p50_ms: Option<f64>,
    /// 99th percentile of that, ms.
    pub processing_p99_ms: Option<f64>,
    /// Median time from a tick's arrival to it becoming final (the pack's
    /// declared waits), ms.
    pub wait_p50_ms: Option<f64>,
    /// 99th percentile of that, ms.
    pub wait_p99_ms: Option<f64>,
}

// One statement per table whatever the batch size: the rows travel as one
// array per column and UNNEST turns them back into rows. (Alerts go by COPY
// first and come here only when some are stored already.)
const INSERT_ALERTS: &str = "INSERT INTO alerts (model_version, detector, symbol, ts, seq, score, \
    threshold, reason, top_features, features, evidence_start, evidence_end, source, \
    source_partition, source_offset, delay_ticks) \
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::int4[], \
    $6::float8[], $7::float8[], $8::text[], $9::json[], $10::json[], $11::timestamptz[], \
    $12::timestamptz[], $13::text[], $14::int4[], $15::int8[], $16::int4[]) \
    ON CONFLICT (model_version, symbol, ts, seq) DO NOTHING";

const INSERT_DEAD: &str = "INSERT INTO dead_letters (source, source_partition, source_offset, \
    payload, reason, detail) \
    SELECT * FROM UNNEST($1::text[], $2::int4[], $3::int8[], $4::bytea[], $5::text[], $6::text[]) \
    ON CONFLICT (source, source_partition, source_offset) DO NOTHING";

// A row whose stored generation is newer than the writer's is left alone:
// the writer was evicted from the group and another member owns the
// partition now. A writer without a generation ($6 NULL) does not fence.
const UPSERT_OFFSETS: &str = "INSERT INTO detector_offsets (consumer_group, topic, partition, \
    next_offset, warmup_offset, generation) \
    SELECT u.*, $6::int4 FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[], $5::int8[]) AS u \
    ON CONFLICT (consumer_group, topic, partition) DO UPDATE \
    SET next_offset = EXCLUDED.next_offset, warmup_offset = EXCLUDED.warmup_offset, \
    generation = EXCLUDED.generation, updated = now() \
    WHERE EXCLUDED.generation IS NULL OR detector_offsets.generation IS NULL \
    OR detector_offsets.generation <= EXCLUDED.generation \
    RETURNING partition";

/// Stores one batch in one transaction: `alerts` and `dead` are inserted
/// (rows whose key is already stored are skipped, so a replayed batch adds
/// nothing), `offsets` are upserted (the last row wins when a partition
/// repeats). Either everything is stored or nothing is: on error the
/// transaction rolls back and the caller may retry the same batch when
/// [`DbError::is_retryable`]. A handful of statements, however many rows
/// (the alerts by binary COPY; when one is stored already, by the insert that
/// skips it).
pub async fn commit_batch(
    client: &mut Client,
    alerts: &[AlertRow],
    dead: &[DeadLetterRow],
    offsets: &[OffsetRow],
) -> Result<CommitStats, DbError> {
    commit_batch_fenced(client, alerts, dead, offsets, None).await
}

/// [`commit_batch`] by a consumer-group member of `generation`: a partition
/// whose offsets a member of a newer generation stored keeps them (the
/// writer was evicted; its alerts are still stored, keyed, so nothing is
/// lost or doubled) and is listed in [`CommitStats::fenced`]. `None` does
/// not fence.
pub async fn commit_batch_fenced(
    client: &mut Client,
    alerts: &[AlertRow],
    dead: &[DeadLetterRow],
    offsets: &[OffsetRow],
    generation: Option<i32>,
) -> Result<CommitStats, DbError> {
    commit_output(client, alerts, dead, offsets, &[], generation).await
}

/// [`commit_batch_fenced`] with the cases the batch changed, in the same
/// transaction ([`write_cases`]: a fenced partition's cases are left to
/// the member that owns it now).
pub async fn commit_output(
    client: &mut Client,
    alerts: &[AlertRow],
    dead: &[DeadLetterRow],
    offsets: &[OffsetRow],
    cases: &[CaseUpdate],
    generation: Option<i32>,
) -> Result<CommitStats, DbError> {
    // Converted before the transaction opens: a bad row costs no round trip.
    let alert_cols = AlertColumns::new(alerts)?;
    let offsets = last_per_partition(offsets);

    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("commit batch: begin"))?;
    let mut stats = CommitStats::default();
    // The order inside the transaction is free; alerts last so that most
    // data errors (a CHECK on alerts) come after the other writes and show
    // the rollback undoing them.
    if !dead.is_empty() {
        let source: Vec<&str> = dead.iter().map(|d| d.source.as_str()).collect();
        let partition: Vec<Option<i32>> = dead.iter().map(|d| d.source_partition).collect();
        let offset: Vec<Option<i64>> = dead.iter().map(|d| d.source_offset).collect();
        let payload: Vec<&[u8]> = dead.iter().map(|d| d.payload.as_slice()).collect();
        let reason: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
        let detail: Vec<&str> = dead.iter().map(|d| d.detail.as_str()).collect();
        stats.dead_letters_inserted = tx
            .execute(
                INSERT_DEAD,
                &[&source, &partition, &offset, &payload, &reason, &detail],
            )
            .await
            .map_err(DbError::query(format!(
                "insert {} rows into dead_letters",
                dead.len()
            )))?;
    }
    if !offsets.is_empty() {
        let group: Vec<&str> = offsets.iter().map(|o| o.consumer_group.as_str()).collect();
        let topic: Vec<&str> = offsets.iter().map(|o| o.topic.as_str()).collect();
        let partition: Vec<i32> = offsets.iter().map(|o| o.partition).collect();
        let next: Vec<i64> = offsets.iter().map(|o| o.next_offset).collect();
        let warmup: Vec<i64> = offsets.iter().map(|o| o.warmup_offset).collect();
        let stored: Vec<i32> = tx
            .query(
                UPSERT_OFFSETS,
                &[&group, &topic, &partition, &next, &warmup, &generation],
            )
            .await
            .map_err(DbError::query(format!(
                "upsert {} rows into detector_offsets",
                offsets.len()
            )))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        stats.fenced = partition
            .iter()
            .copied()
            .filter(|p| !stored.contains(p))
            .collect();
    }
    if !cases.is_empty() {
        stats.cases_upserted = write_cases(&tx, cases, &stats.fenced).await?;
    }
    if !alerts.is_empty() {
        let inserted = match copy_alerts(&tx, &alert_cols).await? {
            Some(n) => {
                stats.alerts_copied = true;
                n
            }
            None => tx
                .execute(INSERT_ALERTS, &alert_cols.params())
                .await
                .map_err(DbError::query(format!(
                    "insert {} rows into alerts",
                    alerts.len()
                )))?,
        };
        stats.alerts_inserted = inserted;
        stats.alerts_existing = alerts.len() as u64 - inserted;
    }
    tx.commit()
        .await
        .map_err(DbError::query("commit batch: commit"))?;
    Ok(stats)
}

/// The alerts' columns in `alerts`' order for COPY, with their types.
const COPY_ALERTS: &str = "COPY alerts (model_version, detector, symbol, ts, seq, score, \
    threshold, reason, top_features, features, evidence_start, evidence_end, source, \
    source_partition, source_offset, delay_ticks) FROM STDIN BINARY";
const COPY_ALERT_TYPES: [Type; 16] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT,
    Type::JSON,
    Type::JSON,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::INT4,
];

/// The alerts by binary COPY straight into `alerts`, inside a savepoint:
/// `Some(rows)` when they all went in, `None` when one's key was stored
/// already (or repeated in the batch), with the savepoint rolled back so
/// the caller inserts them skipping the stored ones.
///
/// Why: in a burst most ticks of a batch alert, and then the alert rows
/// are most of the batch's time in PostgreSQL. The one-statement insert
/// sends each column as an array that the server parses whole into memory
/// and unnests, and `ON CONFLICT` probes the key before each row; COPY
/// streams the rows into the table. A key stored already only happens when
/// a batch is replayed (an evicted member's late commit, offsets moved
/// back by hand), rarely enough to pay for a second try then.
async fn copy_alerts(
    tx: &tokio_postgres::Transaction<'_>,
    cols: &AlertColumns<'_>,
) -> Result<Option<u64>, DbError> {
    let n = cols.ts.len();
    tx.batch_execute("SAVEPOINT alerts_copy")
        .await
        .map_err(DbError::query("alerts: savepoint"))?;
    let copied = async {
        let sink = tx.copy_in(COPY_ALERTS).await?;
        let writer = BinaryCopyInWriter::new(sink, &COPY_ALERT_TYPES);
        pin_mut!(writer);
        for i in 0..n {
            writer.as_mut().write(&cols.row(i)).await?;
        }
        writer.finish().await
    }
    .await;
    match copied {
        Ok(rows) => {
            tx.batch_execute("RELEASE SAVEPOINT alerts_copy")
                .await
                .map_err(DbError::query("alerts: release the savepoint"))?;
            Ok(Some(rows))
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT alerts_copy")
                .await
                .map_err(DbError::query("alerts: roll back to the savepoint"))?;
            Ok(None)
        }
        Err(e) => Err(DbError::query(format!("copy {n} rows into alerts"))(e)),
    }
}

/// The stored positions of `group` on `topic`: partition → (next_offset,
/// warmup_offset). Empty for a group that never committed.
pub async fn load_offsets(
    client: &Client,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, DbError> {
    let rows = client
        .query(
            "SELECT partition, next_offset, warmup_offset FROM detector_offsets \
             WHERE consumer_group = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await
        .map_err(DbError::query(format!(
            "read detector_offsets of group {group} on topic {topic}"
        )))?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Records a model (`kind` `"model"`) or rule set (`"rule"`) version with its
/// manifest. Idempotent: registering the same version, kind and manifest
/// again does nothing; the same version with another kind or manifest is
/// [`DbError::ModelConflict`], since versions name content.
pub async fn register_model(
    client: &Client,
    version: &str,
    kind: &str,
    manifest: &serde_json::Value,
) -> Result<(), DbError> {
    let inserted = client
        .execute(
            "INSERT INTO models (version, kind, manifest) VALUES ($1, $2, $3) \
             ON CONFLICT (version) DO NOTHING",
            &[&version, &kind, manifest],
        )
        .await
        .map_err(DbError::query(format!(
            "insert model {version} into models"
        )))?;
    if inserted == 1 {
        return Ok(());
    }
    let same: bool = client
        .query_one(
            "SELECT kind = $2 AND manifest = $3::jsonb FROM models WHERE version = $1",
            &[&version, &kind, manifest],
        )
        .await
        .map_err(DbError::query(format!("read model {version} from models")))?
        .get(0);
    if same {
        Ok(())
    } else {
        Err(DbError::ModelConflict {
            version: version.to_owned(),
        })
    }
}

/// Appends one row to `detector_stats`.
pub async fn write_stats(client: &Client, row: &StatsRow) -> Result<(), DbError> {
    let ticks = count_i64("ticks", row.ticks)?;
    let batches = count_i64("batches", row.batches)?;
    let alerts = count_i64("alerts", row.alerts)?;
    let dead = count_i64("dead_letters", row.dead_letters)?;
    client
        .execute(
            "INSERT INTO detector_stats (instance, consumer_group, ticks, ticks_per_s, batches, \
             alerts, dead_letters, lag, batch_p50_ms, batch_p99_ms, e2e_p50_ms, e2e_p99_ms, \
             processing_p50_ms, processing_p99_ms, wait_p50_ms, wait_p99_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
            &[
                &row.instance,
                &row.consumer_group,
                &ticks,
                &row.ticks_per_s,
                &batches,
                &alerts,
                &dead,
                &row.lag,
                &row.batch_p50_ms,
                &row.batch_p99_ms,
                &row.e2e_p50_ms,
                &row.e2e_p99_ms,
                &row.processing_p50_ms,
                &row.processing_p99_ms,
                &row.wait_p50_ms,
                &row.wait_p99_ms,
            ],
        )
        .await
        .map_err(DbError::query(format!(
            "insert into detector_stats for instance {}",
            row.instance
        )))?;
    Ok(())
}

fn count_i64(field: &str, v: u64) -> Result<i64, DbError> {
    i64::try_from(v).map_err(|_| DbError::InvalidRow {
        table: "detector_stats",
        detail: format!("{field} {v} exceeds bigint"),
    })
}

/// A time in µs since the epoch as the `timestamptz` it is stored as (µs
/// precision both sides, so the conversion is exact).
fn utc_from_us(table: &'static str, us: i64) -> Result<DateTime<Utc>, DbError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| DbError::InvalidRow {
        table,
        detail: format!("timestamp {us} µs is out of range"),
    })
}

/// Alerts as one vector per column, the shape UNNEST wants.
struct AlertColumns<'a> {
    model_version: Vec<&'a str>,
    detector: Vec<&'a str>,
    symbol: Vec<&'a str>,
    ts: Vec<DateTime<Utc>>,
    seq: Vec<i32>,
    score: Vec<f64>,
    threshold: Vec<f64>,
    reason: Vec<Option<&'a str>>,
    top_features: Vec<Option<&'a JsonText>>,
    features: Vec<Option<&'a JsonText>>,
    evidence_start: Vec<Option<DateTime<Utc>>>,
    evidence_end: Vec<Option<DateTime<Utc>>>,
    source: Vec<&'a str>,
    source_partition: Vec<Option<i32>>,
    source_offset: Vec<Option<i64>>,
    delay_ticks: Vec<i32>,
}

impl<'a> AlertColumns<'a> {
    fn new(rows: &'a [AlertRow]) -> Result<Self, DbError> {
        let n = rows.len();
        let mut c = AlertColumns {
            model_version: Vec::with_capacity(n),
            detector: Vec::with_capacity(n),
            symbol: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            score: Vec::with_capacity(n),
            threshold: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            top_features: Vec::with_capacity(n),
            features: Vec::with_capacity(n),
            evidence_start: Vec::with_capacity(n),
            evidence_end: Vec::with_capacity(n),
            source: Vec::with_capacity(n),
            source_partition: Vec::with_capacity(n),
            source_offset: Vec::with_capacity(n),
            delay_ticks: Vec::with_capacity(n),
        };
        for r in rows {
            let seq = i32::try_from(r.seq).map_err(|_| DbError::InvalidRow {
                table: "alerts",
                detail: format!(
                    "seq {} of {} at {} µs exceeds the integer column",
                    r.seq, r.symbol, r.ts_us
                ),
            })?;
            c.model_version.push(&r.model_version);
            c.detector.push(r.detector);
            c.symbol.push(&r.symbol);
            c.ts.push(utc_from_us("alerts", r.ts_us)?);
            c.seq.push(seq);
            c.score.push(r.score);
            c.threshold.push(r.threshold);
            c.reason.push(r.reason.as_deref());
            c.top_features.push(r.top_features.as_ref());
            c.features.push(r.features.as_ref());
            c.evidence_start.push(
                r.evidence_start_us
                    .map(|us| utc_from_us("alerts", us))
                    .transpose()?,
            );
            c.evidence_end.push(
                r.evidence_end_us
                    .map(|us| utc_from_us("alerts", us))
                    .transpose()?,
            );
            c.source.push(&r.source);
            c.source_partition.push(r.source_partition);
            c.source_offset.push(r.source_offset);
            c.delay_ticks
                .push(i32::try_from(r.delay_ticks).unwrap_or(i32::MAX));
        }
        Ok(c)
    }

    /// Row `i`'s values, in [`COPY_ALERTS`] order.
    fn row(&self, i: usize) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.model_version[i],
            &self.detector[i],
            &self.symbol[i],
            &self.ts[i],
            &self.seq[i],
            &self.score[i],
            &self.threshold[i],
            &self.reason[i],
            &self.top_features[i],
            &self.features[i],
            &self.evidence_start[i],
            &self.evidence_end[i],
            &self.source[i],
            &self.source_partition[i],
            &self.source_offset[i],
            &self.delay_ticks[i],
        ]
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.model_version,
            &self.detector,
            &self.symbol,
            &self.ts,
            &self.seq,
            &self.score,
            &self.threshold,
            &self.reason,
            &self.top_features,
            &self.features,
            &self.evidence_start,
            &self.evidence_end,
            &self.source,
            &self.source_partition,
            &self.source_offset,
            &self.delay_ticks,
        ]
    }
}

/// The offsets with one row per (group, topic, partition), the last given:
/// an upsert statement may not touch a row twice.
fn last_per_partition(offsets: &[OffsetRow]) -> Vec<&OffsetRow> {
    let mut by_key: BTreeMap<(&str, &str, i32), &OffsetRow> = BTreeMap::new();
    for o in offsets {
        by_key.insert((&o.consumer_group, &o.topic, o.partition), o);
    }
    by_key.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(seq: u32) -> AlertRow {
        AlertRow {
            model_version: "m".into(),
            detector: "model",
            symbol: "AAPL".into(),
            ts_us: 1_700_000_000_123_456,
            seq,
            score: 0.9,
            threshold: 0.5,
            reason: None,
            top_features: None,
            features: None,
            evidence_start_us: None,
            evidence_end_us: None,
            source: "ticks".into(),
            source_partition: Some(0),
            source_offset: Some(1),
            delay_ticks: 5,
        }
    }

    #[test]
    fn columns_convert_exactly() {
        let rows = [alert(3)];
        let c = AlertColumns::new(&rows).unwrap();
        assert_eq!(c.ts[0].timestamp_micros(), 1_700_000_000_123_456);
        assert_eq!(c.seq, vec![3]);
    }

    #[test]
    fn seq_beyond_integer_is_refused() {
        let rows = [alert(u32::MAX)];
        let e = AlertColumns::new(&rows).err().unwrap();
        assert!(
            matches!(
                e,
                DbError::InvalidRow {
                    table: "alerts",
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn repeated_partitions_keep_the_last() {
        let o = |p, n| OffsetRow {
            consumer_group: "g".into(),
            topic: "t".into(),
            partition: p,
            next_offset: n,
            warmup_offset: 0,
        };
        let rows = [o(0, 5), o(1, 7), o(0, 9)];
        let kept = last_per_partition(&rows);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].next_offset, 9);
        assert_eq!(kept[1].next_offset, 7);
    }
}
