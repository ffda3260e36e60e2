//! From a feature file's optimized logical plan to a [`Node`] tree the
//! incremental path evaluates, or the reason it cannot.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    Expr, ExprSchemable, JoinType, LogicalPlan, SortExpr, WindowFunctionDefinition,
};
use datafusion::physical_expr::PhysicalExpr;
use stockanomaly_udfs::window::{EwmFn, RollingFn, RollingGroup};

use super::calls::{Call, CallKind, Group, Slot};
use super::join::RightSide;
use super::literal;
use crate::tick::col;

/// Why a plan cannot run incrementally, with a word to find in the source
/// (to name the line).
#[derive(Debug, Clone)]
pub(super) struct Why {
    pub needle: String,
    pub reason: String,
}

fn why(needle: &str, reason: impl Into<String>) -> Why {
    Why {
        needle: needle.to_owned(),
        reason: reason.into(),
    }
}

/// A step of the compiled plan.
pub(super) enum Node {
    /// The chunk's ticks, these columns of the lake's `ticks` table.
    Scan {
        columns: Vec<usize>,
        schema: SchemaRef,
    },
    /// Expressions over the input, row by row.
    Project {
        input: Box<Node>,
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
    /// The input's columns and one column per window call; the rolling
    /// calls are computed by their width's group.
    Window {
        input: Box<Node>,
        calls: Vec<Call>,
        groups: Vec<Group>,
        schema: SchemaRef,
    },
    /// The input's columns and the matching row of a context table.
    Join {
        left: Box<Node>,
        right: usize,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
}

/// What a column of a step is made of.
#[derive(Debug, Clone, Copy, Default)]
struct ColInfo {
    /// The column of the lake's `ticks` it passes through unchanged.
    origin: Option<usize>,
    /// Depends on a joined context table (unknown during warm-up).
    ctx: bool,
    /// Depends on later rows (`lead`).
    ahead: bool,
    /// Depends on a window call's state.
    state: bool,
}

impl ColInfo {
    fn merge(self, o: ColInfo) -> ColInfo {
        ColInfo {
            origin: None,
            ctx: self.ctx || o.ctx,
            ahead: self.ahead || o.ahead,
            state: self.state || o.state,
        }
    }
}

/// A file's compiled plan.
pub(super) struct Compiled {
    pub root: Node,
    /// Output column of each feature (the file's feature order).
    pub features: Vec<usize>,
    pub rights: Vec<RightSide>,
    /// What each state slot holds (to make fresh states).
    pub slots: Vec<Slot>,
    /// Some call reads later rows (`lead`).
    pub reads_ahead: bool,
    /// Some scan reads the `date` partition column.
    pub reads_date: bool,
}

/// Compiles `plan` (the file's optimized plan over the lake's tables).
pub(super) fn compile(
    state: &SessionState,
    file: &str,
    plan: &LogicalPlan,
    features: &[String],
) -> Result<Compiled, Why> {
    let ticks = crate::lake::with_partitions(&crate::lake::TableSpec::ticks());
    let mut c = Compiler {
        state,
        file,
        ticks,
        rights: Vec::new(),
        slots: Vec::new(),
        reads_ahead: false,
        reads_date: false,
    };
    let (root, infos) = c.node(plan)?;
    let schema = plan.schema();
    // The key must be the tick's own: rows are lined up by it.
    for key in [col::SYMBOL, col::TS, col::SEQ] {
        let i = output_index(schema, key)
            .ok_or_else(|| why(key, format!("the output has no `{key}` column")))?;
        if infos[i].origin != c.ticks.index_of(key).ok() {
            return Err(why(
                key,
                format!("the output's `{key}` is not the tick's own `{key}`"),
            ));
        }
    }
    let features = features
        .iter()
        .map(|f| output_index(schema, f).ok_or_else(|| why(f, format!("no output column `{f}`"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Compiled {
        root,
        features,
        rights: c.rights,
        slots: c.slots,
        reads_ahead: c.reads_ahead,
        reads_date: c.reads_date,
    })
}

fn output_index(schema: &DFSchema, name: &str) -> Option<usize> {
    schema.fields().iter().position(|f| f.name() == name)
}

struct Compiler<'a> {
    state: &'a SessionState,
    file: &'a str,
    ticks: SchemaRef,
    rights: Vec<RightSide>,
    slots: Vec<Slot>,
    reads_ahead: bool,
    reads_date: bool,
}

/// The schema of a step's batches: the plan's, every field nullable (rows
/// not computed in a chunk are NULL whatever the plan promises).
fn nullable(schema: &DFSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// What an expression over `schema` (with `infos` per column) is made of.
fn info_of(expr: &Expr, schema: &DFSchema, infos: &[ColInfo]) -> ColInfo {
    let expr = unalias(expr);
    if let Expr::Column(c) = expr {
        return schema
            .index_of_column(c)
            .ok()
            .and_then(|i| infos.get(i).copied())
            .unwrap_or_default();
    }
    expr.column_refs()
        .into_iter()
        .filter_map(|c| schema.index_of_column(c).ok())
        .filter_map(|i| infos.get(i).copied())
        .fold(ColInfo::default(), ColInfo::merge)
}

fn unalias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

impl Compiler<'_> {
    fn physical(&self, e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>, Why> {
        let cannot = |err| why(&e.to_string(), format!("cannot plan `{e}`: {err}"));
        let fast = super::trunc::fast_date_trunc(e.clone(), schema).map_err(cannot)?;
        self.state
            .create_physical_expr(fast, schema)
            .map_err(cannot)
    }

    fn node(&mut self, plan: &LogicalPlan) -> Result<(Node, Vec<ColInfo>), Why> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = scan.table_name.table();
                if table != "ticks" {
                    return Err(why(
                        table,
                        format!("reads `{table}` other than through a LEFT JOIN to the ticks"),
                    ));
                }
                if !scan.filters.is_empty() || scan.fetch.is_some() {
                    return Err(why("WHERE", "filters or limits the ticks"));
                }
                let columns = scan
                    .projection
                    .clone()
                    .unwrap_or_else(|| (0..self.ticks.fields().len()).collect());
                if columns.contains(&(self.ticks.fields().len() - 1)) {
                    self.reads_date = true;
                }
                let infos = columns
                    .iter()
                    .map(|&i| ColInfo {
                        origin: Some(i),
                        ..ColInfo::default()
                    })
                    .collect();
                Ok((
                    Node::Scan {
                        columns,
                        schema: nullable(plan.schema()),
                    },
                    infos,
                ))
            }
            LogicalPlan::SubqueryAlias(a) => self.node(&a.input),
            LogicalPlan::Projection(p) => {
                let (input, below) = self.node(&p.input)?;
                let schema = p.input.schema();
                let exprs = p
                    .expr
                    .iter()
                    .map(|e| self.physical(e, schema))
                    .collect::<Result<Vec<_>, _>>()?;
                let infos = p.expr.iter().map(|e| info_of(e, schema, &below)).collect();
                Ok((
                    Node::Project {
                        input: Box::new(input),
                        exprs,
                        schema: nullable(plan.schema()),
                    },
                    infos,
                ))
            }
            LogicalPlan::Window(w) => {
                let (input, below) = self.node(&w.input)?;
                let schema = w.input.schema();
                let mut infos = below.clone();
                let mut calls = Vec::with_capacity(w.window_expr.len());
                for e in &w.window_expr {
                    let Expr::WindowFunction(wf) = unalias(e) else {
                        return Err(why("OVER", format!("window expression `{e}`")));
                    };
                    let (call, info) = self.call(wf, schema, &below)?;
                    calls.push(call);
                    infos.push(info);
                }
                let groups = self.group_rolling(&calls)?;
                Ok((
                    Node::Window {
                        input: Box::new(input),
                        calls,
                        groups,
                        schema: nullable(plan.schema()),
                    },
                    infos,
                ))
            }
            LogicalPlan::Join(j) => {
                if j.join_type != JoinType::Left {
                    return Err(why(
                        "JOIN",
                        format!(
                            "a {} join (only LEFT JOINs to context tables keep one row per tick)",
                            j.join_type
                        ),
                    ));
                }
                if j.filter.is_some() {
                    return Err(why("JOIN", "a join condition other than key equalities"));
                }
                if j.null_equality != datafusion::common::NullEquality::NullEqualsNothing
                    || j.null_aware
                {
                    return Err(why("JOIN", "a join where NULL keys match"));
                }
                if scans(&j.right, "ticks") {
                    return Err(why("JOIN", "joins the ticks with themselves"));
                }
                let (left, mut infos) = self.node(&j.left)?;
                let (lschema, rschema) = (j.left.schema(), j.right.schema());
                let mut keys = Vec::with_capacity(j.on.len());
                let mut right_keys = Vec::with_capacity(j.on.len());
                for (l, r) in &j.on {
                    let (lt, rt) = (l.get_type(lschema), r.get_type(rschema));
                    if lt.is_err() || lt.ok() != rt.ok() {
                        return Err(why(
                            "JOIN",
                            format!("join keys `{l}` and `{r}` of different types"),
                        ));
                    }
                    keys.push(self.physical(l, lschema)?);
                    right_keys.push(self.physical(r, rschema)?);
                }
                let tables = scanned_tables(&j.right);
                let direct = direct_scan(&j.right);
                self.rights.push(RightSide {
                    plan: (*j.right).clone(),
                    tables,
                    direct,
                    keys: right_keys,
                    schema: nullable(rschema),
                    file: self.file.to_owned(),
                    cache: None,
                });
                infos.extend(rschema.fields().iter().map(|_| ColInfo {
                    ctx: true,
                    ..ColInfo::default()
                }));
                Ok((
                    Node::Join {
                        left: Box::new(left),
                        right: self.rights.len() - 1,
                        keys,
                        schema: nullable(plan.schema()),
                    },
                    infos,
                ))
            }
            other => {
                let step = other.display().to_string();
                let word = step.split(':').next().unwrap_or("").trim().to_owned();
                Err(why(
                    &keyword_of(&word),
                    format!("a `{word}` step over the ticks (only projections, window calls and LEFT JOINs to context tables run incrementally)"),
                ))
            }
        }
    }

    /// A window call, checked, and what its output is made of.
    fn call(
        &mut self,
        wf: &WindowFunction,
        schema: &DFSchema,
        infos: &[ColInfo],
    ) -> Result<(Call, ColInfo), Why> {
        let name = wf.fun.name().to_ascii_lowercase();
        let p = &wf.params;
        let ticks_col = |c: &str| self.ticks.index_of(c).ok();
        let origin = |e: &Expr| info_of(e, schema, infos).origin;
        if p.filter.is_some() || p.distinct {
            return Err(why(&name, format!("{name} with FILTER or DISTINCT")));
        }
        if matches!(
            p.null_treatment,
            Some(datafusion::logical_expr::expr::NullTreatment::IgnoreNulls)
        ) {
            return Err(why(&name, format!("{name} IGNORE NULLS")));
        }
        if p.partition_by.len() != 1 || origin(&p.partition_by[0]) != ticks_col(col::SYMBOL) {
            return Err(why(
                &name,
                format!("{name} not partitioned by the tick's symbol alone"),
            ));
        }
        let ordered = |o: &[SortExpr]| {
            let by = |s: &SortExpr, c: &str| s.asc && origin(&s.expr) == ticks_col(c);
            match o {
                [t] => by(t, col::TS),
                [t, s] => by(t, col::TS) && by(s, col::SEQ),
                _ => false,
            }
        };
        if !ordered(&p.order_by) {
            return Err(why(
                &name,
                format!("{name} not ordered by ts (or ts, seq), ascending"),
            ));
        }
        let arg_info = |e: &Expr| info_of(e, schema, infos);
        let float = |e: &Expr| e.get_type(schema).ok() == Some(DataType::Float64);
        let args = &p.args;
        let is_udf = matches!(wf.fun, WindowFunctionDefinition::WindowUDF(_));
        let (kind, values): (CallKind, Vec<&Expr>) = if let Some(f) = is_udf
            .then(|| {
                let n = args.len();
                if n < 3 {
                    return Ok(None);
                }
                let width = literal(&args[n - 1])
                    .ok_or_else(|| why(&name, format!("{name}: the width is not a literal")))?;
                let ts_type = args[n - 2]
                    .get_type(schema)
                    .map_err(|e| why(&name, e.to_string()))?;
                RollingFn::new(&name, &width, &ts_type).map_err(|e| why(&name, e.to_string()))
            })
            .transpose()?
            .flatten()
        {
            let n = args.len();
            if n != f.value_columns() + 2 || origin(&args[n - 2]) != ticks_col(col::TS) {
                return Err(why(&name, format!("{name}: `ts` is not the tick's own ts")));
            }
            (CallKind::Rolling(f), args[..n - 2].iter().collect())
        } else if is_udf && name == "ewm_zscore" {
            let [x, h, m] = args.as_slice() else {
                return Err(why(&name, "ewm_zscore takes 3 arguments"));
            };
            let (Some(h), Some(m)) = (literal(h), literal(m)) else {
                return Err(why(
                    &name,
                    "ewm_zscore: literal halflife and max_ticks needed",
                ));
            };
            let f = EwmFn::new(&h, &m).map_err(|e| why(&name, e.to_string()))?;
            (CallKind::Ewm(f), vec![x])
        } else if name == "lag" || name == "lead" {
            let offset = match args.get(1).map(literal) {
                None => Some(1),
                Some(Some(ScalarValue::Int64(Some(k)))) if k >= 0 => usize::try_from(k).ok(),
                _ => None,
            };
            let Some(k) = offset else {
                return Err(why(
                    &name,
                    format!("{name} needs a constant, non-negative offset"),
                ));
            };
            if let Some(d) = args.get(2) {
                if !literal(d).is_some_and(|v| v.is_null()) {
                    return Err(why(&name, format!("{name} with a default value")));
                }
            }
            let Some(x) = args.first() else {
                return Err(why(&name, format!("{name} without a value")));
            };
            let kind = if name == "lag" {
                CallKind::Lag(k)
            } else {
                CallKind::Lead(k)
            };
            (kind, vec![x])
        } else {
            let frame = &p.window_frame;
            return Err(why(
                &name,
                format!(
                    "{name} over a {} frame has no incremental state (the exact RANGE-frame \
                     aggregates, rolling_*, ewm_zscore, lag and lead do)",
                    frame.units
                ),
            ));
        };
        let mut info = ColInfo {
            state: true,
            ..ColInfo::default()
        };
        for v in &values {
            let a = arg_info(v);
            if a.ctx {
                return Err(why(
                    &name,
                    format!(
                        "{name} over a column of a joined context table (unknown while warming up)"
                    ),
                ));
            }
            if a.ahead {
                return Err(why(
                    &name,
                    format!("{name} over a value that reads later ticks"),
                ));
            }
            match &kind {
                CallKind::Lead(_) if a.state => {
                    return Err(why(
                        &name,
                        "lead over a value computed by another window call".to_owned(),
                    ))
                }
                CallKind::Rolling(_) | CallKind::Ewm(_) if !float(v) => {
                    return Err(why(
                        &name,
                        format!("{name} over a value that is not a DOUBLE"),
                    ))
                }
                _ => {}
            }
            info = info.merge(a);
            info.state = true;
        }
        let slot = match kind {
            CallKind::Lead(_) => {
                self.reads_ahead = true;
                info.ahead = true;
                None
            }
            _ => Some(self.slots.len()),
        };
        let data_type = wf_type(wf, schema).map_err(|e| why(&name, e))?;
        let physical = values
            .iter()
            .map(|v| self.physical(v, schema))
            .collect::<Result<Vec<_>, _>>()?;
        if slot.is_some() {
            self.slots.push(Slot::Call(kind.clone(), data_type.clone()));
        }
        Ok((
            Call {
                kind,
                args: physical,
                slot,
                data_type,
            },
            info,
        ))
    }
}

impl Compiler<'_> {
    /// Groups a `Window` step's rolling calls by width: each group keeps
    /// one ring of rows per symbol for all its calls (a file's `OVER w5m`
    /// statistics), in the slot of its first call.
    fn group_rolling(&mut self, calls: &[Call]) -> Result<Vec<Group>, Why> {
        let mut by_width: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (i, c) in calls.iter().enumerate() {
            if let CallKind::Rolling(f) = &c.kind {
                by_width.entry(f.width()).or_default().push(i);
            }
        }
        let mut groups = Vec::with_capacity(by_width.len());
        for members in by_width.into_values() {
            let mut args: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
            let mut names: Vec<String> = Vec::new();
            let mut fns = Vec::with_capacity(members.len());
            for &m in &members {
                let CallKind::Rolling(f) = &calls[m].kind else {
                    continue;
                };
                let cols = calls[m]
                    .args
                    .iter()
                    .map(|a| {
                        // Physical expressions over one input print alike
                        // exactly when they compute alike (columns by index).
                        let name = a.to_string();
                        match names.iter().position(|n| *n == name) {
                            Some(c) => c,
                            None => {
                                names.push(name);
                                args.push(Arc::clone(a));
                                names.len() - 1
                            }
                        }
                    })
                    .collect();
                fns.push((*f, cols));
            }
            let slots: Vec<usize> = members.iter().filter_map(|&m| calls[m].slot).collect();
            let Some(&slot) = slots.first() else {
                continue;
            };
            let f = RollingGroup::new(fns, args.len())
                .map_err(|e| why("OVER", format!("grouping the rolling windows: {e}")))?;
            for &s in &slots {
                self.slots[s] = Slot::Unused;
            }
            self.slots[slot] = Slot::Group(f.clone());
            groups.push(Group {
                f,
                members,
                args,
                slot,
            });
        }
        Ok(groups)
    }
}

/// The output type of a window call.
fn wf_type(wf: &WindowFunction, schema: &DFSchema) -> Result<DataType, String> {
    Expr::WindowFunction(Box::new(wf.clone()))
        .get_type(schema)
        .map_err(|e| e.to_string())
}

/// Whether `plan` scans table `name`.
fn scans(plan: &LogicalPlan, name: &str) -> bool {
    scanned_tables(plan).iter().any(|t| t == name)
}

fn scanned_tables(plan: &LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut out = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            out.push(scan.table_name.table().to_owned());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out.sort();
    out.dedup();
    out
}

/// The table and columns of a plan that is a bare scan (under aliases).
fn direct_scan(plan: &LogicalPlan) -> Option<(String, Vec<usize>)> {
    match plan {
        LogicalPlan::SubqueryAlias(a) => direct_scan(&a.input),
        LogicalPlan::TableScan(scan) if scan.filters.is_empty() && scan.fetch.is_none() => {
            let n = scan.source.schema().fields().len();
            Some((
                scan.table_name.table().to_owned(),
                scan.projection.clone().unwrap_or_else(|| (0..n).collect()),
            ))
        }
        _ => None,
    }
}

/// The SQL word to look for in the file for a plan step's name.
fn keyword_of(step: &str) -> String {
    match step {
        "Filter" => "WHERE",
        "Aggregate" => "GROUP BY",
        "Sort" => "ORDER BY",
        "Limit" => "LIMIT",
        "Distinct" => "DISTINCT",
        "Union" => "UNION",
        other => other,
    }
    .to_owned()
}
