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
//!
//! The streaming sources ([`kafka::KafkaSource`], and
//! [`replay::BatchReplay`] for in-process replays) also say where each tick
//! came from and what happened to their partitions ([`StreamBatch`]), which
//! is what the streaming driver needs to resume, warm up and rebalance.

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

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{BinaryArray, RecordBatch};

use crate::tick::{Reject, RejectReason};

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
    /// A partitioned stream (a Kafka topic): per partition, the first
    /// offset not yet fully processed.
    Partitions {
        /// The topic.
        topic: String,
        /// Partition → next offset.
        next: BTreeMap<i32, i64>,
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
    /// Where each tick came from, for partitioned streams (`None` for
    /// files and feeds read once).
    pub stream: Option<StreamBatch>,
}

/// What a partitioned, resumable stream adds to a [`SourceBatch`]: where each
/// tick came from, the messages that were not ticks, and what happened to
/// the partitions while the batch filled. The per-tick vectors are aligned
/// with [`SourceBatch::ticks`].
#[derive(Debug, Clone)]
pub struct StreamBatch {
    /// Messages read, every one (those skipped after a seek included).
    pub messages: u64,
    /// Source partition of each tick.
    pub partitions: Vec<i32>,
    /// Source offset of each tick.
    pub offsets: Vec<i64>,
    /// Arrival of each tick (wall clock, µs since the epoch); `None`: now.
    pub arrived_us: Option<Vec<i64>>,
    /// Per tick, whether it was replayed as history after a seek (warm-up):
    /// it restores state and is never emitted.
    pub warm: Vec<bool>,
    /// Each tick's message as received, for a dead letter if the tick is
    /// refused later (as late).
    pub payloads: BinaryArray,
    /// Messages that did not become ticks.
    pub refused: Vec<RefusedMessage>,
    /// Watermark messages read (a producer's word that no later tick of
    /// the partition is older), in order; neither ticks nor refused.
    pub watermarks: Vec<PartitionWatermark>,
    /// Partitions whose end was reached during the fill, in order, with
    /// when (time into the fill).
    pub caught_up: Vec<(i32, Duration)>,
    /// Partitions assigned since the last batch (and still assigned).
    pub assigned: Vec<i32>,
    /// Partitions taken away since the last batch (and not given back):
    /// their ticks of this batch are still processed, then their state is
    /// dropped.
    pub revoked: Vec<i32>,
    /// The partitions assigned at the end of the fill.
    pub assignment: Vec<i32>,
    /// Time the fill spent waiting for input: the idle clock of the stream
    /// (processing time, outages included, never counts as idleness).
    pub waited: Duration,
    /// Consumer lag per partition, when the source knows it.
    pub lag: Option<BTreeMap<i32, i64>>,
    /// Offset gaps found after seeks (partition, expected, first found).
    pub gaps: Vec<OffsetGap>,
    /// The consumer group's generation at the end of the fill (Kafka): it
    /// fences the offsets stored for this batch.
    pub generation: Option<i32>,
}

/// A watermark message of a partitioned stream: its producer has sent
/// every tick older than `ts_us` to the partition, so the partition's event
/// time is at least `ts_us`, as if a tick of that time had arrived
/// (see [`kafka::WATERMARK_HEADER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionWatermark {
    /// The partition.
    pub partition: i32,
    /// The message's offset (positions move past it).
    pub offset: i64,
    /// The event time announced (µs since the epoch). Warm-up replays
    /// apply it too: it says the same thing it said when first read.
    pub ts_us: i64,
}

impl StreamBatch {
    /// An empty stream batch (nothing read, nothing happened).
    pub fn empty() -> Self {
        StreamBatch {
            messages: 0,
            partitions: Vec::new(),
            offsets: Vec::new(),
            arrived_us: None,
            warm: Vec::new(),
            payloads: BinaryArray::from(Vec::<&[u8]>::new()),
            refused: Vec::new(),
            watermarks: Vec::new(),
            caught_up: Vec::new(),
            assigned: Vec::new(),
            revoked: Vec::new(),
            assignment: Vec::new(),
            waited: Duration::ZERO,
            lag: None,
            gaps: Vec::new(),
            generation: None,
        }
    }
}

/// A message of a stream that is not a valid tick, kept whole for the dead
/// letters.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedMessage {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// The message as received.
    pub payload: Vec<u8>,
    /// Why it was refused.
    pub reason: RejectReason,
    /// The decoder's or validator's words.
    pub detail: String,
    /// Read during a warm-up (already dead-lettered by the run that first
    /// read it).
    pub warm: bool,
}

/// A partition whose offsets jump past where a seek put the consumer:
/// retention deleted the records, or the topic was recreated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetGap {
    /// The partition.
    pub partition: i32,
    /// The offset the consumer was positioned on.
    pub expected: i64,
    /// The first offset that exists there.
    pub found: i64,
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
    /// A Kafka call failed; `context` names the topic (and partition).
    #[error("Kafka ({context}): {source}")]
    Kafka {
        /// What was being done, on which topic.
        context: String,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Reading the stored positions of a stream failed for good.
    #[error("loading the stored offsets of {topic}: {detail}")]
    Offsets {
        /// The topic.
        topic: String,
        /// What failed.
        detail: String,
    },
    /// A stop was asked for while the source waited on something that must
    /// finish first (the stored offsets during an outage).
    #[error("stopped by a signal while {what}")]
    Stopped {
        /// What was in progress.
        what: String,
    },
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
///
/// Partitioned streams also fill [`SourceBatch::stream`] and implement
/// [`behind`](Source::behind) and [`partition_count`](Source::partition_count),
/// which the streaming driver uses to close market buckets; a stream never
/// ends, so its `next_batch` returns empty batches while nothing arrives.
///
/// Reading a source to its end, as `ingest` does: valid ticks arrive as
/// Arrow batches, refused records beside them with their reasons.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use stockanomaly::sources::csv::{CsvFormat, CsvSource};
/// use stockanomaly::sources::Source;
/// use stockanomaly::tick::Validator;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("trades.csv");
/// std::fs::write(
///     &path,
///     "ts,symbol,price,volume\n\
///      2024-01-02T14:30:00Z,AAPL,190.2,100\n\
///      2024-01-02T14:30:01Z,AAPL,-1,5\n",
/// )?;
/// let mut source = CsvSource::open(&path, CsvFormat::Auto, Validator::new())?;
/// let (mut ticks, mut rejects) = (0, Vec::new());
/// while let Some(batch) = source.next_batch().await? {
///     ticks += batch.ticks.num_rows();
///     rejects.extend(batch.rejects);
///     source.commit(&batch.position).await?;
/// }
/// // The negative price is refused, not dropped: it comes back with why.
/// assert_eq!((ticks, rejects.len()), (1, 1));
/// # Ok(()) }
/// ```
#[async_trait::async_trait]
pub trait Source: Send {
    /// The next batch, or `None` at the end of a bounded input.
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError>;

    /// Marks everything up to `upto` as processed.
    async fn commit(&mut self, upto: &Position) -> Result<(), SourceError> {
        let _ = upto;
        Ok(())
    }

    /// Of `partitions` (whose end was reached earlier), those that hold
    /// unread messages now. Sources without partitions have none.
    fn behind(&self, partitions: &[i32]) -> Vec<i32> {
        let _ = partitions;
        Vec::new()
    }

    /// How many partitions the source's topic has (`None`: unknown, or not
    /// a partitioned stream).
    fn partition_count(&self) -> Option<usize> {
        None
    }

    /// Called again and again while the sinks take long over a batch (an
    /// outage): keeps the source's membership alive without reading ahead
    /// (a consumer group polls with its partitions paused, so the member is
    /// not evicted for not polling). Each call returns after a short while;
    /// the default never returns (nothing to keep alive).
    async fn idle(&mut self) {
        std::future::pending::<()>().await;
    }

    /// Leaves cleanly (a consumer group: at once, so the partitions move to
    /// the other members without waiting for the session timeout).
    async fn close(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}
