//! The trees of an XGBoost JSON model (`model.json`), read once for the
//! compiled predictor ([`super::trees`]) and explainer ([`super::shap`]):
//! single-output `gbtree` models of plain numeric splits, the only kind
//! either runs (anything else stays with XGBoost).

use serde_json::Value;

/// One tree's arrays, as XGBoost writes them (node `i` at index `i`; a leaf
/// has `left < 0` and its value in `cond`).
#[derive(Debug)]
pub(crate) struct RawTree {
    pub left: Vec<i64>,
    pub right: Vec<i64>,
    pub feature: Vec<u32>,
    pub cond: Vec<f32>,
    pub default_left: Vec<bool>,
    /// Sum of the hessians of the training rows through each node.
    pub cover: Vec<f64>,
}

/// What the compiled models need of `model.json`.
#[derive(Debug)]
pub(crate) struct ModelJson {
    /// The objective's name (`binary:logistic`).
    pub objective: Option<String>,
    /// `base_score`, in probability space.
    pub base_score: Option<f32>,
    /// The trees of the rounds asked for, in order.
    pub trees: Vec<RawTree>,
}

/// Reads the trees of rounds `rounds` (`begin..end`) of a JSON model over
/// `features` feature columns; `Err` says why the model is not one the
/// compiled code runs.
pub(crate) fn read(
    model_json: &[u8],
    features: usize,
    rounds: (u32, u32),
) -> Result<ModelJson, &'static str> {
    let model: Value = serde_json::from_slice(model_json).map_err(|_| "not JSON")?;
    let learner = &model["learner"];
    let param = &learner["learner_model_param"];
    let text = |v: &Value| -> Option<String> {
        v.as_str()
            .map(str::to_owned)
            .or_else(|| v.as_f64().map(|f| f.to_string()))
    };
    let num = |v: &Value| -> Option<u64> { v.as_u64().or_else(|| text(v)?.parse().ok()) };
    if num(&param["num_class"]).unwrap_or(0) > 1 || num(&param["num_target"]).unwrap_or(1) != 1 {
        return Err("more than one output");
    }
    let booster = &learner["gradient_booster"];
    if booster["name"].as_str() != Some("gbtree") {
        return Err("not a gbtree booster");
    }
    let model = &booster["model"];
    let trees = model["trees"].as_array().ok_or("no trees")?;
    // Trees of round r: iteration_indptr[r]..iteration_indptr[r + 1].
    let (begin, end) = (rounds.0 as usize, rounds.1 as usize);
    let span = match model["iteration_indptr"].as_array() {
        Some(ptr) => {
            let at = |r: usize| {
                ptr.get(r.min(ptr.len().saturating_sub(1)))
                    .and_then(num)
                    .map(|v| v as usize)
                    .ok_or("bad iteration_indptr")
            };
            at(begin)?..at(end)?
        }
        None => begin.min(trees.len())..end.min(trees.len()),
    };
    Ok(ModelJson {
        objective: learner["objective"]["name"].as_str().map(str::to_owned),
        // "[4.5602882E-1]" (XGBoost 3) or "4.5602882E-1".
        base_score: text(&param["base_score"])
            .and_then(|s| s.trim_matches(['[', ']']).parse().ok()),
        trees: trees
            .get(span)
            .ok_or("rounds beyond the trees")?
            .iter()
            .map(|t| RawTree::read(t, features))
            .collect::<Result<_, _>>()?,
    })
}

impl RawTree {
    /// One tree of the JSON model, checked: arrays of one length, numeric
    /// splits on `features` columns, children inside the tree.
    fn read(t: &Value, features: usize) -> Result<RawTree, &'static str> {
        let ints =
            |k: &str| -> Option<Vec<i64>> { t[k].as_array()?.iter().map(Value::as_i64).collect() };
        let floats =
            |k: &str| -> Option<Vec<f64>> { t[k].as_array()?.iter().map(Value::as_f64).collect() };
        let left = ints("left_children").ok_or("no left_children")?;
        let right = ints("right_children").ok_or("no right_children")?;
        let n = left.len();
        let feature: Vec<u32> = ints("split_indices")
            .and_then(|f| f.into_iter().map(|f| u32::try_from(f).ok()).collect())
            .ok_or("no split_indices")?;
        let cond: Vec<f32> = floats("split_conditions")
            .ok_or("no split_conditions")?
            .into_iter()
            .map(|c| c as f32)
            .collect();
        let default_left: Vec<bool> = t["default_left"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|v| v.as_bool().or_else(|| v.as_i64().map(|i| i != 0)))
                    .collect()
            })
            .ok_or("no default_left")?;
        let cover = floats("sum_hessian").ok_or("no sum_hessian")?;
        if t["split_type"]
            .as_array()
            .is_some_and(|s| s.iter().any(|v| v.as_i64() != Some(0)))
        {
            return Err("categorical splits");
        }
        if t["tree_param"]["size_leaf_vector"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s > 1)
        {
            return Err("vector leaves");
        }
        let lengths = [
            right.len(),
            feature.len(),
            cond.len(),
            default_left.len(),
            cover.len(),
        ];
        if n == 0 || lengths.iter().any(|&l| l != n) {
            return Err("tree arrays of different lengths");
        }
        for i in (0..n).filter(|&i| left[i] >= 0) {
            if feature[i] as usize >= features {
                return Err("a split on a feature beyond the columns");
            }
            if [left[i], right[i]]
                .iter()
                .any(|&c| c <= 0 || c as usize >= n)
            {
                return Err("a child outside the tree");
            }
        }
        Ok(RawTree {
            left,
            right,
            feature,
            cond,
            default_left,
            cover,
        })
    }
}
