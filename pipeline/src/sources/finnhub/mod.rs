//! Finnhub trades stream (`wss://ws.finnhub.io?token=KEY`): the frame
//! decoder.
//!
//! Each frame is one JSON object keyed on `type`:
//!
//! | `type` | becomes |
//! | --- | --- |
//! | `trade` | one tick per element of `data` (`s`, `p`, `t` in epoch ms, `v`; conditions `c` may be missing); one message may carry several trades and symbols |
//! | `ping` | [`FeedEvent::Ping`]: the server's keepalive (every 1 to 2 minutes; no pong is expected) |
//! | `error` | a [`FeedFault`] that keeps the connection (`Invalid symbol` refuses one subscription, not the session) |
//! | anything else | ignored and counted as unknown |
//!
//! A bad trade inside `data` is rejected alone; its neighbours still count.

pub mod stream;

use super::feed::json::{field, field_elements, walk_object, Slots};
use super::feed::{
    FaultAction, Feed, FeedBatch, FeedCore, FeedCounters, FeedEvent, FeedFault, FrameDecoder,
};
use crate::tick::{Rejection, TickRecord, Validator};

// Slots of the keys read: the envelope's and the trades'.
const TYPE: usize = 0;
const MSG: usize = 1;
const SYM: usize = 2;
const PRICE: usize = 3;
const TIME: usize = 4;
const VOLUME: usize = 5;
const N: usize = 6;

fn key_index(k: &str) -> Option<usize> {
    Some(match k {
        "type" => TYPE,
        "msg" => MSG,
        "s" => SYM,
        "p" => PRICE,
        "t" => TIME,
        "v" => VOLUME,
        _ => return None,
    })
}

/// Decodes Finnhub stream frames.
///
/// ```
/// use stockanomaly::sources::finnhub::FinnhubDecoder;
/// use stockanomaly::sources::feed::{FeedEvent, FrameDecoder};
/// use stockanomaly::tick::Validator;
///
/// let mut d = FinnhubDecoder::new(Validator::with_now(1_741_012_201_123_000));
/// let mut events = Vec::new();
/// d.decode(br#"{"type":"trade","data":[{"s":"AAPL","p":189.42,"t":1741012201123,"v":100,"c":["1","12"]}]}"#, &mut events);
/// d.decode(br#"{"type":"ping"}"#, &mut events);
/// assert_eq!(events, [FeedEvent::Ping]);
/// assert_eq!(d.finish().ticks.num_rows(), 1);
/// ```
#[derive(Debug)]
pub struct FinnhubDecoder {
    core: FeedCore,
}

impl FinnhubDecoder {
    /// A decoder judging times against `validator`'s clock.
    pub fn new(validator: Validator) -> Self {
        Self {
            core: FeedCore::new(Feed::Finnhub, validator),
        }
    }

    fn trades(&mut self, text: &str) {
        let mut spans = std::mem::take(&mut self.core.spans);
        match field_elements(text, "data", &mut spans) {
            Ok(true) => {
                let mut slots: Slots<'_, N> = Default::default();
                for &(a, b) in &spans {
                    self.core.counters.messages += 1;
                    let raw = &text[a..b];
                    let result = walk_object(raw, key_index, &mut slots)
                        .map_err(Rejection::malformed)
                        .and_then(|()| {
                            let rec = TickRecord::trade(
                                field::epoch_ms(&slots[TIME], "t")?,
                                field::str(&slots[SYM], "s")?,
                                field::num(&slots[PRICE], "p")?,
                                field::num(&slots[VOLUME], "v")?,
                            );
                            self.core.trade(rec)
                        });
                    if let Err(e) = result {
                        self.core.reject(e, raw.as_bytes());
                    }
                }
            }
            Ok(false) => self.core.reject(
                Rejection::malformed("trade message without a `data` array"),
                text.as_bytes(),
            ),
            Err(e) => self.core.reject(Rejection::malformed(e), text.as_bytes()),
        }
        self.core.spans = spans;
    }
}

impl FrameDecoder for FinnhubDecoder {
    fn feed(&self) -> Feed {
        Feed::Finnhub
    }

    fn decode(&mut self, frame: &[u8], events: &mut Vec<FeedEvent>) {
        self.core.counters.frames += 1;
        let Ok(text) = std::str::from_utf8(frame) else {
            return self
                .core
                .reject(Rejection::malformed("frame is not UTF-8"), frame);
        };
        let mut slots: Slots<'_, N> = Default::default();
        if let Err(e) = walk_object(text, key_index, &mut slots) {
            return self.core.reject(Rejection::malformed(e), frame);
        }
        let kind = match field::str(&slots[TYPE], "type") {
            Ok(k) => k,
            Err(e) => return self.core.reject(e, frame),
        };
        match kind {
            "trade" => self.trades(text),
            "ping" => {
                self.core.counters.controls += 1;
                events.push(FeedEvent::Ping);
            }
            "error" => {
                self.core.counters.controls += 1;
                let msg = field::opt_str(&slots[MSG], "msg")
                    .ok()
                    .flatten()
                    .unwrap_or("");
                events.push(FeedEvent::Fault(FeedFault {
                    feed: Feed::Finnhub,
                    code: None,
                    message: msg.to_owned(),
                    cause: "the server refused a request (usually a symbol it does not know or \
                            the plan does not cover); the other subscriptions go on",
                    action: FaultAction::Continue,
                }));
            }
            other => self.core.counters.unknown.add(other),
        }
    }

    fn finish(&mut self) -> FeedBatch {
        self.core.finish()
    }

    fn counters(&self) -> &FeedCounters {
        &self.core.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::RejectReason;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};

    const NOW: i64 = 1_741_012_201_123_000;

    fn decoder() -> FinnhubDecoder {
        FinnhubDecoder::new(Validator::with_now(NOW))
    }

    #[test]
    fn several_trades_and_symbols_per_message_conditions_optional() {
        let mut d = decoder();
        let mut ev = Vec::new();
        d.decode(
            br#"{"type":"trade","data":[{"s":"AAPL","p":189.42,"t":1741012201123,"v":100,"c":["1","12"]},{"s":"BINANCE:BTCUSDT","p":64000.5,"t":1741012201124,"v":0.015},{"s":"AAPL","p":189.43,"t":1741012201123,"v":5,"c":null}]}"#,
            &mut ev,
        );
        assert!(ev.is_empty());
        let b = d.finish();
        assert!(b.rejects.is_empty(), "{:?}", b.rejects);
        let t = b.ticks;
        assert_eq!(t.num_rows(), 3);
        let sym = t.column(1).as_string::<i32>();
        assert_eq!(
            sym.iter().flatten().collect::<Vec<_>>(),
            ["AAPL", "BINANCE:BTCUSDT", "AAPL"]
        );
        let ts = t.column(0).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.value(0), 1_741_012_201_123_000);
        let seq = t.column(2).as_primitive::<arrow::datatypes::UInt32Type>();
        assert_eq!((seq.value(0), seq.value(2)), (0, 1), "same (symbol, ts)");
        let vol = t.column(4).as_primitive::<Float64Type>();
        assert_eq!(vol.value(1), 0.015);
        assert_eq!(d.counters().trades, 3);
        assert_eq!(d.counters().messages, 3);
    }

    #[test]
    fn ping_error_unknown_and_bad_trades() {
        let mut d = decoder();
        let mut ev = Vec::new();
        d.decode(br#"{"type":"ping"}"#, &mut ev);
        d.decode(br#"{"type":"error","msg":"Invalid symbol"}"#, &mut ev);
        d.decode(br#"{"type":"news","data":[]}"#, &mut ev);
        d.decode(
            br#"{"type":"trade","data":[{"s":"AAPL","p":"x","t":1741012201123,"v":1},{"s":"AAPL","p":1,"t":1741012201123,"v":1},{"s":"AAPL","p":-1,"t":1741012201123,"v":1}]}"#,
            &mut ev,
        );
        d.decode(br#"{"type":"trade","data":[{"s":"AAPL""#, &mut ev);
        d.decode(br#"{"type":"trade"}"#, &mut ev);
        d.decode(b"\xff\xfe", &mut ev);
        d.decode(br#"{"data":[]}"#, &mut ev);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0], FeedEvent::Ping);
        match &ev[1] {
            FeedEvent::Fault(f) => {
                assert_eq!(f.action, FaultAction::Continue);
                assert!(f.to_string().contains("Invalid symbol"), "{f}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.counters().unknown.get("news"), 1);
        let b = d.finish();
        assert_eq!(b.ticks.num_rows(), 1);
        let reasons: Vec<(u64, RejectReason)> =
            b.rejects.iter().map(|r| (r.line, r.reason)).collect();
        assert_eq!(
            reasons,
            [
                (4, RejectReason::Malformed),
                (4, RejectReason::NonPositivePrice),
                (5, RejectReason::Malformed),
                (6, RejectReason::Malformed),
                (7, RejectReason::Malformed),
                (8, RejectReason::Malformed),
            ]
        );
        assert!(b.rejects[0].detail.contains("`p`"), "{}", b.rejects[0]);
        assert_eq!(
            b.rejects[0].record,
            r#"{"s":"AAPL","p":"x","t":1741012201123,"v":1}"#
        );
        assert!(b.rejects[3].detail.contains("data"), "{}", b.rejects[3]);
    }

    #[test]
    fn no_frame_panics() {
        use rand::{Rng, SeedableRng};
        let frame = br#"{"type":"trade","data":[{"s":"AAPL","p":189.42,"t":1741012201123,"v":100,"c":["1","12"]},{"s":"MSFT","p":1,"t":1741012201123,"v":1}]}"#;
        let mut d = decoder();
        let mut ev = Vec::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for cut in 0..frame.len() {
            d.decode(&frame[..cut], &mut ev);
        }
        for _ in 0..3000 {
            let mut f = frame.to_vec();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..f.len());
                f[i] = rng.random();
            }
            d.decode(&f, &mut ev);
        }
        d.finish();
        assert_eq!(d.counters().frames, (frame.len() + 3000) as u64);
    }
}
