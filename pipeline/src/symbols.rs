//! The `symbols` reference table: each symbol's exchange, time zone and
//! continuous session, so that time-of-day features use the exchange's
//! clock.
//!
//! Feature files join it on `symbol` (the default pack's `session.sql`); a
//! symbol missing from it is taken as New York (`America/New_York`,
//! 09:30-16:00). A symbol should have one row; when the lake holds several,
//! the pack takes the alphabetically first zone and close, so the choice is
//! deterministic.

use std::sync::{Arc, OnceLock};

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::tick::ts_type;

/// Column names of the symbols table.
pub mod col {
    /// When the row became valid (its `date=` partition).
    pub const LISTED: &str = "listed";
    /// The ticker, as in `ticks`.
    pub const SYMBOL: &str = "symbol";
    /// Market identifier code of the listing venue (`XNYS`, `XNSE`, ...).
    pub const EXCHANGE: &str = "exchange";
    /// IANA time zone of the venue (`America/New_York`, `Asia/Kolkata`).
    pub const TIMEZONE: &str = "timezone";
    /// Local open of the continuous session, `HH:MM`.
    pub const SESSION_OPEN: &str = "session_open";
    /// Local close of the continuous session, `HH:MM`.
    pub const SESSION_CLOSE: &str = "session_close";
}

/// The schema of the `symbols` table.
pub fn symbol_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(col::LISTED, ts_type(), false),
                Field::new(col::SYMBOL, DataType::Utf8, false),
                Field::new(col::EXCHANGE, DataType::Utf8, false),
                Field::new(col::TIMEZONE, DataType::Utf8, false),
                Field::new(col::SESSION_OPEN, DataType::Utf8, false),
                Field::new(col::SESSION_CLOSE, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// One symbol's reference data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolInfo<'a> {
    pub symbol: &'a str,
    pub exchange: &'a str,
    pub timezone: &'a str,
    /// `(hour, minute)` local.
    pub open: (u32, u32),
    /// `(hour, minute)` local.
    pub close: (u32, u32),
}

/// A venue: market identifier code, IANA time zone, local open and close
/// `(hour, minute)`.
pub type Exchange = (&'static str, &'static str, (u32, u32), (u32, u32));

/// The venues StockAnomaly knows by market identifier code: time zone and
/// continuous session (local `(hour, minute)` open and close).
pub const EXCHANGES: &[Exchange] = &[
    ("XNYS", "America/New_York", (9, 30), (16, 0)),
    ("XNAS", "America/New_York", (9, 30), (16, 0)),
    ("ARCX", "America/New_York", (9, 30), (16, 0)),
    ("BATS", "America/New_York", (9, 30), (16, 0)),
    ("IEXG", "America/New_York", (9, 30), (16, 0)),
    ("XTSE", "America/Toronto", (9, 30), (16, 0)),
    ("XNSE", "Asia/Kolkata", (9, 15), (15, 30)),
    ("XBOM", "Asia/Kolkata", (9, 15), (15, 30)),
    ("XLON", "Europe/London", (8, 0), (16, 30)),
    ("XETR", "Europe/Berlin", (9, 0), (17, 30)),
    ("XPAR", "Europe/Paris", (9, 0), (17, 30)),
    ("XTKS", "Asia/Tokyo", (9, 0), (15, 30)),
    ("XHKG", "Asia/Hong_Kong", (9, 30), (16, 0)),
    ("XASX", "Australia/Sydney", (10, 0), (16, 0)),
];

/// A known exchange's row for `symbol`; `None` for an unknown code.
pub fn listing<'a>(symbol: &'a str, mic: &str) -> Option<SymbolInfo<'a>> {
    EXCHANGES
        .iter()
        .find(|e| e.0.eq_ignore_ascii_case(mic))
        .map(|&(exchange, timezone, open, close)| SymbolInfo {
            symbol,
            exchange,
            timezone,
            open,
            close,
        })
}

/// The rows of `symbols`, all valid from `listed_us`, as one batch.
pub fn symbols_batch(listed_us: i64, rows: &[SymbolInfo<'_>]) -> RecordBatch {
    let mut listed = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
    let mut symbol = StringBuilder::new();
    let mut exchange = StringBuilder::new();
    let mut timezone = StringBuilder::new();
    let mut open = StringBuilder::new();
    let mut close = StringBuilder::new();
    for r in rows {
        listed.append_value(listed_us);
        symbol.append_value(r.symbol);
        exchange.append_value(r.exchange);
        timezone.append_value(r.timezone);
        open.append_value(format!("{:02}:{:02}", r.open.0, r.open.1));
        close.append_value(format!("{:02}:{:02}", r.close.0, r.close.1));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(listed.finish()),
        Arc::new(symbol.finish()),
        Arc::new(exchange.finish()),
        Arc::new(timezone.finish()),
        Arc::new(open.finish()),
        Arc::new(close.finish()),
    ];
    // Types and lengths are fixed here: a failure is our bug.
    RecordBatch::try_new(symbol_schema(), columns)
        .unwrap_or_else(|e| panic!("symbols batch is invalid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;

    #[test]
    fn known_exchanges_have_valid_zones() {
        for e in EXCHANGES {
            assert!(e.1.parse::<chrono_tz::Tz>().is_ok(), "{}", e.1);
            assert!(e.2 < e.3, "{} opens before it closes", e.0);
        }
        assert_eq!(listing("X", "xnse").unwrap().timezone, "Asia/Kolkata");
        assert!(listing("X", "MARS").is_none());
    }

    #[test]
    fn formats_sessions_as_hh_mm() {
        let b = symbols_batch(
            0,
            &[SymbolInfo {
                symbol: "INFY",
                exchange: "XNSE",
                timezone: "Asia/Kolkata",
                open: (9, 15),
                close: (15, 30),
            }],
        );
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.column(4).as_string::<i32>().value(0), "09:15");
        assert_eq!(b.column(5).as_string::<i32>().value(0), "15:30");
    }
}
