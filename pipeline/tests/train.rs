//! `stockanomaly train` and `evaluate` end to end: simulate, backfill,
//! train with few rounds, then check the artifacts, determinism and the
//! refusals.

mod common;

use std::collections::BTreeMap;

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
    // Cases: the rule learnt on validation, and figures per split.
    let case_rule = &manifest["case_rule"];
    assert!(case_rule["threshold"].as_f64().is_some(), "{manifest}");
    assert!(
        case_rule["learnt_from"][0].as_u64().unwrap() > 0,
        "{manifest}"
    );
    for split in ["train", "valid", "test"] {
        let c = &manifest["metrics"][split]["cases"];
        assert!(
            c["cases"].as_u64().unwrap() <= c["candidates"].as_u64().unwrap(),
            "{c}"
        );
        assert!(
            out.contains(&format!("cases, {split}: event recall")),
            "{out}"
        );
    }
    assert!(out.contains("cases open at case score"), "{out}");
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

    // Events: every label interval of the test day is one, counted once;
    // the printed line agrees with the manifest.
    let ev = &test["events"];
    let labelled = sql_number(
        dir.path(),
        lake,
        &format!(
            "SELECT count(*) FROM labels WHERE date = '{}'",
            manifest["splits"][2]["from"].as_str().unwrap()
        ),
    );
    assert!(labelled > 0);
    assert_eq!(ev["events"].as_i64().unwrap(), labelled, "{ev}");
    let by_kind: i64 = ev["by_kind"]
        .as_object()
        .unwrap()
        .values()
        .map(|k| k["events"].as_i64().unwrap())
        .sum();
    assert_eq!(by_kind, labelled);
    assert!(ev["detected"].as_u64() <= ev["events"].as_u64());
    assert!(ev["true_episodes"].as_u64() <= ev["episodes"].as_u64());
    assert!(
        out.contains(&format!(
            "events, test: {}/{} detected",
            ev["detected"], ev["events"]
        )),
        "{out}"
    );

    // A threshold chosen for an event precision reaches it on validation.
    let mut args = train_args(lake, q, "m-events");
    args.extend(["--target-event-precision", "0.5"]);
    ok(dir.path(), &args);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("m-events/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["threshold_rule"]["rule"], "target_event_precision", "{m}");
    assert!(
        m["metrics"]["valid"]["events"]["precision"]
            .as_f64()
            .unwrap()
            >= 0.5,
        "{m}"
    );

    // What each feature file buys: one model with every file (the same as
    // m1: same splits, rounds and seed), one without each file.
    let mut args = train_args(lake, q, "-");
    args.truncate(args.len() - 2);
    args.push("--ablate");
    let ablation = ok(dir.path(), &args);
    let files: Vec<String> = catalog.files().iter().map(|f| f.name.clone()).collect();
    let row = |name: &str| -> Vec<String> {
        ablation
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name:?} in:\n{ablation}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let all = row("all files");
    assert_eq!(all[2], names.len().to_string(), "{ablation}");
    assert_eq!(
        all[3],
        format!("{:.4}", test["pr_auc"].as_f64().unwrap()),
        "the all-files model is the trained one:\n{ablation}"
    );
    for f in &files {
        let file = catalog.files().iter().find(|x| &x.name == f).unwrap();
        let r = row(&format!("without {f}"));
        assert_eq!(
            r[2].parse::<usize>().unwrap(),
            names.len() - file.features.len(),
            "{ablation}"
        );
        assert!(r[4].starts_with('+') || r[4].starts_with('-'), "{ablation}");
    }
    assert!(!dir.path().join("-").exists(), "--ablate writes no model");

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

    // The manifest records the version, importance and the rule baseline.
    assert!(
        manifest["version"].as_str().unwrap().starts_with("xgb-"),
        "{manifest}"
    );
    assert_eq!(
        manifest["importance"].as_array().unwrap().len(),
        names.len()
    );
    assert!(
        manifest["importance"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |i| i["gain"].as_f64().unwrap() > 0.0 && i["mean_abs_shap"].as_f64().unwrap() > 0.0
            ),
        "{manifest}"
    );
    assert_eq!(
        manifest["baselines"]["zscore_4"]["rows"], test["rows"],
        "the rule is scored on the model's test rows"
    );
    assert!(out.contains("rule:zscore_4"), "{out}");

    // The report renders every plot, each with something drawn.
    let html = std::fs::read_to_string(m1.join("report.html")).unwrap();
    let drawn = plots_drawn(&html);
    for plot in stockanomaly::model::report::PLOTS {
        assert!(
            drawn.get(plot).copied().unwrap_or(0) > 0,
            "plot {plot} missing or empty: {drawn:?}"
        );
    }

    // Evaluate runs the rules like a model.
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
            "--rules",
            "--from",
            test_day,
        ],
    );
    assert_eq!(
        table_cell(&eval, "rule:zscore_4", "pr_auc"),
        format!(
            "{:.4}",
            manifest["baselines"]["zscore_4"]["pr_auc"]
                .as_f64()
                .unwrap()
        ),
        "{eval}"
    );

    // Score writes one row per feature row and detector, reasons on alerts.
    let scored = ok(
        dir.path(),
        &[
            "score",
            "--lake",
            lake,
            "--queries",
            q,
            "--model",
            "m1",
            "--rules",
            "--top-shap",
            "2",
        ],
    );
    assert!(scored.contains("rule zscore_4"), "{scored}");
    // The opened cases of the run, one row each, joining both detectors'
    // alerts: each case's alert count is the alerting ticks of its symbol
    // inside its span.
    let opened = sql_number(dir.path(), lake, "SELECT count(*) FROM cases");
    assert!(opened > 0, "{scored}");
    assert!(
        scored.contains(&format!("{opened} case(s) opened of")),
        "{scored}"
    );
    assert_eq!(
        sql_number(
            dir.path(),
            lake,
            "SELECT count(DISTINCT case_id) FROM cases"
        ),
        opened
    );
    assert_eq!(
        sql_number(
            dir.path(),
            lake,
            &format!(
                "SELECT count(*) FROM cases WHERE model_version = '{}' \
                 AND start_ts <= opened_ts AND opened_ts <= end_ts AND peak_ts >= start_ts \
                 AND peak_ts <= end_ts AND model_alerts >= 1 AND alerts >= model_alerts \
                 AND top_shap IS NOT NULL AND status IN ('open', 'closed')",
                manifest["version"].as_str().unwrap()
            )
        ),
        opened
    );
    assert_eq!(
        sql_number(
            dir.path(),
            lake,
            "SELECT count(*) FROM (SELECT c.case_id, c.alerts, \
             count(DISTINCT CAST(s.ts AS BIGINT) * 1000 + s.seq) AS n \
             FROM cases c JOIN scores s ON s.symbol = c.symbol AND s.alert \
             AND s.ts >= c.start_ts AND s.ts <= c.end_ts \
             GROUP BY c.case_id, c.alerts) WHERE n = alerts"
        ),
        opened
    );
    assert_eq!(
        sql_number(
            dir.path(),
            lake,
            "SELECT count(DISTINCT model_version) FROM scores"
        ),
        2
    );
    assert_eq!(
        sql_number(dir.path(), lake, "SELECT count(*) FROM scores"),
        2 * rows
    );
    assert_eq!(
        sql_number(
            dir.path(),
            lake,
            "SELECT count(*) FROM scores WHERE alert AND (reason IS NULL OR score < threshold)"
        ),
        0
    );
    assert_eq!(
        sql_number(
            dir.path(),
            lake,
            "SELECT count(*) FROM scores WHERE NOT alert AND (reason IS NOT NULL OR score >= threshold)"
        ),
        0
    );
    let version = manifest["version"].as_str().unwrap();
    let model_alerts = sql_number(
        dir.path(),
        lake,
        &format!("SELECT count(*) FROM scores WHERE model_version = '{version}' AND alert"),
    );
    assert!(model_alerts > 0);
    assert_eq!(
        sql_number(
            dir.path(),
            lake,
            &format!(
                "SELECT count(*) FROM scores WHERE model_version = '{version}' AND alert \
                 AND top_shap IS NOT NULL AND reason LIKE 'model: %'"
            ),
        ),
        model_alerts
    );
    let shap = ok(
        dir.path(),
        &[
            "sql",
            "--lake",
            lake,
            "--format",
            "json",
            &format!(
                "SELECT top_shap FROM scores WHERE model_version = '{version}' AND alert LIMIT 5"
            ),
        ],
    );
    for line in shap.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let top: serde_json::Value =
            serde_json::from_str(row["top_shap"].as_str().unwrap()).unwrap();
        let top = top.as_array().unwrap();
        assert_eq!(top.len(), 2, "{row}");
        let c: Vec<f64> = top
            .iter()
            .map(|t| t["contribution"].as_f64().unwrap().abs())
            .collect();
        assert!(c[0] >= c[1], "largest contribution first: {row}");
        assert!(names.contains(&top[0]["feature"].as_str().unwrap()));
    }
    // Scoring again replaces the rows instead of adding to them.
    ok(
        dir.path(),
        &["score", "--lake", lake, "--queries", q, "--model", "m1"],
    );
    assert_eq!(
        sql_number(
            dir.path(),
            lake,
            &format!("SELECT count(*) FROM scores WHERE model_version = '{version}'")
        ),
        rows
    );
    assert_eq!(
        sql_number(dir.path(), lake, "SELECT count(*) FROM cases"),
        sql_number(
            dir.path(),
            lake,
            "SELECT count(DISTINCT case_id) FROM cases"
        ),
        "scoring again replaces the cases"
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

/// Elements drawn (`path`, `rect`, `line`) inside each `<svg data-plot=...>`
/// of the report, which must be well-formed XML.
fn plots_drawn(html: &str) -> BTreeMap<String, usize> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(html);
    let mut drawn = BTreeMap::new();
    let mut current: Option<String> = None;
    loop {
        match reader.read_event().expect("report.html is well-formed XML") {
            Event::Start(e) | Event::Empty(e) => {
                let name = e.name().as_ref().to_vec();
                if name == b"svg" {
                    let plot = e
                        .try_get_attribute("data-plot")
                        .unwrap()
                        .map(|a| String::from_utf8(a.value.to_vec()).unwrap());
                    current = plot.clone();
                    if let Some(p) = plot {
                        drawn.entry(p).or_insert(0);
                    }
                } else if matches!(name.as_slice(), b"path" | b"rect" | b"line") {
                    if let Some(p) = &current {
                        *drawn.entry(p.clone()).or_insert(0) += 1;
                    }
                }
            }
            Event::End(e) if e.name().as_ref() == b"svg" => current = None,
            Event::Eof => break,
            _ => {}
        }
    }
    drawn
}

#[test]
fn early_stopping_stops_after_patience_rounds_without_progress() {
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
            "3",
            "--days",
            "4",
            "--trades-per-day",
            "600",
            "--events-per-symbol-day",
            "3",
            "--seed",
            "9",
        ],
    );
    ok(dir.path(), &["backfill", "--lake", lake, "--queries", q]);
    ok(
        dir.path(),
        &[
            "train",
            "--lake",
            lake,
            "--queries",
            q,
            "--rounds",
            "300",
            "--patience",
            "3",
            "--params",
            "eta=0.5",
            "--out",
            "m",
        ],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("m/manifest.json")).unwrap())
            .unwrap();
    let best = manifest["best_iteration"].as_u64().unwrap();
    let trained = manifest["rounds_trained"].as_u64().unwrap();
    assert!(trained < 300, "did not stop early: {manifest}");
    assert_eq!(
        trained,
        best + 3 + 1,
        "stops 3 rounds after the best: {manifest}"
    );
    // The model file holds every trained round; scoring uses up to the best.
    let model: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("m/model.json")).unwrap()).unwrap();
    let trees = model["learner"]["gradient_booster"]["model"]["trees"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert_eq!(trees, trained);
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
