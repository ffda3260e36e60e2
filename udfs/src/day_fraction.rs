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

const HOUR_US: i64 = 3_600_000_000;

/// [`local_seconds`] for many timestamps, remembering the zone's UTC offset
/// over the current UTC hour: ticks come sorted by time within a symbol, so
/// nearly every row falls in the hour of the row before, and looking the
/// offset up in the zone's tables (most of the cost) happens once an hour
/// instead of once a row.
///
/// An hour is remembered only when its first and last microsecond have the
/// same offset, which assumes no zone changes its offset and back within
/// one hour (the time zone database has no such pair; the test walks the
/// transitions of zones with unusual ones). The value is computed from the
/// same integers as [`local_seconds`], so both give the same bits.
#[derive(Debug, Default)]
pub(crate) struct LocalClock {
    /// `(zone, first µs of the hour, its offset in µs)`.
    hour: Option<(chrono_tz::Tz, i64, i64)>,
}

impl LocalClock {
    /// Seconds since local midnight in `tz` (fractional), as [`local_seconds`].
    pub(crate) fn seconds(&mut self, ts_us: i64, tz: &chrono_tz::Tz) -> Option<f64> {
        let offset = match self.hour {
            Some((zone, start, offset))
                if zone == *tz && ts_us >= start && ts_us - start < HOUR_US =>
            {
                offset
            }
            _ => {
                let offset = offset_us(ts_us, tz)?;
                let start = ts_us - ts_us.rem_euclid(HOUR_US);
                let whole_hour = offset_us(start, tz) == Some(offset)
                    && offset_us(start + (HOUR_US - 1), tz) == Some(offset);
                self.hour = whole_hour.then_some((*tz, start, offset));
                offset
            }
        };
        let local = ts_us.checked_add(offset)?;
        let secs = local.div_euclid(1_000_000).rem_euclid(86_400);
        let micros = local.rem_euclid(1_000_000);
        Some(secs as f64 + (micros * 1_000) as f64 / 1e9)
    }
}

/// `tz`'s offset from UTC at `ts_us`, in µs.
fn offset_us(ts_us: i64, tz: &chrono_tz::Tz) -> Option<i64> {
    use chrono::Offset;
    let local = chrono::DateTime::from_timestamp_micros(ts_us)?.with_timezone(tz);
    Some(i64::from(local.offset().fix().local_minus_utc()) * 1_000_000)
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
        let mut clock = LocalClock::default();
        for i in 0..ts.len() {
            let tz = zone.get(i, UDF, "time zone", parse_zone)?;
            match tz {
                Some(tz) if !ts.is_null(i) => {
                    out.append_option(clock.seconds(ts.value(i), &tz).map(|s| s / 86_400.0))
                }
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

    /// The remembered hour gives `local_seconds`' bits, also across the
    /// transitions of zones with odd ones (half-hour and two-hour daylight
    /// saving, skipped days, Ramadan suspensions, many rule changes).
    #[test]
    fn local_clock_equals_local_seconds_across_transitions() {
        use chrono_tz::{Africa, America, Antarctica, Asia, Australia, Europe, Pacific};
        const DAY_US: i64 = 86_400_000_000;
        let zones = [
            America::New_York,
            America::St_Johns,
            America::Caracas,
            Europe::Moscow,
            Europe::Dublin,
            Africa::Casablanca,
            Asia::Kathmandu,
            Asia::Pyongyang,
            Australia::Lord_Howe,
            Australia::Eucla,
            Pacific::Apia,
            Pacific::Chatham,
            Antarctica::Troll,
        ];
        let first = -70 * 365 * DAY_US; // 1900
        let last = 70 * 365 * DAY_US; // 2040
                                      // An odd step (not a whole minute) so that rows land anywhere in
                                      // the hour.
        let step = 7 * 60_000_000 + 13_579;
        let mut checked = 0;
        for tz in zones {
            let mut clock = LocalClock::default();
            let mut day = first;
            let mut before = offset_us(day, &tz);
            while day < last {
                let after = offset_us(day + DAY_US, &tz);
                if after != before {
                    // A transition: walk the day before, the day and the one
                    // after in small steps through one clock.
                    let mut ts = day - DAY_US;
                    while ts < day + 2 * DAY_US {
                        let want = local_seconds(ts, &tz).map(f64::to_bits);
                        assert_eq!(
                            clock.seconds(ts, &tz).map(f64::to_bits),
                            want,
                            "{tz} at {ts}"
                        );
                        ts += step;
                        checked += 1;
                    }
                }
                before = after;
                day += DAY_US;
            }
        }
        assert!(
            checked > 100_000,
            "only {checked} timestamps near transitions"
        );
        // Zones alternating row by row, and a timestamp before 1970.
        let mut clock = LocalClock::default();
        for (i, ts) in [
            -1_234_567_890_123_456,
            0,
            1_704_205_800_000_000,
            1_704_205_800_000_001,
        ]
        .into_iter()
        .enumerate()
        {
            for tz in [zones[i % zones.len()], zones[(i + 5) % zones.len()]] {
                let want = local_seconds(ts, &tz).map(f64::to_bits);
                assert_eq!(
                    clock.seconds(ts, &tz).map(f64::to_bits),
                    want,
                    "{tz} at {ts}"
                );
            }
        }
    }
}
