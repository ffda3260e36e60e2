//! Injected manipulation events: where in a session each goes, and what it
//! does to the prices, sizes, rates and quotes of the ticks inside it.
//!
//! An event is a window `[start_s, end_s)` in seconds since the open. The
//! generators ask it, tick by tick, for an [`Effect`]; every tick it alters is
//! recorded, and the label written is `[first altered ts, last altered ts]`.
//! Ticks are generated in time order and an event alters every tick of its
//! window (a price spike: exactly one tick, on a timestamp of its own), so a
//! label covers exactly the ticks the event touched.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};

use super::market::normal;

/// A kind of manipulation the simulator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A fat-finger print 3-10% away from the market, then back.
    PriceSpike,
    /// 2-5 minutes of volume ×10-30 with no lasting price change.
    VolumeBurst,
    /// A 10-30 minute ramp of 3-8% on rising, buyer-led volume, then a fast
    /// dump back.
    PumpAndDump,
    /// 1-5 minutes of a ×20 size on one side of the book, the price leaning
    /// toward it, ending with a real order on the other side (trades only).
    Spoofing,
    /// 5-20 minutes of volume ×5-10 at one pinned price in repeated sizes,
    /// volatility nearly gone.
    WashTrading,
    /// The last 2-5 minutes of the session pushed 1-3% on heavier volume.
    MarkingClose,
    /// A 10-60 second burst of tiny ticks at ×50 the rate with flickering
    /// quote sizes (trades only).
    QuoteStuffing,
}

impl EventKind {
    /// Every kind, in the order of [`EVENT_KINDS`](super::EVENT_KINDS).
    pub const ALL: [EventKind; 7] = [
        Self::PriceSpike,
        Self::VolumeBurst,
        Self::PumpAndDump,
        Self::Spoofing,
        Self::WashTrading,
        Self::MarkingClose,
        Self::QuoteStuffing,
    ];

    /// The kinds one-minute bars can show (no quotes, no sub-minute detail).
    pub const BARS: [EventKind; 5] = [
        Self::PriceSpike,
        Self::VolumeBurst,
        Self::PumpAndDump,
        Self::WashTrading,
        Self::MarkingClose,
    ];

    /// The label `kind` string.
    pub fn name(self) -> &'static str {
        match self {
            Self::PriceSpike => "price_spike",
            Self::VolumeBurst => "volume_burst",
            Self::PumpAndDump => "pump_and_dump",
            Self::Spoofing => "spoofing",
            Self::WashTrading => "wash_trading",
            Self::MarkingClose => "marking_close",
            Self::QuoteStuffing => "quote_stuffing",
        }
    }
}

/// Most events one symbol-day can get, whatever the configured mean.
const MAX_EVENTS: usize = 32;
/// Quiet seconds after the open and before the close (except marking the
/// close) and between two events, so that events stay apart and clear of
/// the opening auction's aftermath.
const EDGE_S: u32 = 120;
/// Placement attempts per event before giving up on it.
const PLACEMENT_TRIES: usize = 16;
/// Side-size multiple of a spoofed quote.
const SPOOF_SIZE: f64 = 20.0;
/// Trade-rate multiple of quote stuffing, and its floor in ticks per second
/// (stuffing is fast in absolute terms, even in a sleepy name).
const STUFFING_MULT: f64 = 50.0;
const STUFFING_MIN_RATE: f64 = 20.0;
/// Volatility left during wash trading: the price barely moves.
const WASH_VOL: f64 = 0.05;

/// What an event does to one trade.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effect {
    /// Whether the trade is altered (and so inside the label).
    pub altered: bool,
    /// Added to the log mid-price.
    pub offset: f64,
    /// Probability the trade is a buy (at the ask), instead of the usual
    /// order-flow persistence.
    pub buy_prob: Option<f64>,
    /// Multiplies trade sizes.
    pub size_mult: f64,
    /// Multiplies the size shown at the bid.
    pub bid_size_mult: f64,
    /// Multiplies the size shown at the ask.
    pub ask_size_mult: f64,
    /// Odd-lot sizes and flickering quote sizes (stuffing).
    pub tiny: bool,
    /// One fill only, so the tick has its timestamp to itself.
    pub single_fill: bool,
    /// Print at this price instead of the touch.
    pub price: Option<f64>,
    /// Use this size, in lots, for most trades (wash trades match each other).
    pub lots: Option<f64>,
}

impl Effect {
    /// No event.
    pub const NONE: Effect = Effect {
        altered: false,
        offset: 0.0,
        buy_prob: None,
        size_mult: 1.0,
        bid_size_mult: 1.0,
        ask_size_mult: 1.0,
        tiny: false,
        single_fill: false,
        price: None,
        lots: None,
    };

    const ALTERED: Effect = Effect {
        altered: true,
        ..Self::NONE
    };
}

/// One scheduled event on one symbol-day.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// What it is.
    pub kind: EventKind,
    /// First second of the window, since the open.
    pub start_s: u32,
    /// End of the window (exclusive), since the open.
    pub end_s: u32,
    /// When the event places an order of its own (the fat finger, the
    /// spoofer's real trade, the first manipulative order), since the open;
    /// it guarantees every event alters at least one tick.
    pub anchor_s: f64,
    /// +1 up (or bid side), -1 down (or ask side).
    dir: f64,
    /// Size of the price move: a relative jump (spike) or a log offset.
    magnitude: f64,
    /// Volume or rate multiple.
    mult: f64,
    /// Pump and dump: seconds of ramp before the dump.
    ramp_s: u32,
    /// Wash trading: the repeated trade size, in lots.
    lots: f64,
    /// Wash trading: the pinned price, set by the first wash trade.
    pinned: Option<f64>,
    /// Fraction of a second the event's own order comes after its nominal
    /// time: on a whole second it would give every label away.
    jitter: f64,
    /// First and last altered tick.
    span: Option<(i64, i64)>,
    /// The size in units of the symbol's current volatility over the
    /// event's horizon, once [`resize`](Self::resize)d (realistic market).
    pub sigmas: Option<f64>,
}

impl Event {
    /// A `kind` event with random duration and parameters, not yet placed
    /// (`start_s` 0). `bars` rounds durations to whole minutes.
    fn draw(kind: EventKind, rng: &mut ChaCha8Rng, bars: bool, trade_lots: f64) -> Self {
        use EventKind::*;
        let secs = |rng: &mut ChaCha8Rng, lo: u32, hi: u32| -> u32 {
            if bars {
                60 * rng.random_range(lo.div_ceil(60)..=hi / 60)
            } else {
                rng.random_range(lo..=hi)
            }
        };
        let sign = |rng: &mut ChaCha8Rng, p_up: f64| if rng.random_bool(p_up) { 1.0 } else { -1.0 };
        let mut e = Event {
            kind,
            start_s: 0,
            end_s: 0,
            anchor_s: 0.0,
            dir: 1.0,
            magnitude: 0.0,
            mult: 1.0,
            ramp_s: 0,
            lots: 1.0,
            pinned: None,
            jitter: rng.random_range(0.0..0.999),
            span: None,
            sigmas: None,
        };
        let dur = match kind {
            PriceSpike => {
                e.dir = sign(rng, 0.5);
                e.magnitude = rng.random_range(0.03..0.10);
                if bars {
                    60
                } else {
                    1
                }
            }
            VolumeBurst => {
                e.mult = rng.random_range(10.0..30.0);
                secs(rng, 120, 300)
            }
            PumpAndDump => {
                e.magnitude = rng.random_range(0.03f64..0.08).ln_1p();
                e.ramp_s = secs(rng, 600, 1800);
                // The dump takes a quarter to a sixth of the ramp: fast.
                let dump = secs(rng, 120, (e.ramp_s / 4).max(120));
                e.ramp_s + dump
            }
            Spoofing => {
                e.dir = sign(rng, 0.5);
                e.magnitude = rng.random_range(0.001..0.004);
                e.mult = SPOOF_SIZE;
                secs(rng, 60, 300)
            }
            WashTrading => {
                e.mult = rng.random_range(5.0..10.0);
                e.lots = (trade_lots * (0.5 * normal(rng)).exp()).round().max(1.0);
                secs(rng, 300, 1200)
            }
            MarkingClose => {
                // Mostly pushed up (a better mark for the holder), sometimes down.
                e.dir = sign(rng, 0.75);
                e.magnitude = rng.random_range(0.01f64..0.03).ln_1p();
                e.mult = rng.random_range(3.0..6.0);
                secs(rng, 120, 300)
            }
            QuoteStuffing => {
                e.mult = STUFFING_MULT;
                secs(rng, 10, 60)
            }
        };
        e.end_s = dur;
        e
    }

    /// Moves the event to start at `start_s`.
    fn place(&mut self, start_s: u32) {
        let dur = self.end_s - self.start_s;
        self.start_s = start_s;
        self.end_s = start_s + dur;
        let lead = match self.kind {
            // The spoofer trades the other side once the price has leaned.
            EventKind::Spoofing => 0.8 * f64::from(dur),
            _ => 0.0,
        };
        self.anchor_s = f64::from(start_s) + lead + self.jitter;
    }

    /// Whether `self` and `other`, widened by the gap, intersect.
    fn overlaps(&self, other: &Event) -> bool {
        self.overlaps_window((other.start_s, other.end_s))
    }

    /// Whether `[start, end)`, widened by the gap, meets the event.
    fn overlaps_window(&self, (start, end): (u32, u32)) -> bool {
        self.start_s < end + EDGE_S && start < self.end_s + EDGE_S
    }

    /// The horizon, in seconds, over which the event's price move builds:
    /// what its size is measured against.
    fn horizon_s(&self) -> u32 {
        match self.kind {
            EventKind::PumpAndDump => self.ramp_s,
            EventKind::PriceSpike => 60,
            _ => self.end_s - self.start_s,
        }
    }

    /// Sizes the price move at `sigmas` × the volatility of the symbol's
    /// returns over the event's horizon, given `sigma_minute`, the standard
    /// deviation of a one-minute return where the event starts. Kinds that
    /// do not move the price keep their multiples.
    ///
    /// Fixed percentages are obvious on a calm large cap and invisible on a
    /// wild small cap; sizing by current volatility spreads every kind from
    /// barely visible to obvious on any symbol, in any regime.
    pub fn resize(&mut self, sigmas: f64, sigma_minute: f64) {
        let horizon_min = (f64::from(self.horizon_s()) / 60.0).max(1.0);
        let size = sigmas * sigma_minute * horizon_min.sqrt();
        match self.kind {
            EventKind::PriceSpike | EventKind::Spoofing => self.magnitude = size,
            EventKind::PumpAndDump | EventKind::MarkingClose => self.magnitude = size.ln_1p(),
            _ => return,
        }
        self.sigmas = Some(sigmas);
    }

    /// Whether `t` (seconds since the open) is inside the window.
    pub fn contains(&self, t: f64) -> bool {
        f64::from(self.start_s) <= t && t < f64::from(self.end_s)
    }

    /// Fraction of the way through the ramp (pump) or the window (others).
    fn progress(&self, t: f64) -> f64 {
        let tau = t - f64::from(self.start_s);
        let len = match self.kind {
            EventKind::PumpAndDump => self.ramp_s,
            _ => self.end_s - self.start_s,
        };
        (tau / f64::from(len.max(1))).clamp(0.0, 1.0)
    }

    /// Whether a pump and dump is dumping at `t`.
    fn dumping(&self, t: f64) -> bool {
        t >= f64::from(self.start_s + self.ramp_s)
    }

    /// Log-price offset at `t`: the transient push the event puts on the
    /// price, zero once it is over.
    pub fn offset(&self, t: f64) -> f64 {
        match self.kind {
            EventKind::PumpAndDump if self.dumping(t) => {
                let dump = f64::from(self.end_s - self.start_s - self.ramp_s).max(1.0);
                let left = 1.0 - (t - f64::from(self.start_s + self.ramp_s)) / dump;
                self.magnitude * left.clamp(0.0, 1.0)
            }
            EventKind::PumpAndDump => self.magnitude * self.progress(t),
            EventKind::Spoofing => self.dir * self.magnitude * (2.0 * self.progress(t)).min(1.0),
            EventKind::MarkingClose => self.dir * self.magnitude * self.progress(t),
            _ => 0.0,
        }
    }

    /// Volatility multiple of the latent price inside the window.
    pub fn vol_mult(&self) -> f64 {
        match self.kind {
            EventKind::WashTrading => WASH_VOL,
            EventKind::VolumeBurst | EventKind::PumpAndDump => 1.3,
            EventKind::MarkingClose => 1.2,
            _ => 1.0,
        }
    }

    /// The trade rate at `t` given the undisturbed `rate` (trades/second).
    pub fn rate(&self, t: f64, rate: f64) -> f64 {
        match self.kind {
            EventKind::VolumeBurst => rate * self.mult.sqrt(),
            EventKind::PumpAndDump if self.dumping(t) => rate * 5.0,
            EventKind::PumpAndDump => rate * (1.0 + 3.0 * self.progress(t)),
            EventKind::Spoofing => rate * 1.5,
            EventKind::WashTrading => rate * self.mult,
            EventKind::MarkingClose => rate * self.mult,
            EventKind::QuoteStuffing => (rate * self.mult).max(STUFFING_MIN_RATE),
            EventKind::PriceSpike => rate,
        }
    }

    /// Trade-size multiple at `t` (with [`rate`](Self::rate), the volume).
    pub fn size_mult(&self, t: f64) -> f64 {
        match self.kind {
            EventKind::VolumeBurst => self.mult.sqrt(),
            EventKind::PumpAndDump if self.dumping(t) => 2.0,
            EventKind::PumpAndDump => 1.0 + self.progress(t),
            EventKind::MarkingClose => 1.5,
            _ => 1.0,
        }
    }

    /// Bars: the close of a fat-finger bar, from its undisturbed close.
    pub fn bar_close(&self, close: f64) -> f64 {
        match self.kind {
            EventKind::PriceSpike => close * (1.0 + self.dir * self.magnitude),
            _ => close,
        }
    }

    /// What the event does to a trade at `t` whose undisturbed mid is `mid`;
    /// `own` says the trade is the event's own order (see
    /// [`anchor_s`](Self::anchor_s)).
    pub fn trade_effect(&mut self, t: f64, own: bool, mid: f64) -> Effect {
        use EventKind::*;
        let offset = self.offset(t);
        match self.kind {
            PriceSpike if own => Effect {
                single_fill: true,
                price: Some(cents(mid * (1.0 + self.dir * self.magnitude))),
                ..Effect::ALTERED
            },
            PriceSpike => Effect::NONE,
            VolumeBurst => Effect {
                size_mult: self.size_mult(t),
                ..Effect::ALTERED
            },
            PumpAndDump => Effect {
                offset,
                buy_prob: Some(if self.dumping(t) { 0.15 } else { 0.7 }),
                size_mult: self.size_mult(t),
                ..Effect::ALTERED
            },
            Spoofing => {
                let (bid, ask) = if self.dir > 0.0 {
                    (self.mult, 1.0)
                } else {
                    (1.0, self.mult)
                };
                Effect {
                    offset,
                    // Others lean with the fake size; the spoofer's own
                    // order takes the other side.
                    buy_prob: Some(if own {
                        0.5 - 0.5 * self.dir
                    } else {
                        0.5 + 0.12 * self.dir
                    }),
                    size_mult: if own { 3.0 } else { 1.0 },
                    single_fill: own,
                    bid_size_mult: bid,
                    ask_size_mult: ask,
                    ..Effect::ALTERED
                }
            }
            WashTrading => {
                let pinned = *self.pinned.get_or_insert(cents(mid));
                Effect {
                    buy_prob: Some(0.5),
                    price: Some(pinned),
                    lots: Some(self.lots),
                    ..Effect::ALTERED
                }
            }
            MarkingClose => Effect {
                offset,
                buy_prob: Some(0.5 + 0.3 * self.dir),
                size_mult: self.size_mult(t),
                ..Effect::ALTERED
            },
            QuoteStuffing => Effect {
                tiny: true,
                single_fill: true,
                ..Effect::ALTERED
            },
        }
    }

    /// Records that the tick at `ts_us` was altered.
    pub fn mark(&mut self, ts_us: i64) {
        self.span = Some(match self.span {
            Some((first, _)) => (first, ts_us),
            None => (ts_us, ts_us),
        });
    }

    /// `[first, last]` altered tick, if the event altered any.
    pub fn span(&self) -> Option<(i64, i64)> {
        self.span
    }
}

/// Rounds a price to the cent, never below one cent.
pub(crate) fn cents(price: f64) -> f64 {
    ((price * 100.0).round() / 100.0).max(0.01)
}

/// Draws a symbol-day's events into `out`, sorted by start, non-overlapping.
///
/// The count is Poisson with mean `mean` (capped), each kind uniform among
/// `kinds`. An event that finds no free slot in a few tries is dropped (a
/// second marking-the-close, a day already crowded). Events also keep clear
/// of the `reserved` windows (decoys), so that a tick is never both labelled
/// and a decoy's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn schedule(
    rng: &mut ChaCha8Rng,
    mean: f64,
    kinds: &[EventKind],
    session_s: u32,
    bars: bool,
    trade_lots: f64,
    reserved: &[(u32, u32)],
    out: &mut Vec<Event>,
) {
    out.clear();
    if kinds.is_empty() || mean.is_nan() || mean <= 0.0 {
        return;
    }
    // Poisson::new refuses infinities; the cap makes any larger mean moot.
    let n = Poisson::new(mean.min(MAX_EVENTS as f64))
        .map(|p| p.sample(rng))
        .unwrap_or(0.0);
    for _ in 0..(n as usize).min(MAX_EVENTS) {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let mut e = Event::draw(kind, rng, bars, trade_lots);
        let dur = e.end_s - e.start_s;
        for _ in 0..PLACEMENT_TRIES {
            let start = if kind == EventKind::MarkingClose {
                session_s.saturating_sub(dur)
            } else {
                let latest = session_s.saturating_sub(EDGE_S + dur);
                if latest <= EDGE_S {
                    break;
                }
                let s = rng.random_range(EDGE_S..=latest);
                // Bars events start on a bar.
                if bars {
                    s / 60 * 60
                } else {
                    s
                }
            };
            e.place(start);
            if !out.iter().any(|o| o.overlaps(&e))
                && !reserved.iter().any(|&w| e.overlaps_window(w))
            {
                out.push(e);
                break;
            }
        }
    }
    out.sort_by_key(|e| e.start_s);
}
