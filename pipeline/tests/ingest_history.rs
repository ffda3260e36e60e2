//! `stockanomaly ingest history` end to end, against HTTP servers the test
//! runs on loopback (axum), written from the feeds' documented REST formats
//! (feeds.md §1, §2): Alpaca's `/v2/stocks/bars` and `/v2/stocks/trades`
//! with `next_page_token`, Polygon's aggregates with `next_url`. The servers
//! script a 429 with `Retry-After: 1`, a 500, a 401 and a bad record, and
//! count what they were sent.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use common::{bin, files_under, service_env, sql_json};

const KEY_ID: &str = "test-key-id-7f3a";
const SECRET: &str = "test-secret-c91e";
const POLYGON_KEY: &str = "test-polygon-key-5b2d";

/// 2024-01-03T14:30:00Z, µs.
const T0_US: i64 = 1_704_292_200_000_000;
const MIN_US: i64 = 60_000_000;

/// A bar as served: symbol, minute after T0, open, high, low, close, volume.
type Bar = (&'static str, i64, f64, f64, f64, f64, f64);

/// Alpaca page 1 (after a 429): AAPL then MSFT, as the API sorts.
const ALPACA_PAGE1: &[Bar] = &[
    ("AAPL", 0, 184.22, 184.5, 184.1, 184.35, 12_345.0),
    ("AAPL", 1, 184.35, 184.61, 184.3, 184.6, 8_210.0),
    ("AAPL", 2, 184.6, 184.7, 184.41, 184.45, 9_001.0),
    ("MSFT", 0, 370.1, 370.6, 369.9, 370.5, 4_100.0),
];
/// Alpaca page 2 (after a 500); the 14:32 bar has its high below its low.
const ALPACA_PAGE2: &[Bar] = &[
    ("MSFT", 1, 370.5, 371.0, 370.2, 370.9, 3_900.0),
    ("MSFT", 2, 370.9, 369.0, 371.5, 370.0, 1_000.0),
    ("MSFT", 3, 370.0, 370.3, 369.7, 369.8, 5_500.0),
];
const PAGE_TOKEN: &str = "TVNGVHwyMDI0LTAxLTAzVDE0OjMxOjAwWg==";

/// Polygon MSFT page 1, then page 2 (after a 429); AAPL has no data.
const POLYGON_PAGE1: &[Bar] = &[
    ("MSFT", 0, 370.1, 370.6, 369.9, 370.5, 4_100.0),
    ("MSFT", 1, 370.5, 371.0, 370.2, 370.9, 3_900.0),
];
const POLYGON_PAGE2: &[Bar] = &[("MSFT", 5, 369.5, 369.9, 369.1, 369.2, 2_200.0)];

/// What a server saw: `(what, when, status answered)` per request, and the
/// complaints of its checks (a wrong query or header is answered 400 and
/// recorded here).
#[derive(Default)]
struct Log {
    hits: Vec<(String, Instant, u16)>,
    complaints: Vec<String>,
    queries: Vec<String>,
}

type Shared = Arc<Mutex<Log>>;

impl Log {
    fn count(&self, what: &str) -> usize {
        self.hits.iter().filter(|h| h.0 == what).count()
    }

    fn statuses(&self, what: &str) -> Vec<u16> {
        self.hits
            .iter()
            .filter(|h| h.0 == what)
            .map(|h| h.2)
            .collect()
    }

    /// Seconds between the first and second request for `what`.
    fn gap(&self, what: &str) -> f64 {
        let t: Vec<Instant> = self
            .hits
            .iter()
            .filter(|h| h.0 == what)
            .map(|h| h.1)
            .collect();
        (t[1] - t[0]).as_secs_f64()
    }
}

/// Serves `router` on an ephemeral loopback port from its own thread.
fn serve(router: Router) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, router).await.unwrap();
        });
    });
    addr
}

fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn alpaca_bars(bars: &[Bar], token: Option<&str>) -> String {
    let mut by_symbol: Vec<(&str, Vec<Value>)> = Vec::new();
    for &(sym, m, o, h, l, c, v) in bars {
        let rec = json!({"t": rfc3339(T0_US + m * MIN_US), "o": o, "h": h, "l": l, "c": c,
                         "v": v, "n": 42, "vw": (o + c) / 2.0});
        match by_symbol.iter_mut().find(|(s, _)| *s == sym) {
            Some((_, recs)) => recs.push(rec),
            None => by_symbol.push((sym, vec![rec])),
        }
    }
    let map: serde_json::Map<String, Value> = by_symbol
        .into_iter()
        .map(|(s, r)| (s.to_owned(), Value::Array(r)))
        .collect();
    json!({"bars": map, "next_page_token": token}).to_string()
}

fn reply(status: StatusCode, headers: &[(&'static str, &'static str)], body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        "content-type",
        "application/json; charset=utf-8".parse().unwrap(),
    );
    for (k, v) in headers {
        r.headers_mut().insert(*k, v.parse().unwrap());
    }
    r
}

/// Records a request; the answer is given by the caller.
fn hit(log: &Shared, what: &str, status: StatusCode) {
    log.lock()
        .unwrap()
        .hits
        .push((what.to_owned(), Instant::now(), status.as_u16()));
}

fn complain(log: &Shared, what: String) -> Response {
    log.lock().unwrap().complaints.push(what.clone());
    reply(
        StatusCode::BAD_REQUEST,
        &[],
        json!({ "message": what }).to_string(),
    )
}

/// Checks Alpaca's credential headers: `None` when they are right, else
/// the 401 Alpaca answers.
fn alpaca_auth(log: &Shared, h: &HeaderMap) -> Option<Response> {
    let key = h.get("APCA-API-KEY-ID").and_then(|v| v.to_str().ok());
    let secret = h.get("APCA-API-SECRET-KEY").and_then(|v| v.to_str().ok());
    if key == Some(KEY_ID) && secret == Some(SECRET) {
        return None;
    }
    hit(log, "unauthorized", StatusCode::UNAUTHORIZED);
    Some(reply(
        StatusCode::UNAUTHORIZED,
        &[],
        json!({"message": "unauthorized."}).to_string(),
    ))
}

async fn alpaca_bars_route(
    State(log): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = alpaca_auth(&log, &headers) {
        return r;
    }
    let want = [
        ("symbols", "AAPL,MSFT"),
        ("timeframe", "1Min"),
        ("start", "2024-01-03T00:00:00Z"),
        ("end", "2024-01-03T23:59:59.999999999Z"),
        ("limit", "10000"),
    ];
    for (k, v) in want {
        if q.get(k).map(String::as_str) != Some(v) {
            return complain(
                &log,
                format!("query {k}: expected {v:?}, got {:?}", q.get(k)),
            );
        }
    }
    let page = match q.get("page_token").map(String::as_str) {
        None => "bars1",
        Some(PAGE_TOKEN) => "bars2",
        Some(other) => return complain(&log, format!("unknown page_token {other:?}")),
    };
    let first = log.lock().unwrap().count(page) == 0;
    match (page, first) {
        ("bars1", true) => {
            hit(&log, page, StatusCode::TOO_MANY_REQUESTS);
            reply(
                StatusCode::TOO_MANY_REQUESTS,
                &[("retry-after", "1")],
                json!({"message": "too many requests."}).to_string(),
            )
        }
        ("bars2", true) => {
            hit(&log, page, StatusCode::INTERNAL_SERVER_ERROR);
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                &[],
                json!({"message": "internal server error"}).to_string(),
            )
        }
        ("bars1", false) => {
            hit(&log, page, StatusCode::OK);
            reply(
                StatusCode::OK,
                &[],
                alpaca_bars(ALPACA_PAGE1, Some(PAGE_TOKEN)),
            )
        }
        _ => {
            hit(&log, page, StatusCode::OK);
            reply(StatusCode::OK, &[], alpaca_bars(ALPACA_PAGE2, None))
        }
    }
}

/// Three AAPL trades, the first two sharing a microsecond (so `seq` 0
/// and 1), and an unparsable price.
const ALPACA_TRADES: &str = r#"{"trades":{"AAPL":[
 {"t":"2024-01-03T14:30:00.123456Z","x":"V","p":184.3,"s":100,"c":["@"],"i":1,"z":"C"},
 {"t":"2024-01-03T14:30:00.123456789Z","x":"V","p":184.31,"s":50,"c":["@","I"],"i":2,"z":"C"},
 {"t":"2024-01-03T14:30:01.5Z","x":"K","p":"oops","s":10,"c":["@"],"i":3,"z":"C"},
 {"t":"2024-01-03T14:30:02Z","x":"K","p":184.4,"s":10,"c":["@"],"i":4,"z":"C"}]},
 "next_page_token":null}"#;

async fn alpaca_trades_route(
    State(log): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = alpaca_auth(&log, &headers) {
        return r;
    }
    if q.contains_key("timeframe") || q.get("symbols").map(String::as_str) != Some("AAPL") {
        return complain(&log, format!("trades query: {q:?}"));
    }
    hit(&log, "trades", StatusCode::OK);
    reply(StatusCode::OK, &[], ALPACA_TRADES.to_owned())
}

fn alpaca_server() -> (SocketAddr, Shared) {
    let log = Shared::default();
    let router = Router::new()
        .route("/v2/stocks/bars", get(alpaca_bars_route))
        .route("/v2/stocks/trades", get(alpaca_trades_route))
        .with_state(log.clone());
    (serve(router), log)
}

fn polygon_page(ticker: &str, bars: &[Bar], next_url: Option<String>) -> String {
    let results: Vec<Value> = bars
        .iter()
        .map(|&(_, m, o, h, l, c, v)| {
            json!({"v": v, "vw": (o + c) / 2.0, "o": o, "c": c, "h": h, "l": l,
                   "t": (T0_US + m * MIN_US) / 1000, "n": 17})
        })
        .collect();
    let mut page = json!({"ticker": ticker, "queryCount": results.len(),
        "resultsCount": results.len(), "adjusted": true, "status": "OK",
        "request_id": "6a7e466379af0a71039d60cc78e72282"});
    if !results.is_empty() {
        page["results"] = Value::Array(results);
    }
    if let Some(u) = next_url {
        page["next_url"] = Value::String(u);
    }
    page.to_string()
}

async fn polygon_route(
    State(log): State<Shared>,
    headers: HeaderMap,
    UrlPath((ticker, mult, span, from, to)): UrlPath<(String, String, String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("Bearer {POLYGON_KEY}")) {
        hit(&log, "unauthorized", StatusCode::UNAUTHORIZED);
        return reply(
            StatusCode::UNAUTHORIZED,
            &[],
            json!({"status": "ERROR", "request_id": "x", "error": "Unknown API Key"}).to_string(),
        );
    }
    if q.contains_key("apiKey") {
        return complain(&log, "the key was sent in the URL".into());
    }
    log.lock()
        .unwrap()
        .queries
        .push(format!("{ticker} {mult} {span} {from} {to} {q:?}"));
    match (ticker.as_str(), q.get("cursor").map(String::as_str)) {
        ("MSFT", None) => {
            if q.get("adjusted").map(String::as_str) != Some("true")
                || q.get("sort").map(String::as_str) != Some("asc")
                || q.get("limit").map(String::as_str) != Some("50000")
            {
                return complain(&log, format!("query {q:?}"));
            }
            hit(&log, "msft1", StatusCode::OK);
            // The API names its own host in next_url: the client must ask
            // its configured endpoint instead, with the key in a header.
            let next = "https://api.polygon.io/v2/aggs/ticker/MSFT/range/1/minute/\
                        1704292260000/1704326399999?cursor=bGltaXQ9MiZzb3J0PWFzYw"
                .to_owned();
            reply(
                StatusCode::OK,
                &[],
                polygon_page("MSFT", POLYGON_PAGE1, Some(next)),
            )
        }
        ("MSFT", Some("bGltaXQ9MiZzb3J0PWFzYw")) => {
            if log.lock().unwrap().count("msft2") == 0 {
                hit(&log, "msft2", StatusCode::TOO_MANY_REQUESTS);
                return reply(
                    StatusCode::TOO_MANY_REQUESTS,
                    &[("retry-after", "1")],
                    json!({"status": "ERROR", "error": "You've exceeded the maximum requests per minute"}).to_string(),
                );
            }
            hit(&log, "msft2", StatusCode::OK);
            reply(
                StatusCode::OK,
                &[],
                polygon_page("MSFT", POLYGON_PAGE2, None),
            )
        }
        ("AAPL", None) => {
            hit(&log, "aapl", StatusCode::OK);
            reply(StatusCode::OK, &[], polygon_page("AAPL", &[], None))
        }
        _ => complain(&log, format!("unexpected request {ticker} {q:?}")),
    }
}

fn polygon_server() -> (SocketAddr, Shared) {
    let log = Shared::default();
    let router = Router::new()
        .route(
            "/v2/aggs/ticker/{ticker}/range/{mult}/{span}/{from}/{to}",
            get(polygon_route),
        )
        .with_state(log.clone());
    (serve(router), log)
}

/// Runs `ingest history` with the fake credentials in the environment and
/// every log on, HTTP client internals included (so the check that no
/// credential is printed means something).
fn history(dir: &Path, args: &[&str]) -> Output {
    bin()
        .current_dir(dir)
        .env("APCA_API_KEY_ID", KEY_ID)
        .env("APCA_API_SECRET_KEY", SECRET)
        .env("POLYGON_API_KEY", POLYGON_KEY)
        .env("STOCKANOMALY_LOG", "trace")
        .env_remove("STOCKANOMALY_ALPACA_REST")
        .env_remove("STOCKANOMALY_POLYGON_REST")
        .args(["ingest", "history"])
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn succeeded(out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(
        out.status.success(),
        "failed with {}:\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert_no_credentials(out);
    stdout
}

fn assert_no_credentials(out: &Output) {
    let (stdout, stderr) = text(out);
    for secret in [KEY_ID, SECRET, POLYGON_KEY] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} printed:\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// The lake's ticks as `(symbol, ts µs, seq, price, volume, open, high,
/// low, source)` in key order.
type Row = (
    String,
    i64,
    u64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    String,
);

fn lake_rows(dir: &Path, lake: &str) -> Vec<Row> {
    sql_json(
        dir,
        lake,
        "SELECT symbol, CAST(ts AS BIGINT) AS ts, seq, price, volume, open, high, low, source \
         FROM ticks ORDER BY symbol, ts, seq",
    )
    .iter()
    .map(|v| {
        (
            v["symbol"].as_str().unwrap().to_owned(),
            v["ts"].as_i64().unwrap(),
            v["seq"].as_u64().unwrap(),
            v["price"].as_f64().unwrap(),
            v["volume"].as_f64().unwrap(),
            v["open"].as_f64(),
            v["high"].as_f64(),
            v["low"].as_f64(),
            v["source"].as_str().unwrap().to_owned(),
        )
    })
    .collect()
}

/// The rows valid bars must become.
fn bar_rows(bars: &[&[Bar]], source: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = bars
        .iter()
        .flat_map(|p| p.iter())
        .filter(|b| b.3 >= b.4)
        .map(|&(s, m, o, h, l, c, v)| {
            (
                s.to_owned(),
                T0_US + m * MIN_US,
                0,
                c,
                v,
                Some(o),
                Some(h),
                Some(l),
                source.to_owned(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    rows
}

#[test]
fn alpaca_bars_follow_pages_through_a_429_and_a_500_and_rerun_adds_nothing() {
    let (addr, log) = alpaca_server();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let endpoint = format!("http://{addr}");
    let args = [
        "alpaca",
        "--symbols",
        "AAPL,MSFT",
        "--from",
        "2024-01-03",
        "--until",
        "2024-01-03",
        "--rest-endpoint",
        &endpoint,
        "--lake",
        &lake,
    ];
    let out = succeeded(&history(dir.path(), &args));
    {
        let log = log.lock().unwrap();
        assert!(log.complaints.is_empty(), "{:?}", log.complaints);
        // Page 1: a 429, then the page; page 2: a 500, then the page.
        assert_eq!(log.statuses("bars1"), [429, 200]);
        assert_eq!(log.statuses("bars2"), [500, 200]);
        let gap = log.gap("bars1");
        assert!(gap >= 0.95, "Retry-After: 1 honoured, waited {gap:.3}s");
    }
    assert!(
        out.contains("2 pages, 7 records, 6 ticks written to"),
        "{out}"
    );
    assert!(out.contains("1 rejected"), "{out}");
    assert!(out.contains("rejects: high_below_low 1"), "{out}");
    assert!(
        out.contains("4 requests, 2 retries (429: 1, 5xx: 1, connection: 0)"),
        "{out}"
    );

    let want = bar_rows(&[ALPACA_PAGE1, ALPACA_PAGE2], "alpaca");
    assert_eq!(want.len(), 6);
    assert_eq!(lake_rows(dir.path(), &lake), want);

    // Again: the same pages give the same files, so nothing is added.
    let before = files_under(Path::new(&lake));
    let again = succeeded(&history(dir.path(), &args));
    assert!(
        again.contains("0 files written, 1 already present"),
        "{again}"
    );
    assert_eq!(files_under(Path::new(&lake)), before);
    assert_eq!(lake_rows(dir.path(), &lake), want);
}

#[test]
fn alpaca_trades_keep_ties_apart_by_seq_and_reject_bad_records() {
    let (addr, log) = alpaca_server();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let rejects = dir.path().join("rejects.csv");
    let endpoint = format!("http://{addr}");
    let args = [
        "alpaca",
        "--symbols",
        "AAPL",
        "--from",
        "2024-01-03T14:00:00Z",
        "--until",
        "2024-01-03T15:00:00Z",
        "--timeframe",
        "trades",
        "--rest-endpoint",
        &endpoint,
        "--lake",
        &lake,
        "--rejects",
        rejects.to_str().unwrap(),
    ];
    let out = succeeded(&history(dir.path(), &args));
    assert!(log.lock().unwrap().complaints.is_empty());
    assert!(out.contains("1 pages, 4 records, 3 ticks"), "{out}");
    assert!(out.contains("rejects: malformed 1"), "{out}");
    let bad = std::fs::read_to_string(&rejects).unwrap();
    assert!(bad.contains("oops"), "{bad}");
    let rows = lake_rows(dir.path(), &lake);
    let keys: Vec<(i64, u64, f64, f64)> = rows.iter().map(|r| (r.1, r.2, r.3, r.4)).collect();
    // The second trade's nanoseconds are truncated to the first's
    // microsecond: the same (symbol, ts), told apart by seq.
    assert_eq!(
        keys,
        [
            (T0_US + 123_456, 0, 184.3, 100.0),
            (T0_US + 123_456, 1, 184.31, 50.0),
            (T0_US + 2_000_000, 0, 184.4, 10.0),
        ]
    );
    assert!(rows.iter().all(|r| r.5.is_none() && r.8 == "alpaca"));
    let before = files_under(Path::new(&lake));
    let again = succeeded(&history(dir.path(), &args));
    assert!(
        again.contains("0 files written, 1 already present"),
        "{again}"
    );
    assert_eq!(files_under(Path::new(&lake)), before);
}

#[test]
fn alpaca_refused_credentials_stop_naming_the_variables() {
    let (addr, log) = alpaca_server();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let out = bin()
        .current_dir(dir.path())
        .env("APCA_API_KEY_ID", "wrong-key-0000")
        .env("APCA_API_SECRET_KEY", SECRET)
        .env("STOCKANOMALY_LOG", "trace")
        .args([
            "ingest",
            "history",
            "alpaca",
            "--symbols",
            "AAPL,MSFT",
            "--from",
            "2024-01-03",
            "--until",
            "2024-01-03",
            "--rest-endpoint",
            &format!("http://{addr}"),
            "--lake",
            &lake,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("APCA_API_KEY_ID"), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(stderr.contains("unauthorized."), "{stderr}");
    assert!(
        !stderr.contains("wrong-key-0000") && !stderr.contains(SECRET),
        "{stderr}"
    );
    // Not retried: asking again cannot change the answer.
    assert_eq!(log.lock().unwrap().count("unauthorized"), 1);
    assert!(!Path::new(&lake).join("ticks").exists());

    // No credential at all: a configuration mistake, exit 2, nothing sent.
    let out = bin()
        .current_dir(dir.path())
        .env_remove("APCA_API_KEY_ID")
        .env("APCA_API_SECRET_KEY", SECRET)
        .args([
            "ingest",
            "history",
            "alpaca",
            "--symbols",
            "AAPL",
            "--from",
            "2024-01-03",
            "--until",
            "2024-01-03",
            "--rest-endpoint",
            &format!("http://{addr}"),
            "--lake",
            &lake,
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("APCA_API_KEY_ID is not set"), "{stderr}");
    assert_eq!(log.lock().unwrap().hits.len(), 1);
}

#[test]
fn polygon_follows_next_url_on_its_own_endpoint_through_a_429() {
    let (addr, log) = polygon_server();
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let endpoint = format!("http://{addr}");
    let args = [
        "polygon",
        "--symbols",
        "MSFT,AAPL",
        "--from",
        "2024-01-03",
        "--until",
        "2024-01-03",
        "--lake",
        &lake,
    ];
    // The endpoint from the environment this time.
    let run = || {
        let out = bin()
            .current_dir(dir.path())
            .env("POLYGON_API_KEY", POLYGON_KEY)
            .env("STOCKANOMALY_POLYGON_REST", &endpoint)
            .env("STOCKANOMALY_LOG", "trace")
            .args(["ingest", "history"])
            .args(args)
            .output()
            .unwrap();
        succeeded(&out)
    };
    let out = run();
    {
        let log = log.lock().unwrap();
        assert!(log.complaints.is_empty(), "{:?}", log.complaints);
        assert_eq!(log.statuses("msft1"), [200]);
        assert_eq!(log.statuses("msft2"), [429, 200]);
        assert_eq!(log.statuses("aapl"), [200]);
        let gap = log.gap("msft2");
        assert!(gap >= 0.95, "Retry-After: 1 honoured, waited {gap:.3}s");
        assert!(
            log.queries[0].starts_with("MSFT 1 minute 2024-01-03 2024-01-03"),
            "{:?}",
            log.queries
        );
    }
    assert!(
        out.contains("3 pages, 3 records, 3 ticks written to"),
        "{out}"
    );
    assert!(out.contains("0 rejected"), "{out}");
    assert!(out.contains("(429: 1, 5xx: 0, connection: 0)"), "{out}");
    let want = bar_rows(&[POLYGON_PAGE1, POLYGON_PAGE2], "polygon");
    assert_eq!(lake_rows(dir.path(), &lake), want);

    let before = files_under(Path::new(&lake));
    let again = run();
    assert!(
        again.contains("0 files written, 1 already present"),
        "{again}"
    );
    assert_eq!(files_under(Path::new(&lake)), before);
}

#[test]
fn polygon_refused_key_and_trades_are_reported() {
    let (addr, _log) = polygon_server();
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "ingest",
        "history",
        "polygon",
        "--symbols",
        "MSFT",
        "--from",
        "2024-01-03",
        "--until",
        "2024-01-03",
        "--lake",
        "memory://x",
    ];
    let out = bin()
        .current_dir(dir.path())
        .env("POLYGON_API_KEY", "not-the-key-1234")
        .args(base)
        .args(["--rest-endpoint", &format!("http://{addr}")])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("POLYGON_API_KEY"), "{stderr}");
    assert!(stderr.contains("Unknown API Key"), "{stderr}");
    assert!(!stderr.contains("not-the-key-1234"), "{stderr}");

    let out = bin()
        .current_dir(dir.path())
        .env("POLYGON_API_KEY", POLYGON_KEY)
        .args(base)
        .args(["--timeframe", "trades"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Alpaca only"), "{stderr}");
}

#[test]
fn alpaca_bars_to_kafka_are_the_json_ticks_keyed_by_symbol() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    let brokers = service_env("STOCKANOMALY_TEST_KAFKA");
    let (addr, _log) = alpaca_server();
    let dir = tempfile::tempdir().unwrap();
    let topic = format!(
        "test-history-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let to = format!("kafka://{brokers}/{topic}");
    let out = succeeded(&history(
        dir.path(),
        &[
            "alpaca",
            "--symbols",
            "AAPL,MSFT",
            "--from",
            "2024-01-03",
            "--until",
            "2024-01-03",
            "--rest-endpoint",
            &format!("http://{addr}"),
            "--to",
            &to,
            "--partitions",
            "1",
        ],
    ));
    assert!(out.contains("6 ticks published to kafka://"), "{out}");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut got: Vec<(String, Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "no EOF on {topic}: {got:?}");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => got.push((
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                serde_json::from_slice(m.payload().unwrap()).unwrap(),
            )),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    let want = bar_rows(&[ALPACA_PAGE1, ALPACA_PAGE2], "alpaca");
    assert_eq!(got.len(), want.len(), "{got:?}");
    let mut decoded: Vec<(String, i64, f64, f64, Option<f64>)> = got
        .iter()
        .map(|(k, v)| {
            assert_eq!(v["symbol"].as_str(), Some(k.as_str()), "keyed by symbol");
            let ts = v["timestamp"].as_str().unwrap();
            (
                k.clone(),
                chrono::DateTime::parse_from_rfc3339(ts)
                    .unwrap()
                    .timestamp_micros(),
                v["price"].as_f64().unwrap(),
                v["volume"].as_f64().unwrap(),
                v["high"].as_f64(),
            )
        })
        .collect();
    decoded.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let want: Vec<(String, i64, f64, f64, Option<f64>)> = want
        .iter()
        .map(|r| (r.0.clone(), r.1, r.3, r.4, r.6))
        .collect();
    assert_eq!(decoded, want);
}

/// Two days of AAPL and MSFT bars (minutes after T0; 1440 is the next day).
const TWO_DAYS: &[Bar] = &[
    ("AAPL", 0, 184.0, 184.5, 183.9, 184.2, 100.0),
    ("AAPL", 1, 184.2, 184.6, 184.1, 184.4, 200.0),
    ("AAPL", 1440, 185.0, 185.5, 184.9, 185.2, 300.0),
    ("AAPL", 1441, 185.2, 185.6, 185.1, 185.4, 400.0),
    ("MSFT", 0, 370.0, 370.5, 369.9, 370.2, 500.0),
    ("MSFT", 1440, 371.0, 371.5, 370.9, 371.2, 600.0),
    ("MSFT", 1442, 371.2, 371.6, 371.1, 371.4, 700.0),
];

/// Serves [`TWO_DAYS`] as Alpaca does: the bars between `start` and `end`
/// (inclusive), sorted by symbol then time, `limit` per page, the token
/// being the offset of the next page.
async fn alpaca_range_route(
    State(log): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = alpaca_auth(&log, &headers) {
        return r;
    }
    let time = |k: &str| {
        q.get(k)
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.timestamp_micros())
    };
    let (Some(start), Some(end)) = (time("start"), time("end")) else {
        return complain(&log, format!("start/end: {q:?}"));
    };
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10_000);
    let offset: usize = match q.get("page_token").map(|t| t.parse()) {
        None => 0,
        Some(Ok(o)) => o,
        Some(Err(_)) => return complain(&log, format!("page_token {q:?}")),
    };
    let selected: Vec<Bar> = TWO_DAYS
        .iter()
        .copied()
        .filter(|b| (start..=end).contains(&(T0_US + b.1 * MIN_US)))
        .collect();
    let page: Vec<Bar> = selected.iter().copied().skip(offset).take(limit).collect();
    let next = (offset + limit < selected.len()).then(|| (offset + limit).to_string());
    hit(&log, "range", StatusCode::OK);
    reply(StatusCode::OK, &[], alpaca_bars(&page, next.as_deref()))
}

#[test]
fn overlapping_whole_day_ranges_write_each_day_once_whatever_the_paging() {
    let log = Shared::default();
    let addr = serve(
        Router::new()
            .route("/v2/stocks/bars", get(alpaca_range_route))
            .with_state(log.clone()),
    );
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake").display().to_string();
    let endpoint = format!("http://{addr}");
    let run = |from: &str, until: &str, limit: &str| {
        succeeded(&history(
            dir.path(),
            &[
                "alpaca",
                "--symbols",
                "AAPL,MSFT",
                "--from",
                from,
                "--until",
                until,
                "--page-limit",
                limit,
                "--rest-endpoint",
                &endpoint,
                "--lake",
                &lake,
            ],
        ))
    };
    let day1 = run("2024-01-03", "2024-01-03", "2");
    assert!(day1.contains("2 pages, 3 records, 3 ticks"), "{day1}");
    assert!(
        day1.contains("1 files written, 0 already present"),
        "{day1}"
    );
    // Both days, paged differently: the first day's file is the same.
    let both = run("2024-01-03", "2024-01-04", "3");
    assert!(both.contains("3 pages, 7 records, 7 ticks"), "{both}");
    assert!(
        both.contains("1 files written, 1 already present"),
        "{both}"
    );
    let day2 = run("2024-01-04", "2024-01-04", "10000");
    assert!(day2.contains("1 pages, 4 records, 4 ticks"), "{day2}");
    assert!(
        day2.contains("0 files written, 1 already present"),
        "{day2}"
    );
    assert!(log.lock().unwrap().complaints.is_empty());
    assert_eq!(
        lake_rows(dir.path(), &lake),
        bar_rows(&[TWO_DAYS], "alpaca"),
        "every bar once"
    );
}

#[test]
fn persistent_server_errors_and_refused_connections_give_up_after_the_retries() {
    let log = Shared::default();
    let addr = serve(
        Router::new()
            .route(
                "/v2/stocks/bars",
                get(|State(log): State<Shared>| async move {
                    hit(&log, "503", StatusCode::SERVICE_UNAVAILABLE);
                    reply(StatusCode::SERVICE_UNAVAILABLE, &[], "upstream down".into())
                }),
            )
            .with_state(log.clone()),
    );
    // A port nobody listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (endpoint, last) in [
        (format!("http://{addr}"), "503 Service Unavailable"),
        (format!("http://{closed}"), "error sending request"),
    ] {
        let out = history(
            dir.path(),
            &[
                "alpaca",
                "--symbols",
                "AAPL",
                "--from",
                "2024-01-03",
                "--until",
                "2024-01-03",
                "--max-retries",
                "2",
                "--rest-endpoint",
                &endpoint,
                "--lake",
                "memory://x",
            ],
        );
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("/v2/stocks/bars: gave up after 3 attempts; last:"),
            "{stderr}"
        );
        assert!(stderr.contains(last), "{stderr}");
        assert_no_credentials(&out);
    }
    assert_eq!(log.lock().unwrap().count("503"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn alpaca_bars_into_the_postgres_tick_store_once() {
    let db = common::TestDb::new("history_pg").await;
    let mut client = db.client().await;
    stockanomaly::sinks::postgres::migrate(&mut client)
        .await
        .unwrap();
    let (addr, _log) = alpaca_server();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{addr}");
    let args = [
        "alpaca",
        "--symbols",
        "AAPL,MSFT",
        "--from",
        "2024-01-03",
        "--until",
        "2024-01-03",
        "--rest-endpoint",
        &endpoint,
        "--to",
        &db.url,
    ];
    let out = succeeded(&history(dir.path(), &args));
    assert!(
        out.contains("6 ticks new to the tick store (0 already there), 1 day partitions created"),
        "{out}"
    );
    assert!(!out.contains(&db.url), "the URL is never printed: {out}");
    let rows: Vec<Row> = client
        .query(
            "SELECT symbol, (extract(epoch FROM ts) * 1000000)::bigint, seq, price, volume, \
             open, high, low, source FROM ticks ORDER BY symbol, ts, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let seq: i32 = r.get(2);
            (
                r.get(0),
                r.get(1),
                seq as u64,
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
            )
        })
        .collect();
    assert_eq!(rows, bar_rows(&[ALPACA_PAGE1, ALPACA_PAGE2], "alpaca"));

    // Again (a backfill overlapping what is stored): nothing new.
    let again = succeeded(&history(dir.path(), &args));
    assert!(
        again.contains("0 ticks new to the tick store (6 already there), 0 day partitions created"),
        "{again}"
    );
    let n: i64 = client
        .query_one("SELECT count(*) FROM ticks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
}
