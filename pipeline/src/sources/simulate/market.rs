//! The market the simulator draws from: venues and their sessions, the symbol
//! universe, the trading calendar, intraday seasonality and latent price
//! paths.
//!
//! Randomness comes in two flavours, both keyed by what they describe rather
//! than by the order things are computed in, so that any day of any symbol can
//! be generated alone, on any thread, with the same result:
//!
//! - daily quantities (a day's return, its overnight gap, its volatility
//!   level) are hashed from `(seed, what, symbol or venue, day)`, so the open
//!   of day 40 is a sum of 40 cheap hashes, not 40 simulated days;
//! - intraday paths use a [`ChaCha8Rng`] stream seeded the same way, and are
//!   pinned (a variance-weighted bridge) to end on the hashed daily return, so
//!   tomorrow's open continues today's close plus an overnight gap.
//!
//! The realistic market ([`Params::market`]) adds, still keyed by day: a
//! market-wide volatility regime that persists from day to day (an AR(1) in
//! log volatility, walked from day 0, so it costs `O(day)` hashes like the
//! open), and jumps that are part of a day's return (market shocks per venue,
//! company news per symbol), so that a jump never reverts overnight.

use std::collections::HashSet;
use std::f64::consts::TAU;

use chrono::{Datelike, Days, NaiveDate, NaiveTime, TimeZone, Weekday};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Exp1, StandardNormal};

/// Stream tags: each kind of randomness gets its own stream, so that, say,
/// changing the trade rate does not move the price path or the events.
pub(crate) const TAG_UNIVERSE: u64 = 1;
const TAG_MARKET_DAILY: u64 = 2;
const TAG_SYMBOL_DAILY: u64 = 3;
const TAG_MARKET_PATH: u64 = 4;
pub(crate) const TAG_PATH: u64 = 5;
pub(crate) const TAG_EVENTS: u64 = 6;
pub(crate) const TAG_TICKS: u64 = 7;
const TAG_REGIME: u64 = 8;
const TAG_BETA: u64 = 9;
pub(crate) const TAG_SIZES: u64 = 10;
const TAG_SHOCK: u64 = 11;
const TAG_NEWS: u64 = 12;
const TAG_CLOSE: u64 = 13;
const TAG_SWING: u64 = 14;

/// Trading days per year, to turn annualised volatility into daily.
const TRADING_DAYS_PER_YEAR: f64 = 252.0;
/// Annualised volatility of each venue's market factor (a broad index), the
/// default of [`Params::market_vol`].
pub(crate) const MARKET_VOL: f64 = 0.16;
/// Share of a day's variance that falls between one close and the next open;
/// about a fifth for large caps.
const OVERNIGHT_SHARE: f64 = 0.2;
/// Lognormal spread of a day's volatility level around the symbol's average:
/// volatility comes in calm and busy days, not as a constant.
const DAY_VOL_DISPERSION: f64 = 0.25;
/// Floor of a symbol's own (non-market) annualised volatility, so that a high
/// beta never leaves it with none.
const MIN_IDIO_VOL: f64 = 0.05;
/// Share of symbols listed on the NSE rather than the NYSE.
const NSE_SHARE: f64 = 0.2;
/// Largest move, in standard deviations, a single step may take. Student-t
/// draws are unbounded; this keeps one freak draw from overflowing `exp`.
const MAX_SHOCK: f64 = 15.0;

// The realistic market. Figures are rough stylised facts of US equities, not
// fitted: what matters is that each effect is large enough to fool a detector
// that compares a symbol only with its own recent past.

/// Day-to-day autocorrelation of the log volatility regime: calm and
/// turbulent spells last a week or two, as in GARCH fits of daily index
/// returns.
const REGIME_PERSISTENCE: f64 = 0.85;
/// Stationary standard deviation of the log regime: a turbulent day has
/// about twice the volatility of a calm one.
const REGIME_SD: f64 = 0.35;
/// The market factor's own day-level noise around the regime.
const MARKET_VOL_JITTER: f64 = 0.05;
/// Each symbol's day-level noise around the regime.
const SYMBOL_VOL_JITTER: f64 = 0.15;
/// Betas are uniform in this range (one symbol's beta, not the market's).
const BETA_RANGE: (f64, f64) = (0.5, 1.5);
/// Jumps keep this far (seconds) from the open and the close.
const JUMP_EDGE_S: u32 = 600;
/// A market shock moves the factor by this many of its daily standard
/// deviations (1-3%: a surprise rate decision, a geopolitical headline).
const SHOCK_SIGMAS: (f64, f64) = (1.0, 2.5);
/// Decay time (seconds) of the busier trading after a shock, and the trade
/// rate multiple right after it.
const SHOCK_DECAY_S: (f64, f64) = (180.0, 600.0);
const SHOCK_RATE: (f64, f64) = (2.0, 4.0);
/// Company news moves the symbol by this many of its daily standard
/// deviations (earnings, an upgrade, a contract: 2-8% on a typical name).
const NEWS_SIGMAS: (f64, f64) = (1.0, 3.0);
/// Decay time of news volume (seconds) and its starting multiple: news
/// trades heavily for tens of minutes, fading.
const NEWS_DECAY_S: (f64, f64) = (600.0, 1800.0);
const NEWS_RATE: (f64, f64) = (4.0, 10.0);
/// A jump's window (busier trading, recorded as a decoy) lasts this many
/// decay times.
const JUMP_WINDOW_DECAYS: f64 = 3.0;
/// Extra volatility right after a jump, as a multiple, decaying with it.
pub(crate) const JUMP_VOL: f64 = 1.0;
/// A market swing (a market-wide run-up that gives itself back: an index
/// futures rally that fades, a flash dip that recovers) runs for this many
/// seconds, then reverts in this share of that time: in every symbol it
/// looks like a pump and dump, scaled by the symbol's beta.
const SWING_RAMP_S: (f64, f64) = (600.0, 1800.0);
const SWING_BACK: (f64, f64) = (0.15, 0.3);
/// Size of a swing in the market factor's standard deviations over its
/// run-up (a 0.5-2% index move on an average day): a symbol of beta 1
/// moves a few of its own.
const SWING_SIGMAS: (f64, f64) = (4.0, 12.0);
/// Trade-rate multiple across the venue at the swing's turn (it grows
/// through the run-up, as in a pump, and stays while it reverts).
const SWING_RATE: (f64, f64) = (2.0, 4.0);
/// The closing auction prints this share of an average day's volume (US
/// closing auctions are 5-10% of the day).
const CLOSE_SHARE: (f64, f64) = (0.03, 0.08);
/// An index rebalance multiplies the closing auction by this much.
const REBALANCE_MULT: (f64, f64) = (5.0, 15.0);

/// Decoy kinds, each drawn with the same probability: news, market shock,
/// index rebalance and market swing.
const DECOY_KIND_COUNT: usize = 4;

/// How a day's market is drawn: the configuration's part that the daily
/// draws depend on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    /// Random seed.
    pub seed: u64,
    /// The realistic market: regimes, shocks, news, auctions, drawn betas.
    pub market: bool,
    /// Annualised volatility of the market factor.
    pub market_vol: f64,
    /// Mean unlabelled decoys per symbol-day, a quarter of each kind
    /// (market mode only).
    pub decoy_rate: f64,
}

impl Params {
    /// Probability of each decoy kind on one symbol-day (or venue-day).
    fn decoy_p(&self) -> f64 {
        if self.market && self.decoy_rate > 0.0 {
            (self.decoy_rate / DECOY_KIND_COUNT as f64).min(1.0)
        } else {
            0.0
        }
    }
}

/// A permanent jump inside a day: a market shock or company news.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Jump {
    /// When it happens, seconds since the open.
    pub at_s: u32,
    /// The log-price move (for a shock, of the market factor).
    pub size: f64,
    /// Time constant (seconds) of the heavier trading and volatility after.
    pub decay_s: f64,
    /// Trade-rate multiple right after the jump, decaying to 1.
    pub rate: f64,
}

impl Jump {
    /// How much of the jump's aftermath is left at `t` (1 at the jump, 0
    /// before it).
    pub fn excess(&self, t: f64) -> f64 {
        let since = t - f64::from(self.at_s);
        if since < 0.0 {
            0.0
        } else {
            (-since / self.decay_s).exp()
        }
    }

    /// `[at, end)` in seconds since the open: the jump and its busy
    /// aftermath, cut at the close.
    pub fn window(&self, session_s: u32) -> (u32, u32) {
        let end = f64::from(self.at_s) + JUMP_WINDOW_DECAYS * self.decay_s;
        (self.at_s, (end as u32).min(session_s))
    }

    /// Trade-rate multiple at `t`.
    pub fn rate_mult(&self, t: f64) -> f64 {
        1.0 + (self.rate - 1.0) * self.excess(t)
    }
}

/// A market-wide run-up and its reversal (see [`SWING_RAMP_S`]): a
/// transient offset of the venue's market factor, back to zero at its end,
/// with busier trading in every symbol of the venue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Swing {
    /// Start, seconds since the open.
    pub start_s: u32,
    /// Seconds of run-up.
    pub ramp_s: u32,
    /// Seconds of reversal after it.
    pub back_s: u32,
    /// Log move of the market factor at the turn (signed).
    pub size: f64,
    /// Trade-rate multiple at the turn.
    pub rate: f64,
}

impl Swing {
    /// `[start, end)` in seconds since the open.
    pub fn window(&self) -> (u32, u32) {
        (self.start_s, self.start_s + self.ramp_s + self.back_s)
    }

    /// How far through the swing `t` is: 0 outside, rising to 1 at the
    /// turn, back to 0 at the end.
    fn shape(&self, t: f64) -> f64 {
        let since = t - f64::from(self.start_s);
        let (ramp, back) = (f64::from(self.ramp_s), f64::from(self.back_s.max(1)));
        if since <= 0.0 || since >= ramp + back {
            0.0
        } else if since < ramp {
            since / ramp
        } else {
            1.0 - (since - ramp) / back
        }
    }

    /// Whether `t` is inside the swing.
    fn contains(&self, t: f64) -> bool {
        let (start, end) = self.window();
        f64::from(start) <= t && t < f64::from(end)
    }

    /// Log offset of the market factor at `t`.
    pub fn offset(&self, t: f64) -> f64 {
        self.size * self.shape(t)
    }

    /// Trade-rate multiple at `t`: growing through the run-up, at its
    /// peak while the swing reverts.
    pub fn rate_mult(&self, t: f64) -> f64 {
        if !self.contains(t) {
            return 1.0;
        }
        let since = t - f64::from(self.start_s);
        let up = (since / f64::from(self.ramp_s.max(1))).min(1.0);
        1.0 + (self.rate - 1.0) * up
    }

    /// Trade-size multiple at `t`: bigger clips as the move builds.
    pub fn size_mult(&self, t: f64) -> f64 {
        if self.contains(t) {
            1.0 + 0.5 * (self.rate_mult(t) - 1.0) / (self.rate - 1.0).max(1e-9)
        } else {
            1.0
        }
    }
}

/// With probability `p`, a swing of a `session_s`-second session whose
/// market factor moves `sigma_step` per `step_s`-second step.
fn hashed_swing(key: u64, p: f64, session_s: u32, sigma_step: f64, step_s: u32) -> Option<Swing> {
    if unit(splitmix64(key ^ 0x60)) >= p {
        return None;
    }
    let ramp_s = hashed_uniform(splitmix64(key ^ 0x61), SWING_RAMP_S) as u32;
    let back_s = (f64::from(ramp_s) * hashed_uniform(splitmix64(key ^ 0x62), SWING_BACK)) as u32;
    let room = session_s.checked_sub(2 * JUMP_EDGE_S + ramp_s + back_s)?;
    let dir = if unit(splitmix64(key ^ 0x63)) < 0.5 {
        -1.0
    } else {
        1.0
    };
    let sigmas = hashed_uniform(splitmix64(key ^ 0x64), SWING_SIGMAS);
    let ramp_steps = f64::from(ramp_s) / f64::from(step_s.max(1));
    Some(Swing {
        start_s: JUMP_EDGE_S + (unit(splitmix64(key ^ 0x65)) * f64::from(room)) as u32,
        ramp_s,
        back_s,
        size: dir * sigmas * sigma_step * ramp_steps.sqrt(),
        rate: hashed_uniform(splitmix64(key ^ 0x66), SWING_RATE),
    })
}

/// A uniform in `[lo, hi)` from a hash.
fn hashed_uniform(key: u64, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * unit(key)
}

/// With probability `p`, a jump of `sigmas` × `sd` at a hashed time of a
/// `session_s` session; the same key always gives the same jump.
fn hashed_jump(
    key: u64,
    p: f64,
    session_s: u32,
    sd: f64,
    sigmas: (f64, f64),
    decay: (f64, f64),
    rate: (f64, f64),
) -> Option<Jump> {
    let room = session_s.checked_sub(2 * JUMP_EDGE_S)?;
    if unit(splitmix64(key ^ 0x50)) >= p {
        return None;
    }
    let dir = if unit(splitmix64(key ^ 0x51)) < 0.5 {
        -1.0
    } else {
        1.0
    };
    Some(Jump {
        at_s: JUMP_EDGE_S + (unit(splitmix64(key ^ 0x52)) * f64::from(room)) as u32,
        size: dir * sd * hashed_uniform(splitmix64(key ^ 0x53), sigmas),
        decay_s: hashed_uniform(splitmix64(key ^ 0x54), decay),
        rate: hashed_uniform(splitmix64(key ^ 0x55), rate),
    })
}

/// The market-wide volatility regime, day by day from day 0: a persistent
/// multiplier (mean 1) of every volatility that day. Always 1 unless
/// `on`.
#[derive(Debug, Clone)]
pub(crate) struct Regimes {
    seed: u64,
    on: bool,
    day: u64,
    log: f64,
}

impl Regimes {
    /// The walk before day 0.
    pub fn new(seed: u64, on: bool) -> Self {
        Self {
            seed,
            on,
            day: 0,
            log: 0.0,
        }
    }

    /// The regime of `day`, walking from day 0 (`O(day)` hashes).
    pub fn at(seed: u64, on: bool, day: usize) -> f64 {
        let mut r = Self::new(seed, on);
        let mut v = r.next_day();
        for _ in 0..day {
            v = r.next_day();
        }
        v
    }

    /// The next day's regime: 1.0, 1.0, ... when off.
    pub fn next_day(&mut self) -> f64 {
        if !self.on {
            return 1.0;
        }
        let z = hashed_normal(mix(&[self.seed, TAG_REGIME, self.day]));
        // Day 0 starts from the stationary distribution, not from calm.
        self.log = if self.day == 0 {
            REGIME_SD * z
        } else {
            REGIME_PERSISTENCE * self.log
                + (1.0 - REGIME_PERSISTENCE.powi(2)).sqrt() * REGIME_SD * z
        };
        self.day += 1;
        (self.log - REGIME_SD.powi(2) / 2.0).exp()
    }
}

/// Redraws every symbol's beta uniformly in [`BETA_RANGE`] (the realistic
/// market), from a stream of its own so the rest of the universe is as in
/// the basic market.
pub(crate) fn draw_betas(seed: u64, specs: &mut [SymbolSpec]) {
    for (i, s) in specs.iter_mut().enumerate() {
        let mut rng = stream(&[seed, TAG_BETA, i as u64]);
        s.beta = rng.random_range(BETA_RANGE.0..BETA_RANGE.1);
    }
}

/// Shares in symbol `symbol`'s closing auction on `day`, given its mean
/// daily volume in shares, and whether an index rebalance swelled it
/// (`None` outside the realistic market).
pub(crate) fn closing_auction(
    p: &Params,
    symbol: usize,
    day: usize,
    daily_volume: f64,
) -> Option<(f64, bool)> {
    if !p.market {
        return None;
    }
    let k = mix(&[p.seed, TAG_CLOSE, symbol as u64, day as u64]);
    let share = hashed_uniform(splitmix64(k ^ 1), CLOSE_SHARE);
    let rebalance = unit(splitmix64(k ^ 2)) < p.decoy_p();
    let mult = if rebalance {
        hashed_uniform(splitmix64(k ^ 3), REBALANCE_MULT)
    } else {
        1.0
    };
    Some((daily_volume * share * mult, rebalance))
}

/// A venue the simulator lists symbols on.
#[derive(Debug)]
pub(crate) struct Venue {
    /// ISO 10383 market identifier.
    pub mic: &'static str,
    /// The venue's time zone: sessions are local times.
    pub tz: Tz,
    /// Continuous session open, local `(hour, minute)`.
    pub open: (u32, u32),
    /// Continuous session close, local `(hour, minute)`.
    pub close: (u32, u32),
    /// Shares per round lot.
    pub lot_size: f64,
    /// Median trade size, in lots.
    pub trade_lots: f64,
    /// Median size displayed at the best bid or ask, in lots.
    pub quote_lots: f64,
}

/// The venues, indexed by [`SymbolSpec::venue`]. NSE trades in single shares
/// and bigger clips; NYSE in 100-share lots.
pub(crate) const VENUES: [Venue; 2] = [
    Venue {
        mic: "XNYS",
        tz: chrono_tz::America::New_York,
        open: (9, 30),
        close: (16, 0),
        lot_size: 100.0,
        trade_lots: 1.5,
        quote_lots: 6.0,
    },
    Venue {
        mic: "XNSE",
        tz: chrono_tz::Asia::Kolkata,
        open: (9, 15),
        close: (15, 30),
        lot_size: 1.0,
        trade_lots: 40.0,
        quote_lots: 500.0,
    },
];

impl Venue {
    /// Length of the continuous session in seconds (no venue here changes
    /// clocks during a session).
    pub const fn session_s(&self) -> u32 {
        (self.close.0 * 60 + self.close.1 - self.open.0 * 60 - self.open.1) * 60
    }

    /// `[open, close)` of the session on local date `date`, in UTC
    /// microseconds; `None` if a local time does not exist that day.
    pub fn session(&self, date: NaiveDate) -> Option<(i64, i64)> {
        let at = |(h, m): (u32, u32)| -> Option<i64> {
            let t = NaiveTime::from_hms_opt(h, m, 0)?;
            let local = self.tz.from_local_datetime(&date.and_time(t)).earliest()?;
            Some(local.timestamp_micros())
        };
        Some((at(self.open)?, at(self.close)?))
    }
}

/// One simulated instrument and the parameters its ticks are drawn with.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolSpec {
    /// Synthetic ticker: 3 or 4 uppercase letters, unique in the universe.
    pub symbol: String,
    /// Market identifier of its venue: `XNYS` or `XNSE`.
    pub exchange: &'static str,
    /// The venue's time zone; sessions are in local time.
    pub timezone: Tz,
    /// Price on the first simulated day's open (lognormal, 5 to 2000).
    pub price: f64,
    /// Annualised volatility (0.15 to 0.80); cheap stocks tend to be wilder.
    pub volatility: f64,
    /// Sensitivity to its venue's market factor.
    pub beta: f64,
    /// Trade rate multiplier (lognormal, mean 1).
    pub liquidity: f64,
    /// Typical quoted spread in basis points, before the one-tick minimum.
    pub spread_bps: f64,
    /// Shares per round lot.
    pub lot_size: f64,
    /// Median trade size, in lots.
    pub trade_lots: f64,
    /// Median size shown at the best bid or ask, in lots.
    pub quote_lots: f64,
    /// Index into [`VENUES`].
    pub(crate) venue: usize,
}

impl SymbolSpec {
    /// `[open, close)` of the symbol's session on `date`, in UTC microseconds
    /// (the close is exclusive: no tick is stamped at the closing instant).
    /// `None` on weekends and where a local time does not exist.
    pub fn session(&self, date: NaiveDate) -> Option<(i64, i64)> {
        if !is_weekday(date) {
            return None;
        }
        VENUES[self.venue].session(date)
    }

    /// Length of the continuous session in seconds.
    pub fn session_seconds(&self) -> u32 {
        VENUES[self.venue].session_s()
    }

    /// Annualised volatility not explained by a market factor of
    /// `market_vol`.
    fn idio_vol(&self, market_vol: f64) -> f64 {
        (self.volatility.powi(2) - (self.beta * market_vol).powi(2))
            .max(MIN_IDIO_VOL * MIN_IDIO_VOL)
            .sqrt()
    }
}

/// `n` symbols with their parameters, sorted by ticker so that symbol order
/// is tick order.
pub(crate) fn universe(seed: u64, n: usize) -> Vec<SymbolSpec> {
    let mut rng = stream(&[seed, TAG_UNIVERSE]);
    // `n` is input: never reserve more than a modest amount up front.
    let cap = n.min(1 << 16);
    let mut seen = HashSet::with_capacity(cap);
    let mut specs = Vec::with_capacity(cap);
    let mut extra_letters = 0;
    for _ in 0..n {
        let symbol = ticker(&mut rng, &mut seen, &mut extra_letters);
        let venue = usize::from(rng.random_bool(NSE_SHARE));
        let v = &VENUES[venue];
        let mut z = || -> f64 { rng.sample(StandardNormal) };
        // Median 60, most between 10 and 400; the clamp keeps the tails sane.
        let price = (60f64.ln() + 1.1 * z()).exp().clamp(5.0, 2000.0);
        let volatility = (0.40 - 0.06 * (price / 60.0).ln() + 0.10 * z()).clamp(0.15, 0.80);
        let beta = (1.0 + 0.3 * z()).clamp(0.3, 2.0);
        // exp(0.6 z - 0.18) has mean 1, so `trades_per_day` stays the mean.
        let liquidity = (0.6 * z() - 0.18).exp().clamp(0.1, 8.0);
        // Liquid names quote tighter.
        let spread_bps = (3.0 / liquidity.sqrt() * (0.3 * z()).exp()).clamp(0.5, 30.0);
        let trade_lots = (v.trade_lots * (0.3 * z()).exp()).max(1.0);
        let quote_lots = (v.quote_lots * (0.3 * z()).exp()).max(1.0);
        specs.push(SymbolSpec {
            symbol,
            exchange: v.mic,
            timezone: v.tz,
            price,
            volatility,
            beta,
            liquidity,
            spread_bps,
            lot_size: v.lot_size,
            trade_lots,
            quote_lots,
            venue,
        });
    }
    specs.sort_by(|a, b| a.symbol.cmp(&b.symbol));
    specs
}

/// A fresh random ticker of 3 or 4 letters (more once short ones run out).
fn ticker(rng: &mut ChaCha8Rng, seen: &mut HashSet<String>, extra: &mut usize) -> String {
    loop {
        for _ in 0..64 {
            let len = 3 + usize::from(rng.random_bool(0.6)) + *extra;
            let s: String = (0..len)
                .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
                .collect();
            if seen.insert(s.clone()) {
                return s;
            }
        }
        // 64 collisions in a row: the short names are nearly all taken.
        *extra += 1;
    }
}

/// Whether `d` is a Monday to Friday.
pub(crate) fn is_weekday(d: NaiveDate) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

/// The `n`th (0-based) weekday on or after `start`, or `None` past the end of
/// the calendar. Constant time, so a large `n` costs nothing.
pub(crate) fn nth_weekday(start: NaiveDate, n: usize) -> Option<NaiveDate> {
    let mut d = start;
    while !is_weekday(d) {
        d = d.succ_opt()?;
    }
    let weeks = u64::try_from(n / 5).ok()?;
    d = d.checked_add_days(Days::new(weeks.checked_mul(7)?))?;
    for _ in 0..n % 5 {
        d = d.succ_opt()?;
        while !is_weekday(d) {
            d = d.succ_opt()?;
        }
    }
    Some(d)
}

/// Intraday seasonality of one venue's session on a grid of `step_s` steps.
///
/// Trading is busiest at the open and into the close, quietest at lunch (the
/// "U"); volatility follows, with the open wilder than the close; spreads are
/// wide for the first minutes while the book fills.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    /// Seconds per step.
    pub step_s: u32,
    /// Trade-rate multiplier per step, mean 1.
    pub rate: Vec<f64>,
    /// Volatility multiplier per step, mean square 1.
    pub vol: Vec<f64>,
    /// Spread multiplier per step, 1 after the opening minutes.
    pub widen: Vec<f64>,
}

impl Shape {
    /// The shape of a `session_s`-second session on `step_s`-second steps.
    pub fn new(session_s: u32, step_s: u32) -> Self {
        let step_s = step_s.max(1);
        let n = (session_s / step_s) as usize;
        let x = |i: usize| (i as f64 + 0.5) / n as f64;
        let mut rate: Vec<f64> = (0..n)
            .map(|i| {
                let x = x(i);
                0.55 + 2.4 * (-x / 0.035).exp() + 1.8 * (-(1.0 - x) / 0.045).exp()
            })
            .collect();
        let mut vol: Vec<f64> = (0..n)
            .map(|i| {
                let x = x(i);
                0.75 + 1.6 * (-x / 0.04).exp() + 0.5 * (-(1.0 - x) / 0.05).exp()
            })
            .collect();
        let widen = (0..n).map(|i| 1.0 + 1.5 * (-x(i) / 0.02).exp()).collect();
        if n > 0 {
            let mean = rate.iter().sum::<f64>() / n as f64;
            rate.iter_mut().for_each(|r| *r /= mean);
            let rms = (vol.iter().map(|v| v * v).sum::<f64>() / n as f64).sqrt();
            vol.iter_mut().for_each(|v| *v /= rms);
        }
        Self {
            step_s,
            rate,
            vol,
            widen,
        }
    }

    /// Steps in the session.
    pub fn steps(&self) -> usize {
        self.rate.len()
    }
}

/// A venue's market factor over one day.
#[derive(Debug, Clone)]
pub(crate) struct MarketDay {
    /// Cumulative log return since the open at each step boundary
    /// (`steps + 1` points, starting at 0).
    pub path: Vec<f64>,
    /// Standard deviation of one step's return at volatility multiplier 1.
    pub sigma_step: f64,
    /// The day's market shock, if any (realistic market).
    pub shock: Option<Jump>,
    /// The day's market swing, if any (realistic market), already in
    /// `path`.
    pub swing: Option<Swing>,
}

/// Daily draws of one venue's market factor or one symbol's own component.
#[derive(Debug, Clone, Copy)]
struct Daily {
    /// Open-to-close log return, any jump included.
    intraday: f64,
    /// Log return from the previous close to this open.
    gap: f64,
    /// The day's volatility level relative to average.
    vol: f64,
    /// A jump inside the day (a shock or news), part of `intraday`.
    jump: Option<Jump>,
}

/// One day's draws from `key`: the volatility level is `regime` times a
/// lognormal of spread `dispersion` (mean 1).
fn daily(key: &[u64], annual_vol: f64, regime: f64, dispersion: f64) -> Daily {
    let k = mix(key);
    let vol = regime * (dispersion * hashed_normal(k) - dispersion.powi(2) / 2.0).exp();
    let sd = annual_vol / TRADING_DAYS_PER_YEAR.sqrt() * vol;
    Daily {
        intraday: sd * (1.0 - OVERNIGHT_SHARE).sqrt() * hashed_t4(splitmix64(k ^ 1)),
        gap: sd * OVERNIGHT_SHARE.sqrt() * hashed_t4(splitmix64(k ^ 2)),
        vol,
        jump: None,
    }
}

/// The day-level spread of volatility around the regime.
fn dispersion(p: &Params, symbol: bool) -> f64 {
    match (p.market, symbol) {
        (false, _) => DAY_VOL_DISPERSION,
        (true, false) => MARKET_VOL_JITTER,
        (true, true) => SYMBOL_VOL_JITTER,
    }
}

fn market_daily(p: &Params, venue: usize, day: usize, regime: f64) -> Daily {
    let key = [p.seed, TAG_MARKET_DAILY, venue as u64, day as u64];
    let mut d = daily(&key, p.market_vol, regime, dispersion(p, false));
    let sd = p.market_vol / TRADING_DAYS_PER_YEAR.sqrt() * d.vol;
    d.jump = hashed_jump(
        mix(&[p.seed, TAG_SHOCK, venue as u64, day as u64]),
        p.decoy_p(),
        VENUES[venue].session_s(),
        sd,
        SHOCK_SIGMAS,
        SHOCK_DECAY_S,
        SHOCK_RATE,
    );
    if let Some(j) = d.jump {
        d.intraday += j.size;
    }
    d
}

fn symbol_daily(p: &Params, symbol: usize, spec: &SymbolSpec, day: usize, regime: f64) -> Daily {
    let key = [p.seed, TAG_SYMBOL_DAILY, symbol as u64, day as u64];
    let mut d = daily(
        &key,
        spec.idio_vol(p.market_vol),
        regime,
        dispersion(p, true),
    );
    // News is sized against the symbol's whole volatility that day.
    let sd = spec.volatility / TRADING_DAYS_PER_YEAR.sqrt() * d.vol;
    d.jump = hashed_jump(
        mix(&[p.seed, TAG_NEWS, symbol as u64, day as u64]),
        p.decoy_p(),
        spec.session_seconds(),
        sd,
        NEWS_SIGMAS,
        NEWS_DECAY_S,
        NEWS_RATE,
    );
    if let Some(j) = d.jump {
        d.intraday += j.size;
    }
    d
}

/// The intraday market factor of `venue` on day `day`, ending on its hashed
/// daily return; `regime` is [`Regimes::at`] that day.
pub(crate) fn market_day(
    p: &Params,
    venue: usize,
    day: usize,
    shape: &Shape,
    regime: f64,
) -> MarketDay {
    let d = market_daily(p, venue, day, regime);
    let n = shape.steps();
    let sigma_step = step_sigma(p.market_vol * d.vol, n);
    let mut rng = stream(&[p.seed, TAG_MARKET_PATH, venue as u64, day as u64]);
    let mut path = Vec::with_capacity(n + 1);
    let mut cum_var = Vec::with_capacity(n + 1);
    let (mut x, mut v) = (0.0, 0.0);
    path.push(x);
    cum_var.push(v);
    let step_s = f64::from(shape.step_s);
    let jump_step = d.jump.map(|j| (j.at_s / shape.step_s) as usize);
    for (s, &u) in shape.vol.iter().enumerate() {
        // Turbulence after a shock (exactly 1 without one).
        let u = match d.jump {
            Some(j) => u * (1.0 + JUMP_VOL * j.excess(s as f64 * step_s)),
            None => u,
        };
        x += sigma_step * u * t4(&mut rng);
        v += (sigma_step * u).powi(2);
        if jump_step == Some(s) {
            x += d.jump.map_or(0.0, |j| j.size);
        }
        path.push(x);
        cum_var.push(v);
    }
    bridge(&mut path, &cum_var, d.intraday);
    // Added after the bridge: a swing ends where it started, so the day's
    // return (and every later open) is the same with or without it.
    let swing = hashed_swing(
        mix(&[p.seed, TAG_SWING, venue as u64, day as u64]),
        p.decoy_p(),
        VENUES[venue].session_s(),
        sigma_step,
        shape.step_s,
    );
    if let Some(w) = swing {
        for (s, x) in path.iter_mut().enumerate() {
            *x += w.offset(s as f64 * step_s);
        }
    }
    MarketDay {
        path,
        sigma_step,
        shock: d.jump,
        swing,
    }
}

/// Where one symbol starts a day and where its path must end.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SymbolDay {
    /// Log price at the open.
    pub open_log: f64,
    /// Open-to-close log return the path is bridged to.
    pub intraday: f64,
    /// Standard deviation of one step of the symbol's own component.
    pub idio_sigma_step: f64,
    /// The day's volatility level of the symbol's own component (regime
    /// included), relative to average.
    pub vol: f64,
    /// Company news that day, if any (realistic market).
    pub news: Option<Jump>,
}

/// Day `day`'s anchors for symbol number `symbol`. Costs `O(day)` hashes: the
/// open is the first price compounded by every earlier day and night.
pub(crate) fn symbol_day(
    p: &Params,
    symbol: usize,
    spec: &SymbolSpec,
    day: usize,
    steps: usize,
) -> SymbolDay {
    let beta = spec.beta;
    let mut open_log = spec.price.ln();
    let mut regimes = Regimes::new(p.seed, p.market);
    // Every earlier day's open-to-close, and every night up to this open.
    for j in 0..day {
        let r = regimes.next_day();
        let (m, s) = (
            market_daily(p, spec.venue, j, r),
            symbol_daily(p, symbol, spec, j, r),
        );
        open_log += beta * m.intraday + s.intraday;
        if j > 0 {
            open_log += beta * m.gap + s.gap;
        }
    }
    let r = regimes.next_day();
    let (m, s) = (
        market_daily(p, spec.venue, day, r),
        symbol_daily(p, symbol, spec, day, r),
    );
    if day > 0 {
        open_log += beta * m.gap + s.gap;
    }
    SymbolDay {
        open_log,
        intraday: beta * m.intraday + s.intraday,
        idio_sigma_step: step_sigma(spec.idio_vol(p.market_vol) * s.vol, steps),
        vol: s.vol,
        news: s.jump,
    }
}

/// A symbol's intraday path, with the buffers it is built in (reused from
/// one symbol-day to the next).
#[derive(Debug, Default)]
pub(crate) struct Path {
    /// Log return since the open at each step boundary (`steps + 1` points).
    pub points: Vec<f64>,
    cum_var: Vec<f64>,
}

impl Path {
    /// Builds the path: beta times the market's moves plus the symbol's own
    /// Student-t shocks, each step scaled by the seasonality and by
    /// `vol_mult` (events), plus the day's news jump and the turbulence
    /// after it, bridged to end on `day.intraday`.
    pub fn build(
        &mut self,
        rng: &mut ChaCha8Rng,
        shape: &Shape,
        market: &MarketDay,
        beta: f64,
        day: &SymbolDay,
        vol_mult: &[f64],
    ) {
        self.points.clear();
        self.cum_var.clear();
        let (mut x, mut v) = (0.0, 0.0);
        self.points.push(x);
        self.cum_var.push(v);
        let var_unit = (beta * market.sigma_step).powi(2) + day.idio_sigma_step.powi(2);
        let step_s = f64::from(shape.step_s);
        let news_step = day.news.map(|j| (j.at_s / shape.step_s) as usize);
        let steps = shape.vol.iter().zip(vol_mult).zip(market.path.windows(2));
        for (s, ((&u, &k), m)) in steps.enumerate() {
            // The symbol's own turbulence after news (exactly u without).
            let own = match day.news {
                Some(j) => u * (1.0 + JUMP_VOL * j.excess(s as f64 * step_s)),
                None => u,
            };
            x += k * (beta * (m[1] - m[0]) + day.idio_sigma_step * own * t4(rng));
            v += (k * u).powi(2) * var_unit;
            if news_step == Some(s) {
                x += day.news.map_or(0.0, |j| j.size);
            }
            self.points.push(x);
            self.cum_var.push(v);
        }
        bridge(&mut self.points, &self.cum_var, day.intraday);
    }
}

/// Moves a random walk so it ends on `target`, spreading the correction in
/// proportion to each step's variance: the Brownian-bridge mean, which leaves
/// quiet stretches (lunch, a pinned price) quiet.
fn bridge(path: &mut [f64], cum_var: &[f64], target: f64) {
    let (Some(&end), Some(&total)) = (path.last(), cum_var.last()) else {
        return;
    };
    if total > 0.0 {
        let miss = end - target;
        for (p, v) in path.iter_mut().zip(cum_var) {
            *p -= v / total * miss;
        }
    }
}

/// Per-step standard deviation giving `annual_vol` over the session's
/// intraday share of a day, with `steps` steps of mean square multiplier 1.
fn step_sigma(annual_vol: f64, steps: usize) -> f64 {
    annual_vol / TRADING_DAYS_PER_YEAR.sqrt() * (1.0 - OVERNIGHT_SHARE).sqrt()
        / (steps.max(1) as f64).sqrt()
}

/// A Student-t draw with ν = 4, scaled to unit variance: `Z / sqrt(G)` with
/// `G ~ Gamma(2, 1)` (two unit exponentials) is exactly that, and cheaper
/// than a general t sampler.
pub(crate) fn t4(rng: &mut ChaCha8Rng) -> f64 {
    let z: f64 = rng.sample(StandardNormal);
    let e1: f64 = rng.sample(Exp1);
    let e2: f64 = rng.sample(Exp1);
    (z / (e1 + e2).max(1e-9).sqrt()).clamp(-MAX_SHOCK, MAX_SHOCK)
}

/// A standard normal draw.
pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(StandardNormal)
}

/// [`t4`] from a hash instead of a stream.
fn hashed_t4(key: u64) -> f64 {
    let g = -(unit(splitmix64(key ^ 0x10)).ln() + unit(splitmix64(key ^ 0x20)).ln());
    (hashed_normal(key) / g.max(1e-9).sqrt()).clamp(-MAX_SHOCK, MAX_SHOCK)
}

/// A standard normal from a hash (Box-Muller).
fn hashed_normal(key: u64) -> f64 {
    let (u1, u2) = (unit(splitmix64(key ^ 0x30)), unit(splitmix64(key ^ 0x40)));
    (-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()
}

/// A uniform in the open interval (0, 1) from 53 bits of `h`.
fn unit(h: u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// SplitMix64's output function: a bijective 64-bit mixer.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One 64-bit key from several, order-sensitive.
pub(crate) fn mix(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x243F_6A88_85A3_08D3, |h, &p| splitmix64(h ^ splitmix64(p)))
}

/// A random stream for whatever `parts` name, independent of every other.
pub(crate) fn stream(parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(parts))
}
