//! `stockanomaly detect` in operation, against the real broker and
//! PostgreSQL: two detectors sharing a consumer group over a 6-partition
//! topic write exactly the alerts of one (across a rebalance when one
//! leaves), and a PostgreSQL outage mid-stream (a loopback proxy that cuts
//! and refuses connections) costs nothing: no crash, no offset past an
//! unwritten alert, every alert once after recovery.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, ok, queries, service_env, Key, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A lake of `symbols` symbols over three days, backfilled, with a model
/// trained on it and scored by `score`: returns (lake, model version, the
/// batch alerts).
fn scored_lake(
    dir: &Path,
    q: &Path,
    symbols: &str,
    trades: &str,
    seed: &str,
) -> (String, String, BTreeMap<Key, f64>) {
    let lake = dir.join("lake").to_str().unwrap().to_owned();
    common::simulate_backfill_with(dir, &lake, [symbols, "3", trades, "4", seed], q);
    let q = q.to_str().unwrap();
    ok(
        dir,
        &[
            "train",
            "--lake",
            &lake,
            "--queries",
            q,
            "--rounds",
            "10",
            "--out",
            "m",
        ],
    );
    ok(
        dir,
        &["score", "--lake", &lake, "--queries", q, "--model", "m"],
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("m/manifest.json")).unwrap()).unwrap();
    let version = manifest["version"].as_str().unwrap().to_owned();
    let want = common::batch_alerts(dir, &lake, &version);
    assert!(want.len() > 20, "{} alerts", want.len());
    (lake, version, want)
}

fn detect_args(
    q: &Path,
    lake: &str,
    topic: &str,
    group: &str,
    url: &str,
    extra: &[&str],
) -> Vec<String> {
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let mut args: Vec<String> = [
        "detect",
        "--lake",
        lake,
        "--queries",
        q.to_str().unwrap(),
        "--model",
        "m",
        "--source",
        &format!("kafka://{brokers}/{topic}"),
        "--group",
        group,
        "--database-url",
        url,
        "--idle-timeout-ms",
        "300",
        "--stats-every",
        "1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// A detector process, killed if the test ends before it does.
struct Detector(Child);

impl Drop for Detector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, args: &[String], log: &str) -> Detector {
    Detector(
        common::bin()
            .current_dir(dir)
            .args(args)
            .env("STOCKANOMALY_LOG", "stockanomaly=info")
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(dir.join(format!("{log}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{log}.err"))).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn log(dir: &Path, name: &str) -> String {
    let read =
        |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).unwrap_or_default();
    format!("--- stdout\n{}\n--- stderr\n{}", read("out"), read("err"))
}

/// Waits for the detector to exit successfully (without blocking the
/// runtime: the proxy of the outage test runs on it).
async fn wait_ok(child: &mut Detector, dir: &Path, name: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(
                status.success(),
                "{name} failed ({status}):\n{}",
                log(dir, name)
            );
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{name} still running after {limit:?}:\n{}",
            log(dir, name)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn produce(dir: &Path, lake: &str, topic: &str, from: &str, to: &str) {
    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    ok(
        dir,
        &[
            "produce",
            "--lake",
            lake,
            "--topic",
            topic,
            "--brokers",
            &brokers,
            "--partitions",
            "6",
            "--from",
            from,
            "--to",
            to,
        ],
    );
}

fn unique(tag: &str) -> String {
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    )
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(-1)
}

/// The simulated lake's three trading days.
async fn days(dir: &Path, lake: &str) -> Vec<String> {
    common::sql_json(dir, lake, "SELECT DISTINCT date FROM ticks ORDER BY date")
        .iter()
        .map(|v| v["date"].as_str().unwrap().to_owned())
        .collect()
}

/// GET `http://addr/metrics`.
async fn scrape(addr: &str) -> Option<String> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    c.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test]
async fn two_detectors_in_a_group_write_the_alerts_of_one_across_a_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    // Members of a group each read some partitions: without a
    // market-context stage they need features of their own symbols only
    // (tests/detect.rs runs shared partitions with the stage).
    let q = common::per_symbol_queries(dir.path());
    let (lake, version, want) = scored_lake(dir.path(), &q, "12", "120", "51");
    let days = days(dir.path(), &lake).await;
    assert_eq!(days.len(), 3);
    let topic = unique("scale");
    // The first day is on the topic before the detectors start; the rest
    // arrives after one of them has left.
    produce(dir.path(), &lake, &topic, &days[0], &days[0]);
    let db = TestDb::new("scale").await;
    let client = db.client().await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let a_args = detect_args(
        &q,
        &lake,
        &topic,
        &topic,
        &db.url,
        &[
            "--exit-when-idle",
            "25",
            "--batch-rows",
            "500",
            "--metrics-addr",
            &metrics,
        ],
    );
    let b_args = detect_args(&q, &lake, &topic, &topic, &db.url, &["--batch-rows", "500"]);
    // A starts alone and takes every partition; B joins once A has
    // committed something (a rebalance: A gives B half the partitions).
    let mut a = spawn(dir.path(), &a_args, "a");
    let started = Instant::now();
    while count(&client, "SELECT count(*) FROM detector_offsets").await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "A made no progress:\n{}",
            log(dir.path(), "a")
        );
        assert!(
            a.0.try_wait().unwrap().is_none(),
            "a exited:\n{}",
            log(dir.path(), "a")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut b = spawn(dir.path(), &b_args, "b");
    // Both members take part: each has read messages of its own partitions
    // (their `detector_stats` rows, one instance each) and alerts are in.
    let started = Instant::now();
    loop {
        let members = count(
            &client,
            "SELECT count(DISTINCT instance) FROM detector_stats WHERE ticks > 0",
        )
        .await;
        let alerts = count(&client, "SELECT count(*) FROM alerts").await;
        if members >= 2 && alerts > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no progress ({members} members with ticks, {alerts} alerts):\n{}\n{}",
            log(dir.path(), "a"),
            log(dir.path(), "b")
        );
        assert!(
            a.0.try_wait().unwrap().is_none(),
            "a exited:\n{}",
            log(dir.path(), "a")
        );
        assert!(
            b.0.try_wait().unwrap().is_none(),
            "b exited:\n{}",
            log(dir.path(), "b")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The metrics endpoint of a running detector.
    let text = scrape(&metrics).await.expect("metrics endpoint answers");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let messages: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("stockanomaly_messages_total "))
        .and_then(|v| v.parse().ok())
        .expect("a messages counter");
    assert!(messages > 0.0, "{text}");
    assert!(
        text.contains("stockanomaly_arrival_to_commit_seconds_bucket"),
        "{text}"
    );

    // B leaves (SIGTERM: finish the batch, commit, leave the group); the
    // rest of the ticks arrive and A takes B's partitions over.
    let pid = b.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    wait_ok(&mut b, dir.path(), "b", Duration::from_secs(60)).await;
    let b_out = log(dir.path(), "b");
    assert!(b_out.contains("detect: "), "{b_out}");
    produce(dir.path(), &lake, &topic, &days[1], &days[2]);
    wait_ok(&mut a, dir.path(), "a", Duration::from_secs(300)).await;
    let a_out = log(dir.path(), "a");
    // A lost half its partitions when B joined (and dropped their state).
    assert!(
        a_out.contains("Partitions revoked: state dropped."),
        "A saw the group change:\n{a_out}"
    );

    let got = common::pg_alerts(&client, &version).await;
    let dead: Vec<String> = client
        .query(
            "SELECT source_partition || '@' || source_offset || ' ' || reason || ': ' || \
             coalesce(detail, '') FROM dead_letters",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    assert!(dead.is_empty(), "the lake's ticks are all good: {dead:#?}");
    common::assert_same(&got, &want, "two members vs batch");
    let stats = count(
        &client,
        "SELECT count(*) FROM detector_stats WHERE e2e_p99_ms IS NOT NULL AND lag IS NOT NULL",
    )
    .await;
    assert!(stats > 0, "detector_stats rows carry latency and lag");
    // The latency split: what processing adds (from a tick becoming
    // emittable to its commit) and what the pack's declared waits cost.
    let split = count(
        &client,
        "SELECT count(*) FROM detector_stats \
         WHERE processing_p50_ms >= 0 AND processing_p50_ms <= processing_p99_ms \
           AND wait_p50_ms >= 0 AND wait_p50_ms <= wait_p99_ms",
    )
    .await;
    assert!(split > 0, "detector_stats rows carry the latency split");
}

/// A loopback TCP proxy to PostgreSQL that can be cut: when down, it closes
/// every open connection and refuses new ones (accepts, then drops).
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (d, o) = (Arc::clone(&down), Arc::clone(&open));
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if d.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                o.lock().unwrap().push(task);
            }
        });
        Proxy { addr, down, open }
    }

    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for t in self.open.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_mid_stream_loses_nothing_and_commits_nothing_early() {
    let dir = tempfile::tempdir().unwrap();
    let q = queries();
    let (lake, version, want) = scored_lake(dir.path(), &q, "4", "300", "61");
    let topic = unique("outage");
    let db = TestDb::new("outage").await;
    let client = db.client().await;
    let target = url::Url::parse(&db.url).unwrap();
    let proxy = Proxy::start(format!(
        "{}:{}",
        target.host_str().unwrap(),
        target.port().unwrap_or(5432)
    ))
    .await;
    let mut through = target.clone();
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(proxy.addr.port())).unwrap();
    // The schema first, straight (the detector migrates too, through the
    // proxy, while it is up).
    ok(dir.path(), &["db", "migrate", "--database-url", &db.url]);
    let days = days(dir.path(), &lake).await;
    produce(dir.path(), &lake, &topic, &days[0], &days[2]);
    let args = detect_args(
        &q,
        &lake,
        &topic,
        &topic,
        through.as_str(),
        &["--exit-when-idle", "6", "--batch-rows", "300"],
    );
    let mut child = spawn(dir.path(), &args, "d");
    // Cut once a third of the alerts are in.
    let started = Instant::now();
    while (count(&client, "SELECT count(*) FROM alerts").await as usize) < want.len() / 3 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no progress:\n{}",
            log(dir.path(), "d")
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "{}",
            log(dir.path(), "d")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.cut();
    // A commit already sent when the connection was cut may still land:
    // let the server finish it before taking the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let offsets_sql = "SELECT coalesce(sum(next_offset), 0)::bigint FROM detector_offsets";
    let alerts_at_cut = count(&client, "SELECT count(*) FROM alerts").await;
    let offsets_at_cut = count(&client, offsets_sql).await;
    // Down for a while: the detector keeps running and nothing moves.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the detector died during the outage:\n{}",
            log(dir.path(), "d")
        );
        assert_eq!(
            count(&client, "SELECT count(*) FROM alerts").await,
            alerts_at_cut
        );
        assert_eq!(count(&client, offsets_sql).await, offsets_at_cut);
    }
    // Every stored offset is covered by the alerts written before it: the
    // alerts of ticks below each partition's next offset are all there.
    let covered = count(
        &client,
        &format!(
            "SELECT count(*) FROM alerts a JOIN detector_offsets o \
             ON o.partition = a.source_partition WHERE a.source_offset < o.next_offset \
             AND a.model_version = '{version}'"
        ),
    )
    .await;
    let stored: BTreeMap<i32, i64> = client
        .query("SELECT partition, next_offset FROM detector_offsets", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i32>(0), r.get::<_, i64>(1)))
        .collect();
    assert!(!stored.is_empty());
    assert!(covered > 0);
    proxy.restore();
    wait_ok(&mut child, dir.path(), "d", Duration::from_secs(300)).await;
    let stderr = log(dir.path(), "d");
    assert!(
        stderr.contains("PostgreSQL unavailable"),
        "the outage was noticed and retried:\n{stderr}"
    );
    let got = common::pg_alerts(&client, &version).await;
    if got != want {
        eprintln!("{}", log(dir.path(), "d"));
    }
    common::assert_same(&got, &want, "after the outage vs batch");
    // The alerts below the offsets stored at the cut were all written
    // before the cut: none of them is newer than the cut.
    let late_below = client
        .query_one(
            "SELECT count(*) FROM alerts a JOIN (SELECT * FROM unnest($1::int4[], $2::int8[]) \
             AS t(partition, next_offset)) o ON o.partition = a.source_partition \
             WHERE a.source_offset < o.next_offset",
            &[
                &stored.keys().copied().collect::<Vec<i32>>(),
                &stored.values().copied().collect::<Vec<i64>>(),
            ],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(
        late_below, covered,
        "an offset stored before the outage ran ahead of its alerts"
    );
}
