//! The `cases` table: the streaming detector's cases, written in the batch's
//! transaction ([`write_cases`]) and read back by a detector given a
//! partition ([`load_open_cases`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, Transaction};

use super::DbError;
use crate::model::cases::{Case, CaseStats};
use crate::sinks::CaseUpdate;

// One statement whatever the batch size (UNNEST turns the column arrays back
// into rows). The row holds the case as the batch left it: replaying a batch
// after a crash writes the same row again.
const UPSERT_CASES: &str = "INSERT INTO cases (model_version, case_id, symbol, start_ts, end_ts, \
    alerts, model_alerts, peak_score, peak_ts, score_sum, case_score, opened_ts, detectors, \
    detector_bits, top_shap, status, source, source_partition, likely_kinds, opened_at) \
    SELECT u.v, u.id, u.sym, u.st, u.et, u.n, u.nm, u.peak, u.pts, u.ssum, u.cs, u.ots, u.dets, \
    u.bits, u.shap::jsonb, u.status, u.src, u.part, u.kinds, \
    CASE WHEN u.ots IS NOT NULL THEN now() END \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], \
    $6::int4[], $7::int4[], $8::float8[], $9::timestamptz[], $10::float8[], $11::float8[], \
    $12::timestamptz[], $13::text[], $14::int8[], $15::text[], $16::text[], $17::text[], \
    $18::int4[], $19::text[]) AS u(v, id, sym, st, et, n, nm, peak, pts, ssum, cs, ots, dets, \
    bits, shap, status, src, part, kinds) \
    ON CONFLICT (model_version, case_id) DO UPDATE SET end_ts = EXCLUDED.end_ts, \
    alerts = EXCLUDED.alerts, model_alerts = EXCLUDED.model_alerts, \
    peak_score = EXCLUDED.peak_score, peak_ts = EXCLUDED.peak_ts, \
    score_sum = EXCLUDED.score_sum, case_score = EXCLUDED.case_score, \
    opened_ts = EXCLUDED.opened_ts, detectors = EXCLUDED.detectors, \
    detector_bits = EXCLUDED.detector_bits, likely_kinds = EXCLUDED.likely_kinds, \
    top_shap = EXCLUDED.top_shap, \
    status = EXCLUDED.status, updated = now(), \
    opened_at = coalesce(cases.opened_at, EXCLUDED.opened_at)";

const DELETE_CASES: &str = "DELETE FROM cases c USING UNNEST($1::text[], $2::text[]) AS d(v, id) \
    WHERE c.model_version = d.v AND c.case_id = d.id";

/// Stores `cases` inside `tx`, except those of `fenced` partitions (a
/// member of a newer generation owns them): a case that closed without
/// opening is deleted, any other upserted. Returns the rows upserted.
pub async fn write_cases(
    tx: &Transaction<'_>,
    cases: &[CaseUpdate],
    fenced: &[i32],
) -> Result<u64, DbError> {
    let mine = |u: &&CaseUpdate| !u.case.partition.is_some_and(|p| fenced.contains(&p));
    // A case can come twice in one batch (it closed, the partition moved
    // away and back, the case was taken back from the store and changed
    // again): the last is how the batch left it, and one statement may
    // touch a row only once.
    let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(cases.len());
    for (i, u) in cases.iter().enumerate() {
        last.insert((u.version.as_str(), u.case.case_id.as_str()), i);
    }
    let (gone, kept): (Vec<&CaseUpdate>, Vec<&CaseUpdate>) = cases
        .iter()
        .enumerate()
        .filter(|(i, u)| last.get(&(u.version.as_str(), u.case.case_id.as_str())) == Some(i))
        .map(|(_, u)| u)
        .filter(mine)
        .partition(|u| u.is_discarded());
    if !gone.is_empty() {
        let v: Vec<&str> = gone.iter().map(|u| u.version.as_str()).collect();
        let id: Vec<&str> = gone.iter().map(|u| u.case.case_id.as_str()).collect();
        tx.execute(DELETE_CASES, &[&v, &id])
            .await
            .map_err(DbError::query(format!(
                "delete {} unopened closed cases",
                gone.len()
            )))?;
    }
    if kept.is_empty() {
        return Ok(0);
    }
    let ts = |us: i64| {
        DateTime::from_timestamp_micros(us).ok_or_else(|| DbError::InvalidRow {
            table: "cases",
            detail: format!("timestamp {us} µs is out of range"),
        })
    };
    let int = |what: &str, n: u32| {
        i32::try_from(n).map_err(|_| DbError::InvalidRow {
            table: "cases",
            detail: format!("{what} {n} exceeds integer"),
        })
    };
    let n = kept.len();
    let mut start = Vec::with_capacity(n);
    let mut end = Vec::with_capacity(n);
    let mut alerts = Vec::with_capacity(n);
    let mut model_alerts = Vec::with_capacity(n);
    let mut peak_ts: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    let mut opened: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(n);
    for u in &kept {
        let c = &u.case;
        start.push(ts(c.start_us)?);
        end.push(ts(c.end_us)?);
        alerts.push(int("alerts", c.alerts)?);
        model_alerts.push(int("model_alerts", c.stats.model_alerts)?);
        peak_ts.push(c.peak_us.map(ts).transpose()?);
        opened.push(c.opened_us.map(ts).transpose()?);
    }
    let version: Vec<&str> = kept.iter().map(|u| u.version.as_str()).collect();
    let id: Vec<&str> = kept.iter().map(|u| u.case.case_id.as_str()).collect();
    let symbol: Vec<&str> = kept.iter().map(|u| u.case.symbol.as_str()).collect();
    let peak: Vec<Option<f64>> = kept
        .iter()
        .map(|u| (u.case.stats.model_alerts > 0).then_some(f64::from(u.case.stats.peak)))
        .collect();
    let sum: Vec<f64> = kept.iter().map(|u| u.case.stats.sum).collect();
    let score: Vec<f64> = kept.iter().map(|u| u.case.score).collect();
    let detectors: Vec<&str> = kept.iter().map(|u| u.detectors.as_str()).collect();
    // The bits as stored: a bigint holds all 64.
    let bits: Vec<i64> = kept.iter().map(|u| u.case.detectors as i64).collect();
    let shap: Vec<Option<&str>> = kept.iter().map(|u| u.case.top_shap.as_deref()).collect();
    let status: Vec<&str> = kept.iter().map(|u| u.case.status()).collect();
    let source: Vec<&str> = kept.iter().map(|u| u.source.as_str()).collect();
    let partition: Vec<Option<i32>> = kept.iter().map(|u| u.case.partition).collect();
    let kinds: Vec<Option<&str>> = kept.iter().map(|u| u.likely_kinds.as_deref()).collect();
    tx.execute(
        UPSERT_CASES,
        &[
            &version,
            &id,
            &symbol,
            &start,
            &end,
            &alerts,
            &model_alerts,
            &peak,
            &peak_ts,
            &sum,
            &score,
            &opened,
            &detectors,
            &bits,
            &shap,
            &status,
            &source,
            &partition,
            &kinds,
        ],
    )
    .await
    .map_err(DbError::query(format!("upsert {n} rows into cases")))
}

/// The open cases of `version` from `source`'s `partitions`, as a detector
/// given those partitions takes them back.
pub async fn load_open_cases(
    client: &Client,
    version: &str,
    source: &str,
    partitions: &[i32],
) -> Result<Vec<Case>, DbError> {
    let rows = client
        .query(
            "SELECT case_id, symbol, start_ts, end_ts, alerts, model_alerts, peak_score, \
             peak_ts, score_sum, case_score, opened_ts, detector_bits, top_shap::text, \
             source_partition FROM cases WHERE model_version = $1 AND source = $2 \
             AND status = 'open' AND source_partition = ANY($3) ORDER BY symbol",
            &[&version, &source, &partitions],
        )
        .await
        .map_err(DbError::query(format!(
            "read the open cases of {version} on {source} partitions {partitions:?}"
        )))?;
    let us = |t: DateTime<Utc>| t.timestamp_micros();
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    Ok(rows
        .iter()
        .map(|r| {
            let start: DateTime<Utc> = r.get(2);
            let end: DateTime<Utc> = r.get(3);
            let peak: Option<f64> = r.get(6);
            let peak_ts: Option<DateTime<Utc>> = r.get(7);
            let opened: Option<DateTime<Utc>> = r.get(10);
            let bits: i64 = r.get(11);
            Case {
                case_id: r.get(0),
                symbol: r.get(1),
                start_us: us(start),
                end_us: us(end),
                alerts: count(r.get(4)),
                stats: CaseStats {
                    model_alerts: count(r.get(5)),
                    first_us: us(start),
                    last_us: us(end),
                    // Stored widened from f32: narrowing is exact.
                    peak: peak.map_or(0.0, |p| p as f32),
                    sum: r.get(8),
                },
                peak_us: peak_ts.map(us),
                score: r.get(9),
                opened_us: opened.map(us),
                detectors: bits as u64,
                top_shap: r.get(12),
                closed: false,
                partition: r.get(13),
            }
        })
        .collect())
}
