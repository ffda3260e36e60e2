//! The planner rule that runs standard SQL window aggregates over `RANGE`
//! interval frames on the exact rolling UDFs, so feature files can stay
//! portable SQL (`stddev_samp(x) OVER (PARTITION BY symbol ORDER BY ts RANGE
//! BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW)` runs in DuckDB
//! too) and still give the same bits in backfill and streaming.
//!
//! DataFusion's own sliding accumulators retract values in floating point,
//! so their result depends on the history before the window (drift); each
//! call also re-evaluates the frame per row. The rewritten call computes the
//! window in one pass with exact sums.

use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::{WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::{
    col, when, Expr, ExprSchemable, LogicalPlan, Window, WindowFrame, WindowFrameBound,
    WindowFrameUnits, WindowFunctionDefinition, WindowUDF,
};
use datafusion::optimizer::AnalyzerRule;

use super::{
    RollingCountUdf, RollingFirstUdf, RollingMaxUdf, RollingMeanUdf, RollingMinUdf, RollingStdUdf,
    RollingSumUdf, RollingVarUdf,
};

/// Rewrites `avg`, `sum`, `count`, `min`, `max`, `stddev`/`stddev_samp`,
/// `var`/`var_samp`/`variance` and `first_value` over
/// `RANGE BETWEEN INTERVAL '…' PRECEDING AND CURRENT ROW` frames ordered by
/// one ascending timestamp into `rolling_mean`, `rolling_sum`, … with the
/// same partition, order and result name.
///
/// Calls it does not recognise (a `DISTINCT`, a `FILTER`, another frame, a
/// type the UDF would return differently) are left alone.
///
/// ```
/// use datafusion::prelude::SessionContext;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let ctx = SessionContext::new();
/// stockanomaly_udfs::register_all(&ctx); // adds this rule
/// ctx.sql("CREATE TABLE t (symbol VARCHAR, ts TIMESTAMP, x DOUBLE)").await.unwrap();
/// let plan = ctx
///     .sql("SELECT stddev_samp(x) OVER (PARTITION BY symbol ORDER BY ts \
///           RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW) AS s FROM t")
///     .await.unwrap()
///     .into_optimized_plan().unwrap();
/// assert!(plan.display_indent().to_string().contains("rolling_std"));
/// # });
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct ExactRangeWindowsRule;

impl ExactRangeWindowsRule {
    /// The rule.
    pub fn new() -> Self {
        Self
    }
}

impl AnalyzerRule for ExactRangeWindowsRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let LogicalPlan::Window(w) = node else {
                return Ok(Transformed::no(node));
            };
            let input_schema = Arc::clone(w.input.schema());
            let mut rewritten = 0;
            let mut exprs = Vec::with_capacity(w.window_expr.len());
            for e in &w.window_expr {
                match rewrite(e, &input_schema)? {
                    Some(new) => {
                        rewritten += 1;
                        exprs.push(new);
                    }
                    None => exprs.push(e.clone()),
                }
            }
            if rewritten == 0 {
                return Ok(Transformed::no(LogicalPlan::Window(w)));
            }
            // Among ticks sharing the earliest `ts` of a window, "first" must
            // not depend on how a sort ordered peers: break ties on the tick
            // key's ordinal. One window node shares one sort, so this is done
            // only when every call in it is an exact UDF (they ignore frames).
            if rewritten == exprs.len() && input_schema.has_column_with_unqualified_name("seq") {
                for e in &mut exprs {
                    append_seq(e);
                }
            }
            // Same names and types as before, so the output schema stands.
            let window = Window::try_new_with_schema(exprs, w.input, w.schema)?;
            Ok(Transformed::yes(LogicalPlan::Window(window)))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "exact_range_windows"
    }
}

/// Adds `seq` as the last sort key of a (rewritten, aliased) window call.
fn append_seq(e: &mut Expr) {
    match e {
        Expr::Alias(a) => append_seq(a.expr.as_mut()),
        Expr::WindowFunction(wf) => wf.params.order_by.push(col("seq").sort(true, false)),
        _ => {}
    }
}

/// The exact UDF standing in for a standard function name, if any.
fn replacement(name: &str) -> Option<WindowUDF> {
    Some(match name {
        "avg" | "mean" => WindowUDF::from(RollingMeanUdf::new()),
        "sum" => WindowUDF::from(RollingSumUdf::new()),
        "count" => WindowUDF::from(RollingCountUdf::new()),
        "min" => WindowUDF::from(RollingMinUdf::new()),
        "max" => WindowUDF::from(RollingMaxUdf::new()),
        "stddev" | "stddev_samp" => WindowUDF::from(RollingStdUdf::new()),
        "var" | "var_samp" | "variance" => WindowUDF::from(RollingVarUdf::new()),
        "first_value" => WindowUDF::from(RollingFirstUdf::new()),
        _ => return None,
    })
}

/// The interval of a `RANGE … PRECEDING` bound, when it is one the UDFs take.
fn interval_width(frame: &WindowFrame) -> Option<ScalarValue> {
    if frame.units != WindowFrameUnits::Range || frame.end_bound != WindowFrameBound::CurrentRow {
        return None;
    }
    match &frame.start_bound {
        WindowFrameBound::Preceding(v @ ScalarValue::IntervalMonthDayNano(Some(i)))
            if i.months == 0 =>
        {
            Some(v.clone())
        }
        WindowFrameBound::Preceding(v @ ScalarValue::IntervalDayTime(Some(_))) => Some(v.clone()),
        _ => None,
    }
}

fn rewrite(e: &Expr, input: &DFSchema) -> Result<Option<Expr>> {
    let (inner, name) = match e {
        Expr::Alias(a) => (a.expr.as_ref(), a.name.clone()),
        other => (other, other.schema_name().to_string()),
    };
    let Expr::WindowFunction(wf) = inner else {
        return Ok(None);
    };
    let p = &wf.params;
    let [order] = p.order_by.as_slice() else {
        return Ok(None);
    };
    let [x] = p.args.as_slice() else {
        return Ok(None);
    };
    if p.distinct || p.filter.is_some() || p.null_treatment.is_some() || !order.asc {
        return Ok(None);
    }
    let (Some(width), Some(udf)) = (interval_width(&p.window_frame), replacement(wf.fun.name()))
    else {
        return Ok(None);
    };
    if !matches!(order.expr.get_type(input)?, DataType::Timestamp(_, _)) {
        return Ok(None);
    }
    let Some(x) = value_arg(wf.fun.name(), x, input)? else {
        return Ok(None);
    };
    let order_by = p.order_by.clone();
    let new = Expr::WindowFunction(Box::new(WindowFunction {
        fun: WindowFunctionDefinition::WindowUDF(Arc::new(udf)),
        params: WindowFunctionParams {
            args: vec![x, order.expr.clone(), Expr::Literal(width, None)],
            partition_by: p.partition_by.clone(),
            order_by,
            window_frame: WindowFrame::new(Some(true)),
            filter: None,
            null_treatment: None,
            distinct: false,
        },
    }));
    // A different result type would change the plan's schema: keep the
    // original call then (e.g. `sum` over integers).
    if new.get_type(input)? != inner.get_type(input)? {
        return Ok(None);
    }
    Ok(Some(new.alias(name)))
}

/// The Float64 column the exact UDF reads for the call's argument `x`, or
/// `None` when the call must stay as it is.
///
/// The UDFs read Float64 values. `count` only asks whether a value is there,
/// so any type (and `count(*)`, planned as `count(1)`) counts as 1.0 where
/// it is not NULL. The other functions keep a non-Float64 argument (an
/// integer `sum` or `min` has an integer result, which the type check
/// refuses anyway; an integer `avg` is cast by type coercion before this
/// rule runs).
fn value_arg(fun: &str, x: &Expr, input: &DFSchema) -> Result<Option<Expr>> {
    if x.get_type(input)? == DataType::Float64 {
        return Ok(Some(x.clone()));
    }
    if fun != "count" {
        return Ok(None);
    }
    let one = Expr::Literal(ScalarValue::Float64(Some(1.0)), None);
    Ok(Some(match x {
        Expr::Literal(v, _) if !v.is_null() => one,
        _ => when(x.clone().is_not_null(), one).end()?,
    }))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::datatypes::{Float64Type, Int64Type};
    use datafusion::prelude::SessionContext;

    async fn session() -> SessionContext {
        let ctx = SessionContext::new();
        crate::register_all(&ctx);
        // Ties on ts, a gap, a NULL, prices with tiny variation.
        ctx.sql(
            "CREATE TABLE t AS SELECT * FROM (VALUES \
             ('A', TIMESTAMP '2024-01-02 14:30:00', 1, 1000.000001, 3), \
             ('A', TIMESTAMP '2024-01-02 14:30:00', 0, 1000.000002, 4), \
             ('A', TIMESTAMP '2024-01-02 14:31:10', 0, 1000.000004, 1), \
             ('A', TIMESTAMP '2024-01-02 14:33:00', 0, NULL, 2), \
             ('A', TIMESTAMP '2024-01-02 14:40:00', 0, 1000.000003, 5), \
             ('B', TIMESTAMP '2024-01-02 14:30:30', 0, 20.5, 7), \
             ('B', TIMESTAMP '2024-01-02 14:31:30', 0, 20.25, 8)) AS v(symbol, ts, seq, x, n)",
        )
        .await
        .unwrap();
        ctx
    }

    /// The optimized plan of `sql`, as text.
    async fn plan(ctx: &SessionContext, sql: &str) -> String {
        let df = ctx.sql(sql).await.unwrap();
        df.into_optimized_plan()
            .unwrap()
            .display_indent()
            .to_string()
    }

    async fn column(ctx: &SessionContext, sql: &str) -> Vec<Option<u64>> {
        let batches: Vec<RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut out = Vec::new();
        for b in &batches {
            let c = b.column(0);
            for i in 0..b.num_rows() {
                out.push(match c.data_type() {
                    arrow::datatypes::DataType::Int64 => {
                        (!c.is_null(i)).then(|| c.as_primitive::<Int64Type>().value(i) as u64)
                    }
                    _ => {
                        (!c.is_null(i)).then(|| c.as_primitive::<Float64Type>().value(i).to_bits())
                    }
                });
            }
        }
        out
    }

    #[tokio::test]
    async fn standard_sql_gives_the_exact_udf_bits() {
        let ctx = session().await;
        let frame = "OVER (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '2 minutes' PRECEDING AND CURRENT ROW)";
        let udf_over = "OVER (PARTITION BY symbol ORDER BY ts)";
        for (std, udf) in [
            ("avg(x)", "rolling_mean(x, ts, INTERVAL '2 minutes')"),
            ("sum(x)", "rolling_sum(x, ts, INTERVAL '2 minutes')"),
            ("count(x)", "rolling_count(x, ts, INTERVAL '2 minutes')"),
            ("min(x)", "rolling_min(x, ts, INTERVAL '2 minutes')"),
            ("max(x)", "rolling_max(x, ts, INTERVAL '2 minutes')"),
            ("stddev_samp(x)", "rolling_std(x, ts, INTERVAL '2 minutes')"),
            ("var_samp(x)", "rolling_var(x, ts, INTERVAL '2 minutes')"),
        ] {
            let order = "ORDER BY symbol, ts, seq";
            let a = column(&ctx, &format!("SELECT {std} {frame} AS v FROM t {order}")).await;
            let b = column(
                &ctx,
                &format!("SELECT {udf} {udf_over} AS v FROM t {order}"),
            )
            .await;
            assert_eq!(a.len(), 7);
            assert_eq!(a, b, "{std}");
            let plan = plan(&ctx, &format!("SELECT {std} {frame} AS v FROM t")).await;
            assert!(plan.contains("rolling_"), "{std} not rewritten:\n{plan}");
        }
        // first_value breaks ties on seq: the tick with seq 0 comes first.
        let first = column(
            &ctx,
            &format!(
                "SELECT first_value(x) {frame} AS v FROM t WHERE symbol = 'A' ORDER BY ts, seq"
            ),
        )
        .await;
        assert_eq!(first[0].map(f64::from_bits), Some(1000.000002));
    }

    /// `count` over any column (and `count(*)`) gives stock DataFusion's
    /// counts: the UDF reads Float64, so the rule must not hand it an
    /// integer or string column as it is.
    #[tokio::test]
    async fn counts_any_type_like_stock_datafusion() {
        let ours = session().await;
        let stock = SessionContext::new();
        let rows = ours.sql("SELECT * FROM t").await.unwrap();
        let schema = std::sync::Arc::new(rows.schema().as_arrow().clone());
        let rows = rows.collect().await.unwrap();
        let t = datafusion::datasource::MemTable::try_new(schema, vec![rows]).unwrap();
        stock.register_table("t", std::sync::Arc::new(t)).unwrap();
        let frame = "OVER (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '2 minutes' PRECEDING AND CURRENT ROW)";
        for arg in ["n", "*", "1", "symbol", "x", "CAST(x AS INT)", "NULL"] {
            let sql = format!("SELECT count({arg}) {frame} AS v FROM t ORDER BY symbol, ts, seq");
            let plan = plan(&ours, &sql).await;
            assert!(
                plan.contains("rolling_count"),
                "count({arg}) not rewritten:\n{plan}"
            );
            let a = column(&ours, &sql).await;
            assert_eq!(a, column(&stock, &sql).await, "count({arg})");
            assert_eq!(a.len(), 7);
        }
    }

    #[tokio::test]
    async fn leaves_what_it_cannot_run_exactly() {
        let ctx = session().await;
        for sql in [
            // Integer sum keeps its integer type.
            "SELECT sum(n) OVER (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '2 minutes' PRECEDING AND CURRENT ROW) FROM t",
            // A ROWS frame is not a time window.
            "SELECT avg(x) OVER (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) FROM t",
            // DISTINCT changes the meaning.
            "SELECT count(DISTINCT x) OVER (PARTITION BY symbol ORDER BY ts RANGE BETWEEN INTERVAL '2 minutes' PRECEDING AND CURRENT ROW) FROM t",
        ] {
            let plan = plan(&ctx, sql).await;
            assert!(!plan.contains("rolling_"), "{sql} was rewritten:\n{plan}");
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
    }
}
