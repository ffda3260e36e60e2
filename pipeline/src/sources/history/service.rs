//! One GET of a history page, retried the way the feeds ask: a 429 waits
//! for `Retry-After` (else backs off), a 5xx or a broken connection backs
//! off with jitter, a bounded number of times; 401/403 and other 4xx stop at
//! once, since asking again cannot change the answer.
//!
//! Credentials travel in headers only (Alpaca's `APCA-API-*`, Polygon's
//! `Authorization: Bearer`), never in a URL, so no URL we log or put in an
//! error can leak them; error bodies quoted back are scrubbed of them all
//! the same.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use super::{HistoryError, HistoryStats};
use crate::backoff::Backoff;
use crate::sources::feed::Feed;

/// How failed requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries of one request before giving up (the first attempt is not
    /// counted).
    pub max_retries: u32,
    /// First backoff delay (before jitter).
    pub backoff_initial: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Longest `Retry-After` honoured; a server asking for more gets this
    /// (a bogus header must not park the run for hours).
    pub max_retry_after: Duration,
    /// Time allowed for one request, body included.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            // Alpaca's Basic plan allows 200 requests a minute: eight
            // doublings from 0.5 s outlast a minute's window.
            max_retries: 8,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(600),
            timeout: Duration::from_secs(120),
        }
    }
}

/// The HTTP side of a history fetch: a client, the credential headers and
/// the retry policy.
pub(crate) struct Service {
    pub feed: Feed,
    client: reqwest::Client,
    headers: HeaderMap,
    /// Values never to repeat in a message.
    secrets: Vec<String>,
    policy: RetryPolicy,
    /// Variables to name when the API refuses the credentials.
    credential_vars: &'static str,
    backoff: Backoff,
}

impl Service {
    pub fn new(
        feed: Feed,
        headers: HeaderMap,
        secrets: Vec<String>,
        credential_vars: &'static str,
        policy: RetryPolicy,
    ) -> Result<Self, HistoryError> {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .user_agent(concat!("stockanomaly/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HistoryError::Client {
                feed,
                reason: e.without_url().to_string(),
            })?;
        let backoff = Backoff::new(policy.backoff_initial, policy.backoff_max);
        Ok(Self {
            feed,
            client,
            headers,
            secrets,
            policy,
            credential_vars,
            backoff,
        })
    }

    /// GETs `url`, retrying as the module says; returns the body of the
    /// first 2xx answer.
    pub async fn get(
        &mut self,
        url: &url::Url,
        stats: &mut HistoryStats,
    ) -> Result<bytes::Bytes, HistoryError> {
        let path = url.path().to_owned();
        let mut retries = 0u32;
        loop {
            stats.requests += 1;
            let (wait, last) = match self.attempt(url).await {
                Attempt::Body(b) => return Ok(b),
                Attempt::Fatal(status, body) => return Err(self.refusal(&path, status, &body)),
                Attempt::RateLimited(after) => {
                    stats.rate_limited += 1;
                    let wait = match after {
                        Some(s) => s.min(self.policy.max_retry_after),
                        None => self.backoff(retries),
                    };
                    (wait, "429 Too Many Requests".to_owned())
                }
                Attempt::ServerError(status) => {
                    stats.server_errors += 1;
                    (self.backoff(retries), status.to_string())
                }
                Attempt::Broken(reason) => {
                    stats.connection_errors += 1;
                    (self.backoff(retries), reason)
                }
            };
            if retries >= self.policy.max_retries {
                return Err(HistoryError::GaveUp {
                    feed: self.feed,
                    path,
                    attempts: retries + 1,
                    last,
                });
            }
            retries += 1;
            stats.retries += 1;
            tracing::warn!(
                feed = %self.feed,
                path = %path,
                reason = %last,
                retry = retries,
                wait_ms = wait.as_millis() as u64,
                "History request failed; retrying."
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn attempt(&self, url: &url::Url) -> Attempt {
        let response = match self
            .client
            .get(url.clone())
            .headers(self.headers.clone())
            .send()
            .await
        {
            Ok(r) => r,
            // Connection refused or reset, timeouts, TLS: all worth another
            // try. The URL is left out (it carries no secret, but stays
            // out of messages all the same).
            Err(e) => return Attempt::Broken(chain(e.without_url())),
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::Broken(chain(e.without_url())),
        };
        if status.is_success() {
            Attempt::Body(body)
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            Attempt::RateLimited(retry_after)
        } else if status.is_server_error() {
            Attempt::ServerError(status)
        } else {
            Attempt::Fatal(status, body)
        }
    }

    /// The pause before retry number `retries` ([`Backoff`]).
    fn backoff(&mut self, retries: u32) -> Duration {
        self.backoff.delay(retries)
    }

    /// The error for an answer that retrying cannot change.
    fn refusal(&self, path: &str, status: StatusCode, body: &[u8]) -> HistoryError {
        let message = self.scrub(&body_message(body));
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            HistoryError::Unauthorized {
                feed: self.feed,
                path: path.to_owned(),
                status: status.as_u16(),
                message,
                vars: self.credential_vars,
            }
        } else {
            HistoryError::Refused {
                feed: self.feed,
                path: path.to_owned(),
                status: status.as_u16(),
                message,
            }
        }
    }

    /// `text` with every credential replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if !s.is_empty() {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// What one request gave.
enum Attempt {
    Body(bytes::Bytes),
    RateLimited(Option<Duration>),
    ServerError(StatusCode),
    Broken(String),
    Fatal(StatusCode, bytes::Bytes),
}

/// An error with its causes (`error sending request` alone does not say
/// that the connection was refused).
fn chain(e: reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// `Retry-After` in seconds (the form the feeds send; an HTTP date is
/// treated as absent, so the backoff applies).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

/// The message of an error body: its JSON `message` or `error` (Alpaca
/// sends `{"message": ...}`, Polygon `{"status":"ERROR","error": ...}`),
/// else its first 200 characters.
pub(crate) fn body_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["message", "error"] {
            if let Some(m) = v.get(key).and_then(|m| m.as_str()) {
                return m.to_owned();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_bodies_give_their_message() {
        assert_eq!(body_message(br#"{"message":"forbidden."}"#), "forbidden.");
        assert_eq!(
            body_message(br#"{"status":"ERROR","error":"Unknown API Key"}"#),
            "Unknown API Key"
        );
        assert_eq!(body_message(b"  "), "(empty body)");
        assert_eq!(body_message(b"Bad Gateway"), "Bad Gateway");
    }

    #[test]
    fn backoff_grows_with_jitter_and_stays_capped() {
        let policy = RetryPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let mut s = Service::new(Feed::Alpaca, HeaderMap::new(), vec![], "X", policy).unwrap();
        for retries in 0..30 {
            let d = s.backoff(retries);
            let exp = Duration::from_millis(100)
                .saturating_mul(1 << retries.min(20))
                .min(Duration::from_secs(1));
            assert!(d >= exp / 2 && d <= exp, "{retries}: {d:?}");
        }
    }

    #[test]
    fn credentials_are_scrubbed_from_messages() {
        let s = Service::new(
            Feed::Polygon,
            HeaderMap::new(),
            vec!["SECRET".into()],
            "POLYGON_API_KEY",
            RetryPolicy::default(),
        )
        .unwrap();
        assert_eq!(s.scrub("bad key SECRET given"), "bad key *** given");
    }
}
