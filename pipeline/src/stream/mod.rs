//! The streaming stage: ticks arrive in micro-batches (Kafka, or an
//! in-process replay), [`executor`] keeps each symbol's lookback of history
//! and computes features and scores exactly as backfill and `score` do, and
//! the alerts go to their sinks with the source positions, together.
//!
//! [`mod@driver`] is the one loop every streaming command runs (fill, step,
//! sink, commit); [`mod@detect`] and [`market_context`] are its two stages and
//! their wiring.

mod alert_rows;
pub mod cases;
pub mod context;
pub mod detect;
pub mod driver;
pub mod executor;
pub mod market;
pub mod market_context;
pub mod metrics;

pub use crate::shutdown::shutdown_signal;
pub use detect::{detect, DetectError, DetectOptions, DetectSummary, ExecutorStage};
pub use driver::{DriverError, DriverOptions, DriverSummary, Processed, Stage};
pub use executor::{
    load_symbols, ticks_in_arrival_order, Executor, ExecutorConfig, ExecutorError, Input, LateTick,
    PartitionPosition, Step, Timings,
};
pub use metrics::Metrics;

pub use crate::tick::now_us;
