//! `log_return(price, previous_price)`: the natural log of the price ratio.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// `log_return(price, previous_price)` = ln(price / previous_price).
///
/// NULL when either input is NULL or not strictly positive: a return against
/// a missing or impossible price is missing, not zero or NaN.
///
/// ```sql
/// SELECT log_return(price, lag(price) OVER (PARTITION BY symbol ORDER BY ts)) FROM ticks
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LogReturnUdf {
    signature: Signature,
}

impl Default for LogReturnUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl LogReturnUdf {
    /// The UDF, ready to register.
    pub fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Float64, DataType::Float64],
                Volatility::Immutable,
            ),
        }
    }
}

/// The log return of two prices, `None` when it is undefined.
pub fn log_return(price: f64, previous: f64) -> Option<f64> {
    (price > 0.0 && previous > 0.0 && price.is_finite() && previous.is_finite())
        .then(|| (price / previous).ln())
}

impl ScalarUDFImpl for LogReturnUdf {
    fn name(&self) -> &str {
        "log_return"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [price, prev] = arrays.as_slice() else {
            return exec_err!("log_return takes 2 arguments, got {}", arrays.len());
        };
        let price = price.as_primitive::<Float64Type>();
        let prev = prev.as_primitive::<Float64Type>();
        let out: Float64Array = (0..n)
            .map(|i| {
                if price.is_null(i) || prev.is_null(i) {
                    None
                } else {
                    log_return(price.value(i), prev.value(i))
                }
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    #[test]
    fn undefined_returns_are_none() {
        assert_eq!(log_return(2.0, 1.0), Some(2f64.ln()));
        assert_eq!(log_return(0.0, 1.0), None);
        assert_eq!(log_return(1.0, -1.0), None);
        assert_eq!(log_return(f64::NAN, 1.0), None);
    }

    #[tokio::test]
    async fn runs_in_sql() {
        let ctx = SessionContext::new();
        crate::register_all(&ctx);
        let batches = ctx
            .sql("SELECT log_return(p, q) AS r FROM (VALUES (2.0, 1.0), (1.0, 0.0), (1.0, NULL)) AS t(p, q)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let r = batches[0].column(0).as_primitive::<Float64Type>();
        assert_eq!(r.len(), 3);
        assert!((r.value(0) - 2f64.ln()).abs() < 1e-15);
        assert!(r.is_null(1) && r.is_null(2));
    }
}
