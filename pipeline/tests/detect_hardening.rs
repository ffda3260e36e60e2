//! `stockanomaly detect` against what a long-running deployment meets, on
//! the real broker and PostgreSQL: offsets that no longer exist, a lake
//! without the context tables the feature files read, a database that stops
//! answering, secondary sinks that fail, and client options for secured
//! brokers. Each test fails on the detector before its fix.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ok, queries, service_env, TestDb};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}

/// `detect` with the rules only (no model to train) until idle.
fn detect_args(lake: &str, topic: &str, group: &str, url: &str, extra: &[&str]) -> Vec<String> {
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let q = queries();
    let mut args: Vec<String> = [
        "detect",
        "--lake",
        lake,
        "--queries",
        q.to_str().unwrap(),
        "--rules",
        "--source",
        &format!("kafka://{brokers}/{topic}"),
        "--group",
        group,
        "--database-url",
        url,
        "--idle-timeout-ms",
        "300",
        "--exit-when-idle",
        "4",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Runs the binary; returns (success, stdout, stderr).
fn run(dir: &Path, args: &[String]) -> (bool, String, String) {
    let out = common::bin()
        .current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts the binary with stdout and stderr to files named by `tag`; the
/// child and both paths.
fn spawn(
    dir: &Path,
    args: &[String],
    tag: &str,
) -> (std::process::Child, std::path::PathBuf, std::path::PathBuf) {
    let out = dir.join(format!("{tag}.out"));
    let err = dir.join(format!("{tag}.err"));
    let child = common::bin()
        .current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    (child, out, err)
}

/// Waits for a [`spawn`]ed child (up to five minutes); (success, stdout,
/// stderr).
async fn wait(mut child: std::process::Child, out: &Path, err: &Path) -> (bool, String, String) {
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!(
                "still running:\n{}",
                std::fs::read_to_string(err).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (
        status.success(),
        std::fs::read_to_string(out).unwrap_or_default(),
        std::fs::read_to_string(err).unwrap_or_default(),
    )
}

/// The number before `what` in a `detect:` summary line.
fn summary_number(out: &str, what: &str) -> i64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("detect: ") && l.contains(what))
        .unwrap_or_else(|| panic!("no summary with {what:?} in {out}"));
    let before = &line[..line.find(what).unwrap()];
    before
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line}"))
}

/// GET `http://addr/metrics`.
async fn scrape(addr: &str) -> Option<String> {
    let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// The value of the sample `name` (with its labels) in a scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The metrics address a running `detect` printed to its log
/// (`--metrics-addr 127.0.0.1:0`).
async fn metrics_addr(log: &Path, child: &mut std::process::Child) -> String {
    let started = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(|l| {
            l.strip_prefix("detect: metrics on http://")?
                .strip_suffix("/metrics")
                .map(str::to_owned)
        }) {
            return addr;
        }
        assert!(
            child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(60),
            "no metrics address:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scrapes `detect`'s metrics until `sample` reaches `at_least` (while it
/// runs); the value.
async fn scrape_until(
    addr: &str,
    log: &Path,
    child: &mut std::process::Child,
    name: &str,
    at_least: f64,
) -> f64 {
    let started = std::time::Instant::now();
    loop {
        let text = scrape(addr).await.unwrap_or_default();
        let v = sample(&text, name).unwrap_or(0.0);
        if v >= at_least {
            return v;
        }
        assert!(
            child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(180),
            "{name} stayed at {v}:\n{text}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The topic was recreated (tansu, the test broker, has no DeleteRecords,
/// the other way offsets vanish): the stored offsets point past the new
/// topic's end. The detector used to seek there, be reset to the first
/// offset, and skip every message of the partition (the `o == last + 1`
/// check) without a word. Now the gap is logged with the offsets, counted,
/// and the partition resumes from what exists: every tick is emitted.
#[tokio::test]
async fn an_offset_gap_resumes_from_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake, ["2", "2", "300", "2", "71"]);
    let days: Vec<String> = common::sql_json(
        dir.path(),
        &lake,
        "SELECT DISTINCT date FROM ticks ORDER BY date",
    )
    .iter()
    .map(|v| v["date"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(days.len(), 2);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("gap");
    let produce = |from: &str, to: &str| {
        ok(
            dir.path(),
            &[
                "produce",
                "--lake",
                &lake,
                "--topic",
                &topic,
                "--brokers",
                &brokers,
                "--partitions",
                "1",
                "--from",
                from,
                "--to",
                to,
            ],
        )
    };
    // The first incarnation of the topic holds both days, and a detector
    // of the group stored its positions near their end.
    produce(&days[0], &days[1]);
    let total = common::sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks");
    let (warm, next) = (total - 60, total - 10);
    let db = TestDb::new("gap").await;
    ok(dir.path(), &["db", "migrate", "--database-url", &db.url]);
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO detector_offsets (consumer_group, topic, partition, next_offset, \
             warmup_offset) VALUES ($1, $2, 0, $3, $4)",
            &[&"gap", &topic, &next, &warm],
        )
        .await
        .unwrap();
    // The topic is deleted and made again, with the second day only.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for r in admin
        .delete_topics(&[topic.as_str()], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second_out = produce(&days[1], &days[1]);
    // The producer's watermark messages take offsets too.
    let watermarks: i64 = second_out
        .split(" watermark messages")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .map_or(0, |n| n.replace(',', "").parse().unwrap());
    let second = common::sql_number(
        dir.path(),
        &lake,
        &format!("SELECT count(*) FROM ticks WHERE date = '{}'", days[1]),
    );
    assert!(
        second < warm,
        "{second} messages, stored warm-up offset {warm}"
    );

    let args = detect_args(
        &lake,
        &topic,
        "gap",
        &db.url,
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let (mut child, out_path, log) = spawn(dir.path(), &args, "gap");
    // The gap is counted in the metrics of the running detector.
    let addr = metrics_addr(&log, &mut child).await;
    scrape_until(
        &addr,
        &log,
        &mut child,
        "stockanomaly_offset_gaps_total",
        1.0,
    )
    .await;
    let (success, out, err) = wait(child, &out_path, &log).await;
    assert!(success, "{out}\n{err}");
    assert_eq!(
        summary_number(&out, "ticks emitted"),
        second,
        "every tick of the new topic is emitted:\n{out}\n{err}"
    );
    assert!(out.contains("1 offset gap"), "{out}");
    let logged = err
        .lines()
        .find(|l| l.contains("Offsets missing in the partition"))
        .unwrap_or_else(|| panic!("the gap is logged:\n{err}"));
    for field in [
        "partition=0".to_owned(),
        format!("expected={warm}"),
        "found=0".to_owned(),
    ] {
        assert!(logged.contains(&field), "{field} in {logged}");
    }
    let stored: i64 = client
        .query_one(
            "SELECT next_offset FROM detector_offsets WHERE consumer_group = 'gap'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        second + watermarks,
        "the partition was read to its end (ticks and watermark messages):\n{second_out}"
    );
}

/// Copies the folder `from` to `to`, leaving out the top-level folders
/// named in `skip`.
fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if skip.iter().any(|s| name.to_str() == Some(*s)) {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name), &[]);
        } else {
            std::fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

/// `detect` on a lake without the context tables the feature files read
/// (here: no lake at all) used to start and compute those features as NULL,
/// alerting on other numbers than `score`. It now refuses (exit 2), naming
/// the table and --lake; on a lake that has ticks but no stored `profiles`
/// or `betas` it starts and says they are made from the lake's ticks.
#[tokio::test]
async fn detect_refuses_a_lake_without_the_context_tables() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake_s, ["2", "1", "200", "2", "73"]);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("context");
    ok(
        dir.path(),
        &[
            "produce",
            "--lake",
            &lake_s,
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--partitions",
            "1",
        ],
    );
    let db = TestDb::new("context").await;

    let empty = dir.path().join("empty-lake");
    std::fs::create_dir_all(&empty).unwrap();
    let args = detect_args(empty.to_str().unwrap(), &topic, "context", &db.url, &[]);
    let out = common::bin()
        .current_dir(dir.path())
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused as a configuration error:\n{}\n{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(err.contains("--lake"), "{err}");
    for t in ["symbols", "profiles", "betas"] {
        assert!(
            err.contains(&format!("`{t}` (")),
            "names every missing table ({t}): {err}"
        );
    }

    // Ticks but no stored profiles or betas: made from the ticks, and said.
    let partial = dir.path().join("partial-lake");
    copy_dir(&lake, &partial, &["profiles", "betas"]);
    let args = detect_args(partial.to_str().unwrap(), &topic, "context", &db.url, &[]);
    let (success, out, err) = run(dir.path(), &args);
    assert!(success, "{out}\n{err}");
    let said = |table: &str| {
        err.lines()
            .find(|l| l.starts_with(&format!("detect: context table `{table}`")))
            .unwrap_or_else(|| panic!("no word on `{table}`:\n{err}"))
            .to_owned()
    };
    assert!(
        said("profiles").ends_with("made from the lake's ticks"),
        "{err}"
    );
    assert!(
        said("betas").ends_with("made from the lake's ticks"),
        "{err}"
    );
    assert!(said("symbols").ends_with("stored in the lake"), "{err}");
    assert!(
        said("market").ends_with("computed from the stream"),
        "{err}"
    );
    assert!(summary_number(&out, "ticks emitted") > 0, "{out}");
}

/// Secured brokers need client options (TLS, SASL): `detect` takes them as
/// `--kafka-option key=value` (repeatable, or `;`-separated in
/// STOCKANOMALY_KAFKA_OPTIONS) for every client, and never shows a value:
/// not in `--help`, not in its output or logs, even at debug level. The
/// flag did not exist before.
#[tokio::test]
async fn kafka_options_reach_the_clients_and_their_values_stay_hidden() {
    const SECRET: &str = "hunter2-not-for-logs";
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake, ["2", "1", "150", "2", "79"]);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("options");
    ok(
        dir.path(),
        &[
            "produce",
            "--lake",
            &lake,
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--partitions",
            "1",
        ],
    );
    let db = TestDb::new("options").await;
    let help = common::bin()
        .args(["detect", "--help"])
        .env(
            "STOCKANOMALY_KAFKA_OPTIONS",
            format!("sasl.password={SECRET}"),
        )
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--kafka-option"), "{help}");
    assert!(help.contains("STOCKANOMALY_KAFKA_OPTIONS"), "{help}");
    assert!(!help.contains(SECRET), "{help}");

    let args = detect_args(
        &lake,
        &topic,
        "options",
        &db.url,
        &[
            "--kafka-option",
            "client.id=stockanomaly-options-test",
            "--kafka-option",
            &format!("sasl.password={SECRET}"),
            "--alerts-topic",
            &format!("{topic}-alerts"),
        ],
    );
    let out = common::bin()
        .current_dir(dir.path())
        .args(&args)
        .env("STOCKANOMALY_LOG", "debug")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(summary_number(&stdout, "ticks emitted") > 0, "{stdout}");
    assert!(
        stderr.contains("client.id, sasl.password (values not shown)"),
        "the keys are named:\n{stderr}"
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    // The options reach the clients: one librdkafka refuses stops the run,
    // naming the property and not the value.
    let args = detect_args(
        &lake,
        &topic,
        "options",
        &db.url,
        &["--kafka-option", &format!("socket.timeout.ms={SECRET}")],
    );
    let (success, stdout, stderr) = run(dir.path(), &args);
    assert!(!success, "{stdout}\n{stderr}");
    assert!(stderr.contains("socket.timeout.ms"), "{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "{stderr}"
    );
}

/// A loopback TCP proxy to PostgreSQL that can stop forwarding without
/// closing anything: connections stay open, bytes just stop, as with a
/// network that drops packets or a frozen server.
struct StallingProxy {
    addr: std::net::SocketAddr,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StallingProxy {
    async fn start(target: String) -> StallingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stalled);
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (target, flag) = (target.clone(), Arc::clone(&flag));
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    // One direction: read, then write, holding the bytes
                    // while stalled (never closing).
                    async fn pump(
                        mut r: tokio::net::tcp::OwnedReadHalf,
                        mut w: tokio::net::tcp::OwnedWriteHalf,
                        stalled: Arc<AtomicBool>,
                    ) {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            while stalled.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            let n = match tokio::time::timeout(
                                Duration::from_millis(100),
                                r.read(&mut buf),
                            )
                            .await
                            {
                                Ok(Ok(0)) | Ok(Err(_)) => return,
                                Ok(Ok(n)) => n,
                                Err(_) => continue,
                            };
                            while stalled.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            if w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                    tokio::join!(
                        pump(ri, wo, Arc::clone(&flag)),
                        pump(ro, wi, Arc::clone(&flag))
                    );
                });
            }
        });
        StallingProxy { addr, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// PostgreSQL stops answering (no reset) for longer than the consumer's
/// max.poll.interval.ms. The detector used to hang inside the commit for as
/// long as TCP allowed, deaf to SIGTERM, while the group evicted it for not
/// polling. Now every attempt is bounded, the consumer is polled with its
/// partitions paused while the batch waits (no eviction), SIGTERM ends the
/// run without committing, and a restart writes every alert exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_that_stops_answering_neither_hangs_nor_evicts_the_detector() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake, ["3", "2", "400", "3", "83"]);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("stall");
    ok(
        dir.path(),
        &[
            "produce",
            "--lake",
            &lake,
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--partitions",
            "2",
        ],
    );
    let db = TestDb::new("stall").await;
    ok(dir.path(), &["db", "migrate", "--database-url", &db.url]);
    let client = db.client().await;
    let target = url::Url::parse(&db.url).unwrap();
    let proxy = StallingProxy::start(format!(
        "{}:{}",
        target.host_str().unwrap(),
        target.port().unwrap_or(5432)
    ))
    .await;
    let mut through = target.clone();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(proxy.addr.port())).unwrap();
    let args = detect_args(
        &lake,
        &topic,
        "stall",
        through.as_str(),
        &[
            "--batch-rows",
            "100",
            "--kafka-option",
            "max.poll.interval.ms=10000",
        ],
    );
    let log = dir.path().join("stall.err");
    let mut child = common::bin()
        .current_dir(dir.path())
        .args(&args)
        .env("STOCKANOMALY_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let count = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .unwrap_or(0)
        }
    };
    let started = std::time::Instant::now();
    while count("SELECT count(*) FROM detector_offsets").await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no progress:\n{}",
            read_log()
        );
        assert!(child.try_wait().unwrap().is_none(), "{}", read_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.stall(true);
    // Longer than max.poll.interval.ms: a member that does not poll is
    // evicted by now.
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the detector died during the stall:\n{}",
        read_log()
    );
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let stopping = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if stopping.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "SIGTERM did not stop the detector within 10 s of a stalled PostgreSQL:\n{}",
                read_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stderr = read_log();
    assert!(
        !status.success(),
        "the batch in flight was not committed:\n{stderr}"
    );
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
    assert!(
        stderr.contains("polling the group with the partitions paused"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("maximum poll interval") && !stderr.contains("MAXPOLL"),
        "the member was not evicted for not polling:\n{stderr}"
    );
    proxy.stall(false);

    // A restart (straight to PostgreSQL) finishes the stream: every alert
    // of the batch answer, once.
    let args = detect_args(&lake, &topic, "stall", &db.url, &["--batch-rows", "100"]);
    let (success, out, err) = run(dir.path(), &args);
    assert!(success, "{out}\n{err}");
    let q = queries();
    ok(
        dir.path(),
        &[
            "score",
            "--lake",
            &lake,
            "--queries",
            q.to_str().unwrap(),
            "--rules",
        ],
    );
    let want = common::sql_number(
        dir.path(),
        &lake,
        "SELECT count(*) FROM scores WHERE detector = 'rule' AND alert",
    );
    assert!(want > 0, "the rule alerts on this lake");
    assert_eq!(
        count("SELECT count(*) FROM alerts").await,
        want,
        "alerts after the stall and a restart vs batch"
    );
}

/// Offsets are fenced by the consumer group's generation: a member evicted
/// during an outage that commits late cannot move the offsets a member of a
/// newer generation stored (its alerts are still stored, keyed). Before,
/// the last writer won, backwards included.
#[tokio::test]
async fn offsets_of_an_evicted_member_never_move_a_newer_members_back() {
    use stockanomaly::sinks::postgres::{commit_batch_fenced, load_offsets, migrate, OffsetRow};
    let db = TestDb::new("fence").await;
    let mut c = db.client().await;
    migrate(&mut c).await.unwrap();
    let offsets = |next: i64| {
        vec![OffsetRow {
            consumer_group: "g".into(),
            topic: "t".into(),
            partition: 0,
            next_offset: next,
            warmup_offset: next - 10,
        }]
    };
    let newer = commit_batch_fenced(&mut c, &[], &[], &offsets(100), Some(5))
        .await
        .unwrap();
    assert!(newer.fenced.is_empty());
    // The evicted member (generation 4) commits its batch late.
    let late = commit_batch_fenced(&mut c, &[], &[], &offsets(50), Some(4))
        .await
        .unwrap();
    assert_eq!(late.fenced, vec![0]);
    assert_eq!(load_offsets(&c, "g", "t").await.unwrap()[&0], (100, 90));
    // The owner goes on.
    commit_batch_fenced(&mut c, &[], &[], &offsets(120), Some(5))
        .await
        .unwrap();
    assert_eq!(load_offsets(&c, "g", "t").await.unwrap()[&0], (120, 110));
}

/// The alerts' lake sink fails (its folder is not writable: a file stands
/// where the `alerts` table goes), then recovers mid-run. `detect` used to
/// abort on the first failure, before committing anything. Now PostgreSQL,
/// the system of record, commits on, the lake is retried with backoff in
/// the background, and ends with every alert once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_secondary_sink_never_stops_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake_s, ["3", "1", "400", "3", "89"]);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("secondary");
    ok(
        dir.path(),
        &[
            "produce",
            "--lake",
            &lake_s,
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--partitions",
            "1",
        ],
    );
    let db = TestDb::new("secondary").await;
    let client = db.client().await;
    let blocker = lake.join("alerts");
    std::fs::write(&blocker, b"not a folder").unwrap();
    let args = detect_args(
        &lake_s,
        &topic,
        "secondary",
        &db.url,
        &[
            "--batch-rows",
            "100",
            "--alerts-to-lake",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
    );
    let log = dir.path().join("secondary.err");
    let mut child = common::bin()
        .current_dir(dir.path())
        .args(&args)
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(dir.path().join("secondary.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let started = std::time::Instant::now();
    loop {
        let alerts: i64 = client
            .query_one("SELECT count(*) FROM alerts", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        if alerts > 0 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "detect stopped while the lake failed:\n{}",
            read_log()
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "PostgreSQL got nothing while the lake failed:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The failures and retries are counted in the metrics.
    let addr = metrics_addr(&log, &mut child).await;
    for name in [
        "stockanomaly_secondary_sink_failures_total{sink=\"lake\"}",
        "stockanomaly_secondary_sink_retries_total{sink=\"lake\"}",
    ] {
        scrape_until(&addr, &log, &mut child, name, 1.0).await;
    }
    // The lake comes back.
    std::fs::remove_file(&blocker).unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stderr = read_log();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("Secondary sink failed; retrying"),
        "the failure was retried:\n{stderr}"
    );
    let pg: i64 = client
        .query_one("SELECT count(*) FROM alerts", &[])
        .await
        .unwrap()
        .get(0);
    let in_lake = common::sql_number(dir.path(), &lake_s, "SELECT count(*) FROM alerts");
    let distinct = common::sql_number(
        dir.path(),
        &lake_s,
        "SELECT count(DISTINCT (model_version, symbol, ts, seq)) FROM alerts",
    );
    assert!(pg > 0);
    assert_eq!(in_lake, pg, "every alert reached the lake:\n{stderr}");
    assert_eq!(distinct, in_lake, "each once");
}

/// A replay writes the alerts' lake rows again under other batch
/// boundaries (a crash between the lake and the PostgreSQL commit; here: a
/// second group reading the topic from its start with smaller batches).
/// Content-addressed files per batch used to hold every alert twice; files
/// named by source partition and offset block, merged on the alert key,
/// hold it once.
#[tokio::test]
async fn a_replay_adds_no_rows_to_the_lake_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake, ["3", "1", "400", "3", "97"]);
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("replay");
    ok(
        dir.path(),
        &[
            "produce",
            "--lake",
            &lake,
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--partitions",
            "2",
        ],
    );
    let db = TestDb::new("replay").await;
    // The first run takes the stream in as few batches as it can, the
    // replay in many small ones: the same alerts, cut differently.
    for (group, rows, wait) in [("first", "100000", "3000"), ("again", "40", "200")] {
        let args = detect_args(
            &lake,
            &topic,
            group,
            &db.url,
            &["--batch-rows", rows, "--batch-ms", wait, "--alerts-to-lake"],
        );
        let (success, out, err) = run(dir.path(), &args);
        assert!(success, "{out}\n{err}");
    }
    let in_lake = common::sql_number(dir.path(), &lake, "SELECT count(*) FROM alerts");
    let distinct = common::sql_number(
        dir.path(),
        &lake,
        "SELECT count(DISTINCT (model_version, symbol, ts, seq)) FROM alerts",
    );
    let client = db.client().await;
    let pg: i64 = client
        .query_one("SELECT count(*) FROM alerts", &[])
        .await
        .unwrap()
        .get(0);
    assert!(pg > 1, "{pg} alerts");
    assert_eq!(distinct, pg);
    assert_eq!(in_lake, distinct, "the replay duplicated lake rows");
}

/// One tick stamped three hours ahead used to pass (a day was allowed) and
/// become its symbol's newest time: every real tick after it was refused
/// as `late` until the clock caught up. Now a tick more than `--max-future`
/// (5 s) ahead of its arrival is refused as `timestamp_in_future`,
/// dead-lettered and counted, and the real ticks are all admitted.
#[tokio::test]
async fn a_tick_hours_ahead_does_not_make_the_real_ticks_late() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").to_str().unwrap().to_owned();
    common::simulate_backfill(dir.path(), &lake, ["2", "1", "300", "2", "61"]);
    let symbol = common::sql_json(dir.path(), &lake, "SELECT min(symbol) AS s FROM ticks")[0]["s"]
        .as_str()
        .unwrap()
        .to_owned();
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let topic = unique("future");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for r in admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    // First on the topic: the symbol's tick three hours from now.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let ahead = (chrono::Utc::now().timestamp_micros() + 3 * 3_600_000_000) as f64 / 1e6;
    let payload = format!(r#"{{"symbol":"{symbol}","ts":{ahead},"price":100.0,"volume":1}}"#);
    producer
        .send(
            FutureRecord::to(&topic).key(&symbol).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // Then the real ticks.
    ok(
        dir.path(),
        &[
            "produce",
            "--lake",
            &lake,
            "--topic",
            &topic,
            "--brokers",
            &brokers,
            "--partitions",
            "1",
        ],
    );
    let total = common::sql_number(dir.path(), &lake, "SELECT count(*) FROM ticks");
    let db = TestDb::new("future").await;
    let args = detect_args(
        &lake,
        &topic,
        "future",
        &db.url,
        &["--metrics-addr", "127.0.0.1:0"],
    );
    let (mut child, out_path, log) = spawn(dir.path(), &args, "future");
    let addr = metrics_addr(&log, &mut child).await;
    scrape_until(
        &addr,
        &log,
        &mut child,
        "stockanomaly_dead_letters_total{reason=\"timestamp_in_future\"}",
        1.0,
    )
    .await;
    let (success, out, err) = wait(child, &out_path, &log).await;
    assert!(success, "{out}\n{err}");
    let client = db.client().await;
    let dead: Vec<(String, i64)> = client
        .query(
            "SELECT reason, count(*) FROM dead_letters GROUP BY reason ORDER BY reason",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        dead,
        vec![("timestamp_in_future".to_owned(), 1)],
        "only the tick ahead is refused:\n{err}"
    );
    assert_eq!(
        summary_number(&out, "ticks emitted"),
        total,
        "every real tick is emitted:\n{out}\n{err}"
    );
}
