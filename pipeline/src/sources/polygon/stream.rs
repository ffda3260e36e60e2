//! Polygon/Massive's stream handshake for the
//! [connection loop](crate::sources::feed::connect): the key after the
//! greeting, the subscription after `auth_success`.

use std::fmt;

use crate::sources::feed::connect::{credential, FeedError, FeedProtocol};
use crate::sources::feed::{Feed, FeedEvent};

/// The stocks stream since the 2025 rebrand (`wss://delayed.massive.com/stocks`
/// for delayed data; the old `socket.polygon.io` host is unconfirmed).
pub const DEFAULT_STREAM_URL: &str = "wss://socket.massive.com/stocks";

/// The Polygon/Massive stocks stream protocol. `Debug` hides the key.
#[derive(Clone)]
pub struct PolygonStream {
    url: String,
    key: String,
    /// Topics such as `T.AAPL`, `Q.*`, `AM.MSFT`.
    topics: Vec<String>,
}

impl PolygonStream {
    /// The stream at `url`, logging in with `key`, subscribing to `topics`
    /// (`T.AAPL`, `Q.AAPL`, `AM.AAPL`, `T.*`).
    pub fn new(url: impl Into<String>, key: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            url: url.into(),
            key: key.into(),
            topics,
        }
    }

    /// As [`new`](Self::new), the key from `POLYGON_API_KEY`.
    pub fn from_env(url: impl Into<String>, topics: Vec<String>) -> Result<Self, FeedError> {
        Ok(Self::new(
            url,
            credential(Feed::Polygon, "POLYGON_API_KEY")?,
            topics,
        ))
    }

    /// Topics for trades, quotes and minute bars of `symbols`.
    pub fn topics_for(symbols: &[&str]) -> Vec<String> {
        ["T", "Q", "AM"]
            .iter()
            .flat_map(|ev| symbols.iter().map(move |s| format!("{ev}.{s}")))
            .collect()
    }
}

impl fmt::Debug for PolygonStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolygonStream")
            .field("url", &crate::sources::feed::connect::redacted(&self.url))
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl FeedProtocol for PolygonStream {
    fn feed(&self) -> Feed {
        Feed::Polygon
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn on_event(&self, event: &FeedEvent, out: &mut Vec<String>) {
        match event {
            FeedEvent::Connected => {
                out.push(serde_json::json!({ "action": "auth", "params": self.key }).to_string())
            }
            FeedEvent::Authenticated => out.push(
                serde_json::json!({ "action": "subscribe", "params": self.topics.join(",") })
                    .to_string(),
            ),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_in_then_subscribes_and_hides_the_key() {
        let s = PolygonStream::new(
            "ws://127.0.0.1:1/stocks",
            "PKEY",
            PolygonStream::topics_for(&["AAPL", "MSFT"]),
        );
        assert!(!format!("{s:?}").contains("PKEY"));
        let mut out = Vec::new();
        s.on_event(&FeedEvent::Connected, &mut out);
        s.on_event(&FeedEvent::Authenticated, &mut out);
        let sent: Vec<serde_json::Value> = out
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        assert_eq!(
            sent,
            [
                serde_json::json!({"action": "auth", "params": "PKEY"}),
                serde_json::json!({
                    "action": "subscribe",
                    "params": "T.AAPL,T.MSFT,Q.AAPL,Q.MSFT,AM.AAPL,AM.MSFT"
                }),
            ]
        );
    }
}
