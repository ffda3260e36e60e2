//! The `rolling_*` window UDFs: exact statistics over a trailing event-time
//! window, `rolling_std(x, ts, INTERVAL '5 minutes') OVER (PARTITION BY
//! symbol ORDER BY ts)`.
//!
//! Each one is a [`Kernel`] driven by [`frame::run`](super::frame::run). What
//! each kernel keeps, and why its value depends only on the rows inside the
//! window:
//!
//! - count: an integer counter.
//! - sum, mean: an [`ExactSum`] of the values (exact under add and retract,
//!   rounded canonically), the number of values, the number of non-finite
//!   values (any ⇒ NaN).
//! - var, std, zscore: exact `S = Σx` and `Q = Σx²` (squares split by
//!   [`two_prod`](super::two_prod)). The numerator `n·Q − S²` is formed
//!   **exactly** from the partials of both sums (products of partials through
//!   `two_prod`, summed in a scratch [`ExactSum`]) and rounded once: it is a
//!   function of the exact reals `n`, `S`, `Q` only, hence canonical, and it
//!   has no cancellation error at all, so prices near 1000 with noise of 1e-6
//!   keep full precision (this is better than the double-double route: no
//!   error term at all before the final rounding).
//!   `var = round(n·Q − S²) / (n·(n − 1))`; the z-score numerator `n·x − S`
//!   is exact before its single rounding too.
//! - min, max: a monotonic deque of row indices; the deque at any row is the
//!   chain of strict suffix minima (maxima) of the window, a function of the
//!   window's rows.
//! - first: a pointer to the first non-NULL row of the window.
//! - vwap: exact `Σ price·volume` and `Σ volume`.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, PrimitiveBuilder};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::logical_expr::function::{
    ExpressionArgs, PartitionEvaluatorArgs, WindowUDFFieldArgs,
};
use datafusion::logical_expr::{PartitionEvaluator, Signature, Volatility, WindowUDFImpl};
use datafusion::physical_expr::PhysicalExpr;

use super::exact_sum::{two_prod, ExactSum, MOMENT_LIMIT, MOMENT_TINY, SUM_LIMIT};
use super::frame::{self, Kernel, Src, TsColumn};

/// Which statistic a rolling UDF computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Count,
    Sum,
    Mean,
    Var,
    Std,
    Zscore,
    Min,
    Max,
    First,
    Vwap,
}

impl Kind {
    /// Number of value columns before `ts`.
    pub(crate) fn values(self) -> usize {
        if self == Kind::Vwap {
            2
        } else {
            1
        }
    }

    fn usage(self, name: &str) -> String {
        let values = if self == Kind::Vwap {
            "price, volume"
        } else {
            "x"
        };
        format!("{name}({values}, ts, INTERVAL '5 minutes') OVER (PARTITION BY symbol ORDER BY ts)")
    }
}

/// The kind of a `rolling_*` function from its SQL name, with the name as a
/// static string; `None` for any other name.
pub(crate) fn kind_of(name: &str) -> Option<(Kind, &'static str)> {
    let kinds = [
        Kind::Count,
        Kind::Sum,
        Kind::Mean,
        Kind::Var,
        Kind::Std,
        Kind::Zscore,
        Kind::Min,
        Kind::Max,
        Kind::First,
        Kind::Vwap,
    ];
    super::ROLLING_UDF_NAMES
        .iter()
        .zip(kinds)
        .find(|(n, _)| **n == name)
        .map(|(n, k)| (k, *n))
}

fn coerce(kind: Kind, name: &str, types: &[DataType]) -> Result<Vec<DataType>> {
    let k = kind.values();
    if types.len() != k + 2 {
        return plan_err!(
            "{name} takes {} arguments, got {}: write {}",
            k + 2,
            types.len(),
            kind.usage(name)
        );
    }
    let what = ["price", "volume"];
    let mut out = Vec::with_capacity(k + 2);
    for (i, t) in types[..k].iter().enumerate() {
        let label = if kind == Kind::Vwap { what[i] } else { "x" };
        out.push(frame::coerce_value(name, label, t)?);
    }
    let (ts, width) = frame::coerce_ts_width(name, &types[k], &types[k + 1])?;
    out.push(ts);
    out.push(width);
    Ok(out)
}

fn expressions(kind: Kind, args: ExpressionArgs) -> Vec<Arc<dyn PhysicalExpr>> {
    // Only the columns: the width literal would otherwise be expanded to a
    // full-length array for every batch.
    args.input_exprs()
        .iter()
        .take(kind.values() + 1)
        .cloned()
        .collect()
}

fn field(kind: Kind, args: WindowUDFFieldArgs) -> Result<FieldRef> {
    let t = if kind == Kind::Count {
        DataType::Int64
    } else {
        DataType::Float64
    };
    Ok(Arc::new(Field::new(args.name(), t, true)))
}

fn evaluator(
    kind: Kind,
    name: &'static str,
    args: PartitionEvaluatorArgs,
) -> Result<Box<dyn PartitionEvaluator>> {
    let k = kind.values();
    let width = frame::width_in_ts_units(name, &args, k, k + 1)?;
    Ok(Box::new(RollingEvaluator { kind, name, width }))
}

/// One partition evaluator for every rolling kind: dispatches once per
/// partition to a monomorphic kernel.
#[derive(Debug)]
struct RollingEvaluator {
    kind: Kind,
    name: &'static str,
    /// Window width in the unit of `ts`.
    width: i64,
}

/// A Float64 column with its validity.
#[derive(Clone, Copy)]
pub(crate) struct Values<'a> {
    v: &'a [f64],
    nulls: Option<&'a NullBuffer>,
}

impl<'a> Values<'a> {
    pub(crate) fn new(name: &str, array: &'a ArrayRef) -> Result<Self> {
        match array.as_primitive_opt::<Float64Type>() {
            Some(a) => Ok(Self {
                v: a.values(),
                nulls: a.nulls(),
            }),
            None => exec_err!(
                "{name}: expected a Float64 value column, got {}",
                array.data_type()
            ),
        }
    }

    #[inline]
    pub(crate) fn get(&self, j: usize) -> Option<f64> {
        match self.nulls {
            Some(n) if n.is_null(j) => None,
            _ => Some(self.v[j]),
        }
    }
}

/// A partition's value columns (the second only for VWAP), as a kernel
/// reads them in batch.
#[derive(Clone, Copy)]
struct Cols<'a>(Values<'a>, Option<Values<'a>>);

impl Src for Cols<'_> {
    #[inline]
    fn get(&self, col: usize, j: usize) -> Option<f64> {
        if col == 0 {
            self.0.get(j)
        } else {
            self.1.and_then(|v| v.get(j))
        }
    }
}

/// A fresh kernel of each kind: the state of an empty window. Batch runs
/// one per partition; streaming keeps one per partition for good.
pub(crate) enum AnyKernel {
    Count(CountKernel),
    Sum(SumKernel),
    Moment(MomentKernel),
    MinMax(MinMaxKernel),
    First(FirstKernel),
    Vwap(VwapKernel),
}

impl AnyKernel {
    pub(crate) fn new(kind: Kind) -> Self {
        match kind {
            Kind::Count => AnyKernel::Count(CountKernel { n: 0 }),
            Kind::Sum | Kind::Mean => AnyKernel::Sum(SumKernel {
                s: ExactSum::new(),
                n: 0,
                bad: 0,
                mean: kind == Kind::Mean,
            }),
            Kind::Var | Kind::Std | Kind::Zscore => AnyKernel::Moment(MomentKernel {
                s: ExactSum::new(),
                q: ExactSum::new(),
                scratch: ExactSum::new(),
                n: 0,
                bad: 0,
                kind,
            }),
            Kind::Min | Kind::Max => AnyKernel::MinMax(MinMaxKernel {
                deque: VecDeque::new(),
                nan: 0,
                max: kind == Kind::Max,
            }),
            Kind::First => AnyKernel::First(FirstKernel {
                lo: 0,
                hi: 0,
                first: 0,
            }),
            Kind::Vwap => AnyKernel::Vwap(VwapKernel {
                num: ExactSum::new(),
                den: ExactSum::new(),
                n: 0,
                bad: 0,
            }),
        }
    }

    /// Heap bytes the kernel holds beyond its own size.
    pub(crate) fn heap_bytes(&self) -> usize {
        let bytes = |s: &ExactSum| std::mem::size_of_val(s.partials());
        match self {
            AnyKernel::Count(_) | AnyKernel::First(_) => 0,
            AnyKernel::Sum(k) => bytes(&k.s),
            AnyKernel::Moment(k) => bytes(&k.s) + bytes(&k.q),
            AnyKernel::MinMax(k) => k.deque.capacity() * std::mem::size_of::<(usize, f64)>(),
            AnyKernel::Vwap(k) => bytes(&k.num) + bytes(&k.den),
        }
    }
}

impl PartitionEvaluator for RollingEvaluator {
    /// The width argument is the frame: DataFusion's `OVER` frame is
    /// ignored, and `evaluate_all` gets the whole sorted partition (measured
    /// 20× faster than per-row `evaluate` over a RANGE frame, TOOLING.md).
    fn uses_window_frame(&self) -> bool {
        false
    }

    fn supports_bounded_execution(&self) -> bool {
        false
    }

    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let name = self.name;
        let k = self.kind.values();
        if values.len() != k + 1 {
            return exec_err!(
                "{name}: expected {} input columns, got {}",
                k + 1,
                values.len()
            );
        }
        let ts = TsColumn::new(name, &values[k])?;
        if ts.values.len() != num_rows {
            return exec_err!("{name}: {num_rows} rows but {} timestamps", ts.values.len());
        }
        let x = Values::new(name, &values[0])?;
        let second = if k == 2 {
            Some(Values::new(name, &values[1])?)
        } else {
            None
        };
        let cols = Cols(x, second);
        let w = self.width;
        match AnyKernel::new(self.kind) {
            AnyKernel::Count(kernel) => frame::run(name, &ts, w, &cols, kernel),
            AnyKernel::Sum(kernel) => frame::run(name, &ts, w, &cols, kernel),
            AnyKernel::Moment(kernel) => frame::run(name, &ts, w, &cols, kernel),
            AnyKernel::MinMax(kernel) => frame::run(name, &ts, w, &cols, kernel),
            AnyKernel::First(kernel) => frame::run(name, &ts, w, &cols, kernel),
            AnyKernel::Vwap(kernel) => frame::run(name, &ts, w, &cols, kernel),
        }
    }
}

fn append_n<T: arrow::datatypes::ArrowPrimitiveType>(
    out: &mut PrimitiveBuilder<T>,
    value: Option<T::Native>,
    n: usize,
) {
    match value {
        Some(v) => out.append_value_n(v, n),
        None => out.append_nulls(n),
    }
}

pub(crate) struct CountKernel {
    n: i64,
}

impl Kernel for CountKernel {
    type Out = Int64Type;

    fn push<S: Src>(&mut self, x: &S, j: usize) {
        if x.get(0, j).is_some() {
            self.n += 1;
        }
    }

    fn pop<S: Src>(&mut self, x: &S, j: usize) {
        if x.get(0, j).is_some() {
            self.n -= 1;
        }
    }

    fn emit<S: Src>(&mut self, _: &S, rows: Range<usize>, out: &mut PrimitiveBuilder<Int64Type>) {
        out.append_value_n(self.n, rows.len());
    }
}

/// The value a plain sum takes, `None` for non-finite or beyond
/// [`SUM_LIMIT`].
#[inline]
fn sum_value(v: f64) -> Option<f64> {
    (v.abs() <= SUM_LIMIT).then_some(v)
}

pub(crate) struct SumKernel {
    s: ExactSum,
    n: i64,
    bad: i64,
    mean: bool,
}

impl Kernel for SumKernel {
    type Out = Float64Type;

    fn push<S: Src>(&mut self, x: &S, j: usize) {
        match x.get(0, j).map(sum_value) {
            Some(Some(v)) => {
                self.s.add(v);
                self.n += 1;
            }
            Some(None) => self.bad += 1,
            None => {}
        }
    }

    fn pop<S: Src>(&mut self, x: &S, j: usize) {
        match x.get(0, j).map(sum_value) {
            Some(Some(v)) => {
                self.s.add(-v);
                self.n -= 1;
            }
            Some(None) => self.bad -= 1,
            None => {}
        }
    }

    fn emit<S: Src>(&mut self, _: &S, rows: Range<usize>, out: &mut PrimitiveBuilder<Float64Type>) {
        let value = if self.bad > 0 {
            Some(f64::NAN)
        } else if self.n == 0 {
            None
        } else if self.mean {
            Some(self.s.round() / self.n as f64)
        } else {
            Some(self.s.round())
        };
        append_n(out, value, rows.len());
    }
}

/// The value the moment accumulators take: `None` for non-finite or beyond
/// [`MOMENT_LIMIT`], zero below [`MOMENT_TINY`].
#[inline]
fn moment_value(v: f64) -> Option<f64> {
    let a = v.abs();
    if a <= MOMENT_LIMIT {
        Some(if a < MOMENT_TINY { 0.0 } else { v })
    } else {
        None
    }
}

pub(crate) struct MomentKernel {
    /// Σx, exact.
    s: ExactSum,
    /// Σx², exact.
    q: ExactSum,
    scratch: ExactSum,
    n: i64,
    bad: i64,
    kind: Kind,
}

impl MomentKernel {
    /// `n·Σx² − (Σx)²` (= n · M2), computed exactly and rounded once.
    fn n_m2(&mut self) -> f64 {
        let (nf, s, q) = (self.n as f64, self.s.partials(), self.q.partials());
        n_m2_filtered(nf, s, q).unwrap_or_else(|| n_m2_exact(nf, s, q, &mut self.scratch))
    }

    /// `n·x − Σx`, computed exactly and rounded once.
    fn n_dev(&mut self, x: f64) -> f64 {
        let scratch = &mut self.scratch;
        scratch.clear();
        scratch.add_product(self.n as f64, x);
        for &s in self.s.partials() {
            scratch.add(-s);
        }
        scratch.round()
    }
}

/// Calls `f(a, b)` for each product `a·b` whose exact sum is `n·Q − S²`,
/// given the partials of `S` and `Q`.
#[inline]
fn n_m2_products(nf: f64, s: &[f64], q: &[f64], mut f: impl FnMut(f64, f64)) {
    for &qi in q {
        f(nf, qi);
    }
    for (i, &a) in s.iter().enumerate() {
        f(-a, a);
        for &b in &s[i + 1..] {
            // 2·a·b: the doubling is exact.
            f(-2.0 * a, b);
        }
    }
}

/// `n·Q − S²` summed exactly in `scratch` and rounded once.
fn n_m2_exact(nf: f64, s: &[f64], q: &[f64], scratch: &mut ExactSum) -> f64 {
    scratch.clear();
    n_m2_products(nf, s, q, |a, b| scratch.add_product(a, b));
    scratch.round()
}

/// Most terms [`n_m2_filtered`] handles (more partials: the exact route).
const FILTER_TERMS: usize = 64;

/// `a + b` and its rounding error, exactly (Knuth's TwoSum).
#[inline]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// `n·Q − S²` correctly rounded, from the partials of `S` and `Q`, when a
/// cheap evaluation can prove which double that is; `None` otherwise (the
/// caller then takes the exact route, which gives the same double).
///
/// The exact value is the sum of a few exact products (`two_prod` halves).
/// Summing them with TwoSum gives `σ` plus the exact rounding errors `eᵢ`;
/// their float sum `c` is within `γ·Σ|eᵢ|` of theirs (`γ ≤ 2·m·u` taken with
/// a margin), so the exact value lies within `|r_err| + γ·Σ|eᵢ|` of
/// `r = fl(σ + c)`, `r_err` being that last addition's exact error. When
/// that is under half the gap below `r` (the smaller of its two gaps), the
/// exact value rounds to `r` and to nothing else (no tie): the result is the
/// correctly rounded exact value either way, so it stays a function of the
/// window's rows.
#[inline]
fn n_m2_filtered(nf: f64, s: &[f64], q: &[f64]) -> Option<f64> {
    let pairs = s.len() * (s.len() + 1) / 2;
    if 2 * (q.len() + pairs) > FILTER_TERMS || (q.is_empty() && s.is_empty()) {
        return None;
    }
    let mut terms = [0.0f64; FILTER_TERMS];
    let mut m = 0;
    n_m2_products(nf, s, q, |a, b| {
        let (p, e) = two_prod(a, b);
        terms[m] = p;
        terms[m + 1] = e;
        m += 2;
    });
    let (mut sigma, mut c, mut abs_e) = (terms[0], 0.0f64, 0.0f64);
    for &t in &terms[1..m] {
        let (hi, lo) = two_sum(sigma, t);
        sigma = hi;
        c += lo;
        abs_e += lo.abs();
    }
    let (r, r_err) = two_sum(sigma, c);
    if r == 0.0 || !r.is_finite() || !abs_e.is_finite() || !r_err.is_finite() {
        return None;
    }
    let bound = 2.0 * (m as f64) * f64::EPSILON * abs_e;
    let a = r.abs();
    let gap_below = a - f64::from_bits(a.to_bits() - 1);
    // `r_err` is exact; the margin on `bound` covers the rounding of the
    // subtraction (exact by Sterbenz when `r_err` is near half the gap).
    let room = 0.5 * gap_below - r_err.abs();
    (room > 0.0 && bound * 1.01 < room).then_some(r)
}

impl Kernel for MomentKernel {
    type Out = Float64Type;

    fn push<S: Src>(&mut self, x: &S, j: usize) {
        match x.get(0, j).map(moment_value) {
            Some(Some(v)) => {
                self.s.add(v);
                self.q.add_product(v, v);
                self.n += 1;
            }
            Some(None) => self.bad += 1,
            None => {}
        }
    }

    fn pop<S: Src>(&mut self, x: &S, j: usize) {
        match x.get(0, j).map(moment_value) {
            Some(Some(v)) => {
                self.s.add(-v);
                self.q.add_product(-v, v);
                self.n -= 1;
            }
            Some(None) => self.bad -= 1,
            None => {}
        }
    }

    fn emit<S: Src>(&mut self, x: &S, rows: Range<usize>, out: &mut PrimitiveBuilder<Float64Type>) {
        let defined = self.n + self.bad >= 2;
        if !defined {
            return out.append_nulls(rows.len());
        }
        if self.bad > 0 {
            if self.kind == Kind::Zscore {
                for i in rows {
                    out.append_option(x.get(0, i).map(|_| f64::NAN));
                }
            } else {
                out.append_value_n(f64::NAN, rows.len());
            }
            return;
        }
        let nf = self.n as f64;
        let n_m2 = self.n_m2();
        let var = n_m2 / (nf * (nf - 1.0));
        match self.kind {
            Kind::Var => out.append_value_n(var, rows.len()),
            Kind::Std => out.append_value_n(var.sqrt(), rows.len()),
            _ => {
                if n_m2 == 0.0 {
                    return out.append_nulls(rows.len());
                }
                let den = nf * var.sqrt();
                for i in rows {
                    match x.get(0, i).and_then(moment_value) {
                        Some(x) => out.append_value(self.n_dev(x) / den),
                        None => out.append_null(),
                    }
                }
            }
        }
    }
}

pub(crate) struct MinMaxKernel {
    /// Rows of the window (with their values) whose value is strictly below
    /// (above, for max) every later value of the window; the front is the
    /// extreme.
    deque: VecDeque<(usize, f64)>,
    nan: i64,
    max: bool,
}

impl Kernel for MinMaxKernel {
    type Out = Float64Type;

    fn push<S: Src>(&mut self, x: &S, j: usize) {
        let Some(v) = x.get(0, j) else { return };
        if v.is_nan() {
            self.nan += 1;
            return;
        }
        while let Some(&(_, bv)) = self.deque.back() {
            if (self.max && bv <= v) || (!self.max && bv >= v) {
                self.deque.pop_back();
            } else {
                break;
            }
        }
        self.deque.push_back((j, v));
    }

    fn pop<S: Src>(&mut self, x: &S, j: usize) {
        let Some(v) = x.get(0, j) else { return };
        if v.is_nan() {
            self.nan -= 1;
        } else if self.deque.front().is_some_and(|&(f, _)| f == j) {
            self.deque.pop_front();
        }
    }

    fn emit<S: Src>(&mut self, _: &S, rows: Range<usize>, out: &mut PrimitiveBuilder<Float64Type>) {
        let value = if self.nan > 0 {
            Some(f64::NAN)
        } else {
            self.deque.front().map(|&(_, v)| v)
        };
        append_n(out, value, rows.len());
    }
}

pub(crate) struct FirstKernel {
    lo: usize,
    hi: usize,
    /// No non-NULL row in `lo..first`.
    first: usize,
}

impl Kernel for FirstKernel {
    type Out = Float64Type;

    fn push<S: Src>(&mut self, _: &S, j: usize) {
        self.hi = j + 1;
    }

    fn pop<S: Src>(&mut self, _: &S, j: usize) {
        self.lo = j + 1;
    }

    fn emit<S: Src>(&mut self, x: &S, rows: Range<usize>, out: &mut PrimitiveBuilder<Float64Type>) {
        self.first = self.first.max(self.lo);
        while self.first < self.hi && x.get(0, self.first).is_none() {
            self.first += 1;
        }
        let value = if self.first < self.hi {
            x.get(0, self.first)
        } else {
            None
        };
        append_n(out, value, rows.len());
    }
}

pub(crate) struct VwapKernel {
    /// Σ price·volume, exact.
    num: ExactSum,
    /// Σ volume, exact.
    den: ExactSum,
    n: i64,
    bad: i64,
}

impl VwapKernel {
    /// `None` when either is NULL, `Some(None)` when either is not a number
    /// the accumulators take.
    #[inline]
    fn pair<S: Src>(x: &S, j: usize) -> Option<Option<(f64, f64)>> {
        let p = x.get(0, j)?;
        let v = x.get(1, j)?;
        Some(moment_value(p).zip(moment_value(v)))
    }
}

impl Kernel for VwapKernel {
    type Out = Float64Type;

    fn push<S: Src>(&mut self, x: &S, j: usize) {
        match Self::pair(x, j) {
            Some(Some((p, v))) => {
                self.num.add_product(p, v);
                self.den.add(v);
                self.n += 1;
            }
            Some(None) => self.bad += 1,
            None => {}
        }
    }

    fn pop<S: Src>(&mut self, x: &S, j: usize) {
        match Self::pair(x, j) {
            Some(Some((p, v))) => {
                self.num.add_product(-p, v);
                self.den.add(-v);
                self.n -= 1;
            }
            Some(None) => self.bad -= 1,
            None => {}
        }
    }

    fn emit<S: Src>(&mut self, _: &S, rows: Range<usize>, out: &mut PrimitiveBuilder<Float64Type>) {
        let value = if self.bad > 0 {
            Some(f64::NAN)
        } else if self.n == 0 || self.den.is_zero() {
            None
        } else {
            Some(self.num.round() / self.den.round())
        };
        append_n(out, value, rows.len());
    }
}

macro_rules! rolling_udf {
    ($(#[$doc:meta])* $ty:ident, $sql:literal, $kind:expr) => {
        $(#[$doc])*
        #[derive(Debug, PartialEq, Eq, Hash)]
        pub struct $ty {
            signature: Signature,
        }

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $ty {
            /// The UDF, ready to register.
            pub fn new() -> Self {
                Self {
                    signature: Signature::user_defined(Volatility::Immutable),
                }
            }
        }

        impl WindowUDFImpl for $ty {
            fn name(&self) -> &str {
                $sql
            }

            fn signature(&self) -> &Signature {
                &self.signature
            }

            fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
                coerce($kind, $sql, arg_types)
            }

            fn expressions(&self, expr_args: ExpressionArgs) -> Vec<Arc<dyn PhysicalExpr>> {
                expressions($kind, expr_args)
            }

            fn partition_evaluator(
                &self,
                args: PartitionEvaluatorArgs,
            ) -> Result<Box<dyn PartitionEvaluator>> {
                evaluator($kind, $sql, args)
            }

            fn field(&self, field_args: WindowUDFFieldArgs) -> Result<FieldRef> {
                field($kind, field_args)
            }
        }
    };
}

rolling_udf!(
    /// `rolling_count(x, ts, width)`: the number of non-NULL `x` among the
    /// rows of the partition with `ts` in `[ts − width, ts]` (`BIGINT`).
    ///
    /// ```sql
    /// SELECT rolling_count(price, ts, INTERVAL '5 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) FROM ticks
    /// ```
    RollingCountUdf,
    "rolling_count",
    Kind::Count
);

rolling_udf!(
    /// `rolling_sum(x, ts, width)`: the correctly rounded exact sum of the
    /// non-NULL `x` in `[ts − width, ts]`; NULL when there are none, NaN when
    /// one is NaN or infinite.
    ///
    /// ```sql
    /// SELECT rolling_sum(volume, ts, INTERVAL '1 minute')
    ///        OVER (PARTITION BY symbol ORDER BY ts) FROM ticks
    /// ```
    RollingSumUdf,
    "rolling_sum",
    Kind::Sum
);

rolling_udf!(
    /// `rolling_mean(x, ts, width)`: the exact sum (correctly rounded) over
    /// the count of the non-NULL `x` in `[ts − width, ts]`; NULL when there
    /// are none, NaN when one is NaN or infinite.
    ///
    /// ```sql
    /// SELECT rolling_mean(price, ts, INTERVAL '30 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) FROM ticks
    /// ```
    RollingMeanUdf,
    "rolling_mean",
    Kind::Mean
);

rolling_udf!(
    /// `rolling_var(x, ts, width)`: the sample variance (`n − 1`) of the
    /// non-NULL `x` in `[ts − width, ts]`; NULL with fewer than two, NaN when
    /// one is NaN or infinite.
    ///
    /// ```sql
    /// SELECT rolling_var(price, ts, INTERVAL '5 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) FROM ticks
    /// ```
    RollingVarUdf,
    "rolling_var",
    Kind::Var
);

rolling_udf!(
    /// `rolling_std(x, ts, width)`: the sample standard deviation (`n − 1`)
    /// of the non-NULL `x` in `[ts − width, ts]`; NULL with fewer than two,
    /// NaN when one is NaN or infinite.
    ///
    /// ```sql
    /// SELECT rolling_std(price, ts, INTERVAL '5 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) AS vol_5m FROM ticks
    /// ```
    RollingStdUdf,
    "rolling_std",
    Kind::Std
);

rolling_udf!(
    /// `rolling_zscore(x, ts, width)`: `(x − mean) / std` of the current row
    /// against the non-NULL `x` in `[ts − width, ts]` (the current row
    /// included, sample std). NULL when `x` is NULL, with fewer than two
    /// values or when the std is zero; NaN when a value is NaN or infinite.
    ///
    /// ```sql
    /// SELECT rolling_zscore(price, ts, INTERVAL '30 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) AS price_z_30m FROM ticks
    /// ```
    RollingZscoreUdf,
    "rolling_zscore",
    Kind::Zscore
);

rolling_udf!(
    /// `rolling_min(x, ts, width)`: the smallest non-NULL `x` in
    /// `[ts − width, ts]`; NULL when there is none, NaN when one is NaN.
    ///
    /// ```sql
    /// SELECT rolling_min(price, ts, INTERVAL '5 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) FROM ticks
    /// ```
    RollingMinUdf,
    "rolling_min",
    Kind::Min
);

rolling_udf!(
    /// `rolling_max(x, ts, width)`: the largest non-NULL `x` in
    /// `[ts − width, ts]`; NULL when there is none, NaN when one is NaN.
    ///
    /// ```sql
    /// SELECT rolling_max(price, ts, INTERVAL '5 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) FROM ticks
    /// ```
    RollingMaxUdf,
    "rolling_max",
    Kind::Max
);

rolling_udf!(
    /// `rolling_first(x, ts, width)`: `x` of the earliest row of the window
    /// `[ts − width, ts]` whose `x` is not NULL (earliest by position in the
    /// partition sorted by the `ORDER BY`: add a tie-breaker such as
    /// `ORDER BY ts, seq` when peers can differ). NULL when there is none.
    ///
    /// ```sql
    /// SELECT price / rolling_first(price, ts, INTERVAL '5 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) - 1 AS ret_5m FROM ticks
    /// ```
    RollingFirstUdf,
    "rolling_first",
    Kind::First
);

rolling_udf!(
    /// `rolling_vwap(price, volume, ts, width)`: `Σ price·volume / Σ volume`
    /// over the rows of `[ts − width, ts]` where both are non-NULL, both sums
    /// exact; NULL when there are none or `Σ volume` is exactly zero, NaN
    /// when a price or volume is NaN or infinite.
    ///
    /// ```sql
    /// SELECT rolling_vwap(price, size, ts, INTERVAL '5 minutes')
    ///        OVER (PARTITION BY symbol ORDER BY ts) AS vwap_5m FROM trades
    /// ```
    RollingVwapUdf,
    "rolling_vwap",
    Kind::Vwap
);

#[cfg(test)]
mod tests {
    use super::super::exact_sum::two_prod;
    use super::*;

    /// The filtered evaluation, whenever it answers, gives the exact
    /// route's double, on windows of prices with tiny noise (heavy
    /// cancellation), returns, volumes and mixed magnitudes.
    #[test]
    fn filtered_n_m2_agrees_with_the_exact_route() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let (mut answered, mut total) = ([0; 5], [0; 5]);
        for case in 0..25_000 {
            let n = 2 + (rand() * 40.0) as usize;
            let xs: Vec<f64> = (0..n)
                .map(|_| match case % 5 {
                    0 => 1000.0 + (rand() - 0.5) * 1e-6,
                    1 => (rand() - 0.5) * 1e-3,
                    2 => (rand() * 1e6).round(),
                    3 => 100.0 + (rand() - 0.5) * 0.5,
                    _ => (rand() - 0.5) * 10f64.powi((rand() * 20.0) as i32 - 10),
                })
                .collect();
            let (mut s, mut q, mut scratch) = (ExactSum::new(), ExactSum::new(), ExactSum::new());
            for &x in &xs {
                s.add(x);
                q.add_product(x, x);
            }
            let (nf, sp) = (n as f64, s.partials());
            let exact = n_m2_exact(nf, sp, q.partials(), &mut scratch);
            total[case % 5] += 1;
            if let Some(fast) = n_m2_filtered(nf, sp, q.partials()) {
                answered[case % 5] += 1;
                assert_eq!(fast.to_bits(), exact.to_bits(), "case {case}: {xs:?}");
            }
        }
        // The filter is only worth having if it usually answers on real
        // data; prices with noise of a billionth of their level (kind 0)
        // cancel too much, values spread over 20 orders of magnitude (kind
        // 4) often have too many partials: both take the exact route.
        for (kind, share) in [(1, 0.9), (2, 0.9), (3, 0.9), (4, 0.8)] {
            assert!(
                answered[kind] as f64 > share * total[kind] as f64,
                "kind {kind}: answered {answered:?} of {total:?}"
            );
        }
    }

    #[test]
    fn n_m2_has_no_cancellation_error() {
        // 1000 + k·1e-6: a naive Σx² − (Σx)²/n loses ~12 digits here.
        let xs: Vec<f64> = (0..5).map(|k| 1000.0 + k as f64 * 1e-6).collect();
        let arr: ArrayRef = Arc::new(arrow::array::Float64Array::from(xs.clone()));
        let cols = Cols(Values::new("t", &arr).unwrap(), None);
        let mut k = MomentKernel {
            s: ExactSum::new(),
            q: ExactSum::new(),
            scratch: ExactSum::new(),
            n: 0,
            bad: 0,
            kind: Kind::Var,
        };
        for j in 0..xs.len() {
            k.push(&cols, j);
        }
        let mean = xs.iter().sum::<f64>() / 5.0;
        let two_pass: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / 4.0;
        let var = k.n_m2() / 20.0;
        assert!(
            (var - two_pass).abs() <= 1e-9 * two_pass,
            "{var} vs {two_pass}"
        );
    }

    #[test]
    fn moment_range() {
        assert_eq!(moment_value(1e-200), Some(0.0));
        assert_eq!(moment_value(f64::NAN), None);
        assert_eq!(moment_value(f64::INFINITY), None);
        assert_eq!(moment_value(1e200), None);
        assert_eq!(moment_value(-3.5), Some(-3.5));
        assert_eq!(sum_value(1e300), None);
        assert_eq!(sum_value(f64::NAN), None);
        assert_eq!(two_prod(3.0, 4.0), (12.0, 0.0));
    }
}
