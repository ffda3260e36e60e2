//! Training and evaluating a model on the lake's `training` view (the
//! current feature set's snapshot joined with the labels).
//!
//! Splits are by time on the snapshot's distinct dates, never shuffled:
//! the earliest dates train, the next `valid_days` validate (early stopping
//! and the threshold), the last `test_days` test. Embargo: a split's first
//! rows whose time is within the feature set's time lookback after the
//! previous split's last tick are dropped, so no kept row's feature window
//! reaches back into the previous split. (The tick-count part of a
//! lookback is not embargoed: with day-sized splits it only reaches across
//! the overnight gap.)
//!
//! Rows are read in tick-key order (`symbol`, `ts`, `seq`) into Arrow
//! `Float64` columns in catalog order and handed to XGBoost as columns; with
//! the same data, parameters and seed, `model.json` is byte-identical.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{AsArray, Float64Array, RecordBatch, StringArray};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int64Type};
use chrono::NaiveDate;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use indicatif::ProgressBar;

use super::cases::{case_metrics, learn_case_rule, CaseRule};
use super::curves::Curves;
pub use super::dates::{date_spans, DateSpan};
pub use super::error::TrainError;
use super::events::{
    event_metrics, threshold_for_event_precision, EventMetrics, LabelEvent, ScoredRows,
    DEFAULT_EPISODE_GAP_US,
};
use super::manifest::{
    Importance, Manifest, ManifestError, SplitInfo, ThresholdRule, MODEL_FILE, XGBOOST_VERSION,
};
use super::metrics::{best_f1_threshold, threshold_for_precision, Metrics};
use super::report::{self, ReportInput, REPORT_FILE};
use super::rules::Rule;
use super::score::{model_version, run_rule, ModelDetector};
use super::xgb::{Booster, DMatrix, PredictKind, XgbError};
use crate::features::{snapshot_session, training_session, Catalog};
use crate::lake::LakeRoot;

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// First date to use (inclusive); the snapshot's first by default.
    pub from: Option<NaiveDate>,
    /// Last date to use (inclusive); the snapshot's last by default.
    pub to: Option<NaiveDate>,
    /// Dates in the validation split.
    pub valid_days: usize,
    /// Dates in the test split.
    pub test_days: usize,
    /// XGBoost parameters that replace the defaults ([`default_params`]).
    pub params: Vec<(String, String)>,
    /// Maximum boosting rounds.
    pub rounds: u32,
    /// Rounds without a better validation `aucpr` before stopping.
    pub patience: u32,
    /// XGBoost's `seed`.
    pub seed: u64,
    /// Choose the lowest threshold reaching this validation precision
    /// instead of the best F1.
    pub target_precision: Option<f64>,
    /// Choose the lowest threshold whose validation *episode* precision
    /// (alert episodes overlapping a label interval) reaches this, instead
    /// of the best F1.
    pub target_event_precision: Option<f64>,
    /// Choose the case threshold (when an alert episode opens a case) whose
    /// validation case precision reaches this (the best case F1 when
    /// `None`).
    pub target_case_precision: Option<f64>,
    /// Alerts of a symbol closer than this (µs) form one episode.
    pub episode_gap_us: i64,
    /// Rules evaluated on the test rows beside the model (the baselines).
    pub rules: Vec<Rule>,
    /// Weigh training and validation rows so that every event counts the
    /// same, however many ticks it spans ([`Dataset::event_weights`]).
    pub balance_events: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            from: None,
            to: None,
            valid_days: 1,
            test_days: 1,
            params: Vec::new(),
            rounds: 300,
            patience: 20,
            target_event_precision: None,
            target_case_precision: None,
            episode_gap_us: DEFAULT_EPISODE_GAP_US,
            seed: 42,
            target_precision: None,
            rules: Vec::new(),
            balance_events: true,
        }
    }
}

/// A split to read: dates `from..=to`, rows with `ts > after_us`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPlan {
    pub name: &'static str,
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Rows at or before this time (µs) are embargoed.
    pub after_us: Option<i64>,
    /// Rows of the split's dates before the embargo.
    pub rows: u64,
}

/// Train, validation and test plans over `dates` (sorted): the last
/// `test_days` dates test, the `valid_days` before them validate, the rest
/// trains; validation and test drop rows within `embargo_us` after the
/// previous split's last tick.
pub fn plan_splits(
    dates: &[DateSpan],
    valid_days: usize,
    test_days: usize,
    embargo_us: i64,
) -> Result<[SplitPlan; 3], TrainError> {
    let need = valid_days + test_days + 1;
    if valid_days == 0 || test_days == 0 || dates.len() < need {
        return Err(TrainError::NotEnoughDates {
            have: dates.len(),
            need: need.max(3),
            valid: valid_days,
            test: test_days,
        });
    }
    let n_train = dates.len() - valid_days - test_days;
    let parts = [
        ("train", &dates[..n_train]),
        ("valid", &dates[n_train..n_train + valid_days]),
        ("test", &dates[n_train + valid_days..]),
    ];
    let mut prev_end: Option<i64> = None;
    Ok(parts.map(|(name, span)| {
        let plan = SplitPlan {
            name,
            from: span[0].date,
            to: span[span.len() - 1].date,
            after_us: prev_end.map(|end| end.saturating_add(embargo_us)),
            rows: span.iter().map(|d| d.rows).sum(),
        };
        prev_end = span.iter().map(|d| d.last_us).max();
        plan
    }))
}

/// Feature rows with labels, column by column.
#[derive(Debug)]
pub struct Dataset {
    /// One column per feature, in catalog order.
    pub columns: Vec<Float64Array>,
    /// 1.0 for rows inside a label interval, else 0.0.
    pub label: Vec<f32>,
    /// The label kind of positive rows (NULL for negatives).
    pub kind: StringArray,
    /// Symbol per row.
    pub symbol: StringArray,
    /// Event time per row, µs UTC (rows are in `(symbol, ts, seq)` order).
    pub ts_us: Vec<i64>,
    /// The label intervals (positive kinds) overlapping these rows' time.
    pub events: Vec<LabelEvent>,
    /// The feature set's delayed confirmation, ticks: an alert on a row is
    /// raised once this many later ticks of its symbol arrived, which time
    /// to detect counts.
    pub delay_ticks: usize,
}

impl Dataset {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.label.len()
    }

    /// Rows labelled positive.
    pub fn positives(&self) -> u64 {
        self.label.iter().filter(|&&l| l > 0.5).count() as u64
    }

    /// The label kind per row.
    pub fn kinds(&self) -> Vec<Option<&str>> {
        self.kind.iter().collect()
    }

    /// Event-level metrics of `scores` (one per row) at `threshold`.
    pub fn event_metrics(
        &self,
        scores: &[f32],
        threshold: f32,
        episode_gap_us: i64,
    ) -> EventMetrics {
        event_metrics(
            ScoredRows {
                symbol: &self.symbol,
                ts_us: &self.ts_us,
                scores,
                delay_ticks: self.delay_ticks,
            },
            &self.events,
            threshold,
            episode_gap_us,
            0,
        )
    }

    /// Row metrics, event metrics and case metrics (every alert episode a
    /// case) of `scores` at `threshold`.
    pub fn metrics(&self, scores: &[f32], threshold: f32, episode_gap_us: i64) -> Metrics {
        self.metrics_with_cases(
            scores,
            threshold,
            episode_gap_us,
            &CaseRule::open_all(episode_gap_us),
        )
    }

    /// [`Dataset::metrics`] with cases opening by `rule`.
    pub fn metrics_with_cases(
        &self,
        scores: &[f32],
        threshold: f32,
        episode_gap_us: i64,
        rule: &CaseRule,
    ) -> Metrics {
        let mut m = Metrics::compute(scores, &self.label, &self.kinds(), threshold);
        m.events = Some(self.event_metrics(scores, threshold, episode_gap_us));
        m.cases = Some(case_metrics(
            self.scored(scores),
            &self.events,
            threshold,
            rule,
            0,
        ));
        m
    }

    /// These rows with `scores`, for event and case metrics.
    pub fn scored<'a>(&'a self, scores: &'a [f32]) -> ScoredRows<'a> {
        ScoredRows {
            symbol: &self.symbol,
            ts_us: &self.ts_us,
            scores,
            delay_ticks: self.delay_ticks,
        }
    }

    /// An XGBoost matrix of the columns `cols` (named `names`) and labels.
    pub fn matrix_of(&self, cols: &[usize], names: &[&str]) -> Result<DMatrix, XgbError> {
        self.weighted_matrix_of(cols, names, None)
    }

    /// [`Dataset::matrix_of`] with sample weights, one per row.
    pub fn weighted_matrix_of(
        &self,
        cols: &[usize],
        names: &[&str],
        weights: Option<&[f32]>,
    ) -> Result<DMatrix, XgbError> {
        let refs: Vec<&Float64Array> = cols.iter().map(|&i| &self.columns[i]).collect();
        let mut m = DMatrix::from_columns(&refs, Some(&self.label), weights)?;
        m.set_feature_names(names)?;
        Ok(m)
    }

    /// Sample weights that give every event the same weight, whatever its
    /// number of ticks: a positive row weighs the mean positive rows per
    /// event over its own event's rows (so the positives' total stays their
    /// count), capped at [`MAX_EVENT_WEIGHT`]; negatives weigh 1. An event
    /// is a run of positive rows of one symbol and kind (events of a symbol
    /// never overlap, and a labelled interval's ticks are consecutive).
    /// Without it a one-tick price spike counts for nothing beside a
    /// twenty-minute wash trade of a thousand ticks.
    pub fn event_weights(&self) -> Vec<f32> {
        let n = self.rows();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < n {
            if self.label[i] < 0.5 {
                i += 1;
                continue;
            }
            let start = i;
            while i < n
                && self.label[i] > 0.5
                && self.symbol.value(i) == self.symbol.value(start)
                && self.kind.value(i) == self.kind.value(start)
            {
                i += 1;
            }
            runs.push((start, i));
        }
        let mut w = vec![1.0f32; n];
        if runs.is_empty() {
            return w;
        }
        let mean = runs.iter().map(|(a, b)| b - a).sum::<usize>() as f64 / runs.len() as f64;
        for (a, b) in runs {
            let x = (mean / (b - a) as f64).min(MAX_EVENT_WEIGHT) as f32;
            w[a..b].fill(x);
        }
        w
    }

    /// An XGBoost matrix of these columns and labels, columns named.
    pub fn matrix(&self, names: &[&str]) -> Result<DMatrix, XgbError> {
        let refs: Vec<&Float64Array> = self.columns.iter().collect();
        let mut m = DMatrix::from_columns(&refs, Some(&self.label), None)?;
        m.set_feature_names(names)?;
        Ok(m)
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Largest weight [`Dataset::event_weights`] gives one row: a one-tick
/// event weighs like this many ticks of a long one, not like all of them.
pub const MAX_EVENT_WEIGHT: f64 = 50.0;

/// Reads the `training` rows of dates `from..=to` with `ts > after_us`, in
/// tick-key order.
pub async fn read_rows(
    ctx: &SessionContext,
    catalog: &Catalog,
    from: NaiveDate,
    to: NaiveDate,
    after_us: Option<i64>,
) -> Result<Dataset, TrainError> {
    let names = catalog.feature_names();
    let mut select: Vec<String> = names.iter().map(|n| quote(n)).collect();
    select.push("CAST(label AS FLOAT) AS label".into());
    select.push("kind".into());
    select.push("symbol".into());
    select.push("CAST(ts AS BIGINT) AS ts_us".into());
    let embargo = after_us
        .map(|t| format!(" AND CAST(ts AS BIGINT) > {t}"))
        .unwrap_or_default();
    let sql = format!(
        "SELECT {} FROM training WHERE date >= '{from}' AND date <= '{to}'{embargo} \
         ORDER BY symbol, ts, seq",
        select.join(", ")
    );
    let df = ctx.sql(&sql).await?;
    let schema = df.schema().inner().clone();
    let batches: Vec<RecordBatch> = df.collect().await?;
    let batch = concat_batches(&schema, &batches).map_err(DataFusionError::from)?;
    let n = names.len();
    let columns = (0..n)
        .map(|i| -> Result<Float64Array, TrainError> {
            let c = cast(batch.column(i), &DataType::Float64)?;
            Ok(c.as_primitive::<Float64Type>().clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let label = batch
        .column(n)
        .as_primitive::<Float32Type>()
        .values()
        .to_vec();
    let kind = cast(batch.column(n + 1), &DataType::Utf8)?
        .as_string::<i32>()
        .clone();
    let symbol = cast(batch.column(n + 2), &DataType::Utf8)?
        .as_string::<i32>()
        .clone();
    let ts_us = batch
        .column(n + 3)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec();
    let events = match (ts_us.iter().min(), ts_us.iter().max()) {
        (Some(&lo), Some(&hi)) => label_events(ctx, lo, hi).await?,
        _ => Vec::new(),
    };
    Ok(Dataset {
        columns,
        label,
        kind,
        symbol,
        ts_us,
        events,
        delay_ticks: usize::try_from(catalog.delay()).unwrap_or(usize::MAX),
    })
}

/// The label intervals (not reviewed negatives) overlapping `[lo, hi]` µs.
async fn label_events(
    ctx: &SessionContext,
    lo: i64,
    hi: i64,
) -> Result<Vec<LabelEvent>, TrainError> {
    let sql = format!(
        "SELECT symbol, CAST(start_ts AS BIGINT) AS s, CAST(end_ts AS BIGINT) AS e, kind \
         FROM labels WHERE kind <> '{}' AND CAST(end_ts AS BIGINT) >= {lo} \
         AND CAST(start_ts AS BIGINT) <= {hi} ORDER BY symbol, s",
        crate::labels::REVIEWED_NEGATIVE
    );
    let mut out = Vec::new();
    for b in ctx.sql(&sql).await?.collect().await? {
        let symbol = cast(b.column(0), &DataType::Utf8)?;
        let symbol = symbol.as_string::<i32>();
        let start = b.column(1).as_primitive::<Int64Type>();
        let end = b.column(2).as_primitive::<Int64Type>();
        let kind = cast(b.column(3), &DataType::Utf8)?;
        let kind = kind.as_string::<i32>();
        for i in 0..b.num_rows() {
            out.push(LabelEvent {
                symbol: symbol.value(i).to_owned(),
                start_us: start.value(i),
                end_us: end.value(i),
                kind: kind.value(i).to_owned(),
            });
        }
    }
    Ok(out)
}

/// The default parameters for `seed`: `binary:logistic` on `hist` trees,
/// depth 6, eta 0.1, evaluated by `auc` and `aucpr`.
pub fn default_params(seed: u64) -> BTreeMap<String, String> {
    [
        ("objective", "binary:logistic".to_owned()),
        ("tree_method", "hist".to_owned()),
        ("eval_metric", "auc,aucpr".to_owned()),
        ("seed", seed.to_string()),
        ("max_depth", "6".to_owned()),
        ("eta", "0.1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Sets `params` on `booster` in key order; `eval_metric` may list several
/// metrics, comma-separated.
fn set_params(booster: &mut Booster, params: &BTreeMap<String, String>) -> Result<(), TrainError> {
    for (k, v) in params {
        let values: Vec<&str> = if k == "eval_metric" {
            v.split(',').map(str::trim).collect()
        } else {
            vec![v.as_str()]
        };
        for value in values {
            booster
                .set_param(k, value)
                .map_err(|e| TrainError::BadParam {
                    name: k.clone(),
                    value: value.to_owned(),
                    reason: e.to_string(),
                })?;
        }
    }
    Ok(())
}

/// The train, valid and test splits of the lake's training view (plans
/// and rows), with the embargo applied; refuses a train or valid split
/// without positives.
async fn load_splits(
    root: &LakeRoot,
    catalog: &Catalog,
    options: &TrainOptions,
) -> Result<(SessionContext, [SplitPlan; 3], Vec<Dataset>), TrainError> {
    let ctx = training_session(root, catalog).await?;
    let all = date_spans(&ctx).await?;
    if all.is_empty() {
        return Err(TrainError::NoSnapshot {
            feature_set: catalog.hash().to_owned(),
            lake: root.to_string(),
        });
    }
    let dates: Vec<DateSpan> = all
        .into_iter()
        .filter(|d| options.from.is_none_or(|f| d.date >= f))
        .filter(|d| options.to.is_none_or(|t| d.date <= t))
        .collect();
    let embargo = catalog.lookback().time;
    let embargo_us = i64::try_from(embargo.as_micros()).unwrap_or(i64::MAX);
    let plans = plan_splits(&dates, options.valid_days, options.test_days, embargo_us)?;
    let mut data = Vec::with_capacity(3);
    for plan in &plans {
        let d = read_rows(&ctx, catalog, plan.from, plan.to, plan.after_us).await?;
        if d.positives() == 0 && plan.name != "test" {
            return Err(TrainError::NoPositives {
                split: plan.name.to_owned(),
                from: plan.from,
                to: plan.to,
            });
        }
        data.push(d);
    }
    Ok((ctx, plans, data))
}

/// A booster trained with early stopping on the validation `aucpr`, and
/// the training and validation matrices it was trained on (for scoring).
struct Fit {
    booster: Booster,
    dtrain: DMatrix,
    dvalid: DMatrix,
    params: BTreeMap<String, String>,
    best_round: u32,
    best_aucpr: f64,
    trained: u32,
}

/// Trains on `train_set`'s columns `cols` (named `names`), stopping after
/// `options.patience` rounds without a better validation `aucpr`.
fn fit(
    train_set: &Dataset,
    valid_set: &Dataset,
    cols: &[usize],
    names: &[&str],
    options: &TrainOptions,
    bar: &ProgressBar,
) -> Result<Fit, TrainError> {
    let mut params = default_params(options.seed);
    let positives = train_set.positives();
    let negatives = train_set.rows() as u64 - positives;
    params.insert(
        "scale_pos_weight".into(),
        (negatives as f64 / positives as f64).to_string(),
    );
    for (k, v) in &options.params {
        params.insert(k.clone(), v.clone());
    }
    let metrics_set = params.entry("eval_metric".into()).or_default();
    if !metrics_set.split(',').any(|m| m.trim() == "aucpr") {
        // Early stopping reads the validation aucpr.
        if !metrics_set.is_empty() {
            metrics_set.push(',');
        }
        metrics_set.push_str("aucpr");
    }

    let (dtrain, dvalid) = if options.balance_events {
        (
            train_set.weighted_matrix_of(cols, names, Some(&train_set.event_weights()))?,
            valid_set.weighted_matrix_of(cols, names, Some(&valid_set.event_weights()))?,
        )
    } else {
        (
            train_set.matrix_of(cols, names)?,
            valid_set.matrix_of(cols, names)?,
        )
    };
    let mut booster = Booster::new(&[&dtrain, &dvalid])?;
    set_params(&mut booster, &params)?;
    booster.set_feature_names(names)?;

    bar.set_length(u64::from(options.rounds));
    bar.set_position(0);
    let (mut best_round, mut best_aucpr) = (0u32, f64::NEG_INFINITY);
    let mut trained = 0u32;
    for round in 0..options.rounds {
        booster.update(round, &dtrain)?;
        trained = round + 1;
        let evals = booster.eval(round, &[(&dvalid, "valid")])?;
        let aucpr = evals
            .iter()
            .find(|m| m.metric == "aucpr")
            .map_or(f64::NAN, |m| m.value);
        if aucpr > best_aucpr {
            (best_round, best_aucpr) = (round, aucpr);
        }
        bar.inc(1);
        bar.set_message(format!(
            "train rounds: valid aucpr {aucpr:.4} (best {best_aucpr:.4} at round {best_round})"
        ));
        if round - best_round >= options.patience {
            break;
        }
    }
    Ok(Fit {
        booster,
        dtrain,
        dvalid,
        params,
        best_round,
        best_aucpr,
        trained,
    })
}

/// Trains on the lake's training view and writes `out/model.json` and
/// `out/manifest.json`; `bar` counts boosting rounds.
pub async fn train(
    root: &LakeRoot,
    catalog: &Catalog,
    options: &TrainOptions,
    out: &Path,
    bar: &ProgressBar,
) -> Result<Manifest, TrainError> {
    let (_, plans, data) = load_splits(root, catalog, options).await?;
    let embargo = catalog.lookback().time;
    let names = catalog.feature_names();
    let (train_set, valid_set, test_set) = (&data[0], &data[1], &data[2]);
    let all_cols: Vec<usize> = (0..names.len()).collect();
    let Fit {
        mut booster,
        dtrain,
        dvalid,
        params,
        best_round,
        best_aucpr,
        trained,
    } = fit(train_set, valid_set, &all_cols, &names, options, bar)?;
    let dtest = test_set.matrix(&names)?;
    let best_range = Some((0, best_round + 1));
    let score = |m: &DMatrix| -> Result<Vec<f32>, XgbError> {
        Ok(booster.predict_with(m, PredictKind::Value, best_range)?.0)
    };
    let valid_scores = score(&dvalid)?;
    let test_scores = score(&dtest)?;
    let best_f1 = best_f1_threshold(&valid_scores, &valid_set.label).map_or(0.5, |(t, _)| t);
    let (threshold, threshold_rule) =
        match (options.target_precision, options.target_event_precision) {
            (_, Some(target)) => match threshold_for_event_precision(
                ScoredRows {
                    symbol: &valid_set.symbol,
                    ts_us: &valid_set.ts_us,
                    scores: &valid_scores,
                    delay_ticks: valid_set.delay_ticks,
                },
                &valid_set.events,
                target,
                options.episode_gap_us,
                0,
            ) {
                Some((t, _)) => (t, ThresholdRule::TargetEventPrecision { target }),
                None => {
                    tracing::warn!(
                    target_event_precision = target,
                    "Target event precision not reached on validation; using the best F1 threshold."
                );
                    (best_f1, ThresholdRule::BestF1TargetMissed { target })
                }
            },
            (None, None) => (best_f1, ThresholdRule::BestF1),
            (Some(target), None) => {
                match threshold_for_precision(&valid_scores, &valid_set.label, target) {
                    Some((t, _)) => (t, ThresholdRule::TargetPrecision { target }),
                    None => {
                        tracing::warn!(
                    target_precision = target,
                    "Target precision not reached on validation; using the best F1 threshold."
                );
                        (best_f1, ThresholdRule::BestF1TargetMissed { target })
                    }
                }
            }
        };
    let case_rule = learn_case_rule(
        valid_set.scored(&valid_scores),
        &valid_set.events,
        threshold,
        options.episode_gap_us,
        0,
        options.target_case_precision,
    );
    let mut metrics = BTreeMap::new();
    for ((plan, set), scores) in
        plans
            .iter()
            .zip(&data)
            .zip([&score(&dtrain)?, &valid_scores, &test_scores])
    {
        metrics.insert(
            plan.name.to_owned(),
            set.metrics_with_cases(scores, threshold, options.episode_gap_us, &case_rule),
        );
    }

    // Rules on exactly the model's test rows: the baseline it should beat.
    let test_plan = &plans[2];
    let mut baselines = BTreeMap::new();
    if !options.rules.is_empty() {
        let ctx = snapshot_session(root, catalog, Some((test_plan.from, test_plan.to))).await?;
        for rule in &options.rules {
            let scores = rule_scores(&ctx, rule, test_set.rows(), test_plan.after_us).await?;
            baselines.insert(
                rule.name.clone(),
                test_set.metrics(&scores, rule.threshold as f32, options.episode_gap_us),
            );
        }
    }

    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ManifestError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    // As Python's `xgb.train` with early stopping leaves them, so that
    // `XGBClassifier().load_model(...)` predicts with the best rounds (as
    // `score` does) without an `iteration_range`.
    booster.set_attr("best_iteration", &best_round.to_string())?;
    if best_aucpr.is_finite() {
        booster.set_attr("best_score", &best_aucpr.to_string())?;
    }
    let model_json = booster.save_to_buffer("json")?;
    let model_path = out.join(MODEL_FILE);
    std::fs::write(&model_path, &model_json).map_err(io_err(&model_path))?;
    let version = model_version(&model_json);

    let gain = booster.feature_importance_gain()?;
    let shap = mean_abs_shap(&booster, test_set, best_range)?;
    let importance: Vec<Importance> = names
        .iter()
        .zip(&shap)
        .map(|(name, &mean_abs_shap)| Importance {
            feature: (*name).to_owned(),
            gain: gain
                .iter()
                .find(|g| g.feature == *name)
                .map_or(0.0, |g| f64::from(g.score)),
            mean_abs_shap,
        })
        .collect();
    let curves = vec![
        (
            "valid".to_owned(),
            Curves::compute(&valid_scores, &valid_set.label),
        ),
        (
            "test".to_owned(),
            Curves::compute(&test_scores, &test_set.label),
        ),
    ];
    let manifest = Manifest {
        features: names.iter().map(|n| (*n).to_owned()).collect(),
        feature_set: catalog.hash().to_owned(),
        lake: root.to_string(),
        splits: plans
            .iter()
            .zip(&data)
            .map(|(p, d)| SplitInfo {
                name: p.name.to_owned(),
                from: p.from,
                to: p.to,
                embargoed_rows: p.rows.saturating_sub(d.rows() as u64),
                rows: d.rows() as u64,
            })
            .collect(),
        embargo_secs: embargo.as_secs_f64(),
        delay_ticks: catalog.delay(),
        balance_events: options.balance_events,
        params,
        max_rounds: options.rounds,
        patience: options.patience,
        rounds_trained: trained,
        best_iteration: best_round,
        best_valid_aucpr: if best_aucpr.is_finite() {
            best_aucpr
        } else {
            0.0
        },
        threshold,
        threshold_rule,
        metrics,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        xgboost_version: XGBOOST_VERSION.to_owned(),
        version: version.clone(),
        importance,
        baselines,
        case_rule: Some(case_rule),
    };
    manifest.write(out)?;
    let by = |f: fn(&Importance) -> f64| {
        let mut v: Vec<(String, f64)> = manifest
            .importance
            .iter()
            .map(|i| (i.feature.clone(), f(i)))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    };
    let report_path = out.join(REPORT_FILE);
    report::write(
        out,
        &ReportInput {
            manifest: &manifest,
            version: &version,
            curves,
            gain: by(|i| i.gain),
            shap: by(|i| i.mean_abs_shap),
            baselines: manifest
                .baselines
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        },
    )
    .map_err(io_err(&report_path))?;
    Ok(manifest)
}

/// Which feature files a model of the ablation was trained without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variant {
    /// Every file of the pack.
    All,
    /// Every file but this one.
    Without(String),
    /// Only the files that look at one symbol as it happens: without the
    /// files that read the market (`market` table) or wait for later ticks
    /// (`-- delay:`), which are listed.
    PerSymbolOnly(Vec<String>),
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Variant::All => f.write_str("all files"),
            Variant::Without(file) => write!(f, "without {file}"),
            Variant::PerSymbolOnly(_) => f.write_str("per-symbol only"),
        }
    }
}

/// One model of the ablation.
#[derive(Debug, Clone)]
pub struct Ablation {
    /// The files it was trained without.
    pub variant: Variant,
    /// Features the model used.
    pub features: usize,
    /// Its test-split metrics (with events) at its best validation-F1 threshold.
    pub test: Metrics,
}

/// The files of `catalog` that give a tick context beyond its own symbol's
/// past: the market's same minute or the symbol's later ticks.
pub fn context_files(catalog: &Catalog) -> Vec<String> {
    catalog
        .files()
        .iter()
        .filter(|f| f.reads_market || f.delay > 0)
        .map(|f| f.name.clone())
        .collect()
}

/// What each feature file buys: trains on the same splits with every file,
/// then once without each file (a file whose features are all there is to
/// train on is skipped), then, when the pack has context files (see
/// [`context_files`]), once without all of them: the per-symbol-only
/// pack. Each model is scored on the test split at its own best
/// validation-F1 threshold. `bar` counts each model's rounds.
pub async fn ablate(
    root: &LakeRoot,
    catalog: &Catalog,
    options: &TrainOptions,
    bar: &ProgressBar,
) -> Result<Vec<Ablation>, TrainError> {
    let context = context_files(catalog);
    let mut variants = vec![Variant::All];
    variants.extend(
        catalog
            .files()
            .iter()
            .map(|f| Variant::Without(f.name.clone())),
    );
    if !context.is_empty() {
        variants.push(Variant::PerSymbolOnly(context));
    }
    ablate_variants(root, catalog, options, &variants, bar).await
}

/// Trains and scores one model per variant on the same splits (see
/// [`ablate`]); variants left with no feature are skipped.
pub async fn ablate_variants(
    root: &LakeRoot,
    catalog: &Catalog,
    options: &TrainOptions,
    variants: &[Variant],
    bar: &ProgressBar,
) -> Result<Vec<Ablation>, TrainError> {
    let (_, _, data) = load_splits(root, catalog, options).await?;
    let (train_set, valid_set, test_set) = (&data[0], &data[1], &data[2]);
    let names = catalog.feature_names();
    let mut out = Vec::new();
    for variant in variants {
        let left_out: Vec<&str> = match variant {
            Variant::All => Vec::new(),
            Variant::Without(file) => vec![file.as_str()],
            Variant::PerSymbolOnly(files) => files.iter().map(String::as_str).collect(),
        };
        let dropped: Vec<&str> = catalog
            .files()
            .iter()
            .filter(|f| left_out.contains(&f.name.as_str()))
            .flat_map(|f| f.features.iter().map(String::as_str))
            .collect();
        let cols: Vec<usize> = (0..names.len())
            .filter(|&i| !dropped.contains(&names[i]))
            .collect();
        if cols.is_empty() {
            continue;
        }
        let used: Vec<&str> = cols.iter().map(|&i| names[i]).collect();
        let f = fit(train_set, valid_set, &cols, &used, options, bar)?;
        let range = Some((0, f.best_round + 1));
        let predict = |m: &DMatrix| -> Result<Vec<f32>, TrainError> {
            Ok(f.booster.predict_with(m, PredictKind::Value, range)?.0)
        };
        let valid_scores = predict(&f.dvalid)?;
        let threshold = best_f1_threshold(&valid_scores, &valid_set.label).map_or(0.5, |(t, _)| t);
        let test_scores = predict(&test_set.matrix_of(&cols, &used)?)?;
        out.push(Ablation {
            variant: variant.clone(),
            features: cols.len(),
            test: test_set.metrics(&test_scores, threshold, options.episode_gap_us),
        });
    }
    Ok(out)
}

/// Rows sampled for mean |SHAP|: enough for stable means, bounded time.
const SHAP_SAMPLE_ROWS: usize = 100_000;

/// Mean |SHAP contribution| per feature over `set` (an even sample of at
/// most [`SHAP_SAMPLE_ROWS`] rows), using the trees of `rounds`.
fn mean_abs_shap(
    booster: &Booster,
    set: &Dataset,
    rounds: Option<(u32, u32)>,
) -> Result<Vec<f64>, TrainError> {
    let n = set.rows();
    let step = n.div_ceil(SHAP_SAMPLE_ROWS).max(1);
    let take: arrow::array::UInt64Array = (0..n as u64).step_by(step).map(Some).collect();
    let cols: Vec<Float64Array> = set
        .columns
        .iter()
        .map(|c| {
            Ok(arrow::compute::take(c, &take, None)?
                .as_primitive::<Float64Type>()
                .clone())
        })
        .collect::<Result<_, TrainError>>()?;
    let refs: Vec<&Float64Array> = cols.iter().collect();
    let m = DMatrix::from_columns(&refs, None, None)?;
    let (contribs, width) = booster.predict_with(&m, PredictKind::Contribs, rounds)?;
    let mut sums = vec![0.0f64; set.columns.len()];
    let mut rows = 0usize;
    for row in contribs.chunks(width.max(1)) {
        for (s, c) in sums.iter_mut().zip(row) {
            *s += f64::from(c.abs());
        }
        rows += 1;
    }
    Ok(sums.into_iter().map(|s| s / rows.max(1) as f64).collect())
}

/// A rule's scores for the rows `read_rows` reads from the session's
/// `features` view (the same order), NULL scoring lowest.
async fn rule_scores(
    ctx: &SessionContext,
    rule: &Rule,
    rows: usize,
    after_us: Option<i64>,
) -> Result<Vec<f32>, TrainError> {
    let (scores, _) = run_rule(ctx, rule, rows, after_us).await?;
    Ok(scores
        .iter()
        .map(|s| s.map_or(f32::NEG_INFINITY, |s| s as f32))
        .collect())
}

/// Every rule's metrics on the labelled rows of `from..=to` (the whole
/// snapshot by default), each at its own threshold.
pub async fn evaluate_rules(
    root: &LakeRoot,
    catalog: &Catalog,
    rules: &[Rule],
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<(NaiveDate, NaiveDate, Vec<(String, Metrics)>), TrainError> {
    let (from, to) = resolve_range(root, catalog, from, to).await?;
    let ctx = snapshot_session(root, catalog, Some((from, to))).await?;
    let set = read_rows(&ctx, catalog, from, to, None).await?;
    if set.rows() == 0 {
        return Err(TrainError::NoRows { from, to });
    }
    let mut out = Vec::new();
    for rule in rules {
        let scores = rule_scores(&ctx, rule, set.rows(), None).await?;
        out.push((
            rule.name.clone(),
            set.metrics(&scores, rule.threshold as f32, DEFAULT_EPISODE_GAP_US),
        ));
    }
    Ok((from, to, out))
}

/// `from..=to` with the snapshot's first and last dates as defaults.
async fn resolve_range(
    root: &LakeRoot,
    catalog: &Catalog,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<(NaiveDate, NaiveDate), TrainError> {
    let ctx = training_session(root, catalog).await?;
    let dates = date_spans(&ctx).await?;
    let (Some(first), Some(last)) = (dates.first(), dates.last()) else {
        return Err(TrainError::NoSnapshot {
            feature_set: catalog.hash().to_owned(),
            lake: root.to_string(),
        });
    };
    Ok((from.unwrap_or(first.date), to.unwrap_or(last.date)))
}

/// The model in `model_dir` scored on the training rows of `from..=to`
/// (the whole snapshot by default) at its threshold, using the trees up to
/// its best iteration. Refuses a model whose features differ from the
/// catalog's.
pub async fn evaluate(
    root: &LakeRoot,
    catalog: &Catalog,
    model_dir: &Path,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<(Manifest, NaiveDate, NaiveDate, Metrics), TrainError> {
    let model = ModelDetector::load(model_dir, catalog)?;
    let (from, to) = resolve_range(root, catalog, from, to).await?;
    let ctx = training_session(root, catalog).await?;
    let set = read_rows(&ctx, catalog, from, to, None).await?;
    if set.rows() == 0 {
        return Err(TrainError::NoRows { from, to });
    }
    let refs: Vec<&Float64Array> = set.columns.iter().collect();
    let scores = model.predict(&refs)?;
    let rule = model.manifest.case_rule();
    let metrics = set.metrics_with_cases(&scores, model.manifest.threshold, rule.gap_us(), &rule);
    Ok((model.manifest, from, to, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32, first: i64, last: i64, rows: u64) -> DateSpan {
        DateSpan {
            date: NaiveDate::from_ymd_opt(2024, 1, d).unwrap(),
            first_us: first,
            last_us: last,
            rows,
        }
    }

    #[test]
    fn splits_are_in_time_order_with_an_embargo() {
        let dates: Vec<DateSpan> = (1..=5)
            .map(|d| day(d, i64::from(d) * 100, i64::from(d) * 100 + 50, 10))
            .collect();
        let [train, valid, test] = plan_splits(&dates, 1, 1, 7).unwrap();
        assert_eq!((train.from.day0(), train.to.day0()), (0, 2));
        assert_eq!(train.after_us, None);
        assert_eq!(train.rows, 30);
        assert_eq!((valid.from.day0(), valid.to.day0()), (3, 3));
        // Train ends at day 3's last tick (350), plus the embargo.
        assert_eq!(valid.after_us, Some(357));
        assert_eq!((test.from.day0(), test.to.day0()), (4, 4));
        assert_eq!(test.after_us, Some(457));

        let [train, valid, test] = plan_splits(&dates, 2, 2, 0).unwrap();
        assert_eq!((train.from, train.to), (dates[0].date, dates[0].date));
        assert_eq!((valid.from, valid.to), (dates[1].date, dates[2].date));
        assert_eq!((test.from, test.to), (dates[3].date, dates[4].date));

        let err = plan_splits(&dates[..2], 1, 1, 0).unwrap_err();
        assert!(err.to_string().contains("2 date(s)"), "{err}");
        assert!(plan_splits(&dates, 0, 1, 0).is_err());
    }

    #[test]
    fn defaults_evaluate_auc_and_aucpr() {
        let p = default_params(7);
        assert_eq!(p["seed"], "7");
        assert_eq!(p["eval_metric"], "auc,aucpr");
        assert_eq!(p["objective"], "binary:logistic");
    }

    /// Rows of (symbol, kind or "" for negatives), in dataset order.
    fn dataset(rows: &[(&str, &str)]) -> Dataset {
        let n = rows.len();
        Dataset {
            columns: Vec::new(),
            label: rows
                .iter()
                .map(|(_, k)| if k.is_empty() { 0.0 } else { 1.0 })
                .collect(),
            kind: rows
                .iter()
                .map(|(_, k)| (!k.is_empty()).then_some(*k))
                .collect(),
            symbol: rows.iter().map(|(s, _)| Some(*s)).collect(),
            ts_us: (0..n as i64).collect(),
            events: Vec::new(),
            delay_ticks: 0,
        }
    }

    #[test]
    fn event_weights_give_every_event_the_same_total() {
        // Events: A's 1-tick spike, A's 5-tick wash trade straight after a
        // spoof of 2 ticks (another kind: another event), B's 4-tick burst
        // right after A's run (another symbol: another event).
        let rows = [
            ("A", ""),
            ("A", "price_spike"),
            ("A", ""),
            ("A", "spoofing"),
            ("A", "spoofing"),
            ("A", "wash_trading"),
            ("A", "wash_trading"),
            ("A", "wash_trading"),
            ("A", "wash_trading"),
            ("A", "wash_trading"),
            ("B", "volume_burst"),
            ("B", "volume_burst"),
            ("B", "volume_burst"),
            ("B", "volume_burst"),
            ("B", ""),
        ];
        let w = dataset(&rows).event_weights();
        // 4 events, 12 positive rows: 3 rows per event on average.
        let total = |kind: &str| -> f32 {
            rows.iter()
                .zip(&w)
                .filter(|((_, k), _)| *k == kind)
                .map(|(_, w)| w)
                .sum()
        };
        for kind in ["price_spike", "spoofing", "wash_trading", "volume_burst"] {
            assert!((total(kind) - 3.0).abs() < 1e-6, "{kind}: {w:?}");
        }
        assert_eq!(w[0], 1.0);
        assert_eq!(w[2], 1.0);
        assert_eq!(w[14], 1.0);
        let sum: f32 = w.iter().sum();
        assert!((sum - 15.0).abs() < 1e-5, "the positives keep their total");
    }

    #[test]
    fn event_weights_are_capped_and_one_without_events() {
        let mut rows = vec![("A", "price_spike")];
        rows.extend(std::iter::repeat_n(("A", "wash_trading"), 200));
        let w = dataset(&rows).event_weights();
        // Mean 100.5 ticks per event: the spike would weigh 100.5.
        assert_eq!(f64::from(w[0]), MAX_EVENT_WEIGHT);
        assert!((w[1] - 100.5 / 200.0).abs() < 1e-6);
        let none = dataset(&[("A", ""), ("B", "")]).event_weights();
        assert_eq!(none, [1.0, 1.0]);
    }

    use chrono::Datelike;
}
