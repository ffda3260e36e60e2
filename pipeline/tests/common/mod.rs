//! Helpers shared by the integration tests: run the binary, find fixtures,
//! read the services the test command started.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod detector_run;

/// The fixture file `name` under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The `stockanomaly` binary, with logs quiet and no lake inherited from
/// the environment.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stockanomaly"));
    c.env_remove("STOCKANOMALY_LAKE")
        .env("STOCKANOMALY_LOG", "warn");
    c
}

/// Runs the binary with `args` in `dir` and returns its output.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    bin()
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run stockanomaly: {e}"))
}

/// Runs the binary and asserts it succeeded; returns stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "stockanomaly {args:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A single number answered by `stockanomaly sql` (CSV output, one cell).
pub fn sql_number(dir: &Path, lake: &str, query: &str) -> i64 {
    let out = ok(dir, &["sql", "--lake", lake, "--format", "csv", query]);
    let cell = out
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no row in {out:?}"));
    cell.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{cell:?} is not a number: {e}"))
}

/// A variable the test command (`make test`) exports. Missing means the
/// suite was started some other way: fail, never skip.
pub fn service_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the suite with `make test` (scripts/test.sh), \
             which starts PostgreSQL, the Kafka broker and the S3 server and exports it"
        )
    })
}

/// A loopback port free now (the usual race: free until someone binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates a bucket on the S3-compatible test server (a path-style PUT).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    use std::io::{Read, Write};
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "bucket creation failed: {resp}"
    );
}

/// Every file under `dir`, by relative path, with its bytes.
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Runs the binary in `dir` against the S3-compatible test server at
/// `endpoint`, asserting success; returns stdout.
pub fn ok_s3(dir: &Path, endpoint: &str, envs: &[(&str, &str)], args: &[&str]) -> String {
    let out = bin()
        .current_dir(dir)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .envs(envs.iter().copied())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tick's key: symbol, ts (µs), seq.
pub type Key = (String, i64, u32);

/// A session (schemas and UDFs of the lake) whose `ticks` is `batch`.
pub fn session_over(batch: arrow::array::RecordBatch) -> datafusion::prelude::SessionContext {
    let ctx = stockanomaly::lake::schema_session();
    ctx.deregister_table("ticks").unwrap();
    let table =
        datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
    ctx.register_table("ticks", std::sync::Arc::new(table))
        .unwrap();
    ctx
}

/// Every feature of `catalog` over the session's `ticks`, each file run as
/// written and cast to DOUBLE as backfill does, in catalog order, by key.
pub async fn pack_features(
    ctx: &datafusion::prelude::SessionContext,
    catalog: &stockanomaly::features::Catalog,
) -> std::collections::BTreeMap<Key, Vec<Option<f64>>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, TimestampMicrosecondType, UInt32Type};
    let mut out: std::collections::BTreeMap<Key, Vec<Option<f64>>> = Default::default();
    for f in catalog.files() {
        let casts: Vec<String> = f
            .features
            .iter()
            .map(|n| format!("CAST(\"{n}\" AS DOUBLE) AS \"{n}\""))
            .collect();
        let sql = format!(
            "SELECT symbol, ts, seq, {} FROM ({})",
            casts.join(", "),
            f.sql
        );
        for b in ctx.sql(&sql).await.unwrap().collect().await.unwrap() {
            let s = b.column(0).as_string::<i32>();
            let t = b.column(1).as_primitive::<TimestampMicrosecondType>();
            let q = b.column(2).as_primitive::<UInt32Type>();
            for i in 0..b.num_rows() {
                let row = out
                    .entry((s.value(i).to_owned(), t.value(i), q.value(i)))
                    .or_default();
                for c in 3..b.num_columns() {
                    let col = b.column(c).as_primitive::<Float64Type>();
                    row.push((!col.is_null(i)).then(|| col.value(i)));
                }
            }
        }
    }
    out
}

/// A database of its own for one test; dropped (connections forced off)
/// when the value goes, even when the test panics.
pub struct TestDb {
    admin_url: String,
    /// The database's name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl TestDb {
    /// Creates the database.
    pub async fn new(tag: &str) -> TestDb {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let admin_url = service_env("STOCKANOMALY_TEST_DATABASE_URL");
        let name = format!(
            "sa_test_{tag}_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            chrono::Utc::now().timestamp_micros() % 1_000_000
        );
        let admin = stockanomaly::sinks::postgres::connect(&admin_url)
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin_url).unwrap();
        url.set_path(&name);
        TestDb {
            admin_url,
            name,
            url: url.to_string(),
        }
    }

    /// A connection to it.
    pub async fn client(&self) -> tokio_postgres::Client {
        stockanomaly::sinks::postgres::connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: a thread with its own runtime
        // can block on the DROP without stalling it.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = stockanomaly::sinks::postgres::connect(&admin_url).await {
                    let _ = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// The repository's `queries/` folder.
pub fn queries() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries")
}

/// `simulate` into `lake` (symbols, days, trades per day, events per
/// symbol-day, seed), then `backfill` it with the repository's queries.
pub fn simulate_backfill(dir: &Path, lake: &str, sim: [&str; 5]) {
    simulate_backfill_with(dir, lake, sim, &queries());
}

/// [`simulate_backfill`] with the feature files of the queries folder `q`.
pub fn simulate_backfill_with(dir: &Path, lake: &str, sim: [&str; 5], q: &Path) {
    simulate_more_backfill(dir, lake, sim, &[], q);
}

/// [`simulate_backfill_with`] passing `more` flags to `simulate`.
pub fn simulate_more_backfill(dir: &Path, lake: &str, sim: [&str; 5], more: &[&str], q: &Path) {
    let [symbols, days, trades, events, seed] = sim;
    let mut args = vec![
        "simulate",
        "--lake",
        lake,
        "--symbols",
        symbols,
        "--days",
        days,
        "--trades-per-day",
        trades,
        "--events-per-symbol-day",
        events,
        "--seed",
        seed,
    ];
    args.extend_from_slice(more);
    ok(dir, &args);
    ok(
        dir,
        &["backfill", "--lake", lake, "--queries", q.to_str().unwrap()],
    );
}

/// A copy of the queries folder under `dir` without the feature files that
/// read the market: per-symbol features only, for detectors sharing a
/// group without a market-context stage.
pub fn per_symbol_queries(dir: &Path) -> PathBuf {
    let out = dir.join("queries-per-symbol");
    for sub in ["features", "rules"] {
        std::fs::create_dir_all(out.join(sub)).unwrap();
        for e in std::fs::read_dir(queries().join(sub)).unwrap() {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            if sub == "features" && text.contains("JOIN market") {
                continue;
            }
            std::fs::write(out.join(sub).join(path.file_name().unwrap()), text).unwrap();
        }
    }
    out
}

/// The rows of `query` over `lake`, from `stockanomaly sql --format json`.
pub fn sql_json(dir: &Path, lake: &str, query: &str) -> Vec<serde_json::Value> {
    ok(dir, &["sql", "--lake", lake, "--format", "json", query])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `(symbol, ts µs, seq)` of a JSON row with those fields (`ts` cast to
/// BIGINT by the query).
pub fn json_key(v: &serde_json::Value) -> Key {
    (
        v["symbol"].as_str().unwrap().to_owned(),
        v["ts"].as_i64().unwrap(),
        v["seq"].as_u64().unwrap() as u32,
    )
}

/// `scores` rows of `version` that alert, by key → score.
pub fn batch_alerts(dir: &Path, lake: &str, version: &str) -> BTreeMap<Key, f64> {
    sql_json(
        dir,
        lake,
        &format!(
            "SELECT symbol, CAST(ts AS BIGINT) AS ts, seq, score FROM scores \
             WHERE model_version = '{version}' AND alert"
        ),
    )
    .iter()
    .map(|v| (json_key(v), v["score"].as_f64().unwrap()))
    .collect()
}

/// The alerts of `version` in PostgreSQL, by key → score.
pub async fn pg_alerts(client: &tokio_postgres::Client, version: &str) -> BTreeMap<Key, f64> {
    let rows = client
        .query(
            "SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, seq, score FROM alerts \
             WHERE model_version = $1",
            &[&version],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i32>(2) as u32,
                ),
                r.get::<_, f64>(3),
            )
        })
        .collect()
}

/// A case as compared between batch and streaming: id → (symbol, start µs,
/// end µs, alerts, model alerts, case score, opened µs, status).
pub type CaseRow = (
    String,
    i64,
    i64,
    i64,
    i64,
    f64,
    i64,
    String,
    String,
    Option<String>,
);

/// The opened cases of `version` in the lake's `cases` table (from `score`).
pub fn batch_cases(dir: &Path, lake: &str, version: &str) -> BTreeMap<String, CaseRow> {
    sql_json(
        dir,
        lake,
        &format!(
            "SELECT case_id, symbol, CAST(start_ts AS BIGINT) AS s, CAST(end_ts AS BIGINT) AS e, \
             alerts, model_alerts, case_score, CAST(opened_ts AS BIGINT) AS o, status, \
             detectors, likely_kinds FROM cases WHERE model_version = '{version}'"
        ),
    )
    .iter()
    .map(|v| {
        (
            v["case_id"].as_str().unwrap().to_owned(),
            (
                v["symbol"].as_str().unwrap().to_owned(),
                v["s"].as_i64().unwrap(),
                v["e"].as_i64().unwrap(),
                v["alerts"].as_i64().unwrap(),
                v["model_alerts"].as_i64().unwrap(),
                v["case_score"].as_f64().unwrap(),
                v["o"].as_i64().unwrap(),
                v["status"].as_str().unwrap().to_owned(),
                v["detectors"].as_str().unwrap().to_owned(),
                v["likely_kinds"].as_str().map(str::to_owned),
            ),
        )
    })
    .collect()
}

/// The opened cases of `version` in PostgreSQL (a detector's).
pub async fn pg_cases(client: &tokio_postgres::Client, version: &str) -> BTreeMap<String, CaseRow> {
    let us = |c: &str| format!("(extract(epoch FROM {c}) * 1000000)::bigint");
    let rows = client
        .query(
            &format!(
                "SELECT case_id, symbol, {}, {}, alerts::int8, model_alerts::int8, case_score, \
                 {}, status, detectors, likely_kinds FROM cases \
                 WHERE model_version = $1 AND opened_ts IS NOT NULL",
                us("start_ts"),
                us("end_ts"),
                us("opened_ts")
            ),
            &[&version],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                r.get(0),
                (
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    r.get(7),
                    r.get(8),
                    r.get(9),
                    r.get(10),
                ),
            )
        })
        .collect()
}

/// Asserts two alert maps are equal, printing a short account of the
/// differences (the maps hold hundreds of entries).
pub fn assert_same(got: &BTreeMap<Key, f64>, want: &BTreeMap<Key, f64>, what: &str) {
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let differ: Vec<_> = want
        .iter()
        .filter_map(|(k, w)| got.get(k).filter(|g| *g != w).map(|g| (k, *w, *g)))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "{what}: {} alerts vs {} wanted; {} missing (first {:?}), {} extra (first {:?}), \
         {} with another score (first {:?})",
        got.len(),
        want.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
        differ.len(),
        differ.iter().take(5).collect::<Vec<_>>(),
    );
}
