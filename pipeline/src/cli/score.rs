//! `stockanomaly score`: a model and/or the rules over the feature snapshot,
//! into the lake's `scores` table.

use std::path::PathBuf;

use chrono::NaiveDate;
use clap::Args;

use super::output::{count, count_bar};
use super::train::{check_range, classify, load_detectors};
use super::{open_lake, UsageError};
use crate::features::{Catalog, DEFAULT_QUERIES};
use crate::model::{score, ScoreOptions};

/// `stockanomaly score`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Scores the current feature set's snapshot, date by date, with a trained
model (its trees up to the best iteration, its threshold) and/or the rule
files of queries/rules/, and writes one row per tick and detector to
scores/model_version=<version>/date=YYYY-MM-DD/: the tick key, score, alert
(score at or above the threshold), threshold, detector (model or rule),
reason (alerts only) and, with --top-shap K, the K largest SHAP
contributions of each model alert as JSON. Scoring a date again replaces
that detector's rows for the date. Refuses a model whose feature names or
feature-set hash differ from the catalog's.

With a model, the alerts of every detector of the run (the model's and the
rules') are grouped into cases: one symbol's alerts at most the case gap
apart (5 minutes by default). A case opens, for an analyst, when its case
score (learnt by `train` on the validation split) reaches the model's case
threshold; opened cases go to cases/model_version=<version>/date=<start
date>/, one row each (case_id, symbol, start_ts, end_ts, alerts, peak and
mean score, case score, opened_ts, detectors, top SHAP at the peak with
--top-shap, status open or closed).

Query the result with `stockanomaly sql`, e.g.
  SELECT model_version, count(*) FILTER (WHERE alert) FROM scores GROUP BY 1

Examples:
  stockanomaly score --model model/artifacts/1a2b3c4d --top-shap 3
  stockanomaly score --rules --from 2024-02-01")]
pub struct ScoreArgs {
    /// Artifact folder written by `stockanomaly train`.
    #[arg(
        long,
        env = "STOCKANOMALY_MODEL",
        value_name = "DIR",
        required_unless_present = "rules"
    )]
    pub model: Option<PathBuf>,

    /// Also run the rule files of <queries>/rules/ (built-in rules when the
    /// folder is missing).
    #[arg(long, env = "STOCKANOMALY_RULES")]
    pub rules: bool,

    /// First date to score (default: the snapshot's first).
    #[arg(long, env = "STOCKANOMALY_FROM")]
    pub from: Option<NaiveDate>,

    /// Last date to score, inclusive (default: the snapshot's last).
    #[arg(long, env = "STOCKANOMALY_TO")]
    pub to: Option<NaiveDate>,

    /// Keep the K largest SHAP contributions of each model alert.
    #[arg(
        long,
        env = "STOCKANOMALY_TOP_SHAP",
        default_value_t = 0,
        value_name = "K"
    )]
    pub top_shap: usize,

    /// Folder holding `features/*.sql` and `rules/*.sql`.
    #[arg(long, env = "STOCKANOMALY_QUERIES", default_value = DEFAULT_QUERIES, value_name = "DIR")]
    pub queries: PathBuf,
}

pub(crate) async fn run(lake: &str, args: ScoreArgs) -> anyhow::Result<()> {
    check_range(args.from, args.to)?;
    let catalog = Catalog::load_or_embedded(&args.queries)
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let root = open_lake(lake)?;
    let detectors =
        load_detectors(&catalog, args.model.as_deref(), args.rules, &args.queries).await?;
    let options = ScoreOptions {
        from: args.from,
        to: args.to,
        top_shap: args.top_shap,
    };
    let bar = count_bar(0, "score dates");
    let started = std::time::Instant::now();
    let summary = score(&root, &catalog, &detectors, &options, &bar).await;
    bar.finish_and_clear();
    let summary = summary.map_err(classify)?;
    println!(
        "scored {} date(s) of feature set {} in {:.2}s into {root}/scores",
        summary.dates.len(),
        catalog.hash(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<32} {:<32} {:>12} {:>10}",
        "detector", "model_version", "rows", "alerts"
    );
    for (label, version, rows, alerts) in &summary.detectors {
        println!(
            "{label:<32} {version:<32} {:>12} {:>10}",
            count(*rows),
            count(*alerts)
        );
    }
    if let Some((opened, episodes)) = summary.cases {
        println!(
            "{} case(s) opened of {} alert episode(s), in {root}/cases (one row per case: \
             symbol, start_ts, end_ts, alerts, peak and case score, detectors, top SHAP, status)",
            count(opened),
            count(episodes)
        );
    }
    Ok(())
}
