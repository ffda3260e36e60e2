//! `stockanomaly score`: a model and/or the rules over the feature snapshot,
//! into the lake's `scores` table.

use std::path::PathBuf;

use clap::Args;

use super::open_lake;
use super::output::{count, count_bar};
use super::train::{classify, load_detectors};
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

    /// The dates.
    #[command(flatten)]
    pub dates: super::shared::DateRangeArgs,

    /// Keep the K largest SHAP contributions of each model alert.
    #[arg(
        long,
        env = "STOCKANOMALY_TOP_SHAP",
        default_value_t = 0,
        value_name = "K"
    )]
    pub top_shap: usize,

    /// The SQL files.
    #[command(flatten)]
    pub sql: super::shared::QueriesArgs,
}

pub(crate) async fn run(lake: &str, args: ScoreArgs) -> anyhow::Result<()> {
    args.dates.check()?;
    let catalog = args.sql.catalog().await?;
    let root = open_lake(lake)?;
    let detectors = load_detectors(
        &catalog,
        args.model.as_deref(),
        args.rules,
        &args.sql.queries,
    )
    .await?;
    let options = ScoreOptions {
        from: args.dates.from,
        to: args.dates.to,
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
