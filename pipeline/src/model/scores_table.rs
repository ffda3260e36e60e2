//! The lake's `scores` table layout: one row per scored tick and
//! detector (see [`score`](mod@super::score)), also the layout of the streaming
//! detector's alerting rows.

use std::sync::Arc;

use arrow::array::{
    AsArray, BooleanArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Schema, SchemaRef, TimestampMicrosecondType, UInt32Type,
};
use arrow::error::ArrowError;

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

/// A `scores` batch's columns, typed and looked up by name once per batch.
#[derive(Debug, Clone, Copy)]
pub struct ScoresView<'a> {
    /// Event time, µs UTC.
    pub ts: &'a TimestampMicrosecondArray,
    /// Symbol.
    pub symbol: &'a StringArray,
    /// Sequence number within `(symbol, ts)`.
    pub seq: &'a UInt32Array,
    /// The detector's score.
    pub score: &'a Float64Array,
    /// Whether the score reaches the threshold.
    pub alert: &'a BooleanArray,
    /// The threshold.
    pub threshold: &'a Float64Array,
    /// Why an alert fired.
    pub reason: &'a StringArray,
    /// A model alert's top SHAP contributions (JSON).
    pub top_shap: &'a StringArray,
}

impl<'a> ScoresView<'a> {
    /// The columns of `batch`, which must have the [`scores_schema`]'s
    /// columns (by name, of their types).
    pub fn new(batch: &'a RecordBatch) -> Result<Self, ArrowError> {
        let get = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("scores: no `{name}` column")))
        };
        let wrong =
            |name: &str| ArrowError::SchemaError(format!("scores: `{name}` of another type"));
        let f64s = |name: &str| {
            get(name)?
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| wrong(name))
        };
        let text = |name: &str| get(name)?.as_string_opt::<i32>().ok_or_else(|| wrong(name));
        Ok(Self {
            ts: get(tick_col::TS)?
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| wrong(tick_col::TS))?,
            symbol: text(tick_col::SYMBOL)?,
            seq: get(tick_col::SEQ)?
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| wrong(tick_col::SEQ))?,
            score: f64s(col::SCORE)?,
            alert: get(col::ALERT)?
                .as_boolean_opt()
                .ok_or_else(|| wrong(col::ALERT))?,
            threshold: f64s(col::THRESHOLD)?,
            reason: text(col::REASON)?,
            top_shap: text(col::TOP_SHAP)?,
        })
    }
}
