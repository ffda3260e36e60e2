//! Time as the pipeline counts it: microseconds since the Unix epoch, UTC.

/// Microseconds in a (UTC) day: `ts.div_euclid(DAY_US)` is a tick's day.
pub const DAY_US: i64 = 86_400_000_000;

/// Wall-clock time in µs since the epoch (arrival and commit stamps).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
