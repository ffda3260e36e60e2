//! Sources: everything that turns outside data into tick batches.
//!
//! Every adapter implements [`Source`], so the stages downstream (the lake
//! writer, the streaming executor) never know which one they read.
//!
//! The live feeds ([`alpaca`], [`polygon`], [`finnhub`]) start with their
//! pure frame decoders, which share [`feed`]'s events, counters and
//! amendment batches; [`history`] fetches their REST history page by page;
//! [`live`] keeps a feed's connection up and fills the gaps of its drops
//! from that history, as a [`Source`].

pub mod alpaca;
pub mod csv;
pub mod feed;
pub mod finnhub;
pub mod history;
pub mod kafka;
pub mod live;
pub mod polygon;
pub mod replay;
pub mod simulate;

use arrow::array::RecordBatch;

use crate::tick::Reject;

/// Where a source is, so that it can resume after the last committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A file read up to `line` (the last line consumed, 1-based) and `byte`.
    File {
        /// The file.
        path: String,
        /// Last line consumed.
        line: u64,
        /// Byte offset after it.
        byte: u64,
    },
    /// The simulator after `day` trading days.
    Simulated {
        /// Days produced so far.
        day: usize,
    },
    /// A lake replay up to its `ticks`-th tick, the last one returned,
    /// `(symbol, ts_us, seq)`.
    Replay {
        /// Event time of the last tick returned, µs.
        ts_us: i64,
        /// Its `seq`.
        seq: u32,
        /// Its symbol.
        symbol: String,
        /// Ticks returned so far.
        ticks: u64,
    },
    /// A live feed after `ticks` ticks. Feeds cannot replay: a restart
    /// resumes from now (a gap the REST history can fill by
    /// `ingest history`).
    Live {
        /// The feed.
        feed: &'static str,
        /// Ticks returned so far.
        ticks: u64,
    },
}

/// One batch from a source: valid ticks, labels the input carried (annotated
/// formats, the simulator), the records it refused, and where it stands.
#[derive(Debug, Clone)]
pub struct SourceBatch {
    /// Valid ticks, [`tick_schema`](crate::tick::tick_schema).
    pub ticks: RecordBatch,
    /// Label intervals, [`label_schema`](crate::labels::label_schema), if any.
    pub labels: Option<RecordBatch>,
    /// What a live feed said about ticks it sent earlier (corrections,
    /// cancels, revised bars),
    /// [`amendment_schema`](crate::sources::feed::amendment_schema), if any.
    pub amendments: Option<RecordBatch>,
    /// Refused records with their reasons.
    pub rejects: Vec<Reject>,
    /// The position after this batch.
    pub position: Position,
}

/// Errors a source can end with (bad records are not errors: they are
/// [`Reject`]s inside a batch).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the input failed.
    #[error("{origin}: {source}")]
    Io {
        /// File or endpoint.
        origin: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The input is not in the expected format at all (as opposed to a bad
    /// record inside a good file).
    #[error("{origin}: {reason}")]
    Format {
        /// File or endpoint.
        origin: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A live feed stopped for good (refused credentials, gave up
    /// reconnecting).
    #[error(transparent)]
    Feed(#[from] feed::connect::FeedError),
    /// Reading the lake failed (replays).
    #[error("{origin}: {source}")]
    Lake {
        /// The lake table.
        origin: String,
        /// The lake's error.
        #[source]
        source: crate::lake::LakeError,
    },
}

/// A source of tick batches.
///
/// Implement [`next_batch`](Source::next_batch) to decode the next chunk of
/// input into Arrow batches (never a row at a time), and
/// [`commit`](Source::commit) to make a position durable once everything
/// downstream has accepted the batches before it. Sources that cannot resume
/// (files read once) may ignore `commit`.
#[async_trait::async_trait]
pub trait Source: Send {
    /// The next batch, or `None` at the end of a bounded input.
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError>;

    /// Marks everything up to `upto` as processed.
    async fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
        let _ = upto;
        Ok(())
    }
}
