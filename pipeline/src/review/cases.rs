//! The case queue and one case in PostgreSQL: what an analyst works on is a
//! case (one symbol's episode of alerts, opened by the model's case rule,
//! written by `detect`), reviewed with its alerts and evidence and given a
//! verdict of its own (`case_dispositions`, latest in `case_status`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Row};

use super::query::{self, AlertFilter, AlertSummary, Recorded, MAX_QUEUE_DEPTH};
use super::ReviewError;

/// How the case queue can be sorted (`sort`), the default first: highest
/// case score, highest peak model score, most alerts, latest first alert,
/// latest opening.
pub const CASE_SORTS: [&str; 5] = ["case_score", "peak_score", "alerts", "start", "opened"];

/// Most alerts a case page lists (and marks on its chart).
pub const MAX_CASE_ALERTS: i64 = 2_000;

/// One case of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct CaseSummary {
    /// The case's id in the review app (`/cases/{id}`).
    pub id: i64,
    /// Its id from the detector: the same in batch `score`'s lake `cases`.
    pub case_id: String,
    /// Model version whose case rule opened it.
    pub model_version: String,
    /// Symbol.
    pub symbol: String,
    /// First alert's event time.
    pub start_ts: DateTime<Utc>,
    /// Last alert's event time so far.
    pub end_ts: DateTime<Utc>,
    /// Alerting ticks (model or rule).
    pub alerts: i32,
    /// Of which the model's.
    pub model_alerts: i32,
    /// Highest model score (none for a case of rule alerts alone).
    pub peak_score: Option<f64>,
    /// The case rule's score, the highest the case reached.
    pub case_score: f64,
    /// Event time of the alert at which it opened.
    pub opened_ts: DateTime<Utc>,
    /// The detectors that fired, comma-separated.
    pub detectors: String,
    /// The manipulation kinds those detectors tell (a rule's `-- kinds:`),
    /// comma-separated; none when no detector tells one.
    pub likely_kinds: Option<String>,
    /// `open` while alerts may still join it, `closed` after the gap.
    pub state: String,
    /// `open` (no verdict yet) or its latest verdict.
    pub status: String,
}

/// A page of the case queue.
#[derive(Debug, Clone, Serialize)]
pub struct CasePage {
    /// Opened cases matching the filters, counted up to [`MAX_QUEUE_DEPTH`].
    pub total: i64,
    /// False when more cases match than were counted.
    pub total_exact: bool,
    /// This page's number, from 1.
    pub page: i64,
    /// Page size.
    pub per_page: i64,
    /// The order ([`CASE_SORTS`]).
    pub sort: String,
    /// The cases.
    pub cases: Vec<CaseSummary>,
}

/// One verdict on a case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseDisposition {
    /// The verdict's id.
    pub id: i64,
    /// The case (`cases.id`).
    pub case: i64,
    /// What was decided.
    #[serde(flatten)]
    pub verdict: Recorded,
}

/// One case with everything its page shows.
#[derive(Debug, Clone, Serialize)]
pub struct CaseDetail {
    /// The queue's fields.
    #[serde(flatten)]
    pub summary: CaseSummary,
    /// Event time of the peak model score.
    pub peak_ts: Option<DateTime<Utc>>,
    /// The largest SHAP contributions at the peak
    /// (`[{feature, value, contribution}]`).
    pub top_shap: Option<serde_json::Value>,
    /// Where its ticks came from (the Kafka topic).
    pub source: String,
    /// Its Kafka partition.
    pub source_partition: Option<i32>,
    /// When the detector first stored it opened (wall clock).
    pub opened_at: Option<DateTime<Utc>>,
    /// Its alerts (model and rule), in event order, at most
    /// [`MAX_CASE_ALERTS`].
    pub case_alerts: Vec<AlertSummary>,
    /// Every verdict, oldest first.
    pub dispositions: Vec<CaseDisposition>,
}

const CASE_COLUMNS: &str = "c.id, c.case_id, c.model_version, c.symbol, c.start_ts, c.end_ts, \
     c.alerts, c.model_alerts, c.peak_score, c.case_score, c.opened_ts, c.detectors, c.status, \
     coalesce(s.status, 'open') AS review_status, c.likely_kinds";

/// `WHERE` clause over `cases c LEFT JOIN case_status s`, parameters
/// $1..$7 as the alert queue's: a case of kind `model` has model alerts, of
/// kind `rule` rule alerts; `from`/`to` keep the cases overlapping them.
const CASE_FILTER: &str = "WHERE c.opened_ts IS NOT NULL \
     AND ($1::text IS NULL OR c.symbol = $1) \
     AND ($2::text IS NULL OR ($2 = 'model' AND c.model_alerts > 0) \
          OR ($2 = 'rule' AND c.alerts > c.model_alerts)) \
     AND ($3::float8 IS NULL OR c.case_score >= $3) \
     AND ($4::timestamptz IS NULL OR c.end_ts >= $4) \
     AND ($5::timestamptz IS NULL OR c.start_ts < $5) \
     AND ($6::text IS NULL OR c.model_version = $6) \
     AND ($7::text IS NULL OR coalesce(s.status, 'open') = $7)";

fn order_by(sort: &str) -> &'static str {
    match sort {
        "peak_score" => "c.peak_score DESC NULLS LAST, c.id",
        "alerts" => "c.alerts DESC, c.id",
        "start" => "c.start_ts DESC, c.id",
        "opened" => "c.opened_ts DESC, c.id",
        _ => "c.case_score DESC, c.id",
    }
}

fn case_summary(row: &Row) -> CaseSummary {
    CaseSummary {
        id: row.get(0),
        case_id: row.get(1),
        model_version: row.get(2),
        symbol: row.get(3),
        start_ts: row.get(4),
        end_ts: row.get(5),
        alerts: row.get(6),
        model_alerts: row.get(7),
        peak_score: row.get(8),
        case_score: row.get(9),
        opened_ts: row.get(10),
        detectors: row.get(11),
        state: row.get(12),
        status: row.get(13),
        likely_kinds: row.get(14),
    }
}

/// The case queue: opened cases matching `filter` (parsed for
/// [`CASE_SORTS`]), in its order, one page.
pub async fn list_cases(client: &Client, filter: &AlertFilter) -> Result<CasePage, ReviewError> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &filter.symbol,
        &filter.kind,
        &filter.min_score,
        &filter.from,
        &filter.to_exclusive,
        &filter.model_version,
        &filter.status,
    ];
    let mut counted = params.to_vec();
    let count_limit = MAX_QUEUE_DEPTH + 1;
    counted.push(&count_limit);
    let total: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM cases c \
                 LEFT JOIN case_status s ON s.case_ref = c.id {CASE_FILTER} LIMIT $8) t"
            ),
            &counted,
        )
        .await
        .map_err(ReviewError::query("count the case queue"))?
        .get(0);
    let offset = (filter.page - 1) * filter.per_page;
    let mut all = params.to_vec();
    all.push(&filter.per_page);
    all.push(&offset);
    let rows = client
        .query(
            &format!(
                "SELECT {CASE_COLUMNS} FROM cases c \
                 LEFT JOIN case_status s ON s.case_ref = c.id {CASE_FILTER} \
                 ORDER BY {} LIMIT $8 OFFSET $9",
                order_by(filter.sort)
            ),
            &all,
        )
        .await
        .map_err(ReviewError::query("read the case queue"))?;
    Ok(CasePage {
        total: total.min(MAX_QUEUE_DEPTH),
        total_exact: total <= MAX_QUEUE_DEPTH,
        page: filter.page,
        per_page: filter.per_page,
        sort: filter.sort.to_owned(),
        cases: rows.iter().map(case_summary).collect(),
    })
}

/// One opened case with its alerts and verdicts.
pub async fn get_case(client: &Client, id: i64) -> Result<CaseDetail, ReviewError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {CASE_COLUMNS}, c.peak_ts, c.top_shap, c.source, c.source_partition, \
                 c.opened_at FROM cases c LEFT JOIN case_status s ON s.case_ref = c.id \
                 WHERE c.id = $1 AND c.opened_ts IS NOT NULL"
            ),
            &[&id],
        )
        .await
        .map_err(ReviewError::query("read a case"))?
        .ok_or(ReviewError::NotFound { what: "case", id })?;
    let summary = case_summary(&row);
    let source: String = row.get(17);
    // The case's alerts: its symbol's from the same stream over its span,
    // the model's of its version and the rules' (a case joins both).
    let alerts = client
        .query(
            &format!(
                "SELECT {} FROM alerts a LEFT JOIN alert_status s ON s.alert_id = a.id \
                 WHERE a.symbol = $1 AND a.ts BETWEEN $2 AND $3 AND a.source = $4 \
                 AND (a.model_version = $5 OR a.detector = 'rule') \
                 ORDER BY a.ts, a.seq, a.id LIMIT $6",
                query::SUMMARY_COLUMNS
            ),
            &[
                &summary.symbol,
                &summary.start_ts,
                &summary.end_ts,
                &source,
                &summary.model_version,
                &MAX_CASE_ALERTS,
            ],
        )
        .await
        .map_err(ReviewError::query("read a case's alerts"))?;
    Ok(CaseDetail {
        peak_ts: row.get(15),
        top_shap: row.get(16),
        source,
        source_partition: row.get(18),
        opened_at: row.get(19),
        case_alerts: alerts.iter().map(query::summary).collect(),
        dispositions: case_dispositions(client, id).await?,
        summary,
    })
}

/// A case's verdicts, oldest first.
pub async fn case_dispositions(
    client: &Client,
    case: i64,
) -> Result<Vec<CaseDisposition>, ReviewError> {
    let rows = client
        .query(
            "SELECT id, case_ref, status, kind, note, analyst, at FROM case_dispositions \
             WHERE case_ref = $1 ORDER BY id",
            &[&case],
        )
        .await
        .map_err(ReviewError::query("read a case's dispositions"))?;
    Ok(rows
        .iter()
        .map(|r| CaseDisposition {
            id: r.get(0),
            case: r.get(1),
            verdict: query::recorded(r, 2),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::review::RawFilter;

    #[test]
    fn the_case_queue_sorts_by_case_score_unless_told() {
        let raw = |sort: Option<&str>| RawFilter {
            sort: sort.map(Into::into),
            ..RawFilter::default()
        };
        let f = AlertFilter::parse_sorted(&raw(None), &CASE_SORTS).unwrap();
        assert_eq!(order_by(f.sort), "c.case_score DESC, c.id");
        let f = AlertFilter::parse_sorted(&raw(Some("alerts")), &CASE_SORTS).unwrap();
        assert_eq!(order_by(f.sort), "c.alerts DESC, c.id");
        // An alert queue's order is no case queue's.
        let e = AlertFilter::parse_sorted(&raw(Some("time")), &CASE_SORTS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sort must be one of case_score"), "{e}");
    }
}
