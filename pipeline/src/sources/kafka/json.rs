//! Ticks as JSON objects: the decoder that turns a Kafka payload into a
//! [`TickRecord`], and the encoder that writes one lossless.
//!
//! # The wire format
//!
//! One JSON object per message. By default the keys of the Python prototype
//! are understood (see [`FieldMapping`]); unknown keys are ignored, so
//! producers may add their own. Values:
//!
//! - `symbol`: a string.
//! - `timestamp`: an epoch number in seconds, milliseconds, microseconds or
//!   nanoseconds (told apart by magnitude, as the CSV reader does), or an
//!   ISO-8601 / RFC 3339 string (`2024-01-02T14:30:00.123456Z`, an offset, or
//!   none for UTC). Fractions finer than a microsecond are truncated.
//! - `price`, `volume` and the optional `open`, `high`, `low`, `bid`, `ask`,
//!   `bid_size`, `ask_size`: JSON numbers. Numeric strings (`"189.5"`) are
//!   accepted too, because feeds that serialise decimals as strings are common;
//!   `"NaN"` and `"inf"` then decode to what they say and validation refuses
//!   them with the usual reason. `null` or an absent key leaves an optional
//!   field NULL.
//!
//! [`encode_tick_json`] writes timestamps as RFC 3339 with exactly six
//! fractional digits and numbers in Rust's shortest round-trip form, so a tick
//! decodes to the same microseconds and bit-identical `f64`s. `seq` and
//! `source` are not sent: the consumer's [`TickBuilder`](crate::tick::TickBuilder)
//! assigns `seq` again from arrival order, which is the lake's order as long
//! as each symbol's ticks are published in `(ts, seq)` order to one partition.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use arrow::array::{Array, RecordBatch};
use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, Visitor};

use crate::sources::csv::format::TsFormat;
use crate::sources::csv::parse;
use crate::sources::feed::json::{Scalar, ScalarSeed};
use crate::tick::{Rejection, TickRecord, TickView};

/// A tick field that a JSON key can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TickField {
    /// The instrument symbol (string).
    Symbol,
    /// Event time (epoch number or ISO-8601 string).
    Timestamp,
    /// Trade price or bar close.
    Price,
    /// Traded quantity.
    Volume,
    /// Bar open.
    Open,
    /// Bar high.
    High,
    /// Bar low.
    Low,
    /// Best bid.
    Bid,
    /// Best ask.
    Ask,
    /// Size at the best bid.
    BidSize,
    /// Size at the best ask.
    AskSize,
}

const FIELDS: usize = 11;

impl TickField {
    /// Every field, in the order of [`TickRecord`].
    pub const ALL: [TickField; FIELDS] = [
        Self::Symbol,
        Self::Timestamp,
        Self::Price,
        Self::Volume,
        Self::Open,
        Self::High,
        Self::Low,
        Self::Bid,
        Self::Ask,
        Self::BidSize,
        Self::AskSize,
    ];

    /// The field's name in overrides and messages (`price`, `bid_size`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Symbol => "symbol",
            Self::Timestamp => "timestamp",
            Self::Price => "price",
            Self::Volume => "volume",
            Self::Open => "open",
            Self::High => "high",
            Self::Low => "low",
            Self::Bid => "bid",
            Self::Ask => "ask",
            Self::BidSize => "bid_size",
            Self::AskSize => "ask_size",
        }
    }

    /// The field called `name` (`ts` is accepted for `timestamp`).
    pub fn from_name(name: &str) -> Option<Self> {
        if name == "ts" {
            return Some(Self::Timestamp);
        }
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The JSON keys understood by default, preferred first: the Python
    /// prototype's names and the usual synonyms.
    pub fn default_keys(self) -> &'static [&'static str] {
        match self {
            Self::Symbol => &["symbol", "ticker", "sym"],
            Self::Timestamp => &["timestamp", "ts", "time"],
            Self::Price => &["price", "close", "last"],
            Self::Volume => &["size", "volume", "qty"],
            Self::Open => &["open"],
            Self::High => &["high"],
            Self::Low => &["low"],
            Self::Bid => &["bid"],
            Self::Ask => &["ask"],
            Self::BidSize => &["bid_size"],
            Self::AskSize => &["ask_size"],
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TickField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A field mapping that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// The override is not `FIELD=KEY`.
    #[error("field mapping {spec:?}: expected FIELD=KEY, e.g. price=px")]
    Syntax {
        /// The override as given.
        spec: String,
    },
    /// The override names no tick field.
    #[error(
        "field mapping {spec:?}: unknown field {field:?} (one of symbol, timestamp, price, \
         volume, open, high, low, bid, ask, bid_size, ask_size)"
    )]
    UnknownField {
        /// The override as given.
        spec: String,
        /// The field it names.
        field: String,
    },
    /// One JSON key would fill two fields.
    #[error("field mapping: JSON key {key:?} is mapped to both `{first}` and `{second}`")]
    Ambiguous {
        /// The key.
        key: String,
        /// One field it fills.
        first: TickField,
        /// The other.
        second: TickField,
    },
}

/// Which JSON keys fill which tick field.
///
/// Each field has a list of keys, preferred first: when a message carries
/// several of them (`price` and `close`), the first in the list wins.
///
/// ```
/// use stockanomaly::sources::kafka::{FieldMapping, TickField};
///
/// let m = FieldMapping::parse_overrides(&["price=px", "timestamp=t"]).unwrap();
/// assert_eq!(m.keys(TickField::Price), ["px"]);
/// assert_eq!(m.keys(TickField::Volume), ["size", "volume", "qty"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMapping {
    keys: [Vec<String>; FIELDS],
}

impl Default for FieldMapping {
    fn default() -> Self {
        Self {
            keys: TickField::ALL.map(|f| f.default_keys().iter().map(|k| k.to_string()).collect()),
        }
    }
}

impl FieldMapping {
    /// The default mapping (see [`TickField::default_keys`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The default mapping changed by `FIELD=KEY` overrides: the first
    /// override of a field replaces its default keys, later ones of the same
    /// field add alternatives (`price=px`, `price=p` accepts `px`, then `p`).
    pub fn parse_overrides<S: AsRef<str>>(overrides: &[S]) -> Result<Self, MappingError> {
        let mut m = Self::default();
        let mut replaced = [false; FIELDS];
        for spec in overrides {
            let spec = spec.as_ref();
            let (field, key) = spec
                .split_once('=')
                .map(|(f, k)| (f.trim(), k.trim()))
                .filter(|(f, k)| !f.is_empty() && !k.is_empty())
                .ok_or_else(|| MappingError::Syntax {
                    spec: spec.to_owned(),
                })?;
            let f = TickField::from_name(field).ok_or_else(|| MappingError::UnknownField {
                spec: spec.to_owned(),
                field: field.to_owned(),
            })?;
            let keys = &mut m.keys[f.index()];
            if !replaced[f.index()] {
                keys.clear();
                replaced[f.index()] = true;
            }
            if !keys.iter().any(|k| k == key) {
                keys.push(key.to_owned());
            }
        }
        m.check()?;
        Ok(m)
    }

    /// The keys read for `field`, preferred first.
    pub fn keys(&self, field: TickField) -> &[String] {
        &self.keys[field.index()]
    }

    /// Refuses a key that fills two fields (a message could not say which).
    fn check(&self) -> Result<(), MappingError> {
        let mut seen: Vec<(&str, TickField)> = Vec::new();
        for f in TickField::ALL {
            for k in self.keys(f) {
                if let Some((_, first)) = seen.iter().find(|(s, _)| *s == k) {
                    return Err(MappingError::Ambiguous {
                        key: k.clone(),
                        first: *first,
                        second: f,
                    });
                }
                seen.push((k, f));
            }
        }
        Ok(())
    }
}

/// One entry of the decoder's key table: JSON key, field index, preference.
type KeyEntry = (Box<str>, u8, u8);

/// Decodes JSON payloads into [`TickRecord`]s.
///
/// Strings are borrowed from the payload; nothing is allocated per message
/// unless the symbol contains JSON escapes (it is then unescaped into a buffer
/// the decoder keeps). No `serde_json::Value` tree is built: keys are looked
/// up as they stream past and the values of unknown keys are skipped.
///
/// ```
/// use stockanomaly::sources::kafka::JsonTickDecoder;
///
/// let mut d = JsonTickDecoder::default();
/// let t = d
///     .decode(br#"{"symbol":"AAPL","timestamp":1704205800123,"price":189.5,"size":100}"#)
///     .unwrap();
/// assert_eq!((t.symbol, t.ts_us, t.price), ("AAPL", 1_704_205_800_123_000, 189.5));
/// let err = d.decode(br#"{"symbol":"AAPL","timestamp":1704205800123,"size":1}"#).unwrap_err();
/// assert!(err.detail.contains("price"));
/// ```
#[derive(Debug, Clone)]
pub struct JsonTickDecoder {
    mapping: FieldMapping,
    table: Vec<KeyEntry>,
    symbol: String,
}

impl Default for JsonTickDecoder {
    fn default() -> Self {
        Self::new(FieldMapping::default())
    }
}

impl JsonTickDecoder {
    /// A decoder reading the keys of `mapping`.
    pub fn new(mapping: FieldMapping) -> Self {
        let mut table = Vec::new();
        for f in TickField::ALL {
            for (prio, k) in mapping.keys(f).iter().enumerate() {
                // At most a handful of keys per field: the u8s cannot overflow
                // in practice, and a saturated preference only ties.
                table.push((
                    k.as_str().into(),
                    f.index() as u8,
                    prio.min(u8::MAX as usize) as u8,
                ));
            }
        }
        Self {
            mapping,
            table,
            symbol: String::new(),
        }
    }

    /// The mapping in use.
    pub fn mapping(&self) -> &FieldMapping {
        &self.mapping
    }

    /// Decodes one payload. The record is not validated (push it into a
    /// [`TickBuilder`](crate::tick::TickBuilder)); a payload that is not a
    /// JSON object, lacks a required field or has a value of the wrong type is
    /// a [`Malformed`](crate::tick::RejectReason::Malformed) rejection whose
    /// detail names the field and the JSON key.
    pub fn decode<'a>(&'a mut self, payload: &'a [u8]) -> Result<TickRecord<'a>, Rejection> {
        let mut slots: [Option<(u8, Scalar<'a>)>; FIELDS] = Default::default();
        let mut de = serde_json::Deserializer::from_slice(payload);
        de.deserialize_map(ObjectVisitor {
            table: &self.table,
            slots: &mut slots,
        })
        .and_then(|()| de.end())
        .map_err(|e| Rejection::malformed(format!("not a JSON tick object: {e}")))?;

        let mapping = &self.mapping;
        let [symbol, ts, price, volume, open, high, low, bid, ask, bid_size, ask_size] = slots;
        let ts_us = timestamp(mapping, ts)?;
        let price = required_number(mapping, TickField::Price, price)?;
        let volume = required_number(mapping, TickField::Volume, volume)?;
        let open = optional_number(mapping, TickField::Open, open)?;
        let high = optional_number(mapping, TickField::High, high)?;
        let low = optional_number(mapping, TickField::Low, low)?;
        let bid = optional_number(mapping, TickField::Bid, bid)?;
        let ask = optional_number(mapping, TickField::Ask, ask)?;
        let bid_size = optional_number(mapping, TickField::BidSize, bid_size)?;
        let ask_size = optional_number(mapping, TickField::AskSize, ask_size)?;
        let symbol: &'a str = match present(mapping, TickField::Symbol, symbol)? {
            (_, Scalar::Str(Cow::Borrowed(s))) => s,
            (_, Scalar::Str(Cow::Owned(s))) => {
                // An escaped symbol: keep it in the decoder so the record can
                // borrow it like the others.
                self.symbol = s;
                &self.symbol
            }
            (key, other) => return Err(wrong_type(TickField::Symbol, key, "a string", &other)),
        };
        Ok(TickRecord {
            ts_us,
            symbol,
            price,
            volume,
            open,
            high,
            low,
            bid,
            ask,
            bid_size,
            ask_size,
        })
    }
}

/// Looks a key up in the decoder's table: `(field index, preference)`.
struct KeySeed<'t>(&'t [KeyEntry]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<(u8, u8)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<(u8, u8)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self
            .0
            .iter()
            .find(|(k, _, _)| &**k == v)
            .map(|&(_, f, p)| (f, p)))
    }
}

/// Walks the top-level object, keeping for each field the value of its most
/// preferred key present.
struct ObjectVisitor<'t, 'a> {
    table: &'t [KeyEntry],
    slots: &'t mut [Option<(u8, Scalar<'a>)>; FIELDS],
}

impl<'a> Visitor<'a> for ObjectVisitor<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        let Self { table, slots } = self;
        while let Some(key) = map.next_key_seed(KeySeed(table))? {
            match key {
                Some((field, prio)) => {
                    let v = map.next_value_seed(ScalarSeed)?;
                    let slot = &mut slots[field as usize];
                    if slot.as_ref().is_none_or(|(p, _)| prio <= *p) {
                        *slot = Some((prio, v));
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

fn key_name(m: &FieldMapping, field: TickField, prio: u8) -> &str {
    m.keys(field)
        .get(prio as usize)
        .map_or(field.name(), String::as_str)
}

fn missing(m: &FieldMapping, field: TickField) -> Rejection {
    Rejection::malformed(format!(
        "missing `{field}` (looked for JSON keys {:?})",
        m.keys(field)
    ))
}

fn wrong_type(field: TickField, key: &str, expected: &str, found: &Scalar<'_>) -> Rejection {
    Rejection::malformed(format!(
        "`{field}` (JSON key {key:?}): expected {expected}, found {}",
        found.describe()
    ))
}

/// The value of a required field, with the key it came from.
fn present<'m, 'a>(
    m: &'m FieldMapping,
    field: TickField,
    slot: Option<(u8, Scalar<'a>)>,
) -> Result<(&'m str, Scalar<'a>), Rejection> {
    match slot {
        None | Some((_, Scalar::Null)) => Err(missing(m, field)),
        Some((p, v)) => Ok((key_name(m, field, p), v)),
    }
}

fn number(field: TickField, key: &str, v: &Scalar<'_>) -> Result<f64, Rejection> {
    match v {
        Scalar::Float(f) => Ok(*f),
        Scalar::Int(i) => Ok(*i as f64),
        Scalar::UInt(u) => Ok(*u as f64),
        Scalar::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| wrong_type(field, key, "a number", v)),
        other => Err(wrong_type(field, key, "a number", other)),
    }
}

fn required_number(
    m: &FieldMapping,
    field: TickField,
    slot: Option<(u8, Scalar<'_>)>,
) -> Result<f64, Rejection> {
    let (key, v) = present(m, field, slot)?;
    number(field, key, &v)
}

fn optional_number(
    m: &FieldMapping,
    field: TickField,
    slot: Option<(u8, Scalar<'_>)>,
) -> Result<Option<f64>, Rejection> {
    match slot {
        None | Some((_, Scalar::Null)) => Ok(None),
        Some((p, v)) => number(field, key_name(m, field, p), &v).map(Some),
    }
}

fn timestamp(m: &FieldMapping, slot: Option<(u8, Scalar<'_>)>) -> Result<i64, Rejection> {
    let field = TickField::Timestamp;
    let (key, v) = present(m, field, slot)?;
    let bad = |v: &Scalar<'_>| {
        wrong_type(
            field,
            key,
            "an epoch number (s, ms, µs or ns) or an ISO-8601 time",
            v,
        )
    };
    let us = match &v {
        Scalar::Int(i) => epoch_int(*i),
        Scalar::UInt(u) => i64::try_from(*u).ok().and_then(epoch_int),
        Scalar::Float(f) => parse::epoch_auto(*f),
        Scalar::Str(s) => match s.trim().parse::<i64>() {
            Ok(i) => epoch_int(i),
            Err(_) => parse::timestamp(key, s, TsFormat::Auto).ok(),
        },
        _ => None,
    };
    us.ok_or_else(|| bad(&v))
}

/// An integer epoch in seconds, ms, µs or ns, by magnitude, with the
/// thresholds of the CSV reader's float version but exact arithmetic (a
/// nanosecond count does not fit an `f64` exactly).
fn epoch_int(v: i64) -> Option<i64> {
    let a = v.unsigned_abs();
    if a < 100_000_000_000 {
        v.checked_mul(1_000_000)
    } else if a < 100_000_000_000_000 {
        v.checked_mul(1_000)
    } else if a < 100_000_000_000_000_000 {
        Some(v)
    } else {
        // Nanoseconds to the nearest microsecond, as the CSV reader rounds.
        let (q, r) = (v.div_euclid(1_000), v.rem_euclid(1_000));
        Some(q + i64::from(r >= 500))
    }
}

impl TickView<'_> {
    /// Appends `row` as a JSON object to `out` (see [`encode_tick_json`]).
    ///
    /// # Panics
    ///
    /// If `row` is out of range.
    pub fn encode(&self, row: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"symbol\":");
        write_json_str(out, self.symbol.value(row));
        out.extend_from_slice(b",\"timestamp\":\"");
        write_ts(out, self.ts.value(row));
        out.extend_from_slice(b"\",\"price\":");
        write_f64(out, self.price.value(row));
        out.extend_from_slice(b",\"volume\":");
        write_f64(out, self.volume.value(row));
        for (name, a) in self.optional {
            if a.is_valid(row) {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                write_f64(out, a.value(row));
            }
        }
        out.push(b'}');
    }
}

/// Appends row `row` of a tick batch to `out` as
/// `{"symbol":"AAPL","timestamp":"2024-01-02T14:30:00.123456Z","price":189.5,"volume":100.0,...}`,
/// NULL optional fields left out. [`JsonTickDecoder`] decodes it to the same
/// microseconds and bit-identical values.
///
/// For many rows of one batch, [`TickView::encode`] avoids looking the
/// columns up per row.
///
/// # Panics
///
/// If `batch` lacks the tick columns or `row` is out of range: both are bugs
/// of the caller, not bad input.
pub fn encode_tick_json(batch: &RecordBatch, row: usize, out: &mut Vec<u8>) {
    match TickView::new(batch) {
        Ok(c) => c.encode(row, out),
        Err(e) => panic!("encode_tick_json: {e}"),
    }
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Shortest representation that parses back to the same bits; non-finite
/// values (never in a validated batch) as the strings the decoder reads back.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    // Writing to a Vec cannot fail.
    let _ = if v.is_finite() {
        write!(out, "{v:?}")
    } else {
        write!(out, "\"{v}\"")
    };
}

/// RFC 3339 with six fractional digits; outside years 0-9999 (never in the
/// lake, whose validator refuses them) the raw epoch microseconds.
fn write_ts(out: &mut Vec<u8>, ts_us: i64) {
    use chrono::{Datelike, Timelike};
    let frac = ts_us.rem_euclid(1_000_000);
    // Writing to a Vec cannot fail.
    let _ = match chrono::DateTime::from_timestamp_micros(ts_us) {
        Some(t) if (0..=9999).contains(&t.year()) => write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{frac:06}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        _ => write!(out, "{ts_us}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::{RejectReason, TickBuilder, Validator};

    const T: i64 = 1_704_205_800_123_456; // 2024-01-02T14:30:00.123456Z

    fn decode(json: &str) -> Result<TickRecord<'static>, Rejection> {
        let mut d = JsonTickDecoder::default();
        let r = d.decode(json.as_bytes())?;
        // Leak the symbol so the record outlives the decoder in tests.
        Ok(TickRecord {
            symbol: Box::leak(r.symbol.to_owned().into_boxed_str()),
            ..r
        })
    }

    /// Decodes and validates, as a consumer does.
    fn reason(json: &str) -> Option<RejectReason> {
        let mut b = TickBuilder::with_validator("t", Validator::with_now(T));
        match decode(json) {
            Err(e) => Some(e.reason),
            Ok(r) => b.push(&r).err().map(|e| e.reason),
        }
    }

    #[test]
    fn reads_the_prototype_shapes() {
        let r = decode(r#"{"symbol":"AAPL","timestamp":"2024-01-02T14:30:00.123456Z","price":189.5,"size":100}"#)
            .unwrap();
        assert_eq!(r, TickRecord::trade(T, "AAPL", 189.5, 100.0));
        let r = decode(r#"{"ticker":"MSFT","ts":1704205800.5,"close":"401.25","volume":"7","high":402,"low":400,"open":null,"extra":[1,{"a":2}]}"#)
            .unwrap();
        assert_eq!(r.symbol, "MSFT");
        assert_eq!(r.ts_us, 1_704_205_800_500_000);
        assert_eq!((r.price, r.volume), (401.25, 7.0));
        assert_eq!((r.open, r.high, r.low), (None, Some(402.0), Some(400.0)));
        let r = decode(r#"{"sym":"X","time":"2024-01-02 14:30:00","last":1,"qty":2}"#).unwrap();
        assert_eq!(r.ts_us, 1_704_205_800_000_000);
    }

    #[test]
    fn epoch_units_by_magnitude_exactly() {
        for ts in [
            "1704205800",
            "1704205800000",
            "1704205800000000",
            "1704205800000000000",
            "\"1704205800000\"",
            "\"2024-01-02T14:30:00Z\"",
            "\"2024-01-02T09:30:00-05:00\"",
        ] {
            let r = decode(&format!(
                r#"{{"symbol":"A","timestamp":{ts},"price":1,"size":1}}"#
            ))
            .unwrap();
            assert_eq!(r.ts_us, 1_704_205_800_000_000, "{ts}");
        }
        // Nanoseconds keep their microseconds (an f64 would not).
        let r =
            decode(r#"{"symbol":"A","timestamp":1704205800123456789,"price":1,"size":1}"#).unwrap();
        assert_eq!(r.ts_us, 1_704_205_800_123_457);
        let r = decode(r#"{"symbol":"A","timestamp":1704205800123,"price":1,"size":1}"#).unwrap();
        assert_eq!(r.ts_us, 1_704_205_800_123_000);
    }

    #[test]
    fn prefers_the_first_key_of_a_field() {
        let r = decode(r#"{"close":2,"symbol":"A","ts":1704205800,"price":1,"size":1}"#).unwrap();
        assert_eq!(r.price, 1.0);
    }

    #[test]
    fn poison_payloads_are_rejected_with_named_reasons() {
        use RejectReason::*;
        let cases: &[(&str, RejectReason, &str)] = &[
            (r#"{"symbol":"AAPL","price":1"#, Malformed, "JSON"),
            ("", Malformed, "JSON"),
            ("[1,2]", Malformed, "object"),
            ("42", Malformed, "object"),
            (
                r#"{"symbol":"A","ts":1704205800,"size":1}"#,
                Malformed,
                "price",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":null,"size":1}"#,
                Malformed,
                "price",
            ),
            (
                r#"{"ts":1704205800,"price":1,"size":1}"#,
                Malformed,
                "symbol",
            ),
            (
                r#"{"symbol":"A","price":1,"size":1}"#,
                Malformed,
                "timestamp",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":"abc","size":1}"#,
                Malformed,
                "\"abc\"",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":true,"size":1}"#,
                Malformed,
                "price",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":[1],"size":1}"#,
                Malformed,
                "price",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":1,"size":1,"bid":"x"}"#,
                Malformed,
                "bid",
            ),
            (
                r#"{"symbol":7,"ts":1704205800,"price":1,"size":1}"#,
                Malformed,
                "symbol",
            ),
            (
                r#"{"symbol":"A","ts":"yesterday","price":1,"size":1}"#,
                Malformed,
                "timestamp",
            ),
            (
                r#"{"symbol":"A","ts":{"s":1},"price":1,"size":1}"#,
                Malformed,
                "timestamp",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":1,"size":1} x"#,
                Malformed,
                "JSON",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":"NaN","size":1}"#,
                NonFinitePrice,
                "",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":"-inf","size":1}"#,
                NonFinitePrice,
                "",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":-2,"size":1}"#,
                NonPositivePrice,
                "",
            ),
            (
                r#"{"symbol":"A","ts":1704205800,"price":1,"size":-5}"#,
                NegativeVolume,
                "",
            ),
            (
                r#"{"symbol":"AAPL US","ts":1704205800,"price":1,"size":1}"#,
                InvalidSymbol,
                "",
            ),
            (
                r#"{"symbol":"AAP\u004c;","ts":1704205800,"price":1,"size":1}"#,
                InvalidSymbol,
                "",
            ),
            (
                r#"{"symbol":"","ts":1704205800,"price":1,"size":1}"#,
                EmptySymbol,
                "",
            ),
            (
                r#"{"symbol":"A","ts":1e30,"price":1,"size":1}"#,
                Malformed,
                "timestamp",
            ),
            (
                r#"{"symbol":"A","ts":86400,"price":1,"size":1}"#,
                TimestampTooOld,
                "",
            ),
            (
                r#"{"symbol":"A","ts":"2999-01-01T00:00:00Z","price":1,"size":1}"#,
                TimestampInFuture,
                "",
            ),
        ];
        for (json, want, mention) in cases {
            let got = match decode(json) {
                Err(e) => e,
                Ok(r) => TickBuilder::with_validator("t", Validator::with_now(T))
                    .push(&r)
                    .expect_err(json),
            };
            assert_eq!(got.reason, *want, "{json}: {got}");
            assert!(got.detail.contains(mention), "{json}: {got}");
        }
        // And the good neighbours of these decode and validate.
        assert_eq!(
            reason(r#"{"symbol":"BRK.B","ts":1704205800000,"price":"1e2","size":0}"#),
            None
        );
        assert_eq!(
            reason(r#"{"symbol":"A\u0042","ts":1704205800,"price":1,"size":1}"#),
            None
        );
    }

    #[test]
    fn escaped_symbols_are_unescaped() {
        let mut d = JsonTickDecoder::default();
        let r = d
            .decode(br#"{"symbol":"M\u0026M","ts":1704205800,"price":1,"size":1}"#)
            .unwrap();
        assert_eq!(r.symbol, "M&M");
    }

    #[test]
    fn overrides_replace_then_add_keys() {
        let m = FieldMapping::parse_overrides(&["price=px", "price=p", "ts=t"]).unwrap();
        assert_eq!(m.keys(TickField::Price), ["px", "p"]);
        assert_eq!(m.keys(TickField::Timestamp), ["t"]);
        let mut d = JsonTickDecoder::new(m);
        let r = d
            .decode(br#"{"symbol":"A","t":1704205800,"p":3,"price":9,"size":1}"#)
            .unwrap();
        assert_eq!(r.price, 3.0, "`price` is no longer read");
        let err = d.decode(br#"{"symbol":"A","timestamp":1704205800,"px":3,"size":1}"#);
        assert!(err.unwrap_err().detail.contains("[\"t\"]"));

        assert!(matches!(
            FieldMapping::parse_overrides(&["px"]),
            Err(MappingError::Syntax { .. })
        ));
        assert!(matches!(
            FieldMapping::parse_overrides(&["prize=px"]),
            Err(MappingError::UnknownField { .. })
        ));
        assert!(matches!(
            FieldMapping::parse_overrides(&["volume=price"]),
            Err(MappingError::Ambiguous { .. })
        ));
    }

    #[test]
    fn encoding_round_trips_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut b = TickBuilder::with_validator("t", Validator::with_now(i64::MAX / 4));
        let mut expected = Vec::new();
        for i in 0..2000 {
            let ts_us = T + rng.random_range(0..1_000_000_000_000i64);
            // Random finite positive bit patterns cover every exponent.
            let mut f = || loop {
                let v = f64::from_bits(rng.random::<u64>() >> 1);
                if v.is_finite() && v > 0.0 {
                    return v;
                }
            };
            let r = TickRecord {
                ts_us,
                symbol: if i % 2 == 0 { "AAPL" } else { "M&M" },
                price: f(),
                volume: if i % 7 == 0 { 0.0 } else { f() },
                open: (i % 3 == 0).then(&mut f),
                high: None,
                low: None,
                bid: (i % 5 == 0).then(&mut f),
                ask: None,
                bid_size: (i % 5 == 0).then_some(100.0),
                ask_size: Some(0.1 + 0.2),
            };
            b.push(&r).unwrap();
            expected.push(r);
        }
        let batch = b.finish();
        let mut d = JsonTickDecoder::default();
        let mut buf = Vec::new();
        for (row, want) in expected.iter().enumerate() {
            buf.clear();
            encode_tick_json(&batch, row, &mut buf);
            let got = d.decode(&buf).unwrap();
            let bits = |r: &TickRecord<'_>| {
                [r.open, r.high, r.low, r.bid, r.ask, r.bid_size, r.ask_size]
                    .map(|v| v.map(f64::to_bits))
            };
            assert_eq!(got.ts_us, want.ts_us);
            assert_eq!(got.symbol, want.symbol);
            assert_eq!(got.price.to_bits(), want.price.to_bits());
            assert_eq!(got.volume.to_bits(), want.volume.to_bits());
            assert_eq!(bits(&got), bits(want), "{}", String::from_utf8_lossy(&buf));
        }
        buf.clear();
        encode_tick_json(&batch, 1, &mut buf);
        let s = std::str::from_utf8(&buf).unwrap();
        assert!(s.starts_with(r#"{"symbol":"M&M","timestamp":""#), "{s}");
        assert!(s.ends_with(r#","ask_size":0.30000000000000004}"#), "{s}");
        assert!(!s.contains("\"high\""), "NULLs are left out: {s}");
    }

    #[test]
    fn timestamps_have_six_digits() {
        let mut out = Vec::new();
        write_ts(&mut out, T);
        assert_eq!(out, b"2024-01-02T14:30:00.123456Z");
        out.clear();
        write_ts(&mut out, 1_704_205_800_000_000);
        assert_eq!(out, b"2024-01-02T14:30:00.000000Z");
        out.clear();
        write_json_str(&mut out, "a\"b\\c\u{1}");
        assert_eq!(out, br#""a\"b\\c\u0001""#);
    }
}
