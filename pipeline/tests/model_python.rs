//! `stockanomaly score` against Python's `xgboost`, both ways: Python loads
//! our `model.json` and predicts what `score` wrote, and a model trained in
//! Python scores identically from Rust. Needs the venv of `make test`
//! (STOCKANOMALY_TEST_PYTHON).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{ok, queries, service_env};
use stockanomaly::features::Catalog;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/xgb_parity.py")
}

fn python(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(service_env("STOCKANOMALY_TEST_PYTHON"))
        .current_dir(dir)
        .arg(script())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "xgb_parity.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// `(symbol, ts µs, seq)` → score, from `scores` rows of one version.
fn rust_scores(dir: &Path, lake: &str, version: &str) -> BTreeMap<common::Key, f64> {
    common::sql_json(
        dir,
        lake,
        &format!(
            "SELECT symbol, CAST(ts AS BIGINT) AS ts, seq, score FROM scores \
             WHERE model_version = '{version}'"
        ),
    )
    .iter()
    .map(|v| (common::json_key(v), v["score"].as_f64().unwrap()))
    .collect()
}

#[tokio::test]
async fn python_and_rust_xgboost_agree_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    let lake = lake_path.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    common::simulate_backfill(dir.path(), lake, ["4", "4", "800", "3", "11"]);
    ok(
        dir.path(),
        &[
            "train",
            "--lake",
            lake,
            "--queries",
            q,
            // Enough rounds for early stopping to stop before the last
            // (the data and seed are fixed, so it does every run).
            "--rounds",
            "80",
            "--patience",
            "5",
            "--out",
            "m1",
        ],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("m1/manifest.json")).unwrap())
            .unwrap();
    let test_day = manifest["splits"][2]["from"].as_str().unwrap();
    ok(
        dir.path(),
        &[
            "score",
            "--lake",
            lake,
            "--queries",
            q,
            "--model",
            "m1",
            "--from",
            test_day,
        ],
    );
    let hash = Catalog::load(&queries()).await.unwrap().hash().to_owned();

    // Python loads our model.json and predicts what `score` wrote.
    let summary = python(
        dir.path(),
        &["predict", lake, &hash, "m1", test_day, test_day],
    );
    assert!(summary["rows"].as_u64().unwrap() > 500, "{summary}");
    assert_eq!(summary["missing"], 0, "{summary}");
    assert_eq!(summary["version"], manifest["version"], "{summary}");
    // Bit for bit: both are the same f32 (Rust widens it to f64 exactly).
    assert_eq!(
        summary["max_abs_diff"].as_f64(),
        Some(0.0),
        "Python's inplace_predict differs from `score`'s: {summary}"
    );
    // A scikit-learn user passes no iteration_range: model.json's
    // best_iteration attribute (as Python's early stopping leaves it) picks
    // the rounds `score` used, bit for bit.
    let best = manifest["best_iteration"].as_u64().unwrap();
    assert_eq!(
        summary["best_iteration_attr"],
        best.to_string(),
        "{summary}"
    );
    assert_eq!(summary["sklearn_best_iteration"].as_u64(), Some(best));
    assert!(summary["best_score_attr"].is_string(), "{summary}");
    assert_eq!(
        summary["max_abs_diff_sklearn"].as_f64(),
        Some(0.0),
        "XGBClassifier differs from `score`: {summary}"
    );
    // Early stopping left trees after the best round, so the attribute is
    // what made the difference.
    assert!(
        best + 1 < manifest["rounds_trained"].as_u64().unwrap(),
        "early stopping stopped early: {manifest}"
    );
    assert_eq!(summary["every_tree_differs"], true, "{summary}");

    // A model trained in Python scores identically from Rust.
    let trained = python(dir.path(), &["train", lake, &hash, "m1", "py"]);
    assert!(trained["positives"].as_u64().unwrap() > 0, "{trained}");
    ok(
        dir.path(),
        &["score", "--lake", lake, "--queries", q, "--model", "py"],
    );
    let theirs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("py/py_scores.json")).unwrap())
            .unwrap();
    let version = theirs["version"].as_str().unwrap();
    let ours = rust_scores(dir.path(), lake, version);
    let rows = theirs["rows"].as_array().unwrap();
    assert_eq!(ours.len(), rows.len(), "one Rust score per Python row");
    let mut max_diff = 0.0f64;
    for r in rows {
        let key = (
            r[0].as_str().unwrap().to_owned(),
            r[1].as_i64().unwrap(),
            r[2].as_u64().unwrap() as u32,
        );
        let rust = ours
            .get(&key)
            .unwrap_or_else(|| panic!("no Rust score for {key:?}"));
        max_diff = max_diff.max((rust - r[3].as_f64().unwrap()).abs());
    }
    assert_eq!(max_diff, 0.0, "max |rust - python inplace_predict|");
}
