//! Errors of the lake, each naming the root, table or file involved.

/// What went wrong reading or writing the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The root string is not a path or a supported URL.
    #[error("lake root {root:?}: {reason}")]
    InvalidRoot {
        /// The root as given.
        root: String,
        /// Why it was refused.
        reason: String,
    },
    /// The object store failed on a path.
    #[error("lake {path}: {source}")]
    Store {
        /// The object path.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// Encoding or decoding Parquet failed.
    #[error("lake {path}: parquet: {source}")]
    Parquet {
        /// The file involved.
        path: String,
        /// Parquet's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow kernel failed (a batch that does not fit the table).
    #[error("lake table {table}: {source}")]
    Arrow {
        /// The table written.
        table: String,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// DataFusion could not register or plan a lake table.
    #[error("lake table {table}: {source}")]
    DataFusion {
        /// The table involved.
        table: String,
        /// DataFusion's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
}
