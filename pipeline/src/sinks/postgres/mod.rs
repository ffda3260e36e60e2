//! PostgreSQL sink: connection ([`connect`]), embedded versioned migrations
//! ([`migrate`]), the writes the streaming detector makes
//! ([`commit_batch`], [`load_offsets`], [`register_model`], [`write_stats`])
//! and the detector's [`AlertSink`](crate::sinks::AlertSink) and offset
//! store over them ([`PostgresSink`], [`PgOffsetStore`]).
//!
//! Every fallible call returns [`DbError`]; [`DbError::is_retryable`] tells a
//! lost or refused connection (reconnect and retry the batch) from a schema
//! or data mistake (retrying will not help).

mod cases;
mod connect;
mod detector;
mod error;
mod migrate;
mod reconnect;
mod sink;
mod ticks;
mod tls;

pub use cases::{load_open_cases, write_cases};
pub use connect::{connect, describe_target};
pub use detector::{
    shared, PgCaseStore, PgOffsetStore, PostgresSink, SharedDb, ANSWER_TIMEOUT, STATEMENT_TIMEOUT,
};
pub use error::DbError;
pub use migrate::{applied_migrations, migrate, AppliedMigration, Migration, MIGRATIONS};
pub use reconnect::Reconnecting;
pub use sink::{
    commit_batch, commit_batch_fenced, commit_output, load_offsets, register_model, write_stats,
    AlertRow, CommitStats, DeadLetterRow, OffsetRow, StatsRow,
};
pub use ticks::{write_ticks, TickWriteStats};
pub(crate) use ticks::{StoreColumns, COPY_COLUMNS};
