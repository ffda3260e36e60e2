//! A run of dates' features computed and written on the executors.
//!
//! Every feature window is partitioned by symbol and the context tables
//! are in the lake, so a run's features for one block of symbols need
//! nothing of the others: each task takes a block of consecutive symbols
//! (in key order, so the tasks' files do not overlap), runs the
//! single-node backfill's path for them (lookback read, files lined up on
//! the key, not joined) and writes its own Parquet files; only their names
//! and row counts come back. The coordinator then replaces the run's old
//! files and marks its dates done, as after a local run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::NaiveDate;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use super::{column, date, run_work, Work};
use crate::features::{backfill_symbols, Catalog, MARKET_FILE};
use crate::lake::LakeRoot;

/// A run of dates' features for a list of symbols.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FeatureWork {
    /// The lake's root as a URL every process resolves alike.
    pub(super) root: String,
    /// The feature files, `(path, sql)`: the executor builds the catalog
    /// from them (it needs no `queries/` folder).
    pub(super) sources: Vec<(String, String)>,
    /// The bucket query of the `market` table.
    pub(super) market_sql: String,
    /// The catalog's hash, which the executor's must equal.
    pub(super) hash: String,
    /// First and last date of the run (`YYYY-MM-DD`).
    pub(super) first: String,
    pub(super) last: String,
    /// The symbols, sorted.
    pub(super) symbols: Vec<String>,
    /// Partitions: blocks of the symbols, run side by side.
    pub(super) partitions: usize,
    /// The lake folder the files go to, until the coordinator moves them in.
    pub(super) staging: String,
}

/// The schema of what feature work answers: the rows written and the
/// files holding them (one per line).
pub(super) fn answer_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("rows", DataType::UInt64, false),
        Field::new("files", DataType::Utf8, false),
    ]))
}

fn failed(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

impl FeatureWork {
    /// The coordinator's catalog, made again from its files.
    async fn catalog(&self) -> Result<Catalog> {
        let sources = self
            .sources
            .iter()
            .map(|(p, sql)| (PathBuf::from(p), sql.clone()))
            .collect();
        let mut catalog = Catalog::from_sources(sources).await.map_err(failed)?;
        if catalog.market_sql() != self.market_sql {
            catalog = catalog
                .with_market_sql(Path::new(MARKET_FILE), self.market_sql.clone())
                .await
                .map_err(failed)?;
        }
        if catalog.hash() != self.hash {
            return Err(DataFusionError::Execution(format!(
                "the feature files made a catalog {} here, {} on the coordinator",
                catalog.hash(),
                self.hash
            )));
        }
        Ok(catalog)
    }

    /// Computes and writes the features of the run for `symbols` (a block
    /// of the work's).
    pub(super) async fn run(&self, symbols: &[String], root: &LakeRoot) -> Result<RecordBatch> {
        let (rows, files) = if symbols.is_empty() {
            (0, Vec::new())
        } else {
            let clock = std::time::Instant::now();
            let catalog = self.catalog().await?;
            let (first, last) = (date(&self.first)?, date(&self.last)?);
            let (rows, files) =
                backfill_symbols(root, &catalog, first, last, symbols, &self.staging)
                    .await
                    .map_err(failed)?;
            tracing::info!(%first, %last, symbols = symbols.len(), rows,
                secs = clock.elapsed().as_secs_f64(), "Features written.");
            (rows, files)
        };
        let files: Vec<String> = files.iter().map(ToString::to_string).collect();
        let rows: ArrayRef = Arc::new(UInt64Array::from(vec![rows]));
        let files: ArrayRef = Arc::new(StringArray::from(vec![files.join("\n")]));
        Ok(RecordBatch::try_new(answer_schema(), vec![rows, files])?)
    }
}

/// Computes the features of the dates `first..=last` for `symbols`
/// (sorted) on the session's cluster, each task writing its block's files
/// into the lake at `root`, under the folder `staging` (see
/// [`backfill_symbols`]); returns the rows written and the files (lake
/// paths) holding them.
pub async fn features_on_cluster(
    ctx: &SessionContext,
    root: &LakeRoot,
    catalog: &Catalog,
    first: NaiveDate,
    last: NaiveDate,
    symbols: &[String],
    staging: &str,
) -> Result<(u64, Vec<object_store::path::Path>)> {
    let work = Work::Features(FeatureWork {
        root: root.url(),
        sources: catalog
            .files()
            .iter()
            .map(|f| (f.path.display().to_string(), f.sql.clone()))
            .collect(),
        market_sql: catalog.market_sql().to_owned(),
        hash: catalog.hash().to_owned(),
        first: first.format("%Y-%m-%d").to_string(),
        last: last.format("%Y-%m-%d").to_string(),
        symbols: symbols.to_vec(),
        partitions: ctx
            .state()
            .config()
            .target_partitions()
            .clamp(1, symbols.len().max(1)),
        staging: staging.to_owned(),
    });
    let mut rows = 0;
    let mut files = Vec::new();
    for batch in run_work(ctx, "feature_work", work).await? {
        let n = column::<UInt64Array>(&batch, 0)?;
        let listed = column::<StringArray>(&batch, 1)?;
        for i in 0..batch.num_rows() {
            rows += n.value(i);
            for p in listed.value(i).lines() {
                files.push(object_store::path::Path::parse(p).map_err(|e| {
                    DataFusionError::Internal(format!("an executor answered a bad path: {e}"))
                })?);
            }
        }
    }
    Ok((rows, files))
}
