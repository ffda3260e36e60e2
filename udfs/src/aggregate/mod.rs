//! Exact aggregate UDFs: `exact_sum(x)` and `exact_mean(x)`, whose result
//! depends only on the multiset of input values.
//!
//! ```sql
//! SELECT symbol, exact_sum(size) AS volume, exact_mean(price) AS mean_price
//! FROM trades
//! GROUP BY symbol
//! ```
//!
//! # What is guaranteed
//!
//! Over the non-NULL `x` of a group (NULLs are skipped):
//!
//! - none: NULL;
//! - a NaN, or both `+inf` and `-inf`: NaN; else an infinity: that infinity
//!   (what IEEE addition gives in any order);
//! - all finite: `exact_sum` is the **exact real sum rounded once** to the
//!   nearest double, ties to even (`±inf` when that rounding overflows, i.e.
//!   the exact sum reaches `2^1024 − 2^970` in magnitude; an exact zero is
//!   `+0.0`), and `exact_mean` is the **exact real `sum / count` rounded
//!   once** the same way (correctly rounded even where the sum alone would
//!   overflow, and for subnormal results).
//!
//! A correctly rounded value is unique, so both results are the same bits
//! whatever the row order, the batches, the partitions, `target_partitions`
//! or the plan's partial/final split. Plain `SUM` and `AVG` round at every
//! addition and do not have this property (`1e16 + 1.0 − 1e16` is `0.0` or
//! `1.0` depending on the order).
//!
//! Compared with the rolling UDFs: over finite values up to
//! [`SUM_LIMIT`](crate::window::SUM_LIMIT), `exact_sum` of a set of rows is
//! bit for bit `rolling_sum` over a window holding the same rows (both are
//! the correctly rounded exact sum). `rolling_mean` divides the *rounded* sum
//! by the count (two roundings) and can differ from `exact_mean` in the last
//! bit. The rolling UDFs give NaN for any non-finite value or one beyond
//! `SUM_LIMIT`; these aggregates take every double as above.
//!
//! # How
//!
//! The state of a group is the exact sum of its finite values as Shewchuk
//! partials ([`ExactSum`](crate::window::ExactSum); values beyond `2^960` in
//! a second, scaled one so nothing can overflow), the count, and counters of
//! NaN, `+inf` and `-inf`. Partial aggregates ship the partials as
//! `List<Float64>`; merging adds them exactly. Only the final rounding looks
//! at the represented real, so the partials themselves (which do depend on
//! the order) never leak into the result. Retraction is exact too, so both
//! also run as sliding window aggregates (`OVER (... ROWS BETWEEN ...)`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::utils::SingleRowListArrayBuilder;
use datafusion::common::{exec_err, not_impl_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::{format_state_name, AggregateOrderSensitivity};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ReversedUDAF, Signature, Volatility,
};

mod total;

pub use total::ExactTotal;

/// Every aggregate UDF of this module, ready to register.
///
/// ```
/// let ctx = datafusion::prelude::SessionContext::new();
/// for udaf in stockanomaly_udfs::aggregate::aggregate_udfs() {
///     ctx.register_udaf(udaf);
/// }
/// assert!(ctx.state().aggregate_functions().contains_key("exact_sum"));
/// assert!(ctx.state().aggregate_functions().contains_key("exact_mean"));
/// ```
pub fn aggregate_udfs() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(ExactSumUdf::new()),
        AggregateUDF::from(ExactMeanUdf::new()),
    ]
}

fn coerce(name: &str, types: &[DataType]) -> Result<Vec<DataType>> {
    match types {
        [t] if t.is_numeric() || t.is_null() => Ok(vec![DataType::Float64]),
        [t] => plan_err!("{name}: `x` must be a number, got {t}"),
        _ => plan_err!(
            "{name} takes 1 argument, got {}: write {name}(x)",
            types.len()
        ),
    }
}

/// The state columns, in the order of [`Accumulator::state`].
fn state_fields(name: &str) -> Vec<FieldRef> {
    let list = |what: &str| {
        Arc::new(Field::new_list(
            format_state_name(name, what),
            Field::new_list_field(DataType::Float64, true),
            true,
        ))
    };
    let int = |what: &str| {
        Arc::new(Field::new(
            format_state_name(name, what),
            DataType::Int64,
            true,
        ))
    };
    vec![
        list("partials"),
        list("big_partials"),
        int("count"),
        int("nan"),
        int("pos_inf"),
        int("neg_inf"),
    ]
}

/// The accumulator of both UDFs; `mean` picks the output.
#[derive(Debug)]
struct ExactAccumulator {
    name: &'static str,
    mean: bool,
    total: ExactTotal,
}

impl ExactAccumulator {
    fn values<'a>(&self, values: &'a [ArrayRef]) -> Result<&'a Float64Array> {
        let name = self.name;
        let [x] = values else {
            return exec_err!("{name}: expected 1 input column, got {}", values.len());
        };
        match x.as_primitive_opt::<Float64Type>() {
            Some(x) => Ok(x),
            None => exec_err!("{name}: expected a Float64 column, got {}", x.data_type()),
        }
    }

    /// Applies `f` to every non-NULL value.
    fn each(x: &Float64Array, mut f: impl FnMut(f64)) {
        let v = x.values();
        match x.nulls() {
            Some(nulls) => nulls.valid_indices().for_each(|i| f(v[i])),
            None => v.iter().for_each(|&x| f(x)),
        }
    }

    /// Adds the partials of every non-NULL list of `lists` to `sum`.
    fn merge_partials(
        name: &str,
        lists: &ArrayRef,
        sum: &mut crate::window::ExactSum,
    ) -> Result<()> {
        let Some(lists) = lists.as_list_opt::<i32>() else {
            return exec_err!("{name}: bad partials state {}", lists.data_type());
        };
        for i in 0..lists.len() {
            if lists.is_null(i) {
                continue;
            }
            let list = lists.value(i);
            let Some(partials) = list.as_primitive_opt::<Float64Type>() else {
                return exec_err!("{name}: bad partials state {}", list.data_type());
            };
            for p in partials.iter().flatten() {
                if !p.is_finite() {
                    return exec_err!("{name}: non-finite partial {p} in state");
                }
                sum.add(p);
            }
        }
        Ok(())
    }

    /// The sum of the non-NULL values of an Int64 state column.
    fn merge_count(name: &str, counts: &ArrayRef) -> Result<i64> {
        let Some(counts) = counts.as_primitive_opt::<Int64Type>() else {
            return exec_err!("{name}: bad count state {}", counts.data_type());
        };
        Ok(counts.iter().flatten().sum())
    }
}

fn partials_scalar(partials: &[f64]) -> ScalarValue {
    SingleRowListArrayBuilder::new(Arc::new(Float64Array::from(partials.to_vec())))
        .build_list_scalar()
}

impl Accumulator for ExactAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let x = self.values(values)?;
        let total = &mut self.total;
        Self::each(x, |v| total.add(v));
        Ok(())
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let x = self.values(values)?;
        let total = &mut self.total;
        Self::each(x, |v| total.retract(v));
        Ok(())
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(if self.mean {
            self.total.mean()
        } else {
            self.total.sum()
        }))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.total.heap_size()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let t = &self.total;
        Ok(vec![
            partials_scalar(t.small.partials()),
            partials_scalar(t.big.partials()),
            ScalarValue::Int64(Some(t.count)),
            ScalarValue::Int64(Some(t.nan)),
            ScalarValue::Int64(Some(t.pos_inf)),
            ScalarValue::Int64(Some(t.neg_inf)),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let name = self.name;
        let [small, big, count, nan, pos_inf, neg_inf] = states else {
            return exec_err!("{name}: expected 6 state columns, got {}", states.len());
        };
        let t = &mut self.total;
        Self::merge_partials(name, small, &mut t.small)?;
        Self::merge_partials(name, big, &mut t.big)?;
        t.count += Self::merge_count(name, count)?;
        t.nan += Self::merge_count(name, nan)?;
        t.pos_inf += Self::merge_count(name, pos_inf)?;
        t.neg_inf += Self::merge_count(name, neg_inf)?;
        Ok(())
    }
}

macro_rules! exact_udaf {
    ($(#[$doc:meta])* $ty:ident, $sql:literal, $mean:expr) => {
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
            ///
            /// ```
            #[doc = concat!("use stockanomaly_udfs::", stringify!($ty), ";")]
            /// use datafusion::logical_expr::AggregateUDF;
            ///
            /// let ctx = datafusion::prelude::SessionContext::new();
            #[doc = concat!("ctx.register_udaf(AggregateUDF::from(", stringify!($ty), "::new()));")]
            #[doc = concat!("assert!(ctx.state().aggregate_functions().contains_key(\"", $sql, "\"));")]
            /// ```
            pub fn new() -> Self {
                Self {
                    signature: Signature::user_defined(Volatility::Immutable),
                }
            }
        }

        impl AggregateUDFImpl for $ty {
            fn name(&self) -> &str {
                $sql
            }

            fn signature(&self) -> &Signature {
                &self.signature
            }

            fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
                coerce($sql, arg_types)
            }

            fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
                Ok(DataType::Float64)
            }

            fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
                if acc_args.is_distinct {
                    return not_impl_err!("{}(DISTINCT x) is not supported", $sql);
                }
                Ok(Box::new(ExactAccumulator {
                    name: $sql,
                    mean: $mean,
                    total: ExactTotal::new(),
                }))
            }

            fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
                Ok(state_fields(args.name))
            }

            fn order_sensitivity(&self) -> AggregateOrderSensitivity {
                AggregateOrderSensitivity::Insensitive
            }

            fn reverse_expr(&self) -> ReversedUDAF {
                ReversedUDAF::Identical
            }
        }
    };
}

exact_udaf!(
    /// `exact_sum(x)`: the exact sum of the non-NULL `x`, correctly rounded
    /// (to nearest, ties to even); NULL when there are none, NaN or `±inf`
    /// as IEEE addition when one is not finite (details in the
    /// [module docs](crate::aggregate)). The same bits whatever the row
    /// order and the partitioning.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use datafusion::arrow::array::{Array, AsArray, Float64Array, StringArray};
    /// use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema};
    /// use datafusion::arrow::record_batch::RecordBatch;
    /// use datafusion::datasource::MemTable;
    /// use datafusion::prelude::SessionContext;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let schema = Arc::new(Schema::new(vec![
    ///     Field::new("symbol", DataType::Utf8, false),
    ///     Field::new("x", DataType::Float64, true),
    /// ]));
    /// let batch = RecordBatch::try_new(
    ///     schema.clone(),
    ///     vec![
    ///         Arc::new(StringArray::from(vec!["A", "A", "A", "B"])),
    ///         Arc::new(Float64Array::from(vec![Some(1e16), Some(1.0), Some(-1e16), None])),
    ///     ],
    /// )
    /// .unwrap();
    /// let ctx = SessionContext::new();
    /// stockanomaly_udfs::register_all(&ctx);
    /// let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
    /// ctx.register_table("t", Arc::new(table)).unwrap();
    /// let out = ctx
    ///     .sql("SELECT symbol, exact_sum(x) FROM t GROUP BY symbol ORDER BY symbol")
    ///     .await
    ///     .unwrap()
    ///     .collect()
    ///     .await
    ///     .unwrap();
    /// let sums = out[0].column(1).as_primitive::<Float64Type>();
    /// assert_eq!(sums.value(0), 1.0); // a left-to-right f64 sum gives 0.0
    /// assert!(sums.is_null(1)); // only NULLs
    /// # });
    /// ```
    ExactSumUdf,
    "exact_sum",
    false
);

exact_udaf!(
    /// `exact_mean(x)`: the exact sum of the non-NULL `x` over their count,
    /// correctly rounded (one rounding of the exact quotient, to nearest,
    /// ties to even); NULL when there are none, NaN or `±inf` as IEEE
    /// addition when one is not finite (details in the
    /// [module docs](crate::aggregate)). The same bits whatever the row
    /// order and the partitioning.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use datafusion::arrow::array::{Array, AsArray, Float64Array, StringArray};
    /// use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema};
    /// use datafusion::arrow::record_batch::RecordBatch;
    /// use datafusion::datasource::MemTable;
    /// use datafusion::prelude::SessionContext;
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let schema = Arc::new(Schema::new(vec![
    ///     Field::new("symbol", DataType::Utf8, false),
    ///     Field::new("price", DataType::Float64, true),
    /// ]));
    /// let batch = RecordBatch::try_new(
    ///     schema.clone(),
    ///     vec![
    ///         Arc::new(StringArray::from(vec!["A", "A", "A", "B"])),
    ///         Arc::new(Float64Array::from(vec![Some(100.25), None, Some(100.5), None])),
    ///     ],
    /// )
    /// .unwrap();
    /// let ctx = SessionContext::new();
    /// stockanomaly_udfs::register_all(&ctx);
    /// let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
    /// ctx.register_table("ticks", Arc::new(table)).unwrap();
    /// let out = ctx
    ///     .sql("SELECT symbol, exact_mean(price) FROM ticks GROUP BY symbol ORDER BY symbol")
    ///     .await
    ///     .unwrap()
    ///     .collect()
    ///     .await
    ///     .unwrap();
    /// let means = out[0].column(1).as_primitive::<Float64Type>();
    /// assert_eq!(means.value(0), 100.375); // the NULL is not counted
    /// assert!(means.is_null(1));
    /// # });
    /// ```
    ExactMeanUdf,
    "exact_mean",
    true
);

#[cfg(test)]
mod sql_tests;
