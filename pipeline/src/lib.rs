//! StockAnomaly: detects anomalous and manipulative trading in market data.
//!
//! Data flows down the modules: [`sources`] decode outside data into
//! [`tick`] batches, the [`lake`] stores them as Parquet, and the CLI in
//! [`cli`] ties the stages into commands.

pub mod backoff;
pub mod cli;
pub mod cluster;
pub mod features;
pub mod ingest;
pub mod labels;
pub mod lake;
pub mod live_ingest;
pub mod model;
pub mod review;
pub mod shutdown;
pub mod sinks;
pub mod sources;
pub mod stream;
pub mod symbols;
pub mod tick;
pub mod web;

pub use stockanomaly_udfs as udfs;
