//! Running the catalog over ticks held in memory: one query per feature
//! file, their rows lined up on the tick key without a join.
//!
//! Joining the files' results on `(symbol, ts, seq)`, which is what
//! [`feature_query`] writes as SQL, costs more than computing the features:
//! each join hashes string keys and copies every column gathered so far
//! (measured on 1.5M minute bars: 5 of the 9 seconds of a backfill). Here the
//! ticks are sorted by the key once and registered with that order, so each
//! file's windows need no sort of their own; each file runs on one core,
//! several files side by side; and each file's rows, in key order, are
//! checked to be exactly the ticks' rows and taken as columns. A file that
//! drops or repeats rows (a filter, a join that fans out) sends the whole
//! call back to the join, whose inner-join semantics it keeps.
//!
//! The values are those of the join: each file computes the same columns
//! over the same rows; only how the rows are lined up differs.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::DataType;
use datafusion::catalog::MemTable;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{col, SortExpr};
use datafusion::prelude::SessionContext;
use tokio::sync::Semaphore;

use super::{feature_query, features_table, Catalog};
use crate::tick::col as key;

/// The catalog's features of every row of `ticks` (the lake's `ticks`
/// columns, `date` included, any order): a batch of
/// [`features_table`]`(catalog)`'s schema, one row per tick, sorted by
/// `(symbol, ts, seq)`.
///
/// Registers `ticks` (sorted) in `ctx` in place of any table of that name and
/// sets `ctx` to plan one partition per query; the other tables the files
/// read (`symbols`, `profiles`, `market`, `betas`) must be registered already.
pub async fn compute_features(
    ctx: &SessionContext,
    catalog: &Catalog,
    ticks: &RecordBatch,
) -> Result<RecordBatch, DataFusionError> {
    match line_up_files(ctx, catalog, ticks).await? {
        Some(batch) => Ok(batch),
        None => joined(ctx, catalog).await,
    }
}

/// [`compute_features`] without the fallback: each file on its own, lined
/// up with the sorted ticks by position; `None` when a file's rows are not
/// exactly the ticks' rows (the join is then what gives the answer).
/// Registers `ticks` and sets `ctx` to one partition per query, as
/// [`compute_features`] does.
pub async fn line_up_files(
    ctx: &SessionContext,
    catalog: &Catalog,
    ticks: &RecordBatch,
) -> Result<Option<RecordBatch>, DataFusionError> {
    let ticks = crate::lake::sort_by(ticks, &[key::SYMBOL, key::TS, key::SEQ])?;
    register_sorted_ticks(ctx, &ticks)?;
    // One partition per query: a hash repartition by symbol would undo the
    // order, and the files running side by side keep the cores busy instead.
    ctx.sql("SET datafusion.execution.target_partitions = 1")
        .await?
        .collect()
        .await?;
    per_file(ctx, catalog, &ticks).await
}

/// The key order the in-memory `ticks` are declared to have.
fn key_order() -> Vec<SortExpr> {
    [key::SYMBOL, key::TS, key::SEQ]
        .into_iter()
        .map(|c| col(c).sort(true, false))
        .collect()
}

/// Registers `ticks` as one batch: a window over a whole partition
/// (`WindowAggExec`) concatenates its input first, which copies every column
/// unless the input is a single batch.
fn register_sorted_ticks(ctx: &SessionContext, ticks: &RecordBatch) -> Result<(), DataFusionError> {
    let table = MemTable::try_new(ticks.schema(), vec![vec![ticks.clone()]])?
        .with_sort_order(vec![key_order()]);
    ctx.deregister_table("ticks")?;
    ctx.register_table("ticks", Arc::new(table))?;
    Ok(())
}

/// Each file on its own, lined up with `ticks` by position; `None` when a
/// file's rows are not exactly the ticks' rows.
async fn per_file(
    ctx: &SessionContext,
    catalog: &Catalog,
    ticks: &RecordBatch,
) -> Result<Option<RecordBatch>, DataFusionError> {
    let schema = features_table(catalog).schema;
    let ctx = &super::probe_order::with_sorted_probe_side(ctx);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // At most one file per core in flight: each holds a copy of the columns
    // it reads until its windows are done.
    let permits = Arc::new(Semaphore::new(cores));
    // The costliest files first (a file's window calls as its cost), so no
    // core is left idle waiting on a long file started last.
    let mut order: Vec<usize> = (0..catalog.files().len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(window_calls(&catalog.files()[i].sql)));
    let mut tasks: Vec<Option<_>> = (0..order.len()).map(|_| None).collect();
    for i in order {
        let f = &catalog.files()[i];
        let (ctx, sql, permits) = (ctx.clone(), f.sql.clone(), Arc::clone(&permits));
        let name = f.name.clone();
        tasks[i] = Some(tokio::spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let clock = std::time::Instant::now();
            let df = ctx.sql(&sql).await?.sort(key_order())?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let plan = df.create_physical_plan().await?;
            if tracing::enabled!(tracing::Level::TRACE) {
                let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(false);
                tracing::trace!(file = %name, plan = %shown, "Feature file plan.");
            }
            let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?;
            tracing::debug!(file = %name, secs = clock.elapsed().as_secs_f64(), "Feature file computed.");
            Ok::<_, DataFusionError>(match <[RecordBatch; 1]>::try_from(batches) {
                Ok([one]) => one,
                Err(batches) => concat_batches(&schema, &batches)?,
            })
        }));
    }
    let mut tasks: Vec<_> = tasks.into_iter().flatten().collect();
    // Dropping a handle does not stop its task: abort the others when
    // giving up, so a failed file does not leave work running.
    let abort_all = |tasks: &[tokio::task::JoinHandle<_>]| tasks.iter().for_each(|t| t.abort());
    let mut results = Vec::with_capacity(tasks.len());
    for (i, file) in catalog.files().iter().enumerate() {
        let batch = match (&mut tasks[i]).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                abort_all(&tasks);
                return Err(e);
            }
            Err(e) => {
                abort_all(&tasks);
                return Err(DataFusionError::Execution(format!(
                    "feature file {}: task failed: {e}",
                    file.name
                )));
            }
        };
        if !same_rows(&batch, ticks)? {
            abort_all(&tasks);
            tracing::warn!(
                file = %file.path.display(),
                "Feature file does not return exactly one row per tick; lining the files up with a join (slower)."
            );
            return Ok(None);
        }
        results.push(batch);
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for name in [key::TS, key::SYMBOL, key::SEQ] {
        columns.push(Arc::clone(ticks.column(ticks.schema().index_of(name)?)));
    }
    for (batch, file) in results.iter().zip(catalog.files()) {
        for feature in &file.features {
            let c = batch.column(batch.schema().index_of(feature)?);
            columns.push(if c.data_type() == &DataType::Float64 {
                Arc::clone(c)
            } else {
                arrow::compute::cast(c, &DataType::Float64)?
            });
        }
    }
    Ok(Some(RecordBatch::try_new(schema, columns)?))
}

/// How many window calls (the word `OVER`) a file's SQL makes.
fn window_calls(sql: &str) -> usize {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.eq_ignore_ascii_case("over"))
        .count()
}

/// Whether `batch` holds `ticks`' keys, row for row.
fn same_rows(batch: &RecordBatch, ticks: &RecordBatch) -> Result<bool, DataFusionError> {
    if batch.num_rows() != ticks.num_rows() {
        return Ok(false);
    }
    for name in [key::TS, key::SEQ, key::SYMBOL] {
        let (Ok(a), Ok(b)) = (batch.schema().index_of(name), ticks.schema().index_of(name)) else {
            return Ok(false);
        };
        let (a, b) = (batch.column(a), ticks.column(b));
        if a.data_type() != b.data_type() || a.to_data() != b.to_data() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The files joined on the tick key (what [`feature_query`] writes), sorted
/// by the key.
async fn joined(ctx: &SessionContext, catalog: &Catalog) -> Result<RecordBatch, DataFusionError> {
    let sql = feature_query(ctx, catalog).await?;
    let df = ctx
        .sql(&format!("{sql} ORDER BY f0.symbol, f0.ts, f0.seq"))
        .await?;
    let result_schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    let all = concat_batches(&result_schema, &batches)?;
    Ok(super::conform(&all, &features_table(catalog).schema)?)
}
