//! The lake's `cases` table: the cases a model's run opened, one row per
//! case, under `cases/model_version=<version>/date=<start date>/`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;

use super::cases::{Case, CaseLabels};
use crate::tick::ts_type;

/// Column names of the `cases` table.
pub mod col {
    /// Deterministic id (symbol and first alert's key).
    pub const CASE_ID: &str = "case_id";
    /// The case's symbol.
    pub const SYMBOL: &str = "symbol";
    /// First alert's event time (UTC; picks the `date=` partition).
    pub const START_TS: &str = "start_ts";
    /// Last alert's event time (UTC).
    pub const END_TS: &str = "end_ts";
    /// Ticks on which a detector alerted.
    pub const ALERTS: &str = "alerts";
    /// Of those, the model's.
    pub const MODEL_ALERTS: &str = "model_alerts";
    /// Highest model score (NULL without model alerts).
    pub const PEAK_SCORE: &str = "peak_score";
    /// Event time of the peak model alert.
    pub const PEAK_TS: &str = "peak_ts";
    /// Mean score of the model alerts.
    pub const MEAN_SCORE: &str = "mean_score";
    /// Highest case score reached.
    pub const CASE_SCORE: &str = "case_score";
    /// Event time of the alert that opened the case.
    pub const OPENED_TS: &str = "opened_ts";
    /// The detectors that fired, comma-separated (`model`, rule names).
    pub const DETECTORS: &str = "detectors";
    /// The manipulation kinds those detectors tell, comma-separated (NULL
    /// when none tells one).
    pub const LIKELY_KINDS: &str = "likely_kinds";
    /// The model's top SHAP contributions at the peak (JSON).
    pub const TOP_SHAP: &str = "top_shap";
    /// `open` or `closed`.
    pub const STATUS: &str = "status";
}

/// Schema of the `cases` files (`model_version` and `date` come from the
/// folder names).
pub fn cases_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::CASE_ID, DataType::Utf8, false),
        Field::new(col::SYMBOL, DataType::Utf8, false),
        Field::new(col::START_TS, ts_type(), false),
        Field::new(col::END_TS, ts_type(), false),
        Field::new(col::ALERTS, DataType::UInt32, false),
        Field::new(col::MODEL_ALERTS, DataType::UInt32, false),
        Field::new(col::PEAK_SCORE, DataType::Float64, true),
        Field::new(col::PEAK_TS, ts_type(), true),
        Field::new(col::MEAN_SCORE, DataType::Float64, true),
        Field::new(col::CASE_SCORE, DataType::Float64, false),
        Field::new(col::OPENED_TS, ts_type(), false),
        Field::new(col::DETECTORS, DataType::Utf8, false),
        Field::new(col::LIKELY_KINDS, DataType::Utf8, true),
        Field::new(col::TOP_SHAP, DataType::Utf8, true),
        Field::new(col::STATUS, DataType::Utf8, false),
    ]))
}

/// The opened `cases` as rows of [`cases_schema`], their detectors and
/// kinds named by `labels`. Cases that never opened are left out.
pub fn cases_batch(cases: &[Case], labels: &CaseLabels) -> Result<RecordBatch, ArrowError> {
    let opened: Vec<&Case> = cases.iter().filter(|c| c.opened_us.is_some()).collect();
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let has_model = |c: &Case| c.stats.model_alerts > 0;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            opened.iter().map(|c| &c.case_id),
        )),
        Arc::new(StringArray::from_iter_values(
            opened.iter().map(|c| &c.symbol),
        )),
        ts(opened.iter().map(|c| Some(c.start_us)).collect()),
        ts(opened.iter().map(|c| Some(c.end_us)).collect()),
        Arc::new(UInt32Array::from_iter_values(
            opened.iter().map(|c| c.alerts),
        )),
        Arc::new(UInt32Array::from_iter_values(
            opened.iter().map(|c| c.stats.model_alerts),
        )),
        Arc::new(Float64Array::from_iter(
            opened
                .iter()
                .map(|c| has_model(c).then(|| f64::from(c.stats.peak))),
        )),
        ts(opened.iter().map(|c| c.peak_us).collect()),
        Arc::new(Float64Array::from_iter(opened.iter().map(|c| {
            has_model(c).then(|| c.stats.sum / f64::from(c.stats.model_alerts))
        }))),
        Arc::new(Float64Array::from_iter_values(
            opened.iter().map(|c| c.score),
        )),
        ts(opened.iter().map(|c| c.opened_us).collect()),
        Arc::new(StringArray::from_iter_values(
            opened.iter().map(|c| labels.detectors(c.detectors)),
        )),
        Arc::new(StringArray::from_iter(
            opened.iter().map(|c| labels.likely_kinds(c.detectors)),
        )),
        Arc::new(StringArray::from_iter(
            opened.iter().map(|c| c.top_shap.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            opened.iter().map(|c| c.status()),
        )),
    ];
    RecordBatch::try_new(cases_schema(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cases::{AlertIn, CaseRule, CaseTracker};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt32Type;

    #[test]
    fn opened_cases_become_rows_with_their_detectors_and_evidence() {
        let s = 1_000_000;
        let mut t = CaseTracker::new(CaseRule::open_all(300 * s));
        let shap = r#"[{"contribution":1.0,"feature":"x","value":2.0}]"#;
        t.alert(
            "A",
            AlertIn {
                ts_us: 10 * s,
                seq: 3,
                model_score: None,
                detectors: 0b10,
                top_shap: None,
                partition: None,
            },
        );
        t.alert(
            "A",
            AlertIn {
                ts_us: 20 * s,
                seq: 0,
                model_score: Some(0.75),
                detectors: 0b11,
                top_shap: Some(shap),
                partition: None,
            },
        );
        // B: a rule alone, never opened.
        t.alert(
            "B",
            AlertIn {
                ts_us: 10 * s,
                seq: 0,
                model_score: None,
                detectors: 0b10,
                top_shap: None,
                partition: None,
            },
        );
        let cases = t.finish();
        let labels = CaseLabels::new(
            vec!["model".into(), "zscore".into()],
            vec![vec![], vec!["pump_and_dump".into(), "spoofing".into()]],
        );
        let b = cases_batch(&cases, &labels).unwrap();
        assert_eq!(b.num_rows(), 1);
        let str_col = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .value(0)
                .to_owned()
        };
        assert_eq!(str_col(col::SYMBOL), "A");
        assert_eq!(str_col(col::DETECTORS), "model,zscore");
        assert_eq!(str_col(col::LIKELY_KINDS), "pump_and_dump,spoofing");
        // The model alone tells no kind.
        assert_eq!(labels.likely_kinds(0b01), None);
        assert_eq!(str_col(col::TOP_SHAP), shap);
        assert_eq!(str_col(col::STATUS), "open");
        assert_eq!(
            str_col(col::CASE_ID),
            crate::model::cases::case_id("A", 10 * s, 3)
        );
        let alerts = b
            .column_by_name(col::ALERTS)
            .unwrap()
            .as_primitive::<UInt32Type>();
        assert_eq!(alerts.value(0), 2);
        let opened = b.column_by_name(col::OPENED_TS).unwrap();
        assert!(opened.is_valid(0));
    }
}
