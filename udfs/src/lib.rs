//! DataFusion UDFs for market data, and [`register_all`], which registers
//! every one of them in a session.
//!
//! Feature files in `queries/` call these by their SQL names. The rolling
//! window UDFs (`rolling_std(x, ts, INTERVAL '5 minutes') OVER (PARTITION BY
//! symbol ORDER BY ts)` and friends) live in [`window`], with the exactness
//! argument behind their backfill/stream parity and [`window::lookback_of`].
//! The exact aggregates (`exact_sum(x)`, `exact_mean(x)`, whose result is the
//! same bits whatever the row order and partitioning) live in [`aggregate`].

use datafusion::prelude::SessionContext;

pub mod aggregate;
mod day_fraction;
mod log_return;
mod session;
mod text_arg;
pub mod window;

/// The tick timestamp type the UDFs take: microseconds, UTC.
pub(crate) static TS_TYPE: std::sync::LazyLock<arrow::datatypes::DataType> =
    std::sync::LazyLock::new(|| {
        arrow::datatypes::DataType::Timestamp(
            arrow::datatypes::TimeUnit::Microsecond,
            Some("UTC".into()),
        )
    });

pub use aggregate::{ExactMeanUdf, ExactSumUdf};
pub use day_fraction::{day_fraction, DayFractionUdf};
pub use log_return::LogReturnUdf;
pub use session::{session_minute, signed_volume, SessionMinuteUdf, SignedVolumeUdf};
pub use window::{
    lookback_of, EwmZscoreUdf, Lookback, RollingCountUdf, RollingFirstUdf, RollingMaxUdf,
    RollingMeanUdf, RollingMinUdf, RollingStdUdf, RollingSumUdf, RollingVarUdf, RollingVwapUdf,
    RollingZscoreUdf,
};

/// Registers every StockAnomaly UDF in `ctx`.
///
/// ```
/// let ctx = datafusion::prelude::SessionContext::new();
/// stockanomaly_udfs::register_all(&ctx);
/// assert!(ctx.state().scalar_functions().contains_key("log_return"));
/// assert!(ctx.state().window_functions().contains_key("rolling_std"));
/// assert!(ctx.state().aggregate_functions().contains_key("exact_sum"));
/// ```
pub fn register_all(ctx: &SessionContext) {
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(
        LogReturnUdf::new(),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(
        DayFractionUdf::new(),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(
        SessionMinuteUdf::new(),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(
        SignedVolumeUdf::new(),
    ));
    for udaf in aggregate::aggregate_udfs() {
        ctx.register_udaf(udaf);
    }
    for udf in window::window_udfs() {
        ctx.register_udwf(udf);
    }
    ctx.add_analyzer_rule(std::sync::Arc::new(window::ExactRangeWindowsRule::new()));
}
