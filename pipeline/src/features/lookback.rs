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

/// What a plan reads around a tick: the history before it, and how many
/// later ticks of the symbol (`lead`, `ROWS ... FOLLOWING`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Reach {
    pub back: Lookback,
    /// Later ticks read (delayed confirmation); a file must declare at
    /// least this as its `-- delay:`.
    pub ahead: u64,
    /// A function named in the source that reads ahead, to locate errors.
    pub ahead_needle: Option<&'static str>,
}

impl Reach {
    fn max(self, o: Reach) -> Reach {
        Reach {
            back: self.back.max(o.back),
            ahead: self.ahead.max(o.ahead),
            ahead_needle: self.ahead_needle.or(o.ahead_needle),
        }
    }
}

/// Derives the reach of a plan, or every reason it has no finite one.
///
/// Windows stacked on windows add up (a 5-minute stddev of a return that
/// needs the previous tick needs 5 minutes plus one tick; a lead of a lead
/// reads both offsets ahead); independent branches (join sides, sibling
/// window expressions) take the larger.
pub(crate) fn derive(plan: &LogicalPlan) -> Result<Reach, Vec<Problem>> {
    let mut problems = Vec::new();
    let r = walk(plan, &mut problems);
    if problems.is_empty() {
        Ok(r)
    } else {
        Err(problems)
    }
}

fn walk(plan: &LogicalPlan, problems: &mut Vec<Problem>) -> Reach {
    let below = plan
        .inputs()
        .into_iter()
        .fold(Reach::default(), |acc, input| {
            acc.max(walk(input, problems))
        });
    let LogicalPlan::Window(w) = plan else {
        return below;
    };
    let mut here = Reach::default();
    for e in &w.window_expr {
        if let Some(wf) = window_function(e) {
            match of_window_function(wf) {
                Ok(r) => here = here.max(r),
                Err(p) => problems.push(p),
            }
        }
    }
    Reach {
        back: Lookback {
            time: here.back.time + below.back.time,
            rows: here.back.rows + below.back.rows,
        },
        ahead: here.ahead + below.ahead,
        ahead_needle: here.ahead_needle.or(below.ahead_needle),
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

fn back(lb: Lookback) -> Reach {
    Reach {
        back: lb,
        ..Reach::default()
    }
}

fn of_window_function(wf: &WindowFunction) -> Result<Reach, Problem> {
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
                    Some(n) if n >= 0.0 => Ok(back(Lookback { rows: n.ceil() as u64, ..Default::default() })),
                    Some(_) => Err(problem("lag with a negative offset reads later ticks; use lead under a `-- delay:` header".into())),
                    None => Err(problem("lag needs a constant offset so that the lookback is known".into())),
                }
            }
            "lead" => {
                let offset = wf.params.args.get(1).map_or(Some(1.0), |a| literal(a).and_then(as_f64));
                match offset {
                    Some(n) if n >= 0.0 => Ok(Reach {
                        ahead: n.ceil() as u64,
                        ahead_needle: Some("lead"),
                        ..Reach::default()
                    }),
                    _ => Err(problem(
                        "lead needs a constant, non-negative offset so that the delay is known".into(),
                    )),
                }
            }
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
                    Some(window::Lookback::Time(d)) => Ok(back(Lookback { time: d, rows: 0 })),
                    Some(window::Lookback::Rows(n)) => Ok(back(Lookback { time: Duration::ZERO, rows: n })),
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

/// The reach of a frame, for functions that aggregate over it.
fn of_frame(name: &str, frame: &WindowFrame) -> Result<Reach, Problem> {
    Ok(match of_frame_ahead(name, frame)? {
        0 => back(of_frame_back(name, frame)?),
        ahead => Reach {
            back: of_frame_back(name, frame)?,
            ahead,
            ahead_needle: Some("FOLLOWING"),
        },
    })
}

/// Later ticks a frame reads: `ROWS ... k FOLLOWING` reads `k`; a `RANGE`
/// or unbounded end cannot be waited for by a tick count.
fn of_frame_ahead(name: &str, frame: &WindowFrame) -> Result<u64, Problem> {
    let problem = |message: String| Problem {
        needle: "FOLLOWING".to_owned(),
        message,
    };
    let mut ahead = 0;
    for b in [&frame.start_bound, &frame.end_bound] {
        let WindowFrameBound::Following(v) = b else {
            continue;
        };
        if !v.is_null() && is_zero_interval(v) {
            continue;
        }
        match (&frame.units, as_f64(v)) {
            (_, Some(0.0)) => {}
            (WindowFrameUnits::Rows, Some(x)) if x > 0.0 => ahead = ahead.max(x.ceil() as u64),
            _ => {
                return Err(problem(format!(
                    "{name}: the frame reads later ticks without a bound in ticks; end it at \
                     CURRENT ROW, or at `k FOLLOWING` in a ROWS frame under a `-- delay: k ticks` header"
                )))
            }
        }
    }
    Ok(ahead)
}

/// The lookback of a frame's start.
fn of_frame_back(name: &str, frame: &WindowFrame) -> Result<Lookback, Problem> {
    let problem = |needle: &str, message: String| Problem {
        needle: needle.to_owned(),
        message,
    };
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
