//! The review app's reads and writes in PostgreSQL: the alert queue, one
//! alert with its verdicts, and recording a verdict (on an alert or a case:
//! [`VerdictOn`]). Every query is parameterised; filters arrive as text and
//! are validated here. The case queue is in [`cases`](super::cases).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Row};

use super::auth::Identity;
use super::ReviewError;

/// The verdicts an analyst can give.
pub const STATUSES: [&str; 3] = ["confirmed", "dismissed", "escalated"];

/// The statuses an alert can have: `open` (no verdict yet) or its latest verdict.
pub const QUEUE_STATUSES: [&str; 4] = ["open", "confirmed", "dismissed", "escalated"];

/// The kinds of detector that raise alerts.
pub const DETECTORS: [&str; 2] = ["model", "rule"];

/// Default page size of the queue.
pub const DEFAULT_PER_PAGE: i64 = 50;

/// How the alert queue can be sorted (`sort`): highest score first (the
/// default) or newest first.
pub const ALERT_SORTS: [&str; 2] = ["score", "time"];

/// Largest page size accepted.
pub const MAX_PER_PAGE: i64 = 500;

/// How deep into the queue paging reaches (`page × per_page`): an OFFSET
/// reads every row it skips, so deeper pages cost the database in
/// proportion; narrower filters reach the rest. Totals are counted up to
/// this many too.
pub const MAX_QUEUE_DEPTH: i64 = 10_000;

/// Queue filters as they arrive in a query string: every field optional,
/// empty strings meaning "not set" (what an HTML form sends).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub struct RawFilter {
    /// Exact symbol.
    pub symbol: Option<String>,
    /// `model` or `rule`.
    pub kind: Option<String>,
    /// Lowest score shown.
    pub min_score: Option<String>,
    /// First day (`YYYY-MM-DD`) or instant (RFC 3339) of the alerts' event time.
    pub from: Option<String>,
    /// Last day (inclusive) or instant of the alerts' event time.
    pub to: Option<String>,
    /// Exact model (or rule set) version.
    pub model_version: Option<String>,
    /// `open`, `confirmed`, `dismissed`, `escalated` (or empty: all).
    pub status: Option<String>,
    /// Page number, from 1.
    pub page: Option<String>,
    /// Alerts per page (1 to 500); `page × per_page` at most 10 000.
    pub per_page: Option<String>,
    /// Order of the queue: one of the queue's sorts (the first when unset).
    pub sort: Option<String>,
}

/// Validated queue filters.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertFilter {
    /// Exact symbol.
    pub symbol: Option<String>,
    /// `model` or `rule`.
    pub kind: Option<String>,
    /// Lowest score shown.
    pub min_score: Option<f64>,
    /// Alerts with `ts >= from`.
    pub from: Option<DateTime<Utc>>,
    /// Alerts with `ts < to_exclusive`.
    pub to_exclusive: Option<DateTime<Utc>>,
    /// Exact model version.
    pub model_version: Option<String>,
    /// Status.
    pub status: Option<String>,
    /// Page number, from 1.
    pub page: i64,
    /// Alerts per page.
    pub per_page: i64,
    /// Order: one of the sorts the queue was parsed for.
    pub sort: &'static str,
}

fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Checks a free-text identifier (symbol, version): printable, bounded.
pub fn check_text(what: &str, value: &str, max: usize) -> Result<String, ReviewError> {
    if value.chars().count() > max {
        return Err(ReviewError::BadRequest(format!(
            "{what} is longer than {max} characters"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ReviewError::BadRequest(format!(
            "{what} contains control characters"
        )));
    }
    Ok(value.to_owned())
}

pub(crate) fn one_of(what: &str, value: &str, allowed: &[&str]) -> Result<String, ReviewError> {
    if allowed.contains(&value) {
        Ok(value.to_owned())
    } else {
        Err(ReviewError::BadRequest(format!(
            "{what} must be one of {}, not {value:?}",
            allowed.join(", ")
        )))
    }
}

/// Parses `YYYY-MM-DD` (a whole day) or an RFC 3339 instant; for a day,
/// `end` picks the start of the next day (an inclusive last day).
fn parse_time(what: &str, value: &str, end: bool) -> Result<DateTime<Utc>, ReviewError> {
    if let Ok(day) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        let day = if end {
            day.succ_opt().unwrap_or(day)
        } else {
            day
        };
        return Ok(day.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    match DateTime::parse_from_rfc3339(value) {
        Ok(t) => {
            let t = t.with_timezone(&Utc);
            Ok(if end {
                t + chrono::Duration::microseconds(1)
            } else {
                t
            })
        }
        Err(_) => Err(ReviewError::BadRequest(format!(
            "{what} must be a date (2024-03-01) or an RFC 3339 time \
             (2024-03-01T14:30:00Z), not {value:?}"
        ))),
    }
}

impl AlertFilter {
    /// Validates raw filters of the alert queue ([`ALERT_SORTS`]); the
    /// message names the offending parameter.
    pub fn parse(raw: &RawFilter) -> Result<Self, ReviewError> {
        Self::parse_sorted(raw, &ALERT_SORTS)
    }

    /// Validates raw filters of a queue sorted one of `sorts` ways (the
    /// first is the default).
    pub fn parse_sorted(raw: &RawFilter, sorts: &[&'static str]) -> Result<Self, ReviewError> {
        let sort = match set(&raw.sort) {
            None => sorts.first().copied().unwrap_or_default(),
            Some(s) => sorts.iter().copied().find(|k| *k == s).ok_or_else(|| {
                ReviewError::BadRequest(format!(
                    "sort must be one of {}, not {s:?}",
                    sorts.join(", ")
                ))
            })?,
        };
        let min_score = match set(&raw.min_score) {
            None => None,
            Some(s) => match s.parse::<f64>() {
                Ok(v) if v.is_finite() => Some(v),
                _ => {
                    return Err(ReviewError::BadRequest(format!(
                        "min_score must be a finite number, not {s:?}"
                    )))
                }
            },
        };
        let int = |what: &str, v: &Option<String>, default: i64, max: i64| match set(v) {
            None => Ok(default),
            Some(s) => match s.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ReviewError::BadRequest(format!(
                    "{what} must be a whole number from 1 to {max}, not {s:?}"
                ))),
            },
        };
        let from = set(&raw.from)
            .map(|s| parse_time("from", s, false))
            .transpose()?;
        let to_exclusive = set(&raw.to)
            .map(|s| parse_time("to", s, true))
            .transpose()?;
        let page = int("page", &raw.page, 1, MAX_QUEUE_DEPTH)?;
        let per_page = int("per_page", &raw.per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
        if page.saturating_mul(per_page) > MAX_QUEUE_DEPTH {
            return Err(ReviewError::BadRequest(format!(
                "page × per_page must be at most {MAX_QUEUE_DEPTH} (page {page} of {per_page}): \
                 narrow the filters (symbol, from/to, min_score, status) instead"
            )));
        }
        Ok(Self {
            symbol: set(&raw.symbol)
                .map(|s| check_text("symbol", s, 64))
                .transpose()?,
            kind: set(&raw.kind)
                .map(|s| one_of("kind", s, &DETECTORS))
                .transpose()?,
            min_score,
            from,
            to_exclusive,
            model_version: set(&raw.model_version)
                .map(|s| check_text("model_version", s, 200))
                .transpose()?,
            status: set(&raw.status)
                .map(|s| one_of("status", s, &QUEUE_STATUSES))
                .transpose()?,
            page,
            per_page,
            sort,
        })
    }
}

/// One alert of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct AlertSummary {
    /// The alert's id.
    pub id: i64,
    /// Model or rule-set version that raised it.
    pub model_version: String,
    /// `model` or `rule`.
    pub kind: String,
    /// Symbol.
    pub symbol: String,
    /// Event time of the tick.
    pub ts: DateTime<Utc>,
    /// The tick's sequence number within its (symbol, ts).
    pub seq: i32,
    /// When the detector raised it.
    pub detected_at: DateTime<Utc>,
    /// Score.
    pub score: f64,
    /// Threshold the score crossed.
    pub threshold: f64,
    /// A rule's reason.
    pub reason: Option<String>,
    /// `open` or the latest verdict.
    pub status: String,
}

/// A page of the queue.
#[derive(Debug, Clone, Serialize)]
pub struct AlertPage {
    /// Alerts matching the filters, counted up to [`MAX_QUEUE_DEPTH`].
    pub total: i64,
    /// False when more alerts match than were counted.
    pub total_exact: bool,
    /// This page's number, from 1.
    pub page: i64,
    /// Page size.
    pub per_page: i64,
    /// The alerts, highest score first.
    pub alerts: Vec<AlertSummary>,
}

/// One verdict on an alert.
#[derive(Debug, Clone, Serialize)]
pub struct Disposition {
    /// The verdict's id.
    pub id: i64,
    /// The alert.
    pub alert_id: i64,
    /// What was decided.
    #[serde(flatten)]
    pub verdict: Recorded,
}

/// A verdict as recorded, on an alert or a case.
#[derive(Debug, Clone, Serialize)]
pub struct Recorded {
    /// `confirmed`, `dismissed` or `escalated`.
    pub status: String,
    /// The manipulation kind of a confirmation.
    pub kind: Option<String>,
    /// The analyst's note (as typed: escape before showing it).
    pub note: String,
    /// Who gave it.
    pub analyst: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// One alert with everything the alert page shows.
#[derive(Debug, Clone, Serialize)]
pub struct AlertDetail {
    /// The queue's fields.
    #[serde(flatten)]
    pub summary: AlertSummary,
    /// The largest SHAP contributions (`[{feature, value, contribution}]`).
    pub top_features: Option<serde_json::Value>,
    /// Every feature of the tick (`{name: value}`).
    pub features: Option<serde_json::Value>,
    /// First tick of the evidence window.
    pub evidence_start: Option<DateTime<Utc>>,
    /// Last tick of the evidence window.
    pub evidence_end: Option<DateTime<Utc>>,
    /// Where the tick came from (`kafka://...`, a lake).
    pub source: String,
    /// Its Kafka partition, when streamed.
    pub source_partition: Option<i32>,
    /// Its Kafka offset, when streamed.
    pub source_offset: Option<i64>,
    /// Later ticks of the symbol the detector waited for before scoring
    /// (delayed confirmation; 0 without).
    pub delay_ticks: i32,
    /// Every verdict, oldest first.
    pub dispositions: Vec<Disposition>,
}

/// A verdict to record.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NewDisposition {
    /// `confirmed`, `dismissed` or `escalated`.
    pub status: String,
    /// Manipulation kind for a confirmation (`spoofing`, ...); default `confirmed`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Free text.
    #[serde(default)]
    pub note: Option<String>,
    /// Who decides: the signed-in user, always. Optional; when given it
    /// must be that user's name (a client cannot record a verdict under
    /// someone else's).
    #[serde(default)]
    pub analyst: Option<String>,
}

/// Kind recorded for a confirmation that names none.
pub const DEFAULT_CONFIRMED_KIND: &str = "confirmed";

impl NewDisposition {
    /// Validates it as given by `analyst` (the signed-in user): a known
    /// status, a kind of `[a-z0-9_]` (≤ 40), a note of at most 4000
    /// characters, and no `analyst` field naming someone else. Returns
    /// `(status, kind, note, analyst)`.
    pub fn validate(
        &self,
        analyst: &str,
    ) -> Result<(String, Option<String>, String, String), ReviewError> {
        let status = one_of("status", self.status.trim(), &STATUSES)?;
        if let Some(claimed) = self.analyst.as_deref().map(str::trim) {
            if !claimed.is_empty() && claimed != analyst {
                return Err(ReviewError::BadRequest(format!(
                    "analyst is the signed-in user ({analyst}), not {:?}: leave it out",
                    claimed.chars().take(64).collect::<String>()
                )));
            }
        }
        if analyst.is_empty() {
            return Err(ReviewError::BadRequest("analyst is required".into()));
        }
        let analyst = check_text("analyst", analyst, 64)?;
        let note = self.note.as_deref().unwrap_or("").trim();
        if note.chars().count() > 4000 {
            return Err(ReviewError::BadRequest(
                "note is longer than 4000 characters".into(),
            ));
        }
        // Line breaks are fine in a note; other control characters are not.
        if note
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
        {
            return Err(ReviewError::BadRequest(
                "note contains control characters".into(),
            ));
        }
        let kind = match self
            .kind
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            None if status == "confirmed" => Some(DEFAULT_CONFIRMED_KIND.to_owned()),
            None => None,
            Some(k) => {
                let ok = k.len() <= 40
                    && k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !ok || k == crate::labels::REVIEWED_NEGATIVE {
                    return Err(ReviewError::BadRequest(format!(
                        "kind must be up to 40 of a-z, 0-9 and _ (and not {}), not {k:?}",
                        crate::labels::REVIEWED_NEGATIVE
                    )));
                }
                if status != "confirmed" {
                    return Err(ReviewError::BadRequest(
                        "kind is only given with status confirmed".into(),
                    ));
                }
                Some(k.to_owned())
            }
        };
        Ok((status, kind, note.to_owned(), analyst))
    }
}

pub(super) const SUMMARY_COLUMNS: &str =
    "a.id, a.model_version, a.detector, a.symbol, a.ts, a.seq, \
     a.detected_at, a.score, a.threshold, a.reason, coalesce(s.status, 'open') AS status";

/// `WHERE` clause over `alerts a LEFT JOIN alert_status s`, parameters $1..$7.
const FILTER: &str = "WHERE ($1::text IS NULL OR a.symbol = $1) \
     AND ($2::text IS NULL OR a.detector = $2) \
     AND ($3::float8 IS NULL OR a.score >= $3) \
     AND ($4::timestamptz IS NULL OR a.ts >= $4) \
     AND ($5::timestamptz IS NULL OR a.ts < $5) \
     AND ($6::text IS NULL OR a.model_version = $6) \
     AND ($7::text IS NULL OR coalesce(s.status, 'open') = $7)";

pub(super) fn summary(row: &Row) -> AlertSummary {
    AlertSummary {
        id: row.get(0),
        model_version: row.get(1),
        kind: row.get(2),
        symbol: row.get(3),
        ts: row.get(4),
        seq: row.get(5),
        detected_at: row.get(6),
        score: row.get(7),
        threshold: row.get(8),
        reason: row.get(9),
        status: row.get(10),
    }
}

/// The queue: alerts matching `filter`, highest score first, one page.
pub async fn list_alerts(client: &Client, filter: &AlertFilter) -> Result<AlertPage, ReviewError> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &filter.symbol,
        &filter.kind,
        &filter.min_score,
        &filter.from,
        &filter.to_exclusive,
        &filter.model_version,
        &filter.status,
    ];
    // Counting stops past the deepest reachable page: a count of a huge
    // queue would scan all of it on every page view.
    let mut counted: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
    let count_limit = MAX_QUEUE_DEPTH + 1;
    counted.push(&count_limit);
    let total: i64 = client
        .query_one(
            &format!(
                "SELECT count(*) FROM (SELECT 1 FROM alerts a \
                 LEFT JOIN alert_status s ON s.alert_id = a.id {FILTER} LIMIT $8) t"
            ),
            &counted,
        )
        .await
        .map_err(ReviewError::query("count the alert queue"))?
        .get(0);
    let total_exact = total <= MAX_QUEUE_DEPTH;
    let offset = (filter.page - 1) * filter.per_page;
    let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
    all.push(&filter.per_page);
    all.push(&offset);
    let rows = client
        .query(
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM alerts a \
                 LEFT JOIN alert_status s ON s.alert_id = a.id {FILTER} \
                 ORDER BY {} LIMIT $8 OFFSET $9",
                match filter.sort {
                    "time" => "a.ts DESC, a.id",
                    _ => "a.score DESC, a.id",
                }
            ),
            &all,
        )
        .await
        .map_err(ReviewError::query("read the alert queue"))?;
    Ok(AlertPage {
        total: total.min(MAX_QUEUE_DEPTH),
        total_exact,
        page: filter.page,
        per_page: filter.per_page,
        alerts: rows.iter().map(summary).collect(),
    })
}

/// Most values a filter menu lists.
pub const MAX_CHOICES: i64 = 1000;

/// The symbols with alerts, for the filter menu: a loose index scan over
/// `alerts (symbol, ts)`, one index probe per distinct symbol, where
/// `SELECT DISTINCT` read the whole table on every queue view.
pub const SYMBOL_CHOICES_SQL: &str = "WITH RECURSIVE v(value) AS ( \
       (SELECT symbol FROM alerts ORDER BY symbol LIMIT 1) \
       UNION ALL \
       SELECT (SELECT symbol FROM alerts WHERE symbol > v.value ORDER BY symbol LIMIT 1) \
       FROM v WHERE v.value IS NOT NULL) \
     SELECT value FROM v WHERE value IS NOT NULL LIMIT $1";

/// The model versions with alerts, likewise over the unique index on
/// `alerts (model_version, symbol, ts, seq)`.
pub const MODEL_VERSION_CHOICES_SQL: &str = "WITH RECURSIVE v(value) AS ( \
       (SELECT model_version FROM alerts ORDER BY model_version LIMIT 1) \
       UNION ALL \
       SELECT (SELECT model_version FROM alerts WHERE model_version > v.value \
               ORDER BY model_version LIMIT 1) \
       FROM v WHERE v.value IS NOT NULL) \
     SELECT value FROM v WHERE value IS NOT NULL LIMIT $1";

/// The filter menus' choices: symbols and model versions with alerts.
pub async fn filter_choices(client: &Client) -> Result<(Vec<String>, Vec<String>), ReviewError> {
    let values = |rows: Vec<Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<String>>();
    let symbols = client
        .query(SYMBOL_CHOICES_SQL, &[&MAX_CHOICES])
        .await
        .map_err(ReviewError::query("list the symbols with alerts"))?;
    let versions = client
        .query(MODEL_VERSION_CHOICES_SQL, &[&MAX_CHOICES])
        .await
        .map_err(ReviewError::query("list the model versions with alerts"))?;
    Ok((values(symbols), values(versions)))
}

/// One alert with its verdicts.
pub async fn get_alert(client: &Client, id: i64) -> Result<AlertDetail, ReviewError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {SUMMARY_COLUMNS}, a.top_features, a.features, a.evidence_start, \
                 a.evidence_end, a.source, a.source_partition, a.source_offset, a.delay_ticks \
                 FROM alerts a LEFT JOIN alert_status s ON s.alert_id = a.id WHERE a.id = $1"
            ),
            &[&id],
        )
        .await
        .map_err(ReviewError::query("read an alert"))?
        .ok_or(ReviewError::NotFound { what: "alert", id })?;
    Ok(AlertDetail {
        summary: summary(&row),
        top_features: row.get(11),
        features: row.get(12),
        evidence_start: row.get(13),
        evidence_end: row.get(14),
        source: row.get(15),
        source_partition: row.get(16),
        source_offset: row.get(17),
        delay_ticks: row.get(18),
        dispositions: dispositions(client, id).await?,
    })
}

/// The verdict columns of a `RETURNING` or a select, from column `at`.
pub(super) fn recorded(row: &Row, at: usize) -> Recorded {
    Recorded {
        status: row.get(at),
        kind: row.get(at + 1),
        note: row.get(at + 2),
        analyst: row.get(at + 3),
        at: row.get(at + 4),
    }
}

fn disposition(row: &Row) -> Disposition {
    Disposition {
        id: row.get(0),
        alert_id: row.get(1),
        verdict: recorded(row, 2),
    }
}

/// An alert's verdicts, oldest first.
pub async fn dispositions(client: &Client, alert_id: i64) -> Result<Vec<Disposition>, ReviewError> {
    let rows = client
        .query(
            "SELECT id, alert_id, status, kind, note, analyst, at FROM dispositions \
             WHERE alert_id = $1 ORDER BY id",
            &[&alert_id],
        )
        .await
        .map_err(ReviewError::query("read an alert's dispositions"))?;
    Ok(rows.iter().map(disposition).collect())
}

/// What a verdict is given on: an alert, or an (opened) case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictOn {
    /// An alert, by `alerts.id`.
    Alert(i64),
    /// A case, by `cases.id`.
    Case(i64),
}

impl VerdictOn {
    fn not_found(self) -> ReviewError {
        match self {
            Self::Alert(id) => ReviewError::NotFound { what: "alert", id },
            Self::Case(id) => ReviewError::NotFound { what: "case", id },
        }
    }
}

/// Records a verdict (validated first) given by `by` on `on`, and returns
/// its id, what it is on and the verdict as stored.
pub async fn record_verdict(
    client: &Client,
    on: VerdictOn,
    new: &NewDisposition,
    by: &Identity,
) -> Result<(i64, Recorded), ReviewError> {
    let (status, kind, note, analyst) = new.validate(&by.name)?;
    // A case that has not opened is no analyst's work yet (and may still
    // be deleted by the detector when it closes unopened).
    let (exists, insert, id) = match on {
        VerdictOn::Alert(id) => (
            "SELECT 1 FROM alerts WHERE id = $1",
            "INSERT INTO dispositions (alert_id, status, kind, note, analyst, user_id) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, status, kind, note, analyst, at",
            id,
        ),
        VerdictOn::Case(id) => (
            "SELECT 1 FROM cases WHERE id = $1 AND opened_ts IS NOT NULL",
            "INSERT INTO case_dispositions (case_ref, status, kind, note, analyst, user_id) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, status, kind, note, analyst, at",
            id,
        ),
    };
    let found = client
        .query_opt(exists, &[&id])
        .await
        .map_err(ReviewError::query("find what the verdict is on"))?;
    if found.is_none() {
        return Err(on.not_found());
    }
    let row = client
        .query_one(insert, &[&id, &status, &kind, &note, &analyst, &by.user_id])
        .await
        .map_err(ReviewError::query("record a disposition"))?;
    Ok((row.get(0), recorded(&row, 1)))
}

/// Records a verdict (validated first) given by `by` on an alert, and
/// returns it.
pub async fn record_disposition(
    client: &Client,
    alert_id: i64,
    new: &NewDisposition,
    by: &Identity,
) -> Result<Disposition, ReviewError> {
    let (id, verdict) = record_verdict(client, VerdictOn::Alert(alert_id), new, by).await?;
    Ok(Disposition {
        id,
        alert_id,
        verdict,
    })
}

/// A reviewed alert's or case's latest verdict, as `labels export` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The alert or the case.
    pub on: VerdictOn,
    /// Its symbol.
    pub symbol: String,
    /// The alert's tick's event time, or the case's first alert's, µs UTC.
    pub start_us: i64,
    /// The alert's tick's event time, or the case's last alert's, µs UTC.
    pub end_us: i64,
    /// `confirmed` or `dismissed`.
    pub status: String,
    /// The confirmation's kind.
    pub kind: Option<String>,
}

/// Every alert and case whose latest verdict is `confirmed` or
/// `dismissed`: alerts first, each in id order.
pub async fn final_verdicts(client: &Client) -> Result<Vec<Verdict>, ReviewError> {
    let alerts = client
        .query(
            "SELECT a.id, a.symbol, a.ts, a.ts, s.status, s.kind FROM alert_status s \
             JOIN alerts a ON a.id = s.alert_id \
             WHERE s.status IN ('confirmed', 'dismissed') ORDER BY a.id",
            &[],
        )
        .await
        .map_err(ReviewError::query("read the alerts' verdicts"))?;
    let cases = client
        .query(
            "SELECT c.id, c.symbol, c.start_ts, c.end_ts, s.status, s.kind FROM case_status s \
             JOIN cases c ON c.id = s.case_ref \
             WHERE s.status IN ('confirmed', 'dismissed') ORDER BY c.id",
            &[],
        )
        .await
        .map_err(ReviewError::query("read the cases' verdicts"))?;
    let verdict = |r: &Row, on: fn(i64) -> VerdictOn| {
        let (start, end): (DateTime<Utc>, DateTime<Utc>) = (r.get(2), r.get(3));
        Verdict {
            on: on(r.get(0)),
            symbol: r.get(1),
            start_us: start.timestamp_micros(),
            end_us: end.timestamp_micros(),
            status: r.get(4),
            kind: r.get(5),
        }
    };
    Ok(alerts
        .iter()
        .map(|r| verdict(r, VerdictOn::Alert))
        .chain(cases.iter().map(|r| verdict(r, VerdictOn::Case)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawFilter {
        let q: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let uri: axum::http::Uri = format!("/?{q}").parse().unwrap();
        axum::extract::Query::<RawFilter>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    #[test]
    fn empty_form_fields_are_unset_and_defaults_apply() {
        let f = AlertFilter::parse(&raw(&[("symbol", ""), ("status", ""), ("page", "")])).unwrap();
        assert_eq!(f.symbol, None);
        assert_eq!(f.status, None);
        assert_eq!((f.page, f.per_page), (1, DEFAULT_PER_PAGE));
    }

    #[test]
    fn a_last_day_is_inclusive() {
        let f = AlertFilter::parse(&raw(&[("from", "2024-03-01"), ("to", "2024-03-01")])).unwrap();
        assert_eq!(f.from.unwrap().to_rfc3339(), "2024-03-01T00:00:00+00:00");
        assert_eq!(
            f.to_exclusive.unwrap().to_rfc3339(),
            "2024-03-02T00:00:00+00:00"
        );
    }

    #[test]
    fn bad_filters_name_the_parameter() {
        for (k, v) in [
            ("min_score", "NaN"),
            ("min_score", "high"),
            ("kind", "robot"),
            ("status", "done"),
            ("page", "0"),
            ("per_page", "100000"),
            ("from", "yesterday"),
        ] {
            let e = AlertFilter::parse(&raw(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }

    #[test]
    fn dispositions_are_validated() {
        let d = |status: &str, kind: Option<&str>| NewDisposition {
            status: status.into(),
            kind: kind.map(Into::into),
            note: Some("<script>alert(1)</script>".into()),
            analyst: None,
        };
        let (s, k, n, a) = d("confirmed", None).validate("ana").unwrap();
        assert_eq!(
            (s.as_str(), k.as_deref(), a.as_str()),
            ("confirmed", Some("confirmed"), "ana")
        );
        // Markup is kept as typed; pages escape it.
        assert_eq!(n, "<script>alert(1)</script>");
        assert_eq!(d("dismissed", None).validate("ana").unwrap().1, None);
        assert!(d("approved", None).validate("ana").is_err());
        assert!(d("confirmed", None).validate("").is_err());
        assert!(d("confirmed", Some("Spoof!")).validate("ana").is_err());
        assert!(d("confirmed", Some("reviewed_negative"))
            .validate("ana")
            .is_err());
        assert!(d("dismissed", Some("spoofing")).validate("ana").is_err());
    }

    #[test]
    fn the_analyst_is_the_signed_in_user() {
        let mut d = NewDisposition {
            status: "dismissed".into(),
            kind: None,
            note: None,
            analyst: Some("ana".into()),
        };
        assert_eq!(d.validate("ana").unwrap().3, "ana");
        let e = d.validate("bob").unwrap_err().to_string();
        assert!(e.contains("signed-in user (bob)"), "{e}");
        d.analyst = None;
        assert_eq!(d.validate("bob").unwrap().3, "bob");
    }

    #[test]
    fn paging_stops_at_the_queue_depth() {
        assert!(AlertFilter::parse(&raw(&[("page", "20"), ("per_page", "500")])).is_ok());
        let e = AlertFilter::parse(&raw(&[("page", "21"), ("per_page", "500")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("page × per_page"), "{e}");
        assert!(AlertFilter::parse(&raw(&[("page", "1000000")])).is_err());
    }
}
