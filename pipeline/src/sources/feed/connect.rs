//! The connection loop of a live feed: one WebSocket kept up through drops,
//! stalls and the feed's own errors, feeding a [`FrameDecoder`].
//!
//! What it does, and why:
//!
//! - **Reconnect with exponential backoff and jitter.** Feeds drop
//!   connections every hour or two (polygon-io issues #55, #134); a fleet of
//!   clients reconnecting in lock step after an outage gets refused (Alpaca's
//!   406 and 429 on the handshake), so each delay is drawn between half and
//!   all of `initial × 2^failures`, capped at `backoff_max`. A fault's own
//!   minimum delay (406: the server takes about 90 s to notice a dropped
//!   connection) raises it, still capped.
//! - **Re-authenticate and re-subscribe** on every connection: the
//!   [`FeedProtocol`] answers the feed's greeting with credentials and the
//!   acknowledgement with the subscription.
//! - **A no-data watchdog.** Feeds stall silently (Finnhub-API #517, #272)
//!   while the WebSocket itself still answers pings: no text or binary
//!   frame (data, or the feed's own keepalive such as Finnhub's `ping`) for
//!   `watchdog` means reconnect. Pongs do not count as data.
//! - **WebSocket ping/pong.** A ping every `ping_every`; no pong within
//!   `pong_timeout` means the path is dead (the Go SDK's 10 s and 5 s).
//! - **Fatal faults stop** with the fault's message (bad credentials, a plan
//!   without the feed): retrying them only gets the key locked out.
//!
//! The consecutive-failure count is reset only once a session is *ready*
//! (subscribed), so a server that accepts connections and then refuses
//! every login still ends in [`FeedError::GaveUp`] rather than a busy loop.
//!
//! Endpoints may carry credentials (Finnhub's `?token=`), so they are logged
//! as scheme, host, port and path only.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use super::{FaultAction, Feed, FeedBatch, FeedCounters, FeedEvent, FeedFault, FrameDecoder};
use crate::backoff::Backoff;

/// What one feed says on the wire beyond its data: the messages a client
/// sends to log in and subscribe.
pub trait FeedProtocol: Send {
    /// The feed.
    fn feed(&self) -> Feed;

    /// The WebSocket URL (`ws://` or `wss://`). It may hold a credential:
    /// it is never logged whole.
    fn url(&self) -> &str;

    /// Messages to send as soon as the WebSocket is open (for feeds that do
    /// not greet first, such as Finnhub, whose token is in the URL).
    fn on_open(&self, out: &mut Vec<String>) {
        let _ = out;
    }

    /// Messages to send in answer to a control event: credentials after
    /// [`FeedEvent::Connected`], the subscription after
    /// [`FeedEvent::Authenticated`].
    fn on_event(&self, event: &FeedEvent, out: &mut Vec<String>);

    /// Whether `event` completes the handshake, after which data flows
    /// (resets the backoff).
    fn is_ready(&self, event: &FeedEvent) -> bool {
        matches!(event, FeedEvent::Subscribed { .. })
    }

    /// Whether an open WebSocket is already a working session (feeds that
    /// acknowledge nothing, such as Finnhub).
    fn ready_on_open(&self) -> bool {
        false
    }
}

/// Reads a credential from the environment, the only place credentials
/// come from.
pub fn credential(feed: Feed, var: &'static str) -> Result<String, FeedError> {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or(FeedError::MissingCredential { feed, var })
}

/// Timings of the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectOptions {
    /// First reconnect delay (before jitter).
    pub backoff_initial: Duration,
    /// Longest delay between attempts, whatever a fault asks.
    pub backoff_max: Duration,
    /// Consecutive failed attempts (connection refused, dropped before the
    /// subscription was acknowledged) before giving up.
    pub max_failures: u32,
    /// Time allowed for TCP, TLS and the WebSocket handshake.
    pub connect_timeout: Duration,
    /// Reconnect after this long without a text or binary frame (pongs do
    /// not count). Set it above the quietest normal gap of the subscription:
    /// minute bars arrive every minute in session, Finnhub pings every 1-2
    /// minutes.
    pub watchdog: Duration,
    /// Send a WebSocket ping this often.
    pub ping_every: Duration,
    /// Reconnect when a ping is not answered within this.
    pub pong_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(60),
            // The official Go SDK's limit.
            max_failures: 20,
            connect_timeout: Duration::from_secs(10),
            // Finnhub pings every 1-2 minutes during halts; quieter than
            // that is a stall.
            watchdog: Duration::from_secs(150),
            ping_every: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(5),
        }
    }
}

/// What the loop went through, for the status line and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionStats {
    /// WebSocket connections opened.
    pub connects: u64,
    /// Of which after a drop.
    pub reconnects: u64,
    /// Attempts that failed to open.
    pub failed_attempts: u64,
    /// Reconnects because no data came within the watchdog.
    pub stalls: u64,
    /// Reconnects because a ping went unanswered.
    pub pong_timeouts: u64,
    /// Faults the feed reported (of any action).
    pub faults: u64,
    /// Open connections lost (drops, stalls, dead paths, faults asking to
    /// reconnect). Each ends a [`FeedClient::next_batch`] early, so that a
    /// batch never spans a drop: what came before a gap and what came
    /// after it arrive in different batches.
    pub drops: u64,
}

/// Why a feed stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The feed reported a fault that retrying cannot fix.
    #[error("{0}")]
    Fatal(FeedFault),
    /// Too many consecutive attempts failed.
    #[error(
        "{feed}: gave up after {failures} failed attempts to connect to {endpoint}; last: {last}"
    )]
    GaveUp {
        /// The feed.
        feed: Feed,
        /// The endpoint, without query (which may hold a token).
        endpoint: String,
        /// Attempts made.
        failures: u32,
        /// The last failure.
        last: String,
    },
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
    /// The endpoint URL cannot be used.
    #[error("{feed}: endpoint {endpoint}: {reason}")]
    Endpoint {
        /// The feed.
        feed: Feed,
        /// The endpoint, without query.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
}

/// Any byte stream a WebSocket can run over: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// A live feed's connection, decoded: call [`next_batch`](Self::next_batch)
/// in a loop.
pub struct FeedClient<P, D> {
    protocol: P,
    decoder: D,
    options: ConnectOptions,
    ws: Option<Ws>,
    /// Consecutive failures since the last ready session.
    failures: u32,
    /// Whether the current session got to ready.
    ready: bool,
    /// The next attempt waits at least this (a fault's request).
    min_delay: Duration,
    /// When the next connection attempt is due, once scheduled.
    next_attempt: Option<Instant>,
    last_error: String,
    last_frame: Instant,
    last_ping: Instant,
    ping_sent: Option<Instant>,
    stats: ConnectionStats,
    events: Vec<FeedEvent>,
    outbox: Vec<String>,
    backoff: Backoff,
}

impl<P: FeedProtocol, D: FrameDecoder> FeedClient<P, D> {
    /// A client that connects on the first [`next_batch`](Self::next_batch).
    pub fn new(protocol: P, decoder: D, options: ConnectOptions) -> Self {
        let now = Instant::now();
        let backoff = Backoff::new(options.backoff_initial, options.backoff_max);
        Self {
            protocol,
            decoder,
            options,
            ws: None,
            failures: 0,
            ready: false,
            min_delay: Duration::ZERO,
            next_attempt: None,
            last_error: String::new(),
            last_frame: now,
            last_ping: now,
            ping_sent: None,
            stats: ConnectionStats::default(),
            events: Vec::new(),
            outbox: Vec::new(),
            backoff,
        }
    }

    /// Reads the feed for up to `max_wait` (connecting, reconnecting and
    /// answering control messages as needed) and returns what was decoded;
    /// returns early when an open connection is lost, with what that
    /// session decoded ([`ConnectionStats::drops`] counts it). Errors only when the feed cannot go on; what was decoded before the
    /// error is still held: take it with [`finish`](Self::finish).
    pub async fn next_batch(&mut self, max_wait: Duration) -> Result<FeedBatch, FeedError> {
        let deadline = Instant::now() + max_wait;
        loop {
            if self.ws.is_none() {
                // One attempt at a time, never sleeping past the deadline:
                // what was decoded before a drop is handed over on time even
                // while the feed is down.
                let at = match self.next_attempt {
                    Some(at) => at,
                    None => {
                        let at = Instant::now() + self.delay();
                        self.min_delay = Duration::ZERO;
                        self.next_attempt = Some(at);
                        at
                    }
                };
                if at > deadline {
                    tokio::time::sleep_until(deadline).await;
                    return Ok(self.decoder.finish());
                }
                tokio::time::sleep_until(at).await;
                self.next_attempt = None;
                self.attempt().await?;
                if Instant::now() >= deadline {
                    return Ok(self.decoder.finish());
                }
                continue;
            }
            let timer = self.next_timer().min(deadline);
            let wake = match self.ws.as_mut() {
                Some(ws) => tokio::select! {
                    m = ws.next() => Some(m),
                    _ = tokio::time::sleep_until(timer) => None,
                },
                None => continue,
            };
            match wake {
                Some(Some(Ok(msg))) => self.on_message(msg).await?,
                Some(Some(Err(e))) => self.drop_connection(format!("read failed: {e}")),
                Some(None) => self.drop_connection("the server closed the connection".into()),
                None => self.on_timer().await,
            }
            if self.ws.is_none() || Instant::now() >= deadline {
                return Ok(self.decoder.finish());
            }
        }
    }

    /// Takes what was decoded since the last batch (at shutdown).
    pub fn finish(&mut self) -> FeedBatch {
        self.decoder.finish()
    }

    /// Connection history.
    pub fn stats(&self) -> &ConnectionStats {
        &self.stats
    }

    /// The decoder's counters.
    pub fn counters(&self) -> &FeedCounters {
        self.decoder.counters()
    }

    /// Closes the connection politely.
    pub async fn close(&mut self) {
        if let Some(mut ws) = self.ws.take() {
            let _ = ws.close(None).await;
        }
    }

    fn next_timer(&self) -> Instant {
        let o = &self.options;
        let mut t = (self.last_frame + o.watchdog).min(self.last_ping + o.ping_every);
        if let Some(sent) = self.ping_sent {
            t = t.min(sent + o.pong_timeout);
        }
        t
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let o = self.options;
        if now >= self.last_frame + o.watchdog {
            self.stats.stalls += 1;
            self.drop_connection(format!("no data for {:?}", o.watchdog));
        } else if self.ping_sent.is_some_and(|s| now >= s + o.pong_timeout) {
            self.stats.pong_timeouts += 1;
            self.drop_connection(format!("no pong within {:?}", o.pong_timeout));
        } else if self.ping_sent.is_none() && now >= self.last_ping + o.ping_every {
            self.last_ping = now;
            self.ping_sent = Some(now);
            if let Some(ws) = self.ws.as_mut() {
                if let Err(e) = ws.send(Message::Ping(Default::default())).await {
                    self.drop_connection(format!("ping failed: {e}"));
                }
            }
        }
    }

    async fn on_message(&mut self, msg: Message) -> Result<(), FeedError> {
        match msg {
            Message::Text(t) => {
                self.last_frame = Instant::now();
                self.decoder.decode(t.as_bytes(), &mut self.events)
            }
            Message::Binary(b) => {
                self.last_frame = Instant::now();
                self.decoder.decode(&b, &mut self.events)
            }
            Message::Pong(_) => self.ping_sent = None,
            // tungstenite answers pings itself.
            Message::Ping(_) | Message::Frame(_) => {}
            Message::Close(_) => {
                self.drop_connection("the server closed the connection".into());
                return Ok(());
            }
        }
        let events = std::mem::take(&mut self.events);
        let mut result = Ok(());
        for event in &events {
            if let FeedEvent::Fault(f) = event {
                self.stats.faults += 1;
                match f.action {
                    FaultAction::Fatal => {
                        tracing::error!(feed = %f.feed, error = %f, "Feed refused the session.");
                        result = Err(FeedError::Fatal(f.clone()));
                        break;
                    }
                    FaultAction::Reconnect { min_delay } => {
                        tracing::warn!(feed = %f.feed, error = %f, "Feed asks to reconnect.");
                        self.min_delay = self.min_delay.max(min_delay);
                        self.drop_connection(f.to_string());
                        break;
                    }
                    FaultAction::Continue => {
                        tracing::warn!(feed = %f.feed, error = %f, "Feed reported a problem.");
                    }
                }
            } else if let FeedEvent::Notice { message } = event {
                tracing::info!(feed = %self.protocol.feed(), message = %message, "Feed notice.");
            }
            if self.protocol.is_ready(event) {
                self.ready = true;
                self.failures = 0;
            }
            self.protocol.on_event(event, &mut self.outbox);
        }
        self.events = events;
        self.events.clear();
        if result.is_err() {
            self.close().await;
            return result;
        }
        self.flush_outbox().await;
        Ok(())
    }

    async fn flush_outbox(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        for text in &outbox {
            let Some(ws) = self.ws.as_mut() else { break };
            // The text may hold credentials: never log it.
            if let Err(e) = ws.send(Message::text(text.as_str())).await {
                self.drop_connection(format!("send failed: {e}"));
                break;
            }
        }
        self.outbox = outbox;
        self.outbox.clear();
    }

    fn drop_connection(&mut self, why: String) {
        if self.ws.take().is_some() {
            self.stats.drops += 1;
            tracing::warn!(
                feed = %self.protocol.feed(),
                endpoint = %redacted(self.protocol.url()),
                reason = %why,
                "Feed connection lost; reconnecting."
            );
        }
        if !self.ready {
            self.failures += 1;
        }
        self.ready = false;
        self.ping_sent = None;
        self.last_error = why;
    }

    /// The delay before the next attempt: `initial × 2^failures` with equal
    /// jitter, at least a fault's minimum, at most `backoff_max`.
    fn delay(&mut self) -> Duration {
        if self.stats.connects == 0 && self.failures == 0 {
            return Duration::ZERO;
        }
        let jittered = self.backoff.delay(self.failures);
        jittered.max(self.min_delay).min(self.backoff.max())
    }

    /// One connection attempt; `Err` once too many failed in a row or the
    /// endpoint cannot work at all.
    async fn attempt(&mut self) -> Result<(), FeedError> {
        let feed = self.protocol.feed();
        if self.failures > self.options.max_failures {
            return Err(FeedError::GaveUp {
                feed,
                endpoint: redacted(self.protocol.url()),
                failures: self.failures,
                last: self.last_error.clone(),
            });
        }
        let opened =
            tokio::time::timeout(self.options.connect_timeout, open(self.protocol.url())).await;
        match opened {
            Ok(Ok(ws)) => {
                self.stats.connects += 1;
                if self.stats.connects > 1 {
                    self.stats.reconnects += 1;
                }
                tracing::info!(
                    feed = %feed,
                    endpoint = %redacted(self.protocol.url()),
                    "Feed connected."
                );
                let now = Instant::now();
                self.ws = Some(ws);
                self.ready = self.protocol.ready_on_open();
                if self.ready {
                    self.failures = 0;
                }
                self.last_frame = now;
                self.last_ping = now;
                self.ping_sent = None;
                self.protocol.on_open(&mut self.outbox);
                self.flush_outbox().await;
                return Ok(());
            }
            Ok(Err(OpenError::Fatal(reason))) => {
                return Err(FeedError::Endpoint {
                    feed,
                    endpoint: redacted(self.protocol.url()),
                    reason,
                })
            }
            Ok(Err(OpenError::Retry(e))) => self.last_error = e,
            Err(_) => {
                self.last_error = format!("no connection within {:?}", self.options.connect_timeout)
            }
        }
        self.stats.failed_attempts += 1;
        self.failures += 1;
        tracing::warn!(
            feed = %feed,
            endpoint = %redacted(self.protocol.url()),
            failures = self.failures,
            error = %self.last_error,
            "Feed connection attempt failed."
        );
        Ok(())
    }
}

enum OpenError {
    /// The URL itself is unusable: retrying cannot help.
    Fatal(String),
    /// This attempt failed.
    Retry(String),
}

/// Opens a WebSocket: TCP, TLS for `wss://` (rustls, ring, the system's
/// roots), then the HTTP upgrade.
async fn open(url: &str) -> Result<Ws, OpenError> {
    let parsed = url::Url::parse(url).map_err(|e| OpenError::Fatal(e.to_string()))?;
    let tls = match parsed.scheme() {
        "ws" => false,
        "wss" => true,
        other => {
            return Err(OpenError::Fatal(format!(
                "scheme {other:?}: expected ws:// or wss://"
            )))
        }
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| OpenError::Fatal("no host".into()))?
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| OpenError::Fatal("no port".into()))?;
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| OpenError::Retry(format!("TCP: {e}")))?;
    // Ticks are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Io> = if tls {
        let config = tls_config().map_err(OpenError::Fatal)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| OpenError::Fatal(format!("host {host:?}: {e}")))?;
        let s = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| OpenError::Retry(format!("TLS: {e}")))?;
        Box::new(s)
    } else {
        Box::new(tcp)
    };
    let (ws, _response) =
        tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(|e| match e {
                // 401/403 on the upgrade: a bad token in the URL (Finnhub).
                tungstenite::Error::Http(r) if matches!(r.status().as_u16(), 401 | 403) => {
                    OpenError::Fatal(format!(
                        "the server refused the upgrade with HTTP {}: check the API key",
                        r.status()
                    ))
                }
                other => OpenError::Retry(format!("WebSocket handshake: {other}")),
            })?;
    Ok(ws)
}

/// The TLS client configuration for `wss://`, made once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no system root certificates found for wss://".into());
            }
            // The provider is named, not the process default, which is
            // ambiguous when several rustls providers are compiled in.
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// `scheme://host:port/path` of an endpoint: its query and user info may
/// hold credentials.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "<unparsable URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl FeedProtocol for Nothing {
        fn feed(&self) -> Feed {
            Feed::Finnhub
        }
        fn url(&self) -> &str {
            "ws://127.0.0.1:9/"
        }
        fn on_event(&self, _: &FeedEvent, _: &mut Vec<String>) {}
    }

    #[test]
    fn urls_are_logged_without_credentials() {
        assert_eq!(
            redacted("wss://ws.finnhub.io/?token=SECRET"),
            "wss://ws.finnhub.io/"
        );
        assert_eq!(
            redacted("ws://user:pw@127.0.0.1:8080/v2/iex?x=1"),
            "ws://127.0.0.1:8080/v2/iex"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        let options = ConnectOptions {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..ConnectOptions::default()
        };
        let mut c = FeedClient::new(
            Nothing,
            crate::sources::finnhub::FinnhubDecoder::new(crate::tick::Validator::new()),
            options,
        );
        assert_eq!(
            c.delay(),
            Duration::ZERO,
            "the first attempt waits for nothing"
        );
        for failures in 1..10u32 {
            c.failures = failures;
            let full = Duration::from_millis(100 << failures).min(Duration::from_secs(2));
            for _ in 0..20 {
                let d = c.delay();
                assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
            }
        }
        c.failures = 1;
        c.min_delay = Duration::from_secs(15);
        assert_eq!(
            c.delay(),
            Duration::from_secs(2),
            "a fault's minimum, capped"
        );
    }
}
