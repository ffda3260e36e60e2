//! Text arguments (time zones, `HH:MM` times) that may be constants or
//! columns, such as a time zone joined from the `symbols` table: parsed once
//! per distinct run of values, not once per row.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::ColumnarValue;

/// One text argument of a scalar UDF call, parsed into `T`.
pub(crate) enum TextArg<T> {
    /// The same value for every row (`None`: a NULL constant).
    Constant(Option<T>),
    /// One value per row.
    Column {
        values: ArrayRef,
        /// The last row's text and its parse: consecutive rows of one
        /// symbol share their zone, so this hits almost always.
        last: Option<(String, T)>,
    },
}

impl<T: Clone> TextArg<T> {
    /// Reads argument `i` of `args`; a constant that does not parse is a
    /// plan error naming `udf` and `what`.
    pub(crate) fn new(
        args: &[ColumnarValue],
        i: usize,
        udf: &str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Self> {
        match args.get(i) {
            Some(ColumnarValue::Scalar(s)) => {
                let text = match s {
                    ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v) => {
                        v.clone()
                    }
                    other => return plan_err!("{udf}: {what} must be text, not {other:?}"),
                };
                match text {
                    None => Ok(TextArg::Constant(None)),
                    Some(t) => match parse(&t) {
                        Some(v) => Ok(TextArg::Constant(Some(v))),
                        None => plan_err!("{udf}: {what} {t:?} is not valid"),
                    },
                }
            }
            Some(ColumnarValue::Array(a)) => {
                let values = arrow::compute::cast(a, &DataType::Utf8)?;
                Ok(TextArg::Column { values, last: None })
            }
            None => exec_err!("{udf}: missing argument {what}"),
        }
    }

    /// The parsed value of row `row` (`None` for NULL); a value that does
    /// not parse is an error naming it.
    pub(crate) fn get(
        &mut self,
        row: usize,
        udf: &str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        match self {
            TextArg::Constant(v) => Ok(v.clone()),
            TextArg::Column { values, last } => {
                let strings = values.as_string::<i32>();
                if strings.is_null(row) {
                    return Ok(None);
                }
                let text = strings.value(row);
                if let Some((t, v)) = last {
                    if t == text {
                        return Ok(Some(v.clone()));
                    }
                }
                match parse(text) {
                    Some(v) => {
                        *last = Some((text.to_owned(), v.clone()));
                        Ok(Some(v))
                    }
                    None => exec_err!("{udf}: {what} {text:?} (row {row}) is not valid"),
                }
            }
        }
    }
}

/// Argument types for a call `(timestamp, text, text, ...)`: the timestamp
/// as µs UTC, every text as `Utf8` (so `Utf8View` columns and `NULL`s fit).
pub(crate) fn coerce_ts_and_text(
    udf: &str,
    arg_types: &[DataType],
    n: usize,
) -> Result<Vec<DataType>> {
    if arg_types.len() != n {
        return plan_err!("{udf} takes {n} arguments, got {}", arg_types.len());
    }
    let mut out = vec![crate::TS_TYPE.clone()];
    for t in &arg_types[1..] {
        match t {
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
                out.push(DataType::Utf8)
            }
            other => {
                return plan_err!("{udf}: expected text arguments after the timestamp, got {other}")
            }
        }
    }
    Ok(out)
}

/// Parses an IANA zone name.
pub(crate) fn parse_zone(s: &str) -> Option<chrono_tz::Tz> {
    s.parse().ok()
}

/// Parses `HH:MM`.
pub(crate) fn parse_hhmm(s: &str) -> Option<chrono::NaiveTime> {
    chrono::NaiveTime::parse_from_str(s, "%H:%M").ok()
}
