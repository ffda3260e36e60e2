//! Alpaca's stream handshake: credentials after the greeting, the
//! subscription after authentication, for the
//! [connection loop](crate::sources::feed::connect).

use std::fmt;

use crate::sources::feed::connect::{credential, FeedError, FeedProtocol};
use crate::sources::feed::{Feed, FeedEvent};

/// The stream's host; a feed name (`iex`, `sip`, `delayed_sip`, `test`) is
/// appended: `wss://stream.data.alpaca.markets/v2/iex`.
pub const DEFAULT_STREAM_BASE: &str = "wss://stream.data.alpaca.markets/v2";

/// An API key pair. `Debug` shows neither part.
#[derive(Clone)]
pub struct AlpacaCredentials {
    key: String,
    secret: String,
}

impl AlpacaCredentials {
    /// A key pair given explicitly (tests, secret stores).
    pub fn new(key: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            secret: secret.into(),
        }
    }

    /// The pair from `APCA_API_KEY_ID` and `APCA_API_SECRET_KEY`, the only
    /// place credentials are read from.
    pub fn from_env() -> Result<Self, FeedError> {
        Ok(Self::new(
            credential(Feed::Alpaca, "APCA_API_KEY_ID")?,
            credential(Feed::Alpaca, "APCA_API_SECRET_KEY")?,
        ))
    }
}

impl fmt::Debug for AlpacaCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AlpacaCredentials { .. }")
    }
}

/// What to subscribe to: symbols per channel (`*` for all).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AlpacaSubscription {
    /// Trades (also brings their corrections and cancels).
    pub trades: Vec<String>,
    /// Quotes.
    pub quotes: Vec<String>,
    /// Minute bars.
    pub bars: Vec<String>,
    /// Revised minute bars.
    #[serde(rename = "updatedBars")]
    pub updated_bars: Vec<String>,
}

/// The Alpaca v2 stream protocol for [`FeedClient`](crate::sources::feed::connect::FeedClient).
#[derive(Debug, Clone)]
pub struct AlpacaStream {
    url: String,
    credentials: AlpacaCredentials,
    subscription: AlpacaSubscription,
}

impl AlpacaStream {
    /// The stream at `url` (e.g. `wss://stream.data.alpaca.markets/v2/iex`,
    /// or a test server's `ws://127.0.0.1:PORT/v2/test`).
    pub fn new(
        url: impl Into<String>,
        credentials: AlpacaCredentials,
        subscription: AlpacaSubscription,
    ) -> Self {
        Self {
            url: url.into(),
            credentials,
            subscription,
        }
    }
}

impl FeedProtocol for AlpacaStream {
    fn feed(&self) -> Feed {
        Feed::Alpaca
    }

    fn url(&self) -> &str {
        &self.url
    }

    fn on_event(&self, event: &FeedEvent, out: &mut Vec<String>) {
        match event {
            FeedEvent::Connected => out.push(
                serde_json::json!({
                    "action": "auth",
                    "key": self.credentials.key,
                    "secret": self.credentials.secret,
                })
                .to_string(),
            ),
            FeedEvent::Authenticated => {
                let mut msg = serde_json::json!({ "action": "subscribe" });
                if let (Some(m), Ok(serde_json::Value::Object(s))) = (
                    msg.as_object_mut(),
                    serde_json::to_value(&self.subscription),
                ) {
                    m.extend(s);
                }
                out.push(msg.to_string());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_and_messages_follow_the_handshake() {
        let s = AlpacaStream::new(
            "ws://127.0.0.1:1/v2/test",
            AlpacaCredentials::new("KEYID", "SECRETVALUE"),
            AlpacaSubscription {
                trades: vec!["AAPL".into()],
                bars: vec!["*".into()],
                ..Default::default()
            },
        );
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("KEYID") && !shown.contains("SECRETVALUE"),
            "{shown}"
        );
        let mut out = Vec::new();
        s.on_event(&FeedEvent::Connected, &mut out);
        s.on_event(&FeedEvent::Authenticated, &mut out);
        s.on_event(&FeedEvent::Ping, &mut out);
        assert_eq!(out.len(), 2);
        let auth: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
        assert_eq!(auth["action"], "auth");
        assert_eq!(auth["key"], "KEYID");
        assert_eq!(auth["secret"], "SECRETVALUE");
        let sub: serde_json::Value = serde_json::from_str(&out[1]).unwrap();
        assert_eq!(sub["action"], "subscribe");
        assert_eq!(sub["trades"][0], "AAPL");
        assert_eq!(sub["bars"][0], "*");
        assert_eq!(sub["updatedBars"], serde_json::json!([]));
    }
}
