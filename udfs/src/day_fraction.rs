//! `day_fraction(ts, zone)`: the time of day in a time zone, as a fraction
//! of the day.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Builder};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use chrono::Timelike;
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::text_arg::{coerce_ts_and_text, parse_zone, TextArg};

/// `day_fraction(ts, 'America/New_York')` = seconds since local midnight /
/// 86400, in `[0, 1)`, daylight saving time included. Feature files turn it
/// into `sin`/`cos` of the time of day, or into the minute of the session.
/// The zone may be a column (each symbol's exchange zone, joined from the
/// `symbols` table); a NULL zone gives NULL, an unknown one an error.
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
            signature: Signature::user_defined(Volatility::Immutable),
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

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_ts_and_text("day_fraction(ts, zone)", arg_types, 2)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        const UDF: &str = "day_fraction(ts, zone)";
        let mut zone = TextArg::new(&args.args, 1, UDF, "time zone", parse_zone)?;
        let Some(ts) = args.args.first() else {
            return exec_err!("{UDF} takes 2 arguments");
        };
        let ts = ts.to_array(args.number_rows)?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let mut out = Float64Builder::with_capacity(ts.len());
        for i in 0..ts.len() {
            let tz = zone.get(i, UDF, "time zone", parse_zone)?;
            match tz {
                Some(tz) if !ts.is_null(i) => out.append_option(day_fraction(ts.value(i), &tz)),
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
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
