//! The lake's context tables a streaming detector needs, checked before it
//! starts.
//!
//! Feature files may join tables beyond `ticks`: `symbols` (exchange
//! sessions), `profiles` (intraday seasonality), `betas` and `market`. A
//! detector whose lake lacks them computes those features as NULL and
//! alerts on other numbers than backfill and `score` do, silently. So
//! [`context_tables`] finds what the catalog reads (from the planned
//! queries, not the text) and how each table will be had: stored in the
//! lake, made from the lake's ticks (profiles, betas; symbols default to
//! New York as backfill does), or computed from the stream itself
//! (`market`). A table that can be had none of these ways is
//! [`ContextError::Missing`], which `detect` turns into a refusal to start.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use futures::TryStreamExt;

use crate::features::Catalog;
use crate::lake::{LakeError, LakeRoot};

/// The context tables feature files may read.
const CONTEXT: [&str; 4] = ["symbols", "profiles", "betas", "market"];

/// How a detector gets a context table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextSource {
    /// The lake has it.
    Stored,
    /// The lake has ticks to make it from, as backfill would (profiles,
    /// betas; `symbols` missing means New York for every symbol, as in
    /// backfill over the same lake).
    FromTicks,
    /// The stream itself: the in-process market closer, or a
    /// market-context stage's topic.
    Stream,
}

impl std::fmt::Display for ContextSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContextSource::Stored => "stored in the lake",
            ContextSource::FromTicks => "made from the lake's ticks",
            ContextSource::Stream => "computed from the stream",
        })
    }
}

/// A context table the catalog reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextTable {
    /// The table.
    pub table: &'static str,
    /// The feature files reading it (file names).
    pub files: Vec<String>,
    /// Where it will come from.
    pub source: ContextSource,
}

/// Why the context tables are not there.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Tables the feature files read are neither stored nor makeable.
    #[error(
        "the feature files read the lake's {}, but the lake {lake} has {} and no ticks to make \
         {} from: those features would be NULL and the alerts differ from backfill's; give \
         --lake (or STOCKANOMALY_LAKE) the lake the feature set was backfilled on",
        missing_list(tables),
        if tables.len() == 1 { "no such table" } else { "none of them" },
        if tables.len() == 1 { "it" } else { "them" }
    )]
    Missing {
        /// Each missing table, with the files reading it.
        tables: Vec<(&'static str, String)>,
        /// The lake.
        lake: String,
    },
    /// A feature file could not be planned.
    #[error("{file}: {source}")]
    Plan {
        /// The file.
        file: String,
        /// DataFusion's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// The lake could not be listed.
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// "`betas` (returns.sql) and `profiles` (seasonality) tables".
fn missing_list(tables: &[(&'static str, String)]) -> String {
    let named: Vec<String> = tables
        .iter()
        .map(|(t, files)| format!("`{t}` ({files})"))
        .collect();
    match named.as_slice() {
        [one] => format!("{one} table"),
        [rest @ .., last] => format!("{} and {last} tables", rest.join(", ")),
        [] => "tables".into(),
    }
}

/// The context tables `catalog` reads and where each will come from;
/// `external_market`: the market rows come from a market-context stage
/// (whose own lake makes them). See the module documentation.
pub async fn context_tables(
    catalog: &Catalog,
    root: &LakeRoot,
    external_market: bool,
) -> Result<Vec<ContextTable>, ContextError> {
    let mut reads: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let ctx = crate::lake::schema_session();
    let mut queries: Vec<(String, &str)> = catalog
        .files()
        .iter()
        .map(|f| (f.name.clone(), f.sql.as_str()))
        .collect();
    if catalog.uses_market() && !external_market {
        // The detector computes the market rows itself, with the bucket
        // query, which reads context of its own.
        queries.push(("market/buckets.sql".into(), catalog.market_sql()));
    }
    for (name, sql) in queries {
        let plan = ctx
            .state()
            .create_logical_plan(sql)
            .await
            .map_err(|source| ContextError::Plan {
                file: name.clone(),
                source,
            })?;
        for table in scanned(&plan) {
            if let Some(t) = CONTEXT.iter().find(|c| **c == table) {
                let files = reads.entry(t).or_default();
                if !files.contains(&name) {
                    files.push(name.clone());
                }
            }
        }
    }
    let has_ticks = table_has_files(root, "ticks").await?;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for (table, files) in reads {
        let source = if table == "market" {
            ContextSource::Stream
        } else if table_has_files(root, table).await? {
            ContextSource::Stored
        } else if has_ticks {
            ContextSource::FromTicks
        } else {
            missing.push((table, files.join(", ")));
            continue;
        };
        out.push(ContextTable {
            table,
            files,
            source,
        });
    }
    if !missing.is_empty() {
        return Err(ContextError::Missing {
            tables: missing,
            lake: root.to_string(),
        });
    }
    Ok(out)
}

/// Names of the tables `plan` scans, subqueries included.
fn scanned(plan: &LogicalPlan) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            out.insert(scan.table_name.table().to_owned());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// Whether the lake holds any Parquet file of `table`.
async fn table_has_files(root: &LakeRoot, table: &str) -> Result<bool, LakeError> {
    let prefix = root.path(table);
    let mut files = root.store().list(Some(&prefix));
    loop {
        match files.try_next().await {
            Ok(Some(meta)) if meta.location.as_ref().ends_with(".parquet") => return Ok(true),
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(false),
            Err(source) => {
                return Err(LakeError::Store {
                    path: prefix.to_string(),
                    source,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_default_pack_reads_every_context_table_and_an_empty_lake_has_none() {
        let catalog = Catalog::embedded().await.unwrap();
        let root = LakeRoot::parse("memory://context-empty").unwrap();
        let e = context_tables(&catalog, &root, false).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ContextError::Missing { .. }), "{text}");
        assert!(text.contains("--lake"), "{text}");
        // Every missing table is named, not only the first.
        for t in ["betas", "profiles", "symbols"] {
            assert!(text.contains(&format!("`{t}` (")), "{t}: {text}");
        }
        assert!(text.contains("none of them"), "{text}");
    }

    #[tokio::test]
    async fn the_tables_read_come_from_the_plans() {
        let catalog = Catalog::embedded().await.unwrap();
        let mut read = BTreeSet::new();
        let ctx = crate::lake::schema_session();
        for f in catalog.files() {
            let plan = ctx.state().create_logical_plan(&f.sql).await.unwrap();
            read.extend(scanned(&plan));
        }
        for t in ["ticks", "symbols", "profiles", "betas", "market"] {
            assert!(read.contains(t), "{t} in {read:?}");
        }
    }
}
