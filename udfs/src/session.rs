//! Exchange-time helpers: `session_minute(ts, zone, open)` and
//! `signed_volume(price, previous_price, volume)`.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Float64Builder};
use arrow::datatypes::{DataType, Float64Type, TimestampMicrosecondType};
use chrono::{NaiveTime, Timelike};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

use crate::text_arg::{coerce_ts_and_text, parse_hhmm, parse_zone, TextArg};

/// `session_minute(ts, 'America/New_York', '09:30')`: minutes since the
/// session opened on the tick's local day (fractional; negative before the
/// open), daylight saving time included. `390 - session_minute(...)` is the
/// time to a 16:00 close, and `-session_minute(ts, zone, '16:00')` too. The
/// zone and the time may be columns (joined from the `symbols` table).
///
/// ```sql
/// SELECT 390 - session_minute(ts, 'America/New_York', '09:30') AS minutes_to_close FROM ticks
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SessionMinuteUdf {
    signature: Signature,
}

impl Default for SessionMinuteUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionMinuteUdf {
    /// The UDF, ready to register.
    pub fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

/// Minutes from `open` (local time in `tz`) to `ts_us` on the same local day.
pub fn session_minute(ts_us: i64, tz: &chrono_tz::Tz, open: NaiveTime) -> Option<f64> {
    let now = crate::day_fraction::local_seconds(ts_us, tz)?;
    Some(minutes_from(now, open))
}

/// Minutes from `open` to `now` (seconds since local midnight).
fn minutes_from(now: f64, open: NaiveTime) -> f64 {
    (now - f64::from(open.num_seconds_from_midnight())) / 60.0
}

impl ScalarUDFImpl for SessionMinuteUdf {
    fn name(&self) -> &str {
        "session_minute"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_ts_and_text("session_minute(ts, zone, open)", arg_types, 3)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        const UDF: &str = "session_minute(ts, zone, open)";
        let mut zone = TextArg::new(&args.args, 1, UDF, "time zone", parse_zone)?;
        let mut open = TextArg::new(&args.args, 2, UDF, "open (HH:MM)", parse_hhmm)?;
        let Some(ts) = args.args.first() else {
            return exec_err!("{UDF} takes 3 arguments");
        };
        let ts = ts.to_array(args.number_rows)?;
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        let mut out = Float64Builder::with_capacity(ts.len());
        let mut clock = crate::day_fraction::LocalClock::default();
        for i in 0..ts.len() {
            let tz = zone.get(i, UDF, "time zone", parse_zone)?;
            let at = open.get(i, UDF, "open (HH:MM)", parse_hhmm)?;
            match (tz, at) {
                (Some(tz), Some(at)) if !ts.is_null(i) => {
                    let now = clock.seconds(ts.value(i), &tz);
                    out.append_option(now.map(|now| minutes_from(now, at)))
                }
                _ => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `signed_volume(price, previous_price, volume)`: the volume signed by the
/// tick rule, +volume on an uptick, -volume on a downtick, 0 when the price
/// did not move; NULL without a previous price. Summed over a window it is
/// the order-flow imbalance that pumps and layering leave behind.
///
/// ```sql
/// SELECT sum(signed_volume(price, lag(price) OVER (PARTITION BY symbol ORDER BY ts, seq), volume))
///        OVER (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW)
/// FROM ticks
/// ```
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SignedVolumeUdf {
    signature: Signature,
}

impl Default for SignedVolumeUdf {
    fn default() -> Self {
        Self::new()
    }
}

impl SignedVolumeUdf {
    /// The UDF, ready to register.
    pub fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Float64, DataType::Float64, DataType::Float64],
                Volatility::Immutable,
            ),
        }
    }
}

/// The tick-rule signed volume.
pub fn signed_volume(price: f64, previous: f64, volume: f64) -> f64 {
    if price > previous {
        volume
    } else if price < previous {
        -volume
    } else {
        0.0
    }
}

impl ScalarUDFImpl for SignedVolumeUdf {
    fn name(&self) -> &str {
        "signed_volume"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let [p, q, v] = arrays.as_slice() else {
            return exec_err!("signed_volume takes 3 arguments, got {}", arrays.len());
        };
        let (p, q, v) = (
            p.as_primitive::<Float64Type>(),
            q.as_primitive::<Float64Type>(),
            v.as_primitive::<Float64Type>(),
        );
        let out: Float64Array = (0..args.number_rows)
            .map(|i| {
                (!(p.is_null(i) || q.is_null(i) || v.is_null(i)))
                    .then(|| signed_volume(p.value(i), q.value(i), v.value(i)))
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
    fn minutes_from_the_local_open() {
        let open = NaiveTime::from_hms_opt(9, 30, 0).unwrap_or_default();
        let ny = chrono_tz::America::New_York;
        // 14:30Z in January is 09:30 EST; 20:59Z is 15:59 EST.
        assert_eq!(session_minute(1_704_205_800_000_000, &ny, open), Some(0.0));
        assert_eq!(
            session_minute(1_704_229_140_000_000, &ny, open),
            Some(389.0)
        );
        // July: 13:30Z is 09:30 EDT.
        assert_eq!(session_minute(1_719_840_600_000_000, &ny, open), Some(0.0));
        assert_eq!(
            session_minute(1_704_205_800_000_000 - 60_000_000, &ny, open),
            Some(-1.0)
        );
    }

    #[test]
    fn tick_rule() {
        assert_eq!(signed_volume(10.1, 10.0, 5.0), 5.0);
        assert_eq!(signed_volume(9.9, 10.0, 5.0), -5.0);
        assert_eq!(signed_volume(10.0, 10.0, 5.0), 0.0);
    }

    #[tokio::test]
    async fn run_in_sql_and_refuse_bad_constants() {
        let ctx = SessionContext::new();
        crate::register_all(&ctx);
        let b = ctx
            .sql("SELECT session_minute(TIMESTAMP '2024-01-02T15:00:00Z', 'America/New_York', '09:30'), \
                  signed_volume(2.0, 1.0, 3.0), signed_volume(1.0, NULL, 3.0)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(b[0].column(0).as_primitive::<Float64Type>().value(0), 30.0);
        assert_eq!(b[0].column(1).as_primitive::<Float64Type>().value(0), 3.0);
        assert!(b[0].column(2).is_null(0));
        for bad in ["'Mars/Olympus'", "'America/New_York', '9h30'"] {
            let sql = if bad.contains(',') {
                format!("SELECT session_minute(TIMESTAMP '2024-01-02T15:00:00Z', {bad})")
            } else {
                format!("SELECT session_minute(TIMESTAMP '2024-01-02T15:00:00Z', {bad}, '09:30')")
            };
            let err = match ctx.sql(&sql).await {
                Ok(df) => df.collect().await.unwrap_err().to_string(),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("session_minute"), "{err}");
        }
    }
}
