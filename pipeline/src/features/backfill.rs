//! Backfill: the catalog's queries over the lake's `ticks`, a run of
//! consecutive dates at a time (at most [`CHUNK_TICKS`] ticks, or one date)
//! with the lookback of history before it, written to
//! `features/<feature-set hash>/date=.../`.
//!
//! A run's ticks are read into memory in key order and computed by
//! [`compute_features`](super::compute_features); the run's features are
//! written while the next run is read and computed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use indicatif::ProgressBar;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use super::Catalog;
use crate::lake::{
    register_table, session_context, Appender, AppenderOptions, LakeError, LakeRoot, TableSpec,
};
use crate::tick::{col, schema::ts_type, DAY_US};

/// How far back, in days, backfill searches for the tick-count part of a
/// lookback (a symbol with fewer ticks than that in this span is taken with
/// all of them).
pub const ROWS_SEARCH_DAYS: i64 = 10;

/// What to backfill.
#[derive(Debug, Clone, Default)]
pub struct BackfillOptions {
    /// First date (inclusive); the lake's first by default.
    pub from: Option<NaiveDate>,
    /// Last date (inclusive); the lake's last by default.
    pub to: Option<NaiveDate>,
    /// Only these symbols (all by default).
    pub symbols: Vec<String>,
    /// Recompute dates already done.
    pub force: bool,
    /// Most ticks computed in one pass ([`CHUNK_TICKS`] when 0); a date is
    /// never split.
    pub chunk_ticks: u64,
    /// Make the context tables and compute and write the features on this
    /// cluster's executors instead of in this process (which marks the
    /// dates done once every block of a run is written).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Tries of a run of dates on a cluster: a run fails whole when an
/// executor dies under it (datafusion-distributed does not retry tasks),
/// and is run again on the executors listed then.
pub const CLUSTER_TRIES: u32 = 3;

/// What a backfill did.
#[derive(Debug, Clone, Default)]
pub struct BackfillSummary {
    /// Dates computed.
    pub dates_done: Vec<NaiveDate>,
    /// Dates skipped because already done.
    pub dates_skipped: Vec<NaiveDate>,
    /// Feature rows written.
    pub rows: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a backfill stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The lake failed.
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// A query failed while running.
    #[error("backfill of {date}: {source}")]
    Query {
        /// The date being computed.
        date: NaiveDate,
        /// DataFusion's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// The task writing a run of dates failed.
    #[error("backfill of the dates from {date}: the write failed: {reason}")]
    Write {
        /// The run's first date.
        date: NaiveDate,
        /// What went wrong.
        reason: String,
    },
    /// The intraday profiles a date's features join could not be made.
    #[error(transparent)]
    Profiles(#[from] super::profiles::ProfileError),
    /// The cluster could not be used.
    #[error("backfill of {date} on the cluster: {source}")]
    Cluster {
        /// The date being computed.
        date: NaiveDate,
        /// Why.
        #[source]
        source: crate::cluster::ClusterError,
    },
}

/// The lake table of a feature set: the tick key and one `Float64` column
/// per feature, in catalog order.
pub fn features_table(catalog: &Catalog) -> TableSpec {
    let mut fields = vec![
        Field::new(col::TS, ts_type(), false),
        Field::new(col::SYMBOL, DataType::Utf8, false),
        Field::new(col::SEQ, DataType::UInt32, false),
    ];
    fields.extend(
        catalog
            .feature_names()
            .into_iter()
            .map(|n| Field::new(n, DataType::Float64, true)),
    );
    TableSpec {
        name: format!("features/{}", catalog.hash()),
        schema: Arc::new(Schema::new(fields)),
        partition_ts: col::TS,
        sort_by: vec![col::SYMBOL, col::TS, col::SEQ],
        outer_partition: None,
    }
}

/// A session over the lake where `features` is the current feature set's
/// snapshot and `training` joins it with `labels` point in time: `label` is
/// 1 when the tick lies inside a label interval of its symbol, and `kind`
/// names the (alphabetically first) such label. Labels of kind
/// [`REVIEWED_NEGATIVE`](crate::labels::REVIEWED_NEGATIVE) never make a
/// tick positive.
pub async fn training_session(
    root: &LakeRoot,
    catalog: &Catalog,
) -> Result<SessionContext, LakeError> {
    snapshot_session(root, catalog, None).await
}

/// [`training_session`] with `features` (and so `training`) holding only
/// the dates `from..=to` when `dates` is given: what a query over
/// `features` (a rule, say) sees of one date range.
pub async fn snapshot_session(
    root: &LakeRoot,
    catalog: &Catalog,
    dates: Option<(NaiveDate, NaiveDate)>,
) -> Result<SessionContext, LakeError> {
    let ctx = session_context(root).await?;
    let spec = features_table(catalog);
    register_table(
        &ctx,
        root,
        &TableSpec {
            name: spec.name.clone(),
            ..spec.clone()
        },
    )
    .await?;
    let df_err = |source| LakeError::DataFusion {
        table: "training".into(),
        source,
    };
    let quoted = format!("\"{}\"", spec.name);
    let range = dates
        .map(|(from, to)| format!(" WHERE date >= '{from}' AND date <= '{to}'"))
        .unwrap_or_default();
    ctx.sql(&format!(
        "CREATE VIEW features AS SELECT * FROM {quoted}{range}"
    ))
    .await
    .map_err(df_err)?;
    ctx.sql(&format!(
        "CREATE VIEW training AS \
         SELECT f.*, CASE WHEN l.kind IS NULL THEN 0 ELSE 1 END AS label, l.kind AS kind \
         FROM features f LEFT JOIN ( \
             SELECT f2.symbol, f2.ts, f2.seq, min(lb.kind) AS kind \
             FROM features f2 JOIN labels lb ON f2.symbol = lb.symbol \
              AND f2.ts >= lb.start_ts AND f2.ts <= lb.end_ts \
              AND lb.kind <> '{negative}' \
             GROUP BY f2.symbol, f2.ts, f2.seq) l \
         ON f.symbol = l.symbol AND f.ts = l.ts AND f.seq = l.seq",
        negative = crate::labels::REVIEWED_NEGATIVE
    ))
    .await
    .map_err(df_err)?;
    Ok(ctx)
}

/// Runs the catalog over the lake's ticks and writes the feature snapshot.
pub async fn backfill(
    root: &LakeRoot,
    catalog: &Catalog,
    options: &BackfillOptions,
    progress: &ProgressBar,
) -> Result<BackfillSummary, BackfillError> {
    let started = Instant::now();
    let lake = session_context(root).await?;
    let dates = tick_dates(&lake, options).await?;
    progress.set_length(dates.len() as u64);
    let spec = features_table(catalog);
    let mut summary = BackfillSummary::default();
    // Consecutive dates to compute go in chunks of at most CHUNK_TICKS
    // ticks (a date alone may hold more): one pass over a chunk reads its
    // lookback and plans the queries once instead of once per date.
    let mut chunks: Vec<Vec<NaiveDate>> = Vec::new();
    let limit = if options.chunk_ticks == 0 {
        CHUNK_TICKS
    } else {
        options.chunk_ticks
    };
    let mut chunk_ticks = 0u64;
    let mut previous_pending = false;
    for &(date, ticks) in &dates {
        let marker = root.path(&format!("{}/date={date}/_SUCCESS", spec.name));
        let done = root.store().head(&marker).await.is_ok();
        if done && !options.force {
            summary.dates_skipped.push(date);
            progress.inc(1);
            previous_pending = false;
            continue;
        }
        // A date done already (recomputed with --force) keeps its files
        // and marker until its new files are written: `finish_write` then
        // removes the old ones, so a run that fails leaves it whole.
        match chunks.last_mut() {
            Some(chunk) if previous_pending && chunk_ticks + ticks <= limit => {
                chunk.push(date);
                chunk_ticks += ticks;
            }
            _ => {
                chunks.push(vec![date]);
                chunk_ticks = ticks;
            }
        }
        previous_pending = true;
    }
    let pending: Vec<NaiveDate> = chunks.iter().flatten().copied().collect();
    if let Some(cluster) = &options.cluster {
        context_on_cluster(root, catalog, cluster, &pending, options.force).await?;
    }
    let local_context = options.cluster.is_none();
    // Each date's market sums, for the betas of the dates after it.
    let mut beta_cache = super::market::BetaCache::default();
    // The features of a date join its intraday profiles, made from the
    // dates before it (once; again with --force): made ahead, in stages of
    // their own, while this task makes the market context.
    let mut profiles =
        local_context.then(|| super::ahead::profiles(root, pending.clone(), options.force));
    let mut writing: Option<PendingWrite> = None;
    for chunk in chunks {
        for &date in chunk.iter().filter(|_| local_context) {
            let made = match &mut profiles {
                Some(p) => p.take(date).await?.flatten(),
                None => None,
            };
            // Market context: the date's buckets over every symbol (not just
            // `--symbols`: the cross-section is the point) and the betas
            // from the dates before it.
            if catalog.uses_market() {
                let sql = catalog.market_sql();
                if options.force || !super::market::market_done(root, date).await {
                    let rows = super::market::write_market(root, date, sql, made).await?;
                    tracing::debug!(%date, rows, "Market buckets written.");
                }
                if options.force || !super::market::betas_done(root, date).await {
                    let rows =
                        super::market::write_betas_cached(root, date, sql, &mut beta_cache).await?;
                    tracing::debug!(%date, rows, "Betas written.");
                }
            }
        }
        let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
        if let Some(cluster) = &options.cluster {
            let (rows, written) =
                run_on_cluster(&lake, root, catalog, cluster, first, last, options).await?;
            mark_written(root, &spec, &chunk, rows, written, &mut summary, progress).await?;
            continue;
        }
        let computed = compute_dates(root, catalog, first, last, options).await;
        // The previous run's write went on meanwhile; it ends before this
        // run's starts, so at most two runs' features are held.
        if let Some(p) = writing.take() {
            finish_write(root, &spec, p, &mut summary, progress).await?;
        }
        let features = computed?;
        let task = tokio::spawn(write_features(root.clone(), spec.clone(), features));
        writing = Some((chunk, task));
    }
    if let Some(p) = writing.take() {
        finish_write(root, &spec, p, &mut summary, progress).await?;
    }
    if let Some(p) = profiles {
        p.finish().await?;
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// A run of dates whose features are being written.
type PendingWrite = (
    Vec<NaiveDate>,
    tokio::task::JoinHandle<Result<(u64, Vec<Path>), BackfillError>>,
);

/// Waits for a run's write, then removes its dates' other files (what an
/// earlier run wrote there: the run replaces them) and marks its dates
/// done. Nothing is removed before the whole run is written, so a write
/// that fails leaves every date of the run as it was.
async fn finish_write(
    root: &LakeRoot,
    spec: &TableSpec,
    (chunk, task): PendingWrite,
    summary: &mut BackfillSummary,
    progress: &ProgressBar,
) -> Result<(), BackfillError> {
    let (rows, written) = task.await.map_err(|e| BackfillError::Write {
        date: chunk[0],
        reason: e.to_string(),
    })??;
    mark_written(root, spec, &chunk, rows, written, summary, progress).await
}

/// Removes the other files of a run's dates (what an earlier run wrote
/// there: the run replaces them) and marks its dates done, once the run's
/// `rows` are in the files `written`.
async fn mark_written(
    root: &LakeRoot,
    spec: &TableSpec,
    chunk: &[NaiveDate],
    rows: u64,
    written: Vec<Path>,
    summary: &mut BackfillSummary,
    progress: &ProgressBar,
) -> Result<(), BackfillError> {
    let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
    let kept: std::collections::HashSet<Path> = written.into_iter().collect();
    for &date in chunk {
        remove_other_files(root, spec, date, &kept).await?;
    }
    // Markers only once every date of the run is written.
    for date in chunk {
        let marker = root.path(&format!("{}/date={date}/_SUCCESS", spec.name));
        root.store()
            .put(&marker, PutPayload::from_static(b""))
            .await
            .map_err(|source| LakeError::Store {
                path: marker.to_string(),
                source,
            })?;
    }
    tracing::info!(%first, %last, rows, "Features backfilled.");
    summary.rows += rows;
    summary.dates_done.extend(chunk);
    progress.inc(chunk.len() as u64);
    Ok(())
}

/// Most ticks backfilled in one pass (more only when one date holds more):
/// bounds memory whatever the lake's size.
pub const CHUNK_TICKS: u64 = 2_000_000;

/// The lake's dates in range, in order, with their tick counts.
async fn tick_dates(
    ctx: &SessionContext,
    o: &BackfillOptions,
) -> Result<Vec<(NaiveDate, u64)>, BackfillError> {
    let mut sql = "SELECT date, count(*) FROM ticks WHERE true".to_owned();
    if let Some(f) = o.from {
        sql.push_str(&format!(" AND date >= '{f}'"));
    }
    if let Some(t) = o.to {
        sql.push_str(&format!(" AND date <= '{t}'"));
    }
    sql.push_str(" GROUP BY date ORDER BY date");
    let batches = collect(ctx, &sql, NaiveDate::MIN).await?;
    let mut out = Vec::new();
    for b in &batches {
        let dates = b.column(0).as_string::<i32>();
        let counts = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            if let Ok(d) = NaiveDate::parse_from_str(dates.value(i), "%Y-%m-%d") {
                out.push((d, u64::try_from(counts.value(i)).unwrap_or(0)));
            }
        }
    }
    Ok(out)
}

/// Runs a query to completion, errors naming the date being computed.
async fn collect(
    ctx: &SessionContext,
    sql: &str,
    date: NaiveDate,
) -> Result<Vec<RecordBatch>, BackfillError> {
    let q_err = |source| BackfillError::Query { date, source };
    ctx.sql(sql)
        .await
        .map_err(q_err)?
        .collect()
        .await
        .map_err(q_err)
}

fn day_start_us(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .map_or(0, |t| t.and_utc().timestamp_micros())
}

fn sql_ts(us: i64) -> String {
    format!("to_timestamp_micros({us}) AT TIME ZONE 'UTC'")
}

/// The features of the dates `first..=last` computed and written on the
/// cluster's executors, each taking a block of the run's symbols (see
/// [`crate::cluster::features_on_cluster`]), tried again when it fails (see
/// [`CLUSTER_TRIES`]); the rows and the files written. The run's symbols
/// are read in `lake`, the backfill's session.
async fn run_on_cluster(
    lake: &SessionContext,
    root: &LakeRoot,
    catalog: &Catalog,
    cluster: &crate::cluster::Cluster,
    first: NaiveDate,
    last: NaiveDate,
    o: &BackfillOptions,
) -> Result<(u64, Vec<Path>), BackfillError> {
    let q_err = |source| BackfillError::Query {
        date: first,
        source,
    };
    let mut sql =
        format!("SELECT DISTINCT symbol FROM ticks WHERE date >= '{first}' AND date <= '{last}'");
    sql.push_str(&symbol_filter(&o.symbols));
    let mut symbols = Vec::new();
    for batch in lake
        .sql(&sql)
        .await
        .map_err(q_err)?
        .collect()
        .await
        .map_err(q_err)?
    {
        let column =
            arrow::compute::cast(batch.column(0), &DataType::Utf8).map_err(|e| q_err(e.into()))?;
        symbols.extend(
            column
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_owned),
        );
    }
    symbols.sort_unstable();
    retry_on_cluster(cluster, first, last, || async {
        // Each try's blocks in a folder of their own, outside the table, so
        // that readers never see a run half written over the files it
        // replaces (the blocks' files are not the earlier run's).
        let staging = format!(
            "{STAGING}/{first}-{}-{}",
            std::process::id(),
            crate::tick::now_us()
        );
        let ctx = cluster.session().map_err(|source| BackfillError::Cluster {
            date: first,
            source,
        })?;
        let ran = crate::cluster::features_on_cluster(
            &ctx, root, catalog, first, last, &symbols, &staging,
        )
        .await
        .map_err(q_err);
        let moved = match ran {
            Ok((rows, staged)) => move_in(root, &staging, &staged)
                .await
                .map(|files| (rows, files))
                .map_err(BackfillError::from),
            Err(e) => Err(e),
        };
        remove_staging(root, &staging).await;
        moved
    })
    .await
}

/// The lake folder holding cluster runs' files until they are moved in.
const STAGING: &str = "_staging";

/// ` AND symbol IN (...)` for a `--symbols` list; empty for all symbols.
fn symbol_filter(symbols: &[String]) -> String {
    if symbols.is_empty() {
        return String::new();
    }
    let list: Vec<String> = symbols
        .iter()
        .map(|s| format!("'{}'", s.replace('\'', "''")))
        .collect();
    format!(" AND symbol IN ({})", list.join(", "))
}

/// Computes and writes the features of the dates `first..=last` for
/// `symbols` only, as a local backfill computes a run of dates (history
/// from the lookback before `first`): what an executor does with its
/// block of a run's symbols. The files go under the folder `staging` of
/// the lake (`<staging>/features/<hash>/date=D/`), outside the table, until
/// the coordinator moves them in once every block is written. Returns the
/// rows and the files written; marks nothing done.
pub async fn backfill_symbols(
    root: &LakeRoot,
    catalog: &Catalog,
    first: NaiveDate,
    last: NaiveDate,
    symbols: &[String],
    staging: &str,
) -> Result<(u64, Vec<Path>), BackfillError> {
    let o = BackfillOptions {
        symbols: symbols.to_vec(),
        ..BackfillOptions::default()
    };
    let features = compute_dates(root, catalog, first, last, &o).await?;
    let mut spec = features_table(catalog);
    spec.name = format!("{staging}/{}", spec.name);
    write_features(root.clone(), spec, features).await
}

/// Moves the files a cluster run wrote under `staging` into the table (the
/// same path without the staging folder); the paths moved to.
async fn move_in(root: &LakeRoot, staging: &str, staged: &[Path]) -> Result<Vec<Path>, LakeError> {
    let prefix = format!("{}/", root.path(staging));
    let mut moved = Vec::with_capacity(staged.len());
    for from in staged {
        let rest = from
            .as_ref()
            .strip_prefix(&prefix)
            .ok_or_else(|| LakeError::Store {
                path: from.to_string(),
                source: object_store::Error::Generic {
                    store: "lake",
                    source: format!("an executor wrote outside {prefix}").into(),
                },
            })?;
        let to = root.path(rest);
        root.store()
            .rename(from, &to)
            .await
            .map_err(|source| LakeError::Store {
                path: from.to_string(),
                source,
            })?;
        moved.push(to);
    }
    Ok(moved)
}

/// Deletes what is left under `staging` (a failed try's blocks); a
/// failure to is logged, not raised: the staging folder is outside every
/// table.
async fn remove_staging(root: &LakeRoot, staging: &str) {
    use futures::TryStreamExt;
    let prefix = root.path(staging);
    let listed: Result<Vec<_>, _> = root.store().list(Some(&prefix)).try_collect().await;
    let files = match listed {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path = %prefix, error = %e, "Cannot list a staging folder to remove it.");
            return;
        }
    };
    for f in files {
        if let Err(e) = root.store().delete(&f.location).await {
            tracing::warn!(path = %f.location, error = %e, "Cannot remove a staged file.");
        }
    }
    // A folder's store leaves the emptied folders behind.
    if let Some(base) = root.local_path() {
        let _ = std::fs::remove_dir_all(base.join(staging));
        let _ = std::fs::remove_dir(base.join(STAGING));
    }
}

/// Runs `attempt` (work for the dates `date..=last` on `cluster`) until it
/// succeeds, up to [`CLUSTER_TRIES`] times: after a failure (an executor
/// died under it), once the dead executor has left the scheduler's list,
/// on the executors then alive. A refused token is not tried again.
async fn retry_on_cluster<T, F, Fut>(
    cluster: &crate::cluster::Cluster,
    date: NaiveDate,
    last: NaiveDate,
    mut attempt: F,
) -> Result<T, BackfillError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackfillError>>,
{
    let mut tried = 1;
    loop {
        match attempt().await {
            Ok(b) => return Ok(b),
            Err(e) if tried < CLUSTER_TRIES && !crate::cluster::is_refusal(&e.to_string()) => {
                tracing::warn!(%date, %last, error = %e, tried,
                    "Work for a run of dates failed on the cluster; trying it again on the executors alive.");
                tokio::time::sleep(cluster.retry_pause()).await;
                let listed = cluster
                    .refresh()
                    .await
                    .map_err(|source| BackfillError::Cluster { date, source })?;
                tracing::info!(executors = listed, "Executor list refreshed.");
                tried += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes the context tables of `dates` (sorted) on the cluster's executors,
/// one table at a time (each reads what the tables before it made), each
/// date's rows by the single-node code and into the same files. As in a
/// single-node backfill, the minute statistics are made again only with
/// `force` (else profiles make those missing), and a table's dates already
/// stored are skipped unless `force`d.
async fn context_on_cluster(
    root: &LakeRoot,
    catalog: &Catalog,
    cluster: &crate::cluster::Cluster,
    dates: &[NaiveDate],
    force: bool,
) -> Result<(), BackfillError> {
    use crate::cluster::ContextTable;

    let (Some(&first), Some(&last)) = (dates.first(), dates.last()) else {
        return Ok(());
    };
    let mut tables = Vec::new();
    if force {
        tables.push(ContextTable::MinuteStats);
    }
    tables.push(ContextTable::Profiles);
    if catalog.uses_market() {
        tables.extend([ContextTable::Market, ContextTable::Betas]);
    }
    for table in tables {
        let clock = Instant::now();
        let made = retry_on_cluster(cluster, first, last, || async move {
            // Again at every try: a failed try leaves the dates it made stored.
            let mut todo = Vec::with_capacity(dates.len());
            for &d in dates {
                if force || !table.done(root, d).await {
                    todo.push(d);
                }
            }
            let ctx = cluster.session().map_err(|source| BackfillError::Cluster {
                date: first,
                source,
            })?;
            crate::cluster::make_context(&ctx, root, table, catalog.market_sql(), &todo)
                .await
                .map_err(|source| BackfillError::Query {
                    date: first,
                    source,
                })
        })
        .await?;
        tracing::info!(
            table = table.name(),
            dates = made.len(),
            secs = clock.elapsed().as_secs_f64(),
            "Context table made on the cluster."
        );
    }
    Ok(())
}

/// Computes the features of the dates `date..=last` (history from the
/// lookback before `date`): their rows only, sorted by the tick key.
async fn compute_dates(
    root: &LakeRoot,
    catalog: &Catalog,
    date: NaiveDate,
    last: NaiveDate,
    o: &BackfillOptions,
) -> Result<RecordBatch, BackfillError> {
    let q_err = |source| BackfillError::Query { date, source };
    let ctx = session_context(root).await?;
    let start = day_start_us(date);
    let end = day_start_us(last) + DAY_US;
    let lookback = catalog.lookback();
    let time_start = start - i64::try_from(lookback.time.as_micros()).unwrap_or(i64::MAX / 2);
    let symbol_filter = symbol_filter(&o.symbols);
    let first_date =
        |us: i64| chrono::DateTime::from_timestamp_micros(us).map_or(date, |t| t.date_naive());
    let history_start = if lookback.rows == 0 {
        time_start
    } else {
        // Ticks before the time lookback, per symbol and date (an aggregate:
        // no sort). Walking back from the latest date, each symbol needs
        // whole dates until it has `rows` ticks; history starts at the
        // earliest such date over all symbols. Whole dates read a little
        // more than needed, which changes no feature.
        let time_date = first_date(time_start);
        let search_from = first_date(time_start - ROWS_SEARCH_DAYS * DAY_US);
        let sql = format!(
            "SELECT symbol, date, count(*) FROM ticks WHERE date >= '{search_from}' \
             AND date <= '{time_date}' AND ts < {}{symbol_filter} GROUP BY symbol, date",
            sql_ts(time_start)
        );
        let needed = covering_dates(&ctx, &sql, date, lookback.rows, true)
            .await?
            .into_iter()
            .min();
        needed
            .and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
            .map_or(time_start, |d| day_start_us(d).min(time_start))
    };
    // Delayed confirmation: the last ticks of the range read up to `delay`
    // later ticks of their symbol, from the dates after it.
    let (read_last, read_end) =
        match lookahead_end(&ctx, catalog.delay(), last, &symbol_filter).await? {
            Some(d) => (d, day_start_us(d) + DAY_US),
            None => (last, end),
        };
    let view = format!(
        "CREATE VIEW ticks_window AS SELECT * FROM ticks WHERE date >= '{}' AND date <= '{read_last}' \
         AND ts >= {} AND ts < {}{symbol_filter}",
        first_date(history_start),
        sql_ts(history_start),
        sql_ts(read_end)
    );
    ctx.sql(&view).await.map_err(q_err)?;
    // The context tables' rows of the dates these ticks span, as the
    // streaming executor holds those of the dates its held ticks span
    // (feature files join a tick's own date's rows): joined whole, every
    // run hashed every date of the lake's tables (a year of minute bars
    // peaked at 17 GB).
    for spec in [
        TableSpec::profiles(),
        TableSpec::betas(),
        TableSpec::market(),
    ] {
        let name = spec.name.as_str();
        let rows = ctx
            .sql(&format!(
                "SELECT * FROM {name} WHERE date >= '{}' AND date <= '{read_last}'",
                first_date(history_start)
            ))
            .await
            .map_err(q_err)?
            .into_view();
        ctx.deregister_table(name).map_err(q_err)?;
        ctx.register_table(name, rows).map_err(q_err)?;
    }
    // The window's ticks in key order, in memory (CHUNK_TICKS bounds them),
    // then only the rows of the dates asked for. Every file is sorted by the
    // key already, so the batches are sorted runs: merging them is much
    // cheaper than an ORDER BY's sort.
    let clock = Instant::now();
    let df = ctx.sql("SELECT * FROM ticks_window").await.map_err(q_err)?;
    let ticks_schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(q_err)?;
    let ticks =
        arrow::compute::concat_batches(&ticks_schema, &batches).map_err(|e| q_err(e.into()))?;
    drop(batches);
    let ticks = crate::lake::sort_by(&ticks, &[col::SYMBOL, col::TS, col::SEQ])
        .map_err(|e| q_err(e.into()))?;
    // Whole dates were read for the tick-count lookback and the delay; keep
    // per symbol only the ticks the features of [start, end) can reach.
    let needed = reach(
        &ticks,
        time_start,
        end,
        usize::try_from(lookback.rows).unwrap_or(usize::MAX),
        usize::try_from(catalog.delay()).unwrap_or(usize::MAX),
    )
    .map_err(|e| q_err(e.into()))?;
    let ticks =
        arrow::compute::filter_record_batch(&ticks, &needed).map_err(|e| q_err(e.into()))?;
    let read = clock.elapsed();
    let features = super::compute_features(&ctx, catalog, &ticks)
        .await
        .map_err(q_err)?;
    let computed = clock.elapsed();
    drop(ticks);
    let keep = in_range(&features, start, end).map_err(|e| q_err(e.into()))?;
    let features =
        arrow::compute::filter_record_batch(&features, &keep).map_err(|e| q_err(e.into()))?;
    tracing::debug!(
        %date, %last,
        rows = features.num_rows(),
        read_s = read.as_secs_f64(),
        compute_s = (computed - read).as_secs_f64(),
        "Features computed."
    );
    Ok(features)
}

/// Writes a run of dates' features (one batch) to the snapshot; returns
/// the rows and every file that holds them (written now, or there already
/// with the same content).
async fn write_features(
    root: LakeRoot,
    spec: TableSpec,
    features: RecordBatch,
) -> Result<(u64, Vec<Path>), BackfillError> {
    let clock = Instant::now();
    let options = AppenderOptions {
        float_dictionary: false,
        ..AppenderOptions::default()
    };
    let mut appender = Appender::new(root, spec, options);
    let rows = features.num_rows() as u64;
    appender.append(features).await?;
    let (_, files) = appender.finish_files().await?;
    tracing::debug!(
        rows,
        secs = clock.elapsed().as_secs_f64(),
        "Features written."
    );
    Ok((rows, files))
}

/// Of `ticks` sorted by `(symbol, ts, seq)`, the rows the features of the
/// ticks in `[start, end)` (µs) can read, per symbol: those from
/// `time_start` on, `before` ticks before them and `after` ticks after
/// `end`, widened so that no group of ticks sharing a `ts` is cut (a
/// superset of what the lookback and delay need, which changes no feature).
fn reach(
    ticks: &RecordBatch,
    time_start: i64,
    end: i64,
    before: usize,
    after: usize,
) -> Result<arrow::array::BooleanArray, arrow::error::ArrowError> {
    let schema = ticks.schema();
    let ts = ticks.column(schema.index_of(col::TS)?);
    let ts = ts
        .as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("ts is not a µs timestamp".into()))?
        .values();
    let symbols = ticks
        .column(schema.index_of(col::SYMBOL)?)
        .as_string_opt::<i32>()
        .ok_or_else(|| {
            arrow::error::ArrowError::SchemaError("symbol is not a string column".into())
        })?;
    let mut keep = vec![false; ticks.num_rows()];
    let mut a = 0;
    while a < keep.len() {
        let mut b = a + 1;
        while b < keep.len() && symbols.value(b) == symbols.value(a) {
            b += 1;
        }
        let run = &ts[a..b];
        let first = a + run.partition_point(|&t| t < time_start);
        let mut lo = first.saturating_sub(before).max(a);
        while lo > a && ts[lo - 1] == ts[lo] {
            lo -= 1;
        }
        let last = a + run.partition_point(|&t| t < end);
        let mut hi = last.saturating_add(after).min(b);
        while hi < b && hi > a && ts[hi] == ts[hi - 1] {
            hi += 1;
        }
        keep[lo..hi].iter_mut().for_each(|k| *k = true);
        a = b;
    }
    Ok(arrow::array::BooleanArray::from(keep))
}

/// Rows of `batch` whose `ts` (µs) lies in `[start, end)`.
fn in_range(
    batch: &RecordBatch,
    start: i64,
    end: i64,
) -> Result<arrow::array::BooleanArray, arrow::error::ArrowError> {
    let ts = batch.column(batch.schema().index_of(col::TS)?);
    let ts = ts
        .as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("ts is not a µs timestamp".into()))?;
    let ts = ts.values();
    Ok(arrow::array::BooleanArray::new(
        arrow::buffer::BooleanBuffer::collect_bool(ts.len(), |i| ts[i] >= start && ts[i] < end),
        None,
    ))
}

/// Calendar days after a range searched for the later ticks that delayed
/// confirmation reads (weekends and holidays leave no ticks for days).
pub const LOOKAHEAD_SEARCH_DAYS: i64 = 14;

/// The last date to read after `last` so that every symbol has `delay`
/// ticks after it (or the lake's end within [`LOOKAHEAD_SEARCH_DAYS`]);
/// `None` without a delay or when no later date has ticks.
async fn lookahead_end(
    ctx: &SessionContext,
    delay: u64,
    last: NaiveDate,
    symbol_filter: &str,
) -> Result<Option<NaiveDate>, BackfillError> {
    if delay == 0 {
        return Ok(None);
    }
    let until = last + chrono::Duration::days(LOOKAHEAD_SEARCH_DAYS);
    let sql = format!(
        "SELECT symbol, date, count(*) FROM ticks WHERE date > '{last}' AND date <= '{until}'\
         {symbol_filter} GROUP BY symbol, date"
    );
    // The range reads up to the latest symbol's covering date.
    let needed = covering_dates(ctx, &sql, last, delay, false)
        .await?
        .into_iter()
        .max();
    Ok(needed.and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok()))
}

/// Per symbol among `sql`'s `(symbol, date, count)` rows, the date by which
/// `need` ticks are reached walking its dates from the latest back
/// (`from_latest`) or from the earliest on; its last date walked when it
/// never gets there. `date` names the computation in errors.
async fn covering_dates(
    ctx: &SessionContext,
    sql: &str,
    date: NaiveDate,
    need: u64,
    from_latest: bool,
) -> Result<Vec<String>, BackfillError> {
    let mut counts: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for b in collect(ctx, sql, date).await? {
        let sym = b.column(0).as_string::<i32>();
        let day = b.column(1).as_string::<i32>();
        let n = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            counts
                .entry(sym.value(i).to_owned())
                .or_default()
                .push((day.value(i).to_owned(), n.value(i)));
        }
    }
    Ok(counts
        .into_values()
        .filter_map(|mut days| {
            days.sort_unstable();
            if from_latest {
                days.reverse();
            }
            let mut seen = 0u64;
            let mut upto = None;
            for (day, n) in days {
                seen += u64::try_from(n).unwrap_or(0);
                upto = Some(day);
                if seen >= need {
                    break;
                }
            }
            upto
        })
        .collect())
}

/// Registers every feature file of `catalog` as a view over the session's
/// `ticks` and returns the query joining them on the tick key: the key and
/// every feature as `DOUBLE`, in catalog order. Backfill and the streaming
/// executor compute features through [`compute_features`](super::compute_features),
/// which lines the files up without this join when it can (same values,
/// faster) and falls back to it when a file does not return one row per
/// tick.
pub async fn feature_query(
    ctx: &SessionContext,
    catalog: &Catalog,
) -> Result<String, datafusion::error::DataFusionError> {
    let mut selects = vec![
        "f0.ts".to_owned(),
        "f0.symbol".to_owned(),
        "f0.seq".to_owned(),
    ];
    let mut joins = String::new();
    for (i, f) in catalog.files().iter().enumerate() {
        let name = format!("f{i}");
        let df = ctx.sql(&f.sql).await?;
        ctx.deregister_table(name.as_str())?;
        ctx.register_table(name.as_str(), df.into_view())?;
        for feature in &f.features {
            selects.push(format!(
                "CAST(f{i}.\"{feature}\" AS DOUBLE) AS \"{feature}\""
            ));
        }
        if i > 0 {
            joins.push_str(&format!(
                " JOIN f{i} ON f{i}.symbol = f0.symbol AND f{i}.ts = f0.ts AND f{i}.seq = f0.seq"
            ));
        }
    }
    Ok(format!("SELECT {} FROM f0{joins}", selects.join(", ")))
}

/// Gives a result batch the table's exact schema (names, order, nullability).
pub(crate) fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let i = batch.schema().index_of(f.name())?;
            let c = batch.column(i);
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// Deletes the files of `spec`'s partition for `date` that are not in
/// `kept` (its `_SUCCESS` marker stays): what a run that wrote `kept`
/// replaces.
async fn remove_other_files(
    root: &LakeRoot,
    spec: &TableSpec,
    date: NaiveDate,
    kept: &std::collections::HashSet<Path>,
) -> Result<(), LakeError> {
    use futures::TryStreamExt;
    let prefix = root.path(&format!("{}/date={date}", spec.name));
    let marker = root.path(&format!("{}/date={date}/_SUCCESS", spec.name));
    let store = root.store();
    let files: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| LakeError::Store {
            path: prefix.to_string(),
            source,
        })?;
    for f in files {
        if f.location == marker || kept.contains(&f.location) {
            continue;
        }
        store
            .delete(&f.location)
            .await
            .map_err(|source| LakeError::Store {
                path: f.location.to_string(),
                source,
            })?;
    }
    Ok(())
}
