//! Rolling window UDFs over event-time windows, exact and deterministic.
//!
//! ```sql
//! SELECT symbol, ts,
//!        rolling_std(price, ts, INTERVAL '5 minutes')
//!            OVER (PARTITION BY symbol ORDER BY ts) AS vol_5m,
//!        rolling_zscore(price, ts, INTERVAL '30 minutes')
//!            OVER (PARTITION BY symbol ORDER BY ts) AS price_z_30m,
//!        ewm_zscore(price, 20, 200)
//!            OVER (PARTITION BY symbol ORDER BY ts) AS price_ewm_z
//! FROM ticks
//! ```
//!
//! # The parity promise
//!
//! The value of a `rolling_*` function for a row depends only on the rows of
//! its window: same partition, `ts` in `[ts − width, ts]` (peers with equal
//! `ts` included, so all peers get the same window). Never on the rows before
//! the window nor on where the partition starts. Computing over any suffix of
//! the history that still holds a row's whole window gives the same `f64`, bit
//! for bit (and NULL where NULL). That is what lets a backfill start at
//! `date − lookback` ([`lookback_of`]) and a stream restart anywhere, and
//! still agree with each other.
//!
//! Why it holds: sliding sums never round. [`ExactSum`] keeps the exact real
//! sum of the window (Shewchuk partials; retracting a row is exact), squares
//! and products enter it exactly through [`two_prod`], and each output is a
//! correctly rounded function of those exact reals, so it is canonical
//! (details in `exact_sum` and `rolling`). NaN and infinities are counted
//! apart, so retracting them is exact too. Minimum, maximum and first value
//! are selections, exact by nature. [`EwmZscoreUdf`] recomputes each row from
//! its own last `max_ticks` rows in a fixed order.
//!
//! # Speed
//!
//! Following the measured route in TOOLING.md: `uses_window_frame() == false`
//! (the `OVER` frame is ignored: the width argument is the frame), the width
//! is read once from its literal, only the value and `ts` columns are
//! evaluated, and `evaluate_all` makes one two-pointer pass per partition
//! with no allocation or `ScalarValue` per row. A partition is held in memory
//! whole: backfill by date to bound it.

use std::time::Duration;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::WindowUDF;

mod ewm;
pub(crate) mod exact_sum;
mod frame;
mod incremental;
mod rewrite;
mod rolling;

pub use ewm::{EwmZscoreUdf, EWM_MAX_TICKS};
pub use exact_sum::{two_prod, ExactSum, MOMENT_LIMIT, MOMENT_TINY, SUM_LIMIT};
pub use incremental::{
    ts_unit, EwmFn, EwmState, RollingFn, RollingGroup, RollingGroupState, RollingOut, RollingState,
};
pub use rewrite::ExactRangeWindowsRule;
pub use rolling::{
    RollingCountUdf, RollingFirstUdf, RollingMaxUdf, RollingMeanUdf, RollingMinUdf, RollingStdUdf,
    RollingSumUdf, RollingVarUdf, RollingVwapUdf, RollingZscoreUdf,
};

/// SQL names of the event-time `rolling_*` UDFs (their lookback is the width).
pub const ROLLING_UDF_NAMES: [&str; 10] = [
    "rolling_count",
    "rolling_sum",
    "rolling_mean",
    "rolling_var",
    "rolling_std",
    "rolling_zscore",
    "rolling_min",
    "rolling_max",
    "rolling_first",
    "rolling_vwap",
];

/// Every window UDF of this module, ready to register.
///
/// ```
/// let ctx = datafusion::prelude::SessionContext::new();
/// for udf in stockanomaly_udfs::window::window_udfs() {
///     ctx.register_udwf(udf);
/// }
/// assert!(ctx.state().window_functions().contains_key("rolling_std"));
/// ```
pub fn window_udfs() -> Vec<WindowUDF> {
    vec![
        WindowUDF::from(RollingCountUdf::new()),
        WindowUDF::from(RollingSumUdf::new()),
        WindowUDF::from(RollingMeanUdf::new()),
        WindowUDF::from(RollingVarUdf::new()),
        WindowUDF::from(RollingStdUdf::new()),
        WindowUDF::from(RollingZscoreUdf::new()),
        WindowUDF::from(RollingMinUdf::new()),
        WindowUDF::from(RollingMaxUdf::new()),
        WindowUDF::from(RollingFirstUdf::new()),
        WindowUDF::from(RollingVwapUdf::new()),
        WindowUDF::from(EwmZscoreUdf::new()),
    ]
}

/// How much history before a row its value needs: a backfill that starts this
/// far before its first output row reproduces the streaming values bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookback {
    /// Rows with `ts >= first_ts − duration` (the `rolling_*` width).
    Time(Duration),
    /// The previous rows of the partition (`ewm_zscore`'s `max_ticks`).
    Rows(u64),
}

/// The lookback of a call to one of these UDFs, from its literal arguments in
/// order, the columns left out: the width for `rolling_*` (`[INTERVAL '5
/// minutes']`), `[halflife_ticks, max_ticks]` for `ewm_zscore`. `None` for
/// another name or arguments the UDF would refuse.
///
/// ```
/// use datafusion::common::ScalarValue;
/// use datafusion::arrow::datatypes::IntervalMonthDayNano;
/// use stockanomaly_udfs::window::{lookback_of, Lookback};
/// use std::time::Duration;
///
/// let five_minutes = ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 0, 300_000_000_000)));
/// assert_eq!(lookback_of("rolling_std", &[five_minutes]), Some(Lookback::Time(Duration::from_secs(300))));
/// let ewm = [ScalarValue::Int64(Some(20)), ScalarValue::Int64(Some(200))];
/// assert_eq!(lookback_of("ewm_zscore", &ewm), Some(Lookback::Rows(200)));
/// assert_eq!(lookback_of("log_return", &[]), None);
/// ```
pub fn lookback_of(name: &str, literal_args: &[ScalarValue]) -> Option<Lookback> {
    if name == "ewm_zscore" {
        let [_, max_ticks] = literal_args else {
            return None;
        };
        return ewm::max_ticks_of(max_ticks).map(Lookback::Rows);
    }
    if !ROLLING_UDF_NAMES.contains(&name) {
        return None;
    }
    let [width] = literal_args else {
        return None;
    };
    let nanos = frame::width_nanos(name, width).ok()?;
    Some(Lookback::Time(Duration::from_nanos(
        u64::try_from(nanos).ok()?,
    )))
}

#[cfg(test)]
mod sql_tests;
