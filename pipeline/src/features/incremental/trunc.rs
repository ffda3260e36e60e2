//! `date_trunc` to a fixed unit on UTC microsecond timestamps, as integer
//! arithmetic.
//!
//! The pack's join keys truncate every tick's time (`date_trunc('minute',
//! k.ts)` to find its market bucket, `date_trunc('day', ts)` for profiles
//! and betas). DataFusion's `date_trunc` goes through calendar conversions
//! per value (and formats a string per value on the way): 4% of the
//! streaming executor's CPU in a profile of the benchmark. For a second,
//! minute, hour or day on a timestamp in UTC (or without a zone) the answer
//! is the time floored to a multiple of the unit, so the incremental path
//! computes that instead; the values are the same (a test holds them to
//! DataFusion's over negative, boundary and random times), so batch, which
//! keeps DataFusion's, gives the same bits.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, AsArray, PrimitiveArray};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{exec_err, DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// `e` with every `date_trunc(unit, ts)` this module can compute (see the
/// module documentation) replaced by its integer version.
pub(super) fn fast_date_trunc(e: Expr, schema: &DFSchema) -> Result<Expr> {
    e.transform_up(|x| {
        let Expr::ScalarFunction(f) = &x else {
            return Ok(Transformed::no(x));
        };
        let unit = match f.args.as_slice() {
            [granularity, ts] if f.func.name() == "date_trunc" => {
                let g = match super::literal(granularity) {
                    Some(
                        ScalarValue::Utf8(Some(g))
                        | ScalarValue::Utf8View(Some(g))
                        | ScalarValue::LargeUtf8(Some(g)),
                    ) => g,
                    _ => return Ok(Transformed::no(x)),
                };
                let utc_micros = matches!(
                    ts.get_type(schema)?,
                    DataType::Timestamp(TimeUnit::Microsecond, tz)
                        if tz.as_deref().is_none_or(|z| z == "UTC" || z == "+00:00")
                );
                match unit_micros(&g) {
                    Some(unit) if utc_micros => Some((unit, ts.clone())),
                    _ => None,
                }
            }
            _ => None,
        };
        Ok(match unit {
            Some((unit, ts)) => Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                Arc::clone(&TRUNC),
                vec![ts, Expr::Literal(ScalarValue::Int64(Some(unit)), None)],
            ))),
            None => Transformed::no(x),
        })
    })
    .map(|t| t.data)
}

/// Microseconds in a `date_trunc` unit with fixed length in UTC.
fn unit_micros(granularity: &str) -> Option<i64> {
    Some(match granularity.to_ascii_lowercase().as_str() {
        "second" => 1_000_000,
        "minute" => 60_000_000,
        "hour" => 3_600_000_000,
        "day" => 86_400_000_000,
        _ => return None,
    })
}

static TRUNC: LazyLock<Arc<ScalarUDF>> =
    LazyLock::new(|| Arc::new(ScalarUDF::new_from_impl(TruncUtc::default())));

/// `floor_to_unit(ts, unit_micros)`: `ts` floored to a multiple of the
/// unit, in `ts`'s type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TruncUtc {
    signature: Signature,
}

impl Default for TruncUtc {
    fn default() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TruncUtc {
    fn name(&self) -> &str {
        "floor_to_unit"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) => Ok(t.clone()),
            None => exec_err!("floor_to_unit takes a timestamp"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [ts, unit] = args.args.as_slice() else {
            return exec_err!("floor_to_unit takes 2 arguments, got {}", args.args.len());
        };
        let ColumnarValue::Scalar(ScalarValue::Int64(Some(unit))) = unit else {
            return exec_err!("floor_to_unit: the unit must be an Int64 literal");
        };
        let unit = *unit;
        if unit <= 0 {
            return exec_err!("floor_to_unit: unit {unit} is not positive");
        }
        let floor = |t: i64| t - t.rem_euclid(unit);
        Ok(match ts {
            ColumnarValue::Array(a) => {
                let Some(a) = a.as_primitive_opt::<TimestampMicrosecondType>() else {
                    return exec_err!("floor_to_unit: {} is not a µs timestamp", a.data_type());
                };
                let out: PrimitiveArray<TimestampMicrosecondType> = a.unary(floor);
                ColumnarValue::Array(Arc::new(out.with_timezone_opt(a.timezone())))
            }
            ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(t, tz)) => {
                ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(t.map(floor), tz.clone()))
            }
            ColumnarValue::Scalar(other) => {
                return exec_err!("floor_to_unit: {} is not a µs timestamp", other.data_type())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{RecordBatch, TimestampMicrosecondArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::prelude::{col, lit, SessionContext};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The integer version against DataFusion's `date_trunc`, value for
    /// value, for each unit, with and without the UTC zone.
    #[tokio::test]
    async fn equals_datafusions_date_trunc() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let day = 86_400_000_000i64;
        let mut times: Vec<Option<i64>> = vec![
            Some(0),
            Some(-1),
            Some(1),
            Some(-day),
            Some(-day - 1),
            Some(day - 1),
            Some(1_704_205_800_000_000),
            None,
        ];
        times.extend((0..5000).map(|_| Some(rng.random_range(-3 * 365 * day..60 * 365 * day))));
        for tz in [Some("UTC"), Some("+00:00"), None] {
            let ts = TimestampMicrosecondArray::from(times.clone()).with_timezone_opt(tz);
            let schema = Arc::new(Schema::new(vec![Field::new(
                "ts",
                ts.data_type().clone(),
                true,
            )]));
            let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(ts)]).unwrap();
            let ctx = SessionContext::new();
            let df_schema = DFSchema::try_from(schema.as_ref().clone()).unwrap();
            for unit in ["second", "minute", "hour", "day", "MINUTE"] {
                let call =
                    datafusion::functions::datetime::expr_fn::date_trunc(lit(unit), col("ts"));
                let fast = fast_date_trunc(call.clone(), &df_schema).unwrap();
                assert_ne!(fast, call, "{unit} on {tz:?} is rewritten");
                let eval = |e: Expr| {
                    let p = ctx.create_physical_expr(e, &df_schema).unwrap();
                    p.evaluate(&batch)
                        .unwrap()
                        .into_array(batch.num_rows())
                        .unwrap()
                };
                let (want, got) = (eval(call), eval(fast));
                assert_eq!(got.data_type(), want.data_type(), "{unit} on {tz:?}");
                assert_eq!(&got, &want, "{unit} on {tz:?}");
            }
        }
    }

    #[test]
    fn other_units_and_zones_are_left_to_datafusion() {
        let zoned = DataType::Timestamp(TimeUnit::Microsecond, Some("America/New_York".into()));
        let schema = DFSchema::try_from(Schema::new(vec![
            Field::new("ny", zoned, true),
            Field::new(
                "utc",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
        ]))
        .unwrap();
        for (unit, column) in [("day", "ny"), ("month", "utc"), ("week", "utc")] {
            let call = datafusion::functions::datetime::expr_fn::date_trunc(lit(unit), col(column));
            assert_eq!(
                fast_date_trunc(call.clone(), &schema).unwrap(),
                call,
                "{unit} of {column}"
            );
        }
    }
}
