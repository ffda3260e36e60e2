//! Features: the catalog of SQL feature files in `queries/features/`, what
//! history each needs (its lookback), and running them over the lake.
//!
//! A feature file is one DataFusion SQL query over the table `ticks` that
//! returns the tick key (`symbol`, `ts`, `seq`) plus numeric feature columns.
//! The same files drive backfills and the streaming detector, so the catalog
//! refuses anything whose value for a tick could depend on more than a
//! bounded stretch of that symbol's past: frames that look into the future,
//! unbounded frames, position-dependent functions, and `RANGE` frames whose
//! bare number DataFusion would silently read as months.

mod ahead;
mod backfill;
pub mod buckets;
mod catalog;
mod compute;
mod error;
mod header;
pub mod incremental;
mod lookback;
pub mod market;
mod market_table;
mod medians;
mod probe_order;
pub mod profiles;

pub(crate) use backfill::conform;
pub use backfill::{
    backfill, backfill_symbols, feature_query, features_table, snapshot_session, training_session,
    BackfillError, BackfillOptions, BackfillSummary, CHUNK_TICKS, ROWS_SEARCH_DAYS,
};
pub(crate) use catalog::read_sql_folder;
pub use catalog::{Catalog, FeatureFile, DEFAULT_QUERIES, MARKET_FILE, QUERIES_ENV};
pub use compute::{compute_features, line_up_files};
pub use error::{CatalogError, CatalogErrors};
pub use header::Header;
pub use lookback::Lookback;
pub use probe_order::{with_sorted_probe_side, SortedProbeSide};
