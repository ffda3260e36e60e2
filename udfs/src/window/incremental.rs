//! The window functions of this module as state that lives on between
//! calls: what a streaming executor keeps per partition (per symbol) so that
//! each new row costs the same as in batch, whatever the history held.
//!
//! A [`RollingState`] runs the very kernels the `rolling_*` UDFs run in
//! batch (`rolling.rs`), over a ring of the rows still inside the window; an
//! [`EwmState`] runs `ewm_zscore`'s row function over the last `max_ticks`
//! values. Since every value these functions produce depends only on the
//! rows of its window (see the parity promise in the parent module), a state
//! advanced row by row gives the same bits as a batch over any stretch of
//! history that covers the window.
//!
//! ```
//! use arrow::array::{Array, Float64Array};
//! use arrow::datatypes::{DataType, IntervalMonthDayNano, TimeUnit};
//! use datafusion::common::ScalarValue;
//! use stockanomaly_udfs::window::RollingFn;
//!
//! let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
//! let one_second = ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 0, 1_000_000_000)));
//! let f = RollingFn::new("rolling_sum", &one_second, &ts_type).unwrap().unwrap();
//! let mut state = f.state();
//! let mut out = f.output(4);
//! // Two calls, each with whole groups of peers: the second sees the first's rows.
//! let x = Float64Array::from(vec![1.0, 2.0, 4.0, 8.0]);
//! state.advance(&f, &[0, 500_000], &[&x.slice(0, 2)], 0..2, &mut out).unwrap();
//! state.advance(&f, &[1_200_000, 3_000_000], &[&x.slice(2, 2)], 0..2, &mut out).unwrap();
//! let sums = out.finish();
//! let sums = sums.as_any().downcast_ref::<Float64Array>().unwrap();
//! assert_eq!(sums.values().to_vec(), vec![1.0, 3.0, 6.0, 8.0]);
//! ```

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Float64Builder, Int64Builder, PrimitiveBuilder};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{exec_err, internal_err, plan_err, Result, ScalarValue};

use super::ewm::EwmZscoreEvaluator;
use super::frame::{self, Kernel, Src};
use super::rolling::{kind_of, AnyKernel, Kind};

/// A planned call of one of the `rolling_*` functions: which statistic, over
/// how wide a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollingFn {
    kind: Kind,
    name: &'static str,
    /// Window width in the unit of `ts`.
    width: i64,
}

impl RollingFn {
    /// The call `name(x, ts, width)` (`rolling_vwap(price, volume, ts,
    /// width)`) with `ts` of type `ts`; `Ok(None)` when `name` is not one of
    /// the `rolling_*` functions, `Err` for a width the UDF would refuse.
    pub fn new(name: &str, width: &ScalarValue, ts: &DataType) -> Result<Option<Self>> {
        let Some((kind, name)) = kind_of(name) else {
            return Ok(None);
        };
        let unit = match ts {
            DataType::Timestamp(unit, _) => *unit,
            other => return plan_err!("{name}: `ts` must be a TIMESTAMP, got {other}"),
        };
        let nanos = frame::width_nanos(name, width)?;
        let units = nanos / frame::nanos_per_unit(unit);
        Ok(Some(Self {
            kind,
            name,
            width: i64::try_from(units).unwrap_or(i64::MAX),
        }))
    }

    /// The SQL name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The window width, in the unit of `ts`.
    pub fn width(&self) -> i64 {
        self.width
    }

    /// How many value columns come before `ts` (2 for `rolling_vwap`).
    pub fn value_columns(&self) -> usize {
        self.kind.values()
    }

    /// The output type: `Int64` for `rolling_count`, `Float64` otherwise.
    pub fn output_type(&self) -> DataType {
        if self.kind == Kind::Count {
            DataType::Int64
        } else {
            DataType::Float64
        }
    }

    /// The state of an empty partition.
    pub fn state(&self) -> RollingState {
        RollingState {
            kernel: AnyKernel::new(self.kind),
            rows: Ring::new(self.kind.values()),
        }
    }

    /// A builder for `capacity` output values.
    pub fn output(&self, capacity: usize) -> RollingOut {
        if self.kind == Kind::Count {
            RollingOut::Int64(Int64Builder::with_capacity(capacity))
        } else {
            RollingOut::Float64(Float64Builder::with_capacity(capacity))
        }
    }
}

/// Output values of a [`RollingFn`], typed as its [`RollingFn::output_type`].
#[derive(Debug)]
pub enum RollingOut {
    /// `rolling_count`.
    Int64(Int64Builder),
    /// Every other function.
    Float64(Float64Builder),
}

impl RollingOut {
    /// Appends `n` NULLs (rows this call does not compute).
    pub fn append_nulls(&mut self, n: usize) {
        match self {
            RollingOut::Int64(b) => b.append_nulls(n),
            RollingOut::Float64(b) => b.append_nulls(n),
        }
    }

    /// The values appended so far.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            RollingOut::Int64(b) => Arc::new(b.finish()),
            RollingOut::Float64(b) => Arc::new(b.finish()),
        }
    }
}

/// The rows a state still holds: those inside the window, with their `ts`
/// and values, numbered by their position in the partition since it began.
///
/// Contiguous vectors rather than deques: the kernels read a value per push,
/// pop and emit, and a slice index is cheaper than a deque's wrap-around.
/// Rows that left the window stay in place (`front` moves past them) until
/// they are half as many as the live ones: compaction then moves each row
/// O(1) times, and the vectors hold at most 1.5 windows (a deque's
/// power-of-two capacity holds up to 2).
#[derive(Debug, Clone)]
struct Ring {
    /// Partition row number of index 0 of the vectors.
    base: usize,
    /// Index of the oldest row still held; those before it left the window.
    front: usize,
    ts: Vec<i64>,
    /// Per value column, the values (0.0 for NULL) and whether each is valid.
    values: Vec<(Vec<f64>, Vec<bool>)>,
}

/// Rows that left the window kept before a compaction, at least: small
/// rings would otherwise move their few rows on every call.
const MIN_COMPACT: usize = 64;

impl Ring {
    fn new(columns: usize) -> Self {
        Self {
            base: 0,
            front: 0,
            ts: Vec::new(),
            values: (0..columns).map(|_| Default::default()).collect(),
        }
    }

    /// Partition row number of the next row to come.
    fn next(&self) -> usize {
        self.base + self.ts.len()
    }

    /// Partition row number of the oldest row held.
    fn oldest(&self) -> usize {
        self.base + self.front
    }

    /// Rows held.
    fn held(&self) -> usize {
        self.ts.len() - self.front
    }

    /// Lets go of the rows before partition row `lo`.
    fn pop_until(&mut self, lo: usize) {
        self.front = self.front.max(lo - self.base);
    }

    /// Drops the rows that left the window once they are half as many as
    /// those held.
    fn compact(&mut self) {
        let dead = self.front;
        if dead < MIN_COMPACT || 2 * dead < self.held() {
            return;
        }
        self.ts.drain(..dead);
        for (v, ok) in &mut self.values {
            v.drain(..dead);
            ok.drain(..dead);
        }
        self.base += dead;
        self.front = 0;
    }

    /// Appends the partition's next rows `rows` of `ts` and `values` (one
    /// array per ring column), refusing rows out of `ts` order or a group of
    /// peers split from rows already held. Returns the partition row numbers
    /// they got.
    fn append(
        &mut self,
        name: &str,
        ts: &[i64],
        values: &[&Float64Array],
        rows: Range<usize>,
    ) -> Result<Range<usize>> {
        if values.len() != self.values.len() {
            return internal_err!(
                "{name}: {} value columns given, {} expected",
                values.len(),
                self.values.len()
            );
        }
        let new = &ts[rows.clone()];
        if new.windows(2).any(|w| w[0] > w[1]) {
            return exec_err!("{name}: rows reach the state out of `ts` order");
        }
        if let (Some(&last), Some(&first)) = (self.ts[self.front..].last(), new.first()) {
            if first <= last {
                return exec_err!(
                    "{name}: a row at ts {first} reaches the state after one at ts {last}: \
                     a group of peers was split, or rows came out of order"
                );
            }
        }
        self.compact();
        let start = self.next();
        self.ts.extend_from_slice(new);
        for (col, (v, ok)) in values.iter().zip(&mut self.values) {
            let raw = &col.values()[rows.clone()];
            v.extend_from_slice(raw);
            match col.nulls() {
                Some(n) => ok.extend(rows.clone().map(|i| n.is_valid(i))),
                None => ok.extend(std::iter::repeat_n(true, raw.len())),
            }
        }
        Ok(start..self.next())
    }

    /// The view of ring columns `cols` (a function's value columns, in order).
    fn view(&self, cols: &[usize]) -> Cols<'_> {
        let column = |c: Option<&usize>| match c.and_then(|&c| self.values.get(c)) {
            Some((v, ok)) => (v.as_slice(), ok.as_slice()),
            None => (&[][..], &[][..]),
        };
        Cols {
            base: self.base,
            oldest: self.oldest(),
            ts: &self.ts,
            cols: [column(cols.first()), column(cols.get(1))],
        }
    }

    fn heap_bytes(&self) -> usize {
        self.ts.capacity() * 8
            + self
                .values
                .iter()
                .map(|(v, ok)| v.capacity() * 8 + ok.capacity())
                .sum::<usize>()
    }
}

/// A rolling function's state over one partition: its kernel and the rows
/// of its window.
pub struct RollingState {
    kernel: AnyKernel,
    rows: Ring,
}

impl std::fmt::Debug for RollingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollingState")
            .field("held", &self.rows.held())
            .finish()
    }
}

impl RollingState {
    /// Takes the partition's next rows `rows` of `ts` and `values` (the
    /// function's value columns, [`RollingFn::value_columns`] of them) and
    /// appends one output value per row to `out`.
    ///
    /// The rows must be whole groups of peers, sorted by `ts`, all after the
    /// rows of earlier calls (`ts` strictly greater): a group is computed
    /// once it is complete, as in batch. `ts` must not be NULL.
    pub fn advance(
        &mut self,
        f: &RollingFn,
        ts: &[i64],
        values: &[&Float64Array],
        rows: Range<usize>,
        out: &mut RollingOut,
    ) -> Result<()> {
        let name = f.name;
        if rows.is_empty() {
            return Ok(());
        }
        let Range { start, end } = self.rows.append(name, ts, values, rows)?;
        let view = self.rows.view(&ALL_COLUMNS[..f.kind.values()]);
        let lo = walk_any(&mut self.kernel, &view, f, start, end, out)?;
        self.rows.pop_until(lo);
        Ok(())
    }

    /// Rows held (the window of the newest row).
    pub fn held(&self) -> usize {
        self.rows.held()
    }

    /// Bytes on the heap (the rows held and the kernel's sums).
    pub fn heap_bytes(&self) -> usize {
        self.rows.heap_bytes() + self.kernel.heap_bytes()
    }
}

/// Rolling functions of one width over one partition's `ts`, sharing one
/// ring of the rows inside their window: a feature file's calls `OVER w5m`
/// store each row once and let it go once, however many statistics read
/// it. Each function's kernel sees exactly the pushes, pops and emits it
/// would see alone, so the values are the same bits.
#[derive(Debug, Clone)]
pub struct RollingGroup {
    /// Per member, its function and the ring columns it reads (one per
    /// value column of the function, in order).
    members: Vec<(RollingFn, Vec<usize>)>,
    /// Distinct value columns held in the ring.
    columns: usize,
}

impl RollingGroup {
    /// A group of `members` (all of one width), each reading the given
    /// positions among `columns` distinct value columns.
    pub fn new(members: Vec<(RollingFn, Vec<usize>)>, columns: usize) -> Result<Self> {
        let Some(width) = members.first().map(|(f, _)| f.width) else {
            return internal_err!("a rolling group without members");
        };
        for (f, cols) in &members {
            if f.width != width {
                return internal_err!("{}: a rolling group mixes window widths", f.name);
            }
            if cols.len() != f.kind.values() || cols.iter().any(|&c| c >= columns) {
                return internal_err!("{}: value columns {cols:?} of {columns}", f.name);
            }
        }
        Ok(Self { members, columns })
    }

    /// The members, in order.
    pub fn functions(&self) -> impl Iterator<Item = &RollingFn> {
        self.members.iter().map(|(f, _)| f)
    }

    /// The state of an empty partition.
    pub fn state(&self) -> RollingGroupState {
        RollingGroupState {
            kernels: self
                .members
                .iter()
                .map(|(f, _)| AnyKernel::new(f.kind))
                .collect(),
            rows: Ring::new(self.columns),
        }
    }

    /// One output builder per member, for `capacity` values each.
    pub fn outputs(&self, capacity: usize) -> Vec<RollingOut> {
        self.members
            .iter()
            .map(|(f, _)| f.output(capacity))
            .collect()
    }
}

/// A [`RollingGroup`]'s state over one partition: its kernels and the rows
/// of their (common) window.
pub struct RollingGroupState {
    kernels: Vec<AnyKernel>,
    rows: Ring,
}

impl std::fmt::Debug for RollingGroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RollingGroupState")
            .field("kernels", &self.kernels.len())
            .field("held", &self.rows.held())
            .finish()
    }
}

/// A function's view of a ring: its value column `c` is `cols[c]`, and
/// partition row `j` is at index `j - base` of every slice.
struct Cols<'a> {
    base: usize,
    /// Partition row number of the oldest row held (the first in a kernel).
    oldest: usize,
    ts: &'a [i64],
    cols: [(&'a [f64], &'a [bool]); 2],
}

impl Cols<'_> {
    #[inline]
    fn ts(&self, j: usize) -> i64 {
        self.ts[j - self.base]
    }
}

impl Src for Cols<'_> {
    #[inline]
    fn get(&self, col: usize, j: usize) -> Option<f64> {
        let (v, ok) = self.cols[col];
        let i = j - self.base;
        ok[i].then(|| v[i])
    }
}

impl RollingGroupState {
    /// [`RollingState::advance`] for every member at once: `values` are the
    /// group's distinct value columns, `outs` the members' builders.
    pub fn advance(
        &mut self,
        g: &RollingGroup,
        ts: &[i64],
        values: &[&Float64Array],
        rows: Range<usize>,
        outs: &mut [RollingOut],
    ) -> Result<()> {
        if outs.len() != g.members.len() || self.kernels.len() != g.members.len() {
            return internal_err!(
                "a rolling group of {} given {} outputs",
                g.members.len(),
                outs.len()
            );
        }
        if rows.is_empty() {
            return Ok(());
        }
        let name = g.members[0].0.name;
        let Range { start, end } = self.rows.append(name, ts, values, rows)?;
        let mut lo = self.rows.oldest();
        for ((kernel, (f, cols)), out) in self.kernels.iter_mut().zip(&g.members).zip(outs) {
            let view = self.rows.view(cols);
            lo = walk_any(kernel, &view, f, start, end, out)?;
        }
        // Every member has the same width, so all left the same rows.
        self.rows.pop_until(lo);
        Ok(())
    }

    /// Rows held (the window of the newest row).
    pub fn held(&self) -> usize {
        self.rows.held()
    }

    /// Bytes on the heap (the rows held once, and every kernel's sums).
    pub fn heap_bytes(&self) -> usize {
        self.rows.heap_bytes()
            + self
                .kernels
                .iter()
                .map(AnyKernel::heap_bytes)
                .sum::<usize>()
    }
}

/// The ring columns of a function alone on its ring: its value columns.
const ALL_COLUMNS: [usize; 2] = [0, 1];

/// [`shared_walk`] for whichever kernel `f` runs; `Err` when the output
/// builder is not of the kernel's type.
fn walk_any(
    kernel: &mut AnyKernel,
    view: &Cols<'_>,
    f: &RollingFn,
    start: usize,
    end: usize,
    out: &mut RollingOut,
) -> Result<usize> {
    let w = f.width;
    Ok(match (kernel, out) {
        (AnyKernel::Count(k), RollingOut::Int64(o)) => shared_walk(k, view, w, start, end, o),
        (AnyKernel::Sum(k), RollingOut::Float64(o)) => shared_walk(k, view, w, start, end, o),
        (AnyKernel::Moment(k), RollingOut::Float64(o)) => shared_walk(k, view, w, start, end, o),
        (AnyKernel::MinMax(k), RollingOut::Float64(o)) => shared_walk(k, view, w, start, end, o),
        (AnyKernel::First(k), RollingOut::Float64(o)) => shared_walk(k, view, w, start, end, o),
        (AnyKernel::Vwap(k), RollingOut::Float64(o)) => shared_walk(k, view, w, start, end, o),
        _ => return internal_err!("{}: output builder of the wrong type", f.name),
    })
}

/// [`frame::run`]'s two-pointer walk over the rows `start..end` of a ring
/// (the rows before `start` being in the kernel already), which may be
/// shared with other kernels: rows leave this kernel but stay in the ring;
/// returns the first row still in the window.
fn shared_walk<K: Kernel>(
    k: &mut K,
    ring: &Cols<'_>,
    width: i64,
    start: usize,
    end: usize,
    out: &mut PrimitiveBuilder<K::Out>,
) -> usize {
    let mut lo = ring.oldest;
    let (mut hi, mut i) = (start, start);
    while i < end {
        let now = ring.ts(i);
        let mut group_end = i + 1;
        while group_end < end && ring.ts(group_end) == now {
            group_end += 1;
        }
        while hi < group_end {
            k.push(ring, hi);
            hi += 1;
        }
        let lower = now.saturating_sub(width);
        while ring.ts(lo) < lower {
            k.pop(ring, lo);
            lo += 1;
        }
        k.emit(ring, i..group_end, out);
        i = group_end;
    }
    lo
}

/// A planned call of `ewm_zscore(x, halflife_ticks, max_ticks)`.
#[derive(Debug, Clone)]
pub struct EwmFn {
    evaluator: EwmZscoreEvaluator,
}

impl EwmFn {
    /// The call with literals `halflife_ticks` and `max_ticks`; `Err` for
    /// values the UDF would refuse.
    pub fn new(halflife: &ScalarValue, max_ticks: &ScalarValue) -> Result<Self> {
        Ok(Self {
            evaluator: EwmZscoreEvaluator::new(halflife, max_ticks)?,
        })
    }

    /// The state of an empty partition.
    pub fn state(&self) -> EwmState {
        EwmState::default()
    }
}

/// `ewm_zscore`'s state over one partition: its last `max_ticks` values.
#[derive(Debug, Clone, Default)]
pub struct EwmState {
    values: Vec<f64>,
    valid: Vec<bool>,
    /// NULLs among `valid`.
    nulls: usize,
}

impl EwmState {
    /// Takes the partition's next rows `rows` of `x` and appends one output
    /// value per row to `out`, each from the `max_ticks` rows before it.
    pub fn advance(
        &mut self,
        f: &EwmFn,
        x: &Float64Array,
        rows: Range<usize>,
        out: &mut Float64Builder,
    ) -> Result<()> {
        let keep = f.evaluator.max_ticks();
        // Compacting only past twice the window keeps the cost per row
        // constant; rows older than `max_ticks` are never read.
        if self.values.len() > 2 * keep {
            let drop = self.values.len() - keep;
            self.nulls -= self.valid[..drop].iter().filter(|&&ok| !ok).count();
            self.values.drain(..drop);
            self.valid.drain(..drop);
        }
        let start = self.values.len();
        self.values.extend_from_slice(&x.values()[rows.clone()]);
        match x.nulls() {
            Some(n) => {
                let before = self.valid.len();
                self.valid.extend(rows.clone().map(|i| n.is_valid(i)));
                self.nulls += self.valid[before..].iter().filter(|&&ok| !ok).count();
            }
            None => self.valid.extend(std::iter::repeat_n(true, rows.len())),
        }
        let valid = &self.valid;
        f.evaluator.eval_rows(
            &self.values,
            |j| valid[j],
            self.nulls > 0,
            start..self.values.len(),
            out,
        );
        Ok(())
    }

    /// Bytes on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.values.capacity() * 8 + self.valid.capacity()
    }
}

/// The timestamp unit of a `ts` type, for callers converting widths.
pub fn ts_unit(ts: &DataType) -> Option<TimeUnit> {
    match ts {
        DataType::Timestamp(unit, _) => Some(*unit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type, IntervalMonthDayNano};
    use datafusion::logical_expr::function::PartitionEvaluatorArgs;

    fn width(secs: i64) -> ScalarValue {
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
            0,
            0,
            secs * 1_000_000_000,
        )))
    }

    fn ts_type() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    /// A partition with ties, NULLs, a NaN and gaps, its groups cut into
    /// calls at every possible place: every rolling function gives the
    /// batch UDF's bits.
    /// Rows of one partition: peers, NULLs, a NaN, equal values, gaps
    /// longer than the window; `ts` in µs and two value columns.
    fn fixture() -> (Vec<i64>, Float64Array, Float64Array) {
        let ts: Vec<i64> = vec![0, 0, 1, 3, 3, 3, 7, 8, 20, 21, 21, 40, 41, 43, 44, 60]
            .into_iter()
            .map(|s: i64| s * 1_000_000)
            .collect();
        let x = Float64Array::from(vec![
            Some(1000.000001),
            Some(1000.000002),
            None,
            Some(999.5),
            Some(1001.25),
            Some(1000.0),
            Some(f64::NAN),
            Some(1000.1),
            Some(3.0),
            None,
            Some(1e-3),
            Some(-2.5),
            Some(7.0),
            Some(7.0),
            Some(7.0),
            Some(8.0),
        ]);
        let y = Float64Array::from(vec![
            Some(1.0),
            Some(2.0),
            Some(3.0),
            None,
            Some(5.0),
            Some(6.0),
            Some(7.0),
            Some(8.0),
            Some(0.0),
            Some(1.5),
            Some(2.0),
            Some(3.0),
            Some(4.0),
            Some(5.0),
            Some(6.0),
            Some(7.0),
        ]);
        (ts, x, y)
    }

    #[test]
    fn any_split_into_calls_gives_the_batch_bits() {
        let (ts, x, y) = fixture();
        let n = ts.len();
        let ts_array: ArrayRef = Arc::new(
            arrow::array::TimestampMicrosecondArray::from(ts.clone()).with_timezone("UTC"),
        );
        // Group starts: cuts are allowed there only.
        let starts: Vec<usize> = (0..n).filter(|&i| i == 0 || ts[i] != ts[i - 1]).collect();
        for name in super::super::ROLLING_UDF_NAMES {
            let f = RollingFn::new(name, &width(5), &ts_type())
                .unwrap()
                .unwrap();
            let values: Vec<ArrayRef> = if f.value_columns() == 2 {
                vec![Arc::new(x.clone()), Arc::new(y.clone())]
            } else {
                vec![Arc::new(x.clone())]
            };
            let batch = batch_values(name, &values, &ts_array);
            for mask in 0..(1u32 << (starts.len() - 1)) {
                let mut cuts = vec![0];
                for (b, &s) in starts[1..].iter().enumerate() {
                    if mask & (1 << b) != 0 {
                        cuts.push(s);
                    }
                }
                cuts.push(n);
                let mut state = f.state();
                let mut out = f.output(n);
                let cols: Vec<&Float64Array> = values
                    .iter()
                    .map(|v| v.as_primitive::<Float64Type>())
                    .collect();
                for w in cuts.windows(2) {
                    state.advance(&f, &ts, &cols, w[0]..w[1], &mut out).unwrap();
                }
                let got = out.finish();
                assert_eq!(bits(&got), bits(&batch), "{name}, cuts {cuts:?}");
            }
        }
    }

    /// Every function in one group sharing a ring of two columns (the
    /// one-column ones on either), over every split: each member's bits are
    /// the batch UDF's.
    #[test]
    fn a_group_sharing_one_ring_gives_each_function_the_batch_bits() {
        let (ts, x, y) = fixture();
        let n = ts.len();
        let ts_array: ArrayRef = Arc::new(
            arrow::array::TimestampMicrosecondArray::from(ts.clone()).with_timezone("UTC"),
        );
        let columns: [ArrayRef; 2] = [Arc::new(x.clone()), Arc::new(y.clone())];
        let mut members = Vec::new();
        let mut want = Vec::new();
        for (k, name) in super::super::ROLLING_UDF_NAMES.iter().enumerate() {
            let f = RollingFn::new(name, &width(5), &ts_type())
                .unwrap()
                .unwrap();
            let cols: Vec<usize> = if f.value_columns() == 2 {
                vec![0, 1]
            } else {
                vec![k % 2]
            };
            let values: Vec<ArrayRef> = cols.iter().map(|&c| Arc::clone(&columns[c])).collect();
            want.push(bits(&batch_values(name, &values, &ts_array)));
            members.push((f, cols));
        }
        let g = RollingGroup::new(members, 2).unwrap();
        let starts: Vec<usize> = (0..n).filter(|&i| i == 0 || ts[i] != ts[i - 1]).collect();
        for mask in 0..(1u32 << (starts.len() - 1)) {
            let mut cuts = vec![0];
            for (b, &s) in starts[1..].iter().enumerate() {
                if mask & (1 << b) != 0 {
                    cuts.push(s);
                }
            }
            cuts.push(n);
            let mut state = g.state();
            let mut outs = g.outputs(n);
            for w in cuts.windows(2) {
                state
                    .advance(&g, &ts, &[&x, &y], w[0]..w[1], &mut outs)
                    .unwrap();
            }
            // The ring holds only the newest row's window (60 s alone).
            assert_eq!(state.held(), 1);
            for ((f, out), want) in g.functions().zip(&mut outs).zip(&want) {
                assert_eq!(&bits(&out.finish()), want, "{}, cuts {cuts:?}", f.name());
            }
        }
        let mixed = RollingGroup::new(
            vec![
                (
                    RollingFn::new("rolling_sum", &width(5), &ts_type())
                        .unwrap()
                        .unwrap(),
                    vec![0],
                ),
                (
                    RollingFn::new("rolling_sum", &width(6), &ts_type())
                        .unwrap()
                        .unwrap(),
                    vec![0],
                ),
            ],
            1,
        );
        assert!(mixed.is_err());
    }

    fn bits(a: &ArrayRef) -> Vec<Option<u64>> {
        (0..a.len())
            .map(|i| {
                (!a.is_null(i)).then(|| match a.data_type() {
                    DataType::Int64 => a.as_primitive::<Int64Type>().value(i) as u64,
                    _ => a.as_primitive::<Float64Type>().value(i).to_bits(),
                })
            })
            .collect()
    }

    /// The batch UDF over the whole partition.
    fn batch_values(name: &str, values: &[ArrayRef], ts: &ArrayRef) -> ArrayRef {
        use datafusion::logical_expr::WindowUDFImpl;
        use datafusion::physical_expr::expressions::{Column, Literal};
        use datafusion::physical_expr::PhysicalExpr;
        let udf: Box<dyn WindowUDFImpl> = match name {
            "rolling_count" => Box::new(super::super::RollingCountUdf::new()),
            "rolling_sum" => Box::new(super::super::RollingSumUdf::new()),
            "rolling_mean" => Box::new(super::super::RollingMeanUdf::new()),
            "rolling_var" => Box::new(super::super::RollingVarUdf::new()),
            "rolling_std" => Box::new(super::super::RollingStdUdf::new()),
            "rolling_zscore" => Box::new(super::super::RollingZscoreUdf::new()),
            "rolling_min" => Box::new(super::super::RollingMinUdf::new()),
            "rolling_max" => Box::new(super::super::RollingMaxUdf::new()),
            "rolling_first" => Box::new(super::super::RollingFirstUdf::new()),
            _ => Box::new(super::super::RollingVwapUdf::new()),
        };
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = (0..values.len())
            .map(|i| Arc::new(Column::new("x", i)) as Arc<dyn PhysicalExpr>)
            .collect();
        exprs.push(Arc::new(Column::new("ts", values.len())));
        exprs.push(Arc::new(Literal::new(width(5))));
        let mut fields: Vec<arrow::datatypes::FieldRef> = values
            .iter()
            .map(|_| Arc::new(arrow::datatypes::Field::new("x", DataType::Float64, true)))
            .collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            "ts",
            ts_type(),
            false,
        )));
        fields.push(Arc::new(arrow::datatypes::Field::new(
            "w",
            DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
            false,
        )));
        let args = PartitionEvaluatorArgs::new(&exprs, &fields, false, false);
        let mut ev = udf.partition_evaluator(args).unwrap();
        let mut cols = values.to_vec();
        cols.push(Arc::clone(ts));
        ev.evaluate_all(&cols, ts.len()).unwrap()
    }

    #[test]
    fn ewm_state_gives_the_batch_bits_over_long_partitions() {
        let f = EwmFn::new(&ScalarValue::Int64(Some(3)), &ScalarValue::Int64(Some(7))).unwrap();
        let mut seed = 7u64;
        let xs: Vec<Option<f64>> = (0..200)
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                match i % 37 {
                    5 => None,
                    11 => Some(f64::NAN),
                    _ => Some(100.0 + (seed >> 40) as f64 / 1e6),
                }
            })
            .collect();
        let x = Float64Array::from(xs);
        let mut batch = Float64Builder::new();
        f.evaluator
            .eval_rows(x.values(), |j| x.is_valid(j), true, 0..x.len(), &mut batch);
        let batch = batch.finish();
        for step in [1, 2, 5, 13, 200] {
            let mut state = f.state();
            let mut out = Float64Builder::new();
            let mut i = 0;
            while i < x.len() {
                let end = (i + step).min(x.len());
                state.advance(&f, &x, i..end, &mut out).unwrap();
                i = end;
            }
            let got = out.finish();
            let a: Vec<Option<u64>> = got.iter().map(|v| v.map(f64::to_bits)).collect();
            let b: Vec<Option<u64>> = batch.iter().map(|v| v.map(f64::to_bits)).collect();
            assert_eq!(a, b, "step {step}");
        }
    }

    #[test]
    fn a_split_group_is_refused() {
        let f = RollingFn::new("rolling_sum", &width(5), &ts_type())
            .unwrap()
            .unwrap();
        let mut state = f.state();
        let mut out = f.output(4);
        let x = Float64Array::from(vec![1.0, 2.0]);
        state.advance(&f, &[10, 10], &[&x], 0..1, &mut out).unwrap();
        let err = state
            .advance(&f, &[10, 10], &[&x], 1..2, &mut out)
            .unwrap_err();
        assert!(
            err.to_string().contains("group of peers was split"),
            "{err}"
        );
        assert!(RollingFn::new("lag", &width(5), &ts_type())
            .unwrap()
            .is_none());
    }
}
