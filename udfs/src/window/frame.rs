//! The event-time window shared by every `rolling_*` UDF: argument parsing
//! (the `ts` column and the literal width) and the two-pointer pass.
//!
//! DataFusion hands a window UDF one partition (one symbol) at a time, its
//! rows sorted by the `ORDER BY`. [`run`] walks them once with two pointers:
//! the upper one adds every row with `ts <= ts[i]` (all peers of row `i`, so
//! rows with equal `ts` share one window), the lower one retracts every row
//! with `ts < ts[i] − width`. A [`Kernel`] sees each row pushed once and
//! popped once, in row order, and is asked for the value of each group of
//! peers. The window of row `i` is therefore exactly the rows of its
//! partition with `ts` in `[ts[i] − width, ts[i]]`, whatever came before.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveBuilder};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, IntervalDayTime, IntervalMonthDayNano, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::PhysicalExpr;

/// The values of a window's rows, by row index: a partition's columns in
/// batch ([`run`]), or the rows a streaming state still holds
/// ([`RollingState`](super::incremental::RollingState)). Column 0 is the
/// value (`price` for VWAP), column 1 the `volume` of VWAP.
pub(crate) trait Src {
    /// Column `col` of row `j`; `None` for NULL.
    fn get(&self, col: usize, j: usize) -> Option<f64>;
}

/// What a rolling function keeps about the rows inside its window.
///
/// [`run`] calls `push(j)` when row `j` enters the window and `pop(j)` when it
/// leaves, both in increasing `j`, and `emit` once per group of peers; each
/// reads row values from the [`Src`] it is given, which holds at least the
/// rows of the window.
pub(crate) trait Kernel {
    /// The Arrow type of the output column.
    type Out: ArrowPrimitiveType;
    /// Row `j` enters the window.
    fn push<S: Src>(&mut self, x: &S, j: usize);
    /// Row `j` (the oldest in the window) leaves it.
    fn pop<S: Src>(&mut self, x: &S, j: usize);
    /// Appends the value of each row of `rows` (peers sharing the current
    /// window) to `out`.
    fn emit<S: Src>(&mut self, x: &S, rows: Range<usize>, out: &mut PrimitiveBuilder<Self::Out>);
}

/// A `ts` column as raw `i64` in its own unit, with its validity.
pub(crate) struct TsColumn<'a> {
    pub values: &'a [i64],
    pub nulls: Option<&'a NullBuffer>,
}

impl<'a> TsColumn<'a> {
    /// Borrows a timestamp array of any unit.
    pub fn new(name: &str, array: &'a ArrayRef) -> Result<Self> {
        let (values, nulls): (&[i64], _) = match array.data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => {
                let a = array.as_primitive::<TimestampSecondType>();
                (a.values(), a.nulls())
            }
            DataType::Timestamp(TimeUnit::Millisecond, _) => {
                let a = array.as_primitive::<TimestampMillisecondType>();
                (a.values(), a.nulls())
            }
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                let a = array.as_primitive::<TimestampMicrosecondType>();
                (a.values(), a.nulls())
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                let a = array.as_primitive::<TimestampNanosecondType>();
                (a.values(), a.nulls())
            }
            other => return exec_err!("{name}: `ts` must be a TIMESTAMP, got {other}"),
        };
        Ok(Self { values, nulls })
    }

    fn is_valid(&self, i: usize) -> bool {
        self.nulls.is_none_or(|n| n.is_valid(i))
    }
}

/// Runs `kernel` over one partition sorted by `ts`; `width` is in the unit of
/// `ts`. Rows with a NULL `ts` (sorted first or last) belong to no window and
/// get NULL.
pub(crate) fn run<K: Kernel, S: Src>(
    name: &str,
    ts: &TsColumn<'_>,
    width: i64,
    x: &S,
    mut kernel: K,
) -> Result<ArrayRef> {
    let n = ts.values.len();
    let mut out = PrimitiveBuilder::<K::Out>::with_capacity(n);
    let start = (0..n).find(|&i| ts.is_valid(i)).unwrap_or(n);
    let end = (start..n)
        .rev()
        .find(|&i| ts.is_valid(i))
        .map_or(start, |i| i + 1);
    let t = &ts.values[start..end];
    if ts.nulls.is_some() && (start..end).any(|i| !ts.is_valid(i)) {
        return exec_err!(
            "{name}: NULL `ts` between non-NULL ones: rows must reach the function sorted by `ts`; \
             call it as {name}(..) OVER (PARTITION BY symbol ORDER BY ts)"
        );
    }
    if t.windows(2).any(|w| w[0] > w[1]) {
        return exec_err!(
            "{name}: rows reach the function out of `ts` order; \
             call it as {name}(..) OVER (PARTITION BY symbol ORDER BY ts) (ascending)"
        );
    }
    out.append_nulls(start);
    let (mut lo, mut hi, mut i) = (start, start, start);
    while i < end {
        let now = ts.values[i];
        let mut group_end = i + 1;
        while group_end < end && ts.values[group_end] == now {
            group_end += 1;
        }
        while hi < group_end {
            kernel.push(x, hi);
            hi += 1;
        }
        let lower = now.saturating_sub(width);
        while ts.values[lo] < lower {
            kernel.pop(x, lo);
            lo += 1;
        }
        kernel.emit(x, i..group_end, &mut out);
        i = group_end;
    }
    out.append_nulls(n - end);
    Ok(Arc::new(out.finish()))
}

/// Nanoseconds in one unit of `ts`.
pub(crate) fn nanos_per_unit(unit: TimeUnit) -> i128 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// The width of a window in nanoseconds, from its literal.
///
/// Months and days are refused: their length depends on the calendar (and a
/// day on daylight saving time), which a fixed event-time span cannot honour.
pub(crate) fn width_nanos(name: &str, value: &ScalarValue) -> Result<i128> {
    let nanos = match value {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano {
            months,
            days,
            nanoseconds,
        })) => {
            if *months != 0 || *days != 0 {
                return plan_err!(
                    "{name}: the width {value} has a month or day part, whose length depends on \
                     the calendar; write it in hours or minutes, e.g. INTERVAL '24 hours'"
                );
            }
            *nanoseconds as i128
        }
        ScalarValue::IntervalDayTime(Some(IntervalDayTime { days, milliseconds })) => {
            if *days != 0 {
                return plan_err!(
                    "{name}: the width {value} has a day part, whose length depends on the \
                     calendar; write it in hours or minutes, e.g. INTERVAL '24 hours'"
                );
            }
            *milliseconds as i128 * 1_000_000
        }
        other => {
            return plan_err!(
            "{name}: the width must be a literal INTERVAL, e.g. INTERVAL '5 minutes', got {other}"
        )
        }
    };
    if nanos < 0 {
        return plan_err!("{name}: the width {value} is negative; write e.g. INTERVAL '5 minutes'");
    }
    Ok(nanos)
}

/// The literal value of argument `index`, or a plan error naming it.
pub(crate) fn literal_arg<'a>(
    name: &str,
    exprs: &'a [Arc<dyn PhysicalExpr>],
    index: usize,
    what: &str,
) -> Result<&'a ScalarValue> {
    let Some(expr) = exprs.get(index) else {
        return plan_err!("{name}: missing argument {} ({what})", index + 1);
    };
    match expr.downcast_ref::<Literal>() {
        Some(lit) => Ok(lit.value()),
        None => plan_err!(
            "{name}: argument {} ({what}) must be a literal, got {expr}",
            index + 1
        ),
    }
}

/// The width literal at `index`, converted to the unit of the `ts` argument
/// at `ts_index`.
pub(crate) fn width_in_ts_units(
    name: &str,
    args: &datafusion::logical_expr::function::PartitionEvaluatorArgs<'_>,
    ts_index: usize,
    width_index: usize,
) -> Result<i64> {
    let value = literal_arg(
        name,
        args.input_exprs(),
        width_index,
        "the window width, e.g. INTERVAL '5 minutes'",
    )?;
    let nanos = width_nanos(name, value)?;
    let unit = match args.input_fields().get(ts_index).map(|f| f.data_type()) {
        Some(DataType::Timestamp(unit, _)) => *unit,
        Some(other) => return plan_err!("{name}: `ts` must be a TIMESTAMP, got {other}"),
        None => return plan_err!("{name}: missing the `ts` argument"),
    };
    // A row at integer `t` is inside when t >= ts − width / unit, that is
    // t >= ts − floor(width / unit).
    let units = nanos / nanos_per_unit(unit);
    Ok(i64::try_from(units).unwrap_or(i64::MAX))
}

/// Shared `coerce_types` part: `ts` must be a timestamp (kept as is), the
/// width an interval (kept as is).
pub(crate) fn coerce_ts_width(
    name: &str,
    ts: &DataType,
    width: &DataType,
) -> Result<(DataType, DataType)> {
    let ts = match ts {
        DataType::Timestamp(_, _) => ts.clone(),
        other => {
            return plan_err!(
                "{name}: `ts` must be a TIMESTAMP, got {other}; cast it, e.g. CAST(ts AS TIMESTAMP)"
            )
        }
    };
    let width = match width {
        DataType::Interval(_) => width.clone(),
        other => {
            return plan_err!(
                "{name}: the width must be an INTERVAL, e.g. INTERVAL '5 minutes', got {other}"
            )
        }
    };
    Ok((ts, width))
}

/// Shared `coerce_types` part for a value argument: any number becomes
/// `Float64`.
pub(crate) fn coerce_value(name: &str, what: &str, t: &DataType) -> Result<DataType> {
    if t.is_numeric() || t.is_null() {
        Ok(DataType::Float64)
    } else {
        plan_err!("{name}: `{what}` must be a number, got {t}")
    }
}
