//! The model stage: gradient-boosted trees that score feature rows.
//!
//! [`xgb`] is a small safe wrapper over XGBoost 3.4.1's C API (through the
//! raw `xgboost_lib-sys` bindings): Arrow columns in without a row copy,
//! training one round at a time, predictions, SHAP contributions and models in
//! XGBoost's JSON format, which Python's `xgboost` loads. All the `unsafe` of
//! the crate's XGBoost use lives there.
//!
//! [`mod@train`] splits the `training` view by time, trains with early stopping
//! and writes an artifact folder (`model.json`, [`manifest`]); [`metrics`]
//! scores a model against labels.

pub mod case_table;
pub mod cases;
pub mod curves;
pub mod dates;
pub mod detectors;
pub mod error;
pub mod events;
pub mod manifest;
pub mod metrics;
mod model_json;
pub mod report;
pub mod rules;
pub mod score;
pub mod scores_table;
pub mod shap;
#[cfg(test)]
mod testing;
pub mod train;
pub mod trees;
pub mod xgb;

pub use events::{event_metrics, EventMetrics, LabelEvent};
pub use manifest::{Manifest, ManifestError};
pub use metrics::Metrics;
pub use rules::{Rule, RuleSet};
pub use score::{score, Detector, ModelDetector, ScoreOptions, ScoreSummary};
pub use train::{
    ablate, ablate_variants, context_files, evaluate, evaluate_rules, train, Ablation, TrainError,
    TrainOptions, Variant,
};
pub use xgb::{Booster, DMatrix, EvalMetric, FeatureScore, PredictKind, XgbError};
