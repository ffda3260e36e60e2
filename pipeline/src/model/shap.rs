//! Exact TreeSHAP contributions of a model's trees, compiled once per model:
//! what explains each alert.
//!
//! # Why not XGBoost's own
//!
//! XGBoost's `pred_contribs` walks every root-to-leaf path of every tree for
//! every row; with the default model (30 rounds of depth 6) that is about
//! 90 µs a row, and a streaming step with a burst of alerts spent most of its
//! time there (a step of 10,000 ticks with most of them alerting: 470 ms of
//! SHAP, 25 ms of features). But a leaf's share of a row's SHAP values
//! depends on the row only through *which of the leaf's path features the
//! row agrees with* (Yang, "Fast TreeSHAP", 2021, its algorithm v2): with
//! at most `d` distinct features on a path there are `2^d` such patterns, so
//! each leaf keeps a table of its contributions per pattern, computed once
//! when the model loads. Explaining a row is then one pass over the split
//! nodes and one table row per leaf.
//!
//! # The values
//!
//! These are XGBoost's path-dependent (cover-weighted) TreeSHAP values. For
//! a leaf of value `v` whose path splits on the distinct features `U`
//! (`|U| = d`), let `z_j` be the product of the cover fractions
//! (`cover(child) / cover(node)`) of the path's splits on `j`, and `o_j`
//! whether the row takes the path's side at every one of them (a missing
//! value takes the split's default side). The leaf adds to feature `i ∈ U`
//!
//! ```text
//! φ_i = v · (o_i − z_i) · Π_{j∈B} z_j · Σ_{m=0}^{|A|} w(|A| − m) · e_m(z_A)
//! ```
//!
//! where `A = {j ∈ U∖{i} : o_j}`, `B = U∖{i}∖A`, `e_m` is the elementary
//! symmetric polynomial of degree `m` and `w(s) = s!(d−1−s)!/d!` the
//! Shapley weight. The tables are computed in `f64` and the contributions
//! summed in `f64`, then rounded to `f32` as XGBoost returns them; they agree
//! with XGBoost's to float precision (the test below holds them to it on
//! trained models), and batch scoring and the streaming detector both use
//! this code, so their explanations are identical.
//!
//! A model this cannot run exactly (categorical splits, vector leaves, DART,
//! a zero cover) or whose tables would be large ([`TABLE_BUDGET`]) is left
//! to XGBoost: [`TreeShap::compile`] returns `None`.

use std::ops::Range;

use super::model_json::RawTree;
use arrow::array::{Array, Float64Array};

/// Most table entries (`f64`) compiled for one model, summed over its
/// leaves (`2^d · d` each): 8M entries, 64 MB. The default model needs
/// about 0.5M.
pub const TABLE_BUDGET: usize = 8 << 20;

/// One split node.
#[derive(Debug, Clone, Copy)]
struct Split {
    feature: u32,
    cond: f32,
    default_left: bool,
}

/// One step of a leaf's path: the split (dense index), the side taken and
/// the bit of its feature in the leaf's pattern.
#[derive(Debug, Clone, Copy)]
struct Step {
    split: u32,
    left: bool,
    bit: u8,
}

/// A leaf: its path steps, distinct features and table, as ranges into the
/// tree's flat vectors.
#[derive(Debug, Clone)]
struct Leaf {
    steps: Range<usize>,
    features: Range<usize>,
    /// Start of its table: `2^d` rows of `d` contributions.
    table: usize,
}

/// One tree, compiled.
#[derive(Debug, Clone, Default)]
struct Tree {
    splits: Vec<Split>,
    steps: Vec<Step>,
    features: Vec<u32>,
    table: Vec<f64>,
    leaves: Vec<Leaf>,
}

/// A model's trees compiled for exact SHAP values (see the module
/// documentation).
#[derive(Debug, Clone)]
pub struct TreeShap {
    trees: Vec<Tree>,
    features: usize,
}

impl TreeShap {
    /// Compiles the trees of rounds `rounds` (`begin..end`) of an XGBoost
    /// JSON model (`model.json`) over `features` feature columns; `None`
    /// when the model is not one this can explain exactly, or too large.
    pub fn compile(model_json: &[u8], features: usize, rounds: (u32, u32)) -> Option<TreeShap> {
        let model = super::model_json::read(model_json, features, rounds).ok()?;
        let mut budget = TABLE_BUDGET;
        let mut compiled = Vec::with_capacity(model.trees.len());
        for raw in &model.trees {
            compiled.push(compile_tree(raw, &mut budget)?);
        }
        Some(TreeShap {
            trees: compiled,
            features,
        })
    }

    /// Number of feature columns.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Adds row `x`'s SHAP values (one per feature, no bias) to `phi`.
    /// `x` holds the features as `f32` (as XGBoost reads them), NaN for
    /// missing; `taken` is scratch space.
    pub fn add_row(&self, x: &[f32], phi: &mut [f64], taken: &mut Vec<bool>) {
        for t in &self.trees {
            t.add_row(x, phi, taken);
        }
    }

    /// The SHAP values of every row of `columns` (one per feature, in
    /// order; NULL and NaN are missing), row after row, each rounded to
    /// `f32` as XGBoost returns them. Rows are split over up to `lanes`
    /// threads.
    pub fn explain(&self, columns: &[&Float64Array], lanes: usize) -> Vec<f32> {
        let rows = columns.first().map_or(0, |c| c.len());
        let width = self.features;
        let mut out = vec![0f32; rows * width];
        if rows == 0 || width == 0 {
            return out;
        }
        // Below this many rows a thread costs more than it saves.
        const ROWS_PER_LANE: usize = 64;
        let lanes = lanes.clamp(1, rows.div_ceil(ROWS_PER_LANE));
        let per = rows.div_ceil(lanes);
        let run = |first: usize, out: &mut [f32]| self.explain_rows(columns, first, out);
        if lanes == 1 {
            run(0, &mut out);
        } else {
            std::thread::scope(|scope| {
                let mut parts = out.chunks_mut(per * width).enumerate();
                let mine = parts.next();
                for (k, part) in parts {
                    scope.spawn(move || run(k * per, part));
                }
                if let Some((_, part)) = mine {
                    run(0, part);
                }
            });
        }
        out
    }

    /// [`TreeShap::explain`] of the rows from `first` on, as many as `out`
    /// holds. Rows go in blocks, each block tree after tree: a tree's tables
    /// then stay in cache for the whole block (row after row, every table
    /// of the model is read for each row, and the reads miss).
    fn explain_rows(&self, columns: &[&Float64Array], first: usize, out: &mut [f32]) {
        const BLOCK: usize = 128;
        let width = self.features;
        let mut x = vec![0f32; BLOCK * width];
        let mut phi = vec![0f64; BLOCK * width];
        let mut taken = Vec::new();
        for (b, dst) in out.chunks_mut(BLOCK * width).enumerate() {
            let n = dst.len() / width;
            let start = first + b * BLOCK;
            for (k, row) in x.chunks_mut(width).take(n).enumerate() {
                for (xi, c) in row.iter_mut().zip(columns) {
                    let r = start + k;
                    *xi = if c.is_null(r) {
                        f32::NAN
                    } else {
                        c.value(r) as f32
                    };
                }
            }
            let phi = &mut phi[..n * width];
            phi.fill(0.0);
            for t in &self.trees {
                for (row, p) in x.chunks(width).zip(phi.chunks_mut(width)) {
                    t.add_row(row, p, &mut taken);
                }
            }
            for (o, p) in dst.iter_mut().zip(phi.iter()) {
                *o = *p as f32;
            }
        }
    }
}

impl Tree {
    /// Adds this tree's part of row `x`'s SHAP values to `phi`.
    #[inline]
    fn add_row(&self, x: &[f32], phi: &mut [f64], taken: &mut Vec<bool>) {
        taken.clear();
        taken.extend(self.splits.iter().map(|s| {
            let v = x[s.feature as usize];
            if v.is_nan() {
                s.default_left
            } else {
                v < s.cond
            }
        }));
        for leaf in &self.leaves {
            let d = leaf.features.len();
            let mut pattern = (1usize << d) - 1;
            for s in &self.steps[leaf.steps.clone()] {
                pattern &= !(usize::from(taken[s.split as usize] != s.left) << s.bit);
            }
            let row = &self.table[leaf.table + pattern * d..leaf.table + (pattern + 1) * d];
            for (&f, &c) in self.features[leaf.features.clone()].iter().zip(row) {
                phi[f as usize] += c;
            }
        }
    }
}

/// The compiled tree: dense splits, and per leaf its path and table.
/// Takes the table's entries from `budget`; `None` when it runs out, or
/// for a split node without cover (no cover fractions to weigh by).
fn compile_tree(raw: &RawTree, budget: &mut usize) -> Option<Tree> {
    let n = raw.left.len();
    if (0..n).any(|i| raw.left[i] >= 0 && !(raw.cover[i] > 0.0 && raw.cover[i].is_finite())) {
        return None;
    }
    let mut dense = vec![u32::MAX; n];
    let mut tree = Tree::default();
    for (i, slot) in dense.iter_mut().enumerate() {
        if raw.left[i] >= 0 {
            *slot = u32::try_from(tree.splits.len()).ok()?;
            tree.splits.push(Split {
                feature: raw.feature[i],
                cond: raw.cond[i],
                default_left: raw.default_left[i],
            });
        }
    }
    // Depth-first from the root, with the path so far: (node, went left).
    let mut stack: Vec<(usize, Vec<(usize, bool)>)> = vec![(0, Vec::new())];
    // A node reached twice means a malformed tree, not a loop to follow.
    let mut seen = vec![false; n];
    while let Some((node, path)) = stack.pop() {
        if std::mem::replace(seen.get_mut(node)?, true) {
            return None;
        }
        if raw.left[node] >= 0 {
            for (child, left) in [(raw.left[node], true), (raw.right[node], false)] {
                let mut p = path.clone();
                p.push((node, left));
                stack.push((child as usize, p));
            }
            continue;
        }
        let value = f64::from(raw.cond[node]);
        // Distinct features in order of first appearance, each with its
        // cover fraction product.
        let mut feats: Vec<u32> = Vec::new();
        let mut zero: Vec<f64> = Vec::new();
        let first = tree.steps.len();
        for &(at, left) in &path {
            let f = raw.feature[at];
            let bit = match feats.iter().position(|&g| g == f) {
                Some(b) => b,
                None => {
                    feats.push(f);
                    zero.push(1.0);
                    feats.len() - 1
                }
            };
            let child = if left { raw.left[at] } else { raw.right[at] } as usize;
            let cover = *raw.cover.get(child)?;
            if !(cover > 0.0 && cover.is_finite()) {
                return None;
            }
            zero[bit] *= cover / raw.cover[at];
            tree.steps.push(Step {
                split: dense[at],
                left,
                bit: u8::try_from(bit).ok()?,
            });
        }
        let d = feats.len();
        if d >= usize::BITS as usize - 1 {
            return None;
        }
        let size = (1usize << d) * d;
        *budget = budget.checked_sub(size)?;
        let table = tree.table.len();
        tree.table.extend(leaf_table(value, &zero));
        let features = tree.features.len();
        tree.features.extend(&feats);
        tree.leaves.push(Leaf {
            steps: first..tree.steps.len(),
            features: features..tree.features.len(),
            table,
        });
    }
    Some(tree)
}

/// A leaf's contributions per agreement pattern: `2^d` rows (bit `j` of the
/// row number: the row agrees with the path on feature `j`) of `d` values
/// (see the module documentation).
fn leaf_table(value: f64, zero: &[f64]) -> Vec<f64> {
    let d = zero.len();
    // w(s) = s! (d-1-s)! / d!
    let fact = |k: usize| (1..=k).fold(1.0f64, |a, b| a * b as f64);
    let weight: Vec<f64> = (0..d)
        .map(|s| fact(s) * fact(d - 1 - s) / fact(d))
        .collect();
    let mut out = Vec::with_capacity((1 << d) * d);
    let mut e: Vec<f64> = Vec::with_capacity(d + 1);
    for pattern in 0usize..1 << d {
        for i in 0..d {
            let agrees = |j: usize| pattern >> j & 1 == 1;
            // e_m over the others that agree; the product over those that
            // do not.
            e.clear();
            e.push(1.0);
            let mut outside = 1.0;
            for (j, &z) in zero.iter().enumerate() {
                if j == i {
                    continue;
                }
                if agrees(j) {
                    e.push(0.0);
                    for m in (1..e.len()).rev() {
                        e[m] += e[m - 1] * z;
                    }
                } else {
                    outside *= z;
                }
            }
            let a = e.len() - 1;
            let sum: f64 = (0..=a).map(|m| weight[a - m] * e[m]).sum();
            let o = if agrees(i) { 1.0 } else { 0.0 };
            out.push(value * (o - zero[i]) * outside * sum);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::{data, trained};
    use crate::model::xgb::{DMatrix, PredictKind};
    use serde_json::Value;

    /// Our contributions against XGBoost's own `pred_contribs` over the
    /// same rows and rounds: equal to float precision.
    fn check(depth: &str, rounds: u32, use_rounds: (u32, u32), lanes: usize) {
        let (cols, label) = data(3000, 11);
        let booster = trained(&cols, &label, depth, rounds);
        let json = booster.save_to_buffer("json").unwrap();
        let shap = TreeShap::compile(&json, cols.len(), use_rounds).expect("a plain model");
        let refs: Vec<&Float64Array> = cols.iter().collect();
        let ours = shap.explain(&refs, lanes);
        let m = DMatrix::from_columns(&refs, None, None).unwrap();
        let (theirs, width) = booster
            .predict_with(&m, PredictKind::Contribs, Some(use_rounds))
            .unwrap();
        assert_eq!(width, cols.len() + 1);
        let mut worst = 0f64;
        let mut nonzero = 0;
        for (r, row) in theirs.chunks(width).enumerate() {
            for (f, &t) in row[..cols.len()].iter().enumerate() {
                let o = ours[r * cols.len() + f];
                let err = (f64::from(o) - f64::from(t)).abs() / (1.0 + f64::from(t).abs());
                worst = worst.max(err);
                nonzero += usize::from(t != 0.0);
            }
        }
        assert!(nonzero > 3000, "the model explains little: {nonzero}");
        assert!(
            worst < 2e-5,
            "depth {depth}, rounds {use_rounds:?}: largest relative difference {worst}"
        );
    }

    #[test]
    fn contributions_equal_xgboosts() {
        check("6", 20, (0, 20), 1);
    }

    #[test]
    fn only_the_rounds_asked_for_count() {
        check("4", 20, (0, 7), 3);
    }

    #[test]
    fn deep_trees_and_lanes() {
        check("8", 6, (0, 6), 2);
    }

    #[test]
    fn lanes_do_not_change_a_bit() {
        let (cols, label) = data(1000, 5);
        let booster = trained(&cols, &label, "5", 10);
        let json = booster.save_to_buffer("json").unwrap();
        let shap = TreeShap::compile(&json, cols.len(), (0, 10)).unwrap();
        let refs: Vec<&Float64Array> = cols.iter().collect();
        let one = shap.explain(&refs, 1);
        for lanes in [2, 3, 16] {
            assert_eq!(shap.explain(&refs, lanes), one, "{lanes} lanes");
        }
    }

    #[test]
    fn what_it_cannot_explain_is_left_to_xgboost() {
        let (cols, label) = data(500, 2);
        let booster = trained(&cols, &label, "3", 3);
        let json = booster.save_to_buffer("json").unwrap();
        let mut model: Value = serde_json::from_slice(&json).unwrap();
        model["learner"]["gradient_booster"]["model"]["trees"][0]["split_type"][0] = 1.into();
        let bytes = serde_json::to_vec(&model).unwrap();
        assert!(TreeShap::compile(&bytes, cols.len(), (0, 3)).is_none());
        // More features used than columns given.
        assert!(TreeShap::compile(&json, 1, (0, 3)).is_none());
        assert!(TreeShap::compile(b"not json", cols.len(), (0, 3)).is_none());
    }
}
