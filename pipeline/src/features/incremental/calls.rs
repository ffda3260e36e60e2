//! The window calls the incremental path runs, and the state each keeps per
//! symbol: the exact `rolling_*` kernels and `ewm_zscore` (shared with batch
//! through `stockanomaly-udfs`), and `lag`/`lead`.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Float64Builder, UInt32Builder};
use arrow::compute::{concat, take};
use arrow::datatypes::{DataType, Float64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_expr::PhysicalExpr;
use stockanomaly_udfs::window::{EwmFn, EwmState, RollingFn, RollingGroup, RollingGroupState};

use super::Segment;

/// One window function of a plan's `Window` node, with its arguments as
/// expressions over the node's input.
pub(super) struct Call {
    pub kind: CallKind,
    /// Value arguments (the `ts` and literal arguments left out).
    pub args: Vec<Arc<dyn PhysicalExpr>>,
    /// Index of its per-symbol state in the file's state table (`None`:
    /// `lead`, which keeps none).
    pub slot: Option<usize>,
    /// Output type.
    pub data_type: DataType,
}

/// What a [`Call`] computes.
#[derive(Clone)]
pub(super) enum CallKind {
    Rolling(RollingFn),
    Ewm(EwmFn),
    /// `lag(x, k)`: the value `k` rows back (NULL before).
    Lag(usize),
    /// `lead(x, k)`: the value `k` rows ahead (NULL at the end).
    Lead(usize),
}

impl Call {
    /// The call's output over `rows` rows whose arguments are `args`: the
    /// live rows of each segment advance the symbol's state and get a value,
    /// the others (read-ahead rows) NULL. `states[sym]` is the state of
    /// symbol `sym`.
    pub fn evaluate(
        &self,
        args: &[ArrayRef],
        segments: &[Segment],
        rows: usize,
        states: &mut [Vec<CallState>],
    ) -> Result<ArrayRef> {
        let slot = self.slot;
        match &self.kind {
            // Every rolling call is computed by its width's group.
            CallKind::Rolling(f) => Err(internal(&format!(
                "{}: a rolling call outside its group",
                f.name()
            ))),
            CallKind::Ewm(f) => {
                let x = float_arg(args, "ewm_zscore")?;
                let mut out = Float64Builder::with_capacity(rows);
                for seg in segments {
                    let CallState::Ewm(s) = get(states, slot, seg.sym)? else {
                        return Err(internal("ewm state of another kind"));
                    };
                    s.advance(f, x, seg.start..seg.live_end, &mut out)?;
                    out.append_nulls(seg.end - seg.live_end);
                }
                Ok(std::sync::Arc::new(out.finish()))
            }
            CallKind::Lag(k) if self.data_type == DataType::Float64 => {
                let x = float_arg(args, "lag")?;
                let mut out = Float64Builder::with_capacity(rows);
                for seg in segments {
                    let CallState::LagF64(ring) = get(states, slot, seg.sym)? else {
                        return Err(internal("lag state of another kind"));
                    };
                    for i in seg.start..seg.live_end {
                        let back = if ring.len() >= *k && *k > 0 {
                            ring[ring.len() - *k]
                        } else if *k == 0 {
                            x.is_valid(i).then(|| x.value(i))
                        } else {
                            None
                        };
                        out.append_option(back);
                        if *k > 0 {
                            ring.push_back(x.is_valid(i).then(|| x.value(i)));
                            if ring.len() > *k {
                                ring.pop_front();
                            }
                        }
                    }
                    out.append_nulls(seg.end - seg.live_end);
                }
                Ok(std::sync::Arc::new(out.finish()))
            }
            CallKind::Lag(k) => {
                let x = args
                    .first()
                    .ok_or_else(|| internal("lag without a value"))?;
                let mut parts: Vec<ArrayRef> = Vec::with_capacity(segments.len() * 2);
                for seg in segments {
                    let CallState::LagAny(hist) = get(states, slot, seg.sym)? else {
                        return Err(internal("lag state of another kind"));
                    };
                    let live = x.slice(seg.start, seg.live_end - seg.start);
                    let held = hist.take().unwrap_or_else(|| x.slice(0, 0));
                    let all = concat(&[held.as_ref(), live.as_ref()])?;
                    let h = held.len();
                    let mut idx = UInt32Builder::with_capacity(live.len());
                    for r in 0..live.len() {
                        match (h + r).checked_sub(*k) {
                            Some(j) => idx.append_value(j as u32),
                            None => idx.append_null(),
                        }
                    }
                    parts.push(take(all.as_ref(), &idx.finish(), None)?);
                    parts.push(arrow::array::new_null_array(
                        x.data_type(),
                        seg.end - seg.live_end,
                    ));
                    let keep = all.len().min(*k);
                    *hist = Some(all.slice(all.len() - keep, keep));
                }
                if parts.is_empty() {
                    return Ok(arrow::array::new_null_array(x.data_type(), rows));
                }
                let refs: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
                Ok(concat(&refs)?)
            }
            CallKind::Lead(k) => {
                let x = args
                    .first()
                    .ok_or_else(|| internal("lead without a value"))?;
                let mut idx = UInt32Builder::with_capacity(rows);
                for seg in segments {
                    for i in seg.start..seg.live_end {
                        if i + k < seg.end {
                            idx.append_value((i + k) as u32);
                        } else {
                            idx.append_null();
                        }
                    }
                    idx.append_nulls(seg.end - seg.live_end);
                }
                Ok(take(x.as_ref(), &idx.finish(), None)?)
            }
        }
    }
}

/// What one slot of a file's per-symbol state table holds.
pub(super) enum Slot {
    /// One call's state.
    Call(CallKind, DataType),
    /// The shared state of the rolling calls of one width.
    Group(RollingGroup),
    /// A rolling call's own slot, given up to its group.
    Unused,
}

/// The rolling calls of one `Window` step sharing a width: computed
/// together over one ring of rows ([`RollingGroup`]).
pub(super) struct Group {
    pub f: RollingGroup,
    /// Positions of the member calls among the step's calls.
    pub members: Vec<usize>,
    /// The distinct value arguments of the members.
    pub args: Vec<Arc<dyn PhysicalExpr>>,
    /// Its state's slot.
    pub slot: usize,
}

impl Group {
    /// The members' outputs over `rows` rows whose distinct value
    /// arguments are `args` (see [`Call::evaluate`]).
    pub fn evaluate(
        &self,
        args: &[ArrayRef],
        ts: &[i64],
        segments: &[Segment],
        rows: usize,
        states: &mut [Vec<CallState>],
    ) -> Result<Vec<ArrayRef>> {
        let values: Vec<&Float64Array> = args
            .iter()
            .map(|a| {
                a.as_primitive_opt::<Float64Type>()
                    .ok_or_else(|| internal(&format!("a rolling value of type {}", a.data_type())))
            })
            .collect::<Result<_>>()?;
        let mut outs = self.f.outputs(rows);
        for seg in segments {
            let CallState::Group(s) = get(states, Some(self.slot), seg.sym)? else {
                return Err(internal("rolling group state of another kind"));
            };
            s.advance(&self.f, ts, &values, seg.start..seg.live_end, &mut outs)?;
            for o in &mut outs {
                o.append_nulls(seg.end - seg.live_end);
            }
        }
        Ok(outs.iter_mut().map(|o| o.finish()).collect())
    }
}

/// The state, for a symbol not seen yet, of `slot`.
pub(super) fn fresh_state(slot: &Slot) -> CallState {
    match slot {
        Slot::Call(CallKind::Ewm(f), _) => CallState::Ewm(f.state()),
        Slot::Call(CallKind::Lag(_), t) if *t == DataType::Float64 => {
            CallState::LagF64(VecDeque::new())
        }
        Slot::Call(CallKind::Lag(_), _) => CallState::LagAny(None),
        // A rolling call's state is its group's.
        Slot::Call(CallKind::Lead(_) | CallKind::Rolling(_), _) | Slot::Unused => CallState::None,
        Slot::Group(g) => CallState::Group(g.state()),
    }
}

/// The state of `slot` for symbol `sym`.
fn get(states: &mut [Vec<CallState>], slot: Option<usize>, sym: usize) -> Result<&mut CallState> {
    let slot = slot.ok_or_else(|| internal("a call without state asked for it"))?;
    states
        .get_mut(sym)
        .and_then(|s| s.get_mut(slot))
        .ok_or_else(|| internal("no state for the symbol"))
}

fn float_arg<'a>(args: &'a [ArrayRef], name: &str) -> Result<&'a Float64Array> {
    args.first()
        .and_then(|a| a.as_primitive_opt::<Float64Type>())
        .ok_or_else(|| internal(&format!("{name}: the value is not Float64")))
}

fn internal(what: &str) -> DataFusionError {
    DataFusionError::Internal(format!("incremental features: {what}"))
}

/// What one call keeps for one symbol.
pub(super) enum CallState {
    Group(RollingGroupState),
    Ewm(EwmState),
    /// The last `k` values of a `Float64` lag.
    LagF64(VecDeque<Option<f64>>),
    /// The last `k` values of a lag of another type.
    LagAny(Option<ArrayRef>),
    /// Nothing kept (`lead`).
    None,
}

impl CallState {
    /// Bytes on the heap.
    pub fn heap_bytes(&self) -> usize {
        match self {
            CallState::Group(s) => s.heap_bytes(),
            CallState::Ewm(s) => s.heap_bytes(),
            CallState::LagF64(r) => r.capacity() * std::mem::size_of::<Option<f64>>(),
            CallState::LagAny(a) => a.as_ref().map_or(0, |a| a.get_array_memory_size()),
            CallState::None => 0,
        }
    }
}
