//! A binary-logistic model's trees compiled for prediction: the scores of
//! `score` and of the streaming detector, without a call into XGBoost.
//!
//! # Why
//!
//! XGBoost's in-place prediction reads the Arrow buffers without a copy,
//! but each call still sets up its adapter, its thread team and per-block
//! feature vectors, and walks each row down a tree through a chain of
//! branches the CPU mispredicts. At the streaming executor's step sizes
//! (thousands of rows, many times a second) that was a tenth of the
//! detector's time. Here a block of 64 rows descends each tree one level at
//! a time, branch-free (a split's children sit side by side, a leaf steps
//! onto itself), so the rows' loads overlap.
//!
//! # The same bits
//!
//! The score is computed as XGBoost 3 computes it on the CPU, operation for
//! operation, so it is the same `f32`:
//!
//! - each feature is read as `f32` (`value as f32`); NULL and NaN are
//!   missing and take the split's default side; otherwise a row goes left
//!   when `value < split_condition`;
//! - the margin starts at the intercept, `-ln(1/base_score - 1)` in `f32`,
//!   and adds each tree's leaf value in tree order, in `f32`;
//! - the probability is XGBoost's `Sigmoid`: `1 / (exp(min(-x, 88.7)) + 1 +
//!   1e-16)` in `f32`, with the C library's `expf` (which Rust's `f32::exp`
//!   calls too).
//!
//! The tests hold this to XGBoost bit for bit on trained models, and
//! [`CompiledTrees::compile`] checks it again on the model being loaded
//! (rows made to land on every split's threshold, just below it and on
//! missing values): a model whose scores differ in a single bit, or one
//! outside what is described above (categorical splits, vector leaves,
//! DART, another objective), is left to XGBoost.

use std::collections::VecDeque;

use super::model_json::RawTree;
use super::xgb::{Booster, PredictKind};
use arrow::array::{Array, Float64Array};

/// A tree node. A split's children are `left` and `left + 1`. A leaf reads
/// the always-missing feature past the real ones and defaults to `left`,
/// itself: a walk steps in place once at a leaf, so every row of a block
/// takes the same number of steps, without a branch.
#[derive(Debug, Clone, Copy)]
struct Node {
    feature: u32,
    /// The split condition, or the leaf's value.
    value: f32,
    left: u32,
    default_left: bool,
}

/// A model's trees, compiled (see the module documentation).
#[derive(Debug, Clone)]
pub struct CompiledTrees {
    /// Every tree's nodes.
    nodes: Vec<Node>,
    /// Each tree's root and depth (steps to its deepest leaf).
    roots: Vec<(u32, u32)>,
    /// The margin every row starts from.
    intercept: f32,
    features: usize,
}

/// Rows scored per block: their features, as `f32`, stay in L1 while every
/// tree walks them.
const BLOCK: usize = 64;

impl CompiledTrees {
    /// Compiles the trees of rounds `rounds` (`begin..end`) of a JSON model
    /// over `features` feature columns and checks them against `booster`
    /// (the same model, loaded); `None`, with the reason logged at debug,
    /// when the model is not one this predicts exactly.
    pub fn compile(
        model_json: &[u8],
        features: usize,
        rounds: (u32, u32),
        booster: &Booster,
    ) -> Option<CompiledTrees> {
        let trees = match Self::read(model_json, features, rounds) {
            Ok(t) => t,
            Err(why) => {
                tracing::debug!(why, "Predictions by XGBoost: the model is not compiled.");
                return None;
            }
        };
        match trees.agrees_with(booster, rounds) {
            Ok(()) => Some(trees),
            Err(why) => {
                tracing::warn!(
                    why,
                    "Predictions by XGBoost: the compiled trees do not give its scores."
                );
                None
            }
        }
    }

    /// The trees of a JSON model, unchecked.
    fn read(
        model_json: &[u8],
        features: usize,
        rounds: (u32, u32),
    ) -> Result<CompiledTrees, &'static str> {
        let model = super::model_json::read(model_json, features, rounds)?;
        if model.objective.as_deref() != Some("binary:logistic") {
            return Err("not a binary:logistic model");
        }
        let base = model.base_score.ok_or("no base_score")?;
        if !(base > 0.0 && base < 1.0) {
            return Err("base_score outside (0, 1)");
        }
        let mut out = CompiledTrees {
            nodes: Vec::new(),
            roots: Vec::new(),
            intercept: -(1.0f32 / base - 1.0).ln(),
            features,
        };
        for t in &model.trees {
            out.push_tree(t)?;
        }
        Ok(out)
    }

    /// Appends tree `t`, breadth first, each split's children side by side.
    fn push_tree(&mut self, t: &RawTree) -> Result<(), &'static str> {
        let n = t.left.len();
        let slot = |i: usize| u32::try_from(i).map_err(|_| "too many nodes");
        let root = slot(self.nodes.len())?;
        let placeholder = Node {
            feature: 0,
            value: 0.0,
            left: 0,
            default_left: false,
        };
        self.nodes.push(placeholder);
        let mut at = vec![u32::MAX; n];
        at[0] = root;
        let mut queue = VecDeque::from([(0usize, 0u32)]);
        let mut depth = 0;
        while let Some((i, d)) = queue.pop_front() {
            let me = at[i];
            if t.left[i] < 0 {
                self.nodes[me as usize] = Node {
                    feature: slot(self.features)?,
                    value: t.cond[i],
                    left: me,
                    default_left: true,
                };
                depth = depth.max(d);
                continue;
            }
            let first = slot(self.nodes.len())?;
            self.nodes.extend([placeholder, placeholder]);
            for (k, c) in [t.left[i], t.right[i]].into_iter().enumerate() {
                // In range (checked when read); reached twice: a malformed
                // tree, not a loop.
                let c = c as usize;
                if at[c] != u32::MAX {
                    return Err("a node with two parents");
                }
                at[c] = first + k as u32;
                queue.push_back((c, d + 1));
            }
            self.nodes[me as usize] = Node {
                feature: t.feature[i],
                value: t.cond[i],
                left: first,
                default_left: t.default_left[i],
            };
        }
        self.roots.push((root, depth));
        Ok(())
    }

    /// Number of feature columns.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Probabilities of the rows of `columns` (one per feature, in order;
    /// NULL and NaN are missing), split over up to `lanes` threads.
    pub fn predict(&self, columns: &[&Float64Array], lanes: usize) -> Vec<f32> {
        let rows = columns.first().map_or(0, |c| c.len());
        let mut out = vec![0f32; rows];
        // Below this many rows a thread costs more than it saves.
        const ROWS_PER_LANE: usize = 2048;
        let lanes = lanes.clamp(1, rows.div_ceil(ROWS_PER_LANE).max(1));
        let per = rows.div_ceil(lanes).max(1);
        if lanes == 1 {
            self.predict_rows(columns, 0, &mut out);
        } else {
            std::thread::scope(|scope| {
                let mut parts = out.chunks_mut(per).enumerate();
                let mine = parts.next();
                for (k, part) in parts {
                    scope.spawn(move || self.predict_rows(columns, k * per, part));
                }
                if let Some((_, part)) = mine {
                    self.predict_rows(columns, 0, part);
                }
            });
        }
        out
    }

    /// The rows from `first` on, as many as `out` holds, in blocks, each
    /// block tree after tree, every row of the block one level at a time
    /// (independent loads in flight instead of one row's chain of
    /// mispredicted branches).
    fn predict_rows(&self, columns: &[&Float64Array], first: usize, out: &mut [f32]) {
        let width = self.features + 1;
        let mut x = vec![f32::NAN; BLOCK * width];
        let mut margin = [0f32; BLOCK];
        let mut at = [0u32; BLOCK];
        for (b, dst) in out.chunks_mut(BLOCK).enumerate() {
            let n = dst.len();
            let start = first + b * BLOCK;
            for (j, c) in columns.iter().enumerate().take(self.features) {
                let values = &c.values()[start..start + n];
                for (k, &v) in values.iter().enumerate() {
                    x[k * width + j] = v as f32;
                }
                if let Some(nulls) = c.nulls() {
                    for k in 0..n {
                        if nulls.is_null(start + k) {
                            x[k * width + j] = f32::NAN;
                        }
                    }
                }
            }
            margin[..n].fill(self.intercept);
            for &(root, depth) in &self.roots {
                at[..n].fill(root);
                for _ in 0..depth {
                    for (k, a) in at[..n].iter_mut().enumerate() {
                        let node = self.nodes[*a as usize];
                        let v = x[k * width + node.feature as usize];
                        let left = (v < node.value) | (v.is_nan() & node.default_left);
                        *a = node.left + u32::from(!left);
                    }
                }
                for (m, &a) in margin[..n].iter_mut().zip(&at[..n]) {
                    *m += self.nodes[a as usize].value;
                }
            }
            for (d, &m) in dst.iter_mut().zip(&margin[..n]) {
                *d = sigmoid(m);
            }
        }
    }

    /// Compares the compiled scores with `booster`'s, bit for bit, on rows
    /// that land on every split's threshold, just below it, and on missing
    /// values.
    fn agrees_with(&self, booster: &Booster, rounds: (u32, u32)) -> Result<(), String> {
        let mut per_feature: Vec<Vec<f64>> = vec![vec![f64::NAN]; self.features];
        let splits = self
            .nodes
            .iter()
            .filter(|n| (n.feature as usize) < self.features);
        for n in splits {
            let c = f64::from(n.value);
            let below = f64::from(f32::from_bits(if n.value > 0.0 {
                n.value.to_bits() - 1
            } else {
                n.value.to_bits() + 1
            }));
            per_feature[n.feature as usize].extend([c, below, c * 1.5 + 1.0]);
        }
        // Row r takes, for feature j, the ((r * (2j + 1) + j) mod k)-th of
        // its k probe values: every value appears, in varied company.
        let rows = per_feature.iter().map(Vec::len).max().unwrap_or(1).max(64) * 4;
        let columns: Vec<Float64Array> = per_feature
            .iter()
            .enumerate()
            .map(|(j, vals)| {
                (0..rows)
                    .map(|r| {
                        let v = vals[(r * (2 * j + 1) + j) % vals.len()];
                        (!v.is_nan()).then_some(v)
                    })
                    .collect()
            })
            .collect();
        let refs: Vec<&Float64Array> = columns.iter().collect();
        let (theirs, _) = booster
            .predict_columns(&refs, PredictKind::Value, Some(rounds))
            .map_err(|e| format!("XGBoost's prediction failed: {e}"))?;
        let ours = self.predict(&refs, 1);
        if theirs.len() != ours.len() {
            return Err(format!("{} scores, XGBoost {}", ours.len(), theirs.len()));
        }
        match ours
            .iter()
            .zip(&theirs)
            .position(|(a, b)| a.to_bits() != b.to_bits())
        {
            None => Ok(()),
            Some(r) => Err(format!(
                "probe row {r}: {} where XGBoost gives {}",
                ours[r], theirs[r]
            )),
        }
    }
}

/// XGBoost's `common::Sigmoid(float)`.
#[inline]
fn sigmoid(x: f32) -> f32 {
    const EPS: f32 = 1e-16;
    let x = (-x).min(88.7);
    1.0 / (x.exp() + 1.0 + EPS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{data, trained};
    use serde_json::Value;

    /// Scores equal to XGBoost's in-place prediction (the one `score`
    /// used), bit for bit.
    fn check(depth: &str, rounds: u32, use_rounds: (u32, u32), lanes: usize) {
        let (cols, label) = data(4000, 17);
        let booster = trained(&cols, &label, depth, rounds);
        let json = booster.save_to_buffer("json").unwrap();
        let trees =
            CompiledTrees::compile(&json, cols.len(), use_rounds, &booster).expect("a plain model");
        let refs: Vec<&Float64Array> = cols.iter().collect();
        let ours = trees.predict(&refs, lanes);
        let (theirs, _) = booster
            .predict_columns(&refs, PredictKind::Value, Some(use_rounds))
            .unwrap();
        assert_eq!(ours.len(), theirs.len());
        let differ = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(differ, 0, "depth {depth}, rounds {use_rounds:?}");
        // Not a constant model: the comparison means something.
        let distinct: std::collections::BTreeSet<u32> = ours.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 100, "{} distinct scores", distinct.len());
    }

    #[test]
    fn scores_equal_xgboosts_bit_for_bit() {
        check("6", 30, (0, 30), 1);
    }

    #[test]
    fn only_the_rounds_asked_for_count_and_lanes_change_nothing() {
        check("4", 20, (0, 7), 3);
        check("8", 8, (0, 8), 2);
    }

    #[test]
    fn what_it_cannot_predict_exactly_is_left_to_xgboost() {
        let (cols, label) = data(500, 2);
        let booster = trained(&cols, &label, "3", 3);
        let json = booster.save_to_buffer("json").unwrap();
        assert!(CompiledTrees::compile(&json, cols.len(), (0, 3), &booster).is_some());
        let mut model: Value = serde_json::from_slice(&json).unwrap();
        model["learner"]["gradient_booster"]["model"]["trees"][0]["split_type"][0] = 1.into();
        let bytes = serde_json::to_vec(&model).unwrap();
        assert!(CompiledTrees::compile(&bytes, cols.len(), (0, 3), &booster).is_none());
        // Leaves changed in the JSON only: the probes see the scores differ.
        let mut model: Value = serde_json::from_slice(&json).unwrap();
        let tree = &mut model["learner"]["gradient_booster"]["model"]["trees"][1];
        let leaves: Vec<usize> = tree["left_children"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_i64() == Some(-1))
            .map(|(i, _)| i)
            .collect();
        for leaf in leaves {
            let v = tree["split_conditions"][leaf].as_f64().unwrap();
            tree["split_conditions"][leaf] = (v + 0.25).into();
        }
        let bytes = serde_json::to_vec(&model).unwrap();
        assert!(CompiledTrees::compile(&bytes, cols.len(), (0, 3), &booster).is_none());
        // More features used than columns given; not JSON.
        assert!(CompiledTrees::compile(&json, 1, (0, 3), &booster).is_none());
        assert!(CompiledTrees::compile(b"not json", cols.len(), (0, 3), &booster).is_none());
    }
}
