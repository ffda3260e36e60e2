//! `stockanomaly ingest live` end to end, against servers the test runs on
//! loopback, written from Alpaca's documented formats (feeds.md §1): a
//! WebSocket stream scripted per connection and the REST trades history
//! (`/v2/stocks/trades`, paged by `next_page_token`).
//!
//! The stream sends trades (a tie on `ts`, a quote, a bad record, a
//! malformed frame and an unknown message type among them), then drops the
//! connection without a close frame; on the next connection it sends the
//! later trades and a correction. The trades sent during the drop exist only
//! in the REST history, which also serves trades the stream delivered: the
//! stored ticks must be exactly the trades that happened, once each.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use common::{bin, sql_json};

const KEY_ID: &str = "live-key-id-3c9d";
const SECRET: &str = "live-secret-e07a";

/// 2025-03-03T14:30:00Z, µs.
const T0_US: i64 = 1_741_012_200_000_000;

/// A trade: symbol, µs after T0, id, price, size.
type Trade = (&'static str, i64, u64, f64, f64);

/// Every trade that happened, in the feed's order per symbol.
const TRADES: &[Trade] = &[
    ("AAPL", 1_000_000, 1, 189.41, 100.0),
    ("MSFT", 1_500_000, 2, 401.10, 20.0),
    ("AAPL", 2_000_000, 3, 189.42, 50.0),
    ("AAPL", 2_000_000, 4, 189.43, 75.0), // same ts: seq 1
    ("AAPL", 3_000_000, 5, 189.40, 10.0),
    // Sent while the client was disconnected: REST history only.
    ("AAPL", 4_000_000, 6, 189.38, 300.0),
    ("MSFT", 4_500_000, 7, 401.25, 15.0),
    ("AAPL", 5_000_000, 8, 189.35, 200.0),
    // After the reconnect.
    ("AAPL", 6_000_000, 9, 189.50, 40.0),
    ("MSFT", 6_500_000, 10, 401.30, 5.0),
    ("AAPL", 7_000_000, 11, 189.55, 60.0),
];

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(T0_US + us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn stream_trade(t: &Trade) -> String {
    format!(
        r#"{{"T":"t","S":"{}","i":{},"x":"V","p":{},"s":{},"c":["@"],"z":"C","t":"{}"}}"#,
        t.0,
        t.2,
        t.3,
        t.4,
        rfc3339(t.1)
    )
}

fn rest_trade(t: &Trade) -> String {
    format!(
        r#"{{"t":"{}","x":"V","p":{},"s":{},"c":["@"],"i":{},"z":"C"}}"#,
        rfc3339(t.1),
        t.3,
        t.4,
        t.2
    )
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

async fn recv(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("client went away: {other:?}"),
        }
    }
}

/// Greets, checks the credentials and the subscription (trades and quotes
/// of both symbols), as Alpaca does.
async fn handshake(ws: &mut Ws, complaints: &Mutex<Vec<String>>) {
    send(ws, r#"[{"T":"success","msg":"connected"}]"#).await;
    let auth = recv(ws).await;
    if auth["key"] != KEY_ID || auth["secret"] != SECRET {
        complaints.lock().unwrap().push(format!("auth: {auth}"));
    }
    send(ws, r#"[{"T":"success","msg":"authenticated"}]"#).await;
    let sub = recv(ws).await;
    if sub["trades"] != serde_json::json!(["AAPL", "MSFT"])
        || sub["quotes"] != serde_json::json!(["AAPL", "MSFT"])
    {
        complaints.lock().unwrap().push(format!("subscribe: {sub}"));
    }
    send(
        ws,
        r#"[{"T":"subscription","trades":["AAPL","MSFT"],"quotes":["AAPL","MSFT"],"bars":[],"updatedBars":[],"dailyBars":[],"statuses":[],"lulds":[],"corrections":["AAPL","MSFT"],"cancelErrors":["AAPL","MSFT"]}]"#,
    )
    .await;
}

/// The stream: connection 1 up to the drop, connection 2 after it (then
/// held open, silent but answering pings, until the client leaves).
async fn stream_server(l: TcpListener, complaints: Arc<Mutex<Vec<String>>>) {
    let (tcp, _) = l.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    handshake(&mut ws, &complaints).await;
    let t: Vec<String> = TRADES.iter().map(stream_trade).collect();
    send(&mut ws, &format!("[{},{}]", t[0], t[1])).await;
    send(
        &mut ws,
        r#"[{"T":"q","S":"AAPL","ax":"V","ap":189.45,"as":3,"bx":"V","bp":189.40,"bs":2,"c":["R"],"t":"2025-03-03T14:30:01.9Z","z":"C"}]"#,
    )
    .await;
    // A bad record and an unknown type among good ones, then a frame that
    // is not JSON at all.
    send(
        &mut ws,
        &format!(
            r#"[{},{{"T":"t","S":"AAPL","p":"bad","t":"2025-03-03T14:30:02Z"}},{{"T":"mystery"}},{}]"#,
            t[2], t[3]
        ),
    )
    .await;
    send(&mut ws, "{not json").await;
    send(&mut ws, &format!("[{}]", t[4])).await;
    // Give the client time to take these in, then drop without a close
    // frame, as a network failure does.
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(ws);

    let (tcp, _) = l.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    handshake(&mut ws, &complaints).await;
    send(&mut ws, &format!("[{},{}]", t[8], t[9])).await;
    send(
        &mut ws,
        &format!(
            r#"[{{"T":"c","S":"AAPL","x":"V","oi":9,"op":189.50,"os":40,"oc":["@"],"ci":12,"cp":189.51,"cs":40,"cc":["@"],"z":"C","t":"{}"}},{}]"#,
            rfc3339(6_000_000),
            t[10]
        ),
    )
    .await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// What the REST server was asked.
#[derive(Default)]
struct RestLog {
    queries: Vec<HashMap<String, String>>,
    complaints: Vec<String>,
}

type Shared = Arc<Mutex<RestLog>>;

/// `/v2/stocks/trades`: everything in `[start, end]`, two pages (the first
/// ends inside AAPL's trades).
async fn trades_route(
    State(log): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let mut log = log.lock().unwrap();
    log.queries.push(q.clone());
    if headers.get("APCA-API-KEY-ID").and_then(|v| v.to_str().ok()) != Some(KEY_ID)
        || headers
            .get("APCA-API-SECRET-KEY")
            .and_then(|v| v.to_str().ok())
            != Some(SECRET)
    {
        log.complaints.push("credentials missing".into());
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"message":"forbidden"}"#.into(),
        );
    }
    let us = |k: &str| {
        q.get(k)
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.timestamp_micros() - T0_US)
    };
    let (Some(start), Some(end)) = (us("start"), us("end")) else {
        log.complaints.push(format!("no start/end: {q:?}"));
        return (StatusCode::BAD_REQUEST, "{}".into());
    };
    let mut by_symbol: Vec<(&str, Vec<&Trade>)> = Vec::new();
    for sym in ["AAPL", "MSFT"] {
        let v: Vec<&Trade> = TRADES
            .iter()
            .filter(|t| t.0 == sym && t.1 >= start && t.1 <= end)
            .collect();
        by_symbol.push((sym, v));
    }
    let all: Vec<(&str, &Trade)> = by_symbol
        .iter()
        .flat_map(|(s, v)| v.iter().map(move |t| (*s, *t)))
        .collect();
    let (page, next) = match q.get("page_token").map(String::as_str) {
        None => (
            &all[..all.len().min(4)],
            (all.len() > 4).then_some("page-2"),
        ),
        Some("page-2") => (&all[all.len().min(4)..], None),
        Some(other) => {
            log.complaints.push(format!("unknown page token {other}"));
            return (StatusCode::BAD_REQUEST, "{}".into());
        }
    };
    let mut out: Vec<String> = Vec::new();
    for sym in ["AAPL", "MSFT"] {
        let ts: Vec<String> = page
            .iter()
            .filter(|(s, _)| *s == sym)
            .map(|(_, t)| rest_trade(t))
            .collect();
        if !ts.is_empty() {
            out.push(format!(r#""{sym}":[{}]"#, ts.join(",")));
        }
    }
    let next = next.map_or("null".to_owned(), |n| format!("\"{n}\""));
    (
        StatusCode::OK,
        format!(
            r#"{{"trades":{{{}}},"next_page_token":{next}}}"#,
            out.join(",")
        ),
    )
}

/// Runs both servers on loopback threads: (stream URL, REST base, logs).
fn servers() -> (String, String, Arc<Mutex<Vec<String>>>, Shared) {
    let complaints = Arc::new(Mutex::new(Vec::new()));
    let rest_log = Shared::default();
    let std_ws = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_ws.set_nonblocking(true).unwrap();
    let std_rest = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_rest.set_nonblocking(true).unwrap();
    let ws_addr: SocketAddr = std_ws.local_addr().unwrap();
    let rest_addr: SocketAddr = std_rest.local_addr().unwrap();
    let (c, r) = (complaints.clone(), rest_log.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let router = Router::new()
                .route("/v2/stocks/trades", get(trades_route))
                .with_state(r);
            let rest = TcpListener::from_std(std_rest).unwrap();
            tokio::spawn(async move { axum::serve(rest, router).await.unwrap() });
            stream_server(TcpListener::from_std(std_ws).unwrap(), c).await;
            // Keep serving REST until the test process ends.
            std::future::pending::<()>().await;
        });
    });
    (
        format!("ws://{ws_addr}/v2/test"),
        format!("http://{rest_addr}"),
        complaints,
        rest_log,
    )
}

fn live(dir: &Path, args: &[&str]) -> std::process::Command {
    let mut c = bin();
    c.current_dir(dir)
        .env("APCA_API_KEY_ID", KEY_ID)
        .env("APCA_API_SECRET_KEY", SECRET)
        .args(["ingest", "live", "alpaca"])
        .args(args);
    c
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_credentials(out: &Output) {
    let (o, e) = text(out);
    for s in [KEY_ID, SECRET] {
        assert!(!o.contains(s) && !e.contains(s), "{s} printed:\n{o}\n{e}");
    }
}

/// `(symbol, ts µs after T0, seq, price, volume)` of the trades, keyed as
/// the stream keys them.
fn expected() -> Vec<(String, i64, u64, f64, f64)> {
    let mut seq: HashMap<(&str, i64), u64> = HashMap::new();
    let mut v: Vec<(String, i64, u64, f64, f64)> = TRADES
        .iter()
        .map(|t| {
            let n = seq.entry((t.0, t.1)).or_insert(0);
            *n += 1;
            (t.0.to_owned(), t.1, *n - 1, t.3, t.4)
        })
        .collect();
    v.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    v
}

fn assert_rest_asked_for_the_gap(rest: &Shared) {
    let log = rest.lock().unwrap();
    assert!(log.complaints.is_empty(), "{:?}", log.complaints);
    assert_eq!(log.queries.len(), 2, "two pages: {:?}", log.queries);
    let q = &log.queries[0];
    // From MSFT's last tick before the drop (the earliest of the symbols'
    // last ticks) to the first tick after the reconnect.
    assert_eq!(q["start"], rfc3339(1_500_000), "{q:?}");
    assert_eq!(q["end"], rfc3339(6_000_000), "{q:?}");
    assert_eq!(q["symbols"], "AAPL,MSFT", "{q:?}");
    assert_eq!(log.queries[1]["page_token"], "page-2");
}

#[test]
fn alpaca_drop_is_backfilled_from_rest_and_every_trade_is_stored_once() {
    let (ws, rest, complaints, rest_log) = servers();
    let dir = tempfile::tempdir().unwrap();
    let out = live(
        dir.path(),
        &[
            "--symbols",
            "AAPL,MSFT",
            "--endpoint",
            &ws,
            "--rest-endpoint",
            &rest,
            "--max-ticks",
            &TRADES.len().to_string(),
            "--rejects",
            "rejects.csv",
            "--lake",
            "lake",
        ],
    )
    .output()
    .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    assert_no_credentials(&out);
    assert!(
        complaints.lock().unwrap().is_empty(),
        "{:?}",
        complaints.lock().unwrap()
    );
    assert_rest_asked_for_the_gap(&rest_log);
    assert!(o.contains("11 ticks written to"), "{o}");
    assert!(o.contains("--max-ticks reached"), "{o}");
    assert!(o.contains("reconnects 1"), "{o}");
    assert!(
        o.contains("1 filled from the REST history (+3 ticks, 5 already received), 0 unfilled"),
        "{o}"
    );
    assert!(o.contains("unknown types 1"), "{o}");
    assert!(o.contains("per symbol: AAPL 8, MSFT 3"), "{o}");

    // Exactly the trades that happened, once each, keyed as streamed.
    let rows = sql_json(
        dir.path(),
        "lake",
        "SELECT symbol, CAST(ts AS BIGINT) AS ts, seq, price, volume, source \
         FROM ticks ORDER BY symbol, ts, seq",
    );
    let got: Vec<(String, i64, u64, f64, f64)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["source"], "alpaca");
            (
                r["symbol"].as_str().unwrap().to_owned(),
                r["ts"].as_i64().unwrap() - T0_US,
                r["seq"].as_u64().unwrap(),
                r["price"].as_f64().unwrap(),
                r["volume"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected());

    // The bad record and the broken frame: counted, written with reasons.
    assert!(o.contains("2 rejected"), "{o}");
    let rejects = std::fs::read_to_string(dir.path().join("rejects.csv")).unwrap();
    assert_eq!(rejects.lines().count(), 3, "header + 2:\n{rejects}");
    assert!(rejects.contains("bad"), "{rejects}");
    assert!(rejects.contains("not json"), "{rejects}");
}

#[tokio::test]
async fn alpaca_into_postgres_until_sigterm_with_the_correction_recorded() {
    let db = common::TestDb::new("live_pg").await;
    let client = db.client().await;
    let (ws, rest, complaints, rest_log) = servers();
    let dir = tempfile::tempdir().unwrap();
    let child = live(
        dir.path(),
        &[
            "--symbols",
            "AAPL,MSFT",
            "--endpoint",
            &ws,
            "--rest-endpoint",
            &rest,
            "--to",
            &db.url,
            "--lake",
            "lake",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // PostgreSQL is written per batch: wait for every trade to be there.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = match client.query_one("SELECT count(*) FROM ticks", &[]).await {
            Ok(r) => r.get(0),
            Err(_) => 0, // the schema is not there yet
        };
        if n as usize == TRADES.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{n} ticks stored after 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A little longer: the correction follows the last trade in its frame.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "SIGTERM exits 0:\n{o}\n{e}");
    assert_no_credentials(&out);
    assert!(!o.contains(&db.url) && !e.contains(&db.url), "{o}\n{e}");
    assert!(o.contains("stopped by signal"), "{o}");
    assert!(
        o.contains("tick store: 11 ticks new, 0 already there, 1 day partitions created"),
        "{o}"
    );
    assert!(complaints.lock().unwrap().is_empty());
    assert_rest_asked_for_the_gap(&rest_log);

    let got: Vec<(String, i64, u64, f64, f64)> = client
        .query(
            "SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, seq, price, volume \
             FROM ticks ORDER BY symbol, ts, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let us: i64 = r.get(1);
            let seq: i32 = r.get(2);
            (r.get(0), us - T0_US, seq as u64, r.get(3), r.get(4))
        })
        .collect();
    assert_eq!(got, expected());

    // The correction is in the lake's amendments table, not a tick.
    assert!(o.contains("1 amendments recorded"), "{o}");
    let a = sql_json(
        dir.path(),
        "lake",
        "SELECT symbol, kind, trade_id, new_trade_id, price, new_price FROM amendments",
    );
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a[0]["kind"], "correction");
    assert_eq!(a[0]["trade_id"], 9);
    assert_eq!(a[0]["new_trade_id"], 12);
    assert_eq!(a[0]["new_price"], 189.51);
}

/// The tick store's connection is cut mid-run (`pg_terminate_backend`, as
/// a database restart or failover does). `ingest live` used to fail on the
/// next batch and exit, losing what followed; it now reconnects with
/// backoff and every trade arrives, once.
#[tokio::test]
async fn a_killed_postgres_connection_is_reconnected_and_no_tick_is_lost() {
    let db = common::TestDb::new("live_pg_kill").await;
    let client = db.client().await;
    let (ws, rest, _complaints, _rest_log) = servers();
    let dir = tempfile::tempdir().unwrap();
    let mut child = live(
        dir.path(),
        &[
            "--symbols",
            "AAPL,MSFT",
            "--endpoint",
            &ws,
            "--rest-endpoint",
            &rest,
            "--to",
            &db.url,
            "--lake",
            "lake",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let client = &client;
    let count = || async move {
        match client.query_one("SELECT count(*) FROM ticks", &[]).await {
            Ok(r) => r.get::<_, i64>(0),
            Err(_) => 0, // the schema is not there yet
        }
    };
    // The first batch is in: the connection is cut before the next.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count().await == 0 {
        assert!(Instant::now() < deadline, "no tick stored after 60 s");
        assert!(child.try_wait().unwrap().is_none(), "ingest live exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) k",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the ingester's connection was found");
    let stored_before = count().await;
    assert!(
        (stored_before as usize) < TRADES.len(),
        "the cut came before the last trades ({stored_before} stored)"
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = count().await;
        if n as usize == TRADES.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{n} ticks stored after the cut");
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let (o, e) = text(&out);
            panic!("ingest live exited after the cut with {n} ticks stored:\n{o}\n{e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "SIGTERM exits 0:\n{o}\n{e}");
    assert!(
        o.contains("tick store: 11 ticks new"),
        "each trade stored once:\n{o}"
    );
    let got: Vec<(String, i64, u64, f64, f64)> = client
        .query(
            "SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, seq, price, volume \
             FROM ticks ORDER BY symbol, ts, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let us: i64 = r.get(1);
            let seq: i32 = r.get(2);
            (r.get(0), us - T0_US, seq as u64, r.get(3), r.get(4))
        })
        .collect();
    assert_eq!(got, expected(), "every trade once");
}

#[test]
fn refused_credentials_stop_at_once_naming_the_cause() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_std(l).unwrap();
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                send(&mut ws, r#"[{"T":"success","msg":"connected"}]"#).await;
                recv(&mut ws).await;
                send(&mut ws, r#"[{"T":"error","code":402,"msg":"auth failed"}]"#).await;
                while let Some(Ok(_)) = ws.next().await {}
            }
        });
    });
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = live(
        dir.path(),
        &[
            "--symbols",
            "AAPL",
            "--endpoint",
            &format!("ws://{addr}/v2/test"),
            "--lake",
            "lake",
        ],
    )
    .output()
    .unwrap();
    let (o, e) = text(&out);
    assert!(!out.status.success(), "{o}\n{e}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no retrying a 402"
    );
    assert!(e.contains("402") && e.contains("auth failed"), "{e}");
    assert_no_credentials(&out);

    // Without credentials in the environment: the variables are named.
    let out = bin()
        .current_dir(dir.path())
        .env_remove("APCA_API_KEY_ID")
        .env_remove("APCA_API_SECRET_KEY")
        .args([
            "ingest",
            "live",
            "alpaca",
            "--symbols",
            "AAPL",
            "--lake",
            "lake",
        ])
        .output()
        .unwrap();
    let (_, e) = text(&out);
    assert!(!out.status.success());
    assert!(e.contains("APCA_API_KEY_ID"), "{e}");
}

const POLYGON_KEY: &str = "live-polygon-key-81fe";
const FINNHUB_KEY: &str = "live-finnhub-token-2a6b";
const MIN_MS: i64 = 60_000;
const T0_MS: i64 = T0_US / 1000;

/// A Polygon minute bar of AAPL: `(minute after T0, close, volume)`.
const BARS: &[(i64, f64, f64)] = &[
    (0, 189.1, 1000.0),
    (1, 189.2, 1100.0),
    (2, 189.3, 1200.0), // during the drop
    (3, 189.4, 1300.0), // during the drop
    (4, 189.5, 1400.0),
    (5, 189.6, 1500.0),
];

fn am(b: &(i64, f64, f64)) -> String {
    let s = T0_MS + b.0 * MIN_MS;
    format!(
        r#"{{"ev":"AM","sym":"AAPL","v":{},"av":100000,"op":189.0,"vw":{},"o":{},"c":{},"h":{},"l":{},"a":189.2,"z":10,"s":{s},"e":{}}}"#,
        b.2,
        b.1,
        b.1 - 0.05,
        b.1,
        b.1 + 0.1,
        b.1 - 0.1,
        s + MIN_MS
    )
}

/// Accepts a WebSocket, returning the request's path and query.
#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn accept_uri(l: &TcpListener) -> (Ws, String) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let (tcp, _) = l.accept().await.unwrap();
    let mut uri = String::new();
    let ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    })
    .await
    .unwrap();
    (ws, uri)
}

async fn polygon_stream(l: TcpListener, complaints: Arc<Mutex<Vec<String>>>) {
    for (i, bars) in [&BARS[..2], &BARS[4..]].into_iter().enumerate() {
        let (mut ws, _) = accept_uri(&l).await;
        send(
            &mut ws,
            r#"[{"ev":"status","status":"connected","message":"Connected Successfully"}]"#,
        )
        .await;
        let auth = recv(&mut ws).await;
        if auth != serde_json::json!({"action": "auth", "params": POLYGON_KEY}) {
            complaints.lock().unwrap().push(format!("auth {auth}"));
        }
        send(
            &mut ws,
            r#"[{"ev":"status","status":"auth_success","message":"authenticated"}]"#,
        )
        .await;
        let sub = recv(&mut ws).await;
        if sub != serde_json::json!({"action": "subscribe", "params": "AM.AAPL"}) {
            complaints.lock().unwrap().push(format!("subscribe {sub}"));
        }
        send(
            &mut ws,
            r#"[{"ev":"status","status":"success","message":"subscribed to: AM.AAPL"}]"#,
        )
        .await;
        let frame: Vec<String> = bars.iter().map(am).collect();
        send(&mut ws, &format!("[{}]", frame.join(","))).await;
        if i == 0 {
            // The first minute's bar re-sent: it replaces, never doubles.
            send(&mut ws, &format!("[{}]", am(&BARS[0]))).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            drop(ws);
        } else {
            while let Some(Ok(_)) = ws.next().await {}
        }
    }
}

/// Polygon's aggregates: the bars in `[from, to]` (epoch ms), one page.
async fn aggs_route(
    State(log): State<Shared>,
    headers: HeaderMap,
    axum::extract::Path((ticker, from, to)): axum::extract::Path<(String, i64, i64)>,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, String) {
    let mut log = log.lock().unwrap();
    log.queries.push(q.clone());
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    if auth != Some(&format!("Bearer {POLYGON_KEY}")) || ticker != "AAPL" {
        log.complaints.push(format!("{ticker} {auth:?}"));
        return (StatusCode::UNAUTHORIZED, "{}".into());
    }
    if (from, to) != (T0_MS + MIN_MS, T0_MS + 4 * MIN_MS) {
        log.complaints.push(format!("window {from}..{to}"));
    }
    let results: Vec<serde_json::Value> = BARS
        .iter()
        .filter(|b| (from..=to).contains(&(T0_MS + b.0 * MIN_MS)))
        .map(|b| {
            serde_json::json!({"v": b.2, "vw": b.1, "o": b.1 - 0.05, "c": b.1, "h": b.1 + 0.1,
                               "l": b.1 - 0.1, "t": T0_MS + b.0 * MIN_MS, "n": 12})
        })
        .collect();
    let page = serde_json::json!({"ticker": "AAPL", "queryCount": results.len(),
        "resultsCount": results.len(), "adjusted": true, "status": "OK",
        "request_id": "r1", "results": results});
    (StatusCode::OK, page.to_string())
}

#[test]
fn polygon_bars_gap_is_filled_from_aggregates_and_resent_bars_replace() {
    let complaints = Arc::new(Mutex::new(Vec::new()));
    let rest_log = Shared::default();
    let ws_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    ws_l.set_nonblocking(true).unwrap();
    let rest_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    rest_l.set_nonblocking(true).unwrap();
    let ws = format!("ws://{}/stocks", ws_l.local_addr().unwrap());
    let rest = format!("http://{}", rest_l.local_addr().unwrap());
    let (c, r) = (complaints.clone(), rest_log.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let router = Router::new()
                .route(
                    "/v2/aggs/ticker/{ticker}/range/1/minute/{from}/{to}",
                    get(aggs_route),
                )
                .with_state(r);
            let rest_l = TcpListener::from_std(rest_l).unwrap();
            tokio::spawn(async move { axum::serve(rest_l, router).await.unwrap() });
            polygon_stream(TcpListener::from_std(ws_l).unwrap(), c).await;
            std::future::pending::<()>().await;
        });
    });
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .env("POLYGON_API_KEY", POLYGON_KEY)
        .args([
            "ingest",
            "live",
            "polygon",
            "--channel",
            "bars",
            "--symbols",
            "AAPL",
        ])
        .args([
            "--endpoint",
            &ws,
            "--rest-endpoint",
            &rest,
            "--lake",
            "lake",
        ])
        .args(["--max-ticks", &BARS.len().to_string()])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    assert!(
        !o.contains(POLYGON_KEY) && !e.contains(POLYGON_KEY),
        "{o}\n{e}"
    );
    assert!(
        complaints.lock().unwrap().is_empty(),
        "{:?}",
        complaints.lock().unwrap()
    );
    let log = rest_log.lock().unwrap();
    assert!(log.complaints.is_empty(), "{:?}", log.complaints);
    assert_eq!(log.queries.len(), 1);
    assert!(
        o.contains("1 filled from the REST history (+2 ticks, 2 already received)"),
        "{o}"
    );
    let rows = sql_json(
        dir.path(),
        "lake",
        "SELECT CAST(ts AS BIGINT) AS ts, seq, price, volume FROM ticks ORDER BY ts, seq",
    );
    let got: Vec<(i64, u64, f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                (r["ts"].as_i64().unwrap() / 1000 - T0_MS) / MIN_MS,
                r["seq"].as_u64().unwrap(),
                r["price"].as_f64().unwrap(),
                r["volume"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, u64, f64, f64)> = BARS.iter().map(|b| (b.0, 0, b.1, b.2)).collect();
    assert_eq!(got, want);
}

#[test]
fn finnhub_trades_with_pings_and_errors_and_an_unfillable_gap() {
    let ws_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    ws_l.set_nonblocking(true).unwrap();
    let ws = format!("ws://{}", ws_l.local_addr().unwrap());
    let uris = Arc::new(Mutex::new(Vec::new()));
    let seen = uris.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_std(ws_l).unwrap();
            let trade = |s: &str, ms: i64, p: f64| {
                format!(
                    r#"{{"s":"{s}","p":{p},"t":{},"v":10,"c":["1"]}}"#,
                    T0_MS + ms
                )
            };
            // Connection 1: two symbols in one message, a ping, an error
            // that asks for nothing, a trade without conditions; then a drop.
            let (mut c1, uri) = accept_uri(&l).await;
            seen.lock().unwrap().push(uri);
            let subs = [recv(&mut c1).await, recv(&mut c1).await];
            seen.lock()
                .unwrap()
                .push(serde_json::Value::from(subs.to_vec()).to_string());
            send(
                &mut c1,
                &format!(
                    r#"{{"type":"trade","data":[{},{}]}}"#,
                    trade("AAPL", 1000, 189.5),
                    trade("BINANCE:BTCUSDT", 1100, 64000.5)
                ),
            )
            .await;
            send(&mut c1, r#"{"type":"ping"}"#).await;
            send(&mut c1, r#"{"type":"error","msg":"Invalid symbol FOO"}"#).await;
            send(
                &mut c1,
                &format!(
                    r#"{{"type":"trade","data":[{{"s":"AAPL","p":189.6,"t":{},"v":5}}]}}"#,
                    T0_MS + 2000
                ),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(700)).await;
            drop(c1);
            // Connection 2: one more trade, then silence.
            let (mut c2, uri) = accept_uri(&l).await;
            seen.lock().unwrap().push(uri);
            recv(&mut c2).await;
            recv(&mut c2).await;
            send(
                &mut c2,
                &format!(
                    r#"{{"type":"trade","data":[{}]}}"#,
                    trade("AAPL", 9000, 189.9)
                ),
            )
            .await;
            while let Some(Ok(_)) = c2.next().await {}
        });
    });
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .env("FINNHUB_API_KEY", FINNHUB_KEY)
        .args([
            "ingest",
            "live",
            "finnhub",
            "--symbols",
            "AAPL,BINANCE:BTCUSDT",
        ])
        .args(["--endpoint", &ws, "--lake", "lake", "--max-ticks", "4"])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    assert!(
        !o.contains(FINNHUB_KEY) && !e.contains(FINNHUB_KEY),
        "{o}\n{e}"
    );
    let uris = uris.lock().unwrap();
    assert_eq!(uris[0], format!("/?token={FINNHUB_KEY}"));
    assert_eq!(
        uris[1],
        r#"[{"symbol":"AAPL","type":"subscribe"},{"symbol":"BINANCE:BTCUSDT","type":"subscribe"}]"#
    );
    assert_eq!(uris[2], uris[0], "the token again on reconnect");
    assert!(o.contains("4 ticks written to"), "{o}");
    assert!(o.contains("reconnects 1"), "{o}");
    assert!(o.contains("1 unfilled"), "{o}");
    assert!(o.contains("finnhub has no tick history to fetch"), "{o}");
    assert!(o.contains("per symbol: AAPL 3, BINANCE:BTCUSDT 1"), "{o}");
    let n = common::sql_number(dir.path(), "lake", "SELECT count(*) FROM ticks");
    assert_eq!(n, 4);
}

/// A sink that falls behind: with room for one tick, a three-trade message
/// is dropped whole and counted; the next single trade still gets through.
#[test]
fn a_full_buffer_drops_and_counts_ticks_never_rejects() {
    let ws_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    ws_l.set_nonblocking(true).unwrap();
    let ws = format!("ws://{}", ws_l.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_std(ws_l).unwrap();
            let (mut c, _) = accept_uri(&l).await;
            recv(&mut c).await;
            let trade = |ms: i64| format!(r#"{{"s":"AAPL","p":189.5,"t":{},"v":10}}"#, T0_MS + ms);
            send(
                &mut c,
                &format!(
                    r#"{{"type":"trade","data":[{},{},{}]}}"#,
                    trade(1),
                    trade(2),
                    trade(3)
                ),
            )
            .await;
            // A bad record travels with the dropped ticks: it is kept.
            send(
                &mut c,
                r#"{"type":"trade","data":[{"s":"AAPL","p":-1,"t":1741012200004,"v":1}]}"#,
            )
            .await;
            tokio::time::sleep(Duration::from_millis(1200)).await;
            send(
                &mut c,
                &format!(r#"{{"type":"trade","data":[{}]}}"#, trade(9)),
            )
            .await;
            while let Some(Ok(_)) = c.next().await {}
        });
    });
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(dir.path())
        .env("FINNHUB_API_KEY", FINNHUB_KEY)
        .args([
            "ingest",
            "live",
            "finnhub",
            "--symbols",
            "AAPL",
            "--endpoint",
            &ws,
        ])
        .args(["--lake", "lake", "--max-ticks", "1", "--buffer-ticks", "1"])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    assert!(o.contains("1 ticks written to"), "{o}");
    assert!(o.contains("1 rejected, 3 dropped"), "{o}");
    let rows = sql_json(
        dir.path(),
        "lake",
        "SELECT CAST(ts AS BIGINT) AS ts FROM ticks",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["ts"].as_i64(),
        Some((T0_MS + 9) * 1000),
        "the trade after the drop"
    );
}
