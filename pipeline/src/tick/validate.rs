//! Validation of decoded ticks, with a named reason for every failure.

use std::fmt;

use super::TickRecord;

/// 1990-01-01T00:00:00Z in microseconds: older timestamps are taken for a
/// unit or parsing mistake.
pub const MIN_TS_US: i64 = 631_152_000_000_000;

const DAY_US: i64 = 86_400_000_000;

/// Why a record is not a valid tick. The `code` of each reason is stable: it
/// names the reason in reject files, dead letters and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The record could not be decoded: a missing field, a number that is not
    /// one, a timestamp in no known format, broken JSON.
    Malformed,
    /// The record's shape does not match the expected schema.
    WrongSchema,
    /// The price is NaN or infinite.
    NonFinitePrice,
    /// The price is zero or negative.
    NonPositivePrice,
    /// The volume is NaN or infinite.
    NonFiniteVolume,
    /// The volume is negative.
    NegativeVolume,
    /// An open, high or low is NaN, infinite, zero or negative.
    InvalidBar,
    /// The bar's high is below its low.
    HighBelowLow,
    /// A bid, ask or quote size is NaN, infinite or negative.
    InvalidQuote,
    /// The bid is above the ask (a crossed quote).
    BidAboveAsk,
    /// The symbol is empty.
    EmptySymbol,
    /// The symbol has characters or a length no venue uses.
    InvalidSymbol,
    /// The timestamp is before 1990-01-01.
    TimestampTooOld,
    /// The timestamp is more than a day in the future.
    TimestampInFuture,
    /// The tick is older than its symbol's last processed tick (streaming).
    Late,
}

impl RejectReason {
    /// Every reason, in a fixed order (for summaries).
    pub const ALL: [RejectReason; 15] = [
        Self::Malformed,
        Self::WrongSchema,
        Self::NonFinitePrice,
        Self::NonPositivePrice,
        Self::NonFiniteVolume,
        Self::NegativeVolume,
        Self::InvalidBar,
        Self::HighBelowLow,
        Self::InvalidQuote,
        Self::BidAboveAsk,
        Self::EmptySymbol,
        Self::InvalidSymbol,
        Self::TimestampTooOld,
        Self::TimestampInFuture,
        Self::Late,
    ];

    /// The stable snake_case code of the reason.
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongSchema => "wrong_schema",
            Self::NonFinitePrice => "non_finite_price",
            Self::NonPositivePrice => "non_positive_price",
            Self::NonFiniteVolume => "non_finite_volume",
            Self::NegativeVolume => "negative_volume",
            Self::InvalidBar => "invalid_bar",
            Self::HighBelowLow => "high_below_low",
            Self::InvalidQuote => "invalid_quote",
            Self::BidAboveAsk => "bid_above_ask",
            Self::EmptySymbol => "empty_symbol",
            Self::InvalidSymbol => "invalid_symbol",
            Self::TimestampTooOld => "timestamp_too_old",
            Self::TimestampInFuture => "timestamp_in_future",
            Self::Late => "late",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A failed validation: the reason and a human-readable detail naming the
/// offending value.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The named reason.
    pub reason: RejectReason,
    /// What exactly was wrong, e.g. `price is -3`.
    pub detail: String,
}

impl Rejection {
    /// A rejection with a reason and detail.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }

    /// A record that could not be decoded.
    pub fn malformed(detail: impl Into<String>) -> Self {
        Self::new(RejectReason::Malformed, detail)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// Checks decoded ticks. The clock is read once, when the validator is made,
/// so a run judges every record against the same "now".
#[derive(Debug, Clone, Copy)]
pub struct Validator {
    max_ts_us: i64,
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    /// A validator that accepts timestamps up to a day after now.
    pub fn new() -> Self {
        Self::with_now(chrono::Utc::now().timestamp_micros())
    }

    /// A validator whose "now" is `now_us` (tests, replays of old data).
    pub fn with_now(now_us: i64) -> Self {
        Self {
            max_ts_us: now_us.saturating_add(DAY_US),
        }
    }

    /// Checks one record; `Err` names the first rule it breaks.
    pub fn check(&self, r: &TickRecord<'_>) -> Result<(), Rejection> {
        use RejectReason::*;
        check_symbol(r.symbol)?;
        if r.ts_us < MIN_TS_US {
            return Err(Rejection::new(
                TimestampTooOld,
                format!("ts {} is before 1990-01-01", fmt_ts(r.ts_us)),
            ));
        }
        if r.ts_us > self.max_ts_us {
            return Err(Rejection::new(
                TimestampInFuture,
                format!("ts {} is more than a day in the future", fmt_ts(r.ts_us)),
            ));
        }
        if !r.price.is_finite() {
            return Err(Rejection::new(
                NonFinitePrice,
                format!("price is {}", r.price),
            ));
        }
        if r.price <= 0.0 {
            return Err(Rejection::new(
                NonPositivePrice,
                format!("price is {}", r.price),
            ));
        }
        if !r.volume.is_finite() {
            return Err(Rejection::new(
                NonFiniteVolume,
                format!("volume is {}", r.volume),
            ));
        }
        if r.volume < 0.0 {
            return Err(Rejection::new(
                NegativeVolume,
                format!("volume is {}", r.volume),
            ));
        }
        for (name, v) in [("open", r.open), ("high", r.high), ("low", r.low)] {
            if let Some(v) = v {
                if !v.is_finite() || v <= 0.0 {
                    return Err(Rejection::new(InvalidBar, format!("{name} is {v}")));
                }
            }
        }
        if let (Some(h), Some(l)) = (r.high, r.low) {
            if h < l {
                return Err(Rejection::new(HighBelowLow, format!("high {h} < low {l}")));
            }
        }
        for (name, v) in [
            ("bid", r.bid),
            ("ask", r.ask),
            ("bid_size", r.bid_size),
            ("ask_size", r.ask_size),
        ] {
            if let Some(v) = v {
                if !v.is_finite() || v < 0.0 {
                    return Err(Rejection::new(InvalidQuote, format!("{name} is {v}")));
                }
            }
        }
        if let (Some(b), Some(a)) = (r.bid, r.ask) {
            if b > a {
                return Err(Rejection::new(BidAboveAsk, format!("bid {b} > ask {a}")));
            }
        }
        Ok(())
    }
}

/// Longest symbol accepted: option and futures symbols (OCC: 21 characters)
/// fit, free text does not.
const MAX_SYMBOL_LEN: usize = 32;

/// A symbol is 1 to 32 characters: ASCII letters and digits and `. - _ / & : ^ =`,
/// starting with a letter, a digit or `^` (index symbols such as `^GSPC`).
/// That covers US, NSE (`M&M`, `BAJAJ-AUTO`), share classes (`BRK.B`), crypto
/// pairs (`BTC/USD`) and option roots; spaces, quotes and control characters
/// are refused.
fn check_symbol(s: &str) -> Result<(), Rejection> {
    if s.is_empty() {
        return Err(Rejection::new(RejectReason::EmptySymbol, "symbol is empty"));
    }
    let bytes = s.as_bytes();
    let ok_first = bytes[0].is_ascii_alphanumeric() || bytes[0] == b'^';
    let ok_rest = bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"._-/&:^=".contains(&b));
    if !ok_first || !ok_rest || bytes.len() > MAX_SYMBOL_LEN {
        return Err(Rejection::new(
            RejectReason::InvalidSymbol,
            format!("symbol {s:?} is not a valid symbol (1-{MAX_SYMBOL_LEN} of A-Z a-z 0-9 . - _ / & : ^ =)"),
        ));
    }
    Ok(())
}

/// Formats a microsecond timestamp as RFC 3339, or the raw number if it is
/// out of chrono's range.
pub(crate) fn fmt_ts(ts_us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(ts_us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{ts_us}µs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000;

    fn good() -> TickRecord<'static> {
        TickRecord {
            ts_us: NOW - 1,
            symbol: "AAPL",
            price: 10.0,
            volume: 5.0,
            open: Some(9.0),
            high: Some(11.0),
            low: Some(8.0),
            bid: Some(9.9),
            ask: Some(10.1),
            bid_size: Some(100.0),
            ask_size: Some(200.0),
        }
    }

    fn reason(r: TickRecord<'_>) -> Option<RejectReason> {
        Validator::with_now(NOW).check(&r).err().map(|e| e.reason)
    }

    #[test]
    fn accepts_a_good_tick_and_edge_values() {
        assert_eq!(reason(good()), None);
        assert_eq!(
            reason(TickRecord {
                volume: 0.0,
                ..good()
            }),
            None
        );
        assert_eq!(
            reason(TickRecord {
                bid: Some(10.1),
                ..good()
            }),
            None,
            "locked quote"
        );
        assert_eq!(
            reason(TickRecord {
                ts_us: MIN_TS_US,
                ..good()
            }),
            None
        );
        assert_eq!(
            reason(TickRecord {
                ts_us: NOW + DAY_US,
                ..good()
            }),
            None
        );
        for s in [
            "BRK.B",
            "M&M",
            "BAJAJ-AUTO",
            "BTC/USD",
            "^GSPC",
            "ES=F",
            "7203",
        ] {
            assert_eq!(
                reason(TickRecord {
                    symbol: s,
                    ..good()
                }),
                None,
                "{s}"
            );
        }
    }

    #[test]
    fn names_each_reason() {
        use RejectReason::*;
        let cases: Vec<(TickRecord<'static>, RejectReason)> = vec![
            (
                TickRecord {
                    price: f64::NAN,
                    ..good()
                },
                NonFinitePrice,
            ),
            (
                TickRecord {
                    price: f64::INFINITY,
                    ..good()
                },
                NonFinitePrice,
            ),
            (
                TickRecord {
                    price: 0.0,
                    ..good()
                },
                NonPositivePrice,
            ),
            (
                TickRecord {
                    price: -1.0,
                    ..good()
                },
                NonPositivePrice,
            ),
            (
                TickRecord {
                    volume: f64::NAN,
                    ..good()
                },
                NonFiniteVolume,
            ),
            (
                TickRecord {
                    volume: -1.0,
                    ..good()
                },
                NegativeVolume,
            ),
            (
                TickRecord {
                    open: Some(f64::NAN),
                    ..good()
                },
                InvalidBar,
            ),
            (
                TickRecord {
                    low: Some(0.0),
                    ..good()
                },
                InvalidBar,
            ),
            (
                TickRecord {
                    high: Some(7.0),
                    ..good()
                },
                HighBelowLow,
            ),
            (
                TickRecord {
                    bid: Some(-1.0),
                    ..good()
                },
                InvalidQuote,
            ),
            (
                TickRecord {
                    ask_size: Some(f64::NAN),
                    ..good()
                },
                InvalidQuote,
            ),
            (
                TickRecord {
                    bid: Some(10.2),
                    ..good()
                },
                BidAboveAsk,
            ),
            (
                TickRecord {
                    symbol: "",
                    ..good()
                },
                EmptySymbol,
            ),
            (
                TickRecord {
                    symbol: "AAPL US",
                    ..good()
                },
                InvalidSymbol,
            ),
            (
                TickRecord {
                    symbol: "-X",
                    ..good()
                },
                InvalidSymbol,
            ),
            (
                TickRecord {
                    symbol: "\"AAPL\"",
                    ..good()
                },
                InvalidSymbol,
            ),
            (
                TickRecord {
                    symbol: "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFG",
                    ..good()
                },
                InvalidSymbol,
            ),
            (
                TickRecord {
                    ts_us: MIN_TS_US - 1,
                    ..good()
                },
                TimestampTooOld,
            ),
            (
                TickRecord {
                    ts_us: NOW + DAY_US + 1,
                    ..good()
                },
                TimestampInFuture,
            ),
        ];
        for (rec, want) in cases {
            let got = Validator::with_now(NOW).check(&rec).unwrap_err();
            assert_eq!(got.reason, want, "{rec:?}: {got}");
            assert!(!got.detail.is_empty());
        }
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = RejectReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), RejectReason::ALL.len());
    }
}
