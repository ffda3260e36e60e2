//! The streaming stage: ticks arrive in micro-batches (Kafka, or an
//! in-process replay), [`executor`] keeps each symbol's lookback of history
//! and computes features and scores exactly as backfill and `score` do, and
//! the alerts go to their sinks with the source positions, together.

pub mod detect;
pub mod executor;

pub use detect::{detect, DetectError, DetectOptions, DetectSummary};
pub use executor::{
    load_symbols, ticks_in_arrival_order, Executor, ExecutorConfig, ExecutorError, Input, LateTick,
    PartitionPosition, Step,
};
