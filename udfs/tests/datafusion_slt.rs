//! DataFusion's own SQL tests, run with our rules registered.
//!
//! [`register_all`] adds an analyzer rule that moves standard window
//! aggregates over `RANGE` interval frames onto the exact rolling UDFs, so it
//! changes how every query of a session runs, not only the feature pack's.
//! This test runs each `.slt` file that DataFusion ships in the
//! `datafusion-sqllogictest` crate and that uses a window (`OVER`) twice,
//! record by record: on a stock session, and on the same session with
//! [`register_all`] applied. Many records fail on the stock session too
//! (they read the DataFusion repository's testing data, which the crate does
//! not ship), so the comparison is with stock DataFusion, not with zero
//! failures.
//!
//! A record that passes on stock DataFusion and fails with our rules is
//! - an `EXPLAIN`: the plan names `rolling_*` instead of the standard
//!   function (expected: that is the rewrite);
//! - a result equal to stock's but for the last digits of floating-point
//!   values (exact summation instead of DataFusion's running sums: expected,
//!   and pinned in [`DIGITS`] so a new one is looked at);
//! - anything else: a bug in the rule, and this test fails naming the file,
//!   line, SQL and error.
//!
//! [`register_all`]: stockanomaly_udfs::register_all

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use datafusion_sqllogictest::{
    df_value_validator, setup_scratch_dir, value_normalizer, DataFusion, TestContext,
};
use sqllogictest::{parse_file, strict_column_validator, Normalizer, Record, Validator};

/// Records (file, line) whose result differs from stock DataFusion's only in
/// the last digits of floating-point values.
const DIGITS: &[(&str, u32)] = &[];

/// Where the `datafusion-sqllogictest` crate's sources are (its
/// `test_files/` hold the `.slt` files), from `cargo metadata` of this
/// host's dependencies: offline, unfiltered metadata would need every
/// platform's crates downloaded, and a fresh machine has only the host's.
fn slt_crate_dir() -> PathBuf {
    let version = Command::new(env!("CARGO"))
        .arg("-vV")
        .output()
        .expect("cargo -vV runs");
    let version = String::from_utf8_lossy(&version.stdout);
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("cargo -vV names the host");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let manifest = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["name"] == "datafusion-sqllogictest")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("datafusion-sqllogictest is a dev-dependency");
    Path::new(manifest)
        .parent()
        .expect("manifest in a folder")
        .to_path_buf()
}

/// Copies `from` into `to` (files and folders).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read folder") {
        let entry = entry.expect("folder entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// `df_value_validator`, except that numbers may differ in their last
/// digits (relative 1e-9).
fn digits_validator(normalizer: Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    if df_value_validator(normalizer, actual, expected) {
        return true;
    }
    let actual: Vec<String> = actual.iter().map(|r| r.join(" ")).collect();
    if actual.len() != expected.len() {
        return false;
    }
    actual.iter().zip(expected).all(|(a, e)| {
        let (a, e): (Vec<&str>, Vec<&str>) = (
            a.split_whitespace().collect(),
            e.split_whitespace().collect(),
        );
        a.len() == e.len()
            && a.iter().zip(&e).all(|(x, y)| {
                x == y
                    || match (x.parse::<f64>(), y.parse::<f64>()) {
                        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-300),
                        _ => false,
                    }
            })
    })
}

/// One file's records that failed, by line: their SQL and the error.
type Failures = BTreeMap<u32, (String, String)>;

/// Runs every record of `file` (relative to the working folder) on a fresh
/// session of the kind DataFusion's own runner makes for it, with our rules
/// when `ours`; `None` when the runner skips the file.
async fn run(file: PathBuf, ours: bool, validator: Validator) -> Option<(usize, Failures)> {
    let file = file.as_path();
    let ctx = TestContext::try_new_for_test_file(file).await?;
    if ours {
        stockanomaly_udfs::register_all(ctx.session_ctx());
    }
    setup_scratch_dir(file).expect("scratch folder");
    let session = ctx.session_ctx().clone();
    let name = file.to_path_buf();
    let mut runner = sqllogictest::Runner::new(move || {
        let (session, name) = (session.clone(), name.clone());
        async move {
            Ok::<_, datafusion_sqllogictest::DFSqlLogicTestError>(DataFusion::new(
                session,
                name,
                indicatif::ProgressBar::hidden(),
            ))
        }
    });
    runner.add_label("Datafusion");
    runner.with_column_validator(strict_column_validator);
    runner.with_normalizer(value_normalizer);
    runner.with_validator(validator);
    let records = parse_file(file).expect("DataFusion's .slt parses");
    let (mut ran, mut failed) = (0, Failures::new());
    for record in records {
        let (line, sql) = match &record {
            Record::Halt { .. } => break,
            Record::Query { loc, sql, .. } | Record::Statement { loc, sql, .. } => {
                (loc.line(), sql.clone())
            }
            _ => (0, String::new()),
        };
        let result = runner.run_async(record).await;
        if line == 0 {
            continue;
        }
        ran += 1;
        if let Err(e) = result {
            failed.insert(line, (sql, e.to_string()));
        }
    }
    runner.shutdown_async().await;
    Some((ran, failed))
}

/// What one file's records did with our rules, against stock DataFusion.
#[derive(Default)]
struct Outcome {
    name: String,
    passed_stock: usize,
    explain: Vec<String>,
    digits: Vec<(String, u32)>,
    bugs: Vec<String>,
    better: Vec<String>,
}

/// Runs `file` on stock DataFusion and with our rules, and sorts out the
/// records whose outcome differs.
async fn compare(file: PathBuf) -> Outcome {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let mut o = Outcome {
        name: name.clone(),
        ..Outcome::default()
    };
    let Some((ran, stock)) = run(file.clone(), false, df_value_validator).await else {
        return o;
    };
    let (_, ours) = run(file.clone(), true, df_value_validator)
        .await
        .expect("a file the stock run took");
    o.passed_stock = ran - stock.len();
    o.better = stock
        .keys()
        .filter(|l| !ours.contains_key(l))
        .map(|l| format!("{name}:{l}"))
        .collect();
    let newly: Vec<u32> = ours
        .keys()
        .filter(|l| !stock.contains_key(l))
        .copied()
        .collect();
    if newly.is_empty() {
        return o;
    }
    // Which of the new failures are numbers' last digits only.
    let (_, tolerant) = run(file.clone(), true, digits_validator)
        .await
        .expect("a file the stock run took");
    for line in newly {
        let (sql, error) = &ours[&line];
        if sql.trim_start().to_ascii_uppercase().starts_with("EXPLAIN") {
            o.explain.push(format!("{name}:{line}"));
        } else if !tolerant.contains_key(&line) {
            o.digits.push((name.clone(), line));
        } else {
            o.bugs.push(format!("{name}:{line}\n{sql}\n{error}"));
        }
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datafusion_window_tests_pass_with_our_rules() {
    let source = slt_crate_dir();
    // The files write scratch output under the working folder and read
    // data relative to it: work on a copy, never in the registry.
    let work = std::env::temp_dir().join(format!("stockanomaly-slt-{}", std::process::id()));
    let cwd = work.join("datafusion").join("sqllogictest");
    copy_tree(&source.join("test_files"), &cwd.join("test_files"));
    copy_tree(&source.join("data"), &cwd.join("data"));
    std::env::set_current_dir(&cwd).expect("enter the copy");

    let mut files: Vec<PathBuf> = std::fs::read_dir("test_files")
        .expect("test_files")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .filter(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| {
                let t = t.to_ascii_uppercase();
                t.contains("OVER (") || t.contains("OVER(")
            })
        })
        .collect();
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("window.slt")),
        "window.slt not found among {files:?}"
    );

    // Two files at a time (each file's runs one after the other: a file's
    // scratch folder is its own, shared by its runs).
    let mut pending = files.clone();
    let mut running = tokio::task::JoinSet::new();
    let mut outcomes = Vec::new();
    while !pending.is_empty() || !running.is_empty() {
        while running.len() < 2 {
            let Some(file) = pending.pop() else { break };
            running.spawn(compare(file));
        }
        if let Some(done) = running.join_next().await {
            outcomes.push(done.expect("a file's comparison ends"));
        }
    }
    outcomes.sort_by(|a, b| a.name.cmp(&b.name));
    let (mut explain, mut digits, mut bugs, mut better) = (vec![], vec![], vec![], vec![]);
    let mut passed_stock = 0;
    for o in outcomes {
        passed_stock += o.passed_stock;
        explain.extend(o.explain);
        digits.extend(o.digits);
        bugs.extend(o.bugs);
        better.extend(o.better);
    }
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "{} files, {passed_stock} records pass on stock DataFusion; with our rules: \
         {} EXPLAIN plans differ, {} results differ in last digits, {} other differences, \
         {} stock failures pass",
        files.len(),
        explain.len(),
        digits.len(),
        bugs.len(),
        better.len()
    );
    println!("EXPLAIN differences: {explain:?}");
    println!("last-digit differences: {digits:?}");
    println!("stock failures that pass with our rules: {better:?}");
    assert!(
        passed_stock > 1000,
        "only {passed_stock} records pass on stock DataFusion: the files did not run as meant"
    );
    assert!(
        bugs.is_empty(),
        "{} records give other results with our rules:\n\n{}",
        bugs.len(),
        bugs.join("\n\n")
    );
    let expected: Vec<(String, u32)> = DIGITS.iter().map(|(f, l)| (f.to_string(), *l)).collect();
    assert_eq!(
        digits, expected,
        "last-digit differences changed: look at them, then update DIGITS and the README"
    );
}
