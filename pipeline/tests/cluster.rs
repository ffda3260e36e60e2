//! `backfill --cluster`: a scheduler and two executors on loopback (real
//! processes of our binary, datafusion-distributed between them) make the
//! same lake as a local backfill of a copy of it: the context tables byte
//! for byte, the features row for row and bit for bit (each executor writes
//! its block of symbols' files); an executor killed mid-backfill costs a
//! retry, not the run.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, files_under, free_port, ok, queries, service_env};

const TOKEN: &str = "test-cluster-secret";

/// A scheduler and executors, killed on drop.
struct LocalCluster {
    port: u16,
    scheduler: Child,
    executors: Vec<Child>,
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for c in std::iter::once(&mut self.scheduler).chain(self.executors.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl LocalCluster {
    /// Starts a scheduler and `n` executors with `env`, waits until the
    /// scheduler lists them all.
    /// Each process logs at its default level to `logs/<role>.log`.
    fn start(n: usize, lake: &str, env: &[(&str, &str)], logs: &Path) -> LocalCluster {
        let port = free_port();
        let spawn = |args: &[String], log: String| -> Child {
            let mut c: Command = bin();
            let file = std::fs::File::create(logs.join(log)).unwrap();
            c.env("STOCKANOMALY_CLUSTER_TOKEN", TOKEN)
                .env_remove("STOCKANOMALY_LOG")
                .envs(env.iter().copied())
                .args(args)
                .stdout(Stdio::null())
                .stderr(file);
            c.spawn().unwrap()
        };
        let scheduler = spawn(
            &[
                "cluster".into(),
                "scheduler".into(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--executor-ttl".into(),
                "2".into(),
            ],
            "scheduler.log".into(),
        );
        let executors = (0..n)
            .map(|i| {
                spawn(
                    &[
                        "cluster".into(),
                        "executor".into(),
                        "--lake".into(),
                        lake.into(),
                        "--scheduler".into(),
                        format!("df://127.0.0.1:{port}"),
                        "--listen".into(),
                        format!("127.0.0.1:{}", free_port()),
                        "--concurrency".into(),
                        "2".into(),
                    ],
                    format!("executor-{i}.log"),
                )
            })
            .collect();
        let cluster = LocalCluster {
            port,
            scheduler,
            executors,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.listed() < n {
            assert!(
                Instant::now() < deadline,
                "the scheduler never listed {n} executors"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    fn target(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    /// Executors the scheduler lists now (0 while it does not answer).
    fn listed(&self) -> usize {
        let url = format!("http://127.0.0.1:{}/v1/executors", self.port);
        match ureq::get(&url).call() {
            Ok(mut r) => {
                let body = r.body_mut().read_to_string().unwrap();
                serde_json::from_str::<Vec<serde_json::Value>>(&body)
                    .unwrap()
                    .len()
            }
            Err(_) => 0,
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// `executor URL: N tasks` lines of a cluster backfill's summary.
fn tasks_per_executor(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("executor "))
        .map(|l| {
            let n = l.rsplit(": ").next().unwrap().trim_end_matches(" tasks");
            n.parse().unwrap_or_else(|e| panic!("{l:?}: {e}"))
        })
        .collect()
}

/// Simulates a lake in `dir/local` and copies it to `dir/cluster`, before
/// any backfill.
fn two_lakes(dir: &Path, days: &str) -> (String, String) {
    let local = dir.join("local");
    ok(
        dir,
        &[
            "simulate",
            "--lake",
            local.to_str().unwrap(),
            "--symbols",
            "5",
            "--days",
            days,
            "--trades-per-day",
            "1500",
            "--events-per-symbol-day",
            "1",
            "--seed",
            "11",
        ],
    );
    let cluster = dir.join("cluster");
    copy_dir(&local, &cluster);
    (
        local.to_str().unwrap().to_owned(),
        cluster.to_str().unwrap().to_owned(),
    )
}

fn backfill_args<'a>(lake: &'a str, q: &'a str) -> Vec<&'a str> {
    vec![
        "backfill",
        "--lake",
        lake,
        "--queries",
        q,
        "--chunk-ticks",
        "1",
    ]
}

/// Every file under `lake` but the features' (which executors write per
/// block of symbols), and the features' rows as `sql` prints them (floats
/// so that they read back to the same bits), in key order.
fn lake_contents(dir: &Path, lake: &str) -> (Vec<(String, Vec<u8>)>, String) {
    let files = files_under(Path::new(lake))
        .into_iter()
        .filter(|(k, _)| !k.starts_with("features/"))
        .collect();
    let rows = ok(
        dir,
        &[
            "sql",
            "--lake",
            lake,
            "--queries",
            queries().to_str().unwrap(),
            "--format",
            "csv",
            "SELECT * FROM features ORDER BY symbol, ts, seq",
        ],
    );
    (files, rows)
}

/// Asserts that the cluster's lake holds what the local one does.
fn assert_same_lake(dir: &Path, local: &str, remote: &str) {
    let (want_files, want_rows) = lake_contents(dir, local);
    let (got_files, got_rows) = lake_contents(dir, remote);
    assert!(want_files.iter().any(|(k, _)| k.starts_with("market/")));
    assert!(
        want_rows.lines().count() > 1000,
        "{}",
        want_rows.lines().count()
    );
    let names = |f: &[(String, Vec<u8>)]| f.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&got_files),
        names(&want_files),
        "the cluster's lake has other files"
    );
    for ((path, got), (_, want)) in got_files.iter().zip(&want_files) {
        assert!(got == want, "{path} differs");
    }
    assert!(got_rows == want_rows, "the features differ");
    // Executors write into a staging folder, moved in once a run is whole
    // and then removed, failed tries included.
    let staging = Path::new(remote).join("_staging");
    assert!(!staging.exists(), "{} is left", staging.display());
}

/// Lines of an executor's log saying `what`, counted per value of `field`.
fn logged(log: &str, what: &str, field: &str) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for line in log.lines().filter(|l| l.contains(what)) {
        let value = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{field}=")))
            .unwrap_or("")
            .trim_matches('"')
            .to_owned();
        *counts.entry(value).or_default() += 1;
    }
    counts
}

#[test]
fn two_executors_make_the_local_backfills_lake_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let (local, remote) = two_lakes(dir.path(), "3");
    let q = queries();
    let q = q.to_str().unwrap();
    ok(dir.path(), &backfill_args(&local, q));

    let cluster = LocalCluster::start(2, &remote, &[], dir.path());
    let target = cluster.target();
    let mut args = backfill_args(&remote, q);
    args.extend(["--cluster", &target]);
    let out = bin()
        .current_dir(dir.path())
        .env("STOCKANOMALY_CLUSTER_TOKEN", TOKEN)
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks = tasks_per_executor(&stdout);
    assert_eq!(tasks.len(), 2, "{stdout}");
    assert!(
        tasks.iter().all(|&n| n > 0),
        "an executor ran no task: {stdout}"
    );
    // Each executor logged every task it ran at its default level, made
    // some of the context tables' dates (together each table's 3 dates
    // once: profiles, market, betas; the minute statistics are made by the
    // profiles, as in one process) and wrote features for each run of
    // dates (--chunk-ticks 1: a run per date).
    let mut tasks_logged = 0;
    let mut made = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..2 {
        let log = std::fs::read_to_string(dir.path().join(format!("executor-{i}.log"))).unwrap();
        let n = log.matches("Task received").count();
        assert!(n > 0, "executor {i} logged no task:\n{log}");
        tasks_logged += n as u64;
        let tables = logged(&log, "Context table made", "table");
        assert!(
            !tables.is_empty(),
            "executor {i} made no context table:\n{log}"
        );
        for (table, n) in tables {
            *made.entry(table).or_default() += n;
        }
        let runs = logged(&log, "Features written", "first");
        assert_eq!(
            runs.len(),
            3,
            "executor {i} wrote features of each date:\n{log}"
        );
    }
    assert_eq!(tasks_logged, tasks.iter().sum::<u64>());
    assert_eq!(
        made.iter()
            .map(|(t, n)| (t.as_str(), *n))
            .collect::<Vec<_>>(),
        [("betas", 3), ("market", 3), ("profiles", 3)],
        "context dates made on the executors"
    );
    assert_same_lake(dir.path(), &local, &remote);

    // Without the token the executors refuse the tasks.
    let out = bin()
        .current_dir(dir.path())
        .env("STOCKANOMALY_CLUSTER_TOKEN", "wrong")
        .args(&args)
        .arg("--force")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("requires the cluster token"), "{stderr}");
    // A refusal is not retried.
    assert!(!stderr.contains("trying it again"), "{stderr}");
}

#[test]
fn an_executor_killed_mid_backfill_costs_a_retry_not_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (local, remote) = two_lakes(dir.path(), "5");
    let q = queries();
    let q = q.to_str().unwrap();
    ok(dir.path(), &backfill_args(&local, q));

    let mut cluster = LocalCluster::start(2, &remote, &[], dir.path());
    let target = cluster.target();
    let mut args = backfill_args(&remote, q);
    args.extend(["--cluster", &target]);
    let mut run = bin()
        .current_dir(dir.path())
        .env("STOCKANOMALY_CLUSTER_TOKEN", TOKEN)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill one executor once the first run of dates is written.
    let features = Path::new(&remote).join("features");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !files_under_or_none(&features).any(|k| k.ends_with("_SUCCESS")) {
        assert!(Instant::now() < deadline, "no date was ever backfilled");
        assert!(
            run.try_wait().unwrap().is_none(),
            "the backfill ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.executors[1].kill().unwrap();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // A run was planned on the dead executor, failed, and ran again.
    assert!(stderr.contains("trying it again"), "no retry: {stderr}");
    assert_same_lake(dir.path(), &local, &remote);
}

fn files_under_or_none(dir: &Path) -> impl Iterator<Item = String> {
    let files = if dir.exists() {
        files_under(dir).into_keys().collect()
    } else {
        Vec::new()
    };
    files.into_iter()
}

#[test]
fn the_cluster_backfills_an_s3_lake() {
    let endpoint = service_env("STOCKANOMALY_TEST_S3_ENDPOINT");
    let bucket = format!("cluster-{}", std::process::id());
    common::create_bucket(&endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    let s3 = format!("s3://{bucket}/lake");
    let local = dir.path().join("local").display().to_string();
    let q = queries().display().to_string();
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("STOCKANOMALY_QUERIES", q.as_str()),
    ];
    let run = |lake: &str, args: &[&str]| {
        let out = bin()
            .current_dir(dir.path())
            .env("STOCKANOMALY_CLUSTER_TOKEN", TOKEN)
            .env("STOCKANOMALY_LAKE", lake)
            .envs(env)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let simulate = [
        "simulate",
        "--symbols",
        "3",
        "--days",
        "2",
        "--trades-per-day",
        "800",
        "--seed",
        "8",
    ];
    run(&s3, &simulate);
    run(&local, &simulate);
    run(&local, &["backfill"]);

    let cluster = LocalCluster::start(2, &s3, &env, dir.path());
    let target = cluster.target();
    let out = run(&s3, &["backfill", "--cluster", &target]);
    let tasks = tasks_per_executor(&out);
    assert!(tasks.len() == 2 && tasks.iter().all(|&n| n > 0), "{out}");
    // Every feature row equals the local backfill's, bit for bit (the CSV
    // prints floats so that they read back to the same bits).
    let query = "SELECT * FROM features ORDER BY symbol, ts, seq";
    let want = run(&local, &["sql", "--format", "csv", query]);
    assert!(want.lines().count() > 1000, "{}", want.lines().count());
    assert_eq!(run(&s3, &["sql", "--format", "csv", query]), want);
    // The context tables, made on the executors, too.
    for query in [
        "SELECT * FROM market ORDER BY ts, symbol",
        "SELECT * FROM betas ORDER BY ts, symbol",
        "SELECT * FROM profiles ORDER BY ts, symbol, minute",
    ] {
        let want = run(&local, &["sql", "--format", "csv", query]);
        assert!(want.lines().count() > 1, "{query}: {want}");
        assert_eq!(
            run(&s3, &["sql", "--format", "csv", query]),
            want,
            "{query}"
        );
    }
}
