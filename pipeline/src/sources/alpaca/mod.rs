//! Alpaca Market Data v2: the stream's frame decoder, its handshake for the
//! connection loop in [`stream`], and, in [`rest`], the history pages of
//! `/v2/stocks/bars` and `/v2/stocks/trades`.
//!
//! Every stream frame is a JSON array; control messages come one per array
//! and data arrays mix types, so each element is dispatched on its `T`:
//!
//! | `T` | becomes |
//! | --- | --- |
//! | `t` trade | a tick (with the symbol's latest quote as bid/ask) |
//! | `q` quote | the symbol's latest bid/ask, stamped on its next trades |
//! | `b` minute bar | a bar tick stamped at the minute's start |
//! | `u` updated bar | replaces its pending `b`, or an amendment `bar_revision` if that was emitted |
//! | `c` correction | an amendment `correction` (original and corrected trade) |
//! | `x` cancel/error | an amendment `cancel` (`a` = `C`) or `error` (`a` = `E`) |
//! | `d`, `s`, `l` | skipped: daily bars, trading status and LULD bands are not minute ticks (counted) |
//! | `success`, `subscription`, `error` | a [`FeedEvent`] |
//! | anything else | ignored and counted as unknown |
//!
//! Times are RFC 3339 with 0 to 9 fractional digits, truncated to the
//! microsecond. Trade ids are read as `u64` (crypto ids exceed 2^53).

pub mod rest;
pub mod stream;

use std::time::Duration;

use super::feed::bars::Bar;
use super::feed::json::{field, walk_object, Scalar, Slots};
use super::feed::{
    AmendmentKind, AmendmentRecord, FaultAction, Feed, FeedBatch, FeedCore, FeedCounters,
    FeedEvent, FeedFault, FrameDecoder, Quote,
};
use crate::tick::{Rejection, TickRecord, Validator};

// Slots of the message keys the decoder reads (others are skipped).
const T: usize = 0;
const SYM: usize = 1;
const ID: usize = 2;
const EXCH: usize = 3;
const PRICE: usize = 4;
const SIZE: usize = 5;
const TIME: usize = 6;
const ASK: usize = 7;
const ASK_SIZE: usize = 8;
const BID: usize = 9;
const BID_SIZE: usize = 10;
const OPEN: usize = 11;
const HIGH: usize = 12;
const LOW: usize = 13;
const CLOSE: usize = 14;
const VOLUME: usize = 15;
const ORIG_ID: usize = 16;
const ORIG_PRICE: usize = 17;
const ORIG_SIZE: usize = 18;
const CORR_ID: usize = 19;
const CORR_PRICE: usize = 20;
const CORR_SIZE: usize = 21;
const ACTION: usize = 22;
const CODE: usize = 23;
const MSG: usize = 24;

pub(crate) const N: usize = 25;

/// The slot of a message key (a `match` compiles to a few comparisons,
/// cheaper than searching a table for every key of every trade).
pub(crate) fn key_index(k: &str) -> Option<usize> {
    Some(match k {
        "T" => T,
        "S" => SYM,
        "i" => ID,
        "x" => EXCH,
        "p" => PRICE,
        "s" => SIZE,
        "t" => TIME,
        "ap" => ASK,
        "as" => ASK_SIZE,
        "bp" => BID,
        "bs" => BID_SIZE,
        "o" => OPEN,
        "h" => HIGH,
        "l" => LOW,
        "c" => CLOSE,
        "v" => VOLUME,
        "oi" => ORIG_ID,
        "op" => ORIG_PRICE,
        "os" => ORIG_SIZE,
        "ci" => CORR_ID,
        "cp" => CORR_PRICE,
        "cs" => CORR_SIZE,
        "a" => ACTION,
        "code" => CODE,
        "msg" => MSG,
        _ => return None,
    })
}

/// Decodes Alpaca v2 stream frames (`wss://stream.data.alpaca.markets/v2/{feed}`).
///
/// ```
/// use stockanomaly::sources::alpaca::AlpacaDecoder;
/// use stockanomaly::sources::feed::{FeedEvent, FrameDecoder};
/// use stockanomaly::tick::Validator;
///
/// let mut d = AlpacaDecoder::new(Validator::with_now(1_741_012_201_000_000));
/// let mut events = Vec::new();
/// d.decode(br#"[{"T":"success","msg":"connected"}]"#, &mut events);
/// assert_eq!(events, [FeedEvent::Connected]);
/// d.decode(
///     br#"[{"T":"t","S":"AAPL","i":4211,"x":"V","p":189.42,"s":100,"c":["@"],"z":"C","t":"2025-03-03T14:30:01.123456789Z"}]"#,
///     &mut events,
/// );
/// let batch = d.finish();
/// assert_eq!(batch.ticks.num_rows(), 1);
/// assert!(batch.rejects.is_empty());
/// ```
#[derive(Debug)]
pub struct AlpacaDecoder {
    core: FeedCore,
}

impl AlpacaDecoder {
    /// A decoder judging times against `validator`'s clock.
    pub fn new(validator: Validator) -> Self {
        Self {
            core: FeedCore::new(Feed::Alpaca, validator),
        }
    }

    fn message(&mut self, raw: &[u8], events: &mut Vec<FeedEvent>) {
        let text = match std::str::from_utf8(raw) {
            Ok(t) => t,
            Err(_) => {
                return self
                    .core
                    .reject(Rejection::malformed("message is not UTF-8"), raw)
            }
        };
        let mut slots: Slots<'_, N> = Default::default();
        if let Err(e) = walk_object(text, key_index, &mut slots) {
            return self.core.reject(Rejection::malformed(e), raw);
        }
        let kind = match field::str(&slots[T], "T") {
            Ok(k) => k,
            Err(e) => return self.core.reject(e, raw),
        };
        let result = match kind {
            "t" => self.trade(&slots),
            "q" => self.quote(&slots),
            "b" | "u" => self.bar(&slots),
            "c" => self.correction(&slots),
            "x" => self.cancel(&slots),
            "d" | "s" | "l" => {
                self.core.counters.skipped.add(kind);
                Ok(())
            }
            "success" | "subscription" | "error" => {
                self.core.counters.controls += 1;
                events.push(control(kind, &slots, text));
                Ok(())
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
        // Read (and so check) the id even though ticks do not keep it: a
        // corrupt id is a corrupt message.
        field::opt_u64(&s[ID], "i")?;
        let rec = TickRecord::trade(
            field::rfc3339(&s[TIME], "t")?,
            field::str(&s[SYM], "S")?,
            field::num(&s[PRICE], "p")?,
            field::num(&s[SIZE], "s")?,
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
        self.core
            .quote(field::rfc3339(&s[TIME], "t")?, field::str(&s[SYM], "S")?, q)
    }

    fn bar(&mut self, s: &Slots<'_, N>) -> Result<(), Rejection> {
        let (start, symbol, bar) = bar_fields(s)?;
        self.core.bar(start, field::str(symbol, "S")?, bar)
    }

    fn correction(&mut self, s: &Slots<'_, N>) -> Result<(), Rejection> {
        let r = AmendmentRecord {
            trade_id: field::opt_u64(&s[ORIG_ID], "oi")?,
            exchange: field::opt_str(&s[EXCH], "x")?,
            price: Some(field::num(&s[ORIG_PRICE], "op")?),
            volume: Some(field::num(&s[ORIG_SIZE], "os")?),
            new_trade_id: field::opt_u64(&s[CORR_ID], "ci")?,
            new_price: Some(field::num(&s[CORR_PRICE], "cp")?),
            new_volume: Some(field::num(&s[CORR_SIZE], "cs")?),
            ..AmendmentRecord::new(
                field::rfc3339(&s[TIME], "t")?,
                field::str(&s[SYM], "S")?,
                AmendmentKind::Correction,
            )
        };
        self.core.amend(&r)
    }

    fn cancel(&mut self, s: &Slots<'_, N>) -> Result<(), Rejection> {
        let kind = match field::str(&s[ACTION], "a")? {
            "C" => AmendmentKind::Cancel,
            "E" => AmendmentKind::Error,
            other => {
                return Err(Rejection::malformed(format!(
                    "field `a`: expected \"C\" (cancel) or \"E\" (error), found {other:?}"
                )))
            }
        };
        let r = AmendmentRecord {
            trade_id: field::opt_u64(&s[ID], "i")?,
            exchange: field::opt_str(&s[EXCH], "x")?,
            price: Some(field::num(&s[PRICE], "p")?),
            volume: Some(field::num(&s[SIZE], "s")?),
            ..AmendmentRecord::new(
                field::rfc3339(&s[TIME], "t")?,
                field::str(&s[SYM], "S")?,
                kind,
            )
        };
        self.core.amend(&r)
    }
}

/// A bar's start, symbol slot and values (stream `b`/`u` and REST bars share
/// the layout).
pub(crate) fn bar_fields<'s, 'a>(
    s: &'s Slots<'a, N>,
) -> Result<(i64, &'s Option<Scalar<'a>>, Bar), Rejection> {
    let bar = Bar {
        open: field::num(&s[OPEN], "o")?,
        high: field::num(&s[HIGH], "h")?,
        low: field::num(&s[LOW], "l")?,
        close: field::num(&s[CLOSE], "c")?,
        volume: field::num(&s[VOLUME], "v")?,
    };
    Ok((field::rfc3339(&s[TIME], "t")?, &s[SYM], bar))
}

impl FrameDecoder for AlpacaDecoder {
    fn feed(&self) -> Feed {
        Feed::Alpaca
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

/// A control message as an event.
fn control(kind: &str, s: &Slots<'_, N>, text: &str) -> FeedEvent {
    let msg = field::opt_str(&s[MSG], "msg").ok().flatten().unwrap_or("");
    match kind {
        "success" if msg == "connected" => FeedEvent::Connected,
        "success" if msg == "authenticated" => FeedEvent::Authenticated,
        "success" => FeedEvent::Notice {
            message: msg.to_owned(),
        },
        "subscription" => FeedEvent::Subscribed {
            detail: text.to_owned(),
        },
        _ => {
            let code = match &s[CODE] {
                Some(Scalar::Int(c)) => Some(*c),
                Some(Scalar::UInt(c)) => i64::try_from(*c).ok(),
                _ => None,
            };
            FeedEvent::Fault(classify_error(code, msg))
        }
    }
}

/// Classifies an Alpaca stream error (`{"T":"error","code":..,"msg":..}`).
///
/// Codes as documented; 411 is not described in the documentation we have,
/// but the official Go SDK stops retrying on it, so it is taken as final too.
pub fn classify_error(code: Option<i64>, msg: &str) -> FeedFault {
    use FaultAction::*;
    let secs = |s| Reconnect {
        min_delay: Duration::from_secs(s),
    };
    let (cause, action) = match code {
        Some(400) => (
            "the server did not understand a message we sent (a bug in the client; please report it)",
            Fatal,
        ),
        Some(401) => (
            "a request was sent before authenticating (a bug in the connection loop; please report it)",
            Fatal,
        ),
        Some(402) => (
            "authentication failed: check APCA_API_KEY_ID and APCA_API_SECRET_KEY (paper and live keys differ)",
            Fatal,
        ),
        Some(403) => ("already authenticated on this connection (harmless)", Continue),
        Some(404) => (
            "authentication took longer than the 10 s the server allows; reconnecting",
            secs(1),
        ),
        Some(405) => (
            "symbol limit exceeded: the plan streams fewer symbols (Basic: 30); subscribe to fewer",
            Fatal,
        ),
        Some(406) => (
            "connection limit exceeded: another connection uses this key, or the server has not yet \
             noticed a dropped one (about 90 s); retrying with backoff",
            secs(15),
        ),
        Some(407) => (
            "the server found this client too slow to read the stream; reconnecting",
            secs(1),
        ),
        Some(409) => (
            "insufficient subscription: the plan does not include this feed (Basic has iex only); \
             use --feed iex or upgrade the plan",
            Fatal,
        ),
        Some(410) => (
            "invalid subscribe action for this feed (a channel it does not offer)",
            Fatal,
        ),
        Some(411) => (
            "invalid subscription request (not retried, as the official SDK does not)",
            Fatal,
        ),
        Some(429) => ("rate limited while connecting; retrying with backoff", secs(5)),
        Some(500) => ("internal server error; reconnecting with backoff", secs(2)),
        _ => ("an error code not documented; reconnecting with backoff", secs(5)),
    };
    FeedFault {
        feed: Feed::Alpaca,
        code,
        message: msg.to_owned(),
        cause,
        action,
    }
}

#[cfg(test)]
mod tests;
