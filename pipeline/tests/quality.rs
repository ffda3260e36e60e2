//! Detection quality on the harder simulated market: the shipped pack must
//! reach the PR-AUC target on held-out days, and its context files (market
//! context, delayed confirmation) must lift it well above the per-symbol
//! files alone on the same days.
//!
//! Simulated (20 symbols, 8 days, 2,000 trades and one event per
//! symbol-day) with decoys at 1.5 per symbol-day: news and index-rebalance
//! closes per symbol-day, market-wide shocks and swings per venue-day, each
//! with probability 3/8, so that the training and test days hold what
//! market context exists to explain. A market swing (a run-up that reverts)
//! is a pump and dump in every symbol of the venue: only the cross-section
//! tells them apart. Two seeds: one market's test days are a small sample.

mod common;

use std::path::Path;

use stockanomaly::features::Catalog;
use stockanomaly::lake::LakeRoot;
use stockanomaly::model::{ablate_variants, context_files, TrainOptions, Variant};

use common::queries;

/// Simulates `seed`'s market into `lake` and backfills it with the
/// repository's pack.
fn simulate_backfill(dir: &Path, lake: &str, seed: &str) {
    common::simulate_more_backfill(
        dir,
        lake,
        ["20", "8", "2000", "1", seed],
        &["--decoys-per-symbol-day", "1.5"],
        &queries(),
    );
}

/// Test PR-AUCs of the whole pack and of its per-symbol files, one pair per
/// seed, on the last 2 of 8 days, with a line per seed.
async fn measure(seeds: &[&str]) -> (Vec<f64>, Vec<f64>, String) {
    let catalog = Catalog::load(&queries()).await.unwrap();
    let context = context_files(&catalog);
    assert_eq!(context, ["confirm", "market"], "the pack's context files");
    let options = TrainOptions {
        rounds: 300,
        patience: 30,
        test_days: 2,
        ..TrainOptions::default()
    };
    assert!(
        options.balance_events,
        "training balances events by default"
    );
    let variants = [Variant::All, Variant::PerSymbolOnly(context)];
    let mut report = String::new();
    let (mut full, mut per_symbol) = (Vec::new(), Vec::new());
    for seed in seeds {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        let lake = lake.to_str().unwrap();
        simulate_backfill(dir.path(), lake, seed);
        let root = LakeRoot::parse(lake).unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let rows = ablate_variants(&root, &catalog, &options, &variants, &bar)
            .await
            .unwrap();
        assert_eq!(rows.len(), 2, "both models trained");
        assert_eq!(rows[1].features + 8, rows[0].features, "8 context features");
        let pr = |i: usize| rows[i].test.pr_auc.expect("the test days hold positives");
        let precision = |i: usize| rows[i].test.events.as_ref().expect("events").precision;
        report.push_str(&format!(
            "seed {seed}: all files {:.4} (episode precision {:.2}), \
             per-symbol only {:.4} ({:.2})\n",
            pr(0),
            precision(0),
            pr(1),
            precision(1)
        ));
        full.push(pr(0));
        per_symbol.push(pr(1));
    }
    (full, per_symbol, report)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

#[tokio::test]
async fn the_pack_reaches_the_pr_auc_target_and_context_lifts_it_well_above_per_symbol_files() {
    let (full, per_symbol, report) = measure(&["4", "5"]).await;
    let margin = mean(&full) - mean(&per_symbol);
    eprintln!("{report}mean margin {margin:+.4}");
    assert!(
        mean(&full) >= TARGET && full.iter().all(|&p| p >= FLOOR),
        "test PR-AUC below the target {TARGET} (each at least {FLOOR}):\n{report}"
    );
    assert!(
        margin >= LIFT,
        "market context and confirmation must lift the mean test PR-AUC by {LIFT}:\n{report}mean margin {margin:+.4}"
    );
    assert!(
        full.iter().zip(&per_symbol).all(|(f, p)| f > p),
        "context must lift every seed:\n{report}"
    );
}

/// The PR-AUC target, for the mean over the seeds.
const TARGET: f64 = 0.85;
/// Each seed's least test PR-AUC accepted.
const FLOOR: f64 = 0.8;
/// The least mean lift of the context files over the per-symbol files.
const LIFT: f64 = 0.04;
