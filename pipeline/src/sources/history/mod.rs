//! REST history of the live feeds: Alpaca's `/v2/stocks/bars` and
//! `/v2/stocks/trades`, Polygon's minute aggregates, fetched page by page
//! into tick batches.
//!
//! A [`HistoryFetcher`] builds the first request from a [`HistoryRequest`],
//! follows the feed's paging to the end (Alpaca's `next_page_token`,
//! Polygon's `next_url`, one symbol after another) and decodes every page
//! with the feed's page decoder ([`AlpacaHistoryDecoder`],
//! [`PolygonAggsDecoder`]), so invalid records become counted
//! [`Reject`](crate::tick::Reject)s exactly as in the stream. One decoder
//! serves the whole fetch, so `seq` is assigned as one stream: fetching the
//! same range again gives the same ticks with the same keys, and the lake's
//! content-addressed files then add nothing.
//!
//! HTTP, retries and rate limits live in [`service`].

pub mod service;

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

pub use service::RetryPolicy;
use service::Service;

use super::alpaca::rest::{AlpacaHistory, AlpacaHistoryDecoder};
use super::feed::connect::redacted;
use super::feed::{Feed, FeedBatch, FeedCounters, PageError};
use super::polygon::rest::PolygonAggsDecoder;
use crate::tick::Validator;

/// A feed with a REST history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryFeed {
    /// Alpaca Market Data v2 (`https://data.alpaca.markets`).
    Alpaca,
    /// Polygon.io / Massive (`https://api.polygon.io`).
    Polygon,
}

impl HistoryFeed {
    /// The feed.
    pub fn feed(self) -> Feed {
        match self {
            Self::Alpaca => Feed::Alpaca,
            Self::Polygon => Feed::Polygon,
        }
    }

    /// The production base URL.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Self::Alpaca => "https://data.alpaca.markets",
            Self::Polygon => "https://api.polygon.io",
        }
    }

    /// The variable that overrides [`default_endpoint`](Self::default_endpoint).
    pub fn endpoint_var(self) -> &'static str {
        match self {
            Self::Alpaca => "STOCKANOMALY_ALPACA_REST",
            Self::Polygon => "STOCKANOMALY_POLYGON_REST",
        }
    }

    /// The credential variables, as named to users.
    pub fn credential_vars(self) -> &'static str {
        match self {
            Self::Alpaca => "APCA_API_KEY_ID and APCA_API_SECRET_KEY",
            Self::Polygon => "POLYGON_API_KEY",
        }
    }
}

/// What to fetch: minute bars or trades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Timeframe {
    /// One-minute bars, stamped at the minute's start.
    #[value(name = "1Min", alias = "1min")]
    Minute,
    /// Every trade (Alpaca only).
    #[value(name = "trades")]
    Trades,
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Minute => "1Min",
            Self::Trades => "trades",
        })
    }
}

/// One end of a history range: a whole UTC day (`2024-01-03`) or an
/// instant (`2024-01-03T14:30:00Z`). Both ends are inclusive: a day as the
/// start means its first instant, as the end its last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// A UTC calendar day.
    Day(NaiveDate),
    /// An instant.
    At(DateTime<Utc>),
}

impl FromStr for Bound {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return Ok(Self::Day(d));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self::At(t.with_timezone(&Utc)))
            .map_err(|_| {
                format!("{s:?}: expected a date (2024-01-03) or an RFC 3339 time (2024-01-03T14:30:00Z)")
            })
    }
}

impl Bound {
    /// The first instant covered, µs since the epoch.
    pub fn first_us(self) -> i64 {
        match self {
            Self::Day(d) => d
                .and_time(chrono::NaiveTime::MIN)
                .and_utc()
                .timestamp_micros(),
            Self::At(t) => t.timestamp_micros(),
        }
    }

    /// The last instant covered, µs since the epoch.
    pub fn last_us(self) -> i64 {
        match self {
            Self::Day(_) => self.first_us() + 86_400_000_000 - 1,
            Self::At(t) => t.timestamp_micros(),
        }
    }

    /// Alpaca's `start` (RFC 3339; inclusive).
    fn alpaca_start(self) -> String {
        match self {
            Self::Day(d) => format!("{d}T00:00:00Z"),
            Self::At(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        }
    }

    /// Alpaca's `end` (RFC 3339; inclusive): a day ends at its last
    /// nanosecond, so that the next day's midnight bar is not fetched twice
    /// by two adjacent ranges.
    fn alpaca_end(self) -> String {
        match self {
            Self::Day(d) => format!("{d}T23:59:59.999999999Z"),
            Self::At(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        }
    }

    /// Polygon's `from`/`to` path segment: a date, or epoch milliseconds.
    fn polygon(self) -> String {
        match self {
            Self::Day(d) => d.to_string(),
            Self::At(t) => t.timestamp_millis().to_string(),
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Day(d) => write!(f, "{d}"),
            Self::At(t) => f.write_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        }
    }
}

/// A history fetch.
#[derive(Debug, Clone)]
pub struct HistoryRequest {
    /// The feed.
    pub feed: HistoryFeed,
    /// Base URL of its REST API (`https://data.alpaca.markets`).
    pub endpoint: String,
    /// Symbols, fetched in this order.
    pub symbols: Vec<String>,
    /// First day or instant.
    pub from: Bound,
    /// Last day or instant, inclusive.
    pub until: Bound,
    /// Bars or trades.
    pub timeframe: Timeframe,
    /// Alpaca's `feed` parameter (`iex`, `sip`); the API's default if `None`.
    pub alpaca_feed: Option<String>,
    /// Records per page; the feed's maximum if `None` (Alpaca 10,000,
    /// Polygon 50,000).
    pub page_limit: Option<u32>,
    /// Retries and timeouts.
    pub retry: RetryPolicy,
    /// Validation rules of the ticks.
    pub validator: Validator,
}

/// What a fetch went through.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistoryStats {
    /// Pages decoded.
    pub pages: u64,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests retried.
    pub retries: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Connections refused, reset or timed out.
    pub connection_errors: u64,
}

/// Why a history fetch stopped. Bad records are not errors: they are
/// rejects in the batches.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A credential is not in the environment.
    #[error(
        "{feed}: environment variable {var} is not set (credentials are read only from the \
         environment, never from flags)"
    )]
    MissingCredential {
        /// The feed.
        feed: Feed,
        /// The variable.
        var: &'static str,
    },
    /// The base URL cannot be used.
    #[error("{feed}: REST endpoint {endpoint}: {reason}")]
    Endpoint {
        /// The feed.
        feed: Feed,
        /// The endpoint, without user info or query.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The request asks for something the feed cannot give.
    #[error("{feed} history: {reason}")]
    Request {
        /// The feed.
        feed: Feed,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The HTTP client could not be made.
    #[error("{feed}: cannot create an HTTP client: {reason}")]
    Client {
        /// The feed.
        feed: Feed,
        /// Why.
        reason: String,
    },
    /// 401 or 403: the credentials were refused.
    #[error(
        "{feed} {path}: the API refused the credentials ({status}: {message}); set {vars} to a \
         valid key with access to this data"
    )]
    Unauthorized {
        /// The feed.
        feed: Feed,
        /// The endpoint's path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The API's message.
        message: String,
        /// The variables to set.
        vars: &'static str,
    },
    /// Another 4xx: the request itself is wrong (unknown symbol, bad range).
    #[error("{feed} {path}: the API answered {status}: {message}")]
    Refused {
        /// The feed.
        feed: Feed,
        /// The endpoint's path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// Every retry failed.
    #[error("{feed} {path}: gave up after {attempts} attempts; last: {last}")]
    GaveUp {
        /// The feed.
        feed: Feed,
        /// The endpoint's path.
        path: String,
        /// Requests sent.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A 2xx body that is not a page of history.
    #[error(transparent)]
    Page(#[from] PageError),
    /// The server pointed to the page it just sent.
    #[error(
        "{feed} {path}: the server sent the same next page twice; stopping rather than looping"
    )]
    PagingLoop {
        /// The feed.
        feed: Feed,
        /// The endpoint's path.
        path: String,
    },
}

impl HistoryError {
    /// Whether the user's flags or environment are at fault (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::MissingCredential { .. } | Self::Endpoint { .. } | Self::Request { .. }
        )
    }
}

/// The feed's page decoder.
enum Decoder {
    Alpaca(AlpacaHistoryDecoder),
    Polygon(PolygonAggsDecoder),
}

/// Fetches a [`HistoryRequest`] page by page: call
/// [`next_page`](Self::next_page) until it answers `None`.
pub struct HistoryFetcher {
    request: HistoryRequest,
    base: url::Url,
    service: Service,
    decoder: Decoder,
    /// The next URL to GET, `None` before a symbol's first page.
    next: Option<url::Url>,
    /// Symbols whose fetch has not started (Polygon asks one at a time).
    pending: VecDeque<String>,
    started: bool,
    stats: HistoryStats,
}

impl HistoryFetcher {
    /// Checks the request, reads the credentials from the environment and
    /// prepares the first request (nothing is sent yet).
    pub fn new(request: HistoryRequest) -> Result<Self, HistoryError> {
        let feed = request.feed.feed();
        let usage = |reason: String| HistoryError::Request { feed, reason };
        if request.symbols.is_empty() {
            return Err(usage("no symbols: give --symbols A,B".into()));
        }
        if request.from.first_us() > request.until.last_us() {
            return Err(usage(format!(
                "the range starts ({}) after it ends ({})",
                request.from, request.until
            )));
        }
        if request.feed == HistoryFeed::Polygon && request.timeframe == Timeframe::Trades {
            return Err(usage(
                "trades history is fetched from Alpaca only; Polygon gives minute bars \
                 (--timeframe 1Min)"
                    .into(),
            ));
        }
        let base = parse_endpoint(feed, &request.endpoint)?;
        let service = match request.feed {
            HistoryFeed::Alpaca => {
                let key = credential(feed, "APCA_API_KEY_ID")?;
                let secret = credential(feed, "APCA_API_SECRET_KEY")?;
                let mut h = HeaderMap::new();
                h.insert(
                    HeaderName::from_static("apca-api-key-id"),
                    header_value(feed, "APCA_API_KEY_ID", &key)?,
                );
                h.insert(
                    HeaderName::from_static("apca-api-secret-key"),
                    header_value(feed, "APCA_API_SECRET_KEY", &secret)?,
                );
                Service::new(
                    feed,
                    h,
                    vec![key, secret],
                    request.feed.credential_vars(),
                    request.retry,
                )?
            }
            HistoryFeed::Polygon => {
                // A Bearer header rather than `apiKey=` (both documented):
                // URLs end up in logs and error messages, headers do not.
                let key = credential(feed, "POLYGON_API_KEY")?;
                let mut h = HeaderMap::new();
                h.insert(
                    AUTHORIZATION,
                    header_value(feed, "POLYGON_API_KEY", &format!("Bearer {key}"))?,
                );
                Service::new(
                    feed,
                    h,
                    vec![key],
                    request.feed.credential_vars(),
                    request.retry,
                )?
            }
        };
        let decoder =
            match (request.feed, request.timeframe) {
                (HistoryFeed::Alpaca, Timeframe::Minute) => Decoder::Alpaca(
                    AlpacaHistoryDecoder::new(AlpacaHistory::Bars, request.validator.clone()),
                ),
                (HistoryFeed::Alpaca, Timeframe::Trades) => Decoder::Alpaca(
                    AlpacaHistoryDecoder::new(AlpacaHistory::Trades, request.validator.clone()),
                ),
                (HistoryFeed::Polygon, _) => {
                    Decoder::Polygon(PolygonAggsDecoder::new(request.validator.clone()))
                }
            };
        let pending = request.symbols.iter().cloned().collect();
        Ok(Self {
            request,
            base,
            service,
            decoder,
            next: None,
            pending,
            started: false,
            stats: HistoryStats::default(),
        })
    }

    /// Fetches and decodes the next page; `None` once every page of every
    /// symbol was fetched.
    pub async fn next_page(&mut self) -> Result<Option<FeedBatch>, HistoryError> {
        let url = match self.next.take() {
            Some(u) => u,
            None => match self.first_url() {
                Some(u) => u,
                None => return Ok(None),
            },
        };
        let body = self.service.get(&url, &mut self.stats).await?;
        let next =
            match &mut self.decoder {
                Decoder::Alpaca(d) => match d.decode_page(&body)? {
                    Some(token) => {
                        let mut u = url.clone();
                        let pairs: Vec<(String, String)> = url
                            .query_pairs()
                            .filter(|(k, _)| k != "page_token")
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect();
                        u.query_pairs_mut()
                            .clear()
                            .extend_pairs(pairs)
                            .append_pair("page_token", &token);
                        Some(u)
                    }
                    None => None,
                },
                Decoder::Polygon(d) => match d.decode_page(&body)? {
                    Some(next_url) => Some(rebase(&self.base, &next_url).map_err(|reason| {
                        PageError::Malformed {
                            feed: Feed::Polygon,
                            endpoint: "/v2/aggs",
                            reason: format!("next_url: {reason}"),
                        }
                    })?),
                    None => None,
                },
            };
        if next.as_ref() == Some(&url) {
            return Err(HistoryError::PagingLoop {
                feed: self.service.feed,
                path: url.path().to_owned(),
            });
        }
        self.next = next;
        self.stats.pages += 1;
        let batch = match &mut self.decoder {
            Decoder::Alpaca(d) => d.finish(),
            Decoder::Polygon(d) => d.finish(),
        };
        Ok(Some(batch))
    }

    /// The first URL of the next request, if any is left: Alpaca asks for
    /// every symbol at once, Polygon for one symbol at a time.
    fn first_url(&mut self) -> Option<url::Url> {
        let r = &self.request;
        match r.feed {
            HistoryFeed::Alpaca => {
                if std::mem::replace(&mut self.started, true) {
                    return None;
                }
                let path = match r.timeframe {
                    Timeframe::Minute => AlpacaHistory::Bars.path(),
                    Timeframe::Trades => AlpacaHistory::Trades.path(),
                };
                let mut u = with_path(&self.base, path);
                {
                    let mut q = u.query_pairs_mut();
                    q.append_pair("symbols", &r.symbols.join(","));
                    if r.timeframe == Timeframe::Minute {
                        q.append_pair("timeframe", "1Min");
                    }
                    q.append_pair("start", &r.from.alpaca_start())
                        .append_pair("end", &r.until.alpaca_end())
                        .append_pair("limit", &r.page_limit.unwrap_or(10_000).to_string());
                    if let Some(f) = &r.alpaca_feed {
                        q.append_pair("feed", f);
                    }
                }
                Some(u)
            }
            HistoryFeed::Polygon => {
                let symbol = self.pending.pop_front()?;
                let mut u = self.base.clone();
                if let Ok(mut segs) = u.path_segments_mut() {
                    segs.pop_if_empty().extend([
                        "v2",
                        "aggs",
                        "ticker",
                        symbol.as_str(),
                        "range",
                        "1",
                        "minute",
                        &r.from.polygon(),
                        &r.until.polygon(),
                    ]);
                }
                u.query_pairs_mut()
                    .append_pair("adjusted", "true")
                    .append_pair("sort", "asc")
                    .append_pair("limit", &r.page_limit.unwrap_or(50_000).to_string());
                Some(u)
            }
        }
    }

    /// What the fetch went through so far.
    pub fn stats(&self) -> HistoryStats {
        self.stats
    }

    /// The decoder's totals (`frames` counts pages, `messages` records).
    pub fn counters(&self) -> &FeedCounters {
        match &self.decoder {
            Decoder::Alpaca(d) => d.counters(),
            Decoder::Polygon(d) => d.counters(),
        }
    }

    /// The request.
    pub fn request(&self) -> &HistoryRequest {
        &self.request
    }

    /// The endpoint, as it may be shown (no user info, no query).
    pub fn endpoint(&self) -> String {
        redacted(self.base.as_str())
    }
}

fn credential(feed: Feed, var: &'static str) -> Result<String, HistoryError> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(HistoryError::MissingCredential { feed, var })
}

fn header_value(feed: Feed, var: &'static str, v: &str) -> Result<HeaderValue, HistoryError> {
    let mut h = HeaderValue::from_str(v).map_err(|_| HistoryError::Request {
        feed,
        reason: format!("{var} holds characters not allowed in an HTTP header"),
    })?;
    // Keeps the value out of HTTP/2 header compression tables and debug
    // output.
    h.set_sensitive(true);
    Ok(h)
}

/// The base URL, checked.
fn parse_endpoint(feed: Feed, endpoint: &str) -> Result<url::Url, HistoryError> {
    let err = |reason: &str| HistoryError::Endpoint {
        feed,
        endpoint: redacted(endpoint),
        reason: reason.to_owned(),
    };
    let u = url::Url::parse(endpoint).map_err(|e| err(&format!("not a URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(err("expected an http:// or https:// base URL"));
    }
    if u.query().is_some() || !u.username().is_empty() || u.password().is_some() {
        return Err(err(
            "give the base URL only, without query or user info (credentials come from the \
             environment)",
        ));
    }
    Ok(u)
}

/// `base` with `path` appended to its own path (a proxy may serve the API
/// under a prefix).
fn with_path(base: &url::Url, path: &str) -> url::Url {
    let mut u = base.clone();
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    u.set_path(&joined);
    u
}

/// Polygon's `next_url`, moved onto our base URL: the API answers with its
/// own host (api.polygon.io, or api.massive.com since the rebrand), but the
/// next request must go where the user pointed us (a proxy, a sandbox), and
/// the key must never be sent to a host the user did not name. Any
/// `apiKey` parameter is dropped: the key goes in a header.
fn rebase(base: &url::Url, next: &str) -> Result<url::Url, String> {
    let abs = base.join(next).map_err(|e| e.to_string())?;
    let prefix = base.path().trim_end_matches('/');
    let path = abs.path();
    let mut u = base.clone();
    if !prefix.is_empty() && path.starts_with(&format!("{prefix}/")) {
        u.set_path(path);
    } else {
        u.set_path(&format!("{prefix}{path}"));
    }
    let pairs: Vec<(String, String)> = abs
        .query_pairs()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("apikey"))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.set_query(None);
    if !pairs.is_empty() {
        u.query_pairs_mut().extend_pairs(pairs);
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_days_and_instants() {
        let d: Bound = "2024-01-03".parse().unwrap();
        assert_eq!(d.alpaca_start(), "2024-01-03T00:00:00Z");
        assert_eq!(d.alpaca_end(), "2024-01-03T23:59:59.999999999Z");
        assert_eq!(d.polygon(), "2024-01-03");
        assert_eq!(d.last_us() - d.first_us(), 86_400_000_000 - 1);
        let t: Bound = "2024-01-03T14:30:00+00:00".parse().unwrap();
        assert_eq!(t.alpaca_start(), "2024-01-03T14:30:00Z");
        assert_eq!(t.polygon(), "1704292200000");
        assert!("03/01/2024"
            .parse::<Bound>()
            .unwrap_err()
            .contains("expected a date"));
    }

    #[test]
    fn next_url_stays_on_our_endpoint_without_a_key() {
        let base = url::Url::parse("http://127.0.0.1:8080").unwrap();
        let u = rebase(
            &base,
            "https://api.polygon.io/v2/aggs/ticker/MSFT/range/1/minute/1/2?cursor=abc&apiKey=K",
        )
        .unwrap();
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8080/v2/aggs/ticker/MSFT/range/1/minute/1/2?cursor=abc"
        );
        let proxied = url::Url::parse("http://proxy/polygon/").unwrap();
        let u = rebase(&proxied, "https://api.massive.com/v2/aggs/x?cursor=c").unwrap();
        assert_eq!(u.as_str(), "http://proxy/polygon/v2/aggs/x?cursor=c");
        let u = rebase(&proxied, "/polygon/v2/aggs/x?cursor=d").unwrap();
        assert_eq!(u.as_str(), "http://proxy/polygon/v2/aggs/x?cursor=d");
    }

    #[test]
    fn endpoints_with_credentials_or_queries_are_refused() {
        for bad in [
            "ftp://x",
            "http://u:p@host",
            "http://host/?apiKey=1",
            "nope",
        ] {
            let e = parse_endpoint(Feed::Polygon, bad).unwrap_err();
            assert!(e.is_usage(), "{bad}");
            assert!(!e.to_string().contains(":p@"), "{e}");
        }
        let u = with_path(
            &parse_endpoint(Feed::Alpaca, "http://h:1/").unwrap(),
            "/v2/stocks/bars",
        );
        assert_eq!(u.as_str(), "http://h:1/v2/stocks/bars");
    }
}
