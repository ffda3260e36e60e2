//! `stockanomaly train` and `evaluate` end to end: simulate, backfill,
//! train with few rounds, then check the artifacts, determinism and the
//! refusals.

mod common;

use std::path::{Path, PathBuf};

use stockanomaly::features::Catalog;

use common::{ok, run, sql_number};

fn queries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries")
}

/// The column `name` of the row starting with `split` in a metrics table.
fn table_cell(stdout: &str, split: &str, name: &str) -> String {
    let header: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("split "))
        .unwrap_or_else(|| panic!("no metrics table in {stdout}"))
        .split_whitespace()
        .collect();
    let col = header.iter().position(|h| *h == name).unwrap();
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(split))
        .unwrap_or_else(|| panic!("no {split} row in {stdout}"));
    row.split_whitespace().nth(col).unwrap().to_owned()
}

fn train_args<'a>(lake: &'a str, queries: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--lake",
        lake,
        "--queries",
        queries,
        "--rounds",
        "15",
        "--patience",
        "5",
        "--out",
        out,
    ]
}

#[tokio::test]
async fn trains_evaluates_and_refuses_a_mismatched_model() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    let q = queries();
    let q = q.to_str().unwrap();
    ok(
        dir.path(),
        &[
            "simulate",
            "--lake",
            lake,
            "--symbols",
            "4",
            "--days",
            "5",
            "--trades-per-day",
            "1000",
            "--events-per-symbol-day",
            "3",
            "--seed",
            "4",
        ],
    );
    ok(dir.path(), &["backfill", "--lake", lake, "--queries", q]);
    let rows = sql_number(dir.path(), lake, "SELECT count(*) FROM ticks");

    let out = ok(dir.path(), &train_args(lake, q, "m1"));
    let m1 = dir.path().join("m1");
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m1.join("model.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m1.join("manifest.json")).unwrap()).unwrap();

    // The catalog's features, in order, in the manifest and the model.
    let catalog = Catalog::load(&queries()).await.unwrap();
    let names: Vec<&str> = catalog.feature_names();
    let listed: Vec<&str> = manifest["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed, names);
    assert_eq!(manifest["feature_set"], catalog.hash());
    assert_eq!(
        model["learner"]["feature_names"],
        serde_json::json!(names),
        "model.json names its features"
    );
    assert_eq!(manifest["xgboost_version"], "3.4.1");
    let best = manifest["best_iteration"].as_u64().unwrap();
    assert!(best < 15, "{manifest}");
    let split_names: Vec<&str> = manifest["splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(split_names, ["train", "valid", "test"]);
    let split_rows: i64 = manifest["splits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["rows"].as_u64().unwrap() + s["embargoed_rows"].as_u64().unwrap()) as i64)
        .sum();
    assert_eq!(split_rows, rows, "every feature row is in one split");

    // Better than random on the held-out test day.
    let test = &manifest["metrics"]["test"];
    let rate = test["positives"].as_f64().unwrap() / test["rows"].as_f64().unwrap();
    let pr_auc: f64 = table_cell(&out, "test", "pr_auc").parse().unwrap();
    assert!(
        (pr_auc - test["pr_auc"].as_f64().unwrap()).abs() < 1e-4,
        "{out}"
    );
    assert!(
        pr_auc > rate,
        "test PR-AUC {pr_auc} <= positive rate {rate}:\n{out}"
    );

    // Same seed, same bytes.
    ok(dir.path(), &train_args(lake, q, "m2"));
    assert!(
        std::fs::read(m1.join("model.json")).unwrap()
            == std::fs::read(dir.path().join("m2/model.json")).unwrap(),
        "two trainings with the same seed differ"
    );

    // Evaluate on the test day prints the same metrics as training did.
    let test_day = manifest["splits"][2]["from"].as_str().unwrap();
    let eval = ok(
        dir.path(),
        &[
            "evaluate",
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
    assert_eq!(
        table_cell(&eval, "eval", "pr_auc"),
        table_cell(&out, "test", "pr_auc"),
        "{eval}"
    );

    // A manifest whose feature list differs is refused, naming the feature.
    let mut tampered = manifest.clone();
    tampered["features"][2] = "renamed_feature".into();
    std::fs::write(
        m1.join("manifest.json"),
        serde_json::to_vec_pretty(&tampered).unwrap(),
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["evaluate", "--lake", lake, "--queries", q, "--model", "m1"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`renamed_feature`"), "{stderr}");
    assert!(stderr.contains(&format!("`{}`", names[2])), "{stderr}");
}

#[test]
fn train_without_a_backfill_says_to_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake = lake.to_str().unwrap();
    ok(
        dir.path(),
        &[
            "simulate",
            "--lake",
            lake,
            "--symbols",
            "1",
            "--days",
            "1",
            "--trades-per-day",
            "100",
            "--seed",
            "1",
        ],
    );
    let q = queries();
    let out = run(
        dir.path(),
        &["train", "--lake", lake, "--queries", q.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("run `stockanomaly backfill` first"),
        "{stderr}"
    );
    assert!(!dir.path().join("model").exists());
}
