//! `stockanomaly train` and `stockanomaly evaluate`: a model from the
//! feature snapshot and labels, and its metrics on any labelled range.

use std::path::PathBuf;

use clap::Args;

use super::output::{count, count_bar};
use super::{open_lake, UsageError};
use crate::features::Catalog;
use crate::model::manifest::{Manifest, ThresholdRule, MANIFEST_FILE, MODEL_FILE};
use crate::model::report::REPORT_FILE;
use crate::model::{
    ablate, evaluate, evaluate_rules, train, Ablation, Detector, Metrics, Rule, RuleSet,
    TrainError, TrainOptions, Variant,
};

/// `stockanomaly train`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Trains an XGBoost model (binary:logistic, hist trees) on the current feature
set's snapshot joined with the labels (the `training` view), split by time
on its dates: the earliest train, the next --valid-days validate (early
stopping on aucpr, the alert threshold), the last --test-days test. Rows of
validation and test within the feature set's lookback after the previous
split's last tick are dropped (embargo). scale_pos_weight defaults to the
training negatives over positives.

Writes DIR/model.json (XGBoost's JSON, loadable by Python's xgboost; predict
with iteration_range=(0, best_iteration + 1)), DIR/manifest.json and
DIR/report.html (metrics, PR and ROC curves, score distributions, feature
importance by gain and mean |SHAP|). The rules of queries/rules/ are scored
on the same test rows as baselines.

--ablate writes nothing: it trains on the same splits with every feature
file, then once without each file, then once with the per-symbol files only
(without every file that reads the market or waits for later ticks), and
prints each model's test PR-AUC (and its change against all files) with its
event recall per kind and event precision, so that a data scientist sees
what each file buys.

Examples:
  stockanomaly backfill && stockanomaly train
  stockanomaly train --valid-days 2 --test-days 2 --params max_depth=4 eta=0.05
  stockanomaly train --target-precision 0.8 --out model/artifacts/precise
  stockanomaly train --ablate --rounds 100")]
pub struct TrainArgs {
    /// The dates.
    #[command(flatten)]
    pub dates: super::shared::DateRangeArgs,

    /// Dates in the validation split (after the training dates).
    #[arg(
        long,
        env = "STOCKANOMALY_VALID_DAYS",
        default_value_t = 1,
        value_name = "N"
    )]
    pub valid_days: usize,

    /// Dates in the test split (the last ones).
    #[arg(
        long,
        env = "STOCKANOMALY_TEST_DAYS",
        default_value_t = 1,
        value_name = "N"
    )]
    pub test_days: usize,

    /// XGBoost parameters replacing the defaults, as key=value (e.g.
    /// max_depth=4 eta=0.05 scale_pos_weight=10).
    #[arg(long, env = "STOCKANOMALY_PARAMS", num_args = 1.., value_name = "K=V", value_parser = parse_param)]
    pub params: Vec<(String, String)>,

    /// Maximum boosting rounds.
    #[arg(
        long,
        env = "STOCKANOMALY_ROUNDS",
        default_value_t = 300,
        value_name = "N"
    )]
    pub rounds: u32,

    /// Stop after this many rounds without a better validation aucpr.
    #[arg(
        long,
        env = "STOCKANOMALY_PATIENCE",
        default_value_t = 20,
        value_name = "N"
    )]
    pub patience: u32,

    /// XGBoost's random seed.
    #[arg(
        long,
        env = "STOCKANOMALY_SEED",
        default_value_t = 42,
        value_name = "S"
    )]
    pub seed: u64,

    /// Alert threshold: the lowest reaching this validation precision
    /// (default: the best validation F1).
    #[arg(long, env = "STOCKANOMALY_TARGET_PRECISION", value_name = "P")]
    pub target_precision: Option<f64>,

    /// Alert threshold: the lowest whose validation *event* precision (alert
    /// episodes that overlap a labelled case) reaches this.
    #[arg(
        long,
        env = "STOCKANOMALY_TARGET_EVENT_PRECISION",
        value_name = "P",
        conflicts_with = "target_precision"
    )]
    pub target_event_precision: Option<f64>,

    /// Case threshold: the lowest whose validation *case* precision (opened
    /// cases that overlap a labelled event) reaches this (default: the best
    /// case F1, event recall against case precision).
    #[arg(long, env = "STOCKANOMALY_TARGET_CASE_PRECISION", value_name = "P")]
    pub target_case_precision: Option<f64>,

    /// Alerts of one symbol closer than this many seconds form one episode
    /// (one case for an analyst) in the event metrics.
    #[arg(
        long,
        env = "STOCKANOMALY_EPISODE_GAP_SECS",
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub episode_gap_secs: u32,

    /// Weigh rows so that every manipulation event counts the same in
    /// training and validation, however many ticks it spans (a one-tick
    /// price spike against a twenty-minute quote stuffing of thousands):
    /// without it the longest events decide the model. `false` weighs every
    /// tick the same.
    #[arg(
        long,
        env = "STOCKANOMALY_BALANCE_EVENTS",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub balance_events: bool,

    /// Instead of writing a model, train with every feature file and
    /// without each one in turn, and print what each file buys on the test
    /// split.
    #[arg(long, env = "STOCKANOMALY_ABLATE", conflicts_with_all = ["out", "target_precision", "target_event_precision"])]
    pub ablate: bool,

    /// Artifact folder (default: model/artifacts/<feature-set hash>).
    #[arg(long, env = "STOCKANOMALY_OUT", value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// The SQL files.
    #[command(flatten)]
    pub sql: super::shared::QueriesArgs,
}

/// `stockanomaly evaluate`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Scores the labelled feature rows of a date range with a trained model (the
trees up to its best iteration, its threshold) and/or the rule files of
queries/rules/ (--rules), and prints the metrics, one row per detector.
Refuses a model whose feature names or feature-set hash differ from the
catalog's.

Examples:
  stockanomaly evaluate --model model/artifacts/1a2b3c4d
  stockanomaly evaluate --model DIR --rules --from 2024-02-01 --to 2024-02-29
  stockanomaly evaluate --rules")]
pub struct EvaluateArgs {
    /// Artifact folder written by `stockanomaly train`.
    #[arg(
        long,
        env = "STOCKANOMALY_MODEL",
        value_name = "DIR",
        required_unless_present = "rules"
    )]
    pub model: Option<PathBuf>,

    /// Also evaluate the rule files of <queries>/rules/ (built-in rules when
    /// the folder is missing), each at its own threshold.
    #[arg(long, env = "STOCKANOMALY_RULES")]
    pub rules: bool,

    /// The dates.
    #[command(flatten)]
    pub dates: super::shared::DateRangeArgs,

    /// The SQL files.
    #[command(flatten)]
    pub sql: super::shared::QueriesArgs,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("expected key=value, found {s:?}")),
    }
}

/// A usage mistake exits 2, anything else 1.
pub(crate) fn classify(e: TrainError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}

pub(crate) async fn run_train(lake: &str, args: TrainArgs) -> anyhow::Result<()> {
    args.dates.check()?;
    for (flag, p) in [
        ("--target-precision", args.target_precision),
        ("--target-event-precision", args.target_event_precision),
        ("--target-case-precision", args.target_case_precision),
    ] {
        if let Some(p) = p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(UsageError(format!("{flag} {p}: expected 0 < P <= 1")).into());
            }
        }
    }
    if args.rounds == 0 {
        return Err(UsageError("--rounds must be at least 1".into()).into());
    }
    let catalog = args.sql.catalog().await?;
    let root = open_lake(lake)?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("model/artifacts").join(catalog.hash()));
    let options = TrainOptions {
        from: args.dates.from,
        to: args.dates.to,
        valid_days: args.valid_days,
        test_days: args.test_days,
        params: args.params,
        rounds: args.rounds,
        patience: args.patience,
        seed: args.seed,
        target_precision: args.target_precision,
        target_event_precision: args.target_event_precision,
        target_case_precision: args.target_case_precision,
        episode_gap_us: i64::from(args.episode_gap_secs) * 1_000_000,
        rules: baseline_rules(&args.sql.queries, &catalog).await,
        balance_events: args.balance_events,
    };
    if args.ablate {
        let bar = count_bar(u64::from(args.rounds), "train rounds");
        let started = std::time::Instant::now();
        let rows = ablate(&root, &catalog, &options, &bar).await;
        bar.finish_and_clear();
        let rows = rows.map_err(classify)?;
        println!(
            "ablation of {} feature files on {root} ({:.1}s), test split, each model at its best \
             validation-F1 threshold:",
            catalog.files().len(),
            started.elapsed().as_secs_f64()
        );
        print_ablation(&rows);
        return Ok(());
    }
    let bar = count_bar(u64::from(args.rounds), "train rounds");
    let started = std::time::Instant::now();
    let manifest = train(&root, &catalog, &options, &out, &bar).await;
    bar.finish_and_clear();
    let manifest = manifest.map_err(classify)?;
    println!(
        "trained on feature set {} ({} features) from {root} in {:.2}s: {} rounds, best round {} \
         (valid aucpr {:.4}), stopped {}",
        manifest.feature_set,
        manifest.features.len(),
        started.elapsed().as_secs_f64(),
        manifest.rounds_trained,
        manifest.best_iteration,
        manifest.best_valid_aucpr,
        if manifest.rounds_trained < manifest.max_rounds {
            format!("after {} rounds without improvement", manifest.patience)
        } else {
            "at --rounds".to_owned()
        }
    );
    print_split_metrics(&manifest);
    let embargoed: u64 = manifest.splits.iter().map(|s| s.embargoed_rows).sum();
    println!(
        "threshold {:.6} ({}); embargo {}s dropped {} rows",
        manifest.threshold,
        rule(&manifest.threshold_rule),
        manifest.embargo_secs,
        count(embargoed)
    );
    if let Some(r) = &manifest.case_rule {
        println!("{}", case_rule_line(r));
    }
    print_baselines(&manifest);
    println!(
        "wrote {}, {} and {} (model version {})",
        out.join(MODEL_FILE).display(),
        out.join(MANIFEST_FILE).display(),
        out.join(REPORT_FILE).display(),
        manifest.version
    );
    Ok(())
}

pub(crate) async fn run_evaluate(lake: &str, args: EvaluateArgs) -> anyhow::Result<()> {
    args.dates.check()?;
    let catalog = args.sql.catalog().await?;
    let root = open_lake(lake)?;
    let mut rows: Vec<(String, String, Metrics)> = Vec::new();
    let mut threshold_line = None;
    if let Some(model) = &args.model {
        check_artifact(model)?;
        let (manifest, from, to, metrics): (Manifest, _, _, _) =
            evaluate(&root, &catalog, model, args.dates.from, args.dates.to)
                .await
                .map_err(classify)?;
        println!(
            "evaluated {} (model {}, feature set {}, best round {}) on {root}",
            model.display(),
            manifest.version,
            manifest.feature_set,
            manifest.best_iteration
        );
        rows.push(("eval".to_owned(), format!("{from}..{to}"), metrics));
        threshold_line = Some(format!(
            "threshold {:.6} ({})",
            manifest.threshold,
            rule(&manifest.threshold_rule)
        ));
    }
    if args.rules {
        let rules = RuleSet::load(&args.sql.queries, &catalog)
            .await
            .map_err(|e| UsageError(e.to_string()))?;
        let (from, to, metrics) = evaluate_rules(
            &root,
            &catalog,
            rules.rules(),
            args.dates.from,
            args.dates.to,
        )
        .await
        .map_err(classify)?;
        for (name, m) in metrics {
            rows.push((format!("rule:{name}"), format!("{from}..{to}"), m));
        }
    }
    let refs: Vec<(String, String, &Metrics)> = rows
        .iter()
        .map(|(a, b, m)| (a.clone(), b.clone(), m))
        .collect();
    print_table(&refs);
    if let Some(line) = threshold_line {
        println!("{line}");
    }
    Ok(())
}

fn check_artifact(dir: &std::path::Path) -> anyhow::Result<()> {
    crate::model::detectors::check_artifact(dir).map_err(load_error)
}

/// A usage mistake exits 2, anything else 1.
fn load_error(e: crate::model::detectors::LoadError) -> anyhow::Error {
    if e.is_usage() {
        UsageError(e.to_string()).into()
    } else {
        e.into()
    }
}

/// The detectors of `score`: the model in `model` (if any), then the rules
/// when `rules` is set.
pub(crate) async fn load_detectors(
    catalog: &Catalog,
    model: Option<&std::path::Path>,
    rules: bool,
    queries: &std::path::Path,
) -> anyhow::Result<Vec<Detector>> {
    crate::model::detectors::load_detectors(catalog, model, rules, queries)
        .await
        .map_err(load_error)
}

/// The rules of `queries` as training baselines; a broken rule file is
/// reported and training goes on without baselines.
pub(crate) async fn baseline_rules(queries: &std::path::Path, catalog: &Catalog) -> Vec<Rule> {
    match RuleSet::load(queries, catalog).await {
        Ok(set) => set.rules().to_vec(),
        Err(e) => {
            tracing::warn!("Rules not evaluated as baselines: {e}");
            Vec::new()
        }
    }
}

/// The test split's baselines beside the model's test metrics.
pub(crate) fn print_baselines(manifest: &Manifest) {
    let Some(test) = manifest.splits.iter().find(|s| s.name == "test") else {
        return;
    };
    let mut rows = Vec::new();
    if let Some(m) = manifest.metrics.get("test") {
        rows.push(("model".to_owned(), format!("{}..{}", test.from, test.to), m));
    }
    for (name, m) in &manifest.baselines {
        rows.push((
            format!("rule:{name}"),
            format!("{}..{}", test.from, test.to),
            m,
        ));
    }
    if rows.len() > 1 {
        println!("test split, model against the rules:");
        print_table(&rows);
    }
}

/// How cases open, in words.
pub(crate) fn case_rule_line(r: &crate::model::cases::CaseRule) -> String {
    let chosen = match (r.target_precision, r.target_reached) {
        (Some(p), true) => format!("lowest reaching validation case precision {p}"),
        (Some(p), false) => format!("best validation case F1: case precision {p} was not reached"),
        (None, _) => "best validation case F1".to_owned(),
    };
    format!(
        "cases open at case score {:.4} ({chosen}; learnt from {} validation alert episodes, {} true)",
        r.threshold, r.learnt_from.0, r.learnt_from.1
    )
}

fn rule(r: &ThresholdRule) -> String {
    match r {
        ThresholdRule::BestF1 => "best validation F1".to_owned(),
        ThresholdRule::TargetPrecision { target } => {
            format!("lowest reaching validation precision {target}")
        }
        ThresholdRule::TargetEventPrecision { target } => {
            format!("lowest reaching validation event precision {target}")
        }
        ThresholdRule::BestF1TargetMissed { target } => {
            format!("best validation F1: precision {target} was not reached")
        }
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.4}"))
}

/// The metrics table: one row per split, then recall per label kind.
/// The metrics table of every split a manifest records.
pub(crate) fn print_split_metrics(manifest: &Manifest) {
    let rows: Vec<(String, String, &Metrics)> = manifest
        .splits
        .iter()
        .filter_map(|s| {
            let m = manifest.metrics.get(&s.name)?;
            Some((s.name.clone(), format!("{}..{}", s.from, s.to), m))
        })
        .collect();
    print_table(&rows);
}

pub(crate) fn print_table(rows: &[(String, String, &Metrics)]) {
    println!(
        "{:<16} {:<22} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9}",
        "split", "dates", "rows", "pos", "roc_auc", "pr_auc", "p@pos", "p@100", "precision",
        "recall", "f1", "tp", "fp", "fn", "tn"
    );
    for (name, dates, m) in rows {
        let c = &m.confusion;
        println!(
            "{:<16} {:<22} {:>9} {:>7} {:>7} {:>7} {:>7.4} {:>7.4} {:>9.4} {:>7.4} {:>7.4} {:>7} {:>7} {:>7} {:>9}",
            name, dates, m.rows, m.positives, opt(m.roc_auc), opt(m.pr_auc),
            m.precision_at_positives, m.precision_at_100, m.precision, m.recall, m.f1,
            c.tp, c.fp, c.fn_, c.tn
        );
    }
    for (name, _, m) in rows {
        if m.recall_by_kind.is_empty() {
            continue;
        }
        let kinds: Vec<String> = m
            .recall_by_kind
            .iter()
            .map(|(k, r)| format!("{k} {}/{} ({:.2})", r.detected, r.positives, r.recall))
            .collect();
        println!("recall by kind, {name}: {}", kinds.join(", "));
    }
    for (name, _, m) in rows {
        if let Some(e) = &m.events {
            println!("{}", event_line(name, e));
        }
    }
    for (name, _, m) in rows {
        if let Some(c) = &m.cases {
            println!("{}", case_line(name, c));
        }
    }
}

/// One split's case metrics as a line: events caught by an opened case,
/// per kind, cases opened of the alert episodes, their precision, median
/// time to a case.
pub(crate) fn case_line(name: &str, c: &crate::model::cases::CaseMetrics) -> String {
    let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.0} s"));
    let kinds: Vec<String> = c
        .by_kind
        .iter()
        .map(|(k, r)| {
            format!(
                "{k} {}/{} ({:.2}, {})",
                r.detected,
                r.events,
                r.recall,
                secs(r.median_time_to_case_s)
            )
        })
        .collect();
    format!(
        "cases, {name}: event recall {:.2} ({}/{}; {}), {} cases opened of {} alert episodes, \
         {} true (case precision {:.2}), median time to a case {}",
        c.recall,
        c.detected,
        c.events,
        if kinds.is_empty() {
            "no events".to_owned()
        } else {
            kinds.join(", ")
        },
        c.cases,
        c.candidates,
        c.true_cases,
        c.precision,
        secs(c.median_time_to_case_s)
    )
}

/// The ablation table: one row per model (all files, then without each),
/// PR-AUC and its change, event recall and precision, then recall per kind.
fn print_ablation(rows: &[Ablation]) {
    let base = rows
        .iter()
        .find(|r| r.variant == Variant::All)
        .and_then(|r| r.test.pr_auc);
    let kinds: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.test.events.as_ref())
        .flat_map(|e| e.by_kind.keys().map(String::as_str))
        .collect();
    print!(
        "{:<22} {:>8} {:>7} {:>8} {:>8} {:>8}",
        "model", "features", "pr_auc", "delta", "ev_rec", "ev_prec"
    );
    for k in &kinds {
        print!(" {:>14}", truncate(k, 14));
    }
    println!();
    for r in rows {
        let name = r.variant.to_string();
        let delta = match (r.test.pr_auc, base) {
            (Some(p), Some(b)) if r.variant != Variant::All => format!("{:+.4}", p - b),
            _ => "-".to_owned(),
        };
        let (rec, prec) = r
            .test
            .events
            .as_ref()
            .map_or(("-".to_owned(), "-".to_owned()), |e| {
                (format!("{:.2}", e.recall), format!("{:.2}", e.precision))
            });
        print!(
            "{:<22} {:>8} {:>7} {:>8} {:>8} {:>8}",
            truncate(&name, 22),
            r.features,
            opt(r.test.pr_auc),
            delta,
            rec,
            prec
        );
        for k in &kinds {
            let cell = r
                .test
                .events
                .as_ref()
                .and_then(|e| e.by_kind.get(*k))
                .map_or_else(
                    || "-".to_owned(),
                    |x| format!("{}/{}", x.detected, x.events),
                );
            print!(" {cell:>14}");
        }
        println!();
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n.saturating_sub(1)).chain(['…']).collect()
    }
}

/// One split's event metrics as a line: events detected, per kind, alert
/// episodes and their precision, time to detect.
pub(crate) fn event_line(name: &str, e: &crate::model::EventMetrics) -> String {
    let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.0} s"));
    let kinds: Vec<String> = e
        .by_kind
        .iter()
        .map(|(k, r)| format!("{k} {}/{} ({:.2})", r.detected, r.events, r.recall))
        .collect();
    format!(
        "events, {name}: {}/{} detected (recall {:.2}; {}), {} alert episodes, {} true \
         (precision {:.2}), median time to detect {}",
        e.detected,
        e.events,
        e.recall,
        if kinds.is_empty() {
            "no events".to_owned()
        } else {
            kinds.join(", ")
        },
        e.episodes,
        e.true_episodes,
        e.precision,
        secs(e.median_time_to_detect_s)
    )
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn parses_train_flags() {
        let cli = Cli::try_parse_from([
            "stockanomaly",
            "train",
            "--params",
            "max_depth=4",
            "eta=0.05",
            "--rounds",
            "10",
            "--out",
            "m",
        ])
        .unwrap();
        let Command::Train(a) = cli.command else {
            panic!()
        };
        assert_eq!(
            a.params,
            [
                ("max_depth".to_owned(), "4".to_owned()),
                ("eta".to_owned(), "0.05".to_owned())
            ]
        );
        assert_eq!((a.rounds, a.patience, a.seed), (10, 20, 42));
        assert_eq!((a.valid_days, a.test_days), (1, 1));
        assert!(Cli::try_parse_from(["stockanomaly", "train", "--params", "oops"]).is_err());
        assert!(Cli::try_parse_from(["stockanomaly", "evaluate"]).is_err());
    }
}
