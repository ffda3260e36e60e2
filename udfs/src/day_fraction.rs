//! `day_fraction(ts, zone)`: the time of day in a time zone, as a fraction
//! of the day.

use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array};
use arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use chrono::Timelike;
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// `day_fraction(ts, 'America/New_York')` = seconds since local midnight /
/// 86400, in `[0, 1)`, daylight saving time included. Feature files turn it
/// into `sin`/`cos` of the time of day, or into the minute of the session.
///
/// ```sql
/// SELECT sin(2 * pi() * day_fraction(ts, 'Asia/Kolkata')) FROM ticks
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DayFractionUdf {
    signature: Signature,
}

impl Default for DayFractionUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl DayFractionUdf {
    /// The UDF, ready to register.
    pub fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![
                    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    DataType::Utf8,
                ],
                Volatility::Immutable,
            ),
        }
    }
}

/// The fraction of the local day at `ts_us` in zone `tz`.
pub fn day_fraction(ts_us: i64, tz: &chrono_tz::Tz) -> Option<f64> {
    local_seconds(ts_us, tz).map(|s| s / 86_400.0)
}

/// Seconds since local midnight in `tz` at `ts_us` (fractional).
pub(crate) fn local_seconds(ts_us: i64, tz: &chrono_tz::Tz) -> Option<f64> {
    let local = chrono::DateTime::from_timestamp_micros(ts_us)?.with_timezone(tz);
    Some(
        f64::from(local.num_seconds_from_midnight())
            + f64::from(local.nanosecond() % 1_000_000_000) / 1e9,
    )
}

impl ScalarUDFImpl for DayFractionUdf {
    fn name(&self) -> &str {
        "day_fraction"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let zone = match args.args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(z)))) => z.clone(),
            _ => {
                return plan_err!(
                "day_fraction(ts, zone): zone must be a constant string such as 'America/New_York'"
            )
            }
        };
        let Ok(tz) = chrono_tz::Tz::from_str(&zone) else {
            return plan_err!("day_fraction: unknown time zone {zone:?} (use an IANA name such as 'America/New_York')");
        };
        let Some(ts) = args.args.first() else {
            return exec_err!("day_fraction takes 2 arguments");
        };
        let ts = ts.to_array(args.number_rows)?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let out: Float64Array = (0..ts.len())
            .map(|i| {
                if ts.is_null(i) {
                    None
                } else {
                    day_fraction(ts.value(i), &tz)
                }
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_daylight_saving() {
        let ny = chrono_tz::America::New_York;
        // 2024-01-02 14:30Z is 09:30 EST; 2024-07-01 13:30Z is 09:30 EDT.
        let winter = day_fraction(1_704_205_800_000_000, &ny).unwrap();
        let summer = day_fraction(1_719_840_600_000_000, &ny).unwrap();
        assert!((winter - 9.5 / 24.0).abs() < 1e-12);
        assert!((summer - 9.5 / 24.0).abs() < 1e-12);
        let kolkata = day_fraction(1_704_205_800_000_000, &chrono_tz::Asia::Kolkata).unwrap();
        assert!((kolkata - 20.0 / 24.0).abs() < 1e-12, "{kolkata}");
    }
}
