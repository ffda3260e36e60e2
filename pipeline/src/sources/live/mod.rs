//! A live feed as a [`Source`]: the connection loop of
//! [`feed::connect`](super::feed::connect) with the feed's decoder, plus the
//! repair of what connection drops lose.
//!
//! After each drop the next session's first ticks close a [`gap`]; the
//! window is fetched from the feed's REST history ([`HistoryFetcher`]:
//! Alpaca trades or minute bars, Polygon minute aggregates) and only the
//! ticks the stream did not deliver are added, ahead of the new session's,
//! each keyed as the stream would have keyed it. Finnhub has no tick history
//! and Polygon's trades are not fetched (its REST history here is
//! aggregates): their gaps are counted and logged as unfilled, with the
//! window, so an operator can see where the record has a hole.
//!
//! A failing gap fetch (the REST API down past its retries, a plan without
//! history) never stops the stream: the gap is logged and counted as
//! unfilled.

pub mod gap;

use std::fmt;
use std::time::Duration;

use arrow::array::RecordBatch;
use chrono::{DateTime, SecondsFormat, Utc};

use super::alpaca::stream::{AlpacaCredentials, AlpacaStream, AlpacaSubscription};
use super::alpaca::AlpacaDecoder;
use super::feed::connect::{ConnectOptions, ConnectionStats, FeedClient, FeedError, FeedProtocol};
use super::feed::{Feed, FeedBatch, FeedCounters, FrameDecoder};
use super::finnhub::stream::FinnhubStream;
use super::finnhub::FinnhubDecoder;
use super::history::{
    Bound, HistoryFeed, HistoryFetcher, HistoryRequest, HistoryStats, RetryPolicy, Timeframe,
};
use super::polygon::stream::PolygonStream;
use super::polygon::PolygonDecoder;
use super::{Position, Source, SourceBatch, SourceError};
use crate::tick::{tick_schema, Validator};
use gap::{GapTracker, GapWindow};

/// A feed with a live stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LiveFeed {
    /// Alpaca Market Data v2 (`wss://stream.data.alpaca.markets/v2/<feed>`).
    Alpaca,
    /// Polygon.io / Massive stocks (`wss://socket.massive.com/stocks`).
    Polygon,
    /// Finnhub trades (`wss://ws.finnhub.io`).
    Finnhub,
}

impl LiveFeed {
    /// The feed.
    pub fn feed(self) -> Feed {
        match self {
            Self::Alpaca => Feed::Alpaca,
            Self::Polygon => Feed::Polygon,
            Self::Finnhub => Feed::Finnhub,
        }
    }

    /// The feed's REST history, if it has one we fetch.
    pub fn history(self) -> Option<HistoryFeed> {
        match self {
            Self::Alpaca => Some(HistoryFeed::Alpaca),
            Self::Polygon => Some(HistoryFeed::Polygon),
            Self::Finnhub => None,
        }
    }

    /// The variable that overrides the stream URL.
    pub fn stream_var(self) -> &'static str {
        match self {
            Self::Alpaca => "STOCKANOMALY_ALPACA_STREAM",
            Self::Polygon => "STOCKANOMALY_POLYGON_STREAM",
            Self::Finnhub => "STOCKANOMALY_FINNHUB_STREAM",
        }
    }

    /// The production stream URL; Alpaca's ends in its data feed (`iex`
    /// unless `alpaca_feed` names another).
    pub fn default_stream(self, alpaca_feed: Option<&str>) -> String {
        match self {
            Self::Alpaca => format!(
                "{}/{}",
                super::alpaca::stream::DEFAULT_STREAM_BASE,
                alpaca_feed.unwrap_or("iex")
            ),
            Self::Polygon => super::polygon::stream::DEFAULT_STREAM_URL.to_owned(),
            Self::Finnhub => super::finnhub::stream::DEFAULT_STREAM_URL.to_owned(),
        }
    }
}

impl fmt::Display for LiveFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.feed().name())
    }
}

/// What becomes ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Channel {
    /// Every trade, stamped with the symbol's latest quote (Alpaca and
    /// Polygon subscribe to quotes too; Alpaca's trade corrections and
    /// cancels come with trades).
    Trades,
    /// Minute bars, revised bars recorded as amendments (Alpaca, Polygon).
    Bars,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trades => "trades",
            Self::Bars => "bars",
        })
    }
}

/// A live ingestion: which feed, where, what.
#[derive(Debug, Clone)]
pub struct LiveRequest {
    /// The feed.
    pub feed: LiveFeed,
    /// The stream's URL (may hold a credential: never logged whole).
    pub endpoint: String,
    /// Base URL of the feed's REST history for gap fills; `None` turns
    /// gap fills off.
    pub rest_endpoint: Option<String>,
    /// Symbols to subscribe to.
    pub symbols: Vec<String>,
    /// Trades or minute bars.
    pub channel: Channel,
    /// Alpaca's data feed (`iex`, `sip`), for its REST history.
    pub alpaca_feed: Option<String>,
    /// Reconnects, watchdog and pings.
    pub connect: ConnectOptions,
    /// Retries of the gap fetches.
    pub retry: RetryPolicy,
    /// How long one [`Source::next_batch`] gathers ticks (less when a
    /// connection drops).
    pub batch_wait: Duration,
    /// Validation rules of the ticks.
    pub validator: Validator,
}

/// Why a live source could not start.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The request cannot work (no symbols, a channel the feed lacks).
    #[error("{feed}: {reason}")]
    Request {
        /// The feed.
        feed: Feed,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The feed's credentials or endpoint.
    #[error(transparent)]
    Feed(#[from] FeedError),
}

/// Gap repair so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GapStats {
    /// Connection drops followed by data again (holes found).
    pub gaps: u64,
    /// Of which filled from the REST history.
    pub filled: u64,
    /// Of which not filled (no history for the channel, fetch failed,
    /// fills turned off); each is logged with its window.
    pub unfilled: u64,
    /// Ticks added from the history (the stream had missed them).
    pub ticks_added: u64,
    /// Ticks fetched that the stream had already delivered.
    pub ticks_duplicate: u64,
    /// Requests and pages of the gap fetches.
    pub fetch: HistoryStats,
    /// The windows not filled, with the reason (the latest 16).
    pub unfilled_windows: Vec<String>,
}

/// The connection loop of one feed, whichever it is.
#[async_trait::async_trait]
trait Client: Send {
    async fn next_batch(&mut self, wait: Duration) -> Result<FeedBatch, FeedError>;
    fn finish(&mut self) -> FeedBatch;
    fn stats(&self) -> &ConnectionStats;
    fn counters(&self) -> &FeedCounters;
    async fn close(&mut self);
}

#[async_trait::async_trait]
impl<P: FeedProtocol, D: FrameDecoder> Client for FeedClient<P, D> {
    async fn next_batch(&mut self, wait: Duration) -> Result<FeedBatch, FeedError> {
        FeedClient::next_batch(self, wait).await
    }
    fn finish(&mut self) -> FeedBatch {
        FeedClient::finish(self)
    }
    fn stats(&self) -> &ConnectionStats {
        FeedClient::stats(self)
    }
    fn counters(&self) -> &FeedCounters {
        FeedClient::counters(self)
    }
    async fn close(&mut self) {
        FeedClient::close(self).await
    }
}

/// A live feed as a [`Source`] (see the module documentation). Never ends
/// by itself: stop calling it (and take [`finish`](Self::finish)) to stop.
pub struct LiveSource {
    client: Box<dyn Client>,
    request: LiveRequest,
    tracker: GapTracker,
    drops_seen: u64,
    gaps: GapStats,
    ticks: u64,
}

impl LiveSource {
    /// Checks the request and reads the credentials from the feed's usual
    /// environment variables; connects on the first batch.
    pub fn new(request: LiveRequest) -> Result<Self, LiveError> {
        let feed = request.feed.feed();
        let usage = |reason: &str| LiveError::Request {
            feed,
            reason: reason.to_owned(),
        };
        if request.symbols.is_empty() {
            return Err(usage("no symbols: give --symbols A,B"));
        }
        if request.feed == LiveFeed::Finnhub && request.channel == Channel::Bars {
            return Err(usage(
                "Finnhub's stream carries trades only: use --channel trades",
            ));
        }
        let symbols = request.symbols.clone();
        let v = request.validator.clone();
        let o = request.connect;
        let url = request.endpoint.clone();
        let client: Box<dyn Client> = match request.feed {
            LiveFeed::Alpaca => {
                let subscription = match request.channel {
                    Channel::Trades => AlpacaSubscription {
                        trades: symbols.clone(),
                        quotes: symbols,
                        ..Default::default()
                    },
                    Channel::Bars => AlpacaSubscription {
                        bars: symbols.clone(),
                        updated_bars: symbols,
                        ..Default::default()
                    },
                };
                let stream = AlpacaStream::new(url, AlpacaCredentials::from_env()?, subscription);
                Box::new(FeedClient::new(stream, AlpacaDecoder::new(v), o))
            }
            LiveFeed::Polygon => {
                let events: &[&str] = match request.channel {
                    Channel::Trades => &["T", "Q"],
                    Channel::Bars => &["AM"],
                };
                let topics = events
                    .iter()
                    .flat_map(|ev| symbols.iter().map(move |s| format!("{ev}.{s}")))
                    .collect();
                let stream = PolygonStream::from_env(url, topics)?;
                Box::new(FeedClient::new(stream, PolygonDecoder::new(v), o))
            }
            LiveFeed::Finnhub => {
                let stream = FinnhubStream::from_env(&url, symbols)?;
                Box::new(FeedClient::new(stream, FinnhubDecoder::new(v), o))
            }
        };
        Ok(Self {
            client,
            request,
            tracker: GapTracker::new(),
            drops_seen: 0,
            gaps: GapStats::default(),
            ticks: 0,
        })
    }

    /// The request.
    pub fn request(&self) -> &LiveRequest {
        &self.request
    }

    /// Connection history (connects, reconnects, stalls).
    pub fn connection(&self) -> &ConnectionStats {
        self.client.stats()
    }

    /// The decoder's counters (messages, ticks, rejects, unknown types).
    pub fn counters(&self) -> &FeedCounters {
        self.client.counters()
    }

    /// Gap repair so far.
    pub fn gaps(&self) -> &GapStats {
        &self.gaps
    }

    /// Takes what was decoded and not yet returned (at shutdown) and closes
    /// the connection.
    pub async fn finish(&mut self) -> SourceBatch {
        let batch = self.client.finish();
        self.client.close().await;
        self.ticks += batch.ticks.num_rows() as u64;
        self.to_source_batch(batch)
    }

    fn to_source_batch(&self, batch: FeedBatch) -> SourceBatch {
        SourceBatch {
            ticks: batch.ticks,
            labels: None,
            amendments: (batch.amendments.num_rows() > 0).then_some(batch.amendments),
            rejects: batch.rejects,
            stream: None,
            position: Position::Live {
                feed: self.request.feed.feed().name(),
                ticks: self.ticks,
            },
        }
    }

    /// Fetches `window` from the REST history and puts what the stream
    /// missed in front of `batch`'s ticks.
    async fn fill(&mut self, window: GapWindow, batch: &mut FeedBatch) {
        self.gaps.gaps += 1;
        let shown = format!(
            "{} .. {}",
            rfc3339(window.from_us),
            rfc3339(window.until_us)
        );
        match self.fetch(&window).await {
            Ok((fetched, rejects)) => {
                let total = fetched.num_rows() as u64;
                let kept = match window
                    .keep_mask(&fetched)
                    .map(|mask| arrow::compute::filter_record_batch(&fetched, &mask))
                {
                    Some(Ok(kept)) => kept,
                    Some(Err(e)) => return self.unfilled(&shown, &e.to_string()),
                    None => return self.unfilled(&shown, "the history's ticks lack the tick key"),
                };
                let added = kept.num_rows() as u64;
                match arrow::compute::concat_batches(&tick_schema(), [&kept, &batch.ticks]) {
                    Ok(ticks) => batch.ticks = ticks,
                    Err(e) => return self.unfilled(&shown, &e.to_string()),
                }
                batch.rejects.extend(rejects);
                self.gaps.filled += 1;
                self.gaps.ticks_added += added;
                self.gaps.ticks_duplicate += total - added;
                tracing::info!(
                    feed = %self.request.feed,
                    window = %shown,
                    added,
                    already_received = total - added,
                    "Gap after a reconnect filled from the REST history."
                );
            }
            Err(reason) => self.unfilled(&shown, &reason),
        }
    }

    fn unfilled(&mut self, window: &str, reason: &str) {
        self.gaps.unfilled += 1;
        tracing::warn!(
            feed = %self.request.feed,
            window = %window,
            reason = %reason,
            "Gap after a reconnect NOT filled: the stored history has a hole there."
        );
        if self.gaps.unfilled_windows.len() == 16 {
            self.gaps.unfilled_windows.remove(0);
        }
        self.gaps
            .unfilled_windows
            .push(format!("{window}: {reason}"));
    }

    /// Every page of the window's history, concatenated, and its rejects.
    async fn fetch(
        &mut self,
        window: &GapWindow,
    ) -> Result<(RecordBatch, Vec<crate::tick::Reject>), String> {
        let r = &self.request;
        let Some(feed) = r.feed.history() else {
            return Err(format!("{} has no tick history to fetch", r.feed));
        };
        let timeframe = match (feed, r.channel) {
            (_, Channel::Bars) => Timeframe::Minute,
            (HistoryFeed::Alpaca, Channel::Trades) => Timeframe::Trades,
            (HistoryFeed::Polygon, Channel::Trades) => {
                return Err("Polygon's trade history is not fetched (aggregates only)".into())
            }
        };
        let Some(endpoint) = r.rest_endpoint.clone() else {
            return Err("gap fills are turned off (--no-gap-fill)".into());
        };
        if r.symbols.iter().any(|s| s == "*") {
            return Err("a wildcard subscription has no symbol list to fetch".into());
        }
        let at = |us: i64| DateTime::<Utc>::from_timestamp_micros(us).map(Bound::At);
        let (Some(from), Some(until)) = (at(window.from_us), at(window.until_us)) else {
            return Err("the window is outside the representable time range".into());
        };
        let mut fetcher = HistoryFetcher::new(HistoryRequest {
            feed,
            endpoint,
            symbols: r.symbols.clone(),
            from,
            until,
            timeframe,
            alpaca_feed: r.alpaca_feed.clone(),
            page_limit: None,
            retry: r.retry,
            validator: r.validator.clone(),
        })
        .map_err(|e| e.to_string())?;
        let mut pages = Vec::new();
        let mut rejects = Vec::new();
        let result = loop {
            match fetcher.next_page().await {
                Ok(Some(page)) => {
                    pages.push(page.ticks);
                    rejects.extend(page.rejects);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            }
        };
        let s = fetcher.stats();
        let f = &mut self.gaps.fetch;
        f.requests += s.requests;
        f.retries += s.retries;
        f.rate_limited += s.rate_limited;
        f.server_errors += s.server_errors;
        f.connection_errors += s.connection_errors;
        f.pages += s.pages;
        result?;
        let ticks =
            arrow::compute::concat_batches(&tick_schema(), &pages).map_err(|e| e.to_string())?;
        Ok((ticks, rejects))
    }
}

fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{us} µs"))
}

#[async_trait::async_trait]
impl Source for LiveSource {
    /// Reads the feed for up to the request's `batch_wait` (less when the
    /// connection drops), fills a gap the batch closes, and returns the
    /// ticks; an empty batch when nothing came. Errs only when the feed
    /// cannot go on; what was decoded before is then in
    /// [`finish`](LiveSource::finish).
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        let mut batch = self.client.next_batch(self.request.batch_wait).await?;
        if let Some(window) = self.tracker.received(&batch.ticks) {
            self.fill(window, &mut batch).await;
        }
        let drops = self.client.stats().drops;
        if drops > self.drops_seen {
            self.drops_seen = drops;
            self.tracker.dropped(crate::tick::now_us());
        }
        self.ticks += batch.ticks.num_rows() as u64;
        Ok(Some(self.to_source_batch(batch)))
    }
}
