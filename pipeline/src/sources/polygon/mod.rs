//! Polygon.io / Massive stocks: the stream's frame decoder and, in
//! [`rest`], the aggregates history pages.
//!
//! Frames are JSON arrays of messages keyed on `ev`:
//!
//! | `ev` | becomes |
//! | --- | --- |
//! | `T` trade | a tick (`t` in epoch **milliseconds**), with the symbol's latest quote |
//! | `Q` quote | the symbol's latest bid/ask, stamped on its next trades |
//! | `AM` minute bar | a bar tick at `s` (the minute's start); a re-send of the same `(sym, s)` replaces it, or becomes a `bar_revision` amendment once emitted |
//! | `A` second bar | skipped: second bars are not the minute bars the tick model holds (counted) |
//! | `status` | a [`FeedEvent`] |
//! | anything else | ignored and counted as unknown |
//!
//! In `AM`, `a` is the *average trade size*, not a price, and `vw` the
//! VWAP: neither goes into the tick.

pub mod rest;
pub mod stream;

use std::time::Duration;

use super::feed::bars::Bar;
use super::feed::json::{field, walk_object, Slots};
use super::feed::{
    FaultAction, Feed, FeedBatch, FeedCore, FeedCounters, FeedEvent, FeedFault, FrameDecoder, Quote,
};
use crate::tick::{Rejection, TickRecord, Validator};

// Slots of the message keys read (others are skipped).
const EV: usize = 0;
const SYM: usize = 1;
const PRICE: usize = 2;
const SIZE_OR_START: usize = 3;
const TIME: usize = 4;
const BID: usize = 5;
const BID_SIZE: usize = 6;
const ASK: usize = 7;
const ASK_SIZE: usize = 8;
const OPEN: usize = 9;
const HIGH: usize = 10;
const LOW: usize = 11;
const CLOSE: usize = 12;
const VOLUME: usize = 13;
const STATUS: usize = 14;
const MESSAGE: usize = 15;
pub(crate) const N: usize = 16;

pub(crate) fn key_index(k: &str) -> Option<usize> {
    Some(match k {
        "ev" => EV,
        "sym" => SYM,
        "p" => PRICE,
        // A trade's size, an aggregate's start: the same key by event type.
        "s" => SIZE_OR_START,
        "t" => TIME,
        "bp" => BID,
        "bs" => BID_SIZE,
        "ap" => ASK,
        "as" => ASK_SIZE,
        "o" => OPEN,
        "h" => HIGH,
        "l" => LOW,
        "c" => CLOSE,
        "v" => VOLUME,
        "status" => STATUS,
        "message" => MESSAGE,
        _ => return None,
    })
}

/// Decodes Polygon/Massive stocks stream frames
/// (`wss://socket.massive.com/stocks`, formerly `socket.polygon.io`).
///
/// ```
/// use stockanomaly::sources::polygon::PolygonDecoder;
/// use stockanomaly::sources::feed::FrameDecoder;
/// use stockanomaly::tick::Validator;
///
/// let mut d = PolygonDecoder::new(Validator::with_now(1_741_012_201_123_000));
/// let mut events = Vec::new();
/// d.decode(
///     br#"[{"ev":"T","sym":"MSFT","x":12,"i":"71675","z":3,"p":412.07,"s":100,"c":[37],"t":1741012201123,"q":1298811}]"#,
///     &mut events,
/// );
/// assert_eq!(d.finish().ticks.num_rows(), 1);
/// ```
#[derive(Debug)]
pub struct PolygonDecoder {
    core: FeedCore,
}

impl PolygonDecoder {
    /// A decoder judging times against `validator`'s clock.
    pub fn new(validator: Validator) -> Self {
        Self {
            core: FeedCore::new(Feed::Polygon, validator),
        }
    }

    fn message(&mut self, raw: &[u8], events: &mut Vec<FeedEvent>) {
        let Ok(text) = std::str::from_utf8(raw) else {
            return self
                .core
                .reject(Rejection::malformed("message is not UTF-8"), raw);
        };
        let mut slots: Slots<'_, N> = Default::default();
        if let Err(e) = walk_object(text, key_index, &mut slots) {
            return self.core.reject(Rejection::malformed(e), raw);
        }
        let ev = match field::str(&slots[EV], "ev") {
            Ok(k) => k,
            Err(e) => return self.core.reject(e, raw),
        };
        let result = match ev {
            "T" => self.trade(&slots),
            "Q" => self.quote(&slots),
            "AM" => self.bar(&slots),
            "A" => {
                self.core.counters.skipped.add(ev);
                Ok(())
            }
            "status" => {
                self.core.counters.controls += 1;
                let status = field::opt_str(&slots[STATUS], "status");
                let message = field::opt_str(&slots[MESSAGE], "message");
                match (status, message) {
                    (Ok(status), Ok(message)) => {
                        events.push(classify_status(status.unwrap_or(""), message.unwrap_or("")));
                        Ok(())
                    }
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            other => {
                self.core.counters.unknown.add(other);
                Ok(())
            }
        };
        if let Err(e) = result {
            self.core.reject(e, raw);
        }
    }

    fn trade(&mut self, s: &Slots<'_, N>) -> Result<(), Rejection> {
        let rec = TickRecord::trade(
            field::epoch_ms(&s[TIME], "t")?,
            field::str(&s[SYM], "sym")?,
            field::num(&s[PRICE], "p")?,
            field::num(&s[SIZE_OR_START], "s")?,
        );
        self.core.trade(rec)
    }

    fn quote(&mut self, s: &Slots<'_, N>) -> Result<(), Rejection> {
        let q = Quote {
            bid: field::num(&s[BID], "bp")?,
            ask: field::num(&s[ASK], "ap")?,
            bid_size: field::num(&s[BID_SIZE], "bs")?,
            ask_size: field::num(&s[ASK_SIZE], "as")?,
        };
        self.core.quote(
            field::epoch_ms(&s[TIME], "t")?,
            field::str(&s[SYM], "sym")?,
            q,
        )
    }

    fn bar(&mut self, s: &Slots<'_, N>) -> Result<(), Rejection> {
        let bar = Bar {
            open: field::num(&s[OPEN], "o")?,
            high: field::num(&s[HIGH], "h")?,
            low: field::num(&s[LOW], "l")?,
            close: field::num(&s[CLOSE], "c")?,
            volume: field::num(&s[VOLUME], "v")?,
        };
        let start = field::epoch_ms(&s[SIZE_OR_START], "s")?;
        self.core.bar(start, field::str(&s[SYM], "sym")?, bar)
    }
}

impl FrameDecoder for PolygonDecoder {
    fn feed(&self) -> Feed {
        Feed::Polygon
    }

    fn decode(&mut self, frame: &[u8], events: &mut Vec<FeedEvent>) {
        let Some(spans) = self.core.split(frame) else {
            return;
        };
        for &(a, b) in &spans {
            self.message(&frame[a..b], events);
        }
        self.core.restore_spans(spans);
    }

    fn finish(&mut self) -> FeedBatch {
        self.core.finish()
    }

    fn counters(&self) -> &FeedCounters {
        &self.core.counters
    }
}

/// Classifies a `{"ev":"status","status":..,"message":..}` message.
///
/// The greeting is documented both as `connected` and as `success`, so both
/// are accepted; `success` also acknowledges subscriptions
/// (`subscribed to: T.AAPL`).
pub fn classify_status(status: &str, message: &str) -> FeedEvent {
    let fault = |cause, action| {
        FeedEvent::Fault(FeedFault {
            feed: Feed::Polygon,
            code: None,
            message: if message.is_empty() {
                status.to_owned()
            } else {
                format!("{status}: {message}")
            },
            cause,
            action,
        })
    };
    let reconnect = |s| FaultAction::Reconnect {
        min_delay: Duration::from_secs(s),
    };
    match status {
        "connected" => FeedEvent::Connected,
        "auth_success" => FeedEvent::Authenticated,
        "success" if message.contains("subscribed") => FeedEvent::Subscribed {
            detail: message.to_owned(),
        },
        "success" if message.contains("authenticated") => FeedEvent::Authenticated,
        "success" => FeedEvent::Connected,
        "auth_failed" => fault(
            "authentication failed: check POLYGON_API_KEY (plans without stream access, such as \
             the free tier, are refused too)",
            FaultAction::Fatal,
        ),
        "auth_timeout" => fault(
            "authentication was not sent in time; reconnecting",
            reconnect(1),
        ),
        "max_connections" => fault(
            "connection limit reached: another client uses this key, or an old connection is \
             still open; retrying with backoff",
            reconnect(15),
        ),
        "slow_consumer" => fault(
            "the server is dropping this client for reading too slowly; reconnecting",
            reconnect(1),
        ),
        "force_disconnect" => fault(
            "the server closed the connection; reconnecting",
            reconnect(1),
        ),
        _ => FeedEvent::Notice {
            message: format!("{status}: {message}"),
        },
    }
}

#[cfg(test)]
mod tests;
