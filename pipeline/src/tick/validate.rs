//! Validation of decoded ticks, with a named reason for every failure.
//!
//! A stream runs for months, so "now" is never read once: the [`Validator`]
//! asks its [`Clock`] whenever a tick might be past the allowed future (the
//! system clock by default; tests inject a [`ManualClock`] and move it).

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::TickRecord;

/// 1990-01-01T00:00:00Z in microseconds: older timestamps are taken for a
/// unit or parsing mistake.
pub const MIN_TS_US: i64 = 631_152_000_000_000;

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
    /// The timestamp is further ahead than allowed: of the clock by more
    /// than a day (files), of its arrival by more than `--max-future`
    /// (streams).
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

impl std::error::Error for Rejection {}

/// Where a [`Validator`] reads "now".
pub trait Clock: Send + Sync + fmt::Debug {
    /// Microseconds since the epoch, UTC.
    fn now_us(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        chrono::Utc::now().timestamp_micros()
    }
}

/// A clock that moves only when told: tests, and replays of old data that
/// pin "now".
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use stockanomaly::tick::{ManualClock, TickRecord, Validator};
///
/// let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
/// let v = Validator::with_clock(clock.clone()).with_max_future(Duration::from_secs(5));
/// let later = 1_700_000_000_000_000 + 3_600_000_000;
/// assert!(v.check(&TickRecord::trade(later, "AAPL", 1.0, 1.0)).is_err());
/// clock.advance(Duration::from_secs(3600));
/// assert!(v.check(&TickRecord::trade(later, "AAPL", 1.0, 1.0)).is_ok());
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now_us: AtomicI64,
}

impl ManualClock {
    /// A clock showing `now_us`.
    pub fn new(now_us: i64) -> Self {
        Self {
            now_us: AtomicI64::new(now_us),
        }
    }

    /// Sets the time.
    pub fn set(&self, now_us: i64) {
        self.now_us.store(now_us, Ordering::Relaxed);
    }

    /// Moves the time forward by `d`.
    pub fn advance(&self, d: Duration) {
        let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        self.now_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.now_us.load(Ordering::Relaxed)
    }
}

/// How far past the clock a file's tick may be: time zones and clock skew,
/// not data from tomorrow.
pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(86_400);

/// Checks decoded ticks.
///
/// The future is judged against the [`Clock`] at each check, never against
/// a "now" read once: a detector runs for months. Reading the clock per
/// tick is avoided without going stale: the validator keeps the latest
/// timestamp the clock allowed when last read, and since the clock only
/// moves forward, a tick at or below it passes at once; only a tick above
/// it reads the clock again (about once per `max_future` for a live
/// stream).
#[derive(Debug)]
pub struct Validator {
    clock: Arc<dyn Clock>,
    max_future_us: i64,
    /// `clock.now_us() + max_future_us` as of the last clock read.
    limit_us: AtomicI64,
}

impl Clone for Validator {
    fn clone(&self) -> Self {
        Self {
            clock: Arc::clone(&self.clock),
            max_future_us: self.max_future_us,
            limit_us: AtomicI64::new(self.limit_us.load(Ordering::Relaxed)),
        }
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

impl Validator {
    /// A validator on the system clock that accepts timestamps up to a day
    /// ahead of it ([`DEFAULT_MAX_FUTURE`]).
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    /// A validator whose "now" is fixed at `now_us` (tests, replays of old
    /// data).
    pub fn with_now(now_us: i64) -> Self {
        Self::with_clock(Arc::new(ManualClock::new(now_us)))
    }

    /// A validator reading `clock`, accepting up to a day ahead of it.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            max_future_us: duration_us(DEFAULT_MAX_FUTURE),
            // Below any timestamp: the first check reads the clock.
            limit_us: AtomicI64::new(i64::MIN),
        }
    }

    /// Accepts timestamps at most `max_future` ahead of the clock (and of
    /// a tick's arrival, see [`check_arrived`](Self::check_arrived)).
    pub fn with_max_future(mut self, max_future: Duration) -> Self {
        self.max_future_us = duration_us(max_future);
        self.limit_us = AtomicI64::new(i64::MIN);
        self
    }

    /// How far ahead of now a timestamp may be.
    pub fn max_future(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.max_future_us).unwrap_or(0))
    }

    /// The latest timestamp allowed now (reads the clock).
    fn refresh(&self) -> i64 {
        let limit = self.clock.now_us().saturating_add(self.max_future_us);
        self.limit_us.store(limit, Ordering::Relaxed);
        limit
    }

    /// Whether `ts_us` is within the allowed future of the clock and of
    /// `arrived_us`, if given; `Err` carries the bound it broke.
    fn check_future(&self, ts_us: i64, arrived_us: Option<i64>) -> Result<(), Rejection> {
        if let Some(arrived) = arrived_us {
            if ts_us > arrived.saturating_add(self.max_future_us) {
                return Err(Rejection::new(
                    RejectReason::TimestampInFuture,
                    format!(
                        "ts {} is {} ahead of its arrival at {} (at most {} allowed)",
                        fmt_ts(ts_us),
                        fmt_ahead(ts_us - arrived),
                        fmt_ts(arrived),
                        fmt_ahead(self.max_future_us),
                    ),
                ));
            }
        }
        if ts_us <= self.limit_us.load(Ordering::Relaxed) || ts_us <= self.refresh() {
            return Ok(());
        }
        let now = self.clock.now_us();
        Err(Rejection::new(
            RejectReason::TimestampInFuture,
            format!(
                "ts {} is {} ahead of now (at most {} allowed)",
                fmt_ts(ts_us),
                fmt_ahead(ts_us.saturating_sub(now)),
                fmt_ahead(self.max_future_us),
            ),
        ))
    }

    /// [`check`](Self::check) for a record that arrived at `arrived_us`
    /// (a Kafka message's timestamp): its timestamp may be at most
    /// [`max_future`](Self::max_future) ahead of the arrival as well as of
    /// now. A replay of the message judges it as its first reading did.
    pub fn check_arrived(&self, r: &TickRecord<'_>, arrived_us: i64) -> Result<(), Rejection> {
        self.check_inner(r, Some(arrived_us))
    }

    /// Checks one record against the clock now; `Err` names the first rule
    /// it breaks.
    pub fn check(&self, r: &TickRecord<'_>) -> Result<(), Rejection> {
        self.check_inner(r, None)
    }

    fn check_inner(&self, r: &TickRecord<'_>, arrived_us: Option<i64>) -> Result<(), Rejection> {
        use RejectReason::*;
        check_symbol(r.symbol)?;
        if r.ts_us < MIN_TS_US {
            return Err(Rejection::new(
                TimestampTooOld,
                format!("ts {} is before 1990-01-01", fmt_ts(r.ts_us)),
            ));
        }
        self.check_future(r.ts_us, arrived_us)?;
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

/// A duration in whole microseconds, saturating.
fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A span of microseconds for a message, in its largest unit (`3.0h`,
/// `1.5m`, `0.250s`).
fn fmt_ahead(us: i64) -> String {
    let s = us as f64 / 1e6;
    if s >= 3600.0 {
        format!("{:.1}h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1}m", s / 60.0)
    } else {
        format!("{s:.3}s")
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
    use crate::tick::DAY_US;

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

    /// A detector keeps one validator for its whole run. It used to read
    /// the clock once, when made: a day later every live tick was refused
    /// as `timestamp_in_future` and the detector went silent. The clock is
    /// now read as the stream goes.
    #[test]
    fn a_validator_made_a_day_ago_accepts_a_live_tick_now() {
        let clock = Arc::new(ManualClock::new(NOW));
        let v = Validator::with_clock(clock.clone()).with_max_future(Duration::from_secs(5));
        let live = |ts_us| TickRecord { ts_us, ..good() };
        assert_eq!(v.check(&live(NOW)), Ok(()));
        clock.advance(Duration::from_secs(25 * 3600));
        let now = NOW + 25 * 3_600_000_000;
        assert_eq!(v.check(&live(now)), Ok(()), "a live tick 25 h later");
        assert_eq!(
            v.check(&live(now + 5_000_001)).map_err(|e| e.reason),
            Err(RejectReason::TimestampInFuture),
            "the bound moved with the clock, and stays 5 s"
        );
        // Copies share the clock.
        let copy = v.clone();
        clock.advance(Duration::from_secs(3600));
        assert_eq!(copy.check(&live(now + 3_600_000_000)), Ok(()));
    }

    /// Through the builder a stream keeps (the Kafka source's and the live
    /// feeds'), the same.
    #[test]
    fn a_tick_builder_judges_against_the_clock_at_each_push() {
        let clock = Arc::new(ManualClock::new(NOW));
        let mut b = crate::tick::TickBuilder::with_validator(
            "t",
            Validator::with_clock(clock.clone()).with_max_future(Duration::from_secs(5)),
        );
        b.push(&TickRecord::trade(NOW, "A", 1.0, 1.0)).unwrap();
        clock.advance(Duration::from_secs(25 * 3600));
        b.push(&TickRecord::trade(NOW + 25 * 3_600_000_000, "A", 1.0, 1.0))
            .unwrap();
        assert_eq!(b.finish().num_rows(), 2);
    }

    /// A tick stamped hours ahead is refused relative to its arrival (a
    /// replay of the message judges it the same, however late it reads it).
    #[test]
    fn the_future_is_bounded_by_the_arrival() {
        let v = Validator::with_now(NOW + 10 * DAY_US).with_max_future(Duration::from_secs(5));
        let at = |ts_us| TickRecord { ts_us, ..good() };
        let ahead = v
            .check_arrived(&at(NOW + 3 * 3_600_000_000), NOW)
            .unwrap_err();
        assert_eq!(ahead.reason, RejectReason::TimestampInFuture);
        assert!(
            ahead.detail.contains("3.0h ahead of its arrival"),
            "{ahead}"
        );
        assert_eq!(v.check_arrived(&at(NOW + 5_000_000), NOW), Ok(()));
        assert_eq!(v.check_arrived(&at(NOW - 1), NOW), Ok(()));
        // An arrival stamped ahead of the clock does not stretch the bound.
        let v = Validator::with_now(NOW).with_max_future(Duration::from_secs(5));
        assert!(v
            .check_arrived(&at(NOW + 60_000_000), NOW + 3_600_000_000)
            .is_err());
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = RejectReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), RejectReason::ALL.len());
    }
}
