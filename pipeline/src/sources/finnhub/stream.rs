//! Finnhub's stream handshake for the
//! [connection loop](crate::sources::feed::connect): the token goes in the
//! URL, then one `subscribe` per symbol; nothing is acknowledged.

use std::fmt;

use crate::sources::feed::connect::{credential, redacted, FeedError, FeedProtocol};
use crate::sources::feed::{Feed, FeedEvent};

/// Finnhub's stream endpoint (the token is added as `?token=`).
pub const DEFAULT_STREAM_URL: &str = "wss://ws.finnhub.io";

/// The Finnhub trades stream protocol. `Debug` and logs hide the token.
#[derive(Clone)]
pub struct FinnhubStream {
    url: String,
    symbols: Vec<String>,
}

impl FinnhubStream {
    /// The stream at `base` (`wss://ws.finnhub.io`, a test server's
    /// `ws://127.0.0.1:PORT`) with `token`, for `symbols`.
    pub fn new(base: &str, token: &str, symbols: Vec<String>) -> Result<Self, FeedError> {
        let mut url = url::Url::parse(base).map_err(|e| FeedError::Endpoint {
            feed: Feed::Finnhub,
            endpoint: redacted(base),
            reason: e.to_string(),
        })?;
        url.query_pairs_mut().append_pair("token", token);
        Ok(Self {
            url: url.into(),
            symbols,
        })
    }

    /// As [`new`](Self::new), the token from `FINNHUB_API_KEY`.
    pub fn from_env(base: &str, symbols: Vec<String>) -> Result<Self, FeedError> {
        Self::new(
            base,
            &credential(Feed::Finnhub, "FINNHUB_API_KEY")?,
            symbols,
        )
    }
}

impl fmt::Debug for FinnhubStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinnhubStream")
            .field("url", &redacted(&self.url))
            .field("symbols", &self.symbols)
            .finish()
    }
}

impl FeedProtocol for FinnhubStream {
    fn feed(&self) -> Feed {
        Feed::Finnhub
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn on_open(&self, out: &mut Vec<String>) {
        for s in &self.symbols {
            out.push(serde_json::json!({ "type": "subscribe", "symbol": s }).to_string());
        }
    }

    fn on_event(&self, _: &FeedEvent, _: &mut Vec<String>) {}

    fn ready_on_open(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_in_the_url_only_and_one_subscribe_per_symbol() {
        let s = FinnhubStream::new(
            "ws://127.0.0.1:1",
            "TOK&EN",
            vec!["AAPL".into(), "BINANCE:BTCUSDT".into()],
        )
        .unwrap();
        assert_eq!(s.url(), "ws://127.0.0.1:1/?token=TOK%26EN");
        assert!(!format!("{s:?}").contains("TOK"));
        let mut out = Vec::new();
        s.on_open(&mut out);
        let sent: Vec<serde_json::Value> = out
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        assert_eq!(
            sent,
            [
                serde_json::json!({"type": "subscribe", "symbol": "AAPL"}),
                serde_json::json!({"type": "subscribe", "symbol": "BINANCE:BTCUSDT"}),
            ]
        );
    }
}
