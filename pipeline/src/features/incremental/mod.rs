//! The feature files as incremental programs: per-symbol state that each
//! new tick advances, so a streaming step costs in proportion to the ticks it
//! emits, never to the lookback held.
//!
//! # Design
//!
//! The definitions stay the `.sql` files. The catalog already plans and
//! optimizes each file (standard window aggregates over `RANGE` frames are
//! then calls of the exact `rolling_*` UDFs); [`Program::compile`] walks that
//! optimized logical plan once and turns it into a small tree of steps:
//!
//! - the scan of `ticks` reads the chunk of ticks being computed;
//! - projections are DataFusion physical expressions, evaluated vectorised
//!   over the chunk (the same expression code a batch plan runs);
//! - each window call keeps **per-symbol state** and is advanced over the
//!   chunk's rows of each symbol: the `rolling_*` kernels over a ring of the
//!   rows still in the window, `ewm_zscore` over its last `max_ticks`
//!   values, `lag` over its last `k` values; `lead` reads the chunk's
//!   read-ahead rows (the ticks after the emitted ones that the pack's
//!   declared delay waited for);
//! - a `LEFT JOIN` to a context table (`symbols`, `profiles`, `market`,
//!   `betas`) probes a hash index of the table's current rows, rebuilt when
//!   the table changes.
//!
//! The other route, one long-lived DataFusion plan per executor fed by a
//! channel (`BoundedWindowAggExec` keeping per-partition state), was not
//! taken: our exact UDFs evaluate whole partitions (`evaluate_all`, the
//! measured fast route of backfill), each batch would still pay DataFusion's
//! per-batch overheads in every operator (repartition, sort, coalesce)
//! which at 1,000-tick micro-batches are the whole budget, and the
//! emission rules (whole `(symbol, ts)` groups, the delay, market buckets)
//! would have to be re-expressed as plan operators. Compiling the plan keeps
//! the one definition, and the kernels are literally the batch ones
//! (`stockanomaly_udfs::window::RollingState` drives the same kernels), so
//! bits match backfill by construction, for any micro-batch split.
//!
//! Rows are computed in whole `(symbol, ts)` groups (peers see each other in
//! `RANGE` frames) and only once every later constraint is met, so a row is
//! computed exactly once, in key order, and its state never has to be
//! undone. During warm-up the joins are not looked up: no window call may
//! depend on a joined column (checked when compiling), so state is the
//! same either way.
//!
//! What the compiler cannot run (a `WHERE` on the ticks, an aggregate, a
//! `ROWS` frame, a window over a joined or read-ahead column, ...) is named
//! with its file and line ([`Program::not_incremental`], printed by
//! `features check`), and that file alone is computed by the recompute
//! path, which re-runs its SQL over the held history.

mod calls;
mod compile;
mod join;
#[cfg(test)]
mod tests;
mod trunc;

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};

use self::calls::{fresh_state, CallState};
use self::compile::{Compiled, Node};
use self::join::RightSide;
use super::Catalog;

pub use self::join::ContextTables;

/// One symbol's rows in a [`Chunk`]: `start..live_end` are computed (and
/// advance the state), `live_end..end` are read-ahead rows only `lead` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The symbol's number (the executor's dense symbol id).
    pub sym: usize,
    /// First row.
    pub start: usize,
    /// End of the rows computed.
    pub live_end: usize,
    /// End of the symbol's rows.
    pub end: usize,
}

/// Ticks to compute, each symbol's rows in key order, after the rows of
/// earlier chunks.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The lake's `ticks` columns (with `date` when
    /// [`Program::reads_date`]).
    pub ticks: RecordBatch,
    /// The `ts` column as µs.
    pub ts: Vec<i64>,
    /// Per symbol, its rows.
    pub segments: Vec<Segment>,
}

impl Chunk {
    /// Rows computed.
    pub fn live_rows(&self) -> usize {
        self.segments.iter().map(|s| s.live_end - s.start).sum()
    }

    /// Positions of the computed rows.
    pub fn live_indices(&self) -> UInt32Array {
        self.segments
            .iter()
            .flat_map(|s| (s.start..s.live_end).map(|i| i as u32))
            .collect()
    }
}

/// A feature file the incremental path cannot run, and where.
#[derive(Debug, Clone)]
pub struct NotIncremental {
    /// Its position in the catalog.
    pub file: usize,
    /// Its path.
    pub path: PathBuf,
    /// Line and column of the construct, when found in the text.
    pub at: Option<(usize, usize)>,
    /// What it is.
    pub reason: String,
}

impl std::fmt::Display for NotIncremental {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.path.display(), self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

/// How a chunk is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// For output: joins are looked up.
    Emit,
    /// Replaying history into the state: joins are not looked up (nothing
    /// stateful depends on them) and the output is dropped.
    WarmUp,
}

/// One file's compiled plan and its per-symbol state.
struct FileProgram {
    /// Position in the catalog.
    file: usize,
    /// The thread it is computed on when a chunk is large enough.
    lane: usize,
    compiled: Compiled,
    /// `states[sym][slot]`; empty for a symbol not seen (or forgotten).
    states: Vec<Vec<CallState>>,
}

/// The catalog's files compiled for streaming (see the module
/// documentation).
pub struct Program {
    files: Vec<FileProgram>,
    not_incremental: Vec<NotIncremental>,
    /// Threads a large chunk is computed on.
    lanes: usize,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("files", &self.files.len())
            .field("not_incremental", &self.not_incremental)
            .finish()
    }
}

impl Program {
    /// Compiles every file of `catalog`; a file that cannot run
    /// incrementally is listed in [`Program::not_incremental`].
    pub fn compile(catalog: &Catalog) -> Program {
        let ctx = crate::lake::schema_session();
        let state = ctx.state();
        let mut files = Vec::new();
        let mut not_incremental = Vec::new();
        for (i, f) in catalog.files().iter().enumerate() {
            match compile::compile(&state, &f.name, &f.plan, &f.features) {
                Ok(compiled) => files.push(FileProgram {
                    file: i,
                    lane: 0,
                    compiled,
                    states: Vec::new(),
                }),
                Err(why) => not_incremental.push(NotIncremental {
                    file: i,
                    path: f.path.clone(),
                    at: super::catalog::locate(&f.sql, &why.needle),
                    reason: why.reason,
                }),
            }
        }
        let lanes = std::thread::available_parallelism().map_or(1, |n| n.get());
        lane_of(&mut files, lanes);
        Program {
            files,
            not_incremental,
            lanes,
        }
    }

    /// The files computed by the recompute path instead, with why.
    pub fn not_incremental(&self) -> &[NotIncremental] {
        &self.not_incremental
    }

    /// Positions (in the catalog) of the files this program computes.
    pub fn files(&self) -> Vec<usize> {
        self.files.iter().map(|f| f.file).collect()
    }

    /// Whether a file reads later rows (`lead`): chunks then carry
    /// read-ahead rows.
    pub fn reads_ahead(&self) -> bool {
        self.files.iter().any(|f| f.compiled.reads_ahead)
    }

    /// Whether a file reads the `date` column of `ticks`.
    pub fn reads_date(&self) -> bool {
        self.files.iter().any(|f| f.compiled.reads_date)
    }

    /// Loads the context tables' current rows where they changed.
    pub async fn refresh(&mut self, tables: &ContextTables) -> Result<()> {
        for f in &mut self.files {
            for r in &mut f.compiled.rights {
                r.refresh(tables).await?;
            }
        }
        Ok(())
    }

    /// Computes `chunk`: every file's features of the chunk's computed rows
    /// (in segment order), per file in catalog position order, each a
    /// `Float64` column per feature. In [`Mode::WarmUp`] the state advances
    /// and nothing is returned.
    pub fn evaluate(&mut self, chunk: &Chunk, mode: Mode) -> Result<Vec<(usize, Vec<ArrayRef>)>> {
        let live_idx = (chunk.live_rows() != chunk.ticks.num_rows()).then(|| chunk.live_indices());
        let lanes = if chunk.ticks.num_rows() >= PARALLEL_ROWS {
            self.lanes
        } else {
            1
        };
        let out = if lanes <= 1 {
            self.files
                .iter_mut()
                .map(|f| f.evaluate(chunk, mode, live_idx.as_ref()))
                .collect::<Result<Vec<_>>>()?
        } else {
            // Files are independent (each its own state): one lane per
            // core, the costliest files spread first (see `lane_of`).
            let mut lanes: Vec<Vec<&mut FileProgram>> = (0..lanes).map(|_| Vec::new()).collect();
            for f in &mut self.files {
                lanes[f.lane].push(f);
            }
            let live_idx = live_idx.as_ref();
            let results: Vec<Result<Vec<_>>> = std::thread::scope(|scope| {
                let mut lanes = lanes.into_iter();
                let mine = lanes.next().unwrap_or_default();
                let handles: Vec<_> = lanes
                    .map(|lane| {
                        scope.spawn(move || {
                            lane.into_iter()
                                .map(|f| f.evaluate(chunk, mode, live_idx))
                                .collect::<Result<Vec<_>>>()
                        })
                    })
                    .collect();
                let mut results = vec![mine
                    .into_iter()
                    .map(|f| f.evaluate(chunk, mode, live_idx))
                    .collect::<Result<Vec<_>>>()];
                for h in handles {
                    results.push(h.join().unwrap_or_else(|_| {
                        Err(DataFusionError::Internal(
                            "incremental features: a lane panicked".into(),
                        ))
                    }));
                }
                results
            });
            let mut all = Vec::new();
            for r in results {
                all.extend(r?);
            }
            all
        };
        let mut out: Vec<(usize, Vec<ArrayRef>)> = out.into_iter().flatten().collect();
        out.sort_by_key(|(file, _)| *file);
        Ok(out)
    }

    /// Drops what is kept of symbol `sym` (its partition was revoked, or
    /// the symbol starts afresh).
    pub fn forget(&mut self, sym: usize) {
        for f in &mut self.files {
            if let Some(s) = f.states.get_mut(sym) {
                *s = Vec::new();
            }
        }
    }

    /// Bytes of state held for symbol `sym` (rings of window rows, sums).
    pub fn heap_bytes(&self, sym: usize) -> usize {
        self.files
            .iter()
            .filter_map(|f| f.states.get(sym))
            .flatten()
            .map(CallState::heap_bytes)
            .sum()
    }
}

/// The literal an argument is (through casts), if it is one.
fn literal(e: &datafusion::logical_expr::Expr) -> Option<datafusion::common::ScalarValue> {
    use datafusion::logical_expr::Expr;
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Cast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        Expr::TryCast(c) => literal(&c.expr)?.cast_to(c.field.data_type()).ok(),
        _ => None,
    }
}

/// Chunks smaller than this are computed on the calling thread: below it,
/// starting threads costs more than it saves.
const PARALLEL_ROWS: usize = 512;

/// Spreads the files over `lanes` threads: costliest first (a window call's
/// state advance is the cost of a file), each to the least loaded lane.
fn lane_of(files: &mut [FileProgram], lanes: usize) {
    let cost = |f: &FileProgram| 1 + 4 * f.compiled.slots.len();
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(cost(&files[i])));
    let mut load = vec![0usize; lanes.max(1)];
    for i in order {
        let lane = (0..load.len()).min_by_key(|&l| load[l]).unwrap_or(0);
        load[lane] += cost(&files[i]);
        files[i].lane = lane;
    }
}

impl FileProgram {
    /// Computes `chunk` for this file: its feature columns over the live
    /// rows (`live_idx` picks them when the chunk has read-ahead rows);
    /// nothing in [`Mode::WarmUp`].
    fn evaluate(
        &mut self,
        chunk: &Chunk,
        mode: Mode,
        live_idx: Option<&UInt32Array>,
    ) -> Result<Option<(usize, Vec<ArrayRef>)>> {
        self.ensure_states(&chunk.segments);
        let input = Input {
            chunk,
            lookups: mode == Mode::Emit,
        };
        let batch = eval(
            &self.compiled.root,
            &input,
            &mut self.states,
            &self.compiled.rights,
        )?;
        if mode == Mode::WarmUp {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(self.compiled.features.len());
        for &c in &self.compiled.features {
            let mut a = Arc::clone(batch.column(c));
            if let Some(idx) = live_idx {
                a = take(a.as_ref(), idx, None)?;
            }
            if a.data_type() != &DataType::Float64 {
                a = cast(&a, &DataType::Float64)?;
            }
            columns.push(a);
        }
        Ok(Some((self.file, columns)))
    }

    /// Makes the state of every symbol of `segments` that has none.
    fn ensure_states(&mut self, segments: &[Segment]) {
        for s in segments {
            if self.states.len() <= s.sym {
                self.states.resize_with(s.sym + 1, Vec::new);
            }
            let st = &mut self.states[s.sym];
            if st.is_empty() {
                st.extend(self.compiled.slots.iter().map(fresh_state));
            }
        }
    }
}

struct Input<'a> {
    chunk: &'a Chunk,
    lookups: bool,
}

/// A step's output over the chunk's rows.
fn eval(
    node: &Node,
    input: &Input<'_>,
    states: &mut [Vec<CallState>],
    rights: &[RightSide],
) -> Result<RecordBatch> {
    let chunk = input.chunk;
    let rows = chunk.ticks.num_rows();
    let columns: Vec<ArrayRef> = match node {
        Node::Scan { columns, schema } => {
            let batch = chunk.ticks.project(columns).map_err(|e| {
                DataFusionError::Internal(format!("incremental features: the chunk's ticks: {e}"))
            })?;
            return Ok(RecordBatch::try_new(
                Arc::clone(schema),
                batch.columns().to_vec(),
            )?);
        }
        Node::Project {
            input: below,
            exprs,
            ..
        } => {
            let b = eval(below, input, states, rights)?;
            join::evaluate(exprs, &b)?
        }
        Node::Window {
            input: below,
            calls,
            groups,
            ..
        } => {
            let b = eval(below, input, states, rights)?;
            let mut outputs: Vec<Option<ArrayRef>> = vec![None; calls.len()];
            for g in groups {
                let args = join::evaluate(&g.args, &b)?;
                let outs = g.evaluate(&args, &chunk.ts, &chunk.segments, rows, states)?;
                for (&m, out) in g.members.iter().zip(outs) {
                    outputs[m] = Some(out);
                }
            }
            let mut cols = b.columns().to_vec();
            for (call, out) in calls.iter().zip(outputs) {
                cols.push(match out {
                    Some(out) => out,
                    None => {
                        let args = join::evaluate(&call.args, &b)?;
                        call.evaluate(&args, &chunk.segments, rows, states)?
                    }
                });
            }
            cols
        }
        Node::Join {
            left, right, keys, ..
        } => {
            let b = eval(left, input, states, rights)?;
            let keys = if input.lookups {
                Some(join::evaluate(keys, &b)?)
            } else {
                None
            };
            let mut cols = b.columns().to_vec();
            cols.extend(rights[*right].probe(keys.as_deref(), rows)?);
            cols
        }
    };
    let schema = match node {
        Node::Project { schema, .. } | Node::Window { schema, .. } | Node::Join { schema, .. } => {
            schema
        }
        Node::Scan { schema, .. } => schema,
    };
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}
