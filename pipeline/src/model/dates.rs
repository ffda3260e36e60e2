//! The dates of a feature snapshot, as training splits and scoring walk
//! them.

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use chrono::NaiveDate;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use super::error::TrainError;

/// One date of the snapshot: its first and last tick (µs) and row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateSpan {
    pub date: NaiveDate,
    pub first_us: i64,
    pub last_us: i64,
    pub rows: u64,
}

/// The snapshot's dates with their first and last tick, in order.
pub async fn date_spans(ctx: &SessionContext) -> Result<Vec<DateSpan>, TrainError> {
    let batches = ctx
        .sql(
            "SELECT date, min(CAST(ts AS BIGINT)), max(CAST(ts AS BIGINT)), count(*) \
             FROM features GROUP BY date ORDER BY date",
        )
        .await?
        .collect()
        .await?;
    let mut out = Vec::new();
    for b in &batches {
        let date = cast(b.column(0), &DataType::Utf8)?;
        let date = date.as_string::<i32>();
        let first = b.column(1).as_primitive::<Int64Type>();
        let last = b.column(2).as_primitive::<Int64Type>();
        let rows = b.column(3).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let d = NaiveDate::parse_from_str(date.value(i), "%Y-%m-%d").map_err(|e| {
                DataFusionError::Execution(format!("partition date={:?}: {e}", date.value(i)))
            })?;
            out.push(DateSpan {
                date: d,
                first_us: first.value(i),
                last_us: last.value(i),
                rows: rows.value(i) as u64,
            });
        }
    }
    Ok(out)
}
