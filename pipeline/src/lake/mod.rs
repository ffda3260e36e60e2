//! The Parquet lake: where ticks, labels and (later) features, scores and
//! alerts live, under a root that is a local folder or an object-store URL.
//!
//! Layout under the root: `<table>/date=YYYY-MM-DD/part-<hash>.parquet`,
//! Hive-style partitions by the UTC date of each row's event time, rows sorted
//! by the table's key inside every file, zstd-compressed. File names are the
//! hash of their content: appending data that is already there writes
//! nothing, and an existing file is never rewritten.

mod appender;
mod context;
mod error;
pub mod live;
mod root;
mod sort;
mod table;

pub use appender::{
    date_string, replace_date, replace_named, AppendStats, Appender, AppenderOptions, ReplaceStats,
};
pub use context::{register_table, schema_session, session_context, with_date, with_partitions};
pub use error::LakeError;
pub use root::LakeRoot;
pub use sort::sort_by;
pub use table::TableSpec;

/// Environment variable naming the default lake root of every command.
pub const LAKE_ENV: &str = "STOCKANOMALY_LAKE";

/// The lake root used when none is given: `parquet/` in the working folder.
pub const DEFAULT_LAKE: &str = "parquet";
