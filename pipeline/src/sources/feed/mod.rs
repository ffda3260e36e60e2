//! What the live-feed adapters share: the [`FrameDecoder`] trait each feed's
//! decoder implements, the control events a connection loop acts on
//! ([`FeedEvent`], [`FaultAction`]), the counters, and the batch a decoder
//! hands over ([`FeedBatch`]: ticks, [`amend`]ments and rejects).
//!
//! Decoders are pure: bytes of one WebSocket frame (or one REST page) in,
//! rows appended to Arrow builders and events out. The connection loop that
//! owns sockets, reconnects and backoff lives apart, in [`connect`], so
//! decoding is tested without a network and benchmarked without one.
//!
//! Quotes do not become ticks of their own: the tick model carries quotes as
//! the `bid`/`ask` columns of trades (as the simulator produces them), so a
//! decoder keeps each symbol's latest quote and stamps it on the symbol's
//! next trades. Bars go through the `bars` book so that a re-sent bar
//! replaces, never duplicates, its minute.

pub mod amend;
pub(crate) mod bars;
pub mod connect;
pub(crate) mod json;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use arrow::array::RecordBatch;

pub use amend::{amend_col, amendment_schema, AmendmentBuilder, AmendmentKind, AmendmentRecord};
use bars::{Bar, BarBook, Staged};

use crate::tick::{Reject, Rejection, TickBuilder, TickRecord, Validator};

/// A market data feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feed {
    /// Alpaca Market Data v2.
    Alpaca,
    /// Polygon.io / Massive stocks.
    Polygon,
    /// Finnhub trades.
    Finnhub,
}

impl Feed {
    /// The feed's name, also the `source` column of its ticks.
    pub fn name(self) -> &'static str {
        match self {
            Self::Alpaca => "alpaca",
            Self::Polygon => "polygon",
            Self::Finnhub => "finnhub",
        }
    }
}

impl fmt::Display for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a connection loop should do about a [`FeedFault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Stop and report: retrying cannot help (bad credentials, a plan that
    /// does not include the data); the fault's message names the fix.
    Fatal,
    /// Drop the connection and connect again with backoff, waiting at least
    /// `min_delay` before the first attempt.
    Reconnect {
        /// The shortest sensible wait (a connection limit frees up slowly).
        min_delay: Duration,
    },
    /// Log and count it; the connection stays up.
    Continue,
}

/// A control message that reports a problem, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{feed}: {}{message}: {cause}", .code.map(|c| format!("error {c}: ")).unwrap_or_default())]
pub struct FeedFault {
    /// The feed that sent it.
    pub feed: Feed,
    /// The feed's numeric code, if it has one (Alpaca's 402).
    pub code: Option<i64>,
    /// The feed's own words (`auth failed`, `max_connections`).
    pub message: String,
    /// What it means for us and what to do, in a sentence.
    pub cause: &'static str,
    /// How the connection loop reacts.
    pub action: FaultAction,
}

/// A control message, decoded: what a connection loop needs to drive the
/// handshake and to decide between carrying on, reconnecting and stopping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// The server greeted a new connection; authenticate now.
    Connected,
    /// Credentials accepted; subscribe now.
    Authenticated,
    /// A subscription was acknowledged; `detail` is the feed's own account of
    /// it (Alpaca lists the full subscription state).
    Subscribed {
        /// The acknowledgement as sent.
        detail: String,
    },
    /// An application-level keepalive from the server (Finnhub): the
    /// connection is alive even if no data comes.
    Ping,
    /// A status worth logging that asks for nothing.
    Notice {
        /// The feed's words.
        message: String,
    },
    /// A problem, classified.
    Fault(FeedFault),
}

impl FeedEvent {
    /// What a connection loop should do after this event.
    pub fn action(&self) -> FaultAction {
        match self {
            Self::Fault(f) => f.action,
            _ => FaultAction::Continue,
        }
    }
}

/// Counts by message type, for unknown or skipped types: bounded, so a feed
/// sending garbage types cannot grow it without limit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TypeCounts {
    named: Vec<(String, u64)>,
    other: u64,
}

/// Distinct type names remembered by a [`TypeCounts`]; more are counted
/// together as `other`.
const MAX_TYPE_NAMES: usize = 16;

impl TypeCounts {
    /// Counts one message of type `name`.
    pub fn add(&mut self, name: &str) {
        if let Some((_, n)) = self.named.iter_mut().find(|(k, _)| k == name) {
            *n += 1;
        } else if self.named.len() < MAX_TYPE_NAMES {
            self.named.push((name.to_owned(), 1));
        } else {
            self.other += 1;
        }
    }

    /// All messages counted.
    pub fn total(&self) -> u64 {
        self.named.iter().map(|(_, n)| n).sum::<u64>() + self.other
    }

    /// Messages of type `name` (exact only while fewer than 16 types were
    /// seen).
    pub fn get(&self, name: &str) -> u64 {
        self.named
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, n)| *n)
    }
}

impl fmt::Display for TypeCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, n) in &self.named {
            write!(f, "{}{k:?} {n}", if first { "" } else { ", " })?;
            first = false;
        }
        if self.other > 0 {
            write!(f, "{}other {}", if first { "" } else { ", " }, self.other)?;
        } else if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

/// What a decoder has seen since it was made (never reset by
/// [`FrameDecoder::finish`], so a status line can show totals).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FeedCounters {
    /// Frames (or pages) decoded.
    pub frames: u64,
    /// Messages inside them.
    pub messages: u64,
    /// Trades that became ticks.
    pub trades: u64,
    /// Quotes that updated a symbol's bid and ask.
    pub quotes: u64,
    /// Bars for a new minute.
    pub bars: u64,
    /// Re-sent bars that replaced a pending bar of the same minute.
    pub bars_replaced: u64,
    /// Amendments recorded (corrections, cancels, bar revisions).
    pub amendments: u64,
    /// Control messages (greetings, acks, errors, pings).
    pub controls: u64,
    /// Records refused (also in the batch's rejects).
    pub rejects: u64,
    /// Known message types that carry nothing for the tick model (daily
    /// bars, trading status), by type.
    pub skipped: TypeCounts,
    /// Message types the decoder does not know, by type: ignored, as the
    /// feeds ask (forum.alpaca.markets/t/8116), but counted.
    pub unknown: TypeCounts,
}

/// What a decoder produced since its last [`FrameDecoder::finish`].
#[derive(Debug, Clone)]
pub struct FeedBatch {
    /// Valid ticks, [`tick_schema`](crate::tick::tick_schema).
    pub ticks: RecordBatch,
    /// Valid amendments, [`amendment_schema`].
    pub amendments: RecordBatch,
    /// Records refused, each with its frame number and reason.
    pub rejects: Vec<Reject>,
}

/// A REST history response that is not a page of history at all (as
/// opposed to a bad record inside a good page, which is a [`Reject`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The body is not the documented JSON shape.
    #[error("{feed} {endpoint}: the response is not a page of history: {reason}")]
    Malformed {
        /// The feed.
        feed: Feed,
        /// The endpoint's path (`/v2/stocks/bars`).
        endpoint: &'static str,
        /// What is wrong, with the parser's position.
        reason: String,
    },
    /// The body is the API's error report.
    #[error("{feed} {endpoint}: the API answered {status}: {message}")]
    Api {
        /// The feed.
        feed: Feed,
        /// The endpoint's path.
        endpoint: &'static str,
        /// The API's status word (`ERROR`, `NOT_AUTHORIZED`), if any.
        status: String,
        /// The API's message.
        message: String,
    },
}

/// A decoder of one feed's WebSocket frames.
///
/// Call [`decode`](FrameDecoder::decode) for every text frame as it arrives
/// and act on the events it pushes; call [`finish`](FrameDecoder::finish) at
/// each micro-batch boundary to take the ticks, amendments and rejects
/// decoded since the last call. Decoding never fails and never panics on
/// input: a bad frame or message becomes a [`Reject`] naming the frame, the
/// record and the reason.
pub trait FrameDecoder: Send {
    /// The feed decoded.
    fn feed(&self) -> Feed;

    /// Decodes one frame; control messages are appended to `events`.
    fn decode(&mut self, frame: &[u8], events: &mut Vec<FeedEvent>);

    /// Takes everything decoded since the last call. Bars held for possible
    /// re-sends are released here.
    fn finish(&mut self) -> FeedBatch;

    /// Totals since the decoder was made.
    fn counters(&self) -> &FeedCounters;
}

/// A symbol's latest quote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quote {
    pub bid: f64,
    pub ask: f64,
    pub bid_size: f64,
    pub ask_size: f64,
}

/// The state and builders every feed decoder has; each feed adds only its
/// message layouts.
#[derive(Debug)]
pub(crate) struct FeedCore {
    pub feed: Feed,
    validator: Validator,
    pub ticks: TickBuilder,
    pub amendments: AmendmentBuilder,
    bars: BarBook,
    quotes: HashMap<String, Quote>,
    rejects: Vec<Reject>,
    pub counters: FeedCounters,
    /// Spans of the current frame's messages (kept to reuse its memory).
    pub spans: Vec<(usize, usize)>,
}

impl FeedCore {
    pub fn new(feed: Feed, validator: Validator) -> Self {
        Self {
            feed,
            ticks: TickBuilder::with_validator(feed.name(), validator.clone()),
            amendments: AmendmentBuilder::new(feed.name(), validator.clone()),
            validator,
            bars: BarBook::default(),
            quotes: HashMap::new(),
            rejects: Vec::new(),
            counters: FeedCounters::default(),
            spans: Vec::new(),
        }
    }

    /// Records a refused record of the current frame.
    pub fn reject(&mut self, rejection: Rejection, record: &[u8]) {
        self.reject_at(self.counters.frames, rejection, record);
    }

    /// Records a refused record at `line` (a frame number for streams, a
    /// record number for REST history).
    pub fn reject_at(&mut self, line: u64, rejection: Rejection, record: &[u8]) {
        self.counters.rejects += 1;
        self.rejects.push(Reject::new(
            self.feed.name(),
            line,
            rejection,
            json::record_text(record),
        ));
    }

    /// Appends a trade, with the symbol's latest quote if it has one.
    pub fn trade(&mut self, mut rec: TickRecord<'_>) -> Result<(), Rejection> {
        if let Some(q) = self.quotes.get(rec.symbol) {
            rec.bid = Some(q.bid);
            rec.ask = Some(q.ask);
            rec.bid_size = Some(q.bid_size);
            rec.ask_size = Some(q.ask_size);
        }
        self.ticks.push(&rec)?;
        self.counters.trades += 1;
        Ok(())
    }

    /// Validates a quote as the trade columns it will fill, then makes it the
    /// symbol's latest.
    pub fn quote(&mut self, ts_us: i64, symbol: &str, q: Quote) -> Result<(), Rejection> {
        self.validator.check(&TickRecord {
            bid: Some(q.bid),
            ask: Some(q.ask),
            bid_size: Some(q.bid_size),
            ask_size: Some(q.ask_size),
            ..TickRecord::trade(ts_us, symbol, 1.0, 0.0)
        })?;
        match self.quotes.get_mut(symbol) {
            Some(slot) => *slot = q,
            None => {
                self.quotes.insert(symbol.to_owned(), q);
            }
        }
        self.counters.quotes += 1;
        Ok(())
    }

    /// Validates a bar and stages it in the bar book: a new minute waits for
    /// [`finish`](Self::finish), a re-send replaces the pending bar or, once
    /// emitted, becomes a [`AmendmentKind::BarRevision`].
    pub fn bar(&mut self, start_us: i64, symbol: &str, bar: Bar) -> Result<(), Rejection> {
        self.validator.check(&TickRecord {
            open: Some(bar.open),
            high: Some(bar.high),
            low: Some(bar.low),
            ..TickRecord::trade(start_us, symbol, bar.close, bar.volume)
        })?;
        match self.bars.stage(symbol, start_us, bar) {
            Staged::New => self.counters.bars += 1,
            Staged::Replaced => self.counters.bars_replaced += 1,
            Staged::Revision { previous } => {
                self.amendments.push(&AmendmentRecord {
                    price: Some(previous.close),
                    volume: Some(previous.volume),
                    new_price: Some(bar.close),
                    new_volume: Some(bar.volume),
                    new_open: Some(bar.open),
                    new_high: Some(bar.high),
                    new_low: Some(bar.low),
                    ..AmendmentRecord::new(start_us, symbol, AmendmentKind::BarRevision)
                })?;
                self.counters.amendments += 1;
            }
        }
        Ok(())
    }

    /// Appends an amendment.
    pub fn amend(&mut self, r: &AmendmentRecord<'_>) -> Result<(), Rejection> {
        self.amendments.push(r)?;
        self.counters.amendments += 1;
        Ok(())
    }

    /// Splits a frame into the spans of its messages, rejecting it whole if
    /// it is not JSON. Returns the spans (take them back with
    /// [`restore_spans`](Self::restore_spans)).
    pub fn split(&mut self, frame: &[u8]) -> Option<Vec<(usize, usize)>> {
        self.counters.frames += 1;
        let mut spans = std::mem::take(&mut self.spans);
        match json::split_frame(frame, &mut spans) {
            Ok(()) => {
                self.counters.messages += spans.len() as u64;
                Some(spans)
            }
            Err(e) => {
                self.reject(Rejection::malformed(e), frame);
                self.spans = spans;
                None
            }
        }
    }

    /// Gives the span buffer back for the next frame.
    pub fn restore_spans(&mut self, spans: Vec<(usize, usize)>) {
        self.spans = spans;
    }

    /// Releases pending bars into the ticks and takes the batch.
    pub fn finish(&mut self) -> FeedBatch {
        let Self {
            bars,
            ticks,
            rejects,
            counters,
            feed,
            ..
        } = self;
        bars.flush(|symbol, start, b| {
            let rec = TickRecord {
                open: Some(b.open),
                high: Some(b.high),
                low: Some(b.low),
                ..TickRecord::trade(start, symbol, b.close, b.volume)
            };
            // Validated when staged with the same rules; a failure here
            // would still be reported, never dropped.
            if let Err(e) = ticks.push(&rec) {
                counters.rejects += 1;
                rejects.push(Reject::new(feed.name(), counters.frames, e, symbol.into()));
            }
        });
        FeedBatch {
            ticks: self.ticks.finish(),
            amendments: self.amendments.finish(),
            rejects: std::mem::take(&mut self.rejects),
        }
    }
}
