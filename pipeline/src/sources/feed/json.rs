//! The JSON plumbing the feed decoders share: splitting a frame into its
//! messages and a page into its records (as spans of the text, each found
//! by serde_json in the one pass that checks the text), walking one flat
//! message object into typed slots, and a fast RFC 3339 parser.
//!
//! Nothing here builds a `serde_json::Value` tree: keys are matched as they
//! stream past and strings are borrowed from the frame, so decoding a message
//! allocates nothing unless a string carries JSON escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as _;
use serde_json::value::RawValue;

use crate::tick::Rejection;

/// A JSON value as far as a message field cares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Scalar<'_> {
    /// The value in words, for a rejection's detail.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Null => "null".into(),
            Self::Bool(b) => format!("{b}"),
            Self::Int(i) => format!("{i}"),
            Self::UInt(u) => format!("{u}"),
            Self::Float(f) => format!("{f}"),
            Self::Str(s) => format!("{s:?}"),
            Self::Array => "an array".into(),
            Self::Object => "an object".into(),
        }
    }
}

/// The slots of one message: one per known key, `None` when absent.
pub(crate) type Slots<'a, const N: usize> = [Option<Scalar<'a>>; N];

/// Splits `frame` into its messages as byte ranges: the elements of a
/// top-level JSON array, or the frame itself when it is a single object.
///
/// One pass: serde_json checks the whole frame and hands each message over
/// as a [`RawValue`] borrowed from it, whose place in the frame is its span.
/// A broken frame yields no message at all rather than a good prefix: the
/// caller rejects it whole, once, with the parser's position.
pub(crate) fn split_frame(frame: &[u8], out: &mut Vec<(usize, usize)>) -> Result<(), String> {
    out.clear();
    let first = frame
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    let mut de = serde_json::Deserializer::from_slice(frame);
    let base = frame.as_ptr() as usize;
    let found = match first {
        Some(b'[') => de.deserialize_seq(SpanSink {
            base,
            out: &mut *out,
        }),
        Some(b'{') => <&RawValue>::deserialize(&mut de).map(|raw| push_span(base, raw, out)),
        Some(_) => {
            // A frame of another JSON value, or not JSON at all.
            return Err(match validate(frame) {
                Ok(()) => "not a JSON array or object".to_owned(),
                Err(e) => format!("not a JSON array of messages: {e}"),
            });
        }
        None => return Err("not a JSON array of messages: empty frame".into()),
    };
    found.and_then(|()| de.end()).map_err(|e| {
        out.clear();
        format!("not a JSON array of messages: {e}")
    })
}

/// Checks that `bytes` is exactly one JSON value, without building it.
fn validate(bytes: &[u8]) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    IgnoredAny::deserialize(&mut de).and_then(|_| de.end())
}

/// Finds the array under `key` in the JSON object `json` and pushes the
/// spans of its elements (relative to `json`) to `out`, in one pass that
/// checks the object too. `Ok(false)` when the key is absent or `null`.
pub(crate) fn field_elements(
    json: &str,
    key: &str,
    out: &mut Vec<(usize, usize)>,
) -> Result<bool, String> {
    out.clear();
    let mut de = serde_json::Deserializer::from_str(json);
    let found = de
        .deserialize_map(FieldSpans {
            key,
            base: json.as_ptr() as usize,
            out: &mut *out,
        })
        .and_then(|found| de.end().map(|()| found));
    found.map_err(|e| {
        out.clear();
        format!("field `{key}`: {e}")
    })
}

/// The span of `raw`, borrowed from the text starting at address `base`.
fn span_of(base: usize, raw: &RawValue) -> (usize, usize) {
    let start = raw.get().as_ptr() as usize - base;
    (start, start + raw.get().len())
}

fn push_span(base: usize, raw: &RawValue, out: &mut Vec<(usize, usize)>) {
    out.push(span_of(base, raw));
}

/// The spans of `raws`, borrowed from `text`, pushed to `out`.
pub(crate) fn spans_of(text: &[u8], raws: &[&RawValue], out: &mut Vec<(usize, usize)>) {
    let base = text.as_ptr() as usize;
    out.extend(raws.iter().map(|r| span_of(base, r)));
}

/// Deserializes a JSON array into the spans of its elements.
struct SpanSink<'o> {
    base: usize,
    out: &'o mut Vec<(usize, usize)>,
}

impl<'de> Visitor<'de> for SpanSink<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            push_span(self.base, raw, self.out);
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for SpanSink<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

/// Deserializes an object, taking the spans of the array under `key`
/// (`true`) and skipping every other member; `null` counts as absent.
struct FieldSpans<'k, 'o> {
    key: &'k str,
    base: usize,
    out: &'o mut Vec<(usize, usize)>,
}

impl<'de> Visitor<'de> for FieldSpans<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(k) = map.next_key::<KeyStr<'de>>()? {
            if k.0 != self.key {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            found = map
                .next_value_seed(OptionalSpans {
                    base: self.base,
                    out: &mut *self.out,
                })
                .map_err(|_| serde::de::Error::custom("expected an array"))?;
        }
        Ok(found)
    }
}

/// An array's element spans (`true`), or `null` (`false`).
struct OptionalSpans<'o> {
    base: usize,
    out: &'o mut Vec<(usize, usize)>,
}

impl<'de> DeserializeSeed<'de> for OptionalSpans<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for OptionalSpans<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array or null")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_seq(SpanSink {
            base: self.base,
            out: self.out,
        })
        .map(|()| true)
    }
}

/// A key or string as written: borrowed from the text, or unescaped when
/// it held JSON escapes (rare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyStr<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for KeyStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = KeyStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyStr(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// The arrays of an object of arrays (`{"AAPL": [..], "MSFT": [..]}`), in
/// the order written: each key with its elements as raw JSON borrowed from
/// the text.
#[derive(Debug, Default)]
pub(crate) struct ArraysByKey<'a>(pub(crate) Vec<(KeyStr<'a>, Vec<&'a RawValue>)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for ArraysByKey<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = ArraysByKey<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of arrays")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<KeyStr<'a>>()? {
                    out.push((k, map.next_value::<Vec<&'a RawValue>>()?));
                }
                Ok(ArraysByKey(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Walks one flat JSON object, storing the value of every key that
/// `index` knows into its slot; values of other keys are skipped unparsed.
pub(crate) fn walk_object<'a, const N: usize>(
    json: &'a str,
    index: fn(&str) -> Option<usize>,
    slots: &mut Slots<'a, N>,
) -> Result<(), String> {
    for s in slots.iter_mut() {
        *s = None;
    }
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(ObjectVisitor {
        index,
        slots: &mut slots[..],
    })
    .and_then(|()| de.end())
    .map_err(|e| format!("not a JSON message object: {e}"))
}

struct ObjectVisitor<'s, 'a> {
    index: fn(&str) -> Option<usize>,
    slots: &'s mut [Option<Scalar<'a>>],
}

impl<'a> Visitor<'a> for ObjectVisitor<'_, 'a> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'a>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed(self.index))? {
            match key.and_then(|i| self.slots.get_mut(i)) {
                Some(slot) => *slot = Some(map.next_value_seed(ScalarSeed)?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

struct KeySeed<F>(F);

impl<'de, F: Fn(&str) -> Option<usize>> DeserializeSeed<'de> for KeySeed<F> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, F: Fn(&str) -> Option<usize>> Visitor<'de> for KeySeed<F> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok((self.0)(v))
    }
}

/// Reads any JSON value as a [`Scalar`], skipping the insides of arrays and
/// objects.
pub(crate) struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::UInt(v))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// Typed reads of message slots, each naming the field in its rejection.
pub(crate) mod field {
    use super::*;

    fn wrong(name: &str, expected: &str, found: &Scalar<'_>) -> Rejection {
        Rejection::malformed(format!(
            "field `{name}`: expected {expected}, found {}",
            found.describe()
        ))
    }

    fn missing(name: &str) -> Rejection {
        Rejection::malformed(format!("field `{name}` is missing"))
    }

    /// A required number.
    pub(crate) fn num(slot: &Option<Scalar<'_>>, name: &str) -> Result<f64, Rejection> {
        match slot {
            None | Some(Scalar::Null) => Err(missing(name)),
            Some(v) => number(v, name),
        }
    }

    fn number(v: &Scalar<'_>, name: &str) -> Result<f64, Rejection> {
        match v {
            Scalar::Float(f) => Ok(*f),
            Scalar::Int(i) => Ok(*i as f64),
            Scalar::UInt(u) => Ok(*u as f64),
            other => Err(wrong(name, "a number", other)),
        }
    }

    /// A required string, borrowed from the frame when it has no escapes.
    pub(crate) fn str<'s, 'a>(
        slot: &'s Option<Scalar<'a>>,
        name: &str,
    ) -> Result<&'s str, Rejection> {
        match slot {
            Some(Scalar::Str(s)) => Ok(s.as_ref()),
            None | Some(Scalar::Null) => Err(missing(name)),
            Some(other) => Err(wrong(name, "a string", other)),
        }
    }

    /// An optional string.
    pub(crate) fn opt_str<'s, 'a>(
        slot: &'s Option<Scalar<'a>>,
        name: &str,
    ) -> Result<Option<&'s str>, Rejection> {
        match slot {
            None | Some(Scalar::Null) => Ok(None),
            Some(Scalar::Str(s)) => Ok(Some(s.as_ref())),
            Some(other) => Err(wrong(name, "a string", other)),
        }
    }

    /// An optional unsigned integer, exact to 2^64 (trade ids outgrow
    /// 2^53, where an `f64` would round them).
    pub(crate) fn opt_u64(slot: &Option<Scalar<'_>>, name: &str) -> Result<Option<u64>, Rejection> {
        match slot {
            None | Some(Scalar::Null) => Ok(None),
            Some(Scalar::UInt(u)) => Ok(Some(*u)),
            Some(Scalar::Int(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(other) => Err(wrong(name, "a non-negative integer", other)),
        }
    }

    /// A required RFC 3339 time, in µs since the epoch.
    pub(crate) fn rfc3339(slot: &Option<Scalar<'_>>, name: &str) -> Result<i64, Rejection> {
        let s = str(slot, name)?;
        super::rfc3339_us(s).ok_or_else(|| {
            Rejection::malformed(format!(
                "field `{name}`: expected an RFC 3339 time such as \
                 2025-03-03T14:30:01.123456789Z, found {s:?}"
            ))
        })
    }

    /// A required epoch-milliseconds integer, in µs.
    pub(crate) fn epoch_ms(slot: &Option<Scalar<'_>>, name: &str) -> Result<i64, Rejection> {
        let bad = |v: &Scalar<'_>| wrong(name, "epoch milliseconds", v);
        match slot {
            None | Some(Scalar::Null) => Err(missing(name)),
            Some(v @ Scalar::Int(i)) => i.checked_mul(1_000).ok_or_else(|| bad(v)),
            Some(v @ Scalar::UInt(u)) => i64::try_from(*u)
                .ok()
                .and_then(|i| i.checked_mul(1_000))
                .ok_or_else(|| bad(v)),
            Some(other) => Err(bad(other)),
        }
    }
}

/// Parses an RFC 3339 time (`2025-03-03T14:30:01.83915973Z`, `+05:30`
/// offsets, 0 to 9 fractional digits or more) into microseconds since the
/// epoch, UTC. Digits finer than a microsecond are truncated, as
/// `chrono`'s `timestamp_micros` and the Kafka JSON decoder do, so the same
/// instant gets the same key whichever path read it.
///
/// Hand-written because every trade of a busy feed carries one: it does no
/// allocation and no locale or format-string work.
pub(crate) fn rfc3339_us(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in b.get(r)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let year = digits(0..4)?;
    let month = digits(5..7)?;
    let day = digits(8..10)?;
    let hour = digits(11..13)?;
    let minute = digits(14..16)?;
    let second = digits(17..19)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return None;
        }
        for _ in n..6 {
            micros *= 10;
        }
    }
    let offset_s = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = digits(i + 1..i + 3)?;
            let m = digits(i + 4..i + 6)?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_s;
    Some(secs * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A frame or message as text for a reject record, cut to a bounded length
/// so that one huge poison frame cannot blow up the dead-letter sink.
pub(crate) fn record_text(bytes: &[u8]) -> String {
    const MAX: usize = 4096;
    let cut = &bytes[..bytes.len().min(MAX)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > MAX {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_agrees_with_chrono_to_the_microsecond() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for _ in 0..5000 {
            let ts_ns: i64 = rng.random_range(0..4_102_444_800_000_000_000);
            let t = chrono::DateTime::from_timestamp_nanos(ts_ns);
            for fmt in [
                chrono::SecondsFormat::Secs,
                chrono::SecondsFormat::Millis,
                chrono::SecondsFormat::Micros,
                chrono::SecondsFormat::Nanos,
                chrono::SecondsFormat::AutoSi,
            ] {
                let s = t.to_rfc3339_opts(fmt, true);
                let want = chrono::DateTime::parse_from_rfc3339(&s)
                    .unwrap()
                    .timestamp_micros();
                assert_eq!(rfc3339_us(&s), Some(want), "{s}");
            }
            let offset = t
                .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, false);
            assert_eq!(rfc3339_us(&offset), Some(t.timestamp_micros()), "{offset}");
        }
    }

    #[test]
    fn rfc3339_takes_0_to_9_digits_and_truncates() {
        let base = 1_741_012_201_000_000; // 2025-03-03T14:30:01Z
        for (s, want) in [
            ("2025-03-03T14:30:01Z", base),
            ("2025-03-03T14:30:01.2Z", base + 200_000),
            ("2025-03-03T14:30:01.208Z", base + 208_000),
            ("2025-03-03T14:30:01.83915973Z", base + 839_159),
            ("2025-03-03T14:30:01.123456789Z", base + 123_456),
            ("2025-03-03T14:30:01.999999999Z", base + 999_999),
            ("2025-03-03T09:30:01.5-05:00", base + 500_000),
        ] {
            assert_eq!(rfc3339_us(s), Some(want), "{s}");
        }
        for bad in [
            "",
            "2025-03-03",
            "2025-03-03T14:30:01",
            "2025-03-03T14:30:01.Z",
            "2025-02-30T14:30:01Z",
            "2025-03-03T24:30:01Z",
            "2025-03-03T14:30:01Zjunk",
            "2025/03/03T14:30:01Z",
            "2025-03-03T14:30:01+0530",
            "2025-03-03T14:30:01.12a4Z",
        ] {
            assert_eq!(rfc3339_us(bad), None, "{bad}");
        }
    }

    #[test]
    fn frames_split_into_messages_or_fail_whole() {
        let mut spans = Vec::new();
        let frame = br#" [{"T":"t","c":["@", "]"]}, {"T":"q"} ,{}] "#;
        split_frame(frame, &mut spans).unwrap();
        let parts: Vec<&str> = spans
            .iter()
            .map(|&(a, b)| std::str::from_utf8(&frame[a..b]).unwrap())
            .collect();
        assert_eq!(parts, [r#"{"T":"t","c":["@", "]"]}"#, r#"{"T":"q"}"#, "{}"]);
        split_frame(br#"{"type":"ping"}"#, &mut spans).unwrap();
        assert_eq!(spans, [(0, 15)]);
        for bad in [
            &b"[{\"T\":\"t\"},{\"T\":"[..],
            &b""[..],
            &b"42"[..],
            &b"[1] x"[..],
            &b"{\"a\":1"[..],
        ] {
            let err = split_frame(bad, &mut spans).unwrap_err();
            assert!(spans.is_empty(), "{err}");
            assert!(err.contains("JSON") || err.contains("empty"), "{err}");
        }
    }

    #[test]
    fn objects_walk_into_slots() {
        fn idx(k: &str) -> Option<usize> {
            ["S", "p", "i", "c"].iter().position(|x| *x == k)
        }
        let mut slots: Slots<'_, 4> = Default::default();
        walk_object(
            r#"{"S":"M\u0026M","p":1.5,"i":18446744073709551615,"c":["a"],"zz":{"x":[1]}}"#,
            idx,
            &mut slots,
        )
        .unwrap();
        assert_eq!(field::str(&slots[0], "S").unwrap(), "M&M");
        assert_eq!(field::num(&slots[1], "p").unwrap(), 1.5);
        assert_eq!(field::opt_u64(&slots[2], "i").unwrap(), Some(u64::MAX));
        assert_eq!(slots[3], Some(Scalar::Array));
        let err = field::num(&slots[0], "S").unwrap_err();
        assert!(err.detail.contains("`S`") && err.detail.contains("a number"));
        assert!(walk_object("[1]", idx, &mut slots).is_err());
        assert!(walk_object(r#"{"S":1} x"#, idx, &mut slots).is_err());
    }
}
