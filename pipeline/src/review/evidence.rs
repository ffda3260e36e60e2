//! The ticks around an alert (its evidence window), from the lake or from
//! PostgreSQL's `ticks` table, column by column.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use datafusion::prelude::{col, lit};
use datafusion::scalar::ScalarValue;
use serde::Serialize;
use tokio_postgres::Client;

use super::ReviewError;
use crate::lake::{session_context, LakeRoot};

/// Most ticks a chart draws; a longer window is cut at this many.
pub const MAX_TICKS: usize = 20_000;

/// Evidence shown when an alert records no window: this long before it.
const DEFAULT_BEFORE_US: i64 = 15 * 60 * 1_000_000;

/// At least this much after the alert is shown too: what happened next
/// (a reversal, say) is evidence as well.
const MIN_AFTER_US: i64 = 2 * 60 * 1_000_000;

/// Where the tick history is read from.
#[derive(Debug, Clone)]
pub enum TickStore {
    /// The Parquet lake's `ticks` table.
    Lake(LakeRoot),
    /// PostgreSQL's `ticks` table (the live tick store).
    Postgres,
}

/// Ticks of one symbol over a time window, as parallel columns.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Evidence {
    /// Symbol.
    pub symbol: String,
    /// First instant of the window, µs UTC.
    pub start_us: i64,
    /// Last instant of the window, µs UTC.
    pub end_us: i64,
    /// Event times, µs UTC, ascending.
    pub ts_us: Vec<i64>,
    /// Prices.
    pub price: Vec<f64>,
    /// Volumes.
    pub volume: Vec<f64>,
    /// Whether the window held more than [`MAX_TICKS`] ticks (the rest is cut).
    pub truncated: bool,
}

/// The window to show around an alert at `ts_us` whose evidence starts at
/// `evidence_start_us`: the evidence, plus half its span (at least two
/// minutes) after the alert.
pub fn window(ts_us: i64, evidence_start_us: Option<i64>) -> (i64, i64) {
    let start = evidence_start_us
        .filter(|s| *s <= ts_us)
        .unwrap_or(ts_us - DEFAULT_BEFORE_US);
    let after = ((ts_us - start) / 2).max(MIN_AFTER_US);
    (start, ts_us.saturating_add(after))
}

/// The window to show around a case whose alerts span `start_us ..=
/// end_us`: the span, with half its length (at least five minutes) before
/// it, to show what led up to it, and half (at least two minutes) after.
pub fn case_window(start_us: i64, end_us: i64) -> (i64, i64) {
    let half = (end_us - start_us).max(0) / 2;
    (
        start_us.saturating_sub(half.max(CASE_MIN_BEFORE_US)),
        end_us.saturating_add(half.max(MIN_AFTER_US)),
    )
}

/// At least this much before a case's first alert is shown.
const CASE_MIN_BEFORE_US: i64 = 5 * 60 * 1_000_000;

impl TickStore {
    /// The ticks of `symbol` with `start_us <= ts <= end_us`, in event order.
    pub async fn evidence(
        &self,
        client: &Client,
        symbol: &str,
        start_us: i64,
        end_us: i64,
    ) -> Result<Evidence, ReviewError> {
        let mut ev = Evidence {
            symbol: symbol.to_owned(),
            start_us,
            end_us,
            ..Evidence::default()
        };
        match self {
            Self::Lake(root) => lake_ticks(root, &mut ev).await?,
            Self::Postgres => postgres_ticks(client, &mut ev).await?,
        }
        Ok(ev)
    }
}

fn utc(us: i64) -> ScalarValue {
    ScalarValue::TimestampMicrosecond(Some(us), Some("UTC".into()))
}

async fn lake_ticks(root: &LakeRoot, ev: &mut Evidence) -> Result<(), ReviewError> {
    // A new session per request: the lake's files change while the server
    // runs, and listing a table is cheap next to reading it.
    let ctx = session_context(root).await?;
    let day = |us: i64| crate::lake::date_string(us.div_euclid(86_400_000_000) as i32);
    let df = ctx
        .table("ticks")
        .await?
        .filter(
            col("symbol")
                .eq(lit(ev.symbol.as_str()))
                // The date partitions first, so other days' files are skipped.
                .and(col("date").between(lit(day(ev.start_us)), lit(day(ev.end_us))))
                .and(col("ts").between(lit(utc(ev.start_us)), lit(utc(ev.end_us)))),
        )?
        .sort(vec![
            col("ts").sort(true, false),
            col("seq").sort(true, false),
        ])?
        .select_columns(&["ts", "price", "volume"])?
        .limit(0, Some(MAX_TICKS + 1))?;
    for batch in df.collect().await? {
        push_batch(ev, &batch);
    }
    truncate(ev);
    Ok(())
}

fn push_batch(ev: &mut Evidence, batch: &RecordBatch) {
    let (Some(ts), Some(price), Some(volume)) = (
        batch
            .column(0)
            .as_primitive_opt::<TimestampMicrosecondType>(),
        batch.column(1).as_primitive_opt::<Float64Type>(),
        batch.column(2).as_primitive_opt::<Float64Type>(),
    ) else {
        return;
    };
    ev.ts_us.extend_from_slice(ts.values());
    ev.price.extend_from_slice(price.values());
    ev.volume.extend_from_slice(volume.values());
}

fn truncate(ev: &mut Evidence) {
    if ev.ts_us.len() > MAX_TICKS {
        ev.truncated = true;
        ev.ts_us.truncate(MAX_TICKS);
        ev.price.truncate(MAX_TICKS);
        ev.volume.truncate(MAX_TICKS);
    }
}

async fn postgres_ticks(client: &Client, ev: &mut Evidence) -> Result<(), ReviewError> {
    let start = chrono::DateTime::from_timestamp_micros(ev.start_us);
    let end = chrono::DateTime::from_timestamp_micros(ev.end_us);
    let limit = (MAX_TICKS + 1) as i64;
    let rows = client
        .query(
            "SELECT ts, price, volume FROM ticks WHERE symbol = $1 AND ts BETWEEN $2 AND $3 \
             ORDER BY ts, seq LIMIT $4",
            &[&ev.symbol, &start, &end, &limit],
        )
        .await
        .map_err(ReviewError::query("read the evidence ticks"))?;
    for r in &rows {
        let ts: chrono::DateTime<chrono::Utc> = r.get(0);
        ev.ts_us.push(ts.timestamp_micros());
        ev.price.push(r.get(1));
        ev.volume.push(r.get(2));
    }
    truncate(ev);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_covers_the_evidence_and_what_followed() {
        let m = 60_000_000;
        assert_eq!(window(100 * m, Some(70 * m)), (70 * m, 115 * m));
        // A short evidence still shows two minutes after.
        assert_eq!(window(100 * m, Some(99 * m)), (99 * m, 102 * m));
        // No evidence recorded (or one after the alert): fifteen minutes before.
        assert_eq!(
            window(100 * m, None),
            (85 * m, 100 * m + 7 * m + 30_000_000)
        );
        assert_eq!(window(100 * m, Some(101 * m)).0, 85 * m);
    }

    #[test]
    fn a_case_window_shows_what_led_up_and_what_followed() {
        let m = 60_000_000;
        assert_eq!(case_window(100 * m, 120 * m), (90 * m, 130 * m));
        // One alert: five minutes before, two after.
        assert_eq!(case_window(100 * m, 100 * m), (95 * m, 102 * m));
    }
}
