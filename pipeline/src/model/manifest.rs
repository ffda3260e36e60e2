//! The artifact folder's `manifest.json`: everything needed to use and audit
//! `model.json` beside it (feature names in order, the feature-set hash, the
//! data and parameters it was trained on, the threshold and the metrics).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use crate::features::Catalog;

/// File name of the manifest inside an artifact folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the XGBoost model inside an artifact folder.
pub const MODEL_FILE: &str = "model.json";
/// The XGBoost release the model was trained with (`xgboost_lib-sys`).
pub const XGBOOST_VERSION: &str = "3.4.1";

/// One time split of the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// `train`, `valid` or `test`.
    pub name: String,
    /// First date (inclusive).
    pub from: NaiveDate,
    /// Last date (inclusive).
    pub to: NaiveDate,
    /// Rows dropped at the start of the split by the embargo.
    pub embargoed_rows: u64,
    /// Rows used.
    pub rows: u64,
}

/// How the alert threshold was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum ThresholdRule {
    /// Best F1 on the validation split.
    BestF1,
    /// The lowest threshold whose validation precision reaches `target`.
    TargetPrecision { target: f64 },
    /// The lowest threshold whose validation alert-episode precision
    /// reaches `target` (see [`events`](super::events)).
    TargetEventPrecision { target: f64 },
    /// `target` was not reached on validation; best F1 was used instead.
    BestF1TargetMissed { target: f64 },
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Feature names in the order of the model's columns.
    pub features: Vec<String>,
    /// Content hash of the feature set (the catalog's `hash()`).
    pub feature_set: String,
    /// The lake root trained from.
    pub lake: String,
    /// Time splits, in order (train, valid, test).
    pub splits: Vec<SplitInfo>,
    /// Embargo after each split's end before the next split's rows, in
    /// seconds (the feature set's time lookback).
    pub embargo_secs: f64,
    /// XGBoost parameters as set (`eval_metric` comma-separated).
    pub params: BTreeMap<String, String>,
    /// Maximum rounds and early-stopping patience.
    pub max_rounds: u32,
    pub patience: u32,
    /// Rounds in `model.json`.
    pub rounds_trained: u32,
    /// 0-based round with the best validation `aucpr`; predict with the
    /// trees of rounds `0..=best_iteration` (Python:
    /// `iteration_range=(0, best_iteration + 1)`).
    pub best_iteration: u32,
    /// Validation `aucpr` at `best_iteration`, as XGBoost computed it.
    pub best_valid_aucpr: f64,
    /// Scores at or above this raise an alert.
    pub threshold: f32,
    pub threshold_rule: ThresholdRule,
    /// Metrics per split name.
    pub metrics: BTreeMap<String, Metrics>,
    /// When training finished (RFC 3339, UTC).
    pub created: String,
    pub xgboost_version: String,
    /// The model version (`xgb-` + a hash of `model.json`), as recorded
    /// with its scores and alerts.
    #[serde(default)]
    pub version: String,
    /// Importance per feature, in catalog order.
    #[serde(default)]
    pub importance: Vec<Importance>,
    /// Metrics of the rules (`queries/rules/`) on the same test rows, by
    /// rule name: the baseline the model should beat.
    #[serde(default)]
    pub baselines: BTreeMap<String, Metrics>,
    /// The feature set's largest `-- delay:` in ticks: the streaming
    /// detector scores a tick once this many later ticks of its symbol have
    /// arrived (a detection latency, reported by `detect`).
    #[serde(default)]
    pub delay_ticks: u64,
    /// Whether rows were weighed so that every event counts the same
    /// (`train --balance-events`).
    #[serde(default)]
    pub balance_events: bool,
    /// When an alert episode becomes a case for an analyst, learnt on the
    /// validation split (`None`: a model trained before cases; every
    /// episode opens, see [`Manifest::case_rule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_rule: Option<super::cases::CaseRule>,
}

/// How much the model uses one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    pub feature: String,
    /// Average gain of the splits on the feature (0 when never split on).
    pub gain: f64,
    /// Mean |SHAP contribution| over the test split's rows.
    pub mean_abs_shap: f64,
}

/// A manifest that cannot be read or does not fit the catalog.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a model manifest: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The model's features differ from the catalog's; `detail` names them.
    #[error("the model does not fit the feature catalog: {detail}")]
    Mismatch { detail: String },
}

impl Manifest {
    /// The rule cases open by: the learnt one, or every alert episode for
    /// a model trained before cases.
    pub fn case_rule(&self) -> super::cases::CaseRule {
        self.case_rule.clone().unwrap_or_else(|| {
            super::cases::CaseRule::open_all(super::events::DEFAULT_EPISODE_GAP_US)
        })
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ManifestError::Parse { path, source })
    }

    /// Writes `dir/manifest.json` (pretty-printed).
    pub fn write(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let mut text =
            serde_json::to_string_pretty(self).map_err(|source| ManifestError::Parse {
                path: path.clone(),
                source,
            })?;
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| ManifestError::Io { path, source })
    }

    /// Refuses a catalog whose feature names (in order) or hash differ from
    /// the model's, naming the first difference.
    pub fn check_catalog(&self, catalog: &Catalog) -> Result<(), ManifestError> {
        let ours: Vec<&str> = self.features.iter().map(String::as_str).collect();
        if let Some(detail) = feature_difference(&ours, &catalog.feature_names()) {
            return Err(ManifestError::Mismatch { detail });
        }
        if self.feature_set != catalog.hash() {
            return Err(ManifestError::Mismatch {
                detail: format!(
                    "the model was trained on feature set {}, the catalog's is {} \
                     (same feature names, different SQL): retrain, or use the queries \
                     the model was trained with",
                    self.feature_set,
                    catalog.hash()
                ),
            });
        }
        Ok(())
    }
}

/// The first difference between the model's feature list and the
/// catalog's, in words; `None` when they are equal.
pub fn feature_difference(model: &[&str], catalog: &[&str]) -> Option<String> {
    let missing: Vec<&str> = model
        .iter()
        .copied()
        .filter(|f| !catalog.contains(f))
        .collect();
    let extra: Vec<&str> = catalog
        .iter()
        .copied()
        .filter(|f| !model.contains(f))
        .collect();
    let quote = |v: &[&str]| {
        v.iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "the model's feature(s) {} are not in the catalog",
            quote(&missing)
        ));
    }
    if !extra.is_empty() {
        parts.push(format!(
            "the catalog's feature(s) {} are not in the model",
            quote(&extra)
        ));
    }
    if !parts.is_empty() {
        return Some(parts.join("; "));
    }
    if model.len() != catalog.len() {
        return Some(format!(
            "the model has {} feature columns, the catalog {} (a name repeats)",
            model.len(),
            catalog.len()
        ));
    }
    model
        .iter()
        .zip(catalog)
        .position(|(a, b)| a != b)
        .map(|i| {
            format!(
                "feature {} is `{}` in the model but `{}` in the catalog (same names, \
                 different order)",
                i + 1,
                model[i],
                catalog[i]
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_difference() {
        assert_eq!(feature_difference(&["a", "b"], &["a", "b"]), None);
        let d = feature_difference(&["a", "x"], &["a", "b"]).unwrap();
        assert!(d.contains("`x` are not in the catalog"), "{d}");
        assert!(d.contains("`b` are not in the model"), "{d}");
        let d = feature_difference(&["b", "a"], &["a", "b"]).unwrap();
        assert!(d.contains("feature 1 is `b` in the model but `a`"), "{d}");
    }
}
