//! `stockanomaly demo`: the pipeline end to end on embedded defaults (files
//! and the Parquet lake; no servers).

use clap::Args;

use std::path::Path;

use super::output::count_bar;
use super::simulate::{print_summary, simulate_to_lake, RealismArgs, SimulateArgs};
use super::sql::{query_to, SqlFormat};
use super::train::{baseline_rules, classify, print_baselines, print_split_metrics};
use super::{open_lake, UsageError};
use crate::features::{backfill, training_session, BackfillOptions, Catalog, DEFAULT_QUERIES};
use crate::lake::session_context;
use crate::model::report::REPORT_FILE;
use crate::model::{ablate_variants, context_files, train, TrainOptions, Variant};
use crate::sources::simulate::{SimKind, Simulator};

/// `stockanomaly demo`.
///
/// The demo's market is the harder one the quality figures are measured on
/// (README, "Detection quality"): more decoys than `simulate`'s default, so
/// that its training and test days hold market shocks and swings for the
/// market context to explain.
#[derive(Debug, Args)]
#[command(mut_arg("decoys_per_symbol_day", |a| a.default_value(DEMO_DECOYS)))]
pub struct DemoArgs {
    /// Symbols to simulate.
    #[arg(long, env = "STOCKANOMALY_DEMO_SYMBOLS", default_value_t = 8)]
    pub symbols: usize,

    /// Trading days to simulate (6 to train on, 1 to validate, 1 to test).
    #[arg(long, env = "STOCKANOMALY_DEMO_DAYS", default_value_t = 8)]
    pub days: usize,

    /// Mean trades per symbol per day.
    #[arg(
        long,
        env = "STOCKANOMALY_DEMO_TRADES_PER_DAY",
        default_value_t = 5_000.0
    )]
    pub trades_per_day: f64,

    /// Mean injected manipulation events per symbol per day (enough that every
    /// split of the demo's training holds some).
    #[arg(long, env = "STOCKANOMALY_DEMO_EVENTS", default_value_t = 1.0)]
    pub events_per_symbol_day: f64,

    /// Random seed.
    #[arg(long, env = "STOCKANOMALY_DEMO_SEED", default_value_t = 42)]
    pub seed: u64,

    /// The simulated market's realism (as for `simulate`).
    #[command(flatten)]
    pub realism: RealismArgs,
}

/// The demo's decoys per symbol-day (`simulate` defaults to 0.5).
const DEMO_DECOYS: &str = "1.5";

pub(crate) async fn run(lake: &str, args: DemoArgs) -> anyhow::Result<()> {
    let root = open_lake(lake)?;
    println!("== 1. simulate a market with labelled manipulation into {root}");
    let sim_args = SimulateArgs {
        symbols: args.symbols,
        days: args.days,
        kind: SimKind::Trades,
        seed: args.seed,
        start: chrono::NaiveDate::from_ymd_opt(2024, 1, 2).unwrap_or_default(),
        trades_per_day: args.trades_per_day,
        events_per_symbol_day: args.events_per_symbol_day,
        realism: args.realism.clone(),
        csv: None,
    };
    let sim = Simulator::new(sim_args.config());
    let summary = simulate_to_lake(&sim, &root).await?;
    print_summary(&sim_args, &summary, &root.to_string());

    println!("\n== 2. what the lake holds");
    let ctx = session_context(&root).await?;
    let stdout = || -> Box<dyn std::io::Write + Send> { Box::new(std::io::stdout()) };
    query_to(
        &ctx,
        "SELECT date, count(*) AS ticks, count(DISTINCT symbol) AS symbols, \
         min(ts) AS first_tick, max(ts) AS last_tick FROM ticks GROUP BY date ORDER BY date",
        SqlFormat::Table,
        stdout(),
    )
    .await?;
    query_to(
        &ctx,
        "SELECT kind, count(*) AS events, count(DISTINCT symbol) AS symbols, \
         round(min(date_part('epoch', end_ts) - date_part('epoch', start_ts)), 1) AS shortest_s, \
         round(max(date_part('epoch', end_ts) - date_part('epoch', start_ts)), 1) AS longest_s \
         FROM labels GROUP BY kind ORDER BY kind",
        SqlFormat::Table,
        stdout(),
    )
    .await?;

    println!("\n== 3. backfill the feature pack over the lake");
    let catalog = Catalog::load_or_embedded(Path::new(DEFAULT_QUERIES))
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let bar = count_bar(0, "backfill dates");
    let s = backfill(&root, &catalog, &BackfillOptions::default(), &bar).await;
    bar.finish_and_clear();
    let s = s?;
    println!(
        "feature set {}: {} features from {} files, lookback {}; {} dates computed ({} already done), {} rows",
        catalog.hash(),
        catalog.feature_names().len(),
        catalog.files().len(),
        catalog.lookback(),
        s.dates_done.len(),
        s.dates_skipped.len(),
        s.rows
    );
    println!("\nHow the features tell manipulation from normal trading (mean per label kind):");
    let ctx = training_session(&root, &catalog).await?;
    query_to(
        &ctx,
        "SELECT coalesce(kind, '(normal)') AS kind, count(*) AS ticks, \
         round(avg(abs(price_z_30m)), 2) AS abs_price_z, round(avg(abs(ret_ewm_z)), 2) AS abs_ret_ewm_z, \
         round(avg(volume_share_5m), 2) AS volume_share_5m, round(avg(burst_ratio), 2) AS burst_ratio, \
         round(avg(abs(imbalance_1m)), 2) AS abs_imbalance_1m, round(avg(range_5m) * 1e4, 1) AS range_5m_bps \
         FROM training GROUP BY kind ORDER BY kind",
        SqlFormat::Table,
        stdout(),
    )
    .await?;

    println!("\n== 4. train XGBoost on the earlier days, evaluate on the held-out last day");
    let out = Path::new("model/artifacts").join(catalog.hash());
    let options = TrainOptions {
        rounds: 150,
        patience: 15,
        rules: baseline_rules(Path::new(DEFAULT_QUERIES), &catalog).await,
        ..TrainOptions::default()
    };
    let bar = count_bar(u64::from(options.rounds), "train rounds");
    let manifest = train(&root, &catalog, &options, &out, &bar).await;
    bar.finish_and_clear();
    let manifest = manifest.map_err(classify)?;
    print_split_metrics(&manifest);
    println!(
        "best round {} of {}, threshold {:.4}; model version {}",
        manifest.best_iteration, manifest.rounds_trained, manifest.threshold, manifest.version
    );
    print_context_margin(&root, &catalog, &options, &manifest).await?;
    println!("\n== 5. the model against the prototype's rule on the held-out day");
    print_baselines(&manifest);

    println!("\n== 6. replay the held-out day through the streaming executor");
    stream_test_day(&root, &catalog, &out, &manifest).await?;

    println!(
        "\nModel, manifest and report: {}",
        out.join(REPORT_FILE).display()
    );
    println!(
        "Next: stockanomaly score --model {} --rules --top-shap 3",
        out.display()
    );
    Ok(())
}

/// Trains the per-symbol-only pack (without the files that read the market
/// or wait for later ticks) on the same splits and prints its test PR-AUC
/// and event recall beside the full pack's: what the context buys.
async fn print_context_margin(
    root: &crate::lake::LakeRoot,
    catalog: &Catalog,
    options: &TrainOptions,
    manifest: &crate::model::Manifest,
) -> anyhow::Result<()> {
    let context = context_files(catalog);
    if context.is_empty() {
        return Ok(());
    }
    let bar = count_bar(u64::from(options.rounds), "train rounds (per-symbol only)");
    let rows = ablate_variants(
        root,
        catalog,
        options,
        &[Variant::PerSymbolOnly(context.clone())],
        &bar,
    )
    .await;
    bar.finish_and_clear();
    let rows = rows.map_err(classify)?;
    let Some(per_symbol) = rows.first() else {
        return Ok(());
    };
    let full = manifest.metrics.get("test");
    let pr = |m: Option<&crate::model::Metrics>| m.and_then(|m| m.pr_auc);
    let recall = |m: Option<&crate::model::Metrics>| {
        m.and_then(|m| m.events.as_ref()).map_or_else(
            || "-".to_owned(),
            |e| format!("{}/{}", e.detected, e.events),
        )
    };
    let cases = |m: Option<&crate::model::Metrics>| {
        m.and_then(|m| m.cases.as_ref()).map_or_else(
            || "-".to_owned(),
            |c| format!("{} (case precision {:.2})", c.cases, c.precision),
        )
    };
    let fmt = |p: Option<f64>| p.map_or_else(|| "-".to_owned(), |p| format!("{p:.4}"));
    let gain = match (pr(full), per_symbol.test.pr_auc) {
        (Some(a), Some(b)) => format!(" ({:+.4})", a - b),
        _ => String::new(),
    };
    println!(
        "test PR-AUC with market context and confirmation ({}): {}{gain}, events {}, cases {}; \
         per-symbol files only, same days: {}, events {}, alert episodes {}",
        context.join(", "),
        fmt(pr(full)),
        recall(full),
        cases(full),
        fmt(per_symbol.test.pr_auc),
        recall(Some(&per_symbol.test)),
        cases(Some(&per_symbol.test)),
    );
    Ok(())
}

/// Replays the test split's ticks through the streaming executor (in
/// process, after warming up on the day before), writes its alerts to the
/// lake's `alerts` table and prints them against the labels.
async fn stream_test_day(
    root: &crate::lake::LakeRoot,
    catalog: &Catalog,
    model_dir: &Path,
    manifest: &crate::model::Manifest,
) -> anyhow::Result<()> {
    use crate::model::{Detector, ModelDetector};
    use crate::sinks::lake::{LakeAlertSink, LakeWrites};
    use crate::sinks::AlertSink;
    use crate::sources::replay::BatchReplay;
    use crate::stream::{
        driver, load_symbols, ticks_in_arrival_order, DriverOptions, Executor, ExecutorConfig,
        ExecutorStage,
    };

    let (Some(valid), Some(test)) = (manifest.splits.get(1), manifest.splits.get(2)) else {
        anyhow::bail!("the manifest has no validation and test splits");
    };
    let model = ModelDetector::load(model_dir, catalog).map_err(classify)?;
    let version = model.version.clone();
    let ex = Executor::new(
        catalog.clone(),
        vec![Detector::Model(Box::new(model))],
        Some(load_symbols(root).await?),
        ExecutorConfig::default(),
    )?
    .with_profiles(root.clone());
    // History first: the last validation day, replayed without emitting.
    let history = ticks_in_arrival_order(root, valid.to, valid.to).await?;
    let ticks = ticks_in_arrival_order(root, test.from, test.to).await?;
    let total = ticks.num_rows();
    let started = std::time::Instant::now();
    let bar = count_bar(total as u64, "stream ticks");
    let batch = 5_000;
    // The day in micro-batches through the streaming driver, then the
    // groups still open at the end; alerts into the lake's `alerts` table.
    let mut source = BatchReplay::new(ticks, batch)
        .with_history(history)
        .with_progress(bar.clone());
    let mut stage = ExecutorStage::replay(ex);
    let mut sinks: Vec<Box<dyn AlertSink>> = vec![Box::new(LakeAlertSink::new(
        root.clone(),
        LakeWrites::AtClose,
    ))];
    let run = driver::run(
        &mut source,
        &mut stage,
        &mut sinks,
        &DriverOptions {
            exit_when_idle: None,
            stats_every: None,
            shutdown: crate::shutdown::Shutdown::never(),
            metrics: None,
            overlap_writes: false,
        },
    )
    .await?;
    bar.finish_and_clear();
    let (emitted, raised) = (run.emitted, run.raised);
    let took = started.elapsed();
    println!(
        "streamed {} ticks of {}..{} in micro-batches of {batch}: {} emitted, {raised} alerts, {}",
        total,
        test.from,
        test.to,
        emitted,
        super::output::rate(total as f64, took)
    );
    let ctx = crate::lake::session_context(root).await?;
    let stdout = || -> Box<dyn std::io::Write + Send> { Box::new(std::io::stdout()) };
    query_to(
        &ctx,
        &format!(
            // False alarms are told apart by the decoy they fell in, if any.
            "WITH a AS (SELECT a.symbol, a.ts, a.seq, min(l.kind) AS kind, min(d.kind) AS decoy \
               FROM alerts a \
               LEFT JOIN labels l ON a.symbol = l.symbol AND a.ts BETWEEN l.start_ts AND l.end_ts \
               LEFT JOIN decoys d ON a.symbol = d.symbol AND a.ts BETWEEN d.start_ts AND d.end_ts \
               WHERE a.model_version = '{version}' GROUP BY a.symbol, a.ts, a.seq) \
             SELECT coalesce(kind, '(no label: ' || decoy || ' decoy)', '(no label: false alarm)') AS kind, \
             count(*) AS alerts FROM a GROUP BY 1 ORDER BY 1"
        ),
        SqlFormat::Table,
        stdout(),
    )
    .await?;
    let tctx = training_session(root, catalog).await?;
    let labelled = crate::cli::sql::scalar_i64(
        &tctx,
        &format!(
            "SELECT count(*) FROM training WHERE label = 1 AND date >= '{}' AND date <= '{}'",
            test.from, test.to
        ),
    )
    .await?;
    let hits = crate::cli::sql::scalar_i64(
        &ctx,
        &format!(
            "SELECT count(*) FROM (SELECT DISTINCT a.symbol, a.ts, a.seq FROM alerts a JOIN labels l \
             ON a.symbol = l.symbol AND a.ts BETWEEN l.start_ts AND l.end_ts \
             WHERE a.model_version = '{version}')"
        ),
    )
    .await?;
    let ratio = |a: i64, b: i64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    println!(
        "streaming alerts: precision {:.4} ({hits}/{raised}), recall {:.4} ({hits}/{labelled} labelled ticks)",
        ratio(hits, raised as i64),
        ratio(hits, labelled)
    );
    Ok(())
}
