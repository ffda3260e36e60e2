//! Batch scoring: a model or rules over the feature snapshot, written to the
//! lake's `scores` table.
//!
//! Each detector's scores of a date go to
//! `scores/model_version=<version>/date=<date>/`, one row per feature row:
//! the tick key, the score, whether it reaches the detector's threshold, and
//! for alerts the reason (a rule's text, or the model's largest SHAP
//! contributions). Scoring a date again replaces that detector's files for
//! the date. Dates are scored one at a time, so memory holds one date.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, RecordBatch, StringArray,
};
use arrow::compute::{cast, concat_batches, filter};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use chrono::NaiveDate;
use datafusion::error::DataFusionError;
use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::case_table::cases_batch;
use super::cases::{Case, CaseLabels, CaseTracker};
use super::dates::date_spans;
use super::error::TrainError;
use super::manifest::{Manifest, MODEL_FILE};
use super::rules::{hex, Rule};
use super::shap::TreeShap;
use super::trees::CompiledTrees;
use super::xgb::{Booster, DMatrix, PredictKind, XgbError};
use crate::features::{snapshot_session, Catalog};
use crate::lake::{replace_date, AppenderOptions, LakeRoot, TableSpec};
use crate::tick::col as tick_col;

pub use super::scores_table::{col, scores_schema};

/// The version of a model: `xgb-` and the first 12 hex digits of the
/// SHA-256 of its `model.json`. The same trees give the same version,
/// whoever trained them.
pub fn model_version(model_json: &[u8]) -> String {
    format!("xgb-{}", &hex(&Sha256::digest(model_json))[..12])
}

/// A trained model ready to score: its booster, manifest and version.
#[derive(Debug)]
pub struct ModelDetector {
    /// The artifact's manifest.
    pub manifest: Manifest,
    /// The trees.
    pub booster: Booster,
    /// [`model_version`] of its `model.json`.
    pub version: String,
    /// Predictions run in this many lanes of one XGBoost thread each
    /// (`None`: one call, XGBoost on every core).
    lanes: Option<usize>,
    /// The trees compiled for SHAP values (`None`: XGBoost's own, for a
    /// model [`TreeShap`] cannot explain).
    shap: Option<TreeShap>,
    /// The trees compiled for scores (`None`: XGBoost's, for a model
    /// [`CompiledTrees`] cannot score exactly).
    trees: Option<CompiledTrees>,
}

impl ModelDetector {
    /// Loads the artifact folder `dir` (`model.json`, `manifest.json`) and
    /// refuses it unless its features are the catalog's.
    pub fn load(dir: &Path, catalog: &Catalog) -> Result<Self, TrainError> {
        let manifest = Manifest::read(dir)?;
        manifest.check_catalog(catalog)?;
        let path = dir.join(MODEL_FILE);
        let bytes = std::fs::read(&path).map_err(|source| super::ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let booster = Booster::load_from_buffer(&bytes)?;
        let rounds = (0, manifest.best_iteration + 1);
        let features = catalog.feature_names().len();
        let shap = TreeShap::compile(&bytes, features, rounds);
        if shap.is_none() {
            tracing::info!(
                model = %path.display(),
                "SHAP explanations by XGBoost (a model the compiled explainer does not run)."
            );
        }
        let trees = CompiledTrees::compile(&bytes, features, rounds, &booster);
        if trees.is_none() {
            tracing::info!(
                model = %path.display(),
                "Scores by XGBoost (a model the compiled trees do not score exactly)."
            );
        }
        Ok(ModelDetector {
            manifest,
            booster,
            version: model_version(&bytes),
            lanes: None,
            shap,
            trees,
        })
    }

    /// Predicts on one thread: for a caller that computes on every core
    /// itself and predicts small batches often (the streaming executor),
    /// where XGBoost's thread teams would only spin between batches.
    pub fn single_threaded(&mut self) -> Result<(), XgbError> {
        self.booster.set_param("nthread", "1")?;
        self.lanes = Some(std::thread::available_parallelism().map_or(1, |n| n.get()));
        Ok(())
    }

    /// The trees used for scoring: up to the best iteration.
    pub fn rounds(&self) -> (u32, u32) {
        (0, self.manifest.best_iteration + 1)
    }

    /// Whether scores and explanations come from the compiled trees (both
    /// equal XGBoost's), not from calls into XGBoost.
    pub fn compiled(&self) -> (bool, bool) {
        (self.trees.is_some(), self.shap.is_some())
    }

    /// Scores feature columns (catalog order), straight from their
    /// buffers: the compiled trees, or XGBoost's in-place prediction (the
    /// same bits).
    pub fn predict(&self, columns: &[&Float64Array]) -> Result<Vec<f32>, XgbError> {
        if let Some(trees) = &self.trees {
            let lanes = self
                .lanes
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            return Ok(trees.predict(columns, lanes));
        }
        let rounds = Some(self.rounds());
        Ok(match self.lanes {
            Some(lanes) => {
                self.booster
                    .predict_in_lanes(columns, PredictKind::Value, rounds, lanes)?
                    .0
            }
            None => {
                self.booster
                    .predict_columns(columns, PredictKind::Value, rounds)?
                    .0
            }
        })
    }

    /// The `k` largest SHAP contributions (by magnitude) of each row, with
    /// the feature's value: per row, the JSON array stored in `top_shap`
    /// and the same contributions in words for `reason`.
    pub fn top_contributions(
        &self,
        columns: &[&Float64Array],
        names: &[&str],
        k: usize,
    ) -> Result<Vec<Explanation>, XgbError> {
        let rounds = Some(self.rounds());
        // `width` values a row, the first `features` of them the features'
        // (XGBoost's last is the bias).
        let (contribs, width, features) = match (&self.shap, self.lanes) {
            (Some(shap), lanes) => {
                let lanes = lanes
                    .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
                let width = shap.features();
                (shap.explain(columns, lanes), width, width)
            }
            (None, Some(lanes)) => {
                let (c, w) =
                    self.booster
                        .predict_in_lanes(columns, PredictKind::Contribs, rounds, lanes)?;
                (c, w, w.saturating_sub(1))
            }
            (None, None) => {
                let m = DMatrix::from_columns(columns, None, None)?;
                let (c, w) = self
                    .booster
                    .predict_with(&m, PredictKind::Contribs, rounds)?;
                (c, w, w.saturating_sub(1))
            }
        };
        let mut out = Vec::with_capacity(columns.first().map_or(0, |c| c.len()));
        let mut idx: Vec<usize> = Vec::with_capacity(width);
        let mut top: Vec<Contribution<'_>> = Vec::with_capacity(k);
        for (row, c) in contribs.chunks(width.max(1)).enumerate() {
            idx.clear();
            idx.extend(0..features);
            idx.sort_by(|&a, &b| c[b].abs().total_cmp(&c[a].abs()).then(a.cmp(&b)));
            top.clear();
            top.extend(idx.iter().take(k).map(|&i| {
                let col = columns[i];
                Contribution {
                    // Widened as `serde_json::Value` would: the stored JSON
                    // keeps the digits it always had.
                    contribution: f64::from(c[i]),
                    feature: names.get(i).copied().unwrap_or("?"),
                    value: (!col.is_null(row)).then(|| col.value(row)),
                }
            }));
            out.push(explain(&top)?);
        }
        Ok(out)
    }
}

/// A row's largest SHAP contributions, from
/// [`ModelDetector::top_contributions`].
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// `[{"contribution": .., "feature": .., "value": ..}, ..]`, largest
    /// first (the `top_shap` column).
    pub json: String,
    /// "model: price_z_30m +1.23, volume_z_30m +0.80" (the `reason`).
    pub reason: String,
}

/// The JSON and the words of one row's contributions.
fn explain(top: &[Contribution<'_>]) -> Result<Explanation, XgbError> {
    let json = serde_json::to_string(top).map_err(|e| XgbError::Unexpected {
        call: "top_contributions",
        detail: e.to_string(),
    })?;
    let mut reason = String::with_capacity(8 + 24 * top.len());
    reason.push_str("model: ");
    for (n, t) in top.iter().enumerate() {
        if n > 0 {
            reason.push_str(", ");
        }
        // A non-finite contribution is `null` in the JSON and NaN in words,
        // as the reason always said.
        let v = if t.contribution.is_finite() {
            t.contribution
        } else {
            f64::NAN
        };
        let _ = write!(reason, "{} {v:+.2}", t.feature);
    }
    Ok(Explanation { json, reason })
}

/// One entry of [`Explanation::json`]; fields in the order (alphabetical)
/// the JSON has always had.
#[derive(serde::Serialize)]
struct Contribution<'a> {
    contribution: f64,
    feature: &'a str,
    value: Option<f64>,
}

/// What scores ticks: a model or a rule.
#[derive(Debug)]
pub enum Detector {
    /// An XGBoost model.
    Model(Box<ModelDetector>),
    /// A rule file.
    Rule(Rule),
}

impl Detector {
    /// The version written with its scores.
    pub fn version(&self) -> String {
        match self {
            Detector::Model(m) => m.version.clone(),
            Detector::Rule(r) => r.version(),
        }
    }

    /// `model` or `rule`.
    pub fn kind(&self) -> &'static str {
        match self {
            Detector::Model(_) => "model",
            Detector::Rule(_) => "rule",
        }
    }

    /// A score at or above this alerts.
    pub fn threshold(&self) -> f64 {
        match self {
            Detector::Model(m) => f64::from(m.manifest.threshold),
            Detector::Rule(r) => r.threshold,
        }
    }

    /// `model`, or the rule's name: how a case lists its detectors.
    pub fn short_name(&self) -> String {
        match self {
            Detector::Model(_) => "model".to_owned(),
            Detector::Rule(r) => r.name.clone(),
        }
    }

    /// The manipulation kinds it tells: a rule's `-- kinds:`; none for the
    /// model (a binary classifier).
    pub fn kinds(&self) -> &[String] {
        match self {
            Detector::Model(_) => &[],
            Detector::Rule(r) => &r.kinds,
        }
    }

    /// How cases name `detectors` (in their bit order) and their kinds.
    pub fn case_labels(detectors: &[Detector]) -> CaseLabels {
        CaseLabels::new(
            detectors.iter().map(Detector::short_name).collect(),
            detectors.iter().map(|d| d.kinds().to_vec()).collect(),
        )
    }

    /// A name for tables and logs: the rule's name, or `model`.
    pub fn label(&self) -> String {
        match self {
            Detector::Model(m) => format!("model {}", m.version),
            Detector::Rule(r) => format!("rule {}", r.name),
        }
    }
}

/// What to score.
#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    /// First date (the snapshot's first by default).
    pub from: Option<NaiveDate>,
    /// Last date, inclusive (the snapshot's last by default).
    pub to: Option<NaiveDate>,
    /// SHAP contributions kept per model alert (0: none).
    pub top_shap: usize,
}

/// What a scoring run did, per detector.
#[derive(Debug, Clone, Default)]
pub struct ScoreSummary {
    /// `(detector label, version, rows scored, alerts)`.
    pub detectors: Vec<(String, String, u64, u64)>,
    /// Dates scored.
    pub dates: Vec<NaiveDate>,
    /// With a model: `(cases opened, alert episodes)` written to `cases/`.
    pub cases: Option<(u64, u64)>,
}

/// Scores the snapshot's dates in range with every detector and writes
/// `scores/`; `bar` counts dates.
pub async fn score(
    root: &LakeRoot,
    catalog: &Catalog,
    detectors: &[Detector],
    options: &ScoreOptions,
    bar: &ProgressBar,
) -> Result<ScoreSummary, TrainError> {
    let all = date_spans(&snapshot_session(root, catalog, None).await?).await?;
    if all.is_empty() {
        return Err(TrainError::NoSnapshot {
            feature_set: catalog.hash().to_owned(),
            lake: root.to_string(),
        });
    }
    let dates: Vec<NaiveDate> = all
        .iter()
        .map(|d| d.date)
        .filter(|d| options.from.is_none_or(|f| *d >= f))
        .filter(|d| options.to.is_none_or(|t| *d <= t))
        .collect();
    if dates.is_empty() {
        return Err(TrainError::NoRows {
            from: options.from.unwrap_or(all[0].date),
            to: options.to.unwrap_or(all[all.len() - 1].date),
        });
    }
    bar.set_length(dates.len() as u64);
    let mut summary = ScoreSummary {
        detectors: detectors
            .iter()
            .map(|d| (d.label(), d.version(), 0, 0))
            .collect(),
        dates: Vec::new(),
        cases: None,
    };
    let table = TableSpec::scores();
    // Cases join the alerts of every detector of the run; they are the
    // model's (its case rule, its version), so a run without a model has
    // none.
    let mut cases = detectors.iter().find_map(|d| match d {
        Detector::Model(m) => Some(RunCases {
            version: m.version.clone(),
            tracker: CaseTracker::new(m.manifest.case_rule()),
            done: Vec::new(),
        }),
        Detector::Rule(_) => None,
    });
    for &date in &dates {
        let ctx = snapshot_session(root, catalog, Some((date, date))).await?;
        let features = read_features(&ctx, catalog).await?;
        let mut batches = Vec::with_capacity(detectors.len());
        for (detector, totals) in detectors.iter().zip(&mut summary.detectors) {
            let batch = score_batch(&ctx, catalog, detector, &features, options.top_shap).await?;
            let alerts = super::scores_table::ScoresView::new(&batch)?
                .alert
                .true_count();
            totals.2 += batch.num_rows() as u64;
            totals.3 += alerts as u64;
            let spec = table.sub_table(&detector.version());
            store_scores(root, &spec, date, batch.clone()).await?;
            batches.push(batch);
        }
        if let Some(c) = &mut cases {
            c.feed(detectors, &batches)?;
        }
        tracing::info!(%date, rows = features.num_rows(), "Scored.");
        summary.dates.push(date);
        bar.inc(1);
    }
    if let Some(c) = cases {
        summary.cases = Some(c.store(root, detectors, &dates).await?);
    }
    Ok(summary)
}

/// The cases of a `score` run being formed, date after date.
struct RunCases {
    version: String,
    tracker: CaseTracker,
    /// Cases over, in the order they ended.
    done: Vec<Case>,
}

impl RunCases {
    /// Takes one date's scores (one batch per detector, the same rows in
    /// `(symbol, ts, seq)` order).
    fn feed(&mut self, detectors: &[Detector], batches: &[RecordBatch]) -> Result<(), TrainError> {
        let is_model: Vec<bool> = detectors
            .iter()
            .map(|d| matches!(d, Detector::Model(_)))
            .collect();
        let mut touched = Vec::new();
        self.tracker
            .feed_scores(&is_model, batches, None, &mut self.done, &mut touched)?;
        Ok(())
    }

    /// Writes the opened cases, each under its start date, replacing every
    /// scored date's cases; returns how many opened of how many episodes.
    async fn store(
        self,
        root: &LakeRoot,
        detectors: &[Detector],
        dates: &[NaiveDate],
    ) -> Result<(u64, u64), TrainError> {
        let mut all = self.done;
        all.extend(self.tracker.finish());
        let labels = Detector::case_labels(detectors);
        let spec = TableSpec::cases().sub_table(&self.version);
        let mut opened = 0u64;
        for &date in dates {
            let of_date: Vec<Case> = all
                .iter()
                .filter(|c| {
                    chrono::DateTime::from_timestamp_micros(c.start_us)
                        .is_some_and(|d| d.date_naive() == date)
                })
                .cloned()
                .collect();
            let batch = cases_batch(&of_date, &labels)?;
            opened += batch.num_rows() as u64;
            let date = date.format("%Y-%m-%d").to_string();
            replace_date(root, &spec, &date, batch, AppenderOptions::default()).await?;
        }
        Ok((opened, all.len() as u64))
    }
}

/// Replaces a detector's scores of `date` with `batch`: written first, the
/// old files removed after, so a failed write leaves the old scores whole
/// (they used to be deleted first, and a failure left the date empty).
async fn store_scores(
    root: &LakeRoot,
    spec: &TableSpec,
    date: NaiveDate,
    batch: RecordBatch,
) -> Result<(), TrainError> {
    let date = date.format("%Y-%m-%d").to_string();
    replace_date(root, spec, &date, batch, AppenderOptions::default()).await?;
    Ok(())
}

/// The key and feature columns of the `features` view, in key order.
async fn read_features(
    ctx: &datafusion::prelude::SessionContext,
    catalog: &Catalog,
) -> Result<RecordBatch, TrainError> {
    let mut select = vec![
        tick_col::TS.to_owned(),
        tick_col::SYMBOL.to_owned(),
        tick_col::SEQ.to_owned(),
    ];
    select.extend(
        catalog
            .feature_names()
            .iter()
            .map(|n| format!("\"{}\"", n.replace('"', "\"\""))),
    );
    let df = ctx
        .sql(&format!(
            "SELECT {} FROM features ORDER BY symbol, ts, seq",
            select.join(", ")
        ))
        .await?;
    let schema = df.schema().inner().clone();
    let batches = df.collect().await?;
    Ok(concat_batches(&schema, &batches)?)
}

fn rows_err(detail: String) -> TrainError {
    TrainError::Query(DataFusionError::Execution(detail))
}

/// One detector's `scores` rows for `features` (key + features).
pub(crate) async fn score_batch(
    ctx: &datafusion::prelude::SessionContext,
    catalog: &Catalog,
    detector: &Detector,
    features: &RecordBatch,
    top_shap: usize,
) -> Result<RecordBatch, TrainError> {
    let n = features.num_rows();
    let threshold = detector.threshold();
    let (score, alert, reason, shap): (Float64Array, BooleanArray, StringArray, StringArray) =
        match detector {
            Detector::Model(model) => {
                let cols: Vec<Float64Array> = features.columns()[3..]
                    .iter()
                    .map(|c| {
                        Ok(cast(c, &DataType::Float64)?
                            .as_primitive::<Float64Type>()
                            .clone())
                    })
                    .collect::<Result<_, TrainError>>()?;
                let refs: Vec<&Float64Array> = cols.iter().collect();
                let scores = model.predict(&refs)?;
                // Compare in f32, as training chose the threshold among f32s.
                let t32 = model.manifest.threshold;
                let alert: BooleanArray = scores.iter().map(|&s| Some(s >= t32)).collect();
                let (reason, shap) = if top_shap > 0 && alert.true_count() > 0 {
                    let picked: Vec<Float64Array> = cols
                        .iter()
                        .map(|c| Ok(filter(c, &alert)?.as_primitive::<Float64Type>().clone()))
                        .collect::<Result<_, TrainError>>()?;
                    let picked_refs: Vec<&Float64Array> = picked.iter().collect();
                    let names = catalog.feature_names();
                    let top = model.top_contributions(&picked_refs, &names, top_shap)?;
                    let mut top = top.into_iter();
                    let mut reasons: Vec<Option<String>> = Vec::with_capacity(n);
                    let mut shaps: Vec<Option<String>> = Vec::with_capacity(n);
                    for a in alert.values().iter() {
                        // The contributions are of the alert rows, in order.
                        match if a { top.next() } else { None } {
                            Some(e) => {
                                reasons.push(Some(e.reason));
                                shaps.push(Some(e.json));
                            }
                            None => {
                                reasons.push(None);
                                shaps.push(None);
                            }
                        }
                    }
                    (StringArray::from(reasons), StringArray::from(shaps))
                } else {
                    let reasons: StringArray = alert
                        .values()
                        .iter()
                        .map(|a| a.then(|| format!("model score at or above {t32}")))
                        .collect();
                    (reasons, StringArray::new_null(n))
                };
                let score: Float64Array = scores.iter().map(|&s| Some(f64::from(s))).collect();
                (score, alert, reason, shap)
            }
            Detector::Rule(rule) => {
                let (score, reason) = run_rule(ctx, rule, n, None).await?;
                let alert: BooleanArray = score
                    .iter()
                    .map(|s| Some(s.is_some_and(|s| s >= threshold)))
                    .collect();
                (score, alert, reason, StringArray::new_null(n))
            }
        };
    // Reasons only for alerts.
    let reason: StringArray = reason
        .iter()
        .zip(alert.values().iter())
        .map(|(r, a)| if a { r } else { None })
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::clone(features.column(0)),
        Arc::clone(features.column(1)),
        Arc::clone(features.column(2)),
        Arc::new(score),
        Arc::new(alert),
        Arc::new(Float64Array::from(vec![threshold; n])),
        Arc::new(StringArray::from(vec![detector.kind(); n])),
        Arc::new(reason),
        Arc::new(shap),
    ];
    Ok(RecordBatch::try_new(scores_schema(), columns)?)
}

/// A rule's score and reason for every row of the session's `features`
/// view, in key order (NULL where the rule returns nothing).
pub async fn run_rule(
    ctx: &datafusion::prelude::SessionContext,
    rule: &Rule,
    expected_rows: usize,
    after_us: Option<i64>,
) -> Result<(Float64Array, StringArray), TrainError> {
    let rule_err =
        |e: DataFusionError| rows_err(format!("rule {} ({}): {e}", rule.name, rule.path.display()));
    let view = ctx.sql(&rule.sql).await.map_err(rule_err)?.into_view();
    let name = "rule_output";
    ctx.deregister_table(name).map_err(rule_err)?;
    ctx.register_table(name, view).map_err(rule_err)?;
    let embargo = after_us
        .map(|t| format!(" WHERE CAST(f.ts AS BIGINT) > {t}"))
        .unwrap_or_default();
    let batches = ctx
        .sql(&format!(
            "SELECT CAST(r.score AS DOUBLE) AS score, CAST(r.reason AS VARCHAR) AS reason \
             FROM features f LEFT JOIN rule_output r \
             ON f.symbol = r.symbol AND f.ts = r.ts AND f.seq = r.seq{embargo} \
             ORDER BY f.symbol, f.ts, f.seq"
        ))
        .await
        .map_err(rule_err)?
        .collect()
        .await
        .map_err(rule_err)?;
    let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| {
        Arc::new(Schema::new(vec![
            Field::new("score", DataType::Float64, true),
            Field::new("reason", DataType::Utf8, true),
        ]))
    });
    let all = concat_batches(&schema, &batches)?;
    if all.num_rows() != expected_rows {
        return Err(rows_err(format!(
            "rule {} ({}) returns some ticks more than once ({} rows for {} ticks): \
             it must return each tick key at most once",
            rule.name,
            rule.path.display(),
            all.num_rows(),
            expected_rows
        )));
    }
    let score = all.column(0).as_primitive::<Float64Type>().clone();
    let reason = cast(all.column(1), &DataType::Utf8)?
        .as_string::<i32>()
        .clone();
    Ok((score, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_name_the_trees() {
        let a = model_version(b"{\"trees\": 1}");
        assert!(a.starts_with("xgb-") && a.len() == 16, "{a}");
        assert_ne!(a, model_version(b"{\"trees\": 2}"));
        assert_eq!(a, model_version(b"{\"trees\": 1}"));
    }

    #[test]
    fn explanations_keep_the_json_and_words_they_always_had() {
        // What the JSON was built with before (serde_json::json! of the f32
        // contribution), and its reason read back from that JSON.
        let cases: [(f32, &str, Option<f64>); 4] = [
            (1.5, "price_z_30m", Some(5.0)),
            (-0.1, "ret_1", None),
            (f32::NAN, "gap", Some(f64::NAN)),
            (3.4028235e38, "big", Some(-1e-300)),
        ];
        let before: Vec<serde_json::Value> = cases
            .iter()
            .map(|&(c, f, v)| serde_json::json!({"feature": f, "value": v, "contribution": c}))
            .collect();
        let before = serde_json::Value::Array(before).to_string();
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&before).unwrap();
        let words: Vec<String> = parsed
            .iter()
            .map(|v| {
                format!(
                    "{} {:+.2}",
                    v["feature"].as_str().unwrap(),
                    v["contribution"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        let top: Vec<Contribution<'_>> = cases
            .iter()
            .map(|&(c, feature, value)| Contribution {
                contribution: f64::from(c),
                feature,
                value,
            })
            .collect();
        let e = explain(&top).unwrap();
        assert_eq!(e.json, before);
        assert_eq!(e.reason, format!("model: {}", words.join(", ")));
        assert!(e.json.contains("-0.10000000149011612"), "{}", e.json);
    }

    /// Rows of `scores` for one day, `n` of them, scored `score`.
    fn scores_rows(day_us: i64, n: usize, score: f64) -> RecordBatch {
        use arrow::array::{StringArray, TimestampMicrosecondArray, UInt32Array};
        let cols: Vec<ArrayRef> = vec![
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..n).map(|i| day_us + i as i64))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values((0..n).map(|_| "AAPL"))),
            Arc::new(UInt32Array::from_iter_values((0..n).map(|_| 0))),
            Arc::new(Float64Array::from_iter_values((0..n).map(|_| score))),
            Arc::new(BooleanArray::from_iter((0..n).map(|_| Some(false)))),
            Arc::new(Float64Array::from_iter_values((0..n).map(|_| 0.9))),
            Arc::new(StringArray::from_iter_values((0..n).map(|_| "rule"))),
            Arc::new(StringArray::from_iter((0..n).map(|_| None::<&str>))),
            Arc::new(StringArray::from_iter((0..n).map(|_| None::<&str>))),
        ];
        RecordBatch::try_new(scores_schema(), cols).unwrap()
    }

    /// Files under the date's folder of `spec`.
    fn files(dir: &Path, spec: &TableSpec) -> Vec<String> {
        let folder = dir.join(&spec.name).join("date=2024-03-01");
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// `score` deleted a date's files before writing the new ones: a write
    /// that failed (here: rows the table refuses) left the date with no
    /// scores at all. Now the old files stay until the new ones are there.
    #[tokio::test]
    async fn a_failed_write_keeps_the_dates_old_scores() {
        let dir = tempfile::tempdir().unwrap();
        let root = LakeRoot::parse(dir.path().to_str().unwrap()).unwrap();
        let spec = TableSpec::scores().sub_table("rules-test");
        let date = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        let day_us = 1_709_251_200_000_000;
        store_scores(&root, &spec, date, scores_rows(day_us, 10, 0.1))
            .await
            .unwrap();
        let old = files(dir.path(), &spec);
        assert_eq!(old.len(), 1, "{old:?}");
        // A batch that cannot be written: one column short.
        let bad = scores_rows(day_us, 10, 0.2)
            .project(&[0, 1, 2, 3, 4, 5, 6, 7])
            .unwrap();
        assert!(store_scores(&root, &spec, date, bad).await.is_err());
        assert_eq!(
            files(dir.path(), &spec),
            old,
            "the old scores are still there"
        );
        // A good one replaces them.
        store_scores(&root, &spec, date, scores_rows(day_us, 10, 0.3))
            .await
            .unwrap();
        let new = files(dir.path(), &spec);
        assert_eq!(new.len(), 1, "{new:?}");
        assert_ne!(new, old);
        // The same scores again: the file is kept, not removed.
        store_scores(&root, &spec, date, scores_rows(day_us, 10, 0.3))
            .await
            .unwrap();
        assert_eq!(files(dir.path(), &spec), new);
    }

    #[test]
    fn the_schema_has_the_key_first() {
        let s = scores_schema();
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(&names[..5], &["ts", "symbol", "seq", "score", "alert"]);
    }
}
