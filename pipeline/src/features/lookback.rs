//! Lookback: how much of a symbol's past a tick's features need, derived from
//! the window functions of a query's logical plan.

use std::fmt;
use std::time::Duration;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{
    expr::WindowFunction, Expr, LogicalPlan, WindowFrame, WindowFrameBound, WindowFrameUnits,
    WindowFunctionDefinition,
};
use stockanomaly_udfs::window;

/// History a tick needs: every tick of its symbol within `time` before it,
/// plus `rows` more ticks before the oldest of those. Features computed over
/// any stretch of history that covers this equal features computed over all
/// history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookback {
    /// Event-time span (`RANGE` frames, rolling UDF widths).
    pub time: Duration,
    /// Tick count (`ROWS` frames, `lag` offsets, tick-truncated EWMAs).
    pub rows: u64,
}

impl Lookback {
    /// The lookback that covers both.
    pub fn max(self, other: Lookback) -> Lookback {
        Lookback {
            time: self.time.max(other.time),
            rows: self.rows.max(other.rows),
        }
    }
}

impl fmt::Display for Lookback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.time.as_secs_f64();
        let time = if secs == 0.0 {
            "0s".to_owned()
        } else if secs % 3600.0 == 0.0 {
            format!("{}h", secs / 3600.0)
        } else if secs % 60.0 == 0.0 {
            format!("{}min", secs / 60.0)
        } else {
            format!("{secs}s")
        };
        write!(f, "{time}, {} ticks", self.rows)
    }
}

/// A reason the plan has no finite, causal lookback, with a word to find in
/// the source to locate it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    /// Text to search for in the file to report a line.
    pub needle: String,
    pub message: String,
}

/// Derives the lookback of a plan, or every reason it has none.
///
/// Windows stacked on windows add up (a 5-minute stddev of a return that
/// needs the previous tick needs 5 minutes plus one tick); independent
/// branches (join sides, sibling window expressions) take the larger.
pub(crate) fn derive(plan: &LogicalPlan) -> Result<Lookback, Vec<Problem>> {
    let mut problems = Vec::new();
    let lb = walk(plan, &mut problems);
    if problems.is_empty() {
        Ok(lb)
    } else {
        Err(problems)
    }
}

fn walk(plan: &LogicalPlan, problems: &mut Vec<Problem>) -> Lookback {
    let below = plan
        .inputs()
        .into_iter()
        .fold(Lookback::default(), |acc, input| {
            acc.max(walk(input, problems))
        });
    let LogicalPlan::Window(w) = plan else {
        return below;
    };
    let mut here = Lookback::default();
    for e in &w.window_expr {
        if let Some(wf) = window_function(e) {
            match of_window_function(wf) {
                Ok(lb) => here = here.max(lb),
                Err(p) => problems.push(p),
            }
        }
    }
    Lookback {
        time: here.time + below.time,
        rows: here.rows + below.rows,
    }
}

fn window_function(e: &Expr) -> Option<&WindowFunction> {
    match e {
        Expr::Alias(a) => window_function(&a.expr),
        Expr::WindowFunction(wf) => Some(wf),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal(&c.expr),
        Expr::TryCast(c) => literal(&c.expr),
        _ => None,
    }
}

fn of_window_function(wf: &WindowFunction) -> Result<Lookback, Problem> {
    let name = wf.fun.name().to_ascii_lowercase();
    let problem = |message: String| Problem {
        needle: name.clone(),
        message,
    };
    match &wf.fun {
        WindowFunctionDefinition::AggregateUDF(_) => of_frame(&name, &wf.params.window_frame),
        WindowFunctionDefinition::WindowUDF(_) => match name.as_str() {
            "lag" => {
                let offset = wf.params.args.get(1).map_or(Some(1.0), |a| literal(a).and_then(as_f64));
                match offset {
                    Some(n) if n >= 0.0 => Ok(Lookback { rows: n.ceil() as u64, ..Default::default() }),
                    Some(_) => Err(problem("lag with a negative offset reads later ticks; features may only look back".into())),
                    None => Err(problem("lag needs a constant offset so that the lookback is known".into())),
                }
            }
            "lead" => Err(problem(
                "lead reads later ticks; features may only look back (a tick is scored when it arrives)".into(),
            )),
            "first_value" | "last_value" | "nth_value" => of_frame(&name, &wf.params.window_frame),
            "row_number" | "rank" | "dense_rank" | "percent_rank" | "cume_dist" | "ntile" => Err(problem(format!(
                "{name} depends on where the history starts, so backfill and streaming would disagree; \
                 use a bounded window instead"
            ))),
            _ => {
                // The UDFs' own lookback takes their constant arguments only.
                let literals: Vec<ScalarValue> =
                    wf.params.args.iter().filter_map(literal).cloned().collect();
                match window::lookback_of(&name, &literals) {
                    Some(window::Lookback::Time(d)) => Ok(Lookback { time: d, rows: 0 }),
                    Some(window::Lookback::Rows(n)) => Ok(Lookback { time: Duration::ZERO, rows: n }),
                    None => Err(problem(format!(
                        "window function {name} has no known lookback (constant width arguments needed)"
                    ))),
                }
            }
        },
    }
}

fn as_f64(v: &ScalarValue) -> Option<f64> {
    if v.is_null() {
        return None;
    }
    match v.cast_to(&arrow::datatypes::DataType::Float64).ok()? {
        ScalarValue::Float64(Some(x)) => Some(x),
        _ => None,
    }
}

/// The lookback of a frame, for functions that aggregate over it.
fn of_frame(name: &str, frame: &WindowFrame) -> Result<Lookback, Problem> {
    let problem = |needle: &str, message: String| Problem {
        needle: needle.to_owned(),
        message,
    };
    let future = |b: &WindowFrameBound| match b {
        WindowFrameBound::Following(v) => {
            v.is_null() || as_f64(v).is_none_or(|x| x != 0.0) && !is_zero_interval(v)
        }
        _ => false,
    };
    if future(&frame.end_bound) || future(&frame.start_bound) {
        return Err(problem(
            "FOLLOWING",
            format!("{name}: the frame reads later ticks; end it at CURRENT ROW"),
        ));
    }
    match (&frame.units, &frame.start_bound) {
        (_, WindowFrameBound::CurrentRow) => Ok(Lookback::default()),
        (_, WindowFrameBound::Preceding(v)) if v.is_null() => Err(problem(
            name,
            format!(
                "{name}: the frame starts at UNBOUNDED PRECEDING (the default when OVER has ORDER BY and no \
                 frame), so its memory grows without bound; give it a start such as \
                 RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW or ROWS BETWEEN 20 PRECEDING AND CURRENT ROW"
            ),
        )),
        (WindowFrameUnits::Rows, WindowFrameBound::Preceding(v)) => match as_f64(v) {
            Some(n) => Ok(Lookback { rows: n.ceil() as u64, ..Default::default() }),
            None => Err(problem("ROWS", format!("{name}: ROWS frame bound {v} is not a count"))),
        },
        (WindowFrameUnits::Range, WindowFrameBound::Preceding(v)) => match interval(v) {
            Ok(d) => Ok(Lookback { time: d, rows: 0 }),
            Err(msg) => Err(problem("RANGE", format!("{name}: {msg}"))),
        },
        (WindowFrameUnits::Groups, _) => Err(problem(
            "GROUPS",
            format!("{name}: GROUPS frames have no bounded lookback in ticks or time; use RANGE with an INTERVAL or ROWS"),
        )),
        (_, WindowFrameBound::Following(_)) => Ok(Lookback::default()),
    }
}

fn is_zero_interval(v: &ScalarValue) -> bool {
    matches!(interval(v), Ok(d) if d.is_zero())
}

/// A RANGE bound as a duration; months (what a bare number on a timestamp
/// becomes) are refused.
fn interval(v: &ScalarValue) -> Result<Duration, String> {
    const HINT: &str = "a RANGE frame on `ts` needs an INTERVAL in days or less, e.g. \
                        RANGE BETWEEN INTERVAL '5 minutes' PRECEDING AND CURRENT ROW \
                        (a bare number is read as months)";
    let nanos: i128 = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i128::from(i.days) * 86_400_000_000_000 + i128::from(i.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            i128::from(i.days) * 86_400_000_000_000 + i128::from(i.milliseconds) * 1_000_000
        }
        ScalarValue::DurationSecond(Some(s)) => i128::from(*s) * 1_000_000_000,
        ScalarValue::DurationMillisecond(Some(s)) => i128::from(*s) * 1_000_000,
        ScalarValue::DurationMicrosecond(Some(s)) => i128::from(*s) * 1_000,
        ScalarValue::DurationNanosecond(Some(s)) => i128::from(*s),
        _ => return Err(format!("bound {v} is not an interval; {HINT}")),
    };
    u64::try_from(nanos)
        .map(Duration::from_nanos)
        .map_err(|_| format!("negative interval {v}; {HINT}"))
}

/// Window aggregates that would still run on DataFusion's sliding
/// accumulators after the exact-window rewrite: floating-point add and
/// retract makes their value depend on history before the window, so
/// backfill and streaming could disagree in the last bits.
pub(crate) fn drifting(analyzed: &LogicalPlan) -> Vec<Problem> {
    let mut problems = Vec::new();
    let _ = analyzed.apply_with_subqueries(|node| {
        if let LogicalPlan::Window(w) = node {
            for wf in w.window_expr.iter().filter_map(window_function) {
                let exact = matches!(wf.fun.name(), "min" | "max" | "count");
                let sliding = !matches!(wf.params.window_frame.start_bound, WindowFrameBound::CurrentRow);
                if matches!(wf.fun, WindowFunctionDefinition::AggregateUDF(_)) && sliding && !exact {
                    let name = wf.fun.name().to_owned();
                    problems.push(Problem {
                        needle: name.clone(),
                        message: format!(
                            "{name} over a sliding frame is computed by adding and retracting floating-point \
                             values, so its last bits depend on the history before the window and backfill and \
                             streaming could disagree; use a RANGE BETWEEN INTERVAL '...' PRECEDING AND CURRENT ROW \
                             frame ordered by ts alone (run exactly) or a rolling_* function"
                        ),
                    });
                }
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    problems
}
