//! The lake's `scores` table layout: one row per scored tick and
//! detector (see [`score`](mod@super::score)), also the layout of the streaming
//! detector's alerting rows.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::tick::{col as tick_col, ts_type};

/// Column names of the `scores` table.
pub mod col {
    /// The detector's score (a probability for models; rules choose).
    pub const SCORE: &str = "score";
    /// Whether the score reaches the threshold.
    pub const ALERT: &str = "alert";
    /// The detector's threshold.
    pub const THRESHOLD: &str = "threshold";
    /// `model` or `rule`.
    pub const DETECTOR: &str = "detector";
    /// Why an alert fired (NULL for other rows).
    pub const REASON: &str = "reason";
    /// A model alert's largest SHAP contributions, as JSON (NULL otherwise).
    pub const TOP_SHAP: &str = "top_shap";
    /// The detector version (a partition column: `model_version=...`).
    pub const MODEL_VERSION: &str = "model_version";
}

/// Schema of the `scores` files (the `model_version` and `date` partition
/// columns come from folder names).
pub fn scores_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(tick_col::TS, ts_type(), false),
        Field::new(tick_col::SYMBOL, DataType::Utf8, false),
        Field::new(tick_col::SEQ, DataType::UInt32, false),
        Field::new(col::SCORE, DataType::Float64, true),
        Field::new(col::ALERT, DataType::Boolean, false),
        Field::new(col::THRESHOLD, DataType::Float64, false),
        Field::new(col::DETECTOR, DataType::Utf8, false),
        Field::new(col::REASON, DataType::Utf8, true),
        Field::new(col::TOP_SHAP, DataType::Utf8, true),
    ]))
}
