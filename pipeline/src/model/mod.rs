//! The model stage: gradient-boosted trees that score feature rows.
//!
//! [`xgb`] is a small safe wrapper over XGBoost 3.4.1's C API (through the
//! raw `xgboost_lib-sys` bindings): Arrow columns in without a row copy,
//! training one round at a time, predictions, SHAP contributions and models in
//! XGBoost's JSON format, which Python's `xgboost` loads. All the `unsafe` of
//! the crate's XGBoost use lives there.

pub mod xgb;

pub use xgb::{Booster, DMatrix, EvalMetric, FeatureScore, PredictKind, XgbError};
