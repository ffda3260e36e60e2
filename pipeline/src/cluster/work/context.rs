//! A backfill's context tables made on the executors.
//!
//! The context tables (minute statistics, intraday profiles, market
//! buckets, betas) are made per date. Each table needs only what earlier
//! tables made for the same or earlier dates, so a backfill makes them one
//! table at a time, every date of a table before the next table starts
//! ([`make_context`]): the executors never wait on each other within a
//! table. A task's dates are consecutive, cut again into one block per
//! partition, each made in order (so the trailing dates one date reads are
//! mostly in the partition's cache already) by the single-node backfill's
//! code: the files are the same bytes.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::NaiveDate;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use super::{column, date, run_work, Work};
use crate::features::market::{
    betas_done, market_done, write_betas_cached, write_market, BetaCache,
};
use crate::features::profiles::{
    minute_stats_done, profiles_done, write_minute_stats, write_profiles_cached, MinuteStatsCache,
    ProfileError,
};
use crate::lake::LakeRoot;

/// One of the context tables, in the order a backfill makes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContextTable {
    /// `minute_stats`: per symbol and minute of a date, from its ticks.
    MinuteStats,
    /// `profiles`: from the trailing dates' minute statistics.
    Profiles,
    /// `market`: the date's buckets over every symbol, with its profiles.
    Market,
    /// `betas`: from the trailing dates' market buckets.
    Betas,
}

impl ContextTable {
    /// The lake table's name.
    pub fn name(self) -> &'static str {
        match self {
            ContextTable::MinuteStats => "minute_stats",
            ContextTable::Profiles => "profiles",
            ContextTable::Market => "market",
            ContextTable::Betas => "betas",
        }
    }

    /// Whether `date`'s rows of this table are stored (its marker).
    pub async fn done(self, root: &LakeRoot, date: NaiveDate) -> bool {
        match self {
            ContextTable::MinuteStats => minute_stats_done(root, date).await,
            ContextTable::Profiles => profiles_done(root, date).await,
            ContextTable::Market => market_done(root, date).await,
            ContextTable::Betas => betas_done(root, date).await,
        }
    }
}

/// One context table to make for dates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ContextWork {
    /// The lake's root as a URL every process resolves alike
    /// ([`LakeRoot::url`]).
    pub(super) root: String,
    pub(super) table: ContextTable,
    /// `queries/market/buckets.sql` (the market buckets and the betas).
    pub(super) market_sql: String,
    /// The dates to make, sorted.
    pub(super) dates: Vec<String>,
    /// Partitions of a task: blocks of its dates, made side by side.
    pub(super) partitions: usize,
}

/// The schema of what context work answers: a row per date made.
pub(super) fn answer_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("table", DataType::Utf8, false),
        Field::new("date", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

impl ContextWork {
    /// Makes the table for `dates` in order, one after the other (a
    /// partition's share), and answers a row per date.
    pub(super) async fn make(&self, dates: &[String], root: &LakeRoot) -> Result<RecordBatch> {
        let mut stats = MinuteStatsCache::default();
        let mut betas = BetaCache::default();
        let mut rows = Vec::with_capacity(dates.len());
        for text in dates {
            let date = date(text)?;
            let clock = std::time::Instant::now();
            let made = match self.table {
                ContextTable::MinuteStats => write_minute_stats(root, date).await.map(|()| 0),
                ContextTable::Profiles => write_profiles_cached(root, date, &mut stats)
                    .await
                    .map(|b| b.num_rows() as u64),
                ContextTable::Market => write_market(root, date, &self.market_sql, None).await,
                ContextTable::Betas => {
                    write_betas_cached(root, date, &self.market_sql, &mut betas).await
                }
            };
            let n = made.map_err(|e: ProfileError| DataFusionError::External(Box::new(e)))?;
            tracing::info!(table = self.table.name(), %date, rows = n,
                secs = clock.elapsed().as_secs_f64(), "Context table made.");
            rows.push(n);
        }
        let table: ArrayRef = Arc::new(StringArray::from(vec![self.table.name(); dates.len()]));
        let date: ArrayRef = Arc::new(StringArray::from_iter_values(dates));
        let count: ArrayRef = Arc::new(UInt64Array::from(rows));
        Ok(RecordBatch::try_new(
            answer_schema(),
            vec![table, date, count],
        )?)
    }
}

/// Makes `table` for `dates` on the session's cluster (each date's files
/// written by an executor into the lake at `root`) and returns the rows
/// made per date, in the order of `dates`. Partitions per task: the
/// session's `target_partitions`, as for every other stage of ours.
pub async fn make_context(
    ctx: &SessionContext,
    root: &LakeRoot,
    table: ContextTable,
    market_sql: &str,
    dates: &[NaiveDate],
) -> Result<Vec<(NaiveDate, u64)>> {
    if dates.is_empty() {
        return Ok(Vec::new());
    }
    let partitions = ctx
        .state()
        .config()
        .target_partitions()
        .clamp(1, dates.len());
    let work = Work::Context(ContextWork {
        root: root.url(),
        table,
        market_sql: market_sql.to_owned(),
        dates: dates
            .iter()
            .map(|d| d.format("%Y-%m-%d").to_string())
            .collect(),
        partitions,
    });
    let answered = run_work(ctx, &format!("context_work_{}", table.name()), work).await?;
    let mut made = Vec::with_capacity(dates.len());
    for batch in answered {
        let date = column::<StringArray>(&batch, 1)?;
        let rows = column::<UInt64Array>(&batch, 2)?;
        for i in 0..batch.num_rows() {
            made.push((super::date(date.value(i))?, rows.value(i)));
        }
    }
    made.sort_unstable();
    if !made.iter().map(|(d, _)| d).eq(dates.iter()) {
        return Err(DataFusionError::Execution(format!(
            "{}: the executors answered for {} of {} dates",
            table.name(),
            made.len(),
            dates.len()
        )));
    }
    Ok(made)
}
