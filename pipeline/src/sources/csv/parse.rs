//! Field parsers: numbers and timestamps, with messages that quote the value.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

use super::format::TsFormat;

/// Parses a decimal; `Err` quotes what was found.
pub(crate) fn number(col: &str, s: &str) -> Result<f64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("column `{col}`: empty"));
    }
    t.parse::<f64>()
        .map_err(|_| format!("column `{col}`: expected a decimal, found {t:?}"))
}

/// Parses an optional decimal: empty means missing.
pub(crate) fn opt_number(col: &str, s: &str) -> Result<Option<f64>, String> {
    let t = s.trim();
    if t.is_empty() || t.eq_ignore_ascii_case("null") || t.eq_ignore_ascii_case("na") {
        return Ok(None);
    }
    number(col, t).map(Some)
}

/// NSE's market close, when a daily bhavcopy row is stamped: 15:30 IST.
const NSE_CLOSE: (u32, u32) = (15, 30);

/// Parses a timestamp to microseconds since the epoch, UTC.
pub(crate) fn timestamp(col: &str, s: &str, format: TsFormat) -> Result<i64, String> {
    let t = s.trim();
    let bad = || format!("column `{col}`: expected a timestamp, found {t:?}");
    if t.is_empty() {
        return Err(format!("column `{col}`: empty"));
    }
    match format {
        TsFormat::EpochMs => {
            let v: f64 = t.parse().map_err(|_| bad())?;
            finite_us(v * 1e3).ok_or_else(bad)
        }
        TsFormat::NseDate => {
            let date = NaiveDate::parse_from_str(t, "%d-%b-%Y")
                .or_else(|_| NaiveDate::parse_from_str(t, "%Y-%m-%d"))
                .or_else(|_| NaiveDate::parse_from_str(t, "%d-%m-%Y"))
                .map_err(|_| bad())?;
            let close = NaiveTime::from_hms_opt(NSE_CLOSE.0, NSE_CLOSE.1, 0).ok_or_else(bad)?;
            chrono_tz::Asia::Kolkata
                .from_local_datetime(&date.and_time(close))
                .single()
                .map(|dt| dt.timestamp_micros())
                .ok_or_else(bad)
        }
        TsFormat::Auto => {
            if let Ok(v) = t.parse::<f64>() {
                return epoch_auto(v).ok_or_else(bad);
            }
            if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(t) {
                return Ok(dt.timestamp_micros());
            }
            for f in [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M",
            ] {
                if let Ok(dt) = NaiveDateTime::parse_from_str(t, f) {
                    return Ok(dt.and_utc().timestamp_micros());
                }
            }
            if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
                return Ok(d.and_time(NaiveTime::MIN).and_utc().timestamp_micros());
            }
            Err(bad())
        }
    }
}

/// An epoch number in seconds, ms, µs or ns, told apart by magnitude (any
/// date between 1973 and 5138 is unambiguous this way).
pub(crate) fn epoch_auto(v: f64) -> Option<i64> {
    let a = v.abs();
    let us = if a < 1e11 {
        v * 1e6
    } else if a < 1e14 {
        v * 1e3
    } else if a < 1e17 {
        v
    } else {
        v / 1e3
    };
    finite_us(us)
}

fn finite_us(us: f64) -> Option<i64> {
    (us.is_finite() && us.abs() < 9.0e18).then(|| us.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_765_998_360_000_000; // 2025-12-17T19:06:00Z

    #[test]
    fn epoch_units_by_magnitude() {
        for s in [
            "1765998360",
            "1765998360000",
            "1765998360000000",
            "1765998360000000000",
            "1765998360.0",
        ] {
            assert_eq!(timestamp("ts", s, TsFormat::Auto), Ok(T), "{s}");
        }
        assert_eq!(timestamp("ts", "1765998360000.0", TsFormat::EpochMs), Ok(T));
    }

    #[test]
    fn date_time_strings() {
        for s in [
            "2025-12-17T19:06:00Z",
            "2025-12-17T14:06:00-05:00",
            "2025-12-17 19:06:00",
            "2025-12-17T19:06:00.000000",
        ] {
            assert_eq!(timestamp("ts", s, TsFormat::Auto), Ok(T), "{s}");
        }
        assert!(timestamp("ts", "yesterday", TsFormat::Auto)
            .unwrap_err()
            .contains("\"yesterday\""));
    }

    #[test]
    fn nse_dates_close_at_1530_ist() {
        // 15:30 IST is 10:00 UTC.
        let want = chrono::DateTime::parse_from_rfc3339("2024-01-01T10:00:00Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(
            timestamp("TIMESTAMP", "01-JAN-2024", TsFormat::NseDate),
            Ok(want)
        );
        assert_eq!(
            timestamp("TIMESTAMP", "01-Jan-2024", TsFormat::NseDate),
            Ok(want)
        );
        assert!(timestamp("TIMESTAMP", "2024/01/01", TsFormat::NseDate).is_err());
    }

    #[test]
    fn numbers_quote_what_they_found() {
        assert_eq!(number("price", " 12.5 "), Ok(12.5));
        assert_eq!(
            number("price", "12,5O").unwrap_err(),
            "column `price`: expected a decimal, found \"12,5O\""
        );
        assert_eq!(opt_number("bid", ""), Ok(None));
        assert_eq!(number("price", "NaN").map(f64::is_nan), Ok(true));
    }
}
