//! DataFusion UDFs for market data, and [`register_all`], which registers
//! every one of them in a session.
//!
//! Feature files in `queries/` call these by their SQL names.

use datafusion::prelude::SessionContext;

mod log_return;

pub use log_return::LogReturnUdf;

/// Registers every StockAnomaly UDF in `ctx`.
///
/// ```
/// let ctx = datafusion::prelude::SessionContext::new();
/// stockanomaly_udfs::register_all(&ctx);
/// assert!(ctx.state().scalar_functions().contains_key("log_return"));
/// ```
pub fn register_all(ctx: &SessionContext) {
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::from(
        LogReturnUdf::new(),
    ));
}
