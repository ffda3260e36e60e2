//! Why training, evaluation or scoring stopped: one error for the model
//! stage, shared by [`train`](mod@super::train), [`score`](mod@super::score)
//! and the streaming executor's scoring.

use chrono::NaiveDate;
use datafusion::error::DataFusionError;

use super::manifest::ManifestError;
use super::xgb::XgbError;
use crate::lake::LakeError;

/// Why training or evaluation stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Nothing backfilled for this feature set.
    #[error(
        "no feature snapshot for feature set {feature_set} in {lake}: \
         run `stockanomaly backfill` first"
    )]
    NoSnapshot { feature_set: String, lake: String },
    /// Too few dates for the splits.
    #[error(
        "the feature snapshot has {have} date(s) in range, the splits need at least {need} \
         ({valid} validation, {test} test and one training): backfill more dates or lower \
         --valid-days/--test-days"
    )]
    NotEnoughDates {
        have: usize,
        need: usize,
        valid: usize,
        test: usize,
    },
    /// A split without positive labels cannot train, stop early or be scored.
    #[error(
        "the {split} split ({from}..{to}) has no positive labels: check the lake's \
         `labels` table covers these dates (or choose other dates)"
    )]
    NoPositives {
        split: String,
        from: NaiveDate,
        to: NaiveDate,
    },
    /// No rows in the evaluated range.
    #[error("no feature rows between {from} and {to}")]
    NoRows { from: NaiveDate, to: NaiveDate },
    /// A parameter XGBoost or we refused.
    #[error("parameter {name}={value}: {reason}")]
    BadParam {
        name: String,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error("reading the training view: {0}")]
    Query(#[from] DataFusionError),
    #[error("reading the training view: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Xgb(#[from] XgbError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

impl TrainError {
    /// A mistake of the user's (flags, data not prepared) rather than a
    /// failure of the run.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            TrainError::NoSnapshot { .. }
                | TrainError::NotEnoughDates { .. }
                | TrainError::NoPositives { .. }
                | TrainError::NoRows { .. }
                | TrainError::BadParam { .. }
                | TrainError::Manifest(ManifestError::Mismatch { .. })
        )
    }
}
