//! A step's alerts as the rows the sinks store: one per alerting tick and
//! detector, with the tick's features and the scorer's explanation as JSON.
//!
//! In a burst most ticks of a batch alert (8,322 of 10,644 in the latency
//! run's slowest batch), so this is per-tick work on the commit path: the
//! features object is written straight from the feature columns into one
//! string per alert (keys escaped once per step), and the explanation is
//! the scorer's own JSON text, not parsed back into a tree.

use std::fmt::Write as _;

use arrow::array::{Array, AsArray, Float64Array};
use arrow::datatypes::Float64Type;

use super::driver::DriverError;
use super::executor::{Executor, Step};
use crate::model::scores_table::ScoresView;
use crate::sinks::json_text::JsonText;
use crate::sinks::AlertRow;

/// The alerts of a step, one row per alerting tick and detector.
pub(super) fn alert_rows(
    executor: &Executor,
    step: &Step,
    topic: &str,
) -> Result<Vec<AlertRow>, DriverError> {
    let Some(features) = &step.features else {
        return Ok(Vec::new());
    };
    let names = executor.catalog().feature_names();
    let span = i64::try_from(executor.catalog().lookback().time.as_micros()).unwrap_or(0);
    let delay_ticks = u32::try_from(executor.catalog().delay()).unwrap_or(u32::MAX);
    // The feature columns by name, once per step.
    let columns = names
        .iter()
        .map(|n| {
            features
                .column_by_name(n)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .ok_or_else(|| {
                    super::ExecutorError::from(arrow::error::ArrowError::SchemaError(format!(
                        "feature rows without a DOUBLE `{n}`"
                    )))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let objects = FeatureObjects::new(&names, &columns);
    let mut out = Vec::new();
    for (detector, scores) in executor.detectors().iter().zip(&step.scores) {
        let v = ScoresView::new(scores).map_err(super::ExecutorError::from)?;
        let (alert, score, threshold, reason, shap) =
            (v.alert, v.score, v.threshold, v.reason, v.top_shap);
        let (ts, sym, seq) = (v.ts, v.symbol, v.seq);
        let version = detector.version();
        for i in 0..scores.num_rows() {
            if !alert.value(i) {
                continue;
            }
            let (p, o) = step.sources.get(i).copied().unwrap_or((-1, -1));
            out.push(AlertRow {
                model_version: version.clone(),
                detector: detector.kind(),
                symbol: sym.value(i).to_owned(),
                ts_us: ts.value(i),
                seq: seq.value(i),
                score: score.value(i),
                threshold: threshold.value(i),
                reason: (!reason.is_null(i)).then(|| reason.value(i).to_owned()),
                // The scorer wrote it with serde_json (`Explanation::json`).
                top_features: (!shap.is_null(i))
                    .then(|| JsonText::written(shap.value(i).to_owned())),
                features: Some(objects.row(i)),
                evidence_start_us: Some(ts.value(i) - span),
                evidence_end_us: Some(ts.value(i)),
                source: topic.to_owned(),
                source_partition: (p >= 0).then_some(p),
                source_offset: (o >= 0).then_some(o),
                delay_ticks,
            });
        }
    }
    Ok(out)
}

/// Rows of feature columns as JSON objects: what a `serde_json::Map` of
/// them serialised to (keys in name order, a missing or non-finite value
/// `null`, numbers as serde_json writes an `f64`), written directly.
struct FeatureObjects<'a> {
    /// Each feature's column and its `"name":`, in name order.
    keys: Vec<(&'a Float64Array, String)>,
    /// A row's likely length, to allocate once.
    guess: usize,
}

impl<'a> FeatureObjects<'a> {
    fn new(names: &[&str], columns: &[&'a Float64Array]) -> Self {
        // Names are unique (the catalog refuses a feature defined twice).
        let mut keys: Vec<(&str, &'a Float64Array)> =
            names.iter().copied().zip(columns.iter().copied()).collect();
        keys.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let keys: Vec<(&'a Float64Array, String)> = keys
            .into_iter()
            .map(|(n, c)| (c, format!("{}:", serde_json::Value::from(n))))
            .collect();
        let guess = 2 + keys.iter().map(|(_, k)| k.len() + 21).sum::<usize>();
        FeatureObjects { keys, guess }
    }

    fn row(&self, i: usize) -> JsonText {
        let mut s = String::with_capacity(self.guess);
        s.push('{');
        for (k, (column, key)) in self.keys.iter().enumerate() {
            if k > 0 {
                s.push(',');
            }
            s.push_str(key);
            match serde_json::Number::from_f64(column.value(i)) {
                Some(n) if !column.is_null(i) => {
                    // Writing into a String cannot fail.
                    let _ = write!(s, "{n}");
                }
                _ => s.push_str("null"),
            }
        }
        s.push('}');
        JsonText::written(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the rows were before: a map of owned keys to values.
    fn as_map(names: &[&str], columns: &[&Float64Array], i: usize) -> String {
        let values: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(columns)
            .map(|(n, c)| {
                let v = if c.is_null(i) || !c.value(i).is_finite() {
                    serde_json::Value::Null
                } else {
                    serde_json::json!(c.value(i))
                };
                ((*n).to_owned(), v)
            })
            .collect();
        serde_json::Value::Object(values).to_string()
    }

    fn value() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            Just(Some(f64::NAN)),
            Just(Some(f64::INFINITY)),
            Just(Some(-0.0)),
            Just(Some(3.0)),
            Just(Some(1e308)),
            Just(Some(5e-324)),
            any::<f64>().prop_map(Some),
            (-1e6f64..1e6).prop_map(Some),
        ]
    }

    proptest! {
        #[test]
        fn rows_are_the_maps_text(
            rows in proptest::collection::vec(proptest::collection::vec(value(), 6), 1..8),
        ) {
            // Unsorted names, with escapes.
            let names = ["ret_1", "a\"quote", "z\u{e9}", "ret_5m", "B", "tab\t"];
            let columns: Vec<Float64Array> = (0..names.len())
                .map(|c| rows.iter().map(|r| r[c]).collect())
                .collect();
            let refs: Vec<&Float64Array> = columns.iter().collect();
            let objects = FeatureObjects::new(&names, &refs);
            for i in 0..rows.len() {
                let text = objects.row(i);
                prop_assert_eq!(text.as_str(), as_map(&names, &refs, i));
            }
        }
    }
}
