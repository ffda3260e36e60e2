//! Tick generators: trades with quotes, or one-minute bars, read off one
//! symbol-day's latent path with its events applied, straight into a
//! [`TickBuilder`].

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, Poisson};

use super::events::{cents, Effect, Event};
use super::market::{normal, Shape, SymbolSpec};
use crate::tick::{Reject, TickBuilder, TickRecord};

/// Chance that an order fills in several prints at one timestamp (it walks
/// through several resting orders at the touch).
const MULTI_FILL_PROB: f64 = 0.04;
/// Chance that the next trade is on the same side as the last: order flow
/// persists (metaorders are split over many trades).
const SAME_SIDE_PROB: f64 = 0.6;
/// Lognormal σ of trade sizes in lots.
pub(crate) const TRADE_SIZE_SIGMA: f64 = 0.9;
/// Displayed sizes follow an AR(1) in log space, updated at each trade, so
/// depth drifts rather than jumps.
const QUOTE_PERSISTENCE: f64 = 0.9;
const QUOTE_SHOCK: f64 = 0.3;
/// Chance that the spread is one tick wider than its typical value.
const WIDE_SPREAD_PROB: f64 = 0.2;
/// Chance that a wash trade repeats the wash size exactly.
const WASH_REPEAT_PROB: f64 = 0.75;

/// One symbol-day, ready to be read off.
pub(crate) struct Day<'a> {
    /// The symbol.
    pub spec: &'a SymbolSpec,
    /// Session open, UTC microseconds.
    pub open_us: i64,
    /// Session close (exclusive), UTC microseconds.
    pub close_us: i64,
    /// Price the path is relative to.
    pub open_price: f64,
    /// The venue's seasonality and step.
    pub shape: &'a Shape,
    /// Log return since the open at each step boundary (`steps + 1` points).
    pub path: &'a [f64],
    /// Trade rate per step in trades per second, events included.
    pub rate: &'a [f64],
    /// Trade-size multiple per step (heavy trading after news), mean about 1.
    pub size: &'a [f64],
    /// Shares crossed in the closing auction, printed as one trade just
    /// before the close (`None`: no auction, the basic market).
    pub auction: Option<f64>,
}

/// Where generated ticks go.
pub(crate) struct Out<'a> {
    ticks: &'a mut TickBuilder,
    rejects: &'a mut Vec<Reject>,
    pushed: u64,
}

impl<'a> Out<'a> {
    /// Ticks into `ticks`; any the validator refuses into `rejects`.
    pub fn new(ticks: &'a mut TickBuilder, rejects: &'a mut Vec<Reject>) -> Self {
        Self {
            ticks,
            rejects,
            pushed: 0,
        }
    }

    fn push(&mut self, r: &TickRecord<'_>) {
        self.pushed += 1;
        if let Err(rej) = self.ticks.push(r) {
            // Construction keeps prices positive, bid <= ask and high >= low:
            // a refusal is our bug. Release builds keep it visible as a reject.
            debug_assert!(false, "the simulator made an invalid tick: {rej}: {r:?}");
            self.rejects.push(Reject::new(
                super::SOURCE,
                self.pushed,
                rej,
                format!("{r:?}"),
            ));
        }
    }
}

/// Poisson arrivals with a piecewise-constant rate, by time change: each gap
/// is a unit exponential of "expected trades", spent step by step.
#[derive(Debug, Default)]
struct Arrivals {
    step: usize,
    /// Seconds into the current step.
    pos: f64,
}

impl Arrivals {
    /// Seconds since the open of the next arrival, or `None` at the close.
    fn next(&mut self, rng: &mut ChaCha8Rng, rate: &[f64], step_s: f64) -> Option<f64> {
        let mut need: f64 = rng.sample(Exp1);
        while let Some(&r) = rate.get(self.step) {
            let room = r * (step_s - self.pos);
            if need < room {
                self.pos += need / r;
                return Some(self.step as f64 * step_s + self.pos);
            }
            need -= room;
            self.step += 1;
            self.pos = 0.0;
        }
        None
    }
}

/// The quoted book: displayed sizes drift from trade to trade.
struct Book {
    quote_mu: f64,
    q_bid: f64,
    q_ask: f64,
}

/// The best bid and ask and their sizes at one trade.
struct Quote {
    bid: f64,
    ask: f64,
    bid_size: f64,
    ask_size: f64,
}

impl Book {
    fn new(spec: &SymbolSpec) -> Self {
        let quote_mu = spec.quote_lots.ln();
        Self {
            quote_mu,
            q_bid: quote_mu,
            q_ask: quote_mu,
        }
    }

    /// The quote around `fair` (moved by the event's offset): whole cents,
    /// at least one tick wide, `widen` times the usual spread.
    fn quote(
        &mut self,
        rng: &mut ChaCha8Rng,
        spec: &SymbolSpec,
        widen: f64,
        fair: f64,
        fx: &Effect,
    ) -> Quote {
        let lot = spec.lot_size;
        let mid_c = fair * fx.offset.exp() * 100.0;
        let mut spread_c = (mid_c * spec.spread_bps * 1e-4 * widen).round().max(1.0);
        if rng.random_bool(WIDE_SPREAD_PROB) {
            spread_c += 1.0;
        }
        let bid_c = (mid_c - spread_c / 2.0).floor().max(1.0);
        let (bid, ask) = (bid_c / 100.0, (bid_c + spread_c) / 100.0);
        let mu = self.quote_mu;
        self.q_bid = mu + QUOTE_PERSISTENCE * (self.q_bid - mu) + QUOTE_SHOCK * normal(rng);
        self.q_ask = mu + QUOTE_PERSISTENCE * (self.q_ask - mu) + QUOTE_SHOCK * normal(rng);
        let mut bid_size = self.q_bid.exp().round().max(1.0) * lot * fx.bid_size_mult;
        let mut ask_size = self.q_ask.exp().round().max(1.0) * lot * fx.ask_size_mult;
        if fx.tiny {
            bid_size = (bid_size * rng.random_range(0.05..1.0)).round().max(1.0);
            ask_size = (ask_size * rng.random_range(0.05..1.0)).round().max(1.0);
        }
        Quote {
            bid,
            ask,
            bid_size,
            ask_size,
        }
    }
}

/// Trades with the quote at each: Poisson orders, plus each event's own
/// order, priced at the bid or ask around the latent mid, then the closing
/// auction if the day has one.
pub(crate) fn trades(day: &Day<'_>, rng: &mut ChaCha8Rng, events: &mut [Event], out: &mut Out<'_>) {
    let spec = day.spec;
    let step = f64::from(day.shape.step_s);
    let Some(last_step) = day.rate.len().checked_sub(1) else {
        return;
    };
    let lot = spec.lot_size;
    let size_mu = spec.trade_lots.ln();
    // Odd lots: up to a tenth of a lot, or a few shares where lots are one.
    let odd_lot_max = (lot / 10.0).max(5.0) as u32;
    let mut book = Book::new(spec);
    let mut buying = rng.random_bool(0.5);
    let mut arrivals = Arrivals::default();
    let mut next = arrivals.next(rng, day.rate, step);
    let (mut anchor, mut cursor, mut last_ts) = (0, 0, i64::MIN);
    // The auction owns the session's last microsecond.
    let continuous_end = match day.auction {
        Some(_) => day.close_us - 1,
        None => day.close_us,
    };
    loop {
        let due = events.get(anchor).map(|e| e.anchor_s);
        let (t, own) = match (next, due) {
            (Some(n), Some(a)) if a > n => {
                next = arrivals.next(rng, day.rate, step);
                (n, false)
            }
            (_, Some(a)) => {
                anchor += 1;
                (a, true)
            }
            (Some(n), None) => {
                next = arrivals.next(rng, day.rate, step);
                (n, false)
            }
            (None, None) => break,
        };
        // Orders get distinct timestamps, so that only an order's own fills
        // share one and a one-tick event owns its timestamp.
        let ts = (day.open_us + (t * 1e6) as i64).max(last_ts.saturating_add(1));
        if ts >= continuous_end {
            break;
        }
        last_ts = ts;
        while events.get(cursor).is_some_and(|e| f64::from(e.end_s) <= t) {
            cursor += 1;
        }
        let x = t / step;
        let s = (x as usize).min(last_step);
        let y = day.path[s] + (x - s as f64) * (day.path[s + 1] - day.path[s]);
        let fair = day.open_price * y.exp();
        let mut event = events.get_mut(cursor).filter(|e| e.contains(t));
        let fx = match event.as_deref_mut() {
            Some(e) => e.trade_effect(t, own, fair),
            None => Effect::NONE,
        };
        let q = book.quote(rng, spec, day.shape.widen[s], fair, &fx);

        let p_buy = fx.buy_prob.unwrap_or(if buying {
            SAME_SIDE_PROB
        } else {
            1.0 - SAME_SIDE_PROB
        });
        buying = rng.random_bool(p_buy.clamp(0.0, 1.0));
        let price = fx.price.unwrap_or(if buying { q.ask } else { q.bid });
        let fills = if !fx.single_fill && rng.random_bool(MULTI_FILL_PROB) {
            rng.random_range(2..=4)
        } else {
            1
        };
        for _ in 0..fills {
            let volume = if fx.tiny {
                f64::from(rng.random_range(1..=odd_lot_max))
            } else {
                let lots = match fx.lots {
                    Some(l) if rng.random_bool(WASH_REPEAT_PROB) => l,
                    _ => {
                        (size_mu + TRADE_SIZE_SIGMA * normal(rng)).exp()
                            * fx.size_mult
                            * day.size[s]
                    }
                };
                lots.round().max(1.0) * lot
            };
            out.push(&TickRecord {
                ts_us: ts,
                symbol: &spec.symbol,
                price,
                volume,
                open: None,
                high: None,
                low: None,
                bid: Some(q.bid),
                ask: Some(q.ask),
                bid_size: Some(q.bid_size),
                ask_size: Some(q.ask_size),
            });
        }
        if let Some(e) = event.filter(|_| fx.altered) {
            e.mark(ts);
        }
    }
    if let Some(shares) = day.auction {
        auction(day, rng, events, cursor, &mut book, shares, out);
    }
}

/// The closing auction: one print of `shares` at the closing mid, stamped
/// at the session's last microsecond. An event still running (marking the
/// close) moves it and owns it, as a real marking order would.
fn auction(
    day: &Day<'_>,
    rng: &mut ChaCha8Rng,
    events: &mut [Event],
    mut cursor: usize,
    book: &mut Book,
    shares: f64,
    out: &mut Out<'_>,
) {
    let spec = day.spec;
    let ts = day.close_us - 1;
    let t = (ts - day.open_us) as f64 / 1e6;
    while events.get(cursor).is_some_and(|e| f64::from(e.end_s) <= t) {
        cursor += 1;
    }
    let close = day.path.last().copied().unwrap_or(0.0);
    let fair = day.open_price * close.exp();
    let mut event = events.get_mut(cursor).filter(|e| e.contains(t));
    let fx = match event.as_deref_mut() {
        Some(e) => e.trade_effect(t, false, fair),
        None => Effect::NONE,
    };
    let widen = day.shape.widen.last().copied().unwrap_or(1.0);
    let q = book.quote(rng, spec, widen, fair, &fx);
    // The auction crosses at the mid, give or take a tick.
    let mid = (q.bid + q.ask) / 2.0;
    let price = cents(mid + 0.01 * f64::from(rng.random_range(-1i8..=1)));
    let volume = (shares * fx.size_mult / spec.lot_size).round().max(1.0) * spec.lot_size;
    out.push(&TickRecord {
        ts_us: ts,
        symbol: &spec.symbol,
        price,
        volume,
        open: None,
        high: None,
        low: None,
        bid: Some(q.bid),
        ask: Some(q.ask),
        bid_size: Some(q.bid_size),
        ask_size: Some(q.ask_size),
    });
    if let Some(e) = event.filter(|_| fx.altered) {
        e.mark(ts);
    }
}

/// One bar per session minute, stamped at the minute's start: open, high,
/// low and close of the latent path over the minute (price = close), volume
/// of a Poisson number of trades. No quotes.
pub(crate) fn bars(day: &Day<'_>, rng: &mut ChaCha8Rng, events: &mut [Event], out: &mut Out<'_>) {
    let spec = day.spec;
    let step_s = day.shape.step_s.max(1);
    let step = f64::from(step_s);
    let per_bar = (60 / step_s).max(1) as usize;
    let bars = day.rate.len() / per_bar;
    // Mean of the lognormal trade size, in lots.
    let mean_lots = spec.trade_lots * (TRADE_SIZE_SIGMA.powi(2) / 2.0).exp();
    let mut cursor = 0;
    for m in 0..bars {
        let t0 = (m * 60) as f64;
        while events.get(cursor).is_some_and(|e| f64::from(e.end_s) <= t0) {
            cursor += 1;
        }
        let active = events
            .get(cursor)
            .filter(|e| e.contains(t0))
            .map(|_| cursor);
        let event = active.map(|i| &events[i]);
        let first = m * per_bar;
        let price_at = |s: usize| {
            let offset = event.map_or(0.0, |e| e.offset(s as f64 * step));
            day.open_price * (day.path[s] + offset).exp()
        };
        let open = price_at(first);
        let (mut high, mut low, mut close) = (open, open, open);
        for s in first + 1..=first + per_bar {
            close = price_at(s);
            high = high.max(close);
            low = low.min(close);
        }
        if let Some(e) = event {
            close = e.bar_close(close);
            high = high.max(close);
            low = low.min(close);
        }
        // Rounding is monotone, so high >= open, close >= low survives it.
        let (open, high, low, close) = (cents(open), cents(high), cents(low), cents(close));

        let lambda = day.rate[first..first + per_bar].iter().sum::<f64>() * step;
        let trades = Poisson::new(lambda).map_or(0.0, |p| p.sample(rng));
        let size_mult = event.map_or(1.0, |e| e.size_mult(t0 + 30.0));
        let mut volume = if trades > 0.0 {
            let steps = &day.size[first..first + per_bar];
            let size = steps.iter().sum::<f64>() / per_bar as f64;
            // Sum of `trades` lognormal sizes, approximated by its mean with
            // a little noise: bars need the total, not each trade.
            let lots = trades * mean_lots * size_mult * (0.3 * normal(rng) - 0.045).exp() * size;
            lots.round().max(trades) * spec.lot_size
        } else {
            0.0
        };
        // The last bar holds the closing auction.
        if let Some(shares) = day.auction.filter(|_| m + 1 == bars) {
            volume += (shares * size_mult / spec.lot_size).round().max(1.0) * spec.lot_size;
        }
        let ts = day.open_us + m as i64 * 60_000_000;
        out.push(&TickRecord {
            ts_us: ts,
            symbol: &spec.symbol,
            price: close,
            volume,
            open: Some(open),
            high: Some(high),
            low: Some(low),
            bid: None,
            ask: None,
            bid_size: None,
            ask_size: None,
        });
        if let Some(i) = active {
            events[i].mark(ts);
        }
    }
}
