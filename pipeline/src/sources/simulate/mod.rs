//! A deterministic market simulator with labelled manipulation, for training
//! and testing detectors without real data.
//!
//! # The model
//!
//! - **Universe.** Synthetic 3-4 letter tickers, about 80% on the NYSE
//!   (`XNYS`, 09:30-16:00 New York time, 100-share lots) and 20% on the NSE
//!   (`XNSE`, 09:15-15:30 Kolkata time, single shares). Each symbol draws a
//!   lognormal price level (5 to 2000), an annualised volatility (15% to 80%,
//!   cheap stocks wilder), a beta to its venue's market factor, a liquidity
//!   (trade-rate multiplier) and a typical spread (tighter when liquid).
//! - **Calendar.** Weekdays from [`SimConfig::start`], sessions in each venue's
//!   local time (daylight saving included), timestamps in UTC microseconds.
//! - **Prices.** Log price = beta × market factor + the symbol's own component,
//!   both with Student-t (ν = 4, unit variance) shocks on a fixed step grid,
//!   scaled by a U-shaped intraday volatility (wild open, calm lunch, busier
//!   close) and by a day-level volatility that varies from day to day. Each
//!   day ends on a return drawn in advance, and the next opens after an
//!   overnight gap, so days chain without simulating their predecessors.
//! - **Trades.** Poisson arrivals with U-shaped intensity; each order prints at
//!   the bid (a sell) or the ask (a buy), sides persisting a little; a few
//!   orders fill in several prints at one timestamp. Spreads are whole cents,
//!   at least one, wider at the open; displayed sizes drift; trade sizes are
//!   lognormal in round lots.
//! - **Bars.** One per session minute, stamped at its start: open, high, low,
//!   close (the `price`) of the path over the minute, and the volume of a
//!   Poisson number of trades. No quotes.
//! - **Manipulation.** A Poisson number of events per symbol-day, kinds drawn
//!   uniformly, never overlapping on a symbol (see [`EventKind`] for what each
//!   does). Each becomes a label interval covering exactly the ticks it
//!   altered. Price pushes are transient: the price returns to its path when
//!   the event ends.
//!
//! # The realistic market
//!
//! [`Realism::Market`] (the default) adds what makes surveillance hard: what
//! looks like manipulation and is not, and manipulation that barely shows.
//!
//! - **Market factor.** Betas uniform in [0.5, 1.5]; every symbol's return is
//!   beta × the venue's market return plus its own noise.
//! - **Volatility regimes.** A market-wide volatility multiplier that persists
//!   from day to day (calm and turbulent spells), with per-symbol jitter;
//!   trading is busier on turbulent days.
//! - **Closing auction.** Every symbol-day ends on one large print (3-8% of a
//!   day's volume) at the closing mid, on the session's last microsecond (the
//!   last bar, for bars).
//! - **Decoys** ([`DECOY_KINDS`]), unlabelled and written to their own table:
//!   company `news` (a jump of 1-3 daily σ that does not revert, followed by
//!   heavy, decaying volume and volatility), `market_shock` (the venue's
//!   market factor jumps 1-2.5 daily σ in one step: every symbol moves by its
//!   beta in the same minute, then trades busily), `rebalance_close` (an
//!   index rebalance: a closing auction 5-15 times the usual, and busier last
//!   minutes, with no price move) and `market_swing` (the venue's market
//!   factor runs up or down 4-12 of its σ over 10-30 minutes, trading ever
//!   busier, then gives it all back in a fraction of that: in each symbol a
//!   pump and dump scaled by its beta). Manipulation keeps clear of them.
//! - **Manipulation sizes** in units of current volatility: a price-moving
//!   event moves k × the σ of the symbol's returns over the event's horizon
//!   (one minute for a spike, the ramp for a pump), k log-uniform in
//!   [`SimConfig::event_sigmas`], so the same kind ranges from barely visible
//!   to obvious.
//!
//! # Determinism and speed
//!
//! Every random draw comes from a stream keyed by `(seed, purpose, symbol,
//! day)` (see `market`), so a day's output depends on nothing but the
//! configuration: not on threads, not on which days were simulated before.
//! What every symbol of a day shares (the market path, its shock, the
//! volatility regime) is drawn once per day from day-keyed streams before the
//! threads start.
//! Symbols of a day are generated in parallel straight into Arrow builders and
//! concatenated in ticker order, so a day's batch is sorted by `(symbol, ts)`.

mod events;
mod generate;
mod market;

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use chrono::NaiveDate;
use rand::Rng;

pub use events::EventKind;
pub use market::SymbolSpec;

use super::{Position, Source, SourceBatch, SourceError};
use crate::labels::{label_schema, LabelBuilder};
use crate::tick::{col, tick_schema, Reject, TickBuilder, Validator};
use events::Event;
use market::{MarketDay, Params, Path, Regimes, Shape};

/// Every manipulation kind the simulator injects, as label `kind` strings.
pub const EVENT_KINDS: [&str; 7] = [
    "price_spike",
    "volume_burst",
    "pump_and_dump",
    "spoofing",
    "wash_trading",
    "marking_close",
    "quote_stuffing",
];

/// Every unlabelled decoy kind of the realistic market, as `decoys` table
/// `kind` strings.
pub const DECOY_KINDS: [&str; 4] = ["news", "market_shock", "rebalance_close", "market_swing"];

/// [`SimConfig::event_sigmas`]' default: from barely visible to obvious.
pub const DEFAULT_EVENT_SIGMAS: (f64, f64) = (1.0, 10.0);

/// [`SimConfig::market_vol`]'s default: a broad index's long-run volatility.
pub const DEFAULT_MARKET_VOL: f64 = market::MARKET_VOL;

/// Largest [`SimConfig::market_vol`] used; beyond it is not a stock market.
const MAX_MARKET_VOL: f64 = 2.0;

/// An index rebalance busies the last seconds of continuous trading too.
const REBALANCE_S: u32 = 180;
const REBALANCE_RATE: f64 = 3.0;
/// After news, trades are bigger too: this multiple of the extra rate.
const NEWS_SIZE: f64 = 0.25;

/// The `source` of simulated ticks and labels.
pub(crate) const SOURCE: &str = "simulator";

/// The validator's "now": simulated dates may lie anywhere in the future, so
/// the future check must never fire (the validator saturates, no overflow).
const FAR_FUTURE_US: i64 = i64::MAX / 4;

/// The validator refuses ticks before 1990; earlier starts are moved here.
const EARLIEST_START: NaiveDate = match NaiveDate::from_ymd_opt(1990, 1, 1) {
    Some(d) => d,
    None => panic!("1990-01-01 is a date"),
};

/// [`SimConfig::start`]'s default, the first trading day of 2024.
const DEFAULT_START: NaiveDate = match NaiveDate::from_ymd_opt(2024, 1, 2) {
    Some(d) => d,
    None => panic!("2024-01-02 is a date"),
};

/// Seconds per latent-path step. Trades sample the path between steps, so one
/// second is fine enough; bars need only enough points per minute for a
/// realistic high and low.
const TRADES_STEP_S: u32 = 1;
const BARS_STEP_S: u32 = 5;

/// Cap on [`SimConfig::trades_per_day`], far beyond any real stock.
const MAX_TRADES_PER_DAY: f64 = 1e8;

/// Trades (with bid/ask quotes) or one-minute bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimKind {
    /// Every trade, with the best bid and ask and their sizes.
    Trades,
    /// One OHLCV bar per session minute, no quotes.
    Bars,
}

/// How much of a real market's confusion to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Realism {
    /// Symbols with their own volatility on a market factor, independent
    /// day-level volatility, manipulation of fixed percentage sizes, no
    /// decoys, no closing auction (the simulator before realism).
    Basic,
    /// The basic market plus drawn betas, persistent volatility regimes, a
    /// daily closing auction, unlabelled decoys (news, market shocks and
    /// swings, index rebalances) and manipulation sized in units of current
    /// volatility.
    Market,
}

/// What to simulate. The same configuration always gives the same output.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of symbols.
    pub symbols: usize,
    /// Trading days (weekdays only) starting at `start`.
    pub days: usize,
    /// Trades or bars.
    pub kind: SimKind,
    /// Random seed.
    pub seed: u64,
    /// First trading day (the next weekday if it falls on a weekend; dates
    /// before 1990-01-01, which the tick validator refuses, move there).
    pub start: NaiveDate,
    /// Mean trades per symbol per trading day (the trades kind; bars use it
    /// for their volume). Zero, negative or NaN means no trades and no
    /// events; capped at 10^8.
    pub trades_per_day: f64,
    /// Mean injected manipulation events per symbol per day (at most 32 a
    /// symbol-day are placed). Zero or less: a clean market.
    pub events_per_symbol_day: f64,
    /// Basic or realistic market.
    pub realism: Realism,
    /// Mean unlabelled decoys per symbol per day (realistic market), a
    /// quarter of each kind: each symbol-day gets news, and an index
    /// rebalance, with probability a quarter of it, and each venue-day a
    /// market shock and a market swing (which every symbol of the venue
    /// feels). At most one of each: 4 or more means all four every day. Zero
    /// or less, or NaN: none.
    pub decoys_per_symbol_day: f64,
    /// Annualised volatility of each venue's market factor. Negative or NaN
    /// means the default; capped at 2.
    pub market_vol: f64,
    /// Range `(low, high)` of manipulation sizes in units of current
    /// volatility (realistic market), drawn log-uniformly. Swapped if
    /// reversed; values that are not positive and finite mean the default.
    pub event_sigmas: (f64, f64),
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            symbols: 20,
            days: 5,
            kind: SimKind::Trades,
            seed: 42,
            start: DEFAULT_START,
            trades_per_day: 20_000.0,
            events_per_symbol_day: 0.5,
            realism: Realism::Market,
            decoys_per_symbol_day: 0.5,
            market_vol: DEFAULT_MARKET_VOL,
            event_sigmas: DEFAULT_EVENT_SIGMAS,
        }
    }
}

/// One simulated trading day.
#[derive(Debug, Clone)]
pub struct SimDay {
    /// The trading day (each symbol's local date).
    pub date: NaiveDate,
    /// Every symbol's ticks, [`tick_schema`], sorted by `(symbol, ts)`.
    pub ticks: RecordBatch,
    /// The day's injected events, [`label_schema`], sorted by
    /// `(symbol, start_ts)`.
    pub labels: RecordBatch,
    /// The day's unlabelled decoys ([`DECOY_KINDS`]), in the same schema and
    /// order as `labels`: normal events that look like manipulation, for
    /// telling false alarms apart by cause, never for training.
    pub decoys: RecordBatch,
    /// Ticks the validator refused. Always empty unless the simulator has a
    /// bug; kept rather than dropped so that one would show.
    pub rejects: Vec<Reject>,
}

/// The simulator: a fixed universe of symbols over a fixed calendar, any day
/// of which can be generated on demand.
///
/// ```
/// use stockanomaly::sources::simulate::{SimConfig, Simulator};
///
/// let sim = Simulator::new(SimConfig { symbols: 3, days: 1, trades_per_day: 500.0, ..SimConfig::default() });
/// let day = sim.simulate_day(0);
/// assert_eq!(day.date, sim.trading_days()[0]);
/// assert!(day.ticks.num_rows() > 0);
/// ```
#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    /// `config.start`, moved to the earliest date the validator accepts.
    start: NaiveDate,
    symbols: Vec<SymbolSpec>,
    /// Per venue, on the kind's step grid.
    shapes: Vec<Shape>,
    threads: Option<usize>,
}

impl Simulator {
    /// A simulator for `config`: draws the universe (cheap); days are
    /// generated by [`simulate_day`](Self::simulate_day).
    pub fn new(config: SimConfig) -> Self {
        let start = config.start.max(EARLIEST_START);
        if start != config.start {
            tracing::warn!(
                start = %config.start,
                using = %start,
                "Simulation start is before 1990, which ticks may not be; starting in 1990."
            );
        }
        let step = match config.kind {
            SimKind::Trades => TRADES_STEP_S,
            SimKind::Bars => BARS_STEP_S,
        };
        let shapes = market::VENUES
            .iter()
            .map(|v| Shape::new(v.session_s(), step))
            .collect();
        let mut symbols = market::universe(config.seed, config.symbols);
        if config.realism == Realism::Market {
            market::draw_betas(config.seed, &mut symbols);
        }
        Self {
            symbols,
            start,
            shapes,
            config,
            threads: None,
        }
    }

    /// Uses at most `threads` threads per day (default: one per core). The
    /// output does not depend on it.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The symbols, sorted by ticker.
    pub fn symbols(&self) -> &[SymbolSpec] {
        &self.symbols
    }

    /// The `symbols` rows of the universe (exchange, zone, session), valid
    /// from the first trading day.
    pub fn symbols_table(&self) -> arrow::array::RecordBatch {
        let listed = self
            .trading_day(0)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(0, |t| t.and_utc().timestamp_micros());
        let rows: Vec<crate::symbols::SymbolInfo<'_>> = self
            .symbols
            .iter()
            .map(|s| {
                let v = &market::VENUES[s.venue];
                crate::symbols::SymbolInfo {
                    symbol: &s.symbol,
                    exchange: v.mic,
                    timezone: v.tz.name(),
                    open: v.open,
                    close: v.close,
                }
            })
            .collect();
        crate::symbols::symbols_batch(listed, &rows)
    }

    /// The trading days, in order.
    pub fn trading_days(&self) -> Vec<NaiveDate> {
        (0..self.config.days)
            .map_while(|d| self.trading_day(d))
            .collect()
    }

    /// Trading day number `day` (0-based), or `None` outside the configured
    /// days.
    pub fn trading_day(&self, day: usize) -> Option<NaiveDate> {
        if day >= self.config.days {
            return None;
        }
        market::nth_weekday(self.start, day)
    }

    /// All symbols' ticks for trading day `day` (0-based), sorted by
    /// `(symbol, ts)`, plus that day's label intervals. A day outside the
    /// configuration gives empty batches (its `date` is where the day would
    /// fall, or the last representable date past the calendar's end).
    pub fn simulate_day(&self, day: usize) -> SimDay {
        let empty = |date: NaiveDate| SimDay {
            date,
            ticks: RecordBatch::new_empty(tick_schema()),
            labels: RecordBatch::new_empty(label_schema()),
            decoys: RecordBatch::new_empty(label_schema()),
            rejects: Vec::new(),
        };
        let Some(date) = self.trading_day(day) else {
            return empty(market::nth_weekday(self.start, day).unwrap_or(NaiveDate::MAX));
        };
        if self.symbols.is_empty() {
            return empty(date);
        }
        // Shared by every symbol, so drawn here, keyed by the day, before
        // the threads start.
        let params = self.params();
        let regime = Regimes::at(params.seed, params.market, day);
        let markets: Vec<MarketDay> = self
            .shapes
            .iter()
            .enumerate()
            .map(|(venue, shape)| market::market_day(&params, venue, day, shape, regime))
            .collect();
        let parts = self.symbol_days(day, date, &markets);
        let ticks = concat(tick_schema(), parts.iter().map(|p| &p.ticks));
        let labels = concat(label_schema(), parts.iter().map(|p| &p.labels));
        let decoys = concat(label_schema(), parts.iter().map(|p| &p.decoys));
        let rejects: Vec<Reject> = parts.into_iter().flat_map(|p| p.rejects).collect();
        tracing::debug!(
            day,
            %date,
            ticks = ticks.num_rows(),
            labels = labels.num_rows(),
            decoys = decoys.num_rows(),
            rejects = rejects.len(),
            "Simulated a trading day."
        );
        SimDay {
            date,
            ticks,
            labels,
            decoys,
            rejects,
        }
    }

    /// The daily draws' share of the configuration, made safe to compute
    /// with.
    fn params(&self) -> Params {
        let c = &self.config;
        let market_vol = if c.market_vol >= 0.0 {
            c.market_vol.min(MAX_MARKET_VOL)
        } else {
            DEFAULT_MARKET_VOL
        };
        Params {
            seed: c.seed,
            market: c.realism == Realism::Market,
            market_vol,
            decoy_rate: if c.decoys_per_symbol_day > 0.0 {
                c.decoys_per_symbol_day
            } else {
                0.0
            },
        }
    }

    /// [`SimConfig::event_sigmas`], made safe to draw from: positive,
    /// finite, ordered.
    fn event_sigmas(&self) -> (f64, f64) {
        let ok = |x: f64| x.is_finite() && x > 0.0;
        match self.config.event_sigmas {
            (a, b) if ok(a) && ok(b) => (a.min(b), a.max(b)),
            _ => DEFAULT_EVENT_SIGMAS,
        }
    }

    /// Every symbol's output for one day, in symbol order. Threads take the
    /// next symbol from a shared counter, which balances liquid and
    /// illiquid names; the output is keyed by symbol, not by thread.
    fn symbol_days(&self, day: usize, date: NaiveDate, markets: &[MarketDay]) -> Vec<SymbolOutput> {
        let n = self.symbols.len();
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
            .clamp(1, n.max(1));
        let next = AtomicUsize::new(0);
        let work = || {
            let mut scratch = Scratch::default();
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return done;
                }
                done.push((i, self.symbol_day(i, day, date, markets, &mut scratch)));
            }
        };
        let parts: Vec<Vec<(usize, SymbolOutput)>> = if threads == 1 {
            vec![work()]
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                    .collect()
            })
        };
        let mut slots: Vec<Option<SymbolOutput>> = (0..n).map(|_| None).collect();
        for (i, out) in parts.into_iter().flatten() {
            slots[i] = Some(out);
        }
        slots.into_iter().flatten().collect()
    }

    /// Symbol number `i` on day number `day`.
    fn symbol_day(
        &self,
        i: usize,
        day: usize,
        date: NaiveDate,
        markets: &[MarketDay],
        scratch: &mut Scratch,
    ) -> SymbolOutput {
        let spec = &self.symbols[i];
        let mut ticks = TickBuilder::with_validator(SOURCE, Validator::with_now(FAR_FUTURE_US));
        let mut labels = LabelBuilder::new(SOURCE);
        let mut rejects = Vec::new();
        let mut decoys = Decoys::default();
        let mut open_at = 0;
        let (shape, market) = (&self.shapes[spec.venue], &markets[spec.venue]);
        let bars = self.config.kind == SimKind::Bars;
        if let Some((open_us, close_us)) = spec.session(date) {
            open_at = open_us;
            let params = self.params();
            let seed = self.config.seed;
            let key = |tag| market::stream(&[seed, tag, i as u64, day as u64]);
            let steps = shape.steps();
            let session_s = spec.session_seconds();
            let trades_per_day = self.trades_per_day();
            let kinds: &[EventKind] = if bars {
                &EventKind::BARS
            } else {
                &EventKind::ALL
            };
            // With no trades there is nothing for an event to alter.
            let mean_events = if trades_per_day > 0.0 {
                self.config.events_per_symbol_day
            } else {
                0.0
            };
            // Hashed, not streamed: computing it first moves no draw below.
            let anchors = market::symbol_day(&params, i, spec, day, steps);
            let mut base_rate = trades_per_day * spec.liquidity / f64::from(session_s);
            if params.market {
                // Turbulent days trade more.
                base_rate *= anchors.vol.sqrt();
            }

            // What looks like manipulation and is not: known before the
            // events, which keep clear of it.
            let mean_lots = spec.trade_lots * (generate::TRADE_SIZE_SIGMA.powi(2) / 2.0).exp();
            let day_volume = base_rate * f64::from(session_s) * mean_lots * spec.lot_size;
            let auction = market::closing_auction(&params, i, day, day_volume)
                .filter(|_| trades_per_day > 0.0);
            let rebalance = auction.is_some_and(|(_, r)| r);
            if let Some(j) = market.shock {
                decoys.add(j.window(session_s), Decoy::MarketShock);
            }
            if let Some(j) = anchors.news {
                decoys.add(j.window(session_s), Decoy::News);
            }
            if rebalance {
                let last = session_s.saturating_sub(REBALANCE_S);
                decoys.add((last, session_s), Decoy::RebalanceClose);
            }
            if let Some(w) = market.swing {
                decoys.add(w.window(), Decoy::MarketSwing);
            }
            events::schedule(
                &mut key(market::TAG_EVENTS),
                mean_events,
                kinds,
                session_s,
                bars,
                spec.trade_lots,
                decoys.windows(),
                &mut scratch.events,
            );
            if params.market {
                let mut rng = key(market::TAG_SIZES);
                self.size_events(&mut rng, scratch, shape, market, spec.beta, &anchors);
            }

            scratch.rate.clear();
            scratch
                .rate
                .extend(shape.rate.iter().map(|r| r * base_rate));
            scratch.vol.clear();
            scratch.vol.resize(steps, 1.0);
            scratch.size.clear();
            scratch.size.resize(steps, 1.0);
            let step_s = shape.step_s;
            for e in &scratch.events {
                let first = (e.start_s / step_s) as usize;
                let end = (e.end_s.div_ceil(step_s) as usize).min(steps);
                for s in first..end {
                    let t = (s as f64 + 0.5) * f64::from(step_s);
                    scratch.rate[s] = e.rate(t, scratch.rate[s]);
                    scratch.vol[s] *= e.vol_mult();
                }
            }
            let busy = market.shock.is_some() || market.swing.is_some();
            if busy || anchors.news.is_some() || rebalance {
                let rebalance_from = f64::from(session_s.saturating_sub(REBALANCE_S));
                for s in 0..steps {
                    let t = (s as f64 + 0.5) * f64::from(step_s);
                    let mut mult = market.shock.map_or(1.0, |j| j.rate_mult(t));
                    if let Some(j) = anchors.news {
                        mult *= j.rate_mult(t);
                        scratch.size[s] = 1.0 + NEWS_SIZE * (j.rate_mult(t) - 1.0);
                    }
                    if rebalance && t >= rebalance_from {
                        mult *= REBALANCE_RATE;
                    }
                    if let Some(w) = market.swing {
                        mult *= w.rate_mult(t);
                        scratch.size[s] *= w.size_mult(t);
                    }
                    scratch.rate[s] *= mult;
                }
            }

            scratch.path.build(
                &mut key(market::TAG_PATH),
                shape,
                market,
                spec.beta,
                &anchors,
                &scratch.vol,
            );
            let d = generate::Day {
                spec,
                open_us,
                close_us,
                open_price: anchors.open_log.exp(),
                shape,
                path: &scratch.path.points,
                rate: &scratch.rate,
                size: &scratch.size,
                auction: auction.map(|(shares, _)| shares),
            };
            let mut rng = key(market::TAG_TICKS);
            let mut out = generate::Out::new(&mut ticks, &mut rejects);
            if bars {
                generate::bars(&d, &mut rng, &mut scratch.events, &mut out);
            } else {
                generate::trades(&d, &mut rng, &mut scratch.events, &mut out);
            }
            for e in &scratch.events {
                if let Some((first, last)) = e.span() {
                    labels.push(&spec.symbol, first, last, e.kind.name());
                }
            }
        }
        if let Some(first) = rejects.first() {
            tracing::error!(
                symbol = %spec.symbol,
                %date,
                rejected = rejects.len(),
                first = %first,
                "Simulator made ticks the validator refuses; they are in the day's rejects."
            );
        }
        let ticks = ticks.finish();
        let decoys = decoys.finish(&ticks, open_at, bars, &spec.symbol);
        SymbolOutput {
            ticks,
            labels: labels.finish(),
            decoys,
            rejects,
        }
    }

    /// Sizes the day's price-moving events in units of the symbol's current
    /// volatility: k log-uniform in [`SimConfig::event_sigmas`] times the σ
    /// of a one-minute return where the event starts (market and own
    /// components, regime and intraday seasonality included).
    fn size_events(
        &self,
        rng: &mut rand_chacha::ChaCha8Rng,
        scratch: &mut Scratch,
        shape: &Shape,
        market: &MarketDay,
        beta: f64,
        anchors: &market::SymbolDay,
    ) {
        let (lo, hi) = self.event_sigmas();
        let per_step =
            ((beta * market.sigma_step).powi(2) + anchors.idio_sigma_step.powi(2)).sqrt();
        let per_minute = per_step * (60.0 / f64::from(shape.step_s.max(1))).sqrt();
        for e in &mut scratch.events {
            let k = (lo.ln() + rng.random::<f64>() * (hi / lo).ln()).exp();
            let s = (e.start_s / shape.step_s.max(1)) as usize;
            let seasonal = shape
                .vol
                .get(s)
                .or(shape.vol.last())
                .copied()
                .unwrap_or(1.0);
            e.resize(k, per_minute * seasonal);
        }
    }

    /// [`SimConfig::trades_per_day`], made safe to compute with.
    fn trades_per_day(&self) -> f64 {
        let t = self.config.trades_per_day;
        if t > 0.0 {
            t.min(MAX_TRADES_PER_DAY)
        } else {
            0.0
        }
    }
}

/// Buffers one thread reuses from one symbol-day to the next.
#[derive(Debug, Default)]
struct Scratch {
    events: Vec<Event>,
    rate: Vec<f64>,
    vol: Vec<f64>,
    size: Vec<f64>,
    path: Path,
}

/// One symbol-day's output.
struct SymbolOutput {
    ticks: RecordBatch,
    labels: RecordBatch,
    decoys: RecordBatch,
    rejects: Vec<Reject>,
}

/// An unlabelled decoy kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoy {
    News,
    MarketShock,
    RebalanceClose,
    MarketSwing,
}

impl Decoy {
    /// The `decoys` table `kind` string (one of [`DECOY_KINDS`]).
    fn name(self) -> &'static str {
        match self {
            Self::News => DECOY_KINDS[0],
            Self::MarketShock => DECOY_KINDS[1],
            Self::RebalanceClose => DECOY_KINDS[2],
            Self::MarketSwing => DECOY_KINDS[3],
        }
    }
}

/// A symbol-day's decoy windows, at most one of each kind: a fixed array,
/// no allocation per symbol-day.
#[derive(Debug, Default)]
struct Decoys {
    /// `[start, end)` in seconds since the open.
    windows: [(u32, u32); DECOY_KINDS.len()],
    kinds: [Option<Decoy>; DECOY_KINDS.len()],
    len: usize,
}

impl Decoys {
    fn add(&mut self, window: (u32, u32), kind: Decoy) {
        if self.len < self.windows.len() {
            self.windows[self.len] = window;
            self.kinds[self.len] = Some(kind);
            self.len += 1;
        }
    }

    fn windows(&self) -> &[(u32, u32)] {
        &self.windows[..self.len]
    }

    /// The decoy intervals, `[first, last]` tick of each window in `ticks`
    /// (one symbol's, sorted by time; a window without ticks gives none), in
    /// start order. Bars windows start on their minute: the bar stamped at
    /// the minute's start is the one that shows the jump.
    fn finish(&self, ticks: &RecordBatch, open_us: i64, bars: bool, symbol: &str) -> RecordBatch {
        let mut out = LabelBuilder::new(SOURCE);
        let ts = ticks
            .column_by_name(col::TS)
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
            .map_or(&[][..], |a| a.values().as_ref());
        let mut order = [0, 1, 2, 3];
        let order = &mut order[..self.len];
        order.sort_by_key(|&i| self.windows[i]);
        for &i in order.iter() {
            let (Some(kind), (start, end)) = (self.kinds[i], self.windows[i]) else {
                continue;
            };
            let start = if bars { start / 60 * 60 } else { start };
            let at = |s: u32| open_us + i64::from(s) * 1_000_000;
            let first = ts.partition_point(|&t| t < at(start));
            let last = ts.partition_point(|&t| t < at(end));
            if last > first {
                out.push(symbol, ts[first], ts[last - 1], kind.name());
            }
        }
        out.finish()
    }
}

fn concat<'a>(schema: SchemaRef, parts: impl IntoIterator<Item = &'a RecordBatch>) -> RecordBatch {
    // Every part comes from our builders with this schema: failing is our bug.
    concat_batches(&schema, parts)
        .unwrap_or_else(|e| panic!("simulated batches do not concatenate: {e}"))
}

/// The simulator as a [`Source`]: one [`SourceBatch`] per trading day, with
/// its labels, at [`Position::Simulated`] `{ day: index + 1 }`.
///
/// Days are generated on tokio's blocking pool, so a busy day does not stall
/// the runtime; it must run inside a tokio runtime.
pub struct SimulatorSource {
    sim: Arc<Simulator>,
    next_day: usize,
}

impl SimulatorSource {
    /// Yields every configured day of `sim`, from the first.
    pub fn new(sim: Simulator) -> Self {
        Self {
            sim: Arc::new(sim),
            next_day: 0,
        }
    }

    /// Resumes after a committed [`Position::Simulated`] `{ day }`: the next
    /// batch is day number `day` (0-based), i.e. the first not yet produced.
    pub fn starting_at(mut self, day: usize) -> Self {
        self.next_day = day;
        self
    }

    /// The simulator behind the source.
    pub fn simulator(&self) -> &Simulator {
        &self.sim
    }
}

#[async_trait::async_trait]
impl Source for SimulatorSource {
    async fn next_batch(&mut self) -> Result<Option<SourceBatch>, SourceError> {
        let day = self.next_day;
        if self.sim.symbols().is_empty() || self.sim.trading_day(day).is_none() {
            return Ok(None);
        }
        let sim = Arc::clone(&self.sim);
        let simulated = match tokio::task::spawn_blocking(move || sim.simulate_day(day)).await {
            Ok(d) => d,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                return Err(SourceError::Io {
                    origin: SOURCE.to_owned(),
                    source: std::io::Error::other(e),
                })
            }
        };
        self.next_day = day + 1;
        Ok(Some(SourceBatch {
            amendments: None,
            ticks: simulated.ticks,
            labels: Some(simulated.labels),
            rejects: simulated.rejects,
            stream: None,
            position: Position::Simulated { day: day + 1 },
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
    use chrono::{Datelike, Weekday};

    use super::*;
    use crate::labels::col as lcol;
    use crate::tick::col;

    fn small(kind: SimKind) -> SimConfig {
        SimConfig {
            symbols: 6,
            days: 2,
            kind,
            trades_per_day: 2000.0,
            events_per_symbol_day: 1.0,
            ..SimConfig::default()
        }
    }

    fn f64s<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::Float64Array {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
    }

    fn times<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::TimestampMicrosecondArray {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>()
    }

    fn strs<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::StringArray {
        b.column_by_name(name).unwrap().as_string::<i32>()
    }

    fn spec<'a>(sim: &'a Simulator, symbol: &str) -> &'a SymbolSpec {
        let i = sim
            .symbols()
            .binary_search_by(|s| s.symbol.as_str().cmp(symbol))
            .unwrap();
        &sim.symbols()[i]
    }

    /// Checks the invariants every day's ticks must hold.
    fn check_ticks(sim: &Simulator, day: &SimDay) {
        let t = &day.ticks;
        assert_eq!(t.schema(), tick_schema());
        assert!(day.rejects.is_empty(), "{:?}", day.rejects.first());
        assert!(!matches!(day.date.weekday(), Weekday::Sat | Weekday::Sun));
        let (ts, sym) = (times(t, col::TS), strs(t, col::SYMBOL));
        let price = f64s(t, col::PRICE);
        let (bid, ask) = (f64s(t, col::BID), f64s(t, col::ASK));
        let (high, low) = (f64s(t, col::HIGH), f64s(t, col::LOW));
        let volume = f64s(t, col::VOLUME);
        for i in 0..t.num_rows() {
            if i > 0 {
                let prev = (sym.value(i - 1), ts.value(i - 1));
                assert!(prev <= (sym.value(i), ts.value(i)), "row {i} out of order");
            }
            let (open, close) = spec(sim, sym.value(i)).session(day.date).unwrap();
            assert!(
                (open..close).contains(&ts.value(i)),
                "row {i} outside the session"
            );
            assert!(price.value(i) > 0.0 && volume.value(i) >= 0.0);
            match sim.config().kind {
                SimKind::Trades => {
                    assert!(
                        bid.value(i) > 0.0 && bid.value(i) <= ask.value(i),
                        "row {i}"
                    );
                    assert!(high.is_null(i));
                }
                SimKind::Bars => {
                    assert!(bid.is_null(i) && ask.is_null(i));
                    assert!(high.value(i) >= low.value(i) && low.value(i) > 0.0);
                    assert!((low.value(i)..=high.value(i)).contains(&price.value(i)));
                }
            }
        }
    }

    /// Checks a day's labels against its ticks; returns the kinds seen.
    fn check_labels(sim: &Simulator, day: &SimDay, kinds: &mut BTreeMap<String, usize>) {
        let l = &day.labels;
        assert_eq!(l.schema(), label_schema());
        let (sym, start, end) = (
            strs(l, lcol::SYMBOL),
            times(l, lcol::START_TS),
            times(l, lcol::END_TS),
        );
        let kind = strs(l, lcol::KIND);
        let (tsym, tts) = (strs(&day.ticks, col::SYMBOL), times(&day.ticks, col::TS));
        let mut last_end: BTreeMap<&str, i64> = BTreeMap::new();
        for i in 0..l.num_rows() {
            let (s, a, b) = (sym.value(i), start.value(i), end.value(i));
            assert!(a <= b);
            assert!(EVENT_KINDS.contains(&kind.value(i)));
            assert_eq!(strs(l, lcol::SOURCE).value(i), SOURCE);
            let (open, close) = spec(sim, s).session(day.date).unwrap();
            assert!(open <= a && b < close, "label {i} outside the session");
            if let Some(prev) = last_end.insert(s, b) {
                assert!(prev < a, "labels overlap on {s}");
            }
            let inside = (0..day.ticks.num_rows())
                .filter(|&j| tsym.value(j) == s && (a..=b).contains(&tts.value(j)))
                .count();
            assert!(inside > 0, "label {i} ({}) covers no tick", kind.value(i));
            *kinds.entry(kind.value(i).to_owned()).or_default() += 1;
        }
    }

    #[test]
    fn event_kinds_match_the_enum() {
        let names: Vec<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names, EVENT_KINDS);
        assert!(EventKind::BARS.iter().all(|k| EventKind::ALL.contains(k)));
    }

    #[test]
    fn same_seed_same_output_different_seed_different() {
        let a = Simulator::new(small(SimKind::Trades)).simulate_day(1);
        let b = Simulator::new(small(SimKind::Trades)).simulate_day(1);
        assert_eq!(a.ticks, b.ticks);
        assert_eq!(a.labels, b.labels);
        let c = Simulator::new(SimConfig {
            seed: 43,
            ..small(SimKind::Trades)
        })
        .simulate_day(1);
        assert_ne!(a.ticks, c.ticks);
    }

    #[test]
    fn output_does_not_depend_on_threads_or_day_order() {
        let one = Simulator::new(small(SimKind::Trades)).with_threads(1);
        let three = Simulator::new(small(SimKind::Trades)).with_threads(3);
        let later = three.simulate_day(1);
        let first = three.simulate_day(0);
        assert_eq!(one.simulate_day(0).ticks, first.ticks);
        assert_eq!(one.simulate_day(1).ticks, later.ticks);
        assert_eq!(one.simulate_day(1).labels, later.labels);
    }

    #[test]
    fn trades_are_sorted_in_session_and_valid_with_ties() {
        let sim = Simulator::new(small(SimKind::Trades));
        let mut ties = 0;
        for (d, date) in sim.trading_days().into_iter().enumerate() {
            let day = sim.simulate_day(d);
            assert_eq!(day.date, date);
            assert!(
                day.ticks.num_rows() > 6 * 500,
                "{} ticks",
                day.ticks.num_rows()
            );
            check_ticks(&sim, &day);
            check_labels(&sim, &day, &mut BTreeMap::new());
            let (sym, ts) = (strs(&day.ticks, col::SYMBOL), times(&day.ticks, col::TS));
            ties += (1..day.ticks.num_rows())
                .filter(|&i| sym.value(i) == sym.value(i - 1) && ts.value(i) == ts.value(i - 1))
                .count();
            let seq = day.ticks.column_by_name(col::SEQ).unwrap();
            let seq = seq.as_primitive::<arrow::datatypes::UInt32Type>();
            assert!((0..seq.len()).any(|i| seq.value(i) > 0), "ties get seq > 0");
        }
        assert!(ties > 10, "{ties} ties");
    }

    #[test]
    fn bars_are_one_per_session_minute() {
        let sim = Simulator::new(small(SimKind::Bars));
        for d in 0..2 {
            let day = sim.simulate_day(d);
            check_ticks(&sim, &day);
            check_labels(&sim, &day, &mut BTreeMap::new());
            let sym = strs(&day.ticks, col::SYMBOL);
            for s in sim.symbols() {
                let n = (0..sym.len()).filter(|&i| sym.value(i) == s.symbol).count();
                assert_eq!(n as u32, s.session_seconds() / 60, "{}", s.symbol);
            }
            let ts = times(&day.ticks, col::TS);
            assert!((0..ts.len()).all(|i| ts.value(i) % 60_000_000 == 0));
        }
    }

    #[test]
    fn every_kind_appears_over_a_default_run() {
        for (kind, expected) in [
            (SimKind::Trades, &EVENT_KINDS[..]),
            (
                SimKind::Bars,
                &[
                    "price_spike",
                    "volume_burst",
                    "pump_and_dump",
                    "wash_trading",
                    "marking_close",
                ][..],
            ),
        ] {
            let sim = Simulator::new(SimConfig {
                kind,
                trades_per_day: 300.0,
                ..SimConfig::default()
            });
            let mut kinds = BTreeMap::new();
            for d in 0..sim.config().days {
                let day = sim.simulate_day(d);
                check_labels(&sim, &day, &mut kinds);
            }
            let seen: BTreeSet<&str> = kinds.keys().map(String::as_str).collect();
            let want: BTreeSet<&str> = expected.iter().copied().collect();
            assert_eq!(seen, want, "{kind:?}: {kinds:?}");
        }
    }

    #[test]
    fn labels_cover_exactly_the_altered_ticks() {
        // A fat-finger print is alone on its timestamp, far from its quote
        // (the basic market's fixed 3-10% spikes).
        let sim = Simulator::new(SimConfig {
            trades_per_day: 300.0,
            events_per_symbol_day: 3.0,
            symbols: 6,
            days: 2,
            realism: Realism::Basic,
            ..SimConfig::default()
        });
        let mut spikes = 0;
        for d in 0..2 {
            let day = sim.simulate_day(d);
            let l = &day.labels;
            let t = &day.ticks;
            let (tsym, tts, price) = (strs(t, col::SYMBOL), times(t, col::TS), f64s(t, col::PRICE));
            let (bid, ask) = (f64s(t, col::BID), f64s(t, col::ASK));
            for i in 0..l.num_rows() {
                if strs(l, lcol::KIND).value(i) != "price_spike" {
                    continue;
                }
                spikes += 1;
                let (s, a) = (
                    strs(l, lcol::SYMBOL).value(i),
                    times(l, lcol::START_TS).value(i),
                );
                assert_eq!(a, times(l, lcol::END_TS).value(i));
                let rows: Vec<usize> = (0..t.num_rows())
                    .filter(|&j| tsym.value(j) == s && tts.value(j) == a)
                    .collect();
                assert_eq!(rows.len(), 1);
                let j = rows[0];
                let mid = (bid.value(j) + ask.value(j)) / 2.0;
                assert!(
                    (price.value(j) / mid - 1.0).abs() > 0.025,
                    "spike only {}",
                    price.value(j) / mid
                );
            }
        }
        assert!(spikes > 0);
    }

    #[test]
    fn intraday_activity_is_u_shaped_and_returns_fat_tailed() {
        let sim = Simulator::new(SimConfig {
            symbols: 4,
            days: 1,
            trades_per_day: 5000.0,
            events_per_symbol_day: 0.0,
            ..SimConfig::default()
        });
        let day = sim.simulate_day(0);
        let (sym, ts) = (strs(&day.ticks, col::SYMBOL), times(&day.ticks, col::TS));
        let (mut edges, mut middle) = (0, 0);
        for i in 0..ts.len() {
            let s = spec(&sim, sym.value(i));
            let (open, close) = s.session(day.date).unwrap();
            let half_hour = 30 * 60 * 1_000_000;
            if ts.value(i) < open + half_hour || ts.value(i) >= close - half_hour {
                edges += 1;
            } else if (ts.value(i) - open - (close - open) / 2).abs() < half_hour {
                middle += 1;
            }
        }
        // Two edge half-hours against one middle hour.
        assert!(edges > 2 * middle, "edges {edges}, middle {middle}");

        // Kurtosis of one-second mid-price changes, pooled over symbols.
        let bars = Simulator::new(SimConfig {
            kind: SimKind::Bars,
            events_per_symbol_day: 0.0,
            ..SimConfig::default()
        })
        .simulate_day(0);
        let (p, s) = (
            f64s(&bars.ticks, col::PRICE),
            strs(&bars.ticks, col::SYMBOL),
        );
        let r: Vec<f64> = (1..p.len())
            .filter(|&i| s.value(i) == s.value(i - 1))
            .map(|i| (p.value(i) / p.value(i - 1)).ln())
            .collect();
        let n = r.len() as f64;
        let mean = r.iter().sum::<f64>() / n;
        let var = r.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let kurt = r.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n / var.powi(2);
        assert!(
            kurt > 4.0,
            "minute returns should be fat-tailed, kurtosis {kurt}"
        );
    }

    #[test]
    fn universe_is_unique_and_mixes_venues() {
        let sim = Simulator::new(SimConfig {
            symbols: 300,
            days: 0,
            ..SimConfig::default()
        });
        let syms = sim.symbols();
        assert_eq!(syms.len(), 300);
        assert!(
            syms.windows(2).all(|w| w[0].symbol < w[1].symbol),
            "sorted and unique"
        );
        assert!(syms.iter().all(|s| (3..=4).contains(&s.symbol.len())
            && s.symbol.bytes().all(|b| b.is_ascii_uppercase())));
        let nse = syms.iter().filter(|s| s.exchange == "XNSE").count();
        assert!((30..=90).contains(&nse), "{nse} on the NSE");
        assert!(syms
            .iter()
            .all(|s| (5.0..=2000.0).contains(&s.price) && (0.15..=0.80).contains(&s.volatility)));
        let nse = syms.iter().find(|s| s.exchange == "XNSE").unwrap();
        assert_eq!(nse.timezone, chrono_tz::Asia::Kolkata);
        assert_eq!(nse.session_seconds(), 375 * 60);
    }

    #[test]
    fn trading_days_skip_weekends() {
        let sim = Simulator::new(SimConfig {
            start: NaiveDate::from_ymd_opt(2024, 1, 6).unwrap(), // a Saturday
            days: 6,
            symbols: 0,
            ..SimConfig::default()
        });
        let days: Vec<String> = sim.trading_days().iter().map(|d| d.to_string()).collect();
        assert_eq!(
            days,
            [
                "2024-01-08",
                "2024-01-09",
                "2024-01-10",
                "2024-01-11",
                "2024-01-12",
                "2024-01-15"
            ]
        );
        assert_eq!(sim.trading_day(6), None);
    }

    #[test]
    fn sessions_follow_local_time() {
        let sim = Simulator::new(SimConfig {
            symbols: 50,
            days: 0,
            ..SimConfig::default()
        });
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_micros()
        };
        let nyse = sim.symbols().iter().find(|s| s.exchange == "XNYS").unwrap();
        let winter = NaiveDate::from_ymd_opt(2024, 1, 2).unwrap();
        let summer = NaiveDate::from_ymd_opt(2024, 7, 2).unwrap();
        assert_eq!(
            nyse.session(winter),
            Some((at("2024-01-02T14:30:00Z"), at("2024-01-02T21:00:00Z")))
        );
        assert_eq!(
            nyse.session(summer),
            Some((at("2024-07-02T13:30:00Z"), at("2024-07-02T20:00:00Z")))
        );
        let nse = sim.symbols().iter().find(|s| s.exchange == "XNSE").unwrap();
        assert_eq!(
            nse.session(winter),
            Some((at("2024-01-02T03:45:00Z"), at("2024-01-02T10:00:00Z")))
        );
        assert_eq!(
            nse.session(NaiveDate::from_ymd_opt(2024, 1, 6).unwrap()),
            None
        );
    }

    #[test]
    fn degenerate_configs_give_empty_output() {
        for config in [
            SimConfig {
                symbols: 0,
                ..small(SimKind::Trades)
            },
            SimConfig {
                days: 0,
                ..small(SimKind::Trades)
            },
            SimConfig {
                trades_per_day: f64::NAN,
                events_per_symbol_day: f64::INFINITY,
                ..small(SimKind::Trades)
            },
            SimConfig {
                trades_per_day: -1.0,
                ..small(SimKind::Trades)
            },
        ] {
            let sim = Simulator::new(config);
            let day = sim.simulate_day(0);
            assert_eq!(day.ticks.num_rows(), 0);
            assert_eq!(day.labels.num_rows(), 0);
            assert_eq!(day.ticks.schema(), tick_schema());
        }
        let sim = Simulator::new(small(SimKind::Trades));
        assert_eq!(sim.simulate_day(usize::MAX).ticks.num_rows(), 0);
        let old = Simulator::new(SimConfig {
            start: NaiveDate::from_ymd_opt(1970, 1, 1).unwrap(),
            symbols: 2,
            days: 1,
            trades_per_day: 100.0,
            ..SimConfig::default()
        });
        let day = old.simulate_day(0);
        assert!(day.rejects.is_empty() && day.ticks.num_rows() > 0);
        assert_eq!(day.date, NaiveDate::from_ymd_opt(1990, 1, 1).unwrap());
    }

    #[test]
    fn many_events_stay_apart() {
        let sim = Simulator::new(SimConfig {
            events_per_symbol_day: 1e9,
            trades_per_day: 500.0,
            symbols: 3,
            days: 1,
            ..SimConfig::default()
        });
        let day = sim.simulate_day(0);
        check_labels(&sim, &day, &mut BTreeMap::new());
        assert!(day.labels.num_rows() > 3 * 5);
    }

    #[tokio::test]
    async fn source_yields_one_batch_per_day_then_ends() {
        let mut src = SimulatorSource::new(Simulator::new(small(SimKind::Bars)));
        let expected = src.simulator().simulate_day(1);
        let mut positions = Vec::new();
        let mut last = None;
        while let Some(b) = src.next_batch().await.unwrap() {
            assert!(b.labels.is_some() && b.rejects.is_empty());
            positions.push(b.position.clone());
            last = Some(b);
        }
        assert_eq!(
            positions,
            [
                Position::Simulated { day: 1 },
                Position::Simulated { day: 2 }
            ]
        );
        assert_eq!(last.unwrap().ticks, expected.ticks);
        let mut resumed = SimulatorSource::new(Simulator::new(small(SimKind::Bars))).starting_at(1);
        let b = resumed.next_batch().await.unwrap().unwrap();
        assert_eq!(b.position, Position::Simulated { day: 2 });
        assert_eq!(b.ticks, expected.ticks);
        assert!(resumed.next_batch().await.unwrap().is_none());
        let mut empty = SimulatorSource::new(Simulator::new(SimConfig {
            symbols: 0,
            ..SimConfig::default()
        }));
        assert!(empty.next_batch().await.unwrap().is_none());
    }

    // The realistic market.

    /// A realistic bars market with only what a test asks for.
    fn market_bars(symbols: usize, days: usize, events: f64, decoys: f64) -> SimConfig {
        SimConfig {
            symbols,
            days,
            kind: SimKind::Bars,
            trades_per_day: 5000.0,
            events_per_symbol_day: events,
            decoys_per_symbol_day: decoys,
            ..SimConfig::default()
        }
    }

    /// Rows of `symbol` in `b`, in order.
    fn rows_of(b: &RecordBatch, symbol: &str) -> Vec<usize> {
        let s = strs(b, col::SYMBOL);
        (0..b.num_rows())
            .filter(|&i| s.value(i) == symbol)
            .collect()
    }

    /// The venue market factor of `day`, as the simulator drew it.
    fn market_of(sim: &Simulator, venue: usize, day: usize) -> MarketDay {
        let p = sim.params();
        let regime = Regimes::at(p.seed, p.market, day);
        market::market_day(&p, venue, day, &sim.shapes[venue], regime)
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    #[test]
    fn realistic_market_is_deterministic_with_labels_and_decoys() {
        let config = SimConfig {
            decoys_per_symbol_day: 2.0,
            ..small(SimKind::Trades)
        };
        let one = Simulator::new(config.clone()).with_threads(1);
        let three = Simulator::new(config.clone()).with_threads(3);
        let later = three.simulate_day(1);
        for (a, b) in [
            (one.simulate_day(1), later),
            (one.simulate_day(0), three.simulate_day(0)),
        ] {
            assert_eq!(a.ticks, b.ticks);
            assert_eq!(a.labels, b.labels);
            assert_eq!(a.decoys, b.decoys);
            assert!(a.decoys.num_rows() > 0 && a.labels.num_rows() > 0);
            check_ticks(&one, &a);
            check_labels(&one, &a, &mut BTreeMap::new());
        }
        let other = Simulator::new(SimConfig { seed: 43, ..config }).simulate_day(1);
        assert_ne!(one.simulate_day(1).decoys, other.decoys);
    }

    #[test]
    fn basic_market_has_no_decoys_auction_or_sized_events() {
        let sim = Simulator::new(SimConfig {
            realism: Realism::Basic,
            decoys_per_symbol_day: 3.0,
            ..small(SimKind::Trades)
        });
        let day = sim.simulate_day(0);
        assert_eq!(day.decoys.num_rows(), 0);
        let ts = times(&day.ticks, col::TS);
        for s in sim.symbols() {
            let (_, close) = s.session(day.date).unwrap();
            let last = *rows_of(&day.ticks, &s.symbol).last().unwrap();
            assert_ne!(ts.value(last), close - 1, "no auction print");
        }
    }

    #[test]
    fn decoys_are_never_labels_and_labels_never_decoys() {
        let sim = Simulator::new(SimConfig {
            symbols: 10,
            days: 3,
            trades_per_day: 1500.0,
            events_per_symbol_day: 2.0,
            decoys_per_symbol_day: 1.5,
            ..SimConfig::default()
        });
        let mut kinds = BTreeSet::new();
        for d in 0..3 {
            let day = sim.simulate_day(d);
            let (l, x) = (&day.labels, &day.decoys);
            assert_eq!(x.schema(), label_schema());
            let (tsym, tts) = (strs(&day.ticks, col::SYMBOL), times(&day.ticks, col::TS));
            for i in 0..x.num_rows() {
                let kind = strs(x, lcol::KIND).value(i);
                assert!(DECOY_KINDS.contains(&kind), "{kind}");
                assert!(!EVENT_KINDS.contains(&kind));
                kinds.insert(kind.to_owned());
                let (s, a, b) = (
                    strs(x, lcol::SYMBOL).value(i),
                    times(x, lcol::START_TS).value(i),
                    times(x, lcol::END_TS).value(i),
                );
                assert!(a <= b);
                assert!(
                    (0..tsym.len()).any(|j| tsym.value(j) == s && (a..=b).contains(&tts.value(j))),
                    "decoy {i} covers no tick"
                );
                // No tick is both a decoy's and labelled.
                for j in 0..l.num_rows() {
                    if strs(l, lcol::SYMBOL).value(j) == s {
                        let (la, lb) = (
                            times(l, lcol::START_TS).value(j),
                            times(l, lcol::END_TS).value(j),
                        );
                        assert!(lb < a || b < la, "decoy {i} overlaps label {j} on {s}");
                    }
                }
            }
            for j in 0..l.num_rows() {
                assert!(EVENT_KINDS.contains(&strs(l, lcol::KIND).value(j)));
            }
        }
        let want: BTreeSet<String> = DECOY_KINDS.iter().map(|k| (*k).to_owned()).collect();
        assert_eq!(kinds, want);
    }

    #[test]
    fn betas_are_recovered_by_regressing_returns_on_the_market() {
        // A louder market than the default, so six days pin each beta down.
        let sim = Simulator::new(SimConfig {
            market_vol: 0.3,
            ..market_bars(12, 6, 0.0, 0.0)
        });
        let per_bar = 60 / sim.shapes[0].step_s as usize;
        let mut betas = Vec::new();
        let mut xs: Vec<Vec<f64>> = vec![Vec::new(); sim.symbols().len()];
        let mut ys: Vec<Vec<f64>> = vec![Vec::new(); sim.symbols().len()];
        for d in 0..6 {
            let day = sim.simulate_day(d);
            let close = f64s(&day.ticks, col::PRICE);
            for (k, s) in sim.symbols().iter().enumerate() {
                let m = market_of(&sim, s.venue, d);
                let rows = rows_of(&day.ticks, &s.symbol);
                for w in 1..rows.len() {
                    let r = (close.value(rows[w]) / close.value(rows[w - 1])).ln();
                    let mr = m.path[(w + 1) * per_bar] - m.path[w * per_bar];
                    xs[k].push(mr);
                    ys[k].push(r);
                }
            }
        }
        for (k, s) in sim.symbols().iter().enumerate() {
            let (x, y) = (&xs[k], &ys[k]);
            let n = x.len() as f64;
            let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
            let sxx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
            let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
            let b = sxy / sxx;
            let resid: f64 = x
                .iter()
                .zip(y)
                .map(|(a, c)| (c - my - b * (a - mx)).powi(2))
                .sum();
            let se = (resid / (n - 2.0) / sxx).sqrt();
            assert!(
                (0.5..1.5).contains(&s.beta),
                "{}: beta {}",
                s.symbol,
                s.beta
            );
            assert!(
                (b - s.beta).abs() < 4.0 * se + 0.05,
                "{}: estimated {b:.3} ± {se:.3}, drawn {:.3}",
                s.symbol,
                s.beta
            );
            betas.push((s.beta, b));
        }
        let err = median(betas.iter().map(|(t, e)| (t - e).abs()).collect());
        assert!(err < 0.15, "median |error| {err}");
        let spread = betas.iter().map(|b| b.0).fold(f64::NAN, f64::max)
            - betas.iter().map(|b| b.0).fold(f64::NAN, f64::min);
        assert!(spread > 0.4, "betas should differ: {betas:?}");
    }

    #[test]
    fn a_market_shock_moves_every_symbol_in_the_same_minute() {
        // Decoy rate 4: every venue-day has a shock (and every symbol news).
        let sim = Simulator::new(market_bars(16, 1, 0.0, 4.0));
        let day = sim.simulate_day(0);
        let close = f64s(&day.ticks, col::PRICE);
        let ts = times(&day.ticks, col::TS);
        let mut moved = 0;
        for venue in 0..market::VENUES.len() {
            let shock = market_of(&sim, venue, 0).shock.expect("a shock every day");
            let minute = (shock.at_s / 60) as usize;
            for s in sim.symbols().iter().filter(|s| s.venue == venue) {
                let rows = rows_of(&day.ticks, &s.symbol);
                let r: Vec<f64> = (1..rows.len())
                    .map(|w| (close.value(rows[w]) / close.value(rows[w - 1])).ln())
                    .collect();
                let at = r[minute - 1];
                let want = s.beta * shock.size;
                assert!(
                    at.signum() == want.signum() && at.abs() > 0.5 * want.abs(),
                    "{}: {at} in the shock minute, beta x shock {want}",
                    s.symbol
                );
                let typical = median(r.iter().map(|x| x.abs()).collect());
                assert!(
                    at.abs() > 5.0 * typical,
                    "{}: {at} vs typical {typical}",
                    s.symbol
                );
                // Recorded as a decoy of that symbol, from the shock's bar.
                let x = &day.decoys;
                let bar_ts = ts.value(rows[minute]);
                assert!(
                    (0..x.num_rows()).any(|i| strs(x, lcol::SYMBOL).value(i) == s.symbol
                        && strs(x, lcol::KIND).value(i) == "market_shock"
                        && times(x, lcol::START_TS).value(i) == bar_ts),
                    "{}: no market_shock decoy at {bar_ts}",
                    s.symbol
                );
                moved += 1;
            }
        }
        assert_eq!(moved, 16);
    }

    #[test]
    fn news_does_not_revert_and_trades_heavily_after() {
        let sim = Simulator::new(market_bars(20, 2, 0.0, 4.0));
        let (mut kept, mut heavy, mut n) = (Vec::new(), Vec::new(), 0);
        for d in 0..2 {
            let day = sim.simulate_day(d);
            let (close, volume) = (f64s(&day.ticks, col::PRICE), f64s(&day.ticks, col::VOLUME));
            for (i, s) in sim.symbols().iter().enumerate() {
                let steps = sim.shapes[s.venue].steps();
                let news = market::symbol_day(&sim.params(), i, s, d, steps)
                    .news
                    .expect("news every day at decoy rate 4");
                let rows = rows_of(&day.ticks, &s.symbol);
                let m = (news.at_s / 60) as usize;
                if m + 60 >= rows.len() || m < 2 {
                    continue;
                }
                n += 1;
                let before = close.value(rows[m - 1]);
                let jumped = (close.value(rows[m]) / before).ln();
                let hour_later = (close.value(rows[m + 60]) / before).ln();
                assert!(
                    jumped.signum() == news.size.signum(),
                    "{}: {jumped} vs {}",
                    s.symbol,
                    news.size
                );
                kept.push(hour_later / news.size);
                let vols: Vec<f64> = rows.iter().map(|&r| volume.value(r)).collect();
                let after = vols[m..m + 30].iter().sum::<f64>() / 30.0;
                heavy.push(after / median(vols));
            }
        }
        assert!(n >= 20, "{n} news events");
        let mean_kept = kept.iter().sum::<f64>() / kept.len() as f64;
        assert!(
            mean_kept > 0.75,
            "news reverted: kept {mean_kept} of the jump on average, {kept:?}"
        );
        let same_side = kept.iter().filter(|k| **k > 0.3).count();
        assert!(same_side * 10 >= kept.len() * 8, "{kept:?}");
        assert!(heavy.iter().all(|h| *h > 1.5), "{heavy:?}");
        assert!(
            heavy.iter().sum::<f64>() / heavy.len() as f64 > 2.5,
            "{heavy:?}"
        );
    }

    #[test]
    fn a_market_swing_pumps_and_dumps_every_symbol_by_its_beta() {
        // Decoy rate 4: every venue-day has a swing.
        let sim = Simulator::new(market_bars(24, 3, 0.0, 4.0));
        let (mut up, mut kept, mut busy, mut n) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for d in 0..3 {
            let day = sim.simulate_day(d);
            let (close, volume) = (f64s(&day.ticks, col::PRICE), f64s(&day.ticks, col::VOLUME));
            let ts = times(&day.ticks, col::TS);
            for venue in 0..market::VENUES.len() {
                let w = market_of(&sim, venue, d).swing.expect("a swing every day");
                let (start, end) = w.window();
                let (m0, turn, m1) = (
                    (start / 60) as usize,
                    ((start + w.ramp_s) / 60) as usize,
                    (end / 60) as usize,
                );
                assert!(w.ramp_s >= 600 && w.back_s < w.ramp_s, "{w:?}");
                for s in sim.symbols().iter().filter(|s| s.venue == venue) {
                    let rows = rows_of(&day.ticks, &s.symbol);
                    let ln =
                        |a: usize, b: usize| (close.value(rows[b]) / close.value(rows[a])).ln();
                    let want = s.beta * w.size;
                    up.push(ln(m0 - 1, turn - 1) / want);
                    kept.push(ln(m0 - 1, m1) / want);
                    let vol = |a: usize, b: usize| -> f64 {
                        rows[a..b].iter().map(|&r| volume.value(r)).sum::<f64>() / (b - a) as f64
                    };
                    busy.push(vol(turn - 5, m1) / vol(m0 - 60.min(m0), m0));
                    // Recorded as a decoy of that symbol, from its first bar.
                    let x = &day.decoys;
                    assert!(
                        (0..x.num_rows()).any(|i| strs(x, lcol::SYMBOL).value(i) == s.symbol
                            && strs(x, lcol::KIND).value(i) == "market_swing"
                            && times(x, lcol::START_TS).value(i) == ts.value(rows[m0])),
                        "{}: no market_swing decoy",
                        s.symbol
                    );
                    n += 1;
                }
            }
        }
        assert!(n >= 60, "{n} symbol-swings");
        // Each symbol moves by about beta x the swing at the turn, and gives
        // it back by the end; its own noise scatters single cases.
        let (up, kept) = (median(up), median(kept));
        assert!((0.6..1.4).contains(&up), "moved {up} of beta x swing");
        assert!(kept.abs() < 0.35, "kept {kept} of beta x swing");
        let busy = median(busy);
        assert!(busy > 1.5, "volume at the turn {busy}x the hour before");
    }

    #[test]
    fn every_day_closes_with_an_auction_and_rebalances_dwarf_it() {
        for kind in [SimKind::Trades, SimKind::Bars] {
            for (decoys, least) in [(0.0, 8.0), (4.0, 100.0)] {
                let sim = Simulator::new(SimConfig {
                    kind,
                    decoys_per_symbol_day: decoys,
                    events_per_symbol_day: 0.0,
                    ..small(kind)
                });
                for d in 0..2 {
                    let day = sim.simulate_day(d);
                    let t = &day.ticks;
                    let (ts, price, volume) =
                        (times(t, col::TS), f64s(t, col::PRICE), f64s(t, col::VOLUME));
                    for s in sim.symbols() {
                        let (_, close) = s.session(day.date).unwrap();
                        let rows = rows_of(t, &s.symbol);
                        let (&last, &prev) = (rows.last().unwrap(), &rows[rows.len() - 2]);
                        let typical = median(rows.iter().map(|&r| volume.value(r)).collect());
                        let ratio = volume.value(last) / typical;
                        // Bars hold a minute of trades beside the auction.
                        let least = if kind == SimKind::Bars {
                            least / 2.0
                        } else {
                            least
                        };
                        assert!(
                            ratio > least,
                            "{kind:?} {}: closing volume {ratio}x the median",
                            s.symbol
                        );
                        let moved = (price.value(last) / price.value(prev)).ln().abs();
                        assert!(
                            moved < 0.01,
                            "{kind:?} {}: the close moved {moved}",
                            s.symbol
                        );
                        if kind == SimKind::Trades {
                            assert_eq!(ts.value(last), close - 1, "{}", s.symbol);
                            let (bid, ask) =
                                (f64s(t, col::BID).value(last), f64s(t, col::ASK).value(last));
                            assert!((bid - 0.011..=ask + 0.011).contains(&price.value(last)));
                        }
                        if decoys > 0.0 {
                            let x = &day.decoys;
                            assert!((0..x.num_rows())
                                .any(|i| strs(x, lcol::SYMBOL).value(i) == s.symbol
                                    && strs(x, lcol::KIND).value(i) == "rebalance_close"
                                    && times(x, lcol::END_TS).value(i) == ts.value(last)));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn manipulation_sizes_span_barely_visible_to_obvious_in_sigmas() {
        let sim = Simulator::new(SimConfig {
            symbols: 12,
            days: 3,
            trades_per_day: 1000.0,
            events_per_symbol_day: 4.0,
            decoys_per_symbol_day: 0.0,
            ..SimConfig::default()
        });
        let mut sigmas = Vec::new();
        let mut spikes = Vec::new();
        let mut scratch = Scratch::default();
        for d in 0..3 {
            let date = sim.trading_day(d).unwrap();
            let p = sim.params();
            let regime = Regimes::at(p.seed, p.market, d);
            let markets: Vec<MarketDay> = (0..sim.shapes.len())
                .map(|v| market::market_day(&p, v, d, &sim.shapes[v], regime))
                .collect();
            for i in 0..sim.symbols().len() {
                let out = sim.symbol_day(i, d, date, &markets, &mut scratch);
                let t = &out.ticks;
                let (ts, price) = (times(t, col::TS), f64s(t, col::PRICE));
                let (bid, ask) = (f64s(t, col::BID), f64s(t, col::ASK));
                for e in &scratch.events {
                    match (e.kind, e.sigmas) {
                        (EventKind::PriceSpike, Some(k)) => {
                            sigmas.push(k);
                            if let Some((a, _)) = e.span() {
                                let j = (0..t.num_rows()).find(|&j| ts.value(j) == a).unwrap();
                                let mid = (bid.value(j) + ask.value(j)) / 2.0;
                                spikes.push((price.value(j) / mid - 1.0).abs());
                            }
                        }
                        (
                            EventKind::PumpAndDump | EventKind::Spoofing | EventKind::MarkingClose,
                            Some(k),
                        ) => sigmas.push(k),
                        (
                            EventKind::PumpAndDump | EventKind::Spoofing | EventKind::MarkingClose,
                            None,
                        )
                        | (EventKind::PriceSpike, None) => panic!("{:?} not sized", e.kind),
                        (_, Some(_)) => panic!("{:?} has no price move to size", e.kind),
                        _ => {}
                    }
                }
            }
        }
        assert!(sigmas.len() > 40, "{} sized events", sigmas.len());
        assert!(sigmas.iter().all(|k| (1.0..=10.0).contains(k)));
        let (lo, hi) = (
            sigmas.iter().copied().fold(f64::INFINITY, f64::min),
            sigmas.iter().copied().fold(0.0, f64::max),
        );
        assert!(lo < 1.5 && hi > 7.0, "sizes {lo}..{hi} sigmas");
        // Log-uniform: about half below the geometric middle.
        let below =
            sigmas.iter().filter(|k| **k < 10f64.sqrt()).count() as f64 / sigmas.len() as f64;
        assert!((0.3..0.7).contains(&below), "{below} below sqrt(10)");
        // On the tape: the smallest spikes hide in the spread, the largest do not.
        assert!(spikes.len() >= 5, "{spikes:?}");
        let (small, big) = (
            spikes.iter().copied().fold(f64::INFINITY, f64::min),
            spikes.iter().copied().fold(0.0, f64::max),
        );
        assert!(big > 5.0 * small, "spikes {small}..{big}");
    }

    #[test]
    fn basic_market_is_the_simulator_before_realism_bit_for_bit() {
        // Pinned from the simulator before the realistic market was added
        // (commit 78fa808 writes the same lake files as `--realism basic`):
        // a change here changes every basic lake and its demo numbers.
        let mut h = 0xcbf2_9ce4_8422_2325_u64;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for kind in [SimKind::Trades, SimKind::Bars] {
            let sim = Simulator::new(SimConfig {
                realism: Realism::Basic,
                decoys_per_symbol_day: 3.0,
                symbols: 4,
                days: 2,
                trades_per_day: 500.0,
                events_per_symbol_day: 2.0,
                kind,
                ..SimConfig::default()
            });
            let day = sim.simulate_day(1);
            let t = &day.ticks;
            for c in [col::PRICE, col::VOLUME, col::BID, col::ASK, col::HIGH] {
                let a = f64s(t, c);
                (0..a.len()).for_each(|i| {
                    eat(if a.is_null(i) {
                        1
                    } else {
                        a.value(i).to_bits()
                    })
                });
            }
            let ts = times(t, col::TS);
            (0..ts.len()).for_each(|i| eat(ts.value(i) as u64));
            for c in [lcol::START_TS, lcol::END_TS] {
                let a = times(&day.labels, c);
                (0..a.len()).for_each(|i| eat(a.value(i) as u64));
            }
        }
        assert_eq!(h, 0xf238_03b5_13dd_fa0f, "basic output fingerprint {h:#x}");
    }
}
